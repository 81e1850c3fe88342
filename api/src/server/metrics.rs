//! `/healthz` and `/metrics` (Prometheus text format 0.0.4).

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::sync::Mutex;

use axum::Json;
use axum::extract::{Request, State};
use axum::http::header;
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use tally_ledger::TenantId;

use super::wire::Health;
use super::{AppState, lock};

/// Upper bounds of the invocation latency histogram, in seconds.
pub const LATENCY_BUCKETS_SECONDS: [f64; 14] = [
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0, 2.5, 10.0,
];

#[derive(Default)]
struct FunctionMetrics {
    invocations: BTreeMap<&'static str, u64>,
    ops: u128,
    errors: u64,
    buckets: [u64; LATENCY_BUCKETS_SECONDS.len()],
    seconds_sum: f64,
    count: u64,
}

/// Counters kept in memory since start-up.
#[derive(Default)]
pub struct Metrics {
    functions: Mutex<BTreeMap<(i64, String), FunctionMetrics>>,
    http: Mutex<BTreeMap<u16, u64>>,
}

impl Metrics {
    /// Records one billed invocation.
    pub fn observe_invocation(
        &self,
        tenant: TenantId,
        function: &str,
        outcome: &'static str,
        ops: u64,
        seconds: f64,
    ) {
        let mut map = lock(&self.functions);
        let m = map.entry((tenant.0, function.to_owned())).or_default();
        *m.invocations.entry(outcome).or_insert(0) += 1;
        m.ops += u128::from(ops);
        if outcome != "exit" {
            m.errors += 1;
        }
        for (bucket, bound) in m.buckets.iter_mut().zip(LATENCY_BUCKETS_SECONDS) {
            if seconds <= bound {
                *bucket += 1;
            }
        }
        m.seconds_sum += seconds;
        m.count += 1;
    }

    fn render(&self) -> String {
        let mut out = String::new();
        let functions = lock(&self.functions);
        out.push_str("# HELP tally_invocations_total Billed invocations by outcome.\n");
        out.push_str("# TYPE tally_invocations_total counter\n");
        for ((tenant, function), m) in functions.iter() {
            for (outcome, n) in &m.invocations {
                let _ = writeln!(
                    out,
                    "tally_invocations_total{{tenant=\"{tenant}\",function=\"{function}\",outcome=\"{outcome}\"}} {n}"
                );
            }
        }
        out.push_str("# HELP tally_ops_total Ops executed (billed).\n");
        out.push_str("# TYPE tally_ops_total counter\n");
        for ((tenant, function), m) in functions.iter() {
            let _ = writeln!(
                out,
                "tally_ops_total{{tenant=\"{tenant}\",function=\"{function}\"}} {}",
                m.ops
            );
        }
        out.push_str(
            "# HELP tally_invocation_errors_total Invocations that trapped or hit a limit.\n",
        );
        out.push_str("# TYPE tally_invocation_errors_total counter\n");
        for ((tenant, function), m) in functions.iter() {
            let _ = writeln!(
                out,
                "tally_invocation_errors_total{{tenant=\"{tenant}\",function=\"{function}\"}} {}",
                m.errors
            );
        }
        out.push_str(
            "# HELP tally_invocation_duration_seconds Invocation latency (run and ledger commit).\n",
        );
        out.push_str("# TYPE tally_invocation_duration_seconds histogram\n");
        for ((tenant, function), m) in functions.iter() {
            let labels = format!("tenant=\"{tenant}\",function=\"{function}\"");
            for (bucket, bound) in m.buckets.iter().zip(LATENCY_BUCKETS_SECONDS) {
                let _ = writeln!(
                    out,
                    "tally_invocation_duration_seconds_bucket{{{labels},le=\"{bound}\"}} {bucket}"
                );
            }
            let _ = writeln!(
                out,
                "tally_invocation_duration_seconds_bucket{{{labels},le=\"+Inf\"}} {}",
                m.count
            );
            let _ = writeln!(
                out,
                "tally_invocation_duration_seconds_sum{{{labels}}} {}",
                m.seconds_sum
            );
            let _ = writeln!(
                out,
                "tally_invocation_duration_seconds_count{{{labels}}} {}",
                m.count
            );
        }
        drop(functions);
        out.push_str("# HELP tally_http_responses_total HTTP responses by status.\n");
        out.push_str("# TYPE tally_http_responses_total counter\n");
        for (status, n) in lock(&self.http).iter() {
            let _ = writeln!(out, "tally_http_responses_total{{status=\"{status}\"}} {n}");
        }
        out.push_str("# HELP tally_problems_total Error answers by problem type.\n");
        out.push_str("# TYPE tally_problems_total counter\n");
        for (slug, n) in super::error::problems_sent() {
            let _ = writeln!(out, "tally_problems_total{{type=\"{slug}\"}} {n}");
        }
        out
    }
}

/// Counts every HTTP response by status.
pub async fn track_http(State(state): State<AppState>, request: Request, next: Next) -> Response {
    let response = next.run(request).await;
    *lock(&state.inner.metrics.http)
        .entry(response.status().as_u16())
        .or_insert(0) += 1;
    response
}

/// Liveness.
#[utoipa::path(get, path = "/healthz", tag = "operations",
    responses((status = 200, body = Health)))]
pub async fn healthz() -> Json<Health> {
    Json(Health {
        status: "ok".into(),
        version: env!("CARGO_PKG_VERSION").into(),
    })
}

/// Prometheus metrics: invocations, ops, errors, latency histograms per function.
#[utoipa::path(get, path = "/metrics", tag = "operations",
    responses((status = 200, content_type = "text/plain", body = String)))]
pub async fn metrics(State(state): State<AppState>) -> Response {
    (
        [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
        state.inner.metrics.render(),
    )
        .into_response()
}

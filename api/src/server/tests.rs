//! Router-level tests: the whole API through `oneshot`, an in-memory ledger, no socket.

use std::sync::Arc;

use axum::Router;
use axum::body::Body;
use axum::http::{HeaderMap, Request, StatusCode};
use tower::ServiceExt;

use super::{AppState, ServerLimits, router};

const ADMIN: &str = "admin-token-for-router-tests";

struct Api {
    app: Router,
    state: AppState,
    _dir: tempfile::TempDir,
}

struct Answer {
    status: StatusCode,
    headers: HeaderMap,
    body: Vec<u8>,
}

impl Answer {
    async fn read(response: axum::response::Response) -> Answer {
        let status = response.status();
        let headers = response.headers().clone();
        let body = axum::body::to_bytes(response.into_body(), usize::MAX)
            .await
            .unwrap()
            .to_vec();
        Answer {
            status,
            headers,
            body,
        }
    }

    fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body)
            .unwrap_or_else(|e| panic!("not JSON ({e}): {}", String::from_utf8_lossy(&self.body)))
    }

    fn problem_type(&self) -> String {
        assert_eq!(
            self.headers["content-type"], "application/problem+json",
            "status {}",
            self.status
        );
        self.json()["type"]
            .as_str()
            .unwrap()
            .trim_start_matches("https://tally.dev/problems/")
            .to_owned()
    }

    fn header(&self, name: &str) -> &str {
        self.headers[name].to_str().unwrap()
    }
}

fn api(limits: ServerLimits) -> Api {
    let dir = tempfile::tempdir().unwrap();
    let ledger = tally_ledger::SqliteLedger::open_in_memory().unwrap();
    let state = AppState::new(
        Arc::new(ledger),
        dir.path().to_owned(),
        ADMIN,
        "default",
        limits,
    )
    .unwrap();
    Api {
        app: router(state.clone()),
        state,
        _dir: dir,
    }
}

impl Api {
    async fn call(
        &self,
        method: &str,
        uri: &str,
        token: Option<&str>,
        body: impl Into<Vec<u8>>,
        headers: &[(&str, &str)],
    ) -> Answer {
        let mut request = Request::builder().method(method).uri(uri);
        if let Some(token) = token {
            request = request.header("authorization", format!("Bearer {token}"));
        }
        for (name, value) in headers {
            request = request.header(*name, *value);
        }
        let response = self
            .app
            .clone()
            .oneshot(request.body(Body::from(body.into())).unwrap())
            .await
            .unwrap();
        Answer::read(response).await
    }

    async fn tenant_with_key(&self, name: &str) -> String {
        let tenant = self
            .call(
                "POST",
                "/v1/tenants",
                Some(ADMIN),
                format!(r#"{{"name":"{name}"}}"#),
                &[],
            )
            .await;
        assert_eq!(tenant.status, StatusCode::CREATED);
        let id = tenant.json()["id"].as_i64().unwrap();
        let key = self
            .call(
                "POST",
                &format!("/v1/tenants/{id}/keys"),
                Some(ADMIN),
                "",
                &[],
            )
            .await;
        assert_eq!(key.status, StatusCode::CREATED);
        key.json()["key"].as_str().unwrap().to_owned()
    }
}

fn guest(name: &str) -> Vec<u8> {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../guests/wasm")
        .join(format!("{name}.wasm"));
    std::fs::read(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

#[tokio::test]
async fn health_and_openapi_are_public_and_the_document_lists_every_route() {
    let api = api(ServerLimits::default());
    let health = api.call("GET", "/healthz", None, "", &[]).await;
    assert_eq!(health.status, StatusCode::OK);
    assert_eq!(health.json()["status"], "ok");
    let doc = api.call("GET", "/openapi.json", None, "", &[]).await.json();
    assert!(doc["openapi"].as_str().unwrap().starts_with("3.1"));
    let paths = doc["paths"].as_object().unwrap();
    for path in [
        "/v1/tenants",
        "/v1/tenants/{tenant}/keys",
        "/v1/modules",
        "/v1/modules/{module}/instrumented",
        "/v1/functions/{name}/invoke",
        "/v1/usage",
        "/v1/usage/daily",
        "/v1/invoices/draft",
        "/v1/invoices/{id}/void",
        "/v1/audit/verify",
        "/v1/audit/records/{id}",
        "/metrics",
    ] {
        assert!(paths.contains_key(path), "{path} missing from the document");
    }
    let unknown = api.call("GET", "/v2/nothing", None, "", &[]).await;
    assert_eq!(unknown.status, StatusCode::NOT_FOUND);
    assert_eq!(unknown.problem_type(), "not-found");
}

#[tokio::test]
async fn credentials_are_checked_and_tenants_see_only_their_own_objects() {
    let api = api(ServerLimits::default());
    let missing = api.call("GET", "/v1/tenants", None, "", &[]).await;
    assert_eq!(missing.status, StatusCode::UNAUTHORIZED);
    assert_eq!(missing.problem_type(), "unauthorized");
    let wrong = api
        .call("GET", "/v1/functions", Some("tly_wrong"), "", &[])
        .await;
    assert_eq!(wrong.status, StatusCode::UNAUTHORIZED);

    let alice = api.tenant_with_key("alice").await;
    let bob = api.tenant_with_key("bob").await;
    // A tenant key is not the admin token.
    let as_admin = api.call("GET", "/v1/tenants", Some(&alice), "", &[]).await;
    assert_eq!(as_admin.status, StatusCode::UNAUTHORIZED);

    let upload = api
        .call("POST", "/v1/modules", Some(&alice), guest("noop"), &[])
        .await;
    assert_eq!(upload.status, StatusCode::CREATED, "{:?}", upload.json());
    let module = upload.json()["id"].as_str().unwrap().to_owned();
    let put = api
        .call(
            "PUT",
            "/v1/functions/hello",
            Some(&alice),
            format!(r#"{{"module":"{module}"}}"#),
            &[],
        )
        .await;
    assert_eq!(put.status, StatusCode::CREATED);

    let theirs = api
        .call("GET", &format!("/v1/modules/{module}"), Some(&bob), "", &[])
        .await;
    assert_eq!(theirs.status, StatusCode::NOT_FOUND);
    assert_eq!(theirs.problem_type(), "unknown-module");
    let invoke = api
        .call("POST", "/v1/functions/hello/invoke", Some(&bob), "", &[])
        .await;
    assert_eq!(invoke.problem_type(), "unknown-function");
    let ok = api
        .call("POST", "/v1/functions/hello/invoke", Some(&alice), "", &[])
        .await;
    assert_eq!(ok.status, StatusCode::OK);
    let usage_id = ok.header("tally-usage-id").to_owned();
    let record = api
        .call("GET", &format!("/v1/usage/{usage_id}"), Some(&bob), "", &[])
        .await;
    assert_eq!(record.problem_type(), "unknown-usage-record");
    let audit = api
        .call(
            "GET",
            &format!("/v1/audit/records/{usage_id}"),
            Some(&bob),
            "",
            &[],
        )
        .await;
    assert_eq!(audit.status, StatusCode::NOT_FOUND);
    let listed = api.call("GET", "/v1/usage", Some(&bob), "", &[]).await;
    assert_eq!(listed.json()["records"].as_array().unwrap().len(), 0);
}

#[tokio::test]
async fn invoke_bills_once_per_idempotency_key_and_replays_the_first_answer() {
    let api = api(ServerLimits::default());
    let key = api.tenant_with_key("acme").await;
    let module = api
        .call("POST", "/v1/modules", Some(&key), guest("fib"), &[])
        .await
        .json();
    assert!(module["stats"]["functions"].as_u64().unwrap() > 0);
    let put = api
        .call(
            "PUT",
            "/v1/functions/fib",
            Some(&key),
            format!(
                r#"{{"module":"{}","args":["15"]}}"#,
                module["id"].as_str().unwrap()
            ),
            &[],
        )
        .await;
    assert_eq!(put.status, StatusCode::CREATED, "{:?}", put.json());
    let first = api
        .call(
            "POST",
            "/v1/functions/fib/invoke",
            Some(&key),
            "",
            &[("idempotency-key", "req-1")],
        )
        .await;
    assert_eq!(first.status, StatusCode::OK);
    assert_eq!(String::from_utf8_lossy(&first.body), "fib(15) = 610\n");
    assert_eq!(first.header("tally-outcome"), "exit");
    assert!(first.header("tally-ops").parse::<u64>().unwrap() > 1000);
    let retry = api
        .call(
            "POST",
            "/v1/functions/fib/invoke",
            Some(&key),
            "",
            &[("idempotency-key", "req-1")],
        )
        .await;
    assert_eq!(retry.status, StatusCode::OK);
    assert_eq!(retry.body, first.body);
    assert_eq!(retry.header("tally-replayed"), "true");
    assert_eq!(
        retry.header("tally-usage-id"),
        first.header("tally-usage-id")
    );
    let listed = api
        .call("GET", "/v1/usage", Some(&key), "", &[])
        .await
        .json();
    assert_eq!(listed["records"].as_array().unwrap().len(), 1);
    assert_eq!(listed["records"][0]["function"], "fib");
}

#[tokio::test]
async fn an_update_during_a_first_load_does_not_leave_the_old_version_cached() {
    let api = api(ServerLimits::default());
    let key = api.tenant_with_key("acme").await;
    let mut ids = Vec::new();
    for name in ["fib", "noop"] {
        let module = api
            .call("POST", "/v1/modules", Some(&key), guest(name), &[])
            .await;
        assert_eq!(module.status, StatusCode::CREATED);
        ids.push(module.json()["id"].as_str().unwrap().to_owned());
    }
    let put = |module: &str| format!(r#"{{"module":"{module}","args":["15"]}}"#);
    let first = api
        .call("PUT", "/v1/functions/f", Some(&key), put(&ids[0]), &[])
        .await;
    assert_eq!(first.status, StatusCode::CREATED);

    // A first invocation's loader reads the generation and the function (still fib)...
    let state = api.state.clone();
    let tenant = state.inner.ledger.list_tenants().unwrap()[0].id;
    let generation = state.functions_generation();
    let old = state
        .inner
        .ledger
        .find_function(tenant, "f")
        .unwrap()
        .unwrap();
    let old_module = old.module;
    // ...the function is switched to noop meanwhile...
    let second = api
        .call("PUT", "/v1/functions/f", Some(&key), put(&ids[1]), &[])
        .await;
    assert_eq!(second.status, StatusCode::OK);
    // ...and the loader finishes building the fib entry: it must not be cached.
    let loader = state.clone();
    let built = tokio::task::spawn_blocking(move || {
        loader.load_function_blocking(&old, generation).unwrap()
    })
    .await
    .unwrap();
    assert_eq!(built.module, old_module);
    assert!(state.cached_function(tenant, "f").is_none());

    let run = api
        .call("POST", "/v1/functions/f/invoke", Some(&key), "", &[])
        .await;
    assert_eq!(run.status, StatusCode::OK);
    assert_eq!(
        String::from_utf8_lossy(&run.body),
        "",
        "the new version (noop) ran"
    );
    // The new version is cached now, and a load with the current generation caches.
    assert!(state.cached_function(tenant, "f").is_some());
}

#[tokio::test]
async fn a_trapping_guest_is_billed_and_answered_with_a_problem() {
    let api = api(ServerLimits::default());
    let key = api.tenant_with_key("acme").await;
    let module = api
        .call("POST", "/v1/modules", Some(&key), guest("trap"), &[])
        .await
        .json();
    let body = format!(
        r#"{{"module":"{}","args":["100"]}}"#,
        module["id"].as_str().unwrap()
    );
    api.call("PUT", "/v1/functions/trap", Some(&key), body, &[])
        .await;
    let answer = api
        .call("POST", "/v1/functions/trap/invoke", Some(&key), "", &[])
        .await;
    assert_eq!(answer.status, StatusCode::UNPROCESSABLE_ENTITY);
    assert_eq!(answer.problem_type(), "guest-trapped");
    let problem = answer.json();
    assert_eq!(problem["outcome"], "trap");
    let usage_id = problem["usage_id"].as_u64().unwrap();
    assert_eq!(answer.header("tally-usage-id"), usage_id.to_string());
    let record = api
        .call("GET", &format!("/v1/usage/{usage_id}"), Some(&key), "", &[])
        .await
        .json();
    assert_eq!(record["outcome"]["kind"], "trap");
    assert!(record["meters"]["ops"].as_u64().unwrap() > 0);
}

#[tokio::test]
async fn bad_modules_plans_and_limits_get_their_problem_types() {
    let limits = ServerLimits {
        module_bytes_max: 50_000,
        ..ServerLimits::default()
    };
    let api = api(limits);
    let key = api.tenant_with_key("acme").await;
    let big = api
        .call("POST", "/v1/modules", Some(&key), guest("fib"), &[])
        .await;
    assert_eq!(big.status, StatusCode::PAYLOAD_TOO_LARGE);
    assert_eq!(big.problem_type(), "module-too-large");
    let garbage = api
        .call(
            "POST",
            "/v1/modules",
            Some(&key),
            b"\0asm\x01\0\0\0garbage".to_vec(),
            &[],
        )
        .await;
    assert_eq!(garbage.problem_type(), "invalid-module");
    let not_command = wat::parse_str(r#"(module (func (export "f")))"#).unwrap();
    let answer = api
        .call("POST", "/v1/modules", Some(&key), not_command, &[])
        .await;
    assert_eq!(answer.problem_type(), "invalid-module");

    let plan = api
        .call(
            "POST",
            "/v1/plans",
            Some(ADMIN),
            r#"{"plan": "x", "currency": "XXX"}"#,
            &[],
        )
        .await;
    assert_eq!(plan.problem_type(), "invalid-plan");
    assert!(!plan.json()["problems"].as_array().unwrap().is_empty());
    let not_json = api
        .call("POST", "/v1/plans", Some(ADMIN), "{nope", &[])
        .await;
    assert_eq!(not_json.problem_type(), "invalid-plan");

    let noop = api
        .call("POST", "/v1/modules", Some(&key), guest("noop"), &[])
        .await
        .json();
    let too_much = format!(
        r#"{{"module":"{}","limits":{{"max_ops":{}}}}}"#,
        noop["id"].as_str().unwrap(),
        u64::MAX
    );
    let answer = api
        .call("PUT", "/v1/functions/f", Some(&key), too_much, &[])
        .await;
    assert_eq!(answer.problem_type(), "limit-above-maximum");
    let bad_json = api
        .call("PUT", "/v1/functions/f", Some(&key), "{", &[])
        .await;
    assert_eq!(bad_json.problem_type(), "invalid-request");
}

#[tokio::test]
async fn uploads_wait_for_a_preparation_slot() {
    let api = api(ServerLimits {
        uploads_concurrent_max: 1,
        ..ServerLimits::default()
    });
    let alice = api.tenant_with_key("alice").await;
    let first = api
        .call("POST", "/v1/modules", Some(&alice), guest("fib"), &[])
        .await;
    assert_eq!(first.status, StatusCode::CREATED);
    // Another upload holds the only slot: a new module waits (and its body stays queued)...
    let held = Arc::clone(&api.state.inner.upload_slots)
        .acquire_owned()
        .await
        .unwrap();
    // ...but a module stored before is answered at once.
    let again = api.call("POST", "/v1/modules", Some(&alice), guest("fib"), &[]);
    let again = tokio::time::timeout(std::time::Duration::from_secs(10), again)
        .await
        .expect("a known module waited for a slot");
    assert_eq!(again.status, StatusCode::OK);
    assert_eq!(again.json()["id"], first.json()["id"]);
    let upload = api.call("POST", "/v1/modules", Some(&alice), guest("noop"), &[]);
    tokio::pin!(upload);
    let waited = tokio::time::timeout(std::time::Duration::from_millis(300), upload.as_mut()).await;
    assert!(waited.is_err(), "the upload finished without a slot");
    assert_eq!(api.state.inner.upload_slots.available_permits(), 0);
    drop(held);
    let done = upload.await;
    assert_eq!(done.status, StatusCode::CREATED, "{:?}", done.json());
    // The slot is back once the module is stored.
    assert_eq!(api.state.inner.upload_slots.available_permits(), 1);
}

/// A body that sends its first bytes and then nothing, forever.
struct Stalled {
    sent: bool,
}

impl http_body::Body for Stalled {
    type Data = axum::body::Bytes;
    type Error = std::convert::Infallible;

    fn poll_frame(
        mut self: std::pin::Pin<&mut Self>,
        _: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<http_body::Frame<Self::Data>, Self::Error>>> {
        if self.sent {
            return std::task::Poll::Pending;
        }
        self.sent = true;
        let first = axum::body::Bytes::from_static(b"\0asm\x01\0\0\0");
        std::task::Poll::Ready(Some(Ok(http_body::Frame::data(first))))
    }
}

/// Uploads a body that stops arriving, with `content_length` declared or not, and checks that
/// the server answers `body-timeout` after [`super::BODY_READ_SECONDS_MAX`].
async fn a_stalled_upload_gets_body_timeout(content_length: Option<&str>) {
    let api = api(ServerLimits::default());
    let key = api.tenant_with_key("slow").await;
    let mut request = Request::builder()
        .method("POST")
        .uri("/v1/modules")
        .header("authorization", format!("Bearer {key}"));
    if let Some(length) = content_length {
        request = request.header("content-length", length);
    }
    let request = request.body(Body::new(Stalled { sent: false })).unwrap();
    let started = tokio::time::Instant::now();
    let allowed = std::time::Duration::from_secs(super::BODY_READ_SECONDS_MAX);
    let response = tokio::time::timeout(allowed * 2, api.app.clone().oneshot(request))
        .await
        .expect("the server gave up on the body")
        .unwrap();
    assert!(started.elapsed() >= allowed);
    let answer = Answer::read(response).await;
    assert_eq!(answer.status, StatusCode::REQUEST_TIMEOUT);
    assert_eq!(answer.problem_type(), "body-timeout");
    assert!(answer.json()["detail"].as_str().unwrap().contains("60 s"));
}

#[tokio::test(start_paused = true)]
async fn a_body_that_stops_arriving_gets_body_timeout() {
    // Streamed to the handler, whose extractor reads it under the limit.
    a_stalled_upload_gets_body_timeout(None).await;
}

#[tokio::test(start_paused = true)]
async fn a_small_declared_body_that_stops_arriving_gets_body_timeout() {
    // Read before routing (`read_small_body`), under the same limit.
    a_stalled_upload_gets_body_timeout(Some("1000")).await;
}

#[tokio::test]
async fn a_guest_past_its_wall_time_is_stopped_billed_and_answered_with_a_problem() {
    // Calls the host forever, so either way of checking deadlines stops it.
    let wasm = wat::parse_str(
        r#"(module
             (import "wasi_snapshot_preview1" "clock_time_get"
               (func $clock (param i32 i64 i32) (result i32)))
             (memory (export "memory") 1)
             (func (export "_start")
               (loop $l
                 (drop (call $clock (i32.const 1) (i64.const 0) (i32.const 0)))
                 (br $l))))"#,
    )
    .unwrap();
    for checks in [
        tally_runtime::DeadlineChecks::Epoch,
        tally_runtime::DeadlineChecks::HostCalls,
    ] {
        let api = api(ServerLimits {
            deadline_checks: checks,
            ..ServerLimits::default()
        });
        let key = api.tenant_with_key("acme").await;
        let module = api
            .call("POST", "/v1/modules", Some(&key), wasm.clone(), &[])
            .await
            .json();
        let body = format!(
            r#"{{"module":"{}","limits":{{"max_wall_ms":50}}}}"#,
            module["id"].as_str().unwrap()
        );
        let put = api
            .call("PUT", "/v1/functions/spin", Some(&key), body, &[])
            .await;
        assert_eq!(put.status, StatusCode::CREATED, "{:?}", put.json());
        let answer = api
            .call("POST", "/v1/functions/spin/invoke", Some(&key), "", &[])
            .await;
        assert_eq!(
            answer.status,
            StatusCode::UNPROCESSABLE_ENTITY,
            "{checks:?}"
        );
        assert_eq!(answer.problem_type(), "deadline-exceeded", "{checks:?}");
        let usage_id = answer.json()["usage_id"].as_u64().unwrap();
        let record = api
            .call("GET", &format!("/v1/usage/{usage_id}"), Some(&key), "", &[])
            .await
            .json();
        assert_eq!(record["outcome"]["kind"], "deadline", "{checks:?}");
        assert!(record["meters"]["ops"].as_u64().unwrap() > 0, "{checks:?}");
        assert!(
            record["meters"]["wall_ns"].as_u64().unwrap() >= 50_000_000,
            "{checks:?}: {record}"
        );
    }
}

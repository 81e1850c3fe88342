//! The API's JSON shapes, converted explicitly from the core types (serde lives here only).

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

/// A tenant.
#[derive(Serialize, Deserialize, ToSchema, Debug, Clone)]
pub struct TenantView {
    /// Identifier.
    pub id: i64,
    /// Unique name.
    pub name: String,
    /// Creation instant (Unix ms).
    pub created_ms: i64,
}

impl From<&tally_ledger::Tenant> for TenantView {
    fn from(t: &tally_ledger::Tenant) -> Self {
        TenantView {
            id: t.id.0,
            name: t.name.clone(),
            created_ms: t.created_ms,
        }
    }
}

/// Body of `POST /v1/tenants`.
#[derive(Serialize, Deserialize, ToSchema, Debug)]
#[serde(deny_unknown_fields)]
pub struct CreateTenant {
    /// Unique name (1..=64 bytes).
    pub name: String,
}

/// An API key as stored (never the key itself).
#[derive(Serialize, Deserialize, ToSchema, Debug)]
pub struct ApiKeyView {
    /// Identifier.
    pub id: i64,
    /// Owner.
    pub tenant_id: i64,
    /// First characters of the key, for display.
    pub prefix: String,
    /// Creation instant (Unix ms).
    pub created_ms: i64,
    /// Revocation instant, if revoked.
    pub revoked_ms: Option<i64>,
}

impl From<&tally_ledger::ApiKey> for ApiKeyView {
    fn from(k: &tally_ledger::ApiKey) -> Self {
        ApiKeyView {
            id: k.id.0,
            tenant_id: k.tenant.0,
            prefix: k.prefix.clone(),
            created_ms: k.created_ms,
            revoked_ms: k.revoked_ms,
        }
    }
}

/// A new API key: the only time the key is shown.
#[derive(Serialize, Deserialize, ToSchema, Debug)]
pub struct CreatedKeyView {
    /// Identifier.
    pub id: i64,
    /// Owner.
    pub tenant_id: i64,
    /// The key (`tly_` + 64 hex digits). Only its SHA-256 is stored.
    pub key: String,
    /// Display prefix.
    pub prefix: String,
    /// Creation instant (Unix ms).
    pub created_ms: i64,
}

/// What the instrumentation pass did.
#[derive(Serialize, Deserialize, ToSchema, Debug, Clone, Default)]
pub struct InstrumentStatsView {
    /// Functions instrumented.
    pub functions: u64,
    /// Basic blocks in the original code.
    pub basic_blocks: u64,
    /// Places where the count changes at run time.
    pub counters_placed: u64,
    /// Places where the budget is checked.
    pub budget_checks_placed: u64,
}

/// A module.
#[derive(Serialize, Deserialize, ToSchema, Debug, Clone)]
pub struct ModuleView {
    /// SHA-256 of the original bytes (hex): the module's id.
    pub id: String,
    /// Size of the original, in bytes.
    pub size_bytes: u64,
    /// Size of the instrumented module, in bytes.
    pub instrumented_bytes: u64,
    /// SHA-256 of the instrumented bytes (hex).
    pub instrumented_sha256: String,
    /// Cost table used.
    pub cost_table: String,
    /// Instrumentation statistics.
    pub stats: InstrumentStatsView,
    /// Time spent instrumenting, in microseconds.
    pub instrument_us: u64,
    /// Time spent compiling, in microseconds.
    pub compile_us: u64,
    /// Upload instant (Unix ms).
    pub created_ms: i64,
}

/// Limits of one function (each at most the server's maximum; absent: the maximum).
#[derive(Serialize, Deserialize, ToSchema, Debug, Clone, Default, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct LimitsRequest {
    /// Op budget.
    pub max_ops: Option<u64>,
    /// Linear memory cap, in bytes.
    pub max_memory_bytes: Option<u64>,
    /// Wall-time limit, in milliseconds.
    pub max_wall_ms: Option<u64>,
    /// Output (stdout plus stderr) cap, in bytes.
    pub max_output_bytes: Option<u64>,
}

/// Effective limits of one function.
#[derive(Serialize, Deserialize, ToSchema, Debug, Clone, PartialEq, Eq)]
pub struct Limits {
    /// Op budget.
    pub max_ops: u64,
    /// Linear memory cap, in bytes.
    pub max_memory_bytes: u64,
    /// Wall-time limit, in milliseconds.
    pub max_wall_ms: u64,
    /// Output cap, in bytes.
    pub max_output_bytes: u64,
}

/// A function's configuration as stored with it in the ledger.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
pub struct FunctionConfig {
    /// argv after the program name (the function's name).
    pub args: Vec<String>,
    /// Environment variables.
    pub env: BTreeMap<String, String>,
    /// Effective limits.
    pub limits: Limits,
}

/// Body of `PUT /v1/functions/{name}`.
#[derive(Serialize, Deserialize, ToSchema, Debug)]
#[serde(deny_unknown_fields)]
pub struct PutFunction {
    /// The module id (SHA-256 hex of the original bytes).
    pub module: String,
    /// argv after the program name.
    #[serde(default)]
    pub args: Vec<String>,
    /// Environment variables.
    #[serde(default)]
    pub env: BTreeMap<String, String>,
    /// Limits (absent fields: the server's maximums).
    #[serde(default)]
    pub limits: LimitsRequest,
}

/// A function.
#[derive(Serialize, Deserialize, ToSchema, Debug)]
pub struct FunctionView {
    /// Identifier.
    pub id: i64,
    /// Name, unique per tenant.
    pub name: String,
    /// The module it runs (SHA-256 hex).
    pub module: String,
    /// argv after the program name.
    pub args: Vec<String>,
    /// Environment variables.
    pub env: BTreeMap<String, String>,
    /// Effective limits.
    pub limits: Limits,
    /// Creation instant (Unix ms).
    pub created_ms: i64,
    /// Last change (Unix ms).
    pub updated_ms: i64,
}

/// How an invocation ended.
#[derive(Serialize, Deserialize, ToSchema, Debug)]
pub struct OutcomeView {
    /// `exit`, `trap`, `budget_exhausted`, `memory_limit`, `deadline` or `output_limit`.
    pub kind: String,
    /// Exit code, when the guest exited.
    pub exit_code: Option<i32>,
    /// Trap description.
    pub trap: Option<String>,
}

/// The meters of one usage record (u128 meters as decimal strings).
#[derive(Serialize, Deserialize, ToSchema, Debug)]
pub struct MetersView {
    /// Weighted instructions executed.
    pub ops: u64,
    /// Peak linear memory, in bytes.
    pub memory_peak_bytes: u64,
    /// Bytes held × ops (decimal string).
    pub memory_ops_integral: String,
    /// Bytes held × wall nanoseconds (decimal string).
    pub memory_byte_ns: String,
    /// Stdin bytes.
    pub io_in_bytes: u64,
    /// Stdout plus stderr bytes.
    pub io_out_bytes: u64,
    /// Host (WASI) calls.
    pub host_calls: u64,
    /// Wall time, in nanoseconds.
    pub wall_ns: u64,
}

/// A usage record.
#[derive(Serialize, Deserialize, ToSchema, Debug)]
pub struct UsageRecordView {
    /// Its id: the position in the hash chain.
    pub id: u64,
    /// Function id.
    pub function_id: i64,
    /// Function name (if it still exists).
    pub function: Option<String>,
    /// Module id (SHA-256 hex of the original).
    pub module: String,
    /// Cost table.
    pub cost_table: String,
    /// Idempotency key.
    pub idempotency_key: String,
    /// Start (Unix ms).
    pub started_ms: i64,
    /// End (Unix ms).
    pub finished_ms: i64,
    /// Outcome.
    pub outcome: OutcomeView,
    /// Meters.
    pub meters: MetersView,
    /// Appended after its period was finalized (billed on the next invoice).
    pub late: bool,
    /// Hash of the previous record (hex).
    pub prev_hash: String,
    /// This record's hash (hex).
    pub hash: String,
}

impl UsageRecordView {
    /// Converts a stored record.
    pub fn new(r: &tally_ledger::UsageRecord, function: Option<String>) -> Self {
        let n = &r.record;
        let m = &n.meters;
        UsageRecordView {
            id: r.seq,
            function_id: n.function.0,
            function,
            module: hex::encode(r.module_sha256),
            cost_table: r.cost_table.clone(),
            idempotency_key: n.idempotency_key.clone(),
            started_ms: n.started_ms,
            finished_ms: n.finished_ms,
            outcome: OutcomeView {
                kind: n.outcome.kind.name().to_owned(),
                exit_code: n.outcome.exit_code,
                trap: n.outcome.trap.clone(),
            },
            meters: MetersView {
                ops: m.ops,
                memory_peak_bytes: m.memory_peak_bytes,
                memory_ops_integral: m.memory_ops_integral.to_string(),
                memory_byte_ns: m.memory_byte_ns.to_string(),
                io_in_bytes: m.io_in_bytes,
                io_out_bytes: m.io_out_bytes,
                host_calls: m.host_calls,
                wall_ns: m.wall_ns,
            },
            late: r.late,
            prev_hash: hex::encode(r.prev_hash),
            hash: hex::encode(r.hash),
        }
    }
}

/// A page of usage records.
#[derive(Serialize, Deserialize, ToSchema, Debug)]
pub struct UsagePageView {
    /// Records ordered by (started_ms, id).
    pub records: Vec<UsageRecordView>,
    /// Pass as `cursor` for the next page; absent on the last page.
    pub next_cursor: Option<String>,
}

/// Sums of meters (decimal strings: they are u128).
#[derive(Serialize, Deserialize, ToSchema, Debug)]
pub struct TotalsView {
    /// Number of invocations.
    pub invocations: u64,
    /// Sum of ops.
    pub ops: String,
    /// Sum of per-invocation peak memory.
    pub memory_peak_bytes: String,
    /// Sum of bytes × ops.
    pub memory_ops_integral: String,
    /// Sum of bytes × wall ns.
    pub memory_byte_ns: String,
    /// Sum of stdin bytes.
    pub io_in_bytes: String,
    /// Sum of output bytes.
    pub io_out_bytes: String,
    /// Sum of host calls.
    pub host_calls: String,
    /// Sum of wall ns.
    pub wall_ns: String,
}

impl From<&tally_ledger::MeterTotals> for TotalsView {
    fn from(t: &tally_ledger::MeterTotals) -> Self {
        TotalsView {
            invocations: t.invocations,
            ops: t.ops.to_string(),
            memory_peak_bytes: t.memory_peak_bytes.to_string(),
            memory_ops_integral: t.memory_ops_integral.to_string(),
            memory_byte_ns: t.memory_byte_ns.to_string(),
            io_in_bytes: t.io_in_bytes.to_string(),
            io_out_bytes: t.io_out_bytes.to_string(),
            host_calls: t.host_calls.to_string(),
            wall_ns: t.wall_ns.to_string(),
        }
    }
}

/// One function's usage on one UTC day.
#[derive(Serialize, Deserialize, ToSchema, Debug)]
pub struct DailyUsageView {
    /// Start of the UTC day (Unix ms).
    pub day_start_ms: i64,
    /// Function id.
    pub function_id: i64,
    /// Function name.
    pub function: Option<String>,
    /// Totals per meter.
    pub meters: TotalsView,
}

/// A plan version.
#[derive(Serialize, Deserialize, ToSchema, Debug)]
pub struct PlanVersionView {
    /// Identifier.
    pub id: i64,
    /// 1, 2, 3, ... per plan.
    pub version: u32,
    /// The version's pricing JSON.
    #[schema(value_type = Object)]
    pub pricing: serde_json::Value,
    /// Creation instant (Unix ms).
    pub created_ms: i64,
}

/// A plan with its versions.
#[derive(Serialize, Deserialize, ToSchema, Debug)]
pub struct PlanView {
    /// Identifier.
    pub id: i64,
    /// Unique name.
    pub name: String,
    /// The pricing document without `versions`.
    #[schema(value_type = Object)]
    pub header: serde_json::Value,
    /// Versions, ascending.
    pub versions: Vec<PlanVersionView>,
    /// Creation instant (Unix ms).
    pub created_ms: i64,
}

/// Body of `POST /v1/tenants/{tenant}/subscriptions`.
#[derive(Serialize, Deserialize, ToSchema, Debug)]
#[serde(deny_unknown_fields)]
pub struct Subscribe {
    /// The plan's id.
    pub plan_id: Option<i64>,
    /// Or the plan's name.
    pub plan: Option<String>,
    /// Start (Unix ms, default 0: all usage so far).
    #[serde(default)]
    pub from_ms: i64,
}

/// A subscription.
#[derive(Serialize, Deserialize, ToSchema, Debug)]
pub struct SubscriptionView {
    /// Identifier.
    pub id: i64,
    /// Subscriber.
    pub tenant_id: i64,
    /// Plan.
    pub plan_id: i64,
    /// Start (Unix ms).
    pub from_ms: i64,
}

/// A billing period and, for the admin token, the tenant.
#[derive(Serialize, Deserialize, ToSchema, Debug)]
#[serde(deny_unknown_fields)]
pub struct InvoiceRequest {
    /// Tenant id (admin token only; a tenant key acts for its own tenant).
    pub tenant: Option<i64>,
    /// A UTC calendar month `YYYY-MM`, or give `start_ms` and `end_ms`.
    pub period: Option<String>,
    /// Period start (Unix ms, inclusive).
    pub start_ms: Option<i64>,
    /// Period end (Unix ms, exclusive).
    pub end_ms: Option<i64>,
}

/// Body of `POST /v1/invoices/{id}/void`.
#[derive(Serialize, Deserialize, ToSchema, Debug)]
#[serde(deny_unknown_fields)]
pub struct VoidRequest {
    /// Why it is void.
    pub reason: String,
}

/// Result of verifying the hash chain.
#[derive(Serialize, Deserialize, ToSchema, Debug)]
pub struct VerifyView {
    /// Whether every record verifies.
    pub intact: bool,
    /// Records checked (when intact).
    pub records: Option<u64>,
    /// Head sequence number (when intact).
    pub head_seq: Option<u64>,
    /// Head hash, hex (when intact).
    pub head_hash: Option<String>,
    /// First record that does not verify.
    pub broken_at: Option<u64>,
    /// What is wrong.
    pub detail: Option<String>,
}

/// One record with what an auditor needs to check it.
#[derive(Serialize, Deserialize, ToSchema, Debug)]
pub struct AuditRecordView {
    /// Position in the chain.
    pub position: u64,
    /// The record.
    pub record: UsageRecordView,
    /// Hash of the previous record (hex).
    pub prev_hash: String,
    /// SHA-256 of `canonical_bytes` (hex).
    pub hash: String,
    /// The canonical bytes that were hashed (hex; see docs/ledger.md).
    pub canonical_bytes: String,
    /// Current head of the chain.
    pub head_seq: u64,
    /// Hash at the head (hex).
    pub head_hash: String,
}

/// Liveness.
#[derive(Serialize, Deserialize, ToSchema, Debug)]
pub struct Health {
    /// `ok`.
    pub status: String,
    /// Server version.
    pub version: String,
}

/// Usage query parameters.
#[derive(Deserialize, Debug, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub struct UsageParams {
    /// Earliest start (Unix ms, inclusive; default 0).
    pub from_ms: Option<i64>,
    /// Latest start (Unix ms, exclusive; default: far future).
    pub to_ms: Option<i64>,
    /// Only this function.
    pub function: Option<String>,
    /// Cursor from the previous page.
    pub cursor: Option<String>,
    /// Page size (1..=1000, default 100).
    pub limit: Option<usize>,
}

/// Daily summary parameters.
#[derive(Deserialize, Debug, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub struct DailyParams {
    /// Range start (Unix ms; default 30 days before `to_ms`).
    pub from_ms: Option<i64>,
    /// Range end (Unix ms, exclusive; default the end of today, UTC).
    pub to_ms: Option<i64>,
}

/// `?tenant=` for the admin token.
#[derive(Deserialize, Debug, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub struct TenantParam {
    /// Tenant id (admin token only).
    pub tenant: Option<i64>,
}

/// Invoice format.
#[derive(Deserialize, Debug, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub struct FormatParams {
    /// `json` (default) or `csv`; `Accept: text/csv` also selects CSV.
    pub format: Option<String>,
    /// Tenant id (admin token only).
    pub tenant: Option<i64>,
}

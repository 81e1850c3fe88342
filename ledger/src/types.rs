//! Plain data types stored and returned by the ledger. No serde: the API owns its wire shapes.

use crate::error::{Result, invalid};

macro_rules! id_type {
    ($(#[$doc:meta] $name:ident),* $(,)?) => {$(
        #[$doc]
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
        pub struct $name(pub i64);

        impl std::fmt::Display for $name {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                self.0.fmt(f)
            }
        }
    )*};
}

id_type!(
    /// Identifier of a tenant.
    TenantId,
    /// Identifier of an API key.
    ApiKeyId,
    /// Identifier of a stored module.
    ModuleId,
    /// Identifier of a function.
    FunctionId,
    /// Identifier of a plan.
    PlanId,
    /// Identifier of one version of a plan.
    PlanVersionId,
    /// Identifier of a subscription.
    SubscriptionId,
    /// Identifier of an invoice (global; the per-tenant number is [`Invoice::number`]).
    InvoiceId,
);

/// A SHA-256 digest.
pub type Sha256 = [u8; 32];

/// A tenant: the unit that owns functions and receives invoices.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Tenant {
    /// Its identifier.
    pub id: TenantId,
    /// Unique, immutable name.
    pub name: String,
    /// Creation instant (Unix milliseconds).
    pub created_ms: i64,
}

/// An API key as stored: only its SHA-256 and a short display prefix, never the key itself.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApiKey {
    /// Its identifier.
    pub id: ApiKeyId,
    /// Owner.
    pub tenant: TenantId,
    /// The first [`crate::API_KEY_PREFIX_CHARS`] characters of the clear key, for display.
    pub prefix: String,
    /// Creation instant (Unix milliseconds).
    pub created_ms: i64,
    /// Revocation instant, if revoked.
    pub revoked_ms: Option<i64>,
}

/// A freshly created API key: the only moment the clear key exists.
#[derive(Debug, Clone)]
pub struct CreatedApiKey {
    /// The stored part.
    pub key: ApiKey,
    /// The clear key (`tly_` followed by 64 hex digits). Show it once; it is not stored.
    pub clear: String,
}

/// Where the instrumented bytes of a module live.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ModuleBytes {
    /// Stored in the database.
    Inline(Vec<u8>),
    /// Stored in a file (path relative to the data directory or absolute).
    Path(String),
}

/// Input for [`crate::Ledger::create_module`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewModule {
    /// Owner.
    pub tenant: TenantId,
    /// SHA-256 of the original (uploaded) bytes.
    pub original_sha256: Sha256,
    /// The instrumented bytes or their path.
    pub instrumented: ModuleBytes,
    /// Identifier of the cost table used to instrument (e.g. `default`, `wasmtime-fuel`).
    pub cost_table: String,
    /// Static statistics from the instrumenter, as JSON.
    pub static_stats: serde_json::Value,
    /// Creation instant (Unix milliseconds).
    pub created_ms: i64,
}

/// A stored module.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Module {
    /// Its identifier.
    pub id: ModuleId,
    /// The stored fields.
    pub module: NewModule,
}

/// A function: a name bound to a module with limits.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Function {
    /// Its identifier (stable across re-pointing to a new module).
    pub id: FunctionId,
    /// Owner.
    pub tenant: TenantId,
    /// Name, unique per tenant.
    pub name: String,
    /// The module it runs.
    pub module: ModuleId,
    /// Limits as JSON (owned by the runtime's configuration).
    pub limits: serde_json::Value,
    /// Creation instant.
    pub created_ms: i64,
    /// Last change instant.
    pub updated_ms: i64,
}

/// A named plan; its prices live in versions.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Plan {
    /// Its identifier.
    pub id: PlanId,
    /// Unique name (the `plan` field of the pricing document).
    pub name: String,
    /// The pricing document without `versions` (currency, rounding, description).
    pub header_json: String,
    /// Creation instant.
    pub created_ms: i64,
}

/// One version of a plan: one element of the pricing document's `versions` array, with its own
/// `effective_from_ms`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PlanVersion {
    /// Its identifier.
    pub id: PlanVersionId,
    /// The plan.
    pub plan: PlanId,
    /// 1, 2, 3, ... per plan (the `version` field of the JSON).
    pub version: u32,
    /// The version's pricing JSON, exactly as given.
    pub pricing_json: String,
    /// Creation instant.
    pub created_ms: i64,
}

/// A tenant subscribed to a plan from an instant on (until its next subscription). The plan's
/// version in effect at each usage timestamp prices that usage.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Subscription {
    /// Its identifier.
    pub id: SubscriptionId,
    /// Subscriber.
    pub tenant: TenantId,
    /// The plan.
    pub plan: PlanId,
    /// Start (Unix milliseconds, inclusive).
    pub from_ms: i64,
}

/// How an invocation ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum OutcomeKind {
    /// The guest exited (returned or called `proc_exit`).
    Exit,
    /// The guest trapped.
    Trap,
    /// The ops budget ran out.
    BudgetExhausted,
    /// The memory limit was hit.
    MemoryLimit,
    /// The wall-clock deadline passed.
    Deadline,
    /// The output limit was hit.
    OutputLimit,
}

impl OutcomeKind {
    /// All kinds, in code order.
    pub const ALL: [OutcomeKind; 6] = [
        OutcomeKind::Exit,
        OutcomeKind::Trap,
        OutcomeKind::BudgetExhausted,
        OutcomeKind::MemoryLimit,
        OutcomeKind::Deadline,
        OutcomeKind::OutputLimit,
    ];

    /// The snake_case name used on the wire.
    pub fn name(self) -> &'static str {
        match self {
            OutcomeKind::Exit => "exit",
            OutcomeKind::Trap => "trap",
            OutcomeKind::BudgetExhausted => "budget_exhausted",
            OutcomeKind::MemoryLimit => "memory_limit",
            OutcomeKind::Deadline => "deadline",
            OutcomeKind::OutputLimit => "output_limit",
        }
    }

    /// Parses a snake_case name.
    pub fn from_name(name: &str) -> Option<OutcomeKind> {
        OutcomeKind::ALL.into_iter().find(|k| k.name() == name)
    }

    /// The stable one-byte code stored and hashed.
    pub fn code(self) -> u8 {
        match self {
            OutcomeKind::Exit => 0,
            OutcomeKind::Trap => 1,
            OutcomeKind::BudgetExhausted => 2,
            OutcomeKind::MemoryLimit => 3,
            OutcomeKind::Deadline => 4,
            OutcomeKind::OutputLimit => 5,
        }
    }

    /// Inverse of [`OutcomeKind::code`].
    pub fn from_code(code: u8) -> Option<OutcomeKind> {
        OutcomeKind::ALL.into_iter().find(|k| k.code() == code)
    }
}

/// The outcome of an invocation.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Outcome {
    /// How it ended.
    pub kind: OutcomeKind,
    /// Exit code, when the guest exited.
    pub exit_code: Option<i32>,
    /// Trap description, when it trapped (at most [`crate::TRAP_MESSAGE_BYTES_MAX`] bytes).
    pub trap: Option<String>,
}

/// Every meter of one usage report.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct UsageMeters {
    /// Weighted instructions executed.
    pub ops: u64,
    /// Largest linear memory size reached.
    pub memory_peak_bytes: u64,
    /// Bytes held × ops executed (deterministic memory-time).
    pub memory_ops_integral: u128,
    /// Bytes held × wall nanoseconds (wall-clock memory-time; byte-seconds = this / 10^9).
    pub memory_byte_ns: u128,
    /// Input bytes.
    pub io_in_bytes: u64,
    /// Output bytes.
    pub io_out_bytes: u64,
    /// Host calls made.
    pub host_calls: u64,
    /// Wall-clock duration.
    pub wall_ns: u64,
}

/// A usage record as handed to [`crate::Ledger::append`].
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct NewUsageRecord {
    /// Tenant billed.
    pub tenant: TenantId,
    /// Function invoked (must belong to the tenant).
    pub function: FunctionId,
    /// Module that ran (must belong to the tenant); its hash and cost table are recorded.
    pub module: ModuleId,
    /// Client-chosen key, unique per tenant (1..=[`crate::IDEMPOTENCY_KEY_BYTES_MAX`] bytes).
    pub idempotency_key: String,
    /// Invocation start (Unix milliseconds). Decides the billing period.
    pub started_ms: i64,
    /// Invocation end (Unix milliseconds, ≥ `started_ms`).
    pub finished_ms: i64,
    /// How it ended.
    pub outcome: Outcome,
    /// The meters.
    pub meters: UsageMeters,
}

/// A stored, hash-chained usage record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UsageRecord {
    /// Position in the chain: 1, 2, 3, ... without gaps.
    pub seq: u64,
    /// The fields as appended.
    pub record: NewUsageRecord,
    /// SHA-256 of the module's original bytes.
    pub module_sha256: Sha256,
    /// Cost table the module was instrumented with.
    pub cost_table: String,
    /// True when the record arrived after its period had been finalized: it is billed on the
    /// tenant's next invoice, with its original timestamp.
    pub late: bool,
    /// Hash of the previous record (zeros for seq 1).
    pub prev_hash: Sha256,
    /// SHA-256 over the canonical encoding of this record and `prev_hash`.
    pub hash: Sha256,
}

/// Result of an append.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Appended {
    /// The stored record (new or existing).
    pub record: UsageRecord,
    /// False when the idempotency key had already been used with identical content.
    pub created: bool,
}

/// A half-open time range `[start_ms, end_ms)` in Unix milliseconds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Period {
    /// Inclusive start.
    pub start_ms: i64,
    /// Exclusive end.
    pub end_ms: i64,
}

impl Period {
    /// Checks `start_ms < end_ms`.
    pub fn new(start_ms: i64, end_ms: i64) -> Result<Period> {
        if start_ms >= end_ms {
            return Err(invalid(
                "period",
                format!("start {start_ms} is not before end {end_ms}"),
            ));
        }
        Ok(Period { start_ms, end_ms })
    }

    /// Whether `instant_ms` lies in the period.
    pub fn contains(&self, instant_ms: i64) -> bool {
        self.start_ms <= instant_ms && instant_ms < self.end_ms
    }
}

/// A query over usage records, ordered by `(started_ms, seq)`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UsageQuery {
    /// Tenant.
    pub tenant: TenantId,
    /// Only this function, if set.
    pub function: Option<FunctionId>,
    /// Range of `started_ms`.
    pub range: Period,
    /// Opaque cursor from a previous page.
    pub cursor: Option<String>,
    /// Page size, 1..=[`crate::PAGE_RECORDS_MAX`].
    pub limit: usize,
}

/// One page of usage records.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UsagePage {
    /// The records, ordered by `(started_ms, seq)`.
    pub records: Vec<UsageRecord>,
    /// Cursor for the next page; `None` when this page is the last one (for now).
    pub next_cursor: Option<String>,
}

/// Sums of meters over a set of usage records.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct MeterTotals {
    /// Number of records.
    pub invocations: u64,
    /// Sum of ops.
    pub ops: u128,
    /// Sum of each record's peak memory (the pricing meter sums peaks per invocation).
    pub memory_peak_bytes: u128,
    /// Sum of bytes × ops.
    pub memory_ops_integral: u128,
    /// Sum of bytes × wall nanoseconds.
    pub memory_byte_ns: u128,
    /// Sum of input bytes.
    pub io_in_bytes: u128,
    /// Sum of output bytes.
    pub io_out_bytes: u128,
    /// Sum of host calls.
    pub host_calls: u128,
    /// Sum of wall nanoseconds.
    pub wall_ns: u128,
}

impl MeterTotals {
    /// Adds one record's meters. Sums are u128 and cannot overflow for fewer than 2^64 records.
    pub fn add(&mut self, m: &UsageMeters) {
        self.invocations += 1;
        self.ops += u128::from(m.ops);
        self.memory_peak_bytes += u128::from(m.memory_peak_bytes);
        self.memory_ops_integral = self
            .memory_ops_integral
            .checked_add(m.memory_ops_integral)
            .expect("memory_ops_integral sum overflows u128");
        self.memory_byte_ns = self
            .memory_byte_ns
            .checked_add(m.memory_byte_ns)
            .expect("memory_byte_ns sum overflows u128");
        self.io_in_bytes += u128::from(m.io_in_bytes);
        self.io_out_bytes += u128::from(m.io_out_bytes);
        self.host_calls += u128::from(m.host_calls);
        self.wall_ns += u128::from(m.wall_ns);
    }

    /// Adds another set of totals.
    pub fn merge(&mut self, other: &MeterTotals) {
        self.invocations += other.invocations;
        self.ops += other.ops;
        self.memory_peak_bytes += other.memory_peak_bytes;
        self.memory_ops_integral += other.memory_ops_integral;
        self.memory_byte_ns += other.memory_byte_ns;
        self.io_in_bytes += other.io_in_bytes;
        self.io_out_bytes += other.io_out_bytes;
        self.host_calls += other.host_calls;
        self.wall_ns += other.wall_ns;
    }
}

/// Usage of one function on one UTC day.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DailyUsage {
    /// Start of the UTC day (Unix milliseconds).
    pub day_start_ms: i64,
    /// The function.
    pub function: FunctionId,
    /// Its totals that day.
    pub totals: MeterTotals,
}

/// Verdict of [`crate::Ledger::verify`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ChainVerdict {
    /// Every record's hash matches; the head is as recorded.
    Intact {
        /// Number of records checked.
        records: u64,
        /// Last sequence number (0 for an empty ledger).
        head_seq: u64,
        /// Hash of the last record (zeros for an empty ledger).
        head_hash: Sha256,
    },
    /// The first place where the chain does not match.
    Broken(ChainBreak),
}

/// Where and how the chain is broken.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChainBreak {
    /// The first sequence number that does not verify.
    pub seq: u64,
    /// What is wrong.
    pub kind: ChainBreakKind,
}

/// Kinds of chain breaks.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ChainBreakKind {
    /// The stored hash differs from the recomputed one: the row (or its module) was edited, or
    /// rows were reordered.
    HashMismatch {
        /// Hash stored in the row.
        stored: Sha256,
        /// Hash recomputed from the row's fields and the previous hash.
        computed: Sha256,
    },
    /// Record `seq` is missing (the next row present has `found_seq`).
    Missing {
        /// The next sequence number present, if any.
        found_seq: Option<u64>,
    },
    /// A stored field cannot be decoded.
    Undecodable(String),
    /// The recorded head (`chain_head` table) is beyond the last record: records were removed
    /// from the end.
    HeadMismatch {
        /// Head as recorded at the last commit.
        recorded_seq: u64,
    },
    /// A finalized invoice covers the chain up to `seq` with a hash that differs from the record's.
    InvoiceAnchorMismatch {
        /// The invoice.
        invoice: InvoiceId,
    },
}

impl std::fmt::Display for ChainBreak {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &self.kind {
            ChainBreakKind::HashMismatch { stored, computed } => write!(
                f,
                "record {}: stored hash {} does not match recomputed {}",
                self.seq,
                hex::encode(stored),
                hex::encode(computed)
            ),
            ChainBreakKind::Missing {
                found_seq: Some(found),
            } => {
                write!(
                    f,
                    "record {} is missing (next present is {found})",
                    self.seq
                )
            }
            ChainBreakKind::Missing { found_seq: None } => {
                write!(f, "record {} is missing", self.seq)
            }
            ChainBreakKind::Undecodable(why) => {
                write!(f, "record {}: undecodable: {why}", self.seq)
            }
            ChainBreakKind::HeadMismatch { recorded_seq } => write!(
                f,
                "record {}: recorded head is {recorded_seq}, records were removed from the end",
                self.seq
            ),
            ChainBreakKind::InvoiceAnchorMismatch { invoice } => write!(
                f,
                "record {}: hash differs from the one anchored in invoice {invoice}",
                self.seq
            ),
        }
    }
}

/// A record with what an auditor needs to check it independently.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AuditRecord {
    /// The record, with `prev_hash` and `hash`.
    pub record: UsageRecord,
    /// The canonical bytes hashed (see `docs/ledger.md`).
    pub canonical_bytes: Vec<u8>,
    /// Current head of the chain.
    pub head_seq: u64,
    /// Hash at the head.
    pub head_hash: Sha256,
}

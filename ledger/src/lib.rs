//! tally's ledger: the only crate that knows SQL.
//!
//! It stores tenants and their (hashed) API keys, modules, functions, plans and their versions,
//! subscriptions, usage records and invoices. Usage records are append-only and hash-chained:
//! each record's hash is SHA-256 over a canonical encoding of its fields and the previous
//! record's hash (see `docs/ledger.md`), and [`Ledger::verify`] names the first record that does
//! not match. Appends from many threads go through one writer thread that commits them in groups;
//! an append returns only after its record is committed. Invoices are priced by `tally-pricing`.
//!
//! Storage sits behind the [`Ledger`] trait (the API holds an `Arc<dyn Ledger>`); SQLite
//! ([`SqliteLedger`]) is the embedded default.
//!
//! # Example
//! ```
//! use tally_ledger::*;
//!
//! let ledger = SqliteLedger::open_in_memory()?;
//! let tenant = ledger.create_tenant("acme", 0)?;
//! let module = ledger.create_module(NewModule {
//!     tenant: tenant.id,
//!     original_sha256: [7; 32],
//!     instrumented: ModuleBytes::Inline(b"\0asm\x01\0\0\0".to_vec()),
//!     cost_table: "default".into(),
//!     static_stats: serde_json::json!({}),
//!     created_ms: 0,
//! })?;
//! let function = ledger.put_function(tenant.id, "resize", module.id, serde_json::json!({}), 0)?;
//! let record = NewUsageRecord {
//!     tenant: tenant.id,
//!     function: function.id,
//!     module: module.id,
//!     idempotency_key: "req-1".into(),
//!     started_ms: 1_000,
//!     finished_ms: 1_002,
//!     outcome: Outcome { kind: OutcomeKind::Exit, exit_code: Some(0), trap: None },
//!     meters: UsageMeters { ops: 1_234, ..UsageMeters::default() },
//! };
//! let first = ledger.append(record.clone())?;
//! assert!(first.created && first.record.seq == 1);
//! let retry = ledger.append(record)?; // same key, same content: the same record
//! assert!(!retry.created && retry.record == first.record);
//! assert!(matches!(ledger.verify()?, ChainVerdict::Intact { records: 1, .. }));
//! # Ok::<(), tally_ledger::Error>(())
//! ```
#![deny(missing_docs)]

mod chain;
mod checkpoint;
mod error;
mod invoice;
mod schema;
mod sqlite;
mod types;
mod writer;

pub mod bench_support;

pub use chain::{ChainFields, GENESIS_HASH, RECORD_DOMAIN_TAG, encode as encode_record};
pub use checkpoint::{
    CHECKPOINT_INTERVAL_MS, CheckpointStats, WAL_FILE_BYTES_LIMIT, WAL_RESTART_FRAMES,
};
pub use error::{Error, Result};
pub use invoice::{
    CSV_COLUMNS, Invoice, InvoiceStatus, LateUsage, NANOS_PER_SECOND, export_csv, export_json,
    format_amount,
};
pub use schema::SCHEMA_VERSION;
pub use sqlite::{DATABASE_FILE, Durability, LOCK_FILE, OpenOptions, SqliteLedger};
pub use types::*;

/// Most records committed in one group-commit transaction.
pub const BATCH_RECORDS_MAX: usize = 4_096;
/// Most commands waiting for the writer thread (producers block beyond this: back-pressure).
pub const WRITER_QUEUE_COMMANDS_MAX: usize = 16_384;
/// Most records in one page of [`Ledger::list_usage`].
pub const PAGE_RECORDS_MAX: usize = 1_000;
/// Longest idempotency key, in bytes.
pub const IDEMPOTENCY_KEY_BYTES_MAX: usize = 128;
/// Longest trap message stored with a record, in bytes.
pub const TRAP_MESSAGE_BYTES_MAX: usize = 1_024;
/// Longest tenant or plan name, in bytes.
pub const NAME_BYTES_MAX: usize = 64;
/// Longest function name, in bytes.
pub const FUNCTION_NAME_BYTES_MAX: usize = 128;
/// Longest stored JSON document (plan, limits, static stats), in bytes.
pub const JSON_BYTES_MAX: usize = 1 << 20;
/// Most idle read connections kept open.
pub const READER_CONNECTIONS_IDLE_MAX: usize = 8;
/// Records read per query while verifying the chain.
pub const VERIFY_PAGE_RECORDS: usize = 65_536;
/// Most days in one [`Ledger::daily_usage`] query.
pub const DAILY_SUMMARY_DAYS_MAX: i64 = 400;
/// Milliseconds in a UTC day.
pub const DAY_MS: i64 = 86_400_000;
/// Random bytes in an API key.
pub const API_KEY_RANDOM_BYTES: usize = 32;
/// Characters of a clear API key kept for display.
pub const API_KEY_PREFIX_CHARS: usize = 12;
/// Prefix of every clear API key.
pub const API_KEY_TAG: &str = "tly_";
/// Longest clear API key accepted by [`Ledger::resolve_api_key`], in bytes.
pub const API_KEY_BYTES_MAX: usize = 128;
/// Longest void reason, in bytes.
pub const VOID_REASON_BYTES_MAX: usize = 1_024;

const _: () = assert!(BATCH_RECORDS_MAX <= WRITER_QUEUE_COMMANDS_MAX);
const _: () = assert!(IDEMPOTENCY_KEY_BYTES_MAX <= u16::MAX as usize);
const _: () = assert!(TRAP_MESSAGE_BYTES_MAX <= u16::MAX as usize);
const _: () = assert!(API_KEY_PREFIX_CHARS < API_KEY_TAG.len() + 2 * API_KEY_RANDOM_BYTES);
const _: () = assert!(API_KEY_TAG.len() + 2 * API_KEY_RANDOM_BYTES <= API_KEY_BYTES_MAX);

/// The future returned by [`Ledger::append_async`].
pub type AppendFuture =
    std::pin::Pin<Box<dyn std::future::Future<Output = Result<Appended>> + Send + 'static>>;

/// Everything the rest of tally asks of storage. Methods are synchronous and may block (the API
/// calls them through `spawn_blocking`); implementations are shared as `Arc<dyn Ledger>`.
///
/// Instants are Unix milliseconds passed in by the caller: the ledger has no clock.
pub trait Ledger: Send + Sync {
    // Tenants and API keys.

    /// Creates a tenant with a unique name.
    fn create_tenant(&self, name: &str, now_ms: i64) -> Result<Tenant>;
    /// A tenant by id.
    fn get_tenant(&self, id: TenantId) -> Result<Tenant>;
    /// A tenant by name.
    fn find_tenant(&self, name: &str) -> Result<Option<Tenant>>;
    /// All tenants, by id.
    fn list_tenants(&self) -> Result<Vec<Tenant>>;
    /// Creates an API key; the clear key is returned once and only its SHA-256 is stored.
    fn create_api_key(&self, tenant: TenantId, now_ms: i64) -> Result<CreatedApiKey>;
    /// The tenant and key for a clear key (by SHA-256 lookup); `None` if unknown or revoked.
    fn resolve_api_key(&self, clear: &str) -> Result<Option<(Tenant, ApiKey)>>;
    /// Revokes a key (kept, marked).
    fn revoke_api_key(&self, id: ApiKeyId, now_ms: i64) -> Result<ApiKey>;
    /// A tenant's keys.
    fn list_api_keys(&self, tenant: TenantId) -> Result<Vec<ApiKey>>;

    // Modules and functions.

    /// Stores a module; (tenant, original hash, cost table) is unique.
    fn create_module(&self, module: NewModule) -> Result<Module>;
    /// A module by id.
    fn get_module(&self, id: ModuleId) -> Result<Module>;
    /// A module by its natural key.
    fn find_module(
        &self,
        tenant: TenantId,
        original_sha256: &Sha256,
        cost_table: &str,
    ) -> Result<Option<Module>>;
    /// A tenant's modules (without loading anything but the fields).
    fn list_modules(&self, tenant: TenantId) -> Result<Vec<Module>>;
    /// Creates the function `name` or points it at another module with new limits.
    fn put_function(
        &self,
        tenant: TenantId,
        name: &str,
        module: ModuleId,
        limits: serde_json::Value,
        now_ms: i64,
    ) -> Result<Function>;
    /// A function by id.
    fn get_function(&self, id: FunctionId) -> Result<Function>;
    /// A function by tenant and name.
    fn find_function(&self, tenant: TenantId, name: &str) -> Result<Option<Function>>;
    /// A tenant's functions, by name.
    fn list_functions(&self, tenant: TenantId) -> Result<Vec<Function>>;

    // Plans and subscriptions.

    /// Creates a plan from a complete pricing document (validated by `tally-pricing`); each
    /// element of its `versions` becomes a [`PlanVersion`].
    fn create_plan(&self, pricing_json: &str, now_ms: i64) -> Result<(Plan, Vec<PlanVersion>)>;
    /// A plan by id.
    fn get_plan(&self, id: PlanId) -> Result<Plan>;
    /// A plan by name.
    fn find_plan(&self, name: &str) -> Result<Option<Plan>>;
    /// All plans.
    fn list_plans(&self) -> Result<Vec<Plan>>;
    /// Adds a version (one element of a pricing document's `versions`); the whole plan is
    /// revalidated.
    fn add_plan_version(
        &self,
        plan: PlanId,
        version_json: &str,
        now_ms: i64,
    ) -> Result<PlanVersion>;
    /// Replaces a version that has not priced a finalized invoice yet
    /// ([`Error::PlanVersionInUse`] otherwise).
    fn update_plan_version(&self, id: PlanVersionId, version_json: &str) -> Result<PlanVersion>;
    /// A plan's versions, ascending.
    fn list_plan_versions(&self, plan: PlanId) -> Result<Vec<PlanVersion>>;
    /// The plan as `tally-pricing` sees it (header plus all versions).
    fn plan_document(&self, plan: PlanId) -> Result<String>;
    /// Subscribes a tenant to a plan from `from_ms` on (until its next subscription).
    fn subscribe(&self, tenant: TenantId, plan: PlanId, from_ms: i64) -> Result<Subscription>;
    /// A tenant's subscriptions, by start.
    fn list_subscriptions(&self, tenant: TenantId) -> Result<Vec<Subscription>>;

    // Usage.

    /// Appends a usage record and returns once it is committed. A reused idempotency key returns
    /// the existing record if the content is identical, [`Error::ExistsWithDifferentFields`]
    /// otherwise.
    fn append(&self, record: NewUsageRecord) -> Result<Appended>;
    /// [`Ledger::append`] for async callers: the record is queued for the writer before this
    /// returns, and the future resolves once it is committed, without holding a thread meanwhile
    /// (the writer wakes the task). Dropping the future does not withdraw the record. When the
    /// writer's queue is full ([`WRITER_QUEUE_COMMANDS_MAX`]) the call blocks until the writer
    /// takes it (back-pressure, bounded by one group commit).
    fn append_async(&self, record: NewUsageRecord) -> AppendFuture;
    /// Appends up to [`BATCH_RECORDS_MAX`] records in one round trip; one result per record.
    fn append_batch(&self, records: Vec<NewUsageRecord>) -> Result<Vec<Result<Appended>>>;
    /// A usage record by sequence number.
    fn get_usage(&self, seq: u64) -> Result<Option<UsageRecord>>;
    /// A tenant's usage records in a time range, by `(started_ms, seq)`, with a cursor.
    fn list_usage(&self, query: &UsageQuery) -> Result<UsagePage>;
    /// Totals per UTC day and function, for records started in `range`.
    fn daily_usage(&self, tenant: TenantId, range: Period) -> Result<Vec<DailyUsage>>;

    // Invoices.

    /// Computes (without storing) the invoice for a tenant and period; status
    /// [`InvoiceStatus::Draft`].
    fn draft_invoice(&self, tenant: TenantId, period: Period) -> Result<Invoice>;
    /// Computes and stores the invoice immutably with the next per-tenant number.
    fn finalize_invoice(&self, tenant: TenantId, period: Period, now_ms: i64) -> Result<Invoice>;
    /// Marks a finalized invoice void (it is kept).
    fn void_invoice(&self, id: InvoiceId, reason: &str, now_ms: i64) -> Result<Invoice>;
    /// A finalized invoice by id.
    fn get_invoice(&self, id: InvoiceId) -> Result<Invoice>;
    /// A tenant's finalized invoices, by number.
    fn list_invoices(&self, tenant: TenantId) -> Result<Vec<Invoice>>;

    // Audit.

    /// Recomputes the whole chain; names the first record that does not match.
    fn verify(&self) -> Result<ChainVerdict>;
    /// A record with its canonical bytes and the current head.
    fn audit_record(&self, seq: u64) -> Result<Option<AuditRecord>>;
    /// The current head: last sequence number and its hash (0 and zeros when empty).
    fn chain_head(&self) -> Result<(u64, Sha256)>;
}

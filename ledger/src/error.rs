//! The crate's one error type.

/// Everything that can go wrong in the ledger.
///
/// Results that a client retry can hit are explicit variants (`ExistsWithDifferentFields`,
/// `PeriodAlreadyFinalized`, ...), not a generic conflict.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// SQLite reported an error.
    #[error("sqlite: {0}")]
    Sqlite(#[from] rusqlite::Error),
    /// A file system operation failed.
    #[error("{what}: {source}")]
    Io {
        /// What was being done.
        what: String,
        /// The underlying error.
        #[source]
        source: std::io::Error,
    },
    /// The database was written by a newer version of the ledger.
    #[error(
        "database schema version {found} is newer than the newest this build knows ({supported}); \
         upgrade tally before opening it"
    )]
    SchemaTooNew {
        /// Version stored in the database.
        found: i64,
        /// Newest version this build can migrate to.
        supported: i64,
    },
    /// Another process holds the ledger's data directory.
    #[error("ledger directory {dir} is locked by another process")]
    Locked {
        /// The data directory.
        dir: String,
    },
    /// Input that breaks a documented limit or format.
    #[error("invalid {field}: {reason}")]
    Invalid {
        /// Name of the offending field.
        field: &'static str,
        /// What is wrong with it.
        reason: String,
    },
    /// A referenced entity does not exist (or belongs to another tenant).
    #[error("{what} {id} not found")]
    NotFound {
        /// Kind of entity.
        what: &'static str,
        /// Its identifier as text.
        id: String,
    },
    /// A uniqueness rule was broken (tenant name, function name, plan name, ...).
    #[error("{what} {key} already exists")]
    AlreadyExists {
        /// Kind of entity.
        what: &'static str,
        /// The duplicate key as text.
        key: String,
    },
    /// An idempotency key was reused by the same tenant for a different usage record.
    #[error("idempotency key {key:?} already used with different {}", fields.join(", "))]
    ExistsWithDifferentFields {
        /// The reused key.
        key: String,
        /// Sequence number of the record that holds the key.
        existing_seq: u64,
        /// Names of the fields whose values differ, in canonical field order.
        fields: Vec<&'static str>,
    },
    /// A plan version is referenced by a subscription or an invoice and cannot change.
    #[error("plan version {0} is in use and immutable")]
    PlanVersionInUse(i64),
    /// The plan JSON was rejected by `tally-pricing`.
    #[error("plan rejected by pricing: {0}")]
    PlanRejected(#[source] tally_pricing::Error),
    /// Pricing failed while computing an invoice.
    #[error("pricing failed: {0}")]
    Pricing(#[source] tally_pricing::Error),
    /// The plans subscribed during one period use different currencies.
    #[error("subscribed plans mix currencies {first} and {other} within one period")]
    MixedCurrencies {
        /// Currency of the first subscription span.
        first: &'static str,
        /// A different currency.
        other: &'static str,
    },
    /// An invoice sum does not fit in a decimal.
    #[error("invoice {0} overflows")]
    Overflow(&'static str),
    /// The tenant has no subscription covering any part of the period.
    #[error("tenant {tenant} has no subscription during the period")]
    NoSubscription {
        /// The tenant id.
        tenant: i64,
    },
    /// The period has already been finalized for this tenant.
    #[error(
        "period starting at {period_start_ms} is already finalized as invoice {number} for tenant {tenant}"
    )]
    PeriodAlreadyFinalized {
        /// The tenant id.
        tenant: i64,
        /// Start of the period (Unix milliseconds).
        period_start_ms: i64,
        /// Number of the existing invoice.
        number: u64,
    },
    /// A period must start at or after the end of the tenant's last finalized period.
    #[error(
        "period starting at {period_start_ms} is before the end of the last finalized period ({closed_until_ms})"
    )]
    PeriodClosed {
        /// Start of the requested period.
        period_start_ms: i64,
        /// End of the last finalized period.
        closed_until_ms: i64,
    },
    /// A subscription change would rewrite an already invoiced period.
    #[error(
        "subscription from {from_ms} falls into an already finalized period (closed until {closed_until_ms})"
    )]
    SubscriptionInClosedPeriod {
        /// Requested start.
        from_ms: i64,
        /// End of the last finalized period.
        closed_until_ms: i64,
    },
    /// The invoice was already voided.
    #[error("invoice {0} is already void")]
    AlreadyVoid(i64),
    /// A value stored in the database cannot be decoded (corruption or tampering).
    #[error("corrupt row: {0}")]
    Corrupt(String),
    /// The group-commit transaction holding this record failed and was rolled back; nothing
    /// of the batch was stored and the append can be retried.
    #[error("batch rolled back: {0}")]
    BatchAborted(String),
    /// The writer thread is gone (the ledger is shutting down or crashed).
    #[error("ledger writer stopped")]
    WriterStopped,
    /// A write through a handle from [`SqliteLedger::open_read_only`](crate::SqliteLedger).
    #[error(
        "this ledger handle is read-only; writing needs the process that holds the data directory"
    )]
    ReadOnly,
    /// A read-only open found a database that needs migrating first (only the writer migrates).
    #[error(
        "database schema version {found} is older than this build's ({supported}); open it once \
         with the writer (e.g. `tally serve`) to migrate it"
    )]
    SchemaTooOld {
        /// Version stored in the database.
        found: i64,
        /// Version this build expects.
        supported: i64,
    },
}

/// Shorthand for results in this crate.
pub type Result<T, E = Error> = std::result::Result<T, E>;

pub(crate) fn invalid(field: &'static str, reason: impl Into<String>) -> Error {
    Error::Invalid {
        field,
        reason: reason.into(),
    }
}

pub(crate) fn not_found(what: &'static str, id: impl ToString) -> Error {
    Error::NotFound {
        what,
        id: id.to_string(),
    }
}

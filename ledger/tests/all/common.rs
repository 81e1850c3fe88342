//! Shared helpers.

use std::sync::Arc;

use tally_ledger::bench_support::{Fixture, fixture, sample_record};
use tally_ledger::{Ledger, NewUsageRecord, SqliteLedger};

pub use tally_ledger::bench_support::NOVEMBER_2026_START_MS;

/// A file-backed ledger in a fresh temporary directory, with one fixture tenant.
pub fn file_ledger() -> (tempfile::TempDir, Arc<SqliteLedger>, Fixture) {
    let dir = tempfile::tempdir().expect("tempdir");
    let ledger = Arc::new(SqliteLedger::open(dir.path()).expect("open"));
    let fixture = fixture(ledger.as_ref(), "acme").expect("fixture");
    (dir, ledger, fixture)
}

/// An in-memory ledger with one fixture tenant.
pub fn memory_ledger() -> (SqliteLedger, Fixture) {
    let ledger = SqliteLedger::open_in_memory().expect("open");
    let fixture = fixture(&ledger, "acme").expect("fixture");
    (ledger, fixture)
}

/// Record `n` of the fixture, started `offset_ms` into November 2026.
pub fn record(fixture: &Fixture, n: u64, offset_ms: i64) -> NewUsageRecord {
    sample_record(fixture, "k", n, NOVEMBER_2026_START_MS + offset_ms)
}

/// Appends `count` records, one a minute from the start of November 2026.
pub fn append_many(ledger: &dyn Ledger, fixture: &Fixture, count: u64) {
    for n in 0..count {
        let appended = ledger
            .append(record(fixture, n, n as i64 * 60_000))
            .expect("append");
        assert!(appended.created);
        assert_eq!(appended.record.seq, n + 1);
    }
}

//! The WAL: large commits, and checkpoints off the writer thread
//! that keep the WAL from growing under continuous appends.

use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use tally_ledger::{
    BATCH_RECORDS_MAX, ChainVerdict, DATABASE_FILE, Ledger, SqliteLedger, WAL_FILE_BYTES_LIMIT,
};

use crate::common::{file_ledger, record};

/// Three commits of the largest batch the writer makes, then a reopen: every record is there
/// and the chain verifies.
#[test]
fn a_full_batch_commits_and_survives_reopening() {
    let (dir, ledger, fixture) = file_ledger();
    let batches = 3u64;
    for batch in 0..batches {
        let first = batch * BATCH_RECORDS_MAX as u64;
        let records = (first..first + BATCH_RECORDS_MAX as u64)
            .map(|n| record(&fixture, n, n as i64))
            .collect();
        for result in ledger.append_batch(records).expect("batch") {
            assert!(result.expect("append").created);
        }
    }
    drop(ledger);
    let ledger = SqliteLedger::open(dir.path()).expect("reopen");
    let records = batches * BATCH_RECORDS_MAX as u64;
    assert!(matches!(
        ledger.verify().expect("verify"),
        ChainVerdict::Intact { records: r, .. } if r == records
    ));
    assert_eq!(ledger.chain_head().expect("head").0, records);
}

/// A passive checkpoint never catches up with a writer that keeps appending; the checkpointer
/// has the writer finish one between batches so that the WAL is rewound to its start.
#[test]
fn continuous_appends_rewind_the_wal() {
    let (dir, ledger, fixture) = file_ledger();
    let stats = ledger
        .checkpoint_stats()
        .expect("a file ledger has a checkpointer");
    let wal = dir.path().join(format!("{DATABASE_FILE}-wal"));
    let deadline = Instant::now() + Duration::from_secs(120);
    let mut n = 0u64;
    let mut wal_bytes_max = 0;
    while stats.writer_checkpoints.load(Ordering::Relaxed) < 3 {
        assert!(
            Instant::now() < deadline,
            "the WAL was never rewound: {stats:?}"
        );
        let records = (n..n + 32).map(|k| record(&fixture, k, k as i64)).collect();
        for result in ledger.append_batch(records).expect("batch") {
            assert!(result.expect("append").created);
        }
        n += 32;
        wal_bytes_max = wal_bytes_max.max(std::fs::metadata(&wal).expect("wal").len());
    }
    assert!(
        wal_bytes_max <= WAL_FILE_BYTES_LIMIT as u64,
        "WAL reached {wal_bytes_max} bytes"
    );
    assert_eq!(stats.errors.load(Ordering::Relaxed), 0, "{stats:?}");
    assert!(matches!(
        ledger.verify().expect("verify"),
        ChainVerdict::Intact { records, .. } if records == n
    ));
}

//! Read-only handles beside a running writer, and the async append path.

use std::collections::HashSet;
use std::sync::Arc;

use tally_ledger::bench_support::DECEMBER_2026_START_MS;
use tally_ledger::{ChainVerdict, Error, Ledger, Period, SqliteLedger};

use crate::common::{NOVEMBER_2026_START_MS, append_many, file_ledger, record};

fn november() -> Period {
    Period::new(NOVEMBER_2026_START_MS, DECEMBER_2026_START_MS).unwrap()
}

#[test]
fn read_only_handle_verifies_and_drafts_while_the_writer_holds_the_directory() {
    let (dir, writer, fixture) = file_ledger();
    append_many(writer.as_ref(), &fixture, 50);

    // The writer holds the directory: a second writer is refused, a reader is not.
    assert!(matches!(
        SqliteLedger::open(dir.path()),
        Err(Error::Locked { .. })
    ));
    let reader = SqliteLedger::open_read_only(dir.path()).expect("read-only open");
    assert!(reader.is_read_only() && !writer.is_read_only());
    let (head_seq, head_hash) = writer.chain_head().unwrap();
    match reader.verify().unwrap() {
        ChainVerdict::Intact {
            records,
            head_seq: seq,
            head_hash: hash,
        } => assert_eq!((records, seq, hash), (50, head_seq, head_hash)),
        broken => panic!("{broken:?}"),
    }
    let draft = reader.draft_invoice(fixture.tenant.id, november()).unwrap();
    assert_eq!(draft.records, 50);
    assert_eq!(
        tally_ledger::export_json(&draft),
        tally_ledger::export_json(&writer.draft_invoice(fixture.tenant.id, november()).unwrap())
    );

    // Appends committed by the writer afterwards are visible to the open reader.
    for n in 50..80 {
        assert!(
            writer
                .append(record(&fixture, n, n as i64))
                .unwrap()
                .created
        );
    }
    assert!(matches!(
        reader.verify().unwrap(),
        ChainVerdict::Intact { records: 80, .. }
    ));
    assert_eq!(
        reader
            .draft_invoice(fixture.tenant.id, november())
            .unwrap()
            .records,
        80
    );

    // Every write through the reader is refused and changes nothing.
    assert!(matches!(
        reader.append(record(&fixture, 999, 0)),
        Err(Error::ReadOnly)
    ));
    assert!(matches!(
        reader.append_batch(vec![record(&fixture, 998, 0)]),
        Err(Error::ReadOnly)
    ));
    assert!(matches!(
        reader.create_tenant("intruder", 0),
        Err(Error::ReadOnly)
    ));
    assert!(matches!(
        reader.finalize_invoice(fixture.tenant.id, november(), 0),
        Err(Error::ReadOnly)
    ));
    assert_eq!(writer.chain_head().unwrap().0, 80);
    assert!(reader.find_tenant("intruder").unwrap().is_none());
}

#[test]
fn read_only_open_works_after_the_writer_closed_and_creates_nothing_when_missing() {
    let (dir, writer, fixture) = file_ledger();
    append_many(writer.as_ref(), &fixture, 10);
    drop(writer);
    let reader = SqliteLedger::open_read_only(dir.path()).unwrap();
    assert!(matches!(
        reader.verify().unwrap(),
        ChainVerdict::Intact { records: 10, .. }
    ));
    drop(reader);
    // The writer can take the directory again afterwards.
    let writer = SqliteLedger::open(dir.path()).unwrap();
    assert_eq!(writer.chain_head().unwrap().0, 10);

    let empty = tempfile::tempdir().unwrap();
    assert!(matches!(
        SqliteLedger::open_read_only(empty.path()),
        Err(Error::Io { .. })
    ));
    assert_eq!(std::fs::read_dir(empty.path()).unwrap().count(), 0);
}

#[test]
fn async_appends_from_tokio_tasks_are_committed_when_they_resolve() {
    const TASKS: u64 = 16;
    const PER_TASK: u64 = 40;
    let (dir, ledger, fixture) = file_ledger();
    let ledger: Arc<dyn Ledger> = ledger;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .build()
        .unwrap();
    let appended = runtime.block_on(async {
        let tasks: Vec<_> = (0..TASKS)
            .map(|task| {
                let (ledger, fixture) = (Arc::clone(&ledger), fixture.clone());
                tokio::spawn(async move {
                    let mut seqs = Vec::new();
                    for i in 0..PER_TASK {
                        let n = task * PER_TASK + i;
                        let appended = ledger
                            .append_async(record(&fixture, n, n as i64))
                            .await
                            .unwrap();
                        assert!(appended.created);
                        seqs.push(appended.record.seq);
                    }
                    seqs
                })
            })
            .collect();
        let mut all = Vec::new();
        for task in tasks {
            all.extend(task.await.unwrap());
        }
        all
    });
    let unique: HashSet<u64> = appended.iter().copied().collect();
    assert_eq!(unique.len() as u64, TASKS * PER_TASK);
    assert_eq!(unique, (1..=TASKS * PER_TASK).collect());
    let reader = SqliteLedger::open_read_only(dir.path()).unwrap();
    assert!(matches!(
        reader.verify().unwrap(),
        ChainVerdict::Intact { records, .. } if records == TASKS * PER_TASK
    ));

    // A retry through the async path returns the first result and writes nothing.
    let retry = runtime
        .block_on(ledger.append_async(record(&fixture, 3, 3)))
        .unwrap();
    assert!(!retry.created);
    assert_eq!(
        retry.record.record.idempotency_key,
        record(&fixture, 3, 3).idempotency_key
    );
    assert_eq!(ledger.chain_head().unwrap().0, TASKS * PER_TASK);
}

#[test]
fn dropping_an_async_append_does_not_withdraw_the_record() {
    let (_dir, ledger, fixture) = file_ledger();
    let first = record(&fixture, 1, 0);
    drop(ledger.append_async(first.clone()));
    // The record was queued when `append_async` returned; the next append is ordered after it.
    let second = ledger.append(record(&fixture, 2, 1)).unwrap();
    assert_eq!(second.record.seq, 2);
    let again = ledger.append(first).unwrap();
    assert!(!again.created);
    assert_eq!(again.record.seq, 1);
}

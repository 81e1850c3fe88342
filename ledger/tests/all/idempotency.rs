//! Idempotency keys: a retry returns the same record, a different record is named.

use std::sync::Arc;

use tally_ledger::bench_support::fixture;
use tally_ledger::{Error, IDEMPOTENCY_KEY_BYTES_MAX, Ledger};

use crate::common::{file_ledger, memory_ledger, record};

#[test]
fn retry_with_identical_content_returns_the_existing_record() {
    let (ledger, fixture) = memory_ledger();
    let first = ledger.append(record(&fixture, 1, 0)).unwrap();
    let retry = ledger.append(record(&fixture, 1, 0)).unwrap();
    assert!(first.created);
    assert!(!retry.created);
    assert_eq!(first.record, retry.record);
    assert_eq!(ledger.chain_head().unwrap().0, 1);
}

#[test]
fn retry_with_different_content_names_the_fields_that_differ() {
    let (ledger, fixture) = memory_ledger();
    ledger.append(record(&fixture, 1, 0)).unwrap();
    let mut changed = record(&fixture, 1, 0);
    changed.meters.ops += 1;
    changed.meters.wall_ns += 1;
    changed.finished_ms += 5;
    match ledger.append(changed) {
        Err(Error::ExistsWithDifferentFields {
            fields,
            existing_seq,
            ..
        }) => {
            assert_eq!(fields, ["finished_ms", "ops", "wall_ns"]);
            assert_eq!(existing_seq, 1);
        }
        other => panic!("expected ExistsWithDifferentFields, got {other:?}"),
    }
    assert_eq!(ledger.chain_head().unwrap().0, 1);
}

#[test]
fn the_same_key_is_independent_per_tenant() {
    let (ledger, acme) = memory_ledger();
    let other = fixture(&ledger, "globex").unwrap();
    let a = ledger.append(record(&acme, 1, 0)).unwrap();
    let b = ledger.append(record(&other, 1, 0)).unwrap();
    assert!(a.created && b.created);
    assert_eq!(
        a.record.record.idempotency_key,
        b.record.record.idempotency_key
    );
}

#[test]
fn concurrent_retries_store_one_record() {
    let (_dir, ledger, fixture) = file_ledger();
    let created: usize = std::thread::scope(|scope| {
        let handles: Vec<_> = (0..8)
            .map(|_| {
                let ledger = Arc::clone(&ledger);
                let fixture = fixture.clone();
                scope.spawn(move || {
                    (0..50)
                        .filter(|n| {
                            ledger
                                .append(record(&fixture, *n, *n as i64))
                                .unwrap()
                                .created
                        })
                        .count()
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).sum()
    });
    assert_eq!(created, 50);
    assert_eq!(ledger.chain_head().unwrap().0, 50);
}

#[test]
fn duplicate_keys_inside_one_batch_store_one_record() {
    let (ledger, fixture) = memory_ledger();
    let mut conflicting = record(&fixture, 1, 0);
    conflicting.meters.host_calls = 99;
    let results = ledger
        .append_batch(vec![
            record(&fixture, 1, 0),
            record(&fixture, 1, 0),
            conflicting,
        ])
        .unwrap();
    assert!(results[0].as_ref().unwrap().created);
    assert!(!results[1].as_ref().unwrap().created);
    assert!(matches!(
        &results[2],
        Err(Error::ExistsWithDifferentFields { fields, .. }) if fields == &["host_calls"]
    ));
    assert_eq!(ledger.chain_head().unwrap().0, 1);
}

#[test]
fn keys_outside_the_length_limit_are_rejected() {
    let (ledger, fixture) = memory_ledger();
    let mut long = record(&fixture, 1, 0);
    long.idempotency_key = "x".repeat(IDEMPOTENCY_KEY_BYTES_MAX + 1);
    assert!(matches!(
        ledger.append(long),
        Err(Error::Invalid {
            field: "idempotency_key",
            ..
        })
    ));
    let mut empty = record(&fixture, 1, 0);
    empty.idempotency_key.clear();
    assert!(matches!(
        ledger.append(empty),
        Err(Error::Invalid {
            field: "idempotency_key",
            ..
        })
    ));
    let mut exact = record(&fixture, 1, 0);
    exact.idempotency_key = "x".repeat(IDEMPOTENCY_KEY_BYTES_MAX);
    assert!(ledger.append(exact).unwrap().created);
}

#[test]
fn records_of_another_tenants_function_are_rejected() {
    let (ledger, acme) = memory_ledger();
    let other = fixture(&ledger, "globex").unwrap();
    let mut wrong = record(&acme, 1, 0);
    wrong.function = other.function;
    assert!(matches!(
        ledger.append(wrong),
        Err(Error::NotFound {
            what: "function",
            ..
        })
    ));
    let mut wrong = record(&acme, 1, 0);
    wrong.module = other.module;
    assert!(matches!(
        ledger.append(wrong),
        Err(Error::NotFound { what: "module", .. })
    ));
    assert_eq!(ledger.chain_head().unwrap().0, 0);
}

#[test]
fn large_meters_round_trip_exactly() {
    let (ledger, fixture) = memory_ledger();
    let mut big = record(&fixture, 1, 0);
    big.meters.ops = u64::MAX;
    big.meters.memory_ops_integral = u128::MAX - 7;
    big.meters.memory_byte_ns = (1u128 << 100) + 3;
    big.outcome = tally_ledger::Outcome {
        kind: tally_ledger::OutcomeKind::Trap,
        exit_code: None,
        trap: Some("wasm trap: integer divide by zero".into()),
    };
    let stored = ledger.append(big.clone()).unwrap().record;
    let read = ledger.get_usage(stored.seq).unwrap().unwrap();
    assert_eq!(read.record, big);
    assert_eq!(read, stored);
}

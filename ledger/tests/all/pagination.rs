//! Cursor pagination under concurrent appends, daily summaries.

use std::collections::HashSet;
use std::sync::Arc;

use tally_ledger::{DAY_MS, Error, Ledger, PAGE_RECORDS_MAX, Period, UsageQuery};

use crate::common::{NOVEMBER_2026_START_MS, file_ledger, record};

fn november() -> Period {
    Period::new(NOVEMBER_2026_START_MS, NOVEMBER_2026_START_MS + 30 * DAY_MS).unwrap()
}

#[test]
fn pages_stay_stable_while_records_are_appended() {
    let (_dir, ledger, fixture) = file_ledger();
    // 400 existing records, interleaved in time with the ones appended during pagination.
    let existing: Vec<u64> = (0..400).collect();
    let batch = existing
        .iter()
        .map(|n| record(&fixture, *n, *n as i64 * 2_000))
        .collect();
    for result in ledger.append_batch(batch).unwrap() {
        result.unwrap();
    }
    let writer = {
        let ledger = Arc::clone(&ledger);
        let fixture = fixture.clone();
        std::thread::spawn(move || {
            for n in 400..800u64 {
                // Timestamps land both before and after any cursor position.
                let offset = ((n * 7_919) % 800) as i64 * 1_000 + 1;
                ledger.append(record(&fixture, n, offset)).unwrap();
            }
        })
    };
    let mut seen = Vec::new();
    let mut cursor = None;
    loop {
        let page = ledger
            .list_usage(&UsageQuery {
                tenant: fixture.tenant.id,
                function: None,
                range: november(),
                cursor: cursor.take(),
                limit: 37,
            })
            .unwrap();
        assert!(page.records.len() <= 37);
        seen.extend(page.records.iter().map(|r| (r.record.started_ms, r.seq)));
        match page.next_cursor {
            Some(next) => cursor = Some(next),
            None => break,
        }
    }
    writer.join().unwrap();
    // Ordered, no duplicates, every record that existed before pagination seen exactly once.
    assert!(seen.windows(2).all(|w| w[0] < w[1]), "pages out of order");
    let seqs: HashSet<u64> = seen.iter().map(|(_, seq)| *seq).collect();
    assert_eq!(seqs.len(), seen.len(), "a record appeared twice");
    for seq in 1..=400u64 {
        assert!(seqs.contains(&seq), "record {seq} skipped");
    }
}

#[test]
fn filters_and_limits_apply() {
    let (_dir, ledger, fixture) = file_ledger();
    for n in 0..10u64 {
        ledger
            .append(record(&fixture, n, n as i64 * DAY_MS / 2))
            .unwrap();
    }
    let query = |function, range, limit| {
        ledger.list_usage(&UsageQuery {
            tenant: fixture.tenant.id,
            function,
            range,
            cursor: None,
            limit,
        })
    };
    let first_two_days =
        Period::new(NOVEMBER_2026_START_MS, NOVEMBER_2026_START_MS + 2 * DAY_MS).unwrap();
    assert_eq!(query(None, first_two_days, 100).unwrap().records.len(), 4);
    assert_eq!(
        query(Some(fixture.function), first_two_days, 100)
            .unwrap()
            .records
            .len(),
        4
    );
    assert_eq!(
        query(Some(tally_ledger::FunctionId(9_999)), first_two_days, 100)
            .unwrap()
            .records
            .len(),
        0
    );
    assert!(matches!(
        query(None, november(), 0),
        Err(Error::Invalid { field: "limit", .. })
    ));
    assert!(matches!(
        query(None, november(), PAGE_RECORDS_MAX + 1),
        Err(Error::Invalid { field: "limit", .. })
    ));
    let bad_cursor = ledger.list_usage(&UsageQuery {
        tenant: fixture.tenant.id,
        function: None,
        range: november(),
        cursor: Some("garbage".into()),
        limit: 10,
    });
    assert!(matches!(
        bad_cursor,
        Err(Error::Invalid {
            field: "cursor",
            ..
        })
    ));
}

#[test]
fn daily_usage_sums_per_day_and_function() {
    let (_dir, ledger, fixture) = file_ledger();
    let mut expected_ops = [0u128; 3];
    for n in 0..30u64 {
        let offset = (n % 3) as i64 * DAY_MS + n as i64;
        let r = record(&fixture, n, offset);
        expected_ops[(n % 3) as usize] += u128::from(r.meters.ops);
        ledger.append(r).unwrap();
    }
    let days = ledger.daily_usage(fixture.tenant.id, november()).unwrap();
    assert_eq!(days.len(), 3);
    for (index, day) in days.iter().enumerate() {
        assert_eq!(
            day.day_start_ms,
            NOVEMBER_2026_START_MS + index as i64 * DAY_MS
        );
        assert_eq!(day.function, fixture.function);
        assert_eq!(day.totals.invocations, 10);
        assert_eq!(day.totals.ops, expected_ops[index]);
    }
}

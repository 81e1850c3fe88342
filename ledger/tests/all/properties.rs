//! Property tests: any record round-trips exactly, and its audit bytes hash to its hash.

use proptest::prelude::*;
use sha2::{Digest, Sha256};
use tally_ledger::{Ledger, Outcome, OutcomeKind, UsageMeters};

use crate::common::{memory_ledger, record};

fn outcome() -> impl Strategy<Value = Outcome> {
    (
        0usize..OutcomeKind::ALL.len(),
        proptest::option::of(any::<i32>()),
        proptest::option::of("[ -~]{0,64}"),
    )
        .prop_map(|(kind, exit_code, trap)| Outcome {
            kind: OutcomeKind::ALL[kind],
            exit_code,
            trap,
        })
}

fn meters() -> impl Strategy<Value = UsageMeters> {
    (
        any::<u64>(),
        any::<u64>(),
        any::<u128>(),
        any::<u128>(),
        any::<u64>(),
        any::<u64>(),
        any::<u64>(),
        any::<u64>(),
    )
        .prop_map(
            |(
                ops,
                memory_peak_bytes,
                memory_ops_integral,
                memory_byte_ns,
                io_in_bytes,
                io_out_bytes,
                host_calls,
                wall_ns,
            )| {
                UsageMeters {
                    ops,
                    memory_peak_bytes,
                    memory_ops_integral,
                    memory_byte_ns,
                    io_in_bytes,
                    io_out_bytes,
                    host_calls,
                    wall_ns,
                }
            },
        )
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(48))]

    #[test]
    fn any_record_round_trips_and_hashes_its_audit_bytes(
        batch in proptest::collection::vec((outcome(), meters(), "[a-zA-Z0-9_-]{1,128}", -1_000_000i64..1_000_000, 0i64..10_000), 1..8)
    ) {
        let (ledger, fixture) = memory_ledger();
        let mut keys = std::collections::HashSet::new();
        for (index, (outcome, meters, key, started_ms, duration_ms)) in batch.into_iter().enumerate() {
            if !keys.insert(key.clone()) {
                continue;
            }
            let mut new = record(&fixture, index as u64, 0);
            new.idempotency_key = key;
            new.started_ms = started_ms;
            new.finished_ms = started_ms + duration_ms;
            new.outcome = outcome;
            new.meters = meters;
            let stored = ledger.append(new.clone()).unwrap().record;
            let read = ledger.get_usage(stored.seq).unwrap().unwrap();
            prop_assert_eq!(&read.record, &new);
            prop_assert_eq!(&read, &stored);
            let audit = ledger.audit_record(stored.seq).unwrap().unwrap();
            let digest: [u8; 32] = Sha256::digest(&audit.canonical_bytes).into();
            prop_assert_eq!(digest, stored.hash);
            // An identical retry is answered with the same record.
            let retry = ledger.append(new).unwrap();
            prop_assert!(!retry.created);
            prop_assert_eq!(retry.record, stored);
        }
        let intact = matches!(ledger.verify().unwrap(), tally_ledger::ChainVerdict::Intact { .. });
        prop_assert!(intact, "chain does not verify");
    }
}

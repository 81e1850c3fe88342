//! The hash chain: tampering with plain SQL is detected and located.

use rusqlite::Connection;
use sha2::{Digest, Sha256};
use tally_ledger::{ChainBreakKind, ChainVerdict, DATABASE_FILE, Ledger, SqliteLedger};

use crate::common::{append_many, file_ledger};

const RECORDS: u64 = 50;

/// A ledger with 50 records, closed, and a plain connection to tamper with its file.
fn tampered(edit: &str) -> ChainVerdict {
    let (dir, ledger, fixture) = file_ledger();
    append_many(ledger.as_ref(), &fixture, RECORDS);
    assert!(matches!(
        ledger.verify().unwrap(),
        ChainVerdict::Intact {
            records: RECORDS,
            ..
        }
    ));
    drop(ledger);
    let conn = Connection::open(dir.path().join(DATABASE_FILE)).unwrap();
    // An attacker with the file drops the append-only triggers first.
    conn.execute_batch(
        "DROP TRIGGER usage_records_no_update; DROP TRIGGER usage_records_no_delete;",
    )
    .unwrap();
    conn.execute_batch(edit).unwrap();
    drop(conn);
    let ledger = SqliteLedger::open(dir.path()).unwrap();
    ledger.verify().unwrap()
}

fn broken_at(verdict: ChainVerdict) -> (u64, ChainBreakKind) {
    match verdict {
        ChainVerdict::Broken(chain_break) => {
            // The message names the record.
            assert!(
                chain_break
                    .to_string()
                    .contains(&format!("record {}", chain_break.seq))
            );
            (chain_break.seq, chain_break.kind)
        }
        ChainVerdict::Intact { .. } => panic!("tampering went unnoticed"),
    }
}

#[test]
fn an_intact_chain_verifies() {
    let (_dir, ledger, fixture) = file_ledger();
    append_many(ledger.as_ref(), &fixture, RECORDS);
    let (head_seq, head_hash) = ledger.chain_head().unwrap();
    assert_eq!(
        ledger.verify().unwrap(),
        ChainVerdict::Intact {
            records: RECORDS,
            head_seq,
            head_hash
        }
    );
}

#[test]
fn a_changed_meter_is_located() {
    let (seq, kind) = broken_at(tampered(
        "UPDATE usage_records SET ops = ops + 1 WHERE seq = 17",
    ));
    assert_eq!(seq, 17);
    assert!(matches!(kind, ChainBreakKind::HashMismatch { .. }));
}

#[test]
fn one_changed_byte_of_a_key_is_located() {
    let (seq, kind) = broken_at(tampered(
        "UPDATE usage_records SET idempotency_key = 'j' || substr(idempotency_key, 2) WHERE seq = 33",
    ));
    assert_eq!(seq, 33);
    assert!(matches!(kind, ChainBreakKind::HashMismatch { .. }));
}

#[test]
fn a_changed_byte_of_the_stored_hash_is_located() {
    let (seq, _) = broken_at(tampered(
        "UPDATE usage_records SET hash = X'00' || substr(hash, 2) WHERE seq = 8",
    ));
    assert_eq!(seq, 8);
}

#[test]
fn a_deleted_row_is_located() {
    let (seq, kind) = broken_at(tampered("DELETE FROM usage_records WHERE seq = 23"));
    assert_eq!(seq, 23);
    assert_eq!(
        kind,
        ChainBreakKind::Missing {
            found_seq: Some(24)
        }
    );
}

#[test]
fn two_reordered_rows_are_located() {
    let (seq, kind) = broken_at(tampered(
        "UPDATE usage_records SET seq = -30 WHERE seq = 30;
         UPDATE usage_records SET seq = 30 WHERE seq = 31;
         UPDATE usage_records SET seq = 31 WHERE seq = -30;",
    ));
    assert_eq!(seq, 30);
    assert!(matches!(kind, ChainBreakKind::HashMismatch { .. }));
}

#[test]
fn a_deleted_last_row_is_detected_by_the_recorded_head() {
    let (seq, _) = broken_at(tampered(&format!(
        "DELETE FROM usage_records WHERE seq = {RECORDS}"
    )));
    assert_eq!(seq, RECORDS);
}

#[test]
fn a_changed_module_hash_is_detected_at_its_first_record() {
    let (seq, _) = broken_at(tampered(
        "UPDATE modules SET original_sha256 = zeroblob(32)",
    ));
    assert_eq!(seq, 1);
}

#[test]
fn plain_sql_cannot_edit_or_delete_usage_records_while_triggers_stand() {
    let (dir, ledger, fixture) = file_ledger();
    append_many(ledger.as_ref(), &fixture, 3);
    drop(ledger);
    let conn = Connection::open(dir.path().join(DATABASE_FILE)).unwrap();
    let update = conn.execute("UPDATE usage_records SET ops = 0 WHERE seq = 1", []);
    assert!(update.unwrap_err().to_string().contains("append-only"));
    let delete = conn.execute("DELETE FROM usage_records WHERE seq = 1", []);
    assert!(delete.unwrap_err().to_string().contains("append-only"));
}

#[test]
fn an_audit_record_carries_bytes_that_hash_to_its_hash() {
    let (_dir, ledger, fixture) = file_ledger();
    append_many(ledger.as_ref(), &fixture, 5);
    for seq in 1..=5 {
        let audit = ledger.audit_record(seq).unwrap().unwrap();
        let digest: [u8; 32] = Sha256::digest(&audit.canonical_bytes).into();
        assert_eq!(digest, audit.record.hash);
        assert!(
            audit
                .canonical_bytes
                .starts_with(tally_ledger::RECORD_DOMAIN_TAG)
        );
        assert_eq!(&audit.canonical_bytes[23..55], &audit.record.prev_hash);
        if seq > 1 {
            let previous = ledger.get_usage(seq - 1).unwrap().unwrap();
            assert_eq!(audit.record.prev_hash, previous.hash);
        }
        assert_eq!(audit.head_seq, 5);
    }
    assert!(ledger.audit_record(6).unwrap().is_none());
}

//! Schema versions and opening rules.

use rusqlite::Connection;
use tally_ledger::{DATABASE_FILE, Error, Ledger, SCHEMA_VERSION, SqliteLedger};

use crate::common::{append_many, file_ledger, record};

#[test]
fn a_database_from_a_newer_schema_is_refused() {
    let (dir, ledger, _) = file_ledger();
    drop(ledger);
    let conn = Connection::open(dir.path().join(DATABASE_FILE)).unwrap();
    conn.pragma_update(None, "user_version", SCHEMA_VERSION + 1)
        .unwrap();
    drop(conn);
    match SqliteLedger::open(dir.path()) {
        Err(error @ Error::SchemaTooNew { found, supported }) => {
            assert_eq!((found, supported), (SCHEMA_VERSION + 1, SCHEMA_VERSION));
            assert!(error.to_string().contains("newer"));
        }
        other => panic!("expected SchemaTooNew, got {other:?}"),
    }
}

#[test]
fn reopening_keeps_data_and_continues_the_sequence() {
    let (dir, ledger, fixture) = file_ledger();
    append_many(ledger.as_ref(), &fixture, 3);
    drop(ledger);
    let ledger = SqliteLedger::open(dir.path()).unwrap();
    let version: i64 = Connection::open(dir.path().join(DATABASE_FILE))
        .unwrap()
        .query_row("PRAGMA user_version", [], |row| row.get(0))
        .unwrap();
    assert_eq!(version, SCHEMA_VERSION);
    let appended = ledger.append(record(&fixture, 3, 1)).unwrap();
    assert_eq!(appended.record.seq, 4);
    assert_eq!(
        appended.record.prev_hash,
        ledger.get_usage(3).unwrap().unwrap().hash
    );
}

#[test]
fn a_second_writer_on_the_same_directory_is_refused() {
    let (dir, _ledger, _) = file_ledger();
    assert!(matches!(
        SqliteLedger::open(dir.path()),
        Err(Error::Locked { .. })
    ));
}

#[test]
fn api_keys_are_stored_hashed_and_resolve_until_revoked() {
    let (dir, ledger, fixture) = file_ledger();
    let created = ledger.create_api_key(fixture.tenant.id, 5).unwrap();
    assert!(created.clear.starts_with(tally_ledger::API_KEY_TAG));
    let (tenant, key) = ledger.resolve_api_key(&created.clear).unwrap().unwrap();
    assert_eq!(tenant, fixture.tenant);
    assert_eq!(key, created.key);
    assert!(ledger.resolve_api_key("tly_nope").unwrap().is_none());
    // The clear key is nowhere in the database file.
    ledger.revoke_api_key(key.id, 6).unwrap();
    assert!(ledger.resolve_api_key(&created.clear).unwrap().is_none());
    drop(ledger);
    let conn = Connection::open(dir.path().join(DATABASE_FILE)).unwrap();
    conn.query_row("PRAGMA wal_checkpoint(TRUNCATE)", [], |_| Ok(()))
        .unwrap();
    drop(conn);
    let bytes = std::fs::read(dir.path().join(DATABASE_FILE)).unwrap();
    let needle = &created.clear.as_bytes()[12..];
    assert!(!bytes.windows(needle.len()).any(|w| w == needle));
}

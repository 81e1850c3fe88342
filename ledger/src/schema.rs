//! Versioned schema migrations, run on open. The version lives in `PRAGMA user_version`.

use rusqlite::Connection;

use crate::error::{Error, Result};

/// Migration `i` (0-based) moves the schema from version `i` to version `i + 1`.
const MIGRATIONS: &[&str] = &[
    // Version 1.
    r#"
CREATE TABLE tenants (
    id          INTEGER PRIMARY KEY,
    name        TEXT NOT NULL UNIQUE,
    created_ms  INTEGER NOT NULL
);
CREATE TABLE api_keys (
    id          INTEGER PRIMARY KEY,
    tenant_id   INTEGER NOT NULL REFERENCES tenants(id),
    key_sha256  BLOB NOT NULL UNIQUE,
    prefix      TEXT NOT NULL,
    created_ms  INTEGER NOT NULL,
    revoked_ms  INTEGER
);
CREATE TABLE modules (
    id                  INTEGER PRIMARY KEY,
    tenant_id           INTEGER NOT NULL REFERENCES tenants(id),
    original_sha256     BLOB NOT NULL,
    instrumented        BLOB,
    instrumented_path   TEXT,
    cost_table          TEXT NOT NULL,
    static_stats_json   TEXT NOT NULL,
    created_ms          INTEGER NOT NULL,
    UNIQUE (tenant_id, original_sha256, cost_table),
    CHECK ((instrumented IS NULL) <> (instrumented_path IS NULL))
);
CREATE TABLE functions (
    id          INTEGER PRIMARY KEY,
    tenant_id   INTEGER NOT NULL REFERENCES tenants(id),
    name        TEXT NOT NULL,
    module_id   INTEGER NOT NULL REFERENCES modules(id),
    limits_json TEXT NOT NULL,
    created_ms  INTEGER NOT NULL,
    updated_ms  INTEGER NOT NULL,
    UNIQUE (tenant_id, name)
);
-- A plan's header (the pricing plan document without its versions); versions are rows.
CREATE TABLE plans (
    id           INTEGER PRIMARY KEY,
    name         TEXT NOT NULL UNIQUE,
    header_json  TEXT NOT NULL,
    created_ms   INTEGER NOT NULL
);
CREATE TABLE plan_versions (
    id           INTEGER PRIMARY KEY,
    plan_id      INTEGER NOT NULL REFERENCES plans(id),
    version      INTEGER NOT NULL,
    pricing_json TEXT NOT NULL,
    created_ms   INTEGER NOT NULL,
    UNIQUE (plan_id, version)
);
CREATE TABLE subscriptions (
    id               INTEGER PRIMARY KEY,
    tenant_id        INTEGER NOT NULL REFERENCES tenants(id),
    plan_id          INTEGER NOT NULL REFERENCES plans(id),
    from_ms          INTEGER NOT NULL,
    UNIQUE (tenant_id, from_ms)
);

-- Usage records. `seq` is the chain position (assigned by the single writer, no gaps).
-- u64 meters are stored bit-cast to i64; u128 meters as two bit-cast halves.
-- `prev_hash` is not stored: it is the `hash` of row `seq - 1` (the chain encoding covers it).
-- The idempotency dedupe entry is the UNIQUE index on (tenant_id, idempotency_key): it is part of
-- the same row, so it commits with the record or not at all.
CREATE TABLE usage_records (
    seq                     INTEGER PRIMARY KEY,
    tenant_id               INTEGER NOT NULL,
    function_id             INTEGER NOT NULL,
    module_id               INTEGER NOT NULL,
    idempotency_key         TEXT NOT NULL,
    started_ms              INTEGER NOT NULL,
    finished_ms             INTEGER NOT NULL,
    outcome                 INTEGER NOT NULL,
    exit_code               INTEGER,
    trap                    TEXT,
    ops                     INTEGER NOT NULL,
    memory_peak_bytes       INTEGER NOT NULL,
    memory_ops_integral_hi  INTEGER NOT NULL,
    memory_ops_integral_lo  INTEGER NOT NULL,
    memory_byte_ns_hi       INTEGER NOT NULL,
    memory_byte_ns_lo       INTEGER NOT NULL,
    io_in_bytes             INTEGER NOT NULL,
    io_out_bytes            INTEGER NOT NULL,
    host_calls              INTEGER NOT NULL,
    wall_ns                 INTEGER NOT NULL,
    late                    INTEGER NOT NULL,
    hash                    BLOB NOT NULL
);
CREATE UNIQUE INDEX usage_idempotency ON usage_records (tenant_id, idempotency_key);
CREATE INDEX usage_tenant_started ON usage_records (tenant_id, started_ms);
CREATE INDEX usage_late ON usage_records (tenant_id, seq) WHERE late = 1;

-- Defence in depth: the crate has no UPDATE or DELETE path for usage records; these triggers make
-- plain SQL edits fail too (an attacker with file access can drop them; the hash chain remains).
CREATE TRIGGER usage_records_no_update BEFORE UPDATE ON usage_records
BEGIN SELECT RAISE(ABORT, 'usage records are append-only'); END;
CREATE TRIGGER usage_records_no_delete BEFORE DELETE ON usage_records
BEGIN SELECT RAISE(ABORT, 'usage records are append-only'); END;

-- The head of the chain as of the last commit (one row), to detect truncation at the end.
CREATE TABLE chain_head (
    id    INTEGER PRIMARY KEY CHECK (id = 1),
    seq   INTEGER NOT NULL,
    hash  BLOB NOT NULL
);
INSERT INTO chain_head (id, seq, hash) VALUES (1, 0, zeroblob(32));

CREATE TABLE invoices (
    id               INTEGER PRIMARY KEY,
    tenant_id        INTEGER NOT NULL REFERENCES tenants(id),
    number           INTEGER NOT NULL,
    period_start_ms  INTEGER NOT NULL,
    period_end_ms    INTEGER NOT NULL,
    seq_from         INTEGER NOT NULL,
    seq_through      INTEGER NOT NULL,
    chain_hash       BLOB NOT NULL,
    currency         TEXT NOT NULL,
    records          INTEGER NOT NULL,
    subtotal         TEXT NOT NULL,
    total            TEXT NOT NULL,
    priced_json      TEXT NOT NULL,
    late_json        TEXT NOT NULL,
    finalized_ms     INTEGER NOT NULL,
    voided_ms        INTEGER,
    void_reason      TEXT,
    UNIQUE (tenant_id, number),
    UNIQUE (tenant_id, period_start_ms)
);
CREATE TABLE invoice_lines (
    invoice_id       INTEGER NOT NULL REFERENCES invoices(id),
    line_no          INTEGER NOT NULL,
    plan             TEXT NOT NULL,
    version          INTEGER NOT NULL,
    kind             TEXT NOT NULL,
    meter            TEXT,
    function         TEXT,
    description      TEXT NOT NULL,
    quantity         TEXT NOT NULL,
    free_quantity    TEXT NOT NULL,
    billed_quantity  TEXT NOT NULL,
    unit_name        TEXT NOT NULL,
    unit_size        TEXT NOT NULL,
    amount_exact     TEXT NOT NULL,
    amount           TEXT NOT NULL,
    PRIMARY KEY (invoice_id, line_no)
) WITHOUT ROWID;
CREATE TABLE invoice_plan_versions (
    invoice_id       INTEGER NOT NULL REFERENCES invoices(id),
    plan_version_id  INTEGER NOT NULL REFERENCES plan_versions(id),
    PRIMARY KEY (invoice_id, plan_version_id)
) WITHOUT ROWID;

-- A finalized invoice only ever changes from not void to void.
CREATE TRIGGER invoices_only_void BEFORE UPDATE ON invoices
WHEN OLD.voided_ms IS NOT NULL
  OR NEW.voided_ms IS NULL
  OR NEW.id IS NOT OLD.id OR NEW.tenant_id IS NOT OLD.tenant_id OR NEW.number IS NOT OLD.number
  OR NEW.period_start_ms IS NOT OLD.period_start_ms OR NEW.period_end_ms IS NOT OLD.period_end_ms
  OR NEW.seq_from IS NOT OLD.seq_from OR NEW.seq_through IS NOT OLD.seq_through
  OR NEW.chain_hash IS NOT OLD.chain_hash OR NEW.currency IS NOT OLD.currency
  OR NEW.subtotal IS NOT OLD.subtotal OR NEW.total IS NOT OLD.total
  OR NEW.priced_json IS NOT OLD.priced_json OR NEW.finalized_ms IS NOT OLD.finalized_ms
  OR NEW.records IS NOT OLD.records OR NEW.late_json IS NOT OLD.late_json
BEGIN SELECT RAISE(ABORT, 'finalized invoices are immutable except for voiding'); END;
CREATE TRIGGER invoices_no_delete BEFORE DELETE ON invoices
BEGIN SELECT RAISE(ABORT, 'invoices are never deleted'); END;
CREATE TRIGGER invoice_lines_no_update BEFORE UPDATE ON invoice_lines
BEGIN SELECT RAISE(ABORT, 'invoice lines are immutable'); END;
CREATE TRIGGER invoice_lines_no_delete BEFORE DELETE ON invoice_lines
BEGIN SELECT RAISE(ABORT, 'invoice lines are immutable'); END;
"#,
];

/// The schema version this build creates and understands.
pub const SCHEMA_VERSION: i64 = MIGRATIONS.len() as i64;

/// Brings the database to [`SCHEMA_VERSION`], refusing databases from a newer build.
pub fn migrate(conn: &mut Connection) -> Result<()> {
    let found: i64 = conn.query_row("PRAGMA user_version", [], |row| row.get(0))?;
    if found > SCHEMA_VERSION {
        return Err(Error::SchemaTooNew {
            found,
            supported: SCHEMA_VERSION,
        });
    }
    assert!(found >= 0, "negative schema version {found}");
    for (index, sql) in MIGRATIONS.iter().enumerate().skip(found as usize) {
        let tx = conn.transaction_with_behavior(rusqlite::TransactionBehavior::Exclusive)?;
        // Re-check inside the exclusive transaction: another process may have migrated.
        let now: i64 = tx.query_row("PRAGMA user_version", [], |row| row.get(0))?;
        if now > index as i64 {
            continue;
        }
        tx.execute_batch(sql)?;
        tx.pragma_update(None, "user_version", index as i64 + 1)?;
        tx.commit()?;
    }
    Ok(())
}

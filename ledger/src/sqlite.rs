//! The embedded SQLite implementation of [`Ledger`].

use std::fs::File;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use rusqlite::{Connection, OpenFlags, OptionalExtension, Row, params};

use crate::chain::{self, ChainFields, GENESIS_HASH};
use crate::checkpoint::{CheckpointStats, Checkpointer, WAL_FILE_BYTES_LIMIT};
use crate::error::{Error, Result, invalid, not_found};
use crate::invoice::Invoice;
use crate::schema;
use crate::types::*;
use crate::writer::{Writer, WriterState};
use crate::{
    API_KEY_PREFIX_CHARS, API_KEY_RANDOM_BYTES, AppendFuture, BATCH_RECORDS_MAX,
    DAILY_SUMMARY_DAYS_MAX, DAY_MS, FUNCTION_NAME_BYTES_MAX, JSON_BYTES_MAX, Ledger,
    NAME_BYTES_MAX, PAGE_RECORDS_MAX, READER_CONNECTIONS_IDLE_MAX, VERIFY_PAGE_RECORDS,
};

/// File name of the database inside the data directory.
pub const DATABASE_FILE: &str = "ledger.sqlite3";
/// File name of the lock that keeps a second process from writing the same ledger.
pub const LOCK_FILE: &str = "ledger.lock";

/// How durable an acknowledged append is (SQLite `PRAGMA synchronous` in WAL mode).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Durability {
    /// `synchronous=NORMAL`: a commit is written to the WAL file (the OS has it) before the
    /// append returns; the WAL is fsynced at checkpoints. Survives a crash of the process (tested
    /// with SIGKILL); the last commits can be lost if the machine loses power. The default.
    #[default]
    Process,
    /// `synchronous=FULL`: every group commit fsyncs the WAL before the append returns. Survives
    /// power loss; costs one fsync per batch.
    PowerLoss,
}

/// Options for [`SqliteLedger::open_with`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct OpenOptions {
    /// Durability of acknowledged appends.
    pub durability: Durability,
    /// Commit each append in its own transaction instead of grouping them (the naive baseline
    /// of the benchmark; never faster).
    pub transaction_per_record: bool,
}

/// The SQLite ledger: one writer thread with group commit, a pool of read connections (WAL lets
/// readers run beside the writer).
pub struct SqliteLedger {
    /// Declared before `writer` so that it stops first (then the writer's connection is the
    /// last one and SQLite checkpoints and removes the WAL when it closes).
    checkpointer: Option<Checkpointer>,
    /// `None` for a read-only handle ([`SqliteLedger::open_read_only`]).
    writer: Option<Writer>,
    /// `None` for in-memory ledgers: reads then run on the writer thread.
    readers: Option<Readers>,
    _lock: Option<File>,
}

struct Readers {
    path: PathBuf,
    /// Open read connections with `SQLITE_OPEN_READ_ONLY` (no process lock is held).
    read_only: bool,
    idle: Mutex<Vec<Connection>>,
}

impl std::fmt::Debug for SqliteLedger {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SqliteLedger")
            .field("path", &self.readers.as_ref().map(|r| &r.path))
            .finish_non_exhaustive()
    }
}

fn configure(conn: &Connection) -> Result<()> {
    conn.pragma_update(None, "foreign_keys", true)?;
    conn.pragma_update(None, "cache_size", -65_536)?; // KiB: 64 MiB
    conn.pragma_update(None, "temp_store", "MEMORY")?;
    conn.busy_timeout(std::time::Duration::from_secs(5))?;
    Ok(())
}

impl SqliteLedger {
    /// Opens (creating if needed) `dir/ledger.sqlite3` with the default options.
    pub fn open(dir: &Path) -> Result<SqliteLedger> {
        SqliteLedger::open_with(dir, OpenOptions::default())
    }

    /// Opens (creating if needed) `dir/ledger.sqlite3`, runs migrations, starts the writer.
    pub fn open_with(dir: &Path, options: OpenOptions) -> Result<SqliteLedger> {
        std::fs::create_dir_all(dir).map_err(|source| Error::Io {
            what: format!("creating {}", dir.display()),
            source,
        })?;
        let lock = File::options()
            .create(true)
            .truncate(false)
            .write(true)
            .open(dir.join(LOCK_FILE))
            .map_err(|source| Error::Io {
                what: format!("opening {}", dir.join(LOCK_FILE).display()),
                source,
            })?;
        match lock.try_lock() {
            Ok(()) => {}
            Err(std::fs::TryLockError::WouldBlock) => {
                return Err(Error::Locked {
                    dir: dir.display().to_string(),
                });
            }
            Err(std::fs::TryLockError::Error(source)) => {
                return Err(Error::Io {
                    what: format!("locking {}", dir.join(LOCK_FILE).display()),
                    source,
                });
            }
        }
        let path = dir.join(DATABASE_FILE);
        let mut conn = Connection::open_with_flags(&path, OpenFlags::default())?;
        configure(&conn)?;
        let mode: String = conn.query_row("PRAGMA journal_mode = WAL", [], |row| row.get(0))?;
        if !mode.eq_ignore_ascii_case("wal") {
            return Err(Error::Corrupt(format!(
                "journal mode {mode} instead of wal"
            )));
        }
        let synchronous = match options.durability {
            Durability::Process => "NORMAL",
            Durability::PowerLoss => "FULL",
        };
        conn.pragma_update(None, "synchronous", synchronous)?;
        schema::migrate(&mut conn)?;
        // Checkpoints run on their own thread (`checkpoint.rs`), not inside the writer's commits.
        conn.pragma_update(None, "wal_autocheckpoint", 0)?;
        conn.pragma_update(None, "journal_size_limit", WAL_FILE_BYTES_LIMIT)?;
        let batch_records_max = if options.transaction_per_record {
            1
        } else {
            BATCH_RECORDS_MAX
        };
        let writer = Writer::spawn(WriterState::new(conn)?, batch_records_max)?;
        let checkpointer = Checkpointer::spawn(&path, writer.handle())?;
        Ok(SqliteLedger {
            checkpointer: Some(checkpointer),
            writer: Some(writer),
            readers: Some(Readers {
                path,
                read_only: false,
                idle: Mutex::new(Vec::new()),
            }),
            _lock: Some(lock),
        })
    }

    /// Opens `dir/ledger.sqlite3` for reading only, beside a process that holds the directory
    /// (`tally serve`): no lock is taken, nothing is created or migrated, and every connection
    /// is `SQLITE_OPEN_READ_ONLY`. WAL lets these readers see each committed state while the
    /// writer keeps appending; each call reads one consistent snapshot. Writes fail with
    /// [`Error::ReadOnly`].
    pub fn open_read_only(dir: &Path) -> Result<SqliteLedger> {
        let path = dir.join(DATABASE_FILE);
        if !path.is_file() {
            return Err(Error::Io {
                what: format!("opening {} read-only", path.display()),
                source: std::io::Error::new(
                    std::io::ErrorKind::NotFound,
                    "no ledger database there",
                ),
            });
        }
        let conn = open_reader(&path, true)?;
        let found: i64 = conn.query_row("PRAGMA user_version", [], |row| row.get(0))?;
        if found > schema::SCHEMA_VERSION {
            return Err(Error::SchemaTooNew {
                found,
                supported: schema::SCHEMA_VERSION,
            });
        }
        if found < schema::SCHEMA_VERSION {
            return Err(Error::SchemaTooOld {
                found,
                supported: schema::SCHEMA_VERSION,
            });
        }
        Ok(SqliteLedger {
            checkpointer: None,
            writer: None,
            readers: Some(Readers {
                path,
                read_only: true,
                idle: Mutex::new(vec![conn]),
            }),
            _lock: None,
        })
    }

    /// Counters of the background WAL checkpointer (`None` for read-only and in-memory
    /// ledgers, which have none).
    pub fn checkpoint_stats(&self) -> Option<&CheckpointStats> {
        self.checkpointer.as_ref().map(Checkpointer::stats)
    }

    /// `true` for a handle from [`SqliteLedger::open_read_only`].
    pub fn is_read_only(&self) -> bool {
        self.writer.is_none()
    }

    fn writer(&self) -> Result<&Writer> {
        self.writer.as_ref().ok_or(Error::ReadOnly)
    }

    /// An in-memory ledger (for tests): one connection, reads run on the writer thread.
    pub fn open_in_memory() -> Result<SqliteLedger> {
        let mut conn = Connection::open_in_memory()?;
        configure(&conn)?;
        schema::migrate(&mut conn)?;
        let writer = Writer::spawn(WriterState::new(conn)?, BATCH_RECORDS_MAX)?;
        Ok(SqliteLedger {
            checkpointer: None,
            writer: Some(writer),
            readers: None,
            _lock: None,
        })
    }

    /// Runs `f` on a read connection inside one read transaction (a consistent snapshot).
    pub(crate) fn read<T: Send + 'static>(
        &self,
        f: impl FnOnce(&Connection) -> Result<T> + Send + 'static,
    ) -> Result<T> {
        let Some(readers) = &self.readers else {
            return self.writer()?.run(move |state| in_read_tx(&state.conn, f));
        };
        let conn = readers.idle.lock().expect("reader pool poisoned").pop();
        let conn = match conn {
            Some(conn) => conn,
            None => open_reader(&readers.path, readers.read_only)?,
        };
        let result = in_read_tx(&conn, f);
        let mut idle = readers.idle.lock().expect("reader pool poisoned");
        if idle.len() < READER_CONNECTIONS_IDLE_MAX && conn.is_autocommit() {
            idle.push(conn);
        }
        result
    }

    /// Runs `f` on the writer thread inside one write transaction.
    pub(crate) fn write<T: Send + 'static>(
        &self,
        f: impl FnOnce(&mut WriterState) -> Result<T> + Send + 'static,
    ) -> Result<T> {
        self.writer()?.run(move |state| {
            state.conn.execute_batch("BEGIN IMMEDIATE")?;
            match f(state) {
                Ok(value) => match state.conn.execute_batch("COMMIT") {
                    Ok(()) => Ok(value),
                    Err(e) => {
                        let _ = state.conn.execute_batch("ROLLBACK");
                        Err(e.into())
                    }
                },
                Err(e) => {
                    let _ = state.conn.execute_batch("ROLLBACK");
                    Err(e)
                }
            }
        })
    }
}

/// Most bytes of the database a read connection maps into memory.
const READER_MMAP_BYTES_MAX: i64 = 1 << 30;

/// A read connection; with `read_only` the file is opened `SQLITE_OPEN_READ_ONLY`.
fn open_reader(path: &Path, read_only: bool) -> Result<Connection> {
    let access = if read_only {
        OpenFlags::SQLITE_OPEN_READ_ONLY
    } else {
        OpenFlags::SQLITE_OPEN_READ_WRITE
    };
    let conn = Connection::open_with_flags(path, access | OpenFlags::SQLITE_OPEN_NO_MUTEX)?;
    configure(&conn)?;
    conn.pragma_update(None, "query_only", true)?;
    conn.pragma_update(None, "mmap_size", READER_MMAP_BYTES_MAX)?;
    Ok(conn)
}

fn in_read_tx<T>(conn: &Connection, f: impl FnOnce(&Connection) -> Result<T>) -> Result<T> {
    conn.execute_batch("BEGIN")?;
    let result = f(conn);
    conn.execute_batch("COMMIT")?;
    result
}

fn check_name(field: &'static str, name: &str, max: usize) -> Result<()> {
    if name.is_empty() || name.len() > max {
        return Err(invalid(
            field,
            format!("length {} is not in 1..={max} bytes", name.len()),
        ));
    }
    if name.chars().any(char::is_control) {
        return Err(invalid(field, "contains control characters"));
    }
    Ok(())
}

fn check_json(field: &'static str, value: &serde_json::Value) -> Result<String> {
    let text = value.to_string();
    if text.len() > JSON_BYTES_MAX {
        return Err(invalid(
            field,
            format!("longer than {JSON_BYTES_MAX} bytes"),
        ));
    }
    Ok(text)
}

fn is_unique_violation(error: &rusqlite::Error) -> bool {
    matches!(error, rusqlite::Error::SqliteFailure(e, _)
        if e.extended_code == rusqlite::ffi::SQLITE_CONSTRAINT_UNIQUE
            || e.extended_code == rusqlite::ffi::SQLITE_CONSTRAINT_PRIMARYKEY)
}

fn to_sha(bytes: Vec<u8>, what: &str) -> Result<Sha256> {
    bytes
        .try_into()
        .map_err(|_| Error::Corrupt(format!("{what} is not 32 bytes")))
}

/// Columns read by [`decode_record`] (the last one is the previous record's hash).
pub(crate) const RECORD_SELECT: &str = "SELECT r.seq, r.tenant_id, r.function_id, r.module_id,
    r.idempotency_key, r.started_ms, r.finished_ms, r.outcome, r.exit_code, r.trap, r.ops,
    r.memory_peak_bytes, r.memory_ops_integral_hi, r.memory_ops_integral_lo, r.memory_byte_ns_hi,
    r.memory_byte_ns_lo, r.io_in_bytes, r.io_out_bytes, r.host_calls, r.wall_ns, r.late, r.hash,
    m.original_sha256, m.cost_table,
    (SELECT p.hash FROM usage_records p WHERE p.seq = r.seq - 1)";
/// The `FROM` clause matching [`RECORD_SELECT`].
pub(crate) const RECORD_FROM: &str =
    "FROM usage_records r LEFT JOIN modules m ON m.id = r.module_id";

fn u128_from(hi: i64, lo: i64) -> u128 {
    (u128::from(hi as u64) << 64) | u128::from(lo as u64)
}

/// Decodes a row selected with [`RECORD_SELECT`]; a decoding failure is a description.
pub(crate) fn decode_record(row: &Row<'_>) -> std::result::Result<UsageRecord, String> {
    decode(row, true).map_err(|e| e.to_string())
}

/// Decodes a row selected with [`RECORD_SELECT`]; with `read_prev` false the previous hash is
/// left as zeros (the caller tracks it).
fn decode(row: &Row<'_>, read_prev: bool) -> Result<UsageRecord> {
    let seq: i64 = row.get(0)?;
    let seq = u64::try_from(seq).map_err(|_| Error::Corrupt(format!("seq {seq}")))?;
    let outcome_code: i64 = row.get(7)?;
    let kind = u8::try_from(outcome_code)
        .ok()
        .and_then(OutcomeKind::from_code)
        .ok_or_else(|| Error::Corrupt(format!("outcome code {outcome_code}")))?;
    let module_sha: Option<Vec<u8>> = row.get(22)?;
    let module_sha = module_sha.ok_or_else(|| Error::Corrupt("module row missing".into()))?;
    let prev_hash = if read_prev {
        match row.get::<_, Option<Vec<u8>>>(24)? {
            Some(bytes) => to_sha(bytes, "previous hash")?,
            None if seq == 1 => GENESIS_HASH,
            None => return Err(Error::Corrupt(format!("record {} is missing", seq - 1))),
        }
    } else {
        GENESIS_HASH
    };
    let late: i64 = row.get(20)?;
    Ok(UsageRecord {
        seq,
        record: NewUsageRecord {
            tenant: TenantId(row.get(1)?),
            function: FunctionId(row.get(2)?),
            module: ModuleId(row.get(3)?),
            idempotency_key: row.get(4)?,
            started_ms: row.get(5)?,
            finished_ms: row.get(6)?,
            outcome: Outcome {
                kind,
                exit_code: row.get(8)?,
                trap: row.get(9)?,
            },
            meters: decode_meters(row, 10)?,
        },
        module_sha256: to_sha(module_sha, "module hash")?,
        cost_table: row
            .get::<_, Option<String>>(23)?
            .ok_or_else(|| Error::Corrupt("module row missing".into()))?,
        late: match late {
            0 => false,
            1 => true,
            other => return Err(Error::Corrupt(format!("late flag {other}"))),
        },
        prev_hash,
        hash: to_sha(row.get(21)?, "hash")?,
    })
}

/// Column `i` of `row` as an integer, without conversions.
#[inline]
pub(crate) fn int_at(row: &Row<'_>, i: usize) -> rusqlite::Result<i64> {
    row.get_ref(i)?.as_i64().map_err(Into::into)
}

/// Reads the meters of a row selected with [`METERS_SELECT`] starting at column `at`.
pub(crate) fn decode_meters(row: &Row<'_>, at: usize) -> rusqlite::Result<UsageMeters> {
    let int = |i: usize| int_at(row, at + i);
    Ok(UsageMeters {
        ops: int(0)? as u64,
        memory_peak_bytes: int(1)? as u64,
        memory_ops_integral: u128_from(int(2)?, int(3)?),
        memory_byte_ns: u128_from(int(4)?, int(5)?),
        io_in_bytes: int(6)? as u64,
        io_out_bytes: int(7)? as u64,
        host_calls: int(8)? as u64,
        wall_ns: int(9)? as u64,
    })
}

/// The meter columns, in [`decode_meters`] order.
pub(crate) const METERS_SELECT: &str = "ops, memory_peak_bytes, memory_ops_integral_hi,
    memory_ops_integral_lo, memory_byte_ns_hi, memory_byte_ns_lo, io_in_bytes, io_out_bytes,
    host_calls, wall_ns";

fn encode_cursor(started_ms: i64, seq: u64) -> String {
    format!("v1.{started_ms}.{seq}")
}

fn decode_cursor(cursor: &str) -> Result<(i64, i64)> {
    let bad = || invalid("cursor", "not a cursor returned by this ledger");
    let rest = cursor.strip_prefix("v1.").ok_or_else(bad)?;
    let (started, seq) = rest.rsplit_once('.').ok_or_else(bad)?;
    Ok((
        started.parse().map_err(|_| bad())?,
        seq.parse().map_err(|_| bad())?,
    ))
}

fn tenant_from_row(row: &Row<'_>) -> rusqlite::Result<Tenant> {
    Ok(Tenant {
        id: TenantId(row.get(0)?),
        name: row.get(1)?,
        created_ms: row.get(2)?,
    })
}

fn api_key_from_row(row: &Row<'_>) -> rusqlite::Result<ApiKey> {
    Ok(ApiKey {
        id: ApiKeyId(row.get(0)?),
        tenant: TenantId(row.get(1)?),
        prefix: row.get(2)?,
        created_ms: row.get(3)?,
        revoked_ms: row.get(4)?,
    })
}

const MODULE_SELECT: &str = "SELECT id, tenant_id, original_sha256, instrumented,
    instrumented_path, cost_table, static_stats_json, created_ms FROM modules";

fn module_from_row(row: &Row<'_>) -> Result<Module> {
    let bytes: Option<Vec<u8>> = row.get(3)?;
    let path: Option<String> = row.get(4)?;
    let stats: String = row.get(6)?;
    Ok(Module {
        id: ModuleId(row.get(0)?),
        module: NewModule {
            tenant: TenantId(row.get(1)?),
            original_sha256: to_sha(row.get(2)?, "module hash")?,
            instrumented: match (bytes, path) {
                (Some(bytes), None) => ModuleBytes::Inline(bytes),
                (None, Some(path)) => ModuleBytes::Path(path),
                _ => return Err(Error::Corrupt("module bytes and path".into())),
            },
            cost_table: row.get(5)?,
            static_stats: serde_json::from_str(&stats)
                .map_err(|e| Error::Corrupt(format!("module stats: {e}")))?,
            created_ms: row.get(7)?,
        },
    })
}

const FUNCTION_SELECT: &str =
    "SELECT id, tenant_id, name, module_id, limits_json, created_ms, updated_ms FROM functions";

fn function_from_row(row: &Row<'_>) -> Result<Function> {
    let limits: String = row.get(4)?;
    Ok(Function {
        id: FunctionId(row.get(0)?),
        tenant: TenantId(row.get(1)?),
        name: row.get(2)?,
        module: ModuleId(row.get(3)?),
        limits: serde_json::from_str(&limits)
            .map_err(|e| Error::Corrupt(format!("function limits: {e}")))?,
        created_ms: row.get(5)?,
        updated_ms: row.get(6)?,
    })
}

fn plan_version_from_row(row: &Row<'_>) -> rusqlite::Result<PlanVersion> {
    Ok(PlanVersion {
        id: PlanVersionId(row.get(0)?),
        plan: PlanId(row.get(1)?),
        version: row.get(2)?,
        pricing_json: row.get(3)?,
        created_ms: row.get(4)?,
    })
}

const PLAN_VERSION_SELECT: &str =
    "SELECT id, plan_id, version, pricing_json, created_ms FROM plan_versions";

pub(crate) fn get_tenant(conn: &Connection, id: TenantId) -> Result<Tenant> {
    conn.prepare_cached("SELECT id, name, created_ms FROM tenants WHERE id = ?1")?
        .query_row([id.0], tenant_from_row)
        .optional()?
        .ok_or_else(|| not_found("tenant", id))
}

pub(crate) fn chain_head(conn: &Connection) -> Result<(u64, Sha256)> {
    let (seq, hash): (i64, Vec<u8>) = conn
        .query_row(
            "SELECT seq, hash FROM usage_records ORDER BY seq DESC LIMIT 1",
            [],
            |row| Ok((row.get(0)?, row.get(1)?)),
        )
        .optional()?
        .unwrap_or((0, GENESIS_HASH.to_vec()));
    Ok((seq as u64, to_sha(hash, "head hash")?))
}

/// Streams the chain from seq 1 and returns the verdict.
pub(crate) fn verify(conn: &Connection) -> Result<ChainVerdict> {
    let mut expected_seq: u64 = 1;
    let mut prev_hash = GENESIS_HASH;
    let mut scratch = Vec::with_capacity(512);
    let sql = format!("{RECORD_SELECT} {RECORD_FROM} WHERE r.seq >= ?1 ORDER BY r.seq LIMIT ?2");
    let mut statement = conn.prepare(&sql.replace(
        "(SELECT p.hash FROM usage_records p WHERE p.seq = r.seq - 1)",
        "NULL",
    ))?;
    loop {
        let mut rows = statement.query(params![expected_seq as i64, VERIFY_PAGE_RECORDS as i64])?;
        let mut seen = 0usize;
        while let Some(row) = rows.next()? {
            seen += 1;
            let seq: i64 = row.get(0)?;
            if seq as u64 != expected_seq {
                return Ok(ChainVerdict::Broken(ChainBreak {
                    seq: expected_seq,
                    kind: ChainBreakKind::Missing {
                        found_seq: Some(seq as u64),
                    },
                }));
            }
            // The previous-hash column is NULL here; decode with a genesis placeholder for seq 1.
            let record = match decode(row, false) {
                Ok(record) => record,
                Err(why) => {
                    return Ok(ChainVerdict::Broken(ChainBreak {
                        seq: expected_seq,
                        kind: ChainBreakKind::Undecodable(why.to_string()),
                    }));
                }
            };
            let computed = chain::hash_with(
                &mut scratch,
                &ChainFields {
                    seq: expected_seq,
                    prev_hash: &prev_hash,
                    module_sha256: &record.module_sha256,
                    cost_table: &record.cost_table,
                    late: record.late,
                },
                &record.record,
            );
            if computed != record.hash {
                return Ok(ChainVerdict::Broken(ChainBreak {
                    seq: expected_seq,
                    kind: ChainBreakKind::HashMismatch {
                        stored: record.hash,
                        computed,
                    },
                }));
            }
            prev_hash = computed;
            expected_seq += 1;
        }
        if seen < VERIFY_PAGE_RECORDS {
            break;
        }
    }
    let records = expected_seq - 1;
    let (recorded_seq, recorded_hash): (i64, Vec<u8>) =
        conn.query_row("SELECT seq, hash FROM chain_head WHERE id = 1", [], |row| {
            Ok((row.get(0)?, row.get(1)?))
        })?;
    if recorded_seq as u64 != records || recorded_hash != prev_hash {
        let kind = if recorded_seq as u64 > records {
            ChainBreakKind::Missing { found_seq: None }
        } else {
            ChainBreakKind::HeadMismatch {
                recorded_seq: recorded_seq as u64,
            }
        };
        return Ok(ChainVerdict::Broken(ChainBreak {
            seq: records + 1,
            kind,
        }));
    }
    // Every finalized invoice anchors the chain at its `seq_through`.
    let mut anchors = conn.prepare(
        "SELECT i.id, i.seq_through, i.chain_hash, r.hash FROM invoices i
         LEFT JOIN usage_records r ON r.seq = i.seq_through WHERE i.seq_through > 0
         ORDER BY i.seq_through",
    )?;
    let mut rows = anchors.query([])?;
    while let Some(row) = rows.next()? {
        let anchored: Vec<u8> = row.get(2)?;
        let actual: Option<Vec<u8>> = row.get(3)?;
        if actual.as_deref() != Some(anchored.as_slice()) {
            return Ok(ChainVerdict::Broken(ChainBreak {
                seq: row.get::<_, i64>(1)? as u64,
                kind: ChainBreakKind::InvoiceAnchorMismatch {
                    invoice: InvoiceId(row.get(0)?),
                },
            }));
        }
    }
    Ok(ChainVerdict::Intact {
        records,
        head_seq: records,
        head_hash: prev_hash,
    })
}

fn hash_api_key(clear: &str) -> Sha256 {
    chain::sha256(clear.as_bytes())
}

/// End of the tenant's last finalized period, if any.
pub(crate) fn closed_until(conn: &Connection, tenant: TenantId) -> Result<Option<i64>> {
    Ok(conn.query_row(
        "SELECT MAX(period_end_ms) FROM invoices WHERE tenant_id = ?1",
        [tenant.0],
        |row| row.get(0),
    )?)
}

fn parse_object(
    field: &'static str,
    text: &str,
) -> Result<serde_json::Map<String, serde_json::Value>> {
    if text.len() > JSON_BYTES_MAX {
        return Err(invalid(
            field,
            format!("longer than {JSON_BYTES_MAX} bytes"),
        ));
    }
    match serde_json::from_str(text) {
        Ok(serde_json::Value::Object(map)) => Ok(map),
        Ok(_) => Err(invalid(field, "is not a JSON object")),
        Err(e) => Err(invalid(field, e.to_string())),
    }
}

/// Assembles the pricing document of a plan from its header and version texts, and validates it.
pub(crate) fn assemble_plan(header_json: &str, versions: &[String]) -> Result<tally_pricing::Plan> {
    let mut document = parse_object("plan", header_json)?;
    let mut list = Vec::with_capacity(versions.len());
    for text in versions {
        list.push(serde_json::Value::Object(parse_object(
            "plan version",
            text,
        )?));
    }
    document.insert("versions".into(), serde_json::Value::Array(list));
    tally_pricing::Plan::from_json(&serde_json::Value::Object(document).to_string())
        .map_err(Error::PlanRejected)
}

pub(crate) fn plan_version_texts(
    conn: &Connection,
    plan: PlanId,
) -> Result<Vec<(PlanVersionId, u32, String)>> {
    let mut statement = conn.prepare_cached(
        "SELECT id, version, pricing_json FROM plan_versions WHERE plan_id = ?1 ORDER BY version",
    )?;
    let rows = statement.query_map([plan.0], |row| {
        Ok((PlanVersionId(row.get(0)?), row.get(1)?, row.get(2)?))
    })?;
    Ok(rows.collect::<rusqlite::Result<_>>()?)
}

pub(crate) fn get_plan(conn: &Connection, id: PlanId) -> Result<Plan> {
    conn.prepare_cached("SELECT id, name, header_json, created_ms FROM plans WHERE id = ?1")?
        .query_row([id.0], plan_from_row)
        .optional()?
        .ok_or_else(|| not_found("plan", id))
}

fn plan_from_row(row: &Row<'_>) -> rusqlite::Result<Plan> {
    Ok(Plan {
        id: PlanId(row.get(0)?),
        name: row.get(1)?,
        header_json: row.get(2)?,
        created_ms: row.get(3)?,
    })
}

pub(crate) fn plan_document(conn: &Connection, plan: PlanId) -> Result<tally_pricing::Plan> {
    let header = get_plan(conn, plan)?.header_json;
    let versions: Vec<String> = plan_version_texts(conn, plan)?
        .into_iter()
        .map(|(_, _, text)| text)
        .collect();
    assemble_plan(&header, &versions)
}

fn version_number(map: &serde_json::Map<String, serde_json::Value>) -> Result<u32> {
    map.get("version")
        .and_then(serde_json::Value::as_u64)
        .and_then(|v| u32::try_from(v).ok())
        .ok_or_else(|| invalid("plan version", "has no integer `version`"))
}

pub(crate) fn subscriptions(conn: &Connection, tenant: TenantId) -> Result<Vec<Subscription>> {
    let mut statement = conn.prepare_cached(
        "SELECT id, tenant_id, plan_id, from_ms FROM subscriptions WHERE tenant_id = ?1 ORDER BY from_ms",
    )?;
    let rows = statement.query_map([tenant.0], |row| {
        Ok(Subscription {
            id: SubscriptionId(row.get(0)?),
            tenant: TenantId(row.get(1)?),
            plan: PlanId(row.get(2)?),
            from_ms: row.get(3)?,
        })
    })?;
    Ok(rows.collect::<rusqlite::Result<_>>()?)
}

impl Ledger for SqliteLedger {
    fn create_tenant(&self, name: &str, now_ms: i64) -> Result<Tenant> {
        check_name("tenant name", name, NAME_BYTES_MAX)?;
        let name = name.to_owned();
        self.write(move |state| {
            let inserted = state.conn.execute(
                "INSERT INTO tenants (name, created_ms) VALUES (?1, ?2)",
                params![name, now_ms],
            );
            match inserted {
                Err(e) if is_unique_violation(&e) => Err(Error::AlreadyExists {
                    what: "tenant",
                    key: name,
                }),
                Err(e) => Err(e.into()),
                Ok(_) => Ok(Tenant {
                    id: TenantId(state.conn.last_insert_rowid()),
                    name,
                    created_ms: now_ms,
                }),
            }
        })
    }

    fn get_tenant(&self, id: TenantId) -> Result<Tenant> {
        self.read(move |conn| get_tenant(conn, id))
    }

    fn find_tenant(&self, name: &str) -> Result<Option<Tenant>> {
        let name = name.to_owned();
        self.read(move |conn| {
            Ok(conn
                .prepare_cached("SELECT id, name, created_ms FROM tenants WHERE name = ?1")?
                .query_row([name], tenant_from_row)
                .optional()?)
        })
    }

    fn list_tenants(&self) -> Result<Vec<Tenant>> {
        self.read(|conn| {
            let mut statement =
                conn.prepare_cached("SELECT id, name, created_ms FROM tenants ORDER BY id")?;
            let rows = statement.query_map([], tenant_from_row)?;
            Ok(rows.collect::<rusqlite::Result<_>>()?)
        })
    }

    fn create_api_key(&self, tenant: TenantId, now_ms: i64) -> Result<CreatedApiKey> {
        let mut random = [0u8; API_KEY_RANDOM_BYTES];
        getrandom::fill(&mut random).map_err(|e| Error::Io {
            what: "reading random bytes for an api key".into(),
            source: std::io::Error::other(e.to_string()),
        })?;
        let clear = format!("{}{}", crate::API_KEY_TAG, hex::encode(random));
        let digest = hash_api_key(&clear);
        let prefix: String = clear.chars().take(API_KEY_PREFIX_CHARS).collect();
        let key = self.write(move |state| {
            get_tenant(&state.conn, tenant)?;
            state.conn.execute(
                "INSERT INTO api_keys (tenant_id, key_sha256, prefix, created_ms) VALUES (?1, ?2, ?3, ?4)",
                params![tenant.0, &digest[..], prefix, now_ms],
            )?;
            Ok(ApiKey {
                id: ApiKeyId(state.conn.last_insert_rowid()),
                tenant,
                prefix,
                created_ms: now_ms,
                revoked_ms: None,
            })
        })?;
        Ok(CreatedApiKey { key, clear })
    }

    fn resolve_api_key(&self, clear: &str) -> Result<Option<(Tenant, ApiKey)>> {
        if clear.len() > crate::API_KEY_BYTES_MAX {
            return Ok(None);
        }
        let digest = hash_api_key(clear);
        self.read(move |conn| {
            let key = conn
                .prepare_cached(
                    "SELECT id, tenant_id, prefix, created_ms, revoked_ms FROM api_keys
                     WHERE key_sha256 = ?1 AND revoked_ms IS NULL",
                )?
                .query_row([&digest[..]], api_key_from_row)
                .optional()?;
            match key {
                None => Ok(None),
                Some(key) => Ok(Some((get_tenant(conn, key.tenant)?, key))),
            }
        })
    }

    fn revoke_api_key(&self, id: ApiKeyId, now_ms: i64) -> Result<ApiKey> {
        self.write(move |state| {
            state.conn.execute(
                "UPDATE api_keys SET revoked_ms = ?2 WHERE id = ?1 AND revoked_ms IS NULL",
                params![id.0, now_ms],
            )?;
            state
                .conn
                .query_row(
                    "SELECT id, tenant_id, prefix, created_ms, revoked_ms FROM api_keys WHERE id = ?1",
                    [id.0],
                    api_key_from_row,
                )
                .optional()?
                .ok_or_else(|| not_found("api key", id))
        })
    }

    fn list_api_keys(&self, tenant: TenantId) -> Result<Vec<ApiKey>> {
        self.read(move |conn| {
            let mut statement = conn.prepare_cached(
                "SELECT id, tenant_id, prefix, created_ms, revoked_ms FROM api_keys
                 WHERE tenant_id = ?1 ORDER BY id",
            )?;
            let rows = statement.query_map([tenant.0], api_key_from_row)?;
            Ok(rows.collect::<rusqlite::Result<_>>()?)
        })
    }

    fn create_module(&self, module: NewModule) -> Result<Module> {
        check_name("cost_table", &module.cost_table, NAME_BYTES_MAX)?;
        let stats = check_json("static_stats", &module.static_stats)?;
        self.write(move |state| {
            get_tenant(&state.conn, module.tenant)?;
            let (bytes, path) = match &module.instrumented {
                ModuleBytes::Inline(bytes) => (Some(bytes.as_slice()), None),
                ModuleBytes::Path(path) => (None, Some(path.as_str())),
            };
            let inserted = state.conn.execute(
                "INSERT INTO modules (tenant_id, original_sha256, instrumented, instrumented_path,
                     cost_table, static_stats_json, created_ms) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
                params![
                    module.tenant.0,
                    &module.original_sha256[..],
                    bytes,
                    path,
                    module.cost_table,
                    stats,
                    module.created_ms
                ],
            );
            match inserted {
                Err(e) if is_unique_violation(&e) => Err(Error::AlreadyExists {
                    what: "module",
                    key: format!("{} ({})", hex::encode(module.original_sha256), module.cost_table),
                }),
                Err(e) => Err(e.into()),
                Ok(_) => Ok(Module {
                    id: ModuleId(state.conn.last_insert_rowid()),
                    module,
                }),
            }
        })
    }

    fn get_module(&self, id: ModuleId) -> Result<Module> {
        self.read(move |conn| {
            let mut statement = conn.prepare_cached(&format!("{MODULE_SELECT} WHERE id = ?1"))?;
            let mut rows = statement.query([id.0])?;
            match rows.next()? {
                Some(row) => module_from_row(row),
                None => Err(not_found("module", id)),
            }
        })
    }

    fn find_module(
        &self,
        tenant: TenantId,
        original_sha256: &Sha256,
        cost_table: &str,
    ) -> Result<Option<Module>> {
        let (sha, cost_table) = (*original_sha256, cost_table.to_owned());
        self.read(move |conn| {
            let mut statement = conn.prepare_cached(&format!(
                "{MODULE_SELECT} WHERE tenant_id = ?1 AND original_sha256 = ?2 AND cost_table = ?3"
            ))?;
            let mut rows = statement.query(params![tenant.0, &sha[..], cost_table])?;
            rows.next()?.map(module_from_row).transpose()
        })
    }

    fn list_modules(&self, tenant: TenantId) -> Result<Vec<Module>> {
        self.read(move |conn| {
            let mut statement =
                conn.prepare_cached(&format!("{MODULE_SELECT} WHERE tenant_id = ?1 ORDER BY id"))?;
            let mut rows = statement.query([tenant.0])?;
            let mut modules = Vec::new();
            while let Some(row) = rows.next()? {
                modules.push(module_from_row(row)?);
            }
            Ok(modules)
        })
    }

    fn put_function(
        &self,
        tenant: TenantId,
        name: &str,
        module: ModuleId,
        limits: serde_json::Value,
        now_ms: i64,
    ) -> Result<Function> {
        check_name("function name", name, FUNCTION_NAME_BYTES_MAX)?;
        let limits = check_json("limits", &limits)?;
        let name = name.to_owned();
        self.write(move |state| {
            let owner: Option<i64> = state
                .conn
                .query_row("SELECT tenant_id FROM modules WHERE id = ?1", [module.0], |row| {
                    row.get(0)
                })
                .optional()?;
            if owner != Some(tenant.0) {
                return Err(not_found("module", module));
            }
            state.conn.execute(
                "INSERT INTO functions (tenant_id, name, module_id, limits_json, created_ms, updated_ms)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?5)
                 ON CONFLICT (tenant_id, name) DO UPDATE SET module_id = excluded.module_id,
                     limits_json = excluded.limits_json, updated_ms = excluded.updated_ms",
                params![tenant.0, name, module.0, limits, now_ms],
            )?;
            let mut statement = state
                .conn
                .prepare_cached(&format!("{FUNCTION_SELECT} WHERE tenant_id = ?1 AND name = ?2"))?;
            let mut rows = statement.query(params![tenant.0, name])?;
            let row = rows.next()?.expect("function row just written");
            function_from_row(row)
        })
    }

    fn get_function(&self, id: FunctionId) -> Result<Function> {
        self.read(move |conn| {
            let mut statement = conn.prepare_cached(&format!("{FUNCTION_SELECT} WHERE id = ?1"))?;
            let mut rows = statement.query([id.0])?;
            match rows.next()? {
                Some(row) => function_from_row(row),
                None => Err(not_found("function", id)),
            }
        })
    }

    fn find_function(&self, tenant: TenantId, name: &str) -> Result<Option<Function>> {
        let name = name.to_owned();
        self.read(move |conn| {
            let mut statement = conn.prepare_cached(&format!(
                "{FUNCTION_SELECT} WHERE tenant_id = ?1 AND name = ?2"
            ))?;
            let mut rows = statement.query(params![tenant.0, name])?;
            rows.next()?.map(function_from_row).transpose()
        })
    }

    fn list_functions(&self, tenant: TenantId) -> Result<Vec<Function>> {
        self.read(move |conn| {
            let mut statement = conn.prepare_cached(&format!(
                "{FUNCTION_SELECT} WHERE tenant_id = ?1 ORDER BY name"
            ))?;
            let mut rows = statement.query([tenant.0])?;
            let mut functions = Vec::new();
            while let Some(row) = rows.next()? {
                functions.push(function_from_row(row)?);
            }
            Ok(functions)
        })
    }

    fn create_plan(&self, pricing_json: &str, now_ms: i64) -> Result<(Plan, Vec<PlanVersion>)> {
        let mut document = parse_object("plan", pricing_json)?;
        tally_pricing::Plan::from_json(pricing_json).map_err(Error::PlanRejected)?;
        let versions = match document.remove("versions") {
            Some(serde_json::Value::Array(versions)) => versions,
            _ => return Err(invalid("plan", "has no `versions` array")),
        };
        let name = document
            .get("plan")
            .and_then(serde_json::Value::as_str)
            .ok_or_else(|| invalid("plan", "has no `plan` name"))?
            .to_owned();
        check_name("plan name", &name, NAME_BYTES_MAX)?;
        let header = serde_json::Value::Object(document).to_string();
        self.write(move |state| {
            let inserted = state.conn.execute(
                "INSERT INTO plans (name, header_json, created_ms) VALUES (?1, ?2, ?3)",
                params![name, header, now_ms],
            );
            match inserted {
                Err(e) if is_unique_violation(&e) => {
                    return Err(Error::AlreadyExists {
                        what: "plan",
                        key: name,
                    });
                }
                Err(e) => return Err(e.into()),
                Ok(_) => {}
            }
            let plan = Plan {
                id: PlanId(state.conn.last_insert_rowid()),
                name,
                header_json: header,
                created_ms: now_ms,
            };
            let mut stored = Vec::with_capacity(versions.len());
            for version in versions {
                let serde_json::Value::Object(map) = version else {
                    return Err(invalid("plan version", "is not a JSON object"));
                };
                let number = version_number(&map)?;
                let text = serde_json::Value::Object(map).to_string();
                state.conn.execute(
                    "INSERT INTO plan_versions (plan_id, version, pricing_json, created_ms)
                     VALUES (?1, ?2, ?3, ?4)",
                    params![plan.id.0, number, text, now_ms],
                )?;
                stored.push(PlanVersion {
                    id: PlanVersionId(state.conn.last_insert_rowid()),
                    plan: plan.id,
                    version: number,
                    pricing_json: text,
                    created_ms: now_ms,
                });
            }
            Ok((plan, stored))
        })
    }

    fn get_plan(&self, id: PlanId) -> Result<Plan> {
        self.read(move |conn| get_plan(conn, id))
    }

    fn find_plan(&self, name: &str) -> Result<Option<Plan>> {
        let name = name.to_owned();
        self.read(move |conn| {
            Ok(conn
                .prepare_cached(
                    "SELECT id, name, header_json, created_ms FROM plans WHERE name = ?1",
                )?
                .query_row([name], plan_from_row)
                .optional()?)
        })
    }

    fn list_plans(&self) -> Result<Vec<Plan>> {
        self.read(|conn| {
            let mut statement = conn.prepare_cached(
                "SELECT id, name, header_json, created_ms FROM plans ORDER BY id",
            )?;
            let rows = statement.query_map([], plan_from_row)?;
            Ok(rows.collect::<rusqlite::Result<_>>()?)
        })
    }

    fn add_plan_version(
        &self,
        plan: PlanId,
        version_json: &str,
        now_ms: i64,
    ) -> Result<PlanVersion> {
        let map = parse_object("plan version", version_json)?;
        let number = version_number(&map)?;
        let text = serde_json::Value::Object(map).to_string();
        self.write(move |state| {
            let header = get_plan(&state.conn, plan)?.header_json;
            let mut texts: Vec<String> = plan_version_texts(&state.conn, plan)?
                .into_iter()
                .map(|(_, _, text)| text)
                .collect();
            texts.push(text.clone());
            assemble_plan(&header, &texts)?;
            let inserted = state.conn.execute(
                "INSERT INTO plan_versions (plan_id, version, pricing_json, created_ms) VALUES (?1, ?2, ?3, ?4)",
                params![plan.0, number, text, now_ms],
            );
            match inserted {
                Err(e) if is_unique_violation(&e) => Err(Error::AlreadyExists {
                    what: "plan version",
                    key: number.to_string(),
                }),
                Err(e) => Err(e.into()),
                Ok(_) => Ok(PlanVersion {
                    id: PlanVersionId(state.conn.last_insert_rowid()),
                    plan,
                    version: number,
                    pricing_json: text,
                    created_ms: now_ms,
                }),
            }
        })
    }

    fn update_plan_version(&self, id: PlanVersionId, version_json: &str) -> Result<PlanVersion> {
        let map = parse_object("plan version", version_json)?;
        let number = version_number(&map)?;
        let text = serde_json::Value::Object(map).to_string();
        self.write(move |state| {
            let mut current = state
                .conn
                .query_row(
                    &format!("{PLAN_VERSION_SELECT} WHERE id = ?1"),
                    [id.0],
                    plan_version_from_row,
                )
                .optional()?
                .ok_or_else(|| not_found("plan version", id))?;
            if current.version != number {
                return Err(invalid("plan version", "the version number cannot change"));
            }
            let used: bool = state.conn.query_row(
                "SELECT EXISTS (SELECT 1 FROM invoice_plan_versions WHERE plan_version_id = ?1)",
                [id.0],
                |row| row.get(0),
            )?;
            if used {
                return Err(Error::PlanVersionInUse(id.0));
            }
            let header = get_plan(&state.conn, current.plan)?.header_json;
            let texts: Vec<String> = plan_version_texts(&state.conn, current.plan)?
                .into_iter()
                .map(|(vid, _, old)| if vid == id { text.clone() } else { old })
                .collect();
            assemble_plan(&header, &texts)?;
            state.conn.execute(
                "UPDATE plan_versions SET pricing_json = ?2 WHERE id = ?1",
                params![id.0, text],
            )?;
            current.pricing_json = text;
            Ok(current)
        })
    }

    fn list_plan_versions(&self, plan: PlanId) -> Result<Vec<PlanVersion>> {
        self.read(move |conn| {
            let mut statement = conn.prepare_cached(&format!(
                "{PLAN_VERSION_SELECT} WHERE plan_id = ?1 ORDER BY version"
            ))?;
            let rows = statement.query_map([plan.0], plan_version_from_row)?;
            Ok(rows.collect::<rusqlite::Result<_>>()?)
        })
    }

    fn plan_document(&self, plan: PlanId) -> Result<String> {
        self.read(move |conn| Ok(plan_document(conn, plan)?.to_json()))
    }

    fn subscribe(&self, tenant: TenantId, plan: PlanId, from_ms: i64) -> Result<Subscription> {
        self.write(move |state| {
            get_tenant(&state.conn, tenant)?;
            get_plan(&state.conn, plan)?;
            if let Some(closed) = closed_until(&state.conn, tenant)?
                && from_ms < closed
            {
                return Err(Error::SubscriptionInClosedPeriod {
                    from_ms,
                    closed_until_ms: closed,
                });
            }
            let inserted = state.conn.execute(
                "INSERT INTO subscriptions (tenant_id, plan_id, from_ms) VALUES (?1, ?2, ?3)",
                params![tenant.0, plan.0, from_ms],
            );
            match inserted {
                Err(e) if is_unique_violation(&e) => Err(Error::AlreadyExists {
                    what: "subscription starting at",
                    key: from_ms.to_string(),
                }),
                Err(e) => Err(e.into()),
                Ok(_) => Ok(Subscription {
                    id: SubscriptionId(state.conn.last_insert_rowid()),
                    tenant,
                    plan,
                    from_ms,
                }),
            }
        })
    }

    fn list_subscriptions(&self, tenant: TenantId) -> Result<Vec<Subscription>> {
        self.read(move |conn| subscriptions(conn, tenant))
    }

    fn append(&self, record: NewUsageRecord) -> Result<Appended> {
        self.writer()?.append_one(record).wait()
    }

    fn append_async(&self, record: NewUsageRecord) -> AppendFuture {
        match self.writer() {
            Ok(writer) => Box::pin(writer.append_one(record)),
            Err(error) => Box::pin(std::future::ready(Err(error))),
        }
    }

    fn append_batch(&self, records: Vec<NewUsageRecord>) -> Result<Vec<Result<Appended>>> {
        if records.len() > BATCH_RECORDS_MAX {
            return Err(invalid(
                "records",
                format!(
                    "{} records exceed the batch limit of {BATCH_RECORDS_MAX}",
                    records.len()
                ),
            ));
        }
        if records.is_empty() {
            return Ok(Vec::new());
        }
        self.writer()?.append(records)
    }

    fn get_usage(&self, seq: u64) -> Result<Option<UsageRecord>> {
        let Ok(seq) = i64::try_from(seq) else {
            return Ok(None);
        };
        self.read(move |conn| {
            let mut statement =
                conn.prepare_cached(&format!("{RECORD_SELECT} {RECORD_FROM} WHERE r.seq = ?1"))?;
            let mut rows = statement.query([seq])?;
            match rows.next()? {
                None => Ok(None),
                Some(row) => Ok(Some(decode_record(row).map_err(Error::Corrupt)?)),
            }
        })
    }

    fn list_usage(&self, query: &UsageQuery) -> Result<UsagePage> {
        if query.limit == 0 || query.limit > PAGE_RECORDS_MAX {
            return Err(invalid(
                "limit",
                format!("is not in 1..={PAGE_RECORDS_MAX}"),
            ));
        }
        let after = match &query.cursor {
            None => (i64::MIN, 0),
            Some(cursor) => decode_cursor(cursor)?,
        };
        let query = query.clone();
        self.read(move |conn| {
            let mut statement = conn.prepare_cached(&format!(
                "{RECORD_SELECT} {RECORD_FROM}
                 WHERE r.tenant_id = ?1 AND r.started_ms >= ?2 AND r.started_ms < ?3
                   AND (?4 IS NULL OR r.function_id = ?4)
                   AND (r.started_ms, r.seq) > (?5, ?6)
                 ORDER BY r.started_ms, r.seq LIMIT ?7"
            ))?;
            let mut rows = statement.query(params![
                query.tenant.0,
                query.range.start_ms,
                query.range.end_ms,
                query.function.map(|f| f.0),
                after.0,
                after.1,
                query.limit as i64 + 1,
            ])?;
            let mut records = Vec::with_capacity(query.limit + 1);
            while let Some(row) = rows.next()? {
                records.push(decode_record(row).map_err(Error::Corrupt)?);
            }
            let next_cursor = if records.len() > query.limit {
                records.truncate(query.limit);
                let last = records.last().expect("limit is at least 1");
                Some(encode_cursor(last.record.started_ms, last.seq))
            } else {
                None
            };
            Ok(UsagePage {
                records,
                next_cursor,
            })
        })
    }

    fn daily_usage(&self, tenant: TenantId, range: Period) -> Result<Vec<DailyUsage>> {
        let days = (range.end_ms - range.start_ms).div_euclid(DAY_MS) + 1;
        if range.start_ms >= range.end_ms || days > DAILY_SUMMARY_DAYS_MAX {
            return Err(invalid(
                "range",
                format!("must be non-empty and span at most {DAILY_SUMMARY_DAYS_MAX} days"),
            ));
        }
        self.read(move |conn| {
            let mut statement = conn.prepare_cached(&format!(
                "SELECT function_id, started_ms, {METERS_SELECT} FROM usage_records
                 WHERE tenant_id = ?1 AND started_ms >= ?2 AND started_ms < ?3"
            ))?;
            let mut rows = statement.query(params![tenant.0, range.start_ms, range.end_ms])?;
            let mut totals = std::collections::BTreeMap::<(i64, FunctionId), MeterTotals>::new();
            while let Some(row) = rows.next()? {
                let function = FunctionId(int_at(row, 0)?);
                let day = int_at(row, 1)?.div_euclid(DAY_MS) * DAY_MS;
                totals
                    .entry((day, function))
                    .or_default()
                    .add(&decode_meters(row, 2)?);
            }
            Ok(totals
                .into_iter()
                .map(|((day_start_ms, function), totals)| DailyUsage {
                    day_start_ms,
                    function,
                    totals,
                })
                .collect())
        })
    }

    fn draft_invoice(&self, tenant: TenantId, period: Period) -> Result<Invoice> {
        self.read(move |conn| crate::invoice::draft(conn, tenant, period, None))
    }

    fn finalize_invoice(&self, tenant: TenantId, period: Period, now_ms: i64) -> Result<Invoice> {
        self.write(move |state| crate::invoice::finalize(state, tenant, period, now_ms))
    }

    fn void_invoice(&self, id: InvoiceId, reason: &str, now_ms: i64) -> Result<Invoice> {
        if reason.len() > crate::VOID_REASON_BYTES_MAX {
            return Err(invalid(
                "reason",
                format!("longer than {} bytes", crate::VOID_REASON_BYTES_MAX),
            ));
        }
        let reason = reason.to_owned();
        self.write(move |state| crate::invoice::void(&state.conn, id, &reason, now_ms))
    }

    fn get_invoice(&self, id: InvoiceId) -> Result<Invoice> {
        self.read(move |conn| crate::invoice::get(conn, id))
    }

    fn list_invoices(&self, tenant: TenantId) -> Result<Vec<Invoice>> {
        self.read(move |conn| crate::invoice::list(conn, tenant))
    }

    fn verify(&self) -> Result<ChainVerdict> {
        self.read(verify)
    }

    fn audit_record(&self, seq: u64) -> Result<Option<AuditRecord>> {
        let Some(record) = self.get_usage(seq)? else {
            return Ok(None);
        };
        let (head_seq, head_hash) = self.chain_head()?;
        let canonical_bytes = chain::encode(
            &ChainFields {
                seq: record.seq,
                prev_hash: &record.prev_hash,
                module_sha256: &record.module_sha256,
                cost_table: &record.cost_table,
                late: record.late,
            },
            &record.record,
        );
        Ok(Some(AuditRecord {
            record,
            canonical_bytes,
            head_seq: head_seq.max(seq),
            head_hash,
        }))
    }

    fn chain_head(&self) -> Result<(u64, Sha256)> {
        self.read(chain_head)
    }
}

//! The single writer thread with group commit.
//!
//! Producers send commands over a bounded channel and block on a private reply channel. The
//! writer takes the first command, then drains whatever else is queued (up to
//! [`BATCH_RECORDS_MAX`] records) and appends all of it in one `BEGIN IMMEDIATE … COMMIT`
//! transaction. Replies are sent only after `COMMIT` returned: an acknowledged append is a
//! committed append. Other writes (tenants, plans, invoices, ...) run on the same thread, each in
//! its own transaction, between batches, so they are serialized with appends.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::mpsc::{Receiver, SyncSender, sync_channel};
use std::thread::JoinHandle;

use rusqlite::{Connection, OptionalExtension, params};

use crate::chain::{self, ChainFields, GENESIS_HASH};
use crate::error::{Error, Result, invalid, not_found};
use crate::sqlite::{RECORD_FROM, RECORD_SELECT, decode_record};
use crate::types::{Appended, FunctionId, ModuleId, NewUsageRecord, Sha256, TenantId, UsageRecord};
use crate::{
    BATCH_RECORDS_MAX, IDEMPOTENCY_KEY_BYTES_MAX, TRAP_MESSAGE_BYTES_MAX, WRITER_QUEUE_COMMANDS_MAX,
};

/// A one-shot reply slot.
pub(crate) type Reply<T> = SyncSender<T>;

/// A unit of work for the writer thread.
pub(crate) type Job = Box<dyn FnOnce(&mut WriterState) + Send>;

/// Records of one append call and where to send their results.
pub(crate) type PendingAppend = (Vec<NewUsageRecord>, Reply<Vec<Result<Appended>>>);

pub(crate) enum Command {
    Append {
        records: Vec<NewUsageRecord>,
        reply: Reply<Vec<Result<Appended>>>,
    },
    Job(Job),
}

#[derive(Clone)]
pub(crate) struct ModuleInfo {
    pub tenant: TenantId,
    pub sha256: Sha256,
    pub cost_table: Arc<str>,
}

/// State owned by the writer thread.
pub(crate) struct WriterState {
    pub conn: Connection,
    pub head_seq: u64,
    pub head_hash: Sha256,
    modules: HashMap<ModuleId, ModuleInfo>,
    functions: HashMap<FunctionId, TenantId>,
    /// End of each tenant's last finalized period (absent: never loaded).
    closed_until: HashMap<TenantId, Option<i64>>,
    scratch: Vec<u8>,
}

impl WriterState {
    pub fn new(conn: Connection) -> Result<WriterState> {
        let mut state = WriterState {
            conn,
            head_seq: 0,
            head_hash: GENESIS_HASH,
            modules: HashMap::new(),
            functions: HashMap::new(),
            closed_until: HashMap::new(),
            scratch: Vec::with_capacity(512),
        };
        state.reload_head()?;
        Ok(state)
    }

    /// Loads the head from the last record (not from `chain_head`, which `verify` checks).
    pub fn reload_head(&mut self) -> Result<()> {
        let head: Option<(i64, Vec<u8>)> = self
            .conn
            .query_row(
                "SELECT seq, hash FROM usage_records ORDER BY seq DESC LIMIT 1",
                [],
                |row| Ok((row.get(0)?, row.get(1)?)),
            )
            .optional()?;
        match head {
            None => {
                self.head_seq = 0;
                self.head_hash = GENESIS_HASH;
            }
            Some((seq, hash)) => {
                self.head_seq =
                    u64::try_from(seq).map_err(|_| Error::Corrupt(format!("seq {seq}")))?;
                self.head_hash = hash
                    .try_into()
                    .map_err(|_| Error::Corrupt(format!("hash of record {seq}")))?;
            }
        }
        Ok(())
    }

    /// Forgets the cached end of a tenant's closed periods (after a finalization).
    pub fn set_closed_until(&mut self, tenant: TenantId, end_ms: i64) {
        self.closed_until.insert(tenant, Some(end_ms));
    }

    fn closed_until(&mut self, tenant: TenantId) -> Result<Option<i64>> {
        if let Some(cached) = self.closed_until.get(&tenant) {
            return Ok(*cached);
        }
        let end: Option<i64> = self.conn.query_row(
            "SELECT MAX(period_end_ms) FROM invoices WHERE tenant_id = ?1",
            [tenant.0],
            |row| row.get(0),
        )?;
        self.closed_until.insert(tenant, end);
        Ok(end)
    }

    fn module_info(&mut self, module: ModuleId) -> Result<ModuleInfo> {
        if let Some(info) = self.modules.get(&module) {
            return Ok(info.clone());
        }
        let row: Option<(i64, Vec<u8>, String)> = self
            .conn
            .prepare_cached(
                "SELECT tenant_id, original_sha256, cost_table FROM modules WHERE id = ?1",
            )?
            .query_row([module.0], |row| {
                Ok((row.get(0)?, row.get(1)?, row.get(2)?))
            })
            .optional()?;
        let (tenant, sha, cost_table) = row.ok_or_else(|| not_found("module", module))?;
        let info = ModuleInfo {
            tenant: TenantId(tenant),
            sha256: sha
                .try_into()
                .map_err(|_| Error::Corrupt(format!("hash of module {module}")))?,
            cost_table: cost_table.into(),
        };
        self.modules.insert(module, info.clone());
        Ok(info)
    }

    fn function_tenant(&mut self, function: FunctionId) -> Result<TenantId> {
        if let Some(tenant) = self.functions.get(&function) {
            return Ok(*tenant);
        }
        let tenant: Option<i64> = self
            .conn
            .prepare_cached("SELECT tenant_id FROM functions WHERE id = ?1")?
            .query_row([function.0], |row| row.get(0))
            .optional()?;
        let tenant = TenantId(tenant.ok_or_else(|| not_found("function", function))?);
        self.functions.insert(function, tenant);
        Ok(tenant)
    }

    /// Appends one record inside the open batch transaction. `Err` values that are not SQLite
    /// errors leave the transaction usable.
    fn append_one(&mut self, r: &NewUsageRecord) -> Result<Appended> {
        validate(r)?;
        let module = self.module_info(r.module)?;
        if module.tenant != r.tenant {
            return Err(not_found("module", r.module));
        }
        if self.function_tenant(r.function)? != r.tenant {
            return Err(not_found("function", r.function));
        }
        let late = self
            .closed_until(r.tenant)?
            .is_some_and(|closed| r.started_ms < closed);
        let seq = self.head_seq + 1;
        let prev_hash = self.head_hash;
        let hash = chain::hash_with(
            &mut self.scratch,
            &ChainFields {
                seq,
                prev_hash: &prev_hash,
                module_sha256: &module.sha256,
                cost_table: &module.cost_table,
                late,
            },
            r,
        );
        let m = &r.meters;
        let inserted = self
            .conn
            .prepare_cached(
                "INSERT INTO usage_records (seq, tenant_id, function_id, module_id, idempotency_key,
                     started_ms, finished_ms, outcome, exit_code, trap, ops, memory_peak_bytes,
                     memory_ops_integral_hi, memory_ops_integral_lo, memory_byte_ns_hi,
                     memory_byte_ns_lo, io_in_bytes, io_out_bytes, host_calls, wall_ns, late, hash)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14, ?15, ?16, ?17,
                     ?18, ?19, ?20, ?21, ?22)
                 ON CONFLICT (tenant_id, idempotency_key) DO NOTHING",
            )?
            .execute(params![
                seq as i64,
                r.tenant.0,
                r.function.0,
                r.module.0,
                r.idempotency_key,
                r.started_ms,
                r.finished_ms,
                r.outcome.kind.code(),
                r.outcome.exit_code,
                r.outcome.trap,
                m.ops as i64,
                m.memory_peak_bytes as i64,
                (m.memory_ops_integral >> 64) as u64 as i64,
                m.memory_ops_integral as u64 as i64,
                (m.memory_byte_ns >> 64) as u64 as i64,
                m.memory_byte_ns as u64 as i64,
                m.io_in_bytes as i64,
                m.io_out_bytes as i64,
                m.host_calls as i64,
                m.wall_ns as i64,
                late,
                &hash[..],
            ])?;
        if inserted == 1 {
            self.head_seq = seq;
            self.head_hash = hash;
            return Ok(Appended {
                record: UsageRecord {
                    seq,
                    record: r.clone(),
                    module_sha256: module.sha256,
                    cost_table: module.cost_table.to_string(),
                    late,
                    prev_hash,
                    hash,
                },
                created: true,
            });
        }
        assert_eq!(inserted, 0);
        let existing = self
            .conn
            .prepare_cached(&format!(
                "{RECORD_SELECT} {RECORD_FROM} WHERE r.tenant_id = ?1 AND r.idempotency_key = ?2"
            ))?
            .query_row(params![r.tenant.0, r.idempotency_key], |row| {
                Ok(decode_record(row))
            })?
            .map_err(Error::Corrupt)?;
        let fields = differing_fields(&existing.record, r);
        if fields.is_empty() {
            Ok(Appended {
                record: existing,
                created: false,
            })
        } else {
            Err(Error::ExistsWithDifferentFields {
                key: r.idempotency_key.clone(),
                existing_seq: existing.seq,
                fields,
            })
        }
    }

    /// Appends a batch of commands' records in one transaction.
    fn commit_batch(&mut self, batch: Vec<PendingAppend>) {
        let head_before = (self.head_seq, self.head_hash);
        let result = (|| -> Result<Vec<Vec<Result<Appended>>>> {
            self.conn.execute_batch("BEGIN IMMEDIATE")?;
            let mut results = Vec::with_capacity(batch.len());
            for (records, _) in &batch {
                let mut one = Vec::with_capacity(records.len());
                for record in records {
                    match self.append_one(record) {
                        Err(Error::Sqlite(e)) => return Err(Error::Sqlite(e)),
                        other => one.push(other),
                    }
                }
                results.push(one);
            }
            if self.head_seq != head_before.0 {
                self.conn
                    .prepare_cached("UPDATE chain_head SET seq = ?1, hash = ?2 WHERE id = 1")?
                    .execute(params![self.head_seq as i64, &self.head_hash[..]])?;
            }
            self.conn.execute_batch("COMMIT")?;
            Ok(results)
        })();
        match result {
            Ok(results) => {
                for ((_, reply), result) in batch.into_iter().zip(results) {
                    // A producer that gave up waiting is not an error of the writer.
                    let _ = reply.send(result);
                }
            }
            Err(error) => {
                let _ = self.conn.execute_batch("ROLLBACK");
                self.head_seq = head_before.0;
                self.head_hash = head_before.1;
                let reason = error.to_string();
                for (records, reply) in batch {
                    let _ = reply.send(
                        records
                            .iter()
                            .map(|_| Err(Error::BatchAborted(reason.clone())))
                            .collect(),
                    );
                }
            }
        }
    }
}

fn validate(r: &NewUsageRecord) -> Result<()> {
    let key = r.idempotency_key.len();
    if key == 0 || key > IDEMPOTENCY_KEY_BYTES_MAX {
        return Err(invalid(
            "idempotency_key",
            format!("length {key} is not in 1..={IDEMPOTENCY_KEY_BYTES_MAX} bytes"),
        ));
    }
    if r.finished_ms < r.started_ms {
        return Err(invalid("finished_ms", "is before started_ms"));
    }
    if let Some(trap) = &r.outcome.trap
        && trap.len() > TRAP_MESSAGE_BYTES_MAX
    {
        return Err(invalid(
            "outcome.trap",
            format!("longer than {TRAP_MESSAGE_BYTES_MAX} bytes"),
        ));
    }
    Ok(())
}

/// Names of the fields of `b` that differ from `a`, in canonical order.
pub(crate) fn differing_fields(a: &NewUsageRecord, b: &NewUsageRecord) -> Vec<&'static str> {
    let mut fields = Vec::new();
    let mut check = |name: &'static str, same: bool| {
        if !same {
            fields.push(name);
        }
    };
    assert_eq!(a.tenant, b.tenant);
    assert_eq!(a.idempotency_key, b.idempotency_key);
    check("function", a.function == b.function);
    check("module", a.module == b.module);
    check("started_ms", a.started_ms == b.started_ms);
    check("finished_ms", a.finished_ms == b.finished_ms);
    check("outcome.kind", a.outcome.kind == b.outcome.kind);
    check(
        "outcome.exit_code",
        a.outcome.exit_code == b.outcome.exit_code,
    );
    check("outcome.trap", a.outcome.trap == b.outcome.trap);
    let (x, y) = (&a.meters, &b.meters);
    check("ops", x.ops == y.ops);
    check(
        "memory_peak_bytes",
        x.memory_peak_bytes == y.memory_peak_bytes,
    );
    check(
        "memory_ops_integral",
        x.memory_ops_integral == y.memory_ops_integral,
    );
    check("memory_byte_ns", x.memory_byte_ns == y.memory_byte_ns);
    check("io_in_bytes", x.io_in_bytes == y.io_in_bytes);
    check("io_out_bytes", x.io_out_bytes == y.io_out_bytes);
    check("host_calls", x.host_calls == y.host_calls);
    check("wall_ns", x.wall_ns == y.wall_ns);
    fields
}

/// Handle to the writer thread.
pub(crate) struct Writer {
    sender: Option<SyncSender<Command>>,
    thread: Option<JoinHandle<()>>,
}

impl Writer {
    pub fn spawn(state: WriterState, batch_records_max: usize) -> Result<Writer> {
        assert!((1..=BATCH_RECORDS_MAX).contains(&batch_records_max));
        let (sender, receiver) = sync_channel(WRITER_QUEUE_COMMANDS_MAX);
        let thread = std::thread::Builder::new()
            .name("tally-ledger-writer".into())
            .spawn(move || run(state, receiver, batch_records_max))
            .map_err(|source| Error::Io {
                what: "spawning the ledger writer thread".into(),
                source,
            })?;
        Ok(Writer {
            sender: Some(sender),
            thread: Some(thread),
        })
    }

    fn send(&self, command: Command) -> Result<()> {
        self.sender
            .as_ref()
            .expect("sender lives until drop")
            .send(command)
            .map_err(|_| Error::WriterStopped)
    }

    /// Appends records and waits until they are committed.
    pub fn append(&self, records: Vec<NewUsageRecord>) -> Result<Vec<Result<Appended>>> {
        let count = records.len();
        let (reply, wait) = sync_channel(1);
        self.send(Command::Append { records, reply })?;
        let results = wait.recv().map_err(|_| Error::WriterStopped)?;
        assert_eq!(results.len(), count);
        Ok(results)
    }

    /// Runs `f` on the writer thread and waits for its result.
    pub fn run<T: Send + 'static>(
        &self,
        f: impl FnOnce(&mut WriterState) -> Result<T> + Send + 'static,
    ) -> Result<T> {
        let (reply, wait) = sync_channel(1);
        self.send(Command::Job(Box::new(move |state| {
            let _ = reply.send(f(state));
        })))?;
        wait.recv().map_err(|_| Error::WriterStopped)?
    }
}

impl Drop for Writer {
    fn drop(&mut self) {
        drop(self.sender.take());
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

fn run(mut state: WriterState, receiver: Receiver<Command>, batch_records_max: usize) {
    let mut batch = Vec::new();
    let mut batch_records = 0usize;
    while let Ok(first) = receiver.recv() {
        let mut next = Some(first);
        while let Some(command) = next.take() {
            match command {
                Command::Append { records, reply } => {
                    batch_records += records.len();
                    batch.push((records, reply));
                    if batch_records >= batch_records_max {
                        state.commit_batch(std::mem::take(&mut batch));
                        batch_records = 0;
                    }
                }
                Command::Job(job) => {
                    if !batch.is_empty() {
                        state.commit_batch(std::mem::take(&mut batch));
                        batch_records = 0;
                    }
                    job(&mut state);
                }
            }
            next = receiver.try_recv().ok();
        }
        if !batch.is_empty() {
            state.commit_batch(std::mem::take(&mut batch));
            batch_records = 0;
        }
    }
}

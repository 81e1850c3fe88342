//! The single writer thread with group commit.
//!
//! Producers send commands over a bounded channel and block on a private reply channel. The
//! writer takes the first command, then drains whatever else is queued (up to
//! [`BATCH_RECORDS_MAX`] records) and appends all of it in one `BEGIN IMMEDIATE … COMMIT`
//! transaction. Replies are sent only after `COMMIT` returned: an acknowledged append is a
//! committed append. Other writes (tenants, plans, invoices, ...) run on the same thread, each in
//! its own transaction, between batches, so they are serialized with appends.

use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Condvar, Mutex};
use std::task::{Context, Poll, Wake, Waker};
use std::thread::JoinHandle;

use rusqlite::{CachedStatement, Connection, OptionalExtension, params};

use crate::chain::{self, ChainFields, GENESIS_HASH};
use crate::error::{Error, Result, invalid, not_found};
use crate::sqlite::{RECORD_FROM, RECORD_SELECT, decode_record};
use crate::types::{Appended, FunctionId, ModuleId, NewUsageRecord, Sha256, TenantId, UsageRecord};
use crate::{
    BATCH_RECORDS_MAX, IDEMPOTENCY_KEY_BYTES_MAX, TRAP_MESSAGE_BYTES_MAX, WRITER_QUEUE_COMMANDS_MAX,
};

/// A unit of work for the writer thread.
pub(crate) type Job = Box<dyn FnOnce(&mut WriterState) + Send>;

/// Records of one append call and who waits for their results.
#[allow(clippy::large_enum_variant)] // as `Output`: no allocation per append
pub(crate) enum PendingAppend {
    /// One record (`append`, `append_async`).
    One(NewUsageRecord, Completer<Appended>),
    /// Up to [`BATCH_RECORDS_MAX`] records (`append_batch`).
    Many(Vec<NewUsageRecord>, Completer<Vec<Result<Appended>>>),
}

impl PendingAppend {
    fn len(&self) -> usize {
        match self {
            PendingAppend::One(..) => 1,
            PendingAppend::Many(records, _) => records.len(),
        }
    }
}

pub(crate) enum Command {
    Append(PendingAppend),
    Job(Job),
}

/// State of a one-shot result slot.
enum SlotState<T> {
    /// Not completed; whom to wake when it is.
    Waiting(Option<Waker>),
    Done(Result<T>),
    Taken,
}

/// A one-shot slot written once by the writer thread and read once by the producer, either by
/// blocking ([`Ticket::wait`]) or as a future (tokio or any other executor).
struct Slot<T> {
    state: Mutex<SlotState<T>>,
}

/// The writer's end of a slot. Dropping it without completing answers
/// [`Error::WriterStopped`], so a producer never waits forever.
pub(crate) struct Completer<T> {
    slot: Option<Arc<Slot<T>>>,
}

/// The producer's end of a slot: a future, or [`Ticket::wait`] from a plain thread.
pub(crate) struct Ticket<T> {
    slot: Arc<Slot<T>>,
}

fn slot<T>() -> (Completer<T>, Ticket<T>) {
    let slot = Arc::new(Slot {
        state: Mutex::new(SlotState::Waiting(None)),
    });
    (
        Completer {
            slot: Some(Arc::clone(&slot)),
        },
        Ticket { slot },
    )
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    // The critical sections below cannot panic halfway; a poisoned lock holds consistent data.
    mutex
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

impl<T> Completer<T> {
    pub(crate) fn complete(mut self, value: Result<T>) {
        let slot = self.slot.take().expect("completed once");
        let previous = std::mem::replace(&mut *lock(&slot.state), SlotState::Done(value));
        if let SlotState::Waiting(Some(waker)) = previous {
            waker.wake();
        }
    }
}

impl<T> Drop for Completer<T> {
    fn drop(&mut self) {
        if let Some(slot) = self.slot.take() {
            Completer { slot: Some(slot) }.complete(Err(Error::WriterStopped));
        }
    }
}

/// Wakes a thread blocked in [`Ticket::wait`].
struct ThreadWaker(std::thread::Thread);

impl Wake for ThreadWaker {
    fn wake(self: Arc<Self>) {
        self.0.unpark();
    }

    fn wake_by_ref(self: &Arc<Self>) {
        self.0.unpark();
    }
}

impl<T> Ticket<T> {
    /// A ticket that is already answered.
    pub(crate) fn ready(value: Result<T>) -> Ticket<T> {
        Ticket {
            slot: Arc::new(Slot {
                state: Mutex::new(SlotState::Done(value)),
            }),
        }
    }

    /// Blocks the calling thread until the writer answers.
    pub(crate) fn wait(self) -> Result<T> {
        let mut waker = None;
        loop {
            {
                let mut state = lock(&self.slot.state);
                match std::mem::replace(&mut *state, SlotState::Taken) {
                    SlotState::Done(value) => return value,
                    SlotState::Waiting(_) => {
                        let waker = waker.get_or_insert_with(|| {
                            Waker::from(Arc::new(ThreadWaker(std::thread::current())))
                        });
                        *state = SlotState::Waiting(Some(waker.clone()));
                    }
                    SlotState::Taken => unreachable!("a ticket is read once"),
                }
            }
            // Spurious unparks just go around the loop.
            std::thread::park();
        }
    }
}

impl<T> Future for Ticket<T> {
    type Output = Result<T>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Result<T>> {
        let mut state = lock(&self.slot.state);
        match std::mem::replace(&mut *state, SlotState::Taken) {
            SlotState::Done(value) => Poll::Ready(value),
            SlotState::Waiting(waker) => {
                let waker = match waker {
                    Some(waker) if waker.will_wake(cx.waker()) => waker,
                    _ => cx.waker().clone(),
                };
                *state = SlotState::Waiting(Some(waker));
                Poll::Pending
            }
            SlotState::Taken => Poll::Ready(Err(Error::WriterStopped)),
        }
    }
}

/// The writer's inbox: a vector swapped out whole under a mutex, so the writer takes everything
/// queued with one lock, and a producer wakes the writer only when it is asleep.
struct Queue {
    state: Mutex<QueueState>,
    /// Signalled when a command arrives for a sleeping writer.
    arrived: Condvar,
    /// Signalled when the writer took the queue and producers wait for room.
    room: Condvar,
}

struct QueueState {
    commands: Vec<Command>,
    writer_asleep: bool,
    producers_waiting: usize,
    closed: bool,
}

impl Queue {
    fn push(&self, command: Command) -> Result<()> {
        let mut state = lock(&self.state);
        while state.commands.len() >= WRITER_QUEUE_COMMANDS_MAX && !state.closed {
            state.producers_waiting += 1;
            state = self
                .room
                .wait(state)
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            state.producers_waiting -= 1;
        }
        if state.closed {
            return Err(Error::WriterStopped);
        }
        state.commands.push(command);
        if state.writer_asleep {
            state.writer_asleep = false;
            self.arrived.notify_one();
        }
        Ok(())
    }

    /// Moves every queued command into `into` (empty), sleeping while there is none. `false`
    /// once the queue is closed and empty.
    fn take(&self, into: &mut Vec<Command>) -> bool {
        debug_assert!(into.is_empty());
        let mut state = lock(&self.state);
        while state.commands.is_empty() {
            if state.closed {
                return false;
            }
            state.writer_asleep = true;
            state = self
                .arrived
                .wait(state)
                .unwrap_or_else(std::sync::PoisonError::into_inner);
        }
        state.writer_asleep = false;
        std::mem::swap(&mut state.commands, into);
        if state.producers_waiting > 0 {
            self.room.notify_all();
        }
        true
    }

    fn close(&self) {
        let mut state = lock(&self.state);
        state.closed = true;
        self.arrived.notify_one();
        self.room.notify_all();
    }
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
    caches: Caches,
}

/// What the writer remembers between batches to avoid queries per record.
struct Caches {
    modules: HashMap<ModuleId, ModuleInfo>,
    functions: HashMap<FunctionId, TenantId>,
    /// End of each tenant's last finalized period (absent: never loaded).
    closed_until: HashMap<TenantId, Option<i64>>,
    scratch: Vec<u8>,
}

/// The insert of one usage record, prepared once per batch.
const INSERT_RECORD_SQL: &str = "INSERT INTO usage_records (seq, tenant_id, function_id,
    module_id, idempotency_key, started_ms, finished_ms, outcome, exit_code, trap, ops,
    memory_peak_bytes, memory_ops_integral_hi, memory_ops_integral_lo, memory_byte_ns_hi,
    memory_byte_ns_lo, io_in_bytes, io_out_bytes, host_calls, wall_ns, late, hash)
    VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14, ?15, ?16, ?17, ?18, ?19,
    ?20, ?21, ?22)
    ON CONFLICT (tenant_id, idempotency_key) DO NOTHING";

impl WriterState {
    pub fn new(conn: Connection) -> Result<WriterState> {
        let mut state = WriterState {
            conn,
            head_seq: 0,
            head_hash: GENESIS_HASH,
            caches: Caches {
                modules: HashMap::new(),
                functions: HashMap::new(),
                closed_until: HashMap::new(),
                scratch: Vec::with_capacity(512),
            },
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

    /// Records the end of a tenant's closed periods (after a finalization).
    pub fn set_closed_until(&mut self, tenant: TenantId, end_ms: i64) {
        self.caches.closed_until.insert(tenant, Some(end_ms));
    }

    /// Appends a batch of commands' records in one transaction and answers every producer after
    /// `COMMIT` returned (or with [`Error::BatchAborted`] after a rollback).
    fn commit_batch(&mut self, batch: &mut Vec<PendingAppend>) {
        let head_before = (self.head_seq, self.head_hash);
        let mut completers = Vec::with_capacity(batch.len());
        let mut inputs = Vec::with_capacity(batch.len());
        for pending in batch.drain(..) {
            match pending {
                PendingAppend::One(record, done) => {
                    completers.push(Done::One(done));
                    inputs.push(Input::One(record));
                }
                PendingAppend::Many(records, done) => {
                    completers.push(Done::Many(ManyDone {
                        completer: done,
                        len_hint: records.len(),
                    }));
                    inputs.push(Input::Many(records));
                }
            }
        }
        let result = self.append_all(inputs);
        match result {
            Ok(results) => {
                for (done, result) in completers.into_iter().zip(results) {
                    match (done, result) {
                        (Done::One(done), Output::One(result)) => done.complete(result),
                        (Done::Many(done), Output::Many(results)) => {
                            done.completer.complete(Ok(results));
                        }
                        _ => unreachable!("one output per input, same shape"),
                    }
                }
            }
            Err(error) => {
                let _ = self.conn.execute_batch("ROLLBACK");
                self.head_seq = head_before.0;
                self.head_hash = head_before.1;
                let reason = error.to_string();
                for done in completers {
                    match done {
                        Done::One(done) => done.complete(Err(Error::BatchAborted(reason.clone()))),
                        Done::Many(done) => {
                            let count = done.len_hint;
                            done.completer.complete(Ok((0..count)
                                .map(|_| Err(Error::BatchAborted(reason.clone())))
                                .collect()));
                        }
                    }
                }
            }
        }
    }

    /// `BEGIN IMMEDIATE`, every record, the chain head, `COMMIT`. An `Err` means nothing of the
    /// batch is committed (the caller rolls back).
    fn append_all(&mut self, inputs: Vec<Input>) -> Result<Vec<Output>> {
        let head_before = self.head_seq;
        self.conn.prepare_cached("BEGIN IMMEDIATE")?.execute([])?;
        let mut outputs = Vec::with_capacity(inputs.len());
        {
            let conn = &self.conn;
            let mut insert = conn.prepare_cached(INSERT_RECORD_SQL)?;
            let mut ctx = AppendContext {
                conn,
                insert: &mut insert,
                caches: &mut self.caches,
                head_seq: &mut self.head_seq,
                head_hash: &mut self.head_hash,
            };
            for input in inputs {
                match input {
                    Input::One(record) => match ctx.append_one(record) {
                        Err(Error::Sqlite(e)) => return Err(Error::Sqlite(e)),
                        other => outputs.push(Output::One(other)),
                    },
                    Input::Many(records) => {
                        let mut results = Vec::with_capacity(records.len());
                        for record in records {
                            match ctx.append_one(record) {
                                Err(Error::Sqlite(e)) => return Err(Error::Sqlite(e)),
                                other => results.push(other),
                            }
                        }
                        outputs.push(Output::Many(results));
                    }
                }
            }
        }
        if self.head_seq != head_before {
            self.conn
                .prepare_cached("UPDATE chain_head SET seq = ?1, hash = ?2 WHERE id = 1")?
                .execute(params![self.head_seq as i64, &self.head_hash[..]])?;
        }
        self.conn.prepare_cached("COMMIT")?.execute([])?;
        Ok(outputs)
    }
}

enum Input {
    One(NewUsageRecord),
    Many(Vec<NewUsageRecord>),
}

// Boxing the single-record case would cost an allocation per append; these live for one batch.
#[allow(clippy::large_enum_variant)]
enum Output {
    One(Result<Appended>),
    Many(Vec<Result<Appended>>),
}

enum Done {
    One(Completer<Appended>),
    Many(ManyDone),
}

/// The completer of an `append_batch` and how many records it carried.
struct ManyDone {
    completer: Completer<Vec<Result<Appended>>>,
    len_hint: usize,
}

/// Borrows of the writer's state while a batch transaction is open.
struct AppendContext<'a, 'conn> {
    conn: &'conn Connection,
    insert: &'a mut CachedStatement<'conn>,
    caches: &'a mut Caches,
    head_seq: &'a mut u64,
    head_hash: &'a mut Sha256,
}

impl AppendContext<'_, '_> {
    fn closed_until(&mut self, tenant: TenantId) -> Result<Option<i64>> {
        if let Some(cached) = self.caches.closed_until.get(&tenant) {
            return Ok(*cached);
        }
        let end: Option<i64> = self.conn.query_row(
            "SELECT MAX(period_end_ms) FROM invoices WHERE tenant_id = ?1",
            [tenant.0],
            |row| row.get(0),
        )?;
        self.caches.closed_until.insert(tenant, end);
        Ok(end)
    }

    fn module_info(&mut self, module: ModuleId) -> Result<ModuleInfo> {
        if let Some(info) = self.caches.modules.get(&module) {
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
        self.caches.modules.insert(module, info.clone());
        Ok(info)
    }

    fn function_tenant(&mut self, function: FunctionId) -> Result<TenantId> {
        if let Some(tenant) = self.caches.functions.get(&function) {
            return Ok(*tenant);
        }
        let tenant: Option<i64> = self
            .conn
            .prepare_cached("SELECT tenant_id FROM functions WHERE id = ?1")?
            .query_row([function.0], |row| row.get(0))
            .optional()?;
        let tenant = TenantId(tenant.ok_or_else(|| not_found("function", function))?);
        self.caches.functions.insert(function, tenant);
        Ok(tenant)
    }

    /// Appends one record inside the open batch transaction. `Err` values that are not SQLite
    /// errors leave the transaction usable.
    fn append_one(&mut self, r: NewUsageRecord) -> Result<Appended> {
        validate(&r)?;
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
        let seq = *self.head_seq + 1;
        let prev_hash = *self.head_hash;
        let hash = chain::hash_with(
            &mut self.caches.scratch,
            &ChainFields {
                seq,
                prev_hash: &prev_hash,
                module_sha256: &module.sha256,
                cost_table: &module.cost_table,
                late,
            },
            &r,
        );
        let m = &r.meters;
        let inserted = self.insert.execute(params![
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
            *self.head_seq = seq;
            *self.head_hash = hash;
            return Ok(Appended {
                record: UsageRecord {
                    seq,
                    record: r,
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
        let fields = differing_fields(&existing.record, &r);
        if fields.is_empty() {
            Ok(Appended {
                record: existing,
                created: false,
            })
        } else {
            Err(Error::ExistsWithDifferentFields {
                key: r.idempotency_key,
                existing_seq: existing.seq,
                fields,
            })
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
    queue: Arc<Queue>,
    thread: Option<JoinHandle<()>>,
}

impl Writer {
    pub fn spawn(state: WriterState, batch_records_max: usize) -> Result<Writer> {
        assert!((1..=BATCH_RECORDS_MAX).contains(&batch_records_max));
        let queue = Arc::new(Queue {
            state: Mutex::new(QueueState {
                commands: Vec::new(),
                writer_asleep: false,
                producers_waiting: 0,
                closed: false,
            }),
            arrived: Condvar::new(),
            room: Condvar::new(),
        });
        let thread_queue = Arc::clone(&queue);
        let thread = std::thread::Builder::new()
            .name("tally-ledger-writer".into())
            .spawn(move || run(state, &thread_queue, batch_records_max))
            .map_err(|source| Error::Io {
                what: "spawning the ledger writer thread".into(),
                source,
            })?;
        Ok(Writer {
            queue,
            thread: Some(thread),
        })
    }

    /// Queues one record; the ticket resolves once it is committed.
    pub fn append_one(&self, record: NewUsageRecord) -> Ticket<Appended> {
        let (done, ticket) = slot();
        match self
            .queue
            .push(Command::Append(PendingAppend::One(record, done)))
        {
            Ok(()) => ticket,
            Err(error) => Ticket::ready(Err(error)),
        }
    }

    /// Appends records and waits until they are committed.
    pub fn append(&self, records: Vec<NewUsageRecord>) -> Result<Vec<Result<Appended>>> {
        let count = records.len();
        let (done, ticket) = slot();
        self.queue
            .push(Command::Append(PendingAppend::Many(records, done)))?;
        let results = ticket.wait()?;
        assert_eq!(results.len(), count);
        Ok(results)
    }

    /// Runs `f` on the writer thread and waits for its result.
    pub fn run<T: Send + 'static>(
        &self,
        f: impl FnOnce(&mut WriterState) -> Result<T> + Send + 'static,
    ) -> Result<T> {
        run_on(&self.queue, f)
    }

    /// A handle that can run jobs on the writer thread from another thread (the checkpointer).
    /// Jobs sent after the writer stopped fail with [`Error::WriterStopped`].
    pub fn handle(&self) -> WriterHandle {
        WriterHandle {
            queue: Arc::clone(&self.queue),
        }
    }
}

/// See [`Writer::handle`].
pub(crate) struct WriterHandle {
    queue: Arc<Queue>,
}

impl WriterHandle {
    /// Like [`Writer::run`].
    pub fn run<T: Send + 'static>(
        &self,
        f: impl FnOnce(&mut WriterState) -> Result<T> + Send + 'static,
    ) -> Result<T> {
        run_on(&self.queue, f)
    }
}

fn run_on<T: Send + 'static>(
    queue: &Queue,
    f: impl FnOnce(&mut WriterState) -> Result<T> + Send + 'static,
) -> Result<T> {
    let (done, ticket) = slot();
    queue.push(Command::Job(Box::new(move |state| {
        done.complete(f(state));
    })))?;
    ticket.wait()
}

impl Drop for Writer {
    fn drop(&mut self) {
        self.queue.close();
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

fn run(mut state: WriterState, queue: &Queue, batch_records_max: usize) {
    let mut taken = Vec::new();
    let mut batch = Vec::new();
    let mut batch_records = 0usize;
    while queue.take(&mut taken) {
        for command in taken.drain(..) {
            match command {
                Command::Append(pending) => {
                    batch_records += pending.len();
                    batch.push(pending);
                    if batch_records >= batch_records_max {
                        state.commit_batch(&mut batch);
                        batch_records = 0;
                    }
                }
                Command::Job(job) => {
                    if !batch.is_empty() {
                        state.commit_batch(&mut batch);
                        batch_records = 0;
                    }
                    job(&mut state);
                }
            }
        }
        if !batch.is_empty() {
            state.commit_batch(&mut batch);
            batch_records = 0;
        }
    }
}

//! Benchmarks of the ledger, shared by `tally-bench ledger` and `examples/throughput.rs`.
//!
//! Everything here is ordinary public API use; it exists so the numbers in `docs/ledger.md` can be
//! reproduced with one call.

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::error::Result;
use crate::{
    Durability, FunctionId, Ledger, ModuleBytes, ModuleId, NewModule, NewUsageRecord, OpenOptions,
    Outcome, OutcomeKind, Period, SqliteLedger, Tenant, TenantId, UsageMeters,
};

/// Producer threads in the throughput benchmark (the issue's target).
pub const PRODUCERS: usize = 32;
/// Worker threads of the tokio runtime running the producers of [`throughput_async`] in
/// [`run_all`] (one per core of the 2-core reference machine, like `tally serve` there).
pub const ASYNC_WORKER_THREADS: usize = 2;
/// Records in the aggregation benchmark.
pub const AGGREGATION_RECORDS: usize = 1_000_000;
/// 2026-11-01T00:00:00Z in Unix milliseconds.
pub const NOVEMBER_2026_START_MS: i64 = 1_793_491_200_000;
/// 2026-12-01T00:00:00Z in Unix milliseconds.
pub const DECEMBER_2026_START_MS: i64 = 1_796_083_200_000;

/// A small plan pricing every meter per unit, used by the benchmark and tests.
pub const SAMPLE_PLAN_JSON: &str = r#"{
  "plan": "bench",
  "currency": "USD",
  "versions": [{
    "version": 1,
    "effective_from_ms": 0,
    "flat_fees": [{ "name": "platform", "amount": "5.00" }],
    "meters": {
      "invocations": { "free_allowance": "1000", "unit": { "size": "1000000", "name": "1M invocations" }, "per_unit": { "unit_price": "0.20" } },
      "ops": { "unit": { "size": "1000000000", "name": "10^9 ops" }, "per_unit": { "unit_price": "0.05" } },
      "memory_byte_seconds": { "unit": { "size": "1073741824", "name": "GiB-second" }, "per_unit": { "unit_price": "0.0000166667" } },
      "io_out_bytes": { "unit": { "size": "1073741824", "name": "GiB" }, "per_unit": { "unit_price": "0.09" } }
    }
  }]
}"#;

/// A tenant with one module and one function, ready for appends.
#[derive(Debug, Clone)]
pub struct Fixture {
    /// The tenant.
    pub tenant: Tenant,
    /// Its module.
    pub module: ModuleId,
    /// Its function.
    pub function: FunctionId,
}

/// Creates a tenant named `name` with a module, a function `main` and a subscription to the
/// sample plan (created if missing) from the Unix epoch.
pub fn fixture(ledger: &dyn Ledger, name: &str) -> Result<Fixture> {
    let tenant = ledger.create_tenant(name, 0)?;
    let module = ledger.create_module(NewModule {
        tenant: tenant.id,
        original_sha256: crate::chain::sha256(name.as_bytes()),
        instrumented: ModuleBytes::Path(format!("modules/{name}.wasm")),
        cost_table: "default".into(),
        static_stats: serde_json::json!({ "functions": 1 }),
        created_ms: 0,
    })?;
    let function = ledger.put_function(tenant.id, "main", module.id, serde_json::json!({}), 0)?;
    let plan = match ledger.find_plan("bench")? {
        Some(plan) => plan,
        None => ledger.create_plan(SAMPLE_PLAN_JSON, 0)?.0,
    };
    ledger.subscribe(tenant.id, plan.id, 0)?;
    Ok(Fixture {
        tenant,
        module: module.id,
        function: function.id,
    })
}

/// A realistic record with varied meters and a time-ordered idempotency key
/// `{started_ms:012x}-{prefix}-{n:08x}` (26 bytes with a 3-byte prefix, like a ULID: keys generated over time append at the
/// right edge of the idempotency index).
pub fn sample_record(fixture: &Fixture, prefix: &str, n: u64, started_ms: i64) -> NewUsageRecord {
    sample_record_for(
        fixture.tenant.id,
        fixture.function,
        fixture.module,
        prefix,
        n,
        started_ms,
    )
}

/// Like [`sample_record`] with explicit ids.
pub fn sample_record_for(
    tenant: TenantId,
    function: FunctionId,
    module: ModuleId,
    prefix: &str,
    n: u64,
    started_ms: i64,
) -> NewUsageRecord {
    let wall_ns = 200_000 + (n % 977) * 1_000;
    let memory = 1_114_112 + (n % 7) * 65_536;
    NewUsageRecord {
        tenant,
        function,
        module,
        idempotency_key: format!("{started_ms:012x}-{prefix}-{n:08x}"),
        started_ms,
        finished_ms: started_ms + 1,
        outcome: Outcome {
            kind: OutcomeKind::Exit,
            exit_code: Some(0),
            trap: None,
        },
        meters: UsageMeters {
            ops: 1_000_000 + n % 10_007,
            memory_peak_bytes: memory,
            memory_ops_integral: u128::from(memory) * 1_000_000,
            memory_byte_ns: u128::from(memory) * u128::from(wall_ns),
            io_in_bytes: 128 + n % 100,
            io_out_bytes: 512 + n % 300,
            host_calls: 3,
            wall_ns,
        },
    }
}

/// Result of [`throughput`].
#[derive(Debug, Clone, Copy)]
pub struct Throughput {
    /// Records acknowledged.
    pub records: u64,
    /// Wall time.
    pub elapsed: Duration,
}

impl Throughput {
    /// Acknowledged records per second.
    pub fn per_second(&self) -> f64 {
        self.records as f64 / self.elapsed.as_secs_f64()
    }
}

/// Shape of the idempotency keys in [`throughput`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KeyOrder {
    /// `{started_ms}-{producer}-{n}`: new keys land at the right edge of the index (ULID-like).
    TimeOrdered,
    /// `{producer}-{n}`: each producer writes its own region of the index, so every record of a
    /// batch dirties a different index page (like random client keys).
    Scattered,
}

/// `producers` threads each append `per_producer` records, `per_call` at a time (one call returns
/// only once its records are committed), into a fresh ledger in `dir`.
pub fn throughput(
    dir: &Path,
    options: OpenOptions,
    producers: usize,
    per_producer: u64,
    per_call: usize,
    keys: KeyOrder,
) -> Result<Throughput> {
    assert!(per_call >= 1 && per_producer.is_multiple_of(per_call as u64));
    let ledger = Arc::new(SqliteLedger::open_with(dir, options)?);
    let fixture = fixture(ledger.as_ref(), "throughput")?;
    let start = Instant::now();
    std::thread::scope(|scope| -> Result<()> {
        let handles: Vec<_> = (0..producers)
            .map(|p| {
                let ledger = Arc::clone(&ledger);
                let fixture = fixture.clone();
                scope.spawn(move || -> Result<()> {
                    let prefix = format!("p{p:02}");
                    let record = |n: u64| {
                        let mut record =
                            sample_record(&fixture, &prefix, n, NOVEMBER_2026_START_MS + n as i64);
                        if keys == KeyOrder::Scattered {
                            record.idempotency_key = format!("{prefix}-{n:016}");
                        }
                        record
                    };
                    if per_call == 1 {
                        for n in 0..per_producer {
                            assert!(ledger.append(record(n))?.created);
                        }
                    } else {
                        for chunk in 0..per_producer / per_call as u64 {
                            let first = chunk * per_call as u64;
                            let batch = (first..first + per_call as u64).map(record).collect();
                            for result in ledger.append_batch(batch)? {
                                assert!(result?.created);
                            }
                        }
                    }
                    Ok(())
                })
            })
            .collect();
        for handle in handles {
            handle.join().expect("producer panicked")?;
        }
        Ok(())
    })?;
    let elapsed = start.elapsed();
    Ok(Throughput {
        records: producers as u64 * per_producer,
        elapsed,
    })
}

/// Like [`throughput`] with one record per call, but the producers are `producers` tokio tasks on
/// a runtime with `worker_threads` threads (as in `tally serve`, whose request handlers are the
/// real producers), each awaiting [`Ledger::append_async`] before producing its next record.
pub fn throughput_async(
    dir: &Path,
    options: OpenOptions,
    producers: usize,
    per_producer: u64,
    worker_threads: usize,
    keys: KeyOrder,
) -> Result<Throughput> {
    let ledger: Arc<dyn Ledger> = Arc::new(SqliteLedger::open_with(dir, options)?);
    let fixture = fixture(ledger.as_ref(), "throughput")?;
    let elapsed = run_producers(worker_threads, producers, |p| {
        let ledger = Arc::clone(&ledger);
        let fixture = fixture.clone();
        async move {
            let prefix = format!("p{p:02}");
            for n in 0..per_producer {
                let mut record =
                    sample_record(&fixture, &prefix, n, NOVEMBER_2026_START_MS + n as i64);
                if keys == KeyOrder::Scattered {
                    record.idempotency_key = format!("{prefix}-{n:016}");
                }
                assert!(ledger.append_async(record).await?.created);
            }
            Ok(())
        }
    })?;
    Ok(Throughput {
        records: producers as u64 * per_producer,
        elapsed,
    })
}

/// Runs `producers` tokio tasks, `producer(p)` for each `p`, on a runtime with
/// `worker_threads` threads, until all have finished; returns how long that took.
fn run_producers<F>(
    worker_threads: usize,
    producers: usize,
    producer: impl Fn(usize) -> F,
) -> Result<Duration>
where
    F: std::future::Future<Output = Result<()>> + Send + 'static,
{
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(worker_threads)
        .build()
        .map_err(|source| crate::Error::Io {
            what: "starting the benchmark's tokio runtime".into(),
            source,
        })?;
    let start = Instant::now();
    runtime.block_on(async {
        let tasks: Vec<_> = (0..producers).map(|p| tokio::spawn(producer(p))).collect();
        for task in tasks {
            task.await.expect("producer task panicked")?;
        }
        Ok::<(), crate::Error>(())
    })?;
    Ok(start.elapsed())
}

/// The ceiling the thread hand-off alone puts on single-record appends: `producers` threads each
/// do `per_producer` round trips through a channel to one thread that drains and answers in
/// batches, exactly like the writer, without touching a database. Round trips per second.
pub fn handoff_ceiling(producers: usize, per_producer: u64) -> f64 {
    use std::sync::mpsc::{SyncSender, sync_channel};
    let (sender, receiver) =
        sync_channel::<(u64, SyncSender<u64>)>(crate::WRITER_QUEUE_COMMANDS_MAX);
    let server = std::thread::spawn(move || {
        while let Ok(first) = receiver.recv() {
            let mut batch = vec![first];
            while let Ok(more) = receiver.try_recv() {
                batch.push(more);
            }
            for (value, reply) in batch {
                let _ = reply.send(value + 1);
            }
        }
    });
    let start = Instant::now();
    std::thread::scope(|scope| {
        for _ in 0..producers {
            let sender = sender.clone();
            scope.spawn(move || {
                for n in 0..per_producer {
                    let (reply, wait) = sync_channel(1);
                    sender.send((n, reply)).expect("server alive");
                    assert_eq!(wait.recv().expect("server answers"), n + 1);
                }
            });
        }
    });
    let elapsed = start.elapsed();
    drop(sender);
    server.join().expect("server thread");
    (producers as u64 * per_producer) as f64 / elapsed.as_secs_f64()
}

/// The ceiling the hand-off puts on [`throughput_async`]: `producers` tokio tasks on
/// `worker_threads` threads each do `per_producer` round trips to one thread that takes
/// everything queued, spends `work_per_record` of CPU per record (a busy loop standing in for
/// the database), then answers each task. Round trips per second. With no work it measures
/// the queue and the wake-ups alone; with work it says how cheap the writer's record must be
/// for a given rate on this machine, where the writer shares the cores with the producers.
pub fn handoff_ceiling_async(
    producers: usize,
    per_producer: u64,
    worker_threads: usize,
    work_per_record: Duration,
) -> Result<f64> {
    use std::sync::{Condvar, Mutex};
    /// Queued requests, each with its reply, and the writer's wake-up.
    type Queue = (
        Mutex<Vec<(u64, tokio::sync::oneshot::Sender<u64>)>>,
        Condvar,
    );
    let queue: Arc<Queue> = Arc::default();
    let total = producers as u64 * per_producer;
    let server_queue = Arc::clone(&queue);
    let server = std::thread::spawn(move || {
        let (inbox, ready) = &*server_queue;
        let mut answered = 0;
        while answered < total {
            let batch = {
                let mut queued = inbox.lock().expect("hand-off queue");
                while queued.is_empty() {
                    queued = ready.wait(queued).expect("hand-off queue");
                }
                std::mem::take(&mut *queued)
            };
            let started = Instant::now();
            let work = work_per_record.saturating_mul(batch.len() as u32);
            while started.elapsed() < work {
                std::hint::spin_loop();
            }
            answered += batch.len() as u64;
            for (value, reply) in batch {
                let _ = reply.send(value + 1);
            }
        }
    });
    let elapsed = run_producers(worker_threads, producers, |_| {
        let queue = Arc::clone(&queue);
        async move {
            let (inbox, ready) = &*queue;
            for n in 0..per_producer {
                let (reply, answer) = tokio::sync::oneshot::channel();
                {
                    let mut queued = inbox.lock().expect("hand-off queue");
                    if queued.is_empty() {
                        ready.notify_one();
                    }
                    queued.push((n, reply));
                }
                assert_eq!(answer.await.expect("server answers"), n + 1);
            }
            Ok(())
        }
    })?;
    server.join().expect("hand-off server thread");
    Ok(total as f64 / elapsed.as_secs_f64())
}

/// Result of [`aggregation`].
#[derive(Debug, Clone)]
pub struct Aggregation {
    /// Records in the month.
    pub records: u64,
    /// Time to load them (batched appends).
    pub load: Duration,
    /// Time to draft the monthly invoice (aggregate + price).
    pub draft: Duration,
    /// Time to verify the whole chain.
    pub verify: Duration,
    /// Database size after a checkpoint, in bytes.
    pub database_bytes: u64,
    /// The invoice total.
    pub total: String,
}

impl Aggregation {
    /// Database bytes per record.
    pub fn bytes_per_record(&self) -> f64 {
        self.database_bytes as f64 / self.records as f64
    }
}

/// Loads `records` records for one tenant in November 2026 into a fresh ledger in `dir`, then
/// times the monthly invoice draft and a full chain verification.
pub fn aggregation(dir: &Path, records: usize) -> Result<Aggregation> {
    let load_start = Instant::now();
    {
        let ledger = SqliteLedger::open(dir)?;
        let fixture = fixture(&ledger, "aggregate")?;
        let month_ms = DECEMBER_2026_START_MS - NOVEMBER_2026_START_MS;
        let mut n = 0u64;
        while (n as usize) < records {
            let batch_len = (records - n as usize).min(crate::BATCH_RECORDS_MAX);
            let batch: Vec<NewUsageRecord> = (0..batch_len as u64)
                .map(|i| {
                    let k = n + i;
                    // Spread over the month, in order.
                    let at = NOVEMBER_2026_START_MS + (k as i64 * month_ms) / records as i64;
                    sample_record(&fixture, "agg", k, at)
                })
                .collect();
            for result in ledger.append_batch(batch)? {
                result?;
            }
            n += batch_len as u64;
        }
    }
    let load = load_start.elapsed();
    // Reopen: a cold-ish start, as the CLI would see it (the OS cache stays warm).
    let ledger = SqliteLedger::open(dir)?;
    let tenant = ledger.find_tenant("aggregate")?.expect("tenant exists");
    let start = Instant::now();
    let invoice = ledger.draft_invoice(
        tenant.id,
        Period::new(NOVEMBER_2026_START_MS, DECEMBER_2026_START_MS)?,
    )?;
    let draft = start.elapsed();
    assert_eq!(invoice.records, records as u64);
    let start = Instant::now();
    let verdict = ledger.verify()?;
    let verify = start.elapsed();
    assert!(
        matches!(verdict, crate::ChainVerdict::Intact { .. }),
        "{verdict:?}"
    );
    drop(ledger);
    let database_bytes = database_bytes(dir)?;
    Ok(Aggregation {
        records: records as u64,
        load,
        draft,
        verify,
        database_bytes,
        total: crate::format_amount(invoice.total, invoice.currency),
    })
}

/// Size of the database file after a full checkpoint (the WAL is folded in and truncated).
pub fn database_bytes(dir: &Path) -> Result<u64> {
    let conn = rusqlite::Connection::open(dir.join(crate::DATABASE_FILE))?;
    conn.query_row("PRAGMA wal_checkpoint(TRUNCATE)", [], |_| Ok(()))?;
    drop(conn);
    let meta =
        std::fs::metadata(dir.join(crate::DATABASE_FILE)).map_err(|source| crate::Error::Io {
            what: "reading the database size".into(),
            source,
        })?;
    Ok(meta.len())
}

/// Runs every ledger benchmark in fresh directories under `dir` and prints the figures.
pub fn run_all(dir: &Path, quick: bool) -> Result<()> {
    let scale: u64 = if quick { 1 } else { 10 };
    let cores = std::thread::available_parallelism().map_or(0, |n| n.get());
    println!("ledger benchmark ({cores} cores available)");
    let runs: [(&str, Durability, bool, u64, usize, KeyOrder); 7] = [
        (
            "NORMAL, group commit, 1 record per append",
            Durability::Process,
            false,
            2_000 * scale,
            1,
            KeyOrder::TimeOrdered,
        ),
        (
            "NORMAL, group commit, 1 record per append, scattered keys",
            Durability::Process,
            false,
            2_000 * scale,
            1,
            KeyOrder::Scattered,
        ),
        (
            "NORMAL, one transaction per record",
            Durability::Process,
            true,
            100 * scale,
            1,
            KeyOrder::TimeOrdered,
        ),
        (
            "NORMAL, group commit, 64 records per append_batch",
            Durability::Process,
            false,
            6_400 * scale,
            64,
            KeyOrder::TimeOrdered,
        ),
        (
            "FULL, group commit, 1 record per append",
            Durability::PowerLoss,
            false,
            200 * scale,
            1,
            KeyOrder::TimeOrdered,
        ),
        (
            "FULL, one transaction per record",
            Durability::PowerLoss,
            true,
            10 * scale,
            1,
            KeyOrder::TimeOrdered,
        ),
        (
            "FULL, group commit, 64 records per append_batch",
            Durability::PowerLoss,
            false,
            640 * scale,
            64,
            KeyOrder::TimeOrdered,
        ),
    ];
    let async_runs: [(&str, Durability, bool, KeyOrder); 4] = [
        (
            "NORMAL, group commit, 1 record per append_async",
            Durability::Process,
            false,
            KeyOrder::TimeOrdered,
        ),
        (
            "NORMAL, group commit, 1 record per append_async, scattered keys",
            Durability::Process,
            false,
            KeyOrder::Scattered,
        ),
        (
            "NORMAL, one transaction per record, append_async",
            Durability::Process,
            true,
            KeyOrder::TimeOrdered,
        ),
        (
            "FULL, group commit, 1 record per append_async",
            Durability::PowerLoss,
            false,
            KeyOrder::TimeOrdered,
        ),
    ];
    for (index, (label, durability, transaction_per_record, keys)) in
        async_runs.into_iter().enumerate()
    {
        let per_producer = if transaction_per_record { 100 } else { 2_000 } * scale;
        let result = throughput_async(
            &dir.join(format!("throughput-async-{index}")),
            OpenOptions {
                durability,
                transaction_per_record,
            },
            PRODUCERS,
            per_producer,
            ASYNC_WORKER_THREADS,
            keys,
        )?;
        println!(
            "synchronous={label}, {PRODUCERS} tokio tasks on {ASYNC_WORKER_THREADS} threads: {:>9.0} acknowledged records/s ({} records in {:.2?})",
            result.per_second(),
            result.records,
            result.elapsed
        );
    }
    for (index, (label, durability, transaction_per_record, per_producer, per_call, keys)) in
        runs.into_iter().enumerate()
    {
        let result = throughput(
            &dir.join(format!("throughput-{index}")),
            OpenOptions {
                durability,
                transaction_per_record,
            },
            PRODUCERS,
            per_producer,
            per_call,
            keys,
        )?;
        println!(
            "synchronous={label}, {PRODUCERS} producer threads: {:>9.0} acknowledged records/s ({} records in {:.2?})",
            result.per_second(),
            result.records,
            result.elapsed
        );
    }
    println!(
        "thread hand-off alone (no database), {PRODUCERS} producers: {:>9.0} round trips/s",
        handoff_ceiling(PRODUCERS, 2_000 * scale)
    );
    for micros in [0, 2, 3, 4] {
        let per_second = handoff_ceiling_async(
            PRODUCERS,
            2_000 * scale,
            ASYNC_WORKER_THREADS,
            Duration::from_micros(micros),
        )?;
        println!(
            "async hand-off (no database), {PRODUCERS} tokio tasks on {ASYNC_WORKER_THREADS} threads, writer busy {micros} µs per record: {per_second:>9.0} round trips/s"
        );
    }
    let records = if quick { 100_000 } else { AGGREGATION_RECORDS };
    let aggregation = aggregation(&dir.join("aggregate"), records)?;
    println!(
        "monthly invoice over {} records of one tenant: draft (aggregate + price) {:.3?}, chain verify {:.3?}, load {:.2?}",
        aggregation.records, aggregation.draft, aggregation.verify, aggregation.load
    );
    println!(
        "database: {} bytes, {:.1} bytes per record; invoice total {} USD",
        aggregation.database_bytes,
        aggregation.bytes_per_record(),
        aggregation.total
    );
    Ok(())
}

//! One invocation of a WASI preview 1 command, with limits and a usage report.

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};
use tally_instrument::{Instrumented, MeterMap, OPS_MAX, START_EXPORT};
use wasmtime::{
    CallHook, Config, Engine, InstanceAllocationStrategy, InstancePre, Linker, Module,
    ResourceLimiter, Store, Trap, UpdateDeadline, Val,
};
use wasmtime_wasi::cli::{IsTerminal, StdoutStream};
use wasmtime_wasi::p1::WasiP1Ctx;
use wasmtime_wasi::p2::pipe::MemoryInputPipe;
use wasmtime_wasi::p2::{OutputStream, Pollable, StreamError};
use wasmtime_wasi::{I32Exit, WasiCtxBuilder};

use crate::Error;
use crate::meter::{exact_ops, set_budget};

/// Largest linear memory an invocation may use, in bytes.
pub const MEMORY_BYTES_MAX: u64 = 4 * 1024 * 1024 * 1024;
/// Largest output (stdout plus stderr) an invocation may produce, in bytes.
pub const OUTPUT_BYTES_MAX: usize = 64 * 1024 * 1024;
/// Largest wasm stack, in bytes.
pub const WASM_STACK_BYTES_MAX: usize = 1024 * 1024;
/// How often the epoch ticker advances, which is the granularity of wall-clock deadlines.
pub const EPOCH_TICK_MS: u64 = 1;
/// Default bytes of each pooled linear memory kept resident between invocations: the pages a
/// guest dirtied (found with the kernel's `PAGEMAP_SCAN` where available) are reset with
/// `memset`/`memcpy` instead of `madvise`, which would cost a TLB shootdown on every core.
pub const POOLING_KEEP_RESIDENT_BYTES_DEFAULT: usize = 2 * 1024 * 1024;
/// Largest permit a guest's stdout or stderr offers per write, in bytes.
const OUTPUT_WRITE_PERMIT_BYTES: usize = 64 * 1024;

/// How wall-clock deadlines ([`Invocation::deadline`]) are enforced.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum DeadlineChecks {
    /// wasmtime's epoch interruption: compiled code checks the deadline at every loop header
    /// and function entry, so a deadline stops any guest within about [`EPOCH_TICK_MS`]. A
    /// passed deadline does not interrupt the guest where it is (inside a loop that keeps its
    /// count in a register the global lags the count): it lowers `__tally_budget` to 0, and the
    /// module's next budget check (a loop header or function entry, moments later) stops the
    /// run with the exact count, reported as [`Outcome::Deadline`]. The
    /// checks cost run time on top of metering (docs/benchmarks.md: 1.31× geometric mean over
    /// the suite with metering, against 1.10× for metering alone; up to 3.2× on a float loop,
    /// where the check's out-of-line call makes Cranelift spill).
    #[default]
    Epoch,
    /// Only at the guest's calls into the host (WASI), before and after each: compiled code
    /// carries no checks beyond tally's own budget checks. Guest code that never calls the host
    /// is stopped only by its op budget, which bounds its work but not its time (an op that
    /// misses the cache takes longer than the cost table assumes): for code the operator
    /// trusts, or budgets small enough to be a time bound too.
    HostCalls,
}

/// Engine-wide settings.
#[derive(Clone, Debug)]
pub struct RuntimeConfig {
    /// How wall-clock deadlines are enforced.
    pub deadline_checks: DeadlineChecks,
    /// Use the pooling instance allocator with this many instance slots (0: on-demand).
    pub pooling_instances: u32,
    /// Memory reserved per pooled instance, in bytes.
    pub pooling_memory_bytes: u64,
    /// Bytes of each pooled linear memory (and table) kept resident between invocations.
    pub pooling_keep_resident_bytes: usize,
    /// Where precompiled modules are cached, so a restart does not compile again.
    pub cache_dir: Option<PathBuf>,
}

impl Default for RuntimeConfig {
    fn default() -> Self {
        RuntimeConfig {
            deadline_checks: DeadlineChecks::Epoch,
            pooling_instances: 0,
            pooling_memory_bytes: MEMORY_BYTES_MAX,
            pooling_keep_resident_bytes: POOLING_KEEP_RESIDENT_BYTES_DEFAULT,
            cache_dir: None,
        }
    }
}

/// A wasmtime engine configured for metered execution, with an epoch ticker for deadlines
/// (unless they are checked at host calls only).
#[derive(Clone)]
pub struct Runtime {
    engine: Engine,
    cache_dir: Option<PathBuf>,
    deadline_checks: DeadlineChecks,
    _ticker: Option<Arc<Ticker>>,
}

struct Ticker {
    stop: Arc<std::sync::atomic::AtomicBool>,
}

impl Drop for Ticker {
    fn drop(&mut self) {
        self.stop.store(true, std::sync::atomic::Ordering::Relaxed);
    }
}

/// Starts the thread that advances `engine`'s epoch every [`EPOCH_TICK_MS`], until the
/// returned ticker is dropped or the engine is gone.
fn start_ticker(engine: &Engine) -> Result<Ticker, Error> {
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let weak = engine.weak();
    let stopped = stop.clone();
    std::thread::Builder::new()
        .name("tally-epoch".into())
        .spawn(move || {
            while !stopped.load(std::sync::atomic::Ordering::Relaxed) {
                std::thread::sleep(Duration::from_millis(EPOCH_TICK_MS));
                match weak.upgrade() {
                    Some(engine) => engine.increment_epoch(),
                    None => break,
                }
            }
        })
        .map_err(|e| Error::Engine(e.into()))?;
    Ok(Ticker { stop })
}

/// A compiled, linked function ready to be instantiated many times.
#[derive(Clone)]
pub struct Prepared {
    pre: InstancePre<Host>,
    meter_map: Arc<MeterMap>,
}

impl Prepared {
    /// The compiled module.
    pub fn module(&self) -> &Module {
        self.pre.module()
    }
}

/// One invocation's inputs and limits.
#[derive(Clone, Debug)]
pub struct Invocation {
    /// `argv`, including the program name.
    pub args: Vec<String>,
    /// Environment variables.
    pub env: Vec<(String, String)>,
    /// The bytes the guest reads from stdin.
    pub stdin: Vec<u8>,
    /// Stop when the count exceeds this many cost units.
    pub max_ops: u64,
    /// Linear memory cap in bytes.
    pub max_memory_bytes: u64,
    /// Cap on stdout plus stderr together, in bytes. A write beyond it ends the invocation
    /// with [`Outcome::OutputLimit`].
    pub max_output_bytes: usize,
    /// Wall-clock limit.
    pub deadline: Option<Duration>,
}

impl Invocation {
    /// An invocation with these arguments and the largest limits.
    pub fn new(args: Vec<String>) -> Invocation {
        Invocation {
            args,
            env: Vec::new(),
            stdin: Vec::new(),
            max_ops: OPS_MAX,
            max_memory_bytes: MEMORY_BYTES_MAX,
            max_output_bytes: OUTPUT_BYTES_MAX,
            deadline: None,
        }
    }
}

/// How an invocation ended.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Outcome {
    /// `_start` returned (exit code 0) or the guest called `proc_exit`.
    Exit {
        /// The exit code.
        code: i32,
    },
    /// The guest trapped.
    Trap {
        /// wasmtime's trap code (e.g. `MemoryOutOfBounds`), or the host error.
        trap: String,
    },
    /// The op budget stopped the run.
    BudgetExhausted,
    /// A memory grow beyond the cap was refused and the guest then failed.
    MemoryLimit,
    /// The wall-clock deadline passed.
    Deadline,
    /// The guest wrote more than the output cap: the write that crossed it stopped the run (the
    /// output is kept up to the cap).
    OutputLimit,
}

impl Outcome {
    /// The process exit code `tally run` uses for this outcome.
    pub fn exit_code(&self) -> i32 {
        match self {
            Outcome::Exit { code } => *code,
            Outcome::Trap { .. } => 134,
            Outcome::BudgetExhausted => 137,
            Outcome::MemoryLimit => 138,
            Outcome::Deadline => 142,
            Outcome::OutputLimit => 141,
        }
    }
}

/// What one invocation used.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct UsageReport {
    /// Cost units executed, exact in every outcome.
    pub ops: u64,
    /// The largest linear memory size reached, in bytes.
    pub memory_peak_bytes: u64,
    /// Memory held × ops executed, in byte-ops: deterministic (same module and input, same
    /// value), computed by the module itself at every `memory.grow`.
    pub memory_ops_integral: u128,
    /// Memory held × wall-clock time, in byte-nanoseconds.
    pub memory_byte_ns: u128,
    /// Bytes given to the guest on stdin.
    pub io_in_bytes: u64,
    /// Bytes the guest wrote to stdout and stderr.
    pub io_out_bytes: u64,
    /// Calls from the guest into the host (WASI).
    pub host_calls: u64,
    /// Wall-clock time from instantiation to the end of the run, in nanoseconds.
    pub wall_ns: u64,
    /// How the run ended.
    pub outcome: Outcome,
}

/// An invocation's output.
#[derive(Clone, Debug)]
pub struct RunOutput {
    /// What the guest wrote to stdout.
    pub stdout: Vec<u8>,
    /// What the guest wrote to stderr.
    pub stderr: Vec<u8>,
    /// The usage report.
    pub usage: UsageReport,
}

/// Per-store state.
struct Host {
    wasi: WasiP1Ctx,
    limiter: Limiter,
    host_calls: u64,
    /// The deadline checked at host calls ([`DeadlineChecks::HostCalls`]).
    host_call_deadline: Option<Instant>,
    /// The instance's `__tally_budget`, once it is set for the invocation.
    budget: Option<wasmtime::Global>,
    /// The epoch deadline passed and lowered the budget to stop the guest.
    deadline_passed: bool,
}

/// The host error that ends an invocation whose deadline passed at a host call.
#[derive(Debug, thiserror::Error)]
#[error("wall-clock deadline passed")]
struct DeadlineExceeded;

struct Limiter {
    max_memory_bytes: u64,
    memory_bytes: u64,
    memory_peak_bytes: u64,
    memory_refused: bool,
    /// Byte-nanoseconds accumulated up to `since`.
    byte_ns: u128,
    since: Instant,
}

impl Limiter {
    fn new(max_memory_bytes: u64) -> Limiter {
        Limiter {
            max_memory_bytes,
            memory_bytes: 0,
            memory_peak_bytes: 0,
            memory_refused: false,
            byte_ns: 0,
            since: Instant::now(),
        }
    }

    /// Closes the wall-clock memory interval that ends now.
    fn tick(&mut self) {
        let now = Instant::now();
        self.byte_ns += u128::from(self.memory_bytes) * now.duration_since(self.since).as_nanos();
        self.since = now;
    }
}

impl ResourceLimiter for Limiter {
    fn memory_growing(
        &mut self,
        current: usize,
        desired: usize,
        _maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        let grown = self.memory_bytes - current as u64 + desired as u64;
        if grown > self.max_memory_bytes {
            self.memory_refused = true;
            return Ok(false);
        }
        self.tick();
        self.memory_bytes = grown;
        self.memory_peak_bytes = self.memory_peak_bytes.max(grown);
        Ok(true)
    }

    fn table_growing(
        &mut self,
        _current: usize,
        desired: usize,
        _maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        Ok(desired <= 1_000_000)
    }
}

impl Runtime {
    /// Creates an engine and (for [`DeadlineChecks::Epoch`]) starts its epoch ticker.
    pub fn new(config: &RuntimeConfig) -> Result<Runtime, Error> {
        let epochs = config.deadline_checks == DeadlineChecks::Epoch;
        let mut wasmtime_config = Config::new();
        wasmtime_config
            .epoch_interruption(epochs)
            .max_wasm_stack(WASM_STACK_BYTES_MAX);
        if config.pooling_instances > 0 {
            let mut pooling = wasmtime::PoolingAllocationConfig::default();
            pooling
                .total_memories(config.pooling_instances)
                .total_tables(config.pooling_instances)
                .total_core_instances(config.pooling_instances)
                .max_memory_size(config.pooling_memory_bytes as usize)
                .linear_memory_keep_resident(config.pooling_keep_resident_bytes)
                .table_keep_resident(config.pooling_keep_resident_bytes)
                .pagemap_scan(wasmtime::Enabled::Auto);
            wasmtime_config.allocation_strategy(InstanceAllocationStrategy::Pooling(pooling));
        }
        let engine = Engine::new(&wasmtime_config).map_err(Error::Engine)?;
        let ticker = if epochs {
            Some(Arc::new(start_ticker(&engine)?))
        } else {
            None
        };
        if let Some(dir) = &config.cache_dir {
            std::fs::create_dir_all(dir).map_err(|e| Error::Engine(e.into()))?;
        }
        Ok(Runtime {
            engine,
            cache_dir: config.cache_dir.clone(),
            deadline_checks: config.deadline_checks,
            _ticker: ticker,
        })
    }

    /// The wasmtime engine.
    pub fn engine(&self) -> &Engine {
        &self.engine
    }

    /// Compiles an instrumented module and links WASI preview 1.
    pub fn prepare(&self, instrumented: &Instrumented) -> Result<Prepared, Error> {
        let module = Module::new(&self.engine, &instrumented.wasm).map_err(Error::Compile)?;
        self.prepare_module(module, instrumented.meter_map.clone())
    }

    /// Like [`Runtime::prepare`], but reuses the precompiled artifact cached under `key` (e.g. the
    /// module's content hash plus the cost table id) in the cache directory, and writes it there
    /// after compiling. A cached artifact from another wasmtime build or configuration is
    /// rejected by wasmtime and recompiled.
    pub fn prepare_cached(
        &self,
        key: &str,
        instrumented: &Instrumented,
    ) -> Result<Prepared, Error> {
        let Some(dir) = &self.cache_dir else {
            return self.prepare(instrumented);
        };
        if key.is_empty()
            || !key
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"-_.@".contains(&b))
        {
            return Err(Error::Limit(format!(
                "cache key `{key}` must be non-empty and use only [A-Za-z0-9-_.@]"
            )));
        }
        let path = dir.join(format!("{key}.cwasm"));
        if let Ok(bytes) = std::fs::read(&path)
            && let Ok(module) = self.deserialize(&bytes)
        {
            return self.prepare_module(module, instrumented.meter_map.clone());
        }
        let artifact = self
            .engine
            .precompile_module(&instrumented.wasm)
            .map_err(Error::Compile)?;
        let tmp = dir.join(format!("{key}.cwasm.tmp{}", std::process::id()));
        if std::fs::write(&tmp, &artifact)
            .and_then(|()| std::fs::rename(&tmp, &path))
            .is_err()
        {
            let _ = std::fs::remove_file(&tmp);
        }
        let module = self.deserialize(&artifact).map_err(Error::Compile)?;
        self.prepare_module(module, instrumented.meter_map.clone())
    }

    /// Loads a precompiled artifact.
    #[allow(unsafe_code)]
    fn deserialize(&self, artifact: &[u8]) -> wasmtime::Result<Module> {
        // SAFETY: artifacts are produced by `Engine::precompile_module` of this runtime and
        // written only into tally's own cache directory (atomically, via rename); wasmtime
        // checks the engine configuration and version embedded in the artifact and refuses a
        // mismatch, which falls back to compiling.
        unsafe { Module::deserialize(&self.engine, artifact) }
    }

    /// Links an already compiled instrumented module.
    pub fn prepare_module(&self, module: Module, meter_map: MeterMap) -> Result<Prepared, Error> {
        for name in [
            tally_instrument::OPS_GLOBAL,
            tally_instrument::BUDGET_GLOBAL,
            tally_instrument::EXHAUSTED_GLOBAL,
        ] {
            if module.get_export(name).is_none() {
                return Err(Error::NotACommand(format!(
                    "no `{name}` export: instrument it first"
                )));
            }
        }
        if module.get_export("_start").is_none() {
            return Err(Error::NotACommand("no `_start` export".into()));
        }
        let mut linker: Linker<Host> = Linker::new(&self.engine);
        wasmtime_wasi::p1::add_to_linker_sync(&mut linker, |host: &mut Host| &mut host.wasi)
            .map_err(Error::Link)?;
        let pre = linker.instantiate_pre(&module).map_err(Error::Link)?;
        // Build the copy-on-write memory image now rather than on the first invocation.
        module
            .initialize_copy_on_write_image()
            .map_err(Error::Compile)?;
        Ok(Prepared {
            pre,
            meter_map: Arc::new(meter_map),
        })
    }

    /// Instantiates a function once without running `_start` and throws the instance away, so
    /// that the first invocation finds the code, the memory image and a pooled slot warm (e.g.
    /// right after a restart). A start function left in the module (not moved out by
    /// `Options::defer_start`, as `tally serve` does) runs and is thrown away with the instance:
    /// with [`DeadlineChecks::Epoch`] it is stopped after one epoch tick; with
    /// [`DeadlineChecks::HostCalls`] at its first call into the host, or else by the module's
    /// initial budget (`Options::initial_budget`).
    pub fn warm(&self, prepared: &Prepared) {
        let host = Host {
            wasi: WasiCtxBuilder::new().build_p1(),
            limiter: Limiter::new(MEMORY_BYTES_MAX),
            host_calls: 0,
            // A start function that calls the host stops at its first call.
            host_call_deadline: Some(Instant::now()),
            budget: None,
            deadline_passed: false,
        };
        let mut store = self.store(host);
        store.set_epoch_deadline(1);
        let _ = prepared.pre.instantiate(&mut store);
    }

    /// A store with the memory limiter and the host-call hook: it counts host calls and,
    /// before and after each, stops the run once `host.host_call_deadline` has passed (the
    /// count is exact at a call, so a run stopped there is billed exactly).
    fn store(&self, host: Host) -> Store<Host> {
        let mut store = Store::new(&self.engine, host);
        store.limiter(|host| &mut host.limiter);
        store.call_hook(|mut ctx, hook| {
            let host = ctx.data_mut();
            if matches!(hook, CallHook::CallingHost) {
                host.host_calls += 1;
            }
            if matches!(hook, CallHook::CallingHost | CallHook::ReturningFromHost)
                && host
                    .host_call_deadline
                    .is_some_and(|deadline| Instant::now() >= deadline)
            {
                return Err(DeadlineExceeded.into());
            }
            Ok(())
        });
        // At an epoch deadline compiled code may be anywhere, also inside a loop that keeps
        // its count in a register (the global lags it there), so an interrupt could not be
        // billed exactly. The deadline lowers the budget to 0 instead and lets the guest run
        // on to its next budget check (every loop header that closes a cycle, every function
        // entry that can start one), where the module stops it with the exact count. Until the
        // budget is set (a start function run by instantiation) it interrupts.
        store.epoch_deadline_callback(|mut ctx| {
            let Some(budget) = ctx.data().budget else {
                return Ok(UpdateDeadline::Interrupt);
            };
            ctx.data_mut().deadline_passed = true;
            budget.set(&mut ctx, Val::I64(0))?;
            Ok(UpdateDeadline::Continue(1))
        });
        store
    }

    /// Runs `_start` once in a fresh store.
    pub fn run(&self, prepared: &Prepared, invocation: Invocation) -> Result<RunOutput, Error> {
        if invocation.max_ops > OPS_MAX {
            return Err(Error::Limit(format!(
                "max_ops {} is above the limit of {OPS_MAX}",
                invocation.max_ops
            )));
        }
        if invocation.max_memory_bytes > MEMORY_BYTES_MAX {
            return Err(Error::Limit(format!(
                "max_memory_bytes {} is above the limit of {MEMORY_BYTES_MAX}",
                invocation.max_memory_bytes
            )));
        }
        let output = Arc::new(OutputBudget {
            cap_bytes: invocation.max_output_bytes.min(OUTPUT_BYTES_MAX),
            written_bytes: AtomicUsize::new(0),
            exceeded: AtomicBool::new(false),
        });
        let stdout = CappedOutput::new(&output);
        let stderr = CappedOutput::new(&output);
        let io_in_bytes = invocation.stdin.len() as u64;
        let wasi = WasiCtxBuilder::new()
            .args(&invocation.args)
            .envs(&invocation.env)
            .stdin(MemoryInputPipe::new(invocation.stdin))
            .stdout(stdout.clone())
            .stderr(stderr.clone())
            .build_p1();
        let host = Host {
            wasi,
            limiter: Limiter::new(invocation.max_memory_bytes),
            host_calls: 0,
            // Set when the run starts, below.
            host_call_deadline: None,
            budget: None,
            deadline_passed: false,
        };
        let mut store = self.store(host);
        let ticks = invocation.deadline.map_or(u64::MAX / 2, |d| {
            (d.as_millis() as u64 / EPOCH_TICK_MS).max(1) + 1
        });
        store.set_epoch_deadline(ticks);

        let started = Instant::now();
        if self.deadline_checks == DeadlineChecks::HostCalls {
            // From the same instant as `wall_ns`; none where the clock cannot represent it.
            store.data_mut().host_call_deadline =
                invocation.deadline.and_then(|d| started.checked_add(d));
        }
        let (result, instance) = match prepared.pre.instantiate(&mut store) {
            Ok(instance) => {
                let result =
                    set_budget(&mut store, &instance, invocation.max_ops).and_then(|budget| {
                        store.data_mut().budget = Some(budget);
                        // A start function deferred by the instrumenter runs first, metered and
                        // billed like the rest of the invocation.
                        if let Some(init) = instance.get_func(&mut store, START_EXPORT) {
                            init.typed::<(), ()>(&store)?.call(&mut store, ())?;
                        }
                        let start = instance.get_typed_func::<(), ()>(&mut store, "_start")?;
                        start.call(&mut store, ())
                    });
                (result, Some(instance))
            }
            Err(error) => (Err(error), None),
        };
        let wall_ns = started.elapsed().as_nanos() as u64;

        let reading = match &instance {
            Some(instance) => exact_ops(
                &mut store,
                instance,
                &prepared.meter_map,
                result.as_ref().err(),
            )
            .map_err(|e| Error::NotACommand(format!("{e:#}")))?,
            None => crate::MeterReading {
                ops: 0,
                budget_exhausted: false,
            },
        };
        let memory_ops_integral = match &instance {
            Some(instance) => crate::meter::memory_ops_integral(&mut store, instance, reading.ops)
                .map_err(|e| Error::NotACommand(format!("{e:#}")))?,
            None => 0,
        };
        store.data_mut().limiter.tick();
        let host = store.data();
        let outcome = match result {
            Ok(()) => Outcome::Exit { code: 0 },
            Err(_) if reading.budget_exhausted && host.deadline_passed => Outcome::Deadline,
            Err(_) if reading.budget_exhausted => Outcome::BudgetExhausted,
            Err(error) => classify(
                &error,
                host.limiter.memory_refused,
                output.exceeded.load(Ordering::Relaxed),
            ),
        };
        let host_calls = host.host_calls;
        let (memory_peak_bytes, memory_byte_ns) =
            (host.limiter.memory_peak_bytes, host.limiter.byte_ns);
        // The store holds the WASI context and with it the other handles on the buffers.
        drop(store);
        let out = stdout.into_bytes();
        let err = stderr.into_bytes();
        let usage = UsageReport {
            ops: reading.ops,
            memory_peak_bytes,
            memory_ops_integral,
            memory_byte_ns,
            io_in_bytes,
            io_out_bytes: (out.len() + err.len()) as u64,
            host_calls,
            wall_ns,
            outcome,
        };
        Ok(RunOutput {
            stdout: out,
            stderr: err,
            usage,
        })
    }
}

fn classify(error: &wasmtime::Error, memory_refused: bool, output_exceeded: bool) -> Outcome {
    if let Some(exit) = error.downcast_ref::<I32Exit>() {
        return Outcome::Exit { code: exit.0 };
    }
    if error.downcast_ref::<OutputLimitExceeded>().is_some() {
        return Outcome::OutputLimit;
    }
    if error.downcast_ref::<DeadlineExceeded>().is_some() {
        return Outcome::Deadline;
    }
    match error.downcast_ref::<Trap>() {
        Some(Trap::Interrupt) => Outcome::Deadline,
        Some(_) if memory_refused => Outcome::MemoryLimit,
        Some(trap) => Outcome::Trap {
            trap: format!("{trap:?}"),
        },
        None if output_exceeded => Outcome::OutputLimit,
        None => Outcome::Trap {
            trap: format!("{error:#}"),
        },
    }
}

/// The output cap shared by an invocation's stdout and stderr.
struct OutputBudget {
    cap_bytes: usize,
    written_bytes: AtomicUsize,
    exceeded: AtomicBool,
}

/// The host error that ends an invocation whose output went over its cap.
#[derive(Debug, thiserror::Error)]
#[error("output limit of {cap_bytes} bytes exceeded")]
struct OutputLimitExceeded {
    cap_bytes: usize,
}

/// A guest's stdout or stderr: kept in memory up to the shared cap. The write that would cross
/// the cap keeps what fits and traps, so a guest that ignores write errors cannot keep running
/// (and burning its budget) after its output was cut.
#[derive(Clone)]
struct CappedOutput {
    buffer: Arc<Mutex<Vec<u8>>>,
    budget: Arc<OutputBudget>,
}

impl CappedOutput {
    fn new(budget: &Arc<OutputBudget>) -> CappedOutput {
        CappedOutput {
            buffer: Arc::new(Mutex::new(Vec::new())),
            budget: budget.clone(),
        }
    }

    /// Appends what fits under the cap; `false` if some bytes did not fit.
    fn append(&self, bytes: &[u8]) -> bool {
        let budget = &self.budget;
        let mut buffer = self.buffer.lock().unwrap_or_else(|e| e.into_inner());
        let written = budget.written_bytes.load(Ordering::Relaxed);
        let fits = bytes.len().min(budget.cap_bytes.saturating_sub(written));
        buffer.extend_from_slice(&bytes[..fits]);
        budget.written_bytes.fetch_add(fits, Ordering::Relaxed);
        if fits < bytes.len() {
            budget.exceeded.store(true, Ordering::Relaxed);
            return false;
        }
        true
    }

    fn into_bytes(self) -> Vec<u8> {
        match Arc::try_unwrap(self.buffer) {
            Ok(mutex) => mutex.into_inner().unwrap_or_else(|e| e.into_inner()),
            Err(shared) => shared.lock().unwrap_or_else(|e| e.into_inner()).clone(),
        }
    }

    fn exceeded(&self) -> StreamError {
        StreamError::Trap(
            OutputLimitExceeded {
                cap_bytes: self.budget.cap_bytes,
            }
            .into(),
        )
    }
}

impl IsTerminal for CappedOutput {
    fn is_terminal(&self) -> bool {
        false
    }
}

impl StdoutStream for CappedOutput {
    fn p2_stream(&self) -> Box<dyn OutputStream> {
        Box::new(self.clone())
    }

    fn async_stream(&self) -> Box<dyn tokio::io::AsyncWrite + Send + Sync> {
        Box::new(self.clone())
    }
}

#[wasmtime_wasi::async_trait]
impl Pollable for CappedOutput {
    async fn ready(&mut self) {}
}

impl OutputStream for CappedOutput {
    fn write(&mut self, bytes: bytes::Bytes) -> Result<(), StreamError> {
        if self.append(&bytes) {
            Ok(())
        } else {
            Err(self.exceeded())
        }
    }

    fn flush(&mut self) -> Result<(), StreamError> {
        Ok(())
    }

    fn check_write(&mut self) -> Result<usize, StreamError> {
        if self.budget.exceeded.load(Ordering::Relaxed) {
            return Err(self.exceeded());
        }
        // Offer more than what is left, so that the write which crosses the cap happens (and
        // traps) instead of the guest seeing a closed stream it might ignore.
        Ok(OUTPUT_WRITE_PERMIT_BYTES)
    }
}

impl tokio::io::AsyncWrite for CappedOutput {
    fn poll_write(
        self: std::pin::Pin<&mut Self>,
        _cx: &mut std::task::Context<'_>,
        buf: &[u8],
    ) -> std::task::Poll<std::io::Result<usize>> {
        std::task::Poll::Ready(if self.append(buf) {
            Ok(buf.len())
        } else {
            Err(std::io::Error::other(OutputLimitExceeded {
                cap_bytes: self.budget.cap_bytes,
            }))
        })
    }

    fn poll_flush(
        self: std::pin::Pin<&mut Self>,
        _cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::task::Poll::Ready(Ok(()))
    }

    fn poll_shutdown(
        self: std::pin::Pin<&mut Self>,
        _cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::task::Poll::Ready(Ok(()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tally_instrument::{CostTable, Options, instrument};

    /// A WASI command that writes "0123456789" to `fd` `times` times (forever if 0), ignoring
    /// every error.
    fn writer(fd: i32, times: u32) -> Prepared {
        let wat = format!(
            r#"(module
                 (import "wasi_snapshot_preview1" "fd_write"
                   (func $fd_write (param i32 i32 i32 i32) (result i32)))
                 (memory (export "memory") 1)
                 (data (i32.const 16) "0123456789")
                 (func (export "_start") (local $n i32)
                   (i32.store (i32.const 0) (i32.const 16))
                   (i32.store (i32.const 4) (i32.const 10))
                   (loop $l
                     (drop (call $fd_write (i32.const {fd}) (i32.const 0) (i32.const 1) (i32.const 8)))
                     (local.set $n (i32.add (local.get $n) (i32.const 1)))
                     (br_if $l (i32.or (i32.eqz (i32.const {times}))
                                       (i32.lt_u (local.get $n) (i32.const {times})))))))"#
        );
        let wasm = wat::parse_str(wat).unwrap();
        let costs = CostTable::preset("default").unwrap();
        let instrumented = instrument(&wasm, &costs, &Options::default()).unwrap();
        RUNTIME.with(|runtime| runtime.prepare(&instrumented).unwrap())
    }

    thread_local! {
        static RUNTIME: Runtime = Runtime::new(&RuntimeConfig {
            pooling_instances: 4,
            pooling_memory_bytes: 1 << 20,
            ..RuntimeConfig::default()
        })
        .unwrap();
    }

    fn run(prepared: &Prepared, max_output_bytes: usize) -> RunOutput {
        let mut invocation = Invocation::new(vec!["writer".into()]);
        invocation.max_output_bytes = max_output_bytes;
        // Large enough that only the output cap can stop a writer that ignores errors.
        invocation.max_ops = 1_000_000_000;
        invocation.deadline = Some(Duration::from_secs(60));
        RUNTIME.with(|runtime| runtime.run(prepared, invocation).unwrap())
    }

    #[test]
    fn output_cap_stops_a_guest_that_ignores_write_errors() {
        let flood = writer(1, 0);
        let output = run(&flood, 95);
        assert_eq!(output.usage.outcome, Outcome::OutputLimit);
        // What fits is kept; the write that crossed the cap ended the run.
        assert_eq!(output.stdout, b"0123456789".repeat(10)[..95].to_vec());
        assert_eq!(output.usage.io_out_bytes, 95);
        assert_eq!(output.usage.host_calls, 10);
        // The work done is billed, the same on every run.
        assert!(output.usage.ops > 0);
        assert!(output.usage.ops < 1_000_000);
        assert_eq!(run(&flood, 95).usage.ops, output.usage.ops);
    }

    #[test]
    fn output_cap_counts_stdout_and_stderr_together() {
        let output = run(&writer(2, 0), 35);
        assert_eq!(output.usage.outcome, Outcome::OutputLimit);
        assert_eq!(output.stderr.len(), 35);
        assert!(output.stdout.is_empty());

        // stdout and stderr share one cap.
        let both = wat::parse_str(
            r#"(module
                 (import "wasi_snapshot_preview1" "fd_write"
                   (func $fd_write (param i32 i32 i32 i32) (result i32)))
                 (memory (export "memory") 1)
                 (data (i32.const 16) "0123456789")
                 (func (export "_start")
                   (i32.store (i32.const 0) (i32.const 16))
                   (i32.store (i32.const 4) (i32.const 10))
                   (drop (call $fd_write (i32.const 1) (i32.const 0) (i32.const 1) (i32.const 8)))
                   (drop (call $fd_write (i32.const 2) (i32.const 0) (i32.const 1) (i32.const 8)))))"#,
        )
        .unwrap();
        let costs = CostTable::preset("default").unwrap();
        let prepared = RUNTIME.with(|runtime| {
            runtime
                .prepare(&instrument(&both, &costs, &Options::default()).unwrap())
                .unwrap()
        });
        let output = run(&prepared, 15);
        assert_eq!(output.usage.outcome, Outcome::OutputLimit);
        assert_eq!((output.stdout.len(), output.stderr.len()), (10, 5));
        let output = run(&prepared, 20);
        assert_eq!(output.usage.outcome, Outcome::Exit { code: 0 });
        assert_eq!(output.usage.io_out_bytes, 20);
    }

    #[test]
    fn output_exactly_at_the_cap_is_not_a_limit() {
        let output = run(&writer(1, 3), 30);
        assert_eq!(output.usage.outcome, Outcome::Exit { code: 0 });
        assert_eq!(output.stdout.len(), 30);
    }

    /// Runs a `_start` given as WAT, instrumented with the `wasmtime-fuel` table (every
    /// operator 1 except `nop`, `drop`, `loop` and `end`; 1 per function entry), on a runtime
    /// with `checks`, under a 50 ms deadline.
    fn run_with_deadline(checks: DeadlineChecks, start: &str, max_ops: u64) -> UsageReport {
        let wat = format!(
            r#"(module
                 (import "wasi_snapshot_preview1" "clock_time_get"
                   (func $clock (param i32 i64 i32) (result i32)))
                 (memory (export "memory") 1)
                 (func (export "_start") {start}))"#
        );
        let wasm = wat::parse_str(wat).unwrap();
        let costs = CostTable::preset("wasmtime-fuel").unwrap();
        let runtime = Runtime::new(&RuntimeConfig {
            deadline_checks: checks,
            ..RuntimeConfig::default()
        })
        .unwrap();
        let prepared = runtime
            .prepare(&instrument(&wasm, &costs, &Options::default()).unwrap())
            .unwrap();
        let mut invocation = Invocation::new(vec!["deadline".into()]);
        invocation.max_ops = max_ops;
        invocation.deadline = Some(Duration::from_millis(50));
        runtime.run(&prepared, invocation).unwrap().usage
    }

    /// Calls the host forever: 3 constants, the call and the branch back weigh 5 per
    /// iteration, plus 1 for entering `_start`.
    const CALLS_HOST_FOREVER: &str = "(loop $l
        (drop (call $clock (i32.const 1) (i64.const 0) (i32.const 0)))
        (br $l))";

    /// Never calls the host: 3 per iteration (two constants and the branch), plus 1.
    const SPINS_FOREVER: &str = "(loop $l (drop (i32.const 7)) (drop (i32.const 8)) (br $l))";

    #[test]
    fn deadlines_stop_a_guest_at_a_host_call_with_an_exact_count() {
        for checks in [DeadlineChecks::Epoch, DeadlineChecks::HostCalls] {
            let usage = run_with_deadline(checks, CALLS_HOST_FOREVER, OPS_MAX);
            assert_eq!(usage.outcome, Outcome::Deadline, "{checks:?}");
            assert!(usage.wall_ns >= 50_000_000, "{checks:?}: {}", usage.wall_ns);
            assert!(
                usage.wall_ns < 5_000_000_000,
                "{checks:?}: {}",
                usage.wall_ns
            );
            assert!(usage.host_calls > 0, "{checks:?}");
            // Stopped at a call: 1 + 5n + 4 (the call included, the branch after it not);
            // under epochs, at the loop header: 1 + 5n. Either way a multiple of 5 plus 0
            // or 1, never a count with the prepaid rest of an iteration in it.
            let rest = usage.ops % 5;
            match checks {
                DeadlineChecks::HostCalls => assert_eq!(rest, 0, "{}", usage.ops),
                DeadlineChecks::Epoch => assert!(rest <= 1, "{}", usage.ops),
            }
        }
    }

    #[test]
    fn epoch_deadlines_stop_a_guest_that_never_calls_the_host() {
        let usage = run_with_deadline(DeadlineChecks::Epoch, SPINS_FOREVER, OPS_MAX);
        assert_eq!(usage.outcome, Outcome::Deadline);
        assert!(usage.wall_ns < 5_000_000_000, "{}", usage.wall_ns);
        assert_eq!(usage.ops % 3, 1, "{}", usage.ops);
    }

    /// Stores in a loop without calls: its count lives in a register (the global lags it), 4
    /// per iteration (2 constants, the store and the branch).
    const STORES_FOREVER: &str = "(loop $l (i32.store (i32.const 16) (i32.const 5)) (br $l))";

    #[test]
    fn epoch_deadlines_stop_a_register_loop_with_an_exact_count() {
        let wasm = wat::parse_str(format!(
            "(module (memory 1) (func (export \"_start\") {STORES_FOREVER}))"
        ))
        .unwrap();
        let costs = CostTable::preset("wasmtime-fuel").unwrap();
        let stats = instrument(&wasm, &costs, &Options::default())
            .unwrap()
            .stats;
        assert_eq!(stats.register_loops, 1);
        let usage = run_with_deadline(DeadlineChecks::Epoch, STORES_FOREVER, OPS_MAX);
        assert_eq!(usage.outcome, Outcome::Deadline);
        assert!(usage.wall_ns < 5_000_000_000, "{}", usage.wall_ns);
        // Stopped by the budget check at the loop header, with the exact count of whole
        // iterations: what the global held when the deadline passed was behind it.
        assert!(usage.ops > 1, "{}", usage.ops);
        assert_eq!(usage.ops % 4, 1, "{}", usage.ops);
    }

    #[test]
    fn host_call_deadlines_leave_a_guest_that_never_calls_the_host_to_its_budget() {
        let usage = run_with_deadline(DeadlineChecks::HostCalls, SPINS_FOREVER, 30_000_001);
        assert_eq!(usage.outcome, Outcome::BudgetExhausted);
        // The budget check at the loop header stops the first iteration past the budget.
        assert_eq!(usage.ops, 30_000_004);
    }

    #[test]
    fn a_meter_map_that_does_not_match_the_module_is_an_error_not_a_panic() {
        let wasm = wat::parse_str(
            r#"(module (memory (export "memory") 1) (func (export "_start") unreachable))"#,
        )
        .unwrap();
        let costs = CostTable::preset("wasmtime-fuel").unwrap();
        let mut instrumented = instrument(&wasm, &costs, &Options::default()).unwrap();
        // A huge correction at every offset, so also at the trap's.
        let offsets: Vec<u32> = (0..instrumented.wasm.len() as u32).collect();
        let corrections = vec![1u64 << 40; offsets.len()];
        instrumented.meter_map = serde_json::from_value(
            serde_json::json!({"offsets": offsets, "corrections": corrections}),
        )
        .unwrap();
        let runtime = Runtime::new(&RuntimeConfig::default()).unwrap();
        let prepared = runtime.prepare(&instrumented).unwrap();
        let result = runtime.run(&prepared, Invocation::new(vec!["trap".into()]));
        match result {
            Err(Error::NotACommand(message)) => assert!(message.contains("meter map"), "{message}"),
            other => panic!("expected an error, got {other:?}"),
        }

        // A damaged map (fewer corrections than offsets) is no correction, not a panic.
        instrumented.meter_map = serde_json::from_value(
            serde_json::json!({"offsets": (0..instrumented.wasm.len() as u32).collect::<Vec<_>>(), "corrections": []}),
        )
        .unwrap();
        let prepared = runtime.prepare(&instrumented).unwrap();
        let usage = runtime
            .run(&prepared, Invocation::new(vec!["trap".into()]))
            .unwrap()
            .usage;
        assert!(matches!(usage.outcome, Outcome::Trap { .. }), "{usage:?}");
    }

    #[test]
    fn warm_stops_a_start_function_in_either_deadline_mode() {
        // A start function left in the module that calls the host forever.
        let wasm = wat::parse_str(
            r#"(module
                 (import "wasi_snapshot_preview1" "clock_time_get"
                   (func $clock (param i32 i64 i32) (result i32)))
                 (memory (export "memory") 1)
                 (func $forever
                   (loop $l
                     (drop (call $clock (i32.const 1) (i64.const 0) (i32.const 0)))
                     (br $l)))
                 (start $forever)
                 (func (export "_start")))"#,
        )
        .unwrap();
        let costs = CostTable::preset("wasmtime-fuel").unwrap();
        let instrumented = instrument(&wasm, &costs, &Options::default()).unwrap();
        for checks in [DeadlineChecks::Epoch, DeadlineChecks::HostCalls] {
            let runtime = Runtime::new(&RuntimeConfig {
                deadline_checks: checks,
                ..RuntimeConfig::default()
            })
            .unwrap();
            let prepared = runtime.prepare(&instrumented).unwrap();
            let started = Instant::now();
            runtime.warm(&prepared);
            assert!(started.elapsed() < Duration::from_secs(10), "{checks:?}");
        }
    }

    #[test]
    fn warm_instantiates_without_running() {
        let prepared = writer(1, 0);
        RUNTIME.with(|runtime| runtime.warm(&prepared));
        // The flood did not run; a real invocation still behaves.
        assert_eq!(run(&prepared, 10).usage.outcome, Outcome::OutputLimit);
    }
}

//! One invocation of a WASI preview 1 command, with limits and a usage report.

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};
use tally_instrument::{Instrumented, MeterMap, OPS_MAX, START_EXPORT};
use wasmtime::{
    CallHook, Config, Engine, InstanceAllocationStrategy, InstancePre, Linker, Module,
    ResourceLimiter, Store, Trap,
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

/// Engine-wide settings.
#[derive(Clone, Debug)]
pub struct RuntimeConfig {
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
            pooling_instances: 0,
            pooling_memory_bytes: MEMORY_BYTES_MAX,
            pooling_keep_resident_bytes: POOLING_KEEP_RESIDENT_BYTES_DEFAULT,
            cache_dir: None,
        }
    }
}

/// A wasmtime engine configured for metered execution, with an epoch ticker for deadlines.
#[derive(Clone)]
pub struct Runtime {
    engine: Engine,
    cache_dir: Option<PathBuf>,
    _ticker: Arc<Ticker>,
}

struct Ticker {
    stop: Arc<std::sync::atomic::AtomicBool>,
}

impl Drop for Ticker {
    fn drop(&mut self) {
        self.stop.store(true, std::sync::atomic::Ordering::Relaxed);
    }
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
}

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
    /// Creates an engine and starts its epoch ticker.
    pub fn new(config: &RuntimeConfig) -> Result<Runtime, Error> {
        let mut wasmtime_config = Config::new();
        wasmtime_config
            .epoch_interruption(true)
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
        if let Some(dir) = &config.cache_dir {
            std::fs::create_dir_all(dir).map_err(|e| Error::Engine(e.into()))?;
        }
        Ok(Runtime {
            engine,
            cache_dir: config.cache_dir.clone(),
            _ticker: Arc::new(Ticker { stop }),
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
    /// right after a restart). A start function, if the module has one, is stopped by a deadline
    /// of one epoch tick; nothing it does is kept.
    pub fn warm(&self, prepared: &Prepared) {
        let host = Host {
            wasi: WasiCtxBuilder::new().build_p1(),
            limiter: Limiter::new(MEMORY_BYTES_MAX),
            host_calls: 0,
        };
        let mut store = Store::new(&self.engine, host);
        store.limiter(|host| &mut host.limiter);
        store.set_epoch_deadline(1);
        let _ = prepared.pre.instantiate(&mut store);
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
        };
        let mut store = Store::new(&self.engine, host);
        store.limiter(|host| &mut host.limiter);
        store.call_hook(|mut ctx, hook| {
            if matches!(hook, CallHook::CallingHost) {
                ctx.data_mut().host_calls += 1;
            }
            Ok(())
        });
        let ticks = invocation.deadline.map_or(u64::MAX / 2, |d| {
            (d.as_millis() as u64 / EPOCH_TICK_MS).max(1) + 1
        });
        store.set_epoch_deadline(ticks);

        let started = Instant::now();
        let (result, instance) = match prepared.pre.instantiate(&mut store) {
            Ok(instance) => {
                let result = set_budget(&mut store, &instance, invocation.max_ops).and_then(|()| {
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

    #[test]
    fn warm_instantiates_without_running() {
        let prepared = writer(1, 0);
        RUNTIME.with(|runtime| runtime.warm(&prepared));
        // The flood did not run; a real invocation still behaves.
        assert_eq!(run(&prepared, 10).usage.outcome, Outcome::OutputLimit);
    }
}

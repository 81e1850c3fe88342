//! One invocation of a WASI preview 1 command, with limits and a usage report.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};
use tally_instrument::{Instrumented, MeterMap, OPS_MAX};
use wasmtime::{
    CallHook, Config, Engine, InstanceAllocationStrategy, InstancePre, Linker, Module,
    ResourceLimiter, Store, Trap,
};
use wasmtime_wasi::p1::WasiP1Ctx;
use wasmtime_wasi::p2::pipe::{MemoryInputPipe, MemoryOutputPipe};
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

/// Engine-wide settings.
#[derive(Clone, Debug)]
pub struct RuntimeConfig {
    /// Use the pooling instance allocator with this many instance slots (0: on-demand).
    pub pooling_instances: u32,
    /// Memory reserved per pooled instance, in bytes.
    pub pooling_memory_bytes: u64,
    /// Where precompiled modules are cached, so a restart does not compile again.
    pub cache_dir: Option<PathBuf>,
}

impl Default for RuntimeConfig {
    fn default() -> Self {
        RuntimeConfig {
            pooling_instances: 0,
            pooling_memory_bytes: MEMORY_BYTES_MAX,
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
    /// Cap on stdout plus stderr in bytes.
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
    /// The guest wrote more than the output cap.
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
                .max_memory_size(config.pooling_memory_bytes as usize);
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
        Ok(Prepared {
            pre,
            meter_map: Arc::new(meter_map),
        })
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
        let output_cap = invocation.max_output_bytes.min(OUTPUT_BYTES_MAX);
        let stdout = MemoryOutputPipe::new(output_cap);
        let stderr = MemoryOutputPipe::new(output_cap);
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
            limiter: Limiter {
                max_memory_bytes: invocation.max_memory_bytes,
                memory_bytes: 0,
                memory_peak_bytes: 0,
                memory_refused: false,
                byte_ns: 0,
                since: Instant::now(),
            },
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
        let out = stdout.contents().to_vec();
        let err = stderr.contents().to_vec();
        let host = store.data();
        let outcome = match result {
            Ok(()) => Outcome::Exit { code: 0 },
            Err(_) if reading.budget_exhausted => Outcome::BudgetExhausted,
            Err(error) => classify(
                &error,
                host.limiter.memory_refused,
                out.len().max(err.len()) >= output_cap,
            ),
        };
        let usage = UsageReport {
            ops: reading.ops,
            memory_peak_bytes: host.limiter.memory_peak_bytes,
            memory_ops_integral,
            memory_byte_ns: host.limiter.byte_ns,
            io_in_bytes,
            io_out_bytes: (out.len() + err.len()) as u64,
            host_calls: host.host_calls,
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

fn classify(error: &wasmtime::Error, memory_refused: bool, output_full: bool) -> Outcome {
    if let Some(exit) = error.downcast_ref::<I32Exit>() {
        return Outcome::Exit { code: exit.0 };
    }
    match error.downcast_ref::<Trap>() {
        Some(Trap::Interrupt) => Outcome::Deadline,
        Some(_) if memory_refused => Outcome::MemoryLimit,
        Some(trap) => Outcome::Trap {
            trap: format!("{trap:?}"),
        },
        None if output_full => Outcome::OutputLimit,
        None => Outcome::Trap {
            trap: format!("{error:#}"),
        },
    }
}

//! Cold-invocation latency: a fresh instance per invocation of an uploaded no-op function,
//! metered with its usage captured, against a bare wasmtime pooling instantiate + run of the
//! same uninstrumented module and against spawning `/bin/true`, in one run.

use std::time::{Duration, Instant};

use anyhow::Context;
use tally_instrument::{CostTable, Options, instrument};
use tally_runtime::{Invocation, Runtime, RuntimeConfig};
use wasmtime::{
    Config, Engine, InstanceAllocationStrategy, Linker, Module, PoolingAllocationConfig, Store,
};
use wasmtime_wasi::WasiCtxBuilder;
use wasmtime_wasi::p1::WasiP1Ctx;
use wasmtime_wasi::p2::pipe::MemoryOutputPipe;

/// Arguments of `tally-bench serve`.
#[derive(clap::Args)]
pub struct Args {
    /// Invocations per variant.
    #[arg(long, default_value_t = 5000)]
    iterations: usize,
    /// The module to invoke.
    #[arg(long, default_value = "guests/wasm/noop.wasm")]
    module: std::path::PathBuf,
}

fn percentiles(mut samples: Vec<Duration>) -> (f64, f64) {
    samples.sort();
    let at = |q: f64| samples[((samples.len() - 1) as f64 * q) as usize].as_secs_f64() * 1e6;
    (at(0.50), at(0.99))
}

/// Runs the cold-invocation benchmark.
pub fn run(args: &Args) -> anyhow::Result<()> {
    let wasm = std::fs::read(&args.module)
        .with_context(|| format!("reading {}", args.module.display()))?;

    // tally: instrumented, pooled, fresh store + instance, usage report.
    let runtime = Runtime::new(&RuntimeConfig {
        pooling_instances: 64,
        pooling_memory_bytes: 64 << 20,
        cache_dir: None,
    })?;
    let instrumented = instrument(
        &wasm,
        &CostTable::preset("default").context("preset")?,
        &Options::default(),
    )?;
    let prepared = runtime.prepare(&instrumented)?;
    let mut tally = Vec::with_capacity(args.iterations);
    for _ in 0..args.iterations {
        let started = Instant::now();
        let output = runtime.run(&prepared, Invocation::new(vec!["noop".into()]))?;
        tally.push(started.elapsed());
        std::hint::black_box(output.usage.ops);
    }

    // Reference: bare wasmtime with the pooling allocator, uninstrumented module.
    let mut pooling = PoolingAllocationConfig::default();
    pooling
        .total_memories(64)
        .total_tables(64)
        .total_core_instances(64)
        .max_memory_size(64 << 20);
    let mut config = Config::new();
    config.allocation_strategy(InstanceAllocationStrategy::Pooling(pooling));
    let engine = Engine::new(&config)?;
    let module = Module::new(&engine, &wasm)?;
    let mut linker: Linker<WasiP1Ctx> = Linker::new(&engine);
    wasmtime_wasi::p1::add_to_linker_sync(&mut linker, |cx| cx)?;
    let pre = linker.instantiate_pre(&module)?;
    let mut bare = Vec::with_capacity(args.iterations);
    for _ in 0..args.iterations {
        let started = Instant::now();
        let wasi = WasiCtxBuilder::new()
            .args(&["noop"])
            .stdout(MemoryOutputPipe::new(1 << 20))
            .build_p1();
        let mut store = Store::new(&engine, wasi);
        let instance = pre.instantiate(&mut store)?;
        let start = instance.get_typed_func::<(), ()>(&mut store, "_start")?;
        start.call(&mut store, ())?;
        bare.push(started.elapsed());
    }

    // Floor of any container start: spawning /bin/true.
    let mut spawn = Vec::new();
    for _ in 0..(args.iterations / 10).max(50) {
        let started = Instant::now();
        std::process::Command::new("/bin/true").status()?;
        spawn.push(started.elapsed());
    }

    let (t50, t99) = percentiles(tally);
    let (b50, b99) = percentiles(bare);
    let (s50, s99) = percentiles(spawn);
    println!(
        "{:<58} {:>9} {:>9}",
        "cold invoke of a no-op function", "p50 µs", "p99 µs"
    );
    println!(
        "{:<58} {:>9.1} {:>9.1}",
        "tally (instrumented, fresh instance, usage report)", t50, t99
    );
    println!(
        "{:<58} {:>9.1} {:>9.1}",
        "bare wasmtime pooling instantiate + run (reference)", b50, b99
    );
    println!(
        "{:<58} {:>9.1} {:>9.1}",
        "spawn /bin/true (floor of a container start)", s50, s99
    );
    println!(
        "tally / bare wasmtime p50: {:.2}×; /bin/true / tally p50: {:.1}×",
        t50 / b50,
        s50 / t50
    );
    Ok(())
}

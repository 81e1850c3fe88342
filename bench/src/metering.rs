//! Metering overhead: plain wasmtime vs tally's instrumentation vs wasmtime fuel vs wasmtime
//! epochs, per workload of the guest suite, in one run.
//!
//! Every variant runs the workload's `_start` in a fresh store on its own engine; the plain
//! engine has neither fuel nor epochs, so the baseline really runs without metering. A fifth
//! variant runs the instrumented module on the epoch engine: what `tally-runtime` runs with
//! its default (epoch) deadline checks. Variants
//! are interleaved and the best of `--runs` is kept. So are `instrument()` and wasmtime's
//! compilation of the same original module, measured in turn.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::Context;
use tally_instrument::{CostTable, Options, instrument};
use wasmtime::{Config, Engine, Linker, Module, Store};
use wasmtime_wasi::WasiCtxBuilder;
use wasmtime_wasi::p1::WasiP1Ctx;
use wasmtime_wasi::p2::pipe::MemoryOutputPipe;

/// Arguments of `tally-bench metering`.
#[derive(clap::Args)]
pub struct Args {
    /// Where to write the results as JSON.
    #[arg(long, default_value = "bench/results/metering.json")]
    json: PathBuf,
    /// Runs per variant (best kept).
    #[arg(long, default_value_t = 5)]
    runs: usize,
    /// Only this workload.
    #[arg(long)]
    only: Option<String>,
    /// Use the small sizes (a smoke run).
    #[arg(long)]
    small: bool,
    /// The guest suite directory.
    #[arg(long, default_value = "guests")]
    guests: PathBuf,
    /// Code layouts per workload for the layout-robust ratio (0: skip it). Each moves every
    /// function of both the plain and the instrumented module by a different amount (see
    /// `with_layout`); the ratio is of the mean times over the layouts without the fastest and
    /// the slowest.
    #[arg(long, default_value_t = 5)]
    layouts: usize,
}

pub struct Workload {
    pub name: String,
    pub wasm: Vec<u8>,
    pub args: Vec<String>,
}

pub fn workloads(guests: &Path, only: Option<&str>, small: bool) -> anyhow::Result<Vec<Workload>> {
    let manifest: serde_json::Value = serde_json::from_slice(
        &std::fs::read(guests.join("manifest.json")).context("reading guests/manifest.json")?,
    )?;
    let mut out = Vec::new();
    for entry in manifest.as_array().context("manifest is an array")? {
        let name = entry["name"].as_str().context("name")?.to_string();
        if only.is_some_and(|only| only != name) {
            continue;
        }
        let key = if small { "small_args" } else { "bench_args" };
        let wasm = std::fs::read(guests.join(entry["wasm"].as_str().context("wasm")?))?;
        let mut argv = vec![name.clone()];
        argv.extend(
            entry[key]
                .as_array()
                .context("args")?
                .iter()
                .map(|a| a.as_str().unwrap_or("").to_string()),
        );
        out.push(Workload {
            name,
            wasm,
            args: argv,
        });
    }
    Ok(out)
}

pub fn engine(fuel: bool, epochs: bool) -> anyhow::Result<Engine> {
    let mut config = Config::new();
    config.consume_fuel(fuel).epoch_interruption(epochs);
    Ok(Engine::new(&config)?)
}

/// Instantiates and runs `_start` once; returns the elapsed time and, for instrumented
/// modules, the count.
pub fn run_once(
    engine: &Engine,
    module: &Module,
    args: &[String],
    fuel: bool,
    epochs: bool,
) -> anyhow::Result<(Duration, Option<u64>)> {
    let mut linker: Linker<WasiP1Ctx> = Linker::new(engine);
    wasmtime_wasi::p1::add_to_linker_sync(&mut linker, |cx| cx)?;
    let pre = linker.instantiate_pre(module)?;
    let wasi = WasiCtxBuilder::new()
        .args(args)
        .stdout(MemoryOutputPipe::new(usize::MAX / 2))
        .stderr(MemoryOutputPipe::new(usize::MAX / 2))
        .build_p1();
    let mut store = Store::new(engine, wasi);
    if fuel {
        store.set_fuel(u64::MAX / 2)?;
    }
    if epochs {
        store.set_epoch_deadline(u64::MAX / 2);
    }
    let started = Instant::now();
    let instance = pre.instantiate(&mut store)?;
    let start = instance.get_typed_func::<(), ()>(&mut store, "_start")?;
    let result = start.call(&mut store, ());
    let elapsed = started.elapsed();
    if let Err(error) = &result {
        let exit = error.downcast_ref::<wasmtime_wasi::I32Exit>().map(|e| e.0);
        if exit != Some(0) && error.downcast_ref::<wasmtime::Trap>().is_none() {
            anyhow::bail!("guest failed: {error:#}");
        }
    }
    let ops = instance
        .get_global(&mut store, tally_instrument::OPS_GLOBAL)
        .and_then(|g| g.get(&mut store).i64())
        .map(|v| v as u64);
    Ok((elapsed, ops))
}

/// `wasm` with one more function, exported as `__bench_layout` and never called: `steps`
/// stores plus three per `layout`, made larger than every other function, so that walrus emits
/// it first and every other function's code starts a few bytes later for each `layout` (a
/// different alignment of each loop), while nothing the workload runs changes.
fn with_layout(wasm: &[u8], layout: usize) -> anyhow::Result<Vec<u8>> {
    let mut module = walrus::ModuleConfig::new()
        .generate_producers_section(false)
        .parse(wasm)?;
    let Some(memory) = module.memories.iter().next().map(|m| m.id()) else {
        return Ok(wasm.to_vec());
    };
    let largest = module
        .funcs
        .iter_local()
        .map(|(_, f)| f.size())
        .max()
        .unwrap_or(0);
    let steps = largest / 3 + 1 + 3 * layout as u64;
    let mut builder = walrus::FunctionBuilder::new(&mut module.types, &[walrus::ValType::I32], &[]);
    let param = module.locals.add(walrus::ValType::I32);
    let mut body = builder.func_body();
    for step in 0..steps {
        body.local_get(param).local_get(param).store(
            memory,
            walrus::ir::StoreKind::I32 { atomic: false },
            walrus::ir::MemArg {
                align: 4,
                offset: (step % 32) * 4,
            },
        );
    }
    let id = builder.finish(vec![param], &mut module.funcs);
    module.exports.add("__bench_layout", id);
    Ok(module.emit_wasm())
}

/// Best-of-`runs` run times (s) of `plain` and `instrumented` (on the plain engine) under
/// `layouts` code layouts, interleaved.
fn layout_times(
    engine: &Engine,
    plain: &[u8],
    instrumented: &[u8],
    args: &[String],
    layouts: usize,
    runs: usize,
) -> anyhow::Result<(Vec<f64>, Vec<f64>)> {
    let (mut plain_times, mut tally_times) = (Vec::new(), Vec::new());
    for layout in 0..layouts {
        let p = Module::new(engine, with_layout(plain, layout)?)?;
        let t = Module::new(engine, with_layout(instrumented, layout)?)?;
        let (mut best_p, mut best_t) = (f64::INFINITY, f64::INFINITY);
        for _ in 0..runs.max(1) {
            best_p = best_p.min(run_once(engine, &p, args, false, false)?.0.as_secs_f64());
            best_t = best_t.min(run_once(engine, &t, args, false, false)?.0.as_secs_f64());
        }
        plain_times.push(best_p);
        tally_times.push(best_t);
    }
    Ok((plain_times, tally_times))
}

/// The mean without the smallest and the largest value (of three or more).
fn trimmed_mean(values: &[f64]) -> f64 {
    let mut values = values.to_vec();
    values.sort_by(|a, b| a.total_cmp(b));
    if values.len() >= 3 {
        values.pop();
        values.remove(0);
    }
    values.iter().sum::<f64>() / values.len() as f64
}

fn median(mut values: Vec<f64>) -> f64 {
    values.sort_by(|a, b| a.total_cmp(b));
    let n = values.len();
    if n % 2 == 1 {
        values[n / 2]
    } else {
        (values[n / 2 - 1] + values[n / 2]) / 2.0
    }
}

fn geomean(values: &[f64]) -> f64 {
    (values.iter().map(|v| v.ln()).sum::<f64>() / values.len() as f64).exp()
}

/// Runs the metering benchmark.
pub fn run(args: &Args) -> anyhow::Result<()> {
    let plain_engine = engine(false, false)?;
    let fuel_engine = engine(true, false)?;
    let epoch_engine = engine(false, true)?;
    let default_costs = CostTable::preset("default").expect("preset");
    let uniform_costs = CostTable::preset("wasmtime-fuel").expect("preset");
    let mut rows = Vec::new();
    println!(
        "{:<16} {:>9} {:>9} {:>9} {:>9} {:>7} {:>7} {:>7} {:>7} {:>7} {:>8} {:>8} {:>6} {:>8} {:>8}",
        "workload",
        "plain ms",
        "tally ms",
        "fuel ms",
        "epoch ms",
        "tally×",
        "fuel×",
        "epoch×",
        "t+e×",
        "t×L",
        "instr ms",
        "compile",
        "size×",
        "ns/unit",
        "ns/fuel"
    );
    for workload in workloads(&args.guests, args.only.as_deref(), args.small)? {
        // Instrumenting and compiling the same module, interleaved, best of `runs` each.
        let (mut instrument_ms, mut compile_ms) = (f64::INFINITY, f64::INFINITY);
        let mut instrumented = None;
        let mut plain_module = None;
        for _ in 0..args.runs.max(1) {
            let started = Instant::now();
            let out = instrument(&workload.wasm, &default_costs, &Options::default())?;
            instrument_ms = instrument_ms.min(started.elapsed().as_secs_f64() * 1e3);
            instrumented = Some(out);
            let started = Instant::now();
            let module = Module::new(&plain_engine, &workload.wasm)?;
            compile_ms = compile_ms.min(started.elapsed().as_secs_f64() * 1e3);
            plain_module = Some(module);
        }
        let instrumented = instrumented.expect("at least one run");
        let plain_module = plain_module.expect("at least one run");
        let uniform = instrument(&workload.wasm, &uniform_costs, &Options::default())?;
        let tally_module = Module::new(&plain_engine, &instrumented.wasm)?;
        let uniform_module = Module::new(&plain_engine, &uniform.wasm)?;
        let fuel_module = Module::new(&fuel_engine, &workload.wasm)?;
        let epoch_module = Module::new(&epoch_engine, &workload.wasm)?;
        // What the runtime ships: the instrumented module on an engine with epoch deadlines.
        let tally_epoch_module = Module::new(&epoch_engine, &instrumented.wasm)?;

        let (mut plain, mut tally, mut fuel, mut epoch) = (vec![], vec![], vec![], vec![]);
        let mut tally_epoch = vec![];
        let mut ops = 0;
        let mut uniform_ops = 0;
        for _ in 0..args.runs {
            plain.push(
                run_once(&plain_engine, &plain_module, &workload.args, false, false)?
                    .0
                    .as_secs_f64(),
            );
            let (t, o) = run_once(&plain_engine, &tally_module, &workload.args, false, false)?;
            tally.push(t.as_secs_f64());
            ops = o.unwrap_or(0);
            fuel.push(
                run_once(&fuel_engine, &fuel_module, &workload.args, true, false)?
                    .0
                    .as_secs_f64(),
            );
            epoch.push(
                run_once(&epoch_engine, &epoch_module, &workload.args, false, true)?
                    .0
                    .as_secs_f64(),
            );
            tally_epoch.push(
                run_once(
                    &epoch_engine,
                    &tally_epoch_module,
                    &workload.args,
                    false,
                    true,
                )?
                .0
                .as_secs_f64(),
            );
        }
        if let (_, Some(o)) =
            run_once(&plain_engine, &uniform_module, &workload.args, false, false)?
        {
            uniform_ops = o;
        }
        let (layout_plain, layout_tally) = layout_times(
            &plain_engine,
            &workload.wasm,
            &instrumented.wasm,
            &workload.args,
            args.layouts,
            args.runs.min(3),
        )?;
        let layout_ratios: Vec<f64> = layout_plain
            .iter()
            .zip(&layout_tally)
            .map(|(p, t)| t / p)
            .collect();
        // Times under different layouts are often bimodal (a median jumps between the modes)
        // and now and then far off (sha256's plain module once ran 4x slower in one layout):
        // the mean of what is left without the fastest and the slowest (NaN with no layouts).
        let layout_ratio = trimmed_mean(&layout_tally) / trimmed_mean(&layout_plain);
        let best = |v: &[f64]| v.iter().copied().fold(f64::INFINITY, f64::min);
        let (p, t, f, e) = (best(&plain), best(&tally), best(&fuel), best(&epoch));
        let te = best(&tally_epoch);
        let row = serde_json::json!({
            "workload": workload.name,
            "args": workload.args[1..],
            "plain_ms": p * 1e3, "tally_ms": t * 1e3, "fuel_ms": f * 1e3, "epoch_ms": e * 1e3,
            "tally_epoch_ms": te * 1e3, "tally_epoch_ratio": te / p,
            "layout_plain_ms": layout_plain.iter().map(|t| t * 1e3).collect::<Vec<_>>(),
            "layout_tally_ms": layout_tally.iter().map(|t| t * 1e3).collect::<Vec<_>>(),
            "layout_ratios": layout_ratios, "layout_tally_ratio": layout_ratio,
            "plain_median_ms": median(plain.clone()) * 1e3, "tally_median_ms": median(tally.clone()) * 1e3,
            "tally_ratio": t / p, "fuel_ratio": f / p, "epoch_ratio": e / p,
            "instrument_ms": instrument_ms, "compile_ms": compile_ms,
            "instrument_over_compile": instrument_ms / compile_ms,
            "input_bytes": workload.wasm.len(), "output_bytes": instrumented.wasm.len(),
            "size_ratio": instrumented.wasm.len() as f64 / workload.wasm.len() as f64,
            "ops_default": ops, "ops_uniform": uniform_ops,
            "ns_per_unit_default": p * 1e9 / ops.max(1) as f64,
            "ns_per_unit_uniform": p * 1e9 / uniform_ops.max(1) as f64,
            "counters_placed": instrumented.stats.counters_placed,
            "basic_blocks": instrumented.stats.basic_blocks,
        });
        println!(
            "{:<16} {:>9.2} {:>9.2} {:>9.2} {:>9.2} {:>7.3} {:>7.3} {:>7.3} {:>7.3} {:>7.3} {:>8.2} {:>8.2} {:>6.3} {:>8.4} {:>8.4}",
            workload.name,
            p * 1e3,
            t * 1e3,
            f * 1e3,
            e * 1e3,
            t / p,
            f / p,
            e / p,
            te / p,
            layout_ratio,
            instrument_ms,
            compile_ms,
            row["size_ratio"].as_f64().unwrap_or(0.0),
            row["ns_per_unit_default"].as_f64().unwrap_or(0.0),
            row["ns_per_unit_uniform"].as_f64().unwrap_or(0.0)
        );
        rows.push(row);
    }
    let ratios = |key: &str| {
        rows.iter()
            .map(|r| r[key].as_f64().unwrap_or(1.0))
            .collect::<Vec<_>>()
    };
    // Workloads that do real work: the no-op is all start-up, the spread is about steady state.
    let working: Vec<&serde_json::Value> = rows
        .iter()
        .filter(|r| r["plain_ms"].as_f64().unwrap_or(0.0) > 5.0)
        .collect();
    let spread = |key: &str| {
        let v: Vec<f64> = working
            .iter()
            .map(|r| r[key].as_f64().unwrap_or(0.0))
            .collect();
        let max = v.iter().copied().fold(0.0, f64::max);
        let min = v.iter().copied().fold(f64::INFINITY, f64::min);
        max / min
    };
    let summary = serde_json::json!({
        "geomean_tally_ratio": geomean(&ratios("tally_ratio")),
        "geomean_fuel_ratio": geomean(&ratios("fuel_ratio")),
        "geomean_epoch_ratio": geomean(&ratios("epoch_ratio")),
        "geomean_tally_epoch_ratio": geomean(&ratios("tally_epoch_ratio")),
        "geomean_layout_tally_ratio": geomean(&ratios("layout_tally_ratio")),
        "worst_layout_tally_ratio": ratios("layout_tally_ratio").into_iter().fold(0.0, f64::max),
        "worst_tally_ratio": ratios("tally_ratio").into_iter().fold(0.0, f64::max),
        "ns_per_unit_spread_default": spread("ns_per_unit_default"),
        "ns_per_unit_spread_uniform": spread("ns_per_unit_uniform"),
        "max_instrument_over_compile": ratios("instrument_over_compile").into_iter().fold(0.0, f64::max),
        "max_size_ratio": ratios("size_ratio").into_iter().fold(0.0, f64::max),
    });
    println!("\n{}", serde_json::to_string_pretty(&summary)?);
    if let Some(parent) = args.json.parent() {
        std::fs::create_dir_all(parent)?;
    }
    let machine = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|c| {
            c.lines()
                .find(|l| l.starts_with("model name"))
                .map(|l| l.split(':').nth(1).unwrap_or("").trim().to_string())
        })
        .unwrap_or_default();
    let doc = serde_json::json!({
        "machine": { "cpu": machine, "cores": std::thread::available_parallelism().map(|n| n.get()).unwrap_or(0) },
        "runs": args.runs, "workloads": rows, "summary": summary,
    });
    std::fs::write(&args.json, serde_json::to_string_pretty(&doc)? + "\n")
        .with_context(|| format!("writing {}", Path::new(&args.json).display()))?;
    Ok(())
}

//! Calibration of the `default` cost table: fit one weight per operator class so that cost
//! tracks CPU time across the workload suite.
//!
//! Method: for every workload, (1) time the plain run (best of `--runs`), (2) count how often
//! each operator class executes, by instrumenting with a table that weighs only that class (plus
//! the control operators every table must weigh) and subtracting the control-only count, then
//! (3) choose one weight per class, in whole units of 0.01 ns, that minimises the spread
//! (max/min) of nanoseconds per unit across the suite. The spread is minimised exactly, as a
//! linear program (see [`fit`]), with every class of real work at least 2 units and every class
//! at most 255 (what wasmtime's `u8` operator costs take); the weights are then rounded to whole
//! units. It prints the fit, a leave-one-out check (fit without each workload, spread over all),
//! the fitted table, and the spread of the fitted, the current `default` and the uniform table
//! on the same measurements, from real instrumented counts.

use std::time::Instant;

use anyhow::Context;
use tally_instrument::{CostTable, Options, instrument};
use wasmtime::Module;

use crate::metering::{Workload, engine, run_once, workloads};

/// Arguments of `tally-bench calibrate`.
#[derive(clap::Args)]
pub struct Args {
    /// Runs per workload for the timing (best kept).
    #[arg(long, default_value_t = 3)]
    runs: usize,
    /// The guest suite directory.
    #[arg(long, default_value = "guests")]
    guests: std::path::PathBuf,
    /// Where the measurements (times and counts per class) are kept: read from this file when
    /// it exists, otherwise measured and written to it.
    #[arg(long)]
    measurements: Option<std::path::PathBuf>,
    /// Measure again even when the measurements file exists.
    #[arg(long)]
    remeasure: bool,
}

/// Operator classes, by wasmparser operator name.
fn class_of(name: &str) -> &'static str {
    const FREE: &[&str] = &[
        "LocalGet",
        "LocalSet",
        "LocalTee",
        "Drop",
        "Nop",
        "Block",
        "Loop",
        "Select",
        "TypedSelect",
    ];
    const CONTROL: &[&str] = &["Br", "BrIf", "BrTable", "If", "Return", "Unreachable"];
    const CALL: &[&str] = &[
        "Call",
        "CallIndirect",
        "ReturnCall",
        "ReturnCallIndirect",
        "CallRef",
        "ReturnCallRef",
    ];
    if FREE.contains(&name) || name.ends_with("Const") && !name.contains('x') {
        "free"
    } else if CONTROL.contains(&name) {
        "control"
    } else if CALL.contains(&name) {
        "call"
    } else if name == "GlobalGet" || name == "GlobalSet" {
        "global"
    } else if name.contains("Load") {
        "load"
    } else if name.contains("Store") {
        "store"
    } else if name == "I32Mul" || name == "I64Mul" {
        "mul"
    } else if (name.starts_with("I32") || name.starts_with("I64"))
        && (name.contains("Div") || name.contains("Rem"))
    {
        "div"
    } else if matches!(name, "F32Div" | "F64Div" | "F32Sqrt" | "F64Sqrt") {
        "fdiv"
    } else if name.starts_with("F32") || name.starts_with("F64") {
        "float"
    } else if matches!(
        name,
        "MemoryGrow"
            | "MemoryCopy"
            | "MemoryFill"
            | "MemoryInit"
            | "MemoryDiscard"
            | "TableGrow"
            | "TableCopy"
            | "TableFill"
            | "TableInit"
    ) {
        // Operations that call into the runtime; `memory.size`, `table.get` and the drops
        // are loads and stores of the instance's state.
        "memory_op"
    } else {
        "alu"
    }
}

const CLASSES: &[&str] = &[
    "free",
    "alu",
    "mul",
    "div",
    "load",
    "store",
    "float",
    "fdiv",
    "global",
    "call",
    "memory_op",
    "bytes",
];

/// A table weighing `class` 1 (or nothing but control when `None`), control always 1.
fn probe_table(class: Option<&str>) -> anyhow::Result<CostTable> {
    let mut operators = serde_json::Map::new();
    for (name, _) in CostTable::preset("default").context("preset")?.weights() {
        if name == "End" || name == "Else" {
            continue;
        }
        let c = class_of(name);
        let w = u32::from(c == "control" || Some(c) == class);
        operators.insert(name.to_string(), w.into());
    }
    let bytes = u32::from(class == Some("bytes"));
    let json = serde_json::json!({
        "name": "probe", "default_weight": 0, "function_entry": 1, "operators": operators,
        "variable": { "memory_copy_per_byte": bytes, "memory_fill_per_byte": bytes, "memory_init_per_byte": bytes }
    });
    Ok(CostTable::from_json(&json.to_string())?)
}

fn count(workload: &Workload, engine: &wasmtime::Engine, costs: &CostTable) -> anyhow::Result<f64> {
    let instrumented = instrument(&workload.wasm, costs, &Options::default())?;
    let module = Module::new(engine, &instrumented.wasm)?;
    Ok(run_once(engine, &module, &workload.args, false, false)?
        .1
        .unwrap_or(0) as f64)
}

fn spread(values: &[f64]) -> f64 {
    let max = values.iter().copied().fold(0.0, f64::max);
    let min = values.iter().copied().fold(f64::INFINITY, f64::min);
    max / min
}

/// Size of one cost unit, in nanoseconds of the workload that runs slowest per unit.
const UNIT_NS: f64 = 0.01;
/// Largest weight of a class, below the cost table's `WEIGHT_MAX`.
const WEIGHT_CAP: f64 = 60_000.0;
/// How far above the smallest spread the chosen weights may be (see [`fit`]).
const SPREAD_SLACK: f64 = 1.02;

/// A first guess of each class's cost in ns (control and function entries first, then
/// [`CLASSES`]), from how Cranelift compiles them on x86-64 at about 3 GHz: the fit keeps, among
/// the weights with the smallest spread, the ones closest to these ratios.
const PRIOR_NS: &[f64] = &[
    0.3,  // control: a compare-and-branch, a function entry
    0.03, // free: register moves, constants
    0.1,  // alu
    0.3,  // mul
    5.0,  // div
    0.3,  // load
    0.3,  // store
    0.3,  // float
    3.0,  // fdiv
    0.3,  // global
    1.5,  // call
    10.0, // memory_op: a call into the runtime
    0.05, // bytes: memcpy speed
];
const _: () = assert!(PRIOR_NS.len() == CLASSES.len() + 1);

/// Times and counts every workload (noop excluded).
fn measure(args: &Args, engine: &wasmtime::Engine, all: &[Workload]) -> anyhow::Result<Vec<Row>> {
    let mut rows = Vec::new();
    for workload in all.iter().filter(|w| w.name != "noop") {
        let module = Module::new(engine, &workload.wasm)?;
        let mut best = f64::INFINITY;
        for _ in 0..args.runs {
            let started = Instant::now();
            run_once(engine, &module, &workload.args, false, false)?;
            best = best.min(started.elapsed().as_secs_f64() * 1e9);
        }
        let base = count(workload, engine, &probe_table(None)?)?;
        let mut counts = vec![base];
        for class in CLASSES {
            counts.push(count(workload, engine, &probe_table(Some(class))?)? - base);
        }
        eprintln!(
            "{:<16} {:>12.0} ns  counts {:?}",
            workload.name,
            best,
            counts.iter().map(|c| *c as u64).collect::<Vec<_>>()
        );
        rows.push(Row {
            name: workload.name.clone(),
            ns: best,
            counts,
        });
    }
    Ok(rows)
}

/// Runs the calibration and prints the fitted table.
pub fn run(args: &Args) -> anyhow::Result<()> {
    let engine = engine(false, false)?;
    let all = workloads(&args.guests, None, false)?;
    let rows = match &args.measurements {
        Some(path) if !args.remeasure && path.exists() => {
            serde_json::from_slice(&std::fs::read(path).context("reading measurements")?)
                .context("parsing measurements")?
        }
        _ => {
            let rows = measure(args, &engine, &all)?;
            if let Some(path) = &args.measurements {
                std::fs::write(path, serde_json::to_vec_pretty(&rows)?)
                    .context("writing measurements")?;
            }
            rows
        }
    };
    let refs: Vec<&Row> = rows.iter().collect();
    // Bounds per class, in units: every class of real work at least 1 so that nothing is
    // free; register moves and constants may cost nothing.
    let bounds: Vec<(f64, f64)> = std::iter::once((1.0, WEIGHT_CAP))
        .chain(CLASSES.iter().map(|c| match *c {
            "free" => (0.0, WEIGHT_CAP),
            _ => (1.0, WEIGHT_CAP),
        }))
        .collect();
    let x = fit(&refs, &bounds)?;
    let rounded: Vec<f64> = x.iter().map(|w| w.round()).collect();
    println!(
        "spread of the fit: {:.3} (exact weights), {:.3} (whole units)",
        model_spread(&refs, &x),
        model_spread(&refs, &rounded)
    );
    println!("units per execution (fitted, whole; prior ns):");
    for (i, class) in std::iter::once(&"control").chain(CLASSES).enumerate() {
        println!(
            "  {:<10} {:>9.2} {:>6} {:>6}",
            class, x[i], rounded[i], PRIOR_NS[i]
        );
    }
    // Leave one out: fit without a workload, then measure the spread over all of them. This
    // is how well the table can be expected to hold for a program it was not fitted to.
    println!("leave one out (fit without the workload, spread over all):");
    let mut worst: f64 = 0.0;
    for (i, row) in rows.iter().enumerate() {
        let rest: Vec<&Row> = rows
            .iter()
            .enumerate()
            .filter(|(j, _)| *j != i)
            .map(|(_, r)| r)
            .collect();
        let held = fit(&rest, &bounds)?;
        let s = model_spread(&refs, &held);
        worst = worst.max(s);
        println!("  {:<16} {:.3}", row.name, s);
    }
    println!("  worst            {worst:.3}");
    let weight_of = |index: usize| rounded[index] as u32;
    let mut operators = serde_json::Map::new();
    for (name, _) in CostTable::preset("default").context("preset")?.weights() {
        if name == "End" || name == "Else" {
            continue;
        }
        let c = class_of(name);
        let index = if c == "control" {
            0
        } else {
            1 + CLASSES.iter().position(|x| *x == c).unwrap_or(1)
        };
        operators.insert(name.to_string(), weight_of(index).into());
    }
    let bytes = weight_of(CLASSES.len());
    let table = serde_json::json!({
        "name": "default",
        "default_weight": weight_of(2),
        "function_entry": weight_of(0),
        "operators": operators,
        "variable": {
            "memory_copy_per_byte": bytes, "memory_fill_per_byte": bytes, "memory_init_per_byte": bytes,
            "memory_grow_per_page": 255, "table_copy_per_element": 2, "table_fill_per_element": 2,
            "table_init_per_element": 2, "table_grow_per_element": 2
        }
    });
    let fitted = CostTable::from_json(&table.to_string())?;
    let per = |costs: &CostTable| -> anyhow::Result<Vec<f64>> {
        all.iter()
            .filter(|w| w.name != "noop")
            .zip(&rows)
            .map(|(w, row)| Ok(row.ns / count(w, &engine, costs)?))
            .collect()
    };
    let fitted_ns = per(&fitted)?;
    let default_ns = per(&CostTable::preset("default").context("preset")?)?;
    let uniform_ns = per(&CostTable::preset("wasmtime-fuel").context("preset")?)?;
    println!(
        "{:<16} {:>10} {:>10} {:>10}",
        "workload", "fitted", "default", "uniform"
    );
    for (i, row) in rows.iter().enumerate() {
        println!(
            "{:<16} {:>10.4} {:>10.4} {:>10.4}",
            row.name, fitted_ns[i], default_ns[i], uniform_ns[i]
        );
    }
    println!(
        "spread (max/min ns per unit, real counts): fitted {:.3}, current default {:.3}, uniform {:.3}",
        spread(&fitted_ns),
        spread(&default_ns),
        spread(&uniform_ns)
    );
    println!("{}", fitted.to_json());
    Ok(())
}

/// One workload's measurements: best plain run time and executions per class.
#[derive(Clone, serde::Serialize, serde::Deserialize)]
struct Row {
    name: String,
    ns: f64,
    /// Index 0: control operators plus function entries; then one entry per [`CLASSES`].
    counts: Vec<f64>,
}

/// The model's predicted units for one workload.
fn predicted(row: &Row, x: &[f64]) -> f64 {
    row.counts.iter().zip(x).map(|(n, w)| n * w).sum()
}

/// Spread (max/min) of measured ns per predicted unit over `rows`.
fn model_spread(rows: &[&Row], x: &[f64]) -> f64 {
    let ratios: Vec<f64> = rows.iter().map(|r| r.ns / predicted(r, x)).collect();
    spread(&ratios)
}

/// Minimax fit: weights `x` (per execution, in units) within `bounds` that minimise the
/// spread of ns per unit over `rows`, in two linear programs.
///
/// 1. Minimise v subject to, for every workload w, P_w(x) ≥ t_w and P_w(x) ≤ v·t_w, where P_w
///    is the predicted cost and t_w the measured time in units of [`UNIT_NS`]. Every ratio
///    t_w/P_w then lies in [1/v, 1], so the spread is at most v, and the optimum v* makes it v*.
/// 2. Many weights reach about v*, some of them absurd (a class few workloads use can take any
///    weight). Keep v ≤ [`SPREAD_SLACK`]·v* and minimise Σ_j |x_j / p_j − λ| over x and a free
///    scale λ: the weights closest, in ratio, to the prior [`PRIOR_NS`].
fn fit(rows: &[&Row], bounds: &[(f64, f64)]) -> anyhow::Result<Vec<f64>> {
    use microlp::{ComparisonOp, OptimizationDirection, Problem, Variable};
    let k = bounds.len();
    // Column scaling keeps the coefficients within a few orders of magnitude: variable j is
    // solved as y_j = x_j * scale_j with scale_j the largest executions per unit of time.
    let scale: Vec<f64> = (0..k)
        .map(|j| {
            rows.iter()
                .map(|r| r.counts[j] * UNIT_NS / r.ns)
                .fold(0.0, f64::max)
                .max(1e-12)
        })
        .collect();
    let build = |v_max: Option<f64>| -> (Problem, Vec<Variable>, Variable) {
        let direction = OptimizationDirection::Minimize;
        let mut problem = Problem::new(direction);
        let first = v_max.is_none();
        let y: Vec<_> = bounds
            .iter()
            .zip(&scale)
            .map(|((lo, hi), s)| problem.add_var(0.0, (lo * s, hi * s)))
            .collect();
        let v = problem.add_var(
            if first { 1.0 } else { 0.0 },
            (1.0, v_max.unwrap_or(f64::INFINITY)),
        );
        for row in rows {
            let units = row.ns / UNIT_NS;
            let terms: Vec<_> = (0..k)
                .filter(|&j| row.counts[j] > 0.0)
                .map(|j| (y[j], row.counts[j] / units / scale[j]))
                .collect();
            problem.add_constraint(terms.as_slice(), ComparisonOp::Ge, 1.0);
            let mut upper = terms.clone();
            upper.push((v, -1.0));
            problem.add_constraint(upper.as_slice(), ComparisonOp::Le, 0.0);
        }
        (problem, y, v)
    };
    let solve = |problem: &Problem| {
        problem
            .solve()
            .map_err(|e| anyhow::anyhow!("calibration LP: {e}"))?
            .into_solution()
            .map_err(|_| anyhow::anyhow!("calibration LP was interrupted"))
    };
    let (first, _, v) = build(None);
    let v_star = solve(&first)?.var_value(v);
    let (mut second, y, _) = build(Some(v_star * SPREAD_SLACK));
    let lambda = second.add_var(0.0, (0.0, f64::INFINITY));
    for j in 0..k {
        // d_j ≥ |x_j / p_j − λ|, with x_j = y_j / scale_j.
        let d = second.add_var(1.0, (0.0, f64::INFINITY));
        let c = 1.0 / (scale[j] * PRIOR_NS[j]);
        second.add_constraint([(d, 1.0), (y[j], -c), (lambda, 1.0)], ComparisonOp::Ge, 0.0);
        second.add_constraint([(d, 1.0), (y[j], c), (lambda, -1.0)], ComparisonOp::Ge, 0.0);
    }
    let solution = solve(&second)?;
    Ok((0..k)
        .map(|j| solution.var_value(y[j]) / scale[j])
        .collect())
}

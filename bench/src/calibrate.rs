//! Calibration of the `default` cost table: fit one weight per operator class so that cost
//! tracks CPU time across the workload suite.
//!
//! Method: for every workload, (1) time the plain run (best of `--runs`), (2) count how often
//! each operator class of [`CLASSES`] executes, by instrumenting with a table that adds 1 to that
//! class over a base table (the branches every table must weigh, and function entries, at 1) and
//! subtracting the base table's count, then (3) choose one weight per class, in units of 0.01 ns,
//! that minimises the spread (max/min) of nanoseconds per unit across the suite. With `--also`,
//! measurements of the same suite on other machines take part: the fit minimises the largest
//! spread on any one machine (plain times moved by up to ±30% per workload between two VMs of
//! the same kind, so a table fitted to one machine's times is a figure of that machine). The
//! spread is minimised exactly, by linear programs (see [`fit`]), with every class of real work
//! at least 1 unit and register moves and constants at least 0; the weights are then rounded to
//! whole units. It prints the fit on each machine, a leave-one-out check (fit without each
//! workload, largest spread over all), the fitted table, and the spread of the fitted, the
//! current `default` and the uniform table on this machine's measurements, from real
//! instrumented counts.

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
    /// Measurements of the same suite taken on other machines (files written by
    /// `--measurements` there): the table is fitted over every machine at once, minimising the
    /// largest spread on any one of them.
    #[arg(long = "also")]
    also: Vec<std::path::PathBuf>,
}

/// Operator classes: the name, what it holds, and a first guess of its cost in ns (see
/// [`fit`]). Index 0 is the function entry (not an operator); the last is the bytes of
/// bulk memory operations (not an operator either).
const CLASSES: &[(&str, f64)] = &[
    ("entry", 0.5),         // a function entry: prologue, stack-limit check
    ("branch", 0.3),        // br, br_if, if, return, unreachable: a compare-and-branch
    ("br_table", 1.0),      // an indirect jump through a table
    ("local", 0.03),        // local.get/set/tee, drop, nop, block, loop: register moves
    ("const", 0.03),        // scalar constants: immediates
    ("select", 0.1),        // a conditional move
    ("compare", 0.1),       // integer comparisons and eqz: fused into a branch or a setcc
    ("shift", 0.1),         // shifts and rotates
    ("bits", 0.1),          // clz, ctz, popcnt
    ("convert", 0.05),      // wrap, extend, sign extension
    ("alu", 0.1),           // add, sub, and, or, xor, and everything not classed elsewhere
    ("mul", 0.3),           // integer multiply
    ("div", 5.0),           // integer divide and remainder
    ("load", 0.3),          // full-width loads
    ("load_narrow", 0.3),   // extending loads (8, 16, 32 bits)
    ("store", 0.3),         // full-width stores
    ("store_narrow", 0.3),  // narrowing stores (8, 16, 32 bits)
    ("float", 0.3),         // float arithmetic, compares, conversions
    ("fdiv", 3.0),          // float divide and square root
    ("global", 0.3),        // global.get/set: loads and stores of the instance
    ("call", 1.5),          // direct calls
    ("call_indirect", 2.5), // calls through a table or a reference: a type check and a jump
    ("memory_op", 10.0),    // memory.grow/copy/fill/init, table.grow/copy/fill/init
    ("bytes", 0.05),        // bytes of memory.copy/fill/init: memcpy speed
];

/// The class of an operator, by its wasmparser name (one of [`CLASSES`], never `entry` or
/// `bytes`).
fn class_of(name: &str) -> &'static str {
    const LOCAL: &[&str] = &[
        "LocalGet", "LocalSet", "LocalTee", "Drop", "Nop", "Block", "Loop",
    ];
    const BRANCH: &[&str] = &["Br", "BrIf", "If", "Return", "Unreachable"];
    const CALL: &[&str] = &["Call", "ReturnCall"];
    const CALL_INDIRECT: &[&str] = &[
        "CallIndirect",
        "ReturnCallIndirect",
        "CallRef",
        "ReturnCallRef",
    ];
    const MEMORY_OP: &[&str] = &[
        "MemoryGrow",
        "MemoryCopy",
        "MemoryFill",
        "MemoryInit",
        "MemoryDiscard",
        "TableGrow",
        "TableCopy",
        "TableFill",
        "TableInit",
    ];
    const CONVERT: &[&str] = &[
        "I32WrapI64",
        "I64ExtendI32S",
        "I64ExtendI32U",
        "I32Extend8S",
        "I32Extend16S",
        "I64Extend8S",
        "I64Extend16S",
        "I64Extend32S",
    ];
    // Scalar integer operators: not vector (`I32x4…`), not atomic.
    let int = (name.starts_with("I32") || name.starts_with("I64"))
        && !name.contains('x')
        && !name.contains("Atomic");
    let int_suffix = |suffixes: &[&str]| int && suffixes.iter().any(|s| name.ends_with(s));
    // An extending load or a narrowing store: the access's width follows its name.
    let narrow = int
        && ["Load8", "Load16", "Load32", "Store8", "Store16", "Store32"]
            .iter()
            .any(|w| name.contains(w));
    if LOCAL.contains(&name) {
        "local"
    } else if name.ends_with("Const") && !name.contains('x') {
        "const"
    } else if BRANCH.contains(&name) {
        "branch"
    } else if name == "BrTable" {
        "br_table"
    } else if CALL.contains(&name) {
        "call"
    } else if CALL_INDIRECT.contains(&name) {
        "call_indirect"
    } else if name == "GlobalGet" || name == "GlobalSet" {
        "global"
    } else if MEMORY_OP.contains(&name) {
        // Operations that call into the runtime; `memory.size`, `table.get` and the drops
        // are loads and stores of the instance's state.
        "memory_op"
    } else if name.contains("Load") {
        if narrow { "load_narrow" } else { "load" }
    } else if name.contains("Store") {
        if narrow { "store_narrow" } else { "store" }
    } else if int_suffix(&["Div", "DivS", "DivU", "RemS", "RemU"]) {
        "div"
    } else if matches!(name, "F32Div" | "F64Div" | "F32Sqrt" | "F64Sqrt") {
        "fdiv"
    } else if name.starts_with("F32")
        || name.starts_with("F64")
        || int && ["Trunc", "Reinterpret"].iter().any(|w| name.contains(w))
    {
        "float"
    } else if name == "I32Mul" || name == "I64Mul" {
        "mul"
    } else if int_suffix(&[
        "Eqz", "Eq", "Ne", "LtS", "LtU", "GtS", "GtU", "LeS", "LeU", "GeS", "GeU",
    ]) {
        "compare"
    } else if int_suffix(&["Shl", "ShrS", "ShrU", "Rotl", "Rotr"]) {
        "shift"
    } else if int_suffix(&["Clz", "Ctz", "Popcnt"]) {
        "bits"
    } else if CONVERT.contains(&name) {
        "convert"
    } else if name == "Select" || name == "TypedSelect" {
        "select"
    } else {
        "alu"
    }
}

/// The fitted table's description.
const DESCRIPTION: &str = "Calibrated so that cost tracks CPU time on wasmtime 48/Cranelift \
    x86-64; 1 unit is about 0.005-0.010 ns of a plain (uninstrumented) run on the guest suite. \
    Fitted by `tally-bench calibrate`: one weight per operator class (24 classes: function \
    entry, branch, br_table, locals, constants, select, compare, shift, bit count, conversion, \
    other integer ALU, multiply, divide, full and narrow loads, full and narrow stores, float, \
    float divide/sqrt, global, call, indirect call, runtime-calling memory/table operation, bulk \
    bytes) minimising the largest spread (max/min) of ns per unit across the suite on any of \
    the machines measured, by linear programs, then closest in ratio to a per-class prior among \
    the weights within 5% of that spread. See docs/metering.md.";

/// Index of a class in [`CLASSES`].
fn class_index(class: &str) -> usize {
    CLASSES
        .iter()
        .position(|(c, _)| *c == class)
        .expect("a class of CLASSES")
}

/// Classes that may weigh nothing: register moves and immediates. Every other class weighs
/// at least one unit, so that no real work is free.
const FREE: &[&str] = &["local", "const"];

/// The base table weighs the branches (which every table must weigh) and function entries 1,
/// everything else 0; the probe of `class` adds 1 to that class. Its count minus the base's is
/// how often the class executes, exactly.
fn probe_table(class: Option<&str>) -> anyhow::Result<CostTable> {
    let mut operators = serde_json::Map::new();
    for (name, _) in CostTable::preset("default").context("preset")?.weights() {
        if name == "End" || name == "Else" {
            continue;
        }
        let c = class_of(name);
        let w = u32::from(matches!(c, "branch" | "br_table")) + u32::from(Some(c) == class);
        operators.insert(name.to_string(), w.into());
    }
    let entry = 1 + u32::from(class == Some("entry"));
    let bytes = u32::from(class == Some("bytes"));
    let json = serde_json::json!({
        "name": "probe", "default_weight": 0, "function_entry": entry, "operators": operators,
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
/// How far above the smallest spread the chosen weights may be (see [`fit`]). With the 24
/// classes, 5% of slack lets the prior hold weights that only one or two workloads pin down
/// near their cost: on the 2026-12-07 measurements the fit without any one workload then
/// spreads at most 3.59× over all of them (bulkmem excepted), against 4.62× with 2% of slack.
const SPREAD_SLACK: f64 = 1.05;

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
        let mut counts = std::collections::BTreeMap::new();
        for (class, _) in CLASSES {
            let n = count(workload, engine, &probe_table(Some(class))?)? - base;
            counts.insert(class.to_string(), n);
        }
        eprintln!(
            "{:<16} {:>12.0} ns  counts {:?}",
            workload.name, best, counts
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
    let rows: Vec<Row> = match &args.measurements {
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
    // One set of samples per machine, this one's first; every set has the same workloads.
    let mut machines = vec![rows.clone()];
    for path in &args.also {
        let other: Vec<Row> = serde_json::from_slice(
            &std::fs::read(path).with_context(|| format!("reading {}", path.display()))?,
        )
        .with_context(|| format!("parsing {}", path.display()))?;
        let names = |rows: &[Row]| rows.iter().map(|r| r.name.clone()).collect::<Vec<_>>();
        anyhow::ensure!(
            names(&other) == names(&rows),
            "{} measures other workloads than this machine",
            path.display()
        );
        machines.push(other);
    }
    let samples: Vec<Vec<Sample>> = machines
        .iter()
        .map(|rows| rows.iter().map(Sample::of).collect())
        .collect::<anyhow::Result<_>>()?;
    let sets = |skip: Option<usize>| -> Vec<Vec<&Sample>> {
        samples
            .iter()
            .map(|set| {
                set.iter()
                    .enumerate()
                    .filter(|&(j, _)| Some(j) != skip)
                    .map(|(_, r)| r)
                    .collect()
            })
            .collect()
    };
    let all_sets = sets(None);
    // Bounds per class, in units: every class of real work at least 1 so that nothing is
    // free; register moves and constants may cost nothing.
    let bounds: Vec<(f64, f64)> = CLASSES
        .iter()
        .map(|(c, _)| (if FREE.contains(c) { 0.0 } else { 1.0 }, WEIGHT_CAP))
        .collect();
    let x = fit(&all_sets, &bounds)?;
    let rounded: Vec<f64> = x.iter().map(|w| w.round()).collect();
    for (m, set) in all_sets.iter().enumerate() {
        println!(
            "spread of the fit on machine {m}: {:.3} (exact weights), {:.3} (whole units)",
            model_spread(set, &x),
            model_spread(set, &rounded)
        );
    }
    println!("units per execution (fitted, whole; prior ns):");
    for (i, (class, prior)) in CLASSES.iter().enumerate() {
        println!(
            "  {:<14} {:>9.2} {:>6} {:>6}",
            class, x[i], rounded[i], prior
        );
    }
    // Leave one out: fit without a workload, then measure the spread over all of them. This
    // is how well the table can be expected to hold for a program it was not fitted to.
    println!("leave one out (fit without the workload, largest spread over all):");
    let mut worst: f64 = 0.0;
    for (i, row) in rows.iter().enumerate() {
        let held = fit(&sets(Some(i)), &bounds)?;
        let s = all_sets
            .iter()
            .map(|set| model_spread(set, &held))
            .fold(0.0, f64::max);
        worst = worst.max(s);
        println!("  {:<16} {:.3}", row.name, s);
    }
    println!("  worst            {worst:.3}");
    let weight_of = |class: &str| rounded[class_index(class)] as u32;
    let mut operators = serde_json::Map::new();
    for (name, _) in CostTable::preset("default").context("preset")?.weights() {
        if name == "End" || name == "Else" {
            continue;
        }
        operators.insert(name.to_string(), weight_of(class_of(name)).into());
    }
    let bytes = weight_of("bytes");
    let table = serde_json::json!({
        "name": "default",
        "description": DESCRIPTION,
        "default_weight": weight_of("alu"),
        "function_entry": weight_of("entry"),
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

/// One workload's measurements, as kept in the measurements file: best plain run time and
/// executions per class, by class name.
#[derive(Clone, serde::Serialize, serde::Deserialize)]
struct Row {
    name: String,
    ns: f64,
    counts: std::collections::BTreeMap<String, f64>,
}

/// A row's executions in the order of [`CLASSES`].
struct Sample {
    ns: f64,
    counts: Vec<f64>,
}

impl Sample {
    fn of(row: &Row) -> anyhow::Result<Sample> {
        let counts = CLASSES
            .iter()
            .map(|(class, _)| {
                row.counts.get(*class).copied().with_context(|| {
                    format!(
                        "the measurements of {} have no class {class}; measure again with --remeasure",
                        row.name
                    )
                })
            })
            .collect::<anyhow::Result<_>>()?;
        Ok(Sample { ns: row.ns, counts })
    }
}

/// The model's predicted units for one workload.
fn predicted(row: &Sample, x: &[f64]) -> f64 {
    row.counts.iter().zip(x).map(|(n, w)| n * w).sum()
}

/// Spread (max/min) of measured ns per predicted unit over `rows`.
fn model_spread(rows: &[&Sample], x: &[f64]) -> f64 {
    let ratios: Vec<f64> = rows.iter().map(|r| r.ns / predicted(r, x)).collect();
    spread(&ratios)
}

/// Minimax fit: weights `x` (per execution, in units) within `bounds` that minimise the
/// largest spread of ns per unit over the workloads of any one machine of `sets` (one set of
/// measurements per machine, of the same workloads), in linear programs.
///
/// 1. For a spread v, the weights must satisfy, for every workload w of machine m,
///    P_w(x) ≥ s_m·t_w,m and P_w(x) ≤ v·s_m·t_w,m, where P_w is the predicted cost, t_w,m the
///    measured time in units of [`UNIT_NS`] and s_m a scale per machine (1 for the first; a
///    machine may run every workload faster than another). Every ratio t_w,m/P_w then lies in
///    [1/(v·s_m), 1/s_m], so the spread on each machine is at most v. For a fixed v these are
///    linear; the smallest feasible v* is found by bisection (with one machine it is the
///    optimum of one linear program minimising v, to within 1e-9).
/// 2. Many weights reach about v*, some of them absurd (a class few workloads use can take any
///    weight). Keep v = [`SPREAD_SLACK`]·v* and minimise Σ_j |x_j / p_j − λ| over x and a free
///    scale λ: the weights closest, in ratio, to the prior of [`CLASSES`].
fn fit(sets: &[Vec<&Sample>], bounds: &[(f64, f64)]) -> anyhow::Result<Vec<f64>> {
    use microlp::{ComparisonOp, OptimizationDirection, Problem, Variable};
    let k = bounds.len();
    // Column scaling keeps the coefficients within a few orders of magnitude: variable j is
    // solved as y_j = x_j * scale_j with scale_j the largest executions per unit of time.
    let scale: Vec<f64> = (0..k)
        .map(|j| {
            sets.iter()
                .flatten()
                .map(|r| r.counts[j] * UNIT_NS / r.ns)
                .fold(0.0, f64::max)
                .max(1e-12)
        })
        .collect();
    // The constraints of a spread of at most `v` on every machine.
    let build = |v: f64| -> (Problem, Vec<Variable>) {
        let mut problem = Problem::new(OptimizationDirection::Minimize);
        let y: Vec<_> = bounds
            .iter()
            .zip(&scale)
            .map(|((lo, hi), s)| problem.add_var(0.0, (lo * s, hi * s)))
            .collect();
        for (m, set) in sets.iter().enumerate() {
            // s_m, or 1 for the first machine.
            let machine_scale = (m > 0).then(|| problem.add_var(0.0, (0.0, f64::INFINITY)));
            for row in set {
                let units = row.ns / UNIT_NS;
                let terms: Vec<_> = (0..k)
                    .filter(|&j| row.counts[j] > 0.0)
                    .map(|j| (y[j], row.counts[j] / units / scale[j]))
                    .collect();
                let (mut lower, mut upper) = (terms.clone(), terms);
                let (lower_bound, upper_bound) = match machine_scale {
                    Some(s_m) => {
                        lower.push((s_m, -1.0));
                        upper.push((s_m, -v));
                        (0.0, 0.0)
                    }
                    None => (1.0, v),
                };
                problem.add_constraint(lower.as_slice(), ComparisonOp::Ge, lower_bound);
                problem.add_constraint(upper.as_slice(), ComparisonOp::Le, upper_bound);
            }
        }
        (problem, y)
    };
    let solve = |problem: &Problem| match problem.solve() {
        Ok(solution) => solution
            .into_solution()
            .map(Some)
            .map_err(|_| anyhow::anyhow!("calibration LP was interrupted")),
        Err(microlp::Error::Infeasible) => Ok(None),
        Err(e) => Err(anyhow::anyhow!("calibration LP: {e}")),
    };
    let feasible = |v: f64| -> anyhow::Result<bool> { Ok(solve(&build(v).0)?.is_some()) };
    let (mut lo, mut hi) = (1.0, 2.0);
    while !feasible(hi)? {
        anyhow::ensure!(hi < 1e6, "no table of these classes fits the measurements");
        (lo, hi) = (hi, hi * 2.0);
    }
    while hi - lo > 1e-9 * hi {
        let mid = (lo + hi) / 2.0;
        if feasible(mid)? {
            hi = mid;
        } else {
            lo = mid;
        }
    }
    let (mut second, y) = build(hi * SPREAD_SLACK);
    let lambda = second.add_var(0.0, (0.0, f64::INFINITY));
    for j in 0..k {
        // d_j ≥ |x_j / p_j − λ|, with x_j = y_j / scale_j.
        let d = second.add_var(1.0, (0.0, f64::INFINITY));
        let c = 1.0 / (scale[j] * CLASSES[j].1);
        second.add_constraint([(d, 1.0), (y[j], -c), (lambda, 1.0)], ComparisonOp::Ge, 0.0);
        second.add_constraint([(d, 1.0), (y[j], c), (lambda, -1.0)], ComparisonOp::Ge, 0.0);
    }
    let solution = solve(&second)?.context("the weights within the slack are infeasible")?;
    Ok((0..k)
        .map(|j| solution.var_value(y[j]) / scale[j])
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_machine_that_runs_everything_slower_costs_the_fit_nothing() {
        // Times that one table of the classes explains exactly, on a machine and on one ten
        // million times as slow: each machine is compared with itself only (with one scale
        // for both, no spread below 10^6 fits, and the fit fails).
        let truth: Vec<f64> = (0..CLASSES.len()).map(|j| 1.0 + (j % 5) as f64).collect();
        let machine = |slowdown: f64| -> Vec<Sample> {
            (0..6)
                .map(|w| {
                    let counts: Vec<f64> = (0..CLASSES.len())
                        .map(|j| ((w * 7 + j * 3) % 11) as f64 * 1e6)
                        .collect();
                    let ns = predicted(
                        &Sample {
                            ns: 0.0,
                            counts: counts.clone(),
                        },
                        &truth,
                    ) * UNIT_NS
                        * slowdown;
                    Sample { ns, counts }
                })
                .collect()
        };
        let (a, b) = (machine(1.0), machine(1e7));
        let sets = vec![a.iter().collect::<Vec<_>>(), b.iter().collect()];
        let bounds = vec![(0.0, WEIGHT_CAP); CLASSES.len()];
        let x = fit(&sets, &bounds).unwrap();
        for set in &sets {
            assert!(
                model_spread(set, &x) <= SPREAD_SLACK + 1e-6,
                "{}",
                model_spread(set, &x)
            );
        }
    }

    #[test]
    fn every_operator_has_a_class_of_the_fit() {
        for (name, _) in CostTable::preset("default").unwrap().weights() {
            let class = class_of(name);
            assert!(
                CLASSES.iter().any(|(c, _)| *c == class) && class != "entry" && class != "bytes",
                "{name} -> {class}"
            );
        }
    }

    #[test]
    fn operators_fall_in_their_classes() {
        for (name, class) in [
            ("I32Add", "alu"),
            ("I64Eqz", "compare"),
            ("I32GeU", "compare"),
            ("F64Ge", "float"),
            ("I32x4Eq", "alu"),
            ("I64Rotl", "shift"),
            ("I32Popcnt", "bits"),
            ("I64ExtendI32U", "convert"),
            ("I32TruncSatF64S", "float"),
            ("I32Load8U", "load_narrow"),
            ("I64Load32S", "load_narrow"),
            ("I64Load", "load"),
            ("V128Load8Splat", "load"),
            ("I32Store8", "store_narrow"),
            ("I64Store32", "store_narrow"),
            ("F64Store", "store"),
            ("I32RemU", "div"),
            ("F32Sqrt", "fdiv"),
            ("I64Mul", "mul"),
            ("BrTable", "br_table"),
            ("BrIf", "branch"),
            ("CallIndirect", "call_indirect"),
            ("ReturnCall", "call"),
            ("MemoryFill", "memory_op"),
            ("I64Const", "const"),
            ("LocalTee", "local"),
            ("Select", "select"),
            ("GlobalSet", "global"),
        ] {
            assert_eq!(class_of(name), class, "{name}");
        }
    }
}

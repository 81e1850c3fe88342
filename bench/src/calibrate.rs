//! Calibration of the `default` cost table: fit one weight per operator class so that cost
//! tracks CPU time across the workload suite.
//!
//! Method: for every workload, (1) time the plain run (best of `--runs`), (2) count how often
//! each operator class executes, by instrumenting with a table that weighs only that class (plus
//! the control operators every table must weigh) and subtracting the control-only count, then
//! (3) fit nanoseconds per class (each at least 0.02 ns, register moves at least 0) minimising Σ (predicted / measured − 1)² by
//! projected coordinate descent, and (4) scale to integer units of 0.01 ns (capped at 255, what wasmtime's `u8` operator costs take). It prints the fitted
//! table and the spread (max/min of ns per unit) of the fitted, the current `default` and the
//! uniform table on the same measurements.

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
    } else if name.starts_with("Memory")
        || name.starts_with("Table")
        || name.starts_with("Data")
        || name.starts_with("Elem")
    {
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

/// Runs the calibration and prints the fitted table.
pub fn run(args: &Args) -> anyhow::Result<()> {
    let engine = engine(false, false)?;
    let mut rows: Vec<(String, f64, Vec<f64>)> = Vec::new();
    let all = workloads(&args.guests, None, false)?;
    for workload in all.iter().filter(|w| w.name != "noop") {
        let module = Module::new(&engine, &workload.wasm)?;
        let mut best = f64::INFINITY;
        for _ in 0..args.runs {
            let started = Instant::now();
            run_once(&engine, &module, &workload.args, false, false)?;
            best = best.min(started.elapsed().as_secs_f64() * 1e9);
        }
        let base = count(workload, &engine, &probe_table(None)?)?;
        let mut counts = vec![base];
        for class in CLASSES {
            counts.push(count(workload, &engine, &probe_table(Some(class))?)? - base);
        }
        eprintln!(
            "{:<16} {:>12.0} ns  counts {:?}",
            workload.name,
            best,
            counts.iter().map(|c| *c as u64).collect::<Vec<_>>()
        );
        rows.push((workload.name.clone(), best, counts));
    }
    // Fit x >= 0 (ns per execution of each class; index 0 is control + function entry).
    let k = CLASSES.len() + 1;
    // Every class but register moves keeps a floor of 0.02 ns, so that no real work is free
    // even where the fit could trade it for another class.
    let floor: Vec<f64> = std::iter::once(0.02)
        .chain(
            CLASSES
                .iter()
                .map(|c| if *c == "free" { 0.0 } else { 0.02 }),
        )
        .collect();
    let mut x = vec![0.3; k];
    for _ in 0..20_000 {
        for j in 0..k {
            let (mut grad, mut hess) = (0.0, 0.0);
            for (_, t, n) in &rows {
                let predicted: f64 = n.iter().zip(&x).map(|(a, b)| a * b).sum();
                let r = predicted / t - 1.0;
                grad += r * n[j] / t;
                hess += (n[j] / t).powi(2);
            }
            if hess > 0.0 {
                x[j] = (x[j] - grad / hess).max(floor[j]);
            }
        }
    }
    // Units of 0.01 ns, clamped to what wasmtime's u8 operator costs can express.
    let unit = |ns: f64, min: u32| ((ns / 0.01).round() as u32).clamp(min, 255);
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
        operators.insert(
            name.to_string(),
            unit(x[index], u32::from(c == "control")).into(),
        );
    }
    let bytes = unit(x[CLASSES.len()], 0);
    let table = serde_json::json!({
        "name": "default",
        "default_weight": unit(x[2], 0),
        "function_entry": unit(x[0], 1),
        "operators": operators,
        "variable": {
            "memory_copy_per_byte": bytes, "memory_fill_per_byte": bytes, "memory_init_per_byte": bytes,
            "memory_grow_per_page": 255, "table_copy_per_element": 2, "table_fill_per_element": 2,
            "table_init_per_element": 2, "table_grow_per_element": 2
        }
    });
    let fitted = CostTable::from_json(&table.to_string())?;
    let exact: Vec<f64> = rows
        .iter()
        .map(|(_, t, n)| t / n.iter().zip(&x).map(|(a, b)| a * b).sum::<f64>())
        .collect();
    println!(
        "spread of the unrounded fit (ns per ns): {:.3}",
        spread(&exact)
    );
    println!("class ns per execution:");
    println!("  {:<10} {:.4}", "control", x[0]);
    for (i, class) in CLASSES.iter().enumerate() {
        println!("  {:<10} {:.4}", class, x[i + 1]);
    }
    let per = |costs: &CostTable| -> anyhow::Result<Vec<f64>> {
        all.iter()
            .filter(|w| w.name != "noop")
            .zip(&rows)
            .map(|(w, (_, t, _))| Ok(t / count(w, &engine, costs)?))
            .collect()
    };
    let fitted_ns = per(&fitted)?;
    let default_ns = per(&CostTable::preset("default").context("preset")?)?;
    let uniform_ns = per(&CostTable::preset("wasmtime-fuel").context("preset")?)?;
    println!(
        "{:<16} {:>10} {:>10} {:>10}",
        "workload", "fitted", "default", "uniform"
    );
    for (i, (name, _, _)) in rows.iter().enumerate() {
        println!(
            "{:<16} {:>10.4} {:>10.4} {:>10.4}",
            name, fitted_ns[i], default_ns[i], uniform_ns[i]
        );
    }
    println!(
        "spread (max/min ns per unit): fitted {:.3}, current default {:.3}, uniform {:.3}",
        spread(&fitted_ns),
        spread(&default_ns),
        spread(&uniform_ns)
    );
    println!("{}", fitted.to_json());
    Ok(())
}

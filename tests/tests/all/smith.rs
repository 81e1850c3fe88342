//! Oracles on generated modules: 2,000+ wasm-smith modules (deterministic seeds), each checked by
//! [`check_module`]: optimized vs naive (count, outcome, state), instrumented vs original
//! (results, trap codes, state) and wasmtime fuel vs tally on calls that return. Presets
//! alternate by seed so both are covered.
//!
//! A failing seed is written to `$TMPDIR/tally-smith-<seed>.wasm` for minimisation;
//! `TALLY_SMITH_MODULES=N` and `TALLY_SMITH_SEED=S` (one seed) change the run.

use std::collections::BTreeMap;
use std::panic::AssertUnwindSafe;
use std::time::Instant;

use arbitrary::Unstructured;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use tally_instrument::CostTable;
use wasmparser::{Operator, Parser, Payload};

use crate::differential::{Report, check_module};
use crate::support::fuel_comparable;

const MODULES_DEFAULT: u64 = 2_000;
const BUDGET: u64 = 100_000;
const WORKERS: u64 = 2;
/// At most this share of modules may be skipped as unsupported.
const SKIPPED_PERCENT_MAX: u64 = 10;

fn smith_config() -> wasm_smith::Config {
    wasm_smith::Config {
        // Only what we can provide: nothing to import, no start function (so the budget can be
        // set before anything runs), everything exported (so state can be compared).
        max_imports: 0,
        allow_start_export: false,
        export_everything: true,
        min_funcs: 1,
        max_funcs: 12,
        max_instructions: 120,
        max_nesting_depth: 8,
        max_memories: 2,
        max_tables: 2,
        max_table_elements: 1_000,
        max_memory32_bytes: 4 << 16,
        max_data_segments: 8,
        max_element_segments: 8,
        max_globals: 16,
        max_types: 24,
        // On: the proposals tally meters.
        bulk_memory_enabled: true,
        reference_types_enabled: true,
        multi_value_enabled: true,
        tail_call_enabled: true,
        saturating_float_to_int_enabled: true,
        sign_extension_ops_enabled: true,
        simd_enabled: true,
        relaxed_simd_enabled: false,
        extended_const_enabled: true,
        // Off: what tally does not meter (or wasmtime does not run here).
        exceptions_enabled: false,
        gc_enabled: false,
        threads_enabled: false,
        shared_everything_threads_enabled: false,
        memory64_enabled: false,
        custom_page_sizes_enabled: false,
        wide_arithmetic_enabled: false,
        ..wasm_smith::Config::default()
    }
}

/// The module for `seed`, or `None` if wasm-smith ran out of input.
fn generate(seed: u64) -> Option<Vec<u8>> {
    let mut rng = StdRng::seed_from_u64(seed);
    let mut bytes = vec![0u8; rng.random_range(2_000..16_000)];
    rng.fill(&mut bytes[..]);
    let mut u = Unstructured::new(&bytes);
    wasm_smith::Module::new(smith_config(), &mut u)
        .ok()
        .map(|m| m.to_bytes())
}

/// Seeds rotate through `wasmtime-fuel`, `default`, and `default` as wasmtime's fuel can express
/// it (entry weight 1, weights capped at 255), so that fuel checks a non-uniform table too.
fn costs_for(seed: u64) -> CostTable {
    match seed % 3 {
        0 => CostTable::preset("wasmtime-fuel").unwrap(),
        1 => CostTable::preset("default").unwrap(),
        _ => fuel_comparable(&CostTable::preset("default").unwrap()),
    }
}

/// Whether the module contains a variable-cost operator (bulk memory/table op or a grow).
fn has_bulk_ops(wasm: &[u8]) -> bool {
    for payload in Parser::new(0).parse_all(wasm) {
        let Ok(Payload::CodeSectionEntry(body)) = payload else {
            continue;
        };
        let Ok(mut reader) = body.get_operators_reader() else {
            continue;
        };
        while let Ok(op) = reader.read() {
            if matches!(
                op,
                Operator::MemoryCopy { .. }
                    | Operator::MemoryFill { .. }
                    | Operator::MemoryInit { .. }
                    | Operator::TableCopy { .. }
                    | Operator::TableFill { .. }
                    | Operator::TableInit { .. }
            ) {
                return true;
            }
        }
    }
    false
}

#[derive(Default)]
struct Totals {
    generated: u64,
    not_generated: u64,
    skipped: BTreeMap<String, u64>,
    instantiation_failed: u64,
    modules_with_bulk_ops_run: u64,
    /// Modules with a loop that keeps its count in a register, and of them those with a call
    /// that trapped.
    modules_with_register_loops_run: u64,
    modules_with_register_loops_trapped: u64,
    report: Report,
    failures: Vec<String>,
}

fn run_seed(seed: u64, totals: &mut Totals) {
    let Some(wasm) = generate(seed) else {
        totals.not_generated += 1;
        return;
    };
    totals.generated += 1;
    let costs = costs_for(seed);
    let preset = costs.name().to_string();
    let register_loops =
        match tally_instrument::instrument(&wasm, &costs, &tally_instrument::Options::default()) {
            Err(tally_instrument::Error::Unsupported(what)) => {
                *totals.skipped.entry(what).or_default() += 1;
                return;
            }
            Ok(out) => out.stats.register_loops > 0,
            Err(_) => false,
        };
    let result = std::panic::catch_unwind(AssertUnwindSafe(|| check_module(&wasm, &costs, BUDGET)));
    let failure = match result {
        Ok(Ok(report)) => {
            if report.instantiation_failed {
                totals.instantiation_failed += 1;
            } else if has_bulk_ops(&wasm) && report.returned > 0 {
                totals.modules_with_bulk_ops_run += 1;
            }
            if register_loops && report.calls > 0 {
                totals.modules_with_register_loops_run += 1;
                if !report.trapped.is_empty() {
                    totals.modules_with_register_loops_trapped += 1;
                }
            }
            totals.report.add(&report);
            return;
        }
        Ok(Err(message)) => message,
        Err(panic) => format!(
            "panic: {}",
            panic
                .downcast_ref::<String>()
                .cloned()
                .or_else(|| panic.downcast_ref::<&str>().map(|s| s.to_string()))
                .unwrap_or_default()
        ),
    };
    let path = std::env::temp_dir().join(format!("tally-smith-{seed}.wasm"));
    std::fs::write(&path, &wasm).unwrap();
    if let Ok(text) = wasmprinter::print_bytes(&wasm) {
        std::fs::write(path.with_extension("wat"), text).unwrap();
    }
    totals.failures.push(format!(
        "seed {seed} ({preset}, {}): {failure}",
        path.display()
    ));
}

#[test]
fn generated_modules_agree_with_both_oracles() {
    let started = Instant::now();
    let seeds: Vec<u64> = match std::env::var("TALLY_SMITH_SEED") {
        Ok(seed) => vec![seed.parse().unwrap()],
        Err(_) => {
            let n = std::env::var("TALLY_SMITH_MODULES")
                .map_or(MODULES_DEFAULT, |n| n.parse().unwrap());
            (0..n).collect()
        }
    };
    let single = seeds.len() == 1;
    let workers: Vec<_> = (0..WORKERS)
        .map(|worker| {
            let seeds: Vec<u64> = seeds
                .iter()
                .copied()
                .filter(|s| s % WORKERS == worker)
                .collect();
            std::thread::spawn(move || {
                let mut totals = Totals::default();
                for seed in seeds {
                    run_seed(seed, &mut totals);
                }
                totals
            })
        })
        .collect();
    let mut all = Totals::default();
    for worker in workers {
        let t = worker.join().unwrap();
        all.generated += t.generated;
        all.not_generated += t.not_generated;
        for (what, n) in t.skipped {
            *all.skipped.entry(what).or_default() += n;
        }
        all.instantiation_failed += t.instantiation_failed;
        all.modules_with_bulk_ops_run += t.modules_with_bulk_ops_run;
        all.modules_with_register_loops_run += t.modules_with_register_loops_run;
        all.modules_with_register_loops_trapped += t.modules_with_register_loops_trapped;
        all.report.add(&t.report);
        all.failures.extend(t.failures);
    }
    let skipped: u64 = all.skipped.values().sum();
    let r = &all.report;
    eprintln!(
        "wasm-smith: {} modules generated ({} seeds gave no module) in {:.1?}\n  \
         skipped as unsupported: {skipped} {:?}\n  instantiation failed (all variants alike): {}\n  \
         calls {}: returned {}, trapped {:?}, exhausted {}, stack overflows {}\n  \
         fuel compared on {} calls; memory grew on {} calls; {} modules with bulk ops returned; \
         {} ops in total\n  modules with register loops run: {} ({} with a trap)\n  failures: {}",
        all.generated,
        all.not_generated,
        started.elapsed(),
        all.skipped,
        all.instantiation_failed,
        r.calls,
        r.returned,
        r.trapped,
        r.exhausted,
        r.stack_overflows,
        r.fuel_compared,
        r.memory_grew,
        all.modules_with_bulk_ops_run,
        r.ops,
        all.modules_with_register_loops_run,
        all.modules_with_register_loops_trapped,
        all.failures.len(),
    );
    for failure in all.failures.iter().take(20) {
        eprintln!("  {failure}");
    }
    assert!(
        all.failures.is_empty(),
        "{} generated modules disagree (first: {})",
        all.failures.len(),
        all.failures[0]
    );
    if single {
        return;
    }
    assert!(
        all.generated >= 2_000,
        "only {} modules generated",
        all.generated
    );
    assert!(
        skipped * 100 <= all.generated * SKIPPED_PERCENT_MAX,
        "{skipped} of {} modules skipped as unsupported: {:?}",
        all.generated,
        all.skipped
    );
    assert!(r.returned > 0, "no call returned");
    assert!(!r.trapped.is_empty(), "no call trapped");
    assert!(r.exhausted > 0, "no call reached the budget");
    assert!(r.memory_grew > 0, "no call grew a memory");
    assert!(
        all.modules_with_bulk_ops_run > 0,
        "no module with bulk operations ran"
    );
    assert!(r.fuel_compared > 0, "wasmtime fuel was never compared");
    assert!(
        all.modules_with_register_loops_trapped > 0,
        "no module with a register loop trapped"
    );
}

/// A tool for minimising: `TALLY_CHECK_FILE=x.wat|x.wasm [TALLY_CHECK_PRESET=default]` runs one
/// module through the same comparison (and does nothing when the variable is unset).
#[test]
fn check_file_from_env() {
    let Ok(path) = std::env::var("TALLY_CHECK_FILE") else {
        return;
    };
    let wasm = wat::parse_file(&path).unwrap();
    let preset = std::env::var("TALLY_CHECK_PRESET").unwrap_or_else(|_| "wasmtime-fuel".into());
    let costs = match preset.strip_suffix("-as-fuel") {
        Some(base) => fuel_comparable(&CostTable::preset(base).unwrap()),
        None => CostTable::preset(&preset).unwrap(),
    };
    match check_module(&wasm, &costs, BUDGET) {
        Ok(report) => eprintln!("{path}: agree: {report:?}"),
        Err(e) => panic!("{path}: {e}"),
    }
}

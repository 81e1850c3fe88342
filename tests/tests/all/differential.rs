//! The three-way comparison for one module: the optimized instrumentation against the naive
//! oracle (same outcome, same exact count, same exhausted flag, same state after every call), the
//! instrumented module against the original (same results, same trap codes, same memories and
//! globals, unless the budget stopped the instrumented run) and, on calls that return, wasmtime's
//! fuel on the original against tally's count (only for tables wasmtime can express: entry weight
//! 1, wasmtime's hard-coded value, and every weight a `u8`; see `support::fuel_comparable`).

use std::collections::BTreeMap;

use tally_instrument::{CostTable, Options};
use wasmtime::{Trap, Val};

use crate::support::{
    Metering, Outcome, Runner, default_args, first_memory_difference, fuel_can_express,
    fuel_comparable, fuel_engine_for, plain_engine,
};

/// What happened across the calls of one module, for the suite's statistics.
#[derive(Debug, Default)]
pub struct Report {
    pub calls: usize,
    pub returned: usize,
    pub trapped: BTreeMap<String, usize>,
    pub exhausted: usize,
    pub stack_overflows: usize,
    /// Calls on which wasmtime's fuel was compared with tally's count.
    pub fuel_compared: usize,
    /// Calls after which some memory was larger than before.
    pub memory_grew: usize,
    pub instantiation_failed: bool,
    /// The sum of the counts of all calls.
    pub ops: u64,
}

impl Report {
    pub fn add(&mut self, other: &Report) {
        self.calls += other.calls;
        self.returned += other.returned;
        for (code, n) in &other.trapped {
            *self.trapped.entry(code.clone()).or_default() += n;
        }
        self.exhausted += other.exhausted;
        self.stack_overflows += other.stack_overflows;
        self.fuel_compared += other.fuel_compared;
        self.memory_grew += other.memory_grew;
        self.ops += other.ops;
    }
}

fn memory_bytes(runner: &mut Runner<'_>) -> usize {
    runner
        .snapshot()
        .memories
        .iter()
        .map(|(_, bytes)| bytes.len())
        .sum()
}

/// Every offset of the meter map must be where an operator of the instrumented module starts:
/// the pass records them as it writes, and a wrong one would only show in a run that traps
/// exactly there.
fn check_meter_map_offsets(instrumented: &tally_instrument::Instrumented) -> Result<(), String> {
    let mut starts = std::collections::HashSet::new();
    for payload in wasmparser::Parser::new(0).parse_all(&instrumented.wasm) {
        let payload = payload.map_err(|e| format!("instrumented module: {e}"))?;
        let wasmparser::Payload::CodeSectionEntry(body) = payload else {
            continue;
        };
        let mut reader = body
            .get_operators_reader()
            .map_err(|e| format!("instrumented module: {e}"))?;
        while !reader.eof() {
            starts.insert(reader.original_position() as u32);
            reader
                .read()
                .map_err(|e| format!("instrumented module: {e}"))?;
        }
    }
    match instrumented
        .meter_map
        .offsets()
        .find(|offset| !starts.contains(offset))
    {
        Some(offset) => Err(format!(
            "meter map entry at {offset}, where no instruction of the output starts"
        )),
        None => Ok(()),
    }
}

/// Runs every exported function of `wasm` (default arguments, in export order, on one instance
/// per variant) under all variants and checks they agree. `Err` describes the first disagreement.
pub fn check_module(wasm: &[u8], costs: &CostTable, budget: u64) -> Result<Report, String> {
    let mut report = Report::default();
    let options = Options {
        initial_budget: budget,
        ..Options::default()
    };
    let instrumented = tally_instrument::instrument(wasm, costs, &options)
        .map_err(|e| format!("instrument: {e}"))?;
    let naive_wasm = tally_oracle::instrument_naive(wasm, costs, budget)
        .map_err(|e| format!("naive oracle: {e:#}"))?;
    check_meter_map_offsets(&instrumented)?;

    let optimized = Runner::new(
        plain_engine(),
        &instrumented.wasm,
        Metering::Optimized(&instrumented.meter_map),
    );
    let naive = Runner::new(plain_engine(), &naive_wasm, Metering::Naive);
    let fuel_engine = fuel_engine_for(costs);
    let compare_fuel = fuel_can_express(costs);
    let original = Runner::new(&fuel_engine, wasm, Metering::None);
    let (mut optimized, mut naive, mut original) = match (optimized, naive, original) {
        (Ok(a), Ok(b), Ok(c)) => (a, b, c),
        (Err(_), Err(_), Err(_)) => {
            // e.g. an active data segment out of bounds: the same for all variants
            report.instantiation_failed = true;
            return Ok(report);
        }
        (a, b, c) => {
            return Err(format!(
                "instantiation differs: optimized {:?}, naive {:?}, original {:?}",
                a.err(),
                b.err(),
                c.err()
            ));
        }
    };

    // The original runs in lock step until a call the budget stopped (it has no budget).
    let mut original_in_step = true;
    for (name, params) in optimized.exported_functions() {
        let args: Vec<Val> = default_args(&params);
        let memory_before = memory_bytes(&mut optimized);
        let o = optimized.call(&name, &args, Some(budget));
        let n = naive.call(&name, &args, Some(budget));
        report.calls += 1;

        let overflowed =
            |outcome: &Outcome| matches!(outcome, Outcome::Trapped(Some(Trap::StackOverflow)));
        if overflowed(&o.outcome) || overflowed(&n.outcome) {
            // How deep a recursion gets depends on frame sizes, which differ between the
            // variants, and so does everything after it. Both must have stopped: by the stack or
            // by the budget.
            report.stack_overflows += 1;
            let stopped = |x: &Outcome| overflowed(x) || *x == Outcome::Exhausted;
            if !stopped(&o.outcome) || !stopped(&n.outcome) {
                return Err(format!(
                    "`{name}`: optimized {:?}, naive {:?} (one overflowed the stack)",
                    o.outcome, n.outcome
                ));
            }
            return Ok(report);
        }

        if o.outcome != n.outcome {
            return Err(format!(
                "`{name}`: optimized {:?}, naive {:?}",
                o.outcome, n.outcome
            ));
        }
        if o.ops != n.ops {
            return Err(format!(
                "`{name}`: optimized count {}, naive count {} (outcome {:?})",
                o.ops, n.ops, o.outcome
            ));
        }
        report.ops += o.ops;
        let optimized_state = optimized.snapshot();
        let naive_state = naive.snapshot();
        if optimized_state != naive_state {
            return Err(format!(
                "`{name}`: state differs between optimized and naive: {:?}",
                first_memory_difference(&optimized_state, &naive_state)
                    .unwrap_or_else(|| format!("{optimized_state:?} vs {naive_state:?}"))
            ));
        }
        match &o.outcome {
            Outcome::Returned(_) => report.returned += 1,
            Outcome::Trapped(code) => {
                *report.trapped.entry(format!("{code:?}")).or_default() += 1;
            }
            Outcome::Exhausted => report.exhausted += 1,
        }
        if memory_bytes(&mut optimized) > memory_before {
            report.memory_grew += 1;
        }

        if !original_in_step {
            continue;
        }
        if o.outcome == Outcome::Exhausted {
            original_in_step = false;
            continue;
        }
        let r = original.call(&name, &args, None);
        if r.outcome != o.outcome {
            return Err(format!(
                "`{name}`: instrumented {:?}, original {:?}",
                o.outcome, r.outcome
            ));
        }
        let original_state = original.snapshot();
        if original_state != optimized_state {
            return Err(format!(
                "`{name}`: state differs between instrumented and original: {:?}",
                first_memory_difference(&optimized_state, &original_state)
                    .unwrap_or_else(|| format!("{optimized_state:?} vs {original_state:?}"))
            ));
        }
        if compare_fuel && matches!(r.outcome, Outcome::Returned(_)) {
            report.fuel_compared += 1;
            if r.fuel != o.ops {
                return Err(format!(
                    "`{name}`: wasmtime fuel {} but tally counted {} ({})",
                    r.fuel,
                    o.ops,
                    costs.name()
                ));
            }
        }
    }
    Ok(report)
}

/// The fixtures' modules, called with default arguments, pass the three-way comparison under
/// both presets.
#[test]
fn fixture_modules_agree_with_their_originals() {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("fixtures/metering");
    let mut total = Report::default();
    let mut failures = Vec::new();
    let mut paths: Vec<_> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    paths.sort();
    for path in paths
        .iter()
        .filter(|p| p.extension().is_some_and(|e| e == "wat"))
    {
        let wasm = wat::parse_file(path).unwrap();
        for preset in tally_instrument::PRESETS {
            let costs = CostTable::preset(preset).unwrap();
            let entry_1 = fuel_comparable(&costs);
            for costs in [&costs, &entry_1] {
                match check_module(&wasm, costs, 1_000_000) {
                    Ok(report) => total.add(&report),
                    Err(e) => failures.push(format!("{} ({}): {e}", path.display(), costs.name())),
                }
            }
        }
    }
    eprintln!("fixture modules, default arguments: {total:?}");
    assert!(failures.is_empty(), "{}", failures.join("\n"));
    assert!(total.returned > 0 && total.exhausted > 0 && !total.trapped.is_empty());
}

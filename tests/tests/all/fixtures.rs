//! Tests as data: `tests/fixtures/metering/*.wat`, each with hand-computed counts in its header
//! (format: `tests/fixtures/metering/README.md`). Every case runs through the optimized
//! instrumenter, the naive oracle, the original module and, when it returns, wasmtime's fuel.
//! `BLESS=1` rewrites the numeric `expect-ops` lines with the naive oracle's count.

use std::path::{Path, PathBuf};

use tally_instrument::{CostTable, OPS_MAX, Options};
use wasmtime::Val;

use crate::support::{
    Metering, Outcome, Runner, Value, fuel_comparable, fuel_engine_for, plain_engine,
};

#[derive(Clone, Debug)]
enum Expect {
    Return(Vec<String>),
    /// A trap, with the `wasmtime::Trap` variant name if given.
    Trap(Option<String>),
    Exhausted,
}

#[derive(Clone, Debug)]
enum ExpectOps {
    Exact(u64),
    MultipleOf(u64),
}

#[derive(Clone, Debug, Default)]
struct Directives {
    invoke: Option<String>,
    args: Vec<String>,
    costs: Option<String>,
    budget: Option<u64>,
    expect: Option<Expect>,
    expect_ops: Option<ExpectOps>,
    /// The line (0-based) of `expect-ops`, for BLESS.
    expect_ops_line: Option<usize>,
}

struct Case {
    line: usize,
    invoke: String,
    args: Vec<String>,
    costs: String,
    budget: u64,
    expect: Expect,
    expect_ops: ExpectOps,
    expect_ops_line: usize,
}

fn parse_expect(text: &str) -> Expect {
    let mut words = text.split_whitespace();
    match words.next() {
        Some("return") => Expect::Return(words.map(str::to_string).collect()),
        Some("trap") => Expect::Trap(words.next().map(str::to_string)),
        Some("exhausted") => Expect::Exhausted,
        _ => panic!("bad `expect: {text}`"),
    }
}

fn parse_expect_ops(text: &str) -> ExpectOps {
    match text.strip_prefix("multiple-of ") {
        Some(n) => ExpectOps::MultipleOf(n.trim().parse().expect("multiple-of N")),
        None => ExpectOps::Exact(
            text.parse()
                .unwrap_or_else(|_| panic!("bad expect-ops {text}")),
        ),
    }
}

/// Reads the directive header. Directives before the first `invoke` are file defaults.
fn parse_cases(path: &Path, text: &str) -> Vec<Case> {
    let mut defaults = Directives::default();
    let mut cases: Vec<(usize, Directives)> = Vec::new();
    for (index, line) in text.lines().enumerate() {
        let Some(comment) = line.trim_start().strip_prefix(";;") else {
            continue;
        };
        let Some((key, value)) = comment.trim().split_once(": ") else {
            continue;
        };
        let value = value.trim();
        let current = match cases.last_mut() {
            Some((_, directives)) => directives,
            None => &mut defaults,
        };
        match key {
            "invoke" => {
                let mut case = defaults.clone();
                case.invoke = Some(value.to_string());
                cases.push((index, case));
            }
            "args" => current.args = value.split_whitespace().map(str::to_string).collect(),
            "costs" => current.costs = Some(value.to_string()),
            "budget" => current.budget = Some(value.parse().expect("budget: N")),
            "expect" => current.expect = Some(parse_expect(value)),
            "expect-ops" => {
                current.expect_ops = Some(parse_expect_ops(value));
                current.expect_ops_line = Some(index);
            }
            _ => {} // free text that happens to contain ": "
        }
    }
    assert!(
        !cases.is_empty(),
        "{}: no `;; invoke:` directive",
        path.display()
    );
    cases
        .into_iter()
        .map(|(line, d)| {
            let where_ = format!("{}:{}", path.display(), line + 1);
            Case {
                line: line + 1,
                invoke: d.invoke.unwrap(),
                args: d.args,
                costs: d.costs.unwrap_or_else(|| "wasmtime-fuel".to_string()),
                budget: d.budget.unwrap_or(OPS_MAX),
                expect: d
                    .expect
                    .unwrap_or_else(|| panic!("{where_}: case without `expect`")),
                expect_ops: d
                    .expect_ops
                    .unwrap_or_else(|| panic!("{where_}: case without `expect-ops`")),
                expect_ops_line: d.expect_ops_line.unwrap(),
            }
        })
        .collect()
}

fn fixture_paths() -> Vec<PathBuf> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("fixtures/metering");
    let mut paths: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|entry| entry.unwrap().path())
        .filter(|path| path.extension().is_some_and(|e| e == "wat"))
        .collect();
    paths.sort();
    paths
}

fn outcome_matches(outcome: &Outcome, expect: &Expect) -> bool {
    match (outcome, expect) {
        (Outcome::Returned(values), Expect::Return(expected)) => {
            values.len() == expected.len()
                && values.iter().zip(expected).all(|(value, text)| {
                    let number: i64 = text.parse().expect("integer return values");
                    match value {
                        Value::I32(x) => *x == number as i32,
                        Value::I64(x) => *x == number,
                        _ => false,
                    }
                })
        }
        (Outcome::Trapped(trap), Expect::Trap(name)) => match name {
            None => true,
            Some(name) => trap.is_some_and(|t| format!("{t:?}") == *name),
        },
        (Outcome::Exhausted, Expect::Exhausted) => true,
        _ => false,
    }
}

fn ops_match(ops: u64, expect: &ExpectOps) -> bool {
    match *expect {
        ExpectOps::Exact(n) => ops == n,
        ExpectOps::MultipleOf(n) => ops > 0 && ops.is_multiple_of(n),
    }
}

/// A preset by name, or a JSON table in the fixtures directory (`name.json`).
fn cost_table(name: &str) -> CostTable {
    if name.ends_with(".json") {
        let path = Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("fixtures/metering")
            .join(name);
        CostTable::from_json(&std::fs::read_to_string(path).unwrap()).unwrap()
    } else {
        CostTable::preset(name).expect("a preset")
    }
}

/// Runs one case; returns the naive count (for BLESS) and pushes every failure to `failures`.
fn run_case(wasm: &[u8], case: &Case, where_: &str, failures: &mut Vec<String>) -> u64 {
    let mut fail = |what: String| failures.push(format!("{where_} `{}`: {what}", case.invoke));
    let costs = cost_table(&case.costs);
    let options = Options {
        initial_budget: case.budget,
        ..Options::default()
    };

    // The naive oracle.
    let naive_wasm = tally_oracle::instrument_naive(wasm, &costs, case.budget).unwrap();
    let mut naive = Runner::new(plain_engine(), &naive_wasm, Metering::Naive).unwrap();
    let params = naive
        .exported_functions()
        .into_iter()
        .find(|(name, _)| *name == case.invoke)
        .unwrap_or_else(|| panic!("{where_}: no exported function `{}`", case.invoke))
        .1;
    assert_eq!(params.len(), case.args.len(), "{where_}: argument count");
    let args: Vec<Val> = case
        .args
        .iter()
        .zip(&params)
        .map(|(text, ty)| Value::parse_arg(text, ty))
        .collect();
    let naive_run = naive.call(&case.invoke, &args, None);
    if !outcome_matches(&naive_run.outcome, &case.expect) {
        fail(format!(
            "naive outcome {:?}, expected {:?}",
            naive_run.outcome, case.expect
        ));
    }
    if !ops_match(naive_run.ops, &case.expect_ops) {
        fail(format!(
            "naive count {}, expected {:?}",
            naive_run.ops, case.expect_ops
        ));
    }

    // The optimized instrumenter.
    match tally_instrument::instrument(wasm, &costs, &options) {
        Err(e) => fail(format!("tally_instrument::instrument failed: {e}")),
        Ok(out) => {
            let mut optimized = Runner::new(
                plain_engine(),
                &out.wasm,
                Metering::Optimized(&out.meter_map),
            )
            .unwrap();
            let run = optimized.call(&case.invoke, &args, None);
            if !outcome_matches(&run.outcome, &case.expect) {
                fail(format!(
                    "optimized outcome {:?}, expected {:?}",
                    run.outcome, case.expect
                ));
            }
            if !ops_match(run.ops, &case.expect_ops) {
                fail(format!(
                    "optimized count {}, expected {:?}",
                    run.ops, case.expect_ops
                ));
            }
        }
    }

    // The original module behaves as expected (a budget stop has no counterpart there).
    if !matches!(case.expect, Expect::Exhausted) {
        let engine = fuel_engine_for(&costs);
        let mut original = Runner::new(&engine, wasm, Metering::None).unwrap();
        let run = original.call(&case.invoke, &args, None);
        if !outcome_matches(&run.outcome, &case.expect) {
            fail(format!(
                "original outcome {:?}, expected {:?}",
                run.outcome, case.expect
            ));
        }
        // wasmtime's fuel is exact for runs that complete.
        if matches!(run.outcome, Outcome::Returned(_)) && !ops_match(run.fuel, &case.expect_ops) {
            fail(format!(
                "wasmtime fuel {}, expected {:?}",
                run.fuel, case.expect_ops
            ));
        }
    }
    naive_run.ops
}

#[test]
fn check() {
    let bless = std::env::var_os("BLESS").is_some_and(|v| v == "1");
    let mut failures = Vec::new();
    let mut cases_run = 0;
    for path in fixture_paths() {
        let text = std::fs::read_to_string(&path).unwrap();
        let wasm = wat::parse_str(&text).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        let cases = parse_cases(&path, &text);
        let mut lines: Vec<String> = text.lines().map(str::to_string).collect();
        for case in &cases {
            let where_ = format!(
                "{}:{}",
                path.file_name().unwrap().to_string_lossy(),
                case.line
            );
            let naive_ops = run_case(&wasm, case, &where_, &mut failures);
            cases_run += 1;
            if bless && matches!(case.expect_ops, ExpectOps::Exact(_)) {
                lines[case.expect_ops_line] = format!(";; expect-ops: {naive_ops}");
            }
        }
        if bless {
            let mut blessed = lines.join("\n");
            blessed.push('\n');
            if blessed != text {
                std::fs::write(&path, blessed).unwrap();
            }
        }
    }
    eprintln!("fixtures: {cases_run} cases");
    assert!(
        cases_run >= 40,
        "expected at least 40 fixture cases, found {cases_run}"
    );
    assert!(
        failures.is_empty(),
        "{} fixture failures:\n{}",
        failures.len(),
        failures.join("\n")
    );
}

/// The naive oracle and the optimized instrumenter agree on every fixture case under the other
/// preset too, and wasmtime's fuel agrees on the cases that return.
#[test]
fn default_preset_agrees_on_fixtures() {
    let mut failures = Vec::new();
    for path in fixture_paths() {
        let text = std::fs::read_to_string(&path).unwrap();
        let wasm = wat::parse_str(&text).unwrap();
        for case in parse_cases(&path, &text) {
            let other = if case.costs == "default" {
                "wasmtime-fuel"
            } else {
                "default"
            };
            // Entry weight 1 (wasmtime's hard-coded value) so that fuel can be compared.
            let costs = fuel_comparable(&CostTable::preset(other).unwrap());
            let where_ = format!("{}:{} ({other})", path.display(), case.line);
            let naive_wasm = tally_oracle::instrument_naive(&wasm, &costs, case.budget).unwrap();
            let mut naive = Runner::new(plain_engine(), &naive_wasm, Metering::Naive).unwrap();
            let params = naive
                .exported_functions()
                .into_iter()
                .find(|(n, _)| *n == case.invoke)
                .unwrap()
                .1;
            let args: Vec<Val> = case
                .args
                .iter()
                .zip(&params)
                .map(|(t, ty)| Value::parse_arg(t, ty))
                .collect();
            let expected = naive.call(&case.invoke, &args, None);
            let options = Options {
                initial_budget: case.budget,
                ..Options::default()
            };
            let out = tally_instrument::instrument(&wasm, &costs, &options).unwrap();
            let mut optimized = Runner::new(
                plain_engine(),
                &out.wasm,
                Metering::Optimized(&out.meter_map),
            )
            .unwrap();
            let run = optimized.call(&case.invoke, &args, None);
            let stack_overflow = matches!(
                run.outcome,
                Outcome::Trapped(Some(wasmtime::Trap::StackOverflow))
            );
            if run.outcome != expected.outcome || (run.ops != expected.ops && !stack_overflow) {
                failures.push(format!(
                    "{where_}: optimized {:?} {} vs naive {:?} {}",
                    run.outcome, run.ops, expected.outcome, expected.ops
                ));
            }
            if let Outcome::Returned(_) = expected.outcome {
                let engine = fuel_engine_for(&costs);
                let mut original = Runner::new(&engine, &wasm, Metering::None).unwrap();
                let fuel = original.call(&case.invoke, &args, None).fuel;
                if fuel != expected.ops {
                    failures.push(format!(
                        "{where_}: wasmtime fuel {fuel} vs naive {}",
                        expected.ops
                    ));
                }
            }
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

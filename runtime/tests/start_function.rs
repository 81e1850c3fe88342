//! A start function's work is metered and billed when the instrumenter defers it
//! (`Options::defer_start`): the runtime calls it inside the invocation, under its budget.

use tally_instrument::{CostTable, Options, instrument};
use tally_runtime::{Invocation, Outcome, Runtime, RuntimeConfig};

/// A WASI command whose start function runs `n` loop iterations and then does `finish`.
fn command(finish: &str) -> Vec<u8> {
    wat::parse_str(format!(
        r#"(module
          (memory (export "memory") 1)
          (global $n (mut i32) (i32.const 0))
          (func $init
            (loop $l
              (global.set $n (i32.add (global.get $n) (i32.const 1)))
              (br_if $l (i32.lt_u (global.get $n) (i32.const 1000))))
            {finish})
          (start $init)
          (func (export "_start")))"#
    ))
    .unwrap()
}

fn run(wasm: &[u8], defer_start: bool, max_ops: u64) -> tally_runtime::UsageReport {
    let runtime = Runtime::new(&RuntimeConfig::default()).unwrap();
    let options = Options {
        defer_start,
        ..Options::default()
    };
    let instrumented =
        instrument(wasm, &CostTable::preset("wasmtime-fuel").unwrap(), &options).unwrap();
    let prepared = runtime.prepare(&instrumented).unwrap();
    let mut invocation = Invocation::new(vec!["start".into()]);
    invocation.max_ops = max_ops;
    runtime.run(&prepared, invocation).unwrap().usage
}

// Per iteration: global.get, i32.const, i32.add, global.set, global.get, i32.const, i32.lt_u,
// br_if = 8; the loop runs 1000 times; entry 1 for `$init` and 1 for `_start`.
const LOOP_OPS: u64 = 8 * 1000;

#[test]
fn a_deferred_start_function_is_billed_when_the_command_returns() {
    let usage = run(&command(""), true, 1 << 40);
    assert_eq!(usage.outcome, Outcome::Exit { code: 0 });
    assert_eq!(usage.ops, 1 + LOOP_OPS + 1);
}

#[test]
fn a_deferred_start_function_that_traps_is_billed_exactly() {
    let usage = run(&command("unreachable"), true, 1 << 40);
    assert!(
        matches!(usage.outcome, Outcome::Trap { .. }),
        "{:?}",
        usage.outcome
    );
    // `unreachable` weighs 0 in wasmtime-fuel; `_start` never ran.
    assert_eq!(usage.ops, 1 + LOOP_OPS);
}

#[test]
fn a_deferred_start_function_is_stopped_by_the_invocation_budget() {
    let usage = run(&command(""), true, 500);
    assert_eq!(usage.outcome, Outcome::BudgetExhausted);
    assert!(usage.ops > 500 && usage.ops < 600, "{} ops", usage.ops);
}

#[test]
fn a_start_function_left_in_place_cannot_be_billed_when_it_traps() {
    // The reason for deferring: a trap inside instantiation leaves no instance to read from.
    let usage = run(&command("unreachable"), false, 1 << 40);
    assert!(
        matches!(usage.outcome, Outcome::Trap { .. }),
        "{:?}",
        usage.outcome
    );
    assert_eq!(usage.ops, 0);
}

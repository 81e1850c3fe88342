//! Hostile modules: each gives a clear `Err` or instruments correctly (and then agrees with the
//! naive oracle), never panics or overflows the stack, and finishes within a few seconds.

use std::time::{Duration, Instant};

use tally_instrument::{
    CostTable, Error, FUNCTIONS_MAX, MODULE_BYTES_MAX, NESTING_DEPTH_MAX, Options,
};
use wasm_encoder::{
    BlockType, CodeSection, ExportKind, ExportSection, Function, FunctionSection, Instruction,
    Module, TypeSection, ValType,
};

use crate::differential::check_module;

/// Generous for a debug build on a 2-core machine; the point is "seconds, not minutes".
const SECONDS_MAX: u64 = 10;

fn costs() -> CostTable {
    CostTable::preset("wasmtime-fuel").unwrap()
}

/// Instruments with a time limit and turns a panic into a test failure with context.
fn instrument_timed(what: &str, wasm: &[u8]) -> Result<tally_instrument::Instrumented, Error> {
    let started = Instant::now();
    let result = std::panic::catch_unwind(|| {
        tally_instrument::instrument(wasm, &costs(), &Options::default())
    })
    .unwrap_or_else(|_| panic!("{what}: tally_instrument::instrument panicked"));
    let elapsed = started.elapsed();
    eprintln!(
        "{what}: {} in {elapsed:.1?}",
        if result.is_ok() {
            "instrumented"
        } else {
            "rejected"
        }
    );
    assert!(
        elapsed < Duration::from_secs(SECONDS_MAX),
        "{what}: took {elapsed:?}"
    );
    result
}

/// A module with one function type `() -> i32` (index 0) and the given bodies, function 0
/// exported as `run`.
fn module_with_bodies(bodies: Vec<Function>) -> Vec<u8> {
    let mut types = TypeSection::new();
    types.ty().function([], [ValType::I32]);
    let mut functions = FunctionSection::new();
    let mut code = CodeSection::new();
    for body in &bodies {
        functions.function(0);
        code.function(body);
    }
    let mut exports = ExportSection::new();
    exports.export("run", ExportKind::Func, 0);
    let mut module = Module::new();
    module
        .section(&types)
        .section(&functions)
        .section(&exports)
        .section(&code);
    module.finish()
}

#[test]
fn malformed_bytes_are_invalid() {
    let valid = wat::parse_str(r#"(module (func (export "f") (result i32) i32.const 1))"#).unwrap();
    let cases: Vec<(&str, Vec<u8>)> = vec![
        ("empty", vec![]),
        ("not wasm", b"hello, world".to_vec()),
        ("header only, wrong version", b"\0asm\x02\0\0\0".to_vec()),
        ("truncated", valid[..valid.len() - 3].to_vec()),
        ("garbage section", [&valid[..], &[0x0a, 0xff, 0xff, 0xff, 0xff, 0x0f]].concat()),
        ("component with a core module", wat::parse_str(r#"(component (core module (func (export "f"))))"#).unwrap()),
        ("type error", wat::parse_str(r#"(module (func (result i32) i64.const 1))"#).unwrap_or_else(|_| {
            // wat validates nothing, but keep the case even if it ever starts to
            b"\0asm\x01\0\0\0\x01\x05\x01\x60\0\x01\x7f\x03\x02\x01\0\x0a\x06\x01\x04\0\x42\x01\x0b".to_vec()
        })),
    ];
    for (what, wasm) in cases {
        match instrument_timed(what, &wasm) {
            Err(Error::Invalid(message)) => assert!(!message.is_empty(), "{what}"),
            other => panic!(
                "{what}: expected Error::Invalid, got {:?}",
                other.map(|_| ())
            ),
        }
        assert!(
            tally_oracle::instrument_naive(&wasm, &costs(), 0).is_err(),
            "{what}: naive"
        );
    }
}

/// Found by this suite: the 8-byte empty component `(component)` is not a core module, but
/// `instrument` returns a core module for it.
#[test]
fn regression_empty_component_is_rejected() {
    let wasm = wat::parse_str("(component)").unwrap();
    assert!(
        tally_oracle::instrument_naive(&wasm, &costs(), 0).is_err(),
        "naive"
    );
    match instrument_timed("empty component", &wasm) {
        Err(Error::Invalid(message)) => assert!(!message.is_empty()),
        other => panic!("expected Error::Invalid, got {:?}", other.map(|_| ())),
    }
}

#[test]
fn oversized_module_is_too_large() {
    let mut wasm = b"\0asm\x01\0\0\0".to_vec();
    wasm.resize(MODULE_BYTES_MAX + 1, 0);
    match instrument_timed("oversized", &wasm) {
        Err(Error::TooLarge(bytes)) => assert_eq!(bytes, MODULE_BYTES_MAX + 1),
        other => panic!("expected Error::TooLarge, got {:?}", other.map(|_| ())),
    }
}

#[test]
fn reserved_names_are_rejected() {
    let cases = [
        r#"(module (global (export "__tally_ops") (mut i64) (i64.const 0)))"#,
        r#"(module (func (export "__tally_budget")))"#,
        r#"(module (memory (export "__tally_exhausted") 1))"#,
        r#"(module (import "env" "__tally_ops" (global (mut i64))))"#,
        r#"(module (import "env" "__tally_budget" (func)))"#,
        r#"(module (import "env" "__tally_exhausted" (memory 1)))"#,
    ];
    for wat in cases {
        let wasm = wat::parse_str(wat).unwrap();
        match instrument_timed(wat, &wasm) {
            Err(Error::ReservedName(name)) => {
                assert!(name.starts_with("__tally_"), "{wat}: {name}");
                let message = Error::ReservedName(name).to_string();
                assert!(message.contains("reserved name"), "{message}");
            }
            other => panic!(
                "{wat}: expected Error::ReservedName, got {:?}",
                other.map(|_| ())
            ),
        }
        let naive = tally_oracle::instrument_naive(&wasm, &costs(), 0).unwrap_err();
        assert!(
            naive.to_string().contains("reserved name"),
            "{wat}: {naive}"
        );
    }
}

/// `depth` nested blocks around `i32.const 1`.
fn nested_blocks(depth: usize) -> Vec<u8> {
    let mut body = Function::new([]);
    for _ in 0..depth {
        body.instruction(&Instruction::Block(BlockType::Result(ValType::I32)));
    }
    body.instruction(&Instruction::I32Const(1));
    for _ in 0..depth {
        body.instruction(&Instruction::End);
    }
    body.instruction(&Instruction::End);
    module_with_bodies(vec![body])
}

/// Runs the calling test's body in a child process (the same test binary, `--exact name`), so that
/// a stack overflow, which aborts the process, fails this one test instead of the whole suite.
/// The body runs on the child's test thread: Rust's default 2 MiB stack, like a tokio blocking
/// thread. Returns `true` in the child, which should then run the body.
fn in_child_process(name: &str) -> bool {
    const CHILD: &str = "TALLY_HOSTILE_CHILD";
    if std::env::var(CHILD).is_ok_and(|n| n == name) {
        return true;
    }
    let output = std::process::Command::new(std::env::current_exe().unwrap())
        .args([name, "--exact", "--nocapture", "--test-threads=1"])
        .env(CHILD, name)
        .env_remove("RUST_MIN_STACK")
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        output.status.success() && String::from_utf8_lossy(&output.stdout).contains("1 passed"),
        "{name} failed in its child process ({}):\n{stderr}",
        output.status
    );
    eprint!("{stderr}");
    false
}

#[test]
fn ten_thousand_nested_blocks_are_a_limit_error() {
    if !in_child_process("hostile::ten_thousand_nested_blocks_are_a_limit_error") {
        return;
    }
    let wasm = nested_blocks(10_000);
    match instrument_timed("10,000 nested blocks", &wasm) {
        Err(Error::Limit(message)) => assert!(message.contains("nested"), "{message}"),
        other => panic!("expected Error::Limit, got {:?}", other.map(|_| ())),
    }
}

/// Found by this suite: `FunctionPass::plan` recurses once per nesting level; in the test (debug)
/// profile about 300 nested blocks exhaust a 2 MiB stack, far below `NESTING_DEPTH_MAX`, and a
/// stack overflow aborts the whole process.
#[test]
fn regression_nesting_at_the_limit_fits_a_2_mib_stack() {
    if !in_child_process("hostile::regression_nesting_at_the_limit_fits_a_2_mib_stack") {
        return;
    }
    let wasm = nested_blocks(NESTING_DEPTH_MAX);
    let out = instrument_timed("blocks nested at the limit", &wasm).expect("at the limit");
    assert!(wasmparser::Validator::new().validate_all(&out.wasm).is_ok());
}

#[test]
fn deeply_nested_loops_are_counted() {
    if !in_child_process("hostile::deeply_nested_loops_are_counted") {
        return;
    }
    // Nested loops, each with a `br_if` to itself that is never taken, so every level is a
    // check point. (200, not NESTING_DEPTH_MAX: see the regression test above.)
    let depth = 200;
    let mut body = Function::new([(1, ValType::I32)]);
    for _ in 0..depth {
        body.instruction(&Instruction::Loop(BlockType::Empty));
    }
    // Leave each loop by falling through; one br_if per level that is never taken.
    for _ in 0..depth {
        body.instruction(&Instruction::I32Const(0));
        body.instruction(&Instruction::BrIf(0));
        body.instruction(&Instruction::End);
    }
    body.instruction(&Instruction::I32Const(7));
    body.instruction(&Instruction::End);
    let wasm = module_with_bodies(vec![body]);
    instrument_timed("200 nested loops", &wasm).expect("accepted");
    let report = check_module(&wasm, &costs(), 1 << 40).unwrap();
    // entry 1 + depth × (i32.const + br_if) + i32.const 1
    assert_eq!(report.ops, 1 + 2 * depth as u64 + 1);
}

#[test]
fn one_hundred_thousand_functions() {
    let functions = 100_000;
    let mut bodies = Vec::with_capacity(functions);
    // run: calls functions 1 and 99,999, adds their results.
    let mut run = Function::new([]);
    run.instruction(&Instruction::Call(1));
    run.instruction(&Instruction::Call(functions as u32 - 1));
    run.instruction(&Instruction::I32Add);
    run.instruction(&Instruction::End);
    bodies.push(run);
    for i in 1..functions {
        let mut f = Function::new([]);
        f.instruction(&Instruction::I32Const(i as i32));
        f.instruction(&Instruction::End);
        bodies.push(f);
    }
    let wasm = module_with_bodies(bodies);
    let instrumented = instrument_timed("100,000 functions", &wasm).expect("below FUNCTIONS_MAX");
    assert_eq!(instrumented.stats.functions, functions);
    let started = Instant::now();
    let naive = tally_oracle::instrument_naive(&wasm, &costs(), u64::MAX >> 2).unwrap();
    eprintln!(
        "100,000 functions: naive oracle in {:.1?}",
        started.elapsed()
    );
    // Compiling 100,000 functions three times is slow in a debug build, so run the count check
    // on the optimized and the naive output only: run = entry 1 + call + call + i32.add = 4,
    // each callee entry 1 + i32.const 1 = 2: 8.
    use crate::support::{Metering, Runner, plain_engine};
    let mut optimized = Runner::new(
        plain_engine(),
        &instrumented.wasm,
        Metering::Optimized(&instrumented.meter_map),
    )
    .unwrap();
    let result = optimized.call("run", &[], None);
    assert_eq!(result.ops, 8);
    let mut naive = Runner::new(plain_engine(), &naive, Metering::Naive).unwrap();
    assert_eq!(naive.call("run", &[], None), result);
}

#[test]
fn more_functions_than_the_limit_are_a_limit_error() {
    let bodies = (0..=FUNCTIONS_MAX)
        .map(|_| {
            let mut f = Function::new([]);
            f.instruction(&Instruction::I32Const(0));
            f.instruction(&Instruction::End);
            f
        })
        .collect();
    let wasm = module_with_bodies(bodies);
    match instrument_timed("FUNCTIONS_MAX + 1 functions", &wasm) {
        Err(Error::Limit(message)) => assert!(message.contains("functions"), "{message}"),
        other => panic!("expected Error::Limit, got {:?}", other.map(|_| ())),
    }
}

#[test]
fn million_entry_br_table() {
    // wasmtime compiles at most 65,520 targets, so a 60,000-entry table is also run and counted.
    for entries in [1_000_000, 60_000] {
        huge_br_table(entries);
    }
}

fn huge_br_table(entries: u32) {
    // block $b2 (block $b1 (block $b0 (br_table [$b0 $b1]*entries/2 ... $b2 (i32) ))) with the
    // index taken from a global so nothing folds.
    let mut body = Function::new([]);
    body.instruction(&Instruction::Block(BlockType::Empty)); // $b2
    body.instruction(&Instruction::Block(BlockType::Empty)); // $b1
    body.instruction(&Instruction::Block(BlockType::Empty)); // $b0
    body.instruction(&Instruction::I32Const(entries as i32 - 1));
    let targets: Vec<u32> = (0..entries).map(|i| i % 2).collect();
    body.instruction(&Instruction::BrTable(targets.into(), 2));
    body.instruction(&Instruction::End);
    body.instruction(&Instruction::I32Const(10));
    body.instruction(&Instruction::Return);
    body.instruction(&Instruction::End);
    body.instruction(&Instruction::I32Const(20));
    body.instruction(&Instruction::Return);
    body.instruction(&Instruction::End);
    body.instruction(&Instruction::I32Const(30));
    body.instruction(&Instruction::End);
    let wasm = module_with_bodies(vec![body]);
    match instrument_timed(&format!("{entries}-entry br_table"), &wasm) {
        Err(Error::Limit(message)) => eprintln!("rejected: {message}"),
        Err(other) => panic!("expected success or Error::Limit, got {other}"),
        Ok(_) => {
            if let Err(e) = wasmtime::Module::new(crate::support::plain_engine(), &wasm) {
                // wasmtime itself cannot compile the original; nothing to count.
                eprintln!("wasmtime rejects the original: {e:#}");
                return;
            }
            let report = check_module(&wasm, &costs(), 1 << 40).unwrap();
            assert!(!report.instantiation_failed, "{report:?}");
            // entry 1 + i32.const 1 + br_table 1 (the last entry is odd: $b1) + i32.const 1
            // + return 0 = 4
            assert_eq!(report.ops, 4);
        }
    }
}

//! Hand-counted unit tests. Unless a test says otherwise the table is `wasmtime-fuel`: 1 per
//! operator except nop/drop/block/loop/unreachable/return/else/end (0), 1 per function entry,
//! 1 per byte of memory.copy/fill/init, 0 per page of memory.grow.

use super::*;
use wasmtime::{Engine, Instance, Module as WasmtimeModule, Store, Val};

/// What a call did: its results, or the trap's message.
#[derive(Debug, PartialEq)]
enum Outcome {
    Returned(Vec<i64>),
    Trapped,
    Exhausted,
}

struct Run {
    outcome: Outcome,
    ops: u64,
}

/// A fixed table for the tests that need weights other than 1 (the `default` preset is
/// recalibrated from time to time, so it is not used for hand counts).
const TEST_TABLE: &str = r#"{
    "name": "oracle-test", "default_weight": 3, "function_entry": 1,
    "operators": { "Nop": 0, "Drop": 0, "Block": 0, "Loop": 0, "Unreachable": 0, "Return": 1,
                   "LocalGet": 1, "I32Const": 1, "I32DivS": 25, "MemoryGrow": 200 },
    "variable": { "memory_grow_per_page": 255 }
}"#;

fn table(name: &str) -> CostTable {
    match name {
        "test" => CostTable::from_json(TEST_TABLE).unwrap(),
        preset => CostTable::preset(preset).unwrap(),
    }
}

fn run_with(wat: &str, preset: &str, budget: u64, func: &str, args: &[Val]) -> Run {
    let wasm = wat::parse_str(wat).unwrap();
    let costs = table(preset);
    let instrumented = instrument_naive(&wasm, &costs, budget).unwrap();
    let engine = Engine::default();
    let module = WasmtimeModule::new(&engine, &instrumented).unwrap();
    let mut store = Store::new(&engine, ());
    let instance = Instance::new(&mut store, &module, &[]).unwrap();
    let f = instance.get_func(&mut store, func).unwrap();
    let ty = f.ty(&store);
    let mut results = vec![Val::I32(0); ty.results().len()];
    let call = f.call(&mut store, args, &mut results);
    let global = |store: &mut Store<()>, name: &str| {
        instance
            .get_global(&mut *store, name)
            .unwrap()
            .get(&mut *store)
    };
    let ops = global(&mut store, OPS_GLOBAL).unwrap_i64() as u64;
    let exhausted = global(&mut store, EXHAUSTED_GLOBAL).unwrap_i32();
    let outcome = match call {
        Ok(()) => {
            assert_eq!(exhausted, 0);
            Outcome::Returned(
                results
                    .iter()
                    .map(|v| match v {
                        Val::I32(x) => i64::from(*x),
                        Val::I64(x) => *x,
                        other => panic!("unexpected result {other:?}"),
                    })
                    .collect(),
            )
        }
        Err(_) if exhausted == 1 => Outcome::Exhausted,
        Err(_) => Outcome::Trapped,
    };
    Run { outcome, ops }
}

fn run(wat: &str, func: &str, args: &[Val]) -> Run {
    run_with(wat, "wasmtime-fuel", u64::MAX >> 2, func, args)
}

#[test]
fn straight_line() {
    let r = run(
        r#"(module (func (export "f") (result i32) i32.const 1 i32.const 2 i32.add))"#,
        "f",
        &[],
    );
    // entry 1 + const 1 + const 1 + add 1 = 4
    assert_eq!(r.outcome, Outcome::Returned(vec![3]));
    assert_eq!(r.ops, 4);
}

#[test]
fn default_table_weights() {
    let r = run_with(
        r#"(module (func (export "f") (result i32) i32.const 7 i32.const 2 i32.div_s nop))"#,
        "test",
        u64::MAX >> 2,
        "f",
        &[],
    );
    // entry 1 + const 1 + const 1 + div_s 25 + nop 0 = 28
    assert_eq!(r.outcome, Outcome::Returned(vec![3]));
    assert_eq!(r.ops, 28);
}

#[test]
fn if_without_else_both_ways() {
    let wat = r#"(module (func (export "f") (param i32) (result i32)
        local.get 0
        if
          i32.const 5
          local.set 0
        end
        local.get 0))"#;
    // taken: entry 1 + local.get 1 + if 1 + const 1 + local.set 1 + local.get 1 = 6
    let taken = run(wat, "f", &[Val::I32(1)]);
    assert_eq!(taken.outcome, Outcome::Returned(vec![5]));
    assert_eq!(taken.ops, 6);
    // not taken: entry 1 + local.get 1 + if 1 + local.get 1 = 4
    let skipped = run(wat, "f", &[Val::I32(0)]);
    assert_eq!(skipped.outcome, Outcome::Returned(vec![0]));
    assert_eq!(skipped.ops, 4);
}

#[test]
fn trap_mid_block_charges_up_to_the_trapping_instruction() {
    let wat = r#"(module (func (export "f") (result i32)
        i32.const 1
        i32.const 2
        i32.add
        i32.const 0
        i32.div_s
        i32.const 100
        i32.add))"#;
    // entry 1 + const + const + add + const + div_s (traps) = 6; the last two never run
    let r = run(wat, "f", &[]);
    assert_eq!(r.outcome, Outcome::Trapped);
    assert_eq!(r.ops, 6);
}

#[test]
fn br_if_skips_the_rest_of_the_block() {
    let wat = r#"(module (func (export "f") (result i32)
        block
          i32.const 1
          br_if 0
          i32.const 9
          drop
          i32.const 9
          drop
        end
        i32.const 3))"#;
    // entry 1 + block 0 + const 1 + br_if 1 + const 1 = 4
    let r = run(wat, "f", &[]);
    assert_eq!(r.outcome, Outcome::Returned(vec![3]));
    assert_eq!(r.ops, 4);
}

#[test]
fn loop_counts_every_iteration() {
    let wat = r#"(module (func (export "f") (result i32) (local i32)
        i32.const 3
        local.set 0
        loop
          local.get 0
          i32.const 1
          i32.sub
          local.tee 0
          br_if 0
        end
        local.get 0))"#;
    // entry 1 + const 1 + set 1 + 3 iterations × (get, const, sub, tee, br_if = 5) + get 1 = 19
    let r = run(wat, "f", &[]);
    assert_eq!(r.outcome, Outcome::Returned(vec![0]));
    assert_eq!(r.ops, 19);
}

#[test]
fn infinite_loop_stops_at_the_budget() {
    let wat = r#"(module (func (export "f") (loop (br 0))))"#;
    // entry 1; each entry into the body checks, then br costs 1. With budget 10 the check at
    // count 11 (entry + 10 brs) is the first above the budget.
    let r = run_with(wat, "wasmtime-fuel", 10, "f", &[]);
    assert_eq!(r.outcome, Outcome::Exhausted);
    assert_eq!(r.ops, 11);
}

#[test]
fn loop_without_back_edge_is_not_checked() {
    // Budget 0 is exceeded by the entry charge, but no check point exists: the loop is never
    // branched to and the function makes no calls.
    let wat = r#"(module (func (export "f") (result i32) (loop (result i32) i32.const 4)))"#;
    let r = run_with(wat, "wasmtime-fuel", 0, "f", &[]);
    // entry 1 + loop 0 + const 1 = 2
    assert_eq!(r.outcome, Outcome::Returned(vec![4]));
    assert_eq!(r.ops, 2);
}

#[test]
fn recursion_is_checked_at_function_entry() {
    let wat = r#"(module (func $f (export "f") (call $f)))"#;
    // each frame: entry 1, check, call 1. The checks see 1, 3, 5 (not above budget 5), then 7.
    let r = run_with(wat, "wasmtime-fuel", 5, "f", &[]);
    assert_eq!(r.outcome, Outcome::Exhausted);
    assert_eq!(r.ops, 7);
}

#[test]
fn bulk_memory_charges_per_byte_only_when_in_bounds() {
    let wat = r#"(module (memory 1)
        (func (export "fill") (param i32 i32)
          local.get 0
          i32.const 7
          local.get 1
          memory.fill))"#;
    // in bounds: entry 1 + get 1 + const 1 + get 1 + fill 1 + 100 bytes = 105
    let ok = run(wat, "fill", &[Val::I32(0), Val::I32(100)]);
    assert_eq!(ok.outcome, Outcome::Returned(vec![]));
    assert_eq!(ok.ops, 105);
    // out of bounds (length 0xFFFF_FFFF): traps, no per-byte charge: 5
    let oob = run(wat, "fill", &[Val::I32(10), Val::I32(-1)]);
    assert_eq!(oob.outcome, Outcome::Trapped);
    assert_eq!(oob.ops, 5);
}

#[test]
fn memory_grow_charges_per_page_requested_even_on_failure() {
    let wat = r#"(module (memory 1 3)
        (func (export "grow") (param i32) (result i32)
          local.get 0
          memory.grow))"#;
    // test table: entry 1 + local.get 1 + memory.grow 200 + 2 pages × 255 = 712
    let ok = run_with(wat, "test", u64::MAX >> 2, "grow", &[Val::I32(2)]);
    assert_eq!(ok.outcome, Outcome::Returned(vec![1]));
    assert_eq!(ok.ops, 712);
    // 5 pages exceed the maximum: grow returns -1 but the request still costs 5 × 255: 202 + 1275 = 1477
    let failed = run_with(wat, "test", u64::MAX >> 2, "grow", &[Val::I32(5)]);
    assert_eq!(failed.outcome, Outcome::Returned(vec![-1]));
    assert_eq!(failed.ops, 1477);
}

#[test]
fn existing_globals_and_exports_keep_their_indices() {
    let wat = r#"(module
        (global $g (mut i32) (i32.const 41))
        (func (export "inc") (result i32)
          global.get $g
          i32.const 1
          i32.add
          global.set $g
          global.get $g)
        (export "g" (global $g)))"#;
    // entry 1 + 5 = 6
    let r = run(wat, "inc", &[]);
    assert_eq!(r.outcome, Outcome::Returned(vec![42]));
    assert_eq!(r.ops, 6);
}

#[test]
fn module_without_globals_or_exports_gets_them() {
    let wasm = wat::parse_str(r#"(module (func nop) (start 0))"#).unwrap();
    let costs = CostTable::preset("wasmtime-fuel").unwrap();
    let out = instrument_naive(&wasm, &costs, 100).unwrap();
    let engine = Engine::default();
    let module = WasmtimeModule::new(&engine, &out).unwrap();
    let mut store = Store::new(&engine, ());
    let instance = Instance::new(&mut store, &module, &[]).unwrap();
    // the start function ran: entry 1 + nop 0
    let ops = instance
        .get_global(&mut store, OPS_GLOBAL)
        .unwrap()
        .get(&mut store);
    assert_eq!(ops.unwrap_i64(), 1);
    let budget = instance
        .get_global(&mut store, BUDGET_GLOBAL)
        .unwrap()
        .get(&mut store);
    assert_eq!(budget.unwrap_i64(), 100);
}

#[test]
fn br_table_picks_its_target() {
    let wat = r#"(module (func (export "f") (param i32) (result i32)
        block
          block
            local.get 0
            br_table 0 1
          end
          i32.const 10
          return
        end
        i32.const 20))"#;
    // 0: entry 1 + get 1 + br_table 1 + const 1 + return 0 = 4
    let inner = run(wat, "f", &[Val::I32(0)]);
    assert_eq!(inner.outcome, Outcome::Returned(vec![10]));
    assert_eq!(inner.ops, 4);
    // 7 (default, outer): entry 1 + get 1 + br_table 1 + const 1 = 4
    let outer = run(wat, "f", &[Val::I32(7)]);
    assert_eq!(outer.outcome, Outcome::Returned(vec![20]));
    assert_eq!(outer.ops, 4);
}

#[test]
fn inner_loop_branching_to_the_outer_loop_is_checked() {
    let wat = r#"(module (func (export "f")
        loop $outer
          loop $inner
            br $outer
          end
        end))"#;
    // only $outer is a branch target; each trip: check, br 1. Budget 3: check sees 1,2,3,4.
    let r = run_with(wat, "wasmtime-fuel", 3, "f", &[]);
    assert_eq!(r.outcome, Outcome::Exhausted);
    assert_eq!(r.ops, 4);
}

#[test]
fn reserved_names_are_rejected() {
    let costs = CostTable::preset("wasmtime-fuel").unwrap();
    for wat in [
        r#"(module (global (export "__tally_ops") (mut i64) (i64.const 0)))"#,
        r#"(module (import "env" "__tally_budget" (global (mut i64))))"#,
        r#"(module (func (export "__tally_exhausted")))"#,
    ] {
        let err = instrument_naive(&wat::parse_str(wat).unwrap(), &costs, 0).unwrap_err();
        assert!(err.to_string().contains("reserved name"), "{err}");
    }
}

#[test]
fn invalid_bytes_are_rejected() {
    let costs = CostTable::preset("wasmtime-fuel").unwrap();
    let err = instrument_naive(b"\0asm\x01\0\0\0\x01", &costs, 0).unwrap_err();
    assert!(err.to_string().contains("invalid module"), "{err}");
}

//! Oracle 2: wasmtime's own fuel, configured with tally's cost table through
//! `Config::operator_cost`, agrees with tally's count on every run that completes. wasmtime
//! charges 1 per function entry (hard-coded) and takes `u8` weights; `wasmtime-fuel` fits, and
//! for `default` (whose entry weight and heaviest classes do not) the comparison uses the same
//! table with an entry weight of 1 and its weights capped at 255 (`support::fuel_comparable`).

use tally_instrument::CostTable;

use crate::differential::check_module;
use crate::support::{fuel_can_express, fuel_comparable, operator_cost};

#[test]
fn presets_fit_wasmtime_operator_cost() {
    let fuel = CostTable::preset("wasmtime-fuel").unwrap();
    assert!(
        fuel_can_express(&fuel),
        "wasmtime-fuel is wasmtime's own table"
    );
    assert_eq!(
        fuel_comparable(&fuel).weights().collect::<Vec<_>>(),
        fuel.weights().collect::<Vec<_>>()
    );
    for preset in tally_instrument::PRESETS {
        let costs = fuel_comparable(&CostTable::preset(preset).unwrap());
        assert!(fuel_can_express(&costs), "{preset}");
        let table = serde_json::to_value(operator_cost(&costs)).unwrap();
        let mut compared = 0;
        for (name, weight) in costs.weights() {
            if let Some(value) = table.get(name) {
                assert_eq!(value.as_u64(), Some(u64::from(weight)), "{preset}: {name}");
                compared += 1;
            }
        }
        assert!(
            compared > 400,
            "{preset}: only {compared} operators compared"
        );
        let v = costs.variable();
        assert_eq!(
            table["variable"]["memory_copy_per_byte"],
            v.memory_copy_per_byte
        );
        assert_eq!(
            table["variable"]["memory_grow_per_page"],
            v.memory_grow_per_page
        );
        assert_eq!(
            table["variable"]["table_grow_per_element"],
            v.table_grow_per_element
        );
    }
}

/// Hand-written modules with an exported `run` that returns; fuel is compared on every call.
const MODULES: &[(&str, &str)] = &[
    (
        "sum loop",
        r#"(module (func (export "run") (result i32) (local $i i32) (local $s i32)
            (loop $l
              (local.set $s (i32.add (local.get $s) (local.get $i)))
              (local.set $i (i32.add (local.get $i) (i32.const 1)))
              (br_if $l (i32.lt_u (local.get $i) (i32.const 1000))))
            (local.get $s)))"#,
    ),
    (
        "recursive fib",
        r#"(module
            (func $fib (param i32) (result i32)
              (if (result i32) (i32.lt_u (local.get 0) (i32.const 2))
                (then (local.get 0))
                (else (i32.add (call $fib (i32.sub (local.get 0) (i32.const 1)))
                               (call $fib (i32.sub (local.get 0) (i32.const 2)))))))
            (func (export "run") (result i32) (call $fib (i32.const 15))))"#,
    ),
    (
        "bulk memory and grow",
        r#"(module (memory 1 8) (data $d "0123456789")
            (func (export "run") (result i32)
              (drop (memory.grow (i32.const 3)))
              (memory.fill (i32.const 100) (i32.const 7) (i32.const 5000))
              (memory.copy (i32.const 70000) (i32.const 100) (i32.const 3000))
              (memory.init $d (i32.const 9) (i32.const 2) (i32.const 8))
              (data.drop $d)
              (i32.add (i32.load (i32.const 70000)) (i32.load8_u (i32.const 9)))))"#,
    ),
    (
        "tables",
        r#"(module (table $t 4 100 funcref) (elem $e func $a $b)
            (type $ty (func (result i32)))
            (func $a (result i32) (i32.const 1))
            (func $b (result i32) (i32.const 2))
            (func (export "run") (result i32)
              (drop (table.grow $t (ref.null func) (i32.const 20)))
              (table.init $t $e (i32.const 0) (i32.const 0) (i32.const 2))
              (table.copy $t $t (i32.const 10) (i32.const 0) (i32.const 2))
              (table.fill $t (i32.const 12) (ref.func $a) (i32.const 5))
              (i32.add (call_indirect $t (type $ty) (i32.const 11))
                       (call_indirect $t (type $ty) (i32.const 16)))))"#,
    ),
    (
        "br_table and select",
        r#"(module (func (export "run") (result i32) (local $i i32) (local $acc i32)
            (loop $l
              (block $b2 (block $b1 (block $b0
                (br_table $b0 $b1 $b2 (i32.rem_u (local.get $i) (i32.const 3))))
                (local.set $acc (i32.add (local.get $acc) (i32.const 1))) (br $b2))
                (local.set $acc (select (local.get $acc) (i32.const 5) (local.get $i))))
              (local.set $i (i32.add (local.get $i) (i32.const 1)))
              (br_if $l (i32.lt_u (local.get $i) (i32.const 50))))
            (local.get $acc)))"#,
    ),
    (
        "tail calls",
        r#"(module
            (func $even (param i32) (result i32)
              (if (result i32) (i32.eqz (local.get 0)) (then (i32.const 1))
                (else (return_call $odd (i32.sub (local.get 0) (i32.const 1))))))
            (func $odd (param i32) (result i32)
              (if (result i32) (i32.eqz (local.get 0)) (then (i32.const 0))
                (else (return_call $even (i32.sub (local.get 0) (i32.const 1))))))
            (func (export "run") (result i32) (call $even (i32.const 1001))))"#,
    ),
    (
        "simd and floats",
        r#"(module (func (export "run") (result f64) (local $v v128)
            (local.set $v (f64x2.splat (f64.const 1.5)))
            (local.set $v (f64x2.mul (local.get $v) (local.get $v)))
            (f64.add (f64x2.extract_lane 0 (local.get $v))
                     (f64.sqrt (f64.convert_i32_s (i32.trunc_sat_f32_s (f32.const 9.7)))))))"#,
    ),
];

#[test]
fn fuel_matches_on_hand_written_modules_for_both_presets() {
    for preset in tally_instrument::PRESETS {
        let costs = fuel_comparable(&CostTable::preset(preset).unwrap());
        for (what, wat) in MODULES {
            let wasm = wat::parse_str(wat).unwrap();
            let report = check_module(&wasm, &costs, 1 << 40)
                .unwrap_or_else(|e| panic!("{what} ({preset}): {e}"));
            assert_eq!(report.fuel_compared, 1, "{what} ({preset}): {report:?}");
            assert!(report.ops > 0);
        }
    }
}

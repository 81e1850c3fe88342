//! `Options::defer_start` moves the start function to an export.

use tally_instrument::{CostTable, Options, START_EXPORT, instrument};
use wasmparser::{Parser, Payload};

const MODULE: &str = r#"(module
  (global $g (mut i32) (i32.const 0))
  (func $init (global.set $g (i32.const 7)))
  (start $init)
  (func (export "get") (result i32) global.get $g))"#;

fn start_and_exports(wasm: &[u8]) -> (bool, Vec<String>) {
    let mut start = false;
    let mut exports = Vec::new();
    for payload in Parser::new(0).parse_all(wasm) {
        match payload.unwrap() {
            Payload::StartSection { .. } => start = true,
            Payload::ExportSection(reader) => {
                for export in reader {
                    exports.push(export.unwrap().name.to_string());
                }
            }
            _ => {}
        }
    }
    (start, exports)
}

fn instrumented(defer_start: bool) -> Vec<u8> {
    let wasm = wat::parse_str(MODULE).unwrap();
    let costs = CostTable::preset("wasmtime-fuel").unwrap();
    let options = Options {
        defer_start,
        ..Options::default()
    };
    let out = instrument(&wasm, &costs, &options).unwrap();
    wasmparser::validate(&out.wasm).unwrap();
    out.wasm
}

#[test]
fn the_start_function_stays_by_default() {
    let (start, exports) = start_and_exports(&instrumented(false));
    assert!(start);
    assert!(!exports.iter().any(|e| e == START_EXPORT));
}

#[test]
fn a_deferred_start_function_is_exported_instead() {
    let (start, exports) = start_and_exports(&instrumented(true));
    assert!(!start);
    assert!(exports.iter().any(|e| e == START_EXPORT));
    assert!(
        exports.iter().any(|e| e == "get"),
        "original exports are kept"
    );
}

#[test]
fn a_module_without_start_gets_no_start_export() {
    let wasm = wat::parse_str(r#"(module (func (export "f")))"#).unwrap();
    let costs = CostTable::preset("wasmtime-fuel").unwrap();
    let options = Options {
        defer_start: true,
        ..Options::default()
    };
    let out = instrument(&wasm, &costs, &options).unwrap();
    let (start, exports) = start_and_exports(&out.wasm);
    assert!(!start);
    assert!(!exports.iter().any(|e| e == START_EXPORT));
}

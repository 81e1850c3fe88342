//! The pass scans and rewrites functions in parallel; what it produces must not depend on how
//! many threads it gets.

use std::path::PathBuf;

use tally_instrument::{CostTable, Options, instrument};

fn guest(name: &str) -> Vec<u8> {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../guests/wasm")
        .join(format!("{name}.wasm"));
    std::fs::read(&path).unwrap_or_else(|e| panic!("reading {}: {e}", path.display()))
}

/// Functions whose `br_if`s carry values to their labels: the pass gives each such branch an
/// `if` with a multi-value type it adds to the module, from many functions at once (in a loop:
/// outside loops a `br_if` stays one, its fall-through charged).
fn branches_with_values(functions: usize) -> Vec<u8> {
    let types = ["i32", "i64", "f32", "f64"];
    let mut text = String::from("(module\n");
    for f in 0..functions {
        let (a, b) = (types[f % 4], types[(f / 4) % 4]);
        text.push_str(&format!(
            "(func (export \"f{f}\") (param i32) (result {a} {b})
               loop (result {a} {b})
               block (result {a} {b})
                 {a}.const {f}
                 {b}.const 1
                 local.get 0
                 br_if 0
                 drop drop
                 local.get 0 i32.const 3 i32.mul drop
                 {a}.const 2
                 {b}.const 3
               end
               end)\n"
        ));
    }
    text.push(')');
    wat::parse_str(&text).expect("valid module")
}

fn type_count(wasm: &[u8]) -> u32 {
    wasmparser::Parser::new(0)
        .parse_all(wasm)
        .find_map(|payload| match payload.expect("valid") {
            wasmparser::Payload::TypeSection(types) => Some(types.count()),
            _ => None,
        })
        .unwrap_or(0)
}

#[test]
fn output_is_the_same_on_one_thread_and_on_four() {
    let costs = CostTable::preset("default").expect("preset");
    let pool = |threads| {
        rayon::ThreadPoolBuilder::new()
            .num_threads(threads)
            .build()
            .expect("thread pool")
    };
    let (one, four) = (pool(1), pool(4));
    for name in ["json", "deflate", "interp"] {
        let wasm = guest(name);
        let a = one
            .install(|| instrument(&wasm, &costs, &Options::default()))
            .expect(name);
        let b = four
            .install(|| instrument(&wasm, &costs, &Options::default()))
            .expect(name);
        assert!(a.stats.functions > 100, "{name}: {:?}", a.stats);
        assert!(a.wasm == b.wasm, "{name}: output bytes differ");
        assert_eq!(a.meter_map, b.meter_map, "{name}: meter maps differ");
        assert_eq!(a.stats, b.stats, "{name}");
    }
    let wasm = branches_with_values(64);
    let a = one
        .install(|| instrument(&wasm, &costs, &Options::default()))
        .expect("values");
    let b = four
        .install(|| instrument(&wasm, &costs, &Options::default()))
        .expect("values");
    assert!(
        type_count(&a.wasm) > type_count(&wasm),
        "the pass added block types"
    );
    assert!(a.wasm == b.wasm, "output bytes differ");
    assert_eq!(a.meter_map, b.meter_map);
}

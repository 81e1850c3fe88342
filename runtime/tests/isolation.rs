//! Nothing one invocation leaves behind is visible to the next, also when the pooling
//! allocator hands the same slot (and its kept-resident memory) to every invocation.

use tally_instrument::{CostTable, Options, instrument};
use tally_runtime::{Invocation, Outcome, Runtime, RuntimeConfig};

/// Exits with 0 if memory, its size, the data segment and a global look fresh, else with a
/// code naming what leaked; then dirties all of them.
const GUEST: &str = r#"(module
  (import "wasi_snapshot_preview1" "proc_exit" (func $exit (param i32)))
  (memory (export "memory") 1)
  (global $runs (mut i32) (i32.const 0))
  (data (i32.const 16) "\01")
  (func (export "_start")
    (local $code i32)
    (if (i32.ne (memory.size) (i32.const 1)) (then (local.set $code (i32.const 1))))
    (if (i32.ne (i32.load (i32.const 4096)) (i32.const 0)) (then (local.set $code (i32.const 2))))
    (if (i32.ne (i32.load8_u (i32.const 16)) (i32.const 1)) (then (local.set $code (i32.const 3))))
    (if (i32.ne (global.get $runs) (i32.const 0)) (then (local.set $code (i32.const 4))))
    (drop (memory.grow (i32.const 2)))
    (if (i32.ne (i32.load (i32.const 70000)) (i32.const 0)) (then (local.set $code (i32.const 5))))
    (if (i32.ne (i32.load (i32.const 140000)) (i32.const 0)) (then (local.set $code (i32.const 6))))
    (i32.store (i32.const 4096) (i32.const 0xdead))
    (i32.store8 (i32.const 16) (i32.const 9))
    (i32.store (i32.const 70000) (i32.const 0xbeef))
    (i32.store (i32.const 140000) (i32.const 0xf00d))
    (global.set $runs (i32.add (global.get $runs) (i32.const 1)))
    (call $exit (local.get $code))))"#;

#[test]
fn a_reused_pool_slot_starts_clean_every_time() {
    let runtime = Runtime::new(&RuntimeConfig {
        pooling_instances: 1,
        pooling_memory_bytes: 16 << 20,
        ..RuntimeConfig::default()
    })
    .unwrap();
    let wasm = wat::parse_str(GUEST).unwrap();
    let options = Options {
        defer_start: true,
        ..Options::default()
    };
    let instrumented = instrument(&wasm, &CostTable::preset("default").unwrap(), &options).unwrap();
    let prepared = runtime.prepare(&instrumented).unwrap();
    runtime.warm(&prepared);
    let mut ops = Vec::new();
    for run in 0..5 {
        let usage = runtime
            .run(&prepared, Invocation::new(vec!["isolation".into()]))
            .unwrap()
            .usage;
        assert_eq!(
            usage.outcome,
            Outcome::Exit { code: 0 },
            "run {run}: a value from an earlier invocation leaked (see the exit codes in GUEST)"
        );
        ops.push(usage.ops);
    }
    assert!(
        ops.windows(2).all(|w| w[0] == w[1]),
        "same work, same count: {ops:?}"
    );
}

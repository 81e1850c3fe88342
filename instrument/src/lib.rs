//! tally-instrument rewrites a WebAssembly module so that it counts its own work.
//!
//! Bytes in, bytes out: [`instrument`] takes a module and a [`CostTable`] and returns an
//! [`Instrumented`] module plus its [`MeterMap`]. The crate does no I/O.
//!
//! ```
//! use tally_instrument::{instrument, CostTable, Options};
//! let wasm = wat::parse_str(r#"(module (func (export "f") (result i32) i32.const 1 i32.const 2 i32.add))"#)?;
//! let costs = CostTable::preset("wasmtime-fuel").unwrap();
//! let out = instrument(&wasm, &costs, &Options::default())?;
//! assert!(out.wasm.len() > wasm.len());
//! assert_eq!(out.stats.functions, 1);
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```
//!
//! # Semantics
//!
//! * **The count.** The exported mutable global `__tally_ops` (i64) counts the sum of the
//!   weights of the instructions actually executed, plus the cost table's function-entry weight
//!   per function body entered, plus the variable costs of bulk operations (per byte of
//!   `memory.copy`/`fill`/`init`, per requested page of `memory.grow`, per element of the table
//!   operations). `End` and `Else` mark structure and weigh 0.
//! * **When it is exact.** Whenever control is in the host: after the module returns, at every
//!   call to an import (so also at `proc_exit`), and when the budget stops the run.
//! * **Traps.** A trap charges every instruction up to and including the trapping one. A bulk
//!   operation that traps (out of bounds) charges its own weight but not its per-byte cost, so a
//!   huge out-of-bounds length never drains the budget. Inside the module the count is kept
//!   *prepaid*: at any point the global holds the executed count plus a static amount that only
//!   depends on the position (the cost of the straight-line path still ahead). At a trap, the
//!   runtime subtracts [`MeterMap::trap_correction`] for the trapping instruction's code offset
//!   (the top wasm frame of wasmtime's backtrace). Calls never carry a prepaid amount, so only
//!   the top frame matters. Cranelift may fold a load into the instruction that consumes it and
//!   report the load's trap there: the meter map then carries the load's correction under the
//!   consumer's offset for out-of-bounds traps, and where an offset cannot tell the two apart
//!   the pass places a fence (a store) that keeps the load from being folded.
//! * **Budget.** `__tally_budget` (i64, exported, mutable) holds the limit. The module checks
//!   it where a cycle can close: at the start of every loop that is branched back to, and at
//!   the entry of every function that makes calls. If the executed count at a check is above
//!   the budget, the module sets `__tally_ops` to that exact count, sets `__tally_exhausted`
//!   (i32) to 1 and executes `unreachable`. Same module, same input: same count, same point.
//!   A trap with `__tally_exhausted == 1` is budget exhaustion and nothing else. A bulk
//!   operation (or `memory.grow`/`table.grow`) with a per-unit cost is checked before it runs:
//!   if its per-unit cost would take the count above the budget, the run stops there, charged
//!   the operation's own weight but none of its per-unit cost, so no single operation can
//!   take the count far past the budget.
//! * **Memory-time.** `__tally_memory_integral` + `__tally_memory_pages` × (count −
//!   `__tally_memory_mark`) is the integral of the pages of all memories over the count: after
//!   every `memory.grow` the module closes the interval that ended there. It depends only on the
//!   module and its input, never on the clock.
//! * **Standalone.** The output validates, has no new imports, and keeps every import and
//!   export. Modules that already use the reserved names are rejected, and so is every
//!   operator this crate cannot meter (exceptions, GC), by name.
//!
//! # Counter placement
//!
//! The running count lives in a function-local `i64` (a register after compilation) and is
//! stored to `__tally_ops` whenever it changes. Charges are placed on control-flow edges, not
//! on blocks: entering a function prepays the whole fall-through path; falling through a block,
//! entering a `block`, leaving one at its end and taking the prepaid arm of an `if` cost
//! nothing at run time. Only the edges that leave the fall-through path carry an adjustment:
//! a taken `br_if`, a `br`/`br_table` target, the other arm of an `if`, and a loop back-edge
//! (one add per iteration). This is Knuth–Stevenson edge placement with the fall-through edges
//! as the spanning tree, except that a `br_if` whose fall-through runs into a call or
//! `unreachable` (a slow path or a panic) makes its taken edge the tree edge instead, and a
//! forward `br` is a tree edge too (the prepaid path continues at its target).
//!
//! An innermost loop without calls, whose only instructions that can trap are `unreachable`,
//! `return` and one scalar access to memory 0, keeps the count in the local alone (a
//! *register loop*): each access is preceded by a bounds check that stores the exact count
//! and traps the same way, and the global is stored on every edge that leaves the loop, at
//! `unreachable` and `return`, and by the budget check at its header. Inside such a loop the
//! global lags the count, so a host that interrupts the guest asynchronously (an epoch
//! deadline) must not read it there: `tally-runtime` stops it at a budget check instead.

#![deny(missing_docs)]

mod body;
mod cost;
mod merge;
mod meter;
mod pass;

pub use cost::{
    COST_TABLE_BYTES_MAX, CostTable, PRESETS, VariableCosts, WEIGHT_MAX, operator_name,
};
pub use meter::{MeterMap, Stats, TrapKind};
pub use pass::instrument;

/// Largest module accepted, in bytes.
pub const MODULE_BYTES_MAX: usize = 64 * 1024 * 1024;
/// Largest number of functions (imported and defined) in a module.
pub const FUNCTIONS_MAX: usize = 200_000;
/// Deepest nesting of blocks, loops and ifs inside one function.
pub const NESTING_DEPTH_MAX: usize = 2_000;
/// The largest budget a run may have.
pub const OPS_MAX: u64 = 1 << 60;

/// The exported global that holds the count.
pub const OPS_GLOBAL: &str = "__tally_ops";
/// The exported global that holds the budget.
pub const BUDGET_GLOBAL: &str = "__tally_budget";
/// The exported global set to 1 when the budget stopped the run.
pub const EXHAUSTED_GLOBAL: &str = "__tally_exhausted";
/// The exported global with the pages of all memories, kept for the memory-time integral.
pub const MEMORY_PAGES_GLOBAL: &str = "__tally_memory_pages";
/// The exported global with the count at the last `memory.grow`.
pub const MEMORY_MARK_GLOBAL: &str = "__tally_memory_mark";
/// The exported global with pages × ops accumulated up to the last `memory.grow`.
pub const MEMORY_INTEGRAL_GLOBAL: &str = "__tally_memory_integral";
/// The export a deferred start function gets (see [`Options::defer_start`]).
pub const START_EXPORT: &str = "__tally_start";
/// The custom section that names the cost table the module was instrumented with.
pub const META_SECTION: &str = "tally.meter";

const _: () = assert!(OPS_MAX < i64::MAX as u64 / 2);
const _: () = assert!((MODULE_BYTES_MAX as u64) * (WEIGHT_MAX as u64) < OPS_MAX);

/// How to instrument.
#[derive(Clone, Debug)]
pub struct Options {
    /// The value `__tally_budget` has at instantiation, which bounds a start function.
    pub initial_budget: u64,
    /// Move the module's start function (if any) out of the start section and export it as
    /// [`START_EXPORT`], for a runtime that calls it right after instantiation. A start
    /// function that runs inside instantiation and traps leaves no instance to read the count
    /// from; called as an export, its work is metered like any other call (with the
    /// invocation's budget) and billed even when it traps.
    pub defer_start: bool,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            initial_budget: OPS_MAX,
            defer_start: false,
        }
    }
}

/// An instrumented module.
#[derive(Clone, Debug)]
pub struct Instrumented {
    /// The instrumented module's bytes.
    pub wasm: Vec<u8>,
    /// What the runtime needs to make the count exact at a trap.
    pub meter_map: MeterMap,
    /// What the pass did.
    pub stats: Stats,
}

/// Why a module could not be instrumented.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The module is larger than [`MODULE_BYTES_MAX`].
    #[error("module is {0} bytes, more than the limit of {MODULE_BYTES_MAX}")]
    TooLarge(usize),
    /// The bytes are not a valid module.
    #[error("invalid module: {0}")]
    Invalid(String),
    /// The module uses an operator or proposal that cannot be metered.
    #[error("cannot meter `{0}`: the operator or proposal is not supported")]
    Unsupported(String),
    /// The module already uses a name tally reserves.
    #[error("the module already uses the reserved name `{0}`")]
    ReservedName(String),
    /// A limit on the module's shape was exceeded.
    #[error("{0}")]
    Limit(String),
    /// A cost table is invalid.
    #[error("invalid cost table: {0}")]
    CostTable(String),
}

//! tally-runtime runs instrumented WebAssembly modules on wasmtime and reports their usage.
//!
//! A [`Runtime`] owns a wasmtime engine; [`Runtime::prepare`] compiles an instrumented module
//! into a [`Prepared`] function (one `InstancePre` with WASI preview 1 linked); [`Runtime::run`]
//! executes one invocation in a fresh `Store` and returns the guest's output and a
//! [`UsageReport`].
//!
//! ```no_run
//! use tally_instrument::{instrument, CostTable, Options};
//! use tally_runtime::{Invocation, Runtime, RuntimeConfig};
//! let wasm = std::fs::read("guests/wasm/fib.wasm")?;
//! let costs = CostTable::preset("default").unwrap();
//! let instrumented = instrument(&wasm, &costs, &Options::default())?;
//! let runtime = Runtime::new(&RuntimeConfig::default())?;
//! let prepared = runtime.prepare(&instrumented)?;
//! let output = runtime.run(&prepared, Invocation::new(vec!["fib".into(), "20".into()]))?;
//! println!("{} ops", output.usage.ops);
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```
//!
//! The count is exact in every outcome: on return and exit it is `__tally_ops`; when the
//! budget stops the run the module wrote the exact count before stopping; after any other trap
//! [`exact_ops`] subtracts the meter map's correction for the trapping instruction (see
//! `tally_instrument`'s crate documentation).

#![deny(missing_docs)]

mod meter;
mod run;

pub use meter::{MeterReading, exact_ops, memory_ops_integral};
pub use run::{
    DeadlineChecks, EPOCH_TICK_MS, Invocation, Outcome, POOLING_KEEP_RESIDENT_BYTES_DEFAULT,
    Prepared, RunOutput, Runtime, RuntimeConfig, UsageReport,
};

/// Why a module could not be prepared or run.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The module could not be instrumented.
    #[error(transparent)]
    Instrument(#[from] tally_instrument::Error),
    /// wasmtime could not compile the module.
    #[error("compiling the module failed: {0:#}")]
    Compile(#[source] wasmtime::Error),
    /// The module's imports cannot be satisfied (only WASI preview 1 is offered).
    #[error("linking the module failed: {0:#}")]
    Link(#[source] wasmtime::Error),
    /// The module does not export the tally globals or a `_start` command entry.
    #[error("the module is not an instrumented WASI command: {0}")]
    NotACommand(String),
    /// The engine could not be configured.
    #[error("configuring the engine failed: {0:#}")]
    Engine(#[source] wasmtime::Error),
    /// An invocation asked for more than the runtime allows.
    #[error("{0}")]
    Limit(String),
}

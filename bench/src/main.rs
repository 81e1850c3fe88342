//! `tally-bench`: the benchmarks that back tally's speed claims, each side by side with its
//! reference in the same run.
//!
//! ```text
//! cargo run --release -p tally-bench -- metering [--json FILE] [--runs N] [--only NAME]
//! cargo run --release -p tally-bench -- calibrate
//! cargo run --release -p tally-bench -- pricing
//! cargo run --release -p tally-bench -- ledger
//! cargo run --release -p tally-bench -- serve
//! ```

mod calibrate;
mod ledger;
mod metering;
mod pricing;
mod serve;

use clap::{Parser, Subcommand};

/// mimalloc rather than the system allocator: the instrumentation pass and Cranelift allocate
/// many small objects on several threads, and glibc's arena locks made them contend
/// (instrumenting regex.wasm: 76 ms with glibc, 62 ms with mimalloc; see docs/benchmarks.md).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[derive(Parser)]
#[command(name = "tally-bench", about = "tally's benchmarks")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Metering overhead against plain wasmtime, wasmtime fuel and epochs, per workload.
    Metering(metering::Args),
    /// Fit the `default` cost table to CPU time over the workload suite.
    Calibrate(calibrate::Args),
    /// Pricing a 10,000-line invoice.
    Pricing,
    /// Cold invocation of a no-op function against bare wasmtime and spawning /bin/true.
    Serve(serve::Args),
    /// Ledger append throughput, monthly aggregation and bytes per record.
    Ledger,
}

fn main() -> anyhow::Result<()> {
    match Cli::parse().command {
        Command::Metering(args) => metering::run(&args),
        Command::Calibrate(args) => calibrate::run(&args),
        Command::Pricing => pricing::run(),
        Command::Serve(args) => serve::run(&args),
        Command::Ledger => ledger::run(),
    }
}

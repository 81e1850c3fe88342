//! `tally`: the command-line interface and HTTP server of the tally metering engine.

mod ledger_cmd;
mod meter_cmd;
mod price_cmd;
mod server;

use std::process::ExitCode;

/// mimalloc rather than the system allocator: the instrumentation pass and Cranelift allocate
/// many small objects on several threads, and glibc's arena locks made them contend
/// (instrumenting regex.wasm: 76 ms with glibc, 62 ms with mimalloc; see docs/benchmarks.md).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

use clap::{Parser, Subcommand};

/// tally: run WebAssembly functions metered to the instruction, and bill them exactly.
#[derive(Parser)]
#[command(name = "tally", version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Serve the HTTP API: modules, functions, invocations, usage, invoices, audit.
    Serve(server::ServeArgs),
    /// Rewrite a module so that it counts its own work.
    Instrument(meter_cmd::InstrumentArgs),
    /// Instrument and run a WASI command locally, with a usage report.
    Run(meter_cmd::RunArgs),
    /// Price a usage document with a pricing plan.
    Price(price_cmd::PriceArgs),
    /// Verify the usage ledger's hash chain.
    Audit(ledger_cmd::AuditArgs),
    /// Draft or finalize a tenant's invoice for a month.
    Invoice(ledger_cmd::InvoiceArgs),
}

fn serve(args: server::ServeArgs) -> anyhow::Result<ExitCode> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    runtime.block_on(server::serve(args))?;
    Ok(ExitCode::SUCCESS)
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match &cli.command {
        Command::Serve(args) => serve(args.clone()),
        Command::Instrument(args) => meter_cmd::instrument(args),
        Command::Run(args) => meter_cmd::run(args),
        Command::Price(args) => price_cmd::run(args),
        Command::Audit(args) => ledger_cmd::run_audit(args),
        Command::Invoice(args) => ledger_cmd::run_invoice(args),
    };
    match result {
        Ok(code) => code,
        Err(error) => {
            eprintln!("tally: error: {error:#}");
            ExitCode::from(2)
        }
    }
}

//! Ledger benchmark: `cargo run --release -p tally-ledger --example throughput [-- --quick]`.
//! Prints group commit vs one transaction per record with 32 producers, the monthly aggregation
//! over 1,000,000 records and the bytes per record.

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let quick = std::env::args().any(|arg| arg == "--quick");
    let dir = std::env::var_os("TALLY_BENCH_DIR")
        .map(std::path::PathBuf::from)
        .unwrap_or_else(std::env::temp_dir)
        .join(format!("tally-ledger-bench-{}", std::process::id()));
    let result = tally_ledger::bench_support::run_all(&dir, quick);
    let _ = std::fs::remove_dir_all(&dir);
    result?;
    Ok(())
}

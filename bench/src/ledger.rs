//! `tally-bench ledger`: acknowledged appends per second with 32 producers (group commit vs one
//! transaction per record, same run), the 1,000,000-record monthly aggregation, bytes per record.
//! The measurement code lives in `tally_ledger::bench_support` so that
//! `cargo run --release -p tally-ledger --example throughput` reproduces the same figures.

/// Runs the ledger benchmark in a fresh temporary directory (`TALLY_BENCH_DIR` overrides the
/// parent directory; `TALLY_BENCH_QUICK=1` runs a smaller version).
pub fn run() -> anyhow::Result<()> {
    let quick = std::env::var_os("TALLY_BENCH_QUICK").is_some();
    let dir = std::env::var_os("TALLY_BENCH_DIR")
        .map(std::path::PathBuf::from)
        .unwrap_or_else(std::env::temp_dir)
        .join(format!("tally-ledger-bench-{}", std::process::id()));
    let result = tally_ledger::bench_support::run_all(&dir, quick);
    let _ = std::fs::remove_dir_all(&dir);
    Ok(result?)
}

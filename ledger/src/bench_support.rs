//! Benchmarks of the ledger, shared by `tally-bench ledger` and `examples/throughput.rs`.

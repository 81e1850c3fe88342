//! The ledger's one integration-test binary: a module per area.

mod chain;
mod common;
mod crash;
mod idempotency;
mod invoices;
mod migrations;
mod pagination;
mod properties;
mod read_only;
mod wal;

//! Integration tests of tally-pricing: one binary, a module per area.

mod cases;
mod examples;
mod no_float;
mod properties;
mod scale;

use std::path::PathBuf;

/// The crate's directory.
pub fn crate_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

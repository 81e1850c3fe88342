//! noop: does nothing. The floor: start-up cost of a WASI command module.
fn main() {}

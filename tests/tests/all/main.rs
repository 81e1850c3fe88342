//! The proof suite for tally's metering: fixtures with hand-computed counts, the naive oracle and
//! wasmtime's fuel as oracles on generated modules, differential runs against the original
//! module, and hostile inputs.

mod differential;
mod fixtures;
mod fuel;
mod hostile;
mod parallel;
mod smith;
mod support;

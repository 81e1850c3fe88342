//! The meter map: what the runtime needs to make a count exact at a trap.

use serde::{Deserialize, Serialize};

/// Trap corrections by code offset in the instrumented module.
///
/// At a trap, `__tally_ops` holds the executed count plus the prepaid cost of the
/// straight-line path after the trapping instruction; [`MeterMap::correction_at`] returns that
/// prepaid amount for the offset of the top wasm frame.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct MeterMap {
    /// Code offsets (into the instrumented module), ascending.
    offsets: Vec<u32>,
    /// The prepaid amount to subtract at the instruction with the same index in `offsets`.
    corrections: Vec<u64>,
}

impl MeterMap {
    pub(crate) fn new(mut entries: Vec<(u32, u64)>) -> MeterMap {
        entries.sort_unstable_by_key(|&(offset, _)| offset);
        entries.dedup_by_key(|&mut (offset, _)| offset);
        let (offsets, corrections) = entries.into_iter().unzip();
        MeterMap {
            offsets,
            corrections,
        }
    }

    /// The amount to subtract from `__tally_ops` when a trap's top wasm frame is at
    /// `module_offset`. Offsets that are not instructions of the original module (a function
    /// prologue, code the pass inserted) carry no prepaid amount.
    pub fn correction_at(&self, module_offset: usize) -> u64 {
        let Ok(offset) = u32::try_from(module_offset) else {
            return 0;
        };
        match self.offsets.binary_search(&offset) {
            Ok(index) => self.corrections[index],
            Err(_) => 0,
        }
    }

    /// How many instructions have an entry.
    pub fn len(&self) -> usize {
        self.offsets.len()
    }

    /// Whether the map is empty.
    pub fn is_empty(&self) -> bool {
        self.offsets.is_empty()
    }
}

/// What the pass did to a module.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Stats {
    /// Functions instrumented (defined, not imported).
    pub functions: usize,
    /// Basic blocks in the original code (function entries, arms, loop bodies, branch targets,
    /// fall-throughs after conditional branches).
    pub basic_blocks: usize,
    /// Places where the running count changes at run time.
    pub counters_placed: usize,
    /// Places where the budget is checked.
    pub budget_checks_placed: usize,
    /// Input size in bytes.
    pub input_bytes: usize,
    /// Output size in bytes.
    pub output_bytes: usize,
}

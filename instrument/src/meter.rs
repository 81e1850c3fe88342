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
    /// Offsets of instructions that may have absorbed a load (Cranelift merges a load into its
    /// consumer and reports the load's trap at the consumer), ascending.
    #[serde(default)]
    merged_offsets: Vec<u32>,
    /// The load's correction, for an out-of-bounds trap at the same index in `merged_offsets`.
    #[serde(default)]
    merged_corrections: Vec<u64>,
    /// Offsets of `loop`s whose body starts (after pure instructions) with one that can trap.
    #[serde(default)]
    loop_offsets: Vec<u32>,
    /// That instruction's correction, for a trap other than an interrupt reported at the loop.
    #[serde(default)]
    loop_corrections: Vec<u64>,
}

/// What kind of trap a correction is asked for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TrapKind {
    /// An out-of-bounds memory access.
    OutOfBounds,
    /// An interrupt (the epoch deadline), raised at function entries and loop headers.
    Interrupt,
    /// Any other trap.
    Other,
}

fn sorted(mut entries: Vec<(u32, u64)>) -> (Vec<u32>, Vec<u64>) {
    entries.sort_unstable_by_key(|&(offset, _)| offset);
    entries.dedup_by_key(|&mut (offset, _)| offset);
    entries.into_iter().unzip()
}

fn lookup(offsets: &[u32], corrections: &[u64], module_offset: usize) -> Option<u64> {
    let offset = u32::try_from(module_offset).ok()?;
    let index = offsets.binary_search(&offset).ok()?;
    // A map read back from disk may be damaged: no entry rather than a panic.
    corrections.get(index).copied()
}

impl MeterMap {
    pub(crate) fn new(
        entries: Vec<(u32, u64)>,
        merged: Vec<(u32, u64)>,
        loops: Vec<(u32, u64)>,
    ) -> MeterMap {
        let (offsets, corrections) = sorted(entries);
        let (merged_offsets, merged_corrections) = sorted(merged);
        let (loop_offsets, loop_corrections) = sorted(loops);
        MeterMap {
            offsets,
            corrections,
            merged_offsets,
            merged_corrections,
            loop_offsets,
            loop_corrections,
        }
    }

    /// The amount to subtract from `__tally_ops` after a trap of `kind` whose top wasm frame
    /// is at `module_offset`.
    ///
    /// * An out-of-bounds trap at an instruction that does not access memory itself is a load
    ///   Cranelift merged into it: the load's correction applies.
    /// * A trap other than an interrupt reported at a `loop` is the first instruction of its
    ///   body that can trap (Cranelift turned the body into a branch to the trap, which carries
    ///   the loop's location): that instruction's correction applies.
    pub fn trap_correction(&self, module_offset: usize, kind: TrapKind) -> u64 {
        let merged = || {
            lookup(
                &self.merged_offsets,
                &self.merged_corrections,
                module_offset,
            )
        };
        let in_loop = || lookup(&self.loop_offsets, &self.loop_corrections, module_offset);
        match kind {
            TrapKind::OutOfBounds => merged().or_else(in_loop),
            TrapKind::Other => in_loop(),
            TrapKind::Interrupt => None,
        }
        .unwrap_or_else(|| self.correction_at(module_offset))
    }

    /// The amount to subtract from `__tally_ops` when a trap's top wasm frame is at
    /// `module_offset`. Offsets that are not instructions of the original module (a function
    /// prologue, code the pass inserted) carry no prepaid amount.
    pub fn correction_at(&self, module_offset: usize) -> u64 {
        lookup(&self.offsets, &self.corrections, module_offset).unwrap_or(0)
    }

    /// Every code offset the map has an entry for, in any of its tables (each must be where an
    /// instruction of the instrumented module starts).
    pub fn offsets(&self) -> impl Iterator<Item = u32> + '_ {
        self.offsets
            .iter()
            .chain(&self.merged_offsets)
            .chain(&self.loop_offsets)
            .copied()
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
    /// Stores placed before memory accesses that could otherwise absorb a load (see the crate
    /// documentation on traps).
    #[serde(default)]
    pub fences_placed: usize,
    /// Loops whose body keeps the count in a register (see the crate documentation).
    #[serde(default)]
    pub register_loops: usize,
    /// Bounds checks placed before the memory accesses of those loops.
    #[serde(default)]
    pub bounds_checks_placed: usize,
    /// Input size in bytes.
    pub input_bytes: usize,
    /// Output size in bytes.
    pub output_bytes: usize,
}

impl Stats {
    /// Adds the counts of one function's pass (the byte sizes are the module's).
    pub(crate) fn add_function(&mut self, f: &Stats) {
        self.functions += f.functions;
        self.basic_blocks += f.basic_blocks;
        self.counters_placed += f.counters_placed;
        self.budget_checks_placed += f.budget_checks_placed;
        self.fences_placed += f.fences_placed;
        self.register_loops += f.register_loops;
        self.bounds_checks_placed += f.bounds_checks_placed;
    }
}

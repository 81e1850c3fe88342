//! The instrumentation pass: prepaid fall-through paths, charges on the edges that leave them.
//!
//! For every position `p` in a function, `phi(p)` is the weight of the straight-line path that
//! starts at `p`: the instructions that run if no branch is taken, through the ends of
//! enclosing blocks, into the prepaid arm of each `if`, stopping after the first instruction
//! that never falls through (`br`, `br_table`, `return`, `unreachable`, a tail call). The
//! invariant the rewritten code keeps is
//!
//! ```text
//! count (local, and the global whenever no call is in progress) == executed + phi(p)
//! ```
//!
//! Falling through keeps it for free; every edge that jumps from `p` to `q` adds
//! `phi(q) - phi(p')` (with `p'` the point right after the branch), calls hand the callee an
//! exact count, and a trap at instruction `x` is made exact by subtracting `phi(after x)`.

use std::collections::{HashMap, HashSet};
use std::ops::Range;
use std::sync::{Arc, Mutex};

use rayon::iter::{IntoParallelIterator, ParallelIterator};
use walrus::ir::{BinaryOp, Instr, InstrLocId, InstrSeqId, InstrSeqType, UnaryOp, Value};
use walrus::{
    ConstExpr, FunctionId, GlobalId, LocalFunction, LocalId, MemoryId, Module, ModuleConfig,
    ModuleTypes, ValType,
};

use crate::cost::CostTable;
use crate::meter::{MeterMap, Stats};
use crate::{
    BUDGET_GLOBAL, EXHAUSTED_GLOBAL, Error, FUNCTIONS_MAX, Instrumented, MEMORY_INTEGRAL_GLOBAL,
    MEMORY_MARK_GLOBAL, MEMORY_PAGES_GLOBAL, META_SECTION, MODULE_BYTES_MAX, NESTING_DEPTH_MAX,
    OPS_GLOBAL, OPS_MAX, Options,
};

/// Rewrites `wasm` so that it counts its own work with the weights of `costs`.
///
/// See the crate documentation for the exact semantics of the count, the budget and traps.
pub fn instrument(
    wasm: &[u8],
    costs: &CostTable,
    options: &Options,
) -> Result<Instrumented, Error> {
    if wasm.len() > MODULE_BYTES_MAX {
        return Err(Error::TooLarge(wasm.len()));
    }
    // `scan` is iterative; it also finds how deep the pass will recurse.
    let weights = scan(wasm, costs)?;
    if weights.nesting_depth_max <= INLINE_NESTING_DEPTH_MAX {
        // As on a thread of its own: a bug that panics is an error, not the caller's panic.
        return std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            instrument_scanned(wasm, weights, costs, options)
        }))
        .map_err(|_| Error::Limit("the instrumentation pass panicked".into()))?;
    }
    // The pass recurses once per nesting level; run deep modules on a stack sized for
    // NESTING_DEPTH_MAX whatever thread the caller is on (test threads and tokio blocking
    // threads have 2 MiB). A thread of its own costs a fresh stack and malloc arena, so
    // modules whose nesting fits any caller's stack stay on the caller's thread.
    std::thread::scope(|scope| {
        std::thread::Builder::new()
            .name("tally-instrument".into())
            .stack_size(PASS_STACK_BYTES)
            .spawn_scoped(scope, || instrument_scanned(wasm, weights, costs, options))
            .map_err(|e| Error::Limit(format!("cannot start the instrumentation thread: {e}")))?
            .join()
            .map_err(|_| Error::Limit("the instrumentation pass panicked".into()))?
    })
}

/// The guard region below which wasmtime 48 (default memory configuration, 64-bit host) elides
/// bounds checks of 32-bit memories, so that an access is a plain load or store whatever its
/// address: 32 MiB.
const GUARD_BYTES_ASSUMED: u64 = 32 << 20;

/// Stack for the pass: enough for [`NESTING_DEPTH_MAX`] levels in an unoptimized build.
const PASS_STACK_BYTES: usize = 256 * 1024 * 1024;

/// The deepest nesting the pass handles on the caller's thread: a test checks that it fits
/// in `INLINE_STACK_BYTES`, half the smallest stack a caller has (2 MiB: Rust's test threads
/// and tokio's blocking threads), in the unoptimized test profile, where a level takes 5-8 KiB
/// (128 levels overflowed 640 KiB and fit 1 MiB). The guests nest up to 67 deep (deflate;
/// regex 65).
const INLINE_NESTING_DEPTH_MAX: usize = 96;

/// The stack [`INLINE_NESTING_DEPTH_MAX`] levels must fit in.
#[cfg(test)]
const INLINE_STACK_BYTES: usize = 1024 * 1024;

const _: () = assert!(INLINE_NESTING_DEPTH_MAX <= NESTING_DEPTH_MAX);

fn instrument_scanned(
    wasm: &[u8],
    weights: Weights,
    costs: &CostTable,
    options: &Options,
) -> Result<Instrumented, Error> {
    let mut config = ModuleConfig::new();
    config
        .preserve_code_transform(true)
        .generate_producers_section(false);
    let mut module = config
        .parse(wasm)
        .map_err(|e| Error::Invalid(format!("{e:#}")))?;
    reject_reserved_names(&module)?;
    if module.funcs.iter().count() > FUNCTIONS_MAX {
        return Err(Error::Limit(format!(
            "module has {} functions, more than the limit of {FUNCTIONS_MAX}",
            module.funcs.iter().count()
        )));
    }

    if options.defer_start
        && let Some(start) = module.start.take()
    {
        module.exports.add(crate::START_EXPORT, start);
    }
    let ops = module
        .globals
        .add_local(ValType::I64, true, false, ConstExpr::Value(Value::I64(0)));
    let budget_initial = options.initial_budget.min(OPS_MAX);
    let budget = module.globals.add_local(
        ValType::I64,
        true,
        false,
        ConstExpr::Value(Value::I64(budget_initial as i64)),
    );
    let exhausted =
        module
            .globals
            .add_local(ValType::I32, true, false, ConstExpr::Value(Value::I32(0)));
    module.exports.add(OPS_GLOBAL, ops);
    module.exports.add(BUDGET_GLOBAL, budget);
    module.exports.add(EXHAUSTED_GLOBAL, exhausted);

    let initial_pages: u64 = module.memories.iter().map(|m| m.initial).sum();
    let mut add_i64 = |name: &str, value: i64| {
        let id = module.globals.add_local(
            ValType::I64,
            true,
            false,
            ConstExpr::Value(Value::I64(value)),
        );
        module.exports.add(name, id);
        id
    };
    let memory = MemoryGlobals {
        pages: add_i64(MEMORY_PAGES_GLOBAL, initial_pages as i64),
        mark: add_i64(MEMORY_MARK_GLOBAL, 0),
        integral: add_i64(MEMORY_INTEGRAL_GLOBAL, 0),
    };
    let fence =
        module
            .globals
            .add_local(ValType::I32, true, false, ConstExpr::Value(Value::I32(0)));
    let globals = Globals {
        ops,
        fence,
        budget,
        exhausted,
        memory,
    };
    let func_ids: Vec<FunctionId> = module.funcs.iter_local().map(|(id, _)| id).collect();
    let bounded_memories: Vec<(MemoryId, u64)> = module
        .memories
        .iter()
        .filter_map(|m| {
            let page = 1u64 << m.page_size_log2.unwrap_or(16).min(16);
            Some((m.id(), m.maximum?.saturating_mul(page)))
        })
        .collect();
    // Every local a function's pass may use is allocated up front (walrus emits only the
    // locals a function uses), so that the functions can be rewritten in parallel.
    let pass_locals: HashMap<FunctionId, PassLocals> = func_ids
        .iter()
        .map(|&id| {
            let locals = &mut module.locals;
            let l = PassLocals {
                count: locals.add(ValType::I64),
                scratch: locals.add(ValType::I32),
                grow_result: locals.add(ValType::I32),
                charged: locals.add(ValType::I64),
            };
            (id, l)
        })
        .collect();
    let walrus::Module { funcs, types, .. } = &mut module;
    let types = Mutex::new(types);
    let shared = Shared {
        types: &types,
        weights: &weights,
        costs,
        globals,
        bounded_memories: &bounded_memories,
    };
    let run = |(id, func): (FunctionId, &mut LocalFunction)| {
        let mut out = FunctionOutput::default();
        FunctionPass::new(&shared, func, pass_locals[&id], &mut out).run()?;
        Ok(out)
    };
    // The pass recurses once per nesting level: modules nested deeper than a worker thread's
    // stack allows stay on this (large-stack) thread.
    let outputs: Vec<FunctionOutput> = if weights.nesting_depth_max <= INLINE_NESTING_DEPTH_MAX {
        funcs
            .par_iter_local_mut()
            .map(run)
            .collect::<Result<_, Error>>()?
    } else {
        funcs
            .iter_local_mut()
            .map(run)
            .collect::<Result<_, Error>>()?
    };
    let mut stats = Stats {
        input_bytes: wasm.len(),
        ..Stats::default()
    };
    let mut corrections: Vec<(u32, u64)> = Vec::new();
    let mut loop_traps: Vec<(u32, u64)> = Vec::new();
    for out in outputs {
        stats.add_function(&out.stats);
        corrections.extend(out.corrections);
        loop_traps.extend(out.loop_traps);
    }

    let captured = Arc::new(Mutex::new(Vec::new()));
    module.customs.add(MeterSection {
        payload: format!("{{\"cost_table\":\"{}\",\"format\":1}}", costs.id()),
        captured: captured.clone(),
    });
    let out = module.emit_wasm();
    let transform = std::mem::take(&mut *captured.lock().expect("meter section lock"));
    let output_offset = |loc: u32| {
        // None: the instruction was in code walrus dropped as unused.
        let index = transform.binary_search_by_key(&loc, |&(l, _)| l).ok()?;
        Some(u32::try_from(transform[index].1).expect("offsets fit the module size"))
    };
    corrections.sort_unstable_by_key(|&(loc, _)| loc);
    let mut merged = Vec::with_capacity(weights.analysis.merged.len());
    for &(consumer, load) in &weights.analysis.merged {
        let Ok(index) = corrections.binary_search_by_key(&load, |&(l, _)| l) else {
            continue;
        };
        if let Some(offset) = output_offset(consumer) {
            merged.push((offset, corrections[index].1));
        }
    }
    // Original offsets to output offsets, dropping instructions walrus removed as dead.
    let to_output = |entries: Vec<(u32, u64)>| -> Vec<(u32, u64)> {
        entries
            .into_iter()
            .filter_map(|(loc, correction)| Some((output_offset(loc)?, correction)))
            .collect()
    };
    // An offset without an entry is corrected by 0 (`MeterMap::correction_at`).
    corrections.retain(|&(_, correction)| correction != 0);
    let entries = to_output(corrections);
    let loop_traps = to_output(loop_traps);
    stats.output_bytes = out.len();
    Ok(Instrumented {
        wasm: out,
        meter_map: MeterMap::new(entries, merged, loop_traps),
        stats,
    })
}

/// The globals the pass adds.
#[derive(Clone, Copy)]
struct Globals {
    ops: GlobalId,
    /// Written by fences, never read.
    fence: GlobalId,
    budget: GlobalId,
    exhausted: GlobalId,
    memory: MemoryGlobals,
}

/// The deterministic memory-time integral: pages held × ops executed.
#[derive(Clone, Copy)]
struct MemoryGlobals {
    /// Pages of all memories now.
    pages: GlobalId,
    /// The count at the last `memory.grow`.
    mark: GlobalId,
    /// pages × ops accumulated up to `mark`.
    integral: GlobalId,
}

/// The weight and facts of each original instruction, by its offset in the input.
struct Weights {
    /// Offsets of all operators, ascending.
    offsets: Vec<u32>,
    weights: Vec<u32>,
    /// [`Flags`] of each operator.
    flags: Vec<u8>,
    /// Loads Cranelift may merge into their consumer: out-of-bounds corrections.
    analysis: crate::merge::Analysis,
    /// The deepest nesting of blocks, loops and ifs in any body.
    nesting_depth_max: usize,
    /// Where the code section's contents start (walrus's function ranges are relative to it).
    code_section_start: usize,
}

/// What the scan found about one operator (bits of [`Weights::flags`]).
struct Flags;

impl Flags {
    /// A `loop` that some branch targets, dead code included (walrus drops dead code, but
    /// the budget-check points are defined on the module as written).
    const BRANCHED_LOOP: u8 = 1;
    /// The first operator of a body that contains a call, dead code included.
    const CALLING_BODY: u8 = 2;
    /// A memory access that needs a fence right before it (see `merge`).
    const FENCE_BEFORE: u8 = 4;
    /// The last instruction of a block that needs a fence right after it.
    const FENCE_AFTER: u8 = 8;
    /// An instruction a load may be merged into: the meter map needs its output offset.
    const MERGED_CONSUMER: u8 = 16;
}

impl Weights {
    /// The indices of the operators of the body at `range` (relative to the code section, as
    /// walrus has it; all operators if unknown).
    fn body(&self, range: Option<Range<usize>>) -> Range<usize> {
        match range {
            Some(range) => {
                let at = |offset: usize| {
                    let offset = self.code_section_start + offset;
                    self.offsets.partition_point(|&o| (o as usize) < offset)
                };
                at(range.start)..at(range.end)
            }
            None => 0..self.offsets.len(),
        }
    }

    /// Sets `flag` on the operators at `offsets`.
    fn flag(&mut self, offsets: impl IntoIterator<Item = u32>, flag: u8) {
        for offset in offsets {
            if let Ok(index) = self.offsets.binary_search(&offset) {
                self.flags[index] |= flag;
            }
        }
    }
}

/// The operators of one function body, found by their offset in one array access (the pass
/// looks up every instruction's weight and flags, several times; a binary search each time
/// was a fifth of the pass's time).
struct BodyIndex<'a> {
    weights: &'a Weights,
    /// The offset of the body's first operator.
    base: u32,
    /// For each byte of the body from `base`: 1 + the index in `weights` of the operator that
    /// starts there, 0 where none does.
    slots: Vec<u32>,
}

impl<'a> BodyIndex<'a> {
    fn new(weights: &'a Weights, body: Range<usize>) -> Self {
        let offsets = &weights.offsets[body.clone()];
        let base = offsets.first().copied().unwrap_or(0);
        let len = offsets.last().map_or(0, |&last| (last - base) as usize + 1);
        let mut slots = vec![0u32; len];
        for (index, &offset) in body.zip(offsets) {
            slots[(offset - base) as usize] =
                u32::try_from(index + 1).expect("operators are fewer than the module's bytes");
        }
        BodyIndex {
            weights,
            base,
            slots,
        }
    }

    /// The index in `weights` of the operator at `loc`.
    fn index(&self, loc: InstrLocId) -> Option<usize> {
        if loc.is_default() {
            return None;
        }
        let slot = *self
            .slots
            .get(loc.data().checked_sub(self.base)? as usize)?;
        (slot != 0).then(|| slot as usize - 1)
    }

    fn weight(&self, loc: InstrLocId) -> u64 {
        self.index(loc)
            .map_or(0, |index| u64::from(self.weights.weights[index]))
    }

    fn flags(&self, loc: InstrLocId) -> u8 {
        self.index(loc).map_or(0, |index| self.weights.flags[index])
    }

    fn has(&self, loc: InstrLocId, flag: u8) -> bool {
        self.flags(loc) & flag != 0
    }
}

/// The module-level facts the scan needs, and the function bodies in order.
#[derive(Default)]
struct Sections<'a> {
    code_section_start: usize,
    types: crate::merge::ModuleTypes,
    imported_functions: usize,
    /// Each body with its function's type index.
    bodies: Vec<(wasmparser::FunctionBody<'a>, u32)>,
}

impl<'a> Sections<'a> {
    /// Reads the sections up to the first error (what was read before it is kept).
    fn read(&mut self, wasm: &'a [u8]) -> Result<(), Error> {
        use wasmparser::{Parser, Payload};
        let invalid = |e: wasmparser::BinaryReaderError| Error::Invalid(e.to_string());
        for payload in Parser::new(0).parse_all(wasm) {
            match payload.map_err(invalid)? {
                Payload::TypeSection(reader) => {
                    for group in reader {
                        self.types
                            .types
                            .extend(group.map_err(invalid)?.into_types());
                    }
                }
                Payload::CodeSectionStart { range, .. } => self.code_section_start = range.start,
                Payload::FunctionSection(reader) => {
                    for ty in reader {
                        self.types.function_types.push(ty.map_err(invalid)?);
                    }
                }
                Payload::Version {
                    encoding: wasmparser::Encoding::Component,
                    ..
                } => {
                    return Err(Error::Invalid("a component is not a core module".into()));
                }
                Payload::MemorySection(reader) => {
                    for memory in reader {
                        if memory.map_err(invalid)?.memory64 {
                            return Err(Error::Unsupported("memory64".into()));
                        }
                    }
                }
                Payload::TableSection(reader) => {
                    for table in reader {
                        if table.map_err(invalid)?.ty.table64 {
                            return Err(Error::Unsupported("table64".into()));
                        }
                    }
                }
                Payload::ImportSection(reader) => {
                    for import in reader.into_imports() {
                        match import.map_err(invalid)?.ty {
                            wasmparser::TypeRef::Func(ty) => {
                                self.types.function_types.push(ty);
                                self.imported_functions += 1;
                            }
                            wasmparser::TypeRef::Memory(m) if m.memory64 => {
                                return Err(Error::Unsupported("memory64".into()));
                            }
                            wasmparser::TypeRef::Table(t) if t.table64 => {
                                return Err(Error::Unsupported("table64".into()));
                            }
                            wasmparser::TypeRef::Tag(_) => {
                                return Err(Error::Unsupported(
                                    "exception handling (tag import)".into(),
                                ));
                            }
                            _ => {}
                        }
                    }
                }
                Payload::CodeSectionEntry(body) => {
                    let function_type = self
                        .types
                        .function_types
                        .get(self.imported_functions + self.bodies.len())
                        .copied()
                        .ok_or_else(|| Error::Invalid("a body without a function".into()))?;
                    self.bodies.push((body, function_type));
                }
                _ => {}
            }
        }
        Ok(())
    }
}

/// Reads every operator once: weights by offset, unsupported operators, nesting depth.
fn scan(wasm: &[u8], costs: &CostTable) -> Result<Weights, Error> {
    let mut sections = Sections::default();
    let read = sections.read(wasm);
    let Sections {
        code_section_start,
        types,
        bodies,
        ..
    } = sections;
    // The bodies are independent: scan them in parallel, then report the first error in
    // module order (a body's before that of a section after it).
    let scanned: Vec<Result<BodyScan, Error>> = bodies
        .into_par_iter()
        .map(|(body, function_type)| scan_body(body, &types, function_type, costs))
        .collect();
    let mut offsets = Vec::new();
    let mut weights = Vec::new();
    let mut branched_loops = Vec::new();
    let mut calling_bodies = Vec::new();
    let mut nesting_depth_max = 0usize;
    let mut analysis = crate::merge::Analysis::default();
    for body in scanned {
        let body = body?;
        offsets.extend(body.offsets);
        weights.extend(body.weights);
        branched_loops.extend(body.branched_loops);
        calling_bodies.extend(body.calls.then_some(body.first));
        nesting_depth_max = nesting_depth_max.max(body.nesting_depth_max);
        analysis.fences.extend(body.analysis.fences);
        analysis.fences_after.extend(body.analysis.fences_after);
        analysis.merged.extend(body.analysis.merged);
    }
    read?;
    let flags = vec![0; offsets.len()];
    let mut out = Weights {
        offsets,
        weights,
        flags,
        analysis: crate::merge::Analysis::default(),
        nesting_depth_max,
        code_section_start,
    };
    out.flag(branched_loops, Flags::BRANCHED_LOOP);
    out.flag(calling_bodies, Flags::CALLING_BODY);
    out.flag(analysis.fences.drain(), Flags::FENCE_BEFORE);
    out.flag(analysis.fences_after.drain(), Flags::FENCE_AFTER);
    out.flag(
        analysis.merged.iter().map(|&(consumer, _)| consumer),
        Flags::MERGED_CONSUMER,
    );
    out.analysis = analysis;
    Ok(out)
}

/// What [`scan_body`] found in one function body.
struct BodyScan {
    /// Offsets of the body's operators, ascending.
    offsets: Vec<u32>,
    weights: Vec<u32>,
    /// Loops some branch targets.
    branched_loops: Vec<u32>,
    /// Some operator calls (or tail-calls).
    calls: bool,
    /// The offset of the first operator.
    first: u32,
    nesting_depth_max: usize,
    analysis: crate::merge::Analysis,
}

fn scan_body(
    body: wasmparser::FunctionBody<'_>,
    types: &crate::merge::ModuleTypes,
    function_type: u32,
    costs: &CostTable,
) -> Result<BodyScan, Error> {
    use wasmparser::Operator;
    let invalid = |e: wasmparser::BinaryReaderError| Error::Invalid(e.to_string());
    let mut reader = body.get_operators_reader().map_err(invalid)?;
    let first = u32::try_from(reader.original_position()).expect("module size is limited");
    let mut out = BodyScan {
        offsets: Vec::new(),
        weights: Vec::new(),
        branched_loops: Vec::new(),
        calls: false,
        first,
        nesting_depth_max: 0,
        analysis: crate::merge::Analysis::default(),
    };
    let mut depth = 0usize;
    // (is a loop, offset) for every open block, loop and if.
    let mut labels: Vec<(bool, u32)> = Vec::new();
    let mut merges = crate::merge::Body::new(types, function_type);
    while !reader.eof() {
        let offset = reader.original_position();
        let op = reader.read().map_err(invalid)?;
        let at = u32::try_from(offset).expect("module size is limited");
        let mut branch_to = |depth: u32, labels: &Vec<(bool, u32)>| {
            if let Some(&(true, loop_at)) = (depth as usize)
                .checked_add(1)
                .and_then(|d| labels.len().checked_sub(d))
                .map(|i| &labels[i])
            {
                out.branched_loops.push(loop_at);
            }
        };
        match &op {
            Operator::Block { .. } | Operator::If { .. } => labels.push((false, at)),
            Operator::Loop { .. } => labels.push((true, at)),
            Operator::End => {
                labels.pop();
            }
            Operator::Br { relative_depth } | Operator::BrIf { relative_depth } => {
                branch_to(*relative_depth, &labels)
            }
            Operator::BrTable { targets } => {
                branch_to(targets.default(), &labels);
                for target in targets.targets() {
                    branch_to(target.map_err(invalid)?, &labels);
                }
            }
            Operator::Call { .. }
            | Operator::CallIndirect { .. }
            | Operator::CallRef { .. }
            | Operator::ReturnCall { .. }
            | Operator::ReturnCallIndirect { .. }
            | Operator::ReturnCallRef { .. } => out.calls = true,
            _ => {}
        }
        match &op {
            Operator::Block { .. } | Operator::Loop { .. } | Operator::If { .. } => {
                depth += 1;
                out.nesting_depth_max = out.nesting_depth_max.max(depth);
                if depth > NESTING_DEPTH_MAX {
                    return Err(Error::Limit(format!(
                        "blocks are nested more than {NESTING_DEPTH_MAX} deep"
                    )));
                }
            }
            Operator::End => depth = depth.saturating_sub(1),
            Operator::Try { .. }
            | Operator::TryTable { .. }
            | Operator::Throw { .. }
            | Operator::ThrowRef
            | Operator::Rethrow { .. }
            | Operator::Delegate { .. }
            | Operator::Catch { .. }
            | Operator::CatchAll
            | Operator::BrOnNull { .. }
            | Operator::BrOnNonNull { .. }
            | Operator::BrOnCast { .. }
            | Operator::BrOnCastFail { .. } => {
                return Err(Error::Unsupported(crate::operator_name(&op).into()));
            }
            _ => {}
        }
        merges.operator(at, &op, &mut out.analysis)?;
        out.offsets.push(at);
        out.weights
            .push(u32::try_from(costs.weight(&op)).expect("weights are u32"));
    }
    Ok(out)
}

fn reject_reserved_names(module: &Module) -> Result<(), Error> {
    let reserved = |name: &str| name.starts_with("__tally_");
    for export in module.exports.iter() {
        if reserved(&export.name) {
            return Err(Error::ReservedName(export.name.clone()));
        }
    }
    for import in module.imports.iter() {
        if reserved(&import.name) || reserved(&import.module) {
            return Err(Error::ReservedName(import.name.clone()));
        }
    }
    for global in module.globals.iter() {
        if let Some(name) = &global.name
            && reserved(name)
        {
            return Err(Error::ReservedName(name.clone()));
        }
    }
    for (_, func) in module.funcs.iter().map(|f| (f.id(), f)) {
        if let Some(name) = &func.name
            && reserved(name)
        {
            return Err(Error::ReservedName(name.clone()));
        }
    }
    Ok(())
}

/// Captures walrus's map from original instruction to output offset while it emits.
#[derive(Debug)]
struct MeterSection {
    payload: String,
    captured: Arc<Mutex<Vec<(u32, usize)>>>,
}

impl walrus::CustomSection for MeterSection {
    fn name(&self) -> &str {
        META_SECTION
    }

    fn data(&self, _: &walrus::IdsToIndices) -> std::borrow::Cow<'_, [u8]> {
        std::borrow::Cow::Borrowed(self.payload.as_bytes())
    }

    fn apply_code_transform(&mut self, transform: &walrus::CodeTransform) {
        let mut captured = self.captured.lock().expect("meter section lock");
        *captured = transform
            .instruction_map
            .iter()
            .map(|&(loc, offset)| (loc.data(), offset))
            .collect();
        captured.sort_unstable_by_key(|&(loc, _)| loc);
    }
}

/// What the pass knows about one instruction sequence.
#[derive(Default)]
struct SeqFacts {
    /// phi at every position (len + 1 entries); taken while the sequence is rewritten.
    phi: Vec<u64>,
    /// phi at the start.
    start: u64,
    /// phi right after the construct that the sequence is the body of.
    cont: u64,
    /// The body of a loop.
    is_loop: bool,
    /// Some branch targets it.
    targeted: bool,
    /// The consequent of an `if` whose alternative (rather than consequent) is prepaid.
    prepaid_alternative: bool,
    /// A branch to this label cannot be folded by Cranelift into a conditional trap: the code
    /// it lands on starts with a side effect that is not a certain trap (see
    /// [`FunctionPass::cannot_fold`]).
    cont_cannot_fold: bool,
}

/// What kind of construct an instruction sequence is the body of.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Construct {
    Entry,
    Block,
    Loop,
    Arm,
}

/// What every function's pass reads (and, for block types, adds to).
struct Shared<'a, 't> {
    types: &'a Mutex<&'t mut ModuleTypes>,
    weights: &'a Weights,
    costs: &'a CostTable,
    globals: Globals,
    /// The memories that have a maximum, with that maximum in bytes.
    bounded_memories: &'a [(MemoryId, u64)],
}

/// The locals a function's pass may add (allocated before the functions are rewritten).
#[derive(Clone, Copy)]
struct PassLocals {
    /// The running count: executed + phi(here).
    count: LocalId,
    /// The length (or delta) operand of a bulk operation or a grow.
    scratch: LocalId,
    /// The result of `memory.grow`.
    grow_result: LocalId,
    /// The count once a bulk operation's per-unit cost is added (checked before it runs).
    charged: LocalId,
}

/// What the pass of one function produces besides the rewritten body.
#[derive(Default)]
struct FunctionOutput {
    stats: Stats,
    corrections: Vec<(u32, u64)>,
    /// (loop, correction of the first instruction of its body that can trap).
    loop_traps: Vec<(u32, u64)>,
}

struct FunctionPass<'a, 't> {
    func: &'a mut LocalFunction,
    types: &'a Mutex<&'t mut ModuleTypes>,
    /// The weights and flags of this function's operators.
    ops: BodyIndex<'a>,
    costs: &'a CostTable,
    globals: Globals,
    locals: PassLocals,
    /// Fences placed in this function so far.
    fences: i32,
    /// What the pass knows about each sequence of the function, by its index.
    seqs: Vec<SeqFacts>,
    /// The memories that have a maximum, with that maximum in bytes.
    bounded_memories: &'a [(MemoryId, u64)],
    /// Some instruction calls (or tail-calls).
    has_calls: bool,
    stats: &'a mut Stats,
    corrections: &'a mut Vec<(u32, u64)>,
    /// (loop, correction of the first instruction of its body that can trap).
    loop_traps: &'a mut Vec<(u32, u64)>,
}

/// A tail call: a call that also ends the function.
fn is_tail_call(instr: &Instr) -> bool {
    matches!(
        instr,
        Instr::ReturnCall(_) | Instr::ReturnCallIndirect(_) | Instr::ReturnCallRef(_)
    )
}

fn is_terminator(instr: &Instr) -> bool {
    is_tail_call(instr)
        || matches!(
            instr,
            Instr::Br(_) | Instr::BrTable(_) | Instr::Return(_) | Instr::Unreachable(_)
        )
}

/// A call or a tail call.
fn calls(instr: &Instr) -> bool {
    is_call(instr) || is_tail_call(instr)
}

fn is_call(instr: &Instr) -> bool {
    matches!(
        instr,
        Instr::Call(_) | Instr::CallIndirect(_) | Instr::CallRef(_)
    )
}

/// Instructions that can neither trap nor be the top frame of a trap; they need no correction.
fn never_traps(instr: &Instr) -> bool {
    match instr {
        Instr::LocalGet(_)
        | Instr::LocalSet(_)
        | Instr::LocalTee(_)
        | Instr::GlobalGet(_)
        | Instr::GlobalSet(_)
        | Instr::Const(_)
        | Instr::Drop(_)
        | Instr::Select(_)
        | Instr::Block(_)
        | Instr::IfElse(_)
        | Instr::Br(_)
        | Instr::BrIf(_)
        | Instr::BrTable(_)
        | Instr::MemorySize(_)
        | Instr::RefNull(_)
        | Instr::RefIsNull(_)
        | Instr::RefFunc(_)
        | Instr::RefI31(_)
        | Instr::TableSize(_)
        | Instr::TernOp(_)
        | Instr::DataDrop(_)
        | Instr::ElemDrop(_)
        | Instr::AtomicFence(_) => true,
        Instr::Binop(b) => !matches!(
            b.op,
            BinaryOp::I32DivS
                | BinaryOp::I32DivU
                | BinaryOp::I32RemS
                | BinaryOp::I32RemU
                | BinaryOp::I64DivS
                | BinaryOp::I64DivU
                | BinaryOp::I64RemS
                | BinaryOp::I64RemU
        ),
        Instr::Unop(u) => !matches!(
            u.op,
            UnaryOp::I32TruncSF32
                | UnaryOp::I32TruncUF32
                | UnaryOp::I32TruncSF64
                | UnaryOp::I32TruncUF64
                | UnaryOp::I64TruncSF32
                | UnaryOp::I64TruncUF32
                | UnaryOp::I64TruncSF64
                | UnaryOp::I64TruncUF64
        ),
        _ => false,
    }
}

/// Whether the straight-line path `rest` (what follows a `br_if` in its sequence) reaches a call
/// or `unreachable` before any control flow.
fn fall_through_is_cold(rest: &[(Instr, InstrLocId)]) -> bool {
    for (instr, _) in rest {
        if is_call(instr) || matches!(instr, Instr::Unreachable(_)) {
            return true;
        }
        if is_terminator(instr)
            || matches!(
                instr,
                Instr::Block(_)
                    | Instr::Loop(_)
                    | Instr::IfElse(_)
                    | Instr::BrIf(_)
                    | Instr::BrTable(_)
            )
        {
            return false;
        }
    }
    false
}

/// See [`FunctionPass::if_traps`].
#[derive(Default)]
struct IfTraps {
    /// The `if`'s offset has an entry (it must keep its location).
    entry: bool,
    fence_prepaid: bool,
    fence_other: bool,
}

impl<'a, 't> FunctionPass<'a, 't> {
    fn new(
        shared: &'a Shared<'a, 't>,
        func: &'a mut LocalFunction,
        locals: PassLocals,
        out: &'a mut FunctionOutput,
    ) -> Self {
        let body = shared.weights.body(func.original_range.clone());
        FunctionPass {
            func,
            types: shared.types,
            ops: BodyIndex::new(shared.weights, body),
            costs: shared.costs,
            globals: shared.globals,
            locals,
            fences: 0,
            seqs: Vec::new(),
            bounded_memories: shared.bounded_memories,
            has_calls: false,
            stats: &mut out.stats,
            corrections: &mut out.corrections,
            loop_traps: &mut out.loop_traps,
        }
    }

    fn run(&mut self) -> Result<(), Error> {
        let entry = self.func.entry_block();
        self.stats.functions += 1;
        self.classify(entry, Construct::Entry);
        // A branch to the function's label returns.
        self.facts(entry).cont_cannot_fold = true;
        let body = self.plan(entry, 0)?;
        let prepay = body
            .checked_add(self.costs.function_entry())
            .filter(|&p| p < OPS_MAX)
            .ok_or_else(|| Error::Limit("a function's static cost overflows".into()))?;
        let first_loc = self.func.block(entry).instrs.first().map(|(_, loc)| *loc);
        let has_calls =
            self.has_calls || first_loc.is_some_and(|loc| self.ops.has(loc, Flags::CALLING_BODY));
        self.rewrite(entry)?;

        // Function entry: load the count, prepay the fall-through path, check the budget.
        let mut head = vec![
            Instr::GlobalGet(walrus::ir::GlobalGet {
                global: self.globals.ops,
            }),
            i64_const(prepay as i64),
            Instr::Binop(walrus::ir::Binop {
                op: BinaryOp::I64Add,
            }),
            Instr::LocalTee(walrus::ir::LocalTee {
                local: self.locals.count,
            }),
            self.set_ops(),
        ];
        self.stats.counters_placed += 1;
        if has_calls {
            head.extend(self.budget_check(body, None));
        }
        let seq = self.func.block_mut(entry);
        let old = std::mem::take(&mut seq.instrs);
        seq.instrs = head
            .into_iter()
            .map(|i| (i, InstrLocId::default()))
            .chain(old)
            .collect();
        Ok(())
    }

    /// Records which construct each sequence belongs to and which are branch targets.
    fn classify(&mut self, seq: InstrSeqId, construct: Construct) {
        if construct == Construct::Loop {
            self.facts(seq).is_loop = true;
        }
        self.stats.basic_blocks += 1;
        // Taken out while its nested sequences are classified, put back at the end.
        let instrs = std::mem::take(&mut self.func.block_mut(seq).instrs);
        for (instr, loc) in &instrs {
            if let Instr::Loop(l) = instr
                && self.ops.has(*loc, Flags::BRANCHED_LOOP)
            {
                self.facts(l.seq).targeted = true;
            }
            self.has_calls |= calls(instr);
            match instr {
                Instr::Block(b) => self.classify(b.seq, Construct::Block),
                Instr::Loop(l) => self.classify(l.seq, Construct::Loop),
                Instr::IfElse(e) => {
                    self.classify(e.consequent, Construct::Arm);
                    self.classify(e.alternative, Construct::Arm);
                }
                Instr::Br(b) => {
                    self.facts(b.block).targeted = true;
                }
                Instr::BrIf(b) => {
                    self.facts(b.block).targeted = true;
                    self.stats.basic_blocks += 1;
                }
                Instr::BrTable(t) => {
                    self.facts(t.default).targeted = true;
                    for &label in t.blocks.iter() {
                        self.facts(label).targeted = true;
                    }
                }
                _ => {}
            }
        }
        self.func.block_mut(seq).instrs = instrs;
    }

    /// The facts of `seq`, created on first use.
    fn facts(&mut self, seq: InstrSeqId) -> &mut SeqFacts {
        let index = seq.index();
        if index >= self.seqs.len() {
            self.seqs.resize_with(index + 1, SeqFacts::default);
        }
        &mut self.seqs[index]
    }

    /// The facts of `seq`, which `classify` and `plan` recorded.
    fn facts_of(&self, seq: InstrSeqId) -> &SeqFacts {
        &self.seqs[seq.index()]
    }

    /// Whether the code after a construct (`rest`, in its parent sequence) starts with a side
    /// effect that is not a certain trap, so that Cranelift cannot turn a branch there into a
    /// conditional trap carrying the branch's location (a branch with no adjustment on its
    /// edge has no store before it lands).
    ///
    /// A global store or a call qualifies, and so does a memory access unless a constant was
    /// pushed before it (its address could then be known out of bounds), its static offset
    /// reaches past the memory's maximum, or past [`GUARD_BYTES_ASSUMED`] (wasmtime then
    /// checks bounds explicitly). Entering a `block` or a `loop` looks into it; an `if`
    /// qualifies when both its arms do, a `br` when its target's continuation does, a `br_if`
    /// when that and its fall-through do; anything else does not. At the end of `rest` the
    /// answer is `at_end`, that of the sequence's own continuation. Only called from `plan`,
    /// which has already planned every construct in `rest`.
    fn cannot_fold(&self, rest: &[(Instr, InstrLocId)], at_end: bool) -> bool {
        self.cannot_fold_from(rest, at_end, false)
    }

    fn cannot_fold_from(&self, rest: &[(Instr, InstrLocId)], at_end: bool, constant: bool) -> bool {
        // wasmtime traps unconditionally when offset + size is above the memory's maximum, and
        // emits an explicit bounds check (which a constant address could fold) when it is
        // beyond the guard region its default 4 GiB reservation relies on (32 MiB).
        let certainly_out_of_bounds = |memory: MemoryId, offset: u64| {
            let end = offset.saturating_add(16);
            end > GUARD_BYTES_ASSUMED
                || self
                    .bounded_memories
                    .iter()
                    .any(|&(id, bytes)| id == memory && end > bytes)
        };
        let mut constant = constant;
        for (instr, _) in rest {
            match instr {
                Instr::GlobalSet(_) => return true,
                _ if is_call(instr) => return true,
                Instr::Load(l) => {
                    return !constant && !certainly_out_of_bounds(l.memory, l.arg.offset);
                }
                Instr::Store(st) => {
                    return !constant && !certainly_out_of_bounds(st.memory, st.arg.offset);
                }
                Instr::Const(_) => constant = true,
                // `plan` goes backward, so a construct in `rest` already knows its continuation.
                Instr::Block(b) => {
                    let after = self.facts_of(b.seq).cont_cannot_fold;
                    return self.cannot_fold_from(&self.func.block(b.seq).instrs, after, constant);
                }
                Instr::IfElse(e) => {
                    let after = self.facts_of(e.consequent).cont_cannot_fold;
                    return [e.consequent, e.alternative].iter().all(|&arm| {
                        self.cannot_fold_from(&self.func.block(arm).instrs, after, constant)
                    });
                }
                // Entering a loop runs its body (the budget check placed there starts with a
                // store on the arm that stops).
                Instr::Loop(l) => {
                    let after = self.facts_of(l.seq).cont_cannot_fold;
                    return self.cannot_fold_from(&self.func.block(l.seq).instrs, after, constant);
                }
                // A jump lands on its target's continuation (the target encloses `rest`, so it
                // was planned first); the start of a loop is not known here.
                Instr::Br(b) => {
                    return !self.is_loop(b.block) && self.facts_of(b.block).cont_cannot_fold;
                }
                Instr::BrIf(b) => {
                    if self.is_loop(b.block) || !self.facts_of(b.block).cont_cannot_fold {
                        return false;
                    }
                }
                Instr::BrTable(_) => return false,
                _ if never_traps(instr) => {}
                _ => return false,
            }
        }
        at_end
    }

    fn is_loop(&self, seq: InstrSeqId) -> bool {
        self.seqs.get(seq.index()).is_some_and(|s| s.is_loop)
    }

    /// `local.get count`.
    fn get_count(&self) -> Instr {
        Instr::LocalGet(walrus::ir::LocalGet {
            local: self.locals.count,
        })
    }

    /// `global.set __tally_ops`.
    fn set_ops(&self) -> Instr {
        Instr::GlobalSet(walrus::ir::GlobalSet {
            global: self.globals.ops,
        })
    }

    /// The per-unit cost of an instruction whose work depends on its last operand.
    fn variable_cost(&self, instr: &Instr) -> u64 {
        let v = self.costs.variable();
        u64::from(match instr {
            Instr::MemoryCopy(_) => v.memory_copy_per_byte,
            Instr::MemoryFill(_) => v.memory_fill_per_byte,
            Instr::MemoryInit(_) => v.memory_init_per_byte,
            Instr::MemoryGrow(_) => v.memory_grow_per_page,
            Instr::TableCopy(_) => v.table_copy_per_element,
            Instr::TableFill(_) => v.table_fill_per_element,
            Instr::TableInit(_) => v.table_init_per_element,
            Instr::TableGrow(_) => v.table_grow_per_element,
            _ => 0,
        })
    }

    /// Computes phi for every position of `seq`, given phi after its construct; returns phi at
    /// its start.
    fn plan(&mut self, seq: InstrSeqId, cont: u64) -> Result<u64, Error> {
        self.facts(seq).cont = cont;
        // Taken out while its nested sequences are planned, put back at the end (an error
        // abandons the whole module, so it need not).
        let instrs = std::mem::take(&mut self.func.block_mut(seq).instrs);
        let at_end = self.facts_of(seq).cont_cannot_fold;
        let mut phi = vec![0u64; instrs.len() + 1];
        phi[instrs.len()] = cont;
        for (index, (instr, loc)) in instrs.iter().enumerate().rev() {
            let after = phi[index + 1];
            let rest = match instr {
                // A forward `br` continues the prepaid path at its target, like falling out of
                // a block (a branch to a loop cannot: the loop's start is being computed), where
                // the target's code cannot let Cranelift fold the jump into a trap.
                Instr::Br(b)
                    if !self.is_loop(b.block) && self.facts_of(b.block).cont_cannot_fold =>
                {
                    self.target_phi(b.block)
                }
                // A call ends the prepaid path: the global is exact when the callee starts, and
                // the rest is prepaid again when the call returns. Other terminators end it too.
                _ if is_terminator(instr) || is_call(instr) => 0,
                Instr::Block(b) => {
                    self.facts(b.seq).cont_cannot_fold =
                        self.cannot_fold(&instrs[index + 1..], at_end);
                    self.plan(b.seq, after)?
                }
                Instr::Loop(l) => {
                    // Not a branch target's continuation (a branch to a loop lands on its
                    // start), but that of the sequences its body ends with.
                    self.facts(l.seq).cont_cannot_fold =
                        self.cannot_fold(&instrs[index + 1..], at_end);
                    self.plan(l.seq, after)?
                }
                // A `br_if` whose fall-through runs straight into a call or `unreachable` (a
                // panic, a slow path) is usually taken: pay the adjustment on the fall-through
                // instead, where it needs no `if` around it (see `rewrite`).
                Instr::BrIf(b)
                    if !self.is_loop(b.block)
                        && self.facts_of(b.block).cont_cannot_fold
                        && fall_through_is_cold(&instrs[index + 1..]) =>
                {
                    self.target_phi(b.block)
                }
                Instr::IfElse(e) => {
                    let cannot_fold = self.cannot_fold(&instrs[index + 1..], at_end);
                    self.facts(e.consequent).cont_cannot_fold = cannot_fold;
                    self.facts(e.alternative).cont_cannot_fold = cannot_fold;
                    let consequent = self.plan(e.consequent, after)?;
                    let alternative = self.plan(e.alternative, after)?;
                    // Prepay the empty arm of an `if` without `else`, so the common case needs
                    // no new `else`; otherwise prepay the consequent.
                    if self.func.block(e.alternative).instrs.is_empty()
                        && !self.func.block(e.consequent).instrs.is_empty()
                    {
                        self.facts(e.consequent).prepaid_alternative = true;
                        alternative
                    } else {
                        consequent
                    }
                }
                _ => after,
            };
            phi[index] = rest
                .checked_add(self.ops.weight(*loc))
                .filter(|&p| p < OPS_MAX)
                .ok_or_else(|| Error::Limit("a function's static cost overflows".into()))?;
        }
        self.func.block_mut(seq).instrs = instrs;
        let start = phi[0];
        let facts = self.facts(seq);
        facts.phi = phi;
        facts.start = start;
        Ok(start)
    }

    /// phi where a branch to `label` lands.
    fn target_phi(&self, label: InstrSeqId) -> u64 {
        let facts = self.facts_of(label);
        if facts.is_loop {
            facts.start
        } else {
            facts.cont
        }
    }

    /// The correction for the first instruction of `seq`'s straight-line path that is not pure,
    /// if that is one that can trap. When it always traps, Cranelift may turn the loop body into
    /// a branch to a trap and wasmtime then reports the trap at the `loop` itself.
    fn first_trap_in(&self, seq: InstrSeqId) -> Option<u64> {
        let instrs = &self.func.block(seq).instrs;
        let index = instrs.iter().position(|(instr, _)| {
            !never_traps(instr)
                || matches!(
                    instr,
                    Instr::Block(_)
                        | Instr::IfElse(_)
                        | Instr::Br(_)
                        | Instr::BrIf(_)
                        | Instr::BrTable(_)
                )
        })?;
        match &instrs[index].0 {
            // Entering a block continues the straight-line path.
            Instr::Block(b) => self.first_trap_in(b.seq),
            // Nothing after a terminator runs: its correction is 0 (as in `rewrite`), whatever
            // the straight-line path past it would weigh.
            instr if is_terminator(instr) => Some(0),
            instr if !never_traps(instr) && !is_call(instr) && !matches!(instr, Instr::Loop(_)) => {
                Some(self.facts_of(seq).phi[index + 1])
            }
            _ => None,
        }
    }

    /// An `if`'s arms: (the prepaid one, the other one).
    fn arms(&self, consequent: InstrSeqId, alternative: InstrSeqId) -> (InstrSeqId, InstrSeqId) {
        if self.facts_of(consequent).prepaid_alternative {
            (alternative, consequent)
        } else {
            (consequent, alternative)
        }
    }

    /// Puts `instrs` (without locations) at the start of `seq`.
    fn prepend(&mut self, seq: InstrSeqId, instrs: Vec<Instr>) {
        if instrs.is_empty() {
            return;
        }
        let body = self.func.block_mut(seq);
        let rest = std::mem::take(&mut body.instrs);
        body.instrs = instrs
            .into_iter()
            .map(|i| (i, InstrLocId::default()))
            .chain(rest)
            .collect();
    }

    /// What a trap reported at an `if` (at original offset `offset`) means. When an arm's first
    /// instruction with a side effect always traps, Cranelift can fold the branch into that
    /// arm into a conditional trap, which carries the `if`'s location. The arm that is not
    /// prepaid starts with its count adjustment (a store), so only the prepaid arm can be folded,
    /// unless both arms weigh the same. The `if`'s offset gets that arm's trap correction in
    /// the table of loop-header traps; where that could be confused with the other arm or with
    /// a load merged into the condition, the arm gets a fence instead, so it is never folded.
    fn if_traps(
        &mut self,
        consequent: InstrSeqId,
        alternative: InstrSeqId,
        offset: u32,
        flags: u8,
    ) -> IfTraps {
        let (prepaid, other) = self.arms(consequent, alternative);
        let same_weight = self.facts_of(other).start == self.facts_of(prepaid).start;
        let in_prepaid = self.first_trap_in(prepaid);
        let in_other = if same_weight {
            self.first_trap_in(other)
        } else {
            None
        };
        let mut traps = IfTraps::default();
        if flags & Flags::MERGED_CONSUMER != 0 {
            // An out-of-bounds trap at this offset is the condition's load.
            traps.fence_prepaid = in_prepaid.is_some();
            traps.fence_other = in_other.is_some();
            return traps;
        }
        let correction = match (in_prepaid, in_other) {
            (None, None) => return traps,
            (Some(a), None) => a,
            (None, Some(b)) => b,
            (Some(a), Some(b)) => {
                traps.fence_other = a != b;
                a
            }
        };
        self.loop_traps.push((offset, correction));
        traps.entry = true;
        traps
    }

    /// The value types a branch to `label` carries.
    fn label_types(&self, label: InstrSeqId) -> Vec<ValType> {
        let is_loop = self.is_loop(label);
        match self.func.block(label).ty {
            InstrSeqType::Simple(None) => vec![],
            InstrSeqType::Simple(Some(t)) => {
                if is_loop {
                    vec![]
                } else {
                    vec![t]
                }
            }
            InstrSeqType::MultiValue(ty) => {
                let types = self.types.lock().expect("module types lock");
                let ty = types.get(ty);
                if is_loop {
                    ty.params().to_vec()
                } else {
                    ty.results().to_vec()
                }
            }
        }
    }

    /// `count += delta; __tally_ops = count`.
    fn adjust(&mut self, delta: i64) -> Vec<Instr> {
        if delta == 0 {
            return vec![];
        }
        self.stats.counters_placed += 1;
        vec![
            self.get_count(),
            i64_const(delta),
            Instr::Binop(walrus::ir::Binop {
                op: BinaryOp::I64Add,
            }),
            Instr::LocalTee(walrus::ir::LocalTee {
                local: self.locals.count,
            }),
            self.set_ops(),
        ]
    }

    /// A store Cranelift can neither merge a load past nor remove: a constant, unique within
    /// the function (so never an idempotent store), to a global of its own.
    fn fence(&mut self) -> Vec<Instr> {
        self.stats.fences_placed += 1;
        self.fences += 1;
        vec![
            Instr::Const(walrus::ir::Const {
                value: Value::I32(self.fences),
            }),
            Instr::GlobalSet(walrus::ir::GlobalSet {
                global: self.globals.fence,
            }),
        ]
    }

    /// Stops the run if the executed count (`count - phi`) is above the budget, or with
    /// `ahead = Some(charged)`, if it would be once `charged - count` (the per-unit cost of a
    /// bulk operation about to run) is added.
    fn budget_check(&mut self, phi: u64, ahead: Option<LocalId>) -> Vec<Instr> {
        self.stats.budget_checks_placed += 1;
        let executed = |count: LocalId| {
            let mut v = vec![Instr::LocalGet(walrus::ir::LocalGet { local: count })];
            if phi != 0 {
                v.push(i64_const(phi as i64));
                v.push(Instr::Binop(walrus::ir::Binop {
                    op: BinaryOp::I64Sub,
                }));
            }
            v
        };
        let mut stop = executed(self.locals.count);
        stop.extend([
            self.set_ops(),
            Instr::Const(walrus::ir::Const {
                value: Value::I32(1),
            }),
            Instr::GlobalSet(walrus::ir::GlobalSet {
                global: self.globals.exhausted,
            }),
            Instr::Unreachable(walrus::ir::Unreachable {}),
        ]);
        let then = self.new_seq(InstrSeqType::Simple(None), stop);
        let otherwise = self.new_seq(InstrSeqType::Simple(None), vec![]);
        // count - phi > budget, with the budget read from its global at each check: a load
        // from the instance that hits the cache, where a local copy of the budget held in a
        // register through the function raised the register pressure of every loop (and was
        // spilled and reloaded in the large ones anyway). Over 5 code layouts of the suite
        // this was 1.092x geomean against 1.113x (docs/benchmarks.md). count >= phi always
        // (phi is prepaid), so the subtraction cannot wrap.
        let mut check = vec![match ahead {
            Some(charged) => Instr::LocalGet(walrus::ir::LocalGet { local: charged }),
            None => self.get_count(),
        }];
        if phi != 0 {
            check.push(i64_const(phi as i64));
            check.push(Instr::Binop(walrus::ir::Binop {
                op: BinaryOp::I64Sub,
            }));
        }
        check.push(Instr::GlobalGet(walrus::ir::GlobalGet {
            global: self.globals.budget,
        }));
        check.push(Instr::Binop(walrus::ir::Binop {
            op: BinaryOp::I64GtU,
        }));
        check.push(Instr::IfElse(walrus::ir::IfElse {
            consequent: then,
            alternative: otherwise,
        }));
        check
    }

    /// After a `memory.grow` (its result on the stack, its delta in the scratch local): close
    /// the memory-time interval that ended here and start the next one.
    ///
    /// ```text
    /// integral += pages * (now - mark); mark = now; pages += (result != -1) * delta
    /// ```
    /// where `now = count - phi(after)` is the exact count including the `memory.grow`.
    fn memory_integral(&self, after: u64) -> Vec<Instr> {
        let m = self.globals.memory;
        let result = self.locals.grow_result;
        let delta = self.locals.scratch;
        let get = |global| Instr::GlobalGet(walrus::ir::GlobalGet { global });
        let set = |global| Instr::GlobalSet(walrus::ir::GlobalSet { global });
        let op = |op| Instr::Binop(walrus::ir::Binop { op });
        let now = vec![
            self.get_count(),
            i64_const(after as i64),
            op(BinaryOp::I64Sub),
        ];
        let mut code = vec![
            Instr::LocalTee(walrus::ir::LocalTee { local: result }),
            get(m.integral),
            get(m.pages),
        ];
        code.extend(now.clone());
        code.extend([
            get(m.mark),
            op(BinaryOp::I64Sub),
            op(BinaryOp::I64Mul),
            op(BinaryOp::I64Add),
            set(m.integral),
        ]);
        code.extend(now);
        code.extend([
            set(m.mark),
            get(m.pages),
            Instr::LocalGet(walrus::ir::LocalGet { local: result }),
            Instr::Const(walrus::ir::Const {
                value: Value::I32(-1),
            }),
            op(BinaryOp::I32Ne),
            Instr::Unop(walrus::ir::Unop {
                op: UnaryOp::I64ExtendUI32,
            }),
            Instr::LocalGet(walrus::ir::LocalGet { local: delta }),
            Instr::Unop(walrus::ir::Unop {
                op: UnaryOp::I64ExtendUI32,
            }),
            op(BinaryOp::I64Mul),
            op(BinaryOp::I64Add),
            set(m.pages),
        ]);
        code
    }

    /// The type of a block taking `params` and returning `results`.
    fn seq_type(&self, params: &[ValType], results: &[ValType]) -> InstrSeqType {
        let mut types = self.types.lock().expect("module types lock");
        InstrSeqType::new(&mut types, params, results)
    }

    fn new_seq(&mut self, ty: InstrSeqType, instrs: Vec<Instr>) -> InstrSeqId {
        let id = self.func.builder_mut().dangling_instr_seq(ty).id();
        self.func.block_mut(id).instrs = instrs
            .into_iter()
            .map(|i| (i, InstrLocId::default()))
            .collect();
        id
    }

    /// Rewrites `seq` (and everything nested in it) to keep the invariant.
    fn rewrite(&mut self, seq: InstrSeqId) -> Result<(), Error> {
        // Nothing reads phi inside `seq` once it is rewritten (branches only need `start`).
        let phi = std::mem::take(&mut self.facts(seq).phi);
        let old = std::mem::take(&mut self.func.block_mut(seq).instrs);
        // The meter map never looks up an `end`, so walrus need not record where it went.
        self.func.block_mut(seq).end = InstrLocId::default();
        let mut new: Vec<(Instr, InstrLocId)> = Vec::with_capacity(old.len() + 8);
        let plain = |v: Vec<Instr>| v.into_iter().map(|i| (i, InstrLocId::default()));

        if self.facts_of(seq).is_loop && self.facts_of(seq).targeted {
            new.extend(plain(self.budget_check(phi[0], None)));
        }
        for (index, (instr, loc)) in old.into_iter().enumerate() {
            let after = phi[index + 1];
            let weight = self.ops.weight(loc);
            let flags = self.ops.flags(loc);
            // A back-edge `br_if` is charged right before it (see below): that store fences.
            let charged_before = matches!(&instr, Instr::BrIf(b)
                if self.is_loop(b.block) && self.target_phi(b.block) != phi[index] - weight);
            if flags & Flags::FENCE_BEFORE != 0 && !charged_before {
                // A memory access that may have absorbed the load before it: the store keeps
                // Cranelift from merging them (see `merge`).
                new.extend(plain(self.fence()));
            }
            if !loc.is_default()
                && let Instr::Loop(l) = &instr
                && let Some(correction) = self.first_trap_in(l.seq)
            {
                self.loop_traps.push((loc.data(), correction));
            }
            let mut prepaid = None;
            if !loc.is_default() && !never_traps(&instr) {
                let correction = match &instr {
                    _ if is_call(&instr) => 0,
                    Instr::Loop(l) => self.facts_of(l.seq).start,
                    _ if is_terminator(&instr) => 0,
                    _ => after,
                };
                // Kept even when 0: a load merged into a consumer is looked up here.
                self.corrections.push((loc.data(), correction));
                prepaid = Some(correction);
            }
            let if_traps = match &instr {
                Instr::IfElse(e) if !loc.is_default() => {
                    self.if_traps(e.consequent, e.alternative, loc.data(), flags)
                }
                _ => IfTraps::default(),
            };
            // Only the instructions the meter map looks up keep their original location: walrus
            // records an output offset for each, one map insertion at a time. A trap where
            // nothing is prepaid (a call, a terminator) needs no entry: an offset without one
            // is corrected by 0.
            let has_entry = prepaid.is_some_and(|c| c != 0) || matches!(instr, Instr::Loop(_));
            let loc = if has_entry || flags & Flags::MERGED_CONSUMER != 0 || if_traps.entry {
                loc
            } else {
                InstrLocId::default()
            };
            match instr {
                Instr::Block(ref b) => {
                    self.rewrite(b.seq)?;
                    new.push((instr, loc));
                }
                Instr::Loop(ref l) => {
                    self.rewrite(l.seq)?;
                    new.push((instr, loc));
                }
                Instr::IfElse(ref e) => {
                    let (consequent, alternative) = (e.consequent, e.alternative);
                    self.rewrite(consequent)?;
                    self.rewrite(alternative)?;
                    let (prepaid, other) = self.arms(consequent, alternative);
                    let delta =
                        self.facts_of(other).start as i64 - self.facts_of(prepaid).start as i64;
                    let fix = self.adjust(delta);
                    self.prepend(other, fix);
                    for (arm, fenced) in [
                        (prepaid, if_traps.fence_prepaid),
                        (other, if_traps.fence_other),
                    ] {
                        if fenced {
                            let fence = self.fence();
                            self.prepend(arm, fence);
                        }
                    }
                    new.push((instr, loc));
                }
                Instr::Br(ref b) => {
                    // Nothing when `plan` prepaid through to the target.
                    let delta = self.target_phi(b.block) as i64 - (phi[index] - weight) as i64;
                    new.extend(plain(self.adjust(delta)));
                    new.push((instr, loc));
                }
                Instr::BrIf(ref b) => {
                    // The count right after the `br_if`, before either edge's adjustment: the
                    // fall-through's phi, or the target's when `plan` made the taken edge free.
                    let x = phi[index] - weight;
                    let delta = self.target_phi(b.block) as i64 - x as i64;
                    // With nothing to adjust on the taken edge, a target whose first side
                    // effect always traps (an access above a memory's maximum) lets Cranelift
                    // fold the branch into a conditional trap reported at the `br_if`, where
                    // the count has the fall-through's path prepaid, not the target's. A fence
                    // on the taken edge keeps the branch a branch (fixture
                    // `regression_trap_folded_into_br_if.wat`).
                    let foldable =
                        !self.is_loop(b.block) && !self.facts_of(b.block).cont_cannot_fold;
                    if delta == 0 && !foldable {
                        new.push((instr, loc));
                        new.extend(plain(self.adjust(after as i64 - x as i64)));
                    } else if self.is_loop(b.block) {
                        // A back-edge: charge the iteration before the branch and take it back
                        // on the exit, which runs once per loop rather than once per iteration;
                        // the loop then closes with one taken branch, not an `if` and a jump.
                        // The charge is a store between the condition and the branch, so it
                        // also serves as the fence a loaded condition would need.
                        let charge = self.adjust(delta);
                        new.extend(plain(charge));
                        new.push((instr, loc));
                        // The exit undoes the charge and makes the fall-through's adjustment
                        // in one add (nothing between them can trap).
                        let exit = self.adjust(after as i64 - x as i64 - delta);
                        new.extend(plain(exit));
                    } else {
                        // br_if L  =>  if (param t*) (result t*) { count += delta; br L },
                        // or { fence; br L } when the taken edge is free.
                        let carried = self.label_types(b.block);
                        let ty = self.seq_type(&carried, &carried);
                        let mut taken = if delta == 0 {
                            self.fence()
                        } else {
                            self.adjust(delta)
                        };
                        taken.push(Instr::Br(walrus::ir::Br { block: b.block }));
                        let then = self.new_seq(ty, taken);
                        let otherwise = self.new_seq(ty, vec![]);
                        new.push((
                            Instr::IfElse(walrus::ir::IfElse {
                                consequent: then,
                                alternative: otherwise,
                            }),
                            loc,
                        ));
                        // Only a free taken edge leaves the fall-through an adjustment.
                        new.extend(plain(self.adjust(after as i64 - x as i64)));
                    }
                }
                Instr::BrTable(ref t) => {
                    let mut groups: Vec<(InstrSeqId, i64)> = Vec::new();
                    let mut group_of = |label: InstrSeqId, this: &Self| {
                        let key = (label, this.target_phi(label) as i64);
                        match groups.iter().position(|g| *g == key) {
                            Some(i) => i,
                            None => {
                                groups.push(key);
                                groups.len() - 1
                            }
                        }
                    };
                    let table: Vec<usize> = t.blocks.iter().map(|&l| group_of(l, self)).collect();
                    let default = group_of(t.default, self);
                    let deltas: HashSet<i64> = groups.iter().map(|g| g.1).collect();
                    if deltas.len() == 1 {
                        let delta = groups[0].1;
                        new.extend(plain(self.adjust(delta)));
                        new.push((instr, loc));
                    } else {
                        new.extend(plain(
                            self.br_table_trampolines(&groups, &table, default, t.default),
                        ));
                    }
                }
                Instr::Call(_) | Instr::CallIndirect(_) | Instr::CallRef(_) => {
                    // The path ended at the call, so the global is exact for the callee; on
                    // return, prepay the path after the call.
                    new.push((instr, loc));
                    self.stats.counters_placed += 1;
                    let mut reload = vec![Instr::GlobalGet(walrus::ir::GlobalGet {
                        global: self.globals.ops,
                    })];
                    if after != 0 {
                        reload.extend([
                            i64_const(after as i64),
                            Instr::Binop(walrus::ir::Binop {
                                op: BinaryOp::I64Add,
                            }),
                            Instr::LocalTee(walrus::ir::LocalTee {
                                local: self.locals.count,
                            }),
                            self.set_ops(),
                        ]);
                    } else {
                        reload.push(Instr::LocalSet(walrus::ir::LocalSet {
                            local: self.locals.count,
                        }));
                    }
                    new.extend(plain(reload));
                }
                ref other
                    if matches!(other, Instr::MemoryGrow(_)) || self.variable_cost(other) > 0 =>
                {
                    let per_unit = self.variable_cost(other) as i64;
                    let scratch = self.locals.scratch;
                    new.push((
                        Instr::LocalTee(walrus::ir::LocalTee { local: scratch }),
                        InstrLocId::default(),
                    ));
                    let grows = matches!(instr, Instr::MemoryGrow(_));
                    if per_unit == 0 {
                        new.push((instr, loc));
                        if grows {
                            new.extend(plain(self.memory_integral(after)));
                        }
                        continue;
                    }
                    // The count with the per-unit cost added, computed before the operation:
                    // one operation must not take the count far past the budget, so the run
                    // stops before it if this is above (the operation's own weight is charged,
                    // as when it traps). length < 2^32 and per_unit <= WEIGHT_MAX: no wrap.
                    let charged = self.locals.charged;
                    self.stats.counters_placed += 1;
                    new.extend(plain(vec![
                        self.get_count(),
                        Instr::LocalGet(walrus::ir::LocalGet { local: scratch }),
                        Instr::Unop(walrus::ir::Unop {
                            op: UnaryOp::I64ExtendUI32,
                        }),
                        i64_const(per_unit),
                        Instr::Binop(walrus::ir::Binop {
                            op: BinaryOp::I64Mul,
                        }),
                        Instr::Binop(walrus::ir::Binop {
                            op: BinaryOp::I64Add,
                        }),
                        Instr::LocalSet(walrus::ir::LocalSet { local: charged }),
                    ]));
                    new.extend(plain(self.budget_check(after, Some(charged))));
                    new.push((instr, loc));
                    if grows {
                        new.extend(plain(self.memory_integral(after)));
                    }
                    // Reached only if the operation did not trap.
                    new.extend(plain(vec![
                        Instr::LocalGet(walrus::ir::LocalGet { local: charged }),
                        Instr::LocalTee(walrus::ir::LocalTee {
                            local: self.locals.count,
                        }),
                        self.set_ops(),
                    ]));
                }
                _ => new.push((instr, loc)),
            }
            if flags & Flags::FENCE_AFTER != 0 {
                new.extend(plain(self.fence()));
            }
        }
        self.func.block_mut(seq).instrs = new;
        Ok(())
    }

    /// A `br_table` whose targets need different adjustments: dispatch to one block per
    /// (target, adjustment) group, adjust there, then branch on.
    ///
    /// ```text
    /// block $g_{k-1} (param t* i32) (result t*)
    ///   ...
    ///     block $g_0 (param t* i32) (result t*)
    ///       br_table $g_.. $g_..        ;; the original operands
    ///     end
    ///     count += delta_0; br target_0
    ///   ...
    /// end
    /// count += delta_{k-1}; br target_{k-1}
    /// ```
    fn br_table_trampolines(
        &mut self,
        groups: &[(InstrSeqId, i64)],
        table: &[usize],
        default: usize,
        default_label: InstrSeqId,
    ) -> Vec<Instr> {
        let carried = self.label_types(default_label);
        let mut params = carried.clone();
        params.push(ValType::I32);
        let ty = self.seq_type(&params, &carried);
        let ids: Vec<InstrSeqId> = groups
            .iter()
            .map(|_| self.func.builder_mut().dangling_instr_seq(ty).id())
            .collect();
        let dispatch = Instr::BrTable(walrus::ir::BrTable {
            blocks: table.iter().map(|&g| ids[g]).collect(),
            default: ids[default],
        });
        let mut inner = vec![dispatch];
        for (index, &(target, delta)) in groups.iter().enumerate() {
            self.func.block_mut(ids[index]).instrs = inner
                .into_iter()
                .map(|i| (i, InstrLocId::default()))
                .collect();
            inner = vec![Instr::Block(walrus::ir::Block { seq: ids[index] })];
            inner.extend(self.adjust(delta));
            inner.push(Instr::Br(walrus::ir::Br { block: target }));
        }
        inner
    }
}

fn i64_const(value: i64) -> Instr {
    Instr::Const(walrus::ir::Const {
        value: Value::I64(value),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `depth` nested blocks around `i32.const 1`.
    fn nested_blocks(depth: usize) -> Vec<u8> {
        let text = format!(
            "(module (func (export \"f\") (result i32) {} i32.const 1 {}))",
            "(block (result i32) ".repeat(depth),
            ")".repeat(depth)
        );
        wat::parse_str(text).unwrap()
    }

    #[test]
    fn nesting_at_the_inline_limit_fits_half_a_small_stack() {
        let wasm = nested_blocks(INLINE_NESTING_DEPTH_MAX);
        let costs = CostTable::preset("wasmtime-fuel").unwrap();
        // On a thread of exactly that stack: an overflow aborts this test binary.
        let out = std::thread::Builder::new()
            .stack_size(INLINE_STACK_BYTES)
            .spawn(move || instrument(&wasm, &costs, &Options::default()))
            .unwrap()
            .join()
            .unwrap()
            .unwrap();
        assert_eq!(out.stats.functions, 1);
    }

    /// How many `br_if` and `if` operators the module's code has.
    fn branches(wasm: &[u8]) -> (usize, usize) {
        let (mut br_ifs, mut ifs) = (0, 0);
        for payload in wasmparser::Parser::new(0).parse_all(wasm) {
            let wasmparser::Payload::CodeSectionEntry(body) = payload.unwrap() else {
                continue;
            };
            for op in body.get_operators_reader().unwrap() {
                match op.unwrap() {
                    wasmparser::Operator::BrIf { .. } => br_ifs += 1,
                    wasmparser::Operator::If { .. } => ifs += 1,
                    _ => {}
                }
            }
        }
        (br_ifs, ifs)
    }

    #[test]
    fn a_br_if_around_a_slow_path_keeps_its_taken_edge_free() {
        let costs = CostTable::preset("wasmtime-fuel").unwrap();
        let module = |after: &str| {
            wat::parse_str(format!(
                "(module (memory 1) (func $slow)
                   (func (param i32) (result i32)
                     block local.get 0 br_if 0 call $slow end {after}))"
            ))
            .unwrap()
        };
        let shape = |after: &str| {
            branches(
                &instrument(&module(after), &costs, &Options::default())
                    .unwrap()
                    .wasm,
            )
        };
        // The fall-through calls: the adjustment goes there, the `br_if` stays a `br_if` (the
        // one `if` is the budget check at the entry of a function that calls).
        assert_eq!(shape("i32.const 3 i32.const 4 i32.add"), (1, 1));
        // Landing on a load from a constant address, which Cranelift may prove out of bounds
        // and fold the branch into a trap at the `br_if`: the taken edge keeps its adjustment.
        assert_eq!(shape("i32.const 8 i32.load"), (0, 2));
        // Looking into a block that follows: its first side effect is what the branch lands on.
        assert_eq!(shape("block (result i32) local.get 0 i32.load end"), (1, 1));
        // A load whose address is not constant cannot be proven out of bounds.
        assert_eq!(shape("local.get 0 i32.load"), (1, 1));
    }

    #[test]
    fn a_forward_br_prepays_through_to_its_target() {
        let wasm = wat::parse_str(
            "(module (memory 1) (global $g (mut i32) (i32.const 0))
               (func (param i32) (result i32)
                 block
                   local.get 0
                   if i32.const 1 global.set $g br 1 end
                   i32.const 2 global.set $g
                 end
                 local.get 0 i32.load))",
        )
        .unwrap();
        let costs = CostTable::preset("wasmtime-fuel").unwrap();
        let out = instrument(&wasm, &costs, &Options::default()).unwrap();
        // The entry's prepayment and the `if`'s other arm; nothing at the `br`.
        assert_eq!(out.stats.counters_placed, 2);
    }

    #[test]
    fn a_loop_closes_with_one_br_if_charged_before_it() {
        let wasm = wat::parse_str(
            "(module (func (param i32)
               loop local.get 0 i32.const 1 i32.sub local.tee 0 br_if 0 end))",
        )
        .unwrap();
        let costs = CostTable::preset("wasmtime-fuel").unwrap();
        let out = instrument(&wasm, &costs, &Options::default()).unwrap();
        // The back-edge stays a `br_if`; the one `if` is the budget check at the loop's start.
        assert_eq!(branches(&out.wasm), (1, 1));
        // Entry, the charge before the back-edge, and its undo on the exit.
        assert_eq!(out.stats.counters_placed, 3);
    }
}

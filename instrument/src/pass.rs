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
//!
//! The module is rewritten in place, not re-encoded: its sections are copied as they are,
//! except the type, global and export sections, which get entries appended, and the code
//! section, whose bodies are rewritten by [`crate::body`] (each original operator copied as
//! written, the count code in between). Function, global, type and local indices of the input
//! all stay valid.

use std::collections::HashMap;
use std::ops::Range;

use rayon::iter::{IntoParallelIterator, ParallelIterator};
use wasm_encoder::Encode;
use wasmparser::{
    FuncToValidate, FunctionBody, Parser, Payload, ValidPayload, Validator, ValidatorResources,
    WasmFeatures,
};

use crate::body::{Env, Function, Globals, Output, Signature};
use crate::cost::CostTable;
use crate::merge::ModuleTypes;
use crate::meter::{MeterMap, Stats};
use crate::{
    BUDGET_GLOBAL, EXHAUSTED_GLOBAL, Error, FUNCTIONS_MAX, Instrumented, MEMORY_INTEGRAL_GLOBAL,
    MEMORY_MARK_GLOBAL, MEMORY_PAGES_GLOBAL, META_SECTION, MODULE_BYTES_MAX, OPS_GLOBAL, OPS_MAX,
    Options,
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
    // As on a thread of its own: a bug that panics is an error, not the caller's panic.
    std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        instrument_module(wasm, costs, options)
    }))
    .map_err(|_| Error::Limit("the instrumentation pass panicked".into()))?
}

/// Stack for the pass: enough for [`crate::NESTING_DEPTH_MAX`] levels in an unoptimized build.
const PASS_STACK_BYTES: usize = 256 * 1024 * 1024;

/// The deepest nesting the pass handles on the caller's thread and rayon's workers: a test
/// checks that it fits in `INLINE_STACK_BYTES`, half the smallest stack a caller has (2 MiB:
/// Rust's test threads and tokio's blocking threads), in the unoptimized test profile. The
/// guests nest up to 67 deep (deflate; regex 65). Reading a body is iterative; planning and
/// writing it recurse once per level.
const INLINE_NESTING_DEPTH_MAX: usize = 96;

/// The stack [`INLINE_NESTING_DEPTH_MAX`] levels must fit in.
#[cfg(test)]
const INLINE_STACK_BYTES: usize = 1024 * 1024;

const _: () = assert!(INLINE_NESTING_DEPTH_MAX <= crate::NESTING_DEPTH_MAX);

/// The sections of the input, in order, and the facts about them the pass needs.
#[derive(Default)]
struct Module<'a> {
    /// (id, contents) of every section, in order; the code section's contents are replaced.
    sections: Vec<(u8, Range<usize>)>,
    types: ModuleTypes,
    /// Types in the type section (recursion groups unrolled) and recursion groups.
    type_count: u32,
    type_groups: u32,
    imported_functions: u32,
    imported_globals: u32,
    defined_globals: u32,
    exports: u32,
    /// (initial pages, maximum in bytes) of every memory, imported first.
    memories: Vec<(u64, Option<u64>)>,
    /// Memory 0 exists, is not shared and has 64 KiB pages, so its size in bytes is
    /// `memory.size << 16` and changes only at a `memory.grow` of the function running or of
    /// one it calls.
    checkable_memory0: bool,
    start: Option<u32>,
    /// Names that must not use the reserved prefix: exports, imports, and the function and
    /// global names of the name section.
    names: Vec<String>,
    bodies: Vec<(FunctionBody<'a>, FuncToValidate<ValidatorResources>, u32)>,
}

/// A section's rank in the order the binary format requires.
fn rank(id: u8) -> u8 {
    // type, import, function, table, memory, tag, global, export, start, element, data count,
    // code, data
    const ORDER: [u8; 13] = [1, 2, 3, 4, 5, 13, 6, 7, 8, 9, 12, 10, 11];
    ORDER.iter().position(|&o| o == id).unwrap_or(0) as u8 + 1
}

impl<'a> Module<'a> {
    /// Reads and validates everything but the function bodies (which the body pass validates).
    fn read(wasm: &'a [u8]) -> Result<Module<'a>, Error> {
        let invalid = |e: wasmparser::BinaryReaderError| Error::Invalid(e.to_string());
        let mut features = WasmFeatures::default();
        // Read so that their operators are rejected by name, not as unknown.
        features.insert(WasmFeatures::LEGACY_EXCEPTIONS);
        let mut validator = Validator::new_with_features(features);
        let mut m = Module::default();
        // (initial pages, maximum in bytes) of a memory tally can meter.
        let sizes = |memory: &wasmparser::MemoryType| {
            if memory.memory64 {
                return Err(Error::Unsupported("memory64".into()));
            }
            let page = 1u64 << memory.page_size_log2.unwrap_or(16).min(16);
            Ok((
                memory.initial,
                memory.maximum.map(|max| max.saturating_mul(page)),
            ))
        };
        let checkable = |memory: &wasmparser::MemoryType| {
            !memory.shared && memory.page_size_log2.is_none_or(|log2| log2 == 16)
        };
        for payload in Parser::new(0).parse_all(wasm) {
            let payload = payload.map_err(invalid)?;
            if let Payload::Version {
                encoding: wasmparser::Encoding::Component,
                ..
            } = payload
            {
                return Err(Error::Invalid("a component is not a core module".into()));
            }
            let valid = validator.payload(&payload).map_err(invalid)?;
            if let Some((id, range)) = payload.as_section() {
                m.sections.push((id, range));
            }
            match payload {
                Payload::TypeSection(reader) => {
                    m.type_groups = reader.count();
                    for group in reader {
                        let types = group.map_err(invalid)?.into_types();
                        m.types.types.extend(types);
                    }
                    m.type_count = m.types.types.len() as u32;
                }
                Payload::FunctionSection(reader) => {
                    for ty in reader {
                        m.types.function_types.push(ty.map_err(invalid)?);
                    }
                }
                Payload::ImportSection(reader) => {
                    for import in reader.into_imports() {
                        let import = import.map_err(invalid)?;
                        m.names.push(import.module.to_string());
                        m.names.push(import.name.to_string());
                        match import.ty {
                            wasmparser::TypeRef::Func(ty) => {
                                m.types.function_types.push(ty);
                                m.imported_functions += 1;
                            }
                            wasmparser::TypeRef::Global(_) => m.imported_globals += 1,
                            wasmparser::TypeRef::Memory(memory) => {
                                m.checkable_memory0 |= m.memories.is_empty() && checkable(&memory);
                                m.memories.push(sizes(&memory)?)
                            }
                            wasmparser::TypeRef::Table(table) if table.table64 => {
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
                Payload::TableSection(reader) => {
                    for table in reader {
                        if table.map_err(invalid)?.ty.table64 {
                            return Err(Error::Unsupported("table64".into()));
                        }
                    }
                }
                Payload::MemorySection(reader) => {
                    for memory in reader {
                        let memory = memory.map_err(invalid)?;
                        m.checkable_memory0 |= m.memories.is_empty() && checkable(&memory);
                        m.memories.push(sizes(&memory)?);
                    }
                }
                Payload::TagSection(_) => {
                    return Err(Error::Unsupported(
                        "exception handling (tag section)".into(),
                    ));
                }
                Payload::GlobalSection(reader) => m.defined_globals = reader.count(),
                Payload::ExportSection(reader) => {
                    m.exports = reader.count();
                    for export in reader {
                        m.names.push(export.map_err(invalid)?.name.to_string());
                    }
                }
                Payload::StartSection { func, .. } => m.start = Some(func),
                Payload::CodeSectionEntry(body) => {
                    let ValidPayload::Func(validate, _) = valid else {
                        return Err(Error::Invalid("a body without a function".into()));
                    };
                    let index = m.imported_functions as usize + m.bodies.len();
                    let function_type = *m
                        .types
                        .function_types
                        .get(index)
                        .ok_or_else(|| Error::Invalid("a body without a function".into()))?;
                    m.bodies.push((body, validate, function_type));
                }
                Payload::CustomSection(reader) => {
                    if let wasmparser::KnownCustom::Name(names) = reader.as_known() {
                        // A malformed name section is ignored, as engines do.
                        for name in names.into_iter().map_while(Result::ok) {
                            if let wasmparser::Name::Function(map) | wasmparser::Name::Global(map) =
                                name
                            {
                                for naming in map.into_iter().map_while(Result::ok) {
                                    m.names.push(naming.name.to_string());
                                }
                            }
                        }
                    }
                }
                _ => {}
            }
        }
        if m.imported_functions as usize + m.bodies.len() > FUNCTIONS_MAX {
            return Err(Error::Limit(format!(
                "module has {} functions, more than the limit of {FUNCTIONS_MAX}",
                m.imported_functions as usize + m.bodies.len()
            )));
        }
        if let Some(name) = m.names.iter().find(|n| n.starts_with("__tally_")) {
            return Err(Error::ReservedName(name.clone()));
        }
        Ok(m)
    }
}

fn instrument_module(
    wasm: &[u8],
    costs: &CostTable,
    options: &Options,
) -> Result<Instrumented, Error> {
    let mut module = Module::read(wasm)?;
    let bodies = std::mem::take(&mut module.bodies);
    let types = &module.types;
    // Block types the rewritten code needs: an existing function type where one matches.
    let mut existing: HashMap<Signature, u32> = HashMap::new();
    for index in (0..module.type_count).rev() {
        if let Some(signature) = crate::body::function_signature(types, index) {
            existing.insert(signature, index);
        }
    }
    let global_base = module.imported_globals + module.defined_globals;
    let globals = Globals {
        ops: global_base,
        budget: global_base + 1,
        exhausted: global_base + 2,
        pages: global_base + 3,
        mark: global_base + 4,
        integral: global_base + 5,
        fence: global_base + 6,
    };
    let bounded_memories: Vec<(u32, u64)> = module
        .memories
        .iter()
        .enumerate()
        .filter_map(|(index, &(_, max))| Some((index as u32, max?)))
        .collect();
    let env = Env {
        wasm,
        types,
        existing: &existing,
        costs,
        globals,
        bounded_memories: &bounded_memories,
        memory0: module.checkable_memory0.then(|| {
            module
                .memories
                .first()
                .and_then(|m| m.1)
                .unwrap_or(u64::MAX)
        }),
    };
    // The bodies are independent: each is read (and validated), planned and written by one
    // task while it is in the cache, and the first error in module order is reported.
    // Planning and writing recurse once per nesting level, so a body nested deeper than a
    // worker thread's stack allows is only read there.
    enum Step {
        Done(Output),
        Deep(Function),
    }
    let steps: Vec<Step> = bodies
        .into_par_iter()
        .map(|(body, validate, ty)| {
            let f = Function::read(wasm, body, validate, types, ty, costs)?;
            if f.nesting_depth > INLINE_NESTING_DEPTH_MAX {
                Ok(Step::Deep(f))
            } else {
                f.rewrite(&env).map(Step::Done)
            }
        })
        .collect::<Vec<_>>()
        .into_iter()
        .collect::<Result<_, Error>>()?;
    let finish = |steps: Vec<Step>| -> Result<Vec<Output>, Error> {
        steps
            .into_iter()
            .map(|step| match step {
                Step::Done(output) => Ok(output),
                Step::Deep(f) => f.rewrite(&env),
            })
            .collect()
    };
    let mut outputs = if steps.iter().any(|s| matches!(s, Step::Deep(_))) {
        // Those are rewritten one at a time on a thread with a stack sized for
        // NESTING_DEPTH_MAX.
        std::thread::scope(|scope| {
            std::thread::Builder::new()
                .name("tally-instrument".into())
                .stack_size(PASS_STACK_BYTES)
                .spawn_scoped(scope, || finish(steps))
                .map_err(|e| Error::Limit(format!("cannot start the instrumentation thread: {e}")))?
                .join()
                .map_err(|_| Error::Limit("the instrumentation pass panicked".into()))?
        })?
    } else {
        finish(steps)?
    };
    // Block types no function type of the module matches: appended to the type section in
    // the order functions first use them, so that the output does not depend on the number
    // of threads.
    let mut new_types: Vec<Signature> = Vec::new();
    let mut new_index: HashMap<Signature, u32> = HashMap::new();
    for output in &mut outputs {
        let indices: Vec<u32> = output
            .signatures
            .iter()
            .map(|signature| {
                *new_index.entry(signature.clone()).or_insert_with(|| {
                    new_types.push(signature.clone());
                    module.type_count + new_types.len() as u32 - 1
                })
            })
            .collect();
        for &(position, local) in &output.placeholders {
            let at = position as usize;
            crate::body::write_placeholder(
                &mut output.body[at..at + crate::body::PLACEHOLDER_BYTES],
                indices[local as usize],
            );
        }
    }
    assemble(wasm, &module, &new_types, globals, outputs, costs, options)
}

/// Writes `id` with `contents` as a section.
fn section(out: &mut Vec<u8>, id: u8, contents: &[u8]) {
    out.push(id);
    contents.len().encode(out);
    out.extend_from_slice(contents);
}

/// The contents of a vector section: `count` entries, the input's `existing` (its contents
/// after the count) and `appended`.
fn extended(count: u32, existing: &[u8], appended: &[u8]) -> Vec<u8> {
    let mut contents = Vec::with_capacity(existing.len() + appended.len() + 5);
    count.encode(&mut contents);
    contents.extend_from_slice(existing);
    contents.extend_from_slice(appended);
    contents
}

/// The bytes of a vector section's entries: its contents without the leading count.
fn entries(wasm: &[u8], range: &Range<usize>) -> Result<Range<usize>, Error> {
    let mut reader = wasmparser::BinaryReader::new(&wasm[range.clone()], range.start);
    reader
        .read_var_u32()
        .map_err(|e| Error::Invalid(e.to_string()))?;
    Ok(reader.original_position()..range.end)
}

fn assemble(
    wasm: &[u8],
    module: &Module<'_>,
    new_types: &[Signature],
    globals: Globals,
    outputs: Vec<Output>,
    costs: &CostTable,
    options: &Options,
) -> Result<Instrumented, Error> {
    let encode_type = |t: wasmparser::ValType, sink: &mut Vec<u8>| {
        wasm_encoder::ValType::try_from(t)
            .map(|t| t.encode(sink))
            .map_err(|_| Error::Unsupported(format!("value type {t}")))
    };
    // Appended type entries.
    let mut types = Vec::new();
    for (params, results) in new_types {
        types.push(0x60);
        for list in [params, results] {
            list.len().encode(&mut types);
            for &t in list {
                encode_type(t, &mut types)?;
            }
        }
    }
    // Appended globals: the count, the budget, the exhausted flag, the memory-time globals
    // and the fences' target, in the order of `Globals`.
    let initial_pages: u64 = module.memories.iter().map(|m| m.0).sum();
    let budget = options.initial_budget.min(OPS_MAX) as i64;
    let i64_global = |value: i64, sink: &mut Vec<u8>| {
        wasm_encoder::GlobalType {
            val_type: wasm_encoder::ValType::I64,
            mutable: true,
            shared: false,
        }
        .encode(sink);
        wasm_encoder::ConstExpr::i64_const(value).encode(sink);
    };
    let i32_global = |value: i32, sink: &mut Vec<u8>| {
        wasm_encoder::GlobalType {
            val_type: wasm_encoder::ValType::I32,
            mutable: true,
            shared: false,
        }
        .encode(sink);
        wasm_encoder::ConstExpr::i32_const(value).encode(sink);
    };
    let mut new_globals = Vec::new();
    i64_global(0, &mut new_globals);
    i64_global(budget, &mut new_globals);
    i32_global(0, &mut new_globals);
    i64_global(initial_pages as i64, &mut new_globals);
    i64_global(0, &mut new_globals);
    i64_global(0, &mut new_globals);
    i32_global(0, &mut new_globals);
    // Appended exports.
    let mut exports = Vec::new();
    let mut export_count = 0u32;
    let mut export = |name: &str, kind: wasm_encoder::ExportKind, index: u32| {
        name.encode(&mut exports);
        kind.encode(&mut exports);
        index.encode(&mut exports);
        export_count += 1;
    };
    use wasm_encoder::ExportKind::{Func, Global};
    export(OPS_GLOBAL, Global, globals.ops);
    export(BUDGET_GLOBAL, Global, globals.budget);
    export(EXHAUSTED_GLOBAL, Global, globals.exhausted);
    export(MEMORY_PAGES_GLOBAL, Global, globals.pages);
    export(MEMORY_MARK_GLOBAL, Global, globals.mark);
    export(MEMORY_INTEGRAL_GLOBAL, Global, globals.integral);
    let defer_start = options.defer_start && module.start.is_some();
    if defer_start && let Some(start) = module.start {
        export(crate::START_EXPORT, Func, start);
    }

    let mut out = Vec::with_capacity(wasm.len() + wasm.len() / 2);
    out.extend_from_slice(&wasm[..8]);
    let mut stats = Stats {
        input_bytes: wasm.len(),
        ..Stats::default()
    };
    let (mut entries_out, mut merged, mut loop_traps) = (Vec::new(), Vec::new(), Vec::new());
    // The sections the pass adds when the module has none of that kind, by id.
    let mut missing: Vec<u8> = [1u8, 6, 7]
        .into_iter()
        .filter(|id| !module.sections.iter().any(|s| s.0 == *id))
        .filter(|&id| id != 1 || !new_types.is_empty())
        .collect();
    let mut outputs = Some(outputs);
    let mut write_section =
        |out: &mut Vec<u8>, id: u8, range: Option<&Range<usize>>| -> Result<(), Error> {
            let existing = match range {
                // The sections that get entries appended: their entries without the count.
                Some(range) if matches!(id, 1 | 6 | 7 | 10) => entries(wasm, range)?,
                Some(range) => range.clone(),
                None => 0..0,
            };
            let existing_bytes = &wasm[existing.clone()];
            match id {
                1 => {
                    let count = module.type_groups + new_types.len() as u32;
                    section(out, 1, &extended(count, existing_bytes, &types));
                }
                6 => {
                    let count = module.defined_globals + 7;
                    section(out, 6, &extended(count, existing_bytes, &new_globals));
                }
                7 => {
                    let count = module.exports + export_count;
                    section(out, 7, &extended(count, existing_bytes, &exports));
                }
                8 if defer_start => {}
                10 => {
                    let outputs = outputs.take().expect("one code section");
                    let mut contents = Vec::with_capacity(existing_bytes.len() * 3 / 2);
                    (outputs.len() as u32).encode(&mut contents);
                    let mut bases = Vec::with_capacity(outputs.len());
                    for output in &outputs {
                        output.body.len().encode(&mut contents);
                        bases.push(contents.len());
                        contents.extend_from_slice(&output.body);
                    }
                    let start = out.len() + 1 + leb_len(contents.len());
                    for (output, base) in outputs.into_iter().zip(bases) {
                        let base = u32::try_from(start + base)
                            .map_err(|_| Error::Limit("the output is larger than 4 GiB".into()))?;
                        let shift =
                            |v: Vec<(u32, u64)>| v.into_iter().map(move |(o, c)| (o + base, c));
                        stats.add_function(&output.stats);
                        entries_out.extend(shift(output.entries));
                        merged.extend(shift(output.merged));
                        loop_traps.extend(shift(output.loop_traps));
                    }
                    section(out, 10, &contents);
                }
                _ => section(out, id, existing_bytes),
            }
            Ok(())
        };
    for (id, range) in &module.sections {
        let (id, range) = (*id, range);
        if id != 0 {
            // Sections the pass adds go where the format wants them.
            while let Some(&next) = missing.first()
                && rank(next) < rank(id)
            {
                missing.remove(0);
                write_section(&mut out, next, None)?;
            }
        }
        if id == 0 {
            let name = wasmparser::BinaryReader::new(&wasm[range.clone()], range.start)
                .read_string()
                .unwrap_or("");
            // Debug information describes the original code's offsets.
            if name.starts_with(".debug_") {
                continue;
            }
            section(&mut out, 0, &wasm[range.clone()]);
            continue;
        }
        write_section(&mut out, id, Some(range))?;
    }
    for id in missing {
        write_section(&mut out, id, None)?;
    }
    // The cost table the count was made with.
    let mut meter = Vec::new();
    META_SECTION.encode(&mut meter);
    meter.extend_from_slice(
        format!("{{\"cost_table\":\"{}\",\"format\":1}}", costs.id()).as_bytes(),
    );
    section(&mut out, 0, &meter);
    stats.output_bytes = out.len();
    Ok(Instrumented {
        wasm: out,
        meter_map: MeterMap::new(entries_out, merged, loop_traps),
        stats,
    })
}

/// The length of `value` as an unsigned LEB128.
fn leb_len(value: usize) -> usize {
    let mut bytes = Vec::with_capacity(5);
    value.encode(&mut bytes);
    bytes.len()
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
    fn a_br_table_jumps_straight_to_handlers_charged_at_their_end() {
        // $h0's and $h1's ends are reached only by branches, $h2's also by falling through.
        let wasm = wat::parse_str(
            "(module (func (export \"f\") (param i32) (result i32)
               block $h2 block $h1 block $h0
                 local.get 0 br_table $h0 $h1 $h2
               end i32.const 1 i32.const 2 i32.add return
               end i32.const 3 drop
               end i32.const 4 i32.const 5 i32.add))",
        )
        .unwrap();
        let blocks = |wasm: &[u8]| {
            let mut n = 0;
            for payload in wasmparser::Parser::new(0).parse_all(wasm) {
                if let wasmparser::Payload::CodeSectionEntry(body) = payload.unwrap() {
                    for op in body.get_operators_reader().unwrap() {
                        n += matches!(op.unwrap(), wasmparser::Operator::Block { .. }) as usize;
                    }
                }
            }
            n
        };
        let costs = CostTable::preset("wasmtime-fuel").unwrap();
        let out = instrument(&wasm, &costs, &Options::default()).unwrap();
        // One trampoline, for $h2 (without the rule, one per target: 6 blocks).
        assert_eq!((blocks(&wasm), blocks(&out.wasm)), (3, 4));
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
    fn a_br_if_outside_loops_keeps_its_taken_edge_free() {
        let costs = CostTable::preset("wasmtime-fuel").unwrap();
        // The fall-through does work of its own (not a slow path) before the block ends, and
        // the target's first side effect is a store.
        let body = "block local.get 0 br_if 0 i32.const 1 global.set $g end
                    i32.const 2 global.set $g";
        let shape = |code: String| {
            let wasm = wat::parse_str(format!(
                "(module (global $g (mut i32) (i32.const 0)) (func (param i32) {code}))"
            ))
            .unwrap();
            branches(&instrument(&wasm, &costs, &Options::default()).unwrap().wasm)
        };
        // Outside loops the plain add goes on the fall-through: the `br_if` stays a `br_if`.
        assert_eq!(shape(body.to_string()), (1, 0));
        // In a loop the taken edge keeps its adjustment, in an `if`; the fall-through, often
        // the path round the loop, runs free (the other `if` is the loop's budget check).
        assert_eq!(
            shape(format!("loop {body} local.get 0 br_if 0 end")),
            (1, 2)
        );
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

    #[test]
    fn padded_operators_are_written_at_their_shortest() {
        // Two functions; the second calls the first with the index padded to 5 bytes, as a
        // linker writes a relocated one.
        let wasm: Vec<u8> = [
            &b"\0asm\x01\0\0\0"[..],
            &[0x01, 0x04, 0x01, 0x60, 0x00, 0x00],
            &[0x03, 0x03, 0x02, 0x00, 0x00],
            &[0x0a, 0x0d, 0x02, 0x02, 0x00, 0x0b],
            &[0x08, 0x00, 0x10, 0x80, 0x80, 0x80, 0x80, 0x00, 0x0b],
        ]
        .concat();
        let costs = CostTable::preset("wasmtime-fuel").unwrap();
        let out = instrument(&wasm, &costs, &Options::default()).unwrap();
        wasmparser::Validator::new()
            .validate_all(&out.wasm)
            .unwrap();
        let mut calls = Vec::new();
        for payload in wasmparser::Parser::new(0).parse_all(&out.wasm) {
            let wasmparser::Payload::CodeSectionEntry(body) = payload.unwrap() else {
                continue;
            };
            let mut reader = body.get_operators_reader().unwrap();
            while !reader.eof() {
                let at = reader.original_position();
                if let wasmparser::Operator::Call { function_index } = reader.read().unwrap() {
                    calls.push((function_index, reader.original_position() - at));
                }
            }
        }
        assert_eq!(calls, [(0, 2)]);
    }
}

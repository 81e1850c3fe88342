//! One function body: read into a tree of instruction sequences, planned, and written out.
//!
//! [`Function::read`] validates the body and reads it once into sequences (the function's
//! body, each `block`, `loop` and `if` arm), each a list of the original operators with their
//! byte ranges; code after a branch that never falls through is dead and left out.
//! [`Function::rewrite`] computes phi (see the `pass` module) and writes the new body: every
//! original operator is copied (at its shortest encoding), and the count code goes in between.

use std::collections::HashMap;

use wasm_encoder::{Encode, Instruction};
use wasmparser::{BlockType, FuncToValidate, FunctionBody, Operator, ValType, ValidatorResources};

use crate::cost::CostTable;
use crate::merge::ModuleTypes;
use crate::meter::Stats;
use crate::{Error, NESTING_DEPTH_MAX, OPS_MAX};

/// The guard region below which wasmtime 48 (default memory configuration, 64-bit host) elides
/// bounds checks of 32-bit memories, so that an access is a plain load or store whatever its
/// address: 32 MiB.
const GUARD_BYTES_ASSUMED: u64 = 32 << 20;

/// The most locals (parameters included) a function may have: wasmparser's limit.
const LOCALS_MAX: u64 = 50_000;

/// An index into [`Function::seqs`].
pub(crate) type SeqId = u32;

/// The function's body sequence (branching to it returns).
const ENTRY: SeqId = 0;

/// A block type the rewritten code needs: (params, results).
pub(crate) type Signature = (Vec<ValType>, Vec<ValType>);

/// What kind of construct an instruction sequence is the body of.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Construct {
    Entry,
    Block,
    Loop,
    Arm,
}

/// The structure an operator has for the pass. Branch targets are the sequences they name (an
/// `if`'s label is its consequent), with the relative depth they were written with.
#[derive(Clone, Copy)]
enum Kind {
    Other,
    Block(SeqId),
    Loop(SeqId),
    If(SeqId, SeqId),
    Br(SeqId),
    BrIf(SeqId, u32),
    /// `Function::tables[start..start + len]`, the default last.
    BrTable(u32, u32),
}

/// What the merge analysis found about one operator (bits of [`Op::flags`]).
struct Flags;

impl Flags {
    /// A memory access that needs a fence right before it (see `merge`).
    const FENCE_BEFORE: u8 = 1;
    /// The last instruction of a block that needs a fence right after it.
    const FENCE_AFTER: u8 = 2;
    /// An instruction a load may be merged into: the meter map needs its output offset.
    const MERGED_CONSUMER: u8 = 4;
}

/// What kind of operator it is, as far as the pass asks (bits of [`Op::class`], computed once
/// when the body is read).
struct Class;

impl Class {
    const NEVER_TRAPS: u8 = 1;
    const CALL: u8 = 2;
    const TERMINATOR: u8 = 4;
    const CONST: u8 = 8;
    const GLOBAL_SET: u8 = 16;
    const UNREACHABLE: u8 = 32;
    /// A `memory.grow`, or an operator with a per-unit cost.
    const VARIABLE: u8 = 64;
    const GROWS: u8 = 128;

    fn of(op: &Operator<'_>, costs: &CostTable) -> u8 {
        let bit = |yes: bool, bit: u8| if yes { bit } else { 0 };
        let grows = matches!(op, Operator::MemoryGrow { .. });
        bit(never_traps(op), Class::NEVER_TRAPS)
            | bit(is_call(op), Class::CALL)
            | bit(is_terminator(op), Class::TERMINATOR)
            | bit(is_const(op), Class::CONST)
            | bit(matches!(op, Operator::GlobalSet { .. }), Class::GLOBAL_SET)
            | bit(matches!(op, Operator::Unreachable), Class::UNREACHABLE)
            | bit(grows || variable_cost(costs, op) > 0, Class::VARIABLE)
            | bit(grows, Class::GROWS)
    }
}

/// One original operator.
struct Op {
    /// Its bytes in the input module.
    at: u32,
    end: u32,
    weight: u32,
    flags: u8,
    /// [`Class`] bits.
    class: u8,
    kind: Kind,
    /// Where its shortest encoding is in [`Function::encoded`], when that is shorter than the
    /// input's (`encoded_len` 0: copied as written).
    encoded_at: u32,
    encoded_len: u8,
}

impl Op {
    /// An operator at `at..end` of the input; [`Function::push`] fills in the rest.
    fn new(at: u32, end: u32, kind: Kind) -> Op {
        Op {
            at,
            end,
            weight: 0,
            flags: 0,
            class: 0,
            kind,
            encoded_at: 0,
            encoded_len: 0,
        }
    }

    fn is(&self, class: u8) -> bool {
        self.class & class != 0
    }
}

/// One instruction sequence and what the pass knows about it.
struct Seq {
    ops: Vec<Op>,
    construct: Construct,
    ty: BlockType,
    /// phi at every position (len + 1 entries); taken while the sequence is written.
    phi: Vec<u64>,
    /// phi at the start.
    start: u64,
    /// phi right after the construct that the sequence is the body of.
    cont: u64,
    /// Some branch targets it (for a loop: also one in dead code, as the module is written).
    targeted: bool,
    /// The consequent of an `if` whose alternative (rather than consequent) is prepaid.
    prepaid_alternative: bool,
    /// A loop whose body keeps the count in the local only (see [`Function::register_loop`]).
    register: bool,
    /// Part of a register loop's body: the global lags the count here.
    stale: bool,
    /// A block some `br_table` targets.
    table_target: bool,
    /// A loop body or nested in one.
    in_loop: bool,
    /// A block charged where it ends rather than on the edges into it (see [`Pass::plan`]):
    /// phi after it, added right after its `end`; a branch to it lands with phi 0.
    charged_at_end: u64,
    /// A branch to this label cannot be folded by Cranelift into a conditional trap: the code
    /// it lands on starts with a side effect that is not a certain trap (see
    /// [`Pass::cannot_fold`]).
    cont_cannot_fold: bool,
}

impl Seq {
    fn new(construct: Construct, ty: BlockType) -> Self {
        Seq {
            ops: Vec::new(),
            construct,
            ty,
            phi: Vec::new(),
            start: 0,
            cont: 0,
            targeted: false,
            prepaid_alternative: false,
            cont_cannot_fold: false,
            register: false,
            stale: false,
            table_target: false,
            in_loop: false,
            charged_at_end: 0,
        }
    }
}

/// A function body read for the pass.
pub(crate) struct Function {
    seqs: Vec<Seq>,
    /// Operators encoded again at their shortest (see [`Op::encoded_at`]).
    encoded: Vec<u8>,
    /// The targets of every `br_table`, as (sequence, relative depth).
    tables: Vec<(SeqId, u32)>,
    /// The local declarations as written.
    locals: Vec<(u32, ValType)>,
    /// Parameters and declared locals: the index of the first local the pass adds.
    first_new_local: u32,
    /// The function's type index.
    function_type: u32,
    /// The size of the body as written.
    input_bytes: usize,
    /// Some operator calls (or tail-calls), dead code included.
    has_calls: bool,
    /// Some live operator has a per-unit cost or is a `memory.grow`: the pass needs its
    /// scratch locals.
    variable_ops: bool,
    pub nesting_depth: usize,
    /// (consumer offset, load offset) pairs of the merge analysis.
    merged: Vec<(u32, u32)>,
    basic_blocks: usize,
    /// The temporaries the register loops need ([`Temps`] bits).
    temps: u8,
}

/// What the module gives every function's pass.
pub(crate) struct Env<'m> {
    pub wasm: &'m [u8],
    pub types: &'m ModuleTypes,
    /// The first type index of every function type of the module, by signature.
    pub existing: &'m HashMap<Signature, u32>,
    pub costs: &'m CostTable,
    pub globals: Globals,
    /// The memories that have a maximum, with that maximum in bytes (by memory index).
    pub bounded_memories: &'m [(u32, u64)],
    /// Memory 0's maximum in bytes (`u64::MAX` if it has none), where its accesses can be
    /// bounds-checked in code (see [`Function::register_loop`]).
    pub memory0: Option<u64>,
}

/// The indices of the globals the pass adds.
#[derive(Clone, Copy)]
pub(crate) struct Globals {
    pub ops: u32,
    /// Written by fences, never read.
    pub fence: u32,
    pub budget: u32,
    pub exhausted: u32,
    /// Pages of all memories now.
    pub pages: u32,
    /// The count at the last `memory.grow`.
    pub mark: u32,
    /// pages × ops accumulated up to `mark`.
    pub integral: u32,
}

/// A rewritten body: offsets are relative to the start of `body`.
#[derive(Default)]
pub(crate) struct Output {
    /// The body as the code section holds it (locals and code, without its size).
    pub body: Vec<u8>,
    pub stats: Stats,
    /// (offset, correction) of the instructions with a prepaid amount.
    pub entries: Vec<(u32, u64)>,
    /// (offset, correction) of consumers a load may have been merged into.
    pub merged: Vec<(u32, u64)>,
    /// (offset of a `loop` or `if`, correction of the trap Cranelift may report there).
    pub loop_traps: Vec<(u32, u64)>,
    /// Block types the module does not have yet, in order of first use.
    pub signatures: Vec<Signature>,
    /// (offset, index in `signatures`) of each block type that names one of them: a 5-byte
    /// placeholder for the type index, which the module's assembly fills in.
    pub placeholders: Vec<(u32, u32)>,
}

/// The width of a type index placeholder (a padded signed LEB128).
pub(crate) const PLACEHOLDER_BYTES: usize = 5;

/// Writes `index` as a padded signed LEB128 of [`PLACEHOLDER_BYTES`] bytes.
pub(crate) fn write_placeholder(slot: &mut [u8], index: u32) {
    for (i, byte) in slot.iter_mut().enumerate() {
        let bits = ((index as u64) >> (7 * i)) as u8 & 0x7f;
        *byte = if i + 1 < PLACEHOLDER_BYTES {
            bits | 0x80
        } else {
            bits
        };
    }
}

/// The value types of a block type: (params, results).
fn block_signature(types: &ModuleTypes, ty: BlockType) -> Signature {
    match ty {
        BlockType::Empty => (vec![], vec![]),
        BlockType::Type(t) => (vec![], vec![t]),
        BlockType::FuncType(index) => function_signature(types, index).unwrap_or_default(),
    }
}

/// The params and results of type `index`, if it is a function type.
pub(crate) fn function_signature(types: &ModuleTypes, index: u32) -> Option<Signature> {
    match &types.types.get(index as usize)?.composite_type.inner {
        wasmparser::CompositeInnerType::Func(f) => {
            Some((f.params().to_vec(), f.results().to_vec()))
        }
        _ => None,
    }
}

/// A tail call: a call that also ends the function.
fn is_tail_call(op: &Operator<'_>) -> bool {
    matches!(
        op,
        Operator::ReturnCall { .. }
            | Operator::ReturnCallIndirect { .. }
            | Operator::ReturnCallRef { .. }
    )
}

/// An operator that never falls through.
fn is_terminator(op: &Operator<'_>) -> bool {
    is_tail_call(op)
        || matches!(
            op,
            Operator::Br { .. }
                | Operator::BrTable { .. }
                | Operator::Return
                | Operator::Unreachable
        )
}

fn is_call(op: &Operator<'_>) -> bool {
    matches!(
        op,
        Operator::Call { .. } | Operator::CallIndirect { .. } | Operator::CallRef { .. }
    )
}

fn is_const(op: &Operator<'_>) -> bool {
    matches!(
        op,
        Operator::I32Const { .. }
            | Operator::I64Const { .. }
            | Operator::F32Const { .. }
            | Operator::F64Const { .. }
            | Operator::V128Const { .. }
    )
}

/// Operators that can neither trap nor be the top frame of a trap; they need no correction.
fn never_traps(op: &Operator<'_>) -> bool {
    use Operator as O;
    match op {
        O::Unreachable | O::Return | O::Else | O::End => false,
        O::I32DivS
        | O::I32DivU
        | O::I32RemS
        | O::I32RemU
        | O::I64DivS
        | O::I64DivU
        | O::I64RemS
        | O::I64RemU
        | O::I32TruncF32S
        | O::I32TruncF32U
        | O::I32TruncF64S
        | O::I32TruncF64U
        | O::I64TruncF32S
        | O::I64TruncF32U
        | O::I64TruncF64S
        | O::I64TruncF64U => false,
        O::LocalGet { .. }
        | O::LocalSet { .. }
        | O::LocalTee { .. }
        | O::GlobalGet { .. }
        | O::GlobalSet { .. }
        | O::TypedSelect { .. }
        | O::TypedSelectMulti { .. }
        | O::Block { .. }
        | O::If { .. }
        | O::Br { .. }
        | O::BrIf { .. }
        | O::BrTable { .. }
        | O::MemorySize { .. }
        | O::RefNull { .. }
        | O::RefIsNull
        | O::RefFunc { .. }
        | O::RefI31
        | O::TableSize { .. }
        | O::DataDrop { .. }
        | O::ElemDrop { .. }
        | O::AtomicFence => true,
        _ => is_const(op) || crate::cost::is_numeric(op),
    }
}

/// The memory argument of a plain load or store (scalar or `v128`).
fn plain_access(op: &Operator<'_>) -> Option<wasmparser::MemArg> {
    use Operator as O;
    match *op {
        O::I32Load { memarg }
        | O::I64Load { memarg }
        | O::F32Load { memarg }
        | O::F64Load { memarg }
        | O::I32Load8S { memarg }
        | O::I32Load8U { memarg }
        | O::I32Load16S { memarg }
        | O::I32Load16U { memarg }
        | O::I64Load8S { memarg }
        | O::I64Load8U { memarg }
        | O::I64Load16S { memarg }
        | O::I64Load16U { memarg }
        | O::I64Load32S { memarg }
        | O::I64Load32U { memarg }
        | O::V128Load { memarg }
        | O::I32Store { memarg }
        | O::I64Store { memarg }
        | O::F32Store { memarg }
        | O::F64Store { memarg }
        | O::I32Store8 { memarg }
        | O::I32Store16 { memarg }
        | O::I64Store8 { memarg }
        | O::I64Store16 { memarg }
        | O::I64Store32 { memarg }
        | O::V128Store { memarg } => Some(memarg),
        _ => None,
    }
}

/// A scalar load or store: its memory argument, how many bytes it accesses, and the type of
/// the value a store takes.
fn scalar_access(op: &Operator<'_>) -> Option<(wasmparser::MemArg, u8, Option<ValType>)> {
    use Operator as O;
    let (memarg, bytes, stored) = match *op {
        O::I32Load8S { memarg } | O::I32Load8U { memarg } => (memarg, 1, None),
        O::I64Load8S { memarg } | O::I64Load8U { memarg } => (memarg, 1, None),
        O::I32Load16S { memarg } | O::I32Load16U { memarg } => (memarg, 2, None),
        O::I64Load16S { memarg } | O::I64Load16U { memarg } => (memarg, 2, None),
        O::I32Load { memarg } | O::F32Load { memarg } => (memarg, 4, None),
        O::I64Load32S { memarg } | O::I64Load32U { memarg } => (memarg, 4, None),
        O::I64Load { memarg } | O::F64Load { memarg } => (memarg, 8, None),
        O::I32Store8 { memarg } => (memarg, 1, Some(ValType::I32)),
        O::I32Store16 { memarg } => (memarg, 2, Some(ValType::I32)),
        O::I32Store { memarg } => (memarg, 4, Some(ValType::I32)),
        O::I64Store8 { memarg } => (memarg, 1, Some(ValType::I64)),
        O::I64Store16 { memarg } => (memarg, 2, Some(ValType::I64)),
        O::I64Store32 { memarg } => (memarg, 4, Some(ValType::I64)),
        O::I64Store { memarg } => (memarg, 8, Some(ValType::I64)),
        O::F32Store { memarg } => (memarg, 4, Some(ValType::F32)),
        O::F64Store { memarg } => (memarg, 8, Some(ValType::F64)),
        _ => return None,
    };
    Some((memarg, bytes, stored))
}

/// Bits of [`Function::temps`]: the locals a register loop's bounds checks need.
struct Temps;

impl Temps {
    /// The address (i32) and memory 0's size in bytes (i64).
    const ACCESS: u8 = 1;
    const I32: u8 = 2;
    const I64: u8 = 4;
    const F32: u8 = 8;
    const F64: u8 = 16;

    fn of(ty: ValType) -> u8 {
        match ty {
            ValType::I32 => Temps::I32,
            ValType::I64 => Temps::I64,
            ValType::F32 => Temps::F32,
            _ => Temps::F64,
        }
    }
}

/// Reads one operator of the input again.
fn operator_at<'a>(wasm: &'a [u8], op: &Op) -> Operator<'a> {
    let bytes = &wasm[op.at as usize..op.end as usize];
    wasmparser::OperatorsReader::new(wasmparser::BinaryReader::new(bytes, op.at as usize))
        .read()
        .expect("the operator was read before")
}

/// Operators tally cannot meter: they transfer control in ways the pass does not follow.
fn unmeterable(op: &Operator<'_>) -> bool {
    use Operator as O;
    matches!(
        op,
        O::Try { .. }
            | O::TryTable { .. }
            | O::Throw { .. }
            | O::ThrowRef
            | O::Rethrow { .. }
            | O::Delegate { .. }
            | O::Catch { .. }
            | O::CatchAll
            | O::BrOnNull { .. }
            | O::BrOnNonNull { .. }
            | O::BrOnCast { .. }
            | O::BrOnCastFail { .. }
            | O::BrOnCastDescEq { .. }
            | O::BrOnCastDescEqFail { .. }
            | O::ContNew { .. }
            | O::ContBind { .. }
            | O::Suspend { .. }
            | O::Resume { .. }
            | O::ResumeThrow { .. }
            | O::ResumeThrowRef { .. }
            | O::Switch { .. }
    )
}

/// The most scalar memory accesses a register loop may have (see
/// [`Function::mark_register_loops`]): each costs an add, a compare and a branch per
/// iteration, where the loop saves one store of the count. With 4, json, strings, sort and
/// btree ran 2–5% slower than with 1 and outputs were 4–5% larger; primes and matmul gain as
/// much with 1 (`docs/benchmarks.md`).
const REGISTER_LOOP_ACCESSES: usize = 1;

/// An open construct while a body is read.
struct Frame {
    /// The sequence a branch to this frame's label names; `None` in dead code.
    label: Option<SeqId>,
    /// The sequence operators are added to (an `if`'s alternative after `else`).
    current: Option<SeqId>,
    /// The alternative of an `if`.
    alternative: Option<SeqId>,
    /// The rest of `current` is dead (after a branch that never falls through).
    dead: bool,
}

impl Function {
    /// Validates `body` and reads it into sequences.
    pub fn read<'a>(
        wasm: &'a [u8],
        body: FunctionBody<'a>,
        validate: FuncToValidate<ValidatorResources>,
        types: &ModuleTypes,
        function_type: u32,
        costs: &CostTable,
    ) -> Result<Function, Error> {
        let invalid = |e: wasmparser::BinaryReaderError| Error::Invalid(e.to_string());
        let mut validator = validate.into_validator(Default::default());
        let (params, _) = function_signature(types, function_type).unwrap_or_default();
        let mut locals = Vec::new();
        let mut first_new_local = params.len() as u64;
        let mut locals_reader = body.get_locals_reader().map_err(invalid)?;
        for _ in 0..locals_reader.get_count() {
            let offset = locals_reader.original_position();
            let (count, ty) = locals_reader.read().map_err(invalid)?;
            validator
                .define_locals(offset, count, ty)
                .map_err(invalid)?;
            first_new_local += u64::from(count);
            locals.push((count, ty));
        }
        let mut reader = body.get_operators_reader().map_err(invalid)?;
        let mut f = Function {
            seqs: vec![Seq::new(Construct::Entry, BlockType::Empty)],
            encoded: Vec::new(),
            tables: Vec::new(),
            locals,
            first_new_local: u32::try_from(first_new_local)
                .map_err(|_| Error::Invalid("too many locals".into()))?,
            function_type,
            input_bytes: body.range().len(),
            has_calls: false,
            variable_ops: false,
            nesting_depth: 0,
            merged: Vec::new(),
            basic_blocks: 1,
            temps: 0,
        };
        let mut frames = vec![Frame {
            label: Some(ENTRY),
            current: Some(ENTRY),
            alternative: None,
            dead: false,
        }];
        let mut merges = crate::merge::Body::new(types, function_type);
        let mut analysis = crate::merge::Analysis::default();
        // (offset, sequence, index) of every live operator, ascending.
        let mut positions: Vec<(u32, SeqId, u32)> = Vec::new();
        while !reader.eof() {
            let offset = reader.original_position();
            let op = reader.read().map_err(invalid)?;
            let end = reader.original_position();
            if unmeterable(&op) {
                return Err(Error::Unsupported(crate::operator_name(&op).into()));
            }
            validator.op(offset, &op).map_err(invalid)?;
            let at = u32::try_from(offset).expect("module size is limited");
            merges.operator(at, &op, &mut analysis)?;
            // The frame `depth` labels out; validation has checked it exists.
            let frame_at = |frames: &[Frame], depth: u32| frames.len() - 1 - depth as usize;
            // Budget checks are placed on the module as written: a loop some branch targets,
            // even one in dead code, and a body that contains a call anywhere.
            let target = |frames: &[Frame], depth: u32, seqs: &mut Vec<Seq>| {
                let frame = &frames[frame_at(frames, depth)];
                if let Some(label) = frame.label {
                    seqs[label as usize].targeted = true;
                }
            };
            match &op {
                Operator::Br { relative_depth } | Operator::BrIf { relative_depth } => {
                    target(&frames, *relative_depth, &mut f.seqs)
                }
                Operator::BrTable { targets } => {
                    target(&frames, targets.default(), &mut f.seqs);
                    for depth in targets.targets() {
                        target(&frames, depth.map_err(invalid)?, &mut f.seqs);
                    }
                }
                _ if is_call(&op) || is_tail_call(&op) => f.has_calls = true,
                _ => {}
            }
            let top = frames.last_mut().expect("validation keeps a frame open");
            let live = if top.dead { None } else { top.current };
            match op {
                Operator::Block { blockty }
                | Operator::Loop { blockty }
                | Operator::If { blockty } => {
                    if frames.len() > NESTING_DEPTH_MAX {
                        return Err(Error::Limit(format!(
                            "blocks are nested more than {NESTING_DEPTH_MAX} deep"
                        )));
                    }
                    f.nesting_depth = f.nesting_depth.max(frames.len());
                    let Some(parent) = live else {
                        frames.push(Frame {
                            label: None,
                            current: None,
                            alternative: None,
                            dead: true,
                        });
                        continue;
                    };
                    let in_loop = f.seqs[parent as usize].in_loop;
                    let mut new_seq = |construct| {
                        let mut seq = Seq::new(construct, blockty);
                        seq.in_loop = in_loop || construct == Construct::Loop;
                        f.seqs.push(seq);
                        f.basic_blocks += 1;
                        (f.seqs.len() - 1) as SeqId
                    };
                    let (kind, label, alternative) = match op {
                        Operator::Block { .. } => {
                            let s = new_seq(Construct::Block);
                            (Kind::Block(s), s, None)
                        }
                        Operator::Loop { .. } => {
                            let s = new_seq(Construct::Loop);
                            (Kind::Loop(s), s, None)
                        }
                        _ => {
                            let c = new_seq(Construct::Arm);
                            let a = new_seq(Construct::Arm);
                            (Kind::If(c, a), c, Some(a))
                        }
                    };
                    let op = (Op::new(at, end as u32, kind), op);
                    f.push(parent, &mut positions, op, wasm, costs);
                    frames.push(Frame {
                        label: Some(label),
                        current: Some(label),
                        alternative,
                        dead: false,
                    });
                }
                Operator::Else => {
                    top.current = top.alternative;
                    top.dead = false;
                }
                Operator::End => {
                    frames.pop();
                }
                op => {
                    let Some(parent) = live else { continue };
                    let label = |depth: u32| {
                        frames[frame_at(&frames, depth)]
                            .label
                            .expect("a live branch's targets are live")
                    };
                    let kind = match &op {
                        Operator::Br { relative_depth } => Kind::Br(label(*relative_depth)),
                        Operator::BrIf { relative_depth } => {
                            f.basic_blocks += 1;
                            Kind::BrIf(label(*relative_depth), *relative_depth)
                        }
                        Operator::BrTable { targets } => {
                            let start = f.tables.len() as u32;
                            for depth in targets.targets() {
                                let depth = depth.map_err(invalid)?;
                                f.tables.push((label(depth), depth));
                            }
                            let default = targets.default();
                            f.tables.push((label(default), default));
                            for &(target, _) in &f.tables[start as usize..] {
                                f.seqs[target as usize].table_target = true;
                            }
                            Kind::BrTable(start, f.tables.len() as u32 - start)
                        }
                        _ => Kind::Other,
                    };
                    let terminates = is_terminator(&op);
                    let op = (Op::new(at, end as u32, kind), op);
                    f.push(parent, &mut positions, op, wasm, costs);
                    if terminates {
                        frames.last_mut().expect("checked above").dead = true;
                    }
                }
            }
        }
        reader.finish().map_err(invalid)?;
        let mut flag = |offsets: &mut dyn Iterator<Item = u32>, flag: u8| {
            for offset in offsets {
                if let Ok(i) = positions.binary_search_by_key(&offset, |p| p.0) {
                    let (_, seq, index) = positions[i];
                    f.seqs[seq as usize].ops[index as usize].flags |= flag;
                }
            }
        };
        flag(&mut analysis.fences.iter().copied(), Flags::FENCE_BEFORE);
        flag(
            &mut analysis.fences_after.iter().copied(),
            Flags::FENCE_AFTER,
        );
        flag(
            &mut analysis.merged.iter().map(|&(consumer, _)| consumer),
            Flags::MERGED_CONSUMER,
        );
        f.merged = analysis.merged;
        f.merged.sort_unstable();
        Ok(f)
    }

    /// Adds an operator (with the parsed form it was read as) to `seq`.
    fn push(
        &mut self,
        seq: SeqId,
        positions: &mut Vec<(u32, SeqId, u32)>,
        (mut op, operator): (Op, Operator<'_>),
        wasm: &[u8],
        costs: &CostTable,
    ) {
        let bytes = &wasm[op.at as usize..op.end as usize];
        op.weight = u32::try_from(costs.weight(&operator)).expect("weights are u32");
        op.class = Class::of(&operator, costs);
        // Linkers pad the LEB128 of relocated indices and addresses to 5 bytes: such an
        // operator is written again at its shortest.
        if bytes.len() > 2 && matches!(op.kind, Kind::Other) && maybe_padded(bytes) {
            use wasm_encoder::reencode::Reencode;
            if let Ok(instruction) =
                wasm_encoder::reencode::RoundtripReencoder.instruction(operator)
            {
                let start = self.encoded.len();
                instruction.encode(&mut self.encoded);
                let len = self.encoded.len() - start;
                if len < (op.end - op.at) as usize && len <= usize::from(u8::MAX) {
                    op.encoded_at = start as u32;
                    op.encoded_len = len as u8;
                } else {
                    self.encoded.truncate(start);
                }
            }
        }
        self.variable_ops |= op.is(Class::VARIABLE);
        let ops = &mut self.seqs[seq as usize].ops;
        positions.push((op.at, seq, ops.len() as u32));
        ops.push(op);
    }

    fn is_loop(&self, seq: SeqId) -> bool {
        self.seqs[seq as usize].construct == Construct::Loop
    }

    /// Marks the loops whose body can keep the count in the local alone, with no store per
    /// iteration, and the sequences inside them.
    ///
    /// At a trap the global must hold the count (plus the trapping instruction's static
    /// correction), so every change of the count is stored, once per iteration in a loop;
    /// where stores miss the cache (a sieve) that store is most of metering's cost. A loop
    /// body whose only instructions that can trap are scalar accesses to memory 0,
    /// `unreachable` and `return` can instead store the exact count only where it is needed:
    /// before an `unreachable` or a `return`, on every edge that leaves the loop, and before an
    /// access that is about to trap, found by a bounds check in code (memory 0's size is read
    /// before the loop: without calls or `memory.grow` in the body it cannot change). Budget
    /// checks read the local, and stop with the exact count as everywhere. Innermost loops
    /// only, without calls, `br_table` or operators with a per-unit cost, and with at most
    /// [`REGISTER_LOOP_ACCESSES`] accesses. A loop with calls kept its count store: the
    /// store before each call and the size read after it cost more than they saved (json).
    fn mark_register_loops(&mut self, env: &Env<'_>) {
        for l in 0..self.seqs.len() as SeqId {
            if !self.is_loop(l) {
                continue;
            }
            let Some(temps) = self.register_loop(env, l) else {
                continue;
            };
            self.temps |= temps;
            self.seqs[l as usize].register = true;
            let mut stack = vec![l];
            while let Some(seq) = stack.pop() {
                self.seqs[seq as usize].stale = true;
                for op in &self.seqs[seq as usize].ops {
                    match op.kind {
                        Kind::Block(b) => stack.push(b),
                        Kind::If(c, a) => stack.extend([c, a]),
                        _ => {}
                    }
                }
            }
        }
    }

    /// Whether loop `l` qualifies (see [`Function::mark_register_loops`]), with the
    /// temporaries its bounds checks need.
    fn register_loop(&self, env: &Env<'_>, l: SeqId) -> Option<u8> {
        let mut temps = 0;
        let mut accesses = 0;
        let mut stack = vec![l];
        while let Some(seq) = stack.pop() {
            for op in &self.seqs[seq as usize].ops {
                match op.kind {
                    Kind::Loop(_) | Kind::BrTable(..) => return None,
                    Kind::Block(b) => stack.push(b),
                    Kind::If(c, a) => stack.extend([c, a]),
                    _ => {}
                }
                if op.is(Class::VARIABLE) || op.is(Class::CALL) {
                    return None;
                }
                if op.is(Class::NEVER_TRAPS) {
                    continue;
                }
                let operator = operator_at(env.wasm, op);
                if matches!(operator, Operator::Unreachable | Operator::Return) {
                    continue;
                }
                let (memarg, bytes, stored) = scalar_access(&operator)?;
                let max = env.memory0?;
                // An access past the maximum is one wasmtime compiles to a certain trap.
                if memarg.memory != 0 || memarg.offset + u64::from(bytes) > max {
                    return None;
                }
                accesses += 1;
                temps |= Temps::ACCESS | stored.map_or(0, Temps::of);
            }
        }
        (accesses <= REGISTER_LOOP_ACCESSES).then_some(temps)
    }

    /// The value types a branch to `label` carries.
    fn label_types(&self, types: &ModuleTypes, label: SeqId) -> Vec<ValType> {
        let seq = &self.seqs[label as usize];
        match seq.construct {
            Construct::Entry => {
                function_signature(types, self.function_type)
                    .unwrap_or_default()
                    .1
            }
            Construct::Loop => block_signature(types, seq.ty).0,
            _ => block_signature(types, seq.ty).1,
        }
    }

    /// Plans and writes the instrumented body.
    pub fn rewrite(mut self, env: &Env<'_>) -> Result<Output, Error> {
        let base = self.first_new_local;
        if u64::from(base) + 10 > LOCALS_MAX {
            return Err(Error::Limit(format!(
                "a function has {base} locals: the count needs more than the {LOCALS_MAX} a function may have"
            )));
        }
        self.mark_register_loops(env);
        let mut next = base + if self.variable_ops { 4 } else { 1 };
        let mut temp = |bit: u8| {
            if self.temps & bit == 0 {
                return u32::MAX;
            }
            next += 1;
            next - 1
        };
        let locals = PassLocals {
            count: base,
            scratch: base + 1,
            grow_result: base + 2,
            charged: base + 3,
            addr: temp(Temps::ACCESS),
            size: temp(Temps::ACCESS),
            values: [
                temp(Temps::I32),
                temp(Temps::I64),
                temp(Temps::F32),
                temp(Temps::F64),
            ],
        };
        // The count code makes bodies about half as large again.
        let mut out = Output {
            body: Vec::with_capacity(self.input_bytes * 7 / 4 + 16),
            ..Output::default()
        };
        // The local declarations: the original ones, then the pass's.
        let mut declarations = self.locals.clone();
        declarations.push((1, ValType::I64));
        if self.variable_ops {
            declarations.push((2, ValType::I32));
            declarations.push((1, ValType::I64));
        }
        if self.temps & Temps::ACCESS != 0 {
            declarations.push((1, ValType::I32));
            declarations.push((1, ValType::I64));
        }
        for (bit, ty) in [
            (Temps::I32, ValType::I32),
            (Temps::I64, ValType::I64),
            (Temps::F32, ValType::F32),
            (Temps::F64, ValType::F64),
        ] {
            if self.temps & bit != 0 {
                declarations.push((1, ty));
            }
        }
        (declarations.len() as u32).encode(&mut out.body);
        for &(count, ty) in &declarations {
            count.encode(&mut out.body);
            wasm_encoder::ValType::try_from(ty)
                .map_err(|_| Error::Unsupported(format!("local type {ty}")))?
                .encode(&mut out.body);
        }
        out.stats.basic_blocks = self.basic_blocks;
        let merged = std::mem::take(&mut self.merged);
        let mut pass = Pass {
            f: &mut self,
            env,
            locals,
            fences: 0,
            out: &mut out,
            corrections: Vec::new(),
            consumers: Vec::new(),
            stale: false,
        };
        pass.run()?;
        let Pass {
            mut corrections,
            mut consumers,
            ..
        } = pass;
        corrections.sort_unstable();
        // A load's correction under the offset of each consumer it may have been merged into.
        consumers.sort_unstable();
        for (consumer, load) in merged {
            let (Ok(c), Ok(l)) = (
                consumers.binary_search_by_key(&consumer, |&(at, _)| at),
                corrections.binary_search_by_key(&load, |&(at, _)| at),
            ) else {
                continue;
            };
            out.merged.push((consumers[c].1, corrections[l].1));
        }
        Ok(out)
    }
}

/// Whether an operator's bytes may hold a LEB128 written longer than it needs be: one whose
/// continuation is followed by a last byte of 0 (or by `0x80`, more padding). A minimal
/// signed LEB128 can look like that too (`i32.const 64` is `0xc0 0x00`); encoding those
/// again only costs the time.
fn maybe_padded(bytes: &[u8]) -> bool {
    bytes[1..]
        .windows(2)
        .any(|w| w[0] & 0x80 != 0 && (w[1] == 0 || w[1] == 0x80))
}

/// The per-unit cost of an operator whose work depends on its last operand.
fn variable_cost(costs: &CostTable, op: &Operator<'_>) -> u64 {
    let v = costs.variable();
    u64::from(match op {
        Operator::MemoryCopy { .. } => v.memory_copy_per_byte,
        Operator::MemoryFill { .. } => v.memory_fill_per_byte,
        Operator::MemoryInit { .. } => v.memory_init_per_byte,
        Operator::MemoryGrow { .. } => v.memory_grow_per_page,
        Operator::TableCopy { .. } => v.table_copy_per_element,
        Operator::TableFill { .. } => v.table_fill_per_element,
        Operator::TableInit { .. } => v.table_init_per_element,
        Operator::TableGrow { .. } => v.table_grow_per_element,
        _ => 0,
    })
}

/// The locals the pass adds to a function.
#[derive(Clone, Copy)]
struct PassLocals {
    /// The running count: executed + phi(here).
    count: u32,
    /// The length (or delta) operand of a bulk operation or a grow.
    scratch: u32,
    /// The result of `memory.grow`.
    grow_result: u32,
    /// The count once a bulk operation's per-unit cost is added (checked before it runs).
    charged: u32,
    /// A register loop's access address, while its bounds are checked.
    addr: u32,
    /// Memory 0's size in bytes, in a function with register loops.
    size: u32,
    /// The value a store in a register loop takes, by type (i32, i64, f32, f64), while the
    /// address under it is checked.
    values: [u32; 4],
}

/// See [`Pass::if_traps`].
#[derive(Default)]
struct IfTraps {
    /// The correction of a trap reported at the `if`'s offset.
    entry: Option<u64>,
    fence_prepaid: bool,
    fence_other: bool,
}

/// The facts of one operator the writer needs, copied out of the tree.
#[derive(Clone, Copy)]
struct OpFacts {
    seq: SeqId,
    index: usize,
    at: u32,
    end: u32,
    weight: u64,
    flags: u8,
    kind: Kind,
    never_traps: bool,
    call: bool,
    terminator: bool,
    per_unit: u64,
    grows: bool,
}

struct Pass<'f, 'm> {
    f: &'f mut Function,
    env: &'f Env<'m>,
    locals: PassLocals,
    /// Fences placed in this function so far.
    fences: i32,
    out: &'f mut Output,
    /// (original offset, correction) of every instruction that can trap, ascending.
    corrections: Vec<(u32, u64)>,
    /// (original offset, output offset) of every consumer a load may be merged into.
    consumers: Vec<(u32, u32)>,
    /// Writing a register loop's body: changes of the count stay in the local.
    stale: bool,
}

impl Pass<'_, '_> {
    fn seq(&self, seq: SeqId) -> &Seq {
        &self.f.seqs[seq as usize]
    }

    fn facts(&self, seq: SeqId, index: usize) -> OpFacts {
        let op = &self.f.seqs[seq as usize].ops[index];
        OpFacts {
            seq,
            index,
            at: op.at,
            end: op.end,
            weight: u64::from(op.weight),
            flags: op.flags,
            kind: op.kind,
            never_traps: op.is(Class::NEVER_TRAPS),
            call: op.is(Class::CALL),
            terminator: op.is(Class::TERMINATOR),
            per_unit: if op.is(Class::VARIABLE) {
                variable_cost(self.env.costs, &self.operator(op))
            } else {
                0
            },
            grows: op.is(Class::GROWS),
        }
    }

    fn is_loop(&self, seq: SeqId) -> bool {
        self.f.is_loop(seq)
    }

    fn run(&mut self) -> Result<(), Error> {
        self.out.stats.functions += 1;
        // A branch to the function's label returns.
        self.f.seqs[ENTRY as usize].cont_cannot_fold = true;
        let body = self.plan(ENTRY, 0)?;
        let prepay = body
            .checked_add(self.env.costs.function_entry())
            .filter(|&p| p < OPS_MAX)
            .ok_or_else(|| Error::Limit("a function's static cost overflows".into()))?;
        // Function entry: load the count, prepay the fall-through path, check the budget.
        self.put(Instruction::GlobalGet(self.env.globals.ops));
        self.put(Instruction::I64Const(prepay as i64));
        self.put(Instruction::I64Add);
        self.put(Instruction::LocalTee(self.locals.count));
        self.put(Instruction::GlobalSet(self.env.globals.ops));
        self.out.stats.counters_placed += 1;
        if self.f.has_calls {
            self.budget_check(body, None);
        }
        self.write(ENTRY)?;
        self.put(Instruction::End);
        Ok(())
    }

    fn put(&mut self, instruction: Instruction<'_>) {
        instruction.encode(&mut self.out.body);
    }

    fn position(&self) -> u32 {
        u32::try_from(self.out.body.len()).expect("bodies are smaller than the module limit")
    }

    /// Copies an original operator, at its shortest encoding.
    fn copy(&mut self, op: &OpFacts) {
        let o = &self.f.seqs[op.seq as usize].ops[op.index];
        let bytes = if o.encoded_len > 0 {
            let start = o.encoded_at as usize;
            &self.f.encoded[start..start + usize::from(o.encoded_len)]
        } else {
            &self.env.wasm[op.at as usize..op.end as usize]
        };
        self.out.body.extend_from_slice(bytes);
    }

    /// An operator that is neither a block nor a branch, read again from the input.
    fn operator(&self, op: &Op) -> Operator<'_> {
        operator_at(self.env.wasm, op)
    }

    /// Whether the code after position `from` of `seq` starts with a side effect that is not
    /// a certain trap, so that Cranelift cannot turn a branch there into a conditional trap
    /// carrying the branch's location (a branch with no adjustment on its edge has no store
    /// before it lands).
    ///
    /// A global store or a call qualifies, and so does a memory access unless a constant was
    /// pushed before it (its address could then be known out of bounds), its static offset
    /// reaches past the memory's maximum, or past [`GUARD_BYTES_ASSUMED`] (wasmtime then
    /// checks bounds explicitly). Entering a `block` or a `loop` looks into it; an `if`
    /// qualifies when both its arms do, a `br` when its target's continuation does, a `br_if`
    /// when that and its fall-through do; anything else does not. At the end of the sequence
    /// the answer is `at_end`, that of the sequence's own continuation. Only called from
    /// `plan`, which has already planned every construct after `from`.
    fn cannot_fold(&self, seq: SeqId, from: usize, at_end: bool) -> bool {
        self.cannot_fold_from(seq, from, at_end, false)
    }

    fn cannot_fold_from(&self, seq: SeqId, from: usize, at_end: bool, constant: bool) -> bool {
        // wasmtime traps unconditionally when offset + size is above the memory's maximum, and
        // emits an explicit bounds check (which a constant address could fold) when it is
        // beyond the guard region its default 4 GiB reservation relies on (32 MiB).
        let certainly_out_of_bounds = |memory: u32, offset: u64| {
            let end = offset.saturating_add(16);
            end > GUARD_BYTES_ASSUMED
                || self
                    .env
                    .bounded_memories
                    .iter()
                    .any(|&(id, bytes)| id == memory && end > bytes)
        };
        let mut constant = constant;
        for op in &self.seq(seq).ops[from..] {
            match op.kind {
                // `plan` goes backward, so a construct after `from` knows its continuation.
                Kind::Block(b) | Kind::Loop(b) => {
                    // Entering a loop runs its body (the budget check placed there starts
                    // with a store on the arm that stops).
                    let after = self.seq(b).cont_cannot_fold;
                    return self.cannot_fold_from(b, 0, after, constant);
                }
                Kind::If(c, a) => {
                    let after = self.seq(c).cont_cannot_fold;
                    return [c, a]
                        .iter()
                        .all(|&arm| self.cannot_fold_from(arm, 0, after, constant));
                }
                // A jump lands on its target's continuation (the target encloses this code,
                // so it was planned first); the start of a loop is not known here.
                Kind::Br(t) => return !self.is_loop(t) && self.seq(t).cont_cannot_fold,
                Kind::BrIf(t, _) => {
                    if self.is_loop(t) || !self.seq(t).cont_cannot_fold {
                        return false;
                    }
                    continue;
                }
                Kind::BrTable(..) => return false,
                Kind::Other => {}
            }
            if op.is(Class::GLOBAL_SET | Class::CALL) {
                return true;
            }
            if op.is(Class::CONST) {
                constant = true;
            } else if !op.is(Class::NEVER_TRAPS) {
                return match plain_access(&self.operator(op)) {
                    Some(memarg) => {
                        !constant && !certainly_out_of_bounds(memarg.memory, memarg.offset)
                    }
                    None => false,
                };
            }
        }
        at_end
    }

    /// Whether the straight-line path after position `from` of `seq` (what follows a `br_if`)
    /// reaches a call or `unreachable` before any control flow.
    fn fall_through_is_cold(&self, seq: SeqId, from: usize) -> bool {
        for op in &self.seq(seq).ops[from..] {
            if op.is(Class::CALL | Class::UNREACHABLE) {
                return true;
            }
            if op.is(Class::TERMINATOR) || !matches!(op.kind, Kind::Other) {
                return false;
            }
        }
        false
    }

    /// Whether block `b` is charged where it ends (see [`Pass::plan`]): a `br_table` target
    /// whose body ends with an operator that never falls through.
    fn is_charged_at_end(&self, b: SeqId) -> bool {
        let seq = self.seq(b);
        seq.table_target && seq.ops.last().is_some_and(|op| op.is(Class::TERMINATOR))
    }

    /// phi where a branch to `label` lands.
    fn target_phi(&self, label: SeqId) -> u64 {
        let seq = self.seq(label);
        if seq.construct == Construct::Loop {
            seq.start
        } else {
            seq.cont
        }
    }

    /// Computes phi for every position of `seq`, given phi after its construct; returns phi at
    /// its start.
    fn plan(&mut self, seq: SeqId, cont: u64) -> Result<u64, Error> {
        self.f.seqs[seq as usize].cont = cont;
        let at_end = self.seq(seq).cont_cannot_fold;
        let n = self.seq(seq).ops.len();
        let mut phi = vec![0u64; n + 1];
        phi[n] = cont;
        for index in (0..n).rev() {
            let after = phi[index + 1];
            let op = self.facts(seq, index);
            let rest = match op.kind {
                // A forward `br` continues the prepaid path at its target, like falling out of
                // a block (a branch to a loop cannot: the loop's start is being computed), where
                // the target's code cannot let Cranelift fold the jump into a trap.
                Kind::Br(t) if !self.is_loop(t) && self.seq(t).cont_cannot_fold => {
                    self.target_phi(t)
                }
                // A call ends the prepaid path: the global is exact when the callee starts, and
                // the rest is prepaid again when the call returns. Other terminators end it too.
                _ if op.terminator || op.call => 0,
                // A block that `br_table` targets and whose end is reached only by branches (an
                // interpreter's handler): charge its continuation right after its `end`, once,
                // so that every branch to it lands with phi 0. Its `br_table` then needs no
                // trampoline block (an add, a store and a jump) to adjust the count for it.
                Kind::Block(b) if after != 0 && self.is_charged_at_end(b) => {
                    self.f.seqs[b as usize].cont_cannot_fold =
                        self.cannot_fold(seq, index + 1, at_end);
                    self.f.seqs[b as usize].charged_at_end = after;
                    self.plan(b, 0)?
                }
                // A loop's continuation is not a branch target's (a branch to a loop lands on
                // its start), but that of the sequences its body ends with.
                Kind::Block(b) | Kind::Loop(b) => {
                    self.f.seqs[b as usize].cont_cannot_fold =
                        self.cannot_fold(seq, index + 1, at_end);
                    self.plan(b, after)?
                }
                // A `br_if` whose fall-through runs straight into a call or `unreachable` (a
                // panic, a slow path) is usually taken: pay the adjustment on the fall-through
                // instead, where it needs no `if` around it (see `write`). Outside loops, too:
                // there each edge runs at most once per call, whichever pays, and the plain add
                // after the `br_if` is about 10 bytes where the `if` around an adjusted taken
                // edge is about 15.
                Kind::BrIf(t, _)
                    if !self.is_loop(t)
                        && self.seq(t).cont_cannot_fold
                        && (!self.seq(seq).in_loop
                            || self.fall_through_is_cold(seq, index + 1)) =>
                {
                    self.target_phi(t)
                }
                Kind::If(c, a) => {
                    let cannot_fold = self.cannot_fold(seq, index + 1, at_end);
                    self.f.seqs[c as usize].cont_cannot_fold = cannot_fold;
                    self.f.seqs[a as usize].cont_cannot_fold = cannot_fold;
                    let consequent = self.plan(c, after)?;
                    let alternative = self.plan(a, after)?;
                    // Prepay the empty arm of an `if` without `else`, so the common case needs
                    // no new `else`; otherwise prepay the consequent.
                    if self.seq(a).ops.is_empty() && !self.seq(c).ops.is_empty() {
                        self.f.seqs[c as usize].prepaid_alternative = true;
                        alternative
                    } else {
                        consequent
                    }
                }
                _ => after,
            };
            phi[index] = rest
                .checked_add(op.weight)
                .filter(|&p| p < OPS_MAX)
                .ok_or_else(|| Error::Limit("a function's static cost overflows".into()))?;
        }
        let s = &mut self.f.seqs[seq as usize];
        s.start = phi[0];
        s.phi = phi;
        Ok(s.start)
    }

    /// The correction for the first instruction of `seq`'s straight-line path that is not pure,
    /// if that is one that can trap. When it always traps, Cranelift may turn the loop body into
    /// a branch to a trap and wasmtime then reports the trap at the `loop` itself.
    fn first_trap_in(&self, seq: SeqId) -> Option<u64> {
        let s = self.seq(seq);
        let index = s.ops.iter().position(|op| {
            !op.is(Class::NEVER_TRAPS)
                || matches!(
                    op.kind,
                    Kind::Block(_)
                        | Kind::If(..)
                        | Kind::Br(_)
                        | Kind::BrIf(..)
                        | Kind::BrTable(..)
                )
        })?;
        let op = &s.ops[index];
        match op.kind {
            // Entering a block continues the straight-line path.
            Kind::Block(b) => self.first_trap_in(b),
            // Nothing after a terminator runs: its correction is 0 (as in `write`), whatever
            // the straight-line path past it would weigh.
            _ if op.is(Class::TERMINATOR) => Some(0),
            Kind::Other if !op.is(Class::NEVER_TRAPS | Class::CALL) => Some(s.phi[index + 1]),
            _ => None,
        }
    }

    /// An `if`'s arms: (the prepaid one, the other one).
    fn arms(&self, consequent: SeqId, alternative: SeqId) -> (SeqId, SeqId) {
        if self.seq(consequent).prepaid_alternative {
            (alternative, consequent)
        } else {
            (consequent, alternative)
        }
    }

    /// What a trap reported at an `if` means. When an arm's first instruction with a side
    /// effect always traps, Cranelift can fold the branch into that arm into a conditional
    /// trap, which carries the `if`'s location. The arm that is not prepaid starts with its
    /// count adjustment (a store), so only the prepaid arm can be folded, unless both arms
    /// weigh the same. The `if`'s offset gets that arm's trap correction in the table of
    /// loop-header traps; where that could be confused with the other arm or with a load merged
    /// into the condition, the arm gets a fence instead, so it is never folded.
    fn if_traps(&self, consequent: SeqId, alternative: SeqId, flags: u8) -> IfTraps {
        let (prepaid, other) = self.arms(consequent, alternative);
        let same_weight = self.seq(other).start == self.seq(prepaid).start;
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
        traps.entry = match (in_prepaid, in_other) {
            (None, None) => None,
            (Some(a), None) => Some(a),
            (None, Some(b)) => Some(b),
            (Some(a), Some(b)) => {
                traps.fence_other = a != b;
                Some(a)
            }
        };
        traps
    }

    /// `count += delta; __tally_ops = count`.
    fn adjust(&mut self, delta: i64) {
        if delta == 0 {
            return;
        }
        self.out.stats.counters_placed += 1;
        self.put(Instruction::LocalGet(self.locals.count));
        self.put(Instruction::I64Const(delta));
        self.put(Instruction::I64Add);
        if self.stale {
            self.put(Instruction::LocalSet(self.locals.count));
        } else {
            self.put(Instruction::LocalTee(self.locals.count));
            self.put(Instruction::GlobalSet(self.env.globals.ops));
        }
    }

    /// Adjusts the count by `delta` and stores it, also in a register loop: on an edge that
    /// leaves one.
    fn adjust_and_store(&mut self, delta: i64) {
        if delta == 0 {
            self.sync();
        } else {
            let stale = std::mem::replace(&mut self.stale, false);
            self.adjust(delta);
            self.stale = stale;
        }
    }

    /// Stores the count, which in a register loop the global lags.
    fn sync(&mut self) {
        self.put(Instruction::LocalGet(self.locals.count));
        self.put(Instruction::GlobalSet(self.env.globals.ops));
    }

    /// Memory 0's size in bytes, into its local, for the bounds checks of a register loop.
    fn load_size(&mut self) {
        self.put(Instruction::MemorySize(0));
        self.put(Instruction::I64ExtendI32U);
        self.put(Instruction::I64Const(16));
        self.put(Instruction::I64Shl);
        self.put(Instruction::LocalSet(self.locals.size));
    }

    /// Before a scalar access in a register loop (its operands on the stack): if it is about
    /// to trap, store the exact count including it (`count - after`) and trap the same way,
    /// with a load of the same bytes that has no correction of its own.
    ///
    /// ```text
    /// (local.set value) local.set addr
    /// if (addr as u64 + offset + bytes > size) { ops = count - after; load [addr + offset]; unreachable }
    /// local.get addr (local.get value)
    /// ```
    fn bounds_check(
        &mut self,
        memarg: wasmparser::MemArg,
        bytes: u8,
        stored: Option<ValType>,
        after: u64,
    ) {
        let value = stored.map(|ty| {
            let local = self.locals.values[Temps::of(ty).trailing_zeros() as usize - 1];
            self.put(Instruction::LocalSet(local));
            local
        });
        self.out.stats.bounds_checks_placed += 1;
        let addr = self.locals.addr;
        self.put(Instruction::LocalSet(addr));
        self.put(Instruction::LocalGet(addr));
        self.put(Instruction::I64ExtendI32U);
        self.put(Instruction::I64Const(
            (memarg.offset + u64::from(bytes)) as i64,
        ));
        self.put(Instruction::I64Add);
        self.put(Instruction::LocalGet(self.locals.size));
        self.put(Instruction::I64GtU);
        self.put(Instruction::If(wasm_encoder::BlockType::Empty));
        self.executed(self.locals.count, after);
        self.put(Instruction::GlobalSet(self.env.globals.ops));
        self.put(Instruction::LocalGet(addr));
        let m = wasm_encoder::MemArg {
            offset: memarg.offset,
            align: 0,
            memory_index: 0,
        };
        self.put(match bytes {
            1 => Instruction::I32Load8U(m),
            2 => Instruction::I32Load16U(m),
            4 => Instruction::I32Load(m),
            _ => Instruction::I64Load(m),
        });
        self.put(Instruction::Drop);
        self.put(Instruction::Unreachable);
        self.put(Instruction::Else);
        self.put(Instruction::End);
        self.put(Instruction::LocalGet(addr));
        if let Some(local) = value {
            self.put(Instruction::LocalGet(local));
        }
    }

    /// A store Cranelift can neither merge a load past nor remove: a constant, unique within
    /// the function (so never an idempotent store), to a global of its own.
    fn fence(&mut self) {
        self.out.stats.fences_placed += 1;
        self.fences += 1;
        self.put(Instruction::I32Const(self.fences));
        self.put(Instruction::GlobalSet(self.env.globals.fence));
    }

    /// `local` minus `phi`.
    fn executed(&mut self, local: u32, phi: u64) {
        self.put(Instruction::LocalGet(local));
        if phi != 0 {
            self.put(Instruction::I64Const(phi as i64));
            self.put(Instruction::I64Sub);
        }
    }

    /// Stops the run if the executed count (`count - phi`) is above the budget, or with
    /// `ahead = Some(charged)`, if it would be once `charged - count` (the per-unit cost of a
    /// bulk operation about to run) is added.
    fn budget_check(&mut self, phi: u64, ahead: Option<u32>) {
        self.out.stats.budget_checks_placed += 1;
        // count - phi > budget, with the budget read from its global at each check: a load
        // from the instance that hits the cache, where a local copy of the budget held in a
        // register through the function raised the register pressure of every loop (and was
        // spilled and reloaded in the large ones anyway). Over 5 code layouts of the suite
        // this was 1.092x geomean against 1.113x (docs/benchmarks.md). count >= phi always
        // (phi is prepaid), so the subtraction cannot wrap.
        self.executed(ahead.unwrap_or(self.locals.count), phi);
        self.put(Instruction::GlobalGet(self.env.globals.budget));
        self.put(Instruction::I64GtU);
        self.put(Instruction::If(wasm_encoder::BlockType::Empty));
        self.executed(self.locals.count, phi);
        self.put(Instruction::GlobalSet(self.env.globals.ops));
        self.put(Instruction::I32Const(1));
        self.put(Instruction::GlobalSet(self.env.globals.exhausted));
        self.put(Instruction::Unreachable);
        self.put(Instruction::Else);
        self.put(Instruction::End);
    }

    /// After a `memory.grow` (its result on the stack, its delta in the scratch local): close
    /// the memory-time interval that ended here and start the next one.
    ///
    /// ```text
    /// integral += pages * (now - mark); mark = now; pages += (result != -1) * delta
    /// ```
    /// where `now = count - phi(after)` is the exact count including the `memory.grow`.
    fn memory_integral(&mut self, after: u64) {
        let g = self.env.globals;
        self.put(Instruction::LocalTee(self.locals.grow_result));
        self.put(Instruction::GlobalGet(g.integral));
        self.put(Instruction::GlobalGet(g.pages));
        self.executed(self.locals.count, after);
        self.put(Instruction::GlobalGet(g.mark));
        self.put(Instruction::I64Sub);
        self.put(Instruction::I64Mul);
        self.put(Instruction::I64Add);
        self.put(Instruction::GlobalSet(g.integral));
        self.executed(self.locals.count, after);
        self.put(Instruction::GlobalSet(g.mark));
        self.put(Instruction::GlobalGet(g.pages));
        self.put(Instruction::LocalGet(self.locals.grow_result));
        self.put(Instruction::I32Const(-1));
        self.put(Instruction::I32Ne);
        self.put(Instruction::I64ExtendI32U);
        self.put(Instruction::LocalGet(self.locals.scratch));
        self.put(Instruction::I64ExtendI32U);
        self.put(Instruction::I64Mul);
        self.put(Instruction::I64Add);
        self.put(Instruction::GlobalSet(g.pages));
    }

    /// Writes `opcode` (`block` or `if`) with the block type `params -> results`.
    fn open(&mut self, opcode: u8, signature: &Signature) {
        self.out.body.push(opcode);
        let ty = match (signature.0.as_slice(), signature.1.as_slice()) {
            ([], []) => wasm_encoder::BlockType::Empty,
            _ => match self.env.existing.get(signature) {
                Some(&index) => wasm_encoder::BlockType::FunctionType(index),
                None => {
                    let local = match self.out.signatures.iter().position(|s| s == signature) {
                        Some(i) => i,
                        None => {
                            self.out.signatures.push(signature.clone());
                            self.out.signatures.len() - 1
                        }
                    };
                    let position = self.position();
                    self.out.placeholders.push((position, local as u32));
                    let at = self.out.body.len();
                    self.out.body.resize(at + PLACEHOLDER_BYTES, 0);
                    return;
                }
            },
        };
        ty.encode(&mut self.out.body);
    }

    /// Records where an original instruction went: its prepaid amount, its offset as a
    /// consumer a load may be merged into, and the correction of a trap reported there for a
    /// construct whose first instruction traps.
    fn locate(&mut self, op: &OpFacts, position: u32, prepaid: Option<u64>, header: Option<u64>) {
        if let Some(correction) = prepaid.filter(|&c| c != 0) {
            self.out.entries.push((position, correction));
        }
        if op.flags & Flags::MERGED_CONSUMER != 0 {
            self.consumers.push((op.at, position));
        }
        if let Some(correction) = header {
            self.out.loop_traps.push((position, correction));
        }
    }

    /// Copies an original operator and records where it went.
    fn copy_located(&mut self, op: &OpFacts, prepaid: Option<u64>, header: Option<u64>) {
        let position = self.position();
        self.copy(op);
        self.locate(op, position, prepaid, header);
    }

    /// Writes `seq` (and everything nested in it), keeping the invariant.
    fn write(&mut self, seq: SeqId) -> Result<(), Error> {
        // Nothing reads phi inside `seq` once it is written (branches only need `start`).
        let phi = std::mem::take(&mut self.f.seqs[seq as usize].phi);
        let stale = self.seq(seq).stale;
        self.stale = stale;
        if self.seq(seq).construct == Construct::Loop && self.seq(seq).targeted {
            self.budget_check(phi[0], None);
        }
        for index in 0..self.seq(seq).ops.len() {
            self.stale = stale;
            let op = self.facts(seq, index);
            let after = phi[index + 1];
            // A back-edge `br_if` is charged right before it (see below): that store fences.
            let charged_before = matches!(op.kind, Kind::BrIf(t, _)
                if self.is_loop(t) && self.target_phi(t) != phi[index] - op.weight);
            // In a register loop no access traps where the count is not exact (see
            // `bounds_check`): no fences, no corrections.
            if op.flags & Flags::FENCE_BEFORE != 0 && !charged_before && !stale {
                // A memory access that may have absorbed the load before it: the store keeps
                // Cranelift from merging them (see `merge`).
                self.fence();
            }
            let mut prepaid = None;
            if !op.never_traps && !stale {
                let correction = match op.kind {
                    _ if op.call => 0,
                    Kind::Loop(l) => self.seq(l).start,
                    _ if op.terminator => 0,
                    _ => after,
                };
                // Kept even when 0: a load merged into a consumer is looked up here.
                self.corrections.push((op.at, correction));
                prepaid = Some(correction);
            }
            match op.kind {
                Kind::Block(b) => {
                    self.copy_located(&op, prepaid, None);
                    self.write(b)?;
                    self.put(Instruction::End);
                    self.stale = stale;
                    self.adjust(self.seq(b).charged_at_end as i64);
                }
                Kind::Loop(l) if self.seq(l).register => {
                    self.out.stats.register_loops += 1;
                    if self.f.temps & Temps::ACCESS != 0 {
                        self.load_size();
                    }
                    // Nothing in the body traps before a store of the count.
                    self.copy_located(&op, prepaid, None);
                    self.write(l)?;
                    self.put(Instruction::End);
                    // Falling out of the loop: the global catches up.
                    self.stale = stale;
                    self.sync();
                }
                Kind::Loop(l) => {
                    let header = self.first_trap_in(l);
                    self.copy_located(&op, prepaid, header);
                    self.write(l)?;
                    self.put(Instruction::End);
                }
                Kind::If(c, a) => {
                    let traps = if stale {
                        IfTraps::default()
                    } else {
                        self.if_traps(c, a, op.flags)
                    };
                    self.copy_located(&op, prepaid, traps.entry);
                    let (prepaid_arm, other) = self.arms(c, a);
                    let delta = self.seq(other).start as i64 - self.seq(prepaid_arm).start as i64;
                    for arm in [c, a] {
                        let fenced = if arm == prepaid_arm {
                            traps.fence_prepaid
                        } else {
                            traps.fence_other
                        };
                        // Always with an `else`, empty or not: wasmtime translates an `if`
                        // without one so that Cranelift can fold a trap that follows the `if`
                        // into its branch, reported at the `if`'s offset.
                        self.stale = stale;
                        if arm == a {
                            self.put(Instruction::Else);
                        }
                        if fenced {
                            self.fence();
                        }
                        if arm == other {
                            self.adjust(delta);
                        }
                        self.write(arm)?;
                    }
                    self.put(Instruction::End);
                }
                Kind::Br(t) => {
                    // Nothing when `plan` prepaid through to the target.
                    let delta = self.target_phi(t) as i64 - (phi[index] - op.weight) as i64;
                    if stale && !self.seq(t).stale {
                        self.adjust_and_store(delta);
                    } else {
                        self.adjust(delta);
                    }
                    self.copy_located(&op, prepaid, None);
                }
                Kind::BrIf(t, depth) => {
                    // The count right after the `br_if`, before either edge's adjustment: the
                    // fall-through's phi, or the target's when `plan` made the taken edge free.
                    let x = phi[index] - op.weight;
                    let delta = self.target_phi(t) as i64 - x as i64;
                    // With nothing to adjust on the taken edge, a target whose first side
                    // effect always traps (an access above a memory's maximum) lets Cranelift
                    // fold the branch into a conditional trap reported at the `br_if`, where
                    // the count has the fall-through's path prepaid, not the target's. A fence
                    // on the taken edge keeps the branch a branch (fixture
                    // `regression_trap_folded_into_br_if.wat`).
                    let foldable = !self.is_loop(t) && !self.seq(t).cont_cannot_fold;
                    // Leaving a register loop: the taken edge stores the count.
                    let leaves = stale && !self.seq(t).stale;
                    if delta == 0 && !foldable && !leaves {
                        self.copy_located(&op, prepaid, None);
                        self.adjust(after as i64 - x as i64);
                    } else if self.is_loop(t) {
                        // A back-edge: charge the iteration before the branch and take it back
                        // on the exit, which runs once per loop rather than once per iteration;
                        // the loop then closes with one taken branch, not an `if` and a jump.
                        // The charge is a store between the condition and the branch, so it
                        // also serves as the fence a loaded condition would need.
                        if leaves {
                            self.adjust_and_store(delta);
                        } else {
                            self.adjust(delta);
                        }
                        self.copy_located(&op, prepaid, None);
                        // The exit undoes the charge and makes the fall-through's adjustment
                        // in one add (nothing between them can trap).
                        self.adjust(after as i64 - x as i64 - delta);
                    } else {
                        // br_if L  =>  if (param t*) (result t*) { count += delta; br L },
                        // or { fence; br L } when the taken edge is free.
                        let carried = self.f.label_types(self.env.types, t);
                        let position = self.position();
                        self.open(0x04, &(carried.clone(), carried));
                        self.locate(&op, position, prepaid, None);
                        if leaves {
                            self.adjust_and_store(delta);
                        } else if delta == 0 {
                            self.fence();
                        } else {
                            self.adjust(delta);
                        }
                        self.put(Instruction::Br(depth + 1));
                        // The empty `else` keeps a fall-through that always traps from being
                        // folded into the branch (fixture `regression_trap_folded_into_br_if`).
                        self.put(Instruction::Else);
                        self.put(Instruction::End);
                        // Only a free taken edge leaves the fall-through an adjustment.
                        self.adjust(after as i64 - x as i64);
                    }
                }
                Kind::BrTable(start, len) => {
                    let targets = self.f.tables[start as usize..(start + len) as usize].to_vec();
                    // (target, depth, phi there) per distinct target, in order of appearance.
                    let mut groups: Vec<(SeqId, u32, u64)> = Vec::new();
                    // A table may have a million entries over as many targets as labels.
                    let mut group_index: HashMap<SeqId, u32> = HashMap::new();
                    let group_of: Vec<u32> = targets
                        .iter()
                        .map(|&(label, depth)| {
                            *group_index.entry(label).or_insert_with(|| {
                                groups.push((label, depth, self.target_phi(label)));
                                groups.len() as u32 - 1
                            })
                        })
                        .collect();
                    let first = groups[0].2;
                    if groups.iter().all(|g| g.2 == first) {
                        // phi after a br_table is 0: the adjustment is the target's phi.
                        self.adjust(first as i64);
                        self.copy_located(&op, prepaid, None);
                    } else {
                        self.br_table_trampolines(&op, prepaid, &groups, &group_of);
                    }
                }
                Kind::Other if op.call => {
                    // The path ended at the call, so the global is exact for the callee; on
                    // return, prepay the path after the call.
                    self.copy_located(&op, prepaid, None);
                    self.out.stats.counters_placed += 1;
                    self.put(Instruction::GlobalGet(self.env.globals.ops));
                    if after != 0 {
                        self.put(Instruction::I64Const(after as i64));
                        self.put(Instruction::I64Add);
                        self.put(Instruction::LocalTee(self.locals.count));
                        self.put(Instruction::GlobalSet(self.env.globals.ops));
                    } else {
                        self.put(Instruction::LocalSet(self.locals.count));
                    }
                }
                Kind::Other if op.grows || op.per_unit > 0 => {
                    self.put(Instruction::LocalTee(self.locals.scratch));
                    if op.per_unit == 0 {
                        self.copy_located(&op, prepaid, None);
                        self.memory_integral(after);
                    } else {
                        // The count with the per-unit cost added, computed before the
                        // operation: one operation must not take the count far past the
                        // budget, so the run stops before it if this is above (the operation's
                        // own weight is charged, as when it traps). length < 2^32 and
                        // per_unit <= WEIGHT_MAX: no wrap.
                        let charged = self.locals.charged;
                        self.out.stats.counters_placed += 1;
                        self.put(Instruction::LocalGet(self.locals.count));
                        self.put(Instruction::LocalGet(self.locals.scratch));
                        self.put(Instruction::I64ExtendI32U);
                        self.put(Instruction::I64Const(op.per_unit as i64));
                        self.put(Instruction::I64Mul);
                        self.put(Instruction::I64Add);
                        self.put(Instruction::LocalSet(charged));
                        self.budget_check(after, Some(charged));
                        self.copy_located(&op, prepaid, None);
                        if op.grows {
                            self.memory_integral(after);
                        }
                        // Reached only if the operation did not trap.
                        self.put(Instruction::LocalGet(charged));
                        self.put(Instruction::LocalTee(self.locals.count));
                        self.put(Instruction::GlobalSet(self.env.globals.ops));
                    }
                }
                Kind::Other if stale && !op.never_traps => {
                    let operator = self.operator(&self.f.seqs[seq as usize].ops[index]);
                    match scalar_access(&operator) {
                        Some((memarg, bytes, stored)) => {
                            self.bounds_check(memarg, bytes, stored, after);
                        }
                        // `unreachable` and `return`, the only others a register loop has.
                        None => self.sync(),
                    }
                    self.copy_located(&op, prepaid, None);
                }
                Kind::Other => self.copy_located(&op, prepaid, None),
            }
            if op.flags & Flags::FENCE_AFTER != 0 && !stale {
                self.fence();
            }
        }
        Ok(())
    }

    /// A `br_table` whose targets need different adjustments: dispatch to one block per
    /// target that needs an adjustment, adjust there, then branch on.
    ///
    /// ```text
    /// block $g_{k-1} (param t* i32) (result t*)
    ///   ...
    ///     block $g_0 (param t* i32) (result t*)
    ///       br_table $g_.. $g_..        ;; the original operands
    ///     end
    ///     count += phi(target_0); br target_0
    ///   ...
    /// end
    /// count += phi(target_{k-1}); br target_{k-1}
    /// ```
    fn br_table_trampolines(
        &mut self,
        op: &OpFacts,
        prepaid: Option<u64>,
        groups: &[(SeqId, u32, u64)],
        group_of: &[u32],
    ) {
        let carried = self.f.label_types(self.env.types, groups[0].0);
        let mut params = carried.clone();
        params.push(ValType::I32);
        let signature = (params, carried);
        // A target with phi 0 needs no adjustment: the table names it past the trampolines.
        let adjusted: Vec<&(SeqId, u32, u64)> = groups.iter().filter(|g| g.2 != 0).collect();
        let k = adjusted.len() as u32;
        let mut next = 0;
        let entry: Vec<u32> = groups
            .iter()
            .map(|&(_, depth, phi)| {
                if phi == 0 {
                    depth + k
                } else {
                    next += 1;
                    next - 1
                }
            })
            .collect();
        for _ in 0..k {
            self.open(0x02, &signature);
        }
        let entries: Vec<u32> = group_of.iter().map(|&g| entry[g as usize]).collect();
        let (default, table) = entries.split_last().expect("a br_table has a default");
        let position = self.position();
        self.put(Instruction::BrTable(table.into(), *default));
        self.locate(op, position, prepaid, None);
        for (index, &&(_, depth, phi)) in adjusted.iter().enumerate() {
            self.put(Instruction::End);
            self.adjust(phi as i64);
            self.put(Instruction::Br(depth + (k - 1 - index as u32)));
        }
    }
}

//! Which loads Cranelift may merge into the instruction that consumes their value.
//!
//! On x86-64, Cranelift lowers a load whose only use is the next instruction of the same block
//! (no load, store, call, trap or block boundary in between) as a memory operand of that
//! instruction: `i32.load; i32.add` becomes one `add reg, [mem]`. If the load is out of bounds,
//! the trap is then reported at the *consumer's* code offset. The count at that trap must still
//! stop at the load, so the meter map needs to know, for a consumer, which load it may have
//! absorbed. Three cases:
//!
//! * **The consumer cannot trap out of bounds itself** (arithmetic, compares, `select`, a
//!   branch condition, a call index, ...): an out-of-bounds trap at its offset can only be the
//!   merged load's, so the meter map gets a second entry for the consumer, used only for
//!   out-of-bounds traps, that carries the load's correction ([`Analysis::merged`]).
//! * **The consumer accesses memory too** (a load whose address is the loaded value or a
//!   computation over it, a store of `op(load)` that becomes a read-modify-write, a bulk
//!   operation): the offset alone cannot say which of the two trapped, so the pass puts a
//!   fence right before the consumer ([`Analysis::fences`]): a store of a constant to a
//!   private global. A store is a side effect, after which Cranelift never merges the load.
//! * **A computation over the load is demanded by an instruction that ends the window** (a
//!   branch, a call, a global write, the end of a block carrying the value): the optimizer may
//!   have rewritten that computation into a new instruction without a code offset, and a load
//!   folded into it traps with no offset at all. A fence before the demanding instruction (or
//!   after the last instruction of the block, [`Analysis::fences_after`]) keeps the load out.
//!
//! The analysis follows values through the operand stack and locals and is conservative in
//! the safe direction: it only forgets a load after something that certainly ends Cranelift's
//! merge window (a memory access, a call, a global or table write, a branch, a block
//! boundary), so every load that can be merged is found; some that cannot are found too, which
//! costs a harmless entry or fence.

use std::collections::HashSet;

use wasmparser::{BlockType, FrameKind, FuncType, Operator, SubType};

use crate::Error;

/// wasmparser's limit on the locals of a function (parameters included).
const LOCALS_MAX: usize = 50_000;

/// Where a value on the operand stack (or in a local) came from.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Source {
    /// Nothing a consumer could merge.
    Other,
    /// The result of the load at `offset`, loaded in window `window`.
    Load { offset: u32, window: u32 },
    /// A pure computation over the result of that load (a read-modify-write candidate).
    Derived { offset: u32, window: u32 },
}

struct Frame {
    /// Operand stack height below the frame's parameters.
    height: usize,
    ty: BlockType,
    kind: FrameKind,
}

/// The module-level facts the analysis needs: types and the type of every function.
#[derive(Default)]
pub(crate) struct ModuleTypes {
    pub types: Vec<SubType>,
    pub function_types: Vec<u32>,
}

/// What the analysis found in a module.
#[derive(Default)]
pub(crate) struct Analysis {
    /// Original offsets of instructions that need a fence right before them.
    pub fences: HashSet<u32>,
    /// Original offsets of instructions that need a fence right after them (the last
    /// instruction of a block that leaves a computed value).
    pub fences_after: HashSet<u32>,
    /// (consumer offset, load offset): an out-of-bounds trap reported at the consumer is the
    /// load's.
    pub merged: Vec<(u32, u32)>,
}

/// The analysis of one function body, fed one operator at a time.
pub(crate) struct Body<'a> {
    module: &'a ModuleTypes,
    stack: Vec<Source>,
    frames: Vec<Frame>,
    /// By local index, grown on demand (no valid module has more than [`LOCALS_MAX`]).
    locals: Vec<Source>,
    /// Incremented after everything that ends Cranelift's merge window.
    window: u32,
    /// The offset of the previous operator.
    previous: Option<u32>,
    unreachable_depth: Option<usize>,
}

struct Arity<'a> {
    module: &'a ModuleTypes,
    frames: &'a [Frame],
}

impl wasmparser::ModuleArity for Arity<'_> {
    fn sub_type_at(&self, type_idx: u32) -> Option<&SubType> {
        self.module.types.get(type_idx as usize)
    }
    fn tag_type_arity(&self, _: u32) -> Option<(u32, u32)> {
        None
    }
    fn type_index_of_function(&self, function_idx: u32) -> Option<u32> {
        self.module
            .function_types
            .get(function_idx as usize)
            .copied()
    }
    fn func_type_of_cont_type(&self, _: &wasmparser::ContType) -> Option<&FuncType> {
        None
    }
    fn sub_type_of_ref_type(&self, _: &wasmparser::RefType) -> Option<&SubType> {
        None
    }
    fn control_stack_height(&self) -> u32 {
        self.frames.len() as u32
    }
    fn label_block(&self, depth: u32) -> Option<(BlockType, FrameKind)> {
        let index = self.frames.len().checked_sub(1 + depth as usize)?;
        let frame = &self.frames[index];
        Some((frame.ty, frame.kind))
    }
}

/// Whether the operator accesses linear memory, so it can trap out of bounds itself. For
/// those with a memory argument, the address is the first operand.
fn accesses_memory(op: &Operator<'_>) -> (bool, bool) {
    use Operator::*;
    match op {
        MemoryFill { .. } | MemoryCopy { .. } | MemoryInit { .. } => (true, false),
        _ => {
            let has_memarg = crate::cost::has_memarg(op);
            (has_memarg, has_memarg)
        }
    }
}

/// Whether x86-64 has a read-modify-write form that a store of `op(load)` could become: only
/// integer ALU operations on memory (`add [m], r`), so never for float or vector stores.
fn has_read_modify_write(store: &Operator<'_>) -> bool {
    use Operator::*;
    !matches!(
        store,
        F32Store { .. }
            | F64Store { .. }
            | V128Store { .. }
            | V128Store8Lane { .. }
            | V128Store16Lane { .. }
            | V128Store32Lane { .. }
            | V128Store64Lane { .. }
    )
}

/// A load whose result Cranelift may merge into the instruction that consumes it.
///
/// The scalar integer loads that extend a narrower value (`i32.load8_u`, `i64.load32_s`, ...)
/// never are: wasmtime 48 translates them to Cranelift's extending loads (`uload8`, `sload32`,
/// ...), which x86-64 lowers on their own (`movzx`/`movsx` from memory); only a plain `load`
/// becomes a memory operand of its consumer (`is_mergeable_load` in cranelift-codegen 0.135's
/// x64 lowering). So an out-of-bounds trap of one is always reported at its own offset, and a
/// value loaded by one needs no fence and no second meter-map entry. Byte and halfword loads are
/// what parsers, string code and interpreters run on (a fence each cost memgrow's and memcmp's
/// loops a store per iteration). Atomic and vector loads are kept, conservatively.
fn is_mergeable_load(op: &Operator<'_>, pops: u32, pushes: u32) -> bool {
    use Operator::*;
    let extending = matches!(
        op,
        I32Load8S { .. }
            | I32Load8U { .. }
            | I32Load16S { .. }
            | I32Load16U { .. }
            | I64Load8S { .. }
            | I64Load8U { .. }
            | I64Load16S { .. }
            | I64Load16U { .. }
            | I64Load32S { .. }
            | I64Load32U { .. }
    );
    crate::cost::has_memarg(op) && pushes == 1 && pops == 1 && !extending
}

/// Whether the operator certainly ends Cranelift's merge window (a side effect or a block
/// boundary). Operators left out only make the analysis more conservative.
fn ends_window(op: &Operator<'_>) -> bool {
    use Operator::*;
    matches!(
        op,
        Call { .. }
            | CallIndirect { .. }
            | CallRef { .. }
            | ReturnCall { .. }
            | ReturnCallIndirect { .. }
            | ReturnCallRef { .. }
            | GlobalSet { .. }
            | MemoryGrow { .. }
            | MemoryFill { .. }
            | MemoryCopy { .. }
            | MemoryInit { .. }
            | TableGet { .. }
            | TableSet { .. }
            | TableGrow { .. }
            | TableFill { .. }
            | TableCopy { .. }
            | TableInit { .. }
            | Loop { .. }
            | If { .. }
            | Else
            | End
            | Br { .. }
            | BrIf { .. }
            | BrTable { .. }
            | Return
            | Unreachable
    ) || crate::cost::has_memarg(op)
}

impl<'a> Body<'a> {
    pub fn new(module: &'a ModuleTypes, function_type: u32) -> Body<'a> {
        Body {
            module,
            stack: Vec::new(),
            frames: vec![Frame {
                height: 0,
                ty: BlockType::FuncType(function_type),
                kind: FrameKind::Block,
            }],
            locals: Vec::new(),
            window: 0,
            previous: None,
            unreachable_depth: None,
        }
    }

    /// Remembers where local `index` got its value. An index beyond [`LOCALS_MAX`] is
    /// invalid (the parse rejects the module), so it is not worth memory here.
    fn set_local(&mut self, index: u32, source: Source) {
        let index = index as usize;
        if index >= LOCALS_MAX {
            return;
        }
        if index >= self.locals.len() {
            self.locals.resize(index + 1, Source::Other);
        }
        self.locals[index] = source;
    }

    fn pop(&mut self) -> Source {
        let floor = self.frames.last().map_or(0, |f| f.height);
        if self.stack.len() > floor {
            self.stack.pop().unwrap_or(Source::Other)
        } else {
            Source::Other // polymorphic stack of unreachable code
        }
    }

    fn current_load(&self, source: Source) -> Option<(u32, bool)> {
        match source {
            Source::Load { offset, window } if window == self.window => Some((offset, true)),
            Source::Derived { offset, window } if window == self.window => Some((offset, false)),
            _ => None,
        }
    }

    fn arity(&self, op: &Operator<'_>) -> Result<(u32, u32), Error> {
        op.operator_arity(&Arity {
            module: self.module,
            frames: &self.frames,
        })
        .ok_or_else(|| Error::Unsupported(crate::operator_name(op).into()))
    }

    fn block_arity(&self, ty: BlockType) -> Result<(usize, usize), Error> {
        use wasmparser::ModuleArity;
        let arity = Arity {
            module: self.module,
            frames: &self.frames,
        };
        let (params, results) = arity
            .block_type_arity(ty)
            .ok_or_else(|| Error::Invalid("a block has an unknown type".into()))?;
        Ok((params as usize, results as usize))
    }

    /// Feeds the operator at `offset`.
    pub fn operator(
        &mut self,
        offset: u32,
        op: &Operator<'_>,
        out: &mut Analysis,
    ) -> Result<(), Error> {
        let result = self.step(offset, op, out);
        self.previous = Some(offset);
        result
    }

    fn step(&mut self, offset: u32, op: &Operator<'_>, out: &mut Analysis) -> Result<(), Error> {
        if let Some(depth) = self.unreachable_depth {
            // Dead code after a branch: only the structure matters.
            match op {
                Operator::Block { .. } | Operator::Loop { .. } | Operator::If { .. } => {
                    self.unreachable_depth = Some(depth + 1);
                    return Ok(());
                }
                Operator::Else if depth == 0 => {
                    self.unreachable_depth = None;
                }
                Operator::End if depth == 0 => {
                    self.unreachable_depth = None;
                }
                Operator::End => {
                    self.unreachable_depth = Some(depth - 1);
                    return Ok(());
                }
                _ => return Ok(()),
            }
        }
        match *op {
            Operator::LocalGet { local_index } => {
                let source = self
                    .locals
                    .get(local_index as usize)
                    .copied()
                    .unwrap_or(Source::Other);
                self.stack.push(source);
                return Ok(());
            }
            Operator::LocalSet { local_index } => {
                let source = self.pop();
                self.set_local(local_index, source);
                return Ok(());
            }
            Operator::LocalTee { local_index } => {
                let source = self.pop();
                self.set_local(local_index, source);
                self.stack.push(source);
                return Ok(());
            }
            Operator::Block { blockty } | Operator::Loop { blockty } => {
                let (params, _) = self.block_arity(blockty)?;
                let height = self.stack.len().saturating_sub(params);
                let kind = if matches!(op, Operator::Loop { .. }) {
                    self.window += 1;
                    FrameKind::Loop
                } else {
                    FrameKind::Block
                };
                self.frames.push(Frame {
                    height,
                    ty: blockty,
                    kind,
                });
                return Ok(());
            }
            Operator::If { blockty } => {
                let condition = self.pop();
                self.consume(offset, op, &[condition], out);
                self.window += 1;
                let (params, _) = self.block_arity(blockty)?;
                let height = self.stack.len().saturating_sub(params);
                self.frames.push(Frame {
                    height,
                    ty: blockty,
                    kind: FrameKind::If,
                });
                return Ok(());
            }
            Operator::Else => {
                self.fence_carried(out);
                self.window += 1;
                let (params, _) =
                    self.block_arity(self.frames.last().map_or(BlockType::Empty, |f| f.ty))?;
                if let Some(frame) = self.frames.last_mut() {
                    frame.kind = FrameKind::Else;
                    self.stack.truncate(frame.height);
                }
                self.stack
                    .extend(std::iter::repeat_n(Source::Other, params));
                return Ok(());
            }
            Operator::End => {
                self.fence_carried(out);
                self.window += 1;
                if let Some(frame) = self.frames.pop() {
                    let (_, results) = self.block_arity(frame.ty)?;
                    self.stack.truncate(frame.height);
                    self.stack
                        .extend(std::iter::repeat_n(Source::Other, results));
                }
                return Ok(());
            }
            _ => {}
        }

        let (pops, pushes) = self.arity(op)?;
        let mut operands: Vec<Source> = (0..pops).map(|_| self.pop()).collect();
        operands.reverse();
        let found = self.consume(offset, op, &operands, out);
        let load = is_mergeable_load(op, pops, pushes);
        let ends = ends_window(op);
        if ends {
            self.window += 1;
        }
        let result = if load {
            Source::Load {
                offset,
                window: self.window,
            }
        } else if ends {
            Source::Other
        } else {
            match found {
                Some(offset) => Source::Derived {
                    offset,
                    window: self.window,
                },
                None => Source::Other,
            }
        };
        self.stack
            .extend(std::iter::repeat_n(result, pushes as usize));
        if matches!(
            op,
            Operator::Br { .. }
                | Operator::BrTable { .. }
                | Operator::Return
                | Operator::Unreachable
                | Operator::ReturnCall { .. }
                | Operator::ReturnCallIndirect { .. }
                | Operator::ReturnCallRef { .. }
        ) {
            if let Some(frame) = self.frames.last() {
                self.stack.truncate(frame.height);
            }
            self.unreachable_depth = Some(0);
        }
        Ok(())
    }

    /// At the end of a block or arm, the values it leaves are arguments of a jump: a
    /// computation over a load among them is demanded there, so it gets a fence after the last
    /// instruction (as before any other instruction that ends the window).
    fn fence_carried(&mut self, out: &mut Analysis) {
        let height = self.frames.last().map_or(0, |f| f.height);
        let carried = self.stack.get(height..).unwrap_or(&[]);
        let computed = carried
            .iter()
            .any(|&source| matches!(self.current_load(source), Some((_, false))));
        if let (true, Some(previous)) = (computed, self.previous) {
            out.fences_after.insert(previous);
        }
    }

    /// Records what consuming `operands` at `offset` means; returns the load they carry.
    fn consume(
        &mut self,
        offset: u32,
        op: &Operator<'_>,
        operands: &[Source],
        out: &mut Analysis,
    ) -> Option<u32> {
        let mut found = None;
        let mut fence = false;
        let (memory, address_first) = accesses_memory(op);
        let ends = ends_window(op);
        for (index, &source) in operands.iter().enumerate() {
            let Some((load, direct)) = self.current_load(source) else {
                continue;
            };
            found = Some(load);
            if memory {
                // A loaded or computed address can be folded into the access; so can a stored
                // value computed from a load (a read-modify-write), but not a loaded value
                // stored as is, nor a float or vector value (x86-64 has no read-modify-write
                // form for them).
                let is_address = !address_first || index == 0;
                if is_address || (!direct && has_read_modify_write(op)) {
                    fence = true;
                }
            } else if ends && !direct {
                // A computation over the load that this instruction demands may be one the
                // optimizer rewrote into a new instruction without a code offset; if that
                // absorbs the load, its trap has no offset at all.
                fence = true;
            }
        }
        if fence {
            out.fences.insert(offset);
        }
        if let (Some(load), false) = (found, memory) {
            out.merged.push((offset, load));
        }
        found
    }
}

#[cfg(test)]
mod tests {
    use crate::{CostTable, Options, instrument};

    fn stats(wat: &str) -> crate::Stats {
        let wasm = wat::parse_str(wat).unwrap();
        let costs = CostTable::preset("wasmtime-fuel").unwrap();
        instrument(&wasm, &costs, &Options::default())
            .unwrap()
            .stats
    }

    #[test]
    fn a_load_whose_address_is_a_load_is_fenced() {
        let s = stats(
            "(module (memory 1) (func (export \"f\") (result i32) i32.const 65536 i32.load i32.load))",
        );
        assert_eq!(s.fences_placed, 1);
    }

    #[test]
    fn only_an_integer_read_modify_write_is_fenced() {
        let rmw = |ty: &str| {
            stats(&format!(
                "(module (memory 1) (func (export \"f\") (param i32)
                   local.get 0 local.get 0 {ty}.load {ty}.const 1 {ty}.add {ty}.store))"
            ))
            .fences_placed
        };
        // `add [m], r` exists for integers: the load could be folded into the store.
        assert_eq!(rmw("i32"), 1);
        assert_eq!(rmw("i64"), 1);
        // Not for floats: the load can only be folded into the add, whose offset has an entry.
        assert_eq!(rmw("f32"), 0);
        assert_eq!(rmw("f64"), 0);
    }
}

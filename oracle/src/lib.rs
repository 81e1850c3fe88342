//! tally-oracle: a naive, obviously-correct metering instrumenter, used as a test oracle.
//!
//! [`instrument_naive`] implements exactly the metering semantics of `tally-instrument` (see that
//! crate's docs) in the most direct way possible, so that the optimized instrumenter can be
//! checked against it:
//!
//! * Before **every** operator whose weight is not zero it inserts
//!   `global.get $ops; i64.const w; i64.add; global.set $ops`. The counter is therefore exact at
//!   every instruction boundary, also after a trap: a trapping instruction was charged just before
//!   it ran, and nothing after it was.
//! * At the top of every function body it charges the cost table's function-entry weight.
//! * Bulk operations (`memory.copy/fill/init`, `table.copy/fill/init`) and `memory.grow` /
//!   `table.grow` save their length (or delta) operand in a scratch local with `local.tee` and,
//!   after the operator *completed*, add `length × per-unit cost`. A bulk operation that traps
//!   never reaches that addition. Before the operator (its own weight already charged), if
//!   `ops + length × per-unit cost` is above the budget, the run stops there like at a budget
//!   check: one operation cannot take the count far past the budget.
//! * Budget checks, `if (ops as u64) > (budget as u64) { exhausted = 1; unreachable }`, sit at the
//!   start of the body of every `loop` that some `br`/`br_if`/`br_table` of the same function
//!   targets, and at the entry (after the entry charge) of every function that contains a call.
//! * Three globals are appended after all existing globals (so existing indices do not move) and
//!   exported as `__tally_ops`, `__tally_budget` and `__tally_exhausted`.
//!
//! Speed does not matter here; every piece is meant to be checkable by reading it. It shares no
//! code with `tally-instrument` except the [`CostTable`] lookup.

#![deny(missing_docs)]

use anyhow::{Context, Result, anyhow, bail};
use tally_instrument::{BUDGET_GLOBAL, CostTable, EXHAUSTED_GLOBAL, OPS_GLOBAL};
use wasm_encoder::reencode::{Error as ReencodeError, Reencode, utils};
use wasm_encoder::{
    CodeSection, ConstExpr, ExportKind, ExportSection, Function, GlobalSection, GlobalType,
    Instruction, Module, SectionId, ValType,
};
use wasmparser::{CompositeInnerType, Operator, Parser, Payload, TypeRef, Validator};

/// The names the instrumentation adds; a module that already uses one is rejected.
pub const RESERVED_NAMES: [&str; 3] = [OPS_GLOBAL, BUDGET_GLOBAL, EXHAUSTED_GLOBAL];

/// Instruments `wasm` naively: a counter update before every operator with a non-zero weight.
///
/// `initial_budget` is the value of `__tally_budget` at instantiation.
pub fn instrument_naive(wasm: &[u8], costs: &CostTable, initial_budget: u64) -> Result<Vec<u8>> {
    Validator::new()
        .validate_all(wasm)
        .context("invalid module")?;
    let info = ModuleInfo::scan(wasm)?;
    let first_new_global = info.globals;
    let mut naive = Naive {
        costs,
        initial_budget,
        info,
        ops_global: first_new_global,
        budget_global: first_new_global + 1,
        exhausted_global: first_new_global + 2,
        next_defined_function: 0,
        globals_added: false,
        exports_added: false,
    };
    let mut module = Module::new();
    naive
        .parse_core_module(&mut module, Parser::new(0), wasm)
        .map_err(|e| anyhow!("{e}"))?;
    assert!(naive.globals_added && naive.exports_added);
    let out = module.finish();
    Validator::new()
        .validate_all(&out)
        .context("the naive instrumenter produced an invalid module (a bug in the oracle)")?;
    Ok(out)
}

/// What the rewrite needs to know about the module before it starts.
#[derive(Default)]
struct ModuleInfo {
    /// Parameter count of every type index (0 for types that are not function types).
    type_param_counts: Vec<u32>,
    /// The type index of every defined (not imported) function, in order.
    defined_function_types: Vec<u32>,
    /// Number of globals, imported and defined.
    globals: u32,
}

impl ModuleInfo {
    fn scan(wasm: &[u8]) -> Result<ModuleInfo> {
        let mut info = ModuleInfo::default();
        let reserved = |name: &str| -> Result<()> {
            if RESERVED_NAMES.contains(&name) {
                bail!("the module already uses the reserved name `{name}`");
            }
            Ok(())
        };
        for payload in Parser::new(0).parse_all(wasm) {
            match payload? {
                Payload::TypeSection(section) => {
                    for group in section {
                        for sub_type in group?.into_types() {
                            let params = match &sub_type.composite_type.inner {
                                CompositeInnerType::Func(f) => f.params().len() as u32,
                                _ => 0,
                            };
                            info.type_param_counts.push(params);
                        }
                    }
                }
                Payload::ImportSection(section) => {
                    for import in section.into_imports() {
                        let import = import?;
                        reserved(import.name)?;
                        match import.ty {
                            TypeRef::Global(_) => info.globals += 1,
                            TypeRef::Memory(m) if m.memory64 => bail!("memory64 is not supported"),
                            TypeRef::Table(t) if t.table64 => bail!("table64 is not supported"),
                            _ => {}
                        }
                    }
                }
                Payload::FunctionSection(section) => {
                    for type_index in section {
                        info.defined_function_types.push(type_index?);
                    }
                }
                Payload::GlobalSection(section) => info.globals += section.count(),
                Payload::MemorySection(section) => {
                    for memory in section {
                        if memory?.memory64 {
                            bail!("memory64 is not supported");
                        }
                    }
                }
                Payload::TableSection(section) => {
                    for table in section {
                        if table?.ty.table64 {
                            bail!("table64 is not supported");
                        }
                    }
                }
                Payload::ExportSection(section) => {
                    for export in section {
                        reserved(export?.name)?;
                    }
                }
                _ => {}
            }
        }
        Ok(info)
    }
}

/// What a pre-scan of one function body found.
struct BodyScan {
    /// For each `loop` in the body, in order: whether a branch targets it.
    loop_is_branch_target: Vec<bool>,
    /// Whether the body contains a call of any kind (so recursion must be budget-checked).
    has_calls: bool,
}

/// Walks the body with a control stack and marks every loop some branch targets.
fn scan_body(operators: &[Operator<'_>]) -> Result<BodyScan> {
    /// A control frame: `Some(i)` for the i-th loop of the body, `None` for anything else.
    type Frame = Option<usize>;
    // The function body itself is the outermost frame (a branch to it returns).
    let mut stack: Vec<Frame> = vec![None];
    let mut scan = BodyScan {
        loop_is_branch_target: Vec::new(),
        has_calls: false,
    };
    let mark = |stack: &[Frame], scan: &mut BodyScan, depth: u32| {
        let frame = stack[stack.len() - 1 - depth as usize];
        if let Some(loop_number) = frame {
            scan.loop_is_branch_target[loop_number] = true;
        }
    };
    for op in operators {
        match op {
            Operator::Block { .. } | Operator::If { .. } => stack.push(None),
            Operator::Loop { .. } => {
                stack.push(Some(scan.loop_is_branch_target.len()));
                scan.loop_is_branch_target.push(false);
            }
            Operator::End => {
                stack.pop();
            }
            Operator::Br { relative_depth } | Operator::BrIf { relative_depth } => {
                mark(&stack, &mut scan, *relative_depth);
            }
            Operator::BrTable { targets } => {
                for target in targets.targets() {
                    mark(&stack, &mut scan, target?);
                }
                mark(&stack, &mut scan, targets.default());
            }
            Operator::Call { .. }
            | Operator::CallIndirect { .. }
            | Operator::CallRef { .. }
            | Operator::ReturnCall { .. }
            | Operator::ReturnCallIndirect { .. }
            | Operator::ReturnCallRef { .. } => scan.has_calls = true,
            // Operators that branch or unwind in ways this oracle does not model.
            Operator::BrOnNull { .. }
            | Operator::BrOnNonNull { .. }
            | Operator::BrOnCast { .. }
            | Operator::BrOnCastFail { .. }
            | Operator::Try { .. }
            | Operator::TryTable { .. }
            | Operator::Catch { .. }
            | Operator::CatchAll
            | Operator::Delegate { .. }
            | Operator::Rethrow { .. }
            | Operator::Throw { .. }
            | Operator::ThrowRef
            | Operator::Resume { .. }
            | Operator::ResumeThrow { .. }
            | Operator::Switch { .. }
            | Operator::Suspend { .. } => {
                bail!("the naive oracle does not support {op:?}")
            }
            _ => {}
        }
    }
    assert!(stack.is_empty(), "a validated body closes every frame");
    Ok(scan)
}

/// The re-encoder: copies the module verbatim except for function bodies, globals and exports.
struct Naive<'a> {
    costs: &'a CostTable,
    initial_budget: u64,
    info: ModuleInfo,
    ops_global: u32,
    budget_global: u32,
    exhausted_global: u32,
    next_defined_function: usize,
    globals_added: bool,
    exports_added: bool,
}

impl Naive<'_> {
    /// `ops += weight` (nothing for weight 0).
    fn charge(&self, f: &mut Function, weight: u64) {
        if weight == 0 {
            return;
        }
        f.instruction(&Instruction::GlobalGet(self.ops_global));
        f.instruction(&Instruction::I64Const(weight as i64));
        f.instruction(&Instruction::I64Add);
        f.instruction(&Instruction::GlobalSet(self.ops_global));
    }

    /// Pushes `(scratch as u64) * per_unit`.
    fn push_scratch_cost(f: &mut Function, scratch: u32, per_unit: u64) {
        f.instruction(&Instruction::LocalGet(scratch));
        f.instruction(&Instruction::I64ExtendI32U);
        f.instruction(&Instruction::I64Const(per_unit as i64));
        f.instruction(&Instruction::I64Mul);
    }

    /// `ops += (scratch as u64) * per_unit`.
    fn charge_scratch(&self, f: &mut Function, scratch: u32, per_unit: u64) {
        f.instruction(&Instruction::GlobalGet(self.ops_global));
        Self::push_scratch_cost(f, scratch, per_unit);
        f.instruction(&Instruction::I64Add);
        f.instruction(&Instruction::GlobalSet(self.ops_global));
    }

    /// With a count on the stack: `if (count as u64) > (budget as u64) { exhausted = 1;
    /// unreachable }`.
    fn stop_above_budget(&self, f: &mut Function) {
        f.instruction(&Instruction::GlobalGet(self.budget_global));
        f.instruction(&Instruction::I64GtU);
        f.instruction(&Instruction::If(wasm_encoder::BlockType::Empty));
        f.instruction(&Instruction::I32Const(1));
        f.instruction(&Instruction::GlobalSet(self.exhausted_global));
        f.instruction(&Instruction::Unreachable);
        f.instruction(&Instruction::End);
    }

    /// `if (ops as u64) > (budget as u64) { exhausted = 1; unreachable }`.
    fn check_budget(&self, f: &mut Function) {
        f.instruction(&Instruction::GlobalGet(self.ops_global));
        self.stop_above_budget(f);
    }

    /// Before a bulk operation (its own weight already charged):
    /// `if (ops + length × per_unit) as u64 > budget as u64 { exhausted = 1; unreachable }`.
    fn check_budget_ahead(&self, f: &mut Function, length: u32, per_unit: u64) {
        f.instruction(&Instruction::GlobalGet(self.ops_global));
        Self::push_scratch_cost(f, length, per_unit);
        f.instruction(&Instruction::I64Add);
        self.stop_above_budget(f);
    }

    /// The per-unit cost of `op`'s length (or delta) operand, if it has one.
    fn variable_cost(&self, op: &Operator<'_>) -> Option<u64> {
        let v = self.costs.variable();
        let per_unit = match op {
            Operator::MemoryCopy { .. } => v.memory_copy_per_byte,
            Operator::MemoryFill { .. } => v.memory_fill_per_byte,
            Operator::MemoryInit { .. } => v.memory_init_per_byte,
            Operator::MemoryGrow { .. } => v.memory_grow_per_page,
            Operator::TableCopy { .. } => v.table_copy_per_element,
            Operator::TableFill { .. } => v.table_fill_per_element,
            Operator::TableInit { .. } => v.table_init_per_element,
            Operator::TableGrow { .. } => v.table_grow_per_element,
            _ => return None,
        };
        Some(u64::from(per_unit))
    }

    fn our_globals(&self, globals: &mut GlobalSection) {
        assert!(!self.globals_added, "the globals are added once");
        let mutable_i64 = GlobalType {
            val_type: ValType::I64,
            mutable: true,
            shared: false,
        };
        let mutable_i32 = GlobalType {
            val_type: ValType::I32,
            mutable: true,
            shared: false,
        };
        // Appended in this order: ops, budget, exhausted (matching the indices chosen above).
        globals.global(mutable_i64, &ConstExpr::i64_const(0));
        globals.global(
            mutable_i64,
            &ConstExpr::i64_const(self.initial_budget as i64),
        );
        globals.global(mutable_i32, &ConstExpr::i32_const(0));
    }

    fn our_exports(&self, exports: &mut ExportSection) {
        assert!(!self.exports_added, "the exports are added once");
        exports.export(OPS_GLOBAL, ExportKind::Global, self.ops_global);
        exports.export(BUDGET_GLOBAL, ExportKind::Global, self.budget_global);
        exports.export(EXHAUSTED_GLOBAL, ExportKind::Global, self.exhausted_global);
    }
}

/// Whether section `id` comes after the global section in a module (`None`: the module's end).
fn after_globals(id: Option<SectionId>) -> bool {
    matches!(
        id,
        None | Some(
            SectionId::Export
                | SectionId::Start
                | SectionId::Element
                | SectionId::DataCount
                | SectionId::Code
                | SectionId::Data
        )
    )
}

/// Whether section `id` comes after the export section in a module (`None`: the module's end).
fn after_exports(id: Option<SectionId>) -> bool {
    after_globals(id) && id != Some(SectionId::Export)
}

impl Reencode for Naive<'_> {
    type Error = String;

    fn parse_global_section(
        &mut self,
        globals: &mut GlobalSection,
        section: wasmparser::GlobalSectionReader<'_>,
    ) -> Result<(), ReencodeError<String>> {
        utils::parse_global_section(self, globals, section)?;
        self.our_globals(globals);
        self.globals_added = true;
        Ok(())
    }

    fn parse_export_section(
        &mut self,
        exports: &mut ExportSection,
        section: wasmparser::ExportSectionReader<'_>,
    ) -> Result<(), ReencodeError<String>> {
        utils::parse_export_section(self, exports, section)?;
        self.our_exports(exports);
        self.exports_added = true;
        Ok(())
    }

    /// Adds a global or export section of our own where the module has none.
    fn intersperse_section_hook(
        &mut self,
        module: &mut Module,
        _after: Option<SectionId>,
        before: Option<SectionId>,
    ) -> Result<(), ReencodeError<String>> {
        if !self.globals_added && after_globals(before) {
            let mut globals = GlobalSection::new();
            self.our_globals(&mut globals);
            module.section(&globals);
            self.globals_added = true;
        }
        if !self.exports_added && after_exports(before) {
            let mut exports = ExportSection::new();
            self.our_exports(&mut exports);
            module.section(&exports);
            self.exports_added = true;
        }
        Ok(())
    }

    fn parse_function_body(
        &mut self,
        code: &mut CodeSection,
        body: wasmparser::FunctionBody<'_>,
    ) -> Result<(), ReencodeError<String>> {
        let type_index = self.info.defined_function_types[self.next_defined_function];
        self.next_defined_function += 1;

        // Locals: the original declarations plus one i32 scratch local at the end.
        let mut local_count = self.info.type_param_counts[type_index as usize];
        let mut locals = Vec::new();
        for declaration in body.get_locals_reader()? {
            let (count, ty) = declaration?;
            local_count += count;
            locals.push((count, self.val_type(ty)?));
        }
        let scratch = local_count;
        locals.push((1, ValType::I32));
        let mut f = Function::new(locals);

        let mut operators = Vec::new();
        let mut reader = body.get_operators_reader()?;
        while !reader.eof() {
            operators.push(reader.read()?);
        }
        let scan = scan_body(&operators).map_err(|e| ReencodeError::UserError(e.to_string()))?;

        // Function entry: charge, then check if this function can recurse.
        self.charge(&mut f, self.costs.function_entry());
        if scan.has_calls {
            self.check_budget(&mut f);
        }

        let mut loop_number = 0;
        for op in operators {
            let weight = self.costs.weight(&op);
            if matches!(op, Operator::End | Operator::Else) {
                assert_eq!(weight, 0, "structural markers weigh 0");
            }
            let variable = self.variable_cost(&op).filter(|&per_unit| per_unit > 0);
            let is_loop = matches!(op, Operator::Loop { .. });

            self.charge(&mut f, weight);
            if let Some(per_unit) = variable {
                // The length (or delta) is the operator's last operand: on top of the stack.
                f.instruction(&Instruction::LocalTee(scratch));
                self.check_budget_ahead(&mut f, scratch, per_unit);
            }
            f.instruction(&self.instruction(op)?);
            if let Some(per_unit) = variable {
                // Reached only if the operator did not trap.
                self.charge_scratch(&mut f, scratch, per_unit);
            }
            if is_loop {
                // First thing in the loop body: runs on entry and on every branch back.
                if scan.loop_is_branch_target[loop_number] {
                    self.check_budget(&mut f);
                }
                loop_number += 1;
            }
        }
        code.function(&f);
        Ok(())
    }
}

#[cfg(test)]
mod tests;

//! Reading the count out of an instance, exactly, whatever the outcome.

use tally_instrument::{
    BUDGET_GLOBAL, EXHAUSTED_GLOBAL, MEMORY_INTEGRAL_GLOBAL, MEMORY_MARK_GLOBAL,
    MEMORY_PAGES_GLOBAL, MeterMap, OPS_GLOBAL, TrapKind,
};
use wasmtime::{AsContextMut, Instance, Val, WasmBacktrace};

/// The count after a call into an instrumented module.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MeterReading {
    /// The exact count of executed cost units.
    pub ops: u64,
    /// Whether the budget stopped the run.
    pub budget_exhausted: bool,
}

fn global_i64(
    store: &mut impl AsContextMut,
    instance: &Instance,
    name: &str,
) -> wasmtime::Result<i64> {
    let global = instance
        .get_global(&mut *store, name)
        .ok_or_else(|| wasmtime::format_err!("the module does not export `{name}`"))?;
    match global.get(&mut *store) {
        Val::I64(value) => Ok(value),
        Val::I32(value) => Ok(i64::from(value)),
        other => Err(wasmtime::format_err!(
            "`{name}` has unexpected type {:?}",
            other.ty(&mut *store)
        )),
    }
}

/// Sets the budget of an instance (the count at which it stops at its next check).
pub(crate) fn set_budget(
    store: &mut impl AsContextMut,
    instance: &Instance,
    budget: u64,
) -> wasmtime::Result<wasmtime::Global> {
    let global = instance
        .get_global(&mut *store, BUDGET_GLOBAL)
        .ok_or_else(|| wasmtime::format_err!("the module does not export `{BUDGET_GLOBAL}`"))?;
    global.set(&mut *store, Val::I64(budget as i64))?;
    Ok(global)
}

/// The exact count after a call that returned (`error` is `None`) or failed with `error`.
///
/// After a trap, `__tally_ops` still holds the prepaid cost of the straight-line path after the
/// trapping instruction; the meter map gives that amount for the top wasm frame of the trap's
/// backtrace. Budget exhaustion and host errors (including `proc_exit`) need no correction.
pub fn exact_ops(
    store: &mut impl AsContextMut,
    instance: &Instance,
    meter_map: &MeterMap,
    error: Option<&wasmtime::Error>,
) -> wasmtime::Result<MeterReading> {
    let ops = global_i64(store, instance, OPS_GLOBAL)? as u64;
    let budget_exhausted = global_i64(store, instance, EXHAUSTED_GLOBAL)? != 0;
    let correction = match error {
        Some(error) if !budget_exhausted => error
            .downcast_ref::<WasmBacktrace>()
            .and_then(|trace| trace.frames().first())
            .and_then(|frame| frame.module_offset())
            .map_or(0, |offset| {
                let kind = match error.downcast_ref::<wasmtime::Trap>() {
                    Some(wasmtime::Trap::MemoryOutOfBounds) => TrapKind::OutOfBounds,
                    Some(wasmtime::Trap::Interrupt) => TrapKind::Interrupt,
                    _ => TrapKind::Other,
                };
                meter_map.trap_correction(offset, kind)
            }),
        _ => 0,
    };
    if correction > ops {
        // The meter map does not belong to this module: refuse to bill a made-up count.
        return Err(wasmtime::Error::msg(format!(
            "a trap correction ({correction}) exceeds the count ({ops}): the meter map does not match the module"
        )));
    }
    Ok(MeterReading {
        ops: ops - correction,
        budget_exhausted,
    })
}

/// Bytes per wasm page.
const PAGE_BYTES: u128 = 65536;

/// The deterministic memory-time integral in byte-ops at the end of a run whose exact count is
/// `ops`: what the module accumulated at its `memory.grow`s plus the last interval.
pub fn memory_ops_integral(
    store: &mut impl AsContextMut,
    instance: &Instance,
    ops: u64,
) -> wasmtime::Result<u128> {
    let integral = global_i64(store, instance, MEMORY_INTEGRAL_GLOBAL)? as u64;
    let pages = global_i64(store, instance, MEMORY_PAGES_GLOBAL)? as u64;
    let mark = global_i64(store, instance, MEMORY_MARK_GLOBAL)? as u64;
    let tail = u128::from(pages) * u128::from(ops.saturating_sub(mark));
    Ok((u128::from(integral) + tail) * PAGE_BYTES)
}

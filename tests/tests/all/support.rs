//! Shared machinery: engines (with an epoch ticker so no bug can hang the suite), running a
//! function on an instrumented or original module, and comparable snapshots of what a call did.

use std::sync::OnceLock;
use std::time::Duration;

use anyhow::Result;
use tally_instrument::{BUDGET_GLOBAL, CostTable, EXHAUSTED_GLOBAL, MeterMap, OPS_GLOBAL};
use wasmtime::{
    Config, Engine, ExternType, Instance, Module, OperatorCost, Store, StoreLimits,
    StoreLimitsBuilder, Trap, Val, ValType,
};

/// Wall-clock guard: one epoch tick every 10 ms, a call may run for this many ticks.
pub const EPOCH_TICK: Duration = Duration::from_millis(10);
pub const DEADLINE_TICKS: u64 = 1_000;
/// The guest stack; small so that a stack overflow is reached quickly.
pub const WASM_STACK_BYTES: usize = 256 * 1024;
/// Memory a store may hold, in bytes; growing beyond fails (returns -1) in every variant alike.
pub const STORE_MEMORY_BYTES_MAX: usize = 16 << 20;
pub const STORE_TABLE_ELEMENTS_MAX: usize = 100_000;
/// Fuel given to a store that measures fuel: far more than any budget-bounded run needs.
pub const FUEL_INITIAL: u64 = 1 << 62;

fn base_config() -> Config {
    let mut config = Config::new();
    config.epoch_interruption(true);
    config.max_wasm_stack(WASM_STACK_BYTES);
    config.wasm_tail_call(true);
    config.wasm_multi_memory(true);
    config.wasm_relaxed_simd(true);
    config
}

/// All engines the suite uses, created once, ticked by one background thread.
struct Engines {
    plain: Engine,
    fuel: Vec<(String, Engine)>,
}

fn engines() -> &'static Engines {
    static ENGINES: OnceLock<Engines> = OnceLock::new();
    ENGINES.get_or_init(|| {
        let plain = Engine::new(&base_config()).expect("engine");
        let fuel = tally_instrument::PRESETS
            .iter()
            .map(|&name| {
                // Presets wasmtime cannot express run original modules only (no comparison).
                let costs = fuel_comparable(&CostTable::preset(name).unwrap());
                let mut config = base_config();
                config.consume_fuel(true);
                config.operator_cost(operator_cost(&costs));
                (name.to_string(), Engine::new(&config).expect("fuel engine"))
            })
            .collect::<Vec<_>>();
        let mut tickers: Vec<Engine> = vec![plain.clone()];
        tickers.extend(fuel.iter().map(|(_, e)| e.clone()));
        std::thread::spawn(move || {
            loop {
                std::thread::sleep(EPOCH_TICK);
                tickers.iter().for_each(Engine::increment_epoch);
            }
        });
        Engines { plain, fuel }
    })
}

/// The engine for instrumented modules and for original modules run without fuel.
pub fn plain_engine() -> &'static Engine {
    &engines().plain
}

/// An engine that consumes fuel with the weights of the cost table preset `name`.
pub fn fuel_engine(name: &str) -> &'static Engine {
    &engines()
        .fuel
        .iter()
        .find(|(n, _)| n == name)
        .expect("a preset")
        .1
}

/// The largest weight wasmtime's `OperatorCost` can express (its fields are `u8`).
pub const FUEL_WEIGHT_MAX: u32 = u8::MAX as u32;

/// `costs` as wasmtime's fuel can express it: a function-entry weight of 1 (wasmtime hard-codes
/// it) and every weight above [`FUEL_WEIGHT_MAX`] lowered to it. Equal to `costs` for
/// `wasmtime-fuel`; for `default` a table with the same structure and different weights.
pub fn fuel_comparable(costs: &CostTable) -> CostTable {
    let mut json: serde_json::Value = serde_json::from_str(&costs.to_json()).unwrap();
    json["function_entry"] = 1.into();
    json["name"] = format!("{}-as-fuel", costs.name()).into();
    let clamp = |v: &mut serde_json::Value| {
        if v.as_u64().is_some_and(|w| w > u64::from(FUEL_WEIGHT_MAX)) {
            *v = FUEL_WEIGHT_MAX.into();
        }
    };
    clamp(&mut json["default_weight"]);
    for key in ["operators", "variable"] {
        if let Some(map) = json[key].as_object_mut() {
            map.values_mut().for_each(clamp);
        }
    }
    CostTable::from_json(&json.to_string()).unwrap()
}

/// Whether wasmtime's fuel with [`operator_cost`] counts exactly what `costs` counts.
pub fn fuel_can_express(costs: &CostTable) -> bool {
    costs.function_entry() == 1
        && costs.weights().all(|(_, w)| w <= FUEL_WEIGHT_MAX)
        && costs
            .variable()
            .values()
            .iter()
            .all(|&w| w <= FUEL_WEIGHT_MAX)
}

/// The fuel engine for `costs`: a shared one for presets, a new (unticked) one otherwise.
pub fn fuel_engine_for(costs: &CostTable) -> Engine {
    if tally_instrument::PRESETS.contains(&costs.name()) {
        return fuel_engine(costs.name()).clone();
    }
    let mut config = base_config();
    config.consume_fuel(true);
    config.operator_cost(operator_cost(costs));
    Engine::new(&config).expect("fuel engine")
}

/// wasmtime's `OperatorCost` with the weights of `costs`, built through serde: one `u8` field per
/// wasmparser operator name plus the variable costs. Operators wasmtime knows and tally's
/// wasmparser does not keep wasmtime's default; the reverse is reported.
pub fn operator_cost(costs: &CostTable) -> OperatorCost {
    let mut json = serde_json::to_value(OperatorCost::new()).unwrap();
    let fields = json.as_object_mut().unwrap();
    let mut unknown_to_wasmtime = Vec::new();
    for (name, weight) in costs.weights() {
        let weight = u8::try_from(weight).expect("wasmtime's operator costs are u8");
        match fields.get_mut(name) {
            Some(slot) => *slot = weight.into(),
            None => unknown_to_wasmtime.push(name),
        }
    }
    assert!(
        unknown_to_wasmtime.len() < 10,
        "operators tally knows and wasmtime does not: {unknown_to_wasmtime:?}"
    );
    let v = costs.variable();
    let variable = fields.get_mut("variable").unwrap().as_object_mut().unwrap();
    for (name, weight) in [
        ("memory_copy_per_byte", v.memory_copy_per_byte),
        ("memory_fill_per_byte", v.memory_fill_per_byte),
        ("memory_init_per_byte", v.memory_init_per_byte),
        ("memory_grow_per_page", v.memory_grow_per_page),
        ("table_copy_per_element", v.table_copy_per_element),
        ("table_fill_per_element", v.table_fill_per_element),
        ("table_init_per_element", v.table_init_per_element),
        ("table_grow_per_element", v.table_grow_per_element),
    ] {
        let weight = u8::try_from(weight).expect("wasmtime's variable costs are u8");
        *variable.get_mut(name).expect("wasmtime knows the field") = weight.into();
    }
    serde_json::from_value(json).unwrap()
}

/// A result value in a form that compares across stores (NaNs are all alike, references compare
/// by nullness).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Value {
    I32(i32),
    I64(i64),
    F32(u32),
    F64(u64),
    V128(u128),
    NullRef,
    Ref,
}

impl Value {
    pub fn of(val: &Val) -> Value {
        match val {
            Val::I32(x) => Value::I32(*x),
            Val::I64(x) => Value::I64(*x),
            Val::F32(bits) if f32::from_bits(*bits).is_nan() => Value::F32(f32::NAN.to_bits()),
            Val::F32(bits) => Value::F32(*bits),
            Val::F64(bits) if f64::from_bits(*bits).is_nan() => Value::F64(f64::NAN.to_bits()),
            Val::F64(bits) => Value::F64(*bits),
            Val::V128(v) => Value::V128(v.as_u128()),
            Val::FuncRef(None) | Val::ExternRef(None) | Val::AnyRef(None) | Val::ExnRef(None) => {
                Value::NullRef
            }
            _ => Value::Ref,
        }
    }

    /// Parses a fixture argument for a parameter of type `ty`.
    pub fn parse_arg(text: &str, ty: &ValType) -> Val {
        let int = || -> i64 {
            if let Some(hex) = text.strip_prefix("0x") {
                i64::from_str_radix(hex, 16).unwrap()
            } else {
                text.parse::<i64>()
                    .unwrap_or_else(|_| panic!("bad integer argument {text}"))
            }
        };
        match ty {
            ValType::I32 => Val::I32(int() as i32),
            ValType::I64 => Val::I64(int()),
            ValType::F32 => Val::F32(text.parse::<f32>().unwrap().to_bits()),
            ValType::F64 => Val::F64(text.parse::<f64>().unwrap().to_bits()),
            other => panic!("fixture arguments of type {other} are not supported"),
        }
    }
}

/// How a call ended.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Outcome {
    Returned(Vec<Value>),
    /// A trap with its code (`None` for an error that is not a wasm trap).
    Trapped(Option<Trap>),
    /// Stopped by tally's budget check.
    Exhausted,
}

/// What one store holds.
pub struct StoreData {
    limits: StoreLimits,
}

pub fn new_store(engine: &Engine) -> Store<StoreData> {
    let limits = StoreLimitsBuilder::new()
        .memory_size(STORE_MEMORY_BYTES_MAX)
        .table_elements(STORE_TABLE_ELEMENTS_MAX)
        .build();
    let mut store = Store::new(engine, StoreData { limits });
    store.limiter(|data| &mut data.limits);
    store.set_epoch_deadline(DEADLINE_TICKS);
    store
}

/// Which tally globals a variant has and how to read its count.
pub enum Metering<'a> {
    /// The original module: no tally globals.
    None,
    /// Instrumented by the naive oracle: `__tally_ops` is exact at every point.
    Naive,
    /// Instrumented by `tally-instrument`: the count is made exact by the meter map.
    Optimized(&'a MeterMap),
}

/// One instance of one variant of a module, with everything needed to call it repeatedly.
pub struct Runner<'a> {
    pub store: Store<StoreData>,
    pub instance: Instance,
    pub module: Module,
    pub metering: Metering<'a>,
}

/// What a call did, as seen from outside.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CallResult {
    pub outcome: Outcome,
    /// The exact count (0 for the original module).
    pub ops: u64,
    /// Fuel consumed (only on a fuel engine).
    pub fuel: u64,
}

impl<'a> Runner<'a> {
    pub fn new(engine: &Engine, wasm: &[u8], metering: Metering<'a>) -> Result<Runner<'a>> {
        let module = Module::new(engine, wasm)?;
        let mut store = new_store(engine);
        // Fails (harmlessly) on an engine that does not consume fuel.
        let _fuel_engine = store.set_fuel(FUEL_INITIAL).is_ok();
        let instance = Instance::new(&mut store, &module, &[])?;
        Ok(Runner {
            store,
            instance,
            module,
            metering,
        })
    }

    fn set_i64_global(&mut self, name: &str, value: u64) {
        let global = self.instance.get_global(&mut self.store, name).expect(name);
        global.set(&mut self.store, Val::I64(value as i64)).unwrap();
    }

    /// Calls `name` with `args` after resetting the count to 0 and the budget to `budget`.
    pub fn call(&mut self, name: &str, args: &[Val], budget: Option<u64>) -> CallResult {
        if !matches!(self.metering, Metering::None) {
            self.set_i64_global(OPS_GLOBAL, 0);
            if let Some(budget) = budget {
                self.set_i64_global(BUDGET_GLOBAL, budget);
            }
            let exhausted = self
                .instance
                .get_global(&mut self.store, EXHAUSTED_GLOBAL)
                .unwrap();
            exhausted.set(&mut self.store, Val::I32(0)).unwrap();
        }
        self.store.set_epoch_deadline(DEADLINE_TICKS);
        let fuel_before = self.store.get_fuel().unwrap_or(0);
        let func = self
            .instance
            .get_func(&mut self.store, name)
            .expect("exported function");
        let ty = func.ty(&self.store);
        let mut results: Vec<Val> = ty.results().map(|_| Val::I32(0)).collect();
        let call = func.call(&mut self.store, args, &mut results);
        let fuel = fuel_before - self.store.get_fuel().unwrap_or(0);
        let error = call.as_ref().err();
        if let Some(error) = error
            && error.downcast_ref::<Trap>() == Some(&Trap::Interrupt)
        {
            panic!("`{name}` ran past the wall-clock guard: a metering bug let it run unbounded");
        }
        let (ops, exhausted) = match &self.metering {
            Metering::None => (0, false),
            Metering::Naive => {
                let ops = self.global(OPS_GLOBAL);
                let exhausted = self.global(EXHAUSTED_GLOBAL);
                (ops.unwrap_i64() as u64, exhausted.unwrap_i32() == 1)
            }
            Metering::Optimized(meter_map) => {
                let reading =
                    tally_runtime::exact_ops(&mut self.store, &self.instance, meter_map, error)
                        .expect("exact_ops");
                (reading.ops, reading.budget_exhausted)
            }
        };
        let outcome = match call {
            Ok(()) => {
                assert!(
                    !exhausted,
                    "`{name}` returned but the exhausted flag is set"
                );
                Outcome::Returned(results.iter().map(Value::of).collect())
            }
            Err(_) if exhausted => Outcome::Exhausted,
            Err(error) => Outcome::Trapped(error.downcast_ref::<Trap>().copied()),
        };
        CallResult { outcome, ops, fuel }
    }

    fn global(&mut self, name: &str) -> Val {
        self.instance
            .get_global(&mut self.store, name)
            .expect(name)
            .get(&mut self.store)
    }

    /// Exported functions, in export order, with their parameter types.
    pub fn exported_functions(&self) -> Vec<(String, Vec<ValType>)> {
        self.module
            .exports()
            .filter_map(|export| match export.ty() {
                ExternType::Func(f) => Some((export.name().to_string(), f.params().collect())),
                _ => None,
            })
            .collect()
    }

    /// The state a call can leave behind, excluding tally's `__tally_*` globals: every exported memory's
    /// bytes, every exported global's value, every exported table's size.
    pub fn snapshot(&mut self) -> Snapshot {
        let mut snapshot = Snapshot::default();
        let names: Vec<(String, ExternType)> = self
            .module
            .exports()
            .map(|e| (e.name().to_string(), e.ty()))
            .collect();
        for (name, ty) in names {
            if name.starts_with("__tally_") {
                continue; // tally's own globals (the optimized instrumenter may add more)
            }
            match ty {
                ExternType::Memory(_) => {
                    let memory = self.instance.get_memory(&mut self.store, &name).unwrap();
                    snapshot
                        .memories
                        .push((name, memory.data(&self.store).to_vec()));
                }
                ExternType::Global(_) => {
                    let value = self.global(&name);
                    snapshot.globals.push((name, Value::of(&value)));
                }
                ExternType::Table(_) => {
                    let table = self.instance.get_table(&mut self.store, &name).unwrap();
                    snapshot.tables.push((name, table.size(&self.store)));
                }
                _ => {}
            }
        }
        snapshot
    }
}

/// Exported state of an instance.
#[derive(Default, PartialEq, Eq)]
pub struct Snapshot {
    pub memories: Vec<(String, Vec<u8>)>,
    pub globals: Vec<(String, Value)>,
    pub tables: Vec<(String, u64)>,
}

impl std::fmt::Debug for Snapshot {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let memories: Vec<_> = self
            .memories
            .iter()
            .map(|(name, bytes)| {
                let nonzero = bytes.iter().filter(|&&b| b != 0).count();
                format!("{name}: {} bytes, {nonzero} non-zero", bytes.len())
            })
            .collect();
        f.debug_struct("Snapshot")
            .field("memories", &memories)
            .field("globals", &self.globals)
            .field("tables", &self.tables)
            .finish()
    }
}

/// The first position where two snapshots' memories differ, for a readable failure.
pub fn first_memory_difference(a: &Snapshot, b: &Snapshot) -> Option<String> {
    for ((name, x), (_, y)) in a.memories.iter().zip(&b.memories) {
        if x.len() != y.len() {
            return Some(format!("memory {name}: {} vs {} bytes", x.len(), y.len()));
        }
        if let Some(i) = x.iter().zip(y).position(|(p, q)| p != q) {
            return Some(format!("memory {name} at {i}: {} vs {}", x[i], y[i]));
        }
    }
    None
}

/// Default arguments for a function: zero for numbers, null for references.
pub fn default_args(params: &[ValType]) -> Vec<Val> {
    params
        .iter()
        .map(|ty| Val::default_for_ty(ty).unwrap_or_else(Val::null_func_ref))
        .collect()
}

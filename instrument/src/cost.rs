//! Cost tables: the weight of every operator, as data.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use wasmparser::Operator;

use crate::Error;

/// The largest weight one operator, byte, page or element may have.
///
/// Keeping weights small bounds every static sum the pass computes: with
/// [`crate::MODULE_BYTES_MAX`] bytes of code, a function's prepaid total stays far below `i64::MAX`.
pub const WEIGHT_MAX: u32 = 1 << 16;

/// The size limit for a cost table given as JSON.
pub const COST_TABLE_BYTES_MAX: usize = 256 * 1024;

const PRESET_DEFAULT: &str = include_str!("../costs/default.json");
const PRESET_WASMTIME_FUEL: &str = include_str!("../costs/wasmtime-fuel.json");

/// The names of the built-in cost tables.
pub const PRESETS: [&str; 2] = ["default", "wasmtime-fuel"];

macro_rules! has_memarg_arg {
    () => {
        false
    };
    (memarg $($rest:ident)*) => {
        true
    };
    ($first:ident $($rest:ident)*) => {
        has_memarg_arg!($($rest)*)
    };
}

/// Whether an operator of `proposal` with these immediates is plain arithmetic on values (it
/// touches neither memory, tables, globals nor control flow); some of them still trap
/// (division, float-to-int truncation: see `never_traps` in the pass).
macro_rules! numeric_in {
    (mvp) => {
        true
    };
    (sign_extension) => {
        true
    };
    (saturating_float_to_int) => {
        true
    };
    (simd) => {
        true
    };
    (simd lane) => {
        true
    };
    (simd lanes) => {
        true
    };
    (relaxed_simd) => {
        true
    };
    ($($other:tt)*) => {
        false
    };
}

macro_rules! define_operator_names {
    ($( @$proposal:ident $op:ident $({ $($arg:ident: $argty:ty),* })? => $visit:ident ($($ann:tt)*) )*) => {
        /// Every operator name wasmparser knows, in wasmparser's order.
        const OPERATOR_NAMES: &[&str] = &[$(stringify!($op),)*];

        /// Whether the operator with the same index takes a memory argument (it accesses
        /// linear memory at an address operand).
        const OPERATOR_HAS_MEMARG: &[bool] = &[$(has_memarg_arg!($($($arg)*)?),)*];

        /// Whether the operator with the same index is arithmetic on values (`numeric_in`).
        const OPERATOR_NUMERIC: &[bool] = &[$(numeric_in!($proposal $($($arg)*)?),)*];

        /// The position of `op` in [`OPERATOR_NAMES`].
        fn operator_index(op: &Operator<'_>) -> usize {
            #[allow(unused_variables)]
            let mut index = 0usize;
            $(
                if let Operator::$op { .. } = op {
                    return index;
                }
                index += 1;
            )*
            unreachable!("wasmparser produced an operator missing from its own operator list")
        }
    };
}
wasmparser::for_each_operator!(define_operator_names);

/// Costs that grow with a run-time operand: bytes, pages or table elements.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(deny_unknown_fields, default)]
pub struct VariableCosts {
    /// Extra weight per byte copied by `memory.copy`.
    pub memory_copy_per_byte: u32,
    /// Extra weight per byte written by `memory.fill`.
    pub memory_fill_per_byte: u32,
    /// Extra weight per byte copied by `memory.init`.
    pub memory_init_per_byte: u32,
    /// Extra weight per 64 KiB page requested by `memory.grow`.
    pub memory_grow_per_page: u32,
    /// Extra weight per element copied by `table.copy`.
    pub table_copy_per_element: u32,
    /// Extra weight per element written by `table.fill`.
    pub table_fill_per_element: u32,
    /// Extra weight per element copied by `table.init`.
    pub table_init_per_element: u32,
    /// Extra weight per element requested by `table.grow`.
    pub table_grow_per_element: u32,
}

impl VariableCosts {
    /// Every weight, in the order of the fields.
    pub fn values(&self) -> [u32; 8] {
        [
            self.memory_copy_per_byte,
            self.memory_fill_per_byte,
            self.memory_init_per_byte,
            self.memory_grow_per_page,
            self.table_copy_per_element,
            self.table_fill_per_element,
            self.table_init_per_element,
            self.table_grow_per_element,
        ]
    }
}

/// The serialized form of a cost table.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct CostTableFile {
    name: String,
    #[serde(default)]
    description: String,
    /// Weight of every operator not listed in `operators`.
    default_weight: u32,
    /// Weight charged once each time a function body is entered.
    function_entry: u32,
    /// Weights by wasmparser operator name (`I32Add`, `MemoryCopy`, ...).
    #[serde(default)]
    operators: BTreeMap<String, u32>,
    #[serde(default)]
    variable: VariableCosts,
}

/// A weight for every operator, plus per-byte, per-page and per-element costs.
///
/// Operators are named as wasmparser names them (`I32Add`, `LocalGet`, `MemoryCopy`), which
/// are also the field names of wasmtime's `OperatorCost`. `End` and `Else` only mark
/// structure and always weigh 0.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CostTable {
    name: String,
    description: String,
    default_weight: u32,
    function_entry: u32,
    overrides: BTreeMap<String, u32>,
    weights: Vec<u32>,
    variable: VariableCosts,
}

impl CostTable {
    /// A built-in table by name: `default` or `wasmtime-fuel`.
    pub fn preset(name: &str) -> Option<CostTable> {
        let json = match name {
            "default" => PRESET_DEFAULT,
            "wasmtime-fuel" => PRESET_WASMTIME_FUEL,
            _ => return None,
        };
        Some(CostTable::from_json(json).expect("built-in cost tables are valid"))
    }

    /// Parses and validates a cost table given as JSON.
    pub fn from_json(json: &str) -> Result<CostTable, Error> {
        if json.len() > COST_TABLE_BYTES_MAX {
            return Err(Error::CostTable(format!(
                "cost table is {} bytes, more than the limit of {COST_TABLE_BYTES_MAX}",
                json.len()
            )));
        }
        let file: CostTableFile =
            serde_json::from_str(json).map_err(|e| Error::CostTable(e.to_string()))?;
        CostTable::from_file(file)
    }

    fn from_file(file: CostTableFile) -> Result<CostTable, Error> {
        let check = |what: &str, weight: u32| {
            if weight > WEIGHT_MAX {
                Err(Error::CostTable(format!(
                    "{what}: weight {weight} is above the maximum of {WEIGHT_MAX}"
                )))
            } else {
                Ok(())
            }
        };
        if file.name.is_empty() || file.name.len() > 64 {
            return Err(Error::CostTable("name: must be 1 to 64 bytes".into()));
        }
        check("default_weight", file.default_weight)?;
        check("function_entry", file.function_entry)?;
        let mut weights = vec![file.default_weight; OPERATOR_NAMES.len()];
        for (name, &weight) in &file.operators {
            let Some(index) = OPERATOR_NAMES.iter().position(|n| n == name) else {
                return Err(Error::CostTable(format!(
                    "operators.{name}: unknown operator"
                )));
            };
            check(&format!("operators.{name}"), weight)?;
            weights[index] = weight;
        }
        for structural in ["End", "Else"] {
            let index = OPERATOR_NAMES
                .iter()
                .position(|n| *n == structural)
                .unwrap();
            match file.operators.get(structural) {
                Some(&w) if w != 0 => {
                    return Err(Error::CostTable(format!(
                        "operators.{structural}: structural markers always weigh 0"
                    )));
                }
                _ => weights[index] = 0,
            }
        }
        for cyclic in ["Br", "BrIf", "BrTable"] {
            if file
                .operators
                .get(cyclic)
                .copied()
                .unwrap_or(file.default_weight)
                == 0
            {
                return Err(Error::CostTable(format!(
                    "operators.{cyclic}: must weigh at least 1 so that every loop costs something"
                )));
            }
        }
        if file.function_entry == 0 {
            return Err(Error::CostTable(
                "function_entry: must weigh at least 1 so that every recursion costs something"
                    .into(),
            ));
        }
        let v = &file.variable;
        for (what, weight) in [
            ("variable.memory_copy_per_byte", v.memory_copy_per_byte),
            ("variable.memory_fill_per_byte", v.memory_fill_per_byte),
            ("variable.memory_init_per_byte", v.memory_init_per_byte),
            ("variable.memory_grow_per_page", v.memory_grow_per_page),
            ("variable.table_copy_per_element", v.table_copy_per_element),
            ("variable.table_fill_per_element", v.table_fill_per_element),
            ("variable.table_init_per_element", v.table_init_per_element),
            ("variable.table_grow_per_element", v.table_grow_per_element),
        ] {
            check(what, weight)?;
        }
        Ok(CostTable {
            name: file.name,
            description: file.description,
            default_weight: file.default_weight,
            function_entry: file.function_entry,
            overrides: file.operators,
            weights,
            variable: file.variable,
        })
    }

    /// The table as JSON, in the same format [`CostTable::from_json`] reads.
    pub fn to_json(&self) -> String {
        let file = CostTableFile {
            name: self.name.clone(),
            description: self.description.clone(),
            default_weight: self.default_weight,
            function_entry: self.function_entry,
            operators: self.overrides.clone(),
            variable: self.variable.clone(),
        };
        serde_json::to_string_pretty(&file).expect("a cost table serializes")
    }

    /// The table's name, e.g. `default`.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// A stable identifier: the name and a digest of every weight, so that two tables that
    /// charge differently never share an id.
    pub fn id(&self) -> String {
        // FNV-1a over the canonical weight vector: stable across builds and platforms.
        let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
        let mut feed = |value: u32| {
            for byte in value.to_le_bytes() {
                hash ^= u64::from(byte);
                hash = hash.wrapping_mul(0x0100_0000_01b3);
            }
        };
        feed(self.function_entry);
        self.weights.iter().for_each(|&w| feed(w));
        self.variable.values().into_iter().for_each(feed);
        format!("{}@{hash:016x}", self.name)
    }

    /// The weight of one execution of `op` (not counting its variable part).
    pub fn weight(&self, op: &Operator<'_>) -> u64 {
        u64::from(self.weights[operator_index(op)])
    }

    /// The weight of `name` (a wasmparser operator name), if the name is known.
    pub fn weight_by_name(&self, name: &str) -> Option<u32> {
        let index = OPERATOR_NAMES.iter().position(|n| *n == name)?;
        Some(self.weights[index])
    }

    /// Every operator name with its weight, in wasmparser's order.
    pub fn weights(&self) -> impl Iterator<Item = (&'static str, u32)> + '_ {
        OPERATOR_NAMES
            .iter()
            .copied()
            .zip(self.weights.iter().copied())
    }

    /// The weight charged each time a function body is entered.
    pub fn function_entry(&self) -> u64 {
        u64::from(self.function_entry)
    }

    /// The per-byte, per-page and per-element costs.
    pub fn variable(&self) -> &VariableCosts {
        &self.variable
    }
}

/// Whether an operator accesses linear memory through a memory argument.
pub(crate) fn has_memarg(op: &Operator<'_>) -> bool {
    OPERATOR_HAS_MEMARG[operator_index(op)]
}

/// Whether an operator only computes on values from the operand stack: no memory, table,
/// global, call or control flow (it may still trap, as division does).
pub(crate) fn is_numeric(op: &Operator<'_>) -> bool {
    OPERATOR_NUMERIC[operator_index(op)]
}

/// The wasmparser name of an operator (`I32Add`, `MemoryCopy`, ...).
pub fn operator_name(op: &Operator<'_>) -> &'static str {
    OPERATOR_NAMES[operator_index(op)]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn presets_parse_and_differ() {
        let default = CostTable::preset("default").unwrap();
        let fuel = CostTable::preset("wasmtime-fuel").unwrap();
        assert_ne!(default.id(), fuel.id());
        assert_eq!(fuel.weight(&Operator::Nop), 0);
        assert_eq!(fuel.weight(&Operator::I32Add), 1);
        assert_eq!(fuel.weight(&Operator::End), 0);
        assert_eq!(fuel.function_entry(), 1);
    }

    #[test]
    fn unknown_operator_is_named() {
        let err = CostTable::from_json(
            r#"{"name":"x","default_weight":1,"function_entry":1,"operators":{"I32Frob":2}}"#,
        )
        .unwrap_err();
        assert!(err.to_string().contains("operators.I32Frob"), "{err}");
    }

    #[test]
    fn structural_markers_cannot_cost() {
        let err = CostTable::from_json(
            r#"{"name":"x","default_weight":1,"function_entry":1,"operators":{"End":2}}"#,
        )
        .unwrap_err();
        assert!(err.to_string().contains("operators.End"), "{err}");
    }

    #[test]
    fn unknown_field_is_rejected() {
        let err =
            CostTable::from_json(r#"{"name":"x","default_weight":1,"function_entry":1,"extra":1}"#)
                .unwrap_err();
        assert!(err.to_string().contains("extra"), "{err}");
    }

    #[test]
    fn round_trips_through_json() {
        let default = CostTable::preset("default").unwrap();
        assert_eq!(CostTable::from_json(&default.to_json()).unwrap(), default);
    }
}

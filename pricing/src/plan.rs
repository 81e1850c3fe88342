//! Plans: the JSON shape, validation with field paths, and the compiled form `price` uses.

use std::collections::{BTreeMap, HashMap};

use rust_decimal::Decimal;
use serde::{Deserialize, Serialize};

use crate::error::{Error, Problem, Problems, Result};
use crate::meter::{Meter, UnixMillis};
use crate::money::{Currency, RoundingMode, decimal_string, quantity_string};
use crate::{
    FLAT_FEES_MAX, NAME_BYTES_MAX, OVERRIDES_MAX, PRICE_DECIMAL_PLACES_MAX, PRICE_MAX, TIERS_MAX,
    UNIT_SIZE_MAX, VERSIONS_MAX,
};

/// A plan document exactly as written in JSON, before validation. See `docs/pricing.md`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PlanSpec {
    /// The plan's name, e.g. `"tally-native"`.
    pub plan: String,
    /// Free text for people.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
    /// ISO 4217 code, e.g. `"USD"`.
    pub currency: String,
    /// How each invoice line is rounded; half-even when absent.
    #[serde(default)]
    pub rounding: RoundingMode,
    /// The versions, ascending by number and by `effective_from_ms`.
    pub versions: Vec<PlanVersion>,
}

/// One version of a plan: what is priced from `effective_from_ms` until the next version.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PlanVersion {
    /// Version number, strictly ascending within the plan.
    pub version: u32,
    /// When this version takes effect, in Unix milliseconds.
    #[serde(rename = "effective_from_ms")]
    pub effective_from: UnixMillis,
    /// Free text for people.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
    /// Least amount invoiced per period; a shortfall becomes a true-up line.
    #[serde(
        default,
        with = "decimal_string::option",
        skip_serializing_if = "Option::is_none"
    )]
    pub minimum_commitment: Option<Decimal>,
    /// Recurring fees charged once per period.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub flat_fees: Vec<FlatFee>,
    /// The charge of each priced meter, keyed by meter name.
    #[serde(default)]
    pub meters: BTreeMap<String, MeterCharge>,
    /// Per-function charges replacing `meters` for that function: function → meter → charge.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub overrides: BTreeMap<String, BTreeMap<String, MeterCharge>>,
}

/// A recurring fee charged once per period.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FlatFee {
    /// What the fee is for, printed on the line.
    pub name: String,
    /// The amount, with at most the currency's minor units.
    #[serde(with = "decimal_string")]
    pub amount: Decimal,
}

/// How one meter is charged. Exactly one of `per_unit`, `package`, `graduated`, `volume`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct MeterCharge {
    /// Raw units free each period, counted from the period's first unit.
    #[serde(
        default,
        with = "quantity_string",
        skip_serializing_if = "is_zero_quantity"
    )]
    pub free_allowance: u128,
    /// The unit prices refer to (per-unit, graduated, volume); one raw unit when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub unit: Option<Unit>,
    /// A price per unit.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub per_unit: Option<PerUnit>,
    /// A price per started (or completed) block of raw units.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub package: Option<Package>,
    /// Tiers: each unit is priced by the tier it falls in.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub graduated: Option<Vec<Tier>>,
    /// Tiers: every unit is priced by the tier the period's total falls in.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub volume: Option<Vec<Tier>>,
}

fn is_zero_quantity(quantity: &u128) -> bool {
    *quantity == 0
}

fn is_zero_decimal(value: &Decimal) -> bool {
    value.is_zero()
}

/// The unit a price refers to: `size` raw meter units, called `name`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Unit {
    /// Raw meter units in one priced unit, e.g. 1073741824 for GiB-seconds of byte-seconds.
    #[serde(with = "quantity_string")]
    pub size: u128,
    /// Name printed on invoices, e.g. `"GiB-second"`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
}

/// A price per unit.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PerUnit {
    /// Price of one unit, at most [`crate::PRICE_DECIMAL_PLACES_MAX`] decimal places.
    #[serde(with = "decimal_string")]
    pub unit_price: Decimal,
}

/// Whether a partial block is charged (Stripe's `transform_quantity.round`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum PackageRounding {
    /// Every started block is charged.
    #[default]
    Up,
    /// Only completed blocks are charged.
    Down,
}

/// A price per block of `size` raw units.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Package {
    /// Raw units per block.
    #[serde(with = "quantity_string")]
    pub size: u128,
    /// Price of one block.
    #[serde(with = "decimal_string")]
    pub price: Decimal,
    /// Whether a partial block counts; `up` when absent.
    #[serde(default)]
    pub round: PackageRounding,
}

/// One tier. Tier `i` covers raw units `(up_to[i-1], up_to[i]]` of the period (the first tier
/// starts at unit 1); the last tier has no `up_to`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Tier {
    /// Inclusive upper bound in raw units; absent or null for the last tier.
    #[serde(
        default,
        with = "quantity_string::option",
        skip_serializing_if = "Option::is_none"
    )]
    pub up_to: Option<u128>,
    /// Price per unit within the tier.
    #[serde(with = "decimal_string")]
    pub unit_price: Decimal,
    /// Charged once when usage reaches the tier (graduated) or lands in it (volume).
    #[serde(
        default,
        with = "decimal_string",
        skip_serializing_if = "is_zero_decimal"
    )]
    pub flat_amount: Decimal,
}

/// A validated plan, ready to price. Serializes as its [`PlanSpec`]; deserializing validates.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(try_from = "PlanSpec", into = "PlanSpec")]
pub struct Plan {
    spec: PlanSpec,
    currency: Currency,
    compiled: Vec<CompiledVersion>,
}

impl TryFrom<PlanSpec> for Plan {
    type Error = Error;

    fn try_from(spec: PlanSpec) -> Result<Plan> {
        Plan::from_spec(spec)
    }
}

impl From<Plan> for PlanSpec {
    fn from(plan: Plan) -> PlanSpec {
        plan.spec
    }
}

impl Plan {
    /// Parses and validates plan JSON. Unknown fields are rejected; a malformed document gives
    /// [`Error::Json`] with the path of the first problem, a well-formed but invalid plan gives
    /// [`Error::InvalidPlan`] listing every problem with its field path.
    pub fn from_json(text: &str) -> Result<Plan> {
        let deserializer = &mut serde_json::Deserializer::from_str(text);
        let spec: PlanSpec =
            serde_path_to_error::deserialize(deserializer).map_err(|error| Error::Json {
                what: "plan",
                path: error.path().to_string(),
                message: error.inner().to_string(),
            })?;
        Plan::from_spec(spec)
    }

    /// Validates a plan document.
    pub fn from_spec(spec: PlanSpec) -> Result<Plan> {
        let mut problems = Vec::new();
        let currency = match spec.currency.parse::<Currency>() {
            Ok(currency) => Some(currency),
            Err(message) => {
                problems.push(Problem::new("currency", message));
                None
            }
        };
        check_name(&mut problems, "plan", &spec.plan);
        let compiled = validate_versions(&mut problems, &spec, currency);
        match currency {
            Some(currency) if problems.is_empty() => Ok(Plan {
                spec,
                currency,
                compiled,
            }),
            _ => Err(Error::InvalidPlan(Problems(problems))),
        }
    }

    /// The plan as JSON (its [`PlanSpec`]), pretty-printed.
    pub fn to_json(&self) -> String {
        serde_json::to_string_pretty(&self.spec).expect("a plan spec always serializes")
    }

    /// The plan's name.
    pub fn name(&self) -> &str {
        &self.spec.plan
    }

    /// The plan's currency.
    pub fn currency(&self) -> Currency {
        self.currency
    }

    /// The rounding mode of every invoice line.
    pub fn rounding(&self) -> RoundingMode {
        self.spec.rounding
    }

    /// The versions, ascending.
    pub fn versions(&self) -> &[PlanVersion] {
        &self.spec.versions
    }

    /// The validated document.
    pub fn spec(&self) -> &PlanSpec {
        &self.spec
    }

    /// A copy of the plan with `version` added, or replacing the version with the same number.
    /// `priced_versions` lists the versions that have priced usage (the ledger knows): replacing
    /// one of them is [`Error::VersionImmutable`]. The result is validated as a whole, so a new
    /// version must take effect after the existing ones.
    pub fn with_version(&self, version: PlanVersion, priced_versions: &[u32]) -> Result<Plan> {
        let mut spec = self.spec.clone();
        match spec
            .versions
            .iter_mut()
            .find(|existing| existing.version == version.version)
        {
            Some(existing) => {
                if priced_versions.contains(&version.version) {
                    return Err(Error::VersionImmutable {
                        version: version.version,
                    });
                }
                *existing = version;
            }
            None => spec.versions.push(version),
        }
        Plan::from_spec(spec)
    }

    pub(crate) fn compiled(&self) -> &[CompiledVersion] {
        &self.compiled
    }
}

/// A version ready to price.
#[derive(Clone, Debug, PartialEq)]
pub(crate) struct CompiledVersion {
    pub(crate) number: u32,
    pub(crate) effective_from: UnixMillis,
    pub(crate) minimum_commitment: Option<Decimal>,
    pub(crate) flat_fees: Vec<(String, Decimal)>,
    pub(crate) meters: MeterTable,
    pub(crate) overrides: HashMap<String, MeterTable>,
}

pub(crate) type MeterTable = [Option<CompiledCharge>; Meter::ALL.len()];

#[derive(Clone, Debug, PartialEq)]
pub(crate) struct CompiledCharge {
    pub(crate) free_allowance: u128,
    pub(crate) unit_size: u128,
    pub(crate) unit_name: String,
    pub(crate) model: CompiledModel,
}

#[derive(Clone, Debug, PartialEq)]
pub(crate) enum CompiledModel {
    PerUnit {
        unit_price: Decimal,
    },
    Package {
        size: u128,
        price: Decimal,
        round: PackageRounding,
    },
    Graduated(Vec<CompiledTier>),
    Volume(Vec<CompiledTier>),
}

#[derive(Clone, Debug, PartialEq)]
pub(crate) struct CompiledTier {
    /// Raw units before this tier (exclusive lower bound on the 1-based unit axis).
    pub(crate) after: u128,
    pub(crate) up_to: Option<u128>,
    pub(crate) unit_price: Decimal,
    pub(crate) flat_amount: Decimal,
}

/// `.name` when `name` is a plain identifier, `["name"]` otherwise.
pub(crate) fn key_path(name: &str) -> String {
    let plain = !name.is_empty()
        && name
            .bytes()
            .all(|byte| byte.is_ascii_alphanumeric() || byte == b'_' || byte == b'-');
    if plain {
        format!(".{name}")
    } else {
        format!("[{name:?}]")
    }
}

fn check_name(problems: &mut Vec<Problem>, path: &str, name: &str) {
    if name.trim().is_empty() {
        problems.push(Problem::new(path, "must not be empty"));
    } else if name.len() > NAME_BYTES_MAX {
        problems.push(Problem::new(
            path,
            format!(
                "is {} bytes long; the limit is {NAME_BYTES_MAX}",
                name.len()
            ),
        ));
    }
}

fn check_price(problems: &mut Vec<Problem>, path: &str, price: Decimal) {
    if price.is_sign_negative() && !price.is_zero() {
        problems.push(Problem::new(path, format!("price {price} is negative")));
    }
    let places = price.normalize().scale();
    if places > PRICE_DECIMAL_PLACES_MAX {
        problems.push(Problem::new(
            path,
            format!(
                "price {price} has {places} decimal places; at most {PRICE_DECIMAL_PLACES_MAX} are allowed"
            ),
        ));
    }
    if price > Decimal::from(PRICE_MAX) {
        problems.push(Problem::new(
            path,
            format!("price {price} exceeds the limit of {PRICE_MAX}"),
        ));
    }
}

fn check_money(
    problems: &mut Vec<Problem>,
    path: &str,
    amount: Decimal,
    currency: Option<Currency>,
) {
    if amount.is_sign_negative() && !amount.is_zero() {
        problems.push(Problem::new(path, format!("amount {amount} is negative")));
    }
    if amount > Decimal::from(PRICE_MAX) {
        problems.push(Problem::new(
            path,
            format!("amount {amount} exceeds the limit of {PRICE_MAX}"),
        ));
    }
    if let Some(currency) = currency {
        let places = amount.normalize().scale();
        if places > currency.minor_units() {
            problems.push(Problem::new(
                path,
                format!(
                    "amount {amount} has {places} decimal places; {} has {} minor units",
                    currency.code(),
                    currency.minor_units()
                ),
            ));
        }
    }
}

fn validate_versions(
    problems: &mut Vec<Problem>,
    spec: &PlanSpec,
    currency: Option<Currency>,
) -> Vec<CompiledVersion> {
    if spec.versions.is_empty() {
        problems.push(Problem::new(
            "versions",
            "a plan needs at least one version",
        ));
    }
    if spec.versions.len() > VERSIONS_MAX {
        problems.push(Problem::new(
            "versions",
            format!(
                "{} versions exceed the limit of {VERSIONS_MAX}",
                spec.versions.len()
            ),
        ));
        return Vec::new();
    }
    let mut compiled = Vec::with_capacity(spec.versions.len());
    for (index, version) in spec.versions.iter().enumerate() {
        let path = format!("versions[{index}]");
        if index > 0 {
            let previous = &spec.versions[index - 1];
            if version.version <= previous.version {
                problems.push(Problem::new(
                    format!("{path}.version"),
                    format!(
                        "version {} does not follow version {}: versions must ascend",
                        version.version, previous.version
                    ),
                ));
            }
            if version.effective_from <= previous.effective_from {
                problems.push(Problem::new(
                    format!("{path}.effective_from_ms"),
                    format!(
                        "{} is not after the previous version's {}: versions must take effect in order",
                        version.effective_from.0, previous.effective_from.0
                    ),
                ));
            }
        }
        compiled.push(validate_version(problems, &path, version, currency));
    }
    compiled
}

fn validate_version(
    problems: &mut Vec<Problem>,
    path: &str,
    version: &PlanVersion,
    currency: Option<Currency>,
) -> CompiledVersion {
    if version.meters.is_empty()
        && version.overrides.is_empty()
        && version.flat_fees.is_empty()
        && version.minimum_commitment.is_none()
    {
        problems.push(Problem::new(
            path,
            "the version prices nothing: add meters, flat fees or a minimum commitment",
        ));
    }
    if let Some(minimum) = version.minimum_commitment {
        check_money(
            problems,
            &format!("{path}.minimum_commitment"),
            minimum,
            currency,
        );
    }
    if version.flat_fees.len() > FLAT_FEES_MAX {
        problems.push(Problem::new(
            format!("{path}.flat_fees"),
            format!(
                "{} flat fees exceed the limit of {FLAT_FEES_MAX}",
                version.flat_fees.len()
            ),
        ));
    }
    let mut flat_fees = Vec::with_capacity(version.flat_fees.len());
    for (index, fee) in version.flat_fees.iter().enumerate() {
        let fee_path = format!("{path}.flat_fees[{index}]");
        check_name(problems, &format!("{fee_path}.name"), &fee.name);
        if version.flat_fees[..index]
            .iter()
            .any(|other| other.name == fee.name)
        {
            problems.push(Problem::new(
                format!("{fee_path}.name"),
                format!("duplicate flat fee name \"{}\"", fee.name),
            ));
        }
        check_money(
            problems,
            &format!("{fee_path}.amount"),
            fee.amount,
            currency,
        );
        flat_fees.push((fee.name.clone(), fee.amount.normalize()));
    }
    let meters = validate_table(problems, &format!("{path}.meters"), &version.meters);
    if version.overrides.len() > OVERRIDES_MAX {
        problems.push(Problem::new(
            format!("{path}.overrides"),
            format!(
                "{} functions exceed the limit of {OVERRIDES_MAX}",
                version.overrides.len()
            ),
        ));
    }
    let mut overrides = HashMap::with_capacity(version.overrides.len());
    for (function, table) in &version.overrides {
        let function_path = format!("{path}.overrides{}", key_path(function));
        check_name(problems, &function_path, function);
        if table.is_empty() {
            problems.push(Problem::new(
                &function_path,
                "an override must price at least one meter",
            ));
        }
        let compiled = validate_table(problems, &function_path, table);
        overrides.insert(function.clone(), compiled);
    }
    CompiledVersion {
        number: version.version,
        effective_from: version.effective_from,
        minimum_commitment: version
            .minimum_commitment
            .map(|minimum| minimum.normalize()),
        flat_fees,
        meters,
        overrides,
    }
}

fn validate_table(
    problems: &mut Vec<Problem>,
    path: &str,
    table: &BTreeMap<String, MeterCharge>,
) -> MeterTable {
    let mut compiled: MeterTable = Default::default();
    for (name, charge) in table {
        let charge_path = format!("{path}{}", key_path(name));
        match name.parse::<Meter>() {
            Ok(meter) => {
                compiled[meter as usize] = validate_charge(problems, &charge_path, meter, charge);
            }
            Err(unknown) => problems.push(Problem::new(charge_path, unknown.to_string())),
        }
    }
    compiled
}

fn validate_charge(
    problems: &mut Vec<Problem>,
    path: &str,
    meter: Meter,
    charge: &MeterCharge,
) -> Option<CompiledCharge> {
    let before = problems.len();
    let models = [
        charge.per_unit.is_some(),
        charge.package.is_some(),
        charge.graduated.is_some(),
        charge.volume.is_some(),
    ];
    let count = models.iter().filter(|present| **present).count();
    if count != 1 {
        problems.push(Problem::new(
            path,
            format!("needs exactly one of per_unit, package, graduated, volume; found {count}"),
        ));
        return None;
    }
    let (unit_size, unit_name) = match &charge.unit {
        Some(unit) => {
            if unit.size == 0 || unit.size > UNIT_SIZE_MAX {
                problems.push(Problem::new(
                    format!("{path}.unit.size"),
                    format!(
                        "unit size {} must be between 1 and {UNIT_SIZE_MAX}",
                        unit.size
                    ),
                ));
            }
            if let Some(name) = &unit.name {
                check_name(problems, &format!("{path}.unit.name"), name);
            }
            let name = unit
                .name
                .clone()
                .unwrap_or_else(|| format!("{} {}s", unit.size, meter.base_unit()));
            (unit.size, name)
        }
        None => (1, meter.base_unit().to_owned()),
    };
    let model = if let Some(per_unit) = &charge.per_unit {
        check_price(
            problems,
            &format!("{path}.per_unit.unit_price"),
            per_unit.unit_price,
        );
        CompiledModel::PerUnit {
            unit_price: per_unit.unit_price.normalize(),
        }
    } else if let Some(package) = &charge.package {
        if charge.unit.is_some() {
            problems.push(Problem::new(
                format!("{path}.unit"),
                "a package price has no unit: package.size counts raw units",
            ));
        }
        if package.size == 0 || package.size > UNIT_SIZE_MAX {
            problems.push(Problem::new(
                format!("{path}.package.size"),
                format!(
                    "package size {} must be between 1 and {UNIT_SIZE_MAX}",
                    package.size
                ),
            ));
        }
        check_price(problems, &format!("{path}.package.price"), package.price);
        CompiledModel::Package {
            size: package.size.max(1),
            price: package.price.normalize(),
            round: package.round,
        }
    } else {
        let (tiers, field, graduated) = match (&charge.graduated, &charge.volume) {
            (Some(tiers), _) => (tiers, "graduated", true),
            (None, Some(tiers)) => (tiers, "volume", false),
            (None, None) => unreachable!("exactly one model is present"),
        };
        let tiers = validate_tiers(
            problems,
            &format!("{path}.{field}"),
            tiers,
            charge.free_allowance,
            &format!("{path}.free_allowance"),
        );
        if graduated {
            CompiledModel::Graduated(tiers)
        } else {
            CompiledModel::Volume(tiers)
        }
    };
    if problems.len() != before {
        return None;
    }
    Some(CompiledCharge {
        free_allowance: charge.free_allowance,
        unit_size,
        unit_name,
        model,
    })
}

fn validate_tiers(
    problems: &mut Vec<Problem>,
    path: &str,
    tiers: &[Tier],
    free_allowance: u128,
    free_path: &str,
) -> Vec<CompiledTier> {
    if tiers.is_empty() {
        problems.push(Problem::new(path, "needs at least one tier"));
        return Vec::new();
    }
    if tiers.len() > TIERS_MAX {
        problems.push(Problem::new(
            path,
            format!("{} tiers exceed the limit of {TIERS_MAX}", tiers.len()),
        ));
        return Vec::new();
    }
    let mut compiled = Vec::with_capacity(tiers.len());
    let mut after = 0u128;
    for (index, tier) in tiers.iter().enumerate() {
        let tier_path = format!("{path}[{index}]");
        let last = index + 1 == tiers.len();
        match (tier.up_to, last) {
            (None, false) => problems.push(Problem::new(
                format!("{tier_path}.up_to"),
                "only the last tier may be unbounded",
            )),
            (Some(up_to), true) => problems.push(Problem::new(
                format!("{tier_path}.up_to"),
                format!(
                    "the last tier must be unbounded (up_to null) so every quantity has a price; found {up_to}"
                ),
            )),
            (Some(up_to), false) if up_to <= after => problems.push(Problem::new(
                format!("{tier_path}.up_to"),
                if index == 0 {
                    "the first tier's up_to must be at least 1".to_owned()
                } else {
                    format!(
                        "{up_to} is not above the previous tier's up_to {after}: tiers must ascend without overlapping"
                    )
                },
            )),
            _ => {}
        }
        check_price(
            problems,
            &format!("{tier_path}.unit_price"),
            tier.unit_price,
        );
        if !tier.flat_amount.is_zero() {
            check_price(
                problems,
                &format!("{tier_path}.flat_amount"),
                tier.flat_amount,
            );
        }
        compiled.push(CompiledTier {
            after,
            up_to: tier.up_to,
            unit_price: tier.unit_price.normalize(),
            flat_amount: tier.flat_amount.normalize(),
        });
        if let Some(up_to) = tier.up_to {
            after = after.max(up_to);
        }
    }
    if let Some(first_up_to) = tiers[0].up_to
        && tiers.len() > 1
        && free_allowance >= first_up_to
    {
        problems.push(Problem::new(
            free_path,
            format!(
                "free allowance {free_allowance} covers the whole first tier (up_to {first_up_to}), so that tier can never be billed; lower the allowance or make the first tier free"
            ),
        ));
    }
    compiled
}

#[cfg(test)]
mod tests {
    use super::*;

    fn problems(json: &str) -> Vec<String> {
        match Plan::from_json(json) {
            Err(Error::InvalidPlan(problems)) => {
                problems.0.iter().map(ToString::to_string).collect()
            }
            other => panic!("expected invalid plan, got {other:?}"),
        }
    }

    #[test]
    fn key_paths_quote_unusual_names() {
        assert_eq!(key_path("ops"), ".ops");
        assert_eq!(key_path("my.fn"), "[\"my.fn\"]");
    }

    #[test]
    fn every_problem_is_listed_with_its_path() {
        let found = problems(
            r#"{"plan": "", "currency": "XYZ", "versions": [{"version": 1, "effective_from_ms": 0,
                "meters": {"cpu": {"per_unit": {"unit_price": "1"}},
                           "ops": {"per_unit": {"unit_price": "-1"}}}}]}"#,
        );
        assert_eq!(found.len(), 4, "{found:?}");
        assert!(found[0].starts_with("currency: unknown currency \"XYZ\""));
        assert_eq!(found[1], "plan: must not be empty");
        assert!(found[2].starts_with("versions[0].meters.cpu: unknown meter \"cpu\""));
        assert_eq!(
            found[3],
            "versions[0].meters.ops.per_unit.unit_price: price -1 is negative"
        );
    }
}

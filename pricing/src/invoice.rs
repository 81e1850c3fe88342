//! The priced invoice and its lines.

use std::fmt::Write as _;

use rust_decimal::Decimal;
use serde::{Deserialize, Serialize};

use crate::meter::{Meter, Period, UnixMillis};
use crate::money::{Currency, RoundingMode, decimal_string, quantity_string};
use crate::plan::PackageRounding;

/// What an invoice line charges for.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum LineKind {
    /// A per-unit meter charge.
    PerUnit,
    /// A package (block) meter charge.
    Package,
    /// A graduated-tier meter charge.
    Graduated,
    /// A volume-tier meter charge.
    Volume,
    /// A recurring flat fee.
    FlatFee,
    /// The shortfall below the minimum commitment.
    MinimumTrueUp,
}

/// One tier (or the single price of a per-unit or package line) as applied to a line.
/// Its exact amount is `quantity × unit_price / unit_size + flat_amount`, `unit_size` being the
/// line's (1 for package lines, whose quantity counts blocks).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AppliedTier {
    /// Tier number, from 1 (always 1 for per-unit and package lines).
    pub tier: u32,
    /// The tier covers period units after this one (0 for the first tier).
    #[serde(with = "quantity_string")]
    pub after: u128,
    /// Inclusive upper bound in raw units; none for the last tier.
    #[serde(with = "quantity_string::option")]
    pub up_to: Option<u128>,
    /// Raw units (blocks for a package line) of this line priced at this tier.
    #[serde(with = "quantity_string")]
    pub quantity: u128,
    /// Price per unit (per block for a package line).
    #[serde(with = "decimal_string")]
    pub unit_price: Decimal,
    /// Flat amount charged by this tier on this line (zero if none or charged elsewhere).
    #[serde(with = "decimal_string")]
    pub flat_amount: Decimal,
    /// `quantity × unit_price / unit_size + flat_amount`, unrounded.
    #[serde(with = "decimal_string")]
    pub amount_exact: Decimal,
}

/// How a package line counted its blocks.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AppliedPackage {
    /// Raw units per block.
    #[serde(with = "quantity_string")]
    pub size: u128,
    /// Whether partial blocks count.
    pub round: PackageRounding,
    /// Blocks charged on this line.
    #[serde(with = "quantity_string")]
    pub blocks: u128,
}

/// One invoice line. A usage line covers one meter, for one plan version, for either every
/// function without an override (`function` is none) or one overridden function.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct InvoiceLine {
    /// What the line charges for.
    pub kind: LineKind,
    /// The plan version whose prices apply.
    pub version: u32,
    /// The meter (usage lines only).
    pub meter: Option<Meter>,
    /// The function, when the line prices a per-function override.
    pub function: Option<String>,
    /// A one-line explanation for people.
    pub description: String,
    /// Usage priced by this line, in raw meter units.
    #[serde(with = "quantity_string")]
    pub quantity: u128,
    /// Usage of the same meter (and function, for an override) earlier in the period under
    /// previous versions: tiers and the free allowance count from here.
    #[serde(with = "quantity_string")]
    pub period_usage_before: u128,
    /// Raw units of `quantity` covered by the free allowance.
    #[serde(with = "quantity_string")]
    pub free_quantity: u128,
    /// `quantity - free_quantity`.
    #[serde(with = "quantity_string")]
    pub billed_quantity: u128,
    /// What a unit is called.
    pub unit_name: String,
    /// Raw units per priced unit (1 for package, flat and true-up lines).
    #[serde(with = "quantity_string")]
    pub unit_size: u128,
    /// How a package line counted blocks.
    pub package: Option<AppliedPackage>,
    /// The tiers applied, with their quantities and amounts.
    pub tiers: Vec<AppliedTier>,
    /// Sum of the tiers' exact amounts, unrounded. Exact whenever it fits in 28 significant
    /// digits; otherwise its last digit is rounded for display, and `amount` is still rounded
    /// from the exact fraction.
    #[serde(with = "decimal_string")]
    pub amount_exact: Decimal,
    /// `amount_exact` rounded once, to the currency's minor units with the plan's mode.
    #[serde(with = "decimal_string")]
    pub amount: Decimal,
}

/// Which version priced which part of the period.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VersionSpan {
    /// The version number.
    pub version: u32,
    /// Start of the part (inclusive).
    #[serde(rename = "from_ms")]
    pub from: UnixMillis,
    /// End of the part (exclusive).
    #[serde(rename = "to_ms")]
    pub to: UnixMillis,
}

/// A priced invoice: `total` is the sum of the lines' rounded `amount`s, exactly.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PricedInvoice {
    /// The plan's name.
    pub plan: String,
    /// The currency of every amount.
    pub currency: Currency,
    /// The rounding mode of every line.
    pub rounding: RoundingMode,
    /// The period priced.
    pub period: Period,
    /// The versions in effect during the period, in order.
    pub versions: Vec<VersionSpan>,
    /// Usage lines (by version, meter, function), then flat fees, then the minimum true-up.
    pub lines: Vec<InvoiceLine>,
    /// The minimum commitment of the version in effect at the period's start, if any.
    #[serde(with = "decimal_string::option")]
    pub minimum_commitment: Option<Decimal>,
    /// Sum of the usage and flat-fee lines.
    #[serde(with = "decimal_string")]
    pub subtotal: Decimal,
    /// Amount of the minimum-commitment true-up line (zero when there is none).
    #[serde(with = "decimal_string")]
    pub minimum_true_up: Decimal,
    /// Sum of all lines: `subtotal + minimum_true_up`.
    #[serde(with = "decimal_string")]
    pub total: Decimal,
}

fn group_digits(value: u128) -> String {
    let digits = value.to_string();
    let mut out = String::with_capacity(digits.len() + digits.len() / 3);
    for (index, digit) in digits.chars().enumerate() {
        if index > 0 && (digits.len() - index).is_multiple_of(3) {
            out.push(',');
        }
        out.push(digit);
    }
    out
}

impl PricedInvoice {
    /// The versions this invoice priced usage with (the ledger marks them immutable).
    pub fn versions_used(&self) -> Vec<u32> {
        let mut used: Vec<u32> = self.lines.iter().map(|line| line.version).collect();
        used.sort_unstable();
        used.dedup();
        used
    }

    /// A plain-text table a person can check by hand: each line with its tiers, then subtotal,
    /// true-up and total.
    pub fn to_table(&self) -> String {
        let mut out = String::new();
        let _ = writeln!(
            out,
            "plan {}  period [{}, {})  currency {} ({} minor units)  rounding {} per line",
            self.plan,
            self.period.start.0,
            self.period.end.0,
            self.currency.code(),
            self.currency.minor_units(),
            self.rounding.as_str()
        );
        for span in &self.versions {
            let _ = writeln!(
                out,
                "version {} prices [{}, {})",
                span.version, span.from.0, span.to.0
            );
        }
        let _ = writeln!(
            out,
            "{:>4}  {:>3}  {:<20} {:<16} {:>22} {:>22} {:>16}",
            "line", "ver", "meter/item", "function", "quantity", "exact", "amount"
        );
        for (index, line) in self.lines.iter().enumerate() {
            let item = match line.meter {
                Some(meter) => meter.as_str().to_owned(),
                None => line.description.clone(),
            };
            let _ = writeln!(
                out,
                "{:>4}  {:>3}  {:<20} {:<16} {:>22} {:>22} {:>16}",
                index + 1,
                line.version,
                item,
                line.function.as_deref().unwrap_or("-"),
                group_digits(line.quantity),
                line.amount_exact.to_string(),
                line.amount.to_string()
            );
            if line.meter.is_some() {
                let _ = writeln!(
                    out,
                    "        {}; period usage before {}, free {}, billed {}; unit {} = {} raw",
                    line.description,
                    group_digits(line.period_usage_before),
                    group_digits(line.free_quantity),
                    group_digits(line.billed_quantity),
                    line.unit_name,
                    group_digits(line.unit_size)
                );
                if let Some(package) = &line.package {
                    let _ = writeln!(
                        out,
                        "        blocks of {} rounded {:?}: {} block(s)",
                        group_digits(package.size),
                        package.round,
                        group_digits(package.blocks)
                    );
                }
                for tier in &line.tiers {
                    let bound = match tier.up_to {
                        Some(up_to) => group_digits(up_to),
                        None => "inf".to_owned(),
                    };
                    let _ = writeln!(
                        out,
                        "        tier {} ({}, {}]: {} × {} / {} + {} = {}",
                        tier.tier,
                        group_digits(tier.after),
                        bound,
                        group_digits(tier.quantity),
                        tier.unit_price,
                        group_digits(line.unit_size),
                        tier.flat_amount,
                        tier.amount_exact
                    );
                }
            }
        }
        let _ = writeln!(out, "subtotal {} {}", self.subtotal, self.currency.code());
        if let Some(minimum) = self.minimum_commitment {
            let _ = writeln!(
                out,
                "minimum commitment {} {}, true-up {}",
                minimum,
                self.currency.code(),
                self.minimum_true_up
            );
        }
        let _ = writeln!(
            out,
            "total {} {} (sum of the rounded lines)",
            self.total,
            self.currency.code()
        );
        out
    }
}

#[cfg(test)]
mod tests {
    use super::group_digits;

    #[test]
    fn digits_are_grouped_by_thousands() {
        assert_eq!(group_digits(0), "0");
        assert_eq!(group_digits(999), "999");
        assert_eq!(group_digits(1000), "1,000");
        assert_eq!(group_digits(1234567), "1,234,567");
    }
}

//! `price`: usage aggregates × plan versions → invoice lines.

use std::collections::HashMap;

use rust_decimal::Decimal;

use crate::error::{Error, Result, overflow};
use crate::invoice::{
    AppliedPackage, AppliedTier, InvoiceLine, LineKind, PricedInvoice, VersionSpan,
};
use crate::meter::{Meter, Period, UnixMillis};
use crate::money::{add_exact, mul_exact, quotient_for_display, round_ratio};
use crate::plan::{CompiledCharge, CompiledModel, CompiledVersion, PackageRounding, Plan};
use crate::usage::UsageAggregate;
use crate::{LINES_MAX, USAGE_AGGREGATES_MAX};

/// Prices `usage` over `period` with `plan`.
///
/// Each aggregate is priced by the version in effect at its timestamp. Usage is grouped per
/// (meter, function) when the version overrides that meter for that function, and per meter
/// otherwise; each group and version gives one line. Tiers, packages and free allowances count
/// the group's usage over the whole period, in version order. Flat fees and the minimum
/// commitment come from the version in effect at the period's start (or the first version to
/// take effect inside it). Meters a version does not price cost nothing.
///
/// Errors: an empty period, an aggregate outside the period or before the first version, too
/// many aggregates or lines, and any arithmetic overflow.
pub fn price(plan: &Plan, usage: &[UsageAggregate], period: Period) -> Result<PricedInvoice> {
    if period.start >= period.end {
        return Err(Error::EmptyPeriod {
            start: period.start,
            end: period.end,
        });
    }
    if usage.len() > USAGE_AGGREGATES_MAX {
        return Err(Error::TooMuchUsage {
            count: usage.len(),
            max: USAGE_AGGREGATES_MAX,
        });
    }
    let versions = plan.compiled();
    assert!(!versions.is_empty(), "a validated plan has a version");
    let spans = version_spans(versions, period);
    let span_first = spans.first().map_or(0, |span| span.version_index);

    // Sum the usage per group and per span. A group is (meter, function) when the version
    // overrides that meter for that function, (meter, shared) otherwise. One hash lookup per
    // aggregate: the function's state caches its override tables and group ids.
    let meter_count = Meter::ALL.len();
    let mut functions: HashMap<&str, FunctionState<'_>> = HashMap::new();
    let mut shared_groups: Vec<Option<usize>> = vec![None; meter_count];
    let mut group_count = 0usize;
    let mut sums: Vec<u128> = Vec::new();
    for (index, aggregate) in usage.iter().enumerate() {
        if !period.contains(aggregate.at) {
            return Err(Error::UsageOutsidePeriod {
                index,
                at: aggregate.at,
                start: period.start,
                end: period.end,
            });
        }
        let in_effect = versions.partition_point(|version| version.effective_from <= aggregate.at);
        if in_effect == 0 {
            return Err(Error::NoVersionInEffect {
                index,
                at: aggregate.at,
                first: versions[0].effective_from,
            });
        }
        let version_index = in_effect - 1;
        let span_index = version_index - span_first;
        assert!(span_index < spans.len(), "the version in effect has a span");
        let state = functions
            .entry(aggregate.function.as_str())
            .or_insert_with(|| FunctionState {
                tables: spans
                    .iter()
                    .map(|span| {
                        versions[span.version_index]
                            .overrides
                            .get(&aggregate.function)
                    })
                    .collect(),
                groups: vec![None; meter_count],
            });
        let meter_index = aggregate.meter as usize;
        let overridden = state.tables[span_index].is_some_and(|table| table[meter_index].is_some());
        let slot = if overridden {
            &mut state.groups[meter_index]
        } else {
            &mut shared_groups[meter_index]
        };
        let group = *slot.get_or_insert_with(|| {
            group_count += 1;
            sums.resize(group_count * spans.len(), 0);
            group_count - 1
        });
        let sum = &mut sums[group * spans.len() + span_index];
        *sum = sum.checked_add(aggregate.quantity).ok_or_else(|| {
            overflow(format!(
                "summing {} usage of function {}",
                aggregate.meter, aggregate.function
            ))
        })?;
    }
    // Groups in invoice order: by meter, the shared group first, then functions by name.
    let mut named: Vec<(&str, &FunctionState<'_>)> = functions
        .iter()
        .map(|(name, state)| (*name, state))
        .collect();
    named.sort_unstable_by_key(|(name, _)| *name);
    let mut keys: Vec<GroupKey<'_, '_>> = Vec::with_capacity(group_count);
    for meter in Meter::ALL {
        if let Some(group) = shared_groups[meter as usize] {
            keys.push((meter, None, group));
        }
        for (name, state) in &named {
            if let Some(group) = state.groups[meter as usize] {
                keys.push((meter, Some((*name, *state)), group));
            }
        }
    }

    let places = plan.currency().minor_units();
    let strategy = plan.rounding().strategy();
    let mut lines: Vec<InvoiceLine> = Vec::with_capacity(keys.len());
    for (meter, owner, group) in keys {
        let function = owner.map(|(name, _)| name);
        let sums = &sums[group * spans.len()..(group + 1) * spans.len()];
        let period_total = sums.iter().try_fold(0u128, |total, quantity| {
            total
                .checked_add(*quantity)
                .ok_or_else(|| overflow(format!("summing {meter} usage over the period")))
        })?;
        let mut before = 0u128;
        for (span_index, &quantity) in sums.iter().enumerate() {
            if quantity == 0 {
                continue;
            }
            let after = before + quantity; // cannot overflow: bounded by period_total
            let version = &versions[span_first + span_index];
            let charge = match owner {
                Some((_, state)) => {
                    state.tables[span_index].and_then(|table| table[meter as usize].as_ref())
                }
                None => version.meters[meter as usize].as_ref(),
            };
            if let Some(charge) = charge {
                if lines.len() >= LINES_MAX {
                    return Err(Error::TooManyLines { max: LINES_MAX });
                }
                let segment = Segment {
                    meter,
                    function,
                    version: version.number,
                    before,
                    after,
                    period_total,
                };
                lines.push(price_segment(&segment, charge, places, strategy)?);
            }
            before = after;
        }
    }
    // Version-major order; version numbers ascend with time, and the sort is stable.
    if spans.len() > 1 {
        lines.sort_by_key(|line| line.version);
    }

    // Flat fees and the minimum commitment of the version in effect at the period's start.
    let head = spans.first().map(|span| &versions[span.version_index]);
    if let Some(version) = head {
        for (name, amount) in &version.flat_fees {
            let rounded = round_ratio(*amount, 1, places, strategy, &|| {
                format!("rounding flat fee {name}")
            })?;
            lines.push(fixed_line(
                LineKind::FlatFee,
                version.number,
                name.clone(),
                *amount,
                rounded,
            ));
        }
    }
    let zero = Decimal::new(0, places);
    let mut subtotal = zero;
    for line in &lines {
        subtotal = add_exact(subtotal, line.amount, &|| {
            "adding up the subtotal".to_owned()
        })?;
    }
    let minimum_commitment = match head.and_then(|version| version.minimum_commitment) {
        // Validated to have at most the currency's minor units: this only sets the scale.
        Some(minimum) => Some(round_ratio(minimum, 1, places, strategy, &|| {
            "scaling the minimum commitment".to_owned()
        })?),
        None => None,
    };
    let mut minimum_true_up = zero;
    if let (Some(version), Some(minimum)) = (head, minimum_commitment)
        && minimum > subtotal
    {
        let shortfall = minimum
            .checked_sub(subtotal)
            .ok_or_else(|| overflow("computing the minimum true-up"))?;
        minimum_true_up = round_ratio(shortfall, 1, places, strategy, &|| {
            "rounding the minimum true-up".to_owned()
        })?;
        lines.push(fixed_line(
            LineKind::MinimumTrueUp,
            version.number,
            format!("minimum commitment {minimum} minus subtotal {subtotal}"),
            shortfall,
            minimum_true_up,
        ));
    }
    let total = add_exact(subtotal, minimum_true_up, &|| {
        "adding up the total".to_owned()
    })?;
    Ok(PricedInvoice {
        plan: plan.name().to_owned(),
        currency: plan.currency(),
        rounding: plan.rounding(),
        period,
        versions: spans
            .iter()
            .map(|span| VersionSpan {
                version: versions[span.version_index].number,
                from: span.from,
                to: span.to,
            })
            .collect(),
        lines,
        minimum_commitment,
        subtotal,
        minimum_true_up,
        total,
    })
}

/// A group in invoice order: its meter, the overriding function (if any) and its id.
type GroupKey<'n, 's> = (Meter, Option<(&'n str, &'s FunctionState<'n>)>, usize);

struct FunctionState<'a> {
    /// The function's override table in each span's version, if any.
    tables: Vec<Option<&'a crate::plan::MeterTable>>,
    /// The group id of each meter this function overrides.
    groups: Vec<Option<usize>>,
}

struct Span {
    version_index: usize,
    from: UnixMillis,
    to: UnixMillis,
}

/// The versions in effect during `period`, each with the part of the period it covers.
fn version_spans(versions: &[CompiledVersion], period: Period) -> Vec<Span> {
    let at_start = versions.partition_point(|version| version.effective_from <= period.start);
    let first = at_start.saturating_sub(1);
    let mut spans = Vec::new();
    for (index, version) in versions.iter().enumerate().skip(first) {
        if version.effective_from >= period.end {
            break;
        }
        let to = versions
            .get(index + 1)
            .map_or(period.end, |next| next.effective_from.min(period.end));
        spans.push(Span {
            version_index: index,
            from: version.effective_from.max(period.start),
            to,
        });
    }
    spans
}

/// One group's usage under one version: units `(before, after]` of the period.
struct Segment<'a> {
    meter: Meter,
    function: Option<&'a str>,
    version: u32,
    before: u128,
    after: u128,
    period_total: u128,
}

fn price_segment(
    segment: &Segment<'_>,
    charge: &CompiledCharge,
    places: u32,
    strategy: rust_decimal::RoundingStrategy,
) -> Result<InvoiceLine> {
    let context = || match segment.function {
        Some(function) => format!(
            "pricing {} of function {} under version {}",
            segment.meter, function, segment.version
        ),
        None => format!(
            "pricing {} under version {}",
            segment.meter, segment.version
        ),
    };
    let free = charge.free_allowance;
    // Billed units: (billed_before, billed_after] once the allowance is taken out.
    let billed_before = segment.before.max(free);
    let billed_after = segment.after.max(free);
    let billed = billed_after - billed_before;
    let quantity = segment.after - segment.before;
    // Sized exactly: a Vec's first push would reserve room for four tiers, and a 10,000-line
    // invoice would then spend most of its memory (and page faults) on empty slots.
    let tier_capacity = match &charge.model {
        CompiledModel::Graduated(compiled) => compiled
            .iter()
            .filter(|tier| {
                tier.after.max(billed_before) < tier.up_to.unwrap_or(u128::MAX).min(billed_after)
            })
            .count(),
        _ => usize::from(billed > 0),
    };
    let mut tiers = Vec::with_capacity(tier_capacity);
    let mut package = None;
    let mut numerator = Decimal::ZERO;
    let mut unit_size = charge.unit_size;
    let mut unit_name = charge.unit_name.clone();
    let kind = match &charge.model {
        CompiledModel::PerUnit { unit_price } => {
            if billed > 0 {
                numerator = mul_exact(*unit_price, billed, &context)?;
                tiers.push(AppliedTier {
                    tier: 1,
                    after: 0,
                    up_to: None,
                    quantity: billed,
                    unit_price: *unit_price,
                    flat_amount: Decimal::ZERO,
                    amount_exact: quotient_for_display(numerator, unit_size, &context)?,
                });
            }
            LineKind::PerUnit
        }
        CompiledModel::Package { size, price, round } => {
            let blocks_at = |position: u128| match round {
                PackageRounding::Up => (position - free).div_ceil(*size),
                PackageRounding::Down => (position - free) / size,
            };
            let blocks = blocks_at(billed_after) - blocks_at(billed_before);
            unit_size = 1;
            unit_name = format!("block of {size} {}", charge.unit_name);
            if blocks > 0 {
                numerator = mul_exact(*price, blocks, &context)?;
                tiers.push(AppliedTier {
                    tier: 1,
                    after: 0,
                    up_to: None,
                    quantity: blocks,
                    unit_price: *price,
                    flat_amount: Decimal::ZERO,
                    amount_exact: numerator,
                });
            }
            package = Some(AppliedPackage {
                size: *size,
                round: *round,
                blocks,
            });
            LineKind::Package
        }
        CompiledModel::Graduated(compiled) => {
            for (index, tier) in compiled.iter().enumerate() {
                let low = tier.after.max(billed_before);
                let high = tier.up_to.unwrap_or(u128::MAX).min(billed_after);
                if high <= low {
                    continue;
                }
                let tier_quantity = high - low;
                // The tier's flat amount belongs to the line holding its first billed unit.
                let flat = if low == tier.after.max(free) {
                    tier.flat_amount
                } else {
                    Decimal::ZERO
                };
                let tier_numerator = add_exact(
                    mul_exact(tier.unit_price, tier_quantity, &context)?,
                    mul_exact(flat, unit_size, &context)?,
                    &context,
                )?;
                numerator = add_exact(numerator, tier_numerator, &context)?;
                tiers.push(AppliedTier {
                    tier: u32::try_from(index + 1).expect("tiers are bounded by TIERS_MAX"),
                    after: tier.after,
                    up_to: tier.up_to,
                    quantity: tier_quantity,
                    unit_price: tier.unit_price,
                    flat_amount: flat,
                    amount_exact: quotient_for_display(tier_numerator, unit_size, &context)?,
                });
            }
            LineKind::Graduated
        }
        CompiledModel::Volume(compiled) => {
            let index = compiled
                .iter()
                .position(|tier| tier.up_to.is_none_or(|up_to| segment.period_total <= up_to))
                .expect("the last tier is unbounded");
            let tier = &compiled[index];
            if billed > 0 {
                // The flat amount belongs to the line holding the period's last unit.
                let holds_last = segment.after == segment.period_total;
                let flat = if holds_last {
                    tier.flat_amount
                } else {
                    Decimal::ZERO
                };
                numerator = add_exact(
                    mul_exact(tier.unit_price, billed, &context)?,
                    mul_exact(flat, unit_size, &context)?,
                    &context,
                )?;
                tiers.push(AppliedTier {
                    tier: u32::try_from(index + 1).expect("tiers are bounded by TIERS_MAX"),
                    after: tier.after,
                    up_to: tier.up_to,
                    quantity: billed,
                    unit_price: tier.unit_price,
                    flat_amount: flat,
                    amount_exact: quotient_for_display(numerator, unit_size, &context)?,
                });
            }
            LineKind::Volume
        }
    };
    let amount_exact = match tiers.as_slice() {
        [] => Decimal::ZERO,
        [only] => only.amount_exact,
        _ => quotient_for_display(numerator, unit_size, &context)?,
    };
    let amount = round_ratio(numerator, unit_size, places, strategy, &context)?;
    let description = match segment.function {
        Some(function) => format!(
            "{} for function {} (override, version {})",
            segment.meter, function, segment.version
        ),
        None => format!("{} (version {})", segment.meter, segment.version),
    };
    Ok(InvoiceLine {
        kind,
        version: segment.version,
        meter: Some(segment.meter),
        function: segment.function.map(str::to_owned),
        description,
        quantity,
        period_usage_before: segment.before,
        free_quantity: quantity - billed,
        billed_quantity: billed,
        unit_name,
        unit_size,
        package,
        tiers,
        amount_exact,
        amount,
    })
}

fn fixed_line(
    kind: LineKind,
    version: u32,
    description: String,
    amount_exact: Decimal,
    amount: Decimal,
) -> InvoiceLine {
    InvoiceLine {
        kind,
        version,
        meter: None,
        function: None,
        description,
        quantity: 1,
        period_usage_before: 0,
        free_quantity: 0,
        billed_quantity: 1,
        unit_name: "period".to_owned(),
        unit_size: 1,
        package: None,
        tiers: Vec::new(),
        amount_exact,
        amount,
    }
}

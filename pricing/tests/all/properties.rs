//! Properties of `price` over generated plans and usage.

use std::collections::BTreeMap;

use proptest::prelude::*;
use tally_pricing::{
    Decimal, Meter, MeterCharge, Package, PackageRounding, PerUnit, Period, Plan, PlanSpec,
    PlanVersion, PricedInvoice, RoundingMode, Tier, Unit, UnixMillis, UsageAggregate, price,
};

const PERIOD: Period = Period::new(1_000, 2_000);
const FUNCTIONS: [&str; 3] = ["a", "b", "c"];

fn decimal(mantissa: i64, scale: u32) -> Decimal {
    Decimal::new(mantissa, scale)
}

fn price_strategy() -> impl Strategy<Value = Decimal> {
    (0i64..1_000_000, 0u32..=12).prop_map(|(mantissa, scale)| decimal(mantissa, scale))
}

fn unit_strategy() -> impl Strategy<Value = Option<Unit>> {
    prop_oneof![
        Just(None),
        (1u32..=12).prop_map(|power| Some(Unit {
            size: 10u128.pow(power),
            name: None
        })),
        Just(Some(Unit {
            size: 1 << 30,
            name: Some("GiB".to_owned())
        })),
    ]
}

/// Flat amounts in cents or whole units: a tier's flat amount is multiplied by the unit size in
/// the exact numerator, so sub-cent flat amounts on huge units overflow (an error, tested apart).
fn flat_strategy() -> impl Strategy<Value = Decimal> {
    (0i64..1_000_000).prop_map(|cents| decimal(cents, 2))
}

fn tiers_strategy() -> impl Strategy<Value = Vec<Tier>> {
    prop::collection::vec((1u128..1_000_000, price_strategy(), flat_strategy()), 1..5).prop_map(
        |steps| {
            let mut bound = 0u128;
            let count = steps.len();
            steps
                .into_iter()
                .enumerate()
                .map(|(index, (step, unit_price, flat))| {
                    bound += step;
                    Tier {
                        up_to: (index + 1 < count).then_some(bound),
                        unit_price,
                        flat_amount: flat,
                    }
                })
                .collect()
        },
    )
}

/// The four charge models, each valid.
fn charge_strategy() -> impl Strategy<Value = MeterCharge> {
    let free = prop_oneof![Just(0u128), 0u128..1_000];
    prop_oneof![
        (free.clone(), unit_strategy(), price_strategy()).prop_map(|(free, unit, unit_price)| {
            MeterCharge {
                free_allowance: free,
                unit,
                per_unit: Some(PerUnit { unit_price }),
                ..MeterCharge::default()
            }
        }),
        (free.clone(), 1u128..10_000, price_strategy(), any::<bool>()).prop_map(
            |(free, size, price, up)| MeterCharge {
                free_allowance: free,
                package: Some(Package {
                    size,
                    price,
                    round: if up {
                        PackageRounding::Up
                    } else {
                        PackageRounding::Down
                    },
                }),
                ..MeterCharge::default()
            }
        ),
        (unit_strategy(), tiers_strategy(), any::<bool>()).prop_map(|(unit, tiers, graduated)| {
            let mut charge = MeterCharge {
                unit,
                ..MeterCharge::default()
            };
            if graduated {
                charge.graduated = Some(tiers);
            } else {
                charge.volume = Some(tiers);
            }
            charge
        }),
    ]
}

fn rounding_strategy() -> impl Strategy<Value = RoundingMode> {
    prop_oneof![
        Just(RoundingMode::HalfEven),
        Just(RoundingMode::HalfUp),
        Just(RoundingMode::HalfAwayFromZero)
    ]
}

fn currency_strategy() -> impl Strategy<Value = &'static str> {
    prop::sample::select(vec!["USD", "EUR", "JPY", "KRW", "BHD", "KWD", "CHF", "GBP"])
}

fn plan_of(
    currency: &str,
    rounding: RoundingMode,
    versions: Vec<(i64, BTreeMap<String, MeterCharge>)>,
    minimum: Option<Decimal>,
) -> Result<Plan, tally_pricing::Error> {
    Plan::from_spec(PlanSpec {
        plan: "generated".to_owned(),
        description: None,
        currency: currency.to_owned(),
        rounding,
        versions: versions
            .into_iter()
            .enumerate()
            .map(|(index, (from, meters))| PlanVersion {
                version: index as u32 + 1,
                effective_from: UnixMillis(from),
                description: None,
                minimum_commitment: minimum,
                flat_fees: Vec::new(),
                meters,
                overrides: BTreeMap::new(),
            })
            .collect(),
    })
}

fn meter_strategy() -> impl Strategy<Value = Meter> {
    prop::sample::select(Meter::ALL.to_vec())
}

fn usage_strategy() -> impl Strategy<Value = Vec<UsageAggregate>> {
    prop::collection::vec(
        (
            prop::sample::select(FUNCTIONS.to_vec()),
            meter_strategy(),
            PERIOD.start.0..PERIOD.end.0,
            0u128..10_000_000_000,
        )
            .prop_map(|(function, meter, at, quantity)| UsageAggregate {
                function: function.to_owned(),
                meter,
                at: UnixMillis(at),
                quantity,
            }),
        0..40,
    )
}

fn generated_plan() -> impl Strategy<Value = Plan> {
    (
        currency_strategy(),
        rounding_strategy(),
        prop::collection::btree_map(meter_strategy(), charge_strategy(), 1..9),
        prop::collection::btree_map(meter_strategy(), charge_strategy(), 1..9),
        prop::option::of((0i64..1_000_000).prop_map(|cents| decimal(cents, 0))),
    )
        .prop_map(|(currency, rounding, first, second, minimum)| {
            let named = |table: BTreeMap<Meter, MeterCharge>| {
                table
                    .into_iter()
                    .map(|(meter, charge)| (meter.as_str().to_owned(), charge))
                    .collect::<BTreeMap<_, _>>()
            };
            plan_of(
                currency,
                rounding,
                vec![(0, named(first)), (1_500, named(second))],
                minimum,
            )
            .expect("generated plans are valid")
        })
}

fn sum_of_lines(invoice: &PricedInvoice) -> Decimal {
    invoice
        .lines
        .iter()
        .fold(Decimal::ZERO, |sum, line| sum + line.amount)
}

/// One meter, one model, one function: the exact amount of `quantity`.
fn single(charge: &MeterCharge, quantity: u128) -> (Decimal, Decimal) {
    let meters = BTreeMap::from([("ops".to_owned(), charge.clone())]);
    let plan = plan_of("USD", RoundingMode::HalfEven, vec![(0, meters)], None).unwrap();
    let usage = [UsageAggregate {
        function: "a".to_owned(),
        meter: Meter::Ops,
        at: PERIOD.start,
        quantity,
    }];
    let invoice = price(&plan, &usage, PERIOD).unwrap();
    let exact = invoice
        .lines
        .iter()
        .fold(Decimal::ZERO, |sum, line| sum + line.amount_exact);
    (exact, invoice.total)
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    #[test]
    fn lines_sum_exactly_to_the_total(plan in generated_plan(), usage in usage_strategy()) {
        let invoice = price(&plan, &usage, PERIOD).unwrap();
        prop_assert_eq!(sum_of_lines(&invoice), invoice.total);
        prop_assert_eq!(invoice.subtotal + invoice.minimum_true_up, invoice.total);
        let places = plan.currency().minor_units();
        for line in &invoice.lines {
            prop_assert_eq!(line.amount.scale(), places);
            // Rounded once: within half a minor unit of the exact amount.
            let half = Decimal::new(5, places + 1);
            prop_assert!((line.amount - line.amount_exact).abs() <= half);
            prop_assert_eq!(line.billed_quantity + line.free_quantity, line.quantity);
        }
        if let Some(minimum) = invoice.minimum_commitment {
            prop_assert!(invoice.total >= minimum);
        }
    }

    #[test]
    fn more_usage_never_costs_less(
        charge in charge_strategy().prop_filter("not volume", |charge| charge.volume.is_none()),
        low in 0u128..100_000_000,
        extra in 0u128..100_000_000,
    ) {
        let (exact_low, total_low) = single(&charge, low);
        let (exact_high, total_high) = single(&charge, low + extra);
        prop_assert!(exact_low <= exact_high, "{} > {}", exact_low, exact_high);
        prop_assert!(total_low <= total_high);
    }

    #[test]
    fn graduated_and_volume_agree_in_the_first_tier(
        tiers in tiers_strategy(),
        unit in unit_strategy(),
        fraction in 0u128..=1_000,
    ) {
        let first_bound = tiers[0].up_to.unwrap_or(1_000_000);
        let quantity = first_bound * fraction / 1_000;
        let graduated = MeterCharge { unit: unit.clone(), graduated: Some(tiers.clone()), ..MeterCharge::default() };
        let volume = MeterCharge { unit, volume: Some(tiers), ..MeterCharge::default() };
        prop_assert_eq!(single(&graduated, quantity), single(&volume, quantity));
    }

    #[test]
    fn splitting_the_period_keeps_per_unit_totals(
        prices in prop::collection::btree_map(meter_strategy(), (price_strategy(), 0u32..=12), 1..9),
        usage in usage_strategy(),
        middle in (PERIOD.start.0 + 1)..PERIOD.end.0,
        rounding in rounding_strategy(),
        currency in currency_strategy(),
    ) {
        let meters: BTreeMap<String, MeterCharge> = prices
            .into_iter()
            .map(|(meter, (unit_price, power))| {
                (meter.as_str().to_owned(), MeterCharge {
                    unit: Some(Unit { size: 10u128.pow(power), name: None }),
                    per_unit: Some(PerUnit { unit_price }),
                    ..MeterCharge::default()
                })
            })
            .collect();
        let plan = plan_of(currency, rounding, vec![(0, meters)], None).unwrap();
        let (first, second): (Vec<_>, Vec<_>) = usage.iter().cloned().partition(|aggregate| aggregate.at.0 < middle);
        let whole = price(&plan, &usage, PERIOD).unwrap();
        let first = price(&plan, &first, Period::new(PERIOD.start.0, middle)).unwrap();
        let second = price(&plan, &second, Period::new(middle, PERIOD.end.0)).unwrap();
        let exact = |invoice: &PricedInvoice, meter: Meter| {
            invoice.lines.iter().filter(|line| line.meter == Some(meter)).fold(Decimal::ZERO, |sum, line| sum + line.amount_exact)
        };
        // Per meter, the exact amounts add up exactly; each rounded line moves by at most half
        // a minor unit, so the halves' totals differ from the whole's by at most one minor unit
        // per line.
        for meter in Meter::ALL {
            prop_assert_eq!(exact(&first, meter) + exact(&second, meter), exact(&whole, meter));
        }
        let minor = Decimal::new(1, plan.currency().minor_units());
        let lines = Decimal::from(whole.lines.len());
        prop_assert!((first.total + second.total - whole.total).abs() <= minor * lines);
    }

    #[test]
    fn no_panic_on_any_plan_or_usage(
        currency in prop::sample::select(vec!["USD", "JPY", "BHD", "XXX", ""]),
        free in prop_oneof![Just(0u128), any::<u128>()],
        size in prop_oneof![Just(0u128), 1u128..1_000, any::<u128>()],
        mantissa in any::<i64>(),
        scale in 0u32..=28,
        bounds in prop::collection::vec(prop::option::of(any::<u128>()), 0..5),
        model in 0u8..4,
        quantities in prop::collection::vec((any::<u128>(), meter_strategy(), any::<i64>()), 0..8),
        start in any::<i64>(),
        end in any::<i64>(),
        from in any::<i64>(),
    ) {
        let unit_price = Decimal::new(mantissa, scale);
        let tiers: Vec<Tier> = bounds.iter().map(|up_to| Tier { up_to: *up_to, unit_price, flat_amount: unit_price }).collect();
        let mut charge = MeterCharge { free_allowance: free, ..MeterCharge::default() };
        match model {
            0 => { charge.unit = Some(Unit { size, name: None }); charge.per_unit = Some(PerUnit { unit_price }); }
            1 => charge.package = Some(Package { size, price: unit_price, round: PackageRounding::Up }),
            2 => charge.graduated = Some(tiers),
            _ => charge.volume = Some(tiers),
        }
        let meters: BTreeMap<String, MeterCharge> = Meter::ALL.iter().map(|meter| (meter.as_str().to_owned(), charge.clone())).collect();
        if let Ok(plan) = plan_of(currency, RoundingMode::HalfUp, vec![(from, meters)], Some(unit_price)) {
            let usage: Vec<UsageAggregate> = quantities.into_iter().map(|(quantity, meter, at)| UsageAggregate {
                function: "f".to_owned(), meter, at: UnixMillis(at), quantity,
            }).collect();
            if let Ok(invoice) = price(&plan, &usage, Period::new(start, end)) {
                prop_assert_eq!(sum_of_lines(&invoice), invoice.total);
            }
        }
    }

    #[test]
    fn no_panic_on_any_plan_text(text in "\\PC{0,200}") {
        let _ = Plan::from_json(&text);
        let _ = tally_pricing::UsageDocument::from_json(&text);
    }
}

#[test]
fn an_amount_beyond_28_significant_digits_is_an_overflow_error_not_a_rounding() {
    // 689,444,137,583 units at 114,916 each next to a 12-decimal tier price: the exact numerator
    // needs 29 digits at scale 12.
    let charge = MeterCharge {
        graduated: Some(vec![
            Tier {
                up_to: Some(1),
                unit_price: decimal(1, 12),
                flat_amount: Decimal::ZERO,
            },
            Tier {
                up_to: None,
                unit_price: decimal(114_916, 0),
                flat_amount: Decimal::ZERO,
            },
        ]),
        ..MeterCharge::default()
    };
    let meters = BTreeMap::from([("ops".to_owned(), charge)]);
    let plan = plan_of("USD", RoundingMode::HalfEven, vec![(0, meters)], None).unwrap();
    let usage = [UsageAggregate {
        function: "a".to_owned(),
        meter: Meter::Ops,
        at: PERIOD.start,
        quantity: 689_444_137_583,
    }];
    let error = price(&plan, &usage, PERIOD).unwrap_err();
    assert_eq!(
        error.to_string(),
        "arithmetic overflow while pricing ops under version 1"
    );
}

#[test]
fn summing_usage_past_u128_is_an_overflow_error() {
    let meters = BTreeMap::from([(
        "ops".to_owned(),
        MeterCharge {
            per_unit: Some(PerUnit {
                unit_price: Decimal::ZERO,
            }),
            ..MeterCharge::default()
        },
    )]);
    let plan = plan_of("USD", RoundingMode::HalfEven, vec![(0, meters)], None).unwrap();
    let aggregate = UsageAggregate {
        function: "a".to_owned(),
        meter: Meter::Ops,
        at: PERIOD.start,
        quantity: u128::MAX,
    };
    let error = price(&plan, &[aggregate.clone(), aggregate], PERIOD).unwrap_err();
    assert!(
        matches!(error, tally_pricing::Error::Overflow { .. }),
        "{error}"
    );
}

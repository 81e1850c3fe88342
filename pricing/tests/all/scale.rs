//! A 10,008-line invoice priced correctly (the shape the benchmark times; no timing here).
//! Run in release with `cargo test -p tally-pricing --release --test all scale`.

use std::collections::BTreeMap;

use tally_pricing::{
    Decimal, Meter, MeterCharge, PerUnit, Period, Plan, PlanSpec, PlanVersion, RoundingMode,
    UnixMillis, UsageAggregate, price,
};

const FUNCTIONS: usize = 1_112;

fn per_unit(price: &str) -> MeterCharge {
    MeterCharge {
        per_unit: Some(PerUnit {
            unit_price: price.parse().unwrap(),
        }),
        ..MeterCharge::default()
    }
}

#[test]
fn ten_thousand_lines_add_up() {
    let table: BTreeMap<String, MeterCharge> = Meter::ALL
        .iter()
        .map(|meter| (meter.as_str().to_owned(), per_unit("0.001")))
        .collect();
    let overrides = (0..FUNCTIONS)
        .map(|index| (format!("fn-{index:04}"), table.clone()))
        .collect();
    let plan = Plan::from_spec(PlanSpec {
        plan: "scale".to_owned(),
        description: None,
        currency: "USD".to_owned(),
        rounding: RoundingMode::HalfEven,
        versions: vec![PlanVersion {
            version: 1,
            effective_from: UnixMillis(0),
            description: None,
            minimum_commitment: None,
            flat_fees: Vec::new(),
            meters: table.clone(),
            overrides,
        }],
    })
    .unwrap();
    let mut usage = Vec::new();
    for index in 0..FUNCTIONS {
        for meter in Meter::ALL {
            usage.push(UsageAggregate {
                function: format!("fn-{index:04}"),
                meter,
                at: UnixMillis(10),
                quantity: (index as u128 + 1) * 1_000,
            });
        }
    }
    let invoice = price(&plan, &usage, Period::new(0, 1_000)).unwrap();
    assert_eq!(invoice.lines.len(), FUNCTIONS * 9);
    // Function i's lines cost (i + 1) × 1000 × 0.001 = i + 1 each; 9 meters.
    let expected = 9 * (FUNCTIONS * (FUNCTIONS + 1) / 2);
    assert_eq!(invoice.total, Decimal::from(expected));
    assert_eq!(invoice.total.to_string(), "5569452.00");
}

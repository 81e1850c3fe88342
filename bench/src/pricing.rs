//! `tally-bench pricing`: times `tally_pricing::price` on a 10,008-line invoice (1,112 functions
//! × 9 meters, every function overriding every meter with a mix of charge models) against the
//! 10 ms target, and prints the median and p95.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use tally_pricing::{
    Meter, MeterCharge, Package, PackageRounding, PerUnit, Period, Plan, PlanSpec, PlanVersion,
    RoundingMode, Tier, Unit, UnixMillis, UsageAggregate, price,
};

const FUNCTIONS: usize = 1_112;
const RUNS: usize = 101;
const TARGET: Duration = Duration::from_millis(10);

fn charge(meter: Meter, function: usize) -> MeterCharge {
    let decimal = |text: &str| text.parse().expect("a decimal literal");
    match meter as usize % 3 {
        0 => MeterCharge {
            free_allowance: 1_000,
            unit: Some(Unit {
                size: 1 << 30,
                name: Some("GiB".to_owned()),
            }),
            per_unit: Some(PerUnit {
                unit_price: decimal("0.0000166667"),
            }),
            ..MeterCharge::default()
        },
        1 => MeterCharge {
            package: Some(Package {
                size: 1_000 + function as u128,
                price: decimal("0.10"),
                round: PackageRounding::Up,
            }),
            ..MeterCharge::default()
        },
        _ => MeterCharge {
            unit: Some(Unit {
                size: 1_000_000_000,
                name: None,
            }),
            graduated: Some(vec![
                Tier {
                    up_to: Some(1_000_000),
                    unit_price: decimal("0.05"),
                    flat_amount: decimal("0"),
                },
                Tier {
                    up_to: Some(100_000_000),
                    unit_price: decimal("0.04"),
                    flat_amount: decimal("1.00"),
                },
                Tier {
                    up_to: None,
                    unit_price: decimal("0.03"),
                    flat_amount: decimal("0"),
                },
            ]),
            ..MeterCharge::default()
        },
    }
}

fn table(function: usize) -> BTreeMap<String, MeterCharge> {
    Meter::ALL
        .iter()
        .map(|meter| (meter.as_str().to_owned(), charge(*meter, function)))
        .collect()
}

/// The plan and usage of a 10,008-line invoice.
pub fn ten_thousand_line_invoice() -> anyhow::Result<(Plan, Vec<UsageAggregate>, Period)> {
    let overrides = (0..FUNCTIONS)
        .map(|index| (format!("fn-{index:04}"), table(index)))
        .collect();
    let plan = Plan::from_spec(PlanSpec {
        plan: "bench".to_owned(),
        description: None,
        currency: "USD".to_owned(),
        rounding: RoundingMode::HalfEven,
        versions: vec![PlanVersion {
            version: 1,
            effective_from: UnixMillis(0),
            description: None,
            minimum_commitment: None,
            flat_fees: Vec::new(),
            meters: table(0),
            overrides,
        }],
    })?;
    let mut usage = Vec::with_capacity(FUNCTIONS * Meter::ALL.len());
    for index in 0..FUNCTIONS {
        for (offset, meter) in Meter::ALL.iter().enumerate() {
            usage.push(UsageAggregate {
                function: format!("fn-{index:04}"),
                meter: *meter,
                at: UnixMillis(1_000 + offset as i64),
                quantity: (index as u128 + 1) * 123_456_789 + offset as u128,
            });
        }
    }
    Ok((plan, usage, Period::new(0, 2_592_000_000)))
}

/// Runs the benchmark and prints the result.
pub fn run() -> anyhow::Result<()> {
    let (plan, usage, period) = ten_thousand_line_invoice()?;
    let invoice = price(&plan, &usage, period)?;
    anyhow::ensure!(
        invoice.lines.len() >= 10_000,
        "expected at least 10,000 lines, got {}",
        invoice.lines.len()
    );
    let mut times = Vec::with_capacity(RUNS);
    for _ in 0..RUNS {
        let start = Instant::now();
        let priced = price(&plan, &usage, period)?;
        times.push(start.elapsed());
        anyhow::ensure!(priced.total == invoice.total, "pricing is deterministic");
    }
    times.sort_unstable();
    let median = times[RUNS / 2];
    let p95 = times[RUNS * 95 / 100];
    println!(
        "pricing: {} lines, total {} {}; price() median {:.3} ms, p95 {:.3} ms over {RUNS} runs (target < {} ms): {}",
        invoice.lines.len(),
        invoice.total,
        invoice.currency,
        median.as_secs_f64() * 1e3,
        p95.as_secs_f64() * 1e3,
        TARGET.as_millis(),
        if p95 < TARGET { "ok" } else { "MISSED" }
    );
    Ok(())
}

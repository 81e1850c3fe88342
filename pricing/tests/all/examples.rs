//! The plans in `examples/plans/`, priced on their sample usage, against totals checked by hand.

use tally_pricing::{Decimal, Meter, Plan, PricedInvoice, UsageDocument, price};

fn price_example(name: &str) -> PricedInvoice {
    let dir = crate::crate_dir().join("../examples/plans");
    let plan = Plan::from_json(&std::fs::read_to_string(dir.join(format!("{name}.json"))).unwrap())
        .unwrap();
    let usage = UsageDocument::from_json(
        &std::fs::read_to_string(dir.join(format!("{name}.usage.json"))).unwrap(),
    )
    .unwrap();
    price(&plan, &usage.usage, usage.period).unwrap()
}

fn amounts(invoice: &PricedInvoice) -> Vec<String> {
    invoice
        .lines
        .iter()
        .map(|line| format!("{} {}", line.description, line.amount))
        .collect()
}

fn dec(text: &str) -> Decimal {
    text.parse().unwrap()
}

#[test]
fn aws_lambda_shape() {
    let invoice = price_example("aws-lambda");
    // Requests: 3,000,000 - 1,000,000 free = 2,000,000 × 0.20 / 1,000,000 = 0.40.
    // Duration: 1,500,000 GB-s + 123,456,789 byte-s - 400,000 GB-s free, all in tier 1:
    // 1,100,000 × 0.0000166667 = 18.33337, plus 123,456,789 × 0.0000166667 / 2^30
    // = 0.0000019163…, so 18.3333719163… → 18.33. Total 0.40 + 18.33 = 18.73.
    assert_eq!(
        amounts(&invoice),
        [
            "invocations (version 1) 0.40",
            "memory_byte_seconds (version 1) 18.33"
        ]
    );
    assert!(
        invoice.lines[1]
            .amount_exact
            .to_string()
            .starts_with("18.3333719163")
    );
    assert_eq!(invoice.lines[1].free_quantity, 400_000 << 30);
    assert_eq!(invoice.total, dec("18.73"));
}

#[test]
fn cloudflare_workers_shape() {
    let invoice = price_example("cloudflare-workers");
    // Requests: 25M - 10M included = 15M × 0.30 / 1M = 4.50.
    // CPU: 50M ms - 30M included = 20M ms × 0.02 / 1M ms = 0.40.
    // Subscription 5.00. Total 9.90.
    assert_eq!(
        amounts(&invoice),
        [
            "invocations (version 1) 4.50",
            "wall_ns (version 1) 0.40",
            "Workers Paid subscription 5.00"
        ]
    );
    assert_eq!(invoice.total, dec("9.90"));
}

#[test]
fn tally_native() {
    let invoice = price_example("tally-native");
    // invocations: 2,500,000 + 700,001 = 3,200,001 → 4 started blocks of 1M × 0.10 = 0.40
    // ops (api, shared): 3×10^12, 10^11 free; tier 1 (0, 10^12]: 9×10^11 × 0.05 / 10^9 = 45;
    //   tier 2: 2×10^12 × 0.04 / 10^9 = 80; line 125.00
    // ops (thumbnailer override): 2×10^12 × 0.02 / 10^9 = 40.00
    // memory_ops_integral: 1,234,567,890,123,456,789,012 × 0.002 / 10^18 = 2.469135780… → 2.47
    // memory_byte_seconds: 1,234,567,890,123,456 × 0.0000025 / 2^30 = 2.87445236… → 2.87
    // io_in_bytes: 10 GiB + 12,345 - 1 GiB free = 9 GiB + 12,345 bytes × 0.01 / GiB
    //   = 0.09000011… → 0.09
    // io_out_bytes: 3 GiB × 0.05 = 0.15
    // subtotal 170.98; minimum 200.00 → true-up 29.02; total 200.00
    assert_eq!(
        amounts(&invoice),
        [
            "invocations (version 1) 0.40",
            "ops (version 1) 125.00",
            "ops for function thumbnailer (override, version 1) 40.00",
            "memory_ops_integral (version 1) 2.47",
            "memory_byte_seconds (version 1) 2.87",
            "io_in_bytes (version 1) 0.09",
            "io_out_bytes (version 1) 0.15",
            "minimum commitment 200.00 minus subtotal 170.98 29.02",
        ]
    );
    let ops = &invoice.lines[1];
    assert_eq!(ops.meter, Some(Meter::Ops));
    assert_eq!(ops.tiers.len(), 2);
    assert_eq!(ops.tiers[0].quantity, 900_000_000_000);
    assert_eq!(ops.tiers[0].amount_exact, dec("45"));
    assert_eq!(ops.tiers[1].quantity, 2_000_000_000_000);
    assert_eq!(ops.tiers[1].amount_exact, dec("80"));
    assert_eq!(
        invoice.lines[3].amount_exact,
        dec("2.469135780246913578024")
    );
    assert_eq!(invoice.subtotal, dec("170.98"));
    assert_eq!(invoice.minimum_true_up, dec("29.02"));
    assert_eq!(invoice.total, dec("200.00"));
    let table = invoice.to_table();
    assert!(table.contains("tier 2 (1,000,000,000,000, 100,000,000,000,000]: 2,000,000,000,000 × 0.04 / 1,000,000,000 + 0 = 80"), "{table}");
    assert!(table.contains("total 200.00 USD"), "{table}");
}

#[test]
fn example_plans_round_trip_through_json() {
    for name in ["aws-lambda", "cloudflare-workers", "tally-native"] {
        let dir = crate::crate_dir().join("../examples/plans");
        let plan =
            Plan::from_json(&std::fs::read_to_string(dir.join(format!("{name}.json"))).unwrap())
                .unwrap();
        assert_eq!(Plan::from_json(&plan.to_json()).unwrap(), plan, "{name}");
        let via_serde: Plan = serde_json::from_str(&serde_json::to_string(&plan).unwrap()).unwrap();
        assert_eq!(via_serde, plan);
    }
}

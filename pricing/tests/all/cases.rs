//! Tests as data: `tests/cases/*.json` holds (plan, usage, expected invoice) triples whose
//! expected amounts were computed by hand (see each file's `comment`). One `check()` runs them.
//! `BLESS=1` rewrites the `expect` of a failing case with the actual result (then review the diff
//! against the comment by hand).

use serde_json::{Value, json};
use tally_pricing::{InvoiceLine, LineKind, Plan, PricedInvoice, UsageDocument, price};

fn item(line: &InvoiceLine) -> String {
    match (line.kind, line.meter) {
        (_, Some(meter)) => meter.as_str().to_owned(),
        (LineKind::FlatFee, None) => format!("flat_fee: {}", line.description),
        (LineKind::MinimumTrueUp, None) => "minimum_true_up".to_owned(),
        (kind, None) => format!("{kind:?}"),
    }
}

/// The part of an invoice a case pins down.
fn project(invoice: &PricedInvoice) -> Value {
    let lines: Vec<Value> = invoice
        .lines
        .iter()
        .map(|line| {
            let mut value = json!({
                "item": item(line),
                "version": line.version,
                "function": line.function,
            });
            if line.meter.is_some() {
                value["quantity"] = json!(line.quantity.to_string());
                value["billed"] = json!(line.billed_quantity.to_string());
            }
            value["amount_exact"] = json!(line.amount_exact.normalize().to_string());
            value["amount"] = json!(line.amount.to_string());
            value
        })
        .collect();
    json!({
        "lines": lines,
        "subtotal": invoice.subtotal.to_string(),
        "minimum_true_up": invoice.minimum_true_up.to_string(),
        "total": invoice.total.to_string(),
    })
}

fn run_case(case: &Value) -> Result<Value, Vec<String>> {
    let plan = Plan::from_json(&case["plan"].to_string()).map_err(|error| {
        error
            .to_string()
            .lines()
            .map(str::to_owned)
            .collect::<Vec<_>>()
    })?;
    let usage = UsageDocument::from_json(&case["usage"].to_string())
        .map_err(|error| vec![error.to_string()])?;
    let invoice =
        price(&plan, &usage.usage, usage.period).map_err(|error| vec![error.to_string()])?;
    // Invariants every case must satisfy besides its expectations.
    let sum = invoice
        .lines
        .iter()
        .fold(tally_pricing::Decimal::ZERO, |sum, line| sum + line.amount);
    assert_eq!(sum, invoice.total, "lines sum to the total");
    let round_trip: PricedInvoice =
        serde_json::from_str(&serde_json::to_string(&invoice).unwrap()).unwrap();
    assert_eq!(round_trip, invoice, "the invoice survives JSON");
    Ok(project(&invoice))
}

#[test]
fn check() {
    let dir = crate::crate_dir().join("tests/cases");
    let mut paths: Vec<_> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|entry| entry.unwrap().path())
        .filter(|path| path.extension().is_some_and(|ext| ext == "json"))
        .collect();
    paths.sort();
    assert!(paths.len() >= 15, "the cases are all there");
    let bless = std::env::var_os("BLESS").is_some();
    let mut failures = Vec::new();
    for path in &paths {
        let text = std::fs::read_to_string(path).unwrap();
        let mut case: Value = serde_json::from_str(&text).unwrap();
        assert!(
            case["comment"].is_array(),
            "{} explains itself",
            path.display()
        );
        let actual = match run_case(&case) {
            Ok(invoice) => json!({"expect": invoice}),
            Err(lines) => json!({"expect_error": lines}),
        };
        let key = if case.get("expect").is_some() {
            "expect"
        } else {
            "expect_error"
        };
        if actual.get(key) != case.get(key) {
            failures.push(format!(
                "{}:\n  expected {}\n  actual   {}",
                path.display(),
                case.get(key).unwrap_or(&Value::Null),
                actual
            ));
            if bless {
                case.as_object_mut().unwrap().remove(key);
                for (name, value) in actual.as_object().unwrap() {
                    case[name] = value.clone();
                }
                std::fs::write(path, serde_json::to_string_pretty(&case).unwrap() + "\n").unwrap();
            }
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

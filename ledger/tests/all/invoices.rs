//! Invoices priced by tally-pricing: draft, finalize, late usage, void, export.

use tally_ledger::bench_support::{DECEMBER_2026_START_MS, NOVEMBER_2026_START_MS};
use tally_ledger::{
    CSV_COLUMNS, ChainVerdict, Error, InvoiceStatus, Ledger, Period, export_csv, export_json,
};

use crate::common::{file_ledger, memory_ledger, record};

fn november() -> Period {
    Period::new(NOVEMBER_2026_START_MS, DECEMBER_2026_START_MS).unwrap()
}

fn december() -> Period {
    Period::new(
        DECEMBER_2026_START_MS,
        DECEMBER_2026_START_MS + 31 * tally_ledger::DAY_MS,
    )
    .unwrap()
}

#[test]
fn a_draft_prices_the_periods_usage() {
    let (ledger, fixture) = memory_ledger();
    let mut ops = 0u128;
    for n in 0..2_000u64 {
        let r = record(&fixture, n, n as i64 * 1_000);
        ops += u128::from(r.meters.ops);
        ledger.append(r).unwrap();
    }
    // Outside the period: not billed on November.
    ledger
        .append(tally_ledger::bench_support::sample_record(
            &fixture,
            "dec",
            1,
            DECEMBER_2026_START_MS,
        ))
        .unwrap();
    let draft = ledger.draft_invoice(fixture.tenant.id, november()).unwrap();
    assert_eq!(draft.status, InvoiceStatus::Draft);
    assert_eq!(draft.records, 2_000);
    assert_eq!(draft.seq_through, 2_001);
    let ops_line = draft
        .lines()
        .find(|(_, line)| line.meter == Some(tally_pricing::Meter::Ops))
        .unwrap()
        .1;
    assert_eq!(ops_line.quantity, ops);
    let invocations = draft
        .lines()
        .find(|(_, line)| line.meter == Some(tally_pricing::Meter::Invocations))
        .unwrap()
        .1;
    assert_eq!(invocations.quantity, 2_000);
    assert_eq!(invocations.free_quantity, 1_000);
    // The total is the sum of the rounded lines, and a draft is reproducible.
    let sum: tally_pricing::Decimal = draft.lines().map(|(_, line)| line.amount).sum();
    assert_eq!(sum, draft.total);
    assert_eq!(
        ledger.draft_invoice(fixture.tenant.id, november()).unwrap(),
        draft
    );
}

#[test]
fn finalizing_stores_the_invoice_once_with_its_chain_range() {
    let (_dir, ledger, fixture) = file_ledger();
    for n in 0..10u64 {
        ledger.append(record(&fixture, n, n as i64)).unwrap();
    }
    let draft = ledger.draft_invoice(fixture.tenant.id, november()).unwrap();
    let invoice = ledger
        .finalize_invoice(fixture.tenant.id, november(), 123)
        .unwrap();
    assert_eq!(invoice.number, Some(1));
    assert_eq!(
        invoice.status,
        InvoiceStatus::Finalized { finalized_ms: 123 }
    );
    assert_eq!((invoice.seq_from, invoice.seq_through), (1, 10));
    assert_eq!(
        invoice.chain_hash,
        ledger.get_usage(10).unwrap().unwrap().hash
    );
    assert_eq!(invoice.total, draft.total);
    assert_eq!(invoice.priced, draft.priced);
    let stored = ledger.get_invoice(invoice.id.unwrap()).unwrap();
    assert_eq!(stored, invoice);
    assert!(matches!(
        ledger.finalize_invoice(fixture.tenant.id, november(), 124),
        Err(Error::PeriodAlreadyFinalized { number: 1, .. })
    ));
    let october = Period::new(
        NOVEMBER_2026_START_MS - 31 * tally_ledger::DAY_MS,
        NOVEMBER_2026_START_MS,
    )
    .unwrap();
    assert!(matches!(
        ledger.finalize_invoice(fixture.tenant.id, october, 124),
        Err(Error::PeriodClosed { .. })
    ));
    assert!(matches!(
        ledger.verify().unwrap(),
        ChainVerdict::Intact { records: 10, .. }
    ));
}

#[test]
fn late_usage_is_billed_on_the_next_invoice_with_its_original_timestamp() {
    let (ledger, fixture) = memory_ledger();
    for n in 0..5u64 {
        ledger.append(record(&fixture, n, n as i64)).unwrap();
    }
    let november_invoice = ledger
        .finalize_invoice(fixture.tenant.id, november(), 1)
        .unwrap();
    assert_eq!(november_invoice.records, 5);
    // Arrives after November was finalized, started in November.
    let late_started = NOVEMBER_2026_START_MS + 15 * tally_ledger::DAY_MS + 7;
    let late = ledger
        .append(tally_ledger::bench_support::sample_record(
            &fixture,
            "late",
            1,
            late_started,
        ))
        .unwrap();
    assert!(late.record.late);
    let on_time = ledger
        .append(tally_ledger::bench_support::sample_record(
            &fixture,
            "dec",
            1,
            DECEMBER_2026_START_MS + 5,
        ))
        .unwrap();
    assert!(!on_time.record.late);
    let december_invoice = ledger
        .finalize_invoice(fixture.tenant.id, december(), 2)
        .unwrap();
    assert_eq!(december_invoice.number, Some(2));
    assert_eq!(december_invoice.records, 2);
    assert_eq!(december_invoice.seq_from, 6);
    assert_eq!(december_invoice.late_usage.len(), 1);
    let shown = &december_invoice.late_usage[0];
    assert_eq!(shown.first_started_ms, late_started);
    assert_eq!(shown.seq_range, (late.record.seq, late.record.seq));
    assert_eq!(shown.function, "main");
    assert_eq!(shown.totals.invocations, 1);
    // Round trip through storage keeps the late usage.
    assert_eq!(
        ledger.get_invoice(december_invoice.id.unwrap()).unwrap(),
        december_invoice
    );
    let json = export_json(&december_invoice);
    assert_eq!(json["late_usage"][0]["first_started_ms"], late_started);
}

#[test]
fn a_void_invoice_is_kept_and_marked() {
    let (ledger, fixture) = memory_ledger();
    ledger.append(record(&fixture, 1, 0)).unwrap();
    let invoice = ledger
        .finalize_invoice(fixture.tenant.id, november(), 1)
        .unwrap();
    let id = invoice.id.unwrap();
    let void = ledger.void_invoice(id, "duplicate charge", 9).unwrap();
    assert_eq!(
        void.status,
        InvoiceStatus::Void {
            finalized_ms: 1,
            voided_ms: 9,
            reason: "duplicate charge".into()
        }
    );
    assert_eq!(void.total, invoice.total);
    assert!(matches!(
        ledger.void_invoice(id, "again", 10),
        Err(Error::AlreadyVoid(_))
    ));
    assert_eq!(ledger.list_invoices(fixture.tenant.id).unwrap(), vec![void]);
    // The period stays closed.
    assert!(
        ledger
            .finalize_invoice(fixture.tenant.id, november(), 11)
            .is_err()
    );
}

#[test]
fn exports_have_stable_columns_and_minor_unit_amounts() {
    let (ledger, fixture) = memory_ledger();
    for n in 0..3u64 {
        ledger.append(record(&fixture, n, n as i64)).unwrap();
    }
    let invoice = ledger
        .finalize_invoice(fixture.tenant.id, november(), 1)
        .unwrap();
    let csv = export_csv(&invoice);
    let mut lines = csv.split("\r\n");
    assert_eq!(lines.next().unwrap(), CSV_COLUMNS.join(","));
    let rows: Vec<&str> = lines.filter(|l| !l.is_empty()).collect();
    assert_eq!(rows.len(), invoice.lines().count());
    let amount_column = CSV_COLUMNS.iter().position(|c| *c == "amount").unwrap();
    let fee = rows.iter().find(|row| row.contains("flat_fee")).unwrap();
    assert_eq!(fee.split(',').nth(amount_column).unwrap(), "5.00");
    for row in &rows {
        let amount = row.split(',').nth(amount_column).unwrap();
        assert_eq!(amount.split('.').nth(1).map(str::len), Some(2), "{amount}");
    }
    let json = export_json(&invoice);
    assert_eq!(json["status"], "finalized");
    assert_eq!(json["currency"], "USD");
    let total = json["total"].as_str().unwrap();
    assert_eq!(total.split('.').nth(1).map(str::len), Some(2));
    assert_eq!(json["lines"].as_array().unwrap().len(), rows.len());
}

#[test]
fn a_plan_version_that_priced_a_finalized_invoice_is_immutable() {
    let (ledger, fixture) = memory_ledger();
    let plan = ledger.find_plan("bench").unwrap().unwrap();
    let versions = ledger.list_plan_versions(plan.id).unwrap();
    let v1 = &versions[0];
    // Unused: may be corrected.
    let corrected = v1.pricing_json.replace("\"5.00\"", "\"6.00\"");
    ledger.update_plan_version(v1.id, &corrected).unwrap();
    ledger.append(record(&fixture, 1, 0)).unwrap();
    ledger
        .finalize_invoice(fixture.tenant.id, november(), 1)
        .unwrap();
    assert!(matches!(
        ledger.update_plan_version(v1.id, &v1.pricing_json),
        Err(Error::PlanVersionInUse(_))
    ));
    // A new version is the way forward, and an invalid one is rejected by pricing.
    let v2 = corrected.replace("\"version\":1", "\"version\":2").replace(
        "\"effective_from_ms\":0",
        &format!("\"effective_from_ms\":{DECEMBER_2026_START_MS}"),
    );
    assert_eq!(ledger.add_plan_version(plan.id, &v2, 2).unwrap().version, 2);
    // Same effective_from as version 2: not ascending.
    let bad = v2.replace("\"version\":2", "\"version\":3");
    assert!(matches!(
        ledger.add_plan_version(plan.id, &bad, 3),
        Err(Error::PlanRejected(_))
    ));
}

#[test]
fn drafting_without_a_subscription_is_an_error() {
    let ledger = tally_ledger::SqliteLedger::open_in_memory().unwrap();
    let tenant = ledger.create_tenant("lonely", 0).unwrap();
    assert!(matches!(
        ledger.draft_invoice(tenant.id, november()),
        Err(Error::NoSubscription { .. })
    ));
}

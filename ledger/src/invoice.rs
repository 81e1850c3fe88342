//! Invoices: aggregate a period's usage, price it with `tally-pricing`, finalize, void, export.
//!
//! Which records an invoice for period `P` bills (`H` = chain head when it is computed, `Hprev`
//! and `Eprev` = `seq_through` and period end of the tenant's last finalized invoice):
//! * records started in `P` with `seq ≤ H`;
//! * records started in `[Eprev, P.start)` (periods nobody invoiced) with `seq ≤ H`;
//! * late records: started before `Eprev` but appended after that invoice was finalized
//!   (`late = 1`, `Hprev < seq ≤ H`).
//!
//! Every record is billed by exactly one finalized invoice. The last two groups are priced as
//! usage at the start of `P` (the plan version in effect then) and listed with their original
//! days in [`Invoice::late_usage`].

use std::collections::{BTreeMap, HashMap};

use rusqlite::{Connection, OptionalExtension, params};
use tally_pricing::{Currency, Decimal, Meter, PricedInvoice, UnixMillis, UsageAggregate};

use crate::DAY_MS;
use crate::error::{Error, Result, invalid, not_found};
use crate::sqlite::{
    METERS_SELECT, chain_head, decode_meters, get_tenant, int_at, plan_document, subscriptions,
};
use crate::types::*;
use crate::writer::WriterState;

/// Nanoseconds per second: `memory_byte_seconds = floor(Σ memory_byte_ns / 10^9)` per aggregate.
pub const NANOS_PER_SECOND: u128 = 1_000_000_000;

/// Where an invoice stands.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum InvoiceStatus {
    /// Computed, not stored; can be recomputed any time.
    Draft,
    /// Stored immutably.
    Finalized {
        /// When it was finalized.
        finalized_ms: i64,
    },
    /// Finalized, then voided (kept).
    Void {
        /// When it was finalized.
        finalized_ms: i64,
        /// When it was voided.
        voided_ms: i64,
        /// Why.
        reason: String,
    },
}

impl InvoiceStatus {
    /// `draft`, `finalized` or `void`.
    pub fn name(&self) -> &'static str {
        match self {
            InvoiceStatus::Draft => "draft",
            InvoiceStatus::Finalized { .. } => "finalized",
            InvoiceStatus::Void { .. } => "void",
        }
    }
}

/// Usage billed on an invoice although it started before the invoice's period, per function
/// and original UTC day.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LateUsage {
    /// Function name.
    pub function: String,
    /// Original UTC day (start, Unix milliseconds).
    pub day_start_ms: i64,
    /// Earliest original `started_ms` of these records.
    pub first_started_ms: i64,
    /// Lowest and highest sequence numbers of these records.
    pub seq_range: (u64, u64),
    /// Their totals.
    pub totals: MeterTotals,
}

/// An invoice: a draft (not stored) or a finalized one.
#[derive(Debug, Clone, PartialEq)]
pub struct Invoice {
    /// Stored id (none for drafts).
    pub id: Option<InvoiceId>,
    /// Per-tenant sequential number, from 1 (none for drafts).
    pub number: Option<u64>,
    /// The tenant.
    pub tenant: TenantId,
    /// The period.
    pub period: Period,
    /// Status.
    pub status: InvoiceStatus,
    /// First chain position not covered by the tenant's previous invoice.
    pub seq_from: u64,
    /// Chain head when computed: no record after it is billed here.
    pub seq_through: u64,
    /// Hash of record `seq_through` (zeros if 0): anchors the chain.
    pub chain_hash: Sha256,
    /// Number of usage records billed.
    pub records: u64,
    /// Currency of every amount.
    pub currency: Currency,
    /// One priced part per subscription span within the period.
    pub priced: Vec<PricedInvoice>,
    /// Records from before the period billed here.
    pub late_usage: Vec<LateUsage>,
    /// Sum of the parts' subtotals.
    pub subtotal: Decimal,
    /// Sum of the parts' totals.
    pub total: Decimal,
}

impl Invoice {
    /// Every line of every part, in order.
    pub fn lines(&self) -> impl Iterator<Item = (&PricedInvoice, &tally_pricing::InvoiceLine)> {
        self.priced
            .iter()
            .flat_map(|part| part.lines.iter().map(move |line| (part, line)))
    }
}

#[derive(Clone, Copy)]
struct Part {
    plan: PlanId,
    start_ms: i64,
    end_ms: i64,
}

/// The subscription spans covering `period`.
fn parts(conn: &Connection, tenant: TenantId, period: Period) -> Result<Vec<Part>> {
    let subs = subscriptions(conn, tenant)?;
    let mut parts = Vec::new();
    for (index, sub) in subs.iter().enumerate() {
        let end = subs.get(index + 1).map_or(i64::MAX, |next| next.from_ms);
        let start_ms = sub.from_ms.max(period.start_ms);
        let end_ms = end.min(period.end_ms);
        if start_ms < end_ms {
            parts.push(Part {
                plan: sub.plan,
                start_ms,
                end_ms,
            });
        }
    }
    Ok(parts)
}

fn meter_quantity(meter: Meter, totals: &MeterTotals) -> u128 {
    match meter {
        Meter::Invocations => u128::from(totals.invocations),
        Meter::Ops => totals.ops,
        Meter::MemoryPeakBytes => totals.memory_peak_bytes,
        Meter::MemoryOpsIntegral => totals.memory_ops_integral,
        Meter::MemoryByteSeconds => totals.memory_byte_ns / NANOS_PER_SECOND,
        Meter::IoInBytes => totals.io_in_bytes,
        Meter::IoOutBytes => totals.io_out_bytes,
        Meter::HostCalls => totals.host_calls,
        Meter::WallNs => totals.wall_ns,
    }
}

/// The previous finalized invoice of the tenant: (seq_through, period_end_ms, period_start_ms, number).
fn previous(conn: &Connection, tenant: TenantId) -> Result<Option<(u64, i64, i64, u64)>> {
    Ok(conn
        .query_row(
            "SELECT seq_through, period_end_ms, period_start_ms, number FROM invoices
             WHERE tenant_id = ?1 ORDER BY number DESC LIMIT 1",
            [tenant.0],
            |row| {
                Ok((
                    row.get::<_, i64>(0)? as u64,
                    row.get(1)?,
                    row.get(2)?,
                    row.get::<_, i64>(3)? as u64,
                ))
            },
        )
        .optional()?)
}

/// Computes the invoice for `(tenant, period)` in the caller's transaction. `head` is the chain
/// head to cover (the current one when `None`).
pub(crate) fn draft(
    conn: &Connection,
    tenant: TenantId,
    period: Period,
    head: Option<(u64, Sha256)>,
) -> Result<Invoice> {
    if period.start_ms >= period.end_ms {
        return Err(invalid("period", "is empty"));
    }
    get_tenant(conn, tenant)?;
    let (seq_through, chain_hash) = match head {
        Some(head) => head,
        None => chain_head(conn)?,
    };
    let prev = previous(conn, tenant)?;
    if let Some((_, prev_end, prev_start, number)) = prev {
        if prev_start == period.start_ms {
            return Err(Error::PeriodAlreadyFinalized {
                tenant: tenant.0,
                period_start_ms: period.start_ms,
                number,
            });
        }
        if period.start_ms < prev_end {
            return Err(Error::PeriodClosed {
                period_start_ms: period.start_ms,
                closed_until_ms: prev_end,
            });
        }
    }
    let (prev_seq, prev_end) = prev.map_or((0, i64::MIN), |(seq, end, _, _)| (seq, end));

    let parts = parts(conn, tenant, period)?;
    if parts.is_empty() {
        return Err(Error::NoSubscription { tenant: tenant.0 });
    }
    // Segment boundaries: part starts and version changes inside each part.
    let mut plans = HashMap::new();
    let mut segments: Vec<(i64, usize)> = Vec::new(); // (start, part index)
    for (index, part) in parts.iter().enumerate() {
        if let std::collections::hash_map::Entry::Vacant(entry) = plans.entry(part.plan) {
            entry.insert(plan_document(conn, part.plan)?);
        }
        segments.push((part.start_ms, index));
        for version in plans[&part.plan].versions() {
            let from = version.effective_from.0;
            if part.start_ms < from && from < part.end_ms {
                segments.push((from, index));
            }
        }
    }
    segments.sort_unstable();
    let segment_of = |started_ms: i64| -> Option<usize> {
        let index = segments.partition_point(|(start, _)| *start <= started_ms);
        index.checked_sub(1)
    };
    let currency = plans[&parts[0].plan].currency();
    if let Some(other) = plans.values().find(|plan| plan.currency() != currency) {
        return Err(Error::MixedCurrencies {
            first: currency.code(),
            other: other.currency().code(),
        });
    }

    // (segment, function) → totals
    let mut totals: BTreeMap<(usize, FunctionId), MeterTotals> = BTreeMap::new();
    let mut records: u64 = 0;
    {
        // Records started in the period.
        let mut statement = conn.prepare_cached(&format!(
            "SELECT function_id, started_ms, {METERS_SELECT} FROM usage_records
             WHERE tenant_id = ?1 AND started_ms >= ?2 AND started_ms < ?3 AND seq <= ?4"
        ))?;
        let mut rows = statement.query(params![
            tenant.0,
            period.start_ms,
            period.end_ms,
            seq_through as i64
        ])?;
        while let Some(row) = rows.next()? {
            let function = FunctionId(int_at(row, 0)?);
            let started_ms = int_at(row, 1)?;
            let meters = decode_meters(row, 2)?;
            let Some(segment) = segment_of(started_ms) else {
                return Err(Error::NoSubscription { tenant: tenant.0 });
            };
            totals.entry((segment, function)).or_default().add(&meters);
            records += 1;
        }
    }
    // Earlier records never invoiced: gap periods, then late arrivals.
    let mut late: BTreeMap<(FunctionId, i64), LateUsage> = BTreeMap::new();
    let mut add_late = |function: FunctionId, seq: u64, started_ms: i64, meters: &UsageMeters| {
        let day = started_ms.div_euclid(DAY_MS) * DAY_MS;
        let entry = late.entry((function, day)).or_insert_with(|| LateUsage {
            function: String::new(),
            day_start_ms: day,
            first_started_ms: started_ms,
            seq_range: (seq, seq),
            totals: MeterTotals::default(),
        });
        entry.first_started_ms = entry.first_started_ms.min(started_ms);
        entry.seq_range = (entry.seq_range.0.min(seq), entry.seq_range.1.max(seq));
        entry.totals.add(meters);
    };
    {
        let mut statement = conn.prepare_cached(&format!(
            "SELECT function_id, seq, started_ms, {METERS_SELECT} FROM usage_records
             WHERE tenant_id = ?1 AND started_ms >= ?2 AND started_ms < ?3 AND seq <= ?4"
        ))?;
        let mut rows = statement.query(params![
            tenant.0,
            prev_end,
            period.start_ms,
            seq_through as i64
        ])?;
        while let Some(row) = rows.next()? {
            let meters = decode_meters(row, 3)?;
            add_late(
                FunctionId(row.get(0)?),
                row.get::<_, i64>(1)? as u64,
                row.get(2)?,
                &meters,
            );
        }
        let mut statement = conn.prepare_cached(&format!(
            "SELECT function_id, seq, started_ms, {METERS_SELECT} FROM usage_records
             WHERE tenant_id = ?1 AND late = 1 AND seq > ?2 AND seq <= ?3"
        ))?;
        let mut rows = statement.query(params![tenant.0, prev_seq as i64, seq_through as i64])?;
        while let Some(row) = rows.next()? {
            let meters = decode_meters(row, 3)?;
            let started_ms: i64 = row.get(2)?;
            assert!(
                started_ms < prev_end,
                "a late record starts before the closed period's end"
            );
            add_late(
                FunctionId(row.get(0)?),
                row.get::<_, i64>(1)? as u64,
                started_ms,
                &meters,
            );
        }
    }
    let names = function_names(conn, tenant)?;
    let name_of = |function: FunctionId| -> Result<String> {
        names
            .get(&function)
            .cloned()
            .ok_or_else(|| Error::Corrupt(format!("usage of unknown function {function}")))
    };
    let mut late_usage = Vec::with_capacity(late.len());
    for ((function, _), mut usage) in late {
        usage.function = name_of(function)?;
        // Late usage is priced at the start of the period, under the first part.
        totals
            .entry((0, function))
            .or_default()
            .merge(&usage.totals);
        records += usage.totals.invocations;
        late_usage.push(usage);
    }

    // One pricing call per part.
    let mut aggregates: Vec<Vec<UsageAggregate>> = vec![Vec::new(); parts.len()];
    for ((segment, function), totals) in &totals {
        let (at, part) = segments[*segment];
        let name = name_of(*function)?;
        for meter in Meter::ALL {
            let quantity = meter_quantity(meter, totals);
            if quantity > 0 {
                aggregates[part].push(UsageAggregate {
                    function: name.clone(),
                    meter,
                    at: UnixMillis(at),
                    quantity,
                });
            }
        }
    }
    let mut priced = Vec::with_capacity(parts.len());
    let (mut subtotal, mut total) = (Decimal::ZERO, Decimal::ZERO);
    for (part, usage) in parts.iter().zip(&aggregates) {
        let invoice = tally_pricing::price(
            &plans[&part.plan],
            usage,
            tally_pricing::Period::new(part.start_ms, part.end_ms),
        )
        .map_err(Error::Pricing)?;
        subtotal = subtotal
            .checked_add(invoice.subtotal)
            .ok_or(Error::Overflow("subtotal"))?;
        total = total
            .checked_add(invoice.total)
            .ok_or(Error::Overflow("total"))?;
        priced.push(invoice);
    }
    Ok(Invoice {
        id: None,
        number: None,
        tenant,
        period,
        status: InvoiceStatus::Draft,
        seq_from: prev_seq + 1,
        seq_through,
        chain_hash,
        records,
        currency,
        priced,
        late_usage,
        subtotal,
        total,
    })
}

fn function_names(conn: &Connection, tenant: TenantId) -> Result<HashMap<FunctionId, String>> {
    let mut statement =
        conn.prepare_cached("SELECT id, name FROM functions WHERE tenant_id = ?1")?;
    let rows = statement.query_map([tenant.0], |row| Ok((FunctionId(row.get(0)?), row.get(1)?)))?;
    Ok(rows.collect::<rusqlite::Result<_>>()?)
}

fn late_to_json(late: &[LateUsage]) -> serde_json::Value {
    serde_json::Value::Array(
        late.iter()
            .map(|usage| {
                serde_json::json!({
                    "function": usage.function,
                    "day_start_ms": usage.day_start_ms,
                    "first_started_ms": usage.first_started_ms,
                    "seq_first": usage.seq_range.0,
                    "seq_last": usage.seq_range.1,
                    "totals": totals_to_json(&usage.totals),
                })
            })
            .collect(),
    )
}

/// Meter totals as JSON: every quantity a decimal string (u128 does not fit JSON numbers).
pub(crate) fn totals_to_json(totals: &MeterTotals) -> serde_json::Value {
    serde_json::json!({
        "invocations": totals.invocations.to_string(),
        "ops": totals.ops.to_string(),
        "memory_peak_bytes": totals.memory_peak_bytes.to_string(),
        "memory_ops_integral": totals.memory_ops_integral.to_string(),
        "memory_byte_ns": totals.memory_byte_ns.to_string(),
        "io_in_bytes": totals.io_in_bytes.to_string(),
        "io_out_bytes": totals.io_out_bytes.to_string(),
        "host_calls": totals.host_calls.to_string(),
        "wall_ns": totals.wall_ns.to_string(),
    })
}

fn late_from_json(value: &serde_json::Value) -> Result<Vec<LateUsage>> {
    let bad = |what: &str| Error::Corrupt(format!("invoice late usage: {what}"));
    let list = value.as_array().ok_or_else(|| bad("not an array"))?;
    let mut out = Vec::with_capacity(list.len());
    for item in list {
        let int = |key: &str| {
            item.get(key)
                .and_then(serde_json::Value::as_i64)
                .ok_or_else(|| bad(key))
        };
        let totals = item.get("totals").ok_or_else(|| bad("totals"))?;
        let quantity = |key: &str| -> Result<u128> {
            totals
                .get(key)
                .and_then(serde_json::Value::as_str)
                .and_then(|text| text.parse().ok())
                .ok_or_else(|| bad(key))
        };
        out.push(LateUsage {
            function: item
                .get("function")
                .and_then(serde_json::Value::as_str)
                .ok_or_else(|| bad("function"))?
                .to_owned(),
            day_start_ms: int("day_start_ms")?,
            first_started_ms: int("first_started_ms")?,
            seq_range: (int("seq_first")? as u64, int("seq_last")? as u64),
            totals: MeterTotals {
                invocations: u64::try_from(quantity("invocations")?)
                    .map_err(|_| bad("invocations"))?,
                ops: quantity("ops")?,
                memory_peak_bytes: quantity("memory_peak_bytes")?,
                memory_ops_integral: quantity("memory_ops_integral")?,
                memory_byte_ns: quantity("memory_byte_ns")?,
                io_in_bytes: quantity("io_in_bytes")?,
                io_out_bytes: quantity("io_out_bytes")?,
                host_calls: quantity("host_calls")?,
                wall_ns: quantity("wall_ns")?,
            },
        });
    }
    Ok(out)
}

/// Finalizes in the writer's transaction: the chain head is the writer's (all acknowledged
/// appends are in it).
pub(crate) fn finalize(
    state: &mut WriterState,
    tenant: TenantId,
    period: Period,
    now_ms: i64,
) -> Result<Invoice> {
    let head = (state.head_seq, state.head_hash);
    let mut invoice = draft(&state.conn, tenant, period, Some(head))?;
    let conn = &state.conn;
    let number: i64 = conn.query_row(
        "SELECT COALESCE(MAX(number), 0) + 1 FROM invoices WHERE tenant_id = ?1",
        [tenant.0],
        |row| row.get(0),
    )?;
    let priced_json = serde_json::to_string(&invoice.priced)
        .map_err(|e| Error::Corrupt(format!("serializing the priced invoice: {e}")))?;
    conn.execute(
        "INSERT INTO invoices (tenant_id, number, period_start_ms, period_end_ms, seq_from,
             seq_through, chain_hash, currency, records, subtotal, total, priced_json, late_json,
             finalized_ms)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14)",
        params![
            tenant.0,
            number,
            period.start_ms,
            period.end_ms,
            invoice.seq_from as i64,
            invoice.seq_through as i64,
            &invoice.chain_hash[..],
            invoice.currency.code(),
            invoice.records as i64,
            invoice.subtotal.to_string(),
            invoice.total.to_string(),
            priced_json,
            late_to_json(&invoice.late_usage).to_string(),
            now_ms,
        ],
    )?;
    let id = InvoiceId(conn.last_insert_rowid());
    {
        let mut insert = conn.prepare_cached(
            "INSERT INTO invoice_lines (invoice_id, line_no, plan, version, kind, meter, function,
                 description, quantity, free_quantity, billed_quantity, unit_name, unit_size,
                 amount_exact, amount)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14, ?15)",
        )?;
        for (line_no, (part, line)) in invoice.lines().enumerate() {
            insert.execute(params![
                id.0,
                line_no as i64 + 1,
                part.plan,
                line.version,
                kind_name(line.kind),
                line.meter.map(Meter::as_str),
                line.function,
                line.description,
                line.quantity.to_string(),
                line.free_quantity.to_string(),
                line.billed_quantity.to_string(),
                line.unit_name,
                line.unit_size.to_string(),
                line.amount_exact.to_string(),
                line.amount.to_string(),
            ])?;
        }
        let mut mark = conn.prepare_cached(
            "INSERT OR IGNORE INTO invoice_plan_versions (invoice_id, plan_version_id)
             SELECT ?1, v.id FROM plan_versions v JOIN plans p ON p.id = v.plan_id
             WHERE p.name = ?2 AND v.version = ?3",
        )?;
        for part in &invoice.priced {
            for version in part.versions_used() {
                mark.execute(params![id.0, part.plan, version])?;
            }
        }
    }
    state.set_closed_until(tenant, period.end_ms);
    invoice.id = Some(id);
    invoice.number = Some(number as u64);
    invoice.status = InvoiceStatus::Finalized {
        finalized_ms: now_ms,
    };
    Ok(invoice)
}

fn kind_name(kind: tally_pricing::LineKind) -> String {
    serde_json::to_value(kind)
        .ok()
        .and_then(|value| value.as_str().map(str::to_owned))
        .expect("line kinds serialize as strings")
}

pub(crate) fn void(conn: &Connection, id: InvoiceId, reason: &str, now_ms: i64) -> Result<Invoice> {
    let invoice = get(conn, id)?;
    if let InvoiceStatus::Void { .. } = invoice.status {
        return Err(Error::AlreadyVoid(id.0));
    }
    let changed = conn.execute(
        "UPDATE invoices SET voided_ms = ?2, void_reason = ?3 WHERE id = ?1 AND voided_ms IS NULL",
        params![id.0, now_ms, reason],
    )?;
    assert_eq!(changed, 1);
    get(conn, id)
}

const INVOICE_SELECT: &str = "SELECT id, tenant_id, number, period_start_ms, period_end_ms,
    seq_from, seq_through, chain_hash, currency, records, subtotal, total, priced_json, late_json,
    finalized_ms, voided_ms, void_reason FROM invoices";

fn invoice_from_row(row: &rusqlite::Row<'_>) -> Result<Invoice> {
    let corrupt = |what: &str| Error::Corrupt(format!("invoice {what}"));
    let currency: String = row.get(8)?;
    let priced: String = row.get(12)?;
    let late: String = row.get(13)?;
    let subtotal: String = row.get(10)?;
    let total: String = row.get(11)?;
    let finalized_ms: i64 = row.get(14)?;
    let voided_ms: Option<i64> = row.get(15)?;
    let chain_hash: Vec<u8> = row.get(7)?;
    Ok(Invoice {
        id: Some(InvoiceId(row.get(0)?)),
        number: Some(row.get::<_, i64>(2)? as u64),
        tenant: TenantId(row.get(1)?),
        period: Period {
            start_ms: row.get(3)?,
            end_ms: row.get(4)?,
        },
        status: match voided_ms {
            None => InvoiceStatus::Finalized { finalized_ms },
            Some(voided_ms) => InvoiceStatus::Void {
                finalized_ms,
                voided_ms,
                reason: row.get::<_, Option<String>>(16)?.unwrap_or_default(),
            },
        },
        seq_from: row.get::<_, i64>(5)? as u64,
        seq_through: row.get::<_, i64>(6)? as u64,
        chain_hash: chain_hash.try_into().map_err(|_| corrupt("chain hash"))?,
        records: row.get::<_, i64>(9)? as u64,
        currency: currency.parse().map_err(|_| corrupt("currency"))?,
        priced: serde_json::from_str(&priced).map_err(|e| corrupt(&format!("lines: {e}")))?,
        late_usage: late_from_json(
            &serde_json::from_str(&late).map_err(|e| corrupt(&format!("late usage: {e}")))?,
        )?,
        subtotal: subtotal.parse().map_err(|_| corrupt("subtotal"))?,
        total: total.parse().map_err(|_| corrupt("total"))?,
    })
}

pub(crate) fn get(conn: &Connection, id: InvoiceId) -> Result<Invoice> {
    let mut statement = conn.prepare_cached(&format!("{INVOICE_SELECT} WHERE id = ?1"))?;
    let mut rows = statement.query([id.0])?;
    match rows.next()? {
        Some(row) => invoice_from_row(row),
        None => Err(not_found("invoice", id)),
    }
}

pub(crate) fn list(conn: &Connection, tenant: TenantId) -> Result<Vec<Invoice>> {
    let mut statement = conn.prepare_cached(&format!(
        "{INVOICE_SELECT} WHERE tenant_id = ?1 ORDER BY number"
    ))?;
    let mut rows = statement.query([tenant.0])?;
    let mut out = Vec::new();
    while let Some(row) = rows.next()? {
        out.push(invoice_from_row(row)?);
    }
    Ok(out)
}

/// An amount as a string with exactly the currency's minor units (`5.00`, `12`, `0.125`).
pub fn format_amount(amount: Decimal, currency: Currency) -> String {
    let minor = currency.minor_units();
    assert!(
        amount.scale() <= minor,
        "a rounded amount has at most the currency's minor units"
    );
    let mut amount = amount;
    amount.rescale(minor);
    amount.to_string()
}

/// The CSV columns of [`export_csv`], in order. Stable: new columns are only ever appended.
pub const CSV_COLUMNS: [&str; 22] = [
    "invoice_number",
    "tenant_id",
    "status",
    "period_start_ms",
    "period_end_ms",
    "currency",
    "line",
    "plan",
    "version",
    "kind",
    "meter",
    "function",
    "description",
    "quantity",
    "free_quantity",
    "billed_quantity",
    "unit_name",
    "unit_size",
    "amount_exact",
    "amount",
    "seq_through",
    "chain_hash",
];

fn csv_field(out: &mut String, value: &str) {
    if value.contains([',', '"', '\n', '\r']) {
        out.push('"');
        out.push_str(&value.replace('"', "\"\""));
        out.push('"');
    } else {
        out.push_str(value);
    }
}

/// The invoice as CSV (RFC 4180, `\r\n` line ends): a header of [`CSV_COLUMNS`], then one row per
/// line. Amounts have exactly the currency's minor units; exact amounts and quantities are
/// full-precision decimal strings.
pub fn export_csv(invoice: &Invoice) -> String {
    let mut out = String::new();
    out.push_str(&CSV_COLUMNS.join(","));
    out.push_str("\r\n");
    let number = invoice.number.map(|n| n.to_string()).unwrap_or_default();
    for (index, (part, line)) in invoice.lines().enumerate() {
        let fields = [
            number.clone(),
            invoice.tenant.0.to_string(),
            invoice.status.name().to_owned(),
            invoice.period.start_ms.to_string(),
            invoice.period.end_ms.to_string(),
            invoice.currency.code().to_owned(),
            (index + 1).to_string(),
            part.plan.clone(),
            line.version.to_string(),
            kind_name(line.kind),
            line.meter.map(Meter::as_str).unwrap_or_default().to_owned(),
            line.function.clone().unwrap_or_default(),
            line.description.clone(),
            line.quantity.to_string(),
            line.free_quantity.to_string(),
            line.billed_quantity.to_string(),
            line.unit_name.clone(),
            line.unit_size.to_string(),
            line.amount_exact.to_string(),
            format_amount(line.amount, invoice.currency),
            invoice.seq_through.to_string(),
            hex::encode(invoice.chain_hash),
        ];
        assert_eq!(fields.len(), CSV_COLUMNS.len());
        for (column, field) in fields.iter().enumerate() {
            if column > 0 {
                out.push(',');
            }
            csv_field(&mut out, field);
        }
        out.push_str("\r\n");
    }
    out
}

/// The invoice as a JSON document (amounts as strings with the currency's minor units).
pub fn export_json(invoice: &Invoice) -> serde_json::Value {
    let (finalized_ms, voided_ms, void_reason) = match &invoice.status {
        InvoiceStatus::Draft => (None, None, None),
        InvoiceStatus::Finalized { finalized_ms } => (Some(*finalized_ms), None, None),
        InvoiceStatus::Void {
            finalized_ms,
            voided_ms,
            reason,
        } => (Some(*finalized_ms), Some(*voided_ms), Some(reason.clone())),
    };
    let lines: Vec<serde_json::Value> = invoice
        .lines()
        .enumerate()
        .map(|(index, (part, line))| {
            serde_json::json!({
                "line": index + 1,
                "plan": part.plan,
                "version": line.version,
                "kind": kind_name(line.kind),
                "meter": line.meter.map(Meter::as_str),
                "function": line.function,
                "description": line.description,
                "quantity": line.quantity.to_string(),
                "free_quantity": line.free_quantity.to_string(),
                "billed_quantity": line.billed_quantity.to_string(),
                "unit_name": line.unit_name,
                "unit_size": line.unit_size.to_string(),
                "amount_exact": line.amount_exact.to_string(),
                "amount": format_amount(line.amount, invoice.currency),
            })
        })
        .collect();
    serde_json::json!({
        "id": invoice.id.map(|id| id.0),
        "number": invoice.number,
        "tenant_id": invoice.tenant.0,
        "status": invoice.status.name(),
        "period": { "start_ms": invoice.period.start_ms, "end_ms": invoice.period.end_ms },
        "currency": invoice.currency.code(),
        "minor_units": invoice.currency.minor_units(),
        "chain": {
            "seq_from": invoice.seq_from,
            "seq_through": invoice.seq_through,
            "hash": hex::encode(invoice.chain_hash),
        },
        "records": invoice.records,
        "lines": lines,
        "late_usage": late_to_json(&invoice.late_usage),
        "subtotal": format_amount(invoice.subtotal, invoice.currency),
        "total": format_amount(invoice.total, invoice.currency),
        "finalized_ms": finalized_ms,
        "voided_ms": voided_ms,
        "void_reason": void_reason,
        "priced": invoice.priced,
    })
}

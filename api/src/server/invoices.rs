//! Invoices: draft for a period, finalize and void (admin token), get as JSON or CSV.

use axum::Json;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use tally_ledger::{Invoice, InvoiceId, Period, TenantId};

use super::AppState;
use super::auth::{Admin, Principal};
use super::error::ApiError;
use super::extract::{JsonBody, Path, Query, blocking};
use super::wire::{FormatParams, InvoiceRequest, TenantParam, VoidRequest};

fn period_of(request: &InvoiceRequest) -> Result<Period, ApiError> {
    match (&request.period, request.start_ms, request.end_ms) {
        (Some(label), None, None) => crate::ledger_cmd::month_period(label)
            .map_err(|e| ApiError::InvalidRequest(format!("{e:#}"))),
        (None, Some(start), Some(end)) => Ok(Period::new(start, end)?),
        _ => Err(ApiError::InvalidRequest(
            "give either `period` (YYYY-MM, UTC) or both `start_ms` and `end_ms`".into(),
        )),
    }
}

fn wants_csv(format: Option<&str>, headers: &HeaderMap) -> Result<bool, ApiError> {
    match format {
        Some("csv") => Ok(true),
        Some("json") => Ok(false),
        Some(other) => Err(ApiError::InvalidRequest(format!(
            "format {other:?}: expected json or csv"
        ))),
        None => Ok(headers
            .get(header::ACCEPT)
            .and_then(|v| v.to_str().ok())
            .is_some_and(|accept| accept.contains("text/csv"))),
    }
}

fn render(invoice: &Invoice, csv: bool, status: StatusCode) -> Response {
    if csv {
        (
            status,
            [(header::CONTENT_TYPE, "text/csv; charset=utf-8")],
            tally_ledger::export_csv(invoice),
        )
            .into_response()
    } else {
        (status, Json(tally_ledger::export_json(invoice))).into_response()
    }
}

/// Compute (without storing) the invoice for a period.
#[utoipa::path(post, path = "/v1/invoices/draft", tag = "invoices",
    security(("admin" = []), ("tenant" = [])), params(FormatParams),
    request_body = InvoiceRequest,
    responses((status = 200, description = "the invoice (JSON or CSV)", body = serde_json::Value),
        (status = 422, body = super::openapi::Problem)))]
pub async fn draft_invoice(
    State(state): State<AppState>,
    who: Principal,
    Query(params): Query<FormatParams>,
    headers: HeaderMap,
    JsonBody(body): JsonBody<InvoiceRequest>,
) -> Result<Response, ApiError> {
    let csv = wants_csv(params.format.as_deref(), &headers)?;
    let tenant = who.scope(body.tenant.or(params.tenant))?;
    let period = period_of(&body)?;
    let ledger = state.inner.ledger.clone();
    let invoice = blocking(move || {
        ledger.get_tenant(tenant)?;
        Ok(ledger.draft_invoice(tenant, period)?)
    })
    .await?;
    Ok(render(&invoice, csv, StatusCode::OK))
}

/// Finalize the invoice for a period: stored immutably with the next number (admin token).
#[utoipa::path(post, path = "/v1/invoices", tag = "invoices", security(("admin" = [])),
    params(FormatParams), request_body = InvoiceRequest,
    responses((status = 201, description = "the finalized invoice", body = serde_json::Value),
        (status = 409, body = super::openapi::Problem)))]
pub async fn finalize_invoice(
    State(state): State<AppState>,
    _admin: Admin,
    Query(params): Query<FormatParams>,
    headers: HeaderMap,
    JsonBody(body): JsonBody<InvoiceRequest>,
) -> Result<Response, ApiError> {
    let csv = wants_csv(params.format.as_deref(), &headers)?;
    let tenant = Principal::Admin.scope(body.tenant.or(params.tenant))?;
    let period = period_of(&body)?;
    let ledger = state.inner.ledger.clone();
    let now = state.now_ms();
    let invoice = blocking(move || {
        ledger.get_tenant(tenant)?;
        Ok(ledger.finalize_invoice(tenant, period, now)?)
    })
    .await?;
    Ok(render(&invoice, csv, StatusCode::CREATED))
}

/// Finalized invoices of a tenant, by number.
#[utoipa::path(get, path = "/v1/invoices", tag = "invoices",
    security(("admin" = []), ("tenant" = [])), params(TenantParam),
    responses((status = 200, description = "invoices", body = Vec<serde_json::Value>)))]
pub async fn list_invoices(
    State(state): State<AppState>,
    who: Principal,
    Query(params): Query<TenantParam>,
) -> Result<Json<Vec<serde_json::Value>>, ApiError> {
    let tenant: TenantId = who.scope(params.tenant)?;
    let ledger = state.inner.ledger.clone();
    let invoices = blocking(move || Ok(ledger.list_invoices(tenant)?)).await?;
    Ok(Json(
        invoices.iter().map(tally_ledger::export_json).collect(),
    ))
}

fn owned_invoice(state: &AppState, who: &Principal, id: i64) -> Result<Invoice, ApiError> {
    let not_found = || ApiError::UnknownInvoice(format!("invoice {id} not found"));
    let invoice = match state.inner.ledger.get_invoice(InvoiceId(id)) {
        Ok(invoice) => invoice,
        Err(tally_ledger::Error::NotFound { .. }) => return Err(not_found()),
        Err(e) => return Err(e.into()),
    };
    match who {
        Principal::Tenant(tenant) if tenant.id != invoice.tenant => Err(not_found()),
        _ => Ok(invoice),
    }
}

/// One finalized invoice, as JSON or CSV (`?format=csv` or `Accept: text/csv`).
#[utoipa::path(get, path = "/v1/invoices/{id}", tag = "invoices",
    security(("admin" = []), ("tenant" = [])),
    params(("id" = i64, Path, description = "invoice id"), FormatParams),
    responses((status = 200, description = "the invoice (JSON or CSV)", body = serde_json::Value),
        (status = 404, body = super::openapi::Problem)))]
pub async fn get_invoice(
    State(state): State<AppState>,
    who: Principal,
    Path(id): Path<i64>,
    Query(params): Query<FormatParams>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let csv = wants_csv(params.format.as_deref(), &headers)?;
    let invoice = blocking(move || owned_invoice(&state, &who, id)).await?;
    Ok(render(&invoice, csv, StatusCode::OK))
}

/// Void a finalized invoice (kept, marked; admin token).
#[utoipa::path(post, path = "/v1/invoices/{id}/void", tag = "invoices", security(("admin" = [])),
    params(("id" = i64, Path, description = "invoice id")), request_body = VoidRequest,
    responses((status = 200, description = "the voided invoice", body = serde_json::Value),
        (status = 409, body = super::openapi::Problem)))]
pub async fn void_invoice(
    State(state): State<AppState>,
    _admin: Admin,
    Path(id): Path<i64>,
    JsonBody(body): JsonBody<VoidRequest>,
) -> Result<Response, ApiError> {
    let now = state.now_ms();
    let invoice = blocking(move || {
        owned_invoice(&state, &Principal::Admin, id)?;
        Ok(state
            .inner
            .ledger
            .void_invoice(InvoiceId(id), &body.reason, now)?)
    })
    .await?;
    Ok(render(&invoice, false, StatusCode::OK))
}

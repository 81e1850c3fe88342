//! Usage records (filters, cursor pagination) and daily summaries.

use std::collections::HashMap;

use axum::Json;
use axum::extract::State;
use tally_ledger::{DAY_MS, Ledger, Period, TenantId, UsageQuery};

use super::AppState;
use super::auth::TenantAuth;
use super::error::ApiError;
use super::extract::{Path, Query, blocking};
use super::wire::{
    DailyParams, DailyUsageView, TotalsView, UsagePageView, UsageParams, UsageRecordView,
};

/// Default page size.
pub const PAGE_RECORDS_DEFAULT: usize = 100;
/// Default span of a daily summary, in days.
pub const DAILY_DAYS_DEFAULT: i64 = 30;

pub(crate) fn function_names(
    ledger: &dyn Ledger,
    tenant: TenantId,
) -> Result<HashMap<i64, String>, ApiError> {
    Ok(ledger
        .list_functions(tenant)?
        .into_iter()
        .map(|f| (f.id.0, f.name))
        .collect())
}

/// A tenant's usage records, ordered by (started_ms, id), with a cursor.
#[utoipa::path(get, path = "/v1/usage", tag = "usage", security(("tenant" = [])),
    params(UsageParams),
    responses((status = 200, body = UsagePageView), (status = 400, body = super::openapi::Problem)))]
pub async fn list_usage(
    State(state): State<AppState>,
    auth: TenantAuth,
    Query(params): Query<UsageParams>,
) -> Result<Json<UsagePageView>, ApiError> {
    let ledger = state.inner.ledger.clone();
    let tenant = auth.tenant.id;
    let page = blocking(move || {
        let names = function_names(&*ledger, tenant)?;
        let function = match &params.function {
            None => None,
            Some(name) => Some(
                ledger
                    .find_function(tenant, name)?
                    .ok_or_else(|| {
                        ApiError::UnknownFunction(format!("function {name:?} not found"))
                    })?
                    .id,
            ),
        };
        let range = Period::new(
            params.from_ms.unwrap_or(0),
            params.to_ms.unwrap_or(i64::MAX),
        )?;
        let limit = params.limit.unwrap_or(PAGE_RECORDS_DEFAULT);
        if limit == 0 || limit > tally_ledger::PAGE_RECORDS_MAX {
            return Err(ApiError::InvalidRequest(format!(
                "limit must be 1..={}",
                tally_ledger::PAGE_RECORDS_MAX
            )));
        }
        let page = ledger.list_usage(&UsageQuery {
            tenant,
            function,
            range,
            cursor: params.cursor.clone(),
            limit,
        })?;
        Ok(UsagePageView {
            records: page
                .records
                .iter()
                .map(|r| UsageRecordView::new(r, names.get(&r.record.function.0).cloned()))
                .collect(),
            next_cursor: page.next_cursor,
        })
    })
    .await?;
    Ok(Json(page))
}

/// One usage record of the tenant.
#[utoipa::path(get, path = "/v1/usage/{id}", tag = "usage", security(("tenant" = [])),
    params(("id" = u64, Path, description = "usage record id (chain position)")),
    responses((status = 200, body = UsageRecordView), (status = 404, body = super::openapi::Problem)))]
pub async fn get_usage(
    State(state): State<AppState>,
    auth: TenantAuth,
    Path(id): Path<u64>,
) -> Result<Json<UsageRecordView>, ApiError> {
    let ledger = state.inner.ledger.clone();
    let tenant = auth.tenant.id;
    let view = blocking(move || {
        let record = ledger
            .get_usage(id)?
            .filter(|r| r.record.tenant == tenant)
            .ok_or_else(|| ApiError::UnknownUsageRecord(format!("usage record {id} not found")))?;
        let names = function_names(&*ledger, tenant)?;
        Ok(UsageRecordView::new(
            &record,
            names.get(&record.record.function.0).cloned(),
        ))
    })
    .await?;
    Ok(Json(view))
}

/// Totals per UTC day, function and meter.
#[utoipa::path(get, path = "/v1/usage/daily", tag = "usage", security(("tenant" = [])),
    params(DailyParams),
    responses((status = 200, body = Vec<DailyUsageView>), (status = 400, body = super::openapi::Problem)))]
pub async fn daily_usage(
    State(state): State<AppState>,
    auth: TenantAuth,
    Query(params): Query<DailyParams>,
) -> Result<Json<Vec<DailyUsageView>>, ApiError> {
    let ledger = state.inner.ledger.clone();
    let tenant = auth.tenant.id;
    let today_end = (state.now_ms().div_euclid(DAY_MS) + 1) * DAY_MS;
    let to_ms = params.to_ms.unwrap_or(today_end);
    let from_ms = params
        .from_ms
        .unwrap_or(to_ms.saturating_sub(DAILY_DAYS_DEFAULT * DAY_MS));
    let rows = blocking(move || {
        let names = function_names(&*ledger, tenant)?;
        let rows = ledger.daily_usage(tenant, Period::new(from_ms, to_ms)?)?;
        Ok(rows
            .iter()
            .map(|row| DailyUsageView {
                day_start_ms: row.day_start_ms,
                function_id: row.function.0,
                function: names.get(&row.function.0).cloned(),
                meters: TotalsView::from(&row.totals),
            })
            .collect::<Vec<_>>())
    })
    .await?;
    Ok(Json(rows))
}

//! Tenants and their API keys (admin token).

use axum::Json;
use axum::extract::State;
use axum::response::IntoResponse;
use tally_ledger::{ApiKeyId, TenantId};

use super::auth::Admin;
use super::error::ApiError;
use super::extract::{JsonBody, Path, blocking};
use super::wire::{ApiKeyView, CreateTenant, CreatedKeyView, TenantView};
use super::{AppState, CREATED};

/// Create a tenant.
#[utoipa::path(post, path = "/v1/tenants", tag = "tenants", request_body = CreateTenant,
    security(("admin" = [])),
    responses((status = 201, body = TenantView), (status = 401, body = super::openapi::Problem),
        (status = 409, body = super::openapi::Problem)))]
pub async fn create_tenant(
    State(state): State<AppState>,
    _admin: Admin,
    JsonBody(body): JsonBody<CreateTenant>,
) -> Result<impl IntoResponse, ApiError> {
    let ledger = state.inner.ledger.clone();
    let now = state.now_ms();
    let tenant = blocking(move || Ok(ledger.create_tenant(&body.name, now)?)).await?;
    Ok((CREATED, Json(TenantView::from(&tenant))))
}

/// List tenants.
#[utoipa::path(get, path = "/v1/tenants", tag = "tenants", security(("admin" = [])),
    responses((status = 200, body = Vec<TenantView>), (status = 401, body = super::openapi::Problem)))]
pub async fn list_tenants(
    State(state): State<AppState>,
    _admin: Admin,
) -> Result<Json<Vec<TenantView>>, ApiError> {
    let ledger = state.inner.ledger.clone();
    let tenants = blocking(move || Ok(ledger.list_tenants()?)).await?;
    Ok(Json(tenants.iter().map(TenantView::from).collect()))
}

/// One tenant.
#[utoipa::path(get, path = "/v1/tenants/{tenant}", tag = "tenants", security(("admin" = [])),
    params(("tenant" = i64, Path, description = "tenant id")),
    responses((status = 200, body = TenantView), (status = 404, body = super::openapi::Problem)))]
pub async fn get_tenant(
    State(state): State<AppState>,
    _admin: Admin,
    Path(tenant): Path<i64>,
) -> Result<Json<TenantView>, ApiError> {
    let ledger = state.inner.ledger.clone();
    let tenant = blocking(move || Ok(ledger.get_tenant(TenantId(tenant))?)).await?;
    Ok(Json(TenantView::from(&tenant)))
}

/// Create an API key for a tenant; the key is in this answer only.
#[utoipa::path(post, path = "/v1/tenants/{tenant}/keys", tag = "tenants", security(("admin" = [])),
    params(("tenant" = i64, Path, description = "tenant id")),
    responses((status = 201, body = CreatedKeyView), (status = 404, body = super::openapi::Problem)))]
pub async fn create_key(
    State(state): State<AppState>,
    _admin: Admin,
    Path(tenant): Path<i64>,
) -> Result<impl IntoResponse, ApiError> {
    let ledger = state.inner.ledger.clone();
    let now = state.now_ms();
    let created = blocking(move || {
        ledger.get_tenant(TenantId(tenant))?;
        Ok(ledger.create_api_key(TenantId(tenant), now)?)
    })
    .await?;
    Ok((
        CREATED,
        Json(CreatedKeyView {
            id: created.key.id.0,
            tenant_id: created.key.tenant.0,
            key: created.clear,
            prefix: created.key.prefix,
            created_ms: created.key.created_ms,
        }),
    ))
}

/// A tenant's keys (prefixes only).
#[utoipa::path(get, path = "/v1/tenants/{tenant}/keys", tag = "tenants", security(("admin" = [])),
    params(("tenant" = i64, Path, description = "tenant id")),
    responses((status = 200, body = Vec<ApiKeyView>), (status = 404, body = super::openapi::Problem)))]
pub async fn list_keys(
    State(state): State<AppState>,
    _admin: Admin,
    Path(tenant): Path<i64>,
) -> Result<Json<Vec<ApiKeyView>>, ApiError> {
    let ledger = state.inner.ledger.clone();
    let keys = blocking(move || {
        ledger.get_tenant(TenantId(tenant))?;
        Ok(ledger.list_api_keys(TenantId(tenant))?)
    })
    .await?;
    Ok(Json(keys.iter().map(ApiKeyView::from).collect()))
}

/// Revoke a key.
#[utoipa::path(delete, path = "/v1/tenants/{tenant}/keys/{key}", tag = "tenants",
    security(("admin" = [])),
    params(("tenant" = i64, Path, description = "tenant id"), ("key" = i64, Path, description = "key id")),
    responses((status = 200, body = ApiKeyView), (status = 404, body = super::openapi::Problem)))]
pub async fn revoke_key(
    State(state): State<AppState>,
    _admin: Admin,
    Path((tenant, key)): Path<(i64, i64)>,
) -> Result<Json<ApiKeyView>, ApiError> {
    let ledger = state.inner.ledger.clone();
    let now = state.now_ms();
    let revoked = blocking(move || {
        let keys = ledger.list_api_keys(TenantId(tenant))?;
        if !keys.iter().any(|k| k.id.0 == key) {
            return Err(ApiError::NotFound(format!(
                "key {key} of tenant {tenant} not found"
            )));
        }
        Ok(ledger.revoke_api_key(ApiKeyId(key), now)?)
    })
    .await?;
    state.forget_keys();
    Ok(Json(ApiKeyView::from(&revoked)))
}

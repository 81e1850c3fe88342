//! Plans, plan versions and subscriptions (the admin token writes; tenants may read plans).

use axum::Json;
use axum::extract::State;
use axum::response::IntoResponse;
use tally_ledger::{PlanId, TenantId};

use super::auth::{Admin, Principal};
use super::error::ApiError;
use super::extract::{JsonBody, Path, RawBody, blocking};
use super::wire::{PlanVersionView, PlanView, Subscribe, SubscriptionView};
use super::{AppState, CREATED};

fn plan_view(
    plan: &tally_ledger::Plan,
    versions: &[tally_ledger::PlanVersion],
) -> Result<PlanView, ApiError> {
    let parse = |text: &str| {
        serde_json::from_str(text).map_err(|e| ApiError::Internal(format!("stored plan: {e}")))
    };
    Ok(PlanView {
        id: plan.id.0,
        name: plan.name.clone(),
        header: parse(&plan.header_json)?,
        versions: versions
            .iter()
            .map(|v| {
                Ok(PlanVersionView {
                    id: v.id.0,
                    version: v.version,
                    pricing: parse(&v.pricing_json)?,
                    created_ms: v.created_ms,
                })
            })
            .collect::<Result<_, ApiError>>()?,
        created_ms: plan.created_ms,
    })
}

fn check_json_text(bytes: &[u8]) -> Result<String, ApiError> {
    let text = std::str::from_utf8(bytes).map_err(|_| ApiError::InvalidPlan {
        detail: "the plan is not UTF-8".into(),
        problems: vec!["the body is not UTF-8".into()],
    })?;
    if let Err(e) = serde_json::from_str::<serde_json::Value>(text) {
        return Err(ApiError::InvalidPlan {
            detail: format!("the plan is not JSON: {e}"),
            problems: vec![format!("not JSON: {e}")],
        });
    }
    Ok(text.to_owned())
}

/// Create a plan from a pricing document (see docs/pricing.md); each element of `versions`
/// becomes a version.
#[utoipa::path(post, path = "/v1/plans", tag = "plans", security(("admin" = [])),
    request_body(content = serde_json::Value, description = "pricing document", content_type = "application/json"),
    responses((status = 201, body = PlanView), (status = 422, body = super::openapi::Problem),
        (status = 409, body = super::openapi::Problem)))]
pub async fn create_plan(
    State(state): State<AppState>,
    _admin: Admin,
    RawBody(body): RawBody,
) -> Result<impl IntoResponse, ApiError> {
    let text = check_json_text(&body)?;
    let ledger = state.inner.ledger.clone();
    let now = state.now_ms();
    let (plan, versions) = blocking(move || Ok(ledger.create_plan(&text, now)?)).await?;
    Ok((CREATED, Json(plan_view(&plan, &versions)?)))
}

/// List plans.
#[utoipa::path(get, path = "/v1/plans", tag = "plans", security(("admin" = []), ("tenant" = [])),
    responses((status = 200, body = Vec<PlanView>)))]
pub async fn list_plans(
    State(state): State<AppState>,
    _who: Principal,
) -> Result<Json<Vec<PlanView>>, ApiError> {
    let ledger = state.inner.ledger.clone();
    let plans = blocking(move || {
        let mut out = Vec::new();
        for plan in ledger.list_plans()? {
            let versions = ledger.list_plan_versions(plan.id)?;
            out.push((plan, versions));
        }
        Ok(out)
    })
    .await?;
    plans
        .iter()
        .map(|(p, v)| plan_view(p, v))
        .collect::<Result<Vec<_>, _>>()
        .map(Json)
}

/// One plan with its versions.
#[utoipa::path(get, path = "/v1/plans/{plan}", tag = "plans", security(("admin" = []), ("tenant" = [])),
    params(("plan" = i64, Path, description = "plan id")),
    responses((status = 200, body = PlanView), (status = 404, body = super::openapi::Problem)))]
pub async fn get_plan(
    State(state): State<AppState>,
    _who: Principal,
    Path(plan): Path<i64>,
) -> Result<Json<PlanView>, ApiError> {
    let ledger = state.inner.ledger.clone();
    let (plan, versions) = blocking(move || {
        let plan = ledger.get_plan(PlanId(plan))?;
        let versions = ledger.list_plan_versions(plan.id)?;
        Ok((plan, versions))
    })
    .await?;
    Ok(Json(plan_view(&plan, &versions)?))
}

/// Add a version (one element of a pricing document's `versions`).
#[utoipa::path(post, path = "/v1/plans/{plan}/versions", tag = "plans", security(("admin" = [])),
    params(("plan" = i64, Path, description = "plan id")),
    request_body(content = serde_json::Value, description = "one plan version", content_type = "application/json"),
    responses((status = 201, body = PlanView), (status = 422, body = super::openapi::Problem)))]
pub async fn add_version(
    State(state): State<AppState>,
    _admin: Admin,
    Path(plan): Path<i64>,
    RawBody(body): RawBody,
) -> Result<impl IntoResponse, ApiError> {
    let text = check_json_text(&body)?;
    let ledger = state.inner.ledger.clone();
    let now = state.now_ms();
    let (plan, versions) = blocking(move || {
        ledger.add_plan_version(PlanId(plan), &text, now)?;
        let plan = ledger.get_plan(PlanId(plan))?;
        let versions = ledger.list_plan_versions(plan.id)?;
        Ok((plan, versions))
    })
    .await?;
    Ok((CREATED, Json(plan_view(&plan, &versions)?)))
}

/// Subscribe a tenant to a plan from an instant on.
#[utoipa::path(post, path = "/v1/tenants/{tenant}/subscriptions", tag = "plans",
    security(("admin" = [])), params(("tenant" = i64, Path, description = "tenant id")),
    request_body = Subscribe,
    responses((status = 201, body = SubscriptionView), (status = 404, body = super::openapi::Problem)))]
pub async fn subscribe(
    State(state): State<AppState>,
    _admin: Admin,
    Path(tenant): Path<i64>,
    JsonBody(body): JsonBody<Subscribe>,
) -> Result<impl IntoResponse, ApiError> {
    let ledger = state.inner.ledger.clone();
    let subscription = blocking(move || {
        ledger.get_tenant(TenantId(tenant))?;
        let plan = match (body.plan_id, &body.plan) {
            (Some(id), _) => ledger.get_plan(PlanId(id))?.id,
            (None, Some(name)) => {
                ledger
                    .find_plan(name)?
                    .ok_or_else(|| ApiError::UnknownPlan(format!("plan {name:?} not found")))?
                    .id
            }
            (None, None) => {
                return Err(ApiError::InvalidRequest(
                    "give `plan_id` or `plan` (the name)".into(),
                ));
            }
        };
        Ok(ledger.subscribe(TenantId(tenant), plan, body.from_ms)?)
    })
    .await?;
    Ok((
        CREATED,
        Json(SubscriptionView {
            id: subscription.id.0,
            tenant_id: subscription.tenant.0,
            plan_id: subscription.plan.0,
            from_ms: subscription.from_ms,
        }),
    ))
}

/// A tenant's subscriptions.
#[utoipa::path(get, path = "/v1/tenants/{tenant}/subscriptions", tag = "plans",
    security(("admin" = [])), params(("tenant" = i64, Path, description = "tenant id")),
    responses((status = 200, body = Vec<SubscriptionView>)))]
pub async fn list_subscriptions(
    State(state): State<AppState>,
    _admin: Admin,
    Path(tenant): Path<i64>,
) -> Result<Json<Vec<SubscriptionView>>, ApiError> {
    let ledger = state.inner.ledger.clone();
    let subscriptions = blocking(move || {
        ledger.get_tenant(TenantId(tenant))?;
        Ok(ledger.list_subscriptions(TenantId(tenant))?)
    })
    .await?;
    Ok(Json(
        subscriptions
            .iter()
            .map(|s| SubscriptionView {
                id: s.id.0,
                tenant_id: s.tenant.0,
                plan_id: s.plan.0,
                from_ms: s.from_ms,
            })
            .collect(),
    ))
}

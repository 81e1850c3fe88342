//! `/openapi.json`: the OpenAPI 3.1 document generated from the handlers' annotations.

use axum::Json;
use serde::Serialize;
use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
use utoipa::{Modify, OpenApi, ToSchema};

use super::wire;

/// An error answer (`application/problem+json`, RFC 9457).
#[derive(Serialize, ToSchema)]
pub struct Problem {
    /// `https://tally.dev/problems/<slug>`, stable per kind of error.
    #[serde(rename = "type")]
    pub kind: String,
    /// Short summary of the kind.
    pub title: String,
    /// HTTP status.
    pub status: u16,
    /// What happened this time.
    pub detail: String,
    /// Failed invocations: the usage record that bills the work done.
    pub usage_id: Option<u64>,
    /// Failed invocations: the outcome kind.
    pub outcome: Option<String>,
    /// Rejected plans: every problem found.
    pub problems: Option<Vec<String>>,
}

struct Security;

impl Modify for Security {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        let components = openapi.components.get_or_insert_with(Default::default);
        for name in ["admin", "tenant"] {
            components.add_security_scheme(
                name,
                SecurityScheme::Http(HttpBuilder::new().scheme(HttpAuthScheme::Bearer).build()),
            );
        }
    }
}

/// The API description.
#[derive(OpenApi)]
#[openapi(
    info(title = "tally", description = "Metered WebAssembly functions with exact, auditable invoices. See docs/api.md."),
    modifiers(&Security),
    paths(
        super::metrics::healthz, super::metrics::metrics, openapi_json,
        super::tenants::create_tenant, super::tenants::list_tenants, super::tenants::get_tenant,
        super::tenants::create_key, super::tenants::list_keys, super::tenants::revoke_key,
        super::plans::create_plan, super::plans::list_plans, super::plans::get_plan,
        super::plans::add_version, super::plans::subscribe, super::plans::list_subscriptions,
        super::modules::upload_module, super::modules::list_modules, super::modules::get_module,
        super::modules::download_original, super::modules::download_instrumented,
        super::functions::put_function, super::functions::get_function,
        super::functions::list_functions, super::functions::invoke,
        super::usage::list_usage, super::usage::get_usage, super::usage::daily_usage,
        super::invoices::draft_invoice, super::invoices::finalize_invoice,
        super::invoices::list_invoices, super::invoices::get_invoice,
        super::invoices::void_invoice,
        super::audit::verify, super::audit::audit_record,
    ),
    components(schemas(Problem, wire::TenantView, wire::CreateTenant, wire::ApiKeyView,
        wire::CreatedKeyView, wire::ModuleView, wire::InstrumentStatsView, wire::PutFunction,
        wire::FunctionView, wire::Limits, wire::LimitsRequest, wire::UsageRecordView,
        wire::UsagePageView, wire::OutcomeView, wire::MetersView, wire::TotalsView,
        wire::DailyUsageView, wire::PlanView, wire::PlanVersionView, wire::Subscribe,
        wire::SubscriptionView, wire::InvoiceRequest, wire::VoidRequest, wire::VerifyView,
        wire::AuditRecordView, wire::Health)),
)]
pub struct ApiDoc;

/// This document.
#[utoipa::path(get, path = "/openapi.json", tag = "operations",
    responses((status = 200, description = "OpenAPI 3.1 document", body = serde_json::Value)))]
pub async fn openapi_json() -> Json<utoipa::openapi::OpenApi> {
    Json(ApiDoc::openapi())
}

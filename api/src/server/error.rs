//! The API's one error type and the single place where errors become HTTP statuses.
//!
//! Every error answer is `application/problem+json` (RFC 9457) with a stable `type` URI per
//! kind of problem (`https://tally.dev/problems/<slug>`), a `title`, the `status` and a `detail`.
//! Some problems carry extension members (the usage id of a billed failed invocation, the list
//! of problems in a rejected plan).

use std::collections::BTreeMap;
use std::sync::Mutex;

use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::Serialize;

/// Prefix of every problem `type`.
pub const PROBLEM_TYPE_BASE: &str = "https://tally.dev/problems/";
/// Content type of error answers.
pub const PROBLEM_CONTENT_TYPE: &str = "application/problem+json";

/// Problem answers sent, by slug (exported by `/metrics`).
static PROBLEMS_SENT: Mutex<BTreeMap<&'static str, u64>> = Mutex::new(BTreeMap::new());

/// Counts of problem answers by slug.
pub fn problems_sent() -> Vec<(&'static str, u64)> {
    let map = PROBLEMS_SENT.lock().unwrap_or_else(|e| e.into_inner());
    map.iter().map(|(k, v)| (*k, *v)).collect()
}

/// Everything an API call can answer other than success.
#[derive(Debug)]
pub enum ApiError {
    /// No credentials, unknown or revoked key, or a tenant key on an admin endpoint.
    Unauthorized(String),
    /// No such route.
    RouteNotFound,
    /// No function of this name (for this tenant).
    UnknownFunction(String),
    /// No module with this id (for this tenant).
    UnknownModule(String),
    /// No tenant with this id.
    UnknownTenant(String),
    /// No plan with this id.
    UnknownPlan(String),
    /// No invoice with this id (for this tenant).
    UnknownInvoice(String),
    /// No usage record with this id (for this tenant).
    UnknownUsageRecord(String),
    /// Some other entity does not exist.
    NotFound(String),
    /// The request is malformed (bad JSON, bad query, bad header, failed validation).
    InvalidRequest(String),
    /// The method is not allowed on this route.
    MethodNotAllowed,
    /// The module body is larger than the server allows.
    ModuleTooLarge {
        /// The limit in bytes.
        limit_bytes: usize,
    },
    /// The request body is larger than the server allows.
    BodyTooLarge {
        /// The limit in bytes.
        limit_bytes: usize,
    },
    /// The request body did not arrive within the time allowed.
    BodyTimeout {
        /// The time allowed, in seconds.
        seconds: u64,
    },
    /// The bytes are not a module tally can meter and run.
    InvalidModule(String),
    /// A function's limits exceed the server-wide maximums.
    LimitAboveMaximum(String),
    /// The plan JSON was rejected.
    InvalidPlan {
        /// Summary.
        detail: String,
        /// Every problem found.
        problems: Vec<String>,
    },
    /// A unique name is taken.
    AlreadyExists(String),
    /// An idempotency key was reused for a different request.
    IdempotencyConflict(String),
    /// The period is already finalized.
    PeriodAlreadyFinalized(String),
    /// The period starts before the end of the last finalized one.
    PeriodClosed(String),
    /// The tenant has no subscription covering the usage.
    NoSubscription(String),
    /// The invoice is already void.
    InvoiceAlreadyVoid(String),
    /// The plan version has priced a finalized invoice.
    PlanVersionInUse(String),
    /// A subscription would change an invoiced period.
    SubscriptionInClosedPeriod(String),
    /// Pricing failed (mixed currencies, overflow, ...).
    PricingFailed(String),
    /// The guest ran, was billed, and did not exit normally.
    GuestFailed(Box<GuestFailure>),
    /// A transient failure: retrying (with the same idempotency key) is safe.
    Unavailable(String),
    /// A bug or an I/O failure on the server.
    Internal(String),
}

/// A billed invocation that trapped or hit a limit.
#[derive(Debug, Clone)]
pub struct GuestFailure {
    /// The outcome kind (`trap`, `budget_exhausted`, ...).
    pub outcome: &'static str,
    /// Trap description, if any.
    pub trap: Option<String>,
    /// The usage record that bills it.
    pub usage_id: u64,
    /// Ops executed (billed).
    pub ops: u64,
    /// The last bytes of the guest's stderr, lossily decoded.
    pub stderr_tail: String,
    /// Usage headers to add to the answer.
    pub headers: HeaderMap,
}

#[derive(Serialize)]
struct ProblemBody<'a> {
    #[serde(rename = "type")]
    kind: String,
    title: &'a str,
    status: u16,
    detail: String,
    #[serde(flatten)]
    extensions: serde_json::Map<String, serde_json::Value>,
}

impl ApiError {
    /// The status, the slug of the problem type and its title. The only error → status table.
    pub fn classify(&self) -> (StatusCode, &'static str, &'static str) {
        use ApiError::*;
        match self {
            Unauthorized(_) => (
                StatusCode::UNAUTHORIZED,
                "unauthorized",
                "Missing or invalid credentials",
            ),
            RouteNotFound => (StatusCode::NOT_FOUND, "not-found", "No such resource"),
            UnknownFunction(_) => (
                StatusCode::NOT_FOUND,
                "unknown-function",
                "No such function",
            ),
            UnknownModule(_) => (StatusCode::NOT_FOUND, "unknown-module", "No such module"),
            UnknownTenant(_) => (StatusCode::NOT_FOUND, "unknown-tenant", "No such tenant"),
            UnknownPlan(_) => (StatusCode::NOT_FOUND, "unknown-plan", "No such plan"),
            UnknownInvoice(_) => (StatusCode::NOT_FOUND, "unknown-invoice", "No such invoice"),
            UnknownUsageRecord(_) => (
                StatusCode::NOT_FOUND,
                "unknown-usage-record",
                "No such usage record",
            ),
            NotFound(_) => (StatusCode::NOT_FOUND, "not-found", "No such resource"),
            InvalidRequest(_) => (
                StatusCode::BAD_REQUEST,
                "invalid-request",
                "The request is invalid",
            ),
            MethodNotAllowed => (
                StatusCode::METHOD_NOT_ALLOWED,
                "method-not-allowed",
                "Method not allowed",
            ),
            ModuleTooLarge { .. } => (
                StatusCode::PAYLOAD_TOO_LARGE,
                "module-too-large",
                "The module is too large",
            ),
            BodyTooLarge { .. } => (
                StatusCode::PAYLOAD_TOO_LARGE,
                "body-too-large",
                "The request body is too large",
            ),
            BodyTimeout { .. } => (
                StatusCode::REQUEST_TIMEOUT,
                "body-timeout",
                "The request body did not arrive in time",
            ),
            InvalidModule(_) => (
                StatusCode::UNPROCESSABLE_ENTITY,
                "invalid-module",
                "The module cannot be metered and run",
            ),
            LimitAboveMaximum(_) => (
                StatusCode::UNPROCESSABLE_ENTITY,
                "limit-above-maximum",
                "A limit exceeds the server's maximum",
            ),
            InvalidPlan { .. } => (
                StatusCode::UNPROCESSABLE_ENTITY,
                "invalid-plan",
                "The plan is invalid",
            ),
            AlreadyExists(_) => (StatusCode::CONFLICT, "already-exists", "Already exists"),
            IdempotencyConflict(_) => (
                StatusCode::CONFLICT,
                "idempotency-conflict",
                "The idempotency key was used for a different request",
            ),
            PeriodAlreadyFinalized(_) => (
                StatusCode::CONFLICT,
                "period-already-finalized",
                "The period is already finalized",
            ),
            PeriodClosed(_) => (
                StatusCode::CONFLICT,
                "period-closed",
                "The period overlaps a finalized period",
            ),
            NoSubscription(_) => (
                StatusCode::UNPROCESSABLE_ENTITY,
                "no-subscription",
                "The tenant has no subscription for the usage",
            ),
            InvoiceAlreadyVoid(_) => (
                StatusCode::CONFLICT,
                "invoice-already-void",
                "The invoice is already void",
            ),
            PlanVersionInUse(_) => (
                StatusCode::CONFLICT,
                "plan-version-in-use",
                "The plan version is in use and immutable",
            ),
            SubscriptionInClosedPeriod(_) => (
                StatusCode::CONFLICT,
                "subscription-in-closed-period",
                "The subscription would change an invoiced period",
            ),
            PricingFailed(_) => (
                StatusCode::UNPROCESSABLE_ENTITY,
                "pricing-failed",
                "The usage cannot be priced",
            ),
            GuestFailed(failure) => match failure.outcome {
                "budget_exhausted" => (
                    StatusCode::UNPROCESSABLE_ENTITY,
                    "budget-exhausted",
                    "The function exceeded its op budget (work done is billed)",
                ),
                "memory_limit" => (
                    StatusCode::UNPROCESSABLE_ENTITY,
                    "memory-limit",
                    "The function exceeded its memory limit (work done is billed)",
                ),
                "deadline" => (
                    StatusCode::UNPROCESSABLE_ENTITY,
                    "deadline-exceeded",
                    "The function exceeded its wall-time limit (work done is billed)",
                ),
                "output_limit" => (
                    StatusCode::UNPROCESSABLE_ENTITY,
                    "output-limit",
                    "The function exceeded its output limit (work done is billed)",
                ),
                _ => (
                    StatusCode::UNPROCESSABLE_ENTITY,
                    "guest-trapped",
                    "The function trapped (work done is billed)",
                ),
            },
            Unavailable(_) => (
                StatusCode::SERVICE_UNAVAILABLE,
                "unavailable",
                "Temporarily unavailable: retry with the same idempotency key",
            ),
            Internal(_) => (
                StatusCode::INTERNAL_SERVER_ERROR,
                "internal",
                "Internal server error",
            ),
        }
    }

    fn detail(&self) -> String {
        use ApiError::*;
        match self {
            RouteNotFound => "no route matches the path".into(),
            MethodNotAllowed => "the route does not accept this method".into(),
            ModuleTooLarge { limit_bytes } => {
                format!("the module is larger than the limit of {limit_bytes} bytes")
            }
            BodyTooLarge { limit_bytes } => {
                format!("the request body is larger than the limit of {limit_bytes} bytes")
            }
            BodyTimeout { seconds } => {
                format!("the request body did not arrive within {seconds} s")
            }
            InvalidPlan { detail, .. } => detail.clone(),
            GuestFailed(failure) => match &failure.trap {
                Some(trap) => format!(
                    "the function ended with {} ({trap}) after {} ops; billed as usage record {}",
                    failure.outcome, failure.ops, failure.usage_id
                ),
                None => format!(
                    "the function ended with {} after {} ops; billed as usage record {}",
                    failure.outcome, failure.ops, failure.usage_id
                ),
            },
            Unauthorized(d)
            | UnknownFunction(d)
            | UnknownModule(d)
            | UnknownTenant(d)
            | UnknownPlan(d)
            | UnknownInvoice(d)
            | UnknownUsageRecord(d)
            | NotFound(d)
            | InvalidRequest(d)
            | InvalidModule(d)
            | LimitAboveMaximum(d)
            | AlreadyExists(d)
            | IdempotencyConflict(d)
            | PeriodAlreadyFinalized(d)
            | PeriodClosed(d)
            | NoSubscription(d)
            | InvoiceAlreadyVoid(d)
            | PlanVersionInUse(d)
            | SubscriptionInClosedPeriod(d)
            | PricingFailed(d)
            | Unavailable(d)
            | Internal(d) => d.clone(),
        }
    }

    /// The problem document as JSON bytes and its status (also stored for idempotent replays).
    pub fn problem(&self) -> (StatusCode, Vec<u8>) {
        let (status, slug, title) = self.classify();
        let mut extensions = serde_json::Map::new();
        match self {
            ApiError::InvalidPlan { problems, .. } => {
                extensions.insert("problems".into(), serde_json::json!(problems));
            }
            ApiError::GuestFailed(failure) => {
                extensions.insert("usage_id".into(), failure.usage_id.into());
                extensions.insert("outcome".into(), failure.outcome.into());
                extensions.insert("ops".into(), failure.ops.into());
                if let Some(trap) = &failure.trap {
                    extensions.insert("trap".into(), trap.clone().into());
                }
                extensions.insert("stderr_tail".into(), failure.stderr_tail.clone().into());
            }
            _ => {}
        }
        let body = ProblemBody {
            kind: format!("{PROBLEM_TYPE_BASE}{slug}"),
            title,
            status: status.as_u16(),
            detail: self.detail(),
            extensions,
        };
        let bytes = serde_json::to_vec(&body).expect("a problem document serializes");
        (status, bytes)
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let (_, slug, _) = self.classify();
        {
            let mut map = PROBLEMS_SENT.lock().unwrap_or_else(|e| e.into_inner());
            *map.entry(slug).or_insert(0) += 1;
        }
        if let ApiError::Internal(detail) = &self {
            tracing::error!("internal error: {detail}");
        }
        let (status, body) = self.problem();
        let mut response = (status, body).into_response();
        response.headers_mut().insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static(PROBLEM_CONTENT_TYPE),
        );
        if let ApiError::GuestFailed(failure) = &self {
            for (name, value) in &failure.headers {
                response.headers_mut().insert(name.clone(), value.clone());
            }
        }
        if matches!(self, ApiError::Unauthorized(_)) {
            response.headers_mut().insert(
                header::WWW_AUTHENTICATE,
                HeaderValue::from_static("Bearer realm=\"tally\""),
            );
        }
        response
    }
}

impl From<tally_ledger::Error> for ApiError {
    fn from(error: tally_ledger::Error) -> ApiError {
        use tally_ledger::Error as L;
        let detail = error.to_string();
        match error {
            L::Invalid { .. } => ApiError::InvalidRequest(detail),
            L::NotFound { what, .. } => match what {
                "function" => ApiError::UnknownFunction(detail),
                "module" => ApiError::UnknownModule(detail),
                "tenant" => ApiError::UnknownTenant(detail),
                "plan" => ApiError::UnknownPlan(detail),
                "invoice" => ApiError::UnknownInvoice(detail),
                _ => ApiError::NotFound(detail),
            },
            L::AlreadyExists { .. } => ApiError::AlreadyExists(detail),
            L::ExistsWithDifferentFields { .. } => ApiError::IdempotencyConflict(detail),
            L::PlanVersionInUse(_) => ApiError::PlanVersionInUse(detail),
            L::PlanRejected(pricing) => plan_rejected(&pricing),
            L::Pricing(_) | L::MixedCurrencies { .. } | L::Overflow(_) => {
                ApiError::PricingFailed(detail)
            }
            L::NoSubscription { .. } => ApiError::NoSubscription(detail),
            L::PeriodAlreadyFinalized { .. } => ApiError::PeriodAlreadyFinalized(detail),
            L::PeriodClosed { .. } => ApiError::PeriodClosed(detail),
            L::SubscriptionInClosedPeriod { .. } => ApiError::SubscriptionInClosedPeriod(detail),
            L::AlreadyVoid(_) => ApiError::InvoiceAlreadyVoid(detail),
            L::BatchAborted(_) | L::WriterStopped => ApiError::Unavailable(detail),
            _ => ApiError::Internal(detail),
        }
    }
}

/// A plan rejected by `tally-pricing`, with every problem listed.
pub fn plan_rejected(error: &tally_pricing::Error) -> ApiError {
    let problems = match error {
        tally_pricing::Error::InvalidPlan(problems) => {
            problems.0.iter().map(|p| p.to_string()).collect()
        }
        other => vec![other.to_string()],
    };
    ApiError::InvalidPlan {
        detail: format!("the plan was rejected: {}", problems.join("; ")),
        problems,
    }
}

impl From<tokio::task::JoinError> for ApiError {
    fn from(error: tokio::task::JoinError) -> ApiError {
        ApiError::Internal(format!("a blocking task failed: {error}"))
    }
}

impl From<std::io::Error> for ApiError {
    fn from(error: std::io::Error) -> ApiError {
        ApiError::Internal(format!("i/o: {error}"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn problem_documents_have_type_title_status_detail() {
        let (status, body) = ApiError::UnknownFunction("function nope not found".into()).problem();
        assert_eq!(status, StatusCode::NOT_FOUND);
        let json: serde_json::Value = serde_json::from_slice(&body).unwrap();
        assert_eq!(json["type"], "https://tally.dev/problems/unknown-function");
        assert_eq!(json["status"], 404);
        assert_eq!(json["title"], "No such function");
        assert_eq!(json["detail"], "function nope not found");
    }
}

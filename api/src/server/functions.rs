//! Functions (a name bound to a module with limits, arguments and environment) and `invoke`.
//!
//! Invoke: run → usage record appended (acknowledged = committed) → answer. A guest that exits
//! answers 200 with its stdout; one that traps or hits a limit answers 422 problem+json with the
//! usage id: the work done is billed either way. The usage is in `Tally-*` headers in both cases.

use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::Json;
use axum::extract::State;
use axum::http::{HeaderMap, HeaderName, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use tally_ledger::{
    IDEMPOTENCY_KEY_BYTES_MAX, NewUsageRecord, Outcome, OutcomeKind, TRAP_MESSAGE_BYTES_MAX,
    TenantId, UsageMeters, UsageRecord,
};
use tally_runtime::Invocation;

use super::auth::TenantAuth;
use super::error::{ApiError, GuestFailure, PROBLEM_CONTENT_TYPE};
use super::extract::{JsonBody, Path, RawBody, blocking};
use super::store::Reply;
use super::wire::{FunctionConfig, FunctionView, Limits, PutFunction};
use super::{AppState, CREATED, FUNCTION_ARGS_MAX, FunctionEntry, lock};

/// Bytes of stderr quoted in a failed invocation's problem document.
pub const STDERR_TAIL_BYTES_MAX: usize = 2_048;
/// Idempotency key header.
pub const IDEMPOTENCY_KEY: &str = "idempotency-key";

fn function_view(
    function: &tally_ledger::Function,
    module_sha256: &[u8; 32],
) -> Result<FunctionView, ApiError> {
    let config = function_config(function)?;
    Ok(FunctionView {
        id: function.id.0,
        name: function.name.clone(),
        module: hex::encode(module_sha256),
        args: config.args,
        env: config.env,
        limits: config.limits,
        created_ms: function.created_ms,
        updated_ms: function.updated_ms,
    })
}

fn function_config(function: &tally_ledger::Function) -> Result<FunctionConfig, ApiError> {
    serde_json::from_value(function.limits.clone()).map_err(|e| {
        ApiError::Internal(format!(
            "stored configuration of function {}: {e}",
            function.name
        ))
    })
}

fn check_name(name: &str) -> Result<(), ApiError> {
    let ok = !name.is_empty()
        && name.len() <= tally_ledger::FUNCTION_NAME_BYTES_MAX
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'));
    if ok {
        Ok(())
    } else {
        Err(ApiError::InvalidRequest(format!(
            "function name {name:?}: 1..={} characters of [A-Za-z0-9._-]",
            tally_ledger::FUNCTION_NAME_BYTES_MAX
        )))
    }
}

impl AppState {
    fn effective_limits(&self, request: &super::wire::LimitsRequest) -> Result<Limits, ApiError> {
        let max = &self.inner.limits;
        let pick = |name: &str, asked: Option<u64>, maximum: u64| match asked {
            None => Ok(maximum),
            Some(0) => Err(ApiError::InvalidRequest(format!("{name} must be positive"))),
            Some(value) if value > maximum => Err(ApiError::LimitAboveMaximum(format!(
                "{name} {value} is above the server's maximum of {maximum}"
            ))),
            Some(value) => Ok(value),
        };
        Ok(Limits {
            max_ops: pick("max_ops", request.max_ops, max.ops_max)?,
            max_memory_bytes: pick(
                "max_memory_bytes",
                request.max_memory_bytes,
                max.memory_bytes_max,
            )?,
            max_wall_ms: pick("max_wall_ms", request.max_wall_ms, max.wall_ms_max)?,
            max_output_bytes: pick(
                "max_output_bytes",
                request.max_output_bytes,
                max.output_bytes_max as u64,
            )?,
        })
    }

    /// The function if it is cached in memory (no I/O: callable on the async executor).
    pub(super) fn cached_function(
        &self,
        tenant: TenantId,
        name: &str,
    ) -> Option<Arc<FunctionEntry>> {
        lock(&self.inner.functions)
            .entries
            .get(&(tenant, name.to_owned()))
            .cloned()
    }

    /// The current generation of the function cache: read it before reading a function from
    /// the ledger and hand it to [`AppState::load_function_blocking`].
    pub(super) fn functions_generation(&self) -> u64 {
        lock(&self.inner.functions).generation
    }

    /// The function ready to run, cached in memory (blocking).
    fn function_entry_blocking(
        &self,
        tenant: TenantId,
        name: &str,
    ) -> Result<Arc<FunctionEntry>, ApiError> {
        if let Some(entry) = self.cached_function(tenant, name) {
            return Ok(entry);
        }
        let generation = self.functions_generation();
        let function = self
            .inner
            .ledger
            .find_function(tenant, name)?
            .ok_or_else(|| ApiError::UnknownFunction(format!("function {name:?} not found")))?;
        self.load_function_blocking(&function, generation)
    }

    /// Builds a function's entry (its module compiled or loaded from the on-disk cache) and
    /// caches it unless a function changed since `generation` was read (blocking). The entry
    /// is returned either way: it is what the ledger held when the caller looked.
    pub(crate) fn load_function_blocking(
        &self,
        function: &tally_ledger::Function,
        generation: u64,
    ) -> Result<Arc<FunctionEntry>, ApiError> {
        let module = self.inner.ledger.get_module(function.module)?;
        let prepared = self.prepared_blocking(&module)?;
        let entry = Arc::new(FunctionEntry {
            id: function.id,
            module: module.id,
            config: function_config(function)?,
            prepared,
        });
        let mut cache = lock(&self.inner.functions);
        if cache.generation == generation {
            let key = (function.tenant, function.name.clone());
            cache.entries.insert(key, entry.clone());
        }
        Ok(entry)
    }
}

/// Create or update a function.
#[utoipa::path(put, path = "/v1/functions/{name}", tag = "functions", security(("tenant" = [])),
    params(("name" = String, Path, description = "function name")), request_body = PutFunction,
    responses((status = 201, body = FunctionView), (status = 200, body = FunctionView),
        (status = 404, body = super::openapi::Problem), (status = 422, body = super::openapi::Problem)))]
pub async fn put_function(
    State(state): State<AppState>,
    auth: TenantAuth,
    Path(name): Path<String>,
    JsonBody(body): JsonBody<PutFunction>,
) -> Result<Response, ApiError> {
    check_name(&name)?;
    if body.args.len() + body.env.len() > FUNCTION_ARGS_MAX {
        return Err(ApiError::InvalidRequest(format!(
            "at most {FUNCTION_ARGS_MAX} arguments plus environment variables"
        )));
    }
    let config = FunctionConfig {
        args: body.args,
        env: body.env,
        limits: state.effective_limits(&body.limits)?,
    };
    let tenant = auth.tenant.id;
    let now = state.now_ms();
    let state2 = state.clone();
    let (function, sha, created) = blocking(move || {
        let state = state2;
        let module = state.find_module_blocking(tenant, &body.module)?;
        let existed = state.inner.ledger.find_function(tenant, &name)?.is_some();
        let config =
            serde_json::to_value(&config).map_err(|e| ApiError::Internal(e.to_string()))?;
        let function = state
            .inner
            .ledger
            .put_function(tenant, &name, module.id, config, now)?;
        let mut cache = lock(&state.inner.functions);
        cache.entries.remove(&(tenant, name));
        cache.generation += 1;
        Ok((function, module.module.original_sha256, !existed))
    })
    .await?;
    let status = if created { CREATED } else { StatusCode::OK };
    Ok((status, Json(function_view(&function, &sha)?)).into_response())
}

/// One function.
#[utoipa::path(get, path = "/v1/functions/{name}", tag = "functions", security(("tenant" = [])),
    params(("name" = String, Path, description = "function name")),
    responses((status = 200, body = FunctionView), (status = 404, body = super::openapi::Problem)))]
pub async fn get_function(
    State(state): State<AppState>,
    auth: TenantAuth,
    Path(name): Path<String>,
) -> Result<Json<FunctionView>, ApiError> {
    let ledger = state.inner.ledger.clone();
    let (function, module) = blocking(move || {
        let function = ledger
            .find_function(auth.tenant.id, &name)?
            .ok_or_else(|| ApiError::UnknownFunction(format!("function {name:?} not found")))?;
        let module = ledger.get_module(function.module)?;
        Ok((function, module))
    })
    .await?;
    Ok(Json(function_view(
        &function,
        &module.module.original_sha256,
    )?))
}

/// The tenant's functions.
#[utoipa::path(get, path = "/v1/functions", tag = "functions", security(("tenant" = [])),
    responses((status = 200, body = Vec<FunctionView>)))]
pub async fn list_functions(
    State(state): State<AppState>,
    auth: TenantAuth,
) -> Result<Json<Vec<FunctionView>>, ApiError> {
    let ledger = state.inner.ledger.clone();
    let functions = blocking(move || {
        let mut out = Vec::new();
        for function in ledger.list_functions(auth.tenant.id)? {
            let module = ledger.get_module(function.module)?;
            out.push(function_view(&function, &module.module.original_sha256)?);
        }
        Ok(out)
    })
    .await?;
    Ok(Json(functions))
}

fn outcome_of(outcome: &tally_runtime::Outcome) -> Outcome {
    use tally_runtime::Outcome as R;
    let (kind, exit_code, trap) = match outcome {
        R::Exit { code } => (OutcomeKind::Exit, Some(*code), None),
        R::Trap { trap } => (OutcomeKind::Trap, None, Some(truncate(trap))),
        R::BudgetExhausted => (OutcomeKind::BudgetExhausted, None, None),
        R::MemoryLimit => (OutcomeKind::MemoryLimit, None, None),
        R::Deadline => (OutcomeKind::Deadline, None, None),
        R::OutputLimit => (OutcomeKind::OutputLimit, None, None),
    };
    Outcome {
        kind,
        exit_code,
        trap,
    }
}

fn truncate(text: &str) -> String {
    let mut end = text.len().min(TRAP_MESSAGE_BYTES_MAX);
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    text[..end].to_owned()
}

fn header_value(value: impl ToString) -> HeaderValue {
    HeaderValue::from_str(&value.to_string()).unwrap_or_else(|_| HeaderValue::from_static("?"))
}

/// The `Tally-*` usage headers of a record.
pub fn usage_headers(record: &UsageRecord) -> HeaderMap {
    let r = &record.record;
    let m = &r.meters;
    let mut headers = HeaderMap::new();
    let mut put = |name: &'static str, value: HeaderValue| {
        headers.insert(HeaderName::from_static(name), value);
    };
    put("tally-usage-id", header_value(record.seq));
    put(
        "tally-outcome",
        HeaderValue::from_static(r.outcome.kind.name()),
    );
    if let Some(code) = r.outcome.exit_code {
        put("tally-exit-code", header_value(code));
    }
    put("tally-ops", header_value(m.ops));
    put("tally-memory-peak-bytes", header_value(m.memory_peak_bytes));
    put(
        "tally-memory-ops-integral",
        header_value(m.memory_ops_integral),
    );
    put("tally-memory-byte-ns", header_value(m.memory_byte_ns));
    put("tally-io-in-bytes", header_value(m.io_in_bytes));
    put("tally-io-out-bytes", header_value(m.io_out_bytes));
    put("tally-host-calls", header_value(m.host_calls));
    put("tally-wall-ns", header_value(m.wall_ns));
    put(
        "tally-module",
        header_value(hex::encode(record.module_sha256)),
    );
    put("tally-record-hash", header_value(hex::encode(record.hash)));
    headers
}

fn idempotency_key(headers: &HeaderMap) -> Result<Option<String>, ApiError> {
    let Some(value) = headers.get(IDEMPOTENCY_KEY) else {
        return Ok(None);
    };
    let key = value
        .to_str()
        .map_err(|_| ApiError::InvalidRequest("Idempotency-Key must be visible ASCII".into()))?;
    if key.is_empty() || key.len() > IDEMPOTENCY_KEY_BYTES_MAX {
        return Err(ApiError::InvalidRequest(format!(
            "Idempotency-Key must be 1..={IDEMPOTENCY_KEY_BYTES_MAX} bytes"
        )));
    }
    Ok(Some(key.to_owned()))
}

fn generated_key() -> Result<String, ApiError> {
    let mut random = [0u8; 16];
    getrandom::fill(&mut random).map_err(|e| ApiError::Internal(format!("randomness: {e}")))?;
    Ok(format!("tally-{}", hex::encode(random)))
}

fn answer(status: u16, body: Vec<u8>, mut headers: HeaderMap, replayed: bool) -> Response {
    let status = StatusCode::from_u16(status).unwrap_or(StatusCode::OK);
    let content_type = if status.is_success() {
        "application/octet-stream"
    } else {
        PROBLEM_CONTENT_TYPE
    };
    headers.insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    if replayed {
        headers.insert(
            HeaderName::from_static("tally-replayed"),
            HeaderValue::from_static("true"),
        );
    }
    (status, headers, body).into_response()
}

/// The answer to a retry: the stored first answer, or (if it was lost in a crash) the usage
/// headers with an empty body and `Tally-Replay-Body: unavailable`.
fn replay(
    state: &AppState,
    tenant: TenantId,
    function: &FunctionEntry,
    name: &str,
    key: &str,
    seq: u64,
) -> Result<Response, ApiError> {
    let record = state
        .inner
        .ledger
        .get_usage(seq)?
        .ok_or_else(|| ApiError::Internal(format!("usage record {seq} vanished")))?;
    if record.record.tenant != tenant || record.record.function != function.id {
        return Err(ApiError::IdempotencyConflict(format!(
            "idempotency key {key:?} was used for another function"
        )));
    }
    let headers = usage_headers(&record);
    if let Some(reply) = state.inner.store.reply(tenant, key)?
        && reply.usage_id == seq
        && reply.function == name
    {
        return Ok(answer(reply.status, reply.body, headers, true));
    }
    let status = if record.record.outcome.kind == OutcomeKind::Exit {
        200
    } else {
        422
    };
    let mut response = answer(status, Vec::new(), headers, true);
    response.headers_mut().insert(
        HeaderName::from_static("tally-replay-body"),
        HeaderValue::from_static("unavailable"),
    );
    Ok(response)
}

/// Appends an invocation's usage record and waits until it is committed (the writer thread
/// wakes this task: no thread is held meanwhile). `Err(seq)`: a record with the same
/// idempotency key exists (an earlier or concurrent request was billed).
async fn append(
    state: &AppState,
    record: NewUsageRecord,
) -> Result<Result<UsageRecord, u64>, ApiError> {
    match state.inner.ledger.append_async(record).await {
        Ok(appended) if appended.created => Ok(Ok(appended.record)),
        Ok(appended) => Ok(Err(appended.record.seq)),
        Err(tally_ledger::Error::ExistsWithDifferentFields { existing_seq, .. }) => {
            Ok(Err(existing_seq))
        }
        Err(e) => Err(ApiError::from(e)),
    }
}

fn stderr_tail(stderr: &[u8]) -> String {
    let start = stderr.len().saturating_sub(STDERR_TAIL_BYTES_MAX);
    String::from_utf8_lossy(&stderr[start..]).into_owned()
}

/// Invoke a function: the request body is its stdin, the response body its stdout.
#[utoipa::path(post, path = "/v1/functions/{name}/invoke", tag = "functions",
    security(("tenant" = [])),
    params(("name" = String, Path, description = "function name"),
        ("Idempotency-Key" = Option<String>, Header, description = "retry-safe key (1..=128 bytes): a retry returns the first answer and bills once")),
    request_body(content = Vec<u8>, description = "the guest's stdin", content_type = "application/octet-stream"),
    responses(
        (status = 200, description = "the guest exited; body is its stdout; usage in Tally-* headers", content_type = "application/octet-stream", body = Vec<u8>),
        (status = 404, body = super::openapi::Problem),
        (status = 422, description = "the guest trapped or hit a limit; billed (usage_id)", body = super::openapi::Problem)))]
pub async fn invoke(
    State(state): State<AppState>,
    auth: TenantAuth,
    Path(name): Path<String>,
    headers: HeaderMap,
    RawBody(stdin): RawBody,
) -> Result<Response, ApiError> {
    let tenant = auth.tenant.id;
    let client_key = idempotency_key(&headers)?;
    // The common case (function cached, no idempotency key) does no I/O before the run.
    let function = match state.cached_function(tenant, &name) {
        Some(function) => function,
        None => {
            let state = state.clone();
            let name = name.clone();
            blocking(move || state.function_entry_blocking(tenant, &name)).await?
        }
    };
    if let Some(key) = &client_key {
        let state2 = state.clone();
        let name2 = name.clone();
        let key2 = key.clone();
        let function2 = function.clone();
        let early = blocking(move || match state2.inner.store.reply(tenant, &key2)? {
            Some(reply) => {
                replay(&state2, tenant, &function2, &name2, &key2, reply.usage_id).map(Some)
            }
            None => Ok(None),
        })
        .await?;
        if let Some(response) = early {
            return Ok(response);
        }
    }
    let key = match &client_key {
        Some(key) => key.clone(),
        None => generated_key()?,
    };

    let permit = state
        .inner
        .invoke_slots
        .acquire()
        .await
        .map_err(|_| ApiError::Unavailable("the server is shutting down".into()))?;
    let config = &function.config;
    let mut invocation = Invocation::new(
        std::iter::once(name.clone())
            .chain(config.args.iter().cloned())
            .collect(),
    );
    invocation.env = config
        .env
        .iter()
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect();
    invocation.stdin = stdin.to_vec();
    invocation.max_ops = config.limits.max_ops;
    invocation.max_memory_bytes = config.limits.max_memory_bytes;
    invocation.max_output_bytes = config.limits.max_output_bytes as usize;
    invocation.deadline = Some(Duration::from_millis(config.limits.max_wall_ms));

    let started_ms = state.now_ms();
    let clock = Instant::now();
    let runtime = state.inner.runtime.clone();
    let prepared = function.prepared.clone();
    let output = blocking(move || {
        runtime
            .run(&prepared, invocation)
            .map_err(|e| ApiError::Internal(format!("running the function: {e}")))
    })
    .await?;
    // The instance (and its pooled slot) is gone: the next invocation may run while this one's
    // record is committed.
    drop(permit);
    let finished_ms = state.now_ms().max(started_ms);
    let usage = &output.usage;
    let record = NewUsageRecord {
        tenant,
        function: function.id,
        module: function.module,
        idempotency_key: key.clone(),
        started_ms,
        finished_ms,
        outcome: outcome_of(&usage.outcome),
        meters: UsageMeters {
            ops: usage.ops,
            memory_peak_bytes: usage.memory_peak_bytes,
            memory_ops_integral: usage.memory_ops_integral,
            memory_byte_ns: usage.memory_byte_ns,
            io_in_bytes: usage.io_in_bytes,
            io_out_bytes: usage.io_out_bytes,
            host_calls: usage.host_calls,
            wall_ns: usage.wall_ns,
        },
    };
    let outcome_name = record.outcome.kind.name();
    let ops = usage.ops;
    let appended = append(&state, record).await?;
    let record = match appended {
        Ok(record) => record,
        Err(existing_seq) => {
            // A concurrent or earlier request with the same key was billed: answer with it.
            let state = state.clone();
            return blocking(move || replay(&state, tenant, &function, &name, &key, existing_seq))
                .await;
        }
    };
    state.inner.metrics.observe_invocation(
        tenant,
        &name,
        outcome_name,
        ops,
        clock.elapsed().as_secs_f64(),
    );
    let headers = usage_headers(&record);
    let (status, body) = if record.record.outcome.kind == OutcomeKind::Exit {
        (200u16, output.stdout)
    } else {
        let failure = ApiError::GuestFailed(Box::new(GuestFailure {
            outcome: outcome_name,
            trap: record.record.outcome.trap.clone(),
            usage_id: record.seq,
            ops,
            stderr_tail: stderr_tail(&output.stderr),
            headers: HeaderMap::new(),
        }));
        let (status, body) = failure.problem();
        (status.as_u16(), body)
    };
    if let Some(key) = client_key {
        let reply = Reply {
            function: name.clone(),
            usage_id: record.seq,
            status,
            body: body.clone(),
        };
        let store_state = state.clone();
        blocking(move || store_state.inner.store.put_reply(tenant, &key, &reply)).await?;
    }
    Ok(answer(status, body, headers, false))
}

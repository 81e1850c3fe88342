//! Modules: upload raw wasm (validated, instrumented, compiled), inspect, download either variant.

use std::sync::Arc;
use std::time::Instant;

use axum::Json;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use tally_instrument::{Instrumented, Options};
use tally_ledger::{ModuleBytes, NewModule, TenantId};
use tally_runtime::Prepared;

use super::auth::TenantAuth;
use super::error::ApiError;
use super::extract::{Path, RawBody, blocking};
use super::wire::{InstrumentStatsView, ModuleView};
use super::{AppState, CREATED, lock};

/// What the API stores as a module's `static_stats` in the ledger.
#[derive(Serialize, Deserialize, Default)]
struct StoredStats {
    functions: u64,
    basic_blocks: u64,
    counters_placed: u64,
    budget_checks_placed: u64,
    input_bytes: u64,
    output_bytes: u64,
    instrument_us: u64,
    compile_us: u64,
    instrumented_sha256: String,
}

fn module_view(module: &tally_ledger::Module) -> ModuleView {
    let stats: StoredStats =
        serde_json::from_value(module.module.static_stats.clone()).unwrap_or_default();
    ModuleView {
        id: hex::encode(module.module.original_sha256),
        size_bytes: stats.input_bytes,
        instrumented_bytes: stats.output_bytes,
        instrumented_sha256: stats.instrumented_sha256,
        cost_table: module.module.cost_table.clone(),
        stats: InstrumentStatsView {
            functions: stats.functions,
            basic_blocks: stats.basic_blocks,
            counters_placed: stats.counters_placed,
            budget_checks_placed: stats.budget_checks_placed,
        },
        instrument_us: stats.instrument_us,
        compile_us: stats.compile_us,
        created_ms: module.module.created_ms,
    }
}

/// Parses a module id (64 hex digits).
pub fn parse_module_id(id: &str) -> Result<[u8; 32], ApiError> {
    let mut sha = [0u8; 32];
    hex::decode_to_slice(id, &mut sha).map_err(|_| {
        ApiError::UnknownModule(format!(
            "module {id:?} not found (ids are 64 hex digits: the SHA-256 of the original)"
        ))
    })?;
    Ok(sha)
}

impl AppState {
    /// The tenant's module with this id (blocking).
    pub(crate) fn find_module_blocking(
        &self,
        tenant: TenantId,
        id: &str,
    ) -> Result<tally_ledger::Module, ApiError> {
        let sha = parse_module_id(id)?;
        self.inner
            .ledger
            .find_module(tenant, &sha, &self.inner.costs.id())?
            .ok_or_else(|| ApiError::UnknownModule(format!("module {id} not found")))
    }

    /// The compiled module, from the in-memory cache or rebuilt from the stored instrumented
    /// bytes and meter map (blocking).
    pub(crate) fn prepared_blocking(
        &self,
        module: &tally_ledger::Module,
    ) -> Result<Arc<Prepared>, ApiError> {
        if let Some(prepared) = lock(&self.inner.prepared).get(&module.id) {
            return Ok(prepared.clone());
        }
        let (wasm, meter_map) = match &module.module.instrumented {
            ModuleBytes::Path(path) => (
                self.inner.store.instrumented(path)?,
                self.inner.store.meter_map(path)?,
            ),
            ModuleBytes::Inline(_) => {
                return Err(ApiError::Internal(format!(
                    "module {} has inline bytes without a meter map",
                    module.id
                )));
            }
        };
        let instrumented = Instrumented {
            wasm,
            meter_map,
            stats: Default::default(),
        };
        let prepared = Arc::new(self.prepare(&instrumented)?);
        lock(&self.inner.prepared).insert(module.id, prepared.clone());
        Ok(prepared)
    }

    fn prepare(&self, instrumented: &Instrumented) -> Result<Prepared, ApiError> {
        // The precompiled artifact is cached on disk under the instrumented bytes' digest, so a
        // restart deserializes instead of compiling.
        let key = hex::encode(Sha256::digest(&instrumented.wasm));
        self.inner
            .runtime
            .prepare_cached(&key, instrumented)
            .map_err(|e| ApiError::InvalidModule(e.to_string()))
    }
}

/// Upload a module (raw wasm body): validated, instrumented, compiled. Uploading the same
/// bytes again answers 200 with the existing module.
#[utoipa::path(post, path = "/v1/modules", tag = "modules", security(("tenant" = [])),
    request_body(content = Vec<u8>, description = "the original wasm bytes", content_type = "application/wasm"),
    responses((status = 201, body = ModuleView), (status = 200, body = ModuleView),
        (status = 413, body = super::openapi::Problem), (status = 422, body = super::openapi::Problem)))]
pub async fn upload_module(
    State(state): State<AppState>,
    auth: TenantAuth,
    body: Result<RawBody, ApiError>,
) -> Result<Response, ApiError> {
    let wasm = match body {
        Ok(RawBody(bytes)) => bytes,
        Err(ApiError::BodyTooLarge { limit_bytes }) => {
            return Err(ApiError::ModuleTooLarge { limit_bytes });
        }
        Err(other) => return Err(other),
    };
    if wasm.is_empty() {
        return Err(ApiError::InvalidModule("the body is empty".into()));
    }
    let tenant = auth.tenant.id;
    let now = state.now_ms();
    // A module uploaded before is answered without waiting for a preparation slot.
    let (ledger, bytes) = (state.inner.ledger.clone(), wasm.clone());
    let cost_table = state.inner.costs.id();
    let (sha, existing) = blocking(move || {
        let sha: [u8; 32] = Sha256::digest(&bytes).into();
        Ok((sha, ledger.find_module(tenant, &sha, &cost_table)?))
    })
    .await?;
    if let Some(module) = existing {
        return Ok((StatusCode::OK, Json(module_view(&module))).into_response());
    }
    let state2 = state.clone();
    let permit = Arc::clone(&state.inner.upload_slots)
        .acquire_owned()
        .await
        .map_err(|_| ApiError::Unavailable("the server is shutting down".into()))?;
    let (module, created) = blocking(move || {
        // Released when this work is done, not when the request is dropped.
        let _permit = permit;
        let state = state2;
        let cost_table = state.inner.costs.id();
        // Another upload of the same bytes may have finished while this one waited.
        if let Some(module) = state.inner.ledger.find_module(tenant, &sha, &cost_table)? {
            return Ok((module, false));
        }
        let started = Instant::now();
        let options = Options {
            initial_budget: state.inner.limits.ops_max,
            // The start function runs as part of each invocation, so its work is billed.
            defer_start: true,
        };
        let instrumented = tally_instrument::instrument(&wasm, &state.inner.costs, &options)
            .map_err(|e| ApiError::InvalidModule(e.to_string()))?;
        let instrument_us = started.elapsed().as_micros() as u64;
        let started = Instant::now();
        let prepared = state.prepare(&instrumented)?;
        let compile_us = started.elapsed().as_micros() as u64;
        state.inner.store.put_original(&sha, &wasm)?;
        let path = state
            .inner
            .store
            .put_instrumented(&instrumented.wasm, &instrumented.meter_map)?;
        let s = &instrumented.stats;
        let stats = StoredStats {
            functions: s.functions as u64,
            basic_blocks: s.basic_blocks as u64,
            counters_placed: s.counters_placed as u64,
            budget_checks_placed: s.budget_checks_placed as u64,
            input_bytes: wasm.len() as u64,
            output_bytes: instrumented.wasm.len() as u64,
            instrument_us,
            compile_us,
            instrumented_sha256: hex::encode(Sha256::digest(&instrumented.wasm)),
        };
        let new = NewModule {
            tenant,
            original_sha256: sha,
            instrumented: ModuleBytes::Path(path),
            cost_table: cost_table.clone(),
            static_stats: serde_json::to_value(&stats)
                .map_err(|e| ApiError::Internal(e.to_string()))?,
            created_ms: now,
        };
        let (module, created) = match state.inner.ledger.create_module(new) {
            Ok(module) => (module, true),
            Err(tally_ledger::Error::AlreadyExists { .. }) => (
                state
                    .inner
                    .ledger
                    .find_module(tenant, &sha, &cost_table)?
                    .ok_or_else(|| ApiError::Internal("module vanished".into()))?,
                false,
            ),
            Err(e) => return Err(e.into()),
        };
        lock(&state.inner.prepared).insert(module.id, Arc::new(prepared));
        Ok((module, created))
    })
    .await?;
    let status = if created { CREATED } else { StatusCode::OK };
    Ok((status, Json(module_view(&module))).into_response())
}

/// The tenant's modules.
#[utoipa::path(get, path = "/v1/modules", tag = "modules", security(("tenant" = [])),
    responses((status = 200, body = Vec<ModuleView>)))]
pub async fn list_modules(
    State(state): State<AppState>,
    auth: TenantAuth,
) -> Result<Json<Vec<ModuleView>>, ApiError> {
    let ledger = state.inner.ledger.clone();
    let modules = blocking(move || Ok(ledger.list_modules(auth.tenant.id)?)).await?;
    Ok(Json(modules.iter().map(module_view).collect()))
}

/// One module.
#[utoipa::path(get, path = "/v1/modules/{module}", tag = "modules", security(("tenant" = [])),
    params(("module" = String, Path, description = "SHA-256 hex of the original bytes")),
    responses((status = 200, body = ModuleView), (status = 404, body = super::openapi::Problem)))]
pub async fn get_module(
    State(state): State<AppState>,
    auth: TenantAuth,
    Path(id): Path<String>,
) -> Result<Json<ModuleView>, ApiError> {
    let module = blocking(move || state.find_module_blocking(auth.tenant.id, &id)).await?;
    Ok(Json(module_view(&module)))
}

fn wasm_response(bytes: Vec<u8>) -> Response {
    ([(header::CONTENT_TYPE, "application/wasm")], bytes).into_response()
}

/// The original bytes, as uploaded.
#[utoipa::path(get, path = "/v1/modules/{module}/original", tag = "modules", security(("tenant" = [])),
    params(("module" = String, Path, description = "SHA-256 hex of the original bytes")),
    responses((status = 200, content_type = "application/wasm", body = Vec<u8>),
        (status = 404, body = super::openapi::Problem)))]
pub async fn download_original(
    State(state): State<AppState>,
    auth: TenantAuth,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    let bytes = blocking(move || {
        let module = state.find_module_blocking(auth.tenant.id, &id)?;
        state.inner.store.original(&module.module.original_sha256)
    })
    .await?;
    Ok(wasm_response(bytes))
}

/// The instrumented bytes: exactly what runs.
#[utoipa::path(get, path = "/v1/modules/{module}/instrumented", tag = "modules",
    security(("tenant" = [])),
    params(("module" = String, Path, description = "SHA-256 hex of the original bytes")),
    responses((status = 200, content_type = "application/wasm", body = Vec<u8>),
        (status = 404, body = super::openapi::Problem)))]
pub async fn download_instrumented(
    State(state): State<AppState>,
    auth: TenantAuth,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    let bytes = blocking(move || {
        let module = state.find_module_blocking(auth.tenant.id, &id)?;
        match &module.module.instrumented {
            ModuleBytes::Path(path) => state.inner.store.instrumented(path),
            ModuleBytes::Inline(bytes) => Ok(bytes.clone()),
        }
    })
    .await?;
    Ok(wasm_response(bytes))
}

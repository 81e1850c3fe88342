//! Audit: verify the whole chain; one record with its position, hashes and canonical bytes.

use axum::Json;
use axum::extract::State;
use tally_ledger::ChainVerdict;

use super::AppState;
use super::auth::Principal;
use super::error::ApiError;
use super::extract::{Path, blocking};
use super::usage::function_names;
use super::wire::{AuditRecordView, UsageRecordView, VerifyView};

/// Recompute the whole hash chain.
#[utoipa::path(get, path = "/v1/audit/verify", tag = "audit",
    security(("admin" = []), ("tenant" = [])),
    responses((status = 200, body = VerifyView)))]
pub async fn verify(
    State(state): State<AppState>,
    _who: Principal,
) -> Result<Json<VerifyView>, ApiError> {
    let ledger = state.inner.ledger.clone();
    let verdict = blocking(move || Ok(ledger.verify()?)).await?;
    Ok(Json(match verdict {
        ChainVerdict::Intact {
            records,
            head_seq,
            head_hash,
        } => VerifyView {
            intact: true,
            records: Some(records),
            head_seq: Some(head_seq),
            head_hash: Some(hex::encode(head_hash)),
            broken_at: None,
            detail: None,
        },
        ChainVerdict::Broken(chain_break) => VerifyView {
            intact: false,
            records: None,
            head_seq: None,
            head_hash: None,
            broken_at: Some(chain_break.seq),
            detail: Some(chain_break.to_string()),
        },
    }))
}

/// One record with its chain position, hashes and the canonical bytes hashed. A tenant key
/// sees only its own records.
#[utoipa::path(get, path = "/v1/audit/records/{id}", tag = "audit",
    security(("admin" = []), ("tenant" = [])),
    params(("id" = u64, Path, description = "usage record id (chain position)")),
    responses((status = 200, body = AuditRecordView), (status = 404, body = super::openapi::Problem)))]
pub async fn audit_record(
    State(state): State<AppState>,
    who: Principal,
    Path(id): Path<u64>,
) -> Result<Json<AuditRecordView>, ApiError> {
    let ledger = state.inner.ledger.clone();
    let view = blocking(move || {
        let audit = ledger
            .audit_record(id)?
            .filter(|a| match &who {
                Principal::Admin => true,
                Principal::Tenant(tenant) => a.record.record.tenant == tenant.id,
            })
            .ok_or_else(|| ApiError::UnknownUsageRecord(format!("usage record {id} not found")))?;
        let names = function_names(&*ledger, audit.record.record.tenant)?;
        let record = &audit.record;
        Ok(AuditRecordView {
            position: record.seq,
            record: UsageRecordView::new(record, names.get(&record.record.function.0).cloned()),
            prev_hash: hex::encode(record.prev_hash),
            hash: hex::encode(record.hash),
            canonical_bytes: hex::encode(&audit.canonical_bytes),
            head_seq: audit.head_seq,
            head_hash: hex::encode(audit.head_hash),
        })
    })
    .await?;
    Ok(Json(view))
}

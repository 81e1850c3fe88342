//! Who is calling: the admin token or a tenant's API key (`Authorization: Bearer ...`).
//!
//! Admin endpoints answer 401 to anything but the admin token; tenant endpoints answer 401 to
//! anything but a live tenant key, and every tenant-scoped lookup filters by the key's tenant, so
//! another tenant's objects are 404 (never their data).

use axum::extract::FromRequestParts;
use axum::http::header;
use axum::http::request::Parts;
use sha2::{Digest, Sha256};
use tally_ledger::{Tenant, TenantId};

use super::AppState;
use super::error::ApiError;
use super::extract::blocking;

/// The admin token authenticated the call.
pub struct Admin;

/// A tenant key authenticated the call.
pub struct TenantAuth {
    /// The key's tenant.
    pub tenant: Tenant,
}

/// Either credential.
pub enum Principal {
    /// The admin token.
    Admin,
    /// A tenant key.
    Tenant(Tenant),
}

impl Principal {
    /// The tenant a call acts for: a tenant key's own tenant (a different `requested` tenant is
    /// not found), or the tenant the admin names.
    pub fn scope(&self, requested: Option<i64>) -> Result<TenantId, ApiError> {
        match (self, requested) {
            (Principal::Tenant(tenant), None) => Ok(tenant.id),
            (Principal::Tenant(tenant), Some(id)) if id == tenant.id.0 => Ok(tenant.id),
            (Principal::Tenant(_), Some(id)) => {
                Err(ApiError::UnknownTenant(format!("tenant {id} not found")))
            }
            (Principal::Admin, Some(id)) => Ok(TenantId(id)),
            (Principal::Admin, None) => Err(ApiError::InvalidRequest(
                "the admin token must name the tenant (`tenant`)".into(),
            )),
        }
    }
}

fn bearer(parts: &Parts) -> Result<&str, ApiError> {
    let value = parts
        .headers
        .get(header::AUTHORIZATION)
        .ok_or_else(|| ApiError::Unauthorized("no Authorization header".into()))?;
    let value = value
        .to_str()
        .map_err(|_| ApiError::Unauthorized("the Authorization header is not text".into()))?;
    value
        .strip_prefix("Bearer ")
        .map(str::trim)
        .filter(|token| !token.is_empty())
        .ok_or_else(|| ApiError::Unauthorized("expected `Authorization: Bearer <key>`".into()))
}

/// SHA-256 of a secret.
pub fn digest(secret: &str) -> [u8; 32] {
    Sha256::digest(secret.as_bytes()).into()
}

/// Compares digests without an early exit.
fn same_digest(a: &[u8; 32], b: &[u8; 32]) -> bool {
    a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

async fn resolve(state: &AppState, token: &str) -> Result<Principal, ApiError> {
    let token_digest = digest(token);
    if same_digest(&token_digest, &state.inner.admin_token_sha256) {
        return Ok(Principal::Admin);
    }
    if let Some(tenant) = state.cached_key(&token_digest) {
        return Ok(Principal::Tenant(tenant));
    }
    let ledger = state.inner.ledger.clone();
    let clear = token.to_owned();
    let resolved = blocking(move || Ok(ledger.resolve_api_key(&clear))).await?;
    match resolved {
        Ok(Some((tenant, _key))) => {
            state.cache_key(token_digest, tenant.clone());
            Ok(Principal::Tenant(tenant))
        }
        Ok(None) | Err(tally_ledger::Error::Invalid { .. }) => {
            Err(ApiError::Unauthorized("unknown or revoked key".into()))
        }
        Err(other) => Err(other.into()),
    }
}

impl FromRequestParts<AppState> for Principal {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, ApiError> {
        let token = bearer(parts)?.to_owned();
        resolve(state, &token).await
    }
}

impl FromRequestParts<AppState> for Admin {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, ApiError> {
        let token = bearer(parts)?;
        if same_digest(&digest(token), &state.inner.admin_token_sha256) {
            Ok(Admin)
        } else {
            Err(ApiError::Unauthorized(
                "this endpoint needs the admin token".into(),
            ))
        }
    }
}

impl FromRequestParts<AppState> for TenantAuth {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, ApiError> {
        match Principal::from_request_parts(parts, state).await? {
            Principal::Tenant(tenant) => Ok(TenantAuth { tenant }),
            Principal::Admin => Err(ApiError::Unauthorized(
                "this endpoint needs a tenant API key".into(),
            )),
        }
    }
}

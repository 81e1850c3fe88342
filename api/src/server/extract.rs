//! Extractors whose rejections are problem documents, and the blocking helper.

use axum::body::Bytes;
use axum::extract::rejection::{BytesRejection, PathRejection, QueryRejection};
use axum::extract::{FromRequest, FromRequestParts, Request};
use axum::http::StatusCode;
use axum::http::request::Parts;
use serde::de::DeserializeOwned;

use super::error::ApiError;

/// Runs blocking work (SQLite, wasm, files) on tokio's blocking pool.
pub async fn blocking<T, F>(work: F) -> Result<T, ApiError>
where
    T: Send + 'static,
    F: FnOnce() -> Result<T, ApiError> + Send + 'static,
{
    tokio::task::spawn_blocking(work).await?
}

/// Maps a body rejection; a too-large body is `body-too-large` with the route's limit.
pub fn body_rejection(rejection: BytesRejection, limit_bytes: usize) -> ApiError {
    if rejection.status() == StatusCode::PAYLOAD_TOO_LARGE {
        ApiError::BodyTooLarge { limit_bytes }
    } else {
        ApiError::InvalidRequest(format!("cannot read the body: {rejection}"))
    }
}

/// A raw body, limited by the route's `DefaultBodyLimit` and by [`super::BODY_READ_SECONDS_MAX`]
/// (a client that sends it too slowly gets `body-timeout` rather than holding the request).
pub struct RawBody(pub Bytes);

impl<S: Send + Sync> FromRequest<S> for RawBody {
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, Self::Rejection> {
        let limit = req
            .extensions()
            .get::<BodyLimit>()
            .map_or(0, |limit| limit.0);
        let seconds = super::BODY_READ_SECONDS_MAX;
        let read = Bytes::from_request(req, state);
        match tokio::time::timeout(std::time::Duration::from_secs(seconds), read).await {
            Ok(Ok(bytes)) => Ok(RawBody(bytes)),
            Ok(Err(rejection)) => Err(body_rejection(rejection, limit)),
            Err(_) => Err(ApiError::BodyTimeout { seconds }),
        }
    }
}

/// The body limit of a route, put in the request extensions for error messages.
#[derive(Clone, Copy, Debug)]
pub struct BodyLimit(pub usize);

/// A JSON body.
pub struct JsonBody<T>(pub T);

impl<S: Send + Sync, T: DeserializeOwned> FromRequest<S> for JsonBody<T> {
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, Self::Rejection> {
        let RawBody(bytes) = RawBody::from_request(req, state).await?;
        parse_json(&bytes).map(JsonBody)
    }
}

/// Parses JSON with a problem document on failure.
pub fn parse_json<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, ApiError> {
    serde_json::from_slice(bytes)
        .map_err(|e| ApiError::InvalidRequest(format!("the body is not valid JSON here: {e}")))
}

/// A query string.
pub struct Query<T>(pub T);

impl<S: Send + Sync, T: DeserializeOwned + Send> FromRequestParts<S> for Query<T> {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
        axum::extract::Query::<T>::from_request_parts(parts, state)
            .await
            .map(|q| Query(q.0))
            .map_err(|e: QueryRejection| ApiError::InvalidRequest(e.body_text()))
    }
}

/// Path parameters.
pub struct Path<T>(pub T);

impl<S: Send + Sync, T: DeserializeOwned + Send> FromRequestParts<S> for Path<T> {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
        axum::extract::Path::<T>::from_request_parts(parts, state)
            .await
            .map(|p| Path(p.0))
            .map_err(|e: PathRejection| ApiError::InvalidRequest(e.body_text()))
    }
}

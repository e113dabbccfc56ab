//! The JSON API under `/api/v1`: one file per resource, each with its
//! routes, its types (with their OpenAPI schemas) and its handlers; the
//! handlers call the same `server/` functions the control socket does.
//!
//! Errors are [`ApiError`]: a status and `{"error": "…"}` that names what
//! failed and, where there is one, the way forward.

use axum::Json;
use axum::Router;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde::Serialize;

use crate::http::HttpState;

pub mod agents;
pub mod apply;
pub mod audit;
pub mod cmd;
pub mod events;
pub mod jobs;
pub mod keys;
pub mod tokens;
pub mod tree;

/// The API's routes (`http::router` adds the OpenAPI document's).
pub fn router() -> Router<HttpState> {
    Router::new()
        .merge(agents::router())
        .merge(keys::router())
        .merge(jobs::router())
        .merge(apply::router())
        .merge(cmd::router())
        .merge(tree::router())
        .merge(events::router())
        .merge(tokens::router())
        .merge(audit::router())
}

/// Why an API call failed, as the status it is answered with.
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    /// No token, or one the master does not know (401).
    #[error("{0}")]
    Unauthenticated(String),
    /// The principal's role does not allow it (403; audited).
    #[error("{0}")]
    Forbidden(String),
    /// The agent, job or token named does not exist (404).
    #[error("{0}")]
    NotFound(String),
    /// The request cannot be carried out as written (400).
    #[error("{0}")]
    BadRequest(String),
    /// The request conflicts with what exists (409).
    #[error("{0}")]
    Conflict(String),
    /// The target matched no connected agent (422).
    #[error("{0}")]
    NoAgent(String),
    /// The master failed (the store, the audit log) (500).
    #[error("{0}")]
    Internal(String),
}

/// The body of every error answer.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct ErrorBody {
    /// What failed, and the way forward.
    pub error: String,
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let status = match &self {
            ApiError::Unauthenticated(_) => StatusCode::UNAUTHORIZED,
            ApiError::Forbidden(_) => StatusCode::FORBIDDEN,
            ApiError::NotFound(_) => StatusCode::NOT_FOUND,
            ApiError::BadRequest(_) => StatusCode::BAD_REQUEST,
            ApiError::Conflict(_) => StatusCode::CONFLICT,
            ApiError::NoAgent(_) => StatusCode::UNPROCESSABLE_ENTITY,
            ApiError::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
        };
        let mut response = (status, Json(ErrorBody { error: self.to_string() })).into_response();
        if status == StatusCode::UNAUTHORIZED {
            response
                .headers_mut()
                .insert(axum::http::header::WWW_AUTHENTICATE, axum::http::HeaderValue::from_static("Bearer"));
        }
        response
    }
}

/// A JSON body; a body that is not JSON, or not this shape, is a 400
/// with the reason as `{"error": …}` (axum's own rejection is text).
#[derive(Debug)]
pub struct ApiJson<T>(pub T);

impl<S: Send + Sync, T: serde::de::DeserializeOwned> axum::extract::FromRequest<S> for ApiJson<T> {
    type Rejection = ApiError;

    async fn from_request(request: axum::extract::Request, state: &S) -> Result<Self, ApiError> {
        match Json::<T>::from_request(request, state).await {
            Ok(Json(value)) => Ok(ApiJson(value)),
            Err(rejection) => Err(ApiError::BadRequest(rejection.body_text())),
        }
    }
}

/// Query parameters; ones that do not parse are a 400 in JSON.
#[derive(Debug)]
pub struct ApiQuery<T>(pub T);

impl<S: Send + Sync, T: serde::de::DeserializeOwned> axum::extract::FromRequestParts<S> for ApiQuery<T> {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut axum::http::request::Parts, state: &S) -> Result<Self, ApiError> {
        match axum::extract::Query::<T>::from_request_parts(parts, state).await {
            Ok(axum::extract::Query(value)) => Ok(ApiQuery(value)),
            Err(rejection) => Err(ApiError::BadRequest(rejection.body_text())),
        }
    }
}

/// A path parameter; one that does not parse is a 400 in JSON.
#[derive(Debug)]
pub struct ApiPath<T>(pub T);

impl<S: Send + Sync, T: serde::de::DeserializeOwned + Send> axum::extract::FromRequestParts<S> for ApiPath<T> {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut axum::http::request::Parts, state: &S) -> Result<Self, ApiError> {
        match axum::extract::Path::<T>::from_request_parts(parts, state).await {
            Ok(axum::extract::Path(value)) => Ok(ApiPath(value)),
            Err(rejection) => Err(ApiError::BadRequest(rejection.body_text())),
        }
    }
}

/// Reads the records off the runtime's threads (`jobs`, an agent's
/// history): PostgreSQL's when this master records there, so every
/// master's API lists the whole fleet's jobs; else halite.db's.
pub async fn with_records<T: Send + 'static>(
    state: &HttpState,
    work: impl FnOnce(&dyn crate::server::store::records::Records) -> Result<T, crate::server::store::StoreError>
    + Send
    + 'static,
) -> Result<T, ApiError> {
    let Some(store) = state.master.jobs.store() else {
        return Err(ApiError::Internal("this master has no store".into()));
    };
    let (file, postgres) = (store.file().to_path_buf(), store.postgres().cloned());
    tokio::task::spawn_blocking(move || {
        crate::server::store::records::open_for(&file, postgres.as_ref()).and_then(|records| work(records.as_ref()))
    })
    .await
    .map_err(|error| ApiError::Internal(format!("reading the store stopped: {error}")))?
    .map_err(|error| ApiError::Internal(error.to_string()))
}

//! The audit log: `GET /api/v1/audit` (the newest rows, newest first) and
//! `GET /api/v1/audit/verify` (the hash chain checked, as
//! `halite-master audit --verify` does). `admin` only.

use axum::extract::State;
use axum::routing::get;
use axum::{Json, Router};
use serde::{Deserialize, Serialize};

use crate::config::Verb;
use crate::http::HttpState;
use crate::http::api::{ApiError, ErrorBody};
use crate::server::access::Principal;
use crate::server::audit::Row;

/// Rows shown when `limit` is not given, and at most.
pub const DEFAULT_LIMIT: u32 = 100;
pub const MAX_LIMIT: u32 = 10_000;

pub fn router() -> Router<HttpState> {
    Router::new().route("/api/v1/audit", get(list)).route("/api/v1/audit/verify", get(verify))
}

#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub struct AuditQuery {
    /// At most this many rows (default 100, at most 10000), newest first.
    #[param(minimum = 1, maximum = 10000)]
    pub limit: Option<u32>,
}

/// The chain checked.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct VerifyView {
    pub ok: bool,
    /// Rows checked.
    pub rows: usize,
    /// The first row that does not fit, and how.
    pub broken: Option<String>,
    /// The newest row's hash: keep it elsewhere to notice rows cut off the end.
    pub last_hash: Option<String>,
}

/// The newest audit rows.
#[utoipa::path(get, path = "/api/v1/audit", tag = "audit", security(("token" = [])), params(AuditQuery),
    responses(
        (status = 200, description = "Rows, newest first", body = Vec<Row>),
        (status = 400, description = "limit out of range", body = ErrorBody),
        (status = 401, description = "No or unknown token", body = ErrorBody),
        (status = 403, description = "Not `admin`", body = ErrorBody),
    ))]
pub async fn list(
    State(state): State<HttpState>,
    principal: Principal,
    super::ApiQuery(query): super::ApiQuery<AuditQuery>,
) -> Result<Json<Vec<Row>>, ApiError> {
    principal.can(Verb::Admin).map_err(|refusal| ApiError::Forbidden(refusal.to_string()))?;
    let limit = query.limit.unwrap_or(DEFAULT_LIMIT);
    if !(1..=MAX_LIMIT).contains(&limit) {
        return Err(ApiError::BadRequest(format!("limit {limit} is not between 1 and {MAX_LIMIT}")));
    }
    state.master.access.audit(limit).await.map(Json).map_err(|error| ApiError::Internal(error.to_string()))
}

/// Checks the whole chain.
#[utoipa::path(get, path = "/api/v1/audit/verify", tag = "audit", security(("token" = [])),
    responses(
        (status = 200, description = "The result (`ok` false names the first bad row)", body = VerifyView),
        (status = 401, description = "No or unknown token", body = ErrorBody),
        (status = 403, description = "Not `admin`", body = ErrorBody),
    ))]
pub async fn verify(State(state): State<HttpState>, principal: Principal) -> Result<Json<VerifyView>, ApiError> {
    principal.can(Verb::Admin).map_err(|refusal| ApiError::Forbidden(refusal.to_string()))?;
    let rows = state.master.access.audit_all().await.map_err(|error| ApiError::Internal(error.to_string()))?;
    let broken = crate::server::audit::verify(&rows).err().map(|b| b.to_string());
    Ok(Json(VerifyView {
        ok: broken.is_none(),
        rows: rows.len(),
        broken,
        last_hash: rows.last().map(|r| r.hash.clone()),
    }))
}

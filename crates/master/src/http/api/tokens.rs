//! API tokens: `GET /api/v1/tokens`, `POST /api/v1/tokens` (the token is
//! in this answer and nowhere else, ever), `DELETE /api/v1/tokens/{name}`.
//! `admin` only, audited; the same `server::access` calls as
//! `halite-master tokens`.

use axum::extract::State;
use axum::http::StatusCode;
use axum::routing::{delete, get};
use axum::{Json, Router};
use serde::{Deserialize, Serialize};

use crate::config::Verb;
use crate::http::HttpState;
use crate::http::api::{ApiError, ErrorBody};
use crate::http::auth::{audited, refused};
use crate::server::access::{AccessError, Principal, TokenRow};

pub fn router() -> Router<HttpState> {
    Router::new().route("/api/v1/tokens", get(list).post(create)).route("/api/v1/tokens/{name}", delete(revoke))
}

/// A token to make.
#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct TokenBody {
    /// Letters, digits, `-`, `_`, `.`; at most 64.
    #[schema(pattern = "^[A-Za-z0-9._-]{1,64}$")]
    pub name: String,
    /// A role from master.yaml's `roles:`, or `admin`.
    pub role: String,
}

/// A token made: `token` is shown once.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct CreatedToken {
    pub name: String,
    pub role: String,
    /// Send it as `Authorization: Bearer <token>`. Only its sha256 is kept.
    pub token: String,
}

async fn admin(
    state: &HttpState,
    principal: &Principal,
    what: &str,
    target: &str,
    cause: &str,
) -> Result<(), ApiError> {
    match principal.can(Verb::Admin) {
        Ok(()) => Ok(()),
        Err(refusal) => Err(refused(state, principal, what, target, cause, refusal).await),
    }
}

/// Every token (never the token itself).
#[utoipa::path(get, path = "/api/v1/tokens", tag = "tokens", security(("token" = [])),
    responses(
        (status = 200, description = "Tokens, by name", body = Vec<TokenRow>),
        (status = 401, description = "No or unknown token", body = ErrorBody),
        (status = 403, description = "Not `admin`", body = ErrorBody),
    ))]
pub async fn list(State(state): State<HttpState>, principal: Principal) -> Result<Json<Vec<TokenRow>>, ApiError> {
    principal.can(Verb::Admin).map_err(|refusal| ApiError::Forbidden(refusal.to_string()))?;
    Ok(Json(state.master.access.list_tokens()))
}

/// Makes a token.
#[utoipa::path(post, path = "/api/v1/tokens", tag = "tokens", security(("token" = [])), request_body = TokenBody,
    responses(
        (status = 201, description = "The token, shown once", body = CreatedToken),
        (status = 400, description = "A bad name", body = ErrorBody),
        (status = 401, description = "No or unknown token", body = ErrorBody),
        (status = 403, description = "Not `admin` (audited)", body = ErrorBody),
        (status = 404, description = "No such role in master.yaml's `roles:`", body = ErrorBody),
        (status = 409, description = "A token with that name exists", body = ErrorBody),
    ))]
pub async fn create(
    State(state): State<HttpState>,
    principal: Principal,
    super::ApiJson(body): super::ApiJson<TokenBody>,
) -> Result<(StatusCode, Json<CreatedToken>), ApiError> {
    let cause = format!("POST /api/v1/tokens by {}", principal.who);
    let what = format!("tokens create --role {}", body.role);
    admin(&state, &principal, &what, &body.name, &cause).await?;
    let made = state.master.access.create_token(&body.name, &body.role).await;
    let result = made.as_ref().map_or_else(|e| format!("failed: {e}"), |_| "ok".to_owned());
    audited(&state, &principal, &what, &body.name, &cause, result).await;
    match made {
        Ok(token) => Ok((StatusCode::CREATED, Json(CreatedToken { name: body.name, role: body.role, token }))),
        Err(error @ AccessError::Exists { .. }) => Err(ApiError::Conflict(error.to_string())),
        Err(error @ AccessError::NoRole { .. }) => Err(ApiError::NotFound(error.to_string())),
        Err(error @ AccessError::BadName { .. }) => Err(ApiError::BadRequest(error.to_string())),
        Err(error) => Err(ApiError::Internal(error.to_string())),
    }
}

/// Revokes a token: calls with it fail from now on.
#[utoipa::path(delete, path = "/api/v1/tokens/{name}", tag = "tokens", security(("token" = [])),
    params(("name" = String, Path, description = "The token's name")),
    responses(
        (status = 204, description = "Revoked"),
        (status = 401, description = "No or unknown token", body = ErrorBody),
        (status = 403, description = "Not `admin` (audited)", body = ErrorBody),
        (status = 404, description = "No token of that name", body = ErrorBody),
    ))]
pub async fn revoke(
    State(state): State<HttpState>,
    principal: Principal,
    super::ApiPath(name): super::ApiPath<String>,
) -> Result<StatusCode, ApiError> {
    let cause = format!("DELETE /api/v1/tokens/{name} by {}", principal.who);
    admin(&state, &principal, "tokens revoke", &name, &cause).await?;
    let revoked = state.master.access.revoke(&name).await;
    let result = match &revoked {
        Ok(true) => "ok".to_owned(),
        Ok(false) => "failed: no such token".to_owned(),
        Err(error) => format!("failed: {error}"),
    };
    audited(&state, &principal, "tokens revoke", &name, &cause, result).await;
    match revoked {
        Ok(true) => Ok(StatusCode::NO_CONTENT),
        Ok(false) => Err(ApiError::NotFound(format!("no token named `{name}` (GET /api/v1/tokens lists them)"))),
        Err(error) => Err(ApiError::Internal(error.to_string())),
    }
}

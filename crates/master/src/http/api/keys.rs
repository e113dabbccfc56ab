//! Agent keys: `GET /api/v1/keys`, `POST /api/v1/keys/{selector}/accept`,
//! `POST /api/v1/keys/{selector}/reject`, `DELETE /api/v1/keys/{selector}`.
//! The selector is what `halite-master keys` takes (an agent id glob or a
//! key's fingerprint); the changes go through `server::control::execute`,
//! so the rules (no silent replacement of an accepted key, sessions cut at
//! once, the commit before the answer) are the CLI's. The `keys` verb,
//! on every agent the selector names; audited.

use axum::extract::State;
use axum::routing::{delete, get, post};
use axum::{Json, Router};
use serde::{Deserialize, Serialize};

use crate::config::Verb;
use crate::http::HttpState;
use crate::http::api::{ApiError, ErrorBody};
use crate::http::auth::{audited, refused};
use crate::protocol::Request;
use crate::server::access::Principal;
use crate::server::keys::KeyEntry;

pub fn router() -> Router<HttpState> {
    Router::new()
        .route("/api/v1/keys", get(list))
        .route("/api/v1/keys/{selector}/accept", post(accept))
        .route("/api/v1/keys/{selector}/reject", post(reject))
        .route("/api/v1/keys/{selector}", delete(remove))
}

/// An agent key.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct KeyView {
    /// The agent id the key presented.
    pub id: String,
    /// The public key, 64 hex digits: its fingerprint (compare it with
    /// `halite-agent fingerprint` on the host before accepting).
    pub fingerprint: String,
    /// `pending`, `accepted` or `rejected`.
    pub status: String,
    /// Seconds since the epoch when the key was first seen.
    pub since: u64,
}

impl From<KeyEntry> for KeyView {
    fn from(entry: KeyEntry) -> KeyView {
        KeyView { id: entry.id, fingerprint: entry.key, status: entry.status.as_str().into(), since: entry.since }
    }
}

/// `accept`'s options.
#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub struct AcceptQuery {
    /// Accept even where it retires an id's accepted key.
    #[serde(default)]
    pub replace: bool,
}

/// Every key the role's target reaches.
#[utoipa::path(get, path = "/api/v1/keys", tag = "keys", security(("token" = [])),
    responses(
        (status = 200, description = "Keys", body = Vec<KeyView>),
        (status = 401, description = "No or unknown token", body = ErrorBody),
        (status = 403, description = "The role has no `read`", body = ErrorBody),
    ))]
pub async fn list(State(state): State<HttpState>, principal: Principal) -> Result<Json<Vec<KeyView>>, ApiError> {
    principal.can(Verb::Read).map_err(|refusal| ApiError::Forbidden(refusal.to_string()))?;
    let facts = facts_of(&state);
    let keys = state.master.keys.list();
    Ok(Json(keys.into_iter().filter(|k| principal.sees(&k.id, &facts(&k.id))).map(KeyView::from).collect()))
}

/// Accepts the keys `selector` names.
#[utoipa::path(post, path = "/api/v1/keys/{selector}/accept", tag = "keys", security(("token" = [])),
    params(("selector" = String, Path, description = "An agent id glob or a fingerprint"), AcceptQuery),
    responses(
        (status = 200, description = "The keys accepted (or already accepted)", body = Vec<KeyView>),
        (status = 400, description = "The selector is not valid", body = ErrorBody),
        (status = 401, description = "No or unknown token", body = ErrorBody),
        (status = 403, description = "The role may not change these keys", body = ErrorBody),
        (status = 404, description = "No key matches", body = ErrorBody),
        (status = 409, description = "Accepting would retire an accepted key; say `replace=true` or use the fingerprint", body = ErrorBody),
    ))]
pub async fn accept(
    State(state): State<HttpState>,
    principal: Principal,
    super::ApiPath(selector): super::ApiPath<String>,
    super::ApiQuery(query): super::ApiQuery<AcceptQuery>,
) -> Result<Json<Vec<KeyView>>, ApiError> {
    let request = Request::KeysAccept { target: selector.clone(), replace: query.replace };
    change(&state, &principal, "keys accept", &selector, request).await
}

/// Rejects the keys `selector` names (their sessions end at once).
#[utoipa::path(post, path = "/api/v1/keys/{selector}/reject", tag = "keys", security(("token" = [])),
    params(("selector" = String, Path, description = "An agent id glob or a fingerprint")),
    responses(
        (status = 200, description = "The keys rejected", body = Vec<KeyView>),
        (status = 400, description = "The selector is not valid", body = ErrorBody),
        (status = 401, description = "No or unknown token", body = ErrorBody),
        (status = 403, description = "The role may not change these keys", body = ErrorBody),
        (status = 404, description = "No key matches", body = ErrorBody),
    ))]
pub async fn reject(
    State(state): State<HttpState>,
    principal: Principal,
    super::ApiPath(selector): super::ApiPath<String>,
) -> Result<Json<Vec<KeyView>>, ApiError> {
    let request = Request::KeysReject { target: selector.clone() };
    change(&state, &principal, "keys reject", &selector, request).await
}

/// Deletes the keys `selector` names (their agents come back as new).
#[utoipa::path(delete, path = "/api/v1/keys/{selector}", tag = "keys", security(("token" = [])),
    params(("selector" = String, Path, description = "An agent id glob or a fingerprint")),
    responses(
        (status = 200, description = "The keys deleted", body = Vec<KeyView>),
        (status = 400, description = "The selector is not valid", body = ErrorBody),
        (status = 401, description = "No or unknown token", body = ErrorBody),
        (status = 403, description = "The role may not change these keys", body = ErrorBody),
        (status = 404, description = "No key matches", body = ErrorBody),
    ))]
pub async fn remove(
    State(state): State<HttpState>,
    principal: Principal,
    super::ApiPath(selector): super::ApiPath<String>,
) -> Result<Json<Vec<KeyView>>, ApiError> {
    let request = Request::KeysDelete { target: selector.clone() };
    change(&state, &principal, "keys delete", &selector, request).await
}

/// The one path of every key change: authorize on every key named,
/// execute as the control socket would, audit.
async fn change(
    state: &HttpState,
    principal: &Principal,
    what: &str,
    selector: &str,
    request: Request,
) -> Result<Json<Vec<KeyView>>, ApiError> {
    let cause = format!("{what} via API");
    let named = state.master.keys.matching(selector).map_err(|error| ApiError::BadRequest(error.to_string()))?;
    let facts = facts_of(state);
    let reached: Vec<(String, halite_proto::Value)> = named.iter().map(|k| (k.id.clone(), facts(&k.id))).collect();
    if let Err(refusal) = principal.allows(Verb::Keys, reached.iter().map(|(a, f)| (a.as_str(), f))) {
        return Err(refused(state, principal, what, selector, &cause, refusal).await);
    }
    if named.is_empty() {
        return Err(ApiError::NotFound(format!("no key matches `{selector}` (GET /api/v1/keys lists them)")));
    }
    let response = crate::server::control::execute(&state.master, request).await;
    let result = match &response.error {
        None => "ok".to_owned(),
        Some(error) => format!("failed: {error}"),
    };
    audited(state, principal, what, selector, &cause, result).await;
    match response.error {
        None => Ok(Json(response.keys.into_iter().map(KeyView::from).collect())),
        Some(error) if response.refused => Err(ApiError::Conflict(error)),
        Some(error) => Err(ApiError::BadRequest(error)),
    }
}

/// An agent's facts as the master knows them (live session, else last
/// seen; none for an agent never accepted).
fn facts_of(state: &HttpState) -> impl Fn(&str) -> halite_proto::Value {
    let rows = crate::server::control::agent_rows(&state.master);
    move |agent: &str| {
        rows.iter()
            .find(|r| r.id == agent)
            .map(|r| halite_proto::Value::from_json(&r.facts))
            .unwrap_or_else(halite_proto::Value::map)
    }
}

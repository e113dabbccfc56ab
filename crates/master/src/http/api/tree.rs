//! The live state tree: `GET /api/v1/tree` (its summary, its reactors and
//! watched files, and the last reload with its diagnostics) and
//! `POST /api/v1/tree/check` (the what-if: which reactors an uploaded
//! event would fire and what they would do, acting on nothing; the same
//! code as `halite-master check --event`, run against the live tree).

use axum::extract::State;
use axum::routing::{get, post};
use axum::{Json, Router};
use serde::{Deserialize, Serialize};

use crate::config::Verb;
use crate::http::HttpState;
use crate::http::api::{ApiError, ErrorBody};
use crate::server::access::Principal;

pub fn router() -> Router<HttpState> {
    Router::new().route("/api/v1/tree", get(summary)).route("/api/v1/tree/check", post(check))
}

/// The live tree.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct TreeView {
    /// `N state files with N states, N beacons, N reactors`.
    pub summary: String,
    /// The tree's directory.
    pub root: String,
    /// State files, by name.
    pub state_files: Vec<String>,
    /// Reactors: the authored ones, then one per watched state.
    pub reactors: Vec<ReactorView>,
    /// The last reload since the master started (none: the tree loaded at
    /// start is the live one).
    pub last_reload: Option<ReloadView>,
}

/// One reactor.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct ReactorView {
    pub name: String,
    /// The tag glob it fires on.
    pub on: String,
    pub when: Option<String>,
    /// What each action does, in words.
    pub actions: Vec<String>,
}

/// The last reload: `tree/reloaded`, or `tree/failed` with its diagnostics
/// (the last good tree stayed live).
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct ReloadView {
    pub ok: bool,
    pub at_us: i64,
    /// The event's data: `summary` and agent counts, or `errors` and
    /// `diagnostics` (file, line, column, message, help).
    #[schema(value_type = Object)]
    pub data: serde_json::Value,
}

/// An event to try.
#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CheckBody {
    /// The event's tag: `halite/beacon/web01/nginx-conf`: printable ASCII
    /// without spaces, at most 256. (An agent's tag may hold other printable
    /// characters; `halite-master check --event` takes those.)
    #[schema(pattern = "^[!-~]+$", max_length = 256)]
    pub tag: String,
    /// The agent that raises it (default: the tag's, for a beacon event).
    pub agent: Option<String>,
    /// The event's data: an object (default, or `null`: `{}`).
    #[schema(value_type = Option<Object>)]
    #[serde(default)]
    pub data: serde_json::Value,
}

/// What the event would do.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct CheckView {
    /// Reactors the event fires directly.
    pub fired: usize,
    /// The report, as `check --event` prints it, one line each.
    pub lines: Vec<String>,
}

/// The live tree and the last reload.
#[utoipa::path(get, path = "/api/v1/tree", tag = "tree", security(("token" = [])),
    responses(
        (status = 200, description = "The live tree", body = TreeView),
        (status = 401, description = "No or unknown token", body = ErrorBody),
        (status = 403, description = "The role has no `read`", body = ErrorBody),
    ))]
pub async fn summary(State(state): State<HttpState>, principal: Principal) -> Result<Json<TreeView>, ApiError> {
    principal.can(Verb::Read).map_err(|refusal| ApiError::Forbidden(refusal.to_string()))?;
    let tree = state.master.tree();
    let reactors = tree
        .reactors
        .iter()
        .map(|r| ReactorView {
            name: r.name.clone(),
            on: r.on.clone(),
            when: r.when.clone(),
            actions: r.actions.iter().map(|a| a.describe()).collect(),
        })
        .collect();
    let last_reload = state.master.bus.ledger().last_reload().map(|event| ReloadView {
        ok: event.tag.ends_with("/reloaded"),
        at_us: event.time_us,
        data: event.data.to_json(),
    });
    Ok(Json(TreeView {
        summary: tree.summary(),
        root: tree.states.root.display().to_string(),
        state_files: tree.states.files.keys().cloned().collect(),
        reactors,
        last_reload,
    }))
}

/// The tags `check` takes: exactly what its schema's pattern and length
/// say (an agent's tag may be any printable text, [`halite_proto::text::valid_tag`],
/// which a JSON Schema cannot bound in bytes), so a client that follows
/// the schema is never refused and one that does not always is.
fn api_tag(tag: &str) -> bool {
    (1..=halite_proto::text::MAX_TAG_BYTES).contains(&tag.len()) && tag.bytes().all(|b| (b'!'..=b'~').contains(&b))
}

/// What an event would fire (the what-if); acts on nothing.
#[utoipa::path(post, path = "/api/v1/tree/check", tag = "tree", security(("token" = [])), request_body = CheckBody,
    responses(
        (status = 200, description = "The reactors it would fire and what they would do", body = CheckView),
        (status = 400, description = "The tag is not valid", body = ErrorBody),
        (status = 401, description = "No or unknown token", body = ErrorBody),
        (status = 403, description = "The role has no `read`", body = ErrorBody),
    ))]
pub async fn check(
    State(state): State<HttpState>,
    principal: Principal,
    super::ApiJson(body): super::ApiJson<CheckBody>,
) -> Result<Json<CheckView>, ApiError> {
    principal.can(Verb::Read).map_err(|refusal| ApiError::Forbidden(refusal.to_string()))?;
    if !api_tag(&body.tag) {
        return Err(ApiError::BadRequest(format!(
            "`{}` is not a tag the API takes: printable ASCII without spaces, at most {} \
             (write e.g. halite/beacon/web01/motd; `halite-master check --event` takes any tag an agent may send)",
            body.tag.escape_debug(),
            halite_proto::text::MAX_TAG_BYTES
        )));
    }
    let data = match body.data {
        serde_json::Value::Null => serde_json::json!({}),
        data @ serde_json::Value::Object(_) => data,
        other => return Err(ApiError::BadRequest(format!("data must be an object, not {other}"))),
    };
    let tree = state.master.tree();
    let mut out = Vec::new();
    let fired = crate::cli::check::what_if_in(&tree, &body.tag, body.agent.as_deref(), &data, &mut out)
        .map_err(|error| ApiError::Internal(format!("the what-if failed: {error}")))?;
    let lines = String::from_utf8_lossy(&out).lines().map(str::to_owned).collect();
    Ok(Json(CheckView { fired, lines }))
}

#[cfg(test)]
mod tests {
    use super::api_tag;

    #[test]
    fn the_api_takes_exactly_the_tags_its_schema_describes() {
        let longest = "a".repeat(256);
        for tag in ["halite/beacon/web01/motd", "!~", longest.as_str()] {
            assert!(api_tag(tag), "{tag}");
        }
        let too_long = "a".repeat(257);
        for tag in ["", "with space", "tab\there", ")\u{81df4}G)", "ünï", "\u{7f}", too_long.as_str()] {
            assert!(!api_tag(tag), "{tag:?}");
        }
    }
}

//! `GET /api/v1/agents` and `GET /api/v1/agents/{id}`: every agent the
//! master knows (the same rows as `halite-master agents`, from
//! `server::control::agent_rows`), and one agent with its recent jobs.
//! A role sees the agents its target reaches and no others.

use axum::extract::State;
use axum::routing::get;
use axum::{Json, Router};
use serde::Serialize;

use crate::http::HttpState;
use crate::http::api::jobs::JobView;
use crate::http::api::{ApiError, ErrorBody};
use crate::protocol::{AgentRow, Compliance};
use crate::server::access::Principal;
use crate::server::store::JobFilter;

/// Jobs shown with one agent.
pub const AGENT_HISTORY: u32 = 50;

pub fn router() -> Router<HttpState> {
    Router::new().route("/api/v1/agents", get(list)).route("/api/v1/agents/{id}", get(one))
}

/// One agent as the API shows it.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct AgentView {
    pub id: String,
    /// The key's status: `accepted`, `pending`, `rejected` (`unknown` for
    /// a session whose key was deleted a moment ago).
    pub key: String,
    pub connected: bool,
    /// The peer's address, while connected.
    pub address: Option<String>,
    pub version: Option<String>,
    /// All facts (the live session's, else the last seen); `{}` if none.
    #[schema(value_type = Object)]
    pub facts: serde_json::Value,
    pub connected_since_us: Option<i64>,
    pub last_event_us: Option<i64>,
    /// `compliant`, `drifted`, `restoring`, `failing`, `stale` or `unknown`.
    pub compliance: String,
    /// Since when the agent has been in that state.
    pub compliance_since_us: Option<i64>,
    /// The drifted file, when `drifted`.
    pub drifted_path: Option<String>,
    /// Reactions waiting in the master's queue for this agent.
    pub queued: usize,
    /// The drift the last restore answered (its receipt's cause event).
    pub last_drift_us: Option<i64>,
    /// The last restore's receipt, when the result arrived.
    pub last_restore_us: Option<i64>,
    /// Drift → restore latency of the last restore, microseconds.
    pub last_restore_latency_us: Option<i64>,
    /// The newest job sent to this agent (only in one agent's detail).
    pub last_job: Option<String>,
    /// With several masters: the master the agent's session is on (its
    /// link's address).
    pub master: Option<String>,
    /// That master's tree version (a hash of its tree's files).
    pub tree: Option<String>,
}

impl From<AgentRow> for AgentView {
    fn from(row: AgentRow) -> AgentView {
        let (compliance, since, path) = match row.compliance {
            Compliance::Unknown => ("unknown", None, None),
            Compliance::Compliant { since_us } => ("compliant", Some(since_us), None),
            Compliance::Drifted { since_us, path } => ("drifted", Some(since_us), path),
            Compliance::Failing { since_us } => ("failing", Some(since_us), None),
            Compliance::Stale { since_us } => ("stale", Some(since_us), None),
            Compliance::Restoring { since_us, path } => ("restoring", Some(since_us), path),
        };
        AgentView {
            id: row.id,
            key: row.key,
            connected: row.connected,
            address: row.address,
            version: row.version,
            facts: if row.facts.is_object() { row.facts } else { serde_json::json!({}) },
            connected_since_us: row.connected_since_us,
            last_event_us: row.last_event_us,
            compliance: compliance.into(),
            compliance_since_us: since,
            drifted_path: path,
            queued: row.queued,
            last_drift_us: row.last_receipt.as_ref().and_then(|r| r.latency_us.map(|latency| r.at_us - latency)),
            last_restore_us: row.last_receipt.as_ref().map(|r| r.at_us),
            last_restore_latency_us: row.last_receipt.as_ref().and_then(|r| r.latency_us),
            last_job: None,
            master: row.master,
            tree: row.tree,
        }
    }
}

/// One agent and its history.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct AgentDetail {
    pub agent: AgentView,
    /// Its newest jobs (at most 50), newest first: restores, applies,
    /// commands.
    pub jobs: Vec<JobView>,
    /// Its newest remediation receipts (at most 50), newest first: what
    /// each restore changed, corrective or intentional, both hashes and
    /// the drift → restore latency.
    pub receipts: Vec<crate::server::receipts::Receipt>,
    /// How often each of its files drifted and was restored (what flaps).
    pub drift_counts: Vec<crate::server::receipts::DriftCount>,
}

/// The agents the caller's role reaches.
pub fn visible(state: &HttpState, principal: &Principal) -> Vec<AgentView> {
    crate::server::control::agent_rows(&state.master)
        .into_iter()
        .filter(|row| principal.sees(&row.id, &halite_proto::Value::from_json(&row.facts)))
        .map(AgentView::from)
        .collect()
}

/// Every agent the master knows.
#[utoipa::path(get, path = "/api/v1/agents", tag = "agents", security(("token" = [])),
    responses(
        (status = 200, description = "Agents, by id", body = Vec<AgentView>),
        (status = 401, description = "No or unknown token", body = ErrorBody),
        (status = 403, description = "The role has no `read`", body = ErrorBody),
    ))]
pub async fn list(State(state): State<HttpState>, principal: Principal) -> Result<Json<Vec<AgentView>>, ApiError> {
    principal.can(crate::config::Verb::Read).map_err(|refusal| ApiError::Forbidden(refusal.to_string()))?;
    Ok(Json(visible(&state, &principal)))
}

/// One agent, with its recent jobs.
#[utoipa::path(get, path = "/api/v1/agents/{id}", tag = "agents", security(("token" = [])),
    params(("id" = String, Path, description = "The agent id")),
    responses(
        (status = 200, description = "The agent", body = AgentDetail),
        (status = 401, description = "No or unknown token", body = ErrorBody),
        (status = 403, description = "The role has no `read`", body = ErrorBody),
        (status = 404, description = "No such agent (or not one the role reaches)", body = ErrorBody),
    ))]
pub async fn one(
    State(state): State<HttpState>,
    principal: Principal,
    super::ApiPath(id): super::ApiPath<String>,
) -> Result<Json<AgentDetail>, ApiError> {
    principal.can(crate::config::Verb::Read).map_err(|refusal| ApiError::Forbidden(refusal.to_string()))?;
    let Some(mut agent) = visible(&state, &principal).into_iter().find(|a| a.id == id) else {
        return Err(ApiError::NotFound(format!("no agent `{id}` (GET /api/v1/agents lists them)")));
    };
    let filter = JobFilter { agent: Some(id), limit: AGENT_HISTORY, ..JobFilter::default() };
    let jobs: Vec<JobView> = super::with_records(&state, move |records| records.list_filtered(&filter))
        .await?
        .into_iter()
        .map(JobView::from)
        .collect();
    agent.last_job = jobs.first().map(|job| job.jid.clone());
    let of = agent.id.clone();
    // From PostgreSQL when the records go there: a restore another master
    // made shows here too.
    let Some(store) = state.master.jobs.store() else {
        return Err(ApiError::Internal("this master has no store".into()));
    };
    let (file, postgres) = (store.file().to_path_buf(), store.postgres().cloned());
    let (receipts, drift_counts) = tokio::task::spawn_blocking(move || {
        let records = crate::server::store::records::open_for(&file, postgres.as_ref())?;
        Ok::<_, crate::server::store::StoreError>((
            records.receipts(Some(&of), AGENT_HISTORY)?,
            records.drift_counts(Some(&of))?,
        ))
    })
    .await
    .map_err(|error| ApiError::Internal(format!("reading the store stopped: {error}")))?
    .map_err(|error| ApiError::Internal(error.to_string()))?;
    Ok(Json(AgentDetail { agent, jobs, receipts, drift_counts }))
}

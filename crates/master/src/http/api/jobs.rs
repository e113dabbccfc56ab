//! `GET /api/v1/jobs` (filtered by agent, cause, state, outcome and time)
//! and `GET /api/v1/jobs/{jid}` (every agent's per-state results and
//! diffs), read from halite.db as `halite-master jobs` reads it. A role
//! sees the jobs whose agents its target reaches.

use axum::extract::State;
use axum::routing::get;
use axum::{Json, Router};
use halite_state::report::{AgentReport, Answer, StateReport};
use serde::{Deserialize, Serialize};

use crate::config::Verb;
use crate::http::HttpState;
use crate::http::api::{ApiError, ErrorBody};
use crate::server::access::Principal;
use crate::server::store::{JobFilter, JobSummary};

/// Jobs listed when `limit` is not given, and at most.
pub const DEFAULT_LIMIT: u32 = 100;
pub const MAX_LIMIT: u32 = 1000;

pub fn router() -> Router<HttpState> {
    Router::new().route("/api/v1/jobs", get(list)).route("/api/v1/jobs/{jid}", get(one))
}

/// One job, summed up.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct JobView {
    pub jid: String,
    pub created_us: i64,
    /// `operator:<command line>`, `event:<id>`, `connected`, `schedule:<name>`, `api:<who>`…
    pub cause: String,
    pub reactor: Option<String>,
    pub target: String,
    pub states: Vec<String>,
    pub test: bool,
    pub agents: Vec<String>,
    pub changed: i64,
    pub would_change: i64,
    pub failed: i64,
    pub unchanged: i64,
    /// Agents that did not answer.
    pub no_answer: i64,
    /// Agents not answered yet.
    pub waiting: i64,
}

impl From<JobSummary> for JobView {
    fn from(summary: JobSummary) -> JobView {
        let job = summary.job;
        JobView {
            jid: job.jid,
            created_us: job.created_us,
            cause: job.cause,
            reactor: job.reactor,
            target: job.target,
            states: job.states,
            test: job.test,
            agents: summary.agents,
            changed: summary.changed,
            would_change: summary.would_change,
            failed: summary.failed,
            unchanged: summary.unchanged,
            no_answer: summary.no_answer,
            waiting: summary.waiting,
        }
    }
}

/// One state's result on one agent.
#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
pub struct StateView {
    pub id: String,
    pub kind: String,
    /// `unchanged`, `changed`, `would_change` or `failed`.
    pub outcome: String,
    /// One line per change made (or that would be made, in test mode).
    pub changes: Vec<String>,
    pub error: Option<String>,
    /// A unified diff of file content.
    pub diff: Option<String>,
    pub duration_us: u64,
}

/// One agent's answer to a job, or why there is none.
#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
pub struct AgentResult {
    pub agent: String,
    pub jid: Option<String>,
    /// `answered` or `no_answer`.
    pub status: String,
    /// Why there is no answer.
    pub error: Option<String>,
    /// The states, in run order (empty without an answer).
    pub states: Vec<StateView>,
    /// Whether this agent counts as failed (a failed state, or no answer).
    pub failed: bool,
}

impl From<&AgentReport> for AgentResult {
    fn from(report: &AgentReport) -> AgentResult {
        let view = |s: &StateReport| StateView {
            id: s.id.clone(),
            kind: s.kind.clone(),
            outcome: s.outcome.as_str().to_owned(),
            changes: s.changes.clone(),
            error: s.error.clone(),
            diff: s.diff.clone(),
            duration_us: s.duration_us,
        };
        let (status, error, states) = match &report.answer {
            Answer::Answered { states } => ("answered", None, states.iter().map(view).collect()),
            Answer::NoAnswer { error } => ("no_answer", Some(error.clone()), Vec::new()),
        };
        AgentResult {
            agent: report.agent.clone(),
            jid: report.jid.clone(),
            status: status.into(),
            error,
            states,
            failed: !report.answered_ok(),
        }
    }
}

/// One job with every agent's results.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct JobDetail {
    pub jid: String,
    pub created_us: i64,
    pub cause: String,
    pub reactor: Option<String>,
    pub target: String,
    pub states: Vec<String>,
    pub test: bool,
    pub agents: Vec<AgentResult>,
}

/// A job filter's outcome: a state's result, or an agent's status.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum Outcome {
    Changed,
    WouldChange,
    Failed,
    Unchanged,
    NoAnswer,
    Waiting,
}

impl Outcome {
    fn as_str(self) -> &'static str {
        match self {
            Outcome::Changed => "changed",
            Outcome::WouldChange => "would_change",
            Outcome::Failed => "failed",
            Outcome::Unchanged => "unchanged",
            Outcome::NoAnswer => "no_answer",
            Outcome::Waiting => "waiting",
        }
    }
}

/// `GET /api/v1/jobs`' filters.
#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub struct JobQuery {
    /// Jobs sent to this agent.
    pub agent: Option<String>,
    /// Jobs whose cause starts with this (`operator:`, `event:`, `schedule:`, `api:`).
    pub cause: Option<String>,
    /// Jobs that carried this state id.
    pub state: Option<String>,
    /// Jobs with a result of this outcome, or an agent in this status.
    pub outcome: Option<Outcome>,
    /// Created at or after (microseconds since the epoch).
    pub since_us: Option<i64>,
    /// Created before (microseconds since the epoch).
    pub until_us: Option<i64>,
    /// At most this many (default 100, at most 1000), newest first.
    #[param(minimum = 1, maximum = 1000)]
    pub limit: Option<u32>,
}

/// Jobs, newest first.
#[utoipa::path(get, path = "/api/v1/jobs", tag = "jobs", security(("token" = [])), params(JobQuery),
    responses(
        (status = 200, description = "Jobs, newest first", body = Vec<JobView>),
        (status = 400, description = "A filter is not valid", body = ErrorBody),
        (status = 401, description = "No or unknown token", body = ErrorBody),
        (status = 403, description = "The role has no `read`", body = ErrorBody),
    ))]
pub async fn list(
    State(state): State<HttpState>,
    principal: Principal,
    super::ApiQuery(query): super::ApiQuery<JobQuery>,
) -> Result<Json<Vec<JobView>>, ApiError> {
    principal.can(Verb::Read).map_err(|refusal| ApiError::Forbidden(refusal.to_string()))?;
    let limit = query.limit.unwrap_or(DEFAULT_LIMIT);
    if !(1..=MAX_LIMIT).contains(&limit) {
        return Err(ApiError::BadRequest(format!("limit {limit} is not between 1 and {MAX_LIMIT}")));
    }
    let filter = JobFilter {
        agent: query.agent,
        cause: query.cause,
        state: query.state,
        outcome: query.outcome.map(|o| o.as_str().to_owned()),
        since_us: query.since_us,
        until_us: query.until_us,
        limit,
    };
    let jobs = super::with_records(&state, move |records| records.list_filtered(&filter)).await?;
    let visible = visible_agents(&state, &principal);
    Ok(Json(jobs.into_iter().filter(|job| job.agents.iter().all(|a| visible(a))).map(JobView::from).collect()))
}

/// One job (`jid` may be a unique prefix), with per-state results and diffs.
#[utoipa::path(get, path = "/api/v1/jobs/{jid}", tag = "jobs", security(("token" = [])),
    params(("jid" = String, Path, description = "The job id, or a unique prefix of it")),
    responses(
        (status = 200, description = "The job", body = JobDetail),
        (status = 401, description = "No or unknown token", body = ErrorBody),
        (status = 403, description = "The role has no `read`", body = ErrorBody),
        (status = 404, description = "No such job, or the prefix names several", body = ErrorBody),
    ))]
pub async fn one(
    State(state): State<HttpState>,
    principal: Principal,
    super::ApiPath(jid): super::ApiPath<String>,
) -> Result<Json<JobDetail>, ApiError> {
    principal.can(Verb::Read).map_err(|refusal| ApiError::Forbidden(refusal.to_string()))?;
    let wanted = jid.clone();
    let found = super::with_records(&state, move |records| records.job(&wanted)).await?;
    let visible = visible_agents(&state, &principal);
    let Some((job, report)) = found.filter(|(_, report)| report.agents.iter().all(|a| visible(&a.agent))) else {
        return Err(ApiError::NotFound(format!(
            "no job `{jid}` (or the prefix names several; GET /api/v1/jobs lists them)"
        )));
    };
    Ok(Json(JobDetail {
        jid: job.jid,
        created_us: job.created_us,
        cause: job.cause,
        reactor: job.reactor,
        target: job.target,
        states: job.states,
        test: job.test,
        agents: report.agents.iter().map(AgentResult::from).collect(),
    }))
}

/// Whether the caller's role reaches an agent (by its live or last facts).
fn visible_agents(state: &HttpState, principal: &Principal) -> impl Fn(&str) -> bool {
    let rows = crate::server::control::agent_rows(&state.master);
    let principal = principal.clone();
    move |agent: &str| {
        let facts = rows.iter().find(|r| r.id == agent).map(|r| halite_proto::Value::from_json(&r.facts));
        principal.sees(agent, &facts.unwrap_or_else(halite_proto::Value::map))
    }
}

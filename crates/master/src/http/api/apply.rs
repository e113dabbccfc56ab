//! `POST /api/v1/apply`: apply (or test) states on a target, with
//! `batch`, `canary` and `max_failures`, answered by a stream of
//! per-agent results as they arrive: NDJSON (`application/x-ndjson`, the
//! default) or Server-Sent Events (`Accept: text/event-stream`).
//!
//! The plan and the rollout are `server::apply`'s, the CLI's: the API
//! plans, checks that the caller's role has `apply` on every agent the
//! target matched (a refusal is audited and nothing is sent), audits the
//! apply, then runs exactly the planned jobs. The stream is the control
//! socket's conversation, each line turned into an [`ApplyEvent`]; the
//! jobs outlive a client that goes away.

use std::convert::Infallible;

use axum::Router;
use axum::body::Body;
use axum::extract::State;
use axum::http::{HeaderMap, header};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use futures_util::StreamExt as _;
use serde::{Deserialize, Serialize};
use tokio::io::AsyncBufReadExt;

use crate::config::Verb;
use crate::http::HttpState;
use crate::http::api::jobs::AgentResult;
use crate::http::api::{ApiError, ErrorBody};
use crate::http::auth::{audited, refused};
use crate::protocol::{ApplyLine, ApplyRequest};
use crate::server::access::Principal;

/// How long each agent's answer is awaited, unless the request says.
pub const DEFAULT_TIMEOUT_MS: u64 = 60_000;
/// The longest `timeout_ms` taken: an hour.
pub const MAX_TIMEOUT_MS: u64 = 3_600_000;
/// Bytes of conversation buffered between the apply and a slow client;
/// beyond it the apply's writer waits (the jobs do not: their answers
/// have a slot each).
const PIPE: usize = 64 << 10;

pub fn router() -> Router<HttpState> {
    Router::new().route("/api/v1/apply", post(apply))
}

/// What to apply where.
#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ApplyBody {
    /// A target expression: `web*`, `L@web01,web02`, `G@os:debian and not db*`.
    pub target: String,
    /// State files to apply; empty: each agent's top.yaml states.
    #[serde(default)]
    pub states: Vec<String>,
    /// Test mode: plan and report what would change, change nothing.
    #[serde(default)]
    pub test: bool,
    /// How long to wait for each agent's answer (default 60000).
    #[schema(minimum = 1, maximum = 3600000)]
    pub timeout_ms: Option<u64>,
    /// At most this many agents at once.
    #[schema(minimum = 1)]
    pub batch: Option<usize>,
    /// Apply to this many agents first (by id) and stop if any fails.
    #[schema(minimum = 1)]
    pub canary: Option<usize>,
    /// Stop sending once this many agents have failed.
    #[schema(minimum = 1)]
    pub max_failures: Option<usize>,
}

/// One job sent, as `started` lists it.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct JobRef {
    pub agent: String,
    pub jid: String,
}

/// One line of the answer's stream (the SSE event's name is `line`).
#[derive(Debug, Serialize, utoipa::ToSchema)]
#[serde(tag = "line", rename_all = "snake_case")]
pub enum ApplyEvent {
    /// The planned jobs, one per agent matched (not all may be sent).
    Started { test: bool, jobs: Vec<JobRef> },
    /// One agent's answer, or why there is none.
    Agent { result: AgentResult },
    /// `canary` or `max_failures` stopped the apply; `skipped` were never sent.
    Stopped { reason: String, skipped: Vec<String> },
    /// Every agent sent a job has answered or timed out.
    Done,
}

impl ApplyEvent {
    fn of(line: ApplyLine) -> Option<ApplyEvent> {
        Some(match line {
            ApplyLine::Started { test, jobs } => {
                ApplyEvent::Started { test, jobs: jobs.into_iter().map(|(agent, jid)| JobRef { agent, jid }).collect() }
            }
            ApplyLine::Agent { report } => ApplyEvent::Agent { result: AgentResult::from(&report) },
            ApplyLine::Stopped { reason, skipped } => ApplyEvent::Stopped { reason, skipped },
            ApplyLine::Done => ApplyEvent::Done,
            ApplyLine::Error { .. } => return None,
        })
    }

    fn name(&self) -> &'static str {
        match self {
            ApplyEvent::Started { .. } => "started",
            ApplyEvent::Agent { .. } => "agent",
            ApplyEvent::Stopped { .. } => "stopped",
            ApplyEvent::Done => "done",
        }
    }
}

/// Applies states; streams each agent's result.
#[utoipa::path(post, path = "/api/v1/apply", tag = "apply", security(("token" = [])), request_body = ApplyBody,
    responses(
        (status = 200, description = "One JSON object per line (NDJSON), or SSE events when asked with `Accept: text/event-stream`: `started`, `agent` per agent, `stopped` if the rollout stopped, `done`", body = ApplyEvent, content_type = "application/x-ndjson"),
        (status = 400, description = "A state file does not exist, the target does not parse, a template does not render, or a value is out of range", body = ErrorBody),
        (status = 401, description = "No or unknown token", body = ErrorBody),
        (status = 403, description = "The role may not apply to every agent matched (audited; nothing was sent)", body = ErrorBody),
        (status = 422, description = "The target matches no connected agent", body = ErrorBody),
    ))]
pub async fn apply(
    State(state): State<HttpState>,
    principal: Principal,
    headers: HeaderMap,
    super::ApiJson(body): super::ApiJson<ApplyBody>,
) -> Result<Response, ApiError> {
    let what = if body.test { "apply --test" } else { "apply" };
    let cause = format!("POST /api/v1/apply by {}", principal.who);
    let timeout_ms = body.timeout_ms.unwrap_or(DEFAULT_TIMEOUT_MS);
    if !(1..=MAX_TIMEOUT_MS).contains(&timeout_ms) {
        return Err(ApiError::BadRequest(format!("timeout_ms {timeout_ms} is not between 1 and {MAX_TIMEOUT_MS}")));
    }
    for (name, value) in [("batch", body.batch), ("canary", body.canary), ("max_failures", body.max_failures)] {
        if value == Some(0) {
            return Err(ApiError::BadRequest(format!("{name} must be at least 1 (leave it out for no limit)")));
        }
    }
    if let Err(refusal) = principal.can(Verb::Apply) {
        return Err(refused(&state, &principal, what, &body.target, &cause, refusal).await);
    }
    let request = ApplyRequest {
        target: body.target.clone(),
        states: body.states,
        test: body.test,
        timeout_ms,
        command_line: cause.clone(),
        batch: body.batch,
        canary: body.canary,
        max_failures: body.max_failures,
    };
    let jobs = match crate::server::apply::plan(&state.master, &request) {
        Ok(jobs) => jobs,
        Err(ApplyLine::Error { error, no_agent: true }) => return Err(ApiError::NoAgent(error)),
        Err(ApplyLine::Error { error, .. }) => return Err(ApiError::BadRequest(error)),
        Err(other) => return Err(ApiError::Internal(format!("unexpected plan: {other:?}"))),
    };
    let facts: Vec<(String, halite_proto::Value)> =
        jobs.iter().map(|(agent, _)| (agent.clone(), state.master.sessions.facts(agent))).collect();
    if let Err(refusal) = principal.allows(Verb::Apply, facts.iter().map(|(a, f)| (a.as_str(), f))) {
        return Err(refused(&state, &principal, what, &body.target, &cause, refusal).await);
    }
    let agents: Vec<&str> = jobs.iter().map(|(agent, _)| agent.as_str()).collect();
    audited(&state, &principal, what, &body.target, &cause, format!("ok: sent to {}", agents.join(", "))).await;

    let (mut writer, reader) = tokio::io::duplex(PIPE);
    let master = state.master.clone();
    let who = principal.who.clone();
    tokio::spawn(async move { crate::server::apply::serve_planned(&master, request, jobs, &who, &mut writer).await });
    let lines = tokio::io::BufReader::new(reader).lines();
    let events = futures_util::stream::unfold(lines, |mut lines| async move {
        loop {
            let line = lines.next_line().await.ok().flatten()?;
            let parsed = serde_json::from_str::<ApplyLine>(&line).ok().and_then(ApplyEvent::of);
            if let Some(event) = parsed {
                return Some((event, lines));
            }
        }
    })
    .take_until(state.cancel.clone().cancelled_owned());
    Ok(stream_response(&headers, events))
}

/// Whether the client asked for Server-Sent Events.
pub fn wants_sse(headers: &HeaderMap) -> bool {
    headers
        .get_all(header::ACCEPT)
        .iter()
        .filter_map(|value| value.to_str().ok())
        .any(|value| value.contains("text/event-stream"))
}

/// A stream of [`ApplyEvent`]s as NDJSON or SSE.
fn stream_response(
    headers: &HeaderMap,
    events: impl futures_util::Stream<Item = ApplyEvent> + Send + 'static,
) -> Response {
    if wants_sse(headers) {
        let events = events.map(|event| {
            let data = serde_json::to_string(&event).unwrap_or_default();
            Ok::<_, Infallible>(axum::response::sse::Event::default().event(event.name()).data(data))
        });
        return axum::response::Sse::new(events).into_response();
    }
    let lines = events.map(|event| {
        let mut text = serde_json::to_string(&event).unwrap_or_default();
        text.push('\n');
        Ok::<_, Infallible>(text)
    });
    ([(header::CONTENT_TYPE, "application/x-ndjson")], Body::from_stream(lines)).into_response()
}

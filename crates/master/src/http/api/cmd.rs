//! `POST /api/v1/cmd`: an ad-hoc command on a target (`halite-master cmd`),
//! at most `batch` agents at once, answered by a stream of per-agent exit
//! codes and output (NDJSON, or SSE with `Accept: text/event-stream`).
//!
//! The `cmd` verb on every agent the target matches now; the command then
//! runs on exactly those agents (the target is narrowed to their list, so
//! an agent connecting meanwhile is not reached unchecked), through
//! `server::cmd::serve`, the control socket's path. Audited.

use std::convert::Infallible;

use axum::Router;
use axum::body::Body;
use axum::extract::State;
use axum::http::{HeaderMap, header};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use futures_util::StreamExt as _;
use serde::Deserialize;
use tokio::io::AsyncBufReadExt;

use crate::config::Verb;
use crate::http::HttpState;
use crate::http::api::{ApiError, ErrorBody};
use crate::http::auth::{audited, refused};
use crate::protocol::{CmdLine, CmdRequest};
use crate::server::access::Principal;

/// The longest `timeout_ms` taken: an hour.
pub const MAX_TIMEOUT_MS: u64 = 3_600_000;
const PIPE: usize = 64 << 10;

pub fn router() -> Router<HttpState> {
    Router::new().route("/api/v1/cmd", post(cmd))
}

/// What to run where.
#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CmdBody {
    /// A target expression.
    pub target: String,
    /// The program and its arguments (no shell).
    #[schema(min_items = 1)]
    pub argv: Vec<String>,
    /// How long the program may run on each agent (default 60000).
    #[schema(minimum = 1, maximum = 3600000)]
    pub timeout_ms: Option<u64>,
    /// At most this many agents at once.
    #[schema(minimum = 1)]
    pub batch: Option<usize>,
}

/// One line of the answer's stream: `started`, `agent` per agent, `done`
/// (as `halite-master cmd --json` prints them).
#[derive(Debug, serde::Serialize, utoipa::ToSchema)]
#[serde(tag = "line", rename_all = "snake_case")]
pub enum CmdEvent {
    Started {
        agents: Vec<String>,
    },
    Agent {
        agent: String,
        jid: String,
        answered: bool,
        code: Option<i32>,
        error: Option<String>,
        stdout: String,
        stderr: String,
    },
    Done,
}

impl CmdEvent {
    fn of(line: CmdLine) -> Option<CmdEvent> {
        Some(match line {
            CmdLine::Started { agents } => CmdEvent::Started { agents },
            CmdLine::Agent { agent, jid, answered, code, error, stdout, stderr } => {
                CmdEvent::Agent { agent, jid, answered, code, error, stdout, stderr }
            }
            CmdLine::Done => CmdEvent::Done,
            CmdLine::Error { .. } => return None,
        })
    }

    fn name(&self) -> &'static str {
        match self {
            CmdEvent::Started { .. } => "started",
            CmdEvent::Agent { .. } => "agent",
            CmdEvent::Done => "done",
        }
    }
}

/// Runs a command on a target; streams each agent's result.
#[utoipa::path(post, path = "/api/v1/cmd", tag = "apply", security(("token" = [])), request_body = CmdBody,
    responses(
        (status = 200, description = "NDJSON (or SSE): `started`, `agent` per agent, `done`", body = CmdEvent, content_type = "application/x-ndjson"),
        (status = 400, description = "No program, a bad target or a value out of range", body = ErrorBody),
        (status = 401, description = "No or unknown token", body = ErrorBody),
        (status = 403, description = "The role may not run commands on every agent matched (audited)", body = ErrorBody),
        (status = 422, description = "The target matches no connected agent", body = ErrorBody),
    ))]
pub async fn cmd(
    State(state): State<HttpState>,
    principal: Principal,
    headers: HeaderMap,
    super::ApiJson(body): super::ApiJson<CmdBody>,
) -> Result<Response, ApiError> {
    let cause = format!("POST /api/v1/cmd by {}", principal.who);
    let timeout_ms = body.timeout_ms.unwrap_or(super::apply::DEFAULT_TIMEOUT_MS);
    if !(1..=MAX_TIMEOUT_MS).contains(&timeout_ms) {
        return Err(ApiError::BadRequest(format!("timeout_ms {timeout_ms} is not between 1 and {MAX_TIMEOUT_MS}")));
    }
    if body.batch == Some(0) {
        return Err(ApiError::BadRequest("batch must be at least 1 (leave it out for no limit)".into()));
    }
    if body.argv.first().is_none_or(String::is_empty) {
        return Err(ApiError::BadRequest("no program given (write e.g. \"argv\": [\"uptime\"])".into()));
    }
    if let Err(refusal) = principal.can(Verb::Cmd) {
        return Err(refused(&state, &principal, "cmd", &body.target, &cause, refusal).await);
    }
    let target = halite_state::Target::parse(&body.target)
        .map_err(|e| ApiError::BadRequest(format!("target `{}`: {e}", body.target)))?;
    // Agents on other masters too (routed there): authorized here.
    let agents: Vec<String> =
        crate::server::cmd::reached(&state.master, &target).into_iter().map(|(agent, _)| agent).collect();
    if agents.is_empty() {
        return Err(ApiError::NoAgent(format!("target `{}` matches no connected agent", body.target)));
    }
    let facts: Vec<(String, halite_proto::Value)> =
        agents.iter().map(|agent| (agent.clone(), state.master.sessions.facts(agent))).collect();
    if let Err(refusal) = principal.allows(Verb::Cmd, facts.iter().map(|(a, f)| (a.as_str(), f))) {
        return Err(refused(&state, &principal, "cmd", &body.target, &cause, refusal).await);
    }
    let what = format!("cmd {}", shlex::try_join(body.argv.iter().map(String::as_str)).unwrap_or_default());
    audited(&state, &principal, &what, &body.target, &cause, format!("ok: sent to {}", agents.join(", "))).await;
    let request = CmdRequest {
        target: format!("L@{}", agents.join(",")),
        argv: body.argv,
        timeout_ms,
        batch: body.batch,
        command_line: cause,
    };
    let (mut writer, reader) = tokio::io::duplex(PIPE);
    let master = state.master.clone();
    let who = principal.who.clone();
    tokio::spawn(async move { crate::server::cmd::serve(&master, request, &who, &mut writer).await });
    let lines = tokio::io::BufReader::new(reader).lines();
    let events = futures_util::stream::unfold(lines, |mut lines| async move {
        loop {
            let line = lines.next_line().await.ok().flatten()?;
            if let Some(event) = serde_json::from_str::<CmdLine>(&line).ok().and_then(CmdEvent::of) {
                return Some((event, lines));
            }
        }
    })
    .take_until(state.cancel.clone().cancelled_owned());
    if super::apply::wants_sse(&headers) {
        let events = events.map(|event| {
            let data = serde_json::to_string(&event).unwrap_or_default();
            Ok::<_, Infallible>(axum::response::sse::Event::default().event(event.name()).data(data))
        });
        return Ok(axum::response::Sse::new(events).into_response());
    }
    let lines = events.map(|event| {
        let mut text = serde_json::to_string(&event).unwrap_or_default();
        text.push('\n');
        Ok::<_, Infallible>(text)
    });
    Ok(([(header::CONTENT_TYPE, "application/x-ndjson")], Body::from_stream(lines)).into_response())
}

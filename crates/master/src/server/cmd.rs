//! `halite-master cmd TARGET -- PROGRAM ARGS…` on the master's side: one
//! job per matching agent, each a single captured `cmd.run` state (no
//! shell, the operator's timeout), sent through the same job path as
//! `apply` and recorded with the operator's command line as its cause;
//! each agent's exit code and output streamed back as it arrives.
//!
//! The conversation, one JSON object per line ([`CmdLine`]): `started`
//! with the agents, one `agent` per agent, then `done`; or a single
//! `error`. With `batch: N`, at most N agents run the program at once; the
//! others wait for a slot. Jobs outlive the connection, as `apply`'s do.
//!
//! With several masters, agents the target names by id that are connected
//! to another master run the program too: their jobs go to their masters
//! through PostgreSQL (`cluster/route.rs`, [`run_routed`] there) and their
//! lines join the same stream.

use std::sync::Arc;
use std::time::Duration;

use halite_proto::{Id, Job};
use halite_state::Target;
use halite_state::kinds::cmd_run::{Captured, captured_call};
use tokio::io::AsyncWriteExt;
use tokio::sync::{Semaphore, mpsc};

use crate::protocol::{CMD_STATE_ID, CmdLine, CmdRequest};
use crate::server::cluster::route::{self, Answer, Work};
use crate::server::context::Master;
use crate::server::jobs::{Jobs, Origin};

/// How long past the program's own timeout the master waits for the
/// agent's answer (the agent must notice, kill and report).
const ANSWER_GRACE: Duration = Duration::from_secs(10);

/// Why nothing runs: the message, and whether it is that no agent matched.
type Refusal = (String, bool);

/// The agents `target` reaches: those connected here (`None`) and, with
/// several masters, those it names by id on other masters (with their
/// master), by id.
pub fn reached(master: &Master, target: &Target) -> Vec<(String, Option<String>)> {
    let here = master.jobs.agents_matching(target);
    let there = if master.route.is_some() { master.homed_elsewhere(target, &here) } else { Vec::new() };
    let mut reached: Vec<(String, Option<String>)> = here.into_iter().map(|agent| (agent, None)).collect();
    reached.extend(there.into_iter().map(|(agent, home)| (agent, Some(home))));
    reached.sort();
    reached
}

/// The agents to run on (each with its master when it is another), or
/// why nothing runs.
fn agents(master: &Master, request: &CmdRequest) -> Result<Vec<(String, Option<String>)>, Refusal> {
    if request.argv.is_empty() {
        return Err(("no program given (write e.g. `halite-master cmd 'web*' -- uptime`)".into(), false));
    }
    let target = Target::parse(&request.target)
        .map_err(|e| (format!("{e} (write e.g. 'web*', L@web01,web02 or 'G@os:debian and not db*')"), false))?;
    let matched = reached(master, &target);
    if matched.is_empty() {
        let known = master.sessions.accepted_agents();
        let known = if known.is_empty() { "none".to_owned() } else { known.join(", ") };
        let elsewhere = master.cluster.as_ref().map_or_else(String::new, |view| {
            view.elsewhere(|agent| target.matches(agent, &halite_proto::Value::map()))
        });
        return Err((
            format!("target `{}` matches no connected agent (connected: {known}){elsewhere}", request.target),
            true,
        ));
    }
    Ok(matched)
}

/// Runs the request and writes the conversation to `out`. `who` asked
/// (the audit log's `who`): a routed job's master records it.
pub async fn serve<W: AsyncWriteExt + Unpin>(master: &Master, request: CmdRequest, who: &str, out: &mut W) {
    let agents = match agents(master, &request) {
        Ok(agents) => agents,
        Err((error, no_agent)) => {
            let _ = write_line(out, &CmdLine::Error { error, no_agent }).await;
            return;
        }
    };
    tracing::info!(target = %request.target, agents = agents.len(), command = ?request.argv, "Operator command.");
    let names = agents.iter().map(|(agent, _)| agent.clone()).collect();
    let mut connected = write_line(out, &CmdLine::Started { agents: names }).await;
    let timeout = Duration::from_millis(request.timeout_ms);
    let slots = Arc::new(Semaphore::new(request.batch.unwrap_or(agents.len()).clamp(1, agents.len().max(1))));
    // One slot per agent: a job task never waits to hand in its answer.
    let (answers, mut inbox) = mpsc::channel(agents.len());
    for (agent, home) in agents {
        let id = Id::new();
        let (answers, slots) = (answers.clone(), slots.clone());
        if let Some(home) = home {
            let router = master.route.clone();
            let routed = route::Request {
                work: Work::Cmd { argv: request.argv.clone() },
                timeout_ms: request.timeout_ms,
                target: request.target.clone(),
                command_line: request.command_line.clone(),
            };
            let who = who.to_owned();
            tokio::spawn(async move {
                let _slot = slots.acquire_owned().await;
                let jid = id.to_string();
                let waited = timeout + ANSWER_GRACE + route::ROUTE_GRACE;
                let asked = match &router {
                    Some(router) => router.ask(&home, &agent, &jid, &who, &routed, waited).await,
                    None => Err(route::RouteError::NoAnswer { home: home.clone(), waited: Duration::ZERO }),
                };
                let line = match asked {
                    Ok(Answer::Cmd { line }) => line,
                    Ok(Answer::Apply { .. }) => no_answer(agent, jid, format!("master {home} answered another job")),
                    Err(error) => no_answer(agent, jid, error.to_string()),
                };
                let _ = answers.send(line).await;
            });
            continue;
        }
        let origin = Origin {
            cause: format!("operator:{}", request.command_line),
            reactor: None,
            target: request.target.clone(),
        };
        let (jobs, argv) = (master.jobs.clone(), request.argv.clone());
        tokio::spawn(async move {
            // Never closed, so acquiring only waits.
            let _slot = slots.acquire_owned().await;
            let line = run_job(&jobs, agent, id, &argv, origin, timeout).await;
            let _ = answers.send(line).await;
        });
    }
    drop(answers);
    while let Some(line) = inbox.recv().await {
        if connected {
            connected = write_line(out, &line).await;
        }
    }
    // Done once every answer is in the store: `jobs` run next shows them.
    master.jobs.flush_store().await;
    if connected {
        let _ = write_line(out, &CmdLine::Done).await;
    }
}

/// Runs `argv` on `agent` (connected here) as job `id`; its line.
async fn run_job(jobs: &Jobs, agent: String, id: Id, argv: &[String], origin: Origin, timeout: Duration) -> CmdLine {
    let job = Job { id, cause_event: None, test: false, states: vec![captured_call(CMD_STATE_ID, argv, timeout)] };
    let jid = id.to_string();
    match jobs.run_with(&agent, job, origin, timeout + ANSWER_GRACE).await {
        Ok(result) => match result.results.first() {
            Some(state) => {
                let captured = Captured::from_result(&state.outcome);
                CmdLine::Agent {
                    agent,
                    jid,
                    answered: true,
                    code: captured.code,
                    error: captured.error,
                    stdout: captured.stdout,
                    stderr: captured.stderr,
                }
            }
            None => no_answer(agent, jid, "the agent returned no result".into()),
        },
        Err(error) => no_answer(agent, jid, error.to_string()),
    }
}

/// On an agent's home master: runs a command another master routed here
/// (`routed.rs`) as job `id`, exactly as a local one (recorded by this
/// master's store with `origin`). An agent no longer connected here is
/// answered "not connected".
pub async fn run_routed(
    master: &Master,
    agent: &str,
    id: Id,
    argv: &[String],
    origin: Origin,
    timeout: Duration,
) -> CmdLine {
    if !master.sessions.accepted_agents().iter().any(|a| a == agent) {
        let me = master.route.as_ref().map_or("this master", |r| r.name());
        let error = format!(
            "not connected to master {me} (its session ended or moved; `halite-master agents` shows where it is)"
        );
        return no_answer(agent.to_owned(), id.to_string(), error);
    }
    let line = run_job(&master.jobs, agent.to_owned(), id, argv, origin, timeout).await;
    master.jobs.flush_store().await;
    line
}

fn no_answer(agent: String, jid: String, error: String) -> CmdLine {
    CmdLine::Agent {
        agent,
        jid,
        answered: false,
        code: None,
        error: Some(error),
        stdout: String::new(),
        stderr: String::new(),
    }
}

/// False when the operator has gone away.
async fn write_line<W: AsyncWriteExt + Unpin>(out: &mut W, line: &CmdLine) -> bool {
    let mut text = serde_json::to_string(line).unwrap_or_default();
    text.push('\n');
    out.write_all(text.as_bytes()).await.is_ok() && out.flush().await.is_ok()
}

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

use std::sync::Arc;
use std::time::Duration;

use halite_proto::{Id, Job};
use halite_state::Target;
use halite_state::kinds::cmd_run::{Captured, captured_call};
use tokio::io::AsyncWriteExt;
use tokio::sync::{Semaphore, mpsc};

use crate::protocol::{CMD_STATE_ID, CmdLine, CmdRequest};
use crate::server::context::Master;
use crate::server::jobs::Origin;

/// How long past the program's own timeout the master waits for the
/// agent's answer (the agent must notice, kill and report).
const ANSWER_GRACE: Duration = Duration::from_secs(10);

/// Why nothing runs: the message, and whether it is that no agent matched.
type Refusal = (String, bool);

/// The agents to run on, or why nothing runs.
fn agents(master: &Master, request: &CmdRequest) -> Result<Vec<String>, Refusal> {
    if request.argv.is_empty() {
        return Err(("no program given (write e.g. `halite-master cmd 'web*' -- uptime`)".into(), false));
    }
    let target = Target::parse(&request.target)
        .map_err(|e| (format!("{e} (write e.g. 'web*', L@web01,web02 or 'G@os:debian and not db*')"), false))?;
    let matched = master.jobs.agents_matching(&target);
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

/// Runs the request and writes the conversation to `out`.
pub async fn serve<W: AsyncWriteExt + Unpin>(master: &Master, request: CmdRequest, out: &mut W) {
    let agents = match agents(master, &request) {
        Ok(agents) => agents,
        Err((error, no_agent)) => {
            let _ = write_line(out, &CmdLine::Error { error, no_agent }).await;
            return;
        }
    };
    tracing::info!(target = %request.target, agents = agents.len(), command = ?request.argv, "Operator command.");
    let mut connected = write_line(out, &CmdLine::Started { agents: agents.clone() }).await;
    let timeout = Duration::from_millis(request.timeout_ms);
    let slots = Arc::new(Semaphore::new(request.batch.unwrap_or(agents.len()).clamp(1, agents.len().max(1))));
    // One slot per agent: a job task never waits to hand in its answer.
    let (answers, mut inbox) = mpsc::channel(agents.len());
    for agent in agents {
        let job = Job {
            id: Id::new(),
            cause_event: None,
            test: false,
            states: vec![captured_call(CMD_STATE_ID, &request.argv, timeout)],
        };
        let origin = Origin {
            cause: format!("operator:{}", request.command_line),
            reactor: None,
            target: request.target.clone(),
        };
        let (jobs, answers, slots) = (master.jobs.clone(), answers.clone(), slots.clone());
        tokio::spawn(async move {
            // Never closed, so acquiring only waits.
            let _slot = slots.acquire_owned().await;
            let jid = job.id.to_string();
            let line = match jobs.run_with(&agent, job, origin, timeout + ANSWER_GRACE).await {
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
            };
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

//! `halite-master apply` on the master's side: resolve the target against
//! the connected agents, send each one job (recorded with the operator's
//! command line as its cause), and stream every agent's answer back over the
//! control socket as it arrives.
//!
//! The conversation, one JSON object per line ([`ApplyLine`]): `started`
//! with the agents and their job ids, one `agent` per agent, then `done`;
//! or a single `error`. Jobs outlive the connection: an operator who
//! presses ^C does not stop them, and their results are still recorded.

use std::time::Duration;

use halite_proto::{Id, Job};
use halite_state::report::AgentReport;
use halite_state::{RenderContext, Target};
use tokio::io::AsyncWriteExt;
use tokio::sync::mpsc;

use crate::protocol::{ApplyLine, ApplyRequest};
use crate::server::context::Master;
use crate::server::jobs::Origin;

fn error(message: impl Into<String>) -> ApplyLine {
    ApplyLine::Error { error: message.into(), no_agent: false }
}

/// What to send to whom, or why nothing can be sent.
fn plan(master: &Master, request: &ApplyRequest) -> Result<Vec<(String, Job)>, ApplyLine> {
    let tree = master.tree();
    let states = &tree.states;
    if let Some(missing) = request.states.iter().find(|s| !states.has_state_file(s)) {
        return Err(error(format!(
            "state file `{missing}` does not exist in the state tree {} (state files: {})",
            states.root.display(),
            states.files.keys().cloned().collect::<Vec<_>>().join(", ")
        )));
    }
    let target = Target::parse(&request.target)
        .map_err(|e| error(format!("{e} (write e.g. 'web*', L@web01,web02 or 'G@os:debian and not db*')")))?;
    let connected = master.sessions.accepted_with_facts();
    let matched: Vec<(String, halite_proto::Value)> =
        connected.iter().filter(|(agent, facts)| target.matches(agent, facts)).cloned().collect();
    if matched.is_empty() {
        let known: Vec<&str> = connected.iter().map(|(a, _)| a.as_str()).collect();
        let known = if known.is_empty() { "none".to_owned() } else { known.join(", ") };
        return Err(ApplyLine::Error {
            error: format!("target `{}` matches no connected agent (connected: {known})", request.target),
            no_agent: true,
        });
    }
    // Every agent's states render before anything is sent: a template that
    // fails for one agent stops the whole apply, with its diagnostics.
    matched
        .into_iter()
        .map(|(agent, facts)| {
            let names =
                if request.states.is_empty() { states.states_for(&agent, &facts) } else { request.states.clone() };
            let calls = states.calls_for(&names, &RenderContext::new(&agent, &facts)).map_err(|diagnostics| {
                let text: Vec<String> = diagnostics.iter().map(ToString::to_string).collect();
                error(format!("the states do not render for `{agent}`; nothing was sent:\n{}", text.join("\n")))
            })?;
            Ok((agent, Job { id: Id::new(), cause_event: None, test: request.test, states: calls }))
        })
        .collect()
}

/// Runs the request and writes the conversation to `out`. Returns when
/// every agent has answered or timed out, or the operator went away.
pub async fn serve<W: AsyncWriteExt + Unpin>(master: &Master, request: ApplyRequest, out: &mut W) {
    let jobs = match plan(master, &request) {
        Ok(jobs) => jobs,
        Err(line) => {
            let _ = write_line(out, &line).await;
            return;
        }
    };
    tracing::info!(target = %request.target, agents = jobs.len(), test = request.test, "Operator apply.");
    let started = jobs.iter().map(|(agent, job)| (agent.clone(), job.id.to_string())).collect();
    let mut connected = write_line(out, &ApplyLine::Started { test: request.test, jobs: started }).await;
    // One slot per agent: a job task never waits to hand in its answer.
    let (answers, mut inbox) = mpsc::channel(jobs.len());
    let timeout = Duration::from_millis(request.timeout_ms);
    for (agent, job) in jobs {
        let origin = Origin {
            cause: format!("operator:{}", request.command_line),
            reactor: None,
            target: request.target.clone(),
        };
        let (jobs, answers) = (master.jobs.clone(), answers.clone());
        tokio::spawn(async move {
            let jid = Some(job.id.to_string());
            let report = match jobs.run_with(&agent, job, origin, timeout).await {
                Ok(result) => AgentReport::answered(&agent, jid, &result.results),
                Err(error) => AgentReport::no_answer(&agent, jid, error.to_string()),
            };
            let _ = answers.send(report).await;
        });
    }
    drop(answers);
    while let Some(report) = inbox.recv().await {
        if connected {
            connected = write_line(out, &ApplyLine::Agent { report }).await;
        }
    }
    if connected {
        let _ = write_line(out, &ApplyLine::Done).await;
    }
}

/// False when the operator has gone away.
async fn write_line<W: AsyncWriteExt + Unpin>(out: &mut W, line: &ApplyLine) -> bool {
    let mut text = serde_json::to_string(line).unwrap_or_default();
    text.push('\n');
    out.write_all(text.as_bytes()).await.is_ok() && out.flush().await.is_ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lines_round_trip_as_json() {
        let lines = [
            ApplyLine::Started { test: true, jobs: vec![("web01".into(), "01J".into())] },
            ApplyLine::Agent { report: AgentReport::no_answer("web01", Some("01J".into()), "timeout") },
            ApplyLine::Done,
            ApplyLine::Error { error: "no".into(), no_agent: true },
        ];
        for line in lines {
            let text = serde_json::to_string(&line).unwrap();
            assert!(!text.contains('\n'));
            assert_eq!(serde_json::from_str::<ApplyLine>(&text).unwrap(), line, "{text}");
        }
    }
}

//! `run`: a command on the agent that raised the event, as a job of one
//! `cmd.run` state whose cause is the event. The agent runs it without a
//! shell (the line is split into words when the tree loads) and with the
//! event's tag, id and agent in `HALITE_TAG`, `HALITE_EVENT_ID` and
//! `HALITE_AGENT`: event data never becomes part of the command (SPEC §5).

use std::time::Duration;

use futures_util::future::BoxFuture;
use halite_proto::{Event, Id, Job, StateCall, Value};
use halite_state::StateTree;

use super::{Action, ActionError, ActionKind, Context, authored_command};

pub static KIND: ActionKind = ActionKind {
    name: "run",
    summary: "Run a command on the agent that raised the event (a cmd.run job, no shell).",
    example: "- name: cpu-audit\n  on: halite/beacon/*/cpu-hot\n  run: logger -t halite 'cpu hot'\n",
    compile,
};

/// How long the command may run on the agent unless the reactor says.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(60);

/// Why a `run` action's command failed on the agent; names the job, the
/// command and the agent.
#[derive(Debug, thiserror::Error)]
pub enum RunError {
    /// The job did not reach the agent or no result came back (the jobs
    /// module words it).
    #[error(transparent)]
    Job(crate::server::jobs::JobError),
    /// The command failed. Its stderr is in the job's record, not here:
    /// this error becomes a `failed` event, and the bus carries no output.
    #[error("job {job}: `{cmd}` failed on {agent}; `halite-master jobs {job}` shows its output")]
    Failed { job: Id, cmd: String, agent: String },
    /// No result: the agent's job runner died without a word.
    #[error("job {job}: {agent} returned no result for `{cmd}`")]
    NoResult { job: Id, cmd: String, agent: String },
}

#[derive(Debug)]
struct Run {
    cmd: String,
    timeout: Duration,
}

fn compile(value: &serde_json::Value, _tree: &StateTree) -> Result<Box<dyn Action>, ActionError> {
    let command = authored_command(value, DEFAULT_TIMEOUT, "`run: COMMAND` or `run: {cmd: COMMAND, timeout: 30s}`")?;
    Ok(Box::new(Run { cmd: command.cmd, timeout: command.timeout }))
}

impl Run {
    /// The `cmd.run` state the job carries, built by the state engine's
    /// `cmd_run::call` (no shell), with the event in its `env`.
    /// `HALITE_AGENT` is the agent that raised the event, also when a
    /// `target` runs the command on other agents.
    fn call(&self, event: &Event) -> StateCall {
        let env = Value::map()
            .with("HALITE_TAG", event.tag.as_str())
            .with("HALITE_EVENT_ID", event.id.to_string())
            .with("HALITE_AGENT", event.agent.as_str());
        halite_state::kinds::cmd_run::call("reactor-run", &self.cmd)
            .with_arg("env", env)
            .with_arg("timeout_ms", i64::try_from(self.timeout.as_millis()).unwrap_or(i64::MAX))
    }
}

impl Action for Run {
    fn describe(&self) -> String {
        format!("run `{}` on the agent that raised the event (no shell, timeout {:?})", self.cmd, self.timeout)
    }

    fn acts_on_agent(&self) -> bool {
        true
    }

    fn run<'a>(
        &'a self,
        context: &'a Context,
        agent: &'a str,
        event: &'a Event,
    ) -> BoxFuture<'a, Result<String, ActionError>> {
        Box::pin(async move {
            let job = Job { id: Id::new(), cause_event: Some(event.id), test: false, states: vec![self.call(event)] };
            let jid = job.id;
            let result = context.jobs.run(agent, job).await.map_err(RunError::Job)?;
            Ok(judge(jid, &self.cmd, agent, &result)?)
        })
    }
}

/// What a job's result says of a `run`: its state failed, or no result
/// came back (a panicking job is a failed job), or it ran.
fn judge(job: Id, cmd: &str, agent: &str, result: &halite_proto::JobResult) -> Result<String, RunError> {
    match result.results.iter().find(|r| r.outcome.is_failed()) {
        Some(_) => Err(RunError::Failed { job, cmd: cmd.to_owned(), agent: agent.to_owned() }),
        None if result.results.is_empty() => {
            Err(RunError::NoResult { job, cmd: cmd.to_owned(), agent: agent.to_owned() })
        }
        None => Ok(format!("job {job}: ran `{cmd}`")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_command_is_split_when_the_tree_loads_and_the_event_goes_in_the_environment() {
        use serde_json::json;
        for (value, error) in [
            (json!("logger -t halite 'cpu hot'"), None),
            (json!({"cmd": "true", "timeout": "5s"}), None),
            (json!("echo 'open"), Some("open quote")),
            (json!(""), Some("empty")),
            (json!({"cmd": "true", "shell": true}), Some("unknown field")),
        ] {
            match (compile(&value, &StateTree::default()).map_err(|e| e.to_string()), error) {
                (Ok(_), None) => {}
                (Err(e), Some(wanted)) => assert!(e.contains(wanted), "{value}: {e}"),
                (Ok(_), Some(wanted)) => panic!("{value}: compiled, wanted `{wanted}`"),
                (Err(e), None) => panic!("{value}: {e}"),
            }
        }
        let run = Run { cmd: "logger 'cpu hot'".into(), timeout: Duration::from_secs(5) };
        let event = Event::new("halite/beacon/web01/cpu-hot", "web01", Value::map().with("state", "$(reboot)"));
        let call = run.call(&event);
        assert_eq!(call.kind, "cmd.run");
        assert_eq!(call.args.get("name"), Some(&Value::from("logger 'cpu hot'")));
        assert_ne!(call.args.get("shell"), Some(&Value::Bool(true)));
        assert_eq!(call.args.get("timeout_ms"), Some(&Value::Int(5000)));
        let env = call.args.get("env").unwrap();
        assert_eq!(env.get("HALITE_EVENT_ID"), Some(&Value::from(event.id.to_string())));
        assert!(!format!("{call:?}").contains("reboot"), "event data stays out of the call");
    }

    #[test]
    fn a_panicked_or_empty_job_is_a_failed_run() {
        use halite_proto::{JobResult, Outcome, StateResult};
        let state = |outcome| StateResult {
            id: "reactor-run".into(),
            kind: "cmd.run".into(),
            outcome,
            diff: None,
            duration_us: 0,
        };
        let panicked = Outcome::Failed { error: "the agent's job runner panicked: boom".into() };
        let cases = [
            (vec![state(Outcome::Changed { changes: vec![] })], Ok("ran `true`")),
            // The agent's words are in the job's record, not in the error
            // (it becomes a `failed` event: no output on the bus).
            (vec![state(panicked)], Err("`true` failed on web01; `halite-master jobs")),
            (vec![], Err("web01 returned no result")),
        ];
        for (results, expected) in cases {
            let judged =
                judge(Id::new(), "true", "web01", &JobResult { job: Id::new(), results }).map_err(|e| e.to_string());
            match (&judged, expected) {
                (Ok(text), Ok(wanted)) | (Err(text), Err(wanted)) => assert!(text.contains(wanted), "{text}"),
                _ => panic!("{judged:?}, wanted {expected:?}"),
            }
        }
    }
}

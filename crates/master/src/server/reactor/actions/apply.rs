//! `apply`: push state files to the agent that raised the event, as a job
//! that carries the event's id as its cause.

use futures_util::future::BoxFuture;
use halite_proto::{Event, Id, Job, JobResult};
use halite_state::{RenderContext, StateTree};

use super::{Action, ActionError, ActionKind, Context};

pub static KIND: ActionKind = ActionKind {
    name: "apply",
    summary: "Apply state files to the agent that raised the event.",
    example: "- name: restore-nginx\n  on: halite/beacon/*/nginx-conf\n  apply: [nginx]\n",
    compile,
};

/// Why an `apply` action does not compile or its job failed; names the
/// state file or the job.
#[derive(Debug, thiserror::Error)]
pub enum ApplyError {
    #[error("`{0}` is not a state file name")]
    NotAName(serde_json::Value),
    #[error("expected a list of state file names, got `{0}`")]
    NotAList(serde_json::Value),
    #[error("the list of state files is empty")]
    Empty,
    #[error("state file `{state}` does not exist in the tree")]
    Missing { state: String },
    #[error("{}", diagnostics.iter().map(ToString::to_string).collect::<Vec<_>>().join("; "))]
    Render { diagnostics: Vec<halite_state::Diagnostic> },
    /// The job did not reach the agent or no result came back (the jobs
    /// module words it).
    #[error(transparent)]
    Job(crate::server::jobs::JobError),
    #[error("job {job}: {failed} of {total} states failed")]
    Failed { job: Id, failed: usize, total: usize },
    /// Fewer results than states: the agent lost some (its job runner
    /// panicked, or an agent older than this master): never "applied".
    #[error("job {job}: the agent returned {got} results for {sent} states")]
    MissingResults { job: Id, sent: usize, got: usize },
}

#[derive(Debug)]
struct Apply {
    states: Vec<String>,
}

/// The action of a reactor that applies `states` (already known to exist),
/// for reactors the tree implies rather than the operator writes.
pub(crate) fn state_files(states: Vec<String>) -> Box<dyn Action> {
    Box::new(Apply { states })
}

fn compile(value: &serde_json::Value, tree: &StateTree) -> Result<Box<dyn Action>, ActionError> {
    let states: Vec<String> = match value {
        serde_json::Value::String(one) => vec![one.clone()],
        serde_json::Value::Array(items) => items
            .iter()
            .map(|i| i.as_str().map(str::to_owned).ok_or_else(|| ApplyError::NotAName(i.clone())))
            .collect::<Result<_, _>>()?,
        other => return Err(ApplyError::NotAList(other.clone()).into()),
    };
    if states.is_empty() {
        return Err(ApplyError::Empty.into());
    }
    if let Some(missing) = states.iter().find(|s| !tree.has_state_file(s)) {
        return Err(ApplyError::Missing { state: missing.clone() }.into());
    }
    Ok(Box::new(Apply { states }))
}

impl Action for Apply {
    fn describe(&self) -> String {
        format!("apply [{}] to the agent that raised the event", self.states.join(", "))
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
            let facts = context.jobs.facts(agent);
            let render = RenderContext { agent, facts: &facts, event: Some(&event.data) };
            let states = context
                .states
                .calls_for(&self.states, &render)
                .map_err(|diagnostics| ApplyError::Render { diagnostics })?;
            let sent = states.len();
            let job = Job { id: Id::new(), cause_event: Some(event.id), test: false, states };
            let jid = job.id;
            let result = context.jobs.run_for_event(agent, job, event).await.map_err(ApplyError::Job)?;
            Ok(judge(jid, sent, &result)?)
        })
    }
}

/// What a job's result says of an `apply`: a failure when any state failed
/// or results are missing (a panicking job is a failed job, never "0 states
/// applied").
fn judge(job: Id, sent: usize, result: &JobResult) -> Result<String, ApplyError> {
    let total = result.results.len();
    let failed = result.results.iter().filter(|r| r.outcome.is_failed()).count();
    if failed > 0 {
        Err(ApplyError::Failed { job, failed, total })
    } else if total < sent {
        Err(ApplyError::MissingResults { job, sent, got: total })
    } else {
        Ok(format!("job {job}: {total} states applied"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use halite_proto::{Outcome, StateResult};

    fn result(outcomes: &[Outcome]) -> JobResult {
        let results = outcomes
            .iter()
            .map(|outcome| StateResult {
                id: "motd".into(),
                kind: "file.managed".into(),
                outcome: outcome.clone(),
                diff: None,
                duration_us: 0,
            })
            .collect();
        JobResult { job: Id::new(), results }
    }

    #[test]
    fn a_job_is_applied_only_when_every_state_came_back_and_none_failed() {
        let failed = Outcome::Failed { error: "the agent's job runner panicked: boom".into() };
        let cases: [(usize, Vec<Outcome>, Result<&str, &str>); 5] = [
            (2, vec![Outcome::Unchanged, Outcome::Changed { changes: vec![] }], Ok("2 states applied")),
            (1, vec![failed.clone()], Err("1 of 1 states failed")),
            (2, vec![Outcome::Unchanged, failed], Err("1 of 2 states failed")),
            // A job whose runner died without a word: an empty result.
            (2, vec![], Err("returned 0 results for 2 states")),
            (2, vec![Outcome::Unchanged], Err("returned 1 results for 2 states")),
        ];
        for (sent, outcomes, expected) in cases {
            let judged = judge(Id::new(), sent, &result(&outcomes)).map_err(|e| e.to_string());
            match (&judged, expected) {
                (Ok(text), Ok(wanted)) | (Err(text), Err(wanted)) => assert!(text.contains(wanted), "{text}"),
                _ => panic!("{outcomes:?}: {judged:?}, wanted {expected:?}"),
            }
        }
    }
}

//! `apply`: push state files to the agent that raised the event, as a job
//! that carries the event's id as its cause.

use futures_util::future::BoxFuture;
use halite_proto::{Event, Id, Job};
use halite_state::{RenderContext, StateTree};

use super::{Action, ActionKind, Context};

pub static KIND: ActionKind = ActionKind {
    name: "apply",
    summary: "Apply state files to the agent that raised the event.",
    example: "- name: restore-nginx\n  on: halite/beacon/*/nginx-conf\n  apply: [nginx]\n",
    compile,
};

#[derive(Debug)]
struct Apply {
    states: Vec<String>,
}

/// The action of a reactor that applies `states` (already known to exist),
/// for reactors the tree implies rather than the operator writes.
pub(crate) fn state_files(states: Vec<String>) -> Box<dyn Action> {
    Box::new(Apply { states })
}

fn compile(value: &serde_json::Value, tree: &StateTree) -> Result<Box<dyn Action>, String> {
    let states: Vec<String> = match value {
        serde_json::Value::String(one) => vec![one.clone()],
        serde_json::Value::Array(items) => items
            .iter()
            .map(|i| i.as_str().map(str::to_owned).ok_or_else(|| format!("`{i}` is not a state file name")))
            .collect::<Result<_, _>>()?,
        other => return Err(format!("expected a list of state file names, got `{other}`")),
    };
    if states.is_empty() {
        return Err("the list of state files is empty".into());
    }
    if let Some(missing) = states.iter().find(|s| !tree.has_state_file(s)) {
        return Err(format!("state file `{missing}` does not exist in the tree"));
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
    ) -> BoxFuture<'a, Result<String, String>> {
        Box::pin(async move {
            let facts = context.jobs.facts(agent);
            let render = RenderContext { agent, facts: &facts, event: Some(&event.data) };
            let states = context
                .states
                .calls_for(&self.states, &render)
                .map_err(|diagnostics| diagnostics.iter().map(ToString::to_string).collect::<Vec<_>>().join("; "))?;
            let job = Job { id: Id::new(), cause_event: Some(event.id), test: false, states };
            let jid = job.id;
            let result = context.jobs.run(agent, job).await?;
            let failed = result.results.iter().filter(|r| r.outcome.is_failed()).count();
            if failed > 0 {
                Err(format!("job {jid}: {failed} of {} states failed", result.results.len()))
            } else {
                Ok(format!("job {jid}: {} states applied", result.results.len()))
            }
        })
    }
}

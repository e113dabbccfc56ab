//! `facts.yaml`: sample agents for `check`, each an agent id and its facts
//! (the shape `halite-master facts '*' --json` prints, so the facts of a
//! running fleet are one command away). `check` renders each sample
//! agent's top.yaml states with them, so a template that fails for an
//! agent (an undefined fact or variable, an unknown filter) is a `check`
//! error naming the agent, the expression and the template line, not a
//! surprise at apply time. The daemon does not read it.

use std::path::Path;

use halite_proto::Value;
use halite_state::diag::Location;
use halite_state::yaml::{self, Spanned};
use halite_state::{Diagnostic, RenderContext};
use indexmap::IndexMap;

use crate::tree::Tree;

pub const FILE: &str = "facts.yaml";

/// Renders every sample agent's states; returns how many agents were
/// rendered and every problem found. No facts.yaml: nothing to render.
pub fn render(tree: &Tree, root: &Path) -> (usize, Vec<Diagnostic>) {
    let path = root.join(FILE);
    let Ok(text) = std::fs::read_to_string(&path) else { return (0, Vec::new()) };
    let samples: IndexMap<Spanned<String>, serde_json::Value> = match yaml::parse(&path, &text) {
        Ok(samples) => samples,
        Err(diagnostic) => return (0, vec![diagnostic]),
    };
    let mut diagnostics = Vec::new();
    let mut rendered = 0;
    for (agent, facts) in &samples {
        let agent_id = agent.value.as_str();
        if !facts.is_object() {
            diagnostics.push(
                Diagnostic::error(
                    &path,
                    yaml::location(agent),
                    format!("the facts of sample agent `{agent_id}` are not a mapping"),
                )
                .help("write e.g. web01: {os: debian, os_version: '12', cpus: 4}"),
            );
            continue;
        }
        let mut facts = Value::from_json(facts);
        if facts.get("id").is_none() {
            facts = facts.with("id", agent_id);
        }
        let names = tree.states.states_for(agent_id, &facts);
        rendered += 1;
        if let Err(problems) = tree.states.calls_for(&names, &RenderContext::new(agent_id, &facts)) {
            diagnostics.extend(problems.into_iter().map(|mut d| {
                let help = d.help.take().unwrap_or_default();
                let at: Location = yaml::location(agent);
                d.help = Some(format!("{help} (sample agent `{agent_id}`, {}:{})", path.display(), at.line));
                d
            }));
        }
    }
    (rendered, diagnostics)
}

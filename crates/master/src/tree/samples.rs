//! The agents `check` renders templates for: every agent the master has
//! seen (the facts each last sent, kept in the store, `halite.db`), and
//! the sample agents of `facts.yaml` in the tree, each an agent id and its
//! facts (the shape `halite-master facts '*' --json` prints), for a tree
//! checked away from its master or for agents yet to come; a sample
//! replaces a known agent of the same id. `check` renders each one's
//! top.yaml states (and, in a Salt tree, every Jinja state file and its
//! pillar), so a template that fails for an agent (an undefined
//! fact or variable, an unknown filter) is a `check` error naming the
//! agent, the expression and the template line, not a surprise at apply
//! time. The daemon does not read facts.yaml.

use std::path::Path;

use halite_proto::Value;
use halite_state::diag::Location;
use halite_state::yaml::{self, Spanned};
use halite_state::{Diagnostic, RenderContext};
use indexmap::IndexMap;

use crate::tree::Tree;

pub const FILE: &str = "facts.yaml";

/// How many agents of each origin were rendered.
#[derive(Debug, Default, Clone, Copy, PartialEq)]
pub struct Rendered {
    /// Agents the master has seen (from its store).
    pub known: usize,
    /// Sample agents of facts.yaml.
    pub samples: usize,
}

/// Renders the states of every `known` agent (id, facts) and of every
/// sample agent in the tree's facts.yaml; returns how many were rendered
/// and every problem found.
pub fn render(tree: &Tree, root: &Path, known: &[(String, serde_json::Value)]) -> (Rendered, Vec<Diagnostic>) {
    let mut diagnostics = Vec::new();
    // agent → (facts, where they come from, whether a sample)
    let mut agents: IndexMap<String, (serde_json::Value, String, bool)> = known
        .iter()
        .filter(|(_, facts)| facts.is_object())
        .map(|(agent, facts)| (agent.clone(), (facts.clone(), "facts from the master's store".to_owned(), false)))
        .collect();
    let path = root.join(FILE);
    if let Ok(text) = std::fs::read_to_string(&path) {
        match yaml::parse::<IndexMap<Spanned<String>, serde_json::Value>>(&path, &text) {
            Err(diagnostic) => diagnostics.push(diagnostic),
            Ok(parsed) => {
                for (agent, facts) in parsed {
                    let at: Location = yaml::location(&agent);
                    if !facts.is_object() {
                        diagnostics.push(
                            Diagnostic::error(
                                &path,
                                at,
                                format!("the facts of sample agent `{}` are not a mapping", agent.value),
                            )
                            .help("write e.g. web01: {os: debian, os_version: '12', cpus: 4}"),
                        );
                        continue;
                    }
                    let origin = format!("sample agent in {}:{}", path.display(), at.line);
                    agents.insert(agent.value, (facts, origin, true));
                }
            }
        }
    }
    let mut rendered = Rendered::default();
    for (agent, (facts, origin, sample)) in &agents {
        let mut facts = Value::from_json(facts);
        if facts.get("id").is_none() {
            facts = facts.with("id", agent.as_str());
        }
        if *sample {
            rendered.samples += 1;
        } else {
            rendered.known += 1;
        }
        // A Salt tree: every state file and pillar file rendered for the
        // agent, not only its top file's (salt/rendered.rs); then its job.
        let names = tree.states.states_for(agent, &facts);
        let rendered = match tree.states.renders_per_agent() {
            true => tree.states.for_agent(agent, &facts).map(|rendered| rendered.errors()),
            false => Ok(Vec::new()),
        };
        let problems = match rendered {
            Err(problems) => problems,
            Ok(mut problems) => {
                if let Err(more) = tree.states.calls_for(&names, &RenderContext::new(agent, &facts)) {
                    // Its top file's states: what did not render is
                    // reported once.
                    let new: Vec<Diagnostic> = more.into_iter().filter(|d| !problems.contains(d)).collect();
                    problems.extend(new);
                }
                problems
            }
        };
        if !problems.is_empty() {
            diagnostics.extend(problems.into_iter().map(|mut d| {
                let help = d.help.take().unwrap_or_default();
                d.help = Some(format!("{help} (agent `{agent}`: {origin})"));
                d
            }));
        }
    }
    (rendered, diagnostics)
}

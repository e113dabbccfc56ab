//! One agent's tree: the Salt state files rendered with its grains and
//! pillar and compiled, beside the plain files compiled at load, with
//! requisites resolved across all of them. The master builds every job
//! from it (`StateTree::calls_for` asks here first), so the agent gets
//! concrete states, as before.
//!
//! Rendered trees are cached per agent with the facts they were rendered
//! for (the pillar follows from the agent and its facts): the
//! drift→restore path renders an agent's tree once per tree load and
//! facts, not once per event. A reload builds a new `StateTree` with an
//! empty cache. The cache holds at most [`CACHE_AGENTS`] agents; when full
//! it is emptied and fills again as agents are served (a render costs a
//! few milliseconds; the bound keeps the memory of a huge fleet's trees
//! from growing without end).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use halite_proto::Value;

use crate::diag::{self, Diagnostic, Location};
use crate::salt::functions::Data;
use crate::salt::{grains, render, secret};
use crate::target::Target;
use crate::tree::StateTree;

/// How many agents' rendered trees the cache holds before it is emptied.
pub const CACHE_AGENTS: usize = 4096;

/// Rendered trees by agent, with the facts each was rendered for.
#[derive(Debug, Default)]
pub struct Cache(Mutex<HashMap<String, (Value, Arc<StateTree>)>>);

impl StateTree {
    /// The tree is rendered per agent: it has Jinja state files or a pillar.
    pub fn renders_per_agent(&self) -> bool {
        !self.templates.is_empty() || self.pillar.is_some()
    }

    /// The grains a template of this tree sees for `agent`.
    pub fn grains_for(agent: &str, facts: &Value) -> serde_json::Value {
        let mut grains = grains::all(facts);
        if let Some(map) = grains.as_object_mut() {
            map.insert("id".to_owned(), serde_json::Value::String(agent.to_owned()));
        }
        grains
    }

    /// `agent`'s tree, rendered and compiled (module doc), from the cache
    /// when the facts are the same. Errors: every template or pillar file
    /// that does not render, every state that does not compile, every
    /// requisite that does not resolve, each naming the agent.
    pub fn for_agent(&self, agent: &str, facts: &Value) -> Result<Arc<StateTree>, Vec<Diagnostic>> {
        {
            let cache = self.rendered.0.lock().unwrap_or_else(|p| p.into_inner());
            if let Some((seen, tree)) = cache.get(agent)
                && seen == facts
            {
                return Ok(tree.clone());
            }
        }
        let tree = Arc::new(self.render_for(agent, facts)?);
        let mut cache = self.rendered.0.lock().unwrap_or_else(|p| p.into_inner());
        if cache.len() >= CACHE_AGENTS && !cache.contains_key(agent) {
            cache.clear();
        }
        cache.insert(agent.to_owned(), (facts.clone(), tree.clone()));
        Ok(tree)
    }

    fn render_for(&self, agent: &str, facts: &Value) -> Result<StateTree, Vec<Diagnostic>> {
        let grains = Self::grains_for(agent, facts);
        let pillar = match &self.pillar {
            Some(pillar) => pillar.render_for(agent, facts, &grains)?,
            None => crate::salt::pillar::Pillar { values: self.vars_for(agent, facts), secrets: Vec::new() },
        };
        secret::remember(agent, &pillar.secrets);
        let data = Arc::new(Data { grains, pillar: pillar.values.clone() });
        let mut tree = StateTree {
            root: self.root.clone(),
            top: self.top.clone(),
            // The rendered tree's vars are the agent's pillar (or vars).
            vars: match Target::parse("*") {
                Ok(all) => vec![(all, pillar.values)],
                Err(_) => Vec::new(),
            },
            ..StateTree::default()
        };
        let mut rendered = Vec::new();
        let mut diagnostics = Vec::new();
        for (name, file) in &self.templates {
            let text = match render::render_sls(&self.root, name, &file.path, &data) {
                Ok(text) => text,
                Err(error) => {
                    let at = Location::new(error.line.map_or(0, |l| l as u64), 1);
                    diagnostics.push(
                        Diagnostic::error(
                            &error.file,
                            at,
                            format!("sls `{name}` does not render for agent `{agent}`: {}", error.message),
                        )
                        .help("check the names it uses: grains, pillar, salt['…'], sls, tpldir, slspath"),
                    );
                    continue;
                }
            };
            let mut problems = Vec::new();
            if let Some(parsed) = tree.parse_state_text(&file.path, name, &text, &mut problems) {
                rendered.push((name.clone(), parsed));
            }
            diagnostics.extend(annotated(problems, name, agent));
        }
        // The plain files are compiled again with the rendered ones: an
        // `extend:` or `*_in` in either may change the other (sls/). Their
        // own problems were reported when the tree loaded.
        let mut all = self.parsed.clone();
        all.extend(rendered);
        let mut problems = Vec::new();
        tree.compile_parsed(all, &mut problems);
        for (name, file) in &self.templates {
            if let Some(state) = tree.files.get(name).and_then(|f| f.states.iter().find(|s| s.watch)) {
                problems.push(
                    Diagnostic::error(
                        &file.path,
                        state.at,
                        format!(
                            "{} `{}`: `watch: true` in a Jinja-rendered state file is not supported by halite",
                            state.call.kind, state.call.id
                        ),
                    )
                    .help("implied beacons are derived when the tree loads: put the state in a plain YAML state file"),
                );
            }
            let own: Vec<Diagnostic> = problems.iter().filter(|d| d.file == file.path).cloned().collect();
            diagnostics.extend(annotated(own, name, agent));
        }
        tree.files.sort_keys();
        tree.resolve_requisites(&mut diagnostics);
        if diagnostics.iter().any(Diagnostic::is_error) {
            diag::sort(&mut diagnostics);
            return Err(diagnostics);
        }
        Ok(tree)
    }
}

/// A rendered file's problems, saying which file and agent they are for.
fn annotated(problems: Vec<Diagnostic>, name: &str, agent: &str) -> Vec<Diagnostic> {
    problems
        .into_iter()
        .map(|mut d| {
            d.message = format!("{} (sls `{name}` rendered for agent `{agent}`)", d.message);
            d
        })
        .collect()
}

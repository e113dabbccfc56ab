//! One agent's tree: the Salt state files rendered with its grains and
//! pillar and compiled, beside the plain files compiled at load, with
//! requisites resolved across all of them. The master builds every job
//! from it (`StateTree::calls_for` asks here first), so the agent gets
//! concrete states, as before. A Jinja `top.sls` is rendered here too,
//! with the agent's grains and pillar, and names the agent's states
//! (`StateTree::states_for` asks here).
//!
//! Rendered trees are cached per agent with the facts they were rendered
//! for (the pillar follows from the agent and its facts): the
//! drift→restore path renders an agent's tree once per tree load and
//! facts, not once per event. A reload builds a new `StateTree` with an
//! empty cache. The cache holds at most [`CACHE_AGENTS`] agents; when full
//! it is emptied and fills again as agents are served (a render costs a
//! few milliseconds; the bound keeps the memory of a huge fleet's trees
//! from growing without end).

use std::sync::Arc;

use halite_proto::Value;

use crate::diag::{Diagnostic, Location};
use crate::salt::functions::Data;
use crate::salt::{grains, render, secret};
use crate::target::Target;
use crate::tree::{Rendered, StateTree};

/// How many agents' rendered trees the cache holds before it is emptied.
pub const CACHE_AGENTS: usize = 4096;

impl StateTree {
    /// The tree is rendered per agent: it has Jinja state files or a pillar.
    pub fn renders_per_agent(&self) -> bool {
        !self.templates.is_empty() || self.pillar.is_some() || self.top_template.is_some()
    }

    /// `agent`'s tree, rendered and compiled (module doc), from the cache
    /// when the facts are the same, with every template that does not
    /// render, state that does not compile and requisite that does not
    /// resolve, each naming the agent. Errors: a pillar file that does not
    /// render for the agent (any state may read the pillar).
    pub fn for_agent(&self, agent: &str, facts: &Value) -> Result<Arc<Rendered>, Vec<Diagnostic>> {
        {
            let cache = self.rendered.lock();
            if let Some((seen, rendered)) = cache.get(agent)
                && seen == facts
            {
                return Ok(rendered.clone());
            }
        }
        let rendered = Arc::new(self.render_for(agent, facts)?);
        let mut cache = self.rendered.lock();
        if cache.len() >= CACHE_AGENTS && !cache.contains_key(agent) {
            cache.clear();
        }
        cache.insert(agent.to_owned(), (facts.clone(), rendered.clone()));
        Ok(rendered)
    }

    /// Renders the Jinja top file `path` for `agent` (its grains and
    /// pillar in `data`) and takes its entries as this tree's top. Errors:
    /// it does not render, or what it renders is not a top file; an agent
    /// whose top file fails gets no states, as in Salt.
    fn render_top(&mut self, path: &std::path::Path, agent: &str, data: &Arc<Data>) -> Result<(), Vec<Diagnostic>> {
        let text = render::render_in(&self.root, "top", path, data, self.texts.clone()).map_err(|error| {
            let at = Location::new(error.line.map_or(0, |l| l as u64), 1);
            let message = format!("the top file does not render for agent `{agent}`: {}", error.message);
            vec![
                Diagnostic::error(&error.file, at, message)
                    .help("check the names it uses: grains, pillar, salt['…'], saltenv"),
            ]
        })?;
        let mut diagnostics = Vec::new();
        let entries = crate::salt::top::parse_targeted(path, &text, &mut diagnostics).unwrap_or_default();
        self.set_top(path, entries, &mut diagnostics);
        let errors: Vec<Diagnostic> = diagnostics
            .into_iter()
            .filter(Diagnostic::is_error)
            .map(|mut d| {
                d.message = format!("{} (the top file rendered for agent `{agent}`)", d.message);
                d
            })
            .collect();
        if errors.is_empty() { Ok(()) } else { Err(errors) }
    }

    fn render_for(&self, agent: &str, facts: &Value) -> Result<Rendered, Vec<Diagnostic>> {
        let grains = grains::for_agent(agent, facts);
        let pillar = match &self.pillar {
            Some(pillar) => pillar.render_for(agent, facts, &grains)?,
            None => crate::salt::pillar::Pillar { values: self.vars_for(agent, facts), secrets: Vec::new() },
        };
        secret::remember(agent, &pillar.secrets);
        let data = Arc::new(Data { grains, pillar: pillar.values.clone() });
        let mut tree = StateTree {
            root: self.root.clone(),
            top: self.top.clone(),
            texts: self.texts.clone(),
            // The rendered tree's vars are the agent's pillar (or vars).
            vars: match Target::parse("*") {
                Ok(all) => vec![(all, pillar.values)],
                Err(_) => Vec::new(),
            },
            ..StateTree::default()
        };
        if let Some(top) = &self.top_template {
            tree.render_top(top, agent, &data)?;
        }
        let mut rendered = Vec::new();
        let mut problems: Vec<(String, Diagnostic)> = Vec::new();
        for (name, file) in &self.templates {
            let text = match render::render_in(&self.root, name, &file.path, &data, self.texts.clone()) {
                Ok(text) => text,
                Err(error) => {
                    let at = Location::new(error.line.map_or(0, |l| l as u64), 1);
                    let message = format!("sls `{name}` does not render for agent `{agent}`: {}", error.message);
                    let help = "check the names it uses: grains, pillar, salt['…'], sls, tpldir, slspath";
                    problems.push((name.clone(), Diagnostic::error(&error.file, at, message).help(help)));
                    continue;
                }
            };
            let mut file_problems = Vec::new();
            if let Some(parsed) = tree.parse_state_text(&file.path, name, &text, &mut file_problems) {
                rendered.push((name.clone(), parsed));
            }
            problems.extend(annotated(file_problems, name, agent));
        }
        // The plain files are compiled again with the rendered ones: an
        // `extend:` or `*_in` in either may change the other (sls/). Their
        // own problems were reported when the tree loaded.
        let mut all = self.parsed.clone();
        all.extend(rendered);
        let mut compiled = Vec::new();
        tree.compile_parsed(all, &mut compiled);
        for (name, file) in &self.templates {
            if let Some(state) = tree.files.get(name).and_then(|f| f.states.iter().find(|s| s.watch)) {
                let message = format!(
                    "{} `{}`: `watch: true` in a Jinja-rendered state file is not supported by halite",
                    state.call.kind, state.call.id
                );
                let help = "implied beacons are derived when the tree loads: put the state in a plain YAML state file";
                compiled.push(Diagnostic::error(&file.path, state.at, message).help(help));
            }
            let own: Vec<Diagnostic> = compiled.iter().filter(|d| d.file == file.path).cloned().collect();
            problems.extend(annotated(own, name, agent));
        }
        tree.files.sort_keys();
        let mut unresolved = Vec::new();
        tree.resolve_requisites(&mut unresolved);
        // A requisite's problem belongs to the file that has the requisite.
        for diagnostic in unresolved {
            let name =
                tree.files.iter().find(|(_, f)| f.path == diagnostic.file).map(|(n, _)| n.clone()).unwrap_or_default();
            problems.push((name, diagnostic));
        }
        problems.sort_by(|a, b| (&a.1.file, a.1.line, &a.1.message).cmp(&(&b.1.file, b.1.line, &b.1.message)));
        Ok(Rendered { tree, problems })
    }
}

/// A rendered file's problems, saying which file and agent they are for.
fn annotated(problems: Vec<Diagnostic>, name: &str, agent: &str) -> Vec<(String, Diagnostic)> {
    problems
        .into_iter()
        .map(|mut d| {
            d.message = format!("{} (sls `{name}` rendered for agent `{agent}`)", d.message);
            (name.to_owned(), d)
        })
        .collect()
}

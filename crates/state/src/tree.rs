//! The state tree on disk: `top.yaml`, `vars.yaml` and the state files
//! beside them.
//!
//! Loading never stops at the first problem: it returns the tree with every
//! state that loaded, and a diagnostic for every one that did not. Then
//! [`StateTree::calls_for`] turns state files into the calls of one agent's
//! job: templates rendered, requisites resolved, in run order.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use halite_proto::{Requisite, RequisiteKind, StateCall, Value};
use indexmap::IndexMap;

use crate::diag::{self, Diagnostic, Location};
use crate::kinds::{self, Authored};
use crate::salt::layout;
use crate::salt::top::load_targeted;
use crate::target::Target;
use crate::template::{self, RenderContext};
use crate::yaml::{self, Fields, Spanned};

/// Files in the tree's root that are not state files (`facts.yaml`: the
/// master's `check` renders templates with its sample facts).
/// `top.sls` is Salt's name for `top.yaml`, read when there is no `top.yaml`.
pub const TREE_FILES: &[&str] = &["top.yaml", "top.sls", "beacons.yaml", "reactors.yaml", "vars.yaml", "facts.yaml"];

/// Salt features halite does not have. Each is a check error naming it,
/// never silently ignored.
const UNSUPPORTED_SALT_KEYS: &[(&str, &str)] = &[
    ("prereq", "halite has no prerequisite planning; order with `require` instead"),
    ("prereq_in", "halite has no prerequisite planning; order with `require` instead"),
    ("require_in", "write `require` on the other state instead"),
    ("watch_in", "write `watch` on the other state instead"),
    ("onchanges_in", "write `onchanges` on the other state instead"),
    ("onchanges_any", "use `onchanges` (it already runs when any of them changed)"),
    ("require_any", "use `require`"),
    ("watch_any", "use `watch`"),
    ("onfail", "halite does not run states because others failed"),
    ("onfail_in", "halite does not run states because others failed"),
    ("onfail_any", "halite does not run states because others failed"),
    ("listen", "use `watch` (halite reacts at once, not at the end of the run)"),
    ("listen_in", "write `watch` on the other state instead"),
    ("use", "repeat the arguments"),
    ("use_in", "repeat the arguments"),
    ("order", "halite orders by requisites, then by declaration"),
    ("failhard", "a failed state stops only the states that require it"),
    ("parallel", "states run one after another"),
    ("retry", "reactors re-apply states when an event says they drifted"),
    ("names", "write one state per name"),
    ("check_cmd", "use cmd.run with `onchanges`"),
];

/// Salt state functions halite does not have, named as such when used
/// (any other unknown kind is reported as unknown, likely a typo), with
/// the way forward.
const SALT_FUNCTIONS: &[(&str, &str)] = &[
    ("file.accumulated", "collect the lines in one file.blockreplace, or render them into the file.managed template"),
    ("file.touch", "use file.managed with `contents: \"\"` or file.append"),
    ("module.run", "run the module's command with cmd.run"),
];

/// The known kinds close to `name` (a typo's likely meaning): within two
/// edits, or the same function in another module.
fn close_kinds(name: &str) -> Vec<&'static str> {
    let function = name.rsplit('.').next().unwrap_or(name);
    kinds::names()
        .into_iter()
        .filter(|known| edit_distance(known, name) <= 2 || known.rsplit('.').next() == Some(function))
        .collect()
}

/// Levenshtein distance, by characters.
fn edit_distance(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut row: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut previous = row[0];
        row[0] = i + 1;
        for (j, cb) in b.iter().enumerate() {
            let next = (row[j + 1] + 1).min(row[j] + 1).min(previous + usize::from(ca != *cb));
            previous = row[j + 1];
            row[j + 1] = next;
        }
    }
    row[b.len()]
}

#[derive(Debug, Default)]
pub struct StateTree {
    pub root: PathBuf,
    /// `top.yaml`, in file order.
    pub top: Vec<TopEntry>,
    /// `vars.yaml`, in file order: template variables for the agents each
    /// target matches.
    pub vars: Vec<(Target, serde_json::Value)>,
    /// State files by name (`nginx` for `nginx.yaml`, `nginx.config` for
    /// `nginx/config.sls`), sorted.
    pub files: IndexMap<String, StateFile>,
    /// Salt state files that are Jinja templates, by name: rendered and
    /// compiled per agent (salt/rendered.rs), not at load.
    pub templates: IndexMap<String, layout::SlsFile>,
    /// `pillar/top.sls` and its files, when the tree has them: then it
    /// replaces vars.yaml (salt/pillar.rs).
    pub pillar: Option<crate::salt::pillar::PillarTree>,
    /// Each agent's rendered tree, for the facts it was rendered with
    /// (salt/rendered.rs).
    pub rendered: RenderCache,
}

/// Rendered trees by agent, with the facts each was rendered for
/// (salt/rendered.rs).
#[derive(Debug, Default)]
pub struct RenderCache(std::sync::Mutex<HashMap<String, (Value, std::sync::Arc<Rendered>)>>);

impl RenderCache {
    pub(crate) fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, (Value, std::sync::Arc<Rendered>)>> {
        self.0.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// One agent's tree, and what did not render or compile in it, by the sls
/// name concerned: a file that fails for an agent stops only the jobs that
/// apply it, and `check` reports them all.
#[derive(Debug)]
pub struct Rendered {
    pub tree: StateTree,
    pub problems: Vec<(String, Diagnostic)>,
}

impl Rendered {
    /// The errors of the named files.
    pub fn problems_of(&self, names: &[String]) -> Vec<Diagnostic> {
        self.problems.iter().filter(|(name, d)| d.is_error() && names.contains(name)).map(|(_, d)| d.clone()).collect()
    }

    /// Every error, for `check`.
    pub fn errors(&self) -> Vec<Diagnostic> {
        self.problems.iter().filter(|(_, d)| d.is_error()).map(|(_, d)| d.clone()).collect()
    }
}

#[derive(Debug, Clone)]
pub struct TopEntry {
    pub target: Target,
    pub states: Vec<String>,
}

#[derive(Debug, Clone)]
pub struct StateFile {
    pub path: PathBuf,
    pub states: Vec<CompiledState>,
}

/// A state checked and resolved at load time: what the agent will apply.
#[derive(Debug, Clone)]
pub struct CompiledState {
    /// Its requisites resolved to the (id, kind) of the states they name,
    /// anywhere in the tree.
    pub call: StateCall,
    pub at: Location,
    /// `watch: true` on the state: keep it enforced.
    pub watch: bool,
    /// The requisites as written, for diagnostics.
    refs: Vec<Ref>,
}

impl CompiledState {
    /// `args.template` is set: the content is rendered per agent.
    pub fn is_template(&self) -> bool {
        self.call.args.get("template").is_some()
    }
}

/// One authored requisite: `require: [nginx]` or Salt's `- pkg: nginx`.
#[derive(Debug, Clone)]
struct Ref {
    on: RequisiteKind,
    /// The kind family (`pkg` in `- pkg: nginx`), when given.
    family: Option<String>,
    name: String,
    at: Location,
}

/// Requisite edges between states, by (file, state) position, with where
/// each is written.
type Edges = HashMap<(usize, usize), Vec<((usize, usize), Location)>>;

type StateDecls = IndexMap<Spanned<String>, Spanned<Option<IndexMap<Spanned<String>, Fields>>>>;

impl StateTree {
    pub fn load(root: &Path) -> (StateTree, Vec<Diagnostic>) {
        let mut tree = StateTree { root: root.to_path_buf(), ..StateTree::default() };
        let mut diagnostics = Vec::new();
        tree.load_state_files(&mut diagnostics);
        // With Jinja state files, requisites are resolved per agent, once
        // the templates are rendered (salt/rendered.rs).
        if tree.templates.is_empty() {
            tree.resolve_requisites(&mut diagnostics);
        }
        tree.load_top(&mut diagnostics);
        tree.pillar = crate::salt::pillar::PillarTree::load(root, &mut diagnostics);
        if tree.pillar.is_none() {
            tree.load_vars(&mut diagnostics);
        } else if root.join("vars.yaml").is_file() {
            diagnostics.push(
                Diagnostic::warning(
                    root.join("vars.yaml"),
                    Location::FILE,
                    "vars.yaml is not read: the tree has a pillar (pillar/top.sls)",
                )
                .help("move its values into pillar files"),
            );
        }
        diag::sort(&mut diagnostics);
        (tree, diagnostics)
    }

    /// The state files top.yaml assigns to the agent, in order, each once.
    pub fn states_for(&self, agent: &str, facts: &Value) -> Vec<String> {
        let mut names: Vec<String> = Vec::new();
        for entry in self.top.iter().filter(|e| e.target.matches(agent, facts)) {
            for name in &entry.states {
                if !names.contains(name) {
                    names.push(name.clone());
                }
            }
        }
        names
    }

    /// The template variables for an agent: the maps of every vars.yaml
    /// entry that targets it, merged in file order (later wins, maps merge
    /// key by key).
    pub fn vars_for(&self, agent: &str, facts: &Value) -> serde_json::Value {
        let mut vars = serde_json::Value::Object(serde_json::Map::new());
        for (target, entry) in &self.vars {
            if target.matches(agent, facts) {
                merge(&mut vars, entry);
            }
        }
        vars
    }

    /// The calls of the named state files for one agent, ready to send:
    /// templates rendered with the agent's context, in run order (every
    /// state after its requisites, declaration order otherwise). Unknown
    /// names were reported at load time and are skipped here. Errors: a
    /// template that fails to render, a requisite on a state of a file not
    /// in `names`.
    pub fn calls_for(&self, names: &[String], context: &RenderContext<'_>) -> Result<Vec<StateCall>, Vec<Diagnostic>> {
        if self.renders_per_agent() {
            let rendered = self.for_agent(context.agent, context.facts)?;
            let problems = rendered.problems_of(names);
            if !problems.is_empty() {
                return Err(problems);
            }
            return rendered.tree.calls_for(names, context);
        }
        let mut seen = Vec::new();
        let states: Vec<(&StateFile, &CompiledState)> = names
            .iter()
            .filter(|name| {
                let first = !seen.contains(name);
                seen.push(*name);
                first
            })
            .filter_map(|name| self.files.get(name))
            .flat_map(|file| file.states.iter().map(move |s| (file, s)))
            .collect();
        let mut vars = None;
        let mut diagnostics = Vec::new();
        let mut calls = Vec::with_capacity(states.len());
        for (file, state) in &states {
            for requisite in &state.call.requisites {
                if !states.iter().any(|(_, s)| s.call.id == requisite.id && s.call.kind == requisite.kind) {
                    let owner = self.file_of(&requisite.id, &requisite.kind).unwrap_or("?");
                    diagnostics.push(
                        Diagnostic::error(
                            &file.path,
                            state.at,
                            format!(
                                "{} `{}` has {} `{}` ({} `{}` in state file `{owner}`), which is not applied with it",
                                state.call.kind,
                                state.call.id,
                                requisite.on.keyword(),
                                requisite.id,
                                requisite.kind,
                                requisite.id
                            ),
                        )
                        .help(format!("apply `{owner}` together with it")),
                    );
                }
            }
            let mut call = state.call.clone();
            if state.is_template() {
                let vars = vars.get_or_insert_with(|| self.vars_for(context.agent, context.facts));
                match render_call(&mut call, context, vars) {
                    Ok(()) => {}
                    Err(error) => diagnostics.push(
                        Diagnostic::error(
                            &file.path,
                            state.at,
                            format!(
                                "{} `{}`: the template does not render for agent `{}`{}: {}",
                                call.kind,
                                call.id,
                                context.agent,
                                error.line.map(|l| format!(" (template line {l})")).unwrap_or_default(),
                                error.message
                            ),
                        )
                        .help("check the names it uses: id, facts, vars, event"),
                    ),
                }
            }
            calls.push(call);
        }
        if !diagnostics.is_empty() {
            return Err(diagnostics);
        }
        let (order, stuck) = crate::apply::order(&calls);
        let mut slots: Vec<Option<StateCall>> = calls.into_iter().map(Some).collect();
        Ok(order.into_iter().chain(stuck).filter_map(|i| slots[i].take()).collect())
    }

    fn file_of(&self, id: &str, kind: &str) -> Option<&str> {
        self.files
            .iter()
            .find(|(_, f)| f.states.iter().any(|s| s.call.id == id && s.call.kind == kind))
            .map(|(name, _)| name.as_str())
    }

    fn load_state_files(&mut self, diagnostics: &mut Vec<Diagnostic>) {
        if let Err(e) = std::fs::read_dir(&self.root) {
            diagnostics.push(
                Diagnostic::error(&self.root, Location::FILE, format!("cannot read the state tree: {e}"))
                    .help("point --states (or `states:` in master.yaml) at the directory that holds top.yaml"),
            );
            return;
        }
        // Salt's layout: `nginx/init.sls` is `nginx`, `nginx/config.sls`
        // is `nginx.config` (salt/layout.rs).
        let found = layout::discover(&self.root, TREE_FILES);
        for shadowed in &found.shadowed {
            let Some(kept) = found.files.iter().find(|f| f.name == shadowed.name) else { continue };
            let same_dir = kept.path.parent() == shadowed.path.parent();
            let diagnostic = if same_dir {
                Diagnostic::error(
                    &shadowed.path,
                    Location::FILE,
                    format!("a second state file named `{}`", shadowed.name),
                )
                .help("keep one of NAME.yaml and NAME.sls")
            } else {
                Diagnostic::warning(
                    &shadowed.path,
                    Location::FILE,
                    format!("sls `{}` is {} (as in Salt); this file is not read", shadowed.name, kept.path.display()),
                )
                .help("remove or rename one of them")
            };
            diagnostics.push(diagnostic);
        }
        for file in found.files {
            let Some(text) = read(&file.path, diagnostics) else { continue };
            if crate::salt::render::needs_rendering(&text) {
                // Rendered per agent; its syntax is checked now.
                if let Err(error) = crate::salt::render::syntax(&text) {
                    let at = Location::new(error.line.map_or(0, |l| l as u64), 1);
                    diagnostics.push(
                        Diagnostic::error(&file.path, at, format!("sls `{}`: {}", file.name, error.message))
                            .help("check the Jinja syntax at that line"),
                    );
                    continue;
                }
                self.templates.insert(file.name.clone(), file);
                continue;
            }
            if let Some(state_file) = self.load_state_text(&file.path, &text, diagnostics) {
                self.files.insert(file.name, state_file);
            }
        }
    }

    /// Compiles one state file's YAML text (as read, or as rendered for
    /// an agent).
    pub(crate) fn load_state_text(
        &self,
        path: &Path,
        text: &str,
        diagnostics: &mut Vec<Diagnostic>,
    ) -> Option<StateFile> {
        let decls: StateDecls = match yaml::parse(path, text) {
            Ok(decls) => decls,
            Err(diagnostic) => {
                let salt = salt_in_state_file(path, text).or_else(|| salt_short_form(path, text, &diagnostic));
                diagnostics.push(salt.unwrap_or(diagnostic));
                return None;
            }
        };
        let mut states = Vec::new();
        for (id, decl) in &decls {
            let id_at = yaml::location(id);
            if ["include", "extend"].contains(&id.value.as_str()) {
                diagnostics.push(
                    Diagnostic::error(path, id_at, format!("Salt's `{}` is not supported by halite", id.value))
                        .help("list every state file in top.yaml instead"),
                );
                continue;
            }
            let Some(kinds_map) = &decl.value else {
                diagnostics.push(
                    Diagnostic::error(path, id_at, format!("state `{}` declares no state kind", id.value)).help(
                        format!(
                            "add a kind under it, e.g. `file.managed:`; known kinds: {}",
                            kinds::names().join(", ")
                        ),
                    ),
                );
                continue;
            };
            for (kind_name, fields) in kinds_map {
                let kind_at = yaml::location(kind_name);
                let Some(kind) = kinds::find(&kind_name.value) else {
                    let salt = SALT_FUNCTIONS.iter().find(|(name, _)| *name == kind_name.value);
                    let message = if salt.is_some() {
                        format!(
                            "unknown state kind `{}` in state `{}`: Salt's `{}` is not supported by halite",
                            kind_name.value, id.value, kind_name.value
                        )
                    } else {
                        format!("unknown state kind `{}` in state `{}`", kind_name.value, id.value)
                    };
                    let close = close_kinds(&kind_name.value);
                    let help = match (salt, close.as_slice()) {
                        (Some((_, forward)), _) => format!("{forward}; known kinds: {}", kinds::names().join(", ")),
                        (None, []) => format!("known kinds: {}", kinds::names().join(", ")),
                        (None, close) => format!(
                            "did you mean {}?",
                            close.iter().map(|k| format!("`{k}`")).collect::<Vec<_>>().join(" or ")
                        ),
                    };
                    diagnostics.push(Diagnostic::error(path, kind_at, message).help(help));
                    continue;
                };
                let mut problems = Vec::new();
                let common = split_common(&id.value, kind.name, fields, &mut problems);
                let authored = Authored { id: &id.value, fields: &common.rest, tree_root: &self.root };
                match (kind.resolve)(&authored) {
                    Ok(args) if problems.is_empty() => {
                        if let Some(first) =
                            states.iter().find(|s: &&CompiledState| s.call.id == id.value && s.call.kind == kind.name)
                        {
                            diagnostics.push(
                                Diagnostic::error(
                                    path,
                                    kind_at,
                                    format!("{} `{}` is declared twice in this file", kind.name, id.value),
                                )
                                .help(format!("the first is at line {}; rename one", first.at.line)),
                            );
                            continue;
                        }
                        states.push(CompiledState {
                            call: StateCall::new(id.value.clone(), kind.name, args),
                            at: kind_at,
                            watch: common.watch,
                            refs: common.refs,
                        });
                    }
                    Ok(_) => {}
                    Err(more) => problems.extend(more),
                }
                diagnostics.extend(problems.into_iter().map(|problem| {
                    let file = problem.file.as_deref().unwrap_or(path);
                    let diagnostic = Diagnostic::error(file, problem.at.unwrap_or(kind_at), problem.message);
                    match problem.help {
                        Some(help) => diagnostic.help(help),
                        None => diagnostic,
                    }
                }));
            }
        }
        Some(StateFile { path: path.to_path_buf(), states })
    }

    /// Resolves every state's requisites to the states they name (across
    /// the tree), then reports dangling references, duplicates across files
    /// and cycles, each at the referencing state.
    pub(crate) fn resolve_requisites(&mut self, diagnostics: &mut Vec<Diagnostic>) {
        // Every state by position: (file index, state index).
        let all: Vec<(usize, usize)> =
            self.files.values().enumerate().flat_map(|(f, file)| (0..file.states.len()).map(move |s| (f, s))).collect();
        let mut first_seen: HashMap<(String, String), (usize, usize)> = HashMap::new();
        for &at in &all {
            let s = state(&self.files, at);
            let key = (s.call.id.clone(), s.call.kind.clone());
            if let Some(&first) = first_seen.get(&key)
                && first.0 != at.0
            {
                diagnostics.push(
                    Diagnostic::error(
                        &self.files[at.0].path,
                        s.at,
                        format!(
                            "{} `{}` is also declared in {}",
                            s.call.kind,
                            s.call.id,
                            self.files[first.0].path.display()
                        ),
                    )
                    .help("state ids must be unique per kind across the tree; rename one"),
                );
            } else {
                first_seen.entry(key).or_insert(at);
            }
        }

        let mut edges: Edges = HashMap::new();
        let mut resolved: Vec<((usize, usize), Vec<Requisite>)> = Vec::new();
        for &at in &all {
            let s = state(&self.files, at);
            let mut requisites = Vec::new();
            for r in &s.refs {
                let targets: Vec<(usize, usize)> = all
                    .iter()
                    .copied()
                    .filter(|&other| other != at && ref_matches(r, &state(&self.files, other).call))
                    .collect();
                if targets.is_empty() {
                    diagnostics.push(
                        Diagnostic::error(
                            &self.files[at.0].path,
                            r.at,
                            format!(
                                "{} `{}` has {} `{}`, which no state in the tree declares",
                                s.call.kind,
                                s.call.id,
                                r.on.keyword(),
                                describe_ref(r)
                            ),
                        )
                        .help("name a state by its id (`require: [nginx-conf]`) or Salt's way (`- file: nginx-conf`)"),
                    );
                }
                for target in targets {
                    let t = &state(&self.files, target).call;
                    let requisite = Requisite { on: r.on, id: t.id.clone(), kind: t.kind.clone() };
                    if !requisites.contains(&requisite) {
                        requisites.push(requisite);
                        edges.entry(at).or_default().push((target, r.at));
                    }
                }
            }
            resolved.push((at, requisites));
        }
        for ((f, s), requisites) in resolved {
            self.files[f].states[s].call.requisites = requisites;
        }

        // Cycles: depth-first, reporting each back edge once, at the
        // requisite that closes the cycle.
        let mut colour: HashMap<(usize, usize), u8> = HashMap::new();
        for &start in &all {
            let mut path: Vec<(usize, usize)> = Vec::new();
            self.visit(start, &edges, &mut colour, &mut path, diagnostics);
        }
    }

    fn visit(
        &self,
        node: (usize, usize),
        edges: &Edges,
        colour: &mut HashMap<(usize, usize), u8>,
        path: &mut Vec<(usize, usize)>,
        diagnostics: &mut Vec<Diagnostic>,
    ) {
        match colour.get(&node) {
            Some(2) => return,
            Some(1) => return,
            _ => {}
        }
        colour.insert(node, 1);
        path.push(node);
        for &(next, at) in edges.get(&node).map(Vec::as_slice).unwrap_or_default() {
            if colour.get(&next) == Some(&1) {
                let name = |n: (usize, usize)| {
                    let c = &self.files[n.0].states[n.1].call;
                    format!("{} `{}`", c.kind, c.id)
                };
                let start = path.iter().position(|&n| n == next).unwrap_or(0);
                let mut cycle: Vec<String> = path[start..].iter().map(|&n| name(n)).collect();
                cycle.push(name(next));
                diagnostics.push(
                    Diagnostic::error(
                        &self.files[node.0].path,
                        at,
                        format!("requisite cycle between {} and {}: {}", name(node), name(next), cycle.join(" -> ")),
                    )
                    .help("remove one of the requisites in the cycle"),
                );
            } else {
                self.visit(next, edges, colour, path, diagnostics);
            }
        }
        path.pop();
        colour.insert(node, 2);
    }

    fn load_top(&mut self, diagnostics: &mut Vec<Diagnostic>) {
        let mut path = self.root.join("top.yaml");
        if !path.exists() {
            path = self.root.join("top.sls");
        }
        let Some(entries) = load_targeted(&path, diagnostics) else { return };
        for (target, target_text, states) in entries {
            let names: Vec<String> = match &states.value {
                serde_json::Value::String(one) => vec![one.clone()],
                serde_json::Value::Array(items) if items.iter().all(|i| i.is_string()) => {
                    items.iter().filter_map(|i| i.as_str().map(str::to_owned)).collect()
                }
                _ => {
                    diagnostics.push(
                        Diagnostic::error(
                            &path,
                            yaml::location(&states),
                            format!("target `{}`: expected a list of state file names", target_text.value),
                        )
                        .help("write e.g. 'web*': [common, nginx]"),
                    );
                    continue;
                }
            };
            for name in &names {
                if !self.files.contains_key(name) && !self.failed_file_exists(name) {
                    diagnostics.push(
                        Diagnostic::error(
                            &path,
                            yaml::location(&states),
                            format!("target `{}` names state file `{name}`, which does not exist", target_text.value),
                        )
                        .help(format!("create {} or fix the name", self.root.join(format!("{name}.yaml")).display())),
                    );
                }
            }
            self.top.push(TopEntry { target, states: names });
        }
    }

    fn load_vars(&mut self, diagnostics: &mut Vec<Diagnostic>) {
        let path = self.root.join("vars.yaml");
        let Some(entries) = load_targeted(&path, diagnostics) else { return };
        for (target, target_text, vars) in entries {
            if !vars.value.is_object() {
                diagnostics.push(
                    Diagnostic::error(
                        &path,
                        yaml::location(&vars),
                        format!("target `{}`: expected a mapping of variables", target_text.value),
                    )
                    .help("write e.g. 'web*': {port: 8080}"),
                );
                continue;
            }
            if target_text.value.contains("G@")
                && let Some(name) = secret_name(&vars.value)
            {
                diagnostics.push(
                    Diagnostic::warning(
                        &path,
                        yaml::location(&target_text),
                        format!(
                            "target `{}` gives `{name}` by a fact; an agent's facts are what it claimed when its key was accepted",
                            target_text.value
                        ),
                    )
                    .help("give secrets by agent id (`db*`, L@db01,db02), which its key proves; see README, \"Security model\""),
                );
            }
            self.vars.push((target, vars.value));
        }
    }

    /// True when a state file exists but failed to load (already reported).
    pub fn failed_file_exists(&self, name: &str) -> bool {
        layout::resolve_sls(&self.root, name).is_ok()
    }

    /// True when `name` is a state file of the tree, loaded or not.
    pub fn has_state_file(&self, name: &str) -> bool {
        self.files.contains_key(name) || self.failed_file_exists(name)
    }
}

/// The first key in `vars` (at any depth) whose name says it holds a
/// secret, for the warning on fact-targeted secrets.
fn secret_name(vars: &serde_json::Value) -> Option<String> {
    const SECRET_WORDS: &[&str] = &["pass", "secret", "token", "key", "cred", "private"];
    match vars {
        serde_json::Value::Object(map) => map.iter().find_map(|(name, value)| {
            let lower = name.to_lowercase();
            if SECRET_WORDS.iter().any(|word| lower.contains(word)) { Some(name.clone()) } else { secret_name(value) }
        }),
        serde_json::Value::Array(items) => items.iter().find_map(secret_name),
        _ => None,
    }
}

/// Maps merge key by key; anything else is replaced.
fn merge(into: &mut serde_json::Value, from: &serde_json::Value) {
    match (into, from) {
        (serde_json::Value::Object(into), serde_json::Value::Object(from)) => {
            for (key, value) in from {
                match into.get_mut(key) {
                    Some(existing) => merge(existing, value),
                    None => {
                        into.insert(key.clone(), value.clone());
                    }
                }
            }
        }
        (into, from) => *into = from.clone(),
    }
}

fn render_call(
    call: &mut StateCall,
    context: &RenderContext<'_>,
    vars: &serde_json::Value,
) -> Result<(), template::TemplateError> {
    let Value::Map(args) = &mut call.args else { return Ok(()) };
    args.remove("template");
    if let Some(contents) = kinds::file_like(&call.kind).and_then(|file| (file.contents_mut)(&mut call.args)) {
        let text = String::from_utf8_lossy(contents).into_owned();
        *contents = template::render(&text, context, vars)?.into_bytes();
    }
    Ok(())
}

/// What a state file declares beside its kind's own arguments.
struct Common {
    refs: Vec<Ref>,
    watch: bool,
    rest: Fields,
}

/// Takes requisites, `watch: true` and unsupported Salt keys out of a
/// state's fields, leaving the kind's own arguments.
fn split_common(id: &str, kind: &str, fields: &Fields, problems: &mut Vec<kinds::Problem>) -> Common {
    let mut common = Common { refs: Vec::new(), watch: false, rest: Fields::default() };
    for (key, value) in &fields.entries {
        let key_at = yaml::location(key);
        let on = match key.value.as_str() {
            "require" => RequisiteKind::Require,
            "onchanges" => RequisiteKind::Onchanges,
            "watch" if value.value.is_boolean() => {
                common.watch = value.value == serde_json::Value::Bool(true);
                if common.watch && kinds::file_like(kind).is_none() {
                    problems.push(
                        kinds::Problem::new(
                            Some(key_at),
                            format!(
                                "{kind} `{id}`: `watch: true` (keep enforced) is only for a kind that keeps a file's content (file.managed)"
                            ),
                        )
                        .help("to react to another state, list it: `watch: [other-id]`"),
                    );
                }
                continue;
            }
            "watch" => RequisiteKind::Watch,
            other => {
                if let Some((_, help)) = UNSUPPORTED_SALT_KEYS.iter().find(|(k, _)| *k == other) {
                    problems.push(
                        kinds::Problem::new(
                            Some(key_at),
                            format!("{kind} `{id}`: Salt's `{other}` is not supported by halite"),
                        )
                        .help(*help),
                    );
                } else {
                    if kinds::file_like(kind).is_none_or(|file| file.contents_key != other) {
                        jinja_in_value(id, kind, key, &value.value, problems);
                    }
                    common.rest.entries.push((key.clone(), value.clone()));
                }
                continue;
            }
        };
        let items = match &value.value {
            serde_json::Value::Array(items) => items.clone(),
            one => vec![one.clone()],
        };
        for item in items {
            let parsed = match item {
                serde_json::Value::String(name) => Some((None, name)),
                serde_json::Value::Object(map) if map.len() == 1 => {
                    map.into_iter().next().and_then(|(family, name)| Some((Some(family), name.as_str()?.to_owned())))
                }
                _ => None,
            };
            match parsed {
                Some((Some(family), name)) if family == "sls" => problems.push(
                    kinds::Problem::new(Some(key_at), format!("{kind} `{id}`: `{}: - sls: {name}` (a requisite on a whole file) is not supported by halite", on.keyword()))
                        .help("name the states of that file"),
                ),
                Some((family, name)) => common.refs.push(Ref { on, family, name, at: key_at }),
                None => problems.push(
                    kinds::Problem::new(Some(key_at), format!("{kind} `{id}`: `{}` lists a state as an id or `kind: id`", on.keyword()))
                        .help(format!("write e.g. `{}: [nginx-conf]` or `- {}:\\n  - file: nginx-conf`", on.keyword(), on.keyword())),
                ),
            }
        }
    }
    common
}

fn jinja_in_value(
    id: &str,
    kind: &str,
    key: &Spanned<String>,
    value: &serde_json::Value,
    problems: &mut Vec<kinds::Problem>,
) {
    let has_jinja = |s: &str| s.contains("{{") || s.contains("{%");
    let found = match value {
        serde_json::Value::String(s) => has_jinja(s),
        other => has_jinja(&other.to_string()),
    };
    if found {
        problems.push(
            kinds::Problem::new(Some(yaml::location(key)), format!("{kind} `{id}`: Jinja in a state file is not supported by halite (in `{}`)", key.value))
                .help("state files are plain YAML; templates are for file content (file.managed with `template: jinja`), with facts and vars.yaml"),
        );
    }
}

/// A state file that does not parse because it uses Salt features halite
/// does not have gets an error naming the feature.
fn salt_in_state_file(path: &Path, text: &str) -> Option<Diagnostic> {
    jinja_in_state_file(path, text).or_else(|| {
        let (index, line) =
            text.lines().enumerate().find(|(_, line)| line.starts_with("include:") || line.starts_with("extend:"))?;
        let key = line.trim_end_matches(|c: char| c != ':').trim_end_matches(':');
        Some(
            Diagnostic::error(
                path,
                Location::new(index as u64 + 1, 1),
                format!("Salt's `{key}` is not supported by halite"),
            )
            .help("list every state file in top.yaml instead"),
        )
    })
}

/// Salt's `pkg:\n  - installed` (the function as the first list item) at
/// the line the parser stopped: say how to write it.
fn salt_short_form(path: &Path, text: &str, error: &Diagnostic) -> Option<Diagnostic> {
    let lines: Vec<&str> = text.lines().collect();
    let at = usize::try_from(error.line).ok()?.checked_sub(1)?;
    let function = lines.get(at)?.trim().strip_prefix("- ")?.trim();
    if function.is_empty() || !function.chars().all(|c| c.is_ascii_alphanumeric() || c == '_') {
        return None;
    }
    let family = lines[..at].iter().rev().find(|l| !l.trim().is_empty())?.trim().strip_suffix(':')?;
    if family.contains('.') || family.contains(' ') {
        return None;
    }
    Some(
        Diagnostic::error(
            path,
            Location::new(error.line, 1),
            format!("Salt's short form `{family}: [{function}]` is not supported by halite"),
        )
        .help(format!("write the kind in full, `{family}.{function}:`, with the arguments under it")),
    )
}

/// A state file that does not parse because it is a Jinja template (as
/// many Salt files are) gets an error saying so.
fn jinja_in_state_file(path: &Path, text: &str) -> Option<Diagnostic> {
    let (index, _) = text.lines().enumerate().find(|(_, line)| {
        let line = line.trim_start();
        line.starts_with("{%") || line.starts_with("{{") || line.starts_with("{#") || line.contains(": {{")
    })?;
    Some(
        Diagnostic::error(path, Location::new(index as u64 + 1, 1), "Jinja in a state file is not supported by halite")
            .help("state files are plain YAML; templates are for file content (file.managed with `template: jinja`), with facts and vars.yaml"),
    )
}

fn ref_matches(r: &Ref, call: &StateCall) -> bool {
    let family_ok = r.family.as_deref().is_none_or(|f| call.kind.split('.').next() == Some(f));
    let named = call.id == r.name
        || (r.family.is_some()
            && ["name", "path"].iter().any(|k| call.args.get(k).and_then(Value::as_str) == Some(r.name.as_str())));
    family_ok && named
}

fn describe_ref(r: &Ref) -> String {
    match &r.family {
        Some(family) => format!("{family}: {}", r.name),
        None => r.name.clone(),
    }
}

fn state(files: &IndexMap<String, StateFile>, (f, s): (usize, usize)) -> &CompiledState {
    &files[f].states[s]
}

fn read(path: &Path, diagnostics: &mut Vec<Diagnostic>) -> Option<String> {
    match std::fs::read_to_string(path) {
        Ok(text) => Some(text),
        Err(e) => {
            diagnostics.push(
                Diagnostic::error(path, Location::FILE, format!("cannot read: {e}"))
                    .help("check the file's permissions and encoding (UTF-8)"),
            );
            None
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tree(files: &[(&str, &str)]) -> (tempfile::TempDir, StateTree, Vec<Diagnostic>) {
        let dir = tempfile::tempdir().unwrap();
        for (name, text) in files {
            let path = dir.path().join(name);
            std::fs::create_dir_all(path.parent().unwrap()).unwrap();
            std::fs::write(path, text).unwrap();
        }
        let (tree, diagnostics) = StateTree::load(dir.path());
        (dir, tree, diagnostics)
    }

    #[test]
    fn loads_top_and_states() {
        let (_dir, tree, diagnostics) = tree(&[
            ("top.yaml", "'*': [common]\n'web*': [web]\n"),
            ("common.yaml", "motd:\n  file.managed:\n    path: /etc/motd\n    contents: hi\n"),
            ("web.sls", "/etc/nginx.conf:\n  file.managed:\n    - source: salt://files/nginx.conf\n"),
            ("files/nginx.conf", "server {}\n"),
        ]);
        assert!(diagnostics.is_empty(), "{diagnostics:#?}");
        assert_eq!(tree.states_for("web01", &Value::Null), ["common", "web"]);
        assert_eq!(tree.states_for("db01", &Value::Null), ["common"]);
        let calls = tree
            .calls_for(&tree.states_for("web01", &Value::Null), &RenderContext::new("web01", &Value::Null))
            .unwrap();
        assert_eq!(calls.len(), 2);
        assert_eq!(calls[1].args.get("path").and_then(|p| p.as_str()), Some("/etc/nginx.conf"));
    }

    #[test]
    fn salt_base_wrapper_is_accepted() {
        let (_dir, tree, diagnostics) = tree(&[("top.yaml", "base:\n  '*':\n    - common\n"), ("common.yaml", "{}\n")]);
        assert!(diagnostics.is_empty(), "{diagnostics:#?}");
        assert_eq!(tree.states_for("x", &Value::Null), ["common"]);
    }

    #[test]
    fn reports_every_problem_not_the_first() {
        let (_dir, _tree, diagnostics) = tree(&[
            ("top.yaml", "'web[': [a]\n'*': [missing]\n"),
            (
                "a.yaml",
                "s1:\n  file.manged:\n    path: /x\ns2:\n  file.managed:\n    path: /y\n    source: files/nope\n",
            ),
            ("b.yaml", "s: [\n"),
        ]);
        let messages: Vec<String> = diagnostics.iter().map(|d| d.message.clone()).collect();
        assert_eq!(diagnostics.len(), 5, "{messages:#?}");
        assert!(diagnostics.iter().any(|d| d.file.ends_with("b.yaml") && d.line == 1));
        assert!(messages.iter().any(|m| m.contains("unknown state kind `file.manged`")));
        assert!(messages.iter().any(|m| m.contains("does not exist") && m.contains("nope")));
        assert!(messages.iter().any(|m| m.contains("bad glob")));
        assert!(messages.iter().any(|m| m.contains("`missing`")));
    }

    fn ids(calls: &[StateCall]) -> Vec<String> {
        calls.iter().map(|c| format!("{} {}", c.kind, c.id)).collect()
    }

    #[test]
    fn requisites_resolve_across_files_in_both_forms_and_order_the_job() {
        let (_dir, tree, diagnostics) = tree(&[
            (
                "a.yaml",
                "restart:\n  cmd.run:\n    name: 'true'\n    watch: [conf]\nnginx:\n  service.running:\n    require:\n      - pkg: nginx\n    watch:\n      - file: /etc/nginx.conf\n",
            ),
            (
                "b.sls",
                "conf:\n  file.managed:\n    - name: /etc/nginx.conf\n    - contents: x\n    - require:\n      - pkg: nginx\nnginx:\n  pkg.installed: []\n",
            ),
        ]);
        assert!(diagnostics.is_empty(), "{diagnostics:#?}");
        let names = vec!["a".to_owned(), "b".to_owned()];
        let calls = tree.calls_for(&names, &RenderContext::new("x", &Value::Null)).unwrap();
        // `require: [nginx]` (no kind) names every state with that id.
        assert_eq!(
            ids(&calls),
            ["pkg.installed nginx", "file.managed conf", "cmd.run restart", "service.running nginx"]
        );
        let service = &calls[3];
        assert_eq!(service.requisites.len(), 2);
        assert_eq!((service.requisites[1].on, service.requisites[1].id.as_str()), (RequisiteKind::Watch, "conf"));
        // Applied without b, a's requisites are missing: an error naming the file.
        let errors = tree.calls_for(&["a".into()], &RenderContext::new("x", &Value::Null)).unwrap_err();
        assert!(errors[0].message.contains("state file `b`"), "{errors:#?}");
    }

    #[test]
    fn cycles_and_dangling_requisites_name_both_ends() {
        let (_dir, _tree, diagnostics) = tree(&[(
            "a.yaml",
            "one:\n  cmd.run:\n    name: 'true'\n    require: [two]\ntwo:\n  cmd.run:\n    name: 'true'\n    watch: [one]\nthree:\n  cmd.run:\n    name: 'true'\n    onchanges:\n      - file: nowhere\n",
        )]);
        let messages: Vec<String> = diagnostics.iter().map(ToString::to_string).collect();
        assert_eq!(diagnostics.len(), 2, "{messages:#?}");
        assert!(
            messages[0].contains("a.yaml:8:5") && messages[0].contains("cycle between cmd.run `two` and cmd.run `one`"),
            "{messages:#?}"
        );
        assert!(
            messages[1].contains("a.yaml:12:5")
                && messages[1].contains("cmd.run `three` has onchanges `file: nowhere`"),
            "{messages:#?}"
        );
    }

    #[test]
    fn unsupported_salt_features_are_named() {
        let (_dir, tree, diagnostics) = tree(&[
            (
                "a.sls",
                "x:\n  cmd.run:\n    - name: 'true'\n    - require_in:\n      - cmd: y\n    - order: 1\ny:\n  file.touch:\n    - name: z\nz:\n  file.accumulated:\n    - name: /srv\n",
            ),
            ("j.sls", "{% for u in users %}\n{{ u }}:\n  user.present: []\n{% endfor %}\n"),
            ("i.sls", "include:\n  - a\n"),
            ("s.sls", "nginx:\n  pkg:\n    - installed\n"),
        ]);
        let messages: Vec<String> = diagnostics.iter().map(|d| d.message.clone()).collect();
        for expected in ["`require_in`", "`order`", "`file.touch`", "`file.accumulated`", "`include`"] {
            assert!(messages.iter().any(|m| m.contains(expected)), "{expected}: {messages:#?}");
        }
        // Jinja in a state file: rendered per agent (salt/rendered.rs).
        assert!(tree.templates.contains_key("j"), "{messages:#?}");
    }

    #[test]
    fn unknown_kinds_suggest_the_close_ones() {
        let (_dir, _tree, diagnostics) = tree(&[(
            "a.yaml",
            "a:\n  file.manged: {}\nb:\n  pkg.install: {}\nc:\n  frob.nicate: {}\nd:\n  module.run: {}\n",
        )]);
        let helps: Vec<&str> = diagnostics.iter().map(|d| d.help.as_deref().unwrap_or_default()).collect();
        assert_eq!(helps.len(), 4, "{diagnostics:#?}");
        assert!(helps[0].starts_with("did you mean `file.managed`?"), "{helps:#?}");
        assert!(helps[1].starts_with("did you mean `pkg.installed`?"), "{helps:#?}");
        assert!(helps[2].starts_with("known kinds: archive.extracted, cmd.run,"), "{helps:#?}");
        assert!(diagnostics[3].message.contains("Salt's `module.run` is not supported"), "{diagnostics:#?}");
        assert!(helps[3].starts_with("run the module's command with cmd.run"), "{helps:#?}");
        assert_eq!(edit_distance("kitten", "sitting"), 3);
    }

    #[test]
    fn a_secret_given_by_a_fact_is_warned_about() {
        let (_dir, _tree, diagnostics) = tree(&[(
            "vars.yaml",
            "'G@os:debian': {tls: {on: true}}\n'G@hostname:db*': {db: {password: x}}\n'db*': {api_token: y}\n",
        )]);
        assert_eq!(diagnostics.len(), 1, "{diagnostics:#?}");
        let warning = &diagnostics[0];
        assert!(!warning.is_error() && warning.line == 2, "{warning:?}");
        assert!(warning.message.contains("G@hostname:db*") && warning.message.contains("password"), "{warning}");
    }

    #[test]
    fn vars_merge_in_file_order_for_matching_targets() {
        let (_dir, tree, diagnostics) = tree(&[(
            "vars.yaml",
            "'*': {port: 80, tls: {on: false, cert: a}}\n'G@os:debian': {tls: {on: true}}\n'db*': {port: 5432}\n",
        )]);
        assert!(diagnostics.is_empty(), "{diagnostics:#?}");
        let debian = Value::map().with("os", "debian");
        assert_eq!(tree.vars_for("web1", &debian), serde_json::json!({"port": 80, "tls": {"on": true, "cert": "a"}}));
        assert_eq!(
            tree.vars_for("db1", &Value::Null),
            serde_json::json!({"port": 5432, "tls": {"on": false, "cert": "a"}})
        );
    }

    #[test]
    fn top_targets_use_facts() {
        let (_dir, tree, diagnostics) =
            tree(&[("top.yaml", "base:\n  'G@os:debian and not L@db1':\n    - common\n"), ("common.yaml", "{}\n")]);
        assert!(diagnostics.is_empty(), "{diagnostics:#?}");
        let debian = Value::map().with("os", "debian");
        assert_eq!(tree.states_for("web1", &debian), ["common"]);
        assert!(tree.states_for("db1", &debian).is_empty());
        assert!(tree.states_for("web1", &Value::Null).is_empty());
    }
}

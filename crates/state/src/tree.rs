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
use crate::sls::{self, Body, RawState, include::Include, order::Order};
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
    ("onchanges_any", "use `onchanges` (it already runs when any of them changed)"),
    ("require_any", "use `require`"),
    ("watch_any", "use `watch`"),
    (
        "onfail",
        "halite does not run states because others failed; react to a failed job with a reactor on `halite/job/*/ret/*`",
    ),
    (
        "onfail_in",
        "halite does not run states because others failed; react to a failed job with a reactor on `halite/job/*/ret/*`",
    ),
    (
        "onfail_any",
        "halite does not run states because others failed; react to a failed job with a reactor on `halite/job/*/ret/*`",
    ),
    ("use", "repeat the arguments"),
    ("use_in", "repeat the arguments"),
    ("failhard", "a failed state stops only the states that require it"),
    ("parallel", "states run one after another"),
    ("retry", "reactors re-apply states when an event says they drifted"),
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
    /// (id, kind) of every state declared but refused at load time: a
    /// requisite naming one is not reported again as naming nothing.
    pub(crate) failed: Vec<(String, String)>,
    /// The plain state files as parsed, before `extend:` and the kinds:
    /// an agent's rendered tree compiles them again with its own files.
    pub(crate) parsed: Vec<(String, Parsed)>,
    /// Salt state files that are Jinja templates, by name: rendered and
    /// compiled per agent (salt/rendered.rs), not at load.
    pub templates: IndexMap<String, layout::SlsFile>,
    /// `top.sls` when it has Jinja: rendered per agent with its grains and
    /// pillar, then read (salt/rendered.rs); `top` is then empty.
    pub top_template: Option<PathBuf>,
    /// The tree's text files, read at load when it renders per agent
    /// (salt/preread.rs): a render reads no file.
    pub texts: Option<std::sync::Arc<crate::salt::preread::TreeTexts>>,
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
    /// Salt's `include:`: state files applied with this one (before it).
    pub includes: Vec<Include>,
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
    /// Salt's `order:`, applied when a job is put together.
    pub order: Order,
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
    /// A `*_in` requisite: the edge goes from the named state to this one.
    reverse: bool,
    /// The kind family (`pkg` in `- pkg: nginx`), when given.
    family: Option<String>,
    name: String,
    at: Location,
}

/// Requisite edges between states, by (file, state) position, with where
/// each is written.
type Edges = HashMap<(usize, usize), Vec<((usize, usize), Location)>>;

/// A state file read but not yet resolved: what `extend:` may change.
#[derive(Debug, Clone)]
pub(crate) struct Parsed {
    path: PathBuf,
    includes: Vec<Include>,
    extends: Vec<sls::extend::Extension>,
    states: Vec<RawState>,
}

impl StateTree {
    /// A tree with no files, rooted at `root` (for callers that build one
    /// by hand, such as tests).
    pub fn empty(root: &Path) -> StateTree {
        StateTree { root: root.to_path_buf(), ..StateTree::default() }
    }

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
        // What the templates read is read now, off the master's runtime
        // (salt/preread.rs).
        if tree.renders_per_agent() {
            let texts = std::sync::Arc::new(crate::salt::preread::TreeTexts::read(root));
            if let Some(pillar) = &mut tree.pillar {
                pillar.texts = Some(texts.clone());
            }
            tree.texts = Some(texts);
        }
        diag::sort(&mut diagnostics);
        (tree, diagnostics)
    }

    /// The state files top.yaml assigns to the agent, in order, each once.
    pub fn states_for(&self, agent: &str, facts: &Value) -> Vec<String> {
        // A Jinja top file names the agent's states once rendered for it;
        // one that does not render names none (`check` and the job's
        // `calls_for` report why, salt/rendered.rs).
        if self.top_template.is_some() {
            return self.for_agent(agent, facts).map(|r| r.tree.states_for(agent, facts)).unwrap_or_default();
        }
        let mut names: Vec<String> = Vec::new();
        for entry in self.top.iter().filter(|e| e.target.matches(agent, facts)) {
            for name in &entry.states {
                self.with_includes(name, &mut names, &mut Vec::new());
            }
        }
        names
    }

    /// Adds `name` to `names` after the files it includes (Salt runs the
    /// included states first), each file once. `visiting` is the include
    /// path walked, so an include cycle ends instead of recursing.
    fn with_includes(&self, name: &str, names: &mut Vec<String>, visiting: &mut Vec<String>) {
        if names.iter().any(|n| n == name) || visiting.iter().any(|n| n == name) {
            return;
        }
        visiting.push(name.to_owned());
        for include in self.files.get(name).map(|f| f.includes.as_slice()).unwrap_or_default() {
            self.with_includes(&include.name, names, visiting);
        }
        visiting.pop();
        names.push(name.to_owned());
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

    /// The calls of the named state files (and the files they include) for
    /// one agent, ready to send:
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
        // Named files bring the files they include (Salt's `include:`),
        // whoever names them: top, an operator, a reactor, a schedule.
        let mut included = Vec::new();
        for name in names {
            self.with_includes(name, &mut included, &mut Vec::new());
        }
        let names = included.as_slice();
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
        // Salt's `order:` first (a stable sort keeps declaration order
        // among equals), then requisites.
        let mut by_order: Vec<(Order, StateCall)> = states.iter().map(|(_, s)| s.order).zip(calls).collect();
        by_order.sort_by(|a, b| sls::order::compare(a.0, b.0));
        let calls: Vec<StateCall> = by_order.into_iter().map(|(_, call)| call).collect();
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
        // Parsed first, all of them: `extend:` changes states of other
        // files before any state is resolved. Kept (`self.parsed`) so that
        // an agent's rendered tree compiles them again with its own files.
        let mut parsed: Vec<(String, Parsed)> = Vec::new();
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
            if let Some(state_file) = self.parse_state_text(&file.path, &file.name, &text, diagnostics) {
                parsed.push((file.name, state_file));
            }
        }
        self.parsed = parsed.clone();
        self.compile_parsed(parsed, diagnostics);
    }

    /// `extend:` applied across `parsed`, then every file compiled into
    /// `self.files`.
    pub(crate) fn compile_parsed(&mut self, mut parsed: Vec<(String, Parsed)>, diagnostics: &mut Vec<Diagnostic>) {
        let extensions: Vec<(PathBuf, sls::extend::Extension)> = parsed
            .iter_mut()
            .flat_map(|(_, file)| std::mem::take(&mut file.extends).into_iter().map(|e| (file.path.clone(), e)))
            .collect();
        for (path, extension) in &extensions {
            let states = parsed.iter_mut().flat_map(|(_, file)| file.states.iter_mut());
            if let Err(problem) = sls::extend::apply(extension, states) {
                diagnostics.push(Diagnostic::error(path, problem.at, problem.message).help(problem.help));
            }
        }
        for (name, file) in parsed {
            let compiled = self.compile_state_file(file, diagnostics);
            self.files.insert(name, compiled);
        }
    }

    /// Reads a state file's YAML text (as read, or as rendered for an
    /// agent) into Salt's language constructs and the states it declares
    /// (short forms and `names:` expanded), reporting what cannot be read.
    /// `None` when the text does not parse at all.
    pub(crate) fn parse_state_text(
        &self,
        path: &Path,
        name: &str,
        text: &str,
        diagnostics: &mut Vec<Diagnostic>,
    ) -> Option<Parsed> {
        let decls: IndexMap<Spanned<String>, Spanned<Body>> = match yaml::parse(path, text) {
            Ok(decls) => decls,
            Err(diagnostic) => {
                let salt = jinja_in_state_file(path, text);
                diagnostics.push(salt.unwrap_or(diagnostic));
                return None;
            }
        };
        let mut problems = Vec::new();
        let mut file =
            Parsed { path: path.to_path_buf(), includes: Vec::new(), extends: Vec::new(), states: Vec::new() };
        let is_init = name == "init" || path.file_stem().is_some_and(|s| s == "init");
        for (id, body) in &decls {
            match id.value.as_str() {
                "include" => file.includes.extend(sls::include::read(name, is_init, body, &mut problems)),
                "extend" => file.extends.extend(sls::extend::read(body, &mut problems)),
                "exclude" => problems.push(sls::Problem::new(
                    yaml::location(id),
                    "Salt's `exclude` is not supported by halite",
                    "leave the state file out of top.sls, or remove the state",
                )),
                _ => {
                    if has_jinja(&id.value) {
                        problems.push(sls::Problem::new(
                            yaml::location(id),
                            format!("state id `{}` holds unrendered Jinja", id.value),
                            "a state id is plain text after rendering; check the template's braces",
                        ));
                        continue;
                    }
                    for state in sls::short_forms::states(id, body, &mut problems) {
                        file.states.extend(sls::names::expand(state, &mut problems));
                    }
                }
            }
        }
        diagnostics.extend(problems.into_iter().map(|p| Diagnostic::error(path, p.at, p.message).help(p.help)));
        Some(file)
    }

    /// Resolves the parsed states of one file with their kinds.
    fn compile_state_file(&mut self, file: Parsed, diagnostics: &mut Vec<Diagnostic>) -> StateFile {
        let path = file.path.as_path();
        let salt = sls::dialect::is_salt(path);
        let mut states = Vec::new();
        for raw in file.states {
            let RawState { id, kind: kind_name, kind_at, kind_span, mut fields, .. } = raw;
            let Some(kind) = kinds::find(&kind_name) else {
                self.failed.push((id.clone(), kind_name.clone()));
                let salt = SALT_FUNCTIONS.iter().find(|(name, _)| *name == kind_name);
                let message = if salt.is_some() {
                    format!(
                        "unknown state kind `{kind_name}` in state `{id}`: Salt's `{kind_name}` is not supported by halite"
                    )
                } else {
                    format!("unknown state kind `{kind_name}` in state `{id}`")
                };
                let close = close_kinds(&kind_name);
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
            if salt {
                sls::dialect::salt_defaults(kind.name, &mut fields, &kind_span);
            }
            let mut problems = Vec::new();
            let common = split_common(&id, kind.name, &fields, salt, &mut problems);
            let authored = Authored { id: &id, fields: &common.rest, tree_root: &self.root };
            match (kind.resolve)(&authored) {
                Ok(mut args) if problems.is_empty() => {
                    if let Some(first) =
                        states.iter().find(|s: &&CompiledState| s.call.id == id && s.call.kind == kind.name)
                    {
                        diagnostics.push(
                            Diagnostic::error(
                                path,
                                kind_at,
                                format!("{} `{id}` is declared twice in this file", kind.name),
                            )
                            .help(format!("the first is at line {}; rename one", first.at.line)),
                        );
                        continue;
                    }
                    if let Some(conditions) = common.conditions {
                        args = args.with(sls::conditions::KEY, conditions);
                    }
                    states.push(CompiledState {
                        call: StateCall::new(id.clone(), kind.name, args),
                        at: kind_at,
                        watch: common.watch,
                        order: common.order,
                        refs: common.refs,
                    });
                }
                Ok(_) => self.failed.push((id.clone(), kind.name.to_owned())),
                Err(more) => {
                    self.failed.push((id.clone(), kind.name.to_owned()));
                    problems.extend(more);
                }
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
        StateFile { path: file.path, states, includes: file.includes }
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
        let mut resolved: HashMap<(usize, usize), Vec<Requisite>> = HashMap::new();
        let names: Vec<&String> = self.files.keys().collect();
        for &at in &all {
            let s = state(&self.files, at);
            for r in &s.refs {
                let targets: Vec<(usize, usize)> = all
                    .iter()
                    .copied()
                    .filter(|&other| {
                        other != at
                            && match r.family.as_deref() {
                                // `- sls: nginx`: every state of that file.
                                Some("sls") => names[other.0] == &r.name,
                                _ => ref_matches(r, &state(&self.files, other).call),
                            }
                    })
                    .collect();
                let failed = self.failed.iter().any(|(id, kind)| {
                    id == &r.name && r.family.as_deref().is_none_or(|f| kind.split('.').next() == Some(f))
                });
                let empty_file = r.family.as_deref() == Some("sls") && self.has_state_file(&r.name);
                // A state that was declared but refused is reported once,
                // where it is: not again here as "declared nowhere".
                if targets.is_empty() && !failed && !empty_file {
                    let written =
                        sls::requisite_in::written(sls::requisite_in::Keyword { on: r.on, reverse: r.reverse });
                    let message = match r.family.as_deref() {
                        Some("sls") => format!(
                            "{} `{}` has {written} `sls: {}`, which is not a state file of the tree",
                            s.call.kind, s.call.id, r.name
                        ),
                        _ => format!(
                            "{} `{}` has {written} `{}`, which no state in the tree declares",
                            s.call.kind,
                            s.call.id,
                            describe_ref(r)
                        ),
                    };
                    let help = match r.family.as_deref() {
                        Some("sls") => "name a state file of the tree: `- sls: nginx` is nginx.sls or nginx/init.sls",
                        _ => "name a state by its id (`require: [nginx-conf]`) or Salt's way (`- file: nginx-conf`)",
                    };
                    diagnostics.push(Diagnostic::error(&self.files[at.0].path, r.at, message).help(help));
                }
                for target in targets {
                    // `*_in`: the named state gets the requisite on this one.
                    let (from, to) = if r.reverse { (target, at) } else { (at, target) };
                    let t = &state(&self.files, to).call;
                    let requisite = Requisite { on: r.on, id: t.id.clone(), kind: t.kind.clone() };
                    let list = resolved.entry(from).or_default();
                    if !list.contains(&requisite) {
                        list.push(requisite);
                        // `listen` does not order, so it makes no cycle.
                        if r.on != RequisiteKind::Listen {
                            // A prereq runs before the state it names.
                            let edge = if r.on == RequisiteKind::Prereq { (to, from) } else { (from, to) };
                            edges.entry(edge.0).or_default().push((edge.1, r.at));
                        }
                    }
                }
            }
        }
        for ((f, s), requisites) in resolved {
            self.files[f].states[s].call.requisites = requisites;
        }
        // Every include names a state file of the tree.
        for file in self.files.values() {
            for include in &file.includes {
                if !self.has_state_file(&include.name) {
                    diagnostics.push(
                        Diagnostic::error(
                            &file.path,
                            include.at,
                            format!("`include` names state file `{}`, which does not exist", include.name),
                        )
                        .help(format!(
                            "create {0}.sls or {0}/init.sls in the tree, or fix the name",
                            include.name.replace('.', "/")
                        )),
                    );
                }
            }
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
        // A top.sls with Jinja is rendered per agent (salt/rendered.rs).
        if path.ends_with("top.sls")
            && let Ok(text) = std::fs::read_to_string(&path)
            && crate::salt::top::is_template(&path, &text, diagnostics)
        {
            self.top_template = Some(path);
            return;
        }
        let Some(entries) = load_targeted(&path, diagnostics) else { return };
        self.set_top(&path, entries, diagnostics);
    }

    /// The top file's entries (read at load, or rendered for an agent,
    /// salt/rendered.rs), each state file it names checked.
    pub(crate) fn set_top(
        &mut self,
        path: &Path,
        entries: crate::salt::top::Targeted,
        diagnostics: &mut Vec<Diagnostic>,
    ) {
        // A missing file is suggested in the tree's own dialect.
        let ext = if path.ends_with("top.sls") { "sls" } else { "yaml" };
        for (target, target_text, states) in entries {
            let names: Vec<String> = match &states.value {
                serde_json::Value::String(one) => vec![one.clone()],
                serde_json::Value::Array(items) if items.iter().all(|i| i.is_string()) => {
                    items.iter().filter_map(|i| i.as_str().map(str::to_owned)).collect()
                }
                _ => {
                    diagnostics.push(
                        Diagnostic::error(
                            path,
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
                            path,
                            yaml::location(&states),
                            format!("target `{}` names state file `{name}`, which does not exist", target_text.value),
                        )
                        .help(format!(
                            "create {} or fix the name",
                            self.root.join(format!("{}.{ext}", name.replace('.', "/"))).display()
                        )),
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
        // A rendered tree asks the texts read at load: a render reads no
        // file (salt/preread.rs).
        match &self.texts {
            Some(texts) => layout::sls_exists_in(texts, &self.root, name),
            None => layout::resolve_sls(&self.root, name).is_ok(),
        }
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
    // Salt's `context`/`defaults`, merged when the tree loaded.
    let extra = args.remove("context").map(|c| c.to_json()).unwrap_or_default();
    for (name, contents) in kinds::template_contents(&call.kind, &mut call.args) {
        let text = String::from_utf8_lossy(contents).into_owned();
        *contents = template::render_with(&text, context, vars, &extra)
            .map_err(|error| match name.as_str() {
                "" => error,
                name => template::TemplateError { message: format!("in `{name}`: {}", error.message), ..error },
            })?
            .into_bytes();
    }
    Ok(())
}

/// What a state file declares beside its kind's own arguments.
struct Common {
    refs: Vec<Ref>,
    watch: bool,
    order: Order,
    /// `unless`/`onlyif` as the call argument [`sls::conditions::KEY`].
    conditions: Option<Value>,
    rest: Fields,
}

/// Kinds that run `unless`/`onlyif` themselves (without a shell) in
/// halite's own `.yaml` files; everywhere else they are Salt's conditions.
const OWN_CONDITIONS: &[&str] = &["cmd.run", "cmd.wait", "cmd.script"];

fn has_jinja(text: &str) -> bool {
    text.contains("{{") || text.contains("{%") || text.contains("{#")
}

/// Takes requisites, `watch: true`, `order`, `unless`/`onlyif` and
/// unsupported Salt keys out of a state's fields, leaving the kind's own
/// arguments. `salt`: the state is in a `.sls` file.
fn split_common(id: &str, kind: &str, fields: &Fields, salt: bool, problems: &mut Vec<kinds::Problem>) -> Common {
    let mut common =
        Common { refs: Vec::new(), watch: false, order: Order::Unset, conditions: None, rest: Fields::default() };
    let mut unless = Vec::new();
    let mut onlyif = Vec::new();
    let template = fields.get("template").is_some();
    for (key, value) in &fields.entries {
        let key_at = yaml::location(key);
        let keyword = match key.value.as_str() {
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
            "order" => {
                match sls::order::parse(&value.value) {
                    Ok(order) => common.order = order,
                    Err(written) => problems.push(
                        kinds::Problem::new(
                            Some(key_at),
                            format!("{kind} `{id}`: `order: {written}` is not a number, `first` or `last`"),
                        )
                        .help("write e.g. `order: 1`, `order: first` or `order: last`"),
                    ),
                }
                continue;
            }
            "unless" | "onlyif" if salt || !OWN_CONDITIONS.contains(&kind) => {
                match sls::conditions::read(&key.value, &value.value) {
                    Ok(lines) if key.value == "unless" => unless.extend(lines),
                    Ok(lines) => onlyif.extend(lines),
                    Err((message, help)) => {
                        problems.push(kinds::Problem::new(Some(key_at), format!("{kind} `{id}`: {message}")).help(help))
                    }
                }
                continue;
            }
            other => match sls::requisite_in::keyword(other) {
                Some(keyword) => keyword,
                None => {
                    if let Some((_, help)) = UNSUPPORTED_SALT_KEYS.iter().find(|(k, _)| *k == other) {
                        problems.push(
                            kinds::Problem::new(
                                Some(key_at),
                                format!("{kind} `{id}`: Salt's `{other}` is not supported by halite"),
                            )
                            .help(*help),
                        );
                    } else {
                        let contents = kinds::file_like(kind).is_some_and(|file| file.contents_key == other);
                        // A template's braces are rendered per agent;
                        // anywhere else in a `.sls` file they were left
                        // unrendered.
                        if !contents || (salt && !template) {
                            jinja_in_value(id, kind, key, &value.value, problems);
                        }
                        common.rest.entries.push((key.clone(), value.clone()));
                    }
                    continue;
                }
            },
        };
        let items = match &value.value {
            serde_json::Value::Array(items) => items.clone(),
            one => vec![one.clone()],
        };
        let written = sls::requisite_in::written(keyword);
        for item in items {
            let parsed = match item {
                serde_json::Value::String(name) => Some((None, name)),
                serde_json::Value::Object(map) if map.len() == 1 => {
                    map.into_iter().next().and_then(|(family, name)| Some((Some(family), name.as_str()?.to_owned())))
                }
                _ => None,
            };
            match parsed {
                Some((family, name)) => {
                    common.refs.push(Ref { on: keyword.on, reverse: keyword.reverse, family, name, at: key_at })
                }
                None => problems.push(
                    kinds::Problem::new(
                        Some(key_at),
                        format!("{kind} `{id}`: `{written}` lists a state as an id or `kind: id`"),
                    )
                    .help(format!("write e.g. `{written}: [nginx-conf]` or `- {written}:\\n  - file: nginx-conf`")),
                ),
            }
        }
    }
    if !unless.is_empty() || !onlyif.is_empty() {
        common.conditions = Some(sls::conditions::to_value(&unless, &onlyif));
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
    let found = match value {
        serde_json::Value::String(s) => has_jinja(s),
        other => has_jinja(&other.to_string()),
    };
    if found {
        problems.push(
            kinds::Problem::new(
                Some(yaml::location(key)),
                format!("{kind} `{id}`: `{}` holds unrendered Jinja", key.value),
            )
            .help("braces are rendered only in file content with `template: jinja`; check the state file's template"),
        );
    }
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
        let (_dir, _tree, diagnostics) = tree(&[
            (
                "a.sls",
                "x:\n  cmd.run:\n    - name: 'true'\n    - onfail:\n      - cmd: y\ny:\n  file.touch:\n    - name: z\nz:\n  file.accumulated:\n    - name: /srv\n",
            ),
            ("i.sls", "include:\n  - nowhere\nexclude:\n  - id: x\n"),
        ]);
        let messages: Vec<String> = diagnostics.iter().map(ToString::to_string).collect();
        for expected in [
            "a.sls:4:7: error: cmd.run `x`: Salt's `onfail` is not supported by halite",
            "a.sls:7:3: error: unknown state kind `file.touch` in state `y`",
            "a.sls:10:3: error: unknown state kind `file.accumulated`",
            "i.sls:2:5: error: `include` names state file `nowhere`, which does not exist",
            "i.sls:3:1: error: Salt's `exclude` is not supported by halite",
        ] {
            assert!(messages.iter().any(|m| m.contains(expected)), "{expected}: {messages:#?}");
        }
        assert_eq!(messages.len(), 5, "{messages:#?}");
    }

    fn applied(files: &[(&str, &str)], agent_states: &[&str]) -> (tempfile::TempDir, Vec<StateCall>) {
        let (dir, tree, diagnostics) = tree(files);
        assert!(diagnostics.is_empty(), "{diagnostics:#?}");
        let mut names = Vec::new();
        for name in agent_states {
            tree.with_includes(name, &mut names, &mut Vec::new());
        }
        let calls = tree.calls_for(&names, &RenderContext::new("x", &Value::Null)).unwrap();
        (dir, calls)
    }

    fn requisites(call: &StateCall) -> Vec<String> {
        call.requisites.iter().map(|r| format!("{} {} {}", r.on.keyword(), r.kind, r.id)).collect()
    }

    #[test]
    fn include_extend_names_and_requisites_in_reach_across_files() {
        let (_dir, calls) = applied(
            &[
                (
                    "web.sls",
                    "include:\n  - nginx\nextend:\n  nginx:\n    service:\n      - watch:\n        - file: site\nsite:\n  file.managed:\n    - name: /etc/site\n    - contents: x\n    - watch_in:\n      - cmd: reload\n",
                ),
                (
                    "nginx.sls",
                    "nginx:\n  pkg.installed: []\n  service.running:\n    - require:\n      - pkg: nginx\ntools:\n  pkg.installed:\n    - names: [git, vim]\n    - require_in:\n      - sls: nginx2\nreload:\n  cmd.run:\n    - name: echo reload > /dev/null 2>&1\n",
                ),
                ("nginx2.sls", "after:\n  cmd.run:\n    - name: 'true'\n    - order: 1\n"),
            ],
            &["web", "nginx2"],
        );
        let labels: Vec<String> = calls.iter().map(|c| format!("{} {}", c.kind, c.id)).collect();
        // Included states first; `order: 1` before unordered states but
        // after its requisites (git, vim via require_in on the file).
        assert_eq!(
            labels,
            [
                "pkg.installed nginx",
                "pkg.installed git",
                "pkg.installed vim",
                "cmd.run after",
                "file.managed site",
                "service.running nginx",
                "cmd.run reload"
            ],
            "{calls:#?}"
        );
        let by_id = |id: &str| calls.iter().find(|c| c.id == id).unwrap();
        let service = calls.iter().find(|c| c.kind == "service.running").unwrap();
        assert_eq!(requisites(service), ["require pkg.installed nginx", "watch file.managed site"]);
        assert_eq!(requisites(by_id("reload")), ["watch file.managed site"]);
        assert_eq!(requisites(by_id("after")), ["require pkg.installed git", "require pkg.installed vim"]);
        // `.sls` command lines go through a shell.
        assert_eq!(by_id("reload").args.get("shell"), Some(&Value::Bool(true)));
    }

    #[test]
    fn a_state_that_failed_to_load_is_reported_once() {
        let (_dir, _tree, diagnostics) = tree(&[(
            "a.sls",
            "conf:\n  file.managed:\n    - name: relative\n    - contents: x\nsvc:\n  cmd.run:\n    - name: 'true'\n    - require:\n      - file: conf\n",
        )]);
        let messages: Vec<String> = diagnostics.iter().map(ToString::to_string).collect();
        assert_eq!(messages.len(), 1, "{messages:#?}");
        assert!(messages[0].contains("path `relative` is not absolute"), "{messages:#?}");
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

//! Reactors: what the master does when an event arrives.
//!
//! `reactors.yaml` is compiled when the tree loads (tag globs, `when`
//! expressions, actions), never when an event arrives: an event only runs
//! what was already checked.

use std::path::Path;
use std::sync::{Arc, LazyLock};
use std::time::Duration;

use globset::{Glob, GlobMatcher};
use halite_proto::Event;
use halite_state::yaml::{self, Spanned};
use halite_state::{Diagnostic, StateTree};
use indexmap::IndexMap;

pub mod actions;
pub mod engine;
mod schedule;

/// One environment for every `when` expression, so compiled expressions
/// can live as long as the tree that holds them.
static EXPRESSIONS: LazyLock<minijinja::Environment<'static>> = LazyLock::new(minijinja::Environment::new);

/// Keys of a reactor that are not actions.
const REACTOR_KEYS: &[&str] = &["name", "on", "when", "target", "throttle"];

#[derive(Debug)]
pub struct Reactor {
    pub name: String,
    /// The tag glob, as written.
    pub on: String,
    on_matcher: GlobMatcher,
    /// The `when` expression, as written.
    pub when: Option<String>,
    when_compiled: Option<minijinja::Expression<'static, 'static>>,
    /// Repeats for one agent within this window fold into one reaction.
    pub throttle: Option<Duration>,
    /// Which agents the agent actions (`apply`, `run`) act on: `None` for
    /// the agent that raised the event (`target: origin`, the default),
    /// else every connected, accepted agent the expression matches.
    pub target: Option<halite_state::Target>,
    pub actions: Vec<Box<dyn actions::Action>>,
}

impl Reactor {
    /// A reactor the tree implies rather than one authored (`watch: true`,
    /// see `crate::tree::watch`); `on` is a tag glob the caller built.
    pub fn implied(name: String, on: &str, actions: Vec<Box<dyn actions::Action>>) -> Result<Reactor, String> {
        let on_matcher = Glob::new(on).map_err(|e| format!("bad tag glob `{on}`: {}", e.kind()))?.compile_matcher();
        Ok(Reactor {
            name,
            on: on.to_owned(),
            on_matcher,
            when: None,
            when_compiled: None,
            throttle: None,
            target: None,
            actions,
        })
    }

    /// Whether the event's tag matches and `when` holds.
    pub fn matches(&self, event: &Event) -> Result<bool, String> {
        if !self.on_matcher.is_match(&event.tag) {
            return Ok(false);
        }
        let Some(when) = &self.when_compiled else { return Ok(true) };
        let context = minijinja::context! {
            tag => event.tag,
            agent => event.agent,
            data => minijinja::Value::from_serialize(event.data.to_json()),
        };
        when.eval(context).map(|v| v.is_true()).map_err(|e| format!("`when` failed: {e}"))
    }
}

type Authored = Vec<Spanned<IndexMap<Spanned<String>, Spanned<serde_json::Value>>>>;

/// Loads and compiles reactors.yaml; every problem becomes a diagnostic.
pub fn load(path: &Path, states: &StateTree, diagnostics: &mut Vec<Diagnostic>) -> Vec<Arc<Reactor>> {
    let Ok(text) = std::fs::read_to_string(path) else { return Vec::new() };
    let authored: Authored = match yaml::parse(path, &text) {
        Ok(authored) => authored,
        Err(diagnostic) => {
            diagnostics.push(diagnostic);
            return Vec::new();
        }
    };
    let mut reactors: Vec<Arc<Reactor>> = Vec::new();
    for entry in authored {
        let start = yaml::location(&entry);
        let mut problems = Vec::new();
        let get = |key: &str| entry.value.iter().find(|(k, _)| k.value == key);
        let text_of = |key: &str| get(key).and_then(|(_, v)| v.value.as_str().map(str::to_owned));
        let Some(name) = text_of("name") else {
            diagnostics.push(
                Diagnostic::error(path, start, "a reactor without a `name`")
                    .help("add `name: <what it does>`; it names the reactor in events and logs"),
            );
            continue;
        };
        if reactors.iter().any(|r| r.name == name) {
            problems.push(
                Diagnostic::error(path, start, format!("a second reactor named `{name}`"))
                    .help("reactor names must be unique"),
            );
        }
        let on_matcher = match get("on") {
            None => {
                problems.push(
                    Diagnostic::error(path, start, format!("reactor `{name}` has no `on` tag glob"))
                        .help("add e.g. `on: halite/beacon/*/nginx-conf`"),
                );
                None
            }
            Some((_, on)) => match on.value.as_str().map(Glob::new) {
                Some(Ok(glob)) => Some(glob.compile_matcher()),
                Some(Err(e)) => {
                    problems.push(
                        Diagnostic::error(
                            path,
                            yaml::location(on),
                            format!("reactor `{name}`: bad tag glob: {}", e.kind()),
                        )
                        .help("`*` matches any text, `?` one character, `[ab]` one of a set"),
                    );
                    None
                }
                None => {
                    problems.push(Diagnostic::error(
                        path,
                        yaml::location(on),
                        format!("reactor `{name}`: `on` must be a tag glob string"),
                    ));
                    None
                }
            },
        };
        let when = text_of("when");
        let when_compiled = match &when {
            None => None,
            Some(expression) => match EXPRESSIONS.compile_expression_owned(expression.clone()) {
                Ok(compiled) => Some(compiled),
                Err(e) => {
                    let at = get("when").map_or(start, |(_, v)| yaml::location(v));
                    problems.push(
                        Diagnostic::error(path, at, format!("reactor `{name}`: bad `when` expression: {}", e.detail().unwrap_or("syntax error")))
                            .help("`when` is a template expression over `tag`, `agent` and `data`, e.g. data.kind in ['modify', 'delete']"),
                    );
                    None
                }
            },
        };
        let target = match get("target") {
            None => None,
            Some((_, value)) => match value.value.as_str() {
                Some("origin") => None,
                Some(expression) => match halite_state::Target::parse(expression) {
                    Ok(target) => Some(target),
                    Err(message) => {
                        problems.push(
                            Diagnostic::error(path, yaml::location(value), format!("reactor `{name}`: target: {message}"))
                                .help("`origin` (the agent that raised the event) or a target expression such as `web*`, `L@web1,web2`, `G@os:Debian and not db*`"),
                        );
                        None
                    }
                },
                None => {
                    problems.push(
                        Diagnostic::error(
                            path,
                            yaml::location(value),
                            format!("reactor `{name}`: `target` must be a string"),
                        )
                        .help("write e.g. target: 'web*'"),
                    );
                    None
                }
            },
        };
        let throttle = match get("throttle") {
            None => None,
            Some((_, value)) => match value.value.as_str().map(humantime::parse_duration) {
                Some(Ok(duration)) => Some(duration),
                _ => {
                    problems.push(
                        Diagnostic::error(
                            path,
                            yaml::location(value),
                            format!("reactor `{name}`: `throttle` is not a duration"),
                        )
                        .help("write e.g. throttle: 1s"),
                    );
                    None
                }
            },
        };
        let mut compiled_actions = Vec::new();
        for (key, value) in &entry.value {
            if REACTOR_KEYS.contains(&key.value.as_str()) {
                continue;
            }
            match actions::find(&key.value) {
                None => problems.push(
                    Diagnostic::error(
                        path,
                        yaml::location(key),
                        format!("reactor `{name}`: unknown key or action `{}`", key.value),
                    )
                    .help(format!(
                        "reactor keys: {}; actions: {}",
                        REACTOR_KEYS.join(", "),
                        actions::names().join(", ")
                    )),
                ),
                Some(kind) => match (kind.compile)(&value.value, states) {
                    Ok(action) => compiled_actions.push(action),
                    Err(message) => problems.push(Diagnostic::error(
                        path,
                        yaml::location(value),
                        format!("reactor `{name}`: {}: {message}", key.value),
                    )),
                },
            }
        }
        if let Some(matcher) = &on_matcher
            && when.is_none()
            && let Some(tag) = compiled_actions.iter().filter_map(|a| a.fires()).find(|t| matcher.is_match(t))
        {
            problems.push(
                Diagnostic::error(
                    path,
                    get("event").map_or(start, |(k, _)| yaml::location(k)),
                    format!("reactor `{name}` fires `{tag}`, which its own `on` matches: it would trigger itself"),
                )
                .help("fire a tag its `on` does not match, or add a `when` that tells the two apart"),
            );
        }
        if compiled_actions.is_empty() && problems.is_empty() {
            problems.push(
                Diagnostic::error(path, start, format!("reactor `{name}` does nothing"))
                    .help(format!("add an action: {}", actions::names().join(", "))),
            );
        }
        if !problems.is_empty() {
            diagnostics.extend(problems);
            continue;
        }
        let Some(on_matcher) = on_matcher else { continue };
        reactors.push(Arc::new(Reactor {
            on: get("on").and_then(|(_, v)| v.value.as_str().map(str::to_owned)).unwrap_or_default(),
            name,
            on_matcher,
            when,
            when_compiled,
            throttle,
            target,
            actions: compiled_actions,
        }));
    }
    reactors
}

#[cfg(test)]
mod tests {
    use halite_proto::Value;

    use super::*;

    fn load_text(text: &str) -> (Vec<Arc<Reactor>>, Vec<Diagnostic>) {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("nginx.yaml"), "c:\n  file.managed:\n    path: /x\n    contents: x\n").unwrap();
        std::fs::write(dir.path().join("reactors.yaml"), text).unwrap();
        let (states, _) = StateTree::load(dir.path());
        let mut diagnostics = Vec::new();
        let reactors = load(&dir.path().join("reactors.yaml"), &states, &mut diagnostics);
        (reactors, diagnostics)
    }

    #[test]
    fn matches_tag_and_when() {
        let (reactors, diagnostics) = load_text(
            "- name: restore\n  on: halite/beacon/*/conf\n  when: \"data.kind in ['modify', 'delete']\"\n  apply: [nginx]\n",
        );
        assert!(diagnostics.is_empty(), "{diagnostics:#?}");
        let event = |tag: &str, kind: &str| Event::new(tag, "web1", Value::map().with("kind", kind));
        let cases = [
            ("halite/beacon/web1/conf", "modify", true),
            ("halite/beacon/web1/conf", "delete", true),
            ("halite/beacon/web1/conf", "create", false),
            ("halite/beacon/web1/other", "modify", false),
        ];
        for (tag, kind, expected) in cases {
            assert_eq!(reactors[0].matches(&event(tag, kind)), Ok(expected), "{tag} {kind}");
        }
    }

    #[test]
    fn a_reactor_that_would_fire_itself_is_refused() {
        let (reactors, diagnostics) = load_text(
            "- name: echo\n  on: ops/*\n  event: ops/again\n- name: ok\n  on: ops/*\n  when: \"data.depth is undefined\"\n  event: ops/again\n",
        );
        assert_eq!(reactors.len(), 1, "{diagnostics:#?}");
        assert_eq!(diagnostics.len(), 1);
        assert_eq!(diagnostics[0].line, 3);
        assert!(diagnostics[0].message.contains("trigger itself"), "{diagnostics:#?}");
    }

    #[test]
    fn every_problem_is_reported_with_its_position() {
        let (reactors, diagnostics) = load_text(
            "- name: a\n  on: 'halite/[x'\n  apply: [nginx]\n- name: b\n  on: x\n  when: 'data.kind =='\n  apply: [nope]\n- name: c\n  on: x\n  aply: [nginx]\n",
        );
        assert!(reactors.is_empty());
        let lines: Vec<u64> = diagnostics.iter().map(|d| d.line).collect();
        assert_eq!(lines, [2, 6, 7, 10], "{diagnostics:#?}");
    }

    #[test]
    fn target_is_origin_by_default_or_a_compiled_expression() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("m.yaml"), "c:\n  file.managed:\n    path: /x\n    contents: x\n").unwrap();
        let reactors = dir.path().join("reactors.yaml");
        std::fs::write(
            &reactors,
            "- {name: a, on: x, apply: [m]}\n- {name: b, on: x, target: origin, apply: [m]}\n- {name: c, on: x, target: 'web* and not G@os:Debian', apply: [m]}\n- {name: d, on: x, target: 'L@', apply: [m]}\n",
        )
        .unwrap();
        let (states, _) = StateTree::load(dir.path());
        let mut diagnostics = Vec::new();
        let loaded = load(&reactors, &states, &mut diagnostics);
        let targets: Vec<_> = loaded.iter().map(|r| r.target.as_ref().map(|t| t.as_str().to_owned())).collect();
        assert_eq!(targets, [None, None, Some("web* and not G@os:Debian".to_owned())]);
        assert_eq!(diagnostics.len(), 1, "{diagnostics:#?}");
        assert!(diagnostics[0].message.contains("reactor `d`: target:"), "{}", diagnostics[0].message);
    }
}

//! Reactors: what the master does when an event arrives.
//!
//! `reactors.yaml` is compiled when the tree loads (tag globs, `when`
//! expressions, actions), never when an event arrives: an event only runs
//! what was already checked.

use std::fmt;
use std::path::Path;
use std::sync::{Arc, LazyLock};
use std::time::Duration;

use globset::{Glob, GlobMatcher};
use halite_proto::Event;
use halite_state::yaml::{self, Spanned};
use halite_state::{Diagnostic, StateTree};
use serde::de::{Deserialize, Deserializer, MapAccess, Visitor};

pub mod actions;
pub mod engine;
mod schedule;

/// One environment for every `when` expression, so compiled expressions
/// can live as long as the tree that holds them.
static EXPRESSIONS: LazyLock<minijinja::Environment<'static>> = LazyLock::new(minijinja::Environment::new);

/// Keys of a reactor that are not actions: [`Authored`]'s fields.
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
    /// Where `on` and `when` are written in reactors.yaml (`0:0` for an
    /// implied reactor), for `check`'s warnings (`crate::tree::lint`).
    pub on_at: halite_state::diag::Location,
    pub when_at: halite_state::diag::Location,
}

/// Why a reactor could not be built or its `when` did not evaluate; names
/// the glob or the expression's failure.
#[derive(Debug, thiserror::Error)]
pub enum ReactorError {
    #[error("bad tag glob `{glob}`: {reason}")]
    Glob { glob: String, reason: globset::ErrorKind },
    #[error("`when` failed: {0}")]
    When(minijinja::Error),
}

impl Reactor {
    /// A reactor the tree implies rather than one authored (`watch: true`,
    /// see `crate::tree::watch`); `on` is a tag glob the caller built.
    pub fn implied(name: String, on: &str, actions: Vec<Box<dyn actions::Action>>) -> Result<Reactor, ReactorError> {
        let on_matcher = Glob::new(on)
            .map_err(|e| ReactorError::Glob { glob: on.to_owned(), reason: e.kind().clone() })?
            .compile_matcher();
        Ok(Reactor {
            name,
            on: on.to_owned(),
            on_matcher,
            when: None,
            when_compiled: None,
            throttle: None,
            target: None,
            actions,
            on_at: halite_state::diag::Location::FILE,
            when_at: halite_state::diag::Location::FILE,
        })
    }

    /// Whether the event's tag matches `on` (whatever `when` says).
    pub fn tag_matches(&self, tag: &str) -> bool {
        self.on_matcher.is_match(tag)
    }

    /// Whether the event's tag matches and `when` holds.
    pub fn matches(&self, event: &Event) -> Result<bool, ReactorError> {
        if !self.on_matcher.is_match(&event.tag) {
            return Ok(false);
        }
        let Some(when) = &self.when_compiled else { return Ok(true) };
        let context = minijinja::context! {
            tag => event.tag,
            agent => event.agent,
            data => minijinja::Value::from_serialize(event.data.to_json()),
        };
        when.eval(context).map(|v| v.is_true()).map_err(ReactorError::When)
    }
}

/// A value reactors.yaml gives as a string. Anything else is kept rather
/// than failing the whole file, so [`load`] reports it in its own words,
/// naming the reactor, beside every other problem.
#[derive(Debug)]
enum Text {
    String(String),
    Other,
}

impl Text {
    fn as_str(&self) -> Option<&str> {
        match self {
            Text::String(text) => Some(text),
            Text::Other => None,
        }
    }
}

impl<'de> Deserialize<'de> for Text {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        Ok(match serde_json::Value::deserialize(deserializer)? {
            serde_json::Value::String(text) => Text::String(text),
            _ => Text::Other,
        })
    }
}

/// One reactor as written, with where each part is: the reactor's own keys
/// ([`REACTOR_KEYS`]; `Some` when written, whatever the value), and every
/// other key as an action, in order, left for that action's own file to
/// compile from its value.
#[derive(Debug, Default)]
struct Authored {
    name: Option<Spanned<Text>>,
    on: Option<Spanned<Text>>,
    when: Option<Spanned<Text>>,
    target: Option<Spanned<Text>>,
    throttle: Option<Spanned<Text>>,
    actions: Vec<(Spanned<String>, Spanned<serde_json::Value>)>,
}

impl Authored {
    fn action_key(&self, key: &str) -> Option<&Spanned<String>> {
        self.actions.iter().map(|(k, _)| k).find(|k| k.value == key)
    }
}

impl<'de> Deserialize<'de> for Authored {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct AuthoredVisitor;

        impl<'de> Visitor<'de> for AuthoredVisitor {
            type Value = Authored;

            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a map")
            }

            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Authored, A::Error> {
                let mut authored = Authored::default();
                while let Some(key) = map.next_key::<Spanned<String>>()? {
                    let field = match key.value.as_str() {
                        "name" => &mut authored.name,
                        "on" => &mut authored.on,
                        "when" => &mut authored.when,
                        "target" => &mut authored.target,
                        "throttle" => &mut authored.throttle,
                        _ => {
                            authored.actions.push((key, map.next_value()?));
                            continue;
                        }
                    };
                    *field = Some(map.next_value()?);
                }
                Ok(authored)
            }
        }

        deserializer.deserialize_map(AuthoredVisitor)
    }
}

/// Loads and compiles reactors.yaml; every problem becomes a diagnostic.
pub fn load(path: &Path, states: &StateTree, diagnostics: &mut Vec<Diagnostic>) -> Vec<Arc<Reactor>> {
    let Ok(text) = std::fs::read_to_string(path) else { return Vec::new() };
    let authored: Vec<Spanned<Authored>> = match yaml::parse(path, &text) {
        Ok(authored) => authored,
        Err(diagnostic) => {
            diagnostics.push(diagnostic);
            return Vec::new();
        }
    };
    let mut reactors: Vec<Arc<Reactor>> = Vec::new();
    for entry in &authored {
        match compile(path, entry, states, &reactors) {
            Ok(reactor) => reactors.push(Arc::new(reactor)),
            Err(problems) => diagnostics.extend(problems),
        }
    }
    reactors
}

/// Compiles one authored reactor: the reactor, or every problem it has
/// (`earlier` are the reactors compiled before it, for unique names).
fn compile(
    path: &Path,
    entry: &Spanned<Authored>,
    states: &StateTree,
    earlier: &[Arc<Reactor>],
) -> Result<Reactor, Vec<Diagnostic>> {
    let start = yaml::location(entry);
    let authored = &entry.value;
    let Some(name) = authored.name.as_ref().and_then(|n| n.value.as_str()) else {
        return Err(vec![
            Diagnostic::error(path, start, "a reactor without a `name`")
                .help("add `name: <what it does>`; it names the reactor in events and logs"),
        ]);
    };
    let mut problems = Vec::new();
    if earlier.iter().any(|r| r.name == name) {
        problems.push(
            Diagnostic::error(path, start, format!("a second reactor named `{name}`"))
                .help("reactor names must be unique"),
        );
    }
    let on = match &authored.on {
        None => Err(Diagnostic::error(path, start, format!("reactor `{name}` has no `on` tag glob"))
            .help("add e.g. `on: halite/beacon/*/nginx-conf`")),
        Some(on) => on_glob(path, name, on),
    };
    let on = keep(&mut problems, on);
    // A `when` that is not a string is taken as no `when`, as it always
    // has been.
    let when = authored.when.as_ref().and_then(|w| Some((w, w.value.as_str()?)));
    let when_compiled = match when {
        None => None,
        Some((at, expression)) => keep(&mut problems, when_expression(path, name, at, expression)),
    };
    let target = match &authored.target {
        None => None,
        Some(written) => keep(&mut problems, target(path, name, written)).flatten(),
    };
    let throttle = match &authored.throttle {
        None => None,
        Some(written) => keep(&mut problems, throttle(path, name, written)),
    };
    let mut compiled_actions = Vec::new();
    for (key, value) in &authored.actions {
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
    if let Some((_, matcher)) = &on
        && when.is_none()
        && let Some(tag) = compiled_actions.iter().filter_map(|a| a.fires()).find(|t| matcher.is_match(t))
    {
        problems.push(
            Diagnostic::error(
                path,
                authored.action_key("event").map_or(start, yaml::location),
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
    match on {
        Some((on, on_matcher)) if problems.is_empty() => Ok(Reactor {
            name: name.to_owned(),
            on,
            on_matcher,
            when: when.map(|(_, expression)| expression.to_owned()),
            when_compiled,
            throttle,
            target,
            actions: compiled_actions,
            on_at: authored.on.as_ref().map_or(start, yaml::location),
            when_at: authored.when.as_ref().map_or(start, yaml::location),
        }),
        _ => Err(problems),
    }
}

/// The value of a check that passed; a failed one's diagnostic joins the
/// reactor's problems.
fn keep<T>(problems: &mut Vec<Diagnostic>, checked: Result<T, Diagnostic>) -> Option<T> {
    checked.map_err(|problem| problems.push(problem)).ok()
}

/// `on`: the glob as written and compiled.
fn on_glob(path: &Path, name: &str, on: &Spanned<Text>) -> Result<(String, GlobMatcher), Diagnostic> {
    let Some(glob) = on.value.as_str() else {
        return Err(Diagnostic::error(
            path,
            yaml::location(on),
            format!("reactor `{name}`: `on` must be a tag glob string"),
        ));
    };
    match Glob::new(glob) {
        Ok(compiled) => Ok((glob.to_owned(), compiled.compile_matcher())),
        Err(e) => {
            Err(Diagnostic::error(path, yaml::location(on), format!("reactor `{name}`: bad tag glob: {}", e.kind()))
                .help("`*` matches any text, `?` one character, `[ab]` one of a set"))
        }
    }
}

/// `when`, compiled.
fn when_expression(
    path: &Path,
    name: &str,
    at: &Spanned<Text>,
    expression: &str,
) -> Result<minijinja::Expression<'static, 'static>, Diagnostic> {
    EXPRESSIONS.compile_expression_owned(expression.to_owned()).map_err(|e| {
        Diagnostic::error(
            path,
            yaml::location(at),
            format!("reactor `{name}`: bad `when` expression: {}", e.detail().unwrap_or("syntax error")),
        )
        .help("`when` is a template expression over `tag`, `agent` and `data`, e.g. data.kind in ['modify', 'delete']")
    })
}

/// `target`: `None` for `origin`, else the compiled expression.
fn target(path: &Path, name: &str, target: &Spanned<Text>) -> Result<Option<halite_state::Target>, Diagnostic> {
    match target.value.as_str() {
        Some("origin") => Ok(None),
        Some(expression) => halite_state::Target::parse(expression).map(Some).map_err(|message| {
            Diagnostic::error(path, yaml::location(target), format!("reactor `{name}`: target: {message}"))
                .help("`origin` (the agent that raised the event) or a target expression such as `web*`, `L@web1,web2`, `G@os:Debian and not db*`")
        }),
        None => Err(Diagnostic::error(
            path,
            yaml::location(target),
            format!("reactor `{name}`: `target` must be a string"),
        )
        .help("write e.g. target: 'web*'")),
    }
}

/// `throttle`, as a duration.
fn throttle(path: &Path, name: &str, throttle: &Spanned<Text>) -> Result<Duration, Diagnostic> {
    match throttle.value.as_str().map(humantime::parse_duration) {
        Some(Ok(duration)) => Ok(duration),
        _ => Err(Diagnostic::error(
            path,
            yaml::location(throttle),
            format!("reactor `{name}`: `throttle` is not a duration"),
        )
        .help("write e.g. throttle: 1s")),
    }
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
            assert_eq!(reactors[0].matches(&event(tag, kind)).ok(), Some(expected), "{tag} {kind}");
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
    /// Every diagnostic `load` gives, with its text and position.
    #[test]
    fn every_diagnostic_keeps_its_text_and_position() {
        let text = "\
- on: x
  apply: [nginx]
- name: ~
  apply: [nginx]
- name: dup
  on: x
  apply: [nginx]
- name: dup
  on: x
  apply: [nginx]
- name: no-on
  apply: [nginx]
- name: on-map
  on: {a: b}
  apply: [nginx]
- name: on-null
  on: ~
  apply: [nginx]
- name: glob
  on: 'a[b'
  apply: [nginx]
- name: bad-when
  on: x
  when: 'a =='
  apply: [nginx]
- name: when-number
  on: x
  when: 5
  apply: [nginx]
- name: target-list
  on: x
  target: [a]
  apply: [nginx]
- name: target-bad
  on: x
  target: 'L@'
  apply: [nginx]
- name: throttle-word
  on: x
  throttle: soon
  apply: [nginx]
- name: throttle-number
  on: x
  throttle: 5
  apply: [nginx]
- name: unknown
  on: x
  aply: [nginx]
- name: action-error
  on: x
  apply: [missing]
- name: loop
  on: ops/*
  apply: [nginx]
  event: ops/again
- name: idle
  on: x
- name: several
  on: 'a[b'
  when: 'a =='
  target: 5
  throttle: x
  nope: 1
- name: 5
  on: x
  apply: [nginx]
- {name: flow, on: x, exec: [1]}
";
        let (reactors, diagnostics) = load_text(text);
        let names: Vec<&str> = reactors.iter().map(|r| r.name.as_str()).collect();
        // A `when` that is not a string counts as none (as it always has).
        assert_eq!(names, ["dup", "when-number"]);
        let got: Vec<String> = diagnostics.iter().map(shown).collect();
        let expected = [
            "1:3: a reactor without a `name` / add `name: <what it does>`; it names the reactor in events and logs",
            "3:3: a reactor without a `name` / add `name: <what it does>`; it names the reactor in events and logs",
            "8:3: a second reactor named `dup` / reactor names must be unique",
            "11:3: reactor `no-on` has no `on` tag glob / add e.g. `on: halite/beacon/*/nginx-conf`",
            "14:7: reactor `on-map`: `on` must be a tag glob string / -",
            "17:7: reactor `on-null`: `on` must be a tag glob string / -",
            "20:7: reactor `glob`: bad tag glob: unclosed character class; missing ']' / `*` matches any text, `?` one character, `[ab]` one of a set",
            "24:9: reactor `bad-when`: bad `when` expression: unexpected end of input, expected expression / `when` is a template expression over `tag`, `agent` and `data`, e.g. data.kind in ['modify', 'delete']",
            "32:11: reactor `target-list`: `target` must be a string / write e.g. target: 'web*'",
            "36:11: reactor `target-bad`: target: target `L@`: `L@` needs a comma-separated list of agent ids / `origin` (the agent that raised the event) or a target expression such as `web*`, `L@web1,web2`, `G@os:Debian and not db*`",
            "40:13: reactor `throttle-word`: `throttle` is not a duration / write e.g. throttle: 1s",
            "44:13: reactor `throttle-number`: `throttle` is not a duration / write e.g. throttle: 1s",
            "48:3: reactor `unknown`: unknown key or action `aply` / reactor keys: name, on, when, target, throttle; actions: apply, event, exec, run, webhook",
            "51:10: reactor `action-error`: apply: state file `missing` does not exist in the tree / -",
            "55:3: reactor `loop` fires `ops/again`, which its own `on` matches: it would trigger itself / fire a tag its `on` does not match, or add a `when` that tells the two apart",
            "56:3: reactor `idle` does nothing / add an action: apply, event, exec, run, webhook",
            "59:7: reactor `several`: bad tag glob: unclosed character class; missing ']' / `*` matches any text, `?` one character, `[ab]` one of a set",
            "60:9: reactor `several`: bad `when` expression: unexpected end of input, expected expression / `when` is a template expression over `tag`, `agent` and `data`, e.g. data.kind in ['modify', 'delete']",
            "61:11: reactor `several`: `target` must be a string / write e.g. target: 'web*'",
            "62:13: reactor `several`: `throttle` is not a duration / write e.g. throttle: 1s",
            "63:3: reactor `several`: unknown key or action `nope` / reactor keys: name, on, when, target, throttle; actions: apply, event, exec, run, webhook",
            "64:3: a reactor without a `name` / add `name: <what it does>`; it names the reactor in events and logs",
            "67:29: reactor `flow`: exec: `[1]`: write `exec: hooks/x.sh ARGS` or `exec: {cmd: …, timeout: 10s}` / -",
        ];
        assert_eq!(got, expected);
    }

    /// A file of the wrong shape is one diagnostic from the parser, where
    /// the shape breaks; merge keys and odd keys reach the reactor.
    #[test]
    fn the_file_s_shape_is_checked_by_the_parser() {
        let cases: &[(&str, &[&str], usize)] = &[
            ("", &[], 0),
            ("[]\n", &[], 0),
            ("a: b\n", &["1:1: expected sequence start / check the YAML syntax and indentation at that position"], 0),
            (
                "- just a string\n",
                &["1:3: expected mapping start / check the YAML syntax and indentation at that position"],
                0,
            ),
            ("- ~\n", &["1:3: expected mapping start / check the YAML syntax and indentation at that position"], 0),
            (
                "- name: x\n  on: [\n",
                &["2:7: unclosed bracket '[' / check the YAML syntax and indentation at that position"],
                0,
            ),
            (
                "- name: a\n  on: x\n  on: y\n  apply: [nginx]\n",
                &[
                    "3:3: duplicate mapping key: on, set DuplicateKeyPolicy in Options if acceptable / check the YAML syntax and indentation at that position",
                ],
                0,
            ),
            (
                "- name: a\n  on: x\n  apply: [nginx]\n  apply: [nginx]\n",
                &[
                    "4:3: duplicate mapping key: apply, set DuplicateKeyPolicy in Options if acceptable / check the YAML syntax and indentation at that position",
                ],
                0,
            ),
            (
                "- name: a\n  [a]: x\n",
                &["2:3: expected string scalar / check the YAML syntax and indentation at that position"],
                0,
            ),
            (
                "- name: a\n  5: x\n",
                &[
                    "1:3: reactor `a` has no `on` tag glob / add e.g. `on: halite/beacon/*/nginx-conf`",
                    "2:3: reactor `a`: unknown key or action `5` / reactor keys: name, on, when, target, throttle; actions: apply, event, exec, run, webhook",
                ],
                0,
            ),
            ("- name: a\n  on: x\n  apply: [nginx]\n  <<: {when: 'true'}\n", &[], 1),
        ];
        for &(text, expected, loaded) in cases {
            let (reactors, diagnostics) = load_text(text);
            let got: Vec<String> = diagnostics.iter().map(shown).collect();
            assert_eq!(got, expected, "{text:?}");
            assert_eq!(reactors.len(), loaded, "{text:?}");
        }
        let (merged, _) = load_text("- name: a\n  on: x\n  apply: [nginx]\n  <<: {when: 'true'}\n");
        assert_eq!(merged[0].when.as_deref(), Some("true"), "a merge key's `when` counts");
    }

    /// [`REACTOR_KEYS`] (which the unknown-key help lists) are the keys
    /// [`Authored`] takes as the reactor's own, not as actions.
    #[test]
    fn the_reactor_keys_are_the_authored_fields() {
        let text: String =
            std::iter::once("- ".to_owned()).chain(REACTOR_KEYS.iter().map(|key| format!("{key}: x\n  "))).collect();
        let authored: Vec<Spanned<Authored>> = yaml::parse(Path::new("reactors.yaml"), &text).unwrap();
        let authored = &authored[0].value;
        assert!(authored.actions.is_empty(), "{authored:#?}");
        let fields = [&authored.name, &authored.on, &authored.when, &authored.target, &authored.throttle];
        assert!(fields.iter().all(|f| f.is_some()), "{authored:#?}");
    }

    /// A diagnostic as `line:column: message / help`.
    fn shown(d: &Diagnostic) -> String {
        format!("{}:{}: {} / {}", d.line, d.column, d.message, d.help.as_deref().unwrap_or("-"))
    }
}

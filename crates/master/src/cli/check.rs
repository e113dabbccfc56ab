//! `halite-master check`: load the whole tree and report every problem;
//! with `--event`, a what-if of which reactors an event would fire.

use std::io::Write;
use std::path::{Path, PathBuf};

use anyhow::Context as _;

use crate::config::{DEFAULT_CONFIG, MasterConfig};
use crate::tree::Tree;

/// The tree `check` reads: `--states`; else the configuration's `states`
/// when the configuration exists (a `--config` named but missing is an
/// error); else `./states`.
pub fn states_dir(states: Option<PathBuf>, config: &Path) -> anyhow::Result<PathBuf> {
    Ok(match states {
        Some(states) => states,
        None if config.exists() || config.as_os_str() != DEFAULT_CONFIG => {
            MasterConfig::load(config).context("cannot load the master configuration to find its state tree")?.states
        }
        None => PathBuf::from("states"),
    })
}

/// The facts of every agent the master whose data dir is `data_dir` has
/// seen (its store: PostgreSQL when `config`'s `store:` names it), and a
/// note when there are none to be had.
pub fn known_agents(data_dir: Option<&Path>, config: &Path) -> (Vec<(String, serde_json::Value)>, Option<String>) {
    let Some(data_dir) = data_dir else { return (Vec::new(), None) };
    let store = match super::operator_store(config) {
        Ok(store) => store,
        Err(error) => {
            return (Vec::new(), Some(format!("note: templates not rendered for the known agents: {error:#}")));
        }
    };
    let path = crate::server::store::path(data_dir);
    if store.url.is_none() && !path.exists() {
        return (Vec::new(), None);
    }
    match crate::server::store::records::open(&store, data_dir).and_then(|records| records.agent_facts()) {
        Ok(facts) => (facts, None),
        Err(error) => (Vec::new(), Some(format!("note: templates not rendered for the known agents: {error}"))),
    }
}

/// Prints every diagnostic and a summary; returns whether the tree is clean
/// of errors (and, when `strict`, of warnings too). Templates are rendered
/// for `known` agents (from the master's store) and facts.yaml's samples.
pub fn run(
    states: &Path,
    strict: bool,
    known: &[(String, serde_json::Value)],
    out: &mut impl Write,
) -> std::io::Result<bool> {
    let (tree, mut diagnostics) = Tree::load(states);
    // Templates render per agent, once the tree itself loads cleanly.
    let mut rendered = crate::tree::samples::Rendered::default();
    if !diagnostics.iter().any(halite_state::Diagnostic::is_error) {
        let (counts, problems) = crate::tree::samples::render(&tree, states, known);
        rendered = counts;
        diagnostics.extend(problems);
    }
    for diagnostic in &diagnostics {
        writeln!(out, "{diagnostic}")?;
    }
    let errors = diagnostics.iter().filter(|d| d.is_error()).count();
    let warnings = diagnostics.len() - errors;
    let plural = |n: usize| if n == 1 { "" } else { "s" };
    match (rendered.known, rendered.samples) {
        (0, 0) => {}
        (0, samples) => writeln!(
            out,
            "templates: rendered for {samples} sample agent{} ({})",
            plural(samples),
            crate::tree::samples::FILE
        )?,
        (known, samples) => writeln!(
            out,
            "templates: rendered for {known} known agent{} (the master's store) and {samples} sample agent{} ({})",
            plural(known),
            plural(samples),
            crate::tree::samples::FILE
        )?,
    }
    if errors == 0 && strict && warnings > 0 {
        writeln!(
            out,
            "error: {warnings} warning{} in {}, and --strict refuses warnings",
            if warnings == 1 { "" } else { "s" },
            states.display()
        )?;
        return Ok(false);
    }
    if errors == 0 {
        let warned = match warnings {
            0 => String::new(),
            1 => " (1 warning)".to_owned(),
            n => format!(" ({n} warnings)"),
        };
        writeln!(out, "ok: {}: {}{warned}", states.display(), tree.summary())?;
        for watch in &tree.watches {
            writeln!(
                out,
                "  watch: {} `{}` keeps {}: beacon and reactor `{}`",
                watch.file, watch.state, watch.path, watch.name
            )?;
        }
    } else {
        let files: std::collections::BTreeSet<_> = diagnostics.iter().map(|d| &d.file).collect();
        writeln!(
            out,
            "error: {errors} problem{} in {} file{} of {}",
            if errors == 1 { "" } else { "s" },
            files.len(),
            if files.len() == 1 { "" } else { "s" },
            states.display()
        )?;
    }
    Ok(errors == 0)
}

/// Prints which reactors an event with `tag` and `data` would fire, and
/// what each would do. Acts on nothing.
pub fn what_if(
    states: &Path,
    tag: &str,
    agent: Option<&str>,
    data: &serde_json::Value,
    out: &mut impl Write,
) -> std::io::Result<()> {
    let (tree, _) = Tree::load(states);
    what_if_in(&tree, tag, agent, data, out).map(|_| ())
}

/// [`what_if`] against a loaded tree (the running master's, for the API's
/// `POST /api/v1/tree/check`); returns how many reactors fire directly.
pub fn what_if_in(
    tree: &Tree,
    tag: &str,
    agent: Option<&str>,
    data: &serde_json::Value,
    out: &mut impl Write,
) -> std::io::Result<usize> {
    let agent = agent
        .map(str::to_owned)
        .or_else(|| tag.strip_prefix("halite/beacon/").and_then(|rest| rest.split('/').next()).map(str::to_owned))
        .unwrap_or_default();
    let event = halite_proto::Event::new(tag, agent.as_str(), halite_proto::Value::from_json(data));
    writeln!(out, "what if: {tag} from `{agent}` with data {data}")?;
    let fired = reactions(tree, &event, 0, out)?;
    if fired == 0 {
        writeln!(out, "  no reactor fires")?;
    }
    Ok(fired)
}

/// Prints the reactors `event` fires, `depth` `event` hops from the agent's
/// event, and follows what their `event` actions fire. Returns how many
/// fired at this level.
fn reactions(tree: &Tree, event: &halite_proto::Event, depth: u32, out: &mut impl Write) -> std::io::Result<usize> {
    let indent = "    ".repeat(depth as usize);
    let mut fired = 0;
    for reactor in &tree.reactors {
        match reactor.matches(event) {
            Ok(false) if reactor.tag_matches(&event.tag) => {
                writeln!(
                    out,
                    "{indent}  skips {}: on {} matches, but when {} is false{}",
                    reactor.name,
                    reactor.on,
                    reactor.when.as_deref().unwrap_or_default(),
                    why_false(reactor, event)
                )?;
            }
            Ok(false) => {}
            Ok(true) => {
                fired += 1;
                writeln!(
                    out,
                    "{indent}  fires {}: on {}{}{}",
                    reactor.name,
                    reactor.on,
                    reactor.when.as_ref().map(|w| format!(" when {w}")).unwrap_or_default(),
                    reactor
                        .throttle
                        .map(|t| format!(" (throttle {})", humantime::format_duration(t)))
                        .unwrap_or_default()
                )?;
                for action in &reactor.actions {
                    match (&reactor.target, action.acts_on_agent()) {
                        (Some(target), true) => writeln!(
                            out,
                            "{indent}    {} (target `{}`: on every connected agent it matches instead)",
                            action.describe(),
                            target.as_str()
                        )?,
                        _ => writeln!(out, "{indent}    {}", action.describe())?,
                    }
                    let Some(next) = action.would_fire(&event.agent, event, depth + 1) else { continue };
                    if depth + 1 > crate::server::reactor::actions::event::MAX_DEPTH {
                        writeln!(
                            out,
                            "{indent}      stops: more than {} `event` hops from the agent's event (a loop?); a failed event instead",
                            crate::server::reactor::actions::event::MAX_DEPTH
                        )?;
                    } else if reactions(tree, &next, depth + 1, out)? == 0 {
                        writeln!(out, "{indent}      which no reactor matches")?;
                    }
                }
            }
            Err(error) => writeln!(out, "{indent}  fails {}: {error}", reactor.name)?,
        }
    }
    Ok(fired)
}

/// What the `when` of `reactor` read from the event: each field it names,
/// and its value (or that the event has none).
fn why_false(reactor: &crate::server::reactor::Reactor, event: &halite_proto::Event) -> String {
    let Some(when) = &reactor.when else { return String::new() };
    let read: Vec<String> = crate::tree::lint::Scan::of(when)
        .reads
        .iter()
        .map(|field| match event.data.get(field) {
            Some(value) => format!("data.{field} is {}", value.to_json()),
            None => format!("data.{field} is undefined"),
        })
        .collect();
    if read.is_empty() { String::new() } else { format!(": {}", read.join(", ")) }
}

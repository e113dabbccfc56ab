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

/// Prints every diagnostic and a summary; returns whether the tree is clean
/// of errors.
pub fn run(states: &Path, out: &mut impl Write) -> std::io::Result<bool> {
    let (tree, diagnostics) = Tree::load(states);
    for diagnostic in &diagnostics {
        writeln!(out, "{diagnostic}")?;
    }
    let errors = diagnostics.iter().filter(|d| d.is_error()).count();
    if errors == 0 {
        writeln!(out, "ok: {}: {}", states.display(), tree.summary())?;
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
    let agent = agent
        .map(str::to_owned)
        .or_else(|| tag.strip_prefix("halite/beacon/").and_then(|rest| rest.split('/').next()).map(str::to_owned))
        .unwrap_or_default();
    let event = halite_proto::Event::new(tag, agent.as_str(), halite_proto::Value::from_json(data));
    writeln!(out, "what if: {tag} from `{agent}` with data {data}")?;
    if reactions(&tree, &event, 0, out)? == 0 {
        writeln!(out, "  no reactor fires")?;
    }
    Ok(())
}

/// Prints the reactors `event` fires, `depth` `event` hops from the agent's
/// event, and follows what their `event` actions fire. Returns how many
/// fired at this level.
fn reactions(tree: &Tree, event: &halite_proto::Event, depth: u32, out: &mut impl Write) -> std::io::Result<usize> {
    let indent = "    ".repeat(depth as usize);
    let mut fired = 0;
    for reactor in &tree.reactors {
        match reactor.matches(event) {
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

//! `halite-master adopt AGENT PATH [--into FILE]`: a `file.managed` state
//! for a file no state manages yet, from its current content on the agent
//! (asked of it through the running master), written into the state tree
//! for review in git: the content under `files/adopted/<agent>/<path>`, the
//! state in FILE (default `adopted-<agent>-<path's name>.yaml`). Nothing is
//! overwritten, and nothing is enforced until the operator names the
//! state file in top.yaml.

use std::path::{Component, Path, PathBuf};

use anyhow::Context as _;

use super::exit::Code;
use crate::protocol::Request;

/// What `adopt` writes, relative to the tree.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Plan {
    pub state_file: PathBuf,
    pub source: PathBuf,
    pub state_id: String,
    pub yaml: String,
}

/// `etc-app-local-conf` for `/etc/app/local.conf`: a name for state files
/// and ids, letters, digits, `_` and `-` only (a dot in a state file's
/// name would read as a folder in top.yaml, as in Salt).
fn slug(path: &str) -> String {
    let slug: String = path
        .trim_start_matches('/')
        .chars()
        .map(|c| if c.is_ascii_alphanumeric() || matches!(c, '_' | '-') { c } else { '-' })
        .collect();
    if slug.is_empty() { "root".into() } else { slug }
}

/// Why an `adopt` request cannot be written; names what is wrong.
#[derive(Debug, thiserror::Error)]
pub enum AdoptError {
    #[error(
        "`{path}` is not an absolute path (adopt the file by the path its beacon watches, e.g. /etc/app/local.conf)"
    )]
    NotAbsolute { path: String },
    #[error("--into `{into}` must be a relative `.yaml` file name inside the tree, without `..`")]
    Into { into: PathBuf },
    #[error("`{agent}` is not an agent id (letters, digits, `.`, `_`, `-`)")]
    Agent { agent: String },
    #[error("{path} exists; adopt never overwrites (choose another --into, or remove it)")]
    Exists { path: PathBuf },
}

/// What to write for `path` of `agent` with `mode`.
pub fn plan(agent: &str, path: &str, mode: u32, into: Option<&Path>) -> Result<Plan, AdoptError> {
    if !path.starts_with('/') || Path::new(path).components().any(|c| c == Component::ParentDir) {
        return Err(AdoptError::NotAbsolute { path: path.to_owned() });
    }
    if !halite_proto::event::valid_id(agent) || agent.starts_with('.') {
        return Err(AdoptError::Agent { agent: agent.to_owned() });
    }
    let slug = slug(path);
    let state_file =
        into.map_or_else(|| PathBuf::from(format!("adopted-{}-{slug}.yaml", slug_agent(agent))), Path::to_path_buf);
    let relative_yaml = state_file.extension().is_some_and(|e| e == "yaml")
        && state_file.components().all(|c| matches!(c, Component::Normal(_)));
    if !relative_yaml {
        return Err(AdoptError::Into { into: state_file });
    }
    // Ids are `[A-Za-z0-9._-]` (checked when it connected): a folder name as is.
    let source = Path::new("files/adopted").join(agent).join(path.trim_start_matches('/'));
    let state_id = format!("adopted-{slug}");
    let quoted = |text: &str| serde_json::Value::String(text.to_owned()).to_string();
    let yaml = format!(
        "# Adopted from {agent} by `halite-master adopt`: the file as it was then.\n\
         # Review it, then name this state file in top.yaml for the agents it\n\
         # concerns to enforce it.\n\
         {state_id}:\n  file.managed:\n    path: {}\n    source: {}\n    mode: \"{mode:04o}\"\n",
        quoted(path),
        quoted(&source.display().to_string()),
    );
    Ok(Plan { state_file, source, state_id, yaml })
}

/// An agent id as a file name part.
fn slug_agent(agent: &str) -> String {
    slug(agent)
}

/// Asks the master in `data_dir` for the file and writes the state into
/// `states`; returns the exit code (`exit.rs`): 0, 1 (refused: managed
/// already, not watched, too large, a file in the way) or 4 (the agent is
/// not connected).
pub fn run(data_dir: &Path, states: &Path, agent: &str, path: &str, into: Option<&Path>) -> anyhow::Result<u8> {
    // Checked before the agent is asked: a bad --into costs nothing.
    plan(agent, path, 0o644, into)?;
    let request = Request::Adopt { agent: agent.to_owned(), path: path.to_owned() };
    let response = super::runtime()?.block_on(super::request(data_dir, &request))?;
    if let Some(error) = response.error {
        eprintln!("error: {error}");
        return Ok(if response.no_agent { Code::NoMatch } else { Code::Failed } as u8);
    }
    let content = response.adopted.context("the master sent no content")?;
    let bytes = content.bytes.context("the master sent no content")?;
    let plan = plan(agent, path, content.mode & 0o7777, into)?;
    let state_file = states.join(&plan.state_file);
    let source = states.join(&plan.source);
    for target in [&state_file, &source] {
        if target.symlink_metadata().is_ok() {
            return Err(AdoptError::Exists { path: target.clone() }.into());
        }
    }
    if let Some(parent) = source.parent() {
        std::fs::create_dir_all(parent).with_context(|| format!("cannot create {}", parent.display()))?;
    }
    write_new(&source, &bytes)?;
    if let Err(error) = write_new(&state_file, plan.yaml.as_bytes()) {
        // No half adoption: the content goes with its state.
        let _ = std::fs::remove_file(&source);
        return Err(error);
    }
    println!(
        "wrote {} (state `{}`) and {}; review them, then add `{}` to top.yaml to enforce it",
        state_file.display(),
        plan.state_id,
        source.display(),
        plan.state_file.with_extension("").display()
    );
    Ok(0)
}

/// Creates `path` with `bytes`, refusing if anything is there already.
fn write_new(path: &Path, bytes: &[u8]) -> anyhow::Result<()> {
    use std::io::Write;
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(path)
        .with_context(|| format!("cannot create {} (adopt never overwrites)", path.display()))?;
    file.write_all(bytes).and_then(|()| file.sync_all()).with_context(|| format!("cannot write {}", path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_plan_names_its_files_inside_the_tree_and_quotes_the_path() {
        let made = plan("web01", "/etc/app/local conf", 0o640, None).unwrap();
        assert_eq!(made.state_file, Path::new("adopted-web01-etc-app-local-conf.yaml"));
        assert_eq!(made.source, Path::new("files/adopted/web01/etc/app/local conf"));
        assert_eq!(
            made.yaml.lines().skip(3).collect::<Vec<_>>(),
            [
                "adopted-etc-app-local-conf:",
                "  file.managed:",
                "    path: \"/etc/app/local conf\"",
                "    source: \"files/adopted/web01/etc/app/local conf\"",
                "    mode: \"0640\""
            ]
        );
        let into = plan_into("app.yaml").unwrap();
        assert_eq!(into.state_file, Path::new("app.yaml"));
        for bad in ["../app.yaml", "/tmp/app.yaml", "app.txt"] {
            assert!(matches!(plan_into(bad), Err(AdoptError::Into { .. })), "{bad}");
        }
        assert!(matches!(plan("web01", "etc/x", 0o644, None), Err(AdoptError::NotAbsolute { .. })));
        assert!(matches!(plan("web01", "/etc/../x", 0o644, None), Err(AdoptError::NotAbsolute { .. })));
        assert!(matches!(plan("..", "/etc/x", 0o644, None), Err(AdoptError::Agent { .. })));
    }

    fn plan_into(into: &str) -> Result<Plan, AdoptError> {
        plan("web01", "/etc/x", 0o644, Some(Path::new(into)))
    }
}

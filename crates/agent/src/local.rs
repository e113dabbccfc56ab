//! `halite-agent apply --local DIR`: masterless. Loads and checks a state
//! tree on this host, resolves the states (top.yaml's for this agent, or
//! the ones named), applies them (or only plans them with `--test`) and
//! prints the same report as `halite-master apply`.

use std::path::PathBuf;

use halite_proto::{Id, Job};
use halite_state::report::{AgentReport, Report};
use halite_state::{ApplyEnv, RenderContext, StateTree};

use crate::managed::ManagedFiles;

/// What to apply, and where.
#[derive(Debug, Clone)]
pub struct LocalApply {
    /// The state tree.
    pub tree: PathBuf,
    /// State files to apply; empty: the agent's top.yaml states.
    pub states: Vec<String>,
    /// The agent id that top.yaml's targets are matched against.
    pub id: String,
    /// Prefix for every managed path (`/` on a real host).
    pub root: PathBuf,
    pub test: bool,
    /// Where replaced contents are backed up (the daemon's
    /// `<data_dir>/backup`).
    pub backup_dir: PathBuf,
    /// `backup_max_bytes` of agent.yaml.
    pub backup_max_bytes: u64,
}

#[derive(Debug, thiserror::Error)]
pub enum LocalError {
    /// The tree has errors; each is a `file:line:col: error: …` diagnostic.
    #[error("{}\nthe state tree {tree} has {count} errors; nothing was applied", diagnostics.join("\n"))]
    Tree { tree: PathBuf, count: usize, diagnostics: Vec<String> },
    #[error("{}\nthe states do not render for `{agent}`; nothing was applied", diagnostics.join("\n"))]
    Render { agent: String, diagnostics: Vec<String> },
    #[error("state file `{name}` does not exist in {tree} (state files: {known})")]
    UnknownState { name: String, tree: PathBuf, known: String },
}

/// Loads, resolves and runs the states. Blocking (file I/O, hashing).
pub fn apply(request: &LocalApply) -> Result<Report, LocalError> {
    let (tree, diagnostics) = StateTree::load(&request.tree);
    let errors: Vec<String> = diagnostics.iter().filter(|d| d.is_error()).map(ToString::to_string).collect();
    if !errors.is_empty() {
        return Err(LocalError::Tree { tree: request.tree.clone(), count: errors.len(), diagnostics: errors });
    }
    if let Some(name) = request.states.iter().find(|s| !tree.files.contains_key(*s) && !tree.templates.contains_key(*s))
    {
        return Err(LocalError::UnknownState {
            name: name.clone(),
            tree: request.tree.clone(),
            known: tree.files.keys().cloned().collect::<Vec<_>>().join(", "),
        });
    }
    let facts = crate::facts::gather(&request.id);
    let names = if request.states.is_empty() { tree.states_for(&request.id, &facts) } else { request.states.clone() };
    let calls =
        tree.calls_for(&names, &RenderContext::new(&request.id, &facts)).map_err(|diagnostics| LocalError::Render {
            agent: request.id.clone(),
            diagnostics: diagnostics.iter().map(ToString::to_string).collect(),
        })?;
    // The render named this agent's secret pillar values: its report shows
    // them as `<secret>`, as a daemon's results do (secrets.rs).
    if let Some(secrets) = halite_state::salt::secret::of(&request.id) {
        crate::secrets::learn(&secrets);
    }
    let job = Job { id: Id::new(), cause_event: None, test: request.test, states: calls };
    // No daemon record to keep: a running agent learns the files' desired
    // state from its own jobs.
    let env = ApplyEnv {
        backup_dir: Some(request.backup_dir.clone()),
        backup_max_bytes: request.backup_max_bytes,
        ..ApplyEnv::default()
    };
    let result = crate::jobs::run(&job, &ManagedFiles::in_memory(), &request.root, &env);
    Ok(Report { test: request.test, agents: vec![AgentReport::answered(&request.id, None, &result.results)] })
}

#[cfg(test)]
mod tests {
    use super::*;
    use halite_state::report::OutcomeKind;

    fn tree(files: &[(&str, &str)]) -> tempfile::TempDir {
        let dir = tempfile::tempdir().unwrap();
        for (name, text) in files {
            std::fs::write(dir.path().join(name), text).unwrap();
        }
        dir
    }

    #[test]
    fn applies_top_states_then_finds_nothing_to_do() {
        let states = tree(&[
            ("top.yaml", "'web*': [motd]\n'db*': [other]\n"),
            ("motd.yaml", "motd:\n  file.managed:\n    path: /etc/motd\n    contents: hi\n"),
            ("other.yaml", "other:\n  file.managed:\n    path: /etc/other\n    contents: x\n"),
        ]);
        let root = tempfile::tempdir().unwrap();
        let mut request = LocalApply {
            tree: states.path().into(),
            states: Vec::new(),
            id: "web01".into(),
            root: root.path().into(),
            test: true,
            backup_dir: root.path().join("backup"),
            backup_max_bytes: 1 << 20,
        };
        let report = apply(&request).unwrap();
        assert_eq!(report.agents[0].count(OutcomeKind::WouldChange), 1);
        assert!(!root.path().join("etc/motd").exists(), "test mode changes nothing");
        request.test = false;
        assert_eq!(apply(&request).unwrap().agents[0].count(OutcomeKind::Changed), 1);
        assert_eq!(std::fs::read_to_string(root.path().join("etc/motd")).unwrap(), "hi");
        assert!(!root.path().join("etc/other").exists(), "only this agent's states");
        let again = apply(&request).unwrap();
        assert_eq!(again.agents[0].count(OutcomeKind::Unchanged), 1);
        assert_eq!(again.exit_code(), 0);
    }

    #[test]
    fn a_broken_tree_or_unknown_state_applies_nothing() {
        let states = tree(&[("motd.yaml", "motd:\n  file.manged:\n    path: /etc/motd\n")]);
        let root = tempfile::tempdir().unwrap();
        let request = LocalApply {
            tree: states.path().into(),
            states: vec!["motd".into()],
            id: "a".into(),
            root: root.path().into(),
            test: false,
            backup_dir: root.path().join("backup"),
            backup_max_bytes: 1 << 20,
        };
        let error = apply(&request).unwrap_err().to_string();
        assert!(error.contains("motd.yaml:2:3: error: unknown state kind"), "{error}");
        let states = tree(&[("motd.yaml", "{}\n")]);
        let request = LocalApply { tree: states.path().into(), states: vec!["nope".into()], ..request };
        assert!(apply(&request).unwrap_err().to_string().contains("state file `nope` does not exist"));
    }
}

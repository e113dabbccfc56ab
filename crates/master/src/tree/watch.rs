//! `watch: true` on a file-like state (`file.managed`, any kind with a
//! `FileLike` view): the file heals itself without
//! a hand-written beacon and reactor. For each watched state the tree
//! implies a `file` beacon on its path, sent to every agent whose top.yaml
//! states include it, and a reactor that applies the state's file to the
//! agent that raised the event. Both are named `watch:<state file>:<state id>`
//! (characters a tag cannot carry become `_`); `check` lists them and its
//! what-if shows them firing. Authored names cannot take that form (they
//! may not contain `:`), so implied and authored never clash.

use std::sync::Arc;

use halite_proto::{BeaconSpec, Value};
use halite_state::{Diagnostic, StateTree};

use crate::server::reactor::Reactor;

/// One watched state.
#[derive(Debug, Clone)]
pub struct Watch {
    /// The implied beacon's and reactor's name.
    pub name: String,
    /// The state file (its name in top.yaml).
    pub file: String,
    pub state: String,
    /// The managed path, as authored.
    pub path: String,
    /// The implied reactor, compiled with the tree.
    pub reactor: Arc<Reactor>,
}

fn tag_safe(text: &str) -> String {
    text.chars().map(|c| if c.is_ascii_alphanumeric() || "._-".contains(c) { c } else { '_' }).collect()
}

/// The implied beacon's and reactor's name for a state.
pub fn name(file: &str, state: &str) -> String {
    format!("watch:{}:{}", tag_safe(file), tag_safe(state))
}

/// Every watched state of the tree; a `watch: true` that cannot be honoured
/// is a diagnostic.
pub fn find(states: &StateTree, diagnostics: &mut Vec<Diagnostic>) -> Vec<Watch> {
    let mut watches: Vec<Watch> = Vec::new();
    for (file, state_file) in &states.files {
        for state in state_file.states.iter().filter(|s| s.watch) {
            let id = &state.call.id;
            let error = |message: String| Diagnostic::error(&state_file.path, state.at, message);
            // The kind's own typed view: any file-like kind can be watched.
            let view = halite_state::kinds::file_like(&state.call.kind).and_then(|file| (file.view)(&state.call.args));
            let Some(path) = view.map(|view| view.path) else {
                diagnostics.push(
                    error(format!(
                        "`watch: true` on {} `{id}`: only a kind that keeps a file's content (file.managed) can be watched",
                        state.call.kind
                    ))
                    .help("remove `watch: true`, or write a beacon and a reactor for it"),
                );
                continue;
            };
            let name = name(file, id);
            if watches.iter().any(|w| w.name == name) {
                diagnostics.push(
                    error(format!("`watch: true` on `{id}`: its implied name `{name}` is taken by another state"))
                        .help("state ids that differ only in characters other than letters, digits, '.', '-' and '_' cannot both be watched; rename one"),
                );
                continue;
            }
            let on = halite_proto::event::tag::beacon("*", &name);
            // The whole state file, rendered for the agent and the event like
            // a hand-written `apply: [file]`: templates come out right and an
            // `onchanges` partner (a reload) runs after a restore.
            let action = crate::server::reactor::actions::apply::state_files(vec![file.clone()]);
            let reactor = match Reactor::implied(name.clone(), &on, vec![action]) {
                Ok(reactor) => Arc::new(reactor),
                Err(problem) => {
                    diagnostics.push(error(format!("`watch: true` on `{id}`: {problem}")));
                    continue;
                }
            };
            watches.push(Watch { name, file: file.clone(), state: id.clone(), path: path.to_owned(), reactor });
        }
    }
    watches
}

impl Watch {
    /// The implied `file` beacon.
    pub fn beacon(&self) -> BeaconSpec {
        BeaconSpec {
            name: self.name.clone(),
            kind: "file".into(),
            config: Value::map().with("paths", Value::List(vec![Value::from(self.path.as_str())])),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use halite_proto::Event;

    fn load(files: &[(&str, &str)]) -> (tempfile::TempDir, crate::tree::Tree, Vec<Diagnostic>) {
        let dir = tempfile::tempdir().unwrap();
        for (name, text) in files {
            std::fs::write(dir.path().join(name), text).unwrap();
        }
        let (tree, diagnostics) = crate::tree::Tree::load(dir.path());
        (dir, tree, diagnostics)
    }

    #[test]
    fn a_watched_state_implies_a_beacon_and_a_reactor_for_its_agents_only() {
        let (_dir, tree, diagnostics) = load(&[
            ("top.yaml", "'web*': [web]\n'*': [common]\n"),
            ("web.yaml", "conf:\n  file.managed:\n    path: /etc/web.conf\n    contents: x\n    watch: true\n"),
            ("common.yaml", "motd:\n  file.managed:\n    path: /etc/motd\n    contents: x\n"),
        ]);
        assert!(diagnostics.is_empty(), "{diagnostics:#?}");
        let web = tree.beacons_for("web01", &halite_proto::Value::Null);
        assert_eq!(web.len(), 1);
        assert_eq!(web[0].name, "watch:web:conf");
        assert_eq!(web[0].config.to_json(), serde_json::json!({"paths": ["/etc/web.conf"]}));
        assert!(tree.beacons_for("db01", &halite_proto::Value::Null).is_empty(), "db01 does not have the state");
        let reactor = tree.reactors.iter().find(|r| r.name == "watch:web:conf").unwrap();
        let event = Event::new("halite/beacon/web01/watch:web:conf", "web01", Value::map().with("kind", "modify"));
        assert_eq!(reactor.matches(&event).ok(), Some(true));
        let other = Event::new("halite/beacon/web01/conf", "web01", Value::map());
        assert_eq!(reactor.matches(&other).ok(), Some(false));
        assert_eq!(reactor.actions[0].describe(), "apply [web] to the agent that raised the event");
    }

    /// A new file-like kind is watched with no edit here: `example.file`
    /// (the `example-kinds` feature) is found through its typed view.
    #[test]
    fn a_new_file_like_kind_is_watched_through_its_typed_view() {
        let (_dir, tree, diagnostics) = load(&[
            ("top.yaml", "'*': [e]\n"),
            ("e.yaml", "hello:\n  example.file:\n    path: /etc/hello\n    text: x\n    watch: true\n"),
        ]);
        assert!(diagnostics.is_empty(), "{diagnostics:#?}");
        let beacons = tree.beacons_for("web01", &halite_proto::Value::Null);
        assert_eq!(beacons.len(), 1, "{beacons:?}");
        assert_eq!(beacons[0].config.to_json(), serde_json::json!({"paths": ["/etc/hello"]}));
    }

    #[test]
    fn implied_names_are_tag_safe_and_unique() {
        assert_eq!(name("web", "/etc/nginx.conf"), "watch:web:_etc_nginx.conf");
        let (_dir, _tree, diagnostics) = load(&[(
            "web.yaml",
            "a/b:\n  file.managed:\n    path: /x\n    contents: x\n    watch: true\na_b:\n  file.managed:\n    path: /y\n    contents: x\n    watch: true\n",
        )]);
        assert_eq!(diagnostics.len(), 1, "{diagnostics:#?}");
        assert!(diagnostics[0].message.contains("watch:web:a_b"), "{diagnostics:#?}");
        assert_eq!(diagnostics[0].line, 7);
    }
}

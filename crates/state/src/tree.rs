//! The state tree on disk: `top.yaml` and the state files beside it.
//!
//! Loading never stops at the first problem: it returns the tree with every
//! state that loaded, and a diagnostic for every one that did not.

use std::path::{Path, PathBuf};

use halite_proto::StateCall;
use indexmap::IndexMap;

use crate::diag::{self, Diagnostic, Location};
use crate::kinds::{self, Authored};
use crate::target::Target;
use crate::yaml::{self, Fields, Spanned};

/// Files in the tree's root that are not state files.
pub const TREE_FILES: &[&str] = &["top.yaml", "beacons.yaml", "reactors.yaml"];

/// Extensions of state files; `.sls` so that Salt trees load unchanged.
const STATE_EXTENSIONS: &[&str] = &["yaml", "sls"];

#[derive(Debug, Default)]
pub struct StateTree {
    pub root: PathBuf,
    /// `top.yaml`, in file order.
    pub top: Vec<TopEntry>,
    /// State files by name (`nginx` for `nginx.yaml`), sorted.
    pub files: IndexMap<String, StateFile>,
}

#[derive(Debug)]
pub struct TopEntry {
    pub target: Target,
    pub states: Vec<String>,
}

#[derive(Debug)]
pub struct StateFile {
    pub path: PathBuf,
    pub states: Vec<CompiledState>,
}

/// A state checked and resolved at load time: what the agent will apply.
#[derive(Debug)]
pub struct CompiledState {
    pub call: StateCall,
    pub at: Location,
    /// `watch: true` on the state: keep it enforced.
    pub watch: bool,
}

type StateDecls = IndexMap<Spanned<String>, Spanned<Option<IndexMap<Spanned<String>, Fields>>>>;

impl StateTree {
    pub fn load(root: &Path) -> (StateTree, Vec<Diagnostic>) {
        let mut tree = StateTree { root: root.to_path_buf(), ..StateTree::default() };
        let mut diagnostics = Vec::new();
        tree.load_state_files(&mut diagnostics);
        tree.load_top(&mut diagnostics);
        diag::sort(&mut diagnostics);
        (tree, diagnostics)
    }

    /// The state files top.yaml assigns to `agent`, in order, each once.
    pub fn states_for(&self, agent: &str) -> Vec<String> {
        let mut names: Vec<String> = Vec::new();
        for entry in self.top.iter().filter(|e| e.target.matches(agent)) {
            for name in &entry.states {
                if !names.contains(name) {
                    names.push(name.clone());
                }
            }
        }
        names
    }

    /// The calls of the named state files, in order. Unknown names were
    /// reported at load time and are skipped here.
    pub fn calls(&self, names: &[String]) -> Vec<StateCall> {
        names
            .iter()
            .filter_map(|name| self.files.get(name))
            .flat_map(|file| file.states.iter().map(|s| s.call.clone()))
            .collect()
    }

    fn load_state_files(&mut self, diagnostics: &mut Vec<Diagnostic>) {
        let entries = match std::fs::read_dir(&self.root) {
            Ok(entries) => entries,
            Err(e) => {
                diagnostics.push(
                    Diagnostic::error(&self.root, Location::FILE, format!("cannot read the state tree: {e}"))
                        .help("point --states (or `states:` in master.yaml) at the directory that holds top.yaml"),
                );
                return;
            }
        };
        let mut paths: Vec<PathBuf> = entries.filter_map(Result::ok).map(|e| e.path()).collect();
        paths.sort();
        for path in paths {
            let file_name = path.file_name().and_then(|n| n.to_str()).unwrap_or_default();
            let is_state_file = path.is_file()
                && !TREE_FILES.contains(&file_name)
                && path.extension().and_then(|e| e.to_str()).is_some_and(|e| STATE_EXTENSIONS.contains(&e));
            if !is_state_file {
                continue;
            }
            let name = path.file_stem().and_then(|s| s.to_str()).unwrap_or_default().to_owned();
            if let Some(state_file) = self.load_state_file(&path, diagnostics) {
                if self.files.contains_key(&name) {
                    diagnostics.push(
                        Diagnostic::error(&path, Location::FILE, format!("a second state file named `{name}`"))
                            .help("keep one of NAME.yaml and NAME.sls"),
                    );
                    continue;
                }
                self.files.insert(name, state_file);
            }
        }
    }

    fn load_state_file(&self, path: &Path, diagnostics: &mut Vec<Diagnostic>) -> Option<StateFile> {
        let text = read(path, diagnostics)?;
        let decls: StateDecls = match yaml::parse(path, &text) {
            Ok(decls) => decls,
            Err(diagnostic) => {
                diagnostics.push(diagnostic);
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
                    diagnostics.push(
                        Diagnostic::error(
                            path,
                            kind_at,
                            format!("unknown state kind `{}` in state `{}`", kind_name.value, id.value),
                        )
                        .help(format!("known kinds: {}", kinds::names().join(", "))),
                    );
                    continue;
                };
                let authored = Authored { id: &id.value, fields, tree_root: &self.root };
                match (kind.resolve)(&authored) {
                    Ok(args) => states.push(CompiledState {
                        call: StateCall { id: id.value.clone(), kind: kind.name.to_owned(), args },
                        at: kind_at,
                        watch: fields.get("watch").is_some_and(|w| w.value == serde_json::Value::Bool(true)),
                    }),
                    Err(problems) => diagnostics.extend(problems.into_iter().map(|problem| {
                        let diagnostic = Diagnostic::error(path, problem.at.unwrap_or(kind_at), problem.message);
                        match problem.help {
                            Some(help) => diagnostic.help(help),
                            None => diagnostic,
                        }
                    })),
                }
            }
        }
        Some(StateFile { path: path.to_path_buf(), states })
    }

    fn load_top(&mut self, diagnostics: &mut Vec<Diagnostic>) {
        let path = self.root.join("top.yaml");
        if !path.exists() {
            return;
        }
        let Some(text) = read(&path, diagnostics) else { return };
        let mut top: IndexMap<Spanned<String>, Spanned<serde_json::Value>> = match yaml::parse(&path, &text) {
            Ok(top) => top,
            Err(diagnostic) => {
                diagnostics.push(diagnostic);
                return;
            }
        };
        // Salt's environment wrapper: `base: {target: [states]}`.
        if top.len() == 1 && top.keys().next().is_some_and(|k| k.value == "base") {
            match yaml::parse::<IndexMap<String, IndexMap<Spanned<String>, Spanned<serde_json::Value>>>>(&path, &text) {
                Ok(mut wrapped) => top = wrapped.swap_remove("base").unwrap_or_default(),
                Err(diagnostic) => {
                    diagnostics.push(diagnostic);
                    return;
                }
            }
        }
        for (target_text, states) in top {
            let at = yaml::location(&target_text);
            let target = match Target::parse(&target_text.value) {
                Ok(target) => target,
                Err(message) => {
                    diagnostics.push(
                        Diagnostic::error(&path, at, message)
                            .help("a target is a glob on the agent id, e.g. 'web*' or '*'"),
                    );
                    continue;
                }
            };
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

    /// True when a state file exists but failed to load (already reported).
    pub fn failed_file_exists(&self, name: &str) -> bool {
        STATE_EXTENSIONS.iter().any(|ext| self.root.join(format!("{name}.{ext}")).is_file())
    }

    /// True when `name` is a state file of the tree, loaded or not.
    pub fn has_state_file(&self, name: &str) -> bool {
        self.files.contains_key(name) || self.failed_file_exists(name)
    }
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
        assert_eq!(tree.states_for("web01"), ["common", "web"]);
        assert_eq!(tree.states_for("db01"), ["common"]);
        let calls = tree.calls(&tree.states_for("web01"));
        assert_eq!(calls.len(), 2);
        assert_eq!(calls[1].args.get("path").and_then(|p| p.as_str()), Some("/etc/nginx.conf"));
    }

    #[test]
    fn salt_base_wrapper_is_accepted() {
        let (_dir, tree, diagnostics) = tree(&[("top.yaml", "base:\n  '*':\n    - common\n"), ("common.yaml", "{}\n")]);
        assert!(diagnostics.is_empty(), "{diagnostics:#?}");
        assert_eq!(tree.states_for("x"), ["common"]);
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
}

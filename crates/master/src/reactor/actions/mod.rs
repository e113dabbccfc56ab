//! Reactor actions. An action is one file in this folder plus one line in
//! [`ACTIONS`]: its key in reactors.yaml, a summary, an example, a compile
//! step run when the tree loads, and what it does when a reaction runs.

use std::fmt::Debug;
use std::sync::Arc;

use futures_util::future::BoxFuture;
use halite_proto::Event;
use halite_state::StateTree;

use crate::jobs::Jobs;
use crate::tree::Tree;

pub mod apply;

/// Every action, by its key in reactors.yaml. Keep sorted by name.
pub static ACTIONS: &[&ActionKind] = &[&apply::KIND];

/// Compiles an action's authored value against the state tree.
pub type Compile = fn(&serde_json::Value, &StateTree) -> Result<Box<dyn Action>, String>;

#[derive(Debug)]
pub struct ActionKind {
    pub name: &'static str,
    pub summary: &'static str,
    /// A whole reactor using the action; the registry test compiles it.
    pub example: &'static str,
    /// Checks the authored value against the state tree.
    pub compile: Compile,
}

pub fn find(name: &str) -> Option<&'static ActionKind> {
    ACTIONS.iter().copied().find(|a| a.name == name)
}

pub fn names() -> Vec<&'static str> {
    ACTIONS.iter().map(|a| a.name).collect()
}

/// What an action may use while it runs.
#[derive(Debug, Clone)]
pub struct Context {
    /// The tree as it was when the event arrived.
    pub tree: Arc<Tree>,
    pub jobs: Jobs,
}

pub trait Action: Send + Sync + Debug {
    /// One line for logs and `check`'s what-if.
    fn describe(&self) -> String;
    /// Acts for `agent` on `event`; the text says what happened.
    fn run<'a>(
        &'a self,
        context: &'a Context,
        agent: &'a str,
        event: &'a Event,
    ) -> BoxFuture<'a, Result<String, String>>;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_unique_sorted_and_examples_compile() {
        let names = names();
        let mut sorted = names.clone();
        sorted.sort_unstable();
        sorted.dedup();
        assert_eq!(names, sorted);
        for action in ACTIONS {
            let dir = tempfile::tempdir().unwrap();
            std::fs::write(dir.path().join("nginx.yaml"), "c:\n  file.managed:\n    path: /x\n    contents: x\n")
                .unwrap();
            std::fs::write(dir.path().join("reactors.yaml"), action.example).unwrap();
            let (tree, diagnostics) = Tree::load(dir.path());
            assert!(diagnostics.is_empty(), "{}: {diagnostics:#?}", action.name);
            assert_eq!(tree.reactors.len(), 1);
        }
    }

    #[test]
    fn every_action_file_is_registered() {
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("src/reactor/actions");
        for entry in std::fs::read_dir(dir).unwrap() {
            let name = entry.unwrap().file_name().into_string().unwrap();
            let Some(stem) = name.strip_suffix(".rs") else { continue };
            if stem != "mod" {
                assert!(find(stem).is_some(), "src/reactor/actions/{name} is not registered in ACTIONS");
            }
        }
    }
}

//! Helpers for the kinds' own tests: resolve authored arguments the way
//! the tree does, and apply a call twice on a real file in a temporary
//! directory (test mode first, which must change nothing).

use std::path::Path;

use halite_proto::{Outcome, StateCall};

use crate::{ApplyEnv, Diagnostic, StateTree, apply_call};

/// Every diagnostic of a tree holding one state file with `text`.
pub fn load(text: &str) -> Vec<Diagnostic> {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("s.yaml"), text).unwrap();
    StateTree::load(dir.path()).1
}

/// The call `kind` resolves from `fields` (YAML mapping lines, unindented),
/// with `name: /placeholder` unless the fields name the path.
pub fn resolved(kind: &str, fields: &str) -> StateCall {
    resolved_in(kind, fields, &[])
}

/// The same, with files in the state tree (`(relative path, content)`).
pub fn resolved_in(kind: &str, fields: &str, files: &[(&str, &str)]) -> StateCall {
    let dir = tempfile::tempdir().unwrap();
    for (name, content) in files {
        let path = dir.path().join(name);
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(path, content).unwrap();
    }
    let named = fields.lines().any(|l| l.starts_with("name:") || l.starts_with("path:"));
    let mut text = format!("t:\n  {kind}:\n");
    if !named {
        text.push_str("    name: /placeholder\n");
    }
    for line in fields.lines() {
        text.push_str(&format!("    {line}\n"));
    }
    std::fs::write(dir.path().join("s.yaml"), &text).unwrap();
    let (tree, diagnostics) = StateTree::load(dir.path());
    assert!(diagnostics.is_empty(), "{text}\n{diagnostics:#?}");
    tree.files["s"].states[0].call.clone()
}

/// The changes an outcome reports; panics on a failure.
pub fn changes(outcome: Outcome) -> Vec<String> {
    match outcome {
        Outcome::Changed { changes } | Outcome::WouldChange { changes } => changes,
        Outcome::Unchanged => Vec::new(),
        Outcome::Failed { error } => panic!("the state failed: {error}"),
    }
}

/// Applies `call` to the file `f` in a fresh directory (holding `initial`
/// when given): test mode (which must leave the file as it was), then
/// twice for real. Returns the changes of both runs and the final text.
pub fn apply_twice(call: &StateCall, initial: Option<&str>) -> (Vec<String>, Vec<String>, String) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("f");
    if let Some(initial) = initial {
        std::fs::write(&path, initial).unwrap();
    }
    let call = at_path(call, &path);
    let env = ApplyEnv::default();
    let would = changes(apply_call(&call, true, &env).outcome);
    assert_eq!(std::fs::read_to_string(&path).ok().as_deref(), initial, "test mode changed the file");
    let first = changes(apply_call(&call, false, &env).outcome);
    assert_eq!(would, first, "test mode and apply disagree");
    let second = changes(apply_call(&call, false, &env).outcome);
    (first, second, std::fs::read_to_string(&path).unwrap_or_default())
}

/// `call` with its `path` argument set to `path`.
pub fn at_path(call: &StateCall, path: &Path) -> StateCall {
    let mut call = call.clone();
    call.args = call.args.clone().with("path", path.to_str().unwrap());
    call
}

/// tests/salt/kinds.sls, every kind of issue #19 in Salt's form, loads
/// unchanged (tests/e2e/kinds.rs applies it).
#[test]
fn the_salt_form_file_of_the_new_kinds_loads_unchanged() {
    // kinds.sls and the files it names, alone: tests/salt also holds the
    // Salt corpus, whose trees are not part of this one.
    let salt = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../tests/salt");
    let dir = tempfile::tempdir().unwrap();
    std::fs::copy(salt.join("kinds.sls"), dir.path().join("kinds.sls")).unwrap();
    copy_dir(&salt.join("files"), &dir.path().join("files"));
    let (tree, diagnostics) = StateTree::load(dir.path());
    assert!(diagnostics.is_empty(), "{diagnostics:#?}");
    let kinds: std::collections::BTreeSet<&str> =
        tree.files["kinds"].states.iter().map(|s| s.call.kind.as_str()).collect();
    for kind in crate::kinds::names() {
        let old = ["cmd.run", "file.absent", "file.directory", "file.symlink", "pkg.installed", "service.dead"];
        assert!(old.contains(&kind) || kinds.contains(kind), "tests/salt/kinds.sls does not use {kind}");
    }
}

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for entry in std::fs::read_dir(from).unwrap() {
        let path = entry.unwrap().path();
        let target = to.join(path.file_name().unwrap());
        if path.is_dir() {
            copy_dir(&path, &target);
        } else {
            std::fs::copy(&path, &target).unwrap();
        }
    }
}

/// README's "Kinds" table lists every kind, with an example.
#[test]
fn every_kind_is_in_the_readme_table() {
    let readme = std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("../../README.md")).unwrap();
    let table = &readme[readme.find("### Kinds").unwrap()..];
    let table = &table[..table.find("\n\n```").unwrap_or(table.len())];
    for kind in crate::kinds::names() {
        let row = table.lines().find(|l| l.starts_with(&format!("| `{kind}` |")));
        let row = row.unwrap_or_else(|| panic!("README's kinds table has no row for {kind}"));
        assert_eq!(row.matches(" | ").count(), 2, "{kind}: a row is kind | arguments | example: {row}");
    }
}

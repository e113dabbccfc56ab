//! Expected-output tests for the errors of Salt's state language: each
//! directory of `tests/salt/errors/` is a state tree, and `NAME.expected`
//! beside it is exactly what loading it reports (`file:line:col: error:
//! …` and its `help:`), paths relative to `tests/salt/errors/`.
//! `HALITE_BLESS=1` rewrites the expected files (review the diff).

use std::path::{Path, PathBuf};

use crate::StateTree;

fn errors_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../tests/salt/errors")
}

/// A tree's diagnostics, as `check` finds them: at load, then (for Jinja
/// state files) rendered for a sample agent `ref`, a Debian host.
fn diagnostics(dir: &Path) -> Vec<crate::Diagnostic> {
    let (tree, mut diagnostics) = StateTree::load(dir);
    if tree.renders_per_agent() {
        match tree.for_agent("ref", &halite_proto::Value::map().with("os", "debian")) {
            Ok(rendered) => diagnostics.extend(rendered.errors()),
            Err(more) => diagnostics.extend(more),
        }
    }
    diagnostics
}

/// What `check` prints for a tree's diagnostics, paths made relative.
fn report(dir: &Path) -> String {
    let base = format!("{}/", errors_dir().display());
    diagnostics(dir).iter().map(|d| format!("{d}\n").replace(&base, "")).collect()
}

#[test]
fn every_salt_error_has_its_exact_message() {
    let mut cases: Vec<PathBuf> = std::fs::read_dir(errors_dir())
        .unwrap()
        .filter_map(Result::ok)
        .map(|e| e.path())
        .filter(|p| p.is_dir())
        .collect();
    cases.sort();
    assert!(cases.len() >= 14, "{cases:?}");
    let bless = std::env::var_os("HALITE_BLESS").is_some();
    let mut failures = Vec::new();
    for case in cases {
        let expected_path = case.with_extension("expected");
        let actual = report(&case);
        assert!(!actual.is_empty(), "{}: no error reported", case.display());
        if bless {
            std::fs::write(&expected_path, &actual).unwrap();
            continue;
        }
        let expected = std::fs::read_to_string(&expected_path)
            .unwrap_or_else(|e| panic!("{}: {e} (HALITE_BLESS=1 writes it)", expected_path.display()));
        if actual != expected {
            failures.push(format!("{}:\n--- expected\n{expected}--- actual\n{actual}", case.display()));
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

/// `check` on each tree of the corpus (`tests/salt/corpus/NAME/`, real
/// Salt state files): exactly the diagnostics in `NAME.check` (empty when
/// the tree loads cleanly).
#[test]
fn the_corpus_loads_with_exactly_the_recorded_diagnostics() {
    let corpus = errors_dir().join("../corpus");
    let mut trees: Vec<PathBuf> =
        std::fs::read_dir(&corpus).unwrap().filter_map(Result::ok).map(|e| e.path()).filter(|p| p.is_dir()).collect();
    trees.sort();
    assert!(trees.len() >= 5, "{trees:?}");
    let bless = std::env::var_os("HALITE_BLESS").is_some();
    let mut failures = Vec::new();
    for tree in trees {
        assert!(
            tree.join("SOURCE").is_file() && tree.join("LICENSE").is_file(),
            "{}: SOURCE and LICENSE",
            tree.display()
        );
        let diagnostics = diagnostics(&tree);
        let base = format!("{}/", tree.parent().unwrap().display());
        let actual: String = diagnostics.iter().map(|d| format!("{d}\n").replace(&base, "")).collect();
        let expected_path = tree.with_extension("check");
        if bless {
            std::fs::write(&expected_path, &actual).unwrap();
            continue;
        }
        let expected = std::fs::read_to_string(&expected_path)
            .unwrap_or_else(|e| panic!("{}: {e} (HALITE_BLESS=1 writes it)", expected_path.display()));
        if actual != expected {
            failures.push(format!("{}:\n--- expected\n{expected}--- actual\n{actual}", tree.display()));
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

//! `halite-master check` against trees with known problems: the output must
//! match `expected.txt` beside each tree exactly. Run with BLESS=1 to
//! rewrite the expected files after an intended change.

// Test code outside `#[test]` functions (helpers, a bench): a panic is a
// failed test, which is what `unwrap` says here.
#![allow(clippy::unwrap_used)]

use std::path::Path;
use std::process::Command;

/// halite's own binary, run as an operator would: not a program the code
/// under test starts, so not through the spawner.
#[allow(clippy::disallowed_methods)]
fn master() -> Command {
    Command::new(env!("CARGO_BIN_EXE_halite-master"))
}

fn check_case(case: &str, expect_success: bool) {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/check").join(case);
    let output = master()
        .args(["check", "--states", "tree"])
        .current_dir(&dir)
        .env_remove("HALITE_STATES")
        .output()
        .expect("run halite-master check");
    let stdout = String::from_utf8(output.stdout).expect("utf-8");
    let expected_path = dir.join("expected.txt");
    if std::env::var_os("BLESS").is_some() {
        std::fs::write(&expected_path, &stdout).unwrap();
    }
    let expected = std::fs::read_to_string(&expected_path).unwrap_or_default();
    assert_eq!(stdout, expected, "output of `check` for {case} (BLESS=1 rewrites {})", expected_path.display());
    assert_eq!(output.status.success(), expect_success, "exit status for {case}");
}

#[test]
fn a_tree_with_errors_reports_every_one_with_its_position() {
    check_case("errors", false);
}

#[test]
fn the_example_tree_is_clean() {
    check_case("clean", true);
}

#[test]
fn help_teaches_the_exit_codes() {
    let output = master().arg("--help").output().unwrap();
    let help = String::from_utf8(output.stdout).unwrap();
    assert!(help.contains("Exit codes"), "{help}");
    for command in ["run", "check", "demo"] {
        assert!(help.contains(command), "--help lists {command}");
    }
}

#[test]
fn what_if_shows_which_reactors_fire_and_what_they_do() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/check/clean");
    let run = |data: &str| {
        let output = master()
            .args(["check", "--states", "tree", "--event", "halite/beacon/web01/nginx-conf", "--data", data])
            .current_dir(&dir)
            .env_remove("HALITE_STATES")
            .output()
            .unwrap();
        assert!(output.status.success());
        String::from_utf8(output.stdout).unwrap()
    };
    let modify = run(r#"{"kind": "modify"}"#);
    assert!(
        modify.contains("fires restore-nginx") && modify.contains("apply [nginx] to the agent that raised the event"),
        "{modify}"
    );
    assert!(!modify.contains("restore-motd"), "{modify}");
    let create = run(r#"{"kind": "create"}"#);
    assert!(create.contains("no reactor fires"), "{create}");
}

#[test]
fn watch_true_is_listed_and_its_reactor_shows_in_the_what_if() {
    check_case("watch", true);
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/check/watch");
    let output = master()
        .args(["check", "--states", "tree", "--event", "halite/beacon/web01/watch:app:app-conf", "--data", "{}"])
        .current_dir(&dir)
        .env_remove("HALITE_STATES")
        .output()
        .unwrap();
    let out = String::from_utf8(output.stdout).unwrap();
    assert!(out.contains("fires watch:app:app-conf"), "{out}");
    assert!(out.contains("apply [app] to the agent that raised the event"), "{out}");
}

/// The what-if shows every action, follows `event` actions down the chain
/// and stops a loop where the master would: `actions/whatif.txt`.
#[test]
fn what_if_follows_event_chains_and_shows_every_action() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/check/actions");
    let mut text = String::new();
    for (tag, data) in [("halite/beacon/web01/motd", r#"{"kind": "delete"}"#), ("ops/ping", "{}")] {
        let output = master()
            .args(["check", "--states", "tree", "--event", tag, "--data", data, "--agent", "web01"])
            .current_dir(&dir)
            .env_remove("HALITE_STATES")
            .output()
            .unwrap();
        assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stdout));
        text.push_str(&String::from_utf8(output.stdout).unwrap());
    }
    let expected_path = dir.join("whatif.txt");
    if std::env::var_os("BLESS").is_some() {
        std::fs::write(&expected_path, &text).unwrap();
    }
    assert_eq!(text, std::fs::read_to_string(&expected_path).unwrap_or_default(), "BLESS=1 rewrites whatif.txt");
}

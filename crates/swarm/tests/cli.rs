//! The swarm's command line. Being an integration test of this package
//! also makes `cargo test --workspace` build the `halite-swarm` binary,
//! which the e2e suite's cluster test runs.

use std::process::Command;

/// halite's own binary, run as an operator would: not a program the code
/// under test starts, so not through the spawner.
#[allow(clippy::disallowed_methods)]
fn swarm() -> Command {
    Command::new(env!("CARGO_BIN_EXE_halite-swarm"))
}

#[test]
fn help_lists_the_scenarios_and_the_exit_status() {
    let output = swarm().arg("--help").output().unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(output.status.success(), "{stdout}");
    for scenario in ["storm", "ingest", "reconnect", "footprint", "cluster"] {
        assert!(stdout.contains(scenario), "no {scenario} in:\n{stdout}");
    }
    assert!(stdout.contains("Exit status"), "{stdout}");
    assert!(!stdout.contains("worker"), "the internal worker is listed:\n{stdout}");
}

#[test]
fn the_cluster_help_says_where_the_database_comes_from() {
    let output = swarm().args(["cluster", "--help"]).output().unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(stdout.contains("--store") && stdout.contains("HALITE_PG_PASSWORD"), "{stdout}");
}

#[test]
fn a_bad_argument_exits_2_and_names_it() {
    let output = swarm().args(["cluster", "--masters", "three"]).output().unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(2), "{stderr}");
    assert!(stderr.contains("--masters") && stderr.contains("three"), "{stderr}");
}

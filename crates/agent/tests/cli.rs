//! The agent's command line: help and configuration errors.

use std::process::Command;

/// halite's own binary, run as an operator would: not a program the code
/// under test starts, so not through the spawner.
#[allow(clippy::disallowed_methods)]
fn agent() -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_halite-agent"));
    command.env_remove("HALITE_CONFIG").env_remove("HALITE_DATA_DIR").env_remove("HALITE_MASTER");
    command
}

#[test]
fn help_teaches_the_exit_codes() {
    let output = agent().arg("--help").output().unwrap();
    assert!(String::from_utf8_lossy(&output.stdout).contains("Exit codes"));
}

#[test]
fn a_missing_config_is_named() {
    let output = agent().args(["run", "--config", "/nonexistent/agent.yaml"]).output().unwrap();
    assert_eq!(output.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&output.stderr).contains("/nonexistent/agent.yaml"));
}

#[test]
fn an_unknown_key_is_named_with_its_line() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("agent.yaml");
    std::fs::write(&config, "id: web01\nmaster_url: tcp://127.0.0.1:4510\n").unwrap();
    let output = agent().arg("run").arg("--config").arg(&config).output().unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("master_url") && stderr.contains("agent.yaml:2:"), "{stderr}");
}

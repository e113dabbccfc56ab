//! `halite-master check` against trees with known problems: the output must
//! match `expected.txt` beside each tree exactly. Run with BLESS=1 to
//! rewrite the expected files after an intended change.

use std::path::Path;
use std::process::Command;

fn check_case(case: &str, expect_success: bool) {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/check").join(case);
    let output = Command::new(env!("CARGO_BIN_EXE_halite-master"))
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
    let output = Command::new(env!("CARGO_BIN_EXE_halite-master")).arg("--help").output().unwrap();
    let help = String::from_utf8(output.stdout).unwrap();
    assert!(help.contains("Exit codes"), "{help}");
    for command in ["run", "check", "demo"] {
        assert!(help.contains(command), "--help lists {command}");
    }
}

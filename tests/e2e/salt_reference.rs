//! Salt's reference runs: each tree of tests/salt/corpus with a recorded
//! Salt result (`tests/salt/expected/TREE.txt`, written by
//! tests/salt/record.sh with salt-call 3008) is applied with `halite-agent
//! apply --local --root DIR`; the directories, files, modes, contents and
//! command runs (in order) must be the ones Salt produced.

use std::path::{Path, PathBuf};

use halite_e2e::{CommandOutput, binaries, process};
use sha2::{Digest, Sha256};

fn salt_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("salt")
}

/// Where the reference trees keep every path (record.sh mounts a tmpfs
/// over /srv for Salt; halite's `--root` moves it under a temp dir).
const PLACE: &str = "srv/halite-ref";

/// The same lines as tests/salt/summarize.py: directories and files under
/// `place` (os.walk's top-down order, names sorted), then the commands run.
pub(crate) fn files_summary(place: &Path) -> Vec<String> {
    fn walk(dir: &Path, place: &Path, lines: &mut Vec<String>) {
        use std::os::unix::fs::PermissionsExt;
        let mut entries: Vec<PathBuf> = std::fs::read_dir(dir).unwrap().map(|e| e.unwrap().path()).collect();
        entries.sort();
        let mode = |p: &Path| std::fs::symlink_metadata(p).unwrap().permissions().mode() & 0o7777;
        let relative = |p: &Path| p.strip_prefix(place).unwrap().display().to_string();
        let dirs: Vec<&PathBuf> = entries.iter().filter(|p| p.is_dir()).collect();
        for d in &dirs {
            lines.push(format!("dir {} {:04o}", relative(d), mode(d)));
        }
        for f in entries.iter().filter(|p| !p.is_dir()) {
            let digest = Sha256::digest(std::fs::read(f).unwrap());
            let hex: String = digest.iter().map(|b| format!("{b:02x}")).collect();
            lines.push(format!("file {} {:04o} {hex}", relative(f), mode(f)));
        }
        for d in dirs {
            walk(d, place, lines);
        }
    }
    let mut lines = Vec::new();
    if place.is_dir() {
        walk(place, place, &mut lines);
    }
    lines
}

/// `ran COMMAND` for each command that ran (Salt's `name`), and `failed …`
/// for a failed state, from `apply --json`.
fn runs(report: &serde_json::Value) -> Vec<String> {
    let states = report["agents"][0]["states"].as_array().expect("states");
    let mut lines = Vec::new();
    for state in states {
        let (kind, id) = (state["kind"].as_str().unwrap(), state["id"].as_str().unwrap());
        match state["outcome"].as_str().unwrap() {
            "failed" => lines.push(format!("failed {kind} {id}: {}", state["error"])),
            "changed" if kind.starts_with("cmd.") => {
                let change = state["changes"][0].as_str().unwrap();
                // "ran `/bin/sh -c 'LINE'`: exit 0": the line as Salt names it.
                let line = change
                    .strip_prefix("ran `/bin/sh -c ")
                    .and_then(|l| l.split_once("`: ").map(|(line, _)| line))
                    .unwrap_or(change);
                let line = line.strip_prefix('\'').and_then(|l| l.strip_suffix('\'')).unwrap_or(line);
                lines.push(format!("ran {line}"));
            }
            _ => {}
        }
    }
    lines
}

async fn apply(tree: &Path, root: &Path) -> CommandOutput {
    let mut command = process(binaries().agent);
    command
        .args(["apply", "--json", "--id", "ref", "--config", "/nonexistent/agent.yaml", "--local"])
        .arg(tree)
        .arg("--root")
        .arg(root);
    CommandOutput::of(command).await.unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn halite_applies_the_reference_trees_as_salt_did() {
    let mut expected_files: Vec<PathBuf> = std::fs::read_dir(salt_dir().join("expected"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "txt"))
        .collect();
    expected_files.sort();
    assert!(!expected_files.is_empty(), "no recorded Salt runs in tests/salt/expected");
    for expected_path in expected_files {
        let name = expected_path.file_stem().unwrap().to_str().unwrap().to_owned();
        let tree = salt_dir().join("corpus").join(&name);
        let root = tempfile::tempdir().unwrap();
        let out = apply(&tree, root.path()).await;
        let report: serde_json::Value =
            serde_json::from_str(&out.stdout).unwrap_or_else(|e| panic!("{name}: {e}: {out:?}"));
        let mut actual = files_summary(&root.path().join(PLACE));
        actual.extend(runs(&report));
        let expected = std::fs::read_to_string(&expected_path).unwrap();
        let mut expected: Vec<&str> = expected.lines().collect();
        // Documented differences: lines Salt produced that halite does not,
        // each of which must still be in the recording.
        let differences = std::fs::read_to_string(expected_path.with_extension("differences")).unwrap_or_default();
        for line in differences.lines().filter(|l| !l.is_empty() && !l.starts_with('#')) {
            let at = expected.iter().position(|e| *e == line);
            assert!(at.is_some(), "{name}: `{line}` of {name}.differences is not in Salt's recording");
            expected.remove(at.unwrap());
        }
        assert_eq!(actual, expected, "{name}: halite (left) and Salt (right) differ; {out:?}");

        // A second apply changes no file (commands without a condition
        // run again, in Salt too).
        let before = files_summary(&root.path().join(PLACE));
        let again = apply(&tree, root.path()).await;
        assert_eq!(files_summary(&root.path().join(PLACE)), before, "{name}: {again:?}");
    }
}

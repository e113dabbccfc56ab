//! `exec`: run a command on the master with the event as JSON on stdin.
//!
//! The command is authored in the tree and split like a shell would
//! (`shlex`), but no shell runs it: the program gets its arguments as a
//! vector and the event only on stdin and in `HALITE_*` variables, never in
//! a command line (SPEC §5). A relative program is a file in the state tree
//! (it cannot leave it); an absolute one is used as it is.
//!
//! At most [`CONCURRENCY`] commands run at once across the master; a
//! reaction that finds every permit taken waits for one (its agent's later
//! reactions wait behind it and coalesce; other agents are not held up
//! unless they also `exec`). A command that outlives its `timeout` is
//! killed. Its output is kept up to [`OUTPUT_LIMIT`] bytes per stream (the
//! rest is read and thrown away, so the command never blocks on a full
//! pipe); a non-zero exit fails the action with the end of its stderr.

use std::path::PathBuf;
use std::process::Stdio;
use std::time::Duration;

use futures_util::future::BoxFuture;
use halite_proto::Event;
use halite_state::StateTree;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWriteExt};
use tokio::process::Command;
use tokio::sync::Semaphore;

use super::{Action, ActionKind, Context, authored_command, clip, in_tree};

pub static KIND: ActionKind = ActionKind {
    name: "exec",
    summary: "Run a command on the master; the event as JSON on its stdin.",
    example: "- name: scale-out\n  on: halite/beacon/*/cpu-hot\n  when: \"data.state == 'above'\"\n  exec:\n    cmd: /bin/cat\n    timeout: 10s\n",
    compile,
};

/// Commands running at once, master-wide.
pub const CONCURRENCY: usize = 8;
/// How long a command may run unless its reactor says otherwise.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(30);
/// Output kept per stream; the rest is read and dropped.
pub const OUTPUT_LIMIT: usize = 64 * 1024;
/// How much of stdout or stderr goes into a log line or a `failed` event.
const REPORT_LIMIT: usize = 2048;

static PERMITS: Semaphore = Semaphore::const_new(CONCURRENCY);

#[derive(Debug)]
struct Exec {
    /// As authored, for logs and `check`.
    cmd: String,
    program: PathBuf,
    args: Vec<String>,
    /// The state tree: the command's working directory.
    cwd: PathBuf,
    timeout: Duration,
}

fn compile(value: &serde_json::Value, tree: &StateTree) -> Result<Box<dyn Action>, String> {
    let command =
        authored_command(value, DEFAULT_TIMEOUT, "`exec: hooks/x.sh ARGS` or `exec: {cmd: …, timeout: 10s}`")?;
    let (program, args) = command.words.split_first().ok_or("the command is empty")?;
    let program = if program.starts_with('/') {
        PathBuf::from(program)
    } else {
        let path = in_tree(&tree.root, program)
            .map_err(|e| format!("{e}; a relative command is a file in the state tree (or give an absolute path)"))?;
        check_executable(&path, program)?;
        path
    };
    Ok(Box::new(Exec {
        program,
        args: args.to_vec(),
        cwd: tree.root.clone(),
        timeout: command.timeout,
        cmd: command.cmd,
    }))
}

fn check_executable(path: &std::path::Path, authored: &str) -> Result<(), String> {
    use std::os::unix::fs::PermissionsExt;
    let metadata = std::fs::metadata(path).map_err(|e| format!("`{authored}`: {e}"))?;
    if !metadata.is_file() || metadata.permissions().mode() & 0o111 == 0 {
        return Err(format!("`{authored}` is not an executable file (chmod +x it)"));
    }
    Ok(())
}

impl Action for Exec {
    fn describe(&self) -> String {
        format!("exec `{}` on the master, the event as JSON on stdin (timeout {:?})", self.cmd, self.timeout)
    }

    fn run<'a>(
        &'a self,
        _context: &'a Context,
        agent: &'a str,
        event: &'a Event,
    ) -> BoxFuture<'a, Result<String, String>> {
        Box::pin(async move {
            let _permit = PERMITS.acquire().await.map_err(|e| format!("exec `{}`: {e}", self.cmd))?;
            let mut child = Command::new(&self.program)
                .args(&self.args)
                .current_dir(&self.cwd)
                .env("HALITE_TAG", &event.tag)
                .env("HALITE_AGENT", agent)
                .env("HALITE_EVENT_ID", event.id.to_string())
                .stdin(Stdio::piped())
                .stdout(Stdio::piped())
                .stderr(Stdio::piped())
                .kill_on_drop(true)
                .spawn()
                .map_err(|e| format!("exec `{}`: cannot start {}: {e}", self.cmd, self.program.display()))?;
            let input = event.to_json().to_string();
            let stdin = child.stdin.take();
            let (stdout, stderr) = (child.stdout.take(), child.stderr.take());
            let finished = tokio::time::timeout(self.timeout, async {
                let feed = async move {
                    // A command that does not read its stdin closes the pipe:
                    // that is its business, not a failure.
                    if let Some(mut stdin) = stdin {
                        let _ = stdin.write_all(input.as_bytes()).await;
                    }
                };
                let ((), out, err, status) =
                    tokio::join!(feed, read_bounded(stdout), read_bounded(stderr), child.wait());
                (out, err, status)
            })
            .await;
            let Ok((out, err, status)) = finished else {
                let _ = child.kill().await;
                return Err(format!("exec `{}`: killed after its timeout of {:?}", self.cmd, self.timeout));
            };
            let status = status.map_err(|e| format!("exec `{}`: {e}", self.cmd))?;
            let out = String::from_utf8_lossy(&out);
            let err = String::from_utf8_lossy(&err);
            if !status.success() {
                let stderr = clip(err.trim(), REPORT_LIMIT);
                return Err(format!("exec `{}`: {status}; stderr: {stderr}", self.cmd));
            }
            if !out.trim().is_empty() || !err.trim().is_empty() {
                tracing::info!(agent, event = %event.id, cmd = %self.cmd, stdout = %clip(out.trim(), REPORT_LIMIT), stderr = %clip(err.trim(), REPORT_LIMIT), "Hook output.");
            }
            Ok(format!("exec `{}`: exit 0", self.cmd))
        })
    }
}

/// Reads a stream to its end, keeping the first [`OUTPUT_LIMIT`] bytes.
async fn read_bounded(stream: Option<impl AsyncRead + Unpin>) -> Vec<u8> {
    let Some(mut stream) = stream else { return Vec::new() };
    let mut kept = Vec::new();
    let mut buffer = [0u8; 8192];
    loop {
        match stream.read(&mut buffer).await {
            Ok(0) | Err(_) => return kept,
            Ok(n) => {
                let room = OUTPUT_LIMIT.saturating_sub(kept.len());
                kept.extend_from_slice(&buffer[..n.min(room)]);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::PermissionsExt;

    use halite_proto::Value;

    use super::*;
    use crate::server::reactor::actions::test_context;

    fn tree_with_hook(script: &str, mode: u32) -> (tempfile::TempDir, StateTree) {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir(dir.path().join("hooks")).unwrap();
        let hook = dir.path().join("hooks/hook.sh");
        std::fs::write(&hook, script).unwrap();
        std::fs::set_permissions(&hook, std::fs::Permissions::from_mode(mode)).unwrap();
        let tree = StateTree { root: dir.path().to_path_buf(), ..StateTree::default() };
        (dir, tree)
    }

    #[test]
    fn commands_are_checked_when_the_tree_loads() {
        let (_dir, tree) = tree_with_hook("#!/bin/sh\n", 0o755);
        let cases = [
            ("hooks/hook.sh --flag 'two words'", None),
            ("/bin/true", None),
            ("hooks/missing.sh", Some("does not exist")),
            ("../outside.sh", Some("without `..`")),
            ("hooks/hook.sh 'open", Some("open quote")),
            ("", Some("empty")),
        ];
        for (cmd, error) in cases {
            match (compile(&serde_json::json!(cmd), &tree), error) {
                (Ok(_), None) => {}
                (Err(e), Some(wanted)) => assert!(e.contains(wanted), "{cmd}: {e}"),
                (Ok(_), Some(wanted)) => panic!("{cmd}: compiled, wanted `{wanted}`"),
                (Err(e), None) => panic!("{cmd}: {e}"),
            }
        }
        let (_dir, tree) = tree_with_hook("#!/bin/sh\n", 0o644);
        let error = compile(&serde_json::json!("hooks/hook.sh"), &tree).unwrap_err();
        assert!(error.contains("chmod +x"), "{error}");
        let error = compile(&serde_json::json!({"cmd": "/bin/true", "timeout": "soon"}), &tree).unwrap_err();
        assert!(error.contains("not a duration"), "{error}");
    }

    async fn run(script: &str, timeout: &str) -> (Result<String, String>, tempfile::TempDir, Event) {
        let (dir, tree) = tree_with_hook(script, 0o755);
        let action =
            compile(&serde_json::json!({"cmd": "hooks/hook.sh 'an arg; $(rm -rf /)'", "timeout": timeout}), &tree)
                .unwrap();
        let event = Event::new("halite/beacon/web01/cpu-hot", "web01", Value::map().with("state", "'; reboot"));
        let context = test_context().await;
        let result = action.run(&context, "web01", &event).await;
        (result, dir, event)
    }

    #[tokio::test]
    async fn the_hook_gets_the_event_on_stdin_and_its_arguments_as_written() {
        let script = "#!/bin/sh\ncat > stdin.json\nprintf '%s|%s|%s|%s' \"$1\" \"$HALITE_TAG\" \"$HALITE_AGENT\" \"$HALITE_EVENT_ID\" > env.txt\n";
        let (result, dir, event) = run(script, "10s").await;
        assert!(result.is_ok(), "{result:?}");
        let stdin: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(dir.path().join("stdin.json")).unwrap()).unwrap();
        assert_eq!(stdin, event.to_json());
        let env = std::fs::read_to_string(dir.path().join("env.txt")).unwrap();
        assert_eq!(env, format!("an arg; $(rm -rf /)|halite/beacon/web01/cpu-hot|web01|{}", event.id));
    }

    #[tokio::test]
    async fn a_failing_hook_fails_the_action_with_its_stderr() {
        let (result, _dir, _) = run("#!/bin/sh\necho 'no capacity left' >&2\nexit 3\n", "10s").await;
        let error = result.unwrap_err();
        assert!(error.contains("exit status: 3") && error.contains("no capacity left"), "{error}");
    }

    #[tokio::test]
    async fn a_hook_past_its_timeout_is_killed() {
        let (result, _dir, _) = run("#!/bin/sh\nexec sleep 30\n", "200ms").await;
        let error = result.unwrap_err();
        assert!(error.contains("killed after its timeout"), "{error}");
    }

    #[tokio::test]
    async fn output_is_bounded_and_a_hook_that_ignores_stdin_is_fine() {
        let (result, _dir, _) = run("#!/bin/sh\nhead -c 1000000 /dev/zero\n", "10s").await;
        assert!(result.is_ok(), "{result:?}");
    }
}

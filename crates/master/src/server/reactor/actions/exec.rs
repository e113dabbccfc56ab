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
//! unless they also `exec`). The command runs through the workspace's one
//! spawner (`halite_state::command`): one that outlives its `timeout` is
//! killed with everything it started (its process group); once it exits,
//! a background process it left holding its output is not waited for
//! (beyond a short grace) and is left running. Its output is kept up to
//! [`OUTPUT_LIMIT`] bytes per stream (the rest is read and thrown away, so
//! the command never blocks on a full pipe); a non-zero exit fails the
//! action with the end of its stderr.

use std::path::PathBuf;
use std::time::Duration;

use futures_util::future::BoxFuture;
use halite_proto::Event;
use halite_state::StateTree;
use halite_state::command::{self, Spec};
use tokio::sync::Semaphore;

use super::{Action, ActionError, ActionKind, Context, authored_command, clip};

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
pub const OUTPUT_LIMIT: usize = command::CAPTURE_LIMIT;
/// How much of stdout or stderr goes into a log line or a `failed` event.
const REPORT_LIMIT: usize = 2048;

static PERMITS: Semaphore = Semaphore::const_new(CONCURRENCY);

/// What a hook gets of the master's environment, by default: enough to
/// run programs and speak the locale, nothing that could hold a secret.
/// master.yaml's `exec_env` adds names ([`allow_env`]).
pub const DEFAULT_ENV: &[&str] =
    &["PATH", "LANG", "LANGUAGE", "LC_ALL", "LC_CTYPE", "TZ", "HOME", "USER", "LOGNAME", "TMPDIR"];

/// Names added to [`DEFAULT_ENV`] by master.yaml's `exec_env`, set once at
/// start.
static EXTRA_ENV: std::sync::OnceLock<Vec<String>> = std::sync::OnceLock::new();

/// Lets hooks also see these variables of the master's environment
/// (master.yaml `exec_env`). The first call wins; later ones are ignored.
pub fn allow_env(names: Vec<String>) {
    let _ = EXTRA_ENV.set(names);
}

/// The master's variables a hook may see, then the event's `HALITE_*`.
fn hook_env(agent: &str, event: &Event) -> Vec<(String, String)> {
    let extra = EXTRA_ENV.get().map_or(&[][..], Vec::as_slice);
    let allowed = DEFAULT_ENV.iter().copied().chain(extra.iter().map(String::as_str));
    let mut env: Vec<(String, String)> =
        allowed.filter_map(|name| std::env::var(name).ok().map(|value| (name.to_owned(), value))).collect();
    env.extend([
        ("HALITE_TAG".to_owned(), event.tag.clone()),
        ("HALITE_AGENT".to_owned(), agent.to_owned()),
        ("HALITE_EVENT_ID".to_owned(), event.id.to_string()),
    ]);
    env
}

/// Why an `exec` action does not compile or failed; names the command.
#[derive(Debug, thiserror::Error)]
pub enum ExecError {
    #[error("{source}; a relative command is a file in the state tree (or give an absolute path)")]
    NotInTree { source: halite_state::paths::TreePathError },
    #[error("`{program}`: {source}")]
    Program { program: String, source: std::io::Error },
    #[error("`{program}` is not an executable file (chmod +x it)")]
    NotExecutable { program: String },
    #[error("`{path}` is not a UTF-8 path", path = path.display())]
    NotUtf8 { path: PathBuf },
    #[error("exec `{cmd}`: {source}")]
    Permits { cmd: String, source: tokio::sync::AcquireError },
    #[error("exec `{cmd}`: {source}")]
    Spawn { cmd: String, source: command::CommandError },
    #[error("exec `{cmd}`: killed after its timeout of {timeout:?}")]
    TimedOut { cmd: String, timeout: Duration },
    /// Its stderr is not here (it may hold secrets): it is in the job
    /// `kept` names.
    #[error("exec `{cmd}`: {}{kept}", ended(*code))]
    Failed { cmd: String, code: Option<i32>, kept: String },
}

/// How a command that did not succeed ended.
fn ended(code: Option<i32>) -> String {
    code.map_or_else(|| "killed by a signal".to_owned(), |code| format!("exit status: {code}"))
}

#[derive(Debug)]
struct Exec {
    /// As authored, for logs and `check`.
    cmd: String,
    /// The program (an absolute path) and its arguments, the state tree as
    /// working directory, the timeout; each run adds the event.
    spec: Spec,
}

fn compile(value: &serde_json::Value, tree: &StateTree) -> Result<Box<dyn Action>, ActionError> {
    let command =
        authored_command(value, DEFAULT_TIMEOUT, "`exec: hooks/x.sh ARGS` or `exec: {cmd: …, timeout: 10s}`")?;
    let (program, args) = command.words.split_first().ok_or(super::CommandError::Empty)?;
    let program = if program.starts_with('/') {
        PathBuf::from(program)
    } else {
        let path =
            halite_state::paths::in_tree(&tree.root, program).map_err(|source| ExecError::NotInTree { source })?;
        check_executable(&path, program)?;
        path
    };
    // The spawner takes words; a path that is not UTF-8 cannot be one.
    let program = program.to_str().ok_or_else(|| ExecError::NotUtf8 { path: program.clone() })?;
    let mut spec = Spec::new(std::iter::once(program).chain(args.iter().map(String::as_str)));
    spec.cwd = Some(tree.root.clone());
    spec.timeout = Some(command.timeout);
    Ok(Box::new(Exec { spec, cmd: command.cmd }))
}

fn check_executable(path: &std::path::Path, authored: &str) -> Result<(), ExecError> {
    use std::os::unix::fs::PermissionsExt;
    let metadata =
        std::fs::metadata(path).map_err(|source| ExecError::Program { program: authored.to_owned(), source })?;
    if !metadata.is_file() || metadata.permissions().mode() & 0o111 == 0 {
        return Err(ExecError::NotExecutable { program: authored.to_owned() });
    }
    Ok(())
}

impl Action for Exec {
    fn describe(&self) -> String {
        format!("exec `{}` on the master, the event as JSON on stdin (timeout {:?})", self.cmd, self.timeout())
    }

    fn run<'a>(
        &'a self,
        context: &'a Context,
        agent: &'a str,
        event: &'a Event,
    ) -> BoxFuture<'a, Result<String, ActionError>> {
        Box::pin(async move {
            let _permit =
                PERMITS.acquire().await.map_err(|source| ExecError::Permits { cmd: self.cmd.clone(), source })?;
            let mut spec = self.spec.clone();
            // Only `HALITE_*` and the allow-list: the master's environment
            // may hold secrets a hook (and its stderr, which is published)
            // must not see.
            spec.clear_env = true;
            spec.env.extend(hook_env(agent, event));
            spec.stdin = Some(event.to_json().to_string().into_bytes());
            let output = command::run_async(&spec, None)
                .await
                .map_err(|source| ExecError::Spawn { cmd: self.cmd.clone(), source })?;
            let (out, err) = (output.stdout.trim(), output.stderr.trim());
            match (output.timed_out, output.code) {
                (true, _) => {
                    return Err(ExecError::TimedOut { cmd: self.cmd.clone(), timeout: self.timeout() }.into());
                }
                (false, Some(0)) => {}
                (false, code) => {
                    // The hook's stderr may hold what its environment holds
                    // (secrets): it goes to the store, the event names the
                    // job that keeps it.
                    let error = format!("{}; stderr: {}", ended(code), clip(err, REPORT_LIMIT));
                    let outcome = halite_proto::Outcome::Failed { error };
                    let kept = context.jobs.record_on_master(event.id, "exec", outcome).await;
                    return Err(ExecError::Failed { cmd: self.cmd.clone(), code, kept: kept_in(kept) }.into());
                }
            }
            let kept = if out.is_empty() && err.is_empty() {
                None
            } else {
                let changes = vec![
                    format!("stdout: {}", clip(out, REPORT_LIMIT)),
                    format!("stderr: {}", clip(err, REPORT_LIMIT)),
                ];
                context.jobs.record_on_master(event.id, "exec", halite_proto::Outcome::Changed { changes }).await
            };
            if let Some(jid) = kept {
                tracing::info!(agent, event = %event.id, cmd = %self.cmd, job = %jid, "Hook output kept in the job store.");
            }
            Ok(format!("exec `{}`: exit 0{}", self.cmd, kept_in(kept)))
        })
    }
}

/// Where a hook's output was kept, for its event.
fn kept_in(job: Option<halite_proto::Id>) -> String {
    job.map_or_else(String::new, |jid| format!(" (output in job {jid}: `halite-master jobs {jid}`)"))
}

impl Exec {
    fn timeout(&self) -> Duration {
        self.spec.timeout.unwrap_or(DEFAULT_TIMEOUT)
    }
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::PermissionsExt;

    use halite_proto::Value;

    use super::*;
    use crate::server::reactor::actions::test_context_with_store;

    fn tree_with_hook(script: &str, mode: u32) -> (tempfile::TempDir, StateTree) {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir(dir.path().join("hooks")).unwrap();
        let hook = dir.path().join("hooks/hook.sh");
        std::fs::write(&hook, script).unwrap();
        std::fs::set_permissions(&hook, std::fs::Permissions::from_mode(mode)).unwrap();
        let tree = StateTree::empty(dir.path());
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
            match (compile(&serde_json::json!(cmd), &tree).map_err(|e| e.to_string()), error) {
                (Ok(_), None) => {}
                (Err(e), Some(wanted)) => assert!(e.contains(wanted), "{cmd}: {e}"),
                (Ok(_), Some(wanted)) => panic!("{cmd}: compiled, wanted `{wanted}`"),
                (Err(e), None) => panic!("{cmd}: {e}"),
            }
        }
        let (_dir, tree) = tree_with_hook("#!/bin/sh\n", 0o644);
        let error = compile(&serde_json::json!("hooks/hook.sh"), &tree).unwrap_err().to_string();
        assert!(error.contains("chmod +x"), "{error}");
        let error =
            compile(&serde_json::json!({"cmd": "/bin/true", "timeout": "soon"}), &tree).unwrap_err().to_string();
        assert!(error.contains("not a duration"), "{error}");
    }

    async fn run(script: &str, timeout: &str) -> (Result<String, String>, tempfile::TempDir, Event) {
        let (dir, tree) = tree_with_hook(script, 0o755);
        let action =
            compile(&serde_json::json!({"cmd": "hooks/hook.sh 'an arg; $(rm -rf /)'", "timeout": timeout}), &tree)
                .unwrap();
        let event = Event::new("halite/beacon/web01/cpu-hot", "web01", Value::map().with("state", "'; reboot"));
        let context = test_context_with_store(&dir.path().join("halite.db")).await;
        let result = action.run(&context, "web01", &event).await.map_err(|e| e.to_string());
        context.jobs.flush_store().await;
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

    /// The test process has cargo's variables (`CARGO_PKG_NAME`, …): a
    /// hook sees none of them, only the allow-list and `HALITE_*`.
    #[tokio::test]
    async fn a_hook_gets_only_halite_variables_and_the_allow_list() {
        assert!(std::env::var("CARGO_PKG_NAME").is_ok(), "the test needs a variable outside the allow-list");
        let (result, dir, _) = run(
            "#!/bin/sh
env > env.txt
",
            "10s",
        )
        .await;
        assert!(result.is_ok(), "{result:?}");
        let env = std::fs::read_to_string(dir.path().join("env.txt")).unwrap();
        let names: Vec<&str> = env.lines().filter_map(|line| line.split_once('=').map(|(name, _)| name)).collect();
        assert!(names.contains(&"HALITE_AGENT") && names.contains(&"PATH"), "{names:?}");
        assert!(!names.contains(&"CARGO_PKG_NAME"), "inherited the master's environment: {names:?}");
        let unexpected: Vec<&&str> = names
            .iter()
            .filter(|name| {
                !name.starts_with("HALITE_") && !DEFAULT_ENV.contains(name) && !["PWD", "SHLVL", "_"].contains(name)
            })
            .collect();
        assert!(unexpected.is_empty(), "{unexpected:?}");
    }

    #[tokio::test]
    async fn a_failing_hook_fails_the_action_its_stderr_kept_in_the_store_not_in_the_error() {
        let (result, dir, _) = run("#!/bin/sh\necho 'no capacity left' >&2\nexit 3\n", "10s").await;
        let error = result.unwrap_err();
        assert!(error.contains("exit status: 3") && !error.contains("no capacity left"), "{error}");
        let jid = error.split("output in job ").nth(1).and_then(|t| t.split(':').next()).expect(&error);
        let reader = crate::server::store::Reader::open(&dir.path().join("halite.db")).unwrap();
        let (record, report) = reader.job(jid).unwrap().expect("the hook's job record");
        assert_eq!(record.target, "master");
        assert!(format!("{report:?}").contains("no capacity left"), "{report:?}");
    }

    /// A hook that leaves a background child holding its output finishes
    /// when the hook exits, not when the child does (nor at the timeout),
    /// with the output that arrived.
    #[tokio::test]
    async fn a_background_child_holding_the_output_does_not_hold_the_hook() {
        let cases = [
            ("#!/bin/sh\nsleep 30 &\necho hi\n", None),
            ("#!/bin/sh\nsleep 30 &\necho 'no capacity left' >&2\nexit 3\n", Some("exit status: 3")),
        ];
        for (script, error) in cases {
            let (result, _dir, _) = tokio::time::timeout(Duration::from_secs(10), run(script, "60s"))
                .await
                .expect("the hook waited for its background child");
            match (result, error) {
                (Ok(done), None) => assert!(done.contains("exit 0"), "{done}"),
                (Err(e), Some(wanted)) => assert!(e.contains(wanted), "{e}"),
                (result, _) => panic!("{script}: {result:?}"),
            }
        }
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

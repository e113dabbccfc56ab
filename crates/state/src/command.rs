//! The one process spawner of the workspace: state kinds (`cmd.run`, its
//! `unless`/`onlyif` probes, `systemctl`, `dpkg-query`, `apt-get`), the
//! agent's `service` beacon and the master's `exec` hooks all start programs
//! here, and nowhere else (clippy's `disallowed-methods` keeps it so).
//!
//! A program and its arguments, never a shell unless asked for; a working
//! directory, extra environment, optional bytes for stdin; a timeout after
//! which the program and everything it started (its process group) are
//! killed; stdout and stderr captured up to [`CAPTURE_LIMIT`] bytes each
//! (the rest is read and dropped, so a chatty program never blocks on a full
//! pipe).
//!
//! When the program exits, its output is awaited for [`OUTPUT_GRACE`] at
//! most: a background process it left behind (a daemon it started, a
//! `sleep 30 &`) may hold the pipes open for ever, and must not hold the
//! caller too. What arrived is kept; the process is left running.
//!
//! [`run`] blocks (the agent runs jobs and beacon samples on blocking
//! threads); [`run_async`] is the same run for tokio callers, and dropping
//! its future kills the process group.

use std::ffi::OsString;
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex, mpsc};
use std::time::Duration;

use nix::sys::signal::{Signal, killpg};
use nix::unistd::Pid;

/// Bytes of stdout (and of stderr) kept per run.
pub const CAPTURE_LIMIT: usize = 64 * 1024;

/// How long output is awaited once the command has exited.
pub const OUTPUT_GRACE: Duration = Duration::from_secs(2);

/// Why a program could not be run to its end; names the command.
#[derive(Debug, thiserror::Error)]
pub enum CommandError {
    #[error("cannot split `{command}` into words (unbalanced quotes?)")]
    Split { command: String },
    #[error("empty command")]
    Empty,
    #[error("cannot run `{command}`: {source}")]
    Spawn { command: String, source: std::io::Error },
    #[error("`{command}`: pid out of range")]
    Pid { command: String },
    #[error("`{command}`: cannot start a thread for it: {source}")]
    Thread { command: String, source: std::io::Error },
    #[error("cannot wait for `{command}`: {source}")]
    Wait { command: String, source: std::io::Error },
    #[error("`{command}`: the thread waiting for it failed: {reason}")]
    Waiter { command: String, reason: String },
}

/// A program to run.
#[derive(Debug, Clone, PartialEq)]
pub struct Spec {
    /// The program, then its arguments.
    pub argv: Vec<String>,
    pub cwd: Option<PathBuf>,
    /// Added to (or replacing entries of) the caller's environment.
    pub env: Vec<(String, String)>,
    /// Start from an empty environment: the program gets `env` only (the
    /// master's hooks, which must not inherit its secrets).
    pub clear_env: bool,
    pub timeout: Option<Duration>,
    /// Written to the program's stdin, which is then closed; without it,
    /// stdin is `/dev/null`.
    pub stdin: Option<Vec<u8>>,
}

impl Spec {
    pub fn new<S: Into<String>>(argv: impl IntoIterator<Item = S>) -> Self {
        Spec {
            argv: argv.into_iter().map(Into::into).collect(),
            cwd: None,
            env: Vec::new(),
            clear_env: false,
            timeout: None,
            stdin: None,
        }
    }

    /// `command` split like a POSIX shell would split words (quotes
    /// respected, nothing expanded), or run by `/bin/sh -c` when `shell`.
    pub fn from_command(command: &str, shell: bool) -> Result<Self, CommandError> {
        if shell {
            return Ok(Spec::new(["/bin/sh", "-c", command]));
        }
        let argv = shlex::split(command).ok_or_else(|| CommandError::Split { command: command.to_owned() })?;
        if argv.is_empty() {
            return Err(CommandError::Empty);
        }
        Ok(Spec::new(argv))
    }

    /// For messages: the command as an operator would type it.
    pub fn display(&self) -> String {
        shlex::try_join(self.argv.iter().map(String::as_str)).unwrap_or_else(|_| self.argv.join(" "))
    }
}

/// What a run produced.
#[derive(Debug, Clone, PartialEq)]
pub struct Output {
    /// `None` when killed by a signal (including the timeout's).
    pub code: Option<i32>,
    pub timed_out: bool,
    pub stdout: String,
    pub stderr: String,
}

impl Output {
    pub fn success(&self) -> bool {
        self.code == Some(0)
    }

    /// One line for a state's error: how it ended and the tail of stderr.
    pub fn failure(&self, command: &str) -> String {
        let how = match (self.timed_out, self.code) {
            (true, _) => "timed out and was killed".to_owned(),
            (false, Some(code)) => format!("exited with {code}"),
            (false, None) => "was killed by a signal".to_owned(),
        };
        let detail = if self.stderr.trim().is_empty() { self.stdout.trim() } else { self.stderr.trim() };
        let tail: Vec<&str> = detail.lines().rev().take(3).collect::<Vec<_>>().into_iter().rev().collect();
        if tail.is_empty() { format!("`{command}` {how}") } else { format!("`{command}` {how}: {}", tail.join(" / ")) }
    }
}

/// Where kinds look programs up. Tests put stand-ins first without
/// touching their own process's PATH (tests run in parallel).
pub fn resolve_program(program: &str, path: Option<&OsString>) -> PathBuf {
    if program.contains('/') {
        return PathBuf::from(program);
    }
    let search = path.cloned().or_else(|| std::env::var_os("PATH")).unwrap_or_default();
    std::env::split_paths(&search)
        .map(|dir| dir.join(program))
        .find(|candidate| is_executable(candidate))
        .unwrap_or_else(|| PathBuf::from(program))
}

fn is_executable(path: &Path) -> bool {
    use std::os::unix::fs::PermissionsExt;
    path.metadata().is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
}

/// Runs `spec` to completion (or to its timeout). `path` is the PATH used
/// to find the program and given to it.
pub fn run(spec: &Spec, path: Option<&OsString>) -> Result<Output, CommandError> {
    start(spec, path)?.finish()
}

/// [`run`] for async callers: the waiting happens on a blocking thread.
/// Dropping the returned future before it completes kills the program's
/// process group, so an abandoned run leaves nothing behind.
pub async fn run_async(spec: &Spec, path: Option<&OsString>) -> Result<Output, CommandError> {
    let started = start(spec, path)?;
    let mut abandon = Abandon(Some(started.wake_tx.clone()));
    let finished = tokio::task::spawn_blocking(move || started.finish()).await;
    abandon.0 = None;
    finished.map_err(|e| CommandError::Waiter { command: spec.display(), reason: e.to_string() })?
}

/// Tells a running [`Started::finish`] that its caller went away.
struct Abandon(Option<mpsc::Sender<Wake>>);

impl Drop for Abandon {
    fn drop(&mut self) {
        if let Some(wake) = self.0.take() {
            let _ = wake.send(Wake::Abandoned);
        }
    }
}

/// What [`Started::finish`] is woken by (besides its timeout).
enum Wake {
    /// The program exited; it is not reaped yet.
    Exited,
    /// The caller of [`run_async`] dropped its future.
    Abandoned,
}

/// A program started and not yet reaped.
///
/// Only this struct reaps the program (the waiter thread uses `WNOWAIT`), so
/// until it does, the program's pid — which is also its process group's id —
/// cannot be given to another process: killing the group never reaches a
/// stranger. Dropped unfinished, it kills the group and reaps.
struct Started {
    child: Child,
    /// The program's pid and process group.
    group: Pid,
    display: String,
    timeout: Option<Duration>,
    wake: mpsc::Receiver<Wake>,
    /// Cloned for the waiter thread and for [`Abandon`]; kept here so that
    /// `wake` never disconnects.
    wake_tx: mpsc::Sender<Wake>,
    stdout: Option<Capture>,
    stderr: Option<Capture>,
    reaped: bool,
}

fn start(spec: &Spec, path: Option<&OsString>) -> Result<Started, CommandError> {
    use std::os::unix::process::CommandExt;

    let display = spec.display();
    let (program, args) = spec.argv.split_first().ok_or(CommandError::Empty)?;
    // This module is the one spawner (clippy.toml).
    #[allow(clippy::disallowed_methods)]
    let mut command = Command::new(resolve_program(program, path));
    let stdin = if spec.stdin.is_some() { Stdio::piped() } else { Stdio::null() };
    command.args(args).stdin(stdin).stdout(Stdio::piped()).stderr(Stdio::piped());
    // Its own process group, so the timeout kills what it started too.
    command.process_group(0);
    if spec.clear_env {
        command.env_clear();
    }
    if let Some(path) = path {
        command.env("PATH", path);
    }
    command.envs(spec.env.iter().map(|(k, v)| (k, v)));
    if let Some(cwd) = &spec.cwd {
        command.current_dir(cwd);
    }
    let mut child = command.spawn().map_err(|source| CommandError::Spawn { command: display.clone(), source })?;
    let group = Pid::from_raw(i32::try_from(child.id()).map_err(|_| CommandError::Pid { command: display.clone() })?);
    let (stdin, stdout, stderr) = (child.stdin.take(), child.stdout.take(), child.stderr.take());
    let (wake_tx, wake) = mpsc::channel();
    let mut started = Started {
        child,
        group,
        display,
        timeout: spec.timeout,
        wake,
        wake_tx,
        stdout: None,
        stderr: None,
        reaped: false,
    };
    // From here on, an early return drops `started`, which kills the group.
    let failed = |source: std::io::Error| CommandError::Thread { command: spec.display(), source };
    if let (Some(mut pipe), Some(input)) = (stdin, spec.stdin.clone()) {
        // A program that does not read its stdin closes the pipe: that is
        // its business, not a failure.
        thread("halite-cmd-stdin", move || {
            let _ = pipe.write_all(&input);
        })
        .map_err(failed)?;
    }
    started.stdout = stdout.map(Capture::start).transpose().map_err(failed)?;
    started.stderr = stderr.map(Capture::start).transpose().map_err(failed)?;
    let exited = started.wake_tx.clone();
    thread("halite-cmd-wait", move || {
        use nix::sys::wait::{Id, WaitPidFlag, waitid};
        // Waits for the exit without reaping (see `Started`).
        while let Err(nix::errno::Errno::EINTR) = waitid(Id::Pid(group), WaitPidFlag::WEXITED | WaitPidFlag::WNOWAIT) {}
        let _ = exited.send(Wake::Exited);
    })
    .map_err(failed)?;
    Ok(started)
}

impl Started {
    fn finish(mut self) -> Result<Output, CommandError> {
        let first = match self.timeout {
            None => self.wake.recv().map_err(|_| mpsc::RecvTimeoutError::Disconnected),
            Some(limit) => self.wake.recv_timeout(limit),
        };
        let (timed_out, abandoned) = match first {
            Ok(Wake::Exited) => (false, false),
            Ok(Wake::Abandoned) => (false, true),
            Err(mpsc::RecvTimeoutError::Timeout) => (true, false),
            // `self.wake_tx` keeps the channel open.
            Err(mpsc::RecvTimeoutError::Disconnected) => unreachable!("the wake channel closed"),
        };
        if timed_out || abandoned {
            self.kill_group();
            // Reaped only once the waiter has seen the exit, so that it never
            // waits on a pid given to someone else.
            while let Ok(Wake::Abandoned) = self.wake.recv() {}
        }
        // A daemon the command started may hold the pipes open for ever: take
        // what has arrived within a grace period and leave its reader behind.
        // Nobody reads an abandoned run's output.
        let grace = if abandoned { Duration::ZERO } else { OUTPUT_GRACE };
        let deadline = std::time::Instant::now() + grace;
        let stdout = self.stdout.take().map(|c| c.collect(deadline)).unwrap_or_default();
        let stderr = self.stderr.take().map(|c| c.collect(deadline)).unwrap_or_default();
        let status = self.child.wait().map_err(|source| CommandError::Wait { command: self.display.clone(), source });
        self.reaped = true;
        Ok(Output { code: status?.code(), timed_out, stdout, stderr })
    }

    fn kill_group(&self) {
        // The leader is not reaped yet (see `Started`): the group is ours.
        // Already gone is fine: it ended as the timeout expired.
        let _ = killpg(self.group, Signal::SIGKILL);
    }
}

impl Drop for Started {
    fn drop(&mut self) {
        if !self.reaped {
            self.kill_group();
            let _ = self.child.wait();
        }
    }
}

fn thread(name: &str, work: impl FnOnce() + Send + 'static) -> std::io::Result<()> {
    std::thread::Builder::new().name(name.to_owned()).spawn(work).map(drop)
}

/// A pipe read to its end on a thread of its own, keeping the first
/// [`CAPTURE_LIMIT`] bytes.
struct Capture {
    kept: Arc<Mutex<Captured>>,
    /// Closed when the pipe reached its end.
    done: mpsc::Receiver<()>,
}

#[derive(Default)]
struct Captured {
    bytes: Vec<u8>,
    truncated: bool,
}

impl Capture {
    fn start(mut pipe: impl Read + Send + 'static) -> std::io::Result<Capture> {
        let kept = Arc::new(Mutex::new(Captured::default()));
        let (done_tx, done) = mpsc::channel::<()>();
        let writer = Arc::clone(&kept);
        thread("halite-cmd-output", move || {
            let _done = done_tx;
            let mut buffer = [0u8; 8192];
            loop {
                match pipe.read(&mut buffer) {
                    Ok(0) | Err(_) => break,
                    Ok(n) => {
                        let mut kept = writer.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
                        let room = CAPTURE_LIMIT.saturating_sub(kept.bytes.len());
                        kept.bytes.extend_from_slice(&buffer[..n.min(room)]);
                        kept.truncated |= n > room;
                    }
                }
            }
        })?;
        Ok(Capture { kept, done })
    }

    /// What arrived by `deadline` (or by the end of the pipe, if sooner).
    fn collect(self, deadline: std::time::Instant) -> String {
        let ended = matches!(
            self.done.recv_timeout(deadline.saturating_duration_since(std::time::Instant::now())),
            Err(mpsc::RecvTimeoutError::Disconnected)
        );
        let kept = self.kept.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        let mut text = String::from_utf8_lossy(&kept.bytes).into_owned();
        let mut note = |what: &str| {
            if !text.is_empty() && !text.ends_with('\n') {
                text.push('\n');
            }
            text.push_str(what);
        };
        if kept.truncated {
            note("[output truncated]");
        }
        if !ended {
            note("[output still open: a process the command started holds it]");
        }
        text
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn runs_without_a_shell_and_captures_output() {
        let spec = Spec::from_command("printf '%s|%s' 'a b' '$HOME'", false).unwrap();
        assert_eq!(spec.argv, ["printf", "%s|%s", "a b", "$HOME"]);
        let output = run(&spec, None).unwrap();
        assert!(output.success());
        assert_eq!(output.stdout, "a b|$HOME");
    }

    #[test]
    fn shell_only_when_asked() {
        let output = run(&Spec::from_command("echo $((1+2)) >&2; exit 3", true).unwrap(), None).unwrap();
        assert_eq!(output.code, Some(3));
        assert_eq!(output.stderr, "3\n");
        assert!(output.failure("x").contains("exited with 3: 3"), "{}", output.failure("x"));
    }

    #[test]
    fn cwd_and_env_are_applied() {
        let dir = tempfile::tempdir().unwrap();
        let mut spec = Spec::from_command("pwd; echo $GREETING", true).unwrap();
        spec.cwd = Some(dir.path().to_path_buf());
        spec.env.push(("GREETING".into(), "hello".into()));
        let output = run(&spec, None).unwrap();
        let canonical = dir.path().canonicalize().unwrap();
        assert_eq!(output.stdout, format!("{}\nhello\n", canonical.display()));
    }

    #[test]
    fn timeout_kills_the_whole_group() {
        let dir = tempfile::tempdir().unwrap();
        let marker = dir.path().join("survived");
        // The background child would write the marker if it outlived the kill.
        let script = format!("(sleep 2; touch {}) & sleep 30", marker.display());
        let mut spec = Spec::from_command(&script, true).unwrap();
        spec.timeout = Some(Duration::from_millis(200));
        let output = run(&spec, None).unwrap();
        assert!(output.timed_out);
        assert_eq!(output.code, None);
        assert!(output.failure("x").contains("timed out"));
        // Wait for what the background child would have done, had it lived.
        let waited = run(&Spec::new(["sleep", "3"]), None).unwrap();
        assert!(waited.success());
        assert!(!marker.exists(), "a child of the timed-out command survived");
    }

    #[test]
    fn a_daemon_holding_the_output_open_does_not_hang_the_run() {
        // The background sleep keeps stdout open after the shell exits.
        let spec = Spec::from_command("echo started; setsid sleep 5 &", true).unwrap();
        let output = run(&spec, None).unwrap();
        assert!(output.success());
        assert!(output.stdout.contains("still open"), "{output:?}");
    }

    #[test]
    fn stdin_is_fed_and_closed() {
        let mut spec = Spec::new(["cat"]);
        spec.stdin = Some(b"the event".to_vec());
        assert_eq!(run(&spec, None).unwrap().stdout, "the event");
        // A program that does not read it is not held up by it.
        let mut spec = Spec::from_command("exit 0", true).unwrap();
        spec.stdin = Some(vec![b'x'; 1 << 20]);
        assert!(run(&spec, None).unwrap().success());
    }

    /// A background child that keeps stdout open does not hold the run to
    /// the child's end (nor to a timeout): the output that arrived is kept.
    #[tokio::test]
    async fn a_background_child_holding_stdout_does_not_hold_an_async_run() {
        let mut spec = Spec::from_command("sleep 30 & echo hi", true).unwrap();
        spec.timeout = Some(Duration::from_secs(60));
        let output = tokio::time::timeout(Duration::from_secs(10), run_async(&spec, None))
            .await
            .expect("the run waited for the background child")
            .unwrap();
        assert!(output.success() && !output.timed_out, "{output:?}");
        assert!(output.stdout.starts_with("hi\n") && output.stdout.contains("still open"), "{output:?}");
    }

    #[tokio::test]
    async fn an_async_run_past_its_timeout_kills_the_whole_group() {
        let mut spec = Spec::from_command("sleep 30 & exec sleep 30", true).unwrap();
        spec.timeout = Some(Duration::from_millis(200));
        let output = tokio::time::timeout(Duration::from_secs(10), run_async(&spec, None)).await.unwrap().unwrap();
        assert!(output.timed_out && output.code.is_none(), "{output:?}");
        // Output ended (no "still open"): the background sleep died too.
        assert!(!output.stdout.contains("still open"), "{output:?}");
    }

    /// The program and its background child hold a FIFO open; the test
    /// reads it to its end, which comes only when both are dead.
    #[tokio::test]
    async fn dropping_an_async_run_kills_the_whole_group() {
        let dir = tempfile::tempdir().unwrap();
        let hold = dir.path().join("hold");
        nix::unistd::mkfifo(&hold, nix::sys::stat::Mode::S_IRWXU).unwrap();
        let script = format!("exec 3>'{}'; sleep 30 & echo started >&3; sleep 30", hold.display());
        let spec = Spec::from_command(&script, true).unwrap();
        let opened = tokio::task::spawn_blocking(move || {
            let mut fifo = std::fs::File::open(&hold).unwrap();
            let mut line = [0u8; 8];
            fifo.read_exact(&mut line).unwrap();
            assert_eq!(&line, b"started\n");
            fifo
        });
        let mut fifo = tokio::select! {
            output = run_async(&spec, None) => panic!("the run ended by itself: {output:?}"),
            fifo = opened => fifo.unwrap(),
        };
        // The run's future is dropped: its group must die, closing the FIFO.
        let rest = tokio::task::spawn_blocking(move || {
            let mut rest = Vec::new();
            fifo.read_to_end(&mut rest).map(|_| rest)
        });
        let rest = tokio::time::timeout(Duration::from_secs(10), rest).await.expect("the group outlived the drop");
        assert_eq!(rest.unwrap().unwrap(), b"");
    }

    #[test]
    fn output_is_bounded() {
        let spec = Spec::from_command("head -c 200000 /dev/zero | tr '\\0' x", true).unwrap();
        let output = run(&spec, None).unwrap();
        assert!(output.success());
        assert!(output.stdout.len() < CAPTURE_LIMIT + 100);
        assert!(output.stdout.ends_with("[output truncated]"));
    }

    #[test]
    fn a_missing_program_is_an_error_naming_it() {
        let error = run(&Spec::new(["halite-no-such-program"]), None).unwrap_err().to_string();
        assert!(error.contains("halite-no-such-program"), "{error}");
    }

    #[test]
    fn programs_are_found_on_the_given_path() {
        let dir = tempfile::tempdir().unwrap();
        let stand_in = dir.path().join("halite-stand-in");
        std::fs::write(&stand_in, "#!/bin/sh\necho stand-in \"$@\"\n").unwrap();
        crate::test_support::chmod(&stand_in, 0o755);
        let path = OsString::from(format!("{}:/usr/bin:/bin", dir.path().display()));
        let output = run(&Spec::new(["halite-stand-in", "a"]), Some(&path)).unwrap();
        assert_eq!(output.stdout, "stand-in a\n");
    }
}

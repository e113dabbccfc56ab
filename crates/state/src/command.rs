//! The one way state kinds run programs (`cmd.run`, its `unless`/`onlyif`
//! probes, `systemctl`, `dpkg-query`, `apt-get`).
//!
//! A program and its arguments, never a shell unless asked for; a working
//! directory, extra environment, a timeout after which the program and
//! everything it started are killed; stdout and stderr captured up to
//! [`CAPTURE_LIMIT`] bytes each (the rest is read and dropped, so a chatty
//! program never blocks on a full pipe).
//!
//! Synchronous: the agent runs jobs on a blocking thread.

use std::ffi::OsString;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

/// Bytes of stdout (and of stderr) kept per run.
pub const CAPTURE_LIMIT: usize = 64 * 1024;

/// How long output is awaited once the command has exited.
const OUTPUT_GRACE: Duration = Duration::from_secs(2);

/// A program to run.
#[derive(Debug, Clone, PartialEq)]
pub struct Spec {
    /// The program, then its arguments.
    pub argv: Vec<String>,
    pub cwd: Option<PathBuf>,
    /// Added to (or replacing entries of) the agent's environment.
    pub env: Vec<(String, String)>,
    pub timeout: Option<Duration>,
}

impl Spec {
    pub fn new<S: Into<String>>(argv: impl IntoIterator<Item = S>) -> Self {
        Spec { argv: argv.into_iter().map(Into::into).collect(), cwd: None, env: Vec::new(), timeout: None }
    }

    /// `command` split like a POSIX shell would split words (quotes
    /// respected, nothing expanded), or run by `/bin/sh -c` when `shell`.
    pub fn from_command(command: &str, shell: bool) -> Result<Self, String> {
        if shell {
            return Ok(Spec::new(["/bin/sh", "-c", command]));
        }
        let argv =
            shlex::split(command).ok_or_else(|| format!("cannot split `{command}` into words (unbalanced quotes?)"))?;
        if argv.is_empty() {
            return Err("empty command".into());
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
pub fn run(spec: &Spec, path: Option<&OsString>) -> Result<Output, String> {
    use std::os::unix::process::CommandExt;

    let display = spec.display();
    let (program, args) = spec.argv.split_first().ok_or("empty command")?;
    let mut command = Command::new(resolve_program(program, path));
    command.args(args).stdin(Stdio::null()).stdout(Stdio::piped()).stderr(Stdio::piped());
    // Its own process group, so the timeout kills what it started too.
    command.process_group(0);
    if let Some(path) = path {
        command.env("PATH", path);
    }
    command.envs(spec.env.iter().map(|(k, v)| (k, v)));
    if let Some(cwd) = &spec.cwd {
        command.current_dir(cwd);
    }
    let mut child = command.spawn().map_err(|e| format!("cannot run `{display}`: {e}"))?;
    let pid = child.id();
    let stdout = child.stdout.take().map(capture);
    let stderr = child.stderr.take().map(capture);

    let (done_tx, done_rx) = mpsc::channel();
    std::thread::spawn(move || {
        let _ = done_tx.send(child.wait());
    });
    let (status, timed_out) = match spec.timeout {
        None => (done_rx.recv().map_err(|_| "the waiting thread died".to_owned())?, false),
        Some(limit) => match done_rx.recv_timeout(limit) {
            Ok(status) => (status, false),
            Err(_) => {
                kill_group(pid);
                (done_rx.recv().map_err(|_| "the waiting thread died".to_owned())?, true)
            }
        },
    };
    let status = status.map_err(|e| format!("cannot wait for `{display}`: {e}"))?;
    // A daemon the command started may hold the pipes open for ever: take
    // what has arrived within a grace period and leave its reader behind.
    let deadline = std::time::Instant::now() + OUTPUT_GRACE;
    let collect = |reader: Option<mpsc::Receiver<String>>| {
        reader
            .and_then(|r| r.recv_timeout(deadline.saturating_duration_since(std::time::Instant::now())).ok())
            .unwrap_or_else(|| "[output still open: a process the command started holds it]".to_owned())
    };
    Ok(Output { code: status.code(), timed_out, stdout: collect(stdout), stderr: collect(stderr) })
}

fn kill_group(pid: u32) {
    use nix::sys::signal::{Signal, killpg};
    use nix::unistd::Pid;
    if let Ok(pid) = i32::try_from(pid) {
        // Already gone is fine: it ended as the timeout expired.
        let _ = killpg(Pid::from_raw(pid), Signal::SIGKILL);
    }
}

/// Reads a pipe to its end on a thread of its own, keeping the first
/// [`CAPTURE_LIMIT`] bytes.
fn capture(mut pipe: impl Read + Send + 'static) -> mpsc::Receiver<String> {
    let (tx, rx) = mpsc::sync_channel(1);
    std::thread::spawn(move || {
        let mut kept = Vec::new();
        let mut buffer = [0u8; 8192];
        let mut truncated = false;
        loop {
            match pipe.read(&mut buffer) {
                Ok(0) | Err(_) => break,
                Ok(n) => {
                    let room = CAPTURE_LIMIT.saturating_sub(kept.len());
                    kept.extend_from_slice(&buffer[..n.min(room)]);
                    truncated |= n > room;
                }
            }
        }
        let mut text = String::from_utf8_lossy(&kept).into_owned();
        if truncated {
            text.push_str("\n[output truncated]");
        }
        let _ = tx.send(text);
    });
    rx
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
    fn output_is_bounded() {
        let spec = Spec::from_command("head -c 200000 /dev/zero | tr '\\0' x", true).unwrap();
        let output = run(&spec, None).unwrap();
        assert!(output.success());
        assert!(output.stdout.len() < CAPTURE_LIMIT + 100);
        assert!(output.stdout.ends_with("[output truncated]"));
    }

    #[test]
    fn a_missing_program_is_an_error_naming_it() {
        let error = run(&Spec::new(["halite-no-such-program"]), None).unwrap_err();
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

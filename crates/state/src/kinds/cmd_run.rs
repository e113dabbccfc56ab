//! `cmd.run`: run a command, unless a probe says it is not needed.
//!
//! The command is a program and its arguments (a string is split into
//! words like a shell would, without expanding anything); a shell only with
//! `shell: true`. `unless` and `onlyif` are read-only probes run while
//! planning, so test mode runs them too (and nothing else).

use std::collections::BTreeMap;
use std::time::Duration;

use halite_proto::{StateCall, Value};
use serde::Deserialize;

use super::{Authored, Kind, KindError, OneOrMany, Plan, Problem, args, string_list};
use crate::command::{self, CommandError, Spec};
use crate::env::ApplyEnv;

pub static KIND: Kind = Kind {
    name: "cmd.run",
    summary: "Run a command (a program and its arguments; a shell only with `shell: true`), unless `unless`/`onlyif` say not to.",
    example: "reload-nginx:\n  cmd.run:\n    name: systemctl reload nginx\n    onlyif: test -f /etc/nginx/nginx.conf\n    timeout: 30\n",
    resolve,
    plan,
    file: None,
};

/// A `cmd.run` call for a command line, for callers that build jobs
/// themselves (the reactor's `run` action). No shell, no timeout; add
/// arguments with [`StateCall::with_arg`] (`shell`, `cwd`, `timeout_ms`).
pub fn call(id: &str, command: &str) -> StateCall {
    StateCall::new(id, KIND.name, Value::map().with("name", command))
}

/// A `cmd.run` call that keeps the command's whole ending in its result
/// (`halite-master cmd`): the exit code and its output, read back with
/// [`Captured::from_result`]. Not authorable in a state file: only a caller
/// that reads the result this way asks for it.
pub fn captured_call(id: &str, argv: &[String], timeout: Duration) -> StateCall {
    StateCall::new(
        id,
        KIND.name,
        Value::map()
            .with("name", Value::List(argv.iter().map(|a| Value::from(a.as_str())).collect()))
            .with("capture", true)
            .with("timeout_ms", i64::try_from(timeout.as_millis()).unwrap_or(i64::MAX)),
    )
}

/// How a captured command ended, and what it printed (each stream capped
/// at the spawner's `CAPTURE_LIMIT`).
#[derive(Debug, Clone, PartialEq)]
pub struct Captured {
    /// The exit code; `None` when it did not exit by itself (a timeout,
    /// a signal) or never started.
    pub code: Option<i32>,
    /// Why there is no exit code, when there is none.
    pub error: Option<String>,
    pub stdout: String,
    pub stderr: String,
}

impl Captured {
    fn of(output: &command::Output, display: &str) -> Captured {
        Captured {
            code: output.code.filter(|_| !output.timed_out),
            error: if output.code.is_none() || output.timed_out { Some(output.failure(display)) } else { None },
            stdout: output.stdout.clone(),
            stderr: output.stderr.clone(),
        }
    }

    /// The result's lines: `exit N` (or the error), then `stdout: ` and
    /// `stderr: ` each followed by a JSON string, so that every line is
    /// one line whatever the command printed.
    fn lines(&self) -> Vec<String> {
        let first = match (&self.code, &self.error) {
            (Some(code), _) => format!("exit {code}"),
            (None, Some(error)) => error.clone(),
            (None, None) => "no exit code".to_owned(),
        };
        let json = |s: &str| serde_json::to_string(s).unwrap_or_default();
        vec![first, format!("stdout: {}", json(&self.stdout)), format!("stderr: {}", json(&self.stderr))]
    }

    /// Reads a captured command's result back: from the changes of a run
    /// that exited 0, or from the error of one that did not.
    pub fn from_result(outcome: &halite_proto::Outcome) -> Captured {
        use halite_proto::Outcome;
        let lines: Vec<&str> = match outcome {
            Outcome::Changed { changes } | Outcome::WouldChange { changes } => {
                changes.iter().map(String::as_str).collect()
            }
            Outcome::Failed { error } => error.lines().collect(),
            Outcome::Unchanged => Vec::new(),
        };
        let stream = |prefix: &str| {
            lines
                .iter()
                .find_map(|l| l.strip_prefix(prefix))
                .and_then(|json| serde_json::from_str::<String>(json).ok())
                .unwrap_or_default()
        };
        let first = lines.first().copied().unwrap_or_default();
        let code = first.strip_prefix("exit ").and_then(|c| c.parse().ok());
        Captured {
            code,
            error: if code.is_none() {
                Some(if lines.is_empty() { "the agent returned no output".to_owned() } else { first.to_owned() })
            } else {
                None
            },
            stdout: stream("stdout: "),
            stderr: stream("stderr: "),
        }
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Config {
    /// The command line, or the program and its arguments as a list.
    /// Defaults to the state id.
    name: Option<OneOrMany>,
    #[serde(default)]
    shell: bool,
    cwd: Option<String>,
    env: Option<EnvConfig>,
    /// Seconds.
    timeout: Option<f64>,
    unless: Option<OneOrMany>,
    onlyif: Option<OneOrMany>,
}

/// A mapping, or Salt's list of single-key mappings.
#[derive(Debug, Deserialize)]
#[serde(untagged)]
enum EnvConfig {
    Map(BTreeMap<String, serde_json::Value>),
    List(Vec<BTreeMap<String, serde_json::Value>>),
}

fn resolve(state: &Authored<'_>) -> Result<Value, Vec<Problem>> {
    resolve_command(state, KIND.name)
}

/// Resolves `cmd.run`'s arguments for `kind` (`cmd.wait` takes the same).
pub(crate) fn resolve_command(state: &Authored<'_>, kind: &str) -> Result<Value, Vec<Problem>> {
    let config: Config = state.decode(kind)?;
    let mut problems = Vec::new();
    let problem = |key: &str, message: String| Problem::new(state.at(key), format!("{kind} `{}`: {message}", state.id));

    let name = match config.name.unwrap_or_else(|| OneOrMany::One(state.id.to_owned())) {
        OneOrMany::One(line) => {
            if let Err(e) = Spec::from_command(&line, config.shell) {
                problems
                    .push(problem("name", e.to_string()).help("quote arguments with ' or \", or set `shell: true`"));
            }
            Value::String(line)
        }
        OneOrMany::Many(argv) if argv.is_empty() => {
            problems.push(problem("name", "the command is an empty list".into()));
            Value::Null
        }
        OneOrMany::Many(argv) => string_list(argv),
    };
    let mut probes = Vec::new();
    for (key, list) in [("unless", config.unless), ("onlyif", config.onlyif)] {
        let list = list.map(OneOrMany::into_vec).unwrap_or_default();
        for line in &list {
            if let Err(e) = Spec::from_command(line, config.shell) {
                problems.push(problem(key, e.to_string()).help("quote arguments with ' or \", or set `shell: true`"));
            }
        }
        probes.push((key, list));
    }
    if let Some(cwd) = &config.cwd
        && !cwd.starts_with('/')
    {
        problems.push(problem("cwd", format!("cwd `{cwd}` is not absolute")).help("give a full path, e.g. /tmp"));
    }
    let timeout_ms = match config.timeout {
        Some(seconds) if !(seconds.is_finite() && seconds > 0.0) => {
            problems.push(problem("timeout", format!("timeout `{seconds}` is not a positive number of seconds")));
            None
        }
        Some(seconds) => Some((seconds * 1000.0).round() as i64),
        None => None,
    };
    let env = match config.env {
        None => BTreeMap::new(),
        Some(EnvConfig::Map(map)) => map,
        Some(EnvConfig::List(list)) => list.into_iter().flatten().collect(),
    };
    let mut env_value = Value::map();
    for (key, value) in env {
        let text = match value {
            serde_json::Value::String(s) => s,
            serde_json::Value::Number(n) => n.to_string(),
            serde_json::Value::Bool(b) => b.to_string(),
            other => {
                problems.push(problem("env", format!("env `{key}`: `{other}` is not a string")));
                continue;
            }
        };
        env_value = env_value.with(&key, text);
    }
    if !problems.is_empty() {
        return Err(problems);
    }
    let mut resolved = Value::map().with("name", name).with("shell", config.shell).with("env", env_value);
    for (key, list) in probes {
        if !list.is_empty() {
            resolved = resolved.with(key, string_list(list));
        }
    }
    if let Some(cwd) = config.cwd {
        resolved = resolved.with("cwd", cwd);
    }
    if let Some(ms) = timeout_ms {
        resolved = resolved.with("timeout_ms", ms);
    }
    Ok(resolved)
}

/// The spec for one command line (or argv list) with the state's options.
pub(crate) fn spec(name: &Value, args: &Value) -> Result<Spec, KindError> {
    let shell = args::bool_or(args, "shell", false);
    let mut spec = match name {
        Value::String(line) => Spec::from_command(line, shell)?,
        Value::List(argv) => Spec::new(argv.iter().filter_map(Value::as_str)),
        _ => return Err(KindError::Argument { key: "name", expected: "a command" }),
    };
    if spec.argv.is_empty() {
        return Err(CommandError::Empty.into());
    }
    spec.cwd = args::opt_string(args, "cwd").map(Into::into);
    if let Some(Value::Map(env)) = args.get("env") {
        spec.env = env.iter().filter_map(|(k, v)| Some((k.clone(), v.as_str()?.to_owned()))).collect();
    }
    spec.timeout = args::opt_u64(args, "timeout_ms").map(Duration::from_millis);
    Ok(spec)
}

#[derive(Debug)]
struct RunPlan {
    spec: Spec,
    /// Why the command need not run, if a probe said so.
    skip: Option<String>,
    path: Option<std::ffi::OsString>,
    /// Keep the exit code and the whole output ([`captured_call`]).
    capture: bool,
}

pub(crate) fn plan(args: &Value, env: &ApplyEnv) -> Result<Box<dyn Plan>, KindError> {
    let spec = spec(args.get("name").unwrap_or(&Value::Null), args)?;
    let skip = skip_reason(args, env)?;
    Ok(Box::new(RunPlan { spec, skip, path: env.path.clone(), capture: args::bool_or(args, "capture", false) }))
}

/// Why the command need not run, if `onlyif`/`unless` say so (read-only
/// probes, run while planning).
pub(crate) fn skip_reason(args: &Value, env: &ApplyEnv) -> Result<Option<String>, KindError> {
    let probe = |line: &str| -> Result<bool, KindError> {
        let probe = spec_for_probe(line, args)?;
        Ok(command::run(&probe, env.path.as_ref())?.success())
    };
    let mut skip = None;
    for line in args::strings(args, "onlyif") {
        if !probe(&line)? {
            skip = Some(format!("onlyif `{line}` failed"));
            break;
        }
    }
    let unless = args::strings(args, "unless");
    if skip.is_none() && !unless.is_empty() {
        let mut all_succeeded = true;
        for line in &unless {
            all_succeeded &= probe(line)?;
        }
        if all_succeeded {
            skip = Some("unless succeeded".into());
        }
    }
    Ok(skip)
}

fn spec_for_probe(line: &str, args: &Value) -> Result<Spec, KindError> {
    spec(&Value::String(line.to_owned()), args)
}

impl Plan for RunPlan {
    fn changes(&self) -> Vec<String> {
        match self.skip {
            Some(_) => Vec::new(),
            None => vec![format!("run `{}`", self.spec.display())],
        }
    }

    fn watch_triggered(&mut self) -> bool {
        self.skip = None;
        true
    }

    fn apply(self: Box<Self>) -> Result<Vec<String>, KindError> {
        let display = self.spec.display();
        let output = command::run(&self.spec, self.path.as_ref())?;
        if self.capture {
            let lines = Captured::of(&output, &display).lines();
            return if output.success() {
                Ok(lines)
            } else {
                Err(KindError::CapturedFailure { lines: lines.join("\n") })
            };
        }
        if !output.success() {
            return Err(KindError::Failed { command: display, output });
        }
        let mut changes = vec![format!("ran `{display}`: exit 0")];
        let stdout = output.stdout.trim_end();
        if !stdout.is_empty() {
            let lines: Vec<&str> = stdout.lines().collect();
            let shown = &lines[lines.len().saturating_sub(10)..];
            changes.push(format!("stdout: {}", shown.join("\n")));
        }
        Ok(changes)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::apply::apply_call;
    use halite_proto::Outcome;

    fn env() -> ApplyEnv {
        ApplyEnv::default()
    }

    #[test]
    fn plans_a_run_and_applies_it() {
        let dir = tempfile::tempdir().unwrap();
        let marker = dir.path().join("ran");
        let c = call("touch", &format!("touch {}", marker.display()));
        let plan = plan(&c.args, &env()).unwrap();
        assert_eq!(plan.changes(), [format!("run `touch {}`", marker.display())]);
        assert!(!marker.exists(), "planning ran the command");
        let result = apply_call(&c, false, &env());
        assert!(matches!(result.outcome, Outcome::Changed { .. }), "{result:?}");
        assert!(marker.exists());
    }

    #[test]
    fn test_mode_runs_nothing_but_probes() {
        let dir = tempfile::tempdir().unwrap();
        let (marker, probe) = (dir.path().join("ran"), dir.path().join("probed"));
        let c = call("t", &format!("touch {}", marker.display()))
            .with_arg("onlyif", Value::List(vec![Value::String(format!("touch {}", probe.display()))]));
        let result = apply_call(&c, true, &env());
        assert!(matches!(result.outcome, Outcome::WouldChange { .. }), "{result:?}");
        assert!(!marker.exists());
        assert!(probe.exists(), "onlyif is a probe and runs while planning");
    }

    #[test]
    fn unless_and_onlyif_decide() {
        let cases = [
            (Some("true"), None, "unchanged"),
            (Some("false"), None, "changed"),
            (None, Some("false"), "unchanged"),
            (None, Some("true"), "changed"),
        ];
        for (unless, onlyif, expected) in cases {
            let mut c = call("t", "true");
            if let Some(u) = unless {
                c = c.with_arg("unless", u);
            }
            if let Some(o) = onlyif {
                c = c.with_arg("onlyif", o);
            }
            assert_eq!(apply_call(&c, false, &env()).outcome.label(), expected, "{unless:?} {onlyif:?}");
        }
    }

    #[test]
    fn failure_reports_exit_code_and_stderr() {
        let c = call("t", "echo oops >&2; exit 4").with_arg("shell", true);
        let Outcome::Failed { error } = apply_call(&c, false, &env()).outcome else { panic!() };
        assert!(error.contains("exited with 4: oops"), "{error}");
        // Without a shell, the same line is a program named `echo` printing words.
        let c = call("t", "echo oops >&2; exit 4");
        let Outcome::Changed { changes } = apply_call(&c, false, &env()).outcome else { panic!() };
        assert_eq!(changes[1], "stdout: oops >&2; exit 4");
    }

    #[test]
    fn a_captured_command_keeps_its_exit_code_and_output() {
        let sh = |script: &str| vec!["sh".to_owned(), "-c".to_owned(), script.to_owned()];
        let cases = [
            (sh("echo out; echo err >&2; exit 3"), Some(3), None),
            (sh("printf 'a\nstdout: b\n'; echo e >&2"), Some(0), None),
            (vec!["sleep".to_owned(), "20".to_owned()], None, Some("timed out")),
        ];
        for (argv, code, error) in cases {
            let c = captured_call("cmd", &argv, Duration::from_millis(300));
            let result = apply_call(&c, false, &env());
            let captured = Captured::from_result(&result.outcome);
            assert_eq!(captured.code, code, "{argv:?}: {result:?}");
            assert_eq!(result.outcome.is_failed(), code != Some(0), "{result:?}");
            match error {
                Some(wanted) => assert!(captured.error.as_deref().unwrap_or_default().contains(wanted), "{captured:?}"),
                None => assert_eq!(captured.error, None),
            }
            if code == Some(0) {
                assert_eq!((captured.stdout.as_str(), captured.stderr.as_str()), ("a\nstdout: b\n", "e\n"));
            }
        }
    }

    #[test]
    fn timeout_fails_the_state() {
        let c = call("t", "sleep 20").with_arg("timeout_ms", 100i64);
        let Outcome::Failed { error } = apply_call(&c, false, &env()).outcome else { panic!() };
        assert!(error.contains("timed out"), "{error}");
    }

    #[test]
    fn authored_forms_resolve() {
        let dir = tempfile::tempdir().unwrap();
        let text = "a:\n  cmd.run:\n    - name: [ls, -l]\n    - cwd: /tmp\n    - env:\n      - LANG: C\n    - timeout: 1.5\n    - unless: test -f /x\nb:\n  cmd.run:\n    name: \"echo 'unclosed\"\nc:\n  cmd.run:\n    cwd: tmp\n    timeout: -1\n";
        // `.yaml`: halite's own command lines, split into words (a `.sls`
        // file runs them through a shell, as Salt does).
        std::fs::write(dir.path().join("s.yaml"), text).unwrap();
        let (tree, diagnostics) = crate::StateTree::load(dir.path());
        let messages: Vec<&str> = diagnostics.iter().map(|d| d.message.as_str()).collect();
        assert_eq!(messages.len(), 3, "{messages:#?}");
        assert!(messages[0].contains("cmd.run `b`") && diagnostics[0].line == 11, "{diagnostics:#?}");
        assert!(messages[1].contains("not absolute"));
        assert!(messages[2].contains("timeout"));
        let a = &tree.files["s"].states[0].call.args;
        assert_eq!(a.get("timeout_ms"), Some(&Value::Int(1500)));
        assert_eq!(a.get("env").and_then(|e| e.get("LANG")), Some(&Value::from("C")));
        assert_eq!(spec(a.get("name").unwrap(), a).unwrap().argv, ["ls", "-l"]);
    }
}

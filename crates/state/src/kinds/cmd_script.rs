//! `cmd.script`: a script from the state tree run on the agent with
//! arguments (Salt's `cmd.script`: `source` (default: `name`), `args`,
//! `shell` (the interpreter; default: the script's `#!` line), `cwd`,
//! `env`, `timeout`, `unless`, `onlyif`).
//!
//! The master reads the script when the tree loads (no path out of the
//! tree), so it travels in the call. Applying writes it to a private
//! directory (mode 0700, the one atomic write) and runs it through the
//! spawner; the directory is removed afterwards. `unless`/`onlyif` are
//! `cmd.run`'s probes.

use halite_proto::Value;
use serde::Deserialize;

use super::cmd_run::{resolve_command, skip_reason, spec};
use super::{Authored, Kind, KindError, OneOrMany, Plan, Problem, args, string_list};
use crate::command;
use crate::env::ApplyEnv;
use crate::yaml::Fields;

pub static KIND: Kind = Kind {
    name: "cmd.script",
    summary: "A script from the state tree run on the agent with arguments, unless `unless`/`onlyif` say not to.",
    example: "setup:\n  cmd.script:\n    source: salt://files/setup.sh\n    args: --quiet\n    unless: test -e /etc/app/ready\n",
    resolve,
    plan,
    file: None,
};

/// The arguments only `cmd.script` has; the rest are `cmd.run`'s.
#[derive(Debug, Deserialize)]
struct Config {
    name: Option<String>,
    source: Option<String>,
    args: Option<OneOrMany>,
    shell: Option<String>,
    template: Option<String>,
    runas: Option<String>,
}

const OWN: &[&str] = &["source", "args", "shell", "template", "runas"];

fn resolve(state: &Authored<'_>) -> Result<Value, Vec<Problem>> {
    let mut problems = Vec::new();
    let problem =
        |key: &str, message: String| Problem::new(state.at(key), format!("cmd.script `{}`: {message}", state.id));
    let own = Fields {
        entries: state
            .fields
            .entries
            .iter()
            .filter(|(k, _)| OWN.contains(&k.value.as_str()) || k.value == "name")
            .cloned()
            .collect(),
        functions: Vec::new(),
    };
    let rest = Fields {
        entries: state.fields.entries.iter().filter(|(k, _)| !OWN.contains(&k.value.as_str())).cloned().collect(),
        functions: Vec::new(),
    };
    let config: Config = own
        .decode()
        .map_err(|(at, message)| vec![Problem::new(at, format!("cmd.script `{}`: {message}", state.id))])?;
    let common = resolve_command(&Authored { id: state.id, fields: &rest, tree_root: state.tree_root }, KIND.name);
    if let Err(more) = &common {
        problems.extend(more.iter().cloned());
    }
    let source = config.source.or(config.name).unwrap_or_else(|| state.id.to_owned());
    let relative = source.strip_prefix("salt://").unwrap_or(&source);
    let script = match crate::paths::in_tree(state.tree_root, relative).map(|p| crate::paths::read_tree_file(&p)) {
        Ok(Ok(bytes)) => bytes,
        Ok(Err(e)) => {
            problems.push(problem("source", format!("cannot read `{source}`: {e}")));
            Vec::new()
        }
        Err(e) => {
            problems.push(
                problem("source", e.to_string()).help("name a script in the state tree, e.g. salt://scripts/setup.sh"),
            );
            Vec::new()
        }
    };
    let args = match config.args {
        Some(OneOrMany::One(line)) => shlex::split(&line).unwrap_or_else(|| {
            problems.push(problem("args", format!("`{line}` has an unclosed quote")));
            Vec::new()
        }),
        Some(OneOrMany::Many(list)) => list,
        None => Vec::new(),
    };
    if config.template.is_some() {
        problems
            .push(problem("template", "templated scripts are not supported".into()).help("pass what varies as `args`"));
    }
    if config.runas.is_some() {
        problems.push(
            problem("runas", "`runas` is not supported".into())
                .help("run the script as root, or `su`/`runuser` inside it"),
        );
    }
    if let Some(shell) = &config.shell
        && !shell.starts_with('/')
    {
        problems.push(problem("shell", format!("shell `{shell}` is not an absolute path")));
    }
    let Ok(common) = common.map_err(|_| ()).and_then(|c| if problems.is_empty() { Ok(c) } else { Err(()) }) else {
        return Err(problems);
    };
    let mut resolved = common.with("script", script).with("source", source).with("args", string_list(args));
    if let Some(shell) = config.shell {
        resolved = resolved.with("interpreter", shell);
    }
    Ok(resolved)
}

#[derive(Debug)]
struct ScriptPlan {
    source: String,
    script: Vec<u8>,
    spec: command::Spec,
    skip: Option<String>,
    path: Option<std::ffi::OsString>,
}

fn plan(args: &Value, env: &ApplyEnv) -> Result<Box<dyn Plan>, KindError> {
    let mut argv: Vec<Value> = args::opt_string(args, "interpreter").map(Value::from).into_iter().collect();
    // The script's own path is set when it is written.
    argv.push(Value::from("script"));
    argv.extend(args::strings(args, "args").into_iter().map(Value::String));
    let spec = spec(&Value::List(argv), args)?;
    Ok(Box::new(ScriptPlan {
        source: args::string(args, "source")?.to_owned(),
        script: args::bytes(args, "script")?.to_vec(),
        spec,
        skip: skip_reason(args, env)?,
        path: env.path.clone(),
    }))
}

impl Plan for ScriptPlan {
    fn changes(&self) -> Vec<String> {
        match self.skip {
            Some(_) => Vec::new(),
            None => vec![format!("run script {}", self.source)],
        }
    }

    fn apply(self: Box<Self>) -> Result<Vec<String>, KindError> {
        let dir = tempfile::Builder::new()
            .prefix("halite-script-")
            .tempdir()
            .map_err(|source| KindError::ScratchDir { subject: self.source.clone(), source })?;
        let file = dir.path().join("script");
        halite_fs::write_atomic(&file, &self.script, 0o700)?;
        let mut spec = self.spec.clone();
        let at = spec.argv.iter().position(|a| a == "script").unwrap_or(0);
        spec.argv[at] = file.display().to_string();
        let output = command::run(&spec, self.path.as_ref())?;
        if !output.success() {
            return Err(KindError::Failed { command: format!("script {}", self.source), output });
        }
        let mut done = vec![format!("ran script {}: exit 0", self.source)];
        let stdout = output.stdout.trim_end();
        if !stdout.is_empty() {
            let lines: Vec<&str> = stdout.lines().collect();
            done.push(format!("stdout: {}", lines[lines.len().saturating_sub(10)..].join("\n")));
        }
        Ok(done)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::apply::apply_call;
    use crate::kind_tests::{changes, resolved_in};

    #[test]
    fn runs_the_trees_script_with_its_arguments_unless_told_not_to() {
        let dir = tempfile::tempdir().unwrap();
        let marker = dir.path().join("ran");
        let script = "#!/bin/sh\necho \"$1 $2\" > \"$3\"\necho done\n";
        let call = resolved_in(
            KIND.name,
            &format!(
                "source: salt://scripts/setup.sh\nargs: \"'a b' c {}\"\nunless: test -e {}",
                marker.display(),
                marker.display()
            ),
            &[("scripts/setup.sh", script)],
        );
        assert_eq!(
            changes(apply_call(&call, true, &ApplyEnv::default()).outcome),
            ["run script salt://scripts/setup.sh"]
        );
        assert!(!marker.exists(), "test mode ran it");
        let done = changes(apply_call(&call, false, &ApplyEnv::default()).outcome);
        assert_eq!(done, ["ran script salt://scripts/setup.sh: exit 0", "stdout: done"]);
        assert_eq!(std::fs::read_to_string(&marker).unwrap(), "a b c\n");
        assert!(changes(apply_call(&call, false, &ApplyEnv::default()).outcome).is_empty(), "unless holds now");
    }

    #[test]
    fn resolve_errors_point_at_the_argument() {
        let diagnostics = crate::kind_tests::load(
            "a:\n  cmd.script:\n    source: salt://nope.sh\n    runas: bob\n    timeout: -1\n    shell: bash\n",
        );
        let lines: Vec<u64> = diagnostics.iter().map(|d| d.line).collect();
        assert_eq!(lines, [3, 4, 5, 6], "{diagnostics:#?}");
    }
}

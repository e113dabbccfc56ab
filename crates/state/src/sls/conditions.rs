//! `unless` and `onlyif` on any state, as Salt runs them: each string is
//! a command line run through `/bin/sh -c`; with `onlyif` the state runs
//! only when every command succeeds, with `unless` it is skipped when
//! every command succeeds. They run while planning (test mode too), on
//! the agent. Salt's `fun:` form (a Salt module function) is refused
//! when the tree loads.
//!
//! The loader puts them in the call's arguments under [`KEY`], so the
//! wire format does not change; [`skip_reason`] is asked by
//! `apply::run_one` before the kind plans.

use halite_proto::Value;

use crate::command::{self, Spec};
use crate::env::ApplyEnv;

/// The argument that carries the conditions: `{unless: [..], onlyif: [..]}`.
pub const KEY: &str = "conditions";

/// Why one condition cannot be run; `(message, help)`.
pub type Refusal = (String, String);

/// Reads one `unless`/`onlyif` value: a command line or a list of them.
pub fn read(key: &str, value: &serde_json::Value) -> Result<Vec<String>, Refusal> {
    let items = match value {
        serde_json::Value::Array(items) => items.clone(),
        one => vec![one.clone()],
    };
    items
        .iter()
        .map(|item| match item {
            serde_json::Value::String(line) => Ok(line.clone()),
            serde_json::Value::Object(map) if map.contains_key("fun") => Err((
                format!(
                    "`{key}` with `fun: {}` (a Salt execution module function) is not supported by halite",
                    map.get("fun").and_then(|f| f.as_str()).unwrap_or("?")
                ),
                format!("write the check as a command line, e.g. `{key}: test -e /path`"),
            )),
            other => Err((
                format!("`{key}` item `{other}` is not a command line"),
                format!("write `{key}: COMMAND` or a list of command lines"),
            )),
        })
        .collect()
}

/// The conditions as a call argument.
pub fn to_value(unless: &[String], onlyif: &[String]) -> Value {
    let list = |lines: &[String]| Value::List(lines.iter().map(|l| Value::from(l.as_str())).collect());
    Value::map().with("unless", list(unless)).with("onlyif", list(onlyif))
}

/// Why the state need not run, when its conditions say so. A command that
/// cannot start is an error of the state.
pub fn skip_reason(args: &Value, env: &ApplyEnv) -> Result<Option<String>, command::CommandError> {
    let Some(conditions) = args.get(KEY) else { return Ok(None) };
    let lines = |key: &str| -> Vec<String> {
        match conditions.get(key) {
            Some(Value::List(items)) => items.iter().filter_map(Value::as_str).map(str::to_owned).collect(),
            _ => Vec::new(),
        }
    };
    let succeeds = |line: &str| -> Result<bool, command::CommandError> {
        Ok(command::run(&Spec::from_command(line, true)?, env.path.as_ref())?.success())
    };
    for line in lines("onlyif") {
        if !succeeds(&line)? {
            return Ok(Some(format!("onlyif `{line}` failed")));
        }
    }
    let unless = lines("unless");
    if !unless.is_empty() {
        let mut all = true;
        for line in &unless {
            all &= succeeds(line)?;
        }
        if all {
            return Ok(Some("unless succeeded".into()));
        }
    }
    Ok(None)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shell_lines_decide_as_salt_does() {
        let env = ApplyEnv::default();
        let table: &[(&[&str], &[&str], Option<&str>)] = &[
            (&[], &[], None),
            (&["true"], &[], Some("unless succeeded")),
            (&["true", "false"], &[], None),
            (&[], &["test 1 = 1 && true"], None),
            (&[], &["true", "exit 3"], Some("onlyif `exit 3` failed")),
            // Through a shell: redirections and pipes work.
            (&["echo x | grep -q x > /dev/null 2>&1"], &[], Some("unless succeeded")),
        ];
        for (unless, onlyif, expected) in table {
            let own = |l: &[&str]| l.iter().map(|s| (*s).to_owned()).collect::<Vec<_>>();
            let args = Value::map().with(KEY, to_value(&own(unless), &own(onlyif)));
            assert_eq!(skip_reason(&args, &env).unwrap().as_deref(), *expected, "{unless:?} {onlyif:?}");
        }
    }

    #[test]
    fn the_fun_form_is_refused_by_name() {
        let (message, help) =
            read("onlyif", &serde_json::json!([{"fun": "file.file_exists", "path": "/x"}])).unwrap_err();
        assert_eq!(
            message,
            "`onlyif` with `fun: file.file_exists` (a Salt execution module function) is not supported by halite"
        );
        assert!(help.contains("onlyif: test -e"), "{help}");
        assert_eq!(read("unless", &serde_json::json!("a b")).unwrap(), ["a b"]);
    }
}

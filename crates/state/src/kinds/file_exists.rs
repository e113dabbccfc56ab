//! `file.exists`: a path that must exist (Salt's `file.exists`); nothing
//! is made, the state fails when it does not. What is at the path is
//! looked at without following a link (a link is something).

use std::path::PathBuf;

use halite_proto::Value;
use serde::Deserialize;

use super::{Authored, Kind, KindError, Plan, Problem, absolute_path, args};
use crate::env::ApplyEnv;

pub static KIND: Kind = Kind {
    name: "file.exists",
    summary: "A path that must exist; the state fails when it does not (nothing is made).",
    example: "cert-there:\n  file.exists:\n    name: /etc/ssl/certs/site.pem\n",
    resolve,
    plan,
    file: None,
};

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Config {
    #[serde(alias = "name")]
    path: Option<String>,
}

fn resolve(state: &Authored<'_>) -> Result<Value, Vec<Problem>> {
    let config: Config = state.decode(KIND.name)?;
    let path = absolute_path(state, KIND.name, config.path).map_err(|p| vec![p])?;
    Ok(Value::map().with("path", path))
}

/// Whether something is at `path`, the last component not followed.
pub(crate) fn present(path: &std::path::Path) -> Result<bool, KindError> {
    match halite_fs::open_parent(path, None) {
        Ok((dir, name)) => Ok(dir.entry(&name)?.is_some()),
        Err(e) if e.is_not_found() => Ok(false),
        Err(e) => Err(e.into()),
    }
}

/// Nothing to change: the check is the plan.
#[derive(Debug)]
pub(crate) struct Checked;

impl Plan for Checked {
    fn changes(&self) -> Vec<String> {
        Vec::new()
    }

    fn apply(self: Box<Self>) -> Result<Vec<String>, KindError> {
        Ok(Vec::new())
    }
}

fn plan(args: &Value, _env: &ApplyEnv) -> Result<Box<dyn Plan>, KindError> {
    let path = PathBuf::from(args::string(args, "path")?);
    if !present(&path)? {
        return Err(KindError::Missing { path, help: "" });
    }
    Ok(Box::new(Checked))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::apply::apply_call;
    use halite_proto::{Outcome, StateCall};

    #[test]
    fn fails_when_missing_and_changes_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("f");
        let call = StateCall::new("t", KIND.name, Value::map().with("path", path.to_str().unwrap()));
        for test in [true, false] {
            let Outcome::Failed { error } = apply_call(&call, test, &ApplyEnv::default()).outcome else { panic!() };
            assert!(error.contains("does not exist"), "{error}");
        }
        assert!(!path.exists());
        std::os::unix::fs::symlink("/nowhere", &path).unwrap();
        assert_eq!(apply_call(&call, false, &ApplyEnv::default()).outcome, Outcome::Unchanged);
    }
}

//! `file.missing`: a path that must not exist (Salt's `file.missing`);
//! nothing is removed, the state fails when it does (use `file.absent` to
//! remove it).

use std::path::PathBuf;

use halite_proto::Value;
use serde::Deserialize;

use super::file_exists::{Checked, present};
use super::{Authored, Kind, KindError, Plan, Problem, absolute_path, args};
use crate::env::ApplyEnv;

pub static KIND: Kind = Kind {
    name: "file.missing",
    summary: "A path that must not exist; the state fails when it does (nothing is removed: that is file.absent).",
    example: "no-override:\n  file.missing:\n    name: /etc/app/override.conf\n",
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

fn plan(args: &Value, _env: &ApplyEnv) -> Result<Box<dyn Plan>, KindError> {
    let path = PathBuf::from(args::string(args, "path")?);
    if present(&path)? {
        return Err(KindError::Exists { path, help: "file.absent removes it" });
    }
    Ok(Box::new(Checked))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::apply::apply_call;
    use halite_proto::{Outcome, StateCall};

    #[test]
    fn fails_when_present_and_removes_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("f");
        let call = StateCall::new("t", KIND.name, Value::map().with("path", path.to_str().unwrap()));
        assert_eq!(apply_call(&call, false, &ApplyEnv::default()).outcome, Outcome::Unchanged);
        std::fs::write(&path, "x").unwrap();
        for test in [true, false] {
            assert!(apply_call(&call, test, &ApplyEnv::default()).outcome.is_failed());
        }
        assert!(path.exists());
    }
}

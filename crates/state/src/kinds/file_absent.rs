//! `file.absent`: a path that must not exist (a file, a link, or a
//! directory with everything in it), removed through `halite_fs`: relative
//! to the parent's descriptor, never following a link.

use std::ffi::OsString;
use std::path::PathBuf;

use halite_fs::{Dir, FileType};

use halite_proto::Value;
use serde::Deserialize;

use super::{Authored, Kind, KindError, Plan, Problem, absolute_path, args};
use crate::env::ApplyEnv;

pub static KIND: Kind = Kind {
    name: "file.absent",
    summary: "A path that must not exist; a directory is removed with its contents.",
    example: "old-conf:\n  file.absent:\n    path: /etc/nginx/conf.d/default.conf\n",
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

#[derive(Debug)]
struct AbsentPlan {
    path: PathBuf,
    /// The parent directory, opened when planning, and the name in it.
    at: Option<(Dir, OsString)>,
    /// What is there now, if anything.
    present: Option<&'static str>,
}

fn plan(args: &Value, _env: &ApplyEnv) -> Result<Box<dyn Plan>, KindError> {
    let path = PathBuf::from(args::string(args, "path")?);
    let (dir, name) = match halite_fs::open_parent(&path, None) {
        Ok(found) => found,
        Err(e) if e.is_not_found() => return Ok(Box::new(AbsentPlan { path, at: None, present: None })),
        Err(e) => return Err(e.into()),
    };
    let present = dir.entry(&name)?.map(|stat| match stat.file_type {
        FileType::Link => "link",
        FileType::Dir => "directory",
        FileType::File | FileType::Other => "file",
    });
    Ok(Box::new(AbsentPlan { path, at: Some((dir, name)), present }))
}

impl Plan for AbsentPlan {
    fn changes(&self) -> Vec<String> {
        self.present.map(|what| vec![format!("removed {what} {}", self.path.display())]).unwrap_or_default()
    }

    fn apply(self: Box<Self>) -> Result<Vec<String>, KindError> {
        let (Some((dir, name)), Some(_)) = (&self.at, self.present) else { return Ok(Vec::new()) };
        // Relative to the directory's descriptor; a directory's contents
        // are removed without following any link in it.
        dir.remove(name)?;
        Ok(self.changes())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::apply::apply_call;
    use halite_proto::{Outcome, StateCall};
    use std::fs;

    fn call(path: &std::path::Path) -> StateCall {
        StateCall::new("t", KIND.name, Value::map().with("path", path.to_str().unwrap()))
    }

    #[test]
    fn removes_files_links_and_directories() {
        let dir = tempfile::tempdir().unwrap();
        let (file, tree, link) = (dir.path().join("f"), dir.path().join("d"), dir.path().join("l"));
        fs::write(&file, "x").unwrap();
        fs::create_dir_all(tree.join("sub")).unwrap();
        fs::write(tree.join("sub/x"), "x").unwrap();
        std::os::unix::fs::symlink(&tree, &link).unwrap();
        let env = ApplyEnv::default();
        for (path, what) in [(&link, "link"), (&file, "file"), (&tree, "directory")] {
            let plan = plan(&call(path).args, &env).unwrap();
            assert_eq!(plan.changes(), [format!("removed {what} {}", path.display())]);
            let result = apply_call(&call(path), false, &env);
            assert!(matches!(result.outcome, Outcome::Changed { .. }), "{result:?}");
            assert!(fs::symlink_metadata(path).is_err());
            assert_eq!(apply_call(&call(path), false, &env).outcome, Outcome::Unchanged);
        }
    }

    #[test]
    fn test_mode_removes_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("f");
        fs::write(&file, "x").unwrap();
        let result = apply_call(&call(&file), true, &ApplyEnv::default());
        assert!(matches!(result.outcome, Outcome::WouldChange { .. }));
        assert!(file.exists());
    }
}

//! `file.absent`: a path that must not exist (a file, a link, or a
//! directory with everything in it).

use std::fs;
use std::path::PathBuf;

use halite_proto::Value;
use serde::Deserialize;

use super::{Authored, Kind, Plan, Problem, absolute_path, args};
use crate::apply::ApplyEnv;

pub static KIND: Kind = Kind {
    name: "file.absent",
    summary: "A path that must not exist; a directory is removed with its contents.",
    example: "old-conf:\n  file.absent:\n    path: /etc/nginx/conf.d/default.conf\n",
    resolve,
    plan,
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
    /// What is there now, if anything.
    present: Option<&'static str>,
}

fn plan(args: &Value, _env: &ApplyEnv) -> Result<Box<dyn Plan>, String> {
    let path = PathBuf::from(args::string(args, "path")?);
    let present = match fs::symlink_metadata(&path) {
        Ok(meta) if meta.file_type().is_symlink() => Some("link"),
        Ok(meta) if meta.is_dir() => Some("directory"),
        Ok(_) => Some("file"),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
        Err(e) => return Err(format!("cannot inspect {}: {e}", path.display())),
    };
    Ok(Box::new(AbsentPlan { path, present }))
}

impl Plan for AbsentPlan {
    fn changes(&self) -> Vec<String> {
        self.present.map(|what| vec![format!("removed {what} {}", self.path.display())]).unwrap_or_default()
    }

    fn apply(self: Box<Self>) -> Result<Vec<String>, String> {
        let removed = match self.present {
            Some("directory") => fs::remove_dir_all(&self.path),
            Some(_) => fs::remove_file(&self.path),
            None => Ok(()),
        };
        match removed {
            Ok(()) => Ok(self.changes()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Vec::new()),
            Err(e) => Err(format!("cannot remove {}: {e}", self.path.display())),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::apply::apply_call;
    use halite_proto::{Outcome, StateCall};

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

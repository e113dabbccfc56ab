//! `file.symlink`: a symbolic link pointing at a given target, made through
//! `halite_fs` (relative to the parent's descriptor, made beside the name
//! and renamed over it).

use std::ffi::{OsStr, OsString};
use std::path::PathBuf;

use halite_fs::{Dir, FileType};

use halite_proto::Value;
use serde::Deserialize;

use super::{Authored, Kind, KindError, Plan, Problem, absolute_path, args};
use crate::env::ApplyEnv;

pub static KIND: Kind = Kind {
    name: "file.symlink",
    summary: "A symbolic link to `target`; `force` replaces a file in the way; `makedirs` creates missing parents.",
    example: "nginx-site:\n  file.symlink:\n    path: /etc/nginx/sites-enabled/default\n    target: /etc/nginx/sites-available/default\n",
    resolve,
    plan,
    file: None,
};

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Config {
    #[serde(alias = "name")]
    path: Option<String>,
    target: String,
    /// Replace a file or link (not a directory) that is in the way.
    #[serde(default)]
    force: bool,
    #[serde(default)]
    makedirs: bool,
}

fn resolve(state: &Authored<'_>) -> Result<Value, Vec<Problem>> {
    let config: Config = state.decode(KIND.name)?;
    let path = absolute_path(state, KIND.name, config.path).map_err(|p| vec![p])?;
    if config.target.is_empty() {
        return Err(vec![Problem::new(state.at("target"), format!("file.symlink `{}`: empty target", state.id))]);
    }
    Ok(Value::map()
        .with("path", path)
        .with("target", config.target)
        .with("force", config.force)
        .with("makedirs", config.makedirs))
}

#[derive(Debug)]
enum Current {
    Missing,
    Link(PathBuf),
    /// A file or directory, not a link.
    Other {
        is_dir: bool,
    },
}

#[derive(Debug)]
struct SymlinkPlan {
    path: PathBuf,
    target: PathBuf,
    makedirs: bool,
    /// The parent directory, opened when planning; `None` when missing.
    dir: Option<Dir>,
    name: OsString,
    current: Current,
}

fn plan(args: &Value, _env: &ApplyEnv) -> Result<Box<dyn Plan>, KindError> {
    let path = PathBuf::from(args::string(args, "path")?);
    let target = PathBuf::from(args::string(args, "target")?);
    let force = args::bool_or(args, "force", false);
    let (dir, name) = match halite_fs::open_parent(&path, None) {
        Ok((dir, name)) => (Some(dir), name),
        Err(e) if e.is_not_found() => (None, path.file_name().map(OsStr::to_os_string).unwrap_or_default()),
        Err(e) => return Err(e.into()),
    };
    let entry = match &dir {
        Some(dir) => dir.entry(&name)?,
        None => None,
    };
    let current = match (&dir, entry) {
        (Some(dir), Some(stat)) if stat.file_type == FileType::Link => Current::Link(dir.read_link(&name)?),
        (_, Some(stat)) => {
            let is_dir = stat.file_type == FileType::Dir;
            if !force || is_dir {
                return Err(KindError::NotALink { path, is_dir });
            }
            Current::Other { is_dir: false }
        }
        (_, None) => Current::Missing,
    };
    let makedirs = args::bool_or(args, "makedirs", false);
    Ok(Box::new(SymlinkPlan { path, target, makedirs, dir, name, current }))
}

impl Plan for SymlinkPlan {
    fn changes(&self) -> Vec<String> {
        let (path, target) = (self.path.display(), self.target.display());
        match &self.current {
            Current::Link(now) if *now == self.target => Vec::new(),
            Current::Link(now) => vec![format!("link {path}: -> {} becomes -> {target}", now.display())],
            Current::Missing => vec![format!("created link {path} -> {target}")],
            Current::Other { .. } => vec![format!("replaced the file {path} with a link -> {target}")],
        }
    }

    fn apply(self: Box<Self>) -> Result<Vec<String>, KindError> {
        let changes = self.changes();
        if let Current::Other { is_dir: true } = self.current {
            return Err(KindError::IsDirectory { path: self.path.clone() });
        }
        let opened;
        let dir = match &self.dir {
            Some(dir) => dir,
            None => {
                let parent = self.path.parent().ok_or_else(|| KindError::NoParent { path: self.path.clone() })?;
                opened = if self.makedirs { Dir::create_all(parent, 0o755) } else { Dir::open(parent) }?;
                &opened
            }
        };
        // Made beside it and renamed over it: never a moment without a link.
        dir.symlink_atomic(&self.target, &self.name)?;
        Ok(changes)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::apply::apply_call;
    use halite_proto::{Outcome, StateCall};
    use std::fs;

    fn call(path: &std::path::Path, target: &str, force: bool) -> StateCall {
        StateCall::new(
            "t",
            KIND.name,
            Value::map().with("path", path.to_str().unwrap()).with("target", target).with("force", force),
        )
    }

    #[test]
    fn creates_retargets_and_is_then_unchanged() {
        let dir = tempfile::tempdir().unwrap();
        let link = dir.path().join("l");
        let env = ApplyEnv::default();
        let result = apply_call(&call(&link, "/etc/a", false), false, &env);
        assert!(matches!(result.outcome, Outcome::Changed { .. }), "{result:?}");
        assert_eq!(fs::read_link(&link).unwrap(), PathBuf::from("/etc/a"));
        assert_eq!(apply_call(&call(&link, "/etc/a", false), false, &env).outcome, Outcome::Unchanged);
        let result = apply_call(&call(&link, "/etc/b", false), false, &env);
        assert_eq!(
            result.outcome,
            Outcome::Changed { changes: vec![format!("link {}: -> /etc/a becomes -> /etc/b", link.display())] }
        );
        assert_eq!(fs::read_link(&link).unwrap(), PathBuf::from("/etc/b"));
        assert_eq!(fs::read_dir(dir.path()).unwrap().count(), 1, "a temporary link was left behind");
    }

    #[test]
    fn a_file_in_the_way_needs_force_and_test_mode_changes_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("f");
        fs::write(&path, "x").unwrap();
        let env = ApplyEnv::default();
        assert!(apply_call(&call(&path, "/etc/a", false), false, &env).outcome.is_failed());
        assert!(matches!(apply_call(&call(&path, "/etc/a", true), true, &env).outcome, Outcome::WouldChange { .. }));
        assert_eq!(fs::read(&path).unwrap(), b"x");
        assert!(matches!(apply_call(&call(&path, "/etc/a", true), false, &env).outcome, Outcome::Changed { .. }));
        assert_eq!(fs::read_link(&path).unwrap(), PathBuf::from("/etc/a"));
        assert!(
            apply_call(&call(dir.path(), "/etc/a", true), false, &env).outcome.is_failed(),
            "a directory is never replaced"
        );
    }
}

//! `file.symlink`: a symbolic link pointing at a given target.

use std::fs;
use std::path::PathBuf;

use halite_proto::Value;
use serde::Deserialize;

use super::{Authored, Kind, Plan, Problem, absolute_path, args};
use crate::apply::ApplyEnv;

pub static KIND: Kind = Kind {
    name: "file.symlink",
    summary: "A symbolic link to `target`; `force` replaces a file in the way; `makedirs` creates missing parents.",
    example: "nginx-site:\n  file.symlink:\n    path: /etc/nginx/sites-enabled/default\n    target: /etc/nginx/sites-available/default\n",
    resolve,
    plan,
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
    current: Current,
}

fn plan(args: &Value, _env: &ApplyEnv) -> Result<Box<dyn Plan>, String> {
    let path = PathBuf::from(args::string(args, "path")?);
    let target = PathBuf::from(args::string(args, "target")?);
    let force = args::bool_or(args, "force", false);
    let current = match fs::symlink_metadata(&path) {
        Ok(meta) if meta.file_type().is_symlink() => {
            Current::Link(fs::read_link(&path).map_err(|e| format!("cannot read the link {}: {e}", path.display()))?)
        }
        Ok(meta) => {
            if !force || meta.is_dir() {
                return Err(format!(
                    "{} exists and is not a link{}",
                    path.display(),
                    if meta.is_dir() {
                        " (a directory is never replaced)"
                    } else {
                        " (set `force: true` to replace it)"
                    }
                ));
            }
            Current::Other { is_dir: false }
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Current::Missing,
        Err(e) => return Err(format!("cannot inspect {}: {e}", path.display())),
    };
    Ok(Box::new(SymlinkPlan { path, target, makedirs: args::bool_or(args, "makedirs", false), current }))
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

    fn apply(self: Box<Self>) -> Result<Vec<String>, String> {
        let changes = self.changes();
        let fail = |what: &str, e: std::io::Error| format!("cannot {what} {}: {e}", self.path.display());
        let parent = self.path.parent().ok_or_else(|| format!("{} has no parent", self.path.display()))?;
        if self.makedirs {
            fs::create_dir_all(parent).map_err(|e| fail("create the directory of", e))?;
        }
        if let Current::Other { is_dir: true } = self.current {
            return Err(format!("{} is a directory", self.path.display()));
        }
        // Made beside it and renamed over it: never a moment without a link.
        let temp = parent.join(format!(".halite-link-{}", std::process::id()));
        let _ = fs::remove_file(&temp);
        std::os::unix::fs::symlink(&self.target, &temp).map_err(|e| fail("create a link beside", e))?;
        fs::rename(&temp, &self.path).map_err(|e| {
            let _ = fs::remove_file(&temp);
            fail("replace", e)
        })?;
        Ok(changes)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::apply::apply_call;
    use halite_proto::{Outcome, StateCall};

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

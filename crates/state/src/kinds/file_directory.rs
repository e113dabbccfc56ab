//! `file.directory`: a directory with a given mode and owner.
//!
//! Through `halite_fs`: the directory is opened `O_NOFOLLOW` in its parent
//! (a link there fails the state) and its mode and owner are set with
//! `fchmod`/`fchown` on that descriptor.

use std::path::PathBuf;

use halite_fs::{Dir, FsError, Stat};

use halite_proto::Value;
use serde::Deserialize;

use super::file_managed::{lookup_group, lookup_user, parse_mode};
use super::{Authored, Kind, KindError, Plan, Problem, absolute_path, args};
use crate::env::ApplyEnv;

pub static KIND: Kind = Kind {
    name: "file.directory",
    summary: "A directory with the given mode and owner; `makedirs` creates missing parents.",
    example: "www:\n  file.directory:\n    path: /srv/www\n    mode: \"0755\"\n    makedirs: true\n",
    resolve,
    plan,
    file: None,
};

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Config {
    #[serde(alias = "name")]
    path: Option<String>,
    mode: Option<serde_json::Value>,
    user: Option<String>,
    group: Option<String>,
    /// Create missing parents (as Salt, off unless asked).
    #[serde(default)]
    makedirs: bool,
}

fn resolve(state: &Authored<'_>) -> Result<Value, Vec<Problem>> {
    let config: Config = state.decode(KIND.name)?;
    let mut problems = Vec::new();
    let path = absolute_path(state, KIND.name, config.path).map_err(|p| problems.push(p)).ok();
    let mode = config.mode.as_ref().map(parse_mode).transpose().unwrap_or_else(|message| {
        problems.push(
            Problem::new(state.at("mode"), format!("file.directory `{}`: {message}", state.id))
                .help("write the mode in octal as a quoted string, e.g. mode: \"0755\""),
        );
        None
    });
    if !problems.is_empty() {
        return Err(problems);
    }
    let mut resolved = Value::map().with("path", path.unwrap_or_default()).with("makedirs", config.makedirs);
    if let Some(mode) = mode {
        resolved = resolved.with("mode", mode);
    }
    if let Some(user) = config.user {
        resolved = resolved.with("user", user);
    }
    if let Some(group) = config.group {
        resolved = resolved.with("group", group);
    }
    Ok(resolved)
}

#[derive(Debug)]
struct DirectoryPlan {
    path: PathBuf,
    mode: Option<u32>,
    owner: Option<u32>,
    group: Option<u32>,
    makedirs: bool,
    /// The existing directory, opened `O_NOFOLLOW` in its parent, and its
    /// `fstat`: a mode or owner change is made on this descriptor.
    current: Option<(Dir, Stat)>,
}

fn plan(args: &Value, _env: &ApplyEnv) -> Result<Box<dyn Plan>, KindError> {
    let path = PathBuf::from(args::string(args, "path")?);
    let makedirs = args::bool_or(args, "makedirs", false);
    let opened = match halite_fs::open_parent(&path, None) {
        Ok((parent, name)) => parent.open_dir(&name),
        Err(e) if e.is_not_found() => Ok(None),
        Err(e) => Err(e),
    };
    let current = match opened {
        Ok(Some(dir)) => {
            let stat = dir.stat()?;
            Some((dir, stat))
        }
        Ok(None) => {
            if !makedirs && path.parent().is_some_and(|p| Dir::open(p).is_err()) {
                return Err(KindError::ParentMissing { path });
            }
            None
        }
        Err(FsError::WrongType { .. }) => return Err(KindError::NotADirectory { path }),
        Err(e) => return Err(e.into()),
    };
    Ok(Box::new(DirectoryPlan {
        path,
        mode: args::opt_u32(args, "mode"),
        owner: args::opt_string(args, "user").map(lookup_user).transpose()?,
        group: args::opt_string(args, "group").map(lookup_group).transpose()?,
        makedirs,
        current,
    }))
}

impl DirectoryPlan {
    fn mode_differs(&self) -> Option<(u32, u32)> {
        let (mode, desired) = (self.current.as_ref()?.1.mode, self.mode?);
        (mode != desired).then_some((mode, desired))
    }

    fn owner_differs(&self) -> bool {
        self.current.as_ref().is_some_and(|(_, stat)| {
            self.owner.is_some_and(|u| u != stat.uid) || self.group.is_some_and(|g| g != stat.gid)
        })
    }
}

impl Plan for DirectoryPlan {
    fn changes(&self) -> Vec<String> {
        let mut changes = Vec::new();
        if self.current.is_none() {
            changes.push(format!("created directory {}", self.path.display()));
        }
        if let Some((from, to)) = self.mode_differs() {
            changes.push(format!("mode of {}: {from:04o} -> {to:04o}", self.path.display()));
        }
        if self.owner_differs() {
            changes.push(format!("owner of {} changed", self.path.display()));
        }
        changes
    }

    fn apply(self: Box<Self>) -> Result<Vec<String>, KindError> {
        let created;
        let dir = match &self.current {
            Some((dir, _)) => dir,
            None => {
                created = if self.makedirs {
                    Dir::create_all(&self.path, 0o755)
                } else {
                    let (parent, name) = halite_fs::open_parent(&self.path, None)?;
                    parent.create_dir(&name, 0o755)
                }?;
                &created
            }
        };
        if let Some(mode) = self.mode
            && (self.current.is_none() || self.mode_differs().is_some())
        {
            dir.set_mode(mode)?;
        }
        if (self.current.is_none() && (self.owner.is_some() || self.group.is_some())) || self.owner_differs() {
            dir.set_owner(self.owner, self.group)?;
        }
        Ok(self.changes())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::apply::apply_call;
    use halite_proto::{Outcome, StateCall};
    use std::fs;
    use std::os::unix::fs::MetadataExt;

    fn call(path: &std::path::Path, mode: u32, makedirs: bool) -> StateCall {
        StateCall::new(
            "t",
            KIND.name,
            Value::map().with("path", path.to_str().unwrap()).with("mode", mode).with("makedirs", makedirs),
        )
    }

    fn mode_of(path: &std::path::Path) -> u32 {
        fs::metadata(path).unwrap().mode() & 0o7777
    }

    #[test]
    fn creates_with_mode_then_fixes_mode_drift() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("a/b");
        let env = ApplyEnv::default();
        let refused = apply_call(&call(&path, 0o750, false), false, &env);
        assert!(matches!(&refused.outcome, Outcome::Failed { error } if error.contains("makedirs")), "{refused:?}");
        let result = apply_call(&call(&path, 0o750, true), false, &env);
        assert!(matches!(result.outcome, Outcome::Changed { .. }), "{result:?}");
        assert_eq!(mode_of(&path), 0o750);
        assert_eq!(apply_call(&call(&path, 0o750, true), false, &env).outcome, Outcome::Unchanged);
        crate::test_support::chmod(&path, 0o777);
        let plan = plan(&call(&path, 0o750, true).args, &env).unwrap();
        assert_eq!(plan.changes(), [format!("mode of {}: 0777 -> 0750", path.display())]);
        apply_call(&call(&path, 0o750, true), false, &env);
        assert_eq!(mode_of(&path), 0o750);
    }

    #[test]
    fn test_mode_creates_nothing_and_a_file_in_the_way_fails() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("new");
        let env = ApplyEnv::default();
        assert!(matches!(apply_call(&call(&path, 0o755, false), true, &env).outcome, Outcome::WouldChange { .. }));
        assert!(!path.exists());
        fs::write(&path, "x").unwrap();
        assert!(apply_call(&call(&path, 0o755, false), false, &env).outcome.is_failed());
    }
}

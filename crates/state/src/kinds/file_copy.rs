//! `file.copy`: a file on the agent copied to another path (Salt's
//! `file.copy`: `source`, `force`, `makedirs`, `preserve`, `user`,
//! `group`, `mode`). Without `force` an existing target is left as it is
//! (its mode and owner still kept in shape). Both files are reached
//! through `halite_fs` (no untrusted link followed, neither file a link),
//! the source read through the descriptor it was inspected on, the target
//! replaced with the one atomic write. The source is under the agent's
//! `root` like every authored path.

use std::ffi::OsString;
use std::io::{Seek, SeekFrom};
use std::path::{Path, PathBuf};

use halite_fs::{Dir, OpenFile, Perms};
use halite_proto::{Sha256, Value};
use serde::Deserialize;

use super::file_managed::{lookup_group, lookup_user, parse_mode};
use super::{Authored, Kind, KindError, Plan, Problem, absolute_path, args};
use crate::env::ApplyEnv;

pub static KIND: Kind = Kind {
    name: "file.copy",
    summary: "A file on the agent copied to another path; an existing target is replaced only with `force: true`.",
    example: "default-conf:\n  file.copy:\n    name: /etc/app/app.conf\n    source: /usr/share/app/app.conf.example\n    mode: \"0640\"\n",
    resolve,
    plan,
    file: None,
};

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Config {
    #[serde(alias = "name")]
    path: Option<String>,
    source: Option<String>,
    #[serde(default)]
    force: bool,
    #[serde(default)]
    makedirs: bool,
    #[serde(default)]
    preserve: bool,
    user: Option<String>,
    group: Option<String>,
    mode: Option<serde_json::Value>,
    /// Salt: copy into the directory `name`; halite names the file.
    #[serde(default)]
    subdir: bool,
}

fn resolve(state: &Authored<'_>) -> Result<Value, Vec<Problem>> {
    let config: Config = state.decode(KIND.name)?;
    let mut problems = Vec::new();
    let problem =
        |key: &str, message: String| Problem::new(state.at(key), format!("file.copy `{}`: {message}", state.id));
    let path = absolute_path(state, KIND.name, config.path).map_err(|p| vec![p])?;
    let source = config.source.unwrap_or_default();
    if !source.starts_with('/') {
        problems.push(
            problem("source", format!("source `{source}` is not an absolute path on the agent"))
                .help("give the full path of the file to copy, e.g. /usr/share/doc/app/example.conf"),
        );
    }
    if config.subdir {
        problems.push(problem("subdir", "`subdir` is not supported".into()).help("name the target file in `name`"));
    }
    let mode = config.mode.as_ref().map(parse_mode).transpose().unwrap_or_else(|e| {
        problems.push(
            problem("mode", e.to_string()).help("write the mode in octal as a quoted string, e.g. mode: \"0644\""),
        );
        None
    });
    if config.preserve && (config.user.is_some() || config.group.is_some() || mode.is_some()) {
        problems.push(problem("preserve", "`preserve` with `user`, `group` or `mode`".into()).help("keep one of them"));
    }
    if !problems.is_empty() {
        return Err(problems);
    }
    let mut resolved = Value::map()
        .with("path", path)
        .with("source", source)
        .with("force", config.force)
        .with("makedirs", config.makedirs)
        .with("preserve", config.preserve);
    if let Some(mode) = mode {
        resolved = resolved.with("mode", mode);
    }
    for (key, value) in [("user", config.user), ("group", config.group)] {
        if let Some(value) = value {
            resolved = resolved.with(key, value);
        }
    }
    Ok(resolved)
}

#[derive(Debug)]
struct CopyPlan {
    path: PathBuf,
    source_path: PathBuf,
    source: OpenFile,
    /// The target's directory (`None`: to be made) and the name in it.
    dir: Option<Dir>,
    name: OsString,
    target: Option<OpenFile>,
    copy: bool,
    perms: Perms,
    makedirs: bool,
}

fn open(path: &Path) -> Result<(Option<Dir>, OsString, Option<OpenFile>), KindError> {
    let name = path.file_name().ok_or_else(|| halite_fs::FsError::NoName { path: path.to_owned() })?.to_os_string();
    match halite_fs::open_parent(path, None) {
        Ok((dir, name)) => {
            let file = dir.open_file(&name)?;
            Ok((Some(dir), name, file))
        }
        Err(e) if e.is_not_found() => Ok((None, name, None)),
        Err(e) => Err(e.into()),
    }
}

fn digest(file: &OpenFile, path: &Path) -> Result<Sha256, KindError> {
    let fail = |source| KindError::Read { path: path.to_owned(), source };
    let mut reader = file.file();
    reader.seek(SeekFrom::Start(0)).map_err(fail)?;
    Sha256::of_reader(reader).map_err(fail)
}

fn plan(args: &Value, env: &ApplyEnv) -> Result<Box<dyn Plan>, KindError> {
    let path = PathBuf::from(args::string(args, "path")?);
    let source_path = env.rooted(args::string(args, "source")?);
    let (_, _, source) = open(&source_path)?;
    let source =
        source.ok_or_else(|| KindError::Missing { path: source_path.clone(), help: " (the source to copy)" })?;
    let (dir, name, target) = open(&path)?;
    let copy = match &target {
        None => true,
        Some(_) if !args::bool_or(args, "force", false) => false,
        Some(target) => {
            target.stat().size != source.stat().size || digest(target, &path)? != digest(&source, &source_path)?
        }
    };
    let stat = source.stat();
    let preserve = args::bool_or(args, "preserve", false);
    let perms = Perms {
        mode: args::opt_u32(args, "mode").unwrap_or(stat.mode),
        uid: match args::opt_string(args, "user") {
            Some(user) => Some(lookup_user(user)?),
            None => preserve.then_some(stat.uid),
        },
        gid: match args::opt_string(args, "group") {
            Some(group) => Some(lookup_group(group)?),
            None => preserve.then_some(stat.gid),
        },
    };
    let makedirs = args::bool_or(args, "makedirs", false);
    Ok(Box::new(CopyPlan { path, source_path, source, dir, name, target, copy, perms, makedirs }))
}

impl CopyPlan {
    /// What of mode and owner differs on a target that is kept.
    fn perms_differ(&self) -> Vec<String> {
        let Some(target) = self.target.as_ref().filter(|_| !self.copy) else { return Vec::new() };
        let stat = target.stat();
        let mut changes = Vec::new();
        if stat.mode != self.perms.mode {
            changes.push(format!("mode of {}: {:04o} -> {:04o}", self.path.display(), stat.mode, self.perms.mode));
        }
        if self.perms.uid.is_some_and(|u| u != stat.uid) || self.perms.gid.is_some_and(|g| g != stat.gid) {
            changes.push(format!("owner of {} changed", self.path.display()));
        }
        changes
    }
}

impl Plan for CopyPlan {
    fn changes(&self) -> Vec<String> {
        if self.copy {
            return vec![format!("copied {} to {}", self.source_path.display(), self.path.display())];
        }
        self.perms_differ()
    }

    fn apply(self: Box<Self>) -> Result<Vec<String>, KindError> {
        let changes = self.changes();
        if changes.is_empty() {
            return Ok(changes);
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
        if self.copy {
            let mut reader = self.source.file();
            reader
                .seek(SeekFrom::Start(0))
                .map_err(|source| KindError::Read { path: self.source_path.clone(), source })?;
            dir.write_atomic(&self.name, &mut reader, self.perms)?;
            return Ok(changes);
        }
        // Mode and owner fixed in place, only on the file that was planned.
        let planned = self.target.as_ref().map(OpenFile::stat);
        let file = dir.open_file(&self.name)?;
        let file = file.filter(|f| planned.is_some_and(|p| f.stat().same_file(&p)));
        let file = file.ok_or_else(|| halite_fs::FsError::Changed { path: self.path.clone() })?;
        if self.perms.uid.is_some() || self.perms.gid.is_some() {
            file.set_owner(self.perms.uid, self.perms.gid)?;
        }
        file.set_mode(self.perms.mode)?;
        Ok(changes)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::apply::apply_call;
    use crate::kind_tests::{changes, load, resolved};

    #[test]
    fn copies_then_reports_unchanged_and_replaces_only_with_force() {
        let root = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(root.path().join("src")).unwrap();
        std::fs::write(root.path().join("src/a"), "A\n").unwrap();
        crate::test_support::chmod(&root.path().join("src/a"), 0o640);
        let env = ApplyEnv { root: root.path().to_path_buf(), ..ApplyEnv::default() };
        let target = root.path().join("etc/a");
        let call = resolved(KIND.name, "source: /src/a\nmakedirs: true");
        let call = crate::kind_tests::at_path(&call, &target);
        assert_eq!(changes(apply_call(&call, true, &env).outcome).len(), 1);
        assert!(!target.exists(), "test mode copied");
        assert_eq!(changes(apply_call(&call, false, &env).outcome).len(), 1);
        assert_eq!(std::fs::read(&target).unwrap(), b"A\n");
        assert!(changes(apply_call(&call, false, &env).outcome).is_empty());
        std::fs::write(&target, "changed\n").unwrap();
        assert!(changes(apply_call(&call, false, &env).outcome).is_empty(), "replaced without force");
        let forced = call.clone().with_arg("force", true);
        assert_eq!(changes(apply_call(&forced, false, &env).outcome).len(), 1);
        assert_eq!(std::fs::read(&target).unwrap(), b"A\n");
        assert!(changes(apply_call(&forced, false, &env).outcome).is_empty());
        // The mode of a kept target is kept in shape.
        let moded = call.with_arg("mode", 0o600i64);
        assert_eq!(changes(apply_call(&moded, false, &env).outcome).len(), 1);
        assert!(changes(apply_call(&moded, false, &env).outcome).is_empty());
    }

    #[test]
    fn a_missing_source_or_a_link_fails() {
        let root = tempfile::tempdir().unwrap();
        let env = ApplyEnv { root: root.path().to_path_buf(), ..ApplyEnv::default() };
        let call = crate::kind_tests::at_path(&resolved(KIND.name, "source: /missing"), &root.path().join("t"));
        assert!(apply_call(&call, false, &env).outcome.is_failed());
        std::fs::write(root.path().join("secret"), "x").unwrap();
        std::os::unix::fs::symlink(root.path().join("secret"), root.path().join("link")).unwrap();
        let call = crate::kind_tests::at_path(&resolved(KIND.name, "source: /link"), &root.path().join("t"));
        assert!(apply_call(&call, false, &env).outcome.is_failed());
        assert!(!root.path().join("t").exists());
    }

    #[test]
    fn resolve_errors_point_at_the_argument() {
        let diagnostics = load("x:\n  file.copy:\n    name: /etc/x\n    source: rel/path\n    mode: '999'\n");
        let lines: Vec<(u64, &str)> = diagnostics.iter().map(|d| (d.line, d.message.as_str())).collect();
        assert_eq!(lines.len(), 2, "{lines:#?}");
        assert!(lines[0].0 == 4 && lines[0].1.contains("not an absolute"), "{lines:#?}");
        assert!(lines[1].0 == 5 && lines[1].1.contains("999"), "{lines:#?}");
    }
}

//! `mount.mounted`: a file system mounted at a directory, now and at boot
//! (Salt's `mount.mounted`: `name` the mount point, `device`, `fstype`,
//! `opts`, `dump`, `pass_num`, `config` (default `/etc/fstab`),
//! `persist`, `mount`, `mkmnt`).
//!
//! The boot half is the fstab line for the mount point (`device
//! name fstype opts dump pass`), kept through [`crate::edit`] (a line for
//! the same mount point is replaced). The live half reads `/proc/mounts`
//! under the agent's root (read-only) and, when nothing is mounted there,
//! runs `mount -t <fstype> -o <opts> <device> <mount point under the
//! root>`. A different device already mounted there is reported, not
//! unmounted (remounting under a running system is left to the operator).

use std::path::PathBuf;

use halite_proto::Value;
use serde::Deserialize;

use super::{Authored, Kind, KindError, Plan, Problem, args};
use crate::command::{self, Spec};
use crate::edit::{EditPlan, Edited, NewFile};
use crate::env::ApplyEnv;
use crate::text;

pub static KIND: Kind = Kind {
    name: "mount.mounted",
    summary: "A file system mounted at a directory now (mount) and at boot (its /etc/fstab line).",
    example: "/srv/data:\n  mount.mounted:\n    device: UUID=0a1b2c3d-0000-4000-8000-000000000000\n    fstype: ext4\n    opts: noatime\n    mkmnt: true\n",
    resolve,
    plan,
    file: None,
};

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Config {
    name: Option<String>,
    device: String,
    fstype: String,
    opts: Option<super::OneOrMany>,
    #[serde(default)]
    dump: u32,
    #[serde(default)]
    pass_num: u32,
    config: Option<String>,
    #[serde(default = "yes")]
    persist: bool,
    #[serde(default = "yes")]
    mount: bool,
    #[serde(default)]
    mkmnt: bool,
}

fn yes() -> bool {
    true
}

fn field(value: &str) -> bool {
    !value.is_empty() && !value.contains(char::is_whitespace) && !value.starts_with('-')
}

fn resolve(state: &Authored<'_>) -> Result<Value, Vec<Problem>> {
    let config: Config = state.decode(KIND.name)?;
    let mut problems = Vec::new();
    let problem =
        |key: &str, message: String| Problem::new(state.at(key), format!("mount.mounted `{}`: {message}", state.id));
    let name = config.name.unwrap_or_else(|| state.id.to_owned());
    if !name.starts_with('/') || !field(&name) {
        problems.push(problem("name", format!("`{name}` is not an absolute mount point")));
    }
    for (key, value) in [("device", &config.device), ("fstype", &config.fstype)] {
        if !field(value) {
            problems.push(problem(key, format!("`{value}` is not a {key}")));
        }
    }
    let opts = config.opts.map(super::OneOrMany::into_vec).map(|o| o.join(",")).unwrap_or_else(|| "defaults".into());
    if !field(&opts) {
        problems.push(problem("opts", format!("`{opts}` is not a list of mount options")));
    }
    let fstab = config.config.unwrap_or_else(|| "/etc/fstab".into());
    if !fstab.starts_with('/') {
        problems.push(problem("config", format!("`{fstab}` is not absolute")));
    }
    if !problems.is_empty() {
        return Err(problems);
    }
    let line = format!("{}\t{name}\t{}\t{opts}\t{}\t{}", config.device, config.fstype, config.dump, config.pass_num);
    Ok(Value::map()
        .with("path", fstab)
        .with("name", name)
        .with("device", config.device)
        .with("fstype", config.fstype)
        .with("opts", opts)
        .with("line", line)
        .with("persist", config.persist)
        .with("mount", config.mount)
        .with("mkmnt", config.mkmnt))
}

/// The fstab text with `line` for its mount point.
fn set_line(text: &str, line: &str, name: &str) -> String {
    let ours = |l: &str| !l.trim_start().starts_with('#') && l.split_whitespace().nth(1) == Some(name);
    let lines = text::lines(text);
    let same = |a: &str, b: &str| a.split_whitespace().eq(b.split_whitespace());
    match lines.iter().position(|l| ours(l)) {
        Some(i) if same(lines[i], line) => text.to_owned(),
        Some(i) => format!("{}{line}\n{}", lines[..i].concat(), lines[i + 1..].concat()),
        None => format!("{}{line}\n", text::with_newline(text)),
    }
}

#[derive(Debug)]
struct MountPlan {
    fstab: Option<EditPlan>,
    /// `mount`'s arguments, when nothing is mounted there.
    mount: Option<Vec<String>>,
    mkmnt: Option<PathBuf>,
    path: Option<std::ffi::OsString>,
}

fn plan(args: &Value, env: &ApplyEnv) -> Result<Box<dyn Plan>, KindError> {
    let name = args::string(args, "name")?;
    let device = args::string(args, "device")?;
    let fstab = if args::bool_or(args, "persist", true) {
        let path = PathBuf::from(args::string(args, "path")?);
        let line = args::string(args, "line")?;
        Some(EditPlan::new(&path, env, true, NewFile::default(), |text| {
            Ok((
                Edited::Text(set_line(text.unwrap_or_default(), line, name)),
                vec![format!("{name} in {}", path.display())],
            ))
        })?)
    } else {
        None
    };
    let mut mount = None;
    let mut mkmnt = None;
    if args::bool_or(args, "mount", true) {
        let mounts_path = env.rooted("/proc/mounts");
        let mounts = std::fs::read_to_string(&mounts_path)
            .map_err(|source| KindError::Read { path: mounts_path.clone(), source })?;
        // Seen from inside the root, or (a root that is a directory of
        // this host's) with the root's own path in front.
        let rooted = env.rooted(name).display().to_string();
        let here = mounts.lines().find(|l| l.split_whitespace().nth(1).is_some_and(|m| m == name || m == rooted));
        match here.and_then(|l| l.split_whitespace().next()) {
            Some(other) if other != device && !device.contains('=') => {
                return Err(KindError::MountedElsewhere {
                    point: name.to_owned(),
                    mounted: other.to_owned(),
                    device: device.to_owned(),
                });
            }
            Some(_) => {}
            None => {
                let point = env.rooted(name);
                if !point.is_dir() {
                    if !args::bool_or(args, "mkmnt", false) {
                        return Err(KindError::Missing { path: point, help: " (set `mkmnt: true` to make it)" });
                    }
                    mkmnt = Some(point.clone());
                }
                let fstype = args::string(args, "fstype")?;
                let opts = args::string(args, "opts")?;
                mount = Some(
                    ["-t", fstype, "-o", opts, "--", device]
                        .iter()
                        .map(|s| (*s).to_owned())
                        .chain([point.display().to_string()])
                        .collect(),
                );
            }
        }
    }
    Ok(Box::new(MountPlan { fstab, mount, mkmnt, path: env.path.clone() }))
}

impl Plan for MountPlan {
    fn changes(&self) -> Vec<String> {
        let mut changes = self.fstab.as_ref().map(Plan::changes).unwrap_or_default();
        if let Some(argv) = &self.mount {
            changes.push(format!("mount {}", argv.join(" ")));
        }
        changes
    }

    fn diff(&self) -> Option<String> {
        self.fstab.as_ref().and_then(Plan::diff)
    }

    fn apply(self: Box<Self>) -> Result<Vec<String>, KindError> {
        let changes = self.changes();
        if let Some(fstab) = self.fstab {
            Box::new(fstab).apply()?;
        }
        if let Some(point) = &self.mkmnt {
            halite_fs::Dir::create_all(point, 0o755)?;
        }
        if let Some(argv) = &self.mount {
            let mut spec = Spec::new(["mount"]);
            spec.argv.extend(argv.iter().cloned());
            let output = command::run(&spec, self.path.as_ref())?;
            if !output.success() {
                return Err(KindError::Failed { command: spec.display(), output });
            }
        }
        Ok(changes)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::apply::apply_call;
    use crate::kind_tests::{changes, load, resolved};
    use crate::kinds::service_running::stand_in::StandIns;

    #[test]
    fn keeps_the_fstab_line_and_mounts_then_is_unchanged() {
        let fake = StandIns::new();
        let root = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(root.path().join("proc")).unwrap();
        let mounts = root.path().join("proc/mounts");
        std::fs::write(&mounts, "/dev/sda1 / ext4 rw 0 0\n").unwrap();
        std::fs::create_dir_all(root.path().join("etc")).unwrap();
        std::fs::write(
            root.path().join("etc/fstab"),
            "/dev/sda1 / ext4 defaults 0 1\n/dev/old /srv/data xfs defaults 0 0\n",
        )
        .unwrap();
        // `mount` records the mount in the root's /proc/mounts.
        let script =
            format!("#!/bin/sh\nfor a; do last=$a; done\necho \"$6 $last $2 $4 0 0\" >> {}\n", mounts.display());
        std::fs::write(fake.dir.path().join("bin/mount"), script).unwrap();
        crate::test_support::chmod(&fake.dir.path().join("bin/mount"), 0o755);
        let env = ApplyEnv { root: root.path().to_path_buf(), ..fake.env() };
        let call = resolved(
            KIND.name,
            "name: /srv/data\ndevice: /dev/sdb1\nfstype: ext4\nopts: [noatime, nodev]\nmkmnt: true",
        );
        let call = crate::paths::rooted_call(&call, root.path());
        let call = call.with_arg("path", root.path().join("etc/fstab").display().to_string());
        assert_eq!(changes(apply_call(&call, true, &env).outcome).len(), 2);
        assert!(!root.path().join("srv/data").exists(), "test mode made the mount point");
        assert_eq!(changes(apply_call(&call, false, &env).outcome).len(), 2);
        assert_eq!(
            std::fs::read_to_string(root.path().join("etc/fstab")).unwrap(),
            "/dev/sda1 / ext4 defaults 0 1\n/dev/sdb1\t/srv/data\text4\tnoatime,nodev\t0\t0\n"
        );
        assert!(root.path().join("srv/data").is_dir());
        assert!(
            std::fs::read_to_string(&mounts).unwrap().contains("/dev/sdb1 "),
            "{}",
            std::fs::read_to_string(&mounts).unwrap()
        );
        assert!(changes(apply_call(&call, false, &env).outcome).is_empty());
    }

    #[test]
    fn resolve_errors_point_at_the_argument() {
        let diagnostics = load("a:\n  mount.mounted:\n    name: srv\n    device: '-o x'\n    fstype: ext4\n");
        let lines: Vec<u64> = diagnostics.iter().map(|d| d.line).collect();
        assert_eq!(lines, [3, 4], "{diagnostics:#?}");
    }
}

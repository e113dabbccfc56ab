//! `timezone.system`: the system's time zone (Salt's `timezone.system`:
//! `name`, `utc`), the Debian way: `/etc/localtime` a link to
//! `/usr/share/zoneinfo/<name>` (replaced atomically, `halite_fs`) and
//! `/etc/timezone` holding the name (through [`crate::edit`]). The zone
//! must exist under the agent's root. The hardware clock stays in UTC
//! (`utc: true`, Salt's default); local time there is not supported.

use std::ffi::OsString;
use std::path::{Path, PathBuf};

use halite_fs::Dir;
use halite_proto::Value;
use serde::Deserialize;

use super::{Authored, Kind, KindError, Plan, Problem, args};
use crate::edit::{EditPlan, Edited, NewFile};
use crate::env::ApplyEnv;

pub static KIND: Kind = Kind {
    name: "timezone.system",
    summary: "The system's time zone: /etc/localtime linked to the zone, /etc/timezone naming it.",
    example: "clock:\n  timezone.system:\n    name: Europe/Berlin\n",
    resolve,
    plan,
    file: None,
};

const ZONEINFO: &str = "/usr/share/zoneinfo";

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Config {
    /// The zone, e.g. `Europe/Berlin`; defaults to the state id.
    name: Option<String>,
    #[serde(default = "yes")]
    utc: bool,
}

fn yes() -> bool {
    true
}

fn resolve(state: &Authored<'_>) -> Result<Value, Vec<Problem>> {
    let config: Config = state.decode(KIND.name)?;
    let mut problems = Vec::new();
    let name = config.name.unwrap_or_else(|| state.id.to_owned());
    let valid = !name.is_empty()
        && name.split('/').all(|w| !w.is_empty() && w != ".." && w != ".")
        && name.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '/' | '_' | '-' | '+'));
    if !valid {
        problems.push(
            Problem::new(state.at("name"), format!("timezone.system `{}`: `{name}` is not a time zone name", state.id))
                .help("e.g. Europe/Berlin or UTC (a file under /usr/share/zoneinfo)"),
        );
    }
    if !config.utc {
        problems.push(
            Problem::new(
                state.at("utc"),
                format!("timezone.system `{}`: a hardware clock in local time is not supported", state.id),
            )
            .help("remove `utc: false`; halite keeps the hardware clock in UTC"),
        );
    }
    if !problems.is_empty() {
        return Err(problems);
    }
    Ok(Value::map().with("path", "/etc/localtime").with("name", name))
}

#[derive(Debug)]
struct ZonePlan {
    localtime: PathBuf,
    /// The link's directory and name, when the link must change, and what
    /// it points to now.
    link: Option<(Dir, OsString, Option<PathBuf>)>,
    target: PathBuf,
    timezone: EditPlan,
}

fn plan(args: &Value, env: &ApplyEnv) -> Result<Box<dyn Plan>, KindError> {
    let name = args::string(args, "name")?;
    let localtime = PathBuf::from(args::string(args, "path")?);
    let target = Path::new(ZONEINFO).join(name);
    let zone = env.rooted(&target.display().to_string());
    if !super::file_exists::present(&zone)? {
        return Err(KindError::NoTimeZone { name: name.to_owned(), path: zone });
    }
    let (dir, file) = halite_fs::open_parent(&localtime, None)?;
    let current = match dir.entry(&file)? {
        Some(stat) if stat.file_type == halite_fs::FileType::Link => Some(dir.read_link(&file)?),
        _ => None,
    };
    let link = (current.as_deref() != Some(target.as_path())).then_some((dir, file, current));
    let timezone_file = localtime.with_file_name("timezone");
    let timezone = EditPlan::new(&timezone_file, env, false, NewFile::default(), |_| {
        Ok((Edited::Text(format!("{name}\n")), vec![format!("{} names {name}", timezone_file.display())]))
    })?;
    Ok(Box::new(ZonePlan { localtime, link, target, timezone }))
}

impl Plan for ZonePlan {
    fn changes(&self) -> Vec<String> {
        let mut changes = Vec::new();
        if let Some((_, _, current)) = &self.link {
            let from = current.as_ref().map_or_else(|| "not a link".to_owned(), |c| c.display().to_string());
            changes.push(format!("{}: {from} -> {}", self.localtime.display(), self.target.display()));
        }
        changes.extend(self.timezone.changes());
        changes
    }

    fn diff(&self) -> Option<String> {
        self.timezone.diff()
    }

    fn apply(self: Box<Self>) -> Result<Vec<String>, KindError> {
        let changes = self.changes();
        if let Some((dir, name, _)) = &self.link {
            dir.symlink_atomic(&self.target, name)?;
        }
        Box::new(self.timezone).apply()?;
        Ok(changes)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::apply::apply_call;
    use crate::kind_tests::{changes, load, resolved};

    #[test]
    fn links_the_zone_and_names_it_then_is_unchanged() {
        let root = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(root.path().join("usr/share/zoneinfo/Europe")).unwrap();
        std::fs::write(root.path().join("usr/share/zoneinfo/Europe/Berlin"), "TZif").unwrap();
        std::fs::create_dir_all(root.path().join("etc")).unwrap();
        std::os::unix::fs::symlink("/usr/share/zoneinfo/Etc/UTC", root.path().join("etc/localtime")).unwrap();
        std::fs::write(root.path().join("etc/timezone"), "Etc/UTC\n").unwrap();
        let env = ApplyEnv { root: root.path().to_path_buf(), ..ApplyEnv::default() };
        let call = crate::paths::rooted_call(&resolved(KIND.name, "name: Europe/Berlin"), root.path());
        assert_eq!(changes(apply_call(&call, true, &env).outcome).len(), 2);
        assert_eq!(std::fs::read_to_string(root.path().join("etc/timezone")).unwrap(), "Etc/UTC\n");
        assert_eq!(changes(apply_call(&call, false, &env).outcome).len(), 2);
        let link = std::fs::read_link(root.path().join("etc/localtime")).unwrap();
        assert_eq!(link, Path::new("/usr/share/zoneinfo/Europe/Berlin"));
        assert_eq!(std::fs::read_to_string(root.path().join("etc/timezone")).unwrap(), "Europe/Berlin\n");
        assert!(changes(apply_call(&call, false, &env).outcome).is_empty());
        let missing = crate::paths::rooted_call(&resolved(KIND.name, "name: Mars/Olympus"), root.path());
        assert!(apply_call(&missing, false, &env).outcome.is_failed());
    }

    #[test]
    fn resolve_errors_point_at_the_argument() {
        let diagnostics = load("a:\n  timezone.system:\n    name: ../../etc/shadow\n    utc: false\n");
        let lines: Vec<u64> = diagnostics.iter().map(|d| d.line).collect();
        assert_eq!(lines, [3, 4], "{diagnostics:#?}");
    }
}

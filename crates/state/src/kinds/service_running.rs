//! `service.running`: a systemd unit that is active (and, with `enable`,
//! enabled or not at boot), through `systemctl`. Planning asks
//! `systemctl is-active` / `is-enabled` (read-only probes); a watched
//! state that changed restarts it.

use halite_proto::Value;
use serde::Deserialize;

use super::{Authored, Kind, KindError, Plan, Problem, args};
use crate::command::{self, Spec};
use crate::env::ApplyEnv;

pub static KIND: Kind = Kind {
    name: "service.running",
    summary: "A systemd service that is running (`enable`: also at boot); restarted when a watched state changes.",
    example: "nginx:\n  service.running:\n    enable: true\n",
    resolve,
    plan,
    file: None,
};

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct Config {
    /// The unit; defaults to the state id.
    name: Option<String>,
    /// Enabled (true) or disabled (false) at boot; left alone if absent.
    enable: Option<bool>,
}

pub(crate) fn resolve_service(state: &Authored<'_>, kind: &str) -> Result<Value, Vec<Problem>> {
    let config: Config = state.decode(kind)?;
    let name = config.name.unwrap_or_else(|| state.id.to_owned());
    if name.is_empty() || name.starts_with('-') || name.contains(char::is_whitespace) {
        return Err(vec![
            Problem::new(state.at("name"), format!("{kind} `{}`: `{name}` is not a unit name", state.id))
                .help("name one systemd unit, e.g. nginx or nginx.service"),
        ]);
    }
    let mut resolved = Value::map().with("name", name);
    if let Some(enable) = config.enable {
        resolved = resolved.with("enable", enable);
    }
    Ok(resolved)
}

fn resolve(state: &Authored<'_>) -> Result<Value, Vec<Problem>> {
    resolve_service(state, KIND.name)
}

/// A unit's state as `systemctl` reports it, and the way to change it.
#[derive(Debug)]
pub(crate) struct Unit {
    pub name: String,
    pub active: bool,
    pub enabled: bool,
    path: Option<std::ffi::OsString>,
}

impl Unit {
    pub fn probe(args: &Value, env: &ApplyEnv) -> Result<Unit, KindError> {
        let name = args::string(args, "name")?.to_owned();
        let path = env.path.clone();
        let ask = |verb: &str| -> Result<bool, KindError> {
            Ok(command::run(&Spec::new(["systemctl", verb, name.as_str()]), path.as_ref())?.success())
        };
        let active = ask("is-active")?;
        let enabled = if args.get("enable").is_some() { ask("is-enabled")? } else { false };
        Ok(Unit { name, active, enabled, path })
    }

    pub fn systemctl(&self, verb: &str) -> Result<String, KindError> {
        let spec = Spec::new(["systemctl", verb, self.name.as_str()]);
        let output = command::run(&spec, self.path.as_ref())?;
        if output.success() {
            Ok(format!("{verb} {}", self.name))
        } else {
            Err(KindError::Failed { command: spec.display(), output })
        }
    }

    /// The enable/disable step `enable` asks for, if any.
    pub fn boot_change(&self, args: &Value) -> Option<&'static str> {
        match args.get("enable") {
            Some(Value::Bool(true)) if !self.enabled => Some("enable"),
            Some(Value::Bool(false)) if self.enabled => Some("disable"),
            _ => None,
        }
    }
}

#[derive(Debug)]
struct RunningPlan {
    unit: Unit,
    boot: Option<&'static str>,
    restart: bool,
}

fn plan(args: &Value, env: &ApplyEnv) -> Result<Box<dyn Plan>, KindError> {
    let unit = Unit::probe(args, env)?;
    let boot = unit.boot_change(args);
    Ok(Box::new(RunningPlan { unit, boot, restart: false }))
}

impl Plan for RunningPlan {
    fn changes(&self) -> Vec<String> {
        let mut changes = Vec::new();
        if !self.unit.active {
            changes.push(format!("start {}", self.unit.name));
        } else if self.restart {
            changes.push(format!("restart {} (a watched state changed)", self.unit.name));
        }
        if let Some(verb) = self.boot {
            changes.push(format!("{verb} {}", self.unit.name));
        }
        changes
    }

    fn watch_triggered(&mut self) -> bool {
        self.restart = true;
        true
    }

    fn apply(self: Box<Self>) -> Result<Vec<String>, KindError> {
        let mut done = Vec::new();
        if let Some(verb) = self.boot {
            done.push(self.unit.systemctl(verb)?);
        }
        if !self.unit.active {
            done.push(self.unit.systemctl("start")?);
        } else if self.restart {
            done.push(self.unit.systemctl("restart")?);
        }
        Ok(done)
    }
}

/// Stand-in programs for tests: they record every call in a log and
/// answer from a small state directory, so no test needs systemd or root.
#[cfg(test)]
pub(crate) mod stand_in {
    use std::ffi::OsString;
    use std::path::{Path, PathBuf};

    pub struct StandIns {
        pub dir: tempfile::TempDir,
    }

    impl StandIns {
        /// `systemctl` keeps units in `state/active/<unit>` and
        /// `state/enabled/<unit>`; `dpkg-query` reports packages listed in
        /// `state/pkgs/<name>` (content: version); `apt-get install`
        /// creates them (version `1.0`, or the one asked for).
        pub fn new() -> StandIns {
            let dir = tempfile::tempdir().unwrap();
            let bin = dir.path().join("bin");
            for sub in ["bin", "state/active", "state/enabled", "state/pkgs"] {
                std::fs::create_dir_all(dir.path().join(sub)).unwrap();
            }
            let root = dir.path().display().to_string();
            let scripts = [
                (
                    "systemctl",
                    r#"verb=$1; unit=$2
case $verb in
  is-active) test -e "$S/active/$unit" ;;
  is-enabled) test -e "$S/enabled/$unit" ;;
  start|restart) touch "$S/active/$unit" ;;
  stop) rm -f "$S/active/$unit" ;;
  enable) touch "$S/enabled/$unit" ;;
  disable) rm -f "$S/enabled/$unit" ;;
  *) exit 2 ;;
esac"#,
                ),
                (
                    "dpkg-query",
                    r#"name=$4
if [ -e "$S/pkgs/$name" ]; then printf 'install ok installed %s' "$(cat "$S/pkgs/$name")"; else echo "dpkg-query: no packages found matching $name" >&2; exit 1; fi"#,
                ),
                (
                    "apt-get",
                    r#"[ "$DEBIAN_FRONTEND" = noninteractive ] || exit 9
for p in "$@"; do case $p in -*|install) ;; *=*) printf %s "${p#*=}" > "$S/pkgs/${p%%=*}" ;; *) printf 1.0 > "$S/pkgs/$p" ;; esac; done"#,
                ),
            ];
            for (name, body) in scripts {
                let path = bin.join(name);
                let script =
                    format!("#!/bin/sh\nS={root}/state\nprintf '%s\\n' \"{name} $*\" >> {root}/calls.log\n{body}\n");
                std::fs::write(&path, script).unwrap();
                crate::test_support::chmod(&path, 0o755);
            }
            StandIns { dir }
        }

        /// PATH with the stand-ins first.
        pub fn path(&self) -> OsString {
            OsString::from(format!("{}:/usr/bin:/bin", self.dir.path().join("bin").display()))
        }

        pub fn env(&self) -> crate::env::ApplyEnv {
            crate::env::ApplyEnv { path: Some(self.path()), ..crate::env::ApplyEnv::default() }
        }

        pub fn state(&self, relative: &str) -> PathBuf {
            self.dir.path().join("state").join(relative)
        }

        pub fn set(&self, relative: &str, content: &str) {
            std::fs::write(self.state(relative), content).unwrap();
        }

        /// Every call so far, one line each, and forgets them.
        pub fn take_calls(&self) -> Vec<String> {
            let log: &Path = &self.dir.path().join("calls.log");
            let calls = std::fs::read_to_string(log).unwrap_or_default();
            let _ = std::fs::remove_file(log);
            calls.lines().map(str::to_owned).collect()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::stand_in::StandIns;
    use super::*;
    use crate::apply::{apply_call, run_states};
    use halite_proto::{Outcome, Requisite, RequisiteKind, StateCall};

    fn call(enable: Option<bool>) -> StateCall {
        let mut args = Value::map().with("name", "nginx");
        if let Some(enable) = enable {
            args = args.with("enable", enable);
        }
        StateCall::new("nginx", KIND.name, args)
    }

    #[test]
    fn starts_and_enables_then_is_unchanged() {
        let fake = StandIns::new();
        let env = fake.env();
        let planned = plan(&call(Some(true)).args, &env).unwrap();
        assert_eq!(planned.changes(), ["start nginx", "enable nginx"]);
        assert_eq!(fake.take_calls(), ["systemctl is-active nginx", "systemctl is-enabled nginx"]);
        let result = apply_call(&call(Some(true)), false, &env);
        assert_eq!(result.outcome, Outcome::Changed { changes: vec!["enable nginx".into(), "start nginx".into()] });
        assert!(fake.state("active/nginx").exists() && fake.state("enabled/nginx").exists());
        fake.take_calls();
        assert_eq!(apply_call(&call(Some(true)), false, &env).outcome, Outcome::Unchanged);
        assert_eq!(fake.take_calls(), ["systemctl is-active nginx", "systemctl is-enabled nginx"]);
    }

    #[test]
    fn test_mode_only_probes() {
        let fake = StandIns::new();
        let result = apply_call(&call(Some(false)), true, &fake.env());
        assert_eq!(result.outcome, Outcome::WouldChange { changes: vec!["start nginx".into()] });
        assert_eq!(fake.take_calls(), ["systemctl is-active nginx", "systemctl is-enabled nginx"]);
        assert!(!fake.state("active/nginx").exists());
    }

    #[test]
    fn a_watched_change_restarts_a_running_service() {
        let fake = StandIns::new();
        fake.set("active/nginx", "");
        let conf = crate::kinds::cmd_run::call("conf", "true");
        let mut service = call(None);
        service.requisites.push(Requisite { on: RequisiteKind::Watch, id: "conf".into(), kind: "cmd.run".into() });
        let results = run_states(&[conf.clone(), service.clone()], false, &fake.env());
        assert_eq!(results[1].outcome, Outcome::Changed { changes: vec!["restart nginx".into()] });
        assert!(fake.take_calls().contains(&"systemctl restart nginx".to_owned()));
        // Nothing watched changed: no restart.
        let quiet = conf.with_arg("unless", "true");
        let results = run_states(&[quiet, service], false, &fake.env());
        assert_eq!(results[1].outcome, Outcome::Unchanged);
        assert!(!fake.take_calls().iter().any(|c| c.contains("restart")));
    }

    #[test]
    fn a_failing_systemctl_fails_the_state_by_name() {
        let fake = StandIns::new();
        let broken = StateCall::new("x", KIND.name, Value::map().with("name", "weird"));
        std::fs::write(
            fake.dir.path().join("bin/systemctl"),
            "#!/bin/sh\necho 'Unit weird.service not found.' >&2\nexit 5\n",
        )
        .unwrap();
        let Outcome::Failed { error } = apply_call(&broken, false, &fake.env()).outcome else { panic!() };
        assert!(error.contains("systemctl start weird") && error.contains("not found"), "{error}");
    }
}

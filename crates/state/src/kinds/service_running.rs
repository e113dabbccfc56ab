//! `service.running`: a systemd unit that is active (and, with `enable`,
//! enabled or not at boot), through `systemctl`. Planning asks
//! `systemctl is-active` / `is-enabled` (read-only probes); a watched
//! state that changed restarts it, or reloads it with `reload: true`
//! (Salt's `mod_watch`), unless this state itself started, enabled or
//! disabled it (Salt then skips `mod_watch`). `init_delay` (seconds) waits
//! after a start or restart, then checks the unit is still active, as Salt
//! does.

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
    /// `service.running` only: a watched change reloads instead of
    /// restarting.
    reload: Option<bool>,
    /// `service.running` only: seconds to wait after a start or restart.
    init_delay: Option<f64>,
}

/// The longest `init_delay` halite waits: a job holds the agent's queue.
const MAX_INIT_DELAY_SECONDS: f64 = 300.0;

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
    let mut problems = Vec::new();
    for (key, given) in [("reload", config.reload.is_some()), ("init_delay", config.init_delay.is_some())] {
        if given && kind != KIND.name {
            problems.push(
                Problem::new(
                    state.at(key),
                    format!("{kind} `{}`: `{key}` is an argument of service.running", state.id),
                )
                .help("remove it"),
            );
        }
    }
    if let Some(reload) = config.reload {
        resolved = resolved.with("reload", reload);
    }
    match config.init_delay {
        Some(delay) if !(0.0..=MAX_INIT_DELAY_SECONDS).contains(&delay) => problems.push(
            Problem::new(
                state.at("init_delay"),
                format!("{kind} `{}`: init_delay `{delay}` is not 0 to {MAX_INIT_DELAY_SECONDS} seconds", state.id),
            )
            .help("give the seconds the service needs after it starts, e.g. init_delay: 5"),
        ),
        Some(delay) => resolved = resolved.with("init_delay_ms", (delay * 1000.0).round() as i64),
        None => {}
    }
    if !problems.is_empty() {
        return Err(problems);
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
    /// A watched change reloads rather than restarts.
    reload: bool,
    init_delay: Option<std::time::Duration>,
}

fn plan(args: &Value, env: &ApplyEnv) -> Result<Box<dyn Plan>, KindError> {
    let unit = Unit::probe(args, env)?;
    let boot = unit.boot_change(args);
    let reload = args::bool_or(args, "reload", false);
    let init_delay = args::opt_u64(args, "init_delay_ms").map(std::time::Duration::from_millis);
    Ok(Box::new(RunningPlan { unit, boot, restart: false, reload, init_delay }))
}

impl RunningPlan {
    /// Whether a watched change reloads or restarts the unit: only when
    /// this state itself changes nothing else, as Salt calls `mod_watch`
    /// only for a state whose own run returned no changes (a unit it
    /// starts, enables or disables is not also reloaded or restarted).
    fn watch_acts(&self) -> bool {
        self.restart && self.unit.active && self.boot.is_none()
    }

    fn watch_verb(&self) -> &'static str {
        if self.reload { "reload" } else { "restart" }
    }

    /// Salt's `init_delay`: the service is given its time after starting,
    /// then must still be active.
    fn settle(&self) -> Result<(), KindError> {
        let Some(delay) = self.init_delay else { return Ok(()) };
        // The delay is the feature asked for: a job runs on a blocking
        // thread of its own (never the runtime's), and nothing else is
        // waited for.
        #[allow(clippy::disallowed_methods)]
        std::thread::sleep(delay);
        let spec = Spec::new(["systemctl", "is-active", self.unit.name.as_str()]);
        if command::run(&spec, self.unit.path.as_ref())?.success() {
            Ok(())
        } else {
            Err(KindError::NotActiveAfterDelay { unit: self.unit.name.clone(), seconds: delay.as_secs_f64() })
        }
    }
}

impl Plan for RunningPlan {
    fn changes(&self) -> Vec<String> {
        let mut changes = Vec::new();
        if !self.unit.active {
            changes.push(format!("start {}", self.unit.name));
        } else if self.watch_acts() {
            changes.push(format!("{} {} (a watched state changed)", self.watch_verb(), self.unit.name));
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
            self.settle()?;
        } else if self.watch_acts() {
            done.push(self.unit.systemctl(self.watch_verb())?);
            if !self.reload {
                self.settle()?;
            }
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
            for sub in ["bin", "state/active", "state/enabled", "state/pkgs", "state/conf", "state/candidates"] {
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
  start|restart|reload) touch "$S/active/$unit" ;;
  stop) rm -f "$S/active/$unit" ;;
  enable) touch "$S/enabled/$unit" ;;
  disable) rm -f "$S/enabled/$unit" ;;
  *) exit 2 ;;
esac"#,
                ),
                (
                    "dpkg-query",
                    r#"name=$4
if [ -e "$S/pkgs/$name" ]; then printf 'install ok installed %s' "$(cat "$S/pkgs/$name")"
elif [ -e "$S/conf/$name" ]; then printf 'deinstall ok config-files %s' "$(cat "$S/conf/$name")"
else echo "dpkg-query: no packages found matching $name" >&2; exit 1; fi"#,
                ),
                (
                    "apt-get",
                    r#"[ "$DEBIAN_FRONTEND" = noninteractive ] || exit 9
verb=install
for p in "$@"; do case $p in
  -*) ;;
  install|remove|purge|update) verb=$p ;;
  *) name=${p%%=*}
     case $verb in
       install) case $p in *=*) printf %s "${p#*=}" > "$S/pkgs/$name" ;; *) cat "$S/candidates/$name" 2>/dev/null > "$S/pkgs/$name" || printf 1.0 > "$S/pkgs/$name"; [ -s "$S/pkgs/$name" ] || printf 1.0 > "$S/pkgs/$name" ;; esac ;;
       remove) mv "$S/pkgs/$name" "$S/conf/$name" ;;
       purge) rm -f "$S/pkgs/$name" "$S/conf/$name" ;;
     esac ;;
esac; done"#,
                ),
                (
                    "apt-cache",
                    r#"name=$2
printf '%s:\n  Installed: %s\n  Candidate: %s\n' "$name" "$(cat "$S/pkgs/$name" 2>/dev/null || echo '(none)')" "$(cat "$S/candidates/$name" 2>/dev/null || echo '(none)')""#,
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
    fn reload_true_reloads_on_watch_and_init_delay_checks_after_starting() {
        let fake = StandIns::new();
        fake.set("active/nginx", "");
        let conf = crate::kinds::cmd_run::call("conf", "true");
        let mut service = call(None).with_arg("reload", true);
        service.requisites.push(Requisite { on: RequisiteKind::Watch, id: "conf".into(), kind: "cmd.run".into() });
        let results = run_states(&[conf, service], false, &fake.env());
        assert_eq!(results[1].outcome, Outcome::Changed { changes: vec!["reload nginx".into()] });
        assert!(!fake.take_calls().iter().any(|c| c.contains("restart")));

        std::fs::remove_file(fake.state("active/nginx")).unwrap();
        let delayed = call(None).with_arg("init_delay_ms", 1i64);
        let result = apply_call(&delayed, false, &fake.env());
        assert!(matches!(result.outcome, Outcome::Changed { .. }), "{result:?}");
        let calls = fake.take_calls();
        assert_eq!(calls[calls.len() - 2..], ["systemctl start nginx", "systemctl is-active nginx"], "{calls:?}");
        // A unit that dies at once fails the state.
        let dies = fake.dir.path().join("bin/systemctl");
        std::fs::write(&dies, "#!/bin/sh\n[ \"$1\" = start ] && exit 0\nexit 3\n").unwrap();
        let Outcome::Failed { error } = apply_call(&delayed, false, &fake.env()).outcome else { panic!() };
        assert!(error.contains("not active") && error.contains("init_delay"), "{error}");
    }

    #[test]
    fn a_watched_change_does_not_reload_a_service_the_state_enables() {
        // Salt (tests/salt/corpus/ref-system, halite-cache): the state's
        // own change, enabling the unit, stands instead of the reload.
        let fake = StandIns::new();
        fake.set("active/nginx", "");
        let conf = crate::kinds::cmd_run::call("conf", "true");
        let mut service = call(Some(true)).with_arg("reload", true);
        service.requisites.push(Requisite { on: RequisiteKind::Watch, id: "conf".into(), kind: "cmd.run".into() });
        let results = run_states(&[conf.clone(), service.clone()], false, &fake.env());
        assert_eq!(results[1].outcome, Outcome::Changed { changes: vec!["enable nginx".into()] });
        assert!(!fake.take_calls().iter().any(|c| c.contains("reload")));
        // Enabled already: the watched change reloads it.
        let results = run_states(&[conf, service], false, &fake.env());
        assert_eq!(results[1].outcome, Outcome::Changed { changes: vec!["reload nginx".into()] });
        assert!(fake.take_calls().contains(&"systemctl reload nginx".to_owned()));
    }

    #[test]
    fn service_arguments_are_checked_where_written() {
        let diagnostics = crate::kind_tests::load(
            "a:\n  service.running:\n    init_delay: -1\nb:\n  service.dead:\n    reload: true\n",
        );
        let lines: Vec<(u64, &str)> = diagnostics.iter().map(|d| (d.line, d.message.as_str())).collect();
        assert_eq!(lines.len(), 2, "{lines:#?}");
        assert!(lines[0].0 == 3 && lines[0].1.contains("init_delay"), "{lines:#?}");
        assert!(lines[1].0 == 6 && lines[1].1.contains("argument of service.running"), "{lines:#?}");
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

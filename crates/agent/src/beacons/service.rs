//! The `service` beacon: a systemd unit's state (`systemctl is-active`),
//! reported when it changes. `for` and `debounce` are `sampled.rs`'s
//! machine; this file owns asking systemctl, with a timeout.

use std::time::{Duration, Instant};

use halite_proto::Value;
use halite_state::command::{self, Spec};
use serde::Deserialize;

use super::sampled::{self, Machine, SampleError, Sampler, Span, Timing};
use super::{BeaconError, BeaconKind, Context, EventField, Running, decode};

pub static KIND: BeaconKind = BeaconKind {
    name: "service",
    summary: "A systemd unit's state (systemctl is-active): active, inactive, failed, … when it changes.",
    example: "unit: nginx.service\nfor: 10s\ninterval: 10s\n",
    validate,
    start,
    // `state` is whatever `systemctl is-active` says (active, inactive,
    // failed, activating, …), or `error`: not a fixed set.
    fields: &[EventField::any("unit"), EventField::any("state"), EventField::any("error")],
};

/// How long systemctl may take before it is killed: a stuck D-Bus must not
/// stall the beacon, which then reports an error and tries again.
const SYSTEMCTL_TIMEOUT: Duration = Duration::from_secs(5);

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Config {
    /// The unit, as `systemctl` names it; without a suffix it is a service.
    unit: String,
    #[serde(default, rename = "for")]
    sustain: Option<Span>,
    #[serde(default)]
    interval: Option<Span>,
    #[serde(default)]
    debounce: Option<Span>,
}

fn settings(config: &Value) -> Result<(String, Timing), BeaconError> {
    let c: Config = decode(config)?;
    if c.unit.is_empty() {
        return Err(BeaconError::Empty { key: "unit", hint: "write the unit, e.g. `unit: nginx.service`" });
    }
    if c.unit.starts_with('-') || c.unit.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return Err(BeaconError::UnitName { unit: c.unit });
    }
    Ok((c.unit, Timing::parse(c.interval.as_ref(), c.sustain.as_ref(), c.debounce.as_ref())?))
}

fn validate(config: &Value) -> Result<(), BeaconError> {
    settings(config).map(|_| ())
}

fn start(context: Context, config: &Value) -> Result<Running, BeaconError> {
    let (unit, timing) = settings(config)?;
    sampled::start(context, timing.interval, Unit { unit, machine: Machine::new(&timing, None) })
}

struct Unit {
    unit: String,
    /// The unit's state as systemctl words it. Starts with nothing reported:
    /// there is no "normal" to assume, so the first settled state is news.
    machine: Machine<String>,
}

impl Sampler for Unit {
    fn sample(&mut self, now: Instant) -> Result<Option<Value>, SampleError> {
        let state = is_active(&self.unit, SYSTEMCTL_TIMEOUT)?;
        Ok(self.machine.observe(state, now).map(|t| self.subject().with("state", t.to)))
    }

    fn subject(&self) -> Value {
        Value::map().with("unit", self.unit.as_str())
    }

    fn forget(&mut self) {
        self.machine.forget();
    }
}

/// Runs `systemctl is-active -- <unit>` for at most `timeout`, then kills
/// it (with anything it started), through the workspace's one spawner.
/// Arguments are a vector, never a shell string.
fn is_active(unit: &str, timeout: Duration) -> Result<String, SampleError> {
    let mut spec = Spec::new(["systemctl", "is-active", "--", unit]);
    spec.timeout = Some(timeout);
    let output = command::run(&spec, None)?;
    if output.timed_out {
        return Err(SampleError::Timeout { program: "systemctl", timeout });
    }
    state_of(&output.stdout, &output.stderr)
}

/// The state systemctl printed. Its exit status is not used: is-active
/// exits non-zero for every state but `active`. A missing or garbled
/// answer (systemd not running) is an error, with what systemctl said.
fn state_of(stdout: &str, stderr: &str) -> Result<String, SampleError> {
    let state = stdout.lines().next().unwrap_or_default().trim();
    if !state.is_empty() && state.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-') {
        return Ok(state.to_owned());
    }
    let said = stderr.lines().map(str::trim).filter(|l| !l.is_empty()).collect::<Vec<_>>().join(" ");
    let program = "systemctl";
    Err(match (said.is_empty(), state.is_empty()) {
        (false, _) => SampleError::Said { program, said },
        (true, true) => SampleError::NoState { program },
        (true, false) => SampleError::NotAState { program, printed: state.to_owned() },
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_the_state_systemctl_prints() {
        for state in ["active", "inactive", "failed", "activating"] {
            assert_eq!(state_of(&format!("{state}\n"), "").ok().as_deref(), Some(state));
        }
    }

    #[test]
    fn no_state_is_an_error_with_what_systemctl_said() {
        let without_systemd = "System has not been booted with systemd as init system (PID 1). Can't operate.\nFailed to connect to bus: Host is down\n";
        let error = state_of("", without_systemd).unwrap_err().to_string();
        assert!(error.contains("not been booted with systemd") && error.contains("Host is down"), "{error}");
        assert_eq!(state_of("", "").unwrap_err().to_string(), "systemctl printed no state");
        assert!(state_of("Unknown operation\n", "").unwrap_err().to_string().contains("not a state"));
    }

    #[test]
    fn answers_or_reports_an_error_but_never_panics() {
        // Whether systemctl exists here or not, and systemd runs or not.
        match is_active("halite-no-such-unit.service", SYSTEMCTL_TIMEOUT) {
            Ok(state) => assert!(!state.is_empty()),
            Err(error) => {
                let error = error.to_string();
                assert!(error.starts_with("systemctl") || error.starts_with("cannot run"), "{error}");
            }
        }
    }

    #[test]
    fn config_errors_say_what_to_write() {
        let bad = |yaml: &str| {
            let json: serde_json::Value = serde_saphyr::from_str(yaml).unwrap();
            validate(&Value::from_json(&json)).unwrap_err().to_string()
        };
        assert!(bad("unit: ''\n").contains("empty"));
        assert!(bad("unit: --all\n").contains("not a unit name"));
        assert!(bad("unit: nginx; reboot\n").contains("not a unit name"));
        assert!(bad("unit: nginx\ninterval: 10\n").contains("10s"));
        assert!(bad("service: nginx\n").contains("service"));
    }
}

//! `service.dead`: a systemd unit that is stopped (and, with `enable`,
//! enabled or not at boot), through `systemctl`.

use halite_proto::Value;

use super::service_running::{Unit, resolve_service};
use super::{Authored, Kind, KindError, Plan, Problem};
use crate::env::ApplyEnv;

pub static KIND: Kind = Kind {
    name: "service.dead",
    summary: "A systemd service that is stopped (`enable: false`: also disabled at boot).",
    example: "telnetd:\n  service.dead:\n    name: inetutils-telnetd\n    enable: false\n",
    resolve,
    plan,
    file: None,
};

fn resolve(state: &Authored<'_>) -> Result<Value, Vec<Problem>> {
    resolve_service(state, KIND.name)
}

#[derive(Debug)]
struct DeadPlan {
    unit: Unit,
    boot: Option<&'static str>,
}

fn plan(args: &Value, env: &ApplyEnv) -> Result<Box<dyn Plan>, KindError> {
    let unit = Unit::probe(args, env)?;
    let boot = unit.boot_change(args);
    Ok(Box::new(DeadPlan { unit, boot }))
}

impl Plan for DeadPlan {
    fn changes(&self) -> Vec<String> {
        let mut changes = Vec::new();
        if self.unit.active {
            changes.push(format!("stop {}", self.unit.name));
        }
        if let Some(verb) = self.boot {
            changes.push(format!("{verb} {}", self.unit.name));
        }
        changes
    }

    fn apply(self: Box<Self>) -> Result<Vec<String>, KindError> {
        let mut done = Vec::new();
        if self.unit.active {
            done.push(self.unit.systemctl("stop")?);
        }
        if let Some(verb) = self.boot {
            done.push(self.unit.systemctl(verb)?);
        }
        Ok(done)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::apply::apply_call;
    use crate::kinds::service_running::stand_in::StandIns;
    use halite_proto::{Outcome, StateCall};

    fn call() -> StateCall {
        StateCall::new("telnetd", KIND.name, Value::map().with("name", "telnetd").with("enable", false))
    }

    #[test]
    fn stops_and_disables_then_is_unchanged() {
        let fake = StandIns::new();
        fake.set("active/telnetd", "");
        fake.set("enabled/telnetd", "");
        assert_eq!(plan(&call().args, &fake.env()).unwrap().changes(), ["stop telnetd", "disable telnetd"]);
        let result = apply_call(&call(), false, &fake.env());
        assert_eq!(result.outcome, Outcome::Changed { changes: vec!["stop telnetd".into(), "disable telnetd".into()] });
        assert!(!fake.state("active/telnetd").exists() && !fake.state("enabled/telnetd").exists());
        assert_eq!(apply_call(&call(), false, &fake.env()).outcome, Outcome::Unchanged);
    }

    #[test]
    fn test_mode_only_probes() {
        let fake = StandIns::new();
        fake.set("active/telnetd", "");
        let result = apply_call(&call(), true, &fake.env());
        assert_eq!(result.outcome, Outcome::WouldChange { changes: vec!["stop telnetd".into()] });
        assert_eq!(fake.take_calls(), ["systemctl is-active telnetd", "systemctl is-enabled telnetd"]);
        assert!(fake.state("active/telnetd").exists());
    }
}

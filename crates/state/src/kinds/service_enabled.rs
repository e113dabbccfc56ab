//! `service.enabled`: a systemd unit enabled at boot (Salt's
//! `service.enabled`), through `systemctl is-enabled` (the read-only
//! probe) and `systemctl enable`. Whether it runs now is left alone.

use halite_proto::Value;

use super::service_running::{Unit, resolve_service};
use super::{Authored, Kind, KindError, Plan, Problem};
use crate::env::ApplyEnv;

pub static KIND: Kind = Kind {
    name: "service.enabled",
    summary: "A systemd service enabled at boot; whether it runs now is left alone.",
    example: "chrony:\n  service.enabled:\n    name: chrony\n",
    resolve,
    plan,
    file: None,
};

fn resolve(state: &Authored<'_>) -> Result<Value, Vec<Problem>> {
    boot_only(state, KIND.name, true)
}

/// `service.enabled` / `service.disabled`: a unit name (and no `enable`,
/// which the kind's name says), resolved with `enable` set.
pub(crate) fn boot_only(state: &Authored<'_>, kind: &str, enable: bool) -> Result<Value, Vec<Problem>> {
    if let Some(at) = state.at("enable") {
        return Err(vec![
            Problem::new(Some(at), format!("{kind} `{}`: `enable` is the kind's own meaning", state.id))
                .help("remove it"),
        ]);
    }
    resolve_service(state, kind).map(|resolved| resolved.with("enable", enable))
}

/// Only the boot step, if it is needed.
#[derive(Debug)]
pub(crate) struct BootPlan {
    unit: Unit,
    boot: Option<&'static str>,
}

pub(crate) fn plan_boot(args: &Value, env: &ApplyEnv) -> Result<Box<dyn Plan>, KindError> {
    let unit = Unit::probe(args, env)?;
    let boot = unit.boot_change(args);
    Ok(Box::new(BootPlan { unit, boot }))
}

fn plan(args: &Value, env: &ApplyEnv) -> Result<Box<dyn Plan>, KindError> {
    plan_boot(args, env)
}

impl Plan for BootPlan {
    fn changes(&self) -> Vec<String> {
        self.boot.map(|verb| vec![format!("{verb} {}", self.unit.name)]).unwrap_or_default()
    }

    fn apply(self: Box<Self>) -> Result<Vec<String>, KindError> {
        match self.boot {
            Some(verb) => Ok(vec![self.unit.systemctl(verb)?]),
            None => Ok(Vec::new()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::apply::apply_call;
    use crate::kinds::service_running::stand_in::StandIns;
    use halite_proto::{Outcome, StateCall};

    #[test]
    fn enables_then_reports_unchanged_and_never_starts() {
        let fake = StandIns::new();
        let call = StateCall::new("chrony", KIND.name, Value::map().with("name", "chrony").with("enable", true));
        let would = apply_call(&call, true, &fake.env());
        assert_eq!(would.outcome, Outcome::WouldChange { changes: vec!["enable chrony".into()] });
        assert!(!fake.state("enabled/chrony").exists());
        assert!(matches!(apply_call(&call, false, &fake.env()).outcome, Outcome::Changed { .. }));
        assert!(fake.state("enabled/chrony").exists() && !fake.state("active/chrony").exists());
        assert_eq!(apply_call(&call, false, &fake.env()).outcome, Outcome::Unchanged);
    }

    #[test]
    fn enable_is_not_an_argument() {
        let diagnostics = crate::kind_tests::load("a:\n  service.enabled:\n    enable: false\n");
        assert_eq!(diagnostics.len(), 1, "{diagnostics:#?}");
        assert_eq!(diagnostics[0].line, 3);
    }
}

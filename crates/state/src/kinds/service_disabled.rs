//! `service.disabled`: a systemd unit not enabled at boot (Salt's
//! `service.disabled`), through `systemctl is-enabled` and `systemctl
//! disable`. Whether it runs now is left alone.

use halite_proto::Value;

use super::service_enabled::{boot_only, plan_boot};
use super::{Authored, Kind, KindError, Plan, Problem};
use crate::env::ApplyEnv;

pub static KIND: Kind = Kind {
    name: "service.disabled",
    summary: "A systemd service not enabled at boot; whether it runs now is left alone.",
    example: "cups:\n  service.disabled:\n    name: cups\n",
    resolve,
    plan,
    file: None,
};

fn resolve(state: &Authored<'_>) -> Result<Value, Vec<Problem>> {
    boot_only(state, KIND.name, false)
}

fn plan(args: &Value, env: &ApplyEnv) -> Result<Box<dyn Plan>, KindError> {
    plan_boot(args, env)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::apply::apply_call;
    use crate::kinds::service_running::stand_in::StandIns;
    use halite_proto::{Outcome, StateCall};

    #[test]
    fn disables_then_reports_unchanged_and_never_stops() {
        let fake = StandIns::new();
        fake.set("enabled/cups", "");
        fake.set("active/cups", "");
        let call = StateCall::new("cups", KIND.name, Value::map().with("name", "cups").with("enable", false));
        assert!(matches!(apply_call(&call, true, &fake.env()).outcome, Outcome::WouldChange { .. }));
        assert!(fake.state("enabled/cups").exists());
        assert_eq!(
            apply_call(&call, false, &fake.env()).outcome,
            Outcome::Changed { changes: vec!["disable cups".into()] }
        );
        assert!(!fake.state("enabled/cups").exists() && fake.state("active/cups").exists());
        assert_eq!(apply_call(&call, false, &fake.env()).outcome, Outcome::Unchanged);
    }
}

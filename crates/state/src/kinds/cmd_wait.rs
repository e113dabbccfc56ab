//! `cmd.wait`: a command that runs only when a state it watches changed
//! (Salt's `cmd.wait`: `cmd.run`'s arguments, acted on through `watch`).
//! Its `unless`/`onlyif` probes still decide, as in Salt's `mod_watch`.

use halite_proto::Value;

use super::cmd_run::{plan as plan_run, resolve_command};
use super::{Authored, Kind, KindError, Plan, Problem};
use crate::env::ApplyEnv;

pub static KIND: Kind = Kind {
    name: "cmd.wait",
    summary: "A command (as cmd.run) that runs only when a state it watches changed.",
    example: "conf:\n  file.managed:\n    path: /etc/app.conf\n    contents: \"x = 1\\n\"\nreload-app:\n  cmd.wait:\n    name: systemctl reload app\n    watch:\n      - file: conf\n",
    resolve,
    plan,
    file: None,
};

fn resolve(state: &Authored<'_>) -> Result<Value, Vec<Problem>> {
    resolve_command(state, KIND.name)
}

/// `cmd.run`'s plan, held back until a watched state changed.
struct WaitPlan {
    run: Box<dyn Plan>,
    waiting: bool,
}

impl std::fmt::Debug for WaitPlan {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WaitPlan").field("waiting", &self.waiting).finish_non_exhaustive()
    }
}

fn plan(args: &Value, env: &ApplyEnv) -> Result<Box<dyn Plan>, KindError> {
    Ok(Box::new(WaitPlan { run: plan_run(args, env)?, waiting: true }))
}

impl Plan for WaitPlan {
    fn changes(&self) -> Vec<String> {
        if self.waiting { Vec::new() } else { self.run.changes() }
    }

    fn watch_triggered(&mut self) -> bool {
        self.waiting = false;
        true
    }

    fn apply(self: Box<Self>) -> Result<Vec<String>, KindError> {
        if self.waiting { Ok(Vec::new()) } else { self.run.apply() }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::apply::run_states;
    use halite_proto::{Outcome, Requisite, RequisiteKind, StateCall};

    #[test]
    fn runs_only_when_a_watched_state_changed() {
        let dir = tempfile::tempdir().unwrap();
        let marker = dir.path().join("ran");
        let mut wait = StateCall::new("w", KIND.name, Value::map().with("name", format!("touch {}", marker.display())));
        wait.requisites.push(Requisite { on: RequisiteKind::Watch, id: "c".into(), kind: "cmd.run".into() });
        let quiet = crate::kinds::cmd_run::call("c", "true").with_arg("unless", "true");
        let results = run_states(&[quiet, wait.clone()], false, &ApplyEnv::default());
        assert_eq!(results[1].outcome, Outcome::Unchanged);
        assert!(!marker.exists(), "ran without a change to watch");
        let changed = crate::kinds::cmd_run::call("c", "true");
        let results = run_states(&[changed.clone(), wait.clone()], true, &ApplyEnv::default());
        assert!(matches!(results[1].outcome, Outcome::WouldChange { .. }), "{results:?}");
        assert!(!marker.exists(), "test mode ran it");
        let results = run_states(&[changed.clone(), wait.clone()], false, &ApplyEnv::default());
        assert!(matches!(results[1].outcome, Outcome::Changed { .. }), "{results:?}");
        assert!(marker.exists());
        // Its own probes still decide.
        std::fs::remove_file(&marker).unwrap();
        let guarded = wait.with_arg("unless", "true");
        let results = run_states(&[changed, guarded], false, &ApplyEnv::default());
        assert_eq!(results[1].outcome, Outcome::Unchanged);
        assert!(!marker.exists());
    }
}

//! Running [`StateCall`]s on the agent: order them by their requisites,
//! plan each, then (unless testing) apply.
//!
//! [`run_states`] is the one entry point for a job; the agent's job runner
//! and `halite-agent apply --local` both use it.

use std::time::Instant;

use halite_proto::{Outcome, RequisiteKind, StateCall, StateResult};

pub use crate::env::{ApplyEnv, DEFAULT_BACKUP_MAX_BYTES, ManagedFile};
use crate::kinds::{self, Plan};

/// Told about each state as a job runs: the agent records a managed file's
/// desired state before writing it, so its own write raises no drift.
pub trait Observer {
    fn before_apply(&mut self, _file: &ManagedFile) {}
    fn after_apply(&mut self, _file: &ManagedFile) {}
    fn finished(&mut self, _result: &StateResult) {}
}

impl Observer for () {}

/// Runs a job's states: in requisite order (declaration order otherwise),
/// skipping those whose requisites failed or (for `onchanges`) did not
/// change, triggering watch reactions. Results are in the order run.
pub fn run_states(calls: &[StateCall], test: bool, env: &ApplyEnv) -> Vec<StateResult> {
    run_states_observed(calls, test, env, &mut ())
}

pub fn run_states_observed(
    calls: &[StateCall],
    test: bool,
    env: &ApplyEnv,
    observer: &mut dyn Observer,
) -> Vec<StateResult> {
    let env = &ApplyEnv { packages: crate::env::PackageIndex::default(), ..env.clone() };
    let (order, stuck) = order(calls);
    let mut outcomes: Vec<Option<Outcome>> = vec![None; calls.len()];
    let mut results = Vec::with_capacity(calls.len());
    for index in order {
        let call = &calls[index];
        let started = Instant::now();
        let (outcome, diff) = match requisites_allow(call, calls, &outcomes, env) {
            Gate::Fail(error) => (Outcome::Failed { error }, None),
            Gate::Skip => (Outcome::Unchanged, None),
            Gate::Run { watched_changed } => run_one(call, test, env, watched_changed, observer),
        };
        let result = StateResult { diff, ..finish(call, outcome, started) };
        observer.finished(&result);
        outcomes[index] = Some(result.outcome.clone());
        results.push(result);
    }
    // Salt's `listen`: each listener whose listened state changed reacts
    // once, after every other state.
    for (index, call) in calls.iter().enumerate() {
        let heard = call.requisites.iter().filter(|r| r.on == RequisiteKind::Listen).any(|r| {
            calls
                .iter()
                .position(|c| c.id == r.id && c.kind == r.kind)
                .and_then(|i| outcomes[i].as_ref())
                .is_some_and(changed)
        });
        if !heard || outcomes[index].as_ref().is_none_or(Outcome::is_failed) {
            continue;
        }
        let started = Instant::now();
        let (outcome, diff) = run_one(call, test, env, true, observer);
        let result = StateResult { id: format!("listener_{}", call.id), diff, ..finish(call, outcome, started) };
        observer.finished(&result);
        results.push(result);
    }
    for index in stuck {
        let call = &calls[index];
        let result = finish(
            call,
            Outcome::Failed { error: format!("{} `{}` is part of a requisite cycle", call.kind, call.id) },
            Instant::now(),
        );
        observer.finished(&result);
        results.push(result);
    }
    settle_index(env, &mut results);
    results
}

/// The refresh a changed repository is owed when no package state
/// followed it in the job: run once now; if it fails, that repository's
/// state fails with why.
fn settle_index(env: &ApplyEnv, results: &mut [StateResult]) {
    if !env.packages.take_owed() {
        return;
    }
    let owed = |result: &&mut StateResult| matches!(&result.outcome, Outcome::Changed { changes } if changes.iter().any(|c| c == crate::env::REFRESH_CHANGE));
    if let Err(error) = kinds::pkg_removed::apt_get("update", &[], env.path.as_ref())
        && let Some(result) = results.iter_mut().rev().find(owed)
    {
        result.outcome = Outcome::Failed {
            error: format!("the repository changed, then refreshing the package index failed: {error}"),
        };
    }
}

fn run_one(
    call: &StateCall,
    test: bool,
    env: &ApplyEnv,
    watched_changed: bool,
    observer: &mut dyn Observer,
) -> (Outcome, Option<String>) {
    match crate::sls::conditions::skip_reason(&call.args, env) {
        Ok(Some(_)) => return (Outcome::Unchanged, None),
        Ok(None) => {}
        Err(error) => return (Outcome::Failed { error: format!("unless/onlyif: {error}") }, None),
    }
    let mut plan = match plan_call(call, env) {
        Ok(plan) => plan,
        // The wire carries the failure as text.
        Err(error) => return (Outcome::Failed { error: error.to_string() }, None),
    };
    if watched_changed {
        plan.watch_triggered();
    }
    let diff = plan.diff();
    let file = plan.managed_file().filter(|_| !test);
    if let Some(file) = &file {
        observer.before_apply(file);
    }
    let outcome = apply_plan(plan, test);
    if let Some(file) = &file {
        observer.after_apply(file);
    }
    let diff = diff.filter(|_| matches!(outcome, Outcome::Changed { .. } | Outcome::WouldChange { .. }));
    (outcome, diff)
}

enum Gate {
    Run { watched_changed: bool },
    Skip,
    Fail(String),
}

fn changed(outcome: &Outcome) -> bool {
    matches!(outcome, Outcome::Changed { .. } | Outcome::WouldChange { .. })
}

/// Whether `call` may run, given the outcomes so far. The order guarantees
/// every requisite found in the job has run already.
fn requisites_allow(call: &StateCall, calls: &[StateCall], outcomes: &[Option<Outcome>], env: &ApplyEnv) -> Gate {
    // A state whose `prereq` holder failed does not run (Salt: the
    // prerequisite's failure fails it).
    for (index, other) in calls.iter().enumerate() {
        let holds_prereq =
            other.requisites.iter().any(|r| r.on == RequisiteKind::Prereq && r.id == call.id && r.kind == call.kind);
        if holds_prereq && outcomes[index].as_ref().is_some_and(Outcome::is_failed) {
            return Gate::Fail(format!("prerequisite `{}` failed", other.id));
        }
    }
    let mut watched_changed = false;
    let mut onchanges = None;
    let mut prereq = None;
    for requisite in &call.requisites {
        if requisite.on == RequisiteKind::Listen {
            continue;
        }
        let Some(index) = calls.iter().position(|c| c.id == requisite.id && c.kind == requisite.kind) else {
            return Gate::Fail(format!(
                "{} `{}`: {} `{}` is not part of this job",
                requisite.on.keyword(),
                requisite.id,
                requisite.kind,
                requisite.id
            ));
        };
        if requisite.on == RequisiteKind::Prereq {
            // It runs after this one: ask its plan whether it would change.
            let target = &calls[index];
            let would_change = match crate::sls::conditions::skip_reason(&target.args, env) {
                Ok(Some(_)) => Ok(false),
                Ok(None) => plan_call(target, env).map(|plan| !plan.changes().is_empty()).map_err(|e| e.to_string()),
                Err(error) => Err(error.to_string()),
            };
            match would_change {
                Ok(would) => *prereq.get_or_insert(false) |= would,
                Err(error) => return Gate::Fail(format!("prereq `{}` cannot be planned: {error}", requisite.id)),
            }
            continue;
        }
        let Some(outcome) = &outcomes[index] else {
            return Gate::Fail(format!("requisite `{}` has not run", requisite.id));
        };
        if outcome.is_failed() {
            return Gate::Fail(format!("requisite `{}` failed", requisite.id));
        }
        match requisite.on {
            RequisiteKind::Require => {}
            RequisiteKind::Watch => watched_changed |= changed(outcome),
            RequisiteKind::Onchanges => *onchanges.get_or_insert(false) |= changed(outcome),
            RequisiteKind::Prereq | RequisiteKind::Listen => {}
        }
    }
    if onchanges == Some(false) || prereq == Some(false) { Gate::Skip } else { Gate::Run { watched_changed } }
}

/// The order to run `calls` in: every state after its requisites (and
/// before the states it is a `prereq` of), in declaration order otherwise;
/// `listen` does not order. Also returns the states left in a cycle (the
/// master's `check` reports cycles, so these are rare).
pub fn order(calls: &[StateCall]) -> (Vec<usize>, Vec<usize>) {
    let position = |id: &str, kind: &str| calls.iter().position(|c| c.id == id && c.kind == kind);
    let mut depends: Vec<Vec<usize>> = vec![Vec::new(); calls.len()];
    for (index, call) in calls.iter().enumerate() {
        for r in &call.requisites {
            let Some(other) = position(&r.id, &r.kind) else { continue };
            match r.on {
                RequisiteKind::Listen => {}
                RequisiteKind::Prereq => depends[other].push(index),
                _ => depends[index].push(other),
            }
        }
    }
    let mut done = vec![false; calls.len()];
    let mut order = Vec::with_capacity(calls.len());
    while let Some(next) = (0..calls.len()).find(|&i| !done[i] && depends[i].iter().all(|&d| done[d])) {
        done[next] = true;
        order.push(next);
    }
    let stuck = (0..calls.len()).filter(|&i| !done[i]).collect();
    (order, stuck)
}

/// Why a call could not be planned.
#[derive(Debug, thiserror::Error)]
pub enum PlanError {
    /// The master sent a kind this agent does not know (a newer master).
    #[error("unknown state kind `{kind}`")]
    UnknownKind { kind: String },
    /// The kind's error names its file, command or argument.
    #[error(transparent)]
    Kind(#[from] kinds::KindError),
}

/// Plans a call.
pub fn plan_call(call: &StateCall, env: &ApplyEnv) -> Result<Box<dyn Plan>, PlanError> {
    let kind = kinds::find(&call.kind).ok_or_else(|| PlanError::UnknownKind { kind: call.kind.clone() })?;
    Ok((kind.plan)(&call.args, env)?)
}

/// Plans and applies one state (or only plans, in test mode), without
/// requisites.
pub fn apply_call(call: &StateCall, test: bool, env: &ApplyEnv) -> StateResult {
    let env = &ApplyEnv { packages: crate::env::PackageIndex::default(), ..env.clone() };
    let started = Instant::now();
    let (outcome, diff) = run_one(call, test, env, false, &mut ());
    let mut results = [StateResult { diff, ..finish(call, outcome, started) }];
    settle_index(env, &mut results);
    let [result] = results;
    result
}

/// Applies a plan already made, for callers that look at it first.
pub fn apply_plan(plan: Box<dyn Plan>, test: bool) -> Outcome {
    let changes = plan.changes();
    if changes.is_empty() {
        Outcome::Unchanged
    } else if test {
        Outcome::WouldChange { changes }
    } else {
        match plan.apply() {
            Ok(changes) => Outcome::Changed { changes },
            Err(error) => Outcome::Failed { error: error.to_string() },
        }
    }
}

pub fn finish(call: &StateCall, outcome: Outcome, started: Instant) -> StateResult {
    StateResult {
        id: call.id.clone(),
        kind: call.kind.clone(),
        outcome,
        diff: None,
        duration_us: u64::try_from(started.elapsed().as_micros()).unwrap_or(u64::MAX),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kinds::cmd_run;
    use halite_proto::{Requisite, Value};

    fn needs(mut call: StateCall, on: RequisiteKind, other: &StateCall) -> StateCall {
        call.requisites.push(Requisite { on, id: other.id.clone(), kind: other.kind.clone() });
        call
    }

    fn labels(results: &[StateResult]) -> Vec<(String, &'static str)> {
        results.iter().map(|r| (r.id.clone(), r.outcome.label())).collect()
    }

    #[test]
    fn order_follows_requisites_and_is_stable_otherwise() {
        let a = cmd_run::call("a", "true");
        let b = cmd_run::call("b", "true");
        let c = cmd_run::call("c", "true");
        let d = cmd_run::call("d", "true");
        // a requires c; others in declaration order.
        let calls = vec![needs(a.clone(), RequisiteKind::Require, &c), b.clone(), c.clone(), d.clone()];
        assert_eq!(order(&calls), (vec![1, 2, 0, 3], vec![]));
        let cycle = vec![needs(a.clone(), RequisiteKind::Require, &b), needs(b, RequisiteKind::Watch, &a), c];
        assert_eq!(order(&cycle), (vec![2], vec![0, 1]));
    }

    #[test]
    fn a_failed_require_stops_the_dependent() {
        let dir = tempfile::tempdir().unwrap();
        let marker = dir.path().join("ran");
        let broken = cmd_run::call("broken", "false");
        let after =
            needs(cmd_run::call("after", &format!("touch {}", marker.display())), RequisiteKind::Require, &broken);
        let results = run_states(&[after, broken], false, &ApplyEnv::default());
        assert_eq!(labels(&results), [("broken".into(), "failed"), ("after".into(), "failed")]);
        assert_eq!(results[1].outcome, Outcome::Failed { error: "requisite `broken` failed".into() });
        assert!(!marker.exists());
    }

    #[test]
    fn onchanges_runs_only_after_a_change() {
        let dir = tempfile::tempdir().unwrap();
        let marker = dir.path().join("ran");
        let touch = format!("touch {}", marker.display());
        let quiet = cmd_run::call("quiet", "true").with_arg("unless", "true");
        let noisy = cmd_run::call("noisy", "true");
        let env = ApplyEnv::default();

        let results = run_states(
            &[quiet.clone(), needs(cmd_run::call("x", &touch), RequisiteKind::Onchanges, &quiet)],
            false,
            &env,
        );
        assert_eq!(labels(&results), [("quiet".into(), "unchanged"), ("x".into(), "unchanged")]);
        assert!(!marker.exists());

        // Test mode propagates "would change" and runs nothing.
        let calls = [noisy.clone(), needs(cmd_run::call("x", &touch), RequisiteKind::Onchanges, &noisy)];
        let results = run_states(&calls, true, &env);
        assert_eq!(labels(&results), [("noisy".into(), "would change"), ("x".into(), "would change")]);
        assert!(!marker.exists());

        let results = run_states(&calls, false, &env);
        assert_eq!(labels(&results), [("noisy".into(), "changed"), ("x".into(), "changed")]);
        assert!(marker.exists());
    }

    #[test]
    fn watch_triggers_the_reaction_of_a_command_that_would_not_run() {
        let dir = tempfile::tempdir().unwrap();
        let marker = dir.path().join("ran");
        let touch = format!("touch {}", marker.display());
        let watcher = |watched: &StateCall| {
            needs(cmd_run::call("reload", &touch).with_arg("unless", "true"), RequisiteKind::Watch, watched)
        };
        let env = ApplyEnv::default();
        let quiet = cmd_run::call("quiet", "true").with_arg("unless", "true");
        let results = run_states(&[quiet.clone(), watcher(&quiet)], false, &env);
        assert_eq!(labels(&results), [("quiet".into(), "unchanged"), ("reload".into(), "unchanged")]);
        assert!(!marker.exists());

        let noisy = cmd_run::call("noisy", "true");
        let results = run_states(&[noisy.clone(), watcher(&noisy)], true, &env);
        assert_eq!(labels(&results)[1], ("reload".into(), "would change"));
        assert!(!marker.exists());
        let results = run_states(&[noisy.clone(), watcher(&noisy)], false, &env);
        assert_eq!(labels(&results)[1], ("reload".into(), "changed"));
        assert!(marker.exists());
    }

    #[test]
    fn a_requisite_outside_the_job_fails_the_state_by_name() {
        let other = cmd_run::call("elsewhere", "true");
        let results = run_states(
            &[needs(cmd_run::call("x", "true"), RequisiteKind::Require, &other)],
            false,
            &ApplyEnv::default(),
        );
        let Outcome::Failed { error } = &results[0].outcome else { panic!("{results:?}") };
        assert!(error.contains("elsewhere") && error.contains("not part of this job"), "{error}");
    }

    #[test]
    fn prereq_runs_first_and_only_when_its_target_would_change() {
        let dir = tempfile::tempdir().unwrap();
        let log = dir.path().join("log");
        let append = |word: &str| format!("echo {word} >> {}", log.display());
        let shell = |id: &str, line: String| cmd_run::call(id, &line).with_arg("shell", true);
        let env = ApplyEnv::default();
        // The target would change: the prereq holder runs before it.
        let target = shell("deploy", append("deploy"));
        let holder = needs(shell("stop", append("stop")), RequisiteKind::Prereq, &target);
        let results = run_states(&[target.clone(), holder.clone()], false, &env);
        assert_eq!(labels(&results), [("stop".into(), "changed"), ("deploy".into(), "changed")]);
        assert_eq!(std::fs::read_to_string(&log).unwrap(), "stop\ndeploy\n");
        // The target has nothing to do: the holder is skipped.
        let quiet = target.clone().with_arg("unless", "true");
        let holder = needs(shell("stop", append("stop")), RequisiteKind::Prereq, &quiet);
        let results = run_states(&[quiet, holder], false, &env);
        assert_eq!(labels(&results), [("stop".into(), "unchanged"), ("deploy".into(), "unchanged")]);
        // The holder fails: the target does not run.
        let holder = needs(cmd_run::call("stop", "false"), RequisiteKind::Prereq, &target);
        let results = run_states(&[target, holder], false, &env);
        assert_eq!(labels(&results), [("stop".into(), "failed"), ("deploy".into(), "failed")]);
        assert_eq!(std::fs::read_to_string(&log).unwrap(), "stop\ndeploy\n");
    }

    #[test]
    fn listen_reacts_once_at_the_end_and_only_after_a_change() {
        let dir = tempfile::tempdir().unwrap();
        let marker = dir.path().join("reloaded");
        let env = ApplyEnv::default();
        let reload = cmd_run::call("reload", &format!("touch {}", marker.display())).with_arg("unless", "true");
        let noisy = cmd_run::call("noisy", "true");
        let listener = needs(reload.clone(), RequisiteKind::Listen, &noisy);
        // The listener comes first: listen does not order, and it still
        // reacts to a state that runs after it.
        let results = run_states(&[listener.clone(), noisy.clone()], false, &env);
        assert_eq!(
            labels(&results),
            [("reload".into(), "unchanged"), ("noisy".into(), "changed"), ("listener_reload".into(), "changed")]
        );
        assert!(marker.exists());
        let quiet = noisy.with_arg("unless", "true");
        let results = run_states(&[needs(reload, RequisiteKind::Listen, &quiet), quiet], false, &env);
        assert_eq!(labels(&results), [("reload".into(), "unchanged"), ("noisy".into(), "unchanged")]);
    }

    #[test]
    fn conditions_skip_any_kind_through_a_shell() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("f");
        let file = |conditions: Value| {
            StateCall::new(
                "f",
                "file.managed",
                Value::map()
                    .with("path", path.display().to_string())
                    .with("contents", b"x".to_vec())
                    .with("makedirs", true),
            )
            .with_arg(crate::sls::conditions::KEY, conditions)
        };
        let env = ApplyEnv::default();
        let skip = file(crate::sls::conditions::to_value(&["test 1 -eq 1 > /dev/null".into()], &[]));
        assert_eq!(labels(&run_states(&[skip], false, &env)), [("f".into(), "unchanged")]);
        assert!(!path.exists());
        let run = file(crate::sls::conditions::to_value(&[], &["true | true".into()]));
        assert_eq!(labels(&run_states(&[run], false, &env)), [("f".into(), "changed")]);
        assert!(path.exists());
    }
}

//! Running a [`StateCall`] on the agent: plan, then (unless testing) apply.

use std::path::PathBuf;
use std::time::Instant;

use halite_proto::{Outcome, Sha256, StateCall, StateResult};

use crate::kinds::{self, Plan};

/// A file a state keeps in shape: what it should contain and its mode.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ManagedFile {
    pub path: PathBuf,
    pub sha256: Sha256,
    /// `None` when the state does not manage the mode.
    pub mode: Option<u32>,
}

/// Plans a call; the error names the state.
pub fn plan_call(call: &StateCall) -> Result<Box<dyn Plan>, String> {
    let kind = kinds::find(&call.kind).ok_or_else(|| format!("unknown state kind `{}`", call.kind))?;
    (kind.plan)(&call.args)
}

/// Plans and applies one state (or only plans, in test mode).
pub fn apply_call(call: &StateCall, test: bool) -> StateResult {
    let started = Instant::now();
    let outcome = match plan_call(call) {
        Err(error) => Outcome::Failed { error },
        Ok(plan) => apply_plan(plan, test),
    };
    finish(call, outcome, started)
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
            Ok(()) => Outcome::Changed { changes },
            Err(error) => Outcome::Failed { error },
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

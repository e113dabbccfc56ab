//! The job runner: applies the master's jobs one at a time, in order.
//!
//! For each state it plans, records a managed file's desired state (so the
//! write that follows raises no drift), applies, and marks the file
//! applied (which closes drift reported before the restore).

use std::path::{Path, PathBuf};
use std::time::Instant;

use halite_proto::{AgentMessage, Job, JobResult, StateCall, StateResult, Value};
use halite_state::apply::{apply_plan, finish, plan_call};
use tokio::sync::mpsc;

use crate::managed::ManagedFiles;

/// Jobs waiting to run. When full, the agent's main loop waits (and with
/// it, the link's inbound queue), which slows the master down.
pub const QUEUE_CAPACITY: usize = 64;

pub fn spawn(managed: ManagedFiles, root: PathBuf, results: mpsc::Sender<AgentMessage>) -> mpsc::Sender<Job> {
    let (tx, mut rx) = mpsc::channel::<Job>(QUEUE_CAPACITY);
    tokio::spawn(async move {
        while let Some(job) = rx.recv().await {
            let (managed, root) = (managed.clone(), root.clone());
            let jid = job.id;
            // File I/O and hashing: off the runtime's threads.
            let outcome = tokio::task::spawn_blocking(move || run(&job, &managed, &root)).await;
            let result = match outcome {
                Ok(result) => result,
                Err(panic) => {
                    tracing::error!(job = %jid, error = %panic, "A job panicked.");
                    JobResult { job: jid, results: Vec::new() }
                }
            };
            if results.send(AgentMessage::JobResult(result)).await.is_err() {
                return;
            }
        }
    });
    tx
}

pub fn run(job: &Job, managed: &ManagedFiles, root: &Path) -> JobResult {
    let results = job.states.iter().map(|call| run_state(&rooted_call(call, root), job, managed)).collect();
    JobResult { job: job.id, results }
}

fn run_state(call: &StateCall, job: &Job, managed: &ManagedFiles) -> StateResult {
    let started = Instant::now();
    let plan = match plan_call(call) {
        Ok(plan) => plan,
        Err(error) => {
            let result = finish(call, halite_proto::Outcome::Failed { error }, started);
            log(job, &result);
            return result;
        }
    };
    let file = plan.managed_file();
    if let (Some(file), false) = (&file, job.test) {
        managed.begin(file);
    }
    let outcome = apply_plan(plan, job.test);
    if let (Some(file), false) = (&file, job.test) {
        managed.finish(&file.path);
    }
    let result = finish(call, outcome, started);
    log(job, &result);
    result
}

fn log(job: &Job, result: &StateResult) {
    match &result.outcome {
        halite_proto::Outcome::Failed { error } => {
            tracing::warn!(job = %job.id, state = %result.id, kind = %result.kind, %error, "State failed.");
        }
        outcome => tracing::info!(
            job = %job.id, state = %result.id, kind = %result.kind, outcome = outcome.label(),
            duration_us = result.duration_us, "State applied."
        ),
    }
}

/// The call with its `path` moved under the agent's `root`.
fn rooted_call(call: &StateCall, root: &Path) -> StateCall {
    let mut call = call.clone();
    if let Value::Map(args) = &mut call.args
        && let Some(Value::String(path)) = args.get_mut("path")
    {
        *path = crate::rooted(root, Path::new(path)).display().to_string();
    }
    call
}

#[cfg(test)]
mod tests {
    use super::*;
    use halite_proto::{Id, Outcome};

    #[test]
    fn applies_under_the_root_and_records_the_file() {
        let root = tempfile::tempdir().unwrap();
        let managed = ManagedFiles::in_memory();
        let call = StateCall {
            id: "motd".into(),
            kind: "file.managed".into(),
            args: Value::map().with("path", "/etc/motd").with("contents", b"hi\n".to_vec()),
        };
        let job = Job { id: Id::new(), cause_event: None, test: false, states: vec![call] };
        let result = run(&job, &managed, root.path());
        assert!(matches!(result.results[0].outcome, Outcome::Changed { .. }), "{result:?}");
        let real = root.path().join("etc/motd");
        assert_eq!(std::fs::read(&real).unwrap(), b"hi\n");
        assert!(managed.desired(&real).is_some());
        assert_eq!(managed.applied_generation(&real), 1);
        // Test mode records nothing and changes nothing.
        std::fs::write(&real, "drift").unwrap();
        let test_job = Job { test: true, id: Id::new(), ..job };
        let result = run(&test_job, &managed, root.path());
        assert!(matches!(result.results[0].outcome, Outcome::WouldChange { .. }));
        assert_eq!(std::fs::read(&real).unwrap(), b"drift");
        assert_eq!(managed.applied_generation(&real), 1);
    }
}

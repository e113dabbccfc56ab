//! The job runner: applies the master's jobs one at a time, in order.
//!
//! A job runs through the state engine's `run_states` (requisite order,
//! plan, apply); for each managed file it records the desired state (so
//! the write that follows raises no drift) and marks the file applied
//! after (which closes drift reported before the restore).

use halite_proto::{AgentMessage, Job, JobResult, StateCall, StateResult};
use halite_state::paths::rooted_call;
use halite_state::{ApplyEnv, ManagedFile, Observer, run_states_observed};
use std::path::{Path, PathBuf};
use tokio::sync::mpsc;

use crate::managed::ManagedFiles;

/// Jobs waiting to run. When full, the agent's main loop waits (and with
/// it, the link's inbound queue), which slows the master down.
pub const QUEUE_CAPACITY: usize = 64;

pub fn spawn(
    managed: ManagedFiles,
    root: PathBuf,
    env: ApplyEnv,
    results: mpsc::Sender<AgentMessage>,
) -> mpsc::Sender<Job> {
    let (tx, mut rx) = mpsc::channel::<Job>(QUEUE_CAPACITY);
    tokio::spawn(async move {
        while let Some(job) = rx.recv().await {
            let (managed, root, env) = (managed.clone(), root.clone(), env.clone());
            let jid = job.id;
            // File I/O, hashing and commands: off the runtime's threads.
            let outcome = tokio::task::spawn_blocking(move || run(&job, &managed, &root, &env)).await;
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

pub fn run(job: &Job, managed: &ManagedFiles, root: &Path, env: &ApplyEnv) -> JobResult {
    let calls: Vec<StateCall> = job.states.iter().map(|call| rooted_call(call, root)).collect();
    let mut observer = Recorder { job, managed };
    let results = run_states_observed(&calls, job.test, env, &mut observer);
    JobResult { job: job.id, results }
}

/// Records a managed file's desired state before the write (so the write
/// raises no drift) and marks it applied after; logs each result.
struct Recorder<'a> {
    job: &'a Job,
    managed: &'a ManagedFiles,
}

impl Observer for Recorder<'_> {
    fn before_apply(&mut self, file: &ManagedFile) {
        self.managed.begin(file);
    }

    fn after_apply(&mut self, file: &ManagedFile) {
        self.managed.finish(&file.path);
    }

    fn finished(&mut self, result: &StateResult) {
        log(self.job, result);
    }
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

#[cfg(test)]
mod tests {
    use super::*;
    use halite_proto::{Id, Outcome, Value};

    #[test]
    fn applies_under_the_root_and_records_the_file() {
        let root = tempfile::tempdir().unwrap();
        let managed = ManagedFiles::in_memory();
        let call = StateCall::new(
            "motd",
            "file.managed",
            Value::map().with("path", "/etc/motd").with("contents", b"hi\n".to_vec()),
        );
        let job = Job { id: Id::new(), cause_event: None, test: false, states: vec![call] };
        let result = run(&job, &managed, root.path(), &ApplyEnv::default());
        assert!(matches!(result.results[0].outcome, Outcome::Changed { .. }), "{result:?}");
        let real = root.path().join("etc/motd");
        assert_eq!(std::fs::read(&real).unwrap(), b"hi\n");
        assert!(managed.desired(&real).is_some());
        assert_eq!(managed.applied_generation(&real), 1);
        // Test mode records nothing and changes nothing.
        std::fs::write(&real, "drift").unwrap();
        let test_job = Job { test: true, id: Id::new(), ..job };
        let result = run(&test_job, &managed, root.path(), &ApplyEnv::default());
        assert!(matches!(result.results[0].outcome, Outcome::WouldChange { .. }));
        assert_eq!(std::fs::read(&real).unwrap(), b"drift");
        assert_eq!(managed.applied_generation(&real), 1);
    }
}

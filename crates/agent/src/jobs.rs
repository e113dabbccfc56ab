//! The job runner: applies the master's jobs one at a time, in order.
//!
//! A job runs through the state engine's `run_states` (requisite order,
//! plan, apply); for each managed file it records the desired state (so
//! the write that follows raises no drift) and marks the file applied
//! after (which closes drift reported before the restore).

use halite_proto::{AgentMessage, Id, Job, JobResult, Outcome, StateCall, StateResult};
use halite_state::paths::rooted_call;
use halite_state::{ApplyEnv, ManagedFile, Observer, run_states_observed};
use std::path::{Path, PathBuf};
use tokio::sync::mpsc;

use crate::managed::ManagedFiles;

/// Jobs waiting to run. When full, the agent's main loop waits (and with
/// it, the link's inbound queue), which slows the master down.
pub const QUEUE_CAPACITY: usize = 64;

/// Starts the job runner: a thread of its own that takes jobs in order and
/// sends each result to `results`. A thread, not a task handing each job
/// to the blocking pool: one hop fewer between the job's arrival and its
/// first write (BENCHMARKS.md, "Per hop"), and never a pool thread to
/// start after an idle spell; it sleeps in `blocking_recv` between jobs.
/// It ends when the queue closes (after the jobs it holds).
pub fn spawn(
    managed: ManagedFiles,
    root: PathBuf,
    env: ApplyEnv,
    results: mpsc::Sender<AgentMessage>,
) -> mpsc::Sender<Job> {
    let (tx, mut rx) = mpsc::channel::<Job>(QUEUE_CAPACITY);
    let runner = move || {
        // Closing replaced files, pruning backups and removing stale
        // temporaries wait until the job's result is sent (halite_fs::tidy).
        halite_fs::tidy::hold();
        while let Some(job) = rx.blocking_recv() {
            let jid = job.id;
            halite_fs::hops::mark("agent.apply.start", jid.0);
            // Hop timing: the atomic writes' fsyncs are marked for this job.
            halite_fs::hops::set_key(Some(jid.0));
            let outcome = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| run(&job, &managed, &root, &env)));
            halite_fs::hops::set_key(None);
            halite_fs::hops::mark("agent.apply.done", jid.0);
            let result = outcome.unwrap_or_else(|panic| {
                let error = panic_text(panic.as_ref());
                let error = crate::secrets::redact(&error);
                tracing::error!(job = %jid, %error, "A job panicked; every state in it is reported failed.");
                let states: Vec<(String, String)> = job.states.iter().map(|c| (c.id.clone(), c.kind.clone())).collect();
                panicked(jid, &states, &error)
            });
            // A panic's text may quote a state's arguments.
            let result = crate::secrets::redact_result(result);
            if results.blocking_send(AgentMessage::JobResult(result)).is_err() {
                break;
            }
            // A waiting job goes first; what is left is done after it.
            halite_fs::tidy::finish_unless(|| !rx.is_empty());
        }
        halite_fs::tidy::finish();
    };
    if let Err(error) = std::thread::Builder::new().name("jobs".into()).spawn(runner) {
        // Without a runner the queue's receiver is gone: every job sent is
        // refused at once and the daemon stops (as when the runner ends).
        tracing::error!(%error, "Cannot start the job runner's thread.");
    }
    tx
}

/// A panic's message, as `JoinError` showed it.
fn panic_text(panic: &(dyn std::any::Any + Send)) -> String {
    match (panic.downcast_ref::<&str>(), panic.downcast_ref::<String>()) {
        (Some(text), _) => format!("task panicked with message {text:?}"),
        (_, Some(text)) => format!("task panicked with message {text:?}"),
        _ => "task panicked".to_owned(),
    }
}

/// The result of a job whose runner panicked: every state in it failed,
/// so the master, `apply` and `run` all see a failed job (an empty result
/// would read as "nothing to do").
fn panicked(job: Id, states: &[(String, String)], error: &str) -> JobResult {
    let results = states
        .iter()
        .map(|(id, kind)| StateResult {
            id: id.clone(),
            kind: kind.clone(),
            outcome: Outcome::Failed { error: format!("the agent's job runner panicked: {error}") },
            diff: None,
            duration_us: 0,
        })
        .collect();
    JobResult { job, results }
}

pub fn run(job: &Job, managed: &ManagedFiles, root: &Path, env: &ApplyEnv) -> JobResult {
    let calls: Vec<StateCall> = job.states.iter().map(|call| rooted_call(call, root)).collect();
    // The kinds that reach files other than `path` root them themselves.
    let env = ApplyEnv { root: root.to_path_buf(), ..env.clone() };
    let mut observer = Recorder { job, managed };
    let mut results = run_states_observed(&calls, job.test, &env, &mut observer);
    // A diff of a large file would not fit a message; the master refuses
    // (and cuts) what is over, so it is cut here, with a marker.
    results.iter_mut().for_each(StateResult::cap);
    // Secrets are shown as `<secret>` before the result goes anywhere
    // (secrets.rs): the outbox, the master, `apply --local`'s report.
    crate::secrets::redact_result(JobResult { job: job.id, results })
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

/// Logs a state's result, its id and error with secrets shown as
/// `<secret>` (secrets.rs): a state's id or a command's stderr may hold one.
fn log(job: &Job, result: &StateResult) {
    let state = crate::secrets::redact(&result.id);
    match &result.outcome {
        halite_proto::Outcome::Failed { error } => {
            let error = crate::secrets::redact(error);
            tracing::warn!(job = %job.id, %state, kind = %result.kind, %error, "State failed.");
        }
        outcome => tracing::info!(
            job = %job.id, %state, kind = %result.kind, outcome = outcome.label(),
            duration_us = result.duration_us, "State applied."
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use halite_proto::Value;

    #[test]
    fn a_panicked_job_fails_every_state_it_held() {
        let states =
            [("motd".to_owned(), "file.managed".to_owned()), ("nginx".to_owned(), "service.running".to_owned())];
        let result = panicked(Id::new(), &states, "boom");
        assert_eq!(result.results.len(), 2);
        assert!(result.results.iter().all(|r| r.outcome.is_failed()), "{result:?}");
        assert_eq!(result.results[1].id, "nginx");
    }

    #[test]
    fn the_runner_prunes_backups_once_each_result_is_sent() {
        let root = tempfile::tempdir().unwrap();
        let backups = root.path().join("data/backup");
        let env = ApplyEnv { backup_dir: Some(backups.clone()), backups_kept: 1, ..ApplyEnv::default() };
        let (results, mut answers) = mpsc::channel(8);
        let queue = spawn(ManagedFiles::in_memory(), root.path().to_path_buf(), env, results);
        let real = root.path().join("etc/motd");
        let call = StateCall::new(
            "motd",
            "file.managed",
            Value::map().with("path", "/etc/motd").with("contents", b"hi\n".to_vec()),
        );
        for drift in ["", "drift 1\n", "drift 2\n"] {
            if !drift.is_empty() {
                std::fs::write(&real, drift).unwrap();
            }
            let job = Job { id: Id::new(), cause_event: None, test: false, states: vec![call.clone()] };
            queue.blocking_send(job).unwrap();
            let Some(AgentMessage::JobResult(result)) = answers.blocking_recv() else { panic!("no result") };
            assert!(matches!(result.results[0].outcome, Outcome::Changed { .. }), "{result:?}");
        }
        // The runner ends after tidying what its last job left.
        drop(queue);
        assert!(answers.blocking_recv().is_none());
        let kept = halite_state::backup::backups_of(&backups, &real);
        assert_eq!(kept.len(), 1, "{kept:?}");
        assert_eq!(std::fs::read(&kept[0]).unwrap(), b"drift 2\n");
    }

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

//! Jobs: states sent to an agent, and the wait for its result. Every job,
//! its cause and its answer (or the lack of one) is recorded in the
//! [`Store`] when the master has one.
//!
//! A result is taken only for a job sent to that agent and not answered
//! yet ([`Jobs::take_result`]): waited for now, or sent before the agent's
//! session (or the master) restarted. Anything else is refused, logged at
//! most once a minute per agent, so an agent cannot fill the store with
//! results for jobs it invents.

use std::collections::{BTreeSet, HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use halite_proto::event::tag;
use halite_proto::{Event, Id, Job, JobResult, MasterMessage, Value};
use tokio::sync::oneshot;

use crate::server::bus::Bus;
use crate::server::receipts::{Cause, Receipts};
use crate::server::sessions::Sessions;
use crate::server::store::{JobRecord, Store};

/// Jobs sent and not yet answered: the agent asked, and who waits.
#[derive(Debug, Default)]
struct Pending {
    by_job: HashMap<Id, (String, oneshot::Sender<JobResult>)>,
    /// The same jobs by agent. Every new session ends its agent's jobs
    /// ([`Jobs::agent_gone`]); looking only at that agent's keeps a fleet's
    /// first contact, thousands of start-up jobs in flight, from costing
    /// every session a walk over all of them.
    by_agent: HashMap<String, HashSet<Id>>,
}

impl Pending {
    fn insert(&mut self, job: Id, agent: String, waiter: oneshot::Sender<JobResult>) {
        self.by_agent.entry(agent.clone()).or_default().insert(job);
        if let Some((previous, _)) = self.by_job.insert(job, (agent, waiter)) {
            self.unlink(&previous, job);
        }
    }

    fn remove(&mut self, job: Id) -> Option<(String, oneshot::Sender<JobResult>)> {
        let (agent, waiter) = self.by_job.remove(&job)?;
        self.unlink(&agent, job);
        Some((agent, waiter))
    }

    fn unlink(&mut self, agent: &str, job: Id) {
        if let Some(jobs) = self.by_agent.get_mut(agent) {
            jobs.remove(&job);
            if jobs.is_empty() {
                self.by_agent.remove(agent);
            }
        }
    }

    /// Forgets (and so drops the waiters of) every job of `agent`.
    fn agent_gone(&mut self, agent: &str) {
        for job in self.by_agent.remove(agent).unwrap_or_default() {
            self.by_job.remove(&job);
        }
    }
}

/// Jobs whose results are taken, per agent: sent and not yet stored as
/// answered. At most this many per agent (the oldest are forgotten: a
/// result for one of those is refused).
pub const EXPECTED_PER_AGENT: usize = 1024;

/// How often a refused result is logged per agent at most.
const REFUSAL_LOG_EVERY: Duration = Duration::from_secs(60);

#[derive(Debug, Default)]
struct Expected {
    by_agent: HashMap<String, BTreeSet<Id>>,
    /// Per agent: when a refusal was last logged, and refusals since.
    refusals: HashMap<String, (tokio::time::Instant, u64)>,
}

impl Expected {
    fn insert(&mut self, agent: &str, job: Id) {
        let jobs = self.by_agent.entry(agent.to_owned()).or_default();
        jobs.insert(job);
        if jobs.len() > EXPECTED_PER_AGENT {
            jobs.pop_first();
        }
    }

    fn contains(&self, agent: &str, job: Id) -> bool {
        self.by_agent.get(agent).is_some_and(|jobs| jobs.contains(&job))
    }

    fn remove(&mut self, agent: &str, job: Id) {
        if let Some(jobs) = self.by_agent.get_mut(agent) {
            jobs.remove(&job);
            if jobs.is_empty() {
                self.by_agent.remove(agent);
            }
        }
    }

    /// Counts a refusal; true when it is time to log (the first, then at
    /// most once per [`REFUSAL_LOG_EVERY`]), with the count since.
    fn refused(&mut self, agent: &str, now: tokio::time::Instant) -> Option<u64> {
        match self.refusals.get_mut(agent) {
            Some((last, count)) if now.duration_since(*last) < REFUSAL_LOG_EVERY => {
                *count += 1;
                None
            }
            Some((last, count)) => {
                let since = *count + 1;
                *last = now;
                *count = 0;
                Some(since)
            }
            None => {
                self.refusals.insert(agent.to_owned(), (now, 0));
                Some(1)
            }
        }
    }
}

/// A result [`Jobs::take_result`] refused: no job of that id is expected
/// from that agent.
#[derive(Debug, thiserror::Error)]
#[error("agent `{agent}` sent a result for job {job}, which is not one sent to it and unanswered")]
pub struct UnexpectedResult {
    pub agent: String,
    pub job: Id,
}

/// Why a job brought no result back; names the job and the agent.
#[derive(Debug, thiserror::Error)]
pub enum JobError {
    #[error("job {jid}: {source}")]
    Send { jid: Id, source: crate::server::sessions::SendError },
    #[error("job {jid}: agent `{agent}` went away before answering (a result it kept is published when it is back)")]
    Gone { jid: Id, agent: String },
    #[error("job {jid}: agent `{agent}` did not answer within {timeout:?}")]
    NoAnswer { jid: Id, agent: String, timeout: Duration },
}

#[derive(Debug, Clone)]
pub struct Jobs {
    sessions: Sessions,
    bus: Bus,
    pending: Arc<Mutex<Pending>>,
    /// Whose results are taken (see the module docs).
    expected: Arc<Mutex<Expected>>,
    timeout: Duration,
    /// Where jobs and results are recorded (none in unit tests).
    store: Option<Store>,
    /// The reactor on whose behalf jobs are run through this handle.
    reactor: Option<Arc<str>>,
    /// What each job sent changes, for its receipts (`receipts.rs`).
    receipts: Receipts,
    /// Fetches the URL sources a job's states name before it is sent
    /// (`fetch.rs`); none in unit tests (the agent then says nobody did).
    fetcher: Option<crate::server::fetch::Fetcher>,
}

/// Why a job runs, for the store: `cause` is `operator:<command line>`,
/// `event:<id>`, or `connected` (an agent's start-up apply).
#[derive(Debug, Clone, PartialEq)]
pub struct Origin {
    pub cause: String,
    pub reactor: Option<String>,
    /// The target expression the operator gave, or the agent.
    pub target: String,
}

impl Origin {
    /// What a job says about itself: the event that caused it, if any.
    fn of(job: &Job, agent: &str, reactor: Option<&str>) -> Origin {
        Origin {
            cause: job.cause_event.map_or_else(|| "master".to_owned(), |e| format!("event:{e}")),
            reactor: reactor.map(str::to_owned),
            target: agent.to_owned(),
        }
    }

    /// An agent's top.yaml states, applied when its session starts.
    pub fn connected(agent: &str) -> Origin {
        Origin { cause: "connected".into(), reactor: None, target: agent.to_owned() }
    }
}

impl Jobs {
    pub fn new(sessions: Sessions, bus: Bus, timeout: Duration) -> Self {
        Jobs {
            sessions,
            bus,
            pending: Arc::default(),
            expected: Arc::default(),
            timeout,
            store: None,
            reactor: None,
            receipts: Receipts::default(),
            fetcher: None,
        }
    }

    /// Fetches jobs' URL sources with `fetcher` before sending them.
    #[must_use]
    pub fn with_fetcher(mut self, fetcher: crate::server::fetch::Fetcher) -> Self {
        self.fetcher = Some(fetcher);
        self
    }

    /// `job` with its URL sources fetched (or why not, per state).
    async fn fetched(&self, mut job: Job) -> Job {
        if let Some(fetcher) = &self.fetcher
            && job.states.iter().any(|call| call.args.get(halite_state::fetch::ARG).is_some())
        {
            fetcher.fill(&mut job).await;
        }
        job
    }

    /// Records every job and result in `store`.
    #[must_use]
    pub fn with_store(mut self, store: Store) -> Self {
        self.store = Some(store);
        self
    }

    /// Where jobs and results are recorded, if anywhere.
    pub fn store(&self) -> Option<&Store> {
        self.store.as_ref()
    }

    /// A handle whose jobs are recorded as started by `reactor`.
    #[must_use]
    pub fn for_reactor(&self, reactor: &str) -> Self {
        Jobs { reactor: Some(Arc::from(reactor)), ..self.clone() }
    }

    /// How long a job may take unless its caller says otherwise.
    pub fn timeout(&self) -> Duration {
        self.timeout
    }

    /// The agent's facts (from its hello), for targeting and templates.
    /// The connected, accepted agents `target` matches, by id.
    pub fn agents_matching(&self, target: &halite_state::Target) -> Vec<String> {
        self.sessions
            .accepted_with_facts()
            .into_iter()
            .filter(|(agent, facts)| target.matches(agent, facts))
            .map(|(agent, _)| agent)
            .collect()
    }

    pub fn facts(&self, agent: &str) -> Value {
        self.sessions.facts(agent)
    }

    /// Keeps the facts `agent` sent in its hello in the store, where
    /// `check` finds them to render templates for every known agent.
    pub fn record_facts(&self, agent: &str, facts: &Value) {
        if let Some(store) = &self.store {
            store.facts_seen(agent, facts.to_json());
        }
    }

    /// Sends `job` to `agent` and waits for its result. Announces the job
    /// (`halite/job/<jid>/new`) and its return (`…/ret/<agent>`) on the bus.
    pub async fn run(&self, agent: &str, job: Job) -> Result<JobResult, JobError> {
        let origin = Origin::of(&job, agent, self.reactor.as_deref());
        self.run_with(agent, job, origin, self.timeout).await
    }

    /// As [`Jobs::run`], for a reaction to `event`: the receipts of what
    /// the job changes measure their latency from the event.
    pub async fn run_for_event(&self, agent: &str, job: Job, event: &Event) -> Result<JobResult, JobError> {
        let origin = Origin::of(&job, agent, self.reactor.as_deref());
        let job = self.fetched(job).await;
        self.receipts.sent(agent, &job, &origin.cause, Some(Cause::of(event)));
        self.send_and_wait(agent, job, origin, self.timeout).await
    }

    /// The receipts kept for the jobs sent through any clone of this handle.
    pub fn receipts(&self) -> &Receipts {
        &self.receipts
    }

    /// As [`Jobs::run`], recorded with `origin`, waiting at most `timeout`.
    pub async fn run_with(
        &self,
        agent: &str,
        job: Job,
        origin: Origin,
        timeout: Duration,
    ) -> Result<JobResult, JobError> {
        let job = self.fetched(job).await;
        self.receipts.sent(agent, &job, &origin.cause, None);
        self.send_and_wait(agent, job, origin, timeout).await
    }

    async fn send_and_wait(
        &self,
        agent: &str,
        job: Job,
        origin: Origin,
        timeout: Duration,
    ) -> Result<JobResult, JobError> {
        let jid = job.id;
        let cause = origin.cause.clone();
        if let Some(store) = &self.store {
            let record = JobRecord {
                jid: jid.to_string(),
                created_us: halite_proto::event::now_us(),
                cause: origin.cause,
                reactor: origin.reactor,
                target: origin.target,
                states: job.states.iter().map(|s| s.id.clone()).collect(),
                test: job.test,
            };
            store.started(record, agent).await;
        }
        halite_fs::hops::mark("master.job.recorded", jid.0);
        let (tx, rx) = oneshot::channel();
        self.expect(agent, jid);
        self.pending.lock().unwrap_or_else(|p| p.into_inner()).insert(jid, agent.to_owned(), tx);
        let states: Vec<Value> = job.states.iter().map(|s| Value::from(s.id.as_str())).collect();
        let mut announce = Event::new(
            tag::job_new(jid),
            agent,
            Value::map()
                .with("states", Value::List(states))
                .with("cause", job.cause_event.map(|c| c.to_string()))
                .with("test", job.test),
        );
        announce.cause_job = Some(jid);
        self.bus.publish(announce);
        tracing::info!(agent, job = %jid, cause = %job.cause_event.map_or_else(|| "none".to_owned(), |c| c.to_string()), "Job sent.");
        // The agent's secret values go just before the job, on the same
        // session, so it redacts its log and results too (salt/secret.rs).
        let secrets = halite_state::salt::secret::of(agent).map(|s| MasterMessage::Secrets(s.to_vec()));
        let sent = match secrets {
            Some(secrets) => self.sessions.send(agent, &secrets).await,
            None => Ok(()),
        };
        let sent = match sent {
            Ok(()) => self.sessions.send(agent, &MasterMessage::Job(job)).await,
            Err(error) => Err(error),
        };
        let outcome = match sent {
            Err(source) => Err(JobError::Send { jid, source }),
            Ok(()) => {
                halite_fs::hops::mark("master.job.sent", jid.0);
                match tokio::time::timeout(timeout, rx).await {
                    Ok(Ok(result)) => Ok(result),
                    // Dropped by `agent_gone`.
                    Ok(Err(_)) => Err(JobError::Gone { jid, agent: agent.to_owned() }),
                    Err(_) => Err(JobError::NoAnswer { jid, agent: agent.to_owned(), timeout }),
                }
            }
        };
        self.pending.lock().unwrap_or_else(|p| p.into_inner()).remove(jid);
        let outcome_index =
            outcome.as_ref().map_or(crate::server::metrics::NO_ANSWER, crate::server::metrics::outcome_of);
        crate::server::metrics::get().job(&cause, outcome_index);
        // An answer is stored where it arrives (`take_result`), before the
        // agent is acknowledged.
        if let (Some(store), Err(error)) = (&self.store, &outcome) {
            store.no_answer(&jid.to_string(), agent, &error.to_string()).await;
        }
        if outcome.is_err() {
            self.receipts.forget(jid);
        }
        outcome
    }

    /// Records what a reactor did on the master itself (an `exec` hook, a
    /// `webhook`) as a job of one state whose target is `master`, so its
    /// output (a hook's stdout and stderr, a webhook's response body) is
    /// kept in the store, which only the master's owner reads, and not on
    /// the bus (SPEC §8: the publisher carries no command output). Returns
    /// the job id the bus event names instead; `None` without a store.
    pub async fn record_on_master(&self, cause: Id, action: &str, outcome: halite_proto::Outcome) -> Option<Id> {
        let store = self.store.as_ref()?;
        let jid = Id::new();
        let record = JobRecord {
            jid: jid.to_string(),
            created_us: halite_proto::event::now_us(),
            cause: format!("event:{cause}"),
            reactor: self.reactor.as_deref().map(str::to_owned),
            target: "master".into(),
            states: vec![action.to_owned()],
            test: false,
        };
        store.started(record, "master").await;
        let result = halite_proto::StateResult {
            id: action.to_owned(),
            kind: action.to_owned(),
            outcome,
            diff: None,
            duration_us: 0,
        };
        store.answered(&jid.to_string(), "master", vec![result]).await;
        Some(jid)
    }

    /// The receipts of what `result` changed, counted (for the store).
    fn make_receipts(&self, agent: &str, result: &JobResult) -> Vec<crate::server::receipts::Receipt> {
        let receipts = self.receipts.returned(agent, result, halite_proto::event::now_us());
        for receipt in &receipts {
            let corrective = receipt.kind == crate::server::receipts::ReceiptKind::Corrective;
            crate::server::metrics::get().receipt(corrective, receipt.latency_us);
        }
        receipts
    }

    /// Returns once every job record written before is committed (`cmd`
    /// answers its operator after it, so `jobs` run next shows the runs).
    pub async fn flush_store(&self) {
        if let Some(store) = &self.store {
            store.flush().await;
        }
    }

    /// Jobs sent and not answered yet, with their agents (a stopping
    /// master waits for them).
    pub fn in_flight(&self) -> Vec<(Id, String)> {
        self.pending
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .by_job
            .iter()
            .map(|(j, (a, _))| (*j, a.clone()))
            .collect()
    }

    /// The agent's session ended: nobody waits any longer for its jobs in
    /// flight, so its reactions go on. A result the agent kept in its
    /// outbox still arrives after it reconnects, and is published then.
    pub fn agent_gone(&self, agent: &str) {
        self.pending.lock().unwrap_or_else(|p| p.into_inner()).agent_gone(agent);
    }

    /// Results for `job` are taken from `agent` (until one is stored).
    pub fn expect(&self, agent: &str, job: Id) {
        self.expected.lock().unwrap_or_else(|p| p.into_inner()).insert(agent, job);
    }

    /// The result of `job` from `agent` is stored: a later copy is a
    /// duplicate, not a result to take.
    pub fn stored(&self, agent: &str, job: Id) {
        self.expected.lock().unwrap_or_else(|p| p.into_inner()).remove(agent, job);
    }

    /// An agent's result arrived: unless it is for a job not expected from
    /// that agent (refused), it is announced on the bus, handed to whoever
    /// waits, and recorded; the receiver says once the store committed it
    /// (`true`) or refused it (`false`, a refusing disk: the agent is not
    /// acknowledged and sends it again on its next session).
    pub fn take_result(&self, agent: &str, result: JobResult) -> Result<oneshot::Receiver<bool>, UnexpectedResult> {
        // Secret pillar values never go further than this: not to the bus,
        // the store, a waiting command or a log (salt/secret.rs).
        let result = halite_state::salt::secret::redact_result(agent, result);
        let job = result.job;
        {
            let mut expected = self.expected.lock().unwrap_or_else(|p| p.into_inner());
            if !expected.contains(agent, job) {
                if let Some(refused) = expected.refused(agent, tokio::time::Instant::now()) {
                    tracing::warn!(agent, %job, refused, "Refusing results for jobs not sent to this agent or already answered (logged once a minute).");
                }
                return Err(UnexpectedResult { agent: agent.to_owned(), job });
            }
        }
        let results: Vec<Value> = result
            .results
            .iter()
            .map(|r| {
                // A command's output (cmd.run's stdout in its changes, its
                // stderr in its error) stays in the store; the bus says
                // what ran and where to read the rest.
                let command = r.kind == "cmd.run";
                let changes = match &r.outcome {
                    halite_proto::Outcome::Changed { changes } | halite_proto::Outcome::WouldChange { changes } => {
                        Value::List(
                            changes
                                .iter()
                                .filter(|c| !(command && c.starts_with("stdout: ")))
                                .map(|c| Value::from(c.as_str()))
                                .collect(),
                        )
                    }
                    _ => Value::List(Vec::new()),
                };
                let error = match &r.outcome {
                    halite_proto::Outcome::Failed { error } if command => {
                        Value::from(without_output(error, result.job))
                    }
                    halite_proto::Outcome::Failed { error } => Value::from(error.as_str()),
                    _ => Value::Null,
                };
                Value::map()
                    .with("id", r.id.as_str())
                    .with("kind", r.kind.as_str())
                    .with("outcome", r.outcome.label())
                    .with("changes", changes)
                    .with("error", error)
                    .with("duration_us", i64::try_from(r.duration_us).unwrap_or(i64::MAX))
            })
            .collect();
        let failed = result.results.iter().any(|r| r.outcome.is_failed());
        tracing::info!(agent, job = %result.job, states = result.results.len(), failed, "Job returned.");
        let mut ret = Event::new(
            tag::job_ret(result.job, agent),
            agent,
            Value::map().with("results", Value::List(results)).with("failed", failed),
        );
        ret.cause_job = Some(result.job);
        // Before the return is announced: whoever sees it finds the receipt.
        let receipts = self.make_receipts(agent, &result);
        self.bus.publish(ret);
        halite_fs::hops::mark("master.result.published", result.job.0);
        // Queued before the answer, on the same queue: they share its
        // transaction (or an earlier one), so they are durable (committed,
        // or in PostgreSQL's spool) before the agent is acknowledged.
        if let Some(store) = &self.store {
            store.receipts(receipts);
        }
        let committed = match &self.store {
            Some(store) => store.answered_durably(&result.job.to_string(), agent, result.results.clone()),
            None => {
                let (done, committed) = oneshot::channel();
                let _ = done.send(true);
                committed
            }
        };
        // Expected from this agent, so a waiter for the job is this agent's.
        match self.pending.lock().unwrap_or_else(|p| p.into_inner()).remove(result.job) {
            Some((_, tx)) => {
                let _ = tx.send(result);
            }
            None => {
                tracing::debug!(agent, job = %result.job, "Result for a job nobody waits for (late, or sent before a restart).")
            }
        }
        Ok(committed)
    }
}

/// A `cmd.run` error as the bus shows it: "`CMD` exited with 4: <the end of
/// its output>" without the output, which the store keeps; an error that
/// is not the command's own (a requisite's) as it is.
fn without_output(error: &str, job: Id) -> String {
    let cut = error
        .strip_prefix('`')
        .and_then(|rest| rest.find('`').map(|end| end + 2))
        .and_then(|after| error[after..].find(": ").map(|colon| after + colon));
    match cut {
        Some(at) => format!("{} (its output: `halite-master jobs {job}`)", &error[..at]),
        None => error.to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_commands_output_is_left_out_of_its_error_on_the_bus() {
        let job = Id(7);
        let shown = |error: &str| without_output(error, job);
        assert_eq!(
            shown("`sh -c 'echo s3cret >&2; exit 4'` exited with 4: s3cret"),
            format!("`sh -c 'echo s3cret >&2; exit 4'` exited with 4 (its output: `halite-master jobs {job}`)")
        );
        assert_eq!(shown("`true` timed out and was killed"), "`true` timed out and was killed");
        assert_eq!(shown("requisite `broken` failed"), "requisite `broken` failed");
    }

    #[test]
    fn an_agent_going_away_ends_its_jobs_only() {
        let mut pending = Pending::default();
        let (a1, a2, b1) = (Id::new(), Id::new(), Id::new());
        let (tx, mut a1_rx) = oneshot::channel();
        pending.insert(a1, "web01".into(), tx);
        pending.insert(a2, "web01".into(), oneshot::channel().0);
        let (tx, mut b1_rx) = oneshot::channel();
        pending.insert(b1, "web02".into(), tx);
        assert!(pending.remove(a2).is_some());
        pending.agent_gone("web01");
        assert!(matches!(a1_rx.try_recv(), Err(oneshot::error::TryRecvError::Closed)), "its waiter is told");
        assert!(matches!(b1_rx.try_recv(), Err(oneshot::error::TryRecvError::Empty)), "the other agent's waits on");
        assert_eq!(pending.by_job.keys().collect::<Vec<_>>(), [&b1]);
        assert!(!pending.by_agent.contains_key("web01"));
        let (agent, _) = pending.remove(b1).unwrap();
        assert_eq!(agent, "web02");
        assert!(pending.by_agent.is_empty() && pending.by_job.is_empty());
    }

    #[test]
    fn results_are_expected_per_agent_bounded_and_refusals_logged_once_a_minute() {
        let mut expected = Expected::default();
        let jobs: Vec<Id> = (0..EXPECTED_PER_AGENT + 1).map(|_| Id::new()).collect();
        for job in &jobs {
            expected.insert("web01", *job);
        }
        assert!(!expected.contains("web01", jobs[0]), "the oldest is forgotten");
        assert!(expected.contains("web01", jobs[1]));
        assert!(!expected.contains("web02", jobs[1]), "per agent");
        expected.remove("web01", jobs[1]);
        assert!(!expected.contains("web01", jobs[1]));
        let start = tokio::time::Instant::now();
        let at = |secs: u64| start + Duration::from_secs(secs);
        // (agent, seconds after start, what is logged: refusals since the last line)
        let steps = [
            ("web01", 0, Some(1)),
            ("web01", 1, None),
            ("web01", 59, None),
            ("web02", 59, Some(1)),
            ("web01", 60, Some(3)),
            ("web01", 61, None),
            ("web01", 200, Some(2)),
        ];
        for (i, (agent, secs, logged)) in steps.into_iter().enumerate() {
            assert_eq!(expected.refused(agent, at(secs)), logged, "step {i}");
        }
    }
}

//! Jobs: states sent to an agent, and the wait for its result.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use halite_proto::event::tag;
use halite_proto::{Event, Id, Job, JobResult, MasterMessage, Value};
use tokio::sync::oneshot;

use crate::bus::Bus;
use crate::sessions::Sessions;

/// Jobs sent and not yet answered: the agent asked, and who waits.
type Pending = HashMap<Id, (String, oneshot::Sender<JobResult>)>;

#[derive(Debug, Clone)]
pub struct Jobs {
    sessions: Sessions,
    bus: Bus,
    pending: Arc<Mutex<Pending>>,
    timeout: Duration,
}

impl Jobs {
    pub fn new(sessions: Sessions, bus: Bus, timeout: Duration) -> Self {
        Jobs { sessions, bus, pending: Arc::default(), timeout }
    }

    /// The agent's facts (from its hello), for targeting and templates.
    pub fn facts(&self, agent: &str) -> Value {
        self.sessions.facts(agent)
    }

    /// Sends `job` to `agent` and waits for its result. Announces the job
    /// (`halite/job/<jid>/new`) and its return (`…/ret/<agent>`) on the bus.
    pub async fn run(&self, agent: &str, job: Job) -> Result<JobResult, String> {
        let jid = job.id;
        let (tx, rx) = oneshot::channel();
        self.pending.lock().unwrap_or_else(|p| p.into_inner()).insert(jid, (agent.to_owned(), tx));
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
        tracing::info!(agent, job = %jid, cause = ?job.cause_event.map(|c| c.to_string()), "Job sent.");
        let outcome = match self.sessions.send(agent, &MasterMessage::Job(job)).await {
            Err(error) => Err(error),
            Ok(()) => match tokio::time::timeout(self.timeout, rx).await {
                Ok(Ok(result)) => Ok(result),
                Ok(Err(_)) => Err(format!("job {jid}: the master is shutting down")),
                Err(_) => Err(format!("job {jid}: agent `{agent}` did not answer within {:?}", self.timeout)),
            },
        };
        self.pending.lock().unwrap_or_else(|p| p.into_inner()).remove(&jid);
        outcome
    }

    /// An agent's result arrived. Results for unknown jobs (after a master
    /// restart) are still announced on the bus.
    pub fn complete(&self, agent: &str, result: JobResult) {
        let results: Vec<Value> = result
            .results
            .iter()
            .map(|r| {
                let changes = match &r.outcome {
                    halite_proto::Outcome::Changed { changes } | halite_proto::Outcome::WouldChange { changes } => {
                        Value::List(changes.iter().map(|c| Value::from(c.as_str())).collect())
                    }
                    _ => Value::List(Vec::new()),
                };
                let error = match &r.outcome {
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
        self.bus.publish(ret);
        let waiter = self.pending.lock().unwrap_or_else(|p| p.into_inner()).remove(&result.job);
        match waiter {
            Some((expected, tx)) if expected == agent => {
                let _ = tx.send(result);
            }
            Some((expected, tx)) => {
                tracing::warn!(agent, job = %result.job, %expected, "A result from the wrong agent; ignored.");
                self.pending.lock().unwrap_or_else(|p| p.into_inner()).insert(result.job, (expected, tx));
            }
            None => tracing::debug!(agent, job = %result.job, "Result for a job nobody waits for."),
        }
    }
}

//! Operators' jobs for agents homed on another master, through PostgreSQL:
//! the transport between the master asked (`apply.rs`, `cmd.rs`) and the
//! agent's home master (`server/routed.rs` runs the job there).
//!
//! The asking master has already authorized the operator and written the
//! audit row. Per agent it inserts one `routed_jobs` row (the job id, the
//! asker, the home master, the principal, what to run) and notifies
//! `halite_routed` with `'<id> <home>'`, in one statement of its own (a
//! notifying commit takes a global lock; the batched event writes never
//! notify). The home master's listener (`listen.rs`) hands the ids to
//! [`Router::take`], which claims the rows (`taken`); the job runs exactly
//! as a local one (same job record, same results, in PostgreSQL by the
//! home master's store); [`Router::answer`] writes the agent's result into
//! the row and notifies `halite_routed_done` with `'<id> <asker>'`. The
//! asker reads the answer and deletes the row in one statement.
//!
//! What can go wrong, and what the operator sees:
//! - the home master never answers (killed, partitioned, PostgreSQL
//!   unreachable): at the deadline ([`Router::ask`]'s `waited`) the agent's
//!   result is "no answer from master X within T", and the row is deleted;
//!   the row's `deadline` keeps a master that comes back later from taking
//!   a request nobody waits for;
//! - a notification is lost (a listener reconnecting): the asker reads its
//!   row every [`POLL`] anyway, and a listener that reconnects scans for
//!   the rows addressed to it ([`Wake::Scan`]);
//! - the agent left the home master: the home master answers "not
//!   connected" for it (`routed.rs`);
//! - the asker crashed while it waited: its row stays until a listener
//!   scan finds it [`LEFT_BEHIND`] past its deadline.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use halite_state::report::AgentReport;
use serde::{Deserialize, Serialize};
use tokio::sync::mpsc;
use tokio::time::Instant;
use tokio_postgres::Client;

use crate::protocol::CmdLine;
use crate::server::store::postgres::{PgTarget, describe};

/// Requests for this master's agents: `'<id> <home master>'`.
pub const ROUTED_CHANNEL: &str = "halite_routed";
/// Answers for this master's operators: `'<id> <asking master>'`.
pub const ANSWERED_CHANNEL: &str = "halite_routed_done";

/// Wake-ups of the home side not yet handled, at most. When full, a
/// request's id is dropped (logged) and its row waits for the next scan
/// (the listener's reconnection) or its deadline: the asker then reports
/// no answer.
pub const ROUTED_QUEUE: usize = 1024;

/// How long past the job's own timeout the asker waits for the home
/// master's answer: two notifications and a few statements.
pub const ROUTE_GRACE: Duration = Duration::from_secs(5);

/// How often an asker reads its row while it waits, in case the answer's
/// notification was lost (a listener reconnecting).
pub const POLL: Duration = Duration::from_secs(2);

/// How long past its deadline a row may stay: an asker deletes its row
/// when it reads the answer or gives up, so only a crashed asker's rows
/// get this old; each master's listener scan (at every reconnection)
/// deletes them.
pub const LEFT_BEHIND: Duration = Duration::from_secs(3600);

/// What the home master is asked to run for one of its agents. The asker
/// renders nothing: the home master has the agent's facts.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Work {
    /// `apply`: these state files (none: the agent's top.yaml states).
    Apply { states: Vec<String>, test: bool },
    /// `cmd`: this program, captured.
    Cmd { argv: Vec<String> },
}

/// A routed job, as the request row carries it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Request {
    pub work: Work,
    /// The job's own timeout (the program's, for `cmd`).
    pub timeout_ms: u64,
    /// The operator's target, recorded with the job.
    pub target: String,
    /// The operator's command line, recorded as the job's cause.
    pub command_line: String,
}

/// The agent's result, as the answer row carries it: exactly the line the
/// asker would have written for a local agent.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Answer {
    Apply { report: AgentReport },
    Cmd { line: CmdLine },
}

/// A request this master took to run for one of its agents.
#[derive(Debug, Clone)]
pub struct Taken {
    pub id: String,
    /// The master the operator asked.
    pub asker: String,
    /// Who asked there (the audit log's `who`).
    pub principal: String,
    pub agent: String,
    pub request: Request,
}

/// Why the home side should look for requests.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Wake {
    /// These rows were notified.
    Ids(Vec<String>),
    /// Notifications may have been missed: every row addressed here.
    Scan,
}

#[derive(Debug, thiserror::Error)]
pub enum RouteError {
    #[error(
        "no answer from master {home} within {waited:?} (killed, partitioned from PostgreSQL, or the agent's job outlived it); `halite-master jobs` on that master shows whether the job ran"
    )]
    NoAnswer { home: String, waited: Duration },
    #[error("cannot route the job for {agent} to master {home}: the PostgreSQL store {target}: {message}")]
    Postgres { agent: String, home: String, target: String, message: String },
    #[error("routed job {id}: the PostgreSQL store {target}: {message}")]
    Row { id: String, target: String, message: String },
    #[error("routed job {id}: cannot read {what}: {source}")]
    Json { id: String, what: &'static str, source: serde_json::Error },
}

/// Both ends of routing on one master; cheap to clone.
#[derive(Clone)]
pub struct Router(Arc<Inner>);

struct Inner {
    /// This master's name among the others (its link's address).
    name: String,
    target: PgTarget,
    /// One connection for every routed statement, opened when first
    /// needed and again after it breaks.
    client: tokio::sync::Mutex<Option<Arc<Client>>>,
    /// The askers waiting here, by job id: poked when their answer is
    /// notified.
    waiters: Mutex<HashMap<String, mpsc::Sender<()>>>,
    /// To the home side (`routed.rs`).
    wakes: mpsc::Sender<Wake>,
    /// The home side's end, taken once when it starts.
    inbox: Mutex<Option<mpsc::Receiver<Wake>>>,
}

impl std::fmt::Debug for Router {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Router").field("name", &self.0.name).field("target", &self.0.target.to_string()).finish()
    }
}

/// Removes a waiter however its ask ends.
struct Waiting<'a> {
    router: &'a Router,
    id: String,
}

impl Drop for Waiting<'_> {
    fn drop(&mut self) {
        self.router.0.waiters.lock().unwrap_or_else(|p| p.into_inner()).remove(&self.id);
    }
}

impl Router {
    pub fn new(target: PgTarget, name: String) -> Router {
        let (wakes, inbox) = mpsc::channel(ROUTED_QUEUE);
        Router(Arc::new(Inner {
            name,
            target,
            client: tokio::sync::Mutex::new(None),
            waiters: Mutex::new(HashMap::new()),
            wakes,
            inbox: Mutex::new(Some(inbox)),
        }))
    }

    /// This master's name among the others.
    pub fn name(&self) -> &str {
        &self.0.name
    }

    /// The home side's wake-ups; `None` after the first call.
    pub fn take_inbox(&self) -> Option<mpsc::Receiver<Wake>> {
        self.0.inbox.lock().unwrap_or_else(|p| p.into_inner()).take()
    }

    async fn client(&self) -> Result<Arc<Client>, String> {
        let mut held = self.0.client.lock().await;
        if let Some(client) = held.as_ref().filter(|c| !c.is_closed()) {
            return Ok(client.clone());
        }
        let client = Arc::new(self.0.target.connect().await.map_err(|e| e.to_string())?);
        *held = Some(client.clone());
        Ok(client)
    }

    /// Asks master `home` to run `request` for `agent` as job `id` on
    /// behalf of `principal`, and waits at most `waited` for the answer.
    pub async fn ask(
        &self,
        home: &str,
        agent: &str,
        id: &str,
        principal: &str,
        request: &Request,
        waited: Duration,
    ) -> Result<Answer, RouteError> {
        let deadline = Instant::now() + waited;
        let failed = |message: String| RouteError::Postgres {
            agent: agent.to_owned(),
            home: home.to_owned(),
            target: self.0.target.to_string(),
            message,
        };
        // Registered before the row exists: an answer cannot come first.
        let (poke, mut poked) = mpsc::channel(1);
        self.0.waiters.lock().unwrap_or_else(|p| p.into_inner()).insert(id.to_owned(), poke);
        let _waiting = Waiting { router: self, id: id.to_owned() };
        let text = serde_json::to_string(request).map_err(|source| RouteError::Json {
            id: id.to_owned(),
            what: "the request",
            source,
        })?;
        let client = self.client().await.map_err(failed)?;
        let payload = format!("{id} {home}");
        let within_ms = waited.as_secs_f64() * 1000.0;
        client
            .execute(
                "WITH asked AS (
                     INSERT INTO routed_jobs (id, asker, home, principal, agent, request, asked, deadline)
                     VALUES ($1, $2, $3, $4, $5, $6, now(), now() + $7::float8 * interval '1 millisecond')
                     RETURNING id)
                 SELECT pg_notify($8, $9) FROM asked",
                &[&id, &self.0.name, &home, &principal, &agent, &text, &within_ms, &ROUTED_CHANNEL, &payload],
            )
            .await
            .map_err(|e| failed(describe(&e)))?;
        tracing::info!(agent, master = home, job = id, "Routed an operator's job to the agent's master.");
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                break;
            }
            tokio::select! {
                _ = poked.recv() => {}
                () = tokio::time::sleep(left.min(POLL)) => {}
            }
            match self.collect(id).await {
                Ok(Some(answer)) => return Ok(answer),
                Ok(None) => {}
                // PostgreSQL may answer again before the deadline.
                Err(error) => tracing::debug!(%error, "Cannot read a routed job's answer yet."),
            }
        }
        // Nobody waits any more: a master that comes back does not run it.
        if let Ok(client) = self.client().await {
            let _ = client.execute("DELETE FROM routed_jobs WHERE id = $1", &[&id]).await;
        }
        tracing::warn!(agent, master = home, job = id, ?waited, "No answer from the agent's master.");
        Err(RouteError::NoAnswer { home: home.to_owned(), waited })
    }

    /// The answer to job `id` if it is in, deleting its row.
    async fn collect(&self, id: &str) -> Result<Option<Answer>, RouteError> {
        let row = |message: String| RouteError::Row { id: id.to_owned(), target: self.0.target.to_string(), message };
        let client = self.client().await.map_err(row)?;
        let found = client
            .query_opt("DELETE FROM routed_jobs WHERE id = $1 AND answer IS NOT NULL RETURNING answer", &[&id])
            .await
            .map_err(|e| row(describe(&e)))?;
        let Some(found) = found else { return Ok(None) };
        let text: String = found.get(0);
        serde_json::from_str(&text).map(Some).map_err(|source| RouteError::Json {
            id: id.to_owned(),
            what: "the answer",
            source,
        })
    }

    /// The listener heard `payload` on [`ROUTED_CHANNEL`]: the ids of rows
    /// for this master's agents, handed to the home side.
    pub fn requested(&self, ids: Vec<String>) {
        if let Err(error) = self.0.wakes.try_send(Wake::Ids(ids)) {
            tracing::warn!(%error, "Too many routed jobs waiting; these wait for the next scan or time out on their master.");
        }
    }

    /// The listener heard that job `id`'s answer is in.
    pub fn answered(&self, id: &str) {
        if let Some(poke) = self.0.waiters.lock().unwrap_or_else(|p| p.into_inner()).get(id) {
            let _ = poke.try_send(());
        }
    }

    /// The listener (re)connected: notifications may have been missed.
    /// Every asker reads its row again, the home side scans for its rows.
    pub fn reconnected(&self) {
        for poke in self.0.waiters.lock().unwrap_or_else(|p| p.into_inner()).values() {
            let _ = poke.try_send(());
        }
        let _ = self.0.wakes.try_send(Wake::Scan);
    }

    /// Claims the requests `wake` names (only rows for this master, not
    /// taken, before their deadline): each is run once.
    pub async fn take(&self, wake: &Wake) -> Result<Vec<Taken>, RouteError> {
        let row = |message: String| RouteError::Row {
            id: match wake {
                Wake::Ids(ids) => ids.join(","),
                Wake::Scan => "(scan)".into(),
            },
            target: self.0.target.to_string(),
            message,
        };
        let client = self.client().await.map_err(row)?;
        let (all, ids) = match wake {
            Wake::Ids(ids) => (false, ids.clone()),
            Wake::Scan => (true, Vec::new()),
        };
        if all {
            // Rows an asker that crashed while it waited left behind.
            client
                .execute(
                    "DELETE FROM routed_jobs WHERE deadline < now() - $1::float8 * interval '1 second'",
                    &[&LEFT_BEHIND.as_secs_f64()],
                )
                .await
                .map_err(|e| row(describe(&e)))?;
        }
        let rows = client
            .query(
                "UPDATE routed_jobs SET taken = now()
                 WHERE home = $1 AND taken IS NULL AND deadline > now() AND ($2 OR id = ANY($3))
                 RETURNING id, asker, principal, agent, request",
                &[&self.0.name, &all, &ids],
            )
            .await
            .map_err(|e| row(describe(&e)))?;
        let mut taken = Vec::with_capacity(rows.len());
        for found in rows {
            let id: String = found.get(0);
            let text: String = found.get(4);
            match serde_json::from_str(&text) {
                Ok(request) => {
                    taken.push(Taken { id, asker: found.get(1), principal: found.get(2), agent: found.get(3), request })
                }
                // A newer master's request this one cannot read: its
                // asker reports no answer at the deadline.
                Err(source) => {
                    let error = RouteError::Json { id, what: "the request", source };
                    tracing::warn!(%error, "A routed job this master cannot run.");
                }
            }
        }
        Ok(taken)
    }

    /// Writes `answer` for the taken request and tells its asker.
    pub async fn answer(&self, taken: &Taken, answer: &Answer) -> Result<(), RouteError> {
        let row =
            |message: String| RouteError::Row { id: taken.id.clone(), target: self.0.target.to_string(), message };
        let text = serde_json::to_string(answer).map_err(|source| RouteError::Json {
            id: taken.id.clone(),
            what: "the answer",
            source,
        })?;
        let client = self.client().await.map_err(row)?;
        client
            .execute(
                "WITH done AS (
                     UPDATE routed_jobs SET answer = $2, answered = now() WHERE id = $1 RETURNING id, asker)
                 SELECT pg_notify($3, id || ' ' || asker) FROM done",
                &[&taken.id, &text, &ANSWERED_CHANNEL],
            )
            .await
            .map_err(|e| row(describe(&e)))?;
        Ok(())
    }

    /// Drops the connection (a statement failed on it): the next one
    /// connects again.
    pub async fn reset(&self) {
        *self.0.client.lock().await = None;
    }
}

/// A notification's payload: the row's id and the master it is for.
pub fn parse_payload(payload: &str) -> Option<(&str, &str)> {
    payload.split_once(' ').filter(|(id, master)| !id.is_empty() && !master.is_empty())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_and_answers_round_trip_as_json() {
        let requests = [
            Request {
                work: Work::Apply { states: vec!["motd".into()], test: true },
                timeout_ms: 3000,
                target: "web*".into(),
                command_line: "halite-master apply web* motd --test".into(),
            },
            Request {
                work: Work::Cmd { argv: vec!["uptime".into()] },
                timeout_ms: 1000,
                target: "L@db01".into(),
                command_line: "halite-master cmd db01 -- uptime".into(),
            },
        ];
        for request in requests {
            let text = serde_json::to_string(&request).unwrap();
            assert_eq!(serde_json::from_str::<Request>(&text).unwrap(), request, "{text}");
        }
        let answers = [
            Answer::Apply { report: AgentReport::no_answer("web02", Some("01J".into()), "not connected") },
            Answer::Cmd {
                line: CmdLine::Agent {
                    agent: "db01".into(),
                    jid: "01J".into(),
                    answered: true,
                    code: Some(0),
                    error: None,
                    stdout: "up\n".into(),
                    stderr: String::new(),
                },
            },
        ];
        for answer in answers {
            let text = serde_json::to_string(&answer).unwrap();
            assert_eq!(serde_json::from_str::<Answer>(&text).unwrap(), answer, "{text}");
        }
    }

    #[test]
    fn payloads_name_a_row_and_a_master() {
        assert_eq!(parse_payload("01J tcp://127.0.0.3:4506"), Some(("01J", "tcp://127.0.0.3:4506")));
        assert_eq!(parse_payload("01J"), None);
        assert_eq!(parse_payload(" tcp://x"), None);
    }
}

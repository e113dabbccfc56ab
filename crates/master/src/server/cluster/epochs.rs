//! A session epoch per agent (`agent_sessions`: agent, epoch, master,
//! since): the master that starts an agent's session bumps its epoch and
//! names itself, and `NOTIFY halite_sessions, '<agent>'`s. A master told
//! of an agent whose row names another master now ([`stale`]) drops its
//! own session of that agent at once, and so writes nothing more for it:
//! an agent is served by one master at a time, the last it reached.
//!
//! The bumps are batched (one transaction per batch, one notification per
//! agent in it): a fleet re-homing after a master's death costs a few
//! commits, not one per agent. Opened sessions wait in a bounded queue
//! ([`OPENED_QUEUE`]); one that finds it full is not written (logged), and
//! the agent's row stays with its previous master until its next session.
//!
//! The bump returns each agent's new epoch, which the session keeps
//! ([`Sessions::set_epoch`]): the events recorded for it carry that epoch,
//! and the store refuses them in the batch that writes them when another
//! master holds a newer one (`store/postgres.rs`, the fence). So a master
//! that missed the notification (its listening connection was down, a
//! partition) learns at its next write for the agent, and
//! [`drop_fenced`] drops the session then.

use std::collections::HashSet;

use halite_proto::event::tag;
use halite_proto::{Event, Value};
use tokio::sync::mpsc;
use tokio_postgres::Client;
use tokio_util::sync::CancellationToken;

use super::{BACKOFF, Parts, SESSIONS_CHANNEL};
use crate::server::bus::Bus;
use crate::server::sessions::Sessions;
use crate::server::store::postgres::{Fenced, PgTarget, describe};

/// Sessions opened here waiting to be written.
pub const OPENED_QUEUE: usize = 8192;
const BATCH: usize = 1024;

/// Starts the writer of this master's (`name`) session starts; returns
/// where [`crate::server::sessions::Sessions::tell_opened`] sends them.
pub fn spawn(target: PgTarget, name: String, sessions: Sessions, cancel: CancellationToken) -> mpsc::Sender<String> {
    let (opened, mut inbox) = mpsc::channel::<String>(OPENED_QUEUE);
    tokio::spawn(async move {
        let mut waiting: HashSet<String> = HashSet::new();
        let mut batch = Vec::with_capacity(BATCH);
        let mut client: Option<Client> = None;
        let mut backoff = BACKOFF.0;
        loop {
            let retry_in = (!waiting.is_empty()).then_some(backoff);
            if !super::next_batch(&mut inbox, &mut batch, BATCH, retry_in, &cancel).await {
                return;
            }
            waiting.extend(batch.drain(..));
            if client.as_ref().is_none_or(Client::is_closed) {
                client = target.connect().await.ok();
            }
            let Some(connected) = client.as_mut() else {
                backoff = super::next_backoff(backoff);
                continue;
            };
            let agents: Vec<String> = waiting.iter().cloned().collect();
            let written =
                tokio::time::timeout(crate::server::store::postgres::COMMIT_TIMEOUT, bump(connected, &name, &agents))
                    .await;
            match written {
                Ok(Ok(epochs)) => {
                    for (agent, epoch) in epochs {
                        sessions.set_epoch(&agent, epoch);
                    }
                    waiting.clear();
                    backoff = BACKOFF.0;
                }
                Ok(Err(error)) => {
                    tracing::warn!(store = %target, error = %describe(&error), agents = agents.len(), "Cannot write session epochs; retried.");
                    client = None;
                    backoff = super::next_backoff(backoff);
                }
                Err(_) => {
                    tracing::warn!(store = %target, agents = agents.len(), "PostgreSQL did not take the session epochs in time; retried.");
                    client = None;
                    backoff = super::next_backoff(backoff);
                }
            }
        }
    });
    opened
}

/// Bumps the epoch of each of `agents` to a session on `master`,
/// notifying; returns each agent's new epoch. Rows are taken in agent
/// order, the order the store's fence locks them in, so the two never
/// deadlock.
pub async fn bump(
    client: &mut Client,
    master: &str,
    agents: &[String],
) -> Result<Vec<(String, i64)>, tokio_postgres::Error> {
    let tx = client.transaction().await?;
    let rows = tx
        .query(
            "INSERT INTO agent_sessions AS s (agent, epoch, master, since)
             SELECT agent, 1, $2, now() FROM unnest($1::text[]) AS agent ORDER BY agent
             ON CONFLICT (agent) DO UPDATE SET epoch = s.epoch + 1, master = $2, since = now()
             RETURNING agent, epoch",
            &[&agents, &master],
        )
        .await?;
    tx.execute(&format!("SELECT pg_notify('{SESSIONS_CHANNEL}', agent) FROM unnest($1::text[]) AS agent"), &[&agents])
        .await?;
    tx.commit().await?;
    Ok(rows.iter().map(|row| (row.get(0), row.get(1))).collect())
}

/// Of `agents`, those whose latest session is on another master than
/// `master`, with that master and the epoch.
pub async fn stale(
    client: &Client,
    master: &str,
    agents: &[String],
) -> Result<Vec<(String, String, i64)>, tokio_postgres::Error> {
    let rows = client
        .query(
            "SELECT agent, master, epoch FROM agent_sessions WHERE agent = ANY($1) AND master <> $2",
            &[&agents, &master],
        )
        .await?;
    Ok(rows.iter().map(|row| (row.get(0), row.get(1), row.get(2))).collect())
}

/// Drops this master's sessions of the agents another master serves now.
pub async fn drop_stale(
    client: &Client,
    parts: &Parts,
    master: &str,
    agents: &[String],
) -> Result<(), tokio_postgres::Error> {
    let here: Vec<String> = agents.iter().filter(|a| parts.sessions.is_served(a)).cloned().collect();
    if here.is_empty() {
        return Ok(());
    }
    for (agent, other, epoch) in stale(client, master, &here).await? {
        if parts.sessions.close_agent(&agent).is_empty() {
            continue;
        }
        tracing::warn!(agent = %agent, master = %other, epoch, "The agent's session moved to another master; this one is stale and dropped.");
        parts.bus.publish(Event::new(
            tag::agent(&agent, "disconnected"),
            agent.as_str(),
            Value::map().with("reason", "moved").with("master", other.as_str()).with("epoch", epoch),
        ));
    }
    Ok(())
}

/// Drops this master's session of an agent whose rows the store's fence
/// refused, unless the session here has moved on since (a newer epoch of
/// its own: the agent came back): the agent reconnects to the master it
/// ranks first and resends what was not acknowledged.
pub fn drop_fenced(sessions: &Sessions, bus: &Bus, fenced: &Fenced) -> bool {
    if sessions.epoch(&fenced.agent) != Some(fenced.epoch) || sessions.close_agent(&fenced.agent).is_empty() {
        return false;
    }
    tracing::warn!(agent = %fenced.agent, master = %fenced.holder, epoch = fenced.current, "A write found the agent's session moved to another master; this one is stale and dropped.");
    bus.publish(Event::new(
        tag::agent(&fenced.agent, "disconnected"),
        fenced.agent.as_str(),
        Value::map()
            .with("reason", "moved")
            .with("master", fenced.holder.as_str())
            .with("epoch", fenced.current)
            .with("noticed", "write"),
    ));
    true
}

//! Acknowledgements of agents' events, sent once the events are published
//! and recorded: handed to the publisher's socket ([`Bus::handed_off`])
//! and logged as seen ([`Sessions::log_seen`]), in that order.
//!
//! The link loop publishes a message's events and queues its ack here
//! ([`Acker::queue`]); one task takes every ack queued meanwhile, waits
//! for one hand-off that covers all their events (queued on the bus before
//! the acks were queued here), logs their ids in one write per agent, and
//! sends the acks, in order. The loop never waits for the publisher, and
//! one round trip to it covers many messages: measured in a debug build
//! with a hand-driven agent, ingest stays where it was when the loop acked
//! at once (about 20,000 events a second both in batches of 256 and one
//! message per event, against 17,000 to 26,000 before, on a loaded 2-core
//! VM); a task per ack cost two thirds of the one-by-one rate. A crash anywhere before an ack leaves
//! the event in the agent's outbox: it is sent again, and published again
//! unless its id was logged (then it was handed off before).
//!
//! With several masters each recorded event carries this master's name and
//! its session's epoch for the agent, stamped here per batch (one lock per
//! agent, not per event); the store's fence refuses the rows of a session
//! another master has taken since, and those are not acknowledged. A task
//! beside the acks drops such sessions as the store reports them
//! (`cluster/epochs.rs` `drop_fenced`), for batches and for a drained
//! spool alike.

use std::collections::{HashMap, HashSet};

use bytes::Bytes;
use halite_proto::{Id, MasterMessage};
use tokio::sync::mpsc;

use crate::server::bus::Bus;
use crate::server::sessions::Sessions;
use crate::server::store::Store;
use crate::server::store::postgres::Recorded;
use crate::server::store::spool::EventRow;

/// Acks waiting for their hand-off. When full the link loop waits for room
/// (as it does for the publisher's queue): agents keep the rest in their
/// outboxes.
pub const ACK_QUEUE: usize = 4096;
/// Acks handled per hand-off at most.
const ACK_BATCH: usize = 1024;

/// One message's acknowledgement, and the ids it published.
#[derive(Debug)]
pub struct PendingAck {
    pub peer: Bytes,
    pub agent: String,
    /// Fresh ids the message published, logged as seen before the ack.
    pub published: Vec<Id>,
    /// The events published, when the store records them (PostgreSQL):
    /// durable before the ack. Empty with SQLite.
    pub recorded: Vec<EventRow>,
    pub ack: MasterMessage,
}

/// The handle the link loop queues acks through.
#[derive(Debug, Clone)]
pub struct Acker {
    queue: mpsc::Sender<PendingAck>,
}

impl Acker {
    /// Starts the task that sends acks after their hand-off.
    pub fn spawn(bus: Bus, sessions: Sessions) -> Acker {
        Acker::spawn_recording(bus, sessions, None)
    }

    /// As [`Acker::spawn`], and when `store` records events (PostgreSQL),
    /// each batch's events are durable there (or in its spool) before
    /// their acks go: one store round trip per batch, never per event.
    /// Acks whose events the store refused are not sent (the agent keeps
    /// them and sends them again).
    pub fn spawn_recording(bus: Bus, sessions: Sessions, store: Option<Store>) -> Acker {
        let (queue, mut inbox) = mpsc::channel::<PendingAck>(ACK_QUEUE);
        if let Some(mut fenced) = store.as_ref().and_then(Store::take_fenced) {
            let (sessions, bus) = (sessions.clone(), bus.clone());
            tokio::spawn(async move {
                while let Some(stale) = fenced.recv().await {
                    crate::server::cluster::epochs::drop_fenced(&sessions, &bus, &stale);
                }
            });
        }
        tokio::spawn(async move {
            let mut batch = Vec::with_capacity(ACK_BATCH);
            while inbox.recv_many(&mut batch, ACK_BATCH).await > 0 {
                if batch.iter().any(|pending| !pending.published.is_empty()) {
                    bus.handed_off().await;
                }
                let mut fences: HashMap<String, (Option<String>, Option<i64>)> = HashMap::new();
                let recorded: Vec<EventRow> = batch
                    .iter_mut()
                    .flat_map(|p| {
                        let (master, epoch) =
                            fences.entry(p.agent.clone()).or_insert_with(|| sessions.fence(&p.agent)).clone();
                        std::mem::take(&mut p.recorded).into_iter().map(move |row| EventRow {
                            master: master.clone(),
                            epoch,
                            ..row
                        })
                    })
                    .collect();
                let recorded = match &store {
                    Some(store) if !recorded.is_empty() => store.record_events(recorded).await,
                    _ => Recorded { durable: true, fenced: Vec::new() },
                };
                if !recorded.fenced.is_empty() {
                    // Not recorded: not acknowledged. The session is
                    // dropped (the task above), and the agent resends them
                    // to the master it reaches next.
                    let fenced: HashSet<&str> = recorded.fenced.iter().map(|f| f.agent.as_str()).collect();
                    batch.retain(|pending| {
                        let keep = !fenced.contains(pending.agent.as_str());
                        if !keep {
                            sessions.forget(&pending.agent, &pending.published);
                        }
                        keep
                    });
                }
                if !recorded.durable {
                    tracing::warn!(
                        messages = batch.len(),
                        "The store refused these events; not acknowledged (their agents send them again)."
                    );
                    // Their resend is taken again, to be recorded.
                    for pending in batch.drain(..) {
                        sessions.forget(&pending.agent, &pending.published);
                    }
                    continue;
                }
                let mut by_agent: HashMap<&str, Vec<Id>> = HashMap::new();
                for pending in &batch {
                    by_agent.entry(&pending.agent).or_default().extend(&pending.published);
                }
                // A short write to the page cache per agent, done in place
                // (the runtime moves other tasks off this thread meanwhile).
                tokio::task::block_in_place(|| {
                    for (agent, ids) in &by_agent {
                        sessions.log_seen(agent, ids);
                    }
                });
                // In order, as the link loop sent them before. A send never
                // waits: an agent that does not read fills its queue and the
                // transport disconnects it; it resends what it kept.
                for pending in batch.drain(..) {
                    crate::server::metrics::get().events_acked(pending.published.len());
                    if let Err(error) = sessions.send_to_peer(pending.peer, &pending.ack).await {
                        tracing::debug!(agent = %pending.agent, %error, "Cannot acknowledge; the agent sends it again.");
                    }
                }
            }
        });
        Acker { queue }
    }

    /// Queues an ack to send once what was published before is handed off.
    pub async fn queue(&self, pending: PendingAck) {
        // An error only says the task has stopped (shutdown): no ack, the
        // agent sends again to the next master.
        let _ = self.queue.send(pending).await;
    }
}

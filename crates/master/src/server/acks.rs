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

use std::collections::HashMap;

use bytes::Bytes;
use halite_proto::{Id, MasterMessage};
use tokio::sync::mpsc;

use crate::server::bus::Bus;
use crate::server::sessions::Sessions;

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
        let (queue, mut inbox) = mpsc::channel::<PendingAck>(ACK_QUEUE);
        tokio::spawn(async move {
            let mut batch = Vec::with_capacity(ACK_BATCH);
            while inbox.recv_many(&mut batch, ACK_BATCH).await > 0 {
                if batch.iter().any(|pending| !pending.published.is_empty()) {
                    bus.handed_off().await;
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

//! The event bus: every event the master handles or raises goes through
//! [`Bus::publish`], which feeds the outside publisher (ZeroMQ PUB, two
//! frames `[tag, json]`, SPEC §8). In-process subscribers (the `events`
//! command) will hang off this same function.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use halite_proto::Event;
use tokio::sync::mpsc;
use zeromq::{PubSocket, Socket, SocketSend, ZmqMessage};

/// Events waiting for the outside publisher. When full, events are not
/// published outside (counted, logged); PUB is best effort by design.
pub const PUBLISHER_QUEUE: usize = 65_536;

#[derive(Debug, Clone)]
pub struct Bus {
    outside: mpsc::Sender<Arc<Event>>,
    dropped: Arc<AtomicU64>,
}

impl Bus {
    /// Binds the outside publisher and returns the bus and the endpoint
    /// actually bound (port 0 resolved).
    pub async fn bind(endpoint: &str) -> anyhow::Result<(Bus, String)> {
        let mut socket = PubSocket::new();
        let bound = socket
            .bind(endpoint)
            .await
            .map_err(|e| anyhow::anyhow!("cannot bind the event publisher on {endpoint}: {e}"))?;
        let (outside, mut queue) = mpsc::channel::<Arc<Event>>(PUBLISHER_QUEUE);
        tokio::spawn(async move {
            while let Some(event) = queue.recv().await {
                let mut message = ZmqMessage::from(event.tag.clone());
                message.push_back(event.to_json().to_string().into());
                if let Err(error) = socket.send(message).await {
                    tracing::warn!(%error, "Event publisher failed to send.");
                }
            }
        });
        Ok((Bus { outside, dropped: Arc::default() }, bound.to_string()))
    }

    pub fn publish(&self, event: Event) -> Arc<Event> {
        let event = Arc::new(event);
        tracing::debug!(tag = %event.tag, agent = %event.agent, id = %event.id, "Event.");
        if self.outside.try_send(event.clone()).is_err() {
            let dropped = self.dropped.fetch_add(1, Ordering::Relaxed) + 1;
            if dropped.is_power_of_two() {
                tracing::warn!(dropped, "Outside publisher queue full; events not published outside.");
            }
        }
        event
    }
}

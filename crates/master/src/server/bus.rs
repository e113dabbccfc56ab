//! The event bus: every event the master handles or raises goes through
//! [`Bus::publish`], which feeds the outside publisher (ZeroMQ PUB, two
//! frames `[tag, json]`, SPEC §8), the in-process tail behind
//! `halite-master events` (a bounded broadcast: a slow reader is told how
//! many events it missed, the bus never waits for it), and the agents
//! ledger behind `halite-master agents`.
//!
//! The publisher has no authentication, so by default it is a Unix socket
//! in the data dir that only the master's user may connect to
//! (`ipc://<data_dir>/events.sock`, mode 0600); `publish: tcp://…` in
//! master.yaml is for tools on other hosts, with a warning at start when it
//! is bound beyond loopback. Command output and response bodies never ride
//! on it (they are in the job store).

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use halite_proto::Event;
use std::time::Duration;
use tokio::sync::{broadcast, mpsc, oneshot};

use zeromq::{PubSocket, Socket, SocketOptions, SocketSend, ZmqMessage};

/// Events waiting for the outside publisher. When full, agents' events wait
/// for room ([`Bus::publish_waiting`]: the link loop slows down, agents
/// keep the rest in their outboxes), and the master's own events are not
/// published outside (counted, logged). The publisher never waits on its
/// subscribers (the PUB socket drops for a slow one), so room comes as
/// fast as it serialises.
pub const PUBLISHER_QUEUE: usize = 65_536;
/// Events the publisher takes off its queue at a time.
const PUBLISHER_BATCH: usize = 256;

/// What a subscriber may send the publisher: subscriptions (one frame, a
/// flag byte and a tag prefix) and the ZMTP handshake. A peer declaring a
/// larger frame or message is disconnected at the frame's header.
pub const PUBLISHER_MAX_FRAME: usize = 4096;
/// Frames in one message a subscriber sends (a subscription is one).
pub const PUBLISHER_MAX_FRAMES: usize = 16;
/// Events queued for one subscriber; a subscriber that falls further behind
/// loses events (PUB never waits on a subscriber).
pub const PUBLISHER_SUBSCRIBER_QUEUE: usize = 16_384;
/// Bytes of events queued for one subscriber (its high-water mark): an
/// event that would take a subscriber over it is not sent to that
/// subscriber, so one that never reads holds at most this much (and the
/// event being written to it).
pub const PUBLISHER_SUBSCRIBER_BYTES: usize = 32 << 20;

/// Events kept for each `events` tail. A tail that falls further behind
/// loses the oldest and is told how many (`broadcast`'s lag); publishing
/// never waits for a tail.
pub const TAIL_QUEUE: usize = 4096;

/// How long a hand-off waits for the slowest subscriber's socket to take
/// what was published before it; after that the acks go out anyway (what
/// that subscriber had not taken is lost to it in a crash, as it is when
/// its queue fills).
pub const HAND_OFF_GRACE: Duration = Duration::from_secs(1);

/// What the outside publisher's queue carries: events, and marks that
/// say when everything queued before them has been written to the
/// subscribers' sockets.
#[derive(Debug)]
enum Outgoing {
    Event(Arc<Event>),
    /// Answered once every event queued before it was written to each
    /// subscriber's socket, or [`HAND_OFF_GRACE`] passed ([`Bus::handed_off`]).
    Mark(oneshot::Sender<()>),
}

#[derive(Debug, Clone)]
pub struct Bus {
    outside: mpsc::Sender<Outgoing>,
    dropped: Arc<AtomicU64>,
    /// Live tails (`halite-master events`); sending with none is a no-op.
    tail: broadcast::Sender<Arc<Event>>,
    /// What `halite-master agents` knows from the events it saw.
    ledger: Arc<Mutex<crate::server::ledger::Ledger>>,
}

impl Bus {
    /// Binds the outside publisher and returns the bus and the endpoint
    /// actually bound (port 0 resolved). A connection that has not completed
    /// the ZMTP handshake within `handshake_timeout` is dropped.
    pub async fn bind(endpoint: &str, handshake_timeout: Duration) -> anyhow::Result<(Bus, String)> {
        let mut options = SocketOptions::default();
        options
            .max_frame_size(PUBLISHER_MAX_FRAME)
            .max_message_size(PUBLISHER_MAX_FRAME)
            .max_message_frames(PUBLISHER_MAX_FRAMES)
            .handshake_timeout(handshake_timeout)
            .send_queue_capacity(PUBLISHER_SUBSCRIBER_QUEUE)
            .send_queue_bytes(PUBLISHER_SUBSCRIBER_BYTES);
        let mut socket = PubSocket::with_options(options);
        let path = endpoint.strip_prefix("ipc://").map(std::path::Path::new);
        if let Some(path) = path {
            // A socket left by a master that crashed; the data dir is ours.
            let _ = tokio::fs::remove_file(path).await;
        }
        let bound = socket
            .bind(endpoint)
            .await
            .map_err(|e| anyhow::anyhow!("cannot bind the event publisher on {endpoint}: {e}"))?;
        if let Some(path) = path {
            use std::os::unix::fs::PermissionsExt as _;
            tokio::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))
                .await
                .map_err(|e| anyhow::anyhow!("cannot make the event publisher {} owner-only: {e}", path.display()))?;
        }
        if beyond_loopback(endpoint) {
            tracing::warn!(publish = %endpoint, "The event publisher is reachable beyond this host and has no authentication: whoever connects reads every event. Bind it to 127.0.0.1, or leave `publish` unset for the owner-only socket in the data dir.");
        }
        let (outside, mut queue) = mpsc::channel::<Outgoing>(PUBLISHER_QUEUE);
        tokio::spawn(async move {
            let mut batch = Vec::with_capacity(PUBLISHER_BATCH);
            while queue.recv_many(&mut batch, PUBLISHER_BATCH).await > 0 {
                for item in batch.drain(..) {
                    let event = match item {
                        Outgoing::Event(event) => event,
                        // In queue order: what came before is written to
                        // every subscriber's socket (in the kernel, where a
                        // kill of this process cannot lose it) before the
                        // mark is answered; a subscriber that does not keep
                        // up within `HAND_OFF_GRACE` holds no one back.
                        Outgoing::Mark(done) => {
                            let point = socket.flush_point();
                            tokio::spawn(async move {
                                if !point.wait(HAND_OFF_GRACE).await {
                                    tracing::debug!("A subscriber is behind; acknowledging without it.");
                                }
                                let _ = done.send(());
                            });
                            continue;
                        }
                    };
                    let mut message = ZmqMessage::from(event.tag.clone());
                    message.push_back(event.json_bytes().into());
                    if let Err(error) = socket.send(message).await {
                        tracing::warn!(%error, "Event publisher failed to send.");
                    }
                }
            }
        });
        let (tail, _) = broadcast::channel(TAIL_QUEUE);
        Ok((Bus { outside, dropped: Arc::default(), tail, ledger: Arc::default() }, bound.to_string()))
    }

    /// A live tail of every event published from now on.
    pub fn subscribe(&self) -> broadcast::Receiver<Arc<Event>> {
        self.tail.subscribe()
    }

    pub fn ledger(&self) -> MutexGuard<'_, crate::server::ledger::Ledger> {
        self.ledger.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Publishes an event the master raised. It never waits: when the
    /// outside publisher's queue is full the event is not published outside
    /// (counted, logged).
    pub fn publish(&self, event: Event) -> Arc<Event> {
        let event = self.observe(event);
        if self.outside.try_send(Outgoing::Event(event.clone())).is_err() {
            let dropped = self.dropped.fetch_add(1, Ordering::Relaxed) + 1;
            if dropped.is_power_of_two() {
                tracing::warn!(dropped, "Outside publisher queue full; events not published outside.");
            }
        }
        event
    }

    /// Publishes an agent's event, waiting for room in the outside
    /// publisher's queue: an agent's events are slowed down, not dropped.
    pub async fn publish_waiting(&self, event: Event) -> Arc<Event> {
        let event = self.observe(event);
        // An error only says the publisher has stopped (shutdown).
        let _ = self.outside.send(Outgoing::Event(event.clone())).await;
        event
    }

    /// Returns once every event queued before the call has been handed to
    /// the PUB socket: the hand-off after which an agent's events are
    /// recorded as seen and acknowledged (`server/link.rs`). Returns at
    /// once when the publisher has stopped (shutdown).
    pub async fn handed_off(&self) {
        let (done, wait) = oneshot::channel();
        if self.outside.send(Outgoing::Mark(done)).await.is_ok() {
            let _ = wait.await;
        }
    }

    /// What every published event goes through: the ledger and the tails.
    fn observe(&self, event: Event) -> Arc<Event> {
        let event = Arc::new(event);
        tracing::debug!(tag = %event.tag, agent = %event.agent, id = %event.id, "Event.");
        self.ledger().observe(&event);
        crate::server::metrics::get().event_out(&event.tag);
        // An error only says that nobody tails the bus right now.
        let _ = self.tail.send(event.clone());
        event
    }
}

/// A TCP endpoint on an address other hosts may reach (not loopback).
fn beyond_loopback(endpoint: &str) -> bool {
    let Some(address) = endpoint.strip_prefix("tcp://") else { return false };
    let host = address.rsplit_once(':').map_or(address, |(host, _)| host);
    let host = host.trim_start_matches('[').trim_end_matches(']');
    host.parse::<std::net::IpAddr>().map_or(true, |ip| !ip.is_loopback())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_publisher_beyond_loopback_is_told_apart() {
        for (endpoint, beyond) in [
            ("tcp://127.0.0.1:4511", false),
            ("tcp://[::1]:4511", false),
            ("tcp://0.0.0.0:4511", true),
            ("tcp://192.0.2.7:4511", true),
            ("tcp://*:4511", true),
            ("ipc:///var/lib/halite/master/events.sock", false),
        ] {
            assert_eq!(beyond_loopback(endpoint), beyond, "{endpoint}");
        }
    }

    /// The default publisher: a socket in the data dir, owner-only, that a
    /// SUB socket reads events from.
    #[tokio::test]
    async fn the_default_publisher_is_an_owner_only_socket() {
        use std::os::unix::fs::PermissionsExt as _;
        let dir = tempfile::tempdir().unwrap();
        let config = crate::config::MasterConfig { data_dir: dir.path().to_path_buf(), ..Default::default() };
        let endpoint = config.publish_endpoint();
        // A stale socket from a crashed master does not stop the bind.
        std::fs::write(dir.path().join("events.sock"), "").unwrap();
        let (bus, bound) = Bus::bind(&endpoint, halite_link::transport::HANDSHAKE_TIMEOUT).await.unwrap();
        assert!(bound.starts_with("ipc://"), "{bound}");
        let mode = std::fs::metadata(dir.path().join("events.sock")).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
        let mut subscriber = crate::client::Subscriber::connect(&bound, "halite/").await.unwrap();
        // A subscription reaches the publisher a moment after connecting:
        // publish until one arrives.
        let received = async {
            loop {
                bus.publish(halite_proto::Event::new("halite/test/x", "a", halite_proto::Value::map()));
                if let Ok(event) = tokio::time::timeout(std::time::Duration::from_millis(50), subscriber.next()).await {
                    return event.unwrap();
                }
            }
        };
        let event = tokio::time::timeout(std::time::Duration::from_secs(10), received).await.unwrap();
        assert_eq!(event.tag, "halite/test/x");
    }
}

//! Open and decode off the link loop: a bounded pool of decode workers,
//! one per core, each owning the openers of the peers hashed to it.
//!
//! The link loop (`link.rs`) only parses a message's envelope and hands
//! the rest here: a Hello3 (one X25519, then the hello decoded) or a sealed
//! message (ChaCha20-Poly1305, then postcard). A peer always goes to the
//! same worker ([`Workers::lane_of`]) and a worker handles its inbox in
//! order and sends its outcomes back on one queue in that order, so what a
//! peer sent comes back to the loop in the order it was sent: its
//! handshake's outcome (the session opens on the loop) before its first
//! event. Peers on different workers are opened in parallel, on as many
//! cores as the runtime has.
//!
//! Why the opener lives here and not on the loop: a session's opener keeps
//! a nonce that advances with every message, so only one thread may use
//! it, and the loop would otherwise have to lend it out and wait for it.

use std::collections::HashMap;
use std::hash::{BuildHasher, BuildHasherDefault, DefaultHasher};

use bytes::Bytes;
use halite_link::envelope::Envelope;
use halite_link::{LinkError, Opener, PublicKey, Responder, Sealer};
use halite_proto::AgentMessage;
use tokio::sync::mpsc;
use zeromq::ZmqMessage;

/// Messages waiting for one decode worker. When full the link loop waits
/// for room, and meanwhile handles what the workers have decoded (so a
/// worker waiting to hand back never stalls it); the agents' messages stay
/// in the transport's per-peer queues.
pub const WORKER_QUEUE: usize = 32;
/// Decoded messages waiting for the link loop, from all workers. When full
/// a worker waits for the loop. Small: a decoded batch of 256 events holds
/// several times its wire size, and deeper queues only held more of them
/// (ingest from one agent, debug build: peak RSS 84 to 111 MiB with 128 and
/// 256 here, against 42 to 68 before the workers).
pub const DECODED_QUEUE: usize = 64;
/// Decode workers at most, whatever the core count: beyond it the link
/// loop, not decoding, is the limit.
pub const MAX_WORKERS: usize = 8;

/// Why a message from an established session was dropped unread.
#[derive(Debug, thiserror::Error)]
pub enum DecodeError {
    /// The sealed chunks do not open with the peer's session (tampered,
    /// replayed or out of order).
    #[error("the message does not open: {0}")]
    Open(LinkError),
    /// It opened, but is not a message of the protocol.
    #[error("the message does not decode: {0}")]
    Decode(halite_proto::DecodeError),
    /// Not a sealed message (the loop sent it here by mistake).
    #[error("not a sealed message")]
    NotSealed,
}

/// Work for one decode worker, in the peer's order.
pub enum Work {
    /// The peer's Hello3: finish the handshake with its responder.
    Finish { peer: Bytes, responder: Box<Responder>, last: Bytes },
    /// A sealed message (the whole ZeroMQ message, identity frame first),
    /// and when it came off the socket (hop timing, `halite_fs::hops`).
    Open { peer: Bytes, message: ZmqMessage, received: u64 },
    /// The peer is gone: drop its opener.
    Forget { peer: Bytes },
}

/// A finished handshake, without the opener (the worker keeps it).
pub struct Handshake {
    pub sealer: Sealer,
    /// The agent's static key, proven by the handshake.
    pub remote: PublicKey,
    /// The hello it carried, decoded.
    pub hello: Result<AgentMessage, halite_proto::DecodeError>,
}

/// What a worker hands back to the loop.
pub enum Outcome {
    /// A Hello3 was read: the session may open (the loop decides).
    Finished { peer: Bytes, handshake: Result<Handshake, LinkError> },
    /// A sealed message, opened and decoded.
    Message { peer: Bytes, message: Result<AgentMessage, DecodeError>, received: u64 },
    /// A sealed message from a peer without an opener here (its handshake
    /// failed, or it never made one): dropped unread.
    NoSession { peer: Bytes },
}

/// The loop's handle on the pool: a queue per worker and the one queue
/// back.
pub struct Workers {
    inboxes: Vec<mpsc::Sender<Work>>,
    /// Outcomes from every worker, each worker's in its order.
    pub decoded: mpsc::Receiver<Outcome>,
}

/// How many workers: one per core the runtime may use, within 1 and
/// [`MAX_WORKERS`].
pub fn worker_count() -> usize {
    std::thread::available_parallelism().map_or(1, |n| n.get()).clamp(1, MAX_WORKERS)
}

impl Workers {
    /// Starts `count` workers as tasks on the runtime; they end when this
    /// handle is dropped.
    pub fn spawn(count: usize) -> Workers {
        let (out, decoded) = mpsc::channel(DECODED_QUEUE);
        let inboxes = (0..count.max(1))
            .map(|_| {
                let (inbox, work) = mpsc::channel(WORKER_QUEUE);
                tokio::spawn(run(work, out.clone()));
                inbox
            })
            .collect();
        Workers { inboxes, decoded }
    }

    /// The worker a peer's messages go to: always the same one, so they
    /// are handled in order.
    pub fn lane_of(&self, peer: &Bytes) -> usize {
        let hash = BuildHasherDefault::<DefaultHasher>::default().hash_one(peer);
        (hash % self.inboxes.len() as u64) as usize
    }

    /// The queue into the worker for `peer`.
    pub fn inbox(&self, peer: &Bytes) -> &mpsc::Sender<Work> {
        &self.inboxes[self.lane_of(peer)]
    }
}

impl Work {
    pub fn peer(&self) -> &Bytes {
        match self {
            Work::Finish { peer, .. } | Work::Open { peer, .. } | Work::Forget { peer } => peer,
        }
    }
}

/// One worker: its peers' openers, and its inbox in order.
async fn run(mut inbox: mpsc::Receiver<Work>, out: mpsc::Sender<Outcome>) {
    let mut openers: HashMap<Bytes, Opener> = HashMap::new();
    while let Some(work) = inbox.recv().await {
        let outcome = match work {
            Work::Forget { peer } => {
                openers.remove(&peer);
                continue;
            }
            Work::Finish { peer, responder, last } => {
                let handshake = responder.finish(&last).map(|accepted| {
                    openers.insert(peer.clone(), accepted.opener);
                    Handshake {
                        sealer: accepted.sealer,
                        remote: accepted.remote,
                        hello: halite_proto::decode::<AgentMessage>(&accepted.payload),
                    }
                });
                Outcome::Finished { peer, handshake }
            }
            Work::Open { peer, message, received } => match openers.get_mut(&peer) {
                None => Outcome::NoSession { peer },
                Some(opener) => {
                    let message = open(opener, &message);
                    Outcome::Message { peer, message, received }
                }
            },
        };
        if out.send(outcome).await.is_err() {
            return;
        }
    }
}

/// Opens and decodes one sealed message (identity frame first).
fn open(opener: &mut Opener, message: &ZmqMessage) -> Result<AgentMessage, DecodeError> {
    let frames: Vec<&[u8]> = message.iter().skip(1).map(|f| f.as_ref()).collect();
    let Ok(Envelope::Sealed(chunks)) = Envelope::parse(&frames) else {
        return Err(DecodeError::NotSealed);
    };
    let plain = opener.open(chunks).map_err(DecodeError::Open)?;
    halite_proto::decode::<AgentMessage>(&plain).map_err(DecodeError::Decode)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_peer_always_goes_to_the_same_worker() {
        let workers =
            Workers { inboxes: (0..4).map(|_| mpsc::channel(1).0).collect(), decoded: mpsc::channel::<Outcome>(1).1 };
        let mut used = std::collections::HashSet::new();
        for n in 0..64u32 {
            let peer = Bytes::from(n.to_be_bytes().to_vec());
            let lane = workers.lane_of(&peer);
            assert!(lane < 4);
            assert_eq!(workers.lane_of(&peer.clone()), lane, "the same peer, the same worker");
            used.insert(lane);
        }
        assert_eq!(used.len(), 4, "peers spread over every worker");
    }
}

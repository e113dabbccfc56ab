//! The master's end of the link: one ZeroMQ ROUTER for every agent.
//!
//! Before a peer has a session only the Noise handshake is handled;
//! anything else it sends is dropped unread (SPEC §5: the pre-session
//! allow-list). After the handshake the agent's key decides: an accepted
//! key's messages reach the bus and the reactors; an unaccepted key's get
//! no further than this file (only pings are answered). Unreadable input is
//! counted and dropped; it never stops the loop.
//!
//! Nothing here waits on one peer: every send is the transport's
//! `try_send` (a peer whose queue is full is disconnected, vendor/zeromq
//! PATCHES.md 4), and the answer to a Hello1 (two Diffie-Hellman, what an
//! unauthenticated peer gets for 35 bytes) is computed on a small pool of
//! blocking threads ([`HANDSHAKE_WORKERS`]), its results coming back to
//! this loop, one handshake per connection and at most
//! [`PER_SOURCE_HANDSHAKES`] per source address at a time. The Hello3 (one
//! Diffie-Hellman) and every sealed message are opened and decoded on the
//! decode workers (`decode.rs`), one per core, a peer always on the same
//! one; their outcomes come back to this loop in each peer's order, so a
//! session exists before the agent's next message is handled.

use std::collections::{HashSet, VecDeque};
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use futures_util::StreamExt;
use halite_proto::event::tag;
use std::collections::HashMap;

use halite_link::Responder;
use halite_link::envelope::{self, Envelope};
use halite_proto::{AgentMessage, Event, MasterMessage, Value, Welcome};
use indexmap::IndexMap;
use tokio::sync::{Semaphore, mpsc};
use tokio_util::sync::CancellationToken;
use zeromq::{RouterRecvHalf, RouterSocket, Socket, SocketEvent, SocketRecv, ZmqMessage};

use crate::server::keys::KeyStatus;
use crate::server::store::prime::{PrimeError, Primer};

use crate::server::context::Master;
use crate::server::decode::{self, Handshake, Outcome, Work, Workers};

/// The listen backlog: the `zeromq` crate's own bind uses 1024, too few for
/// a fleet reconnecting at once after a master restart (SPEC §7).
pub const LISTEN_BACKLOG: i32 = 16_384;

/// Binds the ROUTER on `endpoint` (`tcp://host:port`) with our own
/// listener; returns the socket and the endpoint actually bound. The
/// socket enforces the link's transport limits
/// ([`halite_link::transport`]) on every peer before it is authenticated,
/// and drops a peer that has not completed the ZMTP handshake within
/// `handshake_timeout`.
pub async fn bind(endpoint: &str, handshake_timeout: Duration) -> anyhow::Result<(RouterSocket, String)> {
    let address: SocketAddr = endpoint
        .strip_prefix("tcp://")
        .and_then(|a| a.parse().ok())
        .ok_or_else(|| anyhow::anyhow!("`listen: {endpoint}` is not of the form tcp://IP:PORT"))?;
    let socket = socket2::Socket::new(socket2::Domain::for_address(address), socket2::Type::STREAM, None)?;
    socket.set_reuse_address(true)?;
    socket.bind(&address.into()).map_err(|e| anyhow::anyhow!("cannot listen on {endpoint}: {e}"))?;
    socket.listen(LISTEN_BACKLOG)?;
    socket.set_nonblocking(true)?;
    let listener: std::net::TcpListener = socket.into();
    let mut router = RouterSocket::with_options(halite_link::transport::socket_options(handshake_timeout));
    let bound =
        router.bind_listener(listener).await.map_err(|e| anyhow::anyhow!("cannot listen on {endpoint}: {e}"))?;
    Ok((router, bound.to_string()))
}

/// Handshakes in progress at most. A flood of unauthenticated connections
/// evicts the oldest half-open handshake, never an established session.
pub const MAX_HANDSHAKES: usize = 1024;
/// Sessions whose key is not accepted, at most; further ones are refused
/// until an operator decides or they go away.
pub const MAX_UNACCEPTED: usize = 4096;

/// Threads doing handshake crypto (X25519) at once: the loop hands each
/// Hello1 to one and goes on serving established sessions.
pub const HANDSHAKE_WORKERS: usize = 2;
/// Hello1s waiting for a worker; beyond it the oldest waiting is dropped
/// (its connection closed; a real agent reconnects).
pub const HANDSHAKE_BACKLOG: usize = 1024;
/// Messages kept for a peer while its Hello1 is in a worker (a real agent
/// sends nothing until it is answered); more close the connection.
pub const HELD_PER_PEER: usize = 64;
/// The most values (every element at any depth) and bytes of text in the
/// facts of an agent's hello; a hello over either is refused.
pub const MAX_FACTS_VALUES: usize = 1024;
pub const MAX_FACTS_BYTES: usize = 16 << 10;

pub use crate::server::limits::{Limits, MAX_EVENT_BYTES, PER_SOURCE_HANDSHAKES};

/// What a handshake worker hands back to the loop: the answer to a Hello1.
struct Crypto {
    peer: Bytes,
    answer: Result<(Responder, Vec<u8>), halite_link::LinkError>,
}

/// The handshake pool: permits for [`HANDSHAKE_WORKERS`] threads, Hello1s
/// waiting for one, and the channel results come back on.
struct Pool {
    permits: Arc<Semaphore>,
    waiting: VecDeque<(Bytes, Vec<u8>)>,
    done: mpsc::Sender<Crypto>,
}

/// What the link loop keeps per peer that is not shared with senders.
#[derive(Default)]
struct Peers {
    /// Half-open handshakes, oldest first, with when each was answered.
    handshakes: IndexMap<Bytes, (Responder, tokio::time::Instant)>,
    /// Connections that have begun their one handshake.
    started: HashSet<Bytes>,
    /// Handshakes per source address (waiting, in a worker, half-open).
    /// `None` counts the connections whose address the monitor has not
    /// reported yet: they share one budget, so none goes uncounted.
    per_source: HashMap<Option<IpAddr>, usize>,
    /// The source address a connection's handshake is counted against.
    source_of: HashMap<Bytes, Option<IpAddr>>,
    /// Connections whose Hello1 is in a worker, with what they sent
    /// meanwhile, handled in order once the worker is done.
    in_worker: HashMap<Bytes, Vec<ZmqMessage>>,
    /// Connections whose Hello3 went to a decode worker: that worker holds
    /// (or is making) their opener. Anything sealed from a connection not
    /// here is dropped unread, on the loop; one that leaves it is told to
    /// its worker ([`Peers::gone`]).
    keyed: HashSet<Bytes>,
    /// Keyed connections that went away, whose openers their workers drop
    /// at the end of this turn of the loop.
    gone: Vec<Bytes>,
    /// Input dropped since the last report.
    dropped: u64,
    /// Connections dropped before the ZMTP handshake completed (transport
    /// limits, handshake timeout, accept failures) since the last report,
    /// and the last reason.
    refused: u64,
    last_refusal: String,
    /// Stopping: events are no longer taken, job results still are.
    draining: bool,
    /// Reaction queue depths last logged, per agent.
    depths: HashMap<String, usize>,
    /// Whether the once-a-second look at depths and half-open handshakes
    /// has anything to find: set by every message taken from an agent,
    /// cleared by a look that finds every queue empty and no handshake.
    /// An idle master does not wake each second for nothing (issue #21);
    /// a queue filled by something else (a schedule, a reload) is looked
    /// at after the next agent message (pings come every 5 s).
    watching: bool,
    /// Lines each peer's garbage may still log (`log_budget.rs`).
    budget: crate::server::log_budget::LogBudget,
    /// Where events' acks wait for their hand-off (set by `serve`).
    acks: Option<crate::server::acks::Acker>,
    /// Accepted sessions waiting for their agent's event ids from
    /// PostgreSQL ([`Primed`]), with what they sent meanwhile, taken in
    /// order once the ids are in (at most [`PRIMING_HELD`] each).
    priming: HashMap<Bytes, Vec<Outcome>>,
    /// With a PostgreSQL store: what reads the ids, and where its answers
    /// come back to the loop (set by `serve`).
    primer: Option<(Primer, mpsc::Sender<Primed>)>,
}

/// Messages a session may send while its ids are read from PostgreSQL
/// (`store/prime.rs`); one more closes it (the agent sends them again on
/// its next session). A reconnecting agent's whole outbox is about 40
/// batches.
pub const PRIMING_HELD: usize = 1024;
/// Answers of the primer waiting for the loop. When full, the primer's
/// tasks wait.
const PRIMED_QUEUE: usize = 256;

/// The event ids PostgreSQL holds for a new session's agent: recorded
/// already (perhaps by another master, before a failover), so a resend of
/// one is acknowledged without being published or reacted to again.
struct Primed {
    peer: Bytes,
    agent: String,
    ids: Result<Vec<halite_proto::Id>, PrimeError>,
}

impl Peers {
    /// Whether a line about `peer`'s garbage is logged, and how many were
    /// held back before it.
    fn may_log(&mut self, peer: &Bytes) -> Option<u64> {
        match self.budget.check(peer, tokio::time::Instant::now()) {
            crate::server::log_budget::Verdict::Log { held_back } => Some(held_back),
            crate::server::log_budget::Verdict::Quiet => None,
        }
    }
}

/// Receives from every agent until `cancel` fires.
pub async fn serve(
    mut recv: RouterRecvHalf,
    mut monitor: futures_util::stream::BoxStream<'static, SocketEvent>,
    master: Arc<Master>,
    cancel: CancellationToken,
) {
    let mut peers = Peers {
        acks: Some(crate::server::acks::Acker::spawn_recording(
            master.bus.clone(),
            master.sessions.clone(),
            master.jobs.store().filter(|store| store.records_events()).cloned(),
        )),
        ..Peers::default()
    };
    let (primed_sender, mut primed) = mpsc::channel(PRIMED_QUEUE);
    peers.primer = master
        .jobs
        .store()
        .and_then(|store| store.postgres().cloned())
        .map(|target| (Primer::spawn(target), primed_sender));
    let (done, mut results) = mpsc::channel(HANDSHAKE_WORKERS * 2);
    let mut pool = Pool { permits: Arc::new(Semaphore::new(HANDSHAKE_WORKERS)), waiting: VecDeque::new(), done };
    let mut workers = Workers::spawn(decode::worker_count());
    let mut report = tokio::time::interval(Duration::from_secs(10));
    let mut depths = tokio::time::interval(DEPTH_LOG_INTERVAL);
    // After an idle spell, one look at once, then each second again.
    depths.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let stopped = cancel.cancelled();
    tokio::pin!(stopped);
    let mut deadline = std::pin::pin!(tokio::time::sleep(Duration::MAX));
    loop {
        tokio::select! {
            () = &mut stopped, if !peers.draining => {
                peers.draining = true;
                let in_flight = master.jobs.in_flight();
                if in_flight.is_empty() {
                    return;
                }
                tracing::info!(jobs = in_flight.len(), grace = ?SHUTDOWN_GRACE, "Stopping: waiting for the results of jobs in flight.");
                deadline.as_mut().reset(tokio::time::Instant::now() + SHUTDOWN_GRACE);
            }
            () = &mut deadline => {
                for (job, agent) in master.jobs.in_flight() {
                    tracing::warn!(agent = %agent, %job, "Stopping without this job's result; the agent keeps it in its outbox and sends it to the next master.");
                }
                return;
            }
            Some(result) = results.recv() => {
                crypto_done(&master, &mut peers, &mut pool, &mut workers, result).await;
            }
            Some(outcome) = workers.decoded.recv() => {
                decoded(&master, &mut peers, outcome).await;
            }
            Some(answer) = primed.recv() => {
                take_primed(&master, &mut peers, answer).await;
            }
            message = recv.recv() => match message {
                Ok(message) => {
                    handle(&master, &mut peers, &mut pool, &mut workers, message).await;
                }
                Err(error) => {
                    tracing::error!(%error, "The agent link failed.");
                    return;
                }
            },
            Some(event) = monitor.next() => {
                if let SocketEvent::AcceptFailed(error) = &event {
                    peers.refused += 1;
                    peers.last_refusal = error.to_string();
                }
                if let SocketEvent::Accepted(endpoint, peer) = &event {
                    let address = endpoint.to_string();
                    let address = address.strip_prefix("tcp://").unwrap_or(&address).to_owned();
                    master.sessions.note_address(peer.clone().into(), address);
                }
                if let SocketEvent::Disconnected(peer) = event {
                    let peer: Bytes = peer.into();
                    master.sessions.forget_address(&peer);
                    peers.handshakes.shift_remove(&peer);
                    peers.unkey(&peer);
                    peers.forget(&peer);
                    if let Some((agent, accepted)) = master.sessions.close_peer(&peer) && accepted {
                        tracing::info!(agent = %agent, "Agent disconnected.");
                        master.jobs.agent_gone(&agent);
                        master.bus.publish(Event::new(tag::agent(&agent, "disconnected"), agent.as_str(), Value::map()));
                    }
                }
            }
            _ = depths.tick(), if peers.watching || !peers.handshakes.is_empty() => {
                log_depths(&master, &mut peers);
                expire_handshakes(&master, &mut peers);
                peers.watching = peers.depths.values().any(|depth| *depth > 0);
            }
            _ = report.tick() => {
                if peers.dropped > 0 {
                    tracing::warn!(dropped = peers.dropped, handshakes = peers.handshakes.len(), "Dropped input that was not from an accepted session.");
                    peers.dropped = 0;
                }
                if peers.refused > 0 {
                    tracing::warn!(refused = peers.refused, error = %peers.last_refusal, "Dropped connections before the link handshake (transport limits, handshake timeout or out of descriptors).");
                    peers.refused = 0;
                }
            }
        }
        while let Some(peer) = peers.gone.pop() {
            dispatch(&master, &mut peers, &mut workers, Work::Forget { peer }).await;
        }
        // Job results are taken wherever decoded outcomes are handled.
        if peers.draining && master.jobs.in_flight().is_empty() {
            tracing::info!("Every job in flight has returned.");
            return;
        }
    }
}

/// How often reaction queue depths are compared with the last logged ones.
pub const DEPTH_LOG_INTERVAL: Duration = Duration::from_secs(1);
/// How long a stopping master waits for the results of jobs in flight.
pub const SHUTDOWN_GRACE: Duration = Duration::from_secs(10);

/// How long a half-open handshake (Hello2 sent, no Hello3) is kept; then its
/// connection is closed, and its source address's budget freed. A real
/// agent answers in a round trip.
pub const HALF_OPEN_TIMEOUT: Duration = Duration::from_secs(10);

/// Closes the connections of half-open handshakes older than
/// [`HALF_OPEN_TIMEOUT`] (checked every [`DEPTH_LOG_INTERVAL`]).
fn expire_handshakes(master: &Master, peers: &mut Peers) {
    let now = tokio::time::Instant::now();
    while let Some((peer, (_, since))) = peers.handshakes.first()
        && now.duration_since(*since) > HALF_OPEN_TIMEOUT
    {
        let peer = peer.clone();
        disconnect(master, peers, &peer);
    }
}

/// Logs each agent's reaction queue depth when it changed since last time
/// (at most once per [`DEPTH_LOG_INTERVAL`]).
fn log_depths(master: &Master, peers: &mut Peers) {
    for (agent, depth) in master.engine.queue_depths() {
        let last = peers.depths.insert(agent.clone(), depth).unwrap_or(0);
        if last != depth {
            if depth >= crate::server::reactor::engine::AGENT_QUEUE / 2 {
                tracing::warn!(agent = %agent, depth, capacity = crate::server::reactor::engine::AGENT_QUEUE, "Reaction queue depth.");
            } else {
                tracing::info!(agent = %agent, depth, "Reaction queue depth.");
            }
        }
    }
}

impl Peers {
    /// The connection's session, if it had keys, ends here: its worker
    /// drops the opener at the end of this turn.
    fn unkey(&mut self, peer: &Bytes) {
        if self.keyed.remove(peer) {
            self.gone.push(peer.clone());
        }
    }

    /// The connection closed: its handshake no longer counts.
    fn forget(&mut self, peer: &Bytes) {
        self.started.remove(peer);
        self.in_worker.remove(peer);
        self.priming.remove(peer);
        self.release(peer);
    }

    /// The connection's handshake ended (done, failed or dropped): it no
    /// longer counts against its source address.
    fn release(&mut self, peer: &Bytes) {
        if let Some(source) = self.source_of.remove(peer)
            && let Some(count) = self.per_source.get_mut(&source)
        {
            *count -= 1;
            if *count == 0 {
                self.per_source.remove(&source);
            }
        }
    }
}

/// Closes a connection the loop refuses to serve further (a second
/// handshake, over its source's budget, holding too much): its session,
/// if any, ends with it.
fn disconnect(master: &Master, peers: &mut Peers, peer: &Bytes) {
    peers.dropped += 1;
    peers.handshakes.shift_remove(peer);
    peers.unkey(peer);
    peers.forget(peer);
    master.sessions.close_peer(peer);
    master.sessions.disconnect(peer);
}

async fn handle(master: &Master, peers: &mut Peers, pool: &mut Pool, workers: &mut Workers, message: ZmqMessage) {
    let received = halite_fs::hops::now();
    let Some(peer) = message.get(0).cloned() else { return };
    // Its handshake is in a worker: what it sends meanwhile waits, so an
    // agent's first events are taken after its session exists, in order.
    if let Some(held) = peers.in_worker.get_mut(&peer) {
        if held.len() >= HELD_PER_PEER {
            tracing::debug!("A connection sent too much during its handshake; closing it.");
            disconnect(master, peers, &peer);
        } else {
            held.push(message);
        }
        return;
    }
    let frames: Vec<&[u8]> = message.iter().map(|f| f.as_ref()).collect();
    let Some((_, body)) = frames.split_first() else { return };
    let envelope = match Envelope::parse(body) {
        Ok(envelope) => envelope,
        Err(error) => {
            peers.dropped += 1;
            tracing::debug!(%error, "Dropping a malformed message.");
            return;
        }
    };
    match envelope {
        Envelope::Hello1(first) => start_handshake(master, peers, pool, peer, first),
        Envelope::Hello3(last) => {
            let last = Bytes::copy_from_slice(last);
            finish_handshake(master, peers, workers, peer, last).await;
        }
        Envelope::Hello2(_) => peers.dropped += 1,
        // Opened and decoded on the peer's worker; only a connection whose
        // Hello3 went there has anything to open it with.
        Envelope::Sealed(_) if peers.keyed.contains(&peer) => {
            dispatch(master, peers, workers, Work::Open { peer, message, received }).await;
        }
        Envelope::Sealed(_) => peers.dropped += 1,
    }
}

/// Hands `work` to its peer's decode worker. While that worker's queue is
/// full, handles what the workers decoded meanwhile, so neither waits for
/// the other.
async fn dispatch(master: &Master, peers: &mut Peers, workers: &mut Workers, work: Work) {
    // A handle of its own, so that the decoded queue can be read meanwhile.
    let inbox = workers.inbox(work.peer()).clone();
    let permit = match inbox.try_reserve() {
        Ok(permit) => permit,
        Err(mpsc::error::TrySendError::Closed(())) => return,
        Err(mpsc::error::TrySendError::Full(())) => loop {
            tokio::select! {
                biased;
                Some(outcome) = workers.decoded.recv() => decoded(master, peers, outcome).await,
                permit = inbox.reserve() => match permit {
                    Ok(permit) => break permit,
                    Err(_) => return,
                },
            }
        },
    };
    permit.send(work);
}

/// What a decode worker made of a peer's message, in that peer's order.
async fn decoded(master: &Master, peers: &mut Peers, outcome: Outcome) {
    if let Outcome::Message { peer, .. } = &outcome
        && let Some(held) = peers.priming.get_mut(peer)
    {
        if held.len() < PRIMING_HELD {
            held.push(outcome);
        } else {
            let peer = peer.clone();
            tracing::debug!("A session sent too much while its event ids were read; closing it.");
            disconnect(master, peers, &peer);
        }
        return;
    }
    match outcome {
        Outcome::Finished { peer, handshake } => {
            // Gone while its Hello3 was on a worker: no session for it.
            if !peers.keyed.contains(&peer) {
                peers.gone.push(peer);
                return;
            }
            if handshake.is_err() {
                peers.unkey(&peer);
            }
            open_session(master, peers, peer, handshake).await;
        }
        Outcome::NoSession { peer } => {
            peers.unkey(&peer);
            peers.dropped += 1;
        }
        Outcome::Message { peer, message, received } => {
            peers.watching = true;
            let Some((agent, accepted)) = master.sessions.peer(&peer) else {
                // The session was ended (key rejected or deleted), or never
                // opened (its hello was refused).
                peers.unkey(&peer);
                peers.dropped += 1;
                return;
            };
            match message {
                Ok(message) => {
                    mark_received(&message, received);
                    on_message(master, peers, peer, &agent, accepted, message).await
                }
                Err(error) => {
                    peers.dropped += 1;
                    if let Some(held_back) = peers.may_log(&peer) {
                        tracing::warn!(agent = %agent, %error, held_back, "Dropping a message that does not open.");
                    }
                }
            }
        }
    }
}

/// A Hello1: the connection's one handshake begins, if its source address
/// is within its budget; the crypto waits for a worker.
fn start_handshake(master: &Master, peers: &mut Peers, pool: &mut Pool, peer: Bytes, first: &[u8]) {
    if !peers.started.insert(peer.clone()) {
        tracing::debug!("A second handshake on one connection; closing it.");
        disconnect(master, peers, &peer);
        return;
    }
    let source = master.sessions.address(&peer).and_then(|a| a.parse::<SocketAddr>().ok()).map(|a| a.ip());
    let count = peers.per_source.entry(source).or_default();
    if *count >= master.limits.handshakes_per_source {
        tracing::debug!(source = ?source, "Too many handshakes from one address; closing this one.");
        disconnect(master, peers, &peer);
        return;
    }
    *count += 1;
    peers.source_of.insert(peer.clone(), source);
    if pool.waiting.len() >= HANDSHAKE_BACKLOG
        && let Some((oldest, _)) = pool.waiting.pop_front()
    {
        disconnect(master, peers, &oldest);
    }
    pool.waiting.push_back((peer, first.to_vec()));
    start_waiting(master, peers, pool);
}

/// Hands waiting Hello1s to free workers.
fn start_waiting(master: &Master, peers: &mut Peers, pool: &mut Pool) {
    while !pool.waiting.is_empty() {
        let Ok(permit) = pool.permits.clone().try_acquire_owned() else { return };
        let Some((peer, first)) = pool.waiting.pop_front() else { return };
        peers.in_worker.insert(peer.clone(), Vec::new());
        let keypair = master.keypair.clone();
        let done = pool.done.clone();
        tokio::task::spawn_blocking(move || {
            let answer = Responder::respond(&keypair, &first);
            // The loop reads results as fast as workers make them; the
            // channel holds one per worker and more.
            let _ = done.blocking_send(Crypto { peer, answer });
            drop(permit);
        });
    }
}

/// A Hello3: finished on the peer's decode worker (one Diffie-Hellman),
/// which then opens its sealed messages; the outcome comes back before
/// theirs, so the session exists before the next message from this
/// connection is handled (an agent sends its first events right after it).
async fn finish_handshake(master: &Master, peers: &mut Peers, workers: &mut Workers, peer: Bytes, last: Bytes) {
    let Some((responder, _)) = peers.handshakes.shift_remove(&peer) else {
        peers.dropped += 1;
        return;
    };
    peers.release(&peer);
    peers.keyed.insert(peer.clone());
    dispatch(master, peers, workers, Work::Finish { peer, responder: Box::new(responder), last }).await;
}

/// A worker is done: answer the Hello1; then handle what the peer sent
/// meanwhile (a real agent sends nothing before the answer), and start
/// waiting handshakes.
async fn crypto_done(master: &Master, peers: &mut Peers, pool: &mut Pool, workers: &mut Workers, result: Crypto) {
    let Crypto { peer, answer } = result;
    // Gone meanwhile (disconnected, or evicted).
    let Some(held) = peers.in_worker.remove(&peer) else {
        start_waiting(master, peers, pool);
        return;
    };
    match answer {
        Ok((responder, reply)) => {
            if peers.handshakes.len() >= MAX_HANDSHAKES
                && let Some((oldest, _)) = peers.handshakes.shift_remove_index(0)
            {
                disconnect(master, peers, &oldest);
            }
            peers.handshakes.insert(peer.clone(), (responder, tokio::time::Instant::now()));
            if let Err(error) =
                master.sessions.send_raw(peer.clone(), Envelope::handshake(envelope::HELLO2, reply)).await
            {
                tracing::debug!(%error, "Cannot answer a handshake.");
            }
        }
        Err(error) => {
            tracing::debug!(%error, "A first handshake message that does not read.");
            disconnect(master, peers, &peer);
        }
    }
    for message in held {
        handle(master, peers, pool, workers, message).await;
    }
    start_waiting(master, peers, pool);
}

/// The handshake is complete: the hello decides whether and how the
/// session opens.
async fn open_session(
    master: &Master,
    peers: &mut Peers,
    peer: Bytes,
    accepted: Result<Handshake, halite_link::LinkError>,
) {
    crate::server::metrics::get().handshake(accepted.is_ok());
    let accepted = match accepted {
        Ok(accepted) => accepted,
        Err(error) => {
            peers.dropped += 1;
            if let Some(held_back) = peers.may_log(&peer) {
                tracing::info!(%error, held_back, "A handshake failed.");
            }
            return;
        }
    };
    let hello = match accepted.hello {
        Ok(AgentMessage::Hello(hello)) if halite_proto::event::valid_id(&hello.agent) => hello,
        _ => {
            peers.unkey(&peer);
            peers.dropped += 1;
            if let Some(held_back) = peers.may_log(&peer) {
                tracing::info!(fingerprint = %accepted.remote, held_back, "A handshake without a usable hello.");
            }
            return;
        }
    };
    let (values, bytes) = hello.facts.size();
    if values > MAX_FACTS_VALUES || bytes > MAX_FACTS_BYTES {
        tracing::warn!(agent = %hello.agent, fingerprint = %accepted.remote, values, bytes, max_values = MAX_FACTS_VALUES, max_bytes = MAX_FACTS_BYTES, "A hello whose facts are over the cap; refusing the session.");
        disconnect(master, peers, &peer);
        return;
    }
    // In memory only: the store's writer commits new keys in batches. The
    // enrolment token leaves the facts here; an accepted key gets the facts
    // frozen for it, not what this hello claims (keys.rs).
    let source = master.sessions.address_of(&peer).and_then(|a| a.parse::<SocketAddr>().ok()).map(|a| a.ip());
    let arrival = match master.keys.arrive(&hello.agent, &accepted.remote, hello.facts, source) {
        Ok(arrival) => arrival,
        Err(error) => {
            if let Some(held_back) = peers.may_log(&peer) {
                tracing::warn!(agent = %hello.agent, fingerprint = %accepted.remote, %error, held_back, "Refusing a new key.");
            }
            disconnect(master, peers, &peer);
            return;
        }
    };
    let hello = halite_proto::Hello { facts: arrival.facts, ..hello };
    if arrival.held {
        tracing::warn!(agent = %hello.agent, "The agent claims other facts than those frozen when its key was accepted; targeting keeps the frozen ones (`halite-master keys facts` shows both; `--accept` takes the new).");
        master.bus.publish(Event::new(tag::key(&hello.agent, "facts-held"), hello.agent.as_str(), Value::map()));
    }
    let admission = arrival.admission;
    if admission.new {
        let what = if admission.status == KeyStatus::Accepted { "accepted" } else { "pending" };
        master.bus.publish(Event::new(
            tag::key(&hello.agent, what),
            hello.agent.as_str(),
            Value::map().with("fingerprint", accepted.remote.to_string()),
        ));
    }
    let is_accepted = admission.status == KeyStatus::Accepted;
    if !is_accepted && master.sessions.unaccepted() >= MAX_UNACCEPTED {
        tracing::warn!(agent = %hello.agent, "Too many sessions with unaccepted keys; refusing this one.");
        disconnect(master, peers, &peer);
        return;
    }
    // A pending key's session keeps no facts: when the key is accepted the
    // session is ended and the agent, reconnecting, says hello again.
    let facts = if is_accepted { hello.facts } else { Value::Null };
    master.sessions.open(peer.clone(), &hello.agent, accepted.remote, facts.clone(), accepted.sealer, is_accepted);
    master.sessions.note_version(&peer, &hello.version);
    if is_accepted && let Some((primer, answers)) = &peers.primer {
        // What the session sends is held until its agent's recorded ids
        // are in (`take_primed`): the hot path of later events is not
        // touched.
        peers.priming.insert(peer.clone(), Vec::new());
        let (primer, answers, agent, peer) = (primer.clone(), answers.clone(), hello.agent.clone(), peer.clone());
        tokio::spawn(async move {
            let ids = primer.recent_ids(&agent).await;
            let _ = answers.send(Primed { peer, agent, ids }).await;
        });
    }
    if is_accepted {
        welcome(master, peer, &hello.agent, &hello.version, facts).await;
    } else {
        tracing::info!(agent = %hello.agent, fingerprint = %accepted.remote, status = admission.status.as_str(), "An agent whose key is not accepted connected.");
        let status = admission.status.as_str().to_owned();
        let _ = master.sessions.send_to_peer(peer, &MasterMessage::NotAccepted { status }).await;
    }
}

/// A session's agent's recorded event ids are in (or could not be read):
/// remember them as seen, then take what the session sent meanwhile.
async fn take_primed(master: &Master, peers: &mut Peers, primed: Primed) {
    // Gone meanwhile: nothing held.
    let Some(held) = peers.priming.remove(&primed.peer) else { return };
    match primed.ids {
        Ok(ids) => {
            // Oldest first, so that the newest are the last forgotten.
            let ids: Vec<halite_proto::Id> = ids.into_iter().rev().collect();
            let known = master.sessions.sights(&primed.agent, &ids).into_iter().filter(|fresh| !fresh).count();
            tracing::debug!(agent = %primed.agent, ids = ids.len(), known, "Took the agent's recorded event ids.");
        }
        Err(error) => {
            tracing::warn!(agent = %primed.agent, %error, "Taking the session without the event ids PostgreSQL holds: a resent event another master recorded may be reacted to again.");
        }
    }
    for outcome in held {
        decoded(master, peers, outcome).await;
    }
}

/// The session on `peer` is accepted: give the agent its beacons, announce
/// it and converge it.
pub async fn welcome(master: &Master, peer: Bytes, agent: &str, version: &str, facts: Value) {
    let tree = master.tree();
    let beacons = tree.beacons_for(agent, &facts);
    if let Err(error) = master.sessions.send_to_peer(peer.clone(), &MasterMessage::Welcome(Welcome { beacons })).await {
        tracing::warn!(agent, %error, "Cannot welcome the agent.");
        return;
    }
    // A reload while the welcome was on its way may have missed this agent.
    crate::server::reload::resend_if_reloaded(master, peer, agent, &facts, &tree).await;
    tracing::info!(agent, version, "Agent connected.");
    // A new session: whatever the old one had in flight is not answered there.
    master.jobs.agent_gone(agent);
    master.jobs.record_facts(agent, &facts);
    master.bus.publish(Event::new(
        tag::agent(agent, "connected"),
        agent,
        Value::map().with("version", version).with("facts", facts),
    ));
    master.engine.highstate(agent);
}

/// Publishes and reacts to the events an agent sent (one, or a batch), in
/// order, except those it may not raise and those already seen; returns
/// the ids it published, to be logged as seen once handed off, before the
/// ack (`server/acks.rs`), and, when the store records events
/// (PostgreSQL), those events as it records them.
async fn take_events(
    master: &Master,
    agent: &str,
    events: Vec<Event>,
) -> (Vec<halite_proto::Id>, Vec<crate::server::store::spool::EventRow>) {
    // An agent speaks only for itself, in its beacon tags and a few of its
    // own.
    // A tag is printable and bounded before anything stores or prints it.
    let (allowed, refused): (Vec<Event>, Vec<Event>) = events.into_iter().partition(|event| {
        event.agent == agent && halite_proto::text::valid_tag(&event.tag) && may_raise(agent, &event.tag)
    });
    for event in refused {
        let tag: String = halite_proto::text::escape(&event.tag).chars().take(300).collect();
        tracing::warn!(agent, tag = %tag, "Dropping an event an agent may not raise (not its own tag, or not printable, or over 256 bytes).");
    }
    // An event over the cap is acknowledged (so the agent forgets it) and
    // dropped: it would cost every subscriber and reactor its size.
    let max = master.limits.max_event_bytes;
    let (allowed, oversized): (Vec<Event>, Vec<Event>) = allowed.into_iter().partition(|e| event_size(e) <= max);
    for event in oversized {
        tracing::warn!(agent, tag = %event.tag, bytes = event_size(&event), max, "Dropping an event over `max_event_bytes`.");
    }
    let ids: Vec<halite_proto::Id> = allowed.iter().map(|event| event.id).collect();
    let mut published = Vec::with_capacity(ids.len());
    let recording = master.jobs.store().is_some_and(crate::server::store::Store::records_events);
    let mut recorded = Vec::new();
    for (event, fresh) in allowed.into_iter().zip(master.sessions.sights(agent, &ids)) {
        if fresh {
            published.push(event.id);
            if recording {
                recorded.push(crate::server::store::spool::EventRow::of(&event));
            }
            crate::server::metrics::get().event_in(&event.tag);
            let event = master.bus.publish_waiting(event).await;
            halite_fs::hops::mark("master.published", event.id.0);
            master.engine.on_event(&event);
            halite_fs::hops::mark("master.matched", event.id.0);
        } else {
            tracing::debug!(agent, event = %event.id, "Dropping a duplicate event.");
        }
    }
    (published, recorded)
}

/// Hop timing: `message` came off the socket at `received` and is open
/// and back on the link loop from its decode worker.
fn mark_received(message: &AgentMessage, received: u64) {
    if !halite_fs::hops::enabled() {
        return;
    }
    let keys: Vec<u128> = match message {
        AgentMessage::Event(event) => vec![event.id.0],
        AgentMessage::Events(events) => events.iter().map(|e| e.id.0).collect(),
        AgentMessage::JobResult(result) => vec![result.job.0],
        AgentMessage::Hello(_) | AgentMessage::Ping | AgentMessage::Inventory(_) => Vec::new(),
    };
    for key in keys {
        halite_fs::hops::mark_at("master.recv", key, received);
        halite_fs::hops::mark("master.decoded", key);
    }
}

/// Acknowledges a job result once the store has committed it; when the
/// store refused it (a refusing disk holding all it may) there is no ack,
/// and the agent sends it again on its next session.
async fn ack_when_stored(
    sessions: crate::server::sessions::Sessions,
    jobs: crate::server::jobs::Jobs,
    peer: Bytes,
    agent: String,
    job: halite_proto::Id,
    committed: tokio::sync::oneshot::Receiver<bool>,
) {
    if committed.await != Ok(true) {
        tracing::debug!(agent, %job, "A job result was not stored; not acknowledged.");
        return;
    }
    jobs.stored(&agent, job);
    tokio::task::block_in_place(|| sessions.first_sights(&agent, &[job]));
    let ack = MasterMessage::ResultAck { job };
    crate::server::metrics::get().result_acked();
    if let Err(error) = sessions.send_to_peer(peer, &ack).await {
        tracing::debug!(agent, %job, %error, "Cannot acknowledge a stored result; the agent sends it again.");
    }
}

/// An event's size against `max_event_bytes`: its tag, agent and the text
/// of its data, plus one byte per value (about its encoded size).
fn event_size(event: &Event) -> usize {
    let (values, text) = event.data.size();
    event.tag.len() + event.agent.len() + values + text
}

/// Tags an agent may raise about itself, besides its beacons'.
const AGENT_TAGS: &[&str] = &["drift", "healed", "outbox/dropped", "outbox/unwritable", "outbox/writable"];

/// May `agent` raise an event with this tag?
fn may_raise(agent: &str, tag: &str) -> bool {
    tag.strip_prefix("halite/beacon/").and_then(|t| t.strip_prefix(agent)).is_some_and(|t| t.starts_with('/'))
        || tag
            .strip_prefix("halite/agent/")
            .and_then(|t| t.strip_prefix(agent))
            .and_then(|t| t.strip_prefix('/'))
            .is_some_and(|t| AGENT_TAGS.contains(&t))
}

async fn on_message(
    master: &Master,
    peers: &mut Peers,
    peer: Bytes,
    agent: &str,
    accepted: bool,
    message: AgentMessage,
) {
    let ack = match message {
        AgentMessage::Ping => MasterMessage::Pong,
        // Nothing from an unaccepted key goes further than this.
        _ if !accepted => {
            tracing::debug!(agent, "Dropping a message from an agent whose key is not accepted.");
            return;
        }
        AgentMessage::Hello(_) => {
            tracing::debug!(agent, "Dropping a second hello.");
            return;
        }
        // While stopping, new work is left with the agents: unacknowledged,
        // it is sent again to the next master.
        AgentMessage::Event(_) | AgentMessage::Events(_) if peers.draining => return,
        AgentMessage::JobResult(mut result) => {
            // Whatever the agent cut or not: diffs and changes to their caps.
            result.results.iter_mut().for_each(halite_proto::StateResult::cap);
            let job = result.job;
            if master.sessions.has_seen(agent, job) {
                // Stored before (ids are remembered once committed).
                tracing::debug!(agent, %job, "Dropping a duplicate job result.");
            } else {
                match master.jobs.take_result(agent, result) {
                    // Acknowledged once stored, from a task of its own: the
                    // store may be slow, or hold it until the disk has room.
                    Ok(committed) => {
                        tokio::spawn(ack_when_stored(
                            master.sessions.clone(),
                            master.jobs.clone(),
                            peer,
                            agent.to_owned(),
                            job,
                            committed,
                        ));
                        return;
                    }
                    // Acknowledged so the agent forgets it (logged by jobs).
                    Err(_unexpected) => {}
                }
            }
            MasterMessage::ResultAck { job }
        }
        AgentMessage::Inventory(inventory) => {
            let ack = MasterMessage::Ack { event: inventory.id };
            master.inventory.take(agent, inventory);
            ack
        }
        AgentMessage::Event(_) | AgentMessage::Events(_) => {
            let (ack, events) = match message {
                AgentMessage::Event(event) => (MasterMessage::Ack { event: event.id }, vec![event]),
                AgentMessage::Events(events) => (MasterMessage::Acks(events.iter().map(|e| e.id).collect()), events),
                _ => return,
            };
            let (published, recorded) = take_events(master, agent, events).await;
            // Acknowledged once published and recorded, off this loop.
            if let Some(acks) = &peers.acks {
                let pending =
                    crate::server::acks::PendingAck { peer, agent: agent.to_owned(), published, recorded, ack };
                acks.queue(pending).await;
            }
            return;
        }
    };
    // Never waits: a peer whose queue is full (it stopped reading) has been
    // disconnected by the transport, and its session ends with the
    // `Disconnected` the monitor reports.
    if let Err(error) = master.sessions.send_to_peer(peer, &ack).await {
        tracing::debug!(agent, %error, "Cannot answer the agent.");
    }
}

/// The router's monitor as a boxed stream (the crate's receiver type is not
/// nameable without another dependency).
pub fn monitor(router: &mut RouterSocket) -> futures_util::stream::BoxStream<'static, SocketEvent> {
    router.monitor().boxed()
}

#[cfg(test)]
mod tests {
    use super::may_raise;

    #[test]
    fn an_agent_raises_only_its_own_tags() {
        for (tag, allowed) in [
            ("halite/beacon/web01/motd", true),
            ("halite/beacon/web01", false),
            ("halite/beacon/web012/motd", false),
            ("halite/beacon/db01/motd", false),
            ("halite/agent/web01/drift", true),
            ("halite/agent/web01/healed", true),
            ("halite/agent/web01/outbox/dropped", true),
            ("halite/agent/web01/outbox/unwritable", true),
            ("halite/agent/web01/outbox/writable", true),
            ("halite/agent/web01/outbox/other", false),
            ("halite/agent/web01/connected", false),
            ("halite/agent/web01/disconnected", false),
            ("halite/agent/db01/healed", false),
            ("halite/job/x/ret/web01", false),
            ("halite/key/web01/accepted", false),
        ] {
            assert_eq!(may_raise("web01", tag), allowed, "{tag}");
        }
    }
}

//! The agent's end of the link: a ZeroMQ DEALER to the master's ROUTER.
//!
//! Layers, bottom up: the ZeroMQ socket (rebuilt on every reconnect, since
//! the `zeromq` crate's DEALER does not reconnect by itself after the
//! master restarts); the Noise session ([`halite_link`]: handshake, then
//! sealed messages); frames ([`halite_proto::frame`]); typed messages for
//! the agent. The master's key is checked after the handshake's second
//! message, before the agent says who it is.
//!
//! The link owns delivery: every event and job result goes through the
//! [`Outbox`] (on disk), stays there until the master acknowledges it, and
//! a new session sends everything still pending first. A *writer* task
//! moves messages from the outbound channel into the outbox (also while
//! the master is away, so beacons do not wait); the session's pump sends
//! from the outbox in order. The writer wakes the pump as soon as a batch
//! is in the outbox's memory and writes its file meanwhile (outbox.rs,
//! "Send first"), or, where the outbox says so, before.

use std::sync::Arc;
use std::time::Duration;

use futures_util::StreamExt;
use std::path::PathBuf;

use bytes::Bytes;
use halite_link::envelope::{self, Envelope};
use halite_link::{Initiator, Keypair, Opener, PublicKey, Sealer};
use halite_proto::{AgentMessage, Backoff, Hello, Id, MasterMessage};
use tokio::sync::{mpsc, watch};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use zeromq::{DealerSocket, Socket, SocketEvent, SocketRecv, SocketSend, ZmqMessage};

use crate::outbox::Outbox;

/// Messages the agent has queued for the outbox. When full, senders wait
/// (only as long as a disk write: the writer drains it while the master is
/// away too).
pub const OUTBOUND_CAPACITY: usize = 1024;
/// What the link hands up to the agent. When full, the link waits.
pub const INBOUND_CAPACITY: usize = 256;
/// Acknowledgements waiting for the writer to forget their messages. When
/// full, the session's pump waits.
pub const ACK_CAPACITY: usize = 1024;
/// Messages written to the outbox in one batch (one directory fsync).
const BATCH: usize = 256;
/// First wait before the outbox tries again to write what the disk
/// refused (a full disk); doubles up to [`RETRY_MAX`].
pub const RETRY_MIN: Duration = Duration::from_millis(250);
/// Longest wait between two tries to write what the disk refused: how long
/// held messages may wait after space returns.
pub const RETRY_MAX: Duration = Duration::from_secs(5);
/// Events sent in one [`AgentMessage::Events`] at most. Events that wait
/// to go out (a burst, or the outbox after a reconnect) travel together:
/// one seal, one send and one acknowledgement per message instead of per
/// event. An event that is alone goes alone, at once.
pub const EVENTS_PER_MESSAGE: usize = 256;
/// A batch whose encoding is larger than this is sent one event per
/// message instead, so that no message nears the master's frame limit.
pub const MAX_BATCH_BYTES: usize = 1024 * 1024;

/// What the link is doing, for the agent's shutdown (and the log).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct LinkStatus {
    /// A session with the master is open.
    pub connected: bool,
    /// Messages in the outbox, not yet acknowledged.
    pub pending: usize,
    /// The writer has stored everything it will ever get (the outbound
    /// channel closed).
    pub writer_done: bool,
}

/// How the agent knows the master is its master.
#[derive(Debug, Clone)]
pub enum MasterTrust {
    /// `master_key` in agent.yaml.
    Pinned(PublicKey),
    /// `tofu: true`: the first key seen is stored in this file and pinned.
    FirstUse(PathBuf),
}

/// One master the link may talk to, and how it knows the master is ours.
#[derive(Debug, Clone)]
pub struct MasterLink {
    pub endpoint: String,
    pub trust: MasterTrust,
}

#[derive(Debug, Clone)]
pub struct LinkSettings {
    /// The masters, as agent.yaml lists them; the link tries them in the
    /// order of this agent's ranking ([`crate::masters::rank`]).
    pub masters: Vec<MasterLink>,
    pub hello: Hello,
    pub keypair: Keypair,
    /// How often the agent pings an idle link; three missed answers and the
    /// link is rebuilt.
    pub heartbeat: Duration,
    /// The wait between reconnects ([`RECONNECT`] unless a test says otherwise).
    pub backoff: Backoff,
    /// How often an agent away from its first-ranked master probes the
    /// better ranked ones, before jitter ([`crate::masters::RETURN_PROBE`]
    /// unless agent.yaml's `return_probe` says otherwise).
    pub return_probe: Duration,
}

/// The agent's reconnect schedule: 100 ms doubling to 10 s, jittered, so
/// that a fleet does not reconnect in lockstep after a master restart. The
/// swarm's simulated agents use it too.
pub const RECONNECT: Backoff = Backoff::new(Duration::from_millis(100), Duration::from_secs(10));

impl LinkSettings {
    /// Settings for one master.
    pub fn new(endpoint: String, hello: Hello, keypair: Keypair, trust: MasterTrust) -> Self {
        LinkSettings::with_masters(vec![MasterLink { endpoint, trust }], hello, keypair)
    }

    /// Settings for several masters (`masters:` in agent.yaml).
    pub fn with_masters(masters: Vec<MasterLink>, hello: Hello, keypair: Keypair) -> Self {
        LinkSettings {
            masters,
            hello,
            keypair,
            heartbeat: Duration::from_secs(5),
            backoff: RECONNECT,
            return_probe: crate::masters::RETURN_PROBE,
        }
    }
}

/// What the link tells the agent.
#[derive(Debug)]
pub enum LinkEvent {
    /// A session is open (the master's welcome, or word that the agent's
    /// key is not accepted yet, follows as a message).
    Up,
    /// The session ended; the link is reconnecting.
    Down(String),
    /// A message from the master (acks and pongs are handled by the link).
    Message(MasterMessage),
}

/// Why a message could not be sealed or opened in a session.
#[derive(Debug, thiserror::Error)]
pub enum SessionError {
    /// Sealing, opening or parsing the envelope (the link's error says which).
    #[error(transparent)]
    Link(#[from] halite_link::LinkError),
    #[error("the master sent something other than a sealed message")]
    NotSealed,
    #[error("an undecodable message: {0}")]
    Decode(#[from] halite_proto::DecodeError),
    #[error("an empty message cannot be framed")]
    Empty,
}

/// Why this agent will not talk to a master: it is not the one it trusts.
#[derive(Debug, thiserror::Error)]
pub enum TrustError {
    /// The pin cannot be trusted; it fails closed.
    #[error(
        "{why}; this agent trusts no master until it is mended: put the master's key (`halite-master keys fingerprint`) in `master_key`, or remove {path} to trust the next master on first use",
        path = path.display()
    )]
    Unusable { path: PathBuf, why: String },
    #[error("cannot store the master's key in {path}: {source}", path = path.display())]
    Store { path: PathBuf, source: halite_fs::FsError },
    #[error(
        "the master's key is {key}, but this agent trusts {pinned}; if the master's key really changed, put the new one (`halite-master keys fingerprint`) in `master_key`"
    )]
    Mismatch { key: PublicKey, pinned: PublicKey },
}

/// One open session: seals what the agent sends, opens what it receives.
/// Public for the swarm's simulated agents, which speak the same protocol.
#[derive(Debug)]
pub struct Session {
    sealer: Sealer,
    opener: Opener,
}

impl Session {
    pub fn new(sealer: Sealer, opener: Opener) -> Self {
        Session { sealer, opener }
    }

    pub fn seal(&mut self, message: &AgentMessage) -> Result<ZmqMessage, SessionError> {
        self.seal_encoded(&halite_proto::encode(message))
    }

    /// Seals a message already encoded with [`halite_proto::encode`].
    pub fn seal_encoded(&mut self, encoded: &[u8]) -> Result<ZmqMessage, SessionError> {
        let chunks = self.sealer.seal(encoded)?;
        frames(Envelope::sealed(chunks))
    }

    /// Seals `message`, or, for a batch of events whose encoding exceeds
    /// [`MAX_BATCH_BYTES`], each of its events on its own.
    pub fn seal_batch(&mut self, message: &AgentMessage) -> Result<Vec<ZmqMessage>, SessionError> {
        let encoded = halite_proto::encode(message);
        match message {
            AgentMessage::Events(events) if encoded.len() > MAX_BATCH_BYTES => {
                events.iter().map(|event| self.seal(&AgentMessage::Event(event.clone()))).collect()
            }
            _ => Ok(vec![self.seal_encoded(&encoded)?]),
        }
    }

    pub fn open(&mut self, message: &ZmqMessage) -> Result<MasterMessage, SessionError> {
        let frames: Vec<&[u8]> = message.iter().map(|f| f.as_ref()).collect();
        let Envelope::Sealed(chunks) = Envelope::parse(&frames)? else {
            return Err(SessionError::NotSealed);
        };
        let plaintext = self.opener.open(chunks)?;
        Ok(halite_proto::decode(&plaintext)?)
    }
}

/// Envelope frames as one ZeroMQ message.
pub fn frames(frames: Vec<Vec<u8>>) -> Result<ZmqMessage, SessionError> {
    // The only failure is an empty list of frames.
    ZmqMessage::try_from(frames.into_iter().map(Bytes::from).collect::<Vec<_>>()).map_err(|_| SessionError::Empty)
}

/// The running link.
#[derive(Debug)]
pub struct LinkHandle {
    /// Events and job results for the master (through the outbox).
    pub outbound: mpsc::Sender<AgentMessage>,
    /// Sessions up and down, and the master's messages.
    pub events: mpsc::Receiver<LinkEvent>,
    pub status: watch::Receiver<LinkStatus>,
    pub task: tokio::task::JoinHandle<()>,
}

/// Starts the link and its outbox writer. They run until `stop` fires
/// (the writer until the outbound channel closes).
pub fn spawn(settings: LinkSettings, outbox: Outbox, stop: CancellationToken) -> LinkHandle {
    let (out_tx, out_rx) = mpsc::channel(OUTBOUND_CAPACITY);
    let (in_tx, in_rx) = mpsc::channel(INBOUND_CAPACITY);
    let (ack_tx, ack_rx) = mpsc::channel(ACK_CAPACITY);
    let status = Arc::new(watch::Sender::new(LinkStatus { pending: outbox.len(), ..LinkStatus::default() }));
    let status_rx = status.subscribe();
    let outbox = Arc::new(tokio::sync::Mutex::new(outbox));
    let stored = Arc::new(tokio::sync::Notify::new());
    tokio::spawn(write(outbox.clone(), out_rx, ack_rx, stored.clone(), status.clone()));
    let link = Link { settings, inbound: in_tx, outbox, stored, acks: ack_tx, status, cancel: stop };
    LinkHandle { outbound: out_tx, events: in_rx, status: status_rx, task: tokio::spawn(link.run()) }
}

/// The writer: stores outbound messages in batches and forgets
/// acknowledged ones, off the runtime's threads; wakes the pump after each.
/// While the outbox holds messages the disk refused, it retries, from
/// [`RETRY_MIN`] doubling to [`RETRY_MAX`] (every new batch is a retry too).
async fn write(
    outbox: Arc<tokio::sync::Mutex<Outbox>>,
    mut outbound: mpsc::Receiver<AgentMessage>,
    mut acks: mpsc::Receiver<Id>,
    stored: Arc<tokio::sync::Notify>,
    status: Arc<watch::Sender<LinkStatus>>,
) {
    let mut outbound_open = true;
    let mut holding = false;
    let mut retry_in = RETRY_MIN;
    loop {
        let mut batch = Vec::new();
        let mut acked = Vec::new();
        tokio::select! {
            biased;
            Some(id) = acks.recv() => acked.push(id),
            message = outbound.recv(), if outbound_open => match message {
                Some(message) => batch.push(message),
                None => {
                    outbound_open = false;
                    status.send_modify(|s| s.writer_done = true);
                    continue;
                }
            },
            () = tokio::time::sleep(retry_in), if holding => {}
            else => return,
        }
        while acked.len() < BATCH
            && let Ok(id) = acks.try_recv()
        {
            acked.push(id);
        }
        while batch.len() < BATCH
            && let Ok(message) = outbound.try_recv()
        {
            batch.push(message);
        }
        // Hop timing: the keys of what this batch stores (none when off).
        let keys: Vec<u128> = match halite_fs::hops::enabled() {
            true => batch.iter().filter_map(crate::outbox::key_of).map(|id| id.0).collect(),
            false => Vec::new(),
        };
        // Send first: a batch the outbox can take without refusing or
        // holding anything is taken into its memory at once (no I/O), the
        // pump is woken to send it, and its file is written meanwhile,
        // without the lock the pump needs (outbox.rs, "Send first").
        let mut staged = None;
        if !batch.is_empty() {
            let mut guard = outbox.lock().await;
            match guard.stage(std::mem::take(&mut batch)) {
                Ok(taken) => staged = taken,
                Err(back) => batch = back,
            }
        }
        let sent_first = staged.is_some();
        if sent_first {
            keys.iter().for_each(|key| halite_fs::hops::mark("agent.outbox", *key));
            stored.notify_one();
        }
        let lock = outbox.clone();
        let stored_now = tokio::task::spawn_blocking(move || {
            let written = staged.map(|staged| (staged.first(), staged.write()));
            let mut guard = lock.blocking_lock();
            if let Some((first, written)) = written {
                guard.staged_written(first, written);
            }
            for id in acked {
                guard.ack(id);
            }
            if let Some(counter) = guard.take_counter() {
                batch.insert(0, counter);
            }
            // A push writes what is held first; without one, try again.
            if !batch.is_empty() {
                guard.push(batch);
            } else if guard.held() > 0 {
                guard.retry();
            }
            (guard.len(), guard.held())
        })
        .await;
        if !sent_first {
            keys.into_iter().for_each(|key| halite_fs::hops::mark("agent.outbox", key));
        }
        match stored_now {
            Ok((pending, held)) => {
                let before = status.borrow().pending;
                // Logged as it crosses a power of two, up or down: visible,
                // not a line per message.
                if pending >= 64 && pending.ilog2() != before.max(1).ilog2() {
                    tracing::info!(pending, capacity = crate::outbox::CAPACITY, "Outbox depth.");
                }
                status.send_modify(|s| s.pending = pending);
                retry_in = match (holding, held > 0) {
                    (true, true) => (retry_in * 2).min(RETRY_MAX),
                    _ => RETRY_MIN,
                };
                holding = held > 0;
            }
            Err(error) => tracing::error!(%error, "The outbox writer failed."),
        }
        stored.notify_one();
    }
}

struct Link {
    settings: LinkSettings,
    inbound: mpsc::Sender<LinkEvent>,
    outbox: Arc<tokio::sync::Mutex<Outbox>>,
    /// Woken when the writer stored something.
    stored: Arc<tokio::sync::Notify>,
    acks: mpsc::Sender<Id>,
    status: Arc<watch::Sender<LinkStatus>>,
    cancel: CancellationToken,
}

enum End {
    Cancelled,
    Lost(String),
    /// The master is not the one this agent trusts.
    Refused(TrustError),
    /// A better-ranked master answered a return probe: its session (the
    /// master's index in `LinkSettings::masters`) replaces this one.
    Returned(usize, DealerSocket, Session),
}

impl Link {
    /// Connects, pumps, reconnects, until cancelled. Each round walks this
    /// agent's ranking of the masters from the top and keeps the first
    /// session that opens; when every master failed, the round waits its
    /// backoff. A lost session starts a new round after the backoff's
    /// first, short wait, which skips the master just lost (when there is
    /// another): a dead master costs its agents no connect timeout, and
    /// one that only blinked gets its agents back through the return
    /// probes.
    async fn run(mut self) {
        let endpoints: Vec<&str> = self.settings.masters.iter().map(|m| m.endpoint.as_str()).collect();
        let order = crate::masters::rank(&self.settings.hello.agent, &endpoints);
        // Rounds in a row in which no master answered.
        let mut failures: u32 = 0;
        // A session a return probe opened, waiting to be pumped.
        let mut returned: Option<(usize, DealerSocket, Session)> = None;
        // The master whose session was just lost: skipped in the next round.
        let mut skip: Option<usize> = None;
        loop {
            let mut refused = false;
            let mut rank = 0;
            while rank < order.len() {
                if returned.is_none() && order.len() > 1 && skip == Some(order[rank]) {
                    rank += 1;
                    continue;
                }
                let (index, opened) = match returned.take() {
                    Some((index, socket, session)) => (index, Ok((socket, session))),
                    None => (order[rank], self.connect(order[rank]).await),
                };
                rank = order.iter().position(|&i| i == index).unwrap_or(rank);
                let endpoint = self.settings.masters[index].endpoint.clone();
                match opened {
                    Ok((socket, session)) => {
                        failures = 0;
                        tracing::info!(master = %endpoint, rank, "Session with the master is up.");
                        if self.inbound.send(LinkEvent::Up).await.is_err() {
                            return;
                        }
                        let better: Vec<usize> = order[..rank].to_vec();
                        match self.pump(socket, session, better).await {
                            End::Cancelled => return,
                            End::Returned(index, socket, session) => {
                                tracing::info!(from = %endpoint, to = %self.settings.masters[index].endpoint, "A better-ranked master answers again; moving back to it.");
                                returned = Some((index, socket, session));
                                continue;
                            }
                            End::Lost(why) => {
                                skip = Some(index);
                                tracing::warn!(master = %endpoint, reason = %why, "Session with the master lost; reconnecting.");
                                let _ = self.inbound.send(LinkEvent::Down(why)).await;
                            }
                            End::Refused(why) => {
                                skip = Some(index);
                                let _ = self.inbound.send(LinkEvent::Down(why.to_string())).await;
                            }
                        }
                        break;
                    }
                    Err(End::Cancelled) => return,
                    Err(End::Refused(why)) => {
                        refused = true;
                        tracing::error!(master = %endpoint, reason = %why, "Refusing to talk to this master.");
                    }
                    Err(End::Lost(why)) => {
                        if failures == 0 || failures.is_power_of_two() {
                            tracing::warn!(master = %endpoint, reason = %why, rounds = failures + 1, "Cannot reach the master; trying the next.");
                        }
                    }
                    Err(End::Returned(..)) => {}
                }
                rank += 1;
            }
            if rank >= order.len() {
                skip = None;
                // No master answered in this round. A refusal (a master
                // that is not ours) slows the retries down more.
                failures = failures.saturating_add(if refused { 8 } else { 1 });
            }
            let delay = self.settings.backoff.delay(failures);
            tokio::select! {
                () = self.cancel.cancelled() => return,
                () = tokio::time::sleep(delay) => {}
            }
        }
    }

    async fn connect(&self, master: usize) -> Result<(DealerSocket, Session), End> {
        open(&self.settings, master, &self.cancel).await
    }

    /// Pumps one session until it ends; meanwhile, while `better` (the
    /// masters ranked above this one, best first) is not empty, probes
    /// them every [`crate::masters::return_delay`] and ends with
    /// [`End::Returned`] when one answers.
    async fn pump(&mut self, mut socket: DealerSocket, mut session: Session, better: Vec<usize>) -> End {
        let mut monitor = socket.monitor();
        let (mut send, mut recv) = socket.split();
        self.status.send_modify(|s| s.connected = true);
        let settings = self.settings.clone();
        let cancel = self.cancel.clone();
        let end = tokio::select! {
            end = self.pump_session(&mut send, &mut recv, &mut monitor, &mut session) => end,
            found = probe_better(&settings, &better, &cancel) => match found {
                Some((index, socket, session)) => End::Returned(index, socket, session),
                None => End::Cancelled,
            },
        };
        self.status.send_modify(|s| s.connected = false);
        end
    }

    async fn pump_session(
        &mut self,
        send: &mut zeromq::DealerSendHalf,
        recv: &mut zeromq::DealerRecvHalf,
        monitor: &mut (impl futures_util::Stream<Item = SocketEvent> + Unpin),
        session: &mut Session,
    ) -> End {
        // Everything pending is sent again on a new session: the master may
        // not have handled it, and drops what it already has by id.
        let mut sent_upto: Option<u64> = None;
        let mut heartbeat = tokio::time::interval(self.settings.heartbeat);
        heartbeat.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut last_heard = Instant::now();
        if let Err(end) = self.send_pending(send, session, &mut sent_upto).await {
            return end;
        }
        loop {
            tokio::select! {
                biased;
                () = self.cancel.cancelled() => return End::Cancelled,
                received = recv.recv() => {
                    let message = match received {
                        Ok(message) => message,
                        Err(e) => return End::Lost(format!("receive: {e}")),
                    };
                    last_heard = Instant::now();
                    let opened = session.open(&message);
                    if let Ok(MasterMessage::Job(job)) = &opened {
                        halite_fs::hops::mark("agent.job.recv", job.id.0);
                    }
                    match opened {
                        Ok(MasterMessage::Ack { event: id } | MasterMessage::ResultAck { job: id }) => {
                            if self.acks.send(id).await.is_err() {
                                return End::Cancelled;
                            }
                        }
                        Ok(MasterMessage::Acks(ids)) => {
                            for id in ids {
                                if self.acks.send(id).await.is_err() {
                                    return End::Cancelled;
                                }
                            }
                        }
                        Ok(MasterMessage::Pong) => {}
                        Ok(message) => {
                            if self.inbound.send(LinkEvent::Message(message)).await.is_err() {
                                return End::Cancelled;
                            }
                        }
                        Err(error) => tracing::warn!(%error, "Dropping an unreadable message from the master."),
                    }
                }
                event = monitor.next() => match event {
                    Some(SocketEvent::Disconnected(_)) | None => return End::Lost("disconnected".into()),
                    Some(_) => {}
                },
                () = self.stored.notified() => {
                    if let Err(end) = self.send_pending(send, session, &mut sent_upto).await {
                        return end;
                    }
                }
                _ = heartbeat.tick() => {
                    if last_heard.elapsed() > self.settings.heartbeat * 3 {
                        return End::Lost("the master stopped answering".into());
                    }
                    let sealed = match session.seal(&AgentMessage::Ping) {
                        Ok(sealed) => sealed,
                        Err(e) => return End::Lost(format!("seal: {e}")),
                    };
                    if let Err(e) = send.send(sealed).await {
                        return End::Lost(format!("send: {e}"));
                    }
                }
            }
        }
    }

    /// Sends what the outbox holds after `sent_upto`, in order, events
    /// that wait together in batches.
    async fn send_pending(
        &self,
        send: &mut zeromq::DealerSendHalf,
        session: &mut Session,
        sent_upto: &mut Option<u64>,
    ) -> Result<(), End> {
        let pending = self.outbox.lock().await.pending_after(*sent_upto);
        for (seq, message) in batch_events(pending, EVENTS_PER_MESSAGE) {
            for sealed in session.seal_batch(&message).map_err(|e| End::Lost(format!("seal: {e}")))? {
                send.send(sealed).await.map_err(|e| End::Lost(format!("send: {e}")))?;
            }
            mark_sent(&message);
            *sent_upto = Some(seq);
        }
        Ok(())
    }
}

/// Opens a session with `settings.masters[master]`: connect, handshake,
/// check the master's key, say hello. Ends when `cancel` fires.
async fn open(
    settings: &LinkSettings,
    master: usize,
    cancel: &CancellationToken,
) -> Result<(DealerSocket, Session), End> {
    let Some(target) = settings.masters.get(master) else {
        return Err(End::Lost(format!("no master number {master}")));
    };
    // The link's transport limits hold before the master is
    // authenticated: a fake master cannot make the agent allocate.
    let mut options = halite_link::transport::socket_options(halite_link::transport::HANDSHAKE_TIMEOUT);
    options.connect_timeout(Duration::from_secs(5));
    let mut socket = DealerSocket::with_options(options);
    let lost = |what: &str, e: &dyn std::fmt::Display| End::Lost(format!("{what}: {e}"));
    tokio::select! {
        () = cancel.cancelled() => return Err(End::Cancelled),
        result = socket.connect(&target.endpoint) => result.map_err(|e| lost("connect", &e))?,
    }
    let (mut initiator, first) = Initiator::start(&settings.keypair).map_err(|e| lost("handshake", &e))?;
    socket
        .send(frames(Envelope::handshake(envelope::HELLO1, first)).map_err(|e| End::Lost(e.to_string()))?)
        .await
        .map_err(|e| lost("handshake", &e))?;
    let reply = tokio::select! {
        () = cancel.cancelled() => return Err(End::Cancelled),
        reply = tokio::time::timeout(settings.heartbeat * 3, socket.recv()) => reply,
    };
    let reply =
        reply.map_err(|_| End::Lost("no answer to the handshake".into()))?.map_err(|e| lost("handshake", &e))?;
    let reply_frames: Vec<&[u8]> = reply.iter().map(|f| f.as_ref()).collect();
    let Ok(Envelope::Hello2(reply)) = Envelope::parse(&reply_frames) else {
        return Err(End::Lost("the master answered the handshake with something else".into()));
    };
    let master_key = initiator.read_reply(reply).map_err(|e| lost("handshake", &e))?;
    check_master(&target.trust, master_key).map_err(End::Refused)?;
    let hello = halite_proto::encode(&AgentMessage::Hello(settings.hello.clone()));
    let (last, sealer, opener) = initiator.finish(&hello).map_err(|e| lost("handshake", &e))?;
    socket
        .send(frames(Envelope::handshake(envelope::HELLO3, last)).map_err(|e| End::Lost(e.to_string()))?)
        .await
        .map_err(|e| lost("handshake", &e))?;
    Ok((socket, Session { sealer, opener }))
}

/// Tries the masters `better` (indices, best first) one after the other,
/// every [`crate::masters::return_delay`], until one opens a session;
/// `None` when cancelled.
async fn probe_better(
    settings: &LinkSettings,
    better: &[usize],
    cancel: &CancellationToken,
) -> Option<(usize, DealerSocket, Session)> {
    if better.is_empty() {
        cancel.cancelled().await;
        return None;
    }
    loop {
        tokio::select! {
            () = cancel.cancelled() => return None,
            () = tokio::time::sleep(crate::masters::return_delay(settings.return_probe)) => {}
        }
        for &index in better {
            match open(settings, index, cancel).await {
                Ok((socket, session)) => return Some((index, socket, session)),
                Err(End::Cancelled) => return None,
                Err(_) => {
                    tracing::debug!(master = %settings.masters[index].endpoint, "A better-ranked master does not answer yet.")
                }
            }
        }
    }
}

/// Hop timing: `message` was handed to the socket.
fn mark_sent(message: &AgentMessage) {
    if !halite_fs::hops::enabled() {
        return;
    }
    match message {
        AgentMessage::Events(events) => events.iter().for_each(|e| halite_fs::hops::mark("agent.sent", e.id.0)),
        other => crate::outbox::key_of(other).into_iter().for_each(|id| halite_fs::hops::mark("agent.sent", id.0)),
    }
}

/// Merges each run of consecutive events in `pending` (sequence number,
/// message; in send order) into [`AgentMessage::Events`] of at most `max`
/// events, keeping the order of everything; a run of one stays an
/// [`AgentMessage::Event`]. Each message comes with the sequence number of
/// the last message it carries.
pub fn batch_events(pending: Vec<(u64, AgentMessage)>, max: usize) -> Vec<(u64, AgentMessage)> {
    let mut out: Vec<(u64, AgentMessage)> = Vec::with_capacity(pending.len());
    // The run of events being gathered, and the seq of its last one.
    let mut run: Vec<halite_proto::Event> = Vec::new();
    let mut run_end = 0;
    for (seq, message) in pending {
        match message {
            AgentMessage::Event(event) => {
                if run.len() >= max.max(1) {
                    end_run(&mut out, &mut run, run_end);
                }
                run.push(event);
                run_end = seq;
            }
            other => {
                end_run(&mut out, &mut run, run_end);
                out.push((seq, other));
            }
        }
    }
    end_run(&mut out, &mut run, run_end);
    out
}

/// Appends the gathered run of events to `out`: one alone as itself.
fn end_run(out: &mut Vec<(u64, AgentMessage)>, run: &mut Vec<halite_proto::Event>, last_seq: u64) {
    match run.len() {
        0 => {}
        1 => out.extend(run.pop().map(|event| (last_seq, AgentMessage::Event(event)))),
        _ => out.push((last_seq, AgentMessage::Events(std::mem::take(run)))),
    }
}

/// Is `key` the master this agent trusts? With trust on first use, the
/// first key seen is stored and pinned from then on.
///
/// The pin fails closed: a new key is pinned only when the pin file does
/// not exist (written atomically, so a crash leaves the old state or the
/// whole pin); a pin file that cannot be read, does not hold a key, or
/// that another user could have written is a refusal, never a re-pin.
fn check_master(trust: &MasterTrust, key: PublicKey) -> Result<(), TrustError> {
    let pinned = match trust {
        MasterTrust::Pinned(pinned) => *pinned,
        MasterTrust::FirstUse(store) => {
            let refuse = |why: String| TrustError::Unusable { path: store.clone(), why };
            match std::fs::read(store) {
                Ok(bytes) => {
                    halite_fs::strict::check_file(store, false).map_err(|e| refuse(e.to_string()))?;
                    std::str::from_utf8(&bytes)
                        .map_err(|_| refuse(format!("the pinned master key {} is not text", store.display())))?
                        .parse::<PublicKey>()
                        .map_err(|e| refuse(format!("the pinned master key {}: {e}", store.display())))?
                }
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                    halite_fs::write_atomic(store, format!("{key}\n").as_bytes(), 0o600)
                        .map_err(|source| TrustError::Store { path: store.clone(), source })?;
                    tracing::warn!(fingerprint = %key, path = %store.display(), "Trusting the master's key on first use; it is pinned from now on.");
                    key
                }
                Err(e) => return Err(refuse(format!("cannot read the pinned master key {}: {e}", store.display()))),
            }
        }
    };
    if key == pinned { Ok(()) } else { Err(TrustError::Mismatch { key, pinned }) }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn trust_on_first_use_pins_the_first_key() {
        let dir = tempfile::tempdir().unwrap();
        let trust = MasterTrust::FirstUse(dir.path().join("master.pub"));
        let (first, second) = (Keypair::generate().unwrap().public, Keypair::generate().unwrap().public);
        check_master(&trust, first).unwrap();
        check_master(&trust, first).unwrap();
        let refusal = check_master(&trust, second).unwrap_err().to_string();
        assert!(refusal.contains(&first.to_string()) && refusal.contains(&second.to_string()), "{refusal}");
        assert!(check_master(&MasterTrust::Pinned(first), second).is_err());
    }

    /// Two bytes that are not UTF-8 once made the agent pin the next master
    /// it met; a pin that does not read is now a refusal that names it.
    #[test]
    fn a_garbled_or_unreadable_pin_is_a_refusal_never_a_re_pin() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("master.pub");
        let trust = MasterTrust::FirstUse(path.clone());
        let other = Keypair::generate().unwrap().public;
        for garbage in [&b"\xff\xfe"[..], b"", b"not a key\n"] {
            std::fs::write(&path, garbage).unwrap();
            let refusal = check_master(&trust, other).unwrap_err().to_string();
            assert!(refusal.contains(&path.display().to_string()) && refusal.contains("master_key"), "{refusal}");
            assert_eq!(std::fs::read(&path).unwrap(), garbage, "the pin is left as it was");
        }
        // A directory where the pin should be: unreadable as a file.
        std::fs::remove_file(&path).unwrap();
        std::fs::create_dir(&path).unwrap();
        assert!(check_master(&trust, other).is_err());
        std::fs::remove_dir(&path).unwrap();
        // A pin others could have written is not trusted.
        std::fs::write(&path, format!("{other}\n")).unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o666)).unwrap();
        let refusal = check_master(&trust, other).unwrap_err().to_string();
        assert!(refusal.contains("chmod go-w"), "{refusal}");
    }

    #[test]
    fn waiting_events_travel_together_in_order() {
        let event = |n: i64| AgentMessage::Event(halite_proto::Event::new("halite/beacon/a/x", "a", n.into()));
        let result = |n: u128| AgentMessage::JobResult(halite_proto::JobResult { job: Id(n), results: Vec::new() });
        let pending: Vec<(u64, AgentMessage)> = vec![
            (0, event(0)),
            (1, event(1)),
            (2, event(2)),
            (3, result(1)),
            (4, event(3)),
            (5, result(2)),
            (6, event(4)),
            (7, event(5)),
        ];
        let sent = batch_events(pending.clone(), 2);
        let shape: Vec<(u64, usize)> = sent
            .iter()
            .map(|(seq, m)| match m {
                AgentMessage::Events(events) => (*seq, events.len()),
                AgentMessage::Event(_) => (*seq, 1),
                _ => (*seq, 0),
            })
            .collect();
        assert_eq!(shape, [(1, 2), (2, 1), (3, 0), (4, 1), (5, 0), (7, 2)]);
        // Nothing lost, nothing reordered.
        let flat: Vec<AgentMessage> = sent
            .into_iter()
            .flat_map(|(_, m)| match m {
                AgentMessage::Events(events) => events.into_iter().map(AgentMessage::Event).collect(),
                other => vec![other],
            })
            .collect();
        assert_eq!(flat, pending.into_iter().map(|(_, m)| m).collect::<Vec<_>>());
        let alone = event(9);
        assert_eq!(batch_events(vec![(9, alone.clone())], 256), [(9, alone)]);
    }

    #[test]
    fn an_oversized_batch_is_sent_event_by_event() {
        let (agent, master) = (Keypair::generate().unwrap(), Keypair::generate().unwrap());
        let (mut initiator, first) = Initiator::start(&agent).unwrap();
        let (responder, reply) = halite_link::Responder::respond(&master, &first).unwrap();
        initiator.read_reply(&reply).unwrap();
        let (last, sealer, opener) = initiator.finish(b"hello").unwrap();
        let _ = responder.finish(&last).unwrap();
        let mut session = Session::new(sealer, opener);
        let big = "x".repeat(MAX_BATCH_BYTES / 3);
        let events: Vec<halite_proto::Event> =
            (0..4).map(|_| halite_proto::Event::new("halite/beacon/a/x", "a", big.as_str().into())).collect();
        assert_eq!(session.seal_batch(&AgentMessage::Events(events.clone())).unwrap().len(), 4);
        assert_eq!(session.seal_batch(&AgentMessage::Events(events[..2].to_vec())).unwrap().len(), 1);
    }
}

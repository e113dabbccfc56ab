//! One simulated agent: a tokio task with its own key pair, DEALER socket,
//! Noise session and directory.
//!
//! It speaks the real protocol (`halite_link` handshake and sealing,
//! `halite_proto` messages), answers every job by applying it with the real
//! state engine under its own root, and reconnects with backoff when the
//! session ends (as the agent's `link.rs` does). Its one pending drift is
//! sent again on every new session until it is restored. Other events are
//! kept until the master acknowledges them and sent again on a new session
//! only when the swarm is told to (`SwarmSettings::resend_unacked`, as the
//! real agent's outbox does; `cluster` sets it): the single-master ingest
//! measures the master, not this bookkeeping, and there an event lost with
//! a session shows as an ingest that never completes.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures_util::StreamExt;
use halite_link::envelope::{self, Envelope};
use halite_link::{Initiator, Keypair, PublicKey};
use halite_proto::event::tag;
use halite_proto::{AgentMessage, Event, Hello, Id, Job, JobResult, MasterMessage, Outcome, Sha256, StateCall, Value};
use halite_state::ApplyEnv;
use tokio::sync::{Semaphore, mpsc};
use tokio_util::sync::CancellationToken;
use zeromq::{DealerSocket, Socket, SocketEvent, SocketRecv, SocketSend};

use halite_agent::link::{EVENTS_PER_MESSAGE, RECONNECT, Session, SessionError, frames};
use halite_state::paths::rooted_call;

/// What a simulated agent can be told to do.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Command {
    /// Overwrite the managed file and send the drift event the file beacon
    /// would send; report when the master's restore has been applied.
    Drift,
    /// Send this many events (tag `halite/beacon/<id>/load`) as fast as
    /// the link takes them, batched as the real agent batches events that
    /// wait to go out; report when the last one was handed to it.
    Emit(usize),
}

/// Commands waiting for one agent. When full, the swarm waits.
pub const COMMAND_CAPACITY: usize = 16;

/// What the drift writes over the managed file.
pub const DRIFTED: &[u8] = b"drifted by halite-swarm\n";

/// What every agent of a swarm shares.
#[derive(Debug)]
pub(crate) struct Shared {
    /// The masters' agent links. With several, each agent ranks them as the
    /// real agent does (`halite_agent::masters::rank`) and walks down its
    /// ranking until one answers.
    pub endpoints: Vec<String>,
    pub master_key: PublicKey,
    /// The authored path of the managed file (`/etc/motd`), rooted per agent.
    pub managed_path: String,
    /// The file beacon's name in the tree, for the drift event's tag.
    pub beacon: String,
    /// Handshakes in flight across the swarm: the master keeps at most
    /// 1024 half-open handshakes and evicts the oldest beyond that.
    pub handshakes: Semaphore,
    pub reports: mpsc::Sender<Report>,
    pub heartbeat: Duration,
    /// Keep sent events until acknowledged and send them again on the
    /// next session ([`Unacked`]).
    pub resend_unacked: bool,
    /// Events the master has acknowledged, swarm-wide: an ack goes once
    /// the events are handed to the master's publisher (and, on
    /// PostgreSQL, recorded), so this counts what reached the bus without
    /// a subscriber that could fall behind.
    pub acknowledged: std::sync::atomic::AtomicUsize,
    pub cancel: CancellationToken,
}

/// One agent's identity and directory.
#[derive(Debug)]
pub struct AgentSpec {
    pub index: usize,
    pub id: String,
    pub root: PathBuf,
    pub keypair: Keypair,
}

impl AgentSpec {
    /// Where an authored absolute path is for this agent.
    pub fn path(&self, authored: &str) -> PathBuf {
        halite_state::paths::rooted(&self.root, Path::new(authored))
    }
}

/// A drift waiting for its restore. Its event is sent again on each new
/// session until the restore comes (the real agent's outbox keeps an
/// unacknowledged event the same way; the master records an event id
/// once), so a session lost in a storm does not lose the drift.
struct PendingDrift {
    event: Event,
    at: Instant,
}

/// Events sent and not acknowledged yet, in the order they were made (ids
/// made in one process increase), sent again on the next session as the
/// real agent's outbox sends them; the master records an event id once.
#[derive(Default)]
struct Unacked(BTreeMap<Id, Event>);

impl Unacked {
    fn keep(&mut self, events: &[Event]) {
        self.0.extend(events.iter().map(|event| (event.id, event.clone())));
    }

    fn acknowledged(&mut self, ids: &[Id]) {
        for id in ids {
            self.0.remove(id);
        }
    }

    /// What to send again on a new session, as messages of at most
    /// [`EVENTS_PER_MESSAGE`] events.
    fn messages(&self) -> Vec<AgentMessage> {
        let events: Vec<Event> = self.0.values().cloned().collect();
        events.chunks(EVENTS_PER_MESSAGE).map(|chunk| AgentMessage::Events(chunk.to_vec())).collect()
    }
}

/// An `Emit` command in progress: it goes on across sessions, so a session
/// lost half-way does not lose the rest.
struct Emitting {
    left: usize,
    total: usize,
    started: Instant,
}

/// What one agent carries from one session to the next.
#[derive(Default)]
struct Carried {
    drift: Option<PendingDrift>,
    unacked: Unacked,
    emitting: Option<Emitting>,
}

/// Runs one agent until the swarm is cancelled.
pub(crate) async fn run(spec: AgentSpec, shared: Arc<Shared>, mut commands: mpsc::Receiver<Command>) {
    let order = halite_agent::masters::rank(&spec.id, &shared.endpoints);
    let mut failures: u32 = 0;
    let mut carried = Carried::default();
    // The master whose session was just lost: skipped in the next round,
    // as the real agent's link does, so a dead master costs no timeout.
    let mut skip: Option<usize> = None;
    loop {
        let mut answered = false;
        for &master in &order {
            if order.len() > 1 && skip == Some(master) {
                continue;
            }
            let connected = {
                let _permit = tokio::select! {
                    () = shared.cancel.cancelled() => return,
                    permit = shared.handshakes.acquire() => permit,
                };
                tokio::select! {
                    () = shared.cancel.cancelled() => return,
                    connected = connect(&spec, &shared, master) => connected,
                }
            };
            match connected {
                Ok((socket, session)) => {
                    failures = 0;
                    answered = true;
                    let _ = shared.reports.send(Report::Up { agent: spec.index, master }).await;
                    let Some(reason) = pump(&spec, &shared, socket, session, &mut commands, &mut carried).await else {
                        return;
                    };
                    skip = Some(master);
                    let _ = shared.reports.send(Report::Down { agent: spec.index, reason }).await;
                    break;
                }
                Err(reason) => {
                    tracing::debug!(agent = %spec.id, master = %shared.endpoints[master], %reason, "Cannot reach the master; trying the next.");
                }
            }
        }
        if !answered {
            skip = None;
            failures = failures.saturating_add(1);
        }
        tokio::select! {
            () = shared.cancel.cancelled() => return,
            () = tokio::time::sleep(RECONNECT.delay(failures)) => {}
        }
    }
}

/// Why a simulated agent could not open a session with the master.
#[derive(Debug, thiserror::Error)]
enum ConnectError {
    #[error("connect: {0}")]
    Connect(zeromq::ZmqError),
    #[error("send: {0}")]
    Send(zeromq::ZmqError),
    #[error("handshake: {0}")]
    Receive(zeromq::ZmqError),
    #[error("no answer to the handshake")]
    NoAnswer,
    #[error("the master answered the handshake with something else")]
    Unexpected,
    /// The Noise handshake itself (the link's error says what failed).
    #[error(transparent)]
    Handshake(#[from] halite_link::LinkError),
    #[error(transparent)]
    Frames(#[from] SessionError),
    #[error("the master's key is {key}, expected {expected}")]
    WrongMaster { key: PublicKey, expected: PublicKey },
}

async fn connect(spec: &AgentSpec, shared: &Shared, master: usize) -> Result<(DealerSocket, Session), ConnectError> {
    let mut options = halite_link::transport::socket_options(halite_link::transport::HANDSHAKE_TIMEOUT);
    options.connect_timeout(Duration::from_secs(5));
    let mut socket = DealerSocket::with_options(options);
    socket.connect(&shared.endpoints[master]).await.map_err(ConnectError::Connect)?;
    let (mut initiator, first) = Initiator::start(&spec.keypair)?;
    socket.send(frames(Envelope::handshake(envelope::HELLO1, first))?).await.map_err(ConnectError::Send)?;
    let reply = tokio::time::timeout(shared.heartbeat * 3, socket.recv())
        .await
        .map_err(|_| ConnectError::NoAnswer)?
        .map_err(ConnectError::Receive)?;
    let reply_frames: Vec<&[u8]> = reply.iter().map(|f| f.as_ref()).collect();
    let Ok(Envelope::Hello2(reply)) = Envelope::parse(&reply_frames) else {
        return Err(ConnectError::Unexpected);
    };
    let master_key = initiator.read_reply(reply)?;
    if master_key != shared.master_key {
        return Err(ConnectError::WrongMaster { key: master_key, expected: shared.master_key });
    }
    let hello = AgentMessage::Hello(Hello {
        agent: spec.id.clone(),
        version: concat!("halite-swarm ", env!("CARGO_PKG_VERSION")).into(),
        facts: Value::map().with("swarm", true),
    });
    let (last, sealer, opener) = initiator.finish(&halite_proto::encode(&hello))?;
    socket.send(frames(Envelope::handshake(envelope::HELLO3, last))?).await.map_err(ConnectError::Send)?;
    Ok((socket, Session::new(sealer, opener)))
}

/// Serves one session. `None` when the swarm is cancelled, else why the
/// session ended.
async fn pump(
    spec: &AgentSpec,
    shared: &Shared,
    mut socket: DealerSocket,
    mut session: Session,
    commands: &mut mpsc::Receiver<Command>,
    carried: &mut Carried,
) -> Option<String> {
    let Carried { drift, unacked, emitting } = carried;
    let mut monitor = socket.monitor();
    let (mut send, mut recv) = socket.split();
    let mut heartbeat = tokio::time::interval(shared.heartbeat);
    heartbeat.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut last_heard = Instant::now();
    macro_rules! send {
        ($message:expr) => {{
            let sealed = match session.seal(&$message) {
                Ok(sealed) => sealed,
                Err(e) => return Some(format!("seal: {e}")),
            };
            if let Err(e) = send.send(sealed).await {
                return Some(format!("send: {e}"));
            }
        }};
    }
    if let Some(pending) = drift.as_ref() {
        send!(AgentMessage::Event(pending.event.clone()));
    }
    for message in unacked.messages() {
        send!(message);
    }
    loop {
        tokio::select! {
            biased;
            () = shared.cancel.cancelled() => return None,
            received = recv.recv() => {
                let message = match received {
                    Ok(message) => message,
                    Err(e) => return Some(format!("receive: {e}")),
                };
                last_heard = Instant::now();
                match session.open(&message) {
                    Ok(MasterMessage::Job(job)) => {
                        let (cause, jid) = (job.cause_event, job.id);
                        let result = apply(spec, shared, job).await;
                        let failed = result.results.iter().any(|r| r.outcome.is_failed()) || result.results.is_empty();
                        let changed = result.results.iter().any(|r| matches!(r.outcome, Outcome::Changed { .. }));
                        send!(AgentMessage::JobResult(result));
                        let report = match (cause, drift.as_ref()) {
                            (Some(cause), Some(pending)) if cause == pending.event.id => {
                                let latency = pending.at.elapsed();
                                *drift = None;
                                Report::Restored { agent: spec.index, latency, failed, changed }
                            }
                            // A session's start-up apply while a drift is
                            // pending enforces the whole state, the drifted
                            // file included: that is the drift's restore when
                            // the session carrying the reaction was lost (the
                            // event was already reacted to, so no master
                            // reacts to it again).
                            (None, Some(pending)) => {
                                let latency = pending.at.elapsed();
                                *drift = None;
                                Report::Restored { agent: spec.index, latency, failed, changed }
                            }
                            (None, None) => Report::Converged { agent: spec.index, failed },
                            _ => Report::OtherJob { agent: spec.index, job: jid },
                        };
                        let _ = shared.reports.send(report).await;
                    }
                    Ok(MasterMessage::NotAccepted { status }) => {
                        let _ = shared.reports.send(Report::NotAccepted { agent: spec.index, status }).await;
                    }
                    Ok(MasterMessage::Ack { event }) => {
                        shared.acknowledged.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                        unacked.acknowledged(&[event]);
                    }
                    Ok(MasterMessage::Acks(events)) => {
                        shared.acknowledged.fetch_add(events.len(), std::sync::atomic::Ordering::Relaxed);
                        unacked.acknowledged(&events);
                    }
                    Ok(MasterMessage::Welcome(_) | MasterMessage::Beacons(_) | MasterMessage::ResultAck { .. } | MasterMessage::Pong | MasterMessage::Inventory { .. } | MasterMessage::Secrets(_)) => {}
                    Err(error) => tracing::warn!(agent = %spec.id, %error, "Dropping an unreadable message from the master."),
                }
            }
            event = monitor.next() => match event {
                Some(SocketEvent::Disconnected(_)) | None => return Some("disconnected".into()),
                Some(_) => {}
            },
            () = std::future::ready(()), if emitting.is_some() => {
                // One message per turn of the loop, so that what the
                // master sends (acks, jobs) is read between them.
                let Some(progress) = emitting.as_mut() else { continue };
                let batch = EVENTS_PER_MESSAGE.min(progress.left);
                let first = progress.total - progress.left;
                let events: Vec<Event> = (first..first + batch)
                    .map(|n| Event::new(tag::beacon(&spec.id, "load"), spec.id.as_str(), Value::map().with("n", n as i64)))
                    .collect();
                progress.left -= batch;
                if shared.resend_unacked {
                    unacked.keep(&events);
                }
                match <[Event; 1]>::try_from(events) {
                    Ok([event]) => send!(AgentMessage::Event(event)),
                    Err(events) => send!(AgentMessage::Events(events)),
                }
                if progress.left == 0 {
                    let report = Report::Emitted { agent: spec.index, events: progress.total, elapsed: progress.started.elapsed() };
                    *emitting = None;
                    let _ = shared.reports.send(report).await;
                }
            }
            command = commands.recv() => match command {
                None => return None,
                Some(Command::Drift) => {
                    let event = match drift_file(spec, shared).await {
                        Ok(event) => event,
                        Err(e) => {
                            tracing::error!(agent = %spec.id, error = %e, "Cannot drift the managed file.");
                            continue;
                        }
                    };
                    *drift = Some(PendingDrift { event: event.clone(), at: Instant::now() });
                    send!(AgentMessage::Event(event));
                }
                Some(Command::Emit(count)) => *emitting = Some(Emitting { left: count, total: count, started: Instant::now() }),
            },
            _ = heartbeat.tick() => {
                if last_heard.elapsed() > shared.heartbeat * 3 {
                    return Some("the master stopped answering".into());
                }
                send!(AgentMessage::Ping);
            }
        }
    }
}

/// Overwrites the managed file and builds the event the file beacon sends
/// for it (same tag and data shape as `beacons/file.rs`).
async fn drift_file(spec: &AgentSpec, shared: &Shared) -> std::io::Result<Event> {
    let path = spec.path(&shared.managed_path);
    tokio::fs::write(&path, DRIFTED).await?;
    let data = Value::map()
        .with("path", shared.managed_path.as_str())
        .with("kind", "modify")
        .with("sha256", Sha256::of(DRIFTED).to_hex())
        .with("mode", "0644")
        .with("managed", true);
    Ok(Event::new(tag::beacon(&spec.id, &shared.beacon), spec.id.as_str(), data))
}

/// Applies a job under the agent's root, off the runtime's threads.
async fn apply(spec: &AgentSpec, _shared: &Shared, job: Job) -> JobResult {
    let root = spec.root.clone();
    let jid = job.id;
    let applied = tokio::task::spawn_blocking(move || {
        let calls: Vec<StateCall> = job.states.iter().map(|call| rooted_call(call, &root)).collect();
        halite_state::run_states(&calls, job.test, &ApplyEnv { root, ..ApplyEnv::default() })
    })
    .await;
    match applied {
        Ok(results) => JobResult { job: jid, results },
        Err(panic) => {
            tracing::error!(agent = %spec.id, job = %jid, error = %panic, "A job panicked.");
            JobResult { job: jid, results: Vec::new() }
        }
    }
}

/// What an agent tells the swarm.
#[derive(Debug, Clone, PartialEq)]
pub enum Report {
    /// A session is up (the handshake finished) with `master` (an index
    /// into the swarm's endpoints).
    Up { agent: usize, master: usize },
    /// The session ended; the agent is reconnecting.
    Down { agent: usize, reason: String },
    /// The master does not accept the agent's key (yet).
    NotAccepted { agent: usize, status: String },
    /// A job not caused by an event (the start-up apply) was applied and
    /// its result sent.
    Converged { agent: usize, failed: bool },
    /// The job restoring the agent's last drift was applied, `latency`
    /// after the drift was written; its result has been sent. `changed`:
    /// the apply rewrote something (as it must after a drift).
    Restored { agent: usize, latency: Duration, failed: bool, changed: bool },
    /// Another job was applied.
    OtherJob { agent: usize, job: Id },
    /// An `Emit` command's events were all handed to the link.
    Emitted { agent: usize, events: usize, elapsed: Duration },
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unacknowledged_events_are_sent_again_in_order_and_acknowledged_ones_are_not() {
        let events: Vec<Event> = (0..EVENTS_PER_MESSAGE + 2)
            .map(|n| Event::new(tag::beacon("a", "load"), "a", Value::map().with("n", n as i64)))
            .collect();
        let mut unacked = Unacked::default();
        unacked.keep(&events);
        unacked.acknowledged(&[events[1].id, Id::new()]);
        let again: Vec<Id> = unacked
            .messages()
            .into_iter()
            .flat_map(|message| match message {
                AgentMessage::Events(events) => {
                    assert!(events.len() <= EVENTS_PER_MESSAGE);
                    events
                }
                other => panic!("not an events message: {other:?}"),
            })
            .map(|event| event.id)
            .collect();
        let expected: Vec<Id> = events.iter().map(|e| e.id).filter(|id| *id != events[1].id).collect();
        assert_eq!(again, expected);
        unacked.acknowledged(&expected);
        assert!(unacked.messages().is_empty());
    }
}

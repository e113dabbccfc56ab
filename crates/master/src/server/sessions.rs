//! The table of sessions: which ROUTER peer is which agent, with which key,
//! whether that key is accepted, and the sealer for messages to it.

use std::collections::{HashMap, HashSet, VecDeque};
use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::SystemTime;

use bytes::Bytes;
use halite_link::{Envelope, PublicKey, Sealer};
use halite_proto::{Id, MasterMessage, Value};
use zeromq::{RouterSendHalf, SocketSend, ZmqMessage};

/// Event and job ids remembered per agent to drop duplicates of replayed
/// messages. Kept per agent, not per connection, so a resend after a
/// reconnect is recognised, and in the seen-ids log (see
/// [`Sessions::remember_in`]) so that one after a master restart is too.
pub const RECENT_IDS: usize = 4096;

/// The newest records of the seen-ids log a starting master forgets. An
/// event is logged once the publisher handed it to the PUB socket, whose
/// per-subscriber queues are in memory: after a kill, the last ones logged
/// may never have reached a subscriber. Their resends (the agent had no
/// ack, or the ack came too late) are published again instead of dropped.
/// Larger than what a subscriber that keeps up has queued at any moment.
pub const FORGOTTEN_AT_START: usize = 4096;

#[derive(Debug)]
pub struct PeerSession {
    pub agent: String,
    pub key: PublicKey,
    /// Only an accepted session's messages reach the bus and the reactors.
    pub accepted: bool,
    pub facts: Value,
    pub since: SystemTime,
    /// The agent's version, from its hello: kept for a session accepted
    /// later by an operator, whose welcome announces it.
    pub version: String,
    /// Held across sealing *and* sending, so messages leave in nonce order.
    sealer: Arc<tokio::sync::Mutex<Sealer>>,
    /// With several masters: this session's epoch in `agent_sessions`,
    /// once `cluster/epochs.rs` has written it (`None` until then). The
    /// events recorded for the agent carry it, and the store's fence
    /// refuses them when another master holds a newer one.
    pub epoch: Option<i64>,
}

/// The last [`RECENT_IDS`] ids seen from one agent.
#[derive(Debug, Default)]
struct Recent {
    order: VecDeque<Id>,
    set: HashSet<Id>,
}

#[derive(Debug, Default)]
struct Table {
    /// The remote address of each connection, from the ROUTER's monitor,
    /// for `halite-master agents`; forgotten when the connection closes.
    addresses: HashMap<Bytes, String>,
    by_peer: HashMap<Bytes, PeerSession>,
    /// Accepted sessions only.
    by_agent: HashMap<String, Bytes>,
    /// Per accepted agent, across its sessions.
    recent: HashMap<String, Recent>,
    log: Option<SeenLog>,
}

/// The ids seen, appended as they are first seen: `[agent length: u8]
/// [agent][id: 16 bytes big-endian]` per record. Written (not fsynced)
/// before the message is acknowledged, so it survives a crash of the
/// master, not of the machine. Rewritten with only what is remembered once
/// it holds twice that.
#[derive(Debug)]
struct SeenLog {
    path: PathBuf,
    file: std::fs::File,
    records: usize,
}

#[cfg(test)]
fn seen_record(agent: &str, id: Id) -> Vec<u8> {
    let mut record = Vec::with_capacity(agent.len() + 17);
    push_seen_record(&mut record, agent, id);
    record
}

fn push_seen_record(out: &mut Vec<u8>, agent: &str, id: Id) {
    out.push(u8::try_from(agent.len()).unwrap_or(u8::MAX));
    out.extend_from_slice(&agent.as_bytes()[..agent.len().min(255)]);
    out.extend_from_slice(&id.0.to_be_bytes());
}

impl Recent {
    /// False when `id` was there already.
    fn insert(&mut self, id: Id) -> bool {
        if !self.set.insert(id) {
            return false;
        }
        self.order.push_back(id);
        if self.order.len() > RECENT_IDS
            && let Some(old) = self.order.pop_front()
        {
            self.set.remove(&old);
        }
        true
    }
}

impl Table {
    /// Rewrites the log with what is remembered now.
    fn compact(&mut self) -> std::io::Result<()> {
        let Some(log) = &self.log else { return Ok(()) };
        let mut bytes = Vec::new();
        let mut records = 0;
        for (agent, recent) in &self.recent {
            for id in &recent.order {
                push_seen_record(&mut bytes, agent, *id);
                records += 1;
            }
        }
        halite_fs::write_atomic(&log.path, &bytes, 0o600).map_err(std::io::Error::other)?;
        let file = std::fs::OpenOptions::new().append(true).open(&log.path)?;
        self.log = Some(SeenLog { path: log.path.clone(), file, records });
        Ok(())
    }
}

/// Why a message could not be sent to an agent.
#[derive(Debug, thiserror::Error)]
pub enum SendError {
    #[error("agent `{agent}` is not connected")]
    NotConnected { agent: String },
    #[error("the session is gone")]
    Gone,
    #[error("cannot seal the message: {0}")]
    Seal(halite_link::LinkError),
    #[error("an empty message")]
    Empty,
    /// The peer's queue is full (it is disconnected) or the link stopped.
    #[error("{0}")]
    Transport(zeromq::ZmqError),
}

#[derive(Clone)]
pub struct Sessions {
    table: Arc<Mutex<Table>>,
    sender: RouterSendHalf,
    /// With several masters: told the agent of every accepted session
    /// opened, to bump its session epoch (`cluster/epochs.rs`).
    opened: Arc<std::sync::OnceLock<tokio::sync::mpsc::Sender<String>>>,
    /// With several masters: this master's name among them (its link's
    /// address), which the events it records carry.
    master_name: Arc<std::sync::OnceLock<String>>,
}

impl std::fmt::Debug for Sessions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Sessions").finish_non_exhaustive()
    }
}

impl Sessions {
    pub fn new(sender: RouterSendHalf) -> Self {
        Sessions { table: Arc::default(), sender, opened: Arc::default(), master_name: Arc::default() }
    }

    /// Names this master among several (set once, by `cluster::start`).
    pub fn name_master(&self, name: &str) {
        let _ = self.master_name.set(name.to_owned());
    }

    /// The agent's session here has the epoch `epoch` in `agent_sessions`
    /// (written by `cluster/epochs.rs`). An older epoch than the one known
    /// is ignored.
    pub fn set_epoch(&self, agent: &str, epoch: i64) {
        let mut table = self.lock();
        let Some(peer) = table.by_agent.get(agent).cloned() else { return };
        if let Some(session) = table.by_peer.get_mut(&peer)
            && session.epoch.is_none_or(|known| known < epoch)
        {
            session.epoch = Some(epoch);
        }
    }

    /// The session epoch of the agent's session here, once written.
    pub fn epoch(&self, agent: &str) -> Option<i64> {
        let table = self.lock();
        table.by_agent.get(agent).and_then(|peer| table.by_peer.get(peer)).and_then(|session| session.epoch)
    }

    /// What the agent's recorded events carry for the store's fence: this
    /// master's name and its session's epoch (`None`s for a lone master).
    pub fn fence(&self, agent: &str) -> (Option<String>, Option<i64>) {
        (self.master_name.get().cloned(), self.epoch(agent))
    }

    /// Tells `opened` the agent of every accepted session opened from now
    /// on (never waits: a full queue is logged by the caller's side, not
    /// here, and skipped).
    pub fn tell_opened(&self, opened: tokio::sync::mpsc::Sender<String>) {
        let _ = self.opened.set(opened);
    }

    /// Whether `agent` has an accepted session here.
    pub fn is_served(&self, agent: &str) -> bool {
        self.lock().by_agent.contains_key(agent)
    }

    /// Ends every session of `agent` and closes their connections (another
    /// master serves it now); returns them.
    pub fn close_agent(&self, agent: &str) -> Vec<Bytes> {
        let peers: Vec<Bytes> = {
            let mut table = self.lock();
            let peers: Vec<Bytes> =
                table.by_peer.iter().filter(|(_, s)| s.agent == agent).map(|(p, _)| p.clone()).collect();
            for peer in &peers {
                table.by_peer.remove(peer);
            }
            table.by_agent.remove(agent);
            peers
        };
        for peer in &peers {
            self.disconnect(peer);
        }
        peers
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Table> {
        self.table.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The agent on `peer` and whether its key is accepted.
    pub fn peer(&self, peer: &Bytes) -> Option<(String, bool)> {
        self.lock().by_peer.get(peer).map(|s| (s.agent.clone(), s.accepted))
    }

    /// Records a session that finished its handshake.
    pub fn open(&self, peer: Bytes, agent: &str, key: PublicKey, facts: Value, sealer: Sealer, accepted: bool) {
        let mut table = self.lock();
        let session = PeerSession {
            agent: agent.to_owned(),
            key,
            accepted,
            facts,
            since: SystemTime::now(),
            version: String::new(),
            sealer: Arc::new(tokio::sync::Mutex::new(sealer)),
            epoch: None,
        };
        table.by_peer.insert(peer.clone(), session);
        if accepted {
            Self::claim(&mut table, agent, peer);
            drop(table);
            if let Some(opened) = self.opened.get()
                && opened.try_send(agent.to_owned()).is_err()
            {
                tracing::warn!(agent, "Too many session epochs wait for PostgreSQL; this session's is not written.");
            }
        }
    }

    /// `peer` becomes the agent's session; an older connection of the same
    /// agent is forgotten.
    fn claim(table: &mut Table, agent: &str, peer: Bytes) {
        if let Some(old) = table.by_agent.insert(agent.to_owned(), peer.clone())
            && old != peer
        {
            table.by_peer.remove(&old);
        }
    }

    /// The key was accepted. Its live sessions hold no facts (a pending
    /// key's hello facts are not kept): they end, and their connections
    /// close, so each agent reconnects at once and says hello again, this
    /// time as an accepted agent. Returns how many ended.
    pub fn reconnect_pending(&self, agent: &str, key: &PublicKey) -> usize {
        let peers: Vec<Bytes> = {
            let mut table = self.lock();
            let peers: Vec<Bytes> = table
                .by_peer
                .iter()
                .filter(|(_, s)| s.agent == agent && s.key == *key && !s.accepted)
                .map(|(peer, _)| peer.clone())
                .collect();
            for peer in &peers {
                table.by_peer.remove(peer);
            }
            peers
        };
        for peer in &peers {
            self.disconnect(peer);
        }
        peers.len()
    }

    /// Closes the connection on `peer` at the transport, now (its session,
    /// if any, ends when the link sees it go).
    pub fn disconnect(&self, peer: &Bytes) {
        self.sender.disconnect(peer.clone());
    }

    /// The remote address of the connection on `peer`, if known.
    pub fn address(&self, peer: &Bytes) -> Option<String> {
        self.lock().addresses.get(peer).cloned()
    }

    /// The peers with a session for this agent and key.
    pub fn peers_of(&self, agent: &str, key: &PublicKey) -> Vec<Bytes> {
        self.lock().by_peer.iter().filter(|(_, s)| s.agent == agent && s.key == *key).map(|(p, _)| p.clone()).collect()
    }

    /// The key was rejected or deleted: its sessions end now; returns them.
    pub fn drop_key(&self, agent: &str, key: &PublicKey) -> Vec<Bytes> {
        let mut table = self.lock();
        let peers: Vec<Bytes> =
            table.by_peer.iter().filter(|(_, s)| s.agent == agent && s.key == *key).map(|(p, _)| p.clone()).collect();
        for peer in &peers {
            table.by_peer.remove(peer);
            if table.by_agent.get(agent) == Some(peer) {
                table.by_agent.remove(agent);
            }
        }
        peers
    }

    /// Closes the session on `peer`; returns its agent and whether it was
    /// accepted.
    pub fn close_peer(&self, peer: &Bytes) -> Option<(String, bool)> {
        let mut table = self.lock();
        let session = table.by_peer.remove(peer)?;
        if table.by_agent.get(&session.agent) == Some(peer) {
            table.by_agent.remove(&session.agent);
        }
        Some((session.agent, session.accepted))
    }

    /// Every agent with an accepted session, with the facts it sent, sorted
    /// by id: what an operator's target is matched against.
    pub fn accepted_with_facts(&self) -> Vec<(String, Value)> {
        let table = self.lock();
        let mut agents: Vec<(String, Value)> = table
            .by_agent
            .iter()
            .filter_map(|(agent, peer)| table.by_peer.get(peer).map(|s| (agent.clone(), s.facts.clone())))
            .collect();
        agents.sort_by(|a, b| a.0.cmp(&b.0));
        agents
    }

    /// The facts the agent's accepted session sent in its hello, for
    /// targeting and templates; `Null` when it is not connected.
    pub fn facts(&self, agent: &str) -> Value {
        let table = self.lock();
        table.by_agent.get(agent).and_then(|peer| table.by_peer.get(peer)).map_or(Value::Null, |s| s.facts.clone())
    }

    /// The agents with an accepted session now.
    pub fn accepted_agents(&self) -> Vec<String> {
        self.lock().by_agent.keys().cloned().collect()
    }

    pub fn unaccepted(&self) -> usize {
        self.lock().by_peer.values().filter(|s| !s.accepted).count()
    }

    /// Keeps the ids seen in the log at `path`, loading what an earlier run
    /// left there; returns how many ids it remembered. Blocking I/O, once
    /// at start.
    pub fn remember_in(&self, path: &Path) -> std::io::Result<usize> {
        self.remember_forgetting(path, FORGOTTEN_AT_START)
    }

    /// [`Sessions::remember_in`], forgetting the newest `forget` records.
    fn remember_forgetting(&self, path: &Path, forget: usize) -> std::io::Result<usize> {
        let bytes = match std::fs::read(path) {
            Ok(bytes) => bytes,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Vec::new(),
            Err(e) => return Err(e),
        };
        let mut table = self.lock();
        let mut rest = &bytes[..];
        let mut records = Vec::new();
        // A record cut short by a crash ends the log.
        while let Some((&length, tail)) = rest.split_first() {
            let length = usize::from(length);
            let (Some(agent), Some(id)) = (tail.get(..length), tail.get(length..length + 16)) else { break };
            records.push((agent, Id(u128::from_be_bytes(id.try_into().unwrap_or_default()))));
            rest = &tail[length + 16..];
        }
        // The last ids logged may belong to events the PUB socket still
        // held in memory when the master died: forgotten, their resends
        // are published again (a duplicate, never a loss).
        let kept = records.len().saturating_sub(forget);
        for (agent, id) in records.into_iter().take(kept) {
            table.recent.entry(String::from_utf8_lossy(agent).into_owned()).or_default().insert(id);
        }
        table.log = Some(SeenLog {
            path: path.to_path_buf(),
            file: std::fs::OpenOptions::new().create(true).append(true).open(path)?,
            records: 0,
        });
        table.compact()?;
        Ok(table.recent.values().map(|r| r.order.len()).sum())
    }

    /// Remembers an id (an event's, or a job result's job) from `agent`;
    /// false when it was seen already, in this session, an earlier one, or
    /// (with [`Sessions::remember_in`]) before the master restarted. Appends
    /// to the seen-ids log: call it where blocking briefly is allowed.
    pub fn first_sight(&self, agent: &str, id: Id) -> bool {
        self.first_sights(agent, &[id]) == [true]
    }

    /// [`Sessions::first_sight`] for several ids at once (a batch of
    /// events), with one append to the log.
    pub fn first_sights(&self, agent: &str, ids: &[Id]) -> Vec<bool> {
        let fresh = self.sights(agent, ids);
        let logged: Vec<Id> = ids.iter().zip(&fresh).filter(|(_, fresh)| **fresh).map(|(id, _)| *id).collect();
        self.log_seen(agent, &logged);
        fresh
    }

    /// Remembers ids from `agent` in memory only; false for those seen
    /// already. The link records an event as seen here before publishing
    /// it, so a resend on another session meanwhile is not published twice,
    /// and logs it ([`Sessions::log_seen`]) only once the publisher has
    /// it, so a restart never drops the resend of an event it never
    /// published.
    pub fn sights(&self, agent: &str, ids: &[Id]) -> Vec<bool> {
        let mut table = self.lock();
        let recent = table.recent.entry(agent.to_owned()).or_default();
        ids.iter().map(|id| recent.insert(*id)).collect()
    }

    /// Forgets ids from `agent` remembered by [`Sessions::sights`] and not
    /// logged: events the store refused to record (`acks.rs`), so their
    /// resend is taken again (published and reacted to again: at least
    /// once) and recorded, rather than dropped as a duplicate.
    pub fn forget(&self, agent: &str, ids: &[Id]) {
        let mut table = self.lock();
        if let Some(recent) = table.recent.get_mut(agent) {
            for id in ids {
                if recent.set.remove(id) {
                    recent.order.retain(|kept| kept != id);
                }
            }
        }
    }

    /// Whether `id` from `agent` is remembered (without remembering it).
    pub fn has_seen(&self, agent: &str, id: Id) -> bool {
        self.lock().recent.get(agent).is_some_and(|recent| recent.set.contains(&id))
    }

    /// Appends ids already remembered ([`Sessions::sights`]) to the
    /// seen-ids log, in one write, so a restarted master drops their
    /// resends too. Blocking briefly (a write to the page cache).
    pub fn log_seen(&self, agent: &str, ids: &[Id]) {
        if ids.is_empty() {
            return;
        }
        let mut records: Vec<u8> = Vec::with_capacity(ids.len() * (agent.len() + 17));
        for id in ids {
            push_seen_record(&mut records, agent, *id);
        }
        let mut table = self.lock();
        let bound = 2 * RECENT_IDS * table.recent.len().max(1);
        if let Some(log) = &mut table.log {
            let appended = log.file.write_all(&records);
            log.records += ids.len();
            let result = match appended {
                Ok(()) if log.records > bound => table.compact(),
                other => other,
            };
            if let Err(error) = result {
                tracing::warn!(agent, %error, "Cannot keep the ids seen; a replay after a restart may be published twice.");
            }
        }
    }

    /// Sends to an agent's accepted session.
    pub async fn send(&self, agent: &str, message: &MasterMessage) -> Result<(), SendError> {
        let peer = self
            .lock()
            .by_agent
            .get(agent)
            .cloned()
            .ok_or_else(|| SendError::NotConnected { agent: agent.to_owned() })?;
        self.send_to_peer(peer, message).await
    }

    /// Seals and sends to whatever session is on `peer`.
    pub async fn send_to_peer(&self, peer: Bytes, message: &MasterMessage) -> Result<(), SendError> {
        let sealer = self.lock().by_peer.get(&peer).map(|s| s.sealer.clone()).ok_or(SendError::Gone)?;
        let mut sealer = sealer.lock().await;
        let chunks = sealer.seal(&halite_proto::encode(message)).map_err(SendError::Seal)?;
        self.send_raw(peer, Envelope::sealed(chunks)).await
    }

    /// Sends frames as they are (handshake messages).
    pub async fn send_raw(&self, peer: Bytes, frames: Vec<Vec<u8>>) -> Result<(), SendError> {
        let mut all: Vec<Bytes> = Vec::with_capacity(frames.len() + 1);
        all.push(peer);
        all.extend(frames.into_iter().map(Bytes::from));
        let message = ZmqMessage::try_from(all).map_err(|_| SendError::Empty)?;
        self.sender.clone().send(message).await.map_err(SendError::Transport)
    }

    /// The version the agent on `peer` said in its hello.
    pub fn note_version(&self, peer: &Bytes, version: &str) {
        if let Some(session) = self.lock().by_peer.get_mut(peer) {
            version.clone_into(&mut session.version);
        }
    }

    /// The version of the agent on `peer` (empty when unknown).
    pub fn version(&self, peer: &Bytes) -> String {
        self.lock().by_peer.get(peer).map(|s| s.version.clone()).unwrap_or_default()
    }

    /// The remote address (`ip:port`) of a connection, if the monitor
    /// reported it.
    pub fn address_of(&self, peer: &Bytes) -> Option<String> {
        self.lock().addresses.get(peer).cloned()
    }

    /// An operator trusted new facts for `agent`: its accepted session
    /// targets by them from now on.
    pub fn set_facts(&self, agent: &str, facts: Value) {
        let mut table = self.lock();
        if let Some(peer) = table.by_agent.get(agent).cloned()
            && let Some(session) = table.by_peer.get_mut(&peer)
        {
            session.facts = facts;
        }
    }

    /// A connection was accepted from `address`.
    pub fn note_address(&self, peer: Bytes, address: String) {
        self.lock().addresses.insert(peer, address);
    }

    /// A connection closed.
    pub fn forget_address(&self, peer: &Bytes) {
        self.lock().addresses.remove(peer);
    }

    /// Every session, accepted or not.
    pub fn list(&self) -> Vec<SessionInfo> {
        let table = self.lock();
        table
            .by_peer
            .iter()
            .map(|(peer, s)| SessionInfo {
                agent: s.agent.clone(),
                accepted: s.accepted,
                facts: s.facts.clone(),
                since: s.since,
                address: table.addresses.get(peer).cloned(),
            })
            .collect()
    }
}

/// A session as `halite-master agents` shows it.
#[derive(Debug, Clone)]
pub struct SessionInfo {
    pub agent: String,
    pub accepted: bool,
    pub facts: Value,
    pub since: SystemTime,
    pub address: Option<String>,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sessions() -> Sessions {
        let (send, _recv) = <zeromq::RouterSocket as zeromq::Socket>::new().split();
        Sessions::new(send)
    }

    #[tokio::test]
    async fn ids_seen_are_remembered_across_sessions_and_restarts() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("seen-ids");
        let (first, second) = (Id::new(), Id::new());
        let before = sessions();
        before.remember_forgetting(&path, 0).unwrap();
        assert!(before.first_sight("web01", first));
        assert!(!before.first_sight("web01", first), "a replay on another session of the same agent");
        assert!(before.first_sight("web02", first), "ids are per agent");
        drop(before);
        // A record cut short by a crash is ignored.
        std::fs::OpenOptions::new().append(true).open(&path).unwrap().write_all(&[5, b'w', b'e']).unwrap();
        let after = sessions();
        assert_eq!(after.remember_forgetting(&path, 0).unwrap(), 2);
        assert!(!after.first_sight("web01", first), "a replay after a restart");
        assert!(after.first_sight("web01", second));
        let third = Id::new();
        assert_eq!(after.first_sights("web01", &[first, third, second, third]), [false, true, false, false]);
        drop(after);
        assert!(!sessions_remembering(&path).first_sight("web01", third), "a batch's ids are logged too");
    }

    /// Ids the store refused to record are forgotten, so their resend is
    /// taken again; others stay remembered.
    #[tokio::test]
    async fn forgotten_ids_are_taken_again() {
        let sessions = sessions();
        let (kept, refused) = (Id::new(), Id::new());
        assert_eq!(sessions.sights("web01", &[kept, refused]), [true, true]);
        sessions.forget("web01", &[refused]);
        sessions.forget("db01", &[kept]);
        assert_eq!(sessions.sights("web01", &[kept, refused]), [false, true]);
    }

    fn sessions_remembering(path: &Path) -> Sessions {
        let sessions = sessions();
        sessions.remember_forgetting(path, 0).unwrap();
        sessions
    }

    #[tokio::test]
    async fn the_log_stays_bounded() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("seen-ids");
        let table = sessions();
        table.remember_forgetting(&path, 0).unwrap();
        let ids: Vec<Id> = (0..5 * RECENT_IDS).map(|_| Id::new()).collect();
        for id in &ids {
            assert!(table.first_sight("web01", *id));
        }
        let record = seen_record("web01", ids[0]).len();
        let size = usize::try_from(std::fs::metadata(&path).unwrap().len()).unwrap();
        assert!(size <= 2 * RECENT_IDS * record + record, "{size} bytes");
        let reopened = sessions();
        assert_eq!(reopened.remember_forgetting(&path, 0).unwrap(), RECENT_IDS);
        assert!(!reopened.first_sight("web01", ids[ids.len() - 1]));
        assert!(reopened.first_sight("web01", ids[0]), "the oldest are forgotten");
    }

    /// The newest ids logged are forgotten at start: their events may have
    /// been in the PUB socket's memory when the master died, so a resend
    /// is published again rather than dropped.
    #[tokio::test]
    async fn the_newest_ids_are_forgotten_at_start() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("seen-ids");
        let before = sessions();
        before.remember_in(&path).unwrap();
        let ids: Vec<Id> = (0..FORGOTTEN_AT_START + 3).map(|_| Id::new()).collect();
        assert!(before.sights("web01", &ids).iter().all(|fresh| *fresh));
        assert!(before.has_seen("web01", ids[3]));
        before.log_seen("web01", &ids);
        let unlogged = Id::new();
        assert_eq!(before.sights("web01", &[unlogged]), [true]);
        drop(before);
        let after = sessions();
        assert_eq!(after.remember_in(&path).unwrap(), 3);
        assert!(!after.first_sight("web01", ids[2]), "an old id is remembered");
        assert!(after.first_sight("web01", ids[3]), "a recent one is not");
        assert!(after.first_sight("web01", unlogged), "an id never logged is not");
    }
}

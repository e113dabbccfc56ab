//! The table of sessions: which ROUTER peer is which agent, with which key,
//! whether that key is accepted, and the sealer for messages to it.

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::SystemTime;

use bytes::Bytes;
use halite_link::{Envelope, PublicKey, Sealer};
use halite_proto::{Id, MasterMessage, Value};
use zeromq::{RouterSendHalf, SocketSend, ZmqMessage};

/// Event ids remembered per agent to drop duplicates of replayed events.
pub const RECENT_IDS: usize = 4096;

#[derive(Debug)]
pub struct PeerSession {
    pub agent: String,
    pub key: PublicKey,
    /// Only an accepted session's messages reach the bus and the reactors.
    pub accepted: bool,
    pub facts: Value,
    pub since: SystemTime,
    /// Held across sealing *and* sending, so messages leave in nonce order.
    sealer: Arc<tokio::sync::Mutex<Sealer>>,
    recent: VecDeque<Id>,
    recent_set: HashSet<Id>,
}

#[derive(Debug, Default)]
struct Table {
    /// The remote address of each connection, from the ROUTER's monitor,
    /// for `halite-master agents`; forgotten when the connection closes.
    addresses: HashMap<Bytes, String>,
    by_peer: HashMap<Bytes, PeerSession>,
    /// Accepted sessions only.
    by_agent: HashMap<String, Bytes>,
}

#[derive(Clone)]
pub struct Sessions {
    table: Arc<Mutex<Table>>,
    sender: RouterSendHalf,
}

impl std::fmt::Debug for Sessions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Sessions").finish_non_exhaustive()
    }
}

impl Sessions {
    pub fn new(sender: RouterSendHalf) -> Self {
        Sessions { table: Arc::default(), sender }
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
            sealer: Arc::new(tokio::sync::Mutex::new(sealer)),
            recent: VecDeque::new(),
            recent_set: HashSet::new(),
        };
        table.by_peer.insert(peer.clone(), session);
        if accepted {
            Self::claim(&mut table, agent, peer);
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

    /// The key was accepted: its live sessions are promoted; returns them
    /// with the facts their agents sent.
    pub fn promote(&self, agent: &str, key: &PublicKey) -> Vec<(Bytes, Value)> {
        let mut table = self.lock();
        let peers: Vec<(Bytes, Value)> = table
            .by_peer
            .iter_mut()
            .filter(|(_, s)| s.agent == agent && s.key == *key && !s.accepted)
            .map(|(peer, s)| {
                s.accepted = true;
                (peer.clone(), s.facts.clone())
            })
            .collect();
        if let Some((peer, _)) = peers.last() {
            Self::claim(&mut table, agent, peer.clone());
        }
        peers
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

    /// Remembers an event id; false when it was seen already.
    pub fn first_sight(&self, peer: &Bytes, id: Id) -> bool {
        let mut table = self.lock();
        let Some(session) = table.by_peer.get_mut(peer) else { return false };
        if !session.recent_set.insert(id) {
            return false;
        }
        session.recent.push_back(id);
        if session.recent.len() > RECENT_IDS
            && let Some(old) = session.recent.pop_front()
        {
            session.recent_set.remove(&old);
        }
        true
    }

    /// Sends to an agent's accepted session.
    pub async fn send(&self, agent: &str, message: &MasterMessage) -> Result<(), String> {
        let peer =
            self.lock().by_agent.get(agent).cloned().ok_or_else(|| format!("agent `{agent}` is not connected"))?;
        self.send_to_peer(peer, message).await
    }

    /// Seals and sends to whatever session is on `peer`.
    pub async fn send_to_peer(&self, peer: Bytes, message: &MasterMessage) -> Result<(), String> {
        let sealer = self.lock().by_peer.get(&peer).map(|s| s.sealer.clone()).ok_or("the session is gone")?;
        let mut sealer = sealer.lock().await;
        let chunks = sealer.seal(&halite_proto::encode(message)).map_err(|e| e.to_string())?;
        self.send_raw(peer, Envelope::sealed(chunks)).await
    }

    /// Sends frames as they are (handshake messages).
    pub async fn send_raw(&self, peer: Bytes, frames: Vec<Vec<u8>>) -> Result<(), String> {
        let mut all: Vec<Bytes> = Vec::with_capacity(frames.len() + 1);
        all.push(peer);
        all.extend(frames.into_iter().map(Bytes::from));
        let message = ZmqMessage::try_from(all).map_err(|e| format!("{e:?}"))?;
        self.sender.clone().send(message).await.map_err(|e| e.to_string())
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

//! The table of open sessions: which ROUTER peer is which agent.

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::SystemTime;

use bytes::Bytes;
use halite_proto::{Id, MasterMessage, Value};
use zeromq::{RouterSendHalf, SocketSend, ZmqMessage};

/// Event ids remembered per agent to drop duplicates of replayed events.
pub const RECENT_IDS: usize = 4096;

#[derive(Debug)]
pub struct Session {
    pub peer: Bytes,
    pub facts: Value,
    pub since: SystemTime,
    recent: VecDeque<Id>,
    recent_set: HashSet<Id>,
}

#[derive(Debug, Default)]
struct Table {
    by_agent: HashMap<String, Session>,
    by_peer: HashMap<Bytes, String>,
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

    pub fn agent_of(&self, peer: &Bytes) -> Option<String> {
        self.lock().by_peer.get(peer).cloned()
    }

    /// Opens (or reopens, from a new connection) the agent's session.
    pub fn open(&self, agent: &str, peer: Bytes, facts: Value) {
        let mut table = self.lock();
        let recent = match table.by_agent.remove(agent) {
            Some(old) => {
                table.by_peer.remove(&old.peer);
                (old.recent, old.recent_set)
            }
            None => (VecDeque::new(), HashSet::new()),
        };
        table.by_peer.insert(peer.clone(), agent.to_owned());
        table.by_agent.insert(
            agent.to_owned(),
            Session { peer, facts, since: SystemTime::now(), recent: recent.0, recent_set: recent.1 },
        );
    }

    /// Closes the session on `peer`; returns its agent.
    pub fn close_peer(&self, peer: &Bytes) -> Option<String> {
        let mut table = self.lock();
        let agent = table.by_peer.remove(peer)?;
        if table.by_agent.get(&agent).is_some_and(|s| s.peer == *peer) {
            table.by_agent.remove(&agent);
        }
        Some(agent)
    }

    /// Remembers an event id; false when it was seen already.
    pub fn first_sight(&self, agent: &str, id: Id) -> bool {
        let mut table = self.lock();
        let Some(session) = table.by_agent.get_mut(agent) else { return true };
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

    pub fn connected(&self) -> Vec<String> {
        let mut agents: Vec<String> = self.lock().by_agent.keys().cloned().collect();
        agents.sort();
        agents
    }

    pub async fn send(&self, agent: &str, message: &MasterMessage) -> Result<(), String> {
        let peer = self
            .lock()
            .by_agent
            .get(agent)
            .map(|s| s.peer.clone())
            .ok_or_else(|| format!("agent `{agent}` is not connected"))?;
        self.send_to_peer(peer, message).await
    }

    pub async fn send_to_peer(&self, peer: Bytes, message: &MasterMessage) -> Result<(), String> {
        let mut frames = ZmqMessage::from(halite_proto::encode(message));
        frames.push_front(peer);
        self.sender.clone().send(frames).await.map_err(|e| e.to_string())
    }
}

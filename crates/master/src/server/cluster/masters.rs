//! Each master's row (`masters`: name, tree version, heartbeat) and what
//! this master knows of the others: which master each agent's session is
//! on (`agent_sessions`, `epochs.rs`) and the tree version each serves.
//!
//! Every master loads the tree from its own copy; its version is a hash of
//! the tree's files ([`tree_version`]), computed again after each reload.
//! Every [`HEARTBEAT`] a master writes its row and reads its peers' (those
//! heard from within [`ALIVE`]) and the session rows changed since its last
//! read. A master serving another version than a peer logs a warning once
//! per (own version, peers' versions): after a reload that changes either,
//! again. `halite-master agents` and the API's agents list show each
//! agent's master and its version ([`View::locate`]); what they show is at
//! most one heartbeat old.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use sha2::Digest as _;
use tokio_postgres::Client;
use tokio_util::sync::CancellationToken;

use crate::server::store::postgres::{PgTarget, describe};
use crate::tree::Tree;

/// How often a master writes its row and reads the others'.
pub const HEARTBEAT: Duration = Duration::from_secs(2);
/// A master not heard from for this long is not counted among the peers.
pub const ALIVE: Duration = Duration::from_secs(15);

/// What this master knows of the others; cheap to clone.
#[derive(Debug, Clone, Default)]
pub struct View(Arc<RwLock<Known>>);

#[derive(Debug, Default)]
struct Known {
    /// This master's name and tree version.
    me: String,
    tree: String,
    /// Every master alive, with its tree version (this one included).
    masters: BTreeMap<String, String>,
    /// Each agent's master, as `agent_sessions` says.
    homes: HashMap<String, String>,
    /// The newest session row read (PostgreSQL's clock, microseconds).
    read_to: i64,
}

impl View {
    /// The master `agent`'s session is on and its tree version (this
    /// master for a session here).
    pub fn locate(&self, agent: &str, here: bool) -> (Option<String>, Option<String>) {
        let known = self.0.read().unwrap_or_else(|p| p.into_inner());
        let master = if here { Some(known.me.clone()) } else { known.homes.get(agent).cloned() };
        let tree = master
            .as_ref()
            .and_then(|m| known.masters.get(m).cloned().or_else(|| (*m == known.me).then(|| known.tree.clone())));
        (master, tree)
    }

    /// For a target that reached no agent (here, or routed elsewhere by
    /// id: [`View::homed_elsewhere`]), what to tell the operator: the
    /// agents `matches` names (by id: a target reading facts was matched
    /// against their frozen facts already, `homed_elsewhere`) whose
    /// sessions are on other masters, and which master to ask. Empty
    /// when there are none.
    pub fn elsewhere(&self, matches: impl Fn(&str) -> bool) -> String {
        let known = self.0.read().unwrap_or_else(|p| p.into_inner());
        let mut there: BTreeMap<&str, Vec<&str>> = BTreeMap::new();
        for (agent, master) in &known.homes {
            if *master != known.me && matches(agent) {
                there.entry(master).or_default().push(agent);
            }
        }
        if there.is_empty() {
            return String::new();
        }
        let listed: Vec<String> = there
            .into_iter()
            .map(|(master, mut agents)| {
                agents.sort_unstable();
                format!("{} on {master}", agents.join(", "))
            })
            .collect();
        format!(
            "; on other masters: {}: run the command on that master (`halite-master agents` shows where each agent is)",
            listed.join("; ")
        )
    }

    /// The agents `target` names whose sessions are on other masters
    /// (`agent_sessions`), with their masters; none of `here` (the agents
    /// connected to this master). A target that reads facts (`G@`, `P@`)
    /// is matched against `frozen`, the facts frozen for each agent's
    /// accepted key (shared through PostgreSQL: `facts.rs`), never what
    /// the agent claims; an agent with none is not reached by it.
    pub fn homed_elsewhere(
        &self,
        target: &halite_state::Target,
        here: &[String],
        frozen: &HashMap<String, halite_proto::Value>,
    ) -> Vec<(String, String)> {
        let uses_facts = target.uses_facts();
        let known = self.0.read().unwrap_or_else(|p| p.into_inner());
        let mut there: Vec<(String, String)> = known
            .homes
            .iter()
            .filter(|(agent, master)| **master != known.me && !here.contains(agent))
            .filter(|(agent, _)| match (uses_facts, frozen.get(*agent)) {
                (false, _) => target.matches(agent, &halite_proto::Value::Null),
                (true, Some(facts)) => target.matches(agent, facts),
                (true, None) => false,
            })
            .map(|(agent, master)| (agent.clone(), master.clone()))
            .collect();
        there.sort_unstable();
        there
    }

    /// Every master alive and its tree version.
    pub fn masters(&self) -> BTreeMap<String, String> {
        self.0.read().unwrap_or_else(|p| p.into_inner()).masters.clone()
    }
}

#[derive(Debug, thiserror::Error)]
pub enum TreeVersionError {
    #[error("cannot read the state tree {path} to hash it: {source}")]
    Read { path: PathBuf, source: std::io::Error },
}

/// The version of the tree under `root`: the first 12 hex digits of the
/// sha256 of every file's path and contents, in path order (hidden files
/// and folders, like `.git` and editors' temporary files, left out).
/// Blocking.
pub fn tree_version(root: &Path) -> Result<String, TreeVersionError> {
    fn walk(dir: &Path, root: &Path, files: &mut BTreeMap<String, PathBuf>) -> Result<(), TreeVersionError> {
        let entries =
            std::fs::read_dir(dir).map_err(|source| TreeVersionError::Read { path: dir.to_path_buf(), source })?;
        for entry in entries {
            let entry = entry.map_err(|source| TreeVersionError::Read { path: dir.to_path_buf(), source })?;
            if entry.file_name().to_string_lossy().starts_with('.') {
                continue;
            }
            let path = entry.path();
            let kind = entry.file_type().map_err(|source| TreeVersionError::Read { path: path.clone(), source })?;
            if kind.is_dir() {
                walk(&path, root, files)?;
            } else if kind.is_file() {
                let relative = path.strip_prefix(root).unwrap_or(&path).to_string_lossy().into_owned();
                files.insert(relative, path);
            }
        }
        Ok(())
    }
    let mut files = BTreeMap::new();
    walk(root, root, &mut files)?;
    let mut hash = sha2::Sha256::new();
    for (relative, path) in files {
        let contents = std::fs::read(&path).map_err(|source| TreeVersionError::Read { path, source })?;
        hash.update(relative.as_bytes());
        hash.update([0]);
        hash.update(u64::try_from(contents.len()).unwrap_or(u64::MAX).to_le_bytes());
        hash.update(&contents);
    }
    let digest = hash.finalize();
    Ok(digest.iter().take(6).map(|b| format!("{b:02x}")).collect())
}

/// Starts the heartbeat of master `name` serving the tree under `root`
/// (`tree` is the live one: a reload swaps it); returns its view.
pub fn spawn(
    target: PgTarget,
    name: String,
    root: PathBuf,
    tree: Arc<RwLock<Arc<Tree>>>,
    cancel: CancellationToken,
) -> View {
    let view = View::default();
    view.0.write().unwrap_or_else(|p| p.into_inner()).me.clone_from(&name);
    let shared = view.clone();
    tokio::spawn(async move {
        let mut every = tokio::time::interval(HEARTBEAT);
        let mut client: Option<Client> = None;
        // The tree last hashed, and what was last warned about.
        let mut hashed: Option<Arc<Tree>> = None;
        let mut warned: Option<(String, BTreeSet<String>)> = None;
        loop {
            tokio::select! {
                () = cancel.cancelled() => return,
                _ = every.tick() => {}
            }
            let live = tree.read().unwrap_or_else(|p| p.into_inner()).clone();
            if hashed.as_ref().is_none_or(|h| !Arc::ptr_eq(h, &live)) {
                let root = root.clone();
                match tokio::task::spawn_blocking(move || tree_version(&root)).await {
                    Ok(Ok(version)) => {
                        tracing::info!(tree = %version, "Serving this tree version.");
                        shared.0.write().unwrap_or_else(|p| p.into_inner()).tree = version;
                        hashed = Some(live);
                    }
                    Ok(Err(error)) => tracing::warn!(%error, "Cannot tell the tree's version; tried again."),
                    Err(error) => tracing::warn!(%error, "Cannot tell the tree's version; tried again."),
                }
            }
            if client.as_ref().is_none_or(Client::is_closed) {
                client = target.connect().await.ok();
            }
            let Some(connected) = client.as_ref() else { continue };
            match tokio::time::timeout(HEARTBEAT * 2, beat(connected, &shared)).await {
                Ok(Ok(())) => {}
                Ok(Err(error)) => {
                    tracing::debug!(error = %describe(&error), "Cannot write this master's heartbeat.");
                    client = None;
                    continue;
                }
                Err(_) => {
                    client = None;
                    continue;
                }
            }
            let (mine, others) = {
                let known = shared.0.read().unwrap_or_else(|p| p.into_inner());
                let others: BTreeSet<String> =
                    known.masters.iter().filter(|(m, _)| **m != known.me).map(|(_, t)| t.clone()).collect();
                (known.tree.clone(), others)
            };
            let differs = others.iter().any(|t| *t != mine);
            let now = (mine.clone(), others.clone());
            if differs && warned.as_ref() != Some(&now) {
                let peers = shared.masters();
                tracing::warn!(tree = %mine, peers = ?peers, "This master serves another tree version than its peers; bring every master's copy of the tree to the same commit.");
                warned = Some(now);
            } else if !differs {
                warned = None;
            }
        }
    });
    view
}

/// Writes this master's row; reads the masters alive and the session rows
/// changed since the last read.
async fn beat(client: &Client, view: &View) -> Result<(), tokio_postgres::Error> {
    let (me, tree, read_to) = {
        let known = view.0.read().unwrap_or_else(|p| p.into_inner());
        (known.me.clone(), known.tree.clone(), known.read_to)
    };
    client
        .execute(
            "INSERT INTO masters (name, tree, heartbeat) VALUES ($1, $2, now())
             ON CONFLICT (name) DO UPDATE SET tree = $2, heartbeat = now()",
            &[&me, &tree],
        )
        .await?;
    let alive = ALIVE.as_secs_f64();
    let masters = client
        .query("SELECT name, tree FROM masters WHERE heartbeat > now() - $1 * interval '1 second'", &[&alive])
        .await?;
    // A second of overlap: rows committed out of order by their `since`.
    let sessions = client
        .query(
            "SELECT agent, master, (extract(epoch FROM since) * 1000000)::bigint FROM agent_sessions
             WHERE since >= to_timestamp($1::bigint / 1000000.0) - interval '1 second'",
            &[&read_to],
        )
        .await?;
    let mut known = view.0.write().unwrap_or_else(|p| p.into_inner());
    known.masters = masters.iter().map(|row| (row.get(0), row.get(1))).collect();
    for row in &sessions {
        let (agent, master, since): (String, String, i64) = (row.get(0), row.get(1), row.get(2));
        known.homes.insert(agent, master);
        known.read_to = known.read_to.max(since);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Which agents a target routes elsewhere, table-style: by id, or by
    /// the frozen facts for a target that reads facts (an agent with none
    /// is not reached); never to this master, never an agent connected
    /// here.
    #[test]
    fn agents_homed_elsewhere_are_matched_by_id_or_frozen_facts() {
        let view = View::default();
        {
            let mut known = view.0.write().unwrap();
            known.me = "tcp://a".into();
            for (agent, master) in
                [("web01", "tcp://a"), ("web02", "tcp://b"), ("db01", "tcp://c"), ("web03", "tcp://b")]
            {
                known.homes.insert(agent.into(), master.into());
            }
        }
        let here = vec!["web03".to_owned()];
        // db01's key has no frozen facts (yet).
        let frozen: HashMap<String, halite_proto::Value> = [("web02", "debian"), ("web03", "debian")]
            .into_iter()
            .map(|(agent, os)| (agent.to_owned(), halite_proto::Value::map().with("os", os)))
            .collect();
        let cases: [(&str, &[(&str, &str)]); 8] = [
            ("web*", &[("web02", "tcp://b")]),
            ("*", &[("db01", "tcp://c"), ("web02", "tcp://b")]),
            ("L@db01,web01", &[("db01", "tcp://c")]),
            ("not web*", &[("db01", "tcp://c")]),
            ("G@os:debian", &[("web02", "tcp://b")]),
            ("P@os:(Debian|debian)", &[("web02", "tcp://b")]),
            ("G@os:ubuntu", &[]),
            ("not G@os:debian", &[]),
        ];
        for (target, wanted) in cases {
            let parsed = halite_state::Target::parse(target).unwrap();
            let found = view.homed_elsewhere(&parsed, &here, &frozen);
            let found: Vec<(&str, &str)> = found.iter().map(|(a, m)| (a.as_str(), m.as_str())).collect();
            assert_eq!(found, wanted, "{target}");
        }
    }
}

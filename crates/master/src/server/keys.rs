//! Agent keys and their lifecycle: pending → accepted / rejected, deleted.
//!
//! An agent is known by its id *and* its key. A new id is pending (or
//! accepted at once when an `auto_accept` glob matches); a known id that
//! comes back with another key is pending whatever the globs say, since it
//! may be an impersonation. Accepting a key for an id retires the id's
//! other keys; an operator's accept by id glob that would retire an
//! accepted key is refused ([`KeyStore::check_no_replacement`]) unless the
//! new key is named by its fingerprint or `--replace` is given.
//!
//! # Where keys live
//!
//! In the `keys` table of the master's store, `<data_dir>/halite.db`
//! (`store.rs`), and, while the master runs, in memory: [`KeyStore`] holds
//! every key indexed by (id, key) and counts keys per id, so deciding
//! about a key that just completed a handshake ([`KeyStore::admit`]) is
//! two hash lookups under a short lock, with no I/O. That decision is made
//! on the link loop, which serves every agent: a fleet meeting the master
//! for the first time must not wait on the disk once per agent.
//!
//! Changes reach the disk through the store's writer thread. Each change
//! marks its (id, key) *dirty*; the writer takes the whole dirty set at
//! once, reads what memory holds for each pair *then* (a row, or nothing:
//! deleted), and writes it in one transaction, fsynced (`synchronous =
//! FULL`). So the file always holds what memory held at one moment, never
//! a mix; a fleet's admissions cost one transaction per batch, not one
//! fsync per key. The dirty set holds at most one entry per (id, key)
//! changed since the last commit: it is bounded by the keys memory already
//! holds (plus those deleted since the last commit), and there is no queue
//! that could fill and drop a change. Waking the writer is one message in
//! the store's queue, sent only when the dirty set stops being empty; when
//! the queue is full the writer is busy, and it looks at the dirty set
//! after every batch anyway. A commit that fails leaves its pairs dirty;
//! the next batch tries again (logged as an error each time).
//!
//! # What a crash loses
//!
//! Admissions not yet committed: at most the last batch, milliseconds
//! of them. Since the file holds a moment of memory, the restarted master
//! is exactly a master that never saw those keys, and each is decided again
//! by the same rules when its agent reconnects: a new id is accepted again
//! by the same `auto_accept` globs (or pending again); a new key for an id
//! whose first key was committed is pending again — the impersonation rule
//! holds across the crash. An id whose *first* key was among the lost ones
//! is new again, so whichever key presents it first after the restart
//! takes it: the same race any first contact under `auto_accept` has. Its
//! `halite/key/<id>/…` event is published again. Operator changes
//! (`keys accept|reject|delete`) are committed by [`KeyStore::commit`]
//! before the command returns, so a crash never loses them.
//!
//! # Before halite.db
//!
//! Earlier masters kept keys in `<data_dir>/keys.json`. When the store is
//! opened with that file present, it is imported in one transaction and
//! renamed `keys.json.imported` (a key already in halite.db keeps its row).

use std::collections::{HashMap, HashSet};
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use globset::{Glob, GlobMatcher};
use halite_link::PublicKey;
use halite_proto::Value;
use indexmap::{IndexMap, IndexSet};
use rusqlite::{Connection, params};
use serde::{Deserialize, Serialize};

use crate::server::store::{Persisted, Store};

/// The file earlier masters kept keys in, imported once into halite.db.
pub const LEGACY_FILE: &str = "keys.json";

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum KeyStatus {
    Pending,
    Accepted,
    Rejected,
}

impl KeyStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            KeyStatus::Pending => "pending",
            KeyStatus::Accepted => "accepted",
            KeyStatus::Rejected => "rejected",
        }
    }

    pub fn parse(text: &str) -> Option<KeyStatus> {
        [KeyStatus::Pending, KeyStatus::Accepted, KeyStatus::Rejected].into_iter().find(|s| s.as_str() == text)
    }
}

/// A key as `halite-master keys` shows it (and as keys.json held it).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct KeyEntry {
    pub id: String,
    /// The agent's public key, 64 hex digits: its fingerprint.
    pub key: String,
    pub status: KeyStatus,
    /// Seconds since the Unix epoch when the key was first seen.
    pub since: u64,
}

#[derive(Debug, thiserror::Error)]
pub enum KeyStoreError {
    #[error("cannot read {path}: {source}")]
    Read { path: PathBuf, source: std::io::Error },
    #[error(
        "{path} is not a key store: {message}; fix it, or move it away and start again (its agents then come back as new: pending, or accepted by auto_accept)"
    )]
    Corrupt { path: PathBuf, message: String },
    #[error("cannot import {path}: {message}")]
    Import { path: PathBuf, message: String },
    #[error("the key store in {path}: {message}")]
    Store { path: PathBuf, message: String },
    #[error(
        "cannot save the keys to {path}: {message}; the change is in effect but not on disk (it is retried with the next change; a restart before then forgets it)"
    )]
    Write { path: PathBuf, message: String },
    #[error("`{selector}` is neither an agent id glob nor a key: {message}")]
    Selector { selector: String, message: String },
    #[error(
        "`{selector}` names {count} keys of agent `{id}`, and an agent has one accepted key; accept one by its fingerprint (`halite-master keys list` shows them)"
    )]
    Ambiguous { selector: String, id: String, count: usize },
    #[error("auto_accept glob `{glob}`: {message}")]
    AutoAccept { glob: String, message: String },
    #[error(
        "agent `{id}` already has an accepted key, {accepted}; accepting {new} would retire it and cut its session. If the host really changed its key (reinstalled), accept the new one by its fingerprint (`halite-master keys accept {new}`) or pass --replace; otherwise reject it (`halite-master keys reject {new}`)"
    )]
    Replaces { id: String, accepted: String, new: String },
    #[error("cannot read the enrolment token {path}: {message}; write the token on its first line")]
    Token { path: PathBuf, message: String },
    #[error("enrolment fingerprint `{fingerprint}`: {source}")]
    Fingerprint { fingerprint: String, source: halite_link::keys::KeyError },
    #[error(
        "a new key for agent `{id}` is refused: {max} keys are pending (`enrolment.pending_max`); accept, reject or delete some (`halite-master keys list`)"
    )]
    PendingFull { id: String, max: usize },
    #[error(
        "a new key for agent `{id}` from {address} is refused: {limit} new keys from that address this minute (`enrolment.new_keys_per_source`)"
    )]
    TooManyFromSource { id: String, address: IpAddr, limit: u32 },
    #[error("no key of an agent matches `{selector}`")]
    NoFacts { selector: String },
}

/// What a key's arrival got it: its status, and the facts the master
/// trusts for it (targeting, templates, beacons).
#[derive(Debug, Clone, PartialEq)]
pub struct Arrival {
    pub admission: Admission,
    /// For an accepted key, the facts frozen when it was accepted (or, for
    /// a key accepted while away, at its first accepted session), never
    /// what this hello claims; for others, the hello's facts (they reach
    /// nothing).
    pub facts: Value,
    /// This hello claimed other facts than the frozen ones: they are held
    /// for an operator (`halite-master keys facts ID --accept`).
    pub held: bool,
}

/// A key's facts as the master holds them (`halite-master keys facts`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FactsRow {
    pub id: String,
    pub key: String,
    /// What targeting and templates use.
    pub frozen: serde_json::Value,
    /// What the agent claimed since, different from `frozen`, waiting for
    /// an operator.
    pub held: Option<serde_json::Value>,
}

/// First contact, from master.yaml's `enrolment` (README, "Security model").
#[derive(Debug, Clone)]
struct Enrol {
    /// With a token, `auto_accept` globs accept only agents presenting it.
    token: Option<String>,
    fingerprints: HashSet<PublicKey>,
    pending_max: usize,
    pending_expire: Duration,
    per_source: u32,
}

impl Default for Enrol {
    fn default() -> Self {
        let defaults = crate::config::Enrolment::default();
        Enrol {
            token: None,
            fingerprints: HashSet::new(),
            pending_max: defaults.pending_max,
            pending_expire: defaults.pending_expire,
            per_source: defaults.new_keys_per_source,
        }
    }
}

/// Equal without telling by its timing how much of a guess was right.
fn same_secret(a: &str, b: &str) -> bool {
    a.len() == b.len() && a.bytes().zip(b.bytes()).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// New pending keys per source address in the current minute.
#[derive(Debug, Default)]
struct Sources {
    minute: u64,
    counts: HashMap<IpAddr, u32>,
}

/// What the store decided about a key that just completed a handshake.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Admission {
    pub status: KeyStatus,
    /// The key was not known before (an event is due).
    pub new: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Record {
    status: KeyStatus,
    since: u64,
}

/// (agent id, key): what a row of `keys` is known by.
type Pair = (String, PublicKey);

/// Every key in memory, shared by the link loop, the control socket and
/// the store's writer thread.
#[derive(Debug, Default)]
struct Table {
    /// Every key, in the order first seen (as `keys list` shows them).
    entries: IndexMap<Pair, Record>,
    /// How many keys each id has: an id with any is known.
    ids: HashMap<String, usize>,
    /// Pairs whose row on disk may differ from `entries` (see the module
    /// docs); in the order they were first marked.
    dirty: IndexSet<Pair>,
    /// Keys pending, kept equal to the pending entries' count so a new key
    /// is judged against `pending_max` without a scan.
    pending: usize,
    /// Facts frozen per accepted key (and what it claimed since).
    facts: HashMap<Pair, Facts>,
    /// When pending keys were last swept for expiry (seconds).
    swept: u64,
    /// With sharing: keys first seen here and not yet written to the
    /// shared store, which a re-read of their id must not forget (bounded
    /// by the keys held).
    unshared: HashSet<Pair>,
    /// With sharing: facts frozen here and not yet written to the shared
    /// store, and whether an operator froze them (they then replace the
    /// shared row; otherwise they are inserted only where none is). Bounded
    /// by the facts held.
    facts_unshared: HashMap<Pair, bool>,
    /// Whether changes are shared (several masters): only then is
    /// `facts_unshared` kept.
    sharing: bool,
}

/// An accepted key's facts: what the master trusts, and what is held.
#[derive(Debug, Clone, PartialEq)]
struct Facts {
    frozen: serde_json::Value,
    held: Option<serde_json::Value>,
}

/// The shared table, as the store's writer holds it.
type Shared = Arc<Mutex<Table>>;

fn lock(shared: &Shared) -> MutexGuard<'_, Table> {
    shared.lock().unwrap_or_else(|p| p.into_inner())
}

impl Table {
    fn insert(&mut self, pair: Pair, record: Record) {
        match self.entries.insert(pair.clone(), record) {
            None => *self.ids.entry(pair.0.clone()).or_default() += 1,
            Some(old) if old.status == KeyStatus::Pending => self.pending = self.pending.saturating_sub(1),
            Some(_) => {}
        }
        if record.status == KeyStatus::Pending {
            self.pending += 1;
        }
        self.dirty.insert(pair);
    }

    fn recount(&mut self) {
        self.pending = self.entries.values().filter(|r| r.status == KeyStatus::Pending).count();
    }

    /// The facts the master trusts for an accepted key presenting
    /// `claimed`; whether a difference is now held.
    fn trusted_facts(&mut self, pair: &Pair, claimed: &Value) -> (Value, bool) {
        let claimed_json = claimed.to_json();
        match self.facts.get_mut(pair) {
            None => {
                self.facts.insert(pair.clone(), Facts { frozen: claimed_json, held: None });
                self.dirty.insert(pair.clone());
                if self.sharing {
                    self.facts_unshared.entry(pair.clone()).or_insert(false);
                }
                (claimed.clone(), false)
            }
            Some(facts) if facts.frozen == claimed_json => {
                if facts.held.take().is_some() {
                    self.dirty.insert(pair.clone());
                }
                (claimed.clone(), false)
            }
            Some(facts) => {
                if facts.held.as_ref() != Some(&claimed_json) {
                    facts.held = Some(claimed_json);
                    self.dirty.insert(pair.clone());
                }
                (Value::from_json(&facts.frozen), true)
            }
        }
    }

    /// Forgets pending keys first seen before `cutoff`; returns them.
    fn expire(&mut self, cutoff: u64) -> Vec<(Pair, Record)> {
        self.remove_where(|_, record| record.status == KeyStatus::Pending && record.since < cutoff)
    }

    /// Forgets every key `remove` picks, in one pass, marking each dirty.
    fn remove_where(&mut self, mut remove: impl FnMut(&Pair, &Record) -> bool) -> Vec<(Pair, Record)> {
        let mut removed = Vec::new();
        self.entries.retain(|pair, record| {
            if remove(pair, record) {
                removed.push((pair.clone(), *record));
                false
            } else {
                true
            }
        });
        for ((id, key), record) in &removed {
            if record.status == KeyStatus::Pending {
                self.pending = self.pending.saturating_sub(1);
            }
            self.facts.remove(&(id.clone(), *key));
            if let Some(count) = self.ids.get_mut(id) {
                *count -= 1;
                if *count == 0 {
                    self.ids.remove(id);
                }
            }
            self.dirty.insert((id.clone(), *key));
        }
        removed
    }
}

fn entry((id, key): &Pair, record: Record) -> KeyEntry {
    KeyEntry { id: id.clone(), key: key.to_string(), status: record.status, since: record.since }
}

/// The master's key store. Cloning is cheap; every clone is the same store.
#[derive(Debug, Clone)]
pub struct KeyStore {
    table: Shared,
    store: Store,
    auto_accept: Arc<[GlobMatcher]>,
    enrol: Arc<Enrol>,
    sources: Arc<Mutex<Sources>>,
    /// With several masters on PostgreSQL: where changes go to be shared
    /// (`server/cluster/keys.rs`); `None` on a lone master.
    share: Option<tokio::sync::mpsc::Sender<ShareRequest>>,
}

/// A change of keys to write to the store several masters share.
#[derive(Debug)]
pub struct ShareRequest {
    /// The agent ids whose keys changed.
    pub ids: Vec<String>,
    /// An operator's decision: the shared rows of these ids become what
    /// memory holds (deletions included). Otherwise a key first seen here:
    /// inserted only where the shared store has no row for it, so a
    /// decision another master made meanwhile is never overwritten.
    pub replace: bool,
    /// Told `true` once written, `false` when the shared store is
    /// unreachable (the change is kept and written when it answers).
    pub done: Option<tokio::sync::oneshot::Sender<bool>>,
}

/// How many key changes wait for the shared store at most; a key first
/// seen while it is full is not shared (logged), and is shared the next
/// time an operator decides about its id.
pub const SHARE_QUEUE: usize = 4096;

/// What [`KeyStore::sync`] changed in memory.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Synced {
    /// Keys that were accepted here and are not now (deleted, rejected or
    /// retired elsewhere), with their new status (`None`: deleted): their
    /// sessions are cut.
    pub lost: Vec<(KeyEntry, Option<KeyStatus>)>,
    /// Keys accepted now that were not: a pending session reconnects.
    pub accepted: Vec<KeyEntry>,
    /// Rows added, changed or removed.
    pub changed: usize,
}

impl KeyStore {
    /// Loads the keys from `store` (importing `<data_dir>/keys.json` first
    /// when it is there) and keeps them in memory. Needs the store's writer
    /// thread, so it is called from the runtime.
    pub async fn open(store: &Store, data_dir: &Path, auto_accept: &[String]) -> Result<KeyStore, KeyStoreError> {
        let auto_accept = auto_accept
            .iter()
            .map(|glob| {
                Glob::new(glob)
                    .map(|g| g.compile_matcher())
                    .map_err(|e| KeyStoreError::AutoAccept { glob: glob.clone(), message: e.kind().to_string() })
            })
            .collect::<Result<_, _>>()?;
        let legacy = data_dir.join(LEGACY_FILE);
        let stopped =
            || KeyStoreError::Store { path: store.file().to_path_buf(), message: "its writer has stopped".into() };
        let table = store
            .attach(move |connection, db| match load(connection, db, &legacy) {
                Ok(table) => (Ok(table.clone()), Some(Box::new(Persister(table)) as Box<dyn Persisted>)),
                Err(error) => (Err(error), None),
            })
            .await
            .ok_or_else(stopped)??;
        Ok(KeyStore {
            table,
            store: store.clone(),
            auto_accept,
            enrol: Arc::new(Enrol::default()),
            sources: Arc::new(Mutex::new(Sources::default())),
            share: None,
        })
    }

    /// Applies master.yaml's `enrolment`: reads the token file, parses the
    /// pre-registered fingerprints, and sweeps expired pending keys.
    pub fn with_enrolment(mut self, enrolment: &crate::config::Enrolment) -> Result<KeyStore, KeyStoreError> {
        let token = match &enrolment.token_file {
            None => None,
            Some(path) => {
                let text = std::fs::read_to_string(path)
                    .map_err(|e| KeyStoreError::Token { path: path.clone(), message: e.to_string() })?;
                let token = text.lines().next().unwrap_or("").trim().to_owned();
                if token.len() < 16 {
                    return Err(KeyStoreError::Token {
                        path: path.clone(),
                        message: "the token is shorter than 16 characters".into(),
                    });
                }
                Some(token)
            }
        };
        let fingerprints = enrolment
            .fingerprints
            .iter()
            .map(|f| {
                f.parse::<PublicKey>().map_err(|source| KeyStoreError::Fingerprint { fingerprint: f.clone(), source })
            })
            .collect::<Result<_, _>>()?;
        self.enrol = Arc::new(Enrol {
            token,
            fingerprints,
            pending_max: enrolment.pending_max,
            pending_expire: enrolment.pending_expire,
            per_source: enrolment.new_keys_per_source,
        });
        if self.enrol.token.is_none() && !self.auto_accept.is_empty() {
            tracing::warn!(
                "auto_accept trusts an agent's id alone: whoever reaches the link first under a matching id is accepted; set `enrolment.token_file` (README, \"Security model\")."
            );
        }
        self.sweep(now());
        Ok(self)
    }

    /// Shares every change through `share` (several masters on
    /// PostgreSQL). Pending keys then expire on one master only, the
    /// singletons' leader, which deletes them from the shared store; the
    /// others follow its notifications.
    pub fn with_sharing(mut self, share: tokio::sync::mpsc::Sender<ShareRequest>) -> KeyStore {
        self.share = Some(share);
        self.lock().sharing = true;
        self
    }

    /// The facts frozen here for keys of `ids` and not yet shared, each
    /// with whether an operator froze them (replace the shared row) or
    /// this master first (insert where none is).
    pub fn facts_to_share(&self, ids: &[String]) -> Vec<(FactsRow, bool)> {
        let wanted: HashSet<&str> = ids.iter().map(String::as_str).collect();
        let table = self.lock();
        table
            .facts_unshared
            .iter()
            .filter(|((id, _), _)| wanted.contains(id.as_str()))
            .filter_map(|(pair, replace)| {
                let facts = table.facts.get(pair)?;
                let row = FactsRow {
                    id: pair.0.clone(),
                    key: pair.1.to_string(),
                    frozen: facts.frozen.clone(),
                    held: facts.held.clone(),
                };
                Some((row, *replace))
            })
            .collect()
    }

    /// Every accepted key's frozen facts, by agent id, for targets that
    /// read facts on agents connected to other masters.
    pub fn frozen_facts(&self) -> HashMap<String, Value> {
        let table = self.lock();
        table
            .facts
            .iter()
            .filter(|(pair, _)| table.entries.get(*pair).is_some_and(|r| r.status == KeyStatus::Accepted))
            .map(|((id, _), facts)| (id.clone(), Value::from_json(&facts.frozen)))
            .collect()
    }

    /// Every accepted key's frozen facts, to insert where the shared store
    /// has none (a data dir meeting PostgreSQL, or facts frozen before it
    /// shared them).
    pub fn all_facts(&self) -> Vec<FactsRow> {
        let table = self.lock();
        table
            .facts
            .iter()
            .filter(|(pair, _)| table.entries.get(*pair).is_some_and(|r| r.status == KeyStatus::Accepted))
            .map(|((id, key), facts)| FactsRow {
                id: id.clone(),
                key: key.to_string(),
                frozen: facts.frozen.clone(),
                held: facts.held.clone(),
            })
            .collect()
    }

    /// Makes memory's frozen facts those of `rows` (the shared store's)
    /// for accepted keys, except an operator's here on their way there
    /// (they replace the row). Facts this master froze first and has not
    /// written yet give way: they are only ever inserted where no row is,
    /// so the row there wins, and the insert is dropped. A claim held that
    /// the shared facts now equal is no longer held.
    /// Returns the agents whose frozen facts changed, with the new ones,
    /// for their live sessions.
    pub fn sync_facts(&self, rows: &[FactsRow]) -> Vec<(String, Value)> {
        let mut changed = Vec::new();
        let mut table = self.lock();
        let wake = table.dirty.is_empty();
        for row in rows {
            let Ok(key) = row.key.parse::<PublicKey>() else {
                tracing::warn!(agent = %row.id, "A shared facts row names a key that does not parse; skipped.");
                continue;
            };
            let pair = (row.id.clone(), key);
            let accepted = table.entries.get(&pair).is_some_and(|r| r.status == KeyStatus::Accepted);
            if !accepted || table.facts_unshared.get(&pair) == Some(&true) {
                continue;
            }
            table.facts_unshared.remove(&pair);
            if table.facts.get(&pair).is_some_and(|f| f.frozen == row.frozen) {
                continue;
            }
            let held = table.facts.get(&pair).and_then(|f| f.held.clone()).filter(|held| *held != row.frozen);
            table.facts.insert(pair.clone(), Facts { frozen: row.frozen.clone(), held });
            table.dirty.insert(pair);
            changed.push((row.id.clone(), Value::from_json(&row.frozen)));
        }
        drop(table);
        if wake && !changed.is_empty() {
            self.store.wake();
        }
        changed
    }

    /// Writes the keys of `ids` as memory holds them to the shared store
    /// (an operator's decision); `true` once written. `true` at once on a
    /// lone master.
    pub async fn share(&self, ids: Vec<String>) -> bool {
        let Some(share) = &self.share else { return true };
        if ids.is_empty() {
            return true;
        }
        let (done, wait) = tokio::sync::oneshot::channel();
        if share.send(ShareRequest { ids, replace: true, done: Some(done) }).await.is_err() {
            return false;
        }
        wait.await.unwrap_or(false)
    }

    /// A key first seen here goes to the shared store (never waits).
    fn share_new(&self, id: &str, key: &PublicKey) {
        let Some(share) = &self.share else { return };
        // Kept until written, even when the queue is full: it then stays
        // this master's alone (see `SHARE_QUEUE`).
        self.lock().unshared.insert((id.to_owned(), *key));
        if share.try_send(ShareRequest { ids: vec![id.to_owned()], replace: false, done: None }).is_err() {
            tracing::warn!(
                agent = id,
                "Too many key changes wait for the shared store; this new key is not shared (it is when an operator decides about it)."
            );
        }
    }

    /// The keys of `ids` were written to the shared store: a re-read may
    /// now forget them if another master deleted them.
    pub fn shared_done(&self, ids: &[String]) {
        let written: HashSet<&str> = ids.iter().map(String::as_str).collect();
        let mut table = self.lock();
        table.unshared.retain(|(id, _)| !written.contains(id.as_str()));
        table.facts_unshared.retain(|(id, _), _| !written.contains(id.as_str()));
    }

    /// Every key of the agent ids `ids`, as memory holds them.
    pub fn entries_of(&self, ids: &[String]) -> Vec<KeyEntry> {
        let wanted: HashSet<&str> = ids.iter().map(String::as_str).collect();
        self.lock()
            .entries
            .iter()
            .filter(|((id, _), _)| wanted.contains(id.as_str()))
            .map(|(p, r)| entry(p, *r))
            .collect()
    }

    /// Makes memory hold exactly `rows` (the shared store's) for the ids
    /// `ids` names (`None`: every id, a full re-read); the change reaches
    /// halite.db, this master's copy, through its writer. Rows that do not
    /// parse are skipped (logged).
    pub fn sync(&self, ids: Option<&[String]>, rows: &[KeyEntry]) -> Synced {
        let mut target: IndexMap<Pair, Record> = IndexMap::new();
        for row in rows {
            match row.key.parse::<PublicKey>() {
                Ok(key) => {
                    target.insert((row.id.clone(), key), Record { status: row.status, since: row.since });
                }
                Err(error) => {
                    tracing::warn!(agent = %row.id, %error, "A shared key row does not parse; skipped.");
                }
            }
        }
        let scope: Option<HashSet<&str>> = ids.map(|ids| ids.iter().map(String::as_str).collect());
        let in_scope = |id: &str| scope.as_ref().is_none_or(|s| s.contains(id));
        let mut synced = Synced::default();
        let mut table = self.lock();
        let wake = table.dirty.is_empty();
        // A key first seen here whose row is not written yet is not
        // missing from the shared store: it is on its way there.
        let unshared = std::mem::take(&mut table.unshared);
        let removed =
            table.remove_where(|pair, _| in_scope(&pair.0) && !target.contains_key(pair) && !unshared.contains(pair));
        table.unshared = unshared;
        for (pair, record) in &removed {
            if record.status == KeyStatus::Accepted {
                synced.lost.push((entry(pair, *record), None));
            }
        }
        synced.changed += removed.len();
        for (pair, record) in target {
            if !in_scope(&pair.0) {
                continue;
            }
            let before = table.entries.get(&pair).copied();
            if before == Some(record) {
                continue;
            }
            let was_accepted = before.is_some_and(|b| b.status == KeyStatus::Accepted);
            if was_accepted && record.status != KeyStatus::Accepted {
                synced.lost.push((entry(&pair, record), Some(record.status)));
                table.facts.remove(&pair);
            }
            if !was_accepted && record.status == KeyStatus::Accepted {
                synced.accepted.push(entry(&pair, record));
            }
            table.insert(pair, record);
            synced.changed += 1;
        }
        table.recount();
        drop(table);
        if wake && synced.changed > 0 {
            self.store.wake();
        }
        synced
    }

    /// Forgets pending keys older than `pending_expire`, at most once a
    /// minute (each new key calls it).
    fn sweep(&self, now: u64) {
        if self.share.is_some() {
            // The leader expires them in the shared store.
            return;
        }
        let cutoff = now.saturating_sub(self.enrol.pending_expire.as_secs());
        let mut table = self.lock();
        if table.swept != 0 && now.saturating_sub(table.swept) < 60 {
            return;
        }
        table.swept = now;
        let wake = table.dirty.is_empty();
        let expired = table.expire(cutoff);
        drop(table);
        for ((id, key), _) in &expired {
            tracing::info!(agent = %id, fingerprint = %key, "Forgot a pending key no operator decided about (`enrolment.pending_expire`).");
        }
        if wake && !expired.is_empty() {
            self.store.wake();
        }
    }

    /// Decides about `id` presenting `key` with the hello's `facts` from
    /// `source`, as [`KeyStore::admit`] and more: the enrolment token
    /// (taken out of the facts, never kept) or a pre-registered key lets a
    /// new id in; pending keys are capped and rate-limited per source
    /// (refused keys are not recorded); an accepted key gets the facts
    /// frozen for it. No I/O.
    pub fn arrive(
        &self,
        id: &str,
        key: &PublicKey,
        facts: Value,
        source: Option<IpAddr>,
    ) -> Result<Arrival, KeyStoreError> {
        let mut facts = facts;
        let presented = match &mut facts {
            Value::Map(map) => map.remove(halite_proto::message::ENROL_TOKEN_FACT),
            _ => None,
        };
        let token_ok = match (&self.enrol.token, &presented) {
            (Some(token), Some(Value::String(presented))) => same_secret(token, presented),
            _ => false,
        };
        let now = now();
        self.sweep(now);
        let pair = (id.to_owned(), *key);
        let mut table = self.lock();
        if let Some(record) = table.entries.get(&pair).copied() {
            let admission = Admission { status: record.status, new: false };
            if record.status != KeyStatus::Accepted {
                return Ok(Arrival { admission, facts, held: false });
            }
            let wake = table.dirty.is_empty();
            let (facts, held) = table.trusted_facts(&pair, &facts);
            let unshared = table.facts_unshared.contains_key(&pair);
            drop(table);
            if wake {
                self.store.wake();
            }
            if unshared {
                self.share_facts(id);
            }
            return Ok(Arrival { admission, facts, held });
        }
        let has_accepted = table.entries.iter().any(|((i, _), r)| i == id && r.status == KeyStatus::Accepted);
        let known_id = table.ids.contains_key(id);
        let enrolled = token_ok || self.enrol.fingerprints.contains(key);
        let globbed = self.auto_accept.iter().any(|g| g.is_match(id));
        let status = if has_accepted {
            KeyStatus::Pending
        } else if enrolled && (globbed || self.enrol.fingerprints.contains(key)) {
            // A token (or a registered key) outranks a squatter that got
            // the id first without one: its pending keys are retired.
            KeyStatus::Accepted
        } else if !known_id && globbed && self.enrol.token.is_none() {
            KeyStatus::Accepted
        } else {
            KeyStatus::Pending
        };
        if status == KeyStatus::Pending {
            if table.pending >= self.enrol.pending_max {
                return Err(KeyStoreError::PendingFull { id: id.to_owned(), max: self.enrol.pending_max });
            }
            if let Some(source) = source {
                let mut sources = self.sources.lock().unwrap_or_else(|p| p.into_inner());
                let minute = now / 60;
                if sources.minute != minute {
                    sources.minute = minute;
                    sources.counts.clear();
                }
                let count = sources.counts.entry(source).or_default();
                if *count >= self.enrol.per_source {
                    return Err(KeyStoreError::TooManyFromSource {
                        id: id.to_owned(),
                        address: source,
                        limit: self.enrol.per_source,
                    });
                }
                *count += 1;
            }
        }
        if known_id && !has_accepted && status == KeyStatus::Pending {
            tracing::warn!(agent = id, fingerprint = %key, "A known agent id came back with another key; it stays pending until an operator decides.");
        }
        if has_accepted {
            tracing::warn!(agent = id, fingerprint = %key, "A known agent id came back with another key; it stays pending until an operator decides.");
        }
        let wake = table.dirty.is_empty();
        let mut retired_any = false;
        if status == KeyStatus::Accepted && known_id {
            let retired = table.remove_where(|(i, k), _| i == id && k != key);
            for ((_, other), _) in retired {
                retired_any = true;
                tracing::warn!(agent = id, fingerprint = %other, "A key that claimed this id without the enrolment token is retired.");
            }
        }
        table.insert(pair.clone(), Record { status, since: now });
        let (facts, held) =
            if status == KeyStatus::Accepted { table.trusted_facts(&pair, &facts) } else { (facts, false) };
        drop(table);
        if wake {
            self.store.wake();
        }
        if retired_any {
            // A token's acceptance decides the id: shared as an operator's.
            if let Some(share) = &self.share {
                let _ = share.try_send(ShareRequest { ids: vec![id.to_owned()], replace: true, done: None });
            }
        } else {
            self.share_new(id, key);
        }
        Ok(Arrival { admission: Admission { status, new: true }, facts, held })
    }

    /// An operator accepted `key` while its agent was connected with
    /// `facts`: those are the facts frozen for it.
    pub fn freeze(&self, id: &str, key: &PublicKey, facts: &Value) {
        let pair = (id.to_owned(), *key);
        let mut table = self.lock();
        table.facts.insert(pair.clone(), Facts { frozen: facts.to_json(), held: None });
        if table.sharing {
            table.facts_unshared.insert(pair.clone(), true);
        }
        table.dirty.insert(pair);
    }

    /// Facts frozen here for `id` go to the shared store (never waits;
    /// with a full queue they go with the id's next change, or when the
    /// listener reconnects and inserts every frozen fact).
    fn share_facts(&self, id: &str) {
        let Some(share) = &self.share else { return };
        if share.try_send(ShareRequest { ids: vec![id.to_owned()], replace: false, done: None }).is_err() {
            tracing::warn!(
                agent = id,
                "Too many key changes wait for the shared store; these frozen facts are shared later."
            );
        }
    }

    /// The facts held for every key `selector` names.
    pub fn facts(&self, selector: &str) -> Result<Vec<FactsRow>, KeyStoreError> {
        let matches = Selector::parse(selector)?;
        let table = self.lock();
        let mut rows: Vec<FactsRow> = table
            .facts
            .iter()
            .filter(|(pair, _)| matches.hits(pair))
            .map(|((id, key), facts)| FactsRow {
                id: id.clone(),
                key: key.to_string(),
                frozen: facts.frozen.clone(),
                held: facts.held.clone(),
            })
            .collect();
        rows.sort_by(|a, b| (&a.id, &a.key).cmp(&(&b.id, &b.key)));
        Ok(rows)
    }

    /// An operator trusts what the keys `selector` names claimed since
    /// acceptance: held facts become the frozen ones. Returns the rows
    /// changed (as they are now). [`KeyStore::commit`] puts it on disk.
    pub fn accept_facts(&self, selector: &str) -> Result<Vec<FactsRow>, KeyStoreError> {
        let matches = Selector::parse(selector)?;
        let mut table = self.lock();
        let hits: Vec<Pair> = table
            .facts
            .iter()
            .filter(|(pair, facts)| matches.hits(pair) && facts.held.is_some())
            .map(|(pair, _)| pair.clone())
            .collect();
        let mut changed = Vec::new();
        for pair in hits {
            if let Some(facts) = table.facts.get_mut(&pair)
                && let Some(held) = facts.held.take()
            {
                facts.frozen = held;
                changed.push(FactsRow {
                    id: pair.0.clone(),
                    key: pair.1.to_string(),
                    frozen: facts.frozen.clone(),
                    held: None,
                });
                if table.sharing {
                    // An operator's: it replaces the shared row.
                    table.facts_unshared.insert(pair.clone(), true);
                }
            }
            table.dirty.insert(pair);
        }
        drop(table);
        if changed.is_empty() {
            return Err(KeyStoreError::NoFacts { selector: selector.to_owned() });
        }
        self.store.wake();
        Ok(changed)
    }

    fn lock(&self) -> MutexGuard<'_, Table> {
        lock(&self.table)
    }

    /// Every key, in the order first seen.
    pub fn list(&self) -> Vec<KeyEntry> {
        self.lock().entries.iter().map(|(pair, record)| entry(pair, *record)).collect()
    }

    pub fn status(&self, id: &str, key: &PublicKey) -> Option<KeyStatus> {
        self.lock().entries.get(&(id.to_owned(), *key)).map(|r| r.status)
    }

    /// Decides about `id` presenting `key` by the id rules alone (no token,
    /// caps or facts: the link uses [`KeyStore::arrive`]), recording a new
    /// key. No I/O:
    /// a new key is committed by the store's writer with the next batch
    /// (see the module docs for what a crash before then means).
    pub fn admit(&self, id: &str, key: &PublicKey) -> Admission {
        let pair = (id.to_owned(), *key);
        let (status, wake) = {
            let mut table = self.lock();
            if let Some(record) = table.entries.get(&pair) {
                return Admission { status: record.status, new: false };
            }
            let known_id = table.ids.contains_key(id);
            let status = if !known_id && self.auto_accept.iter().any(|g| g.is_match(id)) {
                KeyStatus::Accepted
            } else {
                KeyStatus::Pending
            };
            if known_id {
                tracing::warn!(agent = id, fingerprint = %key, "A known agent id came back with another key; it stays pending until an operator decides.");
            }
            let wake = table.dirty.is_empty();
            table.insert(pair, Record { status, since: now() });
            (status, wake)
        };
        if wake {
            self.store.wake();
        }
        self.share_new(id, key);
        Admission { status, new: true }
    }

    /// Sets the status of every key `selector` names (an id glob, or a key)
    /// in memory, where it takes effect at once; returns the entries
    /// changed. Accepting retires the id's other keys. [`KeyStore::commit`]
    /// puts it on disk.
    pub fn set_status(&self, selector: &str, status: KeyStatus) -> Result<Vec<KeyEntry>, KeyStoreError> {
        let matches = Selector::parse(selector)?;
        let mut table = self.lock();
        let hits: Vec<Pair> = table
            .entries
            .iter()
            .filter(|(pair, record)| matches.hits(pair) && record.status != status)
            .map(|(pair, _)| pair.clone())
            .collect();
        if status == KeyStatus::Accepted {
            let mut per_id: HashMap<&str, usize> = HashMap::new();
            for (id, _) in &hits {
                *per_id.entry(id).or_default() += 1;
            }
            if let Some((id, count)) = per_id.into_iter().find(|(_, count)| *count > 1) {
                return Err(KeyStoreError::Ambiguous { selector: selector.to_owned(), id: id.to_owned(), count });
            }
        }
        let wake = table.dirty.is_empty() && !hits.is_empty();
        let mut changed = Vec::with_capacity(hits.len());
        for pair in &hits {
            if let Some(record) = table.entries.get_mut(pair) {
                record.status = status;
                changed.push(entry(pair, *record));
            }
            table.dirty.insert(pair.clone());
        }
        if status == KeyStatus::Accepted {
            // One key per id among the hits (checked above).
            let accepted: HashMap<&str, PublicKey> = hits.iter().map(|(id, key)| (id.as_str(), *key)).collect();
            table.remove_where(|(id, key), _| accepted.get(id.as_str()).is_some_and(|k| k != key));
        }
        table.recount();
        drop(table);
        if wake {
            self.store.wake();
        }
        Ok(changed)
    }

    /// Every key `selector` names, whatever its status.
    pub fn matching(&self, selector: &str) -> Result<Vec<KeyEntry>, KeyStoreError> {
        let matches = Selector::parse(selector)?;
        Ok(self.lock().entries.iter().filter(|(pair, _)| matches.hits(pair)).map(|(p, r)| entry(p, *r)).collect())
    }

    /// Refuses an acceptance by id glob that would retire an id's accepted
    /// key: an impostor presenting a known id must not take it over on a
    /// `keys accept web01` typed for the real host. A fingerprint names the
    /// new key explicitly, and passes.
    pub fn check_no_replacement(&self, selector: &str) -> Result<(), KeyStoreError> {
        let matches = Selector::parse(selector)?;
        if matches!(matches, Selector::Key(_)) {
            return Ok(());
        }
        let table = self.lock();
        for ((id, key), record) in &table.entries {
            if record.status == KeyStatus::Accepted || !matches.hits(&(id.clone(), *key)) {
                continue;
            }
            let held =
                table.entries.iter().find(|((other, k), r)| other == id && k != key && r.status == KeyStatus::Accepted);
            if let Some(((_, accepted), _)) = held {
                return Err(KeyStoreError::Replaces {
                    id: id.clone(),
                    accepted: accepted.to_string(),
                    new: key.to_string(),
                });
            }
        }
        Ok(())
    }

    /// Forgets every key `selector` names, in memory; returns them.
    /// [`KeyStore::commit`] puts it on disk.
    pub fn delete(&self, selector: &str) -> Result<Vec<KeyEntry>, KeyStoreError> {
        let matches = Selector::parse(selector)?;
        let mut table = self.lock();
        let wake = table.dirty.is_empty();
        let deleted: Vec<KeyEntry> = table
            .remove_where(|pair, _| matches.hits(pair))
            .iter()
            .map(|(pair, record)| entry(pair, *record))
            .collect();
        drop(table);
        if wake && !deleted.is_empty() {
            self.store.wake();
        }
        Ok(deleted)
    }

    /// Returns once every change made before it is committed and fsynced.
    pub async fn commit(&self) -> Result<(), KeyStoreError> {
        self.store
            .commit()
            .await
            .map_err(|message| KeyStoreError::Write { path: self.store.file().to_path_buf(), message })
    }
}

enum Selector {
    Key(PublicKey),
    Id(GlobMatcher),
}

impl Selector {
    fn parse(selector: &str) -> Result<Selector, KeyStoreError> {
        if let Ok(key) = selector.parse::<PublicKey>() {
            return Ok(Selector::Key(key));
        }
        Glob::new(selector)
            .map(|g| Selector::Id(g.compile_matcher()))
            .map_err(|e| KeyStoreError::Selector { selector: selector.to_owned(), message: e.kind().to_string() })
    }

    fn hits(&self, (id, key): &Pair) -> bool {
        match self {
            Selector::Key(wanted) => key == wanted,
            Selector::Id(glob) => glob.is_match(id),
        }
    }
}

fn now() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_secs())
}

/// Every key in the store `db` (`<data_dir>/halite.db`), read-only and
/// sorted by id then key: `keys list` with the master stopped.
pub fn read_stored(db: &Path) -> Result<Vec<KeyEntry>, KeyStoreError> {
    let error = |e: rusqlite::Error| KeyStoreError::Store { path: db.to_path_buf(), message: e.to_string() };
    if !db.exists() {
        return Err(KeyStoreError::Store {
            path: db.to_path_buf(),
            message: "no such file (has a master run with this data dir? `--data-dir` names another)".into(),
        });
    }
    let flags = rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY | rusqlite::OpenFlags::SQLITE_OPEN_NO_MUTEX;
    let connection = Connection::open_with_flags(db, flags).map_err(error)?;
    let mut statement =
        connection.prepare("SELECT id, key, status, since FROM keys ORDER BY id, key").map_err(error)?;
    let rows = statement
        .query_map([], |row| {
            Ok((row.get::<_, String>(0)?, row.get::<_, String>(1)?, row.get::<_, String>(2)?, row.get::<_, i64>(3)?))
        })
        .map_err(error)?;
    let mut entries = Vec::new();
    for row in rows {
        let (id, key, status, since) = row.map_err(error)?;
        let status = KeyStatus::parse(&status).ok_or_else(|| KeyStoreError::Store {
            path: db.to_path_buf(),
            message: format!("agent `{id}` has the unknown status `{status}`"),
        })?;
        entries.push(KeyEntry { id, key, status, since: u64::try_from(since).unwrap_or(0) });
    }
    Ok(entries)
}

// The store's writer thread calls what follows; nothing else touches the
// `keys` table.

/// The key table as the store's writer persists it.
struct Persister(Shared);

impl Persisted for Persister {
    fn persist(&mut self, connection: &mut Connection) -> Result<(), String> {
        persist(connection, &self.0).map(|_| ()).map_err(|error| {
            tracing::error!(%error, "Cannot save keys; they stay in memory and are retried with the next change.");
            error.to_string()
        })
    }
}

/// Imports `legacy` (keys.json) if it is there, then loads every key.
/// `db` names the store in errors.
fn load(connection: &mut Connection, db: &Path, legacy: &Path) -> Result<Shared, KeyStoreError> {
    import(connection, db, legacy)?;
    let store_error = |e: rusqlite::Error| KeyStoreError::Store { path: db.to_path_buf(), message: e.to_string() };
    let mut statement =
        connection.prepare("SELECT id, key, status, since FROM keys ORDER BY rowid").map_err(store_error)?;
    let rows = statement
        .query_map([], |row| {
            Ok((row.get::<_, String>(0)?, row.get::<_, String>(1)?, row.get::<_, String>(2)?, row.get::<_, i64>(3)?))
        })
        .map_err(store_error)?;
    let mut table = Table::default();
    for row in rows {
        let (id, key, status, since) = row.map_err(store_error)?;
        // A row only a hand edit could have made: say which, and how to mend it.
        let bad_row = |what: String| KeyStoreError::Store {
            path: db.to_path_buf(),
            message: format!(
                "{what}; correct or delete that row of the `keys` table (sqlite3), and the agent comes back as new"
            ),
        };
        let key = key.parse::<PublicKey>().map_err(|e| bad_row(format!("the key of agent `{id}`: {e}")))?;
        let status = KeyStatus::parse(&status)
            .ok_or_else(|| bad_row(format!("agent `{id}` has the unknown status `{status}`")))?;
        table.insert((id, key), Record { status, since: u64::try_from(since).unwrap_or(0) });
    }
    drop(statement);
    load_facts(connection, &mut table).map_err(store_error)?;
    table.dirty.clear();
    Ok(Arc::new(Mutex::new(table)))
}

/// The facts frozen per accepted key: a table of this module's own,
/// made here when missing (a row per key with facts; deleted with it).
const FACTS_SCHEMA: &str = "CREATE TABLE IF NOT EXISTS key_facts (
    id TEXT NOT NULL, key TEXT NOT NULL, frozen TEXT NOT NULL, held TEXT, PRIMARY KEY (id, key))";

fn load_facts(connection: &mut Connection, table: &mut Table) -> rusqlite::Result<()> {
    connection.execute_batch(FACTS_SCHEMA)?;
    let mut statement = connection.prepare("SELECT id, key, frozen, held FROM key_facts")?;
    let rows = statement.query_map([], |row| {
        Ok((
            row.get::<_, String>(0)?,
            row.get::<_, String>(1)?,
            row.get::<_, String>(2)?,
            row.get::<_, Option<String>>(3)?,
        ))
    })?;
    for row in rows {
        let (id, key, frozen, held) = row?;
        let (Ok(key), Ok(frozen)) = (key.parse::<PublicKey>(), serde_json::from_str(&frozen)) else {
            tracing::warn!(agent = %id, "Unreadable frozen facts; they are frozen again at the agent's next session.");
            continue;
        };
        let held = held.and_then(|h| serde_json::from_str(&h).ok());
        if table.entries.contains_key(&(id.clone(), key)) {
            table.facts.insert((id, key), Facts { frozen, held });
        }
    }
    Ok(())
}

fn import(connection: &mut Connection, db: &Path, legacy: &Path) -> Result<(), KeyStoreError> {
    let bytes = match std::fs::read(legacy) {
        Ok(bytes) => bytes,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
        Err(source) => return Err(KeyStoreError::Read { path: legacy.to_path_buf(), source }),
    };
    let corrupt = |message: String| KeyStoreError::Corrupt { path: legacy.to_path_buf(), message };
    let entries: Vec<KeyEntry> = serde_json::from_slice(&bytes).map_err(|e| corrupt(e.to_string()))?;
    let mut pairs = Vec::with_capacity(entries.len());
    for (index, entry) in entries.iter().enumerate() {
        let key =
            entry.key.parse::<PublicKey>().map_err(|e| corrupt(format!("entry {index} (`{}`): {e}", entry.id)))?;
        pairs.push((entry, key));
    }
    let failed = |e: rusqlite::Error| KeyStoreError::Import { path: legacy.to_path_buf(), message: e.to_string() };
    let result = connection.execute_batch("PRAGMA synchronous = FULL;").and_then(|()| {
        let tx = connection.transaction()?;
        let mut added = 0;
        {
            let mut insert = tx.prepare(
                "INSERT INTO keys (id, key, status, since) VALUES (?1, ?2, ?3, ?4) ON CONFLICT (id, key) DO NOTHING",
            )?;
            for (entry, key) in &pairs {
                added += insert.execute(params![
                    entry.id,
                    key.to_string(),
                    entry.status.as_str(),
                    i64::try_from(entry.since).unwrap_or(i64::MAX)
                ])?;
            }
        }
        tx.commit()?;
        Ok(added)
    });
    let _ = connection.execute_batch("PRAGMA synchronous = NORMAL;");
    let added = result.map_err(failed)?;
    let renamed = legacy.with_extension("json.imported");
    std::fs::rename(legacy, &renamed).map_err(|e| KeyStoreError::Import {
        path: legacy.to_path_buf(),
        message: format!("imported, but cannot rename it to {}: {e}; rename or remove it yourself", renamed.display()),
    })?;
    tracing::info!(path = %legacy.display(), keys = entries.len(), added, store = %db.display(), renamed = %renamed.display(), "Imported the key store into halite.db.");
    Ok(())
}

/// Writes what memory holds for every dirty pair in one fsynced
/// transaction; returns how many rows it wrote. On failure the pairs stay
/// dirty for the next attempt.
fn persist(connection: &mut Connection, shared: &Shared) -> rusqlite::Result<usize> {
    let changes: Vec<(Pair, Option<Record>, Option<Facts>)> = {
        let mut table = lock(shared);
        let dirty = std::mem::take(&mut table.dirty);
        dirty
            .into_iter()
            .map(|pair| {
                let record = table.entries.get(&pair).copied();
                let facts = table.facts.get(&pair).cloned();
                (pair, record, facts)
            })
            .collect()
    };
    if changes.is_empty() {
        return Ok(0);
    }
    let result = write(connection, &changes);
    if result.is_err() {
        let mut table = lock(shared);
        for (pair, _, _) in changes {
            table.dirty.insert(pair);
        }
    }
    result
}

fn write(connection: &mut Connection, changes: &[(Pair, Option<Record>, Option<Facts>)]) -> rusqlite::Result<usize> {
    // FULL only here: job records keep NORMAL (WAL), where a power cut may
    // undo the last commits; a key change must not be undone.
    connection.execute_batch("PRAGMA synchronous = FULL;")?;
    let result = (|| {
        let tx = connection.transaction()?;
        {
            let mut upsert = tx.prepare_cached(
                "INSERT INTO keys (id, key, status, since) VALUES (?1, ?2, ?3, ?4)
                 ON CONFLICT (id, key) DO UPDATE SET status = ?3, since = ?4",
            )?;
            let mut delete = tx.prepare_cached("DELETE FROM keys WHERE id = ?1 AND key = ?2")?;
            let mut upsert_facts = tx.prepare_cached(
                "INSERT INTO key_facts (id, key, frozen, held) VALUES (?1, ?2, ?3, ?4)
                 ON CONFLICT (id, key) DO UPDATE SET frozen = ?3, held = ?4",
            )?;
            let mut delete_facts = tx.prepare_cached("DELETE FROM key_facts WHERE id = ?1 AND key = ?2")?;
            for ((id, key), _, facts) in changes {
                match facts {
                    Some(facts) => upsert_facts.execute(params![
                        id,
                        key.to_string(),
                        facts.frozen.to_string(),
                        facts.held.as_ref().map(ToString::to_string)
                    ])?,
                    None => delete_facts.execute(params![id, key.to_string()])?,
                };
            }
            for ((id, key), record, _) in changes {
                match record {
                    Some(record) => upsert.execute(params![
                        id,
                        key.to_string(),
                        record.status.as_str(),
                        i64::try_from(record.since).unwrap_or(i64::MAX)
                    ])?,
                    None => delete.execute(params![id, key.to_string()])?,
                };
            }
        }
        tx.commit()
    })();
    connection.execute_batch("PRAGMA synchronous = NORMAL;")?;
    result.map(|()| changes.len())
}

#[cfg(test)]
mod tests {
    use super::*;
    use halite_link::Keypair;

    fn key() -> PublicKey {
        Keypair::generate().unwrap().public
    }

    async fn open(dir: &Path, auto_accept: &[&str]) -> (Store, KeyStore) {
        let store = Store::open(&crate::server::store::path(dir)).unwrap();
        let globs: Vec<String> = auto_accept.iter().map(|g| (*g).to_owned()).collect();
        let keys = KeyStore::open(&store, dir, &globs).await.unwrap();
        (store, keys)
    }

    fn enrolment(dir: &Path, token: Option<&str>) -> crate::config::Enrolment {
        let token_file = token.map(|token| {
            let path = dir.join("enrol.token");
            std::fs::write(&path, format!("{token}\n")).unwrap();
            path
        });
        crate::config::Enrolment { token_file, ..crate::config::Enrolment::default() }
    }

    fn with_token(token: &str) -> Value {
        Value::map().with("hostname", "web05").with(halite_proto::message::ENROL_TOKEN_FACT, token)
    }

    const TOKEN: &str = "0123456789abcdef0123";

    /// The shared store's rows applied to memory: a deleted, rejected or
    /// retired accepted key is lost (its session is cut), a newly accepted
    /// one reported, rows of ids out of scope untouched, halite.db follows,
    /// and applying the same rows again changes nothing.
    #[tokio::test]
    async fn shared_rows_are_applied_and_report_what_to_cut() {
        let dir = tempfile::tempdir().unwrap();
        let (store, keys) = open(dir.path(), &["web*", "db*"]).await;
        let (web01, web02, db01, db01_new) = (key(), key(), key(), key());
        for (id, key) in [("web01", &web01), ("web02", &web02), ("db01", &db01)] {
            assert_eq!(keys.admit(id, key).status, KeyStatus::Accepted);
        }
        let pending = keys.admit("new01", &key());
        assert_eq!(pending.status, KeyStatus::Pending);
        let row =
            |id: &str, key: &PublicKey, status| KeyEntry { id: id.into(), key: key.to_string(), status, since: 7 };
        // Another master deleted web01, rejected web02, accepted a new key
        // for db01 (retiring the old), and new01 is gone.
        let rows = [row("web02", &web02, KeyStatus::Rejected), row("db01", &db01_new, KeyStatus::Accepted)];
        let synced = keys.sync(None, &rows);
        let lost: Vec<(&str, Option<KeyStatus>)> =
            synced.lost.iter().map(|(e, status)| (e.id.as_str(), *status)).collect();
        assert_eq!(lost.len(), 3, "{lost:?}");
        for wanted in [("web01", None), ("web02", Some(KeyStatus::Rejected)), ("db01", None)] {
            assert!(lost.contains(&wanted), "{wanted:?} in {lost:?}");
        }
        assert_eq!(synced.accepted, [row("db01", &db01_new, KeyStatus::Accepted)]);
        assert_eq!(keys.status("web02", &web02), Some(KeyStatus::Rejected));
        assert_eq!(keys.status("web01", &web01), None);
        assert_eq!(keys.list().len(), 2);
        assert_eq!(keys.sync(None, &rows), Synced::default(), "nothing changes twice");
        // Scoped to one id: the others stay as they are.
        let synced = keys.sync(Some(&["web02".to_owned()]), &[]);
        assert_eq!(synced.changed, 1);
        assert_eq!(keys.status("db01", &db01_new), Some(KeyStatus::Accepted));
        keys.commit().await.unwrap();
        drop(store);
        let stored = read_stored(&crate::server::store::path(dir.path())).unwrap();
        assert_eq!(stored.len(), 1, "halite.db follows: {stored:?}");
    }

    /// With sharing, a key first seen is queued (insert-only), an
    /// operator's decision is queued as a replacement and waits for the
    /// writer's answer, and pending keys do not expire here.
    #[tokio::test]
    async fn shared_changes_are_queued_for_the_other_masters() {
        let dir = tempfile::tempdir().unwrap();
        let (_store, keys) = open(dir.path(), &[]).await;
        let (share, mut queued) = tokio::sync::mpsc::channel(SHARE_QUEUE);
        let keys = keys.with_sharing(share);
        let web01 = key();
        assert_eq!(keys.admit("web01", &web01).status, KeyStatus::Pending);
        // Not written yet: a re-read of its id that lacks it keeps it.
        assert_eq!(keys.sync(Some(&["web01".to_owned()]), &[]).changed, 0);
        assert_eq!(keys.status("web01", &web01), Some(KeyStatus::Pending));
        let first = queued.recv().await.unwrap();
        assert_eq!(
            (first.ids.as_slice(), first.replace, first.done.is_none()),
            (&["web01".to_owned()][..], false, true)
        );
        keys.set_status("web01", KeyStatus::Accepted).unwrap();
        let writer = tokio::spawn(async move {
            let request = queued.recv().await.unwrap();
            assert!(request.replace);
            let _ = request.done.unwrap().send(true);
            request.ids
        });
        assert!(keys.share(vec!["web01".into()]).await);
        assert_eq!(writer.await.unwrap(), ["web01"]);
        // Written: another master's deletion is applied.
        keys.shared_done(&["web01".to_owned()]);
        assert_eq!(keys.sync(Some(&["web01".to_owned()]), &[]).changed, 1);
        assert_eq!(keys.status("web01", &web01), None);
        assert!(keys.entries_of(&["web01".into()]).is_empty());
        // Expiry is the leader's: a sweep here forgets nothing.
        let old = key();
        keys.admit("old01", &old);
        keys.sweep(now() + 365 * 86_400);
        assert_eq!(keys.status("old01", &old), Some(KeyStatus::Pending));
    }

    /// With sharing, facts first frozen here are queued insert-only and
    /// kept from a re-read until written; the shared facts then replace
    /// memory's (a claim they now equal is no longer held); an operator's
    /// acceptance is queued as a replacement.
    #[tokio::test]
    async fn frozen_facts_are_shared_and_the_shared_ones_decide() {
        let dir = tempfile::tempdir().unwrap();
        let (_store, keys) = open(dir.path(), &["web*"]).await;
        let (share, mut queued) = tokio::sync::mpsc::channel(SHARE_QUEUE);
        let keys = keys.with_sharing(share);
        let web07 = key();
        let host = |name: &str| Value::map().with("hostname", name);
        let arrival = keys.arrive("web07", &web07, host("db-x"), None).unwrap();
        assert_eq!((arrival.facts, arrival.held), (host("db-x"), false), "frozen here first");
        let _ = queued.recv().await.unwrap();
        let ids = ["web07".to_owned()];
        let unshared = keys.facts_to_share(&ids);
        assert_eq!(unshared.len(), 1);
        assert_eq!((unshared[0].0.frozen.clone(), unshared[0].1), (host("db-x").to_json(), false));
        // Another master froze them first as web07: the row there wins
        // (this master's would only be inserted where none is), here and
        // for the live session, and this master's insert is dropped.
        let shared =
            FactsRow { id: "web07".into(), key: web07.to_string(), frozen: host("web07").to_json(), held: None };
        assert_eq!(keys.sync_facts(std::slice::from_ref(&shared)), [("web07".to_owned(), host("web07"))]);
        assert!(keys.facts_to_share(&ids).is_empty());
        assert!(keys.sync_facts(std::slice::from_ref(&shared)).is_empty(), "nothing changes twice");
        let arrival = keys.arrive("web07", &web07, host("db-x"), None).unwrap();
        assert_eq!((arrival.facts, arrival.held), (host("web07"), true), "the claim is held against them");
        // An operator takes the claim: it replaces the shared row, and a
        // re-read before it is written does not undo it.
        keys.accept_facts("web07").unwrap();
        assert!(keys.facts_to_share(&ids)[0].1, "an operator's replaces");
        assert!(keys.sync_facts(std::slice::from_ref(&shared)).is_empty());
        assert_eq!(keys.facts("web07").unwrap()[0].frozen, host("db-x").to_json());
        keys.shared_done(&ids);
        assert!(keys.facts_to_share(&ids).is_empty());
        // A key not accepted here gets no shared facts.
        let other = FactsRow { id: "db01".into(), key: key().to_string(), frozen: host("db01").to_json(), held: None };
        assert!(keys.sync_facts(&[other]).is_empty());
        assert!(keys.facts("db01").unwrap().is_empty());
    }

    /// `auto_accept` with a token: a squatter that claims the id first
    /// without it stays pending, the real agent with it is accepted and the
    /// squatter's key retired; the token never stays in the facts.
    #[tokio::test]
    async fn with_a_token_a_glob_accepts_only_agents_that_present_it() {
        let dir = tempfile::tempdir().unwrap();
        let (_store, keys) = open(dir.path(), &["web*"]).await;
        let keys = keys.with_enrolment(&enrolment(dir.path(), Some(TOKEN))).unwrap();
        let (squatter, real, late) = (key(), key(), key());
        let arrival = keys.arrive("web05", &squatter, Value::map(), None).unwrap();
        assert_eq!(arrival.admission.status, KeyStatus::Pending);
        let arrival = keys.arrive("web05", &squatter, with_token("wrong-token-0000000"), None).unwrap();
        assert_eq!(arrival.admission.status, KeyStatus::Pending, "a wrong token changes nothing");
        let arrival = keys.arrive("web05", &real, with_token(TOKEN), None).unwrap();
        assert_eq!(arrival.admission, Admission { status: KeyStatus::Accepted, new: true });
        assert_eq!(arrival.facts, Value::map().with("hostname", "web05"), "the token left the facts");
        assert_eq!(keys.status("web05", &squatter), None, "the squatter's key is retired");
        // Once an id has an accepted key, even the token does not add another.
        assert_eq!(keys.arrive("web05", &late, with_token(TOKEN), None).unwrap().admission.status, KeyStatus::Pending);
        // A pre-registered key needs no token.
        let registered = key();
        let mut config = enrolment(dir.path(), Some(TOKEN));
        config.fingerprints = vec![registered.to_string()];
        let keys = keys.with_enrolment(&config).unwrap();
        assert_eq!(keys.arrive("db09", &registered, Value::map(), None).unwrap().admission.status, KeyStatus::Accepted);
        let short = enrolment(dir.path(), Some("short"));
        assert!(matches!(keys.clone().with_enrolment(&short), Err(KeyStoreError::Token { .. })));
    }

    #[tokio::test]
    async fn pending_keys_are_capped_rate_limited_per_source_and_expire() {
        let dir = tempfile::tempdir().unwrap();
        let (_store, keys) = open(dir.path(), &[]).await;
        let mut config = enrolment(dir.path(), None);
        config.pending_max = 3;
        config.new_keys_per_source = 2;
        let keys = keys.with_enrolment(&config).unwrap();
        let (a, b): (IpAddr, IpAddr) = ("192.0.2.1".parse().unwrap(), "192.0.2.2".parse().unwrap());
        assert!(keys.arrive("x1", &key(), Value::map(), Some(a)).is_ok());
        assert!(keys.arrive("x2", &key(), Value::map(), Some(a)).is_ok());
        let error = keys.arrive("x3", &key(), Value::map(), Some(a)).unwrap_err();
        assert!(matches!(error, KeyStoreError::TooManyFromSource { limit: 2, .. }), "{error}");
        assert!(keys.arrive("x3", &key(), Value::map(), Some(b)).is_ok(), "another source has its own budget");
        let error = keys.arrive("x4", &key(), Value::map(), Some(b)).unwrap_err();
        assert!(matches!(error, KeyStoreError::PendingFull { max: 3, .. }), "{error}");
        assert!(error.to_string().contains("pending_max"), "{error}");
        assert_eq!(keys.list().len(), 3, "refused keys are not recorded");
        // Deciding about one makes room.
        keys.set_status("x1", KeyStatus::Rejected).unwrap();
        assert!(keys.arrive("x4", &key(), Value::map(), None).is_ok());
        // Expiry: pending keys first seen before the cut-off are forgotten.
        {
            let mut table = keys.lock();
            for record in table.entries.values_mut() {
                record.since = 1_000;
            }
            table.swept = 0;
        }
        keys.sweep(1_000 + config.pending_expire.as_secs() + 1);
        let left: Vec<String> = keys.list().into_iter().map(|e| e.id).collect();
        assert_eq!(left, ["x1"], "only the rejected key is kept");
        assert_eq!(keys.lock().pending, 0);
    }

    /// An accepted agent that later claims other facts keeps the frozen
    /// ones for targeting; the claim is held until an operator accepts it,
    /// and all of it survives a restart.
    #[tokio::test]
    async fn facts_are_frozen_at_acceptance_and_a_change_is_held() {
        let dir = tempfile::tempdir().unwrap();
        let web = key();
        let honest = Value::map().with("hostname", "web01");
        let lying = Value::map().with("hostname", "db-x");
        {
            let (_store, keys) = open(dir.path(), &["web*"]).await;
            let arrival = keys.arrive("web01", &web, honest.clone(), None).unwrap();
            assert_eq!((arrival.facts, arrival.held), (honest.clone(), false));
            let arrival = keys.arrive("web01", &web, lying.clone(), None).unwrap();
            assert_eq!((arrival.facts, arrival.held), (honest.clone(), true));
            keys.commit().await.unwrap();
        }
        let (_store, keys) = open(dir.path(), &["web*"]).await;
        let arrival = keys.arrive("web01", &web, lying.clone(), None).unwrap();
        assert_eq!((arrival.facts, arrival.held), (honest.clone(), true), "frozen across a restart");
        let rows = keys.facts("web01").unwrap();
        assert_eq!(rows[0].held, Some(lying.to_json()));
        assert!(matches!(keys.accept_facts("db*"), Err(KeyStoreError::NoFacts { .. })));
        assert_eq!(keys.accept_facts("web01").unwrap()[0].frozen, lying.to_json());
        let arrival = keys.arrive("web01", &web, lying.clone(), None).unwrap();
        assert_eq!((arrival.facts, arrival.held), (lying, false));
        // Deleting the key forgets its facts.
        keys.delete("web01").unwrap();
        assert!(keys.facts("*").unwrap().is_empty());
    }

    #[tokio::test]
    async fn lifecycle() {
        let dir = tempfile::tempdir().unwrap();
        let (_store, store) = open(dir.path(), &["web*"]).await;
        let (web, db, impostor) = (key(), key(), key());
        assert_eq!(store.admit("web01", &web), Admission { status: KeyStatus::Accepted, new: true });
        assert_eq!(store.admit("db01", &db), Admission { status: KeyStatus::Pending, new: true });
        assert_eq!(store.admit("db01", &db), Admission { status: KeyStatus::Pending, new: false });
        // A known id with another key stays pending, whatever auto_accept says.
        assert_eq!(store.admit("web01", &impostor).status, KeyStatus::Pending);
        assert_eq!(store.status("web01", &web), Some(KeyStatus::Accepted));
        // Accepting by key retires the id's other key.
        let changed = store.set_status(&impostor.to_string(), KeyStatus::Accepted).unwrap();
        assert_eq!(changed.len(), 1);
        assert_eq!(store.status("web01", &web), None);
        assert_eq!(store.set_status("db*", KeyStatus::Rejected).unwrap().len(), 1);
        store.commit().await.unwrap();
        _store.close().await;
        drop((_store, store));
        // It all survives a restart.
        let (_store, reopened) = open(dir.path(), &[]).await;
        assert_eq!(reopened.status("db01", &db), Some(KeyStatus::Rejected));
        assert_eq!(reopened.status("web01", &impostor), Some(KeyStatus::Accepted));
        assert_eq!(reopened.status("web01", &web), None, "the retired key stays retired");
        let store = reopened;
        assert_eq!(store.delete("*").unwrap().len(), 2);
        assert!(store.list().is_empty());
        assert!(store.set_status("web[", KeyStatus::Accepted).is_err());
        store.commit().await.unwrap();
        _store.close().await;
        drop((_store, store));
        let (_store, reopened) = open(dir.path(), &[]).await;
        assert!(reopened.list().is_empty(), "deletions are on disk");
    }

    /// The link loop never asks for a commit: a new key reaches the file
    /// because the writer is woken, not because someone waits for it.
    #[tokio::test]
    async fn an_admission_reaches_the_disk_on_its_own() {
        let dir = tempfile::tempdir().unwrap();
        let (store, keys) = open(dir.path(), &["*"]).await;
        // The writer is idle after this, waiting for its queue.
        store.flush().await;
        let key = key();
        keys.admit("web01", &key);
        let reader = Connection::open(crate::server::store::path(dir.path())).unwrap();
        let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(30);
        loop {
            let stored: Option<String> = rusqlite::OptionalExtension::optional(reader.query_row(
                "SELECT status FROM keys WHERE id = 'web01'",
                [],
                |row| row.get(0),
            ))
            .unwrap();
            if stored.as_deref() == Some("accepted") {
                break;
            }
            assert!(tokio::time::Instant::now() < deadline, "the writer never committed the admission");
            tokio::time::sleep(std::time::Duration::from_millis(5)).await;
        }
    }

    #[tokio::test]
    async fn admissions_are_kept_in_the_order_first_seen() {
        let dir = tempfile::tempdir().unwrap();
        let (store, keys) = open(dir.path(), &["*"]).await;
        let fleet: Vec<(String, PublicKey)> = (0..500).map(|i| (format!("agent{i:04}"), key())).collect();
        for (id, key) in &fleet {
            assert!(keys.admit(id, key).new);
        }
        // The writer commits on its own; a flush only waits for it.
        store.flush().await;
        store.close().await;
        drop((store, keys));
        let (_store, reopened) = open(dir.path(), &[]).await;
        let listed: Vec<(String, String)> = reopened.list().into_iter().map(|e| (e.id, e.key)).collect();
        let expected: Vec<(String, String)> = fleet.iter().map(|(i, k)| (i.clone(), k.to_string())).collect();
        assert_eq!(listed, expected);
        assert_eq!(reopened.admit("agent0007", &fleet[7].1), Admission { status: KeyStatus::Accepted, new: false });
        // The id is known across the restart: another key for it is pending.
        assert_eq!(reopened.admit("agent0007", &key()).status, KeyStatus::Pending);
    }

    /// A crash before the writer commits: the file holds what memory held
    /// at one moment, so the restarted master decides again as if it never
    /// saw the lost keys; the impersonation rule holds for ids it did keep.
    #[tokio::test]
    async fn what_a_crash_loses_is_decided_again_by_the_same_rules() {
        let dir = tempfile::tempdir().unwrap();
        let (web, impostor, late) = (key(), key(), key());
        {
            let (store, keys) = open(dir.path(), &["web*"]).await;
            keys.admit("web01", &web);
            keys.commit().await.unwrap();
            // Not committed when the master "crashes": only memory has them.
            {
                let mut table = keys.lock();
                table.insert(("web01".into(), impostor), Record { status: KeyStatus::Pending, since: now() });
                table.insert(("web02".into(), late), Record { status: KeyStatus::Accepted, since: now() });
                table.dirty.clear();
            }
            // The process is gone before the next one opens the store: its
            // writer thread has stopped (dropped, it could still be
            // checkpointing while the next open reads the file, which then
            // looks cut short).
            store.close().await;
        }
        let (_store, keys) = open(dir.path(), &["web*"]).await;
        assert_eq!(keys.status("web01", &impostor), None);
        assert_eq!(keys.admit("web01", &impostor), Admission { status: KeyStatus::Pending, new: true });
        assert_eq!(keys.admit("web02", &late), Admission { status: KeyStatus::Accepted, new: true });
        assert_eq!(keys.status("web01", &web), Some(KeyStatus::Accepted));
    }

    #[tokio::test]
    async fn accepting_two_keys_of_one_id_at_once_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let (_store, keys) = open(dir.path(), &[]).await;
        let (first, second) = (key(), key());
        keys.admit("db01", &first);
        keys.admit("db01", &second);
        let error = keys.set_status("db*", KeyStatus::Accepted).unwrap_err().to_string();
        assert!(error.contains("2 keys of agent `db01`") && error.contains("fingerprint"), "{error}");
        assert_eq!(keys.status("db01", &first), Some(KeyStatus::Pending), "nothing changed");
        assert_eq!(keys.set_status(&second.to_string(), KeyStatus::Accepted).unwrap().len(), 1);
        assert_eq!(keys.list().len(), 1);
        // Rejecting several keys of an id is fine.
        keys.admit("db01", &first);
        assert_eq!(keys.set_status("db01", KeyStatus::Rejected).unwrap().len(), 2);
    }

    #[tokio::test]
    async fn accepting_by_id_never_retires_an_accepted_key_unasked() {
        let dir = tempfile::tempdir().unwrap();
        let (_store, keys) = open(dir.path(), &["web*"]).await;
        let (real, impostor) = (key(), key());
        keys.admit("web01", &real);
        keys.admit("web01", &impostor);
        let error = keys.check_no_replacement("web*").unwrap_err().to_string();
        assert!(error.contains(&real.to_string()) && error.contains(&impostor.to_string()), "{error}");
        assert!(error.contains("--replace"), "{error}");
        keys.check_no_replacement(&impostor.to_string()).unwrap();
        keys.check_no_replacement("db*").unwrap();
        keys.commit().await.unwrap();
        let stored = read_stored(&crate::server::store::path(dir.path())).unwrap();
        assert_eq!(stored.len(), 2);
    }

    #[tokio::test]
    async fn keys_json_is_imported_once_and_renamed() {
        let dir = tempfile::tempdir().unwrap();
        let (web, db) = (key(), key());
        let legacy = vec![
            KeyEntry { id: "web01".into(), key: web.to_string(), status: KeyStatus::Accepted, since: 1_700_000_000 },
            KeyEntry { id: "db01".into(), key: db.to_string(), status: KeyStatus::Rejected, since: 1_700_000_001 },
        ];
        std::fs::write(dir.path().join(LEGACY_FILE), serde_json::to_vec_pretty(&legacy).unwrap()).unwrap();
        let (store, keys) = open(dir.path(), &[]).await;
        assert_eq!(keys.list(), legacy);
        assert!(!dir.path().join(LEGACY_FILE).exists());
        assert!(dir.path().join("keys.json.imported").exists());
        // The impersonation rule holds for imported ids.
        assert_eq!(keys.admit("web01", &key()).status, KeyStatus::Pending);
        keys.commit().await.unwrap();
        // Closed, not only dropped: the writer thread may still be checkpointing
        // when the next open checks the files (seen once as "cut short").
        store.close().await;
        drop((store, keys));
        let (_store, keys) = open(dir.path(), &[]).await;
        assert_eq!(keys.list().len(), 3, "imported once, kept in halite.db");
        assert_eq!(keys.status("db01", &db), Some(KeyStatus::Rejected));
    }

    #[tokio::test]
    async fn a_hand_edited_row_is_named_with_a_way_to_mend_it() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(&crate::server::store::path(dir.path())).unwrap();
        store.flush().await;
        Connection::open(crate::server::store::path(dir.path()))
            .unwrap()
            .execute("INSERT INTO keys VALUES ('web01', ?1, 'maybe', 0)", [key().to_string()])
            .unwrap();
        let error = KeyStore::open(&store, dir.path(), &[]).await.unwrap_err().to_string();
        assert!(error.contains("halite.db") && error.contains("`web01` has the unknown status `maybe`"), "{error}");
        assert!(error.contains("delete that row"), "{error}");
    }

    #[tokio::test]
    async fn a_corrupt_keys_json_is_a_clear_error_and_stays_in_place() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(&crate::server::store::path(dir.path())).unwrap();
        let legacy = dir.path().join(LEGACY_FILE);
        for (text, says) in [
            ("[{\"id\": \"web01\", \"key\"", "EOF"),
            ("[{\"id\": \"web01\", \"key\": \"abc\", \"status\": \"accepted\", \"since\": 0}]", "64 hex digits"),
            ("[{\"id\": \"web01\", \"key\": \"abc\", \"status\": \"maybe\", \"since\": 0}]", "maybe"),
        ] {
            std::fs::write(&legacy, text).unwrap();
            let error = KeyStore::open(&store, dir.path(), &[]).await.unwrap_err().to_string();
            assert!(error.contains("keys.json is not a key store") && error.contains(says), "{error}");
            assert!(error.contains("move it away"), "says what to do: {error}");
            assert!(legacy.exists());
        }
    }
}

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

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};

use globset::{Glob, GlobMatcher};
use halite_link::PublicKey;
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

    fn parse(text: &str) -> Option<KeyStatus> {
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
}

/// The shared table, as the store's writer holds it.
type Shared = Arc<Mutex<Table>>;

fn lock(shared: &Shared) -> MutexGuard<'_, Table> {
    shared.lock().unwrap_or_else(|p| p.into_inner())
}

impl Table {
    fn insert(&mut self, pair: Pair, record: Record) {
        if self.entries.insert(pair.clone(), record).is_none() {
            *self.ids.entry(pair.0.clone()).or_default() += 1;
        }
        self.dirty.insert(pair);
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
        for ((id, key), _) in &removed {
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
        Ok(KeyStore { table, store: store.clone(), auto_accept })
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

    /// Decides about `id` presenting `key`, recording a new key. No I/O:
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
    table.dirty.clear();
    Ok(Arc::new(Mutex::new(table)))
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
    let changes: Vec<(Pair, Option<Record>)> = {
        let mut table = lock(shared);
        let dirty = std::mem::take(&mut table.dirty);
        dirty
            .into_iter()
            .map(|pair| {
                let record = table.entries.get(&pair).copied();
                (pair, record)
            })
            .collect()
    };
    if changes.is_empty() {
        return Ok(0);
    }
    let result = write(connection, &changes);
    if result.is_err() {
        let mut table = lock(shared);
        for (pair, _) in changes {
            table.dirty.insert(pair);
        }
    }
    result
}

fn write(connection: &mut Connection, changes: &[(Pair, Option<Record>)]) -> rusqlite::Result<usize> {
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
            for ((id, key), record) in changes {
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
            let (_store, keys) = open(dir.path(), &["web*"]).await;
            keys.admit("web01", &web);
            keys.commit().await.unwrap();
            // Not committed when the master "crashes": only memory has them.
            let mut table = keys.lock();
            table.insert(("web01".into(), impostor), Record { status: KeyStatus::Pending, since: now() });
            table.insert(("web02".into(), late), Record { status: KeyStatus::Accepted, since: now() });
            table.dirty.clear();
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
        let (_store, keys) = open(dir.path(), &[]).await;
        assert_eq!(keys.list(), legacy);
        assert!(!dir.path().join(LEGACY_FILE).exists());
        assert!(dir.path().join("keys.json.imported").exists());
        // The impersonation rule holds for imported ids.
        assert_eq!(keys.admit("web01", &key()).status, KeyStatus::Pending);
        keys.commit().await.unwrap();
        drop((_store, keys));
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

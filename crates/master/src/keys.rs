//! Agent keys and their lifecycle: pending → accepted / rejected, deleted.
//!
//! An agent is known by its id *and* its key. A new id is pending (or
//! accepted at once when an `auto_accept` glob matches); a known id that
//! comes back with another key is pending whatever the globs say, since it
//! may be an impersonation. Accepting a key for an id retires the id's
//! other keys. The store is a JSON file in the data dir, replaced
//! atomically on every change.

use std::path::{Path, PathBuf};

use globset::{Glob, GlobMatcher};
use halite_link::PublicKey;
use serde::{Deserialize, Serialize};

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
}

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
        "{path} is not a key store: {message}; restore it from a backup or move it away (every agent becomes pending)"
    )]
    Corrupt { path: PathBuf, message: String },
    #[error("cannot save {path}: {source}")]
    Write { path: PathBuf, source: std::io::Error },
    #[error("`{selector}` is neither an agent id glob nor a key: {message}")]
    Selector { selector: String, message: String },
    #[error("auto_accept glob `{glob}`: {message}")]
    AutoAccept { glob: String, message: String },
}

#[derive(Debug)]
pub struct KeyStore {
    path: PathBuf,
    entries: Vec<KeyEntry>,
    auto_accept: Vec<GlobMatcher>,
}

/// What the store decided about a key that just completed a handshake.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Admission {
    pub status: KeyStatus,
    /// The key was not known before (an event is due).
    pub new: bool,
}

impl KeyStore {
    pub fn open(path: &Path, auto_accept: &[String]) -> Result<KeyStore, KeyStoreError> {
        let entries = match std::fs::read(path) {
            Ok(bytes) => serde_json::from_slice(&bytes)
                .map_err(|e| KeyStoreError::Corrupt { path: path.to_path_buf(), message: e.to_string() })?,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Vec::new(),
            Err(source) => return Err(KeyStoreError::Read { path: path.to_path_buf(), source }),
        };
        let auto_accept = auto_accept
            .iter()
            .map(|glob| {
                Glob::new(glob)
                    .map(|g| g.compile_matcher())
                    .map_err(|e| KeyStoreError::AutoAccept { glob: glob.clone(), message: e.kind().to_string() })
            })
            .collect::<Result<_, _>>()?;
        Ok(KeyStore { path: path.to_path_buf(), entries, auto_accept })
    }

    pub fn list(&self) -> &[KeyEntry] {
        &self.entries
    }

    pub fn status(&self, id: &str, key: &PublicKey) -> Option<KeyStatus> {
        let key = key.to_string();
        self.entries.iter().find(|e| e.id == id && e.key == key).map(|e| e.status)
    }

    /// Decides about `id` presenting `key`, recording a new key.
    pub fn admit(&mut self, id: &str, key: &PublicKey) -> Result<Admission, KeyStoreError> {
        if let Some(status) = self.status(id, key) {
            return Ok(Admission { status, new: false });
        }
        let known_id = self.entries.iter().any(|e| e.id == id);
        let status = if !known_id && self.auto_accept.iter().any(|g| g.is_match(id)) {
            KeyStatus::Accepted
        } else {
            KeyStatus::Pending
        };
        if known_id {
            tracing::warn!(agent = id, fingerprint = %key, "A known agent id came back with another key; it stays pending until an operator decides.");
        }
        self.entries.push(KeyEntry { id: id.to_owned(), key: key.to_string(), status, since: now() });
        self.save()?;
        Ok(Admission { status, new: true })
    }

    /// Sets the status of every key `selector` names (an id glob, or a key);
    /// returns the entries changed. Accepting retires the id's other keys.
    pub fn set_status(&mut self, selector: &str, status: KeyStatus) -> Result<Vec<KeyEntry>, KeyStoreError> {
        let matches = Selector::parse(selector)?;
        let mut changed: Vec<KeyEntry> = Vec::new();
        for entry in self.entries.iter_mut().filter(|e| matches.hits(e) && e.status != status) {
            entry.status = status;
            changed.push(entry.clone());
        }
        if status == KeyStatus::Accepted {
            self.entries.retain(|e| !changed.iter().any(|c| c.id == e.id && c.key != e.key));
        }
        self.save()?;
        Ok(changed)
    }

    /// Forgets every key `selector` names; returns them.
    pub fn delete(&mut self, selector: &str) -> Result<Vec<KeyEntry>, KeyStoreError> {
        let matches = Selector::parse(selector)?;
        let (deleted, kept): (Vec<KeyEntry>, Vec<KeyEntry>) = self.entries.drain(..).partition(|e| matches.hits(e));
        self.entries = kept;
        self.save()?;
        Ok(deleted)
    }

    fn save(&self) -> Result<(), KeyStoreError> {
        let fail = |source| KeyStoreError::Write { path: self.path.clone(), source };
        let dir = self.path.parent().unwrap_or(Path::new("."));
        let mut temp = tempfile::NamedTempFile::new_in(dir).map_err(fail)?;
        serde_json::to_writer_pretty(&mut temp, &self.entries).map_err(|e| fail(e.into()))?;
        temp.as_file().sync_all().map_err(fail)?;
        temp.persist(&self.path).map_err(|e| fail(e.error))?;
        Ok(())
    }
}

enum Selector {
    Key(String),
    Id(GlobMatcher),
}

impl Selector {
    fn parse(selector: &str) -> Result<Selector, KeyStoreError> {
        if let Ok(key) = selector.parse::<PublicKey>() {
            return Ok(Selector::Key(key.to_string()));
        }
        Glob::new(selector)
            .map(|g| Selector::Id(g.compile_matcher()))
            .map_err(|e| KeyStoreError::Selector { selector: selector.to_owned(), message: e.kind().to_string() })
    }

    fn hits(&self, entry: &KeyEntry) -> bool {
        match self {
            Selector::Key(key) => entry.key == *key,
            Selector::Id(glob) => glob.is_match(&entry.id),
        }
    }
}

fn now() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_secs())
}

#[cfg(test)]
mod tests {
    use super::*;
    use halite_link::Keypair;

    fn key() -> PublicKey {
        Keypair::generate().unwrap().public
    }

    #[test]
    fn lifecycle() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("keys.json");
        let mut store = KeyStore::open(&path, &["web*".into()]).unwrap();
        let (web, db, impostor) = (key(), key(), key());
        assert_eq!(store.admit("web01", &web).unwrap(), Admission { status: KeyStatus::Accepted, new: true });
        assert_eq!(store.admit("db01", &db).unwrap(), Admission { status: KeyStatus::Pending, new: true });
        assert_eq!(store.admit("db01", &db).unwrap(), Admission { status: KeyStatus::Pending, new: false });
        // A known id with another key stays pending, whatever auto_accept says.
        assert_eq!(store.admit("web01", &impostor).unwrap().status, KeyStatus::Pending);
        assert_eq!(store.status("web01", &web), Some(KeyStatus::Accepted));
        // Accepting by key retires the id's other key.
        let changed = store.set_status(&impostor.to_string(), KeyStatus::Accepted).unwrap();
        assert_eq!(changed.len(), 1);
        assert_eq!(store.status("web01", &web), None);
        assert_eq!(store.set_status("db*", KeyStatus::Rejected).unwrap().len(), 1);
        // It all survives a restart.
        let reopened = KeyStore::open(&path, &[]).unwrap();
        assert_eq!(reopened.status("db01", &db), Some(KeyStatus::Rejected));
        assert_eq!(reopened.status("web01", &impostor), Some(KeyStatus::Accepted));
        let mut store = reopened;
        assert_eq!(store.delete("*").unwrap().len(), 2);
        assert!(store.list().is_empty());
        assert!(store.set_status("web[", KeyStatus::Accepted).is_err());
    }
}

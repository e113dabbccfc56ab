//! The record of managed files: what each should contain, so that the file
//! beacon can tell drift from the agent's own corrective writes.
//!
//! The job runner records a file's desired state and marks it *in flight*
//! before writing it ([`ManagedFiles::begin`]); the file beacon ignores an
//! in-flight file, so the write's own inotify events raise nothing. When the
//! write is done ([`ManagedFiles::finish`]) the file's applied generation
//! goes up, which closes drift reported before the restore, and listeners
//! (the file beacons) are told, so they look at the file once more. The record
//! is persisted in the data dir (with `halite_fs`'s one atomic write) so drift that happens while the agent is
//! down is still recognised as drift at its next start.

use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use halite_proto::Sha256;
use halite_state::ManagedFile;
use serde::{Deserialize, Serialize};

/// What a managed file should be.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Desired {
    pub sha256: [u8; 32],
    pub mode: Option<u32>,
}

impl Desired {
    pub fn sha256(&self) -> Sha256 {
        Sha256(self.sha256)
    }
}

/// Told about every path a job has finished with; returns false once it no
/// longer wants to hear (its beacon stopped).
pub type Listener = Box<dyn Fn(&Path) -> bool + Send>;

/// What the record says of one path at one moment.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Snapshot {
    pub desired: Option<Desired>,
    pub applied: u64,
    pub in_flight: bool,
}

#[derive(Default)]
struct Inner {
    desired: HashMap<PathBuf, Desired>,
    /// Bumped each time a job finishes writing the path.
    applied: HashMap<PathBuf, u64>,
    /// Paths a job is writing now.
    in_flight: HashSet<PathBuf>,
    listeners: Vec<Listener>,
}

impl std::fmt::Debug for Inner {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Inner")
            .field("desired", &self.desired.len())
            .field("in_flight", &self.in_flight)
            .finish_non_exhaustive()
    }
}

/// Shared between the job runner (writes) and the file beacon (reads).
#[derive(Debug, Clone)]
pub struct ManagedFiles {
    inner: Arc<Mutex<Inner>>,
    /// Where the record is persisted; `None` keeps it in memory only.
    store: Option<PathBuf>,
}

impl ManagedFiles {
    pub fn in_memory() -> Self {
        ManagedFiles { inner: Arc::default(), store: None }
    }

    /// Loads the record from `path` (a missing or unreadable record starts
    /// empty, with a warning: it only ever suppresses events).
    pub fn open(path: &Path) -> Self {
        let desired = match std::fs::read(path) {
            Ok(bytes) => serde_json::from_slice::<Vec<(PathBuf, Desired)>>(&bytes)
                .map(|list| list.into_iter().collect())
                .unwrap_or_else(|error| {
                    tracing::warn!(path = %path.display(), %error, "Ignoring an unreadable record of managed files.");
                    HashMap::new()
                }),
            Err(_) => HashMap::new(),
        };
        ManagedFiles {
            inner: Arc::new(Mutex::new(Inner { desired, ..Inner::default() })),
            store: Some(path.to_path_buf()),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    pub fn desired(&self, path: &Path) -> Option<Desired> {
        self.lock().desired.get(path).copied()
    }

    /// How many times a job has finished writing `path`.
    pub fn applied_generation(&self, path: &Path) -> u64 {
        self.lock().applied.get(path).copied().unwrap_or(0)
    }

    /// Everything known about `path`, read at once.
    pub fn snapshot(&self, path: &Path) -> Snapshot {
        let inner = self.lock();
        Snapshot {
            desired: inner.desired.get(path).copied(),
            applied: inner.applied.get(path).copied().unwrap_or(0),
            in_flight: inner.in_flight.contains(path),
        }
    }

    /// A job is about to write `file`: records what it should be (persisted
    /// when it changed) and marks it in flight.
    pub fn begin(&self, file: &ManagedFile) {
        let desired = Desired { sha256: file.sha256.0, mode: file.mode };
        let changed = {
            let mut inner = self.lock();
            inner.in_flight.insert(file.path.clone());
            inner.desired.insert(file.path.clone(), desired) != Some(desired)
        };
        if changed {
            self.persist();
        }
    }

    /// A job has finished with `path`: drift reported before now is closed,
    /// and listeners look at the file again.
    pub fn finish(&self, path: &Path) {
        let mut inner = self.lock();
        inner.in_flight.remove(path);
        *inner.applied.entry(path.to_path_buf()).or_default() += 1;
        inner.listeners.retain(|listener| listener(path));
    }

    /// Every recorded file that is not as desired now (missing, other
    /// content, other mode), with what differs: the start-up check, for
    /// drift that happened while the agent was not running. Reads and hashes
    /// files: call it off the runtime's threads.
    pub fn drifted(&self) -> Vec<(PathBuf, &'static str)> {
        let desired: Vec<(PathBuf, Desired)> = self.lock().desired.iter().map(|(p, d)| (p.clone(), *d)).collect();
        let mut drifted: Vec<(PathBuf, &'static str)> =
            desired.into_iter().filter_map(|(path, want)| drift_of(&path, &want).map(|why| (path, why))).collect();
        drifted.sort();
        drifted
    }

    /// Every path with a desired state recorded.
    pub fn paths(&self) -> Vec<PathBuf> {
        self.lock().desired.keys().cloned().collect()
    }

    pub fn listen(&self, listener: Listener) {
        self.lock().listeners.push(listener);
    }

    fn persist(&self) {
        let Some(store) = &self.store else { return };
        let list: Vec<(PathBuf, Desired)> = self.lock().desired.iter().map(|(p, d)| (p.clone(), *d)).collect();
        let result = serde_json::to_vec(&list)
            .map_err(PersistError::Encode)
            .and_then(|bytes| halite_fs::write_atomic(store, &bytes, 0o600).map_err(PersistError::Write));
        if let Err(error) = result {
            tracing::warn!(path = %store.display(), %error, "Cannot save the record of managed files.");
        }
    }
}

/// Why the record of managed files was not saved (logged; the record in
/// memory stays authoritative).
#[derive(Debug, thiserror::Error)]
enum PersistError {
    /// A path that is not UTF-8 has no JSON form.
    #[error("cannot encode the record: {0}")]
    Encode(serde_json::Error),
    /// The write names the file.
    #[error(transparent)]
    Write(halite_fs::FsError),
}

/// How `path` differs from `want`, if it does.
fn drift_of(path: &Path, want: &Desired) -> Option<&'static str> {
    // Through halite_fs: a link planted at the path is not followed (it is
    // drift: the restore replaces it).
    let opened = halite_fs::open_parent(path, None).and_then(|(dir, name)| dir.open_file(&name));
    let file = match opened {
        Ok(Some(file)) => file,
        Ok(None) => return Some("missing"),
        Err(e) if e.is_not_found() => return Some("missing"),
        Err(_) => return Some("content"),
    };
    match Sha256::of_reader(file.file()) {
        Ok(sha) if sha == want.sha256() => {}
        _ => return Some("content"),
    }
    match want.mode {
        Some(want) if file.stat().mode != want => Some("mode"),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn record_survives_a_restart() {
        let dir = tempfile::tempdir().unwrap();
        let store = dir.path().join("managed.json");
        let file = ManagedFile { path: "/etc/x".into(), sha256: Sha256::of(b"x"), mode: Some(0o644) };
        ManagedFiles::open(&store).begin(&file);
        let reopened = ManagedFiles::open(&store);
        assert_eq!(reopened.desired(Path::new("/etc/x")).unwrap().sha256(), Sha256::of(b"x"));
        assert_eq!(reopened.applied_generation(Path::new("/etc/x")), 0);
        assert!(!reopened.snapshot(Path::new("/etc/x")).in_flight);
    }

    #[test]
    fn the_start_up_check_finds_every_kind_of_drift() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let managed = ManagedFiles::in_memory();
        let mut files = Vec::new();
        for name in ["fine", "edited", "chmodded", "deleted"] {
            let path = dir.path().join(name);
            std::fs::write(&path, name).unwrap();
            std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
            managed.begin(&ManagedFile { path: path.clone(), sha256: Sha256::of(name.as_bytes()), mode: Some(0o644) });
            managed.finish(&path);
            files.push(path);
        }
        assert!(managed.drifted().is_empty());
        std::fs::write(&files[1], "hand edit").unwrap();
        std::fs::set_permissions(&files[2], std::fs::Permissions::from_mode(0o600)).unwrap();
        std::fs::remove_file(&files[3]).unwrap();
        let drifted = managed.drifted();
        assert_eq!(
            drifted,
            vec![(files[2].clone(), "mode"), (files[3].clone(), "missing"), (files[1].clone(), "content")]
        );
    }

    #[test]
    fn finishing_bumps_the_generation_and_tells_listeners() {
        let managed = ManagedFiles::in_memory();
        let file = ManagedFile { path: "/etc/x".into(), sha256: Sha256::of(b"x"), mode: None };
        let (tx, rx) = std::sync::mpsc::channel();
        managed.listen(Box::new(move |p| tx.send(p.to_path_buf()).is_ok()));
        managed.begin(&file);
        assert!(managed.snapshot(&file.path).in_flight);
        managed.finish(&file.path);
        assert!(!managed.snapshot(&file.path).in_flight);
        assert_eq!(managed.applied_generation(&file.path), 1);
        assert_eq!(rx.recv().unwrap(), file.path);
    }
}

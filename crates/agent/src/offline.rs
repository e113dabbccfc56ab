//! Offline healing (`enforce_offline: true` in agent.yaml): the agent keeps
//! the last desired content of its managed files and, while the master is
//! unreachable, restores a watched file that drifts by itself.
//!
//! Under `<data_dir>/offline/`: `blobs/<sha256>` holds contents, addressed
//! by their digest (a file managed the same way on many paths is stored
//! once), and `index` maps each managed path to its resolved
//! file-like call (`file.managed`, or any kind with a `FileLike` view: it is
//! read only through that view) without the contents. Both are written
//! with `halite_fs`'s one atomic write. What is kept is what the master last
//! sent; blobs no path names any more are removed when the index is saved.
//!
//! Only files a file beacon watches are healed, because only they raise
//! the drift event that triggers [`OfflineStore::heal`]. The restore goes
//! through the state engine's atomic writer, marked in flight in the
//! managed record like any job's write, so it raises no event itself.
//!
//! `secrets` keeps the secret pillar values the master named (secrets.rs),
//! mode 0600 like the blobs that hold the same values: the `healed`
//! events and logs of a restore after a restart still show `<secret>`.

use std::collections::{BTreeMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use halite_proto::{Job, Outcome, Sha256, StateCall};
use halite_state::ApplyEnv;
use halite_state::apply::{apply_plan, plan_call};
use serde::{Deserialize, Serialize};

use crate::managed::ManagedFiles;

#[derive(Debug, thiserror::Error)]
pub enum OfflineError {
    #[error("offline store {path}: {source}")]
    Io { path: PathBuf, source: std::io::Error },
    #[error("offline store {path}: {source}")]
    Write { path: PathBuf, source: halite_fs::FsError },
    #[error("{blob}: {source}")]
    ReadBlob { blob: PathBuf, source: std::io::Error },
    #[error("{blob}: the kept content does not match its digest")]
    Corrupt { blob: PathBuf },
    #[error("{path}: `{kind}` is no longer a kind that keeps a file's content")]
    NotFileLike { path: PathBuf, kind: String },
    /// Planning the restore (the error names the file or argument).
    #[error(transparent)]
    Plan(#[from] halite_state::apply::PlanError),
    /// The restore failed, as a job's state would (the outcome's text).
    #[error("{error}")]
    Restore { path: PathBuf, error: String },
}

/// The file under the store's directory that keeps the secret values
/// (secrets.rs).
const SECRETS_FILE: &str = "secrets";

#[derive(Debug, Clone, Serialize, Deserialize)]
struct Record {
    /// The resolved call, rooted, its `contents` left out.
    call: StateCall,
    sha256: Sha256,
}

/// What a local restore did, for the `healed` event.
#[derive(Debug, Clone, PartialEq)]
pub struct Healed {
    pub path: PathBuf,
    pub state: String,
    pub sha256: Sha256,
    pub changes: Vec<String>,
}

#[derive(Debug, Clone)]
pub struct OfflineStore {
    dir: PathBuf,
    index: Arc<Mutex<BTreeMap<PathBuf, Record>>>,
}

impl OfflineStore {
    /// Opens the store in `dir`; an unreadable index starts empty, with a
    /// warning (the agent then heals nothing until the master sends states).
    pub fn open(dir: &Path) -> Result<OfflineStore, OfflineError> {
        let blobs = dir.join("blobs");
        std::fs::create_dir_all(&blobs).map_err(|source| OfflineError::Io { path: blobs.clone(), source })?;
        let index_path = dir.join("index");
        let index = match std::fs::read(&index_path) {
            Ok(bytes) => halite_proto::decode::<Vec<(PathBuf, Record)>>(&bytes)
                .map(|list| list.into_iter().collect())
                .unwrap_or_else(|error| {
                    tracing::warn!(path = %index_path.display(), %error, "Ignoring an unreadable offline index.");
                    BTreeMap::new()
                }),
            Err(_) => BTreeMap::new(),
        };
        // The secret values of the kept contents, so a restart while the
        // master is away still redacts (secrets.rs).
        crate::secrets::load(&dir.join(SECRETS_FILE));
        Ok(OfflineStore { dir: dir.to_path_buf(), index: Arc::new(Mutex::new(index)) })
    }

    /// Keeps the agent's known secret values beside the kept contents
    /// (secrets.rs). Blocking I/O.
    pub fn keep_secrets(&self) -> Result<(), crate::secrets::SecretsError> {
        crate::secrets::save(&self.dir.join(SECRETS_FILE))
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, BTreeMap<PathBuf, Record>> {
        self.index.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The paths with a desired content kept.
    pub fn paths(&self) -> Vec<PathBuf> {
        self.lock().keys().cloned().collect()
    }

    /// Keeps the desired content of every file-like state in `job` (a kind
    /// with a `FileLike` view: `file.managed`), not for test jobs. `root`
    /// is the agent's root. Blocking I/O.
    pub fn record(&self, job: &Job, root: &Path) -> Result<(), OfflineError> {
        if job.test {
            return Ok(());
        }
        let mut changed = false;
        for call in &job.states {
            let Some(file) = halite_state::kinds::file_like(&call.kind) else { continue };
            // The call as the agent applies it: its path under the root.
            let mut stripped = halite_state::paths::rooted_call(call, root);
            let Some(view) = (file.view)(&stripped.args) else { continue };
            let path = PathBuf::from(view.path);
            // Kept once per digest in the blobs, not in the index.
            let Some(contents) = (file.contents_mut)(&mut stripped.args).map(std::mem::take) else { continue };
            let sha256 = Sha256::of(&contents);
            let blob = self.blob(&sha256);
            if !blob.exists() {
                write_atomically(&blob, &contents)?;
            }
            let record = Record { call: stripped, sha256 };
            let mut index = self.lock();
            let same = index.get(&path).is_some_and(|r| r.sha256 == sha256 && r.call == record.call);
            if !same {
                index.insert(path, record);
                changed = true;
            }
        }
        if changed {
            self.save()?;
        }
        Ok(())
    }

    /// Restores `path` from the kept content if it differs, as a job would
    /// (in `env`: backups as for a job); `None` when nothing is kept for it
    /// or nothing had to change. Blocking.
    pub fn heal(&self, path: &Path, managed: &ManagedFiles, env: &ApplyEnv) -> Result<Option<Healed>, OfflineError> {
        let Some(record) = self.lock().get(path).cloned() else { return Ok(None) };
        let blob = self.blob(&record.sha256);
        let contents = std::fs::read(&blob).map_err(|source| OfflineError::ReadBlob { blob: blob.clone(), source })?;
        if Sha256::of(&contents) != record.sha256 {
            return Err(OfflineError::Corrupt { blob });
        }
        let mut call = record.call.clone();
        let kept = halite_state::kinds::file_like(&call.kind).and_then(|file| (file.contents_mut)(&mut call.args));
        let Some(slot) = kept else {
            return Err(OfflineError::NotFileLike { path: path.to_owned(), kind: call.kind });
        };
        *slot = contents;
        let plan = plan_call(&call, env)?;
        let file = plan.managed_file();
        if let Some(file) = &file {
            managed.begin(file);
        }
        let outcome = apply_plan(plan, false);
        if let Some(file) = &file {
            managed.finish(&file.path);
        }
        match outcome {
            Outcome::Changed { changes } => {
                Ok(Some(Healed { path: path.to_path_buf(), state: call.id.clone(), sha256: record.sha256, changes }))
            }
            Outcome::Failed { error } => Err(OfflineError::Restore { path: path.to_owned(), error }),
            Outcome::Unchanged | Outcome::WouldChange { .. } => Ok(None),
        }
    }

    fn blob(&self, sha256: &Sha256) -> PathBuf {
        self.dir.join("blobs").join(sha256.to_hex())
    }

    fn save(&self) -> Result<(), OfflineError> {
        let (list, wanted): (Vec<(PathBuf, Record)>, HashSet<String>) = {
            let index = self.lock();
            (
                index.iter().map(|(p, r)| (p.clone(), r.clone())).collect(),
                index.values().map(|r| r.sha256.to_hex()).collect(),
            )
        };
        write_atomically(&self.dir.join("index"), &halite_proto::encode(&list))?;
        let blobs = self.dir.join("blobs");
        if let Ok(entries) = std::fs::read_dir(&blobs) {
            for entry in entries.flatten() {
                let name = entry.file_name().to_string_lossy().into_owned();
                if !wanted.contains(&name) {
                    let _ = std::fs::remove_file(entry.path());
                }
            }
        }
        Ok(())
    }
}

/// The one atomic write (`halite_fs`), mode 0600: kept contents may be
/// secrets.
fn write_atomically(path: &Path, bytes: &[u8]) -> Result<(), OfflineError> {
    halite_fs::write_atomic(path, bytes, 0o600)
        .map_err(|source| OfflineError::Write { path: path.to_path_buf(), source })
}

#[cfg(test)]
mod tests {
    use super::*;
    use halite_proto::{Id, Value};

    fn job(contents: &[u8], test: bool) -> Job {
        let args = Value::map().with("path", "/etc/motd").with("contents", contents.to_vec()).with("mode", 0o644u32);
        let call = StateCall::new("motd", "file.managed", args);
        Job { id: Id::new(), cause_event: None, test, states: vec![call] }
    }

    #[test]
    fn heals_the_last_desired_content_and_survives_a_restart() {
        let (data, root) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
        let store = OfflineStore::open(data.path()).unwrap();
        store.record(&job(b"first\n", false), root.path()).unwrap();
        store.record(&job(b"second\n", false), root.path()).unwrap();
        store.record(&job(b"a test job is not desired\n", true), root.path()).unwrap();
        assert_eq!(std::fs::read_dir(data.path().join("blobs")).unwrap().count(), 1, "old blobs removed");
        let path = root.path().join("etc/motd");
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(&path, "drift").unwrap();
        let reopened = OfflineStore::open(data.path()).unwrap();
        let managed = ManagedFiles::in_memory();
        let healed = reopened.heal(&path, &managed, &ApplyEnv::default()).unwrap().expect("healed");
        assert_eq!(healed.state, "motd");
        assert_eq!(std::fs::read(&path).unwrap(), b"second\n");
        assert_eq!(managed.applied_generation(&path), 1, "the write is recorded like a job's");
        assert_eq!(reopened.heal(&path, &managed, &ApplyEnv::default()).unwrap(), None, "nothing to do twice");
        assert_eq!(reopened.heal(&root.path().join("other"), &managed, &ApplyEnv::default()).unwrap(), None);
    }

    /// A new file-like kind is healed with no edit here: `example.file`
    /// (the `example-kinds` feature) keeps its content under `text`.
    #[test]
    fn a_new_file_like_kind_is_healed_through_its_typed_view() {
        let (data, root) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
        let store = OfflineStore::open(data.path()).unwrap();
        let args = Value::map().with("path", "/etc/hello").with("text", b"hello\n".to_vec());
        let job = Job {
            id: Id::new(),
            cause_event: None,
            test: false,
            states: vec![StateCall::new("h", "example.file", args)],
        };
        store.record(&job, root.path()).unwrap();
        let path = root.path().join("etc/hello");
        assert_eq!(store.paths(), std::slice::from_ref(&path));
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(&path, "drift").unwrap();
        let healed = store.heal(&path, &ManagedFiles::in_memory(), &ApplyEnv::default()).unwrap().expect("healed");
        assert_eq!(healed.state, "h");
        assert_eq!(std::fs::read(&path).unwrap(), b"hello\n");
    }

    #[test]
    fn a_corrupted_blob_is_refused() {
        let (data, root) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
        let store = OfflineStore::open(data.path()).unwrap();
        store.record(&job(b"good\n", false), root.path()).unwrap();
        let blob = std::fs::read_dir(data.path().join("blobs")).unwrap().next().unwrap().unwrap().path();
        std::fs::write(&blob, "evil\n").unwrap();
        let error =
            store.heal(&root.path().join("etc/motd"), &ManagedFiles::in_memory(), &ApplyEnv::default()).unwrap_err();
        assert!(matches!(error, OfflineError::Corrupt { .. }), "{error}");
        assert!(error.to_string().contains("does not match"), "{error}");
    }
}

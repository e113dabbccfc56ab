//! What a state kind may use of the agent's environment while it applies
//! ([`ApplyEnv`]), and what it tells of a file it keeps in shape
//! ([`ManagedFile`]). Apart from `apply.rs` so that the kinds, which
//! `apply.rs` runs, do not import it back.

use std::ffi::OsString;
use std::path::PathBuf;

use halite_proto::Sha256;

/// A file a state keeps in shape: what it should contain and its mode.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ManagedFile {
    pub path: PathBuf,
    pub sha256: Sha256,
    /// `None` when the state does not manage the mode.
    pub mode: Option<u32>,
}

/// Largest content `file.managed` keeps a backup of, unless configured:
/// 64 MiB, read in a stream, never held in memory whole.
pub const DEFAULT_BACKUP_MAX_BYTES: u64 = 64 * 1024 * 1024;

/// What the kinds may use of the agent's environment. Passed down rather
/// than read from the process, so tests can run side by side.
#[derive(Debug, Clone)]
pub struct ApplyEnv {
    /// Where `file.managed` keeps the content it replaces; `None` keeps no
    /// backups. The agent uses `<data_dir>/backup`.
    pub backup_dir: Option<PathBuf>,
    /// Backups kept per file; older ones are removed.
    pub backups_kept: usize,
    /// Content larger than this is replaced without a backup (agent.yaml
    /// `backup_max_bytes`, [`DEFAULT_BACKUP_MAX_BYTES`] unless set).
    pub backup_max_bytes: u64,
    /// The PATH for finding and running programs (`systemctl`,
    /// `dpkg-query`, `apt-get`, `cmd.run`); `None`: the agent's own.
    pub path: Option<OsString>,
    /// The agent's `root`: every authored path is under it. A call's
    /// `path` is moved under it before planning (`paths::rooted_call`);
    /// kinds that reach other files (`file.copy`'s source) use it through
    /// [`ApplyEnv::rooted`]. `/` on a real host.
    pub root: PathBuf,
    /// The package index within one job: `apt-get update` at most once
    /// per job (fresh for each job: `run_states` and `apply_call` make it).
    pub packages: PackageIndex,
}

/// Whether the package index was refreshed in this job, and whether a
/// repository changed since: `pkgrepo.managed` marks it stale instead of
/// refreshing, the next `pkg.*` state refreshes it once (so does the first
/// `refresh: True`), and the job's end refreshes it if a changed
/// repository is still owed one. Shared by the clones of one job's env.
#[derive(Debug, Clone, Default)]
pub struct PackageIndex(std::sync::Arc<std::sync::Mutex<IndexState>>);

#[derive(Debug, Default)]
struct IndexState {
    refreshed: bool,
    /// A repository changed since the last refresh.
    stale: bool,
}

/// The change a `pkgrepo.managed` reports for the refresh it is owed; the
/// job's end finds the state to fail by it when that refresh fails.
pub const REFRESH_CHANGE: &str = "apt-get update (once in this job, before its package states)";

impl PackageIndex {
    fn state(&self) -> std::sync::MutexGuard<'_, IndexState> {
        self.0.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// A repository changed: refresh before the next package state, or at
    /// the end of the job.
    pub fn repository_changed(&self) {
        self.state().stale = true;
    }

    /// Whether a package state must refresh first: a repository changed
    /// since the last refresh, or it asks (`refresh: True`) and none ran
    /// in this job yet. Counts the refresh as done: the caller runs it.
    pub fn take_refresh(&self, asked: bool) -> bool {
        let mut state = self.state();
        let due = state.stale || (asked && !state.refreshed);
        if due {
            state.refreshed = true;
            state.stale = false;
        }
        due
    }

    /// At the end of a job: whether a changed repository is still owed a
    /// refresh (then counted as done).
    pub fn take_owed(&self) -> bool {
        let mut state = self.state();
        let owed = std::mem::take(&mut state.stale);
        state.refreshed |= owed;
        owed
    }
}

impl ApplyEnv {
    /// An authored absolute path under [`ApplyEnv::root`].
    pub fn rooted(&self, authored: &str) -> PathBuf {
        crate::paths::rooted(&self.root, std::path::Path::new(authored))
    }
}

impl Default for ApplyEnv {
    fn default() -> Self {
        ApplyEnv {
            backup_dir: None,
            backups_kept: 5,
            backup_max_bytes: DEFAULT_BACKUP_MAX_BYTES,
            path: None,
            root: PathBuf::from("/"),
            packages: PackageIndex::default(),
        }
    }
}

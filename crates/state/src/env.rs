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
        }
    }
}

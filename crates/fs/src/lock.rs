//! The data dir lock: one daemon per data dir.
//!
//! Two masters (or two agents) on one data dir would each write the same
//! files (`endpoints`, the key store, the outbox) and the second to stop
//! would remove the first one's control socket. A daemon therefore takes
//! an advisory lock (`flock`, exclusive, non-blocking) on `<dir>/lock`
//! before it touches anything else there, and holds it as long as it runs;
//! the kernel releases it when the process ends, however it ends, so a
//! crashed daemon never leaves a stale lock behind. The file holds the
//! holder's pid, only to name it in the refusal.

use std::fs::File;
use std::io::{Read, Seek, Write};
use std::path::{Path, PathBuf};

use nix::fcntl::{Flock, FlockArg};

/// The lock file's name inside a data dir.
pub const LOCK_FILE: &str = "lock";

/// Why a data dir could not be locked.
#[derive(Debug, thiserror::Error)]
pub enum LockError {
    /// Another process holds the lock: the message is the one an operator
    /// sees, naming the holder and the dir.
    #[error(
        "another {who} ({}) uses {dir}; stop it first, or give this one another data dir",
        pid.map_or_else(|| "pid unknown".to_owned(), |pid| format!("pid {pid}"))
    )]
    Held { who: String, pid: Option<u32>, dir: PathBuf },
    #[error("cannot lock {path}: {source}")]
    Io { path: PathBuf, source: std::io::Error },
    #[error("cannot create the data dir {dir}: {source}")]
    Create { dir: PathBuf, source: std::io::Error },
    /// Someone other than us or root could have written the data dir
    /// (StrictModes); nothing in it is trusted.
    #[error("refusing to start with this data dir: {0}")]
    Untrusted(#[from] crate::strict::StrictError),
}

/// The lock on a data dir, held until dropped.
#[derive(Debug)]
pub struct DirLock {
    _file: Flock<File>,
    path: PathBuf,
}

impl DirLock {
    /// A daemon's start: creates `dir` (mode 0700) if it is missing, checks
    /// that nobody else could have written it (before its key, key store or
    /// sockets are trusted: [`crate::strict`]), then takes its lock, before
    /// anything in it is touched. Blocking: call it from a blocking thread.
    pub fn claim(dir: &Path, who: &str) -> Result<DirLock, LockError> {
        use std::os::unix::fs::DirBuilderExt;
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(dir)
            .map_err(|source| LockError::Create { dir: dir.to_path_buf(), source })?;
        crate::strict::check_data_dir(dir, crate::strict::Owner::Us)?;
        DirLock::acquire(dir, who)
    }

    /// Takes the lock of `dir` (which must exist) for a daemon of kind
    /// `who` ("master", "agent"), and writes this process's pid in it.
    /// Fails at once, without waiting, when another process holds it.
    pub fn acquire(dir: &Path, who: &str) -> Result<DirLock, LockError> {
        let path = dir.join(LOCK_FILE);
        let io = |source: std::io::Error| LockError::Io { path: path.clone(), source };
        // Not truncated on open: the holder's pid must stay readable.
        let file =
            std::fs::OpenOptions::new().read(true).write(true).create(true).truncate(false).open(&path).map_err(io)?;
        let mut file = match Flock::lock(file, FlockArg::LockExclusiveNonblock) {
            Ok(locked) => locked,
            Err((mut file, nix::errno::Errno::EWOULDBLOCK)) => {
                let mut text = String::new();
                let _ = file.read_to_string(&mut text);
                return Err(LockError::Held {
                    who: who.to_owned(),
                    pid: text.trim().parse().ok(),
                    dir: dir.to_path_buf(),
                });
            }
            Err((_, errno)) => return Err(io(std::io::Error::from(errno))),
        };
        file.set_len(0).map_err(io)?;
        file.rewind().map_err(io)?;
        writeln!(file, "{}", std::process::id()).map_err(io)?;
        Ok(DirLock { _file: file, path })
    }

    /// The lock file.
    pub fn path(&self) -> &Path {
        &self.path
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_second_holder_is_refused_with_the_first_ones_pid_until_it_lets_go() {
        let dir = tempfile::tempdir().unwrap();
        let first = DirLock::acquire(dir.path(), "master").unwrap();
        // flock locks belong to the open file description: a second open in
        // the same process conflicts as another process would.
        let error = DirLock::acquire(dir.path(), "master").unwrap_err();
        let expected = format!("another master (pid {}) uses {}", std::process::id(), dir.path().display());
        assert!(error.to_string().starts_with(&expected), "{error}");
        drop(first);
        let again = DirLock::acquire(dir.path(), "agent").unwrap();
        assert_eq!(std::fs::read_to_string(again.path()).unwrap(), format!("{}\n", std::process::id()));
    }
}

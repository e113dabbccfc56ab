//! Backups of file content `file.managed` replaces, in the agent's data
//! dir: `<backup_dir>/<escaped path>.<nanoseconds since the epoch>`, the
//! last N per file kept.
//!
//! Backups are written with `halite_fs`'s atomic write, mode 0600 (the
//! content may be a secret, whatever the file's mode was), without its
//! fsyncs ([`halite_fs::Dir::write_atomic_unsynced`]): a backup is made on
//! the path of every restore, before the restored file's own write, and
//! nothing waits for it to be durable. A crash of the agent never leaves
//! half a backup; a power cut may lose the newest backups (or leave them
//! empty), never the restored file, which is fsynced before its result
//! is sent.
//!
//! The path is escaped so every managed file maps to one flat name and no
//! two paths collide: `%` becomes `%25` and `/` becomes `%2F`.

use std::fs;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::time::{SystemTime, UNIX_EPOCH};

/// Why a backup was not made; names the backup directory or file.
#[derive(Debug, thiserror::Error)]
pub enum BackupError {
    #[error("backup directory: {0}")]
    Dir(halite_fs::FsError),
    #[error("cannot write the backup {backup}: {source}")]
    Write { backup: PathBuf, source: halite_fs::FsError },
}

pub fn escape(path: &Path) -> String {
    path.display().to_string().replace('%', "%25").replace('/', "%2F")
}

/// Writes a backup of `content` (the content of `path` about to be
/// replaced, read to its end) and removes the oldest beyond `keep`: at
/// once, or, on the agent's job runner, after the job's result is sent
/// (`halite_fs::tidy`; removing a file frees its inode, work the result
/// need not wait for). Returns the backup.
pub fn save(dir: &Path, path: &Path, content: &mut dyn Read, keep: usize) -> Result<PathBuf, BackupError> {
    let opened = halite_fs::Dir::create_all(dir, 0o700).map_err(BackupError::Dir)?;
    let prefix = format!("{}.", escape(path));
    let stamp = SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_nanos());
    // Zero-padded, so names sort in time order.
    let backup = dir.join(format!("{prefix}{stamp:020}"));
    let name = backup.file_name().unwrap_or_default();
    opened
        .write_atomic_unsynced(name, content, halite_fs::Perms::mode(0o600))
        .map_err(|source| BackupError::Write { backup: backup.clone(), source })?;
    let dir = dir.to_path_buf();
    halite_fs::tidy::later(move || prune(&opened, &dir, &prefix, keep));
    Ok(backup)
}

/// Removes the oldest of the backups named `<prefix><stamp>` beyond `keep`.
fn prune(opened: &halite_fs::Dir, dir: &Path, prefix: &str, keep: usize) {
    let mut existing = list(dir, prefix);
    existing.sort();
    let excess = existing.len().saturating_sub(keep.max(1));
    for old in &existing[..excess] {
        if let Some(name) = old.file_name() {
            let _ = opened.remove(name);
        }
    }
}

/// The backups of `path`, oldest first.
pub fn backups_of(dir: &Path, path: &Path) -> Vec<PathBuf> {
    let mut found = list(dir, &format!("{}.", escape(path)));
    found.sort();
    found
}

fn list(dir: &Path, prefix: &str) -> Vec<PathBuf> {
    let Ok(entries) = fs::read_dir(dir) else { return Vec::new() };
    entries
        .filter_map(Result::ok)
        .filter(|e| {
            e.file_name()
                .to_str()
                .and_then(|n| n.strip_prefix(prefix))
                .is_some_and(|rest| rest.bytes().all(|b| b.is_ascii_digit()))
        })
        .map(|e| e.path())
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keeps_the_last_n() {
        let dir = tempfile::tempdir().unwrap();
        let path = Path::new("/etc/a%b/conf");
        for i in 0..5 {
            save(dir.path(), path, &mut format!("v{i}").as_bytes(), 3).unwrap();
        }
        // Another file's backups are not counted.
        save(dir.path(), Path::new("/etc/a%b/conf2"), &mut &b"x"[..], 3).unwrap();
        let kept = backups_of(dir.path(), path);
        let contents: Vec<String> = kept.iter().map(|p| fs::read_to_string(p).unwrap()).collect();
        assert_eq!(contents, ["v2", "v3", "v4"]);
        assert!(kept[0].file_name().unwrap().to_str().unwrap().starts_with("%2Fetc%2Fa%25b%2Fconf."));
    }
}

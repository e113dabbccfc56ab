//! Strict modes for a daemon's data dir, as OpenSSH's `StrictModes` checks
//! `~/.ssh`: before halite trusts what a data dir holds (its key, the
//! accepted keys, the pinned master key, the control socket), it checks
//! that nobody but its owner (or root) could have put it there.
//!
//! Why: with a group- or world-writable data dir a local user can plant a
//! `master.key`, an `accepted` key store or a fake control socket, and the
//! daemon (or the operator's CLI) would take them as its own. The checks
//! are on `lstat`, so a planted symbolic link is judged as itself.
//!
//! The rules, for the data dir, every directory above it and every entry
//! directly in it:
//! - owned by an allowed owner (the daemon's own user, or root; for the
//!   operator's CLI, the data dir's owner or root);
//! - not writable by group or others; a directory above the data dir may be
//!   when its sticky bit is set (`/tmp`): others cannot rename or remove
//!   what is in it;
//! - a secret (a `*.key` file) readable by nobody but its owner.

use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

/// What makes a data dir untrustworthy, naming the path and the fix.
#[derive(Debug, thiserror::Error)]
pub enum StrictError {
    #[error("cannot inspect {path}: {source}")]
    Inspect { path: PathBuf, source: std::io::Error },
    #[error(
        "{path} is owned by uid {owner}, not by this user (uid {us}) or root; another user could have put what it holds there: check it, then run `chown {us} {path}`"
    )]
    Owner { path: PathBuf, owner: u32, us: u32 },
    #[error(
        "{path} can be written by {who} (mode {mode:04o}); another user could have put what it holds there: check it, then run `chmod go-w {path}`"
    )]
    Writable { path: PathBuf, who: &'static str, mode: u32 },
    #[error("{path} is a secret readable by others (mode {mode:04o}); run `chmod 600 {path}`")]
    Exposed { path: PathBuf, mode: u32 },
}

/// Who may own the data dir and what is in it, besides root.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Owner {
    /// The daemon's effective user: a daemon trusts only itself and root.
    Us,
    /// Whoever owns the data dir: an operator's command (often run as root)
    /// reading a daemon's data dir, where the daemon's user is trusted.
    DirOwner,
}

/// Checks `dir` (which must exist), the directories above it and every
/// entry directly in it, by the rules in the module docs.
pub fn check_data_dir(dir: &Path, owner: Owner) -> Result<(), StrictError> {
    let inspect =
        |path: &Path| std::fs::metadata(path).map_err(|source| StrictError::Inspect { path: path.into(), source });
    let meta = inspect(dir)?;
    let allowed = match owner {
        Owner::Us => nix::unistd::geteuid().as_raw(),
        Owner::DirOwner => meta.uid(),
    };
    judge(dir, &meta, allowed, false)?;
    // Above it: a writable directory there could swap the data dir itself.
    let absolute = std::path::absolute(dir).map_err(|source| StrictError::Inspect { path: dir.into(), source })?;
    for ancestor in absolute.ancestors().skip(1) {
        judge(ancestor, &inspect(ancestor)?, allowed, true)?;
    }
    let entries = std::fs::read_dir(dir).map_err(|source| StrictError::Inspect { path: dir.into(), source })?;
    for entry in entries {
        let entry = entry.map_err(|source| StrictError::Inspect { path: dir.into(), source })?;
        let path = entry.path();
        let meta =
            std::fs::symlink_metadata(&path).map_err(|source| StrictError::Inspect { path: path.clone(), source })?;
        // A link's own mode is always 0777 and means nothing; its owner does.
        if meta.file_type().is_symlink() {
            judge_owner(&path, &meta, allowed)?;
            continue;
        }
        judge(&path, &meta, allowed, false)?;
        if meta.is_file() && path.extension().is_some_and(|e| e == "key") && meta.mode() & 0o077 != 0 {
            return Err(StrictError::Exposed { path, mode: meta.mode() & 0o7777 });
        }
    }
    Ok(())
}

/// Checks one file the daemon trusts (a pin, a key) by the same rules.
pub fn check_file(path: &Path, secret: bool) -> Result<(), StrictError> {
    let meta = std::fs::symlink_metadata(path).map_err(|source| StrictError::Inspect { path: path.into(), source })?;
    judge(path, &meta, nix::unistd::geteuid().as_raw(), false)?;
    if secret && meta.mode() & 0o077 != 0 {
        return Err(StrictError::Exposed { path: path.into(), mode: meta.mode() & 0o7777 });
    }
    Ok(())
}

fn judge_owner(path: &Path, meta: &std::fs::Metadata, allowed: u32) -> Result<(), StrictError> {
    if meta.uid() != 0 && meta.uid() != allowed {
        return Err(StrictError::Owner { path: path.into(), owner: meta.uid(), us: allowed });
    }
    Ok(())
}

fn judge(path: &Path, meta: &std::fs::Metadata, allowed: u32, above: bool) -> Result<(), StrictError> {
    judge_owner(path, meta, allowed)?;
    let mode = meta.mode() & 0o7777;
    let sticky = mode & 0o1000 != 0 && meta.is_dir();
    if above && sticky {
        return Ok(());
    }
    let who = match (mode & 0o020 != 0, mode & 0o002 != 0) {
        (_, true) => "everyone",
        (true, false) => "its group",
        (false, false) => return Ok(()),
    };
    Err(StrictError::Writable { path: path.into(), who, mode })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    /// Fixture set-up in the test's own temporary directory: the path-based
    /// call clippy.toml bans elsewhere is safe here.
    #[allow(clippy::disallowed_methods)]
    fn chmod(path: &Path, mode: u32) {
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).unwrap();
    }

    #[test]
    fn a_private_data_dir_passes_and_each_opening_is_named_with_its_fix() {
        let top = tempfile::tempdir().unwrap();
        let dir = top.path().join("data");
        std::fs::create_dir(&dir).unwrap();
        chmod(&dir, 0o700);
        std::fs::write(dir.join("master.key"), "k").unwrap();
        chmod(&dir.join("master.key"), 0o600);
        std::fs::write(dir.join("halite.db"), "").unwrap();
        chmod(&dir.join("halite.db"), 0o644);
        check_data_dir(&dir, Owner::Us).unwrap();
        check_data_dir(&dir, Owner::DirOwner).unwrap();

        for (mode, who) in [(0o770, "its group"), (0o707, "everyone"), (0o1777, "everyone")] {
            chmod(&dir, mode);
            let error = check_data_dir(&dir, Owner::Us).unwrap_err().to_string();
            assert!(error.contains(&dir.display().to_string()) && error.contains(who), "{error}");
            assert!(error.contains("chmod go-w"), "says the fix: {error}");
        }
        chmod(&dir, 0o700);

        chmod(&dir.join("halite.db"), 0o666);
        let error = check_data_dir(&dir, Owner::Us).unwrap_err().to_string();
        assert!(error.contains("halite.db") && error.contains("everyone"), "{error}");
        chmod(&dir.join("halite.db"), 0o644);

        chmod(&dir.join("master.key"), 0o640);
        let error = check_data_dir(&dir, Owner::Us).unwrap_err().to_string();
        assert!(error.contains("master.key") && error.contains("chmod 600"), "{error}");
        chmod(&dir.join("master.key"), 0o600);

        // Someone else's file in it (the tests run as root, who may chown).
        #[allow(clippy::disallowed_methods)]
        if nix::unistd::geteuid().is_root() {
            let planted = dir.join("keys.json");
            std::fs::write(&planted, "[]").unwrap();
            std::os::unix::fs::chown(&planted, Some(4242), None).unwrap();
            let error = check_data_dir(&dir, Owner::Us).unwrap_err().to_string();
            assert!(error.contains("keys.json") && error.contains("uid 4242"), "{error}");
            std::fs::remove_file(&planted).unwrap();
        }

        // Above the data dir: writable only with the sticky bit.
        chmod(top.path(), 0o777);
        let error = check_data_dir(&dir, Owner::Us).unwrap_err().to_string();
        assert!(error.contains(&top.path().display().to_string()), "{error}");
        chmod(top.path(), 0o1777);
        check_data_dir(&dir, Owner::Us).unwrap();
        chmod(top.path(), 0o700);
    }

    #[test]
    fn a_group_writable_pin_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let pin = dir.path().join("master.pub");
        std::fs::write(&pin, "x").unwrap();
        chmod(&pin, 0o644);
        check_file(&pin, false).unwrap();
        chmod(&pin, 0o664);
        assert!(matches!(check_file(&pin, false), Err(StrictError::Writable { .. })));
        chmod(&pin, 0o604);
        assert!(matches!(check_file(&pin, true), Err(StrictError::Exposed { .. })));
    }
}

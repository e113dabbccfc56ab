//! Paths kept inside a root, the two ways halite needs it:
//!
//! - [`in_tree`]: a file named relative to the state tree (a `file.managed`
//!   `source`, an `exec` hook, a webhook's `ca`) must exist and stay inside
//!   the tree: no absolute path, no `..`, no symbolic link that leads out;
//!   a regular file (a FIFO would hang `check` and the reload that read
//!   it) with one name only (a hard link to a file outside the tree, such
//!   as `/etc/shadow`, is inside by its path and outside by its content).
//!   [`read_tree_file`] reads one without blocking on a file swapped for a
//!   FIFO since.
//! - [`rooted`] / [`rooted_call`]: an authored absolute path (`/etc/motd`)
//!   moved under an agent's `root` setting (the agent, its offline healing,
//!   the demo fleet and the swarm's simulated agents all apply under a root).

use std::path::{Component, Path, PathBuf};

use halite_proto::{StateCall, Value};

/// Why a tree-relative name was refused; each names what was authored.
#[derive(Debug, thiserror::Error)]
pub enum TreePathError {
    #[error("`{authored}` must be a path inside the state tree, without `..`")]
    Leaves { authored: String },
    #[error("cannot read the state tree {}: {source}", root.display())]
    Root { root: PathBuf, source: std::io::Error },
    #[error("`{authored}` does not exist in the tree ({source})")]
    Missing { authored: String, full: PathBuf, source: std::io::Error },
    #[error("`{authored}` leads out of the state tree (a symbolic link?)")]
    LinksOut { authored: String },
    #[error("`{authored}` is a {found}, not a regular file; halite reads only regular files from the tree")]
    NotAFile { authored: String, found: &'static str },
    #[error(
        "`{authored}` has {links} names (hard links); one may be outside the tree, so it is refused: copy the file instead"
    )]
    HardLinked { authored: String, links: u64 },
    #[error("`{authored}` is a {found}, not a directory")]
    NotADirectory { authored: String, found: &'static str },
}

/// What a file is, for a refusal.
fn kind_of(file_type: std::fs::FileType) -> &'static str {
    use std::os::unix::fs::FileTypeExt;
    if file_type.is_file() {
        "regular file"
    } else if file_type.is_dir() {
        "directory"
    } else if file_type.is_fifo() {
        "FIFO"
    } else if file_type.is_socket() {
        "socket"
    } else if file_type.is_block_device() || file_type.is_char_device() {
        "device"
    } else {
        "special file"
    }
}

/// Reads a file of the tree that [`in_tree`] let through: opened without
/// following a link and without blocking (a FIFO put in its place since
/// is refused, not waited on), and only if it is still a regular file.
pub fn read_tree_file(path: &Path) -> std::io::Result<Vec<u8>> {
    use std::io::Read;
    use std::os::unix::fs::OpenOptionsExt;
    let mut file = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(nix::libc::O_NOFOLLOW | nix::libc::O_NONBLOCK)
        .open(path)?;
    let file_type = file.metadata()?.file_type();
    if !file_type.is_file() {
        return Err(std::io::Error::other(format!("it is a {}, not a regular file", kind_of(file_type))));
    }
    let mut bytes = Vec::new();
    file.read_to_end(&mut bytes)?;
    Ok(bytes)
}

/// `authored` (relative to the tree's `root`) as a canonical path inside the
/// tree. The file must exist: links are resolved to check where they lead.
pub fn in_tree(root: &Path, authored: &str) -> Result<PathBuf, TreePathError> {
    let (real, meta) = inside(root, authored)?;
    if !meta.is_file() {
        return Err(TreePathError::NotAFile { authored: authored.to_owned(), found: kind_of(meta.file_type()) });
    }
    let links = std::os::unix::fs::MetadataExt::nlink(&meta);
    if links > 1 {
        return Err(TreePathError::HardLinked { authored: authored.to_owned(), links });
    }
    Ok(real)
}

/// `authored` as a canonical directory inside the tree (`file.recurse`'s
/// `source`); each file under it is taken with [`in_tree`] relative to it.
pub fn dir_in_tree(root: &Path, authored: &str) -> Result<PathBuf, TreePathError> {
    let (real, meta) = inside(root, authored)?;
    if !meta.is_dir() {
        return Err(TreePathError::NotADirectory { authored: authored.to_owned(), found: kind_of(meta.file_type()) });
    }
    Ok(real)
}

/// The canonical path of `authored` if it exists inside the tree, and what
/// is there.
fn inside(root: &Path, authored: &str) -> Result<(PathBuf, std::fs::Metadata), TreePathError> {
    let relative = Path::new(authored);
    if relative.components().any(|c| !matches!(c, Component::Normal(_) | Component::CurDir)) {
        return Err(TreePathError::Leaves { authored: authored.to_owned() });
    }
    let real_root = root.canonicalize().map_err(|source| TreePathError::Root { root: root.to_path_buf(), source })?;
    let full = root.join(relative);
    let real = full.canonicalize().map_err(|source| TreePathError::Missing {
        authored: authored.to_owned(),
        full: full.clone(),
        source,
    })?;
    if !real.starts_with(&real_root) {
        return Err(TreePathError::LinksOut { authored: authored.to_owned() });
    }
    let meta = std::fs::symlink_metadata(&real).map_err(|source| TreePathError::Missing {
        authored: authored.to_owned(),
        full: full.clone(),
        source,
    })?;
    Ok((real, meta))
}

/// `path` (absolute, as authored) under `root`. Only the normal components
/// are kept, so `..` cannot climb out of the root.
pub fn rooted(root: &Path, path: &Path) -> PathBuf {
    if root == Path::new("/") {
        return path.to_path_buf();
    }
    let relative: PathBuf = path.components().filter(|c| matches!(c, Component::Normal(_))).collect();
    root.join(relative)
}

/// The call with its `path` argument moved under `root`.
pub fn rooted_call(call: &StateCall, root: &Path) -> StateCall {
    let mut call = call.clone();
    if let Value::Map(args) = &mut call.args
        && let Some(Value::String(path)) = args.get_mut("path")
    {
        *path = rooted(root, Path::new(path)).display().to_string();
    }
    call
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_regular_files_with_one_name_are_taken_from_the_tree() {
        let outer = tempfile::tempdir().unwrap();
        let root = outer.path().join("tree");
        std::fs::create_dir_all(root.join("files/dir")).unwrap();
        nix::unistd::mkfifo(&root.join("files/fifo"), nix::sys::stat::Mode::from_bits_truncate(0o600)).unwrap();
        std::fs::write(outer.path().join("shadow"), "secret").unwrap();
        std::fs::hard_link(outer.path().join("shadow"), root.join("files/hard")).unwrap();
        for (authored, says) in [("files/fifo", "FIFO"), ("files/dir", "directory"), ("files/hard", "2 names")] {
            let error = in_tree(&root, authored).unwrap_err().to_string();
            assert!(error.contains(authored) && error.contains(says), "{error}");
        }
        // A FIFO swapped in after the check is refused, not waited on.
        let error = read_tree_file(&root.join("files/fifo")).unwrap_err().to_string();
        assert!(error.contains("FIFO"), "{error}");
        std::fs::write(root.join("files/ok"), "ok").unwrap();
        assert_eq!(read_tree_file(&root.join("files/ok")).unwrap(), b"ok");
    }

    #[test]
    fn tree_files_cannot_leave_the_tree() {
        let outer = tempfile::tempdir().unwrap();
        let root = outer.path().join("tree");
        std::fs::create_dir_all(root.join("files")).unwrap();
        std::fs::write(root.join("files/ok"), "ok").unwrap();
        std::fs::write(outer.path().join("secret"), "secret").unwrap();
        std::os::unix::fs::symlink(outer.path().join("secret"), root.join("files/link")).unwrap();
        std::os::unix::fs::symlink("ok", root.join("files/inside")).unwrap();
        let real_root = root.canonicalize().unwrap();
        assert_eq!(in_tree(&root, "files/ok").unwrap(), real_root.join("files/ok"));
        assert_eq!(in_tree(&root, "./files/inside").unwrap(), real_root.join("files/ok"));
        let refused = |authored: &str| in_tree(&root, authored).unwrap_err();
        assert!(matches!(refused("../secret"), TreePathError::Leaves { .. }));
        assert!(matches!(refused("files/../../secret"), TreePathError::Leaves { .. }));
        assert!(matches!(refused("/etc/passwd"), TreePathError::Leaves { .. }));
        assert!(matches!(refused("files/link"), TreePathError::LinksOut { .. }));
        assert!(matches!(refused("files/missing"), TreePathError::Missing { .. }));
        let missing_root = in_tree(&outer.path().join("nope"), "files/ok").unwrap_err();
        assert!(matches!(missing_root, TreePathError::Root { .. }), "{missing_root}");
        assert!(refused("../secret").to_string().contains("without `..`"));
    }

    #[test]
    fn rooting_keeps_paths_inside_the_root() {
        assert_eq!(rooted(Path::new("/"), Path::new("/etc/x")), PathBuf::from("/etc/x"));
        assert_eq!(rooted(Path::new("/r"), Path::new("/etc/x")), PathBuf::from("/r/etc/x"));
        assert_eq!(rooted(Path::new("/r"), Path::new("/../etc/x")), PathBuf::from("/r/etc/x"));
    }

    #[test]
    fn calls_are_rooted_and_other_args_kept() {
        let call = StateCall::new("motd", "file.managed", Value::map().with("path", "/etc/motd").with("mode", "0644"));
        let rooted = rooted_call(&call, Path::new("/swarm/a1"));
        assert_eq!(rooted.args.get("path").and_then(Value::as_str), Some("/swarm/a1/etc/motd"));
        assert_eq!(rooted.args.get("mode").and_then(Value::as_str), Some("0644"));
    }
}

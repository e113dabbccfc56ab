//! What this agent's file beacons watch, for the master's inventory
//! (`halite-master inventory`, `adopt`): every path each `file` beacon
//! names, and what is in the directories it names, with each file's
//! sha256. Sent as [`AgentMessage::Inventory`] when the beacon set changes
//! and when the master asks ([`MasterMessage::Inventory`]), with, if asked,
//! one watched file's content (only a regular file the beacons watch, read
//! without following a link, at most [`MAX_ADOPT_BYTES`]).
//!
//! [`AgentMessage::Inventory`]: halite_proto::AgentMessage::Inventory
//! [`MasterMessage::Inventory`]: halite_proto::MasterMessage::Inventory

use std::io::Read;
use std::path::Path;

use halite_proto::message::{MAX_ADOPT_BYTES, MAX_INVENTORY_PATHS};
use halite_proto::{BeaconSpec, Id, Inventory, WatchedContent};

/// The inventory of `specs` under `root`; with `content_of`, that watched
/// file's content. Blocking: call it from `spawn_blocking`.
pub fn collect(specs: &[BeaconSpec], root: &Path, content_of: Option<&str>) -> Inventory {
    let mut paths = Vec::new();
    let mut truncated = false;
    for spec in specs.iter().filter(|s| s.kind == crate::beacons::file::KIND.name) {
        let room = MAX_INVENTORY_PATHS - paths.len();
        match crate::beacons::file::inventory(&spec.name, &spec.config, root, room) {
            Ok((mut listed, more)) => {
                truncated |= more;
                paths.append(&mut listed);
            }
            Err(error) => tracing::warn!(beacon = %spec.name, %error, "Cannot list what this beacon watches."),
        }
        if paths.len() >= MAX_INVENTORY_PATHS {
            truncated = true;
            break;
        }
    }
    let content = content_of.map(|path| {
        let watched = paths.iter().any(|p| p.path == path && p.exists && !p.directory);
        let read = if watched { read(&crate::rooted(root, Path::new(path))) } else { Err(not_watched()) };
        match read {
            Ok((bytes, mode)) => WatchedContent { path: path.to_owned(), bytes: Some(bytes), mode, error: None },
            Err(error) => WatchedContent { path: path.to_owned(), bytes: None, mode: 0, error: Some(error) },
        }
    });
    Inventory { id: Id::new(), paths, truncated, content }
}

fn not_watched() -> String {
    "not a regular file any file beacon of this agent watches".to_owned()
}

/// A regular file's bytes and mode, through one descriptor opened without
/// following a link; the error says why not, naming the path.
fn read(real: &Path) -> Result<(Vec<u8>, u32), String> {
    let (Some(parent), Some(name)) = (real.parent(), real.file_name()) else { return Err(not_watched()) };
    let dir = halite_fs::Dir::open(parent).map_err(|e| e.to_string())?;
    let file = dir.open_file(name).map_err(|e| e.to_string())?.ok_or_else(|| format!("{} is gone", real.display()))?;
    let stat = file.stat();
    if stat.size > MAX_ADOPT_BYTES as u64 {
        return Err(format!("{} is {} bytes, more than the {MAX_ADOPT_BYTES} adopt takes", real.display(), stat.size));
    }
    let mut bytes = Vec::new();
    file.file()
        .take(MAX_ADOPT_BYTES as u64 + 1)
        .read_to_end(&mut bytes)
        .map_err(|e| format!("cannot read {}: {e}", real.display()))?;
    if bytes.len() > MAX_ADOPT_BYTES {
        return Err(format!("{} grew past the {MAX_ADOPT_BYTES} bytes adopt takes", real.display()));
    }
    Ok((bytes, stat.mode))
}

#[cfg(test)]
mod tests {
    use halite_proto::Value;

    use super::*;

    #[test]
    fn only_a_watched_regular_file_is_sent_and_only_file_beacons_are_listed() {
        let root = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(root.path().join("etc/app")).unwrap();
        std::fs::write(root.path().join("etc/app/local.conf"), "local\n").unwrap();
        std::fs::write(root.path().join("etc/secret"), "no\n").unwrap();
        std::os::unix::fs::symlink(root.path().join("etc/secret"), root.path().join("etc/app/link")).unwrap();
        let specs = [
            BeaconSpec {
                name: "app".into(),
                kind: "file".into(),
                config: Value::map().with("paths", Value::List(vec!["/etc/app".into()])),
            },
            BeaconSpec { name: "load".into(), kind: "load".into(), config: Value::map() },
        ];
        let inventory = collect(&specs, root.path(), Some("/etc/app/local.conf"));
        let paths: Vec<&str> = inventory.paths.iter().map(|p| p.path.as_str()).collect();
        assert_eq!(paths, ["/etc/app", "/etc/app/link", "/etc/app/local.conf"]);
        let content = inventory.content.unwrap();
        assert_eq!(content.bytes.as_deref(), Some(&b"local\n"[..]));
        for path in ["/etc/secret", "/etc/app/link", "/etc/app"] {
            let refused = collect(&specs, root.path(), Some(path)).content.unwrap();
            assert!(refused.bytes.is_none() && refused.error.is_some(), "{path}: {refused:?}");
        }
    }
}

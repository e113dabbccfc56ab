//! The text files of a Salt tree, read once when the tree loads, so that
//! rendering for an agent reads no file: the master renders on its async
//! runtime (a reactor's restore, a start-up apply), where a blocking read
//! would stall every task queued behind it. The tree loads off the
//! runtime (`reload` hands it to `spawn_blocking`; start-up is sync).
//!
//! What is kept: every regular, non-hidden file of the tree (the pillar
//! included) of at most [`MAX_FILE_BYTES`] that is UTF-8, by its
//! tree-relative path, up to [`MAX_TOTAL_BYTES`] in all (files past that
//! are not kept; a template that names one gets an error saying so, as
//! one that names a missing file does). Each is read as the renderer read
//! it before: inside the tree, links resolved and checked, never a FIFO
//! (paths.rs). A template sees the tree as it was loaded, as the render
//! cache does: an edit is seen at the next reload.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

/// The largest file kept (a `map.jinja`, a `defaults.yaml`: a few KiB).
pub const MAX_FILE_BYTES: u64 = 1 << 20;
/// All files kept together at most.
pub const MAX_TOTAL_BYTES: u64 = 64 << 20;

/// A tree's text files, read at load (module doc).
#[derive(Debug, Default)]
pub struct TreeTexts {
    /// The tree's root: names are relative to it.
    root: PathBuf,
    texts: HashMap<String, String>,
    /// Files not kept, by name, with why: too large, not UTF-8, over the
    /// total.
    skipped: HashMap<String, &'static str>,
}

/// Why a template cannot have a file of the tree.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PrereadError {
    #[error("`{name}` is not a file of the tree (as it was loaded)")]
    Missing { name: String },
    #[error("`{name}` was not read when the tree loaded: {why}")]
    Skipped { name: String, why: &'static str },
}

impl TreeTexts {
    /// Reads the text files under `root` (module doc). Blocking: called
    /// when the tree loads.
    pub fn read(root: &Path) -> TreeTexts {
        let mut texts = TreeTexts { root: root.to_path_buf(), ..TreeTexts::default() };
        let mut total = 0u64;
        let mut names = Vec::new();
        walk(root, root, &mut names);
        names.sort();
        for name in names {
            let Ok(path) = crate::paths::in_tree(root, &name) else { continue };
            let Ok(meta) = std::fs::metadata(&path) else { continue };
            if meta.len() > MAX_FILE_BYTES {
                texts.skipped.insert(name, "it is over 1 MiB");
                continue;
            }
            if total + meta.len() > MAX_TOTAL_BYTES {
                texts.skipped.insert(name, "the tree's text files are over 64 MiB together");
                continue;
            }
            match crate::paths::read_tree_file(&path).map(String::from_utf8) {
                Ok(Ok(text)) => {
                    total += text.len() as u64;
                    texts.texts.insert(name, text);
                }
                Ok(Err(_)) => {
                    texts.skipped.insert(name, "it is not UTF-8");
                }
                Err(_) => {}
            }
        }
        texts
    }

    /// The text of `name`, relative to `base` (the tree's root, or its
    /// `pillar/`). No file is read.
    pub fn get(&self, base: &Path, name: &str) -> Result<&str, PrereadError> {
        let relative = base.strip_prefix(&self.root).unwrap_or(Path::new(""));
        let key = normal(&relative.join(name));
        if let Some(text) = self.texts.get(&key) {
            return Ok(text);
        }
        match self.skipped.get(&key) {
            Some(why) => Err(PrereadError::Skipped { name: name.to_owned(), why }),
            None => Err(PrereadError::Missing { name: name.to_owned() }),
        }
    }
}

/// `a/./b//c` as `a/b/c` (no file system access).
fn normal(path: &Path) -> String {
    let parts: Vec<String> = path
        .components()
        .filter_map(|c| match c {
            std::path::Component::Normal(part) => Some(part.to_string_lossy().into_owned()),
            _ => None,
        })
        .collect();
    parts.join("/")
}

/// Every non-hidden file under `dir` (links to files too; not into linked
/// directories, which could lead round), tree-relative.
fn walk(root: &Path, dir: &Path, out: &mut Vec<String>) {
    let Ok(entries) = std::fs::read_dir(dir) else { return };
    for entry in entries.flatten() {
        if entry.file_name().to_string_lossy().starts_with('.') {
            continue;
        }
        let path = entry.path();
        let Ok(kind) = entry.file_type() else { continue };
        if kind.is_dir() {
            walk(root, &path, out);
        } else if let Ok(relative) = path.strip_prefix(root) {
            out.push(normal(relative));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn texts_are_read_once_and_named_as_templates_name_them() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path();
        for (name, bytes) in [
            ("nginx/map.jinja", b"{% set x = 1 %}".to_vec()),
            ("pillar/top.sls", b"base: {}".to_vec()),
            (".git/config", b"x".to_vec()),
            ("files/blob", vec![0xff, 0xfe]),
        ] {
            std::fs::create_dir_all(root.join(name).parent().unwrap()).unwrap();
            std::fs::write(root.join(name), bytes).unwrap();
        }
        std::fs::write(root.join("big.yaml"), vec![b'a'; (MAX_FILE_BYTES + 1) as usize]).unwrap();
        let texts = TreeTexts::read(root);
        // Gone from the disk: still there, as loaded.
        std::fs::remove_file(root.join("nginx/map.jinja")).unwrap();
        assert_eq!(texts.get(root, "nginx/map.jinja"), Ok("{% set x = 1 %}"));
        assert_eq!(texts.get(root, "nginx//./map.jinja"), Ok("{% set x = 1 %}"));
        assert_eq!(texts.get(&root.join("pillar"), "top.sls"), Ok("base: {}"));
        assert!(matches!(texts.get(root, ".git/config"), Err(PrereadError::Missing { .. })));
        let error = texts.get(root, "big.yaml").unwrap_err().to_string();
        assert!(error.contains("over 1 MiB"), "{error}");
        assert!(texts.get(root, "files/blob").unwrap_err().to_string().contains("not UTF-8"));
    }
}

//! The example state tree (the repository's `states/`), built into the
//! binary so that `demo` (and `init`) work on a machine without the
//! repository.

use std::path::Path;

/// Every file of the example tree, by its path inside the tree.
pub const FILES: &[(&str, &str)] = &[
    ("top.yaml", include_str!("../../../states/top.yaml")),
    ("beacons.yaml", include_str!("../../../states/beacons.yaml")),
    ("reactors.yaml", include_str!("../../../states/reactors.yaml")),
    ("motd.yaml", include_str!("../../../states/motd.yaml")),
    ("nginx.yaml", include_str!("../../../states/nginx.yaml")),
    ("files/nginx.conf", include_str!("../../../states/files/nginx.conf")),
];

/// Writes the example tree into `dir`.
pub fn write(dir: &Path) -> std::io::Result<()> {
    for (name, text) in FILES {
        let path = dir.join(name);
        if let Some(parent) = path.parent() {
            std::fs::create_dir_all(parent)?;
        }
        std::fs::write(path, text)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn files_under(root: &Path, dir: &Path, out: &mut Vec<String>) {
        for entry in std::fs::read_dir(dir).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                files_under(root, &path, out);
            } else {
                out.push(path.strip_prefix(root).unwrap().display().to_string());
            }
        }
    }

    /// A file added to states/ but not here would be missing from the demo.
    #[test]
    fn embeds_every_file_of_the_repository_tree() {
        let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../states");
        let mut on_disk = Vec::new();
        files_under(&root, &root, &mut on_disk);
        on_disk.sort();
        let mut embedded: Vec<String> = FILES.iter().map(|(n, _)| (*n).to_owned()).collect();
        embedded.sort();
        assert_eq!(on_disk, embedded);
    }

    #[test]
    fn the_example_tree_is_clean() {
        let dir = tempfile::tempdir().unwrap();
        write(dir.path()).unwrap();
        let (tree, diagnostics) = crate::tree::Tree::load(dir.path());
        assert!(diagnostics.is_empty(), "{diagnostics:#?}");
        assert_eq!(tree.reactors.len(), 2);
    }
}

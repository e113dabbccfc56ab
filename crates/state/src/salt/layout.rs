//! Salt's tree layout: which file an sls name means, and the names of the
//! state files of a tree.
//!
//! - `nginx` names `nginx.sls` or `nginx/init.sls` (the first wins, as in
//!   Salt); `nginx.config` names `nginx/config.sls` or
//!   `nginx/config/init.sls`;
//! - at the tree's root only, `NAME.yaml` is a state file too (halite's own
//!   format, which Salt trees do not use): in subdirectories a `.yaml` file
//!   is data (a `salt://` source, an `import_yaml`), never a state file;
//! - a relative name (`.config`, `..common`) is resolved against the sls
//!   that names it, as Salt's `include:` does: one dot is the including
//!   file's package (the sls itself for an `init.sls`, its parent
//!   otherwise), each further dot one level up;
//! - `pillar/` (the pillar tree), hidden directories and `top.sls` are not
//!   state files.

use std::path::{Path, PathBuf};

/// The directory of the pillar tree inside the state tree.
pub const PILLAR_DIR: &str = "pillar";

/// Why an sls name does not name a file; each names the sls.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum LayoutError {
    #[error("no state file for sls `{name}` (looked for {})", tried.iter().map(|p| p.display().to_string()).collect::<Vec<_>>().join(", "))]
    NotFound { name: String, tried: Vec<PathBuf> },
    #[error("`{name}` is not an sls name (letters, digits, `_`, `-`, `.` between parts)")]
    BadName { name: String },
    #[error("relative sls `{name}` in `{from}` goes above the tree's root")]
    AboveRoot { name: String, from: String },
}

/// One state file found in the tree.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SlsFile {
    /// Its sls name: `nginx.config`.
    pub name: String,
    pub path: PathBuf,
    /// It is a package's `init.sls` (relative names start at itself).
    pub init: bool,
}

/// The tree-relative paths `name` may be, in Salt's order of preference.
fn candidates(name: &str) -> Result<Vec<PathBuf>, LayoutError> {
    let parts: Vec<&str> = name.split('.').collect();
    let valid = |p: &str| !p.is_empty() && p.chars().all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-');
    if !parts.iter().all(|p| valid(p)) {
        return Err(LayoutError::BadName { name: name.to_owned() });
    }
    let base: PathBuf = parts.iter().collect();
    let mut out = vec![base.with_extension("sls"), base.join("init.sls")];
    if parts.len() == 1 {
        // halite's own format, at the root only.
        out.push(base.with_extension("yaml"));
    }
    Ok(out)
}

/// The file an absolute sls name means: `nginx` → `nginx.sls` or
/// `nginx/init.sls`, `nginx.config` → `nginx/config.sls`.
pub fn resolve_sls(root: &Path, name: &str) -> Result<PathBuf, LayoutError> {
    let tried = candidates(name)?;
    match tried.iter().find(|p| root.join(p).is_file()) {
        Some(found) => Ok(root.join(found)),
        None => Err(LayoutError::NotFound { name: name.to_owned(), tried }),
    }
}

/// [`resolve_sls`] answered from the texts read at load (preread.rs): no
/// file is read, for a render.
pub fn sls_exists_in(texts: &crate::salt::preread::TreeTexts, root: &Path, name: &str) -> bool {
    candidates(name).is_ok_and(|tried| tried.iter().any(|p| texts.get(root, &p.to_string_lossy()).is_ok()))
}

/// The absolute sls name of `name` as written in the sls `from` (whose
/// file is an `init.sls` when `from_init`): `.config` in `nginx` (its
/// init.sls) is `nginx.config`; in `nginx.server` it is `nginx.config`;
/// `..common` in `nginx.server` is `common`. A name without a leading dot
/// is already absolute.
pub fn absolute_name(name: &str, from: &str, from_init: bool) -> Result<String, LayoutError> {
    let dots = name.chars().take_while(|c| *c == '.').count();
    if dots == 0 {
        return Ok(name.to_owned());
    }
    let mut package: Vec<&str> = from.split('.').filter(|p| !p.is_empty()).collect();
    if !from_init {
        package.pop();
    }
    for _ in 1..dots {
        if package.pop().is_none() {
            return Err(LayoutError::AboveRoot { name: name.to_owned(), from: from.to_owned() });
        }
    }
    let rest = &name[dots..];
    if rest.is_empty() {
        return if package.is_empty() {
            Err(LayoutError::AboveRoot { name: name.to_owned(), from: from.to_owned() })
        } else {
            Ok(package.join("."))
        };
    }
    package.push(rest);
    Ok(package.join("."))
}

/// `slspath` and `tpldir` of a state file: its directory relative to the
/// root, `/`-separated (`nginx` for `nginx/init.sls` and for
/// `nginx/config.sls`; empty at the root).
pub fn tpldir(root: &Path, path: &Path) -> String {
    let relative = path.strip_prefix(root).unwrap_or(path);
    relative
        .parent()
        .map(|p| p.components().map(|c| c.as_os_str().to_string_lossy().into_owned()).collect::<Vec<_>>().join("/"))
        .unwrap_or_default()
}

/// Every state file of the tree with its sls name, sorted by name. Where
/// two files claim one name (`nginx.sls` and `nginx/init.sls`), the one
/// Salt would read is kept and the other returned in `shadowed`.
/// `excluded` names files of the root that are not state files
/// (`top.sls`, `vars.yaml`, …).
pub fn discover(root: &Path, excluded: &[&str]) -> Discovered {
    let mut found = Vec::new();
    walk(root, root, excluded, &mut found);
    found.sort_by(|a: &SlsFile, b| a.name.cmp(&b.name).then_with(|| rank(a).cmp(&rank(b))));
    let mut out = Discovered::default();
    for file in found {
        match out.files.last() {
            Some(last) if last.name == file.name => out.shadowed.push(file),
            _ => out.files.push(file),
        }
    }
    out
}

/// Salt's preference among files of one name: `x.sls`, then `x/init.sls`,
/// then halite's `x.yaml`.
fn rank(file: &SlsFile) -> u8 {
    match (file.init, file.path.extension().and_then(|e| e.to_str())) {
        (false, Some("sls")) => 0,
        (true, _) => 1,
        _ => 2,
    }
}

/// The state files found, and the ones another file of the same name hides.
#[derive(Debug, Default)]
pub struct Discovered {
    pub files: Vec<SlsFile>,
    pub shadowed: Vec<SlsFile>,
}

fn walk(root: &Path, dir: &Path, excluded: &[&str], found: &mut Vec<SlsFile>) {
    let Ok(entries) = std::fs::read_dir(dir) else { return };
    let at_root = dir == root;
    for entry in entries.filter_map(Result::ok) {
        let path = entry.path();
        let file_name = entry.file_name().to_string_lossy().into_owned();
        if file_name.starts_with('.') {
            continue;
        }
        // `file_type` does not follow links: a linked directory is not
        // walked (it may lead out of the tree, or round in a loop).
        let Ok(file_type) = entry.file_type() else { continue };
        if file_type.is_dir() {
            if !(at_root && file_name == PILLAR_DIR) {
                walk(root, &path, excluded, found);
            }
            continue;
        }
        let extension = path.extension().and_then(|e| e.to_str()).unwrap_or_default();
        let is_state = match extension {
            "sls" => !(at_root && excluded.contains(&file_name.as_str())),
            "yaml" => at_root && !excluded.contains(&file_name.as_str()),
            _ => false,
        };
        if !is_state || !(file_type.is_file() || file_type.is_symlink() && path.is_file()) {
            continue;
        }
        let relative = path.strip_prefix(root).unwrap_or(&path);
        let mut parts: Vec<String> =
            relative.components().map(|c| c.as_os_str().to_string_lossy().into_owned()).collect();
        let stem = path.file_stem().and_then(|s| s.to_str()).unwrap_or_default().to_owned();
        parts.pop();
        let init = stem == "init" && !parts.is_empty();
        if !init {
            parts.push(stem);
        }
        found.push(SlsFile { name: parts.join("."), path, init });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tree(files: &[&str]) -> tempfile::TempDir {
        let dir = tempfile::tempdir().unwrap();
        for name in files {
            let path = dir.path().join(name);
            std::fs::create_dir_all(path.parent().unwrap()).unwrap();
            std::fs::write(path, "{}\n").unwrap();
        }
        dir
    }

    #[test]
    fn names_resolve_to_files_in_salts_order() {
        let dir =
            tree(&["nginx/init.sls", "nginx/config.sls", "web.sls", "web/init.sls", "common.yaml", "a/b/init.sls"]);
        let root = dir.path();
        let cases = [
            ("nginx", Some("nginx/init.sls")),
            ("nginx.config", Some("nginx/config.sls")),
            ("web", Some("web.sls")),
            ("common", Some("common.yaml")),
            ("a.b", Some("a/b/init.sls")),
            ("a", None),
            ("nginx.nope", None),
        ];
        for (name, expected) in cases {
            let got = resolve_sls(root, name).ok();
            assert_eq!(got, expected.map(|p| root.join(p)), "{name}");
        }
        let error = resolve_sls(root, "nginx.nope").unwrap_err().to_string();
        assert!(error.contains("nginx/nope.sls") && error.contains("nginx/nope/init.sls"), "{error}");
        assert!(matches!(resolve_sls(root, "../etc"), Err(LayoutError::BadName { .. })));
        assert!(matches!(resolve_sls(root, "a..b"), Err(LayoutError::BadName { .. })));
    }

    #[test]
    fn relative_names_follow_salts_include_rule() {
        let cases = [
            (".config", "nginx", true, Ok("nginx.config")),
            (".config", "nginx.server", false, Ok("nginx.config")),
            ("..common", "nginx.server", false, Ok("common")),
            ("..common", "nginx.server.tls", false, Ok("nginx.common")),
            (".", "nginx", true, Ok("nginx")),
            ("common", "nginx", true, Ok("common")),
            (".x", "top", false, Ok("x")),
            ("..x", "top", false, Err(())),
        ];
        for (name, from, init, expected) in cases {
            let got = absolute_name(name, from, init).map_err(|_| ()).map(|s| s == expected.unwrap_or(""));
            assert_eq!(got, expected.map(|_| true), "{name} from {from}");
        }
    }

    #[test]
    fn discovery_names_every_state_file_and_skips_data() {
        let dir = tree(&[
            "top.sls",
            "vars.yaml",
            "common.yaml",
            "nginx/init.sls",
            "nginx/config.sls",
            "nginx/files/site.yaml",
            "nginx/map.jinja",
            "web.sls",
            "web/init.sls",
            "pillar/top.sls",
            "pillar/nginx.sls",
            ".git/x.sls",
        ]);
        let found = discover(dir.path(), &["top.sls", "vars.yaml"]);
        let names: Vec<&str> = found.files.iter().map(|f| f.name.as_str()).collect();
        assert_eq!(names, ["common", "nginx", "nginx.config", "web"]);
        assert!(found.files[1].init && found.files[1].path.ends_with("nginx/init.sls"));
        assert!(found.files[3].path.ends_with("web.sls"));
        assert_eq!(found.shadowed.len(), 1);
        assert!(found.shadowed[0].path.ends_with("web/init.sls"));
        assert_eq!(tpldir(dir.path(), &found.files[2].path), "nginx");
        assert_eq!(tpldir(dir.path(), &found.files[0].path), "");
    }
}

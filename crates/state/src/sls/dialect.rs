//! Where a `.sls` file means something else than the same words in
//! halite's own `.yaml` state files, Salt's meaning wins in `.sls` files:
//!
//! - `cmd.run`/`cmd.wait` command lines run through `/bin/sh -c`
//!   (`installer > /dev/null 2>&1` redirects); in `.yaml` files a command
//!   line is split into words and run without a shell (halite's
//!   documented default, kept).
//! - `file.managed` ends `contents` with a newline when it has none
//!   (Salt's `contents_newline`, default true); `.yaml` files keep the
//!   contents exactly as written unless `contents_newline: true` is set.
//!
//! - `file.managed` fails when the file's directory is missing unless
//!   `makedirs: True` (Salt's default is false; halite's `.yaml` default
//!   is true).
//! - `file.managed` creates missing directories with Salt's `dir_mode`
//!   default: the file's `mode` with the execute bit added to each
//!   non-zero digit (0600 gives 0700, 0640 gives 0750); `.yaml` files
//!   create them 0755.
//!
//! An explicit argument always wins.

use crate::yaml::{Fields, Spanned};

/// Whether a state file is in Salt's dialect.
pub fn is_salt(path: &std::path::Path) -> bool {
    path.extension().is_some_and(|e| e == "sls")
}

/// Adds Salt's defaults to a `.sls` state's arguments.
pub fn salt_defaults(kind: &str, fields: &mut Fields, at: &Spanned<String>) {
    let default: &[(&str, serde_json::Value)] = match kind {
        "cmd.run" | "cmd.wait" => &[("shell", serde_json::Value::Bool(true))],
        "file.managed" => {
            &[("contents_newline", serde_json::Value::Bool(true)), ("makedirs", serde_json::Value::Bool(false))]
        }
        _ => &[],
    };
    let derived = (kind == "file.managed" && fields.get("dir_mode").is_none())
        .then(|| fields.get("mode").and_then(|mode| dir_mode(&mode.value)))
        .flatten()
        .map(|mode| vec![("dir_mode", serde_json::Value::String(format!("{mode:04o}")))])
        .unwrap_or_default();
    for (key, value) in default.iter().chain(derived.iter()) {
        if fields.get(key).is_none() {
            fields.entries.push((
                Spanned { value: (*key).to_owned(), referenced: at.referenced, defined: at.defined },
                Spanned { value: value.clone(), referenced: at.referenced, defined: at.defined },
            ));
        }
    }
}

/// Salt's directory mode for a file's `mode` (salt/modules/file.py,
/// `manage_file`): each non-zero octal digit of the last three gets its
/// execute bit. `None` when the mode does not parse (the kind reports it).
pub fn dir_mode(mode: &serde_json::Value) -> Option<u32> {
    let mode = crate::kinds::file_managed::parse_mode(mode).ok()?;
    Some((0..3).fold(0, |acc, digit| {
        let part = (mode >> (3 * digit)) & 0o7;
        acc | (if part == 0 { 0 } else { part | 1 }) << (3 * digit)
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn directory_modes_as_salt_derives_them() {
        let table =
            [("0600", 0o700), ("0640", 0o750), ("0644", 0o755), ("0400", 0o500), ("0000", 0o000), ("4755", 0o755)];
        for (mode, expected) in table {
            assert_eq!(dir_mode(&serde_json::json!(mode)), Some(expected), "{mode}");
        }
        assert_eq!(dir_mode(&serde_json::json!(600)), Some(0o700));
        assert_eq!(dir_mode(&serde_json::json!("rw")), None);
    }
}

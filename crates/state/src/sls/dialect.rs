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
        "file.managed" => &[("contents_newline", serde_json::Value::Bool(true))],
        _ => &[],
    };
    for (key, value) in default {
        if fields.get(key).is_none() {
            fields.entries.push((
                Spanned { value: (*key).to_owned(), referenced: at.referenced, defined: at.defined },
                Spanned { value: value.clone(), referenced: at.referenced, defined: at.defined },
            ));
        }
    }
}

//! `halite-master check`: load the whole tree and report every problem.

use std::io::Write;
use std::path::Path;

use crate::tree::Tree;

/// Prints every diagnostic and a summary; returns whether the tree is clean
/// of errors.
pub fn run(states: &Path, out: &mut impl Write) -> std::io::Result<bool> {
    let (tree, diagnostics) = Tree::load(states);
    for diagnostic in &diagnostics {
        writeln!(out, "{diagnostic}")?;
    }
    let errors = diagnostics.iter().filter(|d| d.is_error()).count();
    if errors == 0 {
        writeln!(out, "ok: {}: {}", states.display(), tree.summary())?;
    } else {
        let files: std::collections::BTreeSet<_> = diagnostics.iter().map(|d| &d.file).collect();
        writeln!(
            out,
            "error: {errors} problem{} in {} file{} of {}",
            if errors == 1 { "" } else { "s" },
            files.len(),
            if files.len() == 1 { "" } else { "s" },
            states.display()
        )?;
    }
    Ok(errors == 0)
}

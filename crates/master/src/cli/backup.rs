//! `halite-master backup FILE`: a consistent copy of the running master's
//! store, made by the master itself (a control-socket request) with
//! SQLite's online backup, so writes go on meanwhile and the copy is one
//! self-contained file.

use std::path::Path;

use anyhow::Context as _;

use crate::protocol::Request;

pub fn run(data_dir: &Path, file: &Path) -> anyhow::Result<bool> {
    // The master resolves nothing against its own working directory.
    let to = std::path::absolute(file).with_context(|| format!("cannot resolve {}", file.display()))?;
    let response = super::runtime()?.block_on(super::request(data_dir, &Request::Backup { to: to.clone() }))?;
    if let Some(error) = response.error {
        anyhow::bail!(error);
    }
    let size = std::fs::metadata(&to).map(|m| m.len()).unwrap_or(0);
    println!(
        "Backed up {} to {} ({size} bytes). To restore: stop the master, copy it to that path, remove halite.db-wal beside it, start the master.",
        crate::server::store::path(data_dir).display(),
        to.display()
    );
    Ok(true)
}

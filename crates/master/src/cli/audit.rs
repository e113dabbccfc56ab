//! `halite-master audit [--verify] [--json]`: the audit log, read from
//! halite.db directly and read-only (the master may run or not), printed
//! oldest first as text or JSON lines; `--verify` checks the hash chain
//! (`server/audit.rs`) and names the first row that does not fit.

use std::io::Write;
use std::path::Path;

use anyhow::Context as _;
use rusqlite::{Connection, OpenFlags};

use crate::server::audit::{self, Row};

/// Prints the log; false (exit 1) when `verify` finds the chain broken.
pub fn run(data_dir: &Path, verify: bool, json: bool, out: &mut impl Write) -> anyhow::Result<bool> {
    super::trusted_data_dir(data_dir)?;
    let path = crate::server::store::path(data_dir);
    let rows = read(&path)?;
    if verify {
        return Ok(match audit::verify(&rows) {
            Ok(()) => {
                let last = rows.last().map_or(audit::GENESIS, |r| r.hash.as_str());
                writeln!(out, "ok: {} audit rows, the chain holds; the last hash is {last}", rows.len())?;
                true
            }
            Err(broken) => {
                writeln!(out, "error: {broken}")?;
                false
            }
        });
    }
    for row in &rows {
        if json {
            writeln!(out, "{}", serde_json::to_string(row)?)?;
        } else {
            writeln!(out, "{}", text(row))?;
        }
    }
    Ok(true)
}

/// Every row, oldest first (none in a store older than v5).
fn read(path: &Path) -> anyhow::Result<Vec<Row>> {
    if !path.exists() {
        anyhow::bail!("no store at {} (has the master run with this data dir?)", path.display());
    }
    let connection =
        Connection::open_with_flags(path, OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX)
            .with_context(|| format!("cannot open {}", path.display()))?;
    connection.busy_timeout(std::time::Duration::from_secs(5))?;
    let has_table: bool =
        connection.query_row("SELECT count(*) > 0 FROM sqlite_master WHERE name = 'audit'", [], |row| row.get(0))?;
    if !has_table {
        return Ok(Vec::new());
    }
    Ok(audit::rows(&connection, &path.display().to_string(), 0, None)?)
}

/// One row as a line of text, control characters escaped.
fn text(row: &Row) -> String {
    let at = humantime::format_rfc3339_seconds(
        std::time::UNIX_EPOCH + std::time::Duration::from_micros(u64::try_from(row.at_us).unwrap_or(0)),
    );
    let e = &row.entry;
    let escape = halite_proto::text::escape;
    format!(
        "{:>5} {at} {} {} {} [{}] {}",
        row.seq,
        escape(&e.who),
        escape(&e.what),
        escape(&e.target),
        escape(&e.cause),
        escape(&e.result)
    )
}

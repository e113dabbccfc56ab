//! `halite-master audit [--verify] [--json]`: the audit log, read from
//! halite.db directly and read-only (the master may run or not), or from
//! PostgreSQL when master.yaml's `store:` names it (then the one chain of
//! every master), printed oldest first as text or JSON lines; `--verify`
//! checks the hash chain (`server/audit.rs`) and names the first row that
//! does not fit.

use std::io::Write;
use std::path::Path;

use anyhow::Context as _;
use rusqlite::{Connection, OpenFlags};

use crate::server::audit::{self, Row};

/// Prints the log; false (exit 1) when `verify` finds the chain broken.
pub fn run(
    data_dir: &Path,
    store: &crate::config::StoreConfig,
    verify: bool,
    json: bool,
    out: &mut impl Write,
) -> anyhow::Result<bool> {
    super::trusted_data_dir(data_dir)?;
    super::records_are_here(data_dir, store)?;
    let rows = match &store.url {
        Some(url) => read_postgres(&crate::server::store::postgres::PgTarget::from_config(store, url)?)?,
        None => read(&crate::server::store::path(data_dir))?,
    };
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

/// Every row of the shared chain in PostgreSQL, oldest first (none before
/// schema v4).
fn read_postgres(target: &crate::server::store::postgres::PgTarget) -> anyhow::Result<Vec<Row>> {
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    runtime.block_on(async {
        let client = target.connect().await?;
        match crate::server::cluster::access::rows(&client, 0, None).await {
            Ok(rows) => Ok(rows),
            Err(error) if error.code() == Some(&tokio_postgres::error::SqlState::UNDEFINED_TABLE) => Ok(Vec::new()),
            Err(error) => Err(anyhow::anyhow!(
                "cannot read the audit log from {target}: {}",
                crate::server::store::postgres::describe(&error)
            )),
        }
    })
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

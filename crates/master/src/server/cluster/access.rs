//! API tokens and the audit log in PostgreSQL (`api_tokens`, `audit`),
//! shared by every master on one database: the PostgreSQL side of
//! `server/access.rs`, which decides when to come here.
//!
//! **Tokens.** Created or revoked on any master in a small transaction
//! that `NOTIFY halite_tokens`s; every master keeps them in memory (a
//! check is a hash and a lookup) and [`listen`]s: on a notification, and
//! after every (re)connection, it reads the table again and replaces its
//! memory. A token this master has not heard of yet (the notification
//! still on its way) is read through on the miss ([`find_token`]). While
//! PostgreSQL is unreachable, creating or revoking is refused with the
//! reason, and the tokens in memory keep working (a revocation made
//! elsewhere meanwhile takes effect here when the listener reconnects).
//!
//! **The audit log.** One hash chain for the whole cluster: [`append`]
//! takes a transaction-scoped advisory lock ([`AUDIT_LOCK`]) before it
//! reads the head row, so appends from several masters serialise and each
//! chains onto the one before it. An append that cannot reach PostgreSQL
//! is not lost: [`Pending`] writes it, fsynced, to `<data_dir>/audit.pending`
//! and chains it in (in order, before any newer entry of this master) when
//! PostgreSQL answers. Each pending entry carries an id that is unique in
//! the table, so a crash between the commit and the file's truncation
//! chains nothing twice.
//!
//! The first time a data dir meets PostgreSQL, halite.db's tokens and
//! audit rows are imported ([`IMPORTED_MARKER`]), as keys are
//! (`keys.rs`): tokens where the name is free, audit rows appended to the
//! shared chain (their time and fields kept; their id is
//! `halite.db:<their old hash>`).

use std::collections::BTreeSet;
use std::path::PathBuf;
use std::sync::Arc;

use serde::{Deserialize, Serialize};
use tokio::io::AsyncWriteExt as _;
use tokio::sync::mpsc;
use tokio_postgres::Client;
use tokio_util::sync::CancellationToken;

use crate::server::audit::{self, Entry, Row};
use crate::server::store::postgres::{COMMIT_TIMEOUT, PgTarget, describe, migrate};

/// The channel token changes are notified on.
pub const TOKENS_CHANNEL: &str = "halite_tokens";
/// An arbitrary constant: the advisory lock every audit append takes.
pub const AUDIT_LOCK: i64 = 0x0068_616c_6974_650a;
/// The file in the data dir that says halite.db's tokens and audit rows
/// were imported into PostgreSQL (once).
pub const IMPORTED_MARKER: &str = "access.imported-to-postgres";
/// Audit entries written while PostgreSQL was unreachable, in the data dir.
pub const PENDING_FILE: &str = "audit.pending";
/// Backoff between connection attempts, doubling from the first to the
/// last; also how often audit entries kept here are tried again. The same
/// as the other listeners' (`cluster/mod.rs`), not imported from there:
/// `server/access.rs` reaches this file, and `cluster/mod.rs` reaches the
/// whole master.
const BACKOFF: (std::time::Duration, std::time::Duration) =
    (std::time::Duration::from_millis(250), std::time::Duration::from_secs(5));

fn next_backoff(now: std::time::Duration) -> std::time::Duration {
    (now * 2).min(BACKOFF.1)
}

/// Notifications waiting to be handled, at most (then the connection is
/// not read, and PostgreSQL holds them).
const NOTIFY_QUEUE: usize = 256;

#[derive(Debug, thiserror::Error)]
pub enum SharedAccessError {
    #[error("the API tokens and audit log in PostgreSQL {target}: {message}")]
    Postgres { target: String, message: String },
    #[error("PostgreSQL {target} did not answer within {COMMIT_TIMEOUT:?}")]
    Timeout { target: String },
    #[error("cannot connect to PostgreSQL: {0}")]
    Connect(#[from] crate::server::store::postgres::PgError),
    #[error("the audit entries waiting for PostgreSQL in {path}: {source}")]
    Pending { path: PathBuf, source: std::io::Error },
    #[error("the audit entries waiting for PostgreSQL in {path}: line {line} is damaged: {error}")]
    PendingDamaged { path: PathBuf, line: usize, error: String },
    #[error("cannot write {path}: {source}")]
    Marker { path: PathBuf, source: std::io::Error },
}

/// One token row as PostgreSQL keeps it (the token's sha256, never the
/// token).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredToken {
    pub name: String,
    pub role: String,
    pub hash: String,
    pub created_us: i64,
}

/// The connection the small transactions (tokens, audit) share, made on
/// first use and again after a failure.
#[derive(Debug)]
pub struct Shared {
    target: PgTarget,
    client: tokio::sync::Mutex<Option<Client>>,
}

impl Shared {
    pub fn new(target: PgTarget) -> Shared {
        Shared { target, client: tokio::sync::Mutex::new(None) }
    }

    pub fn target(&self) -> &PgTarget {
        &self.target
    }

    /// Runs `work` on the connection, within [`COMMIT_TIMEOUT`]; a failure
    /// drops the connection (the next call makes another).
    async fn run<T>(
        &self,
        work: impl AsyncFnOnce(&mut Client) -> Result<T, tokio_postgres::Error>,
    ) -> Result<T, SharedAccessError> {
        let mut guard = self.client.lock().await;
        if guard.as_ref().is_none_or(Client::is_closed) {
            let mut client = self.target.connect().await?;
            migrate(&mut client, &self.target).await?;
            *guard = Some(client);
        }
        let Some(client) = guard.as_mut() else { unreachable!("connected above") };
        let target = self.target.to_string();
        let result = match tokio::time::timeout(COMMIT_TIMEOUT, work(client)).await {
            Ok(Ok(value)) => return Ok(value),
            Ok(Err(error)) => SharedAccessError::Postgres { target, message: describe(&error) },
            Err(_) => SharedAccessError::Timeout { target },
        };
        *guard = None;
        Err(result)
    }

    /// Inserts a token and notifies; `false` when the name (or the hash)
    /// is taken.
    pub async fn create_token(&self, token: &StoredToken) -> Result<bool, SharedAccessError> {
        self.run(async |client| {
            let tx = client.transaction().await?;
            let added = tx
                .execute(
                    "INSERT INTO api_tokens (name, role, hash, created_us) VALUES ($1, $2, $3, $4)
                     ON CONFLICT DO NOTHING",
                    &[&token.name, &token.role, &token.hash, &token.created_us],
                )
                .await?;
            if added > 0 {
                tx.execute("SELECT pg_notify($1, $2)", &[&TOKENS_CHANNEL, &token.name]).await?;
            }
            tx.commit().await?;
            Ok(added > 0)
        })
        .await
    }

    /// Deletes the token named `name` and notifies; `false` when none.
    pub async fn revoke(&self, name: &str) -> Result<bool, SharedAccessError> {
        self.run(async |client| {
            let tx = client.transaction().await?;
            let deleted = tx.execute("DELETE FROM api_tokens WHERE name = $1", &[&name]).await?;
            if deleted > 0 {
                tx.execute("SELECT pg_notify($1, $2)", &[&TOKENS_CHANNEL, &name]).await?;
            }
            tx.commit().await?;
            Ok(deleted > 0)
        })
        .await
    }

    /// The token whose sha256 is `hash`, read through on a cache miss.
    pub async fn find_token(&self, hash: &str) -> Result<Option<StoredToken>, SharedAccessError> {
        self.run(async |client| {
            let row = client
                .query_opt("SELECT name, role, hash, created_us FROM api_tokens WHERE hash = $1", &[&hash])
                .await?;
            Ok(row.map(|row| token_of(&row)))
        })
        .await
    }

    /// Appends `entry` to the shared chain (module docs); `id` makes it
    /// once-only (`None`: an entry made now). `None` back when an entry
    /// with that id is chained already.
    pub async fn append(&self, at_us: i64, entry: &Entry, id: Option<&str>) -> Result<Option<Row>, SharedAccessError> {
        self.run(async |client| append(client, at_us, entry, id).await).await
    }

    /// Rows oldest first: all of them (`after` 0, `limit` none), or a page.
    pub async fn rows(&self, after: i64, limit: Option<u32>) -> Result<Vec<Row>, SharedAccessError> {
        self.run(async |client| rows(client, after, limit).await).await
    }

    /// The newest `limit` rows, newest first.
    pub async fn newest(&self, limit: u32) -> Result<Vec<Row>, SharedAccessError> {
        self.run(async |client| {
            let last: i64 = client.query_one("SELECT coalesce(max(seq), 0) FROM audit", &[]).await?.get(0);
            let mut page = rows(client, (last - i64::from(limit)).max(0), Some(limit)).await?;
            page.reverse();
            Ok(page)
        })
        .await
    }
}

fn token_of(row: &tokio_postgres::Row) -> StoredToken {
    StoredToken { name: row.get(0), role: row.get(1), hash: row.get(2), created_us: row.get(3) }
}

/// Every token PostgreSQL holds.
pub async fn read_tokens(client: &Client) -> Result<Vec<StoredToken>, tokio_postgres::Error> {
    let rows = client.query("SELECT name, role, hash, created_us FROM api_tokens ORDER BY name", &[]).await?;
    Ok(rows.iter().map(token_of).collect())
}

/// Appends `entry` after the cluster's last row, in one transaction that
/// holds [`AUDIT_LOCK`]: no other master chains onto the same row.
pub async fn append(
    client: &mut Client,
    at_us: i64,
    entry: &Entry,
    id: Option<&str>,
) -> Result<Option<Row>, tokio_postgres::Error> {
    let tx = client.transaction().await?;
    tx.execute("SELECT pg_advisory_xact_lock($1)", &[&AUDIT_LOCK]).await?;
    if let Some(id) = id
        && tx.query_opt("SELECT 1 FROM audit WHERE id = $1", &[&id]).await?.is_some()
    {
        return Ok(None);
    }
    let last = tx.query_opt("SELECT seq, hash FROM audit ORDER BY seq DESC LIMIT 1", &[]).await?;
    let (seq, prev) = last.map_or((1, audit::GENESIS.to_owned()), |row| (row.get::<_, i64>(0) + 1, row.get(1)));
    let hash = audit::hash(&prev, seq, at_us, entry);
    tx.execute(
        "INSERT INTO audit (seq, at_us, who, what, target, cause, result, prev, hash, id)
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10)",
        &[&seq, &at_us, &entry.who, &entry.what, &entry.target, &entry.cause, &entry.result, &prev, &hash, &id],
    )
    .await?;
    tx.commit().await?;
    Ok(Some(Row { seq, at_us, entry: entry.clone(), prev, hash }))
}

/// Rows oldest first, after `after`, at most `limit`.
pub async fn rows(client: &Client, after: i64, limit: Option<u32>) -> Result<Vec<Row>, tokio_postgres::Error> {
    let limit = limit.map_or(i64::MAX, i64::from);
    let rows = client
        .query(
            "SELECT seq, at_us, who, what, target, cause, result, prev, hash FROM audit
             WHERE seq > $1 ORDER BY seq LIMIT $2",
            &[&after, &limit],
        )
        .await?;
    Ok(rows
        .iter()
        .map(|row| Row {
            seq: row.get(0),
            at_us: row.get(1),
            entry: Entry {
                who: row.get(2),
                what: row.get(3),
                target: row.get(4),
                cause: row.get(5),
                result: row.get(6),
            },
            prev: row.get(7),
            hash: row.get(8),
        })
        .collect())
}

/// An audit entry waiting for PostgreSQL, one JSON line of
/// [`PENDING_FILE`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PendingEntry {
    /// Unique in the `audit` table: chained in once.
    pub id: String,
    pub at_us: i64,
    pub entry: Entry,
}

/// The audit entries this master could not chain in yet, and the order
/// they keep: while any wait, newer entries wait behind them.
#[derive(Debug)]
pub struct Pending {
    path: PathBuf,
    /// Held while entries are appended or drained: one at a time. Holds
    /// when PostgreSQL last failed an append: for [`BACKOFF`]`.1` after it,
    /// entries go straight to the file, so a partition (where each attempt
    /// costs a connect timeout) does not slow every audited call.
    lock: tokio::sync::Mutex<Option<tokio::time::Instant>>,
}

impl Pending {
    pub fn new(path: PathBuf) -> Pending {
        Pending { path, lock: tokio::sync::Mutex::new(None) }
    }

    pub fn path(&self) -> &std::path::Path {
        &self.path
    }

    /// Records `entry`: chained in now when PostgreSQL answers and nothing
    /// waits before it, else written to the pending file (fsynced). An
    /// error only when neither could be done.
    pub async fn record(&self, shared: &Shared, at_us: i64, entry: Entry) -> Result<(), SharedAccessError> {
        let mut failed = self.lock.lock().await;
        let cooling = failed.is_some_and(|at| at.elapsed() < BACKOFF.1);
        if !cooling && self.drain_locked(shared, &mut failed).await == 0 {
            match shared.append(at_us, &entry, None).await {
                Ok(_) => return Ok(()),
                Err(error) => {
                    *failed = Some(tokio::time::Instant::now());
                    tracing::warn!(%error, pending = %self.path.display(), "Cannot reach the shared audit log; the entry is kept here and chained in when PostgreSQL answers.");
                }
            }
        }
        let pending = PendingEntry { id: format!("pending:{}", halite_proto::Id::new()), at_us, entry };
        self.write(&[pending]).await
    }

    /// Chains in what waits, in order; how many still wait.
    pub async fn drain(&self, shared: &Shared) -> usize {
        let mut failed = self.lock.lock().await;
        self.drain_locked(shared, &mut failed).await
    }

    async fn drain_locked(&self, shared: &Shared, failed: &mut Option<tokio::time::Instant>) -> usize {
        let entries = match self.read().await {
            Ok(entries) => entries,
            Err(error) => {
                tracing::error!(%error, "Cannot read the audit entries waiting for PostgreSQL; they stay.");
                return usize::MAX;
            }
        };
        if entries.is_empty() {
            return 0;
        }
        for (done, pending) in entries.iter().enumerate() {
            if let Err(error) = shared.append(pending.at_us, &pending.entry, Some(&pending.id)).await {
                tracing::debug!(%error, "The shared audit log is still unreachable.");
                *failed = Some(tokio::time::Instant::now());
                // What was chained in is skipped next time (by its id).
                return entries.len() - done;
            }
        }
        *failed = None;
        if let Err(source) = tokio::fs::write(&self.path, b"").await {
            tracing::error!(error = %source, path = %self.path.display(), "Cannot empty the drained audit entries; they are chained in once all the same (by id).");
        }
        tracing::warn!(
            entries = entries.len(),
            "Chained the audit entries kept while PostgreSQL was unreachable into the shared audit log."
        );
        0
    }

    /// Appends entries to the file and fsyncs.
    pub async fn write(&self, entries: &[PendingEntry]) -> Result<(), SharedAccessError> {
        let io = |source| SharedAccessError::Pending { path: self.path.clone(), source };
        let mut text = Vec::new();
        for entry in entries {
            serde_json::to_writer(&mut text, entry).unwrap_or_default();
            text.push(b'\n');
        }
        let mut file =
            tokio::fs::OpenOptions::new().create(true).append(true).mode(0o600).open(&self.path).await.map_err(io)?;
        file.write_all(&text).await.map_err(io)?;
        file.sync_all().await.map_err(io)
    }

    /// What waits, oldest first. A torn last line (a crash mid-append: its
    /// call had not returned) is skipped.
    async fn read(&self) -> Result<Vec<PendingEntry>, SharedAccessError> {
        let text = match tokio::fs::read_to_string(&self.path).await {
            Ok(text) => text,
            Err(error) if error.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(source) => return Err(SharedAccessError::Pending { path: self.path.clone(), source }),
        };
        let complete = text.rfind('\n').map_or("", |end| &text[..end]);
        complete
            .lines()
            .enumerate()
            .filter(|(_, line)| !line.trim().is_empty())
            .map(|(n, line)| {
                serde_json::from_str(line).map_err(|error| SharedAccessError::PendingDamaged {
                    path: self.path.clone(),
                    line: n + 1,
                    error: error.to_string(),
                })
            })
            .collect()
    }
}

/// What halite.db held before this data dir met PostgreSQL.
#[derive(Debug, Default)]
pub struct Import {
    pub tokens: Vec<StoredToken>,
    pub audit: Vec<Row>,
}

/// The listener's parts.
pub struct Listener {
    pub shared: Arc<Shared>,
    pub pending: Arc<Pending>,
    /// Replaces the tokens in memory with PostgreSQL's.
    pub replace: Box<dyn Fn(Vec<StoredToken>) + Send + Sync>,
    /// halite.db's tokens and audit rows, imported once (`None`: done).
    pub import: Option<Import>,
    pub marker: PathBuf,
}

impl Listener {
    /// Listens for token changes and chains in pending audit entries, until
    /// `cancel`; reconnects with backoff.
    pub async fn run(mut self, cancel: CancellationToken) {
        let mut backoff = BACKOFF.0;
        let mut warned = false;
        loop {
            let (tx, mut rx) = mpsc::channel(NOTIFY_QUEUE);
            let connected = tokio::select! {
                () = cancel.cancelled() => return,
                connected = self.connect(tx) => connected,
            };
            match connected {
                Ok(client) => {
                    warned = false;
                    backoff = BACKOFF.0;
                    tokio::select! {
                        () = cancel.cancelled() => return,
                        () = self.serve(&client, &mut rx) => {}
                    }
                    tracing::warn!(store = %self.shared.target(), "Lost the connection listening for API token changes; reconnecting.");
                }
                Err(error) => {
                    if !warned {
                        tracing::warn!(%error, "Cannot listen for API token changes; the tokens known here keep working, and it is retried.");
                        warned = true;
                    }
                    tokio::select! {
                        () = cancel.cancelled() => return,
                        () = tokio::time::sleep(backoff) => {}
                    }
                    backoff = next_backoff(backoff);
                }
            }
        }
    }

    async fn connect(&mut self, tx: mpsc::Sender<tokio_postgres::Notification>) -> Result<Client, SharedAccessError> {
        let target = self.shared.target().clone();
        let failed = |e: tokio_postgres::Error| SharedAccessError::Postgres {
            target: target.to_string(),
            message: describe(&e),
        };
        let mut client = target.connect_listening(tx).await?;
        migrate(&mut client, &target).await?;
        client.batch_execute(&format!("LISTEN {TOKENS_CHANNEL}")).await.map_err(failed)?;
        if let Some(import) = &self.import {
            let (tokens, audit) = import_into(&mut client, import).await.map_err(failed)?;
            tokio::fs::write(&self.marker, format!("{target}\n"))
                .await
                .map_err(|source| SharedAccessError::Marker { path: self.marker.clone(), source })?;
            tracing::info!(store = %target, tokens, audit, "Imported this master's API tokens and audit rows into PostgreSQL (once).");
            self.import = None;
        }
        (self.replace)(read_tokens(&client).await.map_err(failed)?);
        self.pending.drain(&self.shared).await;
        Ok(client)
    }

    /// Re-reads the tokens on each batch of notifications, and chains in
    /// pending audit entries every backoff period while any wait.
    async fn serve(&self, client: &Client, rx: &mut mpsc::Receiver<tokio_postgres::Notification>) {
        let mut batch = Vec::with_capacity(NOTIFY_QUEUE);
        let mut names = BTreeSet::new();
        loop {
            let waiting = tokio::fs::metadata(self.pending.path()).await.is_ok_and(|m| m.len() > 0);
            let retry = async {
                if waiting {
                    tokio::time::sleep(BACKOFF.1).await;
                } else {
                    std::future::pending::<()>().await;
                }
            };
            tokio::select! {
                got = rx.recv_many(&mut batch, NOTIFY_QUEUE) => {
                    if got == 0 || client.is_closed() {
                        return;
                    }
                    names.extend(batch.drain(..).map(|n| n.payload().to_owned()));
                    match read_tokens(client).await {
                        Ok(tokens) => {
                            tracing::debug!(changed = ?names, "API tokens changed on a master; read again.");
                            (self.replace)(tokens);
                            names.clear();
                        }
                        Err(error) => {
                            tracing::warn!(error = %describe(&error), "Cannot read the API tokens; reconnecting to read them.");
                            return;
                        }
                    }
                }
                () = retry => {
                    self.pending.drain(&self.shared).await;
                }
            }
        }
    }
}

/// Imports halite.db's tokens (where the name and hash are free) and audit
/// rows (appended to the shared chain, once each by id); how many of each.
async fn import_into(client: &mut Client, import: &Import) -> Result<(u64, u64), tokio_postgres::Error> {
    let mut tokens = 0;
    for token in &import.tokens {
        tokens += client
            .execute(
                "INSERT INTO api_tokens (name, role, hash, created_us) VALUES ($1, $2, $3, $4) ON CONFLICT DO NOTHING",
                &[&token.name, &token.role, &token.hash, &token.created_us],
            )
            .await?;
    }
    let mut audit = 0;
    for row in &import.audit {
        let id = format!("halite.db:{}", row.hash);
        if append(client, row.at_us, &row.entry, Some(&id)).await?.is_some() {
            audit += 1;
        }
    }
    Ok((tokens, audit))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A torn last line is skipped (its append never returned); entries
    /// read back in order.
    #[tokio::test]
    async fn pending_entries_read_back_in_order_without_a_torn_line() {
        let dir = tempfile::tempdir().unwrap();
        let pending = Pending::new(dir.path().join(PENDING_FILE));
        assert!(pending.read().await.unwrap().is_empty());
        let entry = |n: i64| PendingEntry {
            id: format!("pending:{n}"),
            at_us: n,
            entry: Entry {
                who: "token:ci".into(),
                what: "apply".into(),
                target: "web*".into(),
                cause: "POST /api/v1/apply".into(),
                result: "ok".into(),
            },
        };
        pending.write(&[entry(1), entry(2)]).await.unwrap();
        pending.write(&[entry(3)]).await.unwrap();
        let mut file = tokio::fs::OpenOptions::new().append(true).open(pending.path()).await.unwrap();
        file.write_all(b"{\"id\":\"pending:4\",\"at").await.unwrap();
        assert_eq!(pending.read().await.unwrap(), [entry(1), entry(2), entry(3)]);
    }
}

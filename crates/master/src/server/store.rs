//! The master's store: one SQLite file, `<data_dir>/halite.db`, holding
//! every job with its cause and every agent's per-state results, and the
//! agents' keys. It is the job history behind `halite-master jobs`, the
//! audit log of SPEC §6 (cause event, state, changes and diff, result),
//! and where `keys.rs` keeps what it decided about each key.
//!
//! Writes go through [`Store`], a cheap handle that queues them for one
//! dedicated writer thread (SQLite calls block; they never run on the
//! runtime's threads). The queue holds [`STORE_QUEUE`] writes; when it is
//! full, the job path waits for room (a job's start is an awaited send).
//! An agent's answer arrives in the link loop, where waiting is impossible
//! ([`Store::answered_durably`]): it carries a channel on which the writer
//! says when it is committed, and the agent is acknowledged only then; when
//! the queue is full it is refused at once (not acknowledged: the agent
//! sends it again on its next session).
//!
//! A transaction the disk refuses (full, I/O error) is not lost: the writer
//! holds its records in memory, in order, up to [`HELD_WRITES`] and
//! [`HELD_BYTES`], retries every [`RETRY_EVERY`], and says so once each way
//! ([`Writable`], published by `server/mod.rs`). Answers beyond the bound
//! are refused, other records dropped and counted.
//!
//! Damage is loud: before SQLite opens the file (SQLite takes a 0-byte file
//! for a new store and silently ignores a damaged WAL), the header, the size
//! and the WAL's checksums are checked, then `PRAGMA quick_check`; the
//! marker `halite.db.state` beside it says a store existed (so a missing or
//! emptied one is refused) and whether the last stop was clean (then no WAL
//! is left: it is checkpointed into halite.db at the stop).
//! Keys do not travel through the queue: the writer reads the key store's
//! dirty set after every batch (`keys.rs` says how, and what a crash
//! loses), so the link loop only ever sends a wake-up, and only when that
//! set stops being empty.
//!
//! Reading ([`Reader`]) opens the file read-only, so `jobs` works whether
//! the master runs or not. The schema is versioned with
//! `PRAGMA user_version` and migrated forward in one transaction when the
//! master opens it (v1: jobs; v2: keys; v3: the last facts of each agent,
//! which `check` renders templates with; v4: jobs indexed by the master's
//! clock; v5: API tokens and the audit log; v6:
//! remediation receipts, `receipts.rs`); a file with a newer version is
//! refused, by the master and by `jobs`, rather than misread. The file is
//! in WAL mode so readers never block the writer.
//!
//! With `store: postgres://…` ([`Store::open_postgres`]) the records (jobs,
//! results, facts, and agents' events) take a second queue of the same
//! [`Write`]s to PostgreSQL's writer (`store/postgres.rs`), which spools
//! them locally while PostgreSQL is unreachable (`store/spool.rs`);
//! halite.db and this writer keep the keys. Reading either goes through
//! `store/records.rs`.

use halite_proto::event::now_us;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use halite_proto::StateResult;
use halite_state::report::{AgentReport, Answer, OutcomeKind, Report, StateReport};
use rusqlite::{Connection, OpenFlags, OptionalExtension, params};
use serde::Serialize;
use tokio::sync::{mpsc, oneshot};

pub mod postgres;
pub mod prime;
pub mod records;
pub mod spool;

/// Writes waiting for the writer thread. When full, job paths wait; late
/// answers are dropped and counted (see the module docs).
pub const STORE_QUEUE: usize = 4096;

/// The schema this build reads and writes: the number of [`MIGRATIONS`].
#[allow(clippy::cast_possible_truncation, clippy::cast_possible_wrap)]
pub const SCHEMA_VERSION: i32 = MIGRATIONS.len() as i32;

/// The store's file in a data dir.
pub fn path(data_dir: &Path) -> PathBuf {
    data_dir.join("halite.db")
}

/// `MIGRATIONS[n]` takes the schema from version n to n + 1. Append only:
/// a released step never changes.
const MIGRATIONS: [&str; 7] =
    [V1_JOBS, V2_KEYS, V3_FACTS, V4_JOBS_BY_TIME, V5_ACCESS, V6_RECEIPTS, V7_RECEIPTS_BY_TIME];

const V1_JOBS: &str = "
CREATE TABLE jobs (
    jid         TEXT PRIMARY KEY,   -- a ULID: sorts by creation
    created_us  INTEGER NOT NULL,   -- microseconds since the Unix epoch
    cause       TEXT NOT NULL,      -- operator:<command line> | event:<id> | connected | …
    reactor     TEXT,               -- the reactor that started it, if one did
    target      TEXT NOT NULL,      -- the target expression, or the agent
    states      TEXT NOT NULL,      -- JSON list of state ids
    test        INTEGER NOT NULL
);
CREATE TABLE job_agents (
    jid         TEXT NOT NULL,
    agent       TEXT NOT NULL,
    status      TEXT NOT NULL,      -- waiting | answered | no_answer
    error       TEXT,               -- why there is no answer
    finished_us INTEGER,
    PRIMARY KEY (jid, agent)
);
CREATE TABLE job_results (
    jid         TEXT NOT NULL,
    agent       TEXT NOT NULL,
    seq         INTEGER NOT NULL,   -- the state's place in the job
    state       TEXT NOT NULL,
    kind        TEXT NOT NULL,
    outcome     TEXT NOT NULL,      -- unchanged | changed | would_change | failed
    changes     TEXT NOT NULL,      -- JSON list of lines
    error       TEXT,
    diff        TEXT,
    duration_us INTEGER NOT NULL,
    PRIMARY KEY (jid, agent, seq)
);
";

const V3_FACTS: &str = "
CREATE TABLE agent_facts (
    agent   TEXT PRIMARY KEY,
    facts   TEXT NOT NULL,      -- JSON, as the agent last sent them in its hello
    seen_us INTEGER NOT NULL
);
";

const V2_KEYS: &str = "
CREATE TABLE keys (
    id      TEXT NOT NULL,      -- the agent id the key presented
    key     TEXT NOT NULL,      -- the public key, 64 hex digits: its fingerprint
    status  TEXT NOT NULL,      -- pending | accepted | rejected
    since   INTEGER NOT NULL,   -- seconds since the Unix epoch when first seen
    PRIMARY KEY (id, key)
);
";

/// History is listed and retained by the master's own clock. `IF NOT
/// EXISTS`: builds whose `SCHEMA_VERSION` said 3 while this step existed
/// wrote version 3 with the index made; migrating such a file runs it again.
const V4_JOBS_BY_TIME: &str = "
CREATE INDEX IF NOT EXISTS jobs_by_time ON jobs (created_us, jid);
";

/// API tokens (`server/access.rs`) and the hash-chained audit log
/// (`server/audit.rs`). The triggers make the log append-only for every
/// writer that goes through SQLite; what edits the file itself is caught by
/// the chain (`halite-master audit --verify`).
pub(crate) const V5_ACCESS: &str = "
CREATE TABLE api_tokens (
    name       TEXT PRIMARY KEY,
    role       TEXT NOT NULL,
    hash       TEXT NOT NULL UNIQUE,  -- sha256 of the token, hex: the token itself is never stored
    created_us INTEGER NOT NULL
);
CREATE TABLE audit (
    seq     INTEGER PRIMARY KEY,      -- 1, 2, 3, … with no gaps
    at_us   INTEGER NOT NULL,
    who     TEXT NOT NULL,            -- token:<name> | local:<user>
    what    TEXT NOT NULL,            -- the verb and the action (apply, keys accept, …)
    target  TEXT NOT NULL,
    cause   TEXT NOT NULL,            -- the API path or the command line
    result  TEXT NOT NULL,            -- ok | refused: … | failed: …
    prev    TEXT NOT NULL,            -- the previous row's hash (64 zeros for the first)
    hash    TEXT NOT NULL             -- sha256 of prev and this row's fields
);
CREATE TRIGGER audit_append_only_update BEFORE UPDATE ON audit
    BEGIN SELECT RAISE(ABORT, 'the audit log is append-only'); END;
CREATE TRIGGER audit_append_only_delete BEFORE DELETE ON audit
    BEGIN SELECT RAISE(ABORT, 'the audit log is append-only'); END;
";

/// Remediation receipts (`receipts.rs`): one row per file a job changed.
const V6_RECEIPTS: &str = "
CREATE TABLE receipts (
    jid         TEXT NOT NULL,
    agent       TEXT NOT NULL,
    state       TEXT NOT NULL,
    path        TEXT NOT NULL,
    kind        TEXT NOT NULL,      -- corrective | intentional
    cause       TEXT NOT NULL,      -- the job's cause
    cause_event TEXT,               -- the event's id, when one caused it
    hash_before TEXT,
    hash_after  TEXT,
    latency_us  INTEGER,            -- drift event to result at the master
    at_us       INTEGER NOT NULL,   -- the result's arrival
    PRIMARY KEY (jid, agent, state)
);
CREATE INDEX receipts_by_agent ON receipts (agent, at_us);
";

/// The dashboard's last hour reads receipts by time alone
/// (`receipts::Query::restores_since`).
const V7_RECEIPTS_BY_TIME: &str = "
CREATE INDEX IF NOT EXISTS receipts_by_time ON receipts (at_us);
";

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("the master's store {path}: {source}")]
    Sqlite { path: PathBuf, source: rusqlite::Error },
    #[error("the master's store {path}: {source}")]
    Io { path: PathBuf, source: std::io::Error },
    #[error(
        "the master's store {path} has schema version {found}, newer than this halite's {SCHEMA_VERSION} (a newer halite-master wrote it); run that newer halite-master, or restore the file from a backup"
    )]
    TooNew { path: PathBuf, found: i32 },
    #[error("no job store at {path}: the master has not run with this data dir (pass --data-dir or --config)")]
    Missing { path: PathBuf },
    #[error(
        "the master's store {path} is {what}, yet {marker} says this data dir had one; refusing to start with every key and job forgotten. Restore it: copy a file made by `halite-master backup FILE` to {path} (and remove {path}-wal if present); or, to start with an empty store, remove {marker}"
    )]
    Gone { path: PathBuf, marker: PathBuf, what: &'static str },
    #[error(
        "the master's store file {path} is damaged ({what}); refusing to start on it. Restore the store: stop here, copy a file made by `halite-master backup FILE` to {store} and remove {store}-wal; keep the damaged files aside for inspection"
    )]
    Damaged { path: PathBuf, store: PathBuf, what: String },
    #[error("cannot back up the master's store {path} to {to}: {source}")]
    Backup { path: PathBuf, to: PathBuf, source: rusqlite::Error },
    #[error(transparent)]
    Postgres(#[from] postgres::PgError),
    #[error(
        "the master's records are in PostgreSQL ({target}): back them up with `pg_dump` (for example `pg_dump -Fc -f halite.dump DBNAME`); `halite-master backup` copies only the local halite.db (keys), which this made at {to}"
    )]
    BackupPostgres { target: String, to: PathBuf },
}

/// Why a job ran and what it was for: a row of `jobs`.
#[derive(Debug, Clone, PartialEq, Serialize, serde::Deserialize)]
pub struct JobRecord {
    pub jid: String,
    pub created_us: i64,
    pub cause: String,
    pub reactor: Option<String>,
    pub target: String,
    pub states: Vec<String>,
    pub test: bool,
}

#[derive(Debug)]
enum Write {
    Started {
        job: JobRecord,
        agent: String,
    },
    Answered {
        jid: String,
        agent: String,
        results: Vec<StateResult>,
        /// Told `true` once the answer is committed, `false` when it was
        /// refused (the store holds all it may); the agent's ack waits
        /// for it.
        committed: Option<oneshot::Sender<bool>>,
    },
    NoAnswer {
        jid: String,
        agent: String,
        error: String,
    },
    /// What a job changed (`receipts.rs`).
    Receipts(Vec<crate::server::receipts::Receipt>),
    /// An agent's facts, from its hello: the last ones are kept.
    Facts {
        agent: String,
        facts: serde_json::Value,
    },
    /// Agents' events, recorded by the PostgreSQL store only (with SQLite
    /// the seen-ids log keeps their ids: `sessions.rs`); told `true` once
    /// durable (in PostgreSQL or its spool), and only then acknowledged.
    Events {
        events: Vec<spool::EventRow>,
        durable: oneshot::Sender<postgres::Recorded>,
    },
    /// Answers once everything queued before it is committed, keys too.
    Flush(oneshot::Sender<()>),
    /// Runs on the writer's connection once; what it returns is persisted
    /// after every batch from then on.
    Attach(AttachFn),
    /// Something attached has changes to persist.
    Wake,
    /// Answers once every change made before it to what is attached is
    /// committed.
    Commit(oneshot::Sender<Result<(), String>>),
    /// Applies the retention limits now.
    Retain(Retention),
    /// Commits what it can, checkpoints the WAL into halite.db, notes a
    /// clean stop in the marker, and ends the writer (a clean shutdown).
    Close(oneshot::Sender<()>),
}

/// How much job history the store keeps (master.yaml `store:`); applied at
/// start and every [`RETENTION_INTERVAL`]. The oldest jobs go first.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Retention {
    /// Jobs older than this are deleted, with their results.
    pub max_age: std::time::Duration,
    /// Then the oldest jobs are deleted until the rows take at most this
    /// many bytes of halite.db (pages in use; freed pages are reused, so
    /// the file stays about this size).
    pub max_bytes: u64,
}

/// How often the retention limits are applied while the master runs.
pub const RETENTION_INTERVAL: std::time::Duration = std::time::Duration::from_secs(600);

/// Job records the writer holds in memory when the disk refuses them
/// (full, or an I/O error), retried in order every [`RETRY_EVERY`]. While
/// this many are held, further answers are refused (their agents are not
/// acknowledged and keep them) and other records are dropped and counted.
pub const HELD_WRITES: usize = 4096;
/// Bytes of results (diffs, changes) held at most, likewise.
pub const HELD_BYTES: usize = 64 * 1024 * 1024;
/// How often the writer retries what the disk refused.
pub const RETRY_EVERY: std::time::Duration = std::time::Duration::from_millis(500);

/// Whether the disk takes the store's writes: told to `server/mod.rs`,
/// which publishes `halite/master/store/unwritable` and `.../writable`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Writable {
    Yes,
    /// The last error, and how many records are held.
    No {
        error: String,
        held: usize,
    },
}

/// What the writer keeps on disk beside the job records, persisted after
/// every batch in a transaction of its own: the key table (`keys.rs`), which
/// owns its SQL; the store only says when.
pub trait Persisted: Send {
    /// Writes what changed since the last call. On failure the changes are
    /// kept for the next call; the text says what failed.
    fn persist(&mut self, connection: &mut Connection) -> Result<(), String>;
}

/// A loader run on the writer thread (given the connection and the store's
/// path), returning what to persist from then on.
type Attach = Box<dyn FnOnce(&mut Connection, &Path) -> Option<Box<dyn Persisted>> + Send>;

struct AttachFn(Attach);

impl std::fmt::Debug for AttachFn {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Attach")
    }
}

/// The handle through which the master records jobs and keys. Cloning is
/// cheap.
#[derive(Debug, Clone)]
pub struct Store {
    queue: mpsc::Sender<Write>,
    /// The PostgreSQL writer's queue when the records (jobs, results,
    /// facts, events) go there (`store/postgres.rs`); `None`: they go to
    /// `queue`, into halite.db. Keys always go through `queue`.
    records: Option<mpsc::Sender<Write>>,
    /// Where that PostgreSQL store is.
    postgres: Option<postgres::PgTarget>,
    /// Whether the records reach it, as its writer last found.
    postgres_state: Option<tokio::sync::watch::Receiver<postgres::PgState>>,
    dropped: Arc<AtomicU64>,
    path: PathBuf,
    /// Whether the disk takes writes, as the writer last found.
    writable: tokio::sync::watch::Receiver<Writable>,
    /// The PostgreSQL fence's notices ([`Store::take_fenced`]), until taken.
    fenced: Arc<std::sync::Mutex<Option<mpsc::Receiver<postgres::Fenced>>>>,
    /// This master's name among several, which the PostgreSQL writer
    /// records job answers under ([`Store::name_master`]).
    master_name: Arc<std::sync::OnceLock<String>>,
}

impl Store {
    /// Opens (creating or migrating) the store and starts its writer thread.
    /// Blocking: call it from `spawn_blocking` or before the runtime.
    pub fn open(path: &Path) -> Result<Store, StoreError> {
        let connection = open_for_writing(path)?;
        let (queue, inbox) = mpsc::channel(STORE_QUEUE);
        let (tell, writable) = tokio::sync::watch::channel(Writable::Yes);
        let dropped = Arc::new(AtomicU64::new(0));
        let path_for_error = path.to_path_buf();
        let mut writer = Writer {
            connection,
            path: path.to_path_buf(),
            tell,
            dropped: dropped.clone(),
            held: Vec::new(),
            held_bytes: 0,
        };
        std::thread::Builder::new()
            .name("halite-store".into())
            .spawn(move || writer.run(inbox))
            .map_err(|source| StoreError::Io { path: path_for_error.clone(), source })?;
        Ok(Store {
            queue,
            records: None,
            postgres: None,
            postgres_state: None,
            dropped,
            path: path_for_error,
            writable,
            fenced: Arc::default(),
            master_name: Arc::default(),
        })
    }

    /// Opens halite.db at `path` for the keys (as [`Store::open`]) and
    /// sends the records to PostgreSQL, spooling them in `spool` while it
    /// is unreachable. Connects and migrates first: a database that refuses
    /// (password, schema) is an error; one that does not answer is waited
    /// for, spooling meanwhile (`store/postgres.rs`). Blocking.
    pub fn open_postgres(path: &Path, target: postgres::PgTarget, spool: &Path) -> Result<Store, StoreError> {
        let mut store = Store::open(path)?;
        let (records, inbox) = mpsc::channel(STORE_QUEUE);
        let (state, fenced) = postgres::start_writer(target.clone(), spool, inbox, store.master_name.clone())?;
        store.fenced = Arc::new(std::sync::Mutex::new(Some(fenced)));
        store.records = Some(records);
        store.postgres = Some(target);
        store.postgres_state = Some(state);
        Ok(store)
    }

    /// Whether the records reach PostgreSQL (`None` on SQLite); changes as
    /// its writer finds out.
    pub fn postgres_state(&self) -> Option<tokio::sync::watch::Receiver<postgres::PgState>> {
        self.postgres_state.clone()
    }

    /// The PostgreSQL store the records go to, if they do.
    pub fn postgres(&self) -> Option<&postgres::PgTarget> {
        self.postgres.as_ref()
    }

    /// Where jobs, results, facts and events are queued.
    fn records_queue(&self) -> &mpsc::Sender<Write> {
        self.records.as_ref().unwrap_or(&self.queue)
    }

    /// Whether agents' events are recorded here (PostgreSQL) before they
    /// are acknowledged; with SQLite, the seen-ids log keeps their ids.
    pub fn records_events(&self) -> bool {
        self.records.is_some()
    }

    /// Records agents' events; `true` once they are durable (committed to
    /// PostgreSQL, or fsynced to the local spool while it is unreachable).
    /// Waits for room in the queue. `false` without PostgreSQL, or when
    /// they were refused (the spool's disk refuses).
    pub async fn events_durably(&self, events: Vec<spool::EventRow>) -> bool {
        self.record_events(events).await.durable
    }

    /// As [`Store::events_durably`], also saying which agents' rows the
    /// fence refused (a stale session epoch: `postgres.rs`); those are not
    /// recorded.
    pub async fn record_events(&self, events: Vec<spool::EventRow>) -> postgres::Recorded {
        let Some(records) = &self.records else { return postgres::Recorded::default() };
        let (durable, wait) = oneshot::channel();
        if records.send(Write::Events { events, durable }).await.is_err() {
            return postgres::Recorded::default();
        }
        wait.await.unwrap_or_default()
    }

    /// Names this master among several (set once, when the cluster
    /// starts): the job answers it records in PostgreSQL carry it, for
    /// the other masters' fleet tails.
    pub fn name_master(&self, name: &str) {
        let _ = self.master_name.set(name.to_owned());
    }

    /// The notices of sessions the PostgreSQL store's fence refused rows
    /// of (its batches and its drained spool), for the one task that drops
    /// those sessions; `None` on SQLite or once taken.
    pub fn take_fenced(&self) -> Option<mpsc::Receiver<postgres::Fenced>> {
        self.fenced.lock().unwrap_or_else(|p| p.into_inner()).take()
    }

    /// Whether the disk takes the store's writes; changes as the writer
    /// finds out.
    pub fn writable(&self) -> tokio::sync::watch::Receiver<Writable> {
        self.writable.clone()
    }

    /// Records an agent's answer from where waiting is not possible (the
    /// link loop); the receiver says `true` once it is committed, `false`
    /// when the store refused it (its queue or what it holds in memory is
    /// full). The agent is acknowledged only on `true`.
    pub fn answered_durably(&self, jid: &str, agent: &str, results: Vec<StateResult>) -> oneshot::Receiver<bool> {
        let (committed, wait) = oneshot::channel();
        let write =
            Write::Answered { jid: jid.to_owned(), agent: agent.to_owned(), results, committed: Some(committed) };
        if let Err(error) = self.records_queue().try_send(write) {
            let dropped = self.dropped.fetch_add(1, Ordering::Relaxed) + 1;
            tracing::warn!(
                agent,
                job = jid,
                dropped,
                "The job store's queue is full; a result is not acknowledged (the agent keeps it)."
            );
            if let Write::Answered { committed: Some(committed), .. } = error.into_inner() {
                let _ = committed.send(false);
            }
        }
        wait
    }

    /// Applies the retention limits now (returns at once).
    pub fn retain(&self, retention: Retention) {
        let _ = self.records_queue().try_send(Write::Retain(retention));
    }

    /// A clean stop: commits, checkpoints the WAL into halite.db (one
    /// self-contained file remains) and ends the writer.
    pub async fn close(&self) {
        if let Some(records) = &self.records {
            let (done, wait) = oneshot::channel();
            if records.send(Write::Close(done)).await.is_ok() {
                let _ = wait.await;
            }
        }
        let (done, wait) = oneshot::channel();
        if self.queue.send(Write::Close(done)).await.is_ok() {
            let _ = wait.await;
        }
    }

    /// A consistent copy of the store in `to` (SQLite's online backup),
    /// while the master writes. Blocking.
    pub fn backup(&self, to: &Path) -> Result<(), StoreError> {
        backup(&self.path, to)?;
        match &self.postgres {
            Some(target) => Err(StoreError::BackupPostgres { target: target.to_string(), to: to.to_path_buf() }),
            None => Ok(()),
        }
    }

    /// The store's file, for messages.
    pub fn file(&self) -> &Path {
        &self.path
    }

    /// Runs `open` on the writer thread with its connection, and from then
    /// on persists what it returns after every batch. `None` when the
    /// writer has stopped.
    pub(crate) async fn attach<T: Send + 'static>(
        &self,
        open: impl FnOnce(&mut Connection, &Path) -> (T, Option<Box<dyn Persisted>>) + Send + 'static,
    ) -> Option<T> {
        let (reply, answer) = oneshot::channel();
        let attach: Attach = Box::new(move |connection, path| {
            let (value, persisted) = open(connection, path);
            let _ = reply.send(value);
            persisted
        });
        self.queue.send(Write::Attach(AttachFn(attach))).await.ok()?;
        answer.await.ok()
    }

    /// Tells the writer that something attached has changes. Never waits:
    /// when the queue is full the writer is busy, and it persists after
    /// every batch anyway.
    pub(crate) fn wake(&self) {
        if let Err(mpsc::error::TrySendError::Closed(_)) = self.queue.try_send(Write::Wake) {
            tracing::error!(path = %self.path.display(), "The store's writer has stopped; changes are not saved.");
        }
    }

    /// Returns once every change made before it to what is attached is
    /// committed, or why not.
    pub(crate) async fn commit(&self) -> Result<(), String> {
        let (done, wait) = oneshot::channel();
        let stopped = || "the store's writer has stopped".to_owned();
        self.queue.send(Write::Commit(done)).await.map_err(|_| stopped())?;
        wait.await.map_err(|_| stopped())?
    }

    /// A job was sent to `agent`.
    pub async fn started(&self, job: JobRecord, agent: &str) {
        self.send(Write::Started { job, agent: agent.to_owned() }).await;
    }

    /// `agent` answered the job.
    pub async fn answered(&self, jid: &str, agent: &str, results: Vec<StateResult>) {
        self.send(Write::Answered { jid: jid.to_owned(), agent: agent.to_owned(), results, committed: None }).await;
    }

    /// `agent` did not answer the job (timeout, not connected).
    pub async fn no_answer(&self, jid: &str, agent: &str, error: &str) {
        self.send(Write::NoAnswer { jid: jid.to_owned(), agent: agent.to_owned(), error: error.to_owned() }).await;
    }

    /// Answers refused and records dropped (a full queue, or a refusing
    /// disk while the store holds all it may), since start.
    pub fn dropped(&self) -> u64 {
        self.dropped.load(Ordering::Relaxed)
    }

    /// Returns once every write queued before is committed.
    pub async fn flush(&self) {
        if let Some(records) = &self.records {
            let (done, wait) = oneshot::channel();
            if records.send(Write::Flush(done)).await.is_ok() {
                let _ = wait.await;
            }
        }
        let (done, wait) = oneshot::channel();
        if self.queue.send(Write::Flush(done)).await.is_ok() {
            let _ = wait.await;
        }
    }

    /// Keeps receipts (in PostgreSQL when the records go there, spooled
    /// with them). From the link loop, which cannot wait: dropped and
    /// counted when the queue is full (the job's results are stored).
    pub fn receipts(&self, receipts: Vec<crate::server::receipts::Receipt>) {
        if receipts.is_empty() {
            return;
        }
        if self.records_queue().try_send(Write::Receipts(receipts)).is_err() {
            let dropped = self.dropped.fetch_add(1, Ordering::Relaxed) + 1;
            tracing::warn!(dropped, "The job store's queue is full; receipts were not kept.");
        }
    }

    /// Keeps `agent`'s facts (for `check`). From the link loop, which
    /// cannot wait: dropped when the queue is full (the next hello
    /// brings them again).
    pub fn facts_seen(&self, agent: &str, facts: serde_json::Value) {
        if self.records_queue().try_send(Write::Facts { agent: agent.to_owned(), facts }).is_err() {
            tracing::debug!(agent, "The store is busy; the agent's facts were not kept this time.");
        }
    }

    async fn send(&self, write: Write) {
        if self.records_queue().send(write).await.is_err() {
            tracing::error!("The job store's writer has stopped; a job record was lost.");
        }
    }
}

fn sqlite(path: &Path) -> impl Fn(rusqlite::Error) -> StoreError + '_ {
    move |source| StoreError::Sqlite { path: path.to_path_buf(), source }
}

/// The marker beside the store: it says a store existed in this data dir
/// (so a missing or emptied halite.db is refused, not taken for a new one)
/// and whether the master stopped cleanly (then the WAL was checkpointed
/// into halite.db, and none is expected).
pub fn marker(path: &Path) -> PathBuf {
    let mut name = path.file_name().unwrap_or_default().to_os_string();
    name.push(".state");
    path.with_file_name(name)
}

/// The marker's two states.
const RUNNING: &str = "running\n";
const CLEAN: &str = "clean\n";

fn write_marker(path: &Path, state: &str) -> Result<(), StoreError> {
    let marker = marker(path);
    halite_fs::write_atomic(&marker, state.as_bytes(), 0o600)
        .map_err(|e| StoreError::Io { path: marker.clone(), source: std::io::Error::other(e) })
}

/// The store's WAL file.
pub fn wal(path: &Path) -> PathBuf {
    let mut name = path.file_name().unwrap_or_default().to_os_string();
    name.push("-wal");
    path.with_file_name(name)
}

/// What the files say before SQLite opens them: SQLite itself takes a
/// 0-byte file for a new store and silently ignores a damaged or missing
/// WAL, losing what was in it.
fn check_files(path: &Path) -> Result<(), StoreError> {
    let marker_path = marker(path);
    let marker = match std::fs::read_to_string(&marker_path) {
        Ok(text) => Some(text),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
        Err(source) => return Err(StoreError::Io { path: marker_path, source }),
    };
    let io = |source| StoreError::Io { path: path.to_path_buf(), source };
    let length = match std::fs::metadata(path) {
        Ok(meta) => meta.len(),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            if marker.is_some() {
                return Err(StoreError::Gone { path: path.to_path_buf(), marker: marker_path, what: "missing" });
            }
            return Ok(());
        }
        Err(source) => return Err(io(source)),
    };
    if length == 0 {
        if marker.is_some() {
            return Err(StoreError::Gone { path: path.to_path_buf(), marker: marker_path, what: "empty" });
        }
        return Ok(());
    }
    let damaged = |what: String| StoreError::Damaged { path: path.to_path_buf(), store: path.to_path_buf(), what };
    let mut header = [0u8; 100];
    {
        use std::io::Read as _;
        let mut file = std::fs::File::open(path).map_err(io)?;
        let read = file.read(&mut header).map_err(io)?;
        if read < header.len() {
            return Err(damaged(format!("{length} bytes, shorter than its header")));
        }
    }
    if &header[..16] != b"SQLite format 3\0" {
        let what = if header.iter().all(|b| *b == 0) { "its header is zeroed" } else { "not an SQLite header" };
        return Err(damaged(what.to_owned()));
    }
    let page_size = match u16::from_be_bytes([header[16], header[17]]) {
        1 => 65_536,
        size => u64::from(size),
    };
    if !page_size.is_power_of_two() || page_size < 512 {
        return Err(damaged(format!("page size {page_size} in its header")));
    }
    if !length.is_multiple_of(page_size) {
        return Err(damaged(format!("{length} bytes, not a whole number of {page_size}-byte pages: cut short")));
    }
    // The page count in the header is valid when its version number matches
    // the change counter.
    let pages = u64::from(u32::from_be_bytes(header[28..32].try_into().unwrap_or_default()));
    if header[92..96] == header[24..28] && pages * page_size > length {
        return Err(damaged(format!("{length} bytes where its header says {pages} pages of {page_size}: cut short")));
    }
    let wal_path = wal(path);
    match std::fs::read(&wal_path) {
        Ok(bytes) => check_wal(&bytes).map_err(|what| StoreError::Damaged {
            path: wal_path.clone(),
            store: path.to_path_buf(),
            what,
        })?,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            if marker.as_deref() == Some(RUNNING) {
                return Err(StoreError::Damaged {
                    path: wal_path,
                    store: path.to_path_buf(),
                    what: "missing after a master that did not stop cleanly: what it held is lost".into(),
                });
            }
        }
        Err(source) => return Err(StoreError::Io { path: wal_path, source }),
    }
    Ok(())
}

/// Checks a WAL file as SQLite would read it (header, salts, checksums),
/// but says what is wrong instead of ignoring the rest. Frames of an older
/// generation (other salts) after the current ones are what SQLite skips
/// too, and fine.
fn check_wal(bytes: &[u8]) -> Result<(), String> {
    if bytes.is_empty() {
        return Ok(());
    }
    let word = |at: usize| u32::from_be_bytes(bytes[at..at + 4].try_into().unwrap_or_default());
    if bytes.len() < 32 {
        return Err(format!("{} bytes, shorter than a WAL header", bytes.len()));
    }
    let magic = word(0);
    if magic != 0x377f_0682 && magic != 0x377f_0683 {
        let what = if bytes.iter().all(|b| *b == 0) { "zeroed" } else { "not a WAL header" };
        return Err(what.into());
    }
    let big_endian = magic & 1 == 1;
    let checksum = |data: &[u8], mut s: (u32, u32)| {
        for pair in data.chunks_exact(8) {
            let read = |b: &[u8]| {
                let b: [u8; 4] = b.try_into().unwrap_or_default();
                if big_endian { u32::from_be_bytes(b) } else { u32::from_le_bytes(b) }
            };
            s.0 = s.0.wrapping_add(read(&pair[..4])).wrapping_add(s.1);
            s.1 = s.1.wrapping_add(read(&pair[4..])).wrapping_add(s.0);
        }
        s
    };
    let header_sum = checksum(&bytes[..24], (0, 0));
    if header_sum != (word(24), word(28)) {
        return Err("its header's checksum does not match".into());
    }
    let page_size = usize::try_from(word(8)).unwrap_or(0);
    if !page_size.is_power_of_two() || !(512..=65_536).contains(&page_size) {
        return Err(format!("page size {page_size} in its header"));
    }
    let frame = 24 + page_size;
    let frames = &bytes[32..];
    // SQLite appends a frame in two writes, its 24-byte header then its
    // page: a master killed between them leaves one frame header at the
    // end. That frame's transaction never committed (nothing acknowledged
    // hangs on it) and SQLite ignores it. A file cut anywhere else is
    // damage.
    let torn = frames.len() % frame;
    if torn != 0 && torn != 24 {
        return Err(format!("{} bytes, ending in a partial frame: cut short", bytes.len()));
    }
    let frames = &frames[..frames.len() - torn];
    let salts = (word(16), word(20));
    let mut sum = header_sum;
    for (n, chunk) in frames.chunks_exact(frame).enumerate() {
        let at = |i: usize| u32::from_be_bytes(chunk[i..i + 4].try_into().unwrap_or_default());
        if (at(8), at(12)) != salts {
            break;
        }
        sum = checksum(&chunk[24..], checksum(&chunk[..8], sum));
        if sum != (at(16), at(20)) {
            return Err(format!("frame {} of {}: its checksum does not match", n + 1, frames.len() / frame));
        }
    }
    Ok(())
}

fn open_for_writing(path: &Path) -> Result<Connection, StoreError> {
    // SQLite's own word for damage, wherever opening meets it, is damage.
    open_checked(path).map_err(|error| match error {
        StoreError::Sqlite { path, source }
            if matches!(
                source.sqlite_error_code(),
                Some(rusqlite::ErrorCode::DatabaseCorrupt | rusqlite::ErrorCode::NotADatabase)
            ) =>
        {
            StoreError::Damaged { store: path.clone(), path, what: source.to_string() }
        }
        error => error,
    })
}

fn open_checked(path: &Path) -> Result<Connection, StoreError> {
    check_files(path)?;
    // Diffs may hold secrets: owner-only, like the keys beside it. SQLite
    // gives its -wal and -shm files the same mode.
    std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .mode(0o600)
        .open(path)
        .and_then(|_| std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600)))
        .map_err(|source| StoreError::Io { path: path.to_path_buf(), source })?;
    let connection = Connection::open(path).map_err(sqlite(path))?;
    connection
        .execute_batch("PRAGMA journal_mode = WAL; PRAGMA synchronous = NORMAL; PRAGMA busy_timeout = 5000;")
        .map_err(sqlite(path))?;
    let damaged = |what: String| StoreError::Damaged { path: path.to_path_buf(), store: path.to_path_buf(), what };
    let check: String = connection
        .query_row("PRAGMA quick_check(1)", [], |row| row.get(0))
        .map_err(|e| damaged(format!("quick_check: {e}")))?;
    if check != "ok" {
        return Err(damaged(format!("quick_check: {check}")));
    }
    // What an earlier run left in the WAL goes into halite.db now.
    connection
        .query_row("PRAGMA wal_checkpoint(TRUNCATE)", [], |_| Ok(()))
        .map_err(|e| damaged(format!("checkpoint: {e}")))?;
    write_marker(path, RUNNING)?;
    migrate(&connection, path)?;
    Ok(connection)
}

/// A consistent copy of the store at `path` in `to`, made with SQLite's
/// online backup while the master may be writing.
fn backup(path: &Path, to: &Path) -> Result<(), StoreError> {
    let err = |source| StoreError::Backup { path: path.to_path_buf(), to: to.to_path_buf(), source };
    let source = Connection::open_with_flags(path, OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX)
        .map_err(err)?;
    source.busy_timeout(std::time::Duration::from_secs(5)).map_err(err)?;
    // Owner-only, like the store: it holds diffs and keys.
    std::fs::OpenOptions::new()
        .create(true)
        .truncate(true)
        .write(true)
        .mode(0o600)
        .open(to)
        .map_err(|source| StoreError::Io { path: to.to_path_buf(), source })?;
    let mut destination = Connection::open(to).map_err(err)?;
    {
        let backup = rusqlite::backup::Backup::new(&source, &mut destination).map_err(err)?;
        backup.run_to_completion(256, std::time::Duration::ZERO, None).map_err(err)?;
    }
    // One self-contained file: no WAL beside the copy.
    destination.execute_batch("PRAGMA journal_mode = DELETE;").map_err(err)?;
    Ok(())
}

fn migrate(connection: &Connection, path: &Path) -> Result<(), StoreError> {
    let version = |connection: &Connection| -> Result<i32, StoreError> {
        connection.query_row("PRAGMA user_version", [], |row| row.get(0)).map_err(sqlite(path))
    };
    if version(connection)? == SCHEMA_VERSION {
        return Ok(());
    }
    // IMMEDIATE: a second master opening the same file waits, then sees
    // the version this one wrote.
    connection.execute_batch("BEGIN IMMEDIATE;").map_err(sqlite(path))?;
    let result = (|| {
        let found = version(connection)?;
        let from = usize::try_from(found).ok().filter(|&v| v <= MIGRATIONS.len());
        let Some(from) = from else {
            return Err(StoreError::TooNew { path: path.to_path_buf(), found });
        };
        for step in &MIGRATIONS[from..] {
            connection.execute_batch(step).map_err(sqlite(path))?;
        }
        connection.execute_batch(&format!("PRAGMA user_version = {SCHEMA_VERSION};")).map_err(sqlite(path))?;
        if found > 0 {
            tracing::info!(path = %path.display(), from = found, to = SCHEMA_VERSION, "Migrated the master's store.");
        }
        Ok(())
    })();
    let end = if result.is_ok() { "COMMIT;" } else { "ROLLBACK;" };
    connection.execute_batch(end).map_err(sqlite(path))?;
    result
}

/// The writer thread: everything queued at once goes in one transaction;
/// then what is attached (the keys), in transactions of their own (so a
/// failure of either loses nothing of the other), with `synchronous = FULL`
/// (a key decision survives a power cut once committed).
///
/// A transaction the disk refuses (full, I/O error) is not lost: its
/// records stay in `held`, in order, and are retried with everything after
/// them every [`RETRY_EVERY`]; the answers among them are acknowledged to
/// their agents only once committed. The state is told once each way.
struct Writer {
    connection: Connection,
    path: PathBuf,
    tell: tokio::sync::watch::Sender<Writable>,
    dropped: Arc<AtomicU64>,
    /// Job records not committed yet, oldest first.
    held: Vec<Write>,
    held_bytes: usize,
}

impl Writer {
    fn run(&mut self, mut inbox: mpsc::Receiver<Write>) {
        let runtime = match tokio::runtime::Builder::new_current_thread().enable_time().build() {
            Ok(runtime) => runtime,
            Err(error) => {
                tracing::error!(path = %self.path.display(), %error, "Cannot start the store's writer.");
                return;
            }
        };
        let mut attached: Vec<Box<dyn Persisted>> = Vec::new();
        loop {
            let first = if self.held.is_empty() {
                inbox.blocking_recv()
            } else {
                match runtime.block_on(async { tokio::time::timeout(RETRY_EVERY, inbox.recv()).await }) {
                    Ok(write) => write,
                    // Time to retry what is held.
                    Err(_) => Some(Write::Wake),
                }
            };
            let Some(first) = first else { break };
            let mut batch = vec![first];
            while let Ok(more) = inbox.try_recv() {
                batch.push(more);
            }
            let mut flushed = Vec::new();
            let mut committed = Vec::new();
            let mut attaching = Vec::new();
            let mut retain = None;
            let mut close = None;
            for write in batch {
                match write {
                    Write::Flush(done) => flushed.push(done),
                    Write::Commit(done) => committed.push(done),
                    Write::Attach(AttachFn(attach)) => attaching.push(attach),
                    Write::Wake => {}
                    Write::Retain(limits) => retain = Some(limits),
                    Write::Close(done) => close = Some(done),
                    write => self.hold(write),
                }
            }
            self.commit_held();
            for attach in attaching {
                attached.extend(attach(&mut self.connection, &self.path));
            }
            let _ = self.connection.execute_batch("PRAGMA synchronous = FULL;");
            let mut saved = Ok(());
            for persisted in &mut attached {
                if let Err(error) = persisted.persist(&mut self.connection) {
                    saved = Err(error);
                }
            }
            let _ = self.connection.execute_batch("PRAGMA synchronous = NORMAL;");
            for done in committed {
                let _ = done.send(saved.clone());
            }
            if let Some(limits) = retain
                && self.held.is_empty()
            {
                match retain_now(&self.connection, limits) {
                    Ok(0) => {}
                    Ok(deleted) => {
                        tracing::info!(path = %self.path.display(), deleted, "Deleted old jobs (store retention).")
                    }
                    Err(error) => {
                        tracing::warn!(path = %self.path.display(), %error, "Cannot apply the store's retention.")
                    }
                }
            }
            for done in flushed {
                let _ = done.send(());
            }
            if let Some(done) = close {
                self.close();
                let _ = done.send(());
                break;
            }
        }
    }

    /// Takes a job record into `held`, or refuses it when as much is held
    /// as allowed.
    fn hold(&mut self, write: Write) {
        let size = match &write {
            Write::Answered { results, .. } => {
                256 + results.iter().map(|r| r.diff.as_ref().map_or(0, String::len) + 128).sum::<usize>()
            }
            _ => 256,
        };
        if !self.held.is_empty() && (self.held.len() >= HELD_WRITES || self.held_bytes + size > HELD_BYTES) {
            let dropped = self.dropped.fetch_add(1, Ordering::Relaxed) + 1;
            match write {
                Write::Answered { committed: Some(committed), .. } => {
                    let _ = committed.send(false);
                }
                _ => {
                    if dropped.is_power_of_two() {
                        tracing::error!(path = %self.path.display(), dropped, "The job store holds all it may while the disk refuses writes; a job record was dropped.");
                    }
                }
            }
            return;
        }
        self.held_bytes += size;
        self.held.push(write);
    }

    /// Commits everything held in one transaction; on success tells the
    /// waiting answers, on a refusing disk keeps it all for the next try.
    fn commit_held(&mut self) {
        if self.held.is_empty() {
            return;
        }
        // An answer is acknowledged once committed: that commit survives a
        // power cut too (one fsync of the WAL per batch that holds one).
        let acknowledging = self.held.iter().any(|w| matches!(w, Write::Answered { committed: Some(_), .. }));
        if acknowledging {
            let _ = self.connection.execute_batch("PRAGMA synchronous = FULL;");
        }
        let held = &self.held;
        let result = self.connection.transaction().and_then(|tx| {
            for write in held {
                apply(&tx, write)?;
            }
            tx.commit()
        });
        if acknowledging {
            let _ = self.connection.execute_batch("PRAGMA synchronous = NORMAL;");
        }
        match result {
            Ok(()) => {
                let written = self.held.len();
                for write in self.held.drain(..) {
                    if let Write::Answered { committed: Some(committed), .. } = write {
                        let _ = committed.send(true);
                    }
                }
                self.held_bytes = 0;
                if *self.tell.borrow() != Writable::Yes {
                    tracing::warn!(path = %self.path.display(), written, "The job store is writable again; what it held is committed.");
                    self.tell.send_replace(Writable::Yes);
                }
            }
            Err(error) if refused_by_disk(&error) => {
                let held = self.held.len();
                // Said once: the state changes, not every retry.
                if *self.tell.borrow() == Writable::Yes {
                    tracing::error!(path = %self.path.display(), %error, held, "The job store cannot write; holding its records in memory and acknowledging no result until it can.");
                    self.tell.send_replace(Writable::No { error: error.to_string(), held });
                }
            }
            Err(error) => {
                // Not the disk: these records themselves fail, and would
                // fail again.
                tracing::error!(path = %self.path.display(), %error, records = self.held.len(), "Cannot write these job records; they are dropped.");
                for write in self.held.drain(..) {
                    if let Write::Answered { committed: Some(committed), .. } = write {
                        let _ = committed.send(false);
                    }
                }
                self.held_bytes = 0;
            }
        }
    }

    /// A clean stop: the WAL is checkpointed into halite.db and removed as
    /// the connection closes, and the marker says so.
    fn close(&mut self) {
        if !self.held.is_empty() {
            tracing::error!(path = %self.path.display(), held = self.held.len(), "Stopping with job records the disk refused; they are lost (their agents were not acknowledged).");
        }
        let checkpoint = self.connection.query_row("PRAGMA wal_checkpoint(TRUNCATE)", [], |row| row.get::<_, i64>(0));
        match checkpoint {
            Ok(0) => {
                let connection = std::mem::replace(&mut self.connection, Connection::open_in_memory().expect("memory"));
                if let Err((_, error)) = connection.close() {
                    tracing::warn!(path = %self.path.display(), %error, "Cannot close the store.");
                    return;
                }
                if let Err(error) = write_marker(&self.path, CLEAN) {
                    tracing::warn!(%error, "Cannot note the clean stop.");
                }
            }
            Ok(_) => {
                tracing::warn!(path = %self.path.display(), "The store's WAL could not be checkpointed (a reader held it); it stays beside halite.db.")
            }
            Err(error) => {
                tracing::warn!(path = %self.path.display(), %error, "Cannot checkpoint the store's WAL; it stays beside halite.db.")
            }
        }
    }
}

/// Errors of a disk that refuses writes (full, I/O, read-only), worth
/// retrying, as opposed to records that cannot be written at all.
fn refused_by_disk(error: &rusqlite::Error) -> bool {
    use rusqlite::ErrorCode;
    matches!(
        error.sqlite_error_code(),
        Some(
            ErrorCode::DiskFull
                | ErrorCode::SystemIoFailure
                | ErrorCode::ReadOnly
                | ErrorCode::CannotOpen
                | ErrorCode::DatabaseBusy
                | ErrorCode::DatabaseLocked
                | ErrorCode::OutOfMemory
        )
    )
}

/// Deletes jobs older than the limit, then the oldest until the rows fit
/// in `max_bytes`; returns how many jobs went.
fn retain_now(connection: &Connection, limits: Retention) -> rusqlite::Result<usize> {
    let cutoff = now_us().saturating_sub(i64::try_from(limits.max_age.as_micros()).unwrap_or(i64::MAX));
    let delete = |condition: &str, value: i64| -> rusqlite::Result<usize> {
        connection.execute_batch("CREATE TEMP TABLE IF NOT EXISTS doomed (jid TEXT PRIMARY KEY); BEGIN IMMEDIATE;")?;
        let result = (|| {
            connection.execute("DELETE FROM temp.doomed", [])?;
            connection.execute(&format!("INSERT INTO temp.doomed SELECT jid FROM jobs {condition}"), [value])?;
            connection.execute("DELETE FROM job_results WHERE jid IN (SELECT jid FROM temp.doomed)", [])?;
            connection.execute("DELETE FROM receipts WHERE jid IN (SELECT jid FROM temp.doomed)", [])?;
            connection.execute("DELETE FROM job_agents WHERE jid IN (SELECT jid FROM temp.doomed)", [])?;
            connection.execute("DELETE FROM jobs WHERE jid IN (SELECT jid FROM temp.doomed)", [])
        })();
        connection.execute_batch(if result.is_ok() { "COMMIT;" } else { "ROLLBACK;" })?;
        result
    };
    let mut deleted = delete("WHERE created_us < ?1", cutoff)?;
    loop {
        let used: i64 = connection.query_row(
            "SELECT (SELECT page_count FROM pragma_page_count()) - (SELECT freelist_count FROM pragma_freelist_count())",
            [],
            |row| row.get(0),
        )?;
        let page_size: i64 = connection.query_row("PRAGMA page_size", [], |row| row.get(0))?;
        if u64::try_from(used.saturating_mul(page_size)).unwrap_or(0) <= limits.max_bytes {
            return Ok(deleted);
        }
        let gone = delete("ORDER BY created_us, jid LIMIT ?1", 64)?;
        if gone == 0 {
            return Ok(deleted);
        }
        deleted += gone;
    }
}

/// Statements are prepared once per connection (`prepare_cached`): the
/// writer runs them for every job, and parsing SQL each time showed in the
/// master's profile of a drift.
fn apply(tx: &rusqlite::Transaction<'_>, write: &Write) -> rusqlite::Result<()> {
    match write {
        Write::Started { job, agent } => {
            tx.prepare_cached(
                "INSERT OR IGNORE INTO jobs (jid, created_us, cause, reactor, target, states, test)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
            )?
            .execute(params![
                job.jid,
                job.created_us,
                job.cause,
                job.reactor,
                job.target,
                serde_json::to_string(&job.states).unwrap_or_default(),
                job.test
            ])?;
            tx.prepare_cached("INSERT OR IGNORE INTO job_agents (jid, agent, status) VALUES (?1, ?2, 'waiting')")?
                .execute(params![job.jid, agent])?;
        }
        Write::Answered { jid, agent, results, .. } => {
            // A job the store never saw started (a record lost to an error).
            tx.prepare_cached(
                "INSERT OR IGNORE INTO jobs (jid, created_us, cause, target, states, test)
                 VALUES (?1, ?2, 'unknown', ?3, '[]', 0)",
            )?
            .execute(params![jid, now_us(), agent])?;
            tx.prepare_cached(
                "INSERT INTO job_agents (jid, agent, status, finished_us) VALUES (?1, ?2, 'answered', ?3)
                 ON CONFLICT (jid, agent) DO UPDATE SET status = 'answered', error = NULL, finished_us = ?3",
            )?
            .execute(params![jid, agent, now_us()])?;
            tx.prepare_cached("DELETE FROM job_results WHERE jid = ?1 AND agent = ?2")?.execute(params![jid, agent])?;
            for (seq, result) in results.iter().enumerate() {
                let state = StateReport::from(result);
                tx.prepare_cached(
                    "INSERT INTO job_results (jid, agent, seq, state, kind, outcome, changes, error, diff, duration_us)
                     VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10)",
                )?
                .execute(params![
                    jid,
                    agent,
                    i64::try_from(seq).unwrap_or(i64::MAX),
                    state.id,
                    state.kind,
                    state.outcome.as_str(),
                    serde_json::to_string(&state.changes).unwrap_or_default(),
                    state.error,
                    state.diff,
                    i64::try_from(state.duration_us).unwrap_or(i64::MAX)
                ])?;
            }
        }
        Write::NoAnswer { jid, agent, error } => {
            // An answer may have come in first (it raced the timeout): keep it.
            tx.prepare_cached(
                "INSERT INTO job_agents (jid, agent, status, error, finished_us) VALUES (?1, ?2, 'no_answer', ?3, ?4)
                 ON CONFLICT (jid, agent) DO UPDATE SET status = 'no_answer', error = ?3, finished_us = ?4
                 WHERE status = 'waiting'",
            )?
            .execute(params![jid, agent, error, now_us()])?;
        }
        Write::Receipts(receipts) => {
            for receipt in receipts {
                crate::server::receipts::insert(tx, receipt)?;
            }
        }
        Write::Facts { agent, facts } => {
            tx.prepare_cached(
                "INSERT INTO agent_facts (agent, facts, seen_us) VALUES (?1, ?2, ?3)
                 ON CONFLICT (agent) DO UPDATE SET facts = ?2, seen_us = ?3",
            )?
            .execute(params![agent, facts.to_string(), now_us()])?;
        }
        Write::Flush(_)
        | Write::Attach(_)
        | Write::Wake
        | Write::Commit(_)
        | Write::Retain(_)
        | Write::Close(_)
        | Write::Events { .. } => {}
    }
    Ok(())
}

/// One line of `halite-master jobs`.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct JobSummary {
    #[serde(flatten)]
    pub job: JobRecord,
    pub agents: Vec<String>,
    pub changed: i64,
    pub would_change: i64,
    pub failed: i64,
    pub unchanged: i64,
    /// Agents that did not answer, or have not yet.
    pub no_answer: i64,
    pub waiting: i64,
}

/// Which jobs [`Reader::list_filtered`] returns (the API's `GET /jobs`);
/// every field set narrows it.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct JobFilter {
    /// Jobs sent to this agent.
    pub agent: Option<String>,
    /// Jobs whose cause starts with this (`operator:`, `event:`, `schedule:`).
    pub cause: Option<String>,
    /// Jobs that carried this state id.
    pub state: Option<String>,
    /// Jobs with a result of this outcome (`changed`, `would_change`,
    /// `failed`, `unchanged`) or an agent in this status (`no_answer`,
    /// `waiting`).
    pub outcome: Option<String>,
    /// Created at or after (microseconds since the epoch).
    pub since_us: Option<i64>,
    /// Created before.
    pub until_us: Option<i64>,
    /// At most this many, newest first.
    pub limit: u32,
}

/// Reactions that started jobs in a span of time
/// ([`Reader::reactions_since`]).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Reactions {
    pub fired: i64,
    pub failed: i64,
    /// Of the failed, those an event caused (a drift's restore, usually).
    pub failed_on_event: i64,
}

/// Read-only access, for `halite-master jobs`.
#[derive(Debug)]
pub struct Reader {
    connection: Connection,
    path: PathBuf,
}

impl Reader {
    pub fn open(path: &Path) -> Result<Reader, StoreError> {
        if !path.exists() {
            return Err(StoreError::Missing { path: path.to_path_buf() });
        }
        let connection =
            Connection::open_with_flags(path, OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX)
                .map_err(sqlite(path))?;
        connection.busy_timeout(std::time::Duration::from_secs(5)).map_err(sqlite(path))?;
        let version: i32 = connection.query_row("PRAGMA user_version", [], |row| row.get(0)).map_err(sqlite(path))?;
        if version > SCHEMA_VERSION {
            return Err(StoreError::TooNew { path: path.to_path_buf(), found: version });
        }
        Ok(Reader { connection, path: path.to_path_buf() })
    }

    /// The receipts in the store (`receipts.rs`).
    pub fn receipts(&self) -> crate::server::receipts::Query<'_> {
        crate::server::receipts::Query { connection: &self.connection, path: &self.path }
    }

    /// Every agent's last facts, by id (none from a store older than v3).
    pub fn agent_facts(&self) -> Result<Vec<(String, serde_json::Value)>, StoreError> {
        let has_table: bool = self
            .connection
            .query_row("SELECT count(*) > 0 FROM sqlite_master WHERE name = 'agent_facts'", [], |row| row.get(0))
            .map_err(sqlite(&self.path))?;
        if !has_table {
            return Ok(Vec::new());
        }
        let mut statement = self
            .connection
            .prepare("SELECT agent, facts FROM agent_facts ORDER BY agent")
            .map_err(sqlite(&self.path))?;
        let rows = statement
            .query_map([], |row| Ok((row.get::<_, String>(0)?, row.get::<_, String>(1)?)))
            .map_err(sqlite(&self.path))?;
        let mut facts = Vec::new();
        for row in rows {
            let (agent, text) = row.map_err(sqlite(&self.path))?;
            facts.push((agent, serde_json::from_str(&text).unwrap_or(serde_json::Value::Null)));
        }
        Ok(facts)
    }

    /// The most recent `limit` jobs, newest first.
    pub fn list(&self, limit: u32) -> Result<Vec<JobSummary>, StoreError> {
        self.list_filtered(&JobFilter { limit, ..JobFilter::default() })
    }

    /// The newest jobs that pass `filter`, newest first.
    pub fn list_filtered(&self, filter: &JobFilter) -> Result<Vec<JobSummary>, StoreError> {
        let mut statement = self
            .connection
            .prepare(
                "SELECT j.jid, j.created_us, j.cause, j.reactor, j.target, j.states, j.test,
                    (SELECT group_concat(agent, ',') FROM job_agents a WHERE a.jid = j.jid),
                    (SELECT count(*) FROM job_results r WHERE r.jid = j.jid AND r.outcome = 'changed'),
                    (SELECT count(*) FROM job_results r WHERE r.jid = j.jid AND r.outcome = 'would_change'),
                    (SELECT count(*) FROM job_results r WHERE r.jid = j.jid AND r.outcome = 'failed'),
                    (SELECT count(*) FROM job_results r WHERE r.jid = j.jid AND r.outcome = 'unchanged'),
                    (SELECT count(*) FROM job_agents a WHERE a.jid = j.jid AND a.status = 'no_answer'),
                    (SELECT count(*) FROM job_agents a WHERE a.jid = j.jid AND a.status = 'waiting')
                 FROM jobs j
                 WHERE (?1 IS NULL OR EXISTS (SELECT 1 FROM job_agents a WHERE a.jid = j.jid AND a.agent = ?1))
                   AND (?2 IS NULL OR substr(j.cause, 1, length(?2)) = ?2)
                   AND (?3 IS NULL OR EXISTS (SELECT 1 FROM json_each(j.states) s WHERE s.value = ?3))
                   AND (?4 IS NULL
                        OR EXISTS (SELECT 1 FROM job_results r WHERE r.jid = j.jid AND r.outcome = ?4)
                        OR EXISTS (SELECT 1 FROM job_agents a WHERE a.jid = j.jid AND a.status = ?4))
                   AND (?5 IS NULL OR j.created_us >= ?5)
                   AND (?6 IS NULL OR j.created_us < ?6)
                 ORDER BY j.created_us DESC, j.jid DESC LIMIT ?7",
            )
            .map_err(sqlite(&self.path))?;
        let rows = statement
            .query_map(
                params![
                    filter.agent,
                    filter.cause,
                    filter.state,
                    filter.outcome,
                    filter.since_us,
                    filter.until_us,
                    filter.limit
                ],
                |row| {
                    let agents: Option<String> = row.get(7)?;
                    Ok(JobSummary {
                        job: job_record(row)?,
                        agents: agents.map(|a| a.split(',').map(str::to_owned).collect()).unwrap_or_default(),
                        changed: row.get(8)?,
                        would_change: row.get(9)?,
                        failed: row.get(10)?,
                        unchanged: row.get(11)?,
                        no_answer: row.get(12)?,
                        waiting: row.get(13)?,
                    })
                },
            )
            .map_err(sqlite(&self.path))?;
        rows.collect::<Result<_, _>>().map_err(sqlite(&self.path))
    }

    /// Jobs reactors started since `since_us` (by the master's clock):
    /// how many, and how many of them failed (a failed state, or an agent
    /// that never answered), and how many of those an event caused. One
    /// query on `jobs_by_time`.
    pub fn reactions_since(&self, since_us: i64) -> Result<Reactions, StoreError> {
        self.connection
            .query_row(
                "SELECT count(*), coalesce(sum(failed), 0), coalesce(sum(failed AND on_event), 0) FROM (
                    SELECT substr(j.cause, 1, 6) = 'event:' AS on_event,
                        EXISTS (SELECT 1 FROM job_results r WHERE r.jid = j.jid AND r.outcome = 'failed')
                        OR EXISTS (SELECT 1 FROM job_agents a WHERE a.jid = j.jid AND a.status = 'no_answer')
                        AS failed
                    FROM jobs j WHERE j.created_us >= ?1 AND j.reactor IS NOT NULL)",
                [since_us],
                |row| Ok(Reactions { fired: row.get(0)?, failed: row.get(1)?, failed_on_event: row.get(2)? }),
            )
            .map_err(sqlite(&self.path))
    }

    /// One job and every agent's results, as the apply report printer takes
    /// them. `jid` may be a unique prefix. An agent still `waiting` shows as
    /// not having answered.
    pub fn job(&self, jid: &str) -> Result<Option<(JobRecord, Report)>, StoreError> {
        let err = sqlite(&self.path);
        let pattern = format!("{}%", jid.replace(['%', '_'], ""));
        let mut matches = self
            .connection
            .prepare("SELECT jid, created_us, cause, reactor, target, states, test FROM jobs WHERE jid LIKE ?1 LIMIT 2")
            .map_err(&err)?
            .query_map([&pattern], job_record)
            .map_err(&err)?
            .collect::<Result<Vec<_>, _>>()
            .map_err(&err)?;
        if matches.len() != 1 {
            return Ok(None);
        }
        let job = matches.remove(0);
        let mut agents_statement = self
            .connection
            .prepare("SELECT agent, status, error FROM job_agents WHERE jid = ?1 ORDER BY agent")
            .map_err(&err)?;
        let agents = agents_statement
            .query_map([&job.jid], |row| Ok((row.get::<_, String>(0)?, row.get::<_, String>(1)?, row.get(2)?)))
            .map_err(&err)?
            .collect::<Result<Vec<(String, String, Option<String>)>, _>>()
            .map_err(&err)?;
        let mut results_statement = self
            .connection
            .prepare(
                "SELECT state, kind, outcome, changes, error, diff, duration_us FROM job_results
                 WHERE jid = ?1 AND agent = ?2 ORDER BY seq",
            )
            .map_err(&err)?;
        let mut report = Report { test: job.test, agents: Vec::new() };
        for (agent, status, error) in agents {
            let jid = Some(job.jid.clone());
            let answer = match status.as_str() {
                "answered" => {
                    let states = results_statement
                        .query_map(params![job.jid, agent], |row| {
                            let outcome: String = row.get(2)?;
                            let changes: String = row.get(3)?;
                            Ok(StateReport {
                                id: row.get(0)?,
                                kind: row.get(1)?,
                                outcome: OutcomeKind::parse(&outcome).unwrap_or(OutcomeKind::Failed),
                                changes: serde_json::from_str(&changes).unwrap_or_default(),
                                error: row.get(4)?,
                                diff: row.get(5)?,
                                duration_us: u64::try_from(row.get::<_, i64>(6)?).unwrap_or(0),
                            })
                        })
                        .map_err(&err)?
                        .collect::<Result<Vec<_>, _>>()
                        .map_err(&err)?;
                    Answer::Answered { states }
                }
                "waiting" => {
                    Answer::NoAnswer { error: "no answer recorded (still running, or the master stopped)".into() }
                }
                _ => Answer::NoAnswer { error: error.unwrap_or_else(|| "did not answer".into()) },
            };
            report.agents.push(AgentReport { agent, jid, answer });
        }
        Ok(Some((job, report)))
    }

    /// Every (agent, job) sent and not answered (waiting, or timed out):
    /// results the master still takes after a restart.
    pub fn unanswered(&self) -> Result<Vec<(String, String)>, StoreError> {
        let err = sqlite(&self.path);
        let mut statement =
            self.connection.prepare("SELECT agent, jid FROM job_agents WHERE status != 'answered'").map_err(&err)?;
        let rows = statement.query_map([], |row| Ok((row.get(0)?, row.get(1)?))).map_err(&err)?;
        rows.collect::<Result<_, _>>().map_err(err)
    }

    /// How many jobs start with `jid` (to tell "not found" from "ambiguous").
    pub fn count_prefix(&self, jid: &str) -> Result<i64, StoreError> {
        let pattern = format!("{}%", jid.replace(['%', '_'], ""));
        self.connection
            .query_row("SELECT count(*) FROM jobs WHERE jid LIKE ?1", [pattern], |row| row.get(0))
            .optional()
            .map(Option::unwrap_or_default)
            .map_err(sqlite(&self.path))
    }
}

fn job_record(row: &rusqlite::Row<'_>) -> rusqlite::Result<JobRecord> {
    let states: String = row.get(5)?;
    Ok(JobRecord {
        jid: row.get(0)?,
        created_us: row.get(1)?,
        cause: row.get(2)?,
        reactor: row.get(3)?,
        target: row.get(4)?,
        states: serde_json::from_str(&states).unwrap_or_default(),
        test: row.get(6)?,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use halite_proto::Outcome;

    fn record(jid: &str, cause: &str) -> JobRecord {
        JobRecord {
            jid: jid.into(),
            created_us: now_us(),
            cause: cause.into(),
            reactor: None,
            target: "web*".into(),
            states: vec!["motd".into()],
            test: false,
        }
    }

    fn result(id: &str, outcome: Outcome) -> StateResult {
        StateResult {
            id: id.into(),
            kind: "file.managed".into(),
            outcome,
            diff: Some("--- a\n+++ b\n".into()),
            duration_us: 7,
        }
    }

    #[tokio::test]
    async fn jobs_and_results_survive_a_reopen_and_read_back() {
        let dir = tempfile::tempdir().unwrap();
        let path = path(dir.path());
        let store = Store::open(&path).unwrap();
        store.started(record("01A", "operator:halite-master apply web*"), "web01").await;
        store.started(record("01A", "operator:halite-master apply web*"), "web02").await;
        store
            .answered(
                "01A",
                "web01",
                vec![
                    result("motd", Outcome::Changed { changes: vec!["created".into()] }),
                    result("x", Outcome::Unchanged),
                ],
            )
            .await;
        store.no_answer("01A", "web02", "agent `web02` did not answer within 1s").await;
        store.started(record("01B", "event:01XYZ"), "web01").await;
        store.answered("01B", "web01", vec![result("motd", Outcome::Failed { error: "boom".into() })]).await;
        // A late answer after the timeout replaces the no-answer.
        store.started(record("01C", "connected"), "web02").await;
        store.no_answer("01C", "web02", "timeout").await;
        assert!(store.answered_durably("01C", "web02", vec![result("motd", Outcome::Unchanged)]).await.unwrap());
        store.flush().await;
        drop(store);

        assert_eq!(std::fs::metadata(&path).unwrap().permissions().mode() & 0o777, 0o600, "owner-only");
        // A second writer on the same file (a restarted master) keeps it.
        Store::open(&path).unwrap().flush().await;
        let reader = Reader::open(&path).unwrap();
        let list = reader.list(10).unwrap();
        let jids: Vec<&str> = list.iter().map(|j| j.job.jid.as_str()).collect();
        assert_eq!(jids, ["01C", "01B", "01A"], "newest first");
        assert_eq!(list[2].agents, ["web01", "web02"]);
        assert_eq!((list[2].changed, list[2].unchanged, list[2].no_answer), (1, 1, 1));
        assert_eq!(list[1].failed, 1);
        assert_eq!((list[0].no_answer, list[0].unchanged), (0, 1), "the late answer counts");
        assert_eq!(reader.list(1).unwrap().len(), 1);

        let (job, report) = reader.job("01A").unwrap().unwrap();
        assert_eq!(job.cause, "operator:halite-master apply web*");
        assert_eq!(report.exit_code(), 3);
        assert_eq!(report.agents[0].states()[0].changes, ["created"]);
        assert_eq!(report.agents[0].states()[0].diff.as_deref(), Some("--- a\n+++ b\n"));
        assert!(matches!(&report.agents[1].answer, Answer::NoAnswer { error } if error.contains("within 1s")));
        assert!(reader.job("01").unwrap().is_none(), "an ambiguous prefix matches nothing");
        assert_eq!(reader.count_prefix("01").unwrap(), 3);
        assert!(reader.job("01B").unwrap().is_some());
    }

    #[tokio::test]
    async fn each_agents_last_facts_are_kept() {
        let dir = tempfile::tempdir().unwrap();
        let path = path(dir.path());
        let store = Store::open(&path).unwrap();
        store.facts_seen("web01", serde_json::json!({"os": "debian", "cpus": 2}));
        store.facts_seen("db01", serde_json::json!({"os": "rocky"}));
        store.facts_seen("web01", serde_json::json!({"os": "debian", "cpus": 4}));
        store.flush().await;
        let facts = Reader::open(&path).unwrap().agent_facts().unwrap();
        assert_eq!(
            facts,
            [
                ("db01".to_owned(), serde_json::json!({"os": "rocky"})),
                ("web01".to_owned(), serde_json::json!({"os": "debian", "cpus": 4})),
            ]
        );
    }

    #[test]
    fn a_missing_or_newer_store_is_a_clear_error() {
        let dir = tempfile::tempdir().unwrap();
        let path = path(dir.path());
        assert!(Reader::open(&path).unwrap_err().to_string().contains("has not run"));
        let connection = Connection::open(&path).unwrap();
        connection.execute_batch("PRAGMA user_version = 99;").unwrap();
        drop(connection);
        let error = Store::open(&path).unwrap_err().to_string();
        assert!(error.contains("schema version 99") && error.contains("halite.db"), "{error}");
        assert!(error.contains("newer halite-master"), "says what to do: {error}");
        let error = Reader::open(&path).unwrap_err().to_string();
        assert!(error.contains("schema version 99"), "{error}");
    }

    /// A halite.db written by a master of schema v1 (jobs, no keys) gains
    /// the keys table and keeps its jobs.
    #[tokio::test]
    async fn a_v1_store_is_migrated_and_keeps_its_jobs() {
        let dir = tempfile::tempdir().unwrap();
        let path = path(dir.path());
        let connection = Connection::open(&path).unwrap();
        connection.execute_batch(&format!("{V1_JOBS} PRAGMA user_version = 1;")).unwrap();
        connection
            .execute(
                "INSERT INTO jobs (jid, created_us, cause, target, states, test) VALUES ('01OLD', 1, 'connected', 'web01', '[]', 0)",
                [],
            )
            .unwrap();
        drop(connection);
        let store = Store::open(&path).unwrap();
        let keys = crate::server::keys::KeyStore::open(&store, dir.path(), &["*".to_owned()]).await.unwrap();
        let key = halite_link::Keypair::generate().unwrap().public;
        keys.admit("web01", &key);
        keys.commit().await.unwrap();
        store.close().await;
        drop((store, keys));
        let reader = Reader::open(&path).unwrap();
        let version: i32 = reader.connection.query_row("PRAGMA user_version", [], |row| row.get(0)).unwrap();
        assert_eq!(version, SCHEMA_VERSION);
        assert_eq!(reader.list(10).unwrap()[0].job.jid, "01OLD");
        let stored: String =
            reader.connection.query_row("SELECT key FROM keys WHERE id = 'web01'", [], |row| row.get(0)).unwrap();
        assert_eq!(stored, key.to_string());
    }

    /// Builds before v5 wrote `user_version = 3` with the v4 index already
    /// made: such a file migrates to v5 (receipts) without tripping on it,
    /// and the version is the number of steps.
    #[test]
    fn a_store_written_as_v3_with_the_v4_index_migrates_to_receipts() {
        assert_eq!(usize::try_from(SCHEMA_VERSION).unwrap(), MIGRATIONS.len());
        let dir = tempfile::tempdir().unwrap();
        let path = path(dir.path());
        let connection = Connection::open(&path).unwrap();
        connection
            .execute_batch(&format!("{V1_JOBS} {V2_KEYS} {V3_FACTS} {V4_JOBS_BY_TIME} PRAGMA user_version = 3;"))
            .unwrap();
        drop(connection);
        drop(Store::open(&path).unwrap());
        let reader = Reader::open(&path).unwrap();
        let version: i32 = reader.connection.query_row("PRAGMA user_version", [], |row| row.get(0)).unwrap();
        assert_eq!(version, SCHEMA_VERSION);
        assert_eq!(usize::try_from(SCHEMA_VERSION).unwrap(), MIGRATIONS.len());
        assert!(reader.receipts().list(None, 10).unwrap().is_empty());
    }

    /// A WAL as SQLite writes it, taken while its writer is open: frames of
    /// real transactions.
    fn live_wal() -> Vec<u8> {
        let dir = tempfile::tempdir().unwrap();
        let path = path(dir.path());
        let connection = Connection::open(&path).unwrap();
        connection.execute_batch("PRAGMA journal_mode = WAL; CREATE TABLE t (x TEXT);").unwrap();
        for n in 0..5 {
            connection.execute("INSERT INTO t VALUES (?1)", [format!("row {n} {}", "x".repeat(3000))]).unwrap();
        }
        let bytes = std::fs::read(wal(&path)).unwrap();
        drop(connection);
        bytes
    }

    #[test]
    fn a_wal_is_checked_as_sqlite_reads_it_and_damage_is_named() {
        let good = live_wal();
        assert!(good.len() > 32 + 2 * 4120, "frames written: {} bytes", good.len());
        assert_eq!(check_wal(&good), Ok(()));
        assert_eq!(check_wal(&[]), Ok(()), "an empty WAL (checkpointed) is fine");
        // Killed between a frame's header and its page: what a crash leaves.
        let mut torn = good.clone();
        torn.extend_from_slice(&good[32..32 + 24]);
        assert_eq!(check_wal(&torn), Ok(()), "a frame header without its page is a torn append");
        let page = usize::try_from(u32::from_be_bytes(good[8..12].try_into().unwrap())).unwrap();
        let flip = |at: usize| {
            let mut bytes = good.clone();
            bytes[at] ^= 0x10;
            bytes
        };
        let cases: [(&str, Vec<u8>, &str); 6] = [
            ("zeroed", vec![0; good.len()], "zeroed"),
            ("cut in its header", good[..20].to_vec(), "shorter than a WAL header"),
            ("cut in a frame", good[..32 + 24 + page / 2].to_vec(), "partial frame"),
            ("a bit flipped in a page", flip(32 + 24 + 100), "checksum does not match"),
            ("a bit flipped in the header", flip(12), "header's checksum"),
            ("not a WAL", b"hello, this is not a WAL file at all....".to_vec(), "not a WAL header"),
        ];
        for (what, bytes, says) in cases {
            let error = check_wal(&bytes).expect_err(what);
            assert!(error.contains(says), "{what}: {error}");
        }
        // Frames of an older generation (other salts) after the current
        // ones end the log, as in SQLite.
        let mut old = good.clone();
        let second = 32 + 24 + page;
        old[second + 8] ^= 0xff;
        assert_eq!(check_wal(&old), Ok(()));
    }

    #[tokio::test]
    async fn a_store_that_existed_is_not_taken_for_a_new_one() {
        let dir = tempfile::tempdir().unwrap();
        let path = path(dir.path());
        let store = Store::open(&path).unwrap();
        store.started(record("01A", "connected"), "web01").await;
        store.close().await;
        assert_eq!(std::fs::read_to_string(marker(&path)).unwrap(), CLEAN);
        assert!(!wal(&path).exists(), "a clean stop leaves one file");
        let kept = std::fs::read(&path).unwrap();
        std::fs::write(&path, b"").unwrap();
        let error = Store::open(&path).unwrap_err().to_string();
        assert!(error.contains("is empty") && error.contains("halite.db.state"), "{error}");
        std::fs::remove_file(&path).unwrap();
        let error = Store::open(&path).unwrap_err().to_string();
        assert!(error.contains("is missing") && error.contains("halite-master backup"), "{error}");
        std::fs::write(&path, &kept).unwrap();
        let store = Store::open(&path).unwrap();
        store.flush().await;
        drop(store);
        assert_eq!(std::fs::read_to_string(marker(&path)).unwrap(), RUNNING);
        // A crash after writes leaves the WAL; without it, the store is
        // refused.
        std::fs::remove_file(wal(&path)).ok();
        let error = Store::open(&path).unwrap_err().to_string();
        assert!(error.contains("halite.db-wal") && error.contains("missing"), "{error}");
        // The operator's way out: remove the marker.
        std::fs::remove_file(marker(&path)).unwrap();
        Store::open(&path).unwrap().close().await;
        assert_eq!(Reader::open(&path).unwrap().list(10).unwrap().len(), 1);
    }

    #[tokio::test]
    async fn history_is_ordered_by_the_masters_clock() {
        let dir = tempfile::tempdir().unwrap();
        let path = path(dir.path());
        let store = Store::open(&path).unwrap();
        // A job id that sorts last but was made first.
        let mut early = record("7ZZZZZZZZZ", "connected");
        early.created_us = 1_000;
        let mut late = record("01B", "connected");
        late.created_us = 2_000;
        store.started(early, "web01").await;
        store.started(late, "web01").await;
        store.flush().await;
        let jids: Vec<String> = Reader::open(&path).unwrap().list(10).unwrap().into_iter().map(|j| j.job.jid).collect();
        assert_eq!(jids, ["01B", "7ZZZZZZZZZ"]);
    }

    #[tokio::test]
    async fn retention_bounds_the_store_by_age_and_size() {
        let dir = tempfile::tempdir().unwrap();
        let path = path(dir.path());
        let store = Store::open(&path).unwrap();
        let day_us = 86_400 * 1_000_000;
        let big = "d".repeat(8 * 1024);
        for n in 0..400 {
            let mut job = record(&format!("01J{n:05}"), "connected");
            // The first 100 are 100 days old.
            job.created_us = if n < 100 { now_us() - 100 * day_us } else { now_us() - 400 + n };
            store.started(job, "web01").await;
            let mut state = result("motd", Outcome::Unchanged);
            state.diff = Some(big.clone());
            store.answered(&format!("01J{n:05}"), "web01", vec![state]).await;
        }
        store.flush().await;
        let used = |path: &Path| -> u64 {
            let connection = Connection::open(path).unwrap();
            let bytes: i64 = connection
                .query_row(
                    "SELECT ((SELECT page_count FROM pragma_page_count()) - (SELECT freelist_count FROM pragma_freelist_count())) * (SELECT page_size FROM pragma_page_size())",
                    [],
                    |row| row.get(0),
                )
                .unwrap();
            u64::try_from(bytes).unwrap()
        };
        assert!(used(&path) > 3 * 1024 * 1024, "{} bytes", used(&path));
        let max_bytes = 1024 * 1024;
        store.retain(Retention { max_age: std::time::Duration::from_secs(90 * 86_400), max_bytes });
        store.flush().await;
        let reader = Reader::open(&path).unwrap();
        let left = reader.list(1000).unwrap();
        assert!(left.iter().all(|j| j.job.created_us > now_us() - 90 * day_us), "old jobs are gone");
        assert!(used(&path) <= max_bytes, "{} bytes in use", used(&path));
        assert!(!left.is_empty() && left.len() < 300, "{} jobs kept", left.len());
        let newest = &left[0].job.jid;
        assert_eq!(newest, "01J00399", "the newest are kept");
        let orphans: i64 = reader
            .connection
            .query_row("SELECT count(*) FROM job_results WHERE jid NOT IN (SELECT jid FROM jobs)", [], |row| row.get(0))
            .unwrap();
        assert_eq!(orphans, 0, "results go with their jobs");
    }

    #[tokio::test]
    async fn a_backup_is_one_self_contained_copy() {
        let dir = tempfile::tempdir().unwrap();
        let path = path(dir.path());
        let store = Store::open(&path).unwrap();
        store.started(record("01A", "connected"), "web01").await;
        store.flush().await;
        let copy = dir.path().join("copy.db");
        store.backup(&copy).unwrap();
        assert!(!wal(&copy).exists());
        assert_eq!(std::fs::metadata(&copy).unwrap().permissions().mode() & 0o777, 0o600);
        assert_eq!(Reader::open(&copy).unwrap().list(10).unwrap()[0].job.jid, "01A");
    }
}

//! The master's store: one SQLite file, `<data_dir>/halite.db`, holding
//! every job with its cause and every agent's per-state results, and the
//! agents' keys. It is the job history behind `halite-master jobs`, the
//! audit log of SPEC §6 (cause event, state, changes and diff, result),
//! and where `keys.rs` keeps what it decided about each key.
//!
//! Writes go through [`Store`], a cheap handle that queues them for one
//! dedicated writer thread (SQLite calls block; they never run on the
//! runtime's threads). The queue holds [`STORE_QUEUE`] writes; when it is
//! full, the job path waits for room (a job's start and its answer are
//! awaited sends), so results are never dropped to keep up. The one write
//! made where waiting is impossible, a late answer arriving in the link
//! loop, is dropped when the queue is full, counted and logged as an error.
//! Keys do not travel through the queue: the writer reads the key store's
//! dirty set after every batch (`keys.rs` says how, and what a crash
//! loses), so the link loop only ever sends a wake-up, and only when that
//! set stops being empty.
//!
//! Reading ([`Reader`]) opens the file read-only, so `jobs` works whether
//! the master runs or not. The schema is versioned with
//! `PRAGMA user_version` and migrated forward in one transaction when the
//! master opens it (v1: jobs; v2: keys; v3: the last facts of each agent,
//! which `check` renders templates with); a file with a newer version is
//! refused, by the master and by `jobs`, rather than misread. The file is
//! in WAL mode so readers never block the writer.

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

/// Writes waiting for the writer thread. When full, job paths wait; late
/// answers are dropped and counted (see the module docs).
pub const STORE_QUEUE: usize = 4096;

/// The schema this build reads and writes: the number of [`MIGRATIONS`].
pub const SCHEMA_VERSION: i32 = 3;

/// The store's file in a data dir.
pub fn path(data_dir: &Path) -> PathBuf {
    data_dir.join("halite.db")
}

/// `MIGRATIONS[n]` takes the schema from version n to n + 1. Append only:
/// a released step never changes.
const MIGRATIONS: [&str; 3] = [V1_JOBS, V2_KEYS, V3_FACTS];

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
}

/// Why a job ran and what it was for: a row of `jobs`.
#[derive(Debug, Clone, PartialEq, Serialize)]
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
    },
    NoAnswer {
        jid: String,
        agent: String,
        error: String,
    },
    /// An agent's facts, from its hello: the last ones are kept.
    Facts {
        agent: String,
        facts: serde_json::Value,
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
    dropped: Arc<AtomicU64>,
    path: PathBuf,
}

impl Store {
    /// Opens (creating or migrating) the store and starts its writer thread.
    /// Blocking: call it from `spawn_blocking` or before the runtime.
    pub fn open(path: &Path) -> Result<Store, StoreError> {
        let connection = open_for_writing(path)?;
        let (queue, inbox) = mpsc::channel(STORE_QUEUE);
        let path_for_error = path.to_path_buf();
        let path = path.to_path_buf();
        std::thread::Builder::new()
            .name("halite-store".into())
            .spawn(move || writer(connection, &path, inbox))
            .map_err(|source| StoreError::Io { path: path_for_error.clone(), source })?;
        Ok(Store { queue, dropped: Arc::default(), path: path_for_error })
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
        self.send(Write::Answered { jid: jid.to_owned(), agent: agent.to_owned(), results }).await;
    }

    /// `agent` did not answer the job (timeout, not connected).
    pub async fn no_answer(&self, jid: &str, agent: &str, error: &str) {
        self.send(Write::NoAnswer { jid: jid.to_owned(), agent: agent.to_owned(), error: error.to_owned() }).await;
    }

    /// An answer nobody waits for (late, or for a job sent before a master
    /// restart), from where waiting is not possible: dropped and counted
    /// when the queue is full.
    pub fn answered_late(&self, jid: &str, agent: &str, results: Vec<StateResult>) {
        let write = Write::Answered { jid: jid.to_owned(), agent: agent.to_owned(), results };
        if self.queue.try_send(write).is_err() {
            let dropped = self.dropped.fetch_add(1, Ordering::Relaxed) + 1;
            tracing::error!(agent, job = jid, dropped, "The job store is full; a late result was not recorded.");
        }
    }

    /// Late answers dropped because the queue was full, since start.
    pub fn dropped(&self) -> u64 {
        self.dropped.load(Ordering::Relaxed)
    }

    /// Returns once every write queued before is committed.
    pub async fn flush(&self) {
        let (done, wait) = oneshot::channel();
        self.send(Write::Flush(done)).await;
        let _ = wait.await;
    }

    /// Keeps `agent`'s facts (for `check`). From the link loop, which
    /// cannot wait: dropped when the queue is full (the next hello
    /// brings them again).
    pub fn facts_seen(&self, agent: &str, facts: serde_json::Value) {
        if self.queue.try_send(Write::Facts { agent: agent.to_owned(), facts }).is_err() {
            tracing::debug!(agent, "The store is busy; the agent's facts were not kept this time.");
        }
    }

    async fn send(&self, write: Write) {
        if self.queue.send(write).await.is_err() {
            tracing::error!("The job store's writer has stopped; a job record was lost.");
        }
    }
}

fn sqlite(path: &Path) -> impl Fn(rusqlite::Error) -> StoreError + '_ {
    move |source| StoreError::Sqlite { path: path.to_path_buf(), source }
}

fn open_for_writing(path: &Path) -> Result<Connection, StoreError> {
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
    migrate(&connection, path)?;
    Ok(connection)
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
/// failure of either loses nothing of the other).
fn writer(mut connection: Connection, path: &Path, mut inbox: mpsc::Receiver<Write>) {
    let mut attached: Vec<Box<dyn Persisted>> = Vec::new();
    while let Some(first) = inbox.blocking_recv() {
        let mut batch = vec![first];
        while let Ok(more) = inbox.try_recv() {
            batch.push(more);
        }
        let mut flushed = Vec::new();
        let mut committed = Vec::new();
        let mut attaching = Vec::new();
        let mut jobs = Vec::with_capacity(batch.len());
        for write in batch {
            match write {
                Write::Flush(done) => flushed.push(done),
                Write::Commit(done) => committed.push(done),
                Write::Attach(AttachFn(attach)) => attaching.push(attach),
                Write::Wake => {}
                write => jobs.push(write),
            }
        }
        if !jobs.is_empty() {
            let result = connection.transaction().and_then(|tx| {
                for write in jobs {
                    apply(&tx, write)?;
                }
                tx.commit()
            });
            if let Err(error) = result {
                tracing::error!(path = %path.display(), %error, "Cannot write to the job store; these records are lost.");
            }
        }
        for attach in attaching {
            attached.extend(attach(&mut connection, path));
        }
        let mut saved = Ok(());
        for persisted in &mut attached {
            if let Err(error) = persisted.persist(&mut connection) {
                saved = Err(error);
            }
        }
        for done in committed {
            let _ = done.send(saved.clone());
        }
        for done in flushed {
            let _ = done.send(());
        }
    }
}

fn apply(tx: &rusqlite::Transaction<'_>, write: Write) -> rusqlite::Result<()> {
    match write {
        Write::Started { job, agent } => {
            tx.execute(
                "INSERT OR IGNORE INTO jobs (jid, created_us, cause, reactor, target, states, test)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
                params![
                    job.jid,
                    job.created_us,
                    job.cause,
                    job.reactor,
                    job.target,
                    serde_json::to_string(&job.states).unwrap_or_default(),
                    job.test
                ],
            )?;
            tx.execute(
                "INSERT OR IGNORE INTO job_agents (jid, agent, status) VALUES (?1, ?2, 'waiting')",
                params![job.jid, agent],
            )?;
        }
        Write::Answered { jid, agent, results } => {
            // A job the store never saw started (a record lost to an error).
            tx.execute(
                "INSERT OR IGNORE INTO jobs (jid, created_us, cause, target, states, test)
                 VALUES (?1, ?2, 'unknown', ?3, '[]', 0)",
                params![jid, now_us(), agent],
            )?;
            tx.execute(
                "INSERT INTO job_agents (jid, agent, status, finished_us) VALUES (?1, ?2, 'answered', ?3)
                 ON CONFLICT (jid, agent) DO UPDATE SET status = 'answered', error = NULL, finished_us = ?3",
                params![jid, agent, now_us()],
            )?;
            tx.execute("DELETE FROM job_results WHERE jid = ?1 AND agent = ?2", params![jid, agent])?;
            for (seq, result) in results.iter().enumerate() {
                let state = StateReport::from(result);
                tx.execute(
                    "INSERT INTO job_results (jid, agent, seq, state, kind, outcome, changes, error, diff, duration_us)
                     VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10)",
                    params![
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
                    ],
                )?;
            }
        }
        Write::NoAnswer { jid, agent, error } => {
            // An answer may have come in first (it raced the timeout): keep it.
            tx.execute(
                "INSERT INTO job_agents (jid, agent, status, error, finished_us) VALUES (?1, ?2, 'no_answer', ?3, ?4)
                 ON CONFLICT (jid, agent) DO UPDATE SET status = 'no_answer', error = ?3, finished_us = ?4
                 WHERE status = 'waiting'",
                params![jid, agent, error, now_us()],
            )?;
        }
        Write::Facts { agent, facts } => {
            tx.execute(
                "INSERT INTO agent_facts (agent, facts, seen_us) VALUES (?1, ?2, ?3)
                 ON CONFLICT (agent) DO UPDATE SET facts = ?2, seen_us = ?3",
                params![agent, facts.to_string(), now_us()],
            )?;
        }
        Write::Flush(_) | Write::Attach(_) | Write::Wake | Write::Commit(_) => {}
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
                 FROM jobs j ORDER BY j.jid DESC LIMIT ?1",
            )
            .map_err(sqlite(&self.path))?;
        let rows = statement
            .query_map([limit], |row| {
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
            })
            .map_err(sqlite(&self.path))?;
        rows.collect::<Result<_, _>>().map_err(sqlite(&self.path))
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
        store.answered_late("01C", "web02", vec![result("motd", Outcome::Unchanged)]);
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
        drop((store, keys));
        let reader = Reader::open(&path).unwrap();
        let version: i32 = reader.connection.query_row("PRAGMA user_version", [], |row| row.get(0)).unwrap();
        assert_eq!(version, SCHEMA_VERSION);
        assert_eq!(reader.list(10).unwrap()[0].job.jid, "01OLD");
        let stored: String =
            reader.connection.query_row("SELECT key FROM keys WHERE id = 'web01'", [], |row| row.get(0)).unwrap();
        assert_eq!(stored, key.to_string());
    }
}

//! The PostgreSQL backend of the store (`store: postgres://…` in
//! master.yaml): jobs, results, facts and every agent event recorded in a
//! database several masters can share (issue #20).
//!
//! The hot path stays local: the reaction to an event never waits on
//! PostgreSQL. The records go through the same queue as with SQLite
//! ([`super::Store`]) to one writer thread of their own, which takes every
//! record queued meanwhile (at most [`PG_BATCH`]) and commits them in one
//! transaction: events in one multi-row `INSERT … SELECT FROM unnest(…)`,
//! job rows pipelined. The batch is whatever queued while the previous
//! commit ran, so the store lags by about one commit (a few ms on a LAN,
//! well under 50 ms); nothing waits on a timer to fill a batch. When the
//! queue ([`super::STORE_QUEUE`]) is full, the ack task waits for room,
//! so agents keep their events in their outboxes.
//!
//! PostgreSQL unreachable (refused, stopped, a commit over
//! [`COMMIT_TIMEOUT`]): the batch goes to the local spool
//! (`spool.rs`, fsynced) and is acknowledged from there; later batches go
//! there too, in order, until a reconnection (tried every
//! [`super::RETRY_EVERY`]) drains the spool into PostgreSQL. Every write is
//! idempotent (event ids and job rows are unique; an answer replaces its
//! rows), so a replayed spool records nothing twice.
//!
//! The schema is versioned in `halite_schema` and migrated on start in one
//! transaction under an advisory lock (masters starting together migrate
//! once). Keys are persisted by the SQLite writer in each master's
//! halite.db, and shared between masters through the `keys` table by
//! `server/cluster/` (README "Running several masters").
//!
//! The password never comes from the URL (master.yaml is shown and logged):
//! it comes from `password_file` or `HALITE_PG_PASSWORD`; [`PgTarget`]
//! shows itself without it.

use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

use halite_proto::event::now_us;
use halite_state::report::{AgentReport, Answer, OutcomeKind, Report, StateReport};
use tokio::sync::{mpsc, oneshot};
use tokio_postgres::Client;

use super::spool::{EventRow, Record, Spool, SpoolError};
use super::{JobRecord, JobSummary, Retention, Write};
use crate::server::receipts::{DriftCount, Receipt, ReceiptKind};

/// Whether the records reach PostgreSQL, as the writer last found: told to
/// `server/mod.rs`, which publishes `halite/master/store/postgres/unreachable`
/// and `…/reachable`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PgState {
    /// Connected, and the spool is empty.
    Reachable,
    /// Records go to the spool; why.
    Unreachable { error: String },
}

/// Notices of fenced sessions waiting for the session layer
/// (`server/acks.rs` drops those sessions). When full, a notice is dropped
/// (logged): the session's next refused row sends another.
pub const FENCED_QUEUE: usize = 1024;

/// A session of this master that another master has taken since: the
/// agent's rows written under `epoch` were refused by the fence, because
/// `holder` now holds `current`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Fenced {
    pub agent: String,
    /// The epoch the refused rows carried.
    pub epoch: i64,
    /// The epoch in `agent_sessions`, newer.
    pub current: i64,
    /// The master `agent_sessions` names.
    pub holder: String,
}

/// What became of a batch of events: durable (committed, or spooled while
/// PostgreSQL is unreachable) or not, and which agents' rows the fence
/// refused (not recorded: those are not acknowledged).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Recorded {
    pub durable: bool,
    pub fenced: Vec<Fenced>,
}

/// Records committed in one transaction at most.
pub const PG_BATCH: usize = 2048;
/// A commit that takes longer than this counts as PostgreSQL unreachable
/// (a partition does not close the socket): the batch is spooled.
pub const COMMIT_TIMEOUT: Duration = Duration::from_secs(5);
/// How long a connection attempt may take.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);
/// The environment variable a password may come from.
pub const PASSWORD_ENV: &str = "HALITE_PG_PASSWORD";
/// What every connection asks PostgreSQL's side of it to do, so that the
/// server drops a master cut away by a partition within about 5 s: TCP
/// keepalives after 2 s idle, every 1 s, and at most 5 s unacknowledged.
/// A partition does not close the socket, and without these the server
/// keeps the dead backend for hours (the kernel's 2 h keepalive), with
/// what it holds: the singletons' advisory lock (no other master could
/// lead), an open transaction's row locks. Ignored over a Unix socket.
/// Options the URL sets come first; a `-c` it gives for the same setting
/// is overridden.
pub const SERVER_KEEPALIVES: &str =
    "-c tcp_keepalives_idle=2 -c tcp_keepalives_interval=1 -c tcp_keepalives_count=3 -c tcp_user_timeout=5000";

/// The schema this build reads and writes.
pub const SCHEMA_VERSION: i32 = MIGRATIONS.len() as i32;

/// `MIGRATIONS[n]` takes the schema from version n to n + 1. Append only.
/// Tables other modules add to halite.db (`store.rs`'s list) get their
/// PostgreSQL form appended here.
const MIGRATIONS: [&str; 7] = [
    V1,
    V2_EVENTS_BY_AGENT,
    V3_CONTROL_PLANE,
    V4_RECEIPTS_TOKENS_AUDIT,
    V5_EVENTS_FLEET_TAIL_AND_FENCE,
    V6_ROUTED_JOBS,
    V7_KEY_FACTS,
];

const V1: &str = "
CREATE TABLE jobs (
    jid         TEXT PRIMARY KEY,
    created_us  BIGINT NOT NULL,
    cause       TEXT NOT NULL,
    reactor     TEXT,
    target      TEXT NOT NULL,
    states      TEXT NOT NULL,
    test        BOOLEAN NOT NULL
);
CREATE INDEX jobs_by_time ON jobs (created_us, jid);
CREATE TABLE job_agents (
    jid         TEXT NOT NULL,
    agent       TEXT NOT NULL,
    status      TEXT NOT NULL,
    error       TEXT,
    finished_us BIGINT,
    PRIMARY KEY (jid, agent)
);
CREATE TABLE job_results (
    jid         TEXT NOT NULL,
    agent       TEXT NOT NULL,
    seq         BIGINT NOT NULL,
    state       TEXT NOT NULL,
    kind        TEXT NOT NULL,
    outcome     TEXT NOT NULL,
    changes     TEXT NOT NULL,
    error       TEXT,
    diff        TEXT,
    duration_us BIGINT NOT NULL,
    PRIMARY KEY (jid, agent, seq)
);
CREATE TABLE agent_facts (
    agent   TEXT PRIMARY KEY,
    facts   TEXT NOT NULL,
    seen_us BIGINT NOT NULL
);
CREATE TABLE events (
    id          TEXT PRIMARY KEY,   -- the agent's event id: recorded once
    agent       TEXT NOT NULL,
    tag         TEXT NOT NULL,
    time_us     BIGINT NOT NULL,
    data        TEXT NOT NULL,
    recorded_us BIGINT NOT NULL
);
CREATE INDEX events_by_time ON events (time_us);
";

/// An agent's newest event ids, read when its session starts on a master
/// (`prime.rs`): one index range, not a scan of every agent's events.
const V2_EVENTS_BY_AGENT: &str = "
CREATE INDEX events_by_agent ON events (agent, time_us);
";

/// The control plane shared by several masters (`server/cluster/`): keys,
/// the singletons' lease, each agent's session epoch, each master's tree
/// version. Times that masters compare are PostgreSQL's own clock
/// (`TIMESTAMPTZ`), so masters' clocks need not agree.
const V3_CONTROL_PLANE: &str = "
CREATE TABLE keys (
    id      TEXT NOT NULL,
    key     TEXT NOT NULL,
    status  TEXT NOT NULL,
    since   BIGINT NOT NULL,
    PRIMARY KEY (id, key)
);
CREATE TABLE leases (
    name    TEXT PRIMARY KEY,
    holder  TEXT NOT NULL,
    epoch   BIGINT NOT NULL,
    expires TIMESTAMPTZ NOT NULL
);
CREATE TABLE schedule_ticks (
    name    TEXT PRIMARY KEY,
    epoch   BIGINT NOT NULL,
    tick    BIGINT NOT NULL,
    at      TIMESTAMPTZ NOT NULL
);
CREATE TABLE agent_sessions (
    agent   TEXT PRIMARY KEY,
    epoch   BIGINT NOT NULL,
    master  TEXT NOT NULL,
    since   TIMESTAMPTZ NOT NULL
);
CREATE TABLE masters (
    name      TEXT PRIMARY KEY,
    tree      TEXT NOT NULL,
    heartbeat TIMESTAMPTZ NOT NULL
);
";

/// What halite.db held per master and PostgreSQL now shares (ha-shared):
/// remediation receipts (`receipts.rs`, written by the batched writer like
/// results), API tokens (`server/cluster/tokens.rs`) and the audit log,
/// one hash chain for the whole cluster (`server/cluster/audit.rs`).
/// `audit.id` names an entry written while PostgreSQL was unreachable (or
/// imported from a halite.db) so that chaining it in is once-only; it is
/// not part of the hash. As in halite.db, a trigger refuses `UPDATE` and
/// `DELETE` on `audit`.
const V4_RECEIPTS_TOKENS_AUDIT: &str = "
CREATE TABLE receipts (
    jid         TEXT NOT NULL,
    agent       TEXT NOT NULL,
    state       TEXT NOT NULL,
    path        TEXT NOT NULL,
    kind        TEXT NOT NULL,
    cause       TEXT NOT NULL,
    cause_event TEXT,
    hash_before TEXT,
    hash_after  TEXT,
    latency_us  BIGINT,
    at_us       BIGINT NOT NULL,
    PRIMARY KEY (jid, agent, state)
);
CREATE INDEX receipts_by_agent ON receipts (agent, at_us);
CREATE INDEX receipts_by_time ON receipts (at_us);
CREATE TABLE api_tokens (
    name       TEXT PRIMARY KEY,
    role       TEXT NOT NULL,
    hash       TEXT NOT NULL UNIQUE,
    created_us BIGINT NOT NULL
);
CREATE TABLE audit (
    seq     BIGINT PRIMARY KEY,
    at_us   BIGINT NOT NULL,
    who     TEXT NOT NULL,
    what    TEXT NOT NULL,
    target  TEXT NOT NULL,
    cause   TEXT NOT NULL,
    result  TEXT NOT NULL,
    prev    TEXT NOT NULL,
    hash    TEXT NOT NULL,
    id      TEXT UNIQUE
);
CREATE FUNCTION halite_audit_append_only() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION 'the audit log is append-only';
END
$$;
CREATE TRIGGER audit_append_only BEFORE UPDATE OR DELETE ON audit
    FOR EACH ROW EXECUTE FUNCTION halite_audit_append_only();
";

/// Each event row says which master recorded it under which session
/// epoch (the fence: a stale master's rows are refused, see [`commit`]),
/// and carries the id of the transaction that wrote it: the fleet tail
/// (`server/cluster/tail.rs`) pages through rows by (xid, id) below the
/// oldest transaction still running, so a row committed late, out of
/// order, is never skipped. Rows written before this version have none of
/// the three (NULL): they are recorded, not tailed. A job's row per agent
/// likewise names the master that recorded its answer, with the answering
/// transaction's id (set again when the answer replaces the waiting row),
/// so the tail shows other masters' job returns too.
const V5_EVENTS_FLEET_TAIL_AND_FENCE: &str = "
ALTER TABLE events ADD COLUMN master TEXT, ADD COLUMN epoch BIGINT, ADD COLUMN xid xid8;
ALTER TABLE events ALTER COLUMN xid SET DEFAULT pg_current_xact_id();
CREATE INDEX events_by_xid ON events (xid, id);
ALTER TABLE job_agents ADD COLUMN master TEXT, ADD COLUMN xid xid8;
ALTER TABLE job_agents ALTER COLUMN xid SET DEFAULT pg_current_xact_id();
CREATE INDEX job_agents_by_xid ON job_agents (xid, jid, agent);
";

/// Operators' jobs for agents homed on another master
/// (`server/cluster/route.rs`): the asking master inserts a request row,
/// the agent's home master takes it, runs the job and writes the answer.
/// Transport only: the job itself is recorded in `jobs` by the home
/// master. A row goes once its asker read the answer or gave up; the
/// `deadline` keeps a master that comes back from running a request its
/// asker no longer waits for.
const V6_ROUTED_JOBS: &str = "
CREATE TABLE routed_jobs (
    id        TEXT PRIMARY KEY,   -- the job id, the same in both masters' answers
    asker     TEXT NOT NULL,
    home      TEXT NOT NULL,
    principal TEXT NOT NULL,
    agent     TEXT NOT NULL,
    request   TEXT NOT NULL,      -- JSON: what to run (route.rs, Request)
    asked     TIMESTAMPTZ NOT NULL,
    deadline  TIMESTAMPTZ NOT NULL,
    taken     TIMESTAMPTZ,
    answer    TEXT,               -- JSON: the agent's result (route.rs, Answer)
    answered  TIMESTAMPTZ
);
CREATE INDEX routed_jobs_waiting ON routed_jobs (home) WHERE taken IS NULL;
";

/// The facts frozen per accepted key (`server/cluster/facts.rs`): the
/// first master to freeze them inserts the row, an operator's decision
/// replaces it. No foreign key: a key decision rewrites the id's `keys`
/// rows, which must not take the facts with them.
const V7_KEY_FACTS: &str = "
CREATE TABLE key_facts (
    id     TEXT NOT NULL,
    key    TEXT NOT NULL,
    frozen TEXT NOT NULL,             -- JSON: what targeting and templates use
    master TEXT NOT NULL,             -- the master that froze (or an operator re-froze) them
    at_us  BIGINT NOT NULL,
    PRIMARY KEY (id, key)
);
";

/// An arbitrary constant: the advisory lock key migrations take.
const MIGRATION_LOCK: i64 = 0x6861_6c69_7465;

#[derive(Debug, thiserror::Error)]
pub enum PgError {
    #[error("the store URL {url} is not a PostgreSQL URL: {error}")]
    Url { url: String, error: String },
    #[error(
        "the store URL in master.yaml holds a password; remove it and put it in a file named by `password_file` (or in {PASSWORD_ENV})"
    )]
    PasswordInUrl,
    #[error("cannot read the PostgreSQL password file {path}: {source}")]
    PasswordFile { path: PathBuf, source: std::io::Error },
    #[error(
        "the store {target} asks for TLS (sslmode={mode}) but names no `ca_file` to check the server against; add `ca_file`, or set sslmode=disable"
    )]
    NoCa { target: String, mode: &'static str },
    #[error("cannot use the certificates in {path} for the store's TLS: {error}")]
    Ca { path: PathBuf, error: String },
    #[error("the PostgreSQL store {target}: {}", describe(source))]
    Postgres { target: String, source: tokio_postgres::Error },
    #[error("the PostgreSQL store {target} did not answer within {CONNECT_TIMEOUT:?}")]
    Timeout { target: String },
    #[error(
        "the PostgreSQL store {target} has schema version {found}, newer than this halite's {SCHEMA_VERSION}; run that newer halite-master"
    )]
    TooNew { target: String, found: i32 },
    #[error("the PostgreSQL store {target}: cannot start its writer: {source}")]
    Thread { target: String, source: std::io::Error },
    #[error(transparent)]
    Spool(#[from] SpoolError),
}

/// Where the PostgreSQL store is and how to reach it.
#[derive(Clone)]
pub struct PgTarget {
    config: tokio_postgres::Config,
    /// `postgres://user@host:port/db`, without the password: for messages.
    shown: String,
    tls: Option<Arc<tokio_rustls::rustls::ClientConfig>>,
}

impl std::fmt::Debug for PgTarget {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.shown)
    }
}

impl std::fmt::Display for PgTarget {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.shown)
    }
}

impl PgTarget {
    /// The target `store:` names, with its password read. Blocking (reads
    /// the password file).
    pub fn from_config(store: &crate::config::StoreConfig, url: &str) -> Result<PgTarget, PgError> {
        let password = match &store.password_file {
            Some(path) => Some(
                std::fs::read_to_string(path)
                    .map_err(|source| PgError::PasswordFile { path: path.clone(), source })?
                    .lines()
                    .next()
                    .unwrap_or_default()
                    .to_owned(),
            ),
            None => std::env::var(PASSWORD_ENV).ok(),
        };
        PgTarget::new(url, password, store.ca_file.as_deref())
    }

    /// A target from its URL (which must hold no password), a password and
    /// the authorities to check a TLS server against.
    pub fn new(url: &str, password: Option<String>, ca_file: Option<&Path>) -> Result<PgTarget, PgError> {
        // The URL itself is not echoed: it may hold a password.
        let mut config = tokio_postgres::Config::from_str(url)
            .map_err(|error| PgError::Url { url: redact(url), error: error.to_string() })?;
        if config.get_password().is_some() {
            return Err(PgError::PasswordInUrl);
        }
        if let Some(password) = password {
            config.password(password);
        }
        if config.get_connect_timeout().is_none() {
            config.connect_timeout(CONNECT_TIMEOUT);
        }
        config.application_name("halite-master");
        let options = match config.get_options() {
            Some(given) => format!("{given} {SERVER_KEEPALIVES}"),
            None => SERVER_KEEPALIVES.to_owned(),
        };
        config.options(&options);
        let hosts: Vec<String> = config
            .get_hosts()
            .iter()
            .map(|host| match host {
                tokio_postgres::config::Host::Tcp(name) => name.clone(),
                tokio_postgres::config::Host::Unix(path) => path.display().to_string(),
            })
            .collect();
        let port = config.get_ports().first().copied().unwrap_or(5432);
        let shown = format!(
            "postgres://{}@{}:{port}/{}",
            config.get_user().unwrap_or(""),
            hosts.join(","),
            config.get_dbname().unwrap_or("")
        );
        let mode = match config.get_ssl_mode() {
            tokio_postgres::config::SslMode::Disable => None,
            tokio_postgres::config::SslMode::Prefer => Some("prefer"),
            _ => Some("require"),
        };
        let tls = match (mode, ca_file) {
            (None, _) | (Some("prefer"), None) => None,
            (Some(mode), None) => return Err(PgError::NoCa { target: shown, mode }),
            (Some(_), Some(path)) => Some(Arc::new(tls_config(path)?)),
        };
        Ok(PgTarget { config, shown, tls })
    }

    /// Connects, and drives the connection on the current runtime,
    /// handing every notification (`LISTEN`) to `notifications`. The
    /// channel is bounded: while it is full the connection is not read,
    /// and PostgreSQL queues the notifications for it. The sender is
    /// dropped when the connection ends, which is how the listener learns
    /// it must reconnect.
    pub async fn connect_listening(
        &self,
        notifications: mpsc::Sender<tokio_postgres::Notification>,
    ) -> Result<Client, PgError> {
        let error = |source| PgError::Postgres { target: self.shown.clone(), source };
        let attempt = async {
            match &self.tls {
                None => {
                    let (client, connection) = self.config.connect(tokio_postgres::NoTls).await.map_err(error)?;
                    tokio::spawn(drive_listening(connection, self.shown.clone(), notifications));
                    Ok(client)
                }
                Some(tls) => {
                    let tls = tokio_postgres_rustls::MakeRustlsConnect::new((**tls).clone());
                    let (client, connection) = self.config.connect(tls).await.map_err(error)?;
                    tokio::spawn(drive_listening(connection, self.shown.clone(), notifications));
                    Ok(client)
                }
            }
        };
        tokio::time::timeout(CONNECT_TIMEOUT + Duration::from_secs(1), attempt)
            .await
            .map_err(|_| PgError::Timeout { target: self.shown.clone() })?
    }

    /// Connects, and drives the connection on the current runtime.
    pub async fn connect(&self) -> Result<Client, PgError> {
        let error = |source| PgError::Postgres { target: self.shown.clone(), source };
        let attempt = async {
            match &self.tls {
                None => {
                    let (client, connection) = self.config.connect(tokio_postgres::NoTls).await.map_err(error)?;
                    tokio::spawn(drive(connection, self.shown.clone()));
                    Ok(client)
                }
                Some(tls) => {
                    let tls = tokio_postgres_rustls::MakeRustlsConnect::new((**tls).clone());
                    let (client, connection) = self.config.connect(tls).await.map_err(error)?;
                    tokio::spawn(drive(connection, self.shown.clone()));
                    Ok(client)
                }
            }
        };
        tokio::time::timeout(CONNECT_TIMEOUT + Duration::from_secs(1), attempt)
            .await
            .map_err(|_| PgError::Timeout { target: self.shown.clone() })?
    }
}

async fn drive<S, T>(connection: tokio_postgres::Connection<S, T>, target: String)
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
    T: tokio_postgres::tls::TlsStream + Unpin,
{
    if let Err(error) = connection.await {
        tracing::debug!(store = %target, error = %describe(&error), "The PostgreSQL connection ended.");
    }
}

async fn drive_listening<S, T>(
    mut connection: tokio_postgres::Connection<S, T>,
    target: String,
    notifications: mpsc::Sender<tokio_postgres::Notification>,
) where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
    T: tokio_postgres::tls::TlsStream + Unpin,
{
    use futures_util::StreamExt as _;
    let mut messages = futures_util::stream::poll_fn(move |cx| connection.poll_message(cx));
    while let Some(message) = messages.next().await {
        match message {
            Ok(tokio_postgres::AsyncMessage::Notification(notification)) => {
                if notifications.send(notification).await.is_err() {
                    return;
                }
            }
            Ok(_) => {}
            Err(error) => {
                tracing::debug!(store = %target, error = %describe(&error), "The PostgreSQL listening connection ended.");
                return;
            }
        }
    }
}

/// What PostgreSQL said (its message and SQLSTATE), or why the connection
/// failed: tokio-postgres's own text is only "db error" for the former.
pub fn describe(error: &tokio_postgres::Error) -> String {
    match error.as_db_error() {
        Some(db) => format!("{} (SQLSTATE {})", db.message(), db.code().code()),
        None => {
            let mut text = error.to_string();
            let mut source = std::error::Error::source(error);
            while let Some(cause) = source {
                text.push_str(": ");
                text.push_str(&cause.to_string());
                source = cause.source();
            }
            text
        }
    }
}

/// A URL with any password replaced, for messages.
fn redact(url: &str) -> String {
    match (url.find("://"), url.rfind('@')) {
        (Some(scheme), Some(at)) if at > scheme => {
            let user = &url[scheme + 3..at];
            let user = user.split(':').next().unwrap_or_default();
            format!("{}{user}{}", &url[..scheme + 3], &url[at..])
        }
        _ => url.to_owned(),
    }
}

fn tls_config(path: &Path) -> Result<tokio_rustls::rustls::ClientConfig, PgError> {
    use tokio_rustls::rustls;
    use tokio_rustls::rustls::pki_types::CertificateDer;
    use tokio_rustls::rustls::pki_types::pem::PemObject;
    let ca = |error: String| PgError::Ca { path: path.to_path_buf(), error };
    let mut roots = rustls::RootCertStore::empty();
    for cert in CertificateDer::pem_file_iter(path).map_err(|e| ca(e.to_string()))? {
        roots.add(cert.map_err(|e| ca(e.to_string()))?).map_err(|e| ca(e.to_string()))?;
    }
    if roots.is_empty() {
        return Err(ca("no certificate in it".into()));
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    Ok(rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| ca(e.to_string()))?
        .with_root_certificates(roots)
        .with_no_client_auth())
}

/// A connection with the schema at [`SCHEMA_VERSION`] and the writer's
/// statements prepared.
async fn connect_and_migrate(target: &PgTarget) -> Result<Conn, PgError> {
    let mut client = target.connect().await?;
    migrate(&mut client, target).await?;
    let statements = Statements::prepare(&client)
        .await
        .map_err(|source| PgError::Postgres { target: target.shown.clone(), source })?;
    Ok(Conn { client, statements })
}

/// The writer's connection: its statements are prepared once, so a batch
/// costs BEGIN, one pipelined round of statements, and COMMIT.
struct Conn {
    client: Client,
    statements: Statements,
}

struct Statements {
    events: tokio_postgres::Statement,
    insert_job: tokio_postgres::Statement,
    insert_agent: tokio_postgres::Statement,
    answered: tokio_postgres::Statement,
    delete_results: tokio_postgres::Statement,
    insert_result: tokio_postgres::Statement,
    no_answer: tokio_postgres::Statement,
    facts: tokio_postgres::Statement,
    receipt: tokio_postgres::Statement,
}

impl Statements {
    /// Prepares them all, pipelined: one round trip.
    async fn prepare(client: &Client) -> Result<Statements, tokio_postgres::Error> {
        let (events, insert_job, insert_agent, answered, delete_results, insert_result, no_answer, facts, receipt) = tokio::try_join!(
            client.prepare(FENCED_INSERT),
            client.prepare(
                "INSERT INTO jobs (jid, created_us, cause, reactor, target, states, test)
                 VALUES ($1, $2, $3, $4, $5, $6, $7) ON CONFLICT (jid) DO NOTHING",
            ),
            client.prepare(
                "INSERT INTO job_agents (jid, agent, status) VALUES ($1, $2, 'waiting') ON CONFLICT DO NOTHING"
            ),
            client.prepare(
                "INSERT INTO job_agents (jid, agent, status, finished_us, master) VALUES ($1, $2, 'answered', $3, $4)
                 ON CONFLICT (jid, agent) DO UPDATE SET status = 'answered', error = NULL, finished_us = $3,
                    master = $4, xid = pg_current_xact_id()",
            ),
            client.prepare("DELETE FROM job_results WHERE jid = $1 AND agent = $2"),
            client.prepare(
                "INSERT INTO job_results (jid, agent, seq, state, kind, outcome, changes, error, diff, duration_us)
                 VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10)",
            ),
            client.prepare(
                "INSERT INTO job_agents (jid, agent, status, error, finished_us) VALUES ($1, $2, 'no_answer', $3, $4)
                 ON CONFLICT (jid, agent) DO UPDATE SET status = 'no_answer', error = $3, finished_us = $4
                 WHERE job_agents.status = 'waiting'",
            ),
            client.prepare(
                "INSERT INTO agent_facts (agent, facts, seen_us) VALUES ($1, $2, $3)
                 ON CONFLICT (agent) DO UPDATE SET facts = $2, seen_us = $3",
            ),
            // A replayed spool or a resent answer writes a receipt once.
            client.prepare(
                "INSERT INTO receipts
                   (jid, agent, state, path, kind, cause, cause_event, hash_before, hash_after, latency_us, at_us)
                 VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11)
                 ON CONFLICT (jid, agent, state) DO NOTHING",
            ),
        )?;
        Ok(Statements {
            events,
            insert_job,
            insert_agent,
            answered,
            delete_results,
            insert_result,
            no_answer,
            facts,
            receipt,
        })
    }
}

/// The batch's events in one statement, fenced: rows that carry a session
/// epoch are checked against `agent_sessions` (each agent's row locked
/// `FOR SHARE`, in agent order as `cluster/epochs.rs` bumps them, so a
/// bump cannot commit between the check and this insert); a row whose
/// agent another master has taken under a newer epoch is not inserted,
/// and the statement returns those (agent, epoch) with the holder. Rows
/// without an epoch (a session whose epoch is not written yet, a lone
/// master) are inserted unchecked. One statement per batch, whatever its
/// size: the hot path never waits on it. With `$9` false (a drained spool:
/// [`Fence::Tell`]) the stale rows are inserted all the same and only
/// returned.
const FENCED_INSERT: &str = "
WITH e AS (
    SELECT * FROM unnest($1::text[], $2::text[], $3::text[], $4::bigint[], $5::text[], $7::text[], $8::bigint[])
        AS e (id, agent, tag, time_us, data, master, epoch)
), s AS (
    SELECT agent, epoch, master FROM agent_sessions
    WHERE agent IN (SELECT agent FROM e WHERE epoch IS NOT NULL)
    ORDER BY agent FOR SHARE
), stale AS (
    SELECT DISTINCT e.agent, e.epoch, s.epoch AS current, s.master AS holder
    FROM e JOIN s ON s.agent = e.agent
    WHERE e.epoch IS NOT NULL AND s.epoch > e.epoch AND s.master IS DISTINCT FROM e.master
), written AS (
    INSERT INTO events (id, agent, tag, time_us, data, recorded_us, master, epoch)
    SELECT e.id, e.agent, e.tag, e.time_us, e.data, $6, e.master, e.epoch FROM e
    WHERE NOT $9::boolean OR NOT EXISTS (SELECT 1 FROM stale WHERE stale.agent = e.agent AND stale.epoch = e.epoch)
    ON CONFLICT (id) DO NOTHING
)
SELECT agent, epoch, current, holder FROM stale ORDER BY agent";

/// Whether a connection attempt failed because PostgreSQL does not answer
/// (worth waiting for), not because it refused the master.
fn is_unreachable(error: &PgError) -> bool {
    match error {
        PgError::Timeout { .. } => true,
        PgError::Postgres { source, .. } => unreachable(source),
        _ => false,
    }
}

/// Brings the schema to [`SCHEMA_VERSION`], once however many masters
/// start together.
pub async fn migrate(client: &mut Client, target: &PgTarget) -> Result<(), PgError> {
    let error = |source| PgError::Postgres { target: target.shown.clone(), source };
    let tx = client.transaction().await.map_err(error)?;
    tx.execute("SELECT pg_advisory_xact_lock($1)", &[&MIGRATION_LOCK]).await.map_err(error)?;
    tx.batch_execute("CREATE TABLE IF NOT EXISTS halite_schema (version INTEGER NOT NULL)").await.map_err(error)?;
    let found: i32 = match tx.query_opt("SELECT version FROM halite_schema", &[]).await.map_err(error)? {
        Some(row) => row.get(0),
        None => {
            tx.execute("INSERT INTO halite_schema (version) VALUES (0)", &[]).await.map_err(error)?;
            0
        }
    };
    let from = usize::try_from(found)
        .ok()
        .filter(|&v| v <= MIGRATIONS.len())
        .ok_or_else(|| PgError::TooNew { target: target.shown.clone(), found })?;
    for step in &MIGRATIONS[from..] {
        tx.batch_execute(step).await.map_err(error)?;
    }
    tx.execute("UPDATE halite_schema SET version = $1", &[&SCHEMA_VERSION]).await.map_err(error)?;
    tx.commit().await.map_err(error)?;
    if from < MIGRATIONS.len() {
        tracing::info!(store = %target, from = found, to = SCHEMA_VERSION, "Migrated the PostgreSQL store.");
    }
    Ok(())
}

/// PostgreSQL holds no NUL in text; a diff of a binary file may.
fn text(value: &str) -> String {
    value.replace('\0', "\u{fffd}")
}

/// What the fence does with the events of a session another master has
/// taken since.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Fence {
    /// A live batch: they are not recorded and not acknowledged, so the
    /// agent sends them again to the master it reaches next.
    Refuse,
    /// A drained spool: they were acknowledged when spooled and nobody will
    /// send them again, so they are recorded (once: event ids are unique)
    /// and only the stale session is told.
    Tell,
}

/// Writes `records` in one transaction, but for the events `fence`
/// refuses ([`FENCED_INSERT`]); returns the stale sessions it found.
/// `master` is this master's name among several (`Store::name_master`),
/// which its job answers carry.
async fn commit(
    conn: &mut Conn,
    records: &[Record],
    master: Option<&str>,
    fence: Fence,
) -> Result<Vec<Fenced>, tokio_postgres::Error> {
    let Conn { client, statements } = conn;
    let Statements {
        events: insert_events,
        insert_job,
        insert_agent,
        answered,
        delete_results,
        insert_result,
        no_answer,
        facts,
        receipt,
    } = &*statements;
    let tx = client.transaction().await?;
    let mut fenced = Vec::new();
    let events: Vec<&EventRow> = records
        .iter()
        .filter_map(|r| match r {
            Record::Event(row) => Some(row),
            _ => None,
        })
        .collect();
    if !events.is_empty() {
        let ids: Vec<String> = events.iter().map(|e| text(&e.id)).collect();
        let agents: Vec<String> = events.iter().map(|e| text(&e.agent)).collect();
        let tags: Vec<String> = events.iter().map(|e| text(&e.tag)).collect();
        let times: Vec<i64> = events.iter().map(|e| e.time_us).collect();
        let data: Vec<String> = events.iter().map(|e| text(&e.data)).collect();
        let masters: Vec<Option<String>> = events.iter().map(|e| e.master.as_deref().map(text)).collect();
        let epochs: Vec<Option<i64>> = events.iter().map(|e| e.epoch).collect();
        let rows = tx
            .query(
                insert_events,
                &[&ids, &agents, &tags, &times, &data, &now_us(), &masters, &epochs, &(fence == Fence::Refuse)],
            )
            .await?;
        fenced = rows
            .iter()
            .map(|row| Fenced { agent: row.get(0), epoch: row.get(1), current: row.get(2), holder: row.get(3) })
            .collect();
    }
    // Sent in order and pipelined: one round trip for the lot.
    let mut pending = Vec::new();
    for record in records {
        match record {
            Record::Event(_) => {}
            Record::Started { job, agent } => {
                let states = serde_json::to_string(&job.states).unwrap_or_default();
                let row: [Box<dyn tokio_postgres::types::ToSql + Sync + Send>; 7] = [
                    Box::new(text(&job.jid)),
                    Box::new(job.created_us),
                    Box::new(text(&job.cause)),
                    Box::new(job.reactor.as_deref().map(text)),
                    Box::new(text(&job.target)),
                    Box::new(text(&states)),
                    Box::new(job.test),
                ];
                pending.push((insert_job.clone(), row.into()));
                pending.push((insert_agent.clone(), boxed([text(&job.jid), text(agent)])));
            }
            Record::Answered { jid, agent, results } => {
                let row: [Box<dyn tokio_postgres::types::ToSql + Sync + Send>; 7] = [
                    Box::new(text(jid)),
                    Box::new(now_us()),
                    Box::new("unknown".to_owned()),
                    Box::new(None::<String>),
                    Box::new(text(agent)),
                    Box::new("[]".to_owned()),
                    Box::new(false),
                ];
                pending.push((insert_job.clone(), row.into()));
                let row: [Box<dyn tokio_postgres::types::ToSql + Sync + Send>; 4] =
                    [Box::new(text(jid)), Box::new(text(agent)), Box::new(now_us()), Box::new(master.map(text))];
                pending.push((answered.clone(), row.into()));
                pending.push((delete_results.clone(), boxed([text(jid), text(agent)])));
                for (seq, result) in results.iter().enumerate() {
                    let state = StateReport::from(result);
                    let row: [Box<dyn tokio_postgres::types::ToSql + Sync + Send>; 10] = [
                        Box::new(text(jid)),
                        Box::new(text(agent)),
                        Box::new(i64::try_from(seq).unwrap_or(i64::MAX)),
                        Box::new(text(&state.id)),
                        Box::new(text(&state.kind)),
                        Box::new(state.outcome.as_str().to_owned()),
                        Box::new(text(&serde_json::to_string(&state.changes).unwrap_or_default())),
                        Box::new(state.error.as_deref().map(text)),
                        Box::new(state.diff.as_deref().map(text)),
                        Box::new(i64::try_from(state.duration_us).unwrap_or(i64::MAX)),
                    ];
                    pending.push((insert_result.clone(), row.into()));
                }
            }
            Record::NoAnswer { jid, agent, error, at_us } => {
                let row: [Box<dyn tokio_postgres::types::ToSql + Sync + Send>; 4] =
                    [Box::new(text(jid)), Box::new(text(agent)), Box::new(text(error)), Box::new(*at_us)];
                pending.push((no_answer.clone(), row.into()));
            }
            Record::Facts { agent, facts: value, at_us } => {
                let row: [Box<dyn tokio_postgres::types::ToSql + Sync + Send>; 3] =
                    [Box::new(text(agent)), Box::new(text(&value.to_string())), Box::new(*at_us)];
                pending.push((facts.clone(), row.into()));
            }
            Record::Receipt(r) => {
                let row: [Box<dyn tokio_postgres::types::ToSql + Sync + Send>; 11] = [
                    Box::new(text(&r.jid)),
                    Box::new(text(&r.agent)),
                    Box::new(text(&r.state)),
                    Box::new(text(&r.path)),
                    Box::new(r.kind.as_str().to_owned()),
                    Box::new(text(&r.cause)),
                    Box::new(r.cause_event.as_deref().map(text)),
                    Box::new(r.hash_before.as_deref().map(text)),
                    Box::new(r.hash_after.as_deref().map(text)),
                    Box::new(r.latency_us),
                    Box::new(r.at_us),
                ];
                pending.push((receipt.clone(), row.into()));
            }
        }
    }
    let statements = pending.iter().map(|(statement, row): &(tokio_postgres::Statement, Row)| {
        let params: Vec<&(dyn tokio_postgres::types::ToSql + Sync)> =
            row.iter().map(|p| p.as_ref() as &(dyn tokio_postgres::types::ToSql + Sync)).collect();
        let tx = &tx;
        async move { tx.execute(statement, &params).await }
    });
    futures_util::future::try_join_all(statements).await?;
    tx.commit().await?;
    Ok(fenced)
}

type Row = Vec<Box<dyn tokio_postgres::types::ToSql + Sync + Send>>;

fn boxed<const N: usize>(values: [String; N]) -> Row {
    values.into_iter().map(|v| Box::new(v) as Box<dyn tokio_postgres::types::ToSql + Sync + Send>).collect()
}

/// Errors that say PostgreSQL cannot be reached (the connection is gone,
/// the server shuts down or refuses connections), as opposed to records it
/// refuses.
fn unreachable(error: &tokio_postgres::Error) -> bool {
    unreachable_code(error.code().map(tokio_postgres::error::SqlState::code))
}

/// The decision of [`unreachable`] on the error's SQLSTATE (`None`: the
/// connection itself failed).
fn unreachable_code(code: Option<&str>) -> bool {
    match code {
        None => true,
        // 08: connection exception; 57: operator intervention (shutdown);
        // 53: insufficient resources (disk full, too many connections);
        // 40: a serialization failure or deadlock, worth retrying.
        Some(code) => matches!(code.get(..2), Some("08" | "57" | "53" | "40")),
    }
}

/// Deletes jobs, their results and events older than `limits.max_age`.
/// PostgreSQL does not give freed space back without VACUUM FULL, so
/// `max_bytes` does not apply here (autovacuum reuses the space).
async fn retain_now(client: &mut Client, limits: Retention) -> Result<u64, tokio_postgres::Error> {
    let tx = client.transaction().await?;
    let jobs = retain_in(&tx, limits).await?;
    tx.commit().await?;
    Ok(jobs)
}

/// [`retain_now`]'s deletes within `tx`, which the caller commits: the
/// singleton retention of several masters checks its lease in the same
/// transaction (`server/cluster/lease.rs`).
pub async fn retain_in(tx: &tokio_postgres::Transaction<'_>, limits: Retention) -> Result<u64, tokio_postgres::Error> {
    let cutoff = now_us().saturating_sub(i64::try_from(limits.max_age.as_micros()).unwrap_or(i64::MAX));
    tx.execute("DELETE FROM job_results WHERE jid IN (SELECT jid FROM jobs WHERE created_us < $1)", &[&cutoff]).await?;
    tx.execute("DELETE FROM receipts WHERE jid IN (SELECT jid FROM jobs WHERE created_us < $1)", &[&cutoff]).await?;
    tx.execute("DELETE FROM job_agents WHERE jid IN (SELECT jid FROM jobs WHERE created_us < $1)", &[&cutoff]).await?;
    let jobs = tx.execute("DELETE FROM jobs WHERE created_us < $1", &[&cutoff]).await?;
    tx.execute("DELETE FROM events WHERE time_us < $1", &[&cutoff]).await?;
    Ok(jobs)
}

/// Starts the writer thread for `inbox`: connects and migrates first. A
/// database that refuses the master (a wrong password, no such database, a
/// newer schema) stops the start with its error; one that does not answer
/// (down, partitioned away) does not: the master starts degraded, spooling,
/// and migrates once it answers. Blocking.
pub(super) fn start_writer(
    target: PgTarget,
    spool_path: &Path,
    inbox: mpsc::Receiver<Write>,
    name: Arc<std::sync::OnceLock<String>>,
) -> Result<(tokio::sync::watch::Receiver<PgState>, mpsc::Receiver<Fenced>), PgError> {
    // One worker of its own drives the connection and a reconnection in
    // the background, so a partition's connect timeout never stalls the
    // spooling (and with it the acks).
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .thread_name("halite-store-pg-io")
        .enable_all()
        .build()
        .map_err(|source| PgError::Thread { target: target.shown.clone(), source })?;
    let (tell, state) = tokio::sync::watch::channel(PgState::Reachable);
    let client = match runtime.block_on(connect_and_migrate(&target)) {
        Ok(client) => Some(client),
        Err(error) if is_unreachable(&error) => {
            tracing::error!(%error, "PostgreSQL does not answer; starting anyway, spooling records to the local disk until it does.");
            tell.send_replace(PgState::Unreachable { error: error.to_string() });
            None
        }
        Err(error) => return Err(error),
    };
    let spool = Spool::open(spool_path)?;
    // What a spool left by an earlier run holds is checked now, not when
    // it is drained.
    let left = spool.read()?.len();
    if left > 0 {
        tracing::info!(store = %target, spool = %spool.path().display(), records = left, "Records spooled by an earlier run are drained into PostgreSQL.");
    }
    let shown = target.shown.clone();
    let (fenced, fenced_inbox) = mpsc::channel(FENCED_QUEUE);
    let mut writer = PgWriter {
        fenced,
        name,
        target,
        runtime,
        client,
        spool,
        last_try: std::time::Instant::now(),
        reconnecting: None,
        retaining: None,
        tell,
    };
    std::thread::Builder::new()
        .name("halite-store-pg".into())
        .spawn(move || writer.run(inbox))
        .map_err(|source| PgError::Thread { target: shown, source })?;
    Ok((state, fenced_inbox))
}

struct PgWriter {
    target: PgTarget,
    /// This thread's own: PostgreSQL's client is async, the spool blocks.
    runtime: tokio::runtime::Runtime,
    /// `None` while PostgreSQL is unreachable.
    client: Option<Conn>,
    spool: Spool,
    /// When a connection was last tried.
    last_try: std::time::Instant,
    /// A connection attempt under way, in the background.
    reconnecting: Option<tokio::task::JoinHandle<Result<Conn, PgError>>>,
    /// A retention pass under way, in the background.
    retaining: Option<tokio::task::JoinHandle<()>>,
    /// Whether records reach PostgreSQL, told once each way.
    tell: tokio::sync::watch::Sender<PgState>,
    /// Where the sessions the fence refused rows of are told, batches and
    /// drained spool alike (`Store::take_fenced`).
    fenced: mpsc::Sender<Fenced>,
    /// This master's name among several, once known (`Store::name_master`).
    name: Arc<std::sync::OnceLock<String>>,
}

/// What a batch's writer tells: durable once in PostgreSQL or the spool,
/// and the agents whose rows the fence refused.
type Durable = oneshot::Sender<Recorded>;

impl PgWriter {
    fn run(&mut self, mut inbox: mpsc::Receiver<Write>) {
        // A spool left by an earlier run drains first.
        self.drain();
        let mut batch = Vec::with_capacity(PG_BATCH);
        loop {
            let waiting = self.client.is_none() || !self.spool.is_empty();
            let got = if waiting {
                self.runtime.block_on(async {
                    tokio::time::timeout(super::RETRY_EVERY, inbox.recv_many(&mut batch, PG_BATCH)).await
                })
            } else {
                Ok(self.runtime.block_on(inbox.recv_many(&mut batch, PG_BATCH)))
            };
            match got {
                Ok(0) => break,
                Ok(_) => {}
                Err(_) => {
                    // Time to try PostgreSQL again.
                    self.drain();
                    continue;
                }
            }
            let mut records = Vec::new();
            let mut durable: Vec<Durable> = Vec::new();
            let mut answered: Vec<oneshot::Sender<bool>> = Vec::new();
            let mut flushed = Vec::new();
            let mut retain = None;
            let mut close = None;
            for write in batch.drain(..) {
                match write {
                    Write::Started { job, agent } => records.push(Record::Started { job, agent }),
                    Write::Answered { jid, agent, results, committed } => {
                        records.push(Record::Answered { jid, agent, results });
                        answered.extend(committed);
                    }
                    Write::NoAnswer { jid, agent, error } => {
                        records.push(Record::NoAnswer { jid, agent, error, at_us: now_us() })
                    }
                    Write::Facts { agent, facts } => records.push(Record::Facts { agent, facts, at_us: now_us() }),
                    // Queued before their answer: committed (or spooled)
                    // with it or before it, so durable before its ack.
                    Write::Receipts(receipts) => records.extend(receipts.into_iter().map(Record::Receipt)),
                    Write::Events { events, durable: done } => {
                        records.extend(events.into_iter().map(Record::Event));
                        durable.push(done);
                    }
                    Write::Flush(done) => flushed.push(done),
                    Write::Retain(limits) => retain = Some(limits),
                    Write::Close(done) => close = Some(done),
                    // Keys are the SQLite writer's (see the module docs).
                    Write::Attach(_) | Write::Wake | Write::Commit(_) => {}
                }
            }
            if self.client.is_none() || !self.spool.is_empty() {
                self.drain();
            }
            let stored = self.write(&records);
            for done in answered {
                let _ = done.send(stored.durable);
            }
            for done in durable {
                let _ = done.send(stored.clone());
            }
            if let Some(limits) = retain {
                self.retain(limits);
            }
            for done in flushed {
                let _ = done.send(());
            }
            if let Some(done) = close {
                // A retention under way finishes first.
                if let Some(retaining) = self.retaining.take() {
                    let _ = self.runtime.block_on(retaining);
                }
                let _ = done.send(());
                break;
            }
        }
    }

    /// Commits to PostgreSQL, or spools while it is unreachable (or while
    /// the spool holds older records: order is kept). Durable once
    /// committed or spooled; what the fence refused is told.
    fn write(&mut self, records: &[Record]) -> Recorded {
        if records.is_empty() {
            return Recorded { durable: true, fenced: Vec::new() };
        }
        let name = self.name.get().cloned();
        if self.spool.is_empty()
            && let Some(client) = self.client.as_mut()
        {
            let result = self.runtime.block_on(async {
                tokio::time::timeout(COMMIT_TIMEOUT, commit(client, records, name.as_deref(), Fence::Refuse)).await
            });
            match result {
                Ok(Ok(fenced)) => {
                    self.tell_fenced(&fenced, Fence::Refuse);
                    return Recorded { durable: true, fenced };
                }
                Ok(Err(error)) if !unreachable(&error) => {
                    // These records themselves fail, and would again.
                    tracing::error!(store = %self.target, error = %describe(&error), records = records.len(), "PostgreSQL refuses these records; they are dropped (their agents are not acknowledged).");
                    return Recorded::default();
                }
                Ok(Err(error)) => {
                    tracing::error!(store = %self.target, error = %describe(&error), "PostgreSQL is unreachable; spooling records to the local disk until it answers.");
                }
                Err(_) => {
                    tracing::error!(store = %self.target, timeout = ?COMMIT_TIMEOUT, "PostgreSQL did not commit in time; spooling records to the local disk until it answers.");
                }
            }
            self.client = None;
            self.last_try = std::time::Instant::now();
            self.tell.send_replace(PgState::Unreachable { error: "connection lost or commit timed out".into() });
        }
        match self.spool.append(records) {
            Ok(()) => Recorded { durable: true, fenced: Vec::new() },
            Err(error) => {
                tracing::error!(%error, records = records.len(), "Cannot spool records; their agents are not acknowledged.");
                Recorded::default()
            }
        }
    }

    /// Logs the sessions the fence refused rows of and tells the session
    /// layer, never waiting (a full queue drops the notice: the session's
    /// next refused row tells again).
    fn tell_fenced(&self, fenced: &[Fenced], fence: Fence) {
        for stale in fenced {
            match fence {
                Fence::Refuse => {
                    tracing::warn!(store = %self.target, agent = %stale.agent, epoch = stale.epoch, current = stale.current, master = %stale.holder, "Refused this master's records of an agent another master serves now (a stale session epoch).")
                }
                Fence::Tell => {
                    tracing::warn!(store = %self.target, agent = %stale.agent, epoch = stale.epoch, current = stale.current, master = %stale.holder, "Recorded spooled events of an agent another master serves now (acknowledged before it moved); this master's session is stale.")
                }
            }
            if self.fenced.try_send(stale.clone()).is_err() {
                tracing::warn!(agent = %stale.agent, "Too many fenced sessions wait to be dropped; this notice is not sent.");
            }
        }
    }

    /// Tells that records reach PostgreSQL again (once).
    fn reachable(&mut self) {
        if *self.tell.borrow() != PgState::Reachable {
            self.tell.send_replace(PgState::Reachable);
        }
    }

    /// Starts a retention pass on a connection of its own, in the
    /// background: deleting a large backlog must not hold the records (and
    /// the acks) back. Skipped while PostgreSQL is unreachable or a pass
    /// is still running (the next comes within `RETENTION_INTERVAL`).
    fn retain(&mut self, limits: Retention) {
        if self.client.is_none() || self.retaining.as_ref().is_some_and(|pass| !pass.is_finished()) {
            return;
        }
        let target = self.target.clone();
        self.retaining = Some(self.runtime.spawn(async move {
            let result = match target.connect().await {
                Ok(mut client) => retain_now(&mut client, limits).await.map_err(|e| describe(&e)),
                Err(error) => Err(error.to_string()),
            };
            match result {
                Ok(0) => {}
                Ok(deleted) => tracing::info!(store = %target, deleted, "Deleted old jobs (store retention)."),
                Err(error) => tracing::warn!(store = %target, %error, "Cannot apply the store's retention."),
            }
        }));
    }

    /// Without a connection: takes the one a background attempt made, or
    /// starts an attempt (at most every [`super::RETRY_EVERY`]). Never
    /// waits for PostgreSQL.
    fn reconnect(&mut self) {
        if self.client.is_some() {
            return;
        }
        match self.reconnecting.take() {
            Some(attempt) if attempt.is_finished() => match self.runtime.block_on(attempt) {
                Ok(Ok(client)) => {
                    tracing::warn!(store = %self.target, "PostgreSQL answers again.");
                    self.client = Some(client);
                }
                Ok(Err(error)) => tracing::debug!(%error, "PostgreSQL is still unreachable."),
                Err(error) => tracing::warn!(%error, "A connection attempt to PostgreSQL failed."),
            },
            Some(attempt) => self.reconnecting = Some(attempt),
            None if self.last_try.elapsed() >= super::RETRY_EVERY => {
                self.last_try = std::time::Instant::now();
                let target = self.target.clone();
                self.reconnecting = Some(self.runtime.spawn(async move { connect_and_migrate(&target).await }));
            }
            None => {}
        }
    }

    /// Once connected, moves what the spool holds into PostgreSQL and
    /// empties it.
    fn drain(&mut self) {
        self.reconnect();
        if self.client.is_none() {
            return;
        }
        if self.spool.is_empty() {
            self.reachable();
            return;
        }
        let records = match self.spool.read() {
            Ok(records) => records,
            Err(error) => {
                tracing::error!(%error, "Cannot read the spool; it stays, and is tried again.");
                return;
            }
        };
        let name = self.name.get().cloned();
        let Some(client) = self.client.as_mut() else { return };
        let mut refused = Vec::new();
        for chunk in records.chunks(PG_BATCH) {
            let result = self.runtime.block_on(async {
                tokio::time::timeout(COMMIT_TIMEOUT, commit(client, chunk, name.as_deref(), Fence::Tell)).await
            });
            match result {
                // Spooled rows were acknowledged already: a stale
                // session's rows are recorded all the same, the session
                // is logged and dropped (README "Fencing").
                Ok(Ok(fenced)) => refused.extend(fenced),
                Ok(Err(error)) if !unreachable(&error) => {
                    tracing::error!(store = %self.target, error = %describe(&error), records = chunk.len(), "PostgreSQL refuses spooled records; they are dropped.");
                }
                Ok(Err(error)) => {
                    tracing::warn!(store = %self.target, error = %describe(&error), "PostgreSQL went away while draining the spool; it is tried again.");
                    self.client = None;
                    self.last_try = std::time::Instant::now();
                    self.tell_fenced(&refused, Fence::Tell);
                    return;
                }
                Err(_) => {
                    tracing::warn!(store = %self.target, "PostgreSQL did not commit in time while draining the spool; it is tried again.");
                    self.client = None;
                    self.last_try = std::time::Instant::now();
                    self.tell_fenced(&refused, Fence::Tell);
                    return;
                }
            }
        }
        self.tell_fenced(&refused, Fence::Tell);
        match self.spool.clear() {
            Ok(()) => {
                tracing::warn!(store = %self.target, records = records.len(), "Drained the spool into PostgreSQL.");
                self.reachable();
            }
            Err(error) => tracing::error!(%error, "Cannot empty the drained spool; it is replayed (idempotently)."),
        }
    }
}

/// Reading the PostgreSQL store, from blocking code (the CLI, tests): the
/// [`super::records::Records`] of this backend.
pub struct PgReader {
    target: PgTarget,
    runtime: tokio::runtime::Runtime,
    client: Client,
}

impl std::fmt::Debug for PgReader {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "PgReader({})", self.target)
    }
}

impl PgReader {
    /// Connects. Blocking; not from a runtime's thread.
    pub fn open(target: &PgTarget) -> Result<PgReader, PgError> {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(|source| PgError::Thread { target: target.shown.clone(), source })?;
        let client = runtime.block_on(target.connect())?;
        let found: Option<i32> = runtime
            .block_on(async {
                match client.query_opt("SELECT version FROM halite_schema", &[]).await {
                    Ok(row) => Ok(row.map(|row| row.get(0))),
                    // No schema yet: nothing recorded.
                    Err(error) if error.code() == Some(&tokio_postgres::error::SqlState::UNDEFINED_TABLE) => Ok(None),
                    Err(error) => Err(error),
                }
            })
            .map_err(|source| PgError::Postgres { target: target.shown.clone(), source })?;
        if let Some(found) = found.filter(|&v| v > SCHEMA_VERSION) {
            return Err(PgError::TooNew { target: target.shown.clone(), found });
        }
        Ok(PgReader { target: target.clone(), runtime, client })
    }

    fn query(
        &self,
        sql: &str,
        params: &[&(dyn tokio_postgres::types::ToSql + Sync)],
    ) -> Result<Vec<tokio_postgres::Row>, PgError> {
        self.runtime
            .block_on(self.client.query(sql, params))
            .map_err(|source| PgError::Postgres { target: self.target.shown.clone(), source })
    }

    /// The newest `limit` jobs: the unfiltered job list.
    pub fn list(&self, limit: u32) -> Result<Vec<JobSummary>, PgError> {
        self.list_filtered(&super::JobFilter { limit, ..Default::default() })
    }

    /// As `Reader::list_filtered` (halite.db): the jobs `filter` picks,
    /// newest first, whichever master ran them (the API's job lists).
    pub fn list_filtered(&self, filter: &super::JobFilter) -> Result<Vec<JobSummary>, PgError> {
        let rows = self.query(
            "SELECT j.jid, j.created_us, j.cause, j.reactor, j.target, j.states, j.test,
                (SELECT string_agg(agent, ',' ORDER BY agent) FROM job_agents a WHERE a.jid = j.jid),
                (SELECT count(*) FROM job_results r WHERE r.jid = j.jid AND r.outcome = 'changed'),
                (SELECT count(*) FROM job_results r WHERE r.jid = j.jid AND r.outcome = 'would_change'),
                (SELECT count(*) FROM job_results r WHERE r.jid = j.jid AND r.outcome = 'failed'),
                (SELECT count(*) FROM job_results r WHERE r.jid = j.jid AND r.outcome = 'unchanged'),
                (SELECT count(*) FROM job_agents a WHERE a.jid = j.jid AND a.status = 'no_answer'),
                (SELECT count(*) FROM job_agents a WHERE a.jid = j.jid AND a.status = 'waiting')
             FROM jobs j
             WHERE ($1::text IS NULL OR EXISTS (SELECT 1 FROM job_agents a WHERE a.jid = j.jid AND a.agent = $1))
               AND ($2::text IS NULL OR left(j.cause, length($2)) = $2)
               AND ($3::text IS NULL OR EXISTS
                    (SELECT 1 FROM json_array_elements_text(j.states::json) s WHERE s = $3))
               AND ($4::text IS NULL
                    OR EXISTS (SELECT 1 FROM job_results r WHERE r.jid = j.jid AND r.outcome = $4)
                    OR EXISTS (SELECT 1 FROM job_agents a WHERE a.jid = j.jid AND a.status = $4))
               AND ($5::bigint IS NULL OR j.created_us >= $5)
               AND ($6::bigint IS NULL OR j.created_us < $6)
             ORDER BY j.created_us DESC, j.jid DESC LIMIT $7",
            &[
                &filter.agent,
                &filter.cause,
                &filter.state,
                &filter.outcome,
                &filter.since_us,
                &filter.until_us,
                &i64::from(filter.limit),
            ],
        )?;
        Ok(rows.iter().map(job_summary).collect())
    }

    /// As `Reader::reactions_since` (halite.db): the jobs reactors started
    /// since `since_us`, those that failed, and of those the ones an event
    /// caused. One query on `jobs_by_time`.
    pub fn reactions_since(&self, since_us: i64) -> Result<super::Reactions, PgError> {
        let rows = self.query(
            "SELECT count(*), coalesce(sum(failed::int), 0), coalesce(sum((failed AND on_event)::int), 0) FROM (
                SELECT left(j.cause, 6) = 'event:' AS on_event,
                    EXISTS (SELECT 1 FROM job_results r WHERE r.jid = j.jid AND r.outcome = 'failed')
                    OR EXISTS (SELECT 1 FROM job_agents a WHERE a.jid = j.jid AND a.status = 'no_answer')
                    AS failed
                FROM jobs j WHERE j.created_us >= $1 AND j.reactor IS NOT NULL) AS reactions",
            &[&since_us],
        )?;
        Ok(rows.first().map_or_else(super::Reactions::default, |row| super::Reactions {
            fired: row.get(0),
            failed: row.get(1),
            failed_on_event: row.get(2),
        }))
    }

    pub fn job(&self, jid: &str) -> Result<Option<(JobRecord, Report)>, PgError> {
        let pattern = format!("{}%", jid.replace(['%', '_'], ""));
        let matches = self.query(
            "SELECT jid, created_us, cause, reactor, target, states, test FROM jobs WHERE jid LIKE $1 LIMIT 2",
            &[&pattern],
        )?;
        if matches.len() != 1 {
            return Ok(None);
        }
        let job = job_record(&matches[0]);
        let agents =
            self.query("SELECT agent, status, error FROM job_agents WHERE jid = $1 ORDER BY agent", &[&job.jid])?;
        let mut report = Report { test: job.test, agents: Vec::new() };
        for row in agents {
            let (agent, status, error): (String, String, Option<String>) = (row.get(0), row.get(1), row.get(2));
            let answer = match status.as_str() {
                "answered" => {
                    let states = self
                        .query(
                            "SELECT state, kind, outcome, changes, error, diff, duration_us FROM job_results
                             WHERE jid = $1 AND agent = $2 ORDER BY seq",
                            &[&job.jid, &agent],
                        )?
                        .iter()
                        .map(|row| StateReport {
                            id: row.get(0),
                            kind: row.get(1),
                            outcome: OutcomeKind::parse(row.get(2)).unwrap_or(OutcomeKind::Failed),
                            changes: serde_json::from_str(row.get(3)).unwrap_or_default(),
                            error: row.get(4),
                            diff: row.get(5),
                            duration_us: u64::try_from(row.get::<_, i64>(6)).unwrap_or(0),
                        })
                        .collect();
                    Answer::Answered { states }
                }
                "waiting" => {
                    Answer::NoAnswer { error: "no answer recorded (still running, or the master stopped)".into() }
                }
                _ => Answer::NoAnswer { error: error.unwrap_or_else(|| "did not answer".into()) },
            };
            report.agents.push(AgentReport { agent, jid: Some(job.jid.clone()), answer });
        }
        Ok(Some((job, report)))
    }

    pub fn unanswered(&self) -> Result<Vec<(String, String)>, PgError> {
        let rows = self.query("SELECT agent, jid FROM job_agents WHERE status != 'answered'", &[])?;
        Ok(rows.iter().map(|row| (row.get(0), row.get(1))).collect())
    }

    pub fn count_prefix(&self, jid: &str) -> Result<i64, PgError> {
        let pattern = format!("{}%", jid.replace(['%', '_'], ""));
        Ok(self.query("SELECT count(*) FROM jobs WHERE jid LIKE $1", &[&pattern])?[0].get(0))
    }

    pub fn agent_facts(&self) -> Result<Vec<(String, serde_json::Value)>, PgError> {
        let rows = self.query("SELECT agent, facts FROM agent_facts ORDER BY agent", &[])?;
        Ok(rows
            .iter()
            .map(|row| (row.get(0), serde_json::from_str(row.get(1)).unwrap_or(serde_json::Value::Null)))
            .collect())
    }

    /// Every recorded event of `agent` (all agents when empty), oldest
    /// first.
    pub fn events(&self, agent: &str) -> Result<Vec<EventRow>, PgError> {
        let rows = self.query(
            "SELECT id, agent, tag, time_us, data, master, epoch FROM events WHERE $1 = '' OR agent = $1 ORDER BY time_us, id",
            &[&agent],
        )?;
        Ok(rows
            .iter()
            .map(|row| EventRow {
                id: row.get(0),
                agent: row.get(1),
                tag: row.get(2),
                time_us: row.get(3),
                data: row.get(4),
                master: row.get(5),
                epoch: row.get(6),
            })
            .collect())
    }
}

impl PgReader {
    /// The newest `limit` receipts (of `agent`, or all), newest first: as
    /// `receipts::Query::list` on halite.db.
    pub fn receipts(&self, agent: Option<&str>, limit: u32) -> Result<Vec<Receipt>, PgError> {
        let rows = self.query(
            "SELECT jid, agent, state, path, kind, cause, cause_event, hash_before, hash_after, latency_us, at_us
             FROM receipts WHERE $1::text IS NULL OR agent = $1 ORDER BY at_us DESC, jid DESC LIMIT $2",
            &[&agent, &i64::from(limit)],
        )?;
        Ok(rows
            .iter()
            .map(|row| Receipt {
                jid: row.get(0),
                agent: row.get(1),
                state: row.get(2),
                path: row.get(3),
                kind: ReceiptKind::parse(row.get(4)),
                cause: row.get(5),
                cause_event: row.get(6),
                hash_before: row.get(7),
                hash_after: row.get(8),
                latency_us: row.get(9),
                at_us: row.get(10),
            })
            .collect())
    }

    /// Corrective receipts per agent and path, the most restored first.
    pub fn drift_counts(&self, agent: Option<&str>) -> Result<Vec<DriftCount>, PgError> {
        let rows = self.query(
            "SELECT agent, path, count(*), max(at_us) FROM receipts
             WHERE kind = 'corrective' AND ($1::text IS NULL OR agent = $1)
             GROUP BY agent, path ORDER BY count(*) DESC, agent, path",
            &[&agent],
        )?;
        Ok(rows
            .iter()
            .map(|row| DriftCount { agent: row.get(0), path: row.get(1), drifts: row.get(2), last_us: row.get(3) })
            .collect())
    }

    /// The corrective receipts since `since_us`: how many, and their
    /// latencies ascending (as `receipts::Query::restores_since`).
    pub fn restores_since(&self, since_us: i64) -> Result<(u64, Vec<i64>), PgError> {
        let rows = self.query(
            "SELECT latency_us FROM receipts WHERE at_us >= $1 AND kind = 'corrective'
             ORDER BY latency_us IS NULL, latency_us",
            &[&since_us],
        )?;
        let all: Vec<Option<i64>> = rows.iter().map(|row| row.get(0)).collect();
        let count = u64::try_from(all.len()).unwrap_or(u64::MAX);
        Ok((count, all.into_iter().flatten().collect()))
    }
}

/// A row of the job lists' query (`list`, `list_filtered`): the job's
/// columns, then its agents and the counts by outcome.
fn job_summary(row: &tokio_postgres::Row) -> JobSummary {
    let agents: Option<String> = row.get(7);
    JobSummary {
        job: job_record(row),
        agents: agents.map(|a| a.split(',').map(str::to_owned).collect()).unwrap_or_default(),
        changed: row.get(8),
        would_change: row.get(9),
        failed: row.get(10),
        unchanged: row.get(11),
        no_answer: row.get(12),
        waiting: row.get(13),
    }
}

fn job_record(row: &tokio_postgres::Row) -> JobRecord {
    let states: String = row.get(5);
    JobRecord {
        jid: row.get(0),
        created_us: row.get(1),
        cause: row.get(2),
        reactor: row.get(3),
        target: row.get(4),
        states: serde_json::from_str(&states).unwrap_or_default(),
        test: row.get(6),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_are_checked_and_never_shown_with_a_password() {
        let target =
            PgTarget::new("postgres://halite@db.example:6432/fleet?sslmode=disable", Some("s3cret".into()), None)
                .unwrap();
        assert_eq!(target.to_string(), "postgres://halite@db.example:6432/fleet");
        assert!(!format!("{target:?}").contains("s3cret"));
        let error = PgTarget::new("postgres://halite:s3cret@db/fleet", None, None).unwrap_err().to_string();
        assert!(error.contains("password_file") && !error.contains("s3cret"), "{error}");
        let error = PgTarget::new("postgres://halite@db/fleet?sslmode=require", None, None).unwrap_err().to_string();
        assert!(error.contains("ca_file"), "{error}");
        let error =
            PgTarget::new("postgres://halite:s3cret@db/fleet?sslmode=bogus", None, None).unwrap_err().to_string();
        assert!(!error.contains("s3cret"), "{error}");
        assert_eq!(redact("postgres://u:p@h/d"), "postgres://u@h/d");
    }

    #[test]
    fn every_connection_asks_the_server_to_drop_it_when_partitioned_away() {
        let target = PgTarget::new("postgres://halite@db/fleet?sslmode=disable", None, None).unwrap();
        assert_eq!(target.config.get_options(), Some(SERVER_KEEPALIVES));
        // Options the URL gives are kept, ours after them.
        let target =
            PgTarget::new("postgres://halite@db/fleet?sslmode=disable&options=-c%20search_path%3Dhalite", None, None)
                .unwrap();
        assert_eq!(target.config.get_options(), Some(format!("-c search_path=halite {SERVER_KEEPALIVES}").as_str()));
    }

    #[test]
    fn connection_failures_are_told_from_refused_records() {
        // (SQLSTATE, spooled and retried?)
        let cases = [
            (None, true),
            (Some("08006"), true),
            (Some("57P01"), true),
            (Some("53100"), true),
            (Some("40001"), true),
            (Some("23505"), false),
            (Some("22021"), false),
            (Some("4"), false),
        ];
        for (code, expected) in cases {
            assert_eq!(unreachable_code(code), expected, "{code:?}");
        }
    }
}

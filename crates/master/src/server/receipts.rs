//! Remediation receipts: for every job that changed a managed file, what it
//! changed and why. A receipt names the job and its cause (the drift event,
//! the operator's command line, `reload`, `connected`, `schedule:<name>`),
//! the file's sha256 before and after, the latency from the drift event's
//! timestamp (the agent's clock, when the beacon saw it) to the result's
//! arrival at the master, and whether the change was **corrective** or
//! **intentional**:
//!
//! - `intentional`: an operator's `apply`, or a job whose desired content for
//!   the file differs from what the master last sent that agent for it (the
//!   tree changed), or the first time this master sends the file;
//! - `corrective`: any other change: the tree still wants what it wanted, so
//!   the host had drifted (a reactor's restore, a scheduled run, the
//!   start-up apply of an agent that drifted while away).
//!
//! [`Receipts`] keeps, per job sent with file-like states (`file.managed`
//! and the other kinds with a `halite_state::kinds::FileLike` view), what
//! the receipt needs from the job and its cause, until the result arrives
//! ([`Receipts::returned`]); at most [`TRACKED_JOBS`] jobs (the oldest is
//! forgotten, and its result makes no receipt). A result for a job sent
//! before the master restarted makes none either. Receipts are rows of the
//! store's `receipts` table (migration v5), deleted with their job by the
//! store's retention; [`Query`] reads them, and the per-file drift count
//! (what flaps: corrective receipts per agent and path). With
//! `store: postgres://…` they are rows of PostgreSQL's `receipts` instead,
//! written by its batched writer (spooled while it is unreachable) and
//! read through `store/records.rs`, so every master shows every receipt.
//!
//! The hash before is the drift event's `sha256` when the event was about
//! the file (all 64 digits); otherwise the 12-digit prefix the state's
//! change line carries (`content of P: sha256 abc… -> def…`); none when the
//! job created the file. The hash after is the sha256 of the content the job
//! carried, computed by the master.

use std::collections::{HashMap, VecDeque};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use halite_proto::{Event, Id, Job, JobResult, Outcome, Sha256};
use rusqlite::{Connection, params};
use serde::{Deserialize, Serialize};

/// Jobs whose receipts are waited for at most; the oldest is forgotten.
pub const TRACKED_JOBS: usize = 4096;

/// Why a file changed (module docs).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum ReceiptKind {
    /// Drift restored: the tree wanted what it wanted before.
    Corrective,
    /// The tree changed, or an operator applied.
    Intentional,
}

impl ReceiptKind {
    pub fn as_str(self) -> &'static str {
        match self {
            ReceiptKind::Corrective => "corrective",
            ReceiptKind::Intentional => "intentional",
        }
    }

    pub fn parse(text: &str) -> ReceiptKind {
        if text == "corrective" { ReceiptKind::Corrective } else { ReceiptKind::Intentional }
    }
}

/// One file one job changed on one agent.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Receipt {
    pub jid: String,
    pub agent: String,
    /// The state's id in its state file.
    pub state: String,
    /// The file, as authored (not under the agent's `root`).
    pub path: String,
    pub kind: ReceiptKind,
    /// The job's cause, as `halite-master jobs` shows it.
    pub cause: String,
    /// The event that caused the job, if one did.
    pub cause_event: Option<String>,
    /// sha256 (hex) of the file before; a 12-digit prefix when only the
    /// agent's change line told it; none when the file did not exist.
    pub hash_before: Option<String>,
    /// sha256 (hex) of the content the job wrote.
    pub hash_after: Option<String>,
    /// From the cause event's timestamp to the result's arrival at the
    /// master; none for a job no event caused.
    pub latency_us: Option<i64>,
    /// When the result arrived (master's clock, µs since the epoch).
    pub at_us: i64,
}

/// How often a file drifted and was restored: corrective receipts per
/// agent and path, within the store's retention.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct DriftCount {
    pub agent: String,
    pub path: String,
    pub drifts: i64,
    pub last_us: i64,
}

/// The cause event, as much of it as a receipt needs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Cause {
    pub id: Id,
    /// The event's timestamp (where it was raised).
    pub time_us: i64,
    /// `data.path` and `data.sha256` of a file beacon's event.
    pub path: Option<String>,
    pub sha256: Option<String>,
}

impl Cause {
    pub fn of(event: &Event) -> Cause {
        let text = |key: &str| event.data.get(key).and_then(|v| v.as_str()).map(str::to_owned);
        Cause { id: event.id, time_us: event.time_us, path: text("path"), sha256: text("sha256") }
    }
}

/// A file-like state of a job sent.
#[derive(Debug, Clone)]
struct FileSent {
    state: String,
    path: String,
    desired: String,
    kind: ReceiptKind,
}

#[derive(Debug)]
struct Sent {
    agent: String,
    cause: String,
    event: Option<Cause>,
    files: Vec<FileSent>,
}

#[derive(Debug, Default)]
struct Inner {
    sent: HashMap<Id, Sent>,
    /// Jobs in `sent`, oldest first (some already gone from `sent`).
    order: VecDeque<Id>,
    /// Per (agent, path): the sha256 of the content last sent. Bounded by
    /// the fleet times its managed files.
    desired: HashMap<(String, String), String>,
    /// Per agent: its last receipt, for `agents` and the API.
    last: HashMap<String, Receipt>,
}

/// Jobs waiting for their receipts (module docs). Cloning is cheap.
#[derive(Debug, Clone, Default)]
pub struct Receipts {
    inner: Arc<Mutex<Inner>>,
}

/// Whether a change is corrective: an operator's apply never is, nor a job
/// whose desired content is new (the tree changed, or first sent).
pub fn classify(operator: bool, desired_changed: bool) -> ReceiptKind {
    if operator || desired_changed { ReceiptKind::Intentional } else { ReceiptKind::Corrective }
}

/// The file's hash before the job: the cause event's when it was about this
/// file, else the prefix in the state's change line, else none (created).
pub fn hash_before(path: &str, cause: Option<&Cause>, changes: &[String]) -> Option<String> {
    if let Some(cause) = cause
        && cause.path.as_deref() == Some(path)
        && let Some(sha256) = &cause.sha256
    {
        return Some(sha256.clone());
    }
    // The agent names the file under its `root`: the authored path ends it.
    let marker = format!("{path}: sha256 ");
    let line = changes.iter().find(|c| c.starts_with("content of ") && c.contains(&marker))?;
    let hashes = line.rsplit_once(": sha256 ")?.1;
    let (before, _) = hashes.split_once(" -> ")?;
    Some(before.to_owned())
}

impl Receipts {
    /// A job goes to `agent`: its file-like states are noted, unless it is
    /// a test run (which changes nothing).
    pub fn sent(&self, agent: &str, job: &Job, cause: &str, event: Option<Cause>) {
        if job.test {
            return;
        }
        let operator = cause.starts_with("operator:");
        // Hashed before the lock is taken: the lock is held for lookups only.
        let views: Vec<(String, String, String)> = job
            .states
            .iter()
            .filter_map(|call| {
                let view = halite_state::kinds::file_like(&call.kind).and_then(|file| (file.view)(&call.args))?;
                Some((call.id.clone(), view.path.to_owned(), Sha256::of(view.contents).to_hex()))
            })
            .collect();
        if views.is_empty() {
            return;
        }
        let mut inner = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        let mut files = Vec::new();
        for (state, path, desired) in views {
            let previous = inner.desired.insert((agent.to_owned(), path.clone()), desired.clone());
            let kind = classify(operator, previous.as_deref() != Some(desired.as_str()));
            files.push(FileSent { state, path, desired, kind });
        }
        if files.is_empty() {
            return;
        }
        inner.sent.insert(job.id, Sent { agent: agent.to_owned(), cause: cause.to_owned(), event, files });
        inner.order.push_back(job.id);
        while inner.order.len() > TRACKED_JOBS {
            if let Some(old) = inner.order.pop_front() {
                inner.sent.remove(&old);
            }
        }
    }

    /// The job will bring no result (no answer, the agent went away).
    pub fn forget(&self, job: Id) {
        self.inner.lock().unwrap_or_else(|p| p.into_inner()).sent.remove(&job);
    }

    /// `agent`'s result for a job arrived at `now_us`: the receipts of the
    /// files it changed.
    pub fn returned(&self, agent: &str, result: &JobResult, now_us: i64) -> Vec<Receipt> {
        let mut inner = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        let Some(sent) = inner.sent.remove(&result.job) else { return Vec::new() };
        if sent.agent != agent {
            return Vec::new();
        }
        let mut receipts = Vec::new();
        for state in &result.results {
            let Outcome::Changed { changes } = &state.outcome else { continue };
            let Some(file) = sent.files.iter().find(|f| f.state == state.id) else { continue };
            receipts.push(Receipt {
                jid: result.job.to_string(),
                agent: agent.to_owned(),
                state: file.state.clone(),
                path: file.path.clone(),
                kind: file.kind,
                cause: sent.cause.clone(),
                cause_event: sent.event.as_ref().map(|e| e.id.to_string()),
                hash_before: hash_before(&file.path, sent.event.as_ref(), changes),
                hash_after: Some(file.desired.clone()),
                latency_us: sent.event.as_ref().map(|e| now_us.saturating_sub(e.time_us).max(0)),
                at_us: now_us,
            });
        }
        if let Some(last) = receipts.last() {
            inner.last.insert(agent.to_owned(), last.clone());
        }
        receipts
    }

    /// `agent`'s last receipt since the master started.
    pub fn last(&self, agent: &str) -> Option<Receipt> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner()).last.get(agent).cloned()
    }
}

/// Writes receipts in the store's writer transaction.
pub(crate) fn insert(tx: &Connection, receipt: &Receipt) -> rusqlite::Result<()> {
    tx.prepare_cached(
        "INSERT OR REPLACE INTO receipts
           (jid, agent, state, path, kind, cause, cause_event, hash_before, hash_after, latency_us, at_us)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11)",
    )?
    .execute(params![
        receipt.jid,
        receipt.agent,
        receipt.state,
        receipt.path,
        receipt.kind.as_str(),
        receipt.cause,
        receipt.cause_event,
        receipt.hash_before,
        receipt.hash_after,
        receipt.latency_us,
        receipt.at_us
    ])?;
    Ok(())
}

/// Why receipts could not be read; names the store.
#[derive(Debug, thiserror::Error)]
#[error("cannot read receipts from the master's store {path}: {source}")]
pub struct ReceiptsError {
    pub path: PathBuf,
    pub source: rusqlite::Error,
}

/// Reads receipts from a store connection (`store::Reader::receipts`).
#[derive(Debug)]
pub struct Query<'a> {
    pub(crate) connection: &'a Connection,
    pub(crate) path: &'a Path,
}

impl Query<'_> {
    fn err(&self) -> impl Fn(rusqlite::Error) -> ReceiptsError + '_ {
        |source| ReceiptsError { path: self.path.to_path_buf(), source }
    }

    /// Whether the store has receipts at all (older than v5: none).
    fn has_table(&self) -> Result<bool, ReceiptsError> {
        self.connection
            .query_row("SELECT count(*) > 0 FROM sqlite_master WHERE name = 'receipts'", [], |row| row.get(0))
            .map_err(self.err())
    }

    /// The newest `limit` receipts, of `agent` or of all, newest first.
    pub fn list(&self, agent: Option<&str>, limit: u32) -> Result<Vec<Receipt>, ReceiptsError> {
        if !self.has_table()? {
            return Ok(Vec::new());
        }
        let mut statement = self
            .connection
            .prepare(
                "SELECT jid, agent, state, path, kind, cause, cause_event, hash_before, hash_after, latency_us, at_us
                 FROM receipts WHERE ?1 IS NULL OR agent = ?1 ORDER BY at_us DESC, jid DESC LIMIT ?2",
            )
            .map_err(self.err())?;
        let rows = statement
            .query_map(params![agent, limit], |row| {
                Ok(Receipt {
                    jid: row.get(0)?,
                    agent: row.get(1)?,
                    state: row.get(2)?,
                    path: row.get(3)?,
                    kind: ReceiptKind::parse(&row.get::<_, String>(4)?),
                    cause: row.get(5)?,
                    cause_event: row.get(6)?,
                    hash_before: row.get(7)?,
                    hash_after: row.get(8)?,
                    latency_us: row.get(9)?,
                    at_us: row.get(10)?,
                })
            })
            .map_err(self.err())?;
        rows.collect::<Result<_, _>>().map_err(self.err())
    }

    /// The drift → restore latencies (µs, ascending) of the corrective
    /// receipts since `since_us` (by the master's clock), and how many
    /// there are (some may have no latency: no drift event caused them).
    /// One query on `receipts_by_time` (migration v7).
    pub fn restores_since(&self, since_us: i64) -> Result<(u64, Vec<i64>), ReceiptsError> {
        if !self.has_table()? {
            return Ok((0, Vec::new()));
        }
        let mut statement = self
            .connection
            .prepare(
                "SELECT latency_us FROM receipts WHERE at_us >= ?1 AND kind = 'corrective'
                 ORDER BY latency_us IS NULL, latency_us",
            )
            .map_err(self.err())?;
        let rows = statement.query_map([since_us], |row| row.get::<_, Option<i64>>(0)).map_err(self.err())?;
        let all = rows.collect::<Result<Vec<_>, _>>().map_err(self.err())?;
        let count = u64::try_from(all.len()).unwrap_or(u64::MAX);
        Ok((count, all.into_iter().flatten().collect()))
    }

    /// Corrective receipts per agent and path (of `agent`, or all), the
    /// most restored first: what flaps.
    pub fn drift_counts(&self, agent: Option<&str>) -> Result<Vec<DriftCount>, ReceiptsError> {
        if !self.has_table()? {
            return Ok(Vec::new());
        }
        let mut statement = self
            .connection
            .prepare(
                "SELECT agent, path, count(*), max(at_us) FROM receipts
                 WHERE kind = 'corrective' AND (?1 IS NULL OR agent = ?1)
                 GROUP BY agent, path ORDER BY count(*) DESC, agent, path",
            )
            .map_err(self.err())?;
        let rows = statement
            .query_map(params![agent], |row| {
                Ok(DriftCount { agent: row.get(0)?, path: row.get(1)?, drifts: row.get(2)?, last_us: row.get(3)? })
            })
            .map_err(self.err())?;
        rows.collect::<Result<_, _>>().map_err(self.err())
    }
}

#[cfg(test)]
mod tests {
    use halite_proto::{StateCall, StateResult, Value};

    use super::*;

    #[test]
    fn an_operator_or_a_new_desired_content_is_intentional_anything_else_corrective() {
        // (operator, desired content changed, kind)
        let table = [
            (false, false, ReceiptKind::Corrective),
            (false, true, ReceiptKind::Intentional),
            (true, false, ReceiptKind::Intentional),
            (true, true, ReceiptKind::Intentional),
        ];
        for (operator, changed, kind) in table {
            assert_eq!(classify(operator, changed), kind, "operator {operator}, changed {changed}");
        }
    }

    #[test]
    fn the_hash_before_comes_from_the_event_about_the_file_else_the_change_line() {
        let cause =
            |path: &str| Cause { id: Id::new(), time_us: 0, path: Some(path.into()), sha256: Some("ab".repeat(32)) };
        let changes = vec!["content of /etc/motd: sha256 0123456789ab -> ba9876543210".to_owned()];
        assert_eq!(hash_before("/etc/motd", Some(&cause("/etc/motd")), &changes), Some("ab".repeat(32)));
        assert_eq!(hash_before("/etc/motd", Some(&cause("/etc/other")), &changes).as_deref(), Some("0123456789ab"));
        assert_eq!(hash_before("/etc/motd", None, &changes).as_deref(), Some("0123456789ab"));
        assert_eq!(hash_before("/etc/motd", None, &["created /etc/motd (3 bytes)".to_owned()]), None);
        let rooted = vec!["content of /srv/root/etc/motd: sha256 0123456789ab -> ba9876543210".to_owned()];
        assert_eq!(hash_before("/etc/motd", None, &rooted).as_deref(), Some("0123456789ab"), "under the agent's root");
    }

    fn job(content: &str, test: bool) -> Job {
        let args = Value::map().with("path", "/etc/motd").with("contents", Value::Bytes(content.as_bytes().to_vec()));
        let call = StateCall::new("motd", "file.managed", args);
        Job { id: Id::new(), cause_event: None, test, states: vec![call] }
    }

    fn changed(job: &Job) -> JobResult {
        let changes = vec!["content of /etc/motd: sha256 0123456789ab -> ba9876543210".to_owned()];
        let result = StateResult {
            id: "motd".into(),
            kind: "file.managed".into(),
            outcome: Outcome::Changed { changes },
            diff: None,
            duration_us: 1,
        };
        JobResult { job: job.id, results: vec![result] }
    }

    #[test]
    fn a_restore_of_unchanged_desired_content_is_corrective_with_its_latency() {
        let receipts = Receipts::default();
        let first = job("hello\n", false);
        receipts.sent("web01", &first, "connected", None);
        let made = receipts.returned("web01", &changed(&first), 10);
        assert_eq!(made.len(), 1);
        assert_eq!(made[0].kind, ReceiptKind::Intentional, "first sent");
        assert_eq!(made[0].latency_us, None);
        let restore = job("hello\n", false);
        let cause =
            Cause { id: Id::new(), time_us: 1_000, path: Some("/etc/motd".into()), sha256: Some("cd".repeat(32)) };
        receipts.sent("web01", &restore, &format!("event:{}", cause.id), Some(cause.clone()));
        assert!(receipts.returned("web02", &changed(&restore), 5_000).is_empty(), "another agent's result");
        receipts.sent("web01", &restore, &format!("event:{}", cause.id), Some(cause.clone()));
        let made = receipts.returned("web01", &changed(&restore), 5_000);
        assert_eq!(made[0].kind, ReceiptKind::Corrective);
        assert_eq!(made[0].latency_us, Some(4_000));
        assert_eq!(made[0].hash_before, Some("cd".repeat(32)));
        assert_eq!(made[0].hash_after, Some(Sha256::of(b"hello\n").to_hex()));
        assert_eq!(made[0].cause_event, Some(cause.id.to_string()));
        assert_eq!(receipts.last("web01"), Some(made[0].clone()));
        let operator = job("hello\n", false);
        receipts.sent("web01", &operator, "operator:halite-master apply web01", None);
        assert_eq!(receipts.returned("web01", &changed(&operator), 6_000)[0].kind, ReceiptKind::Intentional);
        let test = job("other\n", true);
        receipts.sent("web01", &test, "operator:x", None);
        assert!(receipts.returned("web01", &changed(&test), 7_000).is_empty(), "a test run is no receipt");
    }

    #[test]
    fn jobs_waited_for_are_bounded() {
        let receipts = Receipts::default();
        let jobs: Vec<Job> = (0..=TRACKED_JOBS).map(|_| job("x", false)).collect();
        for job in &jobs {
            receipts.sent("web01", job, "schedule:x", None);
        }
        assert!(receipts.returned("web01", &changed(&jobs[0]), 1).is_empty(), "the oldest is forgotten");
        assert_eq!(receipts.returned("web01", &changed(&jobs[1]), 1).len(), 1);
        assert_eq!(receipts.inner.lock().unwrap().sent.len(), TRACKED_JOBS - 1);
    }
}

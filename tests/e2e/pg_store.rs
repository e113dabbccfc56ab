//! The store on both backends: one conformance suite run against halite.db
//! and a real PostgreSQL (`harness/postgres.rs`), PostgreSQL's spool
//! through an outage, and real masters with `store: postgres://…`.

use std::path::{Path, PathBuf};

use halite_e2e::postgres::Postgres;
use halite_e2e::{Fleet, WAIT, example_file};
use halite_master::config::{RoleConfig, Verb};
use halite_master::server::access::{Access, AccessError};
use halite_master::server::audit::{self, Broken, Entry};
use halite_master::server::receipts::{DriftCount, Receipt, ReceiptKind};
use halite_master::server::store::postgres::PgTarget;
use halite_master::server::store::records::{self, Records};
use halite_master::server::store::spool::EventRow;
use halite_master::server::store::{JobRecord, Retention, Store};
use halite_proto::{Outcome, StateResult};

/// One backend under test: a fresh, empty store each time.
trait Backend {
    fn name(&self) -> &'static str;
    fn open(&self) -> Store;
    fn records(&self) -> Box<dyn Records>;
    /// The tokens and audit log of master `master` on this store: with
    /// SQLite, every master is the one halite.db; with PostgreSQL, each
    /// has a data dir of its own and they share the database.
    fn access(&self, runtime: &tokio::runtime::Runtime, master: &str) -> Access;
    /// Whether several masters share what [`Backend::access`] gives.
    fn shared(&self) -> bool;
    /// Runs SQL on the store behind halite's back; what it changed, or why not.
    fn sql(&self, runtime: &tokio::runtime::Runtime, sql: &str) -> Result<u64, String>;
    /// The SQL that drops the audit log's append-only trigger (an
    /// attacker with the database's owner rights).
    fn drop_audit_trigger(&self) -> &'static str;
}

/// The roles every case's masters define.
fn roles() -> std::collections::BTreeMap<String, RoleConfig> {
    [("web-ops".to_owned(), RoleConfig { verbs: vec![Verb::Read, Verb::Apply], target: "web*".into() })].into()
}

struct Sqlite {
    dir: tempfile::TempDir,
}

impl Backend for Sqlite {
    fn name(&self) -> &'static str {
        "sqlite"
    }
    fn open(&self) -> Store {
        Store::open(&halite_master::server::store::path(self.dir.path())).unwrap()
    }
    fn records(&self) -> Box<dyn Records> {
        Box::new(
            halite_master::server::store::Reader::open(&halite_master::server::store::path(self.dir.path())).unwrap(),
        )
    }
    fn access(&self, _runtime: &tokio::runtime::Runtime, _master: &str) -> Access {
        let path = halite_master::server::store::path(self.dir.path());
        drop(Store::open(&path).unwrap());
        Access::open(&path, &roles()).unwrap()
    }
    fn shared(&self) -> bool {
        false
    }
    fn sql(&self, _runtime: &tokio::runtime::Runtime, sql: &str) -> Result<u64, String> {
        let connection = rusqlite::Connection::open(halite_master::server::store::path(self.dir.path())).unwrap();
        connection.execute(sql, []).map(|n| n as u64).map_err(|e| e.to_string())
    }
    fn drop_audit_trigger(&self) -> &'static str {
        "DROP TRIGGER audit_append_only_update"
    }
}

struct Pg {
    dir: tempfile::TempDir,
    target: PgTarget,
    /// Stops the masters' token listeners.
    cancel: tokio_util::sync::CancellationToken,
}

impl Drop for Pg {
    fn drop(&mut self) {
        self.cancel.cancel();
    }
}

impl Pg {
    /// A fresh database in `cluster`.
    fn new(cluster: &Postgres) -> Pg {
        let database = cluster.database().unwrap();
        let target = PgTarget::new(&cluster.url(&database), Some(halite_e2e::postgres::PASSWORD.into()), None).unwrap();
        Pg { dir: tempfile::tempdir().unwrap(), target, cancel: tokio_util::sync::CancellationToken::new() }
    }
    fn spool(&self) -> PathBuf {
        halite_master::server::store::spool::path(self.dir.path())
    }
}

impl Backend for Pg {
    fn name(&self) -> &'static str {
        "postgres"
    }
    fn open(&self) -> Store {
        Store::open_postgres(&halite_master::server::store::path(self.dir.path()), self.target.clone(), &self.spool())
            .unwrap()
    }
    fn records(&self) -> Box<dyn Records> {
        records::open_postgres(&self.target).unwrap()
    }
    fn access(&self, runtime: &tokio::runtime::Runtime, master: &str) -> Access {
        let data_dir = self.dir.path().join(master);
        std::fs::create_dir_all(&data_dir).unwrap();
        let path = halite_master::server::store::path(&data_dir);
        if !path.exists() {
            drop(Store::open(&path).unwrap());
        }
        let access = Access::open(&path, &roles()).unwrap();
        runtime.block_on(access.with_postgres(self.target.clone(), &data_dir, self.cancel.clone())).unwrap()
    }
    fn shared(&self) -> bool {
        true
    }
    fn sql(&self, runtime: &tokio::runtime::Runtime, sql: &str) -> Result<u64, String> {
        runtime.block_on(async {
            let client = self.target.connect().await.unwrap();
            client.execute(sql, &[]).await.map_err(|e| halite_master::server::store::postgres::describe(&e))
        })
    }
    fn drop_audit_trigger(&self) -> &'static str {
        "ALTER TABLE audit DISABLE TRIGGER audit_append_only"
    }
}

fn record(jid: &str, cause: &str, created_us: i64) -> JobRecord {
    JobRecord {
        jid: jid.into(),
        created_us,
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

fn event(n: usize, agent: &str) -> EventRow {
    EventRow {
        id: format!("01EVENT{n:05}"),
        agent: agent.into(),
        tag: format!("halite/beacon/{agent}/motd"),
        time_us: i64::try_from(n).unwrap(),
        data: "{\"managed\":true}".into(),
        master: None,
        epoch: None,
    }
}

fn now_us() -> i64 {
    halite_proto::event::now_us()
}

/// One case of the suite.
type Case<B> = fn(&B, &tokio::runtime::Runtime);

/// The suite: every case on a fresh store of `make`'s backend.
fn conformance<B: Backend>(make: impl Fn() -> B) {
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let cases: [(&str, Case<B>); 10] = [
        ("jobs and results read back after a reopen", jobs_and_results_read_back),
        ("each agent's last facts are kept", last_facts_are_kept),
        ("unanswered jobs are listed", unanswered_jobs_are_listed),
        ("history is ordered by the master's clock", history_is_ordered_by_the_masters_clock),
        ("retention deletes old jobs with their results", retention_by_age),
        ("events are recorded once, or not at all", events_are_recorded_once),
        ("a backup is a copy, or names the tool that makes one", backup),
        ("receipts are kept once and read back with their drift counts", receipts_are_kept_once),
        ("tokens are checked, known to every master, and revoked", tokens_are_shared_and_revoked),
        ("the audit log is one chain, append-only, and tampering is named", audit_is_one_chain),
    ];
    for (what, case) in cases {
        let backend = make();
        eprintln!("{}: {what}", backend.name());
        case(&backend, &runtime);
    }
}

fn jobs_and_results_read_back<B: Backend>(backend: &B, runtime: &tokio::runtime::Runtime) {
    let store = backend.open();
    let durable = runtime.block_on(async {
        let now = now_us();
        store.started(record("01A", "operator:halite-master apply web*", now), "web01").await;
        store.started(record("01A", "operator:halite-master apply web*", now), "web02").await;
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
        store.started(record("01B", "event:01XYZ", now + 1), "web01").await;
        store.answered("01B", "web01", vec![result("motd", Outcome::Failed { error: "boom".into() })]).await;
        // A late answer after the timeout replaces the no-answer.
        store.started(record("01C", "connected", now + 2), "web02").await;
        store.no_answer("01C", "web02", "timeout").await;
        let durable = store.answered_durably("01C", "web02", vec![result("motd", Outcome::Unchanged)]).await.unwrap();
        store.close().await;
        durable
    });
    assert!(durable, "{}: the answer is acknowledged once committed", backend.name());
    drop(store);
    // A second writer on the same store (a restarted master) keeps it.
    let store = backend.open();
    runtime.block_on(store.close());
    let records = backend.records();
    let list = records.list(10).unwrap();
    let jids: Vec<&str> = list.iter().map(|j| j.job.jid.as_str()).collect();
    assert_eq!(jids, ["01C", "01B", "01A"], "{}: newest first", backend.name());
    assert_eq!(list[2].agents, ["web01", "web02"]);
    assert_eq!((list[2].changed, list[2].unchanged, list[2].no_answer), (1, 1, 1));
    assert_eq!(list[1].failed, 1);
    assert_eq!((list[0].no_answer, list[0].unchanged), (0, 1), "the late answer counts");
    assert_eq!(records.list(1).unwrap().len(), 1);
    let (job, report) = records.job("01A").unwrap().unwrap();
    assert_eq!(job.cause, "operator:halite-master apply web*");
    assert_eq!(job.states, ["motd"]);
    assert_eq!(report.exit_code(), 3);
    assert_eq!(report.agents[0].states()[0].changes, ["created"]);
    assert_eq!(report.agents[0].states()[0].diff.as_deref(), Some("--- a\n+++ b\n"));
    assert!(records.job("01").unwrap().is_none(), "an ambiguous prefix matches nothing");
    assert_eq!(records.count_prefix("01").unwrap(), 3);
    assert!(records.job("01B").unwrap().is_some());
}

fn last_facts_are_kept<B: Backend>(backend: &B, runtime: &tokio::runtime::Runtime) {
    let store = backend.open();
    runtime.block_on(async {
        store.facts_seen("web01", serde_json::json!({"os": "debian", "cpus": 2}));
        store.facts_seen("db01", serde_json::json!({"os": "rocky"}));
        store.facts_seen("web01", serde_json::json!({"os": "debian", "cpus": 4}));
        store.close().await;
    });
    assert_eq!(
        backend.records().agent_facts().unwrap(),
        [
            ("db01".to_owned(), serde_json::json!({"os": "rocky"})),
            ("web01".to_owned(), serde_json::json!({"os": "debian", "cpus": 4})),
        ]
    );
}

fn unanswered_jobs_are_listed<B: Backend>(backend: &B, runtime: &tokio::runtime::Runtime) {
    let store = backend.open();
    runtime.block_on(async {
        store.started(record("01A", "connected", now_us()), "web01").await;
        store.started(record("01B", "connected", now_us()), "web02").await;
        store.started(record("01C", "connected", now_us()), "web03").await;
        store.answered("01A", "web01", vec![result("motd", Outcome::Unchanged)]).await;
        store.no_answer("01B", "web02", "timeout").await;
        store.close().await;
    });
    let mut unanswered = backend.records().unanswered().unwrap();
    unanswered.sort();
    assert_eq!(unanswered, [("web02".to_owned(), "01B".to_owned()), ("web03".to_owned(), "01C".to_owned())]);
}

fn history_is_ordered_by_the_masters_clock<B: Backend>(backend: &B, runtime: &tokio::runtime::Runtime) {
    let store = backend.open();
    runtime.block_on(async {
        // A job id that sorts last but was made first.
        store.started(record("7ZZZZZZZZZ", "connected", 1_000), "web01").await;
        store.started(record("01B", "connected", 2_000), "web01").await;
        store.close().await;
    });
    let jids: Vec<String> = backend.records().list(10).unwrap().into_iter().map(|j| j.job.jid).collect();
    assert_eq!(jids, ["01B", "7ZZZZZZZZZ"]);
}

fn retention_by_age<B: Backend>(backend: &B, runtime: &tokio::runtime::Runtime) {
    let store = backend.open();
    let day_us = 86_400 * 1_000_000;
    runtime.block_on(async {
        for n in 0..20 {
            let jid = format!("01J{n:05}");
            let created_us = if n < 10 { now_us() - 100 * day_us } else { now_us() - 20 + n };
            store.started(record(&jid, "connected", created_us), "web01").await;
            store.answered(&jid, "web01", vec![result("motd", Outcome::Unchanged)]).await;
        }
        store.retain(Retention { max_age: std::time::Duration::from_secs(90 * 86_400), max_bytes: 1 << 30 });
        store.close().await;
    });
    let records = backend.records();
    let left = records.list(100).unwrap();
    assert_eq!(left.len(), 10, "{}: the 10 old jobs are gone", backend.name());
    assert!(left.iter().all(|j| j.job.created_us > now_us() - 90 * day_us));
    assert!(records.job("01J00003").unwrap().is_none(), "with their results");
    assert!(records.job("01J00013").unwrap().is_some());
}

fn events_are_recorded_once<B: Backend>(backend: &B, runtime: &tokio::runtime::Runtime) {
    let store = backend.open();
    let (first, again) = runtime.block_on(async {
        let first = store.events_durably((0..5).map(|n| event(n, "web01")).collect()).await;
        // A replay (an agent resending after a lost ack, a spool drained
        // twice) overlaps what is recorded.
        let again = store.events_durably((3..8).map(|n| event(n, "web01")).collect()).await;
        store.close().await;
        (first, again)
    });
    let recorded = backend.records().events("").unwrap();
    if store.records_events() {
        assert!(first && again, "durable");
        assert_eq!(recorded, (0..8).map(|n| event(n, "web01")).collect::<Vec<_>>(), "each event once, in order");
        assert_eq!(backend.records().events("db01").unwrap(), []);
    } else {
        // halite.db keeps only ids, in the seen-ids log: the ack does not
        // wait for the store.
        assert!(!first && !again && recorded.is_empty(), "{}: events are not the store's", backend.name());
    }
}

fn backup<B: Backend>(backend: &B, runtime: &tokio::runtime::Runtime) {
    let store = backend.open();
    runtime.block_on(async {
        store.started(record("01A", "connected", now_us()), "web01").await;
        store.flush().await;
    });
    let dir = tempfile::tempdir().unwrap();
    let copy = dir.path().join("copy.db");
    match (store.postgres(), store.backup(&copy)) {
        (None, Ok(())) => {
            let reader = halite_master::server::store::Reader::open(&copy).unwrap();
            assert_eq!(Records::list(&reader, 10).unwrap()[0].job.jid, "01A");
        }
        (Some(_), Err(error)) => {
            let error = error.to_string();
            assert!(error.contains("pg_dump") && error.contains("PostgreSQL"), "{error}");
            assert!(copy.exists(), "the local halite.db (keys) is still copied");
        }
        (postgres, result) => panic!("{}: backup gave {result:?} (postgres: {postgres:?})", backend.name()),
    }
    runtime.block_on(store.close());
}

fn receipt(jid: &str, agent: &str, kind: ReceiptKind, latency_us: Option<i64>, at_us: i64) -> Receipt {
    Receipt {
        jid: jid.into(),
        agent: agent.into(),
        state: "motd".into(),
        path: "/etc/motd".into(),
        kind,
        cause: "event:01EVENT".into(),
        cause_event: Some("01EVENT".into()),
        hash_before: Some("ab".repeat(32)),
        hash_after: Some("cd".repeat(32)),
        latency_us,
        at_us,
    }
}

fn receipts_are_kept_once<B: Backend>(backend: &B, runtime: &tokio::runtime::Runtime) {
    let store = backend.open();
    let now = now_us();
    let first = receipt("01R1", "web01", ReceiptKind::Corrective, Some(4_000), now);
    let second = receipt("01R2", "web01", ReceiptKind::Corrective, Some(2_000), now + 1);
    let other = receipt("01R3", "web02", ReceiptKind::Intentional, None, now + 2);
    runtime.block_on(async {
        store.started(record("01R1", "event:01EVENT", now), "web01").await;
        store.receipts(vec![first.clone()]);
        store.answered("01R1", "web01", vec![result("motd", Outcome::Changed { changes: vec!["x".into()] })]).await;
        // A replay (a spool drained twice, an answer resent) holds it again.
        store.receipts(vec![first.clone(), second.clone()]);
        store.receipts(vec![other.clone()]);
        store.close().await;
    });
    let records = backend.records();
    assert_eq!(records.receipts(None, 10).unwrap(), [other, second.clone(), first], "{}", backend.name());
    assert_eq!(records.receipts(Some("web01"), 1).unwrap(), [second]);
    assert_eq!(
        records.drift_counts(None).unwrap(),
        [DriftCount { agent: "web01".into(), path: "/etc/motd".into(), drifts: 2, last_us: now + 1 }],
        "corrective receipts only"
    );
    assert_eq!(records.restores_since(now).unwrap(), (2, vec![2_000, 4_000]));
    assert_eq!(records.restores_since(now + 2).unwrap(), (0, vec![]));
}

fn tokens_are_shared_and_revoked<B: Backend>(backend: &B, runtime: &tokio::runtime::Runtime) {
    let a = backend.access(runtime, "a");
    let token = runtime.block_on(a.create_token("ci", "web-ops")).unwrap();
    let b = backend.access(runtime, "b");
    runtime.block_on(async {
        assert_eq!(a.authenticate_current(&token).await.unwrap().who, "token:ci");
        assert!(matches!(a.create_token("ci", "admin").await, Err(AccessError::Exists { .. })));
        assert!(matches!(b.create_token("ci", "admin").await, Err(AccessError::Exists { .. })), "on any master");
        // Known to the other master (or, on SQLite, a restarted one).
        assert_eq!(b.authenticate_current(&token).await.unwrap().role.name, "web-ops", "{}", backend.name());
        assert!(matches!(b.authenticate_current("hlt_nope").await, Err(AccessError::Unknown)));
        assert!(a.revoke("ci").await.unwrap());
        assert!(matches!(a.authenticate_current(&token).await, Err(AccessError::Unknown)));
        assert!(!a.revoke("ci").await.unwrap());
        if backend.shared() {
            // The revocation reaches the other master's memory (NOTIFY).
            let deadline = tokio::time::Instant::now() + WAIT;
            while b.authenticate_current(&token).await.is_ok() {
                assert!(tokio::time::Instant::now() < deadline, "the revocation did not reach master b");
                tokio::time::sleep(std::time::Duration::from_millis(20)).await;
            }
        }
    });
    let c = backend.access(runtime, "c");
    assert!(matches!(runtime.block_on(c.authenticate_current(&token)), Err(AccessError::Unknown)));
    for access in [a, b, c] {
        access.close();
    }
}

fn audit_entry(n: usize) -> Entry {
    Entry {
        who: format!("token:t{n}"),
        what: "apply".into(),
        target: "web*".into(),
        cause: "POST /api/v1/apply".into(),
        result: "ok".into(),
    }
}

fn audit_is_one_chain<B: Backend>(backend: &B, runtime: &tokio::runtime::Runtime) {
    let (a, b) = (backend.access(runtime, "a"), backend.access(runtime, "b"));
    let rows = runtime.block_on(async {
        // Two masters appending at once: one chain, no seq taken twice.
        tokio::join!(
            async {
                for n in 0..6 {
                    a.record(audit_entry(n)).await;
                }
            },
            async {
                for n in 6..12 {
                    b.record(audit_entry(n)).await;
                }
            }
        );
        let rows = a.audit_all().await.unwrap();
        assert_eq!(b.audit_all().await.unwrap(), rows, "{}: both masters read the one log", backend.name());
        assert_eq!(a.audit(3).await.unwrap().iter().map(|r| r.seq).collect::<Vec<_>>(), [12, 11, 10], "newest first");
        rows
    });
    assert_eq!(rows.iter().map(|r| r.seq).collect::<Vec<_>>(), (1..=12).collect::<Vec<_>>());
    let mut whos: Vec<String> = rows.iter().map(|r| r.entry.who.clone()).collect();
    whos.sort();
    let mut wanted: Vec<String> = (0..12).map(|n| audit_entry(n).who).collect();
    wanted.sort();
    assert_eq!(whos, wanted, "every entry once");
    assert_eq!(audit::verify(&rows), Ok(()));
    for refused in ["UPDATE audit SET result = 'x' WHERE seq = 2", "DELETE FROM audit WHERE seq = 12"] {
        let error = backend.sql(runtime, refused).unwrap_err();
        assert!(error.contains("append-only"), "{}: {refused}: {error}", backend.name());
    }
    backend.sql(runtime, backend.drop_audit_trigger()).unwrap();
    assert_eq!(backend.sql(runtime, "UPDATE audit SET result = 'refused: x' WHERE seq = 4"), Ok(1));
    let rows = runtime.block_on(a.audit_all()).unwrap();
    assert_eq!(audit::verify(&rows), Err(Broken::Edited { seq: 4 }), "{}", backend.name());
    a.close();
    b.close();
}

/// PostgreSQL stopped: an audit entry is kept in the data dir (fsynced)
/// and chained in, in order and once, when it answers; tokens cannot be
/// made meanwhile, and those known keep working.
#[test]
fn audit_entries_made_while_postgres_is_down_are_chained_in_once() {
    let cluster = Postgres::start().unwrap();
    let backend = Pg::new(&cluster);
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let access = backend.access(&runtime, "a");
    let pending = backend.dir.path().join("a").join("audit.pending");
    let token = runtime.block_on(access.create_token("ci", "web-ops")).unwrap();
    runtime.block_on(access.record(audit_entry(1)));
    cluster.stop_immediate().unwrap();
    let kept = runtime.block_on(async {
        access.record(audit_entry(2)).await;
        access.record(audit_entry(3)).await;
        let error = access.create_token("other", "web-ops").await.unwrap_err().to_string();
        assert!(error.contains("PostgreSQL") && error.contains("try again"), "{error}");
        assert_eq!(access.authenticate_current(&token).await.unwrap().who, "token:ci", "known tokens work");
        std::fs::read_to_string(&pending).unwrap()
    });
    assert_eq!(kept.lines().count(), 2, "kept here: {kept}");
    cluster.start_again().unwrap();
    runtime.block_on(async {
        // The next entry waits behind them; they are chained in, in order,
        // by the listener once it reconnects, or by a later call.
        access.record(audit_entry(4)).await;
        let deadline = tokio::time::Instant::now() + WAIT;
        while std::fs::metadata(&pending).unwrap().len() > 0 {
            assert!(tokio::time::Instant::now() < deadline, "the kept entries were not chained in");
            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        }
        // A crash before the file was emptied: the same entries again.
        std::fs::write(&pending, &kept).unwrap();
        access.record(audit_entry(5)).await;
        assert_eq!(std::fs::metadata(&pending).unwrap().len(), 0, "drained before the new entry");
    });
    let rows = runtime.block_on(access.audit_all()).unwrap();
    let whos: Vec<&str> = rows.iter().map(|r| r.entry.who.as_str()).collect();
    assert_eq!(whos, ["token:t1", "token:t2", "token:t3", "token:t4", "token:t5"], "in order, each once");
    assert_eq!(audit::verify(&rows), Ok(()));
    access.close();
}

/// The first time a data dir meets PostgreSQL, its halite.db tokens and
/// audit rows are imported, once: the token then works on every master,
/// the rows join the shared chain, and a restart imports nothing again.
#[test]
fn halite_db_tokens_and_audit_rows_are_imported_once() {
    let cluster = Postgres::start().unwrap();
    let backend = Pg::new(&cluster);
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let data_dir = backend.dir.path().join("a");
    std::fs::create_dir_all(&data_dir).unwrap();
    let path = halite_master::server::store::path(&data_dir);
    drop(Store::open(&path).unwrap());
    // A lone master on SQLite, before `store:` named PostgreSQL.
    let lone = Access::open(&path, &roles()).unwrap();
    let token = runtime.block_on(async {
        let token = lone.create_token("ci", "web-ops").await.unwrap();
        lone.record(audit_entry(1)).await;
        lone.record(audit_entry(2)).await;
        token
    });
    lone.close();
    let wait_for_import = |access: &Access| {
        runtime.block_on(async {
            let deadline = tokio::time::Instant::now() + WAIT;
            while !data_dir.join("access.imported-to-postgres").exists() {
                assert!(tokio::time::Instant::now() < deadline, "not imported:\n{}", cluster.log());
                tokio::time::sleep(std::time::Duration::from_millis(20)).await;
            }
            access.audit_all().await.unwrap()
        })
    };
    let a = backend.access(&runtime, "a");
    let rows = wait_for_import(&a);
    assert_eq!(rows.iter().map(|r| r.entry.who.as_str()).collect::<Vec<_>>(), ["token:t1", "token:t2"]);
    assert_eq!(audit::verify(&rows), Ok(()));
    let b = backend.access(&runtime, "b");
    assert_eq!(runtime.block_on(b.authenticate_current(&token)).unwrap().who, "token:ci", "on another master");
    runtime.block_on(b.record(audit_entry(3)));
    a.close();
    // Restarted: nothing imported again (the marker), even were it missing
    // (each imported row's id is its old hash).
    std::fs::remove_file(data_dir.join("access.imported-to-postgres")).unwrap();
    let again = backend.access(&runtime, "a");
    let rows = wait_for_import(&again);
    assert_eq!(rows.iter().map(|r| r.entry.who.as_str()).collect::<Vec<_>>(), ["token:t1", "token:t2", "token:t3"]);
    assert_eq!(audit::verify(&rows), Ok(()));
    again.close();
    b.close();
}

#[test]
fn conformance_on_sqlite() {
    conformance(|| Sqlite { dir: tempfile::tempdir().unwrap() });
}

#[test]
fn conformance_on_postgres() {
    let cluster = Postgres::start().unwrap();
    conformance(|| Pg::new(&cluster));
}

/// PostgreSQL stopped under the store: records go to the spool, durable
/// and acknowledged; restarted: the spool drains, each record once.
#[test]
fn an_outage_is_spooled_and_drained_once() {
    let cluster = Postgres::start().unwrap();
    let backend = Pg::new(&cluster);
    let store = backend.open();
    let runtime = tokio::runtime::Runtime::new().unwrap();
    assert!(runtime.block_on(store.events_durably((0..3).map(|n| event(n, "web01")).collect())));
    cluster.stop_immediate().unwrap();
    let during = runtime.block_on(async {
        let durable = store.events_durably((3..10).map(|n| event(n, "web01")).collect()).await;
        store.started(record("01OUT", "event:01EVENT00003", now_us()), "web01").await;
        let answered =
            store.answered_durably("01OUT", "web01", vec![result("motd", Outcome::Unchanged)]).await.unwrap();
        // Sent again, as an agent does whose ack was lost.
        let again = store.events_durably((8..10).map(|n| event(n, "web01")).collect()).await;
        let kept = receipt("01OUT", "web01", ReceiptKind::Corrective, Some(1_000), now_us());
        store.receipts(vec![kept.clone()]);
        store.receipts(vec![kept]);
        store.flush().await;
        durable && answered && again
    });
    assert!(during, "durable in the spool while PostgreSQL is down");
    let spool = std::fs::metadata(backend.spool()).unwrap().len();
    assert!(spool > 0, "the spool holds them");
    cluster.start_again().unwrap();
    // The writer tries PostgreSQL again on its own; the spool empties.
    runtime.block_on(async {
        let deadline = tokio::time::Instant::now() + WAIT;
        let mut tick = tokio::time::interval(std::time::Duration::from_millis(50));
        while std::fs::metadata(backend.spool()).unwrap().len() > 0 {
            assert!(tokio::time::Instant::now() < deadline, "the spool did not drain:\n{}", cluster.log());
            store.flush().await;
            tick.tick().await;
        }
        store.close().await;
    });
    let records = backend.records();
    assert_eq!(records.events("").unwrap(), (0..10).map(|n| event(n, "web01")).collect::<Vec<_>>(), "each once");
    let (_, report) = records.job("01OUT").unwrap().unwrap();
    assert_eq!(report.agents[0].states().len(), 1, "the answer spooled is recorded");
    let receipts = records.receipts(None, 10).unwrap();
    assert_eq!(receipts.iter().map(|r| r.jid.as_str()).collect::<Vec<_>>(), ["01OUT"], "the receipt spooled, once");
}

/// A store opened while PostgreSQL is down starts (spooling) and migrates
/// and drains once it answers; one PostgreSQL refuses (a wrong password)
/// is an error at once.
#[test]
fn a_store_opened_while_postgres_is_down_spools_until_it_answers() {
    let cluster = Postgres::start().unwrap();
    let backend = Pg::new(&cluster);
    let wrong = PgTarget::new(&cluster.url(&cluster.database().unwrap()), Some("wrong".into()), None).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let error = Store::open_postgres(&dir.path().join("halite.db"), wrong, &dir.path().join("pg-spool"))
        .unwrap_err()
        .to_string();
    assert!(error.contains("password") && !error.contains("wrong"), "{error}");
    cluster.stop_immediate().unwrap();
    let store = backend.open();
    let runtime = tokio::runtime::Runtime::new().unwrap();
    assert!(runtime.block_on(store.events_durably((0..4).map(|n| event(n, "db01")).collect())));
    assert!(std::fs::metadata(backend.spool()).unwrap().len() > 0);
    cluster.start_again().unwrap();
    runtime.block_on(async {
        let deadline = tokio::time::Instant::now() + WAIT;
        let mut tick = tokio::time::interval(std::time::Duration::from_millis(50));
        while std::fs::metadata(backend.spool()).unwrap().len() > 0 {
            assert!(tokio::time::Instant::now() < deadline, "the spool did not drain:\n{}", cluster.log());
            tick.tick().await;
        }
        store.close().await;
    });
    assert_eq!(backend.records().events("db01").unwrap(), (0..4).map(|n| event(n, "db01")).collect::<Vec<_>>());
}

/// `sslmode=require` with `ca_file`: the store talks TLS and checks the
/// server's certificate; one from another CA is refused.
#[test]
fn tls_is_checked_against_the_ca_file() {
    let cluster = Postgres::start_tls().unwrap();
    let url = cluster.url(&cluster.database().unwrap()).replace("sslmode=disable", "sslmode=require");
    let password = Some(halite_e2e::postgres::PASSWORD.to_owned());
    let target = PgTarget::new(&url, password.clone(), Some(&cluster.ca_file())).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let store =
        Store::open_postgres(&dir.path().join("halite.db"), target.clone(), &dir.path().join("pg-spool")).unwrap();
    let runtime = tokio::runtime::Runtime::new().unwrap();
    assert!(runtime.block_on(store.events_durably(vec![event(1, "web01")])));
    runtime.block_on(store.close());
    assert_eq!(records::open_postgres(&target).unwrap().events("").unwrap(), [event(1, "web01")]);
    // Another CA: the server's certificate does not check out.
    let other = Postgres::start_tls().unwrap();
    let target = PgTarget::new(&url, password, Some(&other.ca_file())).unwrap();
    let error = records::open_postgres(&target).unwrap_err().to_string();
    assert!(error.contains("certificate") || error.contains("UnknownIssuer"), "{error}");
    assert_eq!(std::fs::metadata(dir.path().join("pg-spool")).unwrap().len(), 0);
}

/// The master's data dir's spool file.
fn spool_of(fleet: &Fleet) -> PathBuf {
    halite_master::server::store::spool::path(&fleet.master_data_dir())
}

/// `store:` for a master on `database`, its password in a file.
fn store_yaml(cluster: &Postgres, database: &str, dir: &Path) -> String {
    let password = cluster.password_file(dir).unwrap();
    format!("store:\n  url: {}\n  password_file: {}\n", cluster.url(database), password.display())
}

/// Reads the PostgreSQL store off the runtime's threads.
async fn read<T: Send + 'static>(
    target: &PgTarget,
    read: impl FnOnce(&dyn Records) -> T + Send + 'static,
) -> anyhow::Result<T> {
    let target = target.clone();
    Ok(tokio::task::spawn_blocking(move || records::open_postgres(&target).map(|r| read(r.as_ref()))).await??)
}

/// Until `done` says so of what the store holds, for at most [`WAIT`].
async fn until_recorded(
    what: &str,
    target: &PgTarget,
    done: impl Fn(&dyn Records) -> bool + Clone + Send + 'static,
) -> anyhow::Result<()> {
    let deadline = tokio::time::Instant::now() + WAIT;
    let mut tick = tokio::time::interval(std::time::Duration::from_millis(50));
    loop {
        if read(target, done.clone()).await? {
            return Ok(());
        }
        anyhow::ensure!(tokio::time::Instant::now() < deadline, "timed out waiting for {what} in PostgreSQL");
        tick.tick().await;
    }
}

/// A drift of nginx.conf (or motd), restored; its event id.
async fn drift_and_restore(fleet: &mut Fleet, n: usize) -> anyhow::Result<(String, String)> {
    let (path, tag) = if n.is_multiple_of(2) {
        ("/etc/nginx/nginx.conf", "halite/beacon/web01/nginx-conf")
    } else {
        ("/etc/motd", "halite/beacon/web01/motd")
    };
    let file = fleet.agent("web01").path(path);
    std::fs::write(&file, format!("drift {n}\n"))?;
    let event = fleet.wait_for("the drift", |e| e.tag == tag).await?;
    let ret = fleet.wait_for_restore_of(&event).await?;
    anyhow::ensure!(ret.data()["failed"] == false, "restore failed: {}", ret.data());
    anyhow::ensure!(std::fs::read_to_string(&file)? != format!("drift {n}\n"), "restored");
    Ok((event.id().to_owned(), ret.job().unwrap_or_default().to_owned()))
}

/// A master on PostgreSQL restores drifts as on SQLite and records each
/// event and each restore's result there.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_master_on_postgres_restores_and_records() {
    let cluster = tokio::task::spawn_blocking(Postgres::start).await.unwrap().unwrap();
    let database = cluster.database().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let yaml = store_yaml(&cluster, &database, dir.path());
    let target = PgTarget::new(&cluster.url(&database), Some(halite_e2e::postgres::PASSWORD.into()), None).unwrap();
    let mut fleet = Fleet::start_with_master_config(&["web01"], &yaml).await.unwrap();
    let result = async {
        let conf = fleet.agent("web01").path("/etc/nginx/nginx.conf");
        let (event, jid) = drift_and_restore(&mut fleet, 0).await?;
        assert_eq!(std::fs::read_to_string(&conf)?, example_file("files/nginx.conf"));
        let wanted = (event.clone(), jid.clone());
        until_recorded("the drift event and its restore's result", &target, move |records| {
            let events = records.events("web01").unwrap_or_default();
            let answered = records.job(&wanted.1).ok().flatten().is_some_and(|(job, report)| {
                job.cause == format!("event:{}", wanted.0) && !report.agents[0].states().is_empty()
            });
            events.iter().filter(|e| e.id == wanted.0).count() == 1 && answered
        })
        .await?;
        let id = event.clone();
        let tag = read(&target, move |records| {
            records.events("web01").unwrap().into_iter().find(|e| e.id == id).map(|e| e.tag)
        })
        .await?;
        assert_eq!(tag.as_deref(), Some("halite/beacon/web01/nginx-conf"));
        // The operator's `jobs` reads PostgreSQL when master.yaml says so.
        let config = fleet.dir.path().join("master").join("master.yaml");
        let config = config.to_str().unwrap_or_default();
        let list = fleet.master_command(&["jobs", "--json", "--config", config]).await?.json()?;
        let listed = list.as_array().is_some_and(|jobs| jobs.iter().any(|j| j["jid"] == jid.as_str()));
        assert!(listed, "`jobs` lists the restore from PostgreSQL: {list}");
        let shown = fleet.master_command(&["jobs", &jid, "--config", config]).await?;
        assert!(shown.stdout.contains(&format!("cause:  event:{event}")), "{}{}", shown.stdout, shown.stderr);
        assert_eq!(std::fs::metadata(spool_of(&fleet))?.len(), 0, "nothing spooled");
        anyhow::Ok(())
    }
    .await;
    if let Err(error) = result {
        eprintln!("===== postgres =====\n{}", cluster.log());
        fleet.fail(&error);
    }
}

/// PostgreSQL stopped during a run of drifts: every drift is still
/// restored, the events are spooled (so acknowledged), and once it is
/// back the spool drains and each event is in the store exactly once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_stopped_during_drifts_enforcement_continues_and_nothing_is_lost() {
    let cluster = tokio::task::spawn_blocking(Postgres::start).await.unwrap().unwrap();
    let database = cluster.database().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let yaml = store_yaml(&cluster, &database, dir.path());
    let target = PgTarget::new(&cluster.url(&database), Some(halite_e2e::postgres::PASSWORD.into()), None).unwrap();
    let mut fleet = Fleet::start_with_master_config(&["web01"], &yaml).await.unwrap();
    let result = async {
        let mut drifts = vec![drift_and_restore(&mut fleet, 0).await?];
        cluster.stop_immediate()?;
        for n in 1..=10 {
            drifts.push(drift_and_restore(&mut fleet, n).await?);
        }
        // The outage's events are in the spool: durable, hence acked.
        let spooled = std::fs::read_to_string(spool_of(&fleet))?;
        for (event, _) in &drifts[1..] {
            anyhow::ensure!(spooled.contains(event.as_str()), "event {event} spooled");
        }
        // Said on the bus, once each way.
        let unreachable = "halite/master/store/postgres/unreachable";
        if !fleet.seen.iter().any(|e| e.tag == unreachable) {
            fleet.wait_for("PostgreSQL unreachable", |e| e.tag == unreachable).await?;
        }
        cluster.start_again()?;
        fleet
            .wait_for("PostgreSQL reachable, the spool drained", |e| e.tag == "halite/master/store/postgres/reachable")
            .await?;
        assert_eq!(std::fs::metadata(spool_of(&fleet))?.len(), 0, "the spool is drained");
        assert_eq!(fleet.seen.iter().filter(|e| e.tag == unreachable).count(), 1, "said once");
        let wanted = drifts.clone();
        until_recorded("every restore's result", &target, move |records| {
            wanted.iter().all(|(_, jid)| {
                records.job(jid).ok().flatten().is_some_and(|(_, report)| !report.agents[0].states().is_empty())
            })
        })
        .await?;
        let recorded = read(&target, |records| records.events("web01").unwrap()).await?;
        let beacon_ids: Vec<&str> =
            fleet.seen.iter().filter(|e| e.tag.starts_with("halite/beacon/web01/")).map(|e| e.id()).collect();
        assert_eq!(beacon_ids.len(), drifts.len(), "one event per drift");
        for id in &beacon_ids {
            assert_eq!(recorded.iter().filter(|e| e.id == *id).count(), 1, "event {id} recorded exactly once");
        }
        anyhow::Ok(())
    }
    .await;
    if let Err(error) = result {
        eprintln!("===== postgres =====\n{}", cluster.log());
        fleet.fail(&error);
    }
}

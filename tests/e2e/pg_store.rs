//! The store on both backends: one conformance suite run against halite.db
//! and a real PostgreSQL (`harness/postgres.rs`), PostgreSQL's spool
//! through an outage, and real masters with `store: postgres://…`.

use std::path::{Path, PathBuf};

use halite_e2e::postgres::Postgres;
use halite_e2e::{Fleet, WAIT, example_file};
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
}

struct Pg {
    dir: tempfile::TempDir,
    target: PgTarget,
}

impl Pg {
    /// A fresh database in `cluster`.
    fn new(cluster: &Postgres) -> Pg {
        let database = cluster.database().unwrap();
        let target = PgTarget::new(&cluster.url(&database), Some(halite_e2e::postgres::PASSWORD.into()), None).unwrap();
        Pg { dir: tempfile::tempdir().unwrap(), target }
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
    let cases: [(&str, Case<B>); 7] = [
        ("jobs and results read back after a reopen", jobs_and_results_read_back),
        ("each agent's last facts are kept", last_facts_are_kept),
        ("unanswered jobs are listed", unanswered_jobs_are_listed),
        ("history is ordered by the master's clock", history_is_ordered_by_the_masters_clock),
        ("retention deletes old jobs with their results", retention_by_age),
        ("events are recorded once, or not at all", events_are_recorded_once),
        ("a backup is a copy, or names the tool that makes one", backup),
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

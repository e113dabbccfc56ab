//! The events of several masters (issue #20, items 4 and 5), on real
//! masters sharing a real PostgreSQL: `events` and the API's SSE stream on
//! one master show a drift and its restore from an agent homed on another,
//! naming that master; and a master that missed the notification that its
//! agent moved learns it at its next write, drops the session and records
//! nothing under its stale epoch.

use std::process::Stdio;

use anyhow::Context as _;
use halite_e2e::WAIT;
use halite_e2e::cluster::Cluster;
use tokio::io::{AsyncBufReadExt, BufReader, Lines};
use tokio::process::{Child, ChildStdout};

/// The managed file the example tree restores.
const CONF: &str = "/etc/motd";

/// Starts `halite-master events --json` on the master in `data_dir` and
/// returns once it is tailing (the fleet tail has its position then).
async fn tail(data_dir: &std::path::Path) -> anyhow::Result<(Child, Lines<BufReader<ChildStdout>>)> {
    let mut child = halite_e2e::process(&halite_e2e::binaries().master)
        .args(["events", "--json", "--data-dir"])
        .arg(data_dir)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()?;
    let mut stderr = BufReader::new(child.stderr.take().context("stderr")?).lines();
    let notice = tokio::time::timeout(WAIT, stderr.next_line()).await??.unwrap_or_default();
    anyhow::ensure!(notice.starts_with("Tailing the events"), "events said: {notice}");
    let stdout = BufReader::new(child.stdout.take().context("stdout")?).lines();
    Ok((child, stdout))
}

/// The tail's lines up to the first `wanted` one, which is returned.
async fn tail_until(
    lines: &mut Lines<BufReader<ChildStdout>>,
    wanted: impl Fn(&serde_json::Value) -> bool,
) -> anyhow::Result<serde_json::Value> {
    let found = tokio::time::timeout(WAIT, async {
        loop {
            let line = lines.next_line().await?.context("events exited")?;
            let line: serde_json::Value = serde_json::from_str(&line)?;
            if wanted(&line) {
                return anyhow::Ok(line);
            }
        }
    })
    .await;
    found.context("the awaited line did not come")?
}

/// The row of event `id` in PostgreSQL, awaited; an error if it is there
/// twice.
async fn recorded_once(cluster: &Cluster, id: &str) -> anyhow::Result<halite_master::server::store::spool::EventRow> {
    let deadline = tokio::time::Instant::now() + WAIT;
    let mut tick = tokio::time::interval(std::time::Duration::from_millis(50));
    loop {
        let rows: Vec<_> = cluster.recorded_events().await?.into_iter().filter(|r| r.id == id).collect();
        anyhow::ensure!(rows.len() <= 1, "recorded twice: {rows:?}");
        if let Some(row) = rows.into_iter().next() {
            return Ok(row);
        }
        anyhow::ensure!(tokio::time::Instant::now() < deadline, "event {id} was never recorded");
        tick.tick().await;
    }
}

/// An open `GET /api/v1/events` stream: its `event` events' data.
struct Sse {
    response: reqwest::Response,
    buffer: String,
}

impl Sse {
    async fn open(data_dir: &std::path::Path, url: &str) -> anyhow::Result<Sse> {
        let mut command = halite_e2e::process(&halite_e2e::binaries().master);
        command.args(["tokens", "create", "fleet-reader", "--role", "admin", "--data-dir"]).arg(data_dir);
        let token = halite_e2e::CommandOutput::of(command).await?;
        anyhow::ensure!(token.code == 0, "tokens create: {}", token.stderr);
        let token = token.stdout.trim().to_owned();
        let pem = std::fs::read(data_dir.join("api.crt")).context("the master's API certificate")?;
        let client = reqwest::Client::builder()
            .tls_built_in_root_certs(false)
            .add_root_certificate(reqwest::Certificate::from_pem(&pem)?)
            .build()?;
        let response = client.get(format!("{url}/api/v1/events")).bearer_auth(token).send().await?;
        anyhow::ensure!(response.status() == 200, "events: {}", response.status());
        Ok(Sse { response, buffer: String::new() })
    }

    /// Events' data up to the first `wanted` one, which is returned.
    async fn until(&mut self, wanted: impl Fn(&serde_json::Value) -> bool) -> anyhow::Result<serde_json::Value> {
        let found = tokio::time::timeout(WAIT, async {
            loop {
                while let Some(end) = self.buffer.find("\n\n") {
                    let block: String = self.buffer.drain(..end + 2).collect();
                    let data = block.lines().find_map(|l| l.strip_prefix("data:"));
                    if block.lines().any(|l| l.trim() == "event: event")
                        && let Some(data) = data
                    {
                        let event: serde_json::Value = serde_json::from_str(data.trim())?;
                        if wanted(&event) {
                            return anyhow::Ok(event);
                        }
                    }
                }
                let chunk = self.response.chunk().await?.context("the stream ended")?;
                self.buffer.push_str(std::str::from_utf8(&chunk)?);
            }
        })
        .await;
        found.context("the awaited SSE event did not come")?
    }
}

/// Two masters, web01 homed on one: `events` and the SSE stream on the
/// other show web01's drift (the same event, with `master` naming web01's
/// master) and the return of the job that restored it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn events_on_any_master_show_the_fleet() {
    let mut cluster = Cluster::start_with(2, "api:\n  listen: 127.0.0.1:0\n").await.unwrap();
    let result = async {
        cluster.add_agents(&["web01"]).await?;
        let home = cluster.home_of("web01").context("web01 has no master")?;
        let other = 1 - home;
        let other_master = cluster.master(other).context("the other master")?;
        let data_dir = other_master.dir.join("data");
        let api = other_master.api.clone().context("no api= on the ready line")?;
        let (_child, mut lines) = tail(&data_dir).await?;
        let mut sse = Sse::open(&data_dir, &api).await?;
        std::fs::write(cluster.agent("web01").path(CONF), "drift on the other master\n")?;
        let (_, drift) = cluster
            .wait_for("web01's drift", |master, e| master == home && e.tag == "halite/beacon/web01/motd")
            .await?;
        let (_, restore) = cluster
            .wait_for("its restore", |master, e| {
                master == home && e.tag.starts_with("halite/job/") && e.tag.ends_with("/ret/web01")
            })
            .await?;
        let from = cluster.listens[home].as_str();
        for (shown, what) in [
            (tail_until(&mut lines, |l| l["id"] == drift.id()).await?, "events: the drift"),
            (sse.until(|e| e["id"] == drift.id()).await?, "SSE: the drift"),
        ] {
            assert_eq!(shown["master"], from, "{what}: {shown}");
            for field in ["tag", "agent", "time_us", "data"] {
                assert_eq!(shown[field], drift.json[field], "{what}: {field}");
            }
        }
        for (shown, what) in [
            (tail_until(&mut lines, |l| l["tag"] == restore.tag.as_str()).await?, "events: the restore"),
            (sse.until(|e| e["tag"] == restore.tag.as_str()).await?, "SSE: the restore"),
        ] {
            assert_eq!(shown["master"], from, "{what}: {shown}");
            assert_eq!(shown["data"]["failed"], false, "{what}: {shown}");
            let states = shown["data"]["results"].as_array().context("results")?;
            let expected = restore.data()["results"].as_array().context("results")?;
            assert_eq!(states.len(), expected.len(), "{what}: {shown}");
            for (state, expected) in states.iter().zip(expected) {
                assert_eq!((&state["id"], &state["outcome"]), (&expected["id"], &expected["outcome"]), "{what}");
            }
        }
        anyhow::Ok(())
    }
    .await;
    if let Err(error) = result {
        cluster.fail(&error);
    }
}

/// A master that missed the notification that web01 moved (its epoch
/// bumped in SQL to another master's, without `NOTIFY`): web01's next
/// event is refused by the batch that would record it, the master drops
/// the session (`moved`, noticed at the write), and the event is recorded
/// once, through web01's next session, not under the stale epoch.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stale_session_is_noticed_at_the_next_write() {
    let mut cluster = Cluster::start(1).await.unwrap();
    let result = async {
        cluster.add_agents(&["web01"]).await?;
        let listen = cluster.listens[0].clone();
        // Drifts until one is recorded under the session's epoch: the
        // master knows its epoch then (it is written a moment after the
        // session starts).
        let mut round = 0;
        let stale = loop {
            round += 1;
            std::fs::write(cluster.agent("web01").path(CONF), format!("drift {round}\n"))?;
            let (_, drift) = cluster.wait_for("a drift", |_, e| e.tag == "halite/beacon/web01/motd").await?;
            let row = recorded_once(&cluster, drift.id()).await?;
            anyhow::ensure!(row.master.as_deref() == Some(listen.as_str()), "{row:?}");
            if let Some(epoch) = row.epoch {
                break epoch;
            }
            anyhow::ensure!(round < 10, "ten drifts recorded without a session epoch");
        };
        // Another master took web01, and this one missed the notification.
        let client = cluster.target.connect().await?;
        let moved = client
            .execute(
                "UPDATE agent_sessions SET epoch = epoch + 1, master = 'tcp://127.0.0.9:4510' WHERE agent = 'web01'",
                &[],
            )
            .await?;
        anyhow::ensure!(moved == 1, "no session row for web01");
        std::fs::write(cluster.agent("web01").path(CONF), "a drift after the move\n")?;
        let (_, drift) = cluster.wait_for("the second drift", |_, e| e.tag == "halite/beacon/web01/motd").await?;
        let (_, dropped) = cluster
            .wait_for("the stale session dropped", |_, e| {
                e.tag == "halite/agent/web01/disconnected" && e.data()["reason"] == "moved"
            })
            .await?;
        assert_eq!(dropped.data()["master"], "tcp://127.0.0.9:4510", "{}", dropped.data());
        assert_eq!(dropped.data()["noticed"], "write", "{}", dropped.data());
        // web01 comes back (its only master), which writes a new epoch,
        // and resends what was not acknowledged.
        cluster.wait_for("web01 back", |_, e| e.tag == "halite/agent/web01/connected").await?;
        let row = recorded_once(&cluster, drift.id()).await?;
        anyhow::ensure!(row.epoch != Some(stale), "recorded under the stale epoch {stale}: {row:?}");
        assert_eq!(row.master.as_deref(), Some(listen.as_str()));
        let current: i64 = client
            .query_one("SELECT epoch FROM agent_sessions WHERE agent = 'web01' AND master = $1", &[&listen])
            .await?
            .get(0);
        anyhow::ensure!(current > stale + 1, "web01's new session has epoch {current}");
        anyhow::Ok(())
    }
    .await;
    if let Err(error) = result {
        cluster.fail(&error);
    }
}

/// An event row as a master stamps it: `master` and its session `epoch`.
fn row(id: &str, agent: &str, epoch: Option<i64>) -> halite_master::server::store::spool::EventRow {
    halite_master::server::store::spool::EventRow {
        id: id.into(),
        agent: agent.into(),
        tag: format!("halite/beacon/{agent}/motd"),
        time_us: 1,
        data: "{}".into(),
        master: Some("A".into()),
        epoch,
    }
}

/// The fence on the store itself, table-style: of one batch, only the rows
/// of an agent another master holds under a newer epoch are refused and
/// told (a row without an epoch, an agent without a session row, the
/// current epoch: recorded); and a spool drained later is checked the
/// same way and its stale sessions told to the session layer, but its
/// rows are recorded all the same: they were acknowledged when spooled,
/// and nobody would send them again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_fence_refuses_stale_rows_in_batches_and_in_a_drained_spool() {
    use halite_master::server::store::postgres::Fenced;
    use halite_master::server::store::spool::{Record, Spool};
    use halite_master::server::store::{Store, path};
    let postgres = tokio::task::spawn_blocking(halite_e2e::postgres::Postgres::start).await.unwrap().unwrap();
    let database = postgres.database().unwrap();
    let target = halite_master::server::store::postgres::PgTarget::new(
        &postgres.url(&database),
        Some(halite_e2e::postgres::PASSWORD.into()),
        None,
    )
    .unwrap();
    let open = |dir: std::path::PathBuf| {
        let target = target.clone();
        tokio::task::spawn_blocking(move || {
            Store::open_postgres(&path(&dir), target, &halite_master::server::store::spool::path(&dir))
        })
    };
    let first = tempfile::tempdir().unwrap();
    let store = open(first.path().to_path_buf()).await.unwrap().unwrap();
    let mut told = store.take_fenced().unwrap();
    let client = target.connect().await.unwrap();
    client
        .batch_execute(
            "INSERT INTO agent_sessions (agent, epoch, master, since) VALUES
                ('web01', 5, 'B', now()), ('web03', 2, 'A', now())",
        )
        .await
        .unwrap();
    let recorded_ids = || async {
        let rows = client.query("SELECT id FROM events ORDER BY id", &[]).await.unwrap();
        rows.iter().map(|r| r.get::<_, String>(0)).collect::<Vec<_>>()
    };
    // (row, recorded?)
    let cases = [
        (row("e1", "web01", Some(4)), false),
        (row("e2", "web01", None), true),
        (row("e3", "web02", Some(1)), true),
        (row("e4", "web03", Some(2)), true),
    ];
    let written = store.record_events(cases.iter().map(|(r, _)| r.clone()).collect()).await;
    let stale = Fenced { agent: "web01".into(), epoch: 4, current: 5, holder: "B".into() };
    assert!(written.durable);
    assert_eq!(written.fenced, std::slice::from_ref(&stale));
    assert_eq!(tokio::time::timeout(WAIT, told.recv()).await.unwrap(), Some(stale));
    let expected: Vec<String> = cases.iter().filter(|(_, kept)| *kept).map(|(r, _)| r.id.clone()).collect();
    assert_eq!(recorded_ids().await, expected);
    store.close().await;

    // A spool left by a master cut from PostgreSQL meanwhile: drained at
    // the next start, checked as a batch is.
    let second = tempfile::tempdir().unwrap();
    let mut spool = Spool::open(&halite_master::server::store::spool::path(second.path())).unwrap();
    spool.append(&[Record::Event(row("e5", "web01", Some(3))), Record::Event(row("e6", "web02", Some(1)))]).unwrap();
    drop(spool);
    let store = open(second.path().to_path_buf()).await.unwrap().unwrap();
    let mut told = store.take_fenced().unwrap();
    let notice = tokio::time::timeout(WAIT, told.recv()).await.unwrap().unwrap();
    assert_eq!((notice.agent.as_str(), notice.epoch, notice.current), ("web01", 3, 5));
    let mut ids = recorded_ids().await;
    ids.retain(|id| id == "e5" || id == "e6");
    assert_eq!(ids, ["e5", "e6"], "the drained spool's rows, the stale session's included, are recorded");
    store.close().await;
}

//! The control plane across masters on one PostgreSQL (issue #20,
//! `server/cluster/`): a key decision on one master reaches the others'
//! sessions, the singletons move to another master when their leader dies
//! and a stale leader's write is refused, and an agent's session moves to
//! the master it reached last.
//!
//! Each test starts its masters itself (two at most) on one database.

use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
use std::path::Path;
use std::time::Instant;

use halite_e2e::postgres::Postgres;
use halite_e2e::{Fleet, WAIT};
use halite_master::client::{BusEvent, Subscriber};
use halite_master::fleet::{self, MasterProcess};
use halite_master::server::cluster::lease::{LeaseError, SINGLETONS};
use halite_master::server::cluster::{lease, singletons};
use halite_master::server::store::postgres::PgTarget;

/// `store:` for a master on `database`, its password in a file.
fn store_yaml(cluster: &Postgres, database: &str, dir: &Path) -> String {
    let password = cluster.password_file(dir).unwrap();
    format!("store:\n  url: {}\n  password_file: {}\n", cluster.url(database), password.display())
}

fn target(cluster: &Postgres, database: &str) -> PgTarget {
    PgTarget::new(&cluster.url(database), Some(halite_e2e::postgres::PASSWORD.into()), None).unwrap()
}

/// A second master beside the fleet's, on the same tree and database.
async fn second_master(fleet: &Fleet, name: &str, yaml: &str) -> anyhow::Result<(MasterProcess, Subscriber)> {
    let master = fleet.start_peer_master(name, yaml).await?;
    let bus = Subscriber::connect(&master.publish, "halite/").await?;
    Ok((master, bus))
}

/// Runs `halite-master ARGS --data-dir` of `master`; its stdout.
async fn command(fleet: &Fleet, master: &MasterProcess, args: &[&str]) -> anyhow::Result<String> {
    let mut command = halite_e2e::process(&fleet.binaries.master);
    command.args(args).arg("--data-dir").arg(master.dir.join("data"));
    let output = halite_e2e::CommandOutput::of(command).await?;
    anyhow::ensure!(output.code == 0, "{args:?}: {}", output.stderr);
    Ok(output.stdout)
}

/// Until `master`'s `keys list` says `wanted`, for at most [`WAIT`].
async fn until_listed(
    fleet: &Fleet,
    master: &MasterProcess,
    what: &str,
    wanted: impl Fn(&str) -> bool,
) -> anyhow::Result<()> {
    let deadline = tokio::time::Instant::now() + WAIT;
    let mut tick = tokio::time::interval(std::time::Duration::from_millis(50));
    loop {
        let listed = command(fleet, master, &["keys", "list"]).await?;
        if wanted(&listed) {
            return Ok(());
        }
        anyhow::ensure!(tokio::time::Instant::now() < deadline, "timed out waiting for {what}: {listed}");
        tick.tick().await;
    }
}

fn log_of(path: &Path) -> String {
    std::fs::read_to_string(path).unwrap_or_default()
}

/// Fails the test with the second master's log (once started) and
/// PostgreSQL's beside the fleet's own.
fn fail(fleet: &Fleet, name: &str, second: Option<&MasterProcess>, cluster: &Postgres, error: &anyhow::Error) -> ! {
    if let Some(second) = second {
        eprintln!("===== master {name} =====\n{}", log_of(&second.log));
    }
    eprintln!("===== postgres =====\n{}", cluster.log());
    fleet.fail(error)
}

/// A key deleted on master A cuts its agent's session on master B at once
/// (LISTEN/NOTIFY), and B's key list follows.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_key_deleted_on_one_master_cuts_its_agent_on_another() {
    let cluster = tokio::task::spawn_blocking(Postgres::start).await.unwrap().unwrap();
    let database = cluster.database().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let yaml = store_yaml(&cluster, &database, dir.path());
    // B: the fleet's master, web01 on it.
    let mut fleet = Fleet::start_with_master_config(&["web01"], &yaml).await.unwrap();
    let mut a = None;
    let result = async {
        let (master_a, _bus_a) = second_master(&fleet, "master-a", &yaml).await?;
        let master_a = a.insert(master_a);
        // B's first sight of web01's key reached PostgreSQL, and A read it.
        until_listed(&fleet, master_a, "web01 accepted on A", |l| l.contains("web01") && l.contains("accepted"))
            .await?;
        let started = Instant::now();
        command(&fleet, master_a, &["keys", "delete", "web01"]).await?;
        let returned = started.elapsed();
        let cut = fleet
            .wait_for("web01's session cut on B", |e| {
                e.tag == "halite/agent/web01/disconnected" && e.data()["reason"] == "deleted"
            })
            .await?;
        let took = started.elapsed();
        eprintln!(
            "key deleted on A: the command returned in {returned:?}; web01's session on B was cut after {took:?}"
        );
        assert_eq!(cut.data()["by"], "another master", "{}", cut.data());
        until_listed(&fleet, fleet.master(), "web01 gone from B's keys", |l| !l.contains("web01")).await?;
        let agents = fleet.cli(&["agents", "--json"])?;
        assert!(!agents.contains("\"web01\""), "web01 has no session on B: {agents}");
        anyhow::Ok(())
    }
    .await;
    if let Err(error) = result {
        fail(&fleet, "A", a.as_ref(), &cluster, &error);
    }
}

const SCHEDULE: &str = "schedule:\n  - name: enforce\n    every: 1s\n";

/// The next job of web02 that `bus` reports returned and PostgreSQL records
/// as the schedule's (not its start-up apply); its id.
async fn next_scheduled(fleet: &Fleet, bus: &mut Subscriber, master: &MasterProcess) -> anyhow::Result<String> {
    let config = master.dir.join("master.yaml");
    let config = config.to_str().unwrap_or_default();
    loop {
        let ret = bus
            .wait_for(WAIT, "a job of web02 returned", |e: &BusEvent| {
                e.tag.starts_with("halite/job/") && e.tag.ends_with("/ret/web02")
            })
            .await?;
        let jid = ret.job().unwrap_or_default().to_owned();
        // The record is committed by the batched writer, just behind.
        let deadline = tokio::time::Instant::now() + WAIT;
        let mut tick = tokio::time::interval(std::time::Duration::from_millis(50));
        let cause = loop {
            let mut command = halite_e2e::process(&fleet.binaries.master);
            command.args(["jobs", &jid, "--json", "--config", config]);
            let output = halite_e2e::CommandOutput::of(command).await?;
            if output.code == 0 {
                break serde_json::from_str::<serde_json::Value>(&output.stdout)?["job"]["cause"].clone();
            }
            anyhow::ensure!(tokio::time::Instant::now() < deadline, "job {jid} never recorded: {}", output.stderr);
            tick.tick().await;
        };
        if cause == "schedule:enforce" {
            return Ok(jid);
        }
    }
}

/// The singletons' lease as PostgreSQL holds it: (holder, epoch).
async fn lease_row(target: &PgTarget) -> anyhow::Result<Option<(String, i64)>> {
    let client = target.connect().await?;
    let row = client.query_opt("SELECT holder, epoch FROM leases WHERE name = $1", &[&SINGLETONS]).await?;
    Ok(row.map(|row| (row.get(0), row.get(1))))
}

/// The schedule runs on every master's agents, ticked by the singletons'
/// leader; SIGKILL the leader and another master takes the lease (a new
/// epoch) and the schedule goes on.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_leader_killed_the_schedule_resumes_on_another_master() {
    let cluster = tokio::task::spawn_blocking(Postgres::start).await.unwrap().unwrap();
    let database = cluster.database().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let yaml = format!("{}{SCHEDULE}", store_yaml(&cluster, &database, dir.path()));
    let target = target(&cluster, &database);
    // A: the fleet's master, started first: it takes the lease.
    let mut fleet = Fleet::start_with_master_config(&["web01"], &yaml).await.unwrap();
    let mut b = None;
    let result = async {
        let a_name = fleet.master().listen.clone();
        let deadline = tokio::time::Instant::now() + WAIT;
        let mut tick = tokio::time::interval(std::time::Duration::from_millis(50));
        let first_epoch = loop {
            match lease_row(&target).await? {
                Some((holder, epoch)) if holder.starts_with(&format!("{a_name} ")) => break epoch,
                _ => anyhow::ensure!(tokio::time::Instant::now() < deadline, "A never led"),
            }
            tick.tick().await;
        };
        let (master_b, mut bus_b) = second_master(&fleet, "master-b", &yaml).await?;
        let master_b = b.insert(master_b);
        let web02 = fleet::start_agent_with(
            &fleet.binaries,
            &fleet.dir.path().join("web02"),
            "web02",
            &master_b.listen,
            &master_b.key,
            "",
        )
        .await?;
        fleet.agents.push(web02);
        // A leads, B applies A's ticks to its own agent.
        next_scheduled(&fleet, &mut bus_b, master_b).await?;
        let killed = Instant::now();
        fleet.kill_master().await;
        let led = bus_b.wait_for(WAIT, "B leading", |e| e.tag == "halite/master/singletons/leading").await?;
        let took = killed.elapsed();
        next_scheduled(&fleet, &mut bus_b, master_b).await?;
        let resumed = killed.elapsed();
        eprintln!("leader killed: B led after {took:?}, the schedule ran again after {resumed:?}");
        let (holder, epoch) = lease_row(&target).await?.unwrap_or_default();
        assert!(holder.starts_with(&format!("{} ", master_b.listen)), "B holds the lease: {holder}");
        assert!(epoch > first_epoch, "a takeover is a new epoch: {epoch} after {first_epoch}");
        assert_eq!(led.data()["epoch"], epoch, "{}", led.data());
        anyhow::Ok(())
    }
    .await;
    if let Err(error) = result {
        fail(&fleet, "B", b.as_ref(), &cluster, &error);
    }
}

/// A leader that lost its lock and its lease cannot write: its tick and
/// its pending-key expiry are refused (fenced by the epoch), and it cannot
/// renew; the new leader's tick commits.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stale_leaders_write_is_refused() {
    let cluster = tokio::task::spawn_blocking(Postgres::start).await.unwrap().unwrap();
    let database = cluster.database().unwrap();
    let target = target(&cluster, &database);
    let mut a = target.connect().await.unwrap();
    halite_master::server::store::postgres::migrate(&mut a, &target).await.unwrap();
    let mut b = target.connect().await.unwrap();
    assert_eq!(lease::take(&a, SINGLETONS, "a").await.unwrap(), Some(1));
    assert_eq!(lease::take(&b, SINGLETONS, "b").await.unwrap(), None, "the lock is A's");
    assert_eq!(singletons::tick(&mut a, "a", 1, "enforce").await.unwrap(), 1);
    // A loses its lock, as when its connection dies, and B still waits for
    // A's lease to expire.
    a.execute("SELECT pg_advisory_unlock_all()", &[]).await.unwrap();
    assert_eq!(lease::take(&b, SINGLETONS, "b").await.unwrap(), None, "A's lease has not expired");
    // The lease expires (as `LEASE_TTL` without a renewal would).
    b.execute("UPDATE leases SET expires = now() - interval '1 second'", &[]).await.unwrap();
    assert_eq!(lease::take(&b, SINGLETONS, "b").await.unwrap(), Some(2));
    // A's late writes, under epoch 1.
    let refused = singletons::tick(&mut a, "a", 1, "enforce").await.unwrap_err();
    eprintln!("{refused}");
    assert!(matches!(&refused, LeaseError::Fenced { epoch: 1, .. }), "{refused}");
    let refused = singletons::expire(&mut a, "a", 1, std::time::Duration::ZERO).await.unwrap_err();
    assert!(matches!(&refused, LeaseError::Fenced { .. }), "{refused}");
    assert!(!lease::renew(&a, SINGLETONS, "a", 1).await.unwrap(), "A cannot renew");
    // Nothing of A's got in: B's tick is the second.
    assert_eq!(singletons::tick(&mut b, "b", 2, "enforce").await.unwrap(), 2);
    let row = b.query_one("SELECT epoch, tick FROM schedule_ticks WHERE name = 'enforce'", &[]).await.unwrap();
    assert_eq!((row.get::<_, i64>(0), row.get::<_, i64>(1)), (2, 2));
}

/// The same agent (id and key) reaching master B while its session on A
/// is open: B bumps the agent's session epoch, and A drops its session.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_agent_reaching_another_master_ends_its_stale_session() {
    let cluster = tokio::task::spawn_blocking(Postgres::start).await.unwrap().unwrap();
    let database = cluster.database().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let yaml = store_yaml(&cluster, &database, dir.path());
    let mut fleet = Fleet::start_with_master_config(&["web01"], &yaml).await.unwrap();
    let mut b = None;
    let result = async {
        let (master_b, _bus_b) = second_master(&fleet, "master-b", &yaml).await?;
        let master_b = b.insert(master_b);
        until_listed(&fleet, master_b, "web01 accepted on B", |l| l.contains("web01") && l.contains("accepted"))
            .await?;
        // web01 again, with its key, on B.
        let again = fleet.dir.path().join("web01-on-b");
        std::fs::DirBuilder::new().recursive(true).mode(0o700).create(again.join("data"))?;
        let key = again.join("data").join("agent.key");
        std::fs::copy(fleet.agent("web01").dir.join("data").join("agent.key"), &key)?;
        std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o600))?;
        let started = Instant::now();
        let agent =
            fleet::start_agent_with(&fleet.binaries, &again, "web01", &master_b.listen, &master_b.key, "").await?;
        let moved = fleet
            .wait_for("web01's session on A dropped", |e| {
                e.tag == "halite/agent/web01/disconnected" && e.data()["reason"] == "moved"
            })
            .await;
        eprintln!("web01 reached B: its session on A was dropped after {:?}", started.elapsed());
        agent.kill().await;
        let moved = moved?;
        assert_eq!(moved.data()["master"], master_b.listen.as_str(), "{}", moved.data());
        anyhow::Ok(())
    }
    .await;
    if let Err(error) = result {
        fail(&fleet, "B", b.as_ref(), &cluster, &error);
    }
}

fn copy_tree(from: &Path, to: &Path) -> std::io::Result<()> {
    std::fs::create_dir_all(to)?;
    for entry in std::fs::read_dir(from)? {
        let entry = entry?;
        let target = to.join(entry.file_name());
        if entry.file_type()?.is_dir() {
            copy_tree(&entry.path(), &target)?;
        } else {
            std::fs::copy(entry.path(), &target)?;
        }
    }
    Ok(())
}

/// Each master publishes the tree version it serves: `agents` on either
/// shows each agent's master and that master's version, and a master whose
/// copy of the tree differs from its peer's says so (its log, `agents`).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn agents_show_each_agents_master_and_a_differing_tree_is_said() {
    let cluster = tokio::task::spawn_blocking(Postgres::start).await.unwrap().unwrap();
    let database = cluster.database().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let yaml = store_yaml(&cluster, &database, dir.path());
    let mut fleet = Fleet::start_with_master_config(&["web01"], &yaml).await.unwrap();
    let mut b = None;
    let result = async {
        // B serves its own copy of the tree, one file different.
        let states_b = fleet.dir.path().join("states-b");
        copy_tree(&fleet.states, &states_b)?;
        std::fs::write(
            states_b.join("extra.yaml"),
            "extra:\n  file.managed:\n    path: /etc/extra\n    contents: \"b\\n\"\n",
        )?;
        let master_b = fleet::start_master_with(
            &fleet.binaries,
            &fleet.dir.path().join("master-b"),
            &states_b,
            "tcp://127.0.0.1:0",
            &["*"],
            &yaml,
        )
        .await?;
        let master_b = b.insert(master_b);
        let web02 = fleet::start_agent_with(
            &fleet.binaries,
            &fleet.dir.path().join("web02"),
            "web02",
            &master_b.listen,
            &master_b.key,
            "",
        )
        .await?;
        fleet.agents.push(web02);
        let a_name = fleet.master().listen.clone();
        let b_name = master_b.listen.clone();
        // Until A's view has both agents on their masters (one heartbeat).
        let deadline = tokio::time::Instant::now() + WAIT;
        let mut tick = tokio::time::interval(std::time::Duration::from_millis(100));
        let rows = loop {
            let rows: serde_json::Value = serde_json::from_str(&fleet.cli(&["agents", "--json"])?)?;
            let of = |id: &str| rows.as_array().and_then(|r| r.iter().find(|row| row["id"] == id)).cloned();
            let placed = of("web01").is_some_and(|r| r["master"] == a_name.as_str() && r["tree"].is_string())
                && of("web02").is_some_and(|r| r["master"] == b_name.as_str() && r["tree"].is_string());
            if placed {
                break rows;
            }
            anyhow::ensure!(tokio::time::Instant::now() < deadline, "agents never showed their masters: {rows}");
            tick.tick().await;
        };
        let tree =
            |id: &str| rows.as_array().and_then(|r| r.iter().find(|row| row["id"] == id)).map(|r| r["tree"].clone());
        assert_ne!(tree("web01"), tree("web02"), "two versions: {rows}");
        let text = fleet.cli(&["agents"])?;
        assert!(text.contains("warning: the masters serve 2 tree versions"), "{text}");
        assert!(text.contains(&format!("{b_name} (tree ")), "{text}");
        // A command for an agent on another master is routed to it
        // (`cluster_route.rs` tests routing itself).
        let routed = fleet.master_command(&["apply", "web02"]).await?;
        assert!(routed.code == 0 && routed.stdout.contains("web02"), "{}{}", routed.stdout, routed.stderr);
        let data_dir = fleet.master_data_dir();
        let mut command = halite_e2e::process(&fleet.binaries.master);
        command.arg("cmd").arg("--data-dir").arg(&data_dir).args(["web02", "--", "true"]);
        let routed = halite_e2e::CommandOutput::of(command).await?;
        assert!(routed.code == 0 && routed.stdout.contains("web02"), "{}{}", routed.stdout, routed.stderr);
        // B said so in its log (once per reload).
        let deadline = tokio::time::Instant::now() + WAIT;
        while !log_of(&master_b.log).contains("serves another tree version than its peers") {
            anyhow::ensure!(tokio::time::Instant::now() < deadline, "B never warned");
            tick.tick().await;
        }
        // The same tree again on B: the warning goes from `agents`.
        std::fs::remove_file(states_b.join("extra.yaml"))?;
        if fleet.states.join("extra.yaml").exists() {
            std::fs::copy(fleet.states.join("extra.yaml"), states_b.join("extra.yaml"))?;
        }
        let deadline = tokio::time::Instant::now() + WAIT;
        loop {
            let text = fleet.cli(&["agents"])?;
            if !text.contains("warning:") && text.contains(&format!("{b_name} (tree ")) {
                break;
            }
            anyhow::ensure!(tokio::time::Instant::now() < deadline, "the versions never agreed: {text}");
            tick.tick().await;
        }
        anyhow::Ok(())
    }
    .await;
    if let Err(error) = result {
        fail(&fleet, "B", b.as_ref(), &cluster, &error);
    }
}

/// On the cluster harness (masters on 127.0.0.2 and .3 sharing one key,
/// the agent listing both): a key deleted on the master the agent is not
/// on cuts its session where it is.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn in_a_cluster_a_key_deleted_on_any_master_cuts_its_agent_where_it_is() {
    let mut cluster = halite_e2e::cluster::Cluster::start(2).await.unwrap();
    let result = async {
        cluster.add_agents(&["web01"]).await?;
        let home = cluster.home_of("web01").ok_or_else(|| anyhow::anyhow!("web01 has no master"))?;
        let other = 1 - home;
        let binaries = halite_e2e::binaries();
        let data_dir = cluster.master(other).map(|m| m.dir.join("data")).unwrap_or_default();
        let keys = |args: &'static [&'static str]| {
            let mut command = halite_e2e::process(&binaries.master);
            command.args(args).arg("--data-dir").arg(&data_dir);
            halite_e2e::CommandOutput::of(command)
        };
        // The other master learnt web01's key from PostgreSQL.
        let deadline = tokio::time::Instant::now() + WAIT;
        let mut tick = tokio::time::interval(std::time::Duration::from_millis(50));
        loop {
            let listed = keys(&["keys", "list"]).await?.stdout;
            if listed.contains("web01") && listed.contains("accepted") {
                break;
            }
            anyhow::ensure!(tokio::time::Instant::now() < deadline, "master {other} never listed web01: {listed}");
            tick.tick().await;
        }
        let started = Instant::now();
        let deleted = keys(&["keys", "delete", "web01"]).await?;
        anyhow::ensure!(deleted.code == 0, "keys delete: {}", deleted.stderr);
        let (master, _) = cluster
            .wait_for("web01's session cut", |_, e| {
                e.tag == "halite/agent/web01/disconnected" && e.data()["reason"] == "deleted"
            })
            .await?;
        eprintln!(
            "key deleted on master {other}: web01's session on master {home} was cut after {:?}",
            started.elapsed()
        );
        assert_eq!(master, home, "cut where the session was");
        anyhow::Ok(())
    }
    .await;
    if let Err(error) = result {
        cluster.fail(&error);
    }
}

/// With PostgreSQL unreachable no master runs a singleton: the leader
/// steps down at its first failed renewal, and leads again (a new epoch)
/// once PostgreSQL answers.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_postgres_down_no_master_runs_a_singleton() {
    let cluster = tokio::task::spawn_blocking(Postgres::start).await.unwrap().unwrap();
    let database = cluster.database().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let yaml = format!("{}{SCHEDULE}", store_yaml(&cluster, &database, dir.path()));
    let target = target(&cluster, &database);
    let mut fleet = Fleet::start_with_master_config(&["web01"], &yaml).await.unwrap();
    let result = async {
        let deadline = tokio::time::Instant::now() + WAIT;
        let mut tick = tokio::time::interval(std::time::Duration::from_millis(50));
        let first = loop {
            if let Some((_, epoch)) = lease_row(&target).await? {
                break epoch;
            }
            anyhow::ensure!(tokio::time::Instant::now() < deadline, "nobody led");
            tick.tick().await;
        };
        cluster.stop_immediate()?;
        let stopped = Instant::now();
        let down =
            fleet.wait_for("the leader stepping down", |e| e.tag == "halite/master/singletons/stepped-down").await?;
        eprintln!("PostgreSQL stopped: the leader stepped down after {:?}", stopped.elapsed());
        assert_eq!(down.data()["epoch"], first, "{}", down.data());
        cluster.start_again()?;
        let led = fleet.wait_for("leading again", |e| e.tag == "halite/master/singletons/leading").await?;
        let epoch = led.data()["epoch"].as_i64().unwrap_or_default();
        assert!(epoch > first, "a new epoch: {epoch} after {first}");
        anyhow::Ok(())
    }
    .await;
    if let Err(error) = result {
        eprintln!("===== postgres =====\n{}", cluster.log());
        fleet.fail(&error);
    }
}

//! The control plane across masters on one PostgreSQL (issue #20,
//! `server/cluster/`): a key decision on one master reaches the others'
//! sessions, the singletons move to another master when their leader dies
//! and a stale leader's write is refused, and an agent's session moves to
//! the master it reached last.
//!
//! Each test starts its masters itself (two at most) on one database.

use std::path::Path;
use std::time::Instant;

use halite_e2e::postgres::Postgres;
use halite_e2e::{Fleet, WAIT};
use halite_master::client::{BusEvent, Subscriber};
use halite_master::fleet::{self, AgentProcess, MasterProcess};
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
    let master = fleet::start_master_with(
        &fleet.binaries,
        &fleet.dir.path().join(name),
        &fleet.states,
        "tcp://127.0.0.1:0",
        &["*"],
        yaml,
    )
    .await?;
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
        if let Some(a) = &a {
            eprintln!("===== master A =====\n{}", log_of(&a.log));
        }
        eprintln!("===== postgres =====\n{}", cluster.log());
        fleet.fail(&error);
    }
}

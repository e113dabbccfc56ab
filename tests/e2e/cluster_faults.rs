//! Several masters on one PostgreSQL when the database goes away (issue
//! #20, "Degrade, don't die"): PostgreSQL stopped in a drift storm, and a
//! network partition made of namespaces (`harness/netns.rs`) that cuts one
//! master from the database, or from its agents.
//!
//! What both check after the fault is healed: every drift restored byte
//! for byte, every event an agent sent recorded in PostgreSQL exactly once
//! (the bus's event ids against the `events` table, and every agent's
//! outbox empty: all it sent was acknowledged, so durable), every job's
//! answer recorded once per (job, agent), and no singleton run where the
//! lease was not held.

use std::collections::{HashMap, HashSet};
use std::path::PathBuf;

use halite_e2e::WAIT;
use halite_e2e::cluster::{Cluster, Placement};
use halite_e2e::netns::{Link, Net};
use halite_e2e::postgres::Postgres;
use halite_master::client::BusEvent;
use halite_master::fleet::Binaries;

use crate::cluster_failover::ids_spread_over;

/// The file every agent manages in the example tree (a template: its
/// content is each agent's own).
const CONF: &str = "/etc/motd";

/// Messages an agent's outbox holds (sent and not acknowledged, or not
/// sent yet), from its data dir.
fn outbox_len(agent_dir: &std::path::Path) -> usize {
    let Ok(dir) = std::fs::read_dir(agent_dir.join("data/outbox")) else { return 0 };
    dir.flatten()
        .filter(|e| e.path().extension().is_some_and(|x| x == "msg"))
        .map(|e| halite_agent::outbox::read_batch(&std::fs::read(e.path()).unwrap_or_default()).len())
        .sum()
}

/// The size of master `i`'s spool (`<data_dir>/pg-spool`), 0 when absent.
fn spool_len(cluster: &Cluster, i: usize) -> u64 {
    cluster.master(i).and_then(|m| std::fs::metadata(m.dir.join("data/pg-spool")).ok()).map_or(0, |m| m.len())
}

/// Waits until each of `masters` has published an event tagged `tag`,
/// counting those already taken since `cluster.seen[since]`.
async fn await_from(cluster: &mut Cluster, masters: &[usize], since: usize, tag: &str) -> anyhow::Result<()> {
    let mut missing: HashSet<usize> = masters.iter().copied().collect();
    for (master, event) in &cluster.seen[since..] {
        if event.tag == tag {
            missing.remove(master);
        }
    }
    while !missing.is_empty() {
        let (master, _) = cluster
            .wait_for(&format!("{tag} from masters {missing:?}"), |m, e| e.tag == tag && missing.contains(&m))
            .await?;
        missing.remove(&master);
    }
    Ok(())
}

/// The singletons' lease row: its holder and epoch.
async fn lease(cluster: &Cluster) -> anyhow::Result<Option<(String, i64)>> {
    let client = cluster.target.connect().await?;
    let row = client.query_opt("SELECT holder, epoch FROM leases WHERE name = 'singletons'", &[]).await?;
    Ok(row.map(|row| (row.get(0), row.get(1))))
}

/// The master (index) whose link a lease holder names.
fn holder_index(cluster: &Cluster, holder: &str) -> Option<usize> {
    cluster.listens.iter().position(|listen| holder.starts_with(&format!("{listen} ")))
}

/// Polls the lease row (every 50 ms, at most [`WAIT`]) until `wanted`.
async fn lease_when(
    cluster: &Cluster,
    what: &str,
    wanted: impl Fn(usize, i64) -> bool,
) -> anyhow::Result<(usize, i64)> {
    let deadline = tokio::time::Instant::now() + WAIT;
    let mut tick = tokio::time::interval(std::time::Duration::from_millis(50));
    loop {
        if let Ok(Some((holder, epoch))) = lease(cluster).await
            && let Some(master) = holder_index(cluster, &holder)
            && wanted(master, epoch)
        {
            return Ok((master, epoch));
        }
        anyhow::ensure!(tokio::time::Instant::now() < deadline, "timed out waiting for {what}");
        tick.tick().await;
    }
}

/// The masters leading now, by each one's last `singletons/leading` or
/// `…/stepped-down` among the events taken.
fn leading(seen: &[(usize, BusEvent)]) -> Vec<usize> {
    let mut state: HashMap<usize, bool> = HashMap::new();
    for (master, event) in seen {
        match event.tag.as_str() {
            "halite/master/singletons/leading" => state.insert(*master, true),
            "halite/master/singletons/stepped-down" => state.insert(*master, false),
            _ => None,
        };
    }
    let mut masters: Vec<usize> = state.into_iter().filter_map(|(m, leads)| leads.then_some(m)).collect();
    masters.sort_unstable();
    masters
}

/// After a fault is healed: every agent's outbox empties (all it sent was
/// acknowledged), every drift event taken from the bus is in the `events`
/// table exactly once and no other drift event is, each drift was reacted
/// to at most once, and every job answer seen on the bus is recorded once
/// per (job, agent) with no state's result twice. The drift event ids.
async fn check_recorded_once(cluster: &mut Cluster, ids: &[String]) -> anyhow::Result<HashSet<String>> {
    let dirs: Vec<PathBuf> = ids.iter().map(|id| cluster.agent(id).dir.clone()).collect();
    halite_e2e::wait_until("every agent's outbox acknowledged", || dirs.iter().all(|d| outbox_len(d) == 0)).await?;
    cluster.drain();
    let is_drift = |tag: &str| tag.starts_with("halite/beacon/") && tag.ends_with("/motd");
    let drifts: HashSet<String> =
        cluster.seen.iter().filter(|(_, e)| is_drift(&e.tag)).map(|(_, e)| e.id().to_owned()).collect();
    let client = cluster.target.connect().await?;
    // Acknowledged means durable; the spools may still be draining into
    // PostgreSQL: wait for the rows.
    let deadline = tokio::time::Instant::now() + WAIT;
    let mut tick = tokio::time::interval(std::time::Duration::from_millis(50));
    let (per_id, tags) = loop {
        let rows = client.query("SELECT id, tag, count(*) FROM events GROUP BY id, tag", &[]).await?;
        let per_id: HashMap<String, (String, i64)> =
            rows.iter().map(|row| (row.get(0), (row.get(1), row.get(2)))).collect();
        if drifts.iter().all(|id| per_id.contains_key(id)) {
            // The tags the drift events are recorded under.
            let tags: HashSet<String> = drifts.iter().map(|id| per_id[id].0.clone()).collect();
            break (per_id, tags);
        }
        anyhow::ensure!(
            tokio::time::Instant::now() < deadline,
            "drift events missing from PostgreSQL: {:?}",
            drifts.iter().filter(|id| !per_id.contains_key(*id)).collect::<Vec<_>>()
        );
        tick.tick().await;
    };
    let twice: Vec<_> = per_id.iter().filter(|(_, (_, n))| *n != 1).collect();
    anyhow::ensure!(twice.is_empty(), "events recorded more than once: {twice:?}");
    let unknown: Vec<_> = per_id.iter().filter(|(id, (tag, _))| tags.contains(tag) && !drifts.contains(*id)).collect();
    anyhow::ensure!(unknown.is_empty(), "drift events recorded that no master published: {unknown:?}");

    // Reactions: a drift's restore job is made once, the spool's drain
    // does not react again.
    let mut reactions: HashMap<&str, usize> = HashMap::new();
    let mut answers: HashSet<(String, String)> = HashSet::new();
    for (_, event) in &cluster.seen {
        let Some(rest) = event.tag.strip_prefix("halite/job/") else { continue };
        if rest.ends_with("/new")
            && let Some(id) = event.data()["cause"].as_str()
            && let Some(id) = drifts.get(id)
        {
            *reactions.entry(id.as_str()).or_default() += 1;
        }
        if let Some((jid, agent)) = rest.split_once("/ret/") {
            answers.insert((jid.to_owned(), agent.to_owned()));
        }
    }
    let again: Vec<_> = reactions.iter().filter(|(_, n)| **n > 1).collect();
    anyhow::ensure!(again.is_empty(), "drift events reacted to more than once: {again:?}");

    // Every answer the bus saw is recorded, for its (job, agent) once.
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let rows = client.query("SELECT jid, agent FROM job_agents WHERE status = 'answered'", &[]).await?;
        let recorded: HashSet<(String, String)> = rows.iter().map(|row| (row.get(0), row.get(1))).collect();
        let missing: Vec<_> = answers.iter().filter(|a| !recorded.contains(*a)).collect();
        if missing.is_empty() {
            break;
        }
        anyhow::ensure!(tokio::time::Instant::now() < deadline, "answers missing from PostgreSQL: {missing:?}");
        tick.tick().await;
    }
    let twice = client
        .query(
            "SELECT jid, agent, state, count(*) FROM job_results GROUP BY jid, agent, state HAVING count(*) > 1",
            &[],
        )
        .await?;
    anyhow::ensure!(
        twice.is_empty(),
        "a state's result recorded twice for a (job, agent): {:?}",
        twice.iter().map(|r| (r.get::<_, String>(0), r.get::<_, String>(1), r.get::<_, String>(2))).collect::<Vec<_>>()
    );
    println!(
        "{} drift events, each in `events` once; {} restore jobs, each reacted once; {} answers, each recorded once per (job, agent)",
        drifts.len(),
        reactions.len(),
        answers.len()
    );
    Ok(drifts)
}

/// Masters in the storm test.
const MASTERS: usize = 3;
/// Agents whose first choice is each master.
const PER_MASTER: usize = 3;
/// Rounds of drift; PostgreSQL is stopped right after the drifts of
/// [`STOP_ROUND`] are written, and started again after [`START_ROUND`]'s
/// are restored.
const ROUNDS: usize = 6;
const STOP_ROUND: usize = 1;
const START_ROUND: usize = 3;

/// Three masters, nine agents, a drift storm; PostgreSQL stopped
/// (`pg_ctl stop -m immediate`) in its second round and started again
/// two rounds later: every drift is restored byte for byte throughout;
/// each master says `…/store/postgres/unreachable` and spools; the leader
/// steps down and nobody leads while PostgreSQL is down; once it is back
/// every master says `…/reachable`, its spool drains, one master leads
/// under a new epoch, and PostgreSQL holds every event of the storm once
/// ([`check_recorded_once`]). The audit log is each master's halite.db
/// (README "Keys, commands and singletons across masters"), not checked
/// here: the `events` table is the record shared by the masters.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_stopped_in_a_storm_enforcement_goes_on_and_the_spools_drain_once() {
    let mut cluster = Cluster::start(MASTERS).await.unwrap();
    let result = async {
        let ids = ids_spread_over(&cluster.listens, PER_MASTER);
        let names: Vec<&str> = ids.iter().map(String::as_str).collect();
        cluster.add_agents(&names).await?;
        cluster.drain();
        let all: Vec<usize> = (0..MASTERS).collect();
        println!("agents per master: {:?}", cluster.split());
        let (leader, first_epoch) = lease_when(&cluster, "a leader", |_, _| true).await?;
        println!("master {leader} leads under epoch {first_epoch}");

        let mut expected = HashMap::new();
        for id in &ids {
            expected.insert(cluster.agent(id).path(CONF), std::fs::read(cluster.agent(id).path(CONF))?);
        }
        let files: Vec<PathBuf> = ids.iter().map(|id| cluster.agent(id).path(CONF)).collect();
        let restored = || files.iter().all(|f| std::fs::read(f).is_ok_and(|bytes| Some(&bytes) == expected.get(f)));
        let (mut stopped_at, mut down_from, mut up_from) = (None, 0, 0);
        for round in 0..ROUNDS {
            for id in &ids {
                std::fs::write(cluster.agent(id).path(CONF), format!("drift {round} of {id}\n"))?;
            }
            if round == STOP_ROUND {
                cluster.drain();
                down_from = cluster.seen.len();
                tokio::task::block_in_place(|| cluster.postgres.stop_immediate())?;
                stopped_at = Some(std::time::Instant::now());
                println!("PostgreSQL stopped in round {round}");
            }
            let began = std::time::Instant::now();
            halite_e2e::wait_until(&format!("round {round}'s drifts restored"), restored).await?;
            println!("round {round}: {} drifts restored in {:?}", ids.len(), began.elapsed());
            if round > STOP_ROUND && round <= START_ROUND {
                // Every master has recorded since the stop: each has found
                // PostgreSQL gone, and spools.
                await_from(&mut cluster, &all, down_from, "halite/master/store/postgres/unreachable").await?;
                await_from(&mut cluster, &[leader], down_from, "halite/master/singletons/stepped-down").await?;
                let spools: Vec<u64> = all.iter().map(|&i| spool_len(&cluster, i)).collect();
                println!("round {round}: spools {spools:?} bytes");
                anyhow::ensure!(spools.iter().all(|&n| n > 0), "a master does not spool: {spools:?}");
            }
            if round == START_ROUND {
                cluster.drain();
                let during = &cluster.seen[down_from..];
                let led: Vec<_> = during.iter().filter(|(_, e)| e.tag == "halite/master/singletons/leading").collect();
                anyhow::ensure!(led.is_empty(), "a master led while PostgreSQL was down: {led:?}");
                let stepped = during
                    .iter()
                    .find(|(m, e)| *m == leader && e.tag == "halite/master/singletons/stepped-down")
                    .map(|(_, e)| e.data()["epoch"].clone());
                anyhow::ensure!(stepped == Some(first_epoch.into()), "the leader stepped down from {stepped:?}");
                println!("the leader stepped down; nobody led while PostgreSQL was down");
                up_from = cluster.seen.len();
                tokio::task::block_in_place(|| cluster.postgres.start_again())?;
                let started = std::time::Instant::now();
                println!("PostgreSQL started again after {:?} down", stopped_at.map(|at| at.elapsed()));
                await_from(&mut cluster, &all, up_from, "halite/master/store/postgres/reachable").await?;
                let reach = started.elapsed();
                halite_e2e::wait_until("every spool drained", || all.iter().all(|&i| spool_len(&cluster, i) == 0))
                    .await?;
                println!("every master reachable after {reach:?}, spools drained after {:?}", started.elapsed());
            }
        }

        // One leader again, under a new epoch.
        if leading(&cluster.seen[up_from..]).is_empty() {
            cluster.wait_for("a master leading again", |_, e| e.tag == "halite/master/singletons/leading").await?;
        }
        let (again, epoch) = lease_when(&cluster, "the lease taken again", |_, epoch| epoch > first_epoch).await?;
        cluster.drain();
        let now = leading(&cluster.seen);
        anyhow::ensure!(now == vec![again], "masters leading: {now:?}, the lease names {again}");
        println!("master {again} leads again under epoch {epoch}");

        let drifts = check_recorded_once(&mut cluster, &ids).await?;
        anyhow::ensure!(
            drifts.len() >= ids.len() * ROUNDS,
            "{} drift events for {} drifts",
            drifts.len(),
            ids.len() * ROUNDS
        );
        anyhow::Ok(())
    }
    .await;
    if let Err(error) = result {
        cluster.fail(&error);
    }
}

/// A cluster of [`MASTERS`] masters partitioned by network namespaces, and
/// the links a test cuts.
struct Partitioned {
    cluster: Cluster,
    /// Each master's link towards PostgreSQL.
    db_links: Vec<Link>,
    /// Each master's link towards the agents.
    agent_links: Vec<Link>,
    /// Dropped last: the namespaces outlive the processes in them.
    net: Net,
}

/// The topology: a hub namespace with two bridges, `db` (10.20.1.0/24) and
/// `ag` (10.20.2.0/24); PostgreSQL in a namespace on `db`; each master in
/// its own with one leg on each bridge, listening for agents on its `ag`
/// address; every agent in one namespace on `ag`. So a master's database
/// side and agent side are cut apart. `master_yaml` goes in every
/// master.yaml.
async fn partitioned(master_yaml: &str) -> anyhow::Result<Partitioned> {
    let mut net = Net::new()?;
    let hub = net.namespace("hub")?;
    net.bridge(&hub, "db")?;
    net.bridge(&hub, "ag")?;
    let db = net.namespace("db")?;
    net.link(&db, "10.20.1.1/24", &hub, "db")?;
    let binaries = halite_e2e::binaries();
    let (mut masters, mut db_links, mut agent_links) = (Vec::new(), Vec::new(), Vec::new());
    for i in 0..MASTERS {
        let ns = net.namespace(&format!("m{i}"))?;
        db_links.push(net.link(&ns, &format!("10.20.1.{}/24", 10 + i), &hub, "db")?);
        agent_links.push(net.link(&ns, &format!("10.20.2.{}/24", 10 + i), &hub, "ag")?);
        let placed = Binaries { master: net.wrapper(&ns, &binaries.master)?, agent: binaries.agent.clone() };
        masters.push((format!("tcp://10.20.2.{}:0", 10 + i), placed));
    }
    let agents_ns = net.namespace("agents")?;
    net.link(&agents_ns, "10.20.2.100/24", &hub, "ag")?;
    let agents = Binaries { master: binaries.master.clone(), agent: net.wrapper(&agents_ns, &binaries.agent)? };
    let postgres = tokio::task::spawn_blocking(move || Postgres::start_in(&db, "10.20.1.1")).await??;
    let placement =
        Placement { postgres, postgres_host: "10.20.1.1".into(), masters, agents, master_yaml: master_yaml.into() };
    let cluster = Cluster::start_placed(placement).await?;
    println!("namespaces {}-*: PostgreSQL, {MASTERS} masters, the agents", net.prefix());
    Ok(Partitioned { cluster, db_links, agent_links, net })
}

/// Whether partition tests can run; if not, says so loudly.
fn can_partition(test: &str) -> bool {
    match Net::unavailable() {
        None => true,
        Some(why) => {
            eprintln!("\n!!!!! SKIPPED {test}: {why}. It needs root and `ip netns` (CI has both). !!!!!\n");
            false
        }
    }
}

/// Agents per master in the partition tests.
const PARTITION_PER_MASTER: usize = 2;

/// A schedule entry every master has: the leader ticks it every second,
/// which shows who runs the singletons.
const SCHEDULE: &str = "schedule:\n  - name: enforce\n    every: 1s\n";

/// How many schedule ticks master `i` has written (its log says each), and
/// how many of its singleton writes were refused as a stale leader's.
fn ticks_of(cluster: &Cluster, i: usize) -> (usize, usize) {
    let log = cluster.master(i).map(|m| std::fs::read_to_string(&m.log).unwrap_or_default()).unwrap_or_default();
    (log.matches("Ticked a scheduled run").count(), log.matches("A stale leader's write was refused").count())
}

/// Writes a drift into each of `ids`' managed file and waits until every
/// one is restored byte for byte to `expected`; how long that took.
async fn drift_and_restore(
    cluster: &Cluster,
    ids: &[String],
    expected: &HashMap<PathBuf, Vec<u8>>,
    what: &str,
) -> anyhow::Result<std::time::Duration> {
    let began = std::time::Instant::now();
    let files: Vec<PathBuf> = ids.iter().map(|id| cluster.agent(id).path(CONF)).collect();
    for (id, file) in ids.iter().zip(&files) {
        std::fs::write(file, format!("{what} of {id}\n"))?;
    }
    let restored = || files.iter().all(|f| std::fs::read(f).is_ok_and(|bytes| Some(&bytes) == expected.get(f)));
    halite_e2e::wait_until(&format!("{what}: drifts restored"), restored).await?;
    Ok(began.elapsed())
}

/// What each agent's managed file holds after its start-up apply.
fn expected_files(cluster: &Cluster, ids: &[String]) -> anyhow::Result<HashMap<PathBuf, Vec<u8>>> {
    let mut expected = HashMap::new();
    for id in ids {
        let path = cluster.agent(id).path(CONF);
        expected.insert(path.clone(), std::fs::read(path)?);
    }
    Ok(expected)
}

/// The leader cut from PostgreSQL (its database-side link taken off the
/// bridge) but not from its agents: it keeps enforcing its agents' drifts
/// from its cached tree and keys, says `…/unreachable`, spools, steps down
/// and leads no more while cut; another master takes the lease under a
/// new epoch. Healed: its spool drains (`…/reachable`), it does not lead
/// again beside the new leader, and every event, reaction and answer is
/// recorded once ([`check_recorded_once`]).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_master_cut_from_postgres_keeps_enforcing_and_runs_no_singleton() {
    if !can_partition("a_master_cut_from_postgres_keeps_enforcing_and_runs_no_singleton") {
        return;
    }
    let mut setup = partitioned(SCHEDULE).await.unwrap();
    let result = async {
        let Partitioned { cluster, db_links, net, .. } = &mut setup;
        let ids = ids_spread_over(&cluster.listens, PARTITION_PER_MASTER);
        let names: Vec<&str> = ids.iter().map(String::as_str).collect();
        cluster.add_agents(&names).await?;
        cluster.drain();
        println!("agents per master: {:?}", cluster.split());
        let expected = expected_files(cluster, &ids)?;
        let (cut, first_epoch) = lease_when(cluster, "a leader", |_, _| true).await?;
        let listens = cluster.listens.clone();
        let its: Vec<String> =
            ids.iter().filter(|id| halite_agent::masters::rank(id, &listens)[0] == cut).cloned().collect();
        println!("master {cut} leads (epoch {first_epoch}) and holds {its:?}: cutting it from PostgreSQL");
        drift_and_restore(cluster, &ids, &expected, "before the cut").await?;
        halite_e2e::wait_until("the leader ticking the schedule", || ticks_of(cluster, cut).0 > 0).await?;

        cluster.drain();
        let cut_from = cluster.seen.len();
        net.cut(&db_links[cut])?;
        let cut_at = std::time::Instant::now();
        // Its agents' drifts, recorded nowhere but its spool.
        let took = drift_and_restore(cluster, &its, &expected, "cut round 0").await?;
        println!("cut: master {cut}'s agents' drifts restored in {took:?}");
        await_from(cluster, &[cut], cut_from, "halite/master/singletons/stepped-down").await?;
        println!("master {cut} stepped down {:?} after the cut", cut_at.elapsed());
        // What it ticked as leader; from here on it must tick no more.
        let (ticked, _) = ticks_of(cluster, cut);
        await_from(cluster, &[cut], cut_from, "halite/master/store/postgres/unreachable").await?;
        println!("master {cut} found PostgreSQL unreachable {:?} after the cut", cut_at.elapsed());
        let (other, epoch) =
            lease_when(cluster, "another master taking the lease", |m, epoch| m != cut && epoch > first_epoch).await?;
        println!("master {other} took the lease (epoch {epoch}) {:?} after the cut", cut_at.elapsed());
        let before = ticks_of(cluster, other).0;
        halite_e2e::wait_until("the schedule resumed on the new leader", || ticks_of(cluster, other).0 > before).await?;
        for round in 1..3 {
            let took = drift_and_restore(cluster, &ids, &expected, &format!("cut round {round}")).await?;
            println!("cut round {round}: every drift restored in {took:?}");
        }
        anyhow::ensure!(spool_len(cluster, cut) > 0, "master {cut} does not spool");
        cluster.drain();
        let during = &cluster.seen[cut_from..];
        // Its agents stayed, and it restored them itself.
        let moved: Vec<_> = during
            .iter()
            .filter(|(m, e)| *m == cut && e.tag.starts_with("halite/agent/") && e.tag.ends_with("/disconnected"))
            .collect();
        anyhow::ensure!(moved.is_empty(), "master {cut} lost agents while cut from PostgreSQL only: {moved:?}");
        let restores = during
            .iter()
            .filter(|(m, e)| *m == cut && e.tag.starts_with("halite/job/") && e.tag.ends_with("/new"))
            .count();
        anyhow::ensure!(restores >= its.len() * 3, "master {cut} made {restores} restore jobs while cut");
        let led: Vec<_> =
            during.iter().filter(|(m, e)| *m == cut && e.tag == "halite/master/singletons/leading").collect();
        anyhow::ensure!(led.is_empty(), "master {cut} led while cut from PostgreSQL: {led:?}");

        let heal_from = cluster.seen.len();
        net.heal(&db_links[cut])?;
        let healed_at = std::time::Instant::now();
        await_from(cluster, &[cut], heal_from, "halite/master/store/postgres/reachable").await?;
        halite_e2e::wait_until("the spool drained", || spool_len(cluster, cut) == 0).await?;
        println!("healed: master {cut} reachable and its spool drained after {:?}", healed_at.elapsed());
        drift_and_restore(cluster, &ids, &expected, "after the heal").await?;
        let (leader, now) = lease_when(cluster, "the lease", |_, _| true).await?;
        cluster.drain();
        let leaders = leading(&cluster.seen);
        anyhow::ensure!(
            leaders == vec![leader] && leader == other && now == epoch,
            "after the heal the lease is master {leader}'s (epoch {now}), the bus says {leaders:?} lead"
        );
        check_recorded_once(cluster, &ids).await?;
        let (after, refused) = ticks_of(cluster, cut);
        anyhow::ensure!(after == ticked, "master {cut} ticked {} times after it stepped down", after - ticked);
        let stale: i64 = cluster
            .target
            .connect()
            .await?
            .query_one("SELECT count(*) FROM schedule_ticks WHERE epoch <> $1", &[&epoch])
            .await?
            .get(0);
        anyhow::ensure!(stale == 0, "a schedule tick under another epoch than the new leader's {epoch}");
        println!(
            "master {cut} ticked {ticked} times as leader and none after it stepped down ({refused} late writes refused); the schedule's ticks are epoch {epoch}'s"
        );
        anyhow::Ok(())
    }
    .await;
    if let Err(error) = result {
        setup.cluster.fail(&error);
    }
}

/// A master cut from its agents (its agent-side link taken off the bridge)
/// but not from PostgreSQL: its agents' heartbeats go unanswered, and after
/// three missed ones (5 s each) each agent moves to its second-ranked
/// master and enforces there; the cut master learns through PostgreSQL that
/// they moved and drops their sessions (`reason: moved`); the other
/// masters' agents do not move. Drifts written just after the cut (sent
/// into the partition, never acknowledged) are resent to the new master
/// and restored; healed, every event is recorded once. The time to re-home
/// is printed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_master_cut_from_its_agents_loses_them_to_the_others() {
    if !can_partition("a_master_cut_from_its_agents_loses_them_to_the_others") {
        return;
    }
    let mut setup = partitioned("").await.unwrap();
    let result = async {
        let Partitioned { cluster, agent_links, net, .. } = &mut setup;
        let ids = ids_spread_over(&cluster.listens, PARTITION_PER_MASTER);
        let names: Vec<&str> = ids.iter().map(String::as_str).collect();
        cluster.add_agents(&names).await?;
        cluster.drain();
        let expected = expected_files(cluster, &ids)?;
        let listens = cluster.listens.clone();
        let rank = |id: &str| halite_agent::masters::rank(id, &listens);
        const CUT: usize = 1;
        let (away, stay): (Vec<String>, Vec<String>) = ids.iter().cloned().partition(|id| rank(id)[0] == CUT);
        println!("agents per master: {:?}; cutting master {CUT} from {away:?}", cluster.split());

        cluster.drain();
        let cut_from = cluster.seen.len();
        net.cut(&agent_links[CUT])?;
        let cut_at = std::time::Instant::now();
        // Drift into the partition: the events go to the cut master and
        // are never acknowledged; the restore waits for the new master.
        for id in &away {
            std::fs::write(cluster.agent(id).path(CONF), format!("drift into the partition of {id}\n"))?;
        }
        let files: Vec<PathBuf> = away.iter().map(|id| cluster.agent(id).path(CONF)).collect();
        let restored = || files.iter().all(|f| std::fs::read(f).is_ok_and(|bytes| Some(&bytes) == expected.get(f)));
        for id in &away {
            let second = rank(id)[1];
            if cluster.home_of(id) != Some(second) {
                cluster
                    .wait_for(&format!("{id} on master {second}"), |m, e| {
                        m == second && e.tag == format!("halite/agent/{id}/connected")
                    })
                    .await?;
            }
            println!("{id} re-homed on master {second} {:?} after the cut", cut_at.elapsed());
        }
        halite_e2e::wait_until("the drifts sent into the partition restored", restored).await?;
        println!("the cut master's agents enforce again {:?} after the cut", cut_at.elapsed());
        for id in &away {
            let tag = format!("halite/agent/{id}/disconnected");
            let dropped = cluster.seen[cut_from..].iter().find(|(m, e)| *m == CUT && e.tag == tag).cloned();
            let (_, dropped) = match dropped {
                Some(dropped) => dropped,
                None => {
                    cluster.wait_for(&format!("master {CUT} dropping {id}"), |m, e| m == CUT && e.tag == tag).await?
                }
            };
            println!("master {CUT} dropped {id}'s session: {}", dropped.data());
            anyhow::ensure!(dropped.data()["reason"] == "moved", "dropped for another reason: {}", dropped.data());
        }
        let took = drift_and_restore(cluster, &ids, &expected, "while cut").await?;
        println!("while cut: every drift restored in {took:?}");
        cluster.drain();
        for id in &stay {
            anyhow::ensure!(cluster.home_of(id) == Some(rank(id)[0]), "{id} moved: {:?}", cluster.home_of(id));
        }
        println!("agents per master while cut: {:?}", cluster.split());
        // The restores of the moved agents were the new masters' work.
        let restored_by_cut = cluster.seen[cut_from..]
            .iter()
            .filter(|(m, e)| *m == CUT && e.tag.starts_with("halite/job/") && e.tag.ends_with("/new"))
            .count();
        anyhow::ensure!(restored_by_cut == 0, "the cut master made {restored_by_cut} jobs for agents it cannot reach");

        net.heal(&agent_links[CUT])?;
        drift_and_restore(cluster, &ids, &expected, "after the heal").await?;
        check_recorded_once(cluster, &ids).await?;
        anyhow::Ok(())
    }
    .await;
    if let Err(error) = result {
        setup.cluster.fail(&error);
    }
}

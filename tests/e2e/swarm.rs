//! The swarm load generator, small enough for every test run: 50 simulated
//! agents (each its own key, Noise session and directory) against a real
//! master; all drift at once and all are restored, byte for byte; and a
//! burst from many agents at once arrives whole and in each agent's order.

use std::collections::HashMap;

use anyhow::Context;
use halite_e2e::{WAIT, binaries};
use halite_master::client::Subscriber;
use halite_swarm::agent::Command;
use halite_swarm::scenario::{self, Bench};
use halite_swarm::swarm::{Swarm, SwarmSettings};

const AGENTS: usize = 50;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fifty_swarm_agents_drift_at_once_and_all_are_restored() {
    let bench = Bench::start(binaries()).await.expect("master starts");
    let outcome = async {
        let mut swarm = bench.swarm(AGENTS)?;
        scenario::converge(&mut swarm, WAIT).await?;
        // The start-up apply wrote every agent's file.
        scenario::verify_restored(&swarm)?;
        let storm = swarm.drift_all(WAIT).await?;
        anyhow::ensure!(storm.latencies.len() == AGENTS, "{} restores for {AGENTS} drifts", storm.latencies.len());
        anyhow::ensure!(storm.failed == 0, "{} restores failed", storm.failed);
        anyhow::ensure!(storm.unchanged == 0, "{} restores changed nothing: the drift did not happen", storm.unchanged);
        scenario::verify_restored(&swarm)?;
        swarm.shutdown().await;
        anyhow::Ok(())
    }
    .await;
    if let Err(error) = outcome {
        let log = std::fs::read_to_string(&bench.master().log).unwrap_or_default();
        panic!("{error:#}\n--- master log ---\n{log}");
    }
    bench.stop().await;
}

/// Every agent of a swarm sends a burst of events the moment its session
/// opens (the command waits in its queue, so its first message after the
/// handshake is already a batch), while other agents are still in theirs:
/// each agent's events reach the bus in the order it sent them, every one
/// exactly once. Guards the decode workers (`server/decode.rs`): a peer's
/// handshake and messages are opened on one worker, in order, and come
/// back to the link loop in that order (an agent's first events once
/// arrived before its session existed, and were dropped).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_burst_from_many_agents_reaches_the_bus_in_each_agents_order_and_whole() {
    const BURST_AGENTS: usize = 40;
    const PER_AGENT: usize = 600;
    let bench = Bench::start(binaries()).await.expect("master starts");
    let outcome = async {
        let mut bus = Subscriber::connect(&bench.master().publish, "halite/").await?;
        // One agent first, to know the subscription has reached the
        // publisher before the burst.
        let mut settings = SwarmSettings::new(bench.listen.clone(), bench.key, 1, bench.dir.path().join("probe"));
        settings.prefix = "probe".into();
        let probe = Swarm::start(settings)?;
        bus.wait_for(WAIT, "the probe agent's connection", |e| e.tag == "halite/agent/probe00000/connected").await?;
        let mut settings =
            SwarmSettings::new(bench.listen.clone(), bench.key, BURST_AGENTS, bench.dir.path().join("burst"));
        settings.prefix = "burst".into();
        let mut swarm = Swarm::start(settings)?;
        swarm.command_all(Command::Emit(PER_AGENT)).await?;
        let mut next: HashMap<String, i64> = HashMap::new();
        let mut seen = 0;
        tokio::time::timeout(WAIT * 4, async {
            while seen < BURST_AGENTS * PER_AGENT {
                tokio::select! {
                    event = bus.next() => {
                        let event = event?;
                        if !(event.tag.starts_with("halite/beacon/burst") && event.tag.ends_with("/load")) {
                            continue;
                        }
                        let n = event.json["data"]["n"].as_i64().context("an event without its number")?;
                        let expected = next.entry(event.agent().to_owned()).or_insert(0);
                        anyhow::ensure!(n == *expected, "{}: event {n} reached the bus where {} was due", event.agent(), *expected);
                        *expected += 1;
                        seen += 1;
                    }
                    // Reports are read meanwhile so that no agent waits on a full queue.
                    report = swarm.next_report() => anyhow::ensure!(report.is_some(), "every agent stopped"),
                }
            }
            anyhow::Ok(())
        })
        .await
        .with_context(|| format!("{seen} of {} events reached the bus", BURST_AGENTS * PER_AGENT))??;
        anyhow::ensure!(next.len() == BURST_AGENTS, "events from {} agents of {BURST_AGENTS}", next.len());
        anyhow::ensure!(next.values().all(|n| *n == PER_AGENT as i64), "not every agent's events arrived: {next:?}");
        swarm.shutdown().await;
        probe.shutdown().await;
        anyhow::Ok(())
    }
    .await;
    if let Err(error) = outcome {
        let log = std::fs::read_to_string(&bench.master().log).unwrap_or_default();
        panic!("{error:#}\n--- master log ---\n{log}");
    }
    bench.stop().await;
}

/// `halite-swarm cluster`, small: three masters on a throwaway PostgreSQL,
/// 90 simulated agents listing all three, run as three swarm processes of
/// at most 40 (as 30,000 agents run as three of 10,000). Every drift of
/// the storm is restored, every ingested event is a row in PostgreSQL, and
/// when master 0 is SIGKILLed every one of its agents re-homes on a
/// survivor and has a drift restored there, no other agent loses its
/// session, and both survivors take some of them. The command fails (exit
/// 1) when any of that does not happen; the lines are checked too, so the
/// report cannot silently lose a figure.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_cluster_swarm_storms_ingests_and_survives_a_killed_master() {
    const MASTERS: usize = 3;
    const AGENTS: usize = 90;
    const EVENTS: usize = 5;
    let swarm = binaries().master.with_file_name("halite-swarm");
    assert!(swarm.exists(), "{} is not built: run `cargo build --workspace --bins`", swarm.display());
    let output = halite_e2e::process(&swarm)
        .args(["--timeout", &format!("{}s", WAIT.as_secs()), "cluster"])
        .args(["--masters", &MASTERS.to_string(), "--agents", &AGENTS.to_string()])
        .args(["--per-process", "40", "--events", &EVENTS.to_string(), "--idle", "1s"])
        .output()
        .await
        .expect("halite-swarm runs");
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "halite-swarm cluster failed:\n{stdout}\n{stderr}");
    let line = |prefix: &str| -> &str {
        stdout
            .lines()
            .find(|l| l.starts_with(prefix))
            .unwrap_or_else(|| panic!("no `{prefix}` line in:\n{stdout}\n{stderr}"))
    };
    assert!(line("cluster: 3 masters").contains("in 3 swarm processes"), "{stdout}");
    // Every master got some of the fleet at the start.
    let split = line(&format!("cluster: {AGENTS} agents connected"));
    let per_master: Vec<usize> = split
        .rsplit_once('[')
        .and_then(|(_, rest)| rest.strip_suffix(']'))
        .map(|list| list.split(", ").map(|n| n.parse().unwrap()).collect())
        .unwrap_or_default();
    assert_eq!(per_master.len(), MASTERS, "{split}");
    assert_eq!(per_master.iter().sum::<usize>(), AGENTS, "{split}");
    assert!(per_master.iter().all(|&n| n > 0), "{split}");
    assert!(line("cluster storm: all").contains(&format!("all {AGENTS} restored")), "{stdout}");
    assert!(line("cluster ingest: ").starts_with(&format!("cluster ingest: {} events", AGENTS * EVENTS)), "{stdout}");
    let killed = line("cluster failover: master 0");
    assert!(
        killed.contains(&format!("with {} agents", per_master[0]))
            && killed.ends_with("all re-homed and enforcing again"),
        "{killed}"
    );
    assert!(line("cluster failover: kill → re-homed: ").contains(&format!("n={}", per_master[0])), "{stdout}");
    let shares = line("cluster failover: shares after: ");
    assert!(shares.ends_with("meanwhile: 0"), "agents of the surviving masters moved: {shares}");
    // The killed master's agents went to both survivors, and nobody else moved.
    for (i, before) in per_master.iter().enumerate().skip(1) {
        let after: usize = shares
            .split(&format!("m{i} "))
            .nth(1)
            .and_then(|rest| rest.split_whitespace().next())
            .and_then(|n| n.parse().ok())
            .unwrap_or_else(|| panic!("no share of m{i} in {shares}"));
        assert!(after > *before, "master {i} took none of master 0's agents: {shares}");
    }
}

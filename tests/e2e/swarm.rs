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

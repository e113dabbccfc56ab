//! The swarm load generator, small enough for every test run: 50 simulated
//! agents (each its own key, Noise session and directory) against a real
//! master; all drift at once and all are restored, byte for byte.

use halite_e2e::{WAIT, binaries};
use halite_swarm::scenario::{self, Bench};

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

//! Drift → restore latency on one agent, over real processes on loopback.
//!
//! Run (release binaries first, then the benchmark):
//!
//! ```sh
//! cargo build --release --workspace && cargo bench -p halite-e2e --bench drift_restore
//! ```
//!
//! `HALITE_BENCH_DRIFTS` sets the number of drifts (default 1000). Each
//! drift is one of the kinds in `halite_master::fleet::DRIFTS` (append,
//! truncate and rewrite, delete, replace by rename, chmod), in turn, on a
//! managed file. Two latencies are measured from the
//! moment the drifting syscall returns: until the beacon's event arrives on
//! the master's publisher, and until the restore job's result does (the
//! file is restored before that result is sent). `TMPDIR=/dev/shm` puts the
//! managed files on tmpfs, which takes fsync out of the measurement.

// Test code outside `#[test]` functions (helpers, a bench): a panic is a
// failed test, which is what `unwrap` says here.
#![allow(clippy::unwrap_used)]

use std::time::{Duration, Instant};

use halite_e2e::{Fleet, example_file};
use halite_master::fleet::DRIFTS;

fn stats(name: &str, samples: &mut [Duration]) {
    samples.sort_unstable();
    let at = |q: f64| samples[((samples.len() as f64 - 1.0) * q).round() as usize];
    let ms = |d: Duration| d.as_secs_f64() * 1e3;
    println!(
        "{name:<26} n={:<5} min {:>7.3} ms  p50 {:>7.3} ms  p99 {:>7.3} ms  max {:>7.3} ms",
        samples.len(),
        ms(samples[0]),
        ms(at(0.5)),
        ms(at(0.99)),
        ms(samples[samples.len() - 1])
    );
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> anyhow::Result<()> {
    let drifts: usize = std::env::var("HALITE_BENCH_DRIFTS").ok().and_then(|n| n.parse().ok()).unwrap_or(1000);
    let mut fleet = Fleet::start(&["web01"]).await?;
    let conf = fleet.agent("web01").path("/etc/nginx/nginx.conf");
    let desired = example_file("files/nginx.conf");
    println!("drift→restore, {drifts} drifts, managed file in {}", conf.parent().unwrap().display());
    let mut to_event = Vec::with_capacity(drifts);
    let mut to_restore = Vec::with_capacity(drifts);
    let measured = async {
        for n in 0..drifts {
            let drift = DRIFTS[n % DRIFTS.len()];
            let started = Instant::now();
            (drift.act)(&conf)?;
            let event = fleet
                .wait_for("drift event", |e| e.tag == "halite/beacon/web01/nginx-conf")
                .await
                .map_err(|e| e.context(format!("drift {n} ({})", drift.name)))?;
            to_event.push(started.elapsed());
            fleet.wait_for_restore_of(&event).await?;
            to_restore.push(started.elapsed());
            anyhow::ensure!(std::fs::read_to_string(&conf)? == desired, "drift {n} was not restored");
            fleet.seen.clear();
        }
        anyhow::Ok(())
    }
    .await;
    if let Err(error) = measured {
        // The logs of both sides, for a failure that is rare.
        fleet.fail(&error);
    }
    stats("drift → event on the bus", &mut to_event);
    stats("drift → restored (job ret)", &mut to_restore);
    Ok(())
}

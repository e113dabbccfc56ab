//! A swarm of simulated halite agents in one process, for load and scale
//! tests (like Salt's minionswarm).
//!
//! # Layout
//!
//! - [`agent`]: one simulated agent, a tokio task. It has its own key pair,
//!   ZeroMQ DEALER, Noise session and directory; it answers the master's
//!   jobs by applying them with the real state engine (`file.managed` under
//!   its own root) and, on command, drifts its managed file and reports it
//!   as the file beacon would.
//! - [`swarm`]: starts N agents in waves, sends them commands and collects
//!   what they report (converged, restored, with timings).
//! - [`observe`]: `--observed`, the API, dashboard and metrics on, with one
//!   SSE client and a scraper following the run.
//! - [`scenario`]: the benchmarks built on the two: a real `halite-master`
//!   process, a tree giving every agent one managed file and a reactor, and
//!   the measurements (latencies, master RSS and CPU from `/proc`).
//! - [`cluster`]: several masters on one PostgreSQL (a throwaway one from
//!   [`postgres`] unless given), the fleet spread over several swarm
//!   processes ([`worker`], one slice each) when one process's open-file
//!   limit would not hold it; storm, ingest and the failover of a master.
//!
//! Nothing here is a second implementation of the agent: the link and
//! messages come from `halite_link` and `halite_proto`, the apply from
//! `halite_state`. What is simulated is only what the agent process adds
//! around them (beacons, the outbox, the config file).

pub mod agent;
pub mod cluster;
pub mod observe;
pub mod postgres;
pub mod proc;
pub mod scenario;
pub mod swarm;
pub mod worker;

pub use agent::Report;
pub use swarm::{Swarm, SwarmSettings};

/// Statistics over latency samples, as the benchmarks print them.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Summary {
    pub count: usize,
    pub min: std::time::Duration,
    pub p50: std::time::Duration,
    pub p99: std::time::Duration,
    pub max: std::time::Duration,
}

impl Summary {
    /// `None` for no samples. Sorts `samples`.
    pub fn of(samples: &mut [std::time::Duration]) -> Option<Summary> {
        if samples.is_empty() {
            return None;
        }
        samples.sort_unstable();
        let at = |q: f64| samples[((samples.len() as f64 - 1.0) * q).round() as usize];
        Some(Summary {
            count: samples.len(),
            min: samples[0],
            p50: at(0.5),
            p99: at(0.99),
            max: samples[samples.len() - 1],
        })
    }
}

impl std::fmt::Display for Summary {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let ms = |d: std::time::Duration| d.as_secs_f64() * 1e3;
        write!(
            f,
            "n={} min {:.2} ms / p50 {:.2} ms / p99 {:.2} ms / max {:.2} ms",
            self.count,
            ms(self.min),
            ms(self.p50),
            ms(self.p99),
            ms(self.max)
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn summary_picks_the_quantiles() {
        assert_eq!(Summary::of(&mut []), None);
        let mut samples: Vec<Duration> = (1..=100).rev().map(Duration::from_millis).collect();
        let summary = Summary::of(&mut samples).unwrap();
        assert_eq!(summary.count, 100);
        assert_eq!(summary.min, Duration::from_millis(1));
        assert_eq!(summary.p50, Duration::from_millis(51));
        assert_eq!(summary.p99, Duration::from_millis(99));
        assert_eq!(summary.max, Duration::from_millis(100));
    }
}

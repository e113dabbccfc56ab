//! `halite-swarm`: the scale benchmarks, each one command.
//!
//! Every scenario starts a real `halite-master` (the binary beside this
//! one) in a temporary directory on tmpfs where there is one, runs, prints
//! its result and exits 0; 1 when the scenario failed (the error says why),
//! 2 for bad arguments.

use std::time::Duration;

use anyhow::Context;
use clap::{Parser, Subcommand};
use halite_master::fleet::Binaries;
use halite_swarm::Summary;
use halite_swarm::observe::{Observe, Observer};
use halite_swarm::proc::Usage;
use halite_swarm::scenario::{self, Bench};

#[derive(Parser)]
#[command(
    name = "halite-swarm",
    version,
    about = "Simulated halite agents by the thousand, speaking the real protocol, and the scale benchmarks.",
    after_help = "Exit status: 0 the scenario ran, 1 it failed (the message says why), 2 bad arguments.\n\
                  10,000 agents need 10,000+ open files in this process and in the master: run \
                  `ulimit -n 20000` in the shell first (this process raises its own soft limit to the hard one)."
)]
struct Cli {
    #[command(subcommand)]
    scenario: Scenario,
    /// How long any one phase (connect, restore, ingest) may take.
    #[arg(long, default_value = "120s", value_parser = humantime::parse_duration, global = true)]
    timeout: Duration,
    /// Run the master with the API, dashboard and metrics on, one SSE
    /// client following /api/v1/events and /metrics scraped every second
    /// (storm and ingest): the "on" side of an on/off comparison.
    /// `--observed=idle|sse|scrape`: the listeners on with nobody
    /// connected, the SSE client only, the scraper only.
    #[arg(long, global = true, num_args = 0..=1, require_equals = true, default_missing_value = "all",
          value_name = "WHAT", value_parser = str::parse::<Observe>)]
    observed: Option<Observe>,
}

#[derive(Subcommand)]
enum Scenario {
    /// Fleet drift storm: N agents connect, all drift at once; time until all are restored.
    Storm {
        #[arg(long, default_value_t = 1000)]
        agents: usize,
        /// Let the master admit every key on first contact (auto_accept)
        /// instead of writing them to its key store as accepted beforehand.
        #[arg(long)]
        new_keys: bool,
    },
    /// Event ingest: N agents each send E events at once; events per second reaching the bus.
    Ingest {
        #[arg(long, default_value_t = 1)]
        agents: usize,
        #[arg(long, default_value_t = 100_000)]
        events: usize,
    },
    /// Reconnect storm: N agents connected, the master restarts; time until all are back and enforcing.
    Reconnect {
        #[arg(long, default_value_t = 1000)]
        agents: usize,
    },
    /// Footprint: one real agent with 10 beacons and 100 watched files, idle; its RSS and CPU, and the master's.
    Footprint {
        /// How long to measure while idle.
        #[arg(long, default_value = "60s", value_parser = humantime::parse_duration)]
        window: Duration,
    },
    /// Several masters on one PostgreSQL, agents listing them all: storm, ingest (counted in PostgreSQL), failover of one master.
    Cluster {
        #[arg(long, default_value_t = 3)]
        masters: usize,
        /// Agents in all (master `i` listens on 127.0.0.{i + 2}).
        #[arg(long, default_value_t = 3000)]
        agents: usize,
        /// Agents per swarm process at most: more run as several processes
        /// (each needs one open file per agent; keep it under `ulimit -n`).
        #[arg(long, default_value_t = 10_000)]
        per_process: usize,
        /// Events each agent sends in the ingest (0: no ingest).
        #[arg(long, default_value_t = 10)]
        events: usize,
        /// Skip the failover (SIGKILL of master 0 after the storm and the ingest).
        #[arg(long)]
        no_failover: bool,
        /// How long to measure the connected fleet idle (heartbeats only)
        /// before the storm; 0s skips it.
        #[arg(long, default_value = "10s", value_parser = humantime::parse_duration)]
        idle: Duration,
        /// The PostgreSQL database the masters share, `postgres://user@host/db`
        /// (password in HALITE_PG_PASSWORD); without it, a throwaway cluster
        /// (the `postgresql` package's initdb, run as `nobody` when root).
        #[arg(long)]
        store: Option<String>,
    },
    /// One swarm process of `cluster` (started by it; speaks lines on stdin and stdout).
    #[command(hide = true)]
    Worker {
        #[arg(long)]
        first: usize,
        #[arg(long)]
        count: usize,
        #[arg(long)]
        dir: std::path::PathBuf,
    },
}

fn mib(kib: u64) -> f64 {
    kib as f64 / 1024.0
}

fn master_line(usage: &Usage) -> String {
    format!(
        "master RSS {:.1} MiB (peak {:.1} MiB), CPU {:.2} s in all",
        mib(usage.rss_kib),
        mib(usage.peak_kib),
        usage.cpu.as_secs_f64()
    )
}

#[tokio::main]
async fn main() -> std::process::ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "warn".into()))
        .with_writer(std::io::stderr)
        .init();
    let cli = Cli::parse();
    match run(cli).await {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("halite-swarm: error: {error:#}");
            std::process::ExitCode::from(1)
        }
    }
}

/// The observers of an `--observed` run, started on `bench`'s master.
async fn observe(bench: &Bench, observed: Option<Observe>) -> anyhow::Result<Option<Observer>> {
    match observed {
        Some(what) => Ok(Some(Observer::start(bench.master(), &bench.binaries, what).await.context("--observed")?)),
        None => Ok(None),
    }
}

/// Stops the observers and prints what they did.
async fn report(observer: Option<Observer>) -> anyhow::Result<()> {
    if let Some(observer) = observer {
        println!("{}", observer.stop().await.context("--observed")?);
    }
    Ok(())
}

async fn run(cli: Cli) -> anyhow::Result<()> {
    let open_files = scenario::raise_open_files();
    if let Scenario::Worker { first, count, dir } = cli.scenario {
        // Its stdout is the protocol: nothing else is printed there.
        return halite_swarm::worker::run(first, count, dir, cli.timeout).await;
    }
    let binaries = Binaries::beside_current_exe()?;
    println!("halite-swarm: files in {}, open-file limit {open_files}", scenario::scratch().display());
    if cli.observed.is_some() && !matches!(cli.scenario, Scenario::Storm { .. } | Scenario::Ingest { .. }) {
        anyhow::bail!("--observed is for the storm and ingest scenarios");
    }
    match cli.scenario {
        Scenario::Storm { agents, new_keys } => {
            anyhow::ensure!(
                !(cli.observed.is_some() && new_keys),
                "--observed is for the storm with keys accepted beforehand"
            );
            let bench = match (new_keys, cli.observed.is_some()) {
                (true, _) => Bench::start(binaries).await?,
                (false, false) => Bench::start_with_keys(binaries, agents).await?,
                (false, true) => Bench::start_observed(binaries, agents).await?,
            };
            let observer = observe(&bench, cli.observed).await?;
            let result = scenario::storm(&bench, agents, cli.timeout).await.context("drift storm")?;
            report(observer).await?;
            bench.stop().await;
            let mut latencies = result.storm.latencies.clone();
            println!(
                "storm: {} agents connected and converged in {:.2} s",
                result.agents,
                result.connected_in.as_secs_f64()
            );
            println!(
                "storm: all {} restored {:.3} s after the first drift ({} failed); per agent drift → restored: {}",
                result.agents,
                result.storm.elapsed.as_secs_f64(),
                result.storm.failed,
                Summary::of(&mut latencies).map_or("-".into(), |s| s.to_string())
            );
            println!("storm: before the storm {}", master_line(&result.master_before));
            println!(
                "storm: after the storm  {}; {:.2} cores during the storm",
                master_line(&result.master_after),
                result.master_cores
            );
        }
        Scenario::Ingest { agents, events } => {
            let bench = match cli.observed.is_some() {
                false => Bench::start_with_keys(binaries, agents).await?,
                true => Bench::start_observed(binaries, agents).await?,
            };
            let observer = observe(&bench, cli.observed).await?;
            let result = scenario::ingest(&bench, agents, events, cli.timeout).await.context("event ingest")?;
            report(observer).await?;
            bench.stop().await;
            println!(
                "ingest: {} events from {} agents handed to the bus (acknowledged) in {:.3} s: {:.0} events/s; master {:.2} cores; {}; sessions lost meanwhile: {}; a subscriber on the bus saw {}",
                result.events,
                result.agents,
                result.elapsed.as_secs_f64(),
                result.rate(),
                result.master_cores,
                master_line(&result.master_after),
                result.sessions_lost,
                result.seen_by_a_subscriber
            );
            let per_event = |cpu: Duration| cpu.as_secs_f64() * 1e9 / result.events.max(1) as f64;
            println!(
                "ingest: master CPU per event {:.0} ns (threads' schedstat), of which the HTTP side (halite-http) {:.0} ns",
                per_event(result.master_thread_cpu),
                per_event(result.master_http_cpu)
            );
        }
        Scenario::Reconnect { agents } => {
            let mut bench = Bench::start_with_keys(binaries, agents).await?;
            let result = scenario::reconnect(&mut bench, agents, cli.timeout).await.context("reconnect storm")?;
            bench.stop().await;
            let mut latencies = result.storm.latencies.clone();
            println!(
                "reconnect: {} agents back and converged {:.2} s after the new master was ready ({:.2} s after the old one was stopped)",
                result.agents,
                result.from_ready.as_secs_f64(),
                result.from_stop.as_secs_f64()
            );
            println!(
                "reconnect: then all drifted: restored in {:.3} s ({} failed); per agent {}",
                result.storm.elapsed.as_secs_f64(),
                result.storm.failed,
                Summary::of(&mut latencies).map_or("-".into(), |s| s.to_string())
            );
            println!("reconnect: {}", master_line(&result.master_after));
        }
        Scenario::Footprint { window } => {
            let result = scenario::footprint(binaries, window).await.context("footprint")?;
            println!(
                "footprint: agent with {} beacons and {} watched files, idle over {:?}: RSS {:.1} MiB (peak {:.1} MiB); {}",
                result.beacons,
                result.files,
                result.window,
                mib(result.agent.rss_kib),
                mib(result.agent.peak_kib),
                cpu_line(&result.agent_threads, result.window, result.agent_cores)
            );
            print_threads("agent", &result.agent_threads, result.window);
            println!(
                "footprint: master with that one agent, idle: RSS {:.1} MiB (peak {:.1} MiB); {}",
                mib(result.master.rss_kib),
                mib(result.master.peak_kib),
                cpu_line(&result.master_threads, result.window, result.master_cores)
            );
            print_threads("master", &result.master_threads, result.window);
        }
        Scenario::Cluster { masters, agents, per_process, events, no_failover, idle, store } => {
            let settings = halite_swarm::cluster::ClusterSettings {
                masters,
                agents,
                per_process,
                store,
                events,
                failover: !no_failover && masters > 1,
                idle,
                timeout: cli.timeout,
            };
            halite_swarm::cluster::run(binaries, settings).await.context("cluster")?;
        }
        Scenario::Worker { .. } => unreachable!("handled above"),
    }
    Ok(())
}

/// A process's idle CPU from schedstat: share of a core, wake-ups a second
/// and nanoseconds per wake-up; and the tick-based share beside it.
fn cpu_line(threads: &[halite_swarm::proc::ThreadStat], window: Duration, ticks_share: f64) -> String {
    let (ns, runs) = threads.iter().fold((0u64, 0u64), |(ns, runs), t| (ns + t.run_ns, runs + t.runs));
    let secs = window.as_secs_f64().max(1e-9);
    format!(
        "CPU {:.4}% of a core ({:.1} ms in {:.0} s; {:.1} wake-ups/s, {} ns per wake-up; clock ticks said {:.3}%)",
        ns as f64 / secs / 1e7,
        ns as f64 / 1e6,
        secs,
        runs as f64 / secs,
        ns.checked_div(runs).unwrap_or(0),
        ticks_share * 100.0
    )
}

/// One line per thread that ran in the window: name, wake-ups a second,
/// nanoseconds per wake-up.
fn print_threads(process: &str, threads: &[halite_swarm::proc::ThreadStat], window: Duration) {
    let secs = window.as_secs_f64().max(1e-9);
    for t in threads.iter().filter(|t| t.runs > 0) {
        println!(
            "footprint:   {process} thread {:>7} {:<16} {:>7.2} wake-ups/s {:>9} ns each {:>9.3} ms in all",
            t.tid,
            t.name,
            t.runs as f64 / secs,
            t.run_ns / t.runs,
            t.run_ns as f64 / 1e6
        );
    }
}

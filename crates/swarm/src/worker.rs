//! One swarm process of a larger fleet (`halite-swarm worker`, started by
//! [`crate::cluster`]): a slice of the simulated agents, driven over its
//! stdin and reporting on its stdout, one line each way per step.
//!
//! A fleet larger than one process's open-file limit (one socket per agent;
//! 20,000 here) runs as several such processes under one parent, which
//! sends every worker the same command and aggregates their answers. The
//! protocol is plain lines, parent to worker:
//!
//! | line | the worker's answer (one JSON line) |
//! | --- | --- |
//! | (at start) | `{"keys": [public key, …]}`: its agents' keys, for the masters' key store |
//! | `start KEY ENDPOINT…` | none: its agents start connecting |
//! | `converge` | `{"homes": [master, …]}` once every agent has applied its start-up job |
//! | `drift` | `{"latencies_us": […], "failed": n, "unchanged": n}` once every drift is restored |
//! | `emit N` | `{"emitted": n, "lost": sessions}` once every agent handed N events to its link |
//! | `sessions` | `{"lost": n}`: sessions lost since the worker started |
//! | `arm M` | `{"victims": n}`: the agents now on master M |
//! | `killed T` | after `arm`, master M was SIGKILLed at T (µs since the epoch): `{"rehome_us": […], "enforce_us": […], "failed": n, "others_lost": n, "homes": […]}` once every victim is on another master and has had a drift restored |
//! | `stop` | none: the worker exits |
//!
//! Times that cross processes are wall-clock microseconds (one machine,
//! one clock); the rest are measured inside the worker.
//!
//! Between commands the worker keeps reading its agents' reports: an
//! agent waits while the report channel is full, so a worker that only
//! read during a command would stall its agents (no pings, sessions lost)
//! once a few thousand reconnects had queued up while the parent counted
//! rows in PostgreSQL.

use std::collections::VecDeque;
use std::path::PathBuf;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{Context, bail};
use halite_link::{Keypair, PublicKey};
use serde_json::json;
use tokio::sync::mpsc;

use crate::agent::{Command, Report};
use crate::swarm::{Swarm, SwarmSettings};

/// Lines from stdin waiting for the worker. The parent sends one command
/// and waits for its answer, so two places are plenty; when full, the
/// reader waits.
const LINE_CAPACITY: usize = 2;

/// Microseconds since the Unix epoch: a time another process can compare.
pub fn now_us() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_micros() as u64)
}

/// Runs a worker for agents `first .. first + count` (ids as the whole
/// fleet numbers them) with directories under `dir`, until `stop` or the
/// end of stdin.
pub async fn run(first: usize, count: usize, dir: PathBuf, timeout: Duration) -> anyhow::Result<()> {
    let (tx, mut lines) = mpsc::channel::<String>(LINE_CAPACITY);
    // A thread of its own: stdin is read blocking (tokio's is not built
    // in), and only this thread waits on it.
    std::thread::spawn(move || {
        for line in std::io::stdin().lines() {
            let Ok(line) = line else { return };
            if tx.blocking_send(line).is_err() {
                return;
            }
        }
    });
    let mut keys = Vec::with_capacity(count);
    for _ in 0..count {
        keys.push(Keypair::generate()?);
    }
    let public: Vec<String> = keys.iter().map(|k| k.public.to_string()).collect();
    answer(json!({ "keys": public })).await?;
    let start = lines.recv().await.context("the parent closed stdin before `start`")?;
    let mut words = start.split_whitespace();
    anyhow::ensure!(words.next() == Some("start"), "expected `start KEY ENDPOINT…`, got `{start}`");
    let key: PublicKey = words
        .next()
        .context("`start` without the master key")?
        .parse()
        .map_err(|e| anyhow::anyhow!("the master key: {e}"))?;
    let endpoints: Vec<String> = words.map(str::to_owned).collect();
    anyhow::ensure!(!endpoints.is_empty(), "`start` without endpoints");
    let mut settings = SwarmSettings::new(endpoints[0].clone(), key, count, dir);
    settings.endpoints = endpoints;
    settings.first = first;
    settings.keys = keys;
    settings.resend_unacked = true;
    let mut worker =
        Worker { homes: vec![None; count], swarm: Swarm::start(settings)?, timeout, backlog: VecDeque::new(), lost: 0 };
    loop {
        let line = tokio::select! {
            line = lines.recv() => match line {
                Some(line) => line,
                None => break,
            },
            report = worker.swarm.next_report() => {
                let report = report.context("every agent stopped")?;
                if worker.note(&report) {
                    worker.backlog.push_back(report);
                }
                continue;
            }
        };
        let mut words = line.split_whitespace();
        let reply = match (words.next(), words.next()) {
            (Some("converge"), None) => worker.converge().await?,
            (Some("drift"), None) => worker.drift().await?,
            (Some("emit"), Some(n)) => worker.emit(n.parse().context("emit N")?).await?,
            (Some("sessions"), None) => json!({ "lost": worker.lost }),
            (Some("arm"), Some(m)) => worker.failover(m.parse().context("arm M")?, &mut lines).await?,
            (Some("stop"), None) => break,
            _ => bail!("unknown command `{line}`"),
        };
        answer(reply).await?;
    }
    worker.swarm.shutdown().await;
    Ok(())
}

/// Writes one answer line. A blocking write of one short line to a pipe
/// the parent is reading: it does not hold up the agents' tasks.
async fn answer(value: serde_json::Value) -> anyhow::Result<()> {
    use std::io::Write;
    let mut line = serde_json::to_vec(&value)?;
    line.push(b'\n');
    let mut stdout = std::io::stdout().lock();
    stdout.write_all(&line)?;
    stdout.flush()?;
    Ok(())
}

/// A worker's swarm and where each of its agents' sessions is.
struct Worker {
    swarm: Swarm,
    /// The master each agent's session is on (an index into the endpoints).
    homes: Vec<Option<usize>>,
    timeout: Duration,
    /// Reports read between commands that a command may be waiting for
    /// (a start-up apply that finished before `converge` came): the next
    /// command reads them first. Sessions opening and closing are only
    /// noted, so this holds at most a few reports per agent.
    backlog: VecDeque<Report>,
    /// Sessions lost since the worker started.
    lost: usize,
}

impl Worker {
    /// The next report, noting sessions that open and close; fails after
    /// `deadline` with `what`.
    async fn next(&mut self, deadline: tokio::time::Instant, what: &str) -> anyhow::Result<Report> {
        if let Some(report) = self.backlog.pop_front() {
            return Ok(report);
        }
        let report = match tokio::time::timeout_at(deadline, self.swarm.next_report()).await {
            Ok(Some(report)) => report,
            Ok(None) => bail!("every agent stopped"),
            Err(_) => bail!("{what}: not done within {:?}", self.timeout),
        };
        self.note(&report);
        Ok(report)
    }

    /// Notes where sessions open and close; whether the report says more
    /// than that (a command may be waiting for it).
    fn note(&mut self, report: &Report) -> bool {
        match report {
            Report::Up { agent, master } => self.homes[*agent] = Some(*master),
            Report::Down { agent, .. } => {
                self.homes[*agent] = None;
                self.lost += 1;
            }
            Report::NotAccepted { agent, status } => {
                tracing::warn!(agent = %self.swarm.id(*agent), %status, "Key not accepted.");
            }
            _ => return true,
        }
        false
    }

    fn homes(&self) -> serde_json::Value {
        json!(self.homes.iter().map(|h| h.map_or(-1, |m| m as i64)).collect::<Vec<_>>())
    }

    async fn converge(&mut self) -> anyhow::Result<serde_json::Value> {
        let deadline = tokio::time::Instant::now() + self.timeout;
        let mut done = vec![false; self.swarm.len()];
        let (mut left, mut failed) = (self.swarm.len(), 0);
        while left > 0 {
            let what = format!("converge ({left} of {} agents left)", self.swarm.len());
            if let Report::Converged { agent, failed: f } = self.next(deadline, &what).await?
                && !done[agent]
            {
                done[agent] = true;
                left -= 1;
                failed += usize::from(f);
            }
        }
        anyhow::ensure!(failed == 0, "{failed} agents' start-up apply failed");
        Ok(json!({ "homes": self.homes() }))
    }

    async fn drift(&mut self) -> anyhow::Result<serde_json::Value> {
        let deadline = tokio::time::Instant::now() + self.timeout;
        self.swarm.command_all(Command::Drift).await?;
        let mut latencies = vec![None; self.swarm.len()];
        let (mut left, mut failed, mut unchanged) = (self.swarm.len(), 0, 0);
        while left > 0 {
            let what = format!("drift storm ({left} of {} agents not restored)", self.swarm.len());
            if let Report::Restored { agent, latency, failed: f, changed } = self.next(deadline, &what).await?
                && latencies[agent].is_none()
            {
                latencies[agent] = Some(latency.as_micros() as u64);
                left -= 1;
                failed += usize::from(f);
                unchanged += usize::from(!changed);
            }
        }
        crate::scenario::verify_restored(&self.swarm)?;
        let latencies: Vec<u64> = latencies.into_iter().flatten().collect();
        Ok(json!({ "latencies_us": latencies, "failed": failed, "unchanged": unchanged }))
    }

    async fn emit(&mut self, per_agent: usize) -> anyhow::Result<serde_json::Value> {
        let deadline = tokio::time::Instant::now() + self.timeout;
        self.swarm.command_all(Command::Emit(per_agent)).await?;
        let (mut left, mut emitted, mut lost) = (self.swarm.len(), 0, 0);
        let mut done = vec![false; self.swarm.len()];
        while left > 0 {
            let what = format!("emit ({left} of {} agents not done)", self.swarm.len());
            match self.next(deadline, &what).await? {
                Report::Emitted { agent, events, .. } if !done[agent] => {
                    done[agent] = true;
                    left -= 1;
                    emitted += events;
                }
                Report::Down { .. } => lost += 1,
                _ => {}
            }
        }
        Ok(json!({ "emitted": emitted, "lost": lost }))
    }

    /// `arm M`: answers how many agents are on master `m`, then waits for
    /// `killed T` while following them: each one's first session on
    /// another master is its re-homing, at which it drifts at once; the
    /// restore of that drift is its enforcing again.
    async fn failover(&mut self, m: usize, lines: &mut mpsc::Receiver<String>) -> anyhow::Result<serde_json::Value> {
        let victims: Vec<bool> = self.homes.iter().map(|h| *h == Some(m)).collect();
        let count = victims.iter().filter(|v| **v).count();
        answer(json!({ "victims": count })).await?;
        let deadline = tokio::time::Instant::now() + self.timeout;
        let armed = Instant::now();
        let mut killed_at: Option<u64> = None;
        let mut rehomed: Vec<Option<u64>> = vec![None; victims.len()];
        let mut enforced: Vec<Option<u64>> = vec![None; victims.len()];
        let (mut left, mut failed, mut others_lost) = (count, 0, 0);
        while left > 0 || killed_at.is_none() {
            let what = format!("failover ({left} of {count} agents of master {m} not enforcing again)");
            let report = tokio::select! {
                line = lines.recv(), if killed_at.is_none() => {
                    let line = line.context("the parent closed stdin during the failover")?;
                    let at = line.strip_prefix("killed ").and_then(|t| t.trim().parse().ok());
                    killed_at = Some(at.with_context(|| format!("expected `killed T`, got `{line}`"))?);
                    continue;
                }
                report = self.next(deadline, &what) => report?,
            };
            match report {
                Report::Up { agent, master } if victims[agent] && master != m && rehomed[agent].is_none() => {
                    rehomed[agent] = Some(now_us());
                    self.swarm.command(agent, Command::Drift).await?;
                }
                Report::Restored { agent, failed: f, .. }
                    if victims[agent] && rehomed[agent].is_some() && enforced[agent].is_none() =>
                {
                    enforced[agent] = Some(now_us());
                    failed += usize::from(f);
                    left -= 1;
                }
                Report::Down { agent, .. } if !victims[agent] => others_lost += 1,
                _ => {}
            }
        }
        let killed_at = killed_at.unwrap_or_default();
        let since = |times: Vec<Option<u64>>| -> Vec<u64> {
            times.into_iter().flatten().map(|t| t.saturating_sub(killed_at)).collect()
        };
        tracing::debug!(elapsed = ?armed.elapsed(), "Failover followed.");
        crate::scenario::verify_restored(&self.swarm)?;
        Ok(json!({
            "rehome_us": since(rehomed),
            "enforce_us": since(enforced),
            "failed": failed,
            "others_lost": others_lost,
            "homes": self.homes(),
        }))
    }
}

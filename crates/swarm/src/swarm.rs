//! Starting N simulated agents, commanding them and collecting what they
//! report.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use halite_link::{Keypair, PublicKey};
use tokio::sync::{Semaphore, mpsc};
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use crate::agent::{self, AgentSpec, COMMAND_CAPACITY, Command, Report, Shared};

/// The file every swarm agent manages, and its beacon's name in the tree.
pub const MANAGED_PATH: &str = "/etc/motd";
pub const BEACON: &str = "motd";

/// The id of swarm agent `index` (as [`SwarmSettings`]' default prefix names it).
pub fn agent_id(index: usize) -> String {
    format!("swarm{index:05}")
}

/// Reports waiting for the swarm's reader. When full, agents wait (and stop
/// reading their sockets), so a scenario reads reports while agents work.
pub const REPORT_CAPACITY: usize = 4096;

impl Report {
    pub fn agent(&self) -> usize {
        match self {
            Report::Up { agent, .. }
            | Report::Down { agent, .. }
            | Report::NotAccepted { agent, .. }
            | Report::Converged { agent, .. }
            | Report::Restored { agent, .. }
            | Report::OtherJob { agent, .. }
            | Report::Emitted { agent, .. } => *agent,
        }
    }
}

#[derive(Debug, Clone)]
pub struct SwarmSettings {
    /// The masters' agent links (`tcp://127.0.0.1:4506`): one, or several
    /// that every agent lists and ranks (`masters:` in agent.yaml).
    pub endpoints: Vec<String>,
    pub master_key: PublicKey,
    pub agents: usize,
    /// Agent `n` gets `<dir>/<id>` as its root.
    pub dir: PathBuf,
    /// Agent ids are `<prefix>NNNNN`.
    pub prefix: String,
    /// The number in the first agent's id: a swarm process that runs one
    /// slice of a larger fleet (`cluster.rs`) names its agents as the
    /// whole fleet numbers them, so ids are unique across processes.
    pub first: usize,
    /// The managed file's authored path and its file beacon's name.
    pub managed_path: String,
    pub beacon: String,
    /// How often an idle agent pings (the real agent: 5 s).
    pub heartbeat: Duration,
    /// Handshakes in flight at once, swarm-wide: this is what makes the
    /// swarm connect in waves. The master keeps 1024 half-open handshakes.
    pub concurrent_handshakes: usize,
    /// Key pairs to use (agent `n` takes the `n`th); generated when absent.
    pub keys: Vec<Keypair>,
    /// Keep each event until the master acknowledges it and send it again
    /// on the agent's next session, as the real agent's outbox does. Off
    /// by default: the single-master benchmarks measure the master.
    pub resend_unacked: bool,
}

impl SwarmSettings {
    pub fn new(endpoint: String, master_key: PublicKey, agents: usize, dir: PathBuf) -> Self {
        SwarmSettings {
            endpoints: vec![endpoint],
            master_key,
            agents,
            dir,
            prefix: "swarm".into(),
            first: 0,
            managed_path: MANAGED_PATH.into(),
            beacon: BEACON.into(),
            heartbeat: Duration::from_secs(5),
            concurrent_handshakes: 256,
            keys: Vec::new(),
            resend_unacked: false,
        }
    }
}

/// A running swarm. Dropping it cancels every agent.
pub struct Swarm {
    shared: Arc<Shared>,
    commands: Vec<mpsc::Sender<Command>>,
    reports: mpsc::Receiver<Report>,
    ids: Vec<String>,
    roots: Vec<PathBuf>,
    tasks: JoinSet<()>,
}

impl std::fmt::Debug for Swarm {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Swarm").field("agents", &self.ids.len()).finish()
    }
}

impl Drop for Swarm {
    fn drop(&mut self) {
        self.shared.cancel.cancel();
    }
}

impl Swarm {
    /// Generates every agent's key and directory and starts them all; they
    /// connect as handshake slots free up.
    pub fn start(settings: SwarmSettings) -> anyhow::Result<Swarm> {
        let (reports_tx, reports) = mpsc::channel(REPORT_CAPACITY);
        let shared = Arc::new(Shared {
            endpoints: settings.endpoints.clone(),
            master_key: settings.master_key,
            managed_path: settings.managed_path.clone(),
            beacon: settings.beacon.clone(),
            handshakes: Semaphore::new(settings.concurrent_handshakes.max(1)),
            reports: reports_tx,
            heartbeat: settings.heartbeat,
            resend_unacked: settings.resend_unacked,
            acknowledged: Default::default(),
            cancel: CancellationToken::new(),
        });
        let mut swarm =
            Swarm { shared, commands: Vec::new(), reports, ids: Vec::new(), roots: Vec::new(), tasks: JoinSet::new() };
        for index in 0..settings.agents {
            let id = format!("{}{:05}", settings.prefix, settings.first + index);
            debug_assert!(settings.prefix != "swarm" || id == agent_id(settings.first + index));
            let root = settings.dir.join(&id);
            std::fs::create_dir_all(&root).with_context(|| format!("cannot create {}", root.display()))?;
            let keypair = match settings.keys.get(index) {
                Some(keypair) => keypair.clone(),
                None => Keypair::generate().with_context(|| format!("cannot generate a key for {id}"))?,
            };
            let (tx, rx) = mpsc::channel(COMMAND_CAPACITY);
            let spec = AgentSpec { index, id: id.clone(), root: root.clone(), keypair };
            swarm.tasks.spawn(agent::run(spec, swarm.shared.clone(), rx));
            swarm.commands.push(tx);
            swarm.ids.push(id);
            swarm.roots.push(root);
        }
        Ok(swarm)
    }

    /// Events the master has acknowledged to this swarm's agents so far.
    pub fn acknowledged(&self) -> usize {
        self.shared.acknowledged.load(std::sync::atomic::Ordering::Relaxed)
    }

    pub fn len(&self) -> usize {
        self.ids.len()
    }

    pub fn is_empty(&self) -> bool {
        self.ids.is_empty()
    }

    pub fn id(&self, agent: usize) -> &str {
        &self.ids[agent]
    }

    /// Where an authored absolute path is for `agent`.
    pub fn path(&self, agent: usize, authored: &str) -> PathBuf {
        halite_state::paths::rooted(&self.roots[agent], std::path::Path::new(authored))
    }

    /// The managed file of `agent`.
    pub fn managed_file(&self, agent: usize) -> PathBuf {
        self.path(agent, &self.shared.managed_path)
    }

    /// Sends `command` to every agent (waiting where an agent's queue is
    /// full).
    pub async fn command_all(&self, command: Command) -> anyhow::Result<()> {
        for (agent, tx) in self.commands.iter().enumerate() {
            tx.send(command).await.with_context(|| format!("agent {} has stopped", self.ids[agent]))?;
        }
        Ok(())
    }

    pub async fn command(&self, agent: usize, command: Command) -> anyhow::Result<()> {
        self.commands[agent].send(command).await.with_context(|| format!("agent {} has stopped", self.ids[agent]))
    }

    /// The next report from any agent; `None` once every agent stopped.
    pub async fn next_report(&mut self) -> Option<Report> {
        self.reports.recv().await
    }

    /// Waits until every agent has sent a report that `wanted` keeps
    /// (counted once per agent), or fails after `timeout` naming how many
    /// did and the first few that did not. Returns the kept reports, in
    /// arrival order, and how long the wait took.
    pub async fn wait_all(
        &mut self,
        what: &str,
        timeout: Duration,
        mut wanted: impl FnMut(&Report) -> bool,
    ) -> anyhow::Result<(Duration, Vec<Report>)> {
        let started = Instant::now();
        let deadline = tokio::time::Instant::now() + timeout;
        let mut seen = vec![false; self.len()];
        let mut kept = Vec::with_capacity(self.len());
        let mut downs = 0usize;
        while kept.len() < self.len() {
            let report = match tokio::time::timeout_at(deadline, self.reports.recv()).await {
                Ok(Some(report)) => report,
                Ok(None) => bail!("every agent stopped"),
                Err(_) => {
                    let missing: Vec<&str> = seen
                        .iter()
                        .enumerate()
                        .filter(|(_, s)| !**s)
                        .take(5)
                        .map(|(i, _)| self.ids[i].as_str())
                        .collect();
                    bail!(
                        "{what}: {} of {} agents within {timeout:?} ({downs} sessions lost meanwhile); not: {}",
                        kept.len(),
                        self.len(),
                        missing.join(", ")
                    );
                }
            };
            if let Report::Down { agent, reason } = &report {
                downs += 1;
                tracing::debug!(agent = %self.ids[*agent], %reason, "Session lost.");
            }
            if let Report::NotAccepted { agent, status } = &report {
                tracing::warn!(agent = %self.ids[*agent], %status, "Key not accepted.");
            }
            let agent = report.agent();
            if !seen[agent] && wanted(&report) {
                seen[agent] = true;
                kept.push(report);
            }
        }
        Ok((started.elapsed(), kept))
    }

    /// Every agent drifts its managed file at once; returns when every one
    /// has applied its restore: the time from the first drift command to
    /// the last restore, and each agent's drift → restored latency.
    pub async fn drift_all(&mut self, timeout: Duration) -> anyhow::Result<Storm> {
        let started = Instant::now();
        self.command_all(Command::Drift).await?;
        let (_, reports) = self.wait_all("restored", timeout, |r| matches!(r, Report::Restored { .. })).await?;
        let elapsed = started.elapsed();
        let mut latencies = Vec::with_capacity(reports.len());
        let (mut failed, mut unchanged) = (0, 0);
        for report in reports {
            if let Report::Restored { latency, failed: f, changed, .. } = report {
                latencies.push(latency);
                failed += usize::from(f);
                unchanged += usize::from(!changed);
            }
        }
        Ok(Storm { elapsed, latencies, failed, unchanged })
    }

    /// Stops every agent and waits for their tasks.
    pub async fn shutdown(mut self) {
        self.shared.cancel.cancel();
        while self.tasks.join_next().await.is_some() {}
    }
}

/// What a drift storm measured.
#[derive(Debug, Clone)]
pub struct Storm {
    /// From the first drift command to the last restore applied.
    pub elapsed: Duration,
    /// Each agent's drift → restored.
    pub latencies: Vec<Duration>,
    /// Restores whose job reported a failed state.
    pub failed: usize,
    /// Restores that changed nothing (the drift was not seen by the apply).
    pub unchanged: usize,
}

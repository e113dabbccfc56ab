//! The benchmarks: a real `halite-master` process, a swarm (or a real
//! agent) against it, and what they measure.
//!
//! Each scenario prints its result as plain lines; BENCHMARKS.md records
//! them with the command, the machine and the date.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use halite_link::{Keypair, PublicKey};
use halite_master::client::Subscriber;
use halite_master::fleet::{self, Binaries, MasterProcess};
use halite_master::server::keys::{KeyEntry, KeyStatus};
use zeromq::{Socket, SocketRecv, SubSocket};

use crate::agent::Command;
use crate::agent::Report;
use crate::proc::{self, Usage};
use crate::swarm::{BEACON, MANAGED_PATH, Storm, Swarm, SwarmSettings, agent_id};

/// The master's configuration beyond the fleet's: every simulated agent
/// connects from 127.0.0.1, with up to 256 handshakes in flight (see
/// `swarm.rs`), more than the link's default budget per source address.
const SWARM_MASTER: &str = "handshakes_per_source: 1024\n";

/// What the tree says the managed file holds.
pub const DESIRED: &str = "This host is managed by halite (swarm). Local edits are restored.\n";

/// Writes the swarm's tree: every agent gets one managed file, a file
/// beacon on it and a reactor that restores it.
pub fn write_tree(dir: &Path) -> std::io::Result<()> {
    std::fs::create_dir_all(dir)?;
    std::fs::write(dir.join("top.yaml"), "'*': [motd]\n")?;
    std::fs::write(
        dir.join("motd.yaml"),
        format!("motd:\n  file.managed:\n    path: {MANAGED_PATH}\n    contents: {DESIRED:?}\n    mode: \"0644\"\n"),
    )?;
    std::fs::write(dir.join("beacons.yaml"), format!("'*':\n  {BEACON}:\n    file:\n      paths: [{MANAGED_PATH}]\n"))?;
    std::fs::write(
        dir.join("reactors.yaml"),
        format!("- name: restore-motd\n  on: halite/beacon/*/{BEACON}\n  apply: [motd]\n"),
    )?;
    Ok(())
}

/// Where benchmark files go: `$TMPDIR` if set, else tmpfs (`/dev/shm`)
/// where there is one, else the system's temporary directory.
pub fn scratch() -> PathBuf {
    if let Some(dir) = std::env::var_os("TMPDIR") {
        return PathBuf::from(dir);
    }
    let shm = Path::new("/dev/shm");
    if shm.is_dir() { shm.to_path_buf() } else { std::env::temp_dir() }
}

/// Raises this process's open-file limit to its hard limit (one socket per
/// simulated agent); returns the new soft limit.
pub fn raise_open_files() -> u64 {
    match halite_link::transport::raise_open_files() {
        Ok(limit) => limit,
        Err(error) => {
            tracing::warn!(%error, "Cannot raise the open-file limit.");
            0
        }
    }
}

/// A master process serving the swarm's tree, in a temporary directory.
pub struct Bench {
    pub dir: tempfile::TempDir,
    pub binaries: Binaries,
    pub states: PathBuf,
    pub master: Option<MasterProcess>,
    /// The agent link, kept across restarts.
    pub listen: String,
    pub key: PublicKey,
    /// The swarm's keys, when they were accepted before the master started.
    pub keys: Vec<Keypair>,
}

impl std::fmt::Debug for Bench {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Bench").field("dir", &self.dir.path()).field("listen", &self.listen).finish()
    }
}

impl Bench {
    /// Starts a master serving [`write_tree`]'s tree that accepts every key
    /// (`auto_accept: ['*']`).
    pub async fn start(binaries: Binaries) -> anyhow::Result<Bench> {
        Bench::start_with_keys(binaries, 0).await
    }

    /// As [`Bench::start`], with `agents` swarm keys generated and given to
    /// the master as accepted before it starts: an established fleet, whose
    /// first connections measure sessions, not admissions (`--new-keys`
    /// measures those). The keys go in as a `keys.json`, the form earlier
    /// masters kept, which the master imports into halite.db at start in
    /// one transaction (`halite_master::server::keys`).
    pub async fn start_with_keys(binaries: Binaries, agents: usize) -> anyhow::Result<Bench> {
        Bench::start_configured(binaries, agents, SWARM_MASTER).await
    }

    /// As [`Bench::start_with_keys`], with the API, dashboard and metrics
    /// on (`--observed`, [`crate::observe`]).
    pub async fn start_observed(binaries: Binaries, agents: usize) -> anyhow::Result<Bench> {
        let extra = format!("{SWARM_MASTER}{}", crate::observe::OBSERVED_MASTER);
        Bench::start_configured(binaries, agents, &extra).await
    }

    async fn start_configured(binaries: Binaries, agents: usize, extra: &str) -> anyhow::Result<Bench> {
        let dir = tempfile::Builder::new().prefix("halite-swarm-").tempdir_in(scratch())?;
        let states = dir.path().join("states");
        write_tree(&states)?;
        let mut keys = Vec::with_capacity(agents);
        let mut entries = Vec::with_capacity(agents);
        for index in 0..agents {
            let keypair = Keypair::generate()?;
            entries.push(KeyEntry {
                id: agent_id(index),
                key: keypair.public.to_string(),
                status: KeyStatus::Accepted,
                since: 0,
            });
            keys.push(keypair);
        }
        if agents > 0 {
            let data = dir.path().join("master").join("data");
            std::fs::create_dir_all(&data)?;
            std::fs::write(data.join(halite_master::server::keys::LEGACY_FILE), serde_json::to_vec(&entries)?)?;
        }
        let master = fleet::start_master_with(
            &binaries,
            &dir.path().join("master"),
            &states,
            "tcp://127.0.0.1:0",
            &["*"],
            extra,
        )
        .await?;
        let key: PublicKey =
            master.key.parse().map_err(|e| anyhow::anyhow!("the master's key `{}`: {e}", master.key))?;
        Ok(Bench { listen: master.listen.clone(), key, dir, binaries, states, master: Some(master), keys })
    }

    pub fn master(&self) -> &MasterProcess {
        self.master.as_ref().expect("the master runs")
    }

    pub fn master_usage(&self) -> anyhow::Result<Usage> {
        let pid = self.master().pid().context("the master has exited")?;
        proc::usage(pid).with_context(|| format!("cannot read /proc/{pid}"))
    }

    /// The master's threads now (`/proc/PID/task/*/schedstat`).
    pub fn master_threads(&self) -> anyhow::Result<Vec<proc::ThreadStat>> {
        let pid = self.master().pid().context("the master has exited")?;
        proc::threads(pid).with_context(|| format!("cannot read /proc/{pid}/task"))
    }

    /// A swarm of `agents` against this master, in this bench's directory.
    pub fn swarm(&self, agents: usize) -> anyhow::Result<Swarm> {
        let mut settings = SwarmSettings::new(self.listen.clone(), self.key, agents, self.dir.path().join("agents"));
        settings.keys = self.keys.clone();
        Swarm::start(settings)
    }

    /// Stops the master (SIGTERM) and starts it again on the same port with
    /// the same data (keys stay accepted). Returns when the new one is ready.
    pub async fn restart_master(&mut self) -> anyhow::Result<()> {
        if let Some(master) = self.master.take() {
            master.stop().await;
        }
        let master = fleet::start_master_with(
            &self.binaries,
            &self.dir.path().join("master"),
            &self.states,
            &self.listen,
            &["*"],
            SWARM_MASTER,
        )
        .await?;
        self.master = Some(master);
        Ok(())
    }

    pub async fn stop(mut self) {
        if let Some(master) = self.master.take() {
            master.stop().await;
        }
    }
}

/// Every agent's managed file holds exactly what the tree says.
pub fn verify_restored(swarm: &Swarm) -> anyhow::Result<()> {
    let mut wrong = Vec::new();
    for agent in 0..swarm.len() {
        let path = swarm.managed_file(agent);
        match std::fs::read(&path) {
            Ok(bytes) if bytes == DESIRED.as_bytes() => {}
            Ok(_) => wrong.push(format!("{} (other contents)", path.display())),
            Err(e) => wrong.push(format!("{} ({e})", path.display())),
        }
    }
    if !wrong.is_empty() {
        bail!(
            "{} of {} managed files are not as the tree says, e.g. {}",
            wrong.len(),
            swarm.len(),
            wrong[..wrong.len().min(3)].join("; ")
        );
    }
    Ok(())
}

/// Waits until every agent has applied its start-up job.
pub async fn converge(swarm: &mut Swarm, timeout: Duration) -> anyhow::Result<Duration> {
    let (elapsed, reports) = swarm.wait_all("converged", timeout, |r| matches!(r, Report::Converged { .. })).await?;
    let failed = reports.iter().filter(|r| matches!(r, Report::Converged { failed: true, .. })).count();
    if failed > 0 {
        bail!("{failed} agents' start-up apply failed");
    }
    Ok(elapsed)
}

/// What `storm` measured.
#[derive(Debug)]
pub struct StormResult {
    pub agents: usize,
    pub connected_in: Duration,
    pub storm: Storm,
    pub master_before: Usage,
    pub master_after: Usage,
    /// Master CPU during the storm, in cores.
    pub master_cores: f64,
}

/// Drift storm: `agents` connect and converge; all drift at once; the
/// time until every file is restored (checked byte for byte), with the
/// master's RSS and CPU.
pub async fn storm(bench: &Bench, agents: usize, timeout: Duration) -> anyhow::Result<StormResult> {
    let mut swarm = bench.swarm(agents)?;
    let connected_in = converge(&mut swarm, timeout).await?;
    let master_before = bench.master_usage()?;
    let started = Instant::now();
    let storm = swarm.drift_all(timeout).await?;
    let wall = started.elapsed();
    let master_after = bench.master_usage()?;
    verify_restored(&swarm)?;
    swarm.shutdown().await;
    Ok(StormResult {
        agents,
        connected_in,
        master_cores: proc::core_share(&master_before, &master_after, wall),
        storm,
        master_before,
        master_after,
    })
}

/// What `ingest` measured.
#[derive(Debug)]
pub struct IngestResult {
    pub agents: usize,
    pub events: usize,
    /// Of them, how many a subscriber on the publisher counted: all, unless
    /// it fell more than its queue behind (the publisher never waits for
    /// a subscriber, so a slow one loses events).
    pub seen_by_a_subscriber: usize,
    /// From the first emit command to the last event acknowledged, i.e.
    /// handed to the master's publisher (acks go only after that).
    pub elapsed: Duration,
    pub master_cores: f64,
    pub master_after: Usage,
    /// The master's threads' CPU time while counting (schedstat: finer
    /// than `master_cores`' ticks), and that of its HTTP side's threads
    /// (`halite-http`: the API, the SSE streams, `/metrics`).
    pub master_thread_cpu: Duration,
    pub master_http_cpu: Duration,
    /// Sessions that ended while the events were counted (each agent
    /// reconnects; its unacknowledged events are lost: here the swarm
    /// keeps no outbox, and the ingest then fails).
    pub sessions_lost: usize,
}

/// How long the ingest waits for its counting subscriber to see a probe
/// event before it sends another.
const PROBE_EVERY: Duration = Duration::from_millis(200);

/// The ingest's subscriber on the bus, on a thread and runtime of its own
/// (as one task among the agents it was polled one turn in a thousand).
/// What it counts is reported beside the ingest, not what times it: the
/// publisher drops events for a subscriber more than its queue behind
/// (`PUBLISHER_SUBSCRIBER_QUEUE`), which a descheduled thread can be.
/// A raw SUB socket that only looks at topics: parsing every event's JSON
/// would make the counter the bottleneck.
struct Counter {
    /// Events seen since the first (the probe), which is not counted.
    seen: std::sync::Arc<std::sync::atomic::AtomicUsize>,
    /// Tells when the counter has seen the probe.
    ready: tokio::sync::oneshot::Receiver<anyhow::Result<()>>,
    stop: tokio_util::sync::CancellationToken,
}

impl Counter {
    fn start(publish: &str) -> anyhow::Result<Counter> {
        use std::sync::atomic::Ordering;
        let seen = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let (ready_tx, ready) = tokio::sync::oneshot::channel();
        let stop = tokio_util::sync::CancellationToken::new();
        let (publish, counted, stopped) = (publish.to_owned(), seen.clone(), stop.clone());
        let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
        std::thread::Builder::new().name("ingest-counter".into()).spawn(move || {
            runtime.block_on(async move {
                let mut bus = SubSocket::new();
                let subscribed = async {
                    bus.connect(&publish).await.context("cannot connect to the event publisher")?;
                    bus.subscribe("halite/beacon/").await?;
                    // The first `/load` event is the probe.
                    loop {
                        let message = bus.recv().await?;
                        if message.get(0).is_some_and(|t| t.ends_with(b"/load")) {
                            return anyhow::Ok(());
                        }
                    }
                };
                let subscribed = tokio::select! {
                    () = stopped.cancelled() => return,
                    subscribed = subscribed => subscribed,
                };
                let failed = subscribed.is_err();
                let _ = ready_tx.send(subscribed);
                if failed {
                    return;
                }
                loop {
                    let message = tokio::select! {
                        () = stopped.cancelled() => return,
                        message = bus.recv() => match message {
                            Ok(message) => message,
                            Err(_) => return,
                        },
                    };
                    if message.get(0).is_some_and(|t| t.ends_with(b"/load")) {
                        counted.fetch_add(1, Ordering::Relaxed);
                    }
                }
            });
        })?;
        Ok(Counter { seen, ready, stop })
    }

    /// Whether the counter has seen a probe event within `wait`; fails
    /// when it cannot subscribe.
    async fn wait_ready(&mut self, wait: Duration) -> anyhow::Result<bool> {
        match tokio::time::timeout(wait, &mut self.ready).await {
            Err(_) => Ok(false),
            Ok(Ok(subscribed)) => subscribed.map(|()| true),
            Ok(Err(_)) => bail!("the ingest's counting subscriber stopped"),
        }
    }

    /// Returns once `total` events were counted (looked at every 10 ms).
    async fn wait_for(&self, total: usize) {
        while self.seen() < total {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    fn seen(&self) -> usize {
        self.seen.load(std::sync::atomic::Ordering::Relaxed)
    }
}

impl Drop for Counter {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

impl IngestResult {
    pub fn rate(&self) -> f64 {
        self.events as f64 / self.elapsed.as_secs_f64()
    }
}

/// Event ingest: each of `agents` sends `per_agent` events at once; the
/// time until all of them have been handed to the master's bus, which the
/// master's acks say (a subscriber counting them could lose some: the
/// publisher drops for one that falls behind).
pub async fn ingest(bench: &Bench, agents: usize, per_agent: usize, timeout: Duration) -> anyhow::Result<IngestResult> {
    let mut swarm = bench.swarm(agents)?;
    converge(&mut swarm, timeout).await?;
    let mut counter = Counter::start(&bench.master().publish)?;
    // The subscription travels asynchronously: probe (one event from the
    // first agent) until the counter sees one, then wait for every probe's
    // ack, so that what is acknowledged from here on is the ingest's.
    let deadline = Instant::now() + timeout;
    let mut probes = 0;
    loop {
        swarm.command(0, Command::Emit(1)).await?;
        probes += 1;
        if counter.wait_ready(PROBE_EVERY).await? {
            break;
        }
        anyhow::ensure!(Instant::now() < deadline, "no probe event on the counting subscriber within {timeout:?}");
    }
    while swarm.acknowledged() < probes {
        anyhow::ensure!(Instant::now() < deadline, "the probes were not acknowledged within {timeout:?}");
        tokio::select! {
            () = tokio::time::sleep(Duration::from_millis(5)) => {}
            report = swarm.next_report() => anyhow::ensure!(report.is_some(), "every agent stopped"),
        }
    }
    let total = agents * per_agent;
    let master_before = bench.master_usage()?;
    let threads_before = bench.master_threads()?;
    let acknowledged_before = swarm.acknowledged();
    let started = Instant::now();
    swarm.command_all(Command::Emit(per_agent)).await?;
    let mut lost = 0usize;
    let mut tick = tokio::time::interval(Duration::from_millis(5));
    let counted = tokio::time::timeout(timeout, async {
        while swarm.acknowledged() - acknowledged_before < total {
            // Agents' reports are read meanwhile: a full report queue would
            // stop the agents (see `REPORT_CAPACITY`).
            tokio::select! {
                _ = tick.tick() => {}
                report = swarm.next_report() => match report {
                    Some(Report::Down { agent, reason }) => {
                        lost += 1;
                        if lost == 1 {
                            tracing::warn!(agent = %swarm.id(agent), %reason, "A session ended while events were counted.");
                        }
                    }
                    Some(_) => {}
                    None => bail!("every agent stopped"),
                },
            }
        }
        anyhow::Ok(())
    })
    .await;
    let elapsed = started.elapsed();
    let master_after = bench.master_usage()?;
    let threads = proc::thread_deltas(&threads_before, &bench.master_threads()?);
    let (master_thread_cpu, master_http_cpu) = proc::cpu_split(&threads, halite_master::http::runtime::THREAD_NAME);
    // What was handed to the publisher is in the subscriber's socket or on
    // its way: a moment for it to arrive, unless the subscriber lost some.
    let _ = tokio::time::timeout(Duration::from_secs(2), counter.wait_for(total)).await;
    let seen = counter.seen();
    drop(counter);
    match counted {
        Ok(result) => result?,
        Err(_) => {
            let acknowledged = swarm.acknowledged() - acknowledged_before;
            bail!(
                "only {acknowledged} of {total} events acknowledged (handed to the bus) within {timeout:?}; \
                 a subscriber saw {seen}; {lost} sessions lost meanwhile"
            )
        }
    }
    swarm.shutdown().await;
    Ok(IngestResult {
        agents,
        events: total,
        seen_by_a_subscriber: seen,
        elapsed,
        master_cores: proc::core_share(&master_before, &master_after, elapsed),
        master_after,
        master_thread_cpu,
        master_http_cpu,
        sessions_lost: lost,
    })
}

/// What `reconnect` measured.
#[derive(Debug)]
pub struct ReconnectResult {
    pub agents: usize,
    /// From SIGTERM to the old master to every agent converged again.
    pub from_stop: Duration,
    /// From the new master's ready line to every agent converged again.
    pub from_ready: Duration,
    /// The drift storm run afterwards, proving the agents enforce again.
    pub storm: Storm,
    pub master_after: Usage,
}

/// Reconnect storm: `agents` connected and converged; the master restarts;
/// the time until every agent has a session and its start-up apply again,
/// then a drift storm to show they are enforced.
pub async fn reconnect(bench: &mut Bench, agents: usize, timeout: Duration) -> anyhow::Result<ReconnectResult> {
    let mut swarm = bench.swarm(agents)?;
    converge(&mut swarm, timeout).await?;
    let stopped = Instant::now();
    bench.restart_master().await?;
    let ready = Instant::now();
    converge(&mut swarm, timeout).await?;
    let (from_stop, from_ready) = (stopped.elapsed(), ready.elapsed());
    let storm = swarm.drift_all(timeout).await?;
    verify_restored(&swarm)?;
    let master_after = bench.master_usage()?;
    swarm.shutdown().await;
    Ok(ReconnectResult { agents, from_stop, from_ready, storm, master_after })
}

/// What `footprint` measured.
#[derive(Debug)]
pub struct FootprintResult {
    pub beacons: usize,
    pub files: usize,
    pub window: Duration,
    pub agent: Usage,
    pub agent_cores: f64,
    pub master: Usage,
    pub master_cores: f64,
    /// Each thread's CPU time and runs over the window (schedstat).
    pub agent_threads: Vec<proc::ThreadStat>,
    pub master_threads: Vec<proc::ThreadStat>,
}

/// Footprint: one real `halite-agent` with 10 beacons and 100 watched
/// (managed) files, idle; its RSS and CPU over `window`, and the master's.
pub async fn footprint(binaries: Binaries, window: Duration) -> anyhow::Result<FootprintResult> {
    const FILES: usize = 100;
    const FILE_BEACONS: usize = 5;
    let dir = tempfile::Builder::new().prefix("halite-footprint-").tempdir_in(scratch())?;
    let states = dir.path().join("states");
    std::fs::create_dir_all(&states)?;
    let path = |n: usize| format!("/srv/footprint/f{n:03}");
    let mut managed = String::new();
    for n in 0..FILES {
        managed.push_str(&format!("f{n:03}:\n  file.managed:\n    path: {}\n    contents: \"file {n}\\n\"\n", path(n)));
    }
    std::fs::write(states.join("footprint.yaml"), managed)?;
    std::fs::write(states.join("top.yaml"), "'*': [footprint]\n")?;
    let mut beacons = String::from("'*':\n");
    let per = FILES / FILE_BEACONS;
    for b in 0..FILE_BEACONS {
        let paths: Vec<String> = (b * per..(b + 1) * per).map(path).collect();
        beacons.push_str(&format!("  files{b}:\n    file:\n      paths: [{}]\n", paths.join(", ")));
    }
    beacons.push_str(
        "  cpu:\n    cpu: {above: 90, below: 70, for: 10s, interval: 5s}\n\
         \x20 memory:\n    memory: {above: 90, below: 80, for: 1m}\n\
         \x20 load:\n    load: {above: 2, below: 1.5, per_cpu: true, for: 1m}\n\
         \x20 disk:\n    disk: {mount: /, above: 90, below: 85, interval: 1m}\n\
         \x20 nginx:\n    process: {name: nginx, for: 10s, interval: 5s}\n",
    );
    std::fs::write(states.join("beacons.yaml"), beacons)?;
    std::fs::write(states.join("reactors.yaml"), "[]\n")?;
    let master = fleet::start_master_with(
        &binaries,
        &dir.path().join("master"),
        &states,
        "tcp://127.0.0.1:0",
        &["*"],
        SWARM_MASTER,
    )
    .await?;
    let mut bus = Subscriber::connect(&master.publish, "halite/").await?;
    let agent = fleet::start_agent(&binaries, &dir.path().join("agent"), "idle01", &master.listen, &master.key).await?;
    bus.wait_for(Duration::from_secs(60), "the start-up apply", |e| e.tag.ends_with("/ret/idle01")).await?;
    // Let start-up work (first samples, the watches) finish before measuring.
    tokio::time::sleep(Duration::from_secs(5)).await;
    let (agent_pid, master_pid) = (agent.pid().context("agent exited")?, master.pid().context("master exited")?);
    let (agent_before, master_before) = (proc::usage(agent_pid)?, proc::usage(master_pid)?);
    let (agent_threads, master_threads) = (proc::threads(agent_pid)?, proc::threads(master_pid)?);
    tokio::time::sleep(window).await;
    let (agent_after, master_after) = (proc::usage(agent_pid)?, proc::usage(master_pid)?);
    let agent_threads = proc::thread_deltas(&agent_threads, &proc::threads(agent_pid)?);
    let master_threads = proc::thread_deltas(&master_threads, &proc::threads(master_pid)?);
    agent.stop().await;
    master.stop().await;
    Ok(FootprintResult {
        beacons: FILE_BEACONS + 5,
        files: FILES,
        window,
        agent_cores: proc::core_share(&agent_before, &agent_after, window),
        agent: agent_after,
        master_cores: proc::core_share(&master_before, &master_after, window),
        master: master_after,
        agent_threads,
        master_threads,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_swarm_tree_loads_without_diagnostics() {
        let dir = tempfile::tempdir().unwrap();
        write_tree(dir.path()).unwrap();
        let (_tree, diagnostics) = halite_master::tree::Tree::load(dir.path());
        assert!(diagnostics.is_empty(), "{diagnostics:?}");
    }
}

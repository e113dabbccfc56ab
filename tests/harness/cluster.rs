//! Several real masters sharing one PostgreSQL database, and agents that
//! list them all (issue #20): the harness for failover tests.
//!
//! [`Cluster::start`] starts a throwaway PostgreSQL ([`crate::postgres`])
//! with one database, then N `halite-master` processes, master `i`
//! listening on `127.0.0.{i + 2}` (a port of its own choosing), each with
//! `store:` on that database and the same master key (the first master
//! makes it; the others are started with a copy: a cluster key). Until
//! keys live in PostgreSQL, each master admits the agents itself
//! (`auto_accept: ['*']` with `enrolment: {trust_id_alone: true}`, as the
//! test fleets do). [`Cluster::add_agents`] starts agents whose agent.yaml
//! lists every master (`masters:` and the shared `master_key`).
//!
//! Every master's event publisher is read into one queue, each event with
//! the index of the master that published it; [`Cluster::wait_for`] awaits
//! one and records them all, and [`Cluster::home_of`] says which master an
//! agent's session is on, from the `connected`/`disconnected` events seen.
//! Tests await events, never sleep; [`Cluster::fail`] prints every
//! master's, agent's and PostgreSQL's log.

use std::collections::HashMap;
use std::path::PathBuf;

use anyhow::Context;
use halite_master::client::{BusEvent, Subscriber};
use halite_master::fleet::{self, AgentProcess, Binaries, MasterProcess};
use halite_master::server::store::postgres::PgTarget;
use halite_master::server::store::records;
use halite_master::server::store::spool::EventRow;
use tokio::sync::mpsc;

use crate::WAIT;
use crate::postgres::Postgres;

/// Events from all the masters' publishers waiting for the test. When
/// full, the readers wait (the publishers drop for a slow subscriber,
/// which a test would see as a missing event: keep reading).
const EVENT_QUEUE: usize = 16 * 1024;

/// Where a cluster's processes run, when not all on loopback in the
/// test's own network namespace ([`Cluster::start_placed`]): a partition
/// test puts PostgreSQL, each master and the agents in namespaces of their
/// own (`netns.rs`).
pub struct Placement {
    /// PostgreSQL, started, and the address the masters reach it at; the
    /// harness itself reads it through its Unix socket.
    pub postgres: Postgres,
    pub postgres_host: String,
    /// Each master's link (`tcp://IP:0`) and its binaries (a wrapper
    /// running it in its namespace); its publisher is a Unix socket in its
    /// data dir, which the harness reaches from any namespace.
    pub masters: Vec<(String, Binaries)>,
    /// The agents' binaries.
    pub agents: Binaries,
    /// YAML keys every master.yaml gets besides `store:` (e.g. `schedule:`).
    pub master_yaml: String,
}

/// N masters on one PostgreSQL, and their agents.
pub struct Cluster {
    pub dir: tempfile::TempDir,
    pub postgres: Postgres,
    /// The shared database, for reading what the masters recorded.
    pub target: PgTarget,
    /// Each master's agent link (`tcp://127.0.0.{i + 2}:PORT`), kept after
    /// it is killed: the agents keep listing it.
    pub listens: Vec<String>,
    /// The shared master key, as agents pin it.
    pub key: String,
    binaries: Binaries,
    /// Each master's binaries, when placed ([`Placement::masters`]);
    /// empty: `binaries`.
    master_binaries: Vec<Binaries>,
    states: PathBuf,
    /// The `store:` lines every master's master.yaml gets.
    store: String,
    /// Where the event readers send, for a restarted master's.
    sender: mpsc::Sender<(usize, BusEvent)>,
    /// `None` once killed.
    masters: Vec<Option<MasterProcess>>,
    agents: Vec<AgentProcess>,
    events: mpsc::Receiver<(usize, BusEvent)>,
    /// Every event taken from `events`, with its master.
    pub seen: Vec<(usize, BusEvent)>,
    /// Agent id → the master its session is on, as last announced.
    homes: HashMap<String, usize>,
    /// Copies of killed masters' logs.
    old_logs: Vec<PathBuf>,
    /// The event readers, stopped on drop.
    readers: Vec<tokio::task::JoinHandle<()>>,
}

impl Cluster {
    /// PostgreSQL, a database, and `masters` masters sharing it and one key.
    pub async fn start(masters: usize) -> anyhow::Result<Cluster> {
        Cluster::start_with(masters, "").await
    }

    /// As [`Cluster::start`], with `extra` (YAML keys) in every master.yaml.
    pub async fn start_with(masters: usize, extra: &str) -> anyhow::Result<Cluster> {
        anyhow::ensure!((1..=200).contains(&masters), "a cluster of 1 to 200 masters");
        let postgres = tokio::task::spawn_blocking(Postgres::start).await??;
        let listens = (0..masters).map(|i| format!("tcp://127.0.0.{}:0", i + 2)).collect();
        Cluster::start_at(postgres, None, listens, Vec::new(), crate::binaries(), extra).await
    }

    /// A cluster placed as `placement` says.
    pub async fn start_placed(placement: Placement) -> anyhow::Result<Cluster> {
        let (listens, master_binaries) = placement.masters.into_iter().unzip();
        let host = Some(placement.postgres_host);
        let yaml = placement.master_yaml;
        Cluster::start_at(placement.postgres, host, listens, master_binaries, placement.agents, &yaml).await
    }

    async fn start_at(
        postgres: Postgres,
        postgres_host: Option<String>,
        listens: Vec<String>,
        master_binaries: Vec<Binaries>,
        binaries: Binaries,
        master_yaml: &str,
    ) -> anyhow::Result<Cluster> {
        let database = postgres.database()?;
        let dir = tempfile::Builder::new().prefix("halite-cluster-").tempdir()?;
        let password = postgres.password_file(dir.path())?;
        let (url, read_url) = match &postgres_host {
            None => (postgres.url(&database), postgres.url(&database)),
            Some(host) => (postgres.url_at(host, &database), postgres.socket_url(&database)),
        };
        let store = format!("store:\n  url: {url}\n  password_file: {}\n{master_yaml}", password.display());
        let target = PgTarget::new(&read_url, Some(crate::postgres::PASSWORD.into()), None)?;
        let states = dir.path().join("states");
        halite_master::example::write(&states)?;
        let (sender, events) = mpsc::channel(EVENT_QUEUE);
        let mut cluster = Cluster {
            dir,
            postgres,
            target,
            listens: Vec::new(),
            key: String::new(),
            binaries,
            master_binaries,
            states,
            store,
            sender,
            masters: Vec::new(),
            agents: Vec::new(),
            events,
            seen: Vec::new(),
            homes: HashMap::new(),
            old_logs: Vec::new(),
            readers: Vec::new(),
        };
        for (i, listen) in listens.iter().enumerate() {
            let master_dir = cluster.dir.path().join(format!("master-{i}"));
            if i > 0 {
                // The cluster key: a copy of the first master's.
                let data = master_dir.join("data");
                std::fs::create_dir_all(&data)?;
                use std::os::unix::fs::PermissionsExt;
                std::fs::set_permissions(&data, std::fs::Permissions::from_mode(0o700))?;
                let key = cluster.dir.path().join("master-0/data/master.key");
                std::fs::copy(&key, data.join("master.key")).context("cannot copy the master key")?;
            }
            let master = cluster.start_master(i, listen).await?;
            cluster.listens.push(master.listen.clone());
            cluster.masters.push(Some(master));
        }
        Ok(cluster)
    }

    /// Starts master `i` on `listen` and reads its events.
    async fn start_master(&mut self, i: usize, listen: &str) -> anyhow::Result<MasterProcess> {
        let dir = self.dir.path().join(format!("master-{i}"));
        let binaries = self.master_binaries.get(i).unwrap_or(&self.binaries);
        let mut store = self.store.clone();
        if !self.master_binaries.is_empty() {
            // A placed master's publisher: a Unix socket, which the harness
            // reaches from its own network namespace.
            store.push_str(&format!("publish: ipc://{}\n", dir.join("events.sock").display()));
        }
        let master = fleet::start_master_with(binaries, &dir, &self.states, listen, &["*"], &store)
            .await
            .with_context(|| format!("master {i}"))?;
        if i == 0 && self.key.is_empty() {
            self.key = master.key.clone();
        }
        anyhow::ensure!(master.key == self.key, "master {i} has key {}, not the cluster's", master.key);
        let mut bus = Subscriber::connect(&master.publish, "halite/").await?;
        let sender = self.sender.clone();
        self.readers.push(tokio::spawn(async move {
            while let Ok(event) = bus.next().await {
                if sender.send((i, event)).await.is_err() {
                    return;
                }
            }
        }));
        Ok(master)
    }

    /// Starts killed master `i` again on its address (its data dir, key
    /// and store as before).
    pub async fn restart_master(&mut self, i: usize) -> anyhow::Result<()> {
        anyhow::ensure!(self.master(i).is_none(), "master {i} runs");
        let listen = self.listens[i].clone();
        let master = self.start_master(i, &listen).await?;
        self.masters[i] = Some(master);
        Ok(())
    }

    /// Starts agents listing every master, each awaited until its start-up
    /// apply has returned (from whichever master it chose).
    pub async fn add_agents(&mut self, ids: &[&str]) -> anyhow::Result<()> {
        self.add_agents_with(ids, "").await
    }

    /// As [`Cluster::add_agents`], with `extra` (YAML keys) in each agent.yaml.
    pub async fn add_agents_with(&mut self, ids: &[&str], extra: &str) -> anyhow::Result<()> {
        for id in ids {
            let dir = self.dir.path().join(format!("agent-{id}"));
            let agent = fleet::start_agent_listing(&self.binaries, &dir, id, &self.listens, &self.key, extra).await?;
            self.agents.push(agent);
            let suffix = format!("/ret/{id}");
            self.wait_for(&format!("{id}'s start-up apply"), |_, e| {
                e.tag.starts_with("halite/job/") && e.tag.ends_with(&suffix)
            })
            .await?;
        }
        Ok(())
    }

    pub fn agent(&self, id: &str) -> &AgentProcess {
        self.agents.iter().find(|a| a.id == id).expect("agent started")
    }

    /// The next event (with its master's index) satisfying `wanted`, for at
    /// most [`WAIT`]; every event taken is recorded in `seen`.
    pub async fn wait_for(
        &mut self,
        what: &str,
        mut wanted: impl FnMut(usize, &BusEvent) -> bool,
    ) -> anyhow::Result<(usize, BusEvent)> {
        let deadline = tokio::time::Instant::now() + WAIT;
        loop {
            let (master, event) = tokio::time::timeout_at(deadline, self.events.recv())
                .await
                .with_context(|| format!("timed out waiting for {what}"))?
                .context("every event reader stopped")?;
            self.note(master, &event);
            self.seen.push((master, event.clone()));
            if wanted(master, &event) {
                return Ok((master, event));
            }
        }
    }

    /// Takes every event already queued, without waiting.
    pub fn drain(&mut self) {
        while let Ok((master, event)) = self.events.try_recv() {
            self.note(master, &event);
            self.seen.push((master, event));
        }
    }

    /// Keeps track of where each agent's session is.
    fn note(&mut self, master: usize, event: &BusEvent) {
        let Some(rest) = event.tag.strip_prefix("halite/agent/") else { return };
        if let Some(agent) = rest.strip_suffix("/connected") {
            self.homes.insert(agent.to_owned(), master);
        } else if let Some(agent) = rest.strip_suffix("/disconnected")
            && self.homes.get(agent) == Some(&master)
        {
            self.homes.remove(agent);
        }
    }

    /// The master `agent`'s session is on, as last announced.
    pub fn home_of(&self, agent: &str) -> Option<usize> {
        self.homes.get(agent).copied()
    }

    /// How many agents each master holds, as last announced.
    pub fn split(&self) -> Vec<usize> {
        let mut split = vec![0; self.masters.len()];
        for master in self.homes.values() {
            split[*master] += 1;
        }
        split
    }

    /// SIGKILL master `i`: a crash. Its log is kept for [`Cluster::fail`].
    pub async fn kill_master(&mut self, i: usize) {
        if let Some(master) = self.masters.get_mut(i).and_then(Option::take) {
            let (log, kept) = (master.log.clone(), master.dir.join("master.killed.log"));
            master.kill().await;
            let _ = std::fs::copy(&log, &kept);
            let log = kept;
            self.old_logs.push(log);
            // Its sessions are gone with it: no `disconnected` is published.
            self.homes.retain(|_, home| *home != i);
        }
    }

    /// Master `i`, while it runs.
    pub fn master(&self, i: usize) -> Option<&MasterProcess> {
        self.masters.get(i).and_then(Option::as_ref)
    }

    /// Every event recorded in PostgreSQL (all agents), oldest first.
    /// Blocking work off the runtime's threads.
    pub async fn recorded_events(&self) -> anyhow::Result<Vec<EventRow>> {
        let target = self.target.clone();
        Ok(tokio::task::spawn_blocking(move || records::open_postgres(&target)?.events("")).await??)
    }

    /// Prints every log and the events seen, then panics with the error.
    pub fn fail(&self, error: &anyhow::Error) -> ! {
        self.dump_logs();
        panic!("{error:#}");
    }

    fn dump_logs(&self) {
        let mut logs: Vec<PathBuf> = self.old_logs.clone();
        logs.extend(self.masters.iter().flatten().map(|m| m.log.clone()));
        logs.extend(self.agents.iter().map(|a| a.log.clone()));
        for log in logs {
            eprintln!("===== {} =====\n{}", log.display(), std::fs::read_to_string(&log).unwrap_or_default());
        }
        eprintln!("===== postgres =====\n{}", self.postgres.log());
        eprintln!("===== events seen =====");
        for (master, event) in &self.seen {
            eprintln!("[{master}] {} {}", event.tag, event.data());
        }
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        for reader in &self.readers {
            reader.abort();
        }
        if std::thread::panicking() {
            self.dump_logs();
        }
    }
}

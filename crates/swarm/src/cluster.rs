//! `halite-swarm cluster`: several masters on one PostgreSQL, a fleet of
//! simulated agents listing them all, spread over as many swarm processes
//! as the open-file limit needs (issue #20).
//!
//! The parent (this module) starts a throwaway PostgreSQL
//! ([`crate::postgres`]) unless `--store` names one, starts the workers
//! ([`crate::worker`], `halite-swarm worker`: each generates its agents'
//! keys and sends the public halves here), writes every key as accepted
//! into each master's key store, starts master `i` on `127.0.0.{i + 2}`
//! (the first makes the master key, the others get a copy: a cluster key),
//! and then drives the workers through the scenarios, sending each the
//! same command and aggregating their answers:
//!
//! - **storm**: every agent drifts once; the time until all are restored;
//! - **ingest**: every agent sends N events; the time until all of them
//!   are rows in PostgreSQL's `events` table (counted there);
//! - **failover**: one master is SIGKILLed in steady state; the time until
//!   each of its agents has a session on another master (re-homed) and a
//!   drift it made at that moment is restored (enforcing), and how many
//!   agents each survivor holds afterwards.
//!
//! The agents rank the masters with the agent's own ranking
//! (`halite_agent::masters::rank`), so the spread and who moves are what a
//! real fleet would see.

use std::path::Path;
use std::process::Stdio;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use halite_master::fleet::{self, Binaries, MasterProcess};
use halite_master::server::keys::{KeyEntry, KeyStatus};
use halite_master::server::store::postgres::PgTarget;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader, Lines};
use tokio::process::{Child, ChildStdin, ChildStdout};

use crate::Summary;
use crate::postgres::Postgres;
use crate::proc::{self, Usage};
use crate::swarm::agent_id;
use crate::worker::now_us;

/// What `halite-swarm cluster` runs.
#[derive(Debug, Clone)]
pub struct ClusterSettings {
    pub masters: usize,
    pub agents: usize,
    /// Agents per swarm process at most (each holds one socket per agent).
    pub per_process: usize,
    /// A PostgreSQL URL (no password: `HALITE_PG_PASSWORD` in the
    /// environment); a throwaway cluster when `None`.
    pub store: Option<String>,
    /// Events each agent sends in the ingest; 0 skips it.
    pub events: usize,
    /// Kill one master after the storm and the ingest (needs two or more).
    pub failover: bool,
    /// How long to measure the fleet idle (sessions and heartbeats only)
    /// after it converged; zero skips it.
    pub idle: Duration,
    /// How long any one phase may take.
    pub timeout: Duration,
}

/// The master's configuration beyond the fleet's: every simulated agent
/// connects from 127.0.0.1 (see `scenario.rs`).
const CLUSTER_MASTER: &str = "handshakes_per_source: 1024\n";

/// How often the ingest counts PostgreSQL's rows: the resolution of its
/// end time (counting is a measurement, not a synchronisation).
const COUNT_EVERY: Duration = Duration::from_millis(100);

/// One swarm process.
struct Worker {
    child: Child,
    stdin: ChildStdin,
    stdout: Lines<BufReader<ChildStdout>>,
    /// The index of its first agent in the fleet.
    first: usize,
}

impl Worker {
    async fn send(&mut self, line: &str) -> anyhow::Result<()> {
        self.stdin.write_all(format!("{line}\n").as_bytes()).await?;
        self.stdin.flush().await?;
        Ok(())
    }

    async fn answer(&mut self, timeout: Duration) -> anyhow::Result<serde_json::Value> {
        let line = tokio::time::timeout(timeout, self.stdout.next_line())
            .await
            .with_context(|| format!("the worker from agent {} did not answer within {timeout:?}", self.first))??
            .with_context(|| format!("the worker from agent {} exited (its error is above)", self.first))?;
        Ok(serde_json::from_str(&line)?)
    }
}

/// The fleet: masters, workers and the database.
struct Fleet {
    dir: tempfile::TempDir,
    postgres: Option<Postgres>,
    target: PgTarget,
    masters: Vec<Option<MasterProcess>>,
    workers: Vec<Worker>,
    timeout: Duration,
}

impl Fleet {
    /// Sends `line` to every worker, then collects every answer.
    async fn all(&mut self, line: &str) -> anyhow::Result<Vec<serde_json::Value>> {
        for worker in &mut self.workers {
            worker.send(line).await?;
        }
        let mut answers = Vec::with_capacity(self.workers.len());
        // Each phase has its own timeout inside the worker; this one only
        // bounds a worker that hangs, so it leaves room for that one.
        let timeout = self.timeout * 2;
        for worker in &mut self.workers {
            answers.push(worker.answer(timeout).await.with_context(|| format!("`{line}`"))?);
        }
        Ok(answers)
    }

    fn usages(&self) -> Looks {
        Looks {
            masters: self
                .masters
                .iter()
                .map(|m| m.as_ref().and_then(MasterProcess::pid).and_then(|p| proc::usage(p).ok()))
                .collect(),
            postgres: self.postgres.as_ref().map(Postgres::cpu),
        }
    }

    /// Rows in `events` whose tag is the ingest's.
    async fn load_events(&self) -> anyhow::Result<i64> {
        let client = self.target.connect().await?;
        let row = client.query_one("SELECT count(*) FROM events WHERE tag LIKE 'halite/beacon/%/load'", &[]).await?;
        Ok(row.get(0))
    }

    /// Stops everything; removes the directory unless `keep`.
    async fn stop(mut self, keep: bool) {
        for worker in &mut self.workers {
            let _ = worker.send("stop").await;
        }
        for worker in &mut self.workers {
            if tokio::time::timeout(Duration::from_secs(30), worker.child.wait()).await.is_err() {
                let _ = worker.child.kill().await;
            }
        }
        for master in self.masters.drain(..).flatten() {
            master.stop().await;
        }
        if let Some(postgres) = self.postgres.take() {
            postgres.stop().await;
        }
        if keep {
            eprintln!("halite-swarm: kept {}", self.dir.keep().display());
        }
    }
}

/// One look at every master and at the throwaway PostgreSQL.
struct Looks {
    masters: Vec<Option<Usage>>,
    /// The server's and its backends' CPU time; `None` with `--store`.
    postgres: Option<Duration>,
}

/// Each master's CPU between two looks, in cores over `wall`, and its RSS;
/// then PostgreSQL's CPU.
fn master_lines(before: &Looks, after: &Looks, wall: Duration) -> String {
    let postgres = match (before.postgres, after.postgres) {
        (Some(b), Some(a)) => {
            format!("; PostgreSQL {:.2} cores", a.saturating_sub(b).as_secs_f64() / wall.as_secs_f64())
        }
        _ => String::new(),
    };
    let masters = before
        .masters
        .iter()
        .zip(&after.masters)
        .enumerate()
        .map(|(i, pair)| match pair {
            (Some(b), Some(a)) => {
                format!("m{i} {:.2} cores, RSS {:.0} MiB", proc::core_share(b, a, wall), a.rss_kib as f64 / 1024.0)
            }
            _ => format!("m{i} down"),
        })
        .collect::<Vec<_>>()
        .join("; ");
    format!("{masters}{postgres}")
}

/// How many agents each master holds, from the workers' `homes`.
fn split(answers: &[serde_json::Value], masters: usize) -> anyhow::Result<(Vec<usize>, usize)> {
    let mut split = vec![0; masters];
    let mut nowhere = 0;
    for answer in answers {
        for home in answer["homes"].as_array().context("no homes in an answer")? {
            match home.as_i64().and_then(|h| usize::try_from(h).ok()) {
                Some(m) if m < masters => split[m] += 1,
                _ => nowhere += 1,
            }
        }
    }
    Ok((split, nowhere))
}

fn numbers(answers: &[serde_json::Value], key: &str) -> Vec<Duration> {
    answers
        .iter()
        .flat_map(|a| a[key].as_array().cloned().unwrap_or_default())
        .filter_map(|v| v.as_u64())
        .map(Duration::from_micros)
        .collect()
}

fn sum(answers: &[serde_json::Value], key: &str) -> u64 {
    answers.iter().filter_map(|a| a[key].as_u64()).sum()
}

fn summary(samples: &mut [Duration]) -> String {
    Summary::of(samples).map_or("-".into(), |s| s.to_string())
}

/// Runs the fleet through the scenarios, printing each result as a line;
/// fails when any phase does.
pub async fn run(binaries: Binaries, settings: ClusterSettings) -> anyhow::Result<()> {
    anyhow::ensure!((1..=200).contains(&settings.masters), "--masters takes 1 to 200");
    anyhow::ensure!(settings.agents > 0 && settings.per_process > 0, "--agents and --per-process take 1 or more");
    anyhow::ensure!(!settings.failover || settings.masters >= 2, "the failover needs two masters or more");
    let mut fleet = start(binaries, &settings).await?;
    let outcome = scenarios(&mut fleet, &settings).await;
    if outcome.is_err() {
        for (i, master) in fleet.masters.iter().enumerate() {
            if let Some(master) = master {
                eprintln!("halite-swarm: master {i}'s log: {}", master.log.display());
            }
        }
        if let Some(postgres) = &fleet.postgres {
            eprintln!("halite-swarm: PostgreSQL's log: {}", postgres.log().display());
        }
    }
    // A failed run keeps its directory, for those logs.
    fleet.stop(outcome.is_err()).await;
    outcome
}

async fn start(binaries: Binaries, settings: &ClusterSettings) -> anyhow::Result<Fleet> {
    let dir = tempfile::Builder::new().prefix("halite-swarm-cluster-").tempdir_in(crate::scenario::scratch())?;
    let states = dir.path().join("states");
    crate::scenario::write_tree(&states)?;
    let (postgres, url, password) = match &settings.store {
        Some(url) => (None, url.clone(), std::env::var("HALITE_PG_PASSWORD").ok()),
        None => {
            let postgres = Postgres::start(&crate::scenario::scratch()).await.context("the throwaway PostgreSQL")?;
            let url = postgres.url();
            (Some(postgres), url, Some(crate::postgres::PASSWORD.to_owned()))
        }
    };
    let target = PgTarget::new(&url, password.clone(), None)?;
    let mut store = format!("store:\n  url: {url}\n");
    if postgres.is_some() {
        let file = dir.path().join("pg-password");
        std::fs::write(&file, format!("{}\n", crate::postgres::PASSWORD))?;
        store.push_str(&format!("  password_file: {}\n", file.display()));
    }
    println!(
        "cluster: {} masters on {}, {} agents in {} swarm processes of at most {}",
        settings.masters,
        if postgres.is_some() { "a throwaway PostgreSQL" } else { "--store" },
        settings.agents,
        settings.agents.div_ceil(settings.per_process),
        settings.per_process
    );
    let mut fleet =
        Fleet { dir, postgres, target, masters: Vec::new(), workers: Vec::new(), timeout: settings.timeout };
    let exe = std::env::current_exe().context("cannot find this program")?;
    let agents_dir = fleet.dir.path().join("agents");
    let mut entries = Vec::with_capacity(settings.agents);
    for first in (0..settings.agents).step_by(settings.per_process) {
        let count = settings.per_process.min(settings.agents - first);
        // A worker is driven line by line for the whole run, which the
        // run-to-completion spawner (`halite_state::command`) does not do;
        // it dies with this process (`kill_on_drop`), as fleet.rs's
        // masters do.
        #[allow(clippy::disallowed_methods)]
        let mut child = tokio::process::Command::new(&exe)
            .args(["--timeout", &humantime::format_duration(settings.timeout).to_string(), "worker"])
            .args(["--first", &first.to_string(), "--count", &count.to_string(), "--dir"])
            .arg(&agents_dir)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .kill_on_drop(true)
            .spawn()
            .with_context(|| format!("cannot start {}", exe.display()))?;
        let (stdin, stdout) = (child.stdin.take().context("no stdin")?, child.stdout.take().context("no stdout")?);
        let mut worker = Worker { child, stdin, stdout: BufReader::new(stdout).lines(), first };
        let keys = worker.answer(settings.timeout).await?;
        let keys = keys["keys"].as_array().context("the worker sent no keys")?;
        anyhow::ensure!(keys.len() == count, "the worker sent {} keys for {count} agents", keys.len());
        for (n, key) in keys.iter().enumerate() {
            let key = key.as_str().context("a key that is not a string")?.to_owned();
            entries.push(KeyEntry { id: agent_id(first + n), key, status: KeyStatus::Accepted, since: 0 });
        }
        fleet.workers.push(worker);
    }
    let keys_json = serde_json::to_vec(&entries)?;
    let mut listens = Vec::new();
    let mut master_key = String::new();
    for i in 0..settings.masters {
        let master_dir = fleet.dir.path().join(format!("master-{i}"));
        let data = master_dir.join("data");
        create_private_dir(&data)?;
        std::fs::write(data.join(halite_master::server::keys::LEGACY_FILE), &keys_json)?;
        if i > 0 {
            std::fs::copy(fleet.dir.path().join("master-0/data/master.key"), data.join("master.key"))
                .context("cannot copy the master key")?;
        }
        let listen = format!("tcp://127.0.0.{}:0", i + 2);
        let extra = format!("{CLUSTER_MASTER}{store}");
        let master = fleet::start_master_with(&binaries, &master_dir, &states, &listen, &["*"], &extra)
            .await
            .with_context(|| format!("master {i}"))?;
        if i == 0 {
            master_key = master.key.clone();
        }
        anyhow::ensure!(master.key == master_key, "master {i} has key {}, not the cluster's", master.key);
        listens.push(master.listen.clone());
        fleet.masters.push(Some(master));
    }
    let start = format!("start {master_key} {}", listens.join(" "));
    for worker in &mut fleet.workers {
        worker.send(&start).await?;
    }
    Ok(fleet)
}

fn create_private_dir(path: &Path) -> anyhow::Result<()> {
    use std::os::unix::fs::PermissionsExt;
    std::fs::create_dir_all(path).with_context(|| format!("cannot create {}", path.display()))?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o700))?;
    Ok(())
}

async fn scenarios(fleet: &mut Fleet, settings: &ClusterSettings) -> anyhow::Result<()> {
    let masters = settings.masters;
    let started = Instant::now();
    let answers = fleet.all("converge").await.context("connect and converge")?;
    let (homes, nowhere) = split(&answers, masters)?;
    anyhow::ensure!(nowhere == 0, "{nowhere} agents have no session after converging");
    println!(
        "cluster: {} agents connected and converged in {:.2} s; per master {homes:?}",
        settings.agents,
        started.elapsed().as_secs_f64()
    );

    if !settings.idle.is_zero() {
        // A measuring window, not a wait for anything: the fleet only
        // pings meanwhile.
        let before = fleet.usages();
        tokio::time::sleep(settings.idle).await;
        let after = fleet.usages();
        println!("cluster idle: over {:?}, masters {}", settings.idle, master_lines(&before, &after, settings.idle));
    }

    // Storm.
    let before = fleet.usages();
    let started = Instant::now();
    let answers = fleet.all("drift").await.context("drift storm")?;
    let wall = started.elapsed();
    let after = fleet.usages();
    let mut latencies = numbers(&answers, "latencies_us");
    let (failed, unchanged) = (sum(&answers, "failed"), sum(&answers, "unchanged"));
    anyhow::ensure!(latencies.len() == settings.agents, "{} restores for {} drifts", latencies.len(), settings.agents);
    // A restore that changed nothing is one whose file an earlier apply
    // (on a lost session) had already put back: counted, not a failure;
    // every file is checked byte for byte by the workers.
    anyhow::ensure!(failed == 0, "{failed} restores failed");
    println!(
        "cluster storm: all {} restored {:.3} s after the first drift ({unchanged} by an apply that found the file already restored); per agent drift → restored: {}",
        settings.agents,
        wall.as_secs_f64(),
        summary(&mut latencies)
    );
    println!("cluster storm: masters {}", master_lines(&before, &after, wall));

    // Ingest.
    if settings.events > 0 {
        let total = (settings.agents * settings.events) as i64;
        let already = fleet.load_events().await?;
        let lost_before = sum(&fleet.all("sessions").await?, "lost");
        let before = fleet.usages();
        let started = Instant::now();
        fleet.all(&format!("emit {}", settings.events)).await.context("ingest")?;
        let sent = started.elapsed();
        let deadline = started + settings.timeout;
        let mut every = tokio::time::interval(COUNT_EVERY);
        let recorded = loop {
            every.tick().await;
            let recorded = fleet.load_events().await? - already;
            if recorded >= total {
                break recorded;
            }
            if Instant::now() > deadline {
                let lost = sum(&fleet.all("sessions").await?, "lost") - lost_before;
                bail!(
                    "only {recorded} of {total} events recorded in PostgreSQL within {:?}; sessions lost meanwhile: {lost}",
                    settings.timeout
                );
            }
        };
        let wall = started.elapsed();
        let after = fleet.usages();
        let lost = sum(&fleet.all("sessions").await?, "lost") - lost_before;
        println!(
            "cluster ingest: {recorded} events from {} agents recorded in PostgreSQL in {:.3} s: {:.0} events/s \
             (all handed to the links in {:.3} s; counted every {COUNT_EVERY:?}); sessions lost meanwhile: {lost} \
             (their unacknowledged events sent again on the next session, as the agent's outbox does)",
            settings.agents,
            wall.as_secs_f64(),
            recorded as f64 / wall.as_secs_f64(),
            sent.as_secs_f64()
        );
        println!("cluster ingest: masters {}", master_lines(&before, &after, wall));
    }

    // Failover.
    if settings.failover {
        let victim = 0;
        let answers = fleet.all(&format!("arm {victim}")).await?;
        let victims = sum(&answers, "victims");
        let before = fleet.usages();
        let started = Instant::now();
        let killed_at = now_us();
        let master = fleet.masters[victim].take().context("the master to kill is not running")?;
        master.kill().await;
        let answers = fleet.all(&format!("killed {killed_at}")).await.context("failover")?;
        let wall = started.elapsed();
        let after = fleet.usages();
        let (mut rehome, mut enforce) = (numbers(&answers, "rehome_us"), numbers(&answers, "enforce_us"));
        let (failed, others_lost) = (sum(&answers, "failed"), sum(&answers, "others_lost"));
        let (homes, nowhere) = split(&answers, masters)?;
        anyhow::ensure!(
            rehome.len() as u64 == victims && enforce.len() as u64 == victims,
            "{} re-homed and {} enforcing of {victims}",
            rehome.len(),
            enforce.len()
        );
        anyhow::ensure!(failed == 0, "{failed} restores after the failover failed");
        anyhow::ensure!(
            nowhere == 0 && homes[victim] == 0,
            "after the failover: per master {homes:?}, {nowhere} nowhere"
        );
        println!(
            "cluster failover: master {victim} (with {victims} agents) SIGKILLed; all re-homed and enforcing again"
        );
        println!("cluster failover: kill → re-homed: {}", summary(&mut rehome));
        println!("cluster failover: kill → a drift made on re-homing restored: {}", summary(&mut enforce));
        let survivors: Vec<String> = homes
            .iter()
            .enumerate()
            .filter(|(i, _)| *i != victim)
            .map(|(i, n)| format!("m{i} {n} ({:.1}%)", *n as f64 * 100.0 / settings.agents as f64))
            .collect();
        println!(
            "cluster failover: shares after: {}; sessions lost by agents of other masters meanwhile: {others_lost}",
            survivors.join(", ")
        );
        println!("cluster failover: masters {}", master_lines(&before, &after, wall));
    }
    Ok(())
}

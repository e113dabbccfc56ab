//! The end-to-end harness: a temporary directory with a state tree, a real
//! `halite-master` and real `halite-agent`s on 127.0.0.1, and a subscriber
//! on the master's event publisher that records every event in order.
//!
//! Tests await events, never sleep. When a test fails, the children's logs
//! are printed.

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::Context;
use halite_master::client::{BusEvent, Subscriber};
use halite_master::fleet::{self, AgentProcess, Binaries, MasterProcess};

pub mod cluster;
pub mod netns;
pub mod postgres;
pub mod raw;

/// How long any one expected event may take before the test fails. Generous:
/// it bounds a hang, it is not a performance threshold.
pub const WAIT: Duration = Duration::from_secs(30);

/// The binaries cargo built beside this test (`target/<profile>/`).
pub fn binaries() -> Binaries {
    let exe = std::env::current_exe().expect("current exe");
    // target/<profile>/deps/<test> → target/<profile>
    let dir = exe.parent().and_then(Path::parent).expect("target dir");
    let binaries = Binaries::in_dir(dir);
    assert!(
        binaries.master.exists() && binaries.agent.exists(),
        "halite-master and halite-agent are not built in {}; run `cargo build --workspace` (the README's test command does)",
        dir.display()
    );
    binaries
}

/// A process the tests start beside the code under test: halite's own
/// binaries run as an operator would, and fixtures (a process for a beacon
/// to find, a pyzmq peer). Not the product's spawner (`halite_state::command`,
/// programs run to their end): these run alongside a test, are read line by
/// line and stopped by it.
#[allow(clippy::disallowed_methods)]
pub fn process(program: impl AsRef<std::ffi::OsStr>) -> tokio::process::Command {
    tokio::process::Command::new(program)
}

/// A fixture program run to completion from blocking code (mount, umount),
/// for the same reason as [`process`].
#[allow(clippy::disallowed_methods)]
pub fn blocking_process(program: impl AsRef<std::ffi::OsStr>) -> std::process::Command {
    std::process::Command::new(program)
}

/// `halite-master` run to completion from blocking code, as [`process`].
#[allow(clippy::disallowed_methods)]
fn master_cli(master: &Path) -> std::process::Command {
    std::process::Command::new(master)
}

pub struct Fleet {
    pub dir: tempfile::TempDir,
    pub binaries: Binaries,
    pub states: PathBuf,
    pub master: Option<MasterProcess>,
    pub agents: Vec<AgentProcess>,
    pub bus: Subscriber,
    /// Every event received so far, in order.
    pub seen: Vec<BusEvent>,
    /// Logs of earlier runs of the master and of agents (after restarts).
    old_master_logs: Vec<PathBuf>,
    /// Subscribers to earlier runs of the master, replaced by
    /// [`Fleet::restart_master`]: what the kernel had taken from a killed
    /// master's publisher may still be unread in them.
    pub retired: Vec<Subscriber>,
}

impl Fleet {
    /// A master serving the repository's example tree (written fresh) that
    /// accepts every agent's key, plus the agents named, each converged (its
    /// start-up apply returned).
    pub async fn start(agents: &[&str]) -> anyhow::Result<Fleet> {
        Fleet::start_with(agents, &["*"]).await
    }

    /// As [`Fleet::start`], with these `auto_accept` globs.
    pub async fn start_with(agents: &[&str], auto_accept: &[&str]) -> anyhow::Result<Fleet> {
        Fleet::start_custom(agents, auto_accept, &[]).await
    }

    /// As [`Fleet::start_with`], with `files` (path in the tree, text) written
    /// over the example tree; folders are made as needed and `*.sh` files
    /// are made executable (hooks).
    pub async fn start_custom(agents: &[&str], auto_accept: &[&str], files: &[(&str, &str)]) -> anyhow::Result<Fleet> {
        Fleet::start_tree(agents, auto_accept, files, &[]).await
    }

    /// As [`Fleet::start_custom`], with the files named in `remove` taken out
    /// of the tree.
    pub async fn start_tree(
        agents: &[&str],
        auto_accept: &[&str],
        files: &[(&str, &str)],
        remove: &[&str],
    ) -> anyhow::Result<Fleet> {
        Fleet::start_configured(agents, auto_accept, files, remove, "").await
    }

    /// A master with `master_yaml` (YAML keys) added to its configuration,
    /// accepting every key, and the agents named.
    pub async fn start_with_master_config(agents: &[&str], master_yaml: &str) -> anyhow::Result<Fleet> {
        Fleet::start_configured(agents, &["*"], &[], &[], master_yaml).await
    }

    /// As [`Fleet::start_custom`] (every key accepted) with `master_yaml`
    /// added to the master's configuration.
    pub async fn start_custom_with_master_config(
        agents: &[&str],
        files: &[(&str, &str)],
        master_yaml: &str,
    ) -> anyhow::Result<Fleet> {
        Fleet::start_configured(agents, &["*"], files, &[], master_yaml).await
    }

    /// A master with these `auto_accept` globs and `master_yaml` (YAML
    /// keys) added to its configuration, and the agents named.
    pub async fn start_accepting_with_master_config(
        agents: &[&str],
        auto_accept: &[&str],
        master_yaml: &str,
    ) -> anyhow::Result<Fleet> {
        Fleet::start_configured(agents, auto_accept, &[], &[], master_yaml).await
    }

    async fn start_configured(
        agents: &[&str],
        auto_accept: &[&str],
        files: &[(&str, &str)],
        remove: &[&str],
        master_yaml: &str,
    ) -> anyhow::Result<Fleet> {
        let dir = tempfile::Builder::new().prefix("halite-e2e-").tempdir()?;
        let states = dir.path().join("states");
        halite_master::example::write(&states)?;
        for (name, text) in files {
            let path = states.join(name);
            if let Some(parent) = path.parent() {
                std::fs::create_dir_all(parent)?;
            }
            std::fs::write(&path, text)?;
            if name.ends_with(".sh") {
                use std::os::unix::fs::PermissionsExt;
                std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755))?;
            }
        }
        for name in remove {
            std::fs::remove_file(states.join(name))?;
        }
        let binaries = binaries();
        let master = fleet::start_master_with(
            &binaries,
            &dir.path().join("master"),
            &states,
            "tcp://127.0.0.1:0",
            auto_accept,
            master_yaml,
        )
        .await?;
        let bus = Subscriber::connect(&master.publish, "halite/").await?;
        let mut fleet = Fleet {
            dir,
            binaries,
            states,
            master: Some(master),
            agents: Vec::new(),
            bus,
            seen: Vec::new(),
            old_master_logs: Vec::new(),
            retired: Vec::new(),
        };
        for id in agents {
            fleet.add_agent(id).await?;
        }
        Ok(fleet)
    }

    pub async fn add_agent(&mut self, id: &str) -> anyhow::Result<()> {
        self.add_agent_unconverged(id).await?;
        let suffix = format!("/ret/{id}");
        self.wait_for("the start-up apply", |e| e.tag.starts_with("halite/job/") && e.tag.ends_with(&suffix)).await?;
        Ok(())
    }

    /// As [`Fleet::add_agent`], with `extra` (YAML keys) in its agent.yaml.
    pub async fn add_agent_with(&mut self, id: &str, extra: &str) -> anyhow::Result<()> {
        let (listen, key) = (self.master().listen.clone(), self.master().key.clone());
        let agent =
            fleet::start_agent_with(&self.binaries, &self.dir.path().join(id), id, &listen, &key, extra).await?;
        self.agents.push(agent);
        let suffix = format!("/ret/{id}");
        self.wait_for("the start-up apply", |e| e.tag.starts_with("halite/job/") && e.tag.ends_with(&suffix)).await?;
        Ok(())
    }

    /// Starts an agent and returns once its session is up (its key may be
    /// pending).
    pub async fn add_agent_unconverged(&mut self, id: &str) -> anyhow::Result<()> {
        self.add_agent_unconverged_with(id, "").await
    }

    /// As [`Fleet::add_agent_unconverged`], with `extra` YAML lines in its
    /// agent.yaml. An agent started again in the same directory keeps its
    /// key, data dir and root.
    pub async fn add_agent_unconverged_with(&mut self, id: &str, extra: &str) -> anyhow::Result<()> {
        let (listen, key) = (self.master().listen.clone(), self.master().key.clone());
        let agent =
            fleet::start_agent_with(&self.binaries, &self.dir.path().join(id), id, &listen, &key, extra).await?;
        self.agents.push(agent);
        Ok(())
    }

    /// SIGKILL an agent: a crash. Its log is kept for [`Fleet::fail`].
    pub async fn kill_agent(&mut self, id: &str) {
        if let Some(index) = self.agents.iter().position(|a| a.id == id) {
            let agent = self.agents.remove(index);
            self.keep_log(&agent.log);
            agent.kill().await;
        }
    }

    /// SIGTERM an agent and wait for it to exit (after its grace period).
    pub async fn stop_agent(&mut self, id: &str) {
        if let Some(index) = self.agents.iter().position(|a| a.id == id) {
            let agent = self.agents.remove(index);
            let log = agent.log.clone();
            agent.stop().await;
            self.keep_log(&log);
        }
    }

    fn keep_log(&mut self, log: &Path) {
        let kept = log.with_extension(format!("{}.log", self.old_master_logs.len()));
        let _ = std::fs::copy(log, &kept);
        self.old_master_logs.push(kept);
    }

    /// Runs `halite-master keys ARGS` against this fleet's master; returns
    /// its stdout, or its stderr as the error.
    pub fn keys(&self, args: &[&str]) -> anyhow::Result<String> {
        let output = master_cli(&self.binaries.master)
            .arg("keys")
            .args(args)
            .arg("--data-dir")
            .arg(self.master().dir.join("data"))
            .output()?;
        anyhow::ensure!(output.status.success(), "keys {args:?}: {}", String::from_utf8_lossy(&output.stderr));
        Ok(String::from_utf8(output.stdout)?)
    }

    /// Where an authored absolute path is for the agent `id`, whether or not
    /// it has started yet.
    pub fn agent_path(&self, id: &str, authored: &str) -> PathBuf {
        // As the agent roots it: `root` is `<dir>/<id>/root` (fleet::start_agent).
        self.dir.path().join(id).join("root").join(authored.trim_start_matches('/'))
    }

    /// Replaces a file of the tree the way an editor saves: a temporary
    /// file beside it, renamed over it.
    pub fn edit_tree(&self, name: &str, text: &str) -> anyhow::Result<()> {
        let path = self.states.join(name);
        let temp = self.states.join(format!(".{name}.edit"));
        std::fs::write(&temp, text)?;
        std::fs::rename(&temp, &path)?;
        Ok(())
    }

    /// The master's data dir (it outlives the master's process).
    pub fn master_data_dir(&self) -> PathBuf {
        self.dir.path().join("master").join("data")
    }

    /// Runs `halite-master ARGS --data-dir <its data dir>` to completion,
    /// whether the master runs or not.
    pub async fn master_command(&self, args: &[&str]) -> anyhow::Result<CommandOutput> {
        let mut command = process(&self.binaries.master);
        command.args(args).arg("--data-dir").arg(self.master_data_dir());
        CommandOutput::of(command).await
    }

    /// Runs `halite-master ARGS --data-dir <the master's>`; returns its
    /// stdout, or its stderr as the error.
    pub fn cli(&self, args: &[&str]) -> anyhow::Result<String> {
        let output =
            master_cli(&self.binaries.master).args(args).arg("--data-dir").arg(self.master_data_dir()).output()?;
        anyhow::ensure!(output.status.success(), "{args:?}: {}", String::from_utf8_lossy(&output.stderr));
        Ok(String::from_utf8(output.stdout)?)
    }

    pub fn master(&self) -> &MasterProcess {
        self.master.as_ref().expect("master running")
    }

    pub fn agent(&self, id: &str) -> &AgentProcess {
        self.agents.iter().find(|a| a.id == id).expect("agent started")
    }

    /// The next event satisfying `wanted`; every event is recorded.
    pub async fn wait_for(
        &mut self,
        what: &str,
        mut wanted: impl FnMut(&BusEvent) -> bool,
    ) -> anyhow::Result<BusEvent> {
        let seen = &mut self.seen;
        self.bus
            .wait_for(WAIT, what, |e| {
                seen.push(e.clone());
                wanted(e)
            })
            .await
    }

    /// Waits for the job a reactor started for `event` to return.
    pub async fn wait_for_restore_of(&mut self, event: &BusEvent) -> anyhow::Result<BusEvent> {
        let cause = event.id().to_owned();
        let job = self
            .wait_for("the restore job", |e| e.tag.ends_with("/new") && e.data()["cause"] == cause.as_str())
            .await?;
        let jid = job.job().context("job id")?.to_owned();
        self.wait_for("the restore job's result", |e| e.job() == Some(jid.as_str()) && e.tag.contains("/ret/")).await
    }

    /// SIGKILL the master: a crash.
    pub async fn kill_master(&mut self) {
        if let Some(master) = self.master.take() {
            let log = master.dir.join(format!("master.{}.log", self.old_master_logs.len()));
            let _ = std::fs::copy(&master.log, &log);
            self.old_master_logs.push(log);
            master.kill().await;
        }
    }

    /// Starts the master again on the same agent port, and listens to its
    /// (new) publisher. The agents are stopped (SIGSTOP) until the
    /// subscriber is connected and subscribed: a PUB socket sends only to
    /// the subscribers it has, so an agent that reconnected first would
    /// have its replayed events published to nobody. After SIGCONT an
    /// agent must reconnect and complete its Noise handshake through the
    /// master before it can send anything, which the subscription precedes.
    pub async fn restart_master(&mut self, listen: &str) -> anyhow::Result<()> {
        self.restart_master_with(listen, "").await
    }

    /// Another master beside the fleet's, in `<fleet dir>/<name>`, on the
    /// fleet's tree, accepting every id, with `yaml` as its master.yaml's
    /// extra keys (a shared `store:` makes the two a cluster).
    pub async fn start_peer_master(&self, name: &str, yaml: &str) -> anyhow::Result<MasterProcess> {
        fleet::start_master_with(
            &self.binaries,
            &self.dir.path().join(name),
            &self.states,
            "tcp://127.0.0.1:0",
            &["*"],
            yaml,
        )
        .await
    }

    /// As [`Fleet::restart_master`], with `extra` (YAML keys) in its
    /// master.yaml.
    pub async fn restart_master_with(&mut self, listen: &str, extra: &str) -> anyhow::Result<()> {
        self.signal_agents("-STOP");
        let started = async {
            let dir = self.dir.path().join("master");
            let master = fleet::start_master_with(&self.binaries, &dir, &self.states, listen, &["*"], extra).await?;
            let bus = Subscriber::connect(&master.publish, "halite/").await?;
            anyhow::Ok((master, bus))
        }
        .await;
        self.signal_agents("-CONT");
        let (master, bus) = started?;
        self.retired.push(std::mem::replace(&mut self.bus, bus));
        self.master = Some(master);
        Ok(())
    }

    /// SIGTERM the master: a clean stop, waited for.
    pub async fn stop_master(&mut self) {
        if let Some(master) = self.master.take() {
            let log = master.dir.join(format!("master.{}.log", self.old_master_logs.len()));
            master.stop().await;
            let _ = std::fs::copy(log.with_file_name("master.log"), &log);
            self.old_master_logs.push(log);
        }
    }

    /// Sends a signal (`-STOP`, `-CONT`) to every agent.
    fn signal_agents(&self, signal: &str) {
        for pid in self.agents.iter().filter_map(|agent| agent.pid()) {
            let _ = blocking_process("kill").arg(signal).arg(pid.to_string()).status();
        }
    }

    /// Prints the children's logs and every event seen; then panics with
    /// the error. For a test body's `Err`.
    pub fn fail(&self, error: &anyhow::Error) -> ! {
        self.dump_logs();
        panic!("{error:#}");
    }

    fn dump_logs(&self) {
        let mut logs: Vec<PathBuf> = self.old_master_logs.clone();
        logs.extend(self.master.iter().map(|m| m.log.clone()));
        logs.extend(self.agents.iter().map(|a| a.log.clone()));
        for log in logs {
            eprintln!("===== {} =====\n{}", log.display(), std::fs::read_to_string(&log).unwrap_or_default());
        }
        eprintln!("===== events seen =====");
        for event in &self.seen {
            eprintln!("{} {}", event.tag, event.data());
        }
    }
}

impl Drop for Fleet {
    fn drop(&mut self) {
        if std::thread::panicking() {
            self.dump_logs();
        }
    }
}

/// Waits until `done` holds, looking every 20 ms, for at most [`WAIT`]: for
/// conditions no event announces (the master is down, so there is no bus).
pub async fn wait_until(what: &str, mut done: impl FnMut() -> bool) -> anyhow::Result<()> {
    let deadline = tokio::time::Instant::now() + WAIT;
    let mut tick = tokio::time::interval(Duration::from_millis(20));
    while !done() {
        anyhow::ensure!(tokio::time::Instant::now() < deadline, "timed out waiting for {what}");
        tick.tick().await;
    }
    Ok(())
}

/// The resident set size of a process, in KiB (VmRSS in /proc/<pid>/status).
pub fn rss_kib(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
    line.split_whitespace().nth(1)?.parse().ok()
}

/// Reads until the other end closes the connection (end of stream or a
/// reset); an error if it is still open after [`WAIT`].
pub async fn closed_by_peer(stream: &mut tokio::net::TcpStream) -> anyhow::Result<()> {
    use tokio::io::AsyncReadExt;
    let mut sink = Vec::new();
    match tokio::time::timeout(WAIT, stream.read_to_end(&mut sink)).await {
        Ok(_) => Ok(()),
        Err(_) => anyhow::bail!("the connection is still open after {WAIT:?}"),
    }
}

/// A memory attack on a listening process, measured: opens `connections`
/// connections to `address` (`host:port`), writes `opening` on each, then
/// `chunk` again and again until `total` bytes went out or the peer stopped
/// reading, and awaits the peer's closing of each. Returns how many KiB the
/// process `pid`'s VmRSS grew meanwhile; an error when a connection stayed
/// open or the process died.
pub async fn rss_growth_under_flood(
    pid: u32,
    address: &str,
    connections: usize,
    opening: &[u8],
    chunk: &[u8],
    total: usize,
) -> anyhow::Result<u64> {
    use tokio::io::AsyncWriteExt;
    let before = rss_kib(pid).context("the process's VmRSS")?;
    let mut writers = Vec::new();
    for _ in 0..connections {
        let mut stream = tokio::net::TcpStream::connect(address).await?;
        stream.write_all(opening).await?;
        let chunk = chunk.to_vec();
        writers.push(tokio::spawn(async move {
            let mut sent = 0;
            while sent < total {
                let piece = &chunk[..chunk.len().min(total - sent)];
                if stream.write_all(piece).await.is_err() {
                    break;
                }
                sent += piece.len();
            }
            closed_by_peer(&mut stream).await
        }));
    }
    for writer in writers {
        writer.await??;
    }
    let after = rss_kib(pid).context("the process died")?;
    Ok(after.saturating_sub(before))
}

/// Mode bits of a file.
pub fn mode_of(path: &Path) -> u32 {
    use std::os::unix::fs::PermissionsExt;
    std::fs::metadata(path).map(|m| m.permissions().mode() & 0o7777).unwrap_or(0)
}

/// The desired contents of a file of the example tree.
pub fn example_file(name: &str) -> &'static str {
    halite_master::example::FILES.iter().find(|(n, _)| *n == name).map(|(_, t)| *t).expect("example file")
}

/// What a command printed, and how it ended.
#[derive(Debug, Clone)]
pub struct CommandOutput {
    /// The exit code (-1 when killed by a signal).
    pub code: i32,
    pub stdout: String,
    pub stderr: String,
}

impl CommandOutput {
    /// Runs `command` with stdout and stderr piped (so: not a terminal,
    /// no colours, no progress bar) and `NO_COLOR` unset, to prove that
    /// piping alone turns colour off.
    pub async fn of(mut command: tokio::process::Command) -> anyhow::Result<CommandOutput> {
        command.env_remove("NO_COLOR").env_remove("CLICOLOR_FORCE").stdin(std::process::Stdio::null());
        let output = tokio::time::timeout(WAIT * 4, command.output()).await.context("the command hung")??;
        Ok(CommandOutput {
            code: output.status.code().unwrap_or(-1),
            stdout: String::from_utf8(output.stdout)?,
            stderr: String::from_utf8(output.stderr)?,
        })
    }

    /// Stdout as JSON; the error shows everything printed.
    pub fn json(&self) -> anyhow::Result<serde_json::Value> {
        serde_json::from_str(&self.stdout).with_context(|| format!("not JSON: {self:?}"))
    }
}

//! Starting real `halite-master` and `halite-agent` processes on loopback,
//! each in its own directory: what the demo, the end-to-end tests and the
//! benchmarks share.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use anyhow::{Context, bail};
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};

/// How long a process may take to print its ready line.
pub const READY_TIMEOUT: Duration = Duration::from_secs(30);

/// Where the two binaries are.
#[derive(Debug, Clone)]
pub struct Binaries {
    pub master: PathBuf,
    pub agent: PathBuf,
}

impl Binaries {
    /// Both binaries in `dir` (e.g. `target/debug`).
    pub fn in_dir(dir: &Path) -> Binaries {
        Binaries { master: dir.join("halite-master"), agent: dir.join("halite-agent") }
    }

    /// The binaries beside the running executable (an installed halite, or
    /// `target/<profile>` during development).
    pub fn beside_current_exe() -> anyhow::Result<Binaries> {
        let exe = std::env::current_exe().context("cannot find the running executable")?;
        let binaries = Binaries::in_dir(exe.parent().unwrap_or(Path::new(".")));
        if !binaries.agent.exists() {
            bail!("halite-agent is not beside {} (build it with `cargo build --workspace`)", exe.display());
        }
        Ok(binaries)
    }
}

/// A running `halite-master run`.
#[derive(Debug)]
pub struct MasterProcess {
    child: Child,
    /// The agent link, as printed on the ready line.
    pub listen: String,
    /// The outside event publisher, as printed on the ready line.
    pub publish: String,
    /// The master's public key, as printed on the ready line.
    pub key: String,
    /// The HTTPS API's URL (`https://127.0.0.1:PORT`), when `api:` is set.
    pub api: Option<String>,
    pub dir: PathBuf,
    /// Its stderr (logs).
    pub log: PathBuf,
}

/// A running `halite-agent run`.
#[derive(Debug)]
pub struct AgentProcess {
    child: Child,
    pub id: String,
    /// The agent's `root`: `/etc/motd` in a state is `<root>/etc/motd`.
    pub root: PathBuf,
    pub dir: PathBuf,
    pub log: PathBuf,
}

/// Starts a master in `dir` (config, data, log) serving the tree `states`.
/// `listen` is `tcp://127.0.0.1:0` the first time; pass the old endpoint to
/// restart on the same port. `auto_accept` globs go in its configuration.
pub async fn start_master(
    binaries: &Binaries,
    dir: &Path,
    states: &Path,
    listen: &str,
    auto_accept: &[&str],
) -> anyhow::Result<MasterProcess> {
    start_master_with(binaries, dir, states, listen, auto_accept, "").await
}

/// As [`start_master`], with `extra` (YAML keys) appended to its master.yaml.
pub async fn start_master_with(
    binaries: &Binaries,
    dir: &Path,
    states: &Path,
    listen: &str,
    auto_accept: &[&str],
    extra: &str,
) -> anyhow::Result<MasterProcess> {
    tokio::fs::create_dir_all(dir).await?;
    let config = dir.join("master.yaml");
    let globs: Vec<String> = auto_accept.iter().map(|g| format!("'{g}'")).collect();
    // A fleet made here admits its own agents by id, unless the caller
    // configures enrolment itself (a token, fingerprints).
    let trust = if !auto_accept.is_empty() && !extra.contains("enrolment:") {
        "enrolment:\n  trust_id_alone: true\n"
    } else {
        ""
    };
    // The publisher on loopback, unless the caller places it (a master in
    // another network namespace publishes on a Unix socket).
    let publish = if extra.contains("publish:") { "" } else { "publish: tcp://127.0.0.1:0\n" };
    tokio::fs::write(
        &config,
        format!(
            "listen: {listen}\n{publish}states: {}\ndata_dir: {}\nauto_accept: [{}]\n{trust}{extra}",
            states.display(),
            dir.join("data").display(),
            globs.join(", ")
        ),
    )
    .await?;
    let log = dir.join("master.log");
    let (child, line) = spawn_until_ready(&binaries.master, &["run", "--config"], &config, &log, None).await?;
    let field = |key: &str| {
        line.split_whitespace()
            .find_map(|f| f.strip_prefix(key))
            .map(str::to_owned)
            .with_context(|| format!("no {key} in `{line}`"))
    };
    Ok(MasterProcess {
        listen: field("listen=")?,
        publish: field("publish=")?,
        key: field("key=")?,
        api: field("api=").ok(),
        child,
        dir: dir.to_path_buf(),
        log,
    })
}

/// Starts an agent `id` in `dir`, managing files under `dir/root`, talking
/// to the master at `master` whose key is `master_key`.
pub async fn start_agent(
    binaries: &Binaries,
    dir: &Path,
    id: &str,
    master: &str,
    master_key: &str,
) -> anyhow::Result<AgentProcess> {
    start_agent_with(binaries, dir, id, master, master_key, "").await
}

/// As [`start_agent`], with `extra` (YAML keys) appended to its agent.yaml.
pub async fn start_agent_with(
    binaries: &Binaries,
    dir: &Path,
    id: &str,
    master: &str,
    master_key: &str,
    extra: &str,
) -> anyhow::Result<AgentProcess> {
    start_agent_written(binaries, dir, id, &format!("master: {master}\n"), master_key, extra).await
}

/// As [`start_agent_with`], listing several masters (`masters:` in its
/// agent.yaml) that share the key `master_key`: an agent of a cluster.
pub async fn start_agent_listing(
    binaries: &Binaries,
    dir: &Path,
    id: &str,
    masters: &[String],
    master_key: &str,
    extra: &str,
) -> anyhow::Result<AgentProcess> {
    let listed: String = masters.iter().map(|m| format!("  - {m}\n")).collect();
    start_agent_written(binaries, dir, id, &format!("masters:\n{listed}"), master_key, extra).await
}

/// Starts an agent whose agent.yaml names its masters with `masters_yaml`.
async fn start_agent_written(
    binaries: &Binaries,
    dir: &Path,
    id: &str,
    masters_yaml: &str,
    master_key: &str,
    extra: &str,
) -> anyhow::Result<AgentProcess> {
    let root = dir.join("root");
    tokio::fs::create_dir_all(&root).await?;
    let config = dir.join("agent.yaml");
    tokio::fs::write(
        &config,
        format!(
            "id: {id}\n{masters_yaml}master_key: {master_key}\ndata_dir: {}\nroot: {}\n{extra}",
            dir.join("data").display(),
            root.display()
        ),
    )
    .await?;
    let log = dir.join("agent.log");
    let (child, _) = spawn_until_ready(&binaries.agent, &["run", "--config"], &config, &log, Some(dir)).await?;
    Ok(AgentProcess { child, id: id.to_owned(), root, dir: dir.to_path_buf(), log })
}

/// Starts `binary`, in `cwd` if given (an agent runs in its own directory,
/// so a `cmd.run` without `cwd` leaves its traces there).
async fn spawn_until_ready(
    binary: &Path,
    args: &[&str],
    config: &Path,
    log: &Path,
    cwd: Option<&Path>,
) -> anyhow::Result<(Child, String)> {
    let stderr = tokio::fs::File::create(log).await?.into_std().await;
    // halite's own daemons, started for the demo and the tests: they run
    // until stopped and are read line by line for their ready line, which
    // the spawner (programs run to their end, output captured) is not for.
    #[allow(clippy::disallowed_methods)]
    let mut command = Command::new(binary);
    if let Some(cwd) = cwd {
        command.current_dir(cwd);
    }
    let mut child = command
        .args(args)
        .arg(config)
        .env("RUST_LOG", std::env::var("RUST_LOG").unwrap_or_else(|_| "info".into()))
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(stderr)
        .kill_on_drop(true)
        .spawn()
        .with_context(|| format!("cannot start {}", binary.display()))?;
    let stdout = child.stdout.take().context("no stdout")?;
    let mut lines = BufReader::new(stdout).lines();
    let ready = tokio::time::timeout(READY_TIMEOUT, async {
        while let Some(line) = lines.next_line().await? {
            if line.starts_with("ready ") {
                return Ok(line);
            }
        }
        bail!("exited before it was ready")
    })
    .await;
    match ready {
        Ok(Ok(line)) => {
            // Keep reading so the child never blocks on a full pipe.
            tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
            Ok((child, line))
        }
        Ok(Err(e)) => {
            let logs = tokio::fs::read_to_string(log).await.unwrap_or_default();
            bail!("{} {e}; its log:\n{logs}", binary.display())
        }
        Err(_) => bail!("{} printed no ready line within {READY_TIMEOUT:?}", binary.display()),
    }
}

async fn terminate(child: &mut Child) {
    if let Some(pid) = child.id().and_then(|p| i32::try_from(p).ok()) {
        let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), nix::sys::signal::Signal::SIGTERM);
        if tokio::time::timeout(Duration::from_secs(5), child.wait()).await.is_ok() {
            return;
        }
    }
    let _ = child.kill().await;
}

impl MasterProcess {
    /// The process id, while it runs.
    pub fn pid(&self) -> Option<u32> {
        self.child.id()
    }

    /// SIGTERM, then SIGKILL after a grace period.
    pub async fn stop(mut self) {
        terminate(&mut self.child).await;
    }

    /// SIGKILL: a crash.
    pub async fn kill(mut self) {
        let _ = self.child.kill().await;
    }
}

impl AgentProcess {
    /// The process id, while it runs (to stop and continue it in tests).
    pub fn pid(&self) -> Option<u32> {
        self.child.id()
    }

    pub async fn stop(mut self) {
        terminate(&mut self.child).await;
    }

    pub async fn kill(mut self) {
        let _ = self.child.kill().await;
    }

    /// Where an authored absolute path is for this agent.
    pub fn path(&self, authored: &str) -> PathBuf {
        halite_state::paths::rooted(&self.root, Path::new(authored))
    }
}

/// One way an operator (or an intruder) changes a file by hand.
#[derive(Debug, Clone, Copy)]
pub struct Drift {
    pub name: &'static str,
    /// Changes the file at the path; it must exist unless the drift says so.
    pub act: fn(&Path) -> std::io::Result<()>,
}

/// The ways of drifting a file that the demo, the tests and the benchmark
/// go through: each reaches the beacon by a different inotify path.
pub const DRIFTS: &[Drift] = &[
    Drift {
        name: "edit in place (append a line)",
        act: |p| {
            use std::io::Write;
            std::fs::OpenOptions::new().append(true).open(p)?.write_all(b"# a hand edit\n")
        },
    },
    Drift { name: "truncate and rewrite", act: |p| std::fs::write(p, "worker_processes 64;\n") },
    Drift { name: "delete", act: |p| std::fs::remove_file(p) },
    Drift {
        name: "replace by rename (as vim and sed -i do)",
        act: |p| {
            let temp = p.with_extension("halite-drift");
            std::fs::write(&temp, "replaced\n")?;
            std::fs::rename(temp, p)
        },
    },
    Drift {
        name: "chmod 0600",
        act: |p| {
            use std::os::unix::fs::PermissionsExt;
            std::fs::set_permissions(p, std::fs::Permissions::from_mode(0o600))
        },
    },
];

//! `halite-agent`: the command line.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::Context;
use clap::{CommandFactory, Parser};
use halite_agent::args::{Cli, Command};
use halite_agent::config::{AgentConfig, DEFAULT_CONFIG, DEFAULT_DATA_DIR};
use halite_agent::logging::LogFormat;
use halite_fs::lock::LockError;
use tokio_util::sync::CancellationToken;

fn main() -> ExitCode {
    let cli = Cli::parse();
    // The daemon logs its work; a command's output is its report.
    // (`apply --local` reports every failed state itself.)
    let default_level = match cli.command {
        Command::Run { .. } => "info",
        Command::Apply { .. } => "error",
        _ => "warn",
    };
    halite_agent::logging::init(log_format(&cli), default_level);
    match run(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("error: {error:#}");
            let refused =
                error.chain().any(|cause| matches!(cause.downcast_ref::<LockError>(), Some(LockError::Held { .. })));
            if refused { ExitCode::from(halite_agent::args::EXIT_REFUSED) } else { ExitCode::FAILURE }
        }
    }
}

/// `--log-format`, else for `run` the configuration's `log_format` (read
/// quietly here: `run` loads it again and reports what is wrong with it).
fn log_format(cli: &Cli) -> LogFormat {
    match (&cli.log_format, &cli.command) {
        (Some(format), _) => *format,
        (None, Command::Run { config, .. }) => AgentConfig::load(config).map(|c| c.log_format).unwrap_or_default(),
        (None, _) => LogFormat::default(),
    }
}

fn run(cli: Cli) -> anyhow::Result<()> {
    match cli.command {
        Command::Fingerprint { config, data_dir } => {
            let data_dir = match data_dir {
                Some(dir) => dir,
                None if config.exists() || config.as_os_str() != DEFAULT_CONFIG => {
                    AgentConfig::load(&config).context("cannot load the agent configuration")?.data_dir
                }
                None => PathBuf::from(DEFAULT_DATA_DIR),
            };
            let path = data_dir.join("agent.key");
            // Never made here: a key made by `fingerprint` is not the one a
            // running agent uses, and its fingerprint would mislead.
            if !path.exists() {
                anyhow::bail!(
                    "no agent key at {} (the agent makes it at its first `run`; with another data dir, pass --config or --data-dir)",
                    path.display()
                );
            }
            let keypair = halite_link::Keypair::load(&path)
                .with_context(|| format!("cannot read the agent's key {}", path.display()))?;
            println!("{}", keypair.public);
            Ok(())
        }
        Command::Apply { local, states, test, json, id, root, config } => {
            let configured = if config.exists() {
                Some(AgentConfig::load(&config).context("cannot load the agent configuration")?)
            } else {
                None
            };
            let root = match (root, configured.as_ref().and_then(|_| root_set_in(&config))) {
                (Some(root), _) => root,
                (None, Some(root)) => root,
                (None, None) => Cli::command()
                    .error(
                        clap::error::ErrorKind::MissingRequiredArgument,
                        format!(
                            "no --root, and {} {}: say where the states apply, `--root DIR` to try them \
                             under DIR, or `--root /` for this host itself",
                            config.display(),
                            if configured.is_some() { "sets no `root`" } else { "does not exist" }
                        ),
                    )
                    .exit(),
            };
            let (backup_dir, backup_max_bytes) = match &configured {
                Some(configured) => (configured.data_dir.join("backup"), configured.backup_max_bytes),
                None => (
                    halite_agent::rooted(&root, Path::new(DEFAULT_DATA_DIR)).join("backup"),
                    halite_state::apply::DEFAULT_BACKUP_MAX_BYTES,
                ),
            };
            let request = halite_agent::local::LocalApply {
                tree: local,
                states,
                id: id
                    .or_else(|| configured.as_ref().map(AgentConfig::agent_id))
                    .unwrap_or_else(halite_agent::facts::hostname),
                root,
                test,
                backup_dir,
                backup_max_bytes,
            };
            let report = halite_agent::local::apply(&request)?;
            let mut stdout = anstream::stdout();
            if json {
                writeln!(stdout, "{}", serde_json::to_string_pretty(&report.to_json())?)?;
            } else {
                stdout.write_all(report.render(true).as_bytes())?;
            }
            stdout.flush()?;
            match report.exit_code() {
                0 => Ok(()),
                code => std::process::exit(i32::from(code)),
            }
        }
        Command::Run { config, data_dir, master } => {
            let mut agent = AgentConfig::load(&config)
                .context("cannot load the agent configuration (see `halite-agent run --help`)")?;
            if let Some(data_dir) = data_dir {
                agent.data_dir = data_dir;
            }
            if let Some(master) = master {
                // One master named on the command line replaces the list.
                agent.master = master;
                agent.masters = None;
            }
            cap_malloc_arenas();
            let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build()?;
            runtime.block_on(async {
                let cancel = CancellationToken::new();
                tokio::spawn(halite_state::signal::stop_on_signal(cancel.clone(), "agent"));
                halite_agent::daemon::run(agent, cancel).await
            })
        }
    }
}

/// The `root` agent.yaml sets itself, if it does: `apply --local` takes
/// the daemon's root only when the operator wrote one, never the default
/// `/` by omission.
fn root_set_in(config: &Path) -> Option<PathBuf> {
    #[derive(serde::Deserialize)]
    struct Root {
        root: Option<PathBuf>,
    }
    let text = std::fs::read_to_string(config).ok()?;
    halite_state::yaml::parse::<Root>(config, &text).ok()?.root
}

/// glibc's malloc arenas for the daemon, unless the operator chose
/// (`MALLOC_ARENA_MAX` or `GLIBC_TUNABLES` in the environment).
const MALLOC_ARENAS: i32 = 2;

/// glibc gives each thread that allocates an arena of its own, up to eight
/// per core, and the agent's mostly sleeping threads (beacons, inotify
/// readers, the runtime's) each keep pages in theirs: a quarter to half a MiB
/// of an idle agent's 1.9 MiB of private memory (BENCHMARKS.md, Footprint). Two
/// arenas serve the same work; the agent's allocations are small and few,
/// so threads seldom wait on each other's lock. Called before any thread
/// starts.
#[cfg(all(target_os = "linux", target_env = "gnu"))]
#[allow(unsafe_code)]
fn cap_malloc_arenas() {
    if ["MALLOC_ARENA_MAX", "GLIBC_TUNABLES"].iter().any(|name| std::env::var_os(name).is_some()) {
        return;
    }
    // SAFETY: mallopt only sets a parameter of glibc's allocator, and no
    // other thread exists yet to allocate while it does.
    if unsafe { libc::mallopt(libc::M_ARENA_MAX, MALLOC_ARENAS) } == 0 {
        tracing::debug!("glibc refused to cap its malloc arenas; running with its default.");
    }
}

/// Other C libraries keep one heap, or their own policy.
#[cfg(not(all(target_os = "linux", target_env = "gnu")))]
fn cap_malloc_arenas() {}

//! `halite-agent`: the command line.

use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use clap::Parser;
use halite_agent::args::{Cli, Command};
use halite_agent::config::AgentConfig;
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
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| default_level.into()))
        .with_writer(std::io::stderr)
        .init();
    match run(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("error: {error:#}");
            ExitCode::FAILURE
        }
    }
}

fn run(cli: Cli) -> anyhow::Result<()> {
    match cli.command {
        Command::Fingerprint { data_dir } => {
            let (keypair, _) = halite_link::Keypair::load_or_create(&data_dir.join("agent.key"))?;
            println!("{}", keypair.public);
            Ok(())
        }
        Command::Apply { local, states, test, json, id, root, config } => {
            let configured = if config.exists() {
                Some(AgentConfig::load(&config).context("cannot load the agent configuration")?)
            } else {
                None
            };
            let request = halite_agent::local::LocalApply {
                tree: local,
                states,
                id: id
                    .or_else(|| configured.as_ref().map(AgentConfig::agent_id))
                    .unwrap_or_else(halite_agent::facts::hostname),
                root: root.or_else(|| configured.map(|c| c.root)).unwrap_or_else(|| PathBuf::from("/")),
                test,
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
                agent.master = master;
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

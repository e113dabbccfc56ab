//! `halite-agent`: the command line.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use clap::{Parser, Subcommand};
use halite_agent::config::{AgentConfig, DEFAULT_CONFIG};
use tokio_util::sync::CancellationToken;

/// The halite agent: watches this host with beacons, reports events to the
/// master, and applies the states the master sends back.
///
/// Exit codes: 0 stopped cleanly, 1 failed (the message says why),
/// 2 bad command line.
#[derive(Debug, Parser)]
#[command(name = "halite-agent", version, propagate_version = true)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run the agent in the foreground until SIGTERM or SIGINT.
    ///
    /// Prints `ready id=<id>` on stdout once its session with the master is
    /// up. Logs go to stderr; set RUST_LOG (e.g. RUST_LOG=debug) for more.
    Run {
        /// The agent's configuration (YAML).
        #[arg(long, env = "HALITE_CONFIG", default_value = DEFAULT_CONFIG)]
        config: PathBuf,
        /// Overrides `data_dir` in the configuration.
        #[arg(long, env = "HALITE_DATA_DIR")]
        data_dir: Option<PathBuf>,
        /// Overrides `master` in the configuration, e.g. tcp://10.0.0.1:4510.
        #[arg(long, env = "HALITE_MASTER")]
        master: Option<String>,
    },
    /// Print this agent's public key (its fingerprint), making the key if
    /// there is none yet. Compare it with `halite-master keys list` before
    /// accepting the agent.
    Fingerprint {
        /// The agent's data directory, where its key lives.
        #[arg(long, env = "HALITE_DATA_DIR", default_value = halite_agent::config::DEFAULT_DATA_DIR)]
        data_dir: PathBuf,
    },
}

fn main() -> ExitCode {
    if let Some(out) = halite_agent::manual::requested() {
        use clap::CommandFactory;
        return match halite_agent::manual::write(Cli::command(), &out) {
            Ok(()) => ExitCode::SUCCESS,
            Err(error) => {
                eprintln!("error: cannot write the manual into {}: {error}", out.display());
                ExitCode::FAILURE
            }
        };
    }
    let cli = Cli::parse();
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()))
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
        Command::Run { config, data_dir, master } => {
            let mut agent = AgentConfig::load(&config)
                .context("cannot load the agent configuration (see `halite-agent run --help`)")?;
            if let Some(data_dir) = data_dir {
                agent.data_dir = data_dir;
            }
            if let Some(master) = master {
                agent.master = master;
            }
            let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build()?;
            runtime.block_on(async {
                let cancel = CancellationToken::new();
                tokio::spawn(stop_on_signal(cancel.clone()));
                halite_agent::daemon::run(agent, cancel).await
            })
        }
    }
}

async fn stop_on_signal(cancel: CancellationToken) {
    use tokio::signal::unix::{SignalKind, signal};
    let (Ok(mut term), Ok(mut int)) = (signal(SignalKind::terminate()), signal(SignalKind::interrupt())) else {
        tracing::error!("Cannot install signal handlers; stop the agent with SIGKILL.");
        return;
    };
    tokio::select! {
        _ = term.recv() => {}
        _ = int.recv() => {}
    }
    tracing::info!("Signal received; stopping.");
    cancel.cancel();
}

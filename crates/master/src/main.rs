//! `halite-master`: the command line.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use clap::Parser;
use halite_master::args::{Cli, Command, KeysAction};
use halite_master::config::{DEFAULT_CONFIG, MasterConfig};
use tokio_util::sync::CancellationToken;

/// The master allocates and frees a few small objects per event on one
/// thread and frees some of them on another (the publisher, the reactors).
/// glibc's malloc spent about a third of the master's time on that at
/// 100,000 events/s (BENCHMARKS.md, ingest); mimalloc's per-thread free
/// lists are made for this pattern. Built with `no_thp`: otherwise it asks
/// for transparent huge pages on its arenas and an idle master holds about
/// 36 MiB instead of 20 (BENCHMARKS.md, footprint).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> ExitCode {
    let cli = Cli::parse();
    let default_level = if matches!(cli.command, Command::Run { .. }) { "info" } else { "warn" };
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| default_level.into()))
        .with_writer(std::io::stderr)
        .init();
    match run(cli) {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::FAILURE,
        // `jobs | head`: the reader has all it wants.
        Err(error)
            if error.downcast_ref::<std::io::Error>().is_some_and(|e| e.kind() == std::io::ErrorKind::BrokenPipe) =>
        {
            ExitCode::SUCCESS
        }
        Err(error) => {
            eprintln!("error: {error:#}");
            ExitCode::FAILURE
        }
    }
}

fn runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    Ok(tokio::runtime::Builder::new_multi_thread().enable_all().build()?)
}

fn run(cli: Cli) -> anyhow::Result<bool> {
    match cli.command {
        Command::Init { dir, listen } => {
            let layout = match dir {
                Some(dir) => halite_master::init::Layout::under(&dir),
                None => halite_master::init::Layout::system(),
            };
            halite_master::init::run(&layout, listen.as_deref(), &mut std::io::stdout().lock())?;
            Ok(true)
        }
        Command::Run { config, data_dir, states } => {
            let mut master = if config.exists() || config.as_os_str() != DEFAULT_CONFIG {
                MasterConfig::load(&config)
                    .context("cannot load the master configuration (see `halite-master run --help`)")?
            } else {
                MasterConfig::default()
            };
            if let Some(data_dir) = data_dir {
                master.data_dir = data_dir;
            }
            if let Some(states) = states {
                master.states = states;
            }
            runtime()?.block_on(async {
                let cancel = CancellationToken::new();
                tokio::spawn(stop_on_signal(cancel.clone()));
                halite_master::daemon::run(master, cancel).await
            })?;
            Ok(true)
        }
        Command::Keys { action, config, data_dir, json } => {
            let data_dir = match data_dir {
                Some(dir) => dir,
                None if config.exists() => MasterConfig::load(&config)?.data_dir,
                None => MasterConfig::default().data_dir,
            };
            keys(action, &data_dir, json)
        }
        Command::Check { states, event, data, agent } => {
            let mut out = std::io::stdout().lock();
            let clean = halite_master::check::run(&states, &mut out)?;
            match event {
                None => Ok(clean),
                Some(tag) => {
                    let data: serde_json::Value = serde_json::from_str(data.as_deref().unwrap_or("{}"))
                        .context("--data is not JSON (write e.g. --data '{\"kind\": \"modify\"}')")?;
                    halite_master::check::what_if(&states, &tag, agent.as_deref(), &data, &mut out)?;
                    Ok(clean)
                }
            }
        }
        Command::Apply { target, states, test, json, timeout, config, data_dir } => {
            let data_dir = operator_data_dir(&config, data_dir)?;
            // As the operator would type it again, whatever path ran us.
            let args: Vec<String> =
                std::iter::once("halite-master".to_owned()).chain(std::env::args().skip(1)).collect();
            let command_line = shlex::try_join(args.iter().map(String::as_str)).unwrap_or_else(|_| args.join(" "));
            let options = halite_master::cli::apply::Options { target, states, test, json, timeout, command_line };
            let code = runtime()?.block_on(halite_master::cli::apply::run(&data_dir, options))?;
            exit_with(code)
        }
        Command::Jobs { jid, limit, json, config, data_dir } => {
            let data_dir = operator_data_dir(&config, data_dir)?;
            let code = match jid {
                Some(jid) => halite_master::cli::jobs::show(&data_dir, &jid, json)?,
                None => halite_master::cli::jobs::list(&data_dir, limit, json)?,
            };
            exit_with(code)
        }
        Command::Agents { config, data_dir, json } => agents(&operator_data_dir(&config, data_dir)?, json),
        Command::Events { tag, json, config, data_dir } => {
            let data_dir = operator_data_dir(&config, data_dir)?;
            runtime()?.block_on(halite_master::events::tail(&data_dir, tag, json, &mut std::io::stdout().lock()))?;
            Ok(true)
        }
        Command::Demo { keep } => {
            runtime()?.block_on(halite_master::demo::run(keep))?;
            Ok(true)
        }
    }
}

/// The data dir an operator command talks to: `--data-dir`, or the
/// configuration's, or the default.
fn operator_data_dir(config: &std::path::Path, data_dir: Option<PathBuf>) -> anyhow::Result<PathBuf> {
    Ok(match data_dir {
        Some(dir) => dir,
        None if config.exists() => MasterConfig::load(config)?.data_dir,
        None => MasterConfig::default().data_dir,
    })
}

/// Ends with a command's own exit code (beyond success and failure).
fn exit_with(code: u8) -> anyhow::Result<bool> {
    use std::io::Write;
    if code == 0 {
        return Ok(true);
    }
    let _ = std::io::stdout().flush();
    std::process::exit(i32::from(code))
}

async fn stop_on_signal(cancel: CancellationToken) {
    use tokio::signal::unix::{SignalKind, signal};
    let (Ok(mut term), Ok(mut int)) = (signal(SignalKind::terminate()), signal(SignalKind::interrupt())) else {
        tracing::error!("Cannot install signal handlers; stop the master with SIGKILL.");
        return;
    };
    tokio::select! {
        _ = term.recv() => {}
        _ = int.recv() => {}
    }
    tracing::info!("Signal received; stopping.");
    cancel.cancel();
}

fn agents(data_dir: &std::path::Path, json: bool) -> anyhow::Result<bool> {
    use halite_master::control::{self, Request};
    let response = runtime()?.block_on(control::request(data_dir, &Request::Agents))?;
    if let Some(error) = response.error {
        anyhow::bail!(error);
    }
    if json {
        println!("{}", serde_json::to_string_pretty(&response.agents)?);
    } else if response.agents.is_empty() {
        println!("no agents yet");
    } else {
        print!("{}", halite_master::agents::table(&response.agents, halite_proto::event::now_us()));
    }
    Ok(true)
}

fn keys(action: KeysAction, data_dir: &std::path::Path, json: bool) -> anyhow::Result<bool> {
    use halite_master::control::{self, Request};
    let request = match action {
        KeysAction::Fingerprint => {
            let path = data_dir.join("master.key");
            let keypair = halite_link::Keypair::load(&path).with_context(|| {
                format!("no master key in {} (start the master once, or pass --data-dir)", data_dir.display())
            })?;
            println!("{}", keypair.public);
            return Ok(true);
        }
        KeysAction::List => Request::KeysList,
        KeysAction::Accept { target } => Request::KeysAccept { target },
        KeysAction::Reject { target } => Request::KeysReject { target },
        KeysAction::Delete { target } => Request::KeysDelete { target },
    };
    let listing = matches!(request, Request::KeysList);
    let response = runtime()?.block_on(control::request(data_dir, &request))?;
    if let Some(error) = response.error {
        anyhow::bail!(error);
    }
    if json {
        println!("{}", serde_json::to_string_pretty(&response.keys)?);
    } else if response.keys.is_empty() {
        println!("{}", if listing { "no keys yet" } else { "no key matched" });
    } else {
        let width = response.keys.iter().map(|k| k.id.len()).max().unwrap_or(2).max(2);
        println!("{:<width$}  {:<8}  FINGERPRINT", "ID", "STATUS");
        for key in &response.keys {
            println!("{:<width$}  {:<8}  {}", key.id, key.status.as_str(), key.key);
        }
    }
    Ok(true)
}

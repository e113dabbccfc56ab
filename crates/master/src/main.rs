//! `halite-master`: the command line.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use clap::{Parser, Subcommand};
use halite_master::config::DEFAULT_CONFIG;

/// The master allocates and frees a few small objects per event on one
/// thread and frees some of them on another (the publisher, the reactors).
/// glibc's malloc spent about a third of the master's time on that at
/// 100,000 events/s (BENCHMARKS.md, ingest); mimalloc's per-thread free
/// lists are made for this pattern. Built with `no_thp`: otherwise it asks
/// for transparent huge pages on its arenas and an idle master holds about
/// 36 MiB instead of 20 (BENCHMARKS.md, footprint).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// The halite master: loads the state tree, receives agents' events, runs
/// reactors and pushes corrective state back to the agents.
///
/// Exit codes: 0 success; 1 failure (the message says why; for `check`,
/// the tree has errors); 2 bad command line (for `apply`: some agent did
/// not answer, see `apply --help`).
#[derive(Debug, Parser)]
#[command(name = "halite-master", version, propagate_version = true)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Set up a new master: write master.yaml, make the master's key and an
    /// example state tree (each only if missing), and print the lines to put
    /// in agents' agent.yaml.
    ///
    /// Without --dir: /etc/halite/master.yaml, /var/lib/halite/master and
    /// /srv/halite/states. Safe to run again: it keeps what exists and says so.
    Init {
        /// Put everything under DIR (DIR/master.yaml, DIR/data, DIR/states).
        #[arg(long)]
        dir: Option<PathBuf>,
        /// The agent link for a new master.yaml (default tcp://0.0.0.0:4510).
        #[arg(long, value_name = "ENDPOINT")]
        listen: Option<String>,
    },
    /// Run the master in the foreground until SIGTERM or SIGINT.
    ///
    /// Prints `ready listen=<endpoint> publish=<endpoint>` on stdout (and in
    /// <data_dir>/endpoints) once it serves, with real ports when port 0 was
    /// asked for. Logs go to stderr; RUST_LOG=debug shows every event.
    Run {
        /// The master's configuration (YAML).
        #[arg(long, env = "HALITE_CONFIG", default_value = DEFAULT_CONFIG)]
        config: PathBuf,
        /// Overrides `data_dir`.
        #[arg(long, env = "HALITE_DATA_DIR")]
        data_dir: Option<PathBuf>,
        /// Overrides `states`.
        #[arg(long, env = "HALITE_STATES")]
        states: Option<PathBuf>,
    },
    /// Check the whole state tree and print every problem as
    /// file:line:col: error: … with a hint; exit 1 if there is any.
    Check {
        /// The state tree to check.
        #[arg(long, env = "HALITE_STATES", default_value = "states")]
        states: PathBuf,
        /// What-if: after checking, show which reactors this event tag would
        /// fire and what they would do (nothing is done).
        #[arg(long, value_name = "TAG")]
        event: Option<String>,
        /// The what-if event's data, as JSON (default `{}`).
        #[arg(long, value_name = "JSON", requires = "event")]
        data: Option<String>,
        /// The agent that raises the what-if event (default: the one in the
        /// tag, for `halite/beacon/<agent>/...`).
        #[arg(long, requires = "event")]
        agent: Option<String>,
    },
    /// Agents' keys: list them, accept, reject or delete them, or print the
    /// master's own key (its fingerprint, which agents pin as `master_key`).
    ///
    /// TARGET is an agent-id glob (`web*`) or a key (64 hex digits). A new
    /// agent's key is pending until it is accepted (or an `auto_accept` glob
    /// matches); nothing from a pending, rejected or deleted key reaches the
    /// bus. Rejecting or deleting a key ends its session at once.
    Keys {
        #[command(subcommand)]
        action: KeysAction,
        /// The master's configuration, to find its data dir.
        #[arg(long, env = "HALITE_CONFIG", default_value = DEFAULT_CONFIG, global = true)]
        config: PathBuf,
        /// The master's data dir (overrides the configuration's).
        #[arg(long, env = "HALITE_DATA_DIR", global = true)]
        data_dir: Option<PathBuf>,
        /// Print JSON instead of a table.
        #[arg(long, global = true)]
        json: bool,
    },
    /// Apply state files to the connected agents TARGET matches, and show
    /// what each agent did: a progress bar while they answer (on a
    /// terminal), each agent's states with their changes and diffs (coloured
    /// on a terminal, plain when piped or with NO_COLOR), and a summary.
    ///
    /// Without STATE, each agent gets its top.yaml states (a highstate).
    /// Every run is recorded; `halite-master jobs` shows it later.
    ///
    /// Exit codes: 0 every agent answered and nothing failed; 1 a state
    /// failed (or the request was refused: unknown state file, bad target);
    /// 2 some agent did not answer in time, or TARGET matches no connected
    /// agent (2 wins over 1: the picture is incomplete).
    Apply {
        /// A target expression, as in top.yaml: 'web*', L@web01,web02,
        /// 'G@os:debian and not db*'.
        target: String,
        /// State files to apply (default: each agent's top.yaml states).
        states: Vec<String>,
        /// Test mode: report what would change, with diffs; change nothing.
        #[arg(long)]
        test: bool,
        /// Print one JSON document instead of text.
        #[arg(long)]
        json: bool,
        /// How long to wait for each agent's answer.
        #[arg(long, default_value = "60s", value_parser = humantime::parse_duration)]
        timeout: std::time::Duration,
        /// The master's configuration, to find its data dir.
        #[arg(long, env = "HALITE_CONFIG", default_value = DEFAULT_CONFIG)]
        config: PathBuf,
        /// The master's data dir (overrides the configuration's).
        #[arg(long, env = "HALITE_DATA_DIR")]
        data_dir: Option<PathBuf>,
    },
    /// The job history: every job (operator applies, reactions, start-up
    /// applies) with its cause and results, newest first; with JID, one
    /// job's per-agent, per-state results and diffs.
    ///
    /// Reads <data_dir>/halite.db directly, read-only: works whether the
    /// master runs or not. Exit code 1 when JID matches no job.
    Jobs {
        /// A job id, or a unique start of one.
        jid: Option<String>,
        /// How many jobs to list.
        #[arg(long, default_value_t = 20)]
        limit: u32,
        /// Print JSON instead of text.
        #[arg(long)]
        json: bool,
        /// The master's configuration, to find its data dir.
        #[arg(long, env = "HALITE_CONFIG", default_value = DEFAULT_CONFIG)]
        config: PathBuf,
        /// The master's data dir (overrides the configuration's).
        #[arg(long, env = "HALITE_DATA_DIR")]
        data_dir: Option<PathBuf>,
    },
    /// Every agent the running master knows: key status, address, version,
    /// connected since, last event, compliance of its watched files, facts.
    ///
    /// Compliance: `unknown` (no job returned yet), `compliant` (the last
    /// job succeeded and no managed file drifted since), `drifted` (a
    /// managed file changed and no job has returned since), `failing` (the
    /// last job had a failed state). Pending agents are listed too.
    Agents {
        /// The master's configuration, to find its data dir.
        #[arg(long, env = "HALITE_CONFIG", default_value = DEFAULT_CONFIG)]
        config: PathBuf,
        /// The master's data dir (overrides the configuration's).
        #[arg(long, env = "HALITE_DATA_DIR")]
        data_dir: Option<PathBuf>,
        /// Print JSON (every fact) instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// A live tail of the running master's event bus, until Ctrl-C.
    ///
    /// One line per event: time (UTC), tag, agent, data. A tail that cannot
    /// keep up is told `lagged, N events skipped`; the master never waits
    /// for it.
    Events {
        /// Only events whose tag matches this glob (`halite/beacon/web*/*`).
        #[arg(long, value_name = "GLOB")]
        tag: Option<String>,
        /// One JSON object per line, as the outside publisher sends them.
        #[arg(long)]
        json: bool,
        /// The master's configuration, to find its data dir.
        #[arg(long, env = "HALITE_CONFIG", default_value = DEFAULT_CONFIG)]
        config: PathBuf,
        /// The master's data dir (overrides the configuration's).
        #[arg(long, env = "HALITE_DATA_DIR")]
        data_dir: Option<PathBuf>,
    },
    /// Start a master and two agents on loopback in a temporary directory,
    /// drift managed files several ways and show each restore with its
    /// latency. Needs nothing set up.
    Demo {
        /// Leave everything running afterwards, to edit files by hand.
        #[arg(long)]
        keep: bool,
    },
}

#[derive(Debug, Subcommand)]
enum KeysAction {
    /// Every known key with its agent id and status.
    List,
    /// Accept the pending or rejected keys TARGET names.
    Accept { target: String },
    /// Reject the keys TARGET names; their agents are cut off at once.
    Reject { target: String },
    /// Forget the keys TARGET names; their agents are cut off at once and
    /// come back as pending.
    Delete { target: String },
    /// Print the master's public key, to put in agents' `master_key`.
    Fingerprint,
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

fn run(cli: Cli) -> anyhow::Result<bool> {
    use halite_master::cli;
    match cli.command {
        Command::Init { dir, listen } => {
            let layout = match dir {
                Some(dir) => cli::init::Layout::under(&dir),
                None => cli::init::Layout::system(),
            };
            cli::init::run(&layout, listen.as_deref(), &mut std::io::stdout().lock())?;
            Ok(true)
        }
        Command::Run { config, data_dir, states } => {
            cli::run::run(&config, data_dir, states)?;
            Ok(true)
        }
        Command::Keys { action, config, data_dir, json } => {
            let action = match action {
                KeysAction::List => cli::keys::Action::List,
                KeysAction::Accept { target } => cli::keys::Action::Accept(target),
                KeysAction::Reject { target } => cli::keys::Action::Reject(target),
                KeysAction::Delete { target } => cli::keys::Action::Delete(target),
                KeysAction::Fingerprint => cli::keys::Action::Fingerprint,
            };
            cli::keys::run(action, &cli::operator_data_dir(&config, data_dir)?, json)
        }
        Command::Check { states, event, data, agent } => {
            let mut out = std::io::stdout().lock();
            let clean = cli::check::run(&states, &mut out)?;
            match event {
                None => Ok(clean),
                Some(tag) => {
                    let data: serde_json::Value = serde_json::from_str(data.as_deref().unwrap_or("{}"))
                        .context("--data is not JSON (write e.g. --data '{\"kind\": \"modify\"}')")?;
                    cli::check::what_if(&states, &tag, agent.as_deref(), &data, &mut out)?;
                    Ok(clean)
                }
            }
        }
        Command::Apply { target, states, test, json, timeout, config, data_dir } => {
            let data_dir = cli::operator_data_dir(&config, data_dir)?;
            // As the operator would type it again, whatever path ran us.
            let args: Vec<String> =
                std::iter::once("halite-master".to_owned()).chain(std::env::args().skip(1)).collect();
            let command_line = shlex::try_join(args.iter().map(String::as_str)).unwrap_or_else(|_| args.join(" "));
            let options = cli::apply::Options { target, states, test, json, timeout, command_line };
            let code = cli::runtime()?.block_on(cli::apply::run(&data_dir, options))?;
            exit_with(code)
        }
        Command::Jobs { jid, limit, json, config, data_dir } => {
            let data_dir = cli::operator_data_dir(&config, data_dir)?;
            let code = match jid {
                Some(jid) => cli::jobs::show(&data_dir, &jid, json)?,
                None => cli::jobs::list(&data_dir, limit, json)?,
            };
            exit_with(code)
        }
        Command::Agents { config, data_dir, json } => {
            cli::agents::run(&cli::operator_data_dir(&config, data_dir)?, json)
        }
        Command::Events { tag, json, config, data_dir } => {
            let data_dir = cli::operator_data_dir(&config, data_dir)?;
            cli::runtime()?.block_on(cli::events::tail(&data_dir, tag, json, &mut std::io::stdout().lock()))?;
            Ok(true)
        }
        Command::Demo { keep } => {
            cli::runtime()?.block_on(cli::demo::run(keep))?;
            Ok(true)
        }
    }
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

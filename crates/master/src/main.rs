//! `halite-master`: the command line.

use std::process::ExitCode;

use anyhow::Context;
use clap::Parser;
use halite_agent::logging::LogFormat;
use halite_master::args::{Cli, Command, KeysAction, TokensAction};
use halite_master::config::MasterConfig;

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
    halite_agent::logging::init(log_format(&cli), default_level);
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
            ExitCode::from(halite_master::cli::exit::code_of(&error) as u8)
        }
    }
}

/// `--log-format`, else for `run` the configuration's `log_format` (read
/// quietly here: `run` loads it again and reports what is wrong with it).
fn log_format(cli: &Cli) -> LogFormat {
    match (&cli.log_format, &cli.command) {
        (Some(format), _) => *format,
        (None, Command::Run { config, .. }) => MasterConfig::load(config).map(|c| c.log_format).unwrap_or_default(),
        (None, _) => LogFormat::default(),
    }
}

fn run(cli: Cli) -> anyhow::Result<bool> {
    use halite_master::cli;
    if let Some(token) = cli.token {
        cli::use_token(token);
    }
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
                KeysAction::Accept { target, replace } => cli::keys::Action::Accept { target, replace },
                KeysAction::Reject { target } => cli::keys::Action::Reject(target),
                KeysAction::Delete { target } => cli::keys::Action::Delete(target),
                KeysAction::Fingerprint => cli::keys::Action::Fingerprint,
                KeysAction::Facts { target, accept } => cli::keys::Action::Facts { target, accept },
            };
            cli::keys::run(action, &cli::operator_data_dir(&config, data_dir)?, json)
        }
        Command::Check { states, config, event, data, agent, strict, master_data_dir } => {
            let states = cli::check::states_dir(states, &config)?;
            let mut out = std::io::stdout().lock();
            let (known, note) = cli::check::known_agents(master_data_dir.as_deref(), &config);
            if let Some(note) = note {
                eprintln!("{note}");
            }
            let clean = cli::check::run(&states, strict, &known, &mut out)?;
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
        Command::Apply { target, states, test, json, timeout, batch, canary, max_failures, config, data_dir } => {
            if let Some(hint) = cli::apply::salt_habit(&states) {
                use clap::CommandFactory;
                Cli::command().error(clap::error::ErrorKind::InvalidValue, hint).exit();
            }
            let data_dir = cli::operator_data_dir(&config, data_dir)?;
            // As the operator would type it again, whatever path ran us.
            let args: Vec<String> =
                std::iter::once("halite-master".to_owned()).chain(std::env::args().skip(1)).collect();
            let command_line = shlex::try_join(args.iter().map(String::as_str)).unwrap_or_else(|_| args.join(" "));
            let count = |n: Option<u64>| n.map(|n| usize::try_from(n).unwrap_or(usize::MAX));
            let options = cli::apply::Options {
                target,
                states,
                test,
                json,
                timeout,
                command_line,
                batch: count(batch),
                canary: count(canary),
                max_failures: count(max_failures),
            };
            let code = cli::runtime()?.block_on(cli::apply::run(&data_dir, options))?;
            exit_with(code)
        }
        Command::Jobs { jid, limit, json, config, data_dir } => {
            let records = cli::operator_store(&config)?;
            let data_dir = cli::operator_data_dir(&config, data_dir)?;
            let code = match jid {
                Some(jid) => cli::jobs::show(&data_dir, &records, &jid, json)?,
                None => cli::jobs::list(&data_dir, &records, limit, json)?,
            };
            exit_with(code)
        }
        Command::Receipts { agent, limit, json, config, data_dir } => {
            let records = cli::operator_store(&config)?;
            cli::receipts::run(&cli::operator_data_dir(&config, data_dir)?, &records, agent.as_deref(), limit, json)
        }
        Command::Inventory { target, json, config, data_dir } => {
            exit_with(cli::inventory::run(&cli::operator_data_dir(&config, data_dir)?, &target, json)?)
        }
        Command::Adopt { agent, path, into, states, config, data_dir } => {
            let states = match states {
                Some(states) => states,
                None => halite_master::config::MasterConfig::load(&config)?.states,
            };
            exit_with(cli::adopt::run(
                &cli::operator_data_dir(&config, data_dir)?,
                &states,
                &agent,
                &path,
                into.as_deref(),
            )?)
        }
        Command::Tokens { action, config, data_dir, json } => {
            let action = match action {
                TokensAction::Create { name, role } => cli::tokens::Action::Create { name, role },
                TokensAction::List => cli::tokens::Action::List,
                TokensAction::Revoke { name } => cli::tokens::Action::Revoke(name),
            };
            cli::tokens::run(action, &cli::operator_data_dir(&config, data_dir)?, json)
        }
        Command::Audit { verify, json, config, data_dir } => {
            let store = cli::operator_store(&config)?;
            let data_dir = cli::operator_data_dir(&config, data_dir)?;
            cli::audit::run(&data_dir, &store, verify, json, &mut std::io::stdout().lock())
        }
        Command::Backup { file, config, data_dir } => {
            cli::backup::run(&cli::operator_data_dir(&config, data_dir)?, &file)
        }
        Command::Agents { config, data_dir, json } => {
            cli::agents::run(&cli::operator_data_dir(&config, data_dir)?, json)
        }
        Command::Events { tag, json, config, data_dir } => {
            let data_dir = cli::operator_data_dir(&config, data_dir)?;
            cli::runtime()?.block_on(cli::events::tail(&data_dir, tag, json, &mut std::io::stdout().lock()))?;
            Ok(true)
        }
        Command::Cmd { target, argv, timeout, batch, json, config, data_dir } => {
            let data_dir = cli::operator_data_dir(&config, data_dir)?;
            let batch = batch.map(|n| usize::try_from(n).unwrap_or(usize::MAX));
            let options = cli::cmd::Options { target, argv, timeout, batch, json, command_line: command_line() };
            let code = cli::runtime()?.block_on(cli::cmd::run(&data_dir, options))?;
            exit_with(code)
        }
        Command::Facts { target, names, json, config, data_dir } => {
            exit_with(cli::facts::run(&cli::operator_data_dir(&config, data_dir)?, &target, names, json)?)
        }
        Command::Demo { keep } => {
            cli::runtime()?.block_on(cli::demo::run(keep))?;
            Ok(true)
        }
    }
}

/// The operator's command line as they would type it again, whatever path
/// ran us: recorded as a job's cause.
fn command_line() -> String {
    let args: Vec<String> = std::iter::once("halite-master".to_owned()).chain(std::env::args().skip(1)).collect();
    shlex::try_join(args.iter().map(String::as_str)).unwrap_or_else(|_| args.join(" "))
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

//! `halite-agent`'s command line as clap declares it: `main.rs` parses it,
//! and the packaging tool (`crates/manual`) makes the man pages and shell
//! completions from [`command`], so that the shipped binary carries no
//! generator.

use std::path::PathBuf;

use clap::{CommandFactory, Parser, Subcommand};

use crate::config::DEFAULT_CONFIG;
use crate::logging::LogFormat;

/// The whole command line, for man pages and completions.
pub fn command() -> clap::Command {
    Cli::command()
}

/// The halite agent: watches this host with beacons, reports events to the
/// master, and applies the states the master sends back.
///
/// Exit codes: 0 success (or stopped cleanly); 1 failed (the message says
/// why; `apply --local`: a state failed or the tree has errors); 2 bad
/// command line; 6 refused: another agent uses the data dir.
#[derive(Debug, Parser)]
#[command(name = "halite-agent", version, propagate_version = true, after_help = EXAMPLES)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
    /// How log lines on stderr are written: `text` (coloured only on a
    /// terminal) or `json` (one object per line). Default: `log_format` in
    /// agent.yaml for `run`, else text.
    #[arg(long, global = true, value_enum, env = "HALITE_LOG_FORMAT")]
    pub log_format: Option<LogFormat>,
}

/// The exit code when another agent holds the data dir's lock.
pub const EXIT_REFUSED: u8 = 6;

const EXAMPLES: &str = "Examples:
  halite-agent run --config /etc/halite/agent.yaml
  halite-agent fingerprint
  halite-agent apply --local ./states --root /tmp/try --test
  halite-agent --log-format json run";

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the agent in the foreground until SIGTERM or SIGINT.
    ///
    /// Prints `ready id=<id>` on stdout once its session with the master is
    /// up. Logs go to stderr; set RUST_LOG (e.g. RUST_LOG=debug) for more.
    /// Holds a lock on its data dir while it runs: a second agent on the
    /// same data dir is refused (exit code 6) and touches nothing.
    #[command(after_help = "Examples:
  halite-agent run
  halite-agent run --config ./agent.yaml --master tcp://10.0.0.1:4510
  RUST_LOG=debug halite-agent run --log-format json")]
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
    /// Apply a state tree on this host without a master, and print what
    /// each state did (changes and diffs; coloured on a terminal, plain when
    /// piped or with NO_COLOR), as `halite-master apply` does.
    ///
    /// Without STATE, the top.yaml states for this agent's id. Every path
    /// is under `--root`, which must be given (`--root /` for this host
    /// itself) unless agent.yaml sets `root`. Replaced file
    /// contents are backed up as the daemon does, the last 5 per file: in
    /// <data_dir>/backup of agent.yaml, or without one in
    /// <root>/var/lib/halite/agent/backup (the default data dir, under the
    /// root).
    ///
    /// Exit codes: 0 nothing failed; 1 a state failed, or the tree has
    /// errors (each printed as file:line:col: error: … with a hint); 2 bad
    /// command line (also: no --root, and no `root` in agent.yaml).
    #[command(after_help = "Examples:
  halite-agent apply --local ./states --root /tmp/try --test
  halite-agent apply --local ./states --root / motd
  halite-agent apply --local /srv/halite/states --config /etc/halite/agent.yaml --json")]
    Apply {
        /// The state tree to apply (a directory holding top.yaml and state files).
        #[arg(long, value_name = "DIR")]
        local: PathBuf,
        /// State files to apply (default: this agent's top.yaml states).
        states: Vec<String>,
        /// Test mode: report what would change, with diffs; change nothing.
        #[arg(long)]
        test: bool,
        /// Print one JSON document instead of text.
        #[arg(long)]
        json: bool,
        /// The agent id top.yaml is matched against (default: `id` in the
        /// configuration, or the host name).
        #[arg(long)]
        id: Option<String>,
        /// Prefix for every managed path: `/` to manage this host. Required
        /// unless the configuration sets `root` (which is used then).
        #[arg(long, value_name = "DIR")]
        root: Option<PathBuf>,
        /// The agent's configuration, read for `id` and `root` if it exists.
        #[arg(long, env = "HALITE_CONFIG", default_value = DEFAULT_CONFIG)]
        config: PathBuf,
    },
    /// Print this agent's public key (its fingerprint), read from its data
    /// dir (`data_dir` in agent.yaml, or --data-dir). Never makes a key: the
    /// agent makes it at its first `run`. Compare it with `halite-master
    /// keys list` before accepting the agent.
    #[command(after_help = "Examples:
  halite-agent fingerprint
  halite-agent fingerprint --config ./agent.yaml
  halite-agent fingerprint --data-dir /var/lib/halite/agent")]
    Fingerprint {
        /// The agent's configuration, read for `data_dir` if it exists.
        #[arg(long, env = "HALITE_CONFIG", default_value = DEFAULT_CONFIG)]
        config: PathBuf,
        /// The agent's data directory, where its key lives (overrides the
        /// configuration's).
        #[arg(long, env = "HALITE_DATA_DIR")]
        data_dir: Option<PathBuf>,
    },
}

#[cfg(test)]
mod tests {
    /// `--help` of the binary and of each command ends with examples (the
    /// man pages are made from the same definitions).
    #[test]
    fn every_command_has_examples() {
        let command = super::command();
        let examples = |c: &clap::Command| c.get_after_help().is_some_and(|h| h.to_string().starts_with("Examples:\n"));
        assert!(examples(&command), "{} has no examples", command.get_name());
        for sub in command.get_subcommands() {
            assert!(examples(sub), "`{} {}` has no examples (after_help)", command.get_name(), sub.get_name());
        }
    }
}

//! `halite-agent`'s command line as clap declares it: `main.rs` parses it,
//! and the packaging tool (`crates/manual`) makes the man pages and shell
//! completions from [`command`], so that the shipped binary carries no
//! generator.

use std::path::PathBuf;

use clap::{CommandFactory, Parser, Subcommand};

use crate::config::DEFAULT_CONFIG;

/// The whole command line, for man pages and completions.
pub fn command() -> clap::Command {
    Cli::command()
}

/// The halite agent: watches this host with beacons, reports events to the
/// master, and applies the states the master sends back.
///
/// Exit codes: 0 stopped cleanly, 1 failed (the message says why),
/// 2 bad command line.
#[derive(Debug, Parser)]
#[command(name = "halite-agent", version, propagate_version = true)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
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
    /// Apply a state tree on this host without a master, and print what
    /// each state did (changes and diffs; coloured on a terminal, plain when
    /// piped or with NO_COLOR), as `halite-master apply` does.
    ///
    /// Without STATE, the top.yaml states for this agent's id. Exit codes:
    /// 0 nothing failed; 1 a state failed, or the tree has errors (each
    /// printed as file:line:col: error: … with a hint); 2 bad command line.
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
        /// Prefix for every managed path (default: `root` in the
        /// configuration, or /).
        #[arg(long)]
        root: Option<PathBuf>,
        /// The agent's configuration, read for `id` and `root` if it exists.
        #[arg(long, env = "HALITE_CONFIG", default_value = DEFAULT_CONFIG)]
        config: PathBuf,
    },
    /// Print this agent's public key (its fingerprint), making the key if
    /// there is none yet. Compare it with `halite-master keys list` before
    /// accepting the agent.
    Fingerprint {
        /// The agent's data directory, where its key lives.
        #[arg(long, env = "HALITE_DATA_DIR", default_value = crate::config::DEFAULT_DATA_DIR)]
        data_dir: PathBuf,
    },
}

//! `halite-master`'s command line as clap declares it: `main.rs` parses it,
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

/// The halite master: loads the state tree, receives agents' events, runs
/// reactors and pushes corrective state back to the agents.
///
/// Exit codes: 0 success; 1 failure (the message says why; for `check`,
/// the tree has errors); 2 bad command line (for `apply`: some agent did
/// not answer, see `apply --help`).
#[derive(Debug, Parser)]
#[command(name = "halite-master", version, propagate_version = true)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
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
    /// A consistent copy of the store (keys, jobs, results) in FILE, made
    /// by the running master with SQLite's online backup while it works.
    ///
    /// FILE is one self-contained SQLite file, owner-only. To restore: stop
    /// the master, copy FILE to <data_dir>/halite.db, remove
    /// <data_dir>/halite.db-wal, start the master.
    Backup {
        /// Where to write the copy (replaced if it exists).
        file: PathBuf,
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
pub enum KeysAction {
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

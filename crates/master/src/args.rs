//! `halite-master`'s command line as clap declares it: `main.rs` parses it,
//! and the packaging tool (`crates/manual`) makes the man pages and shell
//! completions from [`command`], so that the shipped binary carries no
//! generator.

use std::path::PathBuf;

use clap::{CommandFactory, Parser, Subcommand};

use halite_agent::logging::LogFormat;

use crate::config::DEFAULT_CONFIG;

/// The whole command line, for man pages and completions.
pub fn command() -> clap::Command {
    Cli::command()
}

/// The halite master: loads the state tree, receives agents' events, runs
/// reactors and pushes corrective state back to the agents.
///
/// Exit codes: 0 success; 1 failed (the message says why; `check`: the
/// tree has errors; `apply`: a state failed); 2 bad command line; 3
/// `apply`: some agent did not answer; 4 nothing matched (no key, no job,
/// no connected agent); 5 the master is not running (its control socket
/// cannot be reached); 6 refused to do harm (another master uses the data
/// dir; `keys accept` would replace an accepted key).
#[derive(Debug, Parser)]
#[command(name = "halite-master", version, propagate_version = true, after_help = EXAMPLES)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
    /// How log lines on stderr are written: `text` (coloured only on a
    /// terminal) or `json` (one object per line). Default: `log_format` in
    /// master.yaml for `run`, else text.
    #[arg(long, global = true, value_enum, env = "HALITE_LOG_FORMAT")]
    pub log_format: Option<LogFormat>,
    /// Talk to the master as this API token's role instead of the local
    /// `admin` (prefer the HALITE_TOKEN variable: a flag shows in `ps`).
    #[arg(long, global = true, env = "HALITE_TOKEN", hide_env_values = true)]
    pub token: Option<String>,
}

const EXAMPLES: &str = "Examples:
  halite-master init --dir ./halite
  halite-master run --config ./halite/master.yaml
  halite-master keys list
  halite-master apply 'web*' --test
  halite-master demo";

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Set up a new master: write master.yaml, make the master's key and an
    /// example state tree (each only if missing), and print the lines to put
    /// in agents' agent.yaml.
    ///
    /// Without --dir: /etc/halite/master.yaml, /var/lib/halite/master and
    /// /srv/halite/states. With --dir, also DIR/agent.yaml: an agent ready
    /// to run on this host (its files under DIR/agent/root, the master's
    /// key pinned), and the commands to try next. Safe to run again: it
    /// keeps what exists and says so.
    #[command(after_help = "Examples:
  halite-master init --dir ./halite
  halite-master init --dir ./halite --listen tcp://127.0.0.1:4510
  sudo halite-master init")]
    Init {
        /// Put everything under DIR (DIR/master.yaml, DIR/data, DIR/states,
        /// DIR/agent.yaml).
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
    /// Holds a lock on the data dir while it runs: a second master on the
    /// same data dir is refused (exit code 6) and touches nothing.
    #[command(after_help = "Examples:
  halite-master run
  halite-master run --config ./halite/master.yaml
  RUST_LOG=debug halite-master run --log-format json")]
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
    /// file:line:col: error: … (or warning: …) with a hint; exit 1 if there
    /// is any error (with --strict, any warning too).
    ///
    /// The tree is --states, else `states` of the configuration (when it
    /// exists), else ./states.
    #[command(after_help = "Examples:
  halite-master check
  halite-master check --strict --states ./halite/states
  halite-master check --config ./halite/master.yaml --event halite/beacon/web01/nginx-conf --data '{\"kind\": \"modify\"}'")]
    Check {
        /// The state tree to check (overrides the configuration's).
        #[arg(long, env = "HALITE_STATES")]
        states: Option<PathBuf>,
        /// The master's configuration, to find its state tree.
        #[arg(long, env = "HALITE_CONFIG", default_value = DEFAULT_CONFIG)]
        config: PathBuf,
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
        /// Fail (exit 1) on warnings too: a reactor whose `on` matches no
        /// tag halite raises or no beacon in beacons.yaml, or whose `when`
        /// reads a field or value its beacons never send.
        #[arg(long)]
        strict: bool,
        /// The master's data dir: templates are rendered for every agent
        /// its store has seen, with the facts each last sent (besides the
        /// sample agents of the tree's facts.yaml).
        #[arg(long = "data-dir", env = "HALITE_DATA_DIR", value_name = "DIR")]
        master_data_dir: Option<PathBuf>,
    },
    /// Agents' keys: list them, accept, reject or delete them, or print the
    /// master's own key (its fingerprint, which agents pin as `master_key`).
    ///
    /// TARGET is an agent-id glob (`web*`) or a key (64 hex digits). A new
    /// agent's key is pending until it is accepted (or an `auto_accept` glob
    /// matches); nothing from a pending, rejected or deleted key reaches the
    /// bus. Rejecting or deleting a key ends its session at once.
    ///
    /// `list` reads the store itself when the master is stopped.
    #[command(after_help = "Examples:
  halite-master keys list
  halite-master keys accept web01
  halite-master keys accept FINGERPRINT   # one key, by its 64 hex digits
  halite-master keys accept web01 --replace
  halite-master keys reject 'db*'
  halite-master keys fingerprint")]
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
    /// 3 some agent did not answer in time (3 wins over 1: the picture is
    /// incomplete); 4 TARGET matches no connected agent; 5 the master is
    /// not running.
    #[command(after_help = "Examples:
  halite-master apply '*' --test
  halite-master apply 'web*' nginx
  halite-master apply 'G@os:debian and not db*' --json
  halite-master apply L@web01,web02 motd --timeout 2m")]
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
        /// At most N agents at once.
        #[arg(long, value_name = "N", value_parser = clap::value_parser!(u64).range(1..))]
        batch: Option<u64>,
        /// Apply to K agents first (in id order) and stop if any fails.
        #[arg(long, value_name = "K", value_parser = clap::value_parser!(u64).range(1..))]
        canary: Option<u64>,
        /// Stop sending once N agents have failed (those running finish).
        #[arg(long, value_name = "N", value_parser = clap::value_parser!(u64).range(1..))]
        max_failures: Option<u64>,
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
    /// master runs or not. Exit code 4 when JID matches no job.
    #[command(after_help = "Examples:
  halite-master jobs
  halite-master jobs --limit 100 --json
  halite-master jobs 01JD3")]
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
    /// Remediation receipts, newest first: per file a job changed, its
    /// cause, the sha256 before and after, the drift→restore latency and
    /// whether it was `corrective` (drift restored) or `intentional` (the
    /// tree changed, or an operator applied); then how often each file
    /// drifted and was restored (what flaps).
    ///
    /// Reads <data_dir>/halite.db directly, read-only: works whether the
    /// master runs or not.
    #[command(after_help = "Examples:
  halite-master receipts
  halite-master receipts web01 --limit 50
  halite-master receipts web01 --json | jq '.receipts[] | select(.kind == \"corrective\")'")]
    Receipts {
        /// Only this agent's receipts.
        agent: Option<String>,
        /// How many receipts to list.
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
    /// Every path the file beacons of the agents TARGET matches watch, asked
    /// of the agents now: `in state` (a state manages it and it is as
    /// desired), `DRIFTED` (a state manages it and it differs or is
    /// missing), `unmanaged` (a file no state manages: see `adopt`),
    /// `directory`, `absent`.
    ///
    /// Talks to the running master. Exit code 1 when an agent could not be
    /// asked, 4 when TARGET matches no connected agent.
    #[command(after_help = "Examples:
  halite-master inventory web01
  halite-master inventory 'web*' --json | jq '.[].paths[] | select(.coverage == \"unmanaged\")'")]
    Inventory {
        /// A target expression (`web*`, `L@web01,web02`, `G@os:debian`).
        target: String,
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
    /// API tokens: make one for a role (shown once, kept only as its
    /// sha256), list them, revoke one. Through the running master;
    /// `admin` only. Roles are declared in master.yaml's `roles:`
    /// (`admin` is built in).
    #[command(after_help = "Examples:
  halite-master tokens create ci --role web-ops
  halite-master tokens list
  halite-master tokens revoke ci")]
    Tokens {
        #[command(subcommand)]
        action: TokensAction,
        /// The master's configuration, to find its data dir.
        #[arg(long, env = "HALITE_CONFIG", default_value = DEFAULT_CONFIG, global = true)]
        config: PathBuf,
        /// The master's data dir (overrides the configuration's).
        #[arg(long, env = "HALITE_DATA_DIR", global = true)]
        data_dir: Option<PathBuf>,
        /// Print JSON instead of text.
        #[arg(long, global = true)]
        json: bool,
    },
    /// The audit log: every change made through the API or the control
    /// socket, and every refusal (who, what, target, cause, result), oldest
    /// first, each row hash-chained to the one before.
    ///
    /// Reads <data_dir>/halite.db directly, read-only: works whether the
    /// master runs or not. With --verify, checks the chain and exits 1
    /// naming the first row that was edited, removed or reordered.
    #[command(after_help = "Examples:
  halite-master audit
  halite-master audit --json > audit.jsonl
  halite-master audit --verify")]
    Audit {
        /// Check the hash chain (exit 1 at the first bad row).
        #[arg(long)]
        verify: bool,
        /// JSON lines, one row each, with their hashes.
        #[arg(long)]
        json: bool,
        /// The master's configuration, to find its data dir.
        #[arg(long, env = "HALITE_CONFIG", default_value = DEFAULT_CONFIG)]
        config: PathBuf,
        /// The master's data dir (overrides the configuration's).
        #[arg(long, env = "HALITE_DATA_DIR")]
        data_dir: Option<PathBuf>,
    },
    /// Writes a `file.managed` state for a file no state manages, from its
    /// current content on AGENT, into the state tree for review in git: the
    /// content as `files/adopted/AGENT/PATH`, the state in FILE (default
    /// `adopted-AGENT-<path>.yaml`). Never overwrites; enforces nothing
    /// until the state file is named in top.yaml.
    ///
    /// PATH must be a file one of AGENT's file beacons watches
    /// (`halite-master inventory AGENT` lists them as unmanaged), at most
    /// 1 MiB. Talks to the running master. Exit code 1 when refused (a
    /// state manages it, not watched, too large, a file in the way), 4 when
    /// AGENT is not connected.
    #[command(after_help = "Examples:
  halite-master adopt web01 /etc/app/local.conf
  halite-master adopt web01 /etc/app/local.conf --into app.yaml --states /srv/halite/states")]
    Adopt {
        /// The agent to take the file from.
        agent: String,
        /// The file, as its beacon names it (e.g. /etc/app/local.conf).
        path: String,
        /// The state file to write, relative to the tree (a new `.yaml`).
        #[arg(long, value_name = "FILE")]
        into: Option<PathBuf>,
        /// The state tree to write into (overrides the configuration's).
        #[arg(long)]
        states: Option<PathBuf>,
        /// The master's configuration, to find its data dir and tree.
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
    #[command(after_help = "Examples:
  halite-master backup /srv/backups/halite-$(date +%F).db
  halite-master backup --config /etc/halite/master.yaml /tmp/halite.db")]
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
    /// managed file changed and no job has been sent since), `restoring`
    /// (drifted, and a job is on its way back), `failing` (the last job had
    /// a failed state), `stale` (a reload changed the states rendered for it
    /// and no job has returned since). LAST RESTORE is the agent's last
    /// remediation receipt (`halite-master receipts` lists them). Pending
    /// agents are listed too.
    #[command(after_help = "Examples:
  halite-master agents
  halite-master agents --json | jq '.[] | select(.compliance.state != \"compliant\")'")]
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
    #[command(after_help = "Examples:
  halite-master events
  halite-master events --tag 'halite/beacon/web*/*'
  halite-master events --json | jq .tag")]
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
    /// Run a program on the connected agents TARGET matches; show each one's
    /// exit code and output.
    ///
    /// Every matching agent runs it at once (or `--batch N` at a time); each
    /// answer is shown as it comes. No shell: PROGRAM and ARGS are passed as
    /// they are (write `-- sh -c '…'` for one). Each agent's run is a job,
    /// recorded with this command line as its cause (`halite-master jobs`);
    /// it does not change the agent's compliance.
    ///
    /// Exit codes: 0 the program exited 0 on every agent; 1 it exited
    /// otherwise, timed out or was killed on some agent (or the request was
    /// refused); 3 some agent did not answer in time; 4 TARGET matches no
    /// connected agent.
    #[command(after_help = "Examples:
  halite-master cmd 'web*' -- systemctl is-active nginx
  halite-master cmd --batch 5 --timeout 2m 'G@os:debian' -- apt-get -s upgrade
  halite-master cmd --json db01 -- sh -c 'df -h / | tail -1'")]
    Cmd {
        /// A target expression, as in top.yaml: 'web*', L@web01,web02,
        /// 'G@os:debian and not db*'.
        target: String,
        /// The program and its arguments, after `--`.
        #[arg(last = true, required = true, value_name = "PROGRAM ARGS")]
        argv: Vec<String>,
        /// How long the program may run on each agent; it is killed then.
        #[arg(long, default_value = "60s", value_parser = humantime::parse_duration)]
        timeout: std::time::Duration,
        /// At most N agents run the program at once.
        #[arg(long, value_name = "N", value_parser = clap::value_parser!(u64).range(1..))]
        batch: Option<u64>,
        /// One JSON object per agent per line (agent, jid, answered, code,
        /// error, stdout, stderr) instead of text.
        #[arg(long)]
        json: bool,
        /// The master's configuration, to find its data dir.
        #[arg(long, env = "HALITE_CONFIG", default_value = DEFAULT_CONFIG)]
        config: PathBuf,
        /// The master's data dir (overrides the configuration's).
        #[arg(long, env = "HALITE_DATA_DIR")]
        data_dir: Option<PathBuf>,
    },
    /// Show the facts of the connected agents TARGET matches.
    ///
    /// What `G@` targets and templates' `facts` read, from each agent's
    /// hello: all of them, or the NAMEs given (a dotted name reads inside a
    /// fact: os_release.version_codename; `-` for a fact an agent lacks).
    ///
    /// Exit codes: 0 success; 1 refused (a bad target); 4 TARGET matches
    /// no connected agent.
    #[command(after_help = "Examples:
  halite-master facts 'web*' os os_version cpus
  halite-master facts db01 os_release.version_codename
  halite-master facts '*' --json > states/facts.yaml")]
    Facts {
        /// A target expression, as in top.yaml.
        target: String,
        /// Facts to show (default: all).
        names: Vec<String>,
        /// Print JSON (agent → facts) instead of text.
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
    #[command(after_help = "Examples:
  halite-master demo
  halite-master demo --keep")]
    Demo {
        /// Leave everything running afterwards, to edit files by hand.
        #[arg(long)]
        keep: bool,
    },
}

/// `halite-master tokens` subcommands.
#[derive(Debug, Subcommand)]
pub enum TokensAction {
    /// Make a token NAME with ROLE; prints it once.
    #[command(after_help = "Examples:
  halite-master tokens create ci --role web-ops
  HALITE_TOKEN=$(halite-master tokens create bot --role admin) halite-master agents")]
    Create {
        name: String,
        /// A role from master.yaml's `roles:`, or `admin`.
        #[arg(long)]
        role: String,
    },
    /// Every token: name, role, when made (never the token).
    #[command(after_help = "Examples:
  halite-master tokens list
  halite-master tokens list --json")]
    List,
    /// Revoke the token NAME: calls with it fail from now on.
    #[command(after_help = "Examples:
  halite-master tokens revoke ci")]
    Revoke { name: String },
}

#[derive(Debug, Subcommand)]
pub enum KeysAction {
    /// Every known key with its agent id and status, sorted by id; read
    /// from the store itself when the master is stopped.
    #[command(after_help = "Examples:
  halite-master keys list
  halite-master keys list --json --data-dir /var/lib/halite/master")]
    List,
    /// Accept the pending or rejected keys TARGET names.
    ///
    /// Refused (exit code 6) when an id glob names a key of an agent id
    /// that already has another accepted key: the message names both
    /// fingerprints. Name the new key by its fingerprint, or pass
    /// --replace; the old key is retired and its session cut at once.
    #[command(after_help = "Examples:
  halite-master keys accept web01
  halite-master keys accept 'web*'
  halite-master keys accept FINGERPRINT      # one key, by its 64 hex digits
  halite-master keys accept web01 --replace  # retire web01's accepted key for the pending one")]
    Accept {
        target: String,
        /// Accept even where it retires an agent's accepted key.
        #[arg(long)]
        replace: bool,
    },
    /// Reject the keys TARGET names; their agents are cut off at once.
    #[command(after_help = "Examples:
  halite-master keys reject db07
  halite-master keys reject FINGERPRINT")]
    Reject { target: String },
    /// Forget the keys TARGET names; their agents are cut off at once and
    /// come back as pending.
    #[command(after_help = "Examples:
  halite-master keys delete db07
  halite-master keys delete 'old-*'")]
    Delete { target: String },
    /// Print the master's public key, to put in agents' `master_key`.
    #[command(after_help = "Examples:
  halite-master keys fingerprint
  halite-master keys fingerprint --config ./halite/master.yaml")]
    Fingerprint,
    /// The facts frozen for the accepted keys TARGET names (what targeting
    /// and templates use) and any other facts their agents claimed since
    /// (held); with --accept, the held facts become the frozen ones.
    #[command(after_help = "Examples:
  halite-master keys facts web01
  halite-master keys facts web01 --accept
  halite-master keys facts '*' --json")]
    Facts {
        target: String,
        /// Trust what the agents now claim.
        #[arg(long)]
        accept: bool,
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
            for action in sub.get_subcommands() {
                assert!(examples(action), "`{} {}` has no examples (after_help)", sub.get_name(), action.get_name());
            }
        }
    }
}

//! The control socket's protocol: what operator commands (`cli/`) send to
//! the running master (`server/control.rs`) and what comes back. A Unix
//! socket in the data dir, owner-only; one JSON request per line, one JSON
//! answer per line. `apply` and `events` are answered by a stream of lines
//! ([`ApplyLine`], [`TailLine`]) instead of one [`Response`].

use std::path::{Path, PathBuf};

use halite_state::report::AgentReport;
use serde::{Deserialize, Serialize};

use crate::server::keys::KeyEntry;

pub fn socket_path(data_dir: &Path) -> PathBuf {
    data_dir.join("control.sock")
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(tag = "command", rename_all = "snake_case")]
pub enum Request {
    KeysList,
    KeysAccept {
        target: String,
        /// Accept even where it retires an id's accepted key.
        #[serde(default)]
        replace: bool,
    },
    KeysReject {
        target: String,
    },
    KeysDelete {
        target: String,
    },
    /// Answered by a stream of [`ApplyLine`]s, not a [`Response`].
    Apply(ApplyRequest),
    /// Every known agent (`server/ledger.rs`).
    Agents,
    /// The facts frozen (and held) for accepted keys; `accept` trusts the
    /// held ones.
    KeysFacts {
        target: String,
        #[serde(default)]
        accept: bool,
    },
    /// A live tail of the bus, optionally filtered by a tag glob.
    Events {
        tag: Option<String>,
    },
    /// The facts of the connected agents `target` matches: `names` only,
    /// or all of them (`server/facts.rs`).
    Facts {
        target: String,
        #[serde(default)]
        names: Vec<String>,
    },
    /// Answered by a stream of [`CmdLine`]s, not a [`Response`].
    Cmd(CmdRequest),
    /// A consistent copy of the store in `to` (an absolute path).
    Backup {
        to: std::path::PathBuf,
    },
    /// What the file beacons of the agents `target` matches watch, by
    /// coverage (`server/inventory.rs`).
    Inventory {
        target: String,
    },
    /// The content of an unmanaged file a beacon of `agent` watches, for
    /// `adopt` to write into the tree.
    Adopt {
        agent: String,
        path: String,
    },
    /// The connection's next requests run as this API token's principal
    /// (`--token`, `HALITE_TOKEN`) instead of the local `admin`.
    Auth {
        token: String,
    },
    /// Makes an API token (`admin`); the answer's `token` holds it, once.
    TokensCreate {
        name: String,
        role: String,
    },
    TokensList,
    TokensRevoke {
        name: String,
    },
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Response {
    pub ok: bool,
    #[serde(default)]
    pub error: Option<String>,
    /// The master refused to do harm (`keys accept` that would retire an
    /// accepted key); `error` says how to insist.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub refused: bool,
    /// The keys listed, or changed by the command.
    #[serde(default)]
    pub keys: Vec<KeyEntry>,
    /// The agents listed by `agents`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub agents: Vec<AgentRow>,
    /// The facts shown (or accepted) by `keys facts`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub key_facts: Vec<crate::server::keys::FactsRow>,
    /// The facts asked for by `facts`, by agent.
    #[serde(default, skip_serializing_if = "std::collections::BTreeMap::is_empty")]
    pub facts: std::collections::BTreeMap<String, serde_json::Value>,
    /// Set when `facts`' target matched no connected agent.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub no_agent: bool,
    /// The inventories asked for by `inventory`, by agent.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub inventory: Vec<crate::server::inventory::AgentInventory>,
    /// The file `adopt` asked for.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub adopted: Option<halite_proto::WatchedContent>,
    /// The API tokens listed (or the one made or revoked).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub tokens: Vec<crate::server::access::TokenRow>,
    /// A token just made: shown once, stored only as its hash.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub token: Option<String>,
}

/// What the operator asked for.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ApplyRequest {
    /// A target expression (`web*`), matched against connected, accepted agents.
    pub target: String,
    /// State files to apply; empty: each agent's top.yaml states.
    #[serde(default)]
    pub states: Vec<String>,
    /// Plan only: report what would change, change nothing.
    #[serde(default)]
    pub test: bool,
    /// How long to wait for each agent's answer.
    pub timeout_ms: u64,
    /// The operator's command line, recorded as the jobs' cause.
    pub command_line: String,
    /// At most this many agents at once (none: all at once).
    #[serde(default)]
    pub batch: Option<usize>,
    /// Run on this many agents first (in target order), and stop if any
    /// of them fails.
    #[serde(default)]
    pub canary: Option<usize>,
    /// Stop sending once this many agents have failed (a failed state or
    /// no answer); those running finish.
    #[serde(default)]
    pub max_failures: Option<usize>,
}

/// One line of the master's answer.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "line", rename_all = "snake_case")]
pub enum ApplyLine {
    /// The jobs are sent: one per agent, with its job id.
    Started { test: bool, jobs: Vec<(String, String)> },
    /// One agent's answer, or why there is none.
    Agent { report: AgentReport },
    /// Every agent has answered or timed out.
    Done,
    /// Nothing was sent. `no_agent`: the target matched no connected agent.
    Error { error: String, no_agent: bool },
    /// `canary` or `max_failures` stopped the apply: `skipped` were never
    /// sent their jobs. Comes before `done`.
    Stopped { reason: String, skipped: Vec<String> },
}

/// One line of the stream after the first (which is a [`Response`]).
#[derive(Debug, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TailLine {
    /// An event, as JSON (as the outside publisher sends it).
    Event(serde_json::Value),
    /// This many events were skipped because the reader was slow.
    Lagged(u64),
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "state", rename_all = "snake_case")]
pub enum Compliance {
    Unknown,
    Compliant {
        since_us: i64,
    },
    Drifted {
        since_us: i64,
        path: Option<String>,
    },
    Failing {
        since_us: i64,
    },
    /// The tree was reloaded and renders other states for the agent than
    /// it last applied; no job has returned since.
    Stale {
        since_us: i64,
    },
    /// Drifted at `since_us`, and a job has been sent since, not returned
    /// yet (`server/compliance.rs`).
    Restoring {
        since_us: i64,
        path: Option<String>,
    },
}

/// One line of `halite-master agents`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct AgentRow {
    pub id: String,
    /// The key's status: accepted, pending or rejected (`unknown` for a
    /// session whose key was deleted a moment ago).
    pub key: String,
    pub connected: bool,
    /// The peer's address as the agent link saw it, while connected.
    pub address: Option<String>,
    pub version: Option<String>,
    /// All facts (from the live session, else from its last `connected`).
    pub facts: serde_json::Value,
    pub connected_since_us: Option<i64>,
    pub last_event_us: Option<i64>,
    pub compliance: Compliance,
    /// Reactions waiting in the master's queue for this agent (at most
    /// `reactor::engine::AGENT_QUEUE`): a flood shows here first.
    #[serde(default)]
    pub queued: usize,
    /// The agent's last remediation receipt since the master started
    /// (`server/receipts.rs`).
    #[serde(default)]
    pub last_receipt: Option<crate::server::receipts::Receipt>,
    /// With several masters: the master the agent's session is on (its
    /// link's address), as PostgreSQL last said (`cluster/masters.rs`).
    #[serde(default)]
    pub master: Option<String>,
    /// That master's tree version (a hash of its state tree's files).
    #[serde(default)]
    pub tree: Option<String>,
}

impl AgentRow {
    /// A row for `id` with nothing known yet.
    pub fn unknown(id: &str) -> AgentRow {
        AgentRow {
            id: id.to_owned(),
            key: "unknown".into(),
            connected: false,
            address: None,
            version: None,
            facts: serde_json::Value::Null,
            connected_since_us: None,
            last_event_us: None,
            compliance: Compliance::Unknown,
            queued: 0,
            last_receipt: None,
            master: None,
            tree: None,
        }
    }
}

/// `halite-master cmd TARGET -- PROGRAM ARGS…`: what to run where.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CmdRequest {
    /// A target expression, matched against connected, accepted agents.
    pub target: String,
    /// The program and its arguments (no shell).
    pub argv: Vec<String>,
    /// How long the program may run on each agent (it is killed then).
    pub timeout_ms: u64,
    /// At most this many agents run it at once (none: all at once).
    #[serde(default)]
    pub batch: Option<usize>,
    /// The operator's command line, recorded as the jobs' cause.
    pub command_line: String,
}

/// One line of the master's answer to [`CmdRequest`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "line", rename_all = "snake_case")]
pub enum CmdLine {
    /// The agents the target matched (jobs go out `batch` at a time).
    Started { agents: Vec<String> },
    /// How the program ended on one agent.
    Agent {
        agent: String,
        jid: String,
        /// Whether the agent answered (false: it timed out or went away).
        answered: bool,
        /// The exit code; none when it was killed, never started, or the
        /// agent did not answer (`error` says which).
        code: Option<i32>,
        error: Option<String>,
        stdout: String,
        stderr: String,
    },
    /// Every agent has answered or timed out.
    Done,
    /// Nothing was run. `no_agent`: the target matched no connected agent.
    Error { error: String, no_agent: bool },
}

/// The id of the one `cmd.run` state a `cmd` job carries. The ledger
/// knows an ad-hoc command's result by it: a command says nothing about
/// an agent's compliance.
pub const CMD_STATE_ID: &str = "halite-cmd";

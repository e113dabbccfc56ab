//! The messages of the agent↔master link.
//!
//! # Compatibility
//! Both message enums are **append-only**: postcard encodes a variant by its
//! index, so a variant is never removed or reordered, and a new one goes at
//! the end. A struct inside a variant is frozen once released; to extend one,
//! add a new variant carrying the new struct. A change that cannot follow
//! these rules bumps [`crate::PROTOCOL_VERSION`].

use serde::{Deserialize, Serialize};

use crate::event::{Event, Id};
use crate::value::Value;

/// Agent → master. Append-only (see the module docs).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum AgentMessage {
    /// Who the agent is: the payload of the handshake's last message.
    Hello(Hello),
    /// Something a beacon saw. The master answers with [`MasterMessage::Ack`].
    Event(Event),
    /// What a [`Job`] did.
    JobResult(JobResult),
    /// Liveness probe; the master answers [`MasterMessage::Pong`].
    Ping,
    /// Several events at once, oldest first: what an agent sends when
    /// events wait to go out. The master handles them in order and answers
    /// with one [`MasterMessage::Acks`].
    Events(#[serde(deserialize_with = "crate::value::budgeted_seq")] Vec<Event>),
    /// What the agent's file beacons watch (and, when asked, one watched
    /// file's content): the answer to [`MasterMessage::Inventory`], and
    /// sent unasked whenever the beacon set changes. Kept in the outbox
    /// until the master answers [`MasterMessage::Ack`] with its id.
    Inventory(Inventory),
}

/// The paths an agent's file beacons watch (`halite-master inventory`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Inventory {
    /// Unique: the master acknowledges it by this id.
    pub id: Id,
    /// At most [`MAX_INVENTORY_PATHS`], by beacon then path.
    #[serde(deserialize_with = "crate::value::budgeted_seq")]
    pub paths: Vec<WatchedPath>,
    /// More paths were watched than sent.
    pub truncated: bool,
    /// The content asked for by [`MasterMessage::Inventory`], if any.
    pub content: Option<WatchedContent>,
}

/// The most paths one [`Inventory`] lists.
pub const MAX_INVENTORY_PATHS: usize = 4096;
/// The largest file whose content an agent sends for `adopt`.
pub const MAX_ADOPT_BYTES: usize = 1 << 20;

/// One path a file beacon watches: a path it names, or an entry of a
/// directory it names (below it with `recursive`), as authored (not under
/// the agent's `root`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct WatchedPath {
    pub beacon: String,
    pub path: String,
    /// A regular file's content digest; none for a directory, a missing
    /// path or anything else.
    pub sha256: Option<crate::Sha256>,
    pub directory: bool,
    pub exists: bool,
}

/// A watched file's content, for `adopt`: its bytes and mode, or why not.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct WatchedContent {
    pub path: String,
    pub bytes: Option<Vec<u8>>,
    pub mode: u32,
    /// Why there are no bytes: not a watched file, too large, unreadable.
    pub error: Option<String>,
}

/// Master → agent. Append-only (see the module docs).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum MasterMessage {
    /// The session is open; carries the agent's beacon set.
    Welcome(Welcome),
    /// The master has handled the event with this id.
    Ack { event: Id },
    /// States to apply.
    Job(Job),
    /// A new beacon set, replacing the current one (the tree changed).
    Beacons(Vec<BeaconSpec>),
    /// Answer to [`AgentMessage::Ping`].
    Pong,
    /// The agent's key is not accepted (yet): nothing it sends is acted on.
    /// A [`MasterMessage::Welcome`] follows if an operator accepts it.
    NotAccepted { status: String },
    /// The master has handled the [`JobResult`] of this job (published it
    /// and woken whoever waited), so the agent may forget it.
    ResultAck { job: Id },
    /// The master has handled the events with these ids (the answer to
    /// [`AgentMessage::Events`]).
    Acks(Vec<Id>),
    /// Send an [`AgentMessage::Inventory`] now; with `content_of` (an
    /// authored path), that watched file's content too.
    Inventory { content_of: Option<String> },
    /// The secret pillar values in this agent's states (longest first),
    /// sent before each job that may hold them: the agent shows them as
    /// `<secret>` in its logs, the results it sends and the events and
    /// files it writes. They are already in the job's states; an agent
    /// learns no value it was not sent anyway.
    Secrets(Vec<String>),
}

/// The hello fact carrying an agent's enrolment token (`enrol_token_file`
/// in agent.yaml). The master takes it out of the facts before anything
/// else sees them; an older master would keep it as an ordinary fact,
/// which is why the agent sends it only when configured.
pub const ENROL_TOKEN_FACT: &str = "halite_enrol_token";

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Hello {
    /// The agent id (`id` in agent.yaml, default the host name).
    pub agent: String,
    /// The agent's version, for the operator's view of the fleet.
    pub version: String,
    /// Facts for targeting and templates (id, hostname, os, kernel, …).
    pub facts: Value,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Welcome {
    /// The beacons this agent runs, from the master's beacons.yaml.
    pub beacons: Vec<BeaconSpec>,
}

/// One beacon as the master authored it: the agent's beacon registry turns
/// `kind` + `config` into a running beacon.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct BeaconSpec {
    /// The beacon's name; events are tagged `halite/beacon/<agent>/<name>`.
    pub name: String,
    /// The beacon kind, e.g. `file`.
    pub kind: String,
    /// The kind's configuration, as authored.
    pub config: Value,
}

/// States for one agent to apply, in order.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Job {
    pub id: Id,
    /// The event that made a reactor start this job, if one did.
    pub cause_event: Option<Id>,
    /// Plan only: report what would change and change nothing.
    pub test: bool,
    pub states: Vec<StateCall>,
}

/// One state, fully resolved by the master (sources read, templates
/// rendered), so the agent needs nothing but the call to apply it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StateCall {
    /// The state's id in its state file, e.g. `nginx-conf`.
    pub id: String,
    /// The state kind, e.g. `file.managed`.
    pub kind: String,
    /// The kind's resolved arguments.
    pub args: Value,
    /// What this state waits for or reacts to, among the job's states.
    /// The agent orders the job by these and skips or triggers states by
    /// the outcomes of the states named.
    pub requisites: Vec<Requisite>,
}

impl StateCall {
    /// A call with no requisites.
    pub fn new(id: impl Into<String>, kind: impl Into<String>, args: Value) -> Self {
        StateCall { id: id.into(), kind: kind.into(), args, requisites: Vec::new() }
    }

    /// Builder-style: sets one argument.
    #[must_use]
    pub fn with_arg(mut self, key: &str, value: impl Into<Value>) -> Self {
        self.args = self.args.with(key, value);
        self
    }
}

/// A reference from one state to another state of the same job, named by
/// its id and kind (an id may carry several kinds: `nginx` the package and
/// `nginx` the service).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Requisite {
    pub on: RequisiteKind,
    pub id: String,
    pub kind: String,
}

/// How a state depends on another. Append-only.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum RequisiteKind {
    /// Runs after it; not run if it failed.
    Require,
    /// Like `Require`; and when it changed, the watcher's reaction runs
    /// (a service restarts, a command runs).
    Watch,
    /// Runs only when it changed (not run if it failed).
    Onchanges,
    /// Salt's `prereq`: runs *before* it, and only when it would change
    /// (its plan has changes); it fails when this fails.
    Prereq,
    /// Salt's `listen`: no order; when it changed, the listener's reaction
    /// (a restart, a command) runs once at the end of the job.
    Listen,
}

impl RequisiteKind {
    pub fn keyword(self) -> &'static str {
        match self {
            RequisiteKind::Require => "require",
            RequisiteKind::Watch => "watch",
            RequisiteKind::Onchanges => "onchanges",
            RequisiteKind::Prereq => "prereq",
            RequisiteKind::Listen => "listen",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct JobResult {
    pub job: Id,
    #[serde(deserialize_with = "crate::value::budgeted_seq")]
    pub results: Vec<StateResult>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StateResult {
    pub id: String,
    pub kind: String,
    pub outcome: Outcome,
    /// A unified diff of file content the state changed (or would change
    /// in test mode), uncoloured; the CLI colours it on a terminal.
    pub diff: Option<String>,
    /// How long planning and applying took, in microseconds.
    pub duration_us: u64,
}

/// The largest diff one state's result carries. The agent cuts a longer
/// one (with a marker saying how much was left out) before sending, and
/// the master cuts again what an agent sends, whatever it says.
pub const MAX_DIFF_BYTES: usize = 256 << 10;
/// The most lines of `changes`, and the longest line, one state's result
/// carries; the master cuts what is over.
pub const MAX_CHANGES: usize = 256;
pub const MAX_CHANGE_BYTES: usize = 4096;

/// `text` cut to at most `max` bytes (on a character boundary) followed by
/// a line saying how many bytes were left out; unchanged when it fits.
fn cut(text: &mut String, max: usize, what: &str) {
    if text.len() <= max {
        return;
    }
    let mut end = max;
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    let left_out = text.len() - end;
    text.truncate(end);
    text.push_str(&format!("\n… {what} cut: {left_out} more bytes not sent\n"));
}

impl StateResult {
    /// Cuts the diff to [`MAX_DIFF_BYTES`] and the changes to
    /// [`MAX_CHANGES`] lines of [`MAX_CHANGE_BYTES`] each (an error to
    /// [`MAX_CHANGE_BYTES`] too), with markers: what a result may carry
    /// over the link.
    pub fn cap(&mut self) {
        if let Some(diff) = &mut self.diff {
            cut(diff, MAX_DIFF_BYTES, "diff");
        }
        match &mut self.outcome {
            Outcome::Changed { changes } | Outcome::WouldChange { changes } => {
                if changes.len() > MAX_CHANGES {
                    let left_out = changes.len() - MAX_CHANGES + 1;
                    changes.truncate(MAX_CHANGES - 1);
                    changes.push(format!("… {left_out} more changes not sent"));
                }
                for change in changes {
                    cut(change, MAX_CHANGE_BYTES, "line");
                }
            }
            Outcome::Failed { error } => cut(error, MAX_CHANGE_BYTES, "error"),
            Outcome::Unchanged => {}
        }
    }
}

/// What applying one state did. Append-only.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum Outcome {
    /// Already as desired; nothing was done.
    Unchanged,
    /// Brought to the desired state; each line says what changed.
    Changed {
        #[serde(deserialize_with = "crate::value::budgeted_seq")]
        changes: Vec<String>,
    },
    /// Test mode: this is what applying would change.
    WouldChange {
        #[serde(deserialize_with = "crate::value::budgeted_seq")]
        changes: Vec<String>,
    },
    /// Could not be brought to the desired state.
    Failed { error: String },
}

impl Outcome {
    pub fn label(&self) -> &'static str {
        match self {
            Outcome::Unchanged => "unchanged",
            Outcome::Changed { .. } => "changed",
            Outcome::WouldChange { .. } => "would change",
            Outcome::Failed { .. } => "failed",
        }
    }

    pub fn is_failed(&self) -> bool {
        matches!(self, Outcome::Failed { .. })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn result(outcome: Outcome, diff: Option<String>) -> StateResult {
        StateResult { id: "s".into(), kind: "file.managed".into(), outcome, diff, duration_us: 0 }
    }

    #[test]
    fn a_result_is_cut_to_its_caps_with_markers() {
        let mut big = result(
            Outcome::Changed { changes: vec!["é".repeat(MAX_CHANGE_BYTES); MAX_CHANGES + 10] },
            Some("+x\n".repeat(MAX_DIFF_BYTES)),
        );
        big.cap();
        let diff = big.diff.as_deref().unwrap();
        assert!(diff.len() < MAX_DIFF_BYTES + 100 && diff.ends_with("more bytes not sent\n"), "{}", diff.len());
        let Outcome::Changed { changes } = &big.outcome else { unreachable!() };
        assert_eq!(changes.len(), MAX_CHANGES);
        assert_eq!(changes.last().unwrap(), "… 11 more changes not sent");
        assert!(changes[0].len() < MAX_CHANGE_BYTES + 100 && changes[0].contains("line cut"));
        let mut small = result(Outcome::Failed { error: "no".into() }, Some("+a\n".into()));
        let before = small.clone();
        small.cap();
        assert_eq!(small, before, "what fits is untouched");
    }

    /// Sequences outside `Value` are budgeted too: empty strings are one
    /// byte on the wire and 24 in memory.
    #[test]
    fn sequences_of_small_elements_decode_within_the_budget() {
        let changes = |n: usize| {
            AgentMessage::JobResult(JobResult {
                job: Id(1),
                results: vec![result(Outcome::Changed { changes: vec![String::new(); n] }, None)],
            })
        };
        let fits = changes(1000);
        assert_eq!(crate::decode::<AgentMessage>(&crate::encode(&fits)).unwrap(), fits);
        assert!(crate::decode::<AgentMessage>(&crate::encode(&changes(crate::value::MAX_DECODED_VALUES + 1))).is_err());
        let events = |n: usize| AgentMessage::Events(vec![Event::new("t", "a", crate::Value::Null); n]);
        assert!(crate::decode::<AgentMessage>(&crate::encode(&events(256))).is_ok());
        assert!(crate::decode::<AgentMessage>(&crate::encode(&events(crate::value::MAX_DECODED_VALUES))).is_err());
    }
}

//! Reactor actions. An action is one file in this folder plus one line in
//! [`ACTIONS`]: its key in reactors.yaml, a summary, an example, a compile
//! step run when the tree loads, and what it does when a reaction runs.

use std::fmt::Debug;
use std::sync::Arc;
use std::time::Duration;

use futures_util::future::BoxFuture;
use halite_proto::Event;
use halite_state::StateTree;

use crate::server::bus::Bus;
use crate::server::jobs::Jobs;

pub mod apply;
pub mod event;
pub mod exec;
pub mod run;
pub mod webhook;

/// Every action, by its key in reactors.yaml. Keep sorted by name.
pub static ACTIONS: &[&ActionKind] = &[&apply::KIND, &event::KIND, &exec::KIND, &run::KIND, &webhook::KIND];

/// Compiles an action's authored value against the state tree.
pub type Compile = fn(&serde_json::Value, &StateTree) -> Result<Box<dyn Action>, ActionError>;

/// Why an action does not compile, or failed when it ran: the error of the
/// action interface, one variant per action file (each file's enum names
/// its subject: the state file, the command, the URL, the tag). A run's
/// error becomes the text of a `halite/reactor/<name>/failed` event.
#[derive(Debug, thiserror::Error)]
pub enum ActionError {
    #[error(transparent)]
    Command(#[from] CommandError),
    #[error(transparent)]
    Apply(#[from] apply::ApplyError),
    #[error(transparent)]
    Event(#[from] event::EventError),
    #[error(transparent)]
    Exec(#[from] exec::ExecError),
    #[error(transparent)]
    Run(#[from] run::RunError),
    #[error(transparent)]
    Webhook(#[from] webhook::WebhookError),
    /// The engine's queue of reactions is gone (the master is stopping).
    #[error("the reactions queue is closed")]
    Closed,
}

/// Why an authored `run`/`exec` command (or a duration) is not one.
#[derive(Debug, thiserror::Error)]
pub enum CommandError {
    #[error("{source} (write {example})")]
    Config { source: serde_json::Error, example: String },
    #[error("`{value}`: write {example}")]
    NotACommand { value: serde_json::Value, example: String },
    #[error("cannot split `{cmd}` into words (an open quote?)")]
    Split { cmd: String },
    #[error("the command is empty")]
    Empty,
    #[error("`{key}: {text}` is not a duration ({source}); write e.g. 10s")]
    Duration { key: &'static str, text: String, source: humantime::DurationError },
}

#[derive(Debug)]
pub struct ActionKind {
    pub name: &'static str,
    pub summary: &'static str,
    /// A whole reactor using the action; the registry test compiles it.
    pub example: &'static str,
    /// Checks the authored value against the state tree.
    pub compile: Compile,
}

pub fn find(name: &str) -> Option<&'static ActionKind> {
    ACTIONS.iter().copied().find(|a| a.name == name)
}

pub fn names() -> Vec<&'static str> {
    ACTIONS.iter().map(|a| a.name).collect()
}

/// A command as authored for `run` and `exec`: `KEY: COMMAND` or
/// `KEY: {cmd: COMMAND, timeout: 30s}`, split into words (never a shell).
#[derive(Debug)]
pub struct AuthoredCommand {
    /// As written, for logs and `check`.
    pub cmd: String,
    /// Never empty.
    pub words: Vec<String>,
    pub timeout: Duration,
}

#[derive(Debug, serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct CommandConfig {
    cmd: String,
    #[serde(default)]
    timeout: Option<String>,
}

/// Reads an [`AuthoredCommand`]; `example` is the form the error suggests.
pub fn authored_command(
    value: &serde_json::Value,
    default_timeout: Duration,
    example: &str,
) -> Result<AuthoredCommand, CommandError> {
    use serde::Deserialize as _;
    let config = match value {
        serde_json::Value::String(cmd) => CommandConfig { cmd: cmd.clone(), timeout: None },
        other @ serde_json::Value::Object(_) => CommandConfig::deserialize(other)
            .map_err(|source| CommandError::Config { source, example: example.to_owned() })?,
        other => return Err(CommandError::NotACommand { value: other.clone(), example: example.to_owned() }),
    };
    let timeout = config.timeout.as_deref().map(|t| duration("timeout", t)).transpose()?.unwrap_or(default_timeout);
    match shlex::split(&config.cmd) {
        None => Err(CommandError::Split { cmd: config.cmd }),
        Some(words) if words.is_empty() => Err(CommandError::Empty),
        Some(words) => Ok(AuthoredCommand { cmd: config.cmd, words, timeout }),
    }
}

/// A duration as authored (`10s`, `500ms`).
pub fn duration(key: &'static str, text: &str) -> Result<Duration, CommandError> {
    humantime::parse_duration(text).map_err(|source| CommandError::Duration { key, text: text.to_owned(), source })
}

/// The first `limit` bytes of a text for a log line or an event, cut on a
/// character boundary, with a note of what was left out.
pub fn clip(text: &str, limit: usize) -> String {
    if text.len() <= limit {
        return text.to_owned();
    }
    let mut end = limit;
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}… ({} more bytes)", &text[..end], text.len() - end)
}

/// Where the `event` action hands the events it raises back to the
/// reactors (the engine, in the daemon).
pub trait Reactions: Send + Sync + Debug {
    /// Matches an event that `depth` `event` actions led to against every
    /// reactor and queues the reactions.
    fn on_event_at(&self, event: &Arc<Event>, depth: u32);
}

/// What an action may use while it runs.
#[derive(Debug, Clone)]
pub struct Context {
    /// The states as they were when the event arrived.
    pub states: Arc<StateTree>,
    pub jobs: Jobs,
    /// Where actions announce what they raise (the `event` action's events).
    pub bus: Bus,
    /// Hands events raised by the `event` action back to the reactors.
    pub reactions: Arc<dyn Reactions>,
    /// How many `event` actions led to the event being handled: 0 for an
    /// agent's own event. The `event` action refuses to go deeper than
    /// [`event::MAX_DEPTH`], so reactors that fire each other stop.
    pub depth: u32,
}

pub trait Action: Send + Sync + Debug {
    /// One line for logs and `check`'s what-if.
    fn describe(&self) -> String;
    /// The tag of the event this action raises, if it raises one: `check`
    /// uses it to refuse a reactor that would fire itself and to follow a
    /// what-if down the chain.
    fn fires(&self) -> Option<&str> {
        None
    }
    /// The event this action would raise for `agent`, caused by `cause`
    /// `depth` hops from an agent's event; for `check`'s what-if, which
    /// follows the chain without acting.
    fn would_fire(&self, _agent: &str, _cause: &Event, _depth: u32) -> Option<Event> {
        None
    }
    /// Whether the action acts on an agent (`apply`, `run`) rather than on
    /// the master: such actions follow the reactor's `target`, once per
    /// targeted agent; the others run once per reaction.
    fn acts_on_agent(&self) -> bool {
        false
    }
    /// Acts for `agent` on `event`; the text says what happened.
    fn run<'a>(
        &'a self,
        context: &'a Context,
        agent: &'a str,
        event: &'a Event,
    ) -> BoxFuture<'a, Result<String, ActionError>>;
}

/// Reactions that go nowhere, for actions' unit tests.
#[cfg(test)]
#[derive(Debug)]
struct NoReactions;

#[cfg(test)]
impl Reactions for NoReactions {
    fn on_event_at(&self, _event: &Arc<Event>, _depth: u32) {}
}

/// A context on a master with no agents, for actions' unit tests.
#[cfg(test)]
pub(crate) async fn test_context() -> Context {
    use zeromq::Socket;
    let (bus, _) = Bus::bind("tcp://127.0.0.1:0", halite_link::transport::HANDSHAKE_TIMEOUT).await.unwrap();
    let (send, _recv) = zeromq::RouterSocket::new().split();
    let jobs = Jobs::new(crate::server::sessions::Sessions::new(send), bus.clone(), Duration::from_secs(1));
    Context { states: Arc::default(), jobs, bus, reactions: Arc::new(NoReactions), depth: 0 }
}

/// [`test_context`] whose jobs are recorded in a store at `path`.
#[cfg(test)]
pub(crate) async fn test_context_with_store(path: &std::path::Path) -> Context {
    let context = test_context().await;
    let store = crate::server::store::Store::open(path).unwrap();
    Context { jobs: context.jobs.with_store(store), ..context }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tree::Tree;

    #[test]
    fn names_are_unique_sorted_and_examples_compile() {
        let names = names();
        let mut sorted = names.clone();
        sorted.sort_unstable();
        sorted.dedup();
        assert_eq!(names, sorted);
        for action in ACTIONS {
            let dir = tempfile::tempdir().unwrap();
            std::fs::write(dir.path().join("nginx.yaml"), "c:\n  file.managed:\n    path: /x\n    contents: x\n")
                .unwrap();
            std::fs::write(dir.path().join("reactors.yaml"), action.example).unwrap();
            let (tree, diagnostics) = Tree::load(dir.path());
            // Errors only: an example may name a beacon this bare tree lacks
            // (a `check` warning).
            assert!(!diagnostics.iter().any(halite_state::Diagnostic::is_error), "{}: {diagnostics:#?}", action.name);
            assert_eq!(tree.reactors.len(), 1);
        }
    }

    #[test]
    fn every_action_file_is_registered() {
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("src/server/reactor/actions");
        for entry in std::fs::read_dir(dir).unwrap() {
            let name = entry.unwrap().file_name().into_string().unwrap();
            let Some(stem) = name.strip_suffix(".rs") else { continue };
            if stem != "mod" {
                assert!(find(stem).is_some(), "src/server/reactor/actions/{name} is not registered in ACTIONS");
            }
        }
    }
}

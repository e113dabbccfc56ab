//! Inventory and coverage: per agent, every path its file beacons watch
//! (the agent lists them, `halite_agent::inventory`), split by what the
//! tree says of it (`halite-master inventory`), and `adopt`'s fetch of an
//! unmanaged file's content.
//!
//! An agent sends an `AgentMessage::Inventory` whenever its beacon set
//! changes, and when asked (`MasterMessage::Inventory`); [`Inventories`]
//! keeps the last one per agent (one entry per agent: bounded by the
//! fleet) and hands it to whoever asked. Each path is classified against
//! the agent's highstate rendered from the live tree ([`classify`]):
//! - `in_state`: a state manages it and its sha256 is the desired one;
//! - `drifted`: a state manages it and it differs (or is missing);
//! - `unmanaged`: a file no state manages (what `adopt` is for);
//! - `directory`: a watched directory, not classified;
//! - `absent`: a path a beacon names that does not exist and no state
//!   manages.
//!
//! An inventory lists at most `MAX_INVENTORY_PATHS` paths (`truncated`
//! says more were watched). Asking waits at most [`ASK_TIMEOUT`].

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use halite_proto::{Inventory, MasterMessage, Sha256, Value, WatchedContent, WatchedPath};
use serde::{Deserialize, Serialize};
use tokio::sync::oneshot;

use crate::server::sessions::Sessions;
use crate::tree::Tree;

/// How long an agent has to answer an inventory request.
pub const ASK_TIMEOUT: Duration = Duration::from_secs(10);

/// What a watched path is, by the tree (module docs).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Coverage {
    InState,
    Drifted,
    Unmanaged,
    Directory,
    Absent,
}

/// One watched path of one agent, classified.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Row {
    pub path: String,
    pub beacon: String,
    pub coverage: Coverage,
    /// The file's sha256 as the agent last listed it.
    pub sha256: Option<String>,
}

/// One agent's inventory as `inventory` shows it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AgentInventory {
    pub agent: String,
    /// More paths were watched than listed.
    #[serde(default)]
    pub truncated: bool,
    #[serde(default)]
    pub paths: Vec<Row>,
    /// Why there is no inventory (the agent did not answer, the tree does
    /// not render for it).
    #[serde(default)]
    pub error: Option<String>,
}

/// Why an agent's inventory or a file's content could not be had; names
/// the agent.
#[derive(Debug, thiserror::Error)]
pub enum InventoryError {
    #[error("agent `{agent}`: {source}")]
    Send { agent: String, source: crate::server::sessions::SendError },
    #[error("agent `{agent}` did not send its inventory within {ASK_TIMEOUT:?} (an older agent, or it is busy)")]
    NoAnswer { agent: String },
    #[error("agent `{agent}`: its states do not render from the live tree: {diagnostics}")]
    Render { agent: String, diagnostics: String },
    #[error("agent `{agent}`: {path}: {reason}")]
    Content { agent: String, path: String, reason: String },
}

/// Who waits for an agent's inventory: with the content of a path, or not.
type Waiter = (Option<String>, oneshot::Sender<Inventory>);

#[derive(Debug, Default)]
struct Inner {
    /// The last inventory each agent sent (without content).
    last: HashMap<String, Inventory>,
    waiting: HashMap<String, Vec<Waiter>>,
}

/// The agents' inventories (module docs). Cloning is cheap.
#[derive(Debug, Clone, Default)]
pub struct Inventories {
    inner: Arc<Mutex<Inner>>,
}

impl Inventories {
    /// An agent's inventory arrived (from the link loop): kept, and handed
    /// to those waiting for it (a waiter for a file's content only takes
    /// one that carries it).
    pub fn take(&self, agent: &str, mut inventory: Inventory) {
        let mut inner = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(waiters) = inner.waiting.remove(agent) {
            let carried = inventory.content.as_ref().map(|c| c.path.clone());
            let mut still = Vec::new();
            for (content_of, waiter) in waiters {
                if content_of.is_none() || content_of == carried {
                    let _ = waiter.send(inventory.clone());
                } else if !waiter.is_closed() {
                    still.push((content_of, waiter));
                }
            }
            if !still.is_empty() {
                inner.waiting.insert(agent.to_owned(), still);
            }
        }
        inventory.content = None;
        inner.last.insert(agent.to_owned(), inventory);
    }

    /// The last inventory `agent` sent, if any.
    pub fn last(&self, agent: &str) -> Option<Inventory> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner()).last.get(agent).cloned()
    }

    fn wait(&self, agent: &str, content_of: Option<String>) -> oneshot::Receiver<Inventory> {
        let (tx, rx) = oneshot::channel();
        let mut inner = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        let waiters = inner.waiting.entry(agent.to_owned()).or_default();
        // Those who gave up leave no entry behind.
        waiters.retain(|(_, w)| !w.is_closed());
        waiters.push((content_of, tx));
        rx
    }
}

/// What [`of`] and [`content`] need of the running master (`Master`'s
/// sessions, inventories and live tree; taking them apart keeps this
/// module, which `Master` holds, from importing it back).
#[derive(Debug, Clone, Copy)]
pub struct Parts<'a> {
    pub sessions: &'a Sessions,
    pub inventories: &'a Inventories,
    pub tree: &'a Tree,
}

/// Asks `agent` for a fresh inventory (with `content_of`'s content) and
/// waits for it.
pub async fn ask(parts: Parts<'_>, agent: &str, content_of: Option<String>) -> Result<Inventory, InventoryError> {
    let answer = parts.inventories.wait(agent, content_of.clone());
    parts
        .sessions
        .send(agent, &MasterMessage::Inventory { content_of })
        .await
        .map_err(|source| InventoryError::Send { agent: agent.to_owned(), source })?;
    match tokio::time::timeout(ASK_TIMEOUT, answer).await {
        Ok(Ok(inventory)) => Ok(inventory),
        _ => Err(InventoryError::NoAnswer { agent: agent.to_owned() }),
    }
}

/// The desired content's sha256 of every file `agent`'s highstate manages,
/// by path, from the live tree.
pub fn desired(parts: Parts<'_>, agent: &str) -> Result<HashMap<String, Sha256>, InventoryError> {
    let tree = parts.tree;
    let facts: Value = parts.sessions.facts(agent);
    let names = tree.states.states_for(agent, &facts);
    let calls = tree.states.calls_for(&names, &halite_state::RenderContext::new(agent, &facts)).map_err(|d| {
        InventoryError::Render {
            agent: agent.to_owned(),
            diagnostics: d.iter().map(ToString::to_string).collect::<Vec<_>>().join("; "),
        }
    })?;
    let mut desired = HashMap::new();
    for call in &calls {
        let Some(file) = halite_state::kinds::file_like(&call.kind) else { continue };
        if let Some(view) = (file.view)(&call.args) {
            // A URL source is not fetched for this: its hash is the digest
            // it will have; without one (`skip_verify`) it is not known.
            let digest = match halite_state::fetch::pending_sha256(&call.args, file.contents_key) {
                Some(Some(digest)) => digest,
                Some(None) => continue,
                None => Sha256::of(view.contents),
            };
            desired.insert(view.path.to_owned(), digest);
        }
    }
    Ok(desired)
}

/// What the tree says of one watched path (module docs).
pub fn classify(watched: &WatchedPath, desired: Option<&Sha256>) -> Coverage {
    match desired {
        Some(desired) if watched.sha256.as_ref() == Some(desired) => Coverage::InState,
        Some(_) => Coverage::Drifted,
        None if watched.directory => Coverage::Directory,
        None if !watched.exists => Coverage::Absent,
        None => Coverage::Unmanaged,
    }
}

/// `agent`'s inventory, fresh from the agent, classified.
pub async fn of(parts: Parts<'_>, agent: &str) -> AgentInventory {
    let classified = async {
        let inventory = ask(parts, agent, None).await?;
        let desired = desired(parts, agent)?;
        let paths = inventory
            .paths
            .iter()
            .map(|watched| Row {
                path: watched.path.clone(),
                beacon: watched.beacon.clone(),
                coverage: classify(watched, desired.get(&watched.path)),
                sha256: watched.sha256.map(|s| s.to_hex()),
            })
            .collect();
        Ok::<_, InventoryError>((paths, inventory.truncated))
    };
    match classified.await {
        Ok((paths, truncated)) => AgentInventory { agent: agent.to_owned(), truncated, paths, error: None },
        Err(error) => AgentInventory {
            agent: agent.to_owned(),
            truncated: false,
            paths: Vec::new(),
            error: Some(error.to_string()),
        },
    }
}

/// The content of `path` on `agent` for `adopt`: only a file a beacon
/// watches and no state manages.
pub async fn content(parts: Parts<'_>, agent: &str, path: &str) -> Result<WatchedContent, InventoryError> {
    let refuse = |reason: String| InventoryError::Content { agent: agent.to_owned(), path: path.to_owned(), reason };
    if desired(parts, agent)?.contains_key(path) {
        return Err(refuse(
            "a state already manages it (`halite-master inventory` shows it in_state or drifted)".into(),
        ));
    }
    let inventory = ask(parts, agent, Some(path.to_owned())).await?;
    let content = inventory.content.ok_or_else(|| refuse("the agent sent no content".into()))?;
    match (&content.bytes, &content.error) {
        (Some(_), _) => Ok(content),
        (None, error) => Err(refuse(error.clone().unwrap_or_else(|| "no content".into()))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_path_is_in_state_drifted_unmanaged_a_directory_or_absent() {
        let file = |content: Option<&[u8]>| WatchedPath {
            beacon: "b".into(),
            path: "/etc/x".into(),
            sha256: content.map(Sha256::of),
            directory: false,
            exists: content.is_some(),
        };
        let want = Sha256::of(b"desired");
        let directory = WatchedPath { directory: true, exists: true, ..file(None) };
        // (watched, desired, coverage)
        let table = [
            (file(Some(b"desired")), Some(&want), Coverage::InState),
            (file(Some(b"other")), Some(&want), Coverage::Drifted),
            (file(None), Some(&want), Coverage::Drifted),
            (file(Some(b"other")), None, Coverage::Unmanaged),
            (directory, None, Coverage::Directory),
            (file(None), None, Coverage::Absent),
        ];
        for (i, (watched, desired, coverage)) in table.into_iter().enumerate() {
            assert_eq!(classify(&watched, desired), coverage, "row {i}");
        }
    }

    #[tokio::test]
    async fn a_content_waiter_takes_only_the_inventory_that_carries_it() {
        let inventories = Inventories::default();
        let any = inventories.wait("web01", None);
        let content = inventories.wait("web01", Some("/etc/x".into()));
        let inventory = |content: Option<&str>| Inventory {
            id: halite_proto::Id::new(),
            paths: Vec::new(),
            truncated: false,
            content: content.map(|path| WatchedContent {
                path: path.into(),
                bytes: Some(vec![1]),
                mode: 0o644,
                error: None,
            }),
        };
        inventories.take("web01", inventory(None));
        assert!(any.await.is_ok());
        inventories.take("web02", inventory(Some("/etc/x")));
        inventories.take("web01", inventory(Some("/etc/x")));
        assert_eq!(content.await.unwrap().content.unwrap().path, "/etc/x");
        assert!(inventories.last("web01").unwrap().content.is_none(), "content is not kept");
    }
}

//! The control socket: how operator commands (`halite-master keys …`) talk
//! to the running master. A Unix socket in the data dir, owner-only; one
//! JSON request per line, one JSON answer per line. `events` is the
//! exception: after its answer the connection carries the event stream
//! (`events.rs`) until the command goes away.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::Context;
use halite_link::PublicKey;
use halite_proto::event::tag;
use halite_proto::{Event, MasterMessage, Value};
use serde::{Deserialize, Serialize};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::{UnixListener, UnixStream};
use tokio_util::sync::CancellationToken;

use crate::daemon::Master;
use crate::keys::{KeyEntry, KeyStatus};

pub fn socket_path(data_dir: &Path) -> PathBuf {
    data_dir.join("control.sock")
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(tag = "command", rename_all = "snake_case")]
pub enum Request {
    KeysList,
    KeysAccept {
        target: String,
    },
    KeysReject {
        target: String,
    },
    KeysDelete {
        target: String,
    },
    /// Answered by a stream of [`crate::apply::ApplyLine`]s, not a [`Response`].
    Apply(crate::apply::ApplyRequest),
    /// Every known agent (`agents.rs`).
    Agents,
    /// A live tail of the bus, optionally filtered by a tag glob.
    Events {
        tag: Option<String>,
    },
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Response {
    pub ok: bool,
    #[serde(default)]
    pub error: Option<String>,
    /// The keys listed, or changed by the command.
    #[serde(default)]
    pub keys: Vec<KeyEntry>,
    /// The agents listed by `agents`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub agents: Vec<crate::agents::AgentRow>,
}

/// How long the control socket waits after a failed accept before trying
/// again.
const ACCEPT_BACKOFF: std::time::Duration = std::time::Duration::from_millis(250);

pub async fn serve(master: Arc<Master>, data_dir: &Path, cancel: CancellationToken) -> anyhow::Result<()> {
    let path = socket_path(data_dir);
    // A socket left by a master that crashed; the data dir is ours alone.
    let _ = std::fs::remove_file(&path);
    let listener =
        UnixListener::bind(&path).with_context(|| format!("cannot create the control socket {}", path.display()))?;
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600))?;
    tokio::spawn(async move {
        // Set while accepts fail, so a failure is logged once, not per try.
        let mut failing = false;
        loop {
            tokio::select! {
                () = cancel.cancelled() => break,
                accepted = listener.accept() => match accepted {
                    Ok((stream, _)) => {
                        if std::mem::take(&mut failing) {
                            tracing::info!("Control socket accepting again.");
                        }
                        tokio::spawn(connection(master.clone(), stream));
                    }
                    Err(error) => {
                        if !std::mem::replace(&mut failing, true) {
                            tracing::warn!(%error, path = %path.display(), "Control socket accept failed; retrying every {ACCEPT_BACKOFF:?} until it succeeds.");
                        }
                        // Out of descriptors (EMFILE) every accept fails at
                        // once until one frees up: wait instead of spinning.
                        tokio::select! {
                            () = cancel.cancelled() => break,
                            () = tokio::time::sleep(ACCEPT_BACKOFF) => {}
                        }
                    }
                }
            }
        }
        let _ = std::fs::remove_file(&path);
    });
    Ok(())
}

async fn connection(master: Arc<Master>, stream: UnixStream) {
    let (read, mut write) = stream.into_split();
    let mut lines = BufReader::new(read).lines();
    while let Ok(Some(line)) = lines.next_line().await {
        let response = match serde_json::from_str::<Request>(&line) {
            Ok(Request::Apply(apply)) => {
                crate::apply::serve(&master, apply, &mut write).await;
                continue;
            }
            Ok(Request::Events { tag }) => return crate::events::stream(&master, tag, write).await,
            Ok(Request::Agents) => Response { ok: true, agents: crate::agents::rows(&master), ..Response::default() },
            Ok(request) => execute(&master, request).await,
            Err(error) => Response { ok: false, error: Some(format!("bad request: {error}")), ..Response::default() },
        };
        let mut text = serde_json::to_string(&response).unwrap_or_default();
        text.push('\n');
        if write.write_all(text.as_bytes()).await.is_err() {
            return;
        }
    }
}

async fn execute(master: &Master, request: Request) -> Response {
    let result = match request {
        Request::KeysList => Ok(master.keys.list()),
        Request::KeysAccept { target } => accept(master, &target).await,
        Request::KeysReject { target } => {
            let changed = master.keys.set_status(&target, KeyStatus::Rejected);
            cut_off(master, changed, "rejected").await
        }
        Request::KeysDelete { target } => {
            let deleted = master.keys.delete(&target);
            cut_off(master, deleted, "deleted").await
        }
        Request::Apply(_) => Err("apply is answered by a stream (see `connection`)".to_owned()),
        Request::Agents | Request::Events { .. } => Err("served by the connection, not here".to_owned()),
    };
    match result {
        Ok(keys) => Response { ok: true, keys, ..Response::default() },
        Err(error) => Response { ok: false, error: Some(error), ..Response::default() },
    }
}

/// Accepts in memory, commits to disk, then welcomes the live sessions of
/// the keys accepted. A failed commit is reported, and the acceptance is
/// in effect anyway (memory decides for the running master).
async fn accept(master: &Master, target: &str) -> Result<Vec<KeyEntry>, String> {
    let changed = master.keys.set_status(target, KeyStatus::Accepted).map_err(|e| e.to_string())?;
    let saved = master.keys.commit().await;
    for entry in &changed {
        tracing::info!(agent = %entry.id, fingerprint = %entry.key, "Key accepted.");
        master.bus.publish(Event::new(
            tag::key(&entry.id, "accepted"),
            entry.id.as_str(),
            Value::map().with("fingerprint", entry.key.as_str()),
        ));
        let Ok(key) = entry.key.parse::<PublicKey>() else { continue };
        for (peer, facts) in master.sessions.promote(&entry.id, &key) {
            crate::link::welcome(master, peer, &entry.id, "", facts).await;
        }
    }
    saved.map_err(|e| e.to_string())?;
    Ok(changed)
}

/// Ends the live sessions of keys that are no longer accepted, at once,
/// then commits the change; both happen before the command returns.
async fn cut_off(
    master: &Master,
    entries: Result<Vec<KeyEntry>, crate::keys::KeyStoreError>,
    what: &str,
) -> Result<Vec<KeyEntry>, String> {
    let entries = entries.map_err(|e| e.to_string())?;
    for entry in &entries {
        tracing::info!(agent = %entry.id, fingerprint = %entry.key, "Key {what}.");
        master.bus.publish(Event::new(
            tag::key(&entry.id, what),
            entry.id.as_str(),
            Value::map().with("fingerprint", entry.key.as_str()),
        ));
        let Ok(key) = entry.key.parse::<PublicKey>() else { continue };
        for peer in master.sessions.peers_of(&entry.id, &key) {
            let _ = master.sessions.send_to_peer(peer, &MasterMessage::NotAccepted { status: what.to_owned() }).await;
        }
        if !master.sessions.drop_key(&entry.id, &key).is_empty() {
            master.bus.publish(Event::new(
                tag::agent(&entry.id, "disconnected"),
                entry.id.as_str(),
                Value::map().with("reason", what),
            ));
        }
    }
    master.keys.commit().await.map_err(|e| e.to_string())?;
    Ok(entries)
}

/// Sends a request whose answer is a stream of lines (`apply`); returns
/// the lines as they come.
pub async fn stream(
    data_dir: &Path,
    request: &Request,
) -> anyhow::Result<tokio::io::Lines<BufReader<tokio::net::unix::OwnedReadHalf>>> {
    let path = socket_path(data_dir);
    let stream = UnixStream::connect(&path).await.with_context(|| {
        format!(
            "cannot reach the master's control socket {} (is `halite-master run` running with this data dir?)",
            path.display()
        )
    })?;
    let (read, mut write) = stream.into_split();
    let mut line = serde_json::to_string(request)?;
    line.push('\n');
    write.write_all(line.as_bytes()).await?;
    // Dropping the write half shuts it down; the master reads the next
    // request only after it has answered this one in full.
    drop(write);
    Ok(BufReader::new(read).lines())
}

/// Sends one request to the running master.
pub async fn request(data_dir: &Path, request: &Request) -> anyhow::Result<Response> {
    let path = socket_path(data_dir);
    let stream = UnixStream::connect(&path).await.with_context(|| {
        format!(
            "cannot reach the master's control socket {} (is `halite-master run` running with this data dir?)",
            path.display()
        )
    })?;
    let (read, mut write) = stream.into_split();
    let mut line = serde_json::to_string(request)?;
    line.push('\n');
    write.write_all(line.as_bytes()).await?;
    let answer = BufReader::new(read).lines().next_line().await?.context("the master closed the control socket")?;
    Ok(serde_json::from_str(&answer)?)
}

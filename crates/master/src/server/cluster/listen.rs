//! One connection per master `LISTEN`ing to the others: key changes
//! (`halite_keys`), session starts (`halite_sessions`), the schedule's
//! ticks (`halite_schedule`), and routed jobs (`halite_routed` for this
//! master's agents, `halite_routed_done` for its operators: `route.rs`).
//!
//! A notification is only delivered to a connection listening when it is
//! sent, so after every (re)connection the listener re-reads every key
//! before it waits again. It first makes sure this master's own changes
//! made meanwhile are written (they would otherwise be undone by the
//! re-read), and, the first time this data dir meets PostgreSQL, imports
//! halite.db's keys (`keys.rs`, [`super::keys::IMPORTED_MARKER`]).
//! Notifications are handled in batches of what arrived meanwhile (one
//! query per batch), from a bounded channel ([`NOTIFY_QUEUE`]): while it is
//! full the connection is not read and PostgreSQL holds them.

use std::collections::BTreeSet;
use std::path::PathBuf;

use tokio::sync::mpsc;
use tokio_postgres::Client;
use tokio_util::sync::CancellationToken;

use super::route::{ANSWERED_CHANNEL, ROUTED_CHANNEL, Router, parse_payload};
use super::{BACKOFF, KEYS_CHANNEL, Parts, SCHEDULE_CHANNEL, SESSIONS_CHANNEL, epochs, keys};
use crate::server::keys::ShareRequest;
use crate::server::store::postgres::{PgTarget, describe, migrate};

/// Notifications received and not yet handled, at most.
pub const NOTIFY_QUEUE: usize = 4096;

/// The listener's parts (see [`super::start`]).
pub struct Listener {
    pub target: PgTarget,
    pub name: String,
    pub parts: Parts,
    pub share: mpsc::Sender<ShareRequest>,
    pub marker: PathBuf,
    pub ticks: tokio::sync::broadcast::Sender<String>,
    /// Where routed jobs' notifications go.
    pub route: Router,
}

#[derive(Debug, thiserror::Error)]
enum ListenError {
    #[error("{0}")]
    Connect(#[from] crate::server::store::postgres::PgError),
    #[error("the PostgreSQL store {target}: {message}")]
    Postgres { target: String, message: String },
    #[error("this master's key changes are not written yet (PostgreSQL refused them); the keys are read again later")]
    Unwritten,
    #[error("cannot write {path}: {source}")]
    Marker { path: PathBuf, source: std::io::Error },
}

impl Listener {
    /// Listens until `cancel`, reconnecting with backoff.
    pub async fn run(self, cancel: CancellationToken) {
        let mut backoff = BACKOFF.0;
        // Whether a lost connection, and a failing one, were said.
        let (mut lost, mut warned) = (false, false);
        loop {
            let (tx, mut rx) = mpsc::channel(NOTIFY_QUEUE);
            let connected = tokio::select! {
                () = cancel.cancelled() => return,
                connected = self.connect(tx) => connected,
            };
            match connected {
                Ok(client) => {
                    if lost {
                        tracing::warn!(store = %self.target, "Listening to the other masters again; every key was read again.");
                    }
                    warned = false;
                    backoff = BACKOFF.0;
                    // Routed jobs notified while nobody listened.
                    self.route.reconnected();
                    tokio::select! {
                        () = cancel.cancelled() => return,
                        () = self.serve(&client, &mut rx) => {}
                    }
                    tracing::warn!(store = %self.target, "Lost the connection listening to the other masters; reconnecting.");
                    lost = true;
                }
                Err(error) => {
                    if !warned {
                        tracing::warn!(store = %self.target, %error, "Cannot listen to the other masters; this master keeps its keys and retries.");
                        warned = true;
                    }
                    tokio::select! {
                        () = cancel.cancelled() => return,
                        () = tokio::time::sleep(backoff) => {}
                    }
                    backoff = super::next_backoff(backoff);
                }
            }
        }
    }

    /// Connects, listens, and catches up on what it may have missed.
    async fn connect(&self, tx: mpsc::Sender<tokio_postgres::Notification>) -> Result<Client, ListenError> {
        let failed =
            |e: tokio_postgres::Error| ListenError::Postgres { target: self.target.to_string(), message: describe(&e) };
        let mut client = self.target.connect_listening(tx).await?;
        // The writer migrates too; a master that started while PostgreSQL
        // was down may get here first.
        migrate(&mut client, &self.target).await?;
        client
            .batch_execute(&format!(
                "LISTEN {KEYS_CHANNEL}; LISTEN {SESSIONS_CHANNEL}; LISTEN {SCHEDULE_CHANNEL}; LISTEN {ROUTED_CHANNEL}; LISTEN {ANSWERED_CHANNEL};"
            ))
            .await
            .map_err(failed)?;
        if !tokio::fs::try_exists(&self.marker).await.unwrap_or(false) {
            let added = keys::import(&mut client, &self.parts.keys).await.map_err(failed)?;
            tokio::fs::write(&self.marker, format!("{}\n", self.target))
                .await
                .map_err(|source| ListenError::Marker { path: self.marker.clone(), source })?;
            tracing::info!(store = %self.target, added, "Imported this master's keys into PostgreSQL (once).");
        }
        // This master's own changes first, or the re-read undoes them.
        let (done, wait) = tokio::sync::oneshot::channel();
        let flushed = self.share.send(ShareRequest { ids: Vec::new(), replace: true, done: Some(done) }).await.is_ok()
            && wait.await.unwrap_or(false);
        if !flushed {
            return Err(ListenError::Unwritten);
        }
        // Facts frozen here before they were shared (an upgraded data dir,
        // a lost write) where PostgreSQL has none; then every key re-read.
        let added = super::facts::import(&mut client, &self.parts.keys, &self.name).await.map_err(failed)?;
        if added > 0 {
            tracing::info!(added, "Frozen facts written to PostgreSQL.");
        }
        let synced = keys::apply(&client, &self.parts, None).await.map_err(failed)?;
        if synced.changed > 0 {
            tracing::info!(changed = synced.changed, "Keys read from PostgreSQL.");
        }
        Ok(client)
    }

    /// Handles notifications until the connection ends.
    async fn serve(&self, client: &Client, rx: &mut mpsc::Receiver<tokio_postgres::Notification>) {
        let mut batch = Vec::with_capacity(256);
        loop {
            if rx.recv_many(&mut batch, 256).await == 0 || client.is_closed() {
                return;
            }
            let (mut ids, mut agents) = (BTreeSet::new(), BTreeSet::new());
            let mut routed = Vec::new();
            for notification in batch.drain(..) {
                match notification.channel() {
                    KEYS_CHANNEL => {
                        ids.insert(notification.payload().to_owned());
                    }
                    SESSIONS_CHANNEL => {
                        agents.insert(notification.payload().to_owned());
                    }
                    SCHEDULE_CHANNEL => {
                        // No schedule task (none configured): nobody to tell.
                        let _ = self.ticks.send(notification.payload().to_owned());
                    }
                    ROUTED_CHANNEL => match parse_payload(notification.payload()) {
                        Some((id, home)) if home == self.name => routed.push(id.to_owned()),
                        _ => {}
                    },
                    ANSWERED_CHANNEL => match parse_payload(notification.payload()) {
                        Some((id, asker)) if asker == self.name => self.route.answered(id),
                        _ => {}
                    },
                    other => tracing::debug!(channel = other, "A notification on a channel nobody listens to."),
                }
            }
            if !routed.is_empty() {
                self.route.requested(routed);
            }
            if !ids.is_empty() {
                let ids: Vec<String> = ids.into_iter().collect();
                if let Err(error) = keys::apply(client, &self.parts, Some(&ids)).await {
                    tracing::warn!(store = %self.target, error = %describe(&error), "Cannot read changed keys; reconnecting to read them all.");
                    return;
                }
            }
            if !agents.is_empty() {
                let agents: Vec<String> = agents.into_iter().collect();
                if let Err(error) = epochs::drop_stale(client, &self.parts, &self.name, &agents).await {
                    tracing::warn!(store = %self.target, error = %describe(&error), "Cannot read session epochs; reconnecting.");
                    return;
                }
            }
        }
    }
}

//! Several masters sharing one PostgreSQL store (issue #20): the control
//! plane between them. Only rare control messages travel here, each in a
//! small transaction of its own that `NOTIFY`s (a notifying commit takes a
//! global lock in PostgreSQL, so the batched event writes of
//! `store/postgres.rs` never notify). A lone master, or one on SQLite,
//! starts none of this.
//!
//! # Layout
//! - [`listen`] — one connection per master `LISTEN`ing on `halite_keys`,
//!   `halite_sessions` and `halite_schedule`; it reconnects with backoff
//!   and re-reads every key after a reconnection (notifications sent while
//!   it was away are lost).
//! - [`keys`] — keys in PostgreSQL: writing this master's changes
//!   (operators' decisions, keys first seen here), and applying the
//!   others' to memory, cutting the sessions of keys no longer accepted.
//! - [`facts`] — the facts frozen per accepted key (they decide `G@`
//!   targets), written and read with the keys.
//! - [`lease`] — the singletons' leader: a PostgreSQL advisory lock held on
//!   a connection of its own plus a `leases` row whose epoch grows with
//!   every takeover; [`lease::fence`] refuses a stale leader's write.
//! - [`singletons`] — what only the leader runs: the schedule's ticks,
//!   retention, pending-key expiry, each write fenced.
//! - [`epochs`] — a session epoch per agent: the master that starts a
//!   session bumps it; the one whose session is stale drops it.
//! - [`masters`] — each master's row: the tree version it serves and a
//!   heartbeat; a master whose tree differs from its peers' says so.
//! - [`access`] — API tokens and the audit log in PostgreSQL: tokens
//!   valid on every master (`NOTIFY halite_tokens`, read through on a
//!   miss), one audit hash chain for the cluster, and the audit entries
//!   kept locally while PostgreSQL is unreachable.
//! - [`tail`] — the fleet tail: while an operator follows the events, the
//!   other masters' events and job returns read from PostgreSQL.
//! - [`route`] — operators' jobs for agents homed on another master: a
//!   request row and a notification to the agent's master, an answer row
//!   and a notification back (`server/routed.rs` runs them there).
//!
//! With PostgreSQL unreachable a master keeps its keys in memory and
//! halite.db (it enforces from them), queues its key changes to write when
//! PostgreSQL answers, and runs no singleton: the leader steps down when it
//! cannot renew its lease.

use std::path::Path;
use std::time::Duration;

use tokio_util::sync::CancellationToken;

use crate::server::bus::Bus;
use crate::server::keys::{KeyStore, ShareRequest};
use crate::server::sessions::Sessions;
use crate::server::store::postgres::PgTarget;

pub mod access;
pub mod epochs;
pub mod facts;
pub mod keys;
pub mod lease;
pub mod listen;
pub mod masters;
pub mod route;
pub mod singletons;
pub mod tail;

/// The channel a notification arrives on, by what it is about.
pub const KEYS_CHANNEL: &str = "halite_keys";
pub const SESSIONS_CHANNEL: &str = "halite_sessions";
pub const SCHEDULE_CHANNEL: &str = "halite_schedule";

/// Backoff between connection attempts, doubling from the first to the
/// last.
pub const BACKOFF: (Duration, Duration) = (Duration::from_millis(250), Duration::from_secs(5));

/// How many schedule ticks wait for this master's schedule tasks; a slow
/// task misses ticks (logged) rather than holding the listener.
pub const TICKS_QUEUE: usize = 64;

/// The parts of the running master the control plane acts on.
#[derive(Debug, Clone)]
pub struct Parts {
    pub keys: KeyStore,
    pub sessions: Sessions,
    pub bus: Bus,
}

/// This master's place among the others.
#[derive(Debug, Clone)]
pub struct Cluster {
    /// This master's name among them: its link's address.
    pub name: String,
    /// Whether this master runs the singletons now, under which epoch.
    pub leader: lease::Leader,
    /// The schedule's entries the leader ticked, by name: every master
    /// applies them to its own agents.
    pub ticks: tokio::sync::broadcast::Sender<String>,
    /// The masters alive, their tree versions, each agent's master.
    pub view: masters::View,
    /// The other masters' events, for this master's followers.
    pub tail: tail::FleetTail,
    /// Jobs for agents on other masters, and theirs for agents here.
    pub route: route::Router,
}

/// Starts the control plane of `name` (the link's address) on `target`:
/// the listener, the key writer, the session epochs, the lease, the
/// singletons and the heartbeat. `share` is the receiving end of the
/// channel given to [`KeyStore::with_sharing`]. Returns at once;
/// PostgreSQL may be unreachable.
#[allow(clippy::too_many_arguments)]
pub fn start(
    target: PgTarget,
    name: String,
    data_dir: &Path,
    tree: (std::path::PathBuf, std::sync::Arc<std::sync::RwLock<std::sync::Arc<crate::tree::Tree>>>),
    parts: Parts,
    share: (tokio::sync::mpsc::Sender<ShareRequest>, tokio::sync::mpsc::Receiver<ShareRequest>),
    singleton: singletons::Work,
    cancel: CancellationToken,
) -> Cluster {
    let (share_tx, share_rx) = share;
    let (ticks, _) = tokio::sync::broadcast::channel(TICKS_QUEUE);
    let holder = format!("{name} pid {}", std::process::id());
    let leader = lease::spawn(target.clone(), holder.clone(), parts.bus.clone(), cancel.clone());
    tokio::spawn(keys::write(target.clone(), name.clone(), parts.keys.clone(), share_rx, cancel.clone()));
    let opened = epochs::spawn(target.clone(), name.clone(), parts.sessions.clone(), cancel.clone());
    let route = route::Router::new(target.clone(), name.clone());
    parts.sessions.tell_opened(opened);
    parts.sessions.name_master(&name);
    let listener = listen::Listener {
        target: target.clone(),
        name: name.clone(),
        parts: parts.clone(),
        share: share_tx,
        marker: data_dir.join(keys::IMPORTED_MARKER),
        ticks: ticks.clone(),
        route: route.clone(),
    };
    tokio::spawn(listener.run(cancel.clone()));
    tokio::spawn(singletons::run(target.clone(), holder, leader.clone(), singleton, cancel.clone()));
    let tail = tail::FleetTail::spawn(target.clone(), name.clone(), cancel.clone());
    let view = masters::spawn(target, name.clone(), tree.0, tree.1, cancel);
    Cluster { name, leader, ticks, view, tail, route }
}

/// Takes the next requests from `inbox` into `batch` (at most `limit`) for
/// a writer that retries: while writes are owed (`retry_in`), it waits at
/// most that long and comes back with nothing new so the writer tries
/// again. `false` once cancelled or every sender is gone.
async fn next_batch<T>(
    inbox: &mut tokio::sync::mpsc::Receiver<T>,
    batch: &mut Vec<T>,
    limit: usize,
    retry_in: Option<Duration>,
    cancel: &CancellationToken,
) -> bool {
    let retry = async {
        match retry_in {
            Some(wait) => tokio::time::sleep(wait).await,
            None => std::future::pending().await,
        }
    };
    tokio::select! {
        () = cancel.cancelled() => false,
        n = inbox.recv_many(batch, limit) => n > 0,
        () = retry => true,
    }
}

/// The next backoff after `now`.
fn next_backoff(now: Duration) -> Duration {
    (now * 2).min(BACKOFF.1)
}

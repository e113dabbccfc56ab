//! The singletons' leader among several masters: whoever holds a
//! PostgreSQL advisory lock, on a connection of its own, *and* the
//! `leases` row named [`SINGLETONS`].
//!
//! The lock alone is not enough: a master cut from PostgreSQL by a
//! partition loses its connection (so its lock) without learning it at
//! once, and would run its singletons beside the new leader. So the row
//! carries an expiry (PostgreSQL's clock) the leader renews every
//! [`RENEW_EVERY`]; a master that cannot renew steps down at once, and a
//! candidate that got the lock takes over only once the row has expired.
//! Each takeover increments the row's epoch; every write a singleton makes
//! runs [`fence`] in its own transaction, so a stale leader's late write
//! (its epoch is no longer the row's) is refused and logged, never
//! committed.
//!
//! A killed leader's connection dies with it, releasing the lock; its row
//! expires within [`LEASE_TTL`] of its last renewal, and a candidate trying
//! every [`RENEW_EVERY`] takes over: within `LEASE_TTL + RENEW_EVERY`
//! (8 s). With PostgreSQL unreachable nobody can renew or take the
//! lease: no master runs a singleton.

use std::time::Duration;

use halite_proto::event::tag;
use halite_proto::{Event, Value};
use tokio::sync::watch;
use tokio_postgres::Client;
use tokio_util::sync::CancellationToken;

use super::BACKOFF;
use crate::server::bus::Bus;
use crate::server::store::postgres::{PgTarget, describe};

/// The lease the schedule, retention and pending-key expiry run under.
pub const SINGLETONS: &str = "singletons";
/// How long a lease lasts unless renewed.
pub const LEASE_TTL: Duration = Duration::from_secs(6);
/// How often the leader renews, and a candidate tries.
pub const RENEW_EVERY: Duration = Duration::from_secs(2);

/// The advisory lock key of a lease (an arbitrary constant per name).
fn lock_key(name: &str) -> i64 {
    // Not for security: a stable number per name (FNV-1a).
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for byte in name.bytes() {
        hash = (hash ^ u64::from(byte)).wrapping_mul(0x0100_0000_01b3);
    }
    i64::from_ne_bytes(hash.to_ne_bytes())
}

#[derive(Debug, thiserror::Error)]
pub enum LeaseError {
    #[error(
        "lease `{name}`: {holder} wrote under epoch {epoch}, but the lease is now {current}; the write is refused (another master leads)"
    )]
    Fenced { name: String, holder: String, epoch: i64, current: String },
    #[error("lease `{name}`: {message}")]
    Postgres { name: String, message: String },
}

/// Whether this master leads now, and under which epoch; cheap to clone
/// and read.
#[derive(Debug, Clone)]
pub struct Leader(watch::Receiver<Option<i64>>);

impl Leader {
    /// A lone master leads always (epoch 0).
    pub fn always() -> Leader {
        Leader(watch::channel(Some(0)).1)
    }

    /// The epoch this master leads under, if it does.
    pub fn epoch(&self) -> Option<i64> {
        *self.0.borrow()
    }

    /// Waits for a change (none ever comes for [`Leader::always`]).
    pub async fn changed(&mut self) {
        if self.0.changed().await.is_err() {
            std::future::pending::<()>().await;
        }
    }
}

/// Starts trying to lead as `holder`, until `cancel`.
pub fn spawn(target: PgTarget, holder: String, bus: Bus, cancel: CancellationToken) -> Leader {
    let (tell, leader) = watch::channel(None);
    tokio::spawn(async move {
        tokio::select! {
            () = cancel.cancelled() => {}
            () = run(&target, &holder, &bus, &tell) => {}
        }
        tell.send_replace(None);
    });
    Leader(leader)
}

async fn run(target: &PgTarget, holder: &str, bus: &Bus, tell: &watch::Sender<Option<i64>>) {
    let mut backoff = BACKOFF.0;
    loop {
        let Ok(client) = target.connect().await else {
            tokio::time::sleep(backoff).await;
            backoff = super::next_backoff(backoff);
            continue;
        };
        backoff = BACKOFF.0;
        let mut every = tokio::time::interval(RENEW_EVERY);
        every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            every.tick().await;
            let held = *tell.borrow();
            let step = match held {
                None => tokio::time::timeout(RENEW_EVERY, take(&client, SINGLETONS, holder)).await,
                Some(epoch) => tokio::time::timeout(RENEW_EVERY, renew(&client, SINGLETONS, holder, epoch))
                    .await
                    .map(|r| r.map(|kept| kept.then_some(epoch))),
            };
            match step {
                Ok(Ok(now)) => {
                    if now != held {
                        tell.send_replace(now);
                        say(bus, holder, held, now);
                    }
                }
                failed => {
                    if held.is_some() {
                        tell.send_replace(None);
                        say(bus, holder, held, None);
                    }
                    match failed {
                        Ok(Err(error)) => {
                            tracing::warn!(store = %target, error = %describe(&error), "Cannot renew or take the singletons' lease; not leading.")
                        }
                        _ => {
                            tracing::warn!(store = %target, "PostgreSQL did not answer the lease in time; not leading.")
                        }
                    }
                    // The lock goes with the connection.
                    break;
                }
            }
        }
    }
}

fn say(bus: &Bus, holder: &str, before: Option<i64>, now: Option<i64>) {
    match now {
        Some(epoch) => {
            tracing::warn!(
                holder,
                epoch,
                "This master now runs the singletons (schedule, retention, pending-key expiry)."
            );
            bus.publish(Event::new(
                tag::master("singletons/leading"),
                "",
                Value::map().with("holder", holder).with("epoch", epoch),
            ));
        }
        None => {
            tracing::warn!(holder, epoch = ?before, "This master no longer runs the singletons.");
            bus.publish(Event::new(
                tag::master("singletons/stepped-down"),
                "",
                Value::map().with("holder", holder).with("epoch", before.unwrap_or(0)),
            ));
        }
    }
}

/// Takes the lease `name` for `holder` if its advisory lock is free and
/// its row expired (or is ours, or absent); the new epoch, or `None`.
pub async fn take(client: &Client, name: &str, holder: &str) -> Result<Option<i64>, tokio_postgres::Error> {
    let locked: bool = client.query_one("SELECT pg_try_advisory_lock($1)", &[&lock_key(name)]).await?.get(0);
    if !locked {
        return Ok(None);
    }
    let ttl = LEASE_TTL.as_secs_f64();
    let row = client
        .query_opt(
            "INSERT INTO leases AS l (name, holder, epoch, expires)
             VALUES ($1, $2, 1, now() + $3 * interval '1 second')
             ON CONFLICT (name) DO UPDATE SET holder = $2, epoch = l.epoch + 1, expires = now() + $3 * interval '1 second'
             WHERE l.expires < now() OR l.holder = $2
             RETURNING epoch",
            &[&name, &holder, &ttl],
        )
        .await?;
    match row {
        Some(row) => Ok(Some(row.get(0))),
        None => {
            // The row is another master's and has not expired: wait for it.
            client.execute("SELECT pg_advisory_unlock($1)", &[&lock_key(name)]).await?;
            Ok(None)
        }
    }
}

/// Renews the lease `name` held by `holder` under `epoch`; `false` when it
/// is no longer ours.
pub async fn renew(client: &Client, name: &str, holder: &str, epoch: i64) -> Result<bool, tokio_postgres::Error> {
    let ttl = LEASE_TTL.as_secs_f64();
    let renewed = client
        .execute(
            "UPDATE leases SET expires = now() + $4 * interval '1 second'
             WHERE name = $1 AND holder = $2 AND epoch = $3",
            &[&name, &holder, &epoch, &ttl],
        )
        .await?;
    Ok(renewed == 1)
}

/// Refuses the transaction's writes unless `holder` still holds the lease
/// `name` under `epoch`, holding the row (`FOR SHARE`) until the
/// transaction ends so no takeover commits in between. Call it first in
/// every singleton's transaction.
pub async fn fence(
    tx: &tokio_postgres::Transaction<'_>,
    name: &str,
    holder: &str,
    epoch: i64,
) -> Result<(), LeaseError> {
    let row = tx
        .query_opt("SELECT holder, epoch, expires > now() FROM leases WHERE name = $1 FOR SHARE", &[&name])
        .await
        .map_err(|e| LeaseError::Postgres { name: name.to_owned(), message: describe(&e) })?;
    let (current_holder, current_epoch, live): (String, i64, bool) = match &row {
        Some(row) => (row.get(0), row.get(1), row.get(2)),
        None => (String::new(), 0, false),
    };
    if current_holder == holder && current_epoch == epoch && live {
        return Ok(());
    }
    let current = if row.is_some() {
        format!("{current_holder}'s epoch {current_epoch}{}", if live { "" } else { " (expired)" })
    } else {
        "held by nobody".to_owned()
    };
    Err(LeaseError::Fenced { name: name.to_owned(), holder: holder.to_owned(), epoch, current })
}

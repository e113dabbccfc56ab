//! What only the leader runs (`lease.rs`): the schedule's ticks, the
//! store's retention and the expiry of pending keys. Each is one small
//! transaction that first checks the lease's epoch ([`super::lease::fence`]),
//! so a stale leader's late write is refused and logged.
//!
//! The schedule's leader does not apply states itself: it ticks. Each
//! tick of an entry is a row of `schedule_ticks` and a
//! `NOTIFY halite_schedule, '<entry>'`; every master applies the entry to
//! the agents connected to it (`server/schedule.rs`), so the whole fleet
//! is enforced once per tick, whichever master each agent is on.

use std::time::Duration;

use halite_proto::event::now_us;
use tokio_postgres::Client;
use tokio_util::sync::CancellationToken;

use super::lease::{Leader, LeaseError, SINGLETONS, fence};
use super::{KEYS_CHANNEL, SCHEDULE_CHANNEL};
use crate::config::ScheduleEntry;
use crate::server::store::Retention;
use crate::server::store::postgres::{PgTarget, describe, retain_in};

/// How often the leader expires pending keys.
pub const EXPIRE_EVERY: Duration = Duration::from_secs(60);

/// The singletons' configuration.
#[derive(Debug, Clone)]
pub struct Work {
    pub schedule: Vec<ScheduleEntry>,
    pub retention: Retention,
    /// `enrolment.pending_expire`.
    pub pending_expire: Duration,
}

/// A singleton due now.
#[derive(Debug, Clone, PartialEq)]
enum Due {
    Tick(String),
    Retain,
    Expire,
}

/// Runs the singletons while this master leads, until `cancel`.
pub async fn run(target: PgTarget, holder: String, leader: Leader, work: Work, cancel: CancellationToken) {
    let (due_tx, mut due) = tokio::sync::mpsc::channel::<Due>(64);
    // One clock per entry; a tick while not leading is skipped, and a tick
    // that finds the queue full is too (the next comes).
    for entry in &work.schedule {
        let (name, every, due_tx, leader, cancel) =
            (entry.name.clone(), entry.every, due_tx.clone(), leader.clone(), cancel.clone());
        tokio::spawn(async move {
            let mut ticks = tokio::time::interval_at(tokio::time::Instant::now() + every, every);
            ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
            loop {
                tokio::select! {
                    () = cancel.cancelled() => return,
                    _ = ticks.tick() => {}
                }
                if leader.epoch().is_some() {
                    let _ = due_tx.try_send(Due::Tick(name.clone()));
                }
            }
        });
    }
    for (what, every) in [(Due::Retain, crate::server::store::RETENTION_INTERVAL), (Due::Expire, EXPIRE_EVERY)] {
        let (due_tx, mut leader, cancel) = (due_tx.clone(), leader.clone(), cancel.clone());
        tokio::spawn(async move {
            let mut ticks = tokio::time::interval(every);
            loop {
                tokio::select! {
                    () = cancel.cancelled() => return,
                    _ = ticks.tick() => {}
                    // Once leading, at once.
                    () = leader.changed() => {}
                }
                if leader.epoch().is_some() {
                    let _ = due_tx.try_send(what.clone());
                }
            }
        });
    }
    drop(due_tx);
    let mut client: Option<Client> = None;
    loop {
        let what = tokio::select! {
            () = cancel.cancelled() => return,
            what = due.recv() => match what { Some(what) => what, None => return },
        };
        let Some(epoch) = leader.epoch() else { continue };
        if client.as_ref().is_none_or(Client::is_closed) {
            client = target.connect().await.ok();
        }
        let Some(connected) = client.as_mut() else { continue };
        let result = match &what {
            Due::Tick(name) => tick(connected, &holder, epoch, name).await.map(|tick| {
                tracing::info!(schedule = %name, tick, epoch, "Ticked a scheduled run for every master's agents.");
            }),
            Due::Retain => retain(connected, &holder, epoch, work.retention).await.map(|deleted| {
                if deleted > 0 {
                    tracing::info!(deleted, "Deleted old jobs (store retention, as the singletons' leader).");
                }
            }),
            Due::Expire => expire(connected, &holder, epoch, work.pending_expire).await.map(|ids| {
                for id in ids {
                    tracing::info!(agent = %id, "Forgot a pending key no operator decided about (`enrolment.pending_expire`).");
                }
            }),
        };
        match result {
            Ok(()) => {}
            Err(error @ LeaseError::Fenced { .. }) => {
                tracing::error!(%error, singleton = ?what, "A stale leader's write was refused.");
            }
            Err(error) => {
                tracing::warn!(%error, singleton = ?what, "A singleton's write failed; it runs again at its next turn.");
                client = None;
            }
        }
    }
}

fn failed(error: &tokio_postgres::Error) -> LeaseError {
    LeaseError::Postgres { name: SINGLETONS.to_owned(), message: describe(error) }
}

/// One tick of the schedule entry `name`, fenced; its number.
pub async fn tick(client: &mut Client, holder: &str, epoch: i64, name: &str) -> Result<i64, LeaseError> {
    let tx = client.transaction().await.map_err(|e| failed(&e))?;
    fence(&tx, SINGLETONS, holder, epoch).await?;
    let tick: i64 = tx
        .query_one(
            "INSERT INTO schedule_ticks AS t (name, epoch, tick, at) VALUES ($1, $2, 1, now())
             ON CONFLICT (name) DO UPDATE SET epoch = $2, tick = t.tick + 1, at = now()
             RETURNING tick",
            &[&name, &epoch],
        )
        .await
        .map_err(|e| failed(&e))?
        .get(0);
    tx.execute(&format!("SELECT pg_notify('{SCHEDULE_CHANNEL}', $1)"), &[&name]).await.map_err(|e| failed(&e))?;
    tx.commit().await.map_err(|e| failed(&e))?;
    Ok(tick)
}

/// The store's retention, fenced; the jobs deleted.
pub async fn retain(client: &mut Client, holder: &str, epoch: i64, limits: Retention) -> Result<u64, LeaseError> {
    let tx = client.transaction().await.map_err(|e| failed(&e))?;
    fence(&tx, SINGLETONS, holder, epoch).await?;
    let deleted = retain_in(&tx, limits).await.map_err(|e| failed(&e))?;
    tx.commit().await.map_err(|e| failed(&e))?;
    Ok(deleted)
}

/// Deletes the pending keys older than `expire` from the shared store,
/// fenced, notifying their ids (every master forgets them); the ids.
pub async fn expire(
    client: &mut Client,
    holder: &str,
    epoch: i64,
    expire: Duration,
) -> Result<Vec<String>, LeaseError> {
    let cutoff = now_us() / 1_000_000 - i64::try_from(expire.as_secs()).unwrap_or(i64::MAX);
    let tx = client.transaction().await.map_err(|e| failed(&e))?;
    fence(&tx, SINGLETONS, holder, epoch).await?;
    let rows = tx
        .query("DELETE FROM keys WHERE status = 'pending' AND since < $1 RETURNING id", &[&cutoff])
        .await
        .map_err(|e| failed(&e))?;
    let mut ids: Vec<String> = rows.iter().map(|row| row.get(0)).collect();
    ids.sort();
    ids.dedup();
    if !ids.is_empty() {
        tx.execute(&format!("SELECT pg_notify('{KEYS_CHANNEL}', id) FROM unnest($1::text[]) AS id"), &[&ids])
            .await
            .map_err(|e| failed(&e))?;
    }
    tx.commit().await.map_err(|e| failed(&e))?;
    Ok(ids)
}

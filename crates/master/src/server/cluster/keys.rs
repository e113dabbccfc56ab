//! Keys in PostgreSQL (the `keys` table): this master's changes written
//! there, and the others' applied here.
//!
//! Memory decides for the running master, as on a lone one
//! (`server/keys.rs`), and halite.db keeps this master's copy, from which it
//! enforces while PostgreSQL is unreachable. PostgreSQL holds the fleet's
//! truth: an operator's decision replaces the rows of the ids it names and
//! `NOTIFY halite_keys, '<id>'`s in the same small transaction; a key first
//! seen here is inserted where no row exists (never overwriting another
//! master's decision) and notified likewise. Every master, this one
//! included, applies a notification by re-reading that id's rows
//! ([`apply`]); a key no longer accepted has its sessions cut at once.
//!
//! Changes wait in [`ShareRequest`]s (a bounded queue, `SHARE_QUEUE`) and,
//! while PostgreSQL is unreachable, in a set of ids (bounded by the ids
//! this master knows), written when it answers.

use std::collections::HashMap;

use halite_link::PublicKey;
use halite_proto::event::tag;
use halite_proto::{Event, MasterMessage, Value};
use tokio::sync::mpsc;
use tokio_postgres::Client;
use tokio_util::sync::CancellationToken;

use super::{BACKOFF, KEYS_CHANNEL, Parts, next_backoff};
use crate::server::keys::{KeyEntry, KeyStatus, KeyStore, ShareRequest, Synced};
use crate::server::store::postgres::{PgTarget, describe};

/// The file in the data dir that says this master's halite.db keys were
/// imported into PostgreSQL (once: afterwards PostgreSQL decides, and a key
/// deleted there while this master was away must not come back).
pub const IMPORTED_MARKER: &str = "keys.imported-to-postgres";

/// How many changes are written in one transaction at most.
const BATCH: usize = 512;

#[derive(Debug, thiserror::Error)]
pub enum SharedKeysError {
    #[error("the shared keys in {target}: {message}")]
    Postgres { target: String, message: String },
    #[error("the shared key store {target} is unreachable")]
    Unreachable { target: String },
    #[error("the shared key store {target} did not answer in time")]
    Timeout { target: String },
}

/// Writes the changes `inbox` brings to PostgreSQL, batched; keeps them
/// while it is unreachable and retries with backoff. Until `cancel`.
pub async fn write(
    target: PgTarget,
    name: String,
    keys: KeyStore,
    mut inbox: mpsc::Receiver<ShareRequest>,
    cancel: CancellationToken,
) {
    // Ids waiting to be written, and whether any change of theirs was an
    // operator's (the rows are replaced).
    let mut waiting: HashMap<String, bool> = HashMap::new();
    let mut done: Vec<tokio::sync::oneshot::Sender<bool>> = Vec::new();
    let mut client: Option<Client> = None;
    let mut backoff = BACKOFF.0;
    let mut batch = Vec::with_capacity(BATCH);
    loop {
        let retry_in = (!waiting.is_empty()).then_some(backoff);
        if !super::next_batch(&mut inbox, &mut batch, BATCH, retry_in, &cancel).await {
            return;
        }
        for request in batch.drain(..) {
            for id in request.ids {
                *waiting.entry(id).or_default() |= request.replace;
            }
            done.extend(request.done);
        }
        if waiting.is_empty() {
            for tell in done.drain(..) {
                let _ = tell.send(true);
            }
            continue;
        }
        if client.as_ref().is_none_or(Client::is_closed) {
            client = target.connect().await.ok();
        }
        let shown = target.to_string();
        let result = match client.as_mut() {
            Some(client) => {
                match tokio::time::timeout(
                    crate::server::store::postgres::COMMIT_TIMEOUT,
                    store(client, &keys, &waiting, &name),
                )
                .await
                {
                    Ok(result) => {
                        result.map_err(|e| SharedKeysError::Postgres { target: shown, message: describe(&e) })
                    }
                    Err(_) => Err(SharedKeysError::Timeout { target: shown }),
                }
            }
            None => Err(SharedKeysError::Unreachable { target: shown }),
        };
        match result {
            Ok(()) => {
                keys.shared_done(&waiting.keys().cloned().collect::<Vec<_>>());
                waiting.clear();
                backoff = BACKOFF.0;
                for tell in done.drain(..) {
                    let _ = tell.send(true);
                }
            }
            Err(error) => {
                if backoff == BACKOFF.0 {
                    tracing::warn!(store = %target, %error, ids = waiting.len(), "Cannot write key changes to PostgreSQL; they are in effect here and written when it answers.");
                }
                client = None;
                backoff = next_backoff(backoff);
                for tell in done.drain(..) {
                    let _ = tell.send(false);
                }
            }
        }
    }
}

/// Writes what memory holds for the ids of `waiting` in one transaction
/// that notifies each id.
async fn store(
    client: &mut Client,
    keys: &KeyStore,
    waiting: &HashMap<String, bool>,
    name: &str,
) -> Result<(), tokio_postgres::Error> {
    let ids: Vec<String> = waiting.keys().cloned().collect();
    let replaced: Vec<String> = waiting.iter().filter(|(_, r)| **r).map(|(id, _)| id.clone()).collect();
    let entries = keys.entries_of(&ids);
    let (mut rows_replace, mut rows_new): (Vec<&KeyEntry>, Vec<&KeyEntry>) = (Vec::new(), Vec::new());
    for entry in &entries {
        if waiting.get(&entry.id).copied().unwrap_or(false) {
            rows_replace.push(entry);
        } else {
            rows_new.push(entry);
        }
    }
    let tx = client.transaction().await?;
    if !replaced.is_empty() {
        tx.execute("DELETE FROM keys WHERE id = ANY($1)", &[&replaced]).await?;
    }
    for (rows, conflict) in
        [(rows_replace, "DO UPDATE SET status = EXCLUDED.status, since = EXCLUDED.since"), (rows_new, "DO NOTHING")]
    {
        if rows.is_empty() {
            continue;
        }
        let id: Vec<&str> = rows.iter().map(|e| e.id.as_str()).collect();
        let key: Vec<&str> = rows.iter().map(|e| e.key.as_str()).collect();
        let status: Vec<&str> = rows.iter().map(|e| e.status.as_str()).collect();
        let since: Vec<i64> = rows.iter().map(|e| i64::try_from(e.since).unwrap_or(i64::MAX)).collect();
        tx.execute(
            &format!(
                "INSERT INTO keys (id, key, status, since)
                 SELECT * FROM unnest($1::text[], $2::text[], $3::text[], $4::bigint[])
                 ON CONFLICT (id, key) {conflict}"
            ),
            &[&id, &key, &status, &since],
        )
        .await?;
    }
    // The frozen facts of these ids go with them, told by the same
    // notification.
    super::facts::store(&tx, keys, &ids, name).await?;
    tx.execute(&format!("SELECT pg_notify('{KEYS_CHANNEL}', id) FROM unnest($1::text[]) AS id"), &[&ids]).await?;
    tx.commit().await
}

/// Every key row of `ids` (`None`: all).
pub async fn read(client: &Client, ids: Option<&[String]>) -> Result<Vec<KeyEntry>, tokio_postgres::Error> {
    let rows = match ids {
        Some(ids) => {
            client.query("SELECT id, key, status, since FROM keys WHERE id = ANY($1) ORDER BY id, key", &[&ids]).await?
        }
        None => client.query("SELECT id, key, status, since FROM keys ORDER BY id, key", &[]).await?,
    };
    Ok(rows
        .iter()
        .filter_map(|row| {
            let (id, key, status, since): (String, String, String, i64) =
                (row.get(0), row.get(1), row.get(2), row.get(3));
            let Some(status) = KeyStatus::parse(&status) else {
                tracing::warn!(agent = %id, status = %status, "A shared key row has an unknown status; skipped.");
                return None;
            };
            Some(KeyEntry { id, key, status, since: u64::try_from(since).unwrap_or(0) })
        })
        .collect())
}

/// Inserts every key halite.db holds where PostgreSQL has no row for it;
/// how many were new there.
pub async fn import(client: &mut Client, keys: &KeyStore) -> Result<u64, tokio_postgres::Error> {
    let entries = keys.list();
    let tx = client.transaction().await?;
    let id: Vec<&str> = entries.iter().map(|e| e.id.as_str()).collect();
    let key: Vec<&str> = entries.iter().map(|e| e.key.as_str()).collect();
    let status: Vec<&str> = entries.iter().map(|e| e.status.as_str()).collect();
    let since: Vec<i64> = entries.iter().map(|e| i64::try_from(e.since).unwrap_or(i64::MAX)).collect();
    let added = tx
        .execute(
            "INSERT INTO keys (id, key, status, since)
             SELECT * FROM unnest($1::text[], $2::text[], $3::text[], $4::bigint[])
             ON CONFLICT (id, key) DO NOTHING",
            &[&id, &key, &status, &since],
        )
        .await?;
    tx.commit().await?;
    Ok(added)
}

/// Re-reads the rows of `ids` (`None`: all), makes memory hold them, and
/// acts on what changed.
pub async fn apply(client: &Client, parts: &Parts, ids: Option<&[String]>) -> Result<Synced, tokio_postgres::Error> {
    let rows = read(client, ids).await?;
    let synced = parts.keys.sync(ids, &rows);
    react(parts, &synced).await;
    // After the keys: facts are kept for accepted keys only.
    super::facts::apply(client, parts, ids).await?;
    Ok(synced)
}

/// Cuts the sessions of keys no longer accepted (at once, telling the
/// agent why), and lets a pending session of a key now accepted reconnect
/// to be welcomed.
pub async fn react(parts: &Parts, synced: &Synced) {
    for (entry, status) in &synced.lost {
        let what = status.map_or("deleted", KeyStatus::as_str);
        tracing::info!(agent = %entry.id, fingerprint = %entry.key, "Key {what} on another master; its session here is cut.");
        let Ok(key) = entry.key.parse::<PublicKey>() else { continue };
        for peer in parts.sessions.peers_of(&entry.id, &key) {
            let _ = parts.sessions.send_to_peer(peer, &MasterMessage::NotAccepted { status: what.to_owned() }).await;
        }
        if !parts.sessions.drop_key(&entry.id, &key).is_empty() {
            parts.bus.publish(Event::new(
                tag::agent(&entry.id, "disconnected"),
                entry.id.as_str(),
                Value::map().with("reason", what).with("by", "another master"),
            ));
        }
    }
    for entry in &synced.accepted {
        let Ok(key) = entry.key.parse::<PublicKey>() else { continue };
        parts.sessions.reconnect_pending(&entry.id, &key);
    }
}

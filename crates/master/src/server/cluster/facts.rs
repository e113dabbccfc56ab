//! The facts frozen per accepted key, in PostgreSQL (`key_facts`, schema
//! v7): the facts that decide `G@`/`P@` targets, and so which vars and
//! secrets an agent gets, are the fleet's, not each master's.
//!
//! Without this, each master froze in its own halite.db what a key
//! presented at its first session *there*: an agent accepted and frozen as
//! `hostname: web01` on one master that fails over (or connects on
//! purpose) to another got whatever it claimed then frozen there.
//!
//! Written with the key changes (`keys.rs`, the same transaction and
//! `NOTIFY halite_keys, '<id>'`): facts first frozen here are inserted
//! where no row is (never over another master's), an operator's
//! `keys facts --accept` replaces the row. Read with the keys (every
//! re-read, every notification): memory then holds the shared facts, so a
//! session starting on any master is decided with them by the same
//! synchronous code as on a lone master (`server/keys.rs`,
//! `KeyStore::arrive`). The facts an agent claims against them are held on
//! the master it claims them to (its `halite/key/<id>/facts-held` and
//! `keys facts`), not written here.
//!
//! While PostgreSQL is unreachable a master decides with what memory and
//! halite.db hold: an agent it holds no frozen facts for has its claim
//! frozen here, as on a lone master, and inserted when PostgreSQL answers;
//! if another master's row was there first, the re-read that follows puts
//! that row's facts in force here too (its live session included).

use tokio_postgres::{Client, Transaction};

use super::Parts;
use crate::server::keys::{FactsRow, KeyStore};

/// Writes the facts frozen here for keys of `ids`, in the key writer's
/// transaction, then forgets the shared rows of keys of `ids` that are no
/// longer accepted.
pub async fn store(
    tx: &Transaction<'_>,
    keys: &KeyStore,
    ids: &[String],
    master: &str,
) -> Result<(), tokio_postgres::Error> {
    let rows = keys.facts_to_share(ids);
    for replace in [true, false] {
        let rows: Vec<&FactsRow> = rows.iter().filter(|(_, r)| *r == replace).map(|(row, _)| row).collect();
        if rows.is_empty() {
            continue;
        }
        let conflict = if replace {
            "DO UPDATE SET frozen = EXCLUDED.frozen, master = EXCLUDED.master, at_us = EXCLUDED.at_us"
        } else {
            "DO NOTHING"
        };
        insert(tx, &rows, master, conflict).await?;
    }
    tx.execute(
        "DELETE FROM key_facts f WHERE f.id = ANY($1) AND NOT EXISTS
         (SELECT 1 FROM keys k WHERE k.id = f.id AND k.key = f.key AND k.status = 'accepted')",
        &[&ids],
    )
    .await?;
    Ok(())
}

/// Inserts `rows` from `master`, resolving a conflict with `conflict`.
async fn insert(
    tx: &Transaction<'_>,
    rows: &[&FactsRow],
    master: &str,
    conflict: &str,
) -> Result<u64, tokio_postgres::Error> {
    let id: Vec<&str> = rows.iter().map(|r| r.id.as_str()).collect();
    let key: Vec<&str> = rows.iter().map(|r| r.key.as_str()).collect();
    let frozen: Vec<String> = rows.iter().map(|r| r.frozen.to_string()).collect();
    let at_us = i64::try_from(
        std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default().as_micros(),
    )
    .unwrap_or(i64::MAX);
    tx.execute(
        &format!(
            "INSERT INTO key_facts (id, key, frozen, master, at_us)
             SELECT u.id, u.key, u.frozen, $4, $5
             FROM unnest($1::text[], $2::text[], $3::text[]) AS u (id, key, frozen)
             JOIN keys k ON k.id = u.id AND k.key = u.key AND k.status = 'accepted'
             ON CONFLICT (id, key) {conflict}"
        ),
        &[&id, &key, &frozen, &master, &at_us],
    )
    .await
}

/// Inserts every accepted key's frozen facts memory holds where
/// PostgreSQL has none (after each reconnection of the listener, before it
/// re-reads: facts frozen before they were shared, an upgraded data dir);
/// how many were new there.
pub async fn import(client: &mut Client, keys: &KeyStore, master: &str) -> Result<u64, tokio_postgres::Error> {
    let rows = keys.all_facts();
    if rows.is_empty() {
        return Ok(0);
    }
    let rows: Vec<&FactsRow> = rows.iter().collect();
    let tx = client.transaction().await?;
    let added = insert(&tx, &rows, master, "DO NOTHING").await?;
    tx.commit().await?;
    Ok(added)
}

/// The shared frozen facts of keys of `ids` (`None`: all).
pub async fn read(client: &Client, ids: Option<&[String]>) -> Result<Vec<FactsRow>, tokio_postgres::Error> {
    let rows = match ids {
        Some(ids) => client.query("SELECT id, key, frozen FROM key_facts WHERE id = ANY($1)", &[&ids]).await?,
        None => client.query("SELECT id, key, frozen FROM key_facts", &[]).await?,
    };
    Ok(rows
        .iter()
        .filter_map(|row| {
            let (id, key, frozen): (String, String, String) = (row.get(0), row.get(1), row.get(2));
            match serde_json::from_str(&frozen) {
                Ok(frozen) => Some(FactsRow { id, key, frozen, held: None }),
                Err(error) => {
                    tracing::warn!(agent = %id, %error, "Shared frozen facts that are not JSON; skipped.");
                    None
                }
            }
        })
        .collect())
}

/// Re-reads the shared facts of `ids` (`None`: all), makes memory hold
/// them, and gives a live session here whose facts changed the new ones
/// (targeting and templates use them at once).
pub async fn apply(client: &Client, parts: &Parts, ids: Option<&[String]>) -> Result<(), tokio_postgres::Error> {
    let rows = read(client, ids).await?;
    for (agent, facts) in parts.keys.sync_facts(&rows) {
        tracing::info!(agent = %agent, "Frozen facts read from PostgreSQL (frozen by another master or an operator).");
        parts.sessions.set_facts(&agent, facts);
    }
    Ok(())
}

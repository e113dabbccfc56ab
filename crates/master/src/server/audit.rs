//! The audit log: every authenticated call that changes something, and
//! every refusal, as one row of the `audit` table in halite.db (who, what,
//! target, cause, result).
//!
//! Append-only twice over: SQLite triggers refuse `UPDATE` and `DELETE` on
//! the table (store migration v5), and each row carries the sha256 of the
//! previous row's hash and its own fields, so an edit made to the file
//! behind SQLite's back, a row removed or rows reordered show in
//! [`verify`] (`halite-master audit --verify`), which names the first row
//! that does not fit. What no chain can show is the newest rows cut off
//! the end: `--verify` prints the last hash, for an operator who wants to
//! keep it elsewhere.
//!
//! The SQL here runs on a connection the caller owns (`server/access.rs`
//! in the master, a read-only one in `cli/audit.rs`), always off the
//! runtime's threads.

use halite_proto::hash::Sha256;
use rusqlite::{Connection, OptionalExtension, params};
use serde::{Deserialize, Serialize};

/// The `prev` of the first row.
pub const GENESIS: &str = "0000000000000000000000000000000000000000000000000000000000000000";

/// What happened, before it is chained.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Entry {
    /// `token:<name>` or `local:<user>`.
    pub who: String,
    /// The action: `apply`, `keys accept`, `tokens create`, …
    pub what: String,
    /// The target expression, key selector or token name acted on.
    pub target: String,
    /// The API method and path, or the command line.
    pub cause: String,
    /// `ok`, `refused: <why>` or `failed: <why>`.
    pub result: String,
}

/// One row of the log as stored and exported (`audit --json`, the API).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Row {
    pub seq: i64,
    pub at_us: i64,
    #[serde(flatten)]
    pub entry: Entry,
    pub prev: String,
    pub hash: String,
}

/// Why the audit log cannot be read or written.
#[derive(Debug, thiserror::Error)]
pub enum AuditError {
    #[error("the audit log in {path}: {source}")]
    Sqlite { path: String, source: rusqlite::Error },
}

/// Where the chain breaks: the first row that does not fit, and how.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Broken {
    #[error("audit row {seq}: its hash does not match its content (the row was edited)")]
    Edited { seq: i64 },
    #[error(
        "audit row {seq}: it does not follow row {after}'s hash (a row before it was removed, replaced or reordered)"
    )]
    Unlinked { seq: i64, after: i64 },
    #[error("audit row {seq} follows row {after}: rows {missing} are missing")]
    Gap { seq: i64, after: i64, missing: String },
}

/// The hash of a row: sha256 over the previous hash and the row's fields,
/// each on its own line as JSON strings and numbers (so no field can run
/// into the next).
pub fn hash(prev: &str, seq: i64, at_us: i64, entry: &Entry) -> String {
    let text = serde_json::json!([prev, seq, at_us, entry.who, entry.what, entry.target, entry.cause, entry.result]);
    Sha256::of(text.to_string().as_bytes()).to_hex()
}

/// Checks the chain, oldest row first; the first row that does not fit.
pub fn verify(rows: &[Row]) -> Result<(), Broken> {
    let mut prev = (0_i64, GENESIS.to_owned());
    for row in rows {
        if row.seq != prev.0 + 1 {
            let missing = if row.seq == prev.0 + 2 {
                (prev.0 + 1).to_string()
            } else {
                format!("{} to {}", prev.0 + 1, row.seq - 1)
            };
            return Err(Broken::Gap { seq: row.seq, after: prev.0, missing });
        }
        if hash(&row.prev, row.seq, row.at_us, &row.entry) != row.hash {
            return Err(Broken::Edited { seq: row.seq });
        }
        if row.prev != prev.1 {
            return Err(Broken::Unlinked { seq: row.seq, after: prev.0 });
        }
        prev = (row.seq, row.hash.clone());
    }
    Ok(())
}

/// Appends `entry` after the last row, in one `IMMEDIATE` transaction so
/// no other writer can chain onto the same row.
pub fn append(connection: &Connection, path: &str, at_us: i64, entry: &Entry) -> Result<Row, AuditError> {
    let err = |source| AuditError::Sqlite { path: path.to_owned(), source };
    let transaction =
        rusqlite::Transaction::new_unchecked(connection, rusqlite::TransactionBehavior::Immediate).map_err(err)?;
    let last: Option<(i64, String)> = transaction
        .query_row("SELECT seq, hash FROM audit ORDER BY seq DESC LIMIT 1", [], |row| Ok((row.get(0)?, row.get(1)?)))
        .optional()
        .map_err(err)?;
    let (seq, prev) = last.map_or((1, GENESIS.to_owned()), |(seq, hash)| (seq + 1, hash));
    let hash = hash(&prev, seq, at_us, entry);
    transaction
        .execute(
            "INSERT INTO audit (seq, at_us, who, what, target, cause, result, prev, hash)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9)",
            params![seq, at_us, entry.who, entry.what, entry.target, entry.cause, entry.result, prev, hash],
        )
        .map_err(err)?;
    transaction.commit().map_err(err)?;
    Ok(Row { seq, at_us, entry: entry.clone(), prev, hash })
}

/// Rows oldest first: all of them (`after` 0, `limit` none), or a page.
pub fn rows(connection: &Connection, path: &str, after: i64, limit: Option<u32>) -> Result<Vec<Row>, AuditError> {
    let err = |source| AuditError::Sqlite { path: path.to_owned(), source };
    let limit = limit.map_or(-1, i64::from);
    let mut statement = connection
        .prepare(
            "SELECT seq, at_us, who, what, target, cause, result, prev, hash FROM audit
             WHERE seq > ?1 ORDER BY seq LIMIT ?2",
        )
        .map_err(err)?;
    let rows = statement
        .query_map(params![after, limit], |row| {
            Ok(Row {
                seq: row.get(0)?,
                at_us: row.get(1)?,
                entry: Entry {
                    who: row.get(2)?,
                    what: row.get(3)?,
                    target: row.get(4)?,
                    cause: row.get(5)?,
                    result: row.get(6)?,
                },
                prev: row.get(7)?,
                hash: row.get(8)?,
            })
        })
        .map_err(err)?;
    rows.collect::<Result<_, _>>().map_err(err)
}

/// The newest `limit` rows, newest first (the API's and dashboard's view).
pub fn newest(connection: &Connection, path: &str, limit: u32) -> Result<Vec<Row>, AuditError> {
    let err = |source| AuditError::Sqlite { path: path.to_owned(), source };
    let last: i64 =
        connection.query_row("SELECT coalesce(max(seq), 0) FROM audit", [], |row| row.get(0)).map_err(err)?;
    let mut page = rows(connection, path, (last - i64::from(limit)).max(0), Some(limit))?;
    page.reverse();
    Ok(page)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(n: i64) -> Entry {
        Entry {
            who: "token:ci".into(),
            what: "apply".into(),
            target: format!("web{n:02}"),
            cause: "POST /api/v1/apply".into(),
            result: "ok".into(),
        }
    }

    fn chain(n: i64) -> Vec<Row> {
        let mut rows: Vec<Row> = Vec::new();
        for seq in 1..=n {
            let prev = rows.last().map_or(GENESIS.to_owned(), |r| r.hash.clone());
            let e = entry(seq);
            rows.push(Row { seq, at_us: seq * 10, hash: hash(&prev, seq, seq * 10, &e), entry: e, prev });
        }
        rows
    }

    /// Every kind of tampering is named by the first row it breaks.
    #[test]
    fn tampering_names_the_row() {
        assert_eq!(verify(&chain(5)), Ok(()));
        assert_eq!(verify(&[]), Ok(()));
        type Tamper = Box<dyn Fn(&mut Vec<Row>)>;
        let cases: Vec<(&str, Tamper, Broken)> = vec![
            ("edited", Box::new(|r| r[2].entry.result = "refused".into()), Broken::Edited { seq: 3 }),
            ("edited time", Box::new(|r| r[0].at_us += 1), Broken::Edited { seq: 1 }),
            ("removed", Box::new(|r| drop(r.remove(1))), Broken::Gap { seq: 3, after: 1, missing: "2".into() }),
            (
                "removed two",
                Box::new(|r| drop(r.drain(1..3))),
                Broken::Gap { seq: 4, after: 1, missing: "2 to 3".into() },
            ),
            (
                "replaced with a chain of its own",
                Box::new(|r| {
                    let e = entry(99);
                    r[1] = Row { seq: 2, at_us: 1, hash: hash(GENESIS, 2, 1, &e), entry: e, prev: GENESIS.into() };
                }),
                Broken::Unlinked { seq: 2, after: 1 },
            ),
        ];
        for (name, tamper, wanted) in cases {
            let mut rows = chain(5);
            tamper(&mut rows);
            assert_eq!(verify(&rows), Err(wanted), "{name}");
        }
    }

    /// Appending chains onto the last row; the triggers refuse edits.
    #[test]
    fn appends_chain_and_sql_edits_are_refused() {
        let connection = Connection::open_in_memory().unwrap();
        connection.execute_batch(crate::server::store::V5_ACCESS).unwrap();
        for n in 1..=3 {
            let row = append(&connection, "mem", n * 10, &entry(n)).unwrap();
            assert_eq!(row.seq, n);
        }
        let all = rows(&connection, "mem", 0, None).unwrap();
        assert_eq!(verify(&all), Ok(()));
        assert_eq!(all[1].prev, all[0].hash);
        assert_eq!(newest(&connection, "mem", 2).unwrap().iter().map(|r| r.seq).collect::<Vec<_>>(), [3, 2]);
        let error = connection.execute("UPDATE audit SET result = 'x' WHERE seq = 2", []).unwrap_err();
        assert!(error.to_string().contains("append-only"), "{error}");
        assert!(connection.execute("DELETE FROM audit", []).is_err());
    }
}

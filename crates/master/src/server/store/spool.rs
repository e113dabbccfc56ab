//! The local spool of the PostgreSQL store: records the master could not
//! write to PostgreSQL (unreachable, stopped, partitioned away), appended
//! to `<data_dir>/pg-spool` and fsynced before their agents are
//! acknowledged, and drained into PostgreSQL once it answers again.
//!
//! One JSON record per line. A master killed mid-append leaves a torn last
//! line without its newline: that record's batch was never acknowledged
//! (the fsync had not returned), so reading skips it. Any other line that
//! does not parse is damage, named with its line number. Draining is
//! idempotent (event ids and job rows are unique in PostgreSQL), so a
//! crash between the drain's commit and the spool's truncation replays
//! records PostgreSQL already holds, and nothing is recorded twice.
//!
//! Sync code: it runs on the store's own writer thread, never on the
//! runtime's threads.

use std::io::{BufRead, Write as _};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use halite_proto::StateResult;
use serde::{Deserialize, Serialize};

use crate::server::store::JobRecord;

/// The spool's file in a data dir.
pub fn path(data_dir: &Path) -> PathBuf {
    data_dir.join("pg-spool")
}

/// The spool's bound: while it holds this many bytes, further records are
/// refused (answers and events are then not acknowledged and their agents
/// keep them). 1 GiB holds millions of events.
pub const SPOOL_MAX_BYTES: u64 = 1 << 30;

#[derive(Debug, thiserror::Error)]
pub enum SpoolError {
    #[error("the PostgreSQL spool {path}: {source}")]
    Io { path: PathBuf, source: std::io::Error },
    #[error(
        "the PostgreSQL spool {path} is damaged at line {line}: {error}; move it aside to start (its records are lost from the store)"
    )]
    Damaged { path: PathBuf, line: usize, error: String },
    #[error("the PostgreSQL spool {path} holds {bytes} bytes, its limit; records are refused until PostgreSQL answers")]
    Full { path: PathBuf, bytes: u64 },
}

/// An agent's event as the store records it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EventRow {
    pub id: String,
    pub agent: String,
    pub tag: String,
    pub time_us: i64,
    /// The event's data as JSON text.
    pub data: String,
    /// With several masters: the master that took the event (its link's
    /// address), and the session epoch it held for the agent then
    /// (`None` until that session's epoch is written). The batch that
    /// records the row refuses it when another master holds a newer epoch
    /// (`postgres.rs`, the fence). Absent from spools written before.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub master: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub epoch: Option<i64>,
}

impl EventRow {
    pub fn of(event: &halite_proto::Event) -> EventRow {
        EventRow {
            id: event.id.to_string(),
            agent: event.agent.clone(),
            tag: event.tag.clone(),
            time_us: event.time_us,
            data: event.data.to_json().to_string(),
            master: None,
            epoch: None,
        }
    }
}

/// One record the PostgreSQL store writes: what [`super::Write`] carries,
/// without its reply channels.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "record", rename_all = "snake_case")]
pub enum Record {
    Event(EventRow),
    Started {
        job: JobRecord,
        agent: String,
    },
    Answered {
        jid: String,
        agent: String,
        results: Vec<StateResult>,
    },
    NoAnswer {
        jid: String,
        agent: String,
        error: String,
        at_us: i64,
    },
    Facts {
        agent: String,
        facts: serde_json::Value,
        at_us: i64,
    },
    /// A remediation receipt (`receipts.rs`).
    Receipt(crate::server::receipts::Receipt),
}

/// The append-only spool file.
#[derive(Debug)]
pub struct Spool {
    path: PathBuf,
    file: std::fs::File,
    bytes: u64,
}

impl Spool {
    /// Opens (creating, owner-only: results hold diffs) the spool.
    pub fn open(path: &Path) -> Result<Spool, SpoolError> {
        let io = |source| SpoolError::Io { path: path.to_path_buf(), source };
        let file =
            std::fs::OpenOptions::new().create(true).append(true).read(true).mode(0o600).open(path).map_err(io)?;
        let bytes = file.metadata().map_err(io)?.len();
        Ok(Spool { path: path.to_path_buf(), file, bytes })
    }

    pub fn is_empty(&self) -> bool {
        self.bytes == 0
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Appends the records and fsyncs: once this returns they survive a
    /// crash or a power cut.
    pub fn append(&mut self, records: &[Record]) -> Result<(), SpoolError> {
        if self.bytes >= SPOOL_MAX_BYTES {
            return Err(SpoolError::Full { path: self.path.clone(), bytes: self.bytes });
        }
        let mut text = Vec::new();
        for record in records {
            // Serialising plain data into memory does not fail.
            serde_json::to_writer(&mut text, record).unwrap_or_default();
            text.push(b'\n');
        }
        let io = |source| SpoolError::Io { path: self.path.clone(), source };
        self.file.write_all(&text).and_then(|()| self.file.sync_data()).map_err(io)?;
        self.bytes += u64::try_from(text.len()).unwrap_or(u64::MAX);
        Ok(())
    }

    /// Every complete record, oldest first.
    pub fn read(&self) -> Result<Vec<Record>, SpoolError> {
        let io = |source| SpoolError::Io { path: self.path.clone(), source };
        let file = std::fs::File::open(&self.path).map_err(io)?;
        let mut reader = std::io::BufReader::new(file);
        let mut records = Vec::new();
        let mut line = String::new();
        let mut number = 0;
        loop {
            line.clear();
            if reader.read_line(&mut line).map_err(io)? == 0 {
                return Ok(records);
            }
            number += 1;
            let Some(complete) = line.strip_suffix('\n') else {
                // A torn append: never acknowledged.
                return Ok(records);
            };
            let record = serde_json::from_str(complete).map_err(|error| SpoolError::Damaged {
                path: self.path.clone(),
                line: number,
                error: error.to_string(),
            })?;
            records.push(record);
        }
    }

    /// Empties the spool once PostgreSQL holds everything in it.
    pub fn clear(&mut self) -> Result<(), SpoolError> {
        let io = |source| SpoolError::Io { path: self.path.clone(), source };
        self.file.set_len(0).and_then(|()| self.file.sync_all()).map_err(io)?;
        self.bytes = 0;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn event(n: u32) -> Record {
        Record::Event(EventRow {
            id: format!("id{n}"),
            agent: "web01".into(),
            tag: "halite/beacon/web01/motd".into(),
            time_us: 1,
            data: "{}".into(),
            master: None,
            epoch: None,
        })
    }

    #[test]
    fn records_survive_a_reopen_and_a_torn_append_is_skipped() {
        let dir = tempfile::tempdir().unwrap();
        let path = path(dir.path());
        let mut spool = Spool::open(&path).unwrap();
        assert!(spool.is_empty());
        spool.append(&[event(1), event(2)]).unwrap();
        spool
            .append(&[Record::Facts { agent: "web01".into(), facts: serde_json::json!({"os": "debian"}), at_us: 5 }])
            .unwrap();
        drop(spool);
        // A crash in the middle of the next append.
        let mut file = std::fs::OpenOptions::new().append(true).open(&path).unwrap();
        file.write_all(b"{\"record\":\"event\",\"id\":\"id3").unwrap();
        let mut spool = Spool::open(&path).unwrap();
        assert!(!spool.is_empty());
        let records = spool.read().unwrap();
        assert_eq!(records.len(), 3);
        assert_eq!(records[1], event(2));
        spool.clear().unwrap();
        assert!(spool.is_empty());
        assert!(spool.read().unwrap().is_empty());
        assert_eq!(std::fs::metadata(&path).unwrap().len(), 0);
    }

    #[test]
    fn a_damaged_line_is_named() {
        let dir = tempfile::tempdir().unwrap();
        let path = path(dir.path());
        let mut spool = Spool::open(&path).unwrap();
        spool.append(&[event(1)]).unwrap();
        let mut file = std::fs::OpenOptions::new().append(true).open(&path).unwrap();
        file.write_all(b"garbage\n").unwrap();
        let error = spool.read().unwrap_err().to_string();
        assert!(error.contains("line 2") && error.contains("pg-spool"), "{error}");
    }
}

//! Reading the store, whichever backend holds the records: the
//! [`Records`] trait, implemented by halite.db's [`Reader`] and
//! PostgreSQL's [`PgReader`], and [`open`], which picks one from
//! master.yaml's `store:`.
//!
//! Writing needs no trait: both backends take the same queue of typed
//! records ([`super::Store`]), so the hot path pays no dynamic dispatch
//! and no boxed future per record; only the writer thread at the other end
//! differs. Reading is blocking (the CLI, start-up, tests) and object-safe,
//! so a trait object fits it.

use std::path::Path;

use halite_state::report::Report;

use super::postgres::{PgError, PgReader, PgTarget};
use super::spool::EventRow;
use super::{JobRecord, JobSummary, Reader, StoreError};

/// What the store answers, on either backend. Blocking: call it from
/// `spawn_blocking` or outside a runtime.
pub trait Records: std::fmt::Debug {
    /// The most recent `limit` jobs, newest first (by the master's clock).
    fn list(&self, limit: u32) -> Result<Vec<JobSummary>, StoreError>;
    /// One job (`jid` may be a unique prefix) with every agent's results.
    fn job(&self, jid: &str) -> Result<Option<(JobRecord, Report)>, StoreError>;
    /// How many jobs start with `jid`.
    fn count_prefix(&self, jid: &str) -> Result<i64, StoreError>;
    /// Every (agent, job) sent and not answered.
    fn unanswered(&self) -> Result<Vec<(String, String)>, StoreError>;
    /// Every agent's last facts, by id.
    fn agent_facts(&self) -> Result<Vec<(String, serde_json::Value)>, StoreError>;
    /// The agents' events recorded, oldest first (`agent` empty: all).
    /// halite.db records none: with SQLite the seen-ids log keeps only
    /// their ids (`sessions.rs`), so this is empty there.
    fn events(&self, agent: &str) -> Result<Vec<EventRow>, StoreError>;
}

impl Records for Reader {
    fn list(&self, limit: u32) -> Result<Vec<JobSummary>, StoreError> {
        Reader::list(self, limit)
    }
    fn job(&self, jid: &str) -> Result<Option<(JobRecord, Report)>, StoreError> {
        Reader::job(self, jid)
    }
    fn count_prefix(&self, jid: &str) -> Result<i64, StoreError> {
        Reader::count_prefix(self, jid)
    }
    fn unanswered(&self) -> Result<Vec<(String, String)>, StoreError> {
        Reader::unanswered(self)
    }
    fn agent_facts(&self) -> Result<Vec<(String, serde_json::Value)>, StoreError> {
        Reader::agent_facts(self)
    }
    fn events(&self, _agent: &str) -> Result<Vec<EventRow>, StoreError> {
        Ok(Vec::new())
    }
}

impl Records for PgReader {
    fn list(&self, limit: u32) -> Result<Vec<JobSummary>, StoreError> {
        Ok(PgReader::list(self, limit)?)
    }
    fn job(&self, jid: &str) -> Result<Option<(JobRecord, Report)>, StoreError> {
        Ok(PgReader::job(self, jid)?)
    }
    fn count_prefix(&self, jid: &str) -> Result<i64, StoreError> {
        Ok(PgReader::count_prefix(self, jid)?)
    }
    fn unanswered(&self) -> Result<Vec<(String, String)>, StoreError> {
        Ok(PgReader::unanswered(self)?)
    }
    fn agent_facts(&self) -> Result<Vec<(String, serde_json::Value)>, StoreError> {
        Ok(PgReader::agent_facts(self)?)
    }
    fn events(&self, agent: &str) -> Result<Vec<EventRow>, StoreError> {
        Ok(PgReader::events(self, agent)?)
    }
}

/// The records master.yaml's `store:` names: PostgreSQL when it has a
/// URL, else halite.db in `data_dir`.
pub fn open(store: &crate::config::StoreConfig, data_dir: &Path) -> Result<Box<dyn Records>, StoreError> {
    match &store.url {
        Some(url) => {
            let target = PgTarget::from_config(store, url)?;
            Ok(Box::new(PgReader::open(&target)?))
        }
        None => Ok(Box::new(Reader::open(&super::path(data_dir))?)),
    }
}

/// [`open`] on a known PostgreSQL target.
pub fn open_postgres(target: &PgTarget) -> Result<Box<dyn Records>, PgError> {
    Ok(Box::new(PgReader::open(target)?))
}

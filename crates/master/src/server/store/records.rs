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
use super::{JobFilter, JobRecord, JobSummary, Reader, StoreError};
use crate::server::receipts::{DriftCount, Receipt, ReceiptsError};

/// What the store answers, on either backend. Blocking: call it from
/// `spawn_blocking` or outside a runtime.
pub trait Records: std::fmt::Debug {
    /// The most recent `limit` jobs, newest first (by the master's clock).
    fn list(&self, limit: u32) -> Result<Vec<JobSummary>, StoreError>;
    /// The jobs `filter` picks, newest first (the API's job lists).
    fn list_filtered(&self, filter: &JobFilter) -> Result<Vec<JobSummary>, StoreError>;
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
    /// The newest `limit` remediation receipts (of `agent`, or all),
    /// newest first.
    fn receipts(&self, agent: Option<&str>, limit: u32) -> Result<Vec<Receipt>, StoreError>;
    /// Corrective receipts per agent and path (of `agent`, or all), the
    /// most restored first: what flaps.
    fn drift_counts(&self, agent: Option<&str>) -> Result<Vec<DriftCount>, StoreError>;
    /// How many corrective receipts since `since_us`, and their latencies
    /// (µs, ascending).
    fn restores_since(&self, since_us: i64) -> Result<(u64, Vec<i64>), StoreError>;
}

impl From<ReceiptsError> for StoreError {
    fn from(error: ReceiptsError) -> StoreError {
        StoreError::Sqlite { path: error.path, source: error.source }
    }
}

impl Records for Reader {
    fn list(&self, limit: u32) -> Result<Vec<JobSummary>, StoreError> {
        Reader::list(self, limit)
    }
    fn list_filtered(&self, filter: &JobFilter) -> Result<Vec<JobSummary>, StoreError> {
        Reader::list_filtered(self, filter)
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
    fn receipts(&self, agent: Option<&str>, limit: u32) -> Result<Vec<Receipt>, StoreError> {
        Ok(Reader::receipts(self).list(agent, limit)?)
    }
    fn drift_counts(&self, agent: Option<&str>) -> Result<Vec<DriftCount>, StoreError> {
        Ok(Reader::receipts(self).drift_counts(agent)?)
    }
    fn restores_since(&self, since_us: i64) -> Result<(u64, Vec<i64>), StoreError> {
        Ok(Reader::receipts(self).restores_since(since_us)?)
    }
}

impl Records for PgReader {
    fn list(&self, limit: u32) -> Result<Vec<JobSummary>, StoreError> {
        Ok(PgReader::list(self, limit)?)
    }
    fn list_filtered(&self, filter: &JobFilter) -> Result<Vec<JobSummary>, StoreError> {
        Ok(PgReader::list_filtered(self, filter)?)
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
    fn receipts(&self, agent: Option<&str>, limit: u32) -> Result<Vec<Receipt>, StoreError> {
        Ok(PgReader::receipts(self, agent, limit)?)
    }
    fn drift_counts(&self, agent: Option<&str>) -> Result<Vec<DriftCount>, StoreError> {
        Ok(PgReader::drift_counts(self, agent)?)
    }
    fn restores_since(&self, since_us: i64) -> Result<(u64, Vec<i64>), StoreError> {
        Ok(PgReader::restores_since(self, since_us)?)
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

/// The records of a running master's store: PostgreSQL's when its records
/// go there (`postgres`), else halite.db's at `file` (the API, the
/// dashboard).
pub fn open_for(file: &Path, postgres: Option<&PgTarget>) -> Result<Box<dyn Records>, StoreError> {
    match postgres {
        Some(target) => Ok(Box::new(PgReader::open(target)?)),
        None => Ok(Box::new(Reader::open(file)?)),
    }
}

/// [`open`] on a known PostgreSQL target.
pub fn open_postgres(target: &PgTarget) -> Result<Box<dyn Records>, PgError> {
    Ok(Box::new(PgReader::open(target)?))
}

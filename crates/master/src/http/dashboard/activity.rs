//! The overview's last hour: drifts, restores with their drift → restore
//! latency, reactions fired and failed, computed from what the store keeps,
//! so a restarted master shows the same hour.
//!
//! - **Restores** are the corrective receipts of the hour (one per file a
//!   job put back; `server/receipts.rs`), their latency the receipt's (the
//!   drift event's time, taken on the agent, to the result's arrival at the
//!   master): one query on the receipts' time index (store migration v7).
//!   Receipts are rows of halite.db whichever store holds the jobs.
//! - **Reactions** are the jobs a reactor started in the hour, failed when a
//!   state failed or an agent never answered: one query on the jobs' time
//!   index. A reactor whose action starts no job (`webhook`, `event`,
//!   `exec`) is not counted here (its runs are in `/metrics`).
//! - **Drifts** are the drifts the master acted on: the restores, plus the
//!   reactions an event caused that failed (a restore that did not happen).
//!   A drift no reactor acts on leaves no record, and is not counted.
//!
//! [`LastHour`] caches the figures for [`CACHE_FOR`], so a dashboard that
//! many people keep open costs one pair of queries every few seconds; the
//! queries run off the runtime's threads. With the store on PostgreSQL the
//! reactions are read there (the same query), the receipts still from
//! halite.db.

use std::path::PathBuf;
use std::time::Duration;

use serde::Serialize;
use tokio::sync::Mutex;
use tokio::time::Instant;

use crate::server::store::postgres::{PgReader, PgTarget};
use crate::server::store::{Reactions, Reader};

use super::DashboardError;

/// How far back the overview looks.
pub const WINDOW: Duration = Duration::from_secs(3600);

/// How long one reading of the store serves every overview.
pub const CACHE_FOR: Duration = Duration::from_secs(5);

/// What the overview prints for the last hour.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct Summary {
    pub drifts: u64,
    pub restores: u64,
    /// Reactions an event caused whose job failed.
    pub restores_failed: u64,
    /// Drift → restore latency, milliseconds, of the restores in the window.
    pub p50_ms: Option<f64>,
    pub p99_ms: Option<f64>,
    pub reactions_fired: u64,
    pub reactions_failed: u64,
}

impl Summary {
    /// The figures from the store's rows: corrective receipts (`restores`,
    /// their latencies in µs, ascending) and reactions.
    pub fn of(restores: u64, latencies_us: &[i64], reactions: Reactions) -> Summary {
        let count = |n: i64| u64::try_from(n).unwrap_or(0);
        Summary {
            drifts: restores + count(reactions.failed_on_event),
            restores,
            restores_failed: count(reactions.failed_on_event),
            p50_ms: percentile(latencies_us, 50),
            p99_ms: percentile(latencies_us, 99),
            reactions_fired: count(reactions.fired),
            reactions_failed: count(reactions.failed),
        }
    }
}

/// The nearest-rank percentile of sorted microsecond values, in ms.
fn percentile(sorted_us: &[i64], p: usize) -> Option<f64> {
    if sorted_us.is_empty() {
        return None;
    }
    let rank = (p * sorted_us.len()).div_ceil(100).max(1);
    #[allow(clippy::cast_precision_loss)]
    Some(sorted_us[rank - 1] as f64 / 1000.0)
}

/// Reads the hour ending at `now_us` from the store at `path` (and the
/// jobs from `postgres` when the records go there). Blocking.
pub fn read(path: &std::path::Path, postgres: Option<&PgTarget>, now_us: i64) -> Result<Summary, DashboardError> {
    let since = now_us - i64::try_from(WINDOW.as_micros()).unwrap_or(i64::MAX);
    let ((restores, latencies), reactions) = match postgres {
        Some(target) => {
            let reader = PgReader::open(target)?;
            (reader.restores_since(since)?, reader.reactions_since(since)?)
        }
        None => {
            let reader = Reader::open(path)?;
            (reader.receipts().restores_since(since)?, reader.reactions_since(since)?)
        }
    };
    Ok(Summary::of(restores, &latencies, reactions))
}

/// The last hour, read from the store at most once per [`CACHE_FOR`].
#[derive(Debug)]
pub struct LastHour {
    /// halite.db; `None`: this master keeps no store (all zeros).
    store: Option<PathBuf>,
    /// Where the jobs are when the store is PostgreSQL.
    postgres: Option<PgTarget>,
    /// The last reading and when it was taken. Held across the reading, so
    /// overviews asked for at once share one.
    cached: Mutex<Option<(Instant, Summary)>>,
}

impl LastHour {
    pub fn new(store: Option<PathBuf>, postgres: Option<PgTarget>) -> LastHour {
        LastHour { store, postgres, cached: Mutex::new(None) }
    }

    /// The figures, fresh within [`CACHE_FOR`].
    pub async fn summary(&self) -> Result<Summary, DashboardError> {
        let Some(path) = self.store.clone() else { return Ok(Summary::default()) };
        let mut cached = self.cached.lock().await;
        if let Some((at, summary)) = cached.as_ref()
            && at.elapsed() < CACHE_FOR
        {
            return Ok(summary.clone());
        }
        let (now, postgres) = (halite_proto::event::now_us(), self.postgres.clone());
        let summary = tokio::task::spawn_blocking(move || read(&path, postgres.as_ref(), now)).await??;
        *cached = Some((Instant::now(), summary.clone()));
        Ok(summary)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::server::receipts::{Receipt, ReceiptKind};
    use crate::server::store::{JobRecord, Store};
    use halite_proto::{Outcome, StateResult};

    const HOUR_US: i64 = 3_600_000_000;

    fn receipt(jid: &str, kind: ReceiptKind, latency_us: Option<i64>, at_us: i64) -> Receipt {
        Receipt {
            jid: jid.into(),
            agent: "web01".into(),
            state: "conf".into(),
            path: "/etc/app.conf".into(),
            kind,
            cause: "event:E".into(),
            cause_event: Some("E".into()),
            hash_before: None,
            hash_after: None,
            latency_us,
            at_us,
        }
    }

    fn job(jid: &str, cause: &str, reactor: Option<&str>, created_us: i64) -> JobRecord {
        JobRecord {
            jid: jid.into(),
            created_us,
            cause: cause.into(),
            reactor: reactor.map(str::to_owned),
            target: "web01".into(),
            states: vec!["conf".into()],
            test: false,
        }
    }

    fn result(failed: bool) -> Vec<StateResult> {
        let outcome = if failed { Outcome::Failed { error: "no".into() } } else { Outcome::Unchanged };
        vec![StateResult { id: "conf".into(), kind: "file.managed".into(), outcome, diff: None, duration_us: 1 }]
    }

    /// From stored rows only: corrective receipts of the hour are the
    /// restores with their latency; reactor jobs are reactions, failed by a
    /// failed state or no answer; an event-caused failure is a drift not
    /// restored; anything older than the hour, intentional, or started by
    /// an operator is not counted. Read again from the file, as a
    /// restarted master would.
    #[tokio::test]
    async fn the_last_hour_is_read_from_the_store() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("halite.db");
        let now = 10 * HOUR_US;
        let store = Store::open(&path).unwrap();
        store.receipts(vec![
            receipt("J1", ReceiptKind::Corrective, Some(4_000), now - 1_000),
            receipt("J2", ReceiptKind::Corrective, Some(10_000), now - 2_000),
            receipt("J3", ReceiptKind::Corrective, None, now - 3_000),
            receipt("J4", ReceiptKind::Intentional, Some(1_000), now - 4_000),
            receipt("J0", ReceiptKind::Corrective, Some(99_000), now - HOUR_US - 1),
        ]);
        for (jid, cause, reactor, created, failed) in [
            ("R1", "event:E1", Some("restore"), now - 10, false),
            ("R2", "event:E2", Some("restore"), now - 20, true),
            ("R3", "master", Some("nightly"), now - 30, true),
            ("R4", "event:E4", Some("restore"), now - 40, false),
            ("OP", "operator:apply web01", None, now - 50, true),
            ("R0", "event:E0", Some("restore"), now - HOUR_US - 1, true),
        ] {
            store.started(job(jid, cause, reactor, created), "web01").await;
            if jid == "R4" {
                store.no_answer(jid, "web01", "gone").await;
            } else {
                store.answered(jid, "web01", result(failed)).await;
            }
        }
        store.close().await;
        drop(store);
        let summary = read(&path, None, now).unwrap();
        assert_eq!(
            summary,
            Summary {
                drifts: 3 + 2,
                restores: 3,
                restores_failed: 2,
                p50_ms: Some(4.0),
                p99_ms: Some(10.0),
                reactions_fired: 4,
                reactions_failed: 3,
            }
        );
        // An hour later, all of it is out of the window.
        assert_eq!(read(&path, None, now + HOUR_US).unwrap(), Summary::default());
    }

    #[test]
    fn percentiles_are_nearest_rank() {
        let values: Vec<i64> = (1..=100).map(|ms| ms * 1000).collect();
        assert_eq!(percentile(&values, 50), Some(50.0));
        assert_eq!(percentile(&values, 99), Some(99.0));
        assert_eq!(percentile(&[3000], 99), Some(3.0));
        assert_eq!(percentile(&[], 50), None);
    }
}

//! The overview's last hour: drifts, restores with their drift → restore
//! latency, reactions fired and failed, counted from the bus.
//!
//! [`Activity`] is a pure window fed one event at a time
//! ([`Activity::observe`]) and read with [`Activity::summary`]; [`spawn`]
//! feeds it from an in-process bus subscription. The subscription is the
//! bus's bounded broadcast: when this task falls behind, the bus drops
//! events for it (never waits for it) and the summary says how many were
//! missed, so the dashboard never slows the master.
//!
//! The agent page's receipts are the store's (`server/receipts.rs`);
//! this window only counts.
//!
//! A restore is a job whose `cause` is a drift event (a beacon event with
//! `data.managed == true`) returning without a failed state; its latency
//! is from the drift event's time (taken on the agent) to the job's result
//! event (taken on the master when the result arrived).

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use halite_proto::Event;
use serde::Serialize;
use tokio::sync::broadcast::error::RecvError;
use tokio_util::sync::CancellationToken;

/// How far back the overview looks.
pub const WINDOW: Duration = Duration::from_secs(3600);

/// At most this many timestamps of each kind (drifts, restores, fired,
/// failed) are kept for the window; beyond it the oldest are forgotten and
/// the summary says its counts are lower bounds (`truncated`).
pub const MAX_KEPT: usize = 50_000;

/// At most this many drifts and jobs still waiting to be matched with their
/// restore; the oldest is forgotten first (its restore then goes uncounted).
pub const MAX_OPEN: usize = 10_000;

/// A drift waiting for its restore: when it happened.
#[derive(Debug, Clone, Copy)]
struct OpenDrift {
    at_us: i64,
}

/// One timed thing in the window.
#[derive(Debug, Clone, Copy)]
struct Stamp {
    at_us: i64,
    /// A restore's latency; zero for the others.
    latency_us: i64,
}

/// The last hour, as the overview shows it.
#[derive(Debug, Default)]
pub struct Activity {
    drifts: VecDeque<Stamp>,
    restores: VecDeque<Stamp>,
    restores_failed: VecDeque<Stamp>,
    fired: VecDeque<Stamp>,
    failed: VecDeque<Stamp>,
    /// Drift event id → the drift, until a job names it as its cause.
    open_drifts: HashMap<String, OpenDrift>,
    open_drift_order: VecDeque<String>,
    /// Job id → the drift that caused it, until it returns.
    open_jobs: HashMap<String, OpenDrift>,
    open_job_order: VecDeque<String>,
    /// Events the bus dropped for us since start.
    missed: u64,
    /// Whether a full queue made us forget stamps still in the window.
    truncated: bool,
}

/// What the overview prints for the last hour.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct Summary {
    pub drifts: usize,
    pub restores: usize,
    pub restores_failed: usize,
    /// Drift → restore latency, milliseconds, of the restores in the window.
    pub p50_ms: Option<f64>,
    pub p99_ms: Option<f64>,
    pub reactions_fired: usize,
    pub reactions_failed: usize,
    /// Events the dashboard's subscription missed since the master started
    /// (the counts are then lower bounds).
    pub missed: u64,
    pub truncated: bool,
}

impl Activity {
    /// Takes note of one bus event.
    pub fn observe(&mut self, event: &Event) {
        let now = event.time_us;
        let Some(rest) = event.tag.strip_prefix("halite/") else { return };
        let parts: Vec<&str> = rest.split('/').collect();
        match parts.as_slice() {
            ["beacon", _, _] if matches!(event.data.get("managed"), Some(halite_proto::Value::Bool(true))) => {
                self.push(Kind::Drift, Stamp { at_us: now, latency_us: 0 });
                let drift = OpenDrift { at_us: now };
                remember(&mut self.open_drifts, &mut self.open_drift_order, event.id.to_string(), drift);
            }
            ["job", jid, "new"] => {
                let cause = event.data.get("cause").and_then(|c| c.as_str()).map(str::to_owned);
                if let Some(drift) = cause.and_then(|c| self.open_drifts.remove(&c)) {
                    remember(&mut self.open_jobs, &mut self.open_job_order, (*jid).to_owned(), drift);
                }
            }
            ["job", jid, "ret", _] => {
                if let Some(drift) = self.open_jobs.remove(*jid) {
                    let failed = matches!(event.data.get("failed"), Some(halite_proto::Value::Bool(true)));
                    let stamp = Stamp { at_us: now, latency_us: (now - drift.at_us).max(0) };
                    self.push(if failed { Kind::RestoreFailed } else { Kind::Restore }, stamp);
                }
            }
            ["reactor", _, "fired"] => self.push(Kind::Fired, Stamp { at_us: now, latency_us: 0 }),
            ["reactor", _, "failed"] => self.push(Kind::Failed, Stamp { at_us: now, latency_us: 0 }),
            _ => {}
        }
    }

    /// The bus dropped `count` events for this subscriber.
    pub fn missed(&mut self, count: u64) {
        self.missed += count;
    }

    /// The window ending at `now_us`.
    pub fn summary(&mut self, now_us: i64) -> Summary {
        let since = now_us - i64::try_from(WINDOW.as_micros()).unwrap_or(i64::MAX);
        for queue in
            [&mut self.drifts, &mut self.restores, &mut self.restores_failed, &mut self.fired, &mut self.failed]
        {
            while queue.front().is_some_and(|s| s.at_us < since) {
                queue.pop_front();
            }
        }
        let mut latencies: Vec<i64> = self.restores.iter().map(|s| s.latency_us).collect();
        latencies.sort_unstable();
        Summary {
            drifts: self.drifts.len(),
            restores: self.restores.len(),
            restores_failed: self.restores_failed.len(),
            p50_ms: percentile(&latencies, 50),
            p99_ms: percentile(&latencies, 99),
            reactions_fired: self.fired.len(),
            reactions_failed: self.failed.len(),
            missed: self.missed,
            truncated: self.truncated,
        }
    }

    fn push(&mut self, kind: Kind, stamp: Stamp) {
        let queue = match kind {
            Kind::Drift => &mut self.drifts,
            Kind::Restore => &mut self.restores,
            Kind::RestoreFailed => &mut self.restores_failed,
            Kind::Fired => &mut self.fired,
            Kind::Failed => &mut self.failed,
        };
        if queue.len() == MAX_KEPT {
            queue.pop_front();
            self.truncated = true;
        }
        queue.push_back(stamp);
    }
}

#[derive(Debug, Clone, Copy)]
enum Kind {
    Drift,
    Restore,
    RestoreFailed,
    Fired,
    Failed,
}

/// Keeps `key → value` in a map bounded by [`MAX_OPEN`], forgetting the
/// oldest entry first.
fn remember<T>(map: &mut HashMap<String, T>, order: &mut VecDeque<String>, key: String, value: T) {
    while map.len() >= MAX_OPEN {
        let Some(oldest) = order.pop_front() else { break };
        map.remove(&oldest);
    }
    // Entries matched earlier are still in `order`; dropping them here
    // keeps `order` bounded too.
    while order.len() >= MAX_OPEN {
        order.pop_front();
    }
    order.push_back(key.clone());
    map.insert(key, value);
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

/// The shared window the dashboard reads.
pub type Shared = Arc<Mutex<Activity>>;

/// Feeds a new [`Activity`] from `bus` until `cancel`; returns it.
pub fn spawn(bus: &crate::server::bus::Bus, cancel: CancellationToken) -> Shared {
    let shared: Shared = Arc::default();
    let mut events = bus.subscribe();
    let activity = shared.clone();
    tokio::spawn(async move {
        loop {
            let received = tokio::select! {
                () = cancel.cancelled() => return,
                received = events.recv() => received,
            };
            let mut window = activity.lock().unwrap_or_else(|p| p.into_inner());
            match received {
                Ok(event) => window.observe(&event),
                Err(RecvError::Lagged(count)) => window.missed(count),
                Err(RecvError::Closed) => return,
            }
        }
    });
    shared
}

#[cfg(test)]
mod tests {
    use super::*;
    use halite_proto::Value;

    fn at(mut event: Event, time_us: i64) -> Arc<Event> {
        event.time_us = time_us;
        Arc::new(event)
    }

    fn drift(agent: &str, time_us: i64) -> Arc<Event> {
        let data = Value::map().with("managed", true).with("path", "/etc/app.conf").with("sha256", "ab12");
        at(Event::new(format!("halite/beacon/{agent}/conf"), agent, data), time_us)
    }

    fn job(jid: &str, cause: &Event, time_us: i64) -> Arc<Event> {
        let data = Value::map().with("cause", cause.id.to_string());
        at(Event::new(format!("halite/job/{jid}/new"), cause.agent.as_str(), data), time_us)
    }

    fn ret(jid: &str, failed: bool, time_us: i64) -> Arc<Event> {
        at(Event::new(format!("halite/job/{jid}/ret/web01"), "web01", Value::map().with("failed", failed)), time_us)
    }

    const HOUR_US: i64 = 3_600_000_000;

    #[test]
    fn the_window_counts_drifts_restores_and_their_latency() {
        let mut activity = Activity::default();
        let start = 10 * HOUR_US;
        // Three drifts: two restored (4 ms and 10 ms), one whose job failed.
        let drifts = [drift("web01", start), drift("web01", start + 100), drift("web01", start + 200)];
        for (i, (d, latency, failed)) in
            [(0, 4_000, false), (1, 10_000, false), (2, 7_000, true)].into_iter().enumerate()
        {
            let jid = format!("J{i}");
            activity.observe(&drifts[d]);
            activity.observe(&job(&jid, &drifts[d], drifts[d].time_us + 1));
            activity.observe(&ret(&jid, failed, drifts[d].time_us + latency));
        }
        // A job with no drift cause, and a beacon event on an unmanaged file.
        activity.observe(&at(Event::new("halite/job/X/new", "web01", Value::map()), start));
        activity.observe(&ret("X", false, start + 5));
        activity.observe(&at(Event::new("halite/beacon/web01/load", "web01", Value::map()), start));
        activity.observe(&at(Event::new("halite/reactor/r/fired", "web01", Value::map()), start));
        activity.observe(&at(Event::new("halite/reactor/r/fired", "web01", Value::map()), start));
        activity.observe(&at(Event::new("halite/reactor/r/failed", "web01", Value::map()), start));
        let summary = activity.summary(start + 1_000_000);
        assert_eq!(
            summary,
            Summary {
                drifts: 3,
                restores: 2,
                restores_failed: 1,
                p50_ms: Some(4.0),
                p99_ms: Some(10.0),
                reactions_fired: 2,
                reactions_failed: 1,
                missed: 0,
                truncated: false,
            }
        );
        // An hour later, all of it is out of the window.
        let later = activity.summary(start + HOUR_US + 20_000);
        assert_eq!(later, Summary::default());
    }

    #[test]
    fn percentiles_are_nearest_rank() {
        let values: Vec<i64> = (1..=100).map(|ms| ms * 1000).collect();
        assert_eq!(percentile(&values, 50), Some(50.0));
        assert_eq!(percentile(&values, 99), Some(99.0));
        assert_eq!(percentile(&[3000], 99), Some(3.0));
        assert_eq!(percentile(&[], 50), None);
    }

    #[test]
    fn open_drifts_stay_bounded() {
        let mut activity = Activity::default();
        for i in 0..(MAX_OPEN + 10) {
            activity.observe(&drift("web01", i64::try_from(i).unwrap()));
        }
        assert_eq!(activity.open_drifts.len(), MAX_OPEN);
        assert!(activity.open_drift_order.len() <= MAX_OPEN);
    }
}

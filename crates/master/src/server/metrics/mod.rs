//! The master's Prometheus metrics: what the hot paths count, and how a
//! scrape reads it ([`listener`] serves `/metrics`).
//!
//! Every counter is a plain atomic in one static, [`METRICS`], so a hook in
//! the link loop, the bus or the job path is one line and costs an atomic
//! add: no lock, no allocation, no label lookup per event. Labels come
//! from fixed lists, which bounds their cardinality:
//! - `prefix` (events in and out): the second segment of the tag among
//!   [`PREFIXES`] (`beacon`, `agent`, `job`, `reactor`, `master`, `key`), any
//!   other tag counted as `other`;
//! - `cause` (jobs): [`CAUSES`], the job's cause without its detail
//!   (`operator`, `event`, `connected`, `reload`, `schedule`, `master`,
//!   `other`); `outcome`: [`OUTCOMES`];
//! - `reactor`: the names of the tree's reactors, each given a slot the
//!   first time it fires (a lock-free table of [`REACTOR_SLOTS`] names set
//!   once); reactors beyond that are counted under `reactor="other"`.
//!   Reactor events are raised by the master only (an agent may raise only
//!   its own beacon tags), so the names are the operator's.
//!
//! Gauges (sessions, reaction queues, store size) are read at scrape time
//! from the running master, not kept up to date on any path.

use std::sync::OnceLock;
use std::sync::atomic::{AtomicU64, Ordering};

use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric};
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::registry::Unit;

pub mod listener;

/// The tag prefixes events are counted by (`halite/<prefix>/…`); anything
/// else is `other`, the last label.
pub const PREFIXES: [&str; 7] = ["beacon", "agent", "job", "reactor", "master", "key", "other"];
/// What caused a job, by the first word of its recorded cause.
pub const CAUSES: [&str; 7] = ["operator", "event", "connected", "reload", "schedule", "master", "other"];
/// How a job ended: any state failed; else any changed (or would, in test
/// mode); else unchanged; or the agent did not answer.
pub const OUTCOMES: [&str; 4] = ["failed", "changed", "unchanged", "no_answer"];
/// Reactor names with counters of their own; more are `other`.
pub const REACTOR_SLOTS: usize = 256;
/// Upper bounds of the drift→restore latency buckets, in seconds.
pub const LATENCY_BUCKETS: [f64; 14] =
    [0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0];

/// One reactor's counters.
#[derive(Debug)]
struct ReactorSlot {
    name: OnceLock<Box<str>>,
    fired: AtomicU64,
    failed: AtomicU64,
    throttled: AtomicU64,
}

impl ReactorSlot {
    const fn new() -> Self {
        ReactorSlot {
            name: OnceLock::new(),
            fired: AtomicU64::new(0),
            failed: AtomicU64::new(0),
            throttled: AtomicU64::new(0),
        }
    }
}

/// Every counter of the master (module docs).
#[derive(Debug)]
pub struct Metrics {
    events_in: [AtomicU64; PREFIXES.len()],
    events_out: [AtomicU64; PREFIXES.len()],
    handshakes_done: AtomicU64,
    handshakes_failed: AtomicU64,
    event_acks: AtomicU64,
    result_acks: AtomicU64,
    jobs: [[AtomicU64; OUTCOMES.len()]; CAUSES.len()],
    reactors: [ReactorSlot; REACTOR_SLOTS + 1],
    reloads_ok: AtomicU64,
    reloads_failed: AtomicU64,
    receipts_corrective: AtomicU64,
    receipts_intentional: AtomicU64,
    /// Drift→restore latency: one count per bucket (not cumulative), the
    /// observations above the last bound, the sum in microseconds.
    latency_buckets: [AtomicU64; LATENCY_BUCKETS.len() + 1],
    latency_sum_us: AtomicU64,
}

/// The master's metrics, counted from wherever they happen.
pub static METRICS: Metrics = Metrics::new();

/// The master's metrics.
pub fn get() -> &'static Metrics {
    &METRICS
}

/// The index of `tag`'s prefix in [`PREFIXES`].
pub fn prefix_of(tag: &str) -> usize {
    let other = PREFIXES.len() - 1;
    let Some(rest) = tag.strip_prefix("halite/") else { return other };
    let first = rest.split('/').next().unwrap_or("");
    PREFIXES[..other].iter().position(|p| *p == first).unwrap_or(other)
}

/// The index of a job's cause (`operator:…`, `event:…`, `schedule:…`,
/// `connected`, …) in [`CAUSES`].
pub fn cause_of(cause: &str) -> usize {
    let other = CAUSES.len() - 1;
    let first = cause.split(':').next().unwrap_or("");
    CAUSES[..other].iter().position(|c| *c == first).unwrap_or(other)
}

/// The bucket of a latency in microseconds (the last: above every bound).
fn bucket_of(latency_us: i64) -> usize {
    #[allow(clippy::cast_precision_loss)]
    let seconds = latency_us.max(0) as f64 / 1e6;
    LATENCY_BUCKETS.iter().position(|bound| seconds <= *bound).unwrap_or(LATENCY_BUCKETS.len())
}

/// A stable slot for a name: FNV-1a, so the same name lands where it did.
fn slot_hash(name: &str) -> usize {
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for byte in name.bytes() {
        hash = (hash ^ u64::from(byte)).wrapping_mul(0x0100_0000_01b3);
    }
    usize::try_from(hash % REACTOR_SLOTS as u64).unwrap_or(0)
}

fn add(counter: &AtomicU64, n: u64) {
    counter.fetch_add(n, Ordering::Relaxed);
}

fn read(counter: &AtomicU64) -> u64 {
    counter.load(Ordering::Relaxed)
}

impl Metrics {
    const fn new() -> Self {
        Metrics {
            events_in: [const { AtomicU64::new(0) }; PREFIXES.len()],
            events_out: [const { AtomicU64::new(0) }; PREFIXES.len()],
            handshakes_done: AtomicU64::new(0),
            handshakes_failed: AtomicU64::new(0),
            event_acks: AtomicU64::new(0),
            result_acks: AtomicU64::new(0),
            jobs: [const { [const { AtomicU64::new(0) }; OUTCOMES.len()] }; CAUSES.len()],
            reactors: [const { ReactorSlot::new() }; REACTOR_SLOTS + 1],
            reloads_ok: AtomicU64::new(0),
            reloads_failed: AtomicU64::new(0),
            receipts_corrective: AtomicU64::new(0),
            receipts_intentional: AtomicU64::new(0),
            latency_buckets: [const { AtomicU64::new(0) }; LATENCY_BUCKETS.len() + 1],
            latency_sum_us: AtomicU64::new(0),
        }
    }

    /// An agent's event was taken (published and reacted to).
    pub fn event_in(&self, tag: &str) {
        add(&self.events_in[prefix_of(tag)], 1);
    }

    /// An event went on the bus (`server/bus.rs`): counted out, and what it
    /// says of reactors and reloads.
    pub fn event_out(&self, tag: &str) {
        let prefix = prefix_of(tag);
        add(&self.events_out[prefix], 1);
        match PREFIXES[prefix] {
            "reactor" => {
                let mut parts = tag.splitn(4, '/').skip(2);
                if let (Some(name), Some(what)) = (parts.next(), parts.next()) {
                    let slot = self.reactor(name);
                    match what {
                        "fired" => add(&slot.fired, 1),
                        "failed" => add(&slot.failed, 1),
                        "throttled" => add(&slot.throttled, 1),
                        _ => {}
                    }
                }
            }
            "master" => match tag {
                "halite/master/tree/reloaded" => add(&self.reloads_ok, 1),
                "halite/master/tree/failed" => add(&self.reloads_failed, 1),
                _ => {}
            },
            _ => {}
        }
    }

    /// The slot of reactor `name`: found by probing from its hash, taken
    /// (its name set once) when free; `other` when every slot is taken.
    fn reactor(&self, name: &str) -> &ReactorSlot {
        let start = slot_hash(name);
        for i in 0..REACTOR_SLOTS {
            let slot = &self.reactors[(start + i) % REACTOR_SLOTS];
            // The allocation happens once per name, the first time it fires.
            if &**slot.name.get_or_init(|| name.into()) == name {
                return slot;
            }
        }
        &self.reactors[REACTOR_SLOTS]
    }

    /// A link handshake ended: a session key agreed (`true`), or not.
    pub fn handshake(&self, done: bool) {
        add(if done { &self.handshakes_done } else { &self.handshakes_failed }, 1);
    }

    /// Event ids acknowledged to an agent (it forgets them from its outbox).
    pub fn events_acked(&self, n: usize) {
        add(&self.event_acks, u64::try_from(n).unwrap_or(u64::MAX));
    }

    /// A job result acknowledged to its agent (stored).
    pub fn result_acked(&self) {
        add(&self.result_acks, 1);
    }

    /// A job sent with `cause` ended with `outcome` (an index in
    /// [`OUTCOMES`]; see [`outcome_of`]).
    pub fn job(&self, cause: &str, outcome: usize) {
        add(&self.jobs[cause_of(cause)][outcome.min(OUTCOMES.len() - 1)], 1);
    }

    /// A receipt was made; a corrective one with a latency is observed in
    /// the drift→restore histogram.
    pub fn receipt(&self, corrective: bool, latency_us: Option<i64>) {
        add(if corrective { &self.receipts_corrective } else { &self.receipts_intentional }, 1);
        if let (true, Some(latency)) = (corrective, latency_us) {
            add(&self.latency_buckets[bucket_of(latency)], 1);
            add(&self.latency_sum_us, u64::try_from(latency.max(0)).unwrap_or(0));
        }
    }

    /// Encodes the counters; `gauges` are read from the running master.
    fn encode(&self, gauges: &Gauges, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        counter_family(
            &mut encoder,
            "halite_events_in",
            "Events taken from agents, by tag prefix.",
            "prefix",
            &PREFIXES,
            &self.events_in,
        )?;
        counter_family(
            &mut encoder,
            "halite_events_out",
            "Events published on the bus, by tag prefix.",
            "prefix",
            &PREFIXES,
            &self.events_out,
        )?;
        let handshakes = [read(&self.handshakes_done), read(&self.handshakes_failed)];
        labelled_counters(
            &mut encoder,
            "halite_handshakes",
            "Link handshakes ended, by result.",
            &[(&[("result", "done")], handshakes[0]), (&[("result", "failed")], handshakes[1])],
        )?;
        labelled_counters(
            &mut encoder,
            "halite_acks",
            "Acknowledgements sent to agents (each lets the agent drop a message from its outbox), by what they acknowledge.",
            &[(&[("of", "event")], read(&self.event_acks)), (&[("of", "result")], read(&self.result_acks))],
        )?;
        {
            let mut family = encoder.encode_descriptor(
                "halite_jobs",
                "Jobs the master sent and waited for, by cause and outcome.",
                None,
                ConstCounter::new(0u64).metric_type(),
            )?;
            for (cause, row) in CAUSES.iter().zip(&self.jobs) {
                for (outcome, count) in OUTCOMES.iter().zip(row) {
                    let labels = [("cause", *cause), ("outcome", *outcome)];
                    ConstCounter::new(read(count)).encode(family.encode_family(&labels)?)?;
                }
            }
        }
        {
            let mut family = encoder.encode_descriptor(
                "halite_reactions",
                "Reactions by reactor and result (fired, failed, throttled).",
                None,
                ConstCounter::new(0u64).metric_type(),
            )?;
            for slot in &self.reactors {
                let name = match (slot.name.get(), std::ptr::eq(slot, &self.reactors[REACTOR_SLOTS])) {
                    (_, true) => "other",
                    (Some(name), false) => name,
                    (None, false) => continue,
                };
                for (result, count) in
                    [("fired", &slot.fired), ("failed", &slot.failed), ("throttled", &slot.throttled)]
                {
                    let labels = [("reactor", name), ("result", result)];
                    ConstCounter::new(read(count)).encode(family.encode_family(&labels)?)?;
                }
            }
        }
        labelled_counters(
            &mut encoder,
            "halite_tree_reloads",
            "Reloads of the state tree, by result.",
            &[
                (&[("result", "reloaded")], read(&self.reloads_ok)),
                (&[("result", "failed")], read(&self.reloads_failed)),
            ],
        )?;
        labelled_counters(
            &mut encoder,
            "halite_receipts",
            "Remediation receipts: files changed, by kind.",
            &[
                (&[("kind", "corrective")], read(&self.receipts_corrective)),
                (&[("kind", "intentional")], read(&self.receipts_intentional)),
            ],
        )?;
        {
            // Per-bucket counts (the encoder makes them cumulative); the
            // count is their sum, so a scrape is consistent whatever is
            // observed meanwhile (the sum may be a moment behind).
            let buckets: Vec<(f64, u64)> = LATENCY_BUCKETS
                .iter()
                .copied()
                .chain(std::iter::once(f64::MAX))
                .zip(&self.latency_buckets)
                .map(|(bound, count)| (bound, read(count)))
                .collect();
            let count = buckets.iter().map(|(_, n)| n).sum();
            #[allow(clippy::cast_precision_loss)]
            let sum = read(&self.latency_sum_us) as f64 / 1e6;
            let mut metric = encoder.encode_descriptor(
                "halite_drift_restore_latency",
                "From a drift event's timestamp to its restore's result at the master (corrective receipts).",
                Some(&Unit::Seconds),
                prometheus_client::metrics::MetricType::Histogram,
            )?;
            metric.encode_histogram::<prometheus_client::encoding::NoLabelSet>(sum, count, &buckets, None)?;
        }
        gauge(&mut encoder, "halite_sessions", "Agent sessions open, accepted or not.", gauges.sessions)?;
        gauge(&mut encoder, "halite_sessions_accepted", "Agent sessions of accepted keys.", gauges.accepted)?;
        gauge(
            &mut encoder,
            "halite_reaction_queue_depth",
            "Reactions waiting in the master's queues, all agents.",
            gauges.queued,
        )?;
        gauge(
            &mut encoder,
            "halite_reaction_queue_depth_max",
            "Reactions waiting for the agent with the most.",
            gauges.queued_max,
        )?;
        let metric = encoder.encode_descriptor(
            "halite_store_size",
            "halite.db and its WAL on disk.",
            Some(&Unit::Bytes),
            ConstGauge::new(0i64).metric_type(),
        )?;
        ConstGauge::new(gauges.store_bytes).encode(metric)?;
        Ok(())
    }
}

/// What a scrape reads from the running master.
#[derive(Debug, Clone, Copy, Default)]
pub struct Gauges {
    pub sessions: i64,
    pub accepted: i64,
    pub queued: i64,
    pub queued_max: i64,
    pub store_bytes: i64,
}

/// The outcome index of a job's result ([`OUTCOMES`]).
pub fn outcome_of(result: &halite_proto::JobResult) -> usize {
    if result.results.iter().any(|r| r.outcome.is_failed()) {
        0
    } else if result
        .results
        .iter()
        .any(|r| matches!(r.outcome, halite_proto::Outcome::Changed { .. } | halite_proto::Outcome::WouldChange { .. }))
    {
        1
    } else {
        2
    }
}

/// The outcome index of a job with no answer.
pub const NO_ANSWER: usize = 3;

fn counter_family(
    encoder: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    label: &str,
    values: &[&str],
    counts: &[AtomicU64],
) -> Result<(), std::fmt::Error> {
    let mut family = encoder.encode_descriptor(name, help, None, ConstCounter::new(0u64).metric_type())?;
    for (value, count) in values.iter().zip(counts) {
        let labels = [(label, *value)];
        ConstCounter::new(read(count)).encode(family.encode_family(&labels)?)?;
    }
    Ok(())
}

type Labelled<'a> = (&'a [(&'a str, &'a str)], u64);

fn labelled_counters(
    encoder: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    rows: &[Labelled<'_>],
) -> Result<(), std::fmt::Error> {
    let mut family = encoder.encode_descriptor(name, help, None, ConstCounter::new(0u64).metric_type())?;
    for (labels, count) in rows {
        let labels = labels.to_vec();
        ConstCounter::new(*count).encode(family.encode_family(&labels)?)?;
    }
    Ok(())
}

fn gauge(encoder: &mut DescriptorEncoder, name: &str, help: &str, value: i64) -> Result<(), std::fmt::Error> {
    let metric = encoder.encode_descriptor(name, help, None, ConstGauge::new(0i64).metric_type())?;
    ConstGauge::new(value).encode(metric)
}

/// The scrape's collector: the static counters and the gauges read for it.
#[derive(Debug)]
struct Scrape {
    gauges: Gauges,
}

impl prometheus_client::collector::Collector for Scrape {
    fn encode(&self, encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        METRICS.encode(&self.gauges, encoder)
    }
}

/// The text of one scrape (OpenMetrics text format, which Prometheus reads).
pub fn render(gauges: Gauges) -> Result<String, std::fmt::Error> {
    let mut registry = prometheus_client::registry::Registry::default();
    registry.register_collector(Box::new(Scrape { gauges }));
    let mut text = String::new();
    prometheus_client::encoding::text::encode(&mut text, &registry)?;
    Ok(text)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tags_causes_and_latencies_fall_in_bounded_labels() {
        for (tag, prefix) in [
            ("halite/beacon/web01/nginx", "beacon"),
            ("halite/job/01J/ret/web01", "job"),
            ("halite/reactor/restore/fired", "reactor"),
            ("halite/master/tree/reloaded", "master"),
            ("halite/somethingnew/x", "other"),
            ("app/deploy", "other"),
            ("", "other"),
        ] {
            assert_eq!(PREFIXES[prefix_of(tag)], prefix, "{tag}");
        }
        for (cause, label) in [
            ("operator:halite-master apply web01", "operator"),
            ("event:01J", "event"),
            ("schedule:nightly", "schedule"),
            ("connected", "connected"),
            ("reload", "reload"),
            ("unknown", "other"),
        ] {
            assert_eq!(CAUSES[cause_of(cause)], label, "{cause}");
        }
        assert_eq!(bucket_of(0), 0);
        assert_eq!(bucket_of(1_000), 0, "a bound is inclusive");
        assert_eq!(bucket_of(1_001), 1);
        assert_eq!(bucket_of(2_000_000), 10);
        assert_eq!(bucket_of(60_000_000), LATENCY_BUCKETS.len(), "above every bound");
    }

    #[test]
    fn reactor_names_keep_their_slots_and_overflow_into_other() {
        let metrics = Metrics::new();
        let first = std::ptr::from_ref(metrics.reactor("restore-nginx"));
        assert_eq!(std::ptr::from_ref(metrics.reactor("restore-nginx")), first);
        for i in 0..REACTOR_SLOTS {
            metrics.reactor(&format!("r{i}"));
        }
        let overflow = metrics.reactor("one-too-many");
        assert!(std::ptr::eq(overflow, &metrics.reactors[REACTOR_SLOTS]));
        assert_eq!(std::ptr::from_ref(metrics.reactor("restore-nginx")), first, "still its own");
    }

    #[test]
    fn a_scrape_names_every_family_by_convention() {
        METRICS.receipt(true, Some(3_000));
        METRICS.event_out("halite/reactor/restore-motd/fired");
        let text = render(Gauges { store_bytes: 4096, ..Gauges::default() }).unwrap();
        for line in [
            "# TYPE halite_events_in counter",
            "halite_events_in_total{prefix=\"beacon\"}",
            "# TYPE halite_drift_restore_latency_seconds histogram",
            "halite_drift_restore_latency_seconds_bucket{le=\"0.005\"} ",
            "halite_drift_restore_latency_seconds_count ",
            "halite_reactions_total{reactor=\"restore-motd\",result=\"fired\"}",
            "halite_store_size_bytes 4096",
            "# EOF",
        ] {
            assert!(text.contains(line), "{line} in\n{text}");
        }
    }
}

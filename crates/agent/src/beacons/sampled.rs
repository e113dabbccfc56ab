//! What every sampled beacon kind shares (`cpu`, `disk`, `load`, `memory`,
//! `process`, `service`): their timing settings, the one state machine that
//! turns samples into state changes, and the thread that samples on an
//! interval. Not a beacon kind itself.
//!
//! A sampled beacon reports *states*, not samples: an event only when the
//! state it reports changes, never one per interval. What decides when:
//!
//! - **Hysteresis** (numeric kinds). With `above: A` and `below: B` (B ≤ A,
//!   default A), a sample counts as `above` when it is greater than A and as
//!   `below` when it is less than B. A sample from B to A inclusive counts as
//!   the state last reported, so a value hovering near a threshold does not
//!   flap. With nothing reported (after an error), a sample counts as
//!   `above` only when it is greater than A.
//! - **`for`** (default 0). A new state is reported once every sample for
//!   at least that long has counted as it: it counts from the first such
//!   sample, and one sample counting otherwise starts the wait again. Since
//!   samples come every `interval`, the wait ends at the first sample at or
//!   after `for`.
//! - **`debounce`** (default 0). At least this long between two state
//!   events of one beacon. A state that settles sooner is not dropped: it is
//!   reported at the first sample after the debounce ends, if it still holds
//!   then; a flap back within the debounce raises nothing.
//!
//! Numeric kinds start as `below`, silently: beacons restart whenever the
//! agent reconnects, and "still normal" is not news. The `process` and
//! `service` kinds have no normal state, so they start with nothing reported
//! and their first settled state is an event.
//!
//! A sample that cannot be taken raises one event `{state: "error", error}`
//! per run of failures (errors are not held back by `debounce`), and the
//! reported state is forgotten, so the first good state after it is reported
//! again whatever it is: whoever saw the error learns that it ended.

use std::sync::mpsc as std_mpsc;
use std::time::{Duration, Instant};

use halite_proto::{Event, Value};
use serde::Deserialize;

use super::{BeaconError, Context, Running};
use std::path::PathBuf;

pub const DEFAULT_INTERVAL: Duration = Duration::from_secs(5);
/// Sampling faster than this measures the sampler more than the host.
pub const MIN_INTERVAL: Duration = Duration::from_millis(100);

/// A state change worth an event.
#[derive(Debug, Clone, PartialEq)]
pub struct Transition<S> {
    /// `None` when nothing was reported before (a start, or an error).
    pub from: Option<S>,
    pub to: S,
}

/// The one state machine of every sampled kind: sustained `for`, `debounce`,
/// and an event only on change. Generic over the state so that numeric
/// levels, present/absent and a unit's state all go through it. Pure: time
/// is passed in, so tests drive it with explicit instants.
#[derive(Debug, Clone)]
pub struct Machine<S> {
    sustain: Duration,
    debounce: Duration,
    reported: Option<S>,
    /// A state other than the reported one, and when the unbroken run of
    /// samples counting as it began.
    pending: Option<(S, Instant)>,
    last_event: Option<Instant>,
}

impl<S: Clone + PartialEq> Machine<S> {
    /// `initial` is taken as already reported: it raises no event.
    pub fn new(timing: &Timing, initial: Option<S>) -> Self {
        Machine {
            sustain: timing.sustain,
            debounce: timing.debounce,
            reported: initial,
            pending: None,
            last_event: None,
        }
    }

    /// A sample counted as `seen` at `now`.
    pub fn observe(&mut self, seen: S, now: Instant) -> Option<Transition<S>> {
        if self.reported.as_ref() == Some(&seen) {
            self.pending = None;
            return None;
        }
        let since = match &self.pending {
            Some((state, since)) if *state == seen => *since,
            _ => {
                self.pending = Some((seen.clone(), now));
                now
            }
        };
        let held = now.saturating_duration_since(since) >= self.sustain;
        let quiet = self.last_event.is_none_or(|at| now.saturating_duration_since(at) >= self.debounce);
        if !(held && quiet) {
            return None;
        }
        self.pending = None;
        self.last_event = Some(now);
        let from = self.reported.replace(seen.clone());
        Some(Transition { from, to: seen })
    }

    pub fn reported(&self) -> Option<&S> {
        self.reported.as_ref()
    }

    /// Forgets the reported state (after an error), so that the next settled
    /// state is reported whatever it is. The debounce still counts from the
    /// last state event.
    pub fn forget(&mut self) {
        self.reported = None;
        self.pending = None;
    }
}

/// Which side of its thresholds a numeric beacon is on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Level {
    Above,
    Below,
}

impl Level {
    pub fn as_str(self) -> &'static str {
        match self {
            Level::Above => "above",
            Level::Below => "below",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Thresholds {
    pub above: f64,
    pub below: f64,
}

impl Thresholds {
    /// Which level `sample` counts as while `current` is reported.
    pub fn classify(&self, sample: f64, current: Option<Level>) -> Level {
        if sample > self.above {
            Level::Above
        } else if sample < self.below {
            Level::Below
        } else {
            current.unwrap_or(Level::Below)
        }
    }
}

/// Hysteresis in front of the [`Machine`]: what numeric kinds step.
#[derive(Debug, Clone)]
pub struct Hysteresis {
    thresholds: Thresholds,
    machine: Machine<Level>,
}

impl Hysteresis {
    /// Starts as `below`, silently.
    pub fn new(thresholds: Thresholds, timing: &Timing) -> Self {
        Hysteresis { thresholds, machine: Machine::new(timing, Some(Level::Below)) }
    }

    pub fn step(&mut self, sample: f64, now: Instant) -> Option<Transition<Level>> {
        let seen = self.thresholds.classify(sample, self.machine.reported().copied());
        self.machine.observe(seen, now)
    }

    pub fn thresholds(&self) -> Thresholds {
        self.thresholds
    }

    pub fn forget(&mut self) {
        self.machine.forget();
    }
}

/// A duration as authored: text with a unit. A bare number is refused with
/// a way forward rather than guessed at (seconds? milliseconds?).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Span(pub String);

impl<'de> Deserialize<'de> for Span {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct Visitor;
        impl serde::de::Visitor<'_> for Visitor {
            type Value = Span;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("a duration with a unit, e.g. 5s or 1m")
            }
            fn visit_str<E: serde::de::Error>(self, text: &str) -> Result<Span, E> {
                Ok(Span(text.to_owned()))
            }
            fn visit_u64<E: serde::de::Error>(self, n: u64) -> Result<Span, E> {
                Err(E::custom(format!("the duration `{n}` has no unit; write e.g. {n}s")))
            }
            fn visit_i64<E: serde::de::Error>(self, n: i64) -> Result<Span, E> {
                Err(E::custom(format!("the duration `{n}` has no unit; write e.g. 5s")))
            }
            fn visit_f64<E: serde::de::Error>(self, n: f64) -> Result<Span, E> {
                Err(E::custom(format!("the duration `{n}` has no unit; write e.g. 500ms or 5s")))
            }
        }
        deserializer.deserialize_any(Visitor)
    }
}

fn duration(span: Option<&Span>, key: &'static str, default: Duration) -> Result<Duration, BeaconError> {
    match span {
        None => Ok(default),
        Some(Span(text)) => humantime::parse_duration(text).map_err(|reason| BeaconError::Duration {
            key,
            value: text.clone(),
            reason,
            example: "5s or 1m",
        }),
    }
}

/// Why a sample could not be taken: the beacon reports an `error` state
/// with this text and retries every interval. Each variant names what was
/// read or run.
#[derive(Debug, thiserror::Error)]
pub enum SampleError {
    #[error("cannot read {path}: {source}", path = path.display())]
    Read { path: PathBuf, source: std::io::Error },
    #[error("cannot list {path}: {source}", path = path.display())]
    List { path: PathBuf, source: std::io::Error },
    /// Read, but not in the shape the kernel documents.
    #[error("{path} {problem}", path = path.display())]
    Unreadable { path: PathBuf, problem: &'static str },
    #[error("cannot measure {path}: {source}", path = path.display())]
    Measure { path: PathBuf, source: nix::errno::Errno },
    #[error("the sample is not a number ({value})")]
    NotANumber { value: f64 },
    /// A probe program that could not be run (names the command).
    #[error(transparent)]
    Command(#[from] halite_state::command::CommandError),
    #[error("{program} did not answer within {}", humantime::format_duration(*timeout))]
    Timeout { program: &'static str, timeout: Duration },
    /// A probe program that said why it cannot answer (its stderr).
    #[error("{program}: {said}")]
    Said { program: &'static str, said: String },
    #[error("{program} printed no state")]
    NoState { program: &'static str },
    #[error("{program} printed `{printed}`, not a state")]
    NotAState { program: &'static str, printed: String },
}

impl SampleError {
    /// Reading `path` failed.
    pub fn read(path: impl Into<PathBuf>) -> impl FnOnce(std::io::Error) -> SampleError {
        let path = path.into();
        move |source| SampleError::Read { path, source }
    }
}

/// When a sampled beacon samples and how its [`Machine`] waits.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Timing {
    pub interval: Duration,
    /// `for`: how long a new state must hold before it is reported.
    pub sustain: Duration,
    pub debounce: Duration,
}

impl Timing {
    pub fn parse(
        interval: Option<&Span>,
        sustain: Option<&Span>,
        debounce: Option<&Span>,
    ) -> Result<Timing, BeaconError> {
        let interval = duration(interval, "interval", DEFAULT_INTERVAL)?;
        if interval < MIN_INTERVAL {
            return Err(BeaconError::IntervalTooShort { interval, min: MIN_INTERVAL });
        }
        Ok(Timing {
            interval,
            sustain: duration(sustain, "for", Duration::ZERO)?,
            debounce: duration(debounce, "debounce", Duration::ZERO)?,
        })
    }
}

/// The configuration of a beacon whose sample is a percentage (`cpu`,
/// `memory`): thresholds and timing, nothing else.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct PercentConfig {
    /// Percent over which the state becomes `above`.
    above: f64,
    /// Percent under which it returns to `below`; default: `above`.
    #[serde(default)]
    below: Option<f64>,
    #[serde(default, rename = "for")]
    sustain: Option<Span>,
    #[serde(default)]
    interval: Option<Span>,
    #[serde(default)]
    debounce: Option<Span>,
}

/// Reads and checks a [`PercentConfig`].
pub fn percent_settings(config: &Value) -> Result<Settings, BeaconError> {
    let c: PercentConfig = super::decode(config)?;
    Settings::parse(c.above, c.below, Some(100.0), c.sustain.as_ref(), c.interval.as_ref(), c.debounce.as_ref())
}

/// Thresholds and timing of a numeric kind.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Settings {
    pub thresholds: Thresholds,
    pub timing: Timing,
}

impl Settings {
    /// `max`: the largest value the kind can sample (100 for percentages),
    /// so that a threshold that can never be crossed is an error.
    pub fn parse(
        above: f64,
        below: Option<f64>,
        max: Option<f64>,
        sustain: Option<&Span>,
        interval: Option<&Span>,
        debounce: Option<&Span>,
    ) -> Result<Settings, BeaconError> {
        Ok(Settings { thresholds: thresholds(above, below, max)?, timing: Timing::parse(interval, sustain, debounce)? })
    }
}

fn thresholds(above: f64, below: Option<f64>, max: Option<f64>) -> Result<Thresholds, BeaconError> {
    if !above.is_finite() || below.is_some_and(|b| !b.is_finite()) {
        return Err(BeaconError::NotANumber);
    }
    if let Some(max) = max
        && above >= max
    {
        return Err(BeaconError::NeverExceeded { above, max });
    }
    let Some(below) = below else {
        if above < 0.0 {
            return Err(BeaconError::AboveNegative { above });
        }
        return Ok(Thresholds { above, below: above });
    };
    if below > above {
        return Err(BeaconError::BelowAbove { below, above });
    }
    if below <= 0.0 {
        return Err(BeaconError::NeverReached { below });
    }
    Ok(Thresholds { above, below })
}

/// One sampled beacon's work at each interval; [`start`] runs the loop.
pub trait Sampler: Send + 'static {
    /// Takes a sample and steps the machine: `Ok(Some(data))` when the state
    /// changed, `Ok(None)` when not (or when this tick gave no sample).
    fn sample(&mut self, now: Instant) -> Result<Option<Value>, SampleError>;

    /// What the beacon looks at (`{unit: …}`, `{mount: …}`), the base of
    /// its error events.
    fn subject(&self) -> Value;

    /// Called on the first error of a run; see [`Machine::forget`].
    fn forget(&mut self);
}

/// A numeric kind's [`Sampler`]: a reading, hysteresis, and event data
/// `{state, <key>: value, above, below}` plus the subject's fields.
pub struct Gauge<F> {
    machine: Hysteresis,
    /// The data key of the value: `percent`, `load`.
    key: &'static str,
    subject: Value,
    /// `Ok(None)`: no sample this time (a rate's first reading).
    read: F,
}

impl<F: FnMut() -> Result<Option<f64>, SampleError> + Send + 'static> Gauge<F> {
    pub fn new(settings: &Settings, key: &'static str, subject: Value, read: F) -> Self {
        Gauge { machine: Hysteresis::new(settings.thresholds, &settings.timing), key, subject, read }
    }
}

impl<F: FnMut() -> Result<Option<f64>, SampleError> + Send + 'static> Sampler for Gauge<F> {
    fn sample(&mut self, now: Instant) -> Result<Option<Value>, SampleError> {
        let Some(value) = (self.read)()? else { return Ok(None) };
        if !value.is_finite() {
            return Err(SampleError::NotANumber { value });
        }
        let Some(transition) = self.machine.step(value, now) else { return Ok(None) };
        let thresholds = self.machine.thresholds();
        Ok(Some(
            self.subject
                .clone()
                .with("state", transition.to.as_str())
                .with(self.key, Value::Float(round(value)))
                .with("above", Value::Float(thresholds.above))
                .with("below", Value::Float(thresholds.below)),
        ))
    }

    fn subject(&self) -> Value {
        self.subject.clone()
    }

    fn forget(&mut self) {
        self.machine.forget();
    }
}

/// Two decimals: enough for a reactor, and readable in the audit log.
fn round(value: f64) -> f64 {
    (value * 100.0).round() / 100.0
}

/// Starts the beacon's thread: a sample at once, then one every `interval`.
/// Dropping the returned [`Running`] ends it.
pub fn start(context: Context, interval: Duration, sampler: impl Sampler) -> Result<Running, BeaconError> {
    let (stop_tx, stop_rx) = std_mpsc::channel::<()>();
    std::thread::Builder::new()
        .name(format!("beacon-{}", context.name))
        .spawn(move || run(&context, interval, sampler, &stop_rx))
        .map_err(BeaconError::Thread)?;
    // Nothing is ever sent: dropping the sender closes the channel, which
    // ends the thread's next wait.
    Ok(Running::new(stop_tx))
}

fn run(context: &Context, interval: Duration, mut sampler: impl Sampler, stop: &std_mpsc::Receiver<()>) {
    let mut failing = false;
    let mut next = Instant::now();
    loop {
        match stop.recv_timeout(next.saturating_duration_since(Instant::now())) {
            Err(std_mpsc::RecvTimeoutError::Timeout) => {}
            Ok(()) | Err(std_mpsc::RecvTimeoutError::Disconnected) => return,
        }
        let now = Instant::now();
        // A fixed rhythm, but no burst of catch-up samples after a stall
        // (a slow systemctl, a full event queue).
        next += interval;
        if next <= now {
            next = now + interval;
        }
        let data = match sampler.sample(now) {
            Ok(data) => {
                if std::mem::take(&mut failing) {
                    tracing::info!(beacon = %context.name, "Beacon samples again.");
                }
                data
            }
            Err(error) if !failing => {
                failing = true;
                sampler.forget();
                tracing::warn!(beacon = %context.name, %error, "Cannot take a sample; retrying every interval.");
                Some(sampler.subject().with("state", "error").with("error", error.to_string()))
            }
            Err(error) => {
                tracing::debug!(beacon = %context.name, %error, "Still cannot take a sample.");
                None
            }
        };
        if let Some(data) = data {
            if let Some(state) = data.get("state").and_then(Value::as_str) {
                tracing::info!(beacon = %context.name, state, "Beacon state changed.");
            }
            // Our own std thread, never a runtime thread: blocking is allowed,
            // and a full queue makes the beacon wait (see ARCHITECTURE.md).
            let event = Event::new(context.tag(), context.agent.as_str(), data);
            if context.events.blocking_send(event).is_err() {
                tracing::debug!(beacon = %context.name, "Agent is shutting down; event not sent.");
                return;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const S: Duration = Duration::from_secs(1);

    fn secs(n: u64) -> Duration {
        Duration::from_secs(n)
    }

    fn timing(sustain: u64, debounce: u64) -> Timing {
        Timing { interval: 5 * S, sustain: secs(sustain), debounce: secs(debounce) }
    }

    const HOT: Thresholds = Thresholds { above: 90.0, below: 70.0 };

    /// Rows of (seconds since start, sample, expected event).
    fn table(mut machine: Hysteresis, rows: &[(u64, f64, Option<Level>)]) {
        let t0 = Instant::now();
        for &(at, sample, expected) in rows {
            let got = machine.step(sample, t0 + secs(at)).map(|t| t.to);
            assert_eq!(got, expected, "sample {sample} at {at}s");
        }
    }

    use Level::{Above, Below};

    #[test]
    fn hysteresis_holds_the_state_between_the_thresholds() {
        table(
            Hysteresis::new(HOT, &timing(0, 0)),
            &[
                (0, 50.0, None), // starts below, silently
                (1, 80.0, None),
                (2, 90.0, None), // equal is not over
                (3, 95.0, Some(Above)),
                (4, 99.0, None), // no repeat while the state holds
                (5, 95.0, None),
                (6, 80.0, None), // between the thresholds: still above
                (7, 70.0, None), // equal is not under
                (8, 91.0, None),
                (9, 69.0, Some(Below)),
                (10, 85.0, None), // between: still below
                (11, 90.0, None),
                (12, 90.5, Some(Above)),
            ],
        );
    }

    #[test]
    fn below_defaults_to_above() {
        let thresholds = thresholds(90.0, None, Some(100.0)).unwrap();
        table(
            Hysteresis::new(thresholds, &timing(0, 0)),
            &[(0, 91.0, Some(Above)), (1, 90.0, None), (2, 89.9, Some(Below)), (3, 90.0, None)],
        );
    }

    #[test]
    fn a_state_is_reported_once_it_held_for_the_whole_sustain() {
        table(
            Hysteresis::new(HOT, &timing(10, 0)),
            &[
                (0, 95.0, None),
                (5, 95.0, None),
                (10, 96.0, Some(Above)), // 10s of samples over 90
                (15, 95.0, None),
                (20, 50.0, None),
                (25, 50.0, None),
                (30, 95.0, None), // back over: the wait for below starts again
                (35, 50.0, None),
                (40, 60.0, None),
                (45, 50.0, Some(Below)),
                (50, 95.0, None),
                (55, 80.0, None), // between the thresholds counts as below: the run is broken
                (60, 95.0, None),
                (65, 95.0, None),
                (70, 95.0, Some(Above)),
            ],
        );
    }

    #[test]
    fn debounce_delays_a_change_and_absorbs_a_flap() {
        table(
            Hysteresis::new(HOT, &timing(0, 30)),
            &[
                (0, 95.0, Some(Above)),
                (5, 50.0, None), // settled, but within 30s of the last event
                (25, 50.0, None),
                (30, 50.0, Some(Below)), // reported when the debounce ends
                (35, 95.0, None),
                (40, 50.0, None), // the flap back within the debounce raised nothing
                (60, 50.0, None),
                (65, 95.0, Some(Above)),
            ],
        );
    }

    #[test]
    fn sustain_and_debounce_together() {
        table(
            Hysteresis::new(HOT, &timing(10, 60)),
            &[
                (0, 95.0, None),
                (10, 95.0, Some(Above)),
                (15, 50.0, None),
                (25, 50.0, None), // held 10s, but the debounce runs until 70s
                (70, 50.0, Some(Below)),
            ],
        );
    }

    #[test]
    fn transitions_say_where_they_came_from() {
        let t0 = Instant::now();
        let mut machine = Hysteresis::new(HOT, &timing(0, 0));
        assert_eq!(machine.step(95.0, t0), Some(Transition { from: Some(Below), to: Above }));
        machine.forget();
        // Forgotten: the next state is reported even though it did not change.
        assert_eq!(machine.step(95.0, t0 + S), Some(Transition { from: None, to: Above }));
        machine.forget();
        // With nothing reported, between the thresholds counts as below.
        assert_eq!(machine.step(80.0, t0 + 2 * S), Some(Transition { from: None, to: Below }));
    }

    #[test]
    fn presence_reports_its_first_settled_state_then_changes() {
        let t0 = Instant::now();
        let rows: &[(u64, bool, Option<bool>)] = &[
            (0, false, None),
            (5, false, None),
            (10, false, Some(false)), // nothing reported at start: the first state is news
            (15, true, None),
            (20, true, None),
            (25, true, Some(true)),
            (30, true, None),
            (35, false, None),
            (40, true, None), // back before `for`: nothing
            (50, true, None),
        ];
        let mut machine = Machine::new(&timing(10, 0), None);
        for &(at, present, expected) in rows {
            assert_eq!(machine.observe(present, t0 + secs(at)).map(|t| t.to), expected, "{present} at {at}s");
        }
    }

    #[test]
    fn any_state_goes_through_the_same_machine() {
        let t0 = Instant::now();
        let rows: &[(u64, &str, Option<&str>)] = &[
            (0, "activating", None),
            (5, "active", None), // a different state starts the wait again
            (15, "active", Some("active")),
            (20, "deactivating", None),
            (25, "active", None), // shorter than `for`: never reported
            (30, "failed", None),
            (35, "inactive", None),
            (40, "inactive", None),
            (45, "inactive", Some("inactive")),
        ];
        let mut machine: Machine<String> = Machine::new(&timing(10, 0), None);
        for &(at, state, expected) in rows {
            let got = machine.observe(state.to_owned(), t0 + secs(at)).map(|t| t.to);
            assert_eq!(got.as_deref(), expected, "{state} at {at}s");
        }
    }

    fn settings(yaml: &str) -> Result<Settings, BeaconError> {
        #[derive(Debug, Deserialize)]
        #[serde(deny_unknown_fields)]
        struct Config {
            above: f64,
            #[serde(default)]
            below: Option<f64>,
            #[serde(default, rename = "for")]
            sustain: Option<Span>,
            #[serde(default)]
            interval: Option<Span>,
            #[serde(default)]
            debounce: Option<Span>,
        }
        let json: serde_json::Value = serde_saphyr::from_str(yaml).unwrap();
        let c: Config = crate::beacons::decode(&Value::from_json(&json))?;
        Settings::parse(c.above, c.below, Some(100.0), c.sustain.as_ref(), c.interval.as_ref(), c.debounce.as_ref())
    }

    #[test]
    fn settings_have_defaults() {
        let s = settings("above: 90\n").unwrap();
        assert_eq!(s.thresholds, Thresholds { above: 90.0, below: 90.0 });
        assert_eq!(s.timing, Timing { interval: DEFAULT_INTERVAL, sustain: Duration::ZERO, debounce: Duration::ZERO });
        let s = settings("above: 90\nbelow: 70\nfor: 1m\ninterval: 10s\ndebounce: 2m\n").unwrap();
        assert_eq!(s.timing, Timing { interval: 10 * S, sustain: 60 * S, debounce: 120 * S });
    }

    #[test]
    fn settings_errors_say_what_to_write() {
        let bad = |yaml: &str| settings(yaml).unwrap_err().to_string();
        assert!(bad("above: 70\nbelow: 90\n").contains("greater than `above: 70`"));
        assert!(bad("above: 100\n").contains("never be exceeded"));
        assert!(bad("above: 90\nbelow: 0\n").contains("never be reached"));
        assert!(bad("above: -1\n").contains("never negative"));
        assert!(bad("above: 90\nfor: 10\n").contains("write e.g. 10s"));
        assert!(bad("above: 90\nfor: soon\n").contains("`for: soon`"));
        assert!(bad("above: 90\ninterval: 0s\n").contains("too short"));
        assert!(bad("above: 90\nbellow: 70\n").contains("bellow"));
        assert!(bad("below: 70\n").contains("above"));
    }
}

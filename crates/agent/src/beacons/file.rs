//! The `file` beacon: changes to files, pushed by inotify.
//!
//! Each watched path's parent directory is watched, so editors that replace
//! a file by rename, deletes and re-creates are all seen. On every change
//! the file is looked at (sha256 of the content, mode) and compared with
//! what it was and, for a managed file, with what it should be:
//!
//! - a managed file that matches its desired state raises nothing: that is
//!   the agent's own restore, or a write that left it as desired;
//! - otherwise the change is reported once, and the path's drift stays
//!   *open*: further changes within `debounce` are folded into it (an
//!   editor's truncate, write and close are one drift, so one restore). When
//!   the window ends, a path that is still drifted and differs from what was
//!   reported is reported again. A corrective job closes the drift early.
//!
//! A write in progress is not looked at: after a data modification the
//! beacon waits for the writer to close the file (`IN_CLOSE_WRITE`), or at
//! most [`WRITE_SETTLE`], so that a truncate-then-write of the desired
//! content is not mistaken for drift, and an editor's write is hashed once.
//!
//! A slow periodic scan re-looks at every path, as a safety net for events
//! the kernel dropped (inotify queue overflow) and to arm watches on
//! directories that did not exist yet.

use std::collections::HashMap;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc as std_mpsc;
use std::time::{Duration, Instant};

use halite_proto::{Event, Sha256, Value};
use notify::{RecursiveMode, Watcher};
use serde::Deserialize;

use super::{BeaconKind, Context, Running, decode};
use crate::managed::{Desired, Snapshot};

pub static KIND: BeaconKind = BeaconKind {
    name: "file",
    summary: "Changes to files: create, modify, delete, attrib (mode).",
    example: "paths: [/etc/nginx/nginx.conf]\nevents: [modify, delete, attrib]\ndebounce: 500ms\n",
    validate,
    start,
};

const DEFAULT_DEBOUNCE: Duration = Duration::from_millis(500);
const DEFAULT_SCAN: Duration = Duration::from_secs(60);
/// How long a file being written may stay unlooked-at while its writer has
/// not closed it (a long-lived appender, say).
pub const WRITE_SETTLE: Duration = Duration::from_secs(1);
/// Notifications waiting for the beacon thread. When full, further ones
/// are dropped and the next scan (made at once) catches what they said.
const NOTIFY_QUEUE: usize = 4096;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Config {
    /// Absolute paths of the files to watch.
    paths: Vec<PathBuf>,
    /// Which changes raise events; default: all.
    #[serde(default = "Change::all")]
    events: Vec<Change>,
    /// Fold further changes to a path into its open drift for this long.
    #[serde(default)]
    debounce: Option<String>,
    /// How often every path is looked at regardless of notifications.
    #[serde(default)]
    scan: Option<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Change {
    Create,
    Modify,
    Delete,
    Attrib,
}

impl Change {
    fn all() -> Vec<Change> {
        vec![Change::Create, Change::Modify, Change::Delete, Change::Attrib]
    }

    fn as_str(self) -> &'static str {
        match self {
            Change::Create => "create",
            Change::Modify => "modify",
            Change::Delete => "delete",
            Change::Attrib => "attrib",
        }
    }
}

struct Settings {
    paths: Vec<PathBuf>,
    events: Vec<Change>,
    debounce: Duration,
    scan: Duration,
}

fn settings(config: &Value) -> Result<Settings, String> {
    let config: Config = decode(config)?;
    if config.paths.is_empty() {
        return Err("`paths` is empty; list the files to watch".into());
    }
    if let Some(path) = config.paths.iter().find(|p| !p.is_absolute()) {
        return Err(format!("path `{}` is not absolute", path.display()));
    }
    let duration = |text: &Option<String>, key: &str, default| match text {
        None => Ok(default),
        Some(text) => {
            humantime::parse_duration(text).map_err(|e| format!("`{key}: {text}`: {e} (write e.g. 500ms or 2s)"))
        }
    };
    Ok(Settings {
        debounce: duration(&config.debounce, "debounce", DEFAULT_DEBOUNCE)?,
        scan: duration(&config.scan, "scan", DEFAULT_SCAN)?.max(Duration::from_secs(1)),
        paths: config.paths,
        events: config.events,
    })
}

fn validate(config: &Value) -> Result<(), String> {
    settings(config).map(|_| ())
}

/// What a path looked like when last seen.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Observation {
    Missing,
    File {
        sha256: Sha256,
        mode: u32,
    },
    /// A directory, a file we may not read, …: reported as a modify.
    Other(String),
}

impl Observation {
    pub fn of(path: &Path) -> Observation {
        match std::fs::symlink_metadata(path) {
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Observation::Missing,
            Err(e) => Observation::Other(e.to_string()),
            Ok(meta) if !meta.is_file() => Observation::Other("not a regular file".into()),
            Ok(meta) => match std::fs::File::open(path).and_then(Sha256::of_reader) {
                // Gone between the stat and the open: a delete in progress.
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => Observation::Missing,
                Err(e) => Observation::Other(e.to_string()),
                Ok(sha256) => Observation::File { sha256, mode: meta.mode() & 0o7777 },
            },
        }
    }

    fn complies(&self, desired: &Desired) -> bool {
        match self {
            Observation::File { sha256, mode } => {
                *sha256 == desired.sha256() && desired.mode.is_none_or(|m| m == *mode)
            }
            _ => false,
        }
    }
}

/// How `now` differs from `before` (or from the desired state).
fn classify(before: &Observation, now: &Observation, desired: Option<&Desired>) -> Change {
    match (before, now) {
        (_, Observation::Missing) => Change::Delete,
        (Observation::Missing, _) => Change::Create,
        (_, Observation::File { sha256, .. }) => {
            let content_changed = match (desired, before) {
                (Some(d), _) => *sha256 != d.sha256(),
                (None, Observation::File { sha256: old, .. }) => sha256 != old,
                (None, _) => true,
            };
            if content_changed { Change::Modify } else { Change::Attrib }
        }
        _ => Change::Modify,
    }
}

#[derive(Debug)]
struct OpenDrift {
    reported: Observation,
    until: Instant,
    /// The path's applied generation when reported; a job since closes it.
    applied: u64,
    window_checked: bool,
}

#[derive(Debug)]
struct PathState {
    last: Observation,
    open: Option<OpenDrift>,
}

/// A change worth an event.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Report {
    pub change: Change,
    pub observation: Observation,
}

/// The beacon's decisions, free of I/O and clocks so they can be tested as
/// a table.
#[derive(Debug)]
pub struct Tracker {
    debounce: Duration,
    events: Vec<Change>,
    paths: HashMap<PathBuf, PathState>,
}

impl Tracker {
    pub fn new(debounce: Duration, events: Vec<Change>) -> Self {
        Tracker { debounce, events, paths: HashMap::new() }
    }

    /// Starts tracking `path` as it is now. A managed file that is already
    /// drifted is reported (drift that happened while the agent was down).
    pub fn track(
        &mut self,
        path: &Path,
        now: Observation,
        desired: Option<Desired>,
        applied: u64,
        at: Instant,
    ) -> Option<Report> {
        let drifted = desired.is_some_and(|d| !now.complies(&d));
        let before = if drifted { Observation::Other("unknown".into()) } else { now.clone() };
        self.paths.insert(path.to_path_buf(), PathState { last: before, open: None });
        if drifted { self.observe(path, now, desired, applied, at) } else { None }
    }

    pub fn tracks(&self, path: &Path) -> bool {
        self.paths.contains_key(path)
    }

    /// A notification or scan looked at `path` and saw `now`.
    pub fn observe(
        &mut self,
        path: &Path,
        now: Observation,
        desired: Option<Desired>,
        applied: u64,
        at: Instant,
    ) -> Option<Report> {
        let debounce = self.debounce;
        let state = self.paths.get_mut(path)?;
        let before = std::mem::replace(&mut state.last, now.clone());
        if let Some(open) = &state.open
            && open.applied != applied
        {
            state.open = None;
        }
        if let Some(desired) = &desired
            && now.complies(desired)
        {
            state.open = None;
            return None;
        }
        if desired.is_none() && before == now {
            return None;
        }
        if let Some(open) = &state.open
            && (at < open.until || open.reported == now)
        {
            return None;
        }
        let reference = match &state.open {
            Some(open) => open.reported.clone(),
            None => before,
        };
        let change = classify(&reference, &now, desired.as_ref());
        if !self.events.contains(&change) {
            return None;
        }
        state.open = Some(OpenDrift { reported: now.clone(), until: at + debounce, applied, window_checked: false });
        Some(Report { change, observation: now })
    }

    /// The earliest end of a debounce window still to be checked.
    pub fn next_deadline(&self) -> Option<Instant> {
        self.paths.values().filter_map(|s| s.open.as_ref().filter(|o| !o.window_checked).map(|o| o.until)).min()
    }

    /// Paths whose debounce window has ended by `at` and is unchecked.
    pub fn due(&self, at: Instant) -> Vec<PathBuf> {
        self.paths
            .iter()
            .filter(|(_, s)| s.open.as_ref().is_some_and(|o| !o.window_checked && o.until <= at))
            .map(|(p, _)| p.clone())
            .collect()
    }

    /// Marks `path`'s debounce window as checked without looking.
    pub fn close_window(&mut self, path: &Path) {
        if let Some(open) = self.paths.get_mut(path).and_then(|s| s.open.as_mut()) {
            open.window_checked = true;
        }
    }

    /// The end of `path`'s debounce window: report it again if it is still
    /// drifted and no longer what was reported.
    pub fn window_ended(
        &mut self,
        path: &Path,
        now: Observation,
        desired: Option<Desired>,
        applied: u64,
        at: Instant,
    ) -> Option<Report> {
        self.close_window(path);
        self.observe(path, now, desired, applied, at)
    }
}

/// What a notification asks of the beacon.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Reaction {
    /// Opens and reads, including the beacon's own hashing.
    Ignore,
    /// Data written, writer still busy: look when it closes.
    Settle,
    Look,
}

fn reaction(kind: &notify::EventKind) -> Reaction {
    use notify::event::{AccessKind, AccessMode, DataChange, EventKind, ModifyKind};
    match kind {
        EventKind::Access(AccessKind::Close(AccessMode::Write)) => Reaction::Look,
        EventKind::Access(_) => Reaction::Ignore,
        EventKind::Modify(ModifyKind::Data(DataChange::Any | DataChange::Content | DataChange::Size)) => {
            Reaction::Settle
        }
        _ => Reaction::Look,
    }
}

enum Wake {
    Notify(notify::Result<notify::Event>),
    /// A job finished writing this path.
    Applied(PathBuf),
    Stop,
}

/// Dropping it stops the beacon thread (which owns the watcher).
struct Guard {
    stop: std_mpsc::SyncSender<Wake>,
}

impl Drop for Guard {
    fn drop(&mut self) {
        // Waits for room in the queue; the thread drains it.
        let _ = self.stop.send(Wake::Stop);
    }
}

fn start(context: Context, config: &Value) -> Result<Running, String> {
    let settings = settings(config)?;
    let (wake_tx, wake_rx) = std_mpsc::sync_channel::<Wake>(NOTIFY_QUEUE);
    let notify_tx = wake_tx.clone();
    let overflowed = Arc::new(AtomicBool::new(false));
    let overflow_flag = overflowed.clone();
    let watcher = notify::recommended_watcher(move |event| {
        // Full queue: the notification is dropped and the thread, seeing
        // the flag, looks at every path once.
        if notify_tx.try_send(Wake::Notify(event)).is_err() {
            overflow_flag.store(true, Ordering::Relaxed);
        }
    })
    .map_err(|e| format!("cannot start inotify: {e}"))?;
    let beacon = FileBeacon {
        tracker: Tracker::new(settings.debounce, settings.events),
        watched: settings.paths.iter().map(|p| (context.real_path(p), p.clone())).collect(),
        settling: HashMap::new(),
        overflowed,
        armed: Vec::new(),
        watcher,
        scan: settings.scan,
        context,
        wake: wake_rx,
    };
    let applied_tx = wake_tx.clone();
    beacon.context.managed.listen(Box::new(move |path| match applied_tx.try_send(Wake::Applied(path.to_path_buf())) {
        Err(std_mpsc::TrySendError::Disconnected(_)) => false,
        // Full: the beacon is busy with notifications, which include this write.
        Ok(()) | Err(std_mpsc::TrySendError::Full(_)) => true,
    }));
    std::thread::Builder::new()
        .name(format!("beacon-{}", beacon.context.name))
        .spawn(move || beacon.run())
        .map_err(|e| format!("cannot start the beacon thread: {e}"))?;
    Ok(Running::new(Guard { stop: wake_tx }))
}

struct FileBeacon {
    tracker: Tracker,
    /// Real path → path as authored (what events report).
    watched: HashMap<PathBuf, PathBuf>,
    /// Files being written, and when to look at them at the latest.
    settling: HashMap<PathBuf, Instant>,
    /// Set when a notification could not be queued.
    overflowed: Arc<AtomicBool>,
    /// Directories watched so far.
    armed: Vec<PathBuf>,
    watcher: notify::RecommendedWatcher,
    scan: Duration,
    context: Context,
    wake: std_mpsc::Receiver<Wake>,
}

impl FileBeacon {
    /// Watches each path's parent directory or, while that does not exist
    /// yet, its nearest existing ancestor, whose notifications tell when the
    /// next level appears. Returns whether a new directory is watched.
    fn arm(&mut self) -> bool {
        let mut armed_new = false;
        let parents: Vec<PathBuf> = self.watched.keys().filter_map(|p| p.parent().map(Path::to_path_buf)).collect();
        for parent in parents {
            let Some(dir) = parent.ancestors().find(|d| d.is_dir()).map(Path::to_path_buf) else { continue };
            if self.armed.contains(&dir) {
                continue;
            }
            match self.watcher.watch(&dir, RecursiveMode::NonRecursive) {
                Ok(()) => {
                    self.armed.push(dir);
                    armed_new = true;
                }
                Err(error) => tracing::warn!(
                    beacon = %self.context.name, path = %dir.display(), %error,
                    "Cannot watch this directory; the periodic scan keeps looking."
                ),
            }
        }
        armed_new
    }

    fn fully_armed(&self) -> bool {
        self.watched.keys().all(|p| p.parent().is_none_or(|d| self.armed.iter().any(|a| a == d)))
    }

    fn emit(&self, real: &Path, report: &Report) {
        let authored = self.watched.get(real).map_or(real, PathBuf::as_path);
        let mut data = Value::map().with("path", authored.display().to_string()).with("kind", report.change.as_str());
        match &report.observation {
            Observation::File { sha256, mode } => {
                data = data.with("sha256", sha256.to_hex()).with("mode", format!("{mode:04o}"));
            }
            Observation::Missing => {}
            Observation::Other(what) => data = data.with("error", what.as_str()),
        }
        data = data.with("managed", self.context.managed.desired(real).is_some());
        tracing::info!(beacon = %self.context.name, path = %authored.display(), change = report.change.as_str(), "File changed.");
        let event = Event::new(self.context.tag(), self.context.agent.as_str(), data);
        if self.context.events.blocking_send(event).is_err() {
            tracing::debug!(beacon = %self.context.name, "Agent is shutting down; event not sent.");
        }
    }

    /// Looks at every path once, reporting managed files that drifted
    /// while nobody watched.
    fn track_all(&mut self) {
        let paths: Vec<PathBuf> = self.watched.keys().cloned().collect();
        for real in paths {
            let Some((observation, record)) = self.observe_steady(&real) else {
                // A job is writing it: start from what is there, quietly;
                // the job's end makes the beacon look again.
                let record = self.context.managed.snapshot(&real);
                self.tracker.track(&real, Observation::of(&real), None, record.applied, Instant::now());
                continue;
            };
            if let Some(report) = self.tracker.track(&real, observation, record.desired, record.applied, Instant::now())
            {
                self.emit(&real, &report);
            }
        }
    }

    /// Looks at `real` while no job touches it: the record is read before
    /// and after the file, and a change in between (a job began or ended)
    /// voids the look. Every job's end wakes the beacon to look again.
    fn observe_steady(&self, real: &Path) -> Option<(Observation, Snapshot)> {
        let before = self.context.managed.snapshot(real);
        if before.in_flight {
            return None;
        }
        let observation = Observation::of(real);
        (self.context.managed.snapshot(real) == before).then_some((observation, before))
    }

    fn run(mut self) {
        self.arm();
        self.track_all();
        let mut next_scan = Instant::now() + self.scan;
        loop {
            let deadline = [self.tracker.next_deadline(), self.settling.values().min().copied()]
                .into_iter()
                .flatten()
                .fold(next_scan, Instant::min);
            match self.wake.recv_timeout(deadline.saturating_duration_since(Instant::now())) {
                Ok(Wake::Stop) | Err(std_mpsc::RecvTimeoutError::Disconnected) => return,
                Ok(Wake::Notify(Ok(event))) => {
                    if event.need_rescan() {
                        self.scan_all();
                    }
                    if !self.fully_armed() && self.arm() {
                        // Files may have appeared before the new watch did.
                        self.scan_all();
                    }
                    let reaction = reaction(&event.kind);
                    let tracked: Vec<&PathBuf> = event.paths.iter().filter(|p| self.tracker.tracks(p)).collect();
                    for path in tracked {
                        match reaction {
                            Reaction::Ignore => {}
                            Reaction::Settle => {
                                self.settling.entry(path.clone()).or_insert_with(|| Instant::now() + WRITE_SETTLE);
                            }
                            Reaction::Look => {
                                self.settling.remove(path);
                                self.look(path, false);
                            }
                        }
                    }
                }
                Ok(Wake::Applied(path)) => {
                    if self.tracker.tracks(&path) {
                        self.look(&path, false);
                    }
                }
                Ok(Wake::Notify(Err(error))) => {
                    tracing::warn!(beacon = %self.context.name, %error, "inotify reported an error; rescanning.");
                    self.scan_all();
                }
                Err(std_mpsc::RecvTimeoutError::Timeout) => {}
            }
            if self.overflowed.swap(false, Ordering::Relaxed) {
                tracing::warn!(beacon = %self.context.name, "Notifications overflowed; looking at every path.");
                self.scan_all();
            }
            let now = Instant::now();
            let settled: Vec<PathBuf> =
                self.settling.iter().filter(|(_, at)| **at <= now).map(|(p, _)| p.clone()).collect();
            for path in settled {
                self.settling.remove(&path);
                self.look(&path, false);
            }
            for path in self.tracker.due(now) {
                self.look(&path, true);
            }
            if now >= next_scan {
                self.arm();
                self.scan_all();
                next_scan = now + self.scan;
            }
        }
    }

    fn look(&mut self, real: &Path, window_ended: bool) {
        let Some((observation, record)) = self.observe_steady(real) else {
            if window_ended {
                self.tracker.close_window(real);
            }
            return;
        };
        let at = Instant::now();
        let report = if window_ended {
            self.tracker.window_ended(real, observation, record.desired, record.applied, at)
        } else {
            self.tracker.observe(real, observation, record.desired, record.applied, at)
        };
        if let Some(report) = report {
            self.emit(real, &report);
        }
    }

    fn scan_all(&mut self) {
        let paths: Vec<PathBuf> = self.watched.keys().cloned().collect();
        for path in paths {
            self.look(&path, false);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn file(content: &[u8], mode: u32) -> Observation {
        Observation::File { sha256: Sha256::of(content), mode }
    }

    fn desired(content: &[u8]) -> Option<Desired> {
        Some(Desired { sha256: Sha256::of(content).0, mode: Some(0o644) })
    }

    const MS: Duration = Duration::from_millis(1);

    #[test]
    fn editor_burst_on_a_managed_file_is_one_drift() {
        let path = Path::new("/etc/x");
        let t0 = Instant::now();
        let mut tracker = Tracker::new(500 * MS, Change::all());
        assert_eq!(tracker.track(path, file(b"good", 0o644), desired(b"good"), 0, t0), None);
        // truncate, write, close: three notifications, three different looks.
        let first = tracker.observe(path, file(b"", 0o644), desired(b"good"), 0, t0 + MS);
        assert_eq!(first.map(|r| r.change), Some(Change::Modify));
        assert_eq!(tracker.observe(path, file(b"ba", 0o644), desired(b"good"), 0, t0 + 2 * MS), None);
        assert_eq!(tracker.observe(path, file(b"bad", 0o644), desired(b"good"), 0, t0 + 3 * MS), None);
        // The restore: recorded desired content lands; the job is marked applied.
        assert_eq!(tracker.observe(path, file(b"good", 0o644), desired(b"good"), 1, t0 + 4 * MS), None);
        assert_eq!(tracker.next_deadline(), None, "the restore closed the drift");
    }

    #[test]
    fn own_restore_and_equal_writes_raise_nothing() {
        let path = Path::new("/etc/x");
        let t0 = Instant::now();
        let mut tracker = Tracker::new(500 * MS, Change::all());
        tracker.track(path, Observation::Missing, desired(b"good"), 0, t0);
        // The agent creates the file: it matches the desired state.
        assert_eq!(tracker.observe(path, file(b"good", 0o644), desired(b"good"), 1, t0 + MS), None);
        // Someone rewrites the same bytes: still no drift.
        assert_eq!(tracker.observe(path, file(b"good", 0o644), desired(b"good"), 1, t0 + 2 * MS), None);
    }

    #[test]
    fn classifies_delete_and_attrib_against_the_desired_state() {
        let path = Path::new("/etc/x");
        let t0 = Instant::now();
        let mut tracker = Tracker::new(500 * MS, Change::all());
        tracker.track(path, file(b"good", 0o644), desired(b"good"), 0, t0);
        let report = tracker.observe(path, file(b"good", 0o600), desired(b"good"), 0, t0 + MS).unwrap();
        assert_eq!(report.change, Change::Attrib);
        tracker.observe(path, file(b"good", 0o644), desired(b"good"), 1, t0 + 2 * MS);
        let report = tracker.observe(path, Observation::Missing, desired(b"good"), 1, t0 + 3 * MS).unwrap();
        assert_eq!(report.change, Change::Delete);
    }

    #[test]
    fn a_drift_nobody_restores_is_reported_again_only_if_it_changes() {
        let path = Path::new("/etc/x");
        let t0 = Instant::now();
        let mut tracker = Tracker::new(500 * MS, Change::all());
        tracker.track(path, file(b"good", 0o644), desired(b"good"), 0, t0);
        assert!(tracker.observe(path, file(b"bad", 0o644), desired(b"good"), 0, t0).is_some());
        assert_eq!(tracker.observe(path, file(b"worse", 0o644), desired(b"good"), 0, t0 + 100 * MS), None);
        assert_eq!(tracker.due(t0 + 499 * MS), Vec::<PathBuf>::new());
        assert_eq!(tracker.due(t0 + 500 * MS), vec![path.to_path_buf()]);
        let again = tracker.window_ended(path, file(b"worse", 0o644), desired(b"good"), 0, t0 + 500 * MS);
        assert_eq!(again.map(|r| r.change), Some(Change::Modify));
        // A window that ends with the same content as reported stays quiet.
        assert_eq!(tracker.window_ended(path, file(b"worse", 0o644), desired(b"good"), 0, t0 + 1000 * MS), None);
        assert_eq!(tracker.observe(path, file(b"worse", 0o644), desired(b"good"), 0, t0 + 2000 * MS), None);
    }

    #[test]
    fn unmanaged_files_report_transitions_filtered_by_events() {
        let path = Path::new("/var/log/x");
        let t0 = Instant::now();
        let mut tracker = Tracker::new(Duration::ZERO, vec![Change::Create, Change::Delete]);
        tracker.track(path, Observation::Missing, None, 0, t0);
        assert_eq!(tracker.observe(path, file(b"a", 0o644), None, 0, t0).map(|r| r.change), Some(Change::Create));
        assert_eq!(tracker.observe(path, file(b"b", 0o644), None, 0, t0 + MS), None, "modify is not asked for");
        assert_eq!(
            tracker.observe(path, Observation::Missing, None, 0, t0 + 2 * MS).map(|r| r.change),
            Some(Change::Delete)
        );
    }

    #[test]
    fn drift_found_at_start_is_reported() {
        let mut tracker = Tracker::new(500 * MS, Change::all());
        let report = tracker.track(Path::new("/etc/x"), file(b"bad", 0o644), desired(b"good"), 0, Instant::now());
        assert_eq!(report.map(|r| r.change), Some(Change::Modify));
    }

    #[test]
    fn config_errors_say_what_to_write() {
        let bad = |yaml: &str| {
            let json: serde_json::Value = serde_saphyr::from_str(yaml).unwrap();
            validate(&Value::from_json(&json)).unwrap_err()
        };
        assert!(bad("paths: [etc/x]\n").contains("not absolute"));
        assert!(bad("paths: [/x]\ndebounce: soon\n").contains("500ms"));
        assert!(bad("paths: [/x]\nevents: [written]\n").contains("written"));
        assert!(bad("path: [/x]\n").contains("path"));
    }
}

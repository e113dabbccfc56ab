//! The `file` beacon: changes to files and directories, pushed by inotify.
//!
//! A watched path may be a file or a directory, and need not exist yet.
//! Each path's parent directory is watched, so editors that replace a file
//! by rename, deletes and re-creates are all seen; a directory is watched
//! itself too (with `recursive`, every directory below it), and what appears
//! in it is tracked entry by entry. On every change the entry is looked at
//! (sha256 of a file's content, mode) and compared with what it was and, for
//! a managed file, with what it should be:
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
//! A slow periodic scan re-lists every watched directory and re-looks at
//! every path, as a safety net for events the kernel dropped (inotify queue
//! overflow) and to arm watches on directories that did not exist yet.
//!
//! A change counts as reported only once the outbox has stored its event.
//! Each event goes with a [`Receipt`]; [`RECEIPT_CHECK`] after a report the
//! beacon reads it, and a report the outbox refused (full, or holding all
//! it may while the disk refuses writes) is undone and the path looked at
//! again, so the drift is reported anew, at most once per
//! [`RECEIPT_CHECK`], until the outbox takes it.

use std::collections::HashMap;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::mpsc as std_mpsc;
use std::time::{Duration, Instant};

use globset::{GlobBuilder, GlobSet, GlobSetBuilder};
use halite_proto::{Event, Sha256, Value};
use notify::event::EventKindMask;
use notify::{RecursiveMode, Watcher};
use serde::Deserialize;

use super::{BeaconError, BeaconKind, Context, EventField, Running, decode};
use crate::managed::{Desired, Snapshot};
use crate::outbox::{Outcome, Receipt};

pub static KIND: BeaconKind = BeaconKind {
    name: "file",
    summary: "Changes to files and directories: create, modify, delete, attrib (mode).",
    example: "paths: [/etc/nginx]\nrecursive: true\nexclude: ['*.swp']\nevents: [modify, delete, attrib]\n",
    validate,
    start,
    fields: &[
        EventField::any("path"),
        EventField { name: "kind", values: &["create", "modify", "delete", "attrib"] },
        EventField::any("sha256"),
        EventField::any("mode"),
        EventField::any("directory"),
        EventField::any("error"),
        EventField::any("managed"),
    ],
};

const DEFAULT_DEBOUNCE: Duration = Duration::from_millis(500);
const DEFAULT_SCAN: Duration = Duration::from_secs(60);
/// How long a file being written may stay unlooked-at while its writer has
/// not closed it (a long-lived appender, say).
pub const WRITE_SETTLE: Duration = Duration::from_secs(1);
/// Notifications waiting for the beacon thread. When full, further ones
/// are dropped and the next scan (made at once) catches what they said.
/// A count, not an allocation: see [`WakeQueue`].
const NOTIFY_QUEUE: usize = 4096;
/// How long after a report the beacon reads its receipt: the outbox
/// settles it within milliseconds, so this is how often a drift is
/// reported again while the outbox refuses it.
pub const RECEIPT_CHECK: Duration = Duration::from_secs(2);

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Config {
    /// Absolute paths of the files and directories to watch.
    paths: Vec<PathBuf>,
    /// A directory's whole subtree, not only its entries.
    #[serde(default)]
    recursive: bool,
    /// Which changes raise events; default: all.
    #[serde(default = "Change::all")]
    events: Vec<Change>,
    /// Globs for what to ignore inside a watched directory.
    #[serde(default)]
    exclude: Vec<String>,
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
    pub fn all() -> Vec<Change> {
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
    recursive: bool,
    events: Vec<Change>,
    exclude: Exclude,
    debounce: Duration,
    scan: Duration,
}

fn settings(config: &Value) -> Result<Settings, BeaconError> {
    let config: Config = decode(config)?;
    if config.paths.is_empty() {
        return Err(BeaconError::Empty { key: "paths", hint: "list the files or directories to watch" });
    }
    if let Some(path) = config.paths.iter().find(|p| !p.is_absolute()) {
        return Err(BeaconError::NotAbsolute { key: "path", path: path.clone(), hint: "" });
    }
    let duration = |text: &Option<String>, key: &'static str, default| match text {
        None => Ok(default),
        Some(text) => humantime::parse_duration(text).map_err(|reason| BeaconError::Duration {
            key,
            value: text.clone(),
            reason,
            example: "500ms or 2s",
        }),
    };
    Ok(Settings {
        debounce: duration(&config.debounce, "debounce", DEFAULT_DEBOUNCE)?,
        scan: duration(&config.scan, "scan", DEFAULT_SCAN)?.max(Duration::from_secs(1)),
        exclude: Exclude::new(&config.exclude)?,
        recursive: config.recursive,
        paths: config.paths,
        events: config.events,
    })
}

fn validate(config: &Value) -> Result<(), BeaconError> {
    settings(config).map(|_| ())
}

/// `exclude` globs. A glob without `/` (`*.swp`, `.git`) is matched against
/// every name below the watched directory, so it also excludes what is
/// inside an excluded directory; a glob with `/` against the whole authored
/// path (`/srv/www/**/cache/*`), `*` not crossing `/`.
#[derive(Debug, Default)]
pub struct Exclude {
    names: GlobSet,
    paths: GlobSet,
}

impl Exclude {
    pub fn new(globs: &[String]) -> Result<Exclude, BeaconError> {
        let (mut names, mut paths) = (GlobSetBuilder::new(), GlobSetBuilder::new());
        for text in globs {
            let glob = GlobBuilder::new(text)
                .literal_separator(true)
                .build()
                .map_err(|e| BeaconError::Exclude { glob: text.clone(), reason: e.kind().clone() })?;
            if text.contains('/') {
                paths.add(glob)
            } else {
                names.add(glob)
            };
        }
        let build = |b: GlobSetBuilder| b.build().map_err(BeaconError::ExcludeSet);
        Ok(Exclude { names: build(names)?, paths: build(paths)? })
    }

    /// Whether `authored`, found below the watched directory `top`, is
    /// excluded (it, or a directory between it and `top`).
    pub fn excludes(&self, top: &Path, authored: &Path) -> bool {
        let Ok(relative) = authored.strip_prefix(top) else { return false };
        if relative.iter().any(|name| self.names.is_match(Path::new(name))) {
            return true;
        }
        authored.ancestors().take_while(|a| *a != top).any(|a| self.paths.is_match(a))
    }
}

/// Which paths a beacon watches: its authored paths, and for those that
/// are directories what is in them (with `recursive`, at any depth), less
/// the excluded. Pure: callers say what is a directory.
#[derive(Debug)]
pub struct Scope {
    /// (real path on this host, path as authored).
    pub targets: Vec<(PathBuf, PathBuf)>,
    pub recursive: bool,
    pub exclude: Exclude,
}

impl Scope {
    /// The authored form of `real` if the beacon watches it.
    pub fn authored(&self, real: &Path) -> Option<PathBuf> {
        if let Some((_, authored)) = self.targets.iter().find(|(r, _)| r == real) {
            return Some(authored.clone());
        }
        self.targets.iter().find_map(|(top_real, top_authored)| {
            let relative = real.strip_prefix(top_real).ok()?;
            if relative.as_os_str().is_empty() || (!self.recursive && relative.components().count() != 1) {
                return None;
            }
            let authored = top_authored.join(relative);
            (!self.exclude.excludes(top_authored, &authored)).then_some(authored)
        })
    }

    /// Whether what is inside the directory `real` is watched.
    pub fn descends(&self, real: &Path) -> bool {
        self.targets.iter().any(|(r, _)| r == real) || (self.recursive && self.authored(real).is_some())
    }

    fn is_target(&self, real: &Path) -> bool {
        self.targets.iter().any(|(r, _)| r == real)
    }
}

/// Every path a `file` beacon with `config` watches now, as authored,
/// with what it is (`halite-master inventory`): each path it names, and for
/// a directory what is in it (below it with `recursive`), less the
/// excluded. At most `limit` paths; the bool says whether more were left
/// out. Blocking (it lists directories and hashes files).
pub fn inventory(
    beacon: &str,
    config: &Value,
    root: &Path,
    limit: usize,
) -> Result<(Vec<halite_proto::WatchedPath>, bool), BeaconError> {
    let settings = settings(config)?;
    let scope = Scope {
        targets: settings.paths.iter().map(|p| (crate::rooted(root, p), p.clone())).collect(),
        recursive: settings.recursive,
        exclude: settings.exclude,
    };
    let mut paths = Vec::new();
    let mut truncated = false;
    let mut add = |authored: &Path, real: &Path| {
        if paths.len() >= limit {
            truncated = true;
            return false;
        }
        let (sha256, directory, exists) = match Observation::of(real) {
            Observation::Missing => (None, false, false),
            Observation::File { sha256, .. } => (Some(sha256), false, true),
            Observation::Directory { .. } => (None, true, true),
            Observation::Other(_) => (None, false, true),
        };
        paths.push(halite_proto::WatchedPath {
            beacon: beacon.to_owned(),
            path: authored.display().to_string(),
            sha256,
            directory,
            exists,
        });
        true
    };
    for (real, authored) in &scope.targets {
        if !add(authored, real) {
            break;
        }
        let mut stack = vec![real.clone()];
        while let Some(dir) = stack.pop() {
            let Ok(entries) = std::fs::read_dir(&dir) else { continue };
            let mut entries: Vec<_> = entries.filter_map(Result::ok).collect();
            entries.sort_by_key(std::fs::DirEntry::file_name);
            for entry in entries {
                let path = entry.path();
                let Some(authored) = scope.authored(&path) else { continue };
                if scope.recursive && entry.file_type().is_ok_and(|t| t.is_dir()) {
                    stack.push(path.clone());
                }
                if !add(&authored, &path) {
                    return Ok((paths, true));
                }
            }
        }
    }
    Ok((paths, truncated))
}

/// What a path looked like when last seen.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Observation {
    Missing,
    File {
        sha256: Sha256,
        mode: u32,
    },
    Directory {
        mode: u32,
    },
    /// A symbolic link, a file we may not read, …: reported as a modify.
    Other(String),
}

impl Observation {
    pub fn of(path: &Path) -> Observation {
        match std::fs::symlink_metadata(path) {
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Observation::Missing,
            Err(e) => Observation::Other(e.to_string()),
            Ok(meta) if meta.is_dir() => Observation::Directory { mode: meta.mode() & 0o7777 },
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
        (Observation::Directory { .. }, Observation::Directory { .. }) => Change::Attrib,
        _ => Change::Modify,
    }
}

/// The file a job left in the `desired` state, as the beacon observes
/// it; its mode is `now`'s when the state sets none.
fn left_by_job(desired: &Desired, now: &Observation) -> Observation {
    let mode = match (desired.mode, now) {
        (Some(mode), _) | (None, &Observation::File { mode, .. }) => mode,
        (None, _) => 0o644,
    };
    Observation::File { sha256: desired.sha256(), mode }
}

#[derive(Debug)]
struct OpenDrift {
    reported: Observation,
    /// What the report was a change from: the path's state again if the
    /// report never left ([`Tracker::unreport`]).
    from: Observation,
    until: Instant,
    window_checked: bool,
}

#[derive(Debug)]
struct PathState {
    last: Observation,
    open: Option<OpenDrift>,
    /// The path's applied generation at the last look: when a job has
    /// written it since, what it was before the next look is the job's
    /// result (the desired state), not `last`, and an open drift is closed.
    applied: u64,
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
        self.paths.insert(path.to_path_buf(), PathState { last: before, open: None, applied });
        if drifted { self.observe(path, now, desired, applied, at) } else { None }
    }

    /// Starts tracking a path that has just appeared (in a watched
    /// directory): the next observation of it is a create.
    pub fn track_new(&mut self, path: &Path) {
        self.paths.entry(path.to_path_buf()).or_insert(PathState {
            last: Observation::Missing,
            open: None,
            applied: 0,
        });
    }

    pub fn tracks(&self, path: &Path) -> bool {
        self.paths.contains_key(path)
    }

    /// Every tracked path.
    pub fn paths(&self) -> Vec<PathBuf> {
        self.paths.keys().cloned().collect()
    }

    /// Stops tracking `path` if it is gone and nothing about it is pending
    /// (a directory's entries come and go; their memory should not grow).
    pub fn forget_if_gone(&mut self, path: &Path) -> bool {
        let gone = self
            .paths
            .get(path)
            .is_some_and(|s| s.last == Observation::Missing && s.open.as_ref().is_none_or(|o| o.window_checked));
        if gone {
            self.paths.remove(path);
        }
        gone
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
        // A job wrote the file since the last look, and someone changed it
        // before this one (a drift right after the job that created it):
        // the change is from what the job left, not from what was seen
        // before the job (`Missing` would make it a create, which a beacon
        // watching modify, delete and attrib does not report).
        let job_wrote = std::mem::replace(&mut state.applied, applied) != applied;
        let before = match &desired {
            Some(desired) if job_wrote => left_by_job(desired, &now),
            _ => before,
        };
        if job_wrote {
            state.open = None;
        }
        if let Some(desired) = &desired
            && now.complies(desired)
        {
            state.open = None;
            return None;
        }
        // Unchanged since the last look; an open window still compares with
        // what it reported (a delete folded into a create is due at its end).
        if desired.is_none() && before == now && state.open.is_none() {
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
        state.open =
            Some(OpenDrift { reported: now.clone(), from: reference, until: at + debounce, window_checked: false });
        Some(Report { change, observation: now })
    }

    /// The last report about `path` never left (the outbox refused it):
    /// forget it, so that the next look reports the change again, against
    /// what the path was before it.
    pub fn unreport(&mut self, path: &Path) {
        if let Some(state) = self.paths.get_mut(path)
            && let Some(open) = state.open.take()
        {
            state.last = open.from;
        }
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

/// Whether a notification may mean a directory appeared or went away, so
/// the watches should be checked.
fn structural(kind: &notify::EventKind) -> bool {
    use notify::event::{EventKind, ModifyKind};
    matches!(
        kind,
        EventKind::Create(_) | EventKind::Remove(_) | EventKind::Modify(ModifyKind::Name(_)) | EventKind::Any
    ) || matches!(kind, EventKind::Other)
}

enum Wake {
    /// A notification, and when `notify`'s reader thread had it from
    /// inotify ([`halite_fs::hops::now`]: 0 unless hops are timed).
    Notify(notify::Result<notify::Event>, u64),
    /// A job finished writing this path.
    Applied(PathBuf),
    Stop,
}

/// The beacon thread's queue, bounded to [`NOTIFY_QUEUE`] wakes by a count.
/// Its memory is what is queued now: std's bounded channel would allocate
/// all its slots up front (about 260 KiB per file beacon, most of an idle
/// agent's heap), for bursts that rarely come.
#[derive(Clone)]
struct WakeQueue {
    tx: std_mpsc::Sender<Wake>,
    /// Wakes sent and not yet received, `Stop` aside.
    queued: Arc<AtomicUsize>,
}

impl WakeQueue {
    fn new() -> (WakeQueue, WakeReceiver) {
        let (tx, rx) = std_mpsc::channel();
        let queued = Arc::new(AtomicUsize::new(0));
        (WakeQueue { tx, queued: queued.clone() }, WakeReceiver { rx, queued })
    }

    /// Queues `wake` unless [`NOTIFY_QUEUE`] wakes are waiting already.
    fn try_send(&self, wake: Wake) -> Result<(), std_mpsc::TrySendError<Wake>> {
        if self.queued.fetch_add(1, Ordering::AcqRel) >= NOTIFY_QUEUE {
            self.queued.fetch_sub(1, Ordering::AcqRel);
            return Err(std_mpsc::TrySendError::Full(wake));
        }
        self.tx.send(wake).map_err(|std_mpsc::SendError(wake)| {
            self.queued.fetch_sub(1, Ordering::AcqRel);
            std_mpsc::TrySendError::Disconnected(wake)
        })
    }

    /// Stopping never waits for room (the guard may drop on a runtime thread).
    fn stop(&self) {
        let _ = self.tx.send(Wake::Stop);
    }
}

struct WakeReceiver {
    rx: std_mpsc::Receiver<Wake>,
    queued: Arc<AtomicUsize>,
}

impl WakeReceiver {
    fn recv_timeout(&self, timeout: Duration) -> Result<Wake, std_mpsc::RecvTimeoutError> {
        let wake = self.rx.recv_timeout(timeout)?;
        if !matches!(wake, Wake::Stop) {
            self.queued.fetch_sub(1, Ordering::AcqRel);
        }
        Ok(wake)
    }
}

/// Dropping it stops the beacon thread (which owns the watcher).
struct Guard {
    stop: WakeQueue,
}

impl Drop for Guard {
    fn drop(&mut self) {
        self.stop.stop();
    }
}

/// Arms the watches and takes the first look before returning, so that
/// what happens after the beacon set is replaced is seen (the agent
/// replaces it off the runtime threads, before it handles the next message
/// from the master).
fn start(context: Context, config: &Value) -> Result<Running, BeaconError> {
    let settings = settings(config)?;
    let (wake_tx, wake_rx) = WakeQueue::new();
    let notify_tx = wake_tx.clone();
    let overflowed = Arc::new(AtomicBool::new(false));
    let overflow_flag = overflowed.clone();
    let on_event = move |event| {
        // Full queue: the notification is dropped and the thread, seeing
        // the flag, looks at every path once.
        if notify_tx.try_send(Wake::Notify(event, halite_fs::hops::now())).is_err() {
            overflow_flag.store(true, Ordering::Relaxed);
        }
    };
    // Opens are not asked of the kernel: every read of a watched file (each
    // beacon's own scan, the agent's hashing, anyone's `cat`) would wake
    // the beacon for nothing (`reaction` ignores them).
    let kinds = EventKindMask::CORE | EventKindMask::ACCESS_CLOSE;
    let watcher = notify::RecommendedWatcher::new(on_event, notify::Config::default().with_event_kinds(kinds))
        .map_err(BeaconError::Inotify)?;
    let scope = Scope {
        targets: settings.paths.iter().map(|p| (context.real_path(p), p.clone())).collect(),
        recursive: settings.recursive,
        exclude: settings.exclude,
    };
    let mut beacon = FileBeacon {
        tracker: Tracker::new(settings.debounce, settings.events),
        scope,
        settling: HashMap::new(),
        overflowed,
        armed: HashMap::new(),
        watcher,
        scan: settings.scan,
        context,
        wake: wake_rx,
        pending: Vec::new(),
        unconfirmed: HashMap::new(),
        receipts_due: None,
        notified_at: 0,
    };
    let applied_tx = wake_tx.clone();
    beacon.context.managed.listen(Box::new(move |path| match applied_tx.try_send(Wake::Applied(path.to_path_buf())) {
        Err(std_mpsc::TrySendError::Disconnected(_)) => false,
        // Full: the beacon is busy with notifications, which include this write.
        Ok(()) | Err(std_mpsc::TrySendError::Full(_)) => true,
    }));
    beacon.arm(false);
    beacon.track_all();
    std::thread::Builder::new()
        .name(format!("beacon-{}", beacon.context.name))
        .spawn(move || beacon.run())
        .map_err(BeaconError::Thread)?;
    Ok(Running::new(Guard { stop: wake_tx }))
}

/// Rounds of [`FileBeacon::arm`] at most: deeper than any path it watches.
const MAX_ARM_ROUNDS: usize = 64;

struct FileBeacon {
    tracker: Tracker,
    scope: Scope,
    /// Files being written, and when to look at them at the latest.
    settling: HashMap<PathBuf, Instant>,
    /// Set when a notification could not be queued.
    overflowed: Arc<AtomicBool>,
    /// Directories watched now: whether recursively, and their inode (a
    /// directory removed and made again needs a new watch).
    armed: HashMap<PathBuf, (bool, u64)>,
    watcher: notify::RecommendedWatcher,
    scan: Duration,
    context: Context,
    wake: WakeReceiver,
    /// Reports made before the thread ran, sent by it (sending could wait
    /// for the agent's main loop, which is waiting for `start`).
    pending: Vec<(PathBuf, Report)>,
    /// Reports whose event the outbox has not confirmed yet, by path (a
    /// later report replaces an earlier one: it says more).
    unconfirmed: HashMap<PathBuf, Receipt>,
    /// When to read the receipts in `unconfirmed`.
    receipts_due: Option<Instant>,
    /// When inotify delivered the notification being handled (hop timing).
    notified_at: u64,
}

fn inode(path: &Path) -> Option<u64> {
    std::fs::symlink_metadata(path).ok().filter(std::fs::Metadata::is_dir).map(|m| m.ino())
}

impl FileBeacon {
    /// The directories to watch: each watched directory itself (with
    /// `recursive`, the notify watcher adds those below it), and each
    /// path's parent or, while that does not exist yet, its nearest
    /// existing ancestor, whose notifications tell when the next level
    /// appears.
    fn wanted(&self) -> HashMap<PathBuf, bool> {
        let mut wanted: HashMap<PathBuf, bool> = HashMap::new();
        for (real, _) in &self.scope.targets {
            if inode(real).is_some() {
                *wanted.entry(real.clone()).or_default() |= self.scope.recursive;
            }
            let parent = real.parent().unwrap_or(real);
            if let Some(dir) = parent.ancestors().find(|d| d.is_dir()) {
                wanted.entry(dir.to_path_buf()).or_default();
            }
        }
        wanted
    }

    /// Brings the watches in line with what exists now; a watched directory
    /// that appeared is listed, its entries reported as created unless
    /// this is the first look. Returns whether a new directory is watched.
    fn arm(&mut self, report_new: bool) -> bool {
        // A directory made between reading what exists and watching its
        // parent sends that new watch no event (a job's `mkdir -p` of
        // /etc/nginx races the watch on /etc): look again until what is
        // wanted stops changing. Each round watches a deeper directory, so
        // this ends within the paths' depth, bounded anyway against churn.
        let mut armed_new = false;
        for _ in 0..MAX_ARM_ROUNDS {
            if !self.arm_once(report_new) {
                break;
            }
            armed_new = true;
        }
        armed_new
    }

    fn arm_once(&mut self, report_new: bool) -> bool {
        let wanted = self.wanted();
        let stale: Vec<PathBuf> = self
            .armed
            .iter()
            .filter(|(dir, (recursive, ino))| wanted.get(*dir) != Some(recursive) || inode(dir) != Some(*ino))
            .map(|(dir, _)| dir.clone())
            .collect();
        for dir in stale {
            self.armed.remove(&dir);
            // It may be gone already, its watch with it.
            let _ = self.watcher.unwatch(&dir);
        }
        let mut armed_new = false;
        for (dir, recursive) in wanted {
            if self.armed.contains_key(&dir) {
                continue;
            }
            let Some(ino) = inode(&dir) else { continue };
            let mode = if recursive { RecursiveMode::Recursive } else { RecursiveMode::NonRecursive };
            match self.watcher.watch(&dir, mode) {
                Ok(()) => {
                    self.armed.insert(dir.clone(), (recursive, ino));
                    armed_new = true;
                    if self.scope.is_target(&dir) {
                        self.discover(&dir, report_new);
                    }
                }
                Err(error) => tracing::warn!(
                    beacon = %self.context.name, path = %dir.display(), %error,
                    "Cannot watch this directory; the periodic scan keeps looking."
                ),
            }
        }
        armed_new
    }

    /// Tracks what is in the watched directory `dir` and not tracked yet:
    /// as created (`report`), or as it is (the first look).
    fn discover(&mut self, dir: &Path, report: bool) {
        let mut stack = vec![dir.to_path_buf()];
        while let Some(dir) = stack.pop() {
            let Ok(entries) = std::fs::read_dir(&dir) else { continue };
            for entry in entries.filter_map(Result::ok) {
                let path = entry.path();
                if self.scope.authored(&path).is_none() {
                    continue;
                }
                if self.scope.recursive && entry.file_type().is_ok_and(|t| t.is_dir()) {
                    stack.push(path.clone());
                }
                if self.tracker.tracks(&path) {
                    continue;
                }
                if report {
                    self.tracker.track_new(&path);
                    self.look(&path, false);
                } else {
                    self.track(&path);
                }
            }
        }
    }

    fn emit(&mut self, real: &Path, report: &Report) {
        let authored = self.scope.authored(real).unwrap_or_else(|| real.to_path_buf());
        let mut data = Value::map().with("path", authored.display().to_string()).with("kind", report.change.as_str());
        match &report.observation {
            Observation::File { sha256, mode } => {
                data = data.with("sha256", sha256.to_hex()).with("mode", format!("{mode:04o}"));
            }
            Observation::Directory { mode } => data = data.with("directory", true).with("mode", format!("{mode:04o}")),
            Observation::Missing => {}
            Observation::Other(what) => data = data.with("error", what.as_str()),
        }
        data = data.with("managed", self.context.managed.desired(real).is_some());
        tracing::info!(beacon = %self.context.name, path = %authored.display(), change = report.change.as_str(), "File changed.");
        let event = Event::new(self.context.tag(), self.context.agent.as_str(), data);
        let receipt = self.context.receipts.expect(event.id);
        halite_fs::hops::mark_at("agent.inotify", event.id.0, std::mem::take(&mut self.notified_at));
        halite_fs::hops::mark("agent.beacon", event.id.0);
        if self.context.events.blocking_send(event).is_err() {
            tracing::debug!(beacon = %self.context.name, "Agent is shutting down; event not sent.");
            return;
        }
        self.unconfirmed.insert(real.to_path_buf(), receipt);
        self.receipts_due.get_or_insert_with(|| Instant::now() + RECEIPT_CHECK);
    }

    /// Forgets confirmed reports; undoes refused ones and looks again, so
    /// that they are reported anew.
    fn check_receipts(&mut self) {
        let mut refused = Vec::new();
        self.unconfirmed.retain(|path, receipt| match receipt.outcome() {
            Some(Outcome::Stored) => false,
            Some(Outcome::Refused) => {
                refused.push(path.clone());
                false
            }
            None => true,
        });
        self.receipts_due = (!self.unconfirmed.is_empty()).then(|| Instant::now() + RECEIPT_CHECK);
        for path in refused {
            tracing::warn!(beacon = %self.context.name, path = %path.display(), "The outbox refused this change's event (it is full); reporting it again.");
            self.tracker.unreport(&path);
            self.look(&path, false);
        }
    }

    /// Starts tracking `real` as it is, reporting a managed file that
    /// drifted while nobody watched.
    fn track(&mut self, real: &Path) {
        let Some((observation, record)) = self.observe_steady(real) else {
            // A job is writing it: start from what is there, quietly;
            // the job's end makes the beacon look again.
            let record = self.context.managed.snapshot(real);
            self.tracker.track(real, Observation::of(real), None, record.applied, Instant::now());
            return;
        };
        if let Some(report) = self.tracker.track(real, observation, record.desired, record.applied, Instant::now()) {
            self.pending.push((real.to_path_buf(), report));
        }
    }

    /// Looks at every authored path once (the first look).
    fn track_all(&mut self) {
        let targets: Vec<PathBuf> = self.scope.targets.iter().map(|(real, _)| real.clone()).collect();
        for real in targets {
            if !self.tracker.tracks(&real) {
                self.track(&real);
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

    fn flush_pending(&mut self) {
        for (real, report) in std::mem::take(&mut self.pending) {
            self.emit(&real, &report);
        }
    }

    fn run(mut self) {
        self.flush_pending();
        let mut next_scan = Instant::now() + self.scan;
        loop {
            let deadline = [self.tracker.next_deadline(), self.settling.values().min().copied(), self.receipts_due]
                .into_iter()
                .flatten()
                .fold(next_scan, Instant::min);
            match self.wake.recv_timeout(deadline.saturating_duration_since(Instant::now())) {
                Ok(Wake::Stop) | Err(std_mpsc::RecvTimeoutError::Disconnected) => return,
                Ok(Wake::Notify(Ok(event), at)) => {
                    self.notified_at = at;
                    self.notified(&event);
                }
                Ok(Wake::Applied(path)) => {
                    if self.tracker.tracks(&path) || self.scope.authored(&path).is_some() {
                        self.tracker.track_new(&path);
                        self.look_after_job(&path);
                    }
                }
                Ok(Wake::Notify(Err(error), _)) => {
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
            if self.receipts_due.is_some_and(|due| due <= now) {
                self.check_receipts();
            }
            if now >= next_scan {
                self.scan_all();
                next_scan = now + self.scan;
            }
        }
    }

    fn notified(&mut self, event: &notify::Event) {
        if event.need_rescan() {
            self.scan_all();
        }
        let structural = structural(&event.kind);
        if structural && self.arm(true) {
            // Files may have appeared before the new watch did.
            self.look_at_targets();
        }
        let reaction = reaction(&event.kind);
        if reaction == Reaction::Ignore {
            return;
        }
        for path in &event.paths {
            if !self.tracker.tracks(path) {
                if self.scope.authored(path).is_none() {
                    continue;
                }
                self.tracker.track_new(path);
            }
            // A directory that appeared below a watched one: what is in it
            // may predate the watch the notify watcher adds for it.
            if structural && self.scope.recursive && self.scope.descends(path) && inode(path).is_some() {
                self.discover(path, true);
            }
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

    fn look(&mut self, real: &Path, window_ended: bool) {
        let Some((observation, record)) = self.observe_steady(real) else {
            if window_ended {
                self.tracker.close_window(real);
            }
            return;
        };
        self.judge(real, observation, record, window_ended);
    }

    /// What [`FileBeacon::look`] does with a steady observation.
    fn judge(&mut self, real: &Path, observation: Observation, record: Snapshot, window_ended: bool) {
        let at = Instant::now();
        let report = if window_ended {
            self.tracker.window_ended(real, observation, record.desired, record.applied, at)
        } else {
            self.tracker.observe(real, observation, record.desired, record.applied, at)
        };
        if let Some(report) = report {
            self.emit(real, &report);
        }
        // Entries of a directory come and go; authored paths stay tracked.
        if !self.scope.is_target(real) {
            self.tracker.forget_if_gone(real);
        }
    }

    /// The look a job's end asks for. This wake may be read after someone
    /// began writing the file (their truncate queued behind it): a file
    /// the job left right is looked at now, one that already differs is
    /// waited for as a data notification is (its writer's close, or at most
    /// [`WRITE_SETTLE`]), so a truncate-then-write of the desired content
    /// just after a job is not taken for drift.
    /// The file is read once: the observation that says it complies is the
    /// one judged (reading it twice cost every restore a second hash).
    fn look_after_job(&mut self, real: &Path) {
        match self.observe_steady(real) {
            Some((now, record)) if record.desired.as_ref().is_none_or(|desired| now.complies(desired)) => {
                self.judge(real, now, record, false);
            }
            _ => {
                self.settling.entry(real.to_path_buf()).or_insert_with(|| Instant::now() + WRITE_SETTLE);
            }
        }
    }

    fn look_at_targets(&mut self) {
        let targets: Vec<PathBuf> = self.scope.targets.iter().map(|(real, _)| real.clone()).collect();
        for path in targets {
            self.look(&path, false);
        }
    }

    /// The safety net: re-arms, re-lists every watched directory and looks
    /// at every tracked path.
    fn scan_all(&mut self) {
        self.arm(true);
        let dirs: Vec<PathBuf> =
            self.scope.targets.iter().filter(|(real, _)| inode(real).is_some()).map(|(real, _)| real.clone()).collect();
        for dir in dirs {
            self.discover(&dir, true);
        }
        for path in self.tracker.paths() {
            self.look(&path, false);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_declared_kinds_are_the_changes_it_reports() {
        let declared = KIND.fields.iter().find(|f| f.name == "kind").map(|f| f.values.to_vec());
        assert_eq!(declared, Some(Change::all().into_iter().map(Change::as_str).collect::<Vec<_>>()));
    }

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
    fn a_report_that_never_left_is_made_again_against_what_was_before() {
        let path = Path::new("/etc/x");
        let t0 = Instant::now();
        let mut tracker = Tracker::new(500 * MS, Change::all());
        tracker.track(path, file(b"good", 0o644), desired(b"good"), 0, t0);
        let report = tracker.observe(path, file(b"bad", 0o644), desired(b"good"), 0, t0 + MS).unwrap();
        // Reported and open: an unchanged file is not reported again.
        assert_eq!(tracker.observe(path, file(b"bad", 0o644), desired(b"good"), 0, t0 + 600 * MS), None);
        // The outbox refused it: the next look reports it again, the same way.
        tracker.unreport(path);
        assert_eq!(tracker.observe(path, file(b"bad", 0o644), desired(b"good"), 0, t0 + 700 * MS), Some(report));
        // Unmanaged: a change undone before the report got out is nothing.
        let log = Path::new("/var/log/x");
        tracker.track(log, file(b"a", 0o644), None, 0, t0);
        assert!(tracker.observe(log, file(b"b", 0o644), None, 0, t0 + MS).is_some());
        tracker.unreport(log);
        assert_eq!(tracker.observe(log, file(b"a", 0o644), None, 0, t0 + 600 * MS), None);
        // A path without an open drift has nothing to undo.
        tracker.unreport(log);
        assert_eq!(tracker.observe(log, file(b"a", 0o644), None, 0, t0 + 700 * MS), None);
    }

    /// The beacon thread reads its receipts: a refused report is made
    /// again (well before the periodic scan), a stored one is not.
    #[test]
    fn the_beacon_reports_again_what_the_outbox_refused() {
        use crate::outbox::Receipts;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("x");
        std::fs::write(&path, "a").unwrap();
        let (tx, mut rx) = tokio::sync::mpsc::channel(16);
        let receipts = Receipts::default();
        let context = Context {
            name: "f".into(),
            agent: "a".into(),
            events: tx,
            managed: crate::managed::ManagedFiles::in_memory(),
            root: "/".into(),
            receipts: receipts.clone(),
        };
        let paths = Value::List(vec![Value::from(path.display().to_string().as_str())]);
        let config = Value::map().with("paths", paths).with("debounce", "10ms").with("scan", "1h");
        let _running = (KIND.start)(context, &config).unwrap();
        let runtime = tokio::runtime::Builder::new_current_thread().enable_time().build().unwrap();
        let mut next = || {
            runtime
                .block_on(async { tokio::time::timeout(Duration::from_secs(60), rx.recv()).await })
                .expect("an event")
                .unwrap()
        };
        std::fs::write(&path, "b").unwrap();
        let first = next();
        assert_eq!(first.data.get("kind").and_then(Value::as_str), Some("modify"));
        receipts.settle([(first.id, Outcome::Refused)]);
        let again = next();
        assert_ne!(again.id, first.id);
        assert_eq!(again.data, first.data, "the same change, reported again");
        receipts.settle([(again.id, Outcome::Stored)]);
        assert_eq!(receipts.waiting(), 0);
    }

    fn scope(targets: &[&str], recursive: bool, exclude: &[&str]) -> Scope {
        Scope {
            targets: targets.iter().map(|t| (PathBuf::from(format!("/root{t}")), PathBuf::from(t))).collect(),
            recursive,
            exclude: Exclude::new(&exclude.iter().map(|e| (*e).to_owned()).collect::<Vec<_>>()).unwrap(),
        }
    }

    #[test]
    fn scope_decides_which_entries_are_watched() {
        let flat = scope(&["/etc/app", "/etc/motd"], false, &["*.swp", ".git", "/etc/app/cache/*"]);
        let deep = scope(&["/etc/app"], true, &["*.swp", ".git", "/etc/app/cache/*"]);
        let cases: &[(&Scope, &str, Option<&str>)] = &[
            (&flat, "/root/etc/motd", Some("/etc/motd")),
            (&flat, "/root/etc/app", Some("/etc/app")),
            (&flat, "/root/etc/app/a.conf", Some("/etc/app/a.conf")),
            (&flat, "/root/etc/app/sub/a.conf", None),
            (&flat, "/root/etc/app/a.conf.swp", None),
            (&flat, "/root/etc/other", None),
            (&flat, "/root/etc/motdx", None),
            (&deep, "/root/etc/app/sub/a.conf", Some("/etc/app/sub/a.conf")),
            (&deep, "/root/etc/app/sub/.a.conf.swp", None),
            (&deep, "/root/etc/app/.git/HEAD", None),
            (&deep, "/root/etc/app/cache/x", None),
            (&deep, "/root/etc/app/cache/x/y", None),
            (&deep, "/root/etc/app/cache", Some("/etc/app/cache")),
            (&deep, "/root/etc/app/sub/cache/x", Some("/etc/app/sub/cache/x")),
        ];
        for (scope, real, expected) in cases {
            assert_eq!(
                scope.authored(Path::new(real)).as_deref(),
                expected.map(Path::new),
                "{real} (recursive: {})",
                scope.recursive
            );
        }
        assert!(deep.descends(Path::new("/root/etc/app/sub")));
        assert!(!flat.descends(Path::new("/root/etc/app/sub")));
        assert!(flat.descends(Path::new("/root/etc/app")));
    }

    #[test]
    fn entries_of_a_directory_are_created_modified_and_deleted() {
        let path = Path::new("/srv/drop/a");
        let t0 = Instant::now();
        let mut tracker = Tracker::new(Duration::ZERO, Change::all());
        tracker.track_new(path);
        assert_eq!(tracker.observe(path, file(b"a", 0o644), None, 0, t0).map(|r| r.change), Some(Change::Create));
        assert_eq!(tracker.observe(path, file(b"b", 0o644), None, 0, t0 + MS).map(|r| r.change), Some(Change::Modify));
        assert_eq!(
            tracker.observe(path, file(b"b", 0o600), None, 0, t0 + 2 * MS).map(|r| r.change),
            Some(Change::Attrib)
        );
        assert_eq!(tracker.observe(path, file(b"b", 0o600), None, 0, t0 + 3 * MS), None, "nothing changed");
        assert_eq!(
            tracker.observe(path, Observation::Missing, None, 0, t0 + 4 * MS).map(|r| r.change),
            Some(Change::Delete)
        );
        // Once its window is checked, a deleted entry is forgotten.
        assert!(!tracker.forget_if_gone(path), "its debounce window is still open");
        tracker.close_window(path);
        assert!(tracker.forget_if_gone(path));
        assert!(!tracker.tracks(path));
    }

    #[test]
    fn directories_are_created_deleted_and_chmodded_but_not_modified() {
        let path = Path::new("/srv/tree/sub");
        let t0 = Instant::now();
        let mut tracker = Tracker::new(Duration::ZERO, Change::all());
        tracker.track_new(path);
        let dir = |mode| Observation::Directory { mode };
        assert_eq!(tracker.observe(path, dir(0o755), None, 0, t0).map(|r| r.change), Some(Change::Create));
        assert_eq!(tracker.observe(path, dir(0o755), None, 0, t0 + MS), None, "an entry added is not the dir's change");
        assert_eq!(tracker.observe(path, dir(0o700), None, 0, t0 + 2 * MS).map(|r| r.change), Some(Change::Attrib));
        assert_eq!(
            tracker.observe(path, Observation::Missing, None, 0, t0 + 3 * MS).map(|r| r.change),
            Some(Change::Delete)
        );
    }

    #[test]
    fn a_delete_inside_the_debounce_window_is_reported_when_it_ends() {
        let path = Path::new("/srv/drop/a");
        let t0 = Instant::now();
        let mut tracker = Tracker::new(500 * MS, Change::all());
        tracker.track_new(path);
        assert_eq!(tracker.observe(path, file(b"a", 0o644), None, 0, t0).map(|r| r.change), Some(Change::Create));
        assert_eq!(tracker.observe(path, Observation::Missing, None, 0, t0 + MS), None, "folded into the create");
        assert!(!tracker.forget_if_gone(path), "the window must still report it");
        assert_eq!(tracker.due(t0 + 500 * MS), vec![path.to_path_buf()]);
        let delete = tracker.window_ended(path, Observation::Missing, None, 0, t0 + 500 * MS);
        assert_eq!(delete.map(|r| r.change), Some(Change::Delete));
    }

    #[test]
    fn a_managed_file_appearing_as_desired_in_a_directory_is_not_drift() {
        let path = Path::new("/etc/app/managed.conf");
        let mut tracker = Tracker::new(500 * MS, Change::all());
        tracker.track_new(path);
        assert_eq!(tracker.observe(path, file(b"good", 0o644), desired(b"good"), 1, Instant::now()), None);
    }

    /// The drift benchmark's first drift, 10 times in 150 runs: the job
    /// that created the file had answered, the beacon had not looked yet,
    /// and it took the drifted file for a create (not among the changes
    /// it reports), so the drift went unreported until the next change.
    #[test]
    fn a_change_before_the_first_look_at_a_file_a_job_created_is_drift() {
        let path = Path::new("/etc/nginx/nginx.conf");
        let t0 = Instant::now();
        let watched = vec![Change::Modify, Change::Delete, Change::Attrib];
        // Started before the job: no file, nothing desired yet.
        let mut tracker = Tracker::new(500 * MS, watched.clone());
        assert_eq!(tracker.track(path, Observation::Missing, None, 0, t0), None);
        // The job made it (applied generation 1); it was appended to
        // before the beacon's first look.
        let report = tracker.observe(path, file(b"good\nmore\n", 0o644), desired(b"good\n"), 1, t0 + MS);
        assert_eq!(report.map(|r| r.change), Some(Change::Modify));
        // Only its mode changed before the look: an attrib.
        let mut tracker = Tracker::new(500 * MS, watched);
        tracker.track(path, Observation::Missing, None, 0, t0);
        let report = tracker.observe(path, file(b"good\n", 0o600), desired(b"good\n"), 1, t0 + MS);
        assert_eq!(report.map(|r| r.change), Some(Change::Attrib));
        // Made by someone else (no job since): still a create.
        let mut tracker = Tracker::new(500 * MS, Change::all());
        tracker.track(path, Observation::Missing, None, 0, t0);
        let report = tracker.observe(path, file(b"other\n", 0o644), desired(b"good\n"), 0, t0 + MS);
        assert_eq!(report.map(|r| r.change), Some(Change::Create));
    }

    #[test]
    fn only_the_asked_for_changes_of_entries_are_reported() {
        let path = Path::new("/srv/drop/a");
        let t0 = Instant::now();
        let mut tracker = Tracker::new(Duration::ZERO, vec![Change::Delete]);
        tracker.track_new(path);
        assert_eq!(tracker.observe(path, file(b"a", 0o644), None, 0, t0), None);
        assert_eq!(tracker.observe(path, file(b"b", 0o644), None, 0, t0 + MS), None);
        assert_eq!(
            tracker.observe(path, Observation::Missing, None, 0, t0 + 2 * MS).map(|r| r.change),
            Some(Change::Delete)
        );
    }

    #[test]
    fn the_inventory_lists_named_paths_and_directory_entries_less_the_excluded() {
        let root = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(root.path().join("etc/app/conf.d")).unwrap();
        std::fs::write(root.path().join("etc/app/main.conf"), "main").unwrap();
        std::fs::write(root.path().join("etc/app/main.conf.swp"), "x").unwrap();
        std::fs::write(root.path().join("etc/app/conf.d/extra.conf"), "extra").unwrap();
        let config = Value::map()
            .with("paths", Value::List(vec!["/etc/app".into(), "/etc/missing".into()]))
            .with("exclude", Value::List(vec!["*.swp".into()]));
        let (paths, truncated) = inventory("app", &config, root.path(), 100).unwrap();
        let listed: Vec<(&str, bool, bool)> = paths.iter().map(|p| (p.path.as_str(), p.directory, p.exists)).collect();
        assert_eq!(
            listed,
            [
                ("/etc/app", true, true),
                ("/etc/app/conf.d", true, true),
                ("/etc/app/main.conf", false, true),
                ("/etc/missing", false, false)
            ],
            "one level without `recursive`, excluded names left out"
        );
        assert_eq!(paths[2].sha256, Some(Sha256::of(b"main")));
        assert!(!truncated);
        let recursive = config.clone().with("recursive", true);
        let (paths, _) = inventory("app", &recursive, root.path(), 100).unwrap();
        assert!(paths.iter().any(|p| p.path == "/etc/app/conf.d/extra.conf"));
        let (paths, truncated) = inventory("app", &recursive, root.path(), 2).unwrap();
        assert_eq!((paths.len(), truncated), (2, true), "bounded");
    }

    #[test]
    fn config_errors_say_what_to_write() {
        let bad = |yaml: &str| {
            let json: serde_json::Value = serde_saphyr::from_str(yaml).unwrap();
            validate(&Value::from_json(&json)).unwrap_err().to_string()
        };
        assert!(bad("paths: [etc/x]\n").contains("not absolute"));
        assert!(bad("paths: [/x]\ndebounce: soon\n").contains("500ms"));
        assert!(bad("paths: [/x]\nevents: [written]\n").contains("written"));
        assert!(bad("path: [/x]\n").contains("path"));
        assert!(bad("paths: [/x]\nexclude: ['a[']\n").contains("exclude"));
    }

    #[test]
    fn the_wake_queue_is_bounded_by_count_and_stop_always_gets_in() {
        let (queue, receiver) = WakeQueue::new();
        let applied = || Wake::Applied(PathBuf::from("/etc/x"));
        for _ in 0..NOTIFY_QUEUE {
            assert!(queue.try_send(applied()).is_ok());
        }
        assert!(matches!(queue.try_send(applied()), Err(std_mpsc::TrySendError::Full(_))));
        queue.stop();
        // Receiving one makes room for one.
        assert!(matches!(receiver.recv_timeout(Duration::ZERO), Ok(Wake::Applied(_))));
        assert!(queue.try_send(applied()).is_ok());
        assert!(matches!(queue.try_send(applied()), Err(std_mpsc::TrySendError::Full(_))));
        for _ in 0..NOTIFY_QUEUE - 1 {
            assert!(matches!(receiver.recv_timeout(Duration::ZERO), Ok(Wake::Applied(_))));
        }
        assert!(matches!(receiver.recv_timeout(Duration::ZERO), Ok(Wake::Stop)));
        assert!(matches!(receiver.recv_timeout(Duration::ZERO), Ok(Wake::Applied(_))));
        drop(receiver);
        assert!(matches!(queue.try_send(applied()), Err(std_mpsc::TrySendError::Disconnected(_))));
    }
}

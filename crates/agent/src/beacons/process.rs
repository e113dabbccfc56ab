//! The `process` beacon: whether a named process is running, from /proc,
//! reported as `present` or `absent` when that changes. `for` and
//! `debounce` are `sampled.rs`'s machine; this file owns the scan.
//!
//! A scan of all of /proc was an idle agent's costliest wake-up (issue #21:
//! 1 to 1.7 ms for 140 processes, most of the agent's idle CPU). So where
//! the kernel lets it (`crate::proc_events`: root with CAP_NET_ADMIN in the
//! initial namespaces) the beacon follows the kernel's process events
//! instead ([`Source::Events`]): /proc is scanned whole once at the start,
//! after the kernel reports lost events, and every [`RESCAN`]; in between a
//! sample reads the socket's queued events (none on a quiet host: one
//! system call) and only the `comm` of processes that were forked from an
//! unknown parent, exec'd or renamed since. Where it cannot subscribe it
//! scans every interval ([`Source::Scan`]), and logs which it does.
//!
//! A scan reads each process's `comm`, and its argv[0] (`cmdline`, a read
//! of the other process's memory) only when its pid or its `comm` is new
//! since the last scan ([`Known`]). Reads go into a stack buffer, without
//! the size query `std::fs::read` makes first.

use std::collections::{HashMap, HashSet};
use std::io::Read;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use halite_proto::Value;
use serde::Deserialize;

use super::sampled::{self, Machine, SampleError, Sampler, Span, Timing};
use super::{BeaconError, BeaconKind, Context, EventField, Running, decode};
use crate::proc_events::{Drained, ProcEvent, ProcEvents};

pub static KIND: BeaconKind = BeaconKind {
    name: "process",
    summary: "A named process present or absent (/proc/*/comm, or argv[0]'s base name).",
    example: "name: nginx\nfor: 10s\ninterval: 5s\n",
    validate,
    start,
    fields: &[
        EventField::any("name"),
        EventField { name: "state", values: &["present", "absent", "error"] },
        EventField::any("count"),
        // When sampling fails (`state: error`).
        EventField::any("error"),
    ],
};

const PROC: &str = "/proc";

/// While following the kernel's events, /proc is still scanned whole this
/// often: the kernel drops an event silently when it cannot allocate it
/// (under memory pressure), and a process whose main thread ended while
/// its other threads run was reported ended. One scan (about 1 ms) per ten
/// minutes bounds how long such a miss lasts.
const RESCAN: Duration = Duration::from_secs(600);

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Config {
    /// The executable's name, as `ps -e` or `pgrep -x` shows it.
    name: String,
    #[serde(default, rename = "for")]
    sustain: Option<Span>,
    #[serde(default)]
    interval: Option<Span>,
    #[serde(default)]
    debounce: Option<Span>,
}

fn settings(config: &Value) -> Result<(String, Timing), BeaconError> {
    let c: Config = decode(config)?;
    if c.name.is_empty() {
        return Err(BeaconError::Empty { key: "name", hint: "write the process name, e.g. `name: nginx`" });
    }
    if c.name.contains('/') || c.name.contains('\0') {
        return Err(BeaconError::ProcessPath { name: c.name });
    }
    Ok((c.name, Timing::parse(c.interval.as_ref(), c.sustain.as_ref(), c.debounce.as_ref())?))
}

fn validate(config: &Value) -> Result<(), BeaconError> {
    settings(config).map(|_| ())
}

fn start(context: Context, config: &Value) -> Result<Running, BeaconError> {
    let (name, timing) = settings(config)?;
    let sampler = Presence {
        beacon: context.name.clone(),
        name,
        proc: PathBuf::from(PROC),
        machine: Machine::new(&timing, None),
        known: HashMap::new(),
        source: Source::Undecided,
    };
    sampled::start(context, timing.interval, sampler)
}

/// How the beacon learns which processes run.
enum Source {
    /// Decided by the first sample, on the beacon's own thread (subscribing
    /// waits for the kernel's answer).
    Undecided,
    /// The kernel's process events, applied to [`Presence::known`].
    Events {
        events: ProcEvents,
        /// Processes whose `comm` the next sample reads: exec'd, renamed, or
        /// forked from a parent not known (or itself to be read).
        dirty: HashSet<u32>,
        /// The last whole scan; `None` until one succeeded.
        scanned: Option<Instant>,
    },
    /// All of /proc every interval: where the events are not available.
    Scan,
}

struct Presence {
    /// The beacon's name, for the log.
    beacon: String,
    name: String,
    proc: PathBuf,
    /// Present or not. Starts with nothing reported: there is no "normal"
    /// to assume, so the first settled state is news.
    machine: Machine<bool>,
    /// What the last scan found, per pid, and what the events said since.
    known: HashMap<u32, Known>,
    source: Source,
}

/// A process as the last scan saw it: its `comm` and whether it was
/// `name`. While its `comm` stays the same its argv[0] is not read again:
/// a process that rewrites its argv[0] later, or a pid reused between two
/// scans by a process of the same `comm`, keeps the verdict it had (an
/// `exec` changes `comm` to the new program's name, so it is read again).
#[derive(Debug, Clone, PartialEq, Eq)]
struct Known {
    comm: Vec<u8>,
    named: bool,
}

impl Sampler for Presence {
    fn sample(&mut self, now: Instant) -> Result<Option<Value>, SampleError> {
        let count = self.look(now)?;
        let Some(transition) = self.machine.observe(count > 0, now) else { return Ok(None) };
        let state = if transition.to { "present" } else { "absent" };
        Ok(Some(self.subject().with("state", state).with("count", i64::try_from(count).unwrap_or(i64::MAX))))
    }

    fn subject(&self) -> Value {
        Value::map().with("name", self.name.as_str())
    }

    fn forget(&mut self) {
        self.machine.forget();
    }
}

impl Presence {
    /// How many processes are called `name` now.
    fn look(&mut self, now: Instant) -> Result<usize, SampleError> {
        if matches!(self.source, Source::Undecided) {
            self.source = match ProcEvents::subscribe() {
                Ok(events) => {
                    tracing::info!(beacon = %self.beacon, "The process beacon follows the kernel's process events.");
                    Source::Events { events, dirty: HashSet::new(), scanned: None }
                }
                Err(error) => {
                    tracing::info!(beacon = %self.beacon, %error, "The process beacon scans /proc every interval: the kernel's process events are not available to it.");
                    Source::Scan
                }
            };
        }
        let Source::Events { events, dirty, scanned } = &mut self.source else {
            return count(&self.proc, &self.name, &mut self.known);
        };
        let known = &mut self.known;
        let whole = match events.drain(|event| follow(known, dirty, event)) {
            Ok(Drained::Complete) => scanned.is_none_or(|at| now.saturating_duration_since(at) >= RESCAN),
            // A fresh subscription drops what is still queued, unread, and
            // comes before the scan, so that nothing falls between them.
            Ok(Drained::Lost) => match ProcEvents::subscribe() {
                Ok(fresh) => {
                    tracing::debug!(beacon = %self.beacon, "The kernel dropped process events; scanning /proc.");
                    *events = fresh;
                    true
                }
                Err(error) => {
                    tracing::warn!(beacon = %self.beacon, %error, "The process beacon scans /proc every interval from now on.");
                    self.source = Source::Scan;
                    return count(&self.proc, &self.name, &mut self.known);
                }
            },
            Err(error) => {
                tracing::warn!(beacon = %self.beacon, %error, "The process beacon scans /proc every interval from now on.");
                self.source = Source::Scan;
                return count(&self.proc, &self.name, &mut self.known);
            }
        };
        if whole {
            // The events queued meanwhile are applied on top at the next
            // sample: each leaves what it describes, so applying one the
            // scan already saw changes nothing.
            dirty.clear();
            *scanned = None;
            let found = count(&self.proc, &self.name, known)?;
            *scanned = Some(now);
            return Ok(found);
        }
        for pid in dirty.drain() {
            refresh(&self.proc, &self.name, pid, known);
        }
        Ok(known.values().filter(|process| process.named).count())
    }
}

/// One process event applied to `known`: what it makes unknown goes into
/// `dirty`, to be read at the sample.
fn follow(known: &mut HashMap<u32, Known>, dirty: &mut HashSet<u32>, event: ProcEvent) {
    match event {
        // A fork runs its parent's program under its parent's name.
        ProcEvent::Fork { parent, child } => match known.get(&parent) {
            Some(seen) if !dirty.contains(&parent) => {
                let seen = seen.clone();
                known.insert(child, seen);
            }
            _ => {
                dirty.insert(child);
            }
        },
        ProcEvent::Exec { pid } | ProcEvent::Comm { pid } => {
            dirty.insert(pid);
        }
        // Ended: not counted from now on, though its parent may not have
        // reaped it yet (a scan still reads a zombie's comm).
        ProcEvent::Exit { pid } => {
            known.remove(&pid);
            dirty.remove(&pid);
        }
    }
}

/// Reads again what `pid` runs (gone: forgotten).
fn refresh(proc: &Path, name: &str, pid: u32, known: &mut HashMap<u32, Known>) {
    let dir = proc.join(pid.to_string());
    let mut buffer = [0u8; 64];
    match read_small(&dir.join("comm"), &mut buffer) {
        Some(comm) => {
            let named = is_named(comm, name) || read_argv0_named(&dir, name);
            known.insert(pid, Known { comm: comm.to_vec(), named });
        }
        None => {
            known.remove(&pid);
        }
    }
}

/// How many processes under `proc` are called `name`; `known` is what the
/// last scan found and becomes what this one found.
fn count(proc: &Path, name: &str, known: &mut HashMap<u32, Known>) -> Result<usize, SampleError> {
    let entries = std::fs::read_dir(proc).map_err(|source| SampleError::List { path: proc.to_owned(), source })?;
    let mut count = 0;
    let mut found = HashMap::with_capacity(known.len());
    let mut path = proc.to_path_buf();
    for entry in entries.flatten() {
        let Some(pid) = entry
            .file_name()
            .to_str()
            .filter(|n| n.bytes().all(|b| b.is_ascii_digit()))
            .and_then(|n| n.parse::<u32>().ok())
        else {
            continue;
        };
        path.push(entry.file_name());
        path.push("comm");
        let mut buffer = [0u8; 64];
        // A process may end during the scan: what cannot be read is not
        // counted.
        let comm = read_small(&path, &mut buffer);
        path.pop();
        let Some(comm) = comm else {
            path.pop();
            continue;
        };
        // comm is cut to 15 bytes and programs may rename themselves
        // (prctl), so argv[0] is the fallback: one more small read for a
        // process not called `name`, when it is new or its comm changed.
        let named = match known.remove(&pid) {
            Some(seen) if seen.comm == comm => seen.named,
            _ => is_named(comm, name) || read_argv0_named(&path, name),
        };
        path.pop();
        count += usize::from(named);
        found.insert(pid, Known { comm: comm.to_vec(), named });
    }
    *known = found;
    Ok(count)
}

/// Reads a file of /proc that fits `buffer` (`comm`: 16 bytes at most) in
/// one read.
fn read_small<'a>(path: &Path, buffer: &'a mut [u8]) -> Option<&'a [u8]> {
    let mut file = std::fs::File::open(path).ok()?;
    let len = file.read(buffer).ok()?;
    Some(&buffer[..len])
}

fn is_named(comm: &[u8], name: &str) -> bool {
    comm.strip_suffix(b"\n").unwrap_or(comm) == name.as_bytes()
}

fn read_argv0_named(dir: &Path, name: &str) -> bool {
    std::fs::read(dir.join("cmdline")).is_ok_and(|cmdline| argv0_named(&cmdline, name))
}

/// The base name of argv[0] (cmdline is NUL-separated; kernel threads have
/// none).
fn argv0_named(cmdline: &[u8], name: &str) -> bool {
    let argv0 = cmdline.split(|b| *b == 0).next().unwrap_or_default();
    let base = argv0.rsplit(|b| *b == b'/').next().unwrap_or_default();
    !base.is_empty() && base == name.as_bytes()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn argv0_is_matched_by_its_base_name() {
        assert!(argv0_named(b"/usr/sbin/nginx\0-g\0daemon off;\0", "nginx"));
        assert!(argv0_named(b"nginx\0", "nginx"));
        assert!(argv0_named(b"nginx", "nginx"));
        assert!(!argv0_named(b"/usr/bin/python3\0/opt/nginx\0", "nginx"), "only argv[0]");
        assert!(!argv0_named(b"", "nginx"), "kernel thread");
        assert!(!argv0_named(b"/usr/sbin/nginx-debug\0", "nginx"));
        assert!(!argv0_named(b"/usr/sbin/\0", ""));
    }

    #[test]
    fn comm_is_matched_exactly() {
        assert!(is_named(b"nginx\n", "nginx"));
        assert!(!is_named(b"nginx-debug\n", "nginx"));
        assert!(!is_named(b"ngin\n", "nginx"));
    }

    #[test]
    fn counts_processes_in_a_proc_tree() {
        let proc = tempfile::tempdir().unwrap();
        let process = |pid: &str, comm: &str, cmdline: &[u8]| {
            let dir = proc.path().join(pid);
            std::fs::create_dir(&dir).unwrap();
            std::fs::write(dir.join("comm"), format!("{comm}\n")).unwrap();
            std::fs::write(dir.join("cmdline"), cmdline).unwrap();
        };
        process("1", "systemd", b"/sbin/init\0");
        process("100", "nginx", b"nginx: master process /usr/sbin/nginx\0");
        process("101", "nginx", b"nginx: worker process\0");
        process("200", "kworker/0:1", b"");
        // comm keeps 15 bytes: the long name is found through argv[0].
        process("300", "prometheus-node", b"/usr/bin/prometheus-node-exporter\0--web\0");
        process("400", "renamed", b"/usr/sbin/nginx\0");
        std::fs::create_dir(proc.path().join("self")).unwrap();
        std::fs::create_dir(proc.path().join("500")).unwrap(); // ended during the scan: no comm
        let fresh = |name| count(proc.path(), name, &mut HashMap::new()).ok();
        assert_eq!(fresh("nginx"), Some(3));
        assert_eq!(fresh("prometheus-node-exporter"), Some(1));
        assert_eq!(fresh("systemd"), Some(1));
        assert_eq!(fresh("apache2"), Some(0));
        let error = count(&proc.path().join("missing"), "nginx", &mut HashMap::new()).unwrap_err();
        assert!(error.to_string().contains("cannot list"));

        // A second scan reads argv[0] again only where comm changed, and
        // forgets processes that ended.
        let mut known = HashMap::new();
        assert_eq!(count(proc.path(), "nginx", &mut known).ok(), Some(3));
        assert_eq!(known.len(), 6, "{known:?}");
        // Unchanged comm: the verdict is kept (cmdline is not read again).
        std::fs::write(proc.path().join("400").join("cmdline"), b"/usr/bin/other\0").unwrap();
        assert_eq!(count(proc.path(), "nginx", &mut known).ok(), Some(3));
        // An exec changes comm: read again.
        std::fs::write(proc.path().join("400").join("comm"), b"other\n").unwrap();
        assert_eq!(count(proc.path(), "nginx", &mut known).ok(), Some(2));
        std::fs::remove_dir_all(proc.path().join("100")).unwrap();
        assert_eq!(count(proc.path(), "nginx", &mut known).ok(), Some(1));
        assert!(!known.contains_key(&100), "an ended process is forgotten");
    }

    #[test]
    fn reports_present_and_absent_only_on_change() {
        let proc = tempfile::tempdir().unwrap();
        let timing = Timing::parse(None, None, None).unwrap();
        let mut sampler = Presence {
            beacon: "w".into(),
            name: "nginx".into(),
            proc: proc.path().to_path_buf(),
            machine: Machine::new(&timing, None),
            known: HashMap::new(),
            source: Source::Scan,
        };
        let t0 = Instant::now();
        let state = |data: Option<Value>| data.map(|d| (d.get("state").cloned(), d.get("count").cloned()));
        assert_eq!(state(sampler.sample(t0).unwrap()), Some((Some("absent".into()), Some(Value::Int(0)))));
        assert_eq!(sampler.sample(t0).unwrap(), None);
        let dir = proc.path().join("42");
        std::fs::create_dir(&dir).unwrap();
        std::fs::write(dir.join("comm"), "nginx\n").unwrap();
        assert_eq!(state(sampler.sample(t0).unwrap()), Some((Some("present".into()), Some(Value::Int(1)))));
        assert_eq!(sampler.sample(t0).unwrap(), None);
    }

    #[test]
    fn events_keep_the_known_processes_without_reading_proc() {
        let named = |comm: &str, named| Known { comm: format!("{comm}\n").into_bytes(), named };
        let mut known = HashMap::from([(1, named("systemd", false)), (100, named("nginx", true))]);
        let mut dirty = HashSet::new();
        // (event, nginx processes known after it, pids to read at the sample)
        let steps: &[(ProcEvent, usize, &[u32])] = &[
            // A known parent's child is its parent's program: nothing to read.
            (ProcEvent::Fork { parent: 100, child: 101 }, 2, &[]),
            (ProcEvent::Fork { parent: 1, child: 200 }, 2, &[]),
            // An unknown parent's child must be read.
            (ProcEvent::Fork { parent: 999, child: 300 }, 2, &[300]),
            (ProcEvent::Exec { pid: 200 }, 2, &[200, 300]),
            // The child of a process that exec'd is read too.
            (ProcEvent::Fork { parent: 200, child: 201 }, 2, &[200, 201, 300]),
            (ProcEvent::Comm { pid: 101 }, 2, &[101, 200, 201, 300]),
            (ProcEvent::Exit { pid: 101 }, 1, &[200, 201, 300]),
            (ProcEvent::Exit { pid: 300 }, 1, &[200, 201]),
            (ProcEvent::Exit { pid: 4242 }, 1, &[200, 201]),
        ];
        for (event, count, to_read) in steps {
            follow(&mut known, &mut dirty, *event);
            let mut reads: Vec<u32> = dirty.iter().copied().collect();
            reads.sort_unstable();
            assert_eq!((known.values().filter(|k| k.named).count(), reads.as_slice()), (*count, *to_read), "{event:?}");
        }
        assert!(!known.contains_key(&101) && !known.contains_key(&300), "ended processes are forgotten");
    }

    #[test]
    fn a_process_read_again_is_counted_by_what_it_runs_now() {
        let proc = tempfile::tempdir().unwrap();
        let dir = proc.path().join("42");
        std::fs::create_dir(&dir).unwrap();
        std::fs::write(dir.join("comm"), "sleep\n").unwrap();
        std::fs::write(dir.join("cmdline"), b"nginx\0").unwrap();
        let mut known = HashMap::new();
        refresh(proc.path(), "nginx", 42, &mut known);
        assert!(known[&42].named, "by argv[0]");
        std::fs::write(dir.join("cmdline"), b"sleep\0").unwrap();
        refresh(proc.path(), "nginx", 42, &mut known);
        assert!(!known[&42].named, "read again, though its comm is the same");
        std::fs::remove_dir_all(&dir).unwrap();
        refresh(proc.path(), "nginx", 42, &mut known);
        assert!(known.is_empty(), "gone");
    }

    #[test]
    fn config_errors_say_what_to_write() {
        let bad = |yaml: &str| {
            let json: serde_json::Value = serde_saphyr::from_str(yaml).unwrap();
            validate(&Value::from_json(&json)).unwrap_err().to_string()
        };
        assert!(bad("name: /usr/sbin/nginx\n").contains("name: nginx"));
        assert!(bad("name: ''\n").contains("empty"));
        assert!(bad("name: nginx\nfor: 5\n").contains("5s"));
        assert!(bad("name: nginx\nabove: 1\n").contains("above"));
        assert!(bad("for: 5s\n").contains("name"));
    }
}

/// A process named `name` (argv[0]; its comm is `sleep`) that lives until
/// the test kills it (`spawn` returns during its exec, which may not have
/// set argv[0] up yet). Not through
/// the spawner, which runs programs to their end: this is a fixture a
/// beacon must find while it runs.
#[cfg(test)]
#[allow(clippy::disallowed_methods, clippy::unwrap_used)]
pub(crate) fn live_process(name: &str) -> std::process::Child {
    use std::os::unix::process::CommandExt as _;
    std::process::Command::new("sleep").arg0(name).arg("30").spawn().unwrap()
}

/// Against the real /proc, with a real process.
#[cfg(test)]
mod live_tests {
    use super::*;
    use crate::managed::ManagedFiles;

    #[test]
    fn finds_a_real_process_renamed_by_exec_a() {
        let name = format!("halite-live-{}", std::process::id());
        let mut child = live_process(&name);
        // `spawn` may return before the exec has set argv[0] up.
        let mut found = 0;
        for _ in 0..200 {
            found = count(Path::new(PROC), &name, &mut HashMap::new()).unwrap();
            if found > 0 {
                break;
            }
            let (_tx, rx) = std::sync::mpsc::channel::<()>();
            let _ = rx.recv_timeout(std::time::Duration::from_millis(10));
        }
        child.kill().unwrap();
        child.wait().unwrap();
        assert_eq!(found, 1);
    }

    /// Whether this process may subscribe to the kernel's process events.
    fn may_follow_events() -> bool {
        let status = std::fs::read_to_string("/proc/self/status").unwrap();
        let caps = status.lines().find_map(|line| line.strip_prefix("CapEff:")).unwrap();
        u64::from_str_radix(caps.trim(), 16).unwrap() & (1 << 12) != 0
    }

    /// Where the agent may (CAP_NET_ADMIN), the beacon follows the
    /// kernel's events: a real process started and killed is reported
    /// present and then absent with no scan of /proc after the first.
    /// Where it may not, it scans, and finds the same.
    #[test]
    fn follows_a_real_process_by_the_kernels_events() {
        let name = format!("halite-events-{}", std::process::id());
        let timing = Timing::parse(None, None, None).unwrap();
        let t0 = Instant::now();
        let state = |data: Option<Value>| data.and_then(|d| d.get("state").and_then(Value::as_str).map(str::to_owned));
        // A round whose events the kernel dropped (a busy host) rescans:
        // it proves nothing about following them, so it is run again.
        for _ in 0..5 {
            let mut sampler = Presence {
                beacon: "w".into(),
                name: name.clone(),
                proc: PathBuf::from(PROC),
                machine: Machine::new(&timing, None),
                known: HashMap::new(),
                source: Source::Undecided,
            };
            assert_eq!(state(sampler.sample(t0).unwrap()).as_deref(), Some("absent"));
            let scanned = match &sampler.source {
                Source::Events { scanned, .. } => *scanned,
                Source::Scan => {
                    assert!(!may_follow_events(), "with CAP_NET_ADMIN the beacon must follow the events");
                    None
                }
                Source::Undecided => panic!("the first sample decides"),
            };
            let mut child = live_process(&name);
            // `spawn` may return before the kernel has sent the child's exec
            // event (the parent resumes once the old memory is released,
            // just before): sample until it is in, awaiting each next event.
            let mut present = state(sampler.sample(t0).unwrap());
            for _ in 0..1000 {
                let Source::Events { events, .. } = &sampler.source else { break };
                if present.is_some() || !events.wait_queued(std::time::Duration::from_secs(10)) {
                    break;
                }
                present = state(sampler.sample(t0).unwrap());
            }
            child.kill().unwrap();
            child.wait().unwrap();
            let absent = state(sampler.sample(t0).unwrap());
            if let Source::Events { scanned: now, .. } = &sampler.source
                && *now != scanned
            {
                continue;
            }
            assert_eq!(present.as_deref(), Some("present"));
            assert_eq!(absent.as_deref(), Some("absent"));
            return;
        }
        panic!("the kernel dropped events in five rounds");
    }

    /// More process events than the receive buffer holds: the next sample
    /// learns of the overflow, subscribes again and scans /proc whole.
    #[test]
    fn an_overflow_of_events_is_answered_by_a_fresh_subscription_and_a_scan() {
        let timing = Timing::parse(None, None, None).unwrap();
        let mut sampler = Presence {
            beacon: "w".into(),
            name: format!("halite-overflow-{}", std::process::id()),
            proc: PathBuf::from(PROC),
            machine: Machine::new(&timing, None),
            known: HashMap::new(),
            source: Source::Undecided,
        };
        let t0 = Instant::now();
        sampler.sample(t0).unwrap();
        let Source::Events { events, scanned, .. } = &sampler.source else {
            assert!(!may_follow_events(), "with CAP_NET_ADMIN the beacon must follow the events");
            return;
        };
        assert_eq!(*scanned, Some(t0));
        // Each queued event counts at least 256 bytes against the buffer,
        // and each process below makes three (fork, exec, exit).
        for _ in 0..events.receive_buffer() / 256 {
            #[allow(clippy::disallowed_methods)]
            let status = std::process::Command::new("true").status().unwrap();
            assert!(status.success());
        }
        let t1 = t0 + std::time::Duration::from_secs(1);
        sampler.sample(t1).unwrap();
        let Source::Events { scanned, dirty, .. } = &sampler.source else { panic!("still following events") };
        assert_eq!(*scanned, Some(t1), "scanned whole after the overflow");
        assert!(dirty.is_empty());
    }

    #[test]
    fn the_beacon_thread_reports_a_process_starting() {
        let name = format!("halite-thread-{}", std::process::id());
        let (tx, mut rx) = tokio::sync::mpsc::channel(16);
        let context = Context {
            name: "w".into(),
            agent: "a".into(),
            events: tx,
            managed: ManagedFiles::in_memory(),
            root: "/".into(),
            receipts: crate::outbox::Receipts::default(),
        };
        let config = Value::map().with("name", name.as_str()).with("interval", "100ms");
        let running = (KIND.start)(context, &config).unwrap();
        let first = rx.blocking_recv().unwrap();
        assert_eq!(first.data.get("state").and_then(Value::as_str), Some("absent"));
        let mut child = live_process(&name);
        let second = rx.blocking_recv().unwrap();
        child.kill().unwrap();
        child.wait().unwrap();
        assert_eq!(second.data.get("state").and_then(Value::as_str), Some("present"));
        let third = rx.blocking_recv().unwrap();
        assert_eq!(third.data.get("state").and_then(Value::as_str), Some("absent"));
        drop(running);
    }
}

//! Per-hop timing of one drift (issue #21): timestamps at each hop of an
//! event's and its restore job's path through both daemons, for the
//! `drift_restore` benchmark's `--hops` table.
//!
//! Off unless the process starts with `HALITE_HOPS=<directory>` in its
//! environment; the variable is read once, at the first mark. Off, a mark
//! is one atomic load. On, a mark takes the time (`CLOCK_REALTIME`, in
//! nanoseconds, so that marks of the agent, the master and the benchmark
//! compare: they share the host's clock) and appends it to a buffer in
//! memory; a thread of its own writes the buffer to
//! `<directory>/hops-<pid>.tsv` every [`FLUSH_EVERY`], one line per mark:
//! `hop<TAB>key<TAB>ns`, the key being the event's or the job's id as a
//! number. Nothing on the measured path writes a file.
//!
//! In this crate because it is the lowest one that every process on the
//! path shares, and the atomic write (whose fsyncs are hops) lives here:
//! [`set_key`] names the job a thread works for, and [`mark_current`]
//! marks a hop for it without threading the id through the state engine.

use std::cell::Cell;
use std::io::Write as _;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::{Mutex, PoisonError};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// The environment variable that turns marks on: a directory to write to.
pub const ENV: &str = "HALITE_HOPS";
/// How often the marks are written out.
pub const FLUSH_EVERY: Duration = Duration::from_millis(100);
/// Marks kept in memory at most between two writes; beyond, marks are
/// dropped (a benchmark's table then has fewer samples, nothing waits).
const BUFFER: usize = 1 << 20;

const UNKNOWN: u8 = 0;
const OFF: u8 = 1;
const ON: u8 = 2;
static STATE: AtomicU8 = AtomicU8::new(UNKNOWN);
static MARKS: Mutex<Vec<(&'static str, u128, u64)>> = Mutex::new(Vec::new());

thread_local! {
    static CURRENT: Cell<Option<u128>> = const { Cell::new(None) };
}

/// Are marks recorded in this process?
pub fn enabled() -> bool {
    match STATE.load(Ordering::Relaxed) {
        ON => true,
        OFF => false,
        _ => start(),
    }
}

/// Reads [`ENV`] once and starts the writer thread when it names a
/// directory.
#[cold]
fn start() -> bool {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        let dir = std::env::var_os(ENV).filter(|d| !d.is_empty()).map(PathBuf::from);
        let started = dir.is_some_and(|dir| {
            let path = dir.join(format!("hops-{}.tsv", std::process::id()));
            std::thread::Builder::new().name("hops".into()).spawn(move || write_out(&path)).is_ok()
        });
        STATE.store(if started { ON } else { OFF }, Ordering::Relaxed);
    });
    STATE.load(Ordering::Relaxed) == ON
}

/// Now, in nanoseconds since the epoch (`CLOCK_REALTIME`); 0 when marks
/// are off, so a caller that keeps a time for a later mark pays nothing.
pub fn now() -> u64 {
    if !enabled() {
        return 0;
    }
    clock()
}

fn clock() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| u64::try_from(d.as_nanos()).unwrap_or(u64::MAX))
}

/// Marks `hop` for `key` (an event's or a job's id) now.
pub fn mark(hop: &'static str, key: u128) {
    if enabled() {
        push(hop, key, clock());
    }
}

/// Marks `hop` for `key` at `at`, a time taken earlier with [`now`] (the
/// key was not known yet then).
pub fn mark_at(hop: &'static str, key: u128, at: u64) {
    if enabled() && at != 0 {
        push(hop, key, at);
    }
}

/// Names the key this thread works for (a job's id), for [`mark_current`];
/// `None` when it is done.
pub fn set_key(key: Option<u128>) {
    if enabled() {
        CURRENT.with(|current| current.set(key));
    }
}

/// Marks `hop` for the key this thread works for, if any.
pub fn mark_current(hop: &'static str) {
    if enabled()
        && let Some(key) = CURRENT.with(Cell::get)
    {
        push(hop, key, clock());
    }
}

fn push(hop: &'static str, key: u128, at: u64) {
    let mut marks = MARKS.lock().unwrap_or_else(PoisonError::into_inner);
    if marks.len() < BUFFER {
        marks.push((hop, key, at));
    }
}

/// The writer thread: appends what was marked to `path` every
/// [`FLUSH_EVERY`], for the life of the process. Its sleep paces a thread
/// of its own (never a runtime's), and waits for nothing.
#[allow(clippy::disallowed_methods)]
fn write_out(path: &std::path::Path) {
    let mut file = match std::fs::OpenOptions::new().create(true).append(true).open(path) {
        Ok(file) => file,
        Err(error) => {
            eprintln!("{ENV}: cannot open {}: {error}", path.display());
            return;
        }
    };
    let mut text = String::new();
    loop {
        std::thread::sleep(FLUSH_EVERY);
        let marks = std::mem::take(&mut *MARKS.lock().unwrap_or_else(PoisonError::into_inner));
        if marks.is_empty() {
            continue;
        }
        text.clear();
        for (hop, key, at) in marks {
            text.push_str(&format!("{hop}\t{key}\t{at}\n"));
        }
        if file.write_all(text.as_bytes()).is_err() {
            return;
        }
    }
}

/// One mark as written: (hop, key, nanoseconds).
pub fn parse_line(line: &str) -> Option<(&str, u128, u64)> {
    let mut fields = line.split('\t');
    let (hop, key, at) = (fields.next()?, fields.next()?.parse().ok()?, fields.next()?.parse().ok()?);
    Some((hop, key, at))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_written_mark_reads_back() {
        let line = format!("{}\t{}\t{}", "agent.sent", u128::MAX, 17u64);
        assert_eq!(parse_line(&line), Some(("agent.sent", u128::MAX, 17)));
        assert_eq!(parse_line("agent.sent\tx\t1"), None);
    }
}

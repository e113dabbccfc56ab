//! A process's memory and CPU time, from `/proc` (Linux).

use std::time::Duration;

/// Clock ticks per second in `/proc/<pid>/stat` (`getconf CLK_TCK`; 100 on
/// every Linux this runs on).
pub const TICKS_PER_SECOND: u64 = 100;

/// One look at a process.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Usage {
    /// Resident set now, in KiB (`VmRSS`).
    pub rss_kib: u64,
    /// Highest resident set so far, in KiB (`VmHWM`).
    pub peak_kib: u64,
    /// User plus system CPU time so far.
    pub cpu: Duration,
}

/// Reads `pid`'s usage.
pub fn usage(pid: u32) -> std::io::Result<Usage> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))?;
    Ok(Usage { rss_kib: kib(&status, "VmRSS:"), peak_kib: kib(&status, "VmHWM:"), cpu: cpu(&stat) })
}

fn kib(status: &str, key: &str) -> u64 {
    status
        .lines()
        .find_map(|line| line.strip_prefix(key))
        .and_then(|rest| rest.split_whitespace().next())
        .and_then(|n| n.parse().ok())
        .unwrap_or(0)
}

/// `pid`'s parent (field 4 of `/proc/<pid>/stat`), while it runs.
pub fn parent(pid: u32) -> Option<u32> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let after = stat.rsplit_once(')')?.1;
    after.split_whitespace().nth(1)?.parse().ok()
}

/// utime + stime: fields 14 and 15, counted after the `(comm)` field,
/// which may itself contain spaces.
fn cpu(stat: &str) -> Duration {
    let after = stat.rsplit_once(')').map_or("", |(_, rest)| rest);
    let fields: Vec<&str> = after.split_whitespace().collect();
    let ticks = |i: usize| fields.get(i).and_then(|f| f.parse::<u64>().ok()).unwrap_or(0);
    // `after` starts at field 3 (state): utime is field 14, index 11.
    Duration::from_millis((ticks(11) + ticks(12)) * 1000 / TICKS_PER_SECOND)
}

/// One thread's scheduler counters (`/proc/<pid>/task/<tid>/schedstat`):
/// nanoseconds on a CPU and how many times it was put on one. For an idle
/// thread every run is a wake-up, so `runs` counts wake-ups; utime and
/// stime count 10 ms ticks, too coarse for an idle daemon (issue #21).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ThreadStat {
    pub tid: u32,
    /// `comm`: the thread's name.
    pub name: String,
    pub run_ns: u64,
    pub runs: u64,
}

/// Every thread of `pid` now. A thread that ends between the listing and
/// its read is left out.
pub fn threads(pid: u32) -> std::io::Result<Vec<ThreadStat>> {
    let mut threads = Vec::new();
    for entry in std::fs::read_dir(format!("/proc/{pid}/task"))? {
        let entry = entry?;
        let Some(tid) = entry.file_name().to_str().and_then(|t| t.parse().ok()) else { continue };
        let (Ok(schedstat), Ok(name)) = (
            std::fs::read_to_string(entry.path().join("schedstat")),
            std::fs::read_to_string(entry.path().join("comm")),
        ) else {
            continue;
        };
        let (run_ns, runs) = parse_schedstat(&schedstat);
        threads.push(ThreadStat { tid, name: name.trim_end().to_owned(), run_ns, runs });
    }
    threads.sort_by_key(|t| t.tid);
    Ok(threads)
}

/// `run_ns wait_ns runs`.
fn parse_schedstat(text: &str) -> (u64, u64) {
    let fields: Vec<u64> = text.split_whitespace().filter_map(|f| f.parse().ok()).collect();
    (fields.first().copied().unwrap_or(0), fields.get(2).copied().unwrap_or(0))
}

/// What each thread did between two looks: threads in both by their
/// counters' difference, threads started meanwhile by theirs in full.
/// Threads that ended meanwhile are missing (their time with them).
pub fn thread_deltas(before: &[ThreadStat], after: &[ThreadStat]) -> Vec<ThreadStat> {
    after
        .iter()
        .map(|now| {
            let earlier = before.iter().find(|b| b.tid == now.tid);
            ThreadStat {
                tid: now.tid,
                name: now.name.clone(),
                run_ns: now.run_ns - earlier.map_or(0, |b| b.run_ns.min(now.run_ns)),
                runs: now.runs - earlier.map_or(0, |b| b.runs.min(now.runs)),
            }
        })
        .collect()
}

/// CPU time in `deltas` ([`thread_deltas`]): all of it, and that of the
/// threads named `apart` (the master's HTTP side, `halite-http`).
pub fn cpu_split(deltas: &[ThreadStat], apart: &str) -> (Duration, Duration) {
    let sum = |keep: &dyn Fn(&ThreadStat) -> bool| {
        Duration::from_nanos(deltas.iter().filter(|t| keep(t)).map(|t| t.run_ns).sum())
    };
    (sum(&|_| true), sum(&|t| t.name == apart))
}

/// CPU used between two looks, as a share of one core over `wall`.
pub fn core_share(before: &Usage, after: &Usage, wall: Duration) -> f64 {
    after.cpu.saturating_sub(before.cpu).as_secs_f64() / wall.as_secs_f64().max(1e-9)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_status_and_stat() {
        let status = "Name:\tx\nVmHWM:\t  2048 kB\nVmRSS:\t  1024 kB\n";
        assert_eq!(kib(status, "VmRSS:"), 1024);
        assert_eq!(kib(status, "VmHWM:"), 2048);
        let stat = "42 (a b) S 1 42 42 0 -1 4194560 100 0 0 0 250 50 0 0 20 0 1 0 5 0 0";
        assert_eq!(cpu(stat), Duration::from_secs(3));
    }

    #[test]
    fn parses_schedstat_and_takes_differences() {
        assert_eq!(parse_schedstat("123456 789 42\n"), (123_456, 42));
        let thread = |tid, run_ns, runs| ThreadStat { tid, name: format!("t{tid}"), run_ns, runs };
        let before = [thread(1, 1_000, 10), thread(2, 5_000, 3)];
        let after = [thread(1, 1_500, 12), thread(3, 700, 1)];
        let deltas = thread_deltas(&before, &after);
        assert_eq!(deltas, [thread(1, 500, 2), thread(3, 700, 1)]);
        assert_eq!(cpu_split(&deltas, "t3"), (Duration::from_nanos(1_200), Duration::from_nanos(700)));
    }

    #[test]
    fn reads_this_process() {
        let threads = threads(std::process::id()).unwrap();
        assert!(threads.iter().any(|t| t.tid == std::process::id() && t.run_ns > 0), "{threads:?}");
        let usage = usage(std::process::id()).unwrap();
        assert_eq!(parent(std::process::id()), Some(std::os::unix::process::parent_id()));
        assert!(usage.rss_kib > 0 && usage.peak_kib >= usage.rss_kib, "{usage:?}");
    }
}

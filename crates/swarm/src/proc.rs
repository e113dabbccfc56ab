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

/// utime + stime: fields 14 and 15, counted after the `(comm)` field,
/// which may itself contain spaces.
fn cpu(stat: &str) -> Duration {
    let after = stat.rsplit_once(')').map_or("", |(_, rest)| rest);
    let fields: Vec<&str> = after.split_whitespace().collect();
    let ticks = |i: usize| fields.get(i).and_then(|f| f.parse::<u64>().ok()).unwrap_or(0);
    // `after` starts at field 3 (state): utime is field 14, index 11.
    Duration::from_millis((ticks(11) + ticks(12)) * 1000 / TICKS_PER_SECOND)
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
    fn reads_this_process() {
        let usage = usage(std::process::id()).unwrap();
        assert!(usage.rss_kib > 0 && usage.peak_kib >= usage.rss_kib, "{usage:?}");
    }
}

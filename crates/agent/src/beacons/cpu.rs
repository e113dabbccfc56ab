//! The `cpu` beacon: how busy all cores together are, from /proc/stat,
//! reported as `above` or `below` its thresholds. Sampling, hysteresis,
//! `for` and `debounce` are `sampled.rs`'s; this file owns the reading.

use halite_proto::Value;

use super::sampled::{self, Gauge, SampleError, Settings};
use super::{BeaconError, BeaconKind, Context, EventField, Running};

pub static KIND: BeaconKind = BeaconKind {
    name: "cpu",
    summary: "Percent busy across all cores (/proc/stat): above or below thresholds, with hysteresis.",
    example: "above: 90\nbelow: 70\nfor: 10s\ninterval: 5s\n",
    validate,
    start,
    fields: &[
        EventField { name: "state", values: &["above", "below", "error"] },
        EventField::any("percent"),
        EventField::any("above"),
        EventField::any("below"),
        // When sampling fails (`state: error`).
        EventField::any("error"),
    ],
};

const PROC_STAT: &str = "/proc/stat";

fn settings(config: &Value) -> Result<Settings, BeaconError> {
    sampled::percent_settings(config)
}

fn validate(config: &Value) -> Result<(), BeaconError> {
    settings(config).map(|_| ())
}

fn start(context: Context, config: &Value) -> Result<Running, BeaconError> {
    let settings = settings(config)?;
    let mut previous: Option<Times> = None;
    let read = move || {
        let text = std::fs::read_to_string(PROC_STAT).map_err(SampleError::read(PROC_STAT))?;
        let now = parse(&text)
            .ok_or(SampleError::Unreadable { path: PROC_STAT.into(), problem: "has no readable `cpu` line" })?;
        // Busy is a share of the time between two reads: the first read
        // only sets the baseline.
        Ok(previous.replace(now).and_then(|before| busy_percent(before, now)))
    };
    sampled::start(context, settings.timing.interval, Gauge::new(&settings, "percent", Value::map(), read))
}

/// Clock ticks since boot, all cores together.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Times {
    busy: u64,
    total: u64,
}

/// Reads the aggregate `cpu` line: user nice system idle iowait irq softirq
/// steal guest guest_nice. Guest time is already counted in user and nice,
/// so only the first eight add up to the total; idle and iowait are idle.
fn parse(stat: &str) -> Option<Times> {
    let line = stat.lines().find(|l| l.split_whitespace().next() == Some("cpu"))?;
    let fields: Vec<u64> = line.split_whitespace().skip(1).map(str::parse).collect::<Result<_, _>>().ok()?;
    if fields.len() < 4 {
        return None;
    }
    let total: u64 = fields.iter().take(8).sum();
    let idle = fields[3] + fields.get(4).copied().unwrap_or(0);
    Some(Times { busy: total.saturating_sub(idle), total })
}

/// `None` when no tick passed between the reads.
fn busy_percent(before: Times, after: Times) -> Option<f64> {
    let total = after.total.checked_sub(before.total).filter(|t| *t > 0)?;
    // iowait may go backwards on some kernels, making busy jump; clamp.
    let busy = after.busy.saturating_sub(before.busy).min(total);
    Some(busy as f64 / total as f64 * 100.0)
}

#[cfg(test)]
mod tests {
    use super::*;

    const STAT: &str = "\
cpu  124842 0 16727 716001 2407 0 333 365 0 0
cpu0 60558 0 7904 361014 518 0 138 184 0 0
cpu1 64284 0 8822 354986 1889 0 194 181 0 0
intr 1234 0 0
ctxt 99
";

    #[test]
    fn parses_the_aggregate_line() {
        let total = 124842 + 16727 + 716001 + 2407 + 333 + 365;
        assert_eq!(parse(STAT), Some(Times { busy: total - 716001 - 2407, total }));
        // Old kernels have only four fields.
        assert_eq!(parse("cpu 1 2 3 4\n"), Some(Times { busy: 6, total: 10 }));
        assert_eq!(parse("cpu0 1 2 3 4\n"), None, "a single core is not the aggregate");
        assert_eq!(parse("cpu 1 x 3 4\n"), None);
        assert_eq!(parse(""), None);
    }

    #[test]
    fn guest_time_is_not_counted_twice() {
        let plain = parse("cpu 10 0 0 90 0 0 0 0 0 0\n").unwrap();
        let guest = parse("cpu 10 0 0 90 0 0 0 0 10 5\n").unwrap();
        assert_eq!(plain, guest);
    }

    #[test]
    fn busy_is_the_share_between_two_reads() {
        let before = Times { busy: 100, total: 1000 };
        assert_eq!(busy_percent(before, Times { busy: 175, total: 1100 }), Some(75.0));
        assert_eq!(busy_percent(before, Times { busy: 100, total: 1200 }), Some(0.0));
        assert_eq!(busy_percent(before, before), None, "no tick passed");
        assert_eq!(busy_percent(before, Times { busy: 500, total: 1100 }), Some(100.0));
        assert_eq!(busy_percent(before, Times { busy: 50, total: 900 }), None, "counters went backwards");
    }

    #[test]
    fn config_errors_say_what_to_write() {
        let bad = |yaml: &str| {
            let json: serde_json::Value = serde_saphyr::from_str(yaml).unwrap();
            validate(&Value::from_json(&json)).unwrap_err().to_string()
        };
        assert!(bad("above: 70\nbelow: 90\n").contains("greater than"));
        assert!(bad("above: 120\n").contains("never be exceeded"));
        assert!(bad("above: 90\nfor: 10\n").contains("10s"));
        assert!(bad("above: 90\nmount: /\n").contains("mount"));
    }
}

//! The `memory` beacon: the percentage of memory in use, from
//! /proc/meminfo, reported as `above` or `below` its thresholds. Sampling,
//! hysteresis, `for` and `debounce` are `sampled.rs`'s; this file owns the
//! reading.

use halite_proto::Value;

use super::sampled::{self, Gauge, SampleError, Settings};
use super::{BeaconError, BeaconKind, Context, EventField, Running};

pub static KIND: BeaconKind = BeaconKind {
    name: "memory",
    summary: "Percent of memory in use (/proc/meminfo): above or below thresholds, with hysteresis.",
    example: "above: 90\nbelow: 80\nfor: 1m\n",
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

const PROC_MEMINFO: &str = "/proc/meminfo";

fn settings(config: &Value) -> Result<Settings, BeaconError> {
    sampled::percent_settings(config)
}

fn validate(config: &Value) -> Result<(), BeaconError> {
    settings(config).map(|_| ())
}

fn start(context: Context, config: &Value) -> Result<Running, BeaconError> {
    let settings = settings(config)?;
    let read = || {
        let text = std::fs::read_to_string(PROC_MEMINFO).map_err(SampleError::read(PROC_MEMINFO))?;
        parse(&text)
            .map(Some)
            .ok_or(SampleError::Unreadable { path: PROC_MEMINFO.into(), problem: "has no readable MemTotal" })
    };
    sampled::start(context, settings.timing.interval, Gauge::new(&settings, "percent", Value::map(), read))
}

/// Percent used: MemTotal minus MemAvailable, the kernel's estimate of what
/// can be had without swapping (page cache is not "used").
fn parse(meminfo: &str) -> Option<f64> {
    let field = |name: &str| {
        meminfo.lines().find_map(|line| {
            let value = line.strip_prefix(name)?.strip_prefix(':')?;
            value.split_whitespace().next()?.parse::<u64>().ok()
        })
    };
    let total = field("MemTotal").filter(|t| *t > 0)?;
    // Before Linux 3.14 there is no MemAvailable; free + buffers + cached is
    // the estimate tools used then.
    let available = field("MemAvailable")
        .or_else(|| Some(field("MemFree")? + field("Buffers").unwrap_or(0) + field("Cached").unwrap_or(0)))?;
    Some(total.saturating_sub(available) as f64 / total as f64 * 100.0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn used_is_total_minus_available() {
        let meminfo = "\
MemTotal:        1000000 kB
MemFree:          100000 kB
MemAvailable:     250000 kB
Buffers:            8756 kB
Cached:           100000 kB
SwapCached:            0 kB
";
        assert_eq!(parse(meminfo), Some(75.0));
    }

    #[test]
    fn old_kernels_estimate_available() {
        let meminfo = "MemTotal: 1000 kB\nMemFree: 100 kB\nBuffers: 50 kB\nCached: 50 kB\n";
        assert_eq!(parse(meminfo), Some(80.0));
    }

    #[test]
    fn unreadable_text_gives_no_sample() {
        assert_eq!(parse(""), None);
        assert_eq!(parse("MemTotal: 0 kB\nMemAvailable: 0 kB\n"), None);
        assert_eq!(parse("MemTotal: lots\nMemAvailable: 1 kB\n"), None);
        // `MemTotalX` is not `MemTotal`.
        assert_eq!(parse("MemTotalX: 10 kB\nMemAvailable: 1 kB\n"), None);
    }

    #[test]
    fn config_errors_say_what_to_write() {
        let bad = |yaml: &str| {
            let json: serde_json::Value = serde_saphyr::from_str(yaml).unwrap();
            validate(&Value::from_json(&json)).unwrap_err().to_string()
        };
        assert!(bad("above: 80\nbelow: 90\n").contains("greater than"));
        assert!(bad("above: 100\n").contains("never be exceeded"));
        assert!(bad("above: 90\ndebounce: a while\n").contains("debounce"));
    }
}

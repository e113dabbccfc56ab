//! The `load` beacon: the 1-minute load average, from /proc/loadavg,
//! optionally per CPU, reported as `above` or `below` its thresholds.
//! Sampling, hysteresis, `for` and `debounce` are `sampled.rs`'s; this file
//! owns the reading.

use halite_proto::Value;
use serde::Deserialize;

use super::sampled::{self, Gauge, SampleError, Settings, Span};
use super::{BeaconError, BeaconKind, Context, EventField, Running, decode};

pub static KIND: BeaconKind = BeaconKind {
    name: "load",
    summary: "1-minute load average (/proc/loadavg), optionally per CPU: above or below thresholds, with hysteresis.",
    example: "above: 2\nbelow: 1.5\nper_cpu: true\nfor: 1m\n",
    validate,
    start,
    fields: &[
        EventField::any("per_cpu"),
        EventField { name: "state", values: &["above", "below", "error"] },
        EventField::any("load"),
        EventField::any("above"),
        EventField::any("below"),
        // When sampling fails (`state: error`).
        EventField::any("error"),
    ],
};

const PROC_LOADAVG: &str = "/proc/loadavg";
const PROC_STAT: &str = "/proc/stat";

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Config {
    /// Load over which the state becomes `above`.
    above: f64,
    /// Load under which it returns to `below`; default: `above`.
    #[serde(default)]
    below: Option<f64>,
    /// Divide by the number of online CPUs, so one threshold fits hosts of
    /// any size.
    #[serde(default)]
    per_cpu: bool,
    #[serde(default, rename = "for")]
    sustain: Option<Span>,
    #[serde(default)]
    interval: Option<Span>,
    #[serde(default)]
    debounce: Option<Span>,
}

fn settings(config: &Value) -> Result<(Settings, bool), BeaconError> {
    let c: Config = decode(config)?;
    let settings =
        Settings::parse(c.above, c.below, None, c.sustain.as_ref(), c.interval.as_ref(), c.debounce.as_ref())?;
    Ok((settings, c.per_cpu))
}

fn validate(config: &Value) -> Result<(), BeaconError> {
    settings(config).map(|_| ())
}

fn start(context: Context, config: &Value) -> Result<Running, BeaconError> {
    let (settings, per_cpu) = settings(config)?;
    let read = move || {
        let text = std::fs::read_to_string(PROC_LOADAVG).map_err(SampleError::read(PROC_LOADAVG))?;
        let load = parse(&text)
            .ok_or(SampleError::Unreadable { path: PROC_LOADAVG.into(), problem: "does not start with a number" })?;
        if !per_cpu {
            return Ok(Some(load));
        }
        // Read each time: CPUs can be brought online and offline.
        let stat = std::fs::read_to_string(PROC_STAT).map_err(SampleError::read(PROC_STAT))?;
        Ok(Some(load / online_cpus(&stat) as f64))
    };
    let subject = Value::map().with("per_cpu", per_cpu);
    sampled::start(context, settings.timing.interval, Gauge::new(&settings, "load", subject, read))
}

fn parse(loadavg: &str) -> Option<f64> {
    loadavg.split_whitespace().next()?.parse().ok().filter(|l: &f64| l.is_finite())
}

/// The host's online CPUs, one `cpuN` line each in /proc/stat. Not
/// `available_parallelism`, which is this process's share (affinity,
/// cgroup quota), while the load average is the whole host's.
fn online_cpus(stat: &str) -> usize {
    let count = stat
        .lines()
        .filter(|l| l.strip_prefix("cpu").is_some_and(|rest| rest.starts_with(|c: char| c.is_ascii_digit())))
        .count();
    if count > 0 { count } else { std::thread::available_parallelism().map_or(1, usize::from) }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_the_one_minute_average() {
        assert_eq!(parse("0.47 0.76 0.78 1/79 11393\n"), Some(0.47));
        assert_eq!(parse("12.50 3.00 1.00 5/900 4242\n"), Some(12.5));
        assert_eq!(parse(""), None);
        assert_eq!(parse("high 1 1\n"), None);
    }

    #[test]
    fn counts_online_cpus() {
        let stat = "cpu  1 2 3 4\ncpu0 1 2 3 4\ncpu1 1 2 3 4\ncpu7 1 2 3 4\nintr 5\ncpufreq 1\n";
        assert_eq!(online_cpus(stat), 3);
        assert!(online_cpus("") >= 1, "falls back to what this process may use");
    }

    #[test]
    fn config_errors_say_what_to_write() {
        let bad = |yaml: &str| {
            let json: serde_json::Value = serde_saphyr::from_str(yaml).unwrap();
            validate(&Value::from_json(&json)).unwrap_err().to_string()
        };
        assert!(bad("above: 1\nbelow: 2\n").contains("greater than"));
        assert!(bad("above: 2\nper_cpu: yes please\n").contains("bool"));
        assert!(bad("above: 2\nbelow: 0\n").contains("never be reached"));
        // Loads have no upper bound.
        let json: serde_json::Value = serde_saphyr::from_str("above: 400\n").unwrap();
        assert!(validate(&Value::from_json(&json)).is_ok());
    }
}

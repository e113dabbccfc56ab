//! The `disk` beacon: the percentage used of the file system holding a
//! mount point, from statvfs, reported as `above` or `below` its
//! thresholds. Sampling, hysteresis, `for` and `debounce` are `sampled.rs`'s;
//! this file owns the reading.

use std::path::{Path, PathBuf};

use halite_proto::Value;
use serde::Deserialize;

use super::sampled::{self, Gauge, SampleError, Settings, Span};
use super::{BeaconError, BeaconKind, Context, EventField, Running, decode};

pub static KIND: BeaconKind = BeaconKind {
    name: "disk",
    summary: "Percent used of a mount's file system (statvfs, as df shows it): above or below thresholds.",
    example: "mount: /\nabove: 90\nbelow: 85\ninterval: 1m\n",
    validate,
    start,
    fields: &[
        EventField::any("mount"),
        EventField { name: "state", values: &["above", "below", "error"] },
        EventField::any("percent"),
        EventField::any("above"),
        EventField::any("below"),
        // When sampling fails (`state: error`).
        EventField::any("error"),
    ],
};

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Config {
    /// An absolute path on the file system to measure, usually its mount
    /// point.
    mount: PathBuf,
    /// Percent used over which the state becomes `above`.
    above: f64,
    /// Percent used under which it returns to `below`; default: `above`.
    #[serde(default)]
    below: Option<f64>,
    #[serde(default, rename = "for")]
    sustain: Option<Span>,
    #[serde(default)]
    interval: Option<Span>,
    #[serde(default)]
    debounce: Option<Span>,
}

fn settings(config: &Value) -> Result<(Settings, PathBuf), BeaconError> {
    let c: Config = decode(config)?;
    if !c.mount.is_absolute() {
        return Err(BeaconError::NotAbsolute { key: "mount", path: c.mount, hint: "; write e.g. `mount: /var`" });
    }
    let settings =
        Settings::parse(c.above, c.below, Some(100.0), c.sustain.as_ref(), c.interval.as_ref(), c.debounce.as_ref())?;
    Ok((settings, c.mount))
}

fn validate(config: &Value) -> Result<(), BeaconError> {
    settings(config).map(|_| ())
}

fn start(context: Context, config: &Value) -> Result<Running, BeaconError> {
    let (settings, mount) = settings(config)?;
    let real = context.real_path(&mount);
    let read = move || usage(&real).map(Some);
    let subject = Value::map().with("mount", mount.display().to_string());
    sampled::start(context, settings.timing.interval, Gauge::new(&settings, "percent", subject, read))
}

fn usage(path: &Path) -> Result<f64, SampleError> {
    let stats =
        nix::sys::statvfs::statvfs(path).map_err(|source| SampleError::Measure { path: path.to_owned(), source })?;
    percent_used(stats.blocks() as u64, stats.blocks_free() as u64, stats.blocks_available() as u64).ok_or_else(|| {
        SampleError::Unreadable { path: path.to_owned(), problem: "reports no blocks; is it a pseudo file system?" }
    })
}

/// As df's Use%: blocks reserved for root are neither used nor available,
/// so a file system that ordinary users have filled shows 100%.
fn percent_used(blocks: u64, free: u64, available: u64) -> Option<f64> {
    let used = blocks.saturating_sub(free);
    let usable = used + available;
    (usable > 0).then(|| used as f64 / usable as f64 * 100.0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percent_used_is_what_df_shows() {
        // 1000 blocks, 300 free of which 50 reserved for root.
        assert_eq!(percent_used(1000, 300, 250), Some(700.0 / 950.0 * 100.0));
        assert_eq!(percent_used(1000, 50, 0), Some(100.0), "full for users");
        assert_eq!(percent_used(1000, 1000, 1000), Some(0.0));
        assert_eq!(percent_used(0, 0, 0), None, "proc, sysfs");
    }

    #[test]
    fn measures_a_real_file_system() {
        let percent = usage(Path::new("/")).unwrap();
        assert!((0.0..=100.0).contains(&percent), "{percent}");
        assert!(usage(Path::new("/no/such/mount")).unwrap_err().to_string().contains("/no/such/mount"));
    }

    #[test]
    fn config_errors_say_what_to_write() {
        let bad = |yaml: &str| {
            let json: serde_json::Value = serde_saphyr::from_str(yaml).unwrap();
            validate(&Value::from_json(&json)).unwrap_err().to_string()
        };
        assert!(bad("mount: var\nabove: 90\n").contains("not absolute"));
        assert!(bad("above: 90\n").contains("mount"));
        assert!(bad("mount: /\nabove: 90\nbelow: 95\n").contains("greater than"));
        assert!(bad("mount: /\nabove: 90\ninterval: 30\n").contains("30s"));
    }
}

//! Beacons: watchers that turn something happening on this host into events.
//!
//! A beacon kind is one file in this folder plus one line in [`KINDS`]. It
//! declares its name, a summary and an example configuration, validates a
//! configuration (the master calls [`validate`] when it loads beacons.yaml, so
//! a bad beacon is a `check` error, not a surprise on the agent) and starts.

use std::path::{Path, PathBuf};

use halite_proto::{BeaconSpec, Event, Value};
use serde::de::DeserializeOwned;
use tokio::sync::mpsc;

use crate::managed::ManagedFiles;
use crate::outbox::Receipts;

pub mod cpu;
pub mod disk;
pub mod file;
pub mod load;
pub mod memory;
pub mod process;
pub mod sampled;
pub mod service;

/// Every beacon kind the agent can run. Keep sorted by name.
pub static KINDS: &[&BeaconKind] =
    &[&cpu::KIND, &disk::KIND, &file::KIND, &load::KIND, &memory::KIND, &process::KIND, &service::KIND];

/// Why a beacon's configuration is refused or the beacon cannot start.
/// Shared by every kind file (the registry's interface); each variant names
/// the configuration key or the resource at fault and says what to write.
#[derive(Debug, thiserror::Error)]
pub enum BeaconError {
    #[error("unknown beacon kind `{kind}`; known kinds: {known}")]
    UnknownKind { kind: String, known: String },
    /// Not the kind's typed configuration (serde names the field).
    #[error("{0}")]
    Decode(#[from] serde_json::Error),
    #[error("`{key}` is empty; {hint}")]
    Empty { key: &'static str, hint: &'static str },
    #[error("{key} `{path}` is not absolute{hint}", path = path.display())]
    NotAbsolute { key: &'static str, path: PathBuf, hint: &'static str },
    #[error("`{key}: {value}`: {reason} (write e.g. {example})")]
    Duration { key: &'static str, value: String, reason: humantime::DurationError, example: &'static str },
    #[error(
        "`interval: {}` is too short; write at least {}, e.g. 5s",
        humantime::format_duration(*interval),
        humantime::format_duration(*min)
    )]
    IntervalTooShort { interval: std::time::Duration, min: std::time::Duration },
    #[error("`above` and `below` must be numbers, e.g. `above: 90`")]
    NotANumber,
    #[error("`above: {above}` can never be exceeded (the value is at most {max}); write a lower threshold")]
    NeverExceeded { above: f64, max: f64 },
    #[error("`above: {above}`: the value is never negative; write a threshold of 0 or more")]
    AboveNegative { above: f64 },
    #[error(
        "`below: {below}` is greater than `above: {above}`; `below` is where the state returns to normal, \
         so write a value no greater than {above} (or leave it out to use {above})"
    )]
    BelowAbove { below: f64, above: f64 },
    #[error(
        "`below: {below}` can never be reached (the value is never negative), so the state would stay above; \
         write a positive value"
    )]
    NeverReached { below: f64 },
    #[error("`name: {name}` is a path; write only the executable's name, e.g. `name: nginx` for /usr/sbin/nginx")]
    ProcessPath { name: String },
    #[error("`unit: {unit}` is not a unit name; write e.g. `unit: nginx.service`")]
    UnitName { unit: String },
    #[error("`exclude: {glob}`: {reason} (write e.g. '*.swp' or '/srv/www/**/cache')")]
    Exclude { glob: String, reason: globset::ErrorKind },
    #[error("`exclude`: {0}")]
    ExcludeSet(globset::Error),
    #[error("cannot start inotify: {0}")]
    Inotify(notify::Error),
    #[error("cannot start the beacon thread: {0}")]
    Thread(std::io::Error),
}

#[derive(Debug)]
pub struct BeaconKind {
    pub name: &'static str,
    pub summary: &'static str,
    /// An example configuration in YAML; the registry test validates it.
    pub example: &'static str,
    pub validate: fn(&Value) -> Result<(), BeaconError>,
    pub start: fn(Context, &Value) -> Result<Running, BeaconError>,
    /// The fields of the data its events carry, and the values each takes
    /// when they are a fixed set. The master's `check` warns about a
    /// reactor's `when` that reads another field or compares with another
    /// value; keep it beside the code that builds the data.
    pub fields: &'static [EventField],
}

/// One field of a beacon kind's event data.
#[derive(Debug)]
pub struct EventField {
    pub name: &'static str,
    /// The values it takes, when they are a fixed set of strings; empty
    /// for anything else (a path, a number, a unit's state).
    pub values: &'static [&'static str],
}

impl EventField {
    /// A field whose values are not a fixed set.
    pub const fn any(name: &'static str) -> EventField {
        EventField { name, values: &[] }
    }
}

pub fn find(kind: &str) -> Option<&'static BeaconKind> {
    KINDS.iter().copied().find(|k| k.name == kind)
}

/// The event fields of `kind`, if it is a known kind.
pub fn fields(kind: &str) -> Option<&'static [EventField]> {
    find(kind).map(|k| k.fields)
}

pub fn names() -> Vec<&'static str> {
    KINDS.iter().map(|k| k.name).collect()
}

/// Checks a beacon configuration the way the agent will read it.
pub fn validate(kind: &str, config: &Value) -> Result<(), BeaconError> {
    let beacon =
        find(kind).ok_or_else(|| BeaconError::UnknownKind { kind: kind.to_owned(), known: names().join(", ") })?;
    (beacon.validate)(config)
}

/// Decodes a configuration into a kind's typed, `deny_unknown_fields` form.
pub fn decode<T: DeserializeOwned>(config: &Value) -> Result<T, BeaconError> {
    Ok(serde_json::from_value(config.to_json())?)
}

/// What a running beacon is given.
#[derive(Debug, Clone)]
pub struct Context {
    /// The beacon's name, the last part of its events' tag.
    pub name: String,
    pub agent: String,
    /// Where events go. Bounded: a beacon that outruns the link waits.
    pub events: mpsc::Sender<Event>,
    pub managed: ManagedFiles,
    /// Prefix for every path a beacon or state names (`root` in agent.yaml).
    pub root: PathBuf,
    /// Where a beacon learns whether the outbox stored an event it sent
    /// (the file beacon reports a refused drift again).
    pub receipts: Receipts,
}

impl Context {
    pub fn tag(&self) -> String {
        halite_proto::event::tag::beacon(&self.agent, &self.name)
    }

    /// Where an authored absolute path really is on this host.
    pub fn real_path(&self, path: &Path) -> PathBuf {
        crate::rooted(&self.root, path)
    }
}

/// A started beacon; dropping it stops it.
pub struct Running {
    _guard: Box<dyn Send>,
}

impl Running {
    pub fn new(guard: impl Send + 'static) -> Self {
        Running { _guard: Box::new(guard) }
    }
}

impl std::fmt::Debug for Running {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Running")
    }
}

/// The beacons running now. A new set replaces it, but a beacon whose spec
/// did not change keeps running, so a reload of the master's tree does not
/// reset a cpu beacon's hysteresis or a file beacon's open drifts.
#[derive(Debug)]
pub struct Beacons {
    template: Context,
    running: Vec<(BeaconSpec, Running)>,
    /// Beacons started so far, for the tests of what a replace restarts.
    starts: u64,
}

impl Beacons {
    pub fn new(template: Context) -> Self {
        Beacons { template, running: Vec::new(), starts: 0 }
    }

    /// Runs exactly `specs`: stops the beacons not in it (or changed),
    /// starts the new ones, leaves the unchanged running. A beacon that fails
    /// to start is logged and skipped; the others run. Starting may look at
    /// the host (a file beacon's first look): call it off the runtime threads.
    pub fn replace(&mut self, specs: &[BeaconSpec]) {
        let (kept, stopped): (Vec<_>, Vec<_>) =
            std::mem::take(&mut self.running).into_iter().partition(|(running, _)| specs.contains(running));
        for (spec, _) in &stopped {
            tracing::info!(beacon = %spec.name, kind = %spec.kind, "Beacon stopped.");
        }
        // Stopped before the new ones start: a changed beacon never runs twice.
        drop(stopped);
        self.running = kept;
        for spec in specs {
            if self.running.iter().any(|(running, _)| running == spec) {
                continue;
            }
            let Some(kind) = find(&spec.kind) else {
                tracing::error!(beacon = %spec.name, kind = %spec.kind, "Unknown beacon kind; skipping this beacon.");
                continue;
            };
            let context = Context { name: spec.name.clone(), ..self.template.clone() };
            match (kind.start)(context, &spec.config) {
                Ok(running) => {
                    tracing::info!(beacon = %spec.name, kind = %spec.kind, "Beacon started.");
                    self.running.push((spec.clone(), running));
                    self.starts += 1;
                }
                Err(error) => {
                    tracing::error!(beacon = %spec.name, kind = %spec.kind, %error, "Beacon failed to start.")
                }
            }
        }
    }

    pub fn len(&self) -> usize {
        self.running.len()
    }

    pub fn is_empty(&self) -> bool {
        self.running.is_empty()
    }

    /// The names of the running beacons.
    pub fn names(&self) -> Vec<&str> {
        self.running.iter().map(|(spec, _)| spec.name.as_str()).collect()
    }
}

/// The master's beacons plus this agent's local ones (agent.yaml). On a
/// name both use, the master's wins and the local one is skipped with a
/// warning: the master's reactors are written against its own beacons.
pub fn merge(master: &[BeaconSpec], local: &[BeaconSpec]) -> Vec<BeaconSpec> {
    let mut all = master.to_vec();
    for spec in local {
        if master.iter().any(|m| m.name == spec.name) {
            tracing::warn!(
                beacon = %spec.name,
                "A local beacon in agent.yaml has the name of one of the master's; the master's runs. Rename the local one."
            );
        } else {
            all.push(spec.clone());
        }
    }
    all
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_unique_and_sorted() {
        let names = names();
        let mut sorted = names.clone();
        sorted.sort_unstable();
        sorted.dedup();
        assert_eq!(names, sorted);
    }

    #[test]
    fn every_kind_file_is_registered() {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("src/beacons");
        for entry in std::fs::read_dir(dir).unwrap() {
            let name = entry.unwrap().file_name().into_string().unwrap();
            let Some(stem) = name.strip_suffix(".rs") else { continue };
            // `sampled` is shared by the sampled kinds, not a kind itself.
            if stem != "mod" && stem != "sampled" {
                assert!(find(stem).is_some(), "src/beacons/{name} is not registered in KINDS");
            }
        }
    }

    fn context() -> Context {
        let (events, _) = mpsc::channel(1);
        Context {
            name: String::new(),
            agent: "web01".into(),
            events,
            managed: ManagedFiles::in_memory(),
            root: PathBuf::from("/"),
            receipts: Receipts::default(),
        }
    }

    fn spec(name: &str, kind: &str, config: &str) -> BeaconSpec {
        let json: serde_json::Value = serde_saphyr::from_str(config).unwrap();
        BeaconSpec { name: name.into(), kind: kind.into(), config: Value::from_json(&json) }
    }

    #[test]
    fn replacing_keeps_unchanged_beacons_running() {
        let mut beacons = Beacons::new(context());
        let load = spec("load", "load", "above: 4\ninterval: 1h\n");
        let disk = spec("disk", "disk", "mount: /\nabove: 99\ninterval: 1h\n");
        beacons.replace(&[load.clone(), disk.clone()]);
        assert_eq!(beacons.names(), ["load", "disk"]);
        assert_eq!(beacons.starts, 2);
        let disk_changed = spec("disk", "disk", "mount: /\nabove: 98\ninterval: 1h\n");
        beacons.replace(&[load.clone(), disk_changed]);
        assert_eq!(beacons.starts, 3, "only the changed beacon is restarted");
        assert_eq!(beacons.names(), ["load", "disk"]);
        beacons.replace(&[load]);
        assert_eq!(beacons.names(), ["load"]);
        assert_eq!(beacons.starts, 3, "removing starts nothing");
    }

    #[test]
    fn on_a_name_clash_the_masters_beacon_wins() {
        let master = [spec("conf", "file", "paths: [/etc/a]\n")];
        let local = [spec("conf", "file", "paths: [/etc/b]\n"), spec("mine", "load", "above: 4\n")];
        let merged = merge(&master, &local);
        assert_eq!(merged.iter().map(|s| s.name.as_str()).collect::<Vec<_>>(), ["conf", "mine"]);
        assert_eq!(merged[0], master[0]);
    }

    #[test]
    fn every_example_validates() {
        for kind in KINDS {
            let json: serde_json::Value = serde_saphyr::from_str(kind.example).unwrap();
            (kind.validate)(&Value::from_json(&json)).unwrap_or_else(|e| panic!("{}: {e}", kind.name));
        }
    }

    #[test]
    fn every_kind_declares_its_event_fields_once() {
        for kind in KINDS {
            assert!(!kind.fields.is_empty(), "{} declares no event fields", kind.name);
            let mut names: Vec<&str> = kind.fields.iter().map(|f| f.name).collect();
            names.sort_unstable();
            let count = names.len();
            names.dedup();
            assert_eq!(names.len(), count, "{} declares a field twice", kind.name);
        }
    }
}

//! `agent.yaml`: the agent's own configuration (SPEC §4).

use std::path::{Path, PathBuf};

use halite_proto::{BeaconSpec, Value};
use indexmap::IndexMap;
use serde::Deserialize;

/// Where the agent looks for its configuration unless told otherwise.
pub const DEFAULT_CONFIG: &str = "/etc/halite/agent.yaml";
pub const DEFAULT_DATA_DIR: &str = "/var/lib/halite/agent";
pub const DEFAULT_MASTER: &str = "tcp://127.0.0.1:4510";

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AgentConfig {
    /// The agent's id; default: the host name.
    #[serde(default)]
    pub id: Option<String>,
    /// The master's agent link.
    #[serde(default = "default_master")]
    pub master: String,
    /// Several masters instead of one (`master:` and `masters:` together
    /// are an error): each an address, or `{address, key}` with the key
    /// that master is pinned to. The agent ranks them (masters.rs) and
    /// fails over down its ranking. A master without its own `key` is
    /// trusted by `master_key` (a cluster key all of them share) or `tofu`.
    #[serde(default)]
    pub masters: Option<Vec<MasterEntry>>,
    /// With `masters`: how often an agent away from its first-ranked
    /// master probes the better ranked ones (`30s` by default, at least
    /// `1s`; each wait jittered to a half to all of it).
    #[serde(default)]
    pub return_probe: Option<String>,
    /// The master's public key, pinned (`halite-master keys fingerprint`
    /// prints it).
    #[serde(default)]
    pub master_key: Option<String>,
    /// Trust the master's key on first use instead of pinning it.
    #[serde(default)]
    pub tofu: bool,
    /// Keys, the record of managed files, the outbox.
    #[serde(default = "default_data_dir")]
    pub data_dir: PathBuf,
    /// Prefix for every path that states and beacons name: `/etc/motd` is
    /// `<root>/etc/motd` on this host. Default `/`. For running several
    /// agents on one host (the demo, tests) or managing a chroot.
    #[serde(default = "default_root")]
    pub root: PathBuf,
    /// Local beacons, run beside the master's: name → `{kind: config}`, as
    /// the body of one beacons.yaml target. On a name clash the master's
    /// beacon wins (see [`crate::beacons::merge`]).
    #[serde(default)]
    pub beacons: IndexMap<String, IndexMap<String, serde_json::Value>>,
    /// Offline healing: keep the last desired content of managed files and
    /// restore a watched one that drifts while the master is unreachable,
    /// then report it (`halite/agent/<id>/healed`). Default false.
    #[serde(default)]
    pub enforce_offline: bool,
    /// Fsync each outbox batch before it is sent, so it survives a power
    /// cut, not only a crash of the agent. Default false: it puts two
    /// fsyncs (milliseconds on a busy disk) on the path of every drift.
    #[serde(default)]
    pub outbox_fsync: bool,
    /// `file.managed` keeps a backup of content it replaces up to this many
    /// bytes (larger content is replaced without one). Default 64 MiB.
    #[serde(default = "default_backup_max_bytes")]
    pub backup_max_bytes: u64,
    /// How `run` writes its logs: `text` (default) or `json`, one object
    /// per line (`--log-format` overrides it).
    #[serde(default)]
    pub log_format: crate::logging::LogFormat,
    /// A file holding the master's enrolment token (its first line): sent
    /// in the hello, inside the Noise session, so that an `auto_accept`
    /// glob on a master with `enrolment.token_file` accepts this agent.
    #[serde(default)]
    pub enrol_token_file: Option<PathBuf>,
    /// Static grains, as in a Salt minion's configuration: `{role: web}`.
    /// Sent with the facts (as `grains`); on the master they are grains
    /// that win over the computed ones (`G@role:web`, `grains['role']`).
    #[serde(default)]
    pub grains: IndexMap<String, serde_json::Value>,
}

/// One item of `masters:` in agent.yaml.
#[derive(Debug, Clone, Deserialize)]
#[serde(untagged)]
pub enum MasterEntry {
    /// `- tcp://10.0.0.2:4510`: trusted by `master_key` or `tofu`.
    Address(String),
    /// `- {address: tcp://10.0.0.2:4510, key: …}`: pinned to its own key.
    Keyed(KeyedMaster),
}

/// A master listed with its own key.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KeyedMaster {
    pub address: String,
    /// The master's public key (`halite-master keys fingerprint`), as
    /// `master_key` takes it.
    #[serde(default)]
    pub key: Option<String>,
}

impl MasterEntry {
    pub fn address(&self) -> &str {
        match self {
            MasterEntry::Address(address) => address,
            MasterEntry::Keyed(keyed) => &keyed.address,
        }
    }

    fn key(&self) -> Option<&str> {
        match self {
            MasterEntry::Address(_) => None,
            MasterEntry::Keyed(keyed) => keyed.key.as_deref(),
        }
    }
}

/// Where `master` and `masters` are written, read in a second pass over
/// the text (the typed parse does not keep positions).
#[derive(Deserialize)]
struct MasterFields {
    #[serde(default)]
    master: Option<halite_state::yaml::Spanned<serde_json::Value>>,
    #[serde(default)]
    masters: Option<halite_state::yaml::Spanned<Vec<halite_state::yaml::Spanned<serde_json::Value>>>>,
}

fn default_backup_max_bytes() -> u64 {
    halite_state::apply::DEFAULT_BACKUP_MAX_BYTES
}

fn default_root() -> PathBuf {
    PathBuf::from("/")
}

fn default_master() -> String {
    DEFAULT_MASTER.to_owned()
}

fn default_data_dir() -> PathBuf {
    PathBuf::from(DEFAULT_DATA_DIR)
}

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read {path}: {source}")]
    Read { path: PathBuf, source: std::io::Error },
    #[error("{path}:{line}:{column}: {message}")]
    Invalid { path: PathBuf, line: u64, column: u64, message: String },
    #[error("{path}: the agent id `{id}` may only contain letters, digits, '.', '-' and '_'")]
    BadId { path: PathBuf, id: String },
    #[error("{path}: `master_key`: {source}")]
    BadMasterKey { path: PathBuf, source: halite_link::keys::KeyError },
    #[error(
        "{path}:{master_line}: `master` and {path}:{masters_line}: `masters` are both set; keep one: `masters` (a list of one address works too) or `master`"
    )]
    BothMasters { path: PathBuf, master_line: u64, masters_line: u64 },
    #[error("{path}: `return_probe: {value}`: {reason}; write a duration of at least 1s, e.g. `30s`")]
    BadReturnProbe { path: PathBuf, value: String, reason: String },
    #[error("{path}:{line}: `masters` is empty; list at least one master's address, or use `master`")]
    NoMasters { path: PathBuf, line: u64 },
    #[error("{path}:{line}: `masters` lists {address} twice; list each master once")]
    DuplicateMaster { path: PathBuf, line: u64, address: String },
    #[error("{path}:{line}: `masters`: the key of {address}: {source}")]
    BadListedKey { path: PathBuf, line: u64, address: String, source: Box<halite_link::keys::KeyError> },
    #[error("{path}: local beacon `{beacon}`: {message}\n  help: {help}")]
    BadBeacon { path: PathBuf, beacon: String, message: String, help: String },
    #[error(
        "{path}: the agent does not know which master to trust; set `master_key` to the master's key (`halite-master keys fingerprint` prints it), or `tofu: true` to trust the first master it meets"
    )]
    NoTrust { path: PathBuf },
}

impl AgentConfig {
    pub fn load(path: &Path) -> Result<AgentConfig, ConfigError> {
        let text =
            std::fs::read_to_string(path).map_err(|source| ConfigError::Read { path: path.to_path_buf(), source })?;
        let config: AgentConfig = halite_state::yaml::parse(path, &text).map_err(|d| ConfigError::Invalid {
            path: path.to_path_buf(),
            line: d.line,
            column: d.column,
            // serde's words for an item of `masters` that is neither form.
            message: match d.message.contains("untagged enum MasterEntry") {
                true => "an item of `masters` is an address (`tcp://10.0.0.2:4510`) or `{address: …, key: …}`".into(),
                false => d.message,
            },
        })?;
        if let Some(id) = &config.id
            && !valid_id(id)
        {
            return Err(ConfigError::BadId { path: path.to_path_buf(), id: id.clone() });
        }
        if let Some(key) = &config.master_key {
            key.parse::<halite_link::PublicKey>()
                .map_err(|source| ConfigError::BadMasterKey { path: path.to_path_buf(), source })?;
        }
        let every_master_keyed = config.check_masters(path, &text)?;
        if let Some(value) = &config.return_probe {
            let bad =
                |reason: String| ConfigError::BadReturnProbe { path: path.to_path_buf(), value: value.clone(), reason };
            let every = humantime::parse_duration(value).map_err(|e| bad(e.to_string()))?;
            if every < crate::masters::MIN_RETURN_PROBE {
                return Err(bad("shorter than 1s".into()));
            }
        }
        if config.master_key.is_none() && !config.tofu && !every_master_keyed {
            return Err(ConfigError::NoTrust { path: path.to_path_buf() });
        }
        config.local_beacons().map_err(|(beacon, message, help)| ConfigError::BadBeacon {
            path: path.to_path_buf(),
            beacon,
            message,
            help,
        })?;
        Ok(config)
    }

    /// Checks `masters` against `master` and itself (positions from a
    /// second read of `text`); true when `masters` gives every master its
    /// own key (then `master_key` and `tofu` are not needed).
    fn check_masters(&self, path: &Path, text: &str) -> Result<bool, ConfigError> {
        let Some(masters) = &self.masters else { return Ok(false) };
        let fields: MasterFields = halite_state::yaml::parse(path, text).map_err(|d| ConfigError::Invalid {
            path: path.to_path_buf(),
            line: d.line,
            column: d.column,
            message: d.message,
        })?;
        let masters_line = fields.masters.as_ref().map_or(0, |list| halite_state::yaml::location(list).line);
        // Each item's own line, for errors about one master.
        let item_lines: Vec<u64> = fields
            .masters
            .as_ref()
            .map(|list| list.value.iter().map(|item| halite_state::yaml::location(item).line).collect())
            .unwrap_or_default();
        if let Some(master) = &fields.master {
            return Err(ConfigError::BothMasters {
                path: path.to_path_buf(),
                master_line: halite_state::yaml::location(master).line,
                masters_line,
            });
        }
        if masters.is_empty() {
            return Err(ConfigError::NoMasters { path: path.to_path_buf(), line: masters_line });
        }
        let mut seen = std::collections::HashSet::new();
        for (n, entry) in masters.iter().enumerate() {
            let line = item_lines.get(n).copied().unwrap_or(masters_line);
            if !seen.insert(entry.address()) {
                return Err(ConfigError::DuplicateMaster {
                    path: path.to_path_buf(),
                    line,
                    address: entry.address().to_owned(),
                });
            }
            if let Some(key) = entry.key() {
                key.parse::<halite_link::PublicKey>().map_err(|source| ConfigError::BadListedKey {
                    path: path.to_path_buf(),
                    line,
                    address: entry.address().to_owned(),
                    source: Box::new(source),
                })?;
            }
        }
        Ok(masters.iter().all(|entry| entry.key().is_some()))
    }

    /// The masters this agent may talk to, each with how it is trusted:
    /// `masters`, or `master` alone, in the order written (the link ranks
    /// them).
    pub fn master_links(&self) -> Vec<crate::link::MasterLink> {
        match &self.masters {
            Some(masters) => masters
                .iter()
                .map(|entry| crate::link::MasterLink {
                    endpoint: entry.address().to_owned(),
                    trust: match entry.key().and_then(|k| k.parse().ok()) {
                        Some(key) => crate::link::MasterTrust::Pinned(key),
                        None => self.trust(),
                    },
                })
                .collect(),
            None => vec![crate::link::MasterLink { endpoint: self.master.clone(), trust: self.trust() }],
        }
    }

    /// How often to probe better-ranked masters (`return_probe`, checked
    /// when the file loaded).
    pub fn return_probe(&self) -> std::time::Duration {
        self.return_probe
            .as_deref()
            .and_then(|value| humantime::parse_duration(value).ok())
            .unwrap_or(crate::masters::RETURN_PROBE)
    }

    /// The masters' addresses, for the log.
    pub fn master_addresses(&self) -> String {
        self.master_links().iter().map(|m| m.endpoint.as_str()).collect::<Vec<_>>().join(", ")
    }

    /// The local beacons as specs, each checked by its kind; an error says
    /// which beacon, what is wrong and how to fix it.
    pub fn local_beacons(&self) -> Result<Vec<BeaconSpec>, (String, String, String)> {
        let known = || format!("known kinds: {}", crate::beacons::names().join(", "));
        self.beacons
            .iter()
            .map(|(name, kinds)| {
                if !valid_id(name) {
                    return Err((
                        name.clone(),
                        "the name is not usable in an event tag".into(),
                        "use letters, digits, '.', '-' and '_'".into(),
                    ));
                }
                let mut kinds = kinds.iter();
                let (Some((kind, config)), None) = (kinds.next(), kinds.next()) else {
                    return Err((name.clone(), "must name exactly one beacon kind".into(), known()));
                };
                let config = Value::from_json(config);
                crate::beacons::validate(kind, &config).map_err(|error| {
                    let help = crate::beacons::find(kind).map_or_else(known, |k| {
                        format!("a `{}` beacon looks like: {}", k.name, k.example.trim_end().replace('\n', "; "))
                    });
                    (name.clone(), error.to_string(), help)
                })?;
                Ok(BeaconSpec { name: name.clone(), kind: kind.clone(), config })
            })
            .collect()
    }

    /// How the link decides whether the master is ours.
    pub fn trust(&self) -> crate::link::MasterTrust {
        match self.master_key.as_deref().and_then(|k| k.parse().ok()) {
            Some(key) => crate::link::MasterTrust::Pinned(key),
            None => crate::link::MasterTrust::FirstUse(self.data_dir.join("master.pub")),
        }
    }

    /// This agent's key file.
    pub fn key_path(&self) -> PathBuf {
        self.data_dir.join("agent.key")
    }

    /// The configured id, else the host name.
    pub fn agent_id(&self) -> String {
        self.id.clone().unwrap_or_else(crate::facts::hostname)
    }
}

/// Ids appear in event tags and targets: the rule is the protocol's, shared
/// with the master.
pub use halite_proto::event::valid_id;

#[cfg(test)]
mod tests {
    use super::*;

    fn load(text: &str) -> Result<AgentConfig, ConfigError> {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("agent.yaml");
        std::fs::write(&path, text).unwrap();
        AgentConfig::load(&path)
    }

    #[test]
    fn defaults() {
        let config = load(&format!("id: web01\nmaster_key: {}\n", "ab".repeat(32))).unwrap();
        assert_eq!(config.master, DEFAULT_MASTER);
        assert_eq!(config.data_dir, PathBuf::from(DEFAULT_DATA_DIR));
        assert!(!config.tofu);
        assert!(!config.enforce_offline);
        assert!(!config.outbox_fsync);
        assert_eq!(config.backup_max_bytes, 64 * 1024 * 1024);
        let config = load(&format!(
            "id: web01\nmaster_key: {}\nenforce_offline: true\nbackup_max_bytes: 1000\n",
            "ab".repeat(32)
        ))
        .unwrap();
        assert!(config.enforce_offline);
        assert_eq!(config.backup_max_bytes, 1000);
    }

    #[test]
    fn unknown_keys_are_named() {
        let error = load("id: web01\nmastr: tcp://x:1\n").unwrap_err().to_string();
        assert!(error.contains("mastr") && error.contains(":2:"), "{error}");
        let error = load("id: web01\n").unwrap_err().to_string();
        assert!(error.contains("master_key") && error.contains("tofu"), "{error}");
        let error = load("id: web01\nmaster_key: abc\n").unwrap_err().to_string();
        assert!(error.contains("64 hex digits"), "{error}");
    }

    #[test]
    fn local_beacons_are_checked_when_the_config_loads() {
        let key = format!("master_key: {}\n", "ab".repeat(32));
        let config =
            load(&format!("id: web01\n{key}beacons:\n  app-log:\n    file:\n      paths: [/var/log/app]\n")).unwrap();
        let specs = config.local_beacons().unwrap();
        assert_eq!((specs[0].name.as_str(), specs[0].kind.as_str()), ("app-log", "file"));
        let error = load(&format!("id: web01\n{key}beacons:\n  app-log:\n    file:\n      paths: [var/log]\n"))
            .unwrap_err()
            .to_string();
        assert!(error.contains("agent.yaml: local beacon `app-log`: path `var/log` is not absolute"), "{error}");
        assert!(error.contains("help: a `file` beacon looks like"), "{error}");
        let error = load(&format!("id: web01\n{key}beacons:\n  'a b':\n    load: {{above: 1}}\n")).unwrap_err();
        assert!(error.to_string().contains("`a b`"), "{error}");
        let error = load(&format!("id: web01\n{key}beacons:\n  x:\n    gpu: {{}}\n")).unwrap_err();
        assert!(error.to_string().contains("known kinds"), "{error}");
    }

    #[test]
    fn several_masters_with_a_cluster_key_or_their_own() {
        let key = "ab".repeat(32);
        let config = load(&format!(
            "id: web01\nmaster_key: {key}\nmasters:\n  - tcp://127.0.0.2:4510\n  - tcp://127.0.0.3:4510\n"
        ))
        .unwrap();
        let links = config.master_links();
        assert_eq!(links.len(), 2);
        assert_eq!(links[1].endpoint, "tcp://127.0.0.3:4510");
        assert!(matches!(&links[0].trust, crate::link::MasterTrust::Pinned(k) if k.to_string() == key));
        // Each with its own key: no shared key needed.
        let other = "cd".repeat(32);
        let config = load(&format!(
            "id: web01\nmasters:\n  - address: tcp://127.0.0.2:4510\n    key: {key}\n  - {{address: tcp://127.0.0.3:4510, key: {other}}}\n"
        ))
        .unwrap();
        let links = config.master_links();
        assert!(matches!(&links[1].trust, crate::link::MasterTrust::Pinned(k) if k.to_string() == other));
        // `master` alone still works, as a list of one.
        let config = load(&format!("id: web01\nmaster_key: {key}\nmaster: tcp://10.0.0.1:4510\n")).unwrap();
        assert_eq!(config.master_links().len(), 1);
        assert_eq!(config.master_links()[0].endpoint, "tcp://10.0.0.1:4510");
    }

    #[test]
    fn masters_errors_name_the_file_the_line_and_the_fields() {
        let key = format!("master_key: {}\n", "ab".repeat(32));
        let error =
            load(&format!("id: web01\n{key}master: tcp://a:1\nmasters: [tcp://b:1]\n")).unwrap_err().to_string();
        assert!(error.contains("agent.yaml:3: `master`") && error.contains("agent.yaml:4: `masters`"), "{error}");
        let error = load(&format!("id: web01\n{key}masters: []\n")).unwrap_err().to_string();
        assert!(error.contains("agent.yaml:3: `masters` is empty"), "{error}");
        let error = load(&format!("id: web01\n{key}masters: [tcp://b:1, tcp://b:1]\n")).unwrap_err().to_string();
        assert!(error.contains("lists tcp://b:1 twice"), "{error}");
        let error = load(&format!("id: web01\n{key}masters:\n  - tcp://a:1\n  - {{address: tcp://b:1, key: abc}}\n"))
            .unwrap_err()
            .to_string();
        assert!(error.contains("agent.yaml:5: `masters`: the key of tcp://b:1") && error.contains("64 hex"), "{error}");
        let error = load(&format!("id: web01\n{key}masters:\n  - tcp://b:1\n  - tcp://c:1\n  - tcp://b:1\n"))
            .unwrap_err()
            .to_string();
        assert!(error.contains("agent.yaml:6: `masters` lists tcp://b:1 twice"), "{error}");
        let error = load(&format!("id: web01\n{key}return_probe: 10ms\n")).unwrap_err().to_string();
        assert!(error.contains("`return_probe: 10ms`: shorter than 1s"), "{error}");
        let config = load(&format!("id: web01\n{key}return_probe: 2s\n")).unwrap();
        assert_eq!(config.return_probe(), std::time::Duration::from_secs(2));
        // A master without a key of its own needs the shared key or tofu.
        let error = load(&format!(
            "id: web01\nmasters:\n  - {{address: tcp://b:1, key: {}}}\n  - tcp://c:1\n",
            "ab".repeat(32)
        ))
        .unwrap_err()
        .to_string();
        assert!(error.contains("master_key") && error.contains("tofu"), "{error}");
        let error =
            load(&format!("id: web01\n{key}masters:\n  - {{address: tcp://b:1, port: 2}}\n")).unwrap_err().to_string();
        assert!(error.contains("agent.yaml:4:5: an item of `masters` is an address"), "{error}");
    }

    #[test]
    fn ids_are_checked() {
        assert!(load("id: 'web 01'\n").is_err());
    }
}

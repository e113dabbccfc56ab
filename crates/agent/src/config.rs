//! `agent.yaml`: the agent's own configuration (SPEC §4).

use std::path::{Path, PathBuf};

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
    #[error("{path}: `master_key`: {message}")]
    BadMasterKey { path: PathBuf, message: String },
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
            message: d.message,
        })?;
        if let Some(id) = &config.id
            && !valid_id(id)
        {
            return Err(ConfigError::BadId { path: path.to_path_buf(), id: id.clone() });
        }
        if let Some(key) = &config.master_key {
            key.parse::<halite_link::PublicKey>()
                .map_err(|message| ConfigError::BadMasterKey { path: path.to_path_buf(), message })?;
        } else if !config.tofu {
            return Err(ConfigError::NoTrust { path: path.to_path_buf() });
        }
        Ok(config)
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

/// Ids appear in event tags and targets; keep them to a safe alphabet.
pub fn valid_id(id: &str) -> bool {
    !id.is_empty() && id.len() <= 253 && id.chars().all(|c| c.is_ascii_alphanumeric() || "._-".contains(c))
}

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
    fn ids_are_checked() {
        assert!(load("id: 'web 01'\n").is_err());
        assert!(valid_id("web-01.example_a"));
        assert!(!valid_id("web/01"));
    }
}

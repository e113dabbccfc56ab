//! `master.yaml`: the master's configuration (SPEC §4).

use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

pub const DEFAULT_CONFIG: &str = "/etc/halite/master.yaml";

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MasterConfig {
    /// The agent link (ZeroMQ ROUTER). Port 0 picks a free port.
    #[serde(default = "default_listen")]
    pub listen: String,
    /// The outside event publisher (ZeroMQ PUB, `[tag, json]`): by default
    /// (`None`) a Unix socket in the data dir that only the master's user
    /// may use ([`MasterConfig::publish_endpoint`]); `tcp://IP:PORT` (port 0
    /// likewise) or `ipc://PATH` when set. A TCP publisher has no
    /// authentication: whoever reaches it reads every event.
    #[serde(default)]
    pub publish: Option<String>,
    /// The state tree.
    #[serde(default = "default_states")]
    pub states: PathBuf,
    /// Keys, the control socket, the store, the `endpoints` file.
    #[serde(default = "default_data_dir")]
    pub data_dir: PathBuf,
    /// Agent-id globs accepted without an operator (enforced with agent keys).
    #[serde(default)]
    pub auto_accept: Vec<String>,
    /// A connection to the link or the publisher that has not completed the
    /// ZMTP handshake in this long is dropped (`10s`, `500ms`).
    #[serde(default = "default_handshake_timeout", deserialize_with = "duration")]
    pub handshake_timeout: Duration,
    /// The largest event taken from an agent (its tag, agent and data's
    /// text, plus one byte per value); a larger one is acknowledged and
    /// dropped, with a warning.
    #[serde(default = "default_max_event_bytes")]
    pub max_event_bytes: usize,
    /// Link handshakes one source address may have at once; a further
    /// Hello1 from it closes its connection (the agent retries).
    #[serde(default = "default_handshakes_per_source")]
    pub handshakes_per_source: usize,
}

fn default_handshakes_per_source() -> usize {
    crate::server::limits::PER_SOURCE_HANDSHAKES
}

fn default_max_event_bytes() -> usize {
    crate::server::limits::MAX_EVENT_BYTES
}

fn default_handshake_timeout() -> Duration {
    halite_link::transport::HANDSHAKE_TIMEOUT
}

/// A duration as authored (`10s`, `500ms`).
fn duration<'de, D: serde::Deserializer<'de>>(deserializer: D) -> Result<Duration, D::Error> {
    let text = String::deserialize(deserializer)?;
    humantime::parse_duration(&text)
        .map_err(|e| serde::de::Error::custom(format!("`{text}` is not a duration ({e}); write e.g. 10s")))
}

fn default_listen() -> String {
    "tcp://0.0.0.0:4510".into()
}
fn default_states() -> PathBuf {
    "/srv/halite/states".into()
}
fn default_data_dir() -> PathBuf {
    "/var/lib/halite/master".into()
}

impl Default for MasterConfig {
    fn default() -> Self {
        MasterConfig {
            listen: default_listen(),
            publish: None,
            states: default_states(),
            data_dir: default_data_dir(),
            auto_accept: Vec::new(),
            handshake_timeout: default_handshake_timeout(),
            max_event_bytes: default_max_event_bytes(),
            handshakes_per_source: default_handshakes_per_source(),
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read {path}: {source}")]
    Read { path: PathBuf, source: std::io::Error },
    #[error("{0}")]
    Invalid(halite_state::Diagnostic),
}

/// The default publisher's socket, in the data dir.
pub const PUBLISH_SOCKET: &str = "events.sock";

impl MasterConfig {
    /// Where the publisher binds: `publish` as set, or
    /// `ipc://<data_dir>/events.sock`.
    pub fn publish_endpoint(&self) -> String {
        self.publish.clone().unwrap_or_else(|| format!("ipc://{}", self.data_dir.join(PUBLISH_SOCKET).display()))
    }

    /// Loads the configuration; relative paths in it are relative to the
    /// file's directory.
    pub fn load(path: &Path) -> Result<MasterConfig, ConfigError> {
        let text =
            std::fs::read_to_string(path).map_err(|source| ConfigError::Read { path: path.to_path_buf(), source })?;
        let mut config: MasterConfig = halite_state::yaml::parse(path, &text).map_err(ConfigError::Invalid)?;
        let base = path.parent().unwrap_or(Path::new("."));
        config.states = base.join(&config.states);
        config.data_dir = base.join(&config.data_dir);
        Ok(config)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unknown_keys_are_named_and_paths_are_relative_to_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("master.yaml");
        std::fs::write(&path, "states: tree\nlisten: tcp://127.0.0.1:0\n").unwrap();
        let config = MasterConfig::load(&path).unwrap();
        assert_eq!(config.states, dir.path().join("tree"));
        assert_eq!(config.publish, None);
        assert_eq!(config.publish_endpoint(), "ipc:///var/lib/halite/master/events.sock");
        std::fs::write(&path, "data_dir: data\npublish: tcp://127.0.0.1:0\n").unwrap();
        let config = MasterConfig::load(&path).unwrap();
        assert_eq!(config.publish_endpoint(), "tcp://127.0.0.1:0");
        std::fs::write(&path, "stats: tree\n").unwrap();
        let error = MasterConfig::load(&path).unwrap_err().to_string();
        assert!(error.contains("stats") && error.contains("master.yaml:1:1"), "{error}");
    }
}

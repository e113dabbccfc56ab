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
    /// How `run` writes its logs: `text` (default) or `json`, one object
    /// per line (`--log-format` overrides it).
    #[serde(default)]
    pub log_format: halite_agent::logging::LogFormat,
    /// How new agents get in: the enrolment token `auto_accept` asks for,
    /// pre-registered keys, and the bounds on pending keys.
    #[serde(default)]
    pub enrolment: Enrolment,
    /// Variables of the master's environment that `exec` hooks may see,
    /// besides `HALITE_*` and the default allow-list (PATH, LANG, LC_*,
    /// TZ, HOME, USER, LOGNAME, TMPDIR).
    #[serde(default)]
    pub exec_env: Vec<String>,
    /// After a reload, re-apply each connected agent whose rendered states
    /// changed (`server/reload.rs`); `false` leaves them `stale`.
    #[serde(default = "default_enforce_on_reload")]
    pub enforce_on_reload: bool,
    /// At most this many agents a second are re-applied after a reload,
    /// across the fleet.
    #[serde(default = "default_reload_rate")]
    pub reload_rate: u32,
    /// Scheduled enforcement (`server/schedule.rs`): each entry applies its
    /// states (or the highstate) to the agents it targets every so often.
    #[serde(default)]
    pub schedule: Vec<ScheduleEntry>,
    /// How much job history halite.db keeps.
    #[serde(default)]
    pub store: StoreConfig,
    /// The largest event taken from an agent (its tag, agent and data's
    /// text, plus one byte per value); a larger one is acknowledged and
    /// dropped, with a warning.
    #[serde(default = "default_max_event_bytes")]
    pub max_event_bytes: usize,
    /// Link handshakes one source address may have at once; a further
    /// Hello1 from it closes its connection (the agent retries).
    #[serde(default = "default_handshakes_per_source")]
    pub handshakes_per_source: usize,
    /// The HTTPS API and dashboard (`src/http/`); off unless set.
    #[serde(default)]
    pub api: Option<ApiConfig>,
    /// Roles for API tokens (and `--token` on the command line): name →
    /// verbs × target. `admin` (every verb, every agent) is built in.
    #[serde(default)]
    pub roles: std::collections::BTreeMap<String, RoleConfig>,
    /// `/metrics` in the Prometheus text format on a listener of its own
    /// (`server/metrics/`); off unless set.
    #[serde(default)]
    pub metrics: Option<MetricsConfig>,
    /// How the master fetches `http(s)://` sources of states
    /// (`server/fetch.rs`).
    #[serde(default)]
    pub fetch: FetchConfig,
    /// Client certificates → roles (`api.client_ca` checks them).
    #[serde(default)]
    pub access: AccessConfig,
}

/// `fetch:` in master.yaml: URL sources of `file.managed`,
/// `archive.extracted` and `pkgrepo.managed`'s key, fetched by the master.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FetchConfig {
    /// Certificates (PEM) trusted for HTTPS besides the system's roots: a
    /// private mirror's CA, or a test's.
    #[serde(default)]
    pub ca_file: Option<PathBuf>,
    /// One fetch's limit, connection to last byte.
    #[serde(default = "default_fetch_timeout", deserialize_with = "duration")]
    pub timeout: Duration,
    /// The largest body taken for one URL (an archive's own limit, 64 MiB,
    /// still applies).
    #[serde(default = "default_fetch_max_bytes")]
    pub max_bytes: u64,
    /// The on-disk cache of fetched bodies (`<data_dir>/fetched/`, by
    /// digest): the oldest are removed past this.
    #[serde(default = "default_fetch_cache_bytes")]
    pub cache_bytes: u64,
}

impl Default for FetchConfig {
    fn default() -> Self {
        FetchConfig {
            ca_file: None,
            timeout: default_fetch_timeout(),
            max_bytes: default_fetch_max_bytes(),
            cache_bytes: default_fetch_cache_bytes(),
        }
    }
}

fn default_fetch_timeout() -> Duration {
    Duration::from_secs(60)
}
fn default_fetch_max_bytes() -> u64 {
    halite_state::fetch::MAX_BYTES
}
fn default_fetch_cache_bytes() -> u64 {
    1 << 30
}

/// `api:` in master.yaml: where the HTTPS API listens and with which
/// certificate.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ApiConfig {
    /// `IP:PORT` (`127.0.0.1:8443`); port 0 picks a free port, printed on
    /// the ready line as `api=https://IP:PORT`.
    pub listen: String,
    /// The certificate chain, PEM; default `<data_dir>/api.crt` (`init`
    /// writes a self-signed one).
    #[serde(default)]
    pub cert: Option<PathBuf>,
    /// Its private key, PEM; default `<data_dir>/api.key`.
    #[serde(default)]
    pub key: Option<PathBuf>,
    /// PEM certificates of the authority client certificates are checked
    /// against; when set, the TLS server asks every client for one
    /// (`access.certificates` maps it to a role).
    #[serde(default)]
    pub client_ca: Option<PathBuf>,
    /// Whether a client without a certificate may still connect (and
    /// authenticate with a token): `optional` (default) or `required`.
    #[serde(default)]
    pub client_certs: ClientCerts,
}

/// `api.client_certs`: what the TLS handshake asks of a client when
/// `api.client_ca` is set.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ClientCerts {
    /// A certificate is checked if sent; without one, tokens work.
    #[default]
    Optional,
    /// No verified certificate, no connection.
    Required,
}

/// `access:` in master.yaml: credentials besides tokens.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AccessConfig {
    /// A client certificate's name (its subject's common name, or one of
    /// its DNS names) → the role it runs as, e.g. `ops-laptop: web-ops`.
    #[serde(default)]
    pub certificates: std::collections::BTreeMap<String, String>,
}

impl ApiConfig {
    /// The certificate's file.
    pub fn cert_path(&self, data_dir: &Path) -> PathBuf {
        self.cert.clone().unwrap_or_else(|| data_dir.join(API_CERT))
    }
    /// The private key's file.
    pub fn key_path(&self, data_dir: &Path) -> PathBuf {
        self.key.clone().unwrap_or_else(|| data_dir.join(API_KEY))
    }
}

/// The API's default certificate, in the data dir.
pub const API_CERT: &str = "api.crt";
/// The API's default private key, in the data dir (owner-only).
pub const API_KEY: &str = "api.key";

/// What a token may do (`roles:` in master.yaml).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Deserialize, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Verb {
    /// See agents, keys, jobs, the tree and events (of the agents the
    /// role's target matches).
    Read,
    /// Accept, reject and delete keys.
    Keys,
    /// Apply states (and test them).
    Apply,
    /// Run ad-hoc commands.
    Cmd,
    /// Everything, on every agent: tokens, the audit log, backups.
    Admin,
}

impl Verb {
    pub fn as_str(self) -> &'static str {
        match self {
            Verb::Read => "read",
            Verb::Keys => "keys",
            Verb::Apply => "apply",
            Verb::Cmd => "cmd",
            Verb::Admin => "admin",
        }
    }
}

/// One entry of `roles:`.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RoleConfig {
    pub verbs: Vec<Verb>,
    /// The agents the verbs reach, as a target expression (`web*`,
    /// `G@os:debian`); default every agent.
    #[serde(default = "default_schedule_target")]
    pub target: String,
}

/// `metrics:` in master.yaml.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MetricsConfig {
    /// Where `/metrics` is served over plain HTTP, e.g. `127.0.0.1:9510`
    /// (port 0 picks a free port, said in the `endpoints` file). It has no
    /// authentication: keep it on loopback or a scrape network.
    pub listen: std::net::SocketAddr,
}

/// First contact (README, "Security model").
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Enrolment {
    /// A file holding the enrolment token (its first line). When set, an
    /// `auto_accept` glob accepts a new id only from an agent that presents
    /// this token (`enrol_token_file` in its agent.yaml); without it the
    /// glob trusts the id alone.
    #[serde(default)]
    pub token_file: Option<PathBuf>,
    /// Agent keys (64 hex digits, `halite-agent fingerprint`) accepted on
    /// first contact under any id not yet known, with no token.
    #[serde(default)]
    pub fingerprints: Vec<String>,
    /// Pending keys kept at most; a new key beyond it is refused (not
    /// recorded) until an operator decides or old ones expire.
    #[serde(default = "default_pending_max")]
    pub pending_max: usize,
    /// A pending key no operator decided about is forgotten after this long.
    #[serde(default = "default_pending_expire", deserialize_with = "duration")]
    pub pending_expire: Duration,
    /// New pending keys taken from one source address per minute; more are
    /// refused (not recorded) until the minute is over.
    #[serde(default = "default_new_keys_per_source")]
    pub new_keys_per_source: u32,
    /// Lets `auto_accept` globs accept a new id with neither a token nor a
    /// fingerprint: whoever reaches the link first under a matching id is
    /// accepted. Off by default, so that trusting an id alone is a choice
    /// written down, not an omission (the master refuses to start).
    #[serde(default)]
    pub trust_id_alone: bool,
}

/// Pending keys kept at most, by default.
pub const DEFAULT_PENDING_MAX: usize = 1024;
/// How long a pending key is kept, by default: a week.
pub const DEFAULT_PENDING_EXPIRE: Duration = Duration::from_secs(7 * 24 * 3600);
/// New pending keys per source address per minute, by default.
pub const DEFAULT_NEW_KEYS_PER_SOURCE: u32 = 32;

fn default_pending_max() -> usize {
    DEFAULT_PENDING_MAX
}
fn default_pending_expire() -> Duration {
    DEFAULT_PENDING_EXPIRE
}
fn default_new_keys_per_source() -> u32 {
    DEFAULT_NEW_KEYS_PER_SOURCE
}

impl Default for Enrolment {
    fn default() -> Self {
        Enrolment {
            token_file: None,
            fingerprints: Vec::new(),
            pending_max: DEFAULT_PENDING_MAX,
            pending_expire: DEFAULT_PENDING_EXPIRE,
            new_keys_per_source: DEFAULT_NEW_KEYS_PER_SOURCE,
            trust_id_alone: false,
        }
    }
}

/// One entry of `schedule:` in master.yaml.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ScheduleEntry {
    /// Names the entry in logs and in its jobs' cause (`schedule:<name>`).
    pub name: String,
    /// How often (`30m`, `1h`).
    #[serde(deserialize_with = "duration")]
    pub every: Duration,
    /// Each agent's run is put off by its own share of this (the same for
    /// an agent every time), so a fleet does not apply all at once.
    #[serde(default, deserialize_with = "duration")]
    pub splay: Duration,
    /// State files to apply; none: each agent's top.yaml states.
    #[serde(default)]
    pub states: Vec<String>,
    /// Which connected agents (a target expression); default all.
    #[serde(default = "default_schedule_target")]
    pub target: String,
    /// Test mode: report what would change, change nothing.
    #[serde(default)]
    pub test: bool,
}

fn default_schedule_target() -> String {
    "*".into()
}
fn default_enforce_on_reload() -> bool {
    true
}
fn default_reload_rate() -> u32 {
    20
}

/// `store:` in master.yaml: the job history's retention, applied at start
/// and every ten minutes, oldest jobs first; and where the records go
/// (`server/store/postgres.rs`): halite.db by default, PostgreSQL when
/// `url` is a `postgres://` URL. `store: postgres://…` alone is short for
/// `store: {url: postgres://…}`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, remote = "Self")]
pub struct StoreConfig {
    /// `postgres://USER@HOST[:PORT]/DB[?sslmode=disable|prefer|require]`:
    /// records go to that database. Without a password: it comes from
    /// `password_file` or the `HALITE_PG_PASSWORD` environment variable,
    /// never from this file (which logs and `check` may show).
    #[serde(default)]
    pub url: Option<String>,
    /// A file holding the PostgreSQL password (its first line).
    #[serde(default)]
    pub password_file: Option<PathBuf>,
    /// PEM certificates of the authorities the server's certificate is
    /// checked against (`sslmode=require`); needed for TLS.
    #[serde(default)]
    pub ca_file: Option<PathBuf>,
    /// Jobs older than this many days are deleted with their results.
    #[serde(default = "default_retention_days")]
    pub retention_days: u32,
    /// Then the oldest jobs are deleted until the rows take at most this
    /// many bytes of halite.db.
    #[serde(default = "default_store_max_bytes")]
    pub max_bytes: u64,
}

fn default_retention_days() -> u32 {
    90
}
fn default_store_max_bytes() -> u64 {
    1 << 30
}

impl Default for StoreConfig {
    fn default() -> Self {
        StoreConfig {
            url: None,
            password_file: None,
            ca_file: None,
            retention_days: default_retention_days(),
            max_bytes: default_store_max_bytes(),
        }
    }
}

/// `store:` is a map, or a URL alone.
impl<'de> Deserialize<'de> for StoreConfig {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct Either;
        impl<'de> serde::de::Visitor<'de> for Either {
            type Value = StoreConfig;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("a postgres:// URL, or a map (url, password_file, ca_file, retention_days, max_bytes)")
            }
            fn visit_str<E: serde::de::Error>(self, url: &str) -> Result<StoreConfig, E> {
                Ok(StoreConfig { url: Some(url.to_owned()), ..StoreConfig::default() })
            }
            fn visit_map<A: serde::de::MapAccess<'de>>(self, map: A) -> Result<StoreConfig, A::Error> {
                StoreConfig::deserialize(serde::de::value::MapAccessDeserializer::new(map))
            }
        }
        deserializer.deserialize_any(Either)
    }
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

/// The certificates in the PEM file `path` (at least one), or why not.
pub fn read_ca(path: &Path) -> Result<Vec<tokio_rustls::rustls::pki_types::CertificateDer<'static>>, String> {
    use tokio_rustls::rustls::pki_types::CertificateDer;
    use tokio_rustls::rustls::pki_types::pem::PemObject as _;
    if !path.is_file() {
        return Err(format!("no file {}: write the authority's certificate there (PEM)", path.display()));
    }
    let certs = CertificateDer::pem_file_iter(path)
        .and_then(|certs| certs.collect::<Result<Vec<_>, _>>())
        .map_err(|error| format!("cannot read {} as PEM certificates: {error}", path.display()))?;
    if certs.is_empty() {
        return Err(format!("{} holds no PEM certificate (`-----BEGIN CERTIFICATE-----`)", path.display()));
    }
    Ok(certs)
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
            log_format: halite_agent::logging::LogFormat::default(),
            enrolment: Enrolment::default(),
            exec_env: Vec::new(),
            enforce_on_reload: default_enforce_on_reload(),
            reload_rate: default_reload_rate(),
            schedule: Vec::new(),
            store: StoreConfig::default(),
            max_event_bytes: default_max_event_bytes(),
            handshakes_per_source: default_handshakes_per_source(),
            api: None,
            roles: std::collections::BTreeMap::new(),
            metrics: None,
            fetch: FetchConfig::default(),
            access: AccessConfig::default(),
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read {path}: {source}")]
    Read { path: PathBuf, source: std::io::Error },
    #[error("{0}")]
    Invalid(halite_state::Diagnostic),
    #[error("{path}: schedule: {problem}")]
    Schedule { path: PathBuf, problem: String },
    #[error(
        "{path}: auto_accept {globs:?} would accept any new agent by its id alone (whoever reaches the master first under a matching id gets that id's states and secrets); set `enrolment.token_file` (and `enrol_token_file` in agent.yaml), or write `enrolment: {{trust_id_alone: true}}` to accept that risk (README, \"Security model\")"
    )]
    AutoAcceptTrustsIds { path: PathBuf, globs: Vec<String> },
    #[error("{path}: roles: `{role}`: {problem}")]
    Role { path: PathBuf, role: String, problem: String },
    #[error("{path}: {field}: {problem}")]
    Field { path: PathBuf, field: &'static str, problem: String },
}

/// The default publisher's socket, in the data dir.
pub const PUBLISH_SOCKET: &str = "events.sock";

impl MasterConfig {
    /// What is wrong with `schedule:` or `reload_rate` beyond their syntax.
    fn schedule_problem(&self) -> Option<String> {
        if self.reload_rate == 0 {
            return Some("reload_rate must be at least 1 (agents a second); turn re-applying off with `enforce_on_reload: false`".into());
        }
        let mut names = std::collections::HashSet::new();
        for entry in &self.schedule {
            if !names.insert(entry.name.as_str()) {
                return Some(format!("two entries are named `{}`; give each its own name", entry.name));
            }
            if entry.every.is_zero() {
                return Some(format!("`{}`: every must be longer than 0 (write e.g. every: 30m)", entry.name));
            }
            if entry.splay > entry.every {
                return Some(format!(
                    "`{}`: splay ({:?}) is longer than every ({:?})",
                    entry.name, entry.splay, entry.every
                ));
            }
            if let Err(error) = halite_state::Target::parse(&entry.target) {
                return Some(format!("`{}`: target `{}`: {error}", entry.name, entry.target));
            }
        }
        None
    }

    /// What is wrong with `roles:`: the role and why.
    fn roles_problem(&self) -> Option<(String, String)> {
        for (name, role) in &self.roles {
            if name == "admin" {
                return Some((
                    name.clone(),
                    "`admin` is built in (every verb, every agent); name yours otherwise".into(),
                ));
            }
            if role.verbs.is_empty() {
                return Some((name.clone(), "no verbs (write e.g. verbs: [read, apply])".into()));
            }
            if let Err(error) = halite_state::Target::parse(&role.target) {
                return Some((name.clone(), format!("target `{}`: {error}", role.target)));
            }
        }
        None
    }

    /// What is wrong with `api.client_ca`, `api.client_certs` or
    /// `access.certificates`: the field and why. Reads the CA file, so a
    /// missing or unreadable one stops the master before it starts.
    fn client_cert_problem(&self) -> Option<(&'static str, String)> {
        let (client_ca, client_certs) =
            self.api.as_ref().map_or((None, ClientCerts::Optional), |api| (api.client_ca.as_ref(), api.client_certs));
        match client_ca {
            None if client_certs == ClientCerts::Required => {
                return Some((
                    "api.client_certs",
                    "`required` needs `api.client_ca` (the PEM file of the authority that signs client certificates)"
                        .into(),
                ));
            }
            None if !self.access.certificates.is_empty() => {
                return Some(("access.certificates", "no certificate can be presented without `api.client_ca` (the PEM file of the authority that signs them)".into()));
            }
            None => {}
            Some(file) => {
                if let Err(problem) = read_ca(file) {
                    return Some(("api.client_ca", problem));
                }
            }
        }
        for (name, role) in &self.access.certificates {
            if role != "admin" && !self.roles.contains_key(role) {
                let known = std::iter::once("admin")
                    .chain(self.roles.keys().map(String::as_str))
                    .collect::<Vec<_>>()
                    .join(", ");
                return Some((
                    "access.certificates",
                    format!("`{name}`: no role `{role}` (roles: {known}); define it under `roles:`"),
                ));
            }
        }
        None
    }

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
        config.enrolment.token_file = config.enrolment.token_file.map(|file| base.join(file));
        config.store.password_file = config.store.password_file.map(|file| base.join(file));
        config.store.ca_file = config.store.ca_file.map(|file| base.join(file));
        config.fetch.ca_file = config.fetch.ca_file.map(|file| base.join(file));
        if let Some(problem) = config.schedule_problem() {
            return Err(ConfigError::Schedule { path: path.to_path_buf(), problem });
        }
        if !config.auto_accept.is_empty() && config.enrolment.token_file.is_none() && !config.enrolment.trust_id_alone {
            return Err(ConfigError::AutoAcceptTrustsIds { path: path.to_path_buf(), globs: config.auto_accept });
        }
        if let Some((role, problem)) = config.roles_problem() {
            return Err(ConfigError::Role { path: path.to_path_buf(), role, problem });
        }
        if let Some(api) = &mut config.api {
            api.cert = api.cert.take().map(|file| base.join(file));
            api.key = api.key.take().map(|file| base.join(file));
            api.client_ca = api.client_ca.take().map(|file| base.join(file));
        }
        if let Some((field, problem)) = config.client_cert_problem() {
            return Err(ConfigError::Field { path: path.to_path_buf(), field, problem });
        }
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

    #[test]
    fn auto_accept_without_a_token_is_refused_unless_trusting_ids_is_written_down() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("master.yaml");
        std::fs::write(&path, "auto_accept: ['web*']\n").unwrap();
        let error = MasterConfig::load(&path).unwrap_err().to_string();
        assert!(error.contains("master.yaml") && error.contains("web*") && error.contains("trust_id_alone"), "{error}");
        std::fs::write(&path, "auto_accept: ['web*']\nenrolment:\n  trust_id_alone: true\n").unwrap();
        assert!(MasterConfig::load(&path).is_ok());
        std::fs::write(&path, "auto_accept: ['web*']\nenrolment:\n  token_file: enrol.token\n").unwrap();
        assert!(MasterConfig::load(&path).is_ok());
        std::fs::write(&path, "auto_accept: []\n").unwrap();
        assert!(MasterConfig::load(&path).is_ok());
    }

    #[test]
    fn schedule_entries_load_and_bad_ones_are_named() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("master.yaml");
        std::fs::write(
            &path,
            "schedule:\n  - name: highstate\n    every: 30m\n    splay: 5m\n  - name: motd\n    every: 1h\n    states: [motd]\n    target: 'web*'\n    test: true\n",
        )
        .unwrap();
        let config = MasterConfig::load(&path).unwrap();
        assert!(config.enforce_on_reload);
        assert_eq!(config.schedule.len(), 2);
        assert_eq!(config.schedule[0].every, Duration::from_secs(1800));
        assert_eq!((config.schedule[0].target.as_str(), config.schedule[0].test), ("*", false));
        assert_eq!(config.schedule[1].states, ["motd"]);
        for (text, wanted) in [
            ("schedule:\n  - name: a\n    every: 1m\n  - name: a\n    every: 2m\n", "two entries are named `a`"),
            ("schedule:\n  - name: a\n    every: 1m\n    splay: 2m\n", "splay"),
            ("schedule:\n  - name: a\n    every: 0s\n", "longer than 0"),
            ("schedule:\n  - name: a\n    every: 1m\n    target: 'a and'\n", "target"),
            ("schedule:\n  - name: a\n    every: often\n", "not a duration"),
            ("reload_rate: 0\n", "reload_rate"),
        ] {
            std::fs::write(&path, text).unwrap();
            let error = MasterConfig::load(&path).unwrap_err().to_string();
            assert!(error.contains(wanted), "{text}: {error}");
        }
    }

    /// Client-certificate settings load relative to the file; a missing or
    /// unreadable CA, `required` without a CA and a certificate mapped to
    /// an unknown role are named with master.yaml and the field.
    #[test]
    fn client_certificate_settings_are_checked_and_named() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("master.yaml");
        let ca = rcgen::generate_simple_self_signed(vec!["ca".to_owned()]).unwrap().cert.pem();
        std::fs::write(dir.path().join("ca.pem"), ca).unwrap();
        std::fs::write(dir.path().join("junk.pem"), "not a certificate\n").unwrap();
        let roles = "roles:\n  web-ops:\n    verbs: [apply]\n    target: 'web*'\n";
        let good = format!(
            "api:\n  listen: 127.0.0.1:0\n  client_ca: ca.pem\n  client_certs: required\n{roles}access:\n  certificates:\n    ops-laptop: web-ops\n"
        );
        std::fs::write(&path, &good).unwrap();
        let config = MasterConfig::load(&path).unwrap();
        let api = config.api.unwrap();
        assert_eq!((api.client_ca, api.client_certs), (Some(dir.path().join("ca.pem")), ClientCerts::Required));
        assert_eq!(config.access.certificates["ops-laptop"], "web-ops");
        for (text, field, wanted) in [
            (good.replace("client_ca: ca.pem", "client_ca: gone.pem"), "api.client_ca", "gone.pem"),
            (good.replace("client_ca: ca.pem", "client_ca: junk.pem"), "api.client_ca", "no PEM certificate"),
            (good.replace("  client_ca: ca.pem\n", ""), "api.client_certs", "api.client_ca"),
            (good.replace("ops-laptop: web-ops", "ops-laptop: db-ops"), "access.certificates", "no role `db-ops`"),
            (
                format!("{roles}access:\n  certificates:\n    ops-laptop: web-ops\n"),
                "access.certificates",
                "api.client_ca",
            ),
        ] {
            std::fs::write(&path, &text).unwrap();
            let error = MasterConfig::load(&path).unwrap_err().to_string();
            assert!(
                error.contains("master.yaml") && error.contains(field) && error.contains(wanted),
                "{text}: {error}"
            );
        }
    }

    #[test]
    fn store_retention_has_defaults_and_refuses_unknown_keys() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("master.yaml");
        std::fs::write(&path, "states: tree\n").unwrap();
        let default = StoreConfig::default();
        assert_eq!(
            MasterConfig::load(&path).unwrap().store,
            StoreConfig { retention_days: 90, max_bytes: 1 << 30, ..default.clone() }
        );
        std::fs::write(&path, "store:\n  retention_days: 7\n").unwrap();
        assert_eq!(
            MasterConfig::load(&path).unwrap().store,
            StoreConfig { retention_days: 7, max_bytes: 1 << 30, ..default.clone() }
        );
        std::fs::write(&path, "store: postgres://halite@127.0.0.1/halite?sslmode=disable\n").unwrap();
        assert_eq!(
            MasterConfig::load(&path).unwrap().store,
            StoreConfig { url: Some("postgres://halite@127.0.0.1/halite?sslmode=disable".into()), ..default.clone() }
        );
        std::fs::write(&path, "store:\n  url: postgres://h@db/h\n  password_file: pw\n").unwrap();
        let store = MasterConfig::load(&path).unwrap().store;
        assert_eq!(
            (store.url.as_deref(), store.password_file),
            (Some("postgres://h@db/h"), Some(dir.path().join("pw")))
        );
        std::fs::write(&path, "store:\n  retention: 7\n").unwrap();
        let error = MasterConfig::load(&path).unwrap_err().to_string();
        assert!(error.contains("retention"), "{error}");
    }
}

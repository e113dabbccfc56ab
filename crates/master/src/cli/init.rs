//! `halite-master init`: everything a new master needs (its configuration,
//! its key and a state tree), and the lines an agent needs to trust it.
//!
//! Safe to run again: an existing master.yaml, key or non-empty state tree is
//! kept, never overwritten, and the report says what was kept. The key is
//! made by the same code the daemon uses, so `init` then `run` (or `run`
//! alone) end with the same kind of key in the same place.

use std::io::Write;
use std::net::{IpAddr, UdpSocket};
use std::os::unix::fs::{DirBuilderExt, MetadataExt};
use std::path::{Path, PathBuf};

use crate::config::{DEFAULT_CONFIG, MasterConfig};

/// The agent link's port when `--listen` is not given (SPEC §4).
pub const DEFAULT_LISTEN: &str = "tcp://0.0.0.0:4510";

/// Where `init` puts things.
#[derive(Debug, Clone)]
pub struct Layout {
    /// master.yaml.
    pub config: PathBuf,
    /// What a new master.yaml says for `states`, as written into it (relative
    /// paths are relative to the file).
    pub states: PathBuf,
    /// What a new master.yaml says for `data_dir`, as written into it.
    pub data_dir: PathBuf,
    /// With `--dir`: an agent.yaml for an agent on this host, and the
    /// directory its files and data go under.
    pub agent: Option<(PathBuf, PathBuf)>,
}

impl Layout {
    /// The packaged layout: /etc/halite, /var/lib/halite/master, /srv/halite/states.
    pub fn system() -> Layout {
        let defaults = MasterConfig::default();
        Layout { config: DEFAULT_CONFIG.into(), states: defaults.states, data_dir: defaults.data_dir, agent: None }
    }

    /// Everything under one directory (`--dir`): DIR/master.yaml, DIR/states,
    /// DIR/data. The config names them relatively, so DIR can be moved.
    pub fn under(dir: &Path) -> Layout {
        // The agent's paths are written out in full: agent.yaml's are not
        // relative to the file.
        let absolute = std::path::absolute(dir).unwrap_or_else(|_| dir.to_path_buf());
        Layout {
            config: dir.join("master.yaml"),
            states: "states".into(),
            data_dir: "data".into(),
            agent: Some((dir.join("agent.yaml"), absolute.join("agent"))),
        }
    }
}

/// What `init` did, for the caller and the tests.
#[derive(Debug)]
pub struct Outcome {
    /// The configuration in effect (the one written or the one kept).
    pub config: MasterConfig,
    /// The master's public key, as agents pin it.
    pub fingerprint: halite_link::PublicKey,
    /// The lines to put in an agent's agent.yaml.
    pub agent_lines: String,
}

/// Writes what is missing of `layout` and reports every step on `out`.
/// `listen` is the agent link for a new master.yaml (default
/// [`DEFAULT_LISTEN`]); an existing file's `listen` wins.
pub fn run(layout: &Layout, listen: Option<&str>, out: &mut dyn Write) -> anyhow::Result<Outcome> {
    use anyhow::Context;

    let config_path = &layout.config;
    if config_path.exists() {
        writeln!(out, "kept {} (it exists; init never overwrites it)", config_path.display())?;
        if listen.is_some() {
            writeln!(out, "  note: --listen is ignored; edit `listen` in {} instead", config_path.display())?;
        }
    } else {
        if let Some(parent) = config_path.parent().filter(|p| !p.as_os_str().is_empty()) {
            std::fs::create_dir_all(parent).with_context(|| format!("cannot create {}", parent.display()))?;
        }
        let text = config_text(listen.unwrap_or(DEFAULT_LISTEN), &layout.states, &layout.data_dir);
        std::fs::write(config_path, text).with_context(|| format!("cannot write {}", config_path.display()))?;
        writeln!(out, "wrote {}", config_path.display())?;
    }
    let config = MasterConfig::load(config_path).with_context(|| {
        format!("cannot load {} (fix it, or move it away and run init again)", config_path.display())
    })?;

    let data_dir = &config.data_dir;
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(data_dir)
        .with_context(|| format!("cannot create the data dir {}", data_dir.display()))?;
    let key_path = data_dir.join("master.key");
    let (keypair, created) = halite_link::Keypair::load_or_create(&key_path)
        .with_context(|| format!("cannot make or read the master's key {}", key_path.display()))?;
    if created {
        give_to_data_dir_owner(&key_path, data_dir)?;
        writeln!(out, "made the master's key {}", key_path.display())?;
    } else {
        writeln!(out, "kept the master's key {}", key_path.display())?;
    }

    // The API's certificate, self-signed, for when `api:` is turned on
    // (a configured `cert`/`key` of the operator's own is left alone).
    let api = config.api.clone().unwrap_or(crate::config::ApiConfig {
        listen: String::new(),
        cert: None,
        key: None,
        client_ca: None,
        client_certs: crate::config::ClientCerts::Optional,
    });
    let (cert, key) = (api.cert_path(data_dir), api.key_path(data_dir));
    if api.cert.is_none() && api.key.is_none() {
        let names = crate::http::tls::names_for(&api.listen);
        if crate::http::tls::self_signed(&cert, &key, &names)? {
            give_to_data_dir_owner(&key, data_dir)?;
            give_to_data_dir_owner(&cert, data_dir)?;
            writeln!(out, "made a self-signed certificate for the API {} (for {})", cert.display(), names.join(", "))?;
        } else {
            writeln!(out, "kept the API's certificate {}", cert.display())?;
        }
    }

    let states = &config.states;
    if is_empty_or_missing(states)? {
        crate::example::write(states)
            .with_context(|| format!("cannot write the example state tree into {}", states.display()))?;
        writeln!(
            out,
            "wrote the example state tree to {} ({} files): it manages /etc/motd on every agent and \
             /etc/nginx/nginx.conf on agents named web*; edit it before accepting agents",
            states.display(),
            crate::example::FILES.len()
        )?;
    } else {
        writeln!(out, "kept the state tree in {} (not empty)", states.display())?;
    }

    let agent_lines =
        format!("master: {}\nmaster_key: \"{}\"\n", agent_endpoint(&config.listen, local_address()), keypair.public);
    writeln!(out)?;
    writeln!(out, "The master's key: {}", keypair.public)?;
    writeln!(out)?;
    writeln!(out, "Put these lines in each agent's /etc/halite/agent.yaml:")?;
    writeln!(out)?;
    for line in agent_lines.lines() {
        writeln!(out, "    {line}")?;
    }
    writeln!(out)?;
    let Some((agent_yaml, agent_dir)) = &layout.agent else {
        writeln!(out, "Check the tree with `halite-master check --states {}`,", states.display())?;
        writeln!(out, "then start the master: `halite-master run --config {}`", config_path.display())?;
        writeln!(out, "(with the package: `systemctl enable --now halite-master`).")?;
        return Ok(Outcome { config, fingerprint: keypair.public, agent_lines });
    };
    if agent_yaml.exists() {
        writeln!(out, "kept {} (it exists; init never overwrites it)", agent_yaml.display())?;
    } else {
        let text = agent_text(&config.listen, &keypair.public, agent_dir);
        std::fs::write(agent_yaml, text).with_context(|| format!("cannot write {}", agent_yaml.display()))?;
        writeln!(
            out,
            "wrote {}: an agent `{TRY_AGENT}` on this host, its files under {}",
            agent_yaml.display(),
            agent_dir.join("root").display()
        )?;
    }
    writeln!(out)?;
    writeln!(out, "Try it on this host, each in its own terminal (or with `&`):")?;
    writeln!(out)?;
    write!(out, "{}", try_commands(config_path, agent_yaml, TRY_AGENT))?;
    Ok(Outcome { config, fingerprint: keypair.public, agent_lines })
}

/// The agent `init --dir` sets up: named web01 so that the example tree
/// gives it both of its states.
pub const TRY_AGENT: &str = "web01";

/// The agent.yaml `init --dir` writes: pinned to this master on loopback,
/// everything it manages under `<agent_dir>/root`.
fn agent_text(listen: &str, key: &halite_link::PublicKey, agent_dir: &Path) -> String {
    format!(
        "# An agent on this host, to try halite (written by `halite-master init --dir`).\n\
         # Every path the states name is under `root`, so nothing outside it is touched.\n\
         id: {TRY_AGENT}\n\
         master: {master}\n\
         master_key: \"{key}\"\n\
         data_dir: {data}\n\
         root: {root}\n",
        master = agent_endpoint(listen, Some(IpAddr::from([127, 0, 0, 1]))),
        data = agent_dir.join("data").display(),
        root = agent_dir.join("root").display(),
    )
}

/// Copy-paste commands for a master and one agent on this host: start
/// both, accept the agent, then look around. `init --dir` and `demo --keep`
/// print them.
pub fn try_commands(master_yaml: &Path, agent_yaml: &Path, agent: &str) -> String {
    let config = quote(master_yaml);
    let mut text = String::new();
    for line in [
        format!("halite-master run --config {config}"),
        format!("halite-agent run --config {}", quote(agent_yaml)),
        format!("halite-master keys accept {agent} --config {config}"),
    ] {
        text.push_str(&format!("    {line}\n"));
    }
    text.push_str(&look_commands(master_yaml));
    text
}

/// The commands that look at a running master: its agents, its events,
/// its jobs, and what a highstate would change.
pub fn look_commands(master_yaml: &Path) -> String {
    let config = quote(master_yaml);
    ["agents", "events", "jobs", "apply '*' --test"]
        .iter()
        .map(|command| format!("    halite-master {command} --config {config}\n"))
        .collect()
}

/// A path as a shell reads it back.
fn quote(path: &Path) -> String {
    let text = path.to_string_lossy();
    shlex::try_quote(&text).map_or_else(|_| text.to_string(), |q| q.into_owned())
}

/// A commented master.yaml with every key of SPEC §4.
fn config_text(listen: &str, states: &Path, data_dir: &Path) -> String {
    format!(
        "# The halite master's configuration (written by `halite-master init`).\n\
         # Relative paths are relative to this file.\n\
         listen: {listen}  # the agent link; agents' `master` points here\n\
         # publish: tcp://127.0.0.1:4511  # outside event publisher (ZeroMQ PUB, [tag, json]); by default\n\
         #   ipc://<data_dir>/events.sock, for the master's user only (TCP has no authentication)\n\
         states: {states}  # the state tree\n\
         data_dir: {data_dir}  # keys, control socket, endpoints\n\
         auto_accept: []  # agent-id globs accepted without an operator\n\
         # api:  # the HTTPS API and dashboard, off unless set (README, \"HTTP API\")\n\
         #   listen: 127.0.0.1:8443\n\
         #   cert: /path/cert.pem  # default <data_dir>/api.crt, self-signed by init\n\
         #   key: /path/key.pem    # default <data_dir>/api.key\n\
         # roles:  # for API tokens; `admin` is built in\n\
         #   web-ops: {{verbs: [read, apply], target: 'web*'}}\n",
        states = states.display(),
        data_dir = data_dir.display(),
    )
}

/// When root runs `init` for a master that runs as its own user (the
/// package's `halite`), the key must belong to that user or the daemon
/// cannot read it. The data dir's owner says who that is.
fn give_to_data_dir_owner(key: &Path, data_dir: &Path) -> anyhow::Result<()> {
    use anyhow::Context;
    let dir = std::fs::metadata(data_dir).with_context(|| format!("cannot read {}", data_dir.display()))?;
    let file = std::fs::metadata(key).with_context(|| format!("cannot read {}", key.display()))?;
    if (dir.uid(), dir.gid()) != (file.uid(), file.gid()) {
        std::os::unix::fs::chown(key, Some(dir.uid()), Some(dir.gid())).with_context(|| {
            format!(
                "cannot give {} to the owner of {} (uid {}); run init as root or as that user",
                key.display(),
                data_dir.display(),
                dir.uid()
            )
        })?;
    }
    Ok(())
}

fn is_empty_or_missing(dir: &Path) -> anyhow::Result<bool> {
    use anyhow::Context;
    match std::fs::read_dir(dir) {
        Ok(mut entries) => Ok(entries.next().is_none()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(true),
        Err(e) => Err(e).with_context(|| format!("cannot read the state tree {}", dir.display())),
    }
}

/// The address other hosts most likely reach this one by: the source address
/// of the default route. Connecting a UDP socket sends nothing.
fn local_address() -> Option<IpAddr> {
    let socket = UdpSocket::bind("0.0.0.0:0").ok()?;
    // TEST-NET-1 (RFC 5737): routed like any outside address, never used.
    socket.connect("192.0.2.1:9").ok()?;
    Some(socket.local_addr().ok()?.ip()).filter(|ip| !ip.is_unspecified())
}

/// The endpoint an agent should dial: the listen endpoint, with a wildcard
/// host replaced by this host's address (or name).
fn agent_endpoint(listen: &str, local: Option<IpAddr>) -> String {
    let Some((host, port)) = listen.strip_prefix("tcp://").and_then(|rest| rest.rsplit_once(':')) else {
        return listen.to_owned();
    };
    let host = if matches!(host, "0.0.0.0" | "*" | "[::]") {
        local.map(|ip| ip.to_string()).unwrap_or_else(halite_state::host::hostname)
    } else {
        host.to_owned()
    };
    format!("tcp://{host}:{port}")
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::PermissionsExt;

    use super::*;

    fn init(dir: &Path, listen: Option<&str>) -> (Outcome, String) {
        let mut out = Vec::new();
        let outcome = run(&Layout::under(dir), listen, &mut out).unwrap();
        (outcome, String::from_utf8(out).unwrap())
    }

    #[test]
    fn makes_a_master_that_loads_and_lines_an_agent_accepts() {
        let dir = tempfile::tempdir().unwrap();
        let (outcome, report) = init(dir.path(), Some("tcp://127.0.0.1:4599"));
        assert!(report.contains("wrote ") && report.contains("made the master's key"), "{report}");

        let config = MasterConfig::load(&dir.path().join("master.yaml")).unwrap();
        assert_eq!(config.listen, "tcp://127.0.0.1:4599");
        assert_eq!(config.data_dir, dir.path().join("data"));
        let key = dir.path().join("data/master.key");
        assert_eq!(std::fs::metadata(&key).unwrap().permissions().mode() & 0o777, 0o600);
        assert_eq!(halite_link::Keypair::load(&key).unwrap().public, outcome.fingerprint);
        let (_, diagnostics) = crate::tree::Tree::load(&config.states);
        assert!(diagnostics.is_empty(), "{diagnostics:#?}");

        // The printed lines, as an operator pastes them, make a valid agent
        // config pinned to this master.
        assert!(report.contains(&format!("    master_key: \"{}\"", outcome.fingerprint)), "{report}");
        let agent_yaml = dir.path().join("agent.yaml");
        std::fs::write(&agent_yaml, format!("id: web01\n{}", outcome.agent_lines)).unwrap();
        let agent = halite_agent::config::AgentConfig::load(&agent_yaml).unwrap();
        assert_eq!(agent.master, "tcp://127.0.0.1:4599");
        assert_eq!(agent.master_key.as_deref(), Some(outcome.fingerprint.to_string().as_str()));
    }

    #[test]
    fn with_a_dir_an_agent_yaml_is_ready_and_the_next_commands_are_printed() {
        let dir = tempfile::tempdir().unwrap();
        let (outcome, report) = init(dir.path(), Some("tcp://0.0.0.0:4599"));
        let agent = halite_agent::config::AgentConfig::load(&dir.path().join("agent.yaml")).unwrap();
        assert_eq!(agent.master, "tcp://127.0.0.1:4599");
        assert_eq!(agent.master_key.as_deref(), Some(outcome.fingerprint.to_string().as_str()));
        assert_eq!(agent.root, std::path::absolute(dir.path()).unwrap().join("agent/root"));
        assert_eq!(agent.agent_id(), TRY_AGENT);
        let config = dir.path().join("master.yaml");
        for command in ["agents", "events", "jobs", "apply '*' --test"] {
            let line = format!("    halite-master {command} --config {}\n", config.display());
            assert!(report.contains(&line), "{line} in {report}");
        }
        assert!(report.contains(&format!("halite-agent run --config {}", dir.path().join("agent.yaml").display())));
        let (_, again) = init(dir.path(), None);
        assert!(again.contains(&format!("kept {}", dir.path().join("agent.yaml").display())), "{again}");
    }

    #[test]
    fn a_second_run_keeps_everything() {
        let dir = tempfile::tempdir().unwrap();
        let (first, _) = init(dir.path(), None);
        std::fs::write(dir.path().join("states/motd.yaml"), "# mine\n").unwrap();
        let config_before = std::fs::read_to_string(dir.path().join("master.yaml")).unwrap();

        let (second, report) = init(dir.path(), Some("tcp://127.0.0.1:1"));
        assert_eq!(first.fingerprint, second.fingerprint);
        assert!(report.contains("kept ") && report.contains("--listen is ignored"), "{report}");
        assert!(report.contains("kept the master's key") && report.contains("kept the state tree"), "{report}");
        assert_eq!(std::fs::read_to_string(dir.path().join("master.yaml")).unwrap(), config_before);
        assert_eq!(std::fs::read_to_string(dir.path().join("states/motd.yaml")).unwrap(), "# mine\n");
    }

    #[test]
    fn a_broken_existing_config_is_named_not_replaced() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("master.yaml"), "lisen: tcp://0.0.0.0:4510\n").unwrap();
        let error = run(&Layout::under(dir.path()), None, &mut Vec::new()).unwrap_err();
        let text = format!("{error:#}");
        assert!(text.contains("master.yaml") && text.contains("lisen"), "{text}");
    }

    /// The packages' default configs (packaging/) must load: the master's as
    /// exactly the built-in defaults, the agent's as a template that names
    /// the one thing missing, the master's key.
    #[test]
    fn the_packaged_configs_are_the_defaults() {
        let packaging = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../packaging");
        let master = MasterConfig::load(&packaging.join("master/master.yaml")).unwrap();
        let defaults = MasterConfig::default();
        assert_eq!(
            (master.listen, master.publish, master.states, master.data_dir, master.auto_accept),
            (defaults.listen, defaults.publish, defaults.states, defaults.data_dir, defaults.auto_accept)
        );

        let agent = packaging.join("agent/agent.yaml");
        let error = halite_agent::config::AgentConfig::load(&agent).unwrap_err();
        assert!(matches!(error, halite_agent::config::ConfigError::NoTrust { .. }), "{error}");
        let text = std::fs::read_to_string(&agent).unwrap();
        let uncommented: String = text
            .lines()
            .map(|line| line.strip_prefix("# ").filter(|l| l.starts_with("master")).unwrap_or(line))
            .collect::<Vec<_>>()
            .join("\n");
        let key = "0".repeat(64);
        let filled = dir_with("agent.yaml", &uncommented.replace("<64 hex digits>", &key));
        let config = halite_agent::config::AgentConfig::load(&filled.path().join("agent.yaml")).unwrap();
        assert_eq!(config.master_key, Some(key));
        assert_eq!(config.data_dir, Path::new(halite_agent::config::DEFAULT_DATA_DIR));
    }

    fn dir_with(name: &str, text: &str) -> tempfile::TempDir {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join(name), text).unwrap();
        dir
    }

    #[test]
    fn agents_dial_a_real_address_not_a_wildcard() {
        let ip: IpAddr = "10.1.2.3".parse().unwrap();
        let table = [
            ("tcp://0.0.0.0:4510", Some(ip), "tcp://10.1.2.3:4510"),
            ("tcp://*:4510", Some(ip), "tcp://10.1.2.3:4510"),
            ("tcp://192.168.7.1:4510", Some(ip), "tcp://192.168.7.1:4510"),
            ("tcp://127.0.0.1:0", None, "tcp://127.0.0.1:0"),
        ];
        for (listen, local, expected) in table {
            assert_eq!(agent_endpoint(listen, local), expected, "{listen}");
        }
        let by_name = agent_endpoint("tcp://0.0.0.0:4510", None);
        assert_eq!(by_name, format!("tcp://{}:4510", halite_state::host::hostname()));
    }
}

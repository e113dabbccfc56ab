//! Salt's grains, computed from an agent's facts: the names and values a
//! Salt tree reads (`grains['os_family']`, `G@os:Debian`), so Salt files
//! work unchanged while the agent sends halite's own facts.
//!
//! | grain | from the fact | as Salt gives it |
//! |---|---|---|
//! | `id` | `id` | the agent id |
//! | `os`, `os_family` | `os` (os-release `ID`) | `Debian`/`Debian`, `Ubuntu`/`Debian`, `CentOS`/`RedHat`, … |
//! | `oscodename` | `os_release.version_codename` | `bookworm` |
//! | `osrelease`, `osmajorrelease` | `os_version` | `12`, `12` (an integer) |
//! | `kernel`, `kernelrelease` | `kernel` | `Linux`, `6.1.0-18-amd64` |
//! | `fqdn`, `host`, `nodename`, `localhost` | `fqdn`, `hostname` | `web1.example.com`, `web1` |
//! | `ipv4`, `ipv6` | `ips` | every address with loopback, sorted |
//! | `ip_interfaces` | `ip_interfaces` | `{eth0: [10.0.0.5, …], lo: [127.0.0.1, ::1]}` |
//! | `num_cpus`, `mem_total` | `cpus`, `memory_bytes` | an integer; MiB |
//! | `cpuarch`, `virtual`, `init` | `arch`, `virtual`, `init` | `x86_64`, `physical`/`kvm`/`container`, `systemd` |
//!
//! Every other fact is a grain under its own name too (`grains.cpus`),
//! so `grains` is the facts with Salt's names laid over them; and an
//! agent's static grains (agent.yaml `grains:`, sent as the fact
//! `grains`) over those, as a minion's configured grains are in Salt.

use halite_proto::Value;

/// The grains computed from facts (the rest are the facts themselves).
pub const NAMES: &[&str] = &[
    "id",
    "os",
    "os_family",
    "oscodename",
    "osrelease",
    "osmajorrelease",
    "osfinger",
    "kernel",
    "kernelrelease",
    "fqdn",
    "host",
    "nodename",
    "localhost",
    "ipv4",
    "ipv6",
    "ip_interfaces",
    "num_cpus",
    "mem_total",
    "cpuarch",
    "virtual",
    "init",
];

/// os-release `ID` → Salt's `os` and `os_family`.
const OS: &[(&str, &str, &str)] = &[
    ("debian", "Debian", "Debian"),
    ("ubuntu", "Ubuntu", "Debian"),
    ("raspbian", "Raspbian", "Debian"),
    ("linuxmint", "Mint", "Debian"),
    ("devuan", "Devuan", "Debian"),
    ("rhel", "RedHat", "RedHat"),
    ("centos", "CentOS", "RedHat"),
    ("fedora", "Fedora", "RedHat"),
    ("rocky", "Rocky", "RedHat"),
    ("almalinux", "AlmaLinux", "RedHat"),
    ("amzn", "Amazon", "RedHat"),
    ("ol", "OEL", "RedHat"),
    ("arch", "Arch", "Arch"),
    ("manjaro", "Manjaro", "Arch"),
    ("alpine", "Alpine", "Alpine"),
    ("gentoo", "Gentoo", "Gentoo"),
    ("sles", "SUSE", "Suse"),
    ("opensuse-leap", "Leap", "Suse"),
    ("opensuse-tumbleweed", "openSUSE Tumbleweed", "Suse"),
    ("freebsd", "FreeBSD", "FreeBSD"),
];

fn str_fact<'a>(facts: &'a Value, key: &str) -> Option<&'a str> {
    facts.get(key).and_then(Value::as_str)
}

fn os_names(facts: &Value) -> Option<(String, String)> {
    let id = str_fact(facts, "os")?;
    Some(match OS.iter().find(|(known, _, _)| known.eq_ignore_ascii_case(id)) {
        Some((_, os, family)) => ((*os).to_owned(), (*family).to_owned()),
        None => {
            // Salt capitalises what it does not know.
            let mut chars = id.chars();
            let os: String = chars.next().map(|c| c.to_uppercase().chain(chars).collect()).unwrap_or_default();
            (os.clone(), os)
        }
    })
}

fn hostname(facts: &Value) -> Option<&str> {
    str_fact(facts, "hostname")
}

fn addresses(facts: &Value, v6: bool) -> Value {
    let mut out: Vec<String> = match facts.get("ips") {
        Some(Value::List(items)) => {
            items.iter().filter_map(Value::as_str).filter(|ip| ip.contains(':') == v6).map(str::to_owned).collect()
        }
        _ => Vec::new(),
    };
    out.push(if v6 { "::1" } else { "127.0.0.1" }.to_owned());
    out.sort();
    out.dedup();
    Value::List(out.into_iter().map(Value::String).collect())
}

/// One grain of Salt's from the facts, `None` when the facts do not give it
/// (or `name` is not one of [`NAMES`]).
pub fn grain(facts: &Value, name: &str) -> Option<Value> {
    let int = |key: &str| match facts.get(key) {
        Some(Value::Int(n)) => Some(*n),
        _ => None,
    };
    match name {
        "id" => str_fact(facts, "id").map(Value::from),
        "os" => os_names(facts).map(|(os, _)| Value::String(os)),
        "os_family" => os_names(facts).map(|(_, family)| Value::String(family)),
        "oscodename" => facts
            .get("os_release")
            .and_then(|r| r.get("version_codename").or_else(|| r.get("ubuntu_codename")))
            .and_then(Value::as_str)
            .map(Value::from),
        "osrelease" => str_fact(facts, "os_version").map(Value::from),
        "osmajorrelease" => str_fact(facts, "os_version")
            .and_then(|v| v.split('.').next())
            .and_then(|major| major.parse::<i64>().ok())
            .map(Value::Int),
        "osfinger" => {
            let (os, _) = os_names(facts)?;
            let release = str_fact(facts, "os_version")?;
            // Salt: the full release for Ubuntu, the major one elsewhere.
            let shown = if os == "Ubuntu" { release } else { release.split('.').next().unwrap_or(release) };
            Some(Value::String(format!("{os}-{shown}")))
        }
        "kernel" => Some(Value::from("Linux")),
        "kernelrelease" => str_fact(facts, "kernel").map(Value::from),
        "fqdn" => str_fact(facts, "fqdn").or_else(|| hostname(facts)).map(Value::from),
        "host" => hostname(facts).map(|h| Value::from(h.split('.').next().unwrap_or(h))),
        "nodename" | "localhost" => hostname(facts).map(Value::from),
        "ipv4" => Some(addresses(facts, false)),
        "ipv6" => Some(addresses(facts, true)),
        "ip_interfaces" => Some(facts.get("ip_interfaces").cloned().unwrap_or_else(Value::map)),
        "num_cpus" => int("cpus").map(Value::Int),
        "mem_total" => int("memory_bytes").map(|bytes| Value::Int(bytes / (1024 * 1024))),
        "cpuarch" => str_fact(facts, "arch").map(Value::from),
        "virtual" => str_fact(facts, "virtual").map(Value::from),
        "init" => str_fact(facts, "init").map(Value::from),
        _ => None,
    }
}

/// A static grain (agent.yaml's `grains:`, sent as the fact `grains`),
/// else a computed grain, else the fact of that name: what `G@` looks up.
pub fn lookup(facts: &Value, name: &str) -> Option<Value> {
    facts
        .get("grains")
        .and_then(|g| g.get(name))
        .cloned()
        .or_else(|| grain(facts, name))
        .or_else(|| facts.get(name).cloned())
}

/// Every grain: the facts, with Salt's grains laid over them.
pub fn all(facts: &Value) -> serde_json::Value {
    let mut out = match facts.to_json() {
        serde_json::Value::Object(map) => map,
        _ => serde_json::Map::new(),
    };
    for name in NAMES {
        if let Some(value) = grain(facts, name) {
            out.insert((*name).to_owned(), value.to_json());
        }
    }
    if let Some(serde_json::Value::Object(fixed)) = facts.get("grains").map(Value::to_json) {
        out.remove("grains");
        out.extend(fixed);
    }
    serde_json::Value::Object(out)
}

/// The grains a template sees for `agent`: [`all`], with `id` the agent's.
pub fn for_agent(agent: &str, facts: &Value) -> serde_json::Value {
    let mut grains = all(facts);
    if let Some(map) = grains.as_object_mut() {
        map.insert("id".to_owned(), serde_json::Value::String(agent.to_owned()));
    }
    grains
}

#[cfg(test)]
mod tests {
    use super::*;

    fn debian() -> Value {
        Value::map()
            .with("id", "web1")
            .with("hostname", "web1")
            .with("fqdn", "web1.example.com")
            .with("os", "debian")
            .with("os_version", "12")
            .with("os_release", Value::map().with("version_codename", "bookworm"))
            .with("kernel", "6.1.0-18-amd64")
            .with("cpus", 4i64)
            .with("memory_bytes", 8_i64 * 1024 * 1024 * 1024)
            .with("ips", Value::List(vec!["10.0.0.5".into(), "fe80::1".into()]))
            .with("ip_interfaces", Value::map().with("eth0", Value::List(vec!["10.0.0.5".into()])))
            .with("arch", "x86_64")
            .with("virtual", "kvm")
            .with("init", "systemd")
    }

    #[test]
    fn grains_have_salts_names_and_values() {
        let facts = debian();
        let cases: &[(&str, serde_json::Value)] = &[
            ("id", "web1".into()),
            ("os", "Debian".into()),
            ("os_family", "Debian".into()),
            ("oscodename", "bookworm".into()),
            ("osrelease", "12".into()),
            ("osmajorrelease", 12.into()),
            ("osfinger", "Debian-12".into()),
            ("kernel", "Linux".into()),
            ("kernelrelease", "6.1.0-18-amd64".into()),
            ("fqdn", "web1.example.com".into()),
            ("host", "web1".into()),
            ("ipv4", serde_json::json!(["10.0.0.5", "127.0.0.1"])),
            ("ipv6", serde_json::json!(["::1", "fe80::1"])),
            ("ip_interfaces", serde_json::json!({"eth0": ["10.0.0.5"]})),
            ("num_cpus", 4.into()),
            ("mem_total", 8192.into()),
            ("cpuarch", "x86_64".into()),
            ("virtual", "kvm".into()),
            ("init", "systemd".into()),
        ];
        for (name, expected) in cases {
            assert_eq!(grain(&facts, name).map(|v| v.to_json()).as_ref(), Some(expected), "{name}");
            assert!(NAMES.contains(name), "{name}");
        }
        let all = all(&facts);
        assert_eq!(all["os"], "Debian");
        assert_eq!(all["cpus"], 4, "facts stay under their own names");
    }

    #[test]
    fn families_follow_salt() {
        let cases = [
            ("ubuntu", "22.04", "Ubuntu", "Debian", "Ubuntu-22.04"),
            ("rocky", "9.3", "Rocky", "RedHat", "Rocky-9"),
            ("centos", "7", "CentOS", "RedHat", "CentOS-7"),
            ("alpine", "3.19.1", "Alpine", "Alpine", "Alpine-3"),
            ("nixos", "24.05", "Nixos", "Nixos", "Nixos-24"),
        ];
        for (id, version, os, family, finger) in cases {
            let facts = Value::map().with("os", id).with("os_version", version);
            assert_eq!(grain(&facts, "os"), Some(Value::from(os)), "{id}");
            assert_eq!(grain(&facts, "os_family"), Some(Value::from(family)), "{id}");
            assert_eq!(grain(&facts, "osfinger"), Some(Value::from(finger)), "{id}");
        }
        assert_eq!(grain(&Value::Null, "os"), None);
        assert_eq!(lookup(&debian(), "cpus"), Some(Value::Int(4)));
        let fixed = debian().with("grains", Value::map().with("role", "web").with("os", "Custom"));
        assert_eq!(lookup(&fixed, "role"), Some(Value::from("web")));
        assert_eq!(lookup(&fixed, "os"), Some(Value::from("Custom")));
        assert_eq!(all(&fixed)["role"], "web");
        assert!(all(&fixed).get("grains").is_none());
    }
}

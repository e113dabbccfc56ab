//! Facts about this host, sent in the hello for targeting (`G@os:debian`)
//! and templates (`{{ facts.memory_bytes }}`): id, hostname, os,
//! os_version, os_release (every /etc/os-release field, lower-cased keys),
//! kernel, cpus, memory_bytes, ips.

use halite_proto::Value;

pub use halite_state::host::hostname;

/// `/etc/os-release` as `KEY=value` lines, quotes removed.
fn os_release(text: &str) -> Vec<(String, String)> {
    text.lines()
        .filter_map(|line| line.split_once('='))
        .filter(|(key, _)| !key.trim().is_empty() && !key.starts_with('#'))
        .map(|(key, value)| (key.trim().to_owned(), value.trim().trim_matches('"').trim_matches('\'').to_owned()))
        .collect()
}

/// `MemTotal` from /proc/meminfo, in bytes.
fn memory_bytes(meminfo: &str) -> Option<i64> {
    let line = meminfo.lines().find(|l| l.starts_with("MemTotal:"))?;
    let kib: i64 = line.split_whitespace().nth(1)?.parse().ok()?;
    kib.checked_mul(1024)
}

/// The host's addresses, loopback excluded, IPv4 first.
fn ips() -> Vec<String> {
    let Ok(addresses) = nix::ifaddrs::getifaddrs() else { return Vec::new() };
    let mut v4 = Vec::new();
    let mut v6 = Vec::new();
    for interface in addresses {
        let Some(address) = interface.address else { continue };
        if let Some(ip) = address.as_sockaddr_in().map(|a| std::net::IpAddr::V4(a.ip())) {
            if !ip.is_loopback() {
                v4.push(ip.to_string());
            }
        } else if let Some(ip) = address.as_sockaddr_in6().map(|a| std::net::IpAddr::V6(a.ip()))
            && !ip.is_loopback()
        {
            v6.push(ip.to_string());
        }
    }
    v4.dedup();
    v6.dedup();
    v4.into_iter().chain(v6).collect()
}

/// Gathers the facts. Cheap: a few small reads from /proc and /etc.
pub fn gather(agent: &str) -> Value {
    let release = os_release(&std::fs::read_to_string("/etc/os-release").unwrap_or_default());
    let field = |key: &str| release.iter().find(|(k, _)| k == key).map(|(_, v)| v.clone());
    let release_map = release.iter().fold(Value::map(), |map, (k, v)| map.with(&k.to_lowercase(), v.as_str()));
    Value::map()
        .with("id", agent)
        .with("hostname", hostname())
        .with("os", field("ID").unwrap_or_else(|| std::env::consts::OS.to_owned()))
        .with("os_version", field("VERSION_ID"))
        .with("os_release", release_map)
        .with("kernel", std::fs::read_to_string("/proc/sys/kernel/osrelease").map(|k| k.trim().to_owned()).ok())
        .with("cpus", std::thread::available_parallelism().map_or(1, |n| i64::try_from(n.get()).unwrap_or(1)))
        .with("memory_bytes", std::fs::read_to_string("/proc/meminfo").ok().as_deref().and_then(memory_bytes))
        .with("ips", Value::List(ips().into_iter().map(Value::String).collect()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_os_release_and_meminfo() {
        let release = os_release("NAME=\"Debian GNU/Linux\"\nID=debian\nVERSION_ID=\"12\"\n# comment\n\n");
        assert_eq!(release[1], ("ID".into(), "debian".into()));
        assert_eq!(release[2], ("VERSION_ID".into(), "12".into()));
        assert_eq!(memory_bytes("MemTotal:       16318412 kB\nMemFree: 1 kB\n"), Some(16_318_412 * 1024));
        assert_eq!(memory_bytes("nothing"), None);
    }

    #[test]
    fn gathers_every_documented_fact() {
        let facts = gather("a1");
        for key in ["id", "hostname", "os", "os_version", "os_release", "kernel", "cpus", "memory_bytes", "ips"] {
            assert!(facts.get(key).is_some(), "fact `{key}` missing: {facts:?}");
        }
        assert_eq!(facts.get("id"), Some(&Value::from("a1")));
        assert!(matches!(facts.get("cpus"), Some(Value::Int(n)) if *n >= 1));
        assert!(matches!(facts.get("ips"), Some(Value::List(_))));
    }
}

//! Facts about this host, sent in the hello for targeting (`G@os:debian`)
//! and templates (`{{ facts.memory_bytes }}`): id, hostname, os,
//! os_version, os_release (every /etc/os-release field, lower-cased keys),
//! kernel, cpus, memory_bytes, ips; and for Salt's grains (the master
//! computes them, halite_state's `salt/grains.rs`): fqdn, arch, virtual,
//! init, ip_interfaces.

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

/// Every interface's addresses, loopback included (Salt's `ip_interfaces`).
fn ip_interfaces() -> Value {
    let Ok(addresses) = nix::ifaddrs::getifaddrs() else { return Value::map() };
    let mut by_name: Vec<(String, Vec<String>)> = Vec::new();
    for interface in addresses {
        let ip = interface.address.as_ref().and_then(|a| {
            a.as_sockaddr_in().map(|a| a.ip().to_string()).or_else(|| a.as_sockaddr_in6().map(|a| a.ip().to_string()))
        });
        let at = match by_name.iter().position(|(name, _)| *name == interface.interface_name) {
            Some(at) => at,
            None => {
                by_name.push((interface.interface_name.clone(), Vec::new()));
                by_name.len() - 1
            }
        };
        if let Some(ip) = ip
            && !by_name[at].1.contains(&ip)
        {
            by_name[at].1.push(ip);
        }
    }
    by_name.into_iter().fold(Value::map(), |map, (name, ips)| {
        map.with(&name, Value::List(ips.into_iter().map(Value::String).collect()))
    })
}

/// The host's fully qualified name: its hostname when dotted, else the
/// dotted canonical name /etc/hosts gives it (Python's `getfqdn` without
/// DNS), else the hostname.
fn fqdn(hostname: &str, hosts: &str) -> String {
    if hostname.contains('.') {
        return hostname.to_owned();
    }
    hosts
        .lines()
        .map(|line| line.split('#').next().unwrap_or_default())
        .filter_map(|line| {
            let names: Vec<&str> = line.split_whitespace().skip(1).collect();
            let canonical = names.first()?;
            (names.contains(&hostname) && canonical.starts_with(&format!("{hostname}.")))
                .then(|| (*canonical).to_owned())
        })
        .next()
        .unwrap_or_else(|| hostname.to_owned())
}

/// Salt's `virtual`: `container`, a hypervisor from the DMI vendor and
/// product, or `physical`.
fn virtual_kind(container: bool, dmi: &str) -> &'static str {
    if container {
        return "container";
    }
    let dmi = dmi.to_lowercase();
    [
        ("qemu", "kvm"),
        ("kvm", "kvm"),
        ("vmware", "VMware"),
        ("virtualbox", "VirtualBox"),
        ("xen", "xen"),
        ("amazon ec2", "kvm"),
    ]
    .iter()
    .find(|(needle, _)| dmi.contains(needle))
    .map_or("physical", |(_, kind)| kind)
}

/// Salt's `init`: `systemd` when it runs, else the name of process 1.
fn init_system() -> String {
    if std::path::Path::new("/run/systemd/system").is_dir() {
        return "systemd".to_owned();
    }
    std::fs::read_to_string("/proc/1/comm").map(|c| c.trim().to_owned()).unwrap_or_else(|_| "unknown".to_owned())
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
        .with("fqdn", fqdn(&hostname(), &std::fs::read_to_string("/etc/hosts").unwrap_or_default()))
        .with("arch", std::env::consts::ARCH)
        .with("virtual", {
            let container = ["/.dockerenv", "/run/.containerenv"].iter().any(|p| std::path::Path::new(p).exists());
            let dmi = ["sys_vendor", "product_name"]
                .iter()
                .filter_map(|f| std::fs::read_to_string(format!("/sys/class/dmi/id/{f}")).ok())
                .collect::<Vec<_>>()
                .join(" ");
            virtual_kind(container, &dmi)
        })
        .with("init", init_system())
        .with("ip_interfaces", ip_interfaces())
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
        for key in [
            "id",
            "hostname",
            "os",
            "os_version",
            "os_release",
            "kernel",
            "cpus",
            "memory_bytes",
            "ips",
            "fqdn",
            "arch",
            "virtual",
            "init",
            "ip_interfaces",
        ] {
            assert!(facts.get(key).is_some(), "fact `{key}` missing: {facts:?}");
        }
        assert_eq!(facts.get("id"), Some(&Value::from("a1")));
        assert!(matches!(facts.get("cpus"), Some(Value::Int(n)) if *n >= 1));
        assert!(matches!(facts.get("ips"), Some(Value::List(_))));
        let lo = facts.get("ip_interfaces").and_then(|i| i.get("lo"));
        assert!(matches!(lo, Some(Value::List(ips)) if ips.contains(&Value::from("127.0.0.1"))), "{facts:?}");
    }

    #[test]
    fn fqdn_and_virtual_follow_salt() {
        let hosts = "127.0.0.1 localhost\n127.0.1.1 web1.example.com web1 # here\n";
        assert_eq!(fqdn("web1", hosts), "web1.example.com");
        assert_eq!(fqdn("web2", hosts), "web2");
        assert_eq!(fqdn("a.b", ""), "a.b");
        let cases = [
            (true, "QEMU", "container"),
            (false, "QEMU Standard PC", "kvm"),
            (false, "VMware, Inc.", "VMware"),
            (false, "Dell Inc.", "physical"),
        ];
        for (container, dmi, expected) in cases {
            assert_eq!(virtual_kind(container, dmi), expected, "{dmi}");
        }
    }
}

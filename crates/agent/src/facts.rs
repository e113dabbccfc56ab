//! Facts about this host, sent in the hello for targeting and templates.

use halite_proto::Value;

pub fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_owned())
        .ok()
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "localhost".to_owned())
}

fn os_release_field(key: &str) -> Option<String> {
    let text = std::fs::read_to_string("/etc/os-release").ok()?;
    text.lines().find_map(|line| line.strip_prefix(key)?.strip_prefix('=')).map(|v| v.trim_matches('"').to_owned())
}

/// Gathers the facts. Cheap: a few small reads from /proc and /etc.
pub fn gather(agent: &str) -> Value {
    Value::map()
        .with("id", agent)
        .with("hostname", hostname())
        .with("os", os_release_field("ID").unwrap_or_else(|| std::env::consts::OS.to_owned()))
        .with("os_version", os_release_field("VERSION_ID"))
        .with("kernel", std::fs::read_to_string("/proc/sys/kernel/osrelease").map(|k| k.trim().to_owned()).ok())
        .with("cpus", std::thread::available_parallelism().map_or(1, |n| i64::try_from(n.get()).unwrap_or(1)))
}

//! What this host is called: the agent's default id and its `hostname`
//! fact, and the master address `halite-master init` writes by default.

/// The kernel's host name, or `localhost` when it cannot be read.
pub fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_owned())
        .ok()
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "localhost".to_owned())
}

#[cfg(test)]
mod tests {
    #[test]
    fn a_host_always_has_a_name() {
        let name = super::hostname();
        assert!(!name.is_empty() && !name.contains('\n'), "{name:?}");
    }
}

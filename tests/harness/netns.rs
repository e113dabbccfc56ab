//! Network namespaces a test makes itself, for partitions: namespaces,
//! bridges and veth pairs through `ip` (iproute2), and wrapper programs
//! that run a binary inside a namespace.
//!
//! Every name starts with a prefix unique to the run (the process id and a
//! counter), so parallel tests and runs never meet. [`Net`] deletes its
//! namespaces when dropped, even when the test panics; deleting a
//! namespace deletes the veth ends in it and so their peers, and the
//! bridges live in a namespace too, so nothing is left in the host's own
//! network. A process still running in a deleted namespace keeps it alive
//! until it exits (the cluster kills its processes on drop).
//!
//! It needs root and `ip netns`; [`Net::unavailable`] says why not, for a
//! test to skip loudly. A link is cut by taking its bridge-side end off the
//! bridge (`nomaster`): both ends stay up, so the cut is silent as a
//! partition is (no carrier loss, no "network unreachable"), and packets
//! are simply not delivered.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU32, Ordering};

use anyhow::Context;

/// Namespaces made by this process so far, for unique names.
static MADE: AtomicU32 = AtomicU32::new(0);

/// One veth pair: `inner` in a namespace with an address, `outer` in the
/// hub namespace, on a bridge.
#[derive(Debug, Clone)]
pub struct Link {
    pub namespace: String,
    pub inner: String,
    pub hub: String,
    pub outer: String,
    pub bridge: String,
}

/// Namespaces, deleted on drop.
pub struct Net {
    /// Unique to this `Net`: `h<pid hex><n>`, short, since interface names
    /// have 15 bytes at most.
    prefix: String,
    namespaces: Vec<String>,
    links: u32,
    /// Where the wrapper programs are written.
    dir: tempfile::TempDir,
}

impl Net {
    /// Why partition tests cannot run here, if they cannot: not root, or no
    /// working `ip netns`.
    pub fn unavailable() -> Option<String> {
        if !nix::unistd::Uid::effective().is_root() {
            return Some("not root: network namespaces need CAP_SYS_ADMIN".into());
        }
        match crate::blocking_process("ip").args(["netns", "list"]).output() {
            Ok(out) if out.status.success() => None,
            Ok(out) => Some(format!("`ip netns list` failed: {}", String::from_utf8_lossy(&out.stderr))),
            Err(error) => Some(format!("cannot run `ip` (iproute2): {error}")),
        }
    }

    pub fn new() -> anyhow::Result<Net> {
        let n = MADE.fetch_add(1, Ordering::Relaxed);
        let prefix = format!("h{:x}{n}", std::process::id() & 0xf_ffff);
        let dir = tempfile::Builder::new().prefix("halite-netns-").tempdir()?;
        Ok(Net { prefix, namespaces: Vec::new(), links: 0, dir })
    }

    /// Makes the namespace `<prefix>-<name>` with its loopback up; its name.
    pub fn namespace(&mut self, name: &str) -> anyhow::Result<String> {
        let namespace = format!("{}-{name}", self.prefix);
        ip(&["netns", "add", &namespace])?;
        self.namespaces.push(namespace.clone());
        ip(&["-n", &namespace, "link", "set", "lo", "up"])?;
        Ok(namespace)
    }

    /// Makes a bridge named `name` in `namespace`, up.
    pub fn bridge(&mut self, namespace: &str, name: &str) -> anyhow::Result<()> {
        ip(&["-n", namespace, "link", "add", name, "type", "bridge"])?;
        ip(&["-n", namespace, "link", "set", name, "up"])?;
        Ok(())
    }

    /// A veth pair from `namespace` (addressed `address`, e.g.
    /// `10.20.1.2/24`) to `bridge` in `hub`, both ends up.
    pub fn link(&mut self, namespace: &str, address: &str, hub: &str, bridge: &str) -> anyhow::Result<Link> {
        self.links += 1;
        let (inner, outer) = (format!("{}i{}", self.prefix, self.links), format!("{}o{}", self.prefix, self.links));
        anyhow::ensure!(outer.len() <= 15, "interface name {outer} is too long");
        ip(&["-n", hub, "link", "add", &outer, "type", "veth", "peer", "name", &inner, "netns", namespace])?;
        ip(&["-n", namespace, "addr", "add", address, "dev", &inner])?;
        ip(&["-n", namespace, "link", "set", &inner, "up"])?;
        ip(&["-n", hub, "link", "set", &outer, "master", bridge])?;
        ip(&["-n", hub, "link", "set", &outer, "up"])?;
        Ok(Link { namespace: namespace.to_owned(), inner, hub: hub.to_owned(), outer, bridge: bridge.to_owned() })
    }

    /// Cuts `link` silently: its bridge-side end leaves the bridge.
    pub fn cut(&self, link: &Link) -> anyhow::Result<()> {
        ip(&["-n", &link.hub, "link", "set", &link.outer, "nomaster"])
    }

    /// Puts `link` back on its bridge.
    pub fn heal(&self, link: &Link) -> anyhow::Result<()> {
        ip(&["-n", &link.hub, "link", "set", &link.outer, "master", &link.bridge])
    }

    /// A program that runs `binary` (with its arguments) in `namespace`:
    /// `ip netns exec` enters it and execs the binary, so the process id
    /// the spawner holds is the binary's.
    pub fn wrapper(&self, namespace: &str, binary: &Path) -> anyhow::Result<PathBuf> {
        use std::os::unix::fs::PermissionsExt;
        let name = binary.file_name().context("a binary without a name")?.to_string_lossy().into_owned();
        let path = self.dir.path().join(format!("{name}-in-{namespace}"));
        std::fs::write(&path, format!("#!/bin/sh\nexec ip netns exec '{namespace}' '{}' \"$@\"\n", binary.display()))?;
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755))?;
        Ok(path)
    }

    /// The prefix of every name this `Net` makes.
    pub fn prefix(&self) -> &str {
        &self.prefix
    }
}

impl Drop for Net {
    fn drop(&mut self) {
        for namespace in self.namespaces.iter().rev() {
            if let Err(error) = ip(&["netns", "delete", namespace]) {
                eprintln!("cannot delete the test's network namespace {namespace}: {error:#}");
            }
        }
    }
}

/// Runs `ip` with `args` to its end.
fn ip(args: &[&str]) -> anyhow::Result<()> {
    let out = crate::blocking_process("ip").args(args).output().context("cannot run `ip`")?;
    anyhow::ensure!(out.status.success(), "ip {}: {}", args.join(" "), String::from_utf8_lossy(&out.stderr).trim());
    Ok(())
}

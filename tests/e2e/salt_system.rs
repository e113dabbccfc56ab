//! Salt's reference for the kinds that act on the host itself (users and
//! groups, sysctl, cron, /etc/hosts, the time zone, mounts, git, cmd.script,
//! packages, APT repositories and services): tests/salt/corpus/ref-system
//! applied by `halite-agent apply --local` to an isolated copy of this system
//! (tests/salt/isolated.sh: an overlay over `/` in private mount, network
//! and UTS namespaces, chrooted into, seeded by the tree's seed.sh) must
//! leave the facts Salt 3008.5 left in the same kind of copy
//! (tests/salt/expected-system/ref-system.txt, recorded by
//! tests/salt/record-system.sh; CI has no Salt, so the recording is
//! committed), with every state's outcome the same, and a second apply must
//! change nothing.
//!
//! The service kinds run on a stand-in systemd in the copy (no systemd can
//! be PID 1 in a container): seed.sh creates `/run/systemd/system`, so
//! Salt picks its `systemd_service` module, and installs
//! tests/salt/corpus/ref-system/files/systemctl, which keeps enablement as
//! the `.wants` symlinks real `systemctl` makes and counts every start,
//! stop, restart and reload, so a reload where Salt restarted (or a
//! reload Salt skipped) shows in the facts.

use std::path::Path;

use halite_e2e::{CommandOutput, process};

/// Facts that differ between any two runs, Salt's or halite's, for a
/// reason that is not a difference in what was applied. Both sides go
/// through this.
fn normalise(line: &str) -> String {
    // /etc/shadow's third field is the day of the last password change:
    // the day the run happened.
    if let Some(entry) = line.strip_prefix("/etc/shadow ") {
        let mut fields: Vec<&str> = entry.split(':').collect();
        if fields.len() > 2 {
            fields[2] = "DAY";
        }
        return format!("/etc/shadow {}", fields.join(":"));
    }
    // crontab(1), which Salt runs, writes a header naming its temporary
    // file and the time it installed the crontab; halite edits the spool
    // file and keeps the header crontab(1) wrote before (seed.sh's).
    if let Some(header) = line.strip_prefix("/var/spool/cron/crontabs/root # (")
        && header.contains(" installed on ")
    {
        return "/var/spool/cron/crontabs/root # (… installed on …)".to_owned();
    }
    // /etc/hosts and /etc/fstab are read as fields separated by any blanks
    // (hosts(5), fstab(5)): Salt writes two tabs after a hosts address and
    // leaves a space at the end of a line it removed a name from, and an
    // fstab line as `device<tab><tab>dir<tab>…<tab>dump<space>pass`;
    // halite separates fields by one tab. The fields are compared.
    for file in ["/etc/hosts ", "/etc/fstab "] {
        if let Some(entry) = line.strip_prefix(file) {
            return format!("{file}{}", entry.split_whitespace().collect::<Vec<_>>().join(" "));
        }
    }
    line.to_owned()
}

/// The facts and the states' outcomes, as record-system.sh writes them.
fn summary(facts: &str, report: &serde_json::Value) -> Vec<String> {
    let mut lines: Vec<String> = facts.lines().map(normalise).collect();
    for state in report["agents"][0]["states"].as_array().expect("states") {
        lines.push(format!(
            "state {} {} {}",
            state["kind"].as_str().unwrap(),
            state["id"].as_str().unwrap(),
            state["outcome"].as_str().unwrap()
        ));
    }
    lines
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn halite_applies_the_system_kinds_as_salt_did() {
    if !nix::unistd::geteuid().is_root() {
        panic!(
            "this test applies users, mounts and packages to an overlay copy of / in private namespaces (unshare, mount -t overlay, chroot): run the e2e tests as root, as CI does"
        );
    }
    let salt = Path::new(env!("CARGO_MANIFEST_DIR")).join("salt");
    let agent = halite_e2e::binaries().agent;
    let bindir = agent.parent().unwrap();
    let inside = Path::new("/run/ref/bin").join(agent.file_name().unwrap());
    let mut command = process("sh");
    command
        .arg(salt.join("isolated.sh"))
        .arg(salt.join("corpus/ref-system"))
        .arg(bindir)
        .arg("sh")
        .arg("-c")
        // Twice: the second run must change nothing.
        .arg(r#""$@" && "$@""#)
        .arg("apply")
        .arg(&inside)
        .args(["apply", "--local", "/run/ref/tree", "--id", "ref", "--config", "/nonexistent/agent.yaml"])
        .args(["--root", "/", "--json"]);
    let out = CommandOutput::of(command).await.unwrap();
    assert_eq!(out.code, 0, "{out:?}");
    let (reports, facts) = out.stdout.split_once("--- facts\n").unwrap_or_else(|| panic!("no facts: {out:?}"));
    let reports: Vec<serde_json::Value> = serde_json::Deserializer::from_str(reports)
        .into_iter()
        .collect::<Result<_, _>>()
        .unwrap_or_else(|e| panic!("{e}: {out:?}"));
    let [first, second] = &reports[..] else { panic!("two apply reports expected: {out:?}") };

    let expected = std::fs::read_to_string(salt.join("expected-system/ref-system.txt")).unwrap();
    let expected: Vec<String> = expected.lines().map(normalise).collect();
    let actual = summary(facts, first);
    assert_eq!(actual, expected, "halite (left) and Salt (right) differ; {out:?}");

    let states = second["agents"][0]["states"].as_array().expect("states");
    let changed: Vec<&serde_json::Value> = states.iter().filter(|s| s["outcome"] != "unchanged").collect();
    assert!(changed.is_empty(), "the second apply changed something: {changed:?}; {out:?}");
}

//! Nothing lost, nothing invented: the agent's disk fills up, and its
//! outbox is damaged between two runs.

use std::io::Write as _;
use std::path::{Path, PathBuf};

use anyhow::Context as _;
use halite_e2e::{Fleet, wait_until};
use halite_proto::{AgentMessage, Event, Value};

/// A tmpfs mounted for the test, unmounted (lazily: the agent may still
/// hold files in it) when dropped.
pub(crate) struct Tmpfs {
    path: PathBuf,
}

impl Tmpfs {
    /// Mounts a tmpfs of `size` at `path`; `None`, said loudly, where this
    /// test may not mount (it needs root).
    pub(crate) fn mount(path: &Path, size: &str) -> anyhow::Result<Option<Tmpfs>> {
        std::fs::create_dir_all(path)?;
        let output = halite_e2e::blocking_process("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size},mode=0700"), "tmpfs"])
            .arg(path)
            .output()
            .context("cannot run mount")?;
        if !output.status.success() {
            eprintln!(
                "SKIPPED: cannot mount a tmpfs at {} ({}); this test fills the agent's disk and needs root to mount one",
                path.display(),
                String::from_utf8_lossy(&output.stderr).trim()
            );
            return Ok(None);
        }
        Ok(Some(Tmpfs { path: path.to_path_buf() }))
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = halite_e2e::blocking_process("umount").arg("-l").arg(&self.path).status();
    }
}

/// Writes `path` until the file system has no room left, and proves it:
/// a byte more in a new file does not fit.
pub(crate) fn fill(path: &Path) -> anyhow::Result<()> {
    let mut filler = std::fs::File::create(path)?;
    for chunk in [64 * 1024, 4096, 1] {
        let block = vec![0x5a; chunk];
        while filler.write_all(&block).is_ok() {}
    }
    let probe = path.with_extension("probe");
    let fits = std::fs::write(&probe, b"x");
    let _ = std::fs::remove_file(&probe);
    anyhow::ensure!(fits.is_err(), "{} is full, yet a byte more fits", path.display());
    Ok(())
}

/// A drift made while the agent's data dir is full is held, reported once
/// space returns, and restored; the agent says once that it could not
/// write, and once that it can again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_drift_made_while_the_disk_is_full_is_restored_when_space_returns() {
    let mut fleet = Fleet::start(&[]).await.unwrap();
    let data = fleet.dir.path().join("web01").join("data");
    let Some(_tmpfs) = Tmpfs::mount(&data, "2m").unwrap() else { return };
    if let Err(error) = full_disk(&mut fleet, &data).await {
        fleet.fail(&error);
    }
}

async fn full_disk(fleet: &mut Fleet, data: &Path) -> anyhow::Result<()> {
    fleet.add_agent("web01").await?;
    let motd = fleet.agent("web01").path("/etc/motd");
    // Settled first: a restore still to come would undo the drift below.
    settle(fleet, &motd).await?;
    // Acknowledged batches are unlinked, which frees space: fill only once
    // the outbox is empty, so nothing frees any until the filler goes.
    let outbox = data.join("outbox");
    let batches = || std::fs::read_dir(&outbox).map(|d| d.flatten().count()).unwrap_or(usize::MAX);
    wait_until("every batch acknowledged", || batches() == 0).await?;
    let filler = data.join("filler");
    fill(&filler)?;
    let drifted = "drifted while the agent's disk was full\n";
    std::fs::write(&motd, drifted)?;
    let sha256 = halite_proto::Sha256::of(drifted.as_bytes()).to_hex();
    let unwritable =
        fleet.wait_for("the outbox's full-disk notice", |e| e.tag == "halite/agent/web01/outbox/unwritable").await?;
    assert!(unwritable.data()["held"].as_i64() >= Some(1), "{}", unwritable.data());
    assert!(unwritable.data()["error"].as_str().is_some_and(|e| e.contains("space")), "{}", unwritable.data());
    let is_drift = |e: &halite_master::client::BusEvent| {
        e.tag == "halite/beacon/web01/motd" && e.data()["sha256"].as_str() == Some(sha256.as_str())
    };
    assert!(!fleet.seen.iter().any(is_drift), "a held event is not sent before it is written");
    std::fs::remove_file(&filler)?;
    let drift = fleet.wait_for("the drift, once space returned", is_drift).await?;
    let ret = fleet.wait_for_restore_of(&drift).await?;
    assert_eq!(ret.data()["failed"], false, "{}", ret.data());
    assert_eq!(std::fs::read_to_string(&motd)?, MOTD, "restored");
    let writable = |e: &halite_master::client::BusEvent| e.tag == "halite/agent/web01/outbox/writable";
    if !fleet.seen.iter().any(writable) {
        fleet.wait_for("the outbox's notice that it writes again", writable).await?;
    }
    let log = agent_log(fleet)?;
    assert_eq!(log.matches("Cannot write to the outbox").count(), 1, "said once");
    assert_eq!(log.matches("The outbox can write again").count(), 1, "said once");
    let notices = fleet.seen.iter().filter(|e| e.tag == "halite/agent/web01/outbox/unwritable").count();
    assert_eq!(notices, 1, "one notice");
    Ok(())
}

/// Drifts `motd` and waits for its restore: every job before it is done.
async fn settle(fleet: &mut Fleet, motd: &Path) -> anyhow::Result<()> {
    let text = "settling\n";
    std::fs::write(motd, text)?;
    let sha256 = halite_proto::Sha256::of(text.as_bytes()).to_hex();
    let drift = fleet
        .wait_for("the settling drift", |e| {
            e.tag == "halite/beacon/web01/motd" && e.data()["sha256"].as_str() == Some(sha256.as_str())
        })
        .await?;
    fleet.wait_for_restore_of(&drift).await?;
    Ok(())
}

/// The agent's log without colours.
fn agent_log(fleet: &Fleet) -> anyhow::Result<String> {
    let log = std::fs::read_to_string(&fleet.agent("web01").log)?;
    let mut plain = String::with_capacity(log.len());
    let mut rest = log.as_str();
    while let Some(start) = rest.find('\x1b') {
        plain.push_str(&rest[..start]);
        rest = &rest[start..];
        rest = rest.find('m').map_or("", |end| &rest[end + 1..]);
    }
    plain.push_str(rest);
    Ok(plain)
}

/// The desired /etc/motd, as the example tree's motd.yaml writes it.
const MOTD: &str = "This host is managed by halite. Local edits are restored.\n";

/// The byte offsets of the records of an outbox batch file (format 2:
/// an 8-byte header, then `[length u32 LE][checksum 8][frame]`).
fn record_starts(bytes: &[u8]) -> Vec<usize> {
    let mut starts = Vec::new();
    let mut at = 8;
    while at + 4 <= bytes.len() {
        starts.push(at);
        let length = u32::from_le_bytes(bytes[at..at + 4].try_into().unwrap()) as usize;
        at += 4 + 8 + length;
    }
    starts
}

fn probe(path: &str) -> AgentMessage {
    AgentMessage::Event(Event::new("halite/beacon/web01/probe", "web01", Value::map().with("path", path)))
}

/// Writes `messages` as one batch through the agent's own outbox; returns
/// the file it made.
fn batch(outbox_dir: &Path, messages: Vec<AgentMessage>) -> anyhow::Result<PathBuf> {
    let before: Vec<PathBuf> = std::fs::read_dir(outbox_dir)?.map(|e| e.map(|e| e.path())).collect::<Result<_, _>>()?;
    let mut outbox = halite_agent::outbox::Outbox::open(outbox_dir, "web01", halite_agent::outbox::CAPACITY)?;
    anyhow::ensure!(outbox.push(messages) > 0, "nothing stored");
    let made = std::fs::read_dir(outbox_dir)?.map(|e| e.map(|e| e.path())).find(|p| match p {
        Ok(p) => !before.contains(p),
        Err(_) => true,
    });
    Ok(made.context("no batch file made")??)
}

/// An outbox file with a flipped bit and one cut short: each is named in
/// the agent's log at start with where its damage was saved, the records
/// that read are sent in order, the damaged ones never, and the agent runs on.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_damaged_outbox_is_reported_by_name_and_the_agent_runs_on() {
    let mut fleet = Fleet::start(&["web01"]).await.unwrap();
    if let Err(error) = damaged(&mut fleet).await {
        fleet.fail(&error);
    }
}

async fn damaged(fleet: &mut Fleet) -> anyhow::Result<()> {
    fleet.stop_agent("web01").await;
    let data = fleet.dir.path().join("web01").join("data");
    let outbox = data.join("outbox");
    // Both written before either is damaged: opening the outbox checks it.
    let flipped = batch(&outbox, vec![probe("/flip/kept-0"), probe("/flip/never-existed"), probe("/flip/kept-2")])?;
    let truncated = batch(&outbox, vec![probe("/cut/kept-0"), probe("/cut/cut-short")])?;
    let mut bytes = std::fs::read(&flipped)?;
    let starts = record_starts(&bytes);
    anyhow::ensure!(starts.len() == 3, "three records in {}", flipped.display());
    // A bit in the middle record's frame: its path, perhaps.
    bytes[(starts[1] + starts[2]) / 2 + 6] ^= 0x04;
    std::fs::write(&flipped, &bytes)?;
    let bytes = std::fs::read(&truncated)?;
    std::fs::write(&truncated, &bytes[..bytes.len() - 5])?;

    fleet.add_agent("web01").await?;
    let log = agent_log(fleet)?;
    let warnings: Vec<&str> = log.lines().filter(|l| l.contains("A damaged outbox file")).collect();
    assert_eq!(warnings.len(), 2, "{log}");
    let aside: Vec<PathBuf> = std::fs::read_dir(&data)?
        .map(|e| e.map(|e| e.path()))
        .collect::<Result<Vec<_>, _>>()?
        .into_iter()
        .filter(|p| p.file_name().and_then(|n| n.to_str()).is_some_and(|n| n.starts_with("outbox.damaged-")))
        .collect();
    assert_eq!(aside.len(), 2, "one file saved aside per damaged batch: {aside:?}");
    for file in [&flipped, &truncated] {
        let warning = warnings.iter().find(|w| w.contains(&file.display().to_string()));
        let warning = warning.with_context(|| format!("no warning names {}:\n{log}", file.display()))?;
        assert!(aside.iter().any(|a| warning.contains(&a.display().to_string())), "{warning} names where it went");
        assert!(warning.contains("lost=1"), "{warning}");
    }
    assert!(warnings.iter().any(|w| w.contains("kept=2")) && warnings.iter().any(|w| w.contains("kept=1")));

    // The agent runs on: a drift now is reported after everything the old
    // outbox held, which is therefore on the bus by then.
    let motd = fleet.agent("web01").path("/etc/motd");
    std::fs::write(&motd, "sentinel\n")?;
    let sentinel = fleet.wait_for("the sentinel drift", |e| e.tag == "halite/beacon/web01/motd").await?;
    fleet.wait_for_restore_of(&sentinel).await?;
    let probes: Vec<&str> = fleet
        .seen
        .iter()
        .filter(|e| e.tag == "halite/beacon/web01/probe")
        .filter_map(|e| e.data()["path"].as_str())
        .collect();
    assert_eq!(probes, ["/flip/kept-0", "/flip/kept-2", "/cut/kept-0"], "what read, in order; nothing invented");
    Ok(())
}

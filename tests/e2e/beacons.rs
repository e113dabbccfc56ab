//! Sampled beacons on a real agent: an event when the state changes.

use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU8, Ordering};

use halite_e2e::Fleet;
use halite_master::client::BusEvent;

/// A process beacon fires when the named process starts and when it stops.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_process_beacon_fires_on_start_and_stop() {
    // A name no other process on the machine has.
    let name = format!("halite-e2e-{}", std::process::id());
    let beacons = format!("'*':\n  worker:\n    process:\n      name: {name}\n      interval: 200ms\n");
    let mut fleet = Fleet::start_custom(&["web01"], &["*"], &[("beacons.yaml", &beacons)]).await.unwrap();
    let result = async {
        let is_absent = |e: &halite_master::client::BusEvent| {
            e.tag == "halite/beacon/web01/worker" && e.data()["state"] == "absent"
        };
        // It may have come while the agent converged.
        if !fleet.seen.iter().any(is_absent) {
            fleet.wait_for("absent at start", is_absent).await?;
        }
        // `exec -a` gives the process the beacon's name.
        let mut process = halite_e2e::process("bash")
            .args(["-c", &format!("exec -a {name} sleep 600")])
            .kill_on_drop(true)
            .spawn()?;
        let present = fleet.wait_for("present", |e| e.tag == "halite/beacon/web01/worker").await?;
        assert_eq!(present.data()["state"], "present", "{}", present.data());
        process.kill().await?;
        let absent = fleet.wait_for("absent", |e| e.tag == "halite/beacon/web01/worker").await?;
        assert_eq!(absent.data()["state"], "absent", "{}", absent.data());
        anyhow::Ok(())
    }
    .await;
    if let Err(error) = result {
        fleet.fail(&error);
    }
}

/// Starts a fleet whose only beacon is `beacon` (a beacons.yaml entry body
/// for `'*'`), after making `dirs` in web01's root.
async fn fleet_with_file_beacon(beacon: &str, dirs: &[&str]) -> Fleet {
    let beacons = format!("'*':\n{beacon}");
    let mut fleet = Fleet::start_custom(&[], &["*"], &[("beacons.yaml", &beacons)]).await.unwrap();
    for dir in dirs {
        std::fs::create_dir_all(fleet.agent_path("web01", dir)).unwrap();
    }
    fleet.add_agent("web01").await.unwrap();
    fleet
}

fn file_event<'a>(beacon: &'a str, path: &'a str) -> impl FnMut(&BusEvent) -> bool + 'a {
    move |e| e.tag == format!("halite/beacon/web01/{beacon}") && e.data()["path"] == path
}

/// A file beacon on a directory that does not exist when the agent starts
/// sees the directory appear, then a file created in it and deleted.
/// `events: [create, delete]`: writing the file is a create *and* a modify,
/// and the modify, reported on its own under load, would be taken for the
/// event after the create.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_directory_beacon_sees_a_create_and_a_delete() {
    let beacon = "  drop:\n    file:\n      paths: [/srv/drop]\n      events: [create, delete]\n";
    let mut fleet = fleet_with_file_beacon(beacon, &[]).await;
    let result = async {
        let file = fleet.agent_path("web01", "/srv/drop/a.txt");
        std::fs::create_dir_all(file.parent().unwrap())?;
        std::fs::write(&file, "hello\n")?;
        let created = fleet.wait_for("the create", file_event("drop", "/srv/drop/a.txt")).await?;
        assert_eq!(created.data()["kind"], "create", "{}", created.data());
        std::fs::remove_file(&file)?;
        let deleted = fleet.wait_for("the delete", file_event("drop", "/srv/drop/a.txt")).await?;
        assert_eq!(deleted.data()["kind"], "delete", "{}", deleted.data());
        anyhow::Ok(())
    }
    .await;
    if let Err(error) = result {
        fleet.fail(&error);
    }
}

/// `recursive: true` sees into a directory made after the beacon started.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_recursive_beacon_sees_into_a_new_subdirectory() {
    let beacon = "  tree:\n    file:\n      paths: [/srv/tree]\n      recursive: true\n";
    let mut fleet = fleet_with_file_beacon(beacon, &["/srv/tree"]).await;
    let result = async {
        let file = fleet.agent_path("web01", "/srv/tree/sub/deeper/f.conf");
        std::fs::create_dir_all(file.parent().unwrap())?;
        std::fs::write(&file, "x = 1\n")?;
        let created = fleet.wait_for("the create", file_event("tree", "/srv/tree/sub/deeper/f.conf")).await?;
        assert_eq!(created.data()["kind"], "create", "{}", created.data());
        anyhow::Ok(())
    }
    .await;
    if let Err(error) = result {
        fleet.fail(&error);
    }
}

/// An excluded file raises nothing: it is changed first, then a sentinel
/// file, and the first event the beacon raises is the sentinel's.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_excluded_file_raises_nothing() {
    let beacon = "  conf:\n    file:\n      paths: [/srv/conf]\n      exclude: ['*.swp']\n";
    let mut fleet = fleet_with_file_beacon(beacon, &["/srv/conf"]).await;
    let result = async {
        std::fs::write(fleet.agent_path("web01", "/srv/conf/.app.conf.swp"), "swap")?;
        std::fs::write(fleet.agent_path("web01", "/srv/conf/sentinel"), "s")?;
        let first = fleet.wait_for("the sentinel", |e| e.tag == "halite/beacon/web01/conf").await?;
        assert_eq!(first.data()["path"], "/srv/conf/sentinel", "{}", first.data());
        assert_eq!(first.data()["kind"], "create", "{}", first.data());
        anyhow::Ok(())
    }
    .await;
    if let Err(error) = result {
        fleet.fail(&error);
    }
}

/// A local beacon in agent.yaml runs beside the master's; on a name clash
/// the master's beacon runs, not the local one.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn local_beacons_run_and_the_masters_win_a_name_clash() {
    let mut fleet = Fleet::start(&[]).await.unwrap();
    let result = async {
        let name = format!("halite-local-{}", std::process::id());
        // `motd` is also the master's file beacon for every agent.
        let local =
            format!("beacons:\n  mine:\n    process: {{name: {name}}}\n  motd:\n    process: {{name: {name}}}\n");
        fleet.add_agent_with("web01", &local).await?;
        let mine = |e: &BusEvent| e.tag == "halite/beacon/web01/mine";
        if !fleet.seen.iter().any(mine) {
            fleet.wait_for("the local beacon's first event", mine).await?;
        }
        std::fs::write(fleet.agent("web01").path("/etc/motd"), "defaced\n")?;
        let motd = fleet.wait_for("a motd event", |e| e.tag == "halite/beacon/web01/motd").await?;
        assert_eq!(
            motd.data()["kind"],
            "modify",
            "the master's file beacon, not the local process one: {}",
            motd.data()
        );
        anyhow::Ok(())
    }
    .await;
    if let Err(error) = result {
        fleet.fail(&error);
    }
}

/// What the fake /proc/stat says between two reads: hot (95 of every 100
/// ticks busy) or cool (5 of 100).
const HOT: u8 = 0;
const COOL: u8 = 1;

/// A named pipe standing in for /proc/stat: every time the agent opens it,
/// a thread writes the next snapshot, 100 clock ticks on from the last,
/// busy as the phase says. The cpu beacon's readings are then exactly 95%
/// or 5%, whatever else runs on the host.
struct FakeStat {
    path: PathBuf,
    phase: Arc<AtomicU8>,
    stop: Arc<AtomicBool>,
    writer: Option<std::thread::JoinHandle<()>>,
}

impl FakeStat {
    fn new(dir: &Path) -> anyhow::Result<FakeStat> {
        let path = dir.join("fake-proc-stat");
        nix::unistd::mkfifo(&path, nix::sys::stat::Mode::from_bits_truncate(0o644))?;
        let (phase, stop) = (Arc::new(AtomicU8::new(HOT)), Arc::new(AtomicBool::new(false)));
        let writer = std::thread::spawn({
            let (path, phase, stop) = (path.clone(), phase.clone(), stop.clone());
            move || {
                let (mut busy, mut idle) = (1_000u64, 1_000u64);
                // Opening blocks until a reader opens the other end.
                while let Ok(mut reader) = std::fs::OpenOptions::new().write(true).open(&path) {
                    if stop.load(Ordering::Relaxed) {
                        break;
                    }
                    let hot = if phase.load(Ordering::Relaxed) == HOT { 95 } else { 5 };
                    busy += hot;
                    idle += 100 - hot;
                    // user nice system idle iowait irq softirq steal guest guest_nice;
                    // a reader that went away (a killed agent) is no matter.
                    let _ = writeln!(reader, "cpu  {busy} 0 0 {idle} 0 0 0 0 0 0");
                }
            }
        });
        Ok(FakeStat { path, phase, stop, writer: Some(writer) })
    }

    /// A script that runs its arguments (the agent) in a mount namespace
    /// of their own, where this pipe is bind-mounted over /proc/stat: the
    /// agent reads the real path; the host sees nothing. As root a mount
    /// namespace is enough; otherwise a user namespace maps us to root in it.
    fn wrapper(&self, dir: &Path, agent: &Path) -> anyhow::Result<PathBuf> {
        use std::os::unix::fs::PermissionsExt;
        let namespaces = if nix::unistd::geteuid().is_root() { "--mount" } else { "--user --map-root-user --mount" };
        let script = dir.join("agent-with-fake-proc-stat");
        std::fs::write(
            &script,
            format!(
                "#!/bin/sh\nexec unshare {namespaces} --propagation private \\\n  sh -c 'mount --bind \"$0\" /proc/stat && exec \"$@\"' '{}' '{}' \"$@\"\n",
                self.path.display(),
                agent.display()
            ),
        )?;
        std::fs::set_permissions(&script, std::fs::Permissions::from_mode(0o755))?;
        Ok(script)
    }
}

impl Drop for FakeStat {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        // The writer waits for a reader: be one until it has seen `stop`.
        let Some(writer) = self.writer.take() else { return };
        while !writer.is_finished() {
            let _ = std::fs::OpenOptions::new().read(true).custom_flags(nix::libc::O_NONBLOCK).open(&self.path);
            std::thread::yield_now();
        }
        let _ = writer.join();
    }
}

/// A cpu beacon fires `above` while the host is busy and `below` once it
/// is not. The agent runs with a fake /proc/stat (a pipe bind-mounted over
/// it in the agent's own mount namespace), so the readings are the test's,
/// not the shared machine's: 95% until `above` arrives, then 5%.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cpu_beacon_fires_above_when_busy_and_below_after() {
    let beacons = "'*':\n  hot:\n    cpu:\n      above: 90\n      below: 60\n      for: 1s\n      interval: 200ms\n";
    let mut fleet = Fleet::start_custom(&[], &["*"], &[("beacons.yaml", beacons)]).await.unwrap();
    let result = async {
        let stat = FakeStat::new(fleet.dir.path())?;
        fleet.binaries.agent = stat.wrapper(fleet.dir.path(), &fleet.binaries.agent)?;
        fleet.add_agent("web01").await?;
        let above = fleet.wait_for("cpu above", |e| e.tag == "halite/beacon/web01/hot").await?;
        assert_eq!(above.data()["state"], "above", "{}", above.data());
        stat.phase.store(COOL, Ordering::Relaxed);
        let below = fleet.wait_for("cpu below", |e| e.tag == "halite/beacon/web01/hot").await?;
        assert_eq!(below.data()["state"], "below", "{}", below.data());
        // The agent read the pipe, not the host: its readings are exactly
        // the fake's.
        assert_eq!(above.data()["percent"], 95.0, "{}", above.data());
        assert_eq!(below.data()["percent"], 5.0, "{}", below.data());
        anyhow::Ok(())
    }
    .await;
    if let Err(error) = result {
        fleet.fail(&error);
    }
}

//! Nothing acknowledged is lost on the master: events across SIGKILLs in a
//! burst, job results while its disk is full, its store damaged or gone
//! between two runs, a backup restored; results for jobs it never sent are
//! refused.

use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};

use halite_e2e::raw::RawAgent;
use halite_e2e::{Fleet, example_file, wait_until};
use halite_proto::{AgentMessage, Id, JobResult, Outcome, StateResult, Value};
use rand::{Rng, SeedableRng};

use crate::full_disk::{Tmpfs, fill};

const MOTD: &str = "This host is managed by halite. Local edits are restored.\n";

/// Messages the agent's outbox holds (sent and not acknowledged, or not
/// sent yet).
fn outbox_len(data: &Path) -> usize {
    let Ok(dir) = std::fs::read_dir(data.join("outbox")) else { return 0 };
    dir.flatten()
        .filter(|e| e.path().extension().is_some_and(|x| x == "msg"))
        .map(|e| halite_agent::outbox::read_batch(&std::fs::read(e.path()).unwrap_or_default()).len())
        .sum()
}

/// The job results the agent's outbox holds (not acknowledged).
fn outbox_results(data: &Path) -> Vec<String> {
    let Ok(dir) = std::fs::read_dir(data.join("outbox")) else { return Vec::new() };
    dir.flatten()
        .filter(|e| e.path().extension().is_some_and(|x| x == "msg"))
        .flat_map(|e| halite_agent::outbox::read_batch(&std::fs::read(e.path()).unwrap_or_default()))
        .filter_map(|m| match m {
            AgentMessage::JobResult(result) => Some(result.job.to_string()),
            _ => None,
        })
        .collect()
}

/// Files the burst creates.
const BURST: usize = 2000;
/// Files created ahead of the events seen.
const WINDOW: usize = 256;
/// Times the master is killed during it.
const KILLS: usize = 8;

/// The agent raises an event for each of [`BURST`] files created in a
/// watched directory while the master is SIGKILLed [`KILLS`] times, each
/// after a random number of them reached the bus, and restarted on the
/// same data dir. A subscriber sees every file's event at least once;
/// duplicates (allowed: subscribers dedupe by id) are counted and printed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_master_killed_during_a_burst_loses_no_event() {
    let beacons = format!(
        "{}\n'web01':\n  burst:\n    file:\n      paths: [/var/burst]\n      events: [create]\n      debounce: 10ms\n",
        example_file("beacons.yaml")
    );
    let mut fleet = Fleet::start_custom(&["web01"], &["*"], &[("beacons.yaml", beacons.as_str())]).await.unwrap();
    let result = async {
        let burst = fleet.agent("web01").path("/var/burst");
        let data = fleet.agent("web01").dir.join("data");
        std::fs::create_dir_all(&burst)?;
        let started = std::time::Instant::now();
        let listen = fleet.master().listen.clone();
        let seed: u64 = rand::rng().random();
        eprintln!("kill points seeded with {seed}");
        let mut random = rand::rngs::StdRng::seed_from_u64(seed);
        let mut kill_at: Vec<usize> = (0..KILLS).map(|_| random.random_range(1..BURST * 9 / 10)).collect();
        kill_at.sort_unstable();
        let path_of = |e: &halite_master::client::BusEvent| {
            (e.tag == "halite/beacon/web01/burst")
                .then(|| e.data()["path"].as_str().and_then(|p| p.rsplit('/').next()).map(str::to_owned))
                .flatten()
                .filter(|name| name.starts_with('f'))
        };
        let mut files: HashSet<String> = HashSet::new();
        let mut ids: HashMap<String, usize> = HashMap::new();
        let mut kills = kill_at.into_iter().peekable();
        let mut created = 0;
        // What the subscribers of killed masters still had unread.
        let (late, mut late_events) = tokio::sync::mpsc::unbounded_channel();
        while files.len() < BURST {
            // Paced by what reaches the bus, so the beacon's notification
            // queue never overflows: at most WINDOW files ahead.
            while created < BURST && created < files.len() + WINDOW {
                std::fs::write(burst.join(format!("f{created:05}")), b"")?;
                created += 1;
            }
            let next = tokio::time::timeout(halite_e2e::WAIT, async {
                tokio::select! {
                    Some(event) = late_events.recv() => anyhow::Ok(event),
                    event = fleet.bus.next() => event,
                }
            })
            .await;
            let event = match next {
                Ok(event) => event?,
                Err(_) => {
                    let missing: Vec<String> =
                        (0..created).map(|n| format!("f{n:05}")).filter(|f| !files.contains(f)).collect();
                    anyhow::bail!("no burst event within {:?}; never published: {missing:?}", halite_e2e::WAIT);
                }
            };
            if let Some(file) = path_of(&event) {
                *ids.entry(event.id().to_owned()).or_default() += 1;
                files.insert(file);
            }
            fleet.seen.push(event);
            if kills.peek().is_some_and(|at| files.len() >= *at) {
                kills.next();
                fleet.kill_master().await;
                fleet.restart_master(&listen).await?;
                for mut retired in fleet.retired.drain(..) {
                    let late = late.clone();
                    tokio::spawn(async move {
                        while let Ok(event) = retired.next().await {
                            if late.send(event).is_err() {
                                return;
                            }
                        }
                    });
                }
            }
        }
        anyhow::ensure!(kills.next().is_none(), "not every kill happened");
        wait_until("the outbox to empty", || outbox_len(&data) == 0).await?;
        let duplicates: usize = ids.values().map(|n| n - 1).sum();
        eprintln!(
            "{BURST} files, {} events seen for them ({} ids), {duplicates} duplicates, across {KILLS} kills, in {:?}",
            ids.values().sum::<usize>(),
            ids.len(),
            started.elapsed()
        );
        anyhow::Ok(())
    }
    .await;
    if let Err(error) = result {
        fleet.fail(&error);
    }
}

/// The master's files in a data dir.
struct StoreFiles {
    db: PathBuf,
    wal: PathBuf,
    marker: PathBuf,
}

impl StoreFiles {
    fn of(fleet: &Fleet) -> StoreFiles {
        let data = fleet.dir.path().join("master").join("data");
        let db = halite_master::server::store::path(&data);
        StoreFiles {
            wal: halite_master::server::store::wal(&db),
            marker: halite_master::server::store::marker(&db),
            db,
        }
    }

    /// Copies of the store's files, to damage one at a time.
    fn save(&self) -> anyhow::Result<Vec<(PathBuf, Option<Vec<u8>>)>> {
        [&self.db, &self.wal, &self.marker].into_iter().map(|p| Ok((p.clone(), std::fs::read(p).ok()))).collect()
    }

    fn restore(saved: &[(PathBuf, Option<Vec<u8>>)]) -> anyhow::Result<()> {
        for (path, bytes) in saved {
            match bytes {
                Some(bytes) => std::fs::write(path, bytes)?,
                None => {
                    let _ = std::fs::remove_file(path);
                }
            }
        }
        let _ = std::fs::remove_file(path_with(&saved[0].0, "-shm"));
        Ok(())
    }
}

fn path_with(path: &Path, suffix: &str) -> PathBuf {
    let mut name = path.as_os_str().to_owned();
    name.push(suffix);
    PathBuf::from(name)
}

/// Starting the master must fail, and its message name `file`.
async fn refused(fleet: &mut Fleet, listen: &str, file: &Path, what: &str) -> anyhow::Result<()> {
    match fleet.restart_master(listen).await {
        Ok(()) => anyhow::bail!("the master started on a store with {what}"),
        Err(error) => {
            let text = format!("{error:#}");
            let named = format!("{} ", file.display());
            anyhow::ensure!(
                text.contains(&named) || text.contains(&format!("{} (", file.display())),
                "the refusal of {what} does not name {}: {text}",
                file.display()
            );
            anyhow::ensure!(text.contains("backup"), "the refusal of {what} says nothing of restoring: {text}");
            eprintln!("{what}: refused");
            Ok(())
        }
    }
}

fn flip_bit(path: &Path, at: usize) -> anyhow::Result<()> {
    let mut bytes = std::fs::read(path)?;
    bytes[at] ^= 1;
    std::fs::write(path, bytes)?;
    Ok(())
}

/// Times the agent is killed just after a drift.
const KILLS_AROUND_SEND: usize = 8;

/// Send first (the agent's outbox writes a batch while the session sends
/// it): an agent SIGKILLed at a random moment within 2 ms of a drift
/// (before its event left, between the send and the batch's rename, or
/// after) loses nothing it must keep. Started again on the same data dir,
/// it starts with a readable outbox (a batch cut short is a `.tmp` file,
/// removed), the drift is restored (its event reached the master, or the
/// start-up check and apply find it), and its outbox empties: nothing it
/// kept is stuck or refused. The seed is printed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_agent_killed_around_a_drift_event_s_send_loses_nothing_it_must_keep() {
    let mut fleet = Fleet::start(&["web01"]).await.unwrap();
    let result = async {
        let seed: u64 = rand::rng().random();
        eprintln!("kill moments seeded with {seed}");
        let mut random = rand::rngs::StdRng::seed_from_u64(seed);
        let data = fleet.agent("web01").dir.join("data");
        let motd = fleet.agent("web01").path("/etc/motd");
        for n in 0..KILLS_AROUND_SEND {
            std::fs::write(&motd, format!("drift {n}\n"))?;
            // A spin, not a sleep: the kill should land anywhere in the
            // first 2 ms, where the event is read, sent and written.
            let until = std::time::Instant::now() + std::time::Duration::from_micros(random.random_range(0..2000));
            while std::time::Instant::now() < until {
                std::hint::spin_loop();
            }
            fleet.kill_agent("web01").await;
            fleet.add_agent("web01").await?;
            wait_until("the drift restored", || std::fs::read_to_string(&motd).is_ok_and(|t| t == MOTD)).await?;
        }
        wait_until("the outbox to empty", || outbox_len(&data) == 0).await?;
        let leftovers = || -> Vec<PathBuf> {
            std::fs::read_dir(data.join("outbox"))
                .into_iter()
                .flatten()
                .flatten()
                .map(|e| e.path())
                .filter(|p| p.extension().is_some_and(|x| x == "tmp"))
                .collect()
        };
        // The outbox sends first and writes its file meanwhile, so the last
        // batch's file can still be being written (and then dropped) when
        // its ack has emptied the outbox; what a killed agent left must be
        // gone, and the live one's must go.
        if wait_until("no partial batch left", || leftovers().is_empty()).await.is_err() {
            anyhow::bail!("partial batches left: {:?}", leftovers());
        }
        anyhow::Ok(())
    }
    .await;
    if let Err(error) = result {
        fleet.fail(&error);
    }
}

/// A zeroed, cut short, bit-flipped or missing halite.db or WAL is refused
/// with a message naming the file and how to restore it; once restored, the
/// master starts and keeps what it had. A clean stop leaves one
/// self-contained halite.db.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_damaged_or_missing_store_is_refused_by_name() {
    let mut fleet = Fleet::start(&["web01"]).await.unwrap();
    let result = async {
        let listen = fleet.master().listen.clone();
        let files = StoreFiles::of(&fleet);
        // A crash: the start-up apply's records are in the WAL.
        fleet.kill_master().await;
        let crashed = files.save()?;
        let wal = std::fs::read(&files.wal)?;
        anyhow::ensure!(wal.len() > 32, "the WAL holds frames after a crash ({} bytes)", wal.len());
        std::fs::write(&files.wal, vec![0u8; wal.len()])?;
        refused(&mut fleet, &listen, &files.wal, "a zeroed WAL").await?;
        StoreFiles::restore(&crashed)?;
        std::fs::write(&files.wal, &wal[..32 + 24 + 1000])?;
        refused(&mut fleet, &listen, &files.wal, "a WAL cut short").await?;
        StoreFiles::restore(&crashed)?;
        flip_bit(&files.wal, 32 + 24 + 2000)?;
        refused(&mut fleet, &listen, &files.wal, "a bit flipped in the WAL").await?;
        StoreFiles::restore(&crashed)?;
        std::fs::remove_file(&files.wal)?;
        refused(&mut fleet, &listen, &files.wal, "a WAL missing after a crash").await?;

        // Restored, the crashed store starts, with its jobs.
        StoreFiles::restore(&crashed)?;
        fleet.restart_master(&listen).await?;
        let jobs = halite_master::server::store::Reader::open(&files.db)?.list(100)?;
        anyhow::ensure!(!jobs.is_empty(), "the jobs of the crashed run are kept");
        fleet.stop_master().await;
        anyhow::ensure!(!files.wal.exists(), "a clean stop leaves no WAL beside halite.db");
        assert_eq!(std::fs::read_to_string(&files.marker)?, "clean\n");
        let clean = files.save()?;
        let db = std::fs::read(&files.db)?;

        std::fs::write(&files.db, vec![0u8; db.len()])?;
        refused(&mut fleet, &listen, &files.db, "a zeroed halite.db").await?;
        std::fs::write(&files.db, &db[..db.len() - 1000])?;
        refused(&mut fleet, &listen, &files.db, "a halite.db cut short").await?;
        std::fs::write(&files.db, &db[..4096])?;
        refused(&mut fleet, &listen, &files.db, "a halite.db cut to its first page").await?;
        StoreFiles::restore(&clean)?;
        // Page 1's b-tree page type.
        flip_bit(&files.db, 100)?;
        refused(&mut fleet, &listen, &files.db, "a bit flipped in halite.db").await?;
        std::fs::write(&files.db, b"")?;
        refused(&mut fleet, &listen, &files.db, "an empty halite.db").await?;
        std::fs::remove_file(&files.db)?;
        refused(&mut fleet, &listen, &files.db, "a missing halite.db").await?;

        StoreFiles::restore(&clean)?;
        fleet.restart_master(&listen).await?;
        let again = halite_master::server::store::Reader::open(&files.db)?.list(100)?;
        anyhow::ensure!(again.len() >= jobs.len(), "every job kept: {} then {}", jobs.len(), again.len());
        anyhow::Ok(())
    }
    .await;
    if let Err(error) = result {
        fleet.fail(&error);
    }
}

/// `halite-master backup FILE` while the master runs; the copy, put in
/// place of a lost store, is what the master had at that moment.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_backup_made_while_running_restores_the_store() {
    let mut fleet = Fleet::start(&["web01"]).await.unwrap();
    let result = async {
        let listen = fleet.master().listen.clone();
        let files = StoreFiles::of(&fleet);
        let data = files.db.parent().expect("data dir").to_path_buf();
        let copy = fleet.dir.path().join("backup.db");
        let before = halite_master::server::store::Reader::open(&files.db)?.list(100)?;
        let mut command = halite_e2e::process(&fleet.binaries.master);
        command.arg("backup").arg(&copy).arg("--data-dir").arg(&data);
        let output = halite_e2e::CommandOutput::of(command).await?;
        assert_eq!(output.code, 0, "{output:?}");
        assert!(output.stdout.contains(&copy.display().to_string()), "{output:?}");
        // A job after the backup: not in the copy.
        let motd = fleet.agent("web01").path("/etc/motd");
        std::fs::write(&motd, "after the backup\n")?;
        let drift = fleet.wait_for("the drift", |e| e.tag == "halite/beacon/web01/motd").await?;
        let after = fleet.wait_for_restore_of(&drift).await?;
        let after_jid = after.job().unwrap_or_default().to_owned();
        fleet.stop_master().await;
        std::fs::remove_file(&files.db)?;
        let _ = std::fs::remove_file(&files.wal);
        std::fs::copy(&copy, &files.db)?;
        fleet.restart_master(&listen).await?;
        let restored = halite_master::server::store::Reader::open(&files.db)?.list(100)?;
        let jids = |jobs: &[halite_master::server::store::JobSummary]| -> Vec<String> {
            jobs.iter().map(|j| j.job.jid.clone()).collect()
        };
        for jid in jids(&before) {
            anyhow::ensure!(jids(&restored).contains(&jid), "job {jid} from before the backup is restored");
        }
        anyhow::ensure!(!jids(&restored).contains(&after_jid), "a job after the backup is not in it");
        anyhow::ensure!(std::fs::read_to_string(&motd)? == MOTD);
        anyhow::Ok(())
    }
    .await;
    if let Err(error) = result {
        fleet.fail(&error);
    }
}

/// A result for a job the master never sent that agent is refused: not
/// stored, not published, and acknowledged so the agent forgets it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_result_for_a_job_never_sent_is_refused() {
    let mut fleet = Fleet::start(&[]).await.unwrap();
    let result = async {
        let listen = fleet.master().listen.clone();
        let mut raw = RawAgent::connect(&listen, "raw", Value::map()).await?;
        raw.barrier().await?;
        let invented = Id::new();
        let state = StateResult {
            id: "x".into(),
            kind: "file.managed".into(),
            outcome: Outcome::Changed { changes: vec!["invented".into()] },
            diff: Some("x".repeat(10_000)),
            duration_us: 1,
        };
        for _ in 0..3 {
            raw.send(&AgentMessage::JobResult(JobResult { job: invented, results: vec![state.clone()] })).await?;
        }
        let answers = raw.barrier().await?;
        let acks = answers
            .iter()
            .filter(|m| matches!(m, halite_proto::MasterMessage::ResultAck { job } if *job == invented))
            .count();
        assert_eq!(acks, 3, "refused and acknowledged: {answers:?}");
        // Handled in order: an event after the results is published after
        // anything they would have published.
        let marker = raw.raise("after", Value::map()).await?;
        fleet.wait_for("the event after the results", |e| e.id() == marker.id.to_string()).await?;
        let ret = format!("halite/job/{invented}/ret/raw");
        assert!(!fleet.seen.iter().any(|e| e.tag == ret), "the invented result was published");
        let files = StoreFiles::of(&fleet);
        let reader = halite_master::server::store::Reader::open(&files.db)?;
        assert_eq!(reader.count_prefix(&invented.to_string())?, 0, "the invented result was stored");
        let log = std::fs::read_to_string(&fleet.master().log)?;
        assert_eq!(log.matches("Refusing results for jobs not sent").count(), 1, "logged once: {log}");
        anyhow::Ok(())
    }
    .await;
    if let Err(error) = result {
        fleet.fail(&error);
    }
}

/// The master's data dir fills up: a job's result is held in memory and
/// not acknowledged (the agent keeps it in its outbox), the master says so
/// once; when space returns the result is committed, then acknowledged.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_result_arriving_while_the_master_disk_is_full_is_stored_once_space_returns() {
    let mut fleet = Fleet::start(&["web01"]).await.unwrap();
    let result = async {
        let listen = fleet.master().listen.clone();
        let files = StoreFiles::of(&fleet);
        let data = files.db.parent().expect("data dir").to_path_buf();
        fleet.stop_master().await;
        // The data dir moves onto a small tmpfs.
        let aside = fleet.dir.path().join("master-data-aside");
        std::fs::rename(&data, &aside)?;
        let Some(_tmpfs) = Tmpfs::mount(&data, "4m")? else { return anyhow::Ok(()) };
        for entry in std::fs::read_dir(&aside)? {
            let entry = entry?;
            if entry.file_type()?.is_file() {
                std::fs::copy(entry.path(), data.join(entry.file_name()))?;
            }
        }
        fleet.restart_master(&listen).await?;
        let agent_data = fleet.agent("web01").dir.join("data");
        let motd = fleet.agent("web01").path("/etc/motd");
        // Settled: the start-up apply of the new session answered.
        fleet.wait_for("the start-up apply", |e| e.tag.ends_with("/ret/web01")).await?;
        wait_until("the agent's outbox to empty", || outbox_len(&agent_data) == 0).await?;
        let filler = data.join("filler");
        fill(&filler)?;
        std::fs::write(&motd, "drifted while the master's disk was full\n")?;
        let drift = fleet.wait_for("the drift", |e| e.tag == "halite/beacon/web01/motd").await?;
        let ret = fleet.wait_for_restore_of(&drift).await?;
        let jid = ret.job().unwrap_or_default().to_owned();
        let is_unwritable = |e: &halite_master::client::BusEvent| e.tag == "halite/master/store/unwritable";
        let unwritable = match fleet.seen.iter().find(|e| is_unwritable(e)) {
            Some(event) => event.clone(),
            None => fleet.wait_for("the store's notice", is_unwritable).await?,
        };
        assert!(unwritable.data()["path"].as_str().is_some_and(|p| p.ends_with("halite.db")), "{}", unwritable.data());
        // Not acknowledged: the agent keeps the result, while its session
        // goes on (a ping answered).
        // The outbox sends first and writes its file meanwhile: wait for it.
        wait_until("the result kept in the agent's outbox", || outbox_results(&agent_data).contains(&jid)).await?;
        std::fs::write(&motd, "drifted again\n")?;
        let again = fleet.wait_for("another drift", |e| e.tag == "halite/beacon/web01/motd").await?;
        fleet.wait_for_restore_of(&again).await?;
        anyhow::ensure!(outbox_results(&agent_data).contains(&jid), "the result is still kept");
        eprintln!("held, unacknowledged: {:?}", outbox_results(&agent_data));
        std::fs::remove_file(&filler)?;
        fleet.wait_for("the store's notice it writes again", |e| e.tag == "halite/master/store/writable").await?;
        wait_until("the results acknowledged", || outbox_results(&agent_data).is_empty()).await?;
        let reader = halite_master::server::store::Reader::open(&files.db)?;
        let (_, report) = reader.job(&jid)?.ok_or_else(|| anyhow::anyhow!("job {jid} not stored"))?;
        assert!(!report.agents[0].states().is_empty(), "answered: {report:?}");
        assert_eq!(std::fs::read_to_string(&motd)?, MOTD);
        let notices = fleet.seen.iter().filter(|e| e.tag == "halite/master/store/unwritable").count();
        assert_eq!(notices, 1, "said once");
        fleet.stop_master().await;
        anyhow::Ok(())
    }
    .await;
    if let Err(error) = result {
        fleet.fail(&error);
    }
}

/// The running master applies `store:` retention (at start, then every ten
/// minutes): with `retention_days: 0`, the jobs of the earlier run are gone
/// once it started.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_store_keeps_only_what_retention_allows() {
    let mut fleet = Fleet::start(&["web01"]).await.unwrap();
    let result = async {
        let listen = fleet.master().listen.clone();
        let files = StoreFiles::of(&fleet);
        let before = halite_master::server::store::Reader::open(&files.db)?.list(100)?;
        anyhow::ensure!(!before.is_empty(), "jobs of the first run");
        fleet.stop_master().await;
        fleet.restart_master_with(&listen, "store:\n  retention_days: 0\n  max_bytes: 1000000\n").await?;
        // The new session's start-up apply is committed (its result
        // acknowledged) after the start's retention pass: the store's
        // writer takes them in the order they were queued.
        fleet.wait_for("the new start-up apply", |e| e.tag.ends_with("/ret/web01")).await?;
        let agent_data = fleet.agent("web01").dir.join("data");
        wait_until("the result acknowledged", || outbox_results(&agent_data).is_empty()).await?;
        let reader = halite_master::server::store::Reader::open(&files.db)?;
        for job in &before {
            assert_eq!(reader.count_prefix(&job.job.jid)?, 0, "job {} outlived retention", job.job.jid);
        }
        anyhow::Ok(())
    }
    .await;
    if let Err(error) = result {
        fleet.fail(&error);
    }
}

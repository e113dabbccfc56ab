//! Drift → restore latency on one agent, over real processes on loopback.
//!
//! Run (release binaries first, then the benchmark):
//!
//! ```sh
//! cargo build --release --workspace && cargo bench -p halite-e2e --bench drift_restore
//! cargo bench -p halite-e2e --bench drift_restore -- --hops   # and the per-hop table
//! cargo bench -p halite-e2e --bench drift_restore -- --load   # beside a CPU burner on every core
//! ```
//!
//! `HALITE_BENCH_DRIFTS` sets the number of drifts (default 1000). Each
//! drift is one of the kinds in `halite_master::fleet::DRIFTS` (append,
//! truncate and rewrite, delete, replace by rename, chmod), in turn, on a
//! managed file. Two latencies are measured from the
//! moment the drifting syscall returns: until the beacon's event arrives on
//! the master's publisher, and until the restore job's result does (the
//! file is restored before that result is sent). `TMPDIR=/dev/shm` puts the
//! managed files on tmpfs, which takes fsync out of the measurement.
//!
//! `--hops` runs the daemons with `HALITE_HOPS` (the benchmark starts
//! itself again with it set, so that both daemons inherit it): each marks
//! the time (`CLOCK_REALTIME`, one clock for all three processes) at every
//! hop of a drift's event and of its restore job (`halite_fs::hops`), and
//! the benchmark prints, per hop, the median and p90 of the time since the
//! hop before it, and each median's share of their sum.
//!
//! `--load` starts a second process that keeps every core busy (one
//! spinning thread per core, at normal priority) for the whole run.
//! `--nice=N` renices every thread of both daemons, and of the benchmark
//! (which reads the bus), to N once they run (as a unit's `Nice=` would;
//! below 0 needs root), to see what priority buys under that load.
//!
//! `--watch` manages the file with `watch: true` (its beacon and reactor
//! implied by the tree, `tree/watch.rs`) instead of the example tree's
//! hand-written `nginx-conf` beacon and `restore-nginx` reactor: issue
//! #21 asks that both be as fast.
//!
//! `--observed` runs the master with the API, dashboard and metrics
//! listeners on, one SSE client following `/api/v1/events` and `/metrics`
//! scraped every second for the whole measurement
//! (`halite_swarm::observe`): the "on" side of issue #17's on/off rows,
//! the run without it the "off" side. `--observed=idle|sse|scrape` turns
//! on the listeners with nobody connected, the SSE client only, or the
//! scraper only. Every run prints the CPU time per drift of the master's
//! threads (schedstat), of its HTTP side's thread apart, and of this
//! process (the benchmark's bus reader and the observers): the cost in
//! CPU, which a shared machine's noise moves less than the latencies.

// Test code outside `#[test]` functions (helpers, a bench): a panic is a
// failed test, which is what `unwrap` says here.
#![allow(clippy::unwrap_used)]

use std::collections::HashMap;
use std::path::Path;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use halite_e2e::{Fleet, example_file};
use halite_master::fleet::DRIFTS;
use halite_proto::Id;
use halite_swarm::{observe, proc};

fn stats(name: &str, samples: &mut [Duration]) {
    samples.sort_unstable();
    let at = |q: f64| samples[((samples.len() as f64 - 1.0) * q).round() as usize];
    let ms = |d: Duration| d.as_secs_f64() * 1e3;
    println!(
        "{name:<26} n={:<5} min {:>7.3} ms  p50 {:>7.3} ms  p99 {:>7.3} ms  max {:>7.3} ms",
        samples.len(),
        ms(samples[0]),
        ms(at(0.5)),
        ms(at(0.99)),
        ms(samples[samples.len() - 1])
    );
}

/// One drift as the benchmark saw it, for the hop table.
struct Drift {
    at: u64,
    event: u128,
    job: u128,
    /// When the event and the result arrived on the bus (realtime ns).
    event_seen: u64,
    ret_seen: u64,
}

fn realtime() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_nanos() as u64)
}

fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().collect();
    if args.iter().any(|a| a == "--burn") {
        burn();
    }
    let hops = args.iter().any(|a| a == "--hops");
    if hops && std::env::var_os(halite_fs::hops::ENV).is_none() {
        return again_with_hops(&args);
    }
    let nice = args.iter().find_map(|a| a.strip_prefix("--nice=")).map(str::parse::<i32>).transpose()?;
    tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build()?.block_on(run(
        drifts(),
        hops,
        args.iter().any(|a| a == "--load"),
        nice,
        observe::Observe::from_args(&args)?,
        args.iter().any(|a| a == "--watch"),
    ))
}

/// The example tree with `nginx.conf` healed by `watch: true`: its
/// hand-written beacon and reactor taken out.
const WATCHED_TREE: &[(&str, &str)] = &[
    (
        "nginx.yaml",
        "nginx-conf:\n  file.managed:\n    path: /etc/nginx/nginx.conf\n    source: files/nginx.conf\n    mode: \"0644\"\n    watch: true\n",
    ),
    ("beacons.yaml", "'*':\n  motd:\n    file:\n      paths: [/etc/motd]\n"),
    ("reactors.yaml", "- name: restore-motd\n  on: halite/beacon/*/motd\n  apply: [motd]\n"),
];

fn drifts() -> usize {
    std::env::var("HALITE_BENCH_DRIFTS").ok().and_then(|n| n.parse().ok()).unwrap_or(1000)
}

/// Starts this benchmark again with `HALITE_HOPS` naming a fresh
/// directory, so that the daemons it starts inherit it, and waits for it.
fn again_with_hops(args: &[String]) -> anyhow::Result<()> {
    let dir = tempfile::Builder::new().prefix("halite-hops-").tempdir()?;
    let status = halite_e2e::blocking_process(std::env::current_exe()?)
        .args(&args[1..])
        .env(halite_fs::hops::ENV, dir.path())
        .status()?;
    anyhow::ensure!(status.success(), "the benchmark failed: {status}");
    Ok(())
}

/// The `--load` burner: one spinning thread per core, until killed.
fn burn() -> ! {
    let cores = std::thread::available_parallelism().map_or(2, |n| n.get());
    for _ in 1..cores {
        std::thread::spawn(spin);
    }
    spin()
}

fn spin() -> ! {
    let mut x: u64 = 1;
    loop {
        x = std::hint::black_box(x.wrapping_mul(6364136223846793005).wrapping_add(1));
    }
}

async fn run(
    drifts: usize,
    hops: bool,
    load: bool,
    nice: Option<i32>,
    observed: Option<observe::Observe>,
    watch: bool,
) -> anyhow::Result<()> {
    let master_yaml = if observed.is_some() { observe::OBSERVED_MASTER } else { "" };
    let mut fleet = match watch {
        false => Fleet::start_with_master_config(&["web01"], master_yaml).await?,
        true => Fleet::start_custom_with_master_config(&["web01"], WATCHED_TREE, master_yaml).await?,
    };
    // The implied beacon is named `watch:nginx:nginx-conf` (tree/watch.rs).
    let tag = match watch {
        false => "halite/beacon/web01/nginx-conf",
        true => "halite/beacon/web01/watch:nginx:nginx-conf",
    };
    let observer = match observed {
        Some(what) => Some(observe::Observer::start(fleet.master(), &fleet.binaries, what).await?),
        None => None,
    };
    if let Some(nice) = nice {
        // The benchmark too: it reads the bus, and a reader that waits
        // for a core would measure its own wait.
        let pids = [fleet.master().pid(), fleet.agent("web01").pid(), Some(std::process::id())];
        for pid in pids.into_iter().flatten() {
            renice(pid, nice)?;
        }
    }
    // Started after the fleet, so that the start-up is not what it slows.
    let _burner = match load {
        true => Some(
            halite_e2e::process(std::env::current_exe()?)
                .arg("--burn")
                .stdin(std::process::Stdio::null())
                .kill_on_drop(true)
                .spawn()?,
        ),
        false => None,
    };
    let conf = fleet.agent("web01").path("/etc/nginx/nginx.conf");
    let desired = example_file("files/nginx.conf");
    println!(
        "drift→restore, {drifts} drifts, managed file in {}{}{}{}",
        conf.parent().unwrap().display(),
        if load { ", beside a CPU burner on every core" } else { "" },
        observed.map(|what| format!(", API, dashboard and metrics on (--observed={what})")).unwrap_or_default(),
        nice.map(|n| format!(", daemons at nice {n}")).unwrap_or_default()
    );
    if watch {
        println!("the file is managed with `watch: true` (implied beacon and reactor)");
    }
    let mut to_event = Vec::with_capacity(drifts);
    let mut to_restore = Vec::with_capacity(drifts);
    let mut seen: Vec<Drift> = Vec::with_capacity(drifts);
    let master_pid = fleet.master().pid().unwrap();
    let cpu_before = (proc::threads(master_pid)?, proc::threads(std::process::id())?);
    let measured = async {
        for n in 0..drifts {
            let drift = DRIFTS[n % DRIFTS.len()];
            let started = Instant::now();
            let at = realtime();
            (drift.act)(&conf)?;
            let event = fleet
                .wait_for("drift event", |e| e.tag == tag)
                .await
                .map_err(|e| e.context(format!("drift {n} ({})", drift.name)))?;
            to_event.push(started.elapsed());
            let event_seen = realtime();
            let ret = fleet.wait_for_restore_of(&event).await?;
            to_restore.push(started.elapsed());
            let ret_seen = realtime();
            anyhow::ensure!(std::fs::read_to_string(&conf)? == desired, "drift {n} was not restored");
            if hops {
                let id = |text: &str| text.parse::<Id>().map(|id| id.0).unwrap_or_default();
                let job = ret.job().map(id).unwrap_or_default();
                seen.push(Drift { at, event: id(event.id()), job, event_seen, ret_seen });
            }
            fleet.seen.clear();
        }
        anyhow::Ok(())
    }
    .await;
    let cpu_after = (proc::threads(master_pid)?, proc::threads(std::process::id())?);
    if let Err(error) = measured {
        // The logs of both sides, for a failure that is rare.
        fleet.fail(&error);
    }
    if let Some(observer) = observer {
        println!("{}", observer.stop().await?);
    }
    stats("drift → event on the bus", &mut to_event);
    stats("drift → restored (job ret)", &mut to_restore);
    let apart = halite_master::http::runtime::THREAD_NAME;
    let (master, http) = proc::cpu_split(&proc::thread_deltas(&cpu_before.0, &cpu_after.0), apart);
    let (this, _) = proc::cpu_split(&proc::thread_deltas(&cpu_before.1, &cpu_after.1), apart);
    let per_drift = |cpu: Duration| cpu.as_secs_f64() * 1e6 / drifts.max(1) as f64;
    println!(
        "cpu per drift: master {:.1} µs (HTTP side {:.1} µs), this process {:.1} µs",
        per_drift(master),
        per_drift(http),
        per_drift(this)
    );
    if hops {
        let dir = std::env::var_os(halite_fs::hops::ENV).map(std::path::PathBuf::from).unwrap();
        let last = seen.last().map(|d| d.job).unwrap_or_default();
        let marks = read_marks(&dir, last).await?;
        hop_table(&seen, &marks);
    }
    Ok(())
}

/// Sets the nice value of every thread of `pid` (threads made later
/// inherit it from the thread that makes them).
fn renice(pid: u32, nice: i32) -> anyhow::Result<()> {
    for task in std::fs::read_dir(format!("/proc/{pid}/task"))? {
        let tid = task?.file_name();
        let status =
            halite_e2e::blocking_process("renice").args(["-n", &nice.to_string(), "-p"]).arg(&tid).output()?.status;
        anyhow::ensure!(status.success(), "renice -n {nice} -p {tid:?} failed");
    }
    Ok(())
}

/// Every mark the daemons wrote to `dir`, by key, in time order, once the
/// last drift's last hop is among them (they write every 100 ms). A hop
/// marked again for the same key (a job that writes two files) is named
/// `hop#2`, `hop#3`, …
async fn read_marks(dir: &Path, last_job: u128) -> anyhow::Result<HashMap<u128, Vec<(String, u64)>>> {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let mut marks: HashMap<u128, Vec<(String, u64)>> = HashMap::new();
        for entry in std::fs::read_dir(dir)? {
            let text = std::fs::read_to_string(entry?.path())?;
            for (hop, key, at) in text.lines().filter_map(halite_fs::hops::parse_line) {
                marks.entry(key).or_default().push((hop.to_owned(), at));
            }
        }
        for list in marks.values_mut() {
            list.sort_by_key(|(_, at)| *at);
            let mut count: HashMap<String, usize> = HashMap::new();
            for (hop, _) in list.iter_mut() {
                let n = count.entry(hop.clone()).or_default();
                *n += 1;
                if *n > 1 {
                    *hop = format!("{hop}#{n}");
                }
            }
        }
        let done = marks.get(&last_job).is_some_and(|l| l.iter().any(|(h, _)| h == "master.result.published"));
        if done || Instant::now() > deadline {
            return Ok(marks);
        }
        tokio::time::sleep(halite_fs::hops::FLUSH_EVERY).await;
    }
}

/// One hop's samples, one per drift that passed it: the time since the
/// hop before, the time since the drift, and its place in the drift's path
/// (0 to 1).
type Samples = (Vec<u64>, Vec<u64>, Vec<f64>);

/// Prints, per hop (in the order of their median time after the drift),
/// the median and p90 of the time since the hop before it.
fn hop_table(drifts: &[Drift], marks: &HashMap<u128, Vec<(String, u64)>>) {
    let mut per_hop: HashMap<String, Samples> = HashMap::new();
    let (mut to_bus, mut total) = (Vec::new(), Vec::new());
    let none = Vec::new();
    for drift in drifts {
        let event = marks.get(&drift.event).unwrap_or(&none).iter().map(|(h, at)| (format!("event: {h}"), *at));
        let job = marks.get(&drift.job).unwrap_or(&none).iter().map(|(h, at)| (format!("job: {h}"), *at));
        let mut path: Vec<(String, u64)> = event.chain(job).collect();
        path.push(("bench: result seen on the bus".to_owned(), drift.ret_seen));
        path.sort_by_key(|(_, at)| *at);
        let mut before = drift.at;
        let places = path.len().max(2) as f64 - 1.0;
        for (place, (hop, at)) in path.into_iter().enumerate() {
            let entry = per_hop.entry(hop).or_default();
            entry.0.push(at.saturating_sub(before));
            entry.1.push(at.saturating_sub(drift.at));
            entry.2.push(place as f64 / places);
            before = at;
        }
        to_bus.push(drift.event_seen.saturating_sub(drift.at));
        total.push(drift.ret_seen.saturating_sub(drift.at));
    }
    let quantile = |samples: &mut Vec<u64>, q: f64| -> f64 {
        samples.sort_unstable();
        samples.get(((samples.len().max(1) - 1) as f64 * q).round() as usize).map_or(0.0, |&ns| ns as f64 / 1e3)
    };
    // Rows in path order: by the hop's mean place in the drifts' paths
    // (hops some drifts skip, a chmod's fsyncs, stay where they belong).
    let mut rows: Vec<(String, usize, f64, f64, f64, f64)> = per_hop
        .into_iter()
        .map(|(hop, (mut since_before, mut since_drift, places))| {
            let n = since_before.len();
            let place = places.iter().sum::<f64>() / n.max(1) as f64;
            let (median, p90) = (quantile(&mut since_before, 0.5), quantile(&mut since_before, 0.9));
            (hop, n, median, p90, quantile(&mut since_drift, 0.5), place)
        })
        .collect();
    rows.sort_by(|a, b| a.5.total_cmp(&b.5));
    let sum: f64 = rows.iter().map(|r| r.2).sum();
    println!("\nper hop, time since the hop before (µs; CLOCK_REALTIME, {} drifts):", drifts.len());
    println!("{:<38} {:>6} {:>9} {:>9} {:>7} {:>12}", "hop", "n", "p50", "p90", "share", "p50 at");
    for (hop, n, median, p90, at, _) in &rows {
        let share = 100.0 * median / sum.max(f64::MIN_POSITIVE);
        println!("{hop:<38} {n:>6} {median:>9.1} {p90:>9.1} {share:>6.1}% {at:>12.1}");
    }
    println!("{:<38} {:>6} {:>9.1}", "sum of the medians", "", sum);
    println!("{:<38} {:>6} {:>9.1}", "median drift → restored", total.len(), quantile(&mut total, 0.5));
    println!("{:<38} {:>6} {:>9.1}", "median drift → event on the bus", to_bus.len(), quantile(&mut to_bus, 0.5));
}

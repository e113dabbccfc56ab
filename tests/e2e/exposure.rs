//! What the outside publisher may carry (issue #14, items 12 and 13): no
//! command output, no webhook response bodies, no webhook URL query (a
//! token), in the bus nor in the master's log. Each test performs the leak
//! the issue found on a real master and looks for the secret everywhere it
//! went before the fix.

use anyhow::{Context as _, ensure};
use halite_e2e::{Fleet, rss_kib};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const RESTORE_MOTD: &str = "- name: restore-motd\n  on: halite/beacon/*/motd\n  apply: [motd]\n";

/// Every event the bus carried, as text.
fn bus_text(fleet: &Fleet) -> String {
    fleet.seen.iter().map(|e| format!("{} {}\n", e.tag, e.json)).collect()
}

/// A webhook that is refused and one that is black-holed (a listener that
/// never answers), both with `?token=SECRET` in their URL, a `run` command
/// and an `exec` hook that fail printing a secret on stderr: each reaction
/// fails, and neither the bus nor the master's log holds a secret (the
/// commands print it in two pieces, so that their command lines, which
/// events do name, do not hold it); the
/// hook's and the command's stderr are in the job store.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn secrets_in_webhook_urls_and_command_output_reach_neither_the_bus_nor_the_log() {
    let refused = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let refused_port = refused.local_addr().unwrap().port();
    drop(refused);
    // Bound, never accepted: the connection completes in the backlog and
    // the request is never answered.
    let black_hole = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let hole_port = black_hole.local_addr().unwrap().port();
    let reactors = format!(
        "{RESTORE_MOTD}\
         - name: refused\n  on: halite/beacon/*/motd\n  webhook:\n    url: http://127.0.0.1:{refused_port}/hook?token=SECRET-refused\n    insecure_http: true\n    retries: 1\n    timeout: 1s\n\
         - name: hole\n  on: halite/beacon/*/motd\n  webhook:\n    url: http://127.0.0.1:{hole_port}/hook?token=SECRET-hole\n    insecure_http: true\n    retries: 1\n    timeout: 500ms\n\
         - name: loud-run\n  on: halite/beacon/*/motd\n  run: sh -c 'printf \"%s%s\\n\" SEC RET-run-stderr >&2; printf \"%s%s\\n\" SEC RET-run-stdout; exit 3'\n\
         - name: quiet-run\n  on: halite/beacon/*/motd\n  run: sh -c 'printf \"%s%s\\n\" SEC RET-ok-stdout'\n\
         - name: loud-exec\n  on: halite/beacon/*/motd\n  exec: hooks/leak.sh\n"
    );
    let files = [
        ("reactors.yaml", reactors.as_str()),
        ("hooks/leak.sh", "#!/bin/sh\necho SECRET-exec-stdout\necho SECRET-exec-stderr >&2\nexit 2\n"),
    ];
    let mut fleet = Fleet::start_custom(&["web01"], &["*"], &files).await.unwrap();
    let result = async {
        std::fs::write(fleet.agent("web01").path("/etc/motd"), "drift\n")?;
        fleet.wait_for("the drift", |e| e.tag == "halite/beacon/web01/motd").await?;
        // Slow reactions run in lanes of their own: they end in any order.
        let mut waiting: std::collections::BTreeMap<String, &str> = [
            ("refused", "failed"),
            ("hole", "failed"),
            ("loud-run", "failed"),
            ("quiet-run", "fired"),
            ("loud-exec", "failed"),
        ]
        .into_iter()
        .map(|(reactor, end)| (format!("halite/reactor/{reactor}/{end}"), reactor))
        .collect();
        let mut errors = std::collections::HashMap::new();
        while !waiting.is_empty() {
            let what = format!("{:?}", waiting.keys().collect::<Vec<_>>());
            let ended = fleet.wait_for(&what, |e| waiting.contains_key(&e.tag)).await?;
            if let Some(reactor) = waiting.remove(&ended.tag) {
                errors.insert(reactor, ended.data()["error"].as_str().unwrap_or_default().to_owned());
            }
        }
        // The failures still say what failed.
        ensure!(
            errors["refused"].contains("127.0.0.1") && errors["refused"].contains("after 2 attempts"),
            "{}",
            errors["refused"]
        );
        ensure!(errors["loud-run"].contains("failed on web01"), "{}", errors["loud-run"]);
        ensure!(errors["loud-exec"].contains("exit status: 2"), "{}", errors["loud-exec"]);
        let bus = bus_text(&fleet);
        ensure!(!bus.contains("SECRET"), "a secret on the bus:\n{bus}");
        let log = std::fs::read_to_string(&fleet.master().log)?;
        ensure!(!log.contains("SECRET"), "a secret in the master's log:\n{log}");
        // What the bus left out is in the store, for the master's owner.
        let exec_job =
            errors["loud-exec"].split("output in job ").nth(1).and_then(|t| t.split(':').next()).context("job")?;
        let kept = fleet.cli(&["jobs", exec_job])?;
        ensure!(kept.contains("SECRET-exec-stderr"), "{kept}");
        let run_job = errors["loud-run"].strip_prefix("job ").and_then(|t| t.split(':').next()).context("run's job")?;
        let kept = fleet.cli(&["jobs", run_job])?;
        ensure!(kept.contains("SECRET-run-stderr"), "{kept}");
        drop(black_hole);
        Ok(())
    }
    .await;
    if let Err(error) = result {
        fleet.fail(&error);
    }
}

/// A ZMTP 3.0 greeting (NULL mechanism) and READY as a SUB, then a
/// subscription to `prefix`, as bytes on the wire.
fn sub_opening(prefix: &[u8]) -> Vec<u8> {
    let mut bytes = halite_e2e::raw::zmtp_opening("SUB");
    bytes.extend([0, u8::try_from(prefix.len() + 1).unwrap(), 1]);
    bytes.extend_from_slice(prefix);
    bytes
}

/// How much the master's VmRSS may grow while a subscriber that never
/// reads is offered 480 MiB of events: its high-water mark (32 MiB,
/// `PUBLISHER_SUBSCRIBER_BYTES`), the event being written to it, what the
/// kernel buffers, and the events in flight through the master (the decode
/// workers' queues hold several 10 MiB events at once when the machine is
/// busy: 198 MiB of growth was seen in a loaded full run, against 192 MiB
/// allowed before). Keeping every event would grow it by at least 480 MiB.
const STUCK_RSS_BOUND_KIB: u64 = 256 * 1024;

/// An event of `big01` whose data is `size` bytes, encoded: encoded small,
/// then the bytes spliced in (encoding 10 MiB value by value is slow in a
/// test build).
fn blob_event(size: usize) -> anyhow::Result<Vec<u8>> {
    let data = halite_proto::Value::map().with("blob", halite_proto::Value::Bytes(b"xyz".to_vec()));
    let event = halite_proto::Event::new("halite/beacon/big01/blob", "big01", data);
    let small = halite_proto::encode(&halite_proto::AgentMessage::Event(event));
    let at = small.windows(5).position(|w| w == [5, 3, b'x', b'y', b'z']).context("the bytes in the encoding")?;
    let mut payload = small[..at].to_vec();
    payload.push(5);
    let mut length = size;
    while length >= 0x80 {
        payload.push(u8::try_from(length & 0x7f)? | 0x80);
        length >>= 7;
    }
    payload.push(u8::try_from(length)?);
    payload.resize(payload.len() + size, b'x');
    payload.extend_from_slice(&small[at + 5..]);
    Ok(payload)
}

/// Item 12: a subscriber that subscribes to everything and then never
/// reads, while an agent sends forty-eight 10 MiB events: the master holds at
/// most its high-water mark for it (before, every event: 4 GiB in the
/// issue's run), stays below [`STUCK_RSS_BOUND_KIB`] of growth, and goes
/// on publishing to other subscribers and restoring drift.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_subscriber_that_never_reads_costs_bounded_memory() {
    const EVENTS: usize = 48;
    const SIZE: usize = 10 << 20;
    let mut fleet = Fleet::start_with_master_config(&["web01"], "max_event_bytes: 16777216\n").await.unwrap();
    let result = async {
        let pid = fleet.master().pid().context("the master's pid")?;
        let publish = fleet.master().publish.clone();
        let mut big =
            halite_e2e::raw::RawAgent::connect(&fleet.master().listen, "big01", halite_proto::Value::map()).await?;
        big.barrier().await?;
        let mut end = halite_master::client::Subscriber::connect(&publish, "halite/beacon/big01/end").await?;
        // The stuck subscriber: reads until its subscription is live (a
        // probe event arrives), then never again.
        let mut stuck = tokio::net::TcpStream::connect(publish.trim_start_matches("tcp://")).await?;
        stuck.write_all(&sub_opening(b"halite/")).await?;
        let mut seen = Vec::new();
        let live = async {
            let mut buffer = vec![0u8; 4096];
            loop {
                big.raise("probe", halite_proto::Value::map()).await?;
                big.barrier().await?;
                let read = tokio::time::timeout(std::time::Duration::from_millis(100), stuck.read(&mut buffer)).await;
                if let Ok(read) = read {
                    seen.extend_from_slice(&buffer[..read?]);
                    if seen.windows(b"big01/probe".len()).any(|w| w == b"big01/probe") {
                        return anyhow::Ok(());
                    }
                }
            }
        };
        tokio::time::timeout(halite_e2e::WAIT, live).await.context("the stuck subscriber's subscription")??;
        let before = rss_kib(pid).context("the master's VmRSS")?;
        let started = std::time::Instant::now();
        for _ in 0..EVENTS {
            big.send_payload(&blob_event(SIZE)?).await?;
        }
        eprintln!("sent in {:?}", started.elapsed());
        big.barrier().await?;
        eprintln!("taken in {:?}", started.elapsed());
        // Published in order: once `end` reaches a subscriber, every blob
        // has been offered to the stuck one.
        big.raise("end", halite_proto::Value::map()).await?;
        tokio::time::timeout(halite_e2e::WAIT, end.next()).await??;
        eprintln!("published in {:?}", started.elapsed());
        let after = rss_kib(pid).context("the master is gone")?;
        eprintln!("master VmRSS {before} KiB before, {after} KiB after, one subscriber stuck");
        ensure!(after.saturating_sub(before) < STUCK_RSS_BOUND_KIB, "VmRSS grew from {before} to {after} KiB");
        let motd = fleet.agent("web01").path("/etc/motd");
        std::fs::write(&motd, "drift beside a stuck subscriber\n")?;
        let event = fleet.wait_for("the drift", |e| e.tag == "halite/beacon/web01/motd").await?;
        fleet.wait_for_restore_of(&event).await?;
        drop(stuck);
        Ok(())
    }
    .await;
    if let Err(error) = result {
        fleet.fail(&error);
    }
}

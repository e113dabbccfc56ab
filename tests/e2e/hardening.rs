//! Transport hardening: hostile bytes on the master's link and publisher
//! ports and from a fake master, before any Noise session exists. Each test
//! performs the attack on real processes and asserts that the target is
//! alive (its /proc/PID/status still has a VmRSS line) and that its memory
//! stays bounded (VmRSS).

use anyhow::{Context, ensure};
use halite_e2e::raw::{zmtp_greeting, zmtp_opening};
use halite_e2e::{Fleet, WAIT, binaries, closed_by_peer, rss_growth_under_flood, rss_kib};
use tokio::io::AsyncWriteExt;
use tokio::net::{TcpListener, TcpStream};

/// A long-frame header (9 bytes) declaring `declared` bytes.
fn long_header(declared: u64) -> Vec<u8> {
    let mut header = vec![0b0000_0010];
    header.extend_from_slice(&declared.to_be_bytes());
    header
}

/// The 73 bytes: a greeting and a long-frame header declaring `declared`.
fn attack(declared: u64) -> Vec<u8> {
    let mut bytes = zmtp_greeting();
    bytes.extend(long_header(declared));
    assert_eq!(bytes.len(), 73);
    bytes
}

fn address(endpoint: &str) -> &str {
    endpoint.strip_prefix("tcp://").unwrap_or(endpoint)
}

/// Alive, not a zombie: a process that exited has no VmRSS line.
fn alive(pid: u32) -> bool {
    rss_kib(pid).is_some()
}

/// The 73-byte attack (a long-frame header declaring 2^47, then 2^62
/// bytes) on the master's link port and on its publisher port: the master
/// drops the connection and stays alive, and an accepted agent's drift is
/// still restored afterwards.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn long_frame_headers_on_the_link_and_publisher_ports_leave_the_master_serving() {
    let mut fleet = Fleet::start(&["web01"]).await.unwrap();
    let result = async {
        let pid = fleet.master().pid().context("the master's pid")?;
        for endpoint in [fleet.master().listen.clone(), fleet.master().publish.clone()] {
            for declared in [1u64 << 47, 1 << 62] {
                let mut stream = TcpStream::connect(address(&endpoint)).await?;
                stream.write_all(&attack(declared)).await?;
                closed_by_peer(&mut stream).await.with_context(|| format!("{endpoint}, {declared} declared"))?;
                ensure!(alive(pid), "the master died of 73 bytes on {endpoint} declaring {declared}");
            }
        }
        let motd = fleet.agent("web01").path("/etc/motd");
        std::fs::write(&motd, "drifted after the attack\n")?;
        let event = fleet.wait_for("the drift", |e| e.tag == "halite/beacon/web01/motd").await?;
        let ret = fleet.wait_for_restore_of(&event).await?;
        ensure!(ret.data()["failed"] == false, "{}", ret.data());
        ensure!(alive(pid), "the master is gone");
        Ok(())
    }
    .await;
    if let Err(error) = result {
        fleet.fail(&error);
    }
}

/// A fake master (a raw listener speaking a ZMTP greeting and the huge
/// frame header) against a real agent: pinning cannot help, it happens
/// before Noise. The agent drops the connection, stays alive, and connects
/// again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fake_master_sending_a_long_frame_header_does_not_kill_the_agent() {
    let dir = tempfile::Builder::new().prefix("halite-e2e-").tempdir().unwrap();
    let log = dir.path().join("agent.log");
    let result = async {
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let (keypair, _) = halite_link::Keypair::load_or_create(&dir.path().join("fake-master.key"))?;
        let root = dir.path().join("root");
        std::fs::create_dir_all(&root)?;
        let config = dir.path().join("agent.yaml");
        std::fs::write(
            &config,
            format!(
                "id: victim\nmaster: tcp://{}\nmaster_key: {}\ndata_dir: {}\nroot: {}\n",
                listener.local_addr()?,
                keypair.public,
                dir.path().join("data").display(),
                root.display()
            ),
        )?;
        let mut agent = halite_e2e::process(binaries().agent)
            .args(["run", "--config"])
            .arg(&config)
            .current_dir(dir.path())
            .env("RUST_LOG", "info")
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::null())
            .stderr(std::fs::File::create(&log)?)
            .kill_on_drop(true)
            .spawn()?;
        let pid = agent.id().context("the agent's pid")?;
        for declared in [1u64 << 47, 1 << 62] {
            let (mut stream, _) =
                tokio::time::timeout(WAIT, listener.accept()).await.context("the agent connecting")??;
            stream.write_all(&attack(declared)).await?;
            closed_by_peer(&mut stream).await.with_context(|| format!("{declared} declared"))?;
            ensure!(alive(pid), "the agent died of 73 bytes declaring {declared}");
        }
        // It keeps trying: alive and connecting again.
        tokio::time::timeout(WAIT, listener.accept()).await.context("the agent connecting again")??;
        ensure!(alive(pid), "the agent is gone");
        agent.kill().await?;
        Ok(())
    }
    .await;
    if let Err(error) = result {
        eprintln!("===== {} =====\n{}", log.display(), std::fs::read_to_string(&log).unwrap_or_default());
        panic!("{error:#}");
    }
}

/// How much the master's VmRSS may grow under the memory attacks below:
/// 32 MiB, against gigabytes offered (before the fix, RSS grew 1:1 with the
/// bytes sent).
const RSS_BOUND_KIB: u64 = 32 * 1024;

/// 50 connections, past the ZMTP handshake but unauthenticated, each
/// declaring a 100 MiB frame and streaming its body (5,000 MiB offered):
/// each is cut off at the frame's header, and the master's VmRSS grows by
/// less than [`RSS_BOUND_KIB`].
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn streaming_a_large_frame_body_before_authentication_keeps_the_master_bounded() {
    const CONNECTIONS: usize = 50;
    const BODY: usize = 100 << 20;
    let fleet = Fleet::start(&["web01"]).await.unwrap();
    let result = async {
        let pid = fleet.master().pid().context("the master's pid")?;
        let mut opening = zmtp_opening("DEALER");
        opening.extend(long_header(BODY as u64));
        let chunk = vec![0x5a; 64 << 10];
        let address = address(&fleet.master().listen);
        let grew = rss_growth_under_flood(pid, address, CONNECTIONS, &opening, &chunk, BODY).await?;
        ensure!(grew < RSS_BOUND_KIB, "the master's VmRSS grew by {grew} KiB");
        Ok(())
    }
    .await;
    if let Err(error) = result {
        fleet.fail(&error);
    }
}

/// 10 connections, unauthenticated, each sending a million empty message
/// parts (two bytes each on the wire, a few dozen in memory): each is cut
/// off at the part over the link's frame count, and the master's VmRSS
/// grows by less than [`RSS_BOUND_KIB`].
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flood_of_empty_message_parts_keeps_the_master_bounded() {
    const CONNECTIONS: usize = 10;
    const PARTS: usize = 1_000_000;
    let fleet = Fleet::start(&["web01"]).await.unwrap();
    let result = async {
        let pid = fleet.master().pid().context("the master's pid")?;
        let opening = zmtp_opening("DEALER");
        // `more` set on every part: the message never ends.
        let parts = [0b0000_0001u8, 0].repeat(32 << 10);
        let address = address(&fleet.master().listen);
        let grew = rss_growth_under_flood(pid, address, CONNECTIONS, &opening, &parts, 2 * PARTS).await?;
        ensure!(grew < RSS_BOUND_KIB, "the master's VmRSS grew by {grew} KiB");
        Ok(())
    }
    .await;
    if let Err(error) = result {
        fleet.fail(&error);
    }
}

/// 1,100 connections to each of the link and publisher ports that never
/// send a greeting are dropped after the master's `handshake_timeout`
/// (500 ms here), and an agent can still join afterwards.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn silent_connections_are_dropped_after_the_handshake_timeout() {
    const SILENT: usize = 1100;
    // 2,200 descriptors on this side.
    halite_link::transport::raise_open_files().unwrap();
    let mut fleet = Fleet::start_with_master_config(&["web01"], "handshake_timeout: 500ms\n").await.unwrap();
    let result = async {
        let pid = fleet.master().pid().context("the master's pid")?;
        for endpoint in [fleet.master().listen.clone(), fleet.master().publish.clone()] {
            let mut silent = Vec::with_capacity(SILENT);
            for _ in 0..SILENT {
                silent.push(TcpStream::connect(address(&endpoint)).await?);
            }
            for (n, stream) in silent.iter_mut().enumerate() {
                closed_by_peer(stream).await.with_context(|| format!("silent connection {n} to {endpoint}"))?;
            }
            ensure!(alive(pid), "the master is gone");
        }
        fleet.add_agent("web02").await?;
        Ok(())
    }
    .await;
    if let Err(error) = result {
        fleet.fail(&error);
    }
}

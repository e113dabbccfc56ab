//! Reactor actions and throttle, against a real master: `exec` hooks, a
//! webhook to a local HTTPS server, `event` chains and their loop guard, and
//! a burst of events through a throttled reactor.

use std::sync::Arc;

use anyhow::Context as _;
use halite_e2e::raw::RawAgent;
use halite_e2e::{Fleet, WAIT};
use halite_master::client::BusEvent;
use halite_proto::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::mpsc;

const RESTORE_MOTD: &str = "- name: restore-motd\n  on: halite/beacon/*/motd\n  apply: [motd]\n";

fn count(fleet: &Fleet, wanted: impl Fn(&BusEvent) -> bool) -> usize {
    fleet.seen.iter().filter(|e| wanted(e)).count()
}

/// The hook gets the event as JSON on stdin, byte for byte the event the
/// bus carried; a hook that fails becomes a `failed` event that names the
/// agent, the cause and the job whose record keeps the hook's stderr (not
/// the stderr itself), and the master goes on.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_exec_hook_receives_the_event_on_stdin_and_a_failing_one_is_reported() {
    let out = tempfile::tempdir().unwrap();
    let record = format!("#!/bin/sh\ncat > '{}/stdin.json'\n", out.path().display());
    let reactors = format!(
        "{RESTORE_MOTD}- name: record\n  on: halite/beacon/*/motd\n  exec: hooks/record.sh\n- name: broken\n  on: halite/beacon/*/motd\n  exec: hooks/broken.sh --loudly\n"
    );
    let files = [
        ("reactors.yaml", reactors.as_str()),
        ("hooks/record.sh", record.as_str()),
        ("hooks/broken.sh", "#!/bin/sh\necho \"the pager is down ($1)\" >&2\nexit 2\n"),
    ];
    let mut fleet = Fleet::start_custom(&["web01"], &["*"], &files).await.unwrap();
    let result = async {
        let motd = fleet.agent("web01").path("/etc/motd");
        std::fs::write(&motd, "drift\n")?;
        let drift = fleet.wait_for("the drift", |e| e.tag == "halite/beacon/web01/motd").await?;
        // Each hook's reactor has a lane of its own (reactor/engine.rs),
        // so the two end in either order.
        let failed = fleet.wait_for("the broken hook's failure", |e| e.tag == "halite/reactor/broken/failed").await?;
        for (tag, what) in [
            ("halite/reactor/record/fired", "the recording hook"),
            ("halite/reactor/restore-motd/fired", "the restore"),
        ] {
            if count(&fleet, |e| e.tag == tag) == 0 {
                fleet.wait_for(what, |e| e.tag == tag).await?;
            }
        }
        assert_eq!(failed.data()["agent"], "web01");
        assert_eq!(failed.data()["event"], drift.id());
        let error = failed.data()["error"].as_str().unwrap_or_default();
        // The hook's stderr is kept in the job store, not published.
        assert!(!error.contains("the pager is down") && error.contains("exit status: 2"), "{error}");
        let jid = error.split("output in job ").nth(1).and_then(|t| t.split(':').next()).context("no job named")?;
        let kept = fleet.cli(&["jobs", jid])?;
        assert!(kept.contains("the pager is down (--loudly)"), "{kept}");
        assert_eq!(count(&fleet, |e| e.tag == "halite/reactor/record/fired"), 1);
        let stdin: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(out.path().join("stdin.json"))?)?;
        assert_eq!(stdin, drift.json, "the hook's stdin is the event as the bus carried it");
        assert_eq!(std::fs::read_to_string(&motd)?, "This host is managed by halite. Local edits are restored.\n");
        // The master goes on: the next drift is restored and hooked again.
        std::fs::write(&motd, "drift again\n")?;
        let again = fleet.wait_for("the second drift", |e| e.tag == "halite/beacon/web01/motd").await?;
        fleet.wait_for_restore_of(&again).await?;
        // In either order, and perhaps already seen while the restore ran.
        for (tag, what) in [
            ("halite/reactor/broken/failed", "the second failure"),
            ("halite/reactor/record/fired", "the second recording"),
        ] {
            if count(&fleet, |e| e.tag == tag) < 2 {
                fleet.wait_for(what, |e| e.tag == tag).await?;
            }
        }
        let stdin: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(out.path().join("stdin.json"))?)?;
        assert_eq!(stdin["id"], again.id());
        anyhow::Ok(())
    }
    .await;
    if let Err(error) = result {
        fleet.fail(&error);
    }
}

/// One HTTP request as the test server read it.
struct Request {
    head: String,
    body: Vec<u8>,
}

/// An HTTPS server on 127.0.0.1 with a certificate for 127.0.0.1 made now
/// by a CA made now; answers the first request 503 and the rest 200.
/// Returns the port, the CA's PEM and the requests as they come.
async fn https_server() -> anyhow::Result<(u16, String, mpsc::Receiver<Request>)> {
    use rcgen::{BasicConstraints, CertificateParams, IsCa, Issuer, KeyPair};
    use tokio_rustls::rustls;
    let ca_key = KeyPair::generate()?;
    let mut ca_params = CertificateParams::new(Vec::<String>::new())?;
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    let ca_cert = ca_params.self_signed(&ca_key)?;
    let issuer = Issuer::new(ca_params, ca_key);
    let key = KeyPair::generate()?;
    let cert = CertificateParams::new(vec!["127.0.0.1".to_owned()])?.signed_by(&key, &issuer)?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()?
        .with_no_client_auth()
        .with_single_cert(
            vec![cert.der().clone()],
            rustls::pki_types::PrivateKeyDer::Pkcs8(key.serialize_der().into()),
        )?;
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let port = listener.local_addr()?.port();
    let (tx, rx) = mpsc::channel(16);
    tokio::spawn(async move {
        for answered in 0.. {
            let Ok((tcp, _)) = listener.accept().await else { return };
            let Ok(mut tls) = acceptor.accept(tcp).await else { continue };
            let Ok(request) = read_request(&mut tls).await else { continue };
            let status = if answered == 0 { "503 Service Unavailable" } else { "200 OK" };
            let answer = format!("HTTP/1.1 {status}\r\ncontent-length: 0\r\nconnection: close\r\n\r\n");
            let _ = tls.write_all(answer.as_bytes()).await;
            let _ = tls.shutdown().await;
            if tx.send(request).await.is_err() {
                return;
            }
        }
    });
    Ok((port, ca_cert.pem(), rx))
}

async fn read_request(stream: &mut (impl AsyncReadExt + Unpin)) -> anyhow::Result<Request> {
    let mut buffer = Vec::new();
    let mut chunk = [0u8; 4096];
    let end = loop {
        let n = stream.read(&mut chunk).await?;
        anyhow::ensure!(n > 0, "the connection closed mid-request");
        buffer.extend_from_slice(&chunk[..n]);
        if let Some(at) = buffer.windows(4).position(|w| w == b"\r\n\r\n") {
            break at + 4;
        }
    };
    let head = String::from_utf8_lossy(&buffer[..end]).into_owned();
    let length: usize = head
        .lines()
        .find_map(|l| l.to_ascii_lowercase().strip_prefix("content-length:").map(|v| v.trim().to_owned()))
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    while buffer.len() < end + length {
        let n = stream.read(&mut chunk).await?;
        anyhow::ensure!(n > 0, "the connection closed mid-body");
        buffer.extend_from_slice(&chunk[..n]);
    }
    Ok(Request { head, body: buffer[end..end + length].to_vec() })
}

/// The webhook reaches an HTTPS server whose certificate only the tree's
/// `ca` vouches for, with the headers from the tree and the event as its
/// body; a 503 is retried.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_webhook_reaches_a_local_https_server_and_retries_a_503() {
    let (port, ca, mut requests) = https_server().await.unwrap();
    let reactors = format!(
        "{RESTORE_MOTD}- name: notify\n  on: halite/beacon/*/motd\n  webhook:\n    url: https://127.0.0.1:{port}/hook?token=abc\n    headers: {{X-Halite-Test: yes-please, Authorization: Bearer t0ken}}\n    ca: ca.pem\n    retries: 2\n    timeout: 10s\n"
    );
    let files = [("reactors.yaml", reactors.as_str()), ("ca.pem", ca.as_str())];
    let mut fleet = Fleet::start_custom(&["web01"], &["*"], &files).await.unwrap();
    let result = async {
        std::fs::write(fleet.agent("web01").path("/etc/motd"), "drift\n")?;
        let drift = fleet.wait_for("the drift", |e| e.tag == "halite/beacon/web01/motd").await?;
        let fired = fleet.wait_for("the webhook's reaction", |e| e.tag == "halite/reactor/notify/fired").await?;
        assert_eq!(fired.data()["event"], drift.id());
        let done = fired.data()["actions"][0].as_str().unwrap_or_default().to_owned();
        assert!(done.contains("200 OK") && !done.contains("token"), "{done}");
        for attempt in ["the first, refused with 503", "the retry"] {
            let request = tokio::time::timeout(WAIT, requests.recv()).await?.expect(attempt);
            let head = request.head.to_ascii_lowercase();
            assert!(head.starts_with("post /hook?token=abc http/1.1\r\n"), "{attempt}: {}", request.head);
            for header in ["x-halite-test: yes-please", "authorization: bearer t0ken", "content-type: application/json"]
            {
                assert!(head.contains(header), "{attempt}: no `{header}` in\n{}", request.head);
            }
            let body: serde_json::Value = serde_json::from_slice(&request.body)?;
            assert_eq!(body, drift.json, "{attempt}: the body is the event");
        }
        assert!(requests.try_recv().is_err(), "no request after the one that succeeded");
        anyhow::Ok(())
    }
    .await;
    if let Err(error) = result {
        fleet.fail(&error);
    }
}

/// `event` fires a new event for the same agent that names its cause;
/// reactors that fire each other stop after `MAX_DEPTH` hops with a
/// `failed` event.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fired_events_carry_their_cause_and_a_loop_stops() {
    let reactors = format!(
        "{RESTORE_MOTD}- name: announce\n  on: halite/beacon/*/motd\n  event: {{tag: halite/ops/ping, data: {{from: motd}}}}\n- name: ping\n  on: halite/ops/ping\n  event: halite/ops/pong\n- name: pong\n  on: halite/ops/pong\n  event: halite/ops/ping\n"
    );
    let mut fleet = Fleet::start_custom(&["web01"], &["*"], &[("reactors.yaml", reactors.as_str())]).await.unwrap();
    let result = async {
        std::fs::write(fleet.agent("web01").path("/etc/motd"), "drift\n")?;
        let drift = fleet.wait_for("the drift", |e| e.tag == "halite/beacon/web01/motd").await?;
        let failed = fleet.wait_for("the loop's end", |e| e.tag.ends_with("/failed")).await?;
        assert_eq!(failed.tag, "halite/reactor/pong/failed");
        let error = failed.data()["error"].as_str().unwrap_or_default();
        assert!(error.contains("8 hops deep"), "{error}");
        let chain: Vec<&BusEvent> = fleet.seen.iter().filter(|e| e.tag.starts_with("halite/ops/")).collect();
        let depths: Vec<i64> = chain.iter().map(|e| e.data()["depth"].as_i64().unwrap_or(-1)).collect();
        assert_eq!(depths, (1..=8).collect::<Vec<_>>());
        let first = chain[0];
        assert_eq!((first.tag.as_str(), first.agent()), ("halite/ops/ping", "web01"));
        assert_eq!(first.data()["from"], "motd");
        assert_eq!(first.data()["cause"], drift.id());
        for pair in chain.windows(2) {
            assert_eq!(pair[1].data()["cause"], pair[0].id(), "each hop names the event before it");
        }
        anyhow::Ok(())
    }
    .await;
    if let Err(error) = result {
        fleet.fail(&error);
    }
}

/// How many events the burst sends.
const BURST: usize = 1000;

/// 1,000 events from one agent for a reactor with `throttle: 10s` make
/// exactly two reactions: one at once, and one when the window ends for
/// everything that came inside it. Every event is accounted for: it ran a
/// reaction, was folded into one (`coalesced`), or was dropped with a
/// `throttled` event when the agent's queue was full.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_burst_through_a_throttled_reactor_reacts_exactly_twice() {
    let out = tempfile::tempdir().unwrap();
    let hook = format!("#!/bin/sh\necho \"$HALITE_EVENT_ID\" >> '{}/reactions'\n", out.path().display());
    let files = [
        ("top.yaml", "'web*': [motd]\n"),
        ("reactors.yaml", "- name: count\n  on: halite/beacon/burst01/tick\n  throttle: 10s\n  exec: hooks/count.sh\n"),
        ("hooks/count.sh", hook.as_str()),
    ];
    let mut fleet = Fleet::start_custom(&[], &["*"], &files).await.unwrap();
    let result = async {
        let listen = fleet.master().listen.clone();
        let mut agent = RawAgent::connect(&listen, "burst01", Value::map()).await?;
        fleet.wait_for("burst01's session", |e| e.tag == "halite/agent/burst01/connected").await?;
        let started = std::time::Instant::now();
        for i in 0..BURST {
            agent.raise("tick", Value::map().with("n", i64::try_from(i)?)).await?;
        }
        agent.barrier().await?;
        eprintln!("{BURST} events sent and handled by the master in {:?}", started.elapsed());
        let first = fleet.wait_for("the first reaction", |e| e.tag == "halite/reactor/count/fired").await?;
        let second = fleet.wait_for("the coalesced reaction", |e| e.tag == "halite/reactor/count/fired").await?;
        let dropped =
            count(&fleet, |e| e.tag == "halite/reactor/count/throttled" && e.data()["reason"] == "queue full");
        let coalesced = |e: &BusEvent| usize::try_from(e.data()["coalesced"].as_i64().unwrap_or(-1)).unwrap_or(0);
        eprintln!(
            "reactions: 1 + {} coalesced, 1 + {} coalesced; {dropped} dropped on a full queue",
            coalesced(&first),
            coalesced(&second)
        );
        assert_eq!(1 + coalesced(&first) + 1 + coalesced(&second) + dropped, BURST, "every event accounted for");
        assert_eq!(count(&fleet, |e| e.tag == "halite/beacon/burst01/tick"), BURST);
        assert_eq!(count(&fleet, |e| e.tag == "halite/reactor/count/throttled" && e.data()["reason"] == "throttle"), 1);
        let reactions = std::fs::read_to_string(out.path().join("reactions"))?;
        assert_eq!(
            reactions.lines().collect::<Vec<_>>(),
            [first.data()["event"].as_str().unwrap_or_default(), second.data()["event"].as_str().unwrap_or_default()]
        );
        anyhow::Ok(())
    }
    .await;
    if let Err(error) = result {
        fleet.fail(&error);
    }
}

/// `run` sends the agent a `cmd.run` job caused by the event; the command
/// sees the event only in its environment.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn run_executes_a_command_on_the_agent_with_the_event_in_its_environment() {
    let out = tempfile::tempdir().unwrap();
    let reactors = format!(
        "{RESTORE_MOTD}- name: audit\n  on: halite/beacon/*/motd\n  run: sh -c 'printf %s \"$HALITE_EVENT_ID $HALITE_AGENT\" > {}/ran'\n",
        out.path().display()
    );
    let mut fleet = Fleet::start_custom(&["web01"], &["*"], &[("reactors.yaml", reactors.as_str())]).await.unwrap();
    let result = async {
        std::fs::write(fleet.agent("web01").path("/etc/motd"), "drift\n")?;
        let drift = fleet.wait_for("the drift", |e| e.tag == "halite/beacon/web01/motd").await?;
        let fired = fleet.wait_for("the run reaction", |e| e.tag.starts_with("halite/reactor/audit/")).await?;
        assert_eq!(fired.tag, "halite/reactor/audit/fired", "{}", fired.data());
        let jobs = count(&fleet, |e| {
            e.tag.ends_with("/new") && e.data()["cause"] == drift.id() && e.data()["states"][0] == "reactor-run"
        });
        assert_eq!(jobs, 1);
        assert_eq!(std::fs::read_to_string(out.path().join("ran"))?, format!("{} web01", drift.id()));
        anyhow::Ok(())
    }
    .await;
    if let Err(error) = result {
        fleet.fail(&error);
    }
}

/// With `target`, `run` acts on every connected agent the expression
/// matches instead of the one that raised the event: a drift on db01 runs
/// the command on web01 and web02 (one job each, answered by each), not on
/// db01, and the command sees db01 as the event's agent.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_targeted_run_acts_on_the_matching_agents() {
    let out = tempfile::tempdir().unwrap();
    let reactors = format!(
        "{RESTORE_MOTD}- name: tell-web\n  on: halite/beacon/db*/motd\n  target: 'web*'\n  run: sh -c 'echo \"$HALITE_AGENT\" >> {}/ran'\n",
        out.path().display()
    );
    let mut fleet = Fleet::start_custom(&["web01", "web02", "db01"], &["*"], &[("reactors.yaml", reactors.as_str())])
        .await
        .unwrap();
    let result = async {
        std::fs::write(fleet.agent("db01").path("/etc/motd"), "drift\n")?;
        let drift = fleet.wait_for("the drift", |e| e.tag == "halite/beacon/db01/motd").await?;
        let fired = fleet.wait_for("the targeted reaction", |e| e.tag.starts_with("halite/reactor/tell-web/")).await?;
        assert_eq!(fired.tag, "halite/reactor/tell-web/fired", "{}", fired.data());
        let runs: Vec<String> = fleet
            .seen
            .iter()
            .filter(|e| {
                e.tag.ends_with("/new") && e.data()["cause"] == drift.id() && e.data()["states"][0] == "reactor-run"
            })
            .map(|e| e.agent().to_owned())
            .collect();
        let mut runs = runs;
        runs.sort();
        assert_eq!(runs, ["web01", "web02"], "one run job per targeted agent");
        assert_eq!(std::fs::read_to_string(out.path().join("ran"))?, "db01\ndb01\n");
        anyhow::Ok(())
    }
    .await;
    if let Err(error) = result {
        fleet.fail(&error);
    }
}

//! The secure link: what reaches the bus, and from whom.

use anyhow::ensure;
use halite_e2e::raw::{RawAgent, message};
use halite_e2e::{Fleet, WAIT};
use halite_link::envelope::{self, Envelope};
use halite_link::{Initiator, Keypair};
use halite_proto::{AgentMessage, Event, MasterMessage, Value};
use zeromq::{DealerSocket, Socket, SocketSend};

fn forged(tag: &str, agent: &str) -> AgentMessage {
    AgentMessage::Event(Event::new(tag, agent, Value::map().with("kind", "modify").with("forged", true)))
}

/// Garbage, pre-session messages, unaccepted keys, a known id with another
/// key, replays and other agents' tags: none of it reaches the bus, and the
/// master keeps restoring a real agent's drift. Accepting a key ends its
/// pending session, and its next session's events go through.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nothing_from_an_unaccepted_key_reaches_the_bus() {
    let mut fleet = Fleet::start_with(&["web01"], &["web*"]).await.unwrap();
    let result = async {
        let listen = fleet.master().listen.clone();
        // Not even a session: garbage, a sealed message, an oversized frame.
        let mut raw = DealerSocket::new();
        raw.connect(&listen).await?;
        for frames in [
            vec![vec![0xff; 64]],
            vec![vec![envelope::SEALED], vec![1; 40]],
            vec![vec![envelope::HELLO1], vec![7; 4 << 20]],
            vec![],
        ] {
            if !frames.is_empty() {
                raw.send(message(frames)).await?;
            }
        }
        // A session with a key nobody accepted.
        let mut intruder = RawAgent::connect(&listen, "intruder", Value::map()).await?;
        intruder.send(&forged("halite/beacon/intruder/x", "intruder")).await?;
        let replay = intruder.last_sent.clone();
        intruder.send_frames(replay.clone()).await?;
        let told = intruder.barrier().await?;
        assert!(told.contains(&MasterMessage::NotAccepted { status: "pending".into() }), "{told:?}");
        // The same sealed message replayed on a fresh connection (the
        // master may already have closed `raw` for its oversized frame).
        let mut fresh = DealerSocket::new();
        fresh.connect(&listen).await?;
        fresh.send(message(replay)).await?;
        // web01's id with another key: an impersonation stays pending.
        let mut impostor = RawAgent::connect(&listen, "web01", Value::map()).await?;
        impostor.send(&forged("halite/beacon/web01/nginx-conf", "web01")).await?;
        impostor.barrier().await?;
        let keys = fleet.keys(&["list"])?;
        assert_eq!(keys.lines().filter(|l| l.starts_with("web01 ")).count(), 2, "{keys}");
        assert!(keys.lines().any(|l| l.starts_with("web01 ") && l.contains("pending")), "{keys}");
        // The real agent is still served.
        let motd = fleet.agent("web01").path("/etc/motd");
        std::fs::write(&motd, "drift\n")?;
        let sentinel = fleet.wait_for("a real drift", |e| e.tag == "halite/beacon/web01/motd").await?;
        fleet.wait_for_restore_of(&sentinel).await?;
        assert_eq!(std::fs::read_to_string(&motd)?, "This host is managed by halite. Local edits are restored.\n");
        let forged_seen = fleet.seen.iter().filter(|e| e.data()["forged"] == true).count();
        assert_eq!(forged_seen, 0, "forged events reached the bus");
        // Once accepted, the pending session (which kept no facts) is ended
        // and the agent's next session, with the same key, is welcomed.
        fleet.keys(&["accept", "intruder"])?;
        let mut accepted = intruder.reconnect(&listen, Value::map()).await?;
        let told = accepted.barrier().await?;
        ensure!(told.iter().any(|m| matches!(m, MasterMessage::Welcome(_))), "{told:?}");
        accepted.send(&forged("halite/beacon/intruder/x", "intruder")).await?;
        fleet.wait_for("the accepted agent's event", |e| e.tag == "halite/beacon/intruder/x").await?;
        anyhow::Ok(())
    }
    .await;
    if let Err(error) = result {
        fleet.fail(&error);
    }
}

/// A batch of events is taken in order, as if sent one by one: another
/// agent's tag and an event already taken are dropped, the rest reach the
/// bus in the order sent, and one acknowledgement names every id.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_batch_of_events_is_taken_in_order_and_acknowledged_once() {
    let mut fleet = Fleet::start_with(&[], &["batcher"]).await.unwrap();
    let result = async {
        let mut raw = RawAgent::connect(&fleet.master().listen, "batcher", Value::map()).await?;
        let event = |n: i64| Event::new("halite/beacon/batcher/x", "batcher", Value::map().with("n", n));
        let first = raw.raise("x", Value::map().with("n", 0i64)).await?;
        let batch = vec![
            event(1),
            Event::new("halite/beacon/web01/x", "batcher", Value::map().with("n", -1i64)),
            first.clone(),
            event(2),
            event(3),
        ];
        let ids: Vec<_> = batch.iter().map(|e| e.id).collect();
        raw.send(&AgentMessage::Events(batch)).await?;
        // Acks go once the events are handed to the publisher, which may be
        // after the pong of a barrier: barriers until both came.
        let mut told = Vec::new();
        let both = |told: &Vec<MasterMessage>| {
            told.contains(&MasterMessage::Ack { event: first.id }) && told.contains(&MasterMessage::Acks(ids.clone()))
        };
        tokio::time::timeout(halite_e2e::WAIT, async {
            while !both(&told) {
                told.extend(raw.barrier().await?);
            }
            anyhow::Ok(())
        })
        .await
        .map_err(|_| anyhow::anyhow!("no acks: {told:?}"))??;
        let acks = told.iter().filter(|m| matches!(m, MasterMessage::Ack { .. } | MasterMessage::Acks(_))).count();
        assert_eq!(acks, 2, "one ack per message: {told:?}");
        let last = raw.raise("x", Value::map().with("n", 4i64)).await?;
        fleet.wait_for("the event after the batch", |e| e.id() == last.id.to_string()).await?;
        let taken: Vec<i64> = fleet
            .seen
            .iter()
            .filter(|e| e.agent() == "batcher" && e.tag.starts_with("halite/beacon/"))
            .map(|e| e.data()["n"].as_i64().unwrap_or(i64::MIN))
            .collect();
        assert_eq!(taken, [0, 1, 2, 3, 4]);
        anyhow::Ok(())
    }
    .await;
    if let Err(error) = result {
        fleet.fail(&error);
    }
}

/// A pending agent's drifted file stays drifted; accepting the key restores it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pending_agent_is_converged_once_accepted() {
    let mut fleet = Fleet::start_with(&[], &[]).await.unwrap();
    let result = async {
        fleet.add_agent_unconverged("db01").await?;
        fleet.wait_for("db01's pending key", |e| e.tag == "halite/key/db01/pending").await?;
        let motd = fleet.agent("db01").path("/etc/motd");
        std::fs::create_dir_all(motd.parent().unwrap())?;
        std::fs::write(&motd, "drifted\n")?;
        assert!(fleet.keys(&["list"])?.contains("pending"));
        fleet.keys(&["accept", "db*"])?;
        fleet.wait_for("db01's start-up apply", |e| e.tag.ends_with("/ret/db01")).await?;
        assert_eq!(std::fs::read_to_string(&motd)?, "This host is managed by halite. Local edits are restored.\n");
        let accepted_at = fleet.seen.iter().position(|e| e.tag == "halite/key/db01/accepted").expect("accepted event");
        let before = &fleet.seen[..accepted_at];
        assert!(
            !before.iter().any(|e| e.tag.starts_with("halite/beacon/db01") || e.tag.starts_with("halite/job/")),
            "{before:?}"
        );
        anyhow::Ok(())
    }
    .await;
    if let Err(error) = result {
        fleet.fail(&error);
    }
}

/// Deleting a key ends the agent's session before the command returns.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_deleted_key_is_cut_off_at_once() {
    let mut fleet = Fleet::start(&["web01", "db01"]).await.unwrap();
    let result = async {
        fleet.keys(&["delete", "db01"])?;
        let deleted_at = fleet.seen.len();
        std::fs::write(fleet.agent("db01").path("/etc/motd"), "drift after delete\n")?;
        std::fs::write(fleet.agent("web01").path("/etc/motd"), "sentinel\n")?;
        let sentinel = fleet.wait_for("web01's drift", |e| e.tag == "halite/beacon/web01/motd").await?;
        fleet.wait_for_restore_of(&sentinel).await?;
        let after = &fleet.seen[deleted_at..];
        assert!(
            !after.iter().any(|e| e.tag.starts_with("halite/beacon/db01")),
            "db01 still reaches the bus: {after:?}"
        );
        assert_eq!(std::fs::read_to_string(fleet.agent("db01").path("/etc/motd"))?, "drift after delete\n");
        anyhow::Ok(())
    }
    .await;
    if let Err(error) = result {
        fleet.fail(&error);
    }
}

/// An agent started again with a new key under a known id stays pending.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_known_id_with_a_new_key_stays_pending() {
    let mut fleet = Fleet::start_with(&["web01"], &["web*"]).await.unwrap();
    let result = async {
        let agent = fleet.agents.pop().expect("web01");
        let data = agent.dir.join("data");
        agent.stop().await;
        std::fs::remove_file(data.join("agent.key"))?;
        fleet.add_agent_unconverged("web01").await?;
        let pending = fleet.wait_for("the new key", |e| e.tag == "halite/key/web01/pending").await?;
        let keys = fleet.keys(&["list"])?;
        let fingerprint = pending.data()["fingerprint"].as_str().unwrap_or_default().to_owned();
        assert!(keys.lines().any(|l| l.contains(&fingerprint) && l.contains("pending")), "{keys}");
        assert!(keys.lines().any(|l| l.starts_with("web01 ") && l.contains("accepted")), "{keys}");
        anyhow::Ok(())
    }
    .await;
    if let Err(error) = result {
        fleet.fail(&error);
    }
}

/// An operator's decision is on disk when `keys` returns: a master killed
/// right after still has it, and its `auto_accept: ['*']` does not make the
/// rejected agent new again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rejected_key_stays_rejected_across_a_master_crash() {
    let mut fleet = Fleet::start(&["web01", "db01"]).await.unwrap();
    let result = async {
        let listen = fleet.master().listen.clone();
        fleet.keys(&["reject", "db01"])?;
        fleet.kill_master().await;
        fleet.restart_master(&listen).await?;
        let restarted_at = fleet.seen.len();
        fleet.wait_for("web01 back", |e| e.tag == "halite/agent/web01/connected").await?;
        let keys = fleet.keys(&["list"])?;
        assert!(keys.lines().any(|l| l.starts_with("db01 ") && l.contains("rejected")), "{keys}");
        assert!(keys.lines().any(|l| l.starts_with("web01 ") && l.contains("accepted")), "{keys}");
        assert_eq!(keys.lines().filter(|l| l.starts_with("db01 ")).count(), 1, "{keys}");
        let after = &fleet.seen[restarted_at..];
        assert!(!after.iter().any(|e| e.tag.starts_with("halite/key/db01/")), "db01 was decided again: {after:?}");
        anyhow::Ok(())
    }
    .await;
    if let Err(error) = result {
        fleet.fail(&error);
    }
}

/// An agent that pins another master's key refuses to talk and says why.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_agent_pinned_to_another_key_refuses_to_talk() {
    let fleet = Fleet::start(&[]).await.unwrap();
    let result = async {
        let dir = fleet.dir.path().join("stray");
        std::fs::create_dir_all(&dir)?;
        let wrong = Keypair::generate()?.public;
        std::fs::write(
            dir.join("agent.yaml"),
            format!(
                "id: stray\nmaster: {}\nmaster_key: {wrong}\ndata_dir: {}\nroot: {}\n",
                fleet.master().listen,
                dir.join("data").display(),
                dir.display()
            ),
        )?;
        let log = dir.join("agent.log");
        let mut child = halite_e2e::process(&fleet.binaries.agent)
            .arg("run")
            .arg("--config")
            .arg(dir.join("agent.yaml"))
            .stdout(std::process::Stdio::null())
            .stderr(std::fs::File::create(&log)?)
            .kill_on_drop(true)
            .spawn()?;
        // The agent logs its refusal; poll its log for it (bounded).
        let said = tokio::time::timeout(WAIT, async {
            loop {
                let text = std::fs::read_to_string(&log).unwrap_or_default();
                if text.contains("Refusing to talk to this master") {
                    return text;
                }
                tokio::time::sleep(std::time::Duration::from_millis(50)).await;
            }
        })
        .await?;
        assert!(said.contains(&wrong.to_string()) && said.contains(&fleet.master().key), "{said}");
        assert!(!fleet.keys(&["list"])?.contains("stray"), "the agent must not have said who it is");
        child.kill().await?;
        anyhow::Ok(())
    }
    .await;
    if let Err(error) = result {
        fleet.fail(&error);
    }
}

/// One round of attack: `connections` connections that each start a
/// handshake and never finish it, send garbage, and replay a sealed frame.
async fn flood(endpoint: &str, connections: usize, replay: &[Vec<u8>]) -> anyhow::Result<Vec<DealerSocket>> {
    let keypair = Keypair::generate()?;
    let mut sockets = Vec::with_capacity(connections);
    for _ in 0..connections {
        let mut socket = DealerSocket::new();
        socket.connect(endpoint).await?;
        let (_, first) = Initiator::start(&keypair)?;
        socket.send(message(Envelope::handshake(envelope::HELLO1, first))).await?;
        socket.send(message(vec![vec![0xee; 512]])).await?;
        socket.send(message(replay.to_vec())).await?;
        sockets.push(socket);
    }
    Ok(sockets)
}

/// More half-open handshakes than the master keeps, garbage and replays, in
/// rounds: a real drift is restored during the attack, and the master's
/// memory after the second round is no larger than after the first (within
/// a margin), so it does not grow with the attack.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flood_of_handshakes_does_not_starve_accepted_agents() {
    let mut fleet = Fleet::start(&["web01"]).await.unwrap();
    let result = async {
        let listen = fleet.master().listen.clone();
        let pid = fleet.master().pid().expect("master pid");
        let mut recorder = RawAgent::connect(&listen, "recorder", Value::map()).await?;
        recorder.send(&AgentMessage::Ping).await?;
        let replay = recorder.last_sent.clone();
        let per_round = halite_master::server::link::MAX_HANDSHAKES + 200;
        let first_round = flood(&listen, per_round, &replay).await?;
        // A drift during the attack is still restored.
        let motd = fleet.agent("web01").path("/etc/motd");
        std::fs::write(&motd, "drift under attack\n")?;
        let event = fleet.wait_for("the drift", |e| e.tag == "halite/beacon/web01/motd").await?;
        fleet.wait_for_restore_of(&event).await?;
        recorder.barrier().await?;
        let after_first = halite_e2e::rss_kib(pid).unwrap_or(0);
        drop(first_round);
        let second_round = flood(&listen, per_round, &replay).await?;
        recorder.barrier().await?;
        let after_second = halite_e2e::rss_kib(pid).unwrap_or(0);
        drop(second_round);
        eprintln!("master RSS: {after_first} KiB after round 1, {after_second} KiB after round 2");
        assert!(
            after_second <= after_first + 16 * 1024,
            "memory grew with the attack: {after_first} -> {after_second} KiB"
        );
        anyhow::Ok(())
    }
    .await;
    if let Err(error) = result {
        fleet.fail(&error);
    }
}

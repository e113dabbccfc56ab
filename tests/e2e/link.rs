//! What the master does with input that is not from a well-behaved agent.

use halite_e2e::Fleet;
use halite_proto::{AgentMessage, Event, Hello, MasterMessage, Value};
use zeromq::{DealerSocket, Socket, SocketRecv, SocketSend, ZmqMessage};

fn frame(message: &AgentMessage) -> ZmqMessage {
    ZmqMessage::from(halite_proto::encode(message))
}

fn forged(tag: &str, agent: &str) -> Event {
    Event::new(tag, agent, Value::map().with("kind", "modify").with("forged", true))
}

/// Garbage, events without a session and events an agent may not raise
/// never reach the bus; the master keeps serving real agents.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nothing_reaches_the_bus_without_a_session_or_for_another_agent() {
    let mut fleet = Fleet::start(&["web01"]).await.unwrap();
    let result = async {
        let mut raw = DealerSocket::new();
        raw.connect(&fleet.master().listen).await?;
        // Garbage, an empty frame, a wrong version, a truncated message.
        for bytes in [vec![0xff; 64], vec![], vec![9, 1, 2, 3], halite_proto::encode(&AgentMessage::Ping)[..1].to_vec()]
        {
            raw.send(ZmqMessage::from(bytes)).await?;
        }
        // An event before any hello: there is no session to carry it.
        raw.send(frame(&AgentMessage::Event(forged("halite/beacon/web01/nginx-conf", "web01")))).await?;
        // A session as `intruder`, then events in web01's name and tags.
        let hello = Hello { agent: "intruder".into(), version: "0".into(), facts: Value::map() };
        raw.send(frame(&AgentMessage::Hello(hello))).await?;
        raw.send(frame(&AgentMessage::Event(forged("halite/beacon/web01/nginx-conf", "web01")))).await?;
        raw.send(frame(&AgentMessage::Event(forged("halite/beacon/web01/nginx-conf", "intruder")))).await?;
        raw.send(frame(&AgentMessage::Event(forged("halite/job/x/new", "intruder")))).await?;
        // The master handles one connection's messages in order, so its
        // answer to a ping means everything above was handled (and anything
        // it let through already published).
        raw.send(frame(&AgentMessage::Ping)).await?;
        loop {
            let reply = tokio::time::timeout(halite_e2e::WAIT, raw.recv()).await??;
            let message: MasterMessage = halite_proto::decode(reply.get(0).expect("a frame"))?;
            if message == MasterMessage::Pong {
                break;
            }
        }
        fleet.wait_for("the intruder's session", |e| e.tag == "halite/agent/intruder/connected").await?;
        // A real drift is still restored, and serves as the sentinel: it is
        // published after anything the master let through above.
        let motd = fleet.agent("web01").path("/etc/motd");
        std::fs::write(&motd, "drift\n")?;
        let sentinel = fleet.wait_for("a real drift", |e| e.tag == "halite/beacon/web01/motd").await?;
        fleet.wait_for_restore_of(&sentinel).await?;
        let forged_seen: Vec<&str> =
            fleet.seen.iter().filter(|e| e.data()["forged"] == true).map(|e| e.tag.as_str()).collect();
        assert!(forged_seen.is_empty(), "forged events reached the bus: {forged_seen:?}");
        anyhow::Ok(())
    }
    .await;
    if let Err(error) = result {
        fleet.fail(&error);
    }
}

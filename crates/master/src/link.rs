//! The master's end of the link: one ZeroMQ ROUTER for every agent.
//!
//! Before a peer has a session only a hello is handled; anything else it
//! sends is dropped (SPEC §5: the pre-session allow-list; the Noise
//! handshake takes the hello's place). Unreadable input is logged, counted
//! and dropped; it never stops the loop.

use std::net::SocketAddr;
use std::sync::Arc;

use bytes::Bytes;
use futures_util::StreamExt;
use halite_proto::event::tag;
use halite_proto::{AgentMessage, Event, Hello, MasterMessage, Value, Welcome};
use tokio_util::sync::CancellationToken;
use zeromq::{RouterRecvHalf, RouterSocket, Socket, SocketEvent, SocketRecv, ZmqMessage};

use crate::daemon::Master;

/// The listen backlog: the `zeromq` crate's own bind uses 1024, too few for
/// a fleet reconnecting at once after a master restart (SPEC §7).
pub const LISTEN_BACKLOG: i32 = 16_384;

/// Binds the ROUTER on `endpoint` (`tcp://host:port`) with our own
/// listener; returns the socket and the endpoint actually bound.
pub async fn bind(endpoint: &str) -> anyhow::Result<(RouterSocket, String)> {
    let address: SocketAddr = endpoint
        .strip_prefix("tcp://")
        .and_then(|a| a.parse().ok())
        .ok_or_else(|| anyhow::anyhow!("`listen: {endpoint}` is not of the form tcp://IP:PORT"))?;
    let socket = socket2::Socket::new(socket2::Domain::for_address(address), socket2::Type::STREAM, None)?;
    socket.set_reuse_address(true)?;
    socket.bind(&address.into()).map_err(|e| anyhow::anyhow!("cannot listen on {endpoint}: {e}"))?;
    socket.listen(LISTEN_BACKLOG)?;
    socket.set_nonblocking(true)?;
    let listener: std::net::TcpListener = socket.into();
    let mut router = RouterSocket::new();
    let bound =
        router.bind_listener(listener).await.map_err(|e| anyhow::anyhow!("cannot listen on {endpoint}: {e}"))?;
    Ok((router, bound.to_string()))
}

/// Receives from every agent until `cancel` fires.
pub async fn serve(
    mut recv: RouterRecvHalf,
    mut monitor: futures_util::stream::BoxStream<'static, SocketEvent>,
    master: Arc<Master>,
    cancel: CancellationToken,
) {
    loop {
        tokio::select! {
            () = cancel.cancelled() => return,
            message = recv.recv() => match message {
                Ok(message) => handle(&master, message).await,
                Err(error) => {
                    tracing::error!(%error, "The agent link failed.");
                    return;
                }
            },
            Some(event) = monitor.next() => {
                if let SocketEvent::Disconnected(peer) = event {
                    let peer: Bytes = peer.into();
                    if let Some(agent) = master.sessions.close_peer(&peer) {
                        tracing::info!(agent = %agent, "Agent disconnected.");
                        master.bus.publish(Event::new(tag::agent(&agent, "disconnected"), agent.as_str(), Value::map()));
                    }
                }
            }
        }
    }
}

async fn handle(master: &Master, message: ZmqMessage) {
    let (Some(peer), Some(frame), 2) = (message.get(0).cloned(), message.get(1), message.len()) else {
        tracing::debug!(frames = message.len(), "Dropping a message of the wrong shape.");
        return;
    };
    let decoded = halite_proto::decode::<AgentMessage>(frame);
    let Some(agent) = master.sessions.agent_of(&peer) else {
        match decoded {
            Ok(AgentMessage::Hello(hello)) => welcome(master, peer, hello).await,
            Ok(_) => tracing::debug!("Dropping a message from a peer without a session."),
            Err(error) => tracing::info!(%error, "Dropping an unreadable frame from a peer without a session."),
        }
        return;
    };
    match decoded {
        Err(error) => tracing::warn!(agent = %agent, %error, "Dropping an unreadable frame."),
        Ok(AgentMessage::Hello(hello)) => welcome(master, peer, hello).await,
        Ok(AgentMessage::Ping) => {
            let _ = master.sessions.send_to_peer(peer, &MasterMessage::Pong).await;
        }
        Ok(AgentMessage::JobResult(result)) => master.jobs.complete(&agent, result),
        Ok(AgentMessage::Event(event)) => {
            let id = event.id;
            // An agent speaks only for itself, and only in its beacon tags.
            if event.agent != agent || !event.tag.starts_with(&format!("halite/beacon/{agent}/")) {
                tracing::warn!(agent = %agent, tag = %event.tag, "Dropping an event an agent may not raise.");
            } else if master.sessions.first_sight(&agent, id) {
                let event = master.bus.publish(event);
                master.engine.on_event(&event);
            } else {
                tracing::debug!(agent = %agent, event = %id, "Dropping a duplicate event.");
            }
            let _ = master.sessions.send_to_peer(peer, &MasterMessage::Ack { event: id }).await;
        }
    }
}

async fn welcome(master: &Master, peer: Bytes, hello: Hello) {
    if !halite_agent::config::valid_id(&hello.agent) {
        tracing::warn!(agent = %hello.agent, "Refusing a hello with an unusable agent id.");
        return;
    }
    let agent = hello.agent.clone();
    let beacons = master.tree().beacons.for_agent(&agent);
    master.sessions.open(&agent, peer.clone(), hello.facts.clone());
    if let Err(error) = master.sessions.send_to_peer(peer, &MasterMessage::Welcome(Welcome { beacons })).await {
        tracing::warn!(agent = %agent, %error, "Cannot welcome the agent.");
        return;
    }
    tracing::info!(agent = %agent, version = %hello.version, "Agent connected.");
    master.bus.publish(Event::new(
        tag::agent(&agent, "connected"),
        agent.as_str(),
        Value::map().with("version", hello.version).with("facts", hello.facts),
    ));
    master.engine.highstate(&agent);
}

/// The router's monitor as a boxed stream (the crate's receiver type is not
/// nameable without another dependency).
pub fn monitor(router: &mut RouterSocket) -> futures_util::stream::BoxStream<'static, SocketEvent> {
    router.monitor().boxed()
}

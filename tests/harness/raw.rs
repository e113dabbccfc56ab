//! A hand-driven agent for tests that need more events, faster, than a
//! beacon makes: its own key, the real Noise handshake, sealed messages on
//! a ZeroMQ DEALER. It answers the jobs the master sends it with an empty
//! result, so its worker on the master is never left waiting.

use bytes::Bytes;
use halite_link::envelope::{self, Envelope};
use halite_link::{Initiator, Keypair, Opener, Sealer};
use halite_proto::{AgentMessage, Event, Hello, JobResult, MasterMessage, Value};
use zeromq::{DealerSocket, Socket, SocketRecv, SocketSend, ZmqMessage};

use crate::WAIT;

/// Envelope frames as one ZeroMQ message.
pub fn message(frames: Vec<Vec<u8>>) -> ZmqMessage {
    ZmqMessage::try_from(frames.into_iter().map(Bytes::from).collect::<Vec<_>>()).expect("frames")
}

pub struct RawAgent {
    pub id: String,
    /// Its static key, kept for [`RawAgent::reconnect`].
    keypair: Keypair,
    socket: DealerSocket,
    sealer: Sealer,
    opener: Opener,
    /// The last sealed message sent, for replaying.
    pub last_sent: Vec<Vec<u8>>,
}

impl RawAgent {
    /// Connects as `id` with a fresh key and `facts`; the master decides
    /// whether the key is accepted (use an `auto_accept` glob).
    pub async fn connect(endpoint: &str, id: &str, facts: Value) -> anyhow::Result<RawAgent> {
        RawAgent::connect_with_key(endpoint, id, facts, &Keypair::generate()?).await
    }

    /// A new connection and session with this agent's key and id.
    pub async fn reconnect(&self, endpoint: &str, facts: Value) -> anyhow::Result<RawAgent> {
        RawAgent::connect_with_key(endpoint, &self.id, facts, &self.keypair).await
    }

    /// As [`RawAgent::connect`], with a given key: the same agent coming
    /// back.
    pub async fn connect_with_key(
        endpoint: &str,
        id: &str,
        facts: Value,
        keypair: &Keypair,
    ) -> anyhow::Result<RawAgent> {
        let keypair = keypair.clone();
        let mut socket = DealerSocket::new();
        socket.connect(endpoint).await?;
        let (mut initiator, first) = Initiator::start(&keypair)?;
        socket.send(message(Envelope::handshake(envelope::HELLO1, first))).await?;
        let reply = tokio::time::timeout(WAIT, socket.recv()).await??;
        let frames: Vec<&[u8]> = reply.iter().map(|f| f.as_ref()).collect();
        let Envelope::Hello2(reply) = Envelope::parse(&frames)? else { anyhow::bail!("no handshake reply") };
        initiator.read_reply(reply)?;
        let hello = AgentMessage::Hello(Hello { agent: id.into(), version: "raw".into(), facts });
        let (last, sealer, opener) = initiator.finish(&halite_proto::encode(&hello))?;
        socket.send(message(Envelope::handshake(envelope::HELLO3, last))).await?;
        Ok(RawAgent { id: id.to_owned(), keypair, socket, sealer, opener, last_sent: Vec::new() })
    }

    pub async fn send(&mut self, message_: &AgentMessage) -> anyhow::Result<()> {
        let frames = Envelope::sealed(self.sealer.seal(&halite_proto::encode(message_))?);
        self.last_sent.clone_from(&frames);
        self.socket.send(message(frames)).await?;
        Ok(())
    }

    /// Sends frames as they are: a replay, or garbage.
    pub async fn send_frames(&mut self, frames: Vec<Vec<u8>>) -> anyhow::Result<()> {
        self.socket.send(message(frames)).await?;
        Ok(())
    }

    /// Seals and sends `payload` as it is (a message encoded by hand).
    pub async fn send_payload(&mut self, payload: &[u8]) -> anyhow::Result<()> {
        let frames = Envelope::sealed(self.sealer.seal(payload)?);
        self.socket.send(message(frames)).await?;
        Ok(())
    }

    /// Raises an event in this agent's beacon tag `halite/beacon/<id>/<beacon>`.
    pub async fn raise(&mut self, beacon: &str, data: Value) -> anyhow::Result<Event> {
        let event = Event::new(format!("halite/beacon/{}/{beacon}", self.id), self.id.as_str(), data);
        self.send(&AgentMessage::Event(event.clone())).await?;
        Ok(event)
    }

    /// The next job the master sends, unanswered (what came before it is
    /// dropped).
    pub async fn next_job(&mut self) -> anyhow::Result<halite_proto::Job> {
        loop {
            let reply = tokio::time::timeout(WAIT, self.socket.recv()).await??;
            let frames: Vec<&[u8]> = reply.iter().map(|f| f.as_ref()).collect();
            let Envelope::Sealed(chunks) = Envelope::parse(&frames)? else { anyhow::bail!("unsealed reply") };
            if let MasterMessage::Job(job) = halite_proto::decode(&self.opener.open(chunks)?)? {
                return Ok(job);
            }
        }
    }

    /// Pings and waits for the pong: the master handles one connection's
    /// messages in order, so everything sent before has been handled (and
    /// what it let through, queued for publishing and matched). Returns what
    /// came before the pong; jobs are answered on the way. Acks of events
    /// and results may come after the pong: they wait for the publisher's
    /// hand-off and the store's commit.
    pub async fn barrier(&mut self) -> anyhow::Result<Vec<MasterMessage>> {
        self.send(&AgentMessage::Ping).await?;
        let mut seen = Vec::new();
        loop {
            let reply = tokio::time::timeout(WAIT, self.socket.recv()).await??;
            let frames: Vec<&[u8]> = reply.iter().map(|f| f.as_ref()).collect();
            let Envelope::Sealed(chunks) = Envelope::parse(&frames)? else { anyhow::bail!("unsealed reply") };
            let message: MasterMessage = halite_proto::decode(&self.opener.open(chunks)?)?;
            match message {
                MasterMessage::Pong => return Ok(seen),
                MasterMessage::Job(job) => {
                    self.send(&AgentMessage::JobResult(JobResult { job: job.id, results: Vec::new() })).await?;
                    seen.push(MasterMessage::Job(job));
                }
                other => seen.push(other),
            }
        }
    }
}

/// A ZMTP 3.0 greeting with the NULL mechanism (64 bytes), as any peer
/// opens a connection: what an unauthenticated client sends first.
pub fn zmtp_greeting() -> Vec<u8> {
    let mut greeting = vec![0u8; 64];
    greeting[0] = 0xff;
    greeting[9] = 0x7f;
    greeting[10] = 3;
    greeting[12..16].copy_from_slice(b"NULL");
    greeting
}

/// The greeting and a READY command as a `socket_type` socket (`DEALER`,
/// `SUB`): past them the peer is in the message phase, still
/// unauthenticated.
pub fn zmtp_opening(socket_type: &str) -> Vec<u8> {
    let mut bytes = zmtp_greeting();
    let mut ready = vec![5];
    ready.extend_from_slice(b"READY");
    ready.push(11);
    ready.extend_from_slice(b"Socket-Type");
    let len = u32::try_from(socket_type.len()).expect("a socket type name");
    ready.extend_from_slice(&len.to_be_bytes());
    ready.extend_from_slice(socket_type.as_bytes());
    bytes.extend([0b0000_0100, u8::try_from(ready.len()).expect("a short READY")]);
    bytes.extend(ready);
    bytes
}

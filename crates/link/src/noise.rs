//! The Noise XX handshake and sealed transport.
//!
//! ```text
//! agent (initiator)                      master (responder)
//!   -> e                                   (Hello1)
//!   <- e, ee, s, es                        (Hello2: the master's static key)
//!   -> s, se, [agent hello, encrypted]     (Hello3: the agent's static key)
//! ```
//! The agent checks the master's static key after the second message and
//! stops there if it is not the pinned one. A new connection is always a
//! new handshake, so every session has fresh ephemeral keys.
//!
//! After the handshake each message is sealed in chunks of at most
//! [`MAX_CHUNK`] bytes (Noise messages are at most 64 KiB), each with the
//! next nonce. Nonces are implicit and strictly sequential: a chunk that
//! is replayed, reordered, tampered with or from another session fails to
//! open, and a message that fails leaves the receiver's nonce where it was.

use snow::{HandshakeState, StatelessTransportState};

use crate::LinkError;
use crate::keys::{Keypair, PATTERN, PublicKey};

/// Binds the handshake to this protocol; a peer speaking another version
/// fails the handshake instead of misreading messages.
const PROLOGUE: &[u8] = b"halite link 1";
/// Noise's own limit on one message.
pub const NOISE_MAX: usize = 65_535;
const TAG: usize = 16;
/// Plaintext bytes per sealed chunk.
pub const MAX_CHUNK: usize = NOISE_MAX - TAG;

fn builder(keypair: &Keypair) -> Result<snow::Builder<'_>, LinkError> {
    let params = PATTERN.parse().map_err(|e| LinkError::Handshake(format!("{e}")))?;
    Ok(snow::Builder::new(params).prologue(PROLOGUE)?.local_private_key(keypair.private())?)
}

/// The agent's side, after sending the first message.
pub struct Initiator {
    state: HandshakeState,
}

impl std::fmt::Debug for Initiator {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Initiator")
    }
}

impl Initiator {
    /// Starts a handshake; returns the first message.
    pub fn start(keypair: &Keypair) -> Result<(Initiator, Vec<u8>), LinkError> {
        let mut state = builder(keypair)?.build_initiator()?;
        let mut message = vec![0u8; NOISE_MAX];
        let len = state.write_message(&[], &mut message)?;
        message.truncate(len);
        // The buffer was sized for the largest Noise message; a queued
        // handshake message keeps only its bytes.
        message.shrink_to_fit();
        Ok((Initiator { state }, message))
    }

    /// Reads the master's answer; returns its static key, to be checked
    /// before [`Initiator::finish`].
    pub fn read_reply(&mut self, reply: &[u8]) -> Result<PublicKey, LinkError> {
        let mut payload = vec![0u8; NOISE_MAX];
        self.state.read_message(reply, &mut payload)?;
        self.state
            .get_remote_static()
            .and_then(PublicKey::from_slice)
            .ok_or(LinkError::Handshake("the master sent no static key".into()))
    }

    /// Sends `payload` (the hello) in the last message; the session is open.
    pub fn finish(mut self, payload: &[u8]) -> Result<(Vec<u8>, Sealer, Opener), LinkError> {
        let mut message = vec![0u8; NOISE_MAX];
        let len = self.state.write_message(payload, &mut message)?;
        message.truncate(len);
        // The buffer was sized for the largest Noise message; a queued
        // handshake message keeps only its bytes.
        message.shrink_to_fit();
        let (sealer, opener) = split(self.state.into_stateless_transport_mode()?);
        Ok((message, sealer, opener))
    }
}

/// The master's side, after answering the first message.
pub struct Responder {
    state: HandshakeState,
}

impl std::fmt::Debug for Responder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Responder")
    }
}

/// A finished handshake, as the master sees it.
#[derive(Debug)]
pub struct Accepted {
    pub sealer: Sealer,
    pub opener: Opener,
    /// The agent's static key, proven by the handshake.
    pub remote: PublicKey,
    /// The agent's hello, decrypted.
    pub payload: Vec<u8>,
}

impl Responder {
    /// Reads an agent's first message; returns the answer to send.
    pub fn respond(keypair: &Keypair, first: &[u8]) -> Result<(Responder, Vec<u8>), LinkError> {
        let mut state = builder(keypair)?.build_responder()?;
        let mut payload = vec![0u8; NOISE_MAX];
        state.read_message(first, &mut payload)?;
        let mut message = vec![0u8; NOISE_MAX];
        let len = state.write_message(&[], &mut message)?;
        message.truncate(len);
        // The buffer was sized for the largest Noise message; a queued
        // handshake message keeps only its bytes.
        message.shrink_to_fit();
        Ok((Responder { state }, message))
    }

    /// Reads the agent's last message.
    pub fn finish(mut self, last: &[u8]) -> Result<Accepted, LinkError> {
        let mut payload = vec![0u8; NOISE_MAX];
        let len = self.state.read_message(last, &mut payload)?;
        payload.truncate(len);
        let remote = self
            .state
            .get_remote_static()
            .and_then(PublicKey::from_slice)
            .ok_or(LinkError::Handshake("the agent sent no static key".into()))?;
        let (sealer, opener) = split(self.state.into_stateless_transport_mode()?);
        Ok(Accepted { sealer, opener, remote, payload })
    }
}

fn split(transport: StatelessTransportState) -> (Sealer, Opener) {
    let transport = std::sync::Arc::new(transport);
    (Sealer { transport: transport.clone(), nonce: 0 }, Opener { transport, nonce: 0 })
}

/// Seals outgoing messages. One per session; messages must be sent in the
/// order they were sealed.
pub struct Sealer {
    transport: std::sync::Arc<StatelessTransportState>,
    nonce: u64,
}

/// Opens incoming messages. One per session.
pub struct Opener {
    transport: std::sync::Arc<StatelessTransportState>,
    nonce: u64,
}

impl std::fmt::Debug for Sealer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Sealer(nonce {})", self.nonce)
    }
}

impl std::fmt::Debug for Opener {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Opener(nonce {})", self.nonce)
    }
}

impl Sealer {
    /// Seals `plaintext` into one or more chunks.
    pub fn seal(&mut self, plaintext: &[u8]) -> Result<Vec<Vec<u8>>, LinkError> {
        let mut chunks = Vec::with_capacity(plaintext.len() / MAX_CHUNK + 1);
        let mut pieces = plaintext.chunks(MAX_CHUNK).peekable();
        if pieces.peek().is_none() {
            chunks.push(self.seal_chunk(&[])?);
        }
        for piece in pieces {
            chunks.push(self.seal_chunk(piece)?);
        }
        Ok(chunks)
    }

    fn seal_chunk(&mut self, piece: &[u8]) -> Result<Vec<u8>, LinkError> {
        let mut out = vec![0u8; piece.len() + TAG];
        let len = self.transport.write_message(self.nonce, piece, &mut out)?;
        out.truncate(len);
        self.nonce += 1;
        Ok(out)
    }
}

impl Opener {
    /// Opens the chunks of one message. On failure nothing is consumed.
    pub fn open<'a>(&mut self, chunks: impl IntoIterator<Item = &'a [u8]>) -> Result<Vec<u8>, LinkError> {
        let mut nonce = self.nonce;
        let mut plaintext = Vec::new();
        for chunk in chunks {
            if chunk.len() < TAG || chunk.len() > NOISE_MAX {
                return Err(LinkError::Open);
            }
            let start = plaintext.len();
            plaintext.resize(start + chunk.len() - TAG, 0);
            let len =
                self.transport.read_message(nonce, chunk, &mut plaintext[start..]).map_err(|_| LinkError::Open)?;
            plaintext.truncate(start + len);
            nonce += 1;
        }
        if nonce == self.nonce {
            return Err(LinkError::Malformed("a sealed message without chunks"));
        }
        self.nonce = nonce;
        Ok(plaintext)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A finished handshake: the agent's sealer and the master's side.
    fn handshake() -> (Sealer, Accepted) {
        let agent = Keypair::generate().unwrap();
        let master = Keypair::generate().unwrap();
        let (mut initiator, first) = Initiator::start(&agent).unwrap();
        let (responder, reply) = Responder::respond(&master, &first).unwrap();
        initiator.read_reply(&reply).unwrap();
        let (last, sealer, _) = initiator.finish(b"hello").unwrap();
        (sealer, responder.finish(&last).unwrap())
    }

    #[test]
    fn both_sides_learn_each_others_key_and_talk() {
        let agent = Keypair::generate().unwrap();
        let master = Keypair::generate().unwrap();
        let (mut initiator, first) = Initiator::start(&agent).unwrap();
        let (responder, reply) = Responder::respond(&master, &first).unwrap();
        assert_eq!(initiator.read_reply(&reply).unwrap(), master.public);
        let (last, mut agent_sealer, mut agent_opener) = initiator.finish(b"hello").unwrap();
        let mut accepted = responder.finish(&last).unwrap();
        assert_eq!(accepted.remote, agent.public);
        assert_eq!(accepted.payload, b"hello");
        let big = vec![7u8; 3 * MAX_CHUNK + 10];
        let chunks = agent_sealer.seal(&big).unwrap();
        assert_eq!(chunks.len(), 4);
        assert_eq!(accepted.opener.open(chunks.iter().map(Vec::as_slice)).unwrap(), big);
        let reply = accepted.sealer.seal(b"").unwrap();
        assert_eq!(agent_opener.open(reply.iter().map(Vec::as_slice)).unwrap(), b"");
    }

    #[test]
    fn replayed_reordered_and_tampered_messages_fail_and_consume_nothing() {
        let (mut sealer, mut accepted) = handshake();
        let one = sealer.seal(b"one").unwrap();
        let two = sealer.seal(b"two").unwrap();
        let three = sealer.seal(b"three").unwrap();
        // Out of order.
        assert!(accepted.opener.open(two.iter().map(Vec::as_slice)).is_err());
        assert_eq!(accepted.opener.open(one.iter().map(Vec::as_slice)).unwrap(), b"one");
        // Replayed.
        assert!(accepted.opener.open(one.iter().map(Vec::as_slice)).is_err());
        // Tampered.
        let mut bad = two.clone();
        bad[0][0] ^= 1;
        assert!(accepted.opener.open(bad.iter().map(Vec::as_slice)).is_err());
        // The genuine stream goes on.
        assert_eq!(accepted.opener.open(two.iter().map(Vec::as_slice)).unwrap(), b"two");
        assert_eq!(accepted.opener.open(three.iter().map(Vec::as_slice)).unwrap(), b"three");
    }

    #[test]
    fn a_message_from_another_session_does_not_open() {
        let (mut sealer_a, _) = handshake();
        let (_, mut accepted_b) = handshake();
        let message = sealer_a.seal(b"x").unwrap();
        assert!(accepted_b.opener.open(message.iter().map(Vec::as_slice)).is_err());
    }

    #[test]
    fn garbage_handshakes_fail_cleanly() {
        let master = Keypair::generate().unwrap();
        for garbage in [&b""[..], &[0u8; 3][..], &[0xffu8; 200][..]] {
            let _ = Responder::respond(&master, garbage);
        }
        let agent = Keypair::generate().unwrap();
        let (_, first) = Initiator::start(&agent).unwrap();
        let (responder, _) = Responder::respond(&master, &first).unwrap();
        assert!(responder.finish(&[1, 2, 3]).is_err());
    }
}

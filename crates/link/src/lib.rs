//! halite's secure session layer, shared by the agent and the master.
//!
//! Both sides hold a static X25519 key pair ([`keys`]). A connection opens
//! with a Noise XX handshake ([`noise`]): three messages that authenticate
//! both static keys and give forward secrecy; the agent's hello rides in the
//! third, encrypted. Every later message is sealed ([`noise::Sealer`]) and
//! opened ([`noise::Opener`]) with strictly sequential nonces, so a
//! replayed, reordered or tampered frame fails to open. [`envelope`] says how
//! handshake and sealed messages sit in ZeroMQ frames; [`transport`] the
//! limits both ends' ZeroMQ sockets enforce before any session exists.
//!
//! Nothing here does network I/O; key files are the only files touched.

#![forbid(unsafe_code)]

pub mod envelope;
pub mod keys;
pub mod noise;
pub mod transport;

pub use envelope::Envelope;
pub use keys::{Keypair, PublicKey};
pub use noise::{Initiator, Opener, Responder, Sealer};

#[derive(Debug, thiserror::Error)]
pub enum LinkError {
    #[error("handshake failed: {0}")]
    Handshake(String),
    #[error("a sealed message did not open (replayed, reordered, tampered or from another session)")]
    Open,
    #[error("malformed message: {0}")]
    Malformed(&'static str),
    #[error("message of {0} bytes is over the limit")]
    TooLarge(usize),
}

impl From<snow::Error> for LinkError {
    fn from(error: snow::Error) -> Self {
        LinkError::Handshake(error.to_string())
    }
}

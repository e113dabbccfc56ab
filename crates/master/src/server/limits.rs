//! The wire limits master.yaml may set (`max_event_bytes`,
//! `handshakes_per_source`) and their defaults: read by the configuration,
//! held in [`crate::server::context::Master`], enforced by the link
//! (`server/link.rs`). A leaf module, so that all three may import it.

/// Handshakes one source address may have at once (waiting, in a worker,
/// or half-open), by default (`handshakes_per_source` in master.yaml): a
/// flood from one address cannot take the others' turn. The address is the
/// TCP peer's, so it is not spoofable, which is what a cookie round proves
/// on a datagram transport. Agents behind one NAT share it: a refused one
/// reconnects with its backoff.
pub const PER_SOURCE_HANDSHAKES: usize = 64;
/// The largest event taken from an agent, by default (`max_event_bytes` in
/// master.yaml): its tag, agent and data's text plus one byte per value.
/// A larger one is acknowledged and dropped, with a warning.
pub const MAX_EVENT_BYTES: usize = 1 << 20;
/// The wire limits set in master.yaml.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    pub max_event_bytes: usize,
    pub handshakes_per_source: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits { max_event_bytes: MAX_EVENT_BYTES, handshakes_per_source: PER_SOURCE_HANDSHAKES }
    }
}

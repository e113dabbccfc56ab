//! The transport limits of the link: what each end's ZeroMQ socket accepts
//! from a peer before any session exists, and the descriptors the process
//! may hold for its connections.
//!
//! The limits are enforced by the (patched, vendored) `zeromq` codec when a
//! frame header arrives, before anything is allocated for the body
//! (vendor/zeromq/PATCHES.md). They are sized to the largest link message
//! halite sends: a kind frame and up to [`MAX_CHUNKS`] sealed chunks of at
//! most one Noise message each.

use std::time::Duration;

use zeromq::SocketOptions;

use crate::envelope::MAX_CHUNKS;
use crate::noise::NOISE_MAX;

/// The largest frame on the link: one Noise message (a handshake message or
/// a sealed chunk). A peer declaring a larger frame is disconnected at the
/// frame's header.
pub const MAX_FRAME: usize = NOISE_MAX;
/// Frames in one link message: the kind frame and the chunks.
pub const MAX_FRAMES: usize = MAX_CHUNKS + 1;
/// Bytes in one link message (every frame at its largest).
pub const MAX_MESSAGE: usize = MAX_FRAMES * MAX_FRAME;
/// A peer that has not completed the ZMTP greeting and READY exchange in
/// this long is dropped, so silent connections do not hold descriptors.
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// Messages queued for one peer. On the master's ROUTER a peer whose queue
/// is full (it stopped reading) is disconnected and the send fails; the
/// master never waits on one agent. The agent's DEALER waits for room.
pub const SEND_QUEUE: usize = 8192;

/// Socket options for either end of the link (the master's ROUTER, an
/// agent's DEALER), with the given handshake timeout.
pub fn socket_options(handshake_timeout: Duration) -> SocketOptions {
    let mut options = SocketOptions::default();
    options
        .max_frame_size(MAX_FRAME)
        .max_message_size(MAX_MESSAGE)
        .max_message_frames(MAX_FRAMES)
        .handshake_timeout(handshake_timeout)
        .send_queue_capacity(SEND_QUEUE);
    options
}

/// Raises this process's soft open-file limit to its hard limit (one
/// descriptor per connection); returns the new soft limit.
pub fn raise_open_files() -> std::io::Result<u64> {
    rlimit::increase_nofile_limit(u64::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_largest_sealed_message_fits_the_limits() {
        // halite-proto's 32 MiB frame in chunks, plus the kind frame.
        let chunks = (32 * 1024 * 1024usize).div_ceil(crate::noise::MAX_CHUNK);
        assert!(chunks <= MAX_CHUNKS);
        let (frames, bytes) = (1 + chunks, 1 + chunks * NOISE_MAX);
        assert!(frames <= MAX_FRAMES);
        assert!(bytes <= MAX_MESSAGE);
    }
}

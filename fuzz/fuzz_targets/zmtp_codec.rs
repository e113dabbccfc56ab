//! The (patched, vendored) ZMTP decoder every halite socket reads with:
//! whatever the bytes and however they are split into reads, an error or
//! messages, never a panic, and never a buffer sized from a length the
//! peer declared (vendor/zeromq/PATCHES.md). The limits are set small so
//! the fuzzer reaches them.
#![no_main]

use bytes::BytesMut;
use libfuzzer_sys::fuzz_target;
use zeromq::SocketOptions;
use zeromq::__fuzz::{Decoder, codec};

/// The largest read the connection reader makes (its default maximum chunk).
const READ_CHUNK: usize = 64 * 1024;

fuzz_target!(|data: &[u8]| {
    // The first byte picks how the rest is split into reads.
    let Some((&split, data)) = data.split_first() else { return };
    let step = usize::from(split) * 64 + 1;
    let mut options = SocketOptions::default();
    options.max_frame_size(4096).max_message_size(16 * 1024).max_message_frames(64);
    let mut decoder = codec(&options);
    let mut buffer = BytesMut::new();
    let mut fed = 0;
    for read in data.chunks(step) {
        buffer.extend_from_slice(read);
        fed += read.len();
        loop {
            match decoder.decode(&mut buffer) {
                Ok(Some(_)) => continue,
                Ok(None) => break,
                Err(_) => return,
            }
        }
        // Grown with the bytes received, never with a declared length.
        assert!(buffer.capacity() <= 2 * (fed + READ_CHUNK), "{} bytes for {fed} fed", buffer.capacity());
    }
});

//! The master's pre-session entry point: split the input into frames, parse
//! the envelope, and feed handshake messages to a responder, as the link
//! loop does for a peer without a session.
#![no_main]

use std::sync::LazyLock;

use halite_link::{Envelope, Keypair, Responder};
use libfuzzer_sys::fuzz_target;

static MASTER: LazyLock<Keypair> = LazyLock::new(|| Keypair::generate().expect("a key"));

fuzz_target!(|data: &[u8]| {
    // Frames are separated by 0xff bytes in the fuzzer's input.
    let frames: Vec<&[u8]> = data.split(|b| *b == 0xff).collect();
    match Envelope::parse(&frames) {
        Ok(Envelope::Hello1(first)) => {
            if let Ok((responder, _reply)) = Responder::respond(&MASTER, first) {
                // Whatever follows is the agent's last message.
                let _ = responder.finish(frames.last().copied().unwrap_or_default());
            }
        }
        Ok(_) | Err(_) => {}
    }
});

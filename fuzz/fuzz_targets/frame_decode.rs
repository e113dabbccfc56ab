//! The master's frame decoding: whatever the bytes, an error or a message,
//! never a panic, a hang or an unbounded allocation.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let _ = halite_proto::decode::<halite_proto::AgentMessage>(data);
    let _ = halite_proto::decode::<halite_proto::MasterMessage>(data);
});

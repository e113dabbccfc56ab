//! The receive limits (`SocketOptions::max_frame_size`, `max_message_size`,
//! `max_message_frames`) and the rule that nothing is sized from a length a
//! peer declares.

use super::*;

/// A codec past the greeting, as after the handshake.
fn after_greeting(options: &SocketOptions) -> ZmqCodec {
    let mut codec = ZmqCodec::with_options(options);
    codec.state = DecoderState::FrameHeader;
    codec.waiting_for = 1;
    codec
}

fn long_header(flags: u8, len: u64) -> Vec<u8> {
    let mut header = vec![flags | 0b0000_0010];
    header.extend_from_slice(&len.to_be_bytes());
    header
}

fn exceeded(result: Result<Option<Message>, CodecError>) -> (&'static str, u64, usize) {
    match result {
        Err(CodecError::LimitExceeded { what, size, limit }) => (what, size, limit),
        other => panic!("expected a limit error, got {other:?}"),
    }
}

/// The 73-byte attack: a greeting and a long-frame header declaring 2^47
/// (and 2^62) bytes. Before the patch the codec reserved the declared
/// length and the process aborted.
#[test]
fn huge_declared_frame_after_greeting_is_refused_without_allocating() {
    for declared in [1u64 << 47, 1u64 << 62, u64::MAX] {
        let mut codec = ZmqCodec::new();
        let mut input = BytesMut::from(ZmqGreeting::default());
        input.extend_from_slice(&long_header(0, declared));
        assert_eq!(input.len(), 73);
        assert!(matches!(
            codec.decode(&mut input),
            Ok(Some(Message::Greeting(_)))
        ));
        let (what, size, limit) = exceeded(codec.decode(&mut input));
        assert_eq!(
            (what, size, limit),
            ("frame size", declared, crate::DEFAULT_MAX_FRAME_SIZE)
        );
        assert!(
            input.capacity() < 1024,
            "read buffer grew to {}",
            input.capacity()
        );
        assert_eq!(codec.large_body.capacity(), 0);
    }
}

#[test]
fn frame_size_limit_admits_the_limit_and_refuses_one_more() {
    let mut options = SocketOptions::default();
    options.max_frame_size(100);
    let mut accepted = after_greeting(&options);
    let mut input = BytesMut::from(&[0u8, 100][..]);
    input.extend_from_slice(&[1; 100]);
    assert!(matches!(
        accepted.decode(&mut input),
        Ok(Some(Message::Message(_)))
    ));

    let mut refused = after_greeting(&options);
    let mut input = BytesMut::from(&[0u8, 101][..]);
    assert_eq!(
        exceeded(refused.decode(&mut input)),
        ("frame size", 101, 100)
    );

    // Commands are frames too.
    let mut refused = after_greeting(&options);
    let mut input = BytesMut::from(&long_header(0b0000_0100, 5000)[..]);
    assert_eq!(
        exceeded(refused.decode(&mut input)),
        ("frame size", 5000, 100)
    );
}

#[test]
fn message_size_limit_counts_every_part() {
    let mut options = SocketOptions::default();
    options.max_message_size(250);
    let mut codec = after_greeting(&options);
    // Two parts of 100 (more, more) fit; a third of 100 crosses 250 and is
    // refused at its header, before its body arrives.
    let mut input = BytesMut::new();
    for _ in 0..2 {
        input.extend_from_slice(&[1, 100]);
        input.extend_from_slice(&[0; 100]);
    }
    input.extend_from_slice(&[0, 100]);
    assert_eq!(
        exceeded(codec.decode(&mut input)),
        ("message size", 300, 250)
    );

    // Exactly the limit is a message; the count starts again after it.
    let mut codec = after_greeting(&options);
    let mut input = BytesMut::new();
    for _ in 0..2 {
        input.extend_from_slice(&[1, 100]);
        input.extend_from_slice(&[0; 100]);
        input.extend_from_slice(&[0, 50]);
        input.extend_from_slice(&[0; 50]);
    }
    for _ in 0..2 {
        let Ok(Some(Message::Message(message))) = codec.decode(&mut input) else {
            panic!("expected a message at the limit");
        };
        assert_eq!(message.len(), 2);
    }
}

/// Empty parts cost two bytes on the wire each; the frame count bounds them.
#[test]
fn frames_per_message_limit_bounds_empty_parts() {
    let mut options = SocketOptions::default();
    options.max_message_frames(1000);
    let mut codec = after_greeting(&options);
    let mut input = BytesMut::new();
    for _ in 0..999 {
        input.extend_from_slice(&[1, 0]);
    }
    input.extend_from_slice(&[0, 0]);
    let Ok(Some(Message::Message(message))) = codec.decode(&mut input) else {
        panic!("expected 1000 empty parts");
    };
    assert_eq!(message.len(), 1000);

    let mut input = BytesMut::new();
    for _ in 0..100_000 {
        input.extend_from_slice(&[1, 0]);
    }
    assert_eq!(
        exceeded(codec.decode(&mut input)),
        ("message frame count", 1001, 1000)
    );
}

/// A peer that declares a frame at the limit and sends little costs what
/// it sent, not what it declared.
#[test]
fn large_frame_body_grows_with_the_bytes_received() {
    let declared = 32 * 1024 * 1024;
    let mut options = SocketOptions::default();
    options.max_frame_size(declared);
    let mut codec = after_greeting(&options);
    let mut input = BytesMut::from(&long_header(0, declared as u64)[..]);
    assert!(codec.decode(&mut input).unwrap().is_none());
    let mut received = 0;
    for _ in 0..4 {
        input.extend_from_slice(&[9; 64 * 1024]);
        received += 64 * 1024;
        assert!(codec.decode(&mut input).unwrap().is_none());
        assert!(
            codec.large_body.capacity() <= 2 * received,
            "{} bytes held for {received} received",
            codec.large_body.capacity()
        );
    }
    assert!(input.capacity() <= 2 * 64 * 1024);
}

#[test]
fn limit_setters_refuse_nonsense() {
    for bad in [
        (|o: &mut SocketOptions| {
            o.max_frame_size(0);
        }) as fn(&mut SocketOptions),
        |o| {
            o.max_message_size(0);
        },
        |o| {
            o.max_message_frames(0);
        },
        |o| {
            o.send_queue_capacity(0);
        },
        |o| {
            o.max_frame_size(usize::MAX);
        },
    ] {
        let result = std::panic::catch_unwind(|| bad(&mut SocketOptions::default()));
        assert!(result.is_err());
    }
}

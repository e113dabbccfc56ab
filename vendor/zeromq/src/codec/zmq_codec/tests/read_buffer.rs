use super::*;

const MAX_READ_CHUNK_SIZE: usize = 64 * 1024;

/// Feeds `body` to a codec that has read a long frame header, one read
/// chunk at a time, as `ZmqFramedRead` would.
fn feed_in_chunks(
    codec: &mut ZmqCodec,
    input: &mut BytesMut,
    body: &[u8],
    chunk: usize,
) -> Option<Message> {
    for piece in body.chunks(chunk) {
        input.extend_from_slice(piece);
        if let Some(message) = codec.decode(input).unwrap() {
            return Some(message);
        }
        // Frames above one chunk move out of the read buffer as they arrive.
        assert!(
            input.capacity() <= 2 * chunk,
            "read buffer grew to {}",
            input.capacity()
        );
    }
    None
}

#[test]
fn read_buffer_stays_at_a_chunk_while_a_large_frame_arrives() {
    for frame_len in [2 * MAX_READ_CHUNK_SIZE + 1, 338_729] {
        let mut codec = ZmqCodec::new();
        codec.state = DecoderState::FrameHeader;
        codec.waiting_for = 1;
        let mut input = BytesMut::from(&[2][..]);
        input.extend_from_slice(&(frame_len as u64).to_be_bytes());
        assert!(codec.decode(&mut input).unwrap().is_none());
        let body: Vec<u8> = (0..frame_len).map(|i| i as u8).collect();
        let Some(Message::Message(message)) =
            feed_in_chunks(&mut codec, &mut input, &body, MAX_READ_CHUNK_SIZE)
        else {
            panic!("expected the frame");
        };
        assert_eq!(message.get(0).unwrap().as_ref(), &body[..]);
        assert!(input.is_empty());
    }
}

#[test]
fn read_buffer_is_not_sized_from_a_declared_length() {
    let mut codec = ZmqCodec::new();
    codec.state = DecoderState::FrameHeader;
    codec.waiting_for = 1;
    let mut input = BytesMut::from(&[2][..]);
    input.extend_from_slice(&((2 * MAX_READ_CHUNK_SIZE) as u64).to_be_bytes());
    assert!(codec.decode(&mut input).unwrap().is_none());
    assert!(input.capacity() <= MAX_READ_CHUNK_SIZE);
    assert_eq!(codec.large_body.capacity(), 0);
}

#[test]
fn read_buffer_rejects_unrepresentable_lengths_before_allocating() {
    for max_size in [3000, MAX_READ_CHUNK_SIZE] {
        for frame_len in [u64::MAX, isize::MAX as u64 - max_size as u64 + 1] {
            let mut options = SocketOptions::default();
            options.read_buffer(128, max_size, 2);
            let mut codec = ZmqCodec::with_options(&options);
            codec.state = DecoderState::FrameHeader;
            codec.waiting_for = 1;
            let mut input = BytesMut::from(&[2][..]);
            input.extend_from_slice(&frame_len.to_be_bytes());
            assert!(matches!(
                codec.decode(&mut input),
                Err(CodecError::LimitExceeded { what: "frame size", size, .. }) if size == frame_len
            ));
        }
    }
}

#[test]
fn read_buffer_recovery_does_not_share_chunk_sized_frame_storage_with_the_next_read() {
    for frame_len in [
        MAX_READ_CHUNK_SIZE,
        MAX_READ_CHUNK_SIZE + 1,
        2 * MAX_READ_CHUNK_SIZE,
    ] {
        let mut codec = ZmqCodec::new();
        codec.state = DecoderState::FrameHeader;
        codec.waiting_for = 1;
        let mut input = BytesMut::with_capacity(frame_len + 9);
        input.extend_from_slice(&[2]);
        input.extend_from_slice(&(frame_len as u64).to_be_bytes());
        assert!(codec.decode(&mut input).unwrap().is_none());
        input.resize(frame_len, 7);
        let Message::Message(retained) = codec.decode(&mut input).unwrap().unwrap() else {
            panic!("expected message");
        };
        // Sharing an entire spare chunk makes the following nearly complete
        // frame copy its body when reserve detaches from this retained frame.
        input.resize(MAX_READ_CHUNK_SIZE, 0);
        assert!(retained.get(0).unwrap().is_unique());
    }
}

#[test]
fn read_buffer_large_frame_threshold_tracks_the_configured_maximum() {
    let mut options = SocketOptions::default();
    options.read_buffer(300, 3000, 3);
    for frame_len in [3000, 6000, 6001] {
        let mut codec = ZmqCodec::with_options(&options);
        codec.state = DecoderState::FrameHeader;
        codec.waiting_for = 1;
        let mut input = BytesMut::from(&[2][..]);
        input.extend_from_slice(&(frame_len as u64).to_be_bytes());
        assert!(codec.decode(&mut input).unwrap().is_none());
        let body = vec![7u8; frame_len];
        let Some(Message::Message(message)) = feed_in_chunks(&mut codec, &mut input, &body, 3000)
        else {
            panic!("expected the frame");
        };
        assert_eq!(message.get(0).unwrap().len(), frame_len);
    }
}

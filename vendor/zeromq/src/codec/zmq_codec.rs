use super::command::ZmqCommand;
use super::error::CodecError;
use super::greeting::ZmqGreeting;
use super::Message;
use crate::{SocketOptions, ZmqMessage};

use asynchronous_codec::{Decoder, Encoder};
use bytes::{Buf, Bytes, BytesMut};

use std::convert::TryFrom;

#[derive(Debug, Clone, Copy)]
struct Frame {
    command: bool,
    long: bool,
    more: bool,
}

#[derive(Debug)]
enum DecoderState {
    Greeting,
    FrameHeader,
    FrameLen(Frame),
    Frame(Frame),
}

#[derive(Debug)]
pub struct ZmqCodec {
    state: DecoderState,
    waiting_for: usize, // Number of bytes needed to decode frame
    // Needed to store incoming multipart message
    // This allows to encapsulate its processing inside codec and not expose
    // internal details to higher levels
    buffered_message: Option<ZmqMessage>,
    max_read_chunk_size: usize,
    /// Frames above this size are refused at their header.
    max_frame_size: usize,
    /// Multipart messages above this many bytes are refused at the header
    /// of the part that would cross it.
    max_message_size: usize,
    /// Multipart messages of more parts are refused at the extra part's header.
    max_message_frames: usize,
    /// Parts and bytes of `buffered_message`, kept to check the limits.
    message_frames: usize,
    message_bytes: usize,
    /// The body received so far of a frame larger than one read chunk. It
    /// grows (with `try_reserve`) as bytes arrive, so a peer that declares a
    /// large frame and sends little costs little; the read buffer itself
    /// stays at one chunk.
    large_body: Vec<u8>,
}

impl ZmqCodec {
    pub fn new() -> Self {
        Self::with_options(&SocketOptions::default())
    }

    pub(crate) fn with_options(options: &SocketOptions) -> Self {
        Self {
            state: DecoderState::Greeting,
            waiting_for: 64, // len of the greeting frame
            buffered_message: None,
            max_read_chunk_size: options.read_buffer_max_size,
            max_frame_size: options.max_frame_size,
            max_message_size: options.max_message_size,
            max_message_frames: options.max_message_frames,
            message_frames: 0,
            message_bytes: 0,
            large_body: Vec::new(),
        }
    }

    /// Returns the minimum additional bytes needed before decode can progress.
    pub(crate) fn bytes_needed(&self, buffered_len: usize) -> usize {
        self.waiting_for
            .saturating_sub(self.large_body.len())
            .saturating_sub(buffered_len)
    }

    /// True while part of a frame body has been received but not all of it.
    pub(crate) fn has_partial_frame(&self) -> bool {
        !self.large_body.is_empty()
    }

    /// Whether the frame being received is taken into `large_body` rather
    /// than waited for whole in the read buffer.
    fn receives_large_body(&self) -> bool {
        matches!(self.state, DecoderState::Frame(_)) && self.waiting_for > self.max_read_chunk_size
    }

    /// Moves what `src` holds of a large frame's body into `large_body`;
    /// returns the body once complete.
    fn take_large_body(&mut self, src: &mut BytesMut) -> Result<Option<Bytes>, CodecError> {
        let take = (self.waiting_for - self.large_body.len()).min(src.len());
        let needed = self.large_body.len() + take;
        if needed > self.large_body.capacity() {
            // Doubling keeps the copies amortised; the declared length caps
            // it, so the final capacity is exactly the frame's.
            let capacity = needed.max(
                self.large_body
                    .capacity()
                    .saturating_mul(2)
                    .min(self.waiting_for),
            );
            self.large_body
                .try_reserve_exact(capacity - self.large_body.len())
                .map_err(|_error| CodecError::Allocation(capacity))?;
        }
        self.large_body.extend_from_slice(&src[..take]);
        src.advance(take);
        if self.large_body.len() < self.waiting_for {
            return Ok(None);
        }
        Ok(Some(Bytes::from(std::mem::take(&mut self.large_body))))
    }

    /// A frame's body is complete: a command, or a part of the message being
    /// buffered (returned when it is the last).
    fn complete_frame(&mut self, frame: Frame, data: Bytes) -> Result<Option<Message>, CodecError> {
        self.state = DecoderState::FrameHeader;
        self.waiting_for = 1;
        if frame.command {
            return Ok(Some(Message::Command(ZmqCommand::try_from(data)?)));
        }

        // process incoming message frame
        self.message_frames += 1;
        self.message_bytes += data.len();
        match &mut self.buffered_message {
            Some(v) => v.push_back(data),
            None => self.buffered_message = Some(ZmqMessage::from(data)),
        }

        if frame.more {
            return Ok(None);
        }
        // Quoth the Raven “Nevermore.”
        self.message_frames = 0;
        self.message_bytes = 0;
        Ok(Some(Message::Message(
            self.buffered_message
                .take()
                .expect("Corrupted decoder state"),
        )))
    }

    /// Checks a declared frame length against the limits, before anything
    /// is sized for its body.
    fn check_frame_len(&self, frame: Frame, declared: u64) -> Result<usize, CodecError> {
        let exceeds = |what, limit: usize| CodecError::LimitExceeded {
            what,
            size: declared,
            limit,
        };
        let len = usize::try_from(declared)
            .ok()
            .filter(|&len| len <= self.max_frame_size)
            .ok_or_else(|| exceeds("frame size", self.max_frame_size))?;
        if !frame.command && self.message_bytes + len > self.max_message_size {
            return Err(CodecError::LimitExceeded {
                what: "message size",
                size: (self.message_bytes + len) as u64,
                limit: self.max_message_size,
            });
        }
        Ok(len)
    }
}

impl Default for ZmqCodec {
    fn default() -> Self {
        Self::new()
    }
}

impl Decoder for ZmqCodec {
    type Error = CodecError;
    type Item = Message;

    fn decode(&mut self, src: &mut BytesMut) -> Result<Option<Self::Item>, Self::Error> {
        // A single read can contain thousands of frames; keep stack use independent of that count.
        loop {
            if self.receives_large_body() {
                let DecoderState::Frame(frame) = self.state else {
                    unreachable!("checked by receives_large_body")
                };
                match self.take_large_body(src)? {
                    None => return Ok(None),
                    Some(data) => match self.complete_frame(frame, data)? {
                        Some(message) => return Ok(Some(message)),
                        None => continue,
                    },
                }
            }
            if src.len() < self.waiting_for {
                // Never sized from a declared length beyond one read chunk:
                // larger bodies go to `large_body` as they arrive.
                src.reserve(self.waiting_for - src.len());
                return Ok(None);
            }
            match self.state {
                DecoderState::Greeting => {
                    if src[0] != 0xff {
                        return Err(CodecError::Decode("Bad first byte of greeting"));
                    }
                    self.state = DecoderState::FrameHeader;
                    self.waiting_for = 1;
                    return Ok(Some(Message::Greeting(ZmqGreeting::try_from(
                        src.split_to(64).freeze(),
                    )?)));
                }
                DecoderState::FrameHeader => {
                    let flags = src.get_u8();

                    let frame = Frame {
                        command: (flags & 0b0000_0100) != 0,
                        long: (flags & 0b0000_0010) != 0,
                        more: (flags & 0b0000_0001) != 0,
                    };
                    if !frame.command && self.message_frames >= self.max_message_frames {
                        return Err(CodecError::LimitExceeded {
                            what: "message frame count",
                            size: self.message_frames as u64 + 1,
                            limit: self.max_message_frames,
                        });
                    }
                    self.state = DecoderState::FrameLen(frame);
                    self.waiting_for = if frame.long { 8 } else { 1 };
                }
                DecoderState::FrameLen(frame) => {
                    let declared = if frame.long {
                        src.get_u64()
                    } else {
                        u64::from(src.get_u8())
                    };
                    let frame_len = self.check_frame_len(frame, declared)?;
                    self.state = DecoderState::Frame(frame);
                    self.waiting_for = frame_len;
                }
                DecoderState::Frame(frame) => {
                    let data = src.split_to(self.waiting_for).freeze();
                    if let Some(message) = self.complete_frame(frame, data)? {
                        return Ok(Some(message));
                    }
                }
            }
        }
    }
}

fn encode_frame(frame: &Bytes, dst: &mut BytesMut, more: bool) {
    let mut flags: u8 = 0;
    if more {
        flags |= 0b0000_0001;
    }
    let len = frame.len();
    if len > 255 {
        flags |= 0b0000_0010;
        dst.reserve(len + 9);
        let mut header = [0u8; 9];
        header[0] = flags;
        header[1..].copy_from_slice(&(len as u64).to_be_bytes());
        dst.extend_from_slice(&header);
    } else {
        dst.reserve(len + 2);
        dst.extend_from_slice(&[flags, len as u8]);
    }
    dst.extend_from_slice(frame.as_ref());
}

impl Encoder for ZmqCodec {
    type Error = CodecError;
    type Item<'a> = Message;

    fn encode(&mut self, message: Self::Item<'_>, dst: &mut BytesMut) -> Result<(), Self::Error> {
        match message {
            Message::Greeting(payload) => dst.unsplit(payload.into()),
            Message::Command(command) => dst.unsplit(command.into()),
            Message::Message(message) => {
                let last_element = message.len() - 1;
                for (idx, part) in message.iter().enumerate() {
                    encode_frame(part, dst, idx != last_element);
                }
            }
        }
        Ok(())
    }
}

#[cfg(test)]
pub(crate) mod tests {
    mod limits;
    mod multipart;
    mod read_buffer;

    use super::*;

    #[test]
    pub fn test_message_decode_1() {
        let data = "01093c4944537c4d53473e01403239386166316563653932306635373637656132393438376261363164643436613534636334313262653032303339316139653831636535633234383039653001cb7b226d73675f6964223a2236356336396230312d636634622d343563322d616165612d323263306365326531316533222c2273657373696f6e223a2230326462356631642d386535632d346464612d383064342d303337363835343465616138222c22757365726e616d65223a223c544f444f3e222c2264617465223a22323032312d31322d32395430343a35393a33392e3539333533372b30303a3030222c226d73675f74797065223a22657865637574655f7265706c79222c2276657273696f6e223a22352e33227d01c07b226d73675f6964223a223965303336313036373262393433393961343432316539373330333330326162222c2273657373696f6e223a226231323139393364663235613432643839376135653163383362306337616665222c22757365726e616d65223a22757365726e616d65222c2264617465223a22313937302d30312d30315430303a30303a30302b30303a3030222c226d73675f74797065223a22657865637574655f72657175657374222c2276657273696f6e223a22352e32227d01027b7d00467b22737461747573223a226f6b222c22657865637574696f6e5f636f756e74223a312c227061796c6f6164223a5b5d2c22757365725f65787072657373696f6e73223a7b7d7d";
        let hex_data = hex::decode(data).unwrap();
        let mut bytes = BytesMut::from(hex_data.as_slice());
        let mut codec = ZmqCodec::new();
        codec.waiting_for = 1;
        codec.state = DecoderState::FrameHeader;

        let message = codec
            .decode(&mut bytes)
            .expect("decode success")
            .expect("single message");

        eprintln!("{:?}", message);
        match message {
            Message::Message(m) => {
                assert_eq!(6, m.into_vecdeque().len());
            }
            _ => panic!("wrong message type"),
        }
        assert_eq!(bytes.len(), 0);
    }

    #[test]
    pub fn test_message_decode_2() {
        let data = "01093c4944537c4d53473e01406139346435366530343438353335303831316561623063663730623464356366373933653431653838616330666339646263346562326238616136643635306601cb7b226d73675f6964223a2263383466623933372d333162662d346335622d386430392d386535633230633434333636222c2273657373696f6e223a2230326462356631642d386535632d346464612d383064342d303337363835343465616138222c22757365726e616d65223a223c544f444f3e222c2264617465223a22323032312d31322d32395430343a35393a34332e3037343831332b30303a3030222c226d73675f74797065223a22657865637574655f7265706c79222c2276657273696f6e223a22352e33227d01c07b226d73675f6964223a223238646635316334303933313433643339393131346664333439643530396634222c2273657373696f6e223a226231323139393364663235613432643839376135653163383362306337616665222c22757365726e616d65223a22757365726e616d65222c2264617465223a22313937302d30312d30315430303a30303a30302b30303a3030222c226d73675f74797065223a22657865637574655f72657175657374222c2276657273696f6e223a22352e32227d01027b7d00467b22737461747573223a226f6b222c22657865637574696f6e5f636f756e74223a322c227061796c6f6164223a5b5d2c22757365725f65787072657373696f6e73223a7b7d7d";
        let hex_data = hex::decode(data).unwrap();
        let mut bytes = BytesMut::from(hex_data.as_slice());
        let mut codec = ZmqCodec::new();
        codec.waiting_for = 1;
        codec.state = DecoderState::FrameHeader;

        let message = codec
            .decode(&mut bytes)
            .expect("decode success")
            .expect("single message");
        eprintln!("{:?}", message);
        assert_eq!(bytes.len(), 0);
        match message {
            Message::Message(m) => {
                assert_eq!(6, m.into_vecdeque().len());
            }
            _ => panic!("wrong message type"),
        }
    }
}

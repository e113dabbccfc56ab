//! Frame encoding: one protocol-version byte, then the postcard encoding of
//! a message.
//!
//! Decoding is the first thing that touches bytes from the network, so it
//! returns an error for anything it does not understand (garbage, truncated
//! or oversized input, trailing bytes, values nested too deep) and never
//! panics; a property test below holds it to that.

use serde::Serialize;
use serde::de::DeserializeOwned;

/// The version byte every frame starts with. Bump it for a change that the
/// append-only rules of [`crate::message`] cannot express.
pub const PROTOCOL_VERSION: u8 = 1;

/// The largest frame either side accepts. Jobs carry file contents, so it is
/// generous; anything larger is refused before it is decoded.
pub const MAX_FRAME_BYTES: usize = 32 * 1024 * 1024;

#[derive(Debug, thiserror::Error, PartialEq)]
pub enum DecodeError {
    #[error("empty frame")]
    Empty,
    #[error("frame of {size} bytes is over the {max}-byte limit")]
    TooLarge { size: usize, max: usize },
    #[error("protocol version {got}, this build speaks {PROTOCOL_VERSION}")]
    Version { got: u8 },
    #[error("malformed frame: {0}")]
    Malformed(String),
    #[error("{0} trailing bytes after the message")]
    Trailing(usize),
}

pub fn encode<T: Serialize>(message: &T) -> Vec<u8> {
    let out = vec![PROTOCOL_VERSION];
    // Serializing into a Vec fails only on a type that cannot be encoded,
    // which our message types are not; an empty body then fails to decode.
    postcard::to_extend(message, out).unwrap_or_else(|_| vec![PROTOCOL_VERSION])
}

pub fn decode<T: DeserializeOwned>(frame: &[u8]) -> Result<T, DecodeError> {
    let (&version, body) = frame.split_first().ok_or(DecodeError::Empty)?;
    if frame.len() > MAX_FRAME_BYTES {
        return Err(DecodeError::TooLarge { size: frame.len(), max: MAX_FRAME_BYTES });
    }
    if version != PROTOCOL_VERSION {
        return Err(DecodeError::Version { got: version });
    }
    // Values decode within a budget (count and bytes), so a small frame
    // cannot decode to gigabytes.
    let (message, rest) = crate::value::with_budget(|| postcard::take_from_bytes(body))
        .map_err(|e| DecodeError::Malformed(e.to_string()))?;
    if !rest.is_empty() {
        return Err(DecodeError::Trailing(rest.len()));
    }
    Ok(message)
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;
    use crate::{AgentMessage, Event, Hello, MasterMessage, Value};

    fn sample() -> AgentMessage {
        AgentMessage::Event(Event::new(
            "halite/beacon/web01/conf",
            "web01",
            Value::map().with("path", "/etc/x").with("kind", "modify"),
        ))
    }

    #[test]
    fn round_trip() {
        let message = sample();
        assert_eq!(decode::<AgentMessage>(&encode(&message)).unwrap(), message);
        let hello = AgentMessage::Hello(Hello { agent: "a".into(), version: "0".into(), facts: Value::map() });
        assert_eq!(decode::<AgentMessage>(&encode(&hello)).unwrap(), hello);
        let AgentMessage::Event(event) = sample() else { unreachable!() };
        let batch =
            AgentMessage::Events(vec![event.clone(), Event::new("halite/beacon/web01/x", "web01", Value::Null)]);
        assert_eq!(decode::<AgentMessage>(&encode(&batch)).unwrap(), batch);
        let acks = MasterMessage::Acks(vec![event.id, crate::Id::new()]);
        assert_eq!(decode::<MasterMessage>(&encode(&acks)).unwrap(), acks);
    }

    #[test]
    fn variants_keep_their_wire_index() {
        // Append-only enums (see message.rs): a variant's index is its
        // first byte after the version, forever.
        assert_eq!(encode(&AgentMessage::Ping)[1], 3);
        assert_eq!(encode(&AgentMessage::Events(Vec::new()))[1], 4);
        assert_eq!(encode(&MasterMessage::ResultAck { job: crate::Id(0) })[1], 6);
        assert_eq!(encode(&MasterMessage::Acks(Vec::new()))[1], 7);
    }

    #[test]
    fn rejects_wrong_version_and_trailing_bytes() {
        let mut frame = encode(&MasterMessage::Pong);
        frame[0] = 9;
        assert_eq!(decode::<MasterMessage>(&frame), Err(DecodeError::Version { got: 9 }));
        let mut frame = encode(&MasterMessage::Pong);
        frame.push(0);
        assert_eq!(decode::<MasterMessage>(&frame), Err(DecodeError::Trailing(1)));
        assert_eq!(decode::<MasterMessage>(&[]), Err(DecodeError::Empty));
    }

    #[test]
    fn rejects_oversized_frames() {
        let frame = vec![PROTOCOL_VERSION; MAX_FRAME_BYTES + 1];
        assert!(matches!(decode::<AgentMessage>(&frame), Err(DecodeError::TooLarge { .. })));
    }

    #[test]
    fn deep_nesting_is_an_error_not_a_stack_overflow() {
        // A Value that is a list of one list of one list ... of null.
        let mut frame = vec![PROTOCOL_VERSION];
        let mut nested = Vec::new();
        for _ in 0..100_000 {
            nested.extend([6u8, 1u8]); // Value::List, length 1
        }
        nested.push(0); // Value::Null
        frame.extend(&nested);
        assert!(decode::<Value>(&frame).is_err());
    }

    #[test]
    fn a_frame_of_nulls_is_refused_within_the_budget() {
        use crate::value::MAX_DECODED_VALUES;
        // An event whose data is a list of N nulls: one byte each.
        let event = |n: usize| Event::new("halite/beacon/web01/x", "web01", Value::List(vec![Value::Null; n]));
        let fits = encode(&AgentMessage::Event(event(MAX_DECODED_VALUES - 8)));
        assert!(decode::<AgentMessage>(&fits).is_ok());
        let over = encode(&AgentMessage::Event(event(MAX_DECODED_VALUES + 1)));
        // (postcard reports every serde error as the same text.)
        assert!(decode::<AgentMessage>(&over).is_err());
        // Many small values in a batch share one budget.
        let half = event(MAX_DECODED_VALUES / 2 + 1);
        let batch = encode(&AgentMessage::Events(vec![half.clone(), half]));
        assert!(decode::<AgentMessage>(&batch).is_err());
        // The budget is per decode: the next one starts afresh.
        assert!(decode::<AgentMessage>(&fits).is_ok());
    }

    proptest! {
        #[test]
        fn garbage_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..512)) {
            let _ = decode::<AgentMessage>(&bytes);
            let _ = decode::<MasterMessage>(&bytes);
        }

        #[test]
        fn truncation_is_an_error(cut in 0usize..64) {
            let frame = encode(&sample());
            let cut = cut.min(frame.len() - 1);
            prop_assert!(decode::<AgentMessage>(&frame[..cut]).is_err());
        }

        #[test]
        fn versioned_garbage_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..512)) {
            let mut frame = vec![PROTOCOL_VERSION];
            frame.extend(bytes);
            let _ = decode::<AgentMessage>(&frame);
            let _ = decode::<MasterMessage>(&frame);
        }
    }
}

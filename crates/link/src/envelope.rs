//! How link messages sit in ZeroMQ frames.
//!
//! The first frame is one byte saying what the message is; the frames after
//! it are its body: one Noise handshake message, or the sealed chunks of one
//! link message. Before a session exists the master accepts only the
//! handshake kinds; everything else is dropped unread.

use crate::LinkError;
use crate::noise::MAX_CHUNK;

pub const HELLO1: u8 = 1;
pub const HELLO2: u8 = 2;
pub const HELLO3: u8 = 3;
pub const SEALED: u8 = 16;

/// Sealed chunks per message: enough for the largest frame halite sends
/// (halite-proto's frame limit, 32 MiB, in chunks of
/// [`MAX_CHUNK`]).
pub const MAX_CHUNKS: usize = 32 * 1024 * 1024 / MAX_CHUNK + 1;

#[derive(Debug, PartialEq, Eq)]
pub enum Envelope<'a> {
    Hello1(&'a [u8]),
    Hello2(&'a [u8]),
    Hello3(&'a [u8]),
    Sealed(Vec<&'a [u8]>),
}

impl<'a> Envelope<'a> {
    /// Reads the frames of one message (after any ROUTER identity frame).
    pub fn parse(frames: &[&'a [u8]]) -> Result<Envelope<'a>, LinkError> {
        let (kind, body) = frames.split_first().ok_or(LinkError::Malformed("no frames"))?;
        let single = || match body {
            [one] => Ok(*one),
            _ => Err(LinkError::Malformed("a handshake message is one frame")),
        };
        match kind {
            [HELLO1] => single().map(Envelope::Hello1),
            [HELLO2] => single().map(Envelope::Hello2),
            [HELLO3] => single().map(Envelope::Hello3),
            [SEALED] if body.is_empty() => Err(LinkError::Malformed("a sealed message without chunks")),
            [SEALED] if body.len() > MAX_CHUNKS => Err(LinkError::TooLarge(body.iter().map(|c| c.len()).sum())),
            [SEALED] => Ok(Envelope::Sealed(body.to_vec())),
            _ => Err(LinkError::Malformed("unknown message kind")),
        }
    }

    /// The frames of a handshake message.
    pub fn handshake(kind: u8, message: Vec<u8>) -> Vec<Vec<u8>> {
        vec![vec![kind], message]
    }

    /// The frames of a sealed message.
    pub fn sealed(chunks: Vec<Vec<u8>>) -> Vec<Vec<u8>> {
        let mut frames = Vec::with_capacity(chunks.len() + 1);
        frames.push(vec![SEALED]);
        frames.extend(chunks);
        frames
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_and_refuses() {
        assert_eq!(Envelope::parse(&[&[HELLO1], b"abc"]).unwrap(), Envelope::Hello1(b"abc"));
        assert_eq!(Envelope::parse(&[&[SEALED], b"a", b"b"]).unwrap(), Envelope::Sealed(vec![b"a", b"b"]));
        for bad in
            [&[][..], &[&[HELLO1][..]][..], &[&[SEALED][..]][..], &[&[99u8][..], b"x"][..], &[&[1u8, 2][..], b"x"][..]]
        {
            assert!(Envelope::parse(bad).is_err(), "{bad:?}");
        }
    }
}

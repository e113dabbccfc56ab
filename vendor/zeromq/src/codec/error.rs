use thiserror::Error;

/// Represents an error when encoding/decoding raw byte buffers and frames
#[non_exhaustive]
#[derive(Error, Debug)]
pub enum CodecError {
    #[error("{0}")]
    Command(&'static str),
    #[error("{0}")]
    Greeting(&'static str),
    #[error("{0}")]
    Mechanism(&'static str),
    #[error("{0}")]
    Decode(&'static str),
    #[error("{0}")]
    Io(#[from] std::io::Error),
    #[error("{0}")]
    Other(&'static str),
    /// A peer declared more than a configured limit allows (see
    /// `SocketOptions::max_frame_size` and friends); nothing was allocated
    /// for it.
    #[error("{what} of {size} exceeds the limit of {limit}")]
    LimitExceeded {
        what: &'static str,
        size: u64,
        limit: usize,
    },
    /// The allocator refused to grow a receive buffer.
    #[error("cannot allocate {0} bytes for a received frame")]
    Allocation(usize),
}

pub(crate) type CodecResult<T> = Result<T, CodecError>;

//! halite's wire vocabulary, shared by the agent and the master.
//!
//! # Layout
//! - [`value`] — [`Value`], the self-contained data model of event data and
//!   state arguments (postcard cannot carry `serde_json::Value`).
//! - [`event`] — [`Event`] and the sortable unique [`Id`] used for events and jobs.
//! - [`message`] — the agent↔master messages. Both enums are append-only.
//! - [`frame`] — a protocol-version byte, then postcard; decoding never panics.
//! - [`hash`] — [`Sha256`] content digests, the currency of drift detection.
//! - [`backoff`] — [`Backoff`], exponential backoff with jitter, the one
//!   retry rule of the agent's link, the swarm and the master's webhook.
//!
//! Nothing in this crate touches the network or the file system.

pub mod backoff;
pub mod event;
pub mod frame;
pub mod hash;
pub mod message;
pub mod text;
pub mod value;

pub use backoff::Backoff;
pub use event::{Event, Id};
pub use frame::{DecodeError, MAX_FRAME_BYTES, PROTOCOL_VERSION, decode, encode};
pub use hash::Sha256;
pub use message::{
    AgentMessage, BeaconSpec, Hello, Inventory, Job, JobResult, MasterMessage, Outcome, Requisite, RequisiteKind,
    StateCall, StateResult, WatchedContent, WatchedPath, Welcome,
};
pub use value::Value;

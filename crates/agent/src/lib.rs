//! The halite agent: runs beacons, sends their events to the master, and
//! applies the states the master pushes back.
//!
//! # Layout
//! - [`config`] — `agent.yaml`.
//! - [`link`] — the DEALER side of the agent↔master link: reconnects,
//!   heartbeats, acknowledgements.
//! - [`masters`] — with several masters: the rendezvous ranking an agent
//!   walks, and when it returns to a better-ranked one.
//! - [`outbox`] — the on-disk queue every event and job result goes
//!   through until the master acknowledges it.
//! - [`offline`] — offline healing: desired contents kept, restored while
//!   the master is away.
//! - [`beacons`] — the beacon registry; one file per kind (`beacons/file.rs`).
//! - [`managed`] — what each managed file should be, so drift is told from
//!   the agent's own writes.
//! - [`jobs`] — applies jobs through the shared state engine.
//! - [`daemon`] — `halite-agent run`, wiring the above together.
//! - [`facts`] — what the agent tells the master about its host.
//! - [`proc_events`] — the kernel's process events (netlink proc
//!   connector), which the `process` beacon follows instead of scanning.
//! - [`local`] — `halite-agent apply --local`: a state tree applied without
//!   a master.
//! - [`secrets`] — the secret pillar values the master names, shown as
//!   `<secret>` in what the agent logs, sends and writes.
//! - [`logging`] — log format and colour, for both binaries.
//! - [`args`] — the command line's clap definition, also read by the
//!   packaging tool for the man pages and completions.

#![forbid(unsafe_code)]

pub mod args;
pub mod beacons;
pub mod config;
pub mod daemon;
pub mod facts;
pub mod inventory;
pub mod jobs;
pub mod link;
pub mod local;
pub mod logging;
pub mod managed;
pub mod masters;
pub mod offline;
pub mod outbox;
pub mod proc_events;
pub mod secrets;

/// Authored paths under the agent's `root` (the rule is the state engine's,
/// shared with the demo fleet and the swarm).
pub use halite_state::paths::rooted;

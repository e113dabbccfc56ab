//! The halite master: loads the state tree, receives agents' events,
//! runs reactors and pushes corrective state.
//!
//! # Layout
//! - [`config`] — `master.yaml`.
//! - [`tree`] — the whole authored tree: states (from `halite-state`),
//!   [`beacons`] (beacons.yaml) and [`reactor`]s (reactors.yaml).
//! - [`link`] — the ROUTER side of the agent link; [`sessions`]: which peer
//!   is which agent.
//! - [`reactor`] — compiling reactors, the per-agent [`reactor::engine`], and
//!   one file per action in `reactor/actions/`.
//! - [`jobs`] — sending states to agents and waiting for results;
//!   [`store`]: every job and result in SQLite (`halite.db`).
//! - [`apply`] — `halite-master apply` on the master's side (targets, jobs,
//!   streamed answers); [`cli`]: the `apply` and `jobs` commands' client side.
//! - [`bus`] — the event bus: the outside publisher, the tail behind
//!   [`events`] and the ledger behind [`agents`].
//! - [`daemon`] — `halite-master run`; [`check`]: `halite-master check`;
//!   [`demo`]: `halite-master demo`; [`fleet`]: real processes on loopback
//!   for the demo and tests; [`client`]: a subscriber for tools,
//!   the demo and the tests.
//! - [`example`] — the example state tree, built into the binary.
//! - [`watch`] — the beacon and reactor `watch: true` implies;
//!   [`reload`]: hot reload of the tree (a watcher and SIGHUP).
//! - [`notify`] — telling systemd the master is ready (`Type=notify`).
//! - [`init`] — `halite-master init`: config, key and a tree for a new master.
//! - [`args`] — the command line's clap definition, also read by the
//!   packaging tool for the man pages and completions.

#![forbid(unsafe_code)]

pub mod agents;
pub mod apply;
pub mod args;
pub mod beacons;
pub mod bus;
pub mod check;
pub mod cli;
pub mod client;
pub mod config;
pub mod control;
pub mod daemon;
pub mod demo;
pub mod events;
pub mod example;
pub mod fleet;
pub mod init;
pub mod jobs;
pub mod keys;
pub mod link;
pub mod notify;
pub mod reactor;
pub mod reload;
pub mod sessions;
pub mod store;
pub mod tree;
pub mod watch;

//! The halite master: loads the state tree, receives agents' events,
//! runs reactors and pushes corrective state.
//!
//! # Layout
//! The daemon and each operator command are apart, as in the agent: the
//! daemon's parts live under [`server`], each command's client side under
//! [`cli`] (one file per command), and what both sides read sits at the top.
//! - [`config`] — `master.yaml`.
//! - [`tree`] — the whole authored tree: states (from `halite-state`),
//!   beacons.yaml, reactors.yaml and what `watch: true` implies; loaded by
//!   the daemon, `check` and `init` alike.
//! - [`protocol`] — the control socket's requests and answers, shared by
//!   [`server::control`] and [`cli`].
//! - [`server`] — `halite-master run`: the shared context
//!   ([`server::context::Master`]), link, sessions, keys, store, bus, jobs,
//!   reactors, hot reload and the control socket.
//! - [`cli`] — `init`, `run`, `check`, `keys`, `apply`, `jobs`, `agents`,
//!   `events`, `demo`.
//! - [`args`] — the command line's clap definition, also read by the
//!   packaging tool for the man pages and completions.
//! - [`http`] — the HTTPS API (`/api/v1`, tokens and roles from
//!   [`server::access`]) and the dashboard, on one TLS listener.
//! - [`fleet`] — real processes on loopback for the demo and tests;
//!   [`client`]: a bus subscriber for tools, the demo and the tests;
//!   [`example`]: the example state tree, built into the binary.

#![forbid(unsafe_code)]

pub mod args;
pub mod cli;
pub mod client;
pub mod config;
pub mod example;
pub mod fleet;
pub mod http;
pub mod protocol;
pub mod server;
pub mod tree;

//! halite's state engine, shared by both binaries.
//!
//! The master loads and checks the state tree and resolves states into
//! [`halite_proto::StateCall`]s (sources read, paths checked); the agent
//! plans and applies those calls. `halite-agent apply --local` will use both
//! halves in one process, which is why this is a crate of its own.
//!
//! # Layout
//! - [`diag`] — [`Diagnostic`], a problem with its file, line and column and a
//!   way forward. Loading returns every diagnostic, never just the first.
//! - [`yaml`] — parsing YAML into typed values with locations.
//! - [`target`] — target expressions (`web*`) that pick agents.
//! - [`tree`] — the state tree: `top.yaml` and the state files.
//! - [`kinds`] — the registry of state kinds; one file per kind.
//! - [`apply`] — running a [`halite_proto::StateCall`]: plan, then apply.

pub mod apply;
pub mod diag;
pub mod kinds;
pub mod target;
pub mod tree;
pub mod yaml;

pub use apply::{ManagedFile, apply_call};
pub use diag::{Diagnostic, Severity};
pub use target::Target;
pub use tree::{StateTree, TREE_FILES};

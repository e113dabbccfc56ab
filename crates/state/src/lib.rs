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
//! - [`sls`] — Salt's state language around the kinds (`include`,
//!   `extend`, `names`, `*_in`, `order`, `unless`/`onlyif`, short forms),
//!   applied to the parsed YAML before the kinds resolve it.
//! - [`kinds`] — the registry of state kinds; one file per kind.
//! - [`template`] — minijinja templates for file content, rendered per agent.
//! - [`command`] — the one process spawner of the workspace (no shell
//!   unless asked, timeout, the whole process group killed, bounded output;
//!   blocking and async).
//! - [`paths`] — paths kept inside a root: tree-relative files
//!   ([`paths::in_tree`]) and authored paths under an agent's `root`
//!   ([`paths::rooted`]).
//! - [`fetch`] — sources given by URL: what the master fetches for a call
//!   and how the agent checks it.
//! - [`host`] — the host's name.
//! - [`edit`] — the plan of every kind that edits a file's text in place
//!   (read through one descriptor, a diff, the atomic write of the edit).
//! - [`text`] — Salt's regex flags, patterns and replacements for those
//!   kinds, and why an edit cannot be made to a text.
//! - [`apply`] — running a job's [`halite_proto::StateCall`]s: requisite
//!   order, plan, then apply ([`run_states`]).
//! - [`report`] — what an apply did, printed the same by every command.
//! - [`signal`] — a daemon stopped by SIGTERM or SIGINT (master and agent).

pub mod apply;
pub mod backup;
pub mod command;
pub mod diag;
pub mod edit;
pub mod env;
pub mod fetch;
pub mod host;
pub mod kinds;
pub mod paths;
pub mod report;
pub mod salt;
pub mod signal;
pub mod sls;
pub mod target;
pub mod template;
pub mod text;
pub mod tree;
pub mod yaml;

pub use apply::{ApplyEnv, ManagedFile, Observer, apply_call, run_states, run_states_observed};
pub use diag::{Diagnostic, Severity};
pub use target::Target;
pub use template::RenderContext;
pub use tree::{StateTree, TREE_FILES};

#[cfg(test)]
mod compat_tests;
#[cfg(test)]
pub(crate) mod kind_tests;
#[cfg(test)]
mod sls_error_tests;

/// Fixtures for tests: setting up a file's mode by path.
#[cfg(test)]
pub(crate) mod test_support {
    /// Sets `path`'s mode. Tests own their temporary directories, so the
    /// path-based call banned in the kinds (clippy.toml) is safe here.
    #[allow(clippy::disallowed_methods)]
    pub fn chmod(path: &std::path::Path, mode: u32) {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).unwrap();
    }
}

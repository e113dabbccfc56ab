//! Salt trees: the layout of a `/srv/salt` tree ([`layout`]), and (in the
//! modules beside it) each state file rendered per agent through Jinja
//! with Salt's grains, pillar and `salt[...]` functions before it is read
//! as YAML. A tree that renders reads its text files once, when it loads
//! ([`preread`]): a render reads no file.

pub mod context;
pub mod functions;
pub mod grains;
pub mod layout;
pub mod pillar;
pub mod preread;
pub mod render;
pub mod rendered;
pub mod secret;
pub mod top;

#[cfg(test)]
mod tree_tests;

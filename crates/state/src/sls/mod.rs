//! Salt's state language around the kinds: what a `.sls` file may say
//! besides `id: {kind: args}`, turned into halite's states when the tree
//! loads.
//!
//! The tree loader (`tree.rs`) parses a file into [`Body`]s, then hands
//! them here:
//! - [`short_forms`] — `pkg.installed` as a bare value, `pkg: [installed]`.
//! - [`names`] — `names:` expanded into one state per name.
//! - [`include`] — `include:` (`.relative` names too) and the files a file
//!   pulls in.
//! - [`extend`] — `extend:` merged into the states it names.
//! - [`requisite_in`] — the requisite keywords, `*_in` (reversed) and
//!   `- sls:` included.
//! - [`order`] — `order:` (numbers, `first`, `last`).
//! - [`conditions`] — `unless`/`onlyif` on every state, run through
//!   `/bin/sh -c` while planning.
//! - [`dialect`] — the defaults where Salt and halite's own YAML differ
//!   (`cmd.run` through a shell, `contents_newline`).
//!
//! Everything here is pure: it reads parsed YAML and returns states and
//! problems; only [`conditions::skip_reason`] runs commands, on the agent.

pub mod conditions;
pub mod dialect;
pub mod extend;
pub mod include;
pub mod names;
pub mod order;
pub mod requisite_in;
pub mod short_forms;

use std::fmt;

use serde::Deserialize;
use serde::de::{Deserializer, MapAccess, SeqAccess, Visitor};

use crate::diag::Location;
use crate::yaml::{Fields, Spanned};

/// What a top-level key of a state file holds.
#[derive(Debug, Clone)]
pub enum Body {
    /// `id:` with nothing under it.
    Empty,
    /// `id: pkg.installed` — Salt's shortest form.
    Bare(String),
    /// `id: {kind: args, ...}` (and `extend:`'s `id: {family: args}`).
    Kinds(Vec<(Spanned<String>, Fields)>),
    /// `include: [a, b]`.
    List(Vec<Spanned<serde_json::Value>>),
    /// Anything else (a number, a boolean): reported by the loader.
    Other(String),
}

impl<'de> Deserialize<'de> for Body {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct BodyVisitor;

        impl<'de> Visitor<'de> for BodyVisitor {
            type Value = Body;

            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a state (`kind: arguments`), or a list for `include:`")
            }

            fn visit_unit<E: serde::de::Error>(self) -> Result<Body, E> {
                Ok(Body::Empty)
            }

            fn visit_none<E: serde::de::Error>(self) -> Result<Body, E> {
                Ok(Body::Empty)
            }

            fn visit_str<E: serde::de::Error>(self, text: &str) -> Result<Body, E> {
                Ok(Body::Bare(text.to_owned()))
            }

            fn visit_bool<E: serde::de::Error>(self, b: bool) -> Result<Body, E> {
                Ok(Body::Other(b.to_string()))
            }

            fn visit_i64<E: serde::de::Error>(self, n: i64) -> Result<Body, E> {
                Ok(Body::Other(n.to_string()))
            }

            fn visit_u64<E: serde::de::Error>(self, n: u64) -> Result<Body, E> {
                Ok(Body::Other(n.to_string()))
            }

            fn visit_f64<E: serde::de::Error>(self, n: f64) -> Result<Body, E> {
                Ok(Body::Other(n.to_string()))
            }

            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Body, A::Error> {
                let mut kinds = Vec::new();
                while let Some(entry) = map.next_entry::<Spanned<String>, Fields>()? {
                    kinds.push(entry);
                }
                Ok(Body::Kinds(kinds))
            }

            fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Body, A::Error> {
                let mut items = Vec::new();
                while let Some(item) = seq.next_element::<Spanned<serde_json::Value>>()? {
                    items.push(item);
                }
                Ok(Body::List(items))
            }
        }

        deserializer.deserialize_any(BodyVisitor)
    }
}

/// One state as written, before its kind resolves it: the unit every
/// step here works on.
#[derive(Debug, Clone)]
pub struct RawState {
    pub id: String,
    pub id_at: Location,
    /// The full kind, `pkg.installed`.
    pub kind: String,
    pub kind_at: Location,
    /// The kind as written, with its place (arguments added by the loader
    /// are placed there).
    pub kind_span: Spanned<String>,
    pub fields: Fields,
}

impl RawState {
    /// The kind's module, `pkg` in `pkg.installed`.
    pub fn family(&self) -> &str {
        self.kind.split('.').next().unwrap_or(&self.kind)
    }
}

/// What is wrong with a construct of the language, at its place in the
/// file; the loader turns it into a diagnostic.
#[derive(Debug, Clone, PartialEq)]
pub struct Problem {
    pub at: Location,
    pub message: String,
    pub help: String,
}

impl Problem {
    pub fn new(at: Location, message: impl Into<String>, help: impl Into<String>) -> Self {
        Problem { at, message: message.into(), help: help.into() }
    }
}

/// Test helper: a file's top-level keys parsed as the loader does.
#[cfg(test)]
pub(crate) fn parse(text: &str) -> indexmap::IndexMap<Spanned<String>, Spanned<Body>> {
    crate::yaml::parse(std::path::Path::new("t.sls"), text).unwrap()
}

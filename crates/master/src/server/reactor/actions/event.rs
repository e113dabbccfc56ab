//! `event`: fire another event for the same agent. It goes on the bus and
//! through the reactors like an agent's own, so one reactor can hand work
//! to others (and outside subscribers see it).
//!
//! Loops: a reactor whose `on` matches the tag it fires, with no `when`, is
//! refused when the tree loads. Chains through several reactors are cut at
//! run time: each fired event is one hop deeper than its cause, and past
//! [`MAX_DEPTH`] hops the action fails (a `halite/reactor/<name>/failed`
//! event) instead of firing.

use futures_util::future::BoxFuture;
use halite_proto::{Event, Value};
use halite_state::StateTree;
use serde::Deserialize;

use super::{Action, ActionError, ActionKind, Context};

pub static KIND: ActionKind = ActionKind {
    name: "event",
    summary: "Fire another event for the same agent, with a fixed tag and data.",
    example: "- name: announce-drift\n  on: halite/beacon/*/nginx-conf\n  event:\n    tag: ops/nginx/drifted\n    data: {team: web}\n",
    compile,
};

/// How many `event` hops a chain of reactors may take from an agent's event.
pub const MAX_DEPTH: u32 = 8;

/// Data keys the action fills in itself.
const RESERVED: &[&str] = &["cause", "cause_tag", "depth"];

/// Tag prefixes halite raises itself; an `event` action may not imitate them.
const HALITE_TAGS: &[&str] =
    &["halite/beacon/", "halite/agent/", "halite/key/", "halite/job/", "halite/reactor/", "halite/master/"];

/// Why an `event` action does not compile or did not fire; names the tag.
#[derive(Debug, thiserror::Error)]
pub enum EventError {
    #[error("{0} (write `event: TAG` or `event: {{tag: TAG, data: {{…}}}}`)")]
    Config(serde_json::Error),
    #[error("`{0}`: write `event: TAG` or `event: {{tag: TAG, data: {{…}}}}`")]
    NotAnEvent(serde_json::Value),
    #[error("`{tag}` is not a tag: write one without spaces or glob characters, e.g. ops/nginx/drifted")]
    NotATag { tag: String },
    #[error("tag `{tag}`: `{prefix}…` tags are halite's own; use your own prefix, e.g. ops/…")]
    Halites { tag: String, prefix: &'static str },
    #[error("data key `{key}` is filled in by the action (keys it sets: {})", RESERVED.join(", "))]
    Reserved { key: &'static str },
    #[error(
        "not firing {tag}: the chain of `event` actions from the agent's event is {MAX_DEPTH} hops deep already (reactors firing each other in a loop?)"
    )]
    TooDeep { tag: String },
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Config {
    tag: String,
    #[serde(default)]
    data: serde_json::Map<String, serde_json::Value>,
}

#[derive(Debug)]
struct FireEvent {
    tag: String,
    data: serde_json::Map<String, serde_json::Value>,
}

fn compile(value: &serde_json::Value, _tree: &StateTree) -> Result<Box<dyn Action>, ActionError> {
    let config = match value {
        serde_json::Value::String(tag) => Config { tag: tag.clone(), data: serde_json::Map::new() },
        other @ serde_json::Value::Object(_) => Config::deserialize(other).map_err(EventError::Config)?,
        other => return Err(EventError::NotAnEvent(other.clone()).into()),
    };
    let tag = config.tag.trim();
    if tag.is_empty() || tag.contains(char::is_whitespace) || tag.contains(['*', '?', '[', ']', '{', '}']) {
        return Err(EventError::NotATag { tag: config.tag.clone() }.into());
    }
    if let Some(prefix) = HALITE_TAGS.iter().find(|p| tag.starts_with(**p)) {
        return Err(EventError::Halites { tag: tag.to_owned(), prefix }.into());
    }
    if let Some(key) = RESERVED.iter().find(|k| config.data.contains_key(**k)) {
        return Err(EventError::Reserved { key }.into());
    }
    Ok(Box::new(FireEvent { tag: tag.to_owned(), data: config.data }))
}

impl Action for FireEvent {
    fn describe(&self) -> String {
        let data = if self.data.is_empty() {
            String::new()
        } else {
            format!(" with data {}", serde_json::Value::Object(self.data.clone()))
        };
        format!("fire {}{data} for the same agent", self.tag)
    }

    fn fires(&self) -> Option<&str> {
        Some(&self.tag)
    }

    fn would_fire(&self, agent: &str, cause: &Event, depth: u32) -> Option<Event> {
        let data = Value::from_json(&serde_json::Value::Object(self.data.clone()))
            .with("cause", cause.id.to_string())
            .with("cause_tag", cause.tag.as_str())
            .with("depth", i64::from(depth));
        Some(Event::new(self.tag.as_str(), agent, data))
    }

    fn run<'a>(
        &'a self,
        context: &'a Context,
        agent: &'a str,
        event: &'a Event,
    ) -> BoxFuture<'a, Result<String, ActionError>> {
        Box::pin(async move {
            let depth = context.depth + 1;
            if depth > MAX_DEPTH {
                return Err(EventError::TooDeep { tag: self.tag.clone() }.into());
            }
            let Some(fired) = self.would_fire(agent, event, depth) else { unreachable!("an event action fires") };
            let fired = context.bus.publish(fired);
            context.reactions.on_event_at(&fired, depth);
            Ok(format!("fired {} (event {})", self.tag, fired.id))
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn compile_yaml(json: serde_json::Value) -> Result<Box<dyn Action>, String> {
        compile(&json, &StateTree::default()).map_err(|e| e.to_string())
    }

    #[test]
    fn tags_and_data_are_checked_when_the_tree_loads() {
        use serde_json::json;
        let cases = [
            (json!("ops/nginx/drifted"), None),
            (json!({"tag": "ops/x", "data": {"team": "web"}}), None),
            (json!("ops/*"), Some("glob")),
            (json!("halite/beacon/web01/x"), Some("halite's own")),
            (json!({"tag": "ops/x", "data": {"depth": 1}}), Some("filled in by the action")),
            (json!({"tag": "ops/x", "extra": 1}), Some("unknown field")),
            (json!(["ops/x"]), Some("write `event: TAG`")),
        ];
        for (value, error) in cases {
            match (compile_yaml(value.clone()), error) {
                (Ok(_), None) => {}
                (Err(e), Some(wanted)) => assert!(e.contains(wanted), "{value}: {e}"),
                (Ok(_), Some(wanted)) => panic!("{value}: compiled, wanted an error with `{wanted}`"),
                (Err(e), None) => panic!("{value}: {e}"),
            }
        }
    }
}

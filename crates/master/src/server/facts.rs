//! `halite-master facts` on the master's side: the facts connected,
//! accepted agents sent in their hello, for the agents a target matches,
//! all of them or the names asked for.

use std::collections::BTreeMap;

use halite_state::Target;

use crate::protocol::Response;
use crate::server::context::Master;

/// The answer to `facts TARGET [NAME…]`.
pub fn answer(master: &Master, target: &str, names: &[String]) -> Response {
    let target = match Target::parse(target) {
        Ok(target) => target,
        Err(error) => {
            return Response {
                ok: false,
                error: Some(format!("{error} (write e.g. 'web*', L@web01,web02 or 'G@os:debian and not db*')")),
                ..Response::default()
            };
        }
    };
    let facts: BTreeMap<String, serde_json::Value> = master
        .sessions
        .accepted_with_facts()
        .into_iter()
        .filter(|(agent, facts)| target.matches(agent, facts))
        .map(|(agent, facts)| (agent, select(&facts.to_json(), names)))
        .collect();
    if facts.is_empty() {
        let connected: Vec<String> = master.sessions.accepted_agents();
        let connected = if connected.is_empty() { "none".to_owned() } else { connected.join(", ") };
        return Response {
            ok: false,
            error: Some(format!("the target matches no connected agent (connected: {connected})")),
            no_agent: true,
            ..Response::default()
        };
    }
    Response { ok: true, facts, ..Response::default() }
}

/// The facts named (a dotted name reads inside a mapping: `os_release.id`),
/// each `null` when the agent has no such fact; all of them when no name
/// is given.
fn select(facts: &serde_json::Value, names: &[String]) -> serde_json::Value {
    if names.is_empty() {
        return facts.clone();
    }
    let picked = names
        .iter()
        .map(|name| {
            let value = name.split('.').try_fold(facts, |value, key| value.get(key)).cloned();
            (name.clone(), value.unwrap_or(serde_json::Value::Null))
        })
        .collect();
    serde_json::Value::Object(picked)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_pick_facts_and_dots_read_inside() {
        let facts = serde_json::json!({"os": "debian", "cpus": 4, "os_release": {"id": "debian"}});
        let names = |list: &[&str]| list.iter().map(|s| (*s).to_owned()).collect::<Vec<_>>();
        let cases = [
            (names(&["os"]), serde_json::json!({"os": "debian"})),
            (names(&["cpus", "os_release.id"]), serde_json::json!({"cpus": 4, "os_release.id": "debian"})),
            (names(&["nope", "os.x"]), serde_json::json!({"nope": null, "os.x": null})),
            (names(&[]), facts.clone()),
        ];
        for (asked, expected) in cases {
            assert_eq!(select(&facts, &asked), expected, "{asked:?}");
        }
    }
}

//! `halite-master facts TARGET [NAME…]`: the facts of the connected agents
//! TARGET matches (what `G@` targets and templates' `facts` read), all of
//! them or the names given, as text or JSON.

use std::fmt::Write as _;
use std::path::Path;

use super::exit::Code;
use crate::protocol::Request;

/// Asks the master in `data_dir`; returns the exit code (`exit.rs`): 0, 1
/// (refused, e.g. a bad target) or 4 (the target matches no connected
/// agent).
pub fn run(data_dir: &Path, target: &str, names: Vec<String>, json: bool) -> anyhow::Result<u8> {
    let request = Request::Facts { target: target.to_owned(), names };
    let response = super::runtime()?.block_on(super::request(data_dir, &request))?;
    if let Some(error) = response.error {
        eprintln!("error: {error}");
        return Ok(if response.no_agent { Code::NoMatch } else { Code::Failed } as u8);
    }
    if json {
        println!("{}", serde_json::to_string_pretty(&response.facts)?);
    } else {
        print!("{}", text(&response.facts));
    }
    Ok(0)
}

/// One block per agent, one `name: value` line per fact (strings bare,
/// anything else as JSON, `-` for a fact the agent does not have).
pub fn text(facts: &std::collections::BTreeMap<String, serde_json::Value>) -> String {
    let mut out = String::new();
    for (agent, facts) in facts {
        let _ = writeln!(out, "{agent}:");
        let Some(map) = facts.as_object() else { continue };
        for (name, value) in map {
            let value = match value {
                serde_json::Value::String(s) => s.clone(),
                serde_json::Value::Null => "-".to_owned(),
                other => other.to_string(),
            };
            let _ = writeln!(out, "  {name}: {value}");
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_block_per_agent() {
        let facts = [
            ("web02".to_owned(), serde_json::json!({"os": "debian", "cpus": 4, "nope": null})),
            ("web01".to_owned(), serde_json::json!({"ips": ["10.0.0.1"]})),
        ]
        .into_iter()
        .collect();
        assert_eq!(text(&facts), "web01:\n  ips: [\"10.0.0.1\"]\nweb02:\n  cpus: 4\n  nope: -\n  os: debian\n");
    }
}

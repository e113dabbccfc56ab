//! `halite-master inventory TARGET`: every path the file beacons of the
//! agents a target matches watch, asked of the agents now and classified
//! by the running master (`server/inventory.rs`): in state, drifted,
//! unmanaged, directory, absent.

use std::path::Path;

use super::exit::Code;
use crate::protocol::Request;
use crate::server::inventory::{AgentInventory, Coverage};

/// Asks the master in `data_dir` and prints the answer; returns the exit
/// code (`exit.rs`): 0, 1 (an agent could not be asked, or refused) or 4
/// (the target matches no connected agent).
pub fn run(data_dir: &Path, target: &str, json: bool) -> anyhow::Result<u8> {
    let request = Request::Inventory { target: target.to_owned() };
    let response = super::runtime()?.block_on(super::request(data_dir, &request))?;
    if let Some(error) = response.error {
        eprintln!("error: {error}");
        return Ok(if response.no_agent { Code::NoMatch } else { Code::Failed } as u8);
    }
    if json {
        println!("{}", serde_json::to_string_pretty(&response.inventory)?);
    } else {
        // Paths come from agents: shown, never obeyed.
        print!("{}", halite_proto::text::escape(&text(&response.inventory)));
    }
    Ok(if response.inventory.iter().all(|a| a.error.is_none()) { 0 } else { Code::Failed as u8 })
}

fn label(coverage: Coverage) -> &'static str {
    match coverage {
        Coverage::InState => "in state",
        Coverage::Drifted => "DRIFTED",
        Coverage::Unmanaged => "unmanaged",
        Coverage::Directory => "directory",
        Coverage::Absent => "absent",
    }
}

/// Per agent: a count per coverage, then one line per path.
pub fn text(inventories: &[AgentInventory]) -> String {
    let mut out = String::new();
    for agent in inventories {
        if let Some(error) = &agent.error {
            out.push_str(&format!("{}: {error}\n", agent.agent));
            continue;
        }
        let count = |c: Coverage| agent.paths.iter().filter(|p| p.coverage == c).count();
        out.push_str(&format!(
            "{}: {} in state, {} drifted, {} unmanaged{}\n",
            agent.agent,
            count(Coverage::InState),
            count(Coverage::Drifted),
            count(Coverage::Unmanaged),
            if agent.truncated { " (more paths are watched than listed)" } else { "" }
        ));
        let width = agent.paths.iter().map(|p| label(p.coverage).len()).max().unwrap_or(0);
        for row in &agent.paths {
            out.push_str(&format!("  {:<width$}  {}  ({})\n", label(row.coverage), row.path, row.beacon));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::server::inventory::Row;

    #[test]
    fn each_agent_is_summed_then_listed() {
        let row = |path: &str, coverage| Row { path: path.into(), beacon: "app".into(), coverage, sha256: None };
        let inventories = [
            AgentInventory {
                agent: "web01".into(),
                truncated: false,
                paths: vec![row("/etc/app", Coverage::Directory), row("/etc/app/local.conf", Coverage::Unmanaged)],
                error: None,
            },
            AgentInventory { agent: "web02".into(), truncated: false, paths: vec![], error: Some("gone".into()) },
        ];
        assert_eq!(
            text(&inventories),
            "web01: 0 in state, 0 drifted, 1 unmanaged\n  directory  /etc/app  (app)\n  unmanaged  /etc/app/local.conf  (app)\nweb02: gone\n"
        );
    }
}

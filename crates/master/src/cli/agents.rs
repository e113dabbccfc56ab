//! `halite-master agents`: every agent the running master knows, as a
//! table (or JSON). The rows come from the master (`server/ledger.rs`).

use std::path::Path;

use crate::protocol::{AgentRow, Compliance, Request};

/// Asks the master in `data_dir` for its agents and prints them.
pub fn run(data_dir: &Path, json: bool) -> anyhow::Result<bool> {
    let response = super::runtime()?.block_on(super::request(data_dir, &Request::Agents))?;
    if let Some(error) = response.error {
        anyhow::bail!(error);
    }
    if json {
        println!("{}", serde_json::to_string_pretty(&response.agents)?);
    } else if response.agents.is_empty() {
        println!("no agents yet");
    } else {
        // Versions, addresses and facts come from agents: shown, never obeyed.
        print!("{}", halite_proto::text::escape(&table(&response.agents, halite_proto::event::now_us())));
        print!("{}", halite_proto::text::escape(&by_master(&response.agents)));
    }
    Ok(true)
}

/// With several masters: which agents are on which master, with the tree
/// version each serves, and a warning when they serve more than one.
/// Empty on a lone master.
pub fn by_master(rows: &[AgentRow]) -> String {
    let mut masters: std::collections::BTreeMap<(&str, &str), Vec<&str>> = std::collections::BTreeMap::new();
    for row in rows {
        if let Some(master) = &row.master {
            masters.entry((master, row.tree.as_deref().unwrap_or("?"))).or_default().push(&row.id);
        }
    }
    if masters.is_empty() {
        return String::new();
    }
    let mut text = String::from("\nby master (tree version):\n");
    for ((master, tree), agents) in &masters {
        text.push_str(&format!("  {master} (tree {tree}): {}\n", agents.join(", ")));
    }
    let trees: std::collections::BTreeSet<&str> = masters.keys().map(|(_, tree)| *tree).collect();
    if trees.len() > 1 {
        let trees: Vec<&str> = trees.into_iter().collect();
        text.push_str(&format!(
            "warning: the masters serve {} tree versions ({}); bring every master's copy of the tree to the same commit\n",
            trees.len(),
            trees.join(", ")
        ));
    }
    text
}

/// The table `halite-master agents` prints; `now_us` makes ages relative.
pub fn table(rows: &[AgentRow], now_us: i64) -> String {
    let header =
        ["ID", "KEY", "ADDRESS", "VERSION", "CONNECTED", "LAST EVENT", "COMPLIANCE", "LAST RESTORE", "QUEUED", "FACTS"];
    let mut lines: Vec<[String; 10]> = vec![header.map(str::to_owned)];
    for row in rows {
        let ago = |us: Option<i64>| us.map_or_else(|| "-".to_owned(), |us| format!("{} ago", age(now_us - us)));
        let compliance = match &row.compliance {
            Compliance::Unknown => "unknown".to_owned(),
            Compliance::Compliant { since_us } => format!("compliant ({} ago)", age(now_us - since_us)),
            Compliance::Drifted { since_us, path } => format!(
                "drifted {} ago{}",
                age(now_us - since_us),
                path.as_ref().map(|p| format!(": {p}")).unwrap_or_default()
            ),
            Compliance::Failing { since_us } => format!("failing {} ago", age(now_us - since_us)),
            Compliance::Stale { since_us } => format!("stale {} ago", age(now_us - since_us)),
            Compliance::Restoring { since_us, path } => format!(
                "restoring (drifted {} ago{})",
                age(now_us - since_us),
                path.as_ref().map(|p| format!(": {p}")).unwrap_or_default()
            ),
        };
        // The last receipt: how long ago, what kind, and a restore's latency.
        let last_restore = row.last_receipt.as_ref().map_or_else(
            || "-".to_owned(),
            |r| {
                let latency = r.latency_us.map(|l| format!(" in {}", super::receipts::latency(l))).unwrap_or_default();
                format!("{} ago, {}{latency}", age(now_us - r.at_us), r.kind.as_str())
            },
        );
        lines.push([
            row.id.clone(),
            row.key.clone(),
            row.address.clone().unwrap_or_else(|| if row.connected { "unknown" } else { "-" }.to_owned()),
            row.version.clone().unwrap_or_else(|| "-".to_owned()),
            if row.connected { ago(row.connected_since_us) } else { "no".to_owned() },
            ago(row.last_event_us),
            compliance,
            last_restore,
            row.queued.to_string(),
            facts_summary(&row.facts),
        ]);
    }
    let mut widths = [0usize; 10];
    for line in &lines {
        for (width, cell) in widths.iter_mut().zip(line) {
            *width = (*width).max(cell.chars().count());
        }
    }
    let mut out = String::new();
    for line in &lines {
        let mut text = String::new();
        for (i, (cell, width)) in line.iter().zip(widths).enumerate() {
            if i + 1 == line.len() {
                text.push_str(cell);
            } else {
                text.push_str(&format!("{cell:<width$}  "));
            }
        }
        out.push_str(text.trim_end());
        out.push('\n');
    }
    out
}

/// `debian 12, 4 cpus`: the facts that tell hosts apart at a glance; the
/// rest is in `--json`.
fn facts_summary(facts: &serde_json::Value) -> String {
    let text = |key: &str| facts.get(key).and_then(|v| v.as_str()).filter(|s| !s.is_empty());
    let mut parts = Vec::new();
    match (text("os"), text("os_version")) {
        (Some(os), Some(version)) => parts.push(format!("{os} {version}")),
        (Some(os), None) => parts.push(os.to_owned()),
        _ => {}
    }
    if let Some(cpus) = facts.get("cpus").and_then(serde_json::Value::as_i64) {
        parts.push(format!("{cpus} cpus"));
    }
    if parts.is_empty() { "-".to_owned() } else { parts.join(", ") }
}

/// `3s`, `5m`, `2h`, `4d`: how long ago, roughly.
fn age(us: i64) -> String {
    let seconds = us.max(0) / 1_000_000;
    match seconds {
        0..60 => format!("{seconds}s"),
        60..3600 => format!("{}m", seconds / 60),
        3600..86_400 => format!("{}h", seconds / 3600),
        _ => format!("{}d", seconds / 86_400),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn facts_tell_hosts_apart_at_a_glance() {
        let facts = serde_json::json!({"os": "debian", "os_version": "12", "cpus": 4});
        assert_eq!(facts_summary(&facts), "debian 12, 4 cpus");
    }

    #[test]
    fn the_table_lines_up() {
        let mut row = AgentRow::unknown("web01");
        row.key = "accepted".into();
        row.connected = true;
        row.address = Some("127.0.0.1:4242".into());
        row.connected_since_us = Some(0);
        row.compliance = Compliance::Compliant { since_us: 30_000_000 };
        row.queued = 3;
        let mut pending = AgentRow::unknown("db01");
        pending.key = "pending".into();
        let text = table(&[pending, row], 90_000_000);
        assert_eq!(
            text,
            "ID     KEY       ADDRESS         VERSION  CONNECTED  LAST EVENT  COMPLIANCE          LAST RESTORE  QUEUED  FACTS\n\
             db01   pending   -               -        no         -           unknown             -             0       -\n\
             web01  accepted  127.0.0.1:4242  -        1m ago     -           compliant (1m ago)  -             3       -\n"
        );
    }
}

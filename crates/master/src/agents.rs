//! `halite-master agents`: who is there, since when, what they last said,
//! and whether their watched files are as desired.
//!
//! The [`Ledger`] watches the bus (every published event passes through
//! [`Ledger::observe`]) and keeps, per agent, its version and facts from its
//! last `connected` event, the time of its last beacon event, and its
//! compliance. The rows the command prints join the ledger with the key
//! store (every known id, pending ones too) and the live sessions (address,
//! connected since).
//!
//! Compliance is what the master has seen since it started, per agent:
//! - `unknown`: no job has returned for the agent yet;
//! - `compliant since T`: the last job returned without a failure and no
//!   managed file drifted since;
//! - `drifted since T`: a beacon reported a change to a managed file
//!   (`data.managed == true`) at T and no job has returned since;
//! - `failing since T`: the last job to return had a failed state.
//!
//! It is per agent, not per file: a job that applies only some states ends
//! a drift of another file too. The corrective job of a drift normally
//! returns milliseconds later, so a lasting `drifted` means the restore did
//! not happen (no reactor for that file, or the agent is gone).

use std::collections::{BTreeMap, HashMap};
use std::time::UNIX_EPOCH;

use halite_proto::Event;
use serde::{Deserialize, Serialize};

use crate::daemon::Master;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "state", rename_all = "snake_case")]
pub enum Compliance {
    Unknown,
    Compliant { since_us: i64 },
    Drifted { since_us: i64, path: Option<String> },
    Failing { since_us: i64 },
}

/// What the bus told us about one agent.
#[derive(Debug, Clone, Default)]
struct Seen {
    version: Option<String>,
    facts: Option<serde_json::Value>,
    last_event_us: Option<i64>,
    compliance: Option<Compliance>,
}

/// Per agent, what the bus has said. One entry per agent id that connected
/// or raised an event: bounded by the fleet, not by traffic.
#[derive(Debug, Default)]
pub struct Ledger {
    agents: HashMap<String, Seen>,
}

impl Ledger {
    /// Takes note of an event going on the bus. Cheap: called for every
    /// event, under the bus's lock.
    pub fn observe(&mut self, event: &Event) {
        let Some(rest) = event.tag.strip_prefix("halite/") else { return };
        let mut parts = rest.split('/');
        match (parts.next(), parts.next(), parts.next(), parts.next()) {
            (Some("agent"), Some(agent), Some("connected"), None) => {
                let seen = self.agents.entry(agent.to_owned()).or_default();
                seen.version = event.data.get("version").and_then(|v| v.as_str()).map(str::to_owned);
                seen.facts = event.data.get("facts").map(halite_proto::Value::to_json);
            }
            (Some("beacon"), Some(agent), Some(_), None) if agent == event.agent => {
                let seen = self.agents.entry(agent.to_owned()).or_default();
                seen.last_event_us = Some(event.time_us);
                let managed = matches!(event.data.get("managed"), Some(halite_proto::Value::Bool(true)));
                if managed && !matches!(seen.compliance, Some(Compliance::Drifted { .. })) {
                    let path = event.data.get("path").and_then(|p| p.as_str()).map(str::to_owned);
                    seen.compliance = Some(Compliance::Drifted { since_us: event.time_us, path });
                }
            }
            (Some("job"), Some(_), Some("ret"), Some(agent)) => {
                let failed = matches!(event.data.get("failed"), Some(halite_proto::Value::Bool(true)));
                let seen = self.agents.entry(agent.to_owned()).or_default();
                let keep_since = match (&seen.compliance, failed) {
                    (Some(Compliance::Failing { since_us }), true)
                    | (Some(Compliance::Compliant { since_us }), false) => Some(*since_us),
                    _ => None,
                };
                let since_us = keep_since.unwrap_or(event.time_us);
                seen.compliance =
                    Some(if failed { Compliance::Failing { since_us } } else { Compliance::Compliant { since_us } });
            }
            _ => {}
        }
    }
}

/// One line of `halite-master agents`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct AgentRow {
    pub id: String,
    /// The key's status: accepted, pending or rejected (`unknown` for a
    /// session whose key was deleted a moment ago).
    pub key: String,
    pub connected: bool,
    /// The peer's address as the agent link saw it, while connected.
    pub address: Option<String>,
    pub version: Option<String>,
    /// All facts (from the live session, else from its last `connected`).
    pub facts: serde_json::Value,
    pub connected_since_us: Option<i64>,
    pub last_event_us: Option<i64>,
    pub compliance: Compliance,
    /// Reactions waiting in the master's queue for this agent (at most
    /// `reactor::engine::AGENT_QUEUE`): a flood shows here first.
    #[serde(default)]
    pub queued: usize,
}

/// Every known agent, by id.
pub fn rows(master: &Master) -> Vec<AgentRow> {
    let mut rows: BTreeMap<String, AgentRow> = BTreeMap::new();
    for entry in master.keys.list() {
        let row = rows.entry(entry.id.clone()).or_insert_with(|| empty_row(&entry.id));
        // An id with two keys (an impostor pending beside the real one):
        // the accepted key speaks for it.
        if row.key != "accepted" {
            row.key = entry.status.as_str().to_owned();
        }
    }
    for session in master.sessions.list() {
        let row = rows.entry(session.agent.clone()).or_insert_with(|| empty_row(&session.agent));
        if row.connected && !session.accepted {
            continue;
        }
        row.connected = true;
        row.address = session.address;
        row.facts = session.facts.to_json();
        row.connected_since_us =
            session.since.duration_since(UNIX_EPOCH).ok().and_then(|d| i64::try_from(d.as_micros()).ok());
    }
    let ledger = master.bus.ledger();
    for (id, row) in &mut rows {
        let Some(seen) = ledger.agents.get(id) else { continue };
        row.version.clone_from(&seen.version);
        row.last_event_us = seen.last_event_us;
        if let Some(compliance) = &seen.compliance {
            row.compliance = compliance.clone();
        }
        if row.facts.is_null()
            && let Some(facts) = &seen.facts
        {
            row.facts = facts.clone();
        }
    }
    for (agent, depth) in master.engine.queue_depths() {
        if let Some(row) = rows.get_mut(&agent) {
            row.queued = depth;
        }
    }
    rows.into_values().collect()
}

fn empty_row(id: &str) -> AgentRow {
    AgentRow {
        id: id.to_owned(),
        key: "unknown".into(),
        connected: false,
        address: None,
        version: None,
        facts: serde_json::Value::Null,
        connected_since_us: None,
        last_event_us: None,
        compliance: Compliance::Unknown,
        queued: 0,
    }
}

/// The table `halite-master agents` prints; `now_us` makes ages relative.
pub fn table(rows: &[AgentRow], now_us: i64) -> String {
    let header = ["ID", "KEY", "ADDRESS", "VERSION", "CONNECTED", "LAST EVENT", "COMPLIANCE", "QUEUED", "FACTS"];
    let mut lines: Vec<[String; 9]> = vec![header.map(str::to_owned)];
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
        };
        lines.push([
            row.id.clone(),
            row.key.clone(),
            row.address.clone().unwrap_or_else(|| if row.connected { "unknown" } else { "-" }.to_owned()),
            row.version.clone().unwrap_or_else(|| "-".to_owned()),
            if row.connected { ago(row.connected_since_us) } else { "no".to_owned() },
            ago(row.last_event_us),
            compliance,
            row.queued.to_string(),
            facts_summary(&row.facts),
        ]);
    }
    let mut widths = [0usize; 9];
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
    use halite_proto::{Id, Value};

    use super::*;

    fn at(mut event: Event, time_us: i64) -> Event {
        event.time_us = time_us;
        event
    }

    #[test]
    fn compliance_follows_drifts_and_job_results() {
        let drift = |t| {
            at(
                Event::new(
                    "halite/beacon/web01/nginx-conf",
                    "web01",
                    Value::map().with("managed", true).with("path", "/etc/nginx/nginx.conf"),
                ),
                t,
            )
        };
        let unmanaged = |t| at(Event::new("halite/beacon/web01/cpu", "web01", Value::map().with("state", "above")), t);
        let ret = |t, failed: bool| {
            at(
                Event::new(format!("halite/job/{}/ret/web01", Id::new()), "web01", Value::map().with("failed", failed)),
                t,
            )
        };
        let drifted = |since_us| Compliance::Drifted { since_us, path: Some("/etc/nginx/nginx.conf".into()) };
        // (event, compliance after it)
        let steps = [
            (unmanaged(1), None),
            (ret(2, false), Some(Compliance::Compliant { since_us: 2 })),
            (ret(3, false), Some(Compliance::Compliant { since_us: 2 })),
            (unmanaged(4), Some(Compliance::Compliant { since_us: 2 })),
            (drift(5), Some(drifted(5))),
            (drift(6), Some(drifted(5))),
            (ret(7, false), Some(Compliance::Compliant { since_us: 7 })),
            (ret(8, true), Some(Compliance::Failing { since_us: 8 })),
            (ret(9, true), Some(Compliance::Failing { since_us: 8 })),
            (drift(10), Some(drifted(10))),
        ];
        let mut ledger = Ledger::default();
        for (i, (event, expected)) in steps.into_iter().enumerate() {
            ledger.observe(&event);
            assert_eq!(ledger.agents.get("web01").and_then(|s| s.compliance.clone()), expected, "step {i}");
        }
        assert_eq!(ledger.agents["web01"].last_event_us, Some(10));
    }

    #[test]
    fn connected_events_give_version_and_facts_and_others_are_ignored() {
        let mut ledger = Ledger::default();
        let facts = Value::map().with("os", "debian").with("os_version", "12").with("cpus", 4i64);
        ledger.observe(&Event::new(
            "halite/agent/web01/connected",
            "web01",
            Value::map().with("version", "0.1.0").with("facts", facts),
        ));
        // An event in another agent's beacon tag is not that agent's.
        ledger.observe(&Event::new("halite/beacon/web02/x", "web01", Value::map()));
        ledger.observe(&Event::new("halite/key/db01/pending", "db01", Value::map()));
        assert_eq!(ledger.agents.len(), 1);
        let seen = &ledger.agents["web01"];
        assert_eq!(seen.version.as_deref(), Some("0.1.0"));
        assert_eq!(facts_summary(seen.facts.as_ref().unwrap()), "debian 12, 4 cpus");
    }

    #[test]
    fn the_table_lines_up() {
        let mut row = empty_row("web01");
        row.key = "accepted".into();
        row.connected = true;
        row.address = Some("127.0.0.1:4242".into());
        row.connected_since_us = Some(0);
        row.compliance = Compliance::Compliant { since_us: 30_000_000 };
        row.queued = 3;
        let mut pending = empty_row("db01");
        pending.key = "pending".into();
        let text = table(&[pending, row], 90_000_000);
        assert_eq!(
            text,
            "ID     KEY       ADDRESS         VERSION  CONNECTED  LAST EVENT  COMPLIANCE          QUEUED  FACTS\n\
             db01   pending   -               -        no         -           unknown             0       -\n\
             web01  accepted  127.0.0.1:4242  -        1m ago     -           compliant (1m ago)  3       -\n"
        );
    }
}

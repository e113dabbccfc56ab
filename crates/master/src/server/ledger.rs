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
//! Compliance (`compliant`, `drifted`, `restoring`, `failing`, `stale`,
//! `unknown`) follows the rules in `compliance.rs`, applied here to each
//! event as it passes.

use std::collections::HashMap;

use halite_proto::Event;

use crate::protocol::Compliance;
use crate::server::compliance::{Observation, next};

/// What the bus told us about one agent.
#[derive(Debug, Clone, Default)]
pub struct Seen {
    pub version: Option<String>,
    pub facts: Option<serde_json::Value>,
    pub last_event_us: Option<i64>,
    pub compliance: Option<Compliance>,
}

/// Per agent, what the bus has said. One entry per agent id that connected
/// or raised an event: bounded by the fleet, not by traffic.
#[derive(Debug, Default)]
pub struct Ledger {
    agents: HashMap<String, Seen>,
    /// The last `halite/master/tree/reloaded` or `tree/failed` (the API's
    /// tree view).
    last_reload: Option<Event>,
}

impl Ledger {
    /// What the bus said about `agent`, if anything.
    pub fn seen(&self, agent: &str) -> Option<&Seen> {
        self.agents.get(agent)
    }

    /// The last reload's event (`tree/reloaded` or `tree/failed`), if any
    /// since the master started.
    pub fn last_reload(&self) -> Option<&Event> {
        self.last_reload.as_ref()
    }

    /// Takes note of an event going on the bus. Cheap: called for every
    /// event, under the bus's lock.
    pub fn observe(&mut self, event: &Event) {
        let Some(rest) = event.tag.strip_prefix("halite/") else { return };
        let mut parts = rest.split('/');
        match (parts.next(), parts.next(), parts.next(), parts.next()) {
            (Some("master"), Some("tree"), Some("reloaded" | "failed"), None) => {
                self.last_reload = Some(event.clone());
            }
            (Some("agent"), Some(agent), Some("connected"), None) => {
                let seen = self.agents.entry(agent.to_owned()).or_default();
                seen.version = event.data.get("version").and_then(|v| v.as_str()).map(str::to_owned);
                seen.facts = event.data.get("facts").map(halite_proto::Value::to_json);
            }
            (Some("agent"), Some(agent), Some("stale"), None) => {
                let seen = self.agents.entry(agent.to_owned()).or_default();
                seen.compliance = next(seen.compliance.as_ref(), Observation::Stale { at_us: event.time_us });
            }
            (Some("beacon"), Some(agent), Some(_), None) if agent == event.agent => {
                let seen = self.agents.entry(agent.to_owned()).or_default();
                seen.last_event_us = Some(event.time_us);
                let managed = matches!(event.data.get("managed"), Some(halite_proto::Value::Bool(true)));
                if managed {
                    let path = event.data.get("path").and_then(|p| p.as_str());
                    seen.compliance = next(seen.compliance.as_ref(), Observation::Drift { at_us: event.time_us, path });
                }
            }
            // A job sent: a test run or an ad-hoc command restores nothing.
            (Some("job"), Some(_), Some("new"), None) if !enforces(event) => {}
            (Some("job"), Some(_), Some("new"), None) => {
                if let Some(seen) = self.agents.get_mut(event.agent.as_str()) {
                    seen.compliance = next(seen.compliance.as_ref(), Observation::JobSent { at_us: event.time_us });
                }
            }
            // An ad-hoc command (`halite-master cmd`) enforces nothing.
            (Some("job"), Some(_), Some("ret"), Some(_)) if is_ad_hoc(event) => {}
            (Some("job"), Some(_), Some("ret"), Some(agent)) => {
                let failed = matches!(event.data.get("failed"), Some(halite_proto::Value::Bool(true)));
                let seen = self.agents.entry(agent.to_owned()).or_default();
                seen.compliance =
                    next(seen.compliance.as_ref(), Observation::JobReturned { at_us: event.time_us, failed });
            }
            _ => {}
        }
    }
}

/// Whether a sent job (`halite/job/<jid>/new`) enforces states: not a test
/// run, not the one state of `halite-master cmd`.
fn enforces(new: &Event) -> bool {
    if matches!(new.data.get("test"), Some(halite_proto::Value::Bool(true))) {
        return false;
    }
    match new.data.get("states") {
        Some(halite_proto::Value::List(states)) => {
            !(states.len() == 1 && states[0].as_str() == Some(crate::protocol::CMD_STATE_ID))
        }
        _ => true,
    }
}

/// Whether a job's result is that of `halite-master cmd`: its one state
/// is the ad-hoc command's.
fn is_ad_hoc(ret: &Event) -> bool {
    match ret.data.get("results") {
        Some(halite_proto::Value::List(results)) => {
            results.len() == 1 && results[0].get("id").and_then(|id| id.as_str()) == Some(crate::protocol::CMD_STATE_ID)
        }
        _ => false,
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
        let cmd_ret = |t| {
            let result = Value::map().with("id", crate::protocol::CMD_STATE_ID).with("kind", "cmd.run");
            at(
                Event::new(
                    format!("halite/job/{}/ret/web01", Id::new()),
                    "web01",
                    Value::map().with("failed", false).with("results", Value::List(vec![result])),
                ),
                t,
            )
        };
        let stale = |t| at(Event::new("halite/agent/web01/stale", "", Value::map()), t);
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
            (cmd_ret(11), Some(drifted(10))),
            (stale(12), Some(Compliance::Stale { since_us: 12 })),
            (stale(13), Some(Compliance::Stale { since_us: 12 })),
            (ret(14, false), Some(Compliance::Compliant { since_us: 14 })),
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
        assert_eq!(seen.facts, Some(serde_json::json!({"os": "debian", "os_version": "12", "cpus": 4})));
    }
}

//! Per-agent compliance: the rules, and the functions the CLI's `agents`
//! and the API read it through (each agent's state is in its
//! `control::agent_rows` row; [`label`] names it, [`counts`] sums a fleet).
//! Pure: it imports nothing of the running master, so the ledger, which
//! the bus feeds, can apply [`next`].
//!
//! An agent's compliance is what the bus has said about it since the master
//! started (the ledger, `ledger.rs`, feeds every event to [`next`]):
//! - `unknown`: no job has returned for the agent yet;
//! - `compliant since T`: the last job to return had no failed state, and
//!   no managed file drifted since;
//! - `drifted since T`: a beacon reported a change to a managed file
//!   (`data.managed == true`) at T, and no job has been sent to the agent
//!   since;
//! - `restoring since T`: drifted at T, and a job (not a test run, not an
//!   ad-hoc `cmd`) has been sent to the agent since, not yet returned;
//! - `failing since T`: the last job to return had a failed state;
//! - `stale since T`: a reload changed the states rendered for the agent at
//!   T (`halite/agent/<id>/stale`, from `reload.rs`), and no job has
//!   returned since.
//!
//! `T` is kept while the state lasts (a second drift does not move it; a
//! `restoring` keeps its drift's time). It is per agent, not per file: a
//! job that applies only some states ends a drift of another file too. A
//! restore normally returns within milliseconds, so a lasting `drifted`
//! means no reactor restores that file or the agent is gone, and a lasting
//! `restoring` a job that does not come back.

use crate::protocol::{AgentRow, Compliance};

/// What the bus said about an agent that may change its compliance.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Observation<'a> {
    /// A beacon reported a change to a managed file.
    Drift { at_us: i64, path: Option<&'a str> },
    /// A job that enforces states was sent to the agent.
    JobSent { at_us: i64 },
    /// An enforcing job returned, with or without a failed state.
    JobReturned { at_us: i64, failed: bool },
    /// A reload changed the agent's rendered states.
    Stale { at_us: i64 },
}

/// The compliance after `seen`, given the current one (`None`: unknown).
pub fn next(current: Option<&Compliance>, seen: Observation<'_>) -> Option<Compliance> {
    match seen {
        Observation::Drift { at_us, path } => match current {
            Some(Compliance::Drifted { .. } | Compliance::Restoring { .. }) => current.cloned(),
            _ => Some(Compliance::Drifted { since_us: at_us, path: path.map(str::to_owned) }),
        },
        Observation::JobSent { .. } => match current {
            Some(Compliance::Drifted { since_us, path }) => {
                Some(Compliance::Restoring { since_us: *since_us, path: path.clone() })
            }
            _ => current.cloned(),
        },
        Observation::JobReturned { at_us, failed } => {
            let since_us = match (current, failed) {
                (Some(Compliance::Failing { since_us }), true) | (Some(Compliance::Compliant { since_us }), false) => {
                    *since_us
                }
                _ => at_us,
            };
            Some(if failed { Compliance::Failing { since_us } } else { Compliance::Compliant { since_us } })
        }
        Observation::Stale { at_us } => match current {
            Some(Compliance::Stale { .. }) => current.cloned(),
            _ => Some(Compliance::Stale { since_us: at_us }),
        },
    }
}

/// The label of a compliance state, as the API and `agents --json` name it.
pub fn label(compliance: &Compliance) -> &'static str {
    match compliance {
        Compliance::Unknown => "unknown",
        Compliance::Compliant { .. } => "compliant",
        Compliance::Drifted { .. } => "drifted",
        Compliance::Restoring { .. } => "restoring",
        Compliance::Failing { .. } => "failing",
        Compliance::Stale { .. } => "stale",
    }
}

/// Every label, in the order a summary shows them.
pub const LABELS: [&str; 6] = ["compliant", "drifted", "restoring", "failing", "stale", "unknown"];

/// How many of `rows` (`control::agent_rows`: every agent the master
/// knows) are in each state, in [`LABELS`] order.
pub fn counts(rows: &[AgentRow]) -> [(&'static str, usize); 6] {
    let mut counts = LABELS.map(|label| (label, 0));
    for row in rows {
        let label = label(&row.compliance);
        if let Some(entry) = counts.iter_mut().find(|(l, _)| *l == label) {
            entry.1 += 1;
        }
    }
    counts
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn compliance_moves_by_the_documented_rules() {
        let drift = |at_us| Observation::Drift { at_us, path: Some("/etc/motd") };
        let drifted = |since_us| Compliance::Drifted { since_us, path: Some("/etc/motd".into()) };
        let restoring = |since_us| Compliance::Restoring { since_us, path: Some("/etc/motd".into()) };
        let ret = |at_us, failed| Observation::JobReturned { at_us, failed };
        // (observation, compliance after it)
        let steps = [
            (Observation::JobSent { at_us: 1 }, None),
            (ret(2, false), Some(Compliance::Compliant { since_us: 2 })),
            (ret(3, false), Some(Compliance::Compliant { since_us: 2 })),
            (drift(4), Some(drifted(4))),
            (drift(5), Some(drifted(4))),
            (Observation::JobSent { at_us: 6 }, Some(restoring(4))),
            (drift(7), Some(restoring(4))),
            (ret(8, false), Some(Compliance::Compliant { since_us: 8 })),
            (Observation::JobSent { at_us: 9 }, Some(Compliance::Compliant { since_us: 8 })),
            (ret(10, true), Some(Compliance::Failing { since_us: 10 })),
            (ret(11, true), Some(Compliance::Failing { since_us: 10 })),
            (Observation::Stale { at_us: 12 }, Some(Compliance::Stale { since_us: 12 })),
            (Observation::Stale { at_us: 13 }, Some(Compliance::Stale { since_us: 12 })),
            (drift(14), Some(drifted(14))),
            (ret(15, false), Some(Compliance::Compliant { since_us: 15 })),
        ];
        let mut current = None;
        for (i, (seen, expected)) in steps.into_iter().enumerate() {
            current = next(current.as_ref(), seen);
            assert_eq!(current, expected, "step {i}");
        }
        let mut rows = vec![AgentRow::unknown("db01"), AgentRow::unknown("web01"), AgentRow::unknown("web02")];
        rows[1].compliance = restoring(1);
        rows[2].compliance = restoring(2);
        let counts = counts(&rows);
        assert_eq!(counts.iter().find(|(l, _)| *l == "restoring"), Some(&("restoring", 2)));
        assert_eq!(counts.iter().find(|(l, _)| *l == "unknown"), Some(&("unknown", 1)));
    }
}

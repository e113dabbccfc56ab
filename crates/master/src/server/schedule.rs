//! Scheduled enforcement (master.yaml `schedule:`): every `every`, each
//! entry applies its states (or each agent's highstate) to the connected,
//! accepted agents its target matches, in test mode only when it says
//! `test: true`. Beacons catch what they watch; this catches the rest (a
//! removed package, a stopped service).
//!
//! Each agent's run is put off by its own offset within the entry's
//! `splay` ([`offset`], a hash of the agent and the entry: the same every
//! time, spread across the fleet), so a fleet does not apply at once. A
//! run still going when the next one is due is not doubled: the agent is
//! skipped that time. Every run is a job recorded with cause
//! `schedule:<name>`.

use std::collections::HashSet;
use std::hash::{Hash, Hasher};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use halite_proto::{Id, Job};
use halite_state::{RenderContext, Target};
use tokio_util::sync::CancellationToken;

use crate::config::ScheduleEntry;
use crate::server::context::Master;
use crate::server::jobs::Origin;

/// Starts one task per entry, until `cancel` fires. The entries were
/// checked when master.yaml loaded (a target that parses, `every` > 0).
pub fn spawn(master: Arc<Master>, entries: Vec<ScheduleEntry>, cancel: CancellationToken) {
    for entry in entries {
        let Ok(target) = Target::parse(&entry.target) else {
            tracing::error!(schedule = %entry.name, target = %entry.target, "A schedule's target does not parse; it never runs.");
            continue;
        };
        tracing::info!(schedule = %entry.name, every = ?entry.every, splay = ?entry.splay, test = entry.test, "Scheduled enforcement.");
        tokio::spawn(run(master.clone(), Arc::new(entry), target, cancel.clone()));
    }
}

/// As [`spawn`], with several masters: the entries run when the
/// singletons' leader ticks them (`cluster/singletons.rs`, told through
/// `ticks`), each master for the agents connected to it.
pub fn spawn_on_ticks(
    master: Arc<Master>,
    entries: Vec<ScheduleEntry>,
    ticks: &tokio::sync::broadcast::Sender<String>,
    cancel: CancellationToken,
) {
    for entry in entries {
        let Ok(target) = Target::parse(&entry.target) else {
            tracing::error!(schedule = %entry.name, target = %entry.target, "A schedule's target does not parse; it never runs.");
            continue;
        };
        tracing::info!(schedule = %entry.name, every = ?entry.every, splay = ?entry.splay, test = entry.test, "Scheduled enforcement, ticked by the singletons' leader.");
        let mut ticked = ticks.subscribe();
        let (master, entry, cancel) = (master.clone(), Arc::new(entry), cancel.clone());
        tokio::spawn(async move {
            let running: Arc<Mutex<HashSet<String>>> = Arc::default();
            loop {
                let name = tokio::select! {
                    () = cancel.cancelled() => return,
                    name = ticked.recv() => name,
                };
                match name {
                    Ok(name) if name == entry.name => run_once(&master, &entry, &target, &running, &cancel),
                    Ok(_) => {}
                    Err(tokio::sync::broadcast::error::RecvError::Lagged(missed)) => {
                        tracing::warn!(schedule = %entry.name, missed, "Missed schedule ticks; the next one runs.");
                    }
                    Err(tokio::sync::broadcast::error::RecvError::Closed) => return,
                }
            }
        });
    }
}

async fn run(master: Arc<Master>, entry: Arc<ScheduleEntry>, target: Target, cancel: CancellationToken) {
    let start = tokio::time::Instant::now() + entry.every;
    let mut ticks = tokio::time::interval_at(start, entry.every);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    // Agents whose run of this entry has not finished: bounded by the fleet.
    let running: Arc<Mutex<HashSet<String>>> = Arc::default();
    loop {
        tokio::select! {
            () = cancel.cancelled() => return,
            _ = ticks.tick() => {}
        }
        run_once(&master, &entry, &target, &running, &cancel);
    }
}

/// One run of `entry`: each matching agent here, after its splay offset,
/// unless its last run is still going.
fn run_once(
    master: &Arc<Master>,
    entry: &Arc<ScheduleEntry>,
    target: &Target,
    running: &Arc<Mutex<HashSet<String>>>,
    cancel: &CancellationToken,
) {
    {
        for agent in master.jobs.agents_matching(target) {
            if !running.lock().unwrap_or_else(|p| p.into_inner()).insert(agent.clone()) {
                tracing::warn!(schedule = %entry.name, agent = %agent, "The last scheduled run has not finished; skipped this time.");
                continue;
            }
            let (master, entry, running, cancel) = (master.clone(), entry.clone(), running.clone(), cancel.clone());
            tokio::spawn(async move {
                tokio::select! {
                    () = cancel.cancelled() => {}
                    () = tokio::time::sleep(offset(&agent, &entry.name, entry.splay)) => apply(&master, &entry, &agent).await,
                }
                running.lock().unwrap_or_else(|p| p.into_inner()).remove(&agent);
            });
        }
    }
}

/// Applies the entry's states to `agent`, rendered from the live tree.
async fn apply(master: &Master, entry: &ScheduleEntry, agent: &str) {
    let facts = master.sessions.facts(agent);
    let tree = master.tree();
    let names = if entry.states.is_empty() { tree.states.states_for(agent, &facts) } else { entry.states.clone() };
    if let Some(missing) = names.iter().find(|name| !tree.states.has_state_file(name)) {
        tracing::error!(schedule = %entry.name, agent, state = %missing, "A scheduled state file is not in the tree; not applied.");
        return;
    }
    let calls = match tree.states.calls_for(&names, &RenderContext::new(agent, &facts)) {
        Ok(calls) => calls,
        Err(diagnostics) => {
            let text: Vec<String> = diagnostics.iter().map(ToString::to_string).collect();
            tracing::error!(schedule = %entry.name, agent, error = %text.join("; "), "The scheduled states do not render for this agent.");
            return;
        }
    };
    let job = Job { id: Id::new(), cause_event: None, test: entry.test, states: calls };
    let origin = Origin { cause: format!("schedule:{}", entry.name), reactor: None, target: agent.to_owned() };
    match master.jobs.run_with(agent, job, origin, master.jobs.timeout()).await {
        Ok(result) => {
            let failed = result.results.iter().filter(|r| r.outcome.is_failed()).count();
            tracing::info!(schedule = %entry.name, agent, job = %result.job, failed, "Scheduled run returned.");
        }
        Err(error) => tracing::warn!(schedule = %entry.name, agent, %error, "A scheduled run got no answer."),
    }
}

/// `agent`'s place within `splay` for the entry `name`: stable, so each
/// agent keeps its slot, and spread evenly over the fleet.
pub fn offset(agent: &str, name: &str, splay: Duration) -> Duration {
    let splay_ms = u64::try_from(splay.as_millis()).unwrap_or(u64::MAX);
    if splay_ms == 0 {
        return Duration::ZERO;
    }
    // Not for security: a stable spread. `DefaultHasher::new()` has fixed keys.
    let mut hasher = std::collections::hash_map::DefaultHasher::new();
    (agent, name).hash(&mut hasher);
    Duration::from_millis(hasher.finish() % splay_ms)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn offsets_stay_within_the_splay_and_are_stable() {
        let splay = Duration::from_secs(300);
        let offsets: Vec<Duration> = (0..1000).map(|i| offset(&format!("web{i:03}"), "highstate", splay)).collect();
        assert!(offsets.iter().all(|o| *o < splay));
        assert_eq!(offsets, (0..1000).map(|i| offset(&format!("web{i:03}"), "highstate", splay)).collect::<Vec<_>>());
        // Spread: every fifth of the splay holds some agents.
        for fifth in 0..5 {
            let (from, to) = (splay * fifth / 5, splay * (fifth + 1) / 5);
            assert!(offsets.iter().any(|o| (from..to).contains(o)), "nothing in fifth {fifth}");
        }
        assert_eq!(offset("web001", "highstate", Duration::ZERO), Duration::ZERO);
    }
}

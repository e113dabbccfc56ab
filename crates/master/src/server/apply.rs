//! `halite-master apply` on the master's side: resolve the target against
//! the connected agents, send each one job (recorded with the operator's
//! command line as its cause), and stream every agent's answer back over the
//! control socket as it arrives.
//!
//! The conversation, one JSON object per line ([`ApplyLine`]): `started`
//! with the agents and their job ids, one `agent` per agent, then `done`;
//! or a single `error`. Jobs outlive the connection: an operator who
//! presses ^C does not stop them, and their results are still recorded.
//!
//! A rollout ([`Rollout`], pure, table-tested) decides when each job goes
//! out: `batch` caps the agents running at once, `canary` runs the first K
//! agents (in target order: by id) before any other and stops when one of
//! them fails, `max_failures` stops sending once that many agents failed
//! (a failed state or no answer). Stopping sends nothing more; the jobs
//! running finish; the agents never sent a job are listed in a `stopped`
//! line before `done`. The API's `POST /api/v1/apply` runs the same code.
//!
//! With several masters, agents the target names by id that are connected
//! to another master are in the plan too ([`Dispatch::Routed`]): their
//! jobs go to their masters through PostgreSQL (`cluster/route.rs`) when
//! the rollout starts them, and their answers join the same stream (a
//! routed agent's failure or silence counts toward `max_failures` and the
//! canary like a local one's). Their masters render their states, with
//! their facts ([`run_routed`]).

use std::time::Duration;

use halite_proto::{Id, Job};
use halite_state::report::AgentReport;
use halite_state::{RenderContext, Target};
use tokio::io::AsyncWriteExt;
use tokio::sync::mpsc;

use crate::protocol::{ApplyLine, ApplyRequest};
use crate::server::cluster::route::{self, Answer, Work};
use crate::server::context::Master;
use crate::server::jobs::{Jobs, Origin};

fn error(message: impl Into<String>) -> ApplyLine {
    ApplyLine::Error { error: message.into(), no_agent: false }
}

/// How one agent of a plan gets its job.
#[derive(Debug, Clone)]
pub enum Dispatch {
    /// Connected here: the job, rendered here.
    Local(Job),
    /// Connected to master `home`: asked to run the request there as job
    /// `id` (its master renders the states).
    Routed { home: String, id: Id },
}

impl Dispatch {
    /// The job's id, the same on both masters for a routed one.
    pub fn id(&self) -> Id {
        match self {
            Dispatch::Local(job) => job.id,
            Dispatch::Routed { id, .. } => *id,
        }
    }
}

/// What to send to whom, or why nothing can be sent: the agents the
/// target matches, by id, each with its rendered job (connected here) or
/// its master (connected to another master).
pub fn plan(master: &Master, request: &ApplyRequest) -> Result<Vec<(String, Dispatch)>, ApplyLine> {
    let tree = master.tree();
    let states = &tree.states;
    if let Some(missing) = request.states.iter().find(|s| !states.has_state_file(s)) {
        return Err(error(format!(
            "state file `{missing}` does not exist in the state tree {} (state files: {})",
            states.root.display(),
            states.files.keys().cloned().collect::<Vec<_>>().join(", ")
        )));
    }
    let target = Target::parse(&request.target)
        .map_err(|e| error(format!("{e} (write e.g. 'web*', L@web01,web02 or 'G@os:debian and not db*')")))?;
    let connected = master.sessions.accepted_with_facts();
    let matched: Vec<(String, halite_proto::Value)> =
        connected.iter().filter(|(agent, facts)| target.matches(agent, facts)).cloned().collect();
    let here: Vec<String> = connected.iter().map(|(agent, _)| agent.clone()).collect();
    let routed = if master.route.is_some() { master.homed_elsewhere(&target, &here) } else { Vec::new() };
    if matched.is_empty() && routed.is_empty() {
        let known: Vec<&str> = connected.iter().map(|(a, _)| a.as_str()).collect();
        let known = if known.is_empty() { "none".to_owned() } else { known.join(", ") };
        let elsewhere = master.cluster.as_ref().map_or_else(String::new, |view| {
            view.elsewhere(|agent| target.matches(agent, &halite_proto::Value::map()))
        });
        return Err(ApplyLine::Error {
            error: format!("target `{}` matches no connected agent (connected: {known}){elsewhere}", request.target),
            no_agent: true,
        });
    }
    // Every local agent's states render before anything is sent: a
    // template that fails for one agent stops the whole apply, with its
    // diagnostics.
    let mut planned = matched
        .into_iter()
        .map(|(agent, facts)| {
            let names =
                if request.states.is_empty() { states.states_for(&agent, &facts) } else { request.states.clone() };
            let calls = states.calls_for(&names, &RenderContext::new(&agent, &facts)).map_err(|diagnostics| {
                let text: Vec<String> = diagnostics.iter().map(ToString::to_string).collect();
                error(format!("the states do not render for `{agent}`; nothing was sent:\n{}", text.join("\n")))
            })?;
            let job = Job { id: Id::new(), cause_event: None, test: request.test, states: calls };
            Ok((agent, Dispatch::Local(job)))
        })
        .collect::<Result<Vec<_>, ApplyLine>>()?;
    planned.extend(routed.into_iter().map(|(agent, home)| (agent, Dispatch::Routed { home, id: Id::new() })));
    // Target order, wherever the agents are: the canary is the first K.
    planned.sort_by(|a, b| a.0.cmp(&b.0));
    Ok(planned)
}

/// Runs the request and writes the conversation to `out`. Returns when
/// every agent has answered or timed out, or the operator went away.
pub async fn serve<W: AsyncWriteExt + Unpin>(master: &Master, request: ApplyRequest, who: &str, out: &mut W) {
    match plan(master, &request) {
        Ok(jobs) => serve_planned(master, request, jobs, who, out).await,
        Err(line) => {
            let _ = write_line(out, &line).await;
        }
    }
}

/// Sends `jobs` (from [`plan`]) as the rollout allows and writes the
/// conversation to `out`: what [`serve`] does once the plan is made (the
/// API authorizes between the two). `who` asked (the audit log's `who`):
/// a routed job's master records it.
pub async fn serve_planned<W: AsyncWriteExt + Unpin>(
    master: &Master,
    request: ApplyRequest,
    jobs: Vec<(String, Dispatch)>,
    who: &str,
    out: &mut W,
) {
    tracing::info!(target = %request.target, agents = jobs.len(), test = request.test, "Operator apply.");
    let started = jobs.iter().map(|(agent, job)| (agent.clone(), job.id().to_string())).collect();
    let mut connected = write_line(out, &ApplyLine::Started { test: request.test, jobs: started }).await;
    let agents: Vec<String> = jobs.iter().map(|(agent, _)| agent.clone()).collect();
    let mut unsent: Vec<Option<(String, Dispatch)>> = jobs.into_iter().map(Some).collect();
    let mut rollout = Rollout::new(agents.len(), request.batch, request.canary, request.max_failures);
    // One slot per agent: a job task never waits to hand in its answer.
    let (answers, mut inbox) = mpsc::channel(agents.len().max(1));
    let timeout = Duration::from_millis(request.timeout_ms);
    loop {
        while let Some(index) = rollout.next_to_start() {
            let Some((agent, job)) = unsent.get_mut(index).and_then(Option::take) else { continue };
            let origin = Origin {
                cause: format!("operator:{}", request.command_line),
                reactor: None,
                target: request.target.clone(),
            };
            let answers = answers.clone();
            match job {
                Dispatch::Local(job) => {
                    let jobs = master.jobs.clone();
                    tokio::spawn(async move {
                        let report = run_job(&jobs, &agent, job, origin, timeout).await;
                        let _ = answers.send((index, report)).await;
                    });
                }
                Dispatch::Routed { home, id } => {
                    let router = master.route.clone();
                    let routed = route::Request {
                        work: Work::Apply { states: request.states.clone(), test: request.test },
                        timeout_ms: request.timeout_ms,
                        target: request.target.clone(),
                        command_line: request.command_line.clone(),
                    };
                    let who = who.to_owned();
                    tokio::spawn(async move {
                        let jid = Some(id.to_string());
                        let waited = timeout + route::ROUTE_GRACE;
                        let asked = match &router {
                            Some(router) => router.ask(&home, &agent, &id.to_string(), &who, &routed, waited).await,
                            None => Err(route::RouteError::NoAnswer { home: home.clone(), waited: Duration::ZERO }),
                        };
                        let report = match asked {
                            Ok(Answer::Apply { report }) => report,
                            Ok(Answer::Cmd { .. }) => {
                                AgentReport::no_answer(&agent, jid, format!("master {home} answered another job"))
                            }
                            Err(error) => AgentReport::no_answer(&agent, jid, error.to_string()),
                        };
                        let _ = answers.send((index, report)).await;
                    });
                }
            }
        }
        if rollout.running() == 0 {
            break;
        }
        let Some((index, report)) = inbox.recv().await else { break };
        rollout.finished(index, !report.answered_ok(), &report.agent);
        if connected {
            connected = write_line(out, &ApplyLine::Agent { report }).await;
        }
    }
    if let Some(reason) = rollout.stopped() {
        let skipped: Vec<String> =
            unsent.iter().zip(&agents).filter(|(job, _)| job.is_some()).map(|(_, agent)| agent.clone()).collect();
        tracing::warn!(target = %request.target, skipped = skipped.len(), "Operator apply stopped: {reason}.");
        if connected {
            connected = write_line(out, &ApplyLine::Stopped { reason: reason.to_owned(), skipped }).await;
        }
    }
    // Done once every answer is in the store: `jobs` run next shows them.
    master.jobs.flush_store().await;
    if connected {
        let _ = write_line(out, &ApplyLine::Done).await;
    }
}

/// Runs `job` on `agent` (connected here) and reports its answer.
async fn run_job(jobs: &Jobs, agent: &str, job: Job, origin: Origin, timeout: Duration) -> AgentReport {
    let jid = Some(job.id.to_string());
    match jobs.run_with(agent, job, origin, timeout).await {
        Ok(result) => AgentReport::answered(agent, jid, &result.results),
        Err(error) => AgentReport::no_answer(agent, jid, error.to_string()),
    }
}

/// On an agent's home master: runs an apply another master routed here
/// (`routed.rs`) as job `id`, exactly as a local one (rendered with the
/// agent's facts here, recorded by this master's store with `origin`).
/// An agent no longer connected here, a missing state file or a template
/// that does not render is answered as the agent's error.
pub async fn run_routed(
    master: &Master,
    agent: &str,
    id: Id,
    (states, test): (&[String], bool),
    origin: Origin,
    timeout: Duration,
) -> AgentReport {
    let jid = Some(id.to_string());
    let me = master.route.as_ref().map_or("this master", |r| r.name());
    let Some((_, facts)) = master.sessions.accepted_with_facts().into_iter().find(|(a, _)| a == agent) else {
        return AgentReport::no_answer(
            agent,
            jid,
            format!(
                "not connected to master {me} (its session ended or moved; `halite-master agents` shows where it is)"
            ),
        );
    };
    let tree = master.tree();
    let tree = &tree.states;
    if let Some(missing) = states.iter().find(|s| !tree.has_state_file(s)) {
        return AgentReport::no_answer(
            agent,
            jid,
            format!("state file `{missing}` does not exist in master {me}'s tree"),
        );
    }
    let names = if states.is_empty() { tree.states_for(agent, &facts) } else { states.to_vec() };
    let calls = match tree.calls_for(&names, &RenderContext::new(agent, &facts)) {
        Ok(calls) => calls,
        Err(diagnostics) => {
            let text: Vec<String> = diagnostics.iter().map(ToString::to_string).collect();
            return AgentReport::no_answer(
                agent,
                jid,
                format!("the states do not render on master {me}; nothing was sent:\n{}", text.join("\n")),
            );
        }
    };
    let job = Job { id, cause_event: None, test, states: calls };
    let report = run_job(&master.jobs, agent, job, origin, timeout).await;
    master.jobs.flush_store().await;
    report
}

/// When each agent of an apply gets its job: the pure decision behind
/// `batch`, `canary` and `max_failures` (agents by their index in the
/// plan).
#[derive(Debug)]
pub struct Rollout {
    total: usize,
    /// At most this many running at once.
    batch: usize,
    /// The first `canary` agents run, and all answer, before any other.
    canary: usize,
    max_failures: Option<usize>,
    /// The next agent to start.
    next: usize,
    running: usize,
    canaries_done: usize,
    failures: usize,
    stopped: Option<String>,
}

impl Rollout {
    pub fn new(total: usize, batch: Option<usize>, canary: Option<usize>, max_failures: Option<usize>) -> Rollout {
        Rollout {
            total,
            batch: batch.unwrap_or(total).max(1),
            canary: canary.unwrap_or(0).min(total),
            max_failures: max_failures.map(|n| n.max(1)),
            next: 0,
            running: 0,
            canaries_done: 0,
            failures: 0,
            stopped: None,
        }
    }

    /// The next agent that may start now, if any (none: wait for an
    /// answer, or everything is sent, or the rollout stopped).
    pub fn next_to_start(&mut self) -> Option<usize> {
        let in_canary = self.next < self.canary;
        let canary_open = in_canary || self.canaries_done == self.canary;
        if self.stopped.is_some() || self.next >= self.total || self.running >= self.batch || !canary_open {
            return None;
        }
        self.next += 1;
        self.running += 1;
        Some(self.next - 1)
    }

    /// Agent `index` (`agent`) answered, or did not.
    pub fn finished(&mut self, index: usize, failed: bool, agent: &str) {
        self.running = self.running.saturating_sub(1);
        if index < self.canary {
            self.canaries_done += 1;
        }
        if !failed {
            return;
        }
        self.failures += 1;
        if self.stopped.is_some() {
            return;
        }
        if index < self.canary {
            self.stopped = Some(format!("canary {agent} failed"));
        } else if let Some(max) = self.max_failures.filter(|max| self.failures >= *max) {
            self.stopped = Some(format!("{} agents failed (max_failures {max})", self.failures));
        }
    }

    pub fn running(&self) -> usize {
        self.running
    }

    /// Why the rollout stopped, if it did.
    pub fn stopped(&self) -> Option<&str> {
        self.stopped.as_deref()
    }
}

/// False when the operator has gone away.
async fn write_line<W: AsyncWriteExt + Unpin>(out: &mut W, line: &ApplyLine) -> bool {
    let mut text = serde_json::to_string(line).unwrap_or_default();
    text.push('\n');
    out.write_all(text.as_bytes()).await.is_ok() && out.flush().await.is_ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The rollout, table-style: each case is a run where agents whose
    /// index is in `failing` fail, answers arriving oldest job first; the
    /// agents started (in order, with the answers between) and the stop.
    #[test]
    fn rollouts_start_and_stop_where_they_should() {
        // (total, batch, canary, max_failures, failing, started order with `|` = an answer, stopped?)
        type Case = (usize, Option<usize>, Option<usize>, Option<usize>, &'static [usize], &'static str, bool);
        let cases: [Case; 8] = [
            (4, None, None, None, &[], "0 1 2 3 | | | |", false),
            (4, Some(2), None, None, &[], "0 1 | 2 | 3 | |", false),
            (4, Some(1), None, Some(1), &[1], "0 | 1 |", true),
            (5, Some(2), None, Some(2), &[0, 1], "0 1 | 2 | |", true),
            (5, Some(1), None, Some(2), &[0, 3], "0 | 1 | 2 | 3 |", true),
            (4, None, Some(1), None, &[], "0 | 1 2 3 | | |", false),
            (4, None, Some(2), None, &[1], "0 1 | |", true),
            (3, Some(1), Some(5), Some(1), &[], "0 | 1 | 2 |", false),
        ];
        for (total, batch, canary, max_failures, failing, wanted, stops) in cases {
            let mut rollout = Rollout::new(total, batch, canary, max_failures);
            let mut running = std::collections::VecDeque::new();
            let mut trace = Vec::new();
            loop {
                while let Some(index) = rollout.next_to_start() {
                    trace.push(index.to_string());
                    running.push_back(index);
                }
                let Some(index) = running.pop_front() else { break };
                trace.push("|".into());
                rollout.finished(index, failing.contains(&index), &format!("web{index}"));
            }
            let case = format!("{total} {batch:?} {canary:?} {max_failures:?} {failing:?}");
            assert_eq!(trace.join(" "), wanted, "{case}");
            assert_eq!(rollout.stopped().is_some(), stops, "{case}: {:?}", rollout.stopped());
        }
    }

    #[test]
    fn lines_round_trip_as_json() {
        let lines = [
            ApplyLine::Started { test: true, jobs: vec![("web01".into(), "01J".into())] },
            ApplyLine::Agent { report: AgentReport::no_answer("web01", Some("01J".into()), "timeout") },
            ApplyLine::Done,
            ApplyLine::Error { error: "no".into(), no_agent: true },
            ApplyLine::Stopped { reason: "canary web01 failed".into(), skipped: vec!["web02".into()] },
        ];
        for line in lines {
            let text = serde_json::to_string(&line).unwrap();
            assert!(!text.contains('\n'));
            assert_eq!(serde_json::from_str::<ApplyLine>(&text).unwrap(), line, "{text}");
        }
    }
}

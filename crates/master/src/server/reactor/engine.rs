//! Running reactions: workers per agent, so reactions for different
//! agents run concurrently and reactions for one agent keep the order of
//! its events within their lane.
//!
//! # Lanes
//! A restore must never wait behind a slow action (a webhook whose host
//! black-holes it waits `timeout` × `retries`; a targeted agent that never
//! answers holds its job until the job timeout). So each agent has two
//! kinds of lane, each a worker with its own bounded queue and schedule:
//! - the **agent lane**: the start-up apply and reactors whose every action
//!   acts on the agent that raised the event (`apply`, `run`, no
//!   `target`): the restores, in the order of the agent's events;
//! - a **slow lane per reactor**: reactors with a `webhook`, `exec` or
//!   `event` action, or a `target`. Each such reactor has its own worker
//!   per agent, so one slow reactor delays neither restores nor another
//!   slow reactor; its own reactions keep their order and coalesce. A
//!   targeted agent that never answers is waited for at most the job
//!   timeout ([`JOB_TIMEOUT`], 60 s), in that reactor's lane only.
//!
//! A reactor that mixes a restore with a slow action runs in a slow lane
//! (its actions run in order); keep restores in a reactor of their own,
//! as `watch: true` does.
//!
//! A reaction waiting in an agent's queue absorbs later events for the same
//! reactor (the latest event wins): an editor's burst of modify, write and
//! rename becomes one reaction. With `throttle`, a reactor runs at most once
//! per window for an agent; what arrives inside the window waits for its end
//! and, coalesced, runs once.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use halite_proto::event::tag;
use halite_proto::{Event, Id, Job, Value};
use tokio::sync::mpsc;
use tokio::time::Instant;

use super::Reactor;
use super::actions::{Context, Reactions};
use super::schedule::{Kind, Next, Schedule};
use crate::server::bus::Bus;
use crate::server::jobs::Jobs;
use crate::tree::Tree;

/// Work waiting for one agent. When full, new work for that agent is
/// dropped, logged and announced as `halite/reactor/<name>/throttled`.
pub const AGENT_QUEUE: usize = 256;

#[derive(Debug)]
enum Work {
    React {
        reactor: Arc<Reactor>,
        event: Arc<Event>,
        tree: Arc<Tree>,
        /// `event` hops from an agent's own event (see `actions/event.rs`).
        depth: u32,
    },
    /// Apply the agent's top.yaml states (at session start).
    Highstate { tree: Arc<Tree> },
}

/// A lane: (agent, `None`) is the agent lane, (agent, `Some(reactor)`)
/// that reactor's slow lane for the agent.
type Lane = (String, Option<String>);

#[derive(Debug, Clone)]
pub struct Engine {
    tree: Arc<RwLock<Arc<Tree>>>,
    /// One queue per lane: (agent, `None`) is the agent lane, (agent,
    /// `Some(reactor)`) that reactor's slow lane.
    queues: Arc<Mutex<HashMap<Lane, mpsc::Sender<Work>>>>,
    jobs: Jobs,
    bus: Bus,
}

impl Engine {
    pub fn new(tree: Arc<RwLock<Arc<Tree>>>, jobs: Jobs, bus: Bus) -> Self {
        Engine { tree, queues: Arc::default(), jobs, bus }
    }

    fn current_tree(&self) -> Arc<Tree> {
        self.tree.read().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// Matches an agent's event against every reactor and queues reactions.
    pub fn on_event(&self, event: &Arc<Event>) {
        self.on_event_at(event, 0);
    }

    /// As [`Engine::on_event`], for an event that `depth` `event` actions
    /// led to.
    pub fn on_event_at(&self, event: &Arc<Event>, depth: u32) {
        let tree = self.current_tree();
        for reactor in &tree.reactors {
            match reactor.matches(event) {
                Ok(false) => {}
                Ok(true) => self.enqueue(
                    &event.agent,
                    Work::React { reactor: reactor.clone(), event: event.clone(), tree: tree.clone(), depth },
                ),
                Err(error) => {
                    tracing::warn!(reactor = %reactor.name, event = %event.id, %error, "Reactor condition failed.");
                    self.bus.publish(Event::new(
                        tag::reactor(&reactor.name, "failed"),
                        event.agent.as_str(),
                        Value::map()
                            .with("agent", event.agent.as_str())
                            .with("event", event.id.to_string())
                            .with("error", error.to_string()),
                    ));
                }
            }
        }
    }

    /// Queues the agent's top.yaml states, so a new or returning agent
    /// converges at once.
    pub fn highstate(&self, agent: &str) {
        let tree = self.current_tree();
        if !tree.states.states_for(agent, &self.jobs.facts(agent)).is_empty() {
            self.enqueue(agent, Work::Highstate { tree });
        }
    }

    /// Reactions waiting per agent (each queue holds at most
    /// [`AGENT_QUEUE`]), for the depth log and `halite-master agents`.
    pub fn queue_depths(&self) -> Vec<(String, usize)> {
        let queues = self.queues.lock().unwrap_or_else(|p| p.into_inner());
        let mut depths: HashMap<String, usize> = HashMap::new();
        for ((agent, _), tx) in queues.iter() {
            *depths.entry(agent.clone()).or_default() += tx.max_capacity() - tx.capacity();
        }
        depths.into_iter().collect()
    }

    fn enqueue(&self, agent: &str, work: Work) {
        let lane = match &work {
            Work::React { reactor, .. } if slow(reactor) => Some(reactor.name.clone()),
            _ => None,
        };
        let mut queues = self.queues.lock().unwrap_or_else(|p| p.into_inner());
        let sender = queues.entry((agent.to_owned(), lane)).or_insert_with(|| {
            let (tx, rx) = mpsc::channel(AGENT_QUEUE);
            tokio::spawn(Worker { agent: agent.to_owned(), engine: self.clone() }.run(rx));
            tx
        });
        if let Err(mpsc::error::TrySendError::Full(Work::React { reactor, event, .. })) = sender.try_send(work) {
            tracing::warn!(agent, reactor = %reactor.name, event = %event.id, "Reaction queue full; dropping the reaction.");
            self.bus.publish(Event::new(
                tag::reactor(&reactor.name, "throttled"),
                agent,
                Value::map().with("agent", agent).with("event", event.id.to_string()).with("reason", "queue full"),
            ));
        }
    }
}

/// Does `reactor` run in a slow lane of its own (see the module docs)?
fn slow(reactor: &Reactor) -> bool {
    reactor.target.is_some() || !reactor.actions.iter().all(|action| action.acts_on_agent())
}

impl Reactions for Engine {
    fn on_event_at(&self, event: &Arc<Event>, depth: u32) {
        Engine::on_event_at(self, event, depth);
    }
}

struct Worker {
    agent: String,
    engine: Engine,
}

impl Worker {
    /// Feeds the schedule and does what it says; the decisions (order,
    /// coalescing, throttle) are all in [`Schedule`].
    async fn run(self, mut inbox: mpsc::Receiver<Work>) {
        let mut schedule = Schedule::default();
        loop {
            while let Ok(work) = inbox.try_recv() {
                push(&mut schedule, work);
            }
            let now = Instant::now();
            match schedule.next(now) {
                Next::Idle => match inbox.recv().await {
                    Some(work) => push(&mut schedule, work),
                    None => return,
                },
                Next::Wait { until, announce } => {
                    if let Some(work) = announce {
                        self.announce_hold(work, until.saturating_duration_since(now));
                    }
                    tokio::select! {
                        () = tokio::time::sleep_until(until) => {}
                        Some(work) = inbox.recv() => push(&mut schedule, work),
                    }
                }
                Next::Run { work, coalesced } => {
                    // Keep folding arrivals in while the action runs, so a
                    // burst during a slow action coalesces instead of
                    // filling the queue.
                    let running = self.execute(work, coalesced);
                    tokio::pin!(running);
                    loop {
                        tokio::select! {
                            () = &mut running => break,
                            Some(work) = inbox.recv() => push(&mut schedule, work),
                        }
                    }
                }
            }
        }
    }

    /// The one `halite/reactor/<name>/throttled` event of a throttle window
    /// that holds a reaction back.
    fn announce_hold(&self, work: &Work, wait: Duration) {
        let Work::React { reactor, event, .. } = work else { return };
        tracing::debug!(agent = %self.agent, reactor = %reactor.name, ?wait, "Reaction held back by its throttle.");
        self.engine.bus.publish(Event::new(
            tag::reactor(&reactor.name, "throttled"),
            self.agent.as_str(),
            Value::map()
                .with("agent", self.agent.as_str())
                .with("event", event.id.to_string())
                .with("reason", "throttle")
                .with("wait_ms", i64::try_from(wait.as_millis()).unwrap_or(i64::MAX)),
        ));
    }

    async fn execute(&self, work: Work, coalesced: u32) {
        let jobs = self.engine.jobs.clone();
        let bus = &self.engine.bus;
        match work {
            Work::Highstate { tree } => {
                let facts = jobs.facts(&self.agent);
                let names = tree.states.states_for(&self.agent, &facts);
                let render = halite_state::RenderContext::new(&self.agent, &facts);
                let result = match tree.states.calls_for(&names, &render) {
                    Ok(states) => {
                        let job = Job { id: Id::new(), cause_event: None, test: false, states };
                        let origin = crate::server::jobs::Origin::connected(&self.agent);
                        jobs.run_with(&self.agent, job, origin, jobs.timeout()).await.map_err(|e| e.to_string())
                    }
                    Err(diagnostics) => Err(diagnostics.iter().map(ToString::to_string).collect::<Vec<_>>().join("; ")),
                };
                if let Err(error) = result {
                    tracing::warn!(agent = %self.agent, %error, "Start-up apply failed.");
                }
            }
            Work::React { reactor, event, tree, depth } => {
                halite_fs::hops::mark("master.reaction", event.id.0);
                let context = Context {
                    states: tree.states.clone(),
                    jobs: jobs.for_reactor(&reactor.name),
                    bus: bus.clone(),
                    reactions: Arc::new(self.engine.clone()),
                    depth,
                };
                let mut done = Vec::new();
                let mut failure = None;
                for action in &reactor.actions {
                    let outcome = match (&reactor.target, action.acts_on_agent()) {
                        (Some(target), true) => {
                            // Targeted agents act at once, each in its own job;
                            // the reaction fails if any of them does.
                            let agents = jobs.agents_matching(target);
                            let runs = agents.iter().map(|agent| action.run(&context, agent, &event));
                            let results = futures_util::future::join_all(runs).await;
                            let (ok, failed): (Vec<_>, Vec<_>) = results.into_iter().partition(Result::is_ok);
                            if agents.is_empty() {
                                Ok(format!("no connected agent matches `{}`", target.as_str()))
                            } else if failed.is_empty() {
                                Ok(ok.into_iter().filter_map(Result::ok).collect::<Vec<_>>().join("; "))
                            } else {
                                // The `failed` event carries the errors as text.
                                let errors = failed.into_iter().filter_map(Result::err).map(|e| e.to_string());
                                Err(errors.collect::<Vec<_>>().join("; "))
                            }
                        }
                        _ => action.run(&context, &self.agent, &event).await.map_err(|e| e.to_string()),
                    };
                    match outcome {
                        Ok(what) => done.push(Value::from(what)),
                        Err(error) => {
                            failure = Some(error);
                            break;
                        }
                    }
                }
                let data = Value::map()
                    .with("agent", self.agent.as_str())
                    .with("event", event.id.to_string())
                    .with("coalesced", i64::from(coalesced))
                    .with("actions", Value::List(done));
                match failure {
                    None => {
                        tracing::info!(agent = %self.agent, reactor = %reactor.name, event = %event.id, coalesced, "Reactor fired.");
                        bus.publish(Event::new(tag::reactor(&reactor.name, "fired"), self.agent.as_str(), data));
                    }
                    Some(error) => {
                        tracing::warn!(agent = %self.agent, reactor = %reactor.name, event = %event.id, %error, "Reactor failed.");
                        bus.publish(Event::new(
                            tag::reactor(&reactor.name, "failed"),
                            self.agent.as_str(),
                            data.with("error", error),
                        ));
                    }
                }
            }
        }
    }
}

/// Adds work to the schedule as the kind of work it is.
fn push(schedule: &mut Schedule<Work>, work: Work) {
    let kind = match &work {
        Work::React { reactor, .. } => Kind::Reaction { reactor: reactor.name.clone(), throttle: reactor.throttle },
        Work::Highstate { .. } => Kind::Highstate,
    };
    schedule.push(kind, work);
}

/// How long the engine waits for an agent's job result by default.
pub const JOB_TIMEOUT: Duration = Duration::from_secs(60);

#[cfg(test)]
mod tests {
    use futures_util::future::BoxFuture;

    use super::super::actions::{Action, ActionError, test_context};
    use super::*;

    /// How the test reactor is throttled.
    const WINDOW: Duration = Duration::from_secs(10);

    /// An action that reports each run: for which agent, on which event,
    /// at what (paused) time.
    #[derive(Debug)]
    struct Record(mpsc::Sender<(String, Id, Instant)>);

    impl Action for Record {
        fn describe(&self) -> String {
            "record the run".into()
        }

        fn run<'a>(
            &'a self,
            _context: &'a Context,
            agent: &'a str,
            event: &'a Event,
        ) -> BoxFuture<'a, Result<String, ActionError>> {
            Box::pin(async move {
                self.0.send((agent.to_owned(), event.id, Instant::now())).await.map_err(|_| ActionError::Closed)?;
                Ok("recorded".into())
            })
        }
    }

    /// The worker does what the schedule says, in time: with the clock
    /// paused, a burst inside a throttle window runs once, coalesced, at
    /// exactly the window's end; another agent's window is its own; each
    /// window that holds a reaction back is announced once.
    #[tokio::test(start_paused = true)]
    async fn a_throttled_burst_runs_once_at_the_end_of_the_window() {
        let context = test_context().await;
        let (record, mut runs) = mpsc::channel(16);
        let reactor = Reactor {
            throttle: Some(WINDOW),
            ..Reactor::implied("count".into(), "tick", vec![Box::new(Record(record))]).unwrap()
        };
        let tree = Tree { reactors: vec![Arc::new(reactor)], ..Tree::default() };
        let engine = Engine::new(Arc::new(RwLock::new(Arc::new(tree))), context.jobs.clone(), context.bus.clone());
        let mut tail = context.bus.subscribe();
        let tick = |agent: &str| Arc::new(Event::new("tick", agent, Value::map()));

        let start = Instant::now();
        let first = tick("a");
        engine.on_event(&first);
        assert_eq!(runs.recv().await, Some(("a".into(), first.id, start)));

        let burst: Vec<_> = (0..5).map(|_| tick("a")).collect();
        for event in &burst {
            engine.on_event(event);
        }
        let other = tick("b");
        engine.on_event(&other);
        assert_eq!(runs.recv().await, Some(("b".into(), other.id, start)), "agent b is not held by a's window");
        assert_eq!(runs.recv().await, Some(("a".into(), burst[4].id, start + WINDOW)), "the latest event, once");

        let late = tick("a");
        engine.on_event(&late);
        assert_eq!(runs.recv().await, Some(("a".into(), late.id, start + WINDOW * 2)), "the window restarted");

        let mut fired = Vec::new();
        let mut throttled = Vec::new();
        while fired.len() < 4 {
            let event = tail.recv().await.unwrap();
            let data = event.data.to_json();
            if event.tag == "halite/reactor/count/fired" {
                fired.push((event.agent.to_string(), data["coalesced"].as_i64().unwrap()));
            } else if event.tag == "halite/reactor/count/throttled" {
                throttled.push(format!("{}: {}", event.agent, data["reason"].as_str().unwrap()));
            }
        }
        let fired_for = |agent: &str| fired.iter().filter(|(a, _)| a == agent).map(|(_, n)| *n).collect::<Vec<_>>();
        assert_eq!(fired_for("a"), [0, 4, 0]);
        assert_eq!(fired_for("b"), [0]);
        assert_eq!(throttled, ["a: throttle"; 2], "one announcement per window");
    }
}

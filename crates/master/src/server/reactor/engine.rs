//! Running reactions: one worker per agent, so reactions for different
//! agents run concurrently and reactions for one agent keep the order of
//! its events.
//!
//! A reaction waiting in an agent's queue absorbs later events for the same
//! reactor (the latest event wins): an editor's burst of modify, write and
//! rename becomes one reaction. With `throttle`, a reactor runs at most once
//! per window for an agent; what arrives inside the window waits for its end
//! and, coalesced, runs once.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use halite_proto::event::tag;
use halite_proto::{Event, Id, Job, Value};
use tokio::sync::mpsc;
use tokio::time::Instant;

use super::Reactor;
use super::actions::{Context, Reactions};
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
        coalesced: u32,
        /// `event` hops from an agent's own event (see `actions/event.rs`).
        depth: u32,
    },
    /// Apply the agent's top.yaml states (at session start).
    Highstate { tree: Arc<Tree> },
}

#[derive(Debug, Clone)]
pub struct Engine {
    tree: Arc<RwLock<Arc<Tree>>>,
    queues: Arc<Mutex<HashMap<String, mpsc::Sender<Work>>>>,
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
                    Work::React {
                        reactor: reactor.clone(),
                        event: event.clone(),
                        tree: tree.clone(),
                        coalesced: 0,
                        depth,
                    },
                ),
                Err(error) => {
                    tracing::warn!(reactor = %reactor.name, event = %event.id, %error, "Reactor condition failed.");
                    self.bus.publish(Event::new(
                        tag::reactor(&reactor.name, "failed"),
                        event.agent.as_str(),
                        Value::map()
                            .with("agent", event.agent.as_str())
                            .with("event", event.id.to_string())
                            .with("error", error),
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
        queues.iter().map(|(agent, tx)| (agent.clone(), tx.max_capacity() - tx.capacity())).collect()
    }

    fn enqueue(&self, agent: &str, work: Work) {
        let mut queues = self.queues.lock().unwrap_or_else(|p| p.into_inner());
        let sender = queues.entry(agent.to_owned()).or_insert_with(|| {
            let (tx, rx) = mpsc::channel(AGENT_QUEUE);
            tokio::spawn(
                Worker { agent: agent.to_owned(), engine: self.clone(), last_run: HashMap::new(), held: None }.run(rx),
            );
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

impl Reactions for Engine {
    fn on_event_at(&self, event: &Arc<Event>, depth: u32) {
        Engine::on_event_at(self, event, depth);
    }
}

struct Worker {
    agent: String,
    engine: Engine,
    /// When each reactor last ran for this agent, for `throttle`.
    last_run: HashMap<String, Instant>,
    /// The reactor whose throttle window the worker is waiting out, once
    /// announced, so a window raises one `throttled` event, not one per
    /// event folded into it.
    held: Option<String>,
}

impl Worker {
    async fn run(mut self, mut inbox: mpsc::Receiver<Work>) {
        let mut pending: VecDeque<Work> = VecDeque::new();
        loop {
            if pending.is_empty() {
                match inbox.recv().await {
                    Some(work) => merge(&mut pending, work),
                    None => return,
                }
            }
            while let Ok(work) = inbox.try_recv() {
                merge(&mut pending, work);
            }
            if let Some(until) = pending.front().and_then(|w| self.throttled_until(w)) {
                self.announce_hold(pending.front(), until);
                tokio::select! {
                    () = tokio::time::sleep_until(until) => {}
                    Some(work) = inbox.recv() => merge(&mut pending, work),
                }
                continue;
            }
            if let Some(work) = pending.pop_front() {
                // Keep folding arrivals in while the action runs, so a burst
                // during a slow action coalesces instead of filling the queue.
                let running = self.execute(work);
                tokio::pin!(running);
                loop {
                    tokio::select! {
                        () = &mut running => break,
                        Some(work) = inbox.recv() => merge(&mut pending, work),
                    }
                }
            }
        }
    }

    /// One `halite/reactor/<name>/throttled` event per throttle window that
    /// holds a reaction back.
    fn announce_hold(&mut self, work: Option<&Work>, until: Instant) {
        let Some(Work::React { reactor, event, .. }) = work else { return };
        if self.held.as_deref() == Some(reactor.name.as_str()) {
            return;
        }
        self.held = Some(reactor.name.clone());
        let wait = until.saturating_duration_since(Instant::now());
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

    fn throttled_until(&self, work: &Work) -> Option<Instant> {
        let Work::React { reactor, .. } = work else { return None };
        let until = *self.last_run.get(&reactor.name)? + reactor.throttle?;
        (until > Instant::now()).then_some(until)
    }

    async fn execute(&mut self, work: Work) {
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
                        jobs.run_with(&self.agent, job, origin, jobs.timeout()).await
                    }
                    Err(diagnostics) => Err(diagnostics.iter().map(ToString::to_string).collect::<Vec<_>>().join("; ")),
                };
                if let Err(error) = result {
                    tracing::warn!(agent = %self.agent, %error, "Start-up apply failed.");
                }
            }
            Work::React { reactor, event, tree, coalesced, depth } => {
                self.last_run.insert(reactor.name.clone(), Instant::now());
                self.held = None;
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
                                Err(failed.into_iter().filter_map(Result::err).collect::<Vec<_>>().join("; "))
                            }
                        }
                        _ => action.run(&context, &self.agent, &event).await,
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

/// Adds work to an agent's queue, folding it into waiting work of the same
/// reactor (the newest event wins, the count says how many were folded).
fn merge(pending: &mut VecDeque<Work>, work: Work) {
    for waiting in pending.iter_mut() {
        match (waiting, &work) {
            (
                Work::React { reactor: r, event: e, tree: t, coalesced, depth: d },
                Work::React { reactor, event, tree, depth, .. },
            ) if r.name == reactor.name => {
                *e = event.clone();
                *d = *depth;
                *t = tree.clone();
                *r = reactor.clone();
                *coalesced += 1;
                return;
            }
            (Work::Highstate { tree: t }, Work::Highstate { tree }) => {
                *t = tree.clone();
                return;
            }
            _ => {}
        }
    }
    pending.push_back(work);
}

/// How long the engine waits for an agent's job result by default.
pub const JOB_TIMEOUT: Duration = Duration::from_secs(60);

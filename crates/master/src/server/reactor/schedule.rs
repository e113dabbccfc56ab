//! The decisions of an agent's reaction worker, apart from its I/O: which
//! waiting work runs next, how waiting work absorbs later work of its kind,
//! and the `throttle` window. Pure: time is passed in, so the table tests
//! below drive it with explicit instants; the worker in `engine.rs` only
//! feeds it arrivals and does what it says.
//!
//! The rules, for one agent:
//!
//! - **First come, first run.** Work runs in the order it first arrived.
//! - **Coalescing.** A reaction waiting to run absorbs later work for the
//!   same reactor: the latest event (and the latest tree) wins, and the
//!   count of absorbed work is reported with the run. Work already handed
//!   out to run absorbs nothing; what arrives meanwhile waits for the next
//!   run. The start-up apply (highstate) folds into a waiting one the same
//!   way, with the latest tree.
//! - **Throttle.** A reactor with `throttle` runs at most once per window
//!   for the agent, the window starting when it last ran. Work for it that
//!   reaches the head of the queue inside the window waits for the window's
//!   end, and everything behind it waits too, so the agent's order holds.
//!   The wait is announced once per window, not once per absorbed event.

use std::collections::{HashMap, VecDeque};
use std::time::Duration;

use tokio::time::Instant;

/// What a piece of work is, as far as scheduling goes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Kind {
    /// A reaction of the named reactor, under its `throttle` if it has one.
    Reaction { reactor: String, throttle: Option<Duration> },
    /// The agent's top.yaml states, applied when its session starts.
    Highstate,
}

impl Kind {
    fn folds_into(&self, waiting: &Kind) -> bool {
        match (self, waiting) {
            (Kind::Reaction { reactor, .. }, Kind::Reaction { reactor: waiting, .. }) => reactor == waiting,
            (Kind::Highstate, Kind::Highstate) => true,
            _ => false,
        }
    }
}

/// What the worker does next.
#[derive(Debug, PartialEq, Eq)]
pub enum Next<'a, T> {
    /// Nothing waits: sleep until work arrives.
    Idle,
    /// Run this now; `coalesced` later arrivals were folded into it.
    Run { work: T, coalesced: u32 },
    /// The head of the queue is throttled: wait for `until` (or for new
    /// work to fold in), then ask again. `announce` is the held work the
    /// first time a window holds it back, for the one `throttled` event.
    Wait { until: Instant, announce: Option<&'a T> },
}

#[derive(Debug)]
struct Waiting<T> {
    kind: Kind,
    work: T,
    coalesced: u32,
}

/// One agent's waiting work and throttle windows. Holds at most one entry
/// per reactor plus one start-up apply: arrivals fold into what waits.
#[derive(Debug)]
pub struct Schedule<T> {
    queue: VecDeque<Waiting<T>>,
    /// When each reactor last ran for this agent: its throttle window's
    /// start. One entry per reactor that ever ran, so bounded by the tree.
    last_run: HashMap<String, Instant>,
    /// The reactor whose window the head of the queue waits out, once
    /// announced, so a window raises one `throttled` event.
    held: Option<String>,
}

impl<T> Default for Schedule<T> {
    fn default() -> Self {
        Schedule { queue: VecDeque::new(), last_run: HashMap::new(), held: None }
    }
}

impl<T> Schedule<T> {
    /// Adds work, folding it into waiting work of the same kind (the newest
    /// work wins, and the count says how many were folded).
    pub fn push(&mut self, kind: Kind, work: T) {
        if let Some(waiting) = self.queue.iter_mut().find(|w| kind.folds_into(&w.kind)) {
            // The reactor may have changed with the tree (its throttle too):
            // the newest arrival carries the current one.
            waiting.kind = kind;
            waiting.work = work;
            waiting.coalesced += 1;
            return;
        }
        self.queue.push_back(Waiting { kind, work, coalesced: 0 });
    }

    /// What to do at `now`. Handing out a reaction to run starts its
    /// reactor's throttle window at `now`.
    pub fn next(&mut self, now: Instant) -> Next<'_, T> {
        let Some(head) = self.queue.front() else { return Next::Idle };
        if let Kind::Reaction { reactor, throttle: Some(throttle) } = &head.kind
            && let Some(until) = self.last_run.get(reactor).map(|last| *last + *throttle)
            && until > now
        {
            let first = self.held.as_ref() != Some(reactor);
            if first {
                self.held = Some(reactor.clone());
            }
            let announce = first.then(|| &self.queue[0].work);
            return Next::Wait { until, announce };
        }
        let Some(Waiting { kind, work, coalesced }) = self.queue.pop_front() else { return Next::Idle };
        if let Kind::Reaction { reactor, .. } = kind {
            self.last_run.insert(reactor, now);
            self.held = None;
        }
        Next::Run { work, coalesced }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// One step of a case: at a time (ms from the start), an arrival or a
    /// question with the answer expected.
    #[derive(Debug, Clone, Copy, PartialEq)]
    enum Step {
        /// Work for a reactor (`throttle` in ms, 0 for none), labelled.
        React(&'static str, u64, &'static str),
        /// A start-up apply, labelled.
        Highstate(&'static str),
        /// `next` must say: run this label with this many coalesced.
        Run(&'static str, u32),
        /// `next` must say: wait until this time (ms), announcing this
        /// label (or nothing).
        Wait(u64, Option<&'static str>),
        /// `next` must say: nothing waits.
        Idle,
    }
    use Step::{Highstate, Idle, React, Run, Wait};

    fn check(case: &str, steps: &[(u64, Step)]) {
        let start = Instant::now();
        let at = |ms: u64| start + Duration::from_millis(ms);
        let mut schedule: Schedule<&'static str> = Schedule::default();
        for (i, &(ms, step)) in steps.iter().enumerate() {
            match step {
                React(reactor, throttle, label) => {
                    let throttle = (throttle > 0).then(|| Duration::from_millis(throttle));
                    schedule.push(Kind::Reaction { reactor: reactor.to_owned(), throttle }, label);
                }
                Highstate(label) => schedule.push(Kind::Highstate, label),
                Run(..) | Wait(..) | Idle => {
                    let got = match schedule.next(at(ms)) {
                        Next::Idle => Idle,
                        Next::Run { work, coalesced } => Run(work, coalesced),
                        Next::Wait { until, announce } => {
                            let until = u64::try_from((until - start).as_millis()).unwrap();
                            Wait(until, announce.copied())
                        }
                    };
                    assert_eq!(got, step, "{case}, step {i} at {ms} ms");
                }
            }
        }
    }

    #[test]
    fn order_and_coalescing() {
        let cases: &[(&str, &[(u64, Step)])] = &[
            ("nothing waits", &[(0, Idle)]),
            ("one reaction runs at once", &[(0, React("a", 0, "e1")), (0, Run("e1", 0)), (0, Idle)]),
            (
                "work runs in the order it first arrived",
                &[
                    (0, React("a", 0, "a1")),
                    (0, React("b", 0, "b1")),
                    (0, React("a", 0, "a2")),
                    (0, Run("a2", 1)),
                    (0, Run("b1", 0)),
                    (0, Idle),
                ],
            ),
            (
                "the latest event wins and the count says how many folded",
                &[
                    (0, React("a", 0, "e1")),
                    (1, React("a", 0, "e2")),
                    (2, React("a", 0, "e3")),
                    (3, Run("e3", 2)),
                    (3, Idle),
                ],
            ),
            (
                "work handed out to run absorbs nothing",
                &[
                    (0, React("a", 0, "e1")),
                    (0, Run("e1", 0)),
                    (1, React("a", 0, "e2")),
                    (2, React("a", 0, "e3")),
                    (5, Run("e3", 1)),
                ],
            ),
            (
                "start-up applies fold into the waiting one, the latest tree wins",
                &[
                    (0, Highstate("tree1")),
                    (0, React("a", 0, "e1")),
                    (0, Highstate("tree2")),
                    (0, Run("tree2", 1)),
                    (0, Run("e1", 0)),
                    (0, Highstate("tree3")),
                    (0, Run("tree3", 0)),
                ],
            ),
            (
                "a start-up apply and a reaction never fold into each other",
                &[(0, React("highstate", 0, "e1")), (0, Highstate("tree1")), (0, Run("e1", 0)), (0, Run("tree1", 0))],
            ),
        ];
        for (case, steps) in cases {
            check(case, steps);
        }
    }

    #[test]
    fn throttle_windows() {
        let cases: &[(&str, &[(u64, Step)])] = &[
            (
                "the first reaction of a window runs at once",
                &[
                    (0, React("t", 1000, "e1")),
                    (0, Run("e1", 0)),
                    (500, React("t", 1000, "e2")),
                    (500, Wait(1000, Some("e2"))),
                ],
            ),
            (
                "a burst in a window runs once, coalesced, at the window's end",
                &[
                    (0, React("t", 1000, "e1")),
                    (0, Run("e1", 0)),
                    (10, React("t", 1000, "e2")),
                    (10, Wait(1000, Some("e2"))),
                    (20, React("t", 1000, "e3")),
                    (20, Wait(1000, None)),
                    (30, React("t", 1000, "e4")),
                    (999, Wait(1000, None)),
                    (1000, Run("e4", 2)),
                    (1000, Idle),
                ],
            ),
            (
                "the window starts when the reactor ran, not when its event came",
                &[
                    (0, React("t", 1000, "e1")),
                    (400, Run("e1", 0)),
                    (500, React("t", 1000, "e2")),
                    (1000, Wait(1400, Some("e2"))),
                    (1400, Run("e2", 0)),
                    (1500, React("t", 1000, "e3")),
                    (1500, Wait(2400, Some("e3"))),
                ],
            ),
            (
                "after the window a reaction runs at once",
                &[(0, React("t", 1000, "e1")), (0, Run("e1", 0)), (1000, React("t", 1000, "e2")), (1000, Run("e2", 0))],
            ),
            (
                "each window is announced once",
                &[
                    (0, React("t", 1000, "e1")),
                    (0, Run("e1", 0)),
                    (1, React("t", 1000, "e2")),
                    (1, Wait(1000, Some("e2"))),
                    (1000, Run("e2", 0)),
                    (1001, React("t", 1000, "e3")),
                    (1001, Wait(2000, Some("e3"))),
                    (1002, Wait(2000, None)),
                ],
            ),
            (
                "windows are per reactor",
                &[
                    (0, React("t", 1000, "t1")),
                    (0, React("u", 1000, "u1")),
                    (0, Run("t1", 0)),
                    (0, Run("u1", 0)),
                    (1, React("u", 1000, "u2")),
                    (1, Wait(1000, Some("u2"))),
                ],
            ),
            (
                "a held reaction holds back the work behind it",
                &[
                    (0, React("t", 1000, "t1")),
                    (0, Run("t1", 0)),
                    (1, React("t", 1000, "t2")),
                    (2, React("u", 0, "u1")),
                    (2, Highstate("tree1")),
                    (2, Wait(1000, Some("t2"))),
                    (1000, Run("t2", 0)),
                    (1000, Run("u1", 0)),
                    (1000, Run("tree1", 0)),
                ],
            ),
            (
                "a reactor without throttle is never held",
                &[(0, React("a", 0, "e1")), (0, Run("e1", 0)), (0, React("a", 0, "e2")), (0, Run("e2", 0))],
            ),
            (
                "the newest arrival's throttle counts (the tree may have changed)",
                &[
                    (0, React("t", 0, "e1")),
                    (0, Run("e1", 0)),
                    (1, React("t", 0, "e2")),
                    (1, React("t", 1000, "e3")),
                    (2, Wait(1000, Some("e3"))),
                    (1000, Run("e3", 1)),
                ],
            ),
            (
                "a start-up apply is never throttled",
                &[(0, Highstate("tree1")), (0, Run("tree1", 0)), (0, Highstate("tree2")), (0, Run("tree2", 0))],
            ),
        ];
        for (case, steps) in cases {
            check(case, steps);
        }
    }
}

//! How much one peer may make the master log about its garbage: a few
//! lines per window, then one line saying how many were held back. A peer
//! sending undecryptable messages or broken handshakes by the thousand
//! must not fill the disk with the master's log (it is counted anyway, in
//! the link's periodic report).
//!
//! Pure: time is passed in, so the rule is table-tested.

use std::collections::HashMap;
use std::time::Duration;

use bytes::Bytes;
use tokio::time::Instant;

/// Lines per peer per window.
pub const LINES_PER_WINDOW: u32 = 5;
/// The window.
pub const WINDOW: Duration = Duration::from_secs(60);
/// Peers tracked at most; when full, windows that have ended are
/// forgotten, and if none has, an untracked peer logs nothing.
pub const PEERS: usize = 4096;

/// What to do with one line.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// Log it; `held_back` lines of this peer were not logged before it.
    Log { held_back: u64 },
    /// Do not log it (counted, and said with the next line logged).
    Quiet,
}

#[derive(Debug)]
struct Window {
    start: Instant,
    lines: u32,
    held_back: u64,
}

#[derive(Debug, Default)]
pub struct LogBudget {
    peers: HashMap<Bytes, Window>,
}

impl LogBudget {
    pub fn check(&mut self, peer: &Bytes, now: Instant) -> Verdict {
        if !self.peers.contains_key(peer) && self.peers.len() >= PEERS {
            self.peers.retain(|_, w| now.saturating_duration_since(w.start) < WINDOW);
            if self.peers.len() >= PEERS {
                return Verdict::Quiet;
            }
        }
        let window = self.peers.entry(peer.clone()).or_insert(Window { start: now, lines: 0, held_back: 0 });
        if now.saturating_duration_since(window.start) >= WINDOW {
            window.start = now;
            window.lines = 0;
        }
        if window.lines < LINES_PER_WINDOW {
            window.lines += 1;
            Verdict::Log { held_back: std::mem::take(&mut window.held_back) }
        } else {
            window.held_back += 1;
            Verdict::Quiet
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_peer_logs_a_few_lines_per_window_and_then_says_what_it_held_back() {
        let start = Instant::now();
        let (a, b) = (Bytes::from_static(b"a"), Bytes::from_static(b"b"));
        let mut budget = LogBudget::default();
        let at = |secs: u64| start + Duration::from_secs(secs);
        for _ in 0..LINES_PER_WINDOW {
            assert_eq!(budget.check(&a, at(0)), Verdict::Log { held_back: 0 });
        }
        for _ in 0..100 {
            assert_eq!(budget.check(&a, at(1)), Verdict::Quiet);
        }
        assert_eq!(budget.check(&b, at(1)), Verdict::Log { held_back: 0 }, "another peer has its own budget");
        assert_eq!(budget.check(&a, at(59)), Verdict::Quiet);
        assert_eq!(budget.check(&a, at(60)), Verdict::Log { held_back: 101 }, "a new window says what was held back");
        assert_eq!(budget.check(&a, at(61)), Verdict::Log { held_back: 0 });
    }

    #[test]
    fn the_peers_tracked_are_bounded() {
        let start = Instant::now();
        let mut budget = LogBudget::default();
        for i in 0..PEERS {
            budget.check(&Bytes::from(i.to_be_bytes().to_vec()), start);
        }
        assert_eq!(budget.check(&Bytes::from_static(b"new"), start), Verdict::Quiet, "full: a new peer is quiet");
        let later = start + WINDOW;
        assert_eq!(
            budget.check(&Bytes::from_static(b"new"), later),
            Verdict::Log { held_back: 0 },
            "ended windows are forgotten"
        );
        assert!(budget.peers.len() <= PEERS);
    }
}

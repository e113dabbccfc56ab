//! Exponential backoff with jitter, the one rule for every retry: the
//! agent's reconnects, the swarm's simulated agents, the master's webhook.
//!
//! Retry `n` (counted from 0) waits `first × 2ⁿ`, at most `max`, times a
//! random factor between ½ and 1: many peers failing together (a fleet
//! after a master restart, reactions after an outage) spread their retries
//! instead of retrying in lockstep, and the cap is never exceeded.

use std::time::Duration;

use rand::Rng;

/// The shortest jitter factor; the longest is 1.
const JITTER_FLOOR: f64 = 0.5;

/// A backoff schedule.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Backoff {
    /// The wait before the first retry, before jitter.
    pub first: Duration,
    /// The longest wait, whatever the number of retries.
    pub max: Duration,
}

impl Backoff {
    pub const fn new(first: Duration, max: Duration) -> Self {
        Backoff { first, max }
    }

    /// The wait before retry `retry` (0 for the first), jittered.
    pub fn delay(&self, retry: u32) -> Duration {
        self.jittered(retry, rand::rng().random_range(JITTER_FLOOR..=1.0))
    }

    /// The wait before retry `retry` with the jitter `factor` (½ to 1).
    fn jittered(&self, retry: u32, factor: f64) -> Duration {
        // 2¹⁶ × any sensible `first` is past any sensible cap; the bound only
        // keeps the shift from overflowing.
        let full = self.first.saturating_mul(1u32 << retry.min(16)).min(self.max);
        full.mul_f64(factor)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SCHEDULE: Backoff = Backoff::new(Duration::from_millis(100), Duration::from_secs(10));

    #[test]
    fn grows_doubling_then_is_capped() {
        let ms = Duration::from_millis;
        let table = [(0, ms(100)), (1, ms(200)), (2, ms(400)), (6, ms(6400)), (7, ms(10_000)), (40, ms(10_000))];
        for (retry, full) in table {
            assert_eq!(SCHEDULE.jittered(retry, 1.0), full, "retry {retry}");
            assert_eq!(SCHEDULE.jittered(retry, JITTER_FLOOR), full / 2, "retry {retry}");
        }
    }

    #[test]
    fn is_jittered_within_half_to_full() {
        for retry in [0, 3, 40] {
            let full = SCHEDULE.jittered(retry, 1.0);
            let delays: Vec<Duration> = (0..64).map(|_| SCHEDULE.delay(retry)).collect();
            assert!(delays.iter().all(|d| *d >= full / 2 && *d <= full), "retry {retry}: {delays:?}");
            // 64 draws from a continuous range are not all the same.
            assert!(delays.iter().any(|d| *d != delays[0]), "retry {retry}: no jitter in {delays:?}");
        }
    }
}

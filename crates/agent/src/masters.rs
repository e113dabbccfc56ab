//! Which master an agent talks to when it lists several (`masters:` in
//! agent.yaml, issue #20): the rendezvous ranking and the return schedule.
//!
//! Every agent ranks the masters by a rendezvous (highest-random-weight)
//! hash of (agent id, master address) and connects to the first that
//! answers, walking down its ranking on failure. Because each agent's
//! ranking depends only on its own id and the addresses, a fleet spreads
//! evenly over the masters, and when one master disappears only the agents
//! that ranked it first move, each to its own second choice, so its load
//! spreads evenly over the others. The link ([`crate::link`]) does the
//! walking; this module only decides, with no I/O, so it is tested as a
//! table.
//!
//! An agent on a master other than its first choice probes the better
//! ranked ones every [`RETURN_PROBE`] (agent.yaml's `return_probe`;
//! jittered to a half to all of it, [`return_delay`]) and moves back to the first that answers: agents of a
//! master that comes back return over that spread, not all at once.

use std::time::Duration;

use sha2::Digest;

/// How often an agent away from its first-ranked master probes the better
/// ranked ones, before jitter (each wait is a half to all of it).
pub const RETURN_PROBE: Duration = Duration::from_secs(30);

/// The rendezvous weight of `master` for `agent`: the first eight bytes of
/// SHA-256 over the id, a zero byte and the address. The zero byte keeps
/// (`ab`, `c`) and (`a`, `bc`) apart; ids and addresses hold none.
pub fn weight(agent: &str, master: &str) -> u64 {
    let mut hasher = sha2::Sha256::new();
    hasher.update(agent.as_bytes());
    hasher.update([0]);
    hasher.update(master.as_bytes());
    let digest = hasher.finalize();
    let mut first = [0u8; 8];
    first.copy_from_slice(&digest[..8]);
    u64::from_be_bytes(first)
}

/// The indices of `masters` in the order `agent` tries them: highest
/// weight first (ties, only between equal addresses, by position).
pub fn rank<S: AsRef<str>>(agent: &str, masters: &[S]) -> Vec<usize> {
    let mut order: Vec<(u64, usize)> =
        masters.iter().enumerate().map(|(i, master)| (weight(agent, master.as_ref()), i)).collect();
    order.sort_by(|a, b| b.0.cmp(&a.0).then(a.1.cmp(&b.1)));
    order.into_iter().map(|(_, i)| i).collect()
}

/// The shortest `return_probe` agent.yaml may set.
pub const MIN_RETURN_PROBE: Duration = Duration::from_secs(1);

/// The wait before the next probe of better-ranked masters: a half to all
/// of `every` ([`RETURN_PROBE`] unless agent.yaml's `return_probe` says
/// otherwise), so the agents of a master that comes back do not all
/// reconnect to it in the same instant.
pub fn return_delay(every: Duration) -> Duration {
    halite_proto::Backoff::new(every, every).delay(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn addresses(n: usize) -> Vec<String> {
        (0..n).map(|i| format!("tcp://127.0.0.{}:4510", i + 2)).collect()
    }

    #[test]
    fn the_ranking_is_stable_and_a_permutation() {
        let masters = addresses(3);
        let first = rank("web01", &masters);
        assert_eq!(first, rank("web01", &masters), "the same inputs rank the same way");
        let mut sorted = first.clone();
        sorted.sort_unstable();
        assert_eq!(sorted, [0, 1, 2]);
        // The order of the list in agent.yaml does not matter: only the
        // addresses do.
        let reversed: Vec<String> = masters.iter().rev().cloned().collect();
        let by_address = |order: Vec<usize>, list: &[String]| -> Vec<String> {
            order.into_iter().map(|i| list[i].clone()).collect()
        };
        assert_eq!(by_address(first, &masters), by_address(rank("web01", &reversed), &reversed));
        // One master alone is always first.
        assert_eq!(rank("web01", &masters[..1]), [0]);
    }

    #[test]
    fn removing_a_master_moves_only_its_agents_and_spreads_them() {
        let masters = addresses(3);
        let agents: Vec<String> = (0..3000).map(|i| format!("agent-{i:04}")).collect();
        let home = |agent: &str, list: &[String]| list[rank(agent, list)[0]].clone();
        let mut split = [0usize; 3];
        for agent in &agents {
            split[rank(agent, &masters)[0]] += 1;
        }
        // Even within a loose bound (1000 expected each; the bound is
        // about ten standard deviations).
        assert!(split.iter().all(|&n| (750..=1250).contains(&n)), "split {split:?}");
        let dead = masters[1].clone();
        let survivors: Vec<String> = masters.iter().filter(|m| **m != dead).cloned().collect();
        let mut moved_to = std::collections::HashMap::<String, usize>::new();
        for agent in &agents {
            let before = home(agent, &masters);
            let after = home(agent, &survivors);
            if before == dead {
                // A dead master's agent goes to its own second choice.
                assert_eq!(after, masters[rank(agent, &masters)[1]], "{agent}");
                *moved_to.entry(after).or_default() += 1;
            } else {
                assert_eq!(before, after, "{agent} moved though its master did not die");
            }
        }
        // And they spread over both survivors.
        let moved: Vec<usize> = moved_to.values().copied().collect();
        assert_eq!(moved.len(), 2, "{moved_to:?}");
        let total: usize = moved.iter().sum();
        assert!(moved.iter().all(|&n| n * 4 >= total), "{moved_to:?}");
    }

    #[test]
    fn weights_separate_id_and_address() {
        assert_ne!(weight("ab", "c"), weight("a", "bc"));
        assert_eq!(weight("web01", "tcp://a:1"), weight("web01", "tcp://a:1"));
    }

    #[test]
    fn the_return_probe_is_jittered_within_its_bounds() {
        for _ in 0..100 {
            let delay = return_delay(RETURN_PROBE);
            assert!(delay >= RETURN_PROBE / 2 && delay <= RETURN_PROBE, "{delay:?}");
        }
    }
}

//! Quorum arithmetic.

use crate::types::LogIndex;

/// The most failures a cluster of `n` replicas tolerates: f = (n - 1) / 2.
pub fn max_failures(n: usize) -> usize {
    assert!(n >= 1, "a cluster has at least one replica");
    (n - 1) / 2
}

/// The smallest majority of `n` replicas: f + 1 for n = 2f + 1.
pub fn majority(n: usize) -> usize {
    assert!(n >= 1, "a cluster has at least one replica");
    n / 2 + 1
}

/// Nil-ext's supermajority for a cluster of `n` replicas: f + ceil(f/2) + 1
/// (Skyros, SOSP 2021, section 4.2). 3 of 3 for f = 1, 4 of 5 for f = 2.
pub fn supermajority(n: usize) -> usize {
    let f = max_failures(n);
    f + f.div_ceil(2) + 1
}

/// The fast quorum this project uses for Nil-ext writes: every replica.
///
/// For f = 1 this is the paper's supermajority (3 of 3). For f >= 2 the
/// paper's f + ceil(f/2) + 1 (4 of 5) can leave a new leader facing
/// durability logs that order three writes in a cycle with no safe answer
/// (DESIGN.md, "Known hazard"); with all n replicas acknowledging, every
/// completed write is in every durability log, in an order consistent with
/// real time, so any one log is a valid order. Slower (one slow replica
/// sends writes to the slow path), but safe.
pub fn nilext_fast_quorum(n: usize) -> usize {
    assert!(n >= 1, "a cluster has at least one replica");
    n
}

/// The highest index held by a majority, given each replica's match index
/// (the leader's own durable index included). Figure 2's commit rule then
/// also requires the entry at that index to be of the leader's term.
pub fn quorum_index(match_indexes: &[LogIndex]) -> LogIndex {
    assert!(!match_indexes.is_empty());
    let mut sorted = match_indexes.to_vec();
    sorted.sort_unstable_by(|a, b| b.cmp(a));
    sorted[majority(match_indexes.len()) - 1]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn majorities_and_supermajorities() {
        assert_eq!(
            (majority(1), majority(3), majority(5), majority(4)),
            (1, 2, 3, 3)
        );
        assert_eq!(
            (max_failures(3), max_failures(5), max_failures(7)),
            (1, 2, 3)
        );
        assert_eq!(supermajority(3), 3);
        assert_eq!(supermajority(5), 4);
        assert_eq!(supermajority(7), 6);
        assert_eq!(supermajority(1), 1);
    }

    #[test]
    fn quorum_index_is_the_majority_th_largest() {
        assert_eq!(quorum_index(&[5, 3, 4]), 4);
        assert_eq!(quorum_index(&[5, 0, 0]), 0);
        assert_eq!(quorum_index(&[9, 7, 1, 2, 8]), 7);
    }
}

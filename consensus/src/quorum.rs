//! Quorum arithmetic.

use std::collections::BTreeMap;

use crate::membership::NodeSet;
use crate::types::{LogIndex, NodeId, Term};

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

/// The fast quorum this project uses for Nil-ext writes: every voter of
/// the configuration in force (`n` of them).
///
/// For f = 1 this is the paper's supermajority (3 of 3). For f >= 2 the
/// paper's f + ceil(f/2) + 1 (4 of 5) can leave a new leader facing
/// durability logs that order three writes in a cycle with no safe answer
/// (`docs/architecture.md`, "Nil-ext Raft"); with all n replicas acknowledging, every
/// completed write is in every durability log, in an order consistent with
/// real time, so any one log is a valid order. Slower (one slow replica
/// sends writes to the slow path), but safe.
pub fn nilext_fast_quorum(n: usize) -> usize {
    assert!(n >= 1, "a cluster has at least one replica");
    n
}

/// Nil-ext's fast-path completion rule, the one kvclient and the
/// simulator's clients both use: a write is complete once, in one term, its
/// leader acknowledged it as durable and so did every voter of the
/// configuration that leader had in force when it acknowledged
/// ([`nilext_fast_quorum`]: all of them). Acknowledgements of different
/// terms never add up: a replica that moved to a newer term may have handed
/// its durability log to a new leader before it acknowledged.
#[derive(Clone, Debug, Default)]
pub struct FastAcks {
    /// term -> (replicas that acknowledged in it, the voters its leader
    /// named, if the leader acknowledged)
    by_term: BTreeMap<Term, (NodeSet, Option<NodeSet>)>,
}

impl FastAcks {
    /// No acknowledgement yet.
    pub fn new() -> Self {
        FastAcks::default()
    }

    /// Counts `node`'s acknowledgement in `term` (`from_leader`: it leads
    /// that term; `voters`: the voters of its configuration); true once the
    /// write is complete.
    pub fn add(&mut self, node: NodeId, term: Term, from_leader: bool, voters: NodeSet) -> bool {
        if crate::membership::validate_node_id(node).is_err() {
            return false;
        }
        let (nodes, leader_voters) = self.by_term.entry(term).or_default();
        nodes.insert(node);
        if from_leader {
            *leader_voters = Some(voters);
        }
        leader_voters.is_some_and(|voters| !voters.is_empty() && voters.minus(*nodes).is_empty())
    }
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
    fn a_fast_write_completes_on_every_voter_its_leader_names_in_one_term() {
        let voters = NodeSet::of([1, 2, 3]);
        let mut acks = FastAcks::new();
        assert!(!acks.add(2, 5, false, voters));
        assert!(!acks.add(3, 5, false, voters));
        assert!(
            !acks.add(1, 4, true, voters),
            "an older term's ack does not count"
        );
        assert!(!acks.add(2, 5, false, voters), "a repeated ack counts once");
        assert!(
            !acks.add(4, 5, false, voters),
            "a learner's ack adds nothing"
        );
        assert!(acks.add(1, 5, true, voters));
        let mut no_leader = FastAcks::new();
        for node in 1..=3 {
            assert!(
                !no_leader.add(node, 7, false, voters),
                "the leader must be among them"
            );
        }
        // The leader of a configuration of four voters needs all four.
        let mut grown = FastAcks::new();
        for node in [1, 2, 3] {
            assert!(!grown.add(node, 9, node == 1, NodeSet::of([1, 2, 3, 4])));
        }
        assert!(grown.add(4, 9, false, NodeSet::of([1, 2, 3])));
    }

    #[test]
    fn quorum_index_is_the_majority_th_largest() {
        assert_eq!(quorum_index(&[5, 3, 4]), 4);
        assert_eq!(quorum_index(&[5, 0, 0]), 0);
        assert_eq!(quorum_index(&[9, 7, 1, 2, 8]), 7);
    }
}

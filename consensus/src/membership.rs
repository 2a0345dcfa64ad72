//! Cluster membership: who votes, who only learns, and how that changes.
//!
//! # Single-server changes
//!
//! A configuration changes by one server at a time (Raft dissertation,
//! section 4.1): add a learner, promote a learner to voter, or remove a
//! member. Any two majorities of configurations that differ by one voter
//! overlap, so no moment exists at which two leaders of one term could be
//! elected by disjoint quorums, and no joint configuration is needed. We
//! chose this over joint consensus (etcd, section 4.3) because every
//! operation an operator needs (replace a failed node, grow, shrink) is a
//! sequence of such steps, and the rules stay few: a leader appends a
//! change only when
//!
//! 1. it has committed an entry of its own term (the dissertation's fix:
//!    otherwise a change appended by an earlier leader, uncommitted and
//!    invisible to this one, and this leader's own change could together
//!    differ by two voters);
//! 2. no earlier change in its log is uncommitted;
//! 3. no leadership transfer is under way.
//!
//! # Where a configuration lives
//!
//! A configuration travels in the log as an entry
//! ([`crate::EntryPayload::Config`]) holding the whole new membership, and
//! takes effect on a node as soon as the node appends it, committed or not
//! (a node always uses the latest configuration in its log). A truncated
//! change reverts to the one before. A snapshot carries the membership at
//! its index ([`crate::snapshot::SnapshotMeta::membership`]); a node that
//! holds no configuration at all (a fresh node started with the initial
//! member list) uses that list.
//!
//! # Learners and removed members
//!
//! Learners receive the log (or a snapshot) like voters but never count
//! towards a quorum; a learner is promoted only once it has caught up (its
//! log matches the leader's to within [`PROMOTION_LAG_MAX`] entries of the
//! commit index). A node that is not a voter of its configuration does not
//! campaign, unless a candidate behind it counts it as a voter (it may then
//! hold the only log that can win; it campaigns once and, elected, hands
//! leadership to a voter: [`crate::raft::RaftCore::note_vote_request`]). It
//! answers vote requests, since a promotion may be in other logs before its
//! own. Voters ignore vote requests of servers that are not voters of their
//! own configuration and are behind them, so a removed server cannot
//! disrupt the cluster by raising terms. The leader goes on
//! replicating to a removed member until the removal commits, then sends it
//! one last heartbeat that tells it so.
//!
//! Node ids are 1 to [`NODE_ID_MAX`]: a set of members is a 64-bit mask,
//! so that a membership is a small value that travels in snapshots'
//! identities and status reports by copy.

use std::fmt;

use crate::types::{LogIndex, NodeId};

/// The highest node id a member may have.
pub const NODE_ID_MAX: NodeId = 64;

/// A learner is promoted only once its log holds the configuration in
/// force (it has heard from the leader since it was added, and knows it is
/// a member) and matches the leader's up to within this many entries of
/// the commit index. Under load a learner
/// always trails by the entries in flight (vanilla Raft sends one entry per
/// round trip): waiting for it to hold the commit index exactly could wait
/// for ever. What it lacks it receives as a voter; meanwhile the other
/// voters make the quorums.
pub const PROMOTION_LAG_MAX: LogIndex = 1_000;

/// Checks that `id` may name a member (1 to [`NODE_ID_MAX`]).
pub fn validate_node_id(id: NodeId) -> Result<(), String> {
    if (1..=NODE_ID_MAX).contains(&id) {
        Ok(())
    } else {
        Err(format!(
            "node id {id} is out of range: ids are 1 to {NODE_ID_MAX}"
        ))
    }
}

/// Checks a node's id and its cluster's initial member list: ids in range,
/// none twice, this node among them; or no list at all (a node that joins
/// a running cluster, and learns its configuration there).
pub fn validate_initial_members(id: NodeId, members: &[NodeId]) -> Result<(), String> {
    validate_node_id(id)?;
    let mut seen = NodeSet::EMPTY;
    for &member in members {
        validate_node_id(member)?;
        if seen.contains(member) {
            return Err(format!("node {member} is listed twice among the members"));
        }
        seen.insert(member);
    }
    if !members.is_empty() && !seen.contains(id) {
        return Err(format!("node {id} is not among the members"));
    }
    Ok(())
}

/// A set of node ids (1 to [`NODE_ID_MAX`]).
#[derive(Clone, Copy, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct NodeSet(u64);

impl NodeSet {
    /// The empty set.
    pub const EMPTY: NodeSet = NodeSet(0);

    /// The set of `ids`. Panics on an id out of range (callers validate
    /// ids from outside with [`validate_node_id`]).
    pub fn of(ids: impl IntoIterator<Item = NodeId>) -> Self {
        let mut set = NodeSet::EMPTY;
        for id in ids {
            set.insert(id);
        }
        set
    }

    /// The set as its bit mask (bit `id - 1` for each member), for storage.
    pub fn bits(self) -> u64 {
        self.0
    }

    /// The set from its bit mask ([`NodeSet::bits`]).
    pub fn from_bits(bits: u64) -> Self {
        NodeSet(bits)
    }

    fn bit(id: NodeId) -> u64 {
        assert!(
            (1..=NODE_ID_MAX).contains(&id),
            "node id {id} out of range 1..={NODE_ID_MAX}"
        );
        1 << (id - 1)
    }

    /// Whether `id` is in the set (false for ids out of range).
    pub fn contains(self, id: NodeId) -> bool {
        (1..=NODE_ID_MAX).contains(&id) && self.0 & Self::bit(id) != 0
    }

    /// Adds `id`.
    pub fn insert(&mut self, id: NodeId) {
        self.0 |= Self::bit(id);
    }

    /// Removes `id`.
    pub fn remove(&mut self, id: NodeId) {
        if (1..=NODE_ID_MAX).contains(&id) {
            self.0 &= !Self::bit(id);
        }
    }

    /// How many ids it holds.
    pub fn len(self) -> usize {
        self.0.count_ones() as usize
    }

    /// Whether it holds none.
    pub fn is_empty(self) -> bool {
        self.0 == 0
    }

    /// Its ids, in increasing order.
    pub fn iter(self) -> impl Iterator<Item = NodeId> {
        (1..=NODE_ID_MAX).filter(move |&id| self.contains(id))
    }

    /// The ids in either set.
    pub fn union(self, other: NodeSet) -> NodeSet {
        NodeSet(self.0 | other.0)
    }

    /// The ids in this set and not in `other`.
    pub fn minus(self, other: NodeSet) -> NodeSet {
        NodeSet(self.0 & !other.0)
    }
}

impl fmt::Debug for NodeSet {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_set().entries(self.iter()).finish()
    }
}

impl fmt::Display for NodeSet {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let ids: Vec<String> = self.iter().map(|id| id.to_string()).collect();
        write!(f, "[{}]", ids.join(", "))
    }
}

/// A configuration: the voters and the learners (disjoint).
#[derive(Clone, Copy, Default, Debug, PartialEq, Eq, Hash)]
pub struct Membership {
    /// Members that vote and count towards quorums.
    pub voters: NodeSet,
    /// Members that receive the log and do not vote.
    pub learners: NodeSet,
}

impl Membership {
    /// A configuration of `voters` only (a cluster's initial one).
    pub fn of_voters(voters: impl IntoIterator<Item = NodeId>) -> Self {
        Membership {
            voters: NodeSet::of(voters),
            learners: NodeSet::EMPTY,
        }
    }

    /// No member: unknown (a node that was never told).
    pub fn is_empty(&self) -> bool {
        self.voters.is_empty() && self.learners.is_empty()
    }

    /// Whether `id` votes.
    pub fn is_voter(&self, id: NodeId) -> bool {
        self.voters.contains(id)
    }

    /// Whether `id` is a learner.
    pub fn is_learner(&self, id: NodeId) -> bool {
        self.learners.contains(id)
    }

    /// Whether `id` is a member, voter or learner.
    pub fn contains(&self, id: NodeId) -> bool {
        self.members().contains(id)
    }

    /// Voters and learners.
    pub fn members(&self) -> NodeSet {
        self.voters.union(self.learners)
    }

    /// Votes or acknowledgements of voters a quorum needs.
    pub fn majority(&self) -> usize {
        self.voters.len() / 2 + 1
    }

    /// Whether the voters in `acks` make a quorum.
    pub fn is_quorum(&self, acks: NodeSet) -> bool {
        NodeSet(acks.0 & self.voters.0).len() >= self.majority()
    }

    /// The highest index held by a quorum of voters, given each voter's
    /// match index (`match_of`); 0 with no voter.
    pub fn quorum_index(&self, match_of: impl Fn(NodeId) -> LogIndex) -> LogIndex {
        let mut matches: Vec<LogIndex> = self.voters.iter().map(match_of).collect();
        if matches.is_empty() {
            return 0;
        }
        matches.sort_unstable_by(|a, b| b.cmp(a));
        matches[self.majority() - 1]
    }

    /// The configuration after `change`, or why it cannot be made from
    /// this one (the checks that need no leader state).
    pub fn changed(&self, change: MembershipChange) -> Result<Membership, MembershipError> {
        let mut next = *self;
        match change {
            MembershipChange::AddLearner(id) => {
                validate_node_id(id).map_err(MembershipError::Invalid)?;
                if self.contains(id) {
                    return Err(MembershipError::Invalid(format!(
                        "node {id} is already a member ({})",
                        self.describe(id)
                    )));
                }
                next.learners.insert(id);
            }
            MembershipChange::Promote(id) => {
                if !self.is_learner(id) {
                    return Err(MembershipError::Invalid(format!(
                        "node {id} is not a learner ({}); add it as a learner first",
                        self.describe(id)
                    )));
                }
                next.learners.remove(id);
                next.voters.insert(id);
            }
            MembershipChange::Remove(id) => {
                if !self.contains(id) {
                    return Err(MembershipError::Invalid(format!(
                        "node {id} is not a member"
                    )));
                }
                if self.is_voter(id) && self.voters.len() == 1 {
                    return Err(MembershipError::Invalid(format!(
                        "node {id} is the last voter"
                    )));
                }
                next.voters.remove(id);
                next.learners.remove(id);
            }
        }
        Ok(next)
    }

    fn describe(&self, id: NodeId) -> &'static str {
        if self.is_voter(id) {
            "a voter"
        } else if self.is_learner(id) {
            "a learner"
        } else {
            "not a member"
        }
    }
}

impl fmt::Display for Membership {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "voters {}", self.voters)?;
        if !self.learners.is_empty() {
            write!(f, ", learners {}", self.learners)?;
        }
        Ok(())
    }
}

/// One single-server change of the configuration.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum MembershipChange {
    /// Adds a learner: it receives the log and does not vote.
    AddLearner(NodeId),
    /// Makes a learner a voter; refused until its log matches the leader's
    /// up to within [`PROMOTION_LAG_MAX`] entries of the commit index.
    Promote(NodeId),
    /// Removes a member, voter or learner. The leader does not remove
    /// itself: hand leadership over first.
    Remove(NodeId),
}

impl MembershipChange {
    /// The node the change is about.
    pub fn node(self) -> NodeId {
        match self {
            MembershipChange::AddLearner(id)
            | MembershipChange::Promote(id)
            | MembershipChange::Remove(id) => id,
        }
    }
}

impl fmt::Display for MembershipChange {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            MembershipChange::AddLearner(id) => write!(f, "add learner {id}"),
            MembershipChange::Promote(id) => write!(f, "promote {id}"),
            MembershipChange::Remove(id) => write!(f, "remove {id}"),
        }
    }
}

/// Deliberate bugs in the membership rules, for tests that show the
/// simulator catches them. Never set outside tests.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MembershipBug {
    /// A leader appends a change while an earlier one is uncommitted, and
    /// before it has committed an entry of its term: two changes in flight
    /// may differ by two voters, whose majorities need not overlap.
    ChangesWithoutWaiting,
    /// A node that is not a voter in its own log never campaigns, even
    /// counted as one by a candidate behind it
    /// ([`crate::raft::RaftCore::note_vote_request`]): a cluster can be left
    /// unable to elect anyone.
    NonVotersNeverCampaign,
    /// A non-voter elected keeps leading instead of handing leadership to
    /// a voter ([`crate::raft::RaftCore::non_voter_hands_over`]).
    NonVoterLeadsOn,
    /// A node counted as a voter campaigns at every election timeout, not
    /// once, and goes on when voters ahead of it answer that it is not a
    /// voter of theirs ([`crate::raft::RaftCore::note_vote_request`]): its
    /// campaigns raise the terms of voters, which depose the leader.
    CountedVoterCampaignsOn,
}

/// Why a leader did not append a membership change.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum MembershipError {
    /// This node does not lead; `leader` is the one it knows.
    #[error("not the leader")]
    NotLeader {
        /// The leader it knows, if any.
        leader: Option<NodeId>,
    },
    /// The leader cannot append a change yet (an earlier change is not
    /// committed, it has not committed an entry of its term, it is handing
    /// leadership over, or, with Nil-ext, it is still recovering); retry
    /// shortly.
    #[error("retry shortly: {0}")]
    Busy(String),
    /// The change makes no sense for the configuration in force.
    #[error("{0}")]
    Invalid(String),
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sets_hold_ids_one_to_sixty_four() {
        let mut set = NodeSet::of([1, 3, 64]);
        assert_eq!(set.iter().collect::<Vec<_>>(), vec![1, 3, 64]);
        assert_eq!(set.len(), 3);
        assert!(set.contains(64) && !set.contains(2) && !set.contains(0) && !set.contains(65));
        set.remove(3);
        assert_eq!(set.to_string(), "[1, 64]");
        assert_eq!(NodeSet::from_bits(set.bits()), set);
        assert!(validate_node_id(0).is_err() && validate_node_id(65).is_err());
        assert!(validate_node_id(64).is_ok());
    }

    #[test]
    fn changes_go_one_server_at_a_time() {
        let three = Membership::of_voters([1, 2, 3]);
        let with_learner = three.changed(MembershipChange::AddLearner(4)).unwrap();
        assert_eq!(with_learner.to_string(), "voters [1, 2, 3], learners [4]");
        assert_eq!(with_learner.majority(), 2, "learners do not count");
        let four = with_learner.changed(MembershipChange::Promote(4)).unwrap();
        assert_eq!((four.voters.len(), four.majority()), (4, 3));
        let back = four.changed(MembershipChange::Remove(3)).unwrap();
        assert_eq!(back, Membership::of_voters([1, 2, 4]));
        for refused in [
            three.changed(MembershipChange::AddLearner(2)),
            three.changed(MembershipChange::Promote(2)),
            three.changed(MembershipChange::Promote(5)),
            three.changed(MembershipChange::Remove(5)),
            Membership::of_voters([1]).changed(MembershipChange::Remove(1)),
            three.changed(MembershipChange::AddLearner(0)),
        ] {
            assert!(matches!(refused, Err(MembershipError::Invalid(_))));
        }
    }

    #[test]
    fn quorums_count_voters_only() {
        let m = Membership {
            voters: NodeSet::of([1, 2, 3]),
            learners: NodeSet::of([4, 5]),
        };
        assert!(!m.is_quorum(NodeSet::of([1, 4, 5])));
        assert!(m.is_quorum(NodeSet::of([1, 3])));
        let matches = |id: NodeId| [0, 9, 5, 1, 20, 20][id as usize];
        assert_eq!(m.quorum_index(matches), 5);
    }
}

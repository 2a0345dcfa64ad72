//! The rules every Raft variant shares, written once: persistent state
//! (term, vote, log) and how it changes, the role a node plays and the
//! transitions between roles, the receiver's side of AppendEntries and
//! RequestVote (Figure 2), commitment and applying, the randomized election
//! timer, and the requests a leader owes answers. A variant (vanilla,
//! optimized, Nil-ext) adds its own leader behaviour around a [`RaftCore`].

use std::collections::{BTreeMap, BTreeSet};

use crate::cluster_time::ClusterClock;
use crate::io::{
    HardState, Outbox, Recovered, ReplyOutcome, Role, SoftState, Status, Timing, Write,
};
use crate::log::RaftLog;
use crate::membership::{Membership, MembershipChange, MembershipError, NodeSet};
use crate::message::{
    AppendEntries, AppendEntriesResponse, InstallSnapshot, InstallSnapshotResponse, Message,
    RequestVote, RequestVoteResponse,
};
use crate::rng::DetRng;
use crate::snapshot::{Reception, SnapshotMeta, Transfer, TransferStep};
use crate::types::{ConfigEntry, Entry, EntryPayload, LogIndex, NodeId, RequestId, Term};

/// Default base election timeout of every Raft variant, in ticks: each
/// timeout is drawn from `[T, 2T)`. With kvnode's default tick of 20 ms,
/// 300 to 600 ms.
pub const ELECTION_TIMEOUT_TICKS: u64 = 15;

/// Default ticks between a leader's heartbeats (60 ms at kvnode's default
/// tick): five per base election timeout.
pub const HEARTBEAT_TICKS: u64 = 3;

/// Checks election and heartbeat timing fit together: a follower must hear
/// several heartbeats within its shortest election timeout.
pub fn validate_timing(election_timeout_ticks: u64, heartbeat_ticks: u64) -> Result<(), String> {
    if heartbeat_ticks == 0 || election_timeout_ticks <= heartbeat_ticks {
        return Err(format!(
            "need heartbeat ticks > 0 and election timeout ticks > heartbeat ticks \
             (election timeout {election_timeout_ticks}, heartbeat {heartbeat_ticks})"
        ));
    }
    Ok(())
}

/// Why a follower rejected an AppendEntries, with hints for the leader.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Conflict {
    /// The rejected `prev_log_index`.
    pub rejected_prev: LogIndex,
    /// The first index the follower suggests retrying from: after its log's
    /// end when the log is too short, else the first index of the term of
    /// its conflicting entry.
    pub hint_index: LogIndex,
    /// The term of its conflicting entry (0 when the log is too short).
    pub hint_term: Term,
}

/// What a follower's rejection tells the leader.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ConflictHints {
    /// Figure 2: the rejected `prev_log_index` only; the leader steps back
    /// one entry at a time.
    RejectedIndex,
    /// The conflicting entry's term and the first index of that term in
    /// the follower's log (section 5.3's optimization), so the leader skips
    /// a term at a time.
    TermAndFirstIndex,
}

/// A replica's persistent state, the indexes derived from it, and the role
/// it plays.
#[derive(Clone, Debug)]
pub struct RaftCore {
    /// This node.
    pub id: NodeId,
    /// Its role (Figure 2, "Rules for Servers").
    pub role: Role,
    /// The leader it knows for `term`.
    pub leader: Option<NodeId>,
    /// As candidate (or pre-candidate): the votes granted so far, its own
    /// included.
    pub votes: BTreeSet<NodeId>,
    /// The randomized election timeout.
    pub election: ElectionTimer,
    /// The membership this node starts from when it holds no other: the
    /// initial member list it was given (empty for a node that joins a
    /// running cluster).
    bootstrap: Membership,
    /// The membership at the log's base: its snapshot's (when known),
    /// else `bootstrap`.
    base_membership: Membership,
    /// The configuration entries of the log, by index: the latest is in
    /// force ([`crate::membership`]).
    configs: BTreeMap<LogIndex, Membership>,
    /// As leader: the replication targets and configuration its variant
    /// last adjusted to ([`RaftVariant::on_membership_changed`]).
    adjusted_to: (NodeSet, Membership),
    /// A deliberate bug (tests only).
    pub membership_bug: Option<crate::membership::MembershipBug>,
    /// As leader: members whose removal committed, that do not hold it yet:
    /// the index of the removal, their match index when last seen moving,
    /// and the ticks left before giving up.
    leaving: BTreeMap<NodeId, (LogIndex, LogIndex, u64)>,
    /// Told by a voter that it is not a voter of a later configuration
    /// ([`RaftCore::told_not_a_voter`]): it does not campaign until it
    /// hears from a leader.
    pub quiet: bool,
    /// Not a voter in its own log, but counted as one by a candidate that
    /// it refused because its own log is ahead
    /// ([`RaftCore::note_vote_request`]): it may campaign once, unless it
    /// hears from a leader first.
    counted_as_voter: bool,
    /// Figure 2: `currentTerm`. Invariant: never decreases.
    pub term: Term,
    /// Figure 2: `votedFor`, in `term`.
    pub voted_for: Option<NodeId>,
    /// Figure 2: `log[]`.
    pub log: RaftLog,
    /// Highest index known committed. Invariant: never decreases, and
    /// committed entries are never truncated.
    pub commit_index: LogIndex,
    /// Highest index the runtime reported applied.
    pub applied_index: LogIndex,
    /// Highest index handed to the runtime for apply. Invariant:
    /// `applied_index <= apply_emitted <= commit_index`, and every emitted
    /// entry was durable here when emitted.
    apply_emitted: LogIndex,
    /// Highest index of this node's log known durable (and equal to memory).
    pub durable_index: LogIndex,
    /// The latest snapshot: taken here, or installed from a leader.
    pub snapshot: SnapshotMeta,
    /// As follower: the snapshot being received from the leader.
    reception: Option<Reception>,
    /// As follower: a snapshot whose install was issued and not yet
    /// reported done; nothing is applied meanwhile.
    installing: Option<SnapshotMeta>,
    /// Cluster time: what this node stamps the entries it creates as leader
    /// with ([`crate::cluster_time`]).
    pub clock: ClusterClock,
    /// As leader: a leadership transfer under way (Raft thesis 3.10).
    leader_transfer: Option<LeaderTransfer>,
    /// As leader: TimeoutNow went out in this term. Its target may win an
    /// election while followers still hear from this leader (they vote for
    /// a transfer's candidate despite check-quorum's stickiness), so this
    /// leader serves no lease read for the rest of its term, even after the
    /// transfer timed out (a TimeoutNow delivered late still elects).
    pub timeout_now_sent: bool,
}

/// A leadership transfer under way: its target, the ticks left before the
/// leader gives up, and whether TimeoutNow went out.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LeaderTransfer {
    /// The member leadership goes to.
    pub target: NodeId,
    /// Ticks left before the leader gives up and takes requests again.
    pub ticks_left: u64,
    /// TimeoutNow was sent.
    pub sent: bool,
}

impl RaftCore {
    /// The state rebuilt from storage, a follower with no known leader,
    /// its election timeout drawn from `[base, 2 * base)` ticks by a
    /// generator seeded from `seed` and the node's id. `members` is the
    /// cluster's initial member list, every one a voter (empty for a node
    /// that joins a running cluster: it learns its configuration from the
    /// leader); a configuration in storage overrides it.
    pub fn new(
        id: NodeId,
        members: Vec<NodeId>,
        recovered: Recovered,
        election_timeout_ticks: u64,
        seed: u64,
    ) -> Self {
        let bootstrap = Membership::of_voters(members);
        let base_membership = if recovered.snapshot.membership.is_empty() {
            bootstrap
        } else {
            recovered.snapshot.membership
        };
        let configs = recovered
            .log
            .iter()
            .filter_map(|entry| match &entry.payload {
                EntryPayload::Config(config) => Some((entry.index, config.membership)),
                _ => None,
            })
            .collect();
        let log = RaftLog::after(recovered.log_base, recovered.log);
        // Stamps never decrease along a log: the latest is the last
        // entry's, or the snapshot's when the log holds none after it.
        let latest_stamp = log
            .get(log.last_index())
            .map(|entry| entry.stamp)
            .into_iter()
            .chain([recovered.snapshot.stamp])
            .max_by_key(|stamp| stamp.time)
            .unwrap_or_default();
        let applied = recovered.applied_index;
        assert!(
            applied <= log.last_index(),
            "the state machine is never ahead of the durable log"
        );
        assert!(
            applied >= log.base().0 && applied >= recovered.snapshot.index,
            "the state machine holds every compacted entry"
        );
        RaftCore {
            id,
            role: Role::Follower,
            leader: None,
            votes: BTreeSet::new(),
            election: ElectionTimer::new(
                election_timeout_ticks,
                seed ^ id.wrapping_mul(0x9E37_79B9),
            ),
            bootstrap,
            base_membership,
            configs,
            adjusted_to: Default::default(),
            quiet: false,
            counted_as_voter: false,
            leaving: BTreeMap::new(),
            membership_bug: None,
            term: recovered.hard_state.term,
            voted_for: recovered.hard_state.voted_for,
            durable_index: log.last_index(),
            log,
            commit_index: applied,
            applied_index: applied,
            apply_emitted: applied,
            clock: ClusterClock::new(0, latest_stamp),
            leader_transfer: None,
            timeout_now_sent: false,
            snapshot: recovered.snapshot,
            reception: None,
            installing: None,
        }
    }

    /// Sets the session timeout this node's stamps enforce when it leads
    /// (0: sessions never expire).
    pub fn set_session_timeout(&mut self, ticks: u64) {
        self.clock.set_session_timeout(ticks);
    }

    /// The configuration in force: the latest in the log
    /// ([`crate::membership`]).
    pub fn membership(&self) -> Membership {
        self.configs
            .last_key_value()
            .map_or(self.base_membership, |(_, m)| *m)
    }

    /// The index of the entry that set the configuration in force (the
    /// snapshot's index when compacted, 0 for the initial member list).
    pub fn membership_index(&self) -> LogIndex {
        match self.configs.last_key_value() {
            Some((&index, _)) => index,
            None if self.base_membership == self.bootstrap => 0,
            None => self.snapshot.index,
        }
    }

    /// The configuration in force at `index` (at or after the log's base).
    pub fn membership_at(&self, index: LogIndex) -> Membership {
        self.configs
            .range(..=index)
            .next_back()
            .map_or(self.base_membership, |(_, m)| *m)
    }

    /// Whether this node was removed: the configuration in force is
    /// committed and does not hold it, and an earlier one it knows did. (A
    /// node that joins meets committed configurations without itself
    /// before the one that adds it: those do not count.)
    pub fn removed(&self) -> bool {
        let membership = self.membership();
        let index = self.membership_index();
        if membership.is_empty() || membership.contains(self.id) || index > self.commit_index {
            return false;
        }
        self.base_membership.contains(self.id)
            || self
                .configs
                .range(..index)
                .any(|(_, m)| m.contains(self.id))
    }

    /// Whether a configuration entry in the log is not committed yet.
    pub fn membership_change_pending(&self) -> bool {
        self.configs
            .last_key_value()
            .is_some_and(|(&index, _)| index > self.commit_index)
    }

    /// Whether this node votes in the configuration in force.
    pub fn is_voter(&self) -> bool {
        self.membership().is_voter(self.id)
    }

    /// Whether this node may stand for election: a voter, or a node counted
    /// as one ([`RaftCore::note_vote_request`]); never a node told it is not
    /// a voter of a later configuration, nor one whose removal committed.
    fn may_campaign(&self) -> bool {
        !self.quiet && (self.is_voter() || (self.counted_as_voter && !self.removed()))
    }

    /// A vote request (or pre-vote) reached this node. A candidate asks
    /// only the voters of its configuration, so if this node is not a voter
    /// in its own log (a learner, or a voter whose removal it holds
    /// uncommitted), some log differs from its own on its vote. If the
    /// candidate's log is also behind this node's, this node may be the
    /// only one that can win: voters behind it cannot win its vote, and a
    /// non-voter does not campaign. Two cases the simulator found, both in
    /// memory mode with a machine lost for good:
    /// - a leader replicated an entry only to a learner and was lost, while
    ///   a stale leader had appended the learner's promotion (seed
    ///   5910083992);
    /// - a leader appended a voter's removal, replicated it only to that
    ///   voter and was lost; the other voters, behind, needed its vote
    ///   (seed 5900013399).
    ///
    /// Nobody could be elected again. So this node may campaign, once per
    /// such request (the stuck candidate asks again at its every timeout),
    /// and not after a voter ahead of it said it is not one of its voters
    /// ([`RaftCore::told_not_a_voter`]): a campaign that cannot win raises
    /// the terms of the voters it reaches, which depose a healthy leader.
    /// Its votes are counted in its own configuration, like any
    /// candidate's, and once elected it hands leadership to a voter
    /// ([`RaftCore::non_voter_hands_over`]).
    pub fn note_vote_request(&mut self, m: &RequestVote) {
        let membership = self.membership();
        if !membership.is_empty()
            && !membership.is_voter(self.id)
            && !self
                .log
                .candidate_is_up_to_date(m.last_log_index, m.last_log_term)
            && self.membership_bug != Some(crate::membership::MembershipBug::NonVotersNeverCampaign)
        {
            self.counted_as_voter = true;
        }
    }

    /// As a leader that is not a voter of its configuration (counted as
    /// one, [`RaftCore::note_vote_request`]): starts handing leadership to
    /// `target`, a voter, unless a transfer is under way
    /// ([`RaftCore::begin_leader_transfer`]). Meanwhile it takes no client
    /// command and no membership change (a transfer is under way). Returns
    /// true when the transfer began.
    pub fn non_voter_hands_over(&mut self, target: NodeId, out: &mut Outbox) -> bool {
        if self.role != Role::Leader || self.is_voter() || self.leader_transfer.is_some() {
            return false;
        }
        if self.membership_bug == Some(crate::membership::MembershipBug::NonVoterLeadsOn) {
            return false;
        }
        self.begin_leader_transfer(target, out)
    }

    /// The members a leader replicates to, this node excepted: those of
    /// the configuration in force, and those of the committed one (a
    /// member being removed hears of its removal until it commits).
    pub fn peers(&self) -> Vec<NodeId> {
        self.replication_targets().iter().collect()
    }

    fn replication_targets(&self) -> NodeSet {
        let mut targets = self.configured_targets();
        for &id in self.leaving.keys() {
            targets.insert(id);
        }
        targets
    }

    /// The members of the configuration in force and of the committed one,
    /// this node excepted.
    fn configured_targets(&self) -> NodeSet {
        let mut targets = self
            .membership()
            .members()
            .union(self.membership_at(self.commit_index).members());
        targets.remove(self.id);
        targets
    }

    /// As leader, after every input: a member whose removal just committed
    /// stays a replication target until its log holds the removal (it then
    /// gets a farewell and learns it was removed), or until its log has not
    /// moved on for ten election timeouts (it may be down for good).
    /// `matches` gives the match index of each node of
    /// [`RaftCore::leaving_watch`].
    fn track_leaving(&mut self, ticked: bool, matches: &[(NodeId, LogIndex)]) {
        if self.role != Role::Leader {
            self.leaving.clear();
            return;
        }
        let match_of = |id: NodeId| {
            matches
                .iter()
                .find(|(peer, _)| *peer == id)
                .map_or(0, |(_, matched)| *matched)
        };
        let configured = self.configured_targets();
        let removal = self
            .configs
            .range(..=self.commit_index)
            .next_back()
            .map_or(self.snapshot.index, |(&index, _)| index);
        let patience = 10 * self.election.base_ticks();
        for id in self.adjusted_to.0.minus(configured).iter() {
            self.leaving
                .entry(id)
                .or_insert((removal, match_of(id), patience));
        }
        self.leaving.retain(|&id, (removal, seen, ticks_left)| {
            let matched = match_of(id);
            if matched > *seen {
                *seen = matched;
                *ticks_left = patience;
            } else if ticked {
                *ticks_left = ticks_left.saturating_sub(1);
            }
            !configured.contains(id) && *ticks_left > 0 && matched < *removal
        });
    }

    /// As leader: the nodes [`RaftCore::track_leaving`] needs the match
    /// index of: those leaving, and those that just left the configured
    /// targets (none, nearly always).
    fn leaving_watch(&self) -> NodeSet {
        if self.role != Role::Leader {
            return NodeSet::EMPTY;
        }
        let mut watched = self.adjusted_to.0.minus(self.configured_targets());
        for &id in self.leaving.keys() {
            watched.insert(id);
        }
        watched
    }

    /// The voters other than this node.
    pub fn voting_peers(&self) -> Vec<NodeId> {
        let mut voters = self.membership().voters;
        voters.remove(self.id);
        voters.iter().collect()
    }

    /// Votes or acknowledgements of voters a quorum needs, this node's
    /// included.
    pub fn majority(&self) -> usize {
        self.membership().majority()
    }

    /// Whether the voters among `nodes` (this node counted when `with_self`)
    /// make a quorum of the configuration in force.
    pub fn is_quorum(&self, nodes: impl IntoIterator<Item = NodeId>, with_self: bool) -> bool {
        let mut set = NodeSet::of(nodes.into_iter().filter(|&id| id != 0));
        if with_self {
            set.insert(self.id);
        }
        self.membership().is_quorum(set)
    }

    /// Records the configuration entries among `entries`, just appended.
    fn note_configs(&mut self, entries: &[Entry]) {
        for entry in entries {
            if let EntryPayload::Config(config) = &entry.payload {
                self.configs.insert(entry.index, config.membership);
            }
        }
    }

    /// Forgets the configuration entries from `index` on (truncated).
    fn forget_configs_from(&mut self, index: LogIndex) {
        self.configs.retain(|&i, _| i < index);
    }

    /// As leader: appends `change` to the configuration in force, if the
    /// rules of [`crate::membership`] allow it now; `matched` is the
    /// changed node's match index (a learner is promoted only once its log
    /// holds the configuration in force and is within
    /// [`crate::membership::PROMOTION_LAG_MAX`] entries of the commit
    /// index). Returns the entry's index. A leader that has committed no
    /// entry of its term yet appends an empty one (vanilla appends none on
    /// election) and asks to retry.
    pub fn propose_membership_change(
        &mut self,
        change: MembershipChange,
        address: String,
        matched: LogIndex,
        out: &mut Outbox,
    ) -> Result<LogIndex, MembershipError> {
        if self.role != Role::Leader {
            return Err(MembershipError::NotLeader {
                leader: self.leader,
            });
        }
        let next = self.membership().changed(change)?;
        if change == MembershipChange::Remove(self.id) {
            return Err(MembershipError::Invalid(format!(
                "node {} leads; hand leadership to another voter first (kvctl leader transfer)",
                self.id
            )));
        }
        if let MembershipChange::Promote(id) = change
            && (matched < self.membership_index()
                || matched + crate::membership::PROMOTION_LAG_MAX < self.commit_index)
        {
            return Err(MembershipError::Busy(format!(
                "learner {id} is not caught up yet (its log matches up to {matched}, the \
                 commit index is {})",
                self.commit_index
            )));
        }
        if self.leader_transfer.is_some() {
            return Err(MembershipError::Busy(
                "a leadership transfer is under way".into(),
            ));
        }
        let waits =
            self.membership_bug != Some(crate::membership::MembershipBug::ChangesWithoutWaiting);
        if waits && self.membership_change_pending() {
            return Err(MembershipError::Busy(
                "an earlier configuration change is not committed yet".into(),
            ));
        }
        if waits && self.log.term(self.commit_index) != Some(self.term) {
            if self.log.last_term() != self.term {
                self.append_as_leader(vec![EntryPayload::Noop], out);
            }
            return Err(MembershipError::Busy(
                "the leader has not committed an entry of its term yet".into(),
            ));
        }
        let config = ConfigEntry {
            membership: next,
            change,
            address,
        };
        Ok(self.append_as_leader(vec![EntryPayload::Config(config)], out))
    }

    /// As leader: whether the replication targets or the configuration
    /// changed since the variant last adjusted to them (then it adjusts:
    /// [`RaftVariant::on_membership_changed`]).
    fn membership_moved(&mut self) -> bool {
        let now = (self.replication_targets(), self.membership());
        let moved = now != self.adjusted_to;
        self.adjusted_to = now;
        moved && self.role == Role::Leader
    }

    /// A voter answered this node's vote request that it is not a voter of
    /// the configuration it holds as of `index`. If this node's own
    /// configuration is older, it stops campaigning (it stays a follower,
    /// and still votes) until it hears from a leader: a server removed
    /// that never learned it, which would otherwise raise its term at
    /// every timeout and, once added back, depose the leader with it.
    ///
    /// A node counted as a voter ([`RaftCore::note_vote_request`]) stops
    /// even when its own configuration is as late: a voter ahead of it
    /// holds a configuration without it, so its campaign is not what the
    /// cluster needs, and each one raised the term of voters behind it,
    /// which then deposed the leader (a removed node whose removal it held
    /// uncommitted, counted as a voter by a stale voter, kept a healthy
    /// cluster from serving: simulator seed 6100005819).
    pub fn told_not_a_voter(&mut self, index: LogIndex, out: &mut Outbox) {
        let ignores =
            self.membership_bug == Some(crate::membership::MembershipBug::CountedVoterCampaignsOn);
        let counted = self.counted_as_voter && !ignores;
        if self.quiet || (index <= self.membership_index() && !counted) {
            return;
        }
        self.quiet = true;
        self.counted_as_voter = false;
        self.stop_campaigning(out);
    }

    /// As leader: brings `progress` (the variant's record of each
    /// replication target) to the targets in force ([`RaftCore::peers`]):
    /// a target that left is sent a farewell ([`RaftCore::farewell`], with
    /// its match index by `match_of`) and forgotten, a new one gets
    /// `fresh()`. Returns the new targets.
    pub fn adjust_progress<P>(
        &self,
        progress: &mut BTreeMap<NodeId, P>,
        match_of: impl Fn(&P) -> LogIndex,
        fresh: impl Fn() -> P,
        out: &mut Outbox,
    ) -> Vec<NodeId> {
        let targets = self.peers();
        progress.retain(|&peer, p| {
            let stays = targets.contains(&peer);
            if !stays {
                self.farewell(peer, match_of(p), out);
            }
            stays
        });
        let mut added = Vec::new();
        for peer in targets {
            if let std::collections::btree_map::Entry::Vacant(slot) = progress.entry(peer) {
                slot.insert(fresh());
                added.push(peer);
            }
        }
        added
    }

    /// As leader: tells `peer`, no longer a replication target (its removal
    /// committed), the commit index, with an empty AppendEntries after
    /// `match_index`, so that it learns it was removed, if it holds the
    /// removal.
    pub fn farewell(&self, peer: NodeId, match_index: LogIndex, out: &mut Outbox) {
        let prev = match_index.clamp(self.log.base().0, self.log.last_index());
        let message = self.append_request(prev, Vec::new(), 0);
        out.send(peer, Message::AppendEntries(message), Timing::Now);
    }

    /// The term and vote, as stored.
    pub fn hard_state(&self) -> HardState {
        HardState {
            term: self.term,
            voted_for: self.voted_for,
        }
    }

    /// Figure 2, all servers: a message with term T > currentTerm sets
    /// currentTerm = T (and forgets the vote). Returns true if the term
    /// changed; the caller then converts to follower.
    pub fn observe_term(&mut self, term: Term, out: &mut Outbox) -> bool {
        if term <= self.term {
            return false;
        }
        self.term = term;
        self.voted_for = None;
        out.persist.push(Write::HardState(self.hard_state()));
        true
    }

    /// Figure 2, all servers: follows `leader` (if known) in `term`, as a
    /// follower, adopting the term when it is higher. Returns whether this
    /// node was the leader until now (the variant then drops its leader
    /// state and answers the requests it owed).
    pub fn become_follower(
        &mut self,
        term: Term,
        leader: Option<NodeId>,
        out: &mut Outbox,
    ) -> bool {
        let before = self.soft_state();
        self.observe_term(term, out);
        let was_leader = self.role == Role::Leader;
        self.role = Role::Follower;
        self.leader = leader;
        self.votes.clear();
        self.leader_transfer = None;
        if self.soft_state() != before {
            self.report(out);
        }
        was_leader
    }

    /// Its role, term and leader.
    pub fn soft_state(&self) -> SoftState {
        SoftState {
            role: self.role,
            term: self.term,
            leader: self.leader,
        }
    }

    /// Reports its role, term and leader in the outbox (they changed).
    fn report(&self, out: &mut Outbox) {
        out.soft_state = Some(self.soft_state());
    }

    /// Becomes a candidate (Figure 2, candidates): starts a new term voting
    /// for itself, resets the election timer, and asks every peer for its
    /// vote. The vote must be durable before any RequestVote leaves: a node
    /// that forgot its vote after a crash could vote twice in one term.
    /// Returns true when its own vote is already a majority.
    pub fn campaign(&mut self, out: &mut Outbox) -> bool {
        self.campaign_with(false, out)
    }

    /// As [`RaftCore::campaign`], on the leader's TimeoutNow: the vote
    /// requests say so, so voters that still hear from that leader vote.
    pub fn campaign_on_transfer(&mut self, out: &mut Outbox) -> bool {
        self.campaign_with(true, out)
    }

    fn campaign_with(&mut self, transfer: bool, out: &mut Outbox) -> bool {
        if !self.may_campaign() {
            // A learner or a node removed (unless counted as a voter), or a
            // node told it is not a voter: it does not campaign (and one
            // that did, and lost, follows again).
            self.election.reset();
            self.stop_campaigning(out);
            return false;
        }
        if !self.is_voter()
            && self.membership_bug
                != Some(crate::membership::MembershipBug::CountedVoterCampaignsOn)
        {
            // Counted as a voter: this campaign uses it up.
            self.counted_as_voter = false;
        }
        self.role = Role::Candidate;
        self.leader = None;
        self.votes = BTreeSet::from([self.id]);
        self.election.reset();
        self.term += 1;
        self.voted_for = Some(self.id);
        out.persist.push(Write::HardState(self.hard_state()));
        self.report(out);
        let request = RequestVote {
            transfer,
            ..self.vote_request(self.term, false)
        };
        for peer in self.voting_peers() {
            out.send(
                peer,
                Message::RequestVote(request.clone()),
                Timing::AfterPersist,
            );
        }
        self.has_majority_of_votes()
    }

    /// Becomes a pre-candidate (Raft thesis 9.6): asks every peer whether
    /// it would vote in the next term, changing nobody's state (its own
    /// term included). Returns true when its own answer is already a
    /// majority.
    pub fn pre_campaign(&mut self, out: &mut Outbox) -> bool {
        if !self.may_campaign() {
            self.election.reset();
            self.stop_campaigning(out);
            return false;
        }
        self.role = Role::PreCandidate;
        self.leader = None;
        self.votes = BTreeSet::from([self.id]);
        self.report(out);
        let request = self.vote_request(self.term + 1, true);
        for peer in self.voting_peers() {
            out.send(peer, Message::RequestVote(request.clone()), Timing::Now);
        }
        self.has_majority_of_votes()
    }

    /// A candidate (or pre-candidate) that may no longer campaign follows
    /// again, in its term, knowing no leader.
    fn stop_campaigning(&mut self, out: &mut Outbox) {
        if matches!(self.role, Role::Candidate | Role::PreCandidate) {
            self.role = Role::Follower;
            self.votes.clear();
            self.report(out);
        }
    }

    /// Counts a vote (or pre-vote) granted by `from`; true once a majority
    /// granted.
    pub fn count_vote(&mut self, from: NodeId) -> bool {
        self.votes.insert(from);
        self.has_majority_of_votes()
    }

    /// Figure 2, candidates: counts a vote granted in this term by
    /// `from`; true when it completes a majority (the candidate then
    /// becomes leader).
    pub fn wins_with(&mut self, from: NodeId, m: &RequestVoteResponse) -> bool {
        self.role == Role::Candidate
            && m.term == self.term
            && m.vote_granted
            && !m.pre_vote
            && self.count_vote(from)
    }

    fn has_majority_of_votes(&self) -> bool {
        self.is_quorum(self.votes.iter().copied(), false)
    }

    /// Becomes the leader of its term.
    pub fn become_leader(&mut self, out: &mut Outbox) {
        self.role = Role::Leader;
        self.leader = Some(self.id);
        self.counted_as_voter = false;
        self.votes.clear();
        self.leader_transfer = None;
        self.timeout_now_sent = false;
        // The variant builds its replication state from the configuration
        // in force now.
        self.adjusted_to = (self.replication_targets(), self.membership());
        self.report(out);
    }

    /// Starts handing leadership to `target` (Raft thesis 3.10): false,
    /// and nothing changes, unless this node leads and `target` is another
    /// member. The variant then brings the target's log up to this one;
    /// [`step`] reports its progress to [`RaftCore::leader_transfer_progress`]
    /// after every input. TimeoutNow waits until the whole log is
    /// committed, and only an entry of this term commits the entries before
    /// it, so a leader that has none (vanilla appends none on election)
    /// appends an empty one first: otherwise, on an idle cluster, the
    /// transfer waited for a client write.
    pub fn begin_leader_transfer(&mut self, target: NodeId, out: &mut Outbox) -> bool {
        if self.role != Role::Leader || target == self.id || !self.membership().is_voter(target) {
            return false;
        }
        if self.log.last_term() != self.term {
            self.append_as_leader(vec![EntryPayload::Noop], out);
        }
        self.leader_transfer = Some(LeaderTransfer {
            target,
            ticks_left: self.election.base_ticks(),
            sent: false,
        });
        true
    }

    /// The transfer under way, if any.
    pub fn leader_transfer(&self) -> Option<LeaderTransfer> {
        self.leader_transfer
    }

    /// `peer`'s log matches this leader's up to `match_index`: once that is
    /// the whole log, committed, and `peer` is the transfer's target,
    /// TimeoutNow goes to it (once), with the commit index.
    pub fn leader_transfer_progress(
        &mut self,
        peer: NodeId,
        match_index: LogIndex,
        out: &mut Outbox,
    ) {
        let last = self.log.last_index();
        let committed = self.commit_index >= last;
        let Some(transfer) = self.leader_transfer.as_mut() else {
            return;
        };
        if transfer.target != peer || transfer.sent || match_index < last || !committed {
            return;
        }
        transfer.sent = true;
        self.timeout_now_sent = true;
        let message = crate::message::TimeoutNow {
            term: self.term,
            leader_id: self.id,
            leader_commit: self.commit_index,
        };
        out.send(peer, Message::TimeoutNow(message), Timing::Now);
    }

    /// One tick of a transfer: after an election timeout it is given up.
    /// True when TimeoutNow had gone out: then this leader steps down
    /// rather than lead on. Its TimeoutNow, delivered late, may still elect
    /// the target, which must find no entry appended since (it could not
    /// commit one of this term by itself: vanilla appends nothing of its
    /// own on election; simulator seed 4100022345).
    fn tick_leader_transfer(&mut self) -> bool {
        let Some(transfer) = self.leader_transfer.as_mut() else {
            return false;
        };
        transfer.ticks_left = transfer.ticks_left.saturating_sub(1);
        if transfer.ticks_left > 0 {
            return false;
        }
        self.leader_transfer = None;
        self.timeout_now_sent
    }

    /// Whether a TimeoutNow from `from` is to be obeyed: it comes from the
    /// leader this follower follows, in its term. Then the follower commits
    /// what the leader had committed: the leader sent it only once this
    /// follower's log matched its whole log.
    pub fn obeys_timeout_now(&mut self, from: NodeId, m: &crate::message::TimeoutNow) -> bool {
        let obeys = self.role == Role::Follower && m.term == self.term && self.leader == Some(from);
        if obeys {
            self.commit_to(m.leader_commit.min(self.log.last_index()));
        }
        obeys
    }

    /// The answer to a client request that needs the leader, from a node
    /// that does not lead: the leader it knows, or, knowing none,
    /// unavailable for now (a leader is likely being elected).
    pub fn not_leader(&self) -> ReplyOutcome {
        match self.leader {
            Some(leader) => ReplyOutcome::NotLeader {
                leader: Some(leader),
            },
            None => ReplyOutcome::Unavailable,
        }
    }

    /// Figure 2, the leader's AppendEntries: `entries` after
    /// `prev_log_index` (which must be in its log), its term and its
    /// commit index.
    pub fn append_request(
        &self,
        prev_log_index: LogIndex,
        entries: Vec<Entry>,
        context: u64,
    ) -> AppendEntries {
        let Some(prev_log_term) = self.log.term(prev_log_index) else {
            unreachable!("a leader only sends from within its log");
        };
        AppendEntries {
            term: self.term,
            leader_id: self.id,
            prev_log_index,
            prev_log_term,
            entries,
            leader_commit: self.commit_index,
            context,
        }
    }

    /// Figure 2, AppendEntries receiver, step 1: refuses an AppendEntries of
    /// an older term, at once, with this node's term.
    ///
    /// The refusal echoes no context: it carries this node's term, and the
    /// leader of that term would take the context for an answer to a
    /// heartbeat round of its own. Soak seed 8100003341 (raft-optimized,
    /// ReadIndex without check-quorum): a node led term 1, crashed, and led
    /// term 2 with its round numbers started again from 1; a late
    /// AppendEntries of its term-1 rounds was refused by a follower already
    /// in term 2 with context 38, which confirmed the new leader's rounds
    /// up to 38 without a majority, and a read in a minority partition
    /// missed a write committed by the majority's leader of term 3.
    pub fn refuse_stale_append(&self, from: NodeId, m: &AppendEntries, out: &mut Outbox) {
        debug_assert!(m.term < self.term);
        let response = AppendEntriesResponse {
            term: self.term,
            success: false,
            match_index: 0,
            conflict_index: m.prev_log_index,
            conflict_term: 0,
            context: 0,
        };
        out.send(from, Message::AppendEntriesResponse(response), Timing::Now);
    }

    /// Figure 2, AppendEntries receiver, steps 2 to 5, for the current
    /// term's leader `from` (whom the caller already follows): resets the
    /// election timer, checks and appends (see
    /// [`RaftCore::append_entries`]), and answers once what it appended is
    /// durable (the answer promises it), with `hints` on a rejection.
    pub fn accept_append(
        &mut self,
        from: NodeId,
        m: &AppendEntries,
        hints: ConflictHints,
        out: &mut Outbox,
    ) {
        debug_assert!(m.term == self.term && self.role == Role::Follower);
        self.election.reset();
        self.quiet = false;
        self.counted_as_voter = false;
        let (success, match_index, conflict_index, conflict_term) =
            match self.append_entries(m, out) {
                Ok(match_index) => (true, match_index, 0, 0),
                Err(conflict) => match hints {
                    ConflictHints::RejectedIndex => (false, 0, conflict.rejected_prev, 0),
                    ConflictHints::TermAndFirstIndex => {
                        (false, 0, conflict.hint_index, conflict.hint_term)
                    }
                },
            };
        let response = AppendEntriesResponse {
            term: self.term,
            success,
            match_index,
            conflict_index,
            conflict_term,
            context: m.context,
        };
        out.send(
            from,
            Message::AppendEntriesResponse(response),
            Timing::AfterPersist,
        );
    }

    /// A RequestVote for `term` describing this node's log.
    pub fn vote_request(&self, term: Term, pre_vote: bool) -> RequestVote {
        RequestVote {
            term,
            candidate_id: self.id,
            last_log_index: self.log.last_index(),
            last_log_term: self.log.last_term(),
            pre_vote,
            transfer: false,
        }
    }

    /// Figure 2, RequestVote receiver: grants when the request is of the
    /// current term, this node has not voted for another candidate in it,
    /// and the candidate's log is at least as up to date (section 5.4.1).
    /// A grant is recorded and persisted; the answer must wait for it.
    pub fn decide_vote(&mut self, m: &RequestVote, out: &mut Outbox) -> bool {
        let can_vote = self.voted_for.is_none_or(|v| v == m.candidate_id);
        let granted = m.term == self.term
            && can_vote
            && self
                .log
                .candidate_is_up_to_date(m.last_log_index, m.last_log_term);
        if granted && self.voted_for.is_none() {
            self.voted_for = Some(m.candidate_id);
            out.persist.push(Write::HardState(self.hard_state()));
        }
        granted
    }

    /// [`RaftCore::decide_vote`], answered to `from`: the answer leaves
    /// only once a granted vote is durable, since the candidate counts it.
    /// Granting resets the election timer (Figure 2: a follower that grants
    /// a vote does not time out). Returns whether the vote was granted.
    pub fn answer_vote(&mut self, from: NodeId, m: &RequestVote, out: &mut Outbox) -> bool {
        let granted = self.decide_vote(m, out);
        if granted {
            self.election.reset();
        }
        let response = RequestVoteResponse {
            term: self.term,
            vote_granted: granted,
            pre_vote: false,
            not_a_voter_at: 0,
        };
        out.send(
            from,
            Message::RequestVoteResponse(response),
            Timing::AfterPersist,
        );
        granted
    }

    /// Whether this node would grant a pre-vote for `m` (Raft thesis 9.6):
    /// the same log check, for a term above its own, changing nothing.
    pub fn would_grant_pre_vote(&self, m: &RequestVote) -> bool {
        m.term > self.term
            && self
                .log
                .candidate_is_up_to_date(m.last_log_index, m.last_log_term)
    }

    /// Figure 2, AppendEntries receiver, steps 2 to 5, for a message of the
    /// current term: checks `prev_log_index`/`prev_log_term`, deletes a
    /// conflicting suffix, appends what is new (one durable write), and
    /// advances the commit index. Returns the index up to which this node's
    /// log now agrees with the leader's, or the conflict.
    pub fn append_entries(
        &mut self,
        m: &AppendEntries,
        out: &mut Outbox,
    ) -> Result<LogIndex, Conflict> {
        debug_assert_eq!(m.term, self.term);
        let base = self.log.base().0;
        if m.prev_log_index < base {
            // This node compacted past `prev_log_index`: entries up to its
            // base are committed, so they match the leader's; only those
            // after it are new.
            let skip = (base - m.prev_log_index) as usize;
            let trimmed = AppendEntries {
                prev_log_index: base,
                prev_log_term: self.log.base().1,
                entries: m.entries.get(skip..).unwrap_or(&[]).to_vec(),
                ..m.clone()
            };
            if let Some(at_base) = m.entries.get(skip.wrapping_sub(1)) {
                debug_assert_eq!(
                    at_base.term, trimmed.prev_log_term,
                    "committed entries differ"
                );
            }
            let end = m.prev_log_index + m.entries.len() as LogIndex;
            return self
                .append_entries(&trimmed, out)
                .map(|matched| matched.max(end));
        }
        if self.log.term(m.prev_log_index) != Some(m.prev_log_term) {
            let conflict = match self.log.term(m.prev_log_index) {
                None => Conflict {
                    rejected_prev: m.prev_log_index,
                    hint_index: self.log.last_index() + 1,
                    hint_term: 0,
                },
                Some(term) => Conflict {
                    rejected_prev: m.prev_log_index,
                    hint_index: self.log.first_index_of_term_at(m.prev_log_index),
                    hint_term: term,
                },
            };
            return Err(conflict);
        }
        let mut new_entries = Vec::new();
        for entry in &m.entries {
            match self.log.term(entry.index) {
                Some(term) if term == entry.term => continue,
                Some(_) => {
                    // "If an existing entry conflicts with a new one, delete
                    // the existing entry and all that follow it."
                    assert!(
                        entry.index > self.commit_index,
                        "a committed entry is never overwritten"
                    );
                    self.log.truncate_from(entry.index);
                    self.forget_configs_from(entry.index);
                    self.durable_index = self.durable_index.min(entry.index - 1);
                    out.persist.push(Write::TruncateLog { from: entry.index });
                }
                None => {}
            }
            self.clock.observe(entry.stamp);
            self.log.push(entry.clone());
            new_entries.push(entry.clone());
        }
        if !new_entries.is_empty() {
            self.note_configs(&new_entries);
            out.persist.push(Write::AppendLog(new_entries));
        }
        let match_index = m.prev_log_index + m.entries.len() as LogIndex;
        // "If leaderCommit > commitIndex, set commitIndex =
        // min(leaderCommit, index of last new entry)."
        if m.leader_commit > self.commit_index {
            self.commit_index = m.leader_commit.min(match_index).max(self.commit_index);
        }
        Ok(match_index)
    }

    /// Appends new entries of the current term as leader, in one durable
    /// write. Returns the index of the last one.
    pub fn append_as_leader(&mut self, payloads: Vec<EntryPayload>, out: &mut Outbox) -> LogIndex {
        let mut entries = Vec::with_capacity(payloads.len());
        for payload in payloads {
            let entry = Entry {
                term: self.term,
                index: self.log.last_index() + 1,
                stamp: self.clock.stamp(),
                payload,
            };
            self.log.push(entry.clone());
            entries.push(entry);
        }
        if !entries.is_empty() {
            self.note_configs(&entries);
            out.persist.push(Write::AppendLog(entries));
        }
        self.log.last_index()
    }

    /// Learns that the durable log ends at (`last_index`, `last_term`).
    pub fn persisted(&mut self, last_index: LogIndex, last_term: Term) {
        if self.log.term(last_index) == Some(last_term) {
            self.durable_index = self.durable_index.max(last_index);
        }
    }

    /// Figure 2, leaders: the highest index a majority of the voters of the
    /// configuration in force holds (`match_of` each peer's match index,
    /// this node counted with its durable log) whose entry is of the
    /// current term, or `None` when that is not past the commit index.
    pub fn quorum_commit(&self, match_of: impl Fn(NodeId) -> LogIndex) -> Option<LogIndex> {
        let index = self.membership().quorum_index(|id| {
            if id == self.id {
                self.durable_index
            } else {
                match_of(id)
            }
        });
        (index > self.commit_index && self.log.term(index) == Some(self.term)).then_some(index)
    }

    /// Raises the commit index (never lowers it).
    pub fn commit_to(&mut self, index: LogIndex) {
        debug_assert!(index <= self.log.last_index());
        self.commit_index = self.commit_index.max(index);
    }

    /// Hands committed entries that are durable here to the runtime, in
    /// order; returns how many. None while a snapshot is being installed.
    pub fn emit_applies(&mut self, out: &mut Outbox) -> usize {
        if self.installing.is_some() {
            return 0;
        }
        let upto = self.commit_index.min(self.durable_index);
        let mut emitted = 0;
        while self.apply_emitted < upto {
            self.apply_emitted += 1;
            let Some(entry) = self.log.get(self.apply_emitted) else {
                unreachable!("committed entries are in the log");
            };
            out.apply.push(entry.clone());
            emitted += 1;
        }
        emitted
    }

    /// The runtime applied everything up to `index`.
    pub fn applied(&mut self, index: LogIndex) {
        debug_assert!(index <= self.apply_emitted);
        self.applied_index = self.applied_index.max(index);
    }

    /// The runtime captured the state machine at `snapshot` (it stands
    /// there: every entry up to it was applied): records it and drops the
    /// log through `keep_entries` before it, durably.
    pub fn snapshot_taken(
        &mut self,
        mut snapshot: SnapshotMeta,
        keep_entries: u64,
        out: &mut Outbox,
    ) {
        snapshot.membership = self.membership_at(snapshot.index);
        assert!(
            snapshot.index <= self.applied_index,
            "a snapshot holds only applied entries"
        );
        debug_assert_eq!(self.log.term(snapshot.index), Some(snapshot.term));
        if snapshot.index <= self.snapshot.index {
            return;
        }
        self.snapshot = snapshot;
        let through = snapshot
            .index
            .saturating_sub(keep_entries)
            .max(self.log.base().0);
        let base_membership = self.membership_at(through);
        self.log.compact_through(through);
        let (through, through_term) = self.log.base();
        self.base_membership = base_membership;
        self.configs.retain(|&i, _| i > through);
        out.persist.push(Write::CompactLog {
            snapshot,
            through,
            through_term,
        });
    }

    /// Whether a follower whose next entry is `next_index` must be sent a
    /// snapshot: the entry before it was compacted away.
    pub fn needs_snapshot(&self, next_index: LogIndex) -> bool {
        next_index <= self.log.base().0
    }

    /// Asks the runtime to send the chunk `transfer` has in flight to `to`.
    pub fn send_chunk(&self, to: NodeId, transfer: &Transfer, out: &mut Outbox) {
        out.snapshot_chunks
            .push(transfer.request(to, self.term, self.id));
    }

    /// Starts sending the latest snapshot to `to`.
    pub fn start_transfer(&self, to: NodeId, out: &mut Outbox) -> Transfer {
        let transfer = Transfer::new(self.snapshot);
        self.send_chunk(to, &transfer, out);
        transfer
    }

    /// As leader: counts a tick of a transfer to `to`, sending its chunk
    /// again when the answer is late (`timeout_ticks`).
    pub fn tick_transfer(
        &self,
        to: NodeId,
        transfer: &mut Transfer,
        timeout_ticks: u64,
        out: &mut Outbox,
    ) {
        if transfer.tick(timeout_ticks, self.snapshot) {
            self.send_chunk(to, transfer, out);
        }
    }

    /// As leader of `m.term`: takes `from`'s answer to a chunk of
    /// `transfer`, sending the next chunk when it asks for one. Returns the
    /// index its log now matches up to when it installed the snapshot.
    pub fn snapshot_answered(
        &self,
        from: NodeId,
        transfer: &mut Transfer,
        m: &InstallSnapshotResponse,
        out: &mut Outbox,
    ) -> Option<LogIndex> {
        if self.role != Role::Leader || m.term != self.term {
            return None;
        }
        match transfer.answered(m) {
            TransferStep::Ignore => None,
            TransferStep::Send => {
                self.send_chunk(from, transfer, out);
                None
            }
            TransferStep::Installed(index) => Some(index),
        }
    }

    /// Figure 13, InstallSnapshot receiver, for a chunk from the current
    /// term's leader `from` (whom the caller already follows): chunks are
    /// staged in order, the last switches the state machine (atomically,
    /// see [`Write::InstallSnapshot`]), and the log keeps what follows the
    /// snapshot only if it held the snapshot's last entry. Answers once
    /// what the chunk wrote is durable.
    pub fn accept_snapshot(&mut self, from: NodeId, m: InstallSnapshot, out: &mut Outbox) {
        debug_assert!(m.term == self.term && self.role == Role::Follower);
        self.election.reset();
        self.quiet = false;
        self.counted_as_voter = false;
        let answer = |next: Vec<u8>, rejected: bool, installed: bool| InstallSnapshotResponse {
            term: m.term,
            snapshot: m.snapshot,
            next,
            rejected,
            installed,
        };
        if self.installing.is_some() {
            // The answer to the install in progress goes when it is
            // durable; the leader sends again if it is lost.
            return;
        }
        if m.snapshot.index <= self.commit_index {
            // Committed here already: the log matches up to it, durably
            // once every write issued so far is.
            let response = answer(m.position.clone(), false, true);
            out.send(
                from,
                Message::InstallSnapshotResponse(response),
                Timing::AfterPersist,
            );
            return;
        }
        let expected = match &self.reception {
            Some(r) if r.term == m.term && r.snapshot == m.snapshot => r.next.clone(),
            _ => Vec::new(),
        };
        if m.position != expected {
            let response = answer(expected, true, false);
            out.send(
                from,
                Message::InstallSnapshotResponse(response),
                Timing::Now,
            );
            return;
        }
        out.persist.push(Write::SnapshotChunk {
            snapshot: m.snapshot,
            first: m.position.is_empty(),
            items: m.items,
        });
        if !m.done {
            self.reception = Some(Reception {
                term: m.term,
                snapshot: m.snapshot,
                next: m.next.clone(),
            });
            let response = answer(m.next, false, false);
            out.send(
                from,
                Message::InstallSnapshotResponse(response),
                Timing::AfterPersist,
            );
            return;
        }
        self.reception = None;
        let snapshot = m.snapshot;
        out.persist.push(Write::InstallSnapshot { snapshot });
        let kept = self.log.reset_to((snapshot.index, snapshot.term));
        self.base_membership = match snapshot.membership {
            known if !known.is_empty() => known,
            // A snapshot that records none: the log's, if it held the
            // snapshot's last entry, else the initial member list.
            _ if kept => self.membership_at(snapshot.index),
            _ => self.bootstrap,
        };
        if kept {
            self.configs.retain(|&i, _| i > snapshot.index);
        } else {
            // The log after the snapshot does not follow from it.
            out.persist.push(Write::TruncateLog {
                from: snapshot.index + 1,
            });
            self.durable_index = self.durable_index.min(snapshot.index);
            self.configs.clear();
        }
        self.commit_index = self.commit_index.max(snapshot.index);
        self.installing = Some(snapshot);
        let response = answer(m.next, false, true);
        out.send(
            from,
            Message::InstallSnapshotResponse(response),
            Timing::AfterPersist,
        );
    }

    /// The runtime switched the state machine to `snapshot`: entries after
    /// it may be applied.
    pub fn snapshot_installed(&mut self, snapshot: SnapshotMeta) {
        if self.installing == Some(snapshot) {
            self.installing = None;
        }
        self.snapshot = self.snapshot.max(snapshot);
        self.clock.observe(snapshot.stamp);
        self.applied_index = self.applied_index.max(snapshot.index);
        self.apply_emitted = self.apply_emitted.max(snapshot.index);
        self.durable_index = self.durable_index.max(snapshot.index);
    }

    /// The node's status.
    pub fn status(&self) -> Status {
        Status {
            id: self.id,
            role: self.role,
            term: self.term,
            leader: self.leader,
            commit_index: self.commit_index,
            applied_index: self.applied_index,
            last_log_index: self.log.last_index(),
            snapshot_index: self.snapshot.index,
            first_log_index: self.log.first_index(),
            cluster_time: self.clock.now(),
            membership: self.membership(),
            membership_index: self.membership_index(),
            removed: self.removed(),
            leader_transfer: self.leader_transfer.map(|t| t.target),
        }
    }
}

/// A randomized election timeout (section 5.2): each timeout is drawn from
/// `[base, 2 * base)` ticks.
#[derive(Clone, Debug)]
pub struct ElectionTimer {
    rng: DetRng,
    base_ticks: u64,
    /// Ticks since the timer was last reset.
    pub elapsed_ticks: u64,
    timeout_ticks: u64,
}

impl ElectionTimer {
    /// A timer with base timeout `base_ticks`, drawing from `seed`.
    pub fn new(base_ticks: u64, seed: u64) -> Self {
        let mut rng = DetRng::new(seed);
        let timeout_ticks = rng.range(base_ticks, 2 * base_ticks);
        ElectionTimer {
            rng,
            base_ticks,
            elapsed_ticks: 0,
            timeout_ticks,
        }
    }

    /// The base timeout, in ticks.
    pub fn base_ticks(&self) -> u64 {
        self.base_ticks
    }

    /// Starts a new timeout.
    pub fn reset(&mut self) {
        self.elapsed_ticks = 0;
        self.timeout_ticks = self.rng.range(self.base_ticks, 2 * self.base_ticks);
    }

    /// Counts a tick; true when the timeout has passed.
    pub fn tick(&mut self) -> bool {
        self.elapsed_ticks += 1;
        self.elapsed_ticks >= self.timeout_ticks
    }
}

/// A Raft variant's handlers, which [`step`] routes its inputs to: the
/// shape of `Consensus::step` that every variant shares, written once.
pub trait RaftVariant {
    /// The variant's name, for the refusal of a fast-path write.
    const NAME: &'static str;

    /// Its core.
    fn core(&self) -> &RaftCore;

    /// Its core, to change.
    fn core_mut(&mut self) -> &mut RaftCore;

    /// As leader: the highest index known to match on `peer` (0: unknown).
    fn match_index_of(&self, peer: NodeId) -> LogIndex;

    /// Whether a message of a higher term makes this node adopt the term
    /// (and follow) before the message is handled (Figure 2, all servers).
    /// Variants with pre-vote or check-quorum handle some first.
    fn adopts_term_first(&self, message: &Message) -> bool {
        let _ = message;
        true
    }

    /// Follows `leader` in `term`, dropping any leader state.
    fn become_follower(&mut self, term: Term, leader: Option<NodeId>, out: &mut Outbox);
    /// One tick passed.
    fn on_tick(&mut self, out: &mut Outbox);
    /// A client request arrived.
    fn on_request(&mut self, request: crate::types::ClientRequest, out: &mut Outbox);
    /// The log is durable up to (`last_index`, `last_term`).
    fn on_persisted(&mut self, last_index: LogIndex, last_term: Term, out: &mut Outbox);
    /// The state machine applied up to `index`.
    fn on_applied(&mut self, index: LogIndex, out: &mut Outbox);
    /// An AppendEntries from `from`, the leader of this node's term, whom
    /// it now follows ([`step`] refused an older term's and made the node
    /// follow).
    fn on_append(&mut self, from: NodeId, m: AppendEntries, out: &mut Outbox);
    /// An answer to an AppendEntries.
    fn on_append_response(&mut self, from: NodeId, m: AppendEntriesResponse, out: &mut Outbox);
    /// A RequestVote (or pre-vote).
    fn on_vote_request(&mut self, from: NodeId, m: RequestVote, out: &mut Outbox);
    /// An answer to a RequestVote (or pre-vote).
    fn on_vote_response(&mut self, from: NodeId, m: RequestVoteResponse, out: &mut Outbox);
    /// A chunk of a snapshot from `from`, the leader of this node's term,
    /// whom it now follows (as [`RaftVariant::on_append`]).
    fn on_install_snapshot(&mut self, from: NodeId, m: InstallSnapshot, out: &mut Outbox);
    /// A leadership transfer to `target` began
    /// ([`crate::io::Input::TransferLeadership`]): send it what it lacks.
    fn on_transfer_begun(&mut self, target: NodeId, out: &mut Outbox);
    /// The leader's TimeoutNow, to be obeyed ([`RaftCore::obeys_timeout_now`]):
    /// campaign at once ([`RaftCore::campaign_on_transfer`]).
    fn on_timeout_now(&mut self, out: &mut Outbox);
    /// As leader: the configuration in force or the replication targets
    /// ([`RaftCore::peers`]) changed. The variant starts replicating to new
    /// targets, sends a farewell ([`RaftCore::farewell`]) to those that
    /// left and forgets them, and checks what commits under the new quorum.
    fn on_membership_changed(&mut self, out: &mut Outbox);
    /// An answer to a chunk of a snapshot.
    fn on_snapshot_response(&mut self, from: NodeId, m: InstallSnapshotResponse, out: &mut Outbox);
    /// The runtime took a snapshot (see [`RaftCore::snapshot_taken`]).
    fn on_snapshot_taken(&mut self, snapshot: SnapshotMeta, keep_entries: u64, out: &mut Outbox);
    /// The runtime installed a snapshot (see
    /// [`RaftCore::snapshot_installed`]); entries after it may be applied.
    fn on_snapshot_installed(&mut self, snapshot: SnapshotMeta, out: &mut Outbox);
}

/// Every Raft variant is a protocol: [`step`] routes its inputs, its core
/// says its status.
impl<V: RaftVariant> crate::Consensus for V {
    fn step(&mut self, input: crate::io::Input, out: &mut Outbox) {
        step(self, input, out);
    }

    fn status(&self) -> Status {
        self.core().status()
    }

    fn set_session_timeout(&mut self, ticks: u64) {
        self.core_mut().set_session_timeout(ticks);
    }

    fn follower_matches(&self) -> Vec<(NodeId, LogIndex)> {
        if self.core().role != Role::Leader {
            return Vec::new();
        }
        self.core()
            .peers()
            .into_iter()
            .map(|peer| (peer, self.match_index_of(peer)))
            .collect()
    }
}

/// Routes `input` to `variant`'s handlers: a fast-path write is refused (no
/// plain Raft variant has the fast path); a message of a higher term first
/// makes the node adopt it, where the variant says so; an AppendEntries of
/// an older term is refused, and one of this term makes the node follow its
/// sender (Figure 2, AppendEntries receiver, step 1, and all servers);
/// Nil-ext's messages are left to the layer above, if any.
pub fn step<V: RaftVariant>(variant: &mut V, input: crate::io::Input, out: &mut Outbox) {
    let ticked = matches!(input, crate::io::Input::Tick);
    step_input(variant, input, out);
    // Members whose removal committed (rarely any): their match indexes.
    let matches: Vec<(NodeId, LogIndex)> = variant
        .core()
        .leaving_watch()
        .iter()
        .map(|id| (id, variant.match_index_of(id)))
        .collect();
    variant.core_mut().track_leaving(ticked, &matches);
    // A leader adjusts to a configuration that changed (appended,
    // truncated, or committed: replication targets and quorums).
    if variant.core_mut().membership_moved() {
        variant.on_membership_changed(out);
    }
    // A leader that is not a voter (counted as one) hands leadership to a
    // voter.
    if variant.core().role == Role::Leader
        && !variant.core().is_voter()
        && let Some(target) = most_up_to_date_voter(variant)
        && variant.core_mut().non_voter_hands_over(target, out)
    {
        variant.on_transfer_begun(target, out);
    }
    // A leadership transfer goes on with whatever the input changed (the
    // target's match index, the commit index).
    if let Some(transfer) = variant.core().leader_transfer()
        && !transfer.sent
    {
        let matched = variant.match_index_of(transfer.target);
        variant
            .core_mut()
            .leader_transfer_progress(transfer.target, matched, out);
    }
}

/// The voter, this node excepted, whose log matches the leader's the most.
fn most_up_to_date_voter<V: RaftVariant>(variant: &V) -> Option<NodeId> {
    variant
        .core()
        .voting_peers()
        .into_iter()
        .max_by_key(|&peer| variant.match_index_of(peer))
}

fn step_input<V: RaftVariant>(variant: &mut V, input: crate::io::Input, out: &mut Outbox) {
    use crate::io::Input;
    match input {
        Input::Tick => {
            let core = variant.core_mut();
            let mut step_down = false;
            if core.role == Role::Leader {
                core.clock.tick();
                step_down = core.tick_leader_transfer();
            }
            if step_down {
                let term = core.term;
                variant.become_follower(term, None, out);
            }
            variant.on_tick(out);
        }
        Input::TransferLeadership { to } => {
            // Named, or the follower whose log matches the most.
            if let Some(target) = to.or_else(|| most_up_to_date_voter(variant))
                && variant.core_mut().begin_leader_transfer(target, out)
            {
                variant.on_transfer_begun(target, out);
            }
        }
        Input::Request(request) => variant.on_request(request, out),
        Input::ChangeMembership { change, address } => {
            let matched = variant.match_index_of(change.node());
            let result = variant
                .core_mut()
                .propose_membership_change(change, address, matched, out);
            out.membership_change = Some(result);
        }
        Input::FastWrite(request) => {
            let reason = format!(
                "{} has no nilext fast path; send the write to the leader",
                V::NAME
            );
            out.reply_fast(request.id, ReplyOutcome::Rejected(reason), Timing::Now);
        }
        Input::Persisted {
            last_index,
            last_term,
        } => variant.on_persisted(last_index, last_term, out),
        Input::Applied { index } => variant.on_applied(index, out),
        Input::SnapshotTaken {
            snapshot,
            keep_entries,
        } => variant.on_snapshot_taken(snapshot, keep_entries, out),
        Input::SnapshotInstalled { snapshot, .. } => variant.on_snapshot_installed(snapshot, out),
        Input::Message { from, message } => {
            let core = variant.core();
            let membership = core.membership();
            if let Message::RequestVote(m) = &message
                && !membership.is_empty()
                && !membership.is_voter(from)
                && (m.last_log_term, m.last_log_index)
                    < (core.log.last_term(), core.log.last_index())
            {
                // Not a voter here, and behind this node's log (the vote
                // would be refused anyway): a server removed that never
                // learned it (the entry removing it is after its log's
                // end), whose campaign must not raise terms here. It is
                // told, so that it stops campaigning. A candidate ahead of
                // this log is judged as any other: it may hold a later
                // configuration in which it votes (refusing it left a
                // cluster whose two up-to-date voters could not win the
                // votes of two voters behind them: soak seed 5100031168).
                let core = variant.core();
                let response = RequestVoteResponse {
                    term: core.term,
                    vote_granted: false,
                    pre_vote: m.pre_vote,
                    not_a_voter_at: core.membership_index().max(1),
                };
                out.send(from, Message::RequestVoteResponse(response), Timing::Now);
                return;
            }
            if let Message::RequestVoteResponse(m) = &message
                && m.not_a_voter_at != 0
            {
                variant.core_mut().told_not_a_voter(m.not_a_voter_at, out);
                return;
            }
            if message.term() > variant.core().term && variant.adopts_term_first(&message) {
                variant.become_follower(message.term(), message.leader_hint(), out);
            }
            if let Message::RequestVote(m) = &message {
                variant.core_mut().note_vote_request(m);
            }
            match message {
                Message::AppendEntries(m) => {
                    let core = variant.core();
                    if m.term < core.term {
                        core.refuse_stale_append(from, &m, out);
                        return;
                    }
                    follow_leader_of_term(variant, m.term, m.leader_id, out);
                    variant.on_append(from, m, out);
                }
                Message::InstallSnapshot(m) => {
                    let core = variant.core();
                    if m.term < core.term {
                        // Refused as a stale AppendEntries is: the answer
                        // carries this node's term.
                        let response = InstallSnapshotResponse {
                            term: core.term,
                            snapshot: m.snapshot,
                            next: Vec::new(),
                            rejected: true,
                            installed: false,
                        };
                        out.send(
                            from,
                            Message::InstallSnapshotResponse(response),
                            Timing::Now,
                        );
                        return;
                    }
                    follow_leader_of_term(variant, m.term, m.leader_id, out);
                    variant.on_install_snapshot(from, m, out);
                }
                Message::InstallSnapshotResponse(m) => variant.on_snapshot_response(from, m, out),
                Message::AppendEntriesResponse(m) => variant.on_append_response(from, m, out),
                Message::RequestVote(m) => variant.on_vote_request(from, m, out),
                Message::RequestVoteResponse(m) => variant.on_vote_response(from, m, out),
                Message::TimeoutNow(m) => {
                    let core = variant.core_mut();
                    if core.obeys_timeout_now(from, &m) {
                        core.emit_applies(out);
                        variant.on_timeout_now(out);
                    }
                }
                Message::DurabilityLogRequest(_)
                | Message::DurabilityLogResponse(_)
                | Message::DurabilityForward(_) => {}
            }
        }
    }
}

/// A message of this node's term from `leader`, who leads it (only a
/// leader sends AppendEntries and InstallSnapshot): the node follows it.
fn follow_leader_of_term<V: RaftVariant>(
    variant: &mut V,
    term: Term,
    leader: NodeId,
    out: &mut Outbox,
) {
    let core = variant.core();
    debug_assert!(
        core.role != Role::Leader,
        "two leaders in term {}",
        core.term
    );
    if core.role != Role::Follower || core.leader != Some(leader) {
        variant.become_follower(term, Some(leader), out);
    }
}

/// The client requests a leader appended to its log and has not applied
/// yet, by index: it answers them as it applies them, and, should it lose
/// its leadership first, answers each "not leader" (the entry may still
/// commit under the next leader; the client retries there under the same
/// request id, and its session makes the retry take effect once).
#[derive(Clone, Debug, Default)]
pub struct PendingRequests(BTreeMap<LogIndex, RequestId>);

impl PendingRequests {
    /// Remembers that the entry at `index` carries request `id`.
    pub fn insert(&mut self, index: LogIndex, id: RequestId) {
        self.0.insert(index, id);
    }

    /// Forgets the requests of entries handed to the runtime for apply
    /// (the runtime answers them with their results).
    pub fn applying(&mut self, entries: &[Entry]) {
        for entry in entries {
            self.0.remove(&entry.index);
        }
    }

    /// The requests still waiting, in log order, forgotten.
    pub fn take(&mut self) -> impl Iterator<Item = RequestId> + use<> {
        std::mem::take(&mut self.0).into_values()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A refusal of an older term's AppendEntries carries this node's term,
    /// so it must carry no round number of the older term's leader: the
    /// leader of this term would count it as an answer to its own round
    /// (soak seed 8100003341).
    #[test]
    fn a_refusal_of_an_older_term_echoes_no_round() {
        let recovered = Recovered {
            hard_state: HardState {
                term: 2,
                voted_for: None,
            },
            ..Recovered::default()
        };
        let core = RaftCore::new(2, vec![1, 2, 3], recovered, 10, 7);
        let stale = AppendEntries {
            term: 1,
            leader_id: 1,
            prev_log_index: 0,
            prev_log_term: 0,
            entries: Vec::new(),
            leader_commit: 0,
            context: 38,
        };
        let mut out = Outbox::default();
        core.refuse_stale_append(1, &stale, &mut out);
        let [envelope] = &out.send[..] else {
            panic!("one answer: {:?}", out.send);
        };
        let Message::AppendEntriesResponse(response) = &envelope.message else {
            panic!("an AppendEntries response");
        };
        assert_eq!(
            (response.term, response.success, response.context),
            (2, false, 0)
        );
    }
}

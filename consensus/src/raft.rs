//! The rules every Raft variant shares, written once: persistent state
//! (term, vote, log) and how it changes, the receiver's side of
//! AppendEntries and RequestVote (Figure 2), commitment and applying, and the
//! randomized election timer. A variant (vanilla, optimized, Nil-ext) adds
//! its own leader behaviour around a [`RaftCore`].

use crate::io::{HardState, Outbox, Recovered, Role, Status, Timing, Write};
use crate::log::RaftLog;
use crate::message::{AppendEntries, Message, RequestVote, RequestVoteResponse};
use crate::quorum::{majority, quorum_index};
use crate::rng::DetRng;
use crate::types::{Entry, EntryPayload, LogIndex, NodeId, Term};

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

/// A replica's persistent state and the indexes derived from it.
#[derive(Clone, Debug)]
pub struct RaftCore {
    /// This node.
    pub id: NodeId,
    /// Every member, this node included.
    pub members: Vec<NodeId>,
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
}

impl RaftCore {
    /// The state rebuilt from storage.
    pub fn new(id: NodeId, members: Vec<NodeId>, recovered: Recovered) -> Self {
        assert!(members.contains(&id), "a node is a member of its cluster");
        let log = RaftLog::new(recovered.log);
        let applied = recovered.applied_index;
        assert!(
            applied <= log.last_index(),
            "the state machine is never ahead of the durable log"
        );
        RaftCore {
            id,
            members,
            term: recovered.hard_state.term,
            voted_for: recovered.hard_state.voted_for,
            durable_index: log.last_index(),
            log,
            commit_index: applied,
            applied_index: applied,
            apply_emitted: applied,
        }
    }

    /// The other members.
    pub fn peers(&self) -> Vec<NodeId> {
        self.members
            .iter()
            .copied()
            .filter(|&m| m != self.id)
            .collect()
    }

    /// Votes or acknowledgements needed, this node's included.
    pub fn majority(&self) -> usize {
        majority(self.members.len())
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

    /// Starts a new term voting for itself (becoming a candidate). The vote
    /// must be durable before any RequestVote leaves: a node that forgot
    /// its vote after a crash could vote twice in one term.
    pub fn campaign(&mut self, out: &mut Outbox) -> RequestVote {
        self.term += 1;
        self.voted_for = Some(self.id);
        out.persist.push(Write::HardState(self.hard_state()));
        self.vote_request(self.term, false)
    }

    /// A RequestVote for `term` describing this node's log.
    pub fn vote_request(&self, term: Term, pre_vote: bool) -> RequestVote {
        RequestVote {
            term,
            candidate_id: self.id,
            last_log_index: self.log.last_index(),
            last_log_term: self.log.last_term(),
            pre_vote,
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
    /// Returns whether the vote was granted.
    pub fn answer_vote(&mut self, from: NodeId, m: &RequestVote, out: &mut Outbox) -> bool {
        let granted = self.decide_vote(m, out);
        let response = RequestVoteResponse {
            term: self.term,
            vote_granted: granted,
            pre_vote: false,
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
                    self.durable_index = self.durable_index.min(entry.index - 1);
                    out.persist.push(Write::TruncateLog { from: entry.index });
                }
                None => {}
            }
            self.log.push(entry.clone());
            new_entries.push(entry.clone());
        }
        if !new_entries.is_empty() {
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
                payload,
            };
            self.log.push(entry.clone());
            entries.push(entry);
        }
        if !entries.is_empty() {
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

    /// Figure 2, leaders: the highest index a majority holds (this node
    /// counted with its durable log) whose entry is of the current term, or
    /// `None` when that is not past the commit index.
    pub fn quorum_commit(&self, peer_matches: impl Iterator<Item = LogIndex>) -> Option<LogIndex> {
        let mut matches: Vec<LogIndex> = peer_matches.collect();
        matches.push(self.durable_index);
        let index = quorum_index(&matches);
        (index > self.commit_index && self.log.term(index) == Some(self.term)).then_some(index)
    }

    /// Raises the commit index (never lowers it).
    pub fn commit_to(&mut self, index: LogIndex) {
        debug_assert!(index <= self.log.last_index());
        self.commit_index = self.commit_index.max(index);
    }

    /// Hands committed entries that are durable here to the runtime, in
    /// order; returns how many.
    pub fn emit_applies(&mut self, out: &mut Outbox) -> usize {
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

    /// The node's status in `role`, knowing `leader`.
    pub fn status(&self, role: Role, leader: Option<NodeId>) -> Status {
        Status {
            id: self.id,
            role,
            term: self.term,
            leader,
            commit_index: self.commit_index,
            applied_index: self.applied_index,
            last_log_index: self.log.last_index(),
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

//! Elections with pre-vote (Raft thesis 9.6) and check-quorum's leader
//! stickiness (thesis 6.2): a node asks for pre-votes before raising its
//! term, and refuses votes while it hears from a leader.

use consensus::io::{Outbox, Role, Timing};
use consensus::message::{Message, RequestVote, RequestVoteResponse};
use consensus::{EntryPayload, NodeId};

use crate::OptimizedRaft;
use crate::progress::Progress;

impl OptimizedRaft {
    /// True while this node has heard from a leader (or started) within the
    /// minimum election timeout: it then refuses votes (check-quorum's
    /// leader stickiness, which lease reads rely on).
    pub(crate) fn leader_is_fresh(&self) -> bool {
        self.config.check_quorum
            && (self.core.role == Role::Leader
                || self.ticks_since_leader < self.config.election_timeout_ticks)
    }

    pub(crate) fn on_election_timeout(&mut self, out: &mut Outbox) {
        self.core.election.reset();
        if !self.config.pre_vote || self.core.pre_campaign(out) {
            self.start_election(out);
        }
    }

    pub(crate) fn start_election(&mut self, out: &mut Outbox) {
        if self.core.campaign(out) {
            self.become_leader(out);
        }
    }

    pub(crate) fn start_election_on_transfer(&mut self, out: &mut Outbox) {
        if self.core.campaign_on_transfer(out) {
            self.become_leader(out);
        }
    }

    pub(crate) fn become_leader(&mut self, out: &mut Outbox) {
        self.core.become_leader(out);
        self.heartbeat_elapsed = 0;
        self.quorum_check_elapsed = 0;
        self.lease_until_tick = 0;
        self.term_start_index = self.core.append_as_leader(vec![EntryPayload::Noop], out);
        let now = self.now_ticks;
        let next = self.term_start_index;
        self.progress = self
            .core
            .peers()
            .into_iter()
            .map(|p| (p, Progress::new(next, now)))
            .collect();
        for peer in self.core.peers() {
            self.send_appends(peer, out);
        }
        self.start_round(out);
        self.advance_commit(out);
    }

    pub(crate) fn handle_vote_request(&mut self, from: NodeId, m: RequestVote, out: &mut Outbox) {
        if m.pre_vote {
            let granted = !self.leader_is_fresh() && self.core.would_grant_pre_vote(&m);
            let response = RequestVoteResponse {
                term: if granted { m.term } else { self.core.term },
                vote_granted: granted,
                pre_vote: true,
                not_a_voter_at: 0,
            };
            out.send(from, Message::RequestVoteResponse(response), Timing::Now);
            return;
        }
        if m.term > self.core.term {
            // A transfer's candidate is elected even while the leader is
            // heard: that leader sent it TimeoutNow, and serves no lease
            // read since (`RaftCore::timeout_now_sent`).
            if self.leader_is_fresh() && !m.transfer {
                // Check-quorum: a live leader exists; do not let this
                // candidate depose it, nor raise our term.
                let response = RequestVoteResponse {
                    term: self.core.term,
                    vote_granted: false,
                    pre_vote: false,
                    not_a_voter_at: 0,
                };
                out.send(from, Message::RequestVoteResponse(response), Timing::Now);
                return;
            }
            self.become_follower(m.term, None, out);
        }
        self.core.answer_vote(from, &m, out);
    }

    pub(crate) fn handle_vote_response(
        &mut self,
        from: NodeId,
        m: RequestVoteResponse,
        out: &mut Outbox,
    ) {
        if m.pre_vote {
            if self.core.role == Role::PreCandidate
                && m.vote_granted
                && m.term == self.core.term + 1
            {
                if self.core.count_vote(from) {
                    self.start_election(out);
                }
            } else if !m.vote_granted && m.term > self.core.term {
                self.become_follower(m.term, None, out);
            }
            return;
        }
        if m.term > self.core.term {
            self.become_follower(m.term, None, out);
            return;
        }
        if self.core.wins_with(from, &m) {
            self.become_leader(out);
        }
    }
}

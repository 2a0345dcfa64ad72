//! Reads without a log entry (Raft thesis 6.4, as raft-rs's
//! `read_only`): ReadIndex rounds that confirm leadership with a majority,
//! and leases counted from the last confirmed round.

use consensus::io::{Outbox, Role, Timing};
use consensus::{ClientRequest, LogIndex};

use crate::{OptimizedRaft, ReadMode};

/// A heartbeat round: confirms leadership for the reads that wait on it and
/// renews the lease.
#[derive(Debug)]
pub(crate) struct Round {
    pub(crate) context: u64,
    pub(crate) sent_tick: u64,
    pub(crate) read_index: LogIndex,
    /// Reads confirmed by this round, each with the least index it must
    /// see applied.
    pub(crate) reads: Vec<(ClientRequest, LogIndex)>,
}

impl OptimizedRaft {
    /// Serves a read linearizably, at an index no lower than `min_index`
    /// (a layer above may need writes it just ordered to be visible: Nil-ext
    /// orders its durability log before such reads).
    pub fn read(&mut self, request: ClientRequest, min_index: LogIndex, out: &mut Outbox) {
        if self.refused_unless_leader(&request, out) {
            return;
        }
        self.unrounded_reads.push((request, min_index));
        self.route_reads(out);
    }

    /// Gives waiting reads their path: nothing until this term's no-op
    /// commits; then at once under a valid lease, else the next round.
    pub(crate) fn route_reads(&mut self, out: &mut Outbox) {
        if self.core.commit_index < self.term_start_index || self.unrounded_reads.is_empty() {
            return;
        }
        // No lease read once TimeoutNow went out in this term: its target
        // may be elected while this leader's lease lasts.
        let lease_forfeited = self.core.timeout_now_sent
            && self.config.injected_bug != Some(crate::InjectedBug::LeaseReadsAfterTimeoutNow);
        if self.config.read_mode == ReadMode::Lease
            && !lease_forfeited
            && self.now_ticks < self.lease_until_tick
        {
            let read_index = self.core.commit_index;
            for (request, min_index) in self.unrounded_reads.drain(..) {
                self.ready_reads
                    .push_back((read_index.max(min_index), request));
            }
            self.serve_ready_reads(out);
        } else if self.rounds.iter().all(|r| r.reads.is_empty()) {
            // No round carries reads now: start one for these (rounds in
            // flight without reads were started before they arrived).
            self.start_round(out);
        }
    }

    /// Broadcasts a heartbeat round that confirms leadership for the reads
    /// waiting now, at the current commit index.
    pub(crate) fn start_round(&mut self, out: &mut Outbox) {
        let context = self.next_round;
        self.next_round += 1;
        let reads = if self.core.commit_index >= self.term_start_index {
            std::mem::take(&mut self.unrounded_reads)
        } else {
            Vec::new()
        };
        self.rounds.push_back(Round {
            context,
            sent_tick: self.now_ticks,
            read_index: self.core.commit_index,
            reads,
        });
        for peer in self.core.peers() {
            let Some(p) = self.progress.get(&peer) else {
                continue;
            };
            // prev = match_index, which the follower is known to hold (or,
            // when this leader compacted past it, its log's base: a
            // follower without it refuses, which confirms the round all
            // the same).
            let prev = p.match_index.max(self.core.log.base().0);
            let message = self.append_message(prev, Vec::new(), context);
            out.send(peer, message, Timing::Now);
        }
        self.confirm_rounds(out);
    }

    /// Rounds acknowledged by a majority (this node included) confirm their
    /// reads and extend the lease.
    pub(crate) fn confirm_rounds(&mut self, out: &mut Outbox) {
        while let Some(round) = self.rounds.front() {
            let acked = self
                .progress
                .iter()
                .filter(|(_, p)| p.acked_round >= round.context)
                .map(|(&peer, _)| peer);
            if !self.core.is_quorum(acked, true) {
                break;
            }
            let Some(round) = self.rounds.pop_front() else {
                break;
            };
            let lease = self.config.election_timeout_ticks - self.config.lease_drift_ticks;
            self.lease_until_tick = self.lease_until_tick.max(round.sent_tick + lease);
            for (request, min_index) in round.reads {
                self.ready_reads
                    .push_back((round.read_index.max(min_index), request));
            }
        }
        self.serve_ready_reads(out);
        if !self.unrounded_reads.is_empty() && self.core.role == Role::Leader {
            self.route_reads(out);
        }
    }

    pub(crate) fn serve_ready_reads(&mut self, out: &mut Outbox) {
        while self
            .ready_reads
            .front()
            .is_some_and(|(index, _)| *index <= self.core.applied_index)
        {
            if let Some((_, request)) = self.ready_reads.pop_front() {
                out.reads.push(request);
            }
        }
    }
}

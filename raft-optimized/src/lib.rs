//! Raft with the optimizations of production implementations (etcd/raft,
//! TiKV's raft-rs, openraft), as one pure [`Consensus`] state machine.
//!
//! # Message flow, and what differs from Figure 2
//!
//! *Election.* On an election timeout a node first asks for **pre-votes**
//! (Raft thesis, section 9.6): `RequestVote { pre_vote: true }` for the term
//! it would campaign in, which changes nobody's state. Only with a majority of
//! pre-votes does it raise its term and campaign as in Figure 2. With
//! **check-quorum** (thesis 6.2), a node that heard from a leader within the
//! minimum election timeout refuses votes and pre-votes, and a leader that
//! has not heard from a majority for an election timeout steps down. So a
//! node cut off and reconnected neither raises the term nor deposes a
//! healthy leader. A new leader appends a no-op entry of its term
//! (section 8), which commits the entries of earlier terms and lets reads
//! proceed.
//!
//! *Replication.* Client commands arriving while the leader's previous
//! write is being synced wait in a buffer; when that sync completes they are
//! all appended as **one batch: one durable write, one sync** (group commit),
//! bounded in entries and bytes. The leader **sends entries before its own
//! sync completes** (parallel persist, thesis 10.2.1) and counts itself
//! toward the commit quorum only once its copy is durable. To each follower
//! it **pipelines** several AppendEntries with an optimistic `next_index`
//! (Replicate state), bounded in messages and bytes; a rejection carries the
//! follower's conflicting term and its first index, so the leader skips a
//! whole term at a time (section 5.3's optimization) and probes one message
//! at a time until the logs match again (Probe state).
//!
//! *Reads* (thesis 6.4) use no log entry: with **ReadIndex** the leader
//! notes its commit index, confirms it is still leader with a heartbeat round
//! acknowledged by a majority, and answers once it has applied up to the
//! noted index; reads arriving meanwhile share the next round. With
//! **lease reads** it answers at once while the lease of its last confirmed
//! round lasts (election timeout minus a drift margin, counted from when that
//! round was sent).
//!
//! Commitment and applying follow Figure 2 (see `consensus::raft`).

mod config;
mod elections;
mod progress;
mod reads;
mod replication;

use std::collections::{BTreeMap, VecDeque};

use consensus::io::{Outbox, Recovered, ReplyOutcome, Role, Timing};
use consensus::message::{
    AppendEntries, AppendEntriesResponse, InstallSnapshot, InstallSnapshotResponse, Message,
    RequestVote, RequestVoteResponse,
};
use consensus::raft::{ConflictHints, PendingRequests, RaftCore, RaftVariant};
use consensus::snapshot::SnapshotMeta;
use consensus::{ClientRequest, LogIndex, NodeId, Term};

pub use config::{Config, InjectedBug, ReadMode};

use crate::progress::{Progress, ReplicationState};
use crate::reads::Round;

/// One optimized Raft node.
#[derive(Debug)]
pub struct OptimizedRaft {
    config: Config,
    core: RaftCore,
    now_ticks: u64,
    /// Ticks since a leader was last heard from, or since this node started.
    ticks_since_leader: u64,
    // Leader state.
    heartbeat_elapsed: u64,
    quorum_check_elapsed: u64,
    progress: BTreeMap<NodeId, Progress>,
    /// Commands waiting for the next durable write.
    proposals: VecDeque<ClientRequest>,
    /// Commands in the log, not yet applied, by index.
    pending: PendingRequests,
    /// Index of this term's no-op; reads wait until it commits.
    term_start_index: LogIndex,
    next_round: u64,
    rounds: VecDeque<Round>,
    /// Reads not yet in a round, each with the least index it must see
    /// applied.
    unrounded_reads: Vec<(ClientRequest, LogIndex)>,
    /// Confirmed reads waiting for apply: (read index, request).
    ready_reads: VecDeque<(LogIndex, ClientRequest)>,
    lease_until_tick: u64,
}

impl OptimizedRaft {
    /// A node rebuilt from what its storage holds. Panics on settings that
    /// [`Config::validate`] refuses.
    pub fn new(config: Config, recovered: Recovered) -> Self {
        if let Err(problem) = config.validate() {
            panic!("invalid raft-optimized settings: {problem}");
        }
        let never_saw_a_term = recovered.hard_state.term == 0;
        let mut raft = OptimizedRaft {
            core: RaftCore::new(
                config.id,
                config.members.clone(),
                recovered,
                config.election_timeout_ticks,
                config.seed,
            ),
            now_ticks: 0,
            // A node that restarts counts as having just heard from a leader:
            // it may have acknowledged a lease before it crashed, and must not
            // help elect another leader while that lease lasts. A node that
            // never saw a term has acknowledged nothing.
            ticks_since_leader: if never_saw_a_term { u64::MAX } else { 0 },
            heartbeat_elapsed: 0,
            quorum_check_elapsed: 0,
            progress: BTreeMap::new(),
            proposals: VecDeque::new(),
            pending: PendingRequests::default(),
            term_start_index: 0,
            next_round: 1,
            rounds: VecDeque::new(),
            unrounded_reads: Vec::new(),
            ready_reads: VecDeque::new(),
            lease_until_tick: 0,
            config,
        };
        if let Some(InjectedBug::Membership(bug)) = raft.config.injected_bug {
            raft.core.membership_bug = Some(bug);
        }
        raft
    }

    // ----- roles -----

    fn become_follower(&mut self, term: Term, leader: Option<NodeId>, out: &mut Outbox) {
        if self.core.become_follower(term, leader, out) {
            // Appended commands may still commit under the next leader (see
            // `PendingRequests`). Buffered ones and reads never ran.
            let waiting = self
                .pending
                .take()
                .chain(self.proposals.drain(..).map(|r| r.id))
                .chain(
                    self.rounds
                        .drain(..)
                        .flat_map(|r| r.reads)
                        .map(|(r, _)| r.id),
                )
                .chain(self.unrounded_reads.drain(..).map(|(r, _)| r.id))
                .chain(self.ready_reads.drain(..).map(|(_, r)| r.id))
                .collect::<Vec<_>>();
            for id in waiting {
                out.reply(id, ReplyOutcome::NotLeader { leader }, Timing::Now);
            }
            self.progress.clear();
            self.lease_until_tick = 0;
        }
    }

    // ----- replication -----

    // ----- elections -----

    /// Answers "not leader" unless this node leads; true when it answered.
    fn refused_unless_leader(&self, request: &ClientRequest, out: &mut Outbox) -> bool {
        if self.core.role == Role::Leader {
            return false;
        }
        out.reply(request.id, self.core.not_leader(), Timing::Now);
        true
    }

    // ----- reads -----

    // ----- inputs -----

    /// True while this leader hands leadership over (it then takes no new
    /// client command).
    pub fn transferring_leadership(&self) -> bool {
        self.core.leader_transfer().is_some()
    }

    /// Index of the last entry of this node's log.
    pub fn last_index(&self) -> LogIndex {
        self.core.log.last_index()
    }

    /// Adopts a higher term learned by a layer above (as from any message
    /// of that term), following `leader` when known.
    pub fn adopt_term(&mut self, term: Term, leader: Option<NodeId>, out: &mut Outbox) {
        if term > self.core.term {
            self.become_follower(term, leader, out);
            if leader.is_some() {
                self.ticks_since_leader = 0;
            }
        }
    }
}

impl RaftVariant for OptimizedRaft {
    const NAME: &'static str = "raft-optimized";

    fn core(&self) -> &RaftCore {
        &self.core
    }

    fn core_mut(&mut self) -> &mut RaftCore {
        &mut self.core
    }

    fn match_index_of(&self, peer: NodeId) -> LogIndex {
        self.progress.get(&peer).map_or(0, |p| p.match_index)
    }

    /// Pre-votes carry a term nobody has entered yet, and a vote request
    /// of a higher term is weighed against check-quorum's leader
    /// stickiness first: both are handled before the term is adopted.
    fn adopts_term_first(&self, message: &Message) -> bool {
        !matches!(
            message,
            Message::RequestVote(_)
                | Message::RequestVoteResponse(RequestVoteResponse { pre_vote: true, .. })
        )
    }

    fn become_follower(&mut self, term: Term, leader: Option<NodeId>, out: &mut Outbox) {
        OptimizedRaft::become_follower(self, term, leader, out);
    }

    fn on_tick(&mut self, out: &mut Outbox) {
        self.now_ticks += 1;
        self.ticks_since_leader = self.ticks_since_leader.saturating_add(1);
        if self.core.role != Role::Leader {
            if self.core.election.tick() {
                self.on_election_timeout(out);
            }
            return;
        }
        // A transfer that gave up: what waited for it goes into the log.
        if !self.transferring_leadership() && !self.log_write_in_flight() {
            self.flush_proposals(out);
        }
        let timeout = 2 * self.config.heartbeat_ticks;
        for (&peer, p) in &mut self.progress {
            if let Some(transfer) = p.transfer.as_mut() {
                self.core.tick_transfer(peer, transfer, timeout, out);
            }
        }
        self.heartbeat_elapsed += 1;
        if self.heartbeat_elapsed >= self.config.heartbeat_ticks {
            self.heartbeat_elapsed = 0;
            let now = self.now_ticks;
            let stall_ticks = 2 * self.config.heartbeat_ticks;
            for p in self.progress.values_mut() {
                match p.state {
                    ReplicationState::Snapshot => {}
                    // A lost probe (or its answer) is sent again.
                    ReplicationState::Probe => p.probe_sent = false,
                    // A pipeline that stopped advancing lost a message:
                    // probe from what is known to match.
                    ReplicationState::Replicate => {
                        if !p.inflight.is_empty() && now - p.progress_tick > stall_ticks {
                            let next = p.match_index + 1;
                            p.become_probe(next);
                        }
                    }
                }
            }
            for peer in self.core.peers() {
                self.send_appends(peer, out);
            }
            self.start_round(out);
        }
        if self.config.check_quorum {
            self.quorum_check_elapsed += 1;
            if self.quorum_check_elapsed >= self.config.election_timeout_ticks {
                self.quorum_check_elapsed = 0;
                let active: Vec<NodeId> = self
                    .progress
                    .iter()
                    .filter(|(_, p)| p.active)
                    .map(|(&peer, _)| peer)
                    .collect();
                for p in self.progress.values_mut() {
                    p.active = false;
                }
                if !self.core.is_quorum(active, true) {
                    let term = self.core.term;
                    self.become_follower(term, None, out);
                    return;
                }
            }
        }
        if !self.log_write_in_flight() {
            self.flush_proposals(out);
        }
    }

    fn on_request(&mut self, request: ClientRequest, out: &mut Outbox) {
        if out.refuse_invalid(&request, false) {
            return;
        }
        // `read` and `propose` answer "not leader" themselves.
        if request.command.is_read() {
            self.read(request, 0, out);
            return;
        }
        if self.transferring_leadership() {
            // Handing leadership over: new commands would only delay it.
            out.reply(request.id, ReplyOutcome::Unavailable, Timing::Now);
            return;
        }
        self.propose(request, out);
    }

    fn on_persisted(&mut self, last_index: LogIndex, last_term: Term, out: &mut Outbox) {
        self.core.persisted(last_index, last_term);
        self.advance_commit(out);
        if !self.log_write_in_flight() {
            self.flush_proposals(out);
        }
    }

    fn on_applied(&mut self, index: LogIndex, out: &mut Outbox) {
        self.core.applied(index);
        self.serve_ready_reads(out);
    }

    fn on_append(&mut self, from: NodeId, m: AppendEntries, out: &mut Outbox) {
        self.ticks_since_leader = 0;
        self.core
            .accept_append(from, &m, ConflictHints::TermAndFirstIndex, out);
        self.advance_commit(out);
    }

    fn on_append_response(&mut self, from: NodeId, m: AppendEntriesResponse, out: &mut Outbox) {
        self.handle_append_response(from, m, out);
    }

    fn on_vote_request(&mut self, from: NodeId, m: RequestVote, out: &mut Outbox) {
        self.handle_vote_request(from, m, out);
    }

    fn on_vote_response(&mut self, from: NodeId, m: RequestVoteResponse, out: &mut Outbox) {
        self.handle_vote_response(from, m, out);
    }

    fn on_install_snapshot(&mut self, from: NodeId, m: InstallSnapshot, out: &mut Outbox) {
        self.ticks_since_leader = 0;
        self.core.accept_snapshot(from, m, out);
    }

    fn on_snapshot_response(&mut self, from: NodeId, m: InstallSnapshotResponse, out: &mut Outbox) {
        let now = self.now_ticks;
        let Some(p) = self.progress.get_mut(&from) else {
            return;
        };
        let Some(transfer) = p.transfer.as_mut() else {
            return;
        };
        if m.term == self.core.term {
            p.active = true;
        }
        if let Some(index) = self.core.snapshot_answered(from, transfer, &m, out) {
            if index > p.match_index {
                p.match_index = index;
                p.progress_tick = now;
            }
            p.become_probe(index + 1);
            self.advance_commit(out);
            self.send_appends(from, out);
        }
    }

    fn on_transfer_begun(&mut self, target: NodeId, out: &mut Outbox) {
        self.send_appends(target, out);
    }

    fn on_membership_changed(&mut self, out: &mut Outbox) {
        // A lease was granted by a quorum of the configuration before;
        // leases from here on come from rounds counted in this one.
        self.lease_until_tick = 0;
        let (next, now) = (self.core.log.last_index() + 1, self.now_ticks);
        let fresh = || Progress::new(next, now);
        self.core
            .adjust_progress(&mut self.progress, |p| p.match_index, fresh, out);
        for peer in self.core.peers() {
            self.send_appends(peer, out);
        }
        self.advance_commit(out);
        self.confirm_rounds(out);
    }

    fn on_timeout_now(&mut self, out: &mut Outbox) {
        // No pre-vote: the leader asked for this election.
        self.start_election_on_transfer(out);
    }

    fn on_snapshot_taken(&mut self, snapshot: SnapshotMeta, keep_entries: u64, out: &mut Outbox) {
        self.core.snapshot_taken(snapshot, keep_entries, out);
    }

    fn on_snapshot_installed(&mut self, snapshot: SnapshotMeta, out: &mut Outbox) {
        self.core.snapshot_installed(snapshot);
        self.advance_commit(out);
    }
}

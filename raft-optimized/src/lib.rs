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

use std::collections::{BTreeMap, VecDeque};

use consensus::io::{Outbox, Recovered, ReplyOutcome, Role, Timing};
use consensus::message::{
    AppendEntries, AppendEntriesResponse, Message, RequestVote, RequestVoteResponse,
};
use consensus::raft::{ConflictHints, PendingRequests, RaftCore, RaftVariant};
use consensus::{ClientRequest, EntryPayload, LogIndex, NodeId, Term};

pub use config::{Config, ReadMode};

/// How the leader replicates to one follower.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum ReplicationState {
    /// The logs may differ: one AppendEntries at a time until one succeeds.
    Probe,
    /// The logs match up to `match_index`: pipeline with optimistic
    /// `next_index`.
    Replicate,
}

/// The leader's view of one follower.
#[derive(Clone, Debug)]
struct Progress {
    /// Highest index known replicated on the follower.
    match_index: LogIndex,
    /// Next index to send. Invariant: `match_index < next_index`.
    next_index: LogIndex,
    state: ReplicationState,
    /// In Probe: a probe is awaiting its answer.
    probe_sent: bool,
    /// In Replicate: (last index, bytes) of each AppendEntries in flight.
    inflight: VecDeque<(LogIndex, usize)>,
    inflight_bytes: usize,
    /// Heard from since the last check-quorum.
    active: bool,
    /// Highest heartbeat-round context it has answered.
    acked_round: u64,
    /// When `match_index` last advanced (ticks).
    progress_tick: u64,
}

impl Progress {
    fn new(next_index: LogIndex, now: u64) -> Self {
        Progress {
            match_index: 0,
            next_index,
            state: ReplicationState::Probe,
            probe_sent: false,
            inflight: VecDeque::new(),
            inflight_bytes: 0,
            active: false,
            acked_round: 0,
            progress_tick: now,
        }
    }

    fn become_probe(&mut self, next_index: LogIndex) {
        self.state = ReplicationState::Probe;
        self.probe_sent = false;
        self.inflight.clear();
        self.inflight_bytes = 0;
        self.next_index = next_index.max(self.match_index + 1);
    }
}

/// A heartbeat round: confirms leadership for the reads that wait on it and
/// renews the lease.
#[derive(Debug)]
struct Round {
    context: u64,
    sent_tick: u64,
    read_index: LogIndex,
    /// Reads confirmed by this round, each with the least index it must
    /// see applied.
    reads: Vec<(ClientRequest, LogIndex)>,
}

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
        OptimizedRaft {
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
        }
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

    /// True while this node has heard from a leader (or started) within the
    /// minimum election timeout: it then refuses votes (check-quorum's
    /// leader stickiness, which lease reads rely on).
    fn leader_is_fresh(&self) -> bool {
        self.config.check_quorum
            && (self.core.role == Role::Leader
                || self.ticks_since_leader < self.config.election_timeout_ticks)
    }

    fn on_election_timeout(&mut self, out: &mut Outbox) {
        self.core.election.reset();
        if !self.config.pre_vote || self.core.pre_campaign(out) {
            self.start_election(out);
        }
    }

    fn start_election(&mut self, out: &mut Outbox) {
        if self.core.campaign(out) {
            self.become_leader(out);
        }
    }

    fn become_leader(&mut self, out: &mut Outbox) {
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

    // ----- replication -----

    fn append_message(
        &self,
        prev_log_index: LogIndex,
        entries: Vec<consensus::Entry>,
        context: u64,
    ) -> Message {
        let Some(prev_log_term) = self.core.log.term(prev_log_index) else {
            unreachable!("a leader only sends from within its log");
        };
        Message::AppendEntries(AppendEntries {
            term: self.core.term,
            leader_id: self.config.id,
            prev_log_index,
            prev_log_term,
            entries,
            leader_commit: self.core.commit_index,
            context,
        })
    }

    /// Sends what flow control allows to `peer`. Entries leave at once, even
    /// those this leader is still writing (parallel persist).
    fn send_appends(&mut self, peer: NodeId, out: &mut Outbox) {
        let last_index = self.core.log.last_index();
        let Some(p) = self.progress.get(&peer) else {
            return;
        };
        match p.state {
            ReplicationState::Probe => {
                if p.probe_sent {
                    return;
                }
                let entries = self.core.log.slice(
                    p.next_index,
                    self.config.batch_entries_max,
                    self.config.batch_bytes_max,
                );
                let message = self.append_message(p.next_index - 1, entries, 0);
                if let Some(p) = self.progress.get_mut(&peer) {
                    p.probe_sent = true;
                }
                out.send(peer, message, Timing::Now);
            }
            ReplicationState::Replicate => loop {
                let Some(p) = self.progress.get(&peer) else {
                    return;
                };
                if p.next_index > last_index
                    || p.inflight.len() >= self.config.inflight_appends_max
                    || p.inflight_bytes >= self.config.inflight_bytes_max
                {
                    return;
                }
                let entries = self.core.log.slice(
                    p.next_index,
                    self.config.batch_entries_max,
                    self.config.batch_bytes_max,
                );
                let last = entries.last().map_or(p.next_index - 1, |e| e.index);
                let bytes: usize = entries.iter().map(|e| e.size_bytes()).sum();
                let message = self.append_message(p.next_index - 1, entries, 0);
                if let Some(p) = self.progress.get_mut(&peer) {
                    p.inflight.push_back((last, bytes));
                    p.inflight_bytes += bytes;
                    p.next_index = last + 1;
                }
                out.send(peer, message, Timing::Now);
            },
        }
    }

    /// Appends buffered commands as one batch: one durable write.
    fn flush_proposals(&mut self, out: &mut Outbox) {
        if self.core.role != Role::Leader || self.proposals.is_empty() {
            return;
        }
        let mut payloads = Vec::new();
        let mut ids = Vec::new();
        let mut bytes = 0;
        while let Some(request) = self.proposals.front() {
            let size = request.command.size_bytes() + 32;
            if payloads.len() >= self.config.batch_entries_max
                || (!payloads.is_empty() && bytes + size > self.config.batch_bytes_max)
            {
                break;
            }
            let Some(request) = self.proposals.pop_front() else {
                break;
            };
            bytes += size;
            ids.push(request.id);
            payloads.push(EntryPayload::Command(request));
        }
        let last = self.core.append_as_leader(payloads, out);
        let first = last + 1 - ids.len() as LogIndex;
        for (index, id) in (first..=last).zip(ids) {
            self.pending.insert(index, id);
        }
        for peer in self.core.peers() {
            self.send_appends(peer, out);
        }
        self.advance_commit(out);
    }

    fn advance_commit(&mut self, out: &mut Outbox) {
        if self.core.role == Role::Leader
            && let Some(index) = self
                .core
                .quorum_commit(self.progress.values().map(|p| p.match_index))
        {
            self.core.commit_to(index);
        }
        let before = out.apply.len();
        self.core.emit_applies(out);
        self.pending.applying(&out.apply[before..]);
        if self.core.role == Role::Leader
            && self.core.commit_index >= self.term_start_index
            && !self.unrounded_reads.is_empty()
        {
            self.route_reads(out);
        }
    }

    /// Where to resume after a rejection: past the leader's last entry of the
    /// follower's conflicting term if it has that term, else the follower's
    /// hint (section 5.3).
    fn next_after_conflict(&self, m: &AppendEntriesResponse) -> LogIndex {
        if m.conflict_term != 0 {
            let mut index = m.conflict_index.min(self.core.log.last_index());
            let mut last_of_term = None;
            // Scan forward from the hint over the leader's entries of that term.
            while self.core.log.term(index) == Some(m.conflict_term) {
                last_of_term = Some(index);
                index += 1;
            }
            if let Some(last) = last_of_term {
                return last + 1;
            }
        }
        m.conflict_index.max(1)
    }

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
    fn route_reads(&mut self, out: &mut Outbox) {
        if self.core.commit_index < self.term_start_index || self.unrounded_reads.is_empty() {
            return;
        }
        if self.config.read_mode == ReadMode::Lease && self.now_ticks < self.lease_until_tick {
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
    fn start_round(&mut self, out: &mut Outbox) {
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
            // prev = match_index, which the follower is known to hold.
            let message = self.append_message(p.match_index, Vec::new(), context);
            out.send(peer, message, Timing::Now);
        }
        self.confirm_rounds(out);
    }

    /// Rounds acknowledged by a majority (this node included) confirm their
    /// reads and extend the lease.
    fn confirm_rounds(&mut self, out: &mut Outbox) {
        let majority = self.core.majority();
        while let Some(round) = self.rounds.front() {
            let acks = 1 + self
                .progress
                .values()
                .filter(|p| p.acked_round >= round.context)
                .count();
            if acks < majority {
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

    fn serve_ready_reads(&mut self, out: &mut Outbox) {
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

    // ----- inputs -----

    /// Queues a command for the log (leader only; others answer "not
    /// leader"). Group commit: while the leader's last log write is syncing,
    /// commands gather for the next one; a full batch goes at once.
    ///
    /// Returns whether the command was accepted: false when this node does
    /// not lead or its queue is full, and the request was answered so.
    pub fn propose(&mut self, request: ClientRequest, out: &mut Outbox) -> bool {
        if self.refused_unless_leader(&request, out) {
            return false;
        }
        if self.proposals.len() >= self.config.proposals_queued_max {
            out.reply(request.id, ReplyOutcome::Unavailable, Timing::Now);
            return false;
        }
        self.proposals.push_back(request);
        if !self.log_write_in_flight() || self.proposals.len() >= self.config.batch_entries_max {
            self.flush_proposals(out);
        }
        true
    }

    /// Appends every queued command to the log now, without waiting for the
    /// write in flight (a layer above needs their indexes).
    pub fn flush_now(&mut self, out: &mut Outbox) {
        while !self.proposals.is_empty() && self.core.role == Role::Leader {
            self.flush_proposals(out);
        }
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

    /// True while the leader's latest log write is not yet durable.
    fn log_write_in_flight(&self) -> bool {
        self.core.durable_index < self.core.log.last_index()
    }
}

impl RaftVariant for OptimizedRaft {
    const NAME: &'static str = "raft-optimized";

    fn core(&self) -> &RaftCore {
        &self.core
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
        self.heartbeat_elapsed += 1;
        if self.heartbeat_elapsed >= self.config.heartbeat_ticks {
            self.heartbeat_elapsed = 0;
            let now = self.now_ticks;
            let stall_ticks = 2 * self.config.heartbeat_ticks;
            for p in self.progress.values_mut() {
                match p.state {
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
                let active = 1 + self.progress.values().filter(|p| p.active).count();
                for p in self.progress.values_mut() {
                    p.active = false;
                }
                if active < self.core.majority() {
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
        if self.core.role != Role::Leader || m.term != self.core.term {
            return;
        }
        let now = self.now_ticks;
        let last_index = self.core.log.last_index();
        let conflict_next = (!m.success).then(|| self.next_after_conflict(&m));
        let Some(p) = self.progress.get_mut(&from) else {
            return;
        };
        p.active = true;
        p.acked_round = p.acked_round.max(m.context);
        if m.success {
            if m.match_index > p.match_index {
                p.match_index = m.match_index;
                p.progress_tick = now;
            }
            while p
                .inflight
                .front()
                .is_some_and(|(last, _)| *last <= p.match_index)
            {
                if let Some((_, bytes)) = p.inflight.pop_front() {
                    p.inflight_bytes -= bytes;
                }
            }
            if p.state == ReplicationState::Probe {
                p.state = ReplicationState::Replicate;
                p.probe_sent = false;
                p.next_index = p.match_index + 1;
                p.inflight.clear();
                p.inflight_bytes = 0;
            }
            p.next_index = p.next_index.max(p.match_index + 1);
        } else if let Some(next) = conflict_next {
            // The optimistic stream broke, or a probe missed: probe from the
            // follower's hint.
            p.become_probe(next.min(last_index + 1));
        }
        self.confirm_rounds(out);
        self.advance_commit(out);
        self.send_appends(from, out);
    }

    fn on_vote_request(&mut self, from: NodeId, m: RequestVote, out: &mut Outbox) {
        if m.pre_vote {
            let granted = !self.leader_is_fresh() && self.core.would_grant_pre_vote(&m);
            let response = RequestVoteResponse {
                term: if granted { m.term } else { self.core.term },
                vote_granted: granted,
                pre_vote: true,
            };
            out.send(from, Message::RequestVoteResponse(response), Timing::Now);
            return;
        }
        if m.term > self.core.term {
            if self.leader_is_fresh() {
                // Check-quorum: a live leader exists; do not let this
                // candidate depose it, nor raise our term.
                let response = RequestVoteResponse {
                    term: self.core.term,
                    vote_granted: false,
                    pre_vote: false,
                };
                out.send(from, Message::RequestVoteResponse(response), Timing::Now);
                return;
            }
            self.become_follower(m.term, None, out);
        }
        self.core.answer_vote(from, &m, out);
    }

    fn on_vote_response(&mut self, from: NodeId, m: RequestVoteResponse, out: &mut Outbox) {
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

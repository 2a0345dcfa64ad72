//! Raft as in Figure 2 of "In Search of an Understandable Consensus
//! Algorithm" (Ongaro & Ousterhout, 2014), and nothing more: the baseline the
//! other variants are measured against.
//!
//! # Message flow
//!
//! *Leader election (section 5.2).* A follower that hears from no leader for
//! an election timeout (randomized in `[T, 2T)` ticks) becomes a candidate:
//! it increments its term, votes for itself, **persists term and vote**, and
//! only then sends `RequestVote` to every peer. A peer grants its vote if it
//! has not voted for another candidate in that term and the candidate's log
//! is at least as up to date as its own (section 5.4.1); it persists the vote
//! before answering. A candidate with votes from a majority becomes leader.
//!
//! *Log replication (section 5.3).* The leader appends each client command
//! to its log as its own entry, **persists it with its own sync**, and then
//! sends `AppendEntries` carrying that entry to the followers, one entry per
//! message and one message in flight per follower. A follower checks that
//! its log holds the entry before the new one (`prev_log_index`,
//! `prev_log_term`), deletes a conflicting suffix, appends, **persists**, and
//! answers. On a rejection the leader decrements `next_index` by one and
//! retries. Heartbeats (every `heartbeat_ticks`) repeat the message in flight,
//! so a lost message is retried.
//!
//! *Commitment (sections 5.3, 5.4.2).* The leader commits index N once a
//! majority's `match_index` (its own durable log included) reaches N and the
//! entry at N is of its current term; earlier entries commit with it
//! (Figure 8 is why an older term's entry is never committed by counting
//! replicas). Followers learn the commit index from `leader_commit`.
//!
//! *Applying.* Every node applies committed entries in order, but only those
//! durable in its own log. The runtime answers the waiting client with the
//! result of applying its command; reads go through the log like writes.
//!
//! No batching, no pipelining, no pre-vote, no leases: those belong to
//! `raft-optimized`.

use std::collections::BTreeMap;

use consensus::io::{Outbox, Recovered, ReplyOutcome, Role, Timing};
use consensus::message::{
    AppendEntries, AppendEntriesResponse, InstallSnapshot, InstallSnapshotResponse, Message,
    RequestVote, RequestVoteResponse,
};
use consensus::raft::{ConflictHints, PendingRequests, RaftCore, RaftVariant};
use consensus::snapshot::{SnapshotMeta, Transfer};
use consensus::{ClientRequest, EntryPayload, LogIndex, NodeId, Term};

/// A deliberate protocol bug, for the tests that prove the simulator catches
/// unsafe protocols. Never set outside those tests; `kvnode` has no flag for
/// it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum InjectedBug {
    /// The leader treats an entry as committed as soon as it is in its own
    /// durable log, before a majority holds it.
    CommitWithoutQuorum,
    /// The leader commits an entry of an earlier term by counting replicas
    /// (the unsafe rule of the paper's Figure 8).
    CommitPreviousTermByCounting,
    /// A bug in the membership rules (`consensus::membership`).
    Membership(consensus::membership::MembershipBug),
}

/// Settings of one node.
#[derive(Clone, Debug)]
pub struct Config {
    /// This node.
    pub id: NodeId,
    /// The cluster's initial members, this node included, all voters;
    /// empty for a node that joins a running cluster
    /// (`consensus::membership`).
    pub members: Vec<NodeId>,
    /// Base election timeout in ticks; each timeout is drawn from
    /// `[election_timeout_ticks, 2 * election_timeout_ticks)`. Default
    /// `consensus::raft::ELECTION_TIMEOUT_TICKS`.
    pub election_timeout_ticks: u64,
    /// Ticks between a leader's heartbeats. Default
    /// `consensus::raft::HEARTBEAT_TICKS`.
    pub heartbeat_ticks: u64,
    /// Seed of the generator for election timeouts.
    pub seed: u64,
    /// A deliberate bug (tests only).
    pub injected_bug: Option<InjectedBug>,
}

impl Config {
    /// The defaults above, no injected bug.
    pub fn new(id: NodeId, members: Vec<NodeId>, seed: u64) -> Self {
        Config {
            id,
            members,
            election_timeout_ticks: consensus::raft::ELECTION_TIMEOUT_TICKS,
            heartbeat_ticks: consensus::raft::HEARTBEAT_TICKS,
            seed,
            injected_bug: None,
        }
    }

    /// Checks the settings fit together.
    pub fn validate(&self) -> Result<(), String> {
        consensus::membership::validate_initial_members(self.id, &self.members)?;
        consensus::raft::validate_timing(self.election_timeout_ticks, self.heartbeat_ticks)
    }
}

/// Figure 2, "Volatile state on leaders", for one follower.
#[derive(Clone, Debug)]
struct Progress {
    /// Index of the next log entry to send to that server.
    next_index: LogIndex,
    /// Index of the highest log entry known to be replicated on that server.
    match_index: LogIndex,
    /// An AppendEntries carrying an entry is awaiting its response.
    in_flight: bool,
    /// Section 7: the snapshot being sent, when `next_index` was compacted
    /// away here; no AppendEntries goes meanwhile.
    transfer: Option<Transfer>,
}

/// One vanilla Raft node.
#[derive(Debug)]
pub struct VanillaRaft {
    config: Config,
    core: RaftCore,
    heartbeat_elapsed: u64,
    progress: BTreeMap<NodeId, Progress>,
    /// Requests this leader appended and has not yet applied.
    pending: PendingRequests,
}

impl VanillaRaft {
    /// A node rebuilt from what its storage holds.
    pub fn new(config: Config, recovered: Recovered) -> Self {
        if let Err(problem) = config.validate() {
            panic!("invalid settings: {problem}");
        }
        VanillaRaft {
            core: RaftCore::new(
                config.id,
                config.members.clone(),
                recovered,
                config.election_timeout_ticks,
                config.seed,
            ),
            heartbeat_elapsed: 0,
            progress: BTreeMap::new(),
            pending: PendingRequests::default(),
            config,
        }
        .with_membership_bug()
    }

    /// Figure 2, all servers: "If RPC request or response contains term
    /// T > currentTerm: set currentTerm = T, convert to follower".
    fn with_membership_bug(mut self) -> Self {
        if let Some(InjectedBug::Membership(bug)) = self.config.injected_bug {
            self.core.membership_bug = Some(bug);
        }
        self
    }

    fn become_follower(&mut self, term: Term, leader: Option<NodeId>, out: &mut Outbox) {
        if self.core.become_follower(term, leader, out) {
            for request in self.pending.take() {
                out.reply(request, ReplyOutcome::NotLeader { leader }, Timing::Now);
            }
            self.progress.clear();
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
        let next_index = self.core.log.last_index() + 1;
        self.progress = self
            .core
            .peers()
            .into_iter()
            .map(|peer| {
                let progress = Progress {
                    next_index,
                    match_index: 0,
                    in_flight: false,
                    transfer: None,
                };
                (peer, progress)
            })
            .collect();
        // Announce leadership at once (Figure 2: "send initial empty
        // AppendEntries RPCs (heartbeat) to each server").
        self.broadcast_append(out);
    }

    /// Sends AppendEntries to `peer`: the entry at `next_index` when one is
    /// durable here and none is in flight, else a heartbeat (when `heartbeat`).
    /// A follower whose `next_index` was compacted away is sent the
    /// snapshot instead (section 7), one chunk at a time.
    fn send_append(&mut self, peer: NodeId, heartbeat: bool, out: &mut Outbox) {
        let Some(progress) = self.progress.get_mut(&peer) else {
            return;
        };
        if progress.transfer.is_some() {
            return;
        }
        if self.core.needs_snapshot(progress.next_index) {
            progress.transfer = Some(self.core.start_transfer(peer, out));
            return;
        }
        let progress = progress.clone();
        let has_entry = progress.next_index <= self.core.durable_index;
        if !(heartbeat || (has_entry && !progress.in_flight)) {
            return;
        }
        let prev_log_index = progress.next_index - 1;
        let entries = if has_entry {
            self.core
                .log
                .get(progress.next_index)
                .cloned()
                .into_iter()
                .collect()
        } else {
            Vec::new()
        };
        // next_index never passes the end of the leader's log.
        let message = self.core.append_request(prev_log_index, entries, 0);
        if has_entry && let Some(p) = self.progress.get_mut(&peer) {
            p.in_flight = true;
        }
        // Everything sent is already durable here (`next_index <=
        // durable_index`) and the term was persisted before the election.
        out.send(peer, Message::AppendEntries(message), Timing::AfterPersist);
    }

    fn broadcast_append(&mut self, out: &mut Outbox) {
        for peer in self.core.peers() {
            self.send_append(peer, true, out);
        }
    }

    /// Figure 2, leaders: commit the highest N held by a majority whose entry
    /// is of the current term.
    fn advance_commit(&mut self, out: &mut Outbox) {
        let progress = &self.progress;
        let match_of = |peer: NodeId| progress.get(&peer).map_or(0, |p| p.match_index);
        let index = match self.config.injected_bug {
            None | Some(InjectedBug::Membership(_)) => self.core.quorum_commit(match_of),
            Some(InjectedBug::CommitWithoutQuorum) => Some(self.core.durable_index),
            Some(InjectedBug::CommitPreviousTermByCounting) => {
                let durable = self.core.durable_index;
                let id = self.core.id;
                Some(
                    self.core
                        .membership()
                        .quorum_index(|peer| if peer == id { durable } else { match_of(peer) }),
                )
            }
        };
        if let Some(index) = index.filter(|&i| i > self.core.commit_index) {
            self.core.commit_to(index);
            self.emit_applies(out);
        }
    }

    fn emit_applies(&mut self, out: &mut Outbox) {
        let before = out.apply.len();
        self.core.emit_applies(out);
        self.pending.applying(&out.apply[before..]);
    }
}

impl RaftVariant for VanillaRaft {
    const NAME: &'static str = "vanilla Raft";

    fn core(&self) -> &RaftCore {
        &self.core
    }

    fn core_mut(&mut self) -> &mut RaftCore {
        &mut self.core
    }

    fn match_index_of(&self, peer: NodeId) -> LogIndex {
        self.progress.get(&peer).map_or(0, |p| p.match_index)
    }

    fn become_follower(&mut self, term: Term, leader: Option<NodeId>, out: &mut Outbox) {
        VanillaRaft::become_follower(self, term, leader, out);
    }

    fn on_tick(&mut self, out: &mut Outbox) {
        if self.core.role == Role::Leader {
            let timeout = 2 * self.config.heartbeat_ticks;
            for (&peer, progress) in &mut self.progress {
                if let Some(transfer) = progress.transfer.as_mut() {
                    self.core.tick_transfer(peer, transfer, timeout, out);
                }
            }
            self.heartbeat_elapsed += 1;
            if self.heartbeat_elapsed >= self.config.heartbeat_ticks {
                self.heartbeat_elapsed = 0;
                self.broadcast_append(out);
            }
            return;
        }
        if self.core.election.tick() {
            self.start_election(out);
        }
    }

    fn on_request(&mut self, request: ClientRequest, out: &mut Outbox) {
        if out.refuse_invalid(&request, false) {
            return;
        }
        if self.core.role != Role::Leader {
            out.reply(request.id, self.core.not_leader(), Timing::Now);
            return;
        }
        if self.core.leader_transfer().is_some() {
            // Handing leadership over: new commands would only delay it.
            out.reply(request.id, ReplyOutcome::Unavailable, Timing::Now);
            return;
        }
        let id = request.id;
        // One client command, one durable write, one sync. Followers get
        // the entry once it is durable here (see `Input::Persisted`).
        let index = self
            .core
            .append_as_leader(vec![EntryPayload::Command(request)], out);
        self.pending.insert(index, id);
    }

    fn on_persisted(&mut self, last_index: LogIndex, last_term: Term, out: &mut Outbox) {
        self.core.persisted(last_index, last_term);
        if self.core.role == Role::Leader {
            self.advance_commit(out);
            for peer in self.core.peers() {
                self.send_append(peer, false, out);
            }
        }
        self.emit_applies(out);
    }

    fn on_applied(&mut self, index: LogIndex, _out: &mut Outbox) {
        self.core.applied(index);
    }

    fn on_append(&mut self, from: NodeId, m: AppendEntries, out: &mut Outbox) {
        // Vanilla's leader steps back one entry at a time: it only needs the
        // rejected index.
        self.core
            .accept_append(from, &m, ConflictHints::RejectedIndex, out);
        self.emit_applies(out);
    }

    fn on_append_response(&mut self, from: NodeId, m: AppendEntriesResponse, out: &mut Outbox) {
        if self.core.role != Role::Leader || m.term != self.core.term {
            return;
        }
        let Some(progress) = self.progress.get_mut(&from) else {
            return;
        };
        // Only an answer that moves the follower on sends the next entry: a
        // stale or duplicated answer sends nothing (else duplicates would
        // multiply the messages in flight; the heartbeat repeats a lost
        // one).
        if m.success && m.match_index > progress.match_index {
            progress.in_flight = false;
            progress.match_index = m.match_index;
            progress.next_index = progress.next_index.max(progress.match_index + 1);
            self.advance_commit(out);
        } else if !m.success
            && m.conflict_index + 1 == progress.next_index
            && progress.next_index > progress.match_index + 1
        {
            // Figure 2: "If AppendEntries fails because of log inconsistency:
            // decrement nextIndex and retry". Stale rejections are ignored,
            // and none takes it below what the follower is known to hold.
            progress.in_flight = false;
            progress.next_index -= 1;
        } else {
            return;
        }
        self.send_append(from, false, out);
    }

    fn on_vote_request(&mut self, from: NodeId, m: RequestVote, out: &mut Outbox) {
        self.core.answer_vote(from, &m, out);
    }

    fn on_vote_response(&mut self, from: NodeId, m: RequestVoteResponse, out: &mut Outbox) {
        if self.core.wins_with(from, &m) {
            self.become_leader(out);
        }
    }

    fn on_install_snapshot(&mut self, from: NodeId, m: InstallSnapshot, out: &mut Outbox) {
        self.core.accept_snapshot(from, m, out);
    }

    fn on_snapshot_response(&mut self, from: NodeId, m: InstallSnapshotResponse, out: &mut Outbox) {
        let Some(progress) = self.progress.get_mut(&from) else {
            return;
        };
        let Some(transfer) = progress.transfer.as_mut() else {
            return;
        };
        if let Some(index) = self.core.snapshot_answered(from, transfer, &m, out) {
            progress.transfer = None;
            progress.in_flight = false;
            progress.match_index = progress.match_index.max(index);
            progress.next_index = progress.match_index + 1;
            self.advance_commit(out);
            self.send_append(from, false, out);
        }
    }

    fn on_transfer_begun(&mut self, target: NodeId, out: &mut Outbox) {
        self.send_append(target, false, out);
    }

    fn on_membership_changed(&mut self, out: &mut Outbox) {
        let next_index = self.core.log.last_index() + 1;
        let fresh = || Progress {
            next_index,
            match_index: 0,
            in_flight: false,
            transfer: None,
        };
        let added = self
            .core
            .adjust_progress(&mut self.progress, |p| p.match_index, fresh, out);
        for peer in added {
            self.send_append(peer, true, out);
        }
        self.advance_commit(out);
    }

    fn on_timeout_now(&mut self, out: &mut Outbox) {
        if self.core.campaign_on_transfer(out) {
            self.become_leader(out);
        }
    }

    fn on_snapshot_taken(&mut self, snapshot: SnapshotMeta, keep_entries: u64, out: &mut Outbox) {
        self.core.snapshot_taken(snapshot, keep_entries, out);
    }

    fn on_snapshot_installed(&mut self, snapshot: SnapshotMeta, out: &mut Outbox) {
        self.core.snapshot_installed(snapshot);
        self.emit_applies(out);
    }
}

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

use std::collections::{BTreeMap, BTreeSet};

use consensus::io::{Input, Outbox, Recovered, ReplyOutcome, Role, Status, Timing};
use consensus::message::{AppendEntries, AppendEntriesResponse, Message, RequestVoteResponse};
use consensus::quorum::quorum_index;
use consensus::raft::{ElectionTimer, RaftCore};
use consensus::{ClientRequest, Consensus, EntryPayload, LogIndex, NodeId, RequestId, Term};

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
}

/// Settings of one node.
#[derive(Clone, Debug)]
pub struct Config {
    /// This node.
    pub id: NodeId,
    /// Every member of the cluster, this node included.
    pub members: Vec<NodeId>,
    /// Base election timeout in ticks; each timeout is drawn from
    /// `[election_timeout_ticks, 2 * election_timeout_ticks)`.
    pub election_timeout_ticks: u64,
    /// Ticks between a leader's heartbeats.
    pub heartbeat_ticks: u64,
    /// Seed of the generator for election timeouts.
    pub seed: u64,
    /// A deliberate bug (tests only).
    pub injected_bug: Option<InjectedBug>,
}

impl Config {
    /// Defaults: election timeout 10 ticks, heartbeat every 2 ticks.
    pub fn new(id: NodeId, members: Vec<NodeId>, seed: u64) -> Self {
        Config {
            id,
            members,
            election_timeout_ticks: 10,
            heartbeat_ticks: 2,
            seed,
            injected_bug: None,
        }
    }
}

/// Figure 2, "Volatile state on leaders", for one follower.
#[derive(Clone, Copy, Debug)]
struct Progress {
    /// Index of the next log entry to send to that server.
    next_index: LogIndex,
    /// Index of the highest log entry known to be replicated on that server.
    match_index: LogIndex,
    /// An AppendEntries carrying an entry is awaiting its response.
    in_flight: bool,
}

/// One vanilla Raft node.
#[derive(Debug)]
pub struct VanillaRaft {
    config: Config,
    core: RaftCore,
    role: Role,
    leader: Option<NodeId>,
    election: ElectionTimer,
    heartbeat_elapsed: u64,
    votes: BTreeSet<NodeId>,
    progress: BTreeMap<NodeId, Progress>,
    /// Requests this leader appended and has not yet applied.
    pending: BTreeMap<LogIndex, RequestId>,
}

impl VanillaRaft {
    /// A node rebuilt from what its storage holds.
    pub fn new(config: Config, recovered: Recovered) -> Self {
        assert!(
            config.heartbeat_ticks >= 1 && config.election_timeout_ticks > config.heartbeat_ticks
        );
        let seed = config.seed ^ config.id.wrapping_mul(0x9E37_79B9);
        VanillaRaft {
            core: RaftCore::new(config.id, config.members.clone(), recovered),
            role: Role::Follower,
            leader: None,
            election: ElectionTimer::new(config.election_timeout_ticks, seed),
            heartbeat_elapsed: 0,
            votes: BTreeSet::new(),
            progress: BTreeMap::new(),
            pending: BTreeMap::new(),
            config,
        }
    }

    /// Figure 2, all servers: "If RPC request or response contains term
    /// T > currentTerm: set currentTerm = T, convert to follower".
    fn become_follower(&mut self, term: Term, leader: Option<NodeId>, out: &mut Outbox) {
        self.core.observe_term(term, out);
        if self.role == Role::Leader {
            // Entries this leader appended may still commit under the next
            // leader; the clients retry there under the same request id, and
            // their sessions make the retry take effect once.
            for (_, request) in std::mem::take(&mut self.pending) {
                out.reply(request, ReplyOutcome::NotLeader { leader }, Timing::Now);
            }
            self.progress.clear();
        }
        self.role = Role::Follower;
        self.leader = leader;
        self.votes.clear();
    }

    fn start_election(&mut self, out: &mut Outbox) {
        self.role = Role::Candidate;
        self.leader = None;
        self.votes = BTreeSet::from([self.config.id]);
        self.election.reset();
        let request = self.core.campaign(out);
        for peer in self.core.peers() {
            out.send(
                peer,
                Message::RequestVote(request.clone()),
                Timing::AfterPersist,
            );
        }
        self.maybe_win(out);
    }

    fn maybe_win(&mut self, out: &mut Outbox) {
        if self.role == Role::Candidate && self.votes.len() >= self.core.majority() {
            self.become_leader(out);
        }
    }

    fn become_leader(&mut self, out: &mut Outbox) {
        self.role = Role::Leader;
        self.leader = Some(self.config.id);
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
    fn send_append(&mut self, peer: NodeId, heartbeat: bool, out: &mut Outbox) {
        let Some(progress) = self.progress.get(&peer).copied() else {
            return;
        };
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
        let Some(prev_log_term) = self.core.log.term(prev_log_index) else {
            unreachable!("next_index never passes the end of the leader's log");
        };
        let message = AppendEntries {
            term: self.core.term,
            leader_id: self.config.id,
            prev_log_index,
            prev_log_term,
            entries,
            leader_commit: self.core.commit_index,
            context: 0,
        };
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

    fn handle_request(&mut self, request: ClientRequest, out: &mut Outbox) {
        if out.refuse_invalid(&request, false) {
            return;
        }
        if self.role != Role::Leader {
            // A follower points at its leader; with no leader known the
            // cluster is unavailable for now.
            let outcome = match self.leader {
                Some(leader) => ReplyOutcome::NotLeader {
                    leader: Some(leader),
                },
                None => ReplyOutcome::Unavailable,
            };
            out.reply(request.id, outcome, Timing::Now);
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

    fn handle_append(&mut self, from: NodeId, m: AppendEntries, out: &mut Outbox) {
        let reject = |term, conflict_index| AppendEntriesResponse {
            term,
            success: false,
            match_index: 0,
            conflict_index,
            conflict_term: 0,
            context: m.context,
        };
        if m.term < self.core.term {
            let response = reject(self.core.term, m.prev_log_index);
            out.send(from, Message::AppendEntriesResponse(response), Timing::Now);
            return;
        }
        // m.term == term: `from` is this term's leader.
        debug_assert!(
            self.role != Role::Leader,
            "two leaders in term {}",
            self.core.term
        );
        if self.role != Role::Follower || self.leader != Some(m.leader_id) {
            self.become_follower(m.term, Some(m.leader_id), out);
        }
        self.election.reset();
        let response = match self.core.append_entries(&m, out) {
            // Vanilla's leader steps back one entry at a time: it only needs
            // the rejected index.
            Err(conflict) => reject(self.core.term, conflict.rejected_prev),
            Ok(match_index) => AppendEntriesResponse {
                term: self.core.term,
                success: true,
                match_index,
                conflict_index: 0,
                conflict_term: 0,
                context: m.context,
            },
        };
        // The acknowledgement promises the entries are on stable storage.
        out.send(
            from,
            Message::AppendEntriesResponse(response),
            Timing::AfterPersist,
        );
        self.emit_applies(out);
    }

    fn handle_append_response(&mut self, from: NodeId, m: AppendEntriesResponse, out: &mut Outbox) {
        if self.role != Role::Leader || m.term != self.core.term {
            return;
        }
        let Some(progress) = self.progress.get_mut(&from) else {
            return;
        };
        progress.in_flight = false;
        if m.success {
            progress.match_index = progress.match_index.max(m.match_index);
            progress.next_index = progress.next_index.max(progress.match_index + 1);
            self.advance_commit(out);
        } else if m.conflict_index + 1 == progress.next_index && progress.next_index > 1 {
            // Figure 2: "If AppendEntries fails because of log inconsistency:
            // decrement nextIndex and retry". Stale rejections are ignored.
            progress.next_index -= 1;
        }
        self.send_append(from, false, out);
    }

    fn handle_vote_request(
        &mut self,
        from: NodeId,
        m: consensus::message::RequestVote,
        out: &mut Outbox,
    ) {
        if self.core.answer_vote(from, &m, out) {
            self.election.reset();
        }
    }

    fn handle_vote_response(&mut self, from: NodeId, m: RequestVoteResponse, out: &mut Outbox) {
        if self.role == Role::Candidate && m.term == self.core.term && m.vote_granted {
            self.votes.insert(from);
            self.maybe_win(out);
        }
    }

    /// Figure 2, leaders: commit the highest N held by a majority whose entry
    /// is of the current term.
    fn advance_commit(&mut self, out: &mut Outbox) {
        let matches = self.progress.values().map(|p| p.match_index);
        let index = match self.config.injected_bug {
            None => self.core.quorum_commit(matches),
            Some(InjectedBug::CommitWithoutQuorum) => Some(self.core.durable_index),
            Some(InjectedBug::CommitPreviousTermByCounting) => {
                let mut all: Vec<LogIndex> = matches.collect();
                all.push(self.core.durable_index);
                Some(quorum_index(&all))
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
        for entry in &out.apply[before..] {
            self.pending.remove(&entry.index);
        }
    }

    fn handle_persisted(&mut self, last_index: LogIndex, last_term: Term, out: &mut Outbox) {
        self.core.persisted(last_index, last_term);
        if self.role == Role::Leader {
            self.advance_commit(out);
            for peer in self.core.peers() {
                self.send_append(peer, false, out);
            }
        }
        self.emit_applies(out);
    }

    fn tick(&mut self, out: &mut Outbox) {
        if self.role == Role::Leader {
            self.heartbeat_elapsed += 1;
            if self.heartbeat_elapsed >= self.config.heartbeat_ticks {
                self.heartbeat_elapsed = 0;
                self.broadcast_append(out);
            }
            return;
        }
        if self.election.tick() {
            self.start_election(out);
        }
    }
}

impl Consensus for VanillaRaft {
    fn step(&mut self, input: Input, out: &mut Outbox) {
        match input {
            Input::Tick => self.tick(out),
            Input::Request(request) => self.handle_request(request, out),
            Input::FastWrite(request) => {
                let reason = "vanilla Raft has no nilext fast path; send the write to the leader"
                    .to_string();
                out.reply_fast(request.id, ReplyOutcome::Rejected(reason), Timing::Now);
            }
            Input::Persisted {
                last_index,
                last_term,
            } => self.handle_persisted(last_index, last_term, out),
            Input::Applied { index } => self.core.applied(index),
            Input::Message { from, message } => {
                if message.term() > self.core.term {
                    self.become_follower(message.term(), message.leader_hint(), out);
                }
                match message {
                    Message::AppendEntries(m) => self.handle_append(from, m, out),
                    Message::AppendEntriesResponse(m) => self.handle_append_response(from, m, out),
                    Message::RequestVote(m) => self.handle_vote_request(from, m, out),
                    Message::RequestVoteResponse(m) => self.handle_vote_response(from, m, out),
                    Message::DurabilityLogRequest(_)
                    | Message::DurabilityLogResponse(_)
                    | Message::DurabilityForward(_) => {}
                }
            }
        }
    }

    fn status(&self) -> Status {
        self.core.status(self.role, self.leader)
    }
}

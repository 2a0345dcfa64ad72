//! Nil-ext Raft: the Skyros protocol ("Exploiting Nil-Externality for Fast
//! Replicated Storage", Ganesan et al., SOSP 2021, sections 4.2 to 4.8) on
//! top of `raft-optimized`.
//!
//! # Message flow
//!
//! *Nilext writes (4.3).* Put and delete return nothing but an
//! acknowledgement, so they need not be ordered before the client is told
//! they are done; they only need to be durable. The client sends such a
//! write to every replica ([`Input::FastWrite`]). (A multi-put returns
//! nothing too, but takes the leader's path: see "Why only writes of one key
//! take the fast path" below.) A replica in normal
//! operation (a follower that knows its leader, or a leader that has
//! finished recovery) appends it to its **durability log**, syncs, and acks
//! with its term. The client is done once a fast quorum of replicas acked in
//! one term, the leader among them: one round trip, no leader-to-follower
//! message on the way. Appends that arrive while the previous one is syncing
//! share the next sync (group commit). A duplicate (same client id and
//! sequence) keeps its first position and is acked again.
//!
//! *Background ordering (4.4).* The leader moves its durability log, in
//! order, into the Raft log through raft-optimized's batched, pipelined
//! replication. When a replica applies an entry, the record leaves its
//! durability log (on disk with the replica's next durable write: a removal
//! needs no sync of its own, see `write_removals`).
//!
//! *Reads (4.4).* Reads go to the leader, which confirms its leadership as
//! raft-optimized does (ReadIndex or lease). If a record still in its
//! durability log touches a key the read needs, the leader first orders its
//! whole durability log and answers once that is applied (two round trips);
//! so it does when a command it proposed itself (a slow-path write, an
//! update) touches the read's keys and is not yet applied while its
//! durability log holds records, because a fast write it acknowledged is
//! ordered after that command and may have completed (`NilextRaft::read`
//! says why); otherwise at once.
//!
//! *Non-nilext updates (4.4)* (compare-and-swap, increment), multi-puts and
//! writes on the slow path go to the leader, which orders its durability log
//! first, then the update.
//!
//! *Leader change (4.5).* A new leader serves nothing until it has
//! recovered: it asks every replica for its durability log
//! ([`DurabilityLogRequest`]); a replica that answers has moved to the new
//! term, so it no longer acks writes of the old one. With the logs of a
//! majority (its own included) the leader builds the recovered log: its own
//! records in its order, then those of the others it lacks, and orders them
//! before anything else. Every replica drops a record when it applies it, so
//! a record the new term orders leaves every durability log. (A record that
//! no recovery gathered was never completed; it stays in the few logs that
//! hold it until a later leader orders it, where the session table makes a
//! late duplicate harmless. Dropping such records at a term change would
//! need a marker entry after the recovered ones: dropping them at the new
//! term's first entry, before the recovered records are committed, could
//! lose a completed write if the new leader then crashed.)
//!
//! # The fast quorum, and why it is every replica
//!
//! Skyros completes a write on f + ceil(f/2) + 1 acks and, at recovery,
//! keeps a record present in ceil(f/2) + 1 of the gathered logs and orders a
//! before b where that many logs say so. For f >= 2 this rule can meet a
//! cycle: with five replicas, the old leader crashed and one cut off, the
//! other three may hold `c a b`, `a b c`, `b c a`; each of a->b, b->c, c->a
//! has 2 of 3 votes, and there are executions consistent with these logs
//! that require each of the three orders, so no rule over the logs is always
//! right (`docs/architecture.md`, "Nil-ext Raft").
//!
//! This crate therefore uses a **unanimous fast quorum**
//! ([`consensus::quorum::nilext_fast_quorum`]): all n replicas, the leader
//! among them, in one term. For f = 1 that is exactly the paper's 3 of 3;
//! for f = 2 it is 5 of 5 instead of 4 of 5. Then every completed write is
//! in every replica's durability log, and each log orders completed writes
//! consistently with real time (a write invoked after another completed is
//! appended after it everywhere). So the new leader's own log already holds
//! every completed write in a valid order; the records it adds from other
//! logs were never completed and may take effect at any point after their
//! invocation, or never. The price: with one replica down or slow, nilext
//! writes take the slow path (the client sends them to the leader after its
//! fast-path timeout, under the same request id; exactly-once sessions make
//! the two paths safe together). The five-replica cycle scenario is a
//! regression test in `tests/`.
//!
//! Restarts lose nothing: the durability log is synced before any ack, so a
//! restarted replica has all it acked and may vote at once.
//!
//! # Membership changes
//!
//! The fast quorum is every voter of the configuration in force at the
//! leader when it acknowledges: its acknowledgement names those voters
//! (`ReplyOutcome::DurableAck::voters`), and a client completes a write
//! once each of them acknowledged in the leader's term
//! (`consensus::quorum::FastAcks`). Recovery gathers the durability logs of
//! a majority of the voters of the new leader's configuration. What keeps
//! "every completed write is in the new leader's own log, in a valid
//! order" true across changes ([`consensus::membership`]):
//!
//! - Before a leader appends a configuration entry, it moves its whole
//!   durability log into the Raft log, ahead of that entry. A server that
//!   becomes a voter by that entry lacks in its durability log the writes
//!   completed before; but it holds the entry only if it holds the log
//!   before it, so it has them ordered, and ordered entries come before any
//!   unordered record in every later order.
//! - While a configuration entry is not committed, the leader acknowledges
//!   no fast write (they go to the slow path). Otherwise a write completed
//!   with the acknowledgements of the new configuration's voters could be
//!   missed by a voter of the old one, which might lead again if the entry
//!   were truncated (a removed server, for instance).
//! - Once it is committed, every later leader has it in its log, so no
//!   configuration before it comes back.
//!
//! The simulator changes membership at random under every fault, fast
//! writes racing the changes and leader changes; its checks include
//! linearizability and that no acknowledged write is lost.
//!
//! # Why only writes of one key take the fast path
//!
//! Writes that arrive at the replicas concurrently may sit in their
//! durability logs in different orders. The leader's reads assume its own
//! order; a new leader orders what it recovers as its own log has it. The
//! two orders may differ only for writes that were concurrent, and for
//! writes of one key each that difference is never seen: writes of
//! different keys commute, and a read of a key with a pending write waits
//! until the order is committed, after which no leader can change it. A
//! write of several keys breaks this. Simulator seed 8801550 (three
//! replicas, lease reads): a multi-put M of k4 and k5 reached the followers
//! first, the leader late; a put W of k4 completed; a read of k5 at the
//! leader, after W completed, found no pending write of k5 and missed M;
//! then M completed, the leader was cut off, and the new leader, whose log
//! held M before W, ordered M first, so the final k4 showed W after M,
//! although the read had placed M after W. So `Command::takes_fast_path`
//! admits put and delete only; a multi-put goes to the leader, which orders
//! it in its Raft log, where no later leader reorders it.
//!
//! # Leftover records
//!
//! A record is dropped from a durability log once its command is applied
//! there. One that the leader never orders would stay for good: a write
//! whose copy reached the followers but not the leader, whose client gave
//! up or moved to the slow path before the leader had it. So a follower
//! forwards to its leader the records it has held for
//! `Config::forward_after_ticks`, `Config::chunk_bytes_max` at a time, once
//! per heartbeat, each again only after another `forward_after_ticks`; the
//! leader orders those it lacks. Ordering one that already took effect is
//! harmless: the session table answers it with its first result. A copy
//! that arrives after its write was applied here is not stored at all: the
//! runtime answers it with that result
//! (`consensus::StateMachine::answer_fast_write`). A follower forwards only
//! once it has applied what the leader had committed a heartbeat before: a
//! follower further behind may hold records that entries it has not yet
//! received apply. After installing a snapshot a follower drops the records
//! the snapshot settled (at or below their client's latest sequence
//! number in it), as it drops those it applies.

use std::collections::{BTreeMap, HashMap, HashSet, VecDeque};

use consensus::io::{Input, Outbox, Recovered, ReplyOutcome, Role, Status, Timing, Write};
use consensus::message::{DurabilityForward, DurabilityLogRequest, DurabilityLogResponse, Message};
use consensus::raft::RaftVariant;
use consensus::{
    ClientRequest, Command, Consensus, DurableRecord, EntryPayload, Key, NodeId, RequestId, Term,
};
use raft_optimized::OptimizedRaft;

pub use raft_optimized::{Config as RaftConfig, ReadMode};

/// Settings of one Nil-ext node.
#[derive(Clone, Debug)]
pub struct Config {
    /// The underlying raft-optimized settings (members, timeouts, batches,
    /// read mode).
    pub raft: RaftConfig,
    /// The leader orders its durability log at least every this many ticks.
    /// Default 1.
    pub ordering_interval_ticks: u64,
    /// Most records a durability log holds; beyond it fast-path writes are
    /// refused as unavailable (the client then takes the slow path).
    /// Default 100,000.
    pub durability_log_max: usize,
    /// Most bytes of records a durability log holds (by
    /// `DurableRecord::size_bytes`), likewise. Default 64 MiB.
    pub durability_log_bytes_max: usize,
    /// Most bytes of records in one chunk of a durability log sent to a
    /// recovering leader, or forwarded to the leader (always at least one
    /// record). Default 1 MiB.
    pub chunk_bytes_max: usize,
    /// A follower that has held a record this many ticks forwards it to the
    /// leader, which orders it if it lacks it (see "Leftover records").
    /// Default 50 (five base election timeouts).
    pub forward_after_ticks: u64,
    /// A deliberate bug, for tests that show the simulator catches it.
    /// Never set outside tests.
    pub injected_bug: Option<InjectedBug>,
}

/// Deliberate bugs, each undoing one rule this crate needs, for tests that
/// show the simulator's checks catch them.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum InjectedBug {
    /// Reads ignore the leader's own unapplied proposals (the second rule
    /// of `NilextRaft::read`).
    ReadsIgnoreUnappliedProposals,
    /// Multi-puts are taken on the fast path (see "Why only writes of one
    /// key take the fast path").
    MultiPutOnFastPath,
    /// Followers never forward leftover records (see "Leftover records"):
    /// a record no recovery gathered waits in a durability log for ever.
    LeftoverRecordsNeverForwarded,
    /// The leader appends a configuration entry without first ordering its
    /// durability log ahead of it (see "Membership changes").
    NoOrderingBeforeConfig,
    /// The leader acknowledges fast writes while a configuration entry is
    /// uncommitted (see "Membership changes").
    FastAcksWhileConfigPending,
}

impl Config {
    /// Defaults around raft-optimized's defaults.
    pub fn new(id: NodeId, members: Vec<NodeId>, seed: u64) -> Self {
        Config {
            raft: RaftConfig::new(id, members, seed),
            ordering_interval_ticks: 1,
            durability_log_max: 100_000,
            durability_log_bytes_max: 64 << 20,
            chunk_bytes_max: 1 << 20,
            forward_after_ticks: 50,
            injected_bug: None,
        }
    }

    /// Checks the settings fit together: raft-optimized's, and chunks that
    /// fit in a peer message.
    pub fn validate(&self) -> Result<(), String> {
        self.raft.validate()?;
        if self.durability_log_max == 0 || self.durability_log_bytes_max == 0 {
            return Err("the durability log must hold at least one record".into());
        }
        if self.chunk_bytes_max == 0 || !consensus::limits::fits_in_a_message(self.chunk_bytes_max)
        {
            return Err(format!(
                "chunk_bytes_max must be at least 1, and a chunk plus one largest record must fit \
                 in a peer message of {} bytes",
                consensus::limits::PEER_MESSAGE_BYTES_MAX
            ));
        }
        if self.forward_after_ticks == 0 {
            return Err("forward_after_ticks must be at least 1".into());
        }
        Ok(())
    }
}

/// A new leader's recovery in progress.
#[derive(Debug)]
struct Recovery {
    term: Term,
    /// Durability logs gathered so far, by replica (this node's included),
    /// whole or in part.
    logs: BTreeMap<NodeId, Vec<DurableRecord>>,
    /// Where each replica whose log is not whole yet goes on.
    next: BTreeMap<NodeId, u64>,
    ticks: u64,
}

impl Recovery {
    /// The replicas whose logs are here whole (this node's always is).
    fn complete(&self) -> impl Iterator<Item = NodeId> + '_ {
        self.logs
            .keys()
            .copied()
            .filter(|id| !self.next.contains_key(id))
    }
}

/// How many pending writes touch each key.
#[derive(Debug, Default)]
struct KeyCounts(HashMap<Key, usize>);

impl KeyCounts {
    fn add(&mut self, command: &Command) {
        for key in command.keys() {
            *self.0.entry(key.to_vec()).or_default() += 1;
        }
    }

    fn remove(&mut self, command: &Command) {
        for key in command.keys() {
            if let Some(count) = self.0.get_mut(key) {
                *count -= 1;
                if *count == 0 {
                    self.0.remove(key);
                }
            }
        }
    }

    fn touches(&self, keys: &[&[u8]]) -> bool {
        keys.iter().any(|k| self.0.contains_key(*k))
    }

    fn clear(&mut self) {
        self.0.clear();
    }
}

/// A record in the durability log, with the tick it arrived at.
#[derive(Debug)]
struct Slot {
    record: DurableRecord,
    arrived_tick: u64,
    /// When it was last forwarded to the leader.
    forwarded_tick: Option<u64>,
}

/// The durability log: records in order (by position, which only grows),
/// with indexes for lookups.
#[derive(Debug, Default)]
struct DurabilityLog {
    records: BTreeMap<u64, Slot>,
    position_of: HashMap<RequestId, u64>,
    next_position: u64,
    /// How many records touch each key.
    keys: KeyCounts,
    /// Bytes of the records, by `DurableRecord::size_bytes`.
    bytes: usize,
}

impl DurabilityLog {
    fn from_records(records: Vec<DurableRecord>, now_tick: u64) -> Self {
        let mut log = DurabilityLog::default();
        for record in records {
            log.push(record, now_tick);
        }
        log
    }

    fn len(&self) -> usize {
        self.records.len()
    }

    fn contains(&self, id: &RequestId) -> bool {
        self.position_of.contains_key(id)
    }

    fn push(&mut self, record: DurableRecord, now_tick: u64) {
        debug_assert!(
            !self.contains(&record.request.id),
            "a record is in the log once"
        );
        self.keys.add(&record.request.command);
        self.bytes += record.size_bytes();
        self.position_of
            .insert(record.request.id, self.next_position);
        self.records.insert(
            self.next_position,
            Slot {
                record,
                arrived_tick: now_tick,
                forwarded_tick: None,
            },
        );
        self.next_position += 1;
    }

    fn remove(&mut self, id: &RequestId) -> bool {
        let Some(position) = self.position_of.remove(id) else {
            return false;
        };
        if let Some(slot) = self.records.remove(&position) {
            self.keys.remove(&slot.record.request.command);
            self.bytes -= slot.record.size_bytes();
        }
        true
    }

    fn is_empty(&self) -> bool {
        self.records.is_empty()
    }

    fn touches(&self, keys: &[&[u8]]) -> bool {
        self.keys.touches(keys)
    }

    fn iter(&self) -> impl Iterator<Item = &DurableRecord> {
        self.records.values().map(|slot| &slot.record)
    }

    /// Records from position `from` up to (not including) `end`, at most
    /// `bytes_max` of them but at least one; with the position after the
    /// last one taken, and whether none is left before `end`.
    fn chunk(&self, from: u64, end: u64, bytes_max: usize) -> (Vec<DurableRecord>, u64, bool) {
        if from >= end {
            // Nothing left; or this replica restarted since the chunk before
            // and numbers its records from 0 again. What it has not handed
            // over then are extras: every completed write is in the
            // recovering leader's own log.
            return (Vec::new(), from, true);
        }
        let mut records = Vec::new();
        let mut bytes = 0;
        let mut next = from;
        for (&position, slot) in self.records.range(from..end) {
            let size = slot.record.size_bytes();
            if !records.is_empty() && bytes + size > bytes_max {
                return (records, next, false);
            }
            bytes += size;
            records.push(slot.record.clone());
            next = position + 1;
        }
        (records, end, true)
    }

    /// Records to forward at `now`: those that arrived, and were last
    /// forwarded, `age` ticks ago or earlier; oldest first, at most
    /// `bytes_max` of them but at least one. Marks them forwarded.
    fn take_due_for_forwarding(
        &mut self,
        now: u64,
        age: u64,
        bytes_max: usize,
    ) -> Vec<DurableRecord> {
        let due = |tick: u64| tick.saturating_add(age) <= now;
        let mut records = Vec::new();
        let mut bytes = 0;
        for slot in self.records.values_mut() {
            if !due(slot.arrived_tick) || slot.forwarded_tick.is_some_and(|t| !due(t)) {
                continue;
            }
            let size = slot.record.size_bytes();
            if !records.is_empty() && bytes + size > bytes_max {
                break;
            }
            bytes += size;
            slot.forwarded_tick = Some(now);
            records.push(slot.record.clone());
        }
        records
    }
}

/// One Nil-ext Raft node.
#[derive(Debug)]
pub struct NilextRaft {
    config: Config,
    inner: OptimizedRaft,
    durability_log: DurabilityLog,
    /// Records this leader has handed to the Raft log in its term.
    ordered: HashSet<RequestId>,
    /// Commands this leader proposed outside the durability log (slow-path
    /// writes, non-nilext updates) and has not yet applied, with how many
    /// times each was proposed; and the keys they touch. See `read`.
    proposed: HashMap<RequestId, u32>,
    proposed_keys: KeyCounts,
    /// Fast-path writes waiting for the next durability-log sync.
    waiting_writes: Vec<ClientRequest>,
    /// One flag per persist job issued and not yet durable (first in, first
    /// out): whether it appended to the durability log.
    jobs: VecDeque<bool>,
    appended_this_step: bool,
    /// Applied records gone from the in-memory durability log whose removal
    /// from storage waits for the next durable write (see `step`).
    pending_removals: Vec<RequestId>,
    recovery: Option<Recovery>,
    /// This node leads and has recovered: it may ack writes and serve.
    recovered: bool,
    /// The role and term last reported by raft-optimized.
    role_and_term: (Role, Term),
    /// The term of the recovery this replica answers, and the end of what
    /// it hands over: records that arrived after the first chunk was asked
    /// for are not part of it.
    answering: Option<(Term, u64)>,
    ticks: u64,
    /// The highest commit index heard from a leader (in AppendEntries).
    leader_commit_seen: consensus::LogIndex,
    /// `leader_commit_seen` at the last forwarding tick: a follower
    /// forwards leftover records only once it has applied up to it.
    commit_mark: consensus::LogIndex,
}

impl NilextRaft {
    /// A node rebuilt from what its storage holds. Panics on settings that
    /// [`Config::validate`] refuses.
    pub fn new(config: Config, recovered: Recovered) -> Self {
        if let Err(problem) = config.validate() {
            panic!("invalid raft-nilext settings: {problem}");
        }
        let durability_log = DurabilityLog::from_records(recovered.durability_log.clone(), 0);
        let inner = OptimizedRaft::new(
            config.raft.clone(),
            Recovered {
                durability_log: Vec::new(),
                ..recovered
            },
        );
        let status = inner.status();
        NilextRaft {
            role_and_term: (status.role, status.term),
            config,
            inner,
            durability_log,
            ordered: HashSet::new(),
            proposed: HashMap::new(),
            proposed_keys: KeyCounts::default(),
            waiting_writes: Vec::new(),
            jobs: VecDeque::new(),
            appended_this_step: false,
            pending_removals: Vec::new(),
            recovery: None,
            recovered: false,
            answering: None,
            ticks: 0,
            leader_commit_seen: 0,
            commit_mark: 0,
        }
    }

    /// Records in this node's durability log, in order (for tests and
    /// status).
    pub fn durability_log(&self) -> Vec<DurableRecord> {
        self.durability_log.iter().cloned().collect()
    }

    fn core(&self) -> &consensus::raft::RaftCore {
        self.inner.core()
    }

    /// Normal operation (section 4.3): a follower that knows its leader, or
    /// a leader that has recovered; a voter either way (only voters'
    /// acknowledgements count).
    fn in_normal_operation(&self) -> bool {
        let status = self.inner.status();
        if !self.core().is_voter() {
            return false;
        }
        match status.role {
            Role::Leader => self.recovered,
            Role::Follower => status.leader.is_some(),
            Role::Candidate | Role::PreCandidate => false,
        }
    }

    fn dl_write_in_flight(&self) -> bool {
        self.jobs.iter().any(|appended| *appended)
    }

    // ----- the fast path -----

    fn fast_write(&mut self, request: ClientRequest, out: &mut Outbox) {
        // A nilext write can report no execution error, so an invalid one is
        // refused before it is made durable.
        if out.refuse_invalid(&request, true) {
            return;
        }
        let multi_put_bug = self.config.injected_bug == Some(InjectedBug::MultiPutOnFastPath)
            && matches!(request.command, consensus::Command::MultiPut { .. });
        if !request.command.takes_fast_path() && !multi_put_bug {
            let reason = "only put and delete take the fast path".to_string();
            out.reply_fast(request.id, ReplyOutcome::Rejected(reason), Timing::Now);
            return;
        }
        let waiting_bytes: usize = self
            .waiting_writes
            .iter()
            .map(|r| consensus::types::ENTRY_FRAMING_BYTES + r.command.encoded_bound())
            .sum();
        if !self.in_normal_operation()
            || self.config_change_pending()
            || self.durability_log.len() + self.waiting_writes.len()
                >= self.config.durability_log_max
            || self.durability_log.bytes + waiting_bytes >= self.config.durability_log_bytes_max
        {
            out.reply_fast(request.id, ReplyOutcome::Unavailable, Timing::Now);
            return;
        }
        if self.durability_log.contains(&request.id) {
            // A duplicate keeps the first arrival's position; its ack waits
            // for that record's sync if it is still in flight.
            let ack = self.ack();
            out.reply_fast(request.id, ack, Timing::AfterPersist);
            return;
        }
        self.waiting_writes.push(request);
        if !self.dl_write_in_flight() {
            self.flush_writes(out);
        }
    }

    fn ack(&self) -> ReplyOutcome {
        let status = self.inner.status();
        ReplyOutcome::DurableAck {
            term: status.term,
            from_leader: status.role == Role::Leader,
            voters: status.membership.voters,
        }
    }

    /// As leader: a configuration entry in the log is not committed yet.
    /// The leader then acknowledges no fast write (see "Membership
    /// changes"): a write it acknowledged with one configuration's voters
    /// must stay safe if that entry is truncated and the configuration
    /// before comes back.
    fn config_change_pending(&self) -> bool {
        self.inner.status().role == Role::Leader
            && self.core().membership_change_pending()
            && self.config.injected_bug != Some(InjectedBug::FastAcksWhileConfigPending)
    }

    /// A membership change, as leader: first every record of the
    /// durability log goes into the Raft log, ahead of the configuration
    /// entry (see "Membership changes").
    fn change_membership(&mut self, input: Input, out: &mut Outbox) {
        if self.inner.status().role == Role::Leader {
            let busy = if !self.recovered {
                Some("the new leader is still recovering")
            } else if self.inner.transferring_leadership() {
                Some("a leadership transfer is under way")
            } else {
                None
            };
            if let Some(reason) = busy {
                out.membership_change = Some(Err(consensus::MembershipError::Busy(reason.into())));
                return;
            }
            if self.config.injected_bug != Some(InjectedBug::NoOrderingBeforeConfig) {
                self.order_all(out);
                self.inner.flush_now(out);
            }
        }
        self.inner.step(input, out);
    }

    /// Appends the waiting fast-path writes to the durability log: one
    /// durable write for all of them, acked once it is synced.
    fn flush_writes(&mut self, out: &mut Outbox) {
        if self.waiting_writes.is_empty() {
            return;
        }
        let waiting = std::mem::take(&mut self.waiting_writes);
        if !self.in_normal_operation() {
            for request in waiting {
                out.reply_fast(request.id, ReplyOutcome::Unavailable, Timing::Now);
            }
            return;
        }
        let term = self.inner.status().term;
        let ack = self.ack();
        let mut records = Vec::with_capacity(waiting.len());
        for request in waiting {
            let id = request.id;
            if !self.durability_log.contains(&id) {
                let record = DurableRecord { request, term };
                self.durability_log.push(record.clone(), self.ticks);
                records.push(record);
            }
            out.reply_fast(id, ack.clone(), Timing::AfterPersist);
        }
        if !records.is_empty() {
            out.persist.push(Write::DurabilityAppend(records));
            self.appended_this_step = true;
        }
        if self.inner.status().role == Role::Leader
            && self.durability_log.len() - self.ordered.len() >= self.config.raft.batch_entries_max
        {
            self.order_durability_log(out);
        }
    }

    // ----- ordering, reads, updates -----

    /// Hands every record not yet ordered to the Raft log, in order.
    /// Returns false when the proposal queue refused one: it and every later
    /// record wait for the next ordering.
    fn order_durability_log(&mut self, out: &mut Outbox) -> bool {
        if self.inner.status().role != Role::Leader || !self.recovered {
            return true;
        }
        let unordered: Vec<ClientRequest> = self
            .durability_log
            .iter()
            .filter(|r| !self.ordered.contains(&r.request.id))
            .map(|r| r.request.clone())
            .collect();
        for request in unordered {
            let id = request.id;
            if !self.inner.propose(request, out) {
                // Refused (a full proposal queue): this record and every
                // later one wait for the next ordering, so that the Raft log
                // keeps the durability log's order.
                return false;
            }
            self.ordered.insert(id);
        }
        true
    }

    /// Orders every record now, appending the queued proposals to the log
    /// to make room whenever the queue is full: a read or an update that
    /// must come after every acknowledged write cannot leave one behind.
    /// Each round orders at least one record (the queue holds at least one
    /// proposal), so this ends.
    fn order_all(&mut self, out: &mut Outbox) {
        while !self.order_durability_log(out) {
            self.inner.flush_now(out);
        }
    }

    fn request(&mut self, request: ClientRequest, out: &mut Outbox) {
        if self.inner.status().role != Role::Leader {
            self.inner.step(Input::Request(request), out);
            return;
        }
        if !self.recovered || (!request.command.is_read() && self.inner.transferring_leadership()) {
            out.reply(request.id, ReplyOutcome::Unavailable, Timing::Now);
            return;
        }
        if out.refuse_invalid(&request, false) {
            return;
        }
        if request.command.is_read() {
            self.read(request, out);
            return;
        }
        // Non-nilext updates, and writes on the slow path: after every
        // write this leader has acked.
        self.order_all(out);
        self.propose_tracked(request, out);
    }

    /// Proposes a command outside the durability log, tracking it for
    /// `read` until it is applied.
    fn propose_tracked(&mut self, request: ClientRequest, out: &mut Outbox) {
        let id = request.id;
        let command = request.command.clone();
        if self.inner.propose(request, out) {
            *self.proposed.entry(id).or_default() += 1;
            self.proposed_keys.add(&command);
        }
    }

    /// Serves a read at the leader (section 4.4), at an index that includes
    /// every write the read must see:
    ///
    /// - a record in the durability log touches the read's keys: the leader
    ///   orders its whole durability log and reads at an index that includes
    ///   it (the paper's rule);
    /// - a command this leader proposed outside the durability log (a
    ///   slow-path write, a non-nilext update) touches the read's keys, is
    ///   not yet applied, and the durability log is not empty: the same. A
    ///   fast write the leader acknowledges is ordered after everything the
    ///   leader already proposed, so once such a write completes, a read
    ///   invoked after it must see those earlier commands too, committed or
    ///   not (simulator seed 7070681: a slow-path multi-put of k2 and k3, a
    ///   fast put of k3 completed after it, and a read of k2 that missed the
    ///   multi-put). With the durability log empty, every completed fast
    ///   write is applied here, and with it everything ordered before it;
    ///
    /// - otherwise at the commit index, as raft-optimized reads.
    ///
    /// Commands proposed earlier that touch none of the read's keys need not
    /// be visible: the read does not observe them.
    fn read(&mut self, request: ClientRequest, out: &mut Outbox) {
        let keys = request.command.keys();
        let proposals_count =
            self.config.injected_bug != Some(InjectedBug::ReadsIgnoreUnappliedProposals);
        let must_order = self.durability_log.touches(&keys)
            || (proposals_count
                && !self.durability_log.is_empty()
                && self.proposed_keys.touches(&keys));
        if must_order && self.inner.transferring_leadership() {
            // Ordering waits until the transfer ends (raft-optimized appends
            // nothing meanwhile); the client tries again.
            out.reply(request.id, ReplyOutcome::Unavailable, Timing::Now);
        } else if must_order {
            self.order_all(out);
            self.inner.flush_now(out);
            let index = self.inner.last_index();
            self.inner.read(request, index, out);
        } else {
            self.inner.read(request, 0, out);
        }
    }

    // ----- leader change -----

    fn start_recovery(&mut self, out: &mut Outbox) {
        let term = self.inner.status().term;
        self.recovered = false;
        self.ordered.clear();
        let own = self.durability_log.iter().cloned().collect();
        // The voters of the configuration in force: every completed write
        // is in each one's durability log or ordered in the Raft log.
        let peers = self.core().voting_peers();
        self.recovery = Some(Recovery {
            term,
            logs: BTreeMap::from([(self.config.raft.id, own)]),
            next: peers.iter().map(|&p| (p, 0)).collect(),
            ticks: 0,
        });
        for peer in peers {
            let request = DurabilityLogRequest { term, from: 0 };
            out.send(peer, Message::DurabilityLogRequest(request), Timing::Now);
        }
        self.maybe_finish_recovery(out);
    }

    fn maybe_finish_recovery(&mut self, out: &mut Outbox) {
        let enough = self
            .recovery
            .as_ref()
            .is_some_and(|r| self.core().is_quorum(r.complete(), false));
        if !enough {
            return;
        }
        let Some(recovery) = self.recovery.take() else {
            return;
        };
        // This node's own records in its order (they hold every completed
        // write, in a valid order), then the others' records it lacks, from
        // every log gathered, whole or in part.
        let mut seen = HashSet::new();
        let own = recovery
            .logs
            .get(&self.config.raft.id)
            .cloned()
            .unwrap_or_default();
        let others = recovery
            .logs
            .into_iter()
            .filter(|(id, _)| *id != self.config.raft.id)
            .flat_map(|(_, records)| records);
        let merged: Vec<DurableRecord> = own
            .into_iter()
            .chain(others)
            .filter(|r| seen.insert(r.request.id))
            .collect();
        self.durability_log = DurabilityLog::from_records(merged.clone(), self.ticks);
        out.persist.push(Write::DurabilityReplace(merged));
        self.recovered = true;
        self.order_durability_log(out);
    }

    /// Hands the recovering leader of `m.term` the next chunk of this
    /// replica's durability log (section 4.5, in chunks that fit a message
    /// however long the log is).
    fn on_durability_log_request(
        &mut self,
        from: NodeId,
        m: DurabilityLogRequest,
        out: &mut Outbox,
    ) {
        let term = self.inner.status().term;
        if m.term < term {
            return;
        }
        // From here on this replica acks only in the new term (section 4.5:
        // stop acking the old term before handing the log over).
        self.inner.adopt_term(m.term, Some(from), out);
        let end = match self.answering {
            Some((answering, end)) if answering == m.term => end,
            _ => {
                let end = self.durability_log.next_position;
                self.answering = Some((m.term, end));
                end
            }
        };
        let (records, next, done) =
            self.durability_log
                .chunk(m.from, end, self.config.chunk_bytes_max);
        let response = DurabilityLogResponse {
            term: m.term,
            from: m.from,
            records,
            next,
            done,
        };
        out.send(from, Message::DurabilityLogResponse(response), Timing::Now);
    }

    fn on_durability_log_response(
        &mut self,
        from: NodeId,
        m: DurabilityLogResponse,
        out: &mut Outbox,
    ) {
        let Some(recovery) = self.recovery.as_mut() else {
            return;
        };
        // A chunk of another term, a duplicate, or one out of order is
        // ignored; the tick asks again from where this replica stands.
        if recovery.term != m.term || recovery.next.get(&from) != Some(&m.from) {
            return;
        }
        recovery.logs.entry(from).or_default().extend(m.records);
        if m.done {
            recovery.next.remove(&from);
            self.maybe_finish_recovery(out);
        } else {
            recovery.next.insert(from, m.next);
            let request = DurabilityLogRequest {
                term: m.term,
                from: m.next,
            };
            out.send(from, Message::DurabilityLogRequest(request), Timing::Now);
        }
    }

    /// The leader orders forwarded records it lacks (see "Leftover records"
    /// in the crate docs).
    fn on_forward(&mut self, from: NodeId, m: DurabilityForward, out: &mut Outbox) {
        let status = self.inner.status();
        if status.role != Role::Leader || !self.recovered || m.term != status.term {
            return;
        }
        if !status.membership.contains(from) {
            // A server removed, which no longer applies the log: its
            // records would be ordered again at every forward.
            return;
        }
        for record in m.records {
            let id = record.request.id;
            if !self.durability_log.contains(&id) && !self.proposed.contains_key(&id) {
                self.propose_tracked(record.request, out);
            }
        }
    }

    /// A follower forwards to its leader the records it has held for
    /// `forward_after_ticks` (see "Leftover records").
    fn forward_old_records(&mut self, out: &mut Outbox) {
        let status = self.inner.status();
        let (Role::Follower, Some(leader)) = (status.role, status.leader) else {
            return;
        };
        if !status.membership.contains(status.id) {
            // Removed: the leader takes no records from it.
            return;
        }
        // Only a follower that has applied what the leader had committed a
        // heartbeat ago forwards: one further behind may hold records that
        // entries it has not received yet apply, and forwarding them would
        // make the leader order them again, for as long as it stays behind
        // (simulator seeds 9000008885 and 9000011417: a follower far
        // behind, catching up by snapshots, kept the leader ordering its
        // records again and taking snapshots faster than it could send
        // one).
        let caught_up = status.applied_index >= self.commit_mark;
        self.commit_mark = self.leader_commit_seen;
        if !caught_up {
            return;
        }
        if self.config.injected_bug == Some(InjectedBug::LeftoverRecordsNeverForwarded) {
            return;
        }
        let records = self.durability_log.take_due_for_forwarding(
            self.ticks,
            self.config.forward_after_ticks,
            self.config.chunk_bytes_max,
        );
        if !records.is_empty() {
            let forward = DurabilityForward {
                term: status.term,
                records,
            };
            out.send(leader, Message::DurabilityForward(forward), Timing::Now);
        }
    }

    // ----- after every step of the inner protocol -----

    /// Follows role changes (as raft-optimized reports them in the
    /// outbox), and drops from the durability log what was applied.
    fn after_inner_step(&mut self, apply_from: usize, out: &mut Outbox) {
        let changed = out
            .soft_state
            .map(|soft| (soft.role, soft.term))
            .filter(|now| *now != self.role_and_term);
        if let Some((role, term)) = changed {
            self.role_and_term = (role, term);
            if role == Role::Leader {
                self.start_recovery(out);
            } else {
                self.recovered = false;
                self.recovery = None;
                self.ordered.clear();
            }
            self.proposed.clear();
            self.proposed_keys.clear();
        }
        for entry in &out.apply[apply_from..] {
            if let EntryPayload::Command(request) = &entry.payload {
                if self.durability_log.remove(&request.id) {
                    self.pending_removals.push(request.id);
                }
                self.ordered.remove(&request.id);
                if let Some(times) = self.proposed.get_mut(&request.id) {
                    *times -= 1;
                    if *times == 0 {
                        self.proposed.remove(&request.id);
                    }
                    self.proposed_keys.remove(&request.command);
                }
            }
        }
    }

    /// Removing applied records from storage need not be durable before
    /// anything: a removal lost in a crash leaves a record that was applied,
    /// which a later leader may order again, and the session table refuses
    /// it as stale. So removals ride on the next durable write instead of
    /// costing a sync of their own (and delaying the fast-path appends queued
    /// behind it); they go first in that write, so a record appended again
    /// in it (a late duplicate) stays. Alone they are written once a tick
    /// finds no other write, or once a batch of them has gathered.
    fn write_removals(&mut self, writes_before: usize, alone: bool, out: &mut Outbox) {
        if self.pending_removals.is_empty() {
            return;
        }
        let carried = out.persist.len() > writes_before;
        if carried || alone || self.pending_removals.len() >= self.config.raft.batch_entries_max {
            let removed = std::mem::take(&mut self.pending_removals);
            out.persist
                .insert(writes_before, Write::DurabilityRemove(removed));
        }
    }

    /// After a snapshot was installed: drops the records of requests at
    /// or below their client's latest applied sequence number in it. Each
    /// took effect, or never will (the session refuses it as stale), as
    /// for a record dropped when its entry is applied. Kept, they would be
    /// forwarded and ordered again for nothing, and, under load, keep a
    /// follower that catches up by snapshots sending them for good
    /// (simulator seed 5000194).
    fn drop_settled_records(&mut self, sessions: &[(consensus::ClientId, consensus::Seq)]) {
        let latest: HashMap<_, _> = sessions.iter().copied().collect();
        let settled: Vec<RequestId> = self
            .durability_log
            .iter()
            .map(|r| r.request.id)
            .filter(|id| latest.get(&id.client).is_some_and(|&seq| id.seq <= seq))
            .collect();
        for id in settled {
            if self.durability_log.remove(&id) {
                self.pending_removals.push(id);
            }
        }
    }

    fn tick(&mut self, out: &mut Outbox) {
        self.ticks += 1;
        let heartbeat = self.config.raft.heartbeat_ticks;
        if let Some(recovery) = self.recovery.as_mut() {
            recovery.ticks += 1;
            if recovery.ticks.is_multiple_of(heartbeat) {
                // Lost requests or answers: ask again where each stands.
                let term = recovery.term;
                for (&peer, &from) in &recovery.next {
                    let request = DurabilityLogRequest { term, from };
                    out.send(peer, Message::DurabilityLogRequest(request), Timing::Now);
                }
            }
        }
        if self
            .ticks
            .is_multiple_of(self.config.ordering_interval_ticks.max(1))
        {
            self.order_durability_log(out);
        }
        if self.ticks.is_multiple_of(heartbeat.max(1)) {
            self.forward_old_records(out);
        }
    }
}

impl Consensus for NilextRaft {
    fn step(&mut self, input: Input, out: &mut Outbox) {
        let writes_before = out.persist.len();
        let apply_from = out.apply.len();
        self.appended_this_step = false;
        let mut durability_log_synced = false;
        let is_tick = matches!(input, Input::Tick);
        match input {
            Input::FastWrite(request) => self.fast_write(request, out),
            Input::ChangeMembership { .. } => self.change_membership(input, out),
            Input::Request(request) => self.request(request, out),
            Input::Message {
                from,
                message: Message::DurabilityLogRequest(m),
            } => self.on_durability_log_request(from, m, out),
            Input::Message {
                from,
                message: Message::DurabilityLogResponse(m),
            } => self.on_durability_log_response(from, m, out),
            Input::Message {
                from,
                message: Message::DurabilityForward(m),
            } => self.on_forward(from, m, out),
            Input::Persisted { .. } => {
                durability_log_synced = self.jobs.pop_front() == Some(true);
                self.inner.step(input, out);
            }
            Input::Message {
                message: Message::AppendEntries(ref m),
                ..
            } => {
                self.leader_commit_seen = self.leader_commit_seen.max(m.leader_commit);
                self.inner.step(input, out);
            }
            Input::SnapshotInstalled { ref sessions, .. } => {
                self.drop_settled_records(sessions);
                self.inner.step(input, out);
            }
            Input::Tick => {
                self.inner.step(Input::Tick, out);
                self.tick(out);
            }
            other => self.inner.step(other, out),
        }
        self.after_inner_step(apply_from, out);
        if durability_log_synced || !self.dl_write_in_flight() {
            self.flush_writes(out);
        }
        self.write_removals(writes_before, is_tick, out);
        if out.persist.len() > writes_before {
            self.jobs.push_back(self.appended_this_step);
        }
    }

    fn status(&self) -> Status {
        self.inner.status()
    }

    fn set_session_timeout(&mut self, ticks: u64) {
        self.inner.set_session_timeout(ticks);
    }

    fn follower_matches(&self) -> Vec<(NodeId, consensus::LogIndex)> {
        self.inner.follower_matches()
    }

    fn durability_log_size(&self) -> Option<(usize, usize)> {
        Some((self.durability_log.len(), self.durability_log.bytes))
    }
}

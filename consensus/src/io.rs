//! What goes into a protocol ([`Input`]) and what comes out ([`Outbox`]).
//!
//! # Ordering rules, and why each is needed
//!
//! A protocol does no I/O. The runtime (kvnode's, or the simulator's) gives
//! it time and carries out each outbox in this order, exactly as written:
//!
//! 0. **Time first.** Before every input, the runtime delivers every
//!    [`Input::Tick`] that real time owes ([`crate::clock::TickClock`]), so
//!    a protocol's tick count is real time whenever it takes an input, even
//!    after the process stalled. Lease reads rest on this: a leader counts
//!    its lease in ticks, and one that resumed from a pause with its ticks
//!    behind real time would serve reads from a lease that has ended.
//! 1. **Messages and replies marked [`Timing::Now`] leave at once.** A
//!    protocol marks a message `Now` only when it depends on no write of this
//!    outbox: a heartbeat, or (parallel leader persist, in raft-optimized)
//!    entries a leader sends while its own copy is still being written. The
//!    leader must then not count itself toward a commit quorum until
//!    [`Input::Persisted`] says its copy is durable.
//! 2. **[`Outbox::persist`] is made durable, in order, with one sync.** Raft's
//!    safety rests on stable storage: a vote must be remembered before it is
//!    announced (else a restarted node could vote twice in a term and elect
//!    two leaders), and an entry must be on disk before a follower
//!    acknowledges it (else a majority "holding" a committed entry could
//!    forget it in a crash, and a new leader without it would be elected).
//! 3. **Messages and replies marked [`Timing::AfterPersist`] leave**, only
//!    once step 2 finished, and every write of earlier outboxes too: that is
//!    the "persist before send" these rules protect. (A vote granted again
//!    to the same candidate writes nothing new, but its answer must still
//!    wait for the earlier write of that vote.)
//! 4. **[`Outbox::apply`] entries are applied in index order**, then
//!    [`Outbox::reads`] are served from the state machine. A protocol emits an
//!    entry for apply only once it is committed and durable in this node's
//!    own log, so a restart never finds the state machine ahead of the log.
//!    Reads come after applies because a read may have waited for exactly
//!    those entries (ReadIndex: "answer once applied >= read index").
//! 5. **The runtime reports back**: [`Input::Persisted`] after a non-empty
//!    persist, [`Input::Applied`] after a non-empty apply.
//!
//! Writes are carried out one outbox at a time, in order, but the runtime
//! need not wait for a sync before taking the next input (kvnode syncs on a
//! persist thread; the simulator gives each sync a random delay). A protocol
//! therefore learns that its writes are durable only from
//! [`Input::Persisted`], and may meanwhile gather new work for its next
//! write (group commit) or send entries it is still writing (parallel
//! persist); vanilla Raft does neither.
//!
//! The runtime adds no optimization of its own: it never merges the writes
//! of two outboxes into one sync, nor reorders messages, so a measured
//! difference between protocols comes from the protocols.
//!
//! Client replies work as follows: the runtime remembers which caller waits
//! for each [`RequestId`], separately for ordered requests and fast-path
//! writes. When it applies an entry (or serves a read) carrying that id, it
//! answers the ordered caller with the result. A protocol's own [`Reply`] is
//! for every other answer: a redirect, "unavailable", a refusal, or a Nil-ext
//! durability acknowledgement (to the fast-path caller).

use crate::message::Message;
use crate::snapshot::{ChunkRequest, SnapshotItem, SnapshotMeta};
use crate::types::{ClientRequest, Entry, LogIndex, NodeId, RequestId, Term};

/// An event a protocol reacts to.
#[derive(Clone, Debug)]
pub enum Input {
    /// One unit of logical time passed. The runtime maps ticks to
    /// milliseconds; timeouts in protocols are counted in ticks.
    Tick,
    /// A message from another replica.
    Message {
        /// The sender.
        from: NodeId,
        /// The message.
        message: Message,
    },
    /// A client request arrived at this node.
    Request(ClientRequest),
    /// A nilext write on Nil-ext's fast path: make it durable here and
    /// acknowledge, without ordering it (protocols without a fast path
    /// refuse it).
    FastWrite(ClientRequest),
    /// Everything this node asked to persist so far is durable: its durable
    /// log now ends at (`last_index`, `last_term`).
    Persisted {
        /// Index of the last entry of the durable log (0: empty).
        last_index: LogIndex,
        /// Its term (0: empty log).
        last_term: Term,
    },
    /// The state machine has applied every entry up to `index`.
    Applied {
        /// The new applied index.
        index: LogIndex,
    },
    /// The runtime captured the state machine at `snapshot` (durably, with
    /// what it needs to send it to a follower): the log up to it may be
    /// dropped, all but the last `keep_entries` entries
    /// (`crate::snapshot`).
    SnapshotTaken {
        /// Where the state machine stood.
        snapshot: SnapshotMeta,
        /// Entries to keep behind it.
        keep_entries: u64,
    },
    /// A snapshot received from the leader is installed: the state machine
    /// now stands at `snapshot` ([`Write::InstallSnapshot`] is durable).
    SnapshotInstalled {
        /// The snapshot.
        snapshot: SnapshotMeta,
        /// Each client's latest applied sequence number in it (its
        /// sessions): a request at or below it took effect or never will
        /// (Nil-ext drops such records from its durability log, as it
        /// drops those it applies).
        sessions: Vec<(crate::ClientId, crate::Seq)>,
    },
    /// An operator asks this node, if it leads, to hand leadership to `to`
    /// (`None`: the follower whose log is most up to date): Raft thesis
    /// 3.10. The leader stops taking requests, brings the target's log up
    /// to its own (committed), and sends it [`crate::message::TimeoutNow`].
    /// After an election timeout with no election it gives up: it takes
    /// requests again if TimeoutNow had not gone out, else it steps down.
    TransferLeadership {
        /// The member to hand leadership to.
        to: Option<NodeId>,
    },
    /// An operator asks this node, if it leads, to change the configuration
    /// by one server ([`crate::membership`]). The answer is
    /// [`Outbox::membership_change`]: the index of the configuration entry
    /// appended, or why none was. The change is done once that entry is
    /// committed (a leader change may drop it before: the caller checks the
    /// configuration then).
    ChangeMembership {
        /// The change.
        change: crate::membership::MembershipChange,
        /// The address of a node added (see [`crate::types::ConfigEntry`]).
        address: String,
    },
}

/// Whether an outgoing message or reply may leave before the outbox's
/// [`Outbox::persist`] writes are durable.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Timing {
    /// May leave at once: it depends on no write of this outbox.
    Now,
    /// Must wait until every write of this outbox is durable.
    AfterPersist,
}

/// A message to another replica.
#[derive(Clone, Debug)]
pub struct Envelope {
    /// The recipient.
    pub to: NodeId,
    /// The message.
    pub message: Message,
    /// When it may leave.
    pub timing: Timing,
}

/// Figure 2's persistent state on all servers, other than the log.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct HardState {
    /// Latest term the server has seen.
    pub term: Term,
    /// The candidate that received this server's vote in `term`, if any.
    pub voted_for: Option<NodeId>,
}

/// A write that must be durable before what depends on it happens.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Write {
    /// Replace the stored term and vote.
    HardState(HardState),
    /// Remove every log entry with index >= `from`.
    TruncateLog {
        /// The first index removed.
        from: LogIndex,
    },
    /// Append entries, contiguous with the end of the stored log (after any
    /// truncation earlier in the same outbox).
    AppendLog(Vec<Entry>),
    /// Append records to the Nil-ext durability log.
    DurabilityAppend(Vec<DurableRecord>),
    /// Remove records from the Nil-ext durability log.
    DurabilityRemove(Vec<RequestId>),
    /// Replace the whole Nil-ext durability log (a new leader's recovered
    /// log).
    DurabilityReplace(Vec<DurableRecord>),
    /// Record `snapshot` as the latest snapshot (the runtime captured it
    /// before this write was issued) and remove every log entry with index
    /// <= `through`, whose entry had `through_term`.
    CompactLog {
        /// The snapshot.
        snapshot: SnapshotMeta,
        /// The last entry removed.
        through: LogIndex,
        /// Its term.
        through_term: Term,
    },
    /// Stage a chunk of a snapshot received from the leader (`first`: drop
    /// whatever was staged before). Staged chunks change nothing until
    /// [`Write::InstallSnapshot`]; they need no sync of their own.
    SnapshotChunk {
        /// The snapshot.
        snapshot: SnapshotMeta,
        /// The first chunk.
        first: bool,
        /// Its items.
        items: Vec<SnapshotItem>,
    },
    /// Switch the state machine to the staged snapshot, atomically, and
    /// remove every log entry with index <= `snapshot.index` (entries after
    /// it stay; a protocol truncates them first when they conflict). A crash
    /// before this write is durable leaves the previous state machine and
    /// log; after, the snapshot's.
    InstallSnapshot {
        /// The snapshot staged.
        snapshot: SnapshotMeta,
    },
}

/// A nilext write made durable but not yet ordered (Nil-ext's durability
/// log).
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct DurableRecord {
    /// The write.
    pub request: ClientRequest,
    /// The term in which this node acknowledged it.
    pub term: Term,
}

impl DurableRecord {
    /// An upper bound of the record's size encoded (as an entry's).
    pub fn size_bytes(&self) -> usize {
        crate::types::ENTRY_FRAMING_BYTES + self.request.command.encoded_bound()
    }
}

/// An answer to a client other than the result of applying its command.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ReplyOutcome {
    /// This node is not the leader; `leader` is the one it knows, if any.
    NotLeader {
        /// The leader this node knows of.
        leader: Option<NodeId>,
    },
    /// No leader, or a leader that cannot reach a quorum; retry later.
    Unavailable,
    /// The request is invalid; it changed nothing.
    Rejected(String),
    /// Nil-ext's fast path: the write is durable in this node's durability
    /// log, acknowledged in `term`; `from_leader` when this node leads it.
    DurableAck {
        /// The term of the acknowledgement.
        term: Term,
        /// Whether this node is the leader of `term`.
        from_leader: bool,
        /// The voters of the configuration in force at this node: a write
        /// is complete once every voter of its leader's acknowledgement
        /// acknowledged it in the same term
        /// ([`crate::quorum::FastAcks`]).
        voters: crate::membership::NodeSet,
    },
}

/// A protocol's answer to a waiting client request.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Reply {
    /// The request answered.
    pub request: RequestId,
    /// The answer.
    pub outcome: ReplyOutcome,
    /// When it may leave.
    pub timing: Timing,
    /// Whether it answers the request's fast-path attempt
    /// ([`Input::FastWrite`]) rather than its ordered one
    /// ([`Input::Request`]): a client may have both waiting at one node.
    pub fast_path: bool,
}

/// Everything a protocol asks the runtime to do after one [`Input`].
#[derive(Debug, Default)]
pub struct Outbox {
    /// Writes to make durable, in order, with one sync.
    pub persist: Vec<Write>,
    /// Messages to other replicas.
    pub send: Vec<Envelope>,
    /// Committed entries to apply, in index order, with no gaps.
    pub apply: Vec<Entry>,
    /// Reads to serve from the state machine after `apply`, without a log
    /// entry (their linearizability is the protocol's to ensure).
    pub reads: Vec<ClientRequest>,
    /// Answers to clients other than results.
    pub reply: Vec<Reply>,
    /// Chunks of snapshots to read and send to followers (they depend on
    /// no write and leave at once).
    pub snapshot_chunks: Vec<ChunkRequest>,
    /// The node's role, term or leader changed (the latest), for the
    /// runtime's logs and metrics (etcd's `SoftState`).
    pub soft_state: Option<SoftState>,
    /// The answer to [`Input::ChangeMembership`]: the index of the
    /// configuration entry appended, or why none was.
    pub membership_change: Option<Result<LogIndex, crate::membership::MembershipError>>,
}

/// What a node is, as a runtime reports it: its role, term and leader.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SoftState {
    /// Its role.
    pub role: Role,
    /// Its current term.
    pub term: Term,
    /// The leader it knows for `term`.
    pub leader: Option<NodeId>,
}

/// An outbox taken apart in the order the runtime carries it out.
#[derive(Debug, Default)]
pub struct OutboxParts {
    /// Messages that may leave at once.
    pub send_now: Vec<Envelope>,
    /// Replies that may leave at once.
    pub reply_now: Vec<Reply>,
    /// Writes to make durable, with one sync.
    pub persist: Vec<Write>,
    /// Messages that wait for every write issued so far.
    pub send_after_persist: Vec<Envelope>,
    /// Replies that wait for every write issued so far.
    pub reply_after_persist: Vec<Reply>,
    /// Committed entries to apply.
    pub apply: Vec<Entry>,
    /// Reads to serve after applying.
    pub reads: Vec<ClientRequest>,
    /// Snapshot chunks to read and send now.
    pub snapshot_chunks: Vec<ChunkRequest>,
    /// A change of role, term or leader to report.
    pub soft_state: Option<SoftState>,
}

impl OutboxParts {
    /// True when something waits for the disk.
    pub fn waits_for_persist(&self) -> bool {
        !self.send_after_persist.is_empty() || !self.reply_after_persist.is_empty()
    }
}

impl Outbox {
    /// Splits the outbox by the runtime's ordering rules. The answer to a
    /// membership change is not part of it: a runtime that asks takes it
    /// first (`Outbox::membership_change`).
    pub fn split(self) -> OutboxParts {
        let (send_now, send_after_persist) =
            self.send.into_iter().partition(|e| e.timing == Timing::Now);
        let (reply_now, reply_after_persist) = self
            .reply
            .into_iter()
            .partition(|r| r.timing == Timing::Now);
        OutboxParts {
            send_now,
            reply_now,
            persist: self.persist,
            send_after_persist,
            reply_after_persist,
            apply: self.apply,
            reads: self.reads,
            snapshot_chunks: self.snapshot_chunks,
            soft_state: self.soft_state,
        }
    }

    /// True when there is nothing to do.
    pub fn is_empty(&self) -> bool {
        self.persist.is_empty()
            && self.send.is_empty()
            && self.apply.is_empty()
            && self.reads.is_empty()
            && self.reply.is_empty()
            && self.snapshot_chunks.is_empty()
            && self.soft_state.is_none()
            && self.membership_change.is_none()
    }

    /// Queues a message.
    pub fn send(&mut self, to: NodeId, message: Message, timing: Timing) {
        self.send.push(Envelope {
            to,
            message,
            timing,
        });
    }

    /// Queues a reply to an ordered request ([`Input::Request`]).
    pub fn reply(&mut self, request: RequestId, outcome: ReplyOutcome, timing: Timing) {
        self.reply.push(Reply {
            request,
            outcome,
            timing,
            fast_path: false,
        });
    }

    /// Refuses `request` when it breaks the request limits
    /// (`consensus::limits`), answering on the fast path or the ordered one;
    /// true when refused.
    pub fn refuse_invalid(&mut self, request: &ClientRequest, fast_path: bool) -> bool {
        let Err(invalid) = crate::limits::validate(&request.command) else {
            return false;
        };
        self.reply.push(Reply {
            request: request.id,
            outcome: ReplyOutcome::Rejected(invalid.to_string()),
            timing: Timing::Now,
            fast_path,
        });
        true
    }

    /// Queues a reply to a fast-path write ([`Input::FastWrite`]).
    pub fn reply_fast(&mut self, request: RequestId, outcome: ReplyOutcome, timing: Timing) {
        self.reply.push(Reply {
            request,
            outcome,
            timing,
            fast_path: true,
        });
    }
}

/// What a node knows of its own role (Figure 2: "Rules for Servers").
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Role {
    /// Follows a leader, or waits for one.
    Follower,
    /// Asks for pre-votes before campaigning (pre-vote, where used).
    PreCandidate,
    /// Campaigns for votes in its term.
    Candidate,
    /// Leads its term.
    Leader,
}

impl Role {
    /// Lower-case name, for status output.
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Follower => "follower",
            Role::PreCandidate => "pre-candidate",
            Role::Candidate => "candidate",
            Role::Leader => "leader",
        }
    }
}

/// A snapshot of a node's state, for status calls, logs and the simulator's
/// invariant checks.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Status {
    /// The node.
    pub id: NodeId,
    /// Its role.
    pub role: Role,
    /// Its current term.
    pub term: Term,
    /// The leader it knows for `term`.
    pub leader: Option<NodeId>,
    /// Highest log index known committed.
    pub commit_index: LogIndex,
    /// Highest log index applied to the state machine.
    pub applied_index: LogIndex,
    /// Index of the last entry of its (in-memory) log.
    pub last_log_index: LogIndex,
    /// Index of its latest snapshot (0: none).
    pub snapshot_index: LogIndex,
    /// Index of the first entry its log still holds (earlier ones were
    /// compacted).
    pub first_log_index: LogIndex,
    /// The cluster time it reads now ([`crate::cluster_time`]): a leader's
    /// advances with its ticks, a follower's with the stamps it receives.
    pub cluster_time: u64,
    /// The configuration in force here: the latest in its log
    /// ([`crate::membership`]).
    pub membership: crate::membership::Membership,
    /// The index of the entry that set it (its snapshot's index when that
    /// entry was compacted away; 0 for the initial member list).
    pub membership_index: LogIndex,
    /// A committed configuration no longer holds this node, which an
    /// earlier one did: it was removed, and takes no further part.
    pub removed: bool,
    /// As leader: the member it is handing leadership to, if a transfer is
    /// under way.
    pub leader_transfer: Option<NodeId>,
}

/// What a node finds in its storage when it starts.
#[derive(Clone, Debug, Default)]
pub struct Recovered {
    /// The durable term and vote.
    pub hard_state: HardState,
    /// The durable log: the entries after `log_base`, without gaps.
    pub log: Vec<Entry>,
    /// The last entry compacted away (index, term); (0, 0) when none was.
    pub log_base: (LogIndex, Term),
    /// The latest snapshot ((0, 0): none). The state machine stands at or
    /// after it.
    pub snapshot: SnapshotMeta,
    /// The state machine's durable applied index.
    pub applied_index: LogIndex,
    /// The Nil-ext durability log, in insertion order.
    pub durability_log: Vec<DurableRecord>,
}

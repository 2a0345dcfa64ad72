//! Messages between replicas, in the vocabulary of the Raft paper (Figure 2),
//! with the extensions the optimized variants need (pre-vote, read contexts,
//! conflict hints). `proto/raft.proto` mirrors these one to one.

use crate::snapshot::{SnapshotItem, SnapshotMeta};
use crate::types::{Entry, LogIndex, NodeId, Term};

/// Figure 2, "AppendEntries RPC": replicate entries, and heartbeat.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AppendEntries {
    /// The leader's term.
    pub term: Term,
    /// So the follower can redirect clients.
    pub leader_id: NodeId,
    /// Index of the entry immediately preceding `entries`.
    pub prev_log_index: LogIndex,
    /// Term of the entry at `prev_log_index`.
    pub prev_log_term: Term,
    /// Entries to store (empty for a heartbeat).
    pub entries: Vec<Entry>,
    /// The leader's `commitIndex`.
    pub leader_commit: LogIndex,
    /// Opaque to the follower and echoed in its response; leaders use it to
    /// match responses to read-index rounds. Zero when unused.
    pub context: u64,
}

/// Figure 2, the AppendEntries RPC's results.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AppendEntriesResponse {
    /// The follower's `currentTerm`, for the leader to update itself.
    pub term: Term,
    /// True if the follower held an entry matching `prev_log_index` and
    /// `prev_log_term` and now holds the entries sent.
    pub success: bool,
    /// On success, the index of the last entry the request made the
    /// follower's log agree with.
    pub match_index: LogIndex,
    /// On failure, the index the follower suggests to retry from (for
    /// vanilla Raft, the rejected `prev_log_index`).
    pub conflict_index: LogIndex,
    /// On failure, the term of the follower's conflicting entry (0: none).
    pub conflict_term: Term,
    /// The request's `context`, echoed.
    pub context: u64,
}

/// Figure 2, "RequestVote RPC"; with `pre_vote`, the Pre-Vote of the Raft
/// thesis (section 9.6), which asks without raising anybody's term.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RequestVote {
    /// The candidate's term (for a pre-vote: the term it would campaign in).
    pub term: Term,
    /// Who asks.
    pub candidate_id: NodeId,
    /// Index of the candidate's last log entry.
    pub last_log_index: LogIndex,
    /// Term of the candidate's last log entry.
    pub last_log_term: Term,
    /// A pre-vote: grants change no state.
    pub pre_vote: bool,
    /// Sent on the leader's [`TimeoutNow`] (a leadership transfer, Raft
    /// thesis 3.10): voters that still hear from that leader vote anyway
    /// (check-quorum's stickiness yields; the leader stopped serving lease
    /// reads when it sent TimeoutNow).
    pub transfer: bool,
}

/// Raft thesis 3.10, leadership transfer: the leader of `term` tells a
/// follower whose log matches its own to start an election at once.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TimeoutNow {
    /// The leader's term.
    pub term: Term,
    /// The leader.
    pub leader_id: NodeId,
    /// The leader's commit index: its whole log, which the target holds.
    /// The target commits it before campaigning, so that it does not lead
    /// with entries of the old term it cannot commit by itself (vanilla
    /// appends no entry of its own on election).
    pub leader_commit: LogIndex,
}

/// Figure 2, the RequestVote RPC's results.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RequestVoteResponse {
    /// The voter's `currentTerm` (for a pre-vote: the term asked about when
    /// granted).
    pub term: Term,
    /// True means the candidate received the vote.
    pub vote_granted: bool,
    /// Answers a pre-vote.
    pub pre_vote: bool,
    /// Not 0: the voter refused because the candidate is not a voter of
    /// the configuration it holds, as of this log index
    /// ([`crate::membership`]). A candidate that knows no later
    /// configuration stops campaigning until it hears from a leader.
    pub not_a_voter_at: LogIndex,
}

/// Nil-ext: a new leader asks for a replica's durability log (recovery,
/// Skyros section 4.5), a chunk at a time.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DurabilityLogRequest {
    /// The new leader's term.
    pub term: Term,
    /// Where in the replica's log to go on: 0 for the start, else the
    /// `next` of the chunk before.
    pub from: u64,
}

/// Nil-ext: a chunk of a replica's durability log, handed to the leader of
/// `term`. Having sent the first, the replica acknowledges writes only in
/// `term` or later.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DurabilityLogResponse {
    /// The term asked about.
    pub term: Term,
    /// The request's `from`, echoed (a late duplicate is told apart).
    pub from: u64,
    /// The records, in the replica's order.
    pub records: Vec<crate::io::DurableRecord>,
    /// Where the next chunk starts.
    pub next: u64,
    /// True when this chunk ends what the replica held when first asked.
    pub done: bool,
}

/// Nil-ext: records a follower has held for long, sent to the leader of
/// `term`, which orders those it lacks (raft-nilext, "Leftover records").
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DurabilityForward {
    /// The leader's term, as the follower knows it.
    pub term: Term,
    /// The records, oldest first.
    pub records: Vec<crate::io::DurableRecord>,
}

/// Figure 13, "InstallSnapshot RPC": one chunk of the leader's snapshot,
/// for a follower whose next entry the leader no longer holds. Chunks are
/// sent one at a time, in order; the follower stages them and switches to
/// the snapshot at the last (`crate::snapshot`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct InstallSnapshot {
    /// The leader's term.
    pub term: Term,
    /// So the follower can redirect clients.
    pub leader_id: NodeId,
    /// The snapshot (lastIncludedIndex and lastIncludedTerm).
    pub snapshot: SnapshotMeta,
    /// Where this chunk starts (empty: the first chunk). Positions compare
    /// as byte strings, later chunks greater.
    pub position: Vec<u8>,
    /// The chunk's items, in the snapshot's order.
    pub items: Vec<SnapshotItem>,
    /// Where the next chunk starts.
    pub next: Vec<u8>,
    /// True for the last chunk.
    pub done: bool,
}

/// The answer to an [`InstallSnapshot`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct InstallSnapshotResponse {
    /// The follower's `currentTerm`.
    pub term: Term,
    /// The snapshot the chunk belonged to.
    pub snapshot: SnapshotMeta,
    /// Where the follower expects the next chunk to start.
    pub next: Vec<u8>,
    /// The chunk was not the one expected (`next` says which is); nothing
    /// was written.
    pub rejected: bool,
    /// The follower holds the snapshot (installed, or already applied past
    /// it): its log matches the leader's up to `snapshot.index`.
    pub installed: bool,
}

/// Any message between replicas.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Message {
    /// See [`AppendEntries`].
    AppendEntries(AppendEntries),
    /// See [`AppendEntriesResponse`].
    AppendEntriesResponse(AppendEntriesResponse),
    /// See [`RequestVote`].
    RequestVote(RequestVote),
    /// See [`RequestVoteResponse`].
    RequestVoteResponse(RequestVoteResponse),
    /// See [`DurabilityLogRequest`].
    DurabilityLogRequest(DurabilityLogRequest),
    /// See [`DurabilityLogResponse`].
    DurabilityLogResponse(DurabilityLogResponse),
    /// See [`DurabilityForward`].
    DurabilityForward(DurabilityForward),
    /// See [`InstallSnapshot`].
    InstallSnapshot(InstallSnapshot),
    /// See [`InstallSnapshotResponse`].
    InstallSnapshotResponse(InstallSnapshotResponse),
    /// See [`TimeoutNow`].
    TimeoutNow(TimeoutNow),
}

/// A message's fixed part encoded (terms, indexes, ids, flags and their
/// tags, a snapshot's configuration of up to 64 ids, and the envelope
/// naming sender and receiver), rounded up.
pub const MESSAGE_HEADER_BYTES: usize = 256;

impl Message {
    /// An upper bound of the message's size encoded: the transport and the
    /// simulator compare it with `limits::PEER_MESSAGE_BYTES_MAX`.
    pub fn size_bytes(&self) -> usize {
        MESSAGE_HEADER_BYTES
            + match self {
                Message::AppendEntries(m) => m.entries.iter().map(Entry::size_bytes).sum(),
                Message::DurabilityLogResponse(DurabilityLogResponse { records, .. })
                | Message::DurabilityForward(DurabilityForward { records, .. }) => records
                    .iter()
                    .map(crate::io::DurableRecord::size_bytes)
                    .sum(),
                Message::InstallSnapshot(m) => {
                    m.position.len()
                        + m.next.len()
                        + m.items.iter().map(SnapshotItem::size_bytes).sum::<usize>()
                }
                Message::InstallSnapshotResponse(m) => m.next.len(),
                Message::AppendEntriesResponse(_)
                | Message::RequestVote(_)
                | Message::RequestVoteResponse(_)
                | Message::DurabilityLogRequest(_)
                | Message::TimeoutNow(_) => 0,
            }
    }

    /// The sender's claim to lead its term, when the message carries one
    /// (only a leader sends AppendEntries and InstallSnapshot).
    pub fn leader_hint(&self) -> Option<NodeId> {
        match self {
            Message::AppendEntries(m) => Some(m.leader_id),
            Message::InstallSnapshot(m) => Some(m.leader_id),
            Message::TimeoutNow(m) => Some(m.leader_id),
            _ => None,
        }
    }

    /// The sender's term carried by the message.
    pub fn term(&self) -> Term {
        match self {
            Message::AppendEntries(m) => m.term,
            Message::AppendEntriesResponse(m) => m.term,
            Message::RequestVote(m) => m.term,
            Message::RequestVoteResponse(m) => m.term,
            Message::DurabilityLogRequest(m) => m.term,
            Message::DurabilityLogResponse(m) => m.term,
            Message::DurabilityForward(m) => m.term,
            Message::InstallSnapshot(m) => m.term,
            Message::InstallSnapshotResponse(m) => m.term,
            Message::TimeoutNow(m) => m.term,
        }
    }
}

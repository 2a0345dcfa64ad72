//! Snapshots and log compaction (Raft paper, section 7), shared by every
//! protocol and every runtime.
//!
//! # Who does what
//!
//! - **The runtime decides when** ([`SnapshotPolicy`]): after applying, once
//!   enough entries or bytes were applied since the last snapshot, it
//!   captures the state machine as it stands (data, sessions, applied
//!   index: kvnode makes a RocksDB checkpoint, the simulator a copy) and
//!   tells the protocol ([`crate::Input::SnapshotTaken`]). Compaction is
//!   storage management, not a protocol optimization, so every protocol
//!   compacts alike.
//! - **The protocol compacts**: it records the snapshot, drops the log up
//!   to a point a little behind it (so a follower slightly behind still gets
//!   entries, not a snapshot), and asks for that to be made durable
//!   ([`crate::Write::CompactLog`]). The capture is durable before that write
//!   is issued, so the log never loses an entry the state does not hold.
//! - **A leader whose follower needs a compacted entry sends the snapshot**
//!   in chunks, one at a time ([`Transfer`]): it names the snapshot and the
//!   position to read from ([`crate::Outbox::snapshot_chunks`]); the runtime
//!   reads that chunk from its capture and sends it as an
//!   [`crate::message::InstallSnapshot`]. Memory stays bounded on both sides:
//!   a chunk is read, sent and written, never the whole snapshot.
//! - **The follower stages chunks** ([`crate::Write::SnapshotChunk`]) and, at
//!   the last one, **switches atomically** ([`crate::Write::InstallSnapshot`]):
//!   a crash before the switch leaves its previous state, after it the new
//!   one. The runtime reports the switch ([`crate::Input::SnapshotInstalled`])
//!   once its state machine holds the snapshot; only then does the protocol
//!   apply entries after it.

use crate::state_machine::Session;
use crate::types::{ClientId, Key, LogIndex, Term, Value};

/// A snapshot's place in the log: the state machine after applying every
/// entry up to `index`, whose entry has `term` (the paper's
/// lastIncludedIndex and lastIncludedTerm). `(0, 0)`: no snapshot.
///
/// A snapshot is identified by its index and term: equality, order and
/// hash look at those only. Its `stamp` goes along with it (a capture's
/// directory, for instance, names only the index and term).
#[derive(Clone, Copy, Debug, Default)]
pub struct SnapshotMeta {
    /// The last entry the snapshot includes.
    pub index: LogIndex,
    /// Its term.
    pub term: Term,
    /// That entry's stamp: the cluster time and session-expiry cutoff the
    /// state machine stands at ([`crate::cluster_time`]).
    pub stamp: crate::cluster_time::Stamp,
    /// The configuration in force at `index` ([`crate::membership`]);
    /// empty when not known (a snapshot of a cluster that never recorded
    /// one: its initial member list applies).
    pub membership: crate::membership::Membership,
}

impl SnapshotMeta {
    /// The snapshot at (`index`, `term`), its stamp not known here.
    pub fn at(index: LogIndex, term: Term) -> Self {
        SnapshotMeta {
            index,
            term,
            stamp: crate::cluster_time::Stamp::default(),
            membership: crate::membership::Membership::default(),
        }
    }

    fn identity(&self) -> (LogIndex, Term) {
        (self.index, self.term)
    }
}

impl PartialEq for SnapshotMeta {
    fn eq(&self, other: &Self) -> bool {
        self.identity() == other.identity()
    }
}

impl Eq for SnapshotMeta {}

impl std::hash::Hash for SnapshotMeta {
    fn hash<H: std::hash::Hasher>(&self, state: &mut H) {
        self.identity().hash(state);
    }
}

impl PartialOrd for SnapshotMeta {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}

impl Ord for SnapshotMeta {
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        self.identity().cmp(&other.identity())
    }
}

/// One item of a snapshot's contents. A snapshot is a sequence of items in
/// a fixed order (the data by key, then the sessions by client), sent in
/// chunks.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum SnapshotItem {
    /// A key and its value.
    Data(Key, Value),
    /// A client's session.
    Session(ClientId, Session),
}

impl SnapshotItem {
    /// An upper bound of the item's size encoded.
    pub fn size_bytes(&self) -> usize {
        const ITEM_FRAMING_BYTES: usize = 32;
        ITEM_FRAMING_BYTES
            + match self {
                SnapshotItem::Data(key, value) => key.len() + value.len(),
                SnapshotItem::Session(_, session) => session.size_bytes(),
            }
    }
}

/// Bytes of items in one chunk of a snapshot by default (always at least
/// one item): well within `limits::PEER_MESSAGE_BYTES_MAX`, and one chunk at
/// a time is all either side holds.
pub const CHUNK_BYTES: usize = 1 << 20;

/// When a runtime takes a snapshot and how much log a protocol keeps behind
/// it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SnapshotPolicy {
    /// Take a snapshot once this many entries were applied since the last
    /// (0: never by count).
    pub entries: u64,
    /// Or once entries of this many bytes (by `Entry::size_bytes`) were
    /// applied since the last (0: never by size).
    pub bytes: u64,
    /// Entries kept in the log behind a snapshot, so that a follower a
    /// little behind is sent entries rather than a whole snapshot (etcd
    /// keeps 5,000).
    pub keep_entries: u64,
    /// Bytes of items per chunk sent to a follower.
    pub chunk_bytes: usize,
}

impl Default for SnapshotPolicy {
    fn default() -> Self {
        SnapshotPolicy {
            entries: 100_000,
            bytes: 64 << 20,
            keep_entries: 5_000,
            chunk_bytes: CHUNK_BYTES,
        }
    }
}

impl SnapshotPolicy {
    /// Never take a snapshot.
    pub fn never() -> Self {
        SnapshotPolicy {
            entries: 0,
            bytes: 0,
            ..SnapshotPolicy::default()
        }
    }

    /// Whether a snapshot is due after `entries` entries of `bytes` bytes
    /// were applied since the last.
    pub fn due(&self, entries: u64, bytes: u64) -> bool {
        (self.entries > 0 && entries >= self.entries) || (self.bytes > 0 && bytes >= self.bytes)
    }

    /// Checks the settings fit together.
    pub fn validate(&self) -> Result<(), String> {
        if self.chunk_bytes == 0 || !crate::limits::fits_in_a_message(self.chunk_bytes) {
            return Err(format!(
                "snapshot chunks of {} bytes do not fit in a peer message (at most {} bytes)",
                self.chunk_bytes,
                crate::limits::PEER_MESSAGE_BYTES_MAX
            ));
        }
        Ok(())
    }
}

/// What a runtime counts to apply a [`SnapshotPolicy`]: entries and bytes
/// applied since the last snapshot.
#[derive(Clone, Copy, Debug, Default)]
pub struct SinceSnapshot {
    /// Entries applied since the last snapshot.
    pub entries: u64,
    /// Their bytes.
    pub bytes: u64,
}

impl SinceSnapshot {
    /// Counts applied entries.
    pub fn applied(&mut self, entries: &[crate::Entry]) {
        self.entries += entries.len() as u64;
        self.bytes += entries.iter().map(|e| e.size_bytes() as u64).sum::<u64>();
    }

    /// Whether `policy` says a snapshot is due; if so, starts counting
    /// again.
    pub fn take_if_due(&mut self, policy: &SnapshotPolicy) -> bool {
        if policy.due(self.entries, self.bytes) {
            *self = SinceSnapshot::default();
            return true;
        }
        false
    }
}

/// A chunk a runtime must read from its snapshot `snapshot` at `position`
/// and send to `to` as an [`crate::message::InstallSnapshot`] carrying the
/// leader's `term` and id.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ChunkRequest {
    /// The follower.
    pub to: crate::NodeId,
    /// The leader's term.
    pub term: Term,
    /// The leader.
    pub leader_id: crate::NodeId,
    /// The snapshot.
    pub snapshot: SnapshotMeta,
    /// Where the chunk starts (empty: at the beginning; else the `next` of
    /// the chunk before).
    pub position: Vec<u8>,
}

/// Timeouts in a row, with no answer at all, after which a transfer starts
/// over with the leader's latest snapshot (the runtime may no longer hold
/// the one in flight). A transfer that gets answers goes on with its
/// snapshot, however many newer ones the leader takes meanwhile: a large
/// snapshot takes longer to send than a busy leader takes to reach the
/// next (simulator seed 9000011417 restarted a transfer at every late
/// answer and never finished one).
pub const RESTART_AFTER_TIMEOUTS: u32 = 4;

/// A leader's transfer of a snapshot to one follower: one chunk in flight,
/// sent again when its answer is late, started over with the leader's
/// latest snapshot when the follower or the runtime lost track.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Transfer {
    /// The snapshot sent.
    pub snapshot: SnapshotMeta,
    /// Where the chunk in flight starts.
    pub position: Vec<u8>,
    /// Ticks since that chunk was sent.
    pub ticks_waiting: u64,
    /// Timeouts in a row with no answer.
    pub timeouts: u32,
}

impl Transfer {
    /// A transfer of `snapshot` from its beginning.
    pub fn new(snapshot: SnapshotMeta) -> Self {
        Transfer {
            snapshot,
            position: Vec::new(),
            ticks_waiting: 0,
            timeouts: 0,
        }
    }

    /// The chunk request for the chunk in flight.
    pub fn request(&self, to: crate::NodeId, term: Term, leader_id: crate::NodeId) -> ChunkRequest {
        ChunkRequest {
            to,
            term,
            leader_id,
            snapshot: self.snapshot,
            position: self.position.clone(),
        }
    }

    /// Counts a tick; true when the chunk in flight should be sent again
    /// (no answer within `timeout_ticks`). After
    /// [`RESTART_AFTER_TIMEOUTS`] timeouts in a row, a transfer of a
    /// snapshot older than `latest` starts over with `latest`.
    pub fn tick(&mut self, timeout_ticks: u64, latest: SnapshotMeta) -> bool {
        self.ticks_waiting += 1;
        if self.ticks_waiting < timeout_ticks {
            return false;
        }
        self.ticks_waiting = 0;
        self.timeouts += 1;
        if self.timeouts >= RESTART_AFTER_TIMEOUTS && self.snapshot != latest {
            *self = Transfer::new(latest);
        }
        true
    }

    /// Takes the follower's answer to this transfer; what to do next.
    /// Positions compare as byte strings, later chunks greater, so a late
    /// answer to an earlier chunk is told apart.
    pub fn answered(&mut self, m: &crate::message::InstallSnapshotResponse) -> TransferStep {
        if m.snapshot != self.snapshot {
            return TransferStep::Ignore;
        }
        self.timeouts = 0;
        if m.installed {
            return TransferStep::Installed(self.snapshot.index);
        }
        if m.rejected || m.next > self.position {
            // The follower wants the chunk at `next`: the one after the
            // chunk it took, or the one it expects after a chunk out of
            // place (a lost chunk, or a transfer it does not know).
            self.position = m.next.clone();
            self.ticks_waiting = 0;
            return TransferStep::Send;
        }
        TransferStep::Ignore
    }
}

/// What a leader does after an answer to a snapshot chunk.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TransferStep {
    /// Nothing (a late or duplicate answer).
    Ignore,
    /// Send the chunk at the transfer's position.
    Send,
    /// The follower installed the snapshot: its log matches up to this
    /// index.
    Installed(LogIndex),
}

/// A follower's reception of a snapshot: where the next chunk must start.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Reception {
    /// The leader's term.
    pub term: Term,
    /// The snapshot.
    pub snapshot: SnapshotMeta,
    /// Where the next chunk must start.
    pub next: Vec<u8>,
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::message::InstallSnapshotResponse;

    fn answer(
        snapshot: SnapshotMeta,
        next: &[u8],
        rejected: bool,
        installed: bool,
    ) -> InstallSnapshotResponse {
        InstallSnapshotResponse {
            term: 1,
            snapshot,
            next: next.to_vec(),
            rejected,
            installed,
        }
    }

    #[test]
    fn a_transfer_moves_forward_only_and_finishes_on_install() {
        let s = SnapshotMeta::at(10, 1);
        let mut t = Transfer::new(s);
        assert_eq!(
            t.answered(&answer(s, &[0, 5], false, false)),
            TransferStep::Send
        );
        assert_eq!(t.position, vec![0, 5]);
        // A late answer to the chunk before: ignored.
        assert_eq!(
            t.answered(&answer(s, &[0, 2], false, false)),
            TransferStep::Ignore
        );
        // The follower asks for an earlier chunk (it restarted): sent.
        assert_eq!(t.answered(&answer(s, &[], true, false)), TransferStep::Send);
        assert!(t.position.is_empty());
        // An answer about another snapshot: ignored.
        let other = SnapshotMeta::at(20, 1);
        assert_eq!(
            t.answered(&answer(other, &[1], false, true)),
            TransferStep::Ignore
        );
        assert_eq!(
            t.answered(&answer(s, &[1], false, true)),
            TransferStep::Installed(10)
        );
    }

    #[test]
    fn a_transfer_keeps_its_snapshot_while_answered_and_restarts_when_not() {
        let s = SnapshotMeta::at(10, 1);
        let latest = SnapshotMeta::at(30, 1);
        let mut t = Transfer::new(s);
        for round in 0..10 {
            // Late, but answered: the same snapshot goes on.
            assert!(!t.tick(3, latest));
            assert!(!t.tick(3, latest));
            assert!(t.tick(3, latest), "resent at round {round}");
            t.answered(&answer(s, &[round as u8 + 1], false, false));
            assert_eq!(t.snapshot, s);
        }
        // No answer at all: after a few timeouts, the latest.
        for _ in 0..RESTART_AFTER_TIMEOUTS * 3 {
            t.tick(3, latest);
        }
        assert_eq!(t.snapshot, latest);
        assert!(t.position.is_empty());
    }
}

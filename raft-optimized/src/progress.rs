//! Flow control (the leader's view of each follower, as raft-rs's
//! `tracker`): Probe sends one AppendEntries at a time until the logs
//! match; Replicate pipelines several, bounded in messages and bytes;
//! Snapshot sends the leader's snapshot, a chunk at a time, to a follower
//! whose next entry was compacted away.

use std::collections::VecDeque;

use consensus::LogIndex;
use consensus::snapshot::Transfer;

/// How the leader replicates to one follower.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum ReplicationState {
    /// The logs may differ: one AppendEntries at a time until one succeeds.
    Probe,
    /// The logs match up to `match_index`: pipeline with optimistic
    /// `next_index`.
    Replicate,
    /// The follower's next entry was compacted away: the snapshot is being
    /// sent (`Progress::transfer`); no AppendEntries carries entries.
    Snapshot,
}

/// The leader's view of one follower.
#[derive(Clone, Debug)]
pub(crate) struct Progress {
    /// Highest index known replicated on the follower.
    pub(crate) match_index: LogIndex,
    /// Next index to send. Invariant: `match_index < next_index`.
    pub(crate) next_index: LogIndex,
    pub(crate) state: ReplicationState,
    /// In Probe: a probe is awaiting its answer.
    pub(crate) probe_sent: bool,
    /// In Replicate: (last index, bytes) of each AppendEntries in flight.
    pub(crate) inflight: VecDeque<(LogIndex, usize)>,
    pub(crate) inflight_bytes: usize,
    /// Heard from since the last check-quorum.
    pub(crate) active: bool,
    /// Highest heartbeat-round context it has answered.
    pub(crate) acked_round: u64,
    /// When `match_index` last advanced (ticks).
    pub(crate) progress_tick: u64,
    /// In Snapshot: the transfer.
    pub(crate) transfer: Option<Transfer>,
}

impl Progress {
    pub(crate) fn new(next_index: LogIndex, now: u64) -> Self {
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
            transfer: None,
        }
    }

    pub(crate) fn become_probe(&mut self, next_index: LogIndex) {
        self.state = ReplicationState::Probe;
        self.transfer = None;
        self.probe_sent = false;
        self.inflight.clear();
        self.inflight_bytes = 0;
        self.next_index = next_index.max(self.match_index + 1);
    }

    pub(crate) fn become_snapshot(&mut self, transfer: Transfer) {
        self.state = ReplicationState::Snapshot;
        self.transfer = Some(transfer);
        self.probe_sent = false;
        self.inflight.clear();
        self.inflight_bytes = 0;
    }
}

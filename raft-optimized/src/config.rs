//! Settings of raft-optimized, with documented defaults.

use consensus::NodeId;

/// How the leader serves reads.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ReadMode {
    /// ReadIndex (Raft thesis 6.4): note the commit index, confirm
    /// leadership with a heartbeat round acknowledged by a majority, answer
    /// once the state machine has applied up to the noted index. One round
    /// trip, no log entry, no disk write.
    ReadIndex,
    /// Lease reads (thesis 6.4.1): while a lease from the last heartbeat
    /// round acknowledged by a majority is valid, answer at once. Valid only
    /// with check-quorum, and with a margin for clock drift.
    Lease,
}

impl std::str::FromStr for ReadMode {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "read-index" | "readindex" => Ok(ReadMode::ReadIndex),
            "lease" => Ok(ReadMode::Lease),
            other => Err(format!(
                "unknown read mode {other:?}; use read-index or lease"
            )),
        }
    }
}

/// Settings of one node.
#[derive(Clone, Debug)]
pub struct Config {
    /// This node.
    pub id: NodeId,
    /// Every member, this node included.
    pub members: Vec<NodeId>,
    /// Seed for election timeouts.
    pub seed: u64,
    /// Base election timeout in ticks (each drawn from [T, 2T)). Default 10.
    pub election_timeout_ticks: u64,
    /// Ticks between heartbeats. Default 2.
    pub heartbeat_ticks: u64,
    /// Most client commands in one durable write, and most entries in one
    /// AppendEntries. Default 1024.
    pub batch_entries_max: usize,
    /// Most bytes of entries in one durable write or AppendEntries (at least
    /// one entry is always taken). Default 1 MiB.
    pub batch_bytes_max: usize,
    /// Most AppendEntries carrying entries in flight to one follower.
    /// Default 32.
    pub inflight_appends_max: usize,
    /// Most bytes of entries in flight to one follower. Default 16 MiB.
    pub inflight_bytes_max: usize,
    /// How reads are served. Default ReadIndex.
    pub read_mode: ReadMode,
    /// Ticks taken off a lease for clock drift: a lease lasts
    /// `election_timeout_ticks - lease_drift_ticks` from the start of the
    /// heartbeat round that granted it. Default 2.
    pub lease_drift_ticks: u64,
    /// Ask for pre-votes before raising the term. Default on.
    pub pre_vote: bool,
    /// A leader that has not heard from a majority for an election timeout
    /// steps down, and followers that heard from a leader within the
    /// minimum election timeout refuse to vote. Default on.
    pub check_quorum: bool,
    /// Most proposals waiting for the next durable write before new ones
    /// are refused as unavailable. Default 65536.
    pub proposals_queued_max: usize,
}

impl Config {
    /// The defaults above.
    pub fn new(id: NodeId, members: Vec<NodeId>, seed: u64) -> Self {
        Config {
            id,
            members,
            seed,
            election_timeout_ticks: 10,
            heartbeat_ticks: 2,
            batch_entries_max: 1024,
            batch_bytes_max: 1 << 20,
            inflight_appends_max: 32,
            inflight_bytes_max: 16 << 20,
            read_mode: ReadMode::ReadIndex,
            lease_drift_ticks: 2,
            pre_vote: true,
            check_quorum: true,
            proposals_queued_max: 65_536,
        }
    }

    /// Checks the settings fit together.
    pub fn validate(&self) -> Result<(), String> {
        if !self.members.contains(&self.id) {
            return Err(format!("node {} is not among the members", self.id));
        }
        if self.heartbeat_ticks == 0 || self.election_timeout_ticks <= self.heartbeat_ticks {
            return Err(
                "need heartbeat_ticks > 0 and election_timeout_ticks > heartbeat_ticks".into(),
            );
        }
        if self.batch_entries_max == 0 || self.inflight_appends_max == 0 {
            return Err("batch and in-flight limits must be at least 1".into());
        }
        if self.proposals_queued_max == 0 {
            return Err("the proposal queue must hold at least one command".into());
        }
        if !consensus::limits::fits_in_a_message(self.batch_bytes_max) {
            return Err(format!(
                "batch_bytes_max {} is too large: an AppendEntries of that many bytes plus one \
                 largest entry must fit in a peer message of {} bytes",
                self.batch_bytes_max,
                consensus::limits::PEER_MESSAGE_BYTES_MAX
            ));
        }
        if self.read_mode == ReadMode::Lease {
            if !self.check_quorum {
                return Err("lease reads need check-quorum: without it a deposed leader could serve stale reads".into());
            }
            if self.lease_drift_ticks >= self.election_timeout_ticks {
                return Err("lease_drift_ticks must be below election_timeout_ticks".into());
            }
        }
        Ok(())
    }
}

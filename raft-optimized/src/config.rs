//! Settings of raft-optimized, with documented defaults.

use consensus::NodeId;

pub use consensus::config::ReadMode;

/// Settings of one node.
#[derive(Clone, Debug)]
pub struct Config {
    /// This node.
    pub id: NodeId,
    /// The cluster's initial members, this node included, all voters;
    /// empty for a node that joins a running cluster
    /// (`consensus::membership`).
    pub members: Vec<NodeId>,
    /// Seed for election timeouts.
    pub seed: u64,
    /// Base election timeout in ticks (each drawn from [T, 2T)). Default
    /// `consensus::raft::ELECTION_TIMEOUT_TICKS`.
    pub election_timeout_ticks: u64,
    /// Ticks between heartbeats. Default `consensus::raft::HEARTBEAT_TICKS`.
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
    /// A deliberate bug (tests only).
    pub injected_bug: Option<InjectedBug>,
}

/// Deliberate bugs, for tests that show the simulator catches them.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum InjectedBug {
    /// A leader goes on serving lease reads after it sent TimeoutNow: its
    /// target may be elected (voters yield to a transfer's candidate) and
    /// commit writes while the lease lasts.
    LeaseReadsAfterTimeoutNow,
    /// A bug in the membership rules (`consensus::membership`).
    Membership(consensus::membership::MembershipBug),
}

impl Config {
    /// The defaults above.
    pub fn new(id: NodeId, members: Vec<NodeId>, seed: u64) -> Self {
        Config {
            id,
            members,
            seed,
            election_timeout_ticks: consensus::raft::ELECTION_TIMEOUT_TICKS,
            heartbeat_ticks: consensus::raft::HEARTBEAT_TICKS,
            batch_entries_max: 1024,
            batch_bytes_max: 1 << 20,
            inflight_appends_max: 32,
            inflight_bytes_max: 16 << 20,
            read_mode: ReadMode::ReadIndex,
            lease_drift_ticks: 2,
            pre_vote: true,
            check_quorum: true,
            proposals_queued_max: 65_536,
            injected_bug: None,
        }
    }

    /// Checks the settings fit together.
    pub fn validate(&self) -> Result<(), String> {
        consensus::membership::validate_initial_members(self.id, &self.members)?;
        consensus::raft::validate_timing(self.election_timeout_ticks, self.heartbeat_ticks)?;
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

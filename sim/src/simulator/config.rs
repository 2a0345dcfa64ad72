//! A run's settings (faults, sizes, limits), its outcome and its statistics.

use super::*;

/// The kinds of fault the nemesis and the network may inject.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Faults {
    /// Messages are lost at random.
    pub drops: bool,
    /// Messages are delivered twice at random.
    pub duplicates: bool,
    /// Some messages take far longer than the rest, so they arrive out of
    /// order (every message already has a random delay).
    pub long_delays: bool,
    /// Symmetric partitions: a random split, the leader isolated, a
    /// minority cut from the majority.
    pub partitions: bool,
    /// One-way partitions: a node that can hear but not speak, or the
    /// reverse.
    pub one_way: bool,
    /// Nodes crash (losing unsynced writes) and restart later.
    pub crashes: bool,
    /// Nodes pause (as a process under SIGSTOP, a VM migration, a long
    /// stall): a paused node takes no input (no tick, message, request or
    /// disk completion) while the others go on; on resume its backlog
    /// arrives in a random order.
    pub pauses: bool,
    /// Client processes restart: with a fresh id, or taking their id back
    /// (going on from their sequence numbers, or carelessly from 1).
    pub client_restarts: bool,
}

impl Faults {
    /// Every kind of fault.
    pub fn all() -> Self {
        Faults {
            drops: true,
            duplicates: true,
            long_delays: true,
            partitions: true,
            one_way: true,
            crashes: true,
            pauses: true,
            client_restarts: true,
        }
    }

    /// Each fault kind on its own, with its name.
    pub fn each_alone() -> Vec<(&'static str, Faults)> {
        let none = Faults::none();
        vec![
            (
                "drops",
                Faults {
                    drops: true,
                    ..none
                },
            ),
            (
                "duplicates",
                Faults {
                    duplicates: true,
                    ..none
                },
            ),
            (
                "long delays",
                Faults {
                    long_delays: true,
                    ..none
                },
            ),
            (
                "partitions",
                Faults {
                    partitions: true,
                    ..none
                },
            ),
            (
                "one-way partitions",
                Faults {
                    one_way: true,
                    ..none
                },
            ),
            (
                "crashes",
                Faults {
                    crashes: true,
                    ..none
                },
            ),
            (
                "pauses",
                Faults {
                    pauses: true,
                    ..none
                },
            ),
            (
                "client restarts",
                Faults {
                    client_restarts: true,
                    ..none
                },
            ),
        ]
    }

    /// No faults: a perfect network and no crashes.
    pub fn none() -> Self {
        Faults {
            drops: false,
            duplicates: false,
            long_delays: false,
            partitions: false,
            one_way: false,
            crashes: false,
            pauses: false,
            client_restarts: false,
        }
    }
}

/// The shape of one simulated run.
#[derive(Clone, Debug)]
pub struct SimConfig {
    /// The seed: the same seed gives the same run.
    pub seed: u64,
    /// Cluster size (nodes are numbered 1..=nodes).
    pub nodes: usize,
    /// Concurrent clients.
    pub clients: usize,
    /// Keys are `k0..k{keys}`, in pairs that multi-key operations stay
    /// within (so the checker's independent parts stay small), plus two
    /// counters.
    pub keys: usize,
    /// Faults injected during the fault phase.
    pub faults: Faults,
    /// Length of the fault phase; then everything heals.
    pub fault_phase_ms: Time,
    /// Operations each client completes after healing (liveness).
    pub ops_after_heal: usize,
    /// Time allowed after healing for every client to finish.
    pub liveness_deadline_ms: Time,
    /// Interval between ticks of each node.
    pub tick_ms: Time,
    /// One-way network delay range between clients and nodes.
    pub net_delay_ms: (Time, Time),
    /// One-way network delay range between nodes. Longer than the clients'
    /// makes replication lag behind client round trips: a slow-path write
    /// stays uncommitted while fast writes complete and reads arrive.
    pub peer_delay_ms: (Time, Time),
    /// Disk sync delay range.
    pub persist_delay_ms: (Time, Time),
    /// A client retries an attempt unanswered for this long.
    pub client_timeout_ms: Time,
    /// A client abandons an operation (unknown outcome) after this long,
    /// during the fault phase only.
    pub give_up_ms: Time,
    /// Print every event (for replaying one seed).
    pub verbose: bool,
    /// Clients send nilext writes (put, delete, multi-put) on Nil-ext's
    /// fast path: to every node, done on a fast quorum of durability
    /// acknowledgements of one term including the leader's.
    pub nilext_fast_path: bool,
    /// A fast-path write that has not completed by then goes the slow path
    /// (to the leader, ordered), keeping its request id.
    pub fast_path_timeout_ms: Time,
    /// Chance that a fast-path copy to one node arrives only after the
    /// fast-path timeout, so that the write takes the slow path while its
    /// late copies still arrive: slow-path writes then overlap fast writes
    /// and reads, as when one replica's link is slow.
    pub fast_copy_delay_chance: f64,
    /// Clients send multi-puts on the fast path too. Unsafe (see
    /// `consensus::Command::takes_fast_path`); for a test that shows the
    /// simulator catches it.
    pub multi_puts_on_fast_path: bool,
    /// Values are padded to a length in this range (bytes), up to the
    /// client value limit: AppendEntries, durability-log chunks and
    /// forwards then meet the peer message limit. The history keeps each
    /// value's unique prefix; the padding is checked on every read.
    pub value_padding_bytes: (usize, usize),
    /// Most client requests a node holds waiting for an answer (kvnode's
    /// `WAITERS_MAX`); beyond it, new ones are refused as unavailable.
    pub waiters_max: usize,
    /// On a crash, the state database may lose its latest applies (kvnode's
    /// is not synced: it returns to its last flush), up to this many; the
    /// node applies them again from its log.
    pub state_rollback_max: usize,
    /// After every client has finished, the run goes on this long with no
    /// faults and no client; then nothing may be left pending anywhere:
    /// every log the same and applied, every durability log drained. While
    /// a lagging node's log still moves, the period is extended, up to ten
    /// times.
    pub quiet_ms: Time,
    /// Models a runtime that loses the ticks a pause missed (a periodic
    /// timer, as kvnode had before it took time from a clock): a resumed
    /// node gets one tick at some point of its backlog, and counts time
    /// from there. For tests that show the pause fault catches it.
    pub runtime_loses_ticks_in_pauses: bool,
    /// When nodes take snapshots and compact their logs, and the chunk
    /// size of a transfer (`consensus::snapshot`). Never by default; the
    /// soaks and the snapshot suites draw small thresholds, so that
    /// followers behind are sent snapshots under every fault.
    pub snapshots: SnapshotPolicy,
    /// A deliberate runtime bug, for tests that show the snapshot checks
    /// catch it.
    pub injected_snapshot_bug: Option<SnapshotBug>,
    /// Client sessions expire after this many ticks of cluster time without
    /// an update (`consensus::cluster_time`); 0: never (the default). The
    /// soaks draw a timeout of a few seconds for half their seeds.
    pub session_timeout_ticks: u64,
    /// Chance that a client, between two operations, stays idle, so that
    /// its session expires (while faults last).
    pub idle_chance: f64,
    /// How long an idle client stays idle, in percent of the session
    /// timeout: (50, 200), half to twice, by default.
    pub idle_percent: (u64, u64),
    /// A deliberate session bug, for tests that show the checks catch it.
    pub injected_session_bug: Option<SessionBug>,
    /// The nemesis also asks the leader to hand leadership over (to a
    /// random member, or to the most up-to-date follower), as an operator
    /// would (`Input::TransferLeadership`).
    pub leader_transfers: bool,
    /// Nodes beyond `nodes` that start knowing no cluster (as `kvnode
    /// --join` does): the nemesis may add them as learners and promote
    /// them. 0 by default.
    pub spare_nodes: usize,
    /// The nemesis also changes the membership, one server at a time, as
    /// an operator would (`Input::ChangeMembership`): adds a spare or
    /// removed node as a learner, promotes a learner, removes a learner or
    /// a voter (never below three voters, never the leader).
    pub membership_changes: bool,
    /// Each node's read cache in front of its data, in bytes (0: none;
    /// `consensus::cache`). Small by default, so that it evicts.
    pub cache_bytes: u64,
    /// A deliberate read-cache bug.
    pub injected_cache_bug: Option<CacheBug>,
    /// kvnode's `--durability memory`: writes are not synced, so a crash is
    /// sometimes a machine's loss (a third of the crashes, while fewer than
    /// a majority of the initial voters are lost): the node never comes back
    /// with its data. A lost machine is replaced by a new node (a spare,
    /// added by the membership nemesis), never under its old id. What is
    /// still promised, and checked: with at most a minority lost, nothing
    /// acknowledged is lost (the history stays linearizable) and the
    /// cluster stays live.
    pub memory_durability: bool,
    /// A deliberate bug of memory mode.
    pub injected_memory_bug: Option<MemoryBug>,
}

/// Deliberate bugs of memory mode.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MemoryBug {
    /// A lost machine comes back under its old id with an empty disk, as a
    /// member: it may vote again in a term it voted in, and no longer
    /// holds entries it acknowledged.
    LostMachineRejoinsEmpty,
}

/// Deliberate session bugs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SessionBug {
    /// Nil-ext replicas take fast writes of any session they know, fresh
    /// or not: a write completed on the fast path may find its session
    /// expired when it is ordered, and be lost.
    FastPathIgnoresFreshness,
    /// A node expires sessions by its own clock (its tick count), not by
    /// the stamps in the log: nodes disagree on the sessions at one index.
    ExpireByLocalClock,
}

/// Deliberate read-cache bugs of a runtime.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CacheBug {
    /// Applied deletes do not reach the cache: a deleted key's old value is
    /// served.
    DeletesNotApplied,
    /// An installed snapshot does not clear the cache: values from before
    /// it are served.
    KeptAcrossSnapshotInstall,
    /// The cache survives a crash while the state database rolls back
    /// (as a cache kept on disk would).
    KeptAcrossRestart,
}

/// Deliberate snapshot bugs of a runtime.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SnapshotBug {
    /// A capture leaves out the sessions: a node that installs it may apply
    /// a retried request twice.
    CaptureWithoutSessions,
    /// The state database may roll back below a snapshot whose log was
    /// compacted (a capture that is not durable).
    CaptureNotDurable,
}

impl SimConfig {
    /// A run with every fault kind on a cluster of `nodes`.
    pub fn new(seed: u64, nodes: usize) -> Self {
        SimConfig {
            seed,
            nodes,
            clients: 4,
            keys: 6,
            faults: Faults::all(),
            fault_phase_ms: 3_000,
            ops_after_heal: 3,
            liveness_deadline_ms: 10_000,
            tick_ms: 10,
            net_delay_ms: (1, 5),
            peer_delay_ms: (1, 5),
            persist_delay_ms: (0, 3),
            client_timeout_ms: 150,
            give_up_ms: 600,
            verbose: false,
            nilext_fast_path: false,
            fast_path_timeout_ms: 40,
            fast_copy_delay_chance: 0.0,
            multi_puts_on_fast_path: false,
            value_padding_bytes: (0, 0),
            waiters_max: usize::MAX,
            state_rollback_max: 8,
            quiet_ms: 3_000,
            runtime_loses_ticks_in_pauses: false,
            snapshots: SnapshotPolicy::never(),
            injected_snapshot_bug: None,
            session_timeout_ticks: 0,
            idle_chance: 0.0,
            idle_percent: (50, 200),
            injected_session_bug: None,
            leader_transfers: false,
            spare_nodes: 0,
            membership_changes: false,
            cache_bytes: 1_000,
            injected_cache_bug: None,
            memory_durability: false,
            injected_memory_bug: None,
        }
    }
}

/// Why a run failed.
#[derive(Clone, Debug)]
pub struct Failure {
    /// The run's seed.
    pub seed: u64,
    /// When the failure was found.
    pub time: Time,
    /// What went wrong.
    pub message: String,
    /// The last events before the failure.
    pub trace: Vec<String>,
}

impl std::fmt::Display for Failure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        writeln!(
            f,
            "seed {} failed at t={}ms: {}",
            self.seed, self.time, self.message
        )?;
        if !self.trace.is_empty() {
            writeln!(f, "last events:")?;
            for line in &self.trace {
                writeln!(f, "  {line}")?;
            }
        }
        Ok(())
    }
}

/// What a successful run did, for reports and for tests that look at the
/// protocol's shape.
#[derive(Clone, Debug, Default)]
pub struct RunStats {
    /// Operations completed with a known result.
    pub completed: usize,
    /// Operations abandoned with an unknown outcome.
    pub unknown: usize,
    /// Peer messages sent, by kind.
    pub messages: BTreeMap<&'static str, u64>,
    /// Synced write batches, over all nodes.
    pub syncs: u64,
    /// Crashes injected.
    pub crashes: u64,
    /// Pauses injected.
    pub pauses: u64,
    /// Client processes restarted.
    pub client_restarts: u64,
    /// Requests refused because their sequence number was below the
    /// session's (careless client restarts).
    pub stale_refusals: u64,
    /// Sessions expired, counted at every node that applied the expiry.
    pub sessions_expired: u64,
    /// Updates refused as session-expired.
    pub session_expired_refusals: u64,
    /// Fast-path writes a replica sent to the slow path (session new to
    /// it, or close to expiry).
    pub fast_path_refusals: u64,
    /// Times a client stayed idle for about a session timeout.
    pub idle_clients: u64,
    /// Leadership transfers the nemesis asked a leader for.
    pub leader_transfers: u64,
    /// Membership changes the nemesis asked a leader for.
    pub membership_changes_asked: u64,
    /// Configuration entries applied, counted once per index.
    pub membership_changes_applied: u64,
    /// Promotions of learners to voters applied, once per index.
    pub promotions_applied: u64,
    /// Removals applied, once per index.
    pub removals_applied: u64,
    /// Peer messages dropped for exceeding the peer message limit.
    pub oversized_messages: u64,
    /// Crashes that rolled a state database back.
    pub state_rollbacks: u64,
    /// Requests refused because a node held too many waiting ones.
    pub waiter_refusals: u64,
    /// Partitions injected.
    pub partitions: u64,
    /// Highest term reached.
    pub max_term: Term,
    /// Writes completed on Nil-ext's fast path (a fast quorum of acks).
    pub fast_path_completions: u64,
    /// Fast-path writes a replica answered with their result: it had
    /// already applied them (a retry, or a copy that arrived late).
    pub fast_path_applied_answers: u64,
    /// Reads served outside the log (ReadIndex, lease, Nil-ext reads).
    pub reads_outside_log: u64,
    /// Log entries applied, over all nodes.
    pub entries_applied: u64,
    /// Snapshots taken, over all nodes.
    pub snapshots_taken: u64,
    /// Snapshots installed from a leader, over all nodes.
    pub snapshots_installed: u64,
    /// Machines lost (memory mode): nodes that never came back.
    pub machines_lost: u64,
    /// Terms led by a node that was not a voter of its configuration
    /// (counted as one by a candidate behind it, it was elected and handed
    /// leadership to a voter: `RaftCore::note_vote_request`).
    pub non_voter_leaders: u64,
    /// Reads the nodes' read caches answered, and those that loaded from
    /// the store, over all nodes.
    pub cache_hits: u64,
    /// See `cache_hits`.
    pub cache_misses: u64,
    /// The recorded history.
    pub history: Vec<Operation>,
}

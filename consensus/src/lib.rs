//! The protocol-independent core shared by every consensus variant.
//!
//! - [`Consensus`]: a protocol as a pure, deterministic state machine. It takes
//!   [`Input`]s (ticks, peer messages, client requests, completions of
//!   durable writes and of applies) and fills an [`Outbox`] (durable writes,
//!   messages marked by whether they may leave before those writes are
//!   durable, committed entries to apply, reads to serve, client replies). It
//!   does no I/O, reads no clock, starts no thread: the runtime in `kvnode`
//!   and the simulator in `sim` drive the very same code. The ordering rules
//!   the runtime follows, and why, are in the [`io`] module; the
//!   [`executor`] carries them out for every runtime.
//! - Shared types ([`types`]), the peer message vocabulary ([`message`]),
//!   quorum arithmetic ([`quorum`]), the in-memory log ([`log`]), request
//!   limits ([`limits`]), a queue of items by deadline ([`deadline`]), real
//!   time turned into ticks ([`clock`]).
//! - The key-value state machine with exactly-once client sessions
//!   ([`state_machine`]), used by the simulator and by `kvnode` alike.
//!
//! # A three-node cluster in memory
//!
//! A protocol does nothing by itself: something must feed it inputs and
//! carry out its outboxes. `sim::manual::ManualCluster` is the smallest such
//! runtime: messages wait in a queue until delivered and writes until their
//! sync completes, by the rules of [`io`]. The same few lines drive any of
//! the three protocols.
//!
//! ```
//! use consensus::{ClientRequest, Command, CommandResult, Consensus, NodeId, RequestId, Role};
//! use sim::manual::ManualCluster;
//!
//! /// Elects node 1, writes through it, and reads the value back.
//! fn write_and_read<P: Consensus>(build: impl FnMut(NodeId, &[NodeId]) -> P) {
//!     let mut cluster = ManualCluster::new(3, build);
//!
//!     // Node 1's election timer runs out: it campaigns (pre-vote first,
//!     // where the protocol has one) and the others vote for it.
//!     cluster.elect(1, 100);
//!     assert_eq!(cluster.node(1).status().role, Role::Leader);
//!
//!     // A client write to the leader: it appends the entry, replicates
//!     // it, and answers once a majority holds it and it is applied.
//!     let put = ClientRequest {
//!         id: RequestId { client: 7, seq: 1 },
//!         command: Command::Put { key: b"greeting".to_vec(), value: b"hello".to_vec() },
//!     };
//!     cluster.request(1, put.clone());
//!     cluster.settle(10_000); // deliver messages and complete syncs until quiet
//!     assert_eq!(cluster.result_of(put.id), Some(&CommandResult::Written));
//!
//!     // A read: through the log (vanilla), or confirmed by a heartbeat
//!     // round (ReadIndex, the others' default).
//!     let get = ClientRequest {
//!         id: RequestId { client: 7, seq: 2 },
//!         command: Command::Get { key: b"greeting".to_vec() },
//!     };
//!     cluster.request(1, get.clone());
//!     cluster.settle(10_000);
//!     assert_eq!(
//!         cluster.result_of(get.id),
//!         Some(&CommandResult::Value(Some(b"hello".to_vec())))
//!     );
//!     // Every node holds the entry.
//!     let last = cluster.node(1).status().last_log_index;
//!     for id in 1..=3 {
//!         assert_eq!(cluster.durable_last(id).0, last);
//!     }
//! }
//!
//! // Figure 2 Raft.
//! write_and_read(|id, members| {
//!     let config = raft_vanilla::Config::new(id, members.to_vec(), 42);
//!     raft_vanilla::VanillaRaft::new(config, Default::default())
//! });
//! // Raft with batching, pipelining, ReadIndex, pre-vote, check-quorum.
//! write_and_read(|id, members| {
//!     let config = raft_optimized::Config::new(id, members.to_vec(), 42);
//!     raft_optimized::OptimizedRaft::new(config, Default::default())
//! });
//! // Nil-ext Raft; this write goes to the leader (a client would send it
//! // to every replica first, on the fast path: `Input::FastWrite`).
//! write_and_read(|id, members| {
//!     let config = raft_nilext::Config::new(id, members.to_vec(), 42);
//!     raft_nilext::NilextRaft::new(config, Default::default())
//! });
//! ```
//!
//! kvnode's runtime does the same with RocksDB, gRPC and a real clock; the
//! simulator (`sim::Simulation`) with faults, many clients and the checks
//! described in `docs/architecture.md`.

pub mod cache;
pub mod clock;
pub mod cluster_time;
pub mod config;
pub mod deadline;
pub mod executor;
pub mod io;
pub mod limits;
pub mod log;
pub mod membership;
pub mod message;
pub mod quorum;
pub mod raft;
pub mod rng;
pub mod snapshot;
pub mod state_machine;
pub mod types;

/// Locks `mutex`. A lock poisoned by a thread that panicked while holding
/// it is taken as it is: that panic must not stop every other user of the
/// data too.
pub fn lock<T>(mutex: &std::sync::Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|e| e.into_inner())
}

pub use io::{
    DurableRecord, Envelope, HardState, Input, Outbox, OutboxParts, Recovered, Reply, ReplyOutcome,
    Role, SoftState, Status, Timing, Write,
};
pub use membership::{Membership, MembershipChange, MembershipError, NodeSet};
pub use message::Message;
pub use types::{
    ClientId, ClientRequest, Command, CommandClass, CommandResult, Entry, EntryPayload,
    ExecutionError, Key, LogIndex, NodeId, RequestId, Seq, Term, Value,
};

/// A consensus protocol as a pure state machine.
///
/// One value per replica. The runtime calls [`Consensus::step`] with each
/// event in the order the events happen, and carries out the filled
/// [`Outbox`] as the [`io`] module prescribes, before the next call. Equal
/// inputs give equal outputs: there is no hidden source of time or
/// randomness (a protocol that randomizes, such as election timeouts, draws
/// from a seeded generator it was built with).
///
/// A protocol is built from what its storage holds ([`Recovered`]) by a
/// constructor of its own; the simulator takes that constructor as a
/// closure, so it can run any protocol.
pub trait Consensus {
    /// Reacts to one event, appending what it asks the runtime to do to
    /// `out`.
    fn step(&mut self, input: Input, out: &mut Outbox);

    /// The node's role, term, leader, commit and applied indexes.
    fn status(&self) -> Status;

    /// Sets the session timeout, in ticks, that the stamps of the entries
    /// this node creates as leader enforce ([`cluster_time`]); 0, the
    /// default: sessions never expire.
    fn set_session_timeout(&mut self, ticks: u64);

    /// As leader: each other member's match index (the highest index known
    /// to match this node's log), for metrics; empty otherwise.
    fn follower_matches(&self) -> Vec<(NodeId, LogIndex)> {
        Vec::new()
    }

    /// Nil-ext: the records its durability log holds and their bytes, for
    /// metrics; `None` for protocols without one.
    fn durability_log_size(&self) -> Option<(usize, usize)> {
        None
    }
}

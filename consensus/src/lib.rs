//! The protocol-independent core shared by every consensus variant.
//!
//! - [`Consensus`]: a protocol as a pure, deterministic state machine. It takes
//!   [`Input`]s (ticks, peer messages, client requests, completions of
//!   durable writes and of applies) and fills an [`Outbox`] (durable writes,
//!   messages marked by whether they may leave before those writes are
//!   durable, committed entries to apply, reads to serve, client replies). It
//!   does no I/O, reads no clock, starts no thread: the runtime in `kvnode`
//!   and the simulator in `sim` drive the very same code. The ordering rules
//!   the runtime follows, and why, are in the [`io`] module.
//! - Shared types ([`types`]), the peer message vocabulary ([`message`]),
//!   quorum arithmetic ([`quorum`]), the in-memory log ([`log`]), request
//!   limits ([`limits`]), a queue of items by deadline ([`deadline`]), real
//!   time turned into ticks ([`clock`]).
//! - The key-value state machine with exactly-once client sessions
//!   ([`state_machine`]), used by the simulator and by `kvnode` alike.

pub mod clock;
pub mod deadline;
pub mod io;
pub mod limits;
pub mod log;
pub mod message;
pub mod quorum;
pub mod raft;
pub mod rng;
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
    Role, Status, Timing, Write,
};
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
}

//! The one executor of the ordering rules of [`crate::io`], for every
//! runtime: kvnode's, the simulator's and the hand-driven cluster's each
//! implement [`Effects`] (how to send, write, apply, answer) and leave the
//! rules (what may go when) to [`carry_out`] and [`step`]. So the simulator
//! checks exactly the rules the node runs.

use crate::Consensus;
use crate::clock::TickClock;
use crate::io::{Envelope, Input, Outbox, OutboxParts, Reply, SoftState, Write};
use crate::snapshot::{ChunkRequest, SnapshotMeta};
use crate::types::{ClientRequest, Entry};

/// Writes to make durable with one sync, in order after every write
/// handed over before, and what must wait for them.
#[derive(Debug, Default)]
pub struct PersistJob {
    /// The writes (never empty).
    pub writes: Vec<Write>,
    /// Messages that leave once the writes are durable.
    pub after: Vec<Envelope>,
    /// Replies that leave once the writes are durable.
    pub replies: Vec<Reply>,
}

/// What a runtime does for the executor. Every method carries out one kind
/// of effect; none decides when (that is [`carry_out`]'s).
pub trait Effects {
    /// Why a runtime could not carry out an effect (kvnode: its storage
    /// failed; the simulator and the hand-driven cluster never fail).
    type Error;

    /// Hands a message to the network, now.
    fn send(&mut self, envelope: Envelope);
    /// Answers a waiting client, now.
    fn reply(&mut self, reply: Reply);
    /// Hands writes to the disk: they become durable after every write
    /// handed over before, then their messages and replies leave, then the
    /// runtime reports [`Input::Persisted`].
    fn persist(&mut self, job: PersistJob) -> Result<(), Self::Error>;
    /// True while some write handed over is not yet durable.
    fn writes_in_flight(&self) -> bool;
    /// Makes messages and replies wait for every write handed over so far
    /// (called only while some are in flight).
    fn after_writes_in_flight(
        &mut self,
        after: Vec<Envelope>,
        replies: Vec<Reply>,
    ) -> Result<(), Self::Error>;
    /// Applies committed entries (in index order, directly after the
    /// applied index) and answers the clients waiting for them.
    fn apply(&mut self, entries: Vec<Entry>) -> Result<(), Self::Error>;
    /// Serves reads from the state machine and answers them.
    fn serve_reads(&mut self, reads: Vec<ClientRequest>) -> Result<(), Self::Error>;
    /// Reads a chunk of a snapshot this node captured and sends it to the
    /// follower, now (a runtime that no longer holds that snapshot sends
    /// nothing; the leader starts over with its latest when no answer
    /// comes).
    fn send_snapshot_chunk(&mut self, request: ChunkRequest);
    /// Entries were just applied, up to `at`. When the runtime's
    /// `crate::snapshot::SnapshotPolicy` says a snapshot is due, captures
    /// the state machine (it stands at `at`), durably, and returns how many
    /// entries the protocol should keep behind it. None by default.
    fn snapshot_if_due(&mut self, at: SnapshotMeta) -> Result<Option<u64>, Self::Error> {
        let _ = at;
        Ok(None)
    }
    /// The node's role, term or leader changed (for logs; nothing to do
    /// by default).
    fn role_changed(&mut self, soft: SoftState) {
        let _ = soft;
    }
}

/// Carries out one outbox by the rules of [`crate::io`], in their order:
/// what may leave now leaves; the writes go to the disk with what waits for
/// them (or, with no write of their own, what waits joins the writes in
/// flight, or leaves now when none is); entries are applied, then reads
/// served. Returns the inputs to feed back ([`Input::Applied`], then
/// [`Input::SnapshotTaken`] when a snapshot was taken), if any.
pub fn carry_out<E: Effects>(out: Outbox, effects: &mut E) -> Result<Vec<Input>, E::Error> {
    let parts = out.split();
    let waits = parts.waits_for_persist();
    let OutboxParts {
        send_now,
        reply_now,
        persist,
        send_after_persist,
        reply_after_persist,
        apply,
        reads,
        snapshot_chunks,
        soft_state,
    } = parts;
    if let Some(soft) = soft_state {
        effects.role_changed(soft);
    }
    for envelope in send_now {
        effects.send(envelope);
    }
    for reply in reply_now {
        effects.reply(reply);
    }
    for request in snapshot_chunks {
        effects.send_snapshot_chunk(request);
    }
    if !persist.is_empty() {
        effects.persist(PersistJob {
            writes: persist,
            after: send_after_persist,
            replies: reply_after_persist,
        })?;
    } else if waits {
        if effects.writes_in_flight() {
            // "After persist" means after every write issued so far: a
            // vote granted again waits for the write of the first grant.
            effects.after_writes_in_flight(send_after_persist, reply_after_persist)?;
        } else {
            for envelope in send_after_persist {
                effects.send(envelope);
            }
            for reply in reply_after_persist {
                effects.reply(reply);
            }
        }
    }
    let mut follow_up = Vec::new();
    if let Some(last) = apply.last() {
        let at = SnapshotMeta {
            index: last.index,
            term: last.term,
            stamp: last.stamp,
            // The protocol fills it in (`RaftCore::snapshot_taken`).
            membership: Default::default(),
        };
        follow_up.push(Input::Applied { index: at.index });
        effects.apply(apply)?;
        if let Some(keep_entries) = effects.snapshot_if_due(at)? {
            follow_up.push(Input::SnapshotTaken {
                snapshot: at,
                keep_entries,
            });
        }
    }
    if !reads.is_empty() {
        effects.serve_reads(reads)?;
    }
    Ok(follow_up)
}

/// Feeds `input` to `protocol` and carries out what follows, feeding back
/// [`Input::Applied`] (and [`Input::SnapshotTaken`]) until nothing follows.
pub fn step<P: Consensus + ?Sized, E: Effects>(
    protocol: &mut P,
    input: Input,
    effects: &mut E,
) -> Result<(), E::Error> {
    let mut next = std::collections::VecDeque::from([input]);
    while let Some(input) = next.pop_front() {
        let mut out = Outbox::default();
        protocol.step(input, &mut out);
        next.extend(carry_out(out, effects)?);
    }
    Ok(())
}

/// Gives `protocol` every tick real time owes it at `now` (rule 0 of
/// [`crate::io`]), each a step of its own; returns how many.
pub fn deliver_due_ticks<P: Consensus + ?Sized, E: Effects>(
    protocol: &mut P,
    clock: &mut TickClock,
    now: u64,
    effects: &mut E,
) -> Result<u64, E::Error> {
    let due = clock.take_due(now);
    for _ in 0..due {
        step(protocol, Input::Tick, effects)?;
    }
    Ok(due)
}

//! The runtime loop: one thread per node that owns the protocol value, the
//! storage and the state machine, and carries out every outbox exactly as
//! written, by the rules of `consensus::io`:
//!
//! 1. messages and replies marked `Now` are handed to the transport;
//! 2. the outbox's writes are made durable in one synced RocksDB batch;
//! 3. messages and replies marked `AfterPersist` are handed over;
//! 4. committed entries are applied (one atomic batch) and their waiting
//!    callers answered; reads are served and answered;
//! 5. `Persisted` and `Applied` are fed back to the protocol.
//!
//! It adds no optimization of its own: it never merges two outboxes' writes
//! into one sync, never batches messages the protocol did not batch.
//!
//! Why a dedicated thread and not a tokio task: every step may block on a
//! RocksDB sync, and a protocol step must finish before the next begins, so
//! the loop is sequential by nature; a thread keeps those blocking calls off
//! the async workers that serve gRPC.

use std::collections::{HashMap, VecDeque};

use consensus::io::{Input, Outbox, ReplyOutcome, Status, Timing};
use consensus::state_machine::StateMachine;
use consensus::{ClientRequest, CommandResult, Consensus, Message, NodeId, RequestId};
use tokio::sync::{mpsc, oneshot};

use crate::storage::{Storage, StorageError};

/// The most client requests a node holds waiting for an answer; beyond it,
/// new requests are refused as unavailable (back-pressure, not a queue
/// without bound).
pub const WAITERS_MAX: usize = 16 * 1024;

/// What a waiting client request is answered with.
#[derive(Debug)]
pub enum ClientAnswer {
    /// The result of applying (or reading) its command.
    Result(CommandResult),
    /// The protocol's answer: not leader, unavailable, rejected.
    Outcome(ReplyOutcome),
}

/// A snapshot of the node for the Status call.
#[derive(Clone, Debug)]
pub struct NodeStatus {
    /// The protocol's own status.
    pub status: Status,
    /// Term of the last durable log entry.
    pub last_log_term: u64,
    /// Synced write batches since start.
    pub synced_writes: u64,
}

/// An event for the runtime loop.
#[derive(Debug)]
pub enum Event {
    /// A timer tick.
    Tick,
    /// A message from a peer.
    Peer {
        /// The sender.
        from: NodeId,
        /// The message.
        message: Message,
    },
    /// A client request and where to send its answer.
    Client {
        /// The request.
        request: ClientRequest,
        /// The caller waiting for it.
        reply: oneshot::Sender<ClientAnswer>,
    },
    /// A status query.
    Status {
        /// Where to send the status.
        reply: oneshot::Sender<NodeStatus>,
    },
    /// Stop the loop.
    Shutdown,
}

/// A protocol value the runtime can own on its thread.
pub type BoxedProtocol = Box<dyn Consensus + Send>;

/// The runtime of one node.
pub struct Runtime {
    node_id: NodeId,
    protocol: BoxedProtocol,
    storage: Storage,
    state_machine: StateMachine,
    peers: HashMap<NodeId, mpsc::Sender<Message>>,
    waiters: HashMap<RequestId, Vec<oneshot::Sender<ClientAnswer>>>,
    waiting: usize,
    ticks: u64,
    dropped_messages: u64,
}

impl std::fmt::Debug for Runtime {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Runtime")
            .field("node_id", &self.node_id)
            .field("status", &self.protocol.status())
            .field("waiting", &self.waiting)
            .finish_non_exhaustive()
    }
}

impl Runtime {
    /// A runtime for a node rebuilt from storage.
    pub fn new(
        node_id: NodeId,
        protocol: BoxedProtocol,
        storage: Storage,
        state_machine: StateMachine,
        peers: HashMap<NodeId, mpsc::Sender<Message>>,
    ) -> Self {
        Runtime {
            node_id,
            protocol,
            storage,
            state_machine,
            peers,
            waiters: HashMap::new(),
            waiting: 0,
            ticks: 0,
            dropped_messages: 0,
        }
    }

    /// Runs until `Shutdown` or until every sender of `events` is gone.
    /// Returns an error only when storage fails, which stops the node: a
    /// node that cannot persist must not keep acknowledging.
    pub fn run(mut self, mut events: mpsc::Receiver<Event>) -> Result<(), StorageError> {
        while let Some(event) = events.blocking_recv() {
            let input = match event {
                Event::Shutdown => break,
                Event::Tick => {
                    self.ticks += 1;
                    if self.ticks.is_multiple_of(64) {
                        self.prune_abandoned_waiters();
                    }
                    Input::Tick
                }
                Event::Peer { from, message } => Input::Message { from, message },
                Event::Client { request, reply } => {
                    if self.waiting >= WAITERS_MAX {
                        let _ = reply.send(ClientAnswer::Outcome(ReplyOutcome::Unavailable));
                        continue;
                    }
                    self.waiters.entry(request.id).or_default().push(reply);
                    self.waiting += 1;
                    Input::Request(request)
                }
                Event::Status { reply } => {
                    let (_, last_log_term) = self.storage.last_log();
                    let _ = reply.send(NodeStatus {
                        status: self.protocol.status(),
                        last_log_term,
                        synced_writes: self.storage.synced_writes(),
                    });
                    continue;
                }
            };
            self.step(input)?;
        }
        tracing::info!(
            node = self.node_id,
            dropped_messages = self.dropped_messages,
            "runtime stopped"
        );
        Ok(())
    }

    fn step(&mut self, input: Input) -> Result<(), StorageError> {
        let mut inputs = VecDeque::from([input]);
        while let Some(input) = inputs.pop_front() {
            let mut out = Outbox::default();
            self.protocol.step(input, &mut out);
            self.carry_out(out, &mut inputs)?;
        }
        Ok(())
    }

    fn carry_out(
        &mut self,
        out: Outbox,
        follow_ups: &mut VecDeque<Input>,
    ) -> Result<(), StorageError> {
        let Outbox {
            persist,
            send,
            apply,
            reads,
            reply,
        } = out;
        let (now, after): (Vec<_>, Vec<_>) =
            send.into_iter().partition(|e| e.timing == Timing::Now);
        let (replies_now, replies_after): (Vec<_>, Vec<_>) =
            reply.into_iter().partition(|r| r.timing == Timing::Now);
        for envelope in now {
            self.send(envelope.to, envelope.message);
        }
        for r in replies_now {
            self.answer(r.request, ClientAnswer::Outcome(r.outcome));
        }
        if !persist.is_empty() {
            self.storage.persist(&persist)?;
            let (last_index, last_term) = self.storage.last_log();
            follow_ups.push_back(Input::Persisted {
                last_index,
                last_term,
            });
        }
        for envelope in after {
            self.send(envelope.to, envelope.message);
        }
        for r in replies_after {
            self.answer(r.request, ClientAnswer::Outcome(r.outcome));
        }
        if let Some(last) = apply.last() {
            let index = last.index;
            let batch = self.state_machine.apply(&self.storage, &apply);
            self.storage.apply(&batch)?;
            for (_, request, result) in batch.results {
                self.answer(request, ClientAnswer::Result(result));
            }
            follow_ups.push_back(Input::Applied { index });
        }
        for request in reads {
            let result = self.state_machine.read(&self.storage, &request.command);
            self.answer(request.id, ClientAnswer::Result(result));
        }
        Ok(())
    }

    fn send(&mut self, to: NodeId, message: Message) {
        let Some(peer) = self.peers.get(&to) else {
            tracing::warn!(
                node = self.node_id,
                to,
                "message to an unknown peer dropped"
            );
            return;
        };
        // A full queue means the peer is slow or unreachable: drop the
        // message as a lossy network would; the protocol retries.
        if peer.try_send(message).is_err() {
            self.dropped_messages += 1;
            if self.dropped_messages.is_power_of_two() {
                tracing::debug!(
                    node = self.node_id,
                    to,
                    dropped = self.dropped_messages,
                    "peer queue full"
                );
            }
        }
    }

    fn answer(&mut self, request: RequestId, answer: ClientAnswer) {
        let Some(mut waiting) = self.waiters.remove(&request) else {
            return;
        };
        self.waiting -= waiting.len();
        // Several callers may wait for the same request (a client retried
        // it here); each gets the same answer.
        let last = waiting.pop();
        for caller in waiting {
            let copy = match &answer {
                ClientAnswer::Result(r) => ClientAnswer::Result(r.clone()),
                ClientAnswer::Outcome(o) => ClientAnswer::Outcome(o.clone()),
            };
            let _ = caller.send(copy);
        }
        if let Some(caller) = last {
            let _ = caller.send(answer);
        }
    }

    /// Forgets callers that gave up (their deadline passed).
    fn prune_abandoned_waiters(&mut self) {
        self.waiters.retain(|_, callers| {
            callers.retain(|c| !c.is_closed());
            !callers.is_empty()
        });
        self.waiting = self.waiters.values().map(Vec::len).sum();
    }
}

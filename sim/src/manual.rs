//! A hand-driven cluster for tests that show a protocol's shape: which
//! messages a step sends, how many durable writes it makes, what waits for
//! what. Nothing happens unless the test says so: messages wait in a queue
//! until delivered, writes wait until their sync is completed. The same
//! runtime rules as the simulator apply (see `consensus::io`).

use std::collections::{BTreeMap, BTreeSet, VecDeque};

use consensus::executor::{self, Effects, PersistJob};
use consensus::io::{Envelope, Input, Outbox, Recovered, Reply, Timing, Write};
use consensus::message::Message;
use consensus::state_machine::{MemKv, StateMachine};
use consensus::{
    ClientRequest, CommandResult, Consensus, Entry, LogIndex, NodeId, RequestId, Term,
};

/// A message in the network queue.
#[derive(Clone, Debug)]
pub struct InFlight {
    /// The sender.
    pub from: NodeId,
    /// The recipient.
    pub to: NodeId,
    /// The message.
    pub message: Message,
}

struct Pending {
    writes: Vec<Write>,
    after: Vec<Envelope>,
    replies: Vec<Reply>,
}

/// What a node's storage holds.
#[derive(Default, Debug, Clone)]
pub struct Durable {
    /// The durable log.
    pub log: Vec<Entry>,
    /// The durable Nil-ext durability log.
    pub durability_log: Vec<consensus::DurableRecord>,
    /// Synced write batches so far.
    pub syncs: u64,
}

/// One node of a [`ManualCluster`].
#[allow(missing_debug_implementations)]
pub struct ManualNode<P> {
    /// The protocol value.
    pub protocol: P,
    /// What is durable.
    pub durable: Durable,
    pending: VecDeque<Pending>,
    state_machine: StateMachine,
    kv: MemKv,
}

/// What a client got back, in order.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Answer {
    /// The result of applying or reading its command, at `node`.
    Result {
        /// The node that answered.
        node: NodeId,
        /// The request.
        request: RequestId,
        /// Its result.
        result: CommandResult,
    },
    /// A protocol reply (redirect, unavailable, ...), at `node`.
    Reply {
        /// The node that answered.
        node: NodeId,
        /// The reply.
        reply: Reply,
    },
}

/// A cluster driven step by step by a test.
pub struct ManualCluster<P> {
    /// The nodes, by id.
    pub nodes: BTreeMap<NodeId, ManualNode<P>>,
    /// Messages sent and not yet delivered, oldest first.
    pub network: VecDeque<InFlight>,
    /// Every answer to a client, in order.
    pub answers: Vec<Answer>,
    /// Directed links that drop messages: (from, to).
    pub cut: BTreeSet<(NodeId, NodeId)>,
    /// Every outbox produced, with its node, for assertions.
    pub outboxes: Vec<(NodeId, OutboxSummary)>,
}

/// The countable shape of one outbox.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct OutboxSummary {
    /// Number of writes (one synced batch when non-zero).
    pub writes: usize,
    /// Log entries appended by those writes.
    pub appended_entries: usize,
    /// Messages by timing: (now, after persist).
    pub messages: (usize, usize),
    /// Entries applied.
    pub applied: usize,
    /// Reads served outside the log.
    pub reads: usize,
}

impl OutboxSummary {
    fn of(out: &Outbox) -> Self {
        OutboxSummary {
            writes: out.persist.len(),
            appended_entries: out
                .persist
                .iter()
                .map(|w| match w {
                    Write::AppendLog(entries) => entries.len(),
                    _ => 0,
                })
                .sum(),
            messages: (
                out.send.iter().filter(|e| e.timing == Timing::Now).count(),
                out.send
                    .iter()
                    .filter(|e| e.timing == Timing::AfterPersist)
                    .count(),
            ),
            applied: out.apply.len(),
            reads: out.reads.len(),
        }
    }
}

/// The hand-driven cluster's effects for one node: writes wait in its
/// queue for a test's `sync`, messages in the network for `deliver`.
struct ManualEffects<'a> {
    id: NodeId,
    pending: &'a mut VecDeque<Pending>,
    state_machine: &'a mut StateMachine,
    kv: &'a mut MemKv,
    network: &'a mut VecDeque<InFlight>,
    answers: &'a mut Vec<Answer>,
}

impl Effects for ManualEffects<'_> {
    type Error = std::convert::Infallible;

    fn send(&mut self, envelope: Envelope) {
        self.network.push_back(InFlight {
            from: self.id,
            to: envelope.to,
            message: envelope.message,
        });
    }

    fn reply(&mut self, reply: Reply) {
        self.answers.push(Answer::Reply {
            node: self.id,
            reply,
        });
    }

    fn persist(&mut self, job: PersistJob) -> Result<(), Self::Error> {
        self.pending.push_back(Pending {
            writes: job.writes,
            after: job.after,
            replies: job.replies,
        });
        Ok(())
    }

    fn writes_in_flight(&self) -> bool {
        !self.pending.is_empty()
    }

    fn after_writes_in_flight(
        &mut self,
        after: Vec<Envelope>,
        replies: Vec<Reply>,
    ) -> Result<(), Self::Error> {
        if let Some(last) = self.pending.back_mut() {
            last.after.extend(after);
            last.replies.extend(replies);
        }
        Ok(())
    }

    fn apply(&mut self, entries: Vec<Entry>) -> Result<(), Self::Error> {
        let batch = self.state_machine.apply(&*self.kv, &entries);
        self.kv.commit(&batch);
        for (_, request, result) in batch.results {
            self.answers.push(Answer::Result {
                node: self.id,
                request,
                result,
            });
        }
        Ok(())
    }

    fn serve_reads(&mut self, reads: Vec<ClientRequest>) -> Result<(), Self::Error> {
        for request in reads {
            let result = self.state_machine.read(&*self.kv, &request.command);
            self.answers.push(Answer::Result {
                node: self.id,
                request: request.id,
                result,
            });
        }
        Ok(())
    }

    fn send_snapshot_chunk(&mut self, request: consensus::snapshot::ChunkRequest) {
        unreachable!(
            "the hand-driven cluster takes no snapshots, so no leader sends one (to {})",
            request.to
        )
    }
}

impl<P> std::fmt::Debug for ManualCluster<P> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ManualCluster")
            .field("nodes", &self.nodes.len())
            .field("network", &self.network.len())
            .finish_non_exhaustive()
    }
}

impl<P: Consensus> ManualCluster<P> {
    /// `n` nodes with empty storage, built by `factory(id, members)`.
    pub fn new(n: u64, factory: impl FnMut(NodeId, &[NodeId]) -> P) -> Self {
        Self::with_spares(n, 0, factory)
    }

    /// `n` members and `spares` more nodes (ids `n + 1` on) that know no
    /// cluster, as `kvnode --join` starts: they wait to be added.
    pub fn with_spares(
        n: u64,
        spares: u64,
        mut factory: impl FnMut(NodeId, &[NodeId]) -> P,
    ) -> Self {
        let members: Vec<NodeId> = (1..=n).collect();
        let nodes = (1..=n + spares)
            .map(|id| {
                let initial: &[NodeId] = if id <= n { &members } else { &[] };
                let node = ManualNode {
                    protocol: factory(id, initial),
                    durable: Durable::default(),
                    pending: VecDeque::new(),
                    state_machine: StateMachine::default(),
                    kv: MemKv::default(),
                };
                (id, node)
            })
            .collect();
        ManualCluster {
            nodes,
            network: VecDeque::new(),
            answers: Vec::new(),
            cut: BTreeSet::new(),
            outboxes: Vec::new(),
        }
    }

    /// The protocol value of `id`.
    pub fn node(&self, id: NodeId) -> &P {
        &self.nodes[&id].protocol
    }

    /// Replaces node `id` with one rebuilt from its durable log by `factory`
    /// (a crash: unsynced writes are lost).
    pub fn restart(
        &mut self,
        id: NodeId,
        hard_state: consensus::io::HardState,
        factory: impl FnOnce(Recovered) -> P,
    ) {
        let node = self.nodes.get_mut(&id).expect("node exists");
        node.pending.clear();
        let recovered = Recovered {
            hard_state,
            log: node.durable.log.clone(),
            applied_index: node.state_machine.applied_index(),
            durability_log: node.durable.durability_log.clone(),
            ..Recovered::default()
        };
        node.protocol = factory(recovered);
    }

    /// Feeds one input to `id` and carries out what follows, except that
    /// writes wait for [`ManualCluster::sync`] and messages for
    /// [`ManualCluster::deliver`].
    pub fn step(&mut self, id: NodeId, input: Input) {
        let mut next = VecDeque::from([input]);
        while let Some(input) = next.pop_front() {
            let mut out = Outbox::default();
            let node = self.nodes.get_mut(&id).expect("node exists");
            node.protocol.step(input, &mut out);
            self.outboxes.push((id, OutboxSummary::of(&out)));
            let ManualNode {
                pending,
                state_machine,
                kv,
                ..
            } = node;
            let mut effects = ManualEffects {
                id,
                pending,
                state_machine,
                kv,
                network: &mut self.network,
                answers: &mut self.answers,
            };
            let Ok(follow_up) = executor::carry_out(out, &mut effects);
            next.extend(follow_up);
        }
    }

    fn enqueue(&mut self, from: NodeId, envelope: Envelope) {
        self.network.push_back(InFlight {
            from,
            to: envelope.to,
            message: envelope.message,
        });
    }

    /// Completes the oldest pending sync of `id`; false if none.
    pub fn sync_one(&mut self, id: NodeId) -> bool {
        let node = self.nodes.get_mut(&id).expect("node exists");
        let Some(job) = node.pending.pop_front() else {
            return false;
        };
        let wrote = !job.writes.is_empty();
        for write in job.writes {
            match write {
                Write::HardState(_) => {}
                Write::TruncateLog { from } => node.durable.log.truncate((from - 1) as usize),
                Write::AppendLog(entries) => node.durable.log.extend(entries),
                Write::DurabilityAppend(records) => node.durable.durability_log.extend(records),
                Write::DurabilityRemove(ids) => node
                    .durable
                    .durability_log
                    .retain(|r| !ids.contains(&r.request.id)),
                Write::DurabilityReplace(records) => node.durable.durability_log = records,
                Write::CompactLog { .. }
                | Write::SnapshotChunk { .. }
                | Write::InstallSnapshot { .. } => {
                    unreachable!("the hand-driven cluster takes no snapshots (the simulator does)")
                }
            }
        }
        if wrote {
            node.durable.syncs += 1;
        }
        let (last_index, last_term) = node
            .durable
            .log
            .last()
            .map_or((0, 0), |e| (e.index, e.term));
        for envelope in job.after {
            self.enqueue(id, envelope);
        }
        for reply in job.replies {
            self.answers.push(Answer::Reply { node: id, reply });
        }
        if wrote {
            self.step(
                id,
                Input::Persisted {
                    last_index,
                    last_term,
                },
            );
        }
        true
    }

    /// Completes every pending sync of `id`.
    pub fn sync(&mut self, id: NodeId) {
        while self.sync_one(id) {}
    }

    /// Completes every pending sync of every node.
    pub fn sync_all(&mut self) {
        let ids: Vec<NodeId> = self.nodes.keys().copied().collect();
        for id in ids {
            self.sync(id);
        }
    }

    /// Delivers the oldest queued message (dropped if its link is cut);
    /// returns it.
    pub fn deliver_one(&mut self) -> Option<InFlight> {
        let message = self.network.pop_front()?;
        if !self.cut.contains(&(message.from, message.to)) {
            self.step(
                message.to,
                Input::Message {
                    from: message.from,
                    message: message.message.clone(),
                },
            );
        }
        Some(message)
    }

    /// Delivers messages, completing syncs as they are needed, until the
    /// network is quiet (bounded: panics after `max_steps`).
    pub fn settle(&mut self, max_steps: usize) {
        for _ in 0..max_steps {
            self.sync_all();
            if self.deliver_one().is_none() {
                self.sync_all();
                if self.network.is_empty() {
                    return;
                }
            }
        }
        panic!("the cluster did not settle within {max_steps} steps");
    }

    /// Ticks `id` `n` times.
    pub fn tick(&mut self, id: NodeId, n: u64) {
        for _ in 0..n {
            self.step(id, Input::Tick);
        }
    }

    /// Ticks node `candidate` until it becomes leader, settling the network
    /// after each tick (others are not ticked). Panics if it does not.
    pub fn elect(&mut self, candidate: NodeId, max_ticks: u64) {
        for _ in 0..max_ticks {
            self.tick(candidate, 1);
            self.settle(10_000);
            if self.node(candidate).status().role == consensus::Role::Leader {
                return;
            }
        }
        panic!("node {candidate} did not become leader within {max_ticks} ticks");
    }

    /// Sends a client request to `id`.
    pub fn request(&mut self, id: NodeId, request: ClientRequest) {
        self.step(id, Input::Request(request));
    }

    /// Messages queued from `from` to `to`.
    pub fn queued(&self, from: NodeId, to: NodeId) -> Vec<&Message> {
        self.network
            .iter()
            .filter(|m| m.from == from && m.to == to)
            .map(|m| &m.message)
            .collect()
    }

    /// Pending (unsynced) write batches of `id`.
    pub fn unsynced(&self, id: NodeId) -> usize {
        self.nodes[&id]
            .pending
            .iter()
            .filter(|p| !p.writes.is_empty())
            .count()
    }

    /// The result answered for `request`, if any.
    pub fn result_of(&self, request: RequestId) -> Option<&CommandResult> {
        self.answers.iter().find_map(|a| match a {
            Answer::Result {
                request: r, result, ..
            } if *r == request => Some(result),
            _ => None,
        })
    }

    /// (last index, last term) of `id`'s durable log.
    pub fn durable_last(&self, id: NodeId) -> (LogIndex, Term) {
        self.nodes[&id]
            .durable
            .log
            .last()
            .map_or((0, 0), |e| (e.index, e.term))
    }
}

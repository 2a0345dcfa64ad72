//! The deterministic cluster simulator.
//!
//! One thread, one seeded generator, logical time: the same seed gives the
//! same run, bit for bit. The simulator plays every part the real system has
//! around a protocol:
//!
//! - **the runtime**: it carries out each [`Outbox`] by the rules of
//!   `consensus::io` (messages marked `Now` leave at once; writes become
//!   durable after a simulated disk delay, first in, first out; messages and
//!   replies marked `AfterPersist` leave only once every write issued before
//!   them is durable; committed entries are applied to the shared
//!   [`StateMachine`] over a [`MemKv`]);
//! - **storage** that knows what was synced: a crash loses every write still
//!   waiting for its sync, and a restart rebuilds the protocol from what is
//!   durable;
//! - **the network**: delays, drops, duplicates, reordering, and partitions
//!   (symmetric, one-way, leader isolated, minority / majority);
//! - **clients** issuing random operations with timeouts and retries under the
//!   same (client, sequence), and recording a history of invocations and
//!   completions, unknown outcomes included;
//! - **a nemesis** that injects those faults during a fault phase, then heals
//!   everything.
//!
//! After every event it checks the safety invariants (at most one leader per
//! term, log matching, leader completeness, the same entry applied at each
//! index on every node); at the end, liveness (every client operation issued
//! after healing completes) and linearizability of the whole history.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet, VecDeque};
use std::fmt::Write as _;
use std::hash::{DefaultHasher, Hash, Hasher};

use consensus::cache::{Cached, ReadCache};
use consensus::clock::TickClock;
use consensus::cluster_time::Stamp;
use consensus::deadline::DeadlineQueue;
use consensus::executor::{self, Effects, PersistJob};
use consensus::io::{
    DurableRecord, Envelope, HardState, Input, Outbox, Recovered, Reply, ReplyOutcome, Role,
    SoftState, Write,
};
use consensus::message::Message;
use consensus::quorum::FastAcks;
use consensus::rng::DetRng;
use consensus::snapshot::{
    ChunkRequest, SinceSnapshot, SnapshotItem, SnapshotMeta, SnapshotPolicy,
};
use consensus::state_machine::{ApplyBatch, FastWriteCheck, KvRead, MemKv, StateMachine};
use consensus::{
    ClientId, ClientRequest, Command, CommandResult, Consensus, Entry, ExecutionError, LogIndex,
    NodeId, RequestId, Term,
};

use crate::history::{describe, show_input, show_output, to_input, to_output};
use crate::linearizability::{self, KvInput, KvOutput, Operation, Verdict};

/// Logical time, in simulated milliseconds.
pub type Time = u64;

mod clients;
mod config;
mod invariants;
mod nemesis;
mod network;
mod snapshots;
mod storage;

use clients::Client;
pub use config::{
    CacheBug, Failure, Faults, MemoryBug, RunStats, SessionBug, SimConfig, SnapshotBug,
};
use invariants::Invariants;
use network::{position_of, short};
use storage::{PendingPersist, Storage, Undo, digest};

#[derive(Debug)]
enum Event {
    /// Wakes a node whose next tick falls due; `chain` tells a wake-up
    /// chain started before a pause from the one its resume started.
    Tick {
        node: NodeId,
        chain: u64,
    },
    Deliver {
        from: NodeId,
        to: NodeId,
        message: Message,
    },
    PersistDone {
        node: NodeId,
        incarnation: u64,
    },
    /// A client's request reaches a node. `op` is the operation's index in
    /// the history: answers find their operation by it, so an answer to an
    /// operation a client gave up (or to its earlier incarnation) is never
    /// taken for the current one's.
    ClientArrive {
        node: NodeId,
        client: usize,
        op: usize,
        attempt: u64,
        request: ClientRequest,
        fast: bool,
    },
    ClientReply {
        client: usize,
        op: usize,
        from: NodeId,
        attempt: u64,
        fast: bool,
        answer: Answer,
    },
    ClientFastTimeout {
        client: usize,
        op: usize,
    },
    ClientTimeout {
        client: usize,
        op: usize,
        attempt: u64,
    },
    ClientRetry {
        client: usize,
        op: usize,
        attempt: u64,
    },
    ClientNext {
        client: usize,
    },
    Nemesis,
    Restart {
        node: NodeId,
    },
    Resume {
        node: NodeId,
    },
    Heal,
}

#[derive(Clone, Debug)]
enum Answer {
    Result(CommandResult),
    Other(ReplyOutcome),
    /// Nil-ext: not taken on the fast path here (kvnode's
    /// `ClientAnswer::SlowPath`).
    SlowPath,
}

struct Node<P> {
    protocol: Option<P>,
    incarnation: u64,
    /// The ticks real time owes this incarnation.
    clock: TickClock,
    /// The current chain of tick wake-ups (a new one at each start and
    /// resume; events of older chains are ignored).
    tick_chain: u64,
    /// Paused: events for this node wait in `backlog` until it resumes.
    paused: bool,
    backlog: Vec<Event>,
    storage: Storage,
    state_machine: StateMachine,
    kv: MemKv,
    /// The read cache in front of `kv` (in memory: lost in a crash).
    cache: ReadCache,
    /// Memory mode: the node's machine was lost; it never comes back.
    lost: bool,
    pending: VecDeque<PendingPersist>,
    /// For the latest applies, newest last: the state machine before each,
    /// and the values its keys held before it (for a state database that
    /// rolls back in a crash).
    undo: VecDeque<Undo>,
    /// Which client waits for which request at this node, and whether on
    /// the fast path: (client, operation, attempt).
    /// Clients waiting for an answer: client, operation, attempt, and the
    /// command's digest (an applied entry answers only its own command).
    waiters: HashMap<(RequestId, bool), (usize, usize, u64, u64)>,
    /// Entries applied since the last snapshot.
    since_snapshot: SinceSnapshot,
    /// The latest snapshots captured (or installed) here, by index: what a
    /// leader sends from. On disk: they survive a crash.
    captures: BTreeMap<LogIndex, (SnapshotMeta, Vec<SnapshotItem>)>,
    /// When a transfer last read each capture.
    capture_used: HashMap<LogIndex, Time>,
}

/// The simulated runtime's effects for node `id` (the rules are
/// `consensus::executor`'s, as in kvnode).
struct SimEffects<'a, P, F> {
    sim: &'a mut Simulation<P, F>,
    id: NodeId,
}

impl<P, F> Effects for SimEffects<'_, P, F>
where
    P: Consensus,
    F: FnMut(NodeId, &[NodeId], Recovered, u64) -> P,
{
    type Error = std::convert::Infallible;

    fn send(&mut self, envelope: Envelope) {
        self.sim.send_message(self.id, envelope);
    }

    fn reply(&mut self, reply: Reply) {
        self.sim.protocol_reply(self.id, reply);
    }

    fn persist(&mut self, job: PersistJob) -> Result<(), Self::Error> {
        self.sim.persist_job(self.id, job);
        Ok(())
    }

    fn writes_in_flight(&self) -> bool {
        !self.sim.nodes[&self.id].pending.is_empty()
    }

    fn after_writes_in_flight(
        &mut self,
        after: Vec<Envelope>,
        replies: Vec<Reply>,
    ) -> Result<(), Self::Error> {
        let node = self.sim.nodes.get_mut(&self.id).expect("node exists");
        if let Some(last) = node.pending.back_mut() {
            last.after.extend(after);
            last.replies.extend(replies);
        }
        Ok(())
    }

    fn apply(&mut self, entries: Vec<Entry>) -> Result<(), Self::Error> {
        self.sim.apply(self.id, &entries);
        Ok(())
    }

    fn serve_reads(&mut self, reads: Vec<ClientRequest>) -> Result<(), Self::Error> {
        self.sim.serve_reads(self.id, reads);
        Ok(())
    }

    fn send_snapshot_chunk(&mut self, request: ChunkRequest) {
        self.sim.send_snapshot_chunk(self.id, request);
    }

    fn snapshot_if_due(&mut self, at: SnapshotMeta) -> Result<Option<u64>, Self::Error> {
        Ok(self.sim.snapshot_if_due(self.id, at))
    }

    fn role_changed(&mut self, soft: SoftState) {
        let id = self.id;
        self.sim.log(|| {
            format!(
                "node {id} is {} at term {}, leader {:?}",
                soft.role.as_str(),
                soft.term,
                soft.leader
            )
        });
    }
}

/// A simulated cluster running protocol `P`, built by `F` from a node id, the
/// member list, what storage recovered, and a seed.
pub struct Simulation<P, F> {
    config: SimConfig,
    rng: DetRng,
    now: Time,
    queue: DeadlineQueue<Time, Event>,
    nodes: BTreeMap<NodeId, Node<P>>,
    factory: F,
    clients: Vec<Client>,
    history: Vec<Operation>,
    history_clock: u64,
    /// Directed links currently cut: (from, to).
    cut: HashSet<(NodeId, NodeId)>,
    /// (client, node) pairs a partition separates, both ways.
    client_cut: HashSet<(usize, NodeId)>,
    /// The last client id given out.
    next_client_id: ClientId,
    /// Operations the state machine refused as stale (a careless client's):
    /// they changed nothing, and the checked history leaves them out.
    refused_as_stale: HashSet<usize>,
    healed: bool,
    heal_time: Time,
    invariants: Invariants,
    trace: VecDeque<String>,
    stats: RunStats,
    failure: Option<String>,
}

const TRACE_LEN: usize = 60;

/// How many times a quiet period that ends with something still pending is
/// extended by another quiet period, as long as draining progressed in the
/// last one.
const QUIET_EXTENSIONS_MAX: u32 = 10;

impl<P, F> std::fmt::Debug for Simulation<P, F> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Simulation")
            .field("seed", &self.config.seed)
            .field("now", &self.now)
            .field("nodes", &self.nodes.len())
            .field("operations", &self.history.len())
            .finish_non_exhaustive()
    }
}

impl<P, F> Simulation<P, F>
where
    P: Consensus,
    F: FnMut(NodeId, &[NodeId], Recovered, u64) -> P,
{
    /// A cluster with empty storage, not yet started.
    pub fn new(config: SimConfig, mut factory: F) -> Self {
        assert!(config.nodes >= 1 && config.clients >= 1 && config.keys >= 2);
        let members: Vec<NodeId> = (1..=config.nodes as NodeId).collect();
        let spares = config.nodes as NodeId + 1..=(config.nodes + config.spare_nodes) as NodeId;
        let mut rng = DetRng::new(config.seed);
        let nodes = members
            .iter()
            .copied()
            .chain(spares)
            .map(|id| {
                // A spare node knows no cluster: it waits to be added.
                let initial: &[NodeId] = if members.contains(&id) { &members } else { &[] };
                let mut protocol = factory(id, initial, Recovered::default(), rng.next_u64());
                protocol.set_session_timeout(config.session_timeout_ticks);
                let node = Node {
                    protocol: Some(protocol),
                    incarnation: 0,
                    clock: TickClock::new(0, config.tick_ms),
                    tick_chain: 0,
                    paused: false,
                    backlog: Vec::new(),
                    storage: Storage::default(),
                    state_machine: StateMachine::default(),
                    kv: MemKv::default(),
                    cache: ReadCache::new(config.cache_bytes),
                    lost: false,
                    pending: VecDeque::new(),
                    undo: VecDeque::new(),
                    waiters: HashMap::new(),
                    since_snapshot: SinceSnapshot::default(),
                    captures: BTreeMap::new(),
                    capture_used: HashMap::new(),
                };
                (id, node)
            })
            .collect();
        let clients = (0..config.clients)
            .map(|i| Client {
                id: 1000 + i as ClientId,
                seq: 0,
                leader_guess: 1 + (i % config.nodes) as NodeId,
                current: None,
                ops_after_heal_left: config.ops_after_heal,
                last_seen: None,
                restarted_carelessly: None,
                read_back: None,
                reusing_numbers: false,
                session_open: false,
            })
            .collect();
        Simulation {
            rng,
            now: 0,
            queue: DeadlineQueue::new(),
            nodes,
            factory,
            clients,
            history: Vec::new(),
            history_clock: 0,
            cut: HashSet::new(),
            client_cut: HashSet::new(),
            next_client_id: 1000 + config.clients as ClientId,
            refused_as_stale: HashSet::new(),
            healed: false,
            heal_time: config.fault_phase_ms,
            invariants: Invariants::default(),
            trace: VecDeque::new(),
            stats: RunStats::default(),
            failure: None,
            config,
        }
    }

    /// Every node simulated, spare ones included.
    fn members(&self) -> Vec<NodeId> {
        self.nodes.keys().copied().collect()
    }

    /// The initial member list node `id` is started with: the first
    /// `nodes` ids, or none for a spare node.
    fn initial_members(&self, id: NodeId) -> Vec<NodeId> {
        let initial = 1..=self.config.nodes as NodeId;
        if initial.contains(&id) {
            initial.collect()
        } else {
            Vec::new()
        }
    }

    fn schedule(&mut self, delay: Time, event: Event) {
        self.queue.push(self.now + delay, event);
    }

    fn log(&mut self, line: impl FnOnce() -> String) {
        let line = format!("t={} {}", self.now, line());
        if self.config.verbose {
            eprintln!("{line}");
        }
        if self.trace.len() == TRACE_LEN {
            self.trace.pop_front();
        }
        self.trace.push_back(line);
    }

    fn fail(&mut self, message: String) {
        if self.failure.is_none() {
            self.failure = Some(message);
        }
    }

    /// Runs to the end: fault phase, healing, liveness phase, then the
    /// linearizability check of the whole history.
    pub fn run(mut self) -> Result<RunStats, Failure> {
        for id in self.members() {
            self.start_clock(id);
        }
        for client in 0..self.clients.len() {
            let start = self.rng.range(0, 20);
            self.schedule(start, Event::ClientNext { client });
        }
        if self.config.fault_phase_ms > 0 {
            let first = self.rng.range(50, 300);
            self.schedule(first, Event::Nemesis);
        }
        let heal_at = self.config.fault_phase_ms;
        self.schedule(heal_at, Event::Heal);
        let deadline = heal_at + self.config.liveness_deadline_ms;
        let mut quiet_until = None;
        let mut quiet_started = 0;
        let mut drain_progress = Vec::new();
        let mut extensions = 0;
        while let Some((time, event)) = self.queue.pop() {
            self.now = time;
            if let Some(until) = quiet_until
                && self.now >= until
            {
                let progress = self.drain_progress();
                if extensions == QUIET_EXTENSIONS_MAX
                    || progress == drain_progress
                    || self.pending().is_empty()
                {
                    break;
                }
                extensions += 1;
                drain_progress = progress;
                quiet_until = Some(until + self.config.quiet_ms);
            }
            if quiet_until.is_none() && self.now > deadline {
                let waiting: Vec<String> = self
                    .clients
                    .iter()
                    .filter(|c| c.current.is_some() || c.ops_after_heal_left > 0)
                    .map(|c| format!("client {} (seq {})", c.id, c.seq))
                    .collect();
                self.fail(format!(
                    "liveness: {} ms after healing, these clients have not finished: {}",
                    self.config.liveness_deadline_ms,
                    waiting.join(", ")
                ));
                break;
            }
            self.handle(event);
            if self.failure.is_none() {
                self.check_invariants();
            }
            if self.failure.is_some() || (self.config.quiet_ms == 0 && self.finished()) {
                break;
            }
            if quiet_until.is_none() && self.finished() {
                quiet_until = Some(self.now + self.config.quiet_ms);
                quiet_started = self.now;
                drain_progress = self.drain_progress();
            }
        }
        if self.failure.is_none() && !self.finished() {
            self.fail("the run stopped with clients unfinished".into());
        }
        if self.failure.is_none() && self.config.quiet_ms > 0 {
            self.check_drained(self.now - quiet_started);
        }
        if self.failure.is_none() {
            let checked: Vec<Operation> = self
                .history
                .iter()
                .enumerate()
                .filter(|(i, _)| !self.refused_as_stale.contains(i))
                .map(|(_, op)| op.clone())
                .collect();
            // SIM_LIN_BUDGET raises the search budget, to get a verdict when
            // a replay exceeded the default.
            let budget = std::env::var("SIM_LIN_BUDGET")
                .ok()
                .and_then(|text| text.parse().ok())
                .unwrap_or(linearizability::DEFAULT_STEP_BUDGET);
            let verdict = linearizability::check_with_budget(&checked, budget);
            match verdict {
                Verdict::Linearizable => {}
                Verdict::Unknown => self.fail(format!(
                    "linearizability check exceeded its budget of {budget} steps per key group \
                     (replay with SIM_LIN_BUDGET set higher for a verdict)"
                )),
                Verdict::NotLinearizable {
                    keys,
                    operations,
                    deepest,
                } => {
                    let mut text = format!(
                        "history not linearizable on keys {:?}; {} operations, search stuck after {}:\n",
                        keys.iter()
                            .map(|k| String::from_utf8_lossy(k).into_owned())
                            .collect::<Vec<_>>(),
                        operations.len(),
                        deepest.len()
                    );
                    for &i in operations.iter().take(80) {
                        let _ = writeln!(text, "    {}", describe(&checked[i]));
                    }
                    self.fail(text);
                }
            }
        }
        match self.failure.take() {
            None => {
                self.stats.completed = self.history.iter().filter(|o| o.ret.is_some()).count();
                self.stats.unknown = self.history.len() - self.stats.completed;
                for node in self.nodes.values() {
                    let cache = node.cache.stats();
                    self.stats.cache_hits += cache.hits;
                    self.stats.cache_misses += cache.misses;
                }
                self.stats.history = std::mem::take(&mut self.history);
                Ok(self.stats)
            }
            Some(message) => Err(Failure {
                seed: self.config.seed,
                time: self.now,
                message,
                trace: self.trace.into_iter().collect(),
            }),
        }
    }

    fn finished(&self) -> bool {
        self.healed
            && self
                .clients
                .iter()
                .all(|c| c.current.is_none() && c.ops_after_heal_left == 0)
    }

    fn handle(&mut self, event: Event) {
        match event {
            Event::Tick { node, chain } => {
                let Some(n) = self.nodes.get(&node) else {
                    return;
                };
                // A paused node's ticks start again when it resumes.
                if n.protocol.is_none() || n.tick_chain != chain || n.paused {
                    return;
                }
                self.deliver_due_ticks(node);
                let next = self.nodes[&node].clock.next_due();
                self.queue.push(next, Event::Tick { node, chain });
            }
            Event::Deliver { from, to, message } => {
                if self.cut.contains(&(from, to)) || self.nodes[&to].protocol.is_none() {
                    return;
                }
                if self.nodes[&to].paused {
                    let event = Event::Deliver { from, to, message };
                    self.nodes
                        .get_mut(&to)
                        .expect("node exists")
                        .backlog
                        .push(event);
                    return;
                }
                self.log(|| format!("{from}->{to} {}", short(&message)));
                self.step(to, Input::Message { from, message });
            }
            Event::PersistDone { node, incarnation } => {
                let n = self.nodes.get_mut(&node).expect("node exists");
                if n.paused && n.incarnation == incarnation {
                    n.backlog.push(Event::PersistDone { node, incarnation });
                    return;
                }
                self.persist_done(node, incarnation)
            }
            Event::ClientArrive {
                node,
                client,
                op,
                attempt,
                request,
                fast,
            } => {
                if self.client_cut.contains(&(client, node)) {
                    return;
                }
                let n = self.nodes.get_mut(&node).expect("node exists");
                if n.protocol.is_none() {
                    return;
                }
                if n.paused {
                    n.backlog.push(Event::ClientArrive {
                        node,
                        client,
                        op,
                        attempt,
                        request,
                        fast,
                    });
                    return;
                }
                if n.waiters.len() >= self.config.waiters_max {
                    // As kvnode's runtime: refused, not queued without bound.
                    let digest = request.command.digest();
                    n.waiters
                        .insert((request.id, fast), (client, op, attempt, digest));
                    self.stats.waiter_refusals += 1;
                    let answer = Answer::Other(ReplyOutcome::Unavailable);
                    self.answer(node, request.id, fast, answer);
                    return;
                }
                let digest = request.command.digest();
                n.waiters
                    .insert((request.id, fast), (client, op, attempt, digest));
                // A fast-path write already applied, below the session's
                // latest update, or not for the fast path here, is answered
                // at once (see `StateMachine::check_fast_write`).
                if fast {
                    let now = n.protocol.as_ref().map_or(0, |p| p.status().cluster_time);
                    let check = match n.state_machine.check_fast_write(&request, now) {
                        FastWriteCheck::SlowPath
                            if self.config.injected_session_bug
                                == Some(SessionBug::FastPathIgnoresFreshness)
                                && n.state_machine.sessions().contains_key(&request.id.client) =>
                        {
                            FastWriteCheck::Accept
                        }
                        check => check,
                    };
                    let answer = match check {
                        FastWriteCheck::Accept => None,
                        FastWriteCheck::Answer(result) => Some(Answer::Result(result)),
                        FastWriteCheck::SlowPath => Some(Answer::SlowPath),
                    };
                    if let Some(answer) = answer {
                        self.answer(node, request.id, true, answer);
                        return;
                    }
                }
                self.log(|| {
                    format!(
                        "client {} -> {node}{}: {} {}",
                        request.id.client,
                        if fast { " (fast path)" } else { "" },
                        request.id,
                        show_input(&to_input(&request.command))
                    )
                });
                let input = if fast {
                    Input::FastWrite(request)
                } else {
                    Input::Request(request)
                };
                self.step(node, input);
            }
            Event::ClientReply {
                client,
                op,
                from,
                attempt,
                fast,
                answer,
            } => {
                if self.client_cut.contains(&(client, from)) {
                    return;
                }
                if fast {
                    self.fast_reply(client, op, from, answer);
                } else {
                    self.client_reply(client, op, attempt, answer);
                }
            }
            Event::ClientFastTimeout { client, op } => {
                if self.current_op(client, op).is_some_and(|o| o.attempt == 0) {
                    self.log(|| format!("client {client} op {op}: fast path timed out, slow path"));
                    self.send_attempt(client);
                }
            }
            Event::ClientTimeout {
                client,
                op,
                attempt,
            } => {
                let Some(current) = self.current_op(client, op) else {
                    return;
                };
                if current.attempt != attempt {
                    return;
                }
                // The first update of a session is retried for half the
                // session timeout at most (kvclient's rule: a copy applied,
                // then expired, would be applied again).
                let first_update_expires = current.first_update
                    && self
                        .session_timeout_ms()
                        .is_some_and(|t| self.now >= current.started + t / 2);
                let give_up = first_update_expires
                    || (!self.healed && self.now >= current.started + self.config.give_up_ms);
                if give_up {
                    self.log(|| format!("client {client} gives up op {op}: outcome unknown"));
                    self.clients[client].current = None;
                    // A client reusing numbers cannot tell whether its first
                    // write was refused as stale. Numbers it goes on reusing
                    // may equal the session's latest: another request under
                    // it is refused (`Session::answer_again`; before, it was
                    // answered with that request's result: soak seeds
                    // 2710090199 and 2710157343, a compare-and-swap answered
                    // "written"). Clients of even id go on, to keep that
                    // refusal tested; the others do as kvclient's
                    // documentation says: when in doubt, take a fresh id.
                    let c = &self.clients[client];
                    if c.reusing_numbers && c.id % 2 == 1 {
                        self.give_fresh_id(client);
                        self.log(|| format!("client {client} takes a fresh id"));
                    }
                    self.schedule(1, Event::ClientNext { client });
                } else {
                    let guess = self.random_node();
                    self.clients[client].leader_guess = guess;
                    self.send_attempt(client);
                }
            }
            Event::ClientRetry {
                client,
                op,
                attempt,
            } => {
                if self
                    .current_op(client, op)
                    .is_some_and(|o| o.attempt == attempt)
                {
                    self.send_attempt(client);
                }
            }
            Event::ClientNext { client } => self.next_op(client),
            Event::Nemesis => {
                if !self.healed {
                    self.nemesis();
                    let next = self.rng.range(100, 400);
                    self.schedule(next, Event::Nemesis);
                }
            }
            Event::Restart { node } => self.restart(node),
            Event::Resume { node } => self.resume(node),
            Event::Heal => {
                self.healed = true;
                self.heal_time = self.now;
                self.cut.clear();
                self.client_cut.clear();
                self.log(|| {
                    "heal: partitions removed, crashed nodes restart, paused nodes resume, network reliable".into()
                });
                for id in self.members() {
                    if self.nodes[&id].protocol.is_none() {
                        self.restart(id);
                    }
                    self.resume(id);
                }
                for client in 0..self.clients.len() {
                    if self.clients[client].current.is_none() {
                        self.schedule(1, Event::ClientNext { client });
                    }
                }
            }
        }
    }

    fn random_node(&mut self) -> NodeId {
        1 + self.rng.range(0, self.nodes.len() as u64)
    }

    // ----- the runtime -----

    /// Feeds `input` to node `id`, after every tick real time owes it
    /// (`consensus::io`, rule 0), and carries out what follows.
    fn step(&mut self, id: NodeId, input: Input) {
        if !self.config.runtime_loses_ticks_in_pauses {
            self.deliver_due_ticks(id);
        }
        self.step_now(id, input);
    }

    /// Delivers the ticks real time owes node `id`.
    fn deliver_due_ticks(&mut self, id: NodeId) {
        let now = self.now;
        let node = self.nodes.get_mut(&id).expect("node exists");
        if node.protocol.is_none() {
            return;
        }
        for _ in 0..node.clock.take_due(now) {
            self.step_now(id, Input::Tick);
        }
    }

    /// Starts the tick clock of node `id`'s current incarnation, at a
    /// random phase.
    fn start_clock(&mut self, id: NodeId) {
        let phase = self.rng.range(0, self.config.tick_ms);
        let (now, tick) = (self.now, self.config.tick_ms);
        let node = self.nodes.get_mut(&id).expect("node exists");
        node.clock = TickClock::new(now + phase, tick);
        node.tick_chain += 1;
        let chain = node.tick_chain;
        let first = node.clock.next_due();
        self.queue.push(first, Event::Tick { node: id, chain });
    }

    fn step_now(&mut self, id: NodeId, input: Input) {
        let mut next = VecDeque::from([input]);
        let mut rounds = 0;
        while let Some(input) = next.pop_front() {
            rounds += 1;
            assert!(rounds < 10_000, "node {id} keeps producing work");
            let mut out = Outbox::default();
            let node = self.nodes.get_mut(&id).expect("node exists");
            let Some(protocol) = node.protocol.as_mut() else {
                return;
            };
            protocol.step(input, &mut out);
            if let Some(answer) = out.membership_change.take() {
                self.log(|| format!("node {id}: membership change {answer:?}"));
            }
            let Ok(follow_up) = executor::carry_out(out, &mut SimEffects { sim: self, id });
            next.extend(follow_up);
        }
    }

    fn protocol_reply(&mut self, id: NodeId, reply: Reply) {
        self.answer(
            id,
            reply.request,
            reply.fast_path,
            Answer::Other(reply.outcome),
        );
    }
}

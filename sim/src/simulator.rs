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

use consensus::clock::TickClock;
use consensus::deadline::DeadlineQueue;
use consensus::executor::{self, Effects, PersistJob};
use consensus::io::{
    DurableRecord, Envelope, HardState, Input, Outbox, Recovered, Reply, ReplyOutcome, Role,
    SoftState, Write,
};
use consensus::message::Message;
use consensus::quorum::FastAcks;
use consensus::rng::DetRng;
use consensus::state_machine::{ApplyBatch, KvRead, MemKv, StateMachine};
use consensus::{
    ClientId, ClientRequest, Command, CommandResult, Consensus, Entry, ExecutionError, LogIndex,
    NodeId, RequestId, Term,
};

use crate::history::{describe, show_input, show_output, to_input, to_output};
use crate::linearizability::{self, KvInput, KvOutput, Operation, Verdict};

/// Logical time, in simulated milliseconds.
pub type Time = u64;

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
    /// every log the same and applied, every durability log drained.
    pub quiet_ms: Time,
    /// Models a runtime that loses the ticks a pause missed (a periodic
    /// timer, as kvnode had before it took time from a clock): a resumed
    /// node gets one tick at some point of its backlog, and counts time
    /// from there. For tests that show the pause fault catches it.
    pub runtime_loses_ticks_in_pauses: bool,
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
    /// The recorded history.
    pub history: Vec<Operation>,
}

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
}

/// Writes waiting for their sync, with what must wait for them.
struct PendingPersist {
    writes: Vec<Write>,
    after: Vec<Envelope>,
    replies: Vec<Reply>,
}

/// A node's durable storage: what survives a crash.
#[derive(Default)]
struct Storage {
    hard_state: HardState,
    log: Vec<Entry>,
    durability_log: Vec<DurableRecord>,
    /// `chain[i]` digests `log[..=i]`: equal digests mean equal prefixes.
    chain: Vec<u64>,
}

impl Storage {
    fn last(&self) -> (LogIndex, Term) {
        self.log.last().map_or((0, 0), |e| (e.index, e.term))
    }
}

fn digest<T: Hash>(value: &T) -> u64 {
    let mut hasher = DefaultHasher::new();
    value.hash(&mut hasher);
    hasher.finish()
}

/// What undoes one apply: the state machine before it, and the values its
/// keys held before it (`None`: absent).
type Undo = (StateMachine, BTreeMap<Vec<u8>, Option<Vec<u8>>>);

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
    pending: VecDeque<PendingPersist>,
    /// For the latest applies, newest last: the state machine before each,
    /// and the values its keys held before it (for a state database that
    /// rolls back in a crash).
    undo: VecDeque<Undo>,
    /// Which client waits for which request at this node, and whether on
    /// the fast path: (client, operation, attempt).
    waiters: HashMap<(RequestId, bool), (usize, usize, u64)>,
}

struct ClientOp {
    history_index: usize,
    request: ClientRequest,
    attempt: u64,
    started: Time,
    /// Fast-path acknowledgements so far, counted by kvclient's rule.
    fast_acks: FastAcks,
}

struct Client {
    id: ClientId,
    seq: u64,
    leader_guess: NodeId,
    current: Option<ClientOp>,
    ops_after_heal_left: usize,
    last_seen: Option<Vec<u8>>,
    /// Restarted with its id, numbering from 1: its next write puts this
    /// key of its own...
    restarted_carelessly: Option<Vec<u8>>,
    /// ... and the operation after reads it back.
    read_back: Option<Vec<u8>>,
}

/// The invariant checker's memory.
#[derive(Default)]
struct Invariants {
    leader_of_term: HashMap<Term, NodeId>,
    /// (index, term) -> digest of the log prefix ending there.
    prefix_at: HashMap<(LogIndex, Term), u64>,
    /// index -> (term, entry digest, highest term in the cluster when first applied).
    applied_at: BTreeMap<LogIndex, (Term, u64, Term)>,
    /// (node, term) pairs already checked for leader completeness.
    leaders_checked: HashSet<(NodeId, Term)>,
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
        let mut rng = DetRng::new(config.seed);
        let nodes = members
            .iter()
            .map(|&id| {
                let protocol = factory(id, &members, Recovered::default(), rng.next_u64());
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
                    pending: VecDeque::new(),
                    undo: VecDeque::new(),
                    waiters: HashMap::new(),
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

    fn members(&self) -> Vec<NodeId> {
        self.nodes.keys().copied().collect()
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
        while let Some((time, event)) = self.queue.pop() {
            self.now = time;
            if quiet_until.is_some_and(|until| self.now >= until) {
                break;
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
            }
        }
        if self.failure.is_none() && !self.finished() {
            self.fail("the run stopped with clients unfinished".into());
        }
        if self.failure.is_none() && self.config.quiet_ms > 0 {
            self.check_drained();
        }
        if self.failure.is_none() {
            let checked: Vec<Operation> = self
                .history
                .iter()
                .enumerate()
                .filter(|(i, _)| !self.refused_as_stale.contains(i))
                .map(|(_, op)| op.clone())
                .collect();
            let verdict = linearizability::check(&checked);
            match verdict {
                Verdict::Linearizable => {}
                Verdict::Unknown => self.fail("linearizability check exceeded its budget".into()),
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
                    n.waiters.insert((request.id, fast), (client, op, attempt));
                    self.stats.waiter_refusals += 1;
                    let answer = Answer::Other(ReplyOutcome::Unavailable);
                    self.answer(node, request.id, fast, answer);
                    return;
                }
                n.waiters.insert((request.id, fast), (client, op, attempt));
                // A fast-path write already applied, or below the session's
                // latest update, is answered at once.
                if fast && let Some(answer) = n.state_machine.answer_fast_write(request.id) {
                    self.answer(node, request.id, true, Answer::Result(answer));
                    return;
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
                let give_up = !self.healed && self.now >= current.started + self.config.give_up_ms;
                if give_up {
                    self.log(|| format!("client {client} gives up op {op}: outcome unknown"));
                    self.clients[client].current = None;
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
        1 + self.rng.range(0, self.config.nodes as u64)
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
        let mut next = Some(input);
        let mut rounds = 0;
        while let Some(input) = next.take() {
            rounds += 1;
            assert!(rounds < 10_000, "node {id} keeps producing work");
            let mut out = Outbox::default();
            let node = self.nodes.get_mut(&id).expect("node exists");
            let Some(protocol) = node.protocol.as_mut() else {
                return;
            };
            protocol.step(input, &mut out);
            let Ok(follow_up) = executor::carry_out(out, &mut SimEffects { sim: self, id });
            next = follow_up;
        }
    }

    /// Hands a write job to node `id`'s simulated disk: durable after a
    /// random delay, after every job before it.
    fn persist_job(&mut self, id: NodeId, job: PersistJob) {
        let delay = self.rng.range(
            self.config.persist_delay_ms.0,
            self.config.persist_delay_ms.1 + 1,
        );
        let node = self.nodes.get_mut(&id).expect("node exists");
        node.pending.push_back(PendingPersist {
            writes: job.writes,
            after: job.after,
            replies: job.replies,
        });
        let incarnation = node.incarnation;
        self.schedule(
            delay,
            Event::PersistDone {
                node: id,
                incarnation,
            },
        );
    }

    fn serve_reads(&mut self, id: NodeId, reads: Vec<ClientRequest>) {
        for request in reads {
            self.stats.reads_outside_log += 1;
            let node = &self.nodes[&id];
            let result = node.state_machine.read(&node.kv, &request.command);
            self.answer(id, request.id, false, Answer::Result(result));
        }
    }

    fn persist_done(&mut self, id: NodeId, incarnation: u64) {
        let node = self.nodes.get_mut(&id).expect("node exists");
        if node.protocol.is_none() || node.incarnation != incarnation {
            return;
        }
        let Some(batch) = node.pending.pop_front() else {
            return;
        };
        self.stats.syncs += 1;
        for write in batch.writes {
            self.durable_write(id, write);
        }
        for envelope in batch.after {
            self.send_message(id, envelope);
        }
        for r in batch.replies {
            self.protocol_reply(id, r);
        }
        let (last_index, last_term) = self.nodes[&id].storage.last();
        self.step(
            id,
            Input::Persisted {
                last_index,
                last_term,
            },
        );
    }

    fn durable_write(&mut self, id: NodeId, write: Write) {
        let storage = &mut self.nodes.get_mut(&id).expect("node exists").storage;
        match write {
            Write::HardState(hard_state) => {
                let before = storage.hard_state.term;
                storage.hard_state = hard_state;
                if hard_state.term < before {
                    self.fail(format!(
                        "node {id} persisted term {} after term {before}",
                        hard_state.term
                    ));
                }
            }
            Write::TruncateLog { from } => {
                let keep = (from.max(1) - 1) as usize;
                storage.log.truncate(keep);
                storage.chain.truncate(keep);
            }
            Write::AppendLog(entries) => {
                let mut problems = Vec::new();
                for entry in entries {
                    if entry.index != storage.log.len() as LogIndex + 1 {
                        problems.push(format!(
                            "node {id} appended index {} after {}",
                            entry.index,
                            storage.log.len()
                        ));
                        break;
                    }
                    let previous = storage.chain.last().copied().unwrap_or(0);
                    let chain = digest(&(previous, &entry));
                    let key = (entry.index, entry.term);
                    match self.invariants.prefix_at.get(&key) {
                        Some(&seen) if seen != chain => problems.push(format!(
                            "log matching: node {id} holds an entry at index {} term {} whose log prefix differs from another node's",
                            entry.index, entry.term
                        )),
                        Some(_) => {}
                        None => {
                            self.invariants.prefix_at.insert(key, chain);
                        }
                    }
                    storage.chain.push(chain);
                    storage.log.push(entry);
                }
                for problem in problems {
                    self.fail(problem);
                }
            }
            Write::DurabilityAppend(records) => storage.durability_log.extend(records),
            Write::DurabilityRemove(ids) => {
                let ids: HashSet<RequestId> = ids.into_iter().collect();
                storage
                    .durability_log
                    .retain(|r| !ids.contains(&r.request.id));
            }
            Write::DurabilityReplace(records) => storage.durability_log = records,
        }
    }

    fn apply(&mut self, id: NodeId, entries: &[Entry]) {
        let max_term = self.max_term();
        let node = self.nodes.get_mut(&id).expect("node exists");
        let mut problems = Vec::new();
        for entry in entries {
            // Applied entries must be durable in this node's own log.
            let stored = node.storage.log.get(entry.index as usize - 1);
            if stored != Some(entry) {
                problems.push(format!(
                    "node {id} applied index {} term {} that is not durable in its log",
                    entry.index, entry.term
                ));
            }
            let entry_digest = digest(entry);
            match self.invariants.applied_at.get(&entry.index) {
                Some(&(term, d, _)) if d != entry_digest => problems.push(format!(
                    "state machine safety: node {id} applied index {} term {}, another node applied term {term} there",
                    entry.index, entry.term
                )),
                Some(_) => {}
                None => {
                    self.invariants.applied_at.insert(entry.index, (entry.term, entry_digest, max_term));
                }
            }
        }
        let before = node.state_machine.clone();
        let batch = node.state_machine.apply(&node.kv, entries);
        self.stats.entries_applied += entries.len() as u64;
        if self.config.state_rollback_max > 0 {
            let old_values = batch
                .data
                .keys()
                .map(|key| (key.clone(), node.kv.get(key)))
                .collect();
            if node.undo.len() == self.config.state_rollback_max {
                node.undo.pop_front();
            }
            node.undo.push_back((before, old_values));
        }
        node.kv.commit(&batch);
        self.log(|| format!("node {id} applied up to {}", batch.applied_index));
        for problem in problems {
            self.fail(problem);
        }
        for (_, request, result) in batch.results {
            self.answer(id, request, false, Answer::Result(result));
        }
    }

    fn answer(&mut self, id: NodeId, request: RequestId, fast_path: bool, answer: Answer) {
        let node = self.nodes.get_mut(&id).expect("node exists");
        let Some((client, op, attempt)) = node.waiters.remove(&(request, fast_path)) else {
            return;
        };
        self.client_send(
            client,
            id,
            Event::ClientReply {
                client,
                op,
                from: id,
                attempt,
                fast: fast_path,
                answer,
            },
        );
    }

    fn protocol_reply(&mut self, id: NodeId, reply: Reply) {
        self.answer(
            id,
            reply.request,
            reply.fast_path,
            Answer::Other(reply.outcome),
        );
    }

    /// A client message's delay.
    fn net_delay(&mut self) -> Time {
        self.delay_in(self.config.net_delay_ms)
    }

    /// A delay drawn from `(low, high)`, sometimes far longer during the
    /// fault phase.
    fn delay_in(&mut self, (low, high): (Time, Time)) -> Time {
        let mut delay = self.rng.range(low, high + 1);
        if !self.healed && self.config.faults.long_delays && self.rng.chance(0.03) {
            delay += self.rng.range(20, 200);
        }
        delay
    }

    fn send_message(&mut self, from: NodeId, envelope: Envelope) {
        *self
            .stats
            .messages
            .entry(kind(&envelope.message))
            .or_default() += 1;
        let to = envelope.to;
        if self.cut.contains(&(from, to)) {
            return;
        }
        // kvnode's transport drops a message over the limit by the same
        // rule (and its peers could not decode one).
        if envelope.message.size_bytes() > consensus::limits::PEER_MESSAGE_BYTES_MAX {
            self.stats.oversized_messages += 1;
            self.log(|| format!("{from}->{to} dropped: over the peer message limit"));
            return;
        }
        let faults = self.config.faults;
        if !self.healed && faults.drops && self.rng.chance(0.05) {
            return;
        }
        let copies = if !self.healed && faults.duplicates && self.rng.chance(0.03) {
            2
        } else {
            1
        };
        for _ in 0..copies {
            let delay = self.delay_in(self.config.peer_delay_ms);
            self.schedule(
                delay,
                Event::Deliver {
                    from,
                    to,
                    message: envelope.message.clone(),
                },
            );
        }
    }

    // ----- crashes -----

    fn crash(&mut self, id: NodeId) {
        let node = self.nodes.get_mut(&id).expect("node exists");
        if node.protocol.is_none() {
            return;
        }
        node.protocol = None;
        node.incarnation += 1;
        let lost = node.pending.len();
        node.pending.clear();
        node.waiters.clear();
        node.paused = false;
        node.backlog.clear();
        // The state database returns to some earlier apply boundary.
        let undo = std::mem::take(&mut node.undo);
        let lose = self.rng.range(0, undo.len() as u64 + 1) as usize;
        if lose > 0 {
            let node = self.nodes.get_mut(&id).expect("node exists");
            for (state_machine, old_values) in undo.into_iter().rev().take(lose) {
                node.kv.commit(&ApplyBatch {
                    data: old_values,
                    ..ApplyBatch::default()
                });
                node.state_machine = state_machine;
            }
            self.stats.state_rollbacks += 1;
            let applied = node.state_machine.applied_index();
            self.log(|| format!("node {id}'s state database rolls back to index {applied}"));
        }
        self.stats.crashes += 1;
        self.log(|| format!("crash node {id}: {lost} unsynced write batches lost"));
    }

    fn restart(&mut self, id: NodeId) {
        let members = self.members();
        let seed = self.rng.next_u64();
        let node = self.nodes.get_mut(&id).expect("node exists");
        if node.protocol.is_some() {
            return;
        }
        let recovered = Recovered {
            hard_state: node.storage.hard_state,
            log: node.storage.log.clone(),
            applied_index: node.state_machine.applied_index(),
            durability_log: node.storage.durability_log.clone(),
        };
        node.protocol = Some((self.factory)(id, &members, recovered, seed));
        self.log(|| format!("restart node {id}"));
        self.start_clock(id);
    }

    // ----- pauses -----

    fn pause(&mut self, id: NodeId) {
        let node = self.nodes.get_mut(&id).expect("node exists");
        if node.protocol.is_none() || node.paused {
            return;
        }
        node.paused = true;
        self.stats.pauses += 1;
        self.log(|| format!("pause node {id}"));
    }

    /// Resumes a paused node: its backlog (messages, requests, disk
    /// completions) arrives in a random order over the next few
    /// milliseconds, as the runtime would take it from its sockets and
    /// queues; its clock owes it every tick it missed.
    fn resume(&mut self, id: NodeId) {
        let node = self.nodes.get_mut(&id).expect("node exists");
        if !node.paused {
            return;
        }
        node.paused = false;
        let mut backlog = std::mem::take(&mut node.backlog);
        node.tick_chain += 1;
        let chain = node.tick_chain;
        let waiting = backlog.len();
        self.log(|| format!("resume node {id}: {waiting} events waited"));
        // A random interleaving: shuffle, then spread over a few ms.
        for i in (1..backlog.len()).rev() {
            let j = self.rng.range(0, i as u64 + 1) as usize;
            backlog.swap(i, j);
        }
        for event in backlog {
            let delay = self.rng.range(0, 3);
            self.schedule(delay, event);
        }
        if self.config.runtime_loses_ticks_in_pauses {
            // A periodic timer that missed its ticks: one fires soon, at
            // some point of the backlog, and time counts from there.
            let (now, tick) = (self.now, self.config.tick_ms);
            let node = self.nodes.get_mut(&id).expect("node exists");
            node.clock = TickClock::new(now.saturating_sub(tick), tick);
        }
        let delay = self.rng.range(0, 3);
        self.schedule(delay, Event::Tick { node: id, chain });
    }

    // ----- the nemesis -----

    fn current_leader(&self) -> Option<NodeId> {
        self.nodes
            .iter()
            .filter_map(|(&id, n)| n.protocol.as_ref().map(|p| (id, p.status())))
            .filter(|(_, s)| s.role == Role::Leader)
            .max_by_key(|(_, s)| s.term)
            .map(|(id, _)| id)
    }

    /// Cuts `group` from the other nodes, both ways. Each client lands on
    /// one side (cut from the other) or, a third of the time, keeps
    /// reaching every node.
    fn isolate(&mut self, group: &BTreeSet<NodeId>) {
        let members = self.members();
        for &a in group {
            for &b in &members {
                if !group.contains(&b) {
                    self.cut.insert((a, b));
                    self.cut.insert((b, a));
                }
            }
        }
        for client in 0..self.clients.len() {
            let side = self.rng.range(0, 3);
            for &node in &members {
                let in_group = group.contains(&node);
                if (side == 0 && in_group) || (side == 1 && !in_group) {
                    self.client_cut.insert((client, node));
                }
            }
        }
    }

    fn nemesis(&mut self) {
        let faults = self.config.faults;
        let n = self.config.nodes;
        let mut actions: Vec<&'static str> = vec!["heal"];
        if faults.partitions && n > 1 {
            actions.extend(["random-split", "isolate-leader", "minority-majority"]);
        }
        if faults.one_way && n > 1 {
            actions.push("one-way");
        }
        if faults.crashes {
            actions.extend(["crash", "crash-leader"]);
        }
        if faults.pauses {
            actions.extend(["pause", "pause-leader"]);
        }
        if faults.client_restarts {
            actions.push("restart-client");
        }
        if actions.len() == 1 {
            return;
        }
        let action = actions[self.rng.range(0, actions.len() as u64) as usize];
        let members = self.members();
        match action {
            "heal" => {
                self.cut.clear();
                self.client_cut.clear();
            }
            "random-split" => {
                self.cut.clear();
                self.client_cut.clear();
                let size = self.rng.range(1, n as u64) as usize;
                let mut group = BTreeSet::new();
                while group.len() < size {
                    group.insert(members[self.rng.range(0, n as u64) as usize]);
                }
                self.isolate(&group);
                self.stats.partitions += 1;
            }
            "isolate-leader" => {
                self.cut.clear();
                self.client_cut.clear();
                if let Some(leader) = self.current_leader() {
                    self.isolate(&BTreeSet::from([leader]));
                    self.stats.partitions += 1;
                }
            }
            "minority-majority" => {
                self.cut.clear();
                self.client_cut.clear();
                let minority = consensus::quorum::max_failures(n);
                let mut group = BTreeSet::new();
                while group.len() < minority.max(1) {
                    group.insert(members[self.rng.range(0, n as u64) as usize]);
                }
                self.isolate(&group);
                self.stats.partitions += 1;
            }
            "one-way" => {
                let a = members[self.rng.range(0, n as u64) as usize];
                let deaf = self.rng.chance(0.5);
                for &b in &members {
                    if b != a {
                        self.cut.insert(if deaf { (b, a) } else { (a, b) });
                    }
                }
                self.stats.partitions += 1;
            }
            "crash" | "crash-leader" => {
                let target = if action == "crash-leader" {
                    self.current_leader()
                } else {
                    Some(members[self.rng.range(0, n as u64) as usize])
                };
                if let Some(id) = target {
                    self.crash(id);
                    let down_for = self.rng.range(50, 800);
                    self.schedule(down_for, Event::Restart { node: id });
                }
            }
            "restart-client" => self.restart_client(),
            "pause" | "pause-leader" => {
                let target = if action == "pause-leader" {
                    self.current_leader()
                } else {
                    Some(members[self.rng.range(0, n as u64) as usize])
                };
                if let Some(id) = target {
                    self.pause(id);
                    let paused_for = self.rng.range(50, 800);
                    self.schedule(paused_for, Event::Resume { node: id });
                }
            }
            _ => unreachable!(),
        }
        let cut = self.cut.len();
        self.log(|| format!("nemesis: {action} ({cut} links cut)"));
    }

    // ----- clients -----

    /// The client's operation in progress, if it is `op`.
    fn current_op(&self, client: usize, op: usize) -> Option<&ClientOp> {
        self.clients[client]
            .current
            .as_ref()
            .filter(|current| current.history_index == op)
    }

    /// Sends a message between a client and a node, through the network's
    /// faults: lost, duplicated, delayed (so reordered), or cut with a
    /// partition that put the client on the other side.
    fn client_send(&mut self, client: usize, node: NodeId, event: Event) {
        let faults = self.config.faults;
        if self.client_cut.contains(&(client, node))
            || (!self.healed && faults.drops && self.rng.chance(0.05))
        {
            return;
        }
        let duplicate = !self.healed && faults.duplicates && self.rng.chance(0.03);
        if duplicate {
            let copy = match &event {
                Event::ClientArrive {
                    node,
                    client,
                    op,
                    attempt,
                    request,
                    fast,
                } => Event::ClientArrive {
                    node: *node,
                    client: *client,
                    op: *op,
                    attempt: *attempt,
                    request: request.clone(),
                    fast: *fast,
                },
                Event::ClientReply {
                    client,
                    op,
                    from,
                    attempt,
                    fast,
                    answer,
                } => Event::ClientReply {
                    client: *client,
                    op: *op,
                    from: *from,
                    attempt: *attempt,
                    fast: *fast,
                    answer: answer.clone(),
                },
                _ => unreachable!("only client messages travel between clients and nodes"),
            };
            let delay = self.net_delay();
            self.schedule(delay, copy);
        }
        let delay = self.net_delay();
        self.schedule(delay, event);
    }

    fn next_op(&mut self, client: usize) {
        if self.clients[client].current.is_some() {
            return;
        }
        if self.healed {
            if self.clients[client].ops_after_heal_left == 0 {
                return;
            }
            self.clients[client].ops_after_heal_left -= 1;
        }
        let command = match self.clients[client].restarted_carelessly.take() {
            // The first write of an incarnation that took its id back and
            // numbers its requests from 1 again: a put of a key of its own,
            // read back next (see `restart_client`).
            Some(key) => {
                self.clients[client].read_back = Some(key.clone());
                Command::Put {
                    key,
                    value: format!("{}.restarted", self.clients[client].id).into_bytes(),
                }
            }
            None => match self.clients[client].read_back.take() {
                Some(key) => Command::Get { key },
                None => self.random_command(client),
            },
        };
        let c = &mut self.clients[client];
        c.seq += 1;
        let request = ClientRequest {
            id: RequestId {
                client: c.id,
                seq: c.seq,
            },
            command: command.clone(),
        };
        self.history_clock += 1;
        self.history.push(Operation {
            client: c.id,
            call: self.history_clock,
            ret: None,
            input: unpadded_input(to_input(&command)),
            output: None,
        });
        let op = self.history.len() - 1;
        let fast = self.config.nilext_fast_path
            && (command.takes_fast_path()
                || (self.config.multi_puts_on_fast_path
                    && matches!(command, Command::MultiPut { .. })));
        c.current = Some(ClientOp {
            history_index: op,
            request: request.clone(),
            attempt: 0,
            started: self.now,
            fast_acks: FastAcks::new(self.config.nodes),
        });
        if !fast {
            self.send_attempt(client);
            return;
        }
        // Nil-ext's fast path: to every node at once.
        for node in self.members() {
            let late = self.rng.chance(self.config.fast_copy_delay_chance);
            let event = Event::ClientArrive {
                node,
                client,
                op,
                attempt: 0,
                request: request.clone(),
                fast: true,
            };
            if late {
                // Past the fast-path timeout, so the write takes the slow
                // path while this copy is still on its way.
                let timeout = self.config.fast_path_timeout_ms;
                let delay = self.net_delay() + self.rng.range(timeout, 4 * timeout);
                if !self.client_cut.contains(&(client, node)) {
                    self.schedule(delay, event);
                }
            } else {
                self.client_send(client, node, event);
            }
        }
        let timeout = self.config.fast_path_timeout_ms;
        self.schedule(timeout, Event::ClientFastTimeout { client, op });
    }

    /// A fast-path answer: an acknowledgement counts toward the fast quorum
    /// (even once the slow path has started), by kvclient's own rule; the
    /// result of a write already applied there, or a refusal of a sequence
    /// number below the session's, ends the operation, as kvclient ends it;
    /// anything else is left to the slow path.
    fn fast_reply(&mut self, client: usize, op: usize, from: NodeId, answer: Answer) {
        if self.current_op(client, op).is_none() {
            return;
        }
        match answer {
            Answer::Other(ReplyOutcome::DurableAck { term, from_leader }) => {
                let Some(current) = self.clients[client].current.as_mut() else {
                    return;
                };
                if current.fast_acks.add(from, term, from_leader) {
                    self.log(|| format!("client {client} op {op}: fast quorum in term {term}"));
                    self.stats.fast_path_completions += 1;
                    self.complete(client, CommandResult::Written);
                }
            }
            Answer::Result(
                result @ (CommandResult::Written
                | CommandResult::Failed(ExecutionError::StaleRequest { .. })),
            ) => {
                if result == CommandResult::Written {
                    self.stats.fast_path_applied_answers += 1;
                }
                self.complete(client, result);
            }
            Answer::Other(ReplyOutcome::Rejected(reason)) => {
                self.fail(format!("a valid fast-path write was rejected: {reason}"));
            }
            _ => {}
        }
    }

    fn complete(&mut self, client: usize, result: CommandResult) {
        let Some(op) = self.clients[client].current.take() else {
            return;
        };
        self.history_clock += 1;
        let output = match unpadded_output(to_output(&result)) {
            Ok(output) => output,
            Err(problem) => {
                self.fail(problem);
                to_output(&result)
            }
        };
        let record = &mut self.history[op.history_index];
        record.ret = Some(self.history_clock);
        record.output = Some(output);
        if let CommandResult::Value(v) = &result {
            self.clients[client].last_seen = v.clone();
        }
        if let CommandResult::Failed(ExecutionError::StaleRequest { .. }) = &result {
            // It changed nothing. As kvclient's documentation tells a client
            // whose id was taken back carelessly: take a fresh id.
            self.stats.stale_refusals += 1;
            self.refused_as_stale.insert(op.history_index);
            self.give_fresh_id(client);
        }
        let index = op.history_index;
        self.log(|| {
            format!(
                "client {client} op {index} done: {}",
                show_output(&to_output(&result))
            )
        });
        let think = self.rng.range(0, 10);
        self.schedule(think, Event::ClientNext { client });
    }

    fn send_attempt(&mut self, client: usize) {
        let timeout = self.config.client_timeout_ms;
        let c = &mut self.clients[client];
        let current = c.current.as_mut().expect("an operation is in progress");
        current.attempt += 1;
        let (op, attempt, request, node) = (
            current.history_index,
            current.attempt,
            current.request.clone(),
            c.leader_guess,
        );
        self.client_send(
            client,
            node,
            Event::ClientArrive {
                node,
                client,
                op,
                attempt,
                request,
                fast: false,
            },
        );
        self.schedule(
            timeout,
            Event::ClientTimeout {
                client,
                op,
                attempt,
            },
        );
    }

    fn client_reply(&mut self, client: usize, op: usize, attempt: u64, answer: Answer) {
        let Some(current) = self.current_op(client, op) else {
            return;
        };
        match answer {
            Answer::Result(result) => self.complete(client, result),
            Answer::Other(outcome) => {
                if current.attempt != attempt {
                    return;
                }
                let backoff = match outcome {
                    ReplyOutcome::NotLeader {
                        leader: Some(leader),
                    } => {
                        self.clients[client].leader_guess = leader;
                        self.rng.range(1, 5)
                    }
                    ReplyOutcome::NotLeader { leader: None } | ReplyOutcome::Unavailable => {
                        let guess = self.random_node();
                        self.clients[client].leader_guess = guess;
                        self.rng.range(5, 30)
                    }
                    ReplyOutcome::Rejected(reason) => {
                        self.fail(format!("a valid request was rejected: {reason}"));
                        return;
                    }
                    ReplyOutcome::DurableAck { .. } => {
                        self.fail(
                            "a durability acknowledgement answered an ordered request".into(),
                        );
                        return;
                    }
                };
                // The retry goes out under the same (client, seq).
                self.schedule(
                    backoff,
                    Event::ClientRetry {
                        client,
                        op,
                        attempt,
                    },
                );
            }
        }
    }

    /// A client process restarts. Its operation in progress, if any, is
    /// abandoned (outcome unknown). Half the time it takes a fresh id;
    /// otherwise it takes its id back (a documented kvclient option) and
    /// either goes on from the sequence numbers it used (as a client must)
    /// or numbers its requests from 1 again, as a careless one does: its
    /// first write must then be refused as stale, never acknowledged, and it
    /// takes a fresh id. The careless restart happens only where the nodes
    /// can tell the number is stale: between operations, with every running
    /// node having applied an update of the id numbered 2 or more. (A number
    /// the sessions have not passed yet cannot be told from a new request;
    /// kvclient's documentation forbids reusing one.)
    fn restart_client(&mut self) {
        let client = self.rng.range(0, self.clients.len() as u64) as usize;
        self.stats.client_restarts += 1;
        let abandoned = self.clients[client].current.take();
        let roll = self.rng.range(0, 4);
        let id = self.clients[client].id;
        let applied_everywhere = self
            .nodes
            .values()
            .filter(|n| n.protocol.is_some())
            .map(|n| {
                n.state_machine
                    .sessions()
                    .get(&id)
                    .map_or(0, |s| s.last_seq)
            })
            .min()
            .unwrap_or(0);
        let c = &mut self.clients[client];
        c.read_back = None;
        c.restarted_carelessly = None;
        c.leader_guess = 1 + (client % self.config.nodes) as NodeId;
        let kind = if roll < 2 {
            self.give_fresh_id(client);
            "with a fresh id"
        } else if roll == 2 || abandoned.is_some() || applied_everywhere < 2 {
            "with its id, going on from its sequence numbers"
        } else {
            c.seq = 0;
            c.restarted_carelessly = Some(format!("restart.{}.{}", c.id, self.now).into_bytes());
            "with its id, numbering its requests from 1 again"
        };
        self.log(|| format!("client {client} restarts {kind}"));
        self.schedule(1, Event::ClientNext { client });
    }

    fn give_fresh_id(&mut self, client: usize) {
        self.next_client_id += 1;
        let c = &mut self.clients[client];
        c.id = self.next_client_id;
        c.seq = 0;
    }

    fn random_command(&mut self, client: usize) -> Command {
        let keys = self.config.keys as u64;
        let key = |i: u64| format!("k{i}").into_bytes();
        let c = &self.clients[client];
        let mut value = format!("{}.{}", c.id, c.seq + 1).into_bytes();
        let last_seen = c.last_seen.clone();
        let (low, high) = self.config.value_padding_bytes;
        if high > 0 {
            let padding = self.rng.range(low as u64, high as u64 + 1) as usize;
            pad(&mut value, padding);
        }
        let pair = self.rng.range(0, keys.div_ceil(2)) * 2;
        let k = pair + self.rng.range(0, 2).min(keys - 1 - pair.min(keys - 1));
        let roll = self.rng.range(0, 100);
        match roll {
            0..30 => Command::Get { key: key(k) },
            30..55 => Command::Put { key: key(k), value },
            55..60 => Command::Delete { key: key(k) },
            60..75 => Command::CompareAndSwap {
                key: key(k),
                expected: if self.rng.chance(0.7) {
                    last_seen
                } else {
                    None
                },
                new: value,
            },
            75..85 => {
                let partner = (pair + 1).min(keys - 1);
                let mut pairs = vec![(key(pair), value.clone())];
                if partner != pair {
                    pairs.push((key(partner), value));
                }
                Command::MultiPut { pairs }
            }
            85..95 => {
                let partner = (pair + 1).min(keys - 1);
                let mut keys = vec![key(pair)];
                if partner != pair {
                    keys.push(key(partner));
                }
                Command::MultiGet { keys }
            }
            _ => {
                let counter = format!("n{}", self.rng.range(0, 2)).into_bytes();
                if self.rng.chance(0.5) {
                    Command::Increment {
                        key: counter,
                        by: self.rng.range(1, 10) as i64,
                    }
                } else {
                    Command::Get { key: counter }
                }
            }
        }
    }

    // ----- invariants -----

    fn max_term(&self) -> Term {
        self.nodes
            .values()
            .map(|n| {
                let live = n.protocol.as_ref().map_or(0, |p| p.status().term);
                live.max(n.storage.hard_state.term)
            })
            .max()
            .unwrap_or(0)
    }

    /// After healing, the clients' last operations and a quiet period:
    /// nothing may be left pending anywhere. Every node runs with the same
    /// log, all of it committed and applied, and every durability log has
    /// drained (ordered and applied, or forwarded and dropped).
    fn check_drained(&mut self) {
        let mut problems = Vec::new();
        let mut ends = BTreeSet::new();
        for (&id, node) in &self.nodes {
            let Some(protocol) = &node.protocol else {
                problems.push(format!("node {id} is down"));
                continue;
            };
            let status = protocol.status();
            let (last, last_term) = node.storage.last();
            ends.insert((last, last_term));
            if status.last_log_index != last
                || status.commit_index != last
                || status.applied_index != last
            {
                problems.push(format!(
                    "node {id}: log ends at {last} (durable), {} in memory, commit {}, applied {}",
                    status.last_log_index, status.commit_index, status.applied_index
                ));
            }
            if !node.storage.durability_log.is_empty() {
                let ids: Vec<String> = node
                    .storage
                    .durability_log
                    .iter()
                    .take(5)
                    .map(|r| r.request.id.to_string())
                    .collect();
                problems.push(format!(
                    "node {id} still holds {} durability-log records ({}...)",
                    node.storage.durability_log.len(),
                    ids.join(", ")
                ));
            }
        }
        if ends.len() > 1 {
            problems.push(format!("the nodes' logs end differently: {ends:?}"));
        }
        if !problems.is_empty() {
            self.fail(format!(
                "{} ms after every client finished, something is left pending: {}",
                self.config.quiet_ms,
                problems.join("; ")
            ));
        }
    }

    fn check_invariants(&mut self) {
        let mut problems = Vec::new();
        for (&id, node) in &self.nodes {
            let Some(protocol) = &node.protocol else {
                continue;
            };
            let status = protocol.status();
            self.stats.max_term = self.stats.max_term.max(status.term);
            if status.role != Role::Leader {
                continue;
            }
            // Election safety: at most one leader per term.
            match self.invariants.leader_of_term.get(&status.term) {
                Some(&other) if other != id => problems.push(format!(
                    "election safety: nodes {other} and {id} are both leaders of term {}",
                    status.term
                )),
                Some(_) => {}
                None => {
                    self.invariants.leader_of_term.insert(status.term, id);
                }
            }
            // Leader completeness: an entry committed while the highest term
            // was below this leader's term is in this leader's log.
            if self.invariants.leaders_checked.insert((id, status.term)) {
                for (&index, &(term, entry_digest, max_term_then)) in &self.invariants.applied_at {
                    if max_term_then >= status.term {
                        continue;
                    }
                    let held = node.storage.log.get(index as usize - 1);
                    if held.is_none_or(|e| digest(e) != entry_digest) {
                        problems.push(format!(
                            "leader completeness: leader {id} of term {} lacks committed entry {index} (term {term})",
                            status.term
                        ));
                    }
                }
            }
        }
        for problem in problems {
            self.fail(problem);
        }
    }
}

/// Pads a value to `bytes` in all: a `#`, then a byte that says how the
/// padding was made, repeated. The unique prefix before `#` stays.
fn pad(value: &mut Vec<u8>, bytes: usize) {
    if bytes > value.len() + 1 {
        let fill = (bytes % 251) as u8;
        let extra = bytes - value.len() - 1;
        value.push(b'#');
        value.extend(std::iter::repeat_n(fill, extra));
    }
}

/// A value's unique prefix, after checking its padding is whole: the
/// history compares prefixes (the checker need not copy megabytes), and
/// a padding a node cut short or changed fails the run here.
fn unpad(value: Vec<u8>) -> Result<Vec<u8>, String> {
    let Some(hash) = value.iter().position(|&b| b == b'#') else {
        return Ok(value);
    };
    let fill = (value.len() % 251) as u8;
    if value[hash + 1..].iter().any(|&b| b != fill) {
        return Err(format!(
            "a value read back ({} bytes) has a damaged padding",
            value.len()
        ));
    }
    Ok(value[..hash].to_vec())
}

fn unpadded_input(input: KvInput) -> KvInput {
    let strip = |v: Vec<u8>| unpad(v.clone()).unwrap_or(v);
    match input {
        KvInput::Put(k, v) => KvInput::Put(k, strip(v)),
        KvInput::MultiPut(pairs) => {
            KvInput::MultiPut(pairs.into_iter().map(|(k, v)| (k, strip(v))).collect())
        }
        KvInput::Cas { key, expected, new } => KvInput::Cas {
            key,
            expected: expected.map(strip),
            new: strip(new),
        },
        other => other,
    }
}

fn unpadded_output(output: KvOutput) -> Result<KvOutput, String> {
    let strip_opt = |v: Option<Vec<u8>>| v.map(unpad).transpose();
    Ok(match output {
        KvOutput::Value(v) => KvOutput::Value(strip_opt(v)?),
        KvOutput::Values(values) => KvOutput::Values(
            values
                .into_iter()
                .map(strip_opt)
                .collect::<Result<_, _>>()?,
        ),
        KvOutput::Cas { succeeded, current } => KvOutput::Cas {
            succeeded,
            current: current.map(strip_opt).transpose()?,
        },
        other => other,
    })
}

fn kind(message: &Message) -> &'static str {
    match message {
        Message::AppendEntries(m) if m.entries.is_empty() => "heartbeat",
        Message::AppendEntries(_) => "append_entries",
        Message::AppendEntriesResponse(_) => "append_entries_response",
        Message::RequestVote(m) if m.pre_vote => "pre_vote",
        Message::RequestVote(_) => "request_vote",
        Message::RequestVoteResponse(_) => "request_vote_response",
        Message::DurabilityLogRequest(_) => "durability_log_request",
        Message::DurabilityLogResponse(_) => "durability_log_response",
        Message::DurabilityForward(_) => "durability_forward",
    }
}

fn short(message: &Message) -> String {
    match message {
        Message::AppendEntries(m) => format!(
            "AE t{} prev {}/{} n={} commit {}",
            m.term,
            m.prev_log_index,
            m.prev_log_term,
            m.entries.len(),
            m.leader_commit
        ),
        Message::AppendEntriesResponse(m) => {
            format!(
                "AER t{} ok={} match {} conflict {}",
                m.term, m.success, m.match_index, m.conflict_index
            )
        }
        Message::RequestVote(m) => format!(
            "RV t{} last {}/{} pre={}",
            m.term, m.last_log_index, m.last_log_term, m.pre_vote
        ),
        Message::RequestVoteResponse(m) => format!(
            "RVR t{} granted={} pre={}",
            m.term, m.vote_granted, m.pre_vote
        ),
        Message::DurabilityLogRequest(m) => format!("DLR t{} from {}", m.term, m.from),
        Message::DurabilityLogResponse(m) => format!(
            "DLRR t{} from {} records={} next {} done={}",
            m.term,
            m.from,
            m.records.len(),
            m.next,
            m.done
        ),
        Message::DurabilityForward(m) => format!("DF t{} records={}", m.term, m.records.len()),
    }
}

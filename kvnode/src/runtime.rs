//! The runtime: the loop that owns a node's protocol value and carries out
//! every outbox exactly as written, by the rules of `consensus::io`. The
//! rules themselves are `consensus::executor`'s (the simulator runs the same
//! code); this module supplies the effects (`NodeEffects`):
//!
//! 1. messages and replies marked `Now` are handed to the transport and the
//!    waiting callers at once;
//! 2. the outbox's writes go to the persist thread as one job: one synced
//!    RocksDB batch; jobs are carried out one at a time, in order;
//! 3. messages and replies marked `AfterPersist` travel with the job and
//!    leave when it is durable (and every job before it);
//! 4. committed entries are applied (one atomic batch) and their waiting
//!    callers answered; reads are served and answered;
//! 5. `Persisted` (when a job with writes is durable) and `Applied` are fed
//!    back to the protocol.
//!
//! Before every input the loop gives the protocol every tick real time
//! owes it (`consensus::clock`): time comes from the monotonic clock, not
//! from a timer's firings, so a process that was stopped (SIGSTOP, a VM
//! migration, a long stall) counts the time it missed before it takes any
//! message or request that waited meanwhile. A leader's lease, counted in
//! ticks, has then ended in its eyes too. A timer wakes the loop when the
//! next tick falls due.
//!
//! The runtime adds no
//! optimization of its own: it never merges two outboxes' writes into one
//! sync and never batches messages the protocol did not batch. While a job
//! is syncing the loop goes on with other inputs, as a real disk and network
//! let it; what a protocol makes of that (vanilla Raft nothing, the
//! optimized variants group commit and parallel persist) is the protocol's.
//!
//! Threads: the loop runs on a thread of its own (with a single-threaded
//! async executor to wait on its two queues), because applying and reading
//! block on RocksDB; the persist thread blocks on syncs. Neither blocks the
//! async workers serving gRPC.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use consensus::clock::TickClock;
use consensus::executor::{self, Effects, PersistJob};
use consensus::io::{Envelope, Input, Reply, ReplyOutcome, Role, SoftState, Status, Timing};
use consensus::lock;
use consensus::snapshot::{ChunkRequest, SinceSnapshot, SnapshotMeta, SnapshotPolicy};
use consensus::state_machine::{FastWriteCheck, StateMachine};
use consensus::{
    ClientRequest, CommandResult, Consensus, Entry, EntryPayload, LogIndex, Message, NodeId,
    RequestId,
};
use tokio::sync::{mpsc, oneshot};

use crate::storage::{Storage, StorageError};

/// The most client requests a node holds waiting for an answer; beyond it,
/// new requests are refused as unavailable (back-pressure, not a queue
/// without bound).
pub const WAITERS_MAX: usize = 16 * 1024;
/// The most persist jobs queued or syncing; beyond it the loop stops taking
/// new inputs until the disk catches up.
pub const PERSIST_JOBS_MAX: usize = 1024;
/// The most snapshot chunks waiting to be read and sent; beyond it a chunk
/// request is dropped (the leader sends it again when no answer comes).
pub const CHUNK_REQUESTS_MAX: usize = 16;

/// Why the runtime stopped.
#[derive(Debug, thiserror::Error)]
pub enum RuntimeError {
    /// Storage failed: a node that cannot persist must not keep
    /// acknowledging.
    #[error(transparent)]
    Storage(#[from] StorageError),
    /// A thread or executor of the runtime could not start.
    #[error("cannot start {0}")]
    Start(String),
    /// The persist thread stopped without a storage error of its own.
    #[error("the persist thread stopped")]
    PersistThreadStopped,
    /// A configuration that does not hold this node is committed: it was
    /// removed from the cluster, and takes no further part.
    #[error(
        "this node was removed from the cluster by the configuration committed at index {index} ({membership}); it takes no further part. Its data directory is of no more use: to add it back, wipe it, start it with --join, and add it with kvctl member add"
    )]
    Removed {
        /// The configuration entry's index.
        index: LogIndex,
        /// The configuration.
        membership: consensus::Membership,
    },
}

/// What a waiting client request is answered with.
#[derive(Debug, Clone)]
pub enum ClientAnswer {
    /// The result of applying (or reading) its command.
    Result(CommandResult),
    /// The protocol's answer: not leader, unavailable, rejected.
    Outcome(ReplyOutcome),
    /// Nil-ext's fast path: this replica does not take the write on the
    /// fast path (`consensus::state_machine::FastWriteCheck::SlowPath`).
    SlowPath,
}

/// Where a client request's answer goes: back to its gRPC handler, after
/// the injected network delay, if any (the service's, given here so that
/// the answer's way out starts when the node answers, as a network's does,
/// not when the handler next runs).
#[derive(Debug)]
pub struct ReplyTo {
    handler: oneshot::Sender<ClientAnswer>,
    /// The command's digest (`Command::digest`): an applied entry's result
    /// goes only to callers of that very command.
    digest: u64,
    delay: crate::netdelay::NetDelay,
}

impl ReplyTo {
    /// Answers to `handler`, which waits for `command`, with no delay.
    pub fn new(handler: oneshot::Sender<ClientAnswer>, command: &consensus::Command) -> Self {
        ReplyTo {
            handler,
            digest: command.digest(),
            delay: crate::netdelay::NetDelay::default(),
        }
    }

    /// The answer travels `delay` to the handler.
    pub fn delayed(self, delay: crate::netdelay::NetDelay) -> Self {
        ReplyTo { delay, ..self }
    }

    /// Sends the answer (it arrives after the delay).
    pub fn send(self, answer: ClientAnswer) {
        let handler = self.handler;
        self.delay.deliver_later(move || {
            let _ = handler.send(answer);
        });
    }

    /// The handler gave up (its deadline passed).
    fn is_closed(&self) -> bool {
        self.handler.is_closed()
    }
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
    /// Client sessions its state machine holds.
    pub sessions: u64,
    /// As leader: each other member's match index.
    pub follower_matches: Vec<(NodeId, LogIndex)>,
    /// The log's size in storage (an estimate).
    pub log_bytes: u64,
    /// Nil-ext: the records and bytes of its durability log.
    pub durability_log: Option<(usize, usize)>,
    /// The read cache's counts.
    pub read_cache: consensus::cache::CacheStats,
}

/// An event for the runtime loop.
#[derive(Debug)]
pub enum Event {
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
        /// On Nil-ext's fast path (durability only).
        fast: bool,
        /// The caller waiting for it.
        reply: ReplyTo,
    },
    /// Capture the state machine for a backup: answered with the snapshot
    /// captured and its directory (the caller removes it).
    Backup {
        /// Where to send it.
        reply: oneshot::Sender<Result<(SnapshotMeta, std::path::PathBuf), String>>,
    },
    /// Hand leadership over (`Input::TransferLeadership`); answered once
    /// the protocol took the request.
    TransferLeadership {
        /// The member to hand it to (`None`: the most up-to-date follower).
        to: Option<NodeId>,
        /// Told once taken.
        reply: oneshot::Sender<()>,
    },
    /// A status query.
    Status {
        /// Where to send the status.
        reply: oneshot::Sender<NodeStatus>,
    },
    /// Change the configuration by one server (`Input::ChangeMembership`);
    /// answered with the index of the entry appended, or why none was.
    ChangeMembership {
        /// The change.
        change: consensus::MembershipChange,
        /// The addresses of a node added, as `PEER_ADDR/CLIENT_ADDR`.
        address: String,
        /// Where to send the answer.
        reply: oneshot::Sender<Result<LogIndex, consensus::MembershipError>>,
    },
    /// Stop the loop.
    Shutdown,
}

/// A protocol value the runtime can own on its thread.
pub type BoxedProtocol = Box<dyn Consensus + Send>;

/// Callers waiting for answers, shared by the loop and the persist thread
/// (which answers `AfterPersist` replies). A std mutex: it is held for a map
/// operation only, never across an await.
#[derive(Debug, Default)]
struct Waiters {
    /// By request and whether on the fast path.
    callers: HashMap<(RequestId, bool), Vec<ReplyTo>>,
    count: usize,
}

impl Waiters {
    fn answer(&mut self, request: RequestId, fast: bool, answer: ClientAnswer) {
        let Some(callers) = self.callers.remove(&(request, fast)) else {
            return;
        };
        self.count -= callers.len();
        // Several callers may wait for the same request (a client retried
        // it here); each gets the answer.
        for caller in callers {
            caller.send(answer.clone());
        }
    }

    /// Answers the callers of `request` that wait for the command whose
    /// digest is `digest` with its result. Another command under the same
    /// request id (a client that reused a number, with a late copy of the
    /// old request still applied here) must not be answered with this one's
    /// result: its caller waits for its own entry (refused as a reused
    /// number) or for a retry.
    fn answer_applied(&mut self, request: RequestId, digest: u64, result: CommandResult) {
        let Some(callers) = self.callers.get_mut(&(request, false)) else {
            return;
        };
        let (mine, others): (Vec<ReplyTo>, Vec<ReplyTo>) =
            callers.drain(..).partition(|c| c.digest == digest);
        self.count -= mine.len();
        if others.is_empty() {
            self.callers.remove(&(request, false));
        } else {
            *callers = others;
        }
        for caller in mine {
            caller.send(ClientAnswer::Result(result.clone()));
        }
    }

    /// Forgets callers that gave up (their deadline passed).
    fn prune(&mut self) {
        self.callers.retain(|_, callers| {
            callers.retain(|c| !c.is_closed());
            !callers.is_empty()
        });
        self.count = self.callers.values().map(Vec::len).sum();
    }
}

type SharedWaiters = Arc<Mutex<Waiters>>;

/// Starts the transport's sender to a peer the runtime has no queue for
/// yet (a member added since the node started), where the address book
/// knows it.
#[derive(Debug)]
pub struct Dialer {
    /// The executor the senders run on.
    pub handle: tokio::runtime::Handle,
    /// The header of this node's batches.
    pub identity: crate::transport::SenderIdentity,
    /// Where peers listen.
    pub book: Arc<crate::members::AddressBook>,
}

impl Dialer {
    fn dial(&self, peer: NodeId) -> Option<mpsc::Sender<Message>> {
        let member = self.book.get(peer)?;
        let (tx, rx) = mpsc::channel(crate::transport::PEER_QUEUE_MESSAGES_MAX);
        tracing::info!(node = self.identity.node_id, peer, peer_addr = %member.peer_addr, "connecting to a new peer");
        self.handle.spawn(crate::transport::run_peer_sender(
            self.identity.clone(),
            peer,
            member.peer_addr,
            rx,
        ));
        Some(tx)
    }
}

/// The outgoing queues of the peers, one per peer, made on first use for
/// peers added since the start.
#[derive(Clone, Debug)]
struct Peers {
    node_id: NodeId,
    queues: Arc<Mutex<HashMap<NodeId, mpsc::Sender<Message>>>>,
    dialer: Option<Arc<Dialer>>,
}

impl Peers {
    /// Hands a message to the transport. A full queue means the peer is slow
    /// or unreachable: the message is dropped, as a lossy network would, and
    /// the protocol retries what matters.
    fn send(&self, envelope: Envelope) {
        let mut queues = lock(&self.queues);
        if !queues.contains_key(&envelope.to)
            && let Some(queue) = self.dialer.as_ref().and_then(|d| d.dial(envelope.to))
        {
            queues.insert(envelope.to, queue);
        }
        let metrics = &*crate::metrics::METRICS;
        match &envelope.message {
            Message::AppendEntries(append) => {
                metrics.append_batch.observe(append.entries.len() as f64);
            }
            Message::InstallSnapshot(_) => {
                metrics.snapshots.with_label_values(&["chunk_sent"]).inc();
            }
            _ => {}
        }
        match queues.get(&envelope.to) {
            Some(queue) => {
                if queue.try_send(envelope.message).is_err() {
                    metrics.dropped_messages.inc();
                    tracing::debug!(
                        node = self.node_id,
                        to = envelope.to,
                        "peer queue full; message dropped"
                    );
                }
            }
            None => tracing::warn!(
                node = self.node_id,
                to = envelope.to,
                "message to an unknown peer dropped"
            ),
        }
    }
}

/// What the persist thread reports back.
enum PersistDone {
    /// A job is durable; `wrote` tells whether it had writes, and the durable
    /// log's end after it; `installed`, the snapshot it installed.
    Done {
        wrote: bool,
        last_index: u64,
        last_term: u64,
        installed: Option<SnapshotMeta>,
    },
    /// Storage failed: the node must stop.
    Failed(StorageError),
}

/// The runtime of one node.
pub struct Runtime {
    node_id: NodeId,
    protocol: BoxedProtocol,
    storage: Arc<Storage>,
    state_machine: StateMachine,
    peers: Peers,
    waiters: SharedWaiters,
    jobs_in_flight: usize,
    /// Real time, in microseconds since `started`, turned into ticks.
    clock: TickClock,
    started: Instant,
    unsafe_local_reads: bool,
    snapshots: SnapshotPolicy,
    since_snapshot: SinceSnapshot,
    /// Chunk requests for the snapshot sender (set when the loop runs).
    chunks: Option<std::sync::mpsc::SyncSender<ChunkRequest>>,
    /// The configuration in force last seen.
    membership_seen: consensus::Membership,
}

impl std::fmt::Debug for Runtime {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Runtime")
            .field("node_id", &self.node_id)
            .field("status", &self.protocol.status())
            .field("jobs_in_flight", &self.jobs_in_flight)
            .finish_non_exhaustive()
    }
}

fn persist_thread(
    storage: Arc<Storage>,
    peers: Peers,
    waiters: SharedWaiters,
    jobs: std::sync::mpsc::Receiver<PersistJob>,
    done: mpsc::UnboundedSender<PersistDone>,
) {
    for job in jobs {
        let wrote = !job.writes.is_empty();
        let installed = if wrote {
            match storage.persist(&job.writes) {
                Ok(installed) => installed,
                Err(error) => {
                    let _ = done.send(PersistDone::Failed(error));
                    return;
                }
            }
        } else {
            None
        };
        for envelope in job.after {
            peers.send(envelope);
        }
        let mut waiting = lock(&waiters);
        for reply in job.replies {
            waiting.answer(
                reply.request,
                reply.fast_path,
                ClientAnswer::Outcome(reply.outcome),
            );
        }
        drop(waiting);
        let (last_index, last_term) = storage.last_log();
        if done
            .send(PersistDone::Done {
                wrote,
                last_index,
                last_term,
                installed,
            })
            .is_err()
        {
            return;
        }
    }
}

/// Reads snapshot chunks from the node's captures and sends them: off the
/// runtime thread, since a chunk is up to a megabyte read from RocksDB.
fn snapshot_sender(
    storage: Arc<Storage>,
    peers: Peers,
    chunk_bytes: usize,
    requests: std::sync::mpsc::Receiver<ChunkRequest>,
) {
    let mut reader = crate::storage::CaptureReader::default();
    for request in requests {
        match reader.chunk(&storage, &request, chunk_bytes) {
            Ok(Some(message)) => peers.send(Envelope {
                to: request.to,
                message: Message::InstallSnapshot(message),
                timing: Timing::Now,
            }),
            Ok(None) => tracing::debug!(
                node = peers.node_id,
                snapshot = request.snapshot.index,
                "snapshot no longer captured here; the leader starts over with its latest"
            ),
            Err(error) => tracing::warn!(
                node = peers.node_id,
                snapshot = request.snapshot.index,
                "cannot read a snapshot chunk: {error}"
            ),
        }
    }
}

impl Runtime {
    /// What to do with a Nil-ext fast-path write, at the cluster time the
    /// protocol reads now.
    fn check_fast_write(&self, request: &ClientRequest) -> FastWriteCheck {
        let now = self.protocol.status().cluster_time;
        self.state_machine.check_fast_write(request, now)
    }

    /// A runtime for a node rebuilt from storage, ticking every `tick`.
    pub fn new(
        node_id: NodeId,
        protocol: BoxedProtocol,
        storage: Arc<Storage>,
        state_machine: StateMachine,
        peer_queues: HashMap<NodeId, mpsc::Sender<Message>>,
        tick: Duration,
    ) -> Self {
        let tick_us = u64::try_from(tick.as_micros()).unwrap_or(u64::MAX).max(1);
        Runtime {
            node_id,
            protocol,
            storage,
            state_machine,
            peers: Peers {
                node_id,
                queues: Arc::new(Mutex::new(peer_queues)),
                dialer: None,
            },
            waiters: SharedWaiters::default(),
            jobs_in_flight: 0,
            clock: TickClock::new(0, tick_us),
            started: Instant::now(),
            unsafe_local_reads: false,
            snapshots: SnapshotPolicy::default(),
            since_snapshot: SinceSnapshot::default(),
            chunks: None,
            membership_seen: Default::default(),
        }
    }

    /// Connects to peers added after the start as messages for them come
    /// (without it, messages to peers with no queue are dropped).
    pub fn with_dialer(mut self, dialer: Dialer) -> Self {
        self.peers.dialer = Some(Arc::new(dialer));
        self
    }

    /// When to take snapshots (default: `SnapshotPolicy::default()`).
    pub fn with_snapshots(mut self, policy: SnapshotPolicy) -> Self {
        self.snapshots = policy;
        self
    }

    /// UNSAFE, for proving the fault tests can fail: from now on this node
    /// answers every read from its own state machine, leader or not, with
    /// no check that its state is current.
    pub fn answer_reads_locally_unsafely(&mut self) {
        self.unsafe_local_reads = true;
    }

    /// Runs until `Shutdown` or until every sender of `events` is gone.
    /// Returns an error only when storage fails, which stops the node: a
    /// node that cannot persist must not keep acknowledging.
    pub fn run(mut self, mut events: mpsc::Receiver<Event>) -> Result<(), RuntimeError> {
        let executor = tokio::runtime::Builder::new_current_thread()
            .enable_time()
            .build()
            .map_err(|e| RuntimeError::Start(format!("the loop's executor: {e}")))?;
        let (jobs_tx, jobs_rx) = std::sync::mpsc::channel::<PersistJob>();
        let (done_tx, mut done_rx) = mpsc::unbounded_channel();
        let (chunks_tx, chunks_rx) = std::sync::mpsc::sync_channel(CHUNK_REQUESTS_MAX);
        {
            let (storage, peers) = (self.storage.clone(), self.peers.clone());
            let chunk_bytes = self.snapshots.chunk_bytes;
            std::thread::Builder::new()
                .name(format!("snapshots-{}", self.node_id))
                .spawn(move || snapshot_sender(storage, peers, chunk_bytes, chunks_rx))
                .map_err(|e| RuntimeError::Start(format!("the snapshot sender: {e}")))?;
        }
        self.chunks = Some(chunks_tx);
        let persister = {
            let (storage, peers, waiters) = (
                self.storage.clone(),
                self.peers.clone(),
                self.waiters.clone(),
            );
            std::thread::Builder::new()
                .name(format!("persist-{}", self.node_id))
                .spawn(move || persist_thread(storage, peers, waiters, jobs_rx, done_tx))
                .map_err(|e| RuntimeError::Start(format!("the persist thread: {e}")))?
        };
        let result = executor.block_on(async {
            let tick_timer = tokio::time::sleep_until(self.next_tick().into());
            tokio::pin!(tick_timer);
            loop {
                let can_take_input = self.jobs_in_flight < PERSIST_JOBS_MAX;
                let next_tick = tokio::time::Instant::from(self.next_tick());
                if tick_timer.deadline() != next_tick {
                    tick_timer.as_mut().reset(next_tick);
                }
                tokio::select! {
                    // Completions first: they unblock what waits on the disk;
                    // then time, then new inputs.
                    biased;
                    done = done_rx.recv() => match done {
                        Some(PersistDone::Done { wrote, last_index, last_term, installed }) => {
                            self.jobs_in_flight -= 1;
                            if let Some(snapshot) = installed {
                                self.switch_to_installed(snapshot, &jobs_tx)?;
                            }
                            if wrote {
                                self.step(Input::Persisted { last_index, last_term }, &jobs_tx)?;
                            }
                        }
                        Some(PersistDone::Failed(error)) => return Err(RuntimeError::Storage(error)),
                        None => return Ok(()),
                    },
                    () = &mut tick_timer => {
                        self.deliver_due_ticks(&jobs_tx)?;
                    }
                    event = events.recv(), if can_take_input => match event {
                        None | Some(Event::Shutdown) => return Ok(()),
                        Some(event) => self.handle(event, &jobs_tx)?,
                    },
                }
            }
        });
        drop(jobs_tx);
        self.chunks = None;
        let _ = persister.join();
        tracing::info!(node = self.node_id, "runtime stopped");
        result
    }

    fn handle(
        &mut self,
        event: Event,
        jobs: &std::sync::mpsc::Sender<PersistJob>,
    ) -> Result<(), RuntimeError> {
        let input = match event {
            Event::Shutdown => return Ok(()),
            Event::Peer { from, message } => Input::Message { from, message },
            Event::Client { request, reply, .. }
                if self.unsafe_local_reads && request.command.is_read() =>
            {
                let result = self.state_machine.read(&*self.storage, &request.command);
                reply.send(ClientAnswer::Result(result));
                return Ok(());
            }
            Event::Client {
                request,
                fast: true,
                reply,
            } if self.check_fast_write(&request) != FastWriteCheck::Accept => {
                // Already applied, below the session's latest update, or not
                // for the fast path here (see `StateMachine::check_fast_write`).
                reply.send(match self.check_fast_write(&request) {
                    FastWriteCheck::Answer(answer) => ClientAnswer::Result(answer),
                    _ => ClientAnswer::SlowPath,
                });
                return Ok(());
            }
            Event::Client {
                request,
                fast,
                reply,
            } => {
                let mut waiters = lock(&self.waiters);
                if waiters.count >= WAITERS_MAX {
                    reply.send(ClientAnswer::Outcome(ReplyOutcome::Unavailable));
                    return Ok(());
                }
                waiters
                    .callers
                    .entry((request.id, fast))
                    .or_default()
                    .push(reply);
                waiters.count += 1;
                if fast {
                    Input::FastWrite(request)
                } else {
                    Input::Request(request)
                }
            }
            Event::Backup { reply } => {
                // On this thread, the only one that applies: the capture is
                // the state after a whole apply.
                let _ = reply.send(self.storage.capture_for_backup().map_err(|e| e.to_string()));
                return Ok(());
            }
            Event::ChangeMembership {
                change,
                address,
                reply,
            } => {
                tracing::info!(node = self.node_id, %change, %address, "asked to change the configuration");
                if let (consensus::MembershipChange::AddLearner(id), Some(dialer)) =
                    (change, &self.peers.dialer)
                    && let Ok(member) = crate::members::parse_address(&address)
                {
                    // So that the leader reaches the new node at once.
                    dialer.book.learn(id, member);
                }
                let answer = self.change_membership(change, address, jobs)?;
                let _ = reply.send(answer);
                return Ok(());
            }
            Event::TransferLeadership { to, reply } => {
                tracing::info!(node = self.node_id, ?to, "asked to hand leadership over");
                let _ = reply.send(());
                Input::TransferLeadership { to }
            }
            Event::Status { reply } => {
                let (_, last_log_term) = self.storage.last_log();
                let _ = reply.send(NodeStatus {
                    status: self.protocol.status(),
                    last_log_term,
                    synced_writes: self.storage.synced_writes(),
                    sessions: self.state_machine.sessions().len() as u64,
                    follower_matches: self.protocol.follower_matches(),
                    log_bytes: self.storage.log_bytes(),
                    durability_log: self.protocol.durability_log_size(),
                    read_cache: self.storage.read_cache_stats(),
                });
                return Ok(());
            }
        };
        self.step(input, jobs)
    }

    /// A snapshot received from the leader is durable: the state machine
    /// becomes its, and the protocol is told.
    fn switch_to_installed(
        &mut self,
        snapshot: SnapshotMeta,
        jobs: &std::sync::mpsc::Sender<PersistJob>,
    ) -> Result<(), RuntimeError> {
        let started = Instant::now();
        self.state_machine = self.storage.switch_to_installed(snapshot)?;
        crate::metrics::METRICS
            .snapshots
            .with_label_values(&["installed"])
            .inc();
        self.since_snapshot = SinceSnapshot::default();
        tracing::info!(
            node = self.node_id,
            index = snapshot.index,
            term = snapshot.term,
            sessions = self.state_machine.sessions().len(),
            switch_ms = started.elapsed().as_millis() as u64,
            "node {} now serves from the snapshot at {} received from the leader",
            self.node_id,
            snapshot.index
        );
        let sessions = self.state_machine.latest_seqs();
        self.step(Input::SnapshotInstalled { snapshot, sessions }, jobs)
    }

    /// Feeds `input` to the protocol, after every tick real time owes it
    /// (`consensus::io`, rule 0), and carries out what follows by the rules
    /// of `consensus::executor`.
    fn step(
        &mut self,
        input: Input,
        jobs: &std::sync::mpsc::Sender<PersistJob>,
    ) -> Result<(), RuntimeError> {
        self.deliver_due_ticks(jobs)?;
        let (protocol, _, mut effects) = self.parts(jobs);
        executor::step(protocol, input, &mut effects)?;
        self.check_membership()
    }

    /// Steps the protocol with a membership change, returning its answer.
    fn change_membership(
        &mut self,
        change: consensus::MembershipChange,
        address: String,
        jobs: &std::sync::mpsc::Sender<PersistJob>,
    ) -> Result<Result<LogIndex, consensus::MembershipError>, RuntimeError> {
        self.deliver_due_ticks(jobs)?;
        let (protocol, _, mut effects) = self.parts(jobs);
        let mut out = consensus::Outbox::default();
        protocol.step(Input::ChangeMembership { change, address }, &mut out);
        let answer = out.membership_change.take().unwrap_or_else(|| {
            Err(consensus::MembershipError::Busy(
                "the protocol gave no answer".into(),
            ))
        });
        for input in executor::carry_out(out, &mut effects)? {
            executor::step(protocol, input, &mut effects)?;
        }
        self.check_membership()?;
        Ok(answer)
    }

    /// Tells the transport of a new configuration in force, and stops the
    /// node once a committed one no longer holds it.
    fn check_membership(&mut self) -> Result<(), RuntimeError> {
        let status = self.protocol.status();
        let membership = status.membership;
        if membership != self.membership_seen {
            tracing::info!(
                node = self.node_id,
                index = status.membership_index,
                %membership,
                "configuration in force"
            );
            if let Some(dialer) = &self.peers.dialer {
                dialer.book.set_membership(membership);
            }
        }
        self.membership_seen = membership;
        if status.removed {
            return Err(RuntimeError::Removed {
                index: status.membership_index,
                membership,
            });
        }
        Ok(())
    }

    /// The protocol, the clock, and the effects the executor carries out
    /// with the rest of the runtime.
    fn parts<'a>(
        &'a mut self,
        jobs: &'a std::sync::mpsc::Sender<PersistJob>,
    ) -> (
        &'a mut (dyn Consensus + Send),
        &'a mut TickClock,
        NodeEffects<'a>,
    ) {
        let Runtime {
            node_id,
            protocol,
            storage,
            state_machine,
            peers,
            waiters,
            jobs_in_flight,
            clock,
            snapshots,
            since_snapshot,
            chunks,
            ..
        } = self;
        let effects = NodeEffects {
            node_id: *node_id,
            storage,
            state_machine,
            peers,
            waiters,
            jobs,
            jobs_in_flight,
            snapshots,
            since_snapshot,
            chunks,
        };
        (protocol.as_mut(), clock, effects)
    }

    /// When the next tick falls due.
    fn next_tick(&self) -> Instant {
        self.started + Duration::from_micros(self.clock.next_due())
    }

    /// Gives the protocol the ticks real time owes it. After a stall that is
    /// many at once; each is a step of its own, as if the timer had fired.
    fn deliver_due_ticks(
        &mut self,
        jobs: &std::sync::mpsc::Sender<PersistJob>,
    ) -> Result<(), RuntimeError> {
        let now_us = u64::try_from(self.started.elapsed().as_micros()).unwrap_or(u64::MAX);
        let before = self.clock.delivered();
        let (protocol, clock, mut effects) = self.parts(jobs);
        let due = executor::deliver_due_ticks(protocol, clock, now_us, &mut effects)?;
        if due > 1 {
            tracing::debug!(node = self.node_id, ticks = due, "catching up on time");
        }
        // Callers that gave up are forgotten every 64 ticks.
        if before / 64 != self.clock.delivered() / 64 {
            lock(&self.waiters).prune();
        }
        Ok(())
    }
}

/// The node's effects (`consensus::executor`): messages to the peer
/// queues, answers to the waiting callers, writes to the persist thread,
/// applies and reads on this thread, in the state database.
struct NodeEffects<'a> {
    node_id: NodeId,
    storage: &'a Arc<Storage>,
    state_machine: &'a mut StateMachine,
    peers: &'a Peers,
    waiters: &'a SharedWaiters,
    jobs: &'a std::sync::mpsc::Sender<PersistJob>,
    jobs_in_flight: &'a mut usize,
    snapshots: &'a SnapshotPolicy,
    since_snapshot: &'a mut SinceSnapshot,
    chunks: &'a Option<std::sync::mpsc::SyncSender<ChunkRequest>>,
}

impl NodeEffects<'_> {
    fn hand_over(&mut self, job: PersistJob) -> Result<(), RuntimeError> {
        *self.jobs_in_flight += 1;
        self.jobs
            .send(job)
            .map_err(|_| RuntimeError::PersistThreadStopped)
    }
}

impl Effects for NodeEffects<'_> {
    type Error = RuntimeError;

    fn send(&mut self, envelope: Envelope) {
        self.peers.send(envelope);
    }

    fn reply(&mut self, reply: Reply) {
        lock(self.waiters).answer(
            reply.request,
            reply.fast_path,
            ClientAnswer::Outcome(reply.outcome),
        );
    }

    fn persist(&mut self, job: PersistJob) -> Result<(), RuntimeError> {
        // A configuration entry that adds a node says where it listens.
        if let Some(dialer) = &self.peers.dialer {
            for write in &job.writes {
                let consensus::io::Write::AppendLog(entries) = write else {
                    continue;
                };
                for entry in entries {
                    if let EntryPayload::Config(config) = &entry.payload
                        && let consensus::MembershipChange::AddLearner(id) = config.change
                        && let Ok(member) = crate::members::parse_address(&config.address)
                    {
                        dialer.book.learn(id, member);
                    }
                }
            }
        }
        self.hand_over(job)
    }

    fn writes_in_flight(&self) -> bool {
        *self.jobs_in_flight > 0
    }

    fn after_writes_in_flight(
        &mut self,
        after: Vec<Envelope>,
        replies: Vec<Reply>,
    ) -> Result<(), RuntimeError> {
        // A job with no write: the persist thread takes jobs in order, so it
        // leaves after every write handed over before it.
        self.hand_over(PersistJob {
            writes: Vec::new(),
            after,
            replies,
        })
    }

    fn send_snapshot_chunk(&mut self, request: ChunkRequest) {
        let Some(chunks) = self.chunks else {
            return;
        };
        if chunks.try_send(request).is_err() {
            tracing::debug!(
                node = self.node_id,
                "snapshot sender busy; chunk request dropped (the leader sends it again)"
            );
        }
    }

    fn snapshot_if_due(&mut self, at: SnapshotMeta) -> Result<Option<u64>, RuntimeError> {
        if !self.since_snapshot.take_if_due(self.snapshots) {
            return Ok(None);
        }
        let started = Instant::now();
        self.storage.capture(at)?;
        crate::metrics::METRICS
            .snapshots
            .with_label_values(&["taken"])
            .inc();
        tracing::info!(
            node = self.node_id,
            index = at.index,
            term = at.term,
            capture_ms = started.elapsed().as_millis() as u64,
            "node {} took a snapshot at {}; the log before it is compacted",
            self.node_id,
            at.index
        );
        Ok(Some(self.snapshots.keep_entries))
    }

    fn apply(&mut self, entries: Vec<Entry>) -> Result<(), RuntimeError> {
        self.since_snapshot.applied(&entries);
        let batch = self.state_machine.apply(&**self.storage, &entries);
        self.storage.apply(&batch)?;
        let digests: HashMap<LogIndex, u64> = entries
            .iter()
            .filter_map(|e| match &e.payload {
                EntryPayload::Command(r) => Some((e.index, r.command.digest())),
                EntryPayload::Noop | EntryPayload::Config(_) => None,
            })
            .collect();
        let mut waiters = lock(self.waiters);
        for (index, request, result) in batch.results {
            waiters.answer_applied(request, digests[&index], result);
        }
        Ok(())
    }

    fn role_changed(&mut self, soft: SoftState) {
        match (soft.role, soft.leader) {
            (Role::Leader, _) => tracing::info!(
                node = self.node_id,
                term = soft.term,
                "node {} became leader at term {}",
                self.node_id,
                soft.term
            ),
            (Role::Follower, Some(leader)) => tracing::info!(
                node = self.node_id,
                term = soft.term,
                leader,
                "node {} follows node {leader} at term {}",
                self.node_id,
                soft.term
            ),
            (role, _) => tracing::info!(
                node = self.node_id,
                term = soft.term,
                role = role.as_str(),
                "node {} became {} at term {} (no leader known)",
                self.node_id,
                role.as_str(),
                soft.term
            ),
        }
    }

    fn serve_reads(&mut self, reads: Vec<ClientRequest>) -> Result<(), RuntimeError> {
        let mut waiters = lock(self.waiters);
        for request in reads {
            let result = self.state_machine.read(&**self.storage, &request.command);
            waiters.answer(request.id, false, ClientAnswer::Result(result));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use consensus::Command;

    /// A client that reused a request number (a put under the number of
    /// its earlier compare-and-swap, a copy of which is still applied here)
    /// is not answered with the compare-and-swap's result: the applied
    /// entry answers only callers of its own command (simulator soak seed
    /// 3800014726).
    #[test]
    fn an_applied_entry_answers_only_callers_of_its_own_command() {
        let id = RequestId { client: 7, seq: 1 };
        let cas = Command::CompareAndSwap {
            key: b"k".to_vec(),
            expected: None,
            new: b"x".to_vec(),
        };
        let put = Command::Put {
            key: b"k".to_vec(),
            value: b"y".to_vec(),
        };
        let mut waiters = Waiters::default();
        let (cas_tx, mut cas_rx) = oneshot::channel();
        let (put_tx, mut put_rx) = oneshot::channel();
        waiters
            .callers
            .entry((id, false))
            .or_default()
            .extend([ReplyTo::new(cas_tx, &cas), ReplyTo::new(put_tx, &put)]);
        waiters.count = 2;
        let swapped = CommandResult::Swapped {
            succeeded: false,
            current: Some(b"z".to_vec()),
        };
        waiters.answer_applied(id, cas.digest(), swapped.clone());
        assert!(matches!(cas_rx.try_recv(), Ok(ClientAnswer::Result(r)) if r == swapped));
        assert!(put_rx.try_recv().is_err(), "the put still waits");
        assert_eq!(waiters.count, 1);
        let reused = CommandResult::Failed(consensus::ExecutionError::RequestIdReused { seq: 1 });
        waiters.answer_applied(id, put.digest(), reused.clone());
        assert!(matches!(put_rx.try_recv(), Ok(ClientAnswer::Result(r)) if r == reused));
        assert_eq!(waiters.count, 0);
        assert!(waiters.callers.is_empty());
    }
}

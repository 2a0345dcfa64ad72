//! The client API: the `Kv` gRPC service.
//!
//! Each call is validated, turned into a [`ClientRequest`] under the
//! caller's (client id, sequence number), handed to the runtime, and
//! answered when the runtime answers or the node's request deadline passes.
//! Errors are gRPC status codes whose details carry a `kv.ErrorDetail`
//! (prost-encoded) that clients read: not leader (with the leader's client
//! address when known), unavailable, invalid argument, deadline exceeded,
//! execution error.
//!
//! Besides one unary method per operation, `Calls` carries many calls on one
//! long-lived stream ([`CallResults`]): each call is answered by the unary
//! method of its kind, so both ways mean the same; the stream only saves
//! the per-call HTTP/2 stream, headers and trailers.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use consensus::io::ReplyOutcome;
use consensus::{ClientRequest, Command, CommandResult, ExecutionError, NodeId, RequestId};
use futures_util::stream::{FuturesUnordered, Stream, StreamExt as _};
use prost::Message as _;
use proto::kv::error_detail::Kind;
use proto::kv::kv_server::Kv;
use proto::kv::*;
use tokio::sync::{mpsc, oneshot};
use tonic::{Code, Request, Response, Status, Streaming};

use crate::runtime::{ClientAnswer, Event, ReplyTo};
use proto::convert::value_of;

/// The client service of one node.
#[derive(Debug, Clone)]
pub struct KvService {
    /// This node.
    pub node_id: NodeId,
    /// The protocol, for Status.
    pub protocol: consensus::config::Protocol,
    /// The cluster id, for Status.
    pub cluster_id: String,
    /// Where each node listens, for redirect hints and Status.
    pub book: std::sync::Arc<crate::members::AddressBook>,
    /// The runtime's queue.
    pub events: mpsc::Sender<Event>,
    /// How long a request may wait for its answer.
    pub request_timeout: Duration,
    /// Injected delay on each request and each response.
    pub net_delay: crate::netdelay::NetDelay,
}

/// A gRPC status with a machine-readable detail.
pub fn error_status(
    code: Code,
    kind: Kind,
    message: impl Into<String>,
    leader: Option<(NodeId, String)>,
) -> Status {
    let message = message.into();
    let (leader_id, leader_client_addr) = leader.unwrap_or_default();
    let detail = ErrorDetail {
        kind: kind as i32,
        leader_id,
        leader_client_addr,
        message: message.clone(),
    };
    let details = proto::errors::pack(code, &message, &detail);
    Status::with_details(code, message, details.into())
}

/// A chunk of a capture as the Backup call sends it.
fn backup_chunk(
    snapshot: consensus::snapshot::SnapshotMeta,
    chunk: crate::storage::CaptureChunk,
) -> BackupChunk {
    let mut out = BackupChunk {
        index: snapshot.index,
        term: snapshot.term,
        done: chunk.done,
        time: snapshot.stamp.time,
        expire_before: snapshot.stamp.expire_before,
        ..BackupChunk::default()
    };
    for item in chunk.items {
        match item {
            consensus::snapshot::SnapshotItem::Data(key, value) => {
                out.data.push(KeyValue { key, value });
            }
            consensus::snapshot::SnapshotItem::Session(client_id, session) => {
                out.sessions.push(BackupSession {
                    client_id,
                    session: proto::raft::StoredSession::from(&session).encode_to_vec(),
                });
            }
        }
    }
    out
}

/// How a request was answered.
#[derive(Debug)]
enum Done {
    /// Its command was applied (or read) with this result.
    Result(CommandResult),
    /// Nil-ext's fast path: durable here, acknowledged in `term`.
    Durable {
        term: u64,
        from_leader: bool,
        voters: consensus::NodeSet,
    },
}

/// A failed request, by where it failed, which decides how much of the
/// injected delay its error has still to travel.
#[derive(Debug)]
enum ServiceError {
    /// Refused before it reached the runtime: the request's way in and the
    /// error's way out.
    Refused(Status),
    /// Answered so by the runtime: the answer travelled its way out
    /// already (`ReplyTo`).
    Failed(Status),
    /// Failed here after reaching the runtime (deadline, shutdown): the way
    /// out.
    FailedHere(Status),
}

impl ServiceError {
    fn code(&self) -> Code {
        match self {
            ServiceError::Refused(status)
            | ServiceError::Failed(status)
            | ServiceError::FailedHere(status) => status.code(),
        }
    }

    fn into_status(self) -> Status {
        match self {
            ServiceError::Refused(status)
            | ServiceError::Failed(status)
            | ServiceError::FailedHere(status) => status,
        }
    }
}

/// The request id, and whether the request asks for Nil-ext's fast path.
fn header_id(header: Option<RequestHeader>) -> Result<(RequestId, bool), Status> {
    match header {
        Some(RequestHeader {
            client_id,
            seq,
            fast_path,
        }) if client_id != 0 && seq != 0 => Ok((
            RequestId {
                client: client_id,
                seq,
            },
            fast_path,
        )),
        _ => Err(error_status(
            Code::InvalidArgument,
            Kind::InvalidArgument,
            "a write needs a header: a non-zero client_id (chosen at random, kept for the \
             session) and seq (1, 2, 3, ... for its writes, the same on a retry); reads need none",
            None,
        )),
    }
}

/// The request id of a read: the header's, or, with none, a fresh one (a
/// read needs no session: it changes nothing, and the state machine keeps
/// no session for it).
fn read_id(header: Option<RequestHeader>) -> Result<(RequestId, bool), Status> {
    match header {
        None => Ok((
            RequestId {
                client: rand::random::<u64>().max(1),
                seq: 1,
            },
            false,
        )),
        header => header_id(header),
    }
}

impl KvService {
    /// Validates a request, hands it to the runtime and waits for its
    /// answer. With an injected delay the request reaches the runtime, and
    /// the answer this handler, only once the one-way delay has passed; the
    /// delay thread hands each over, so this task wakes once, for the
    /// answer.
    /// Asks the runtime something (the event built around the reply
    /// channel) and waits for its answer until the request deadline.
    async fn ask_runtime<T>(
        &self,
        event: impl FnOnce(oneshot::Sender<T>) -> Event,
    ) -> Result<T, Status> {
        let (reply, answer) = oneshot::channel();
        let unavailable = || {
            error_status(
                Code::Unavailable,
                Kind::Unavailable,
                "node is shutting down",
                None,
            )
        };
        self.events
            .send(event(reply))
            .await
            .map_err(|_| unavailable())?;
        tokio::time::timeout(self.request_timeout, answer)
            .await
            .map_err(|_| self.deadline_exceeded())?
            .map_err(|_| unavailable())
    }

    async fn execute(
        &self,
        header: Option<RequestHeader>,
        command: Command,
    ) -> Result<Done, Status> {
        let kind = crate::metrics::kind_of(&command);
        let path = if header.as_ref().is_some_and(|h| h.fast_path) {
            "fast"
        } else {
            "ordered"
        };
        let started = std::time::Instant::now();
        let result = self.execute_delayed(header, command).await;
        let metrics = &*crate::metrics::METRICS;
        metrics
            .request_seconds
            .with_label_values(&[kind])
            .observe(started.elapsed().as_secs_f64());
        let outcome = match &result {
            Ok(_) => "ok".to_string(),
            Err(error) => format!("{:?}", error.code()).to_lowercase(),
        };
        metrics
            .requests
            .with_label_values(&[kind, path, &outcome])
            .inc();
        // The injected delay is applied at the edge, never in the runtime:
        // an answer travels the way out as it leaves the runtime
        // (`ReplyTo::delayed`); a failure here travels it now, and a request
        // refused before reaching the runtime the way in too.
        let hops = match &result {
            Err(ServiceError::Refused(_)) => 2,
            Err(ServiceError::FailedHere(_)) => 1,
            Ok(_) | Err(ServiceError::Failed(_)) => 0,
        };
        for _ in 0..hops {
            self.net_delay.wait().await;
        }
        result.map_err(ServiceError::into_status)
    }

    async fn execute_delayed(
        &self,
        header: Option<RequestHeader>,
        command: Command,
    ) -> Result<Done, ServiceError> {
        let (id, fast) = if command.is_read() {
            read_id(header)
        } else {
            header_id(header)
        }
        .map_err(ServiceError::Refused)?;
        if fast && !command.takes_fast_path() {
            return Err(ServiceError::Refused(error_status(
                Code::InvalidArgument,
                Kind::InvalidArgument,
                "only put and delete may take the fast path",
                None,
            )));
        }
        if let Err(invalid) = consensus::limits::validate(&command) {
            return Err(ServiceError::Refused(error_status(
                Code::InvalidArgument,
                Kind::InvalidArgument,
                invalid.to_string(),
                None,
            )));
        }
        let (reply, answer) = oneshot::channel();
        let reply = ReplyTo::new(reply, &command).delayed(self.net_delay);
        let event = Event::Client {
            request: ClientRequest { id, command },
            fast,
            reply,
        };
        let deadline = tokio::time::Instant::now() + self.request_timeout;
        let unavailable = || {
            error_status(
                Code::Unavailable,
                Kind::Unavailable,
                "node is shutting down",
                None,
            )
        };
        if self.net_delay.is_zero() {
            match tokio::time::timeout_at(deadline, self.events.send(event)).await {
                Ok(Ok(())) => {}
                Ok(Err(_)) => return Err(ServiceError::Refused(unavailable())),
                Err(_) => return Err(ServiceError::Refused(self.deadline_exceeded())),
            }
        } else {
            let events = self.events.clone();
            self.net_delay.deliver_later(move || {
                // The runtime's queue is full (or closed): the request is
                // refused as unavailable rather than waited on.
                if let Err(refused) = events.try_send(event)
                    && let Event::Client { reply, .. } = refused.into_inner()
                {
                    reply.send(ClientAnswer::Outcome(ReplyOutcome::Unavailable));
                }
            });
        }
        match tokio::time::timeout_at(deadline, answer).await {
            Err(_) => Err(ServiceError::FailedHere(self.deadline_exceeded())),
            Ok(Err(_)) => Err(ServiceError::FailedHere(unavailable())),
            Ok(Ok(ClientAnswer::Result(CommandResult::Failed(error)))) => {
                let kind = match error {
                    ExecutionError::SessionExpired { .. } => Kind::SessionExpired,
                    _ => Kind::Execution,
                };
                Err(ServiceError::Failed(error_status(
                    Code::FailedPrecondition,
                    kind,
                    error.to_string(),
                    None,
                )))
            }
            Ok(Ok(ClientAnswer::SlowPath)) => Err(ServiceError::Failed(error_status(
                Code::FailedPrecondition,
                Kind::SlowPath,
                format!(
                    "node {} does not take this write on the fast path (its session is new here or close to expiry); send it to the leader",
                    self.node_id
                ),
                None,
            ))),
            Ok(Ok(ClientAnswer::Result(result))) => Ok(Done::Result(result)),
            Ok(Ok(ClientAnswer::Outcome(ReplyOutcome::DurableAck {
                term,
                from_leader,
                voters,
            }))) => Ok(Done::Durable {
                term,
                from_leader,
                voters,
            }),
            Ok(Ok(ClientAnswer::Outcome(outcome))) => {
                Err(ServiceError::Failed(self.outcome_status(outcome)))
            }
        }
    }

    fn deadline_exceeded(&self) -> Status {
        error_status(
            Code::DeadlineExceeded,
            Kind::DeadlineExceeded,
            format!(
                "no answer within {} ms; the outcome is unknown: retry with the same request id",
                self.request_timeout.as_millis()
            ),
            None,
        )
    }

    fn outcome_status(&self, outcome: ReplyOutcome) -> Status {
        match outcome {
            ReplyOutcome::NotLeader { leader } => {
                let hint = leader.and_then(|id| self.client_addr(id).map(|addr| (id, addr)));
                let message = match &hint {
                    Some((id, addr)) => format!(
                        "node {} is not the leader; node {id} at {addr} is",
                        self.node_id
                    ),
                    None => format!(
                        "node {} is not the leader and knows no leader",
                        self.node_id
                    ),
                };
                error_status(Code::Unavailable, Kind::NotLeader, message, hint)
            }
            ReplyOutcome::Unavailable => error_status(
                Code::Unavailable,
                Kind::Unavailable,
                format!(
                    "node {} cannot serve now (no leader or no quorum)",
                    self.node_id
                ),
                None,
            ),
            ReplyOutcome::Rejected(reason) => {
                error_status(Code::InvalidArgument, Kind::InvalidArgument, reason, None)
            }
            ReplyOutcome::DurableAck { .. } => {
                Status::internal("a durability acknowledgement answered an ordered request")
            }
        }
    }

    fn write_ack(&self, done: Done) -> Result<Response<WriteAck>, Status> {
        match done {
            Done::Result(CommandResult::Written) => Ok(Response::new(WriteAck {
                term: 0,
                from_leader: true,
                node_id: self.node_id,
                durable_only: false,
                voters: Vec::new(),
            })),
            Done::Durable {
                term,
                from_leader,
                voters,
            } => Ok(Response::new(WriteAck {
                term,
                from_leader,
                node_id: self.node_id,
                durable_only: true,
                voters: voters.iter().collect(),
            })),
            Done::Result(other) => Err(unexpected(other)),
        }
    }
}

/// The result of a read or update (never a durability acknowledgement,
/// which only writes on the fast path get).
fn result(done: Done) -> Result<CommandResult, Status> {
    match done {
        Done::Result(result) => Ok(result),
        Done::Durable { .. } => Err(Status::internal(
            "a durability acknowledgement answered a read or update",
        )),
    }
}

fn unexpected(result: CommandResult) -> Status {
    Status::internal(format!("unexpected result for this call: {result:?}"))
}

/// Calls one stream may have in flight on a node. At the bound the node
/// reads no further calls from that stream until one is answered, and
/// HTTP/2 flow control holds the sender back.
pub const CALLS_IN_FLIGHT_MAX: usize = 4096;
/// The gRPC decoding limit of client calls: four times the request limit
/// (`consensus::limits::REQUEST_BYTES_MAX`), so a call over the request
/// limit but under this one is read and refused alone, with
/// INVALID_ARGUMENT and its detail, instead of ending the `Calls` stream it
/// shares with other calls. (A call larger still ends its stream: gRPC
/// cannot skip an undecoded message.)
pub const CALL_DECODE_BYTES_MAX: usize = 4 * consensus::limits::REQUEST_BYTES_MAX;
/// The gRPC encoding limit of answers: the largest read result
/// (`consensus::limits::READ_RESULT_BYTES_MAX`) with room for its framing.
pub const ANSWER_ENCODE_BYTES_MAX: usize = consensus::limits::READ_RESULT_BYTES_MAX + (1 << 20);

/// A call being answered.
type Answering = Pin<Box<dyn Future<Output = CallResult> + Send>>;

/// The answers of one `Calls` stream, in the order they are ready. Polling
/// it reads the calls that have arrived (up to [`CALLS_IN_FLIGHT_MAX`] at a
/// time) and drives them: the stream's own task serves it, no task is
/// spawned per call. It ends once the caller has closed its side and every
/// call read is answered; a caller that goes away drops the calls still
/// running (their outcome is unknown to it, as with a broken connection).
pub struct CallResults {
    service: Arc<KvService>,
    /// The incoming calls; `None` once the caller closed them (or they
    /// broke).
    calls: Option<Streaming<Call>>,
    running: FuturesUnordered<Answering>,
}

impl std::fmt::Debug for CallResults {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CallResults")
            .field("node_id", &self.service.node_id)
            .field("reading", &self.calls.is_some())
            .field("running", &self.running.len())
            .finish()
    }
}

impl Stream for CallResults {
    type Item = Result<CallResult, Status>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let this = &mut *self;
        while this.running.len() < CALLS_IN_FLIGHT_MAX
            && let Some(calls) = &mut this.calls
        {
            match calls.poll_next_unpin(cx) {
                Poll::Ready(Some(Ok(call))) => {
                    let service = Arc::clone(&this.service);
                    this.running
                        .push(Box::pin(async move { service.answer(call).await }));
                }
                Poll::Ready(Some(Err(status))) => {
                    tracing::debug!(node = this.service.node_id, %status, "a call stream broke");
                    this.calls = None;
                }
                Poll::Ready(None) => this.calls = None,
                Poll::Pending => break,
            }
        }
        match this.running.poll_next_unpin(cx) {
            Poll::Ready(Some(result)) => Poll::Ready(Some(Ok(result))),
            Poll::Ready(None) if this.calls.is_none() => Poll::Ready(None),
            _ => Poll::Pending,
        }
    }
}

impl KvService {
    /// Answers one call of a `Calls` stream with the unary method of its
    /// kind.
    async fn answer(&self, call: Call) -> CallResult {
        use call::Request as Asked;
        use call_result::Answer;
        let answer = match call.request {
            Some(Asked::Put(r)) => self
                .put(Request::new(r))
                .await
                .map(|r| Answer::Write(r.into_inner())),
            Some(Asked::Delete(r)) => self
                .delete(Request::new(r))
                .await
                .map(|r| Answer::Write(r.into_inner())),
            Some(Asked::MultiPut(r)) => self
                .multi_put(Request::new(r))
                .await
                .map(|r| Answer::Write(r.into_inner())),
            Some(Asked::Get(r)) => self
                .get(Request::new(r))
                .await
                .map(|r| Answer::Get(r.into_inner())),
            Some(Asked::MultiGet(r)) => self
                .multi_get(Request::new(r))
                .await
                .map(|r| Answer::MultiGet(r.into_inner())),
            Some(Asked::CompareAndSwap(r)) => self
                .compare_and_swap(Request::new(r))
                .await
                .map(|r| Answer::CompareAndSwap(r.into_inner())),
            Some(Asked::Increment(r)) => self
                .increment(Request::new(r))
                .await
                .map(|r| Answer::Increment(r.into_inner())),
            None => Err(error_status(
                Code::InvalidArgument,
                Kind::InvalidArgument,
                "a call without a request",
                None,
            )),
        };
        CallResult {
            id: call.id,
            answer: Some(answer.unwrap_or_else(|status| {
                Answer::Error(CallError {
                    code: status.code() as i32,
                    message: status.message().to_string(),
                    details: status.details().to_vec(),
                })
            })),
        }
    }
}

#[tonic::async_trait]
impl Kv for KvService {
    type CallsStream = CallResults;

    async fn calls(
        &self,
        request: Request<Streaming<Call>>,
    ) -> Result<Response<CallResults>, Status> {
        Ok(Response::new(CallResults {
            service: Arc::new(self.clone()),
            calls: Some(request.into_inner()),
            running: FuturesUnordered::new(),
        }))
    }

    async fn put(&self, request: Request<PutRequest>) -> Result<Response<WriteAck>, Status> {
        let r = request.into_inner();
        let result = self
            .execute(
                r.header,
                Command::Put {
                    key: r.key,
                    value: r.value,
                },
            )
            .await?;
        self.write_ack(result)
    }

    async fn delete(&self, request: Request<DeleteRequest>) -> Result<Response<WriteAck>, Status> {
        let r = request.into_inner();
        let result = self
            .execute(r.header, Command::Delete { key: r.key })
            .await?;
        self.write_ack(result)
    }

    async fn multi_put(
        &self,
        request: Request<MultiPutRequest>,
    ) -> Result<Response<WriteAck>, Status> {
        let r = request.into_inner();
        let pairs = r.pairs.into_iter().map(|kv| (kv.key, kv.value)).collect();
        let result = self.execute(r.header, Command::MultiPut { pairs }).await?;
        self.write_ack(result)
    }

    async fn get(&self, request: Request<GetRequest>) -> Result<Response<GetResponse>, Status> {
        let r = request.into_inner();
        match result(self.execute(r.header, Command::Get { key: r.key }).await?)? {
            CommandResult::Value(value) => Ok(Response::new(GetResponse {
                value: Some(value.into()),
            })),
            other => Err(unexpected(other)),
        }
    }

    async fn multi_get(
        &self,
        request: Request<MultiGetRequest>,
    ) -> Result<Response<MultiGetResponse>, Status> {
        let r = request.into_inner();
        match result(
            self.execute(r.header, Command::MultiGet { keys: r.keys })
                .await?,
        )? {
            CommandResult::Values(values) => Ok(Response::new(MultiGetResponse {
                values: values.into_iter().map(Into::into).collect(),
            })),
            other => Err(unexpected(other)),
        }
    }

    async fn compare_and_swap(
        &self,
        request: Request<CompareAndSwapRequest>,
    ) -> Result<Response<CompareAndSwapResponse>, Status> {
        let r = request.into_inner();
        let command = Command::CompareAndSwap {
            key: r.key,
            expected: value_of(r.expected),
            new: r.new_value,
        };
        match result(self.execute(r.header, command).await?)? {
            CommandResult::Swapped { succeeded, current } => {
                Ok(Response::new(CompareAndSwapResponse {
                    succeeded,
                    current: Some(current.into()),
                }))
            }
            other => Err(unexpected(other)),
        }
    }

    async fn increment(
        &self,
        request: Request<IncrementRequest>,
    ) -> Result<Response<IncrementResponse>, Status> {
        let r = request.into_inner();
        let command = Command::Increment {
            key: r.key,
            by: r.by,
        };
        match result(self.execute(r.header, command).await?)? {
            CommandResult::Counter(value) => Ok(Response::new(IncrementResponse { value })),
            other => Err(unexpected(other)),
        }
    }

    type BackupStream = Pin<Box<dyn Stream<Item = Result<BackupChunk, Status>> + Send>>;

    /// A read through the protocol first (ReadIndex, lease or the log, as
    /// the node serves reads): once answered, this leader has applied every
    /// write acknowledged before the call; then a capture of its state, read
    /// and sent in chunks off the runtime thread, and removed.
    async fn backup(
        &self,
        _request: Request<BackupRequest>,
    ) -> Result<Response<Self::BackupStream>, Status> {
        let client_id = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(1, |d| d.as_nanos() as u64)
            | 1;
        let barrier = RequestHeader {
            client_id,
            seq: 1,
            fast_path: false,
        };
        self.execute(
            Some(barrier),
            Command::Get {
                key: b"\0backup barrier".to_vec(),
            },
        )
        .await?;
        let (snapshot, dir) = self
            .ask_runtime(|reply| Event::Backup { reply })
            .await?
            .map_err(|e| Status::internal(format!("cannot capture the state: {e}")))?;
        tracing::info!(
            node = self.node_id,
            index = snapshot.index,
            "sending a backup of the state at {}",
            snapshot.index
        );
        let (chunks, received) = mpsc::channel(2);
        tokio::task::spawn_blocking(move || {
            let mut reader = crate::storage::CaptureReader::default();
            let mut at = Vec::new();
            loop {
                let chunk = match reader.read(&dir, &at, consensus::snapshot::CHUNK_BYTES) {
                    Ok(Some(chunk)) => chunk,
                    Ok(None) => {
                        let _ = chunks.blocking_send(Err(Status::internal("the capture vanished")));
                        break;
                    }
                    Err(error) => {
                        let _ = chunks.blocking_send(Err(Status::internal(error.to_string())));
                        break;
                    }
                };
                let done = chunk.done;
                at = chunk.next.clone();
                if chunks
                    .blocking_send(Ok(backup_chunk(snapshot, chunk)))
                    .is_err()
                    || done
                {
                    break;
                }
            }
            drop(reader);
            let _ = std::fs::remove_dir_all(&dir);
        });
        let stream = futures_util::stream::unfold(received, |mut received| async move {
            received.recv().await.map(|item| (item, received))
        });
        Ok(Response::new(Box::pin(stream)))
    }

    async fn transfer_leader(
        &self,
        request: Request<TransferLeaderRequest>,
    ) -> Result<Response<TransferLeaderResponse>, Status> {
        let status = self
            .ask_runtime(|reply| Event::Status { reply })
            .await?
            .status;
        if status.role != consensus::Role::Leader {
            return Err(self.outcome_status(ReplyOutcome::NotLeader {
                leader: status.leader,
            }));
        }
        let to = Some(request.into_inner().to).filter(|&id| id != 0);
        if let Some(to) = to
            && (to == self.node_id || !status.membership.is_voter(to))
        {
            return Err(error_status(
                Code::InvalidArgument,
                Kind::InvalidArgument,
                format!(
                    "cannot hand leadership to node {to}: name another voter (or none: the most up-to-date follower)"
                ),
                None,
            ));
        }
        self.ask_runtime(|reply| Event::TransferLeadership { to, reply })
            .await?;
        // Answered once another leader is known (an election timeout at
        // most: then the leader gives up and leads on).
        let deadline = tokio::time::Instant::now() + self.request_timeout;
        loop {
            let status = self
                .ask_runtime(|reply| Event::Status { reply })
                .await?
                .status;
            if let Some(leader) = status.leader.filter(|&l| l != self.node_id) {
                return Ok(Response::new(TransferLeaderResponse {
                    leader_id: leader,
                    leader_client_addr: self.client_addr(leader).unwrap_or_default(),
                }));
            }
            if tokio::time::Instant::now() >= deadline {
                return Err(error_status(
                    Code::Unavailable,
                    Kind::Unavailable,
                    format!(
                        "leadership did not move within {} ms (the target is down or far behind?); node {} still leads",
                        self.request_timeout.as_millis(),
                        self.node_id
                    ),
                    None,
                ));
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    async fn status(
        &self,
        _request: Request<StatusRequest>,
    ) -> Result<Response<StatusResponse>, Status> {
        let node = self.ask_runtime(|reply| Event::Status { reply }).await?;
        let s = node.status;
        let leader_id = s.leader.unwrap_or(0);
        Ok(Response::new(StatusResponse {
            node_id: s.id,
            role: s.role.as_str().to_string(),
            term: s.term,
            leader_id,
            leader_client_addr: self.client_addr(leader_id).unwrap_or_default(),
            commit_index: s.commit_index,
            applied_index: s.applied_index,
            last_log_index: s.last_log_index,
            protocol: self.protocol.name().to_string(),
            cluster_id: self.cluster_id.clone(),
            last_log_term: node.last_log_term,
            cluster_size: s.membership.voters.len() as u64,
            synced_writes: node.synced_writes,
            snapshot_index: s.snapshot_index,
            first_log_index: s.first_log_index,
            sessions: node.sessions,
            members: self.members(s.membership),
            membership_index: s.membership_index,
            cache_hits: node.read_cache.hits,
            cache_misses: node.read_cache.misses,
        }))
    }

    async fn change_membership(
        &self,
        request: Request<ChangeMembershipRequest>,
    ) -> Result<Response<ChangeMembershipResponse>, Status> {
        use proto::kv::change_membership_request::Change;
        let request = request.into_inner();
        let invalid = |message: String| {
            error_status(Code::InvalidArgument, Kind::InvalidArgument, message, None)
        };
        let change = match request.change {
            Some(Change::AddLearner(id)) => consensus::MembershipChange::AddLearner(id),
            Some(Change::Promote(id)) => consensus::MembershipChange::Promote(id),
            Some(Change::Remove(id)) => consensus::MembershipChange::Remove(id),
            None => return Err(invalid("no change named".into())),
        };
        consensus::membership::validate_node_id(change.node()).map_err(invalid)?;
        let address = match change {
            consensus::MembershipChange::AddLearner(_) => {
                let address = format!("{}/{}", request.peer_addr, request.client_addr);
                crate::members::parse_address(&address).map_err(|e| {
                    invalid(format!(
                        "a node added needs its peer and client addresses: {e}"
                    ))
                })?;
                address
            }
            _ => String::new(),
        };
        let answer = self
            .ask_runtime(|reply| Event::ChangeMembership {
                change,
                address,
                reply,
            })
            .await?;
        let index = match answer {
            Ok(index) => index,
            Err(consensus::MembershipError::NotLeader { leader }) => {
                return Err(self.outcome_status(ReplyOutcome::NotLeader { leader }));
            }
            Err(busy @ consensus::MembershipError::Busy(_)) => {
                return Err(error_status(
                    Code::Unavailable,
                    Kind::Unavailable,
                    busy.to_string(),
                    None,
                ));
            }
            Err(consensus::MembershipError::Invalid(reason)) => {
                return Err(error_status(
                    Code::FailedPrecondition,
                    Kind::InvalidArgument,
                    reason,
                    None,
                ));
            }
        };
        // Answered once the entry is committed here, with the configuration
        // in force then; a leader change may drop it first.
        let deadline = tokio::time::Instant::now() + self.request_timeout;
        loop {
            let s = self
                .ask_runtime(|reply| Event::Status { reply })
                .await?
                .status;
            if s.commit_index >= index && s.membership_index >= index {
                return Ok(Response::new(ChangeMembershipResponse {
                    index,
                    members: self.members(s.membership),
                }));
            }
            if s.membership_index < index || tokio::time::Instant::now() >= deadline {
                return Err(error_status(
                    Code::Unavailable,
                    Kind::Unavailable,
                    format!(
                        "the change (entry {index}) was not committed within {} ms, or a leader change dropped it; the outcome is unknown: check with kvctl member list",
                        self.request_timeout.as_millis()
                    ),
                    None,
                ));
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }
}

impl KvService {
    /// Where node `id` takes clients, if known.
    fn client_addr(&self, id: NodeId) -> Option<String> {
        self.book.get(id).map(|m| m.client_addr)
    }

    /// The members of `membership`, with the addresses known here.
    fn members(&self, membership: consensus::Membership) -> Vec<proto::kv::Member> {
        membership
            .members()
            .iter()
            .map(|id| {
                let known = self.book.get(id);
                proto::kv::Member {
                    id,
                    voter: membership.is_voter(id),
                    peer_addr: known
                        .as_ref()
                        .map(|m| m.peer_addr.clone())
                        .unwrap_or_default(),
                    client_addr: known.map(|m| m.client_addr).unwrap_or_default(),
                }
            })
            .collect()
    }
}

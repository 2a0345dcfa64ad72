//! The client library of the replicated key-value store.
//!
//! A [`Client`] holds a list of endpoints (client addresses of the nodes),
//! finds the leader, follows "not leader" redirects, backs off when no
//! leader is known, and retries a request under the same (client id,
//! sequence number) until its deadline: the servers' exactly-once sessions
//! make a retried request take effect once. When the deadline passes the
//! outcome is unknown, and the error says so.
//!
//! The library depends only on `proto` and `consensus`, so an application
//! embeds it without compiling RocksDB. `kvctl`, `bench` and the tests use it.

use std::collections::HashMap;
use std::future::Future;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use consensus::{Command, CommandResult, lock};
use futures_util::StreamExt as _;
use futures_util::stream::FuturesUnordered;
use prost::Message as _;
use proto::kv::error_detail::Kind;
use proto::kv::kv_client::KvClient;
use proto::kv::*;
use tokio::sync::{mpsc, oneshot};
use tokio::time::Instant;
use tonic::transport::Channel;

pub use proto::kv::StatusResponse;

/// Settings of a [`Client`].
#[derive(Clone, Debug)]
pub struct ClientOptions {
    /// How long one operation may take, all retries included.
    pub timeout: Duration,
    /// How long one attempt at one node may take.
    pub attempt_timeout: Duration,
    /// The client's id; random when `None`. Two clients must not share one.
    ///
    /// A client that takes an id back (after a restart, say) must go on
    /// from above every sequence number it used with that id before (see
    /// `first_seq` and [`Client::last_seq`]): the nodes keep, per id, the
    /// latest request they applied and answer a retry of it from memory.
    /// A request numbered below it is refused as stale (an
    /// [`ClientError::Execution`] error: nothing was written); one that
    /// reuses a number not applied yet cannot be told from a retry, and may
    /// be answered with another request's result. When in doubt, take a
    /// fresh id.
    pub client_id: Option<u64>,
    /// The sequence number of this client's first request (default 1):
    /// above every one used before, for a client that takes its id back.
    pub first_seq: u64,
    /// Nil-ext's fast path: how long to wait for every replica's
    /// durability acknowledgement before sending the write to the leader
    /// (the slow path, under the same request id).
    pub fast_path_timeout: Duration,
    /// Start every operation at the first endpoint rather than at the
    /// leader found last (a client bound to one node, as in Jepsen tests;
    /// redirects are still followed).
    pub start_at_first_endpoint: bool,
    /// Connections to share with other clients (one per endpoint, each
    /// client's calls a stream of its own on it); `None` gives this client
    /// connections of its own.
    pub shared_connections: Option<SharedConnections>,
}

/// Connections several clients share, one per endpoint, opened by the first
/// client that needs it. Many clients in one process (a load generator, an
/// application server) need not hold a connection each: HTTP/2 carries their
/// calls side by side on one. Each client keeps its own id and sequence
/// numbers, so sharing changes nothing of what a call means. `C` is what is
/// shared: this library's [`Connection`] by default (the bench also shares
/// its etcd channels this way).
#[derive(Clone, Debug)]
pub struct SharedConnections<C = Connection> {
    by_endpoint: std::sync::Arc<std::sync::Mutex<HashMap<String, C>>>,
}

impl<C> Default for SharedConnections<C> {
    fn default() -> Self {
        SharedConnections {
            by_endpoint: Default::default(),
        }
    }
}

impl<C: Clone> SharedConnections<C> {
    /// An empty set: nothing connected yet.
    pub fn new() -> Self {
        SharedConnections::default()
    }

    /// The connection to `endpoint`, opened with `open` if there is none.
    /// Two clients racing to open one both end up on the first opened (the
    /// other is closed when dropped).
    pub async fn get_or_open<E, F>(&self, endpoint: &str, open: F) -> Result<C, E>
    where
        F: Future<Output = Result<C, E>>,
    {
        if let Some(connection) = self.get(endpoint) {
            return Ok(connection);
        }
        let connection = open.await?;
        Ok(self.insert(endpoint, connection))
    }

    fn map(&self) -> std::sync::MutexGuard<'_, HashMap<String, C>> {
        lock(&self.by_endpoint)
    }

    fn get(&self, endpoint: &str) -> Option<C> {
        self.map().get(endpoint).cloned()
    }

    fn insert(&self, endpoint: &str, connection: C) -> C {
        self.map()
            .entry(endpoint.to_string())
            .or_insert(connection)
            .clone()
    }

    /// Forgets the connection to `endpoint` (it failed): the next client
    /// that needs one opens a new one.
    pub fn remove(&self, endpoint: &str) {
        self.map().remove(endpoint);
    }
}

impl Default for ClientOptions {
    fn default() -> Self {
        ClientOptions {
            timeout: Duration::from_secs(10),
            attempt_timeout: Duration::from_secs(2),
            client_id: None,
            first_seq: 1,
            fast_path_timeout: Duration::from_millis(50),
            start_at_first_endpoint: false,
            shared_connections: None,
        }
    }
}

/// After a fast-path write misses its quorum, later nilext writes go
/// straight to the slow path for this long (a replica is likely down).
const FAST_PATH_PAUSE: Duration = Duration::from_secs(1);

/// The longest wait between two tries while no leader answers. An election
/// takes a few hundred milliseconds; a longer wait would often find the new
/// leader long after it took office (at 500 ms, a write issued at a leader's
/// death completed up to half a second after the new leader could take it).
const BACKOFF_MAX: Duration = Duration::from_millis(100);

/// Why an operation failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ClientError {
    /// The client was given no endpoint.
    #[error("no endpoints given")]
    NoEndpoints,
    /// The request is invalid; it changed nothing.
    #[error("invalid request: {0}")]
    Invalid(String),
    /// The store executed the command and it failed (e.g. incrementing a
    /// value that is not an integer); it changed nothing.
    #[error("the command failed: {0}")]
    Execution(String),
    /// No answer before the deadline: the operation may or may not have
    /// taken effect.
    #[error("no answer within {timeout_ms} ms (last error: {last_error}); the outcome is unknown")]
    Timeout {
        /// The deadline, in milliseconds.
        timeout_ms: u128,
        /// The last error seen, to explain why.
        last_error: String,
    },
}

impl ClientError {
    /// True when the operation may have taken effect.
    pub fn outcome_unknown(&self) -> bool {
        matches!(self, ClientError::Timeout { .. })
    }
}

/// What a failed attempt means for the next one.
enum Retry {
    /// Go to this endpoint (a redirect).
    To(String),
    /// Try another endpoint, after a backoff.
    Elsewhere,
    /// Stop: the answer is final.
    Fail(ClientError),
}

/// Reads the machine-readable detail of a server error.
pub fn error_detail(status: &tonic::Status) -> Option<ErrorDetail> {
    ErrorDetail::decode(status.details())
        .ok()
        .filter(|d| d.kind != Kind::Unspecified as i32)
}

fn classify(status: &tonic::Status) -> Retry {
    match error_detail(status) {
        Some(detail) => match Kind::try_from(detail.kind).unwrap_or(Kind::Unspecified) {
            Kind::NotLeader if !detail.leader_client_addr.is_empty() => {
                Retry::To(detail.leader_client_addr)
            }
            Kind::NotLeader | Kind::Unavailable | Kind::DeadlineExceeded | Kind::Unspecified => {
                Retry::Elsewhere
            }
            Kind::InvalidArgument => Retry::Fail(ClientError::Invalid(detail.message)),
            Kind::Execution => Retry::Fail(ClientError::Execution(detail.message)),
        },
        // No detail: a transport error, a timeout of this attempt, a node
        // going away. Try elsewhere.
        None => Retry::Elsewhere,
    }
}

/// Calls a connection queues before a caller waits to hand over another
/// (the node reads up to `kvnode::service::CALLS_IN_FLIGHT_MAX` at a time).
const CALLS_QUEUED_MAX: usize = 1024;

/// Callers waiting for their answer on one call stream, by call id; `None`
/// once the stream has ended (every caller still waiting then sees it end).
type Waiting = Arc<Mutex<Option<HashMap<u64, oneshot::Sender<CallResult>>>>>;

/// A connection to one node: a gRPC channel and, on it, one `Calls` stream
/// that carries every operation (a message each way per call, instead of an
/// HTTP/2 stream with headers and trailers). Clones share both. When the
/// last clone is dropped the stream is closed; the node answers what it
/// has read, then ends it.
#[derive(Clone, Debug)]
pub struct Connection {
    kv: KvClient<Channel>,
    calls: mpsc::Sender<Call>,
    waiting: Waiting,
    next_id: Arc<AtomicU64>,
}

/// Forgets a waiting caller when its call ends, answered or not.
struct Forget<'a> {
    waiting: &'a Waiting,
    id: u64,
}

impl Drop for Forget<'_> {
    fn drop(&mut self) {
        if let Some(waiting) = lock(self.waiting).as_mut() {
            waiting.remove(&self.id);
        }
    }
}

impl Connection {
    /// Opens a connection to `endpoint` and its call stream.
    pub async fn open(endpoint: &str, timeout: Duration) -> Result<Connection, String> {
        let channel = tonic::transport::Endpoint::from_shared(format!("http://{endpoint}"))
            .map_err(|e| format!("bad endpoint {endpoint:?}: {e}"))?
            .connect_timeout(timeout)
            .tcp_nodelay(true)
            .connect()
            .await
            .map_err(|e| format!("cannot connect to {endpoint}: {e}"))?;
        let mut kv = KvClient::new(channel).max_decoding_message_size(64 * 1024 * 1024);
        let (calls, queued) = mpsc::channel(CALLS_QUEUED_MAX);
        let answers = tokio::time::timeout(
            timeout,
            kv.calls(tokio_stream::wrappers::ReceiverStream::new(queued)),
        )
        .await
        .map_err(|_| {
            format!(
                "{endpoint}: no call stream within {} ms",
                timeout.as_millis()
            )
        })?
        .map_err(|status| {
            format!(
                "{endpoint}: cannot open a call stream: {}",
                status.message()
            )
        })?
        .into_inner();
        let waiting: Waiting = Arc::new(Mutex::new(Some(HashMap::new())));
        tokio::spawn(hand_out_answers(answers, Arc::clone(&waiting)));
        Ok(Connection {
            kv,
            calls,
            waiting,
            next_id: Arc::new(AtomicU64::new(1)),
        })
    }

    /// Sends one call and waits for its answer until `timeout`. An error
    /// without an `ErrorDetail` means the answer did not come: the
    /// deadline passed, or the stream ended (the outcome is unknown).
    async fn call(
        &self,
        request: call::Request,
        timeout: Duration,
    ) -> Result<call_result::Answer, tonic::Status> {
        let deadline = Instant::now() + timeout;
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let (answer_to, answer) = oneshot::channel();
        match lock(&self.waiting).as_mut() {
            Some(waiting) => waiting.insert(id, answer_to),
            None => return Err(tonic::Status::unavailable("the call stream has ended")),
        };
        let _forget = Forget {
            waiting: &self.waiting,
            id,
        };
        let late = || {
            tonic::Status::deadline_exceeded(format!("no answer within {} ms", timeout.as_millis()))
        };
        let call = Call {
            id,
            request: Some(request),
        };
        match tokio::time::timeout_at(deadline, self.calls.send(call)).await {
            Err(_) => return Err(late()),
            Ok(Err(_)) => return Err(tonic::Status::unavailable("the call stream has ended")),
            Ok(Ok(())) => {}
        }
        match tokio::time::timeout_at(deadline, answer).await {
            Err(_) => Err(late()),
            Ok(Err(_)) => Err(tonic::Status::unavailable(
                "the call stream ended before the answer",
            )),
            Ok(Ok(CallResult {
                answer: Some(call_result::Answer::Error(error)),
                ..
            })) => Err(tonic::Status::with_details(
                tonic::Code::from(error.code),
                error.message,
                error.details.into(),
            )),
            Ok(Ok(CallResult {
                answer: Some(answer),
                ..
            })) => Ok(answer),
            Ok(Ok(CallResult { answer: None, .. })) => {
                Err(tonic::Status::internal("an answer without content"))
            }
        }
    }
}

/// Hands each answer of a call stream to the caller waiting for it; when the
/// stream ends, every caller still waiting learns it.
async fn hand_out_answers(mut answers: tonic::Streaming<CallResult>, waiting: Waiting) {
    loop {
        match answers.message().await {
            Ok(Some(result)) => {
                let caller = lock(&waiting)
                    .as_mut()
                    .and_then(|waiting| waiting.remove(&result.id));
                // A caller that gave up is no longer waiting.
                if let Some(caller) = caller {
                    let _ = caller.send(result);
                }
            }
            Ok(None) => break,
            Err(status) => {
                tracing::debug!(%status, "a call stream broke");
                break;
            }
        }
    }
    *lock(&waiting) = None;
}

/// A client of one cluster. One operation at a time (`&mut self`): each
/// operation gets the next sequence number of this client's session.
#[derive(Debug)]
pub struct Client {
    endpoints: Vec<String>,
    connections: HashMap<String, Connection>,
    leader: Option<String>,
    next: usize,
    client_id: u64,
    seq: u64,
    options: ClientOptions,
    /// The cluster's protocol and size, learned from Status on first need.
    cluster: Option<(String, usize)>,
    /// Nilext writes skip the fast path until then.
    fast_path_paused_until: Option<Instant>,
}

impl Client {
    /// A client of the cluster reachable at `endpoints` (HOST:PORT client
    /// addresses). Connects lazily.
    pub fn new(endpoints: Vec<String>, options: ClientOptions) -> Result<Client, ClientError> {
        let endpoints: Vec<String> = endpoints
            .into_iter()
            .map(|e| e.trim().to_string())
            .filter(|e| !e.is_empty())
            .collect();
        if endpoints.is_empty() {
            return Err(ClientError::NoEndpoints);
        }
        let client_id = options
            .client_id
            .unwrap_or_else(|| rand::random::<u64>().max(1));
        Ok(Client {
            next: rand::random::<u32>() as usize % endpoints.len(),
            endpoints,
            connections: HashMap::new(),
            leader: None,
            client_id,
            seq: options.first_seq.saturating_sub(1),
            options,
            cluster: None,
            fast_path_paused_until: None,
        })
    }

    /// The sequence number of this client's latest request (0: none yet):
    /// what a client that means to take its id back must keep.
    pub fn last_seq(&self) -> u64 {
        self.seq
    }

    /// This client's id.
    pub fn client_id(&self) -> u64 {
        self.client_id
    }

    /// The endpoint currently believed to be the leader.
    pub fn leader(&self) -> Option<&str> {
        self.leader.as_deref()
    }

    async fn connection(
        &mut self,
        endpoint: &str,
        timeout: Duration,
    ) -> Result<Connection, String> {
        if let Some(client) = self.connections.get(endpoint) {
            return Ok(client.clone());
        }
        let open = Connection::open(endpoint, timeout);
        let client = match &self.options.shared_connections {
            Some(shared) => shared.get_or_open(endpoint, open).await?,
            None => open.await?,
        };
        self.connections
            .insert(endpoint.to_string(), client.clone());
        Ok(client)
    }

    /// Drops a connection that failed, so the next call opens a new one.
    fn forget_connection(&mut self, endpoint: &str) {
        self.connections.remove(endpoint);
        if let Some(shared) = &self.options.shared_connections {
            shared.remove(endpoint);
        }
    }

    fn header(&self, fast_path: bool) -> Option<RequestHeader> {
        Some(RequestHeader {
            client_id: self.client_id,
            seq: self.seq,
            fast_path,
        })
    }

    /// The cluster's protocol and size, from the first node that answers
    /// Status (cached).
    async fn cluster(&mut self) -> Option<(String, usize)> {
        if self.cluster.is_none() {
            for (_, status) in self.status_all().await {
                if let Ok(status) = status {
                    self.cluster = Some((status.protocol, status.cluster_size as usize));
                    break;
                }
            }
        }
        self.cluster.clone()
    }

    /// Runs one command until its deadline: nilext writes on a Nil-ext
    /// cluster try the fast path first; everything goes to the leader,
    /// retried under the same request id, until it answers.
    pub async fn execute(&mut self, command: Command) -> Result<CommandResult, ClientError> {
        if let Err(invalid) = consensus::limits::validate(&command) {
            return Err(ClientError::Invalid(invalid.to_string()));
        }
        self.seq += 1;
        let deadline = Instant::now() + self.options.timeout;
        if command.takes_fast_path()
            && self
                .fast_path_paused_until
                .is_none_or(|until| Instant::now() >= until)
            && let Some((protocol, size)) = self.cluster().await
            && protocol.parse() == Ok(consensus::config::Protocol::Nilext)
        {
            match self.fast_path(&command, size).await {
                Ok(true) => return Ok(CommandResult::Written),
                Ok(false) => self.fast_path_paused_until = Some(Instant::now() + FAST_PATH_PAUSE),
                Err(error) => return Err(error),
            }
        }
        self.execute_ordered(command, deadline).await
    }

    /// Nil-ext's fast path: sends the write to every replica and waits for
    /// durability acknowledgements from all `size` of them in one term, the
    /// leader's among them (`consensus::quorum::nilext_fast_quorum`). True
    /// when that quorum was reached within the fast-path timeout, or a
    /// replica answered that it had already applied the write.
    async fn fast_path(&mut self, command: &Command, size: usize) -> Result<bool, ClientError> {
        let timeout = self.options.fast_path_timeout;
        let header = self.header(true);
        // The calls are polled by this task (no task spawned per replica):
        // one wake-up per answer, none to hand a result from task to task.
        let mut calls = FuturesUnordered::new();
        for endpoint in self.endpoints.clone() {
            let Ok(kv) = self.connection(&endpoint, timeout).await else {
                continue;
            };
            calls.push(attempt(kv, header, command, timeout));
        }
        let mut acks = consensus::quorum::FastAcks::new(size);
        let until = Instant::now() + timeout;
        while let Ok(Some(answer)) = tokio::time::timeout_at(until, calls.next()).await {
            match answer {
                Ok((_, Some(ack)))
                    if ack.durable_only && acks.add(ack.node_id, ack.term, ack.from_leader) =>
                {
                    return Ok(true);
                }
                // A replica that had already applied this write (a retry)
                // answers with its result: it took effect.
                Ok((_, Some(ack))) if !ack.durable_only => return Ok(true),
                Err(status) => {
                    // Refused for good (invalid, or a sequence number below
                    // the session's): no path will take it.
                    if let Retry::Fail(error) = classify(&status) {
                        return Err(error);
                    }
                }
                _ => {}
            }
        }
        Ok(false)
    }

    /// Sends the command to the leader (following redirects, backing off
    /// when none is known) until it answers or `deadline` passes.
    async fn execute_ordered(
        &mut self,
        command: Command,
        deadline: Instant,
    ) -> Result<CommandResult, ClientError> {
        let mut backoff = Duration::from_millis(10);
        let mut last_error = String::from("no attempt made");
        let mut redirects = 0;
        if self.options.start_at_first_endpoint {
            self.leader = None;
            self.next = 0;
        }
        loop {
            let now = Instant::now();
            if now >= deadline {
                return Err(ClientError::Timeout {
                    timeout_ms: self.options.timeout.as_millis(),
                    last_error,
                });
            }
            let attempt_timeout = self.options.attempt_timeout.min(deadline - now);
            let target = match &self.leader {
                Some(leader) => leader.clone(),
                None => self.endpoints[self.next % self.endpoints.len()].clone(),
            };
            let retry = match self.connection(&target, attempt_timeout).await {
                Err(error) => {
                    last_error = error;
                    Retry::Elsewhere
                }
                Ok(connection) => {
                    match attempt(connection, self.header(false), &command, attempt_timeout).await {
                        Ok((result, _)) => {
                            self.leader = Some(target);
                            return Ok(result);
                        }
                        Err(status) => {
                            last_error = format!("{target}: {}", status.message());
                            if error_detail(&status).is_none() {
                                self.forget_connection(&target);
                            }
                            classify(&status)
                        }
                    }
                }
            };
            match retry {
                Retry::Fail(error) => return Err(error),
                Retry::To(leader) => {
                    redirects += 1;
                    if !self.endpoints.contains(&leader) {
                        self.endpoints.push(leader.clone());
                    }
                    self.leader = Some(leader);
                    // Two nodes pointing at each other during an election:
                    // slow down.
                    if redirects > 3 {
                        tokio::time::sleep(
                            backoff.min(deadline.saturating_duration_since(Instant::now())),
                        )
                        .await;
                        backoff = (backoff * 2).min(BACKOFF_MAX);
                    }
                }
                Retry::Elsewhere => {
                    self.leader = None;
                    self.next += 1;
                    let jitter = Duration::from_millis(rand::random::<u64>() % 10);
                    tokio::time::sleep(
                        (backoff + jitter).min(deadline.saturating_duration_since(Instant::now())),
                    )
                    .await;
                    backoff = (backoff * 2).min(BACKOFF_MAX);
                }
            }
        }
    }

    /// Sets `key` to `value`.
    pub async fn put(
        &mut self,
        key: impl Into<Vec<u8>>,
        value: impl Into<Vec<u8>>,
    ) -> Result<(), ClientError> {
        self.execute(Command::Put {
            key: key.into(),
            value: value.into(),
        })
        .await
        .map(drop)
    }

    /// Removes `key`.
    pub async fn delete(&mut self, key: impl Into<Vec<u8>>) -> Result<(), ClientError> {
        self.execute(Command::Delete { key: key.into() })
            .await
            .map(drop)
    }

    /// Sets several keys atomically.
    pub async fn multi_put(&mut self, pairs: Vec<(Vec<u8>, Vec<u8>)>) -> Result<(), ClientError> {
        self.execute(Command::MultiPut { pairs }).await.map(drop)
    }

    /// Reads `key`.
    pub async fn get(&mut self, key: impl Into<Vec<u8>>) -> Result<Option<Vec<u8>>, ClientError> {
        match self.execute(Command::Get { key: key.into() }).await? {
            CommandResult::Value(value) => Ok(value),
            other => Err(unexpected(other)),
        }
    }

    /// Reads several keys at one point in time.
    pub async fn multi_get(
        &mut self,
        keys: Vec<Vec<u8>>,
    ) -> Result<Vec<Option<Vec<u8>>>, ClientError> {
        match self.execute(Command::MultiGet { keys }).await? {
            CommandResult::Values(values) => Ok(values),
            other => Err(unexpected(other)),
        }
    }

    /// Sets `key` to `new` if it holds `expected` (`None`: absent). Returns
    /// whether it swapped and the value found.
    pub async fn compare_and_swap(
        &mut self,
        key: impl Into<Vec<u8>>,
        expected: Option<Vec<u8>>,
        new: impl Into<Vec<u8>>,
    ) -> Result<(bool, Option<Vec<u8>>), ClientError> {
        let command = Command::CompareAndSwap {
            key: key.into(),
            expected,
            new: new.into(),
        };
        match self.execute(command).await? {
            CommandResult::Swapped { succeeded, current } => Ok((succeeded, current)),
            other => Err(unexpected(other)),
        }
    }

    /// Adds `by` to the counter at `key` and returns the new value.
    pub async fn increment(
        &mut self,
        key: impl Into<Vec<u8>>,
        by: i64,
    ) -> Result<i64, ClientError> {
        match self
            .execute(Command::Increment {
                key: key.into(),
                by,
            })
            .await?
        {
            CommandResult::Counter(n) => Ok(n),
            other => Err(unexpected(other)),
        }
    }

    /// The status of every endpoint (errors for those that do not answer
    /// within the attempt timeout).
    pub async fn status_all(&mut self) -> Vec<(String, Result<StatusResponse, String>)> {
        let timeout = self.options.attempt_timeout;
        let mut out = Vec::new();
        for endpoint in self.endpoints.clone() {
            let result = match self.connection(&endpoint, timeout).await {
                Err(error) => Err(error),
                Ok(connection) => {
                    let mut request = tonic::Request::new(StatusRequest {});
                    request.set_timeout(timeout);
                    let mut kv = connection.kv;
                    kv.status(request)
                        .await
                        .map(|r| r.into_inner())
                        .map_err(|s| {
                            self.forget_connection(&endpoint);
                            format!("{endpoint}: {}", s.message())
                        })
                }
            };
            out.push((endpoint, result));
        }
        out
    }
}

fn unexpected(result: CommandResult) -> ClientError {
    match result {
        CommandResult::Failed(error) => ClientError::Execution(error.to_string()),
        other => ClientError::Execution(format!("unexpected result {other:?}")),
    }
}

/// One call to one node: the command's result, and the write
/// acknowledgement for put, delete and multi-put.
async fn attempt(
    connection: Connection,
    header: Option<RequestHeader>,
    command: &Command,
    timeout: Duration,
) -> Result<(CommandResult, Option<WriteAck>), tonic::Status> {
    use call::Request as Asked;
    use call_result::Answer;
    let request = match command.clone() {
        Command::Put { key, value } => Asked::Put(PutRequest { header, key, value }),
        Command::Delete { key } => Asked::Delete(DeleteRequest { header, key }),
        Command::MultiPut { pairs } => Asked::MultiPut(MultiPutRequest {
            header,
            pairs: pairs
                .into_iter()
                .map(|(key, value)| KeyValue { key, value })
                .collect(),
        }),
        Command::Get { key } => Asked::Get(GetRequest { header, key }),
        Command::MultiGet { keys } => Asked::MultiGet(MultiGetRequest { header, keys }),
        Command::CompareAndSwap { key, expected, new } => {
            Asked::CompareAndSwap(CompareAndSwapRequest {
                header,
                key,
                expected: Some(expected.into()),
                new_value: new,
            })
        }
        Command::Increment { key, by } => Asked::Increment(IncrementRequest { header, key, by }),
    };
    let value = proto::convert::value_of;
    let result = match (command, connection.call(request, timeout).await?) {
        (
            Command::Put { .. } | Command::Delete { .. } | Command::MultiPut { .. },
            Answer::Write(ack),
        ) => {
            return Ok((CommandResult::Written, Some(ack)));
        }
        (Command::Get { .. }, Answer::Get(response)) => CommandResult::Value(value(response.value)),
        (Command::MultiGet { .. }, Answer::MultiGet(response)) => CommandResult::Values(
            response
                .values
                .into_iter()
                .map(|v| value(Some(v)))
                .collect(),
        ),
        (Command::CompareAndSwap { .. }, Answer::CompareAndSwap(response)) => {
            CommandResult::Swapped {
                succeeded: response.succeeded,
                current: value(response.current),
            }
        }
        (Command::Increment { .. }, Answer::Increment(response)) => {
            CommandResult::Counter(response.value)
        }
        (_, answer) => {
            return Err(tonic::Status::internal(format!(
                "an answer of the wrong kind: {answer:?}"
            )));
        }
    };
    Ok((result, None))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A connection never opened, whose call stream has
    /// `waiting` callers (`None`: it has ended) and whose calls go to
    /// `calls`.
    fn unopened(
        waiting: Option<HashMap<u64, oneshot::Sender<CallResult>>>,
        calls: mpsc::Sender<Call>,
    ) -> Connection {
        let endpoint = tonic::transport::Endpoint::from_static("http://127.0.0.1:1");
        Connection {
            kv: KvClient::new(endpoint.connect_lazy()),
            calls,
            waiting: Arc::new(Mutex::new(waiting)),
            next_id: Arc::new(AtomicU64::new(1)),
        }
    }

    fn lazy() -> Connection {
        unopened(None, mpsc::channel(1).0)
    }

    fn a_get() -> call::Request {
        call::Request::Get(GetRequest {
            header: None,
            key: b"k".to_vec(),
        })
    }

    #[tokio::test]
    async fn a_call_on_an_ended_stream_fails_at_once_without_detail() {
        let started = Instant::now();
        let error = lazy()
            .call(a_get(), Duration::from_secs(5))
            .await
            .expect_err("the stream has ended");
        assert_eq!(error.code(), tonic::Code::Unavailable);
        assert!(error_detail(&error).is_none(), "not an answer of the node");
        assert!(matches!(classify(&error), Retry::Elsewhere));
        assert!(started.elapsed() < Duration::from_secs(1));
    }

    #[tokio::test]
    async fn an_unanswered_call_times_out_and_is_no_longer_waited_for() {
        let (calls, mut sent) = mpsc::channel(4);
        let connection = unopened(Some(HashMap::new()), calls);
        let error = connection
            .call(a_get(), Duration::from_millis(50))
            .await
            .expect_err("nobody answers");
        assert_eq!(error.code(), tonic::Code::DeadlineExceeded);
        let call = sent.recv().await.expect("the call was sent");
        assert_eq!(call.request, Some(a_get()));
        assert!(
            lock(&connection.waiting).as_ref().expect("open").is_empty(),
            "the caller that gave up is forgotten"
        );
    }

    #[tokio::test]
    async fn an_answer_reaches_its_caller_and_an_error_keeps_its_detail() {
        let (calls, mut sent) = mpsc::channel(4);
        let connection = unopened(Some(HashMap::new()), calls);
        let waiting = Arc::clone(&connection.waiting);
        // Plays the node: answers the first call with a value, the second
        // with a redirect, by id.
        let node = tokio::spawn(async move {
            for reply in 0..2 {
                let call = sent.recv().await.expect("a call");
                let answer = if reply == 0 {
                    call_result::Answer::Get(GetResponse {
                        value: Some(OptionalValue {
                            present: true,
                            value: b"v".to_vec(),
                        }),
                    })
                } else {
                    let detail = ErrorDetail {
                        kind: Kind::NotLeader as i32,
                        leader_id: 2,
                        leader_client_addr: "127.0.0.1:2".into(),
                        message: "not the leader".into(),
                    };
                    call_result::Answer::Error(CallError {
                        code: tonic::Code::Unavailable as i32,
                        message: detail.message.clone(),
                        details: detail.encode_to_vec(),
                    })
                };
                let caller = lock(&waiting)
                    .as_mut()
                    .and_then(|w| w.remove(&call.id))
                    .expect("its caller waits");
                let _ = caller.send(CallResult {
                    id: call.id,
                    answer: Some(answer),
                });
            }
        });
        let (result, ack) = attempt(
            connection.clone(),
            None,
            &Command::Get { key: b"k".to_vec() },
            Duration::from_secs(5),
        )
        .await
        .expect("answered");
        assert_eq!(result, CommandResult::Value(Some(b"v".to_vec())));
        assert!(ack.is_none());
        let error = connection
            .call(a_get(), Duration::from_secs(5))
            .await
            .expect_err("redirected");
        assert!(matches!(classify(&error), Retry::To(leader) if leader == "127.0.0.1:2"));
        node.await.expect("node");
    }

    #[tokio::test]
    async fn shared_connections_keep_the_first_opened_and_forget_a_failed_one() {
        let shared = SharedConnections::new();
        let mut first = Client::new(
            vec!["127.0.0.1:1".into()],
            ClientOptions {
                shared_connections: Some(shared.clone()),
                ..ClientOptions::default()
            },
        )
        .expect("client");
        assert!(shared.get("127.0.0.1:1").is_none(), "nothing opened yet");
        // Two clients racing to open the same endpoint end up on one.
        let same = |a: &Connection, b: &Connection| Arc::ptr_eq(&a.waiting, &b.waiting);
        let (one, two) = (lazy(), lazy());
        assert!(!same(&one, &two), "told apart");
        let kept = shared.insert("127.0.0.1:1", one.clone());
        let _ = shared.insert("127.0.0.1:1", two);
        assert_eq!(shared.map().len(), 1);
        assert!(same(&kept, &one));
        assert!(same(&kept, &shared.get("127.0.0.1:1").unwrap()));
        // A client takes the shared connection rather than opening its own,
        // and dropping it after a failure drops it for the others too.
        let taken = first
            .connection("127.0.0.1:1", Duration::from_millis(100))
            .await
            .expect("the shared connection, without connecting");
        assert!(same(&taken, &kept));
        first.forget_connection("127.0.0.1:1");
        assert!(shared.get("127.0.0.1:1").is_none());
        assert!(first.connections.is_empty());
    }
}

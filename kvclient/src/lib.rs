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
use std::time::Duration;

use consensus::{Command, CommandResult};
use futures_util::StreamExt as _;
use futures_util::stream::FuturesUnordered;
use proto::kv::*;
use tokio::time::Instant;

pub use proto;
pub use proto::kv::StatusResponse;

mod connection;
mod error;

use connection::attempt;
pub use connection::{Connection, SharedConnections};
pub use error::{ClientError, error_detail};
use error::{Retry, classify, unexpected};

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
    /// A request numbered below it is refused as stale, and another request
    /// under its very number is refused too (each an
    /// [`ClientError::Execution`] error: nothing was written); but a number
    /// the nodes have not applied yet cannot be told from a new request:
    /// whichever of the two requests under it is applied first takes
    /// effect, and the other is refused, even after Nil-ext's fast path
    /// acknowledged it. When in doubt, take a fresh id.
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

/// A call that only the leader answers.
#[derive(Clone, Copy)]
enum LeaderCall<'a> {
    Backup(&'a std::path::Path),
    Transfer(Option<u64>),
    Membership(&'a ChangeMembershipRequest),
}

/// Its answer.
enum LeaderAnswer {
    Backup(BackupSummary),
    Transfer(u64, String),
    Membership(ChangeMembershipResponse),
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
    /// Whether an update under this id was answered (the session exists,
    /// or existed): the session's first update is numbered 1 (the nodes
    /// refuse an unknown client's update numbered past 1 as
    /// session-expired), and no other update goes under the id before it
    /// is answered.
    session_open: bool,
    /// The last reason the leader gave for not taking a membership change
    /// yet (for the error when the client gives up).
    last_refusal: Option<String>,
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
            // A client that takes its id back continues its session.
            session_open: options.first_seq > 1,
            options,
            cluster: None,
            last_refusal: None,
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
    /// Status (cached). The members it names join the endpoints (Nil-ext's
    /// fast path needs every voter's acknowledgement).
    async fn cluster(&mut self) -> Option<(String, usize)> {
        if self.cluster.is_none() {
            for (_, status) in self.status_all().await {
                if let Ok(status) = status {
                    for member in &status.members {
                        if !member.client_addr.is_empty()
                            && !self.endpoints.contains(&member.client_addr)
                        {
                            self.endpoints.push(member.client_addr.clone());
                        }
                    }
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
        let started = Instant::now();
        match self.execute_once(command.clone(), started).await {
            // Refused, not applied, and sent so recently that no copy of it
            // can have been applied (one applied would have kept the session
            // alive): the same command again, as the first update of a
            // fresh session.
            Err(ClientError::SessionExpired(reason))
                if started.elapsed() < consensus::cluster_time::EXPIRED_RESEND_WINDOW =>
            {
                tracing::debug!(client = self.client_id, "{reason}; taking a fresh id");
                self.take_fresh_id();
                self.execute_once(command, Instant::now()).await
            }
            Err(ClientError::SessionExpired(reason)) => {
                self.take_fresh_id();
                Err(ClientError::SessionExpired(reason))
            }
            other => other,
        }
    }

    /// Starts a new session under a fresh random id.
    fn take_fresh_id(&mut self) {
        self.client_id = rand::random::<u64>().max(1);
        self.seq = 0;
        self.session_open = false;
    }

    async fn execute_once(
        &mut self,
        command: Command,
        started: Instant,
    ) -> Result<CommandResult, ClientError> {
        let mut deadline = started + self.options.timeout;
        let opens_session = !command.is_read() && !self.session_open;
        if opens_session {
            // The first update opens the session: numbered 1, under a fresh
            // id if reads (or a first update whose outcome is unknown) used
            // this one; retried only briefly (`FIRST_UPDATE_RETRY_MAX`).
            if self.seq > 0 {
                self.take_fresh_id();
            }
            deadline = deadline.min(started + consensus::cluster_time::FIRST_UPDATE_RETRY_MAX);
        }
        self.seq += 1;
        if opens_session {
            // A replica takes no fast-path write of a session it does not
            // know yet: straight to the leader. Until it is answered, no
            // later update goes under this id: one numbered past 1 would be
            // refused as session-expired while the first is still on its
            // way, and copies of it applied once the first lands.
            let result = self.execute_ordered(command, deadline).await;
            self.session_open = matches!(result, Ok(_) | Err(ClientError::Execution(_)));
            return result;
        }
        if command.takes_fast_path()
            && self
                .fast_path_paused_until
                .is_none_or(|until| Instant::now() >= until)
            && let Some((protocol, _)) = self.cluster().await
            && protocol.parse() == Ok(consensus::config::Protocol::Nilext)
        {
            match self.fast_path(&command).await {
                Ok(Some(true)) => return Ok(CommandResult::Written),
                Ok(Some(false)) => {
                    self.fast_path_paused_until = Some(Instant::now() + FAST_PATH_PAUSE)
                }
                Ok(None) => {}
                Err(error) => return Err(error),
            }
        }
        self.execute_ordered(command, deadline).await
    }

    /// Nil-ext's fast path: sends the write to every replica and waits for
    /// durability acknowledgements in one term from its leader and from
    /// every voter the leader names (`consensus::quorum::FastAcks`).
    /// `Some(true)` when that quorum was reached within the fast-path
    /// timeout, or a replica answered that it had already applied the
    /// write; `Some(false)` when it was not; `None` when a replica refused
    /// the write on the fast path (see `ClientAnswer::SlowPath` in kvnode).
    async fn fast_path(&mut self, command: &Command) -> Result<Option<bool>, ClientError> {
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
        let mut acks = consensus::quorum::FastAcks::new();
        let until = Instant::now() + timeout;
        while let Ok(Some(answer)) = tokio::time::timeout_at(until, calls.next()).await {
            match answer {
                Ok((_, Some(ack)))
                    if ack.durable_only
                        && acks.add(ack.node_id, ack.term, ack.from_leader, voters_of(&ack)) =>
                {
                    return Ok(Some(true));
                }
                // A replica that had already applied this write (a retry)
                // answers with its result: it took effect.
                Ok((_, Some(ack))) if !ack.durable_only => return Ok(Some(true)),
                Err(status) => match classify(&status) {
                    // This replica takes no fast write of this session (new
                    // to it, or close to expiry): no fast quorum this time,
                    // but no reason to skip the fast path for the next.
                    Retry::SlowPath => return Ok(None),
                    // Refused for good (invalid, or a sequence number below
                    // the session's): no path will take it.
                    Retry::Fail(error) => return Err(error),
                    _ => {}
                },
                _ => {}
            }
        }
        Ok(Some(false))
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
                Retry::Elsewhere | Retry::SlowPath => {
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

    /// Saves a consistent snapshot of the store from the leader into
    /// `path` (`kvctl snapshot save`): every write acknowledged before the
    /// call is in it. Tries the leader it knows, follows "not leader"
    /// hints, and tries other nodes until the client's timeout; a transfer
    /// cut short starts over. The file appears only once whole
    /// (`proto::backup`).
    pub async fn backup(&mut self, path: &std::path::Path) -> Result<BackupSummary, ClientError> {
        match self.at_the_leader(LeaderCall::Backup(path)).await? {
            LeaderAnswer::Backup(summary) => Ok(summary),
            _ => unreachable!("a backup is answered with a summary"),
        }
    }

    /// Asks the leader to hand leadership to `to` (`None`: the most
    /// up-to-date follower): `kvctl leader transfer`. Answered with the new
    /// leader's id and client address once it is known.
    pub async fn transfer_leader(&mut self, to: Option<u64>) -> Result<(u64, String), ClientError> {
        match self.at_the_leader(LeaderCall::Transfer(to)).await? {
            LeaderAnswer::Transfer(id, addr) => {
                self.leader = Some(addr.clone());
                Ok((id, addr))
            }
            _ => unreachable!("a transfer is answered with the leader"),
        }
    }

    /// Changes the configuration by one server at the leader (`kvctl
    /// member`): retried while the leader cannot take it yet (an earlier
    /// change uncommitted, a learner not caught up), until the client's
    /// timeout. Answered once committed, with the configuration then.
    pub async fn change_membership(
        &mut self,
        request: ChangeMembershipRequest,
    ) -> Result<ChangeMembershipResponse, ClientError> {
        match self.at_the_leader(LeaderCall::Membership(&request)).await? {
            LeaderAnswer::Membership(answer) => Ok(answer),
            _ => unreachable!("a membership change is answered with the configuration"),
        }
    }

    /// The configuration as the leader has it (or, with no leader known,
    /// the node with the highest term): its status.
    pub async fn leader_status(&mut self) -> Result<StatusResponse, ClientError> {
        let deadline = Instant::now() + self.options.timeout;
        loop {
            let best = self
                .status_all()
                .await
                .into_iter()
                .filter_map(|(_, status)| status.ok())
                .max_by_key(|s| (s.role == "leader", s.term, s.membership_index));
            match best {
                Some(status) if status.role == "leader" || Instant::now() >= deadline => {
                    return Ok(status);
                }
                None if Instant::now() >= deadline => {
                    return Err(ClientError::Timeout {
                        timeout_ms: self.options.timeout.as_millis(),
                        last_error: "no node answered".into(),
                    });
                }
                _ => tokio::time::sleep(Duration::from_millis(100)).await,
            }
        }
    }

    /// Makes `call` at the leader it knows (else the first endpoint),
    /// following "not leader" hints and trying other nodes until the
    /// client's timeout.
    async fn at_the_leader(&mut self, call: LeaderCall<'_>) -> Result<LeaderAnswer, ClientError> {
        let deadline = Instant::now() + self.options.timeout;
        let mut endpoint = self
            .leader
            .clone()
            .or_else(|| self.endpoints.first().cloned())
            .ok_or(ClientError::NoEndpoints)?;
        let mut tried = 0;
        let mut last_error = String::from("none");
        while Instant::now() < deadline {
            let answer = match call {
                LeaderCall::Backup(path) => self
                    .backup_from(&endpoint, path, deadline)
                    .await
                    .map(LeaderAnswer::Backup),
                LeaderCall::Transfer(to) => self.transfer_at(&endpoint, to, deadline).await,
                LeaderCall::Membership(request) => {
                    self.membership_at(&endpoint, request, deadline).await
                }
            };
            match answer {
                Ok(answer) => {
                    self.leader = Some(endpoint);
                    return Ok(answer);
                }
                Err(Retry::To(leader)) => endpoint = leader,
                Err(Retry::Elsewhere | Retry::SlowPath) => {
                    tried += 1;
                    endpoint = self.endpoints[tried % self.endpoints.len()].clone();
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
                Err(Retry::Fail(error)) => return Err(error),
            }
            last_error = match &self.last_refusal {
                Some(refusal) => format!("via {endpoint}: {refusal}"),
                None => format!("via {endpoint}"),
            };
        }
        Err(ClientError::Timeout {
            timeout_ms: self.options.timeout.as_millis(),
            last_error,
        })
    }

    /// A call handle to `endpoint` for a call at the leader, and the time
    /// left until `deadline` (the call's own timeout).
    async fn kv_at(
        &mut self,
        endpoint: &str,
        deadline: Instant,
    ) -> Result<
        (
            proto::kv::kv_client::KvClient<tonic::transport::Channel>,
            Duration,
        ),
        Retry,
    > {
        let remaining = deadline.saturating_duration_since(Instant::now());
        let connection = self
            .connection(endpoint, remaining.min(self.options.attempt_timeout))
            .await
            .map_err(|_| Retry::Elsewhere)?;
        Ok((connection.kv, remaining))
    }

    async fn transfer_at(
        &mut self,
        endpoint: &str,
        to: Option<u64>,
        deadline: Instant,
    ) -> Result<LeaderAnswer, Retry> {
        let (mut kv, remaining) = self.kv_at(endpoint, deadline).await?;
        let mut request = tonic::Request::new(TransferLeaderRequest {
            to: to.unwrap_or(0),
        });
        request.set_timeout(remaining);
        match kv.transfer_leader(request).await {
            Ok(answer) => {
                let answer = answer.into_inner();
                Ok(LeaderAnswer::Transfer(
                    answer.leader_id,
                    answer.leader_client_addr,
                ))
            }
            Err(status) => Err(classify(&status)),
        }
    }

    async fn membership_at(
        &mut self,
        endpoint: &str,
        change: &ChangeMembershipRequest,
        deadline: Instant,
    ) -> Result<LeaderAnswer, Retry> {
        let (mut kv, remaining) = self.kv_at(endpoint, deadline).await?;
        let mut request = tonic::Request::new(change.clone());
        request.set_timeout(remaining);
        match kv.change_membership(request).await {
            Ok(answer) => Ok(LeaderAnswer::Membership(answer.into_inner())),
            Err(status) => match classify(&status) {
                // The leader cannot take it yet: ask it again shortly.
                Retry::Elsewhere if status.code() == tonic::Code::Unavailable => {
                    tracing::debug!(message = status.message(), "membership change: retrying");
                    self.last_refusal = Some(status.message().to_string());
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    Err(Retry::To(endpoint.to_string()))
                }
                other => Err(other),
            },
        }
    }

    async fn backup_from(
        &mut self,
        endpoint: &str,
        path: &std::path::Path,
        deadline: Instant,
    ) -> Result<BackupSummary, Retry> {
        let (mut kv, remaining) = self.kv_at(endpoint, deadline).await?;
        let mut request = tonic::Request::new(BackupRequest {});
        request.set_timeout(remaining);
        let mut stream = match kv.backup(request).await {
            Ok(response) => response.into_inner(),
            Err(status) => {
                self.forget_connection(endpoint);
                return Err(classify(&status));
            }
        };
        let file_error =
            |e: proto::backup::BackupError| Retry::Fail(ClientError::File(e.to_string()));
        let mut writer = proto::backup::BackupWriter::create(path).map_err(file_error)?;
        let mut summary = BackupSummary::default();
        loop {
            let chunk = match stream.message().await {
                Ok(Some(chunk)) => chunk,
                Ok(None) | Err(_) => {
                    writer.abandon();
                    return Err(Retry::Elsewhere);
                }
            };
            summary.index = chunk.index;
            summary.term = chunk.term;
            summary.keys += chunk.data.len() as u64;
            summary.sessions += chunk.sessions.len() as u64;
            summary.bytes += chunk
                .data
                .iter()
                .map(|kv| (kv.key.len() + kv.value.len()) as u64)
                .sum::<u64>();
            let done = chunk.done;
            if let Err(error) = writer.chunk(&chunk) {
                writer.abandon();
                return Err(file_error(error));
            }
            if done {
                writer.finish().map_err(file_error)?;
                return Ok(summary);
            }
        }
    }
}

/// What a backup saved.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct BackupSummary {
    /// The log index the state machine stood at.
    pub index: u64,
    /// Its entry's term.
    pub term: u64,
    /// Keys saved.
    pub keys: u64,
    /// Client sessions saved.
    pub sessions: u64,
    /// Bytes of keys and values saved.
    pub bytes: u64,
}

/// The voters a fast-path acknowledgement names (ids out of range are left
/// out: such an acknowledgement can complete nothing).
fn voters_of(ack: &proto::kv::WriteAck) -> consensus::NodeSet {
    consensus::NodeSet::of(
        ack.voters
            .iter()
            .copied()
            .filter(|&id| consensus::membership::validate_node_id(id).is_ok()),
    )
}

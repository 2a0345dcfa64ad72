//! Connections to nodes: one gRPC channel and one `Calls` stream per node,
//! shared by the clients of a process ([`SharedConnections`]), and one
//! call of a command to one node ([`attempt`]).

use std::collections::HashMap;
use std::future::Future;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use consensus::{Command, CommandResult, lock};
use proto::kv::kv_client::KvClient;
use proto::kv::*;
use tokio::sync::{mpsc, oneshot};
use tokio::time::Instant;
use tonic::transport::Channel;

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

/// Calls a connection queues before a caller waits to hand over another
/// (the node reads up to `kvnode::service::CALLS_IN_FLIGHT_MAX` at a time).
pub(crate) const CALLS_QUEUED_MAX: usize = 1024;

/// Callers waiting for their answer on one call stream, by call id; `None`
/// once the stream has ended (every caller still waiting then sees it end).
pub(crate) type Waiting = Arc<Mutex<Option<HashMap<u64, oneshot::Sender<CallResult>>>>>;

/// A connection to one node: a gRPC channel and, on it, one `Calls` stream
/// that carries every operation (a message each way per call, instead of an
/// HTTP/2 stream with headers and trailers). Clones share both. When the
/// last clone is dropped the stream is closed; the node answers what it
/// has read, then ends it.
#[derive(Clone, Debug)]
pub struct Connection {
    pub(crate) kv: KvClient<Channel>,
    calls: mpsc::Sender<Call>,
    waiting: Waiting,
    next_id: Arc<AtomicU64>,
}

/// Forgets a waiting caller when its call ends, answered or not.
pub(crate) struct Forget<'a> {
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
pub(crate) async fn hand_out_answers(mut answers: tonic::Streaming<CallResult>, waiting: Waiting) {
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

/// One call to one node: the command's result, and the write
/// acknowledgement for put, delete and multi-put.
pub(crate) async fn attempt(
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
    use crate::error::{Retry, classify, error_detail};
    use crate::{Client, ClientOptions};
    use proto::kv::error_detail::Kind;

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
                        details: proto::errors::pack(
                            tonic::Code::Unavailable,
                            &detail.message,
                            &detail,
                        ),
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

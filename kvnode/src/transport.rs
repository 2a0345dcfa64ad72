//! The peer transport: one long-lived gRPC stream to each peer, reconnecting
//! with backoff, and the server side that receives peers' streams.
//!
//! Every batch on a stream names its cluster and sender; a node refuses
//! streams from another cluster or from a node that is not a member, so two
//! clusters that share addresses by mistake cannot corrupt each other.

use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use consensus::lock;
use consensus::{Message, NodeId};
use proto::raft::raft_peer_client::RaftPeerClient;
use proto::raft::raft_peer_server::RaftPeer;
use proto::raft::{PeerBatch, PeerStreamClosed};
use tokio::sync::mpsc;
use tokio_stream::Stream;
use tonic::{Request, Response, Status, Streaming};

use crate::netdelay::{DelayedSender, NetDelay};
use crate::runtime::Event;
use proto::convert;

/// Capacity of each peer's outgoing queue, in messages.
pub const PEER_QUEUE_MESSAGES_MAX: usize = 4096;
/// The gRPC limit on one peer batch, encoded: one message within
/// `consensus::limits::PEER_MESSAGE_BYTES_MAX` (by `Message::size_bytes`,
/// which bounds its encoding) and the batch's own fields.
pub const PEER_BATCH_BYTES_MAX: usize = consensus::limits::PEER_MESSAGE_BYTES_MAX + 4096;
const BACKOFF_MIN: Duration = Duration::from_millis(20);
const BACKOFF_MAX: Duration = Duration::from_millis(1000);
const CONNECT_TIMEOUT: Duration = Duration::from_millis(1000);

/// Sends this node's messages to one peer, for as long as `outgoing` is
/// open. Messages queued while the peer is unreachable are dropped, as a
/// network would drop them; the protocol retries what matters.
pub async fn run_peer_sender(
    sender: SenderIdentity,
    peer_id: NodeId,
    peer_addr: String,
    outgoing: mpsc::Receiver<Message>,
) {
    let SenderIdentity {
        node_id,
        cluster_id,
        durability,
        own,
        faults,
    } = sender;
    let mut backoff = BACKOFF_MIN;
    let endpoint = match tonic::transport::Endpoint::from_shared(format!("http://{peer_addr}")) {
        Ok(endpoint) => endpoint.connect_timeout(CONNECT_TIMEOUT).tcp_nodelay(true),
        Err(error) => {
            tracing::error!(node = node_id, peer = peer_id, %peer_addr, %error, "bad peer address; not connecting");
            return;
        }
    };
    let queue = Arc::new(Mutex::new(outgoing));
    loop {
        let channel = match endpoint.connect().await {
            Ok(channel) => channel,
            Err(error) => {
                tracing::debug!(node = node_id, peer = peer_id, %error, "cannot reach peer; retrying");
                // Drain what queued up meanwhile: it would be stale.
                let closed = {
                    let mut queue = lock(&queue);
                    while queue.try_recv().is_ok() {}
                    queue.is_closed()
                };
                if closed {
                    return;
                }
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(BACKOFF_MAX);
                continue;
            }
        };
        tracing::info!(node = node_id, peer = peer_id, %peer_addr, "connected to peer");
        backoff = BACKOFF_MIN;
        // The stream's body is read straight from the queue by the HTTP/2
        // layer: no task of ours between the runtime and the connection.
        let batches = OutgoingBatches {
            queue: queue.clone(),
            node_id,
            peer_id,
            cluster_id: cluster_id.clone(),
            durability,
            own: own.clone(),
            faults: faults.clone(),
        };
        let mut client = RaftPeerClient::new(channel)
            .max_encoding_message_size(PEER_BATCH_BYTES_MAX)
            .max_decoding_message_size(PEER_BATCH_BYTES_MAX);
        match client.stream(batches).await {
            Err(status) if status.code() == tonic::Code::PermissionDenied => {
                tracing::error!(
                    node = node_id,
                    peer = peer_id,
                    message = status.message(),
                    "peer refused this node"
                );
            }
            Err(status) => {
                tracing::debug!(node = node_id, peer = peer_id, %status, "peer stream ended")
            }
            Ok(_) => tracing::debug!(node = node_id, peer = peer_id, "peer stream closed"),
        }
        if lock(&queue).is_closed() {
            return;
        }
        tokio::time::sleep(backoff).await;
        backoff = (backoff * 2).min(BACKOFF_MAX);
    }
}

/// The body of one peer stream: the messages of the outgoing queue, one
/// per batch, as the runtime hands them over. It ends when the queue is
/// closed. The queue outlives each stream, so a reconnected stream goes on
/// where the last one stopped.
struct OutgoingBatches {
    queue: Arc<Mutex<mpsc::Receiver<Message>>>,
    node_id: NodeId,
    peer_id: NodeId,
    cluster_id: String,
    durability: consensus::config::Durability,
    own: crate::config::Member,
    faults: crate::faults::PeerFaults,
}

/// Who this node is to its peers: the header of every batch it sends.
#[derive(Debug, Clone)]
pub struct SenderIdentity {
    /// This node.
    pub node_id: NodeId,
    /// Its cluster.
    pub cluster_id: String,
    /// Its durability setting (the cluster's).
    pub durability: consensus::config::Durability,
    /// Where it listens (peers that missed the entry adding it learn it).
    pub own: crate::config::Member,
    /// Injected faults.
    pub faults: crate::faults::PeerFaults,
}

impl Stream for OutgoingBatches {
    type Item = PeerBatch;

    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<PeerBatch>> {
        let mut queue = lock(&self.queue);
        loop {
            let Some(message) = std::task::ready!(queue.poll_recv(cx)) else {
                return Poll::Ready(None);
            };
            if self.faults.drops_to(self.peer_id) {
                continue;
            }
            // The protocols keep their messages within the limit; one over
            // it would break the stream at the peer, so it is dropped here,
            // as the simulator drops it.
            let bytes = message.size_bytes();
            if bytes > consensus::limits::PEER_MESSAGE_BYTES_MAX {
                tracing::error!(
                    node = self.node_id,
                    peer = self.peer_id,
                    bytes,
                    limit = consensus::limits::PEER_MESSAGE_BYTES_MAX,
                    "dropped a peer message over the size limit"
                );
                continue;
            }
            return Poll::Ready(Some(PeerBatch {
                cluster_id: self.cluster_id.clone(),
                from: self.node_id,
                messages: vec![convert::peer_message(self.node_id, self.peer_id, &message)],
                sender_peer_addr: self.own.peer_addr.clone(),
                sender_client_addr: self.own.client_addr.clone(),
                durability: self.durability.name().to_string(),
            }));
        }
    }
}

/// The server side: receives peers' streams and hands their messages to the
/// runtime.
#[derive(Debug, Clone)]
pub struct PeerService {
    /// This node.
    pub node_id: NodeId,
    /// This node's cluster.
    pub cluster_id: String,
    /// This node's durability setting: peers must have the same.
    pub durability: consensus::config::Durability,
    /// Where nodes listen, and the configuration in force: streams are
    /// taken from its members and known nodes only.
    pub book: Arc<crate::members::AddressBook>,
    /// The runtime's queue.
    pub events: mpsc::Sender<Event>,
    /// Injected faults.
    pub faults: crate::faults::PeerFaults,
    /// The injected one-way delay of every peer message, applied here, as
    /// messages arrive (the runtime never sees it).
    pub net_delay: NetDelay,
}

#[tonic::async_trait]
impl RaftPeer for PeerService {
    async fn stream(
        &self,
        request: Request<Streaming<PeerBatch>>,
    ) -> Result<Response<PeerStreamClosed>, Status> {
        let mut stream = request.into_inner();
        // One link per stream: its messages keep their order under jitter.
        let delayed = DelayedSender::new(self.events.clone(), self.net_delay);
        while let Some(batch) = stream.message().await? {
            if batch.cluster_id != self.cluster_id {
                tracing::warn!(node = self.node_id, from = batch.from, their_cluster = %batch.cluster_id, "refused a peer of another cluster");
                return Err(Status::permission_denied(format!(
                    "node {} belongs to cluster {:?}, not {:?}",
                    self.node_id, self.cluster_id, batch.cluster_id
                )));
            }
            let theirs = if batch.durability.is_empty() {
                "sync"
            } else {
                batch.durability.as_str()
            };
            if theirs != self.durability.name() {
                tracing::warn!(
                    node = self.node_id,
                    from = batch.from,
                    their_durability = theirs,
                    "refused a peer with another --durability"
                );
                return Err(Status::failed_precondition(format!(
                    "node {} runs with --durability {}, node {} with {theirs}: one setting for the whole cluster",
                    self.node_id, self.durability, batch.from
                )));
            }
            if !self.book.accepts(batch.from) || batch.from == self.node_id {
                tracing::warn!(
                    node = self.node_id,
                    from = batch.from,
                    "refused a node that is neither in the configuration in force nor known here"
                );
                return Err(Status::permission_denied(format!(
                    "node {} is not a member known to node {}",
                    batch.from, self.node_id
                )));
            }
            if self.book.membership().contains(batch.from)
                && let Ok(member) = crate::members::parse_address(&format!(
                    "{}/{}",
                    batch.sender_peer_addr, batch.sender_client_addr
                ))
            {
                self.book.learn(batch.from, member);
            }
            if self.faults.drops_from(batch.from) {
                continue;
            }
            for message in batch.messages {
                if message.to != self.node_id {
                    continue;
                }
                let message = match Message::try_from(message) {
                    Ok(message) => message,
                    Err(error) => {
                        tracing::warn!(node = self.node_id, from = batch.from, %error, "dropped a malformed peer message");
                        continue;
                    }
                };
                let event = Event::Peer {
                    from: batch.from,
                    message,
                };
                if !self.net_delay.is_zero() {
                    // Due later; a full queue then drops it, as a lossy link.
                    let _ = delayed.try_send(event);
                } else if self.events.send(event).await.is_err() {
                    return Err(Status::unavailable("node is shutting down"));
                }
            }
        }
        Ok(Response::new(PeerStreamClosed {}))
    }
}

//! The peer transport: one long-lived gRPC stream to each peer, reconnecting
//! with backoff, and the server side that receives peers' streams.
//!
//! Every batch on a stream names its cluster and sender; a node refuses
//! streams from another cluster or from a node that is not a member, so two
//! clusters that share addresses by mistake cannot corrupt each other.

use std::collections::HashSet;
use std::time::Duration;

use consensus::{Message, NodeId};
use proto::raft::raft_peer_client::RaftPeerClient;
use proto::raft::raft_peer_server::RaftPeer;
use proto::raft::{PeerBatch, PeerStreamClosed};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status, Streaming};

use crate::convert;
use crate::runtime::Event;

/// Capacity of each peer's outgoing queue, in messages.
pub const PEER_QUEUE_MESSAGES_MAX: usize = 4096;
const BACKOFF_MIN: Duration = Duration::from_millis(20);
const BACKOFF_MAX: Duration = Duration::from_millis(1000);
const CONNECT_TIMEOUT: Duration = Duration::from_millis(1000);

/// Sends this node's messages to one peer, for as long as `outgoing` is
/// open. Messages queued while the peer is unreachable are dropped, as a
/// network would drop them; the protocol retries what matters.
pub async fn run_peer_sender(
    node_id: NodeId,
    peer_id: NodeId,
    peer_addr: String,
    cluster_id: String,
    mut outgoing: mpsc::Receiver<Message>,
    faults: crate::faults::PeerFaults,
) {
    let mut backoff = BACKOFF_MIN;
    let endpoint = match tonic::transport::Endpoint::from_shared(format!("http://{peer_addr}")) {
        Ok(endpoint) => endpoint.connect_timeout(CONNECT_TIMEOUT).tcp_nodelay(true),
        Err(error) => {
            tracing::error!(node = node_id, peer = peer_id, %peer_addr, %error, "bad peer address; not connecting");
            return;
        }
    };
    loop {
        let channel = match endpoint.connect().await {
            Ok(channel) => channel,
            Err(error) => {
                tracing::debug!(node = node_id, peer = peer_id, %error, "cannot reach peer; retrying");
                // Drain what queued up meanwhile: it would be stale.
                while outgoing.try_recv().is_ok() {}
                if outgoing.is_closed() {
                    return;
                }
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(BACKOFF_MAX);
                continue;
            }
        };
        tracing::info!(node = node_id, peer = peer_id, %peer_addr, "connected to peer");
        backoff = BACKOFF_MIN;
        let (stream_tx, stream_rx) = mpsc::channel::<PeerBatch>(PEER_QUEUE_MESSAGES_MAX);
        let mut client = RaftPeerClient::new(channel);
        let mut call =
            tokio::spawn(async move { client.stream(ReceiverStream::new(stream_rx)).await });
        loop {
            tokio::select! {
                message = outgoing.recv() => {
                    let Some(message) = message else {
                        call.abort();
                        return;
                    };
                    if faults.drops_to(peer_id) {
                        continue;
                    }
                    let batch = PeerBatch {
                        cluster_id: cluster_id.clone(),
                        from: node_id,
                        messages: vec![convert::message_to_proto(node_id, peer_id, &message)],
                    };
                    if stream_tx.send(batch).await.is_err() {
                        break;
                    }
                }
                ended = &mut call => {
                    match ended {
                        Ok(Err(status)) if status.code() == tonic::Code::PermissionDenied => {
                            tracing::error!(node = node_id, peer = peer_id, message = status.message(), "peer refused this node");
                        }
                        Ok(Err(status)) => tracing::debug!(node = node_id, peer = peer_id, %status, "peer stream ended"),
                        _ => tracing::debug!(node = node_id, peer = peer_id, "peer stream closed"),
                    }
                    break;
                }
            }
        }
        tokio::time::sleep(backoff).await;
        backoff = (backoff * 2).min(BACKOFF_MAX);
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
    /// The cluster's members.
    pub members: HashSet<NodeId>,
    /// The runtime's queue.
    pub events: mpsc::Sender<Event>,
    /// Injected faults.
    pub faults: crate::faults::PeerFaults,
}

#[tonic::async_trait]
impl RaftPeer for PeerService {
    async fn stream(
        &self,
        request: Request<Streaming<PeerBatch>>,
    ) -> Result<Response<PeerStreamClosed>, Status> {
        let mut stream = request.into_inner();
        while let Some(batch) = stream.message().await? {
            if batch.cluster_id != self.cluster_id {
                tracing::warn!(node = self.node_id, from = batch.from, their_cluster = %batch.cluster_id, "refused a peer of another cluster");
                return Err(Status::permission_denied(format!(
                    "node {} belongs to cluster {:?}, not {:?}",
                    self.node_id, self.cluster_id, batch.cluster_id
                )));
            }
            if !self.members.contains(&batch.from) || batch.from == self.node_id {
                tracing::warn!(
                    node = self.node_id,
                    from = batch.from,
                    "refused a node that is not a peer"
                );
                return Err(Status::permission_denied(format!(
                    "node {} is not a peer of node {}",
                    batch.from, self.node_id
                )));
            }
            if self.faults.drops_from(batch.from) {
                continue;
            }
            for message in batch.messages {
                if message.to != self.node_id {
                    continue;
                }
                let message = match convert::message_from_proto(message) {
                    Ok(message) => message,
                    Err(error) => {
                        tracing::warn!(node = self.node_id, from = batch.from, %error, "dropped a malformed peer message");
                        continue;
                    }
                };
                if self
                    .events
                    .send(Event::Peer {
                        from: batch.from,
                        message,
                    })
                    .await
                    .is_err()
                {
                    return Err(Status::unavailable("node is shutting down"));
                }
            }
        }
        Ok(Response::new(PeerStreamClosed {}))
    }
}

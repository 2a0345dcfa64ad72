//! Fault injection for the process-level fault tests: peer traffic dropped
//! on command (partitions, one-way included), and the `Admin` service that
//! sets it. Enabled only by `--fault-injection`, and then reachable only
//! from loopback.

use std::collections::HashSet;
use std::sync::{Arc, RwLock};

use consensus::NodeId;
use proto::kv::admin_server::Admin;
use proto::kv::{PanicRequest, PanicResponse, SetFaultsRequest, SetFaultsResponse};
use tonic::{Request, Response, Status};

/// Which peers' traffic is dropped, shared by the transport and the Admin
/// service. A std lock: held for a set lookup only.
#[derive(Debug, Default, Clone)]
pub struct PeerFaults {
    inner: Arc<RwLock<Dropped>>,
}

#[derive(Debug, Default)]
struct Dropped {
    outgoing_to: HashSet<NodeId>,
    incoming_from: HashSet<NodeId>,
}

impl PeerFaults {
    /// True when messages to `peer` are dropped.
    pub fn drops_to(&self, peer: NodeId) -> bool {
        self.inner
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .outgoing_to
            .contains(&peer)
    }

    /// True when messages from `peer` are dropped.
    pub fn drops_from(&self, peer: NodeId) -> bool {
        self.inner
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .incoming_from
            .contains(&peer)
    }

    fn set(&self, outgoing_to: HashSet<NodeId>, incoming_from: HashSet<NodeId>) {
        let mut dropped = self.inner.write().unwrap_or_else(|e| e.into_inner());
        dropped.outgoing_to = outgoing_to;
        dropped.incoming_from = incoming_from;
    }
}

/// The Admin service (fault injection).
#[derive(Debug, Clone)]
pub struct AdminService {
    /// This node.
    pub node_id: NodeId,
    /// The faults it sets.
    pub faults: PeerFaults,
}

#[tonic::async_trait]
impl Admin for AdminService {
    async fn set_faults(
        &self,
        request: Request<SetFaultsRequest>,
    ) -> Result<Response<SetFaultsResponse>, Status> {
        if !request.remote_addr().is_some_and(|a| a.ip().is_loopback()) {
            return Err(Status::permission_denied(
                "fault injection is reachable from loopback only",
            ));
        }
        let r = request.into_inner();
        tracing::warn!(
            node = self.node_id,
            drop_outgoing_to = ?r.drop_outgoing_to,
            drop_incoming_from = ?r.drop_incoming_from,
            "fault injection: peer traffic dropped as asked"
        );
        self.faults.set(
            r.drop_outgoing_to.into_iter().collect(),
            r.drop_incoming_from.into_iter().collect(),
        );
        Ok(Response::new(SetFaultsResponse {}))
    }

    async fn panic(
        &self,
        request: Request<PanicRequest>,
    ) -> Result<Response<PanicResponse>, Status> {
        if !request.remote_addr().is_some_and(|a| a.ip().is_loopback()) {
            return Err(Status::permission_denied(
                "fault injection is reachable from loopback only",
            ));
        }
        tracing::warn!(
            node = self.node_id,
            "fault injection: a task panics as asked"
        );
        // The panic of a spawned task, which tokio would catch, leaving the
        // rest of the node running without it.
        let node = self.node_id;
        tokio::spawn(async move {
            tokio::time::sleep(std::time::Duration::from_millis(100)).await;
            panic!("node {node}: a task panicked (injected)");
        });
        Ok(Response::new(PanicResponse {}))
    }
}

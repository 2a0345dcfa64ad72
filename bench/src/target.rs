//! What the load generator talks to: this project's store (through its
//! client library) or a live etcd cluster (through etcd's v3 gRPC API).

use std::time::Duration;

use consensus::{Command, CommandResult};
use kvclient::{Client, ClientOptions, SharedConnections};
use proto::etcd::kv_client::KvClient as EtcdKvClient;
use proto::etcd::{DeleteRangeRequest, PutRequest, RangeRequest};
use tonic::transport::Channel;

/// Which system a load runs against.
#[derive(Clone, Debug)]
pub enum TargetSpec {
    /// This project's store, at these client endpoints.
    Store(Vec<String>),
    /// An etcd cluster, at these client endpoints (HOST:PORT).
    Etcd(Vec<String>),
}

/// One client connection of a load.
#[derive(Debug)]
pub enum Target {
    /// This project's client.
    Store(Client),
    /// An etcd client bound to one member (etcd forwards to its leader).
    Etcd {
        /// The member's connection.
        client: EtcdKvClient<Channel>,
        /// Per-request timeout.
        timeout: Duration,
    },
}

/// True when the etcd target can run `command`.
pub fn etcd_supports(command: &Command) -> bool {
    matches!(
        command,
        Command::Put { .. } | Command::Get { .. } | Command::Delete { .. }
    )
}

/// How the clients of one load share connections: `sets` sets of
/// connections (one per endpoint each), client `i` using set `i % sets`; with
/// no sets every client has connections of its own.
#[derive(Debug, Default)]
pub struct ConnectionSets {
    store: Vec<SharedConnections>,
    etcd: Vec<SharedConnections<Channel>>,
}

impl ConnectionSets {
    /// `sets` sets of shared connections; 0 for a connection per client.
    pub fn new(sets: usize) -> Self {
        ConnectionSets {
            store: (0..sets).map(|_| SharedConnections::new()).collect(),
            etcd: (0..sets).map(|_| SharedConnections::new()).collect(),
        }
    }

    fn set_of(&self, client: usize) -> Option<usize> {
        (!self.store.is_empty()).then(|| client % self.store.len())
    }
}

impl Target {
    /// Client number `i` of a load against `spec`.
    pub async fn connect(
        spec: &TargetSpec,
        i: usize,
        op_timeout: Duration,
        sets: &ConnectionSets,
    ) -> anyhow::Result<Target> {
        let set = sets.set_of(i);
        match spec {
            TargetSpec::Store(endpoints) => {
                let options = ClientOptions {
                    timeout: op_timeout,
                    attempt_timeout: op_timeout.min(Duration::from_secs(1)),
                    shared_connections: set.map(|set| sets.store[set].clone()),
                    ..ClientOptions::default()
                };
                Ok(Target::Store(Client::new(endpoints.clone(), options)?))
            }
            TargetSpec::Etcd(endpoints) => {
                anyhow::ensure!(!endpoints.is_empty(), "no etcd endpoints");
                let endpoint = &endpoints[i % endpoints.len()];
                let open = async {
                    tonic::transport::Endpoint::from_shared(format!("http://{endpoint}"))?
                        .tcp_nodelay(true)
                        .connect()
                        .await
                        .map_err(anyhow::Error::from)
                };
                let channel = match set {
                    Some(set) => sets.etcd[set].get_or_open(endpoint, open).await?,
                    None => open.await?,
                };
                Ok(Target::Etcd {
                    client: EtcdKvClient::new(channel),
                    timeout: op_timeout,
                })
            }
        }
    }

    /// Runs one command; an error means it failed or timed out.
    pub async fn execute(&mut self, command: Command) -> Result<CommandResult, String> {
        match self {
            Target::Store(client) => client.execute(command).await.map_err(|e| e.to_string()),
            Target::Etcd { client, timeout } => {
                let call = async {
                    match command {
                        Command::Put { key, value } => {
                            client
                                .put(PutRequest {
                                    key,
                                    value,
                                    lease: 0,
                                })
                                .await?;
                            Ok(CommandResult::Written)
                        }
                        Command::Delete { key } => {
                            client
                                .delete_range(DeleteRangeRequest {
                                    key,
                                    range_end: vec![],
                                })
                                .await?;
                            Ok(CommandResult::Written)
                        }
                        Command::Get { key } => {
                            let request = RangeRequest {
                                key,
                                range_end: vec![],
                                limit: 0,
                                revision: 0,
                                serializable: false,
                            };
                            let response = client.range(request).await?.into_inner();
                            Ok(CommandResult::Value(
                                response.kvs.into_iter().next().map(|kv| kv.value),
                            ))
                        }
                        other => Err(tonic::Status::unimplemented(format!(
                            "the etcd target does not run {other:?}"
                        ))),
                    }
                };
                match tokio::time::timeout(*timeout, call).await {
                    Ok(Ok(result)) => Ok(result),
                    Ok(Err(status)) => Err(status.message().to_string()),
                    Err(_) => Err("timed out".into()),
                }
            }
        }
    }
}

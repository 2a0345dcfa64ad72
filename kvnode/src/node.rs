//! Assembles and runs one node: storage, protocol, runtime thread, peer
//! transport, gRPC servers, and graceful shutdown.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::time::Duration;

use anyhow::{Context, bail};
use consensus::config::Protocol;
use consensus::io::Recovered;
use proto::kv::admin_server::AdminServer;
use proto::kv::kv_server::KvServer;
use proto::raft::raft_peer_server::RaftPeerServer;
use tokio::sync::mpsc;

use crate::config::NodeConfig;
use crate::runtime::{BoxedProtocol, Event, Runtime};
use crate::service::KvService;
use crate::storage::{Identity, Storage};
use crate::transport::{PeerService, SenderIdentity};

/// Capacity of the runtime's event queue.
pub const EVENT_QUEUE_MAX: usize = 8192;

/// Builds the protocol named in `config` from what storage recovered,
/// refusing settings the protocol does not accept with a clear message.
pub fn build_protocol(
    config: &NodeConfig,
    recovered: Option<Recovered>,
) -> anyhow::Result<BoxedProtocol> {
    // A node that joins starts knowing no configuration: the leader's
    // entries (or snapshot) tell it.
    let members: Vec<u64> = if config.join.is_empty() {
        config.members.keys().copied().collect()
    } else {
        Vec::new()
    };
    match config.protocol {
        Protocol::Vanilla => {
            let mut settings = raft_vanilla::Config::new(config.id, members, rand::random());
            settings.election_timeout_ticks = config
                .election_timeout_ticks
                .unwrap_or(settings.election_timeout_ticks);
            settings.heartbeat_ticks = config.heartbeat_ticks.unwrap_or(settings.heartbeat_ticks);
            settings
                .validate()
                .map_err(|problem| anyhow::anyhow!("invalid settings: {problem}"))?;
            Ok(Box::new(raft_vanilla::VanillaRaft::new(
                settings,
                recovered.unwrap_or_default(),
            )))
        }
        Protocol::Optimized => Ok(Box::new(raft_optimized::OptimizedRaft::new(
            optimized_settings(config, members)?,
            recovered.unwrap_or_default(),
        ))),
        Protocol::Nilext => {
            let mut settings = raft_nilext::Config::new(config.id, members.clone(), 0);
            settings.raft = optimized_settings(config, members)?;
            settings
                .validate()
                .map_err(|problem| anyhow::anyhow!("invalid settings: {problem}"))?;
            Ok(Box::new(raft_nilext::NilextRaft::new(
                settings,
                recovered.unwrap_or_default(),
            )))
        }
    }
}

/// raft-optimized's settings (also the base of Nil-ext's) from the node's.
fn optimized_settings(
    config: &NodeConfig,
    members: Vec<u64>,
) -> anyhow::Result<raft_optimized::Config> {
    let o = &config.optimized;
    let mut settings = raft_optimized::Config::new(config.id, members, rand::random());
    settings.election_timeout_ticks = config
        .election_timeout_ticks
        .unwrap_or(settings.election_timeout_ticks);
    settings.heartbeat_ticks = config.heartbeat_ticks.unwrap_or(settings.heartbeat_ticks);
    settings.read_mode = o.read_mode.unwrap_or(settings.read_mode);
    settings.batch_entries_max = o.batch_entries_max.unwrap_or(settings.batch_entries_max);
    settings.batch_bytes_max = o.batch_bytes_max.unwrap_or(settings.batch_bytes_max);
    settings.inflight_appends_max = o
        .inflight_appends_max
        .unwrap_or(settings.inflight_appends_max);
    settings.inflight_bytes_max = o.inflight_bytes_max.unwrap_or(settings.inflight_bytes_max);
    settings.lease_drift_ticks = o.lease_drift_ticks.unwrap_or(settings.lease_drift_ticks);
    settings.pre_vote = o.pre_vote.unwrap_or(settings.pre_vote);
    settings.check_quorum = o.check_quorum.unwrap_or(settings.check_quorum);
    settings
        .validate()
        .map_err(|problem| anyhow::anyhow!("invalid settings: {problem}"))?;
    Ok(settings)
}

fn parse_listen(addr: &str, what: &str) -> anyhow::Result<SocketAddr> {
    addr.parse()
        .with_context(|| format!("{what} {addr:?} is not IP:PORT"))
}

/// `--join`: asks the members named for the cluster's id, protocol and
/// members (trying each in turn for up to 30 s), and fills them in.
async fn discover(config: &mut NodeConfig) -> anyhow::Result<()> {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    let mut last_error = String::new();
    loop {
        for addr in &config.join {
            let status = async {
                let endpoint = tonic::transport::Endpoint::from_shared(format!("http://{addr}"))?
                    .connect_timeout(Duration::from_secs(1))
                    .timeout(Duration::from_secs(2));
                let mut client = proto::kv::kv_client::KvClient::new(endpoint.connect().await?);
                anyhow::Ok(
                    client
                        .status(proto::kv::StatusRequest {})
                        .await?
                        .into_inner(),
                )
            }
            .await;
            let status = match status {
                Ok(status) => status,
                Err(error) => {
                    last_error = format!("{addr}: {error:#}");
                    continue;
                }
            };
            if status.protocol != config.protocol.name() {
                bail!(
                    "--join {addr}: that cluster runs {}, not {}",
                    status.protocol,
                    config.protocol
                );
            }
            if !config.cluster_id.is_empty() && config.cluster_id != status.cluster_id {
                bail!(
                    "--join {addr}: that cluster's id is {:?}, not --cluster-id {:?}",
                    status.cluster_id,
                    config.cluster_id
                );
            }
            if status.members.iter().any(|m| m.id == config.id) {
                tracing::info!(node = config.id, "already a member of the cluster joined");
            }
            config.cluster_id = status.cluster_id;
            config.members = status
                .members
                .into_iter()
                .filter(|m| m.id != config.id && !m.peer_addr.is_empty())
                .map(|m| {
                    let member = crate::config::Member {
                        peer_addr: m.peer_addr,
                        client_addr: m.client_addr,
                    };
                    (m.id, member)
                })
                .collect();
            tracing::info!(
                node = config.id,
                cluster = %config.cluster_id,
                members = ?config.members.keys().collect::<Vec<_>>(),
                "joining; waiting to be added (kvctl member add)"
            );
            return Ok(());
        }
        if tokio::time::Instant::now() >= deadline {
            bail!("--join: no member answered within 30 s (last: {last_error})");
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

/// Runs a node until SIGTERM or Ctrl-C, then shuts down gracefully.
pub async fn run(mut config: NodeConfig) -> anyhow::Result<()> {
    // Refuse invalid protocol settings before touching the data directory.
    build_protocol(&config, None)?;
    if !config.join.is_empty() {
        discover(&mut config).await?;
    }
    let client_addr = parse_listen(&config.client_addr, "client address")?;
    let peer_addr = parse_listen(&config.peer_addr, "peer address")?;
    // A directory with files but no database is refused by storage below.
    let empty = std::fs::read_dir(&config.data_dir).map_or(true, |mut d| d.next().is_none());
    match (config.initial_cluster_state, empty) {
        // A node that joins starts empty: it was never a voter.
        _ if !config.join.is_empty() => {}
        (crate::config::InitialClusterState::Existing, true) => bail!(
            "data directory {} holds no data, and this node was started as a member of a \
             cluster that already ran (--initial-cluster-state existing, the default). A member \
             that lost its data must not rejoin as a voter: it may have voted, or acknowledged \
             entries, that it no longer remembers, and could let a second leader be elected in \
             a term or a committed write be lost. To create a new cluster, start every member \
             on an empty directory with --initial-cluster-state new. To bring this member back, \
             restore its data directory, or remove it (kvctl member remove) and start it again \
             on an empty directory with --join, then add it (kvctl member add).",
            config.data_dir.display()
        ),
        (crate::config::InitialClusterState::New, false) => tracing::info!(
            node = config.id,
            dir = %config.data_dir.display(),
            "--initial-cluster-state new ignored: the data directory already holds this member's data"
        ),
        _ => {}
    }
    std::fs::create_dir_all(&config.data_dir)
        .with_context(|| format!("cannot create data directory {}", config.data_dir.display()))?;
    let identity = Identity {
        cluster_id: config.cluster_id.clone(),
        protocol: config.protocol.name().to_string(),
        node_id: config.id,
    };
    if config.storage.durability == consensus::config::Durability::Memory {
        tracing::warn!(
            node = config.id,
            "UNSAFE: --durability memory: logs and votes are written without fsync; what this \
             node acknowledges survives a killed process, but not a crashed machine: it is \
             durable only while a majority of the machines stays up"
        );
    }
    let (storage, loaded) = Storage::open_with(&config.data_dir, &identity, config.storage)?;
    tracing::info!(
        node = config.id,
        protocol = %config.protocol,
        cluster = %config.cluster_id,
        term = loaded.recovered.hard_state.term,
        log_entries = loaded.recovered.log.len(),
        applied = loaded.recovered.applied_index,
        "storage opened"
    );
    let state_machine = loaded.state_machine;
    let mut protocol = build_protocol(&config, Some(loaded.recovered))?;
    protocol.set_session_timeout(config.session_timeout_ticks());
    let status = protocol.status();
    if status.removed {
        bail!(
            "{}",
            crate::runtime::RuntimeError::Removed {
                index: status.membership_index,
                membership: status.membership,
            }
        );
    }

    let storage = std::sync::Arc::new(storage);
    let book = std::sync::Arc::new(crate::members::AddressBook::stored(
        storage.clone(),
        config.members.clone(),
    )?);
    book.set_membership(status.membership);
    let (events_tx, events_rx) = mpsc::channel(EVENT_QUEUE_MAX);
    let faults = crate::faults::PeerFaults::default();
    let identity = SenderIdentity {
        node_id: config.id,
        cluster_id: config.cluster_id.clone(),
        durability: config.storage.durability,
        own: crate::config::Member {
            peer_addr: config.peer_addr.clone(),
            client_addr: config.client_addr.clone(),
        },
        faults: faults.clone(),
    };
    // Senders to peers start as the protocol first sends to each.
    let mut runtime = Runtime::new(
        config.id,
        protocol,
        storage,
        state_machine,
        HashMap::new(),
        config.tick,
    )
    .with_dialer(crate::runtime::Dialer {
        handle: tokio::runtime::Handle::current(),
        identity,
        book: book.clone(),
    })
    .with_snapshots(config.snapshots);
    if config.unsafe_local_reads {
        tracing::warn!(
            node = config.id,
            "UNSAFE: reads are answered locally with no leadership check"
        );
        runtime.answer_reads_locally_unsafely();
    }
    let runtime_thread = std::thread::Builder::new()
        .name(format!("runtime-{}", config.id))
        .spawn(move || runtime.run(events_rx))
        .context("cannot start the runtime thread")?;

    let kv = KvService {
        node_id: config.id,
        protocol: config.protocol,
        cluster_id: config.cluster_id.clone(),
        book: book.clone(),
        events: events_tx.clone(),
        request_timeout: config.request_timeout,
        net_delay: config.net_delay,
    };
    let resp_book = book.clone();
    let peers = PeerService {
        node_id: config.id,
        cluster_id: config.cluster_id.clone(),
        durability: config.storage.durability,
        book,
        events: events_tx.clone(),
        faults: faults.clone(),
        net_delay: config.net_delay,
    };
    let client_listener = tokio::net::TcpListener::bind(client_addr)
        .await
        .with_context(|| format!("cannot listen for clients on {client_addr}"))?;
    let peer_listener = tokio::net::TcpListener::bind(peer_addr)
        .await
        .with_context(|| format!("cannot listen for peers on {peer_addr}"))?;
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let stopped = |mut rx: tokio::sync::watch::Receiver<bool>| async move {
        let _ = rx.wait_for(|stop| *stop).await;
    };
    let admin = config.fault_injection.then(|| {
        tracing::warn!(
            node = config.id,
            "fault injection enabled: peer traffic can be dropped on command"
        );
        AdminServer::new(crate::faults::AdminService {
            node_id: config.id,
            faults: faults.clone(),
        })
    });
    // The builder's `tcp_nodelay` covers only listeners it binds itself; an
    // accepted socket without TCP_NODELAY holds a small answer back while
    // an earlier one is unacknowledged, and the peer delays its ACK by up
    // to 40 ms (Nagle meeting delayed ACK), which stalls every connection
    // carrying more than one call at a time.
    let incoming =
        |listener| tonic::transport::server::TcpIncoming::from(listener).with_nodelay(Some(true));
    // gRPC health (`grpc.health.v1`): serving while this node knows a
    // leader, for the whole server ("") and for `kv.Kv`; and server
    // reflection, so that generic gRPC tools need no .proto file.
    let (health, health_service) = tonic_health::server::health_reporter();
    tokio::spawn(report_health(health, events_tx.clone()));
    let reflection = tonic_reflection::server::Builder::configure()
        .register_encoded_file_descriptor_set(proto::KV_FILE_DESCRIPTOR_SET)
        .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
        .build_v1()
        .context("gRPC reflection")?;
    let client_server = tonic::transport::Server::builder()
        .add_service(health_service)
        .add_service(reflection)
        .add_service(
            KvServer::new(kv)
                .max_decoding_message_size(crate::service::CALL_DECODE_BYTES_MAX)
                .max_encoding_message_size(crate::service::ANSWER_ENCODE_BYTES_MAX),
        )
        .add_optional_service(admin)
        .serve_with_incoming_shutdown(incoming(client_listener), stopped(stop_rx.clone()));
    let peer_server = tonic::transport::Server::builder()
        .add_service(
            RaftPeerServer::new(peers)
                .max_decoding_message_size(crate::transport::PEER_BATCH_BYTES_MAX)
                .max_encoding_message_size(crate::transport::PEER_BATCH_BYTES_MAX),
        )
        .serve_with_incoming_shutdown(incoming(peer_listener), stopped(stop_rx));
    if let Some(addr) = &config.metrics_addr {
        let addr = parse_listen(addr, "metrics address")?;
        let listener = tokio::net::TcpListener::bind(addr)
            .await
            .with_context(|| format!("cannot listen for metrics on {addr}"))?;
        let addr = listener.local_addr().unwrap_or(addr);
        tokio::spawn(crate::metrics::serve(listener));
        tokio::spawn(crate::metrics::follow_status(events_tx.clone()));
        tracing::info!(node = config.id, %addr, "serving metrics");
    }
    if let Some(addr) = &config.resp_addr {
        let addr = parse_listen(addr, "Redis-protocol address")?;
        let listener = tokio::net::TcpListener::bind(addr)
            .await
            .with_context(|| format!("cannot listen for Redis-protocol clients on {addr}"))?;
        let addr = listener.local_addr().unwrap_or(addr);
        let endpoint = crate::resp::RespEndpoint {
            node_id: config.id,
            protocol: config.protocol,
            client_addr: config.client_addr.clone(),
            book: resp_book,
            events: events_tx.clone(),
            request_timeout: config.request_timeout,
            connections: kvclient::SharedConnections::default(),
        };
        tokio::spawn(crate::resp::serve(listener, std::sync::Arc::new(endpoint)));
        tracing::info!(node = config.id, %addr, "serving the Redis protocol");
    }
    let client_task = tokio::spawn(client_server);
    let peer_task = tokio::spawn(peer_server);
    tracing::info!(node = config.id, %client_addr, %peer_addr, "kvnode serving");
    println!(
        "kvnode {} serving clients on {client_addr}, peers on {peer_addr}",
        config.id
    );

    let mut runtime_done = tokio::task::spawn_blocking(move || runtime_thread.join());
    let early_exit = tokio::select! {
        _ = shutdown_signal() => None,
        ended = &mut runtime_done => Some(ended),
    };
    if let Some(ended) = early_exit {
        // The runtime stopped on its own (its storage or one of its threads
        // failed). Stop serving.
        let _ = stop_tx.send(true);
        return match ended {
            Ok(Ok(Err(removed @ crate::runtime::RuntimeError::Removed { .. }))) => {
                tracing::warn!(node = config.id, "{removed}");
                println!("kvnode {}: {removed}", config.id);
                Ok(())
            }
            Ok(Ok(Err(runtime_error))) => {
                Err(anyhow::Error::from(runtime_error).context("the node stopped"))
            }
            _ => bail!("the runtime thread stopped unexpectedly"),
        };
    }
    tracing::info!(node = config.id, "shutting down");
    // A leader hands leadership over first, so that the cluster does not
    // wait an election timeout for a new one (a rolling restart).
    let election_timeout = config.tick
        * config
            .election_timeout_ticks
            .unwrap_or(consensus::raft::ELECTION_TIMEOUT_TICKS) as u32;
    if config.hand_over_on_stop {
        hand_over_leadership(&events_tx, config.id, 2 * election_timeout).await;
    }
    let _ = stop_tx.send(true);
    // In-flight client calls get a moment to finish; peers' streams never
    // end by themselves, so the servers are not waited for longer.
    let (client_abort, peer_abort) = (client_task.abort_handle(), peer_task.abort_handle());
    let drained = tokio::time::timeout(Duration::from_millis(500), async {
        let _ = client_task.await;
        let _ = peer_task.await;
    })
    .await;
    if drained.is_err() {
        client_abort.abort();
        peer_abort.abort();
    }
    let _ = events_tx.send(Event::Shutdown).await;
    match runtime_done.await {
        Ok(Ok(Ok(()))) => Ok(()),
        Ok(Ok(Err(runtime_error))) => Err(runtime_error.into()),
        _ => bail!("the runtime thread panicked"),
    }
}

/// If this node leads, hands leadership to the most up-to-date follower and
/// waits (up to `within`) until another leader is known; logs the outcome.
async fn hand_over_leadership(
    events: &mpsc::Sender<Event>,
    id: consensus::NodeId,
    within: Duration,
) {
    let status = || async {
        let (reply, answer) = tokio::sync::oneshot::channel();
        events.send(Event::Status { reply }).await.ok()?;
        answer.await.ok().map(|s| s.status)
    };
    if status()
        .await
        .is_none_or(|s| s.role != consensus::Role::Leader)
    {
        return;
    }
    let (reply, taken) = tokio::sync::oneshot::channel();
    if events
        .send(Event::TransferLeadership { to: None, reply })
        .await
        .is_err()
        || taken.await.is_err()
    {
        return;
    }
    let started = std::time::Instant::now();
    while started.elapsed() < within {
        if let Some(leader) = status().await.and_then(|s| s.leader).filter(|&l| l != id) {
            tracing::info!(
                node = id,
                leader,
                ms = started.elapsed().as_millis() as u64,
                "handed leadership over before stopping"
            );
            return;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    tracing::warn!(
        node = id,
        "could not hand leadership over within {} ms; stopping as leader",
        within.as_millis()
    );
}

/// Keeps the gRPC health status up to date: serving while the node knows a
/// leader (itself or another), not serving otherwise. Ends with the runtime.
async fn report_health(health: tonic_health::server::HealthReporter, events: mpsc::Sender<Event>) {
    use tonic_health::ServingStatus;
    let mut last = None;
    loop {
        let (reply, answer) = tokio::sync::oneshot::channel();
        if events.send(Event::Status { reply }).await.is_err() {
            return;
        }
        let Ok(status) = answer.await else {
            return;
        };
        let serving = if status.status.leader.is_some() {
            ServingStatus::Serving
        } else {
            ServingStatus::NotServing
        };
        if last != Some(serving) {
            for service in ["", "kv.Kv"] {
                health.set_service_status(service, serving).await;
            }
            last = Some(serving);
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Waits for SIGTERM or Ctrl-C (SIGINT).
pub async fn shutdown_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        let mut term =
            match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
                Ok(term) => term,
                Err(_) => {
                    let _ = ctrl_c.await;
                    return;
                }
            };
        tokio::select! {
            _ = ctrl_c => {}
            _ = term.recv() => {}
        }
    }
    #[cfg(not(unix))]
    {
        let _ = ctrl_c.await;
    }
}

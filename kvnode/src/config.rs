//! `kvnode`'s settings: command-line flags, an optional TOML file holding the
//! same settings (flags win), defaults, and validation.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use anyhow::{Context, bail};
use consensus::NodeId;
use serde::Deserialize;

/// The protocols `kvnode` knows by name.
pub const PROTOCOLS: [&str; 3] = ["vanilla", "optimized", "nilext"];

/// Settings as given: every one optional, from flags or from the file.
#[derive(clap::Args, Debug, Default, Clone, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct NodeArgs {
    /// A TOML file with any of these settings (keys as the flags, without
    /// dashes in front: `id = 1`, `peers = ["1=..."]`); flags override it.
    #[arg(long, value_name = "FILE")]
    #[serde(skip)]
    pub config: Option<PathBuf>,
    /// The consensus protocol: vanilla, optimized or nilext.
    #[arg(long)]
    pub protocol: Option<String>,
    /// This node's id (1, 2, ...), one of the members in --peers.
    #[arg(long)]
    pub id: Option<NodeId>,
    /// Every member of the cluster, this node included, as
    /// ID=PEER_ADDR/CLIENT_ADDR, comma-separated
    /// (e.g. 1=127.0.0.1:7001/127.0.0.1:6001,2=...).
    #[arg(long, value_delimiter = ',')]
    pub peers: Option<Vec<String>>,
    /// Where this node keeps its RocksDB database.
    #[arg(long, value_name = "DIR")]
    pub data_dir: Option<PathBuf>,
    /// `new` to create a new cluster (every member starts on an empty data
    /// directory), `existing` to run a member of a cluster that already ran
    /// (its data directory must hold its data). An empty data directory is
    /// refused under `existing`: a member that lost its data must not rejoin
    /// as a voter [default: existing].
    #[arg(long, value_name = "new|existing")]
    pub initial_cluster_state: Option<String>,
    /// Address the client API listens on (default: this node's CLIENT_ADDR in --peers).
    #[arg(long)]
    pub client_addr: Option<String>,
    /// Address the peer service listens on (default: this node's PEER_ADDR in --peers).
    #[arg(long)]
    pub peer_addr: Option<String>,
    /// The cluster's id (default: derived from --peers, the same on every member).
    #[arg(long)]
    pub cluster_id: Option<String>,
    /// Length of one logical tick in milliseconds [default: 20].
    #[arg(long)]
    pub tick_ms: Option<u64>,
    /// Base election timeout in ticks; each timeout is drawn from [T, 2T) [default: 15].
    #[arg(long)]
    pub election_timeout_ticks: Option<u64>,
    /// Ticks between heartbeats [default: 3].
    #[arg(long)]
    pub heartbeat_ticks: Option<u64>,
    /// How long a client request may wait for its answer, in milliseconds [default: 5000].
    #[arg(long)]
    pub request_timeout_ms: Option<u64>,
    /// (optimized, nilext) How the leader serves reads: read-index or lease [default: read-index].
    #[arg(long)]
    pub read_mode: Option<String>,
    /// (optimized, nilext) Most commands per durable write and entries per AppendEntries [default: 1024].
    #[arg(long)]
    pub batch_entries_max: Option<usize>,
    /// (optimized, nilext) Most bytes per durable write and AppendEntries [default: 1048576].
    #[arg(long)]
    pub batch_bytes_max: Option<usize>,
    /// (optimized, nilext) Most AppendEntries in flight to one follower [default: 32].
    #[arg(long)]
    pub inflight_appends_max: Option<usize>,
    /// (optimized, nilext) Most bytes in flight to one follower [default: 16777216].
    #[arg(long)]
    pub inflight_bytes_max: Option<usize>,
    /// (optimized, nilext) Ticks taken off a lease for clock drift [default: 2].
    #[arg(long)]
    pub lease_drift_ticks: Option<u64>,
    /// (optimized, nilext) Pre-vote before raising the term: true or false [default: true].
    #[arg(long)]
    pub pre_vote: Option<bool>,
    /// (optimized, nilext) Check-quorum and leader stickiness: true or false [default: true].
    #[arg(long)]
    pub check_quorum: Option<bool>,
    /// One-way delay added to every peer message and every client request
    /// and response, in milliseconds (user space; for benchmarks) [default: 0].
    #[arg(long)]
    pub net_delay_ms: Option<u64>,
    /// Uniform jitter on that delay, in milliseconds [default: 0].
    #[arg(long)]
    pub net_jitter_ms: Option<u64>,
    /// Serve the Admin service, which drops peer traffic on command (for
    /// fault tests; loopback callers only) [default: false].
    #[arg(long, num_args = 0..=1, default_missing_value = "true")]
    pub fault_injection: Option<bool>,
    /// UNSAFE, for proving the fault tests can fail: answer reads from the
    /// local state machine on any node, with no leadership check [default: false].
    #[arg(long, hide = true, num_args = 0..=1, default_missing_value = "true")]
    pub unsafe_local_reads: Option<bool>,
}

impl NodeArgs {
    /// Fills what the flags left out from `other`.
    fn or(self, other: NodeArgs) -> NodeArgs {
        NodeArgs {
            config: self.config.or(other.config),
            protocol: self.protocol.or(other.protocol),
            id: self.id.or(other.id),
            peers: self.peers.or(other.peers),
            data_dir: self.data_dir.or(other.data_dir),
            initial_cluster_state: self.initial_cluster_state.or(other.initial_cluster_state),
            client_addr: self.client_addr.or(other.client_addr),
            peer_addr: self.peer_addr.or(other.peer_addr),
            cluster_id: self.cluster_id.or(other.cluster_id),
            tick_ms: self.tick_ms.or(other.tick_ms),
            election_timeout_ticks: self.election_timeout_ticks.or(other.election_timeout_ticks),
            heartbeat_ticks: self.heartbeat_ticks.or(other.heartbeat_ticks),
            request_timeout_ms: self.request_timeout_ms.or(other.request_timeout_ms),
            read_mode: self.read_mode.or(other.read_mode),
            batch_entries_max: self.batch_entries_max.or(other.batch_entries_max),
            batch_bytes_max: self.batch_bytes_max.or(other.batch_bytes_max),
            inflight_appends_max: self.inflight_appends_max.or(other.inflight_appends_max),
            inflight_bytes_max: self.inflight_bytes_max.or(other.inflight_bytes_max),
            lease_drift_ticks: self.lease_drift_ticks.or(other.lease_drift_ticks),
            pre_vote: self.pre_vote.or(other.pre_vote),
            check_quorum: self.check_quorum.or(other.check_quorum),
            net_delay_ms: self.net_delay_ms.or(other.net_delay_ms),
            net_jitter_ms: self.net_jitter_ms.or(other.net_jitter_ms),
            fault_injection: self.fault_injection.or(other.fault_injection),
            unsafe_local_reads: self.unsafe_local_reads.or(other.unsafe_local_reads),
        }
    }
}

/// One member's addresses.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Member {
    /// Where its peer service listens.
    pub peer_addr: String,
    /// Where its client API listens.
    pub client_addr: String,
}

/// Whether a start creates a new cluster or runs a member of one that ran.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum InitialClusterState {
    /// The first start of a new cluster: an empty data directory is
    /// initialized (one with data is used as it is).
    New,
    /// A member of a cluster that already ran: the data directory must hold
    /// this member's data.
    Existing,
}

impl std::str::FromStr for InitialClusterState {
    type Err = anyhow::Error;
    fn from_str(s: &str) -> anyhow::Result<Self> {
        match s {
            "new" => Ok(InitialClusterState::New),
            "existing" => Ok(InitialClusterState::Existing),
            other => bail!("--initial-cluster-state {other:?}: use new or existing"),
        }
    }
}

/// Complete, validated settings of one node.
#[derive(Debug, Clone)]
pub struct NodeConfig {
    /// The protocol's name.
    pub protocol: String,
    /// This node.
    pub id: NodeId,
    /// Every member, this node included.
    pub members: BTreeMap<NodeId, Member>,
    /// The data directory.
    pub data_dir: PathBuf,
    /// New cluster or existing one.
    pub initial_cluster_state: InitialClusterState,
    /// Client API listen address.
    pub client_addr: String,
    /// Peer service listen address.
    pub peer_addr: String,
    /// The cluster id.
    pub cluster_id: String,
    /// Tick length.
    pub tick_ms: u64,
    /// Base election timeout in ticks.
    pub election_timeout_ticks: u64,
    /// Heartbeat interval in ticks.
    pub heartbeat_ticks: u64,
    /// Client request deadline.
    pub request_timeout_ms: u64,
    /// Settings of raft-optimized left unset keep its defaults.
    pub optimized: OptimizedSettings,
    /// Injected network delay.
    pub net_delay: crate::netdelay::NetDelay,
    /// Serve the fault-injection Admin service.
    pub fault_injection: bool,
    /// Deliberately unsafe reads (fault-test harness check only).
    pub unsafe_local_reads: bool,
}

/// raft-optimized's settings as given (unset: the protocol's default).
#[derive(Debug, Clone, Default)]
pub struct OptimizedSettings {
    /// `read-index` or `lease`.
    pub read_mode: Option<String>,
    /// See `raft_optimized::Config`.
    pub batch_entries_max: Option<usize>,
    /// See `raft_optimized::Config`.
    pub batch_bytes_max: Option<usize>,
    /// See `raft_optimized::Config`.
    pub inflight_appends_max: Option<usize>,
    /// See `raft_optimized::Config`.
    pub inflight_bytes_max: Option<usize>,
    /// See `raft_optimized::Config`.
    pub lease_drift_ticks: Option<u64>,
    /// See `raft_optimized::Config`.
    pub pre_vote: Option<bool>,
    /// See `raft_optimized::Config`.
    pub check_quorum: Option<bool>,
}

/// Parses `ID=PEER_ADDR/CLIENT_ADDR` entries.
pub fn parse_members(specs: &[String]) -> anyhow::Result<BTreeMap<NodeId, Member>> {
    let mut members = BTreeMap::new();
    for spec in specs.iter().map(|s| s.trim()).filter(|s| !s.is_empty()) {
        let (id, addrs) = spec
            .split_once('=')
            .with_context(|| format!("peer {spec:?} is not ID=PEER_ADDR/CLIENT_ADDR"))?;
        let id: NodeId = id
            .trim()
            .parse()
            .with_context(|| format!("peer {spec:?}: the id is not a number"))?;
        if id == 0 {
            bail!("peer {spec:?}: node ids start at 1");
        }
        let (peer_addr, client_addr) = addrs
            .split_once('/')
            .with_context(|| format!("peer {spec:?} is not ID=PEER_ADDR/CLIENT_ADDR"))?;
        for addr in [peer_addr, client_addr] {
            if addr
                .rsplit_once(':')
                .is_none_or(|(_, port)| port.parse::<u16>().is_err())
            {
                bail!("peer {spec:?}: {addr:?} is not HOST:PORT");
            }
        }
        let member = Member {
            peer_addr: peer_addr.to_string(),
            client_addr: client_addr.to_string(),
        };
        if members.insert(id, member).is_some() {
            bail!("node {id} appears twice in --peers");
        }
    }
    Ok(members)
}

/// The canonical form of a member list, as the launcher and tests pass it.
pub fn format_members(members: &BTreeMap<NodeId, Member>) -> String {
    members
        .iter()
        .map(|(id, m)| format!("{id}={}/{}", m.peer_addr, m.client_addr))
        .collect::<Vec<_>>()
        .join(",")
}

/// A cluster id every member derives alike from the member list (FNV-1a of
/// its canonical form), for clusters started without --cluster-id.
pub fn derived_cluster_id(members: &BTreeMap<NodeId, Member>) -> String {
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for byte in format_members(members).bytes() {
        hash ^= u64::from(byte);
        hash = hash.wrapping_mul(0x0100_0000_01b3);
    }
    format!("c-{hash:016x}")
}

fn read_file(path: &Path) -> anyhow::Result<NodeArgs> {
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("cannot read config file {}", path.display()))?;
    toml::from_str(&text).with_context(|| format!("config file {} is invalid", path.display()))
}

impl NodeConfig {
    /// Validates flags (and the file they name) into complete settings.
    pub fn from_args(args: NodeArgs) -> anyhow::Result<NodeConfig> {
        let args = match &args.config {
            Some(path) => {
                let file = read_file(path)?;
                args.or(file)
            }
            None => args,
        };
        let protocol = args
            .protocol
            .context("--protocol is required (vanilla, optimized or nilext)")?;
        if !PROTOCOLS.contains(&protocol.as_str()) {
            bail!(
                "unknown protocol {protocol:?}; choose one of {}",
                PROTOCOLS.join(", ")
            );
        }
        let id = args.id.context("--id is required")?;
        let members = parse_members(&args.peers.context("--peers is required")?)?;
        let me = members
            .get(&id)
            .with_context(|| format!("--id {id} is not among the members in --peers"))?;
        let data_dir = args.data_dir.context("--data-dir is required")?;
        let tick_ms = args.tick_ms.unwrap_or(20);
        let election_timeout_ticks = args.election_timeout_ticks.unwrap_or(15);
        let heartbeat_ticks = args.heartbeat_ticks.unwrap_or(3);
        if tick_ms == 0 || heartbeat_ticks == 0 || election_timeout_ticks <= heartbeat_ticks {
            bail!(
                "need tick-ms > 0, heartbeat-ticks > 0 and election-timeout-ticks > heartbeat-ticks"
            );
        }
        Ok(NodeConfig {
            client_addr: args.client_addr.unwrap_or_else(|| me.client_addr.clone()),
            peer_addr: args.peer_addr.unwrap_or_else(|| me.peer_addr.clone()),
            cluster_id: args
                .cluster_id
                .unwrap_or_else(|| derived_cluster_id(&members)),
            protocol,
            id,
            members,
            data_dir,
            initial_cluster_state: match args.initial_cluster_state {
                Some(state) => state.parse()?,
                None => InitialClusterState::Existing,
            },
            tick_ms,
            election_timeout_ticks,
            heartbeat_ticks,
            request_timeout_ms: args.request_timeout_ms.unwrap_or(5000),
            optimized: OptimizedSettings {
                read_mode: args.read_mode,
                batch_entries_max: args.batch_entries_max,
                batch_bytes_max: args.batch_bytes_max,
                inflight_appends_max: args.inflight_appends_max,
                inflight_bytes_max: args.inflight_bytes_max,
                lease_drift_ticks: args.lease_drift_ticks,
                pre_vote: args.pre_vote,
                check_quorum: args.check_quorum,
            },
            net_delay: crate::netdelay::NetDelay {
                delay: std::time::Duration::from_millis(args.net_delay_ms.unwrap_or(0)),
                jitter: std::time::Duration::from_millis(args.net_jitter_ms.unwrap_or(0)),
            },
            fault_injection: args.fault_injection.unwrap_or(false),
            unsafe_local_reads: args.unsafe_local_reads.unwrap_or(false),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn peers() -> Vec<String> {
        vec![
            "1=127.0.0.1:7001/127.0.0.1:6001".into(),
            "2=127.0.0.1:7002/127.0.0.1:6002".into(),
        ]
    }

    #[test]
    fn flags_override_the_file_and_defaults_fill_the_rest() {
        let dir = std::env::temp_dir().join(format!("kvnode-config-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("mkdir");
        let file = dir.join("node.toml");
        std::fs::write(
            &file,
            "protocol = \"vanilla\"\nid = 2\npeers = [\"1=127.0.0.1:7001/127.0.0.1:6001\", \"2=127.0.0.1:7002/127.0.0.1:6002\"]\ndata-dir = \"/tmp/x\"\ntick-ms = 50\n",
        )
        .expect("write");
        let args = NodeArgs {
            config: Some(file),
            tick_ms: Some(10),
            ..NodeArgs::default()
        };
        let config = NodeConfig::from_args(args).expect("valid");
        assert_eq!(config.id, 2);
        assert_eq!(config.tick_ms, 10);
        assert_eq!(config.client_addr, "127.0.0.1:6002");
        assert_eq!(config.heartbeat_ticks, 3);
        assert!(config.cluster_id.starts_with("c-"));
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn bad_settings_are_explained() {
        let base = NodeArgs {
            protocol: Some("vanilla".into()),
            id: Some(1),
            peers: Some(peers()),
            data_dir: Some("/tmp/x".into()),
            ..NodeArgs::default()
        };
        assert!(NodeConfig::from_args(base.clone()).is_ok());
        let error =
            |args: NodeArgs| format!("{:#}", NodeConfig::from_args(args).expect_err("invalid"));
        assert!(
            error(NodeArgs {
                protocol: Some("paxos".into()),
                ..base.clone()
            })
            .contains("unknown protocol")
        );
        assert!(
            error(NodeArgs {
                id: Some(3),
                ..base.clone()
            })
            .contains("not among the members")
        );
        assert!(
            error(NodeArgs {
                peers: Some(vec!["1=nohost".into()]),
                ..base.clone()
            })
            .contains("ID=PEER_ADDR/CLIENT_ADDR")
        );
        assert!(
            error(NodeArgs {
                data_dir: None,
                ..base.clone()
            })
            .contains("--data-dir")
        );
        let same_members = parse_members(&peers()).expect("valid");
        let mut reversed = peers();
        reversed.reverse();
        assert_eq!(
            derived_cluster_id(&same_members),
            derived_cluster_id(&parse_members(&reversed).expect("valid"))
        );
    }
}

//! `kvnode`'s settings: command-line flags, an optional TOML file holding the
//! same settings (flags win), defaults, and validation.
//!
//! Every default is defined once, in code: the protocols' own in their
//! `Config::new` (and `consensus::raft` for the timing all Raft variants
//! share), kvnode's in [`Defaults`]; `kvnode --help` prints them from there
//! ([`help_with_defaults`]).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::time::Duration;

use anyhow::{Context, bail};
use consensus::NodeId;
use consensus::config::{Durability, Protocol, ReadMode, format_duration, parse_duration};
use consensus::snapshot::SnapshotPolicy;
use serde::{Deserialize, Deserializer};

/// kvnode's own defaults (the protocols' are theirs).
#[derive(Debug, Clone, Copy)]
pub struct Defaults;

impl Defaults {
    /// Length of one logical tick.
    pub const TICK: Duration = Duration::from_millis(20);
    /// How long a client request may wait for its answer.
    pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(5);
    /// How long a client session lasts without an update.
    pub const SESSION_TIMEOUT: Duration = Duration::from_secs(600);
    /// Vanilla Raft's snapshot interval in entries (the others take
    /// `SnapshotPolicy::default`'s 100,000). Vanilla sends a follower one
    /// entry per round trip, so a follower that installed a snapshot
    /// replays the log after it at that pace: a short interval keeps its
    /// catch-up after two minutes down under load within seconds
    /// (`scripts/catch-up vanilla`: 7.8 s with 3,000, 10.3 s with 10,000,
    /// over a minute with 100,000).
    pub const SNAPSHOT_ENTRIES_VANILLA: u64 = 3_000;
    /// The read cache's bytes.
    pub const CACHE_BYTES: u64 = 64 << 20;
}

/// A setting given as text (a flag's value, or a string in the file) and
/// parsed by `FromStr`, as the flag is.
fn parsed<'de, D, T>(deserializer: D) -> Result<Option<T>, D::Error>
where
    D: Deserializer<'de>,
    T: FromStr<Err = String>,
{
    let text = Option::<String>::deserialize(deserializer)?;
    text.map(|t| t.parse().map_err(serde::de::Error::custom))
        .transpose()
}

/// A duration in the file, as on the command line: `"250ms"`, `"1.5s"`.
fn duration<'de, D>(deserializer: D) -> Result<Option<Duration>, D::Error>
where
    D: Deserializer<'de>,
{
    let text = Option::<String>::deserialize(deserializer)?;
    text.map(|t| parse_duration(&t).map_err(serde::de::Error::custom))
        .transpose()
}

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
    #[serde(default, deserialize_with = "parsed")]
    pub protocol: Option<Protocol>,
    /// This node's id (1, 2, ...), one of the members in --peers.
    #[arg(long)]
    pub id: Option<NodeId>,
    /// Every member of the cluster, this node included, as
    /// ID=PEER_ADDR/CLIENT_ADDR, comma-separated
    /// (e.g. 1=127.0.0.1:7001/127.0.0.1:6001,2=...).
    #[arg(long, value_delimiter = ',', conflicts_with = "join")]
    pub peers: Option<Vec<String>>,
    /// Join a running cluster instead: the client addresses of some of its
    /// members (comma-separated). The node learns the cluster from them,
    /// starts knowing no configuration, and waits until the leader adds it
    /// (`kvctl member add ID PEER_ADDR/CLIENT_ADDR`). Needs --peer-addr and
    /// --client-addr.
    #[arg(long, value_delimiter = ',', value_name = "CLIENT_ADDR")]
    pub join: Option<Vec<String>>,
    /// Where this node keeps its RocksDB database.
    #[arg(long, value_name = "DIR")]
    pub data_dir: Option<PathBuf>,
    /// `new` to create a new cluster (every member starts on an empty data
    /// directory), `existing` to run a member of a cluster that already ran
    /// (its data directory must hold its data). An empty data directory is
    /// refused under `existing`: a member that lost its data must not rejoin
    /// as a voter.
    #[arg(long, value_name = "new|existing")]
    #[serde(default, deserialize_with = "parsed")]
    pub initial_cluster_state: Option<InitialClusterState>,
    /// Address the client API listens on (default: this node's CLIENT_ADDR in --peers).
    #[arg(long)]
    pub client_addr: Option<String>,
    /// Address the peer service listens on (default: this node's PEER_ADDR in --peers).
    #[arg(long)]
    pub peer_addr: Option<String>,
    /// Serve Prometheus metrics over HTTP at this address (`GET /metrics`);
    /// none by default.
    #[arg(long, value_name = "IP:PORT")]
    pub metrics_addr: Option<String>,
    /// Serve the Redis protocol (RESP2) at this address: GET, SET, DEL,
    /// MGET, MSET, INCR, INCRBY, PING, INFO and a few more, linearizable
    /// like the gRPC API (a follower forwards to the leader); none by
    /// default.
    #[arg(long, value_name = "IP:PORT")]
    pub resp_addr: Option<String>,
    /// The cluster's id (default: derived from --peers, the same on every member).
    #[arg(long)]
    pub cluster_id: Option<String>,
    /// Length of one logical tick.
    #[arg(long, value_parser = parse_duration)]
    #[serde(default, deserialize_with = "duration")]
    pub tick: Option<Duration>,
    /// Base election timeout in ticks; each timeout is drawn from [T, 2T).
    #[arg(long)]
    pub election_timeout_ticks: Option<u64>,
    /// Ticks between heartbeats.
    #[arg(long)]
    pub heartbeat_ticks: Option<u64>,
    /// How long a client request may wait for its answer.
    #[arg(long, value_parser = parse_duration)]
    #[serde(default, deserialize_with = "duration")]
    pub request_timeout: Option<Duration>,
    /// (optimized, nilext) How the leader serves reads: read-index or lease.
    #[arg(long)]
    #[serde(default, deserialize_with = "parsed")]
    pub read_mode: Option<ReadMode>,
    /// (optimized, nilext) Most commands per durable write and entries per AppendEntries.
    #[arg(long)]
    pub batch_entries_max: Option<usize>,
    /// (optimized, nilext) Most bytes per durable write and AppendEntries.
    #[arg(long)]
    pub batch_bytes_max: Option<usize>,
    /// (optimized, nilext) Most AppendEntries in flight to one follower.
    #[arg(long)]
    pub inflight_appends_max: Option<usize>,
    /// (optimized, nilext) Most bytes in flight to one follower.
    #[arg(long)]
    pub inflight_bytes_max: Option<usize>,
    /// (optimized, nilext) Ticks taken off a lease for clock drift.
    #[arg(long)]
    pub lease_drift_ticks: Option<u64>,
    /// (optimized, nilext) Pre-vote before raising the term: true or false.
    #[arg(long)]
    pub pre_vote: Option<bool>,
    /// (optimized, nilext) Check-quorum and leader stickiness: true or false.
    #[arg(long)]
    pub check_quorum: Option<bool>,
    /// One-way delay added to every peer message and every client request
    /// and response (user space; for benchmarks; e.g. 1ms).
    #[arg(long, value_parser = parse_duration)]
    #[serde(default, deserialize_with = "duration")]
    pub net_delay: Option<Duration>,
    /// Uniform jitter on that delay (e.g. 200us).
    #[arg(long, value_parser = parse_duration)]
    #[serde(default, deserialize_with = "duration")]
    pub net_jitter: Option<Duration>,
    /// A client session expires after this long without an update (in
    /// cluster time, which the leader writes into the log: every node
    /// expires it at the same entry); the client's next update is refused
    /// as SESSION_EXPIRED. At least 10s and 20 election timeouts. Takes
    /// effect while this node leads.
    #[arg(long, value_parser = parse_duration)]
    #[serde(default, deserialize_with = "duration")]
    pub session_timeout: Option<Duration>,
    /// Take a snapshot (and compact the log behind it) once this many
    /// entries were applied since the last; 0: never by count.
    #[arg(long)]
    pub snapshot_entries: Option<u64>,
    /// Or once entries of this many bytes were applied since the last; 0:
    /// never by size.
    #[arg(long)]
    pub snapshot_bytes: Option<u64>,
    /// Entries kept in the log behind a snapshot, so a follower a little
    /// behind gets entries rather than the whole snapshot.
    #[arg(long)]
    pub snapshot_keep_entries: Option<u64>,
    /// sync: every log append and vote is synced before it counts. memory:
    /// UNSAFE against the loss of a majority of machines: written without
    /// fsync (the Skyros paper's setting, etcd's --unsafe-no-fsync); a killed
    /// process loses nothing, a crashed machine may lose what its node
    /// acknowledged. One setting for the whole cluster (peers with the
    /// other are refused), kept in the data directory.
    #[arg(long, value_name = "sync|memory")]
    #[serde(default, deserialize_with = "parsed")]
    pub durability: Option<Durability>,
    /// Bytes of the read cache in front of the state database: recently
    /// read and written keys (their values or their absence), updated by
    /// every apply, cleared when a snapshot is installed; 0 turns it off.
    #[arg(long)]
    pub cache_bytes: Option<u64>,
    /// Bytes of RocksDB's own row cache for the state database (0: none),
    /// kept to compare with --cache-bytes (docs/architecture.md, "Read
    /// cache").
    #[arg(long)]
    pub row_cache_bytes: Option<u64>,
    /// On SIGTERM or Ctrl-C, a leader first hands leadership to the most
    /// up-to-date follower (waiting up to two election timeouts), so the
    /// cluster does not wait out an election timeout: true or false.
    #[arg(long)]
    pub hand_over_on_stop: Option<bool>,
    /// Serve the Admin service, which drops peer traffic on command (for
    /// fault tests; loopback callers only).
    #[arg(long, num_args = 0..=1, default_missing_value = "true")]
    pub fault_injection: Option<bool>,
    /// UNSAFE, for proving the fault tests can fail: answer reads from the
    /// local state machine on any node, with no leadership check.
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
            join: self.join.or(other.join),
            data_dir: self.data_dir.or(other.data_dir),
            initial_cluster_state: self.initial_cluster_state.or(other.initial_cluster_state),
            client_addr: self.client_addr.or(other.client_addr),
            peer_addr: self.peer_addr.or(other.peer_addr),
            metrics_addr: self.metrics_addr.or(other.metrics_addr),
            resp_addr: self.resp_addr.or(other.resp_addr),
            cluster_id: self.cluster_id.or(other.cluster_id),
            tick: self.tick.or(other.tick),
            election_timeout_ticks: self.election_timeout_ticks.or(other.election_timeout_ticks),
            heartbeat_ticks: self.heartbeat_ticks.or(other.heartbeat_ticks),
            request_timeout: self.request_timeout.or(other.request_timeout),
            read_mode: self.read_mode.or(other.read_mode),
            batch_entries_max: self.batch_entries_max.or(other.batch_entries_max),
            batch_bytes_max: self.batch_bytes_max.or(other.batch_bytes_max),
            inflight_appends_max: self.inflight_appends_max.or(other.inflight_appends_max),
            inflight_bytes_max: self.inflight_bytes_max.or(other.inflight_bytes_max),
            lease_drift_ticks: self.lease_drift_ticks.or(other.lease_drift_ticks),
            pre_vote: self.pre_vote.or(other.pre_vote),
            check_quorum: self.check_quorum.or(other.check_quorum),
            net_delay: self.net_delay.or(other.net_delay),
            net_jitter: self.net_jitter.or(other.net_jitter),
            snapshot_entries: self.snapshot_entries.or(other.snapshot_entries),
            snapshot_bytes: self.snapshot_bytes.or(other.snapshot_bytes),
            snapshot_keep_entries: self.snapshot_keep_entries.or(other.snapshot_keep_entries),
            durability: self.durability.or(other.durability),
            cache_bytes: self.cache_bytes.or(other.cache_bytes),
            row_cache_bytes: self.row_cache_bytes.or(other.row_cache_bytes),
            session_timeout: self.session_timeout.or(other.session_timeout),
            hand_over_on_stop: self.hand_over_on_stop.or(other.hand_over_on_stop),
            fault_injection: self.fault_injection.or(other.fault_injection),
            unsafe_local_reads: self.unsafe_local_reads.or(other.unsafe_local_reads),
        }
    }
}

/// `command` (one that flattens [`NodeArgs`]) with each setting's default
/// appended to its help, taken from the code that defines it: kvnode's
/// [`Defaults`] and the protocols' `Config::new`.
pub fn help_with_defaults(command: clap::Command) -> clap::Command {
    let optimized = raft_optimized::Config::new(1, vec![1], 0);
    let nilext = raft_nilext::Config::new(1, vec![1], 0);
    assert_eq!(
        optimized.read_mode, nilext.raft.read_mode,
        "one default per setting"
    );
    let snapshots = SnapshotPolicy::default();
    let defaults: [(&str, String); 24] = [
        ("initial_cluster_state", "existing".into()),
        ("tick", format_duration(Defaults::TICK)),
        (
            "election_timeout_ticks",
            consensus::raft::ELECTION_TIMEOUT_TICKS.to_string(),
        ),
        (
            "heartbeat_ticks",
            consensus::raft::HEARTBEAT_TICKS.to_string(),
        ),
        (
            "request_timeout",
            format_duration(Defaults::REQUEST_TIMEOUT),
        ),
        ("read_mode", optimized.read_mode.to_string()),
        ("batch_entries_max", optimized.batch_entries_max.to_string()),
        ("batch_bytes_max", optimized.batch_bytes_max.to_string()),
        (
            "inflight_appends_max",
            optimized.inflight_appends_max.to_string(),
        ),
        (
            "inflight_bytes_max",
            optimized.inflight_bytes_max.to_string(),
        ),
        ("lease_drift_ticks", optimized.lease_drift_ticks.to_string()),
        ("pre_vote", optimized.pre_vote.to_string()),
        ("check_quorum", optimized.check_quorum.to_string()),
        ("net_delay", "0".into()),
        ("net_jitter", "0".into()),
        (
            "snapshot_entries",
            format!(
                "{}; vanilla: {}",
                snapshots.entries,
                Defaults::SNAPSHOT_ENTRIES_VANILLA
            ),
        ),
        ("snapshot_bytes", snapshots.bytes.to_string()),
        ("snapshot_keep_entries", snapshots.keep_entries.to_string()),
        ("durability", "sync".into()),
        ("cache_bytes", Defaults::CACHE_BYTES.to_string()),
        ("row_cache_bytes", "0".into()),
        (
            "session_timeout",
            format_duration(Defaults::SESSION_TIMEOUT),
        ),
        ("fault_injection", "false".into()),
        ("hand_over_on_stop", "true".into()),
    ];
    defaults.into_iter().fold(command, |command, (id, value)| {
        command.mut_arg(id, |arg| {
            let help = arg.get_help().map(|h| h.to_string()).unwrap_or_default();
            arg.help(format!("{help} [default: {value}]"))
        })
    })
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

impl FromStr for InitialClusterState {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "new" => Ok(InitialClusterState::New),
            "existing" => Ok(InitialClusterState::Existing),
            other => Err(format!(
                "initial cluster state {other:?}: use new or existing"
            )),
        }
    }
}

/// Complete, validated settings of one node.
#[derive(Debug, Clone)]
pub struct NodeConfig {
    /// The protocol.
    pub protocol: Protocol,
    /// This node.
    pub id: NodeId,
    /// The initial members, this node included (`--peers`); with
    /// `--join`, the members the cluster named (filled in at start).
    pub members: BTreeMap<NodeId, Member>,
    /// `--join`: client addresses of members of the cluster to join.
    pub join: Vec<String>,
    /// The data directory.
    pub data_dir: PathBuf,
    /// New cluster or existing one.
    pub initial_cluster_state: InitialClusterState,
    /// Client API listen address.
    pub client_addr: String,
    /// Peer service listen address.
    pub peer_addr: String,
    /// Where Prometheus metrics are served, if anywhere.
    pub metrics_addr: Option<String>,
    /// Where the Redis-protocol endpoint listens, if anywhere.
    pub resp_addr: Option<String>,
    /// The cluster id.
    pub cluster_id: String,
    /// Tick length.
    pub tick: Duration,
    /// Base election timeout in ticks (unset: the protocol's default).
    pub election_timeout_ticks: Option<u64>,
    /// Heartbeat interval in ticks (unset: the protocol's default).
    pub heartbeat_ticks: Option<u64>,
    /// Client request deadline.
    pub request_timeout: Duration,
    /// Settings of raft-optimized left unset keep its defaults.
    pub optimized: OptimizedSettings,
    /// Injected network delay.
    pub net_delay: crate::netdelay::NetDelay,
    /// When to take snapshots and compact the log.
    pub snapshots: SnapshotPolicy,
    /// Durability, and the caches in front of the state database.
    pub storage: crate::storage::StorageOptions,
    /// How long a client session lasts without an update.
    pub session_timeout: Duration,
    /// A leader hands leadership over before it stops.
    pub hand_over_on_stop: bool,
    /// Serve the fault-injection Admin service.
    pub fault_injection: bool,
    /// Deliberately unsafe reads (fault-test harness check only).
    pub unsafe_local_reads: bool,
}

impl NodeConfig {
    /// The session timeout in ticks (rounded up).
    pub fn session_timeout_ticks(&self) -> u64 {
        self.session_timeout
            .as_nanos()
            .div_ceil(self.tick.as_nanos()) as u64
    }
}

/// raft-optimized's settings as given (unset: the protocol's default).
#[derive(Debug, Clone, Default)]
pub struct OptimizedSettings {
    /// How the leader serves reads.
    pub read_mode: Option<ReadMode>,
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
            .with_context(|| format!("--protocol is required ({})", Protocol::names()))?;
        let id = args.id.context("--id is required")?;
        consensus::membership::validate_node_id(id).map_err(|e| anyhow::anyhow!("--id: {e}"))?;
        let join = args.join.clone().unwrap_or_default();
        let (members, me) = if join.is_empty() {
            let members = parse_members(
                &args
                    .peers
                    .context("--peers is required (or --join, to join a running cluster)")?,
            )?;
            let me = members
                .get(&id)
                .with_context(|| format!("--id {id} is not among the members in --peers"))?
                .clone();
            (members, me)
        } else {
            let (Some(peer_addr), Some(client_addr)) = (&args.peer_addr, &args.client_addr) else {
                bail!("--join needs --peer-addr and --client-addr: where this node listens");
            };
            let me = crate::members::parse_address(&format!("{peer_addr}/{client_addr}"))
                .map_err(|e| anyhow::anyhow!("--join: {e}"))?;
            (BTreeMap::new(), me)
        };
        let data_dir = args.data_dir.context("--data-dir is required")?;
        let tick = args.tick.unwrap_or(Defaults::TICK);
        if tick < Duration::from_millis(1) {
            bail!(
                "--tick {} is too short: at least 1ms",
                format_duration(tick)
            );
        }
        let request_timeout = args.request_timeout.unwrap_or(Defaults::REQUEST_TIMEOUT);
        if request_timeout.is_zero() {
            bail!("--request-timeout must be above 0");
        }
        if let Some(mode) = args.read_mode
            && !protocol.has_read_modes()
        {
            bail!("--read-mode {mode}: {protocol} reads through the log and has no read mode");
        }
        let defaults = SnapshotPolicy::default();
        let default_entries = match protocol {
            Protocol::Vanilla => Defaults::SNAPSHOT_ENTRIES_VANILLA,
            _ => defaults.entries,
        };
        let snapshots = SnapshotPolicy {
            entries: args.snapshot_entries.unwrap_or(default_entries),
            bytes: args.snapshot_bytes.unwrap_or(defaults.bytes),
            keep_entries: args.snapshot_keep_entries.unwrap_or(defaults.keep_entries),
            ..defaults
        };
        snapshots
            .validate()
            .map_err(|problem| anyhow::anyhow!("snapshot settings: {problem}"))?;
        let session_timeout = args.session_timeout.unwrap_or(Defaults::SESSION_TIMEOUT);
        let election_timeout_ticks = args
            .election_timeout_ticks
            .unwrap_or(consensus::raft::ELECTION_TIMEOUT_TICKS);
        let shortest = consensus::cluster_time::SESSION_TIMEOUT_MIN.max(
            tick * consensus::cluster_time::session_timeout_min_ticks(election_timeout_ticks)
                as u32,
        );
        if session_timeout < shortest {
            bail!(
                "--session-timeout {} is too short: at least {} (10s, and 20 election timeouts of {} ticks of {}), so that no client retries a request across its session's expiry and Nil-ext orders a fast write well before",
                format_duration(session_timeout),
                format_duration(shortest),
                election_timeout_ticks,
                format_duration(tick)
            );
        }
        Ok(NodeConfig {
            client_addr: args.client_addr.unwrap_or_else(|| me.client_addr.clone()),
            peer_addr: args.peer_addr.unwrap_or_else(|| me.peer_addr.clone()),
            metrics_addr: args.metrics_addr,
            resp_addr: args.resp_addr,
            // With --join, learned from the cluster at start.
            cluster_id: args.cluster_id.unwrap_or_else(|| {
                if join.is_empty() {
                    derived_cluster_id(&members)
                } else {
                    String::new()
                }
            }),
            protocol,
            id,
            members,
            join,
            data_dir,
            initial_cluster_state: args
                .initial_cluster_state
                .unwrap_or(InitialClusterState::Existing),
            tick,
            election_timeout_ticks: args.election_timeout_ticks,
            heartbeat_ticks: args.heartbeat_ticks,
            request_timeout,
            session_timeout,
            hand_over_on_stop: args.hand_over_on_stop.unwrap_or(true),
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
                delay: args.net_delay.unwrap_or_default(),
                jitter: args.net_jitter.unwrap_or_default(),
            },
            snapshots,
            storage: crate::storage::StorageOptions {
                durability: args.durability.unwrap_or_default(),
                read_cache_bytes: args.cache_bytes.unwrap_or(Defaults::CACHE_BYTES),
                row_cache_bytes: args.row_cache_bytes.unwrap_or(0),
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
            "protocol = \"optimized\"\nid = 2\npeers = [\"1=127.0.0.1:7001/127.0.0.1:6001\", \"2=127.0.0.1:7002/127.0.0.1:6002\"]\ndata-dir = \"/tmp/x\"\ntick = \"50ms\"\nrequest-timeout = \"1.5s\"\nread-mode = \"lease\"\n",
        )
        .expect("write");
        let args = NodeArgs {
            config: Some(file),
            tick: Some(Duration::from_millis(10)),
            ..NodeArgs::default()
        };
        let config = NodeConfig::from_args(args).expect("valid");
        assert_eq!(config.id, 2);
        assert_eq!(config.protocol, Protocol::Optimized);
        assert_eq!(config.tick, Duration::from_millis(10));
        assert_eq!(config.request_timeout, Duration::from_millis(1500));
        assert_eq!(config.optimized.read_mode, Some(ReadMode::Lease));
        assert_eq!(config.client_addr, "127.0.0.1:6002");
        assert_eq!(config.heartbeat_ticks, None, "the protocol's default");
        assert!(config.cluster_id.starts_with("c-"));
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[derive(clap::Parser)]
    struct Flags {
        #[command(flatten)]
        node: NodeArgs,
    }

    #[test]
    fn help_shows_the_defaults_the_code_uses() {
        use clap::CommandFactory;
        let help = help_with_defaults(Flags::command())
            .render_long_help()
            .to_string();
        for expected in [
            "[default: 20ms]",
            "[default: 5s]",
            &format!("[default: {}]", consensus::raft::ELECTION_TIMEOUT_TICKS),
            "[default: read-index]",
            "[default: existing]",
        ] {
            assert!(help.contains(expected), "{expected} missing from:\n{help}");
        }
    }

    #[test]
    fn bad_settings_are_explained() {
        let base = NodeArgs {
            protocol: Some(Protocol::Vanilla),
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
                read_mode: Some(ReadMode::Lease),
                ..base.clone()
            })
            .contains("has no read mode")
        );
        assert!(
            error(NodeArgs {
                tick: Some(Duration::ZERO),
                ..base.clone()
            })
            .contains("too short")
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

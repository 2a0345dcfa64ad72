//! Prometheus metrics, served as text over HTTP (`--metrics-addr`): the
//! node's role, term, leader and indexes, its sessions and configuration,
//! synced writes, their latency and what each made durable, the log's
//! size, the leader's batches, snapshots, Nil-ext's durability log, and
//! client requests by kind, path and outcome with their latency.

use std::sync::LazyLock;
use std::time::Duration;

use prometheus::{
    Encoder, Histogram, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge,
    IntGaugeVec, Opts, Registry, TextEncoder,
};
use tokio::sync::mpsc;

use crate::runtime::Event;

/// Every metric of this process.
pub struct Metrics {
    registry: Registry,
    /// 1 for the role the node plays, 0 for the others.
    pub role: IntGaugeVec,
    /// The current term.
    pub term: IntGauge,
    /// The leader known (0: none).
    pub leader: IntGauge,
    /// Commit, applied, last and first log index, snapshot index.
    pub index: IntGaugeVec,
    /// Client sessions held.
    pub sessions: IntGauge,
    /// As leader: each follower's match index.
    pub follower_match: IntGaugeVec,
    /// As leader: how many entries each follower lacks.
    pub follower_lag: IntGaugeVec,
    /// Voters and learners of the configuration in force.
    pub members: IntGaugeVec,
    /// Synced write batches.
    pub synced_writes: IntCounter,
    /// Latency of one synced write batch (RocksDB write with fsync).
    pub sync_seconds: Histogram,
    /// Client requests by kind, path (Nil-ext's `fast` path or `ordered`)
    /// and outcome.
    pub requests: IntCounterVec,
    /// Client request latency by kind.
    pub request_seconds: HistogramVec,
    /// What one synced write batch made durable: log entries, and on
    /// Nil-ext, durability-log records.
    pub writes_per_sync: HistogramVec,
    /// Log entries and their encoded bytes appended to the durable log.
    pub log_appended: IntCounterVec,
    /// The log's size in storage (RocksDB's estimate: files and memtables).
    pub log_bytes: IntGauge,
    /// Entries per AppendEntries message sent: the leader's batch sizes.
    pub append_batch: Histogram,
    /// Messages dropped because a peer's queue was full.
    pub dropped_messages: IntCounter,
    /// Snapshots taken here, installed from a leader, and chunks sent.
    pub snapshots: IntCounterVec,
    /// Nil-ext: the records and bytes its durability log holds.
    pub durability_log: IntGaugeVec,
    /// The read cache: reads it answered, and reads that went to the
    /// state database.
    pub cache_reads: IntCounterVec,
    /// The read cache's bytes and keys held.
    pub cache_size: IntGaugeVec,
}

impl std::fmt::Debug for Metrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Metrics").finish_non_exhaustive()
    }
}

fn gauge_vec(name: &str, help: &str, label: &str) -> IntGaugeVec {
    IntGaugeVec::new(Opts::new(name, help), &[label]).expect("a valid metric")
}

/// The process's metrics.
pub static METRICS: LazyLock<Metrics> = LazyLock::new(|| {
    let latency_buckets = prometheus::exponential_buckets(0.000_05, 2.0, 18).expect("buckets");
    let count_buckets = prometheus::exponential_buckets(1.0, 2.0, 14).expect("buckets");
    let metrics = Metrics {
        registry: Registry::new_custom(Some("kvnode".into()), None).expect("a registry"),
        role: gauge_vec("role", "1 for the role the node plays", "role"),
        term: IntGauge::new("term", "The node's current term").expect("a valid metric"),
        leader: IntGauge::new("leader", "The leader the node knows (0: none)")
            .expect("a valid metric"),
        index: gauge_vec(
            "log_index",
            "Commit, applied, last and first log index, and the snapshot's",
            "which",
        ),
        sessions: IntGauge::new("sessions", "Client sessions the state machine holds")
            .expect("a valid metric"),
        follower_match: gauge_vec(
            "follower_match_index",
            "As leader: the highest index known to match each follower's log",
            "follower",
        ),
        follower_lag: gauge_vec(
            "follower_lag_entries",
            "As leader: the entries of its log each follower is not known to hold",
            "follower",
        ),
        members: gauge_vec(
            "members",
            "Voters and learners of the configuration in force",
            "kind",
        ),
        synced_writes: IntCounter::new("synced_writes_total", "Synced write batches")
            .expect("a valid metric"),
        sync_seconds: Histogram::with_opts(
            HistogramOpts::new("sync_seconds", "Latency of one synced write batch")
                .buckets(latency_buckets.clone()),
        )
        .expect("a valid metric"),
        requests: IntCounterVec::new(
            Opts::new(
                "requests_total",
                "Client requests by kind, path (fast: Nil-ext's fast path; ordered) and outcome",
            ),
            &["kind", "path", "outcome"],
        )
        .expect("a valid metric"),
        request_seconds: HistogramVec::new(
            HistogramOpts::new("request_seconds", "Client request latency by kind")
                .buckets(latency_buckets),
            &["kind"],
        )
        .expect("a valid metric"),
        writes_per_sync: HistogramVec::new(
            HistogramOpts::new(
                "writes_per_sync",
                "What one synced write batch made durable, by what (log entries; \
                 Nil-ext: durability-log records); batches without any are not counted",
            )
            .buckets(count_buckets.clone()),
            &["what"],
        )
        .expect("a valid metric"),
        log_appended: IntCounterVec::new(
            Opts::new(
                "log_appended_total",
                "Log entries and their encoded bytes made durable",
            ),
            &["unit"],
        )
        .expect("a valid metric"),
        log_bytes: IntGauge::new(
            "log_bytes",
            "The log's size in storage (RocksDB's estimate of its files and memtables)",
        )
        .expect("a valid metric"),
        append_batch: Histogram::with_opts(
            HistogramOpts::new(
                "append_entries_batch",
                "Entries per AppendEntries message sent (heartbeats count as 0)",
            )
            .buckets(
                std::iter::once(0.0)
                    .chain(count_buckets.iter().copied())
                    .collect(),
            ),
        )
        .expect("a valid metric"),
        dropped_messages: IntCounter::new(
            "peer_messages_dropped_total",
            "Messages dropped because a peer's queue was full (the protocol resends what matters)",
        )
        .expect("a valid metric"),
        snapshots: IntCounterVec::new(
            Opts::new(
                "snapshots_total",
                "Snapshots taken here, installed from a leader, and snapshot chunks sent",
            ),
            &["event"],
        )
        .expect("a valid metric"),
        durability_log: gauge_vec(
            "durability_log",
            "Nil-ext: the records and bytes the durability log holds",
            "unit",
        ),
        cache_reads: IntCounterVec::new(
            Opts::new(
                "read_cache_reads_total",
                "State-machine reads by the read cache's answer (hit: from the cache; miss: from the database)",
            ),
            &["result"],
        )
        .expect("a valid metric"),
        cache_size: gauge_vec(
            "read_cache",
            "The read cache's bytes and keys held",
            "unit",
        ),
    };
    let r = &metrics.registry;
    for collector in [
        Box::new(metrics.role.clone()) as Box<dyn prometheus::core::Collector>,
        Box::new(metrics.term.clone()),
        Box::new(metrics.leader.clone()),
        Box::new(metrics.index.clone()),
        Box::new(metrics.sessions.clone()),
        Box::new(metrics.follower_match.clone()),
        Box::new(metrics.follower_lag.clone()),
        Box::new(metrics.members.clone()),
        Box::new(metrics.synced_writes.clone()),
        Box::new(metrics.sync_seconds.clone()),
        Box::new(metrics.requests.clone()),
        Box::new(metrics.request_seconds.clone()),
        Box::new(metrics.writes_per_sync.clone()),
        Box::new(metrics.log_appended.clone()),
        Box::new(metrics.log_bytes.clone()),
        Box::new(metrics.append_batch.clone()),
        Box::new(metrics.dropped_messages.clone()),
        Box::new(metrics.snapshots.clone()),
        Box::new(metrics.durability_log.clone()),
        Box::new(metrics.cache_reads.clone()),
        Box::new(metrics.cache_size.clone()),
    ] {
        r.register(collector).expect("metric names are unique");
    }
    metrics
});

impl Metrics {
    /// The metrics in Prometheus's text format.
    pub fn text(&self) -> String {
        let mut out = Vec::new();
        let _ = TextEncoder::new().encode(&self.registry.gather(), &mut out);
        String::from_utf8_lossy(&out).into_owned()
    }
}

/// A command's kind, as the request metrics label it.
pub fn kind_of(command: &consensus::Command) -> &'static str {
    use consensus::Command::*;
    match command {
        Put { .. } => "put",
        Delete { .. } => "delete",
        MultiPut { .. } => "multi_put",
        CompareAndSwap { .. } => "compare_and_swap",
        Increment { .. } => "increment",
        Get { .. } => "get",
        MultiGet { .. } => "multi_get",
    }
}

/// Keeps the node's gauges current from its status, every 500 ms, until
/// the runtime stops.
pub async fn follow_status(events: mpsc::Sender<Event>) {
    let m = &*METRICS;
    loop {
        let (reply, answer) = tokio::sync::oneshot::channel();
        if events.send(Event::Status { reply }).await.is_err() {
            return;
        }
        let Ok(node) = answer.await else {
            return;
        };
        let s = node.status;
        for role in ["follower", "pre-candidate", "candidate", "leader"] {
            m.role
                .with_label_values(&[role])
                .set(i64::from(s.role.as_str() == role));
        }
        let gauge = |v: u64| i64::try_from(v).unwrap_or(i64::MAX);
        m.term.set(gauge(s.term));
        m.leader.set(gauge(s.leader.unwrap_or(0)));
        for (which, value) in [
            ("commit", s.commit_index),
            ("applied", s.applied_index),
            ("last", s.last_log_index),
            ("first", s.first_log_index),
            ("snapshot", s.snapshot_index),
        ] {
            m.index.with_label_values(&[which]).set(gauge(value));
        }
        m.sessions.set(gauge(node.sessions));
        m.log_bytes.set(gauge(node.log_bytes));
        // Counters follow the cache's own totals.
        for (result, total) in [
            ("hit", node.read_cache.hits),
            ("miss", node.read_cache.misses),
        ] {
            let counter = m.cache_reads.with_label_values(&[result]);
            counter.inc_by(total.saturating_sub(counter.get()));
        }
        m.cache_size
            .with_label_values(&["bytes"])
            .set(gauge(node.read_cache.bytes));
        m.cache_size
            .with_label_values(&["keys"])
            .set(gauge(node.read_cache.entries));
        if let Some((records, bytes)) = node.durability_log {
            m.durability_log
                .with_label_values(&["records"])
                .set(gauge(records as u64));
            m.durability_log
                .with_label_values(&["bytes"])
                .set(gauge(bytes as u64));
        }
        // Followers are shown only while this node leads.
        m.follower_match.reset();
        m.follower_lag.reset();
        for (follower, matched) in &node.follower_matches {
            let label = follower.to_string();
            m.follower_match
                .with_label_values(&[&label])
                .set(gauge(*matched));
            m.follower_lag
                .with_label_values(&[&label])
                .set(gauge(s.last_log_index.saturating_sub(*matched)));
        }
        m.members
            .with_label_values(&["voters"])
            .set(s.membership.voters.len() as i64);
        m.members
            .with_label_values(&["learners"])
            .set(s.membership.learners.len() as i64);
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

/// Serves `GET /metrics` on `addr` until the process ends.
pub async fn serve(listener: tokio::net::TcpListener) {
    let app = axum::Router::new().route(
        "/metrics",
        axum::routing::get(|| async {
            (
                [(
                    axum::http::header::CONTENT_TYPE,
                    "text/plain; version=0.0.4",
                )],
                METRICS.text(),
            )
        }),
    );
    if let Err(error) = axum::serve(listener, app).await {
        tracing::error!(%error, "the metrics server stopped");
    }
}

//! Prometheus metrics, served as text over HTTP (`--metrics-addr`): the
//! node's role, term, leader and indexes, its sessions and configuration,
//! synced writes and their latency, and client requests by kind and
//! outcome with their latency.

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

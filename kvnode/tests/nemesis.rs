//! The Jepsen-style fault test on real processes, short version: about 25
//! seconds per protocol of kills, pauses and partitions under concurrent
//! register clients, then the history is checked. Long runs:
//! `cargo run --release -p bench -- nemesis --protocols P --duration 5m`.

use std::path::Path;
use std::time::Duration;

use consensus::config::Protocol;
use nemesis::{NemesisConfig, NemesisReport, run};

/// Runs `config` against this build's kvnode, bounded by `limit`; the
/// directory (logs, a saved history) lives as long as the caller keeps it.
async fn run_bounded(
    config: &NemesisConfig,
    limit: Duration,
) -> (tempfile::TempDir, NemesisReport) {
    let dir = tempfile::tempdir().expect("tempdir");
    let exe = Path::new(env!("CARGO_BIN_EXE_kvnode"));
    let report = tokio::time::timeout(limit, run(exe, &[], dir.path(), config))
        .await
        .expect("the run ends in time")
        .expect("the run completes");
    (dir, report)
}

async fn short_run(protocol: Protocol) {
    check(NemesisConfig::new(protocol, Duration::from_secs(25))).await;
}

async fn check(config: NemesisConfig) {
    let protocol = config.protocol;
    let (_dir, report) = run_bounded(&config, Duration::from_secs(180)).await;
    eprintln!("{protocol}: {}", report.summary());
    if let Some(excerpt) = &report.excerpt {
        eprintln!("{excerpt}");
    }
    assert!(
        report.faults.values().sum::<u64>() >= 5,
        "faults were injected"
    );
    assert!(report.completed > 100, "clients made progress under faults");
    assert!(report.converged, "the nodes converged after healing");
    assert!(
        report.verdict.is_linearizable(),
        "{protocol}: {}",
        report.summary()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn vanilla_stays_linearizable_under_faults() {
    short_run(Protocol::Vanilla).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn optimized_stays_linearizable_under_faults() {
    short_run(Protocol::Optimized).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn nilext_stays_linearizable_under_faults() {
    short_run(Protocol::Nilext).await;
}

/// Issue 22's setting, where lease reads went stale: five nodes, lease
/// reads, two fault schedules at once (kills and pauses of random nodes and
/// of the leader overlapping).
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn lease_reads_on_five_nodes_under_overlapping_kills_and_pauses() {
    let mut config = NemesisConfig::new(Protocol::Optimized, Duration::from_secs(25));
    config.nodes = 5;
    config.schedules = 2;
    config.node_flags.push("--read-mode=lease".into());
    check(config).await;
}

/// The harness can fail: with reads answered by any node without a
/// leadership check, it finds an anomaly, saves the history and shows where.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn unsafe_local_reads_are_caught() {
    let mut config = NemesisConfig::new(Protocol::Optimized, Duration::from_secs(12));
    config.unsafe_local_reads = true;
    let (_dir, report) = run_bounded(&config, Duration::from_secs(120)).await;
    eprintln!("{}", report.summary());
    assert!(
        !report.verdict.is_linearizable(),
        "stale local reads must be caught"
    );
    let excerpt = report.excerpt.expect("an excerpt around the violation");
    eprintln!("{excerpt}");
    assert!(excerpt.contains("client"));
    let saved = std::fs::read_to_string(report.history_file.expect("the history is saved"))
        .expect("readable");
    assert!(saved.lines().count() >= report.completed);
}

//! Snapshots and log compaction on real `kvnode` processes, for every
//! protocol: the log is compacted behind snapshots; a follower stopped
//! while the others went on is sent the snapshot on its restart, installs
//! it and serves from it; every node restarts from its snapshot and the
//! log after it. A checked history runs throughout.

mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use common::{PROTOCOLS, Recorder, TestCluster, assert_linearizable, spawn_load};

const TEST_LIMIT: Duration = Duration::from_secs(150);

/// A snapshot every 300 entries, 50 kept behind it: a follower stopped
/// for 1,500 writes falls behind the compacted prefix.
const SNAPSHOT_FLAGS: &[&str] = &["--snapshot-entries", "300", "--snapshot-keep-entries", "50"];

const KEYS: usize = 1_500;

fn key(i: usize) -> String {
    format!("key{i:05}")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_follower_behind_the_compacted_log_installs_a_snapshot_and_every_node_restarts_from_one()
{
    for protocol in PROTOCOLS {
        let run = async {
            let mut test = TestCluster::start_with_flags(protocol, 3, SNAPSHOT_FLAGS);
            let recorder = Recorder::default();
            let (leader, _) = test.leader().await;
            let follower = if leader == 1 { 2 } else { 1 };
            test.cluster.kill(follower);
            let stop = Arc::new(AtomicBool::new(false));
            let load = spawn_load(&test, &recorder, 2, stop.clone());

            // Writes the stopped follower misses, from 8 writers at once.
            let started = Instant::now();
            let mut writers = Vec::new();
            for w in 0..8 {
                let mut client = test.client(Duration::from_secs(10));
                writers.push(tokio::spawn(async move {
                    for i in (w..KEYS).step_by(8) {
                        client
                            .put(key(i), format!("v{i}"))
                            .await
                            .unwrap_or_else(|e| panic!("write {i}: {e}"));
                    }
                }));
            }
            for writer in writers {
                writer.await.expect("writer");
            }
            eprintln!(
                "{protocol}: {KEYS} writes with node {follower} down in {:?}",
                started.elapsed()
            );
            let status = test.cluster.status(leader).await.expect("leader status");
            assert!(
                status.snapshot_index > 0 && status.first_log_index > 1,
                "{protocol}: the leader took snapshots and compacted its log: {status:?}"
            );

            // The follower restarts behind the compacted prefix: it is sent
            // the snapshot, installs it, and catches up.
            let target = test
                .cluster
                .status(leader)
                .await
                .expect("leader status")
                .commit_index;
            test.cluster.start_node(follower).expect("restart");
            let restarted = Instant::now();
            let deadline = restarted + Duration::from_secs(30);
            let mut caught_up = false;
            while Instant::now() < deadline && !caught_up {
                caught_up = test
                    .cluster
                    .status(follower)
                    .await
                    .is_some_and(|s| s.applied_index >= target);
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            if !caught_up {
                let tail = |id: u64| {
                    let log =
                        std::fs::read_to_string(test.cluster.log_file(id)).unwrap_or_default();
                    let lines: Vec<&str> = log.lines().collect();
                    lines[lines.len().saturating_sub(25)..].join("\n")
                };
                panic!(
                    "{protocol}: node {follower} did not catch up: {:?}\nits log:\n{}\nthe leader's:\n{}",
                    test.cluster.statuses().await,
                    tail(follower),
                    tail(leader)
                );
            }
            eprintln!(
                "{protocol}: node {follower} applied up to {target}, the commit index at its restart, {:?} after it",
                restarted.elapsed()
            );
            let log = std::fs::read_to_string(test.cluster.log_file(follower)).unwrap_or_default();
            assert!(
                log.contains("now serves from the snapshot"),
                "{protocol}: node {follower} installed a snapshot"
            );

            // It serves from the snapshot: with the old leader gone, it
            // or the third node leads, and every write is there.
            test.cluster.kill(leader);
            let mut client = test.client(Duration::from_secs(10));
            for i in (0..KEYS).step_by(97) {
                let value = client.get(key(i)).await.expect("read after failover");
                assert_eq!(
                    value,
                    Some(format!("v{i}").into_bytes()),
                    "{protocol}: {}",
                    key(i)
                );
            }

            // Every node restarts from its snapshot and the log after it.
            stop.store(true, Ordering::Relaxed);
            for task in load {
                task.await.expect("load");
            }
            test.cluster.kill_all();
            for id in 1..=3 {
                test.cluster.start_node(id).expect("restart");
            }
            test.leader().await;
            for i in (0..KEYS).step_by(89) {
                let value = client.get(key(i)).await.expect("read after restart");
                assert_eq!(
                    value,
                    Some(format!("v{i}").into_bytes()),
                    "{protocol}: {}",
                    key(i)
                );
            }
            assert!(
                test.converged(&[1, 2, 3], Duration::from_secs(30)).await,
                "{protocol}: the restarted cluster converged"
            );
            test.leaders.assert_one_leader_per_term();
            assert_linearizable(&recorder);
        };
        if tokio::time::timeout(TEST_LIMIT, run).await.is_err() {
            panic!("{protocol}: did not finish within {TEST_LIMIT:?}");
        }
    }
}

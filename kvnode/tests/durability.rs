//! `--durability memory`: logs and votes written without fsync. A killed
//! process loses nothing (the kernel holds its writes): killing one node at
//! a time under load loses no acknowledged write, and the history stays
//! linearizable. The setting is kept in the data directory.

mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use common::{Protocol, Recorder, TestCluster, assert_linearizable, run_each_protocol, spawn_load};
use consensus::{Command, CommandResult};

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn memory_mode_survives_killing_one_node_at_a_time() {
    run_each_protocol(Duration::from_secs(120), kill_one_at_a_time).await;
}

async fn kill_one_at_a_time(protocol: Protocol) {
    let mut test = TestCluster::start_with_flags(protocol, 3, &["--durability", "memory"]);
    test.leader().await;
    let recorder = Recorder::default();
    let mut client = test.client(Duration::from_secs(10));
    let stop = Arc::new(AtomicBool::new(false));
    let load = spawn_load(&test, &recorder, 3, stop.clone());
    let mut acknowledged = 0;
    for round in 0..3u64 {
        // The leader first, then the others.
        let victim = if round == 0 {
            test.leader().await.0
        } else {
            (test.leader().await.0 % 3) + 1
        };
        for i in 0..10 {
            let key = format!("d{round}.{i}");
            recorder
                .run(
                    &mut client,
                    Command::Put {
                        key: key.into_bytes(),
                        value: b"acked".to_vec(),
                    },
                )
                .await
                .expect("write");
            acknowledged += 1;
        }
        test.cluster.kill(victim);
        tokio::time::sleep(Duration::from_millis(300)).await;
        test.cluster.start_node(victim).expect("restart");
        // Caught up: it applied what was committed when it came back (the
        // load goes on, so the nodes are never all level).
        let leader = test.leader().await.0;
        let committed = test
            .cluster
            .status(leader)
            .await
            .map_or(0, |s| s.commit_index);
        let deadline = std::time::Instant::now() + Duration::from_secs(20);
        while test
            .cluster
            .status(victim)
            .await
            .is_none_or(|s| s.applied_index < committed)
        {
            assert!(
                std::time::Instant::now() < deadline,
                "{protocol}: node {victim} catches up to {committed}"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
    stop.store(true, Ordering::Relaxed);
    for task in load {
        task.await.expect("load");
    }
    // Every acknowledged write is there.
    for round in 0..3 {
        for i in 0..10 {
            let value = recorder
                .run(
                    &mut client,
                    Command::Get {
                        key: format!("d{round}.{i}").into_bytes(),
                    },
                )
                .await
                .expect("read");
            assert_eq!(
                value,
                CommandResult::Value(Some(b"acked".to_vec())),
                "{protocol}: d{round}.{i}"
            );
        }
    }
    eprintln!("{protocol}: {acknowledged} acknowledged writes all read back");
    assert_linearizable(&recorder);

    // The setting is the directory's: started again with the other, a
    // node refuses, and says why.
    test.cluster.kill_all();
    let output = std::process::Command::new(env!("CARGO_BIN_EXE_kvnode"))
        .args(["--protocol", protocol.name(), "--id", "1"])
        .arg("--data-dir")
        .arg(test.cluster.data_dir(1).expect("node 1's directory"))
        .args(["--peers", &test.cluster.peers_flag()])
        .args(["--durability", "sync"])
        .output()
        .expect("run kvnode");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(!output.status.success(), "{protocol}: {stderr}");
    assert!(
        stderr.contains("durability") && stderr.contains("\"memory\""),
        "{protocol}: {stderr}"
    );
}

/// A node started with the other setting is refused by its peers, and says
/// so in their logs: a cluster never mixes them.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn peers_with_another_durability_are_refused() {
    let mut test =
        TestCluster::start_with_flags(Protocol::Optimized, 3, &["--durability", "memory"]);
    test.leader().await;
    // Node 3's machine is replaced, and it comes back on an empty
    // directory with the default setting (sync).
    test.cluster.kill(3);
    let dir = tempfile::tempdir().expect("directory");
    let log = std::fs::File::create(dir.path().join("node3.log")).expect("log file");
    let mut node = std::process::Command::new(env!("CARGO_BIN_EXE_kvnode"))
        .args(["--protocol", "optimized", "--id", "3", "--tick", "10ms"])
        .arg("--data-dir")
        .arg(dir.path().join("data"))
        .args(["--peers", &test.cluster.peers_flag()])
        .args(["--initial-cluster-state", "new", "--exit-with-parent"])
        .env("RUST_LOG", "info")
        .stderr(log)
        .spawn()
        .expect("start node 3");
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    let refused = loop {
        let logs: String = [1, 2]
            .iter()
            .map(|&id| std::fs::read_to_string(test.cluster.log_file(id)).unwrap_or_default())
            .collect();
        if logs.contains("refused a peer with another --durability") {
            break true;
        }
        if std::time::Instant::now() > deadline {
            break false;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let _ = node.kill();
    let _ = node.wait();
    assert!(refused, "nodes 1 and 2 refuse node 3's peer stream");
}

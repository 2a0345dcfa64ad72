//! The read cache (`--cache-bytes`) never serves a value older than the
//! applied state: across overwrite, delete, multi-put, compare-and-swap,
//! increment, a snapshot installed under a warm cache, and a restart.

mod common;

use std::time::{Duration, Instant};

use common::{Protocol, TestCluster, run_each_protocol};
use nix::sys::signal::Signal;

/// A small cache (it evicts) and snapshots every 20 entries with none kept
/// behind, so that a follower paused for 60 writes must install one.
const FLAGS: &[&str] = &[
    "--cache-bytes",
    "4096",
    "--snapshot-entries",
    "20",
    "--snapshot-keep-entries",
    "0",
];

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn no_read_sees_a_stale_value() {
    run_each_protocol(Duration::from_secs(90), no_stale_reads).await;
}

async fn no_stale_reads(protocol: Protocol) {
    let mut test = TestCluster::start_with_flags(protocol, 3, FLAGS);
    let (leader, _) = test.leader().await;
    let mut client = test.client(Duration::from_secs(5));
    let get = |v: &str| Some(v.as_bytes().to_vec());

    // Each change is read back at once (the cache holds the key).
    client.put("k", "v1").await.expect("put");
    assert_eq!(client.get("k").await.expect("get"), get("v1"));
    client.put("k", "v2").await.expect("overwrite");
    assert_eq!(client.get("k").await.expect("get"), get("v2"), "{protocol}");
    client.delete("k").await.expect("delete");
    assert_eq!(client.get("k").await.expect("get"), None, "{protocol}");
    let pairs = vec![
        (b"k".to_vec(), b"m1".to_vec()),
        (b"j".to_vec(), b"m2".to_vec()),
    ];
    client.multi_put(pairs).await.expect("multi-put");
    assert_eq!(
        client
            .multi_get(vec![b"k".to_vec(), b"j".to_vec()])
            .await
            .expect("multi-get"),
        vec![get("m1"), get("m2")],
        "{protocol}"
    );
    let (swapped, _) = client
        .compare_and_swap("k", Some(b"m1".to_vec()), "c1")
        .await
        .expect("cas");
    assert!(swapped);
    assert_eq!(client.get("k").await.expect("get"), get("c1"), "{protocol}");
    assert_eq!(client.increment("n", 1).await.expect("incr"), 1);
    assert_eq!(client.increment("n", 1).await.expect("incr"), 2);
    assert_eq!(client.get("n").await.expect("get"), get("2"), "{protocol}");

    // A follower whose cache holds k, j and n is paused; the others move
    // on far past a snapshot, so it must install one when it resumes.
    let follower = if leader == 1 { 2 } else { 1 };
    test.cluster
        .signal(follower, Signal::SIGSTOP)
        .expect("SIGSTOP");
    // The changes first, then enough writes that the last snapshot covers
    // them: the follower gets them only in the snapshot.
    client.put("k", "after-snapshot").await.expect("put");
    client.delete("j").await.expect("delete");
    assert_eq!(client.increment("n", 10).await.expect("incr"), 12);
    for i in 0..60 {
        client
            .put(format!("other{i}"), "x")
            .await
            .expect("put while paused");
    }
    test.cluster
        .signal(follower, Signal::SIGCONT)
        .expect("SIGCONT");
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let log = std::fs::read_to_string(test.cluster.log_file(follower)).unwrap_or_default();
        if log.contains("installed the snapshot received from the leader") {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "{protocol}: node {follower} installs a snapshot"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // It leads: its reads, and the reads inside its increments, must see
    // the snapshot's values, not its cache's from before.
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let _ = client.transfer_leader(Some(follower)).await;
        if test.leader().await.0 == follower {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "{protocol}: leadership moves to node {follower}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert_eq!(
        client
            .multi_get(vec![b"k".to_vec(), b"j".to_vec(), b"n".to_vec()])
            .await
            .expect("multi-get"),
        vec![get("after-snapshot"), None, get("12")],
        "{protocol}: no stale value"
    );
    assert_eq!(client.increment("n", 1).await.expect("incr"), 13);

    // A restart of every node: nothing from before is served either.
    test.cluster.kill_all();
    for id in 1..=3 {
        test.cluster.start_node(id).expect("restart");
    }
    test.leader().await;
    let mut client = test.client(Duration::from_secs(5));
    assert_eq!(
        client
            .multi_get(vec![b"k".to_vec(), b"j".to_vec(), b"n".to_vec()])
            .await
            .expect("multi-get"),
        vec![get("after-snapshot"), None, get("13")],
        "{protocol}: after a restart"
    );
    // The caches answered reads: their counts are in the status.
    let statuses = test.cluster.statuses().await;
    let reads: u64 = statuses
        .values()
        .map(|s| s.cache_hits + s.cache_misses)
        .sum();
    assert!(reads > 0, "{protocol}: reads went through the caches");
}

//! Leadership transfer (Raft thesis 3.10) on real processes, for every
//! protocol, under load with a checked history: `kvctl leader transfer`
//! (the client library's `transfer_leader`) moves leadership to the node
//! named or to the most up-to-date follower; SIGTERM on a leader hands
//! leadership over before the process stops.

mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use common::{Protocol, Recorder, TestCluster, spawn_load};

const TEST_LIMIT: Duration = Duration::from_secs(90);

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn leadership_moves_on_request_and_on_sigterm_under_load() {
    common::run_each_protocol(TEST_LIMIT, scenario).await;
}

async fn scenario(protocol: Protocol) {
    let mut test = TestCluster::start(protocol, 3);
    test.leader().await;
    let recorder = Recorder::default();
    let stop = Arc::new(AtomicBool::new(false));
    let load = spawn_load(&test, &recorder, 4, stop.clone());
    let mut admin = test.client(Duration::from_secs(5));

    // On request: to a node named, then to whichever follower is most up
    // to date, twice each.
    for round in 0..4 {
        tokio::time::sleep(Duration::from_millis(300)).await;
        let (leader, term) = test.leader().await;
        let target = (round % 2 == 0).then(|| leader % 3 + 1);
        let asked = Instant::now();
        let (new_leader, _) = admin
            .transfer_leader(target)
            .await
            .unwrap_or_else(|e| panic!("{protocol}: transfer from node {leader}: {e}"));
        eprintln!(
            "{protocol}: node {leader} (term {term}) handed leadership to node {new_leader} in {} ms (asked for {target:?})",
            asked.elapsed().as_millis()
        );
        assert_ne!(new_leader, leader, "{protocol}: leadership moved");
        if let Some(target) = target {
            assert_eq!(new_leader, target, "{protocol}: to the node named");
        }
    }
    // A transfer to the leader itself, or to a node not in the cluster, is
    // refused and changes nothing.
    let (leader, _) = test.leader().await;
    for wrong in [leader, 9] {
        let error = admin
            .transfer_leader(Some(wrong))
            .await
            .expect_err("refused");
        assert!(
            matches!(error, kvclient::ClientError::Invalid(_)),
            "{protocol}: {error}"
        );
    }

    // SIGTERM on the leader: it hands leadership over, then stops.
    let (leader, term) = test.leader().await;
    let signalled = Instant::now();
    test.cluster
        .signal(leader, nix::sys::signal::Signal::SIGTERM)
        .expect("signal the leader");
    let deadline = Instant::now() + Duration::from_secs(10);
    let (new_leader, new_term) = loop {
        let (id, term) = test.leader().await;
        if id != leader {
            break (id, term);
        }
        assert!(Instant::now() < deadline, "{protocol}: a new leader");
        tokio::time::sleep(Duration::from_millis(2)).await;
    };
    eprintln!(
        "{protocol}: SIGTERM on node {leader} (term {term}): node {new_leader} leads term {new_term} {} ms later",
        signalled.elapsed().as_millis()
    );
    assert_ne!(new_leader, leader);
    let deadline = Instant::now() + Duration::from_secs(10);
    while test.cluster.exited().iter().all(|(id, _)| *id != leader) {
        assert!(Instant::now() < deadline, "{protocol}: node {leader} stops");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let log = std::fs::read_to_string(test.cluster.log_file(leader)).expect("the node's log");
    assert!(
        log.contains("handed leadership over before stopping"),
        "{protocol}: node {leader} handed leadership over:\n{log}"
    );
    test.cluster.start_node(leader).expect("restart");

    tokio::time::sleep(Duration::from_millis(500)).await;
    stop.store(true, Ordering::Relaxed);
    let mut done = 0;
    for client in load {
        done += client.await.expect("load client");
    }
    eprintln!("{protocol}: {done} operations completed under the transfers");
    assert!(done > 0);
    test.leaders.assert_one_leader_per_term();
    common::assert_linearizable(&recorder);
}

//! A leader stopped by SIGSTOP and resumed must not answer lease reads from
//! a lease that ended while it was stopped. The test makes the stale read
//! certain for a runtime whose time stops with the process: the leader is
//! stopped, its peers stop listening to it and elect another leader, which
//! takes a write; reads queue at the stopped leader, and then it resumes.
//! It hears nothing from its peers, so only its own sense of time can tell
//! it that its lease is over. kvnode before it took time from a clock
//! answered these reads with the overwritten value.

mod common;

use std::time::Duration;

use common::{Protocol, TestCluster};
use kvclient::{Client, ClientOptions};
use nemesis::set_partition;
use nix::sys::signal::Signal;

async fn a_resumed_leader_serves_no_stale_lease_read(protocol: Protocol) {
    let test =
        TestCluster::start_with_flags(protocol, 3, &["--read-mode", "lease", "--fault-injection"]);
    let mut client = test.client(Duration::from_secs(10));
    client.put("k", "before").await.expect("first write");
    let (old, old_term) = test.leader().await;
    // A lease read at the leader works before the pause.
    assert_eq!(
        client.get("k").await.expect("read"),
        Some(b"before".to_vec())
    );

    test.cluster.signal(old, Signal::SIGSTOP).expect("SIGSTOP");
    let others: Vec<u64> = (1..=3).filter(|&id| id != old).collect();
    for &id in &others {
        set_partition(&test.cluster, id, vec![old], vec![old]).await;
    }
    let deadline = tokio::time::Instant::now() + Duration::from_secs(15);
    let new_leader = loop {
        let mut found = None;
        for &id in &others {
            if let Some(s) = test.cluster.status(id).await
                && s.role == "leader"
                && s.term > old_term
            {
                found = Some(id);
            }
        }
        if let Some(id) = found {
            break id;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "no new leader while node {old} is stopped; logs in {}",
            test.dir.path().display()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let endpoints = |ids: &[u64]| -> Vec<String> {
        ids.iter()
            .map(|id| test.cluster.members()[id].client_addr.clone())
            .collect()
    };
    let options = |timeout| ClientOptions {
        timeout,
        attempt_timeout: timeout,
        ..ClientOptions::default()
    };
    let mut majority =
        Client::new(endpoints(&[new_leader]), options(Duration::from_secs(10))).expect("client");
    majority
        .put("k", "after")
        .await
        .expect("write at the new leader");

    // Reads sent to the stopped leader wait in its sockets until it resumes.
    let readers: Vec<_> = (0..8)
        .map(|_| {
            let mut reader =
                Client::new(endpoints(&[old]), options(Duration::from_secs(3))).expect("client");
            tokio::spawn(async move { reader.get("k").await })
        })
        .collect();
    tokio::time::sleep(Duration::from_millis(300)).await;
    test.cluster.signal(old, Signal::SIGCONT).expect("SIGCONT");
    let mut stale = 0;
    let mut fresh = 0;
    for reader in readers {
        match reader.await.expect("reader task") {
            Ok(Some(value)) if value == b"before" => stale += 1,
            Ok(Some(value)) if value == b"after" => fresh += 1,
            Ok(other) => panic!("unexpected value {other:?}"),
            // No answer, or "not leader" until the deadline: no stale read.
            Err(_) => {}
        }
    }
    assert_eq!(
        stale,
        0,
        "{protocol}: node {old}, resumed, answered {stale} of 8 reads with the value \
         node {new_leader} had overwritten ({fresh} fresh); logs in {}",
        test.dir.path().display()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn optimized_resumed_leader_serves_no_stale_lease_read() {
    a_resumed_leader_serves_no_stale_lease_read(Protocol::Optimized).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nilext_resumed_leader_serves_no_stale_lease_read() {
    a_resumed_leader_serves_no_stale_lease_read(Protocol::Nilext).await;
}

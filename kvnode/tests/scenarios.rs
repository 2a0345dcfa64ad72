//! The seed project's fault scenarios on real `kvnode` processes (RocksDB,
//! gRPC, SIGKILL), for every protocol built. Each test is bounded in time,
//! and its cluster is killed when the test ends, even when it fails.

mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use common::{PROTOCOLS, Protocol, Recorder, TestCluster, spawn_load};
use consensus::Command;

const TEST_LIMIT: Duration = Duration::from_secs(120);

async fn bounded(name: impl std::fmt::Display, test: impl std::future::Future<Output = ()>) {
    if tokio::time::timeout(TEST_LIMIT, test).await.is_err() {
        panic!("{name} did not finish within {TEST_LIMIT:?}");
    }
}

fn put(key: &str, value: &str) -> Command {
    Command::Put {
        key: key.into(),
        value: value.into(),
    }
}

/// Scenarios 1 and 2: kill the leader, writes go on at the new leader; kill
/// that one too, requests fail as unavailable within their deadline; restart
/// the old leaders, they follow and catch up. Concurrent clients record a
/// history that must be linearizable.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn leader_failover_majority_loss_and_rejoin() {
    for protocol in PROTOCOLS {
        bounded(protocol, async {
            let mut test = TestCluster::start(protocol, 3);
            let recorder = Recorder::default();
            let (first_leader, first_term) = test.leader().await;
            let mut client = test.client(Duration::from_secs(10));
            for i in 0..5 {
                recorder
                    .run(&mut client, put(&format!("k{i}"), "before"))
                    .await
                    .expect("write before failover");
            }
            let stop = Arc::new(AtomicBool::new(false));
            let load = spawn_load(&test, &recorder, 3, stop.clone());
            tokio::time::sleep(Duration::from_millis(300)).await;

            // 1. Kill the leader: a new one is elected, clients follow it.
            test.cluster.kill(first_leader);
            let started = Instant::now();
            recorder
                .run(&mut client, put("after-failover", "1"))
                .await
                .expect("write after failover");
            eprintln!(
                "{protocol}: first write after killing the leader took {:?}",
                started.elapsed()
            );
            let (second_leader, second_term) = test.leader().await;
            assert_ne!(second_leader, first_leader);
            assert!(second_term > first_term);
            tokio::time::sleep(Duration::from_millis(300)).await;
            stop.store(true, Ordering::Relaxed);
            let completed: usize = futures_join(load).await;
            assert!(completed > 0, "the concurrent clients made progress");

            // ... and kill that one too: no majority, requests fail in time.
            test.cluster.kill(second_leader);
            let mut impatient = test.client(Duration::from_secs(2));
            let started = Instant::now();
            let error = recorder
                .run(&mut impatient, put("no-majority", "x"))
                .await
                .expect_err("no majority, no write");
            let waited = started.elapsed();
            assert!(error.outcome_unknown(), "{error}");
            assert!(
                waited < Duration::from_secs(4),
                "gave up after {waited:?}, past its deadline"
            );
            let statuses = test.cluster.statuses().await;
            test.leaders.observe(&statuses);

            // 2. Restart the old leaders: they follow and catch up.
            test.cluster.start_node(first_leader).expect("restart");
            test.leader().await;
            recorder
                .run(&mut client, put("after-rejoin", "1"))
                .await
                .expect("write after first rejoin");
            test.cluster.start_node(second_leader).expect("restart");
            recorder
                .run(&mut client, put("after-second-rejoin", "1"))
                .await
                .expect("write after second rejoin");
            assert!(
                test.converged(&[1, 2, 3], Duration::from_secs(15)).await,
                "all nodes catch up"
            );
            let statuses = test.cluster.statuses().await;
            let leader = test.leader().await.0;
            for old in [first_leader, second_leader] {
                if old != leader {
                    assert_eq!(
                        statuses[&old].role, "follower",
                        "node {old} rejoined as follower"
                    );
                }
            }
            for i in 0..5 {
                let value = recorder
                    .run(
                        &mut client,
                        Command::Get {
                            key: format!("k{i}").into(),
                        },
                    )
                    .await
                    .expect("read");
                assert_eq!(
                    value,
                    consensus::CommandResult::Value(Some(b"before".to_vec()))
                );
            }
            test.leaders.assert_one_leader_per_term();
            eprintln!(
                "{protocol}: {} operations recorded",
                recorder.operations().len()
            );
            common::assert_linearizable(&recorder);
        })
        .await;
    }
}

async fn futures_join(handles: Vec<tokio::task::JoinHandle<usize>>) -> usize {
    let mut total = 0;
    for handle in handles {
        total += handle.await.expect("load task");
    }
    total
}

/// Scenario 3: kill a follower, put and get still succeed; restart it, it
/// catches up.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn follower_failure_and_catch_up() {
    for protocol in PROTOCOLS {
        bounded(protocol, async {
            let mut test = TestCluster::start(protocol, 3);
            let recorder = Recorder::default();
            let (leader, _) = test.leader().await;
            let follower = (1..=3).find(|id| *id != leader).expect("a follower");
            let mut client = test.client(Duration::from_secs(10));
            recorder
                .run(&mut client, put("a", "1"))
                .await
                .expect("write");
            test.cluster.kill(follower);
            for i in 0..20 {
                recorder
                    .run(&mut client, put(&format!("f{i}"), "x"))
                    .await
                    .expect("write with a follower down");
            }
            let value = recorder
                .run(&mut client, Command::Get { key: "a".into() })
                .await
                .expect("read");
            assert_eq!(value, consensus::CommandResult::Value(Some(b"1".to_vec())));
            test.cluster.start_node(follower).expect("restart");
            recorder
                .run(&mut client, put("b", "2"))
                .await
                .expect("write after restart");
            assert!(
                test.converged(&[1, 2, 3], Duration::from_secs(15)).await,
                "the follower catches up"
            );
            test.leaders.assert_one_leader_per_term();
            common::assert_linearizable(&recorder);
        })
        .await;
    }
}

/// Scenarios 3 and 6: a node holds entries the leader does not (an old
/// leader's uncommitted writes); when it rejoins they are overwritten, and
/// the divergent logs converge on the leader's.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn divergent_logs_converge_on_the_leaders() {
    for protocol in PROTOCOLS {
        bounded(protocol, async {
            let mut test = TestCluster::start(protocol, 3);
            let recorder = Recorder::default();
            let (old_leader, _) = test.leader().await;
            let mut client = test.client(Duration::from_secs(10));
            recorder
                .run(&mut client, put("base", "0"))
                .await
                .expect("write");
            let others: Vec<u64> = (1..=3).filter(|id| *id != old_leader).collect();
            assert!(test.converged(&[1, 2, 3], Duration::from_secs(10)).await);
            // Cut the leader off by killing both followers; it appends
            // writes it can never commit.
            for id in &others {
                test.cluster.kill(*id);
            }
            let mut doomed = test.client(Duration::from_millis(1500));
            for i in 0..3 {
                let result = recorder
                    .run(&mut doomed, put(&format!("lost{i}"), "x"))
                    .await;
                assert!(
                    result.is_err(),
                    "no majority: the write cannot be acknowledged"
                );
            }
            // Gone before the followers come back: a call of it still queued
            // for a restarted node could otherwise deliver a lost write late
            // (legal for an unknown outcome, but not what this test checks).
            drop(doomed);
            let before = test
                .cluster
                .status(old_leader)
                .await
                .expect("old leader answers");
            test.cluster.kill(old_leader);
            // The others elect a leader and write past the old leader's log.
            for id in &others {
                test.cluster.start_node(*id).expect("restart");
            }
            for i in 0..5 {
                recorder
                    .run(&mut client, put(&format!("new{i}"), "y"))
                    .await
                    .expect("write on the new leader");
            }
            test.cluster
                .start_node(old_leader)
                .expect("restart the old leader");
            recorder
                .run(&mut client, put("final", "z"))
                .await
                .expect("write");
            assert!(
                test.converged(&[1, 2, 3], Duration::from_secs(15)).await,
                "logs converge"
            );
            let after = test.cluster.statuses().await;
            assert!(
                after[&old_leader].last_log_term > before.last_log_term,
                "the old leader's uncommitted suffix was replaced by the new leader's entries"
            );
            for i in 0..3 {
                let value = recorder
                    .run(
                        &mut client,
                        Command::Get {
                            key: format!("lost{i}").into(),
                        },
                    )
                    .await
                    .expect("read");
                assert_eq!(
                    value,
                    consensus::CommandResult::Value(None),
                    "an uncommitted write was overwritten"
                );
            }
            test.leaders.assert_one_leader_per_term();
            common::assert_linearizable(&recorder);
        })
        .await;
    }
}

/// Scenario 4: after acknowledged writes, SIGKILL every node and restart
/// them: every acknowledged write is there.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn acknowledged_writes_survive_killing_every_node() {
    for protocol in PROTOCOLS {
        bounded(protocol, async {
            let mut test = TestCluster::start(protocol, 3);
            let recorder = Recorder::default();
            test.leader().await;
            let mut client = test.client(Duration::from_secs(10));
            for i in 0..50 {
                recorder
                    .run(&mut client, put(&format!("d{i}"), &format!("v{i}")))
                    .await
                    .expect("write");
            }
            recorder
                .run(
                    &mut client,
                    Command::Increment {
                        key: "counter".into(),
                        by: 7,
                    },
                )
                .await
                .expect("increment");
            test.cluster.kill_all();
            for id in 1..=3 {
                test.cluster.start_node(id).expect("restart");
            }
            test.leader().await;
            for i in 0..50 {
                let value = recorder
                    .run(
                        &mut client,
                        Command::Get {
                            key: format!("d{i}").into(),
                        },
                    )
                    .await
                    .expect("read after restart");
                assert_eq!(
                    value,
                    consensus::CommandResult::Value(Some(format!("v{i}").into_bytes()))
                );
            }
            let counter = recorder
                .run(
                    &mut client,
                    Command::Get {
                        key: "counter".into(),
                    },
                )
                .await
                .expect("read");
            assert_eq!(
                counter,
                consensus::CommandResult::Value(Some(b"7".to_vec()))
            );
            test.leaders.assert_one_leader_per_term();
            common::assert_linearizable(&recorder);
        })
        .await;
    }
}

/// An injected one-way delay (`--net-delay`) slows every hop, client
/// and peer alike, and changes no answer: a write of a protocol that
/// replicates through the leader's log takes at least four one-way hops
/// (client, follower, back, client), a Nil-ext fast-path write and a read
/// at least two, and a request refused as invalid still travels both ways.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_injected_delay_slows_every_hop_and_changes_no_answer() {
    const DELAY_MS: u64 = 20;
    let hop = Duration::from_millis(DELAY_MS);
    bounded("an_injected_delay", async {
        for protocol in PROTOCOLS {
            let delay = format!("{DELAY_MS}ms");
            let test = TestCluster::start_with_flags(protocol, 3, &["--net-delay", &delay]);
            let (leader, _) = test.leader().await;
            let mut client = test.client(Duration::from_secs(10));
            // The first request finds the leader; time the ones after.
            client.put("warm", "up").await.expect("put");
            let write_hops = if protocol == Protocol::Nilext { 2 } else { 4 };
            for i in 0..5 {
                let started = Instant::now();
                client
                    .put(format!("k{i}"), format!("v{i}"))
                    .await
                    .expect("put");
                let took = started.elapsed();
                assert!(
                    took >= write_hops * hop,
                    "{protocol}: a write took {took:?}, less than {write_hops} hops of {hop:?}"
                );
                let started = Instant::now();
                let value = client.get(format!("k{i}")).await.expect("get");
                let took = started.elapsed();
                assert_eq!(value, Some(format!("v{i}").into_bytes()), "{protocol}");
                assert!(
                    took >= 2 * hop,
                    "{protocol}: a read took {took:?}, less than 2 hops of {hop:?}"
                );
            }
            // A refusal made by the node itself travels both ways too.
            let addr = test.cluster.members()[&leader].client_addr.clone();
            let mut kv = proto::kv::kv_client::KvClient::connect(format!("http://{addr}"))
                .await
                .expect("connect");
            let started = Instant::now();
            let refused = kv
                .put(proto::kv::PutRequest {
                    header: None,
                    key: b"k".to_vec(),
                    value: b"v".to_vec(),
                })
                .await
                .expect_err("a request without a header is refused");
            assert_eq!(refused.code(), tonic::Code::InvalidArgument, "{protocol}");
            assert!(started.elapsed() >= 2 * hop, "{protocol}: refused early");
        }
    })
    .await;
}

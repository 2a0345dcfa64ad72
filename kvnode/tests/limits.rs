//! Issue 14's defects at the edges, on real processes: values at the client
//! limit on every protocol, a recovery of more unordered writes than fit in
//! one message, a client that takes its id back and numbers its requests
//! from 1 again, and a multi-get too large to serve.

mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use common::{PROTOCOLS, Protocol, TestCluster};
use consensus::limits::{COMMAND_BYTES_MAX, MULTI_KEYS_MAX, VALUE_BYTES_MAX};
use kvclient::{Client, ClientError, ClientOptions};
use nemesis::set_partition;

fn options(timeout: Duration, client_id: Option<u64>) -> ClientOptions {
    ClientOptions {
        timeout,
        attempt_timeout: Duration::from_millis(1000).min(timeout),
        client_id,
        ..ClientOptions::default()
    }
}

/// A multi-put of `bytes` of keys and values, in values of at most the
/// value limit.
fn multi_put_of(bytes: usize, tag: u8) -> Vec<(Vec<u8>, Vec<u8>)> {
    let mut pairs = Vec::new();
    let mut left = bytes;
    let mut i = 0u8;
    while left > 0 {
        let key = vec![b'm', i];
        let value = (left - key.len()).min(VALUE_BYTES_MAX);
        left -= key.len() + value;
        pairs.push((key, vec![tag; value]));
        i += 1;
    }
    pairs
}

/// Issue 14, defect 5: values at the client limit replicate on every
/// protocol (a multi-put of exactly the command limit, whose AppendEntries
/// is larger than the request that carried it), and a command over the
/// limit, here a few bytes under gRPC's old 4 MiB, is refused at once with
/// a clear error instead of being accepted and then stalling replication.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn values_at_the_client_limit_replicate_on_every_protocol() {
    for protocol in PROTOCOLS {
        let test = TestCluster::start(protocol, 3);
        let mut client = test.client(Duration::from_secs(20));
        let pairs = multi_put_of(COMMAND_BYTES_MAX, 1);
        let command = consensus::Command::MultiPut {
            pairs: pairs.clone(),
        };
        assert_eq!(command.size_bytes(), COMMAND_BYTES_MAX);
        client
            .multi_put(pairs.clone())
            .await
            .unwrap_or_else(|e| panic!("{protocol}: a multi-put at the limit: {e}"));
        client
            .put("big", vec![2; VALUE_BYTES_MAX])
            .await
            .unwrap_or_else(|e| panic!("{protocol}: a put at the value limit: {e}"));
        let keys: Vec<Vec<u8>> = pairs.iter().map(|(k, _)| k.clone()).collect();
        let values = client.multi_get(keys).await.expect("read back");
        for ((_, value), read) in pairs.iter().zip(values) {
            assert_eq!(read.as_ref(), Some(value), "{protocol}");
        }
        // Every replica holds it: the followers caught up.
        assert!(
            test.converged(&[1, 2, 3], Duration::from_secs(20)).await,
            "{protocol}: the replicas converge"
        );
        let over = multi_put_of(consensus::limits::REQUEST_BYTES_MAX - 64, 3);
        match client.multi_put(over).await {
            Err(ClientError::Invalid(message)) => {
                assert!(message.contains("over the limit"), "{message}")
            }
            other => panic!("{protocol}: an oversized multi-put: {other:?}"),
        }
        client.put("after", "v").await.expect("the cluster goes on");
    }
}

/// Issue 14, defect 3: a client that takes its id back after a restart and
/// numbers its requests from 1 again gets a clear "stale" error, never an
/// acknowledgement of a write that the state machine would refuse. On
/// Nil-ext the fast path used to acknowledge it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_takes_its_id_back_from_1_is_refused_not_acknowledged() {
    for protocol in PROTOCOLS {
        let test = TestCluster::start(protocol, 3);
        let endpoints = test.cluster.endpoints();
        let id = 0xC0FFEE;
        let mut first = Client::new(
            endpoints.clone(),
            options(Duration::from_secs(10), Some(id)),
        )
        .expect("client");
        for i in 0..5 {
            first.put("k", format!("v{i}")).await.expect("write");
        }
        // Wait until every replica applied them (their sessions know seq 5).
        // On Nil-ext the writes may still wait unordered in the durability
        // logs, where logs look converged: a read of the key orders them on
        // the leader first, then convergence brings every replica there. (A
        // number the sessions have not passed yet cannot be told from a new
        // request: kvclient's `client_id` documentation forbids reusing one.)
        assert_eq!(first.get("k").await.expect("read"), Some(b"v4".to_vec()));
        assert!(test.converged(&[1, 2, 3], Duration::from_secs(10)).await);
        drop(first);
        let mut again =
            Client::new(endpoints, options(Duration::from_secs(10), Some(id))).expect("client");
        match again.put("k", "lost?").await {
            Err(ClientError::Execution(message)) => {
                assert!(message.contains("older than"), "{protocol}: {message}")
            }
            other => panic!("{protocol}: a reused id from 1: {other:?}"),
        }
        let value = again.get("k").await.expect("read");
        assert_eq!(value, Some(b"v4".to_vec()), "{protocol}: nothing written");
        // Taking the id back the documented way: going on from above.
        let endpoints = test.cluster.endpoints();
        let mut resumed = Client::new(
            endpoints,
            ClientOptions {
                first_seq: 6,
                ..options(Duration::from_secs(10), Some(id))
            },
        )
        .expect("client");
        resumed
            .put("k", "v5")
            .await
            .expect("a write going on from seq 6");
        assert_eq!(resumed.last_seq(), 6);
        assert_eq!(resumed.get("k").await.expect("read"), Some(b"v5".to_vec()));
    }
}

/// Issue 14, defect 11: a multi-get of 1,024 keys of 1 MiB (1 GiB) is
/// refused with a clear error once its result passes the read limit,
/// instead of reading it all on the node's loop; no election follows.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_multi_get_too_large_is_refused_and_causes_no_election() {
    let test = TestCluster::start(Protocol::Optimized, 3);
    let mut client = test.client(Duration::from_secs(30));
    let keys: Vec<Vec<u8>> = (0..32).map(|i| format!("big{i}").into_bytes()).collect();
    for key in &keys {
        client
            .put(key.clone(), vec![5; VALUE_BYTES_MAX])
            .await
            .expect("write");
    }
    let (leader, term) = test.leader().await;
    let many: Vec<Vec<u8>> = keys.iter().cycle().take(MULTI_KEYS_MAX).cloned().collect();
    for _ in 0..5 {
        match client.multi_get(many.clone()).await {
            Err(ClientError::Execution(message)) => {
                assert!(message.contains("read fewer keys"), "{message}")
            }
            other => panic!("a 1 GiB multi-get: {:?}", other.map(|v| v.len())),
        }
    }
    // A multi-get within the limit is served.
    let within: Vec<Vec<u8>> = keys[..8].to_vec();
    assert_eq!(client.multi_get(within).await.expect("read").len(), 8);
    let (leader_after, term_after) = test.leader().await;
    assert_eq!(
        (leader_after, term_after),
        (leader, term),
        "the same leader in the same term: no election"
    );
}

/// Issue 14, defect 1: a new Nil-ext leader recovers durability logs far
/// larger than one peer message. Writes of 1 MiB complete on the fast path
/// while the leader's replication is cut off, so none is ordered: more than
/// the 16 MiB message limit piles up unordered in every durability log.
/// Then the leader is killed. The new leader gathers the logs in chunks,
/// orders every completed write, and serves. (Before, it asked for each
/// log in one message, which exceeded the limit, asked again forever, and
/// the cluster stayed unavailable.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_new_leader_recovers_more_unordered_writes_than_one_message_holds() {
    // Long election timeouts (2 to 4 s): the followers wait while the
    // writes pile up.
    let mut test = TestCluster::start_with_flags(
        Protocol::Nilext,
        3,
        &["--fault-injection", "--election-timeout-ticks", "200"],
    );
    let mut client = test.client(Duration::from_secs(20));
    client.put("warm", "up").await.expect("first write");
    let (old, term) = test.leader().await;
    let others: Vec<u64> = (1..=3).filter(|&id| id != old).collect();
    // The leader can neither send nor hear: nothing gets ordered.
    set_partition(&test.cluster, old, others.clone(), others.clone()).await;
    for &id in &others {
        set_partition(&test.cluster, id, vec![old], vec![old]).await;
    }
    let completed = Arc::new(AtomicU64::new(0));
    let stop = Arc::new(AtomicBool::new(false));
    let writers: Vec<_> = (0..4u64)
        .map(|w| {
            let mut writer = test.client(Duration::from_secs(2));
            let completed = completed.clone();
            let stop = stop.clone();
            tokio::spawn(async move {
                let mut done = Vec::new();
                let mut n = 0u64;
                while !stop.load(Ordering::Relaxed) {
                    n += 1;
                    let key = format!("w{w}.{n}").into_bytes();
                    if writer
                        .put(key.clone(), vec![w as u8; VALUE_BYTES_MAX])
                        .await
                        .is_ok()
                    {
                        completed.fetch_add(1, Ordering::Relaxed);
                        done.push(key);
                    }
                }
                done
            })
        })
        .collect();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    while completed.load(Ordering::Relaxed) < 24 && tokio::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    stop.store(true, Ordering::Relaxed);
    let mut written = Vec::new();
    for writer in writers {
        written.extend(writer.await.expect("writer"));
    }
    assert!(
        written.len() >= 20,
        "{} writes of 1 MiB completed while the leader was cut off",
        written.len()
    );
    test.cluster.kill(old);
    for &id in &others {
        set_partition(&test.cluster, id, vec![], vec![]).await;
    }
    // A new leader recovers and serves within the time allowed.
    let mut after = Client::new(
        others
            .iter()
            .map(|id| test.cluster.members()[id].client_addr.clone())
            .collect(),
        options(Duration::from_secs(30), None),
    )
    .expect("client");
    after
        .put("after", "recovery")
        .await
        .expect("the new leader serves after recovering");
    let (new_leader, new_term) = test.leader().await;
    assert!(new_term > term && new_leader != old);
    for key in &written {
        let value = after.get(key.clone()).await.expect("read");
        assert_eq!(
            value.map(|v| v.len()),
            Some(VALUE_BYTES_MAX),
            "a completed write survived the leader change"
        );
    }
}

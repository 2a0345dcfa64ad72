//! Bounded client sessions on real processes, for every protocol: sessions
//! of clients idle for longer than `--session-timeout` expire on every node
//! (the table shrinks back), an update under an expired session is refused
//! with SESSION_EXPIRED and changes nothing, and the client library carries
//! on under a fresh id without the caller noticing.

mod common;

use std::time::{Duration, Instant};

use common::{PROTOCOLS, Protocol, TestCluster};
use kvclient::{Client, ClientOptions, error_detail};
use proto::kv::error_detail::Kind;
use proto::kv::kv_client::KvClient;
use proto::kv::{GetRequest, PutRequest, RequestHeader};

/// The shortest timeout kvnode accepts (`consensus::cluster_time`).
const SESSION_TIMEOUT: Duration = Duration::from_secs(10);
const CLIENTS: usize = 20;

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn idle_sessions_expire_everywhere_and_their_updates_are_refused() {
    // The protocols side by side: each waits out a session timeout.
    let runs = PROTOCOLS.map(|protocol| tokio::spawn(scenario(protocol)));
    for run in runs {
        run.await.expect("scenario");
    }
}

async fn scenario(protocol: Protocol) {
    let test = TestCluster::start_with_flags(protocol, 3, &["--session-timeout", "10s"]);
    test.leader().await;
    let endpoints = test.cluster.endpoints();
    let options = |client_id: Option<u64>, first_seq: u64| ClientOptions {
        timeout: Duration::from_secs(5),
        attempt_timeout: Duration::from_secs(1),
        client_id,
        first_seq,
        ..ClientOptions::default()
    };
    // Short-lived clients, one write each: a session each.
    let mut ids = Vec::new();
    for i in 0..CLIENTS {
        let mut client = Client::new(endpoints.clone(), options(None, 1)).expect("client");
        client
            .put(format!("k{i}"), "first")
            .await
            .expect("first write");
        // Its second update, on Nil-ext's fast path (the session is known).
        client
            .put(format!("k{i}"), "second")
            .await
            .expect("second write");
        ids.push((client.client_id(), client.last_seq()));
    }
    let sessions = wait_for_sessions(&test, |n| n >= CLIENTS as u64, Duration::from_secs(5)).await;
    eprintln!("{protocol}: {sessions:?} sessions after {CLIENTS} clients");

    // Idle for longer than the timeout; then one write of a new client
    // applies an entry whose stamp expires them all, on every node.
    tokio::time::sleep(SESSION_TIMEOUT + Duration::from_secs(1)).await;
    let mut late = Client::new(endpoints.clone(), options(None, 1)).expect("client");
    late.put("late", "1")
        .await
        .expect("write after the timeout");
    let started = Instant::now();
    let sessions = wait_for_sessions(&test, |n| n <= 1, Duration::from_secs(5)).await;
    eprintln!(
        "{protocol}: {sessions:?} sessions {:.1} s after the next write",
        started.elapsed().as_secs_f64()
    );

    // The next update of an expired session, sent as any client written
    // from kv.proto would: refused as SESSION_EXPIRED, nothing written.
    let (id, last_seq) = ids[0];
    let (leader, _) = test.leader().await;
    let addr = test
        .cluster
        .status(leader)
        .await
        .expect("the leader answers")
        .leader_client_addr;
    let mut raw = KvClient::connect(format!("http://{addr}"))
        .await
        .expect("connect");
    let refused = raw
        .put(PutRequest {
            header: Some(RequestHeader {
                client_id: id,
                seq: last_seq + 1,
                fast_path: false,
            }),
            key: b"k0".to_vec(),
            value: b"after expiry".to_vec(),
        })
        .await
        .expect_err("an update of an expired session is refused");
    let detail = error_detail(&refused).expect("a machine-readable detail");
    assert_eq!(
        detail.kind,
        Kind::SessionExpired as i32,
        "{protocol}: {refused:?}"
    );
    assert!(refused.message().contains("session expired"), "{refused:?}");
    let value = raw
        .get(GetRequest {
            header: Some(RequestHeader {
                client_id: id,
                seq: last_seq + 2,
                fast_path: false,
            }),
            key: b"k0".to_vec(),
        })
        .await
        .expect("read")
        .into_inner();
    assert_eq!(
        value.value.map(|v| v.value),
        Some(b"second".to_vec()),
        "{protocol}: the refused write changed nothing"
    );

    // The client library, taking that id back, carries on: refused at
    // once, it sends the write again as the first of a fresh session.
    let mut back = Client::new(endpoints.clone(), options(Some(id), last_seq + 3)).expect("client");
    back.put("k0", "carried on")
        .await
        .expect("the library takes a fresh id");
    assert_ne!(back.client_id(), id, "{protocol}: a fresh id");
    assert_eq!(
        back.get("k0").await.expect("read"),
        Some(b"carried on".to_vec())
    );
}

/// Polls every node's session count until `done` holds for all of them (or
/// `within` passes: then the counts seen last fail the test).
async fn wait_for_sessions(
    test: &TestCluster,
    done: impl Fn(u64) -> bool,
    within: Duration,
) -> Vec<u64> {
    let deadline = Instant::now() + within;
    loop {
        let statuses = test.cluster.statuses().await;
        let counts: Vec<u64> = statuses.values().map(|s| s.sessions).collect();
        if counts.len() == 3 && counts.iter().all(|&n| done(n)) {
            return counts;
        }
        assert!(
            Instant::now() < deadline,
            "session counts {counts:?} did not settle"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

//! What a node refuses, and how: invalid requests (each with its error and
//! no effect, on unary calls and on a call stream), a peer of another
//! cluster, a data directory that is corrupt or belongs to another cluster
//! or protocol, bad settings.

mod common;

use std::path::Path;
use std::process::Command as Process;
use std::time::Duration;

use common::{PROTOCOLS, Protocol, TestCluster};
use consensus::limits::{KEY_BYTES_MAX, MULTI_KEYS_MAX, VALUE_BYTES_MAX};
use kvclient::error_detail;
use proto::kv::error_detail::Kind;
use proto::kv::kv_client::KvClient;
use proto::kv::*;
use proto::raft::PeerBatch;
use proto::raft::raft_peer_client::RaftPeerClient;

fn kvnode() -> &'static Path {
    Path::new(env!("CARGO_BIN_EXE_kvnode"))
}

fn header(seq: u64) -> Option<RequestHeader> {
    Some(RequestHeader {
        client_id: 4242,
        seq,
        fast_path: false,
    })
}

fn expect_error<T: std::fmt::Debug>(
    result: Result<tonic::Response<T>, tonic::Status>,
    code: tonic::Code,
    kind: Kind,
) {
    let status = result.expect_err("the request must be refused");
    assert_eq!(status.code(), code, "{status:?}");
    let detail = error_detail(&status).expect("a machine-readable detail");
    assert_eq!(detail.kind, kind as i32, "{detail:?}");
    assert!(!detail.message.is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn invalid_requests_get_their_error_and_change_nothing() {
    for protocol in PROTOCOLS {
        let test = TestCluster::start(protocol, 3);
        let (leader, _) = test.leader().await;
        let addr = test.cluster.members()[&leader].client_addr.clone();
        let mut kv = KvClient::connect(format!("http://{addr}"))
            .await
            .expect("connect")
            .max_decoding_message_size(8 << 20)
            .max_encoding_message_size(8 << 20);
        kv.put(PutRequest {
            header: header(1),
            key: b"k".to_vec(),
            value: b"original".to_vec(),
        })
        .await
        .expect("a valid put");
        let long_key = vec![b'k'; KEY_BYTES_MAX + 1];
        let big_value = vec![0u8; VALUE_BYTES_MAX + 1];
        use tonic::Code::InvalidArgument as Invalid;
        let bad = Kind::InvalidArgument;
        expect_error(
            kv.put(PutRequest {
                header: header(2),
                key: vec![],
                value: b"v".to_vec(),
            })
            .await,
            Invalid,
            bad,
        );
        expect_error(
            kv.put(PutRequest {
                header: header(3),
                key: long_key.clone(),
                value: b"v".to_vec(),
            })
            .await,
            Invalid,
            bad,
        );
        expect_error(
            kv.put(PutRequest {
                header: header(4),
                key: b"k".to_vec(),
                value: big_value.clone(),
            })
            .await,
            Invalid,
            bad,
        );
        expect_error(
            kv.get(GetRequest {
                header: header(5),
                key: long_key.clone(),
            })
            .await,
            Invalid,
            bad,
        );
        let too_many: Vec<KeyValue> = (0..=MULTI_KEYS_MAX)
            .map(|i| KeyValue {
                key: format!("m{i}").into_bytes(),
                value: b"v".to_vec(),
            })
            .collect();
        expect_error(
            kv.multi_put(MultiPutRequest {
                header: header(6),
                pairs: too_many,
            })
            .await,
            Invalid,
            bad,
        );
        let keys: Vec<Vec<u8>> = (0..=MULTI_KEYS_MAX)
            .map(|i| format!("m{i}").into_bytes())
            .collect();
        expect_error(
            kv.multi_get(MultiGetRequest {
                header: header(7),
                keys,
            })
            .await,
            Invalid,
            bad,
        );
        expect_error(
            kv.multi_put(MultiPutRequest {
                header: header(8),
                pairs: vec![],
            })
            .await,
            Invalid,
            bad,
        );
        expect_error(
            kv.compare_and_swap(CompareAndSwapRequest {
                header: header(9),
                key: b"k".to_vec(),
                expected: None,
                new_value: big_value,
            })
            .await,
            Invalid,
            bad,
        );
        expect_error(
            kv.put(PutRequest {
                header: None,
                key: b"k".to_vec(),
                value: b"v".to_vec(),
            })
            .await,
            Invalid,
            bad,
        );
        // An execution error is reported as such and changes nothing either.
        expect_error(
            kv.increment(IncrementRequest {
                header: header(10),
                key: b"k".to_vec(),
                by: 1,
            })
            .await,
            tonic::Code::FailedPrecondition,
            Kind::Execution,
        );
        let value = kv
            .get(GetRequest {
                header: header(11),
                key: b"k".to_vec(),
            })
            .await
            .expect("read")
            .into_inner();
        assert_eq!(value.value.expect("value").value, b"original");
        let absent = kv
            .get(GetRequest {
                header: header(12),
                key: b"m0".to_vec(),
            })
            .await
            .expect("read")
            .into_inner();
        assert!(
            !absent.value.expect("value").present,
            "the refused multi-put wrote nothing"
        );
        // Reads need no header (no session); writes do, and are told so.
        let headerless = kv
            .get(GetRequest {
                header: None,
                key: b"k".to_vec(),
            })
            .await
            .expect("a read without a header")
            .into_inner();
        assert_eq!(headerless.value.expect("value").value, b"original");
        let values = kv
            .multi_get(MultiGetRequest {
                header: None,
                keys: vec![b"k".to_vec(), b"m0".to_vec()],
            })
            .await
            .expect("a multi-read without a header")
            .into_inner();
        assert_eq!(values.values.len(), 2);
        let refused = kv
            .put(PutRequest {
                header: None,
                key: b"k".to_vec(),
                value: b"v".to_vec(),
            })
            .await
            .expect_err("a write without a header");
        assert!(
            refused.message().contains("client_id") && refused.message().contains("seq"),
            "{}",
            refused.message()
        );

        // A follower redirects to the leader's client address.
        let follower = (1..=3).find(|id| *id != leader).expect("follower");
        let addr = test.cluster.members()[&follower].client_addr.clone();
        let mut kv = KvClient::connect(format!("http://{addr}"))
            .await
            .expect("connect");
        let status = kv
            .put(PutRequest {
                header: header(13),
                key: b"k".to_vec(),
                value: b"v".to_vec(),
            })
            .await
            .expect_err("a follower does not take writes");
        let detail = error_detail(&status).expect("detail");
        assert_eq!(detail.kind, Kind::NotLeader as i32);
        assert_eq!(detail.leader_id, leader);
        assert_eq!(
            detail.leader_client_addr,
            test.cluster.members()[&leader].client_addr
        );
    }
}

/// Opens a `Calls` stream to `addr`: where to send calls, and the answers.
async fn call_stream(
    addr: &str,
) -> (
    tokio::sync::mpsc::Sender<Call>,
    tonic::Streaming<CallResult>,
) {
    let mut kv = KvClient::connect(format!("http://{addr}"))
        .await
        .expect("connect")
        // As a client in another language might: no limit of its own on
        // what it sends.
        .max_encoding_message_size(usize::MAX);
    let (calls, queued) = tokio::sync::mpsc::channel(256);
    let answers = kv
        .calls(tokio_stream::wrappers::ReceiverStream::new(queued))
        .await
        .expect("a call stream")
        .into_inner();
    (calls, answers)
}

/// Sends call `id` with `request` on a call stream.
async fn send(calls: &tokio::sync::mpsc::Sender<Call>, id: u64, request: Option<call::Request>) {
    calls.send(Call { id, request }).await.expect("sent");
}

/// The next `n` answers of a call stream, by call id.
async fn answers(
    stream: &mut tonic::Streaming<CallResult>,
    n: usize,
) -> std::collections::BTreeMap<u64, call_result::Answer> {
    let mut by_id = std::collections::BTreeMap::new();
    while by_id.len() < n {
        let result = tokio::time::timeout(Duration::from_secs(10), stream.message())
            .await
            .expect("answered in time")
            .expect("the stream holds")
            .expect("an answer before the end");
        let answer = result.answer.expect("an answer has content");
        assert!(
            by_id.insert(result.id, answer).is_none(),
            "one answer per id"
        );
    }
    by_id
}

fn call_error(answer: &call_result::Answer) -> ErrorDetail {
    let call_result::Answer::Error(error) = answer else {
        panic!("an error, not {answer:?}");
    };
    let status = tonic::Status::with_details(
        tonic::Code::from(error.code),
        error.message.clone(),
        error.details.clone().into(),
    );
    error_detail(&status).expect("a machine-readable detail")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn calls_on_one_stream_are_answered_by_id_as_their_unary_methods_answer() {
    let test = TestCluster::start(Protocol::Optimized, 3);
    let (leader, _) = test.leader().await;
    let leader_addr = test.cluster.members()[&leader].client_addr.clone();
    let (calls, mut stream) = call_stream(&leader_addr).await;
    let put = |i: u64| {
        call::Request::Put(PutRequest {
            header: header(i),
            key: format!("k{i}").into_bytes(),
            value: format!("v{i}").into_bytes(),
        })
    };
    // Many writes in flight at once, then an invalid one and an empty call.
    for i in 1..=50 {
        send(&calls, 1000 + i, Some(put(i))).await;
    }
    let empty_key = call::Request::Put(PutRequest {
        header: header(51),
        key: vec![],
        value: b"v".to_vec(),
    });
    send(&calls, 7, Some(empty_key)).await;
    send(&calls, 8, None).await;
    let written = answers(&mut stream, 52).await;
    for i in 1..=50 {
        assert!(
            matches!(
                written[&(1000 + i)],
                call_result::Answer::Write(WriteAck {
                    durable_only: false,
                    ..
                })
            ),
            "{:?}",
            written[&(1000 + i)]
        );
    }
    for id in [7, 8] {
        assert_eq!(call_error(&written[&id]).kind, Kind::InvalidArgument as i32);
    }
    // Each read's answer carries its own id and its own key's value.
    for i in 1..=50 {
        let get = call::Request::Get(GetRequest {
            header: header(100 + i),
            key: format!("k{i}").into_bytes(),
        });
        send(&calls, 2000 + i, Some(get)).await;
    }
    let read = answers(&mut stream, 50).await;
    for i in 1..=50 {
        let call_result::Answer::Get(GetResponse { value: Some(value) }) = &read[&(2000 + i)]
        else {
            panic!("a value, not {:?}", read[&(2000 + i)]);
        };
        assert_eq!(value.value, format!("v{i}").into_bytes());
    }
    // The caller closes its side: the node answers what it has read, then
    // ends the stream.
    send(&calls, 9, Some(put(200))).await;
    drop(calls);
    let last = answers(&mut stream, 1).await;
    assert!(
        matches!(last[&9], call_result::Answer::Write(_)),
        "{last:?}"
    );
    let end = tokio::time::timeout(Duration::from_secs(10), stream.message())
        .await
        .expect("ended in time");
    assert!(matches!(end, Ok(None)), "{end:?}");

    // A follower's answer redirects, with the leader's client address.
    let follower = (1..=3).find(|id| *id != leader).expect("follower");
    let (calls, mut stream) = call_stream(&test.cluster.members()[&follower].client_addr).await;
    send(&calls, 1, Some(put(300))).await;
    let detail = call_error(&answers(&mut stream, 1).await[&1]);
    assert_eq!(detail.kind, Kind::NotLeader as i32);
    assert_eq!(detail.leader_client_addr, leader_addr);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_peer_of_another_cluster_is_refused() {
    let test = TestCluster::start(PROTOCOLS[0], 3);
    test.leader().await;
    let peer_addr = test.cluster.members()[&1].peer_addr.clone();
    let peer = RaftPeerClient::connect(format!("http://{peer_addr}"))
        .await
        .expect("connect");
    let batch = PeerBatch {
        cluster_id: "another-cluster".into(),
        from: 2,
        ..Default::default()
    };
    let refused = |batch: PeerBatch| {
        let mut peer = peer.clone();
        async move {
            let call = peer.stream(tokio_stream::iter(vec![batch]));
            let status = tokio::time::timeout(Duration::from_secs(5), call)
                .await
                .expect("answered in time")
                .expect_err("refused");
            assert_eq!(status.code(), tonic::Code::PermissionDenied);
            status.message().to_string()
        }
    };
    let message = refused(batch).await;
    assert!(message.contains("another-cluster"), "{message}");
    // A node of this cluster that is neither in its configuration nor
    // known to it is refused too.
    let status = test.cluster.status(1).await.expect("node 1 answers");
    let stranger = PeerBatch {
        cluster_id: status.cluster_id,
        from: 9,
        ..Default::default()
    };
    let message = refused(stranger).await;
    assert!(message.contains("not a member"), "{message}");
    // The node is unharmed.
    test.leader().await;
}

/// Runs kvnode to completion (it must exit by itself) and returns its exit
/// code and standard error.
fn run_kvnode(args: &[&str], data_dir: &Path) -> (i32, String) {
    let mut child = Process::new(kvnode())
        .args(args)
        .arg("--data-dir")
        .arg(data_dir)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("start kvnode");
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    loop {
        if let Some(status) = child.try_wait().expect("wait") {
            let mut stderr = String::new();
            use std::io::Read;
            child
                .stderr
                .take()
                .expect("stderr")
                .read_to_string(&mut stderr)
                .expect("read");
            return (status.code().unwrap_or(-1), stderr);
        }
        if std::time::Instant::now() > deadline {
            let _ = child.kill();
            panic!("kvnode did not exit on a bad start");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn bad_data_directories_and_settings_give_clear_errors() {
    let dir = tempfile::tempdir().expect("tempdir");
    let ports = kvnode::local_cluster::free_ports(2).expect("ports");
    let peers = format!("1=127.0.0.1:{}/127.0.0.1:{}", ports[0], ports[1]);
    let base = ["--id", "1", "--peers", peers.as_str()];
    let with = |extra: &[&'static str]| -> Vec<&str> {
        let mut args: Vec<&str> = base.to_vec();
        args.extend_from_slice(extra);
        args
    };
    let no_panic = |stderr: &str| assert!(!stderr.contains("panicked"), "{stderr}");

    // A data directory made by one cluster and protocol...
    let data = dir.path().join("node");
    std::fs::create_dir_all(&data).expect("mkdir");
    {
        // Create it, then stop the node (it runs until signalled).
        let mut child = Process::new(kvnode())
            .args(with(&[
                "--protocol",
                "vanilla",
                "--cluster-id",
                "alpha",
                "--initial-cluster-state",
                "new",
            ]))
            .arg("--data-dir")
            .arg(&data)
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .expect("start");
        let deadline = std::time::Instant::now() + Duration::from_secs(20);
        while !data.join("CURRENT").exists() && std::time::Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(50));
        }
        std::thread::sleep(Duration::from_millis(300));
        nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(child.id() as i32),
            nix::sys::signal::Signal::SIGTERM,
        )
        .expect("signal");
        let status = child.wait().expect("wait");
        assert!(
            status.success(),
            "graceful shutdown on SIGTERM exits 0: {status}"
        );
    }
    // ... is refused to another cluster ...
    let (code, stderr) = run_kvnode(
        &with(&["--protocol", "vanilla", "--cluster-id", "beta"]),
        &data,
    );
    assert_eq!(code, 1, "{stderr}");
    assert!(
        stderr.contains("cluster id") && stderr.contains("alpha"),
        "{stderr}"
    );
    no_panic(&stderr);
    // ... and to another protocol.
    let (code, stderr) = run_kvnode(
        &with(&["--protocol", "optimized", "--cluster-id", "alpha"]),
        &data,
    );
    assert_eq!(code, 1, "{stderr}");
    assert!(
        stderr.contains("belongs to protocol \"vanilla\""),
        "{stderr}"
    );
    no_panic(&stderr);

    // A corrupt directory.
    std::fs::write(data.join("CURRENT"), "MANIFEST-424242\n").expect("corrupt");
    let (code, stderr) = run_kvnode(
        &with(&["--protocol", "vanilla", "--cluster-id", "alpha"]),
        &data,
    );
    assert_eq!(code, 1, "{stderr}");
    assert!(stderr.contains("cannot open data directory"), "{stderr}");
    no_panic(&stderr);

    // A directory that is not a kvnode directory at all.
    let foreign = dir.path().join("photos");
    std::fs::create_dir_all(&foreign).expect("mkdir");
    std::fs::write(foreign.join("cat.jpg"), "meow").expect("write");
    let (code, stderr) = run_kvnode(&with(&["--protocol", "vanilla"]), &foreign);
    assert_eq!(code, 1, "{stderr}");
    assert!(stderr.contains("not a kvnode data directory"), "{stderr}");
    no_panic(&stderr);

    // Bad flags.
    let (code, stderr) = run_kvnode(&with(&["--protocol", "paxos"]), &dir.path().join("x"));
    assert_eq!(code, 1, "{stderr}");
    assert!(stderr.contains("unknown protocol"), "{stderr}");
    let (code, stderr) = run_kvnode(
        &with(&["--protocol", "vanilla", "--initial-cluster-state", "old"]),
        &dir.path().join("x"),
    );
    assert_eq!(code, 1, "{stderr}");
    assert!(stderr.contains("use new or existing"), "{stderr}");
}

/// Issue 14, defect 7: a member whose data directory was wiped must not
/// rejoin as a voter that forgot its votes and its log; it is refused with
/// a clear error. (Before, it started, empty, as a voter.) The first start
/// of a new cluster, every directory empty, still works: every test's
/// cluster starts so.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_member_whose_data_was_wiped_is_refused() {
    let mut test = TestCluster::start(Protocol::Optimized, 3);
    let mut client = test.client(Duration::from_secs(10));
    client.put("k", "v").await.expect("write");
    let (leader, _) = test.leader().await;
    let wiped = if leader == 3 { 2 } else { 3 };
    test.cluster.kill(wiped);
    let data = test.cluster.data_dir(wiped).expect("member").to_path_buf();
    std::fs::remove_dir_all(&data).expect("wipe");
    test.cluster.start_node(wiped).expect("spawn");
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    while test.cluster.is_running(wiped) {
        assert!(
            std::time::Instant::now() < deadline,
            "node {wiped}, wiped, kept running"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let log = std::fs::read_to_string(test.cluster.log_file(wiped)).expect("log");
    assert!(
        log.contains("holds no data") && log.contains("must not rejoin as a voter"),
        "{log}"
    );
    assert!(!data.join("CURRENT").exists(), "nothing was initialized");
    // The cluster goes on with the other two.
    client
        .put("k", "w")
        .await
        .expect("write without the wiped member");
}

/// Issue 14, defect 10: a second kvnode on a data directory in use refuses
/// to start, with a clear error, and leaves the first one unharmed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_process_on_a_data_directory_in_use_is_refused() {
    let test = TestCluster::start(Protocol::Vanilla, 3);
    test.leader().await;
    let data = test.cluster.data_dir(1).expect("member");
    let peers = test.cluster.peers_flag();
    let (code, stderr) = run_kvnode(
        &["--protocol", "vanilla", "--id", "1", "--peers", &peers],
        data,
    );
    assert_eq!(code, 1, "{stderr}");
    assert!(stderr.contains("in use by another process"), "{stderr}");
    test.leader().await;
}

/// Issue 14, defect 9: a panic in any task ends the process (before, tokio
/// caught it and the node went on half alive).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_panic_in_a_task_ends_the_process() {
    let mut test = TestCluster::start_with_flags(Protocol::Optimized, 3, &["--fault-injection"]);
    test.leader().await;
    let addr = test.cluster.members()[&2].client_addr.clone();
    let mut admin = proto::kv::admin_client::AdminClient::connect(format!("http://{addr}"))
        .await
        .expect("connect");
    admin.panic(PanicRequest {}).await.expect("asked to panic");
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while test.cluster.is_running(2) {
        assert!(
            std::time::Instant::now() < deadline,
            "node 2 still runs after a task panicked"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let log = std::fs::read_to_string(test.cluster.log_file(2)).expect("log");
    assert!(log.contains("a panic ends the process"), "{log}");
    // The others go on.
    test.leader().await;
}

/// Issue 14, defect 6: a call over the request limit on a `Calls` stream
/// fails alone, with INVALID_ARGUMENT and its detail; the calls sharing the
/// stream, before and after it, are answered. (Before, it was over gRPC's
/// decoding limit and ended the stream, failing every call on it.)
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_oversized_call_fails_alone_on_its_stream() {
    let test = TestCluster::start(Protocol::Optimized, 3);
    let (leader, _) = test.leader().await;
    let leader_addr = test.cluster.members()[&leader].client_addr.clone();
    let (calls, mut stream) = call_stream(&leader_addr).await;
    let put = |seq: u64, value: Vec<u8>| {
        call::Request::Put(PutRequest {
            header: header(seq),
            key: format!("k{seq}").into_bytes(),
            value,
        })
    };
    send(&calls, 1, Some(put(1, b"small".to_vec()))).await;
    let over = consensus::limits::REQUEST_BYTES_MAX + (1 << 20);
    send(&calls, 2, Some(put(2, vec![7; over]))).await;
    send(&calls, 3, Some(put(3, b"small too".to_vec()))).await;
    let answered = answers(&mut stream, 3).await;
    let detail = call_error(&answered[&2]);
    assert_eq!(detail.kind, Kind::InvalidArgument as i32, "{detail:?}");
    assert!(detail.message.contains("exceeds"), "{}", detail.message);
    for id in [1, 3] {
        assert!(
            matches!(answered[&id], call_result::Answer::Write(_)),
            "call {id}: {:?}",
            answered[&id]
        );
    }
    // The stream still carries calls.
    let get = call::Request::Get(GetRequest {
        header: header(4),
        key: b"k3".to_vec(),
    });
    send(&calls, 4, Some(get)).await;
    let read = answers(&mut stream, 1).await;
    assert!(matches!(read[&4], call_result::Answer::Get(_)), "{read:?}");
}

//! What generic tools see of a node: gRPC health (`grpc.health.v1`) and
//! server reflection, through their own clients, with no kv.proto.

mod common;

use std::time::{Duration, Instant};

use common::{PROTOCOLS, TestCluster};
use tonic_health::pb::HealthCheckRequest;
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::health_client::HealthClient;
use tonic_reflection::pb::v1::ServerReflectionRequest;
use tonic_reflection::pb::v1::server_reflection_client::ServerReflectionClient;
use tonic_reflection::pb::v1::server_reflection_request::MessageRequest;
use tonic_reflection::pb::v1::server_reflection_response::MessageResponse;

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn health_and_reflection_answer_generic_clients() {
    let mut test = TestCluster::start(PROTOCOLS[1], 3);
    test.leader().await;
    let addr = format!("http://{}", test.cluster.members()[&1].client_addr);

    // Health: serving once a leader is known, for the server and for kv.Kv.
    let channel = tonic::transport::Endpoint::from_shared(addr)
        .expect("address")
        .connect()
        .await
        .expect("connect");
    let mut health = HealthClient::new(channel.clone());
    for service in ["", "kv.Kv"] {
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            let status = health
                .check(HealthCheckRequest {
                    service: service.into(),
                })
                .await
                .expect("health check")
                .into_inner()
                .status;
            if status == ServingStatus::Serving as i32 {
                break;
            }
            assert!(Instant::now() < deadline, "{service:?} serving");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
    // With the other two nodes gone, node 1 knows no leader for long: not
    // serving.
    test.cluster.kill(2);
    test.cluster.kill(3);
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let status = health
            .check(HealthCheckRequest {
                service: "kv.Kv".into(),
            })
            .await
            .expect("health check")
            .into_inner()
            .status;
        if status == ServingStatus::NotServing as i32 {
            break;
        }
        assert!(Instant::now() < deadline, "not serving without a leader");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    // Reflection: the services, and the description of kv.Kv's methods.
    let mut reflection = ServerReflectionClient::new(channel);
    let ask = |request| ServerReflectionRequest {
        host: String::new(),
        message_request: Some(request),
    };
    let mut answers = reflection
        .server_reflection_info(tokio_stream::iter(vec![
            ask(MessageRequest::ListServices(String::new())),
            ask(MessageRequest::FileContainingSymbol("kv.Kv".into())),
        ]))
        .await
        .expect("reflection")
        .into_inner();
    let Some(Ok(first)) = answers.next().await else {
        panic!("a list of services");
    };
    let Some(MessageResponse::ListServicesResponse(list)) = first.message_response else {
        panic!("a list of services: {first:?}");
    };
    let names: Vec<String> = list.service.into_iter().map(|s| s.name).collect();
    for expected in ["kv.Kv", "grpc.health.v1.Health"] {
        assert!(
            names.iter().any(|n| n == expected),
            "{expected} in {names:?}"
        );
    }
    let Some(Ok(second)) = answers.next().await else {
        panic!("kv.proto's descriptor");
    };
    let Some(MessageResponse::FileDescriptorResponse(files)) = second.message_response else {
        panic!("a file descriptor: {second:?}");
    };
    assert!(!files.file_descriptor_proto.is_empty());
    let bytes = &files.file_descriptor_proto[0];
    assert!(
        bytes
            .windows(b"ChangeMembership".len())
            .any(|w| w == b"ChangeMembership"),
        "kv.proto's descriptor names its methods"
    );
}

use tokio_stream::StreamExt as _;

/// `--log-format json`: one JSON object per line, elections at info.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn logs_are_json_lines_on_request() {
    let mut test = TestCluster::start_with_flags(PROTOCOLS[0], 3, &["--log-format", "json"]);
    let (leader, _) = test.leader().await;
    test.cluster.kill_all();
    let log = std::fs::read_to_string(test.cluster.log_file(leader)).expect("the node's log");
    let lines: Vec<serde_json::Value> = log
        .lines()
        .map(|line| serde_json::from_str(line).unwrap_or_else(|e| panic!("{e}: {line}")))
        .collect();
    assert!(
        lines.iter().any(|l| l["level"] == "INFO"
            && l["fields"]["message"]
                .as_str()
                .is_some_and(|m| m.contains("became leader"))),
        "an info line says node {leader} became leader:\n{log}"
    );
}

/// A Python environment with grpcio, grpcio-status and grpcio-tools, made
/// once per machine beside the build directory; `None` (the test says so
/// loudly and skips) when python3 or PyPI is not reachable.
fn python_with_grpc() -> Option<std::path::PathBuf> {
    let venv = std::path::Path::new("/var/tmp/raftstore-pyenv");
    let python = venv.join("bin/python3");
    let ready = |python: &std::path::Path| {
        std::process::Command::new(python)
            .args(["-c", "import grpc, grpc_status, grpc_tools"])
            .status()
            .is_ok_and(|s| s.success())
    };
    if ready(&python) {
        return Some(python);
    }
    let made = std::process::Command::new("python3")
        .args(["-m", "venv"])
        .arg(venv)
        .status()
        .is_ok_and(|s| s.success());
    let installed = made
        && std::process::Command::new(venv.join("bin/pip"))
            .args(["install", "-q", "--timeout", "30"])
            .args(["grpcio", "grpcio-status", "grpcio-tools"])
            .status()
            .is_ok_and(|s| s.success());
    (installed && ready(&python)).then_some(python)
}

/// Errors in the standard form: a Python client generated from kv.proto
/// reads `kv.ErrorDetail` with grpcio-status, its standard status library.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_python_client_reads_error_details_with_its_standard_library() {
    let Some(python) = python_with_grpc() else {
        eprintln!(
            "SKIPPED: no python3 with grpcio, grpcio-status and grpcio-tools, and they could not \
             be installed from PyPI into /var/tmp/raftstore-pyenv"
        );
        return;
    };
    let test = TestCluster::start(PROTOCOLS[1], 3);
    let (leader, _) = test.leader().await;
    let follower = (1..=3).find(|&id| id != leader).expect("a follower");
    let members = test.cluster.members();
    let proto_dir = concat!(env!("CARGO_MANIFEST_DIR"), "/../proto/proto");
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/../scripts/standard-errors.py");
    let output = std::process::Command::new(python)
        .arg(script)
        .arg(proto_dir)
        .arg(&members[&leader].client_addr)
        .arg(&members[&follower].client_addr)
        .output()
        .expect("run the Python client");
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "{stdout}\n{stderr}");
    assert!(stdout.contains("standard status details read"), "{stdout}");
}

/// `--metrics-addr`: Prometheus's text format, read by a Prometheus text
/// parser, with the node's role, term, indexes, syncs and requests.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn metrics_are_served_in_prometheus_text_format() {
    let port = kvnode::local_cluster::free_ports(1).expect("a port")[0];
    let addr = format!("127.0.0.1:{port}");
    // Nil-ext, so that the writes take the fast path.
    // A snapshot every 10 entries, so that the 20 writes take some.
    let flags = ["--metrics-addr", &addr, "--snapshot-entries", "10"];
    let test = TestCluster::start_with_flags(PROTOCOLS[2], 1, &flags);
    test.leader().await;
    // A fast-path timeout long enough that a loaded machine does not send
    // writes to the slow path (the count below is exact).
    let options = kvclient::ClientOptions {
        timeout: Duration::from_secs(5),
        fast_path_timeout: Duration::from_secs(2),
        ..kvclient::ClientOptions::default()
    };
    let mut client = kvclient::Client::new(test.cluster.endpoints(), options).expect("endpoints");
    for i in 0..20 {
        client
            .put(format!("k{i}"), b"v".to_vec())
            .await
            .expect("put");
    }
    client.get("k1").await.expect("get");
    // The gauges follow the status every 500 ms.
    let deadline = Instant::now() + Duration::from_secs(5);
    let scraped = loop {
        let scraped = scrape(&addr).await;
        let leader = scraped.samples.iter().any(|s| {
            s.metric == "kvnode_role"
                && s.labels.get("role") == Some("leader")
                && matches!(s.value, prometheus_parse::Value::Gauge(v) if v == 1.0)
        });
        if leader {
            break scraped;
        }
        assert!(Instant::now() < deadline, "the role gauge shows the leader");
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let value = |name: &str, label: Option<(&str, &str)>| {
        scraped
            .samples
            .iter()
            .filter(|s| s.metric == name)
            .filter(|s| label.is_none_or(|(k, v)| s.labels.get(k) == Some(v)))
            .map(|s| match &s.value {
                prometheus_parse::Value::Counter(v)
                | prometheus_parse::Value::Gauge(v)
                | prometheus_parse::Value::Untyped(v) => *v,
                prometheus_parse::Value::Histogram(buckets) => {
                    buckets.last().map_or(0.0, |b| b.count)
                }
                _ => 0.0,
            })
            .sum::<f64>()
    };
    assert!(value("kvnode_term", None) >= 1.0);
    assert!(value("kvnode_log_index", Some(("which", "commit"))) >= 20.0);
    assert!(value("kvnode_requests_total", Some(("kind", "put"))) >= 20.0);
    let fast = value("kvnode_requests_total", Some(("path", "fast")));
    let ordered = value("kvnode_requests_total", Some(("path", "ordered")));
    eprintln!("fast-path requests: {fast}, ordered: {ordered}");
    // A session's first write takes the slow path; the other 19 the fast.
    assert!(fast >= 19.0);
    assert!(value("kvnode_requests_total", Some(("path", "ordered"))) >= 1.0);
    assert!(value("kvnode_requests_total", Some(("outcome", "ok"))) >= 21.0);
    assert!(value("kvnode_synced_writes_total", None) >= 20.0);
    assert!(
        value("kvnode_sync_seconds", None) >= 20.0,
        "the sync histogram counts"
    );
    assert_eq!(value("kvnode_members", Some(("kind", "voters"))), 1.0);
    // What the syncs made durable: every log entry (the 20 writes, ordered),
    // and on the fast path, durability-log records.
    assert!(value("kvnode_log_appended_total", Some(("unit", "entries"))) >= 20.0);
    assert!(
        value("kvnode_log_appended_total", Some(("unit", "bytes")))
            > value("kvnode_log_appended_total", Some(("unit", "entries")))
    );
    assert!(value("kvnode_writes_per_sync", Some(("what", "log_entries"))) >= 1.0);
    assert!(value("kvnode_writes_per_sync", Some(("what", "durable_records"))) >= 1.0);
    assert!(value("kvnode_log_bytes", None) > 0.0);
    assert!(value("kvnode_snapshots_total", Some(("event", "taken"))) >= 1.0);
    let records = scraped
        .samples
        .iter()
        .any(|s| s.metric == "kvnode_durability_log" && s.labels.get("unit") == Some("records"));
    assert!(records, "Nil-ext's durability-log length is shown");
}

/// As leader, a node reports each follower's match index and lag.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_leader_reports_each_followers_lag() {
    // Port 0: each node picks one and logs it.
    let flags = ["--metrics-addr", "127.0.0.1:0", "--log-format", "json"];
    let test = TestCluster::start_with_flags(PROTOCOLS[1], 3, &flags);
    let (leader, _) = test.leader().await;
    let mut client = test.client(Duration::from_secs(5));
    for i in 0..10 {
        client
            .put(format!("k{i}"), b"v".to_vec())
            .await
            .expect("put");
    }
    let addr = test.logged_addr(leader, "serving metrics");
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let scraped = scrape(&addr).await;
        let followers: Vec<(String, f64)> = scraped
            .samples
            .iter()
            .filter(|s| s.metric == "kvnode_follower_match_index")
            .filter_map(|s| match s.value {
                prometheus_parse::Value::Gauge(v) => {
                    Some((s.labels.get("follower").unwrap_or("").to_string(), v))
                }
                _ => None,
            })
            .collect();
        if followers.len() == 2 && followers.iter().all(|(_, matched)| *matched >= 10.0) {
            assert!(followers.iter().all(|(f, _)| *f != leader.to_string()));
            // The leader's batches: the writes went out in AppendEntries
            // messages with entries.
            let batches = scraped
                .samples
                .iter()
                .find(|s| s.metric == "kvnode_append_entries_batch")
                .map(|s| match &s.value {
                    prometheus_parse::Value::Histogram(buckets) => buckets.clone(),
                    _ => Vec::new(),
                })
                .expect("the batch-size histogram");
            let all = buckets_count(&batches, f64::INFINITY);
            let empty = buckets_count(&batches, 0.0);
            assert!(all - empty >= 1.0, "messages with entries: {batches:?}");
            break;
        }
        assert!(
            Instant::now() < deadline,
            "two followers with their match index: {followers:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// The count of a histogram's bucket whose bound is `le`.
fn buckets_count(buckets: &[prometheus_parse::HistogramCount], le: f64) -> f64 {
    buckets
        .iter()
        .find(|b| b.less_than == le)
        .map_or(0.0, |b| b.count)
}

/// `GET /metrics` at `addr`, parsed by a Prometheus text parser.
async fn scrape(addr: &str) -> prometheus_parse::Scrape {
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
    let mut stream = tokio::net::TcpStream::connect(addr).await.expect("connect");
    stream
        .write_all(b"GET /metrics HTTP/1.0\r\nHost: localhost\r\n\r\n")
        .await
        .expect("request");
    let mut response = String::new();
    stream
        .read_to_string(&mut response)
        .await
        .expect("response");
    let (head, body) = response.split_once("\r\n\r\n").expect("a body");
    assert!(
        head.starts_with("HTTP/1.0 200") || head.starts_with("HTTP/1.1 200"),
        "{head}"
    );
    prometheus_parse::Scrape::parse(body.lines().map(|l| Ok(l.to_string())))
        .expect("Prometheus text format")
}

//! A tiny comparison end to end: real clusters of every protocol built, a
//! few seconds of load, and a report that must be complete and well-formed.

use std::process::Command;

#[test]
fn a_tiny_comparison_writes_a_complete_report() {
    let out = tempfile::tempdir().expect("tempdir");
    let protocols = ["vanilla", "optimized", "nilext"];
    let status = Command::new(env!("CARGO_BIN_EXE_bench"))
        .args([
            "compare",
            "--duration",
            "500ms",
            "--warmup",
            "0",
            "--clients",
            "1,2",
        ])
        .args([
            "--workloads",
            "write,read-recent",
            "--availability-clients",
            "2",
        ])
        .args(["--availability-duration", "2s", "--keys", "100"])
        .args(["--redis-benchmark-requests", "300"])
        // Two clients on one set of connections: calls side by side on one
        // connection per node, on every path (fast path, redirects, leader kill).
        .args(["--conns", "1"])
        .args(["--protocols", &protocols.join(",")])
        .arg("--out")
        .arg(out.path())
        .status()
        .expect("run bench");
    assert!(status.success(), "bench compare failed: {status}");

    let json: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(out.path().join("results.json")).expect("results.json"),
    )
    .expect("valid JSON");
    let runs = json["runs"].as_array().expect("runs");
    assert_eq!(
        runs.len(),
        protocols.len() * 2 * 2,
        "every protocol x workload x client count"
    );
    for run in runs {
        assert!(
            run["ops"].as_u64().expect("ops") > 0,
            "every run completed operations: {run}"
        );
        for field in [
            "throughput",
            "p50_ms",
            "p90_ms",
            "p99_ms",
            "p999_ms",
            "cpu_seconds_per_1000_ops",
        ] {
            assert!(run[field].as_f64().expect(field) >= 0.0);
        }
        assert_eq!(
            run["syncs_per_second"].as_array().expect("per node").len(),
            3
        );
        assert!(run["p50_ms"].as_f64() <= run["p99_ms"].as_f64());
    }
    let availability = json["availability"].as_array().expect("availability");
    assert_eq!(availability.len(), protocols.len());
    for a in availability {
        assert!(
            a["time_to_first_write_ms"].as_u64().is_some(),
            "writes resumed after the leader kill: {a}"
        );
        assert!(!a["timeline"].as_array().expect("timeline").is_empty());
    }

    let markdown = std::fs::read_to_string(out.path().join("report.md")).expect("report.md");
    for needle in [
        "| workload | protocol | clients | ops/s",
        "sharing 1 connection(s) per node",
        "Throughput relative to vanilla",
        "Availability",
        "read-recent",
    ] {
        assert!(
            markdown.contains(needle),
            "report.md lacks {needle:?}:\n{markdown}"
        );
    }
    for protocol in protocols {
        assert!(markdown.contains(&format!("| write | {protocol} | 2 |")));
    }
    let html = std::fs::read_to_string(out.path().join("report.html")).expect("report.html");
    assert!(html.starts_with("<!doctype html>") && html.ends_with("</html>"));
    assert!(
        html.matches("<svg").count() >= 3,
        "plots for throughput, latency and the leader kill"
    );
    assert_eq!(html.matches("<svg").count(), html.matches("</svg>").count());
    // Axes as a reader expects them: the nines evenly spaced and labelled,
    // the kill marked on the timeline, axis titles.
    let texts: Vec<&str> = html
        .split("<text")
        .skip(1)
        .filter_map(|t| t.split_once('>')?.1.split_once("</text>"))
        .map(|(text, _)| text.trim())
        .collect();
    for label in [
        "p50",
        "p90",
        "p99",
        "p99.9",
        "leader killed at 0.7 s",
        "clients (log scale)",
        "latency, ms (log scale)",
    ] {
        assert!(
            texts.contains(&label),
            "the plots label {label:?}: {texts:?}"
        );
    }

    // redis-benchmark's figures beside bench's own (when the tool is there;
    // compare installs it from redis-tools when it can).
    if kvnode::local_cluster::debian_tool("redis-benchmark", "redis-tools").is_ok() {
        let results = json["redis_benchmark"].as_array().expect("redis_benchmark");
        assert_eq!(
            results.len(),
            2 * protocols.len(),
            "SET and GET per protocol"
        );
        assert!(results.iter().all(|r| r["rps"].as_f64() > Some(0.0)));
        assert!(markdown.contains("redis-benchmark through the Redis-protocol endpoint"));
    } else {
        eprintln!("WARNING: redis-benchmark not available: its part of the report is not checked");
    }
}

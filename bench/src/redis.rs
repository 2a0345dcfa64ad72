//! redis-benchmark (Debian's redis-tools), a load generator nobody here
//! wrote, against the leader's Redis-protocol endpoint (`--resp-addr`):
//! its SET and GET figures go into the report beside bench's own.

use std::time::Duration;

use anyhow::Context as _;
use kvnode::local_cluster::LocalCluster;
use serde::Serialize;

use crate::compare::CompareSpec;

/// The log line in which a node says where its endpoint listens.
const SERVING: &str = "serving the Redis protocol";

/// One redis-benchmark test (SET or GET) against one protocol.
#[derive(Clone, Debug, Serialize)]
pub struct RedisBenchmarkResult {
    /// The protocol.
    pub protocol: String,
    /// redis-benchmark's test: SET or GET.
    pub test: String,
    /// Its connections (`-c`).
    pub clients: usize,
    /// Its requests (`-n`).
    pub requests: u64,
    /// Requests per second, as redis-benchmark reports them.
    pub rps: f64,
    /// Latency, milliseconds, as redis-benchmark reports it.
    pub avg_ms: f64,
    /// See `avg_ms`.
    pub p50_ms: f64,
    /// See `avg_ms`.
    pub p95_ms: f64,
    /// See `avg_ms`.
    pub p99_ms: f64,
    /// See `avg_ms`.
    pub max_ms: f64,
}

/// The flag that makes a node serve the Redis protocol (on a port of its
/// choosing, which it logs).
pub const NODE_FLAG: &str = "--resp-addr=127.0.0.1:0";

/// The redis-benchmark binary, or why there is none (installed from
/// redis-tools when missing and possible).
pub fn tool() -> Result<std::path::PathBuf, String> {
    kvnode::local_cluster::debian_tool("redis-benchmark", "redis-tools")
}

/// Runs redis-benchmark's SET and GET tests against the leader of
/// `cluster` with `clients` connections.
pub async fn measure(
    tool: &std::path::Path,
    spec: &CompareSpec,
    protocol: &str,
    cluster: &LocalCluster,
    clients: usize,
) -> anyhow::Result<Vec<RedisBenchmarkResult>> {
    let (leader, _) = cluster
        .wait_for_leader(Duration::from_secs(20))
        .await
        .context("no leader for redis-benchmark")?;
    let addr = cluster.logged_addr(leader, SERVING).with_context(|| {
        format!(
            "node {leader} logged no Redis-protocol address (\"{SERVING}\" in {})",
            cluster.log_file(leader).display()
        )
    })?;
    let (host, port) = addr.rsplit_once(':').context("HOST:PORT")?;
    let requests = spec.redis_benchmark_requests;
    // Bounded: at 50 requests/s it would still finish; a stuck run is
    // killed with an error rather than waited for.
    let limit = Duration::from_secs(60 + 2 * requests / 50);
    let mut command = tokio::process::Command::new(tool);
    command
        .args(["-h", host, "-p", port, "-t", "set,get", "--csv"])
        .args(["-n", &requests.to_string(), "-c", &clients.to_string()])
        .args(["-r", &spec.keys.to_string()])
        .args(["-d", &spec.value_bytes.to_string()])
        .kill_on_drop(true);
    let output = tokio::time::timeout(limit, command.output())
        .await
        .with_context(|| format!("redis-benchmark did not finish within {limit:?}"))?
        .context("cannot run redis-benchmark")?;
    let stdout = String::from_utf8_lossy(&output.stdout);
    anyhow::ensure!(
        output.status.success(),
        "redis-benchmark failed ({}): {stdout}{}",
        output.status,
        String::from_utf8_lossy(&output.stderr)
    );
    let results = parse_csv(&stdout, protocol, clients, requests);
    anyhow::ensure!(
        results.len() == 2,
        "redis-benchmark's output has no SET and GET lines: {stdout}"
    );
    Ok(results)
}

/// redis-benchmark's `--csv` lines: `"test","rps","avg_latency_ms",
/// "min_latency_ms","p50_latency_ms","p95_latency_ms","p99_latency_ms",
/// "max_latency_ms"`, a header first.
fn parse_csv(
    text: &str,
    protocol: &str,
    clients: usize,
    requests: u64,
) -> Vec<RedisBenchmarkResult> {
    text.lines()
        .filter_map(|line| {
            let fields: Vec<&str> = line.split(',').map(|f| f.trim_matches('"')).collect();
            let [test, rps, avg, _min, p50, p95, p99, max] = fields[..] else {
                return None;
            };
            let number = |s: &str| s.parse::<f64>().ok();
            Some(RedisBenchmarkResult {
                protocol: protocol.to_string(),
                test: test.to_string(),
                clients,
                requests,
                rps: number(rps)?,
                avg_ms: number(avg)?,
                p50_ms: number(p50)?,
                p95_ms: number(p95)?,
                p99_ms: number(p99)?,
                max_ms: number(max)?,
            })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_redis_benchmarks_csv() {
        let text = "\"test\",\"rps\",\"avg_latency_ms\",\"min_latency_ms\",\"p50_latency_ms\",\"p95_latency_ms\",\"p99_latency_ms\",\"max_latency_ms\"\n\
                    \"SET\",\"34013.61\",\"1.386\",\"0.424\",\"1.319\",\"2.031\",\"2.975\",\"9.367\"\n\
                    \"GET\",\"69444.45\",\"0.621\",\"0.064\",\"0.607\",\"0.871\",\"1.071\",\"4.639\"\n";
        let results = parse_csv(text, "optimized", 50, 20_000);
        assert_eq!(results.len(), 2);
        assert_eq!(results[0].test, "SET");
        assert_eq!(results[0].rps, 34013.61);
        assert_eq!(results[1].test, "GET");
        assert_eq!(results[1].p99_ms, 1.071);
    }
}

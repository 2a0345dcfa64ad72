//! `bench compare`: for each protocol, a fresh local cluster of real node
//! processes (RocksDB, fsync on), the same workloads, and a report.

use consensus::config::{Protocol, ReadMode, format_duration};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use anyhow::Context;
use indicatif::{MultiProgress, ProgressBar, ProgressStyle};
use kvnode::local_cluster::{LocalCluster, data_dirs_under};
use serde::Serialize;

use crate::load::{self, LoadSpec, TIMELINE_BUCKET};
use crate::metrics;
use crate::target::TargetSpec;
use crate::workload::{Distribution, Workload};

/// Settings of one comparison.
#[derive(Clone, Debug, Serialize)]
pub struct CompareSpec {
    /// Protocols to compare, in order.
    #[serde(serialize_with = "names")]
    pub protocols: Vec<Protocol>,
    /// Workloads to run on each.
    pub workloads: Vec<Workload>,
    /// Client counts to run each workload with.
    pub clients: Vec<usize>,
    /// Measured time per run.
    pub duration: Duration,
    /// Unmeasured time before each run.
    pub warmup: Duration,
    /// Nodes per cluster.
    pub nodes: u64,
    /// Value size.
    pub value_bytes: usize,
    /// Distinct keys.
    pub keys: u64,
    /// Key distribution.
    pub distribution: Distribution,
    /// One-way delay added to every peer and client message.
    #[serde(serialize_with = "duration")]
    pub net_delay: Duration,
    /// Jitter on that delay.
    #[serde(serialize_with = "duration")]
    pub net_jitter: Duration,
    /// Open-loop rate (total ops/s), or closed loop.
    pub rate: Option<f64>,
    /// Connection sets the clients share (0: a connection per client).
    pub connections: usize,
    /// Clients in the leader-kill run (0: skip it).
    pub availability_clients: usize,
    /// Length of the leader-kill run; the leader dies at a third of it.
    pub availability_duration: Duration,
    /// Also restart every node in turn (SIGTERM, then start) under write
    /// load, with `availability_clients` clients, once with leaders handing
    /// leadership over on SIGTERM and once without.
    pub rolling_restart: bool,
    /// Read mode of raft-optimized and raft-nilext.
    #[serde(serialize_with = "name")]
    pub read_mode: ReadMode,
    /// Extra flags for every node.
    pub node_flags: Vec<String>,
    /// One directory per node to keep its data in (empty: all under the
    /// run's working directory).
    pub node_dirs: Vec<PathBuf>,
    /// Also run the workloads against a local etcd cluster, first, and show
    /// every protocol's ratio to it.
    pub etcd: bool,
    /// The durability settings to run every protocol with, in order
    /// (`--durability sync|memory|both`).
    #[serde(serialize_with = "durability_names")]
    pub durabilities: Vec<consensus::config::Durability>,
    /// Requests of each redis-benchmark test (SET, GET) against each
    /// protocol's leader, through its Redis-protocol endpoint (0: none).
    pub redis_benchmark_requests: u64,
}

/// One measured run.
#[derive(Clone, Debug, Serialize)]
pub struct RunResult {
    /// The protocol.
    pub protocol: String,
    /// The workload's name.
    pub workload: String,
    /// Concurrent clients.
    pub clients: usize,
    /// Successful operations.
    pub ops: u64,
    /// Of which writes.
    pub writes: u64,
    /// Failed or timed-out operations.
    pub errors: u64,
    /// Measured seconds.
    pub seconds: f64,
    /// Operations per second.
    pub throughput: f64,
    /// Latency percentiles, milliseconds.
    pub p50_ms: f64,
    /// See `p50_ms`.
    pub p90_ms: f64,
    /// See `p50_ms`.
    pub p99_ms: f64,
    /// See `p50_ms`.
    pub p999_ms: f64,
    /// Synced write batches per second, per node.
    pub syncs_per_second: Vec<f64>,
    /// Client writes per synced batch, per node.
    pub writes_per_sync: Vec<f64>,
    /// Of the state-machine reads of all nodes during the run, the share
    /// their read caches answered (`None`: no read, or not this store).
    pub cache_hit_ratio: Option<f64>,
    /// CPU seconds of all node processes per 1,000 operations.
    pub cpu_seconds_per_1000_ops: f64,
    /// Highest resident memory of each node during the run, MiB.
    pub rss_mib_max: Vec<f64>,
    /// Each node's data directory at the end of the run, MiB.
    pub data_mib_end: Vec<f64>,
    /// Resident memory and data directories, sampled every second.
    pub memory: Vec<crate::metrics::MemorySample>,
}

/// The leader-kill run of one protocol.
#[derive(Clone, Debug, Serialize)]
pub struct AvailabilityResult {
    /// The protocol.
    pub protocol: String,
    /// Clients writing.
    pub clients: usize,
    /// When the leader was killed, ms from the start.
    pub kill_at_ms: u64,
    /// From the kill to the completion of the first write issued after it, ms.
    pub time_to_first_write_ms: Option<u64>,
    /// Throughput before the kill, ops/s.
    pub throughput_before: f64,
    /// Lowest throughput of a 100 ms bucket after the kill, as ops/s.
    pub throughput_dip: f64,
    /// Throughput in the last second, ops/s.
    pub throughput_after: f64,
    /// Operations per 100 ms bucket.
    pub timeline: Vec<u64>,
}

/// A rolling restart of one protocol: each node in turn gets SIGTERM and
/// is started again, under write load.
#[derive(Clone, Debug, Serialize)]
pub struct RollingRestartResult {
    /// The protocol.
    pub protocol: String,
    /// Whether a leader handed leadership over on SIGTERM
    /// (`--hand-over-on-stop`).
    pub hand_over: bool,
    /// Clients writing.
    pub clients: usize,
    /// When each node got SIGTERM, ms from the start (node 1 first).
    pub restarts_at_ms: Vec<u64>,
    /// The longest time, from the first SIGTERM to the end of the run, in
    /// which no write completed, ms.
    pub longest_gap_ms: u64,
    /// Writes that failed or timed out.
    pub errors: u64,
    /// Throughput before the first SIGTERM, ops/s.
    pub throughput_before: f64,
    /// Lowest throughput of a 100 ms bucket after it, as ops/s.
    pub throughput_dip: f64,
    /// Operations per 100 ms bucket.
    pub timeline: Vec<u64>,
}

/// Everything a comparison measured.
#[derive(Clone, Debug, Serialize)]
pub struct Report {
    /// The settings.
    pub spec: CompareSpec,
    /// Every run.
    pub runs: Vec<RunResult>,
    /// Every leader-kill run.
    pub availability: Vec<AvailabilityResult>,
    /// Every rolling restart.
    pub rolling_restarts: Vec<RollingRestartResult>,
    /// redis-benchmark's figures.
    pub redis_benchmark: Vec<crate::redis::RedisBenchmarkResult>,
    /// The machine's cores, for context.
    pub cores: usize,
}

fn names<S: serde::Serializer>(protocols: &[Protocol], s: S) -> Result<S::Ok, S::Error> {
    s.collect_seq(protocols.iter().map(|p| p.name()))
}

fn durability_names<S: serde::Serializer>(
    durabilities: &[consensus::config::Durability],
    s: S,
) -> Result<S::Ok, S::Error> {
    s.collect_seq(durabilities.iter().map(|d| d.name()))
}

fn name<S: serde::Serializer>(mode: &ReadMode, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(mode.name())
}

fn duration<S: serde::Serializer>(duration: &Duration, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(&format_duration(*duration))
}

fn node_flags(spec: &CompareSpec, protocol: Protocol) -> Vec<String> {
    let mut flags = spec.node_flags.clone();
    if !spec.net_delay.is_zero() || !spec.net_jitter.is_zero() {
        flags.push(format!("--net-delay={}", format_duration(spec.net_delay)));
        flags.push(format!("--net-jitter={}", format_duration(spec.net_jitter)));
    }
    // Nil-ext reads through raft-optimized's read path: the same mode.
    if protocol.has_read_modes() {
        flags.push(format!("--read-mode={}", spec.read_mode));
    }
    if spec.redis_benchmark_requests > 0 {
        flags.push(crate::redis::NODE_FLAG.into());
    }
    flags
}

async fn start_cluster(
    exe: &Path,
    spec: &CompareSpec,
    protocol: Protocol,
    dir: &Path,
    data_dirs: Vec<PathBuf>,
) -> anyhow::Result<LocalCluster> {
    let flags = node_flags(spec, protocol);
    let flags: Vec<&str> = flags.iter().map(String::as_str).collect();
    let cluster = LocalCluster::start_in(exe, &["node"], protocol, dir, data_dirs, &flags)
        .with_context(|| format!("cannot start a {protocol} cluster"))?;
    if cluster
        .wait_for_leader(Duration::from_secs(20))
        .await
        .is_none()
    {
        anyhow::bail!(
            "the {protocol} cluster elected no leader within 20 s; node logs are in {}",
            dir.join("logs").display()
        );
    }
    Ok(cluster)
}

/// Checks that `spec.node_dirs` is empty or names one existing directory per
/// node (before anything runs, so a typo does not cost a run).
fn check_node_dirs(spec: &CompareSpec) -> anyhow::Result<()> {
    if spec.node_dirs.is_empty() {
        return Ok(());
    }
    anyhow::ensure!(
        spec.node_dirs.len() as u64 == spec.nodes,
        "--node-dirs names {} directories for {} nodes; give one per node",
        spec.node_dirs.len(),
        spec.nodes
    );
    for dir in &spec.node_dirs {
        anyhow::ensure!(
            dir.is_dir(),
            "--node-dirs: {} is not an existing directory",
            dir.display()
        );
    }
    Ok(())
}

/// Fresh data directories for one protocol's nodes: under `dir`, or one in
/// each of `spec.node_dirs` (checked by [`check_node_dirs`]). The guards
/// remove the latter when dropped.
fn node_data_dirs(
    spec: &CompareSpec,
    protocol: &str,
    dir: &Path,
) -> anyhow::Result<(Vec<PathBuf>, Vec<tempfile::TempDir>)> {
    if spec.node_dirs.is_empty() {
        return Ok((data_dirs_under(dir, spec.nodes), Vec::new()));
    }
    let guards = spec
        .node_dirs
        .iter()
        .zip(1..)
        .map(|(root, id)| {
            tempfile::Builder::new()
                .prefix(&format!("bench-{protocol}-node{id}-"))
                .tempdir_in(root)
                .with_context(|| {
                    format!(
                        "cannot create node {id}'s data directory in {} (it must be an existing, writable directory)",
                        root.display()
                    )
                })
        })
        .collect::<anyhow::Result<Vec<_>>>()?;
    Ok((
        guards.iter().map(|g| g.path().to_path_buf()).collect(),
        guards,
    ))
}

fn percentile_ms(h: &hdrhistogram::Histogram<u64>, q: f64) -> f64 {
    if h.is_empty() {
        return 0.0;
    }
    h.value_at_quantile(q) as f64 / 1000.0
}

fn bar(multi: &MultiProgress, len: u64, message: String) -> ProgressBar {
    let bar = multi.add(ProgressBar::new(len));
    bar.set_style(
        ProgressStyle::with_template("{spinner} {msg:40} [{bar:30}] {pos}/{len} s  {prefix}")
            .unwrap_or_else(|_| ProgressStyle::default_bar())
            .progress_chars("=> "),
    );
    bar.set_message(message);
    bar
}

/// Runs the comparison, printing progress, and returns the report.
/// What to read counters from around a run.
enum Probe<'a> {
    /// This project's nodes: syncs from Status, CPU from /proc.
    Store(&'a LocalCluster),
    /// Other processes (etcd): CPU from /proc only.
    Pids(Vec<u32>),
}

impl Probe<'_> {
    /// The processes and data directories to sample memory from, in node
    /// order.
    fn memory_targets(&self) -> (Vec<Option<u32>>, Vec<Option<PathBuf>>) {
        match self {
            Probe::Store(cluster) => cluster
                .members()
                .keys()
                .map(|&id| (cluster.pid(id), cluster.data_dir(id).map(Path::to_path_buf)))
                .unzip(),
            Probe::Pids(pids) => (
                pids.iter().map(|&p| Some(p)).collect(),
                vec![None; pids.len()],
            ),
        }
    }

    async fn snapshot(&self) -> metrics::Snapshot {
        match self {
            Probe::Store(cluster) => metrics::snapshot(cluster).await,
            Probe::Pids(pids) => metrics::Snapshot {
                syncs: Default::default(),
                cache: Default::default(),
                cpu: pids
                    .iter()
                    .enumerate()
                    .filter_map(|(i, pid)| metrics::cpu_seconds(*pid).map(|c| (i as u64 + 1, c)))
                    .collect(),
            },
        }
    }
}

/// Runs every workload and client count of `spec` against `target` as
/// `name`, after a warm-up each.
async fn measure_all(
    spec: &CompareSpec,
    name: &str,
    target: &TargetSpec,
    probe: &Probe<'_>,
    multi: &MultiProgress,
    runs: &mut Vec<RunResult>,
) -> anyhow::Result<()> {
    for workload in &spec.workloads {
        if matches!(target, TargetSpec::Etcd(_)) && !workload_runs_on_etcd(workload) {
            continue;
        }
        for &clients in &spec.clients {
            let label = format!("{name} {} x{clients}", workload.name());
            let load_spec = LoadSpec {
                workload: workload.clone(),
                clients,
                duration: spec.duration,
                value_bytes: spec.value_bytes,
                keys: spec.keys,
                distribution: spec.distribution,
                rate: spec.rate,
                op_timeout: Duration::from_secs(5),
                connections: spec.connections,
            };
            if !spec.warmup.is_zero() {
                let warm = LoadSpec {
                    duration: spec.warmup,
                    ..load_spec.clone()
                };
                load::run(target, &warm, |_, _| {}).await?;
            }
            let progress = bar(multi, spec.duration.as_secs().max(1), label);
            let before = probe.snapshot().await;
            let (pids, dirs) = probe.memory_targets();
            let stop_sampling = Arc::new(AtomicBool::new(false));
            let sampler = tokio::spawn(metrics::sample_memory(
                pids,
                dirs,
                Duration::from_secs(1),
                stop_sampling.clone(),
            ));
            let result = load::run(target, &load_spec, |elapsed, done| {
                progress.set_position(elapsed.as_secs());
                progress.set_prefix(format!("{done} ops"));
            })
            .await;
            stop_sampling.store(true, Ordering::Relaxed);
            let memory = sampler.await.unwrap_or_default();
            let result = result?;
            let after = probe.snapshot().await;
            let nodes = memory.first().map_or(0, |m| m.rss_mib.len());
            let rss_mib_max = (0..nodes)
                .map(|i| memory.iter().map(|m| m.rss_mib[i]).fold(0.0, f64::max))
                .collect();
            let data_mib_end = memory
                .last()
                .map(|m| m.data_mib.clone())
                .unwrap_or_default();
            progress.finish_with_message(format!(
                "{name} {} x{clients}: {:.0} ops/s",
                workload.name(),
                result.throughput()
            ));
            let seconds = result.elapsed.as_secs_f64();
            let mut syncs_per_second = Vec::new();
            let mut writes_per_sync = Vec::new();
            for (id, after_syncs) in &after.syncs {
                let synced = after_syncs.saturating_sub(*before.syncs.get(id).unwrap_or(&0));
                syncs_per_second.push(synced as f64 / seconds);
                writes_per_sync.push(if synced == 0 {
                    0.0
                } else {
                    result.writes as f64 / synced as f64
                });
            }
            let (mut hits, mut misses) = (0, 0);
            for (id, (after_hits, after_misses)) in &after.cache {
                let (before_hits, before_misses) = before.cache.get(id).copied().unwrap_or((0, 0));
                hits += after_hits.saturating_sub(before_hits);
                misses += after_misses.saturating_sub(before_misses);
            }
            let cache_hit_ratio = (hits + misses > 0).then(|| hits as f64 / (hits + misses) as f64);
            let cpu: f64 = after
                .cpu
                .iter()
                .map(|(id, c)| c - before.cpu.get(id).copied().unwrap_or(*c))
                .sum();
            runs.push(RunResult {
                protocol: name.to_string(),
                workload: workload.name(),
                clients,
                ops: result.ops,
                writes: result.writes,
                errors: result.errors,
                seconds,
                throughput: result.throughput(),
                p50_ms: percentile_ms(&result.latency_us, 0.5),
                p90_ms: percentile_ms(&result.latency_us, 0.9),
                p99_ms: percentile_ms(&result.latency_us, 0.99),
                p999_ms: percentile_ms(&result.latency_us, 0.999),
                syncs_per_second,
                writes_per_sync,
                cache_hit_ratio,
                cpu_seconds_per_1000_ops: if result.ops == 0 {
                    0.0
                } else {
                    cpu / result.ops as f64 * 1000.0
                },
                rss_mib_max,
                data_mib_end,
                memory,
            });
        }
    }
    Ok(())
}

/// A system's name in the report: the protocol, and `/memory` for
/// `--durability memory` (it promises less, and every row says so).
pub fn system_label(protocol: Protocol, durability: consensus::config::Durability) -> String {
    match durability {
        consensus::config::Durability::Sync => protocol.name().to_string(),
        consensus::config::Durability::Memory => format!("{}/memory", protocol.name()),
    }
}

/// The etcd target runs puts, gets and deletes: not compare-and-swap
/// (YCSB F) nor increments.
fn workload_runs_on_etcd(workload: &Workload) -> bool {
    !matches!(workload, Workload::YcsbF | Workload::NonNilext { .. })
}

/// Runs the comparison, printing progress, and returns the report.
pub async fn run(spec: &CompareSpec, exe: &Path, work_dir: &Path) -> anyhow::Result<Report> {
    check_node_dirs(spec)?;
    let multi = MultiProgress::new();
    let mut runs = Vec::new();
    let mut availability = Vec::new();
    let mut rolling_restarts = Vec::new();
    let mut redis_benchmark = Vec::new();
    let redis_tool = match spec.redis_benchmark_requests {
        0 => None,
        _ => crate::redis::tool()
            .inspect_err(|why| {
                eprintln!("WARNING: redis-benchmark's figures are left out of this report: {why}");
            })
            .ok(),
    };
    if spec.etcd {
        let dir = work_dir.join("etcd");
        std::fs::create_dir_all(&dir)?;
        let etcd = crate::etcd::EtcdCluster::start(&dir, spec.nodes as usize).await?;
        let target = TargetSpec::Etcd(etcd.endpoints());
        measure_all(
            spec,
            "etcd",
            &target,
            &Probe::Pids(etcd.pids()),
            &multi,
            &mut runs,
        )
        .await?;
    }
    for &durability in &spec.durabilities {
        // Memory mode is always named: its figures promise less.
        let durable = {
            let mut flagged = spec.clone();
            flagged
                .node_flags
                .push(format!("--durability={durability}"));
            flagged
        };
        for &protocol in &spec.protocols {
            let label = system_label(protocol, durability);
            let dir = work_dir.join(&label);
            std::fs::create_dir_all(&dir)?;
            let (data_dirs, _removed_after_the_run) = node_data_dirs(spec, &label, &dir)?;
            let mut cluster = start_cluster(exe, &durable, protocol, &dir, data_dirs).await?;
            let target = TargetSpec::Store(cluster.endpoints());
            measure_all(
                spec,
                &label,
                &target,
                &Probe::Store(&cluster),
                &multi,
                &mut runs,
            )
            .await?;
            if let Some(tool) = &redis_tool {
                // As many connections as bench's largest client count, to set
                // its figures beside bench's own.
                let clients = spec.clients.iter().copied().max().unwrap_or(50);
                let progress = bar(&multi, 1, format!("{label} redis-benchmark x{clients}"));
                let measured = crate::redis::measure(tool, spec, &label, &cluster, clients).await?;
                progress.finish_with_message(format!(
                    "{label} redis-benchmark x{clients}: {}",
                    measured
                        .iter()
                        .map(|r| format!("{} {:.0} ops/s", r.test, r.rps))
                        .collect::<Vec<_>>()
                        .join(", ")
                ));
                redis_benchmark.extend(measured);
            }
            if spec.availability_clients > 0 {
                availability.push(leader_kill(spec, &mut cluster, &label, &multi).await?);
            }
            cluster.kill_all();
            if spec.rolling_restart && spec.availability_clients > 0 {
                for hand_over in [true, false] {
                    let name = format!(
                        "{}-rolling-{}",
                        &label,
                        if hand_over {
                            "hand-over"
                        } else {
                            "no-hand-over"
                        }
                    );
                    let dir = work_dir.join(&name);
                    std::fs::create_dir_all(&dir)?;
                    let (data_dirs, _removed_after_the_run) = node_data_dirs(spec, &name, &dir)?;
                    let mut flagged = durable.clone();
                    flagged
                        .node_flags
                        .push(format!("--hand-over-on-stop={hand_over}"));
                    let cluster = start_cluster(exe, &flagged, protocol, &dir, data_dirs).await?;
                    rolling_restarts
                        .push(rolling_restart(spec, cluster, &label, hand_over, &multi).await?);
                }
            }
        }
    }
    Ok(Report {
        spec: spec.clone(),
        runs,
        availability,
        rolling_restarts,
        redis_benchmark,
        cores: std::thread::available_parallelism().map_or(1, |n| n.get()),
    })
}

async fn leader_kill(
    spec: &CompareSpec,
    cluster: &mut LocalCluster,
    protocol: &str,
    multi: &MultiProgress,
) -> anyhow::Result<AvailabilityResult> {
    let target = TargetSpec::Store(cluster.endpoints());
    let load_spec = LoadSpec {
        workload: Workload::Write,
        clients: spec.availability_clients,
        duration: spec.availability_duration,
        value_bytes: spec.value_bytes,
        keys: spec.keys,
        distribution: spec.distribution,
        rate: None,
        op_timeout: Duration::from_secs(10),
        connections: spec.connections,
    };
    let kill_at = spec.availability_duration / 3;
    let progress = bar(
        multi,
        spec.availability_duration.as_secs().max(1),
        format!("{protocol} leader kill"),
    );
    let statuses = cluster.statuses().await;
    let leader = statuses
        .iter()
        .filter(|(_, s)| s.role == "leader")
        .max_by_key(|(_, s)| s.term)
        .map(|(id, _)| *id);
    let mut killed_at = None;
    // The kill happens from the load's progress callback, at `kill_at`; the
    // callback cannot await, so it only signals the process directly.
    let pid = leader.and_then(|id| cluster.pid(id));
    let result = load::run(&target, &load_spec, |elapsed, _| {
        progress.set_position(elapsed.as_secs());
        if killed_at.is_none()
            && elapsed >= kill_at
            && let Some(pid) = pid
        {
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(pid as i32),
                nix::sys::signal::Signal::SIGKILL,
            );
            killed_at = Some(elapsed);
        }
    })
    .await?;
    if let Some(id) = leader {
        cluster.kill(id);
    }
    progress.finish_with_message(format!("{protocol} leader kill done"));
    let kill_ms = killed_at.unwrap_or(kill_at).as_millis() as u64;
    // The first write issued after the kill to succeed: writes already in
    // flight at the kill say nothing about the new leader.
    let first_after = result
        .write_completions_ms
        .iter()
        .filter(|(started, _)| u64::from(*started) >= kill_ms)
        .map(|(_, done)| u64::from(*done) - kill_ms)
        .min();
    let bucket_ms = TIMELINE_BUCKET.as_millis() as u64;
    let per_second = |ops: u64| ops as f64 * 1000.0 / bucket_ms as f64;
    let kill_bucket = (kill_ms / bucket_ms) as usize;
    let before: Vec<u64> = result
        .timeline
        .iter()
        .take(kill_bucket)
        .skip(2)
        .copied()
        .collect();
    let throughput_before = if before.is_empty() {
        0.0
    } else {
        per_second(before.iter().sum::<u64>()) / before.len() as f64
    };
    let full_buckets = result.timeline.len().saturating_sub(1);
    let after: Vec<u64> = result.timeline[kill_bucket.min(full_buckets)..full_buckets].to_vec();
    let throughput_dip = after.iter().copied().min().map_or(0.0, per_second);
    let last: Vec<u64> = after.iter().rev().take(10).copied().collect();
    let throughput_after = if last.is_empty() {
        0.0
    } else {
        per_second(last.iter().sum::<u64>()) / last.len() as f64
    };
    Ok(AvailabilityResult {
        protocol: protocol.to_string(),
        clients: spec.availability_clients,
        kill_at_ms: kill_ms,
        time_to_first_write_ms: first_after,
        throughput_before,
        throughput_dip,
        throughput_after,
        timeline: result.timeline,
    })
}

/// Seconds between two restarts of a rolling restart.
const RESTART_EVERY: Duration = Duration::from_secs(3);

async fn rolling_restart(
    spec: &CompareSpec,
    mut cluster: LocalCluster,
    protocol: &str,
    hand_over: bool,
    multi: &MultiProgress,
) -> anyhow::Result<RollingRestartResult> {
    let nodes = spec.nodes;
    let duration = RESTART_EVERY * (nodes as u32 + 1);
    let target = TargetSpec::Store(cluster.endpoints());
    let load_spec = LoadSpec {
        workload: Workload::Write,
        clients: spec.availability_clients,
        duration,
        value_bytes: spec.value_bytes,
        keys: spec.keys,
        distribution: spec.distribution,
        rate: None,
        op_timeout: Duration::from_secs(10),
        connections: spec.connections,
    };
    let label = if hand_over { "with" } else { "without" };
    let progress = bar(
        multi,
        duration.as_secs(),
        format!("{protocol} rolling restart, {label} hand-over"),
    );
    // Every node in turn, RESTART_EVERY apart: SIGTERM, wait until it has
    // stopped (a leader hands over first, when asked to), start it again.
    let started = tokio::time::Instant::now();
    let restarter = tokio::spawn(async move {
        let mut at = Vec::new();
        for id in 1..=nodes {
            tokio::time::sleep_until(started + RESTART_EVERY * id as u32).await;
            at.push(started.elapsed().as_millis() as u64);
            let _ = cluster.signal(id, nix::sys::signal::Signal::SIGTERM);
            let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
            while cluster.exited().iter().all(|(node, _)| *node != id)
                && tokio::time::Instant::now() < deadline
            {
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
            cluster.kill(id);
            cluster.start_node(id)?;
        }
        anyhow::Ok((cluster, at))
    });
    let result = load::run(&target, &load_spec, |elapsed, _| {
        progress.set_position(elapsed.as_secs());
    })
    .await?;
    let (mut cluster, restarts_at_ms) = restarter.await??;
    cluster.kill_all();
    progress.finish_with_message(format!("{protocol} rolling restart {label} hand-over done"));
    let first = restarts_at_ms.first().copied().unwrap_or(0);
    let end = result.elapsed.as_millis() as u64;
    let mut completions: Vec<u64> = result
        .write_completions_ms
        .iter()
        .map(|&(_, done)| u64::from(done))
        .filter(|&done| done >= first)
        .collect();
    completions.sort_unstable();
    let longest_gap_ms = std::iter::once(first)
        .chain(completions)
        .chain(std::iter::once(end))
        .collect::<Vec<u64>>()
        .windows(2)
        .map(|w| w[1] - w[0])
        .max()
        .unwrap_or(0);
    let bucket_ms = TIMELINE_BUCKET.as_millis() as u64;
    let per_second = |ops: u64| ops as f64 * 1000.0 / bucket_ms as f64;
    let first_bucket = (first / bucket_ms) as usize;
    let before: Vec<u64> = result
        .timeline
        .iter()
        .take(first_bucket)
        .skip(2)
        .copied()
        .collect();
    let throughput_before = if before.is_empty() {
        0.0
    } else {
        per_second(before.iter().sum::<u64>()) / before.len() as f64
    };
    let full_buckets = result.timeline.len().saturating_sub(1);
    let throughput_dip = result.timeline[first_bucket.min(full_buckets)..full_buckets]
        .iter()
        .copied()
        .min()
        .map_or(0.0, per_second);
    Ok(RollingRestartResult {
        protocol: protocol.to_string(),
        hand_over,
        clients: spec.availability_clients,
        restarts_at_ms,
        longest_gap_ms,
        errors: result.errors,
        throughput_before,
        throughput_dip,
        timeline: result.timeline,
    })
}

/// Where the report files go.
pub fn write_report(report: &Report, out_dir: &Path) -> anyhow::Result<Vec<PathBuf>> {
    std::fs::create_dir_all(out_dir)
        .with_context(|| format!("cannot create {}", out_dir.display()))?;
    let json = out_dir.join("results.json");
    std::fs::write(&json, serde_json::to_string_pretty(report)?)?;
    let markdown = out_dir.join("report.md");
    std::fs::write(&markdown, crate::report::markdown(report))?;
    let html = out_dir.join("report.html");
    std::fs::write(&html, crate::report::html(report))?;
    Ok(vec![markdown, html, json])
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// A small spec for tests.
    pub(crate) fn spec(nodes: u64, node_dirs: Vec<PathBuf>) -> CompareSpec {
        CompareSpec {
            protocols: vec![Protocol::Optimized],
            workloads: vec![Workload::Write],
            clients: vec![1],
            duration: Duration::from_secs(1),
            warmup: Duration::ZERO,
            nodes,
            value_bytes: 100,
            keys: 10,
            distribution: Distribution::Uniform,
            net_delay: Duration::ZERO,
            net_jitter: Duration::ZERO,
            rate: None,
            connections: 1,
            availability_clients: 0,
            availability_duration: Duration::from_secs(1),
            rolling_restart: false,
            read_mode: ReadMode::Lease,
            node_flags: Vec::new(),
            node_dirs,
            etcd: false,
            durabilities: vec![consensus::config::Durability::Sync],
            redis_benchmark_requests: 0,
        }
    }

    #[test]
    fn without_node_dirs_every_node_keeps_its_data_under_the_run_directory() {
        let run = Path::new("/work/run/optimized");
        let (dirs, guards) = node_data_dirs(&spec(3, Vec::new()), "optimized", run).unwrap();
        assert_eq!(
            dirs,
            vec![run.join("node1"), run.join("node2"), run.join("node3")]
        );
        assert!(guards.is_empty());
    }

    #[test]
    fn node_dirs_give_each_node_a_fresh_directory_removed_after_the_run() {
        let roots: Vec<tempfile::TempDir> = (0..3).map(|_| tempfile::tempdir().unwrap()).collect();
        let spec = spec(3, roots.iter().map(|r| r.path().to_path_buf()).collect());
        let (dirs, guards) = node_data_dirs(&spec, "nilext", Path::new("/unused")).unwrap();
        for (dir, root) in dirs.iter().zip(&roots) {
            assert_eq!(
                dir.parent(),
                Some(root.path()),
                "node {dir:?} in its own root"
            );
            assert!(dir.is_dir());
        }
        drop(guards);
        for dir in &dirs {
            assert!(!dir.exists(), "{dir:?} left behind");
        }
    }

    #[test]
    fn node_dirs_must_be_one_existing_directory_per_node() {
        let root = tempfile::tempdir().unwrap();
        let two = spec(3, vec![root.path().into(), root.path().into()]);
        let error = check_node_dirs(&two).unwrap_err();
        assert!(
            format!("{error:#}").contains("2 directories for 3 nodes"),
            "{error:#}"
        );

        let missing = root.path().join("no-such-disk");
        let absent = spec(1, vec![missing.clone()]);
        for error in [
            check_node_dirs(&absent).unwrap_err(),
            node_data_dirs(&absent, "optimized", root.path()).unwrap_err(),
        ] {
            assert!(
                format!("{error:#}").contains(&missing.display().to_string()),
                "{error:#}"
            );
        }
    }
}

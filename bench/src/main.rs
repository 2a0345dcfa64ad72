//! `bench`: the side-by-side comparison of the protocols, and a load
//! generator for any running cluster.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context;
use bench::compare::{self, CompareSpec};
use bench::load::{self, LoadSpec};
use bench::workload::{Distribution, Workload};
use clap::{Args, Parser, Subcommand};
use consensus::config::{Durability, Protocol, ReadMode, format_duration, parse_duration};

/// Measures the consensus protocols side by side on real local clusters.
#[derive(Parser, Debug)]
#[command(name = "bench", version)]
struct Cli {
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Subcommand, Debug)]
enum Cmd {
    /// Start a fresh 3-node cluster per protocol, run the same workloads on
    /// each, and write a report (markdown, HTML with plots, JSON).
    Compare(Box<CompareArgs>),
    /// Run one workload against a running cluster and print what it measured.
    Load(LoadArgs),
    /// A Jepsen-style fault run on a fresh local cluster: kills, pauses and
    /// partitions under concurrent register clients, then the history is
    /// checked for linearizability (exit code 1 on an anomaly).
    Nemesis(NemesisArgs),
    /// Run one node (the same flags as kvnode); `compare` starts its
    /// clusters this way.
    #[command(hide = true, disable_help_flag = true)]
    Node {
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        args: Vec<String>,
    },
}

#[derive(Args, Debug, Clone)]
struct WorkloadArgs {
    /// Value size in bytes.
    #[arg(long, default_value_t = 100)]
    value_size: usize,
    /// Number of distinct keys.
    #[arg(long, default_value_t = 10_000)]
    keys: u64,
    /// Key distribution: uniform or zipfian.
    #[arg(long, default_value = "uniform")]
    distribution: Distribution,
    /// Open loop: total operations per second (default: closed loop).
    #[arg(long)]
    rate: Option<f64>,
    /// Connections to each node that the clients share, as the clients of
    /// one process would (client i uses connection set i % N; calls are
    /// HTTP/2 streams side by side); 0 gives every client its own. Sharing
    /// leaves more of a shared machine's CPU to the nodes (like etcd's
    /// benchmark tool, whose --conns and --clients differ for this reason).
    #[arg(long, default_value_t = 4)]
    conns: usize,
}

#[derive(Args, Debug)]
struct CompareArgs {
    /// Protocols to compare.
    #[arg(
        long,
        value_delimiter = ',',
        default_value = "vanilla,optimized,nilext"
    )]
    protocols: Vec<Protocol>,
    /// Workloads: write, mixed-P, read-recent, ycsb-a, ycsb-b, ycsb-c, ycsb-d, ycsb-f, nonnilext-P.
    #[arg(
        long,
        value_delimiter = ',',
        default_value = "write,mixed-50,read-recent,ycsb-c"
    )]
    workloads: Vec<String>,
    /// Client counts to run each workload with.
    #[arg(long, value_delimiter = ',', default_value = "1,16,64")]
    clients: Vec<usize>,
    /// Measured time per run (e.g. 3s, 1m).
    #[arg(long, default_value = "3s", value_parser = parse_duration)]
    duration: Duration,
    /// Unmeasured time before each run.
    #[arg(long, default_value = "1s", value_parser = parse_duration)]
    warmup: Duration,
    /// Nodes per cluster: 3 or 5.
    #[arg(long, default_value_t = 3)]
    nodes: u64,
    /// One-way delay added to every peer and client message (e.g. 1ms).
    #[arg(long, default_value = "0", value_parser = parse_duration)]
    net_delay: Duration,
    /// Jitter on that delay (e.g. 200us).
    #[arg(long, default_value = "0", value_parser = parse_duration)]
    net_jitter: Duration,
    /// Clients in the leader-kill run (0 skips it).
    #[arg(long, default_value_t = 16)]
    availability_clients: usize,
    /// Length of the leader-kill run (the leader dies at a third).
    #[arg(long, default_value = "6s", value_parser = parse_duration)]
    availability_duration: Duration,
    /// Also restart every node in turn (SIGTERM, then start, 3 s apart)
    /// under write load with --availability-clients clients: once with
    /// leaders handing leadership over on SIGTERM, once without.
    #[arg(long)]
    rolling_restart: bool,
    /// Read mode of raft-optimized and raft-nilext: lease or read-index.
    #[arg(long, default_value_t = ReadMode::Lease)]
    read_mode: ReadMode,
    /// Where to write the report.
    #[arg(long, default_value = "bench-report")]
    out: PathBuf,
    /// Also measure a live peer: `etcd` runs the same workloads against a
    /// local etcd cluster (needs an etcd binary on PATH, e.g. Debian's
    /// etcd-server) and reports each protocol's ratio to it.
    #[arg(long)]
    target: Option<String>,
    /// sync (every log write fsynced: the default), memory (UNSAFE against
    /// the loss of a majority of machines: no fsync, the Skyros paper's
    /// setting; every row is labelled "/memory"), or both, side by side.
    #[arg(long, default_value = "sync", value_name = "sync|memory|both")]
    durability: String,
    /// Requests of each redis-benchmark test (SET, then GET) against each
    /// protocol's leader through its Redis-protocol endpoint, with as many
    /// connections as the largest --clients; its figures are shown beside
    /// bench's own (0 skips it; redis-benchmark comes from Debian's
    /// redis-tools, installed when missing, or left out with a warning).
    #[arg(long, default_value_t = 20_000)]
    redis_benchmark_requests: u64,
    /// Extra flags for every node (e.g. --node-flag=--tick=10ms).
    #[arg(long = "node-flag", allow_hyphen_values = true)]
    node_flags: Vec<String>,
    /// One existing directory per node, in node order, to keep each node's
    /// data in (for instance a disk per replica, as the Raft and Skyros
    /// papers measured); each run works in a fresh subdirectory that is
    /// removed afterwards. Default: every node under one temporary
    /// directory, so the replicas share a disk and its syncs.
    #[arg(long, value_delimiter = ',')]
    node_dirs: Vec<PathBuf>,
    #[command(flatten)]
    workload: WorkloadArgs,
}

#[derive(Args, Debug)]
struct LoadArgs {
    /// Client addresses of the cluster's nodes.
    #[arg(
        long,
        value_delimiter = ',',
        default_value = "127.0.0.1:6101,127.0.0.1:6102,127.0.0.1:6103"
    )]
    endpoints: Vec<String>,
    /// The workload.
    #[arg(long, default_value = "write")]
    workload: String,
    /// Concurrent clients.
    #[arg(long, default_value_t = 16)]
    clients: usize,
    /// How long to run (e.g. 10s).
    #[arg(long, default_value = "10s", value_parser = parse_duration)]
    duration: Duration,
    #[command(flatten)]
    workload_args: WorkloadArgs,
}

#[derive(Args, Debug)]
struct NemesisArgs {
    /// Protocols to run, one after the other.
    #[arg(
        long,
        value_delimiter = ',',
        default_value = "vanilla,optimized,nilext"
    )]
    protocols: Vec<Protocol>,
    /// Time of faults per protocol (e.g. 5m).
    #[arg(long, default_value = "5m", value_parser = parse_duration)]
    duration: Duration,
    /// Nodes per cluster: 3 or 5.
    #[arg(long, default_value_t = 3)]
    nodes: u64,
    /// Concurrent clients.
    #[arg(long, default_value_t = 6)]
    clients: usize,
    /// Seed of the fault schedule.
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// Fault schedules at once (each with its own seed): 2 makes faults
    /// overlap, a kill during another node's or the leader's pause.
    #[arg(long, default_value_t = 1)]
    schedules: usize,
    /// Read mode of raft-optimized and raft-nilext: read-index or lease
    /// (kvnode's default: read-index).
    #[arg(long)]
    read_mode: Option<ReadMode>,
    /// Where to keep node logs and, on an anomaly, the history.
    #[arg(long, default_value = "nemesis-runs")]
    out: PathBuf,
    /// Extra flags for every node (e.g. --node-flag=--snapshot-entries=500,
    /// so that snapshots are taken and sent under the faults).
    #[arg(long = "node-flag", allow_hyphen_values = true)]
    node_flags: Vec<String>,
}

async fn nemesis(args: NemesisArgs) -> anyhow::Result<bool> {
    let exe = std::env::current_exe().context("cannot find the bench executable")?;
    let mut all_passed = true;
    for &protocol in &args.protocols {
        let dir = args.out.join(protocol.name());
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir)?;
        let mut config = nemesis::NemesisConfig::new(protocol, args.duration);
        config.nodes = args.nodes;
        config.clients = args.clients;
        config.seed = args.seed;
        config.schedules = args.schedules;
        if let Some(mode) = args.read_mode
            && protocol.has_read_modes()
        {
            config.node_flags.push(format!("--read-mode={mode}"));
        }
        config.node_flags.extend(args.node_flags.iter().cloned());
        println!(
            "{protocol}: {} of faults on {} nodes, {} schedule(s) at once, reads by {}...",
            format_duration(args.duration),
            args.nodes,
            args.schedules,
            match (args.read_mode, protocol.has_read_modes()) {
                (_, false) => "the log".to_string(),
                (mode, true) => mode.unwrap_or_default().to_string(),
            }
        );
        let report = nemesis::run(&exe, &["node"], &dir, &config).await?;
        println!("{protocol}: {}", report.summary());
        if !report.converged {
            println!(
                "{protocol}: the nodes as last seen: {}",
                report.last_statuses
            );
        }
        if let Some(excerpt) = &report.excerpt {
            println!("{excerpt}");
        }
        if let Some(file) = &report.history_file {
            println!("history saved to {}", file.display());
        }
        all_passed &= report.passed();
    }
    Ok(all_passed)
}

fn workloads(names: &[String]) -> anyhow::Result<Vec<Workload>> {
    names
        .iter()
        .map(|n| Workload::parse(n).map_err(anyhow::Error::msg))
        .collect()
}

async fn compare(args: CompareArgs) -> anyhow::Result<()> {
    anyhow::ensure!(matches!(args.nodes, 3 | 5), "--nodes must be 3 or 5");
    anyhow::ensure!(
        !args.clients.is_empty() && args.clients.iter().all(|c| *c > 0),
        "--clients needs positive counts"
    );
    anyhow::ensure!(!args.duration.is_zero(), "--duration must be above 0");
    let spec = CompareSpec {
        protocols: args.protocols,
        workloads: workloads(&args.workloads)?,
        clients: args.clients,
        duration: args.duration,
        warmup: args.warmup,
        nodes: args.nodes,
        value_bytes: args.workload.value_size,
        keys: args.workload.keys,
        distribution: args.workload.distribution,
        net_delay: args.net_delay,
        net_jitter: args.net_jitter,
        rate: args.workload.rate,
        connections: args.workload.conns,
        availability_clients: args.availability_clients,
        availability_duration: args.availability_duration,
        rolling_restart: args.rolling_restart,
        read_mode: args.read_mode,
        node_flags: args.node_flags,
        node_dirs: args.node_dirs,
        etcd: match args.target.as_deref() {
            None => false,
            Some("etcd") => true,
            Some(other) => {
                anyhow::bail!("unknown --target {other:?}; the live peer supported is etcd")
            }
        },
        redis_benchmark_requests: args.redis_benchmark_requests,
        durabilities: match args.durability.as_str() {
            "both" => vec![Durability::Sync, Durability::Memory],
            one => vec![
                one.parse()
                    .map_err(|e: String| anyhow::anyhow!("--durability: {e}, or both"))?,
            ],
        },
    };
    let exe = std::env::current_exe().context("cannot find the bench executable")?;
    let work = tempfile::tempdir().context("cannot create a working directory")?;
    let report = compare::run(&spec, &exe, work.path()).await?;
    let files = compare::write_report(&report, &args.out)?;
    println!("\n{}", bench::report::markdown(&report));
    for file in files {
        println!("wrote {}", file.display());
    }
    Ok(())
}

async fn run_load(args: LoadArgs) -> anyhow::Result<()> {
    let workload = Workload::parse(&args.workload).map_err(anyhow::Error::msg)?;
    let spec = LoadSpec {
        workload,
        clients: args.clients,
        duration: args.duration,
        value_bytes: args.workload_args.value_size,
        keys: args.workload_args.keys,
        distribution: args.workload_args.distribution,
        rate: args.workload_args.rate,
        op_timeout: Duration::from_secs(5),
        connections: args.workload_args.conns,
    };
    let result = load::run(
        &bench::target::TargetSpec::Store(args.endpoints.clone()),
        &spec,
        |_, _| {},
    )
    .await?;
    let h = &result.latency_us;
    let ms = |q: f64| {
        if h.is_empty() {
            0.0
        } else {
            h.value_at_quantile(q) as f64 / 1000.0
        }
    };
    println!(
        "{} x{}: {:.0} ops/s ({} ops, {} errors in {:.1} s); latency ms p50 {:.2} p90 {:.2} p99 {:.2} p99.9 {:.2}",
        args.workload,
        args.clients,
        result.throughput(),
        result.ops,
        result.errors,
        result.elapsed.as_secs_f64(),
        ms(0.5),
        ms(0.9),
        ms(0.99),
        ms(0.999)
    );
    Ok(())
}

/// The same allocator as kvnode: `bench node` runs nodes in this binary.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> ExitCode {
    let cli = Cli::parse();
    if let Cmd::Node { args } = cli.command {
        let argv = std::iter::once("kvnode".to_string()).chain(args);
        return kvnode::cli::main_with_args(argv);
    }
    // The harness's own logs (RUST_LOG=info: convergence progress, ...).
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "warn".into()),
        )
        .with_writer(std::io::stderr)
        .init();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(error) => {
            eprintln!("bench: cannot start: {error}");
            return ExitCode::FAILURE;
        }
    };
    let result = runtime.block_on(async {
        match cli.command {
            Cmd::Compare(args) => compare(*args).await,
            Cmd::Load(args) => run_load(args).await,
            Cmd::Nemesis(args) => match nemesis(args).await {
                Ok(true) => Ok(()),
                Ok(false) => Err(anyhow::anyhow!(
                    "an anomaly was found, or the nodes did not converge"
                )),
                Err(error) => Err(error),
            },
            Cmd::Node { .. } => unreachable!("handled above"),
        }
    });
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("bench: {error:#}");
            ExitCode::FAILURE
        }
    }
}

//! The `kvnode` command line, as a library function so other binaries (the
//! benchmark) can run a node with exactly the same flags.

use crate::config::{NodeArgs, NodeConfig};
use crate::launcher::ClusterArgs;
use clap::error::ErrorKind;
use clap::{CommandFactory, FromArgMatches, Parser, Subcommand};

/// A replica of the replicated key-value store, running vanilla Raft,
/// optimized Raft or Nil-ext Raft over RocksDB.
#[derive(Parser, Debug)]
#[command(name = "kvnode", version, args_conflicts_with_subcommands = true)]
#[command(
    after_help = "Example:\n  kvnode --protocol vanilla --id 1 \\\n    --peers 1=127.0.0.1:7001/127.0.0.1:6001,2=127.0.0.1:7002/127.0.0.1:6002,3=127.0.0.1:7003/127.0.0.1:6003 \\\n    --data-dir ./data1\n\nLogging: RUST_LOG=info (default warn)."
)]
struct Cli {
    #[command(subcommand)]
    command: Option<Commands>,
    #[command(flatten)]
    node: NodeArgs,
    /// Exit when the process that started this one exits (used by
    /// `kvnode cluster` and the tests, so no node outlives its launcher).
    #[arg(long, global = true)]
    exit_with_parent: bool,
    /// How log lines are written to standard error: text, or json (one
    /// object per line, for log collectors). The level comes from RUST_LOG
    /// (default warn; info shows elections, role and term changes,
    /// membership changes).
    #[arg(long, global = true, value_name = "text|json", default_value = "text")]
    log_format: LogFormat,
}

/// The log line format.
#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
enum LogFormat {
    /// Human-readable lines (colours only on a terminal).
    Text,
    /// One JSON object per line.
    Json,
}

/// Exits the process once its parent is gone (it is then re-parented, and
/// the parent pid changes).
fn exit_with_parent() {
    let parent = nix::unistd::getppid();
    std::thread::spawn(move || {
        loop {
            std::thread::sleep(std::time::Duration::from_millis(200));
            if nix::unistd::getppid() != parent {
                eprintln!("kvnode: parent process {parent} exited; exiting");
                std::process::exit(1);
            }
        }
    });
}

#[derive(Subcommand, Debug)]
enum Commands {
    /// Start a local cluster of kvnode processes on loopback.
    Cluster(ClusterArgs),
    /// Write a new node's data directory from a backup (`kvctl snapshot
    /// save FILE`), for a new cluster: run it once per node, each with its
    /// own --id and --data-dir and the same new --cluster-id, then start
    /// the nodes with that --cluster-id.
    Restore(RestoreArgs),
}

/// What `kvnode restore` needs.
#[derive(clap::Args, Debug)]
struct RestoreArgs {
    /// The backup file.
    file: std::path::PathBuf,
    /// The new node's data directory (new or empty).
    #[arg(long)]
    data_dir: std::path::PathBuf,
    /// The new node's id.
    #[arg(long)]
    id: consensus::NodeId,
    /// The protocol the new cluster runs.
    #[arg(long)]
    protocol: consensus::config::Protocol,
    /// The new cluster's id (a restored cluster never joins the old one).
    #[arg(long)]
    cluster_id: String,
}

/// `kvnode restore`.
fn restore(args: RestoreArgs) -> anyhow::Result<()> {
    let mut reader = proto::backup::BackupReader::open(&args.file)?;
    let snapshot = reader.snapshot;
    let identity = crate::storage::Identity {
        cluster_id: args.cluster_id.clone(),
        protocol: args.protocol.name().to_string(),
        node_id: args.id,
    };
    let existed = args.data_dir.exists();
    let (mut keys, mut sessions) = (0u64, 0u64);
    let result = crate::storage::Storage::restore(&args.data_dir, &identity, snapshot, || {
        let items = reader.next_items().map_err(|e| e.to_string())?;
        for item in items.iter().flatten() {
            match item {
                consensus::snapshot::SnapshotItem::Data(..) => keys += 1,
                consensus::snapshot::SnapshotItem::Session(..) => sessions += 1,
            }
        }
        Ok(items)
    });
    if let Err(error) = result {
        if !existed
            || !matches!(
                error,
                crate::storage::StorageError::RestoreTargetInUse { .. }
            )
        {
            let _ = std::fs::remove_dir_all(&args.data_dir);
            if existed {
                let _ = std::fs::create_dir_all(&args.data_dir);
            }
        }
        return Err(error.into());
    }
    println!(
        "restored the state at index {} (term {}, {keys} keys, {sessions} sessions) into {} as node {} of cluster {}; start it with --cluster-id {}",
        snapshot.index,
        snapshot.term,
        args.data_dir.display(),
        args.id,
        args.cluster_id,
        args.cluster_id
    );
    Ok(())
}

/// Makes any panic, on any thread or task, end the process after it is
/// reported. Without this, tokio catches the panic of a spawned task and
/// the node goes on without it (a peer sender, a server, the runtime
/// thread): half alive, answering some calls and not others, which is
/// harder to notice and to recover from than a process that exited.
fn abort_on_panic() {
    let report = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        report(info);
        eprintln!("kvnode: a panic ends the process");
        std::process::abort();
    }));
}

/// Runs `kvnode` with `args` (the first is the program name) and returns its
/// exit code.
pub fn main_with_args<I, T>(args: I) -> std::process::ExitCode
where
    I: IntoIterator<Item = T>,
    T: Into<std::ffi::OsString> + Clone,
{
    let command = crate::config::help_with_defaults(Cli::command());
    let parsed = command
        .try_get_matches_from(args)
        .and_then(|matches| Cli::from_arg_matches(&matches));
    let cli = match parsed {
        Ok(cli) => cli,
        // A value that does not parse is an invalid setting, as one that
        // parses but does not fit: exit code 1, as for every refusal of the
        // settings (2 stays for a malformed command line).
        Err(error)
            if matches!(
                error.kind(),
                ErrorKind::InvalidValue | ErrorKind::ValueValidation
            ) =>
        {
            let _ = error.print();
            return std::process::ExitCode::from(1);
        }
        Err(error) => error.exit(),
    };
    abort_on_panic();
    if cli.exit_with_parent {
        exit_with_parent();
    }
    let filter =
        tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "warn".into());
    let logs = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    match cli.log_format {
        LogFormat::Json => logs.json().init(),
        LogFormat::Text => logs
            .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
            .init(),
    }
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(error) => {
            eprintln!("kvnode: cannot start the async runtime: {error}");
            return std::process::ExitCode::FAILURE;
        }
    };
    let result = runtime.block_on(async {
        match cli.command {
            Some(Commands::Cluster(args)) => crate::launcher::run(args).await,
            Some(Commands::Restore(args)) => restore(args),
            None => crate::node::run(NodeConfig::from_args(cli.node)?).await,
        }
    });
    match result {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("kvnode: {error:#}");
            std::process::ExitCode::from(1)
        }
    }
}

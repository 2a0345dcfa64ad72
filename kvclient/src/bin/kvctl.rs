//! `kvctl`: the command-line client of the replicated key-value store.

use std::process::ExitCode;
use std::time::Duration;

use consensus::config::parse_duration;

use clap::{Parser, Subcommand};
use kvclient::{Client, ClientError, ClientOptions};
use serde_json::json;

/// Talks to a cluster: finds the leader, follows redirects, retries under the
/// same request id until --timeout.
///
/// Exit codes: 0 done; 1 no answer in time, or the session expired (the
/// outcome is unknown), or the cluster is unreachable; 2 invalid request or usage; 3 the command failed
/// (e.g. increment of a non-integer).
#[derive(Parser, Debug)]
#[command(name = "kvctl", version)]
struct Cli {
    /// Client addresses of the nodes, comma-separated.
    #[arg(
        long,
        env = "KVCTL_ENDPOINTS",
        value_delimiter = ',',
        default_value = "127.0.0.1:6101,127.0.0.1:6102,127.0.0.1:6103"
    )]
    endpoints: Vec<String>,
    /// Give up after this long (e.g. 500ms, 10s), retries included. A write
    /// (each kvctl run is a new client session, and its write the session's
    /// first) gives up after 5s at most: a copy of it delivered after its
    /// session expired would be applied again.
    #[arg(long, default_value = "10s", value_parser = parse_duration)]
    timeout: Duration,
    /// Print results as JSON.
    #[arg(long)]
    json: bool,
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Subcommand, Debug)]
enum Cmd {
    /// Set KEY to VALUE.
    Put { key: String, value: String },
    /// Read KEY.
    Get { key: String },
    /// Remove KEY.
    Del { key: String },
    /// Set several keys atomically: KEY=VALUE ...
    Mput {
        #[arg(required = true)]
        pairs: Vec<String>,
    },
    /// Read several keys at one point in time.
    Mget {
        #[arg(required = true)]
        keys: Vec<String>,
    },
    /// Set KEY to NEW if it holds --expect VALUE (or is absent, with --absent).
    Cas {
        key: String,
        new: String,
        /// The value KEY must hold.
        #[arg(long, conflicts_with = "absent", required_unless_present = "absent")]
        expect: Option<String>,
        /// KEY must be absent.
        #[arg(long)]
        absent: bool,
    },
    /// Add BY (default 1) to the integer at KEY; prints the new value.
    Incr {
        key: String,
        #[arg(default_value_t = 1, allow_negative_numbers = true)]
        by: i64,
    },
    /// Show every node's role, term, leader and indexes.
    Status,
    /// Backups: `snapshot save FILE` writes a consistent snapshot from the
    /// leader (every write acknowledged before it is in it); `kvnode
    /// restore FILE` starts a new cluster from it.
    Snapshot {
        #[command(subcommand)]
        command: SnapshotCmd,
    },
    /// Leadership: `leader transfer [ID]` hands it from the leader to node
    /// ID (default: the most up-to-date follower) without waiting out an
    /// election timeout.
    Leader {
        #[command(subcommand)]
        command: LeaderCmd,
    },
}

#[derive(Subcommand, Debug)]
enum LeaderCmd {
    /// Hand leadership to node ID (default: the most up-to-date follower);
    /// prints the new leader once it is known.
    Transfer { id: Option<u64> },
}

#[derive(Subcommand, Debug)]
enum SnapshotCmd {
    /// Save a consistent snapshot of the store from the leader into FILE
    /// (written beside it as FILE.partial, renamed once whole).
    Save { file: std::path::PathBuf },
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

fn show_value(value: &Option<Vec<u8>>) -> String {
    value.as_deref().map_or("(absent)".to_string(), text)
}

fn json_value(value: &Option<Vec<u8>>) -> serde_json::Value {
    value
        .as_deref()
        .map_or(serde_json::Value::Null, |v| json!(text(v)))
}

async fn run(cli: Cli) -> Result<(String, serde_json::Value), ClientError> {
    let options = ClientOptions {
        timeout: cli.timeout,
        attempt_timeout: cli.timeout.min(Duration::from_secs(2)),
        client_id: None,
        ..ClientOptions::default()
    };
    let mut client = Client::new(cli.endpoints, options)?;
    Ok(match cli.command {
        Cmd::Put { key, value } => {
            client.put(key, value).await?;
            ("OK".into(), json!({"ok": true}))
        }
        Cmd::Del { key } => {
            client.delete(key).await?;
            ("OK".into(), json!({"ok": true}))
        }
        Cmd::Mput { pairs } => {
            let mut parsed = Vec::new();
            for pair in pairs {
                let (k, v) = pair
                    .split_once('=')
                    .ok_or_else(|| ClientError::Invalid(format!("{pair:?} is not KEY=VALUE")))?;
                parsed.push((k.as_bytes().to_vec(), v.as_bytes().to_vec()));
            }
            client.multi_put(parsed).await?;
            ("OK".into(), json!({"ok": true}))
        }
        Cmd::Get { key } => {
            let value = client.get(key).await?;
            (
                show_value(&value),
                json!({"ok": true, "value": json_value(&value)}),
            )
        }
        Cmd::Mget { keys } => {
            let values = client
                .multi_get(keys.iter().map(|k| k.as_bytes().to_vec()).collect())
                .await?;
            let lines: Vec<String> = keys
                .iter()
                .zip(&values)
                .map(|(k, v)| format!("{k} = {}", show_value(v)))
                .collect();
            let map: serde_json::Map<String, serde_json::Value> = keys
                .iter()
                .zip(&values)
                .map(|(k, v)| (k.clone(), json_value(v)))
                .collect();
            (lines.join("\n"), json!({"ok": true, "values": map}))
        }
        Cmd::Cas {
            key,
            new,
            expect,
            absent,
        } => {
            let expected = if absent {
                None
            } else {
                expect.map(String::into_bytes)
            };
            let (succeeded, current) = client.compare_and_swap(key, expected, new).await?;
            let line = if succeeded {
                "SWAPPED".to_string()
            } else {
                format!("NOT SWAPPED (current: {})", show_value(&current))
            };
            (
                line,
                json!({"ok": true, "succeeded": succeeded, "current": json_value(&current)}),
            )
        }
        Cmd::Snapshot {
            command: SnapshotCmd::Save { file },
        } => {
            let saved = client.backup(&file).await?;
            (
                format!(
                    "saved the state at index {} (term {}): {} keys, {} sessions, {} bytes of keys and values, in {}",
                    saved.index,
                    saved.term,
                    saved.keys,
                    saved.sessions,
                    saved.bytes,
                    file.display()
                ),
                json!({"ok": true, "file": file.display().to_string(), "index": saved.index,
                       "term": saved.term, "keys": saved.keys, "sessions": saved.sessions,
                       "bytes": saved.bytes}),
            )
        }
        Cmd::Leader {
            command: LeaderCmd::Transfer { id },
        } => {
            let (leader, addr) = client.transfer_leader(id).await?;
            (
                format!("node {leader} ({addr}) leads"),
                json!({"ok": true, "leader_id": leader, "leader_client_addr": addr}),
            )
        }
        Cmd::Incr { key, by } => {
            let n = client.increment(key, by).await?;
            (n.to_string(), json!({"ok": true, "value": n}))
        }
        Cmd::Status => {
            let mut lines = Vec::new();
            let mut nodes = Vec::new();
            for (endpoint, status) in client.status_all().await {
                match status {
                    Ok(s) => {
                        lines.push(format!(
                            "{endpoint}  node {} {:<9} term {:<4} leader {:<3} commit {:<6} applied {:<6} log {}..{} snapshot {} sessions {} ({})",
                            s.node_id, s.role, s.term, s.leader_id, s.commit_index, s.applied_index, s.first_log_index, s.last_log_index, s.snapshot_index, s.sessions, s.protocol
                        ));
                        nodes.push(json!({
                            "endpoint": endpoint, "node_id": s.node_id, "role": s.role, "term": s.term,
                            "leader_id": s.leader_id, "leader_client_addr": s.leader_client_addr,
                            "commit_index": s.commit_index, "applied_index": s.applied_index,
                            "last_log_index": s.last_log_index, "last_log_term": s.last_log_term,
                            "first_log_index": s.first_log_index, "snapshot_index": s.snapshot_index,
                            "sessions": s.sessions,
                            "protocol": s.protocol, "cluster_id": s.cluster_id,
                        }));
                    }
                    Err(error) => {
                        lines.push(format!("{endpoint}  unreachable: {error}"));
                        nodes.push(json!({"endpoint": endpoint, "error": error}));
                    }
                }
            }
            (lines.join("\n"), json!({"ok": true, "nodes": nodes}))
        }
    })
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| "error".into()),
        )
        .with_writer(std::io::stderr)
        .init();
    let json_output = cli.json;
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(error) => {
            eprintln!("kvctl: cannot start: {error}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run(cli)) {
        Ok((line, value)) => {
            if json_output {
                println!("{value}");
            } else {
                println!("{line}");
            }
            ExitCode::SUCCESS
        }
        Err(error) => {
            let code = match error {
                ClientError::Invalid(_) | ClientError::NoEndpoints => 2,
                ClientError::Execution(_) => 3,
                ClientError::Timeout { .. }
                | ClientError::SessionExpired(_)
                | ClientError::File(_) => 1,
            };
            if json_output {
                println!(
                    "{}",
                    json!({"ok": false, "error": error.to_string(), "outcome_unknown": error.outcome_unknown()})
                );
            }
            eprintln!("kvctl: {error}");
            ExitCode::from(code)
        }
    }
}

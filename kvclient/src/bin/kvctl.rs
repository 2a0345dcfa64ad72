//! `kvctl`: the command-line client of the replicated key-value store.

use std::process::ExitCode;
use std::time::Duration;

use consensus::config::parse_duration;

use clap::{Parser, Subcommand};
use kvclient::proto::kv::{ChangeMembershipRequest, Member};
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
    /// Print values as hexadecimal (binary-safe).
    #[arg(long, conflicts_with = "base64")]
    hex: bool,
    /// Print values as base64 (binary-safe).
    #[arg(long)]
    base64: bool,
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Subcommand, Debug)]
enum Cmd {
    /// Set KEY to VALUE, or to the bytes of --file (`-`: standard input).
    Put {
        key: String,
        #[arg(required_unless_present = "file")]
        value: Option<String>,
        /// Read the value from this file (`-`: standard input), byte for
        /// byte.
        #[arg(long, conflicts_with = "value")]
        file: Option<std::path::PathBuf>,
    },
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
    /// Membership, one server at a time: `member list`, `member add ID
    /// PEER_ADDR/CLIENT_ADDR` (as a learner, then promoted once caught
    /// up), `member add-learner`, `member promote ID`, `member remove ID`.
    /// The new node is started first with `kvnode --join`.
    Member {
        #[command(subcommand)]
        command: MemberCmd,
    },
}

#[derive(Subcommand, Debug)]
enum MemberCmd {
    /// The configuration in force at the leader: voters and learners, with
    /// their addresses.
    List,
    /// Add node ID as a voter: as a learner first, promoted once its log
    /// has caught up (waits up to --timeout for that).
    Add {
        id: u64,
        /// Where it listens: PEER_ADDR/CLIENT_ADDR.
        address: String,
    },
    /// Add node ID as a learner: it receives the log and does not vote.
    AddLearner {
        id: u64,
        /// Where it listens: PEER_ADDR/CLIENT_ADDR.
        address: String,
    },
    /// Make learner ID a voter (refused until it has caught up; retried
    /// until --timeout).
    Promote { id: u64 },
    /// Remove node ID, voter or learner. A leader is first asked to hand
    /// leadership to another voter. The node removed stops by itself.
    Remove { id: u64 },
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

/// How values are printed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Encoding {
    /// As text (bytes that are not UTF-8 are replaced).
    Text,
    /// Hexadecimal, two digits a byte.
    Hex,
    /// Base64 (RFC 4648, with padding).
    Base64,
}

fn text(bytes: &[u8], encoding: Encoding) -> String {
    match encoding {
        Encoding::Text => String::from_utf8_lossy(bytes).into_owned(),
        Encoding::Hex => bytes.iter().map(|b| format!("{b:02x}")).collect(),
        Encoding::Base64 => base64(bytes),
    }
}

/// RFC 4648 base64 with padding.
fn base64(bytes: &[u8]) -> String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::with_capacity(bytes.len().div_ceil(3) * 4);
    for chunk in bytes.chunks(3) {
        let n = chunk
            .iter()
            .enumerate()
            .fold(0u32, |n, (i, &b)| n | u32::from(b) << (16 - 8 * i));
        for i in 0..4 {
            if i <= chunk.len() {
                out.push(ALPHABET[(n >> (18 - 6 * i) & 63) as usize] as char);
            } else {
                out.push('=');
            }
        }
    }
    out
}

fn show_value(value: &Option<Vec<u8>>, encoding: Encoding) -> String {
    value
        .as_deref()
        .map_or("(absent)".to_string(), |v| text(v, encoding))
}

fn json_value(value: &Option<Vec<u8>>, encoding: Encoding) -> serde_json::Value {
    value
        .as_deref()
        .map_or(serde_json::Value::Null, |v| json!(text(v, encoding)))
}

/// A value given on the command line, or read from a file or standard
/// input.
fn value_of(
    value: Option<String>,
    file: Option<std::path::PathBuf>,
) -> Result<Vec<u8>, ClientError> {
    match (value, file) {
        (Some(value), _) => Ok(value.into_bytes()),
        (None, Some(path)) if path.as_os_str() == "-" => {
            let mut bytes = Vec::new();
            std::io::Read::read_to_end(&mut std::io::stdin(), &mut bytes)
                .map_err(|e| ClientError::Invalid(format!("cannot read standard input: {e}")))?;
            Ok(bytes)
        }
        (None, Some(path)) => std::fs::read(&path)
            .map_err(|e| ClientError::Invalid(format!("cannot read {}: {e}", path.display()))),
        (None, None) => Err(ClientError::Invalid("no value given".into())),
    }
}

async fn run(cli: Cli) -> Result<(String, serde_json::Value), ClientError> {
    let options = ClientOptions {
        timeout: cli.timeout,
        attempt_timeout: cli.timeout.min(Duration::from_secs(2)),
        client_id: None,
        ..ClientOptions::default()
    };
    let encoding = if cli.hex {
        Encoding::Hex
    } else if cli.base64 {
        Encoding::Base64
    } else {
        Encoding::Text
    };
    let mut client = Client::new(cli.endpoints, options)?;
    Ok(match cli.command {
        Cmd::Put { key, value, file } => {
            let value = value_of(value, file)?;
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
                show_value(&value, encoding),
                json!({"ok": true, "value": json_value(&value, encoding)}),
            )
        }
        Cmd::Mget { keys } => {
            let values = client
                .multi_get(keys.iter().map(|k| k.as_bytes().to_vec()).collect())
                .await?;
            let lines: Vec<String> = keys
                .iter()
                .zip(&values)
                .map(|(k, v)| format!("{k} = {}", show_value(v, encoding)))
                .collect();
            let map: serde_json::Map<String, serde_json::Value> = keys
                .iter()
                .zip(&values)
                .map(|(k, v)| (k.clone(), json_value(v, encoding)))
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
                format!("NOT SWAPPED (current: {})", show_value(&current, encoding))
            };
            (
                line,
                json!({"ok": true, "succeeded": succeeded, "current": json_value(&current, encoding)}),
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
        Cmd::Member { command } => member(&mut client, command).await?,
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
                            "cache_hits": s.cache_hits, "cache_misses": s.cache_misses,
                            "protocol": s.protocol, "cluster_id": s.cluster_id,
                        }));
                    }
                    Err(error) => {
                        lines.push(format!("{endpoint}  unreachable: {error}"));
                        nodes.push(json!({"endpoint": endpoint, "error": error}));
                    }
                }
            }
            if nodes.iter().all(|n| n.get("error").is_some()) {
                // No node answered: exit 1, like any call that got no answer.
                return Err(ClientError::Timeout {
                    timeout_ms: cli.timeout.as_millis(),
                    last_error: format!("no node answered Status:\n{}", lines.join("\n")),
                });
            }
            (lines.join("\n"), json!({"ok": true, "nodes": nodes}))
        }
    })
}

/// The members of a configuration, as lines and as JSON.
fn show_members(index: u64, members: &[Member], leader: u64) -> (String, serde_json::Value) {
    let mut lines = vec![format!("configuration of entry {index}:")];
    let mut list = Vec::new();
    for m in members {
        let role = if m.voter { "voter" } else { "learner" };
        let leads = if m.id == leader { " (leader)" } else { "" };
        lines.push(format!(
            "  node {:<3} {role:<8} peer {:<21} client {}{leads}",
            m.id, m.peer_addr, m.client_addr
        ));
        list.push(
            json!({"id": m.id, "voter": m.voter, "peer_addr": m.peer_addr,
                         "client_addr": m.client_addr, "leader": m.id == leader}),
        );
    }
    (
        lines.join("\n"),
        json!({"ok": true, "membership_index": index, "members": list}),
    )
}

fn address_of(id: u64, address: &str) -> Result<(String, String), ClientError> {
    let invalid = || {
        ClientError::Invalid(format!(
            "node {id}'s address {address:?}: expected PEER_ADDR/CLIENT_ADDR, e.g. 127.0.0.1:7004/127.0.0.1:6004"
        ))
    };
    let (peer, client) = address.split_once('/').ok_or_else(invalid)?;
    for addr in [peer, client] {
        addr.parse::<std::net::SocketAddr>()
            .map_err(|_| invalid())?;
    }
    Ok((peer.to_string(), client.to_string()))
}

async fn member(
    client: &mut Client,
    command: MemberCmd,
) -> Result<(String, serde_json::Value), ClientError> {
    use kvclient::proto::kv::change_membership_request::Change;
    let request = |change, (peer_addr, client_addr): (String, String)| ChangeMembershipRequest {
        change: Some(change),
        peer_addr,
        client_addr,
    };
    let none = || (String::new(), String::new());
    // A bad address is refused before anything is asked of the cluster.
    if let MemberCmd::Add { id, address } | MemberCmd::AddLearner { id, address } = &command {
        address_of(*id, address)?;
    }
    let status = client.leader_status().await?;
    let find = |id: u64| status.members.iter().find(|m| m.id == id).cloned();
    let done = match command {
        MemberCmd::List => {
            return Ok(show_members(
                status.membership_index,
                &status.members,
                status.leader_id,
            ));
        }
        MemberCmd::AddLearner { id, address } => {
            let addrs = address_of(id, &address)?;
            client
                .change_membership(request(Change::AddLearner(id), addrs))
                .await?
        }
        MemberCmd::Add { id, address } => {
            let addrs = address_of(id, &address)?;
            if find(id).is_none() {
                client
                    .change_membership(request(Change::AddLearner(id), addrs))
                    .await?;
            }
            client
                .change_membership(request(Change::Promote(id), none()))
                .await?
        }
        MemberCmd::Promote { id } => {
            client
                .change_membership(request(Change::Promote(id), none()))
                .await?
        }
        MemberCmd::Remove { id } => {
            if status.leader_id == id {
                let to = status
                    .members
                    .iter()
                    .find(|m| m.voter && m.id != id)
                    .map(|m| m.id);
                client.transfer_leader(to).await?;
            }
            client
                .change_membership(request(Change::Remove(id), none()))
                .await?
        }
    };
    let leader = client.leader_status().await.map_or(0, |s| s.leader_id);
    Ok(show_members(done.index, &done.members, leader))
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn values_print_binary_safe() {
        // RFC 4648, section 10.
        for (plain, encoded) in [
            ("", ""),
            ("f", "Zg=="),
            ("fo", "Zm8="),
            ("foo", "Zm9v"),
            ("foob", "Zm9vYg=="),
            ("fooba", "Zm9vYmE="),
            ("foobar", "Zm9vYmFy"),
        ] {
            assert_eq!(base64(plain.as_bytes()), encoded);
        }
        let bytes = [0u8, 0xff, 0x10];
        assert_eq!(text(&bytes, Encoding::Hex), "00ff10");
        assert_eq!(text(&bytes, Encoding::Base64), "AP8Q");
        assert_eq!(show_value(&None, Encoding::Hex), "(absent)");
    }

    #[test]
    fn a_value_comes_from_the_command_line_or_a_file() {
        let dir = std::env::temp_dir().join(format!("kvctl-value-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let file = dir.join("value.bin");
        std::fs::write(&file, [0u8, 1, 2, 255]).unwrap();
        assert_eq!(value_of(None, Some(file)).unwrap(), vec![0, 1, 2, 255]);
        assert_eq!(value_of(Some("v".into()), None).unwrap(), b"v");
        assert!(value_of(None, Some(dir.join("missing"))).is_err());
        std::fs::remove_dir_all(&dir).unwrap();
    }
}

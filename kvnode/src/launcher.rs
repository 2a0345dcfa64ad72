//! `kvnode cluster`: a local cluster of child `kvnode` processes on
//! loopback, for trying the store and for benchmarks.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context;
use consensus::config::Protocol;

use crate::config::Member;
use crate::local_cluster::{LocalCluster, NodeLaunch, data_dirs_under};

/// Settings of `kvnode cluster`.
#[derive(clap::Args, Debug, Clone)]
pub struct ClusterArgs {
    /// How many nodes (3 or 5 are the useful sizes).
    #[arg(long, default_value_t = 3)]
    pub nodes: u64,
    /// The consensus protocol: vanilla, optimized or nilext.
    #[arg(long, default_value_t = Protocol::Vanilla)]
    pub protocol: Protocol,
    /// Node i serves clients on BASE_PORT + i and peers on BASE_PORT + 100 + i.
    #[arg(long, default_value_t = 6100)]
    pub base_port: u16,
    /// Parent directory of the nodes' data directories (node1, node2, ...).
    #[arg(long, default_value = "./kvnode-cluster")]
    pub data_dir: PathBuf,
    /// Extra flags passed to every node (e.g. --tick=10ms).
    #[arg(last = true)]
    pub node_flags: Vec<String>,
}

/// The members of a local cluster laid out as `kvnode cluster` does.
pub fn local_members(nodes: u64, base_port: u16) -> std::collections::BTreeMap<u64, Member> {
    (1..=nodes)
        .map(|id| {
            let member = Member {
                client_addr: format!("127.0.0.1:{}", u64::from(base_port) + id),
                peer_addr: format!("127.0.0.1:{}", u64::from(base_port) + 100 + id),
            };
            (id, member)
        })
        .collect()
}

/// Starts the cluster, prints how to reach it, and stops every node on
/// Ctrl-C or SIGTERM (SIGTERM to each, SIGKILL after 5 s).
pub async fn run(args: ClusterArgs) -> anyhow::Result<()> {
    anyhow::ensure!(
        (1..=9).contains(&args.nodes),
        "--nodes must be between 1 and 9"
    );
    let members = local_members(args.nodes, args.base_port);
    let exe = std::env::current_exe().context("cannot find the kvnode executable")?;
    let launch = NodeLaunch {
        exe,
        leading_args: Vec::new(),
        protocol: args.protocol,
        extra_args: args.node_flags.clone(),
        log_dir: None,
        log_filter: None,
    };
    let data_dirs = data_dirs_under(&args.data_dir, args.nodes);
    let mut cluster = LocalCluster::launch(launch, members.clone(), data_dirs)
        .context("cannot start the nodes")?;
    let endpoints: Vec<&str> = members.values().map(|m| m.client_addr.as_str()).collect();
    println!(
        "local {} cluster of {} nodes; data in {}",
        args.protocol,
        args.nodes,
        args.data_dir.display()
    );
    println!("endpoints: {}", endpoints.join(","));
    println!(
        "try:       kvctl --endpoints {} put greeting hello",
        endpoints.join(",")
    );
    println!(
        "           kvctl --endpoints {} status",
        endpoints.join(",")
    );
    println!("Ctrl-C stops the cluster.");

    let shutdown = crate::node::shutdown_signal();
    tokio::pin!(shutdown);
    loop {
        tokio::select! {
            _ = &mut shutdown => break,
            _ = tokio::time::sleep(Duration::from_millis(500)) => {
                // Report nodes that exit on their own; keep the others running.
                for (id, status) in cluster.exited() {
                    eprintln!("node {id} exited on its own ({status}); the others keep running");
                }
            }
        }
    }
    println!("stopping the cluster");
    for (id, how) in cluster.stop(Duration::from_secs(5)).await {
        println!("node {id} {how}");
    }
    Ok(())
}

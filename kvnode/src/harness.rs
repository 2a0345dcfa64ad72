//! A local cluster of real `kvnode` processes on loopback, for the
//! process-level tests and the benchmark: start, SIGKILL, restart, and ask
//! each node its status. Every node is started with `--exit-with-parent` and
//! is killed when the [`LocalCluster`] is dropped, so no process outlives a
//! test, even a failing one.

use std::collections::BTreeMap;
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use proto::kv::kv_client::KvClient;
use proto::kv::{StatusRequest, StatusResponse};

use crate::config::{Member, format_members};

/// Finds `count` free TCP ports on 127.0.0.1.
pub fn free_ports(count: usize) -> std::io::Result<Vec<u16>> {
    let listeners = (0..count)
        .map(|_| TcpListener::bind("127.0.0.1:0"))
        .collect::<std::io::Result<Vec<_>>>()?;
    listeners
        .iter()
        .map(|l| l.local_addr().map(|a| a.port()))
        .collect()
}

/// The data directories of `nodes` nodes kept under one directory, as
/// [`LocalCluster::start`] lays them out: `dir/node1`, `dir/node2`, ...
pub fn data_dirs_under(dir: &Path, nodes: u64) -> Vec<PathBuf> {
    (1..=nodes)
        .map(|id| dir.join(format!("node{id}")))
        .collect()
}

/// A running local cluster.
#[derive(Debug)]
pub struct LocalCluster {
    exe: PathBuf,
    leading_args: Vec<String>,
    protocol: String,
    members: BTreeMap<u64, Member>,
    data_dirs: BTreeMap<u64, PathBuf>,
    extra_args: Vec<String>,
    children: BTreeMap<u64, Child>,
    log_dir: PathBuf,
    /// True while the cluster is being created: every node's first start
    /// is the start of a new cluster (`--initial-cluster-state new`); later
    /// starts are restarts of members with their data.
    creating: bool,
}

impl LocalCluster {
    /// Starts `nodes` nodes of `protocol` from the `kvnode` binary `exe`, with
    /// data directories under `dir`, passing `extra_args` to each.
    pub fn start(
        exe: &Path,
        protocol: &str,
        nodes: u64,
        dir: &Path,
        extra_args: &[&str],
    ) -> std::io::Result<Self> {
        Self::start_with(exe, &[], protocol, nodes, dir, extra_args)
    }

    /// As [`LocalCluster::start`], for a program that runs a node when given
    /// `leading_args` first (e.g. `bench node`).
    pub fn start_with(
        exe: &Path,
        leading_args: &[&str],
        protocol: &str,
        nodes: u64,
        dir: &Path,
        extra_args: &[&str],
    ) -> std::io::Result<Self> {
        let data_dirs = data_dirs_under(dir, nodes);
        Self::start_in(exe, leading_args, protocol, dir, data_dirs, extra_args)
    }

    /// As [`LocalCluster::start_with`], with node `i` (from 1) keeping its
    /// data in `data_dirs[i - 1]` (for instance one disk per node) and the
    /// nodes' logs under `dir`.
    pub fn start_in(
        exe: &Path,
        leading_args: &[&str],
        protocol: &str,
        dir: &Path,
        data_dirs: Vec<PathBuf>,
        extra_args: &[&str],
    ) -> std::io::Result<Self> {
        let nodes = data_dirs.len();
        let ports = free_ports(2 * nodes)?;
        let members = (1..=nodes as u64)
            .map(|id| {
                let i = (id - 1) as usize;
                let member = Member {
                    client_addr: format!("127.0.0.1:{}", ports[2 * i]),
                    peer_addr: format!("127.0.0.1:{}", ports[2 * i + 1]),
                };
                (id, member)
            })
            .collect();
        let log_dir = dir.join("logs");
        std::fs::create_dir_all(&log_dir)?;
        let mut cluster = LocalCluster {
            exe: exe.to_path_buf(),
            leading_args: leading_args.iter().map(|s| s.to_string()).collect(),
            protocol: protocol.to_string(),
            members,
            data_dirs: (1..).zip(data_dirs).collect(),
            extra_args: extra_args.iter().map(|s| s.to_string()).collect(),
            children: BTreeMap::new(),
            log_dir,
            creating: true,
        };
        for id in 1..=nodes as u64 {
            cluster.start_node(id)?;
        }
        cluster.creating = false;
        Ok(cluster)
    }

    /// The members and their addresses.
    pub fn members(&self) -> &BTreeMap<u64, Member> {
        &self.members
    }

    /// Every node's client address.
    pub fn endpoints(&self) -> Vec<String> {
        self.members
            .values()
            .map(|m| m.client_addr.clone())
            .collect()
    }

    /// The `--peers` value of this cluster.
    pub fn peers_flag(&self) -> String {
        format_members(&self.members)
    }

    /// A member's data directory.
    pub fn data_dir(&self, id: u64) -> Option<&Path> {
        self.data_dirs.get(&id).map(PathBuf::as_path)
    }

    /// The file a node's standard error goes to.
    pub fn log_file(&self, id: u64) -> PathBuf {
        self.log_dir.join(format!("node{id}.log"))
    }

    /// Starts (or restarts) node `id` on its data directory.
    pub fn start_node(&mut self, id: u64) -> std::io::Result<()> {
        if self.is_running(id) {
            return Ok(());
        }
        let Some(data_dir) = self.data_dir(id) else {
            return Err(std::io::Error::new(
                std::io::ErrorKind::InvalidInput,
                format!("node {id} is not a member of this cluster"),
            ));
        };
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.log_file(id))?;
        let child = Command::new(&self.exe)
            .args(&self.leading_args)
            .arg("--exit-with-parent")
            .args(["--protocol", &self.protocol])
            .args(["--id", &id.to_string()])
            .args(["--peers", &self.peers_flag()])
            .arg("--data-dir")
            .arg(data_dir)
            .args([
                "--initial-cluster-state",
                if self.creating { "new" } else { "existing" },
            ])
            .args(&self.extra_args)
            .env(
                "RUST_LOG",
                std::env::var("KVNODE_TEST_LOG").unwrap_or_else(|_| "info".into()),
            )
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()?;
        self.children.insert(id, child);
        Ok(())
    }

    /// True while node `id`'s process runs.
    pub fn is_running(&mut self, id: u64) -> bool {
        match self.children.get_mut(&id) {
            Some(child) => matches!(child.try_wait(), Ok(None)),
            None => false,
        }
    }

    /// Kills node `id` with SIGKILL and reaps it.
    pub fn kill(&mut self, id: u64) {
        if let Some(mut child) = self.children.remove(&id) {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Sends a signal to node `id` (SIGSTOP, SIGCONT, SIGTERM, ...).
    pub fn signal(&self, id: u64, signal: nix::sys::signal::Signal) -> nix::Result<()> {
        match self.children.get(&id) {
            Some(child) => {
                nix::sys::signal::kill(nix::unistd::Pid::from_raw(child.id() as i32), signal)
            }
            None => Err(nix::errno::Errno::ESRCH),
        }
    }

    /// The process id of node `id`, while it runs.
    pub fn pid(&self, id: u64) -> Option<u32> {
        self.children.get(&id).map(Child::id)
    }

    /// Kills every node.
    pub fn kill_all(&mut self) {
        for id in self.members.keys().copied().collect::<Vec<_>>() {
            self.kill(id);
        }
    }

    /// Node `id`'s status, or `None` if it does not answer within 500 ms.
    pub async fn status(&self, id: u64) -> Option<StatusResponse> {
        let addr = &self.members.get(&id)?.client_addr;
        let call = async {
            let mut client = KvClient::connect(format!("http://{addr}")).await.ok()?;
            client
                .status(StatusRequest {})
                .await
                .ok()
                .map(|r| r.into_inner())
        };
        tokio::time::timeout(Duration::from_millis(500), call)
            .await
            .ok()
            .flatten()
    }

    /// Every answering node's status.
    pub async fn statuses(&self) -> BTreeMap<u64, StatusResponse> {
        let mut out = BTreeMap::new();
        for &id in self.members.keys() {
            if let Some(status) = self.status(id).await {
                out.insert(id, status);
            }
        }
        out
    }

    /// Waits until some running node says it leads, and returns it with its
    /// term (the highest term's leader when several claim to lead).
    pub async fn wait_for_leader(&self, timeout: Duration) -> Option<(u64, u64)> {
        let deadline = tokio::time::Instant::now() + timeout;
        while tokio::time::Instant::now() < deadline {
            let leader = self
                .statuses()
                .await
                .into_iter()
                .filter(|(_, s)| s.role == "leader")
                .max_by_key(|(_, s)| s.term)
                .map(|(id, s)| (id, s.term));
            if leader.is_some() {
                return leader;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        None
    }
}

impl Drop for LocalCluster {
    fn drop(&mut self) {
        self.kill_all();
    }
}

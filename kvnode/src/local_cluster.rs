//! A local cluster of real `kvnode` processes on loopback: `kvnode cluster`
//! runs one, and so do the process-level tests, the nemesis and the
//! benchmark. It starts, SIGKILLs, signals and restarts nodes, asks each its
//! status, and stops them (gracefully, or by killing them when dropped).
//! Every node is started with `--exit-with-parent`, so none outlives its
//! parent, even one that fails.

use std::collections::BTreeMap;
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use proto::kv::kv_client::KvClient;
use proto::kv::{StatusRequest, StatusResponse};

use consensus::config::Protocol;

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

/// A Debian tool the tests and the bench use as a peer (`redis-cli` from
/// `redis-tools`, say): found on PATH, or installed with apt-get (which
/// needs root). The error says why not, for the caller to report
/// loudly.
pub fn debian_tool(binary: &str, package: &str) -> Result<PathBuf, String> {
    let find = || {
        std::env::var_os("PATH").and_then(|path| {
            std::env::split_paths(&path)
                .map(|dir| dir.join(binary))
                .find(|candidate| candidate.is_file())
        })
    };
    if let Some(found) = find() {
        return Ok(found);
    }
    eprintln!("{binary} is not on PATH: installing Debian's {package} package");
    let installed = std::process::Command::new("apt-get")
        .args(["install", "-y", "-qq", package])
        .env("DEBIAN_FRONTEND", "noninteractive")
        .stdout(std::process::Stdio::null())
        .status();
    match (installed, find()) {
        (_, Some(found)) => Ok(found),
        (Ok(status), None) => Err(format!(
            "apt-get install {package} failed ({status}; it needs root); {binary} is needed"
        )),
        (Err(error), None) => Err(format!(
            "cannot run apt-get to install {package} ({error}); {binary} is needed"
        )),
    }
}

/// The data directories of `nodes` nodes kept under one directory, as
/// [`LocalCluster::start`] lays them out: `dir/node1`, `dir/node2`, ...
pub fn data_dirs_under(dir: &Path, nodes: u64) -> Vec<PathBuf> {
    (1..=nodes)
        .map(|id| dir.join(format!("node{id}")))
        .collect()
}

/// How a local cluster's nodes are started.
#[derive(Debug, Clone)]
pub struct NodeLaunch {
    /// The program: `kvnode`, or one that runs a node when given
    /// `leading_args` first (e.g. `bench node`).
    pub exe: PathBuf,
    /// Arguments before the node's own.
    pub leading_args: Vec<String>,
    /// The protocol.
    pub protocol: Protocol,
    /// Flags passed to every node after its own.
    pub extra_args: Vec<String>,
    /// A file per node (`node<ID>.log`) in this directory takes the node's
    /// standard error; `None` leaves it the caller's.
    pub log_dir: Option<PathBuf>,
    /// The nodes' `RUST_LOG`; `None` leaves the caller's.
    pub log_filter: Option<String>,
}

/// A running local cluster.
#[derive(Debug)]
pub struct LocalCluster {
    launch: NodeLaunch,
    members: BTreeMap<u64, Member>,
    data_dirs: BTreeMap<u64, PathBuf>,
    children: BTreeMap<u64, Child>,
    /// True while a new cluster is being created: every node's first start
    /// is then the start of a new cluster (`--initial-cluster-state new`);
    /// later starts are restarts of members with their data.
    creating: bool,
    /// The nodes started with `--peers` (the initial members); the others
    /// were started with `--join`.
    initial: BTreeMap<u64, Member>,
}

impl LocalCluster {
    /// Starts `nodes` nodes of `protocol` from the `kvnode` binary `exe`, with
    /// data directories under `dir`, passing `extra_args` to each.
    pub fn start(
        exe: &Path,
        protocol: Protocol,
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
        protocol: Protocol,
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
        protocol: Protocol,
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
        let launch = NodeLaunch {
            exe: exe.to_path_buf(),
            leading_args: leading_args.iter().map(|s| s.to_string()).collect(),
            protocol,
            extra_args: extra_args.iter().map(|s| s.to_string()).collect(),
            log_dir: Some(dir.join("logs")),
            log_filter: Some(std::env::var("KVNODE_TEST_LOG").unwrap_or_else(|_| "info".into())),
        };
        Self::launch(launch, members, data_dirs)
    }

    /// Starts a node of `members` on each of `data_dirs` (node `i`, from 1,
    /// on `data_dirs[i - 1]`), as `launch` says. A new cluster is created
    /// only when every directory is empty (`--initial-cluster-state new`);
    /// otherwise each node starts as a member of a cluster that ran, and
    /// one whose directory was emptied is refused by its node.
    pub fn launch(
        launch: NodeLaunch,
        members: BTreeMap<u64, Member>,
        data_dirs: Vec<PathBuf>,
    ) -> std::io::Result<Self> {
        if let Some(dir) = &launch.log_dir {
            std::fs::create_dir_all(dir)?;
        }
        let creating = data_dirs
            .iter()
            .all(|d| !crate::storage::Storage::holds_database(d));
        let mut cluster = LocalCluster {
            launch,
            initial: members.clone(),
            members,
            data_dirs: (1..).zip(data_dirs).collect(),
            children: BTreeMap::new(),
            creating,
        };
        for id in cluster.members.keys().copied().collect::<Vec<_>>() {
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

    /// The `--peers` value of this cluster: its initial members.
    pub fn peers_flag(&self) -> String {
        format_members(&self.initial)
    }

    /// Starts node `id`, new to the cluster, with `--join` (the client
    /// addresses of the nodes known), on an empty data directory beside the
    /// others'. It waits to be added (`kvctl member add`). Returns its
    /// addresses.
    pub fn start_joining(&mut self, id: u64) -> std::io::Result<Member> {
        let ports = free_ports(2)?;
        let member = Member {
            client_addr: format!("127.0.0.1:{}", ports[0]),
            peer_addr: format!("127.0.0.1:{}", ports[1]),
        };
        let parent = self
            .data_dirs
            .values()
            .next()
            .and_then(|d| d.parent())
            .map(Path::to_path_buf)
            .unwrap_or_else(std::env::temp_dir);
        let dir = parent.join(format!("node{id}"));
        if dir.exists() {
            std::fs::remove_dir_all(&dir)?;
        }
        self.data_dirs.insert(id, dir);
        self.members.insert(id, member.clone());
        self.start_node(id)?;
        Ok(member)
    }

    /// Kills node `id` and deletes its data directory (a failed disk).
    pub fn wipe(&mut self, id: u64) -> std::io::Result<()> {
        self.kill(id);
        if let Some(dir) = self.data_dir(id)
            && dir.exists()
        {
            std::fs::remove_dir_all(dir)?;
        }
        Ok(())
    }

    /// A member's data directory.
    pub fn data_dir(&self, id: u64) -> Option<&Path> {
        self.data_dirs.get(&id).map(PathBuf::as_path)
    }

    /// The file a node's standard error goes to (when logs go to files).
    pub fn log_file(&self, id: u64) -> PathBuf {
        self.launch
            .log_dir
            .clone()
            .unwrap_or_default()
            .join(format!("node{id}.log"))
    }

    /// The address node `id` logged last in its line `message` (the field
    /// `addr`, in the text or the JSON log format): where it bound a
    /// listener given port 0, say. `None` until it logged one.
    pub fn logged_addr(&self, id: u64, message: &str) -> Option<String> {
        let log = std::fs::read_to_string(self.log_file(id)).ok()?;
        let line = log.lines().rev().find(|line| line.contains(message))?;
        let (_, rest) = line
            .split_once("\"addr\":\"")
            .or_else(|| line.split_once("addr="))?;
        let end = rest
            .find(|c: char| c == '"' || c.is_whitespace())
            .unwrap_or(rest.len());
        Some(rest[..end].to_string())
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
        let mut command = Command::new(&self.launch.exe);
        command
            .args(&self.launch.leading_args)
            .arg("--exit-with-parent")
            .args(["--protocol", self.launch.protocol.name()])
            .args(["--id", &id.to_string()])
            .arg("--data-dir")
            .arg(data_dir);
        if self.initial.contains_key(&id) {
            command.args(["--peers", &self.peers_flag()]).args([
                "--initial-cluster-state",
                if self.creating { "new" } else { "existing" },
            ]);
        } else {
            let member = &self.members[&id];
            let others: Vec<&str> = self
                .members
                .iter()
                .filter(|(other, _)| **other != id)
                .map(|(_, m)| m.client_addr.as_str())
                .collect();
            command
                .args(["--join", &others.join(",")])
                .args(["--peer-addr", &member.peer_addr])
                .args(["--client-addr", &member.client_addr]);
        }
        command.args(&self.launch.extra_args).stdout(Stdio::null());
        if let Some(filter) = &self.launch.log_filter {
            command.env("RUST_LOG", filter);
        }
        if self.launch.log_dir.is_some() {
            let log = std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(self.log_file(id))?;
            command.stderr(log);
        }
        let child = command.spawn()?;
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

    /// Nodes that exited by themselves since last asked, with how.
    pub fn exited(&mut self) -> Vec<(u64, std::process::ExitStatus)> {
        let mut exited = Vec::new();
        self.children.retain(|&id, child| match child.try_wait() {
            Ok(Some(status)) => {
                exited.push((id, status));
                false
            }
            _ => true,
        });
        exited
    }

    /// Stops every node gracefully: SIGTERM to each, then SIGKILL to any
    /// still running after `patience`. Returns how each ended.
    pub async fn stop(&mut self, patience: Duration) -> Vec<(u64, String)> {
        for &id in self.children.keys() {
            let _ = self.signal(id, nix::sys::signal::Signal::SIGTERM);
        }
        let deadline = tokio::time::Instant::now() + patience;
        let mut ended = Vec::new();
        for (id, mut child) in std::mem::take(&mut self.children) {
            loop {
                match child.try_wait() {
                    Ok(Some(status)) => {
                        ended.push((id, format!("stopped ({status})")));
                        break;
                    }
                    Ok(None) if tokio::time::Instant::now() < deadline => {
                        tokio::time::sleep(Duration::from_millis(50)).await;
                    }
                    _ => {
                        let _ = child.kill();
                        let _ = child.wait();
                        ended.push((id, format!("killed after {} s", patience.as_secs())));
                        break;
                    }
                }
            }
        }
        ended
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

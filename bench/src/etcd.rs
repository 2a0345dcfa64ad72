//! A local 3-member etcd cluster (Debian's etcd-server, etcd 3.4) for the
//! comparison, with etcd's default durability: every write fsynced to its
//! write-ahead log before it is acknowledged.

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use anyhow::Context;
use proto::etcd::RangeRequest;
use proto::etcd::kv_client::KvClient;

/// The etcd members, killed when dropped.
#[derive(Debug)]
pub struct EtcdCluster {
    children: Vec<Child>,
    endpoints: Vec<String>,
}

/// True when an `etcd` binary is on PATH.
pub fn available() -> bool {
    Command::new("etcd")
        .arg("--version")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

impl EtcdCluster {
    /// Starts `members` etcd processes on free loopback ports, data under `dir`,
    /// and waits until the cluster serves linearizable reads.
    pub async fn start(dir: &Path, members: usize) -> anyhow::Result<Self> {
        anyhow::ensure!(
            available(),
            "no etcd binary on PATH; install Debian's etcd-server package (apt-get install etcd-server)"
        );
        let ports = kvnode::local_cluster::free_ports(2 * members)?;
        let peer_url = |i: usize| format!("http://127.0.0.1:{}", ports[2 * i + 1]);
        let initial: Vec<String> = (0..members)
            .map(|i| format!("e{i}={}", peer_url(i)))
            .collect();
        let mut children = Vec::new();
        let mut endpoints = Vec::new();
        for i in 0..members {
            let client_url = format!("http://127.0.0.1:{}", ports[2 * i]);
            let log = std::fs::File::create(dir.join(format!("etcd{i}.log")))?;
            let child = Command::new("etcd")
                .args(["--name", &format!("e{i}")])
                .arg("--data-dir")
                .arg(dir.join(format!("etcd{i}")))
                .args([
                    "--listen-client-urls",
                    &client_url,
                    "--advertise-client-urls",
                    &client_url,
                ])
                .args([
                    "--listen-peer-urls",
                    &peer_url(i),
                    "--initial-advertise-peer-urls",
                    &peer_url(i),
                ])
                .args([
                    "--initial-cluster",
                    &initial.join(","),
                    "--initial-cluster-state",
                    "new",
                ])
                .args(["--initial-cluster-token", "bench"])
                .stdout(Stdio::null())
                .stderr(log)
                .spawn()
                .context("cannot start etcd")?;
            children.push(child);
            endpoints.push(format!("127.0.0.1:{}", ports[2 * i]));
        }
        let cluster = EtcdCluster {
            children,
            endpoints,
        };
        let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
        loop {
            if cluster.ready().await {
                return Ok(cluster);
            }
            anyhow::ensure!(
                tokio::time::Instant::now() < deadline,
                "etcd did not become ready within 30 s; logs in {}",
                dir.display()
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    async fn ready(&self) -> bool {
        let call = async {
            let mut client = KvClient::connect(format!("http://{}", self.endpoints[0]))
                .await
                .ok()?;
            let request = RangeRequest {
                key: b"ready".to_vec(),
                range_end: vec![],
                limit: 0,
                revision: 0,
                serializable: false,
            };
            client.range(request).await.ok()
        };
        tokio::time::timeout(Duration::from_secs(2), call)
            .await
            .ok()
            .flatten()
            .is_some()
    }

    /// The members' client addresses.
    pub fn endpoints(&self) -> Vec<String> {
        self.endpoints.clone()
    }

    /// The members' process ids.
    pub fn pids(&self) -> Vec<u32> {
        self.children.iter().map(Child::id).collect()
    }
}

impl Drop for EtcdCluster {
    fn drop(&mut self) {
        for child in &mut self.children {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

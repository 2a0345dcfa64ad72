//! Shared pieces of the process-level tests: a cluster per test in a
//! temporary directory, a client-history recorder checked for
//! linearizability, and a watcher of leaders per term.

#![allow(dead_code)]

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use consensus::Command;
pub use consensus::config::Protocol;
use kvclient::{Client, ClientOptions};
use kvnode::local_cluster::LocalCluster;
use sim::history::describe;
use sim::linearizability::{Verdict, check};

/// The protocols the process-level scenarios run against: every one built.
pub const PROTOCOLS: [Protocol; 3] = Protocol::ALL;

/// Node flags for tests: short ticks so elections take a few hundred ms.
pub const NODE_FLAGS: &[&str] = &["--tick", "10ms", "--request-timeout", "2s"];

/// A test's cluster and its directory, removed at the end.
pub struct TestCluster {
    pub cluster: LocalCluster,
    pub dir: tempfile::TempDir,
    pub leaders: LeaderWatch,
}

impl TestCluster {
    pub fn start(protocol: Protocol, nodes: u64) -> TestCluster {
        TestCluster::start_with_flags(protocol, nodes, &[])
    }

    /// As [`TestCluster::start`], with more node flags after [`NODE_FLAGS`].
    pub fn start_with_flags(protocol: Protocol, nodes: u64, flags: &[&str]) -> TestCluster {
        // KVNODE_TEST_KEEP=1 keeps the nodes' data and logs for a look.
        let dir = tempfile::Builder::new()
            .disable_cleanup(std::env::var_os("KVNODE_TEST_KEEP").is_some())
            .tempdir()
            .expect("temporary directory");
        eprintln!("{protocol}: cluster in {}", dir.path().display());
        let flags: Vec<&str> = NODE_FLAGS.iter().chain(flags).copied().collect();
        let cluster = LocalCluster::start(
            Path::new(env!("CARGO_BIN_EXE_kvnode")),
            protocol,
            nodes,
            dir.path(),
            &flags,
        )
        .expect("start the cluster");
        TestCluster {
            cluster,
            dir,
            leaders: LeaderWatch::default(),
        }
    }

    pub fn client(&self, timeout: Duration) -> Client {
        let options = ClientOptions {
            timeout,
            attempt_timeout: Duration::from_millis(1000).min(timeout),
            client_id: None,
            ..ClientOptions::default()
        };
        Client::new(self.cluster.endpoints(), options).expect("endpoints")
    }

    /// An address node `id` logged in its line `message`
    /// ([`LocalCluster::logged_addr`]), waited for.
    pub fn logged_addr(&self, id: u64, message: &str) -> String {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            if let Some(addr) = self.cluster.logged_addr(id, message) {
                return addr;
            }
            assert!(
                Instant::now() < deadline,
                "node {id} logs \"{message}\" with its address"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Waits for a leader, noting every status seen.
    pub async fn leader(&self) -> (u64, u64) {
        let deadline = Instant::now() + Duration::from_secs(15);
        while Instant::now() < deadline {
            let statuses = self.cluster.statuses().await;
            self.leaders.observe(&statuses);
            if let Some((id, s)) = statuses
                .iter()
                .filter(|(_, s)| s.role == "leader")
                .max_by_key(|(_, s)| s.term)
            {
                return (*id, s.term);
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        panic!(
            "no leader within 15 s; node logs are in {}",
            self.dir.path().display()
        );
    }

    /// Waits until every node in `ids` reports the same (last log index,
    /// last log term, commit index) as the others, with applied = commit.
    pub async fn converged(&self, ids: &[u64], timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        while Instant::now() < deadline {
            let statuses = self.cluster.statuses().await;
            self.leaders.observe(&statuses);
            let views: BTreeSet<(u64, u64, u64)> = ids
                .iter()
                .filter_map(|id| statuses.get(id))
                .filter(|s| s.applied_index == s.commit_index)
                .map(|s| (s.last_log_index, s.last_log_term, s.commit_index))
                .collect();
            if views.len() == 1 && ids.iter().all(|id| statuses.contains_key(id)) {
                let (last, _, commit) = *views.iter().next().expect("one view");
                if last == commit {
                    return true;
                }
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        false
    }
}

/// Records the leaders seen per term; at most one node may lead a term.
#[derive(Default, Clone)]
pub struct LeaderWatch {
    seen: Arc<Mutex<BTreeMap<u64, BTreeSet<u64>>>>,
}

impl LeaderWatch {
    pub fn observe(&self, statuses: &BTreeMap<u64, proto::kv::StatusResponse>) {
        let mut seen = self.seen.lock().expect("lock");
        for (id, s) in statuses {
            if s.role == "leader" {
                seen.entry(s.term).or_default().insert(*id);
            }
        }
    }

    pub fn assert_one_leader_per_term(&self) {
        let seen = self.seen.lock().expect("lock");
        for (term, leaders) in seen.iter() {
            assert!(leaders.len() <= 1, "term {term} had leaders {leaders:?}");
        }
        assert!(!seen.is_empty(), "some leader was observed");
    }
}

/// The client-history recorder of the nemesis harness.
pub use nemesis::Recorder;

/// Asserts the recorded history is linearizable, printing the failing key's
/// operations when it is not.
pub fn assert_linearizable(recorder: &Recorder) {
    let ops = recorder.operations();
    assert!(!ops.is_empty());
    match check(&ops) {
        Verdict::Linearizable => {}
        Verdict::NotLinearizable { operations, .. } => {
            let lines: Vec<String> = operations.iter().map(|&i| describe(&ops[i])).collect();
            panic!("history not linearizable:\n{}", lines.join("\n"));
        }
        Verdict::Unknown => panic!("linearizability check ran out of budget"),
    }
}

/// Concurrent clients doing random register operations on a few keys until
/// `stop` is set; every operation recorded.
pub fn spawn_load(
    test: &TestCluster,
    recorder: &Recorder,
    clients: usize,
    stop: Arc<std::sync::atomic::AtomicBool>,
) -> Vec<tokio::task::JoinHandle<usize>> {
    (0..clients)
        .map(|i| {
            let mut client = test.client(Duration::from_secs(3));
            let recorder = recorder.clone();
            let stop = stop.clone();
            tokio::spawn(async move {
                let mut done = 0;
                let mut n = 0u64;
                while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                    n += 1;
                    let key = format!("r{}", (n + i as u64) % 3).into_bytes();
                    let value = format!("{i}.{n}").into_bytes();
                    let command = match n % 4 {
                        0 | 1 => Command::Put { key, value },
                        2 => Command::Get { key },
                        _ => Command::CompareAndSwap {
                            key,
                            expected: None,
                            new: value,
                        },
                    };
                    if recorder.run(&mut client, command).await.is_ok() {
                        done += 1;
                    }
                }
                done
            })
        })
        .collect()
}

/// Runs `scenario` for every protocol at once, each within `limit`
/// (`KVNODE_TEST_PROTOCOL=nilext`, say, runs one only).
pub async fn run_each_protocol<F, Fut>(limit: Duration, scenario: F)
where
    F: Fn(Protocol) -> Fut,
    Fut: std::future::Future<Output = ()> + Send + 'static,
{
    let only = std::env::var("KVNODE_TEST_PROTOCOL").ok();
    let runs: Vec<_> = PROTOCOLS
        .into_iter()
        .filter(|p| only.as_deref().is_none_or(|o| o == p.name()))
        .map(|protocol| {
            let run = scenario(protocol);
            tokio::spawn(async move {
                tokio::time::timeout(limit, run)
                    .await
                    .unwrap_or_else(|_| panic!("{protocol}: not done within {limit:?}"));
            })
        })
        .collect();
    for run in runs {
        run.await.expect("scenario");
    }
}

//! A Jepsen-style fault test of the whole running system: a real local
//! cluster, concurrent clients doing register operations (read, write,
//! compare-and-swap) on a few keys, and a nemesis that on a schedule kills
//! nodes (SIGKILL) and restarts them, pauses them (SIGSTOP) and resumes them,
//! and partitions them (the leader isolated, a minority from the majority,
//! one-way) through the transport's fault layer. Every invocation and
//! completion is recorded, timeouts as unknown outcomes; after healing,
//! every key is read once more, the nodes must converge, and the history must
//! pass the linearizability checker. An anomaly saves the history and comes
//! with a readable excerpt.

use consensus::config::Protocol;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::Context;
use consensus::lock;
use consensus::rng::DetRng;
use consensus::{Command, CommandResult};
use kvclient::{Client, ClientError, ClientOptions};
use nix::sys::signal::Signal;
use proto::kv::SetFaultsRequest;
use proto::kv::admin_client::AdminClient;
use sim::history::{describe, to_input, to_output};
use sim::linearizability::{KvOutput, Operation, Verdict, check};

use kvnode::local_cluster::LocalCluster;

/// What a run does.
#[derive(Clone, Debug)]
pub struct NemesisConfig {
    /// The protocol under test.
    pub protocol: Protocol,
    /// Nodes in the cluster.
    pub nodes: u64,
    /// How long clients run under faults.
    pub duration: Duration,
    /// Concurrent clients.
    pub clients: usize,
    /// Registers (keys) the clients share.
    pub keys: usize,
    /// Time between faults (a fault lasts about as long).
    pub fault_every: (Duration, Duration),
    /// Seed of the schedule.
    pub seed: u64,
    /// Fault schedules running at once, each with its own seed: with two,
    /// faults overlap (a node killed while another, or the leader, is
    /// paused), as a user's own fault tests do.
    pub schedules: usize,
    /// Extra flags for every node.
    pub node_flags: Vec<String>,
    /// Deliberately unsafe reads on every node: the run must then report an
    /// anomaly (this proves the harness can fail).
    pub unsafe_local_reads: bool,
    /// How long the nodes may go without visible progress while converging
    /// after healing (at least the run's duration). Vanilla Raft backs off
    /// and sends one entry per round trip, so a replica far behind after a
    /// long run needs a while, and its status shows nothing while the
    /// leader backs off.
    pub converge_timeout: Duration,
}

impl NemesisConfig {
    /// A run of `duration` against `protocol` with the defaults.
    pub fn new(protocol: Protocol, duration: Duration) -> Self {
        NemesisConfig {
            protocol,
            nodes: 3,
            duration,
            clients: 6,
            keys: 3,
            fault_every: (Duration::from_millis(800), Duration::from_millis(2500)),
            seed: 1,
            schedules: 1,
            node_flags: vec!["--tick=10ms".into(), "--request-timeout=1.5s".into()],
            unsafe_local_reads: false,
            converge_timeout: Duration::from_secs(30),
        }
    }
}

/// What a run found.
#[derive(Debug)]
pub struct NemesisReport {
    /// Operations with a known outcome.
    pub completed: usize,
    /// Operations that definitely failed (e.g. refused).
    pub failed: usize,
    /// Operations with unknown outcome (timeouts).
    pub unknown: usize,
    /// Faults injected, by kind.
    pub faults: BTreeMap<&'static str, u64>,
    /// The checker's verdict on the whole history.
    pub verdict: Verdict,
    /// An excerpt of the history around the violation, when there is one.
    pub excerpt: Option<String>,
    /// Where the history was saved, when there was a violation.
    pub history_file: Option<PathBuf>,
    /// All nodes converged after healing.
    pub converged: bool,
    /// How long convergence took (or how long it was waited for).
    pub converge_time: Duration,
    /// The nodes' statuses when convergence ended (or was given up).
    pub last_statuses: String,
}

impl NemesisReport {
    /// True when the history is linearizable and the nodes converged.
    pub fn passed(&self) -> bool {
        self.verdict.is_linearizable() && self.converged
    }

    /// A few lines for people.
    pub fn summary(&self) -> String {
        let faults: Vec<String> = self
            .faults
            .iter()
            .map(|(k, v)| format!("{k} {v}"))
            .collect();
        format!(
            "{} operations completed, {} failed, {} unknown; faults: {}; verdict: {}; converged: {} (after {:.1} s)",
            self.completed,
            self.failed,
            self.unknown,
            if faults.is_empty() {
                "none".into()
            } else {
                faults.join(", ")
            },
            match &self.verdict {
                Verdict::Linearizable => "linearizable".to_string(),
                Verdict::NotLinearizable { keys, .. } => format!(
                    "NOT linearizable on {:?}",
                    keys.iter()
                        .map(|k| String::from_utf8_lossy(k).into_owned())
                        .collect::<Vec<_>>()
                ),
                Verdict::Unknown => "unknown (checker budget exhausted)".to_string(),
            },
            self.converged,
            self.converge_time.as_secs_f64()
        )
    }
}

/// Client operations with their real-time intervals, for the checker:
/// shared by concurrent client tasks (clone it), safe to use from any.
#[derive(Clone, Debug)]
pub struct Recorder {
    start: Instant,
    inner: Arc<Mutex<Recorded>>,
}

#[derive(Debug, Default)]
struct Recorded {
    ops: Vec<Operation>,
    failed: usize,
}

impl Default for Recorder {
    fn default() -> Self {
        Recorder {
            start: Instant::now(),
            inner: Arc::default(),
        }
    }
}

impl Recorder {
    /// Runs `command` with `client`, recording its invocation and completion
    /// (an unknown outcome when the client gives up; nothing for requests
    /// refused outright, which did not happen).
    pub async fn run(
        &self,
        client: &mut Client,
        command: Command,
    ) -> Result<CommandResult, ClientError> {
        let call = self.start.elapsed().as_nanos() as u64;
        let result = client.execute(command.clone()).await;
        let ret = self.start.elapsed().as_nanos() as u64;
        let mut recorded = lock(&self.inner);
        let (ret, output) = match &result {
            Ok(r) => (Some(ret), Some(to_output(r))),
            Err(ClientError::Execution(_)) => (Some(ret), Some(KvOutput::Failed)),
            Err(e) if e.outcome_unknown() => (None, None),
            Err(_) => {
                recorded.failed += 1;
                return result;
            }
        };
        recorded.ops.push(Operation {
            client: client.client_id(),
            call,
            ret,
            input: to_input(&command),
            output,
        });
        result
    }

    /// The operations recorded so far.
    pub fn operations(&self) -> Vec<Operation> {
        lock(&self.inner).ops.clone()
    }

    /// Requests refused outright (invalid, or no endpoint).
    pub fn failed(&self) -> usize {
        lock(&self.inner).failed
    }
}

/// Makes `node` drop its peer traffic to `drop_to` and from `drop_from`
/// (needs `--fault-injection`); a node that does not answer within 500 ms
/// keeps its old setting.
pub async fn set_partition(
    cluster: &LocalCluster,
    node: u64,
    drop_to: Vec<u64>,
    drop_from: Vec<u64>,
) {
    let Some(member) = cluster.members().get(&node) else {
        return;
    };
    let call = async {
        let mut admin = AdminClient::connect(format!("http://{}", member.client_addr))
            .await
            .ok()?;
        let request = SetFaultsRequest {
            drop_outgoing_to: drop_to,
            drop_incoming_from: drop_from,
        };
        admin.set_faults(request).await.ok()
    };
    // A node that is down or paused simply keeps its old setting; healing
    // tries again.
    let _ = tokio::time::timeout(Duration::from_millis(500), call).await;
}

async fn heal_partitions(cluster: &LocalCluster) {
    for &node in cluster.members().keys() {
        set_partition(cluster, node, vec![], vec![]).await;
    }
}

async fn leader(cluster: &LocalCluster) -> Option<u64> {
    cluster
        .statuses()
        .await
        .into_iter()
        .filter(|(_, s)| s.role == "leader")
        .max_by_key(|(_, s)| s.term)
        .map(|(id, _)| id)
}

/// One schedule of faults until the run's end: every 0.8 to 2.5 s, a fault
/// of a random kind, held 0.5 to 2 s, then healed. Returns how many of each
/// kind it injected.
async fn fault_schedule(
    shared: &tokio::sync::Mutex<LocalCluster>,
    config: &NemesisConfig,
    seed: u64,
    start: Instant,
) -> anyhow::Result<BTreeMap<&'static str, u64>> {
    let mut rng = DetRng::new(seed);
    let mut faults: BTreeMap<&'static str, u64> = BTreeMap::new();
    let members: Vec<u64> = shared.lock().await.members().keys().copied().collect();
    let pick = |rng: &mut DetRng| members[rng.range(0, members.len() as u64) as usize];
    while start.elapsed() < config.duration {
        let wait = Duration::from_millis(rng.range(
            config.fault_every.0.as_millis() as u64,
            config.fault_every.1.as_millis() as u64 + 1,
        ));
        tokio::time::sleep(wait.min(config.duration.saturating_sub(start.elapsed()))).await;
        if start.elapsed() >= config.duration {
            break;
        }
        let hold = Duration::from_millis(rng.range(500, 2000));
        match rng.range(0, 7) {
            kind @ (0 | 1) => {
                let node = if kind == 1 {
                    leader(&*shared.lock().await)
                        .await
                        .unwrap_or_else(|| pick(&mut rng))
                } else {
                    pick(&mut rng)
                };
                shared.lock().await.kill(node);
                *faults
                    .entry(if kind == 1 { "kill-leader" } else { "kill" })
                    .or_default() += 1;
                tokio::time::sleep(hold).await;
                shared.lock().await.start_node(node)?;
            }
            kind @ (2 | 3) => {
                // SIGSTOP: the process stops, its time does not.
                let node = if kind == 3 {
                    leader(&*shared.lock().await)
                        .await
                        .unwrap_or_else(|| pick(&mut rng))
                } else {
                    pick(&mut rng)
                };
                let _ = shared.lock().await.signal(node, Signal::SIGSTOP);
                *faults
                    .entry(if kind == 3 { "pause-leader" } else { "pause" })
                    .or_default() += 1;
                tokio::time::sleep(hold).await;
                let _ = shared.lock().await.signal(node, Signal::SIGCONT);
            }
            4 => {
                // The leader cut off from everyone, both ways.
                let cluster = shared.lock().await;
                let isolated = leader(&cluster).await.unwrap_or_else(|| pick(&mut rng));
                let others: Vec<u64> = members.iter().copied().filter(|m| *m != isolated).collect();
                set_partition(&cluster, isolated, others.clone(), others.clone()).await;
                for &other in &others {
                    set_partition(&cluster, other, vec![isolated], vec![isolated]).await;
                }
                drop(cluster);
                *faults.entry("partition-leader").or_default() += 1;
                tokio::time::sleep(hold).await;
                heal_partitions(&*shared.lock().await).await;
            }
            5 => {
                // A minority (one node of three, two of five) from the majority.
                let mut minority: Vec<u64> = Vec::new();
                while minority.len() < consensus::quorum::max_failures(members.len()).max(1) {
                    let node = pick(&mut rng);
                    if !minority.contains(&node) {
                        minority.push(node);
                    }
                }
                let majority: Vec<u64> = members
                    .iter()
                    .copied()
                    .filter(|m| !minority.contains(m))
                    .collect();
                let cluster = shared.lock().await;
                for &node in &minority {
                    set_partition(&cluster, node, majority.clone(), majority.clone()).await;
                }
                for &node in &majority {
                    set_partition(&cluster, node, minority.clone(), minority.clone()).await;
                }
                drop(cluster);
                *faults.entry("partition-minority").or_default() += 1;
                tokio::time::sleep(hold).await;
                heal_partitions(&*shared.lock().await).await;
            }
            _ => {
                // One way: a node that hears but cannot speak.
                let node = pick(&mut rng);
                let others: Vec<u64> = members.iter().copied().filter(|m| *m != node).collect();
                set_partition(&*shared.lock().await, node, others, vec![]).await;
                *faults.entry("partition-one-way").or_default() += 1;
                tokio::time::sleep(hold).await;
                heal_partitions(&*shared.lock().await).await;
            }
        }
    }
    Ok(faults)
}

/// Runs the test with node processes started from `exe` (after
/// `leading_args`), data under `dir`.
pub async fn run(
    exe: &Path,
    leading_args: &[&str],
    dir: &Path,
    config: &NemesisConfig,
) -> anyhow::Result<NemesisReport> {
    let mut flags = config.node_flags.clone();
    flags.push("--fault-injection".into());
    if config.unsafe_local_reads {
        flags.push("--unsafe-local-reads".into());
    }
    let flags: Vec<&str> = flags.iter().map(String::as_str).collect();
    let cluster = LocalCluster::start_with(
        exe,
        leading_args,
        config.protocol,
        config.nodes,
        dir,
        &flags,
    )
    .context("cannot start the cluster")?;
    anyhow::ensure!(
        cluster
            .wait_for_leader(Duration::from_secs(20))
            .await
            .is_some(),
        "no leader within 20 s; logs in {}",
        dir.join("logs").display()
    );
    let start = Instant::now();
    let history = Recorder::default();
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let endpoints = cluster.endpoints();
    let mut tasks = Vec::new();
    for i in 0..config.clients {
        // Each client talks to its own node first, as Jepsen's do.
        let mut own = endpoints.clone();
        own.rotate_left(i % endpoints.len());
        let options = ClientOptions {
            timeout: Duration::from_secs(3),
            attempt_timeout: Duration::from_millis(800),
            start_at_first_endpoint: true,
            ..ClientOptions::default()
        };
        let mut client = Client::new(own, options)?;
        let (history, stop, keys) = (history.clone(), stop.clone(), config.keys);
        let mut rng = DetRng::new(config.seed ^ (i as u64 + 1).wrapping_mul(0x9E37_79B9));
        tasks.push(tokio::spawn(async move {
            let mut n = 0u64;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                n += 1;
                let key = format!("r{}", rng.range(0, keys as u64)).into_bytes();
                let value = format!("{i}.{n}").into_bytes();
                let command = match rng.range(0, 10) {
                    0..4 => Command::Get { key },
                    4..8 => Command::Put { key, value },
                    _ => {
                        let expected = (rng.range(0, 3) > 0).then(|| {
                            format!("{}.{}", rng.range(0, 6), n.saturating_sub(rng.range(1, 4)))
                                .into_bytes()
                        });
                        Command::CompareAndSwap {
                            key,
                            expected,
                            new: value,
                        }
                    }
                };
                let _ = history.run(&mut client, command).await;
            }
        }));
    }

    // The schedules share the cluster; each holds it only for one step.
    let shared = Arc::new(tokio::sync::Mutex::new(cluster));
    let schedules: Vec<_> = (0..config.schedules.max(1))
        .map(|i| {
            let seed = config.seed.wrapping_add(i as u64);
            let (shared, config) = (shared.clone(), config.clone());
            tokio::spawn(async move { fault_schedule(&shared, &config, seed, start).await })
        })
        .collect();
    let mut faults: BTreeMap<&'static str, u64> = BTreeMap::new();
    for schedule in schedules {
        for (kind, count) in schedule.await?? {
            *faults.entry(kind).or_default() += count;
        }
    }
    let Ok(mutex) = Arc::try_unwrap(shared) else {
        anyhow::bail!("a fault schedule still holds the cluster");
    };
    let mut cluster = mutex.into_inner();
    let members: Vec<u64> = cluster.members().keys().copied().collect();
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    for task in tasks {
        let _ = task.await;
    }

    // Heal everything, then read every key once more: every acknowledged
    // write must be accounted for in what the final reads return.
    for &node in &members {
        let _ = cluster.signal(node, Signal::SIGCONT);
        cluster.start_node(node)?;
    }
    heal_partitions(&cluster).await;
    let _ = cluster.wait_for_leader(Duration::from_secs(20)).await;
    let mut reader = Client::new(
        endpoints.clone(),
        ClientOptions {
            timeout: Duration::from_secs(20),
            ..ClientOptions::default()
        },
    )?;
    for k in 0..config.keys {
        let command = Command::Get {
            key: format!("r{k}").into_bytes(),
        };
        history.run(&mut reader, command).await.ok();
    }
    // Vanilla backs off one entry per rejected AppendEntries (Figure 2), and
    // no status changes while it does: after a long run a node can be tens
    // of thousands of entries apart, so the wait without visible progress
    // grows with the run.
    let patience = config.converge_timeout.max(config.duration);
    let (converged, converge_time, last_statuses) = converge(&cluster, patience).await;
    cluster.kill_all();

    let (ops, failed) = (history.operations(), history.failed());
    let verdict = check(&ops);
    let (excerpt, history_file) = match &verdict {
        Verdict::NotLinearizable {
            operations,
            deepest,
            ..
        } => {
            let file = dir.join("history.txt");
            let lines: Vec<String> = ops.iter().map(describe).collect();
            std::fs::write(&file, lines.join("\n")).context("cannot save the history")?;
            (Some(excerpt(&ops, operations, deepest)), Some(file))
        }
        _ => (None, None),
    };
    let completed = ops.iter().filter(|o| o.ret.is_some()).count();
    Ok(NemesisReport {
        completed,
        failed,
        unknown: ops.len() - completed,
        faults,
        verdict,
        excerpt,
        history_file,
        converged,
        converge_time,
        last_statuses,
    })
}

/// The operations of the failing key around where the checker got stuck.
fn excerpt(ops: &[Operation], operations: &[usize], deepest: &[usize]) -> String {
    let stuck_at = deepest.len();
    let mut part: Vec<&Operation> = operations.iter().map(|&i| &ops[i]).collect();
    part.sort_by_key(|o| o.call);
    let center = deepest
        .last()
        .and_then(|&last| part.iter().position(|o| std::ptr::eq(*o, &ops[last])))
        .unwrap_or(0);
    let from = center.saturating_sub(8);
    let to = (center + 12).min(part.len());
    let mut lines = vec![format!(
        "the checker linearized {stuck_at} of {} operations on this key, then found no valid next step; operations around there (times in ns):",
        operations.len()
    )];
    lines.extend(part[from..to].iter().map(|o| format!("  {}", describe(o))));
    lines.join("\n")
}

/// Waits until every node reports the same last log index, last log term
/// and commit index, with everything applied. Gives up after `timeout`
/// without progress (the least applied index not rising), so a replica that
/// is still catching up gets the time it needs. Returns whether the nodes
/// converged, and how long it took.
async fn converge(cluster: &LocalCluster, timeout: Duration) -> (bool, Duration, String) {
    let started = Instant::now();
    let mut last_progress = Instant::now();
    let mut least_applied = 0;
    let mut seen = String::new();
    let mut logged = Instant::now();
    while last_progress.elapsed() < timeout {
        let statuses = cluster.statuses().await;
        seen = statuses
            .iter()
            .map(|(id, s)| {
                format!(
                    "node {id} {} term {}: last {}/{}, commit {}, applied {}",
                    s.role,
                    s.term,
                    s.last_log_index,
                    s.last_log_term,
                    s.commit_index,
                    s.applied_index
                )
            })
            .collect::<Vec<_>>()
            .join("; ");
        if statuses.len() == cluster.members().len() {
            let settled = |s: &proto::kv::StatusResponse| {
                s.applied_index == s.commit_index && s.commit_index == s.last_log_index
            };
            let views: std::collections::BTreeSet<(u64, u64, u64)> = statuses
                .values()
                .map(|s| (s.last_log_index, s.last_log_term, s.commit_index))
                .collect();
            if views.len() == 1 && statuses.values().all(settled) {
                return (true, started.elapsed(), seen);
            }
            let least = statuses
                .values()
                .map(|s| s.applied_index)
                .min()
                .unwrap_or(0);
            if least > least_applied {
                least_applied = least;
                last_progress = Instant::now();
            }
        }
        if logged.elapsed() >= Duration::from_secs(5) {
            logged = Instant::now();
            tracing::info!(statuses = %seen, "converging");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    (false, started.elapsed(), seen)
}

//! The deterministic simulator and the linearizability checker.
//!
//! - [`simulator`]: runs a cluster of any [`consensus::Consensus`] protocol
//!   under injected faults and checks it (see the module's documentation).
//! - [`linearizability`]: the checker, usable on any recorded history.
//! - [`history_formats`]: readers for Jepsen and Porcupine history files.
//! - [`manual`]: a hand-driven cluster, for tests of a protocol's shape.
//! - [`run_seeds`]: the test driver every protocol crate uses: many seeds,
//!   or one seed from `SIM_SEED` to replay a failure.

pub mod history_formats;
pub mod linearizability;
pub mod manual;
pub mod simulator;

pub use simulator::{Failure, Faults, RunStats, SimConfig, Simulation};

use consensus::io::Recovered;
use consensus::{Consensus, NodeId};

/// Runs one simulation per seed, building each run's config with
/// `configure(seed)` and each node with `factory`. A protocol panic counts as
/// a failure of that seed. When the environment variable `SIM_SEED` is set,
/// runs only that seed, printing every event.
///
/// Returns the stats of every passing run, or an error naming every failing
/// seed with `replay` (a command with `{seed}` in it) filled in.
pub fn run_seeds<P, F, C>(
    seeds: impl IntoIterator<Item = u64>,
    configure: C,
    factory: F,
    replay: &str,
) -> Result<Vec<RunStats>, String>
where
    P: Consensus,
    F: Fn(NodeId, &[NodeId], Recovered, u64) -> P + Clone,
    C: Fn(u64) -> SimConfig,
{
    let only: Option<u64> = std::env::var("SIM_SEED").ok().and_then(|s| s.parse().ok());
    let seeds: Vec<u64> = match only {
        Some(seed) => vec![seed],
        None => seeds.into_iter().collect(),
    };
    let mut passed = Vec::new();
    let mut failures = Vec::new();
    for seed in seeds {
        let mut config = configure(seed);
        config.verbose = only.is_some();
        let factory = factory.clone();
        let outcome = std::panic::catch_unwind(std::panic::AssertUnwindSafe(move || {
            Simulation::new(config, factory).run()
        }));
        let replay_command = replay.replace("{seed}", &seed.to_string());
        match outcome {
            Ok(Ok(stats)) => passed.push(stats),
            Ok(Err(failure)) => failures.push(format!("{failure}replay: {replay_command}\n")),
            Err(panic) => {
                let message = panic
                    .downcast_ref::<String>()
                    .cloned()
                    .or_else(|| panic.downcast_ref::<&str>().map(|s| s.to_string()))
                    .unwrap_or_default();
                failures.push(format!(
                    "seed {seed} panicked: {message}\nreplay: {replay_command}\n"
                ));
            }
        }
        if failures.len() >= 3 {
            break;
        }
    }
    if failures.is_empty() {
        Ok(passed)
    } else {
        Err(failures.join("\n"))
    }
}

/// Runs many seeds for a long soak, with progress: `SIM_SEEDS` seeds
/// (default 10,000) from `SIM_FIRST` (default 1,000,000), alternating 3 and 5
/// nodes with every fault kind. Prints progress every 1,000 seeds and each
/// failure as it is found, with its replay command; panics at the end if any
/// seed failed.
pub fn run_many<P, F>(configure: impl Fn(u64, usize) -> SimConfig, factory: F, replay: &str)
where
    P: Consensus,
    F: Fn(NodeId, &[NodeId], Recovered, u64) -> P + Clone,
{
    let count: u64 = std::env::var("SIM_SEEDS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(10_000);
    let first: u64 = std::env::var("SIM_FIRST")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(1_000_000);
    let started = std::time::Instant::now();
    let mut failed = Vec::new();
    for (done, seed) in (first..first + count).enumerate() {
        let nodes = if seed.is_multiple_of(2) { 3 } else { 5 };
        if let Err(failure) = run_seeds([seed], |s| configure(s, nodes), factory.clone(), replay) {
            eprintln!("{failure}");
            failed.push(seed);
        }
        let done = done as u64 + 1;
        if done.is_multiple_of(1000) || done == count {
            let elapsed = started.elapsed().as_secs_f64();
            eprintln!(
                "{done}/{count} seeds in {elapsed:.0} s ({:.0} seeds/s), {} failed",
                done as f64 / elapsed.max(1e-9),
                failed.len()
            );
        }
    }
    assert!(failed.is_empty(), "failing seeds: {failed:?}");
}

//! raft-nilext in the deterministic simulator, with the same checks as the
//! other protocols (safety invariants after every event, liveness after
//! healing, linearizability of the whole history), clients on Nil-ext's fast
//! path, 3 and 5 nodes, every fault kind. Some runs order the durability log
//! only every few ticks, so leaders crash while nilext writes are durable but
//! not yet ordered.

use consensus::NodeId;
use consensus::io::Recovered;
use raft_nilext::{Config, NilextRaft, ReadMode};
use sim::{Faults, SimConfig, run_seeds};

const REPLAY: &str = "SIM_SEED={seed} cargo test -p raft-nilext --test simulation -- --nocapture";

fn factory(
    read_mode: ReadMode,
    ordering_interval_ticks: u64,
) -> impl Fn(NodeId, &[NodeId], Recovered, u64) -> NilextRaft + Clone {
    move |id, members, recovered, seed| {
        let mut config = Config::new(id, members.to_vec(), seed);
        config.raft.read_mode = read_mode;
        config.raft.batch_entries_max = 8;
        config.raft.inflight_appends_max = 4;
        config.ordering_interval_ticks = ordering_interval_ticks;
        NilextRaft::new(config, recovered)
    }
}

fn nilext(seed: u64, nodes: usize) -> SimConfig {
    let mut config = SimConfig::new(seed, nodes);
    config.nilext_fast_path = true;
    config
}

fn check(
    seeds: std::ops::Range<u64>,
    read_mode: ReadMode,
    ordering_interval_ticks: u64,
    configure: impl Fn(u64) -> SimConfig,
) -> Vec<sim::RunStats> {
    run_seeds(
        seeds,
        configure,
        factory(read_mode, ordering_interval_ticks),
        REPLAY,
    )
    .unwrap_or_else(|failures| panic!("{failures}"))
}

#[test]
fn three_nodes_every_fault_kind() {
    let runs = check(0..150, ReadMode::ReadIndex, 1, |seed| nilext(seed, 3));
    let fast: u64 = runs.iter().map(|r| r.fast_path_completions).sum();
    let crashes: u64 = runs.iter().map(|r| r.crashes).sum();
    eprintln!("{fast} writes completed on the fast path; {crashes} crashes");
    assert!(fast > 1000, "the fast path is used");
}

#[test]
fn three_nodes_leader_crashes_before_ordering() {
    // Ordering only every 8 ticks: leaders often crash holding durable,
    // unordered writes that a new leader must recover.
    check(10_000..10_150, ReadMode::Lease, 8, |seed| nilext(seed, 3));
}

#[test]
fn five_nodes_every_fault_kind() {
    check(20_000..20_100, ReadMode::ReadIndex, 1, |seed| {
        nilext(seed, 5)
    });
    check(21_000..21_060, ReadMode::Lease, 8, |seed| nilext(seed, 5));
}

#[test]
fn each_fault_kind_alone() {
    for (i, (name, faults)) in Faults::each_alone().into_iter().enumerate() {
        let base = 30_000 + 100 * i as u64;
        eprintln!("fault kind: {name}");
        check(base..base + 10, ReadMode::ReadIndex, 4, |seed| {
            let mut config = nilext(seed, 3);
            config.faults = faults;
            config
        });
    }
}

#[test]
fn without_faults_every_operation_completes_and_writes_take_the_fast_path() {
    for run in check(40_000..40_010, ReadMode::ReadIndex, 1, |seed| {
        let mut config = nilext(seed, 3);
        config.faults = Faults::none();
        config
    }) {
        assert_eq!(run.unknown, 0);
        assert!(run.completed > 50);
        assert!(run.fast_path_completions > 10);
    }
}

#[test]
fn slow_path_only_clients_stay_correct_too() {
    // Clients that never use the fast path: every write is ordered.
    let runs = check(50_000..50_050, ReadMode::ReadIndex, 1, |seed| {
        SimConfig::new(seed, 3)
    });
    assert!(runs.iter().all(|r| r.fast_path_completions == 0));
}

/// A long soak, not run by default, with progress:
/// `SIM_SEEDS=100000 cargo test --release -p raft-nilext --test simulation -- --ignored many_seeds --nocapture`
#[test]
#[ignore]
fn many_seeds() {
    sim::run_many(nilext, factory(ReadMode::ReadIndex, 2), REPLAY);
}

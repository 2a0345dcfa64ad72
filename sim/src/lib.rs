//! The deterministic simulator and the linearizability checker.
//!
//! - [`simulator`]: runs a cluster of any [`consensus::Consensus`] protocol
//!   under injected faults and checks it (see the module's documentation).
//! - [`linearizability`]: the checker, usable on any recorded history.
//! - [`history`]: recording client operations for the checker, and
//!   describing them.
//! - [`history_formats`]: readers for Jepsen and Porcupine history files.
//! - [`manual`]: a hand-driven cluster, for tests of a protocol's shape.
//! - [`run_seeds`]: the test driver every protocol crate uses: many seeds,
//!   or one seed from `SIM_SEED` to replay a failure.

pub mod history;
pub mod history_formats;
pub mod linearizability;
pub mod manual;
pub mod simulator;

pub use simulator::{
    CacheBug, Failure, Faults, MemoryBug, RunStats, SessionBug, SimConfig, Simulation, SnapshotBug,
};

/// The base election timeout the protocol suites give every node in the
/// simulator: shorter than kvnode's default
/// (`consensus::raft::ELECTION_TIMEOUT_TICKS`), so that a simulated run of
/// a few seconds (10 ms ticks) holds many elections.
pub const ELECTION_TIMEOUT_TICKS: u64 = 10;

/// The heartbeat interval that goes with [`ELECTION_TIMEOUT_TICKS`].
pub const HEARTBEAT_TICKS: u64 = 2;

use std::collections::BTreeMap;

use consensus::io::Recovered;
use consensus::rng::DetRng;
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

/// One soak run: the simulator's settings, how to build each node, and
/// the settings the seed chose, as (name, value) pairs for the summary.
#[derive(Debug)]
pub struct Scenario<F> {
    /// The simulator's settings.
    pub config: SimConfig,
    /// Builds each node (see [`run_seeds`]).
    pub factory: F,
    /// What the seed chose, for instance `("read mode", "lease")`.
    pub chosen: Vec<(&'static str, String)>,
}

/// Snapshot settings small enough that a run takes many snapshots and
/// sends them in several chunks, drawn from `seed`: a snapshot every 3 to
/// 40 entries, 0 to 7 entries kept behind it, chunks of 100 to 600 bytes.
pub fn small_snapshots(seed: u64) -> consensus::snapshot::SnapshotPolicy {
    let mut rng = DetRng::new(seed ^ 0x0C4C_5A4F_0016_0001);
    consensus::snapshot::SnapshotPolicy {
        entries: rng.range(3, 41),
        bytes: 0,
        keep_entries: rng.range(0, 8),
        chunk_bytes: rng.range(100, 601) as usize,
    }
}

/// Expiring sessions in a simulated run, drawn from its seed: a session
/// timeout of 200 to 400 ticks (2 to 4 s of cluster time at 10 ms a tick,
/// 20 to 40 election timeouts: kvnode's shortest and up), and clients that go idle for half to
/// twice that between two operations, one time in ten.
pub fn expiring_sessions(config: &mut SimConfig) {
    let mut rng = DetRng::new(config.seed ^ 0x5E55_1045_0016_0002);
    config.session_timeout_ticks = rng.range(200, 401);
    config.idle_chance = 0.1;
}

/// The settings of the session suites: every fault kind, expiring
/// sessions ([`expiring_sessions`]) and clients that go idle often (three
/// times in ten) during a fault phase of 8 s, so that sessions expire in
/// most runs, idle clients come
/// back to refusals, and (on Nil-ext) fast writes meet sessions near
/// expiry.
pub fn sessions_suite(seed: u64, nodes: usize) -> SimConfig {
    let mut config = SimConfig::new(seed, nodes);
    expiring_sessions(&mut config);
    config.idle_chance = 0.3;
    // Long enough for idle clients to come back while faults last.
    config.fault_phase_ms = 8_000;
    config
}

/// Checks that a session suite's runs exercised expiry: sessions expired
/// and updates of expired sessions were refused. Prints the tallies.
pub fn assert_sessions_expired(runs: &[RunStats]) {
    let sum = |f: fn(&RunStats) -> u64| runs.iter().map(f).sum::<u64>();
    let (expired, refused, idle, fast_refused) = (
        sum(|r| r.sessions_expired),
        sum(|r| r.session_expired_refusals),
        sum(|r| r.idle_clients),
        sum(|r| r.fast_path_refusals),
    );
    eprintln!(
        "{} runs: {idle} idle spells, {expired} session expiries applied, {refused} updates refused as session-expired, {fast_refused} fast writes sent to the slow path",
        runs.len()
    );
    assert!(expired > 0, "sessions expired");
    assert!(refused > 0, "updates of expired sessions were refused");
}

/// The settings of the read-cache suites: every fault kind, small
/// snapshots (installs replace a node's data under its cache), and a cache
/// drawn from the seed between one that evicts all the time and one that
/// holds everything.
pub fn cache_suite(seed: u64, nodes: usize) -> SimConfig {
    let mut config = SimConfig::new(seed, nodes);
    config.snapshots = small_snapshots(seed);
    config.cache_bytes =
        [300, 1_000, 1 << 20][DetRng::new(seed ^ 0xCAC4_E000_0019_0001).range(0, 3) as usize];
    config
}

/// Checks that a cache suite's runs read through the caches: hits and
/// misses both. Prints the tallies.
pub fn assert_cache_used(runs: &[RunStats]) {
    let hits: u64 = runs.iter().map(|r| r.cache_hits).sum();
    let misses: u64 = runs.iter().map(|r| r.cache_misses).sum();
    let installs: u64 = runs.iter().map(|r| r.snapshots_installed).sum();
    eprintln!(
        "{} runs: {hits} reads from the read caches, {misses} from the stores, {installs} snapshots installed",
        runs.len()
    );
    assert!(hits > 0 && misses > 0, "reads went through the caches");
}

/// The settings of the memory-mode suites (kvnode's `--durability
/// memory`): every fault kind, crashes that sometimes lose the machine, and
/// two spare nodes the membership nemesis adds to replace lost ones.
pub fn memory_suite(seed: u64, nodes: usize) -> SimConfig {
    let mut config = SimConfig::new(seed, nodes);
    config.memory_durability = true;
    with_membership_changes(&mut config);
    config
}

/// The settings of the non-voter suites, which make common what the soak
/// meets about once in two hundred seeds: a node that is not a voter in its
/// own log holds the log the others need, is counted as a voter by a
/// candidate behind it, and is elected (`RaftCore::note_vote_request`).
/// Five nodes, membership changes, partitions and crashes for eight
/// seconds (no pauses, one-way cuts or client restarts, which made it
/// rarer), small snapshots, every other seed in memory mode. In vanilla's
/// suite 3 runs of 60 elect a non-voter; in vanilla's soak, 24 seeds of
/// 5,000.
pub fn non_voter_suite(seed: u64) -> SimConfig {
    let mut config = SimConfig::new(seed, 5);
    with_non_voter_settings(&mut config);
    config
}

/// Gives `config` (a protocol's soak scenario, for instance) the settings
/// of [`non_voter_suite`]; `chosen` says so.
pub fn with_non_voter_settings(config: &mut SimConfig) {
    config.nodes = 5;
    // Values of ordinary size: eight seconds of faults with values up to the
    // client limit held gigabytes in the simulated logs (the soak runs
    // those for 1.5 seconds).
    config.value_padding_bytes = SimConfig::new(config.seed, 5).value_padding_bytes;
    // Snapshots always: a removed node added back later with its old log
    // (the nemesis does that) is caught up by vanilla one entry per round
    // trip, stepping back from the leader's end (Figure 2); over eight
    // seconds of faults that took longer than the drain check waits (soak
    // seed 7300045109: 876 entries). A snapshot bounds the walk.
    config.snapshots = small_snapshots(config.seed);
    with_membership_changes(config);
    config.memory_durability = config.seed.is_multiple_of(2);
    config.fault_phase_ms = 8_000;
    config.faults = Faults {
        pauses: false,
        one_way: false,
        client_restarts: false,
        ..config.faults
    };
}

/// A protocol's soak scenario with the settings of [`non_voter_suite`]
/// (`many_non_voter_seeds` in each protocol's simulation tests).
pub fn non_voter_scenario<F>(mut scenario: Scenario<F>) -> Scenario<F> {
    with_non_voter_settings(&mut scenario.config);
    let replaced = [
        "nodes",
        "faults",
        "membership changes",
        "memory durability",
        "values up to the client limit",
        "snapshots",
    ];
    scenario.chosen.retain(|(name, _)| !replaced.contains(name));
    scenario.chosen.extend([
        ("non-voter settings", "true".to_string()),
        (
            "memory durability",
            scenario.config.memory_durability.to_string(),
        ),
    ]);
    scenario
}

/// Checks that a non-voter suite's runs elected non-voters. Prints the
/// tally.
pub fn assert_non_voters_elected(runs: &[RunStats]) {
    let runs_with = runs.iter().filter(|r| r.non_voter_leaders > 0).count();
    let terms: u64 = runs.iter().map(|r| r.non_voter_leaders).sum();
    eprintln!(
        "{} runs: {runs_with} elected a non-voter ({terms} terms led by one)",
        runs.len()
    );
    assert!(terms > 0, "non-voters were elected");
}

/// Checks that a memory-mode suite's runs lost machines and replaced some.
/// Prints the tallies.
pub fn assert_machines_lost(runs: &[RunStats]) {
    let lost: u64 = runs.iter().map(|r| r.machines_lost).sum();
    let removed: u64 = runs.iter().map(|r| r.removals_applied).sum();
    let promoted: u64 = runs.iter().map(|r| r.promotions_applied).sum();
    let non_voters: u64 = runs.iter().map(|r| r.non_voter_leaders).sum();
    eprintln!(
        "{} runs: {lost} machines lost, {removed} removals and {promoted} promotions applied, \
         {non_voters} terms led by a non-voter",
        runs.len()
    );
    assert!(lost > 0, "machines were lost");
}

/// The settings of the leadership-transfer suites: every fault kind, and
/// the nemesis asks the leader to hand leadership over as often as it
/// injects any one fault.
pub fn transfer_suite(seed: u64, nodes: usize) -> SimConfig {
    let mut config = SimConfig::new(seed, nodes);
    config.leader_transfers = true;
    config
}

/// Checks that a transfer suite's runs handed leadership over: transfers
/// asked, TimeoutNow sent, elections held on it. Prints the tallies.
pub fn assert_leadership_transferred(runs: &[RunStats]) {
    let asked: u64 = runs.iter().map(|r| r.leader_transfers).sum();
    let count = |kind: &str| {
        runs.iter()
            .map(|r| r.messages.get(kind).copied().unwrap_or(0))
            .sum::<u64>()
    };
    let (timeout_now, transfer_votes) = (count("timeout_now"), count("transfer_vote"));
    eprintln!(
        "{} runs: {asked} transfers asked, {timeout_now} TimeoutNow sent, {transfer_votes} vote requests of transfer elections",
        runs.len()
    );
    assert!(
        timeout_now > 0 && transfer_votes > 0,
        "leadership was handed over"
    );
}

/// The settings of the membership suites: every fault kind, two spare
/// nodes, and the nemesis changes the membership (and hands leadership
/// over) as often as it injects three fault kinds.
pub fn membership_suite(seed: u64, nodes: usize) -> SimConfig {
    let mut config = SimConfig::new(seed, nodes);
    with_membership_changes(&mut config);
    config.leader_transfers = true;
    config
}

fn with_membership_changes(config: &mut SimConfig) {
    config.spare_nodes = 2;
    config.membership_changes = true;
}

/// Checks that a membership suite's runs changed the membership: learners
/// added and promoted, members removed. Prints the tallies.
pub fn assert_membership_changed(runs: &[RunStats]) {
    let sum = |f: fn(&RunStats) -> u64| runs.iter().map(f).sum::<u64>();
    let (asked, applied, promoted, removed) = (
        sum(|r| r.membership_changes_asked),
        sum(|r| r.membership_changes_applied),
        sum(|r| r.promotions_applied),
        sum(|r| r.removals_applied),
    );
    eprintln!(
        "{} runs: {asked} membership changes asked, {applied} committed ({promoted} promotions, {removed} removals)",
        runs.len()
    );
    assert!(
        promoted > 0 && removed > 0 && applied > promoted + removed,
        "learners were added and promoted, members removed"
    );
}

/// The generator a soak seed draws its settings from (apart from the run's
/// own, so the settings do not shift the run's random choices).
pub fn variant_rng(seed: u64) -> consensus::rng::DetRng {
    consensus::rng::DetRng::new(seed ^ 0x5EED_50A4_C0FF_EE00)
}

/// The settings every protocol's soak varies alike, drawn from `variant`:
/// 3 or 5 nodes; every fault kind at once (half the runs), none (some
/// interleavings need a quiet cluster to be common), or one kind alone. The
/// protocol adds its own settings.
pub fn soak_config(
    seed: u64,
    variant: &mut consensus::rng::DetRng,
) -> (SimConfig, Vec<(&'static str, String)>) {
    let nodes = if variant.chance(0.5) { 3 } else { 5 };
    let mut config = SimConfig::new(seed, nodes);
    let alone = Faults::each_alone();
    let roll = variant.range(0, 100);
    let faults = if roll < 50 {
        "all".to_string()
    } else if roll < 65 {
        config.faults = Faults::none();
        "none".to_string()
    } else {
        let (name, faults) = alone[variant.range(0, alone.len() as u64) as usize];
        config.faults = faults;
        name.to_string()
    };
    // A runtime waiter limit that is reached (the protocol's own small
    // limits are the protocol's to draw), and rarely values up to the
    // client limit (slow to simulate).
    let small_waiters = variant.chance(0.15);
    if small_waiters {
        config.waiters_max = 2;
    }
    // Snapshots from a generator of their own, so that adding them left
    // every other setting of a seed as it was.
    let snapshots = DetRng::new(seed ^ 0x5A4F_5B07_0016_0000).chance(0.5);
    if snapshots {
        config.snapshots = small_snapshots(seed);
    }
    // Expiring sessions likewise, and leadership transfers.
    let sessions = DetRng::new(seed ^ 0x5E55_1045_0016_0000).chance(0.5);
    if sessions {
        expiring_sessions(&mut config);
    }
    let transfers = DetRng::new(seed ^ 0x7A45_FE80_0017_0000).chance(0.5);
    config.leader_transfers = transfers;
    let membership = DetRng::new(seed ^ 0x3E3B_E850_0017_0001).chance(0.5);
    if membership {
        with_membership_changes(&mut config);
    }
    // The read cache: none, one that evicts all the time, the default,
    // one that holds everything.
    let cache_bytes =
        [0, 300, 1_000, 1 << 20][DetRng::new(seed ^ 0xCAC4_E000_0019_0000).range(0, 4) as usize];
    config.cache_bytes = cache_bytes;
    // Memory mode (`--durability memory`): crashes may lose the machine.
    let memory = DetRng::new(seed ^ 0x3E30_0000_0020_0000).chance(0.25);
    config.memory_durability = memory;
    let large_values = variant.chance(0.002);
    if large_values {
        config.value_padding_bytes = (0, consensus::limits::VALUE_BYTES_MAX);
        config.fault_phase_ms = 1_500;
    }
    (
        config,
        vec![
            ("nodes", nodes.to_string()),
            ("faults", faults),
            ("waiter limit 2", small_waiters.to_string()),
            ("values up to the client limit", large_values.to_string()),
            ("snapshots", snapshots.to_string()),
            ("sessions expire", sessions.to_string()),
            ("leader transfers", transfers.to_string()),
            ("membership changes", membership.to_string()),
            ("read cache bytes", cache_bytes.to_string()),
            ("memory durability", memory.to_string()),
        ],
    )
}

/// Runs `seeds`, each in the settings `scenario(seed)` draws for it (as the
/// soak runs it, so a failure's replay command reproduces it), and panics
/// with the failures: a soak's range in an ordinary test run, or the seeds
/// a soak once found failing.
pub fn run_scenarios<P, F>(
    seeds: impl IntoIterator<Item = u64>,
    scenario: impl Fn(u64) -> Scenario<F>,
    replay: &str,
) where
    P: Consensus,
    F: Fn(NodeId, &[NodeId], Recovered, u64) -> P + Clone,
{
    for seed in seeds {
        let Scenario {
            config, factory, ..
        } = scenario(seed);
        run_seeds([seed], |_| config.clone(), factory, replay)
            .unwrap_or_else(|failures| panic!("{failures}"));
    }
}

/// Runs many seeds for a long soak, with progress: `SIM_SEEDS` seeds
/// (default 10,000) from `SIM_FIRST` (default 1,000,000), each in the
/// settings `scenario(seed)` draws for it, so that one seed alone replays
/// exactly: with `SIM_SEED` set, only that seed runs, printing every event.
/// `SIM_ONLY` (for instance `faults=all,read mode=Lease`) skips the seeds
/// whose drawn settings differ, to spend a soak on some settings without
/// changing what any seed runs. Prints progress every 1,000 seeds and each
/// failure as it is found, with `replay` (a command with `{seed}` in it);
/// at the end, for each setting, how many seeds ran, failed, and had at
/// least one node paused; panics if any seed failed.
pub fn run_many<P, F>(scenario: impl Fn(u64) -> Scenario<F>, replay: &str)
where
    P: Consensus,
    F: Fn(NodeId, &[NodeId], Recovered, u64) -> P + Clone,
{
    let env = |name: &str| std::env::var(name).ok().and_then(|s| s.parse::<u64>().ok());
    let only = env("SIM_SEED");
    let count = if only.is_some() {
        1
    } else {
        env("SIM_SEEDS").unwrap_or(10_000)
    };
    let first = only.or(env("SIM_FIRST")).unwrap_or(1_000_000);
    let wanted = settings_filter(&std::env::var("SIM_ONLY").unwrap_or_default());
    let started = std::time::Instant::now();
    let mut failed = Vec::new();
    let (mut ran, mut skipped) = (0u64, 0u64);
    // Every 1,000 seeds scanned, and at the last, run or skipped.
    // (Seeds in which a node that was not a voter of its configuration
    // led: the rare path of `RaftCore::note_vote_request`.)
    let report_progress = |done: u64, ran: u64, skipped: u64, failed: usize, non_voter: u64| {
        if done.is_multiple_of(1000) || done == count {
            let elapsed = started.elapsed().as_secs_f64();
            eprintln!(
                "{done}/{count} seeds in {elapsed:.0} s ({:.0} seeds/s), {ran} run, {skipped} skipped by SIM_ONLY, {failed} failed, {non_voter} with a non-voter leader",
                ran as f64 / elapsed.max(1e-9),
            );
        }
    };
    let mut non_voter = 0u64;
    // (setting, value) -> (seeds, failures, seeds with a pause)
    let mut tally: BTreeMap<(&'static str, String), (u64, u64, u64)> = BTreeMap::new();
    for (done, seed) in (first..first + count).enumerate() {
        let Scenario {
            config,
            factory,
            chosen,
        } = scenario(seed);
        let matches = wanted
            .iter()
            .all(|(name, value)| chosen.iter().any(|(n, v)| n == name && v == value));
        if only.is_none() && !matches {
            skipped += 1;
            report_progress(done as u64 + 1, ran, skipped, failed.len(), non_voter);
            continue;
        }
        if only.is_some() {
            eprintln!("seed {seed}: {}", describe_chosen(&chosen));
        }
        ran += 1;
        let outcome = run_seeds([seed], |_| config.clone(), factory, replay);
        let paused = outcome
            .as_ref()
            .is_ok_and(|runs| runs.iter().any(|r| r.pauses > 0));
        let failure = outcome.is_err();
        non_voter += u64::from(
            outcome
                .as_ref()
                .is_ok_and(|runs| runs.iter().any(|r| r.non_voter_leaders > 0)),
        );
        if let Err(failure) = outcome {
            eprintln!("{failure}settings: {}\n", describe_chosen(&chosen));
            failed.push(seed);
        }
        for setting in chosen {
            let entry = tally.entry(setting).or_default();
            entry.0 += 1;
            entry.1 += u64::from(failure);
            entry.2 += u64::from(paused);
        }
        report_progress(done as u64 + 1, ran, skipped, failed.len(), non_voter);
    }
    eprintln!(
        "seeds {first}..{}: {ran} run, {skipped} skipped; by setting (seeds, failed, with a pause):",
        first + count
    );
    for ((name, value), (seeds, failures, paused)) in &tally {
        eprintln!("  {name} = {value}: {seeds}, {failures}, {paused}");
    }
    assert!(failed.is_empty(), "failing seeds: {failed:?}");
}

/// `name=value` pairs, comma-separated (`SIM_ONLY`).
fn settings_filter(text: &str) -> Vec<(String, String)> {
    text.split(',')
        .filter(|pair| !pair.trim().is_empty())
        .map(|pair| match pair.split_once('=') {
            Some((name, value)) => (name.trim().to_string(), value.trim().to_string()),
            None => panic!("SIM_ONLY takes name=value pairs, comma-separated, not {pair:?}"),
        })
        .collect()
}

fn describe_chosen(chosen: &[(&'static str, String)]) -> String {
    chosen
        .iter()
        .map(|(name, value)| format!("{name} = {value}"))
        .collect::<Vec<_>>()
        .join(", ")
}

#[cfg(test)]
mod tests {
    use super::settings_filter;

    #[test]
    fn sim_only_reads_name_value_pairs() {
        assert!(settings_filter("").is_empty());
        assert_eq!(
            settings_filter("faults=all, read mode = Lease"),
            vec![
                ("faults".to_string(), "all".to_string()),
                ("read mode".to_string(), "Lease".to_string())
            ]
        );
    }

    #[test]
    #[should_panic(expected = "name=value pairs")]
    fn sim_only_refuses_a_pair_without_a_value() {
        settings_filter("faults");
    }
}

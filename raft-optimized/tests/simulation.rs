//! raft-optimized in the deterministic simulator, with the same checks as
//! raft-vanilla: safety invariants after every event, liveness after
//! healing, linearizability of the whole history; 3 and 5 nodes, every fault
//! kind, both read modes.

use consensus::NodeId;
use consensus::io::Recovered;
use raft_optimized::{Config, OptimizedRaft, ReadMode};
use sim::{Faults, SimConfig, run_seeds};

const REPLAY: &str =
    "SIM_SEED={seed} cargo test -p raft-optimized --test simulation -- --nocapture";
const SOAK_REPLAY: &str = "SIM_SEED={seed} cargo test --release -p raft-optimized --test simulation -- --ignored --exact many_seeds --nocapture";
const NON_VOTER_REPLAY: &str = "SIM_SEED={seed} cargo test --release -p raft-optimized --test simulation -- --ignored --exact many_non_voter_seeds --nocapture";

fn factory(
    read_mode: ReadMode,
) -> impl Fn(NodeId, &[NodeId], Recovered, u64) -> OptimizedRaft + Clone {
    factory_with(read_mode, true)
}

fn factory_with(
    read_mode: ReadMode,
    check_quorum: bool,
) -> impl Fn(NodeId, &[NodeId], Recovered, u64) -> OptimizedRaft + Clone {
    factory_limits(read_mode, check_quorum, false)
}

/// With `small_limits`: a proposal queue of two, one entry per
/// AppendEntries and per durable write, one AppendEntries in flight.
fn factory_limits(
    read_mode: ReadMode,
    check_quorum: bool,
    small_limits: bool,
) -> impl Fn(NodeId, &[NodeId], Recovered, u64) -> OptimizedRaft + Clone {
    move |id, members, recovered, seed| {
        let mut config = Config::new(id, members.to_vec(), seed);
        config.election_timeout_ticks = sim::ELECTION_TIMEOUT_TICKS;
        config.heartbeat_ticks = sim::HEARTBEAT_TICKS;
        config.read_mode = read_mode;
        config.check_quorum = check_quorum;
        // Small batches and windows, so the limits are exercised.
        config.batch_entries_max = 8;
        config.inflight_appends_max = 4;
        if small_limits {
            config.proposals_queued_max = 2;
            config.batch_entries_max = 1;
            config.inflight_appends_max = 1;
        }
        OptimizedRaft::new(config, recovered)
    }
}

fn check(
    seeds: std::ops::Range<u64>,
    read_mode: ReadMode,
    configure: impl Fn(u64) -> SimConfig,
) -> Vec<sim::RunStats> {
    run_seeds(seeds, configure, factory(read_mode), REPLAY)
        .unwrap_or_else(|failures| panic!("{failures}"))
}

#[test]
fn three_nodes_every_fault_kind_read_index() {
    let runs = check(0..200, ReadMode::ReadIndex, |seed| SimConfig::new(seed, 3));
    assert!(runs.iter().map(|r| r.crashes).sum::<u64>() > 0);
}

/// Without check-quorum a deposed leader stays leader for as long as it is
/// cut off: ReadIndex alone must keep its reads linearizable. (This is the
/// setting in which the simulator is quickest to catch a read path that
/// skips the leadership check.)
#[test]
fn read_index_without_check_quorum() {
    run_seeds(
        50_000..50_150,
        |seed| SimConfig::new(seed, 3),
        factory_with(ReadMode::ReadIndex, false),
        REPLAY,
    )
    .unwrap_or_else(|failures| panic!("{failures}"));
}

#[test]
fn three_nodes_every_fault_kind_lease_reads() {
    check(10_000..10_150, ReadMode::Lease, |seed| {
        SimConfig::new(seed, 3)
    });
}

#[test]
fn five_nodes_every_fault_kind() {
    check(20_000..20_100, ReadMode::ReadIndex, |seed| {
        SimConfig::new(seed, 5)
    });
    check(21_000..21_060, ReadMode::Lease, |seed| {
        SimConfig::new(seed, 5)
    });
}

#[test]
fn each_fault_kind_alone() {
    for (i, (name, faults)) in Faults::each_alone().into_iter().enumerate() {
        let base = 30_000 + 100 * i as u64;
        eprintln!("fault kind: {name}");
        check(base..base + 10, ReadMode::Lease, |seed| {
            let mut config = SimConfig::new(seed, 3);
            config.faults = faults;
            config
        });
    }
}

#[test]
fn without_faults_every_operation_completes() {
    for run in check(40_000..40_010, ReadMode::ReadIndex, |seed| {
        let mut config = SimConfig::new(seed, 3);
        config.faults = Faults::none();
        config
    }) {
        assert_eq!(run.unknown, 0);
        assert!(run.completed > 50);
    }
}

/// Pauses alone (a process stopped while the others go on): a leader
/// resumed from a pause catches up on time before it answers anything, so
/// its lease has ended if another leader may have been elected.
#[test]
fn pauses_with_lease_and_read_index_reads() {
    let pauses = Faults {
        pauses: true,
        ..Faults::none()
    };
    for (mode, base) in [(ReadMode::Lease, 60_000), (ReadMode::ReadIndex, 61_000)] {
        for nodes in [3, 5] {
            check(base..base + 80, mode, |seed| {
                let mut config = SimConfig::new(seed, nodes);
                config.faults = pauses;
                config
            });
        }
    }
}

/// The pause fault catches a runtime that loses the ticks a pause missed
/// (kvnode's periodic ticker before it took time from a clock): a resumed
/// leader then serves lease reads from a lease that ended in real time.
#[test]
fn catches_a_runtime_that_loses_the_ticks_of_a_pause() {
    let result = run_seeds(
        60_000..60_300,
        |seed| {
            let mut config = SimConfig::new(seed, 3);
            config.faults = Faults {
                pauses: true,
                ..Faults::none()
            };
            config.runtime_loses_ticks_in_pauses = true;
            config
        },
        factory(ReadMode::Lease),
        REPLAY,
    );
    let failures = result.expect_err("stale lease reads must be caught within 300 seeds");
    assert!(failures.contains("not linearizable"), "{failures}");
}

/// Section 7: nodes take snapshots every few entries and compact their
/// logs; a follower behind is sent the snapshot, in chunks, through flow
/// control's Snapshot state, under every fault (crashes during an install
/// among them), with both read modes.
#[test]
fn snapshots_under_every_fault_kind() {
    let mut installed = 0;
    for (mode, base) in [(ReadMode::Lease, 70_000), (ReadMode::ReadIndex, 71_000)] {
        for nodes in [3, 5] {
            let runs = check(base..base + 60, mode, |seed| {
                let mut config = SimConfig::new(seed, nodes);
                config.snapshots = sim::small_snapshots(seed);
                config
            });
            installed += runs.iter().map(|r| r.snapshots_installed).sum::<u64>();
        }
    }
    assert!(
        installed > 50,
        "followers installed snapshots ({installed})"
    );
}

/// Sessions expire under every fault kind, both read modes (see
/// raft-vanilla's suite of the same name).
#[test]
fn sessions_expire_under_every_fault_kind() {
    let mut runs = check(95_000..95_060, ReadMode::Lease, |seed| {
        sim::sessions_suite(seed, 3)
    });
    runs.extend(check(95_500..95_530, ReadMode::ReadIndex, |seed| {
        sim::sessions_suite(seed, 5)
    }));
    sim::assert_sessions_expired(&runs);
}

/// Leadership transfers (Raft thesis 3.10) under every fault kind, both
/// read modes: the target is brought up to date, elected on TimeoutNow
/// (voters yield to it despite check-quorum), and the old leader serves no
/// lease read after sending it.
#[test]
fn leadership_transfers_under_every_fault_kind() {
    let mut runs = check(98_000..98_080, ReadMode::Lease, |seed| {
        sim::transfer_suite(seed, 3)
    });
    runs.extend(check(98_500..98_540, ReadMode::ReadIndex, |seed| {
        sim::transfer_suite(seed, 5)
    }));
    sim::assert_leadership_transferred(&runs);
}

/// Membership changes (one server at a time: add a learner, promote it,
/// remove a member) under every fault kind, with leadership transfers, in
/// both read modes.
#[test]
fn membership_changes_under_every_fault_kind() {
    let mut runs = check(97_000..97_080, ReadMode::Lease, |seed| {
        sim::membership_suite(seed, 3)
    });
    runs.extend(check(97_500..97_540, ReadMode::ReadIndex, |seed| {
        sim::membership_suite(seed, 5)
    }));
    sim::assert_membership_changed(&runs);
}

/// A node that expires sessions by its own clock instead of the stamps in
/// the log holds other sessions than its peers at the same index: the
/// state comparison catches it.
#[test]
fn catches_sessions_expired_by_a_local_clock() {
    let result = run_seeds(
        96_000..96_100,
        |seed| {
            let mut config = sim::sessions_suite(seed, 3);
            config.injected_session_bug = Some(sim::SessionBug::ExpireByLocalClock);
            config
        },
        factory(ReadMode::ReadIndex),
        REPLAY,
    );
    let failures = result.expect_err("expiry by a local clock must be caught");
    assert!(failures.contains("state-machine safety"), "{failures}");
}

/// Issue 19: every node reads through a read cache (small ones evict all
/// the time), under every fault kind and snapshot installs.
#[test]
fn read_caches_under_faults() {
    let mut runs = check(19_000..19_060, ReadMode::Lease, |seed| {
        sim::cache_suite(seed, 3)
    });
    runs.extend(check(19_100..19_140, ReadMode::ReadIndex, |seed| {
        sim::cache_suite(seed, 5)
    }));
    sim::assert_cache_used(&runs);
}

/// A cache bug shows as a read no linearizable order explains, or as
/// replicas whose states differ at one index (an increment or
/// compare-and-swap executed on a stale value).
fn assert_caught_stale_reads(failures: &str) {
    eprintln!(
        "{}",
        failures.lines().take(3).collect::<Vec<_>>().join("\n")
    );
    assert!(
        failures.contains("not linearizable") || failures.contains("state-machine safety"),
        "{failures}"
    );
}

/// Issue 20: memory mode (`--durability memory`): crashes sometimes lose
/// the machine for good, lost voters are replaced by new nodes; with at
/// most a minority lost, nothing acknowledged is lost.
#[test]
fn memory_mode_under_faults() {
    let mut runs = check(20_000..20_080, ReadMode::Lease, |seed| {
        sim::memory_suite(seed, 3)
    });
    runs.extend(check(20_100..20_140, ReadMode::ReadIndex, |seed| {
        sim::memory_suite(seed, 5)
    }));
    sim::assert_machines_lost(&runs);
}

/// A lost machine that comes back under its old id with an empty disk
/// (rather than being replaced by a new node) votes again in a term it
/// voted in, and has forgotten entries it acknowledged: a safety invariant
/// (two leaders in a term, a leader without a committed entry, replicas
/// that differ) catches it within these seeds.
#[test]
fn catches_a_lost_machine_that_rejoins_empty() {
    let mut caught = Vec::new();
    for seed in 20_200..20_700 {
        let result = run_seeds(
            [seed],
            |seed| {
                let mut config = sim::memory_suite(seed, if seed % 2 == 0 { 3 } else { 5 });
                config.injected_memory_bug = Some(sim::MemoryBug::LostMachineRejoinsEmpty);
                config
            },
            factory(ReadMode::Lease),
            REPLAY,
        );
        if let Err(failure) = result {
            caught.push(failure.lines().next().unwrap_or_default().to_string());
            if [
                "election safety",
                "leader completeness",
                "state machine safety",
            ]
            .iter()
            .any(|kind| failure.contains(kind))
            {
                eprintln!(
                    "{} runs caught the bug; the last: {}",
                    caught.len(),
                    caught[caught.len() - 1]
                );
                return;
            }
        }
    }
    panic!("no safety invariant caught a machine that rejoins empty: {caught:#?}");
}

fn with_cache_bug(seed: u64, bug: sim::CacheBug) -> SimConfig {
    let mut config = sim::cache_suite(seed, 3);
    config.injected_cache_bug = Some(bug);
    config
}

/// A cache that applied deletes do not reach serves a deleted key's old
/// value: the linearizability check (or, through a compare-and-swap, the
/// state comparison) catches it.
#[test]
fn catches_a_read_cache_that_misses_deletes() {
    let result = run_seeds(
        19_200..19_300,
        |seed| with_cache_bug(seed, sim::CacheBug::DeletesNotApplied),
        factory(ReadMode::Lease),
        REPLAY,
    );
    let failures = result.expect_err("a cache that keeps deleted values must be caught");
    assert_caught_stale_reads(&failures);
}

/// A cache not cleared when a snapshot replaces the node's data serves
/// values from before it.
#[test]
fn catches_a_read_cache_kept_across_a_snapshot_install() {
    let result = run_seeds(
        19_300..19_500,
        |seed| with_cache_bug(seed, sim::CacheBug::KeptAcrossSnapshotInstall),
        factory(ReadMode::Lease),
        REPLAY,
    );
    let failures = result.expect_err("a cache kept across a snapshot install must be caught");
    assert_caught_stale_reads(&failures);
}

/// A cache that survives a crash in which the state database rolls back
/// serves values the node has not applied again yet.
#[test]
fn catches_a_read_cache_kept_across_a_restart() {
    let result = run_seeds(
        19_500..19_700,
        |seed| {
            let mut config = with_cache_bug(seed, sim::CacheBug::KeptAcrossRestart);
            config.faults = Faults {
                crashes: true,
                ..Faults::none()
            };
            config
        },
        factory(ReadMode::Lease),
        REPLAY,
    );
    let failures = result.expect_err("a cache kept across a restart must be caught");
    assert_caught_stale_reads(&failures);
}

fn with_snapshot_bug(seed: u64, bug: sim::SnapshotBug) -> SimConfig {
    let mut config = SimConfig::new(seed, 3);
    config.snapshots = sim::small_snapshots(seed);
    config.injected_snapshot_bug = Some(bug);
    config
}

/// The state comparison catches a snapshot that leaves out the sessions:
/// the node that installs it holds another state than its peers at the
/// same applied index (and could apply a retried request twice).
#[test]
fn catches_a_snapshot_without_sessions() {
    let result = run_seeds(
        72_000..72_100,
        |seed| with_snapshot_bug(seed, sim::SnapshotBug::CaptureWithoutSessions),
        factory(ReadMode::ReadIndex),
        REPLAY,
    );
    let failures = result.expect_err("a snapshot without sessions must be caught");
    assert!(failures.contains("state-machine safety"), "{failures}");
}

/// A capture that is not durable lets a crash roll the state back below
/// the compacted log: the restarted node cannot rebuild, and says so.
#[test]
fn catches_a_capture_that_is_not_durable() {
    let result = run_seeds(
        73_000..73_200,
        |seed| {
            let mut config = with_snapshot_bug(seed, sim::SnapshotBug::CaptureNotDurable);
            config.faults = Faults {
                crashes: true,
                ..Faults::none()
            };
            config
        },
        factory(ReadMode::ReadIndex),
        REPLAY,
    );
    let failures = result.expect_err("a capture that is not durable must be caught");
    assert!(
        failures.contains("holds every compacted entry"),
        "{failures}"
    );
}

/// Issue 14: small limits, reached all the time (the runtime's waiter
/// limit too), with every fault kind.
#[test]
fn small_limits_are_reached_and_nothing_is_lost() {
    let mut refused = 0;
    for (mode, base) in [(ReadMode::Lease, 100_000), (ReadMode::ReadIndex, 101_000)] {
        for nodes in [3, 5] {
            let runs = run_seeds(
                base..base + 40,
                |seed| {
                    let mut config = SimConfig::new(seed, nodes);
                    config.waiters_max = 2;
                    config
                },
                factory_limits(mode, true, true),
                REPLAY,
            )
            .unwrap_or_else(|failures| panic!("{failures}"));
            refused += runs.iter().map(|r| r.waiter_refusals).sum::<u64>();
        }
    }
    assert!(refused > 0, "the waiter limit was reached");
}

/// Issue 14: values up to the client value limit; no message exceeds the
/// peer message limit and nothing stalls.
#[test]
fn values_up_to_the_client_limit() {
    for (mode, base) in [(ReadMode::Lease, 110_000), (ReadMode::ReadIndex, 111_000)] {
        for run in check(base..base + 3, mode, |seed| {
            let mut config = SimConfig::new(seed, 3);
            config.value_padding_bytes = (0, consensus::limits::VALUE_BYTES_MAX);
            config.fault_phase_ms = 1_500;
            config
        }) {
            assert_eq!(run.oversized_messages, 0);
        }
    }
}

/// Seeds the soak found failing, replayed exactly (their scenario drawn
/// from the seed): 2710090199 and 2710157343, a client restarted with its
/// id, numbering its requests from 1 again, gave up its first write
/// (outcome unknown) and went on reusing numbers until one equalled its
/// session's latest and was answered with that request's result (a
/// compare-and-swap answered "written"). The state machine now refuses
/// another request under the latest number (`Session::answer_again`), and
/// clients of odd id take a fresh id then, as kvclient's documentation
/// tells a client in doubt.
///
/// 8100003341 (snapshots, ReadIndex without check-quorum): a follower
/// refused a late AppendEntries of an older term with its own term and the
/// old message's round number, which confirmed a ReadIndex round of the
/// leader of its term (the same node, restarted, its round numbers started
/// again) without a majority: a stale read in a minority partition.
/// Refusals of an older term's AppendEntries now echo no round.
/// 4300078387 (the simulator's own client): a client reusing numbers sent
/// a put identical to the one its session had applied under that number,
/// answered as the retry it is indistinguishable from (such a client's
/// values now differ).
const SOAK_REGRESSIONS: &[u64] = &[2_710_090_199, 2_710_157_343, 8_100_003_341, 4_300_078_387];

#[test]
fn soak_regressions() {
    sim::run_scenarios(SOAK_REGRESSIONS.iter().copied(), soak_scenario, SOAK_REPLAY);
}

/// A thousand seeds of the soak's own mix (every setting the soak draws,
/// every fault kind, client faults and restarts among them), in every test
/// run.
#[test]
fn a_thousand_seeds_of_the_soak() {
    let started = std::time::Instant::now();
    sim::run_scenarios(6000000..6001000, soak_scenario, SOAK_REPLAY);
    eprintln!("1000 seeds in {:.1} s", started.elapsed().as_secs_f64());
}

/// The non-voter suite (`sim::non_voter_suite`): a non-voter elected,
/// because a candidate behind it counted it as a voter; it must hand
/// leadership to a voter, and everything else hold.
#[test]
fn non_voters_elected_under_faults() {
    let mut runs = check(21_000..21_040, ReadMode::Lease, sim::non_voter_suite);
    runs.extend(check(
        21_100..21_140,
        ReadMode::ReadIndex,
        sim::non_voter_suite,
    ));
    sim::assert_non_voters_elected(&runs);
}

/// As `many_seeds`, every seed with the non-voter suite's settings
/// (`sim::non_voter_scenario`): a soak of the rare path, not run by
/// default.
#[test]
#[ignore]
fn many_non_voter_seeds() {
    sim::run_many(
        |seed| sim::non_voter_scenario(soak_scenario(seed)),
        NON_VOTER_REPLAY,
    );
}

/// A long soak, not run by default, with progress: each seed draws every
/// setting the tests above vary (nodes, fault kinds, read mode,
/// check-quorum), and a failure prints the command that replays exactly
/// that run:
/// `SIM_FIRST=7000000 SIM_SEEDS=100000 cargo test --release -p raft-optimized --test simulation -- --ignored --exact many_seeds --nocapture`
#[test]
#[ignore]
fn many_seeds() {
    sim::run_many(soak_scenario, SOAK_REPLAY);
}

fn soak_scenario(
    seed: u64,
) -> sim::Scenario<impl Fn(NodeId, &[NodeId], Recovered, u64) -> OptimizedRaft + Clone> {
    let mut variant = sim::variant_rng(seed);
    let (config, mut chosen) = sim::soak_config(seed, &mut variant);
    let read_mode = if variant.chance(0.5) {
        ReadMode::ReadIndex
    } else {
        ReadMode::Lease
    };
    // Lease reads need check-quorum; ReadIndex runs also without it.
    let check_quorum = read_mode == ReadMode::Lease || variant.chance(0.75);
    let small_limits = variant.chance(0.15);
    chosen.extend([
        ("read mode", format!("{read_mode:?}")),
        ("check-quorum", check_quorum.to_string()),
        ("small protocol limits", small_limits.to_string()),
    ]);
    sim::Scenario {
        config,
        factory: factory_limits(read_mode, check_quorum, small_limits),
        chosen,
    }
}

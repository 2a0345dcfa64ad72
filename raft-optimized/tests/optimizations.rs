//! One test per optimization, showing that it acts, on a hand-driven
//! cluster (`sim::manual`): nothing moves unless the test moves it.

use consensus::message::Message;
use consensus::{ClientRequest, Command, CommandResult, Consensus, RequestId, Role};
use raft_optimized::{Config, OptimizedRaft, ReadMode};
use sim::manual::ManualCluster;

fn cluster(n: u64, read_mode: ReadMode) -> ManualCluster<OptimizedRaft> {
    ManualCluster::new(n, |id, members| {
        let mut config = Config::new(id, members.to_vec(), 7);
        // The tick counts in these tests assume the simulator's timing.
        config.election_timeout_ticks = sim::ELECTION_TIMEOUT_TICKS;
        config.heartbeat_ticks = sim::HEARTBEAT_TICKS;
        config.read_mode = read_mode;
        config.inflight_appends_max = 4;
        OptimizedRaft::new(config, Default::default())
    })
}

fn put(seq: u64, key: &str) -> ClientRequest {
    ClientRequest {
        id: RequestId { client: 1, seq },
        command: Command::Put {
            key: key.into(),
            value: b"v".to_vec(),
        },
    }
}

fn get(client: u64, key: &str) -> ClientRequest {
    ClientRequest {
        id: RequestId { client, seq: 1 },
        command: Command::Get { key: key.into() },
    }
}

fn appends_to(c: &ManualCluster<OptimizedRaft>, from: u64, to: u64) -> Vec<usize> {
    c.queued(from, to)
        .iter()
        .filter_map(|m| match m {
            Message::AppendEntries(a) if !a.entries.is_empty() => Some(a.entries.len()),
            _ => None,
        })
        .collect()
}

#[test]
fn a_batch_of_proposals_makes_one_durable_write_and_one_append_per_follower() {
    let mut c = cluster(3, ReadMode::ReadIndex);
    c.elect(1, 100);
    // The first command goes out at once; its write is now syncing.
    c.request(1, put(1, "first"));
    assert_eq!(c.unsynced(1), 1);
    c.network.clear();
    // 50 commands arrive while that sync is in flight: they wait.
    for seq in 2..=51 {
        c.request(1, put(seq, "k"));
    }
    assert_eq!(
        c.unsynced(1),
        1,
        "no write per command while a sync is in flight"
    );
    assert!(appends_to(&c, 1, 2).is_empty());
    // The sync completes: all 50 go in one write and one AppendEntries each.
    let writes_before = c.outboxes.len();
    c.sync_one(1);
    let batch_writes: Vec<_> = c.outboxes[writes_before..]
        .iter()
        .filter(|(_, o)| o.writes > 0)
        .collect();
    assert_eq!(batch_writes.len(), 1, "one durable write");
    assert_eq!(batch_writes[0].1.appended_entries, 50);
    assert_eq!(appends_to(&c, 1, 2), vec![50]);
    assert_eq!(appends_to(&c, 1, 3), vec![50]);
    c.settle(10_000);
    for seq in 1..=51 {
        assert_eq!(
            c.result_of(RequestId { client: 1, seq }),
            Some(&CommandResult::Written)
        );
    }
}

#[test]
fn several_appends_are_in_flight_to_a_slow_follower() {
    let mut c = cluster(3, ReadMode::ReadIndex);
    c.elect(1, 100);
    c.network.clear();
    // Node 3 answers nothing; node 2 keeps up, so commands commit.
    c.cut.insert((3, 1));
    for seq in 1..=10 {
        c.request(1, put(seq, "k"));
        c.sync(1);
    }
    let to_slow = appends_to(&c, 1, 3);
    assert_eq!(
        to_slow.len(),
        4,
        "the window of 4 appends is full, without waiting for answers: {to_slow:?}"
    );
    c.settle(10_000);
    assert_eq!(
        c.node(1).status().commit_index,
        c.node(1).status().last_log_index
    );
}

#[test]
fn the_leader_sends_before_its_own_write_is_durable_and_counts_itself_after() {
    let mut c = cluster(5, ReadMode::ReadIndex);
    c.elect(1, 100);
    c.network.clear();
    c.request(1, put(1, "k"));
    let (_, outbox) = c.outboxes.last().expect("an outbox").clone();
    assert_eq!(outbox.writes, 1);
    assert_eq!(
        outbox.messages.0, 4,
        "the entry leaves for all four followers before the leader's sync"
    );
    let index = c.node(1).status().last_log_index;
    // Two followers acknowledge: 2 of 5, plus the leader only once durable.
    c.cut.insert((1, 4));
    c.cut.insert((1, 5));
    while c.deliver_one().is_some() {}
    c.sync(2);
    c.sync(3);
    while c.deliver_one().is_some() {}
    assert!(
        c.node(1).status().commit_index < index,
        "not committed while the leader's own copy is not durable"
    );
    c.sync(1);
    assert_eq!(
        c.node(1).status().commit_index,
        index,
        "committed once the leader's write is durable"
    );
}

#[test]
fn a_read_index_read_appends_nothing_to_the_log() {
    let mut c = cluster(3, ReadMode::ReadIndex);
    c.elect(1, 100);
    c.request(1, put(1, "k"));
    c.settle(10_000);
    let last = c.node(1).status().last_log_index;
    let syncs: u64 = c.nodes.values().map(|n| n.durable.syncs).sum();
    c.request(1, get(2, "k"));
    assert_eq!(
        c.result_of(RequestId { client: 2, seq: 1 }),
        None,
        "not before a majority confirms leadership"
    );
    c.settle(10_000);
    assert_eq!(
        c.result_of(RequestId { client: 2, seq: 1 }),
        Some(&CommandResult::Value(Some(b"v".to_vec())))
    );
    assert_eq!(c.node(1).status().last_log_index, last, "no log entry");
    assert_eq!(
        c.nodes.values().map(|n| n.durable.syncs).sum::<u64>(),
        syncs,
        "no disk write"
    );
}

#[test]
fn a_lease_read_is_served_at_once() {
    let mut c = cluster(3, ReadMode::Lease);
    c.elect(1, 100);
    c.request(1, put(1, "k"));
    c.settle(10_000);
    let queued = c.network.len();
    c.request(1, get(2, "k"));
    assert_eq!(
        c.result_of(RequestId { client: 2, seq: 1 }),
        Some(&CommandResult::Value(Some(b"v".to_vec())))
    );
    assert_eq!(c.network.len(), queued, "no message needed");
    // Once the lease has run out without a confirmed round, reads wait again.
    c.cut.insert((2, 1));
    c.cut.insert((3, 1));
    c.tick(1, 9);
    c.settle(10_000);
    c.request(1, get(3, "k"));
    assert_eq!(c.result_of(RequestId { client: 3, seq: 1 }), None);
}

#[test]
fn a_node_cut_off_and_reconnected_does_not_raise_the_term_or_depose_the_leader() {
    let mut c = cluster(3, ReadMode::ReadIndex);
    c.elect(1, 100);
    let term = c.node(1).status().term;
    // Node 3 hears nothing for many election timeouts.
    c.cut.insert((1, 3));
    c.cut.insert((2, 3));
    for _ in 0..10 {
        c.tick(3, 20);
        c.tick(1, 2);
        c.tick(2, 2);
        c.settle(10_000);
    }
    assert_eq!(
        c.node(3).status().term,
        term,
        "pre-votes failed, so the term did not rise"
    );
    assert_eq!(c.node(3).status().role, Role::PreCandidate);
    c.cut.clear();
    c.tick(1, 2);
    c.settle(10_000);
    assert_eq!(c.node(1).status().role, Role::Leader);
    assert_eq!(c.node(1).status().term, term);
    assert_eq!(c.node(3).status().role, Role::Follower);
    assert_eq!(c.node(3).status().leader, Some(1));
}

#[test]
fn check_quorum_makes_a_cut_off_leader_step_down() {
    let mut c = cluster(3, ReadMode::ReadIndex);
    c.elect(1, 100);
    c.cut.insert((2, 1));
    c.cut.insert((3, 1));
    for _ in 0..25 {
        c.tick(1, 1);
        c.settle(10_000);
    }
    assert_eq!(
        c.node(1).status().role,
        Role::Follower,
        "no majority heard for an election timeout"
    );
    c.request(1, put(9, "k"));
    assert!(c.result_of(RequestId { client: 1, seq: 9 }).is_none());
}

#[test]
fn without_check_quorum_votes_are_not_refused() {
    // A control for the test above: the behaviour comes from the setting.
    let mut c = ManualCluster::new(3, |id, members| {
        let mut config = Config::new(id, members.to_vec(), 7);
        config.check_quorum = false;
        config.pre_vote = false;
        OptimizedRaft::new(config, Default::default())
    });
    c.elect(1, 100);
    let term = c.node(1).status().term;
    c.cut.insert((1, 3));
    c.tick(3, 25);
    c.cut.clear();
    c.settle(10_000);
    assert!(
        c.node(3).status().term > term,
        "without pre-vote the cut-off node raised the term"
    );
    assert_ne!(
        c.node(1).status().role,
        Role::Leader,
        "and deposed the leader"
    );
}

/// Soak seed 8100003341, by hand: a node that led term 1 restarts and
/// leads term 2, its round numbers started again. A late AppendEntries of
/// its term-1 rounds reaches a follower already in term 2, which refuses it.
/// Then the node is cut off, and the others elect a leader of term 3 and
/// commit a write. A read at the deposed, isolated leader must not be
/// served: the refusal confirmed none of its term-2 rounds (it echoes no
/// round number), and no answer confirms a round not yet sent.
#[test]
fn a_refusal_of_a_late_older_term_message_confirms_no_read_round() {
    let factory = |id, members: &[u64], recovered| {
        let mut config = Config::new(id, members.to_vec(), 7);
        config.election_timeout_ticks = sim::ELECTION_TIMEOUT_TICKS;
        config.heartbeat_ticks = sim::HEARTBEAT_TICKS;
        config.read_mode = ReadMode::ReadIndex;
        config.check_quorum = false;
        OptimizedRaft::new(config, recovered)
    };
    let mut c = ManualCluster::new(3, |id, members| factory(id, members, Default::default()));
    c.elect(1, 100);
    assert_eq!(c.node(1).status().term, 1);
    // Node 1 restarts (its term and vote are durable) and leads term 2.
    let hard_state = consensus::HardState {
        term: 1,
        voted_for: Some(1),
    };
    c.restart(1, hard_state, |recovered| factory(1, &[1, 2, 3], recovered));
    c.elect(1, 100);
    assert_eq!(c.node(1).status().term, 2);
    c.settle(10_000);
    // A heartbeat of node 1's term-1 rounds, round 50, arrives late at
    // node 2 (term 2), which refuses it with its own term.
    let late = consensus::message::AppendEntries {
        term: 1,
        leader_id: 1,
        prev_log_index: 0,
        prev_log_term: 0,
        entries: Vec::new(),
        leader_commit: 0,
        context: 50,
    };
    c.step(
        2,
        consensus::Input::Message {
            from: 1,
            message: Message::AppendEntries(late),
        },
    );
    c.settle(10_000);
    // Node 1 is cut off; nodes 2 and 3 elect node 2 in term 3 and write.
    for other in [2, 3] {
        c.cut.insert((1, other));
        c.cut.insert((other, 1));
    }
    c.elect(2, 100);
    assert_eq!(c.node(2).status().term, 3);
    c.request(2, put(1, "k"));
    c.settle(10_000);
    assert_eq!(c.result_of(put(1, "k").id), Some(&CommandResult::Written));
    // Node 1 still leads term 2 (no check-quorum): it must not answer.
    assert_eq!(c.node(1).status().role, Role::Leader);
    c.request(1, get(9, "k"));
    for _ in 0..5 {
        c.tick(1, sim::HEARTBEAT_TICKS);
        c.settle(10_000);
    }
    assert_eq!(
        c.result_of(get(9, "k").id),
        None,
        "a deposed leader served a read with no majority's answer"
    );
}

/// Leadership transfer (Raft thesis 3.10) with lease reads: leader 1 hands
/// leadership to node 2 and then hears nothing more (messages to it are
/// lost); node 2 is elected on TimeoutNow (node 3 votes although it heard
/// from leader 1 within its lease: a transfer's candidate) and deletes a
/// key. Returns what a read of that key at node 1, still leader of its term
/// and within its lease, is answered (`None`: not answered).
fn read_at_a_leader_that_handed_over(bug: bool) -> Option<CommandResult> {
    let mut c = ManualCluster::new(3, |id, members| {
        let mut config = Config::new(id, members.to_vec(), 7);
        config.election_timeout_ticks = sim::ELECTION_TIMEOUT_TICKS;
        config.heartbeat_ticks = sim::HEARTBEAT_TICKS;
        config.read_mode = ReadMode::Lease;
        if bug {
            config.injected_bug = Some(raft_optimized::InjectedBug::LeaseReadsAfterTimeoutNow);
        }
        OptimizedRaft::new(config, Default::default())
    });
    c.elect(1, 100);
    c.request(1, put(1, "k"));
    c.settle(10_000);
    assert_eq!(c.result_of(put(1, "k").id), Some(&CommandResult::Written));
    // A heartbeat round renews node 1's lease.
    c.tick(1, sim::HEARTBEAT_TICKS);
    c.settle(10_000);
    c.request(1, get(7, "k"));
    c.settle(10_000);
    assert!(
        matches!(
            c.result_of(get(7, "k").id),
            Some(CommandResult::Value(Some(_)))
        ),
        "a lease read before the transfer"
    );
    c.step(1, consensus::Input::TransferLeadership { to: Some(2) });
    for other in [2, 3] {
        c.cut.insert((other, 1));
    }
    c.settle(10_000);
    assert_eq!(
        c.node(2).status().role,
        Role::Leader,
        "elected on TimeoutNow"
    );
    let delete = ClientRequest {
        id: RequestId { client: 1, seq: 2 },
        command: Command::Delete { key: "k".into() },
    };
    c.request(2, delete.clone());
    c.settle(10_000);
    assert_eq!(c.result_of(delete.id), Some(&CommandResult::Written));
    assert_eq!(
        c.node(1).status().role,
        Role::Leader,
        "node 1 heard nothing"
    );
    c.request(1, get(8, "k"));
    c.settle(10_000);
    c.result_of(get(8, "k").id).cloned()
}

#[test]
fn a_leader_that_sent_timeout_now_serves_no_lease_read() {
    assert_eq!(read_at_a_leader_that_handed_over(false), None);
}

/// The scenario above catches a leader that keeps its lease after
/// TimeoutNow: it answers with the deleted value.
#[test]
fn catches_lease_reads_after_timeout_now() {
    assert_eq!(
        read_at_a_leader_that_handed_over(true),
        Some(CommandResult::Value(Some(b"v".to_vec())))
    );
}

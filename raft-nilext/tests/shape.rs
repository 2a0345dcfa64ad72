//! The shape of Nil-ext on a hand-driven cluster (`sim::manual`): what a
//! nilext write costs, when reads make the leader order first, the slow path
//! with a replica down, and the five-replica cycle scenario of `docs/architecture.md`.

use consensus::io::{Input, ReplyOutcome};
use consensus::{ClientRequest, Command, CommandResult, Consensus, RequestId, Role};
use raft_nilext::{Config, InjectedBug, NilextRaft, ReadMode};
use sim::linearizability::{KvInput, KvOutput, Operation, check};
use sim::manual::{Answer, ManualCluster};

fn cluster(n: u64, read_mode: ReadMode) -> ManualCluster<NilextRaft> {
    ManualCluster::new(n, |id, members| {
        let mut config = Config::new(id, members.to_vec(), 11);
        config.raft.read_mode = read_mode;
        // Ordering happens on ticks; these tests tick only when they mean to.
        config.ordering_interval_ticks = 1_000_000;
        config.raft.check_quorum = false;
        config.raft.pre_vote = false;
        NilextRaft::new(config, Default::default())
    })
}

fn request(client: u64, seq: u64, command: Command) -> ClientRequest {
    ClientRequest {
        id: RequestId { client, seq },
        command,
    }
}

fn put(client: u64, key: &str, value: &str) -> ClientRequest {
    request(
        client,
        1,
        Command::Put {
            key: key.into(),
            value: value.into(),
        },
    )
}

fn get(client: u64, key: &str) -> ClientRequest {
    request(client, 1, Command::Get { key: key.into() })
}

/// Durability acks for `id`: (node, term, from leader).
fn acks(c: &ManualCluster<NilextRaft>, id: RequestId) -> Vec<(u64, u64, bool)> {
    c.answers
        .iter()
        .filter_map(|a| match a {
            Answer::Reply { node, reply } if reply.request == id => match reply.outcome {
                ReplyOutcome::DurableAck {
                    term, from_leader, ..
                } => Some((*node, term, from_leader)),
                _ => None,
            },
            _ => None,
        })
        .collect()
}

fn ready_cluster(n: u64, read_mode: ReadMode) -> ManualCluster<NilextRaft> {
    let mut c = cluster(n, read_mode);
    c.elect(1, 100);
    c.settle(10_000);
    c
}

#[test]
fn a_nilext_write_completes_in_one_round_trip_with_no_leader_to_follower_message() {
    let mut c = ready_cluster(3, ReadMode::ReadIndex);
    let write = put(7, "k", "v");
    let before = c.outboxes.len();
    let queued = c.network.len();
    for node in 1..=3 {
        c.step(node, Input::FastWrite(write.clone()));
    }
    for (node, outbox) in &c.outboxes[before..] {
        assert_eq!(outbox.writes, 1, "node {node}: one durable write");
        assert_eq!(
            outbox.messages,
            (0, 0),
            "node {node}: no message to any replica"
        );
    }
    assert_eq!(c.network.len(), queued);
    assert!(
        acks(&c, write.id).is_empty(),
        "no ack before the write is durable"
    );
    for node in 1..=3 {
        c.sync_one(node);
    }
    let acks = acks(&c, write.id);
    assert_eq!(
        acks.len(),
        3,
        "every replica acks after its own sync: {acks:?}"
    );
    let term = c.node(1).status().term;
    assert!(acks.iter().all(|(_, t, _)| *t == term));
    assert!(
        acks.iter().any(|(node, _, leader)| *node == 1 && *leader),
        "the leader's ack is among them"
    );
    assert_eq!(
        c.network.len(),
        queued,
        "still no message between replicas on the write's path"
    );
}

#[test]
fn a_read_of_a_key_with_a_pending_write_orders_first_and_one_of_another_key_does_not() {
    let mut c = ready_cluster(3, ReadMode::ReadIndex);
    let write = put(7, "k", "v");
    for node in 1..=3 {
        c.step(node, Input::FastWrite(write.clone()));
        c.sync(node);
    }
    let last = c.node(1).status().last_log_index;
    // An untouched key: no ordering, no log entry.
    c.request(1, get(8, "other"));
    assert_eq!(
        c.node(1).status().last_log_index,
        last,
        "no log entry for an untouched key"
    );
    c.settle(10_000);
    assert_eq!(
        c.result_of(get(8, "other").id),
        Some(&CommandResult::Value(None))
    );
    assert_eq!(c.node(1).status().last_log_index, last);
    // The written key: the leader orders its durability log first.
    c.request(1, get(9, "k"));
    assert!(
        c.node(1).status().last_log_index > last,
        "the pending write was appended to the log"
    );
    assert_eq!(
        c.result_of(get(9, "k").id),
        None,
        "not answered before the write is applied"
    );
    c.settle(10_000);
    assert_eq!(
        c.result_of(get(9, "k").id),
        Some(&CommandResult::Value(Some(b"v".to_vec())))
    );
    // A heartbeat carries the commit index to the followers, which apply.
    c.tick(1, consensus::raft::HEARTBEAT_TICKS);
    c.settle(10_000);
    for node in 1..=3 {
        assert!(
            c.node(node).durability_log().is_empty(),
            "node {node} dropped the applied record"
        );
    }
}

#[test]
fn with_one_replica_of_three_down_writes_complete_on_the_slow_path() {
    let mut c = ready_cluster(3, ReadMode::ReadIndex);
    for other in [1, 2] {
        c.cut.insert((3, other));
        c.cut.insert((other, 3));
    }
    let write = put(7, "k", "v");
    for node in [1, 2] {
        c.step(node, Input::FastWrite(write.clone()));
        c.sync(node);
    }
    assert_eq!(
        acks(&c, write.id).len(),
        2,
        "node 3 is down: no fast quorum (3 of 3)"
    );
    // The client's fast-path timeout passes: the same request id to the leader.
    c.request(1, write.clone());
    c.settle(10_000);
    assert_eq!(c.result_of(write.id), Some(&CommandResult::Written));
    c.request(1, get(8, "k"));
    c.settle(10_000);
    assert_eq!(
        c.result_of(get(8, "k").id),
        Some(&CommandResult::Value(Some(b"v".to_vec())))
    );
}

/// The known hazard of the paper's fast quorum for f >= 2 (`docs/architecture.md`): five replicas, the old leader S1
/// crashed, S5 cut off, S2, S3, S4 holding `c a b`, `a b c`, `b c a`. Under
/// the paper's 4-of-5 fast quorum each of a, b, c could have completed, and
/// the logs cannot tell which real-time order to keep. Under this crate's
/// unanimous fast quorum none of them completed (S5 never acked), so the new
/// leader may order them as its own log says, and the clients, who took the
/// slow path, see a linearizable history.
#[test]
fn the_five_replica_cycle_scenario_stays_linearizable() {
    let mut c = ready_cluster(5, ReadMode::ReadIndex);
    assert_eq!(c.node(1).status().role, Role::Leader);
    let a = put(101, "x", "a");
    let b = put(102, "x", "b");
    let w_c = put(103, "x", "c");
    let order = |w: &[&ClientRequest]| w.iter().map(|r| (*r).clone()).collect::<Vec<_>>();
    let arrivals = [
        (1, order(&[&a, &b, &w_c])),
        (2, order(&[&w_c, &a, &b])),
        (3, order(&[&a, &b, &w_c])),
        (4, order(&[&b, &w_c, &a])),
    ];
    // S5 is cut off and receives none of them.
    for other in 1..=4 {
        c.cut.insert((5, other));
        c.cut.insert((other, 5));
    }
    let mut time = 0u64;
    let mut history = Vec::new();
    for w in [&a, &b, &w_c] {
        time += 1;
        history.push((w.clone(), time));
    }
    for (node, writes) in &arrivals {
        for w in writes {
            c.step(*node, Input::FastWrite(w.clone()));
            c.sync(*node);
        }
    }
    let quorum = consensus::quorum::nilext_fast_quorum(5);
    assert_eq!(quorum, 5);
    for w in [&a, &b, &w_c] {
        let acks = acks(&c, w.id);
        assert_eq!(acks.len(), 4, "S1 to S4 acked");
        assert!(
            acks.len() < quorum,
            "so the write did not complete on the fast path"
        );
    }
    assert_eq!(
        c.node(2)
            .durability_log()
            .iter()
            .map(|r| r.request.id.client)
            .collect::<Vec<_>>(),
        vec![103, 101, 102]
    );
    // S1 crashes.
    for other in 2..=5 {
        c.cut.insert((1, other));
        c.cut.insert((other, 1));
    }
    c.elect(2, 100);
    c.settle(10_000);
    assert_eq!(c.node(2).status().role, Role::Leader);
    // The clients' fast-path timeouts pass: each resends to the new leader.
    for w in [&a, &b, &w_c] {
        c.request(2, w.clone());
    }
    c.settle(10_000);
    let mut ops: Vec<Operation> = Vec::new();
    for (w, call) in &history {
        assert_eq!(c.result_of(w.id), Some(&CommandResult::Written));
        let Command::Put { key, value } = &w.command else {
            unreachable!()
        };
        ops.push(Operation {
            client: w.id.client,
            call: *call,
            ret: Some(100),
            input: KvInput::Put(key.clone(), value.clone()),
            output: Some(KvOutput::Written),
        });
    }
    c.request(2, get(200, "x"));
    c.settle(10_000);
    let Some(CommandResult::Value(seen)) = c.result_of(get(200, "x").id).cloned() else {
        panic!("the read was answered");
    };
    assert_eq!(
        seen,
        Some(b"b".to_vec()),
        "S2 ordered its own log, c a b, so b is last"
    );
    ops.push(Operation {
        client: 200,
        call: 101,
        ret: Some(102),
        input: KvInput::Get(b"x".to_vec()),
        output: Some(KvOutput::Value(seen)),
    });
    assert!(check(&ops).is_linearizable());
}

/// A leader whose lease reads are valid from the start of the test: check-
/// quorum and pre-vote on, as lease reads require.
fn lease_cluster(n: u64) -> ManualCluster<NilextRaft> {
    let mut c = ManualCluster::new(n, |id, members| {
        let mut config = Config::new(id, members.to_vec(), 11);
        config.raft.read_mode = ReadMode::Lease;
        config.ordering_interval_ticks = 1_000_000;
        NilextRaft::new(config, Default::default())
    });
    c.elect(1, 100);
    c.settle(10_000);
    c
}

/// Simulator seed 7070681 (and 8061040, 8083803, 8701557, ...), replayed by
/// hand. A multi-put M of k2 and k3 takes the slow path: the leader puts it
/// in its Raft log, and its AppendEntries are held up. A put W of k3 then
/// completes on the fast path: the leader acknowledged it after proposing M,
/// so W is ordered after M. A read R of k2, invoked after W completed, must
/// therefore see M, though no durability-log record touches k2 and M is not
/// yet committed. Before the fix the leader served R at its commit index and
/// returned k2's old value: M < W (a later read sees W's k3), W < R (real
/// time), R < M (R missed M) is a cycle.
fn a_read_sees_a_write_ordered_before_a_completed_fast_write(mut c: ManualCluster<NilextRaft>) {
    let leader = 1;
    let n = c.nodes.len() as u64;
    let mut clock = 0u64;
    let mut tick = || {
        clock += 1;
        clock
    };
    let m = request(
        101,
        1,
        Command::MultiPut {
            pairs: vec![
                (b"k2".to_vec(), b"m".to_vec()),
                (b"k3".to_vec(), b"m".to_vec()),
            ],
        },
    );
    let m_call = tick();
    // M's fast-path copies were lost; the client sends it to the leader.
    c.request(leader, m.clone());
    assert!(
        c.node(leader).status().last_log_index > c.node(leader).status().commit_index,
        "M is in the leader's log, not committed"
    );
    // M's AppendEntries are held up in the network.
    let held: Vec<_> = c.network.drain(..).collect();
    let w = put(102, "k3", "w");
    let w_call = tick();
    for node in 1..=n {
        c.step(node, Input::FastWrite(w.clone()));
        c.sync(node);
    }
    let w_acks = acks(&c, w.id);
    assert_eq!(w_acks.len() as u64, n, "W completes on the fast path");
    assert!(
        w_acks
            .iter()
            .any(|(node, _, from_leader)| *node == leader && *from_leader)
    );
    let w_ret = tick();
    let r = get(103, "k2");
    let r_call = tick();
    c.request(leader, r.clone());
    // Heartbeats (and a ReadIndex round) may flow; M's entries stay held.
    c.settle(10_000);
    // Answered before M could commit (the bug), or only once it did.
    let answered_early = c.result_of(r.id).map(|_| tick());
    c.network.extend(held);
    c.settle(10_000);
    c.tick(leader, 2);
    c.settle(10_000);
    let r_ret = answered_early.unwrap_or_else(&mut tick);
    let Some(CommandResult::Value(r_seen)) = c.result_of(r.id).cloned() else {
        panic!("R was answered");
    };
    let m_ret = tick();
    assert_eq!(c.result_of(m.id), Some(&CommandResult::Written));
    // A later read of both keys orders W (after M) and shows which came last.
    let both = request(
        104,
        1,
        Command::MultiGet {
            keys: vec![b"k2".to_vec(), b"k3".to_vec()],
        },
    );
    let both_call = tick();
    c.request(leader, both.clone());
    c.settle(10_000);
    c.tick(leader, 2);
    c.settle(10_000);
    let Some(CommandResult::Values(both_seen)) = c.result_of(both.id).cloned() else {
        panic!("the multi-get was answered");
    };
    let both_ret = tick();
    assert_eq!(
        both_seen,
        vec![Some(b"m".to_vec()), Some(b"w".to_vec())],
        "W was ordered after M"
    );
    let ops = vec![
        Operation {
            client: 101,
            call: m_call,
            ret: Some(m_ret),
            input: KvInput::MultiPut(vec![
                (b"k2".to_vec(), b"m".to_vec()),
                (b"k3".to_vec(), b"m".to_vec()),
            ]),
            output: Some(KvOutput::Written),
        },
        Operation {
            client: 102,
            call: w_call,
            ret: Some(w_ret),
            input: KvInput::Put(b"k3".to_vec(), b"w".to_vec()),
            output: Some(KvOutput::Written),
        },
        Operation {
            client: 103,
            call: r_call,
            ret: Some(r_ret),
            input: KvInput::Get(b"k2".to_vec()),
            output: Some(KvOutput::Value(r_seen.clone())),
        },
        Operation {
            client: 104,
            call: both_call,
            ret: Some(both_ret),
            input: KvInput::MultiGet(vec![b"k2".to_vec(), b"k3".to_vec()]),
            output: Some(KvOutput::Values(both_seen)),
        },
    ];
    assert_eq!(
        r_seen,
        Some(b"m".to_vec()),
        "R, invoked after W completed, sees M, which is ordered before W"
    );
    assert!(check(&ops).is_linearizable());
}

#[test]
fn a_read_index_read_sees_a_slow_write_ordered_before_a_completed_fast_write() {
    a_read_sees_a_write_ordered_before_a_completed_fast_write(ready_cluster(
        3,
        ReadMode::ReadIndex,
    ));
    a_read_sees_a_write_ordered_before_a_completed_fast_write(ready_cluster(
        5,
        ReadMode::ReadIndex,
    ));
}

#[test]
fn a_lease_read_sees_a_slow_write_ordered_before_a_completed_fast_write() {
    a_read_sees_a_write_ordered_before_a_completed_fast_write(lease_cluster(3));
    a_read_sees_a_write_ordered_before_a_completed_fast_write(lease_cluster(5));
}

/// Simulator seed 8801550, replayed by hand: why a multi-put does not take
/// the fast path. A multi-put M of k4 and k5 reaches the followers first
/// and the leader not yet; a put W of k4 completes on the fast path; a read
/// R of k5 at the leader finds no pending write of k5 and misses M. The
/// leader is then cut off, and the new leader orders what it recovered as
/// its own durability log has it: M before W. A later read shows k4 = W
/// (so M < W) and k5 = M, while R placed M after W. With the deliberate bug
/// that admits multi-puts on the fast path the history is not
/// linearizable; the protocol itself refuses M on the fast path.
#[test]
fn a_multi_put_on_the_fast_path_could_be_reordered_by_a_new_leader() {
    let multi_put = || {
        request(
            101,
            1,
            Command::MultiPut {
                pairs: vec![
                    (b"k4".to_vec(), b"m".to_vec()),
                    (b"k5".to_vec(), b"m".to_vec()),
                ],
            },
        )
    };
    let build = |bug: Option<InjectedBug>| {
        let mut c = ManualCluster::new(3, |id, members| {
            let mut config = Config::new(id, members.to_vec(), 11);
            config.ordering_interval_ticks = 1_000_000;
            config.raft.check_quorum = false;
            config.raft.pre_vote = false;
            config.injected_bug = bug;
            NilextRaft::new(config, Default::default())
        });
        c.elect(1, 100);
        c.settle(10_000);
        c
    };

    // The protocol refuses a multi-put on the fast path.
    let mut c = build(None);
    let m = multi_put();
    c.step(2, Input::FastWrite(m.clone()));
    assert!(
        c.answers.iter().any(|a| matches!(a,
            Answer::Reply { reply, .. }
                if reply.request == m.id && reply.fast_path
                    && matches!(reply.outcome, ReplyOutcome::Rejected(_)))),
        "a multi-put is refused on the fast path"
    );
    assert!(c.node(2).durability_log().is_empty());

    // With the bug, the recipe of seed 8801550.
    let mut c = build(Some(InjectedBug::MultiPutOnFastPath));
    let m = multi_put();
    for node in [2, 3] {
        c.step(node, Input::FastWrite(m.clone()));
        c.sync(node);
    }
    let w = put(102, "k4", "w");
    for node in 1..=3 {
        c.step(node, Input::FastWrite(w.clone()));
        c.sync(node);
    }
    assert_eq!(acks(&c, w.id).len(), 3, "W completes on the fast path");
    let r = get(103, "k5");
    c.request(1, r.clone());
    c.settle(10_000);
    assert_eq!(
        c.result_of(r.id),
        Some(&CommandResult::Value(None)),
        "R at the old leader misses M"
    );
    // The old leader is cut off; node 2 leads and recovers M and W.
    for other in [2, 3] {
        c.cut.insert((1, other));
        c.cut.insert((other, 1));
    }
    c.elect(2, 100);
    c.settle(10_000);
    let both = request(
        104,
        1,
        Command::MultiGet {
            keys: vec![b"k4".to_vec(), b"k5".to_vec()],
        },
    );
    c.request(2, both.clone());
    c.settle(10_000);
    c.tick(2, 2);
    c.settle(10_000);
    let Some(CommandResult::Values(seen)) = c.result_of(both.id).cloned() else {
        panic!("the multi-get was answered");
    };
    assert_eq!(
        seen,
        vec![Some(b"w".to_vec()), Some(b"m".to_vec())],
        "the new leader ordered M before W"
    );
    let ops = vec![
        Operation {
            client: 101,
            call: 1,
            ret: None,
            input: KvInput::MultiPut(vec![
                (b"k4".to_vec(), b"m".to_vec()),
                (b"k5".to_vec(), b"m".to_vec()),
            ]),
            output: None,
        },
        Operation {
            client: 102,
            call: 2,
            ret: Some(3),
            input: KvInput::Put(b"k4".to_vec(), b"w".to_vec()),
            output: Some(KvOutput::Written),
        },
        Operation {
            client: 103,
            call: 4,
            ret: Some(5),
            input: KvInput::Get(b"k5".to_vec()),
            output: Some(KvOutput::Value(None)),
        },
        Operation {
            client: 104,
            call: 6,
            ret: Some(7),
            input: KvInput::MultiGet(vec![b"k4".to_vec(), b"k5".to_vec()]),
            output: Some(KvOutput::Values(seen)),
        },
    ];
    assert!(
        !check(&ops).is_linearizable(),
        "a multi-put on the fast path breaks linearizability"
    );
}

/// Issue 14, defect 2: with the proposal queue full, ordering must not skip
/// a record. Three writes complete on the fast path; a read of the third
/// write's key makes the leader order its durability log: the first record
/// is appended at once (no log write in flight), the second queues (the
/// queue holds one), the third is refused. The read must still see the
/// third write. (Before the fix the refused record was marked ordered
/// anyway and the read, at the end of the log, missed a completed write;
/// with the record left unmarked but not ordered either, it missed it too.)
#[test]
fn a_read_sees_a_completed_write_the_full_proposal_queue_refused() {
    let mut c = ManualCluster::new(3, |id, members| {
        let mut config = Config::new(id, members.to_vec(), 11);
        config.ordering_interval_ticks = 1_000_000;
        config.raft.proposals_queued_max = 1;
        config.raft.check_quorum = false;
        config.raft.pre_vote = false;
        NilextRaft::new(config, Default::default())
    });
    c.elect(1, 100);
    c.settle(10_000);
    let writes = [put(201, "a", "1"), put(202, "b", "2"), put(203, "c", "3")];
    for node in 1..=3 {
        for write in &writes {
            c.step(node, Input::FastWrite(write.clone()));
        }
        c.sync(node);
    }
    for write in &writes {
        assert_eq!(acks(&c, write.id).len(), 3, "{:?} completed", write.id);
    }
    let read = get(204, "c");
    c.request(1, read.clone());
    c.settle(10_000);
    c.tick(1, 2);
    c.settle(10_000);
    assert_eq!(
        c.result_of(read.id),
        Some(&CommandResult::Value(Some(b"3".to_vec()))),
        "the read sees the completed write the full queue refused"
    );
}

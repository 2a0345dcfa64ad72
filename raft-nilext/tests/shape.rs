//! The shape of Nil-ext on a hand-driven cluster (`sim::manual`): what a
//! nilext write costs, when reads make the leader order first, the slow path
//! with a replica down, and the five-replica cycle scenario of DESIGN.md.

use consensus::io::{Input, ReplyOutcome};
use consensus::{ClientRequest, Command, CommandResult, Consensus, RequestId, Role};
use raft_nilext::{Config, NilextRaft, ReadMode};
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
                ReplyOutcome::DurableAck { term, from_leader } => Some((*node, term, from_leader)),
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
    c.tick(1, 2);
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

/// DESIGN.md's known hazard for f >= 2: five replicas, the old leader S1
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

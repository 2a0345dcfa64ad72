//! Nil-ext's membership rules on a hand-driven cluster (`sim::manual`), each
//! in the race it exists for, with and without the rule: a change appended
//! ahead of writes not yet ordered, and fast writes acknowledged while a
//! change is uncommitted. Without the rule the history a client sees is not
//! linearizable (the checker of the simulator says so); with it, it is.
//! The simulator's membership suites run the same rules at random under
//! every fault.

use consensus::io::{Input, ReplyOutcome};
use consensus::quorum::FastAcks;
use consensus::{
    ClientRequest, Command, CommandResult, Consensus, MembershipChange, NodeId, RequestId, Role,
};
use raft_nilext::{Config, InjectedBug, NilextRaft, ReadMode};
use sim::linearizability::{KvInput, KvOutput, Operation, check};
use sim::manual::{Answer, ManualCluster};

/// Three voters (1 to 3) and a spare node 4 that knows no cluster; node 1
/// leads.
fn cluster(bug: Option<InjectedBug>) -> ManualCluster<NilextRaft> {
    let mut c = ManualCluster::with_spares(3, 1, |id, members| {
        let mut config = Config::new(id, members.to_vec(), 11);
        config.raft.read_mode = ReadMode::ReadIndex;
        // Ordering happens on ticks; these tests tick only when they mean to.
        config.ordering_interval_ticks = 1_000_000;
        config.raft.check_quorum = false;
        config.raft.pre_vote = false;
        config.injected_bug = bug;
        NilextRaft::new(config, Default::default())
    });
    c.elect(1, 100);
    c.settle(10_000);
    c
}

fn change(c: &mut ManualCluster<NilextRaft>, leader: NodeId, change: MembershipChange) {
    c.step(
        leader,
        Input::ChangeMembership {
            change,
            address: String::new(),
        },
    );
    c.settle(10_000);
    let membership = c.node(leader).status().membership;
    let done = match change {
        MembershipChange::AddLearner(id) => membership.is_learner(id),
        MembershipChange::Promote(id) => membership.is_voter(id),
        MembershipChange::Remove(id) => !membership.contains(id),
    };
    assert!(done, "{change} took effect ({membership})");
}

fn put(client: u64, value: &str) -> ClientRequest {
    ClientRequest {
        id: RequestId { client, seq: 1 },
        command: Command::Put {
            key: b"k".to_vec(),
            value: value.into(),
        },
    }
}

/// Sends `write` on the fast path to `nodes` and syncs them; whether the
/// acknowledgements complete it (`FastAcks`, the clients' rule).
fn fast_write(c: &mut ManualCluster<NilextRaft>, write: &ClientRequest, nodes: &[NodeId]) -> bool {
    for &node in nodes {
        c.step(node, Input::FastWrite(write.clone()));
        c.sync(node);
    }
    let mut acks = FastAcks::new();
    c.answers.iter().any(|a| match a {
        Answer::Reply { node, reply } if reply.request == write.id => match reply.outcome {
            ReplyOutcome::DurableAck {
                term,
                from_leader,
                voters,
            } => acks.add(*node, term, from_leader, voters),
            _ => false,
        },
        _ => false,
    })
}

/// Cuts node `id` off (a crash, as far as the others can tell).
fn cut_off(c: &mut ManualCluster<NilextRaft>, id: NodeId) {
    for other in 1..=4 {
        if other != id {
            c.cut.insert((id, other));
            c.cut.insert((other, id));
        }
    }
}

/// Reads k at `leader`, after `writes` completed one after the other:
/// whether the history is linearizable.
fn read_is_linearizable(
    c: &mut ManualCluster<NilextRaft>,
    leader: NodeId,
    writes: &[&ClientRequest],
) -> bool {
    let read = ClientRequest {
        id: RequestId { client: 99, seq: 1 },
        command: Command::Get { key: b"k".to_vec() },
    };
    c.request(leader, read.clone());
    c.settle(10_000);
    let Some(CommandResult::Value(seen)) = c.result_of(read.id).cloned() else {
        panic!("the read was answered");
    };
    let mut ops: Vec<Operation> = writes
        .iter()
        .enumerate()
        .map(|(i, w)| {
            let Command::Put { key, value } = &w.command else {
                unreachable!()
            };
            Operation {
                client: w.id.client,
                call: 10 * i as u64,
                ret: Some(10 * i as u64 + 5),
                input: KvInput::Put(key.clone(), value.clone()),
                output: Some(KvOutput::Written),
            }
        })
        .collect();
    ops.push(Operation {
        client: 99,
        call: 100,
        ret: Some(101),
        input: KvInput::Get(b"k".to_vec()),
        output: Some(KvOutput::Value(seen)),
    });
    check(&ops).is_linearizable()
}

/// Write A completes with voters 1 to 3; learner 4 (which takes no fast
/// write) is promoted; write B completes with all four. Node 1 crashes and
/// node 4 leads: its own durability log holds B only. With the rule, A was
/// ordered ahead of the promotion, so node 4 holds it in its Raft log and
/// a read sees B. Without it, node 4 recovers B, then A, and a read sees A.
fn promotion_after_a_completed_write(bug: Option<InjectedBug>) -> bool {
    let mut c = cluster(bug);
    change(&mut c, 1, MembershipChange::AddLearner(4));
    let a = put(101, "a");
    assert!(fast_write(&mut c, &a, &[1, 2, 3, 4]), "A completed");
    change(&mut c, 1, MembershipChange::Promote(4));
    let b = put(102, "b");
    assert!(fast_write(&mut c, &b, &[1, 2, 3, 4]), "B completed");
    cut_off(&mut c, 1);
    c.elect(4, 100);
    c.settle(10_000);
    assert_eq!(c.node(4).status().role, Role::Leader);
    read_is_linearizable(&mut c, 4, &[&a, &b])
}

#[test]
fn a_change_is_appended_after_every_write_acknowledged_before_it() {
    assert!(promotion_after_a_completed_write(None));
}

#[test]
fn without_ordering_first_a_new_voter_leads_with_writes_out_of_order() {
    assert!(!promotion_after_a_completed_write(Some(
        InjectedBug::NoOrderingBeforeConfig
    )));
}

/// Voters 1 to 4; node 1 appends "remove 3", which reaches no one. Write A
/// goes to 1, 2 and 4 (its copy to 3 is lost), write B to everyone. Node 1
/// crashes; the removal is lost with it, and node 3, still a voter, leads:
/// its own durability log holds B only. With the rule, node 1 acknowledged
/// neither write while the removal was uncommitted, so neither completed
/// on the fast path. Without it, both completed with the acknowledgements
/// of 1, 2 and 4, and node 3 recovers B, then A: a read sees A.
fn writes_while_a_removal_is_uncommitted(bug: Option<InjectedBug>) -> Option<bool> {
    let mut c = cluster(bug);
    change(&mut c, 1, MembershipChange::AddLearner(4));
    change(&mut c, 1, MembershipChange::Promote(4));
    for other in 2..=4 {
        c.cut.insert((1, other));
    }
    c.step(
        1,
        Input::ChangeMembership {
            change: MembershipChange::Remove(3),
            address: String::new(),
        },
    );
    c.sync(1);
    assert!(c.node(1).status().membership.voters.len() == 3);
    let a = put(101, "a");
    let b = put(102, "b");
    if !fast_write(&mut c, &a, &[1, 2, 4]) {
        assert!(!fast_write(&mut c, &b, &[1, 2, 3, 4]));
        return None;
    }
    assert!(fast_write(&mut c, &b, &[1, 2, 3, 4]), "B completed");
    c.settle(10_000);
    cut_off(&mut c, 1);
    c.elect(3, 100);
    c.settle(10_000);
    assert_eq!(c.node(3).status().role, Role::Leader);
    Some(read_is_linearizable(&mut c, 3, &[&a, &b]))
}

#[test]
fn no_fast_write_completes_while_a_change_is_uncommitted() {
    assert_eq!(
        writes_while_a_removal_is_uncommitted(None),
        None,
        "the leader took no fast write"
    );
}

#[test]
fn fast_writes_acknowledged_during_a_lost_change_break_linearizability() {
    assert_eq!(
        writes_while_a_removal_is_uncommitted(Some(InjectedBug::FastAcksWhileConfigPending)),
        Some(false)
    );
}

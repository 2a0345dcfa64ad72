//! The membership rules of `consensus::membership`, on a hand-driven
//! vanilla cluster (`sim::manual`): what a leader refuses and why, and how
//! learners and removed servers stay out of elections. The simulator's
//! membership suites run the same rules at random under every fault.

use consensus::io::Input;
use consensus::{
    ClientRequest, Command, Consensus, MembershipChange, MembershipError, NodeId, RequestId, Role,
};
use raft_vanilla::{Config, VanillaRaft};
use sim::manual::ManualCluster;

/// Voters 1 to 3 and `spares` nodes that know no cluster.
fn cluster(spares: u64) -> ManualCluster<VanillaRaft> {
    ManualCluster::with_spares(3, spares, |id, members| {
        VanillaRaft::new(Config::new(id, members.to_vec(), 5), Default::default())
    })
}

fn ask(
    c: &mut ManualCluster<VanillaRaft>,
    leader: NodeId,
    change: MembershipChange,
) -> Result<u64, MembershipError> {
    // The answer is in the outbox: step by hand to read it.
    let before = c.node(leader).status().membership_index;
    c.step(
        leader,
        Input::ChangeMembership {
            change,
            address: String::new(),
        },
    );
    let after = c.node(leader).status();
    if after.membership_index > before {
        Ok(after.membership_index)
    } else {
        Err(MembershipError::Busy(format!("refused: {change}")))
    }
}

fn put(c: &mut ManualCluster<VanillaRaft>, leader: NodeId, seq: u64) {
    let request = ClientRequest {
        id: RequestId { client: 7, seq },
        command: Command::Put {
            key: b"k".to_vec(),
            value: seq.to_string().into_bytes(),
        },
    };
    c.request(leader, request);
}

#[test]
fn a_new_leader_commits_an_entry_of_its_term_before_its_first_change() {
    let mut c = cluster(1);
    c.elect(1, 100);
    c.settle(10_000);
    // Vanilla appends nothing on election: the first request is refused,
    // and an empty entry of the term is appended so that the next is not.
    assert!(ask(&mut c, 1, MembershipChange::AddLearner(4)).is_err());
    assert_eq!(c.node(1).status().last_log_index, 1, "an empty entry");
    c.settle(10_000);
    let index = ask(&mut c, 1, MembershipChange::AddLearner(4)).expect("taken now");
    // While it is uncommitted, no other change is taken.
    assert!(ask(&mut c, 1, MembershipChange::Promote(4)).is_err());
    c.settle(10_000);
    assert!(c.node(1).status().commit_index >= index);
    ask(&mut c, 1, MembershipChange::Promote(4)).expect("the one before is committed");
    c.settle(10_000);
    let membership = c.node(4).status().membership;
    assert!(
        membership.is_voter(4),
        "node 4 holds its promotion: {membership}"
    );
}

#[test]
fn a_leader_does_not_remove_itself_nor_promote_a_voter() {
    let mut c = cluster(0);
    c.elect(1, 100);
    c.settle(10_000);
    put(&mut c, 1, 1);
    c.settle(10_000);
    for change in [
        MembershipChange::Remove(1),
        MembershipChange::Promote(2),
        MembershipChange::AddLearner(3),
        MembershipChange::Remove(9),
        MembershipChange::AddLearner(65),
    ] {
        let mut out = consensus::Outbox::default();
        let leader = c.nodes.get_mut(&1).expect("node 1");
        leader.protocol.step(
            Input::ChangeMembership {
                change,
                address: String::new(),
            },
            &mut out,
        );
        assert!(
            matches!(
                out.membership_change,
                Some(Err(MembershipError::Invalid(_)))
            ),
            "{change}: {:?}",
            out.membership_change
        );
    }
}

#[test]
fn a_learner_is_promoted_only_once_caught_up() {
    let mut c = cluster(1);
    c.elect(1, 100);
    c.settle(10_000);
    // Node 4 is cut off while the leader commits more than the promotion
    // lag allows.
    for other in 1..=3 {
        c.cut.insert((other, 4));
        c.cut.insert((4, other));
    }
    put(&mut c, 1, 1);
    c.settle(10_000);
    ask(&mut c, 1, MembershipChange::AddLearner(4)).expect("added");
    c.settle(10_000);
    for seq in 2..(consensus::membership::PROMOTION_LAG_MAX + 10) {
        put(&mut c, 1, seq);
    }
    c.settle(1_000_000);
    let mut out = consensus::Outbox::default();
    c.nodes.get_mut(&1).expect("node 1").protocol.step(
        Input::ChangeMembership {
            change: MembershipChange::Promote(4),
            address: String::new(),
        },
        &mut out,
    );
    let Some(Err(MembershipError::Busy(reason))) = &out.membership_change else {
        panic!("refused for now: {:?}", out.membership_change);
    };
    assert!(reason.contains("not caught up"), "{reason}");
    // Reconnected, it catches up and is promoted.
    c.cut.clear();
    for _ in 0..3 {
        c.tick(1, 3);
        c.settle(1_000_000);
    }
    ask(&mut c, 1, MembershipChange::Promote(4)).expect("caught up now");
}

#[test]
fn learners_and_removed_servers_stay_out_of_elections() {
    let mut c = cluster(1);
    c.elect(1, 100);
    c.settle(10_000);
    put(&mut c, 1, 1);
    c.settle(10_000);
    ask(&mut c, 1, MembershipChange::AddLearner(4)).expect("added");
    c.settle(10_000);
    // A learner's election timer runs out: it does not campaign.
    c.tick(4, 100);
    c.settle(10_000);
    assert_eq!(c.node(4).status().role, Role::Follower);
    assert_eq!(c.node(1).status().role, Role::Leader);
    // Node 3 is cut off, removed, and never told: it campaigns, the voters
    // answer that it is not a voter of theirs, and it stops campaigning
    // (its term no longer rises).
    for other in [1, 2, 4] {
        c.cut.insert((other, 3));
        c.cut.insert((3, other));
    }
    ask(&mut c, 1, MembershipChange::Remove(3)).expect("removed");
    c.settle(10_000);
    c.cut.clear();
    c.tick(3, 100);
    c.settle(10_000);
    let term = c.node(3).status().term;
    c.tick(3, 200);
    c.settle(10_000);
    assert_eq!(c.node(3).status().term, term, "node 3 stopped campaigning");
    assert_eq!(c.node(1).status().role, Role::Leader, "undisturbed");
    assert!(c.node(3).status().role == Role::Follower);
}

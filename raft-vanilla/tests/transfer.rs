//! Leadership transfer (Raft thesis 3.10) on a hand-driven vanilla cluster:
//! what the simulator's transfer suites do at random, in the one case they
//! rarely reach.

use consensus::io::Input;
use consensus::{ClientRequest, Command, Consensus, RequestId, Role};
use raft_vanilla::{Config, VanillaRaft};
use sim::manual::ManualCluster;

/// A leader elected with an earlier term's entry not known committed, on
/// an idle cluster, hands leadership over when asked: vanilla appends no
/// entry on election, and TimeoutNow waits for the whole log to commit,
/// so the leader appends an empty entry when asked to transfer (before,
/// it waited for a client write, and the transfer gave up).
#[test]
fn a_new_leader_hands_over_on_an_idle_cluster() {
    let mut c = ManualCluster::new(3, |id, members| {
        VanillaRaft::new(Config::new(id, members.to_vec(), 5), Default::default())
    });
    c.elect(1, 100);
    c.settle(10_000);
    let put = ClientRequest {
        id: RequestId { client: 7, seq: 1 },
        command: Command::Put {
            key: b"k".to_vec(),
            value: b"v".to_vec(),
        },
    };
    c.request(1, put);
    // Settling ticks no one: nodes 2 and 3 hold the entry, not its commit.
    c.settle(10_000);
    let last = c.node(1).status().last_log_index;
    assert_eq!(c.node(1).status().commit_index, last);
    assert!(c.node(2).status().commit_index < last);
    // Node 1 is lost; node 2 is elected and commits nothing of its own.
    for other in [2, 3] {
        c.cut.insert((1, other));
        c.cut.insert((other, 1));
    }
    c.elect(2, 100);
    c.settle(10_000);
    c.step(2, Input::TransferLeadership { to: Some(3) });
    for _ in 0..20 {
        c.tick(2, 1);
        c.settle(10_000);
        if c.node(3).status().role == Role::Leader {
            return;
        }
    }
    panic!("node 3 was not handed leadership: {:?}", c.node(3).status());
}

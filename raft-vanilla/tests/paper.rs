//! One test per rule of Figure 2 of the Raft paper, named after it (as
//! etcd-io/raft's `raft_paper_test.go`), on a hand-driven cluster.

use consensus::io::{Input, ReplyOutcome, Role, Timing};
use consensus::message::{
    AppendEntries, AppendEntriesResponse, Message, RequestVote, RequestVoteResponse,
};
use consensus::{ClientRequest, Command, CommandResult, Consensus, Entry, EntryPayload, RequestId};
use raft_vanilla::{Config, VanillaRaft};
use sim::manual::{Answer, ManualCluster};

fn cluster(n: u64) -> ManualCluster<VanillaRaft> {
    ManualCluster::new(n, |id, members| {
        let mut config = Config::new(id, members.to_vec(), 3);
        // The tick counts in these tests assume the simulator's timing.
        config.election_timeout_ticks = sim::ELECTION_TIMEOUT_TICKS;
        config.heartbeat_ticks = sim::HEARTBEAT_TICKS;
        VanillaRaft::new(config, Default::default())
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

fn entry(term: u64, index: u64) -> Entry {
    Entry {
        term,
        index,
        stamp: Default::default(),
        payload: EntryPayload::Noop,
    }
}

fn request_vote(term: u64, candidate: u64, last: (u64, u64)) -> Message {
    Message::RequestVote(RequestVote {
        term,
        candidate_id: candidate,
        last_log_index: last.0,
        last_log_term: last.1,
        pre_vote: false,
        transfer: false,
    })
}

fn append(term: u64, prev: (u64, u64), entries: Vec<Entry>, commit: u64) -> Message {
    Message::AppendEntries(AppendEntries {
        term,
        leader_id: 2,
        prev_log_index: prev.0,
        prev_log_term: prev.1,
        entries,
        leader_commit: commit,
        context: 0,
    })
}

/// The last message `from` queued to `to`.
fn last_to(c: &ManualCluster<VanillaRaft>, from: u64, to: u64) -> Option<Message> {
    c.queued(from, to).last().map(|m| (*m).clone())
}

fn deliver(c: &mut ManualCluster<VanillaRaft>, from: u64, to: u64, message: Message) {
    c.step(to, Input::Message { from, message });
}

#[test]
fn servers_start_as_followers() {
    let c = cluster(3);
    for id in 1..=3 {
        assert_eq!(c.node(id).status().role, Role::Follower);
        assert_eq!(c.node(id).status().term, 0);
    }
}

#[test]
fn all_servers_adopt_a_higher_term_and_become_followers() {
    let mut c = cluster(3);
    c.elect(1, 100);
    let term = c.node(1).status().term;
    deliver(&mut c, 3, 1, append(term + 5, (0, 0), vec![], 0));
    assert_eq!(c.node(1).status().term, term + 5);
    assert_eq!(c.node(1).status().role, Role::Follower);
}

#[test]
fn a_message_of_a_stale_term_is_rejected() {
    let mut c = cluster(3);
    deliver(&mut c, 2, 1, append(5, (0, 0), vec![], 0));
    c.network.clear();
    deliver(&mut c, 3, 1, append(4, (0, 0), vec![entry(4, 1)], 0));
    match last_to(&c, 1, 3) {
        Some(Message::AppendEntriesResponse(r)) => assert!(!r.success && r.term == 5),
        other => panic!("{other:?}"),
    }
    assert_eq!(c.node(1).status().last_log_index, 0);
}

#[test]
fn a_follower_that_hears_nothing_starts_an_election_and_persists_its_vote_first() {
    let mut c = cluster(3);
    c.tick(1, 20);
    assert_eq!(c.node(1).status().role, Role::Candidate);
    assert_eq!(c.node(1).status().term, 1);
    let (_, outbox) = c
        .outboxes
        .iter()
        .rev()
        .find(|(id, o)| *id == 1 && o.writes > 0)
        .expect("a write")
        .clone();
    assert_eq!(
        outbox.messages,
        (0, 2),
        "RequestVote leaves only after the vote is durable"
    );
    assert!(c.queued(1, 2).is_empty());
    c.sync(1);
    assert!(
        matches!(c.queued(1, 2)[0], Message::RequestVote(v) if v.term == 1 && v.candidate_id == 1)
    );
}

#[test]
fn a_candidate_with_a_majority_of_votes_becomes_leader_and_sends_heartbeats() {
    let mut c = cluster(3);
    c.elect(1, 100);
    assert_eq!(c.node(1).status().role, Role::Leader);
    c.network.clear();
    c.tick(1, 2);
    c.sync_all();
    for peer in [2, 3] {
        assert!(
            matches!(last_to(&c, 1, peer), Some(Message::AppendEntries(a)) if a.entries.is_empty())
        );
    }
}

#[test]
fn a_voter_grants_at_most_one_vote_per_term() {
    let mut c = cluster(3);
    let ask = |candidate| request_vote(1, candidate, (0, 0));
    deliver(&mut c, 2, 1, ask(2));
    c.sync(1);
    deliver(&mut c, 3, 1, ask(3));
    c.sync(1);
    let granted = |m: Option<Message>| {
        matches!(
            m,
            Some(Message::RequestVoteResponse(RequestVoteResponse {
                vote_granted: true,
                ..
            }))
        )
    };
    assert!(granted(last_to(&c, 1, 2)));
    assert!(!granted(last_to(&c, 1, 3)), "already voted for 2 in term 1");
    // The same candidate asking again gets the same answer.
    deliver(&mut c, 2, 1, ask(2));
    c.sync(1);
    assert!(granted(last_to(&c, 1, 2)));
}

#[test]
fn a_voter_rejects_a_candidate_whose_log_is_less_up_to_date() {
    let mut c = cluster(3);
    deliver(
        &mut c,
        2,
        1,
        append(2, (0, 0), vec![entry(1, 1), entry(2, 2)], 0),
    );
    c.sync(1);
    let ask = |last_index, last_term| request_vote(3, 3, (last_index, last_term));
    deliver(&mut c, 3, 1, ask(5, 1));
    c.sync(1);
    assert!(
        matches!(last_to(&c, 1, 3), Some(Message::RequestVoteResponse(r)) if !r.vote_granted),
        "older last term"
    );
    deliver(&mut c, 3, 1, ask(2, 2));
    c.sync(1);
    assert!(
        matches!(last_to(&c, 1, 3), Some(Message::RequestVoteResponse(r)) if r.vote_granted),
        "as up to date"
    );
}

#[test]
fn a_follower_rejects_entries_whose_previous_entry_it_lacks() {
    let mut c = cluster(3);
    deliver(&mut c, 2, 1, append(2, (3, 1), vec![entry(2, 4)], 0));
    c.sync(1);
    match last_to(&c, 1, 2) {
        Some(Message::AppendEntriesResponse(r)) => assert!(!r.success && r.conflict_index == 3),
        other => panic!("{other:?}"),
    }
    assert_eq!(c.node(1).status().last_log_index, 0);
}

#[test]
fn a_follower_deletes_a_conflicting_suffix_and_appends_the_leaders_entries() {
    let mut c = cluster(3);
    deliver(
        &mut c,
        2,
        1,
        append(1, (0, 0), vec![entry(1, 1), entry(1, 2), entry(1, 3)], 1),
    );
    c.sync(1);
    deliver(&mut c, 3, 1, append(2, (1, 1), vec![entry(2, 2)], 1));
    c.sync(1);
    assert_eq!(c.node(1).status().last_log_index, 2);
    assert_eq!(
        c.nodes[&1]
            .durable
            .log
            .iter()
            .map(|e| e.term)
            .collect::<Vec<_>>(),
        vec![1, 2]
    );
}

#[test]
fn a_follower_commits_up_to_the_leaders_commit_index_and_its_last_new_entry() {
    let mut c = cluster(3);
    deliver(
        &mut c,
        2,
        1,
        append(1, (0, 0), vec![entry(1, 1), entry(1, 2)], 5),
    );
    c.sync(1);
    assert_eq!(
        c.node(1).status().commit_index,
        2,
        "min(leaderCommit, index of last new entry)"
    );
    assert_eq!(c.node(1).status().applied_index, 2);
}

#[test]
fn a_follower_acknowledges_entries_only_once_they_are_durable() {
    let mut c = cluster(3);
    deliver(&mut c, 2, 1, append(1, (0, 0), vec![entry(1, 1)], 0));
    assert!(
        c.queued(1, 2).is_empty(),
        "no acknowledgement before the sync"
    );
    c.sync(1);
    assert!(
        matches!(last_to(&c, 1, 2), Some(Message::AppendEntriesResponse(r)) if r.success && r.match_index == 1)
    );
}

#[test]
fn the_leader_persists_each_command_then_sends_it_one_entry_per_message_one_message_in_flight() {
    let mut c = cluster(3);
    c.elect(1, 100);
    c.network.clear();
    c.request(1, put(1, "a"));
    c.request(1, put(2, "b"));
    assert!(
        c.queued(1, 2).is_empty(),
        "nothing leaves before the leader's own sync"
    );
    assert_eq!(c.unsynced(1), 2, "one durable write per command");
    c.sync(1);
    let appends: Vec<_> = c.queued(1, 2).into_iter().cloned().collect();
    assert_eq!(
        appends.len(),
        1,
        "one AppendEntries in flight to each follower"
    );
    assert!(matches!(&appends[0], Message::AppendEntries(a) if a.entries.len() == 1));
    c.settle(10_000);
    for seq in [1, 2] {
        assert_eq!(
            c.result_of(RequestId { client: 1, seq }),
            Some(&CommandResult::Written)
        );
    }
}

#[test]
fn the_leader_decrements_next_index_by_one_after_a_rejection() {
    let mut c = cluster(3);
    c.elect(1, 100);
    c.request(1, put(1, "a"));
    c.settle(10_000);
    // Node 2 is elected in term 2 without hearing from node 1: it starts
    // with node 1's next index after its own last entry (2), nothing known
    // to match.
    c.cut.insert((1, 2));
    c.cut.insert((2, 1));
    c.elect(2, 100);
    c.cut.clear();
    c.network.clear();
    let term = c.node(2).status().term;
    let reject = |prev| {
        Message::AppendEntriesResponse(AppendEntriesResponse {
            term,
            success: false,
            match_index: 0,
            conflict_index: prev,
            conflict_term: 0,
            context: 0,
        })
    };
    // Pretend node 1 rejected prev index 1.
    deliver(&mut c, 1, 2, reject(1));
    match last_to(&c, 2, 1) {
        Some(Message::AppendEntries(a)) => {
            assert_eq!(a.prev_log_index, 0, "next index went from 2 to 1")
        }
        other => panic!("{other:?}"),
    }
    // The same rejection again (a duplicate) changes nothing and sends
    // nothing: the answer to the message in flight is awaited.
    c.network.clear();
    deliver(&mut c, 1, 2, reject(1));
    assert!(
        last_to(&c, 2, 1).is_none(),
        "a stale rejection sends nothing"
    );
}

#[test]
fn the_leader_commits_an_earlier_terms_entry_only_with_one_of_its_own_figure_8() {
    let mut c = cluster(3);
    // Node 1 holds an entry of term 1 that no one else has.
    deliver(&mut c, 2, 1, append(1, (0, 0), vec![entry(1, 1)], 0));
    c.sync(1);
    c.network.clear();
    c.elect(1, 100);
    let term = c.node(1).status().term;
    assert!(term > 1);
    // Replicate the old entry to node 2 by hand: a majority holds it now...
    deliver(
        &mut c,
        2,
        1,
        Message::AppendEntriesResponse(AppendEntriesResponse {
            term,
            success: true,
            match_index: 1,
            conflict_index: 0,
            conflict_term: 0,
            context: 0,
        }),
    );
    assert_eq!(
        c.node(1).status().commit_index,
        0,
        "...but it is of an earlier term: not committed by counting"
    );
    // An entry of the current term commits both.
    c.request(1, put(1, "a"));
    c.settle(10_000);
    assert_eq!(c.node(1).status().commit_index, 2);
}

#[test]
fn reads_go_through_the_log() {
    let mut c = cluster(3);
    c.elect(1, 100);
    let before = c.node(1).status().last_log_index;
    c.request(
        1,
        ClientRequest {
            id: RequestId { client: 9, seq: 1 },
            command: Command::Get { key: b"a".to_vec() },
        },
    );
    assert_eq!(c.node(1).status().last_log_index, before + 1);
    c.settle(10_000);
    assert_eq!(
        c.result_of(RequestId { client: 9, seq: 1 }),
        Some(&CommandResult::Value(None))
    );
}

#[test]
fn a_follower_answers_with_its_leader_and_without_one_the_cluster_is_unavailable() {
    let mut c = cluster(3);
    c.request(2, put(1, "a"));
    c.elect(1, 100);
    c.request(2, put(2, "a"));
    let outcomes: Vec<_> = c
        .answers
        .iter()
        .filter_map(|a| match a {
            Answer::Reply { node: 2, reply } => {
                Some((reply.request.seq, reply.outcome.clone(), reply.timing))
            }
            _ => None,
        })
        .collect();
    assert_eq!(
        outcomes,
        vec![
            (1, ReplyOutcome::Unavailable, Timing::Now),
            (2, ReplyOutcome::NotLeader { leader: Some(1) }, Timing::Now),
        ]
    );
}

//! criterion benches of the pieces under the comparison: one protocol step,
//! a RocksDB apply batch, the linearizability checker, and an in-process
//! 3-node cluster per protocol over the simulator's hand-driven network.
//! `cargo bench -p bench` (timings go to criterion's report, not to tests).

use std::hint::black_box;

use consensus::io::{Input, Outbox, Recovered};
use consensus::state_machine::StateMachine;
use consensus::{ClientRequest, Command, Consensus, Entry, EntryPayload, RequestId};
use criterion::{Criterion, criterion_group, criterion_main};
use sim::linearizability::{check, generated_history};
use sim::manual::ManualCluster;

fn put(client: u64, seq: u64) -> ClientRequest {
    ClientRequest {
        id: RequestId { client, seq },
        command: Command::Put {
            key: format!("key{}", seq % 1000).into_bytes(),
            value: vec![b'x'; 100],
        },
    }
}

fn protocol_step(c: &mut Criterion) {
    // A one-node cluster leads by itself: each step appends and persists.
    let mut node = raft_optimized::OptimizedRaft::new(
        raft_optimized::Config::new(1, vec![1], 1),
        Recovered::default(),
    );
    for _ in 0..30 {
        node.step(Input::Tick, &mut Outbox::default());
    }
    let mut seq = 0;
    c.bench_function("optimized leader: one client request", |b| {
        b.iter(|| {
            seq += 1;
            let mut out = Outbox::default();
            node.step(Input::Request(put(1, seq)), &mut out);
            black_box(out);
        })
    });
}

fn rocksdb_apply_batch(c: &mut Criterion) {
    let dir = tempfile::tempdir().expect("tempdir");
    let identity = kvnode::storage::Identity {
        cluster_id: "bench".into(),
        protocol: "vanilla".into(),
        node_id: 1,
    };
    let (storage, _) = kvnode::storage::Storage::open(dir.path(), &identity).expect("open");
    let mut state_machine = StateMachine::default();
    let mut index = 0;
    c.bench_function("RocksDB: apply a batch of 100 puts", |b| {
        b.iter(|| {
            let entries: Vec<Entry> = (0..100)
                .map(|_| {
                    index += 1;
                    Entry {
                        stamp: Default::default(),
                        term: 1,
                        index,
                        payload: EntryPayload::Command(put(index % 64, index)),
                    }
                })
                .collect();
            let batch = state_machine.apply(&storage, &entries);
            storage.apply(&batch).expect("apply");
        })
    });
}

fn checker(c: &mut Criterion) {
    let ops = generated_history(10_000, 20, 100, 7);
    c.bench_function("checker: 10,000 operations over 100 keys", |b| {
        b.iter(|| assert!(check(black_box(&ops)).is_linearizable()))
    });
}

fn cluster_run<P: Consensus>(
    c: &mut Criterion,
    name: &str,
    factory: impl Fn(u64, &[u64]) -> P + Copy,
) {
    c.bench_function(
        &format!("{name}: 3 nodes in process, elect and 100 writes"),
        |b| {
            b.iter(|| {
                let mut cluster = ManualCluster::new(3, factory);
                cluster.elect(1, 100);
                for seq in 1..=100 {
                    cluster.request(1, put(1, seq));
                }
                cluster.settle(1_000_000);
                black_box(cluster.answers.len())
            })
        },
    );
}

fn clusters(c: &mut Criterion) {
    cluster_run(c, "vanilla", |id, members| {
        raft_vanilla::VanillaRaft::new(
            raft_vanilla::Config::new(id, members.to_vec(), 1),
            Recovered::default(),
        )
    });
    cluster_run(c, "optimized", |id, members| {
        raft_optimized::OptimizedRaft::new(
            raft_optimized::Config::new(id, members.to_vec(), 1),
            Recovered::default(),
        )
    });
    cluster_run(c, "nilext (ordered writes)", |id, members| {
        raft_nilext::NilextRaft::new(
            raft_nilext::Config::new(id, members.to_vec(), 1),
            Recovered::default(),
        )
    });
}

criterion_group!(
    benches,
    protocol_step,
    rocksdb_apply_batch,
    checker,
    clusters
);
criterion_main!(benches);

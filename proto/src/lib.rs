//! Generated protobuf and gRPC code for the client API (`kv`) and the peer
//! protocol (`raft`). The .proto files under `proto/` are the source of truth;
//! `build.rs` compiles them with `protox`, so no system `protoc` is needed.

#![allow(
    missing_docs,
    clippy::all,
    clippy::pedantic,
    missing_debug_implementations
)]

/// The client API: requests, replies, error details and the `Kv` service.
pub mod kv {
    tonic::include_proto!("kv");
}

/// Messages between replicas and the `RaftPeer` service.
pub mod raft {
    tonic::include_proto!("raft");
}

/// The part of etcd's v3 KV API the benchmark uses to compare with etcd.
pub mod etcd {
    tonic::include_proto!("etcdserverpb");
}

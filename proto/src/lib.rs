//! Generated protobuf and gRPC code for the client API (`kv`) and the peer
//! protocol (`raft`), and the conversions between them and the types of
//! `consensus` (`convert`). The .proto files under `proto/` are the source of
//! truth; `build.rs` compiles them with `protox`, so no system `protoc` is
//! needed.

/// The client API: requests, replies, error details and the `Kv` service.
#[allow(
    missing_docs,
    clippy::all,
    clippy::pedantic,
    missing_debug_implementations
)]
pub mod kv {
    tonic::include_proto!("kv");
}

/// Messages between replicas and the `RaftPeer` service.
#[allow(
    missing_docs,
    clippy::all,
    clippy::pedantic,
    missing_debug_implementations
)]
pub mod raft {
    tonic::include_proto!("raft");
}

/// The part of etcd's v3 KV API the benchmark uses to compare with etcd.
#[allow(
    missing_docs,
    clippy::all,
    clippy::pedantic,
    missing_debug_implementations
)]
pub mod etcd {
    tonic::include_proto!("etcdserverpb");
}

pub mod backup;
pub mod convert;

/// The encoded descriptors of the client API (kv.proto), for gRPC server
/// reflection (generic tools then need no .proto file).
pub const KV_FILE_DESCRIPTOR_SET: &[u8] =
    include_bytes!(concat!(env!("OUT_DIR"), "/kv_descriptors.bin"));

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

/// Error details in the standard form (`google.rpc.Status` with
/// `kv.ErrorDetail` packed in an `Any`), written once for the node and the
/// client library.
pub mod errors {
    use prost::Message as _;

    use crate::kv::ErrorDetail;

    /// The type URL of a packed `kv.ErrorDetail`.
    pub const ERROR_DETAIL_TYPE_URL: &str = "type.googleapis.com/kv.ErrorDetail";

    /// The gRPC status details for an error: a `google.rpc.Status` with the
    /// same code and message, and `detail` packed inside.
    pub fn pack(code: tonic::Code, message: &str, detail: &ErrorDetail) -> Vec<u8> {
        tonic_types::pb::Status {
            code: code as i32,
            message: message.to_string(),
            details: vec![prost_types::Any {
                type_url: ERROR_DETAIL_TYPE_URL.to_string(),
                value: detail.encode_to_vec(),
            }],
        }
        .encode_to_vec()
    }

    /// The `kv.ErrorDetail` packed in status details written by [`pack`].
    pub fn unpack(details: &[u8]) -> Option<ErrorDetail> {
        let status = tonic_types::pb::Status::decode(details).ok()?;
        status
            .details
            .iter()
            .find(|any| any.type_url == ERROR_DETAIL_TYPE_URL)
            .and_then(|any| ErrorDetail::decode(any.value.as_slice()).ok())
    }

    #[cfg(test)]
    mod tests {
        use super::*;

        #[test]
        fn details_round_trip_in_the_standard_form() {
            let detail = ErrorDetail {
                kind: crate::kv::error_detail::Kind::NotLeader as i32,
                leader_id: 2,
                leader_client_addr: "127.0.0.1:6102".into(),
                message: "not the leader".into(),
            };
            let bytes = pack(tonic::Code::Unavailable, "not the leader", &detail);
            let status =
                tonic_types::pb::Status::decode(bytes.as_slice()).expect("google.rpc.Status");
            assert_eq!(status.code, tonic::Code::Unavailable as i32);
            assert_eq!(status.details[0].type_url, ERROR_DETAIL_TYPE_URL);
            assert_eq!(unpack(&bytes), Some(detail));
            assert_eq!(unpack(b"not a status"), None);
        }
    }
}

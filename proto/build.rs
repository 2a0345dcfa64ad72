//! Compiles the .proto files with `protox`, a pure-Rust protobuf compiler, so a
//! machine with only the Rust toolchain builds this crate (no system `protoc`).

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let files = ["proto/kv.proto", "proto/raft.proto", "proto/etcd.proto"];
    for file in files {
        println!("cargo:rerun-if-changed={file}");
    }
    let descriptors = protox::compile(files, ["proto"])?;
    // The client API's descriptors, for gRPC server reflection on the
    // client port.
    let out_dir = std::path::PathBuf::from(std::env::var("OUT_DIR")?);
    let mut client_api = descriptors.clone();
    client_api
        .file
        .retain(|file| file.name.as_deref() == Some("kv.proto"));
    std::fs::write(
        out_dir.join("kv_descriptors.bin"),
        prost::Message::encode_to_vec(&client_api),
    )?;
    tonic_prost_build::configure().compile_fds(descriptors)?;
    Ok(())
}

//! The `kvnode` server: runtime, gRPC services, RocksDB storage.
//!
//! Not built yet: an empty library until the kvnode/kvctl issue lands.

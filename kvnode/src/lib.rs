//! The `kvnode` server: one replica of the replicated key-value store.
//!
//! One module per concern, as in mini-redis:
//!
//! - [`cli`]: the command line;
//! - [`config`]: flags, the TOML file, defaults, validation;
//! - [`storage`]: RocksDB, one database per node, column families for the log,
//!   hard state, durability log, data and metadata;
//! - [`runtime`]: the loop that owns the protocol and carries out its outbox
//!   exactly as written;
//! - [`transport`]: long-lived gRPC streams between peers;
//! - [`members`]: where each node listens (the address book);
//! - [`metrics`]: Prometheus metrics over HTTP;
//! - [`service`]: the client API;
//! - [`node`]: assembly, startup checks, graceful shutdown;
//! - [`launcher`]: `kvnode cluster`, on [`local_cluster`];
//! - [`local_cluster`]: a local cluster of node processes, which the
//!   process-level tests, the nemesis (crate `nemesis`) and the benchmark
//!   use too;
//! - [`netdelay`]: user-space network delay for benchmarks;
//! - [`faults`]: fault injection for the process-level fault tests.

pub mod cli;
pub mod config;
pub mod faults;
pub mod launcher;
pub mod local_cluster;
pub mod members;
pub mod metrics;
pub mod netdelay;
pub mod node;
pub mod resp;
pub mod runtime;
pub mod service;
pub mod storage;
pub mod transport;

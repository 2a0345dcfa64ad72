//! The benchmark: a load generator over the project's client library, and
//! `bench compare`, which runs the same workloads against a fresh local
//! cluster of each protocol and writes a side-by-side report (markdown,
//! HTML with plots, JSON).

pub mod compare;
pub mod etcd;
pub mod load;
pub mod metrics;
pub mod redis;
pub mod report;
pub mod target;
pub mod workload;

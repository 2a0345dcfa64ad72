//! Raft with the optimizations of production implementations (batching,
//! pipelining, parallel leader persist, ReadIndex and lease reads, pre-vote,
//! check-quorum).
//!
//! Not built yet: this crate is an empty library until its issue lands, and
//! `kvnode --protocol optimized` refuses to start.

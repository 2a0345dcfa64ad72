//! Nil-ext Raft: the Skyros protocol (SOSP 2021) on Raft.
//!
//! Not built yet: this crate is an empty library until its issue lands, and
//! `kvnode --protocol nilext` refuses to start.

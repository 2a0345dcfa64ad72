//! The client library (leader discovery, retries, sessions) and `kvctl`.
//!
//! Not built yet: an empty library until the kvnode/kvctl issue lands.

//! The deterministic simulator and the linearizability checker.

pub mod history_formats;
pub mod linearizability;

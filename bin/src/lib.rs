//! Shared pieces of the hierspec binaries: backend selection, reporting.

pub mod backend;
pub mod engine;
pub mod host_profile;
pub mod specbench;
pub mod report;
pub mod steps;

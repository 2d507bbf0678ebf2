//! Shared pieces of the hierspec binaries: backend selection, the engine, reporting, the server.

pub mod backend;
pub mod engine;
pub mod host_profile;
pub mod specbench;
pub mod report;
pub mod serve;
pub mod steps;

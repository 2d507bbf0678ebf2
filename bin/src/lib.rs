//! Shared pieces of the hierspec binaries: backend selection.

pub mod backend;

//! Fuzzing of every parser of untrusted files, on stable Rust: a small structure-aware mutator over
//! real seed files ([`seeds`]), targets that call the loaders as a user's command would
//! ([`targets`]), and a runner that counts crashes, hangs and over-allocations ([`run`]). The `fuzz`
//! binary runs it and writes docs/reliability.json; `tests/fuzz.rs` runs a short budget on CI and
//! replays every input saved under assets/fuzz/.

pub mod alloc;
pub mod mutate;
pub mod run;
pub mod seeds;
pub mod targets;

pub use alloc::Counting;

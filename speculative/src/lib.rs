//! hierspec-speculative: decoding methods over hierspec-model: token selection, the AR baseline,
//! draft-model SD, EAGLE-2 (tree builder, drafters, tree verification); the hierarchy builds on them.

pub mod ar;
pub mod drafter;
pub mod eagle;
pub mod sampling;
pub mod sd;
pub mod tree;
pub mod verify;

pub use ar::{generate, GenerationStats};
pub use sampling::{Sampler, SamplingParams};
pub use eagle::generate_eagle;
pub use sd::generate_sd;

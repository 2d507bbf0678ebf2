//! hierspec-speculative: decoding methods over hierspec-model. Today: token selection, the AR
//! baseline and the EAGLE-2 tree builder; draft-model SD, EAGLE-2 and the hierarchy build on them.

pub mod ar;
pub mod sampling;
pub mod sd;
pub mod tree;
pub mod verify;

pub use ar::{generate, GenerationStats};
pub use sampling::{Sampler, SamplingParams};
pub use sd::generate_sd;

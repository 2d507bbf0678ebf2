//! hierspec-speculative: decoding methods over hierspec-model. Today: token selection, the AR
//! baseline and the EAGLE-2 tree builder; draft-model SD, EAGLE-2 and the hierarchy build on them.

pub mod ar;
pub mod sampling;
pub mod tree;

pub use ar::{generate, GenerationStats};
pub use sampling::{Sampler, SamplingParams};

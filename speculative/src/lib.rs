//! hierspec-speculative: decoding methods over hierspec-model. Today: token selection and the AR
//! baseline; draft-model SD, EAGLE-2 and the hierarchy build on the same pieces.

pub mod ar;
pub mod sampling;

pub use ar::{generate, GenerationStats};
pub use sampling::{Sampler, SamplingParams};

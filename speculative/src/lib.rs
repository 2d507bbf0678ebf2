//! hierspec-speculative: decoding methods over hierspec-model: token selection, the AR baseline,
//! draft-model SD, EAGLE-2 (tree builder, drafters), the hierarchical schedule, and the verifier
//! interface with its acceptance rules that every method shares.

pub mod accept;
pub mod ar;
pub mod drafter;
pub mod eagle;
pub mod graphs;
pub mod hier;
pub mod profile;
pub mod sampling;
pub mod sd;
pub mod tree;
pub mod verify;

pub use ar::{generate, GenerationStats, OnToken, Until};
pub use eagle::generate_eagle;
pub use hier::{generate_hier, HierConfig};
pub use sampling::{Fault, Sampler, SamplingParams};
pub use sd::generate_sd;

//! Building blocks of the decoder, each a Burn module with `forward`.
pub mod linear;
pub mod matmul;
pub mod norm;
pub mod rope;

pub use linear::{Linear, LinearWeight, QuantSpec};
pub use norm::RmsNorm;
pub use rope::Rope;

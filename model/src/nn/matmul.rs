//! The model's products live in `hierspec-kernels` (burn's matmul with the exact-f32 option, and the
//! small-M kernels); re-exported here for callers of the model crate.
pub use hierspec_kernels::dense::{matmul, set_split_f32, split_f32};

//! Launch-cost probes for `bench-kernels --launch-overhead`: near-empty kernels that differ only in
//! how they take their buffers, so the host cost of a launch can be split into its parts.

use burn::tensor::{backend::Backend, Tensor};

/// Which near-empty kernel to launch.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Probe {
    /// one input and one output, as arrays (no shape or strides)
    Array1,
    /// as `Array1`, with a freshly allocated output every launch
    Array1Fresh,
    /// eleven inputs and one output, as arrays
    Array12,
    /// one input and one output, as tensors (shape and strides uploaded with each launch)
    Tensor1,
    /// eleven inputs and one output, as tensors
    Tensor12,
    /// as `Tensor12`, with a freshly allocated output every launch (what a product launch does)
    Tensor12Fresh,
}

impl Probe {
    pub const ALL: [Probe; 6] = [Probe::Array1, Probe::Array1Fresh, Probe::Array12, Probe::Tensor1, Probe::Tensor12, Probe::Tensor12Fresh];
}

/// Launch `probe` once on `a`'s device (`a` and `out` f32, at least 4 elements). False where `B` has
/// no cubecl kernels.
pub fn launch<B: Backend>(probe: Probe, a: &Tensor<B, 1>, out: &Tensor<B, 1>) -> bool {
    #[cfg(feature = "cube")]
    return crate::cube::probe(probe, a, out);
    #[cfg(not(feature = "cube"))]
    {
        let _ = (probe, a, out);
        false
    }
}

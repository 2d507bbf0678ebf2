//! hierspec-kernels: the engine's hot operations, each as a plain-tensor reference that every Burn
//! backend runs and, on cubecl runtimes (CUDA, wgpu), a cubecl kernel compared against it in tests.
//!
//! - [`dense::linear`]: decode-shaped `x[M, K] W[K, N]` for M <= 128 (burn 0.21's matmul reads the
//!   weights at ~15% of the H200's bandwidth at M = 1).
//! - [`int4::matmul`]: the same product with W4A16 weights, group dequantization fused in.
//! - [`attention::attention`]: new rows attending to the KV cache prefix plus themselves under a
//!   tree (ancestor) or causal mask, GQA without repeating K/V; each row sums exactly the terms the
//!   single-row step over its path would, in the same order (batch-invariant verification).
//! - [`fused`]: the rest of a decoder layer in few launches: RMSNorm, q|k|v and gate|up as one
//!   product each with bias / residual / SwiGLU fused in, RoPE with the KV-cache write.
//! - [`mma`]: the same products on the tensor cores (bf16/f16 on CUDA), weights repacked at load
//!   into fragment order: flat in M up to the compute knee.
//! - [`topk::log_softmax_top_k`]: the drafters' top-k of each row's log-softmax, one launch.
//!
//! Dispatch is by the tensor's device at run time ([`cube`]): a tensor whose primitive is a cubecl
//! `CubeTensor` (CUDA, wgpu) takes the kernel, anything else (Flex, autodiff) the reference. That
//! keeps the model code backend-free, and keeps training on autodiff differentiable through the
//! references.

pub mod attention;
pub mod dense;
pub mod fallback;
pub mod fused;
pub mod int4;
pub mod memory;
pub mod mma;
pub mod start;
pub mod topk;

#[cfg(feature = "cube")]
mod cube;

/// Whether tensors on `device` take the cubecl kernels (false: every op runs its reference).
pub fn has_kernels(device: &burn::tensor::Device) -> bool {
    #[cfg(feature = "cube")]
    return cube::has_kernels(device);
    #[cfg(not(feature = "cube"))]
    {
        let _ = device;
        false
    }
}

/// Whether the device of `probe` runs bf16 tensor-core mma (CUDA sm_80+).
pub fn has_tensor_cores<const D: usize>(probe: &burn::tensor::Tensor<D>) -> bool {
    #[cfg(feature = "cube")]
    return cube::has_tensor_cores(probe);
    #[cfg(not(feature = "cube"))]
    {
        let _ = probe;
        false
    }
}

/// A weight or setting the kernels cannot accept, with the reason.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Invalid(pub String);

impl std::fmt::Display for Invalid {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for Invalid {}

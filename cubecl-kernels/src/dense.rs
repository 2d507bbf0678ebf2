//! Dense products. [`matmul`] is burn's, with an exact-f32 option for backends whose f32 matmul runs on
//! TF32 tensor cores; [`linear`] is the decode-shaped product that takes our small-M kernel on cubecl
//! runtimes.
//!
//! burn 0.21's CUDA matmul runs f32 inputs on TF32 (cubek-matmul `adjust_dtypes`), ~1e-3 relative
//! error per product: too coarse for an f32 reference mode. With `set_split_f32(true)` an f32 product
//! is the sum of four products of operands split into a bf16-exact high part and a low remainder, each
//! exact or nearly so in TF32: ~2e-6 relative error, at four times the work.

use std::sync::atomic::{AtomicBool, Ordering};

use burn::tensor::{DType, Tensor};

static SPLIT_F32: AtomicBool = AtomicBool::new(false);

/// The largest M that [`linear`] sends to the small-M kernel; prefill chunks above it use burn's
/// tiled matmul.
pub const SMALL_M_MAX: usize = 128;

/// Emulate full-f32 products on a backend whose f32 matmul uses TF32 (burn-cuda). Process-wide.
pub fn set_split_f32(on: bool) {
    SPLIT_F32.store(on, Ordering::Relaxed);
}

pub fn split_f32() -> bool {
    SPLIT_F32.load(Ordering::Relaxed)
}

/// burn's batched matmul, exact in f32 when [`set_split_f32`] is on.
pub fn matmul<const D: usize>(a: Tensor<D>, b: Tensor<D>) -> Tensor<D> {
    if a.dtype() != DType::F32 || !split_f32() {
        return a.matmul(b);
    }
    let split = |x: Tensor<D>| {
        let hi = x.clone().cast(DType::BF16).cast(DType::F32);
        (hi.clone(), x - hi)
    };
    let (a_hi, a_lo) = split(a);
    let (b_hi, b_lo) = split(b);
    // Small terms first, so they are not lost against the large one.
    let small = a_lo.clone().matmul(b_lo.clone()) + a_lo.matmul(b_hi.clone()) + a_hi.clone().matmul(b_lo);
    small + a_hi.matmul(b_hi)
}

/// `x[M, K] W[K, N]` with f32 accumulation; the kernel for M <= [`SMALL_M_MAX`] on cubecl runtimes.
pub fn linear(x: Tensor<2>, w: Tensor<2>) -> Tensor<2> {
    #[cfg(feature = "cube")]
    if x.dims()[0] <= SMALL_M_MAX {
        if let Some(y) = crate::cube::dense_matmul(&x, &w) {
            return y;
        }
        crate::fallback::declined("dense product", &x.device());
    }
    reference_linear(x, w)
}

/// The plain-tensor product the kernel is checked against.
pub fn reference_linear(x: Tensor<2>, w: Tensor<2>) -> Tensor<2> {
    matmul(x, w)
}

#[cfg(test)]
mod tests {
    use super::*;
    use burn::tensor::Device;
    use burn::tensor::Distribution;

    #[test]
    fn split_product_equals_plain_product_on_an_exact_backend() {
        let device = Device::flex();
        let a = Tensor::<2>::random([7, 33], Distribution::Normal(0.0, 1.0), &device);
        let b = Tensor::<2>::random([33, 5], Distribution::Normal(0.0, 1.0), &device);
        let plain: Vec<f32> = a.clone().matmul(b.clone()).into_data().iter::<f32>().collect();
        set_split_f32(true);
        let split: Vec<f32> = matmul(a, b).into_data().iter::<f32>().collect();
        set_split_f32(false);
        for (x, y) in plain.iter().zip(&split) {
            assert!((x - y).abs() <= 1e-5 * (1.0 + x.abs()), "{x} vs {y}");
        }
    }
}

//! What the kernel comparisons share: the device the features select, its default dtype, and the
//! relative error bound.
#![allow(dead_code)]

use burn::tensor::{DType, FloatDType, IntDType, Tensor};
use hierspec_kernels::{dense, int4};
use rand::{rngs::StdRng, Rng};

pub use burn::tensor::Device;

/// The cubecl device the features select, with its float dtype set once from `HIERSPEC_TEST_DTYPE`.
pub fn device() -> Device {
    #[cfg(feature = "cuda")]
    let mut device = Device::cuda(0);
    #[cfg(all(feature = "wgpu", not(feature = "cuda")))]
    let mut device = Device::wgpu(burn::tensor::DeviceKind::default());
    // HIERSPEC_TEST_DTYPE=bf16|f16 runs the same comparisons in half precision (CUDA).
    let dtype = match std::env::var("HIERSPEC_TEST_DTYPE").as_deref() {
        Ok("bf16") => DType::BF16,
        Ok("f16") => DType::F16,
        _ => DType::F32,
    };
    static INIT: std::sync::Once = std::sync::Once::new();
    INIT.call_once(|| {
        device.configure((FloatDType::from(dtype), IntDType::I32)).unwrap();
        // burn-cuda's f32 matmul runs on TF32 (~1e-3): the references must be exact f32.
        dense::set_split_f32(cfg!(feature = "cuda") && dtype == DType::F32);
    });
    device
}

/// Relative error: max |a - b| over max |b|. The kernels accumulate in f32; in f32 the bound is 1e-3,
/// in half precision the output rounding (2^-8 for bf16) dominates.
pub fn rel_err<const D: usize>(a: Tensor<D>, b: Tensor<D>) -> f32 {
    let a: Vec<f32> = a.cast(DType::F32).into_data().iter::<f32>().collect();
    let b: Vec<f32> = b.cast(DType::F32).into_data().iter::<f32>().collect();
    assert_eq!(a.len(), b.len());
    let scale = b.iter().fold(0f32, |m, x| m.max(x.abs())).max(1e-20);
    a.iter().zip(&b).fold(0f32, |m, (x, y)| m.max((x - y).abs())) / scale
}

pub fn bound(device: &Device) -> f32 {
    match Tensor::<1>::zeros([1], device).dtype() {
        DType::F32 => 1e-3,
        _ => 1e-2,
    }
}

/// Random parts of one kind for a fused product: dense, or int4 of one group and symmetry.
pub fn int4_weight(rng: &mut StdRng, k: usize, n: usize, g: usize, asym: bool, device: &Device) -> int4::Int4Weight {
    let w: Vec<f32> = (0..k * n).map(|_| rng.random_range(-1.0f32..1.0)).collect();
    int4::quantize_rtn(&w, k, n, g, asym).unwrap().upload(device).unwrap()
}


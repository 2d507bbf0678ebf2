//! Every kernel against its plain-tensor reference on random inputs of awkward sizes (K and N not
//! multiples of the tiles, M in {1, 3, 17, 64, 128}). Runs on the cubecl runtime the features select:
//! `--features wgpu` (lavapipe in CI) or `--features cuda` (the GPU). Without either there is no
//! kernel to compare, so the file is empty.
#![cfg(any(feature = "wgpu", feature = "cuda"))]

use burn::tensor::{DType, Distribution, Tensor};
use hierspec_kernels::attention::{self, AttnMask};
use hierspec_kernels::{dense, int4};
use rand::{rngs::StdRng, Rng, SeedableRng};

#[cfg(feature = "cuda")]
type B = burn_cubecl::CubeBackend<cubecl::cuda::CudaRuntime, f32, i32, u8>;
#[cfg(all(feature = "wgpu", not(feature = "cuda")))]
type B = burn_cubecl::CubeBackend<cubecl::wgpu::WgpuRuntime, f32, i32, u32>;

fn device() -> <B as burn::tensor::backend::BackendTypes>::Device {
    let device = Default::default();
    // HIERSPEC_TEST_DTYPE=bf16|f16 runs the same comparisons in half precision (CUDA).
    let dtype = match std::env::var("HIERSPEC_TEST_DTYPE").as_deref() {
        Ok("bf16") => DType::BF16,
        Ok("f16") => DType::F16,
        _ => DType::F32,
    };
    static INIT: std::sync::Once = std::sync::Once::new();
    INIT.call_once(|| {
        burn::tensor::set_default_dtypes::<B>(&device, dtype, DType::I32).unwrap();
        // burn-cuda's f32 matmul runs on TF32 (~1e-3): the references must be exact f32.
        dense::set_split_f32(cfg!(feature = "cuda") && dtype == DType::F32);
    });
    device
}

/// Relative error: max |a - b| over max |b|. The kernels accumulate in f32; in f32 the bound is 1e-3,
/// in half precision the output rounding (2^-8 for bf16) dominates.
fn rel_err<const D: usize>(a: Tensor<B, D>, b: Tensor<B, D>) -> f32 {
    let a: Vec<f32> = a.cast(DType::F32).into_data().iter::<f32>().collect();
    let b: Vec<f32> = b.cast(DType::F32).into_data().iter::<f32>().collect();
    assert_eq!(a.len(), b.len());
    let scale = b.iter().fold(0f32, |m, x| m.max(x.abs())).max(1e-20);
    a.iter().zip(&b).fold(0f32, |m, (x, y)| m.max((x - y).abs())) / scale
}

fn bound(device: &<B as burn::tensor::backend::BackendTypes>::Device) -> f32 {
    match Tensor::<B, 1>::zeros([1], device).dtype() {
        DType::F32 => 1e-3,
        _ => 1e-2,
    }
}

const MS: [usize; 5] = [1, 3, 17, 64, 128];

#[test]
fn dense_small_m_kernel_matches_reference() {
    let device = device();
    for (k, n) in [(301, 97), (64, 33), (1000, 161)] {
        let w = Tensor::<B, 2>::random([k, n], Distribution::Normal(0.0, 1.0), &device);
        for m in MS {
            let x = Tensor::<B, 2>::random([m, k], Distribution::Normal(0.0, 1.0), &device);
            let err = rel_err(dense::linear(x.clone(), w.clone()), dense::reference_linear(x, w.clone()));
            assert!(err <= bound(&device), "dense m {m} k {k} n {n}: relative error {err}");
        }
    }
}

#[test]
fn int4_kernel_matches_reference() {
    let device = device();
    let mut rng = StdRng::seed_from_u64(7);
    // (k, n, group, asymmetric): groups of 32 and 128, a full-row group, and a K that is not a
    // multiple of 8 (the last word is partial).
    for (k, n, g, asym) in [(352, 97, 32, false), (352, 97, 32, true), (640, 161, 128, false), (296, 45, 296, true), (300, 33, 300, false)] {
        let w: Vec<f32> = (0..k * n).map(|_| rng.random_range(-1.0f32..1.0)).collect();
        let q = int4::quantize_rtn(&w, k, n, g, asym).unwrap().upload::<B>(&device).unwrap();
        for m in MS {
            let x = Tensor::<B, 2>::random([m, k], Distribution::Normal(0.0, 1.0), &device);
            let err = rel_err(int4::matmul(x.clone(), &q), int4::reference_matmul(x, &q));
            assert!(err <= bound(&device), "int4 m {m} k {k} n {n} g {g} asym {asym}: relative error {err}");
        }
    }
}

#[test]
fn tree_attention_kernel_matches_reference() {
    let device = device();
    let mut rng = StdRng::seed_from_u64(11);
    // (heads, kv_heads, head_dim, cache_len, new rows): GQA groups 1, 2 and 4, head dims that are not
    // powers of two, new rows past one mask word, a cache longer than one chunk.
    for (nh, nkv, hd, cache_len, n) in [(4, 2, 64, 0, 7), (4, 1, 80, 5, 45), (2, 2, 128, 300, 1), (8, 2, 64, 260, 19), (4, 4, 32, 1000, 70)] {
        let t = cache_len + n;
        let cap = t + 9; // the cache buffer is larger than the rows in use: K/V arrive as views
        let k = Tensor::<B, 4>::random([1, nkv, cap, hd], Distribution::Normal(0.0, 1.0), &device).slice([0..1, 0..nkv, 0..t, 0..hd]);
        let v = Tensor::<B, 4>::random([1, nkv, cap, hd], Distribution::Normal(0.0, 1.0), &device).slice([0..1, 0..nkv, 0..t, 0..hd]);
        let q = Tensor::<B, 4>::random([1, nh, n, hd], Distribution::Normal(0.0, 2.0), &device);
        // A random tree: every row sees itself and a random set of earlier rows (its "ancestors").
        let mut allowed = vec![false; n * n];
        for i in 0..n {
            allowed[i * n + i] = true;
            for j in 0..i {
                allowed[i * n + j] = rng.random_bool(0.3);
            }
        }
        let mask = (n > 1).then(|| AttnMask::<B>::from_new_rows(cache_len, n, &allowed, &device));
        // The reference in f32 on the same (possibly bf16-rounded) inputs: in half precision the
        // reference would round scores and probabilities itself, the kernel keeps them in f32.
        let f = |t: &Tensor<B, 4>| t.clone().cast(DType::F32);
        let got = attention::attention(q.clone(), k.clone(), v.clone(), mask.as_ref());
        let want = attention::reference(f(&q), f(&k), f(&v), mask.as_ref());
        let err = rel_err(got, want);
        assert!(err <= bound(&device), "attention heads {nh}/{nkv} hd {hd} cache {cache_len} n {n}: relative error {err}");

        // The drafter's case: earlier draft rows are still in the cache and masked too (the last
        // `cols` keys follow the mask, the rest are visible).
        let cols = (cache_len / 2).max(1).min(t - 1) + 1;
        let cols = cols.max(n).min(t);
        let allowed: Vec<bool> = (0..n * cols).map(|x| x % cols == cols - n + x / cols || rng.random_bool(0.4)).collect();
        let mask = AttnMask::<B>::new(t - cols, n, cols, &allowed, &device);
        let err = rel_err(attention::attention(q.clone(), k.clone(), v.clone(), Some(&mask)), attention::reference(f(&q), f(&k), f(&v), Some(&mask)));
        assert!(err <= bound(&device), "attention with {cols} masked keys, heads {nh}/{nkv} hd {hd} n {n}: relative error {err}");
    }
}

//! The tensor-core products against the plain-tensor references. On CUDA in bf16 / f16
//! (`HIERSPEC_TEST_DTYPE`) they run on the tensor cores; everywhere else (wgpu on lavapipe in CI, CUDA
//! in f32) the same kernel runs with each mma emulated through shared memory in the PTX fragment
//! layout, so the packing, the fragment arithmetic and the epilogues are tested without tensor cores.
#![cfg(any(feature = "wgpu", feature = "cuda"))]

mod common;

use burn::tensor::{DType, Distribution, Tensor};
use common::{bound, device, int4_weight, rel_err, Device};
use hierspec_kernels::mma::{self, MmaWeight, TensorCores};
use hierspec_kernels::start::CacheStart;
use hierspec_kernels::{fused, int4};
use rand::{rngs::StdRng, Rng, SeedableRng};

const MS: [usize; 6] = [1, 3, 8, 17, 64, 128];

/// Real mma where this runtime and dtype have it, else the emulation. Every test of this binary
/// picks the same mode, so their order does not matter.
fn mode(device: &Device) -> TensorCores {
    let probe = Tensor::<1>::zeros([1], device);
    let mode = if probe.dtype() != DType::F32 && hierspec_kernels::has_tensor_cores(&probe) { TensorCores::Auto } else { TensorCores::Emulate };
    mma::set_tensor_cores(mode);
    mode
}

/// The same parts' weights as int4 or dense, with their tensor-core packings.
fn int4_or_dense<'a>(int4_parts: bool, q: &'a [int4::Int4Weight], dense: &[Tensor<2>]) -> (Vec<fused::PartWeight<'a>>, Vec<MmaWeight>) {
    let weights = (0..q.len()).map(|i| if int4_parts { fused::PartWeight::Int4(&q[i]) } else { fused::PartWeight::Dense(dense[i].clone()) }).collect();
    let packed = (0..q.len()).map(|i| if int4_parts { MmaWeight::int4(&q[i]) } else { MmaWeight::dense(&dense[i]) }.expect("packed")).collect();
    (weights, packed)
}

fn part<'a>(w: &'a fused::PartWeight<'a>, packed: &'a MmaWeight, bias: Option<Tensor<1>>) -> fused::Part<'a> {
    fused::Part { weight: w.clone(), perm: None, bias, mma: Some(packed) }
}

#[test]
fn device_packing_matches_the_host_reference() {
    let device = device();
    mode(&device);
    let mut rng = StdRng::seed_from_u64(3);
    for (k, n) in [(200, 37), (64, 16), (1000, 161)] {
        let q = int4_weight(&mut rng, k, n, k, true, &device);
        let words: Vec<u32> = q.qweight.val().into_data().iter::<i32>().map(|w| w as u32).collect();
        let packed = MmaWeight::int4(&q).expect("packed");
        let got: Vec<u32> = packed.words.unwrap().val().into_data().iter::<i32>().map(|w| w as u32).collect();
        assert_eq!(got, mma::pack_int4_host(&words, k, n), "int4 packing k {k} n {n}");

        let w = Tensor::<2>::random([k, n], Distribution::Normal(0.0, 1.0), &device);
        let host: Vec<f32> = w.clone().cast(DType::F32).into_data().iter::<f32>().collect();
        let packed = MmaWeight::dense(&w).expect("packed");
        let got: Vec<f32> = packed.values.unwrap().val().cast(DType::F32).into_data().iter::<f32>().collect();
        assert_eq!(got, mma::pack_dense_host(&host, k, n), "dense packing k {k} n {n}");
    }
}

#[test]
fn mma_products_match_reference() {
    let device = device();
    mode(&device);
    let mut rng = StdRng::seed_from_u64(5);
    // (k, output widths, group, asymmetric, bias, residual): q|k|v with biases and widths off the
    // 16-channel tiles, groups of 32 (two per unit) and 128, a full-row group whose K is not a multiple
    // of 64, one part with the residual add.
    let cases = [
        (320, vec![96, 33, 33], 32, true, true, false),
        (640, vec![161], 128, false, false, true),
        (296, vec![45, 16], 296, true, false, false),
        (256, vec![100], 64, true, true, true),
    ];
    for (ci, (k, ns, g, asym, bias, residual)) in cases.into_iter().enumerate() {
        // int4 at M <= 8: paired channel tiles (what the large shapes get) in every other case, one
        // tile per block (the test shapes' own policy) in the rest.
        mma::set_paired_tiles(Some(ci % 2 == 0));
        let n_out: usize = ns.iter().sum();
        let q: Vec<int4::Int4Weight> = ns.iter().map(|&n| int4_weight(&mut rng, k, n, g, asym, &device)).collect();
        let dense_w: Vec<Tensor<2>> = ns.iter().map(|&n| Tensor::random([k, n], Distribution::Normal(0.0, 0.1), &device)).collect();
        let biases: Vec<Option<Tensor<1>>> = ns.iter().map(|&n| bias.then(|| Tensor::random([n], Distribution::Normal(0.0, 1.0), &device))).collect();
        for int4_parts in [true, false] {
            let (weights, packed) = int4_or_dense(int4_parts, &q, &dense_w);
            let parts: Vec<fused::Part> = (0..ns.len()).map(|i| part(&weights[i], &packed[i], biases[i].clone())).collect();
            for m in MS {
                let x = Tensor::<2>::random([m, k], Distribution::Normal(0.0, 1.0), &device);
                let r = residual.then(|| Tensor::<2>::random([m, n_out], Distribution::Normal(0.0, 1.0), &device));
                let got = fused::linear(x.clone(), &parts, fused::Input::Plain, r.clone());
                assert_eq!(got.dims(), [m, n_out]);
                let err = rel_err(got, fused::reference_linear(x, &parts, fused::Input::Plain, r));
                assert!(err <= bound(&device), "mma int4 {int4_parts} k {k} ns {ns:?} g {g} m {m}: relative error {err}");
            }
        }
    }
    mma::set_paired_tiles(None);
}

#[test]
fn mma_swiglu_mlp_matches_reference() {
    let device = device();
    mode(&device);
    let mut rng = StdRng::seed_from_u64(9);
    for (h, ffn, g) in [(128, 224, 32), (192, 128, 64)] {
        let q: Vec<int4::Int4Weight> = [(h, ffn), (h, ffn), (ffn, h)].iter().map(|&(k, n)| int4_weight(&mut rng, k, n, g, true, &device)).collect();
        let weights: Vec<fused::PartWeight> = q.iter().map(fused::PartWeight::Int4).collect();
        let packed: Vec<MmaWeight> = q.iter().map(|w| MmaWeight::int4(w).expect("packed")).collect();
        let parts: Vec<fused::Part> = (0..3).map(|i| part(&weights[i], &packed[i], None)).collect();
        for m in [1, 5, 40] {
            let x = Tensor::<2>::random([m, h], Distribution::Normal(0.0, 1.0), &device);
            let r = Tensor::<2>::random([m, h], Distribution::Normal(0.0, 1.0), &device);
            let got = fused::swiglu_mlp(x.clone(), parts[0].clone(), parts[1].clone(), parts[2].clone(), r.clone());
            let gu = fused::reference_linear(x, &parts[..2], fused::Input::Plain, None);
            let want = fused::reference_linear(gu, &parts[2..], fused::Input::SwiGlu, Some(r));
            let err = rel_err(got, want);
            assert!(err <= bound(&device), "mma swiglu mlp h {h} ffn {ffn} m {m}: relative error {err}");
        }
    }
}

/// Row i of an mma product is bitwise the same whatever M, and in whichever token block it lands.
#[test]
fn mma_products_are_batch_invariant() {
    let device = device();
    mode(&device);
    let mut rng = StdRng::seed_from_u64(17);
    let (k, n) = (1024, 161);
    let q = int4_weight(&mut rng, k, n, 128, true, &device);
    let w = Tensor::<2>::random([k, n], Distribution::Normal(0.0, 0.1), &device);
    let weights = [fused::PartWeight::Int4(&q), fused::PartWeight::Dense(w.clone())];
    let packed = [MmaWeight::int4(&q).expect("packed"), MmaWeight::dense(&w).expect("packed")];
    let x = Tensor::<2>::random([128, k], Distribution::Normal(0.0, 1.0), &device);
    let rows = |t: Tensor<2>| -> Vec<f32> { t.cast(DType::F32).into_data().iter::<f32>().collect() };
    for (which, (wt, pk)) in ["int4", "dense"].iter().zip(weights.iter().zip(&packed)) {
        let parts = [part(wt, pk, None)];
        let product = |x: Tensor<2>| rows(fused::linear(x, &parts, fused::Input::Plain, None));
        for m in [2usize, 9, 17, 64, 100, 128] {
            let all = product(x.clone().slice([0..m, 0..k]));
            let pick = rng.random_range(0..m);
            for i in [0, pick, m - 1] {
                let one = product(x.clone().slice([i..i + 1, 0..k]));
                assert_eq!(one[..], all[i * n..(i + 1) * n], "{which} row {i} of m {m}");
            }
        }
    }
}

/// The int4 product's two load orders at M <= 8 (next span loaded ahead, or not) give the same bits:
/// the launch policy picks one per shape, so neither may change a logit. Covers one part, three parts
/// of widths off the tiles, and gate|up with SwiGLU, at K of 1 to 11 spans per warp. On tensor cores
/// only: the emulation has one load order.
#[test]
fn int4_load_ahead_gives_the_same_bits() {
    let device = device();
    if mode(&device) == TensorCores::Emulate {
        // The emulation never loads ahead (lavapipe cannot compile it in reasonable time).
        eprintln!("int4_load_ahead_gives_the_same_bits: tensor cores needed (the emulation has one load order)");
        return;
    }
    let mut rng = StdRng::seed_from_u64(23);
    let rows = |t: Tensor<2>| -> Vec<f32> { t.cast(DType::F32).into_data().iter::<f32>().collect() };
    let run = |ahead: bool, f: &dyn Fn() -> Tensor<2>| {
        mma::set_int4_ahead(Some(ahead));
        let out = rows(f());
        mma::set_int4_ahead(None);
        out
    };
    for (k, ns, g) in [(192, vec![40], 64), (704, vec![96, 33, 17], 32), (1408, vec![64, 64], 128)] {
        let q: Vec<int4::Int4Weight> = ns.iter().map(|&n| int4_weight(&mut rng, k, n, g, true, &device)).collect();
        let weights: Vec<fused::PartWeight> = q.iter().map(fused::PartWeight::Int4).collect();
        let packed: Vec<MmaWeight> = q.iter().map(|w| MmaWeight::int4(w).expect("packed")).collect();
        let parts: Vec<fused::Part> = (0..ns.len()).map(|i| part(&weights[i], &packed[i], None)).collect();
        let down = int4_weight(&mut rng, ns[0], k, ns[0], true, &device);
        let down_w = fused::PartWeight::Int4(&down);
        let down_packed = MmaWeight::int4(&down).expect("packed");
        let down_part = part(&down_w, &down_packed, None);
        for m in [1, 3, 8] {
            let x = Tensor::<2>::random([m, k], Distribution::Normal(0.0, 1.0), &device);
            let linear = || fused::linear(x.clone(), &parts, fused::Input::Plain, None);
            assert_eq!(run(true, &linear), run(false, &linear), "linear k {k} ns {ns:?} m {m}");
            if ns.len() == 2 {
                let r = Tensor::<2>::random([m, k], Distribution::Normal(0.0, 1.0), &device);
                let mlp = || fused::swiglu_mlp(x.clone(), parts[0].clone(), parts[1].clone(), down_part.clone(), r.clone());
                assert_eq!(run(true, &mlp), run(false, &mlp), "swiglu mlp k {k} m {m}");
            }
        }
    }
}

/// A product's values as f32, to compare bits.
fn bits(t: Tensor<2>) -> Vec<f32> {
    t.cast(DType::F32).into_data().iter::<f32>().collect()
}

/// `f` with the shared-x blocks forced to `share` warps (0: the K-split blocks) on this thread.
fn with_x_share(share: usize, f: &dyn Fn() -> Vec<f32>) -> Vec<f32> {
    mma::set_x_share(Some(share));
    let out = f();
    mma::set_x_share(None);
    out
}

/// The shared-x blocks (each warp owns channel tiles and walks the K split's virtual warps, adding
/// each one's partials into a running total) give the bits of the K-split blocks: the launch policy
/// picks one by M and the split, so neither may change a logit. int4 and dense: three parts of
/// widths off the tiles with a residual, gate|up with SwiGLU and the folded RMSNorm; int4 also the
/// folded norm alone, and q|k|v with RoPE and the cache write in the epilogue.
#[test]
fn shared_x_gives_the_same_bits() {
    let device = device();
    mode(&device);
    let mut rng = StdRng::seed_from_u64(29);
    // M of three token blocks under emulation (one tile each), or one block of three tiles.
    let m = 17;
    for (k, ns, g) in [(704, vec![96, 33, 17], 32), (704, vec![96, 96], 64)] {
        let q: Vec<int4::Int4Weight> = ns.iter().map(|&n| int4_weight(&mut rng, k, n, g, true, &device)).collect();
        let dense_w: Vec<Tensor<2>> = ns.iter().map(|&n| Tensor::random([k, n], Distribution::Normal(0.0, 0.1), &device)).collect();
        let norm = fused::PreNorm { weight: Tensor::<1>::random([k], Distribution::Normal(1.0, 0.3), &device), eps: 1e-6 };
        let down = int4_weight(&mut rng, ns[0], k, 32, true, &device);
        let down_w = fused::PartWeight::Int4(&down);
        let down_packed = MmaWeight::int4(&down).expect("packed");
        let down_part = part(&down_w, &down_packed, None);
        let n_out: usize = ns.iter().sum();
        let x = Tensor::<2>::random([m, k], Distribution::Normal(0.0, 1.0), &device);
        for int4_parts in [true, false] {
            let (weights, packed) = int4_or_dense(int4_parts, &q, &dense_w);
            let parts: Vec<fused::Part> = (0..ns.len()).map(|i| part(&weights[i], &packed[i], None)).collect();
            if ns.len() == 3 {
                let r = Tensor::<2>::random([m, n_out], Distribution::Normal(0.0, 1.0), &device);
                let linear = || bits(fused::linear(x.clone(), &parts, fused::Input::Plain, Some(r.clone())));
                assert_eq!(with_x_share(3, &linear), with_x_share(0, &linear), "linear int4 {int4_parts} k {k} ns {ns:?}");
                if int4_parts {
                    // (Not every combination: each launch shape is a shader compile on lavapipe.)
                    let normed = || bits(fused::normed_linear(x.clone(), &norm, &parts));
                    assert_eq!(with_x_share(3, &normed), with_x_share(0, &normed), "normed linear k {k} ns {ns:?}");
                }
            } else {
                let r = Tensor::<2>::random([m, k], Distribution::Normal(0.0, 1.0), &device);
                let mlp = || bits(fused::normed_swiglu_mlp(x.clone(), &norm, parts[0].clone(), parts[1].clone(), down_part.clone(), r.clone()));
                assert_eq!(with_x_share(3, &mlp), with_x_share(0, &mlp), "normed swiglu mlp int4 {int4_parts} k {k}");
            }
        }
    }
    // q|k|v with RoPE in the epilogue: q and k in pair order, heads of 64.
    let layout = fused::QkvLayout { heads: 4, kv_heads: 2, head_dim: 64 };
    let k = 256;
    let q: Vec<int4::Int4Weight> = [256, 128, 128].iter().map(|&n| int4_weight(&mut rng, k, n, 64, true, &device)).collect();
    let weights: Vec<fused::PartWeight> = q.iter().map(fused::PartWeight::Int4).collect();
    let packed: Vec<MmaWeight> = (0..3).map(|i| if i < 2 { MmaWeight::int4_rope(&q[i], 64) } else { MmaWeight::int4(&q[i]) }.expect("packed")).collect();
    let biases: Vec<Tensor<1>> = [256, 128, 128].iter().map(|&n| Tensor::random([n], Distribution::Normal(0.0, 1.0), &device)).collect();
    let parts: Vec<fused::Part> = (0..3).map(|i| part(&weights[i], &packed[i], Some(biases[i].clone()))).collect();
    let norm = fused::PreNorm { weight: Tensor::<1>::random([k], Distribution::Normal(1.0, 0.3), &device), eps: 1e-6 };
    let cos = Tensor::<2>::random([64, 32], Distribution::Uniform(-1.0, 1.0), &device);
    let sin = Tensor::<2>::random([64, 32], Distribution::Uniform(-1.0, 1.0), &device);
    let x = Tensor::<2>::random([m, k], Distribution::Normal(0.0, 1.0), &device);
    let pos = Tensor::<1, burn::tensor::Int>::from_data(burn::tensor::TensorData::new((3..3 + m as i32).collect::<Vec<i32>>(), [m]), &device);
    let at = CacheStart::new(3, &device);
    let rope = || {
        let zeros = || Tensor::<4>::zeros([1, 2, m + 3, 64], &device);
        let (kc, vc) = (zeros(), zeros());
        let spec = fused::QkvRope { positions: pos.clone(), cos: &cos, sin: &sin, layout, start: &at };
        let q = fused::qkv_rope_in_epilogue(&x, Some(&norm), &parts, &spec, &kc, &vc).expect("fused");
        [q.flatten::<2>(0, 2), kc.flatten::<2>(0, 2), vc.flatten::<2>(0, 2)].into_iter().flat_map(bits).collect::<Vec<f32>>()
    };
    assert_eq!(with_x_share(3, &rope), with_x_share(0, &rope), "q|k|v with RoPE, m {m}");
}

/// The shared-x layout over several token tiles per block (its running totals and the folded norm's
/// sums of squares are kept per tile): forced to two tiles, which the emulation does not take by
/// itself, against the K-split blocks at the same tiles.
#[test]
fn shared_x_over_token_tiles_gives_the_same_bits() {
    let device = device();
    mode(&device);
    let mut rng = StdRng::seed_from_u64(37);
    let (k, ns, m) = (448, [48, 40, 17], 23);
    let q: Vec<int4::Int4Weight> = ns.iter().map(|&n| int4_weight(&mut rng, k, n, 64, true, &device)).collect();
    let weights: Vec<fused::PartWeight> = q.iter().map(fused::PartWeight::Int4).collect();
    let packed: Vec<MmaWeight> = q.iter().map(|w| MmaWeight::int4(w).expect("packed")).collect();
    let parts: Vec<fused::Part> = (0..3).map(|i| part(&weights[i], &packed[i], None)).collect();
    let norm = fused::PreNorm { weight: Tensor::<1>::random([k], Distribution::Normal(1.0, 0.3), &device), eps: 1e-6 };
    let x = Tensor::<2>::random([m, k], Distribution::Normal(0.0, 1.0), &device)
        * Tensor::<2>::random([m, 1], Distribution::Uniform(0.2, 4.0), &device);
    mma::set_token_tiles(Some(2));
    let normed = || bits(fused::normed_linear(x.clone(), &norm, &parts));
    let (shared, split) = (with_x_share(2, &normed), with_x_share(0, &normed));
    mma::set_token_tiles(None);
    assert_eq!(shared, split, "normed linear k {k} ns {ns:?} m {m}, two token tiles per block");
}

/// The decoder layer's RMSNorm folded into the product that reads it (q|k|v, gate|up) matches the
/// norm then the product, int4 and dense, at widths off the tiles and every M; a row's result does
/// not depend on M (the sums of squares are added in an order fixed by K and N).
#[test]
fn mma_normed_products_match_reference() {
    let device = device();
    mode(&device);
    let mut rng = StdRng::seed_from_u64(31);
    let rows = |t: Tensor<2>| -> Vec<f32> { t.cast(DType::F32).into_data().iter::<f32>().collect() };
    for (k, ns, g) in [(192, vec![40, 24, 24], 64), (704, vec![96, 96], 32)] {
        let gamma = Tensor::<1>::random([k], Distribution::Normal(1.0, 0.3), &device);
        let norm = fused::PreNorm { weight: gamma.clone(), eps: 1e-6 };
        let q: Vec<int4::Int4Weight> = ns.iter().map(|&n| int4_weight(&mut rng, k, n, g, true, &device)).collect();
        let dense_w: Vec<Tensor<2>> = ns.iter().map(|&n| Tensor::random([k, n], Distribution::Normal(0.0, 0.1), &device)).collect();
        let down = int4_weight(&mut rng, ns[0], k, ns[0], true, &device);
        let down_w = fused::PartWeight::Int4(&down);
        let down_packed = MmaWeight::int4(&down).expect("packed");
        for int4_parts in [true, false] {
            let (weights, packed) = int4_or_dense(int4_parts, &q, &dense_w);
            let parts: Vec<fused::Part> = (0..ns.len()).map(|i| part(&weights[i], &packed[i], None)).collect();
            // Rows of different scales, so that the per-token 1 / rms matters.
            let x = Tensor::<2>::random([128, k], Distribution::Normal(0.0, 1.0), &device)
                * Tensor::<2>::random([128, 1], Distribution::Uniform(0.2, 4.0), &device);
            for m in MS {
                let xm = x.clone().slice([0..m, 0..k]);
                let normed = fused::reference_rms_norm(xm.clone(), gamma.clone(), 1e-6);
                let got = fused::normed_linear(xm.clone(), &norm, &parts);
                let err = rel_err(got.clone(), fused::reference_linear(normed.clone(), &parts, fused::Input::Plain, None));
                assert!(err <= bound(&device), "normed linear int4 {int4_parts} k {k} ns {ns:?} m {m}: relative error {err}");
                let one = rows(fused::normed_linear(x.clone().slice([m - 1..m, 0..k]), &norm, &parts));
                let n_out: usize = ns.iter().sum();
                assert_eq!(one[..], rows(got)[(m - 1) * n_out..m * n_out], "normed linear int4 {int4_parts}: row {} of m {m}", m - 1);
                if ns.len() == 2 && int4_parts {
                    let r = Tensor::<2>::random([m, k], Distribution::Normal(0.0, 1.0), &device);
                    let down_part = part(&down_w, &down_packed, None);
                    let got = fused::normed_swiglu_mlp(xm, &norm, parts[0].clone(), parts[1].clone(), down_part.clone(), r.clone());
                    let gu = fused::reference_linear(normed, &parts, fused::Input::Plain, None);
                    let want = fused::reference_linear(gu, &[down_part], fused::Input::SwiGlu, Some(r));
                    let err = rel_err(got, want);
                    assert!(err <= bound(&device), "normed swiglu mlp k {k} m {m}: relative error {err}");
                }
            }
        }
    }
}

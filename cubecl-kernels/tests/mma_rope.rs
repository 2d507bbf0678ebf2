//! RoPE and the KV-cache write in the q|k|v product's epilogue (`fused::qkv_rope`) against the
//! plain-tensor references: q and k packed in RoPE pair order, heads of 32, 64 and 128, int4 and
//! dense, with and without biases and the folded RMSNorm, M from 1 to 64. Like
//! `mma_vs_reference`, on tensor cores where the runtime and dtype have them, else emulated.
#![cfg(any(feature = "wgpu", feature = "cuda"))]

mod common;

use burn::tensor::{DType, Distribution, Int, Tensor, TensorData};
use common::{bound, device, int4_weight, rel_err, Device};
use hierspec_kernels::fused::{self, Part, PartWeight, PreNorm, QkvLayout, QkvRope};
use hierspec_kernels::mma::{self, MmaWeight, TensorCores};
use hierspec_kernels::start::CacheStart;
use rand::{rngs::StdRng, Rng, SeedableRng};

const MAX_POSITIONS: usize = 300;

fn mode(device: &Device) {
    let probe = Tensor::<1>::zeros([1], device);
    let auto = probe.dtype() != DType::F32 && hierspec_kernels::has_tensor_cores(&probe);
    mma::set_tensor_cores(if auto { TensorCores::Auto } else { TensorCores::Emulate });
}

fn values<const D: usize>(t: Tensor<D>) -> Vec<f32> {
    t.cast(DType::F32).into_data().iter::<f32>().collect()
}

/// cos and sin [MAX_POSITIONS, half] of random angles (any table will do: the kernel reads it).
fn tables(rng: &mut StdRng, half: usize, device: &Device) -> (Tensor<2>, Tensor<2>) {
    let angles: Vec<f32> = (0..MAX_POSITIONS * half).map(|_| rng.random_range(-3.2f32..3.2)).collect();
    let make = |f: fn(f32) -> f32| Tensor::<2>::from_data(TensorData::new(angles.iter().map(|&a| f(a)).collect::<Vec<_>>(), [MAX_POSITIONS, half]), device);
    (make(f32::cos), make(f32::sin))
}

fn positions(rng: &mut StdRng, m: usize, device: &Device) -> Tensor<1, Int> {
    let p: Vec<i32> = (0..m).map(|_| rng.random_range(0..MAX_POSITIONS as i32)).collect();
    Tensor::from_data(TensorData::new(p, [m]), device)
}

/// The q|k|v weights of one layout: natural and paired packings of the same int4 or dense weights.
struct Qkv {
    int4: Vec<hierspec_kernels::int4::Int4Weight>,
    dense: Vec<Tensor<2>>,
    biases: Vec<Option<Tensor<1>>>,
}

impl Qkv {
    fn new(rng: &mut StdRng, k: usize, layout: QkvLayout, bias: bool, device: &Device) -> Self {
        let QkvLayout { heads, kv_heads, head_dim } = layout;
        let ns = [heads * head_dim, kv_heads * head_dim, kv_heads * head_dim];
        Self {
            int4: ns.iter().map(|&n| int4_weight(rng, k, n, 64, true, device)).collect(),
            dense: ns.iter().map(|&n| Tensor::random([k, n], Distribution::Normal(0.0, 0.1), device)).collect(),
            biases: ns.iter().map(|&n| bias.then(|| Tensor::random([n], Distribution::Normal(0.0, 1.0), device))).collect(),
        }
    }

    fn weights(&self, int4: bool) -> Vec<PartWeight<'_>> {
        (0..3).map(|i| if int4 { PartWeight::Int4(&self.int4[i]) } else { PartWeight::Dense(self.dense[i].clone()) }).collect()
    }

    /// q and k in RoPE pair order (`paired`), v always natural.
    fn packed(&self, int4: bool, paired: Option<usize>) -> Vec<MmaWeight> {
        (0..3)
            .map(|i| {
                let packed = match (int4, paired.filter(|_| i < 2)) {
                    (true, Some(hd)) => MmaWeight::int4_rope(&self.int4[i], hd),
                    (true, None) => MmaWeight::int4(&self.int4[i]),
                    (false, Some(hd)) => MmaWeight::dense_rope(&self.dense[i], hd),
                    (false, None) => MmaWeight::dense(&self.dense[i]),
                };
                packed.expect("packed")
            })
            .collect()
    }

    fn parts<'a>(&'a self, weights: &'a [PartWeight<'a>], packed: &'a [MmaWeight]) -> Vec<Part<'a>> {
        (0..3).map(|i| Part { weight: weights[i].clone(), perm: None, bias: self.biases[i].clone(), mma: Some(&packed[i]) }).collect()
    }
}

#[test]
fn rope_pair_order_puts_each_pair_in_rows_g_and_g_plus_8() {
    for hd in [16, 32, 64, 128] {
        let n = 3 * hd;
        let order = mma::rope_pair_order(n, hd).expect("tiles");
        let mut seen = vec![false; n];
        for (p, &c) in order.iter().enumerate() {
            assert!(!seen[c], "hd {hd}: channel {c} twice");
            seen[c] = true;
            assert_eq!(c / hd, p / hd, "hd {hd}: channel {c} left its head");
            if p % 16 < 8 {
                assert!(c % hd < hd / 2, "hd {hd}: row {} holds a second-half dimension", p % 16);
                assert_eq!(order[p + 8], c + hd / 2, "hd {hd}: row {p} + 8 is not its partner");
            }
        }
    }
    assert!(mma::rope_pair_order(96, 24).is_none(), "heads that do not tile");
    assert!(mma::rope_pair_order(100, 64).is_none(), "n not a multiple of the head");
}

/// Paired packing moves channels, not arithmetic: the plain q|k|v product is bit for bit the same.
#[test]
fn paired_packing_gives_the_same_product() {
    let device = device();
    mode(&device);
    let mut rng = StdRng::seed_from_u64(41);
    let layout = QkvLayout { heads: 3, kv_heads: 1, head_dim: 64 };
    let qkv = Qkv::new(&mut rng, 192, layout, true, &device);
    for int4 in [true, false] {
        let weights = qkv.weights(int4);
        let (natural, paired) = (qkv.packed(int4, None), qkv.packed(int4, Some(64)));
        for m in [1, 17] {
            let x = Tensor::<2>::random([m, 192], Distribution::Normal(0.0, 1.0), &device);
            let a = fused::linear(x.clone(), &qkv.parts(&weights, &natural), fused::Input::Plain, None);
            let b = fused::linear(x, &qkv.parts(&weights, &paired), fused::Input::Plain, None);
            assert_eq!(values(a), values(b), "int4 {int4} m {m}");
        }
    }
}

#[test]
fn rope_in_the_epilogue_matches_reference() {
    let device = device();
    mode(&device);
    let mut rng = StdRng::seed_from_u64(43);
    // (k, layout, bias, norm, M): Qwen-like heads of 128 with biases, heads of 64 with 7 q heads
    // (widths off the blocks' tiles), heads of 32 without biases. Few M per case: each new launch
    // shape is a shader compile, seconds each on lavapipe.
    let cases = [
        (256, QkvLayout { heads: 4, kv_heads: 2, head_dim: 128 }, true, true, vec![1, 17, 64]),
        (192, QkvLayout { heads: 7, kv_heads: 1, head_dim: 64 }, true, false, vec![3]),
        (320, QkvLayout { heads: 2, kv_heads: 2, head_dim: 32 }, false, true, vec![1]),
    ];
    for (k, layout, bias, with_norm, ms) in cases {
        let hd = layout.head_dim;
        let qkv = Qkv::new(&mut rng, k, layout, bias, &device);
        let (cos, sin) = tables(&mut rng, hd / 2, &device);
        let norm = with_norm.then(|| PreNorm { weight: Tensor::random([k], Distribution::Normal(1.0, 0.3), &device), eps: 1e-6 });
        for int4 in [true, false] {
            let weights = qkv.weights(int4);
            let packed = qkv.packed(int4, Some(hd));
            let parts = qkv.parts(&weights, &packed);
            for &m in &ms {
                let what = format!("k {k} {layout:?} bias {bias} norm {with_norm} int4 {int4} m {m}");
                let start = 5;
                let capacity = start + m + 3;
                let cache = || Tensor::<4>::random([1, layout.kv_heads, capacity, hd], Distribution::Normal(0.0, 1.0), &device);
                let (k0, v0) = (cache(), cache());
                let x = Tensor::<2>::random([m, k], Distribution::Normal(0.0, 1.0), &device);
                let at = CacheStart::new(start, &device);
                let rope = QkvRope { positions: positions(&mut rng, m, &device), cos: &cos, sin: &sin, layout, start: &at };
                let (mut kc, mut vc) = (k0.clone() + 0.0, v0.clone() + 0.0);
                let q = fused::qkv_rope_in_epilogue(&x, norm.as_ref(), &parts, &rope, &kc, &vc).unwrap_or_else(|| panic!("{what}: not fused"));
                let (mut kr, mut vr) = (k0.clone(), v0.clone());
                let rope_ref = QkvRope { positions: rope.positions.clone(), ..rope };
                let want = fused::reference_qkv_rope(x.unsqueeze(), norm.as_ref(), &parts, rope_ref, &mut kr, &mut vr);
                assert_eq!(q.dims(), [1, layout.heads, m, hd], "{what}");
                let err = rel_err(q, want);
                assert!(err <= bound(&device), "{what}: q relative error {err}");
                for (name, got, want, before) in [("k", &mut kc, kr, &k0), ("v", &mut vc, vr, &v0)] {
                    let rows = [0..1, 0..layout.kv_heads, start..start + m, 0..hd];
                    let err = rel_err(got.clone().slice(rows.clone()), want.slice(rows));
                    assert!(err <= bound(&device), "{what}: {name} cache relative error {err}");
                    // Rows outside [start, start + m) keep their bits.
                    for keep in [0..start, start + m..capacity] {
                        let rows = [0..1, 0..layout.kv_heads, keep, 0..hd];
                        assert_eq!(values(got.clone().slice(rows.clone())), values(before.clone().slice(rows)), "{what}: {name} cache written outside the new rows");
                    }
                }
            }
        }
    }
}

/// A token's q, k and v do not depend on M: the last row of a 17-row product is bitwise the row run
/// alone (greedy speculation is lossless only so).
#[test]
fn rope_in_the_epilogue_is_batch_invariant() {
    let device = device();
    mode(&device);
    let mut rng = StdRng::seed_from_u64(47);
    let (k, layout) = (256, QkvLayout { heads: 4, kv_heads: 2, head_dim: 128 });
    let qkv = Qkv::new(&mut rng, k, layout, true, &device);
    let (cos, sin) = tables(&mut rng, 64, &device);
    let norm = PreNorm { weight: Tensor::random([k], Distribution::Normal(1.0, 0.3), &device), eps: 1e-6 };
    let (m, hd) = (17, 128);
    for int4 in [true, false] {
        let weights = qkv.weights(int4);
        let packed = qkv.packed(int4, Some(hd));
        let parts = qkv.parts(&weights, &packed);
        let x = Tensor::<2>::random([m, k], Distribution::Normal(0.0, 1.0), &device);
        let pos = positions(&mut rng, m, &device);
        let run = |x: Tensor<2>, pos: Tensor<1, Int>, start: usize| {
            let zeros = || Tensor::<4>::zeros([1, 2, m, hd], &device);
            let (kc, vc) = (zeros(), zeros());
            let at = CacheStart::new(start, &device);
            let rope = QkvRope { positions: pos, cos: &cos, sin: &sin, layout, start: &at };
            let q = fused::qkv_rope_in_epilogue(&x, Some(&norm), &parts, &rope, &kc, &vc).expect("fused");
            (q, kc, vc)
        };
        let (q_all, k_all, v_all) = run(x.clone(), pos.clone(), 0);
        let (q_one, k_one, v_one) = run(x.slice([m - 1..m, 0..k]), pos.slice([m - 1..m]), m - 1);
        let last = |t: Tensor<4>, heads: usize| values(t.slice([0..1, 0..heads, m - 1..m, 0..hd]));
        assert_eq!(values(q_one), last(q_all, 4), "int4 {int4}: q");
        assert_eq!(last(k_one, 2), last(k_all, 2), "int4 {int4}: k");
        assert_eq!(last(v_one, 2), last(v_all, 2), "int4 {int4}: v");
    }
}

/// The fused epilogue and the two-launch path (the product, then `rope_qkv`) give the same bits:
/// both compute each q|k|v value and each rotation as the same explicit fused multiply-adds, so
/// `HIERSPEC_FUSE_ROPE=0` does not change an output.
#[test]
fn rope_in_the_epilogue_equals_the_two_launch_path() {
    let device = device();
    mode(&device);
    let mut rng = StdRng::seed_from_u64(53);
    let (k, layout) = (256, QkvLayout { heads: 4, kv_heads: 2, head_dim: 128 });
    let qkv = Qkv::new(&mut rng, k, layout, true, &device);
    let (cos, sin) = tables(&mut rng, 64, &device);
    let norm = PreNorm { weight: Tensor::random([k], Distribution::Normal(1.0, 0.3), &device), eps: 1e-6 };
    let hd = 128;
    // int4 over three token tiles' rows, dense at M = 1 (each launch shape is a shader compile on
    // lavapipe).
    for (int4, m) in [(true, 17), (false, 1)] {
        let weights = qkv.weights(int4);
        let packed = qkv.packed(int4, Some(hd));
        let parts = qkv.parts(&weights, &packed);
        let x = Tensor::<2>::random([m, k], Distribution::Normal(0.0, 1.0), &device);
        let pos = positions(&mut rng, m, &device);
        let zeros = || Tensor::<4>::zeros([1, 2, m + 2, hd], &device);
        let (kf, vf) = (zeros(), zeros());
        let at = CacheStart::new(2, &device);
        let rope = QkvRope { positions: pos.clone(), cos: &cos, sin: &sin, layout, start: &at };
        let q_fused = fused::qkv_rope_in_epilogue(&x, Some(&norm), &parts, &rope, &kf, &vf).expect("fused");
        let (mut kt, mut vt) = (zeros(), zeros());
        let qkv_out = fused::normed_linear(x, &norm, &parts);
        let q_two = fused::rope_qkv(qkv_out.unsqueeze(), pos, &cos, &sin, layout, &mut kt, &mut vt, &at);
        assert_eq!(values(q_fused), values(q_two), "int4 {int4} m {m}: q");
        assert_eq!(values(kf), values(kt), "int4 {int4} m {m}: k cache");
        assert_eq!(values(vf), values(vt), "int4 {int4} m {m}: v cache");
    }
}

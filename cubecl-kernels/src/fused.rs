//! The decoder layer's fused steps, each a plain-tensor reference plus one cubecl launch on cubecl
//! runtimes. Unfused, a layer took ~67 launches per decode step (every RoPE slice, cast, norm
//! statistic and bias add its own kernel, ~15 us of host dispatch each on the H200); fused it takes 8:
//!
//! - [`rms_norm`]: the norm with its f32 statistic.
//! - [`linear`]: `f(x) [W0 | W1 | W2] + bias (+ residual)`: q|k|v in one product, gate|up in one,
//!   o_proj and down_proj with the residual add, down_proj staging `silu(gate) * up` itself.
//! - [`normed_linear`], [`normed_swiglu_mlp`]: the layer's RMSNorm folded into the q|k|v and the
//!   gate|up product on tensor cores (the norm's launch gone: 6 per layer instead of 8).
//! - [`rope_qkv`]: RoPE on q and k straight from the q|k|v row, k and v written into the KV cache.
//! - [`qkv_rope`]: on tensor cores, that RoPE and cache write in the q|k|v product's epilogue (5
//!   launches per layer instead of 6).
//! - [`crate::attention::attention_rows`]: attention writing o_proj's input layout.
//! - [`keep_rows`]: the KV-cache compaction after a tree verification, k and v of a layer in one
//!   launch (was four: a select and a slice_assign each).

use burn::tensor::activation::silu;
use burn::tensor::{DType, Int, Tensor};

use crate::dense;
#[cfg(feature = "cube")]
use crate::dense::SMALL_M_MAX;
use crate::int4::{self, Int4Weight};
use crate::mma::MmaWeight;
use crate::start::CacheStart;

/// An RMSNorm a product applies to its input first: `rms_norm(x, weight, eps)` ([`rms_norm`]).
#[derive(Clone)]
pub struct PreNorm {
    /// [k]
    pub weight: Tensor<1>,
    pub eps: f64,
}

/// One layer's weight in a fused product.
#[derive(Clone)]
pub enum PartWeight<'a> {
    /// [k, n]
    Dense(Tensor<2>),
    Int4(&'a Int4Weight),
}

/// One layer of a fused product: weight, optional act-order permutation of the input columns
/// (GPTQ `g_idx`: the layer computes `x[:, perm] W`), optional bias [n], and the weight's
/// tensor-core copy where one was packed at load ([`MmaWeight`]).
#[derive(Clone)]
pub struct Part<'a> {
    pub weight: PartWeight<'a>,
    pub perm: Option<Tensor<1, Int>>,
    pub bias: Option<Tensor<1>>,
    pub mma: Option<&'a MmaWeight>,
}

/// What the product reads as its input.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Input {
    /// x [m, k] as given.
    Plain,
    /// x [m, 2k] = gate | up; the input is silu(gate) * up (down_proj of a SwiGLU MLP).
    SwiGlu,
}

impl Part<'_> {
    pub fn k(&self) -> usize {
        match &self.weight {
            PartWeight::Dense(w) => w.dims()[0],
            PartWeight::Int4(q) => q.k,
        }
    }

    pub fn n(&self) -> usize {
        match &self.weight {
            PartWeight::Dense(w) => w.dims()[1],
            PartWeight::Int4(q) => q.n,
        }
    }

    /// `x W + b` through the single-product kernels (or their references off cubecl runtimes).
    pub fn product(&self, x: Tensor<2>) -> Tensor<2> {
        self.apply(x, dense::linear, int4::matmul)
    }

    /// `x W + b` through the plain-tensor references.
    pub fn reference_product(&self, x: Tensor<2>) -> Tensor<2> {
        self.apply(x, dense::reference_linear, int4::reference_matmul)
    }

    fn apply(
        &self,
        x: Tensor<2>,
        dense: fn(Tensor<2>, Tensor<2>) -> Tensor<2>,
        int4: fn(Tensor<2>, &Int4Weight) -> Tensor<2>,
    ) -> Tensor<2> {
        let x = match &self.perm {
            Some(p) => x.select(1, p.clone()),
            None => x,
        };
        let y = match &self.weight {
            PartWeight::Dense(w) => dense(x, w.clone()),
            PartWeight::Int4(q) => int4(x, q),
        };
        match &self.bias {
            Some(b) => y + b.clone().unsqueeze::<2>(),
            None => y,
        }
    }
}

/// silu(gate) * up for gu [m, 2k] = gate | up.
pub fn swiglu(gu: Tensor<2>) -> Tensor<2> {
    let [m, k2] = gu.dims();
    let k = k2 / 2;
    silu(gu.clone().slice([0..m, 0..k])) * gu.slice([0..m, k..k2])
}

/// `input(x) [W0 | W1 | ...] + [b0 | b1 | ...] (+ residual)`: outputs side by side, [m, sum n].
/// One launch on cubecl runtimes for M <= [`SMALL_M_MAX`] when the parts are of one kind (dense, or
/// int4 of one group size and symmetry), without act-order, all with a bias or none: the tensor-core
/// kernel where the parts were packed for it, else the scalar one; otherwise the parts' own products.
pub fn linear(x: Tensor<2>, parts: &[Part], input: Input, residual: Option<Tensor<2>>) -> Tensor<2> {
    check(&x, parts, input, residual.as_ref());
    #[cfg(feature = "cube")]
    if x.dims()[0] <= SMALL_M_MAX {
        if input == Input::Plain {
            if let Some(y) = crate::cube::mma_linear(&x, parts, false, residual.as_ref(), None) {
                return y;
            }
            if parts.iter().any(|p| p.mma.is_some()) {
                crate::fallback::declined("tensor-core product", &x.device());
            }
        }
        if let Some(y) = crate::cube::fused_linear(&x, parts, input, residual.as_ref()) {
            return y;
        }
        crate::fallback::declined("fused product", &x.device());
    }
    compose(x, parts, input, residual, |p, x| p.product(x))
}

/// `residual + down(silu(gate(x)) * up(x))`, the SwiGLU MLP in two launches on cubecl runtimes: the
/// tensor-core gate|up writes silu(gate) * up itself; the scalar down_proj stages it from gate|up.
pub fn swiglu_mlp(x: Tensor<2>, gate: Part, up: Part, down: Part, residual: Tensor<2>) -> Tensor<2> {
    mlp(x, None, gate, up, down, residual)
}

/// [`swiglu_mlp`] of `rms_norm(x)`: on tensor cores the norm happens inside gate|up (two launches
/// for norm and MLP), elsewhere it is its own launch first.
pub fn normed_swiglu_mlp(x: Tensor<2>, norm: &PreNorm, gate: Part, up: Part, down: Part, residual: Tensor<2>) -> Tensor<2> {
    mlp(x, Some(norm), gate, up, down, residual)
}

/// Whether a product may take the RMSNorm of its input (`HIERSPEC_FOLD_NORM=0`: never, so that
/// the norm runs as its own launch, to measure the fold). Read once per process.
#[cfg(feature = "cube")]
fn fold_norm() -> bool {
    static FOLD: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *FOLD.get_or_init(|| std::env::var("HIERSPEC_FOLD_NORM").map_or(true, |v| v != "0"))
}

fn mlp(x: Tensor<2>, norm: Option<&PreNorm>, gate: Part, up: Part, down: Part, residual: Tensor<2>) -> Tensor<2> {
    let gate_up = [gate, up];
    #[cfg(feature = "cube")]
    if x.dims()[0] <= SMALL_M_MAX && (norm.is_none() || fold_norm()) {
        check(&x, &gate_up, Input::Plain, None);
        assert_eq!(gate_up[0].n(), gate_up[1].n(), "swiglu mlp: gate and up widths differ");
        if let Some(h) = crate::cube::mma_linear(&x, &gate_up, true, None, norm) {
            return linear(h, &[down], Input::Plain, Some(residual));
        }
        if gate_up.iter().any(|p| p.mma.is_some()) {
            crate::fallback::declined("tensor-core SwiGLU", &x.device());
        }
    }
    if let Some(norm) = norm {
        // The norm as its own launch, then the MLP as without one.
        let [gate, up] = gate_up;
        return mlp(rms_norm(x, norm.weight.clone(), norm.eps), None, gate, up, down, residual);
    }
    let gu = linear(x, &gate_up, Input::Plain, None);
    linear(gu, &[down], Input::SwiGlu, Some(residual))
}

/// `rms_norm(x) [W0 | W1 | ...] + [b0 | b1 | ...]` (q|k|v of a decoder layer): one launch where the
/// tensor-core product takes it, else the norm's launch and then [`linear`]'s.
pub fn normed_linear(x: Tensor<2>, norm: &PreNorm, parts: &[Part]) -> Tensor<2> {
    check(&x, parts, Input::Plain, None);
    #[cfg(feature = "cube")]
    if x.dims()[0] <= SMALL_M_MAX && fold_norm() {
        if let Some(y) = crate::cube::mma_linear(&x, parts, false, None, Some(norm)) {
            return y;
        }
        if parts.iter().any(|p| p.mma.is_some()) {
            crate::fallback::declined("tensor-core normed product", &x.device());
        }
    }
    linear(rms_norm(x, norm.weight.clone(), norm.eps), parts, Input::Plain, None)
}

/// The plain-tensor composition [`linear`] is checked against.
pub fn reference_linear(x: Tensor<2>, parts: &[Part], input: Input, residual: Option<Tensor<2>>) -> Tensor<2> {
    check(&x, parts, input, residual.as_ref());
    compose(x, parts, input, residual, |p, x| p.reference_product(x))
}

fn check(x: &Tensor<2>, parts: &[Part], input: Input, residual: Option<&Tensor<2>>) {
    assert!(!parts.is_empty(), "fused linear: no parts");
    let k = parts[0].k();
    assert!(parts.iter().all(|p| p.k() == k), "fused linear: parts read inputs of different widths");
    let width = if input == Input::SwiGlu { 2 * k } else { k };
    assert_eq!(x.dims()[1], width, "fused linear: input has {} columns, the weights want {width}", x.dims()[1]);
    if let Some(r) = residual {
        let n: usize = parts.iter().map(Part::n).sum();
        assert_eq!(r.dims(), [x.dims()[0], n], "fused linear: residual shape");
    }
}

fn compose<'a>(
    x: Tensor<2>,
    parts: &[Part<'a>],
    input: Input,
    residual: Option<Tensor<2>>,
    product: impl Fn(&Part<'a>, Tensor<2>) -> Tensor<2>,
) -> Tensor<2> {
    let x = match input {
        Input::Plain => x,
        Input::SwiGlu => swiglu(x),
    };
    let mut ys: Vec<Tensor<2>> = parts.iter().map(|p| product(p, x.clone())).collect();
    let y = if ys.len() == 1 { ys.pop().expect("one part") } else { Tensor::cat(ys, 1) };
    match residual {
        Some(r) => y + r,
        None => y,
    }
}

/// RMSNorm of the rows of x [m, h] with weight [h]; the statistic in f32 whatever x's dtype.
pub fn rms_norm(x: Tensor<2>, weight: Tensor<1>, eps: f64) -> Tensor<2> {
    #[cfg(feature = "cube")]
    if let Some(y) = crate::cube::rms_norm(&x, &weight, eps) {
        return y;
    }
    #[cfg(feature = "cube")]
    crate::fallback::declined("RMSNorm", &x.device());
    reference_rms_norm(x, weight, eps)
}

pub fn reference_rms_norm(x: Tensor<2>, weight: Tensor<1>, eps: f64) -> Tensor<2> {
    let dtype = x.dtype();
    let x32 = x.cast(DType::F32);
    let rms = (x32.clone().powi_scalar(2).mean_dim(1) + eps).sqrt();
    (x32 / rms).cast(dtype) * weight.unsqueeze::<2>()
}

/// Half-split (NeoX / HF) RoPE of x [b, heads, n, hd] at `positions` [n], from tables
/// cos, sin [max_positions, hd / 2].
pub fn rope(x: Tensor<4>, cos: &Tensor<2>, sin: &Tensor<2>, positions: Tensor<1, Int>) -> Tensor<4> {
    let [b, h, n, d] = x.dims();
    let half = d / 2;
    let cos = cos.clone().select(0, positions.clone()).reshape([1, 1, n, half]);
    let sin = sin.clone().select(0, positions).reshape([1, 1, n, half]);
    let x1 = x.clone().slice([0..b, 0..h, 0..n, 0..half]);
    let x2 = x.slice([0..b, 0..h, 0..n, half..d]);
    Tensor::cat(vec![x1.clone() * cos.clone() - x2.clone() * sin.clone(), x2 * cos + x1 * sin], 3)
}

/// Heads of one fused q|k|v product and where its k and v go.
#[derive(Debug, Clone, Copy)]
pub struct QkvLayout {
    pub heads: usize,
    pub kv_heads: usize,
    pub head_dim: usize,
}

/// qkv [b, n, (heads + 2 kv_heads) hd]: RoPE on the q and k heads at `positions`, k and v written into
/// the caches ([b, kv_heads, capacity, hd]) at rows [start, start + n). Returns q [b, heads, n, hd].
/// The caller checks positions < max_positions and start + n <= capacity.
#[allow(clippy::too_many_arguments)]
pub fn rope_qkv(
    qkv: Tensor<3>,
    positions: Tensor<1, Int>,
    cos: &Tensor<2>,
    sin: &Tensor<2>,
    layout: QkvLayout,
    k_cache: &mut Tensor<4>,
    v_cache: &mut Tensor<4>,
    start: &CacheStart,
) -> Tensor<4> {
    #[cfg(feature = "cube")]
    if let Some(q) = crate::cube::rope_qkv(&qkv, &positions, cos, sin, layout, k_cache, v_cache, start) {
        return q;
    }
    #[cfg(feature = "cube")]
    crate::fallback::declined("RoPE and cache write", &qkv.device());
    reference_rope_qkv(qkv, positions, cos, sin, layout, k_cache, v_cache, start.rows)
}

#[allow(clippy::too_many_arguments)]
pub fn reference_rope_qkv(
    qkv: Tensor<3>,
    positions: Tensor<1, Int>,
    cos: &Tensor<2>,
    sin: &Tensor<2>,
    QkvLayout { heads, kv_heads, head_dim: hd }: QkvLayout,
    k_cache: &mut Tensor<4>,
    v_cache: &mut Tensor<4>,
    start: usize,
) -> Tensor<4> {
    let [b, n, _] = qkv.dims();
    let take = |from: usize, h: usize| qkv.clone().slice([0..b, 0..n, from * hd..(from + h) * hd]).reshape([b, n, h, hd]).swap_dims(1, 2);
    let q = rope(take(0, heads), cos, sin, positions.clone());
    let k = rope(take(heads, kv_heads), cos, sin, positions);
    let v = take(heads + kv_heads, kv_heads);
    let rows = [0..b, 0..kv_heads, start..start + n, 0..hd];
    k_cache.inplace(|c| c.slice_assign(rows.clone(), k));
    v_cache.inplace(|c| c.slice_assign(rows, v));
    q
}

/// Where the RoPE of a q|k|v product's new rows happens ([`qkv_rope`]).
pub struct QkvRope<'a> {
    /// [n] i32: each new row's position.
    pub positions: Tensor<1, Int>,
    /// [max_positions, hd / 2]
    pub cos: &'a Tensor<2>,
    pub sin: &'a Tensor<2>,
    pub layout: QkvLayout,
    /// The first cache row the new rows' k and v go to.
    pub start: &'a CacheStart,
}

/// `rope_qkv((rms_norm(x) or x) [Wq | Wk | Wv] + b)` for x [b, n, d]: q [b, heads, n, hd], k and v
/// written into the caches ([b, kv_heads, capacity, hd]) at rows [start, start + n). On tensor
/// cores, with q and k packed in RoPE pair order ([`crate::mma::MmaWeight::int4_rope`]), the
/// rotation and the cache write happen in the product's epilogue: one launch instead of two.
/// Elsewhere it is [`normed_linear`] or [`linear`], then [`rope_qkv`]. The caller checks positions
/// < max_positions and start + n <= capacity.
pub fn qkv_rope(
    x: Tensor<3>,
    norm: Option<&PreNorm>,
    parts: &[Part],
    rope: QkvRope,
    k_cache: &mut Tensor<4>,
    v_cache: &mut Tensor<4>,
) -> Tensor<4> {
    let [b, n, d] = x.dims();
    let x = x.reshape([b * n, d]);
    check(&x, parts, Input::Plain, None);
    if b == 1 && fuse_rope() {
        if let Some(q) = qkv_rope_in_epilogue(&x, norm, parts, &rope, k_cache, v_cache) {
            return q;
        }
    }
    let qkv = match norm {
        Some(norm) => normed_linear(x, norm, parts),
        None => linear(x, parts, Input::Plain, None),
    };
    let width = qkv.dims()[1];
    rope_qkv(qkv.reshape([b, n, width]), rope.positions, rope.cos, rope.sin, rope.layout, k_cache, v_cache, rope.start)
}

/// [`qkv_rope`]'s one-launch form for x [n, d] of one sequence, where it runs (tensor cores, q and k
/// in RoPE pair order, n <= [`crate::dense::SMALL_M_MAX`], operands of one dtype), else `None`.
pub fn qkv_rope_in_epilogue(
    x: &Tensor<2>,
    norm: Option<&PreNorm>,
    parts: &[Part],
    rope: &QkvRope,
    k_cache: &Tensor<4>,
    v_cache: &Tensor<4>,
) -> Option<Tensor<4>> {
    #[cfg(feature = "cube")]
    if x.dims()[0] <= SMALL_M_MAX && (norm.is_none() || fold_norm()) {
        return crate::cube::mma_qkv_rope(x, parts, norm, rope, (k_cache, v_cache));
    }
    let _ = (x, norm, parts, rope, k_cache, v_cache);
    None
}

/// The plain-tensor composition [`qkv_rope`] is checked against. The product's output is rounded to
/// the activation dtype, as the q|k|v output is; the rotation is then done in f32 and rounded once,
/// as every RoPE kernel does (in bf16 tensor ops each product and sum would round on its own).
pub fn reference_qkv_rope(
    x: Tensor<3>,
    norm: Option<&PreNorm>,
    parts: &[Part],
    rope: QkvRope,
    k_cache: &mut Tensor<4>,
    v_cache: &mut Tensor<4>,
) -> Tensor<4> {
    let [b, n, d] = x.dims();
    let mut x = x.reshape([b * n, d]);
    if let Some(norm) = norm {
        x = reference_rms_norm(x, norm.weight.clone(), norm.eps);
    }
    let qkv = reference_linear(x, parts, Input::Plain, None);
    let (dtype, width) = (qkv.dtype(), qkv.dims()[1]);
    let f32 = |t: &Tensor<2>| t.clone().cast(DType::F32);
    let (mut k32, mut v32) = (k_cache.clone().cast(DType::F32), v_cache.clone().cast(DType::F32));
    let q = reference_rope_qkv(qkv.cast(DType::F32).reshape([b, n, width]), rope.positions, &f32(rope.cos), &f32(rope.sin), rope.layout, &mut k32, &mut v32, rope.start.rows);
    *k_cache = k32.cast(dtype);
    *v_cache = v32.cast(dtype);
    q.cast(dtype)
}

/// Whether a q|k|v product may take RoPE and the cache write (`HIERSPEC_FUSE_ROPE=0`: never, so
/// that they run as their own launch, to measure the fusion). Read once per process.
fn fuse_rope() -> bool {
    static FUSE: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *FUSE.get_or_init(|| std::env::var("HIERSPEC_FUSE_ROPE").map_or(true, |v| v != "0"))
}

/// Move cache rows `rows` (ascending, `rows[i] >= start + i`, within the cache) to rows
/// [start, start + n) of k and v ([b, kv_heads, capacity, hd]), in every head: the compaction of one
/// layer after a tree verification keeps the accepted path. One launch on cubecl runtimes.
pub fn keep_rows(k: &mut Tensor<4>, v: &mut Tensor<4>, start: usize, rows: &Tensor<1, Int>) {
    #[cfg(feature = "cube")]
    if crate::cube::keep_rows(k, v, rows, start) {
        return;
    }
    reference_keep_rows(k, v, start, rows)
}

pub fn reference_keep_rows(k: &mut Tensor<4>, v: &mut Tensor<4>, start: usize, rows: &Tensor<1, Int>) {
    let n = rows.dims()[0];
    let [b, h, _, d] = k.dims();
    let dst = [0..b, 0..h, start..start + n, 0..d];
    let kept_k = k.clone().select(2, rows.clone());
    let kept_v = v.clone().select(2, rows.clone());
    k.inplace(|c| c.slice_assign(dst.clone(), kept_k));
    v.inplace(|c| c.slice_assign(dst, kept_v));
}

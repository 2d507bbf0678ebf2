//! Run-time dispatch to the cubecl kernels. A tensor's primitive is a cubecl `CubeTensor` exactly
//! when its device is a cubecl runtime (CUDA or wgpu; burn's fusion is off); the kernels take those,
//! and every other device (Flex, autodiff) falls back to the plain-tensor reference.

mod attention;
mod fused;
mod matmul;
mod mma;
mod reduce;
mod topk;

use burn::tensor::{DType, Device, Int, Tensor};
use burn_cubecl::{tensor::CubeTensor, Cube};
use cubecl::prelude::BufferArg;

use crate::attention::AttnMask;
use crate::fused::{Input, Part, PartWeight, PreNorm, QkvLayout, QkvRope};
use crate::int4::Int4Weight;
use crate::mma::TensorCores;
use crate::start::CacheStart;

/// `t`'s cubecl primitive, where it has one.
fn float<const D: usize>(t: &Tensor<D>) -> Option<CubeTensor> {
    t.clone().try_into_primitive::<Cube>().ok()
}

/// `t`'s cubecl primitive where it has one of 32-bit ints (what the kernels read).
fn int<const D: usize>(t: &Tensor<D, Int>) -> Option<CubeTensor> {
    t.clone().try_into_primitive::<Cube>().ok().filter(|c| matches!(c.dtype, DType::I32 | DType::U32))
}

fn back<const D: usize>(t: CubeTensor) -> Tensor<D> {
    Tensor::from_primitive::<Cube>(t)
}

fn back_int<const D: usize>(t: CubeTensor) -> Tensor<D, Int> {
    Tensor::from_primitive::<Cube>(t)
}

/// A kernel's buffer argument over `t`'s buffer: only the handle is cloned. The length is the
/// tensor's element count.
pub(crate) fn arg(t: &CubeTensor) -> BufferArg {
    // SAFETY: the length is that of the tensor the handle belongs to.
    unsafe { BufferArg::from_raw_parts(t.handle.clone(), t.meta.shape().num_elements()) }
}

/// The cubecl element type of `dtype` (those the kernels take: floats and 32-bit ints).
pub(crate) fn elem(dtype: DType) -> cubecl::ir::ElemType {
    use cubecl::ir::{ElemType, FloatKind, IntKind, UIntKind};
    match dtype {
        DType::F32 => ElemType::Float(FloatKind::F32),
        DType::F16 => ElemType::Float(FloatKind::F16),
        DType::BF16 => ElemType::Float(FloatKind::BF16),
        DType::I32 => ElemType::Int(IntKind::I32),
        DType::U32 => ElemType::UInt(UIntKind::U32),
        other => unreachable!("no kernel takes {other:?}: callers check `supported` first"),
    }
}

/// Write `values` into `t`'s buffer in place (enqueued on the stream after the work before it);
/// false where `t` is no 32-bit int cubecl tensor of that length.
pub(crate) fn write_i32<const D: usize>(t: &Tensor<D, Int>, values: &[i32]) -> bool {
    // CUDA may give a tensor of rank >= 2 pitched rows: only a contiguous one takes a flat write.
    let Some(c) = int(t).filter(|c| c.dtype == DType::I32 && c.meta.shape().num_elements() == values.len() && c.is_contiguous()) else {
        return false;
    };
    c.client.write(&c.handle, cubecl::bytes::Bytes::from_elems(values.to_vec()));
    true
}

/// `src`'s values into the first rows of `dst`'s buffer in place; false where the kernel does not
/// apply (another backend, dtypes differ, `dst` not contiguous or smaller than `src`).
pub(crate) fn copy_rows<const D: usize, const E: usize>(dst: &Tensor<D>, src: &Tensor<E>) -> bool {
    if !supported(dst.dtype()) || src.dtype() != dst.dtype() || src.shape().num_elements() > dst.shape().num_elements() {
        return false;
    }
    let (Some(d), Some(s)) = (float(dst), float(src)) else {
        return false;
    };
    if !d.is_contiguous() {
        return false;
    }
    fused::copy_into(&d, s);
    true
}

/// Float dtypes the kernels are compiled for.
fn supported(dtype: DType) -> bool {
    matches!(dtype, DType::F32 | DType::F16 | DType::BF16)
}

/// Whether tensors on `device` are cubecl tensors.
pub(crate) fn has_kernels(device: &Device) -> bool {
    float(&Tensor::<1>::empty([1], device)).is_some()
}

pub(crate) fn dense_matmul(x: &Tensor<2>, w: &Tensor<2>) -> Option<Tensor<2>> {
    let part = Part { weight: PartWeight::Dense(w.clone()), perm: None, bias: None, mma: None };
    fused_linear(x, &[part], Input::Plain, None)
}

pub(crate) fn int4_matmul(x: &Tensor<2>, w: &Int4Weight) -> Option<Tensor<2>> {
    let part = Part { weight: PartWeight::Int4(w), perm: None, bias: None, mma: None };
    fused_linear(x, &[part], Input::Plain, None)
}

/// Whether the runtime of `probe` runs bf16 m16n8k16 mma (CUDA sm_80+; wgpu's shaders have no
/// such instruction).
pub(crate) fn has_tensor_cores<const D: usize>(probe: &Tensor<D>) -> bool {
    use cubecl::ir::{features::MmaConfig, ElemType, FloatKind};
    let Some(t) = float(probe) else { return false };
    let bf16 = ElemType::Float(FloatKind::BF16).into();
    let config = MmaConfig { a_type: bf16, b_type: bf16, cd_type: ElemType::Float(FloatKind::F32).into(), m: 16, n: 8, k: 16 };
    t.client.features().matmul.mma.contains(&config)
}

/// The fragment-order copy of a dense weight, on cubecl runtimes.
pub(crate) fn mma_pack_dense(w: &Tensor<2>) -> Option<Tensor<2>> {
    let c = float(w)?;
    supported(c.dtype).then(|| back(mma::pack_dense(c)))
}

/// A contiguous copy of `t` where its rows are pitched (the mma kernels index flat buffers).
pub(crate) fn contiguous(t: Tensor<2>) -> Tensor<2> {
    match float(&t) {
        Some(c) => back(burn_cubecl::kernel::into_contiguous(c)),
        None => t,
    }
}

/// The fragment-order words of an int4 weight, on cubecl runtimes.
pub(crate) fn mma_pack_int4(q: &Int4Weight) -> Option<Tensor<2, Int>> {
    let words = int(&q.qweight.val())?;
    Some(back_int(mma::pack_int4(words, q.k, q.n)))
}

/// The tensor-core product of parts packed at load (`Part::mma`), or `None` when a part is not packed
/// or the parts do not fit one launch. `swiglu`: the two parts are gate and up, the output
/// silu(gate) * up.
pub(crate) fn mma_linear(x: &Tensor<2>, parts: &[Part], swiglu: bool, residual: Option<&Tensor<2>>, norm: Option<&PreNorm>) -> Option<Tensor<2>> {
    mma_run(x, parts, swiglu, residual, norm, None).map(back)
}

/// q|k|v with RoPE and the cache write in the product's epilogue: q [1, heads, m, hd].
pub(crate) fn mma_qkv_rope(x: &Tensor<2>, parts: &[Part], norm: Option<&PreNorm>, rope: &QkvRope, caches: (&Tensor<4>, &Tensor<4>)) -> Option<Tensor<4>> {
    mma_run(x, parts, false, None, norm, Some((rope, caches))).map(back)
}

/// The tensor-core product where it takes these operands, else `None` (the caller falls back).
fn mma_run(
    x: &Tensor<2>,
    parts: &[Part],
    swiglu: bool,
    residual: Option<&Tensor<2>>,
    norm: Option<&PreNorm>,
    rope: Option<(&QkvRope, (&Tensor<4>, &Tensor<4>))>,
) -> Option<CubeTensor> {
    let mode = crate::mma::tensor_cores();
    let dtype = x.dtype();
    if mode == TensorCores::Off || !supported(dtype) || parts.is_empty() || parts.len() > 3 || (swiglu && parts.len() != 2) {
        return None;
    }
    if norm.is_some_and(|n| n.weight.dtype() != dtype || n.weight.dims()[0] != x.dims()[1]) {
        return None;
    }
    let first = parts[0].mma?;
    let (k, group) = (first.k, first.group);
    let same = parts.iter().all(|p| p.perm.is_none() && p.mma.is_some_and(|w| w.k == k && w.group == group));
    let biased = parts.iter().filter(|p| p.bias.is_some()).count();
    if !same || (biased != 0 && biased != parts.len()) || x.dims()[1] != k || residual.is_some_and(|r| r.dtype() != dtype) {
        return None;
    }
    if parts.iter().any(|p| p.bias.as_ref().is_some_and(|b| b.dtype() != dtype)) {
        return None;
    }
    // Channels in RoPE pair order: q and k (parts 0 and 1) alike, v natural.
    let half_of = |i: usize| parts[i].mma.map_or(0, |w| w.rope_half);
    let half = if (0..parts.len()).all(|i| half_of(i) == 0) {
        0
    } else if parts.len() == 3 && !swiglu && half_of(0) == half_of(1) && half_of(2) == 0 {
        half_of(0)
    } else {
        return None;
    };
    let rope = match rope {
        Some((r, caches)) => Some(mma_rope(x, parts, half, r, caches)?),
        None => None,
    };
    let mut cube_parts = Vec::with_capacity(parts.len());
    for p in parts {
        let w = p.mma.expect("checked");
        let (packed, aux) = match (&w.words, &w.values) {
            // Through `Param`'s deref, not `val()`: a tensor clone less per weight and launch.
            (Some(words), _) => (int::<2>(words)?, Some(float::<2>(w.aux.as_ref()?)?)),
            (None, Some(values)) => (float::<2>(values)?, None),
            _ => return None,
        };
        if aux.as_ref().is_some_and(|a| a.dtype != dtype) || (w.values.is_some() && packed.dtype != dtype) {
            return None;
        }
        let bias = match &p.bias {
            Some(b) => Some(float::<1>(b)?),
            None => None,
        };
        cube_parts.push(mma::MmaPart { n: w.n, packed, aux, bias });
    }
    let mut x = float::<2>(x)?;
    // 16-byte x loads need an aligned start (a row slice of a contiguous buffer may not be).
    if !x.is_contiguous() || x.handle.offset_start.unwrap_or(0) % 16 != 0 {
        x = burn_cubecl::kernel::into_contiguous_aligned(x);
        if x.handle.offset_start.unwrap_or(0) % 16 != 0 {
            return None;
        }
    }
    let spec = mma::MmaProduct { k, group: (group > 0).then_some(group), swiglu, emulate: mode == TensorCores::Emulate, half };
    let norm = match norm {
        Some(n) => Some(mma::MmaNorm { weight: float::<1>(&n.weight)?, eps: n.eps as f32 }),
        None => None,
    };
    // The norm's weight is read 8 values at a time, like x.
    if norm.as_ref().is_some_and(|n| !n.weight.is_contiguous() || n.weight.handle.offset_start.unwrap_or(0) % 16 != 0) {
        return None;
    }
    let residual = match residual {
        Some(r) => Some(float::<2>(r)?),
        None => None,
    };
    Some(mma::product(x, spec, cube_parts, residual, norm, rope))
}

/// The fused RoPE's operands where they fit the q|k|v parts (heads of 2 `half` channels, q and k in
/// pair order, one sequence, tables and caches in x's dtype), else `None`.
fn mma_rope(x: &Tensor<2>, parts: &[Part], half: usize, r: &QkvRope, (k_cache, v_cache): (&Tensor<4>, &Tensor<4>)) -> Option<mma::MmaRope> {
    let QkvLayout { heads, kv_heads, head_dim } = r.layout;
    let m = x.dims()[0];
    let widths = [heads * head_dim, kv_heads * head_dim, kv_heads * head_dim];
    if half == 0 || 2 * half != head_dim || parts.len() != 3 || parts.iter().zip(widths).any(|(p, w)| p.n() != w) {
        return None;
    }
    let dtype = x.dtype();
    let tables = [r.cos.dtype(), r.sin.dtype(), k_cache.dtype(), v_cache.dtype()];
    let [cb, ch, _, cd] = k_cache.dims();
    if tables.iter().any(|d| *d != dtype) || cb != 1 || ch != kv_heads || cd != head_dim || v_cache.dims() != k_cache.dims() {
        return None;
    }
    if r.cos.dims()[1] != half || r.sin.dims() != r.cos.dims() || r.positions.dims()[0] != m || r.start.rows + m > k_cache.dims()[2] {
        return None;
    }
    let positions = int::<1>(&r.positions).filter(|p| p.dtype == DType::I32)?;
    let start = int::<1>(&r.start.device).filter(|s| s.dtype == DType::I32)?;
    Some(mma::MmaRope {
        positions,
        cos: float::<2>(r.cos)?,
        sin: float::<2>(r.sin)?,
        k_cache: float::<4>(k_cache)?,
        v_cache: float::<4>(v_cache)?,
        heads,
        start,
    })
}

pub(crate) fn fused_linear(x: &Tensor<2>, parts: &[Part], input: Input, residual: Option<&Tensor<2>>) -> Option<Tensor<2>> {
    let dtype = x.dtype();
    if !supported(dtype) || parts.len() > 3 || parts.iter().any(|p| p.perm.is_some()) {
        return None;
    }
    if !(parts.iter().all(|p| p.bias.is_some()) || parts.iter().all(|p| p.bias.is_none())) {
        return None;
    }
    if parts.iter().any(|p| p.bias.as_ref().is_some_and(|b| b.dtype() != dtype)) || residual.is_some_and(|r| r.dtype() != dtype) {
        return None;
    }
    let x_cube = float::<2>(x)?;
    let int4_kind = |w: &Int4Weight| (w.group, w.is_symmetric());
    let kind = match &parts[0].weight {
        PartWeight::Dense(_) => None,
        PartWeight::Int4(w) => Some(int4_kind(w)),
    };
    let mut cube_parts = Vec::with_capacity(parts.len());
    for p in parts {
        let weight = match (&p.weight, kind) {
            (PartWeight::Dense(w), None) if w.dtype() == dtype => matmul::PartWeight::Dense(float(w)?),
            (PartWeight::Int4(w), Some(k)) if int4_kind(w) == k && w.scales.val().dtype() == dtype => matmul::PartWeight::Int4 {
                qweight: int::<2>(&w.qweight.val())?,
                scales: float(&w.scales.val())?,
                offsets: match &w.offsets {
                    Some(o) => Some(float::<2>(&o.val())?),
                    None => None,
                },
                group: w.group,
            },
            _ => return None,
        };
        let bias = match &p.bias {
            Some(b) => Some(float::<1>(b)?),
            None => None,
        };
        cube_parts.push(matmul::Part { n: p.n(), weight, bias });
    }
    let residual = match residual {
        Some(r) => Some(float::<2>(r)?),
        None => None,
    };
    Some(back(matmul::product(x_cube, parts[0].k(), input == Input::SwiGlu, cube_parts, residual)))
}

pub(crate) fn rms_norm(x: &Tensor<2>, w: &Tensor<1>, eps: f64) -> Option<Tensor<2>> {
    if !supported(x.dtype()) || w.dtype() != x.dtype() {
        return None;
    }
    Some(back(fused::rms_norm(float(x)?, float(w)?, eps)))
}

#[allow(clippy::too_many_arguments)]
pub(crate) fn rope_qkv(
    qkv: &Tensor<3>,
    positions: &Tensor<1, Int>,
    cos: &Tensor<2>,
    sin: &Tensor<2>,
    layout: QkvLayout,
    k_cache: &Tensor<4>,
    v_cache: &Tensor<4>,
    start: &CacheStart,
) -> Option<Tensor<4>> {
    let [b, n, _] = qkv.dims();
    let dtype = qkv.dtype();
    let same = [cos.dtype(), sin.dtype(), k_cache.dtype(), v_cache.dtype()].iter().all(|d| *d == dtype);
    if b != 1 || !supported(dtype) || !same || layout.head_dim % 2 != 0 || layout.head_dim / 2 > 1024 {
        return None;
    }
    let positions = int::<1>(positions).filter(|p| p.dtype == DType::I32)?;
    let start = int::<1>(&start.device).filter(|s| s.dtype == DType::I32)?;
    let QkvLayout { heads, kv_heads, head_dim } = layout;
    let width = (heads + 2 * kv_heads) * head_dim;
    let q = fused::rope_qkv(
        float(&qkv.clone().reshape([n, width]))?,
        positions,
        float(cos)?,
        float(sin)?,
        float(k_cache)?,
        float(v_cache)?,
        (heads, kv_heads, head_dim),
        start,
    );
    Some(back(q))
}

/// In-place KV-cache compaction of one layer (see [`crate::fused::keep_rows`]); false where the
/// kernel does not apply (another backend, batch > 1, mixed dtypes, head_dim > 1024).
pub(crate) fn keep_rows(k: &Tensor<4>, v: &Tensor<4>, rows: &Tensor<1, Int>, start: usize) -> bool {
    let [b, _, _, hd] = k.dims();
    if b != 1 || v.dims() != k.dims() || !supported(k.dtype()) || v.dtype() != k.dtype() || hd > 1024 {
        return false;
    }
    let (Some(kc), Some(vc), Some(rows)) = (float(k), float(v), int::<1>(rows).filter(|r| r.dtype == DType::I32)) else {
        return false;
    };
    fused::keep_rows(kc, vc, rows, start);
    true
}

/// Keys are rows [0, start.rows + n) of k and v. Returns [1, n, heads, hd].
pub(crate) fn attention(q: &Tensor<4>, k: &Tensor<4>, v: &Tensor<4>, start: &CacheStart, mask: Option<&AttnMask>) -> Option<Tensor<4>> {
    let [b, _, n, hd] = q.dims();
    if b != 1 || !supported(q.dtype()) || k.dtype() != q.dtype() || v.dtype() != q.dtype() || hd > attention::MAX_HEAD_DIM {
        return None;
    }
    let visible = match mask {
        Some(m) => Some((int::<2>(&m.visible)?, m.cols)),
        None if n == 1 => None,
        None => return None,
    };
    let t = start.rows + n;
    let start = int::<1>(&start.device).filter(|s| s.dtype == DType::I32)?;
    Some(back(attention::tree_attention(float(q)?, float(k)?, float(v)?, t, start, visible)))
}

/// [n] int: each row's argmax (lower index on ties).
pub(crate) fn argmax(x: &Tensor<2>) -> Option<Tensor<1, Int>> {
    if !supported(x.dtype()) {
        return None;
    }
    // The kernel writes i32: the device's ints must be i32 too.
    if x.device().settings().int_dtype != burn::tensor::IntDType::I32 {
        return None;
    }
    Some(back_int(topk::argmax(float(x)?)))
}

/// [n, 2k] f32: each row's top-k log-probs, then their ids.
pub(crate) fn log_softmax_top_k(logits: &Tensor<2>, k: usize) -> Option<Tensor<2>> {
    let [_, v] = logits.dims();
    if !supported(logits.dtype()) || v.div_ceil(topk::CHUNK) * k > topk::MERGE_CAP {
        return None;
    }
    Some(back(topk::log_softmax_top_k(float(logits)?, k)))
}

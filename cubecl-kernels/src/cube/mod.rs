//! Run-time dispatch to the cubecl kernels. A Burn tensor primitive is a `CubeTensor<R>` exactly when
//! the backend is `CubeBackend<R, ..>` (CUDA or wgpu without fusion); the kernels take those, and
//! every other backend (Flex, ndarray, autodiff wrappers) falls back to the plain-tensor reference.

mod attention;
mod fused;
mod matmul;
mod mma;
mod probe;
mod reduce;
mod topk;

use std::any::Any;

use burn::tensor::{backend::Backend, DType, Int, Tensor, TensorPrimitive};
use burn_cubecl::{tensor::CubeTensor, CubeRuntime};

use crate::attention::AttnMask;
use crate::fused::{Input, Part, PartWeight, PreNorm, QkvLayout, QkvRope};
use crate::int4::Int4Weight;
use crate::mma::TensorCores;

/// `value` as a `U` when it is one. Through an `Option` on the stack rather than a `Box<dyn Any>`: this
/// runs several times per kernel launch, and the box was a heap allocation each time.
fn downcast<T: 'static, U: 'static>(value: T) -> Option<U> {
    let mut slot = Some(value);
    (&mut slot as &mut dyn Any).downcast_mut::<Option<U>>().and_then(Option::take)
}

fn is_cube<B: Backend, R: CubeRuntime>() -> bool {
    std::any::TypeId::of::<B::FloatTensorPrimitive>() == std::any::TypeId::of::<CubeTensor<R>>()
}

fn float<B: Backend, R: CubeRuntime, const D: usize>(t: &Tensor<B, D>) -> CubeTensor<R> {
    downcast(t.clone().into_primitive().tensor()).expect("checked by is_cube")
}

fn int<B: Backend, R: CubeRuntime, const D: usize>(t: &Tensor<B, D, Int>) -> Option<CubeTensor<R>> {
    downcast::<_, CubeTensor<R>>(t.clone().into_primitive()).filter(|c| matches!(c.dtype, DType::I32 | DType::U32))
}

fn back<B: Backend, R: CubeRuntime, const D: usize>(t: CubeTensor<R>) -> Tensor<B, D> {
    Tensor::from_primitive(TensorPrimitive::Float(downcast(t).expect("checked by is_cube")))
}

/// A kernel's array argument over `t`'s buffer: only the buffer handle is cloned. (`CubeTensor::
/// into_array_arg` consumes the tensor, so each argument cost a clone of the whole tensor, its
/// client, shape and strides, then two conversions: ~10% of a decode step's host time with ~14
/// arguments per product, `docs/perf/host.md`.) The length is the tensor's element count, as there.
pub(crate) fn arg<R: CubeRuntime>(t: &CubeTensor<R>) -> cubecl::prelude::ArrayArg<R> {
    // SAFETY: the length is that of the tensor the handle belongs to.
    unsafe { cubecl::prelude::ArrayArg::from_raw_parts(t.handle.clone(), t.meta.shape().num_elements()) }
}

/// Float dtypes the kernels are compiled for.
fn supported(dtype: DType) -> bool {
    matches!(dtype, DType::F32 | DType::F16 | DType::BF16)
}

macro_rules! for_each_runtime {
    ($f:ident, $B:ty, $($arg:expr),*) => {{
        #[cfg(feature = "wgpu")]
        if is_cube::<$B, cubecl::wgpu::WgpuRuntime>() {
            return $f::<$B, cubecl::wgpu::WgpuRuntime>($($arg),*);
        }
        #[cfg(feature = "cuda")]
        if is_cube::<$B, cubecl::cuda::CudaRuntime>() {
            return $f::<$B, cubecl::cuda::CudaRuntime>($($arg),*);
        }
        None
    }};
}

pub(crate) fn has_kernels<B: Backend>() -> bool {
    #[cfg(feature = "wgpu")]
    if is_cube::<B, cubecl::wgpu::WgpuRuntime>() {
        return true;
    }
    #[cfg(feature = "cuda")]
    if is_cube::<B, cubecl::cuda::CudaRuntime>() {
        return true;
    }
    false
}

/// cubecl's persistent allocation mode on a device while it lives ([`crate::memory::persistent`]);
/// dropping it (also on unwinding) restores the automatic mode and releases the freed buffers.
pub(crate) struct PersistentMode<B: Backend> {
    device: Option<B::Device>,
}

impl<B: Backend> PersistentMode<B> {
    pub(crate) fn enter(device: &B::Device) -> Self {
        let on = set_allocation_mode::<B>(device, cubecl::MemoryAllocationMode::Persistent);
        Self { device: on.then(|| device.clone()) }
    }
}

impl<B: Backend> Drop for PersistentMode<B> {
    fn drop(&mut self) {
        if let Some(device) = &self.device {
            set_allocation_mode::<B>(device, cubecl::MemoryAllocationMode::Auto);
        }
    }
}

/// Set the allocation mode of `device`'s client; false where `B` is no cubecl backend. Back to
/// `Auto`, the client also releases what it can (the load's freed staging buffers).
fn set_allocation_mode<B: Backend>(device: &B::Device, mode: cubecl::MemoryAllocationMode) -> bool {
    fn run<B: Backend, R: CubeRuntime>(device: &B::Device, mode: cubecl::MemoryAllocationMode) -> Option<()> {
        let client = R::client((device as &dyn Any).downcast_ref::<R::Device>()?);
        // SAFETY: cubecl marks the switch unsafe because allocations made meanwhile on the stream
        // are never returned to the sliced pools; that is the point here, and `Auto` follows.
        unsafe { client.allocation_mode(mode) };
        if matches!(mode, cubecl::MemoryAllocationMode::Auto) {
            client.memory_cleanup();
        }
        Some(())
    }
    fn go<B: Backend>(device: &B::Device, mode: cubecl::MemoryAllocationMode) -> Option<()> {
        for_each_runtime!(run, B, device, mode)
    }
    go::<B>(device, mode).is_some()
}

pub(crate) fn dense_matmul<B: Backend>(x: &Tensor<B, 2>, w: &Tensor<B, 2>) -> Option<Tensor<B, 2>> {
    let part = Part { weight: PartWeight::Dense(w.clone()), perm: None, bias: None, mma: None };
    fused_linear(x, &[part], Input::Plain, None)
}

pub(crate) fn int4_matmul<B: Backend>(x: &Tensor<B, 2>, w: &Int4Weight<B>) -> Option<Tensor<B, 2>> {
    let part = Part { weight: PartWeight::Int4(w), perm: None, bias: None, mma: None };
    fused_linear(x, &[part], Input::Plain, None)
}

/// Whether the runtime of `probe` runs bf16 m16n8k16 mma (CUDA sm_80+; wgpu's shaders have no
/// such instruction).
pub(crate) fn has_tensor_cores<B: Backend, const D: usize>(probe: &Tensor<B, D>) -> bool {
    #[cfg(feature = "cuda")]
    if is_cube::<B, cubecl::cuda::CudaRuntime>() {
        use cubecl::ir::{features::MmaConfig, ElemType, FloatKind};
        let t = float::<B, cubecl::cuda::CudaRuntime, D>(probe);
        let bf16 = ElemType::Float(FloatKind::BF16).into();
        let config = MmaConfig { a_type: bf16, b_type: bf16, cd_type: ElemType::Float(FloatKind::F32).into(), m: 16, n: 8, k: 16 };
        return t.client.features().matmul.mma.contains(&config);
    }
    let _ = probe;
    false
}

/// The fragment-order copy of a dense weight, on cubecl runtimes.
pub(crate) fn mma_pack_dense<B: Backend>(w: &Tensor<B, 2>) -> Option<Tensor<B, 2>> {
    fn run<B: Backend, R: CubeRuntime>(w: &Tensor<B, 2>) -> Option<Tensor<B, 2>> {
        supported(w.dtype()).then(|| back::<B, R, 2>(mma::pack_dense::<R>(float(w))))
    }
    for_each_runtime!(run, B, w)
}

/// A contiguous copy of `t` where its rows are pitched (the mma kernels index flat buffers).
pub(crate) fn contiguous<B: Backend>(t: Tensor<B, 2>) -> Tensor<B, 2> {
    fn run<B: Backend, R: CubeRuntime>(t: &Tensor<B, 2>) -> Option<Tensor<B, 2>> {
        Some(back::<B, R, 2>(burn_cubecl::kernel::into_contiguous(float(t))))
    }
    fn go<B: Backend>(t: &Tensor<B, 2>) -> Option<Tensor<B, 2>> {
        for_each_runtime!(run, B, t)
    }
    go(&t).unwrap_or(t)
}

/// The fragment-order words of an int4 weight, on cubecl runtimes.
pub(crate) fn mma_pack_int4<B: Backend>(q: &Int4Weight<B>) -> Option<Tensor<B, 2, Int>> {
    fn run<B: Backend, R: CubeRuntime>(q: &Int4Weight<B>) -> Option<Tensor<B, 2, Int>> {
        let words = int::<B, R, 2>(&q.qweight.val())?;
        let packed = mma::pack_int4::<R>(words, q.k, q.n);
        Some(Tensor::from_primitive(downcast(packed).expect("checked by is_cube")))
    }
    for_each_runtime!(run, B, q)
}

/// The tensor-core product of parts packed at load (`Part::mma`), or `None` when a part is not packed
/// or the parts do not fit one launch. `swiglu`: the two parts are gate and up, the output
/// silu(gate) * up.
pub(crate) fn mma_linear<B: Backend>(x: &Tensor<B, 2>, parts: &[Part<B>], swiglu: bool, residual: Option<&Tensor<B, 2>>, norm: Option<&PreNorm<B>>) -> Option<Tensor<B, 2>> {
    fn run<B: Backend, R: CubeRuntime>(x: &Tensor<B, 2>, parts: &[Part<B>], swiglu: bool, residual: Option<&Tensor<B, 2>>, norm: Option<&PreNorm<B>>) -> Option<Tensor<B, 2>> {
        mma_run::<B, R>(x, parts, swiglu, residual, norm, None).map(back::<B, R, 2>)
    }
    for_each_runtime!(run, B, x, parts, swiglu, residual, norm)
}

/// q|k|v with RoPE and the cache write in the product's epilogue: q [1, heads, m, hd].
pub(crate) fn mma_qkv_rope<B: Backend>(x: &Tensor<B, 2>, parts: &[Part<B>], norm: Option<&PreNorm<B>>, rope: &QkvRope<B>, caches: (&Tensor<B, 4>, &Tensor<B, 4>)) -> Option<Tensor<B, 4>> {
    fn run<B: Backend, R: CubeRuntime>(x: &Tensor<B, 2>, parts: &[Part<B>], norm: Option<&PreNorm<B>>, rope: &QkvRope<B>, caches: (&Tensor<B, 4>, &Tensor<B, 4>)) -> Option<Tensor<B, 4>> {
        mma_run::<B, R>(x, parts, false, None, norm, Some((rope, caches))).map(back::<B, R, 4>)
    }
    for_each_runtime!(run, B, x, parts, norm, rope, caches)
}

/// The tensor-core product where it takes these operands, else `None` (the caller falls back).
fn mma_run<B: Backend, R: CubeRuntime>(
    x: &Tensor<B, 2>,
    parts: &[Part<B>],
    swiglu: bool,
    residual: Option<&Tensor<B, 2>>,
    norm: Option<&PreNorm<B>>,
    rope: Option<(&QkvRope<B>, (&Tensor<B, 4>, &Tensor<B, 4>))>,
) -> Option<CubeTensor<R>> {
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
    // Channels in RoPE pair order: q and k (parts 0 and 1) alike, v natural. (No Vec: this runs
    // on every product launch.)
    let half_of = |i: usize| parts[i].mma.map_or(0, |w| w.rope_half);
    let half = if (0..parts.len()).all(|i| half_of(i) == 0) {
        0
    } else if parts.len() == 3 && !swiglu && half_of(0) == half_of(1) && half_of(2) == 0 {
        half_of(0)
    } else {
        return None;
    };
    let rope = match rope {
        Some((r, caches)) => Some(mma_rope::<B, R>(x, parts, half, r, caches)?),
        None => None,
    };
    let mut cube_parts = Vec::with_capacity(parts.len());
    for p in parts {
        let w = p.mma.expect("checked");
        let (packed, aux) = match (&w.words, &w.values) {
            // Through `Param`'s deref, not `val()`: a tensor clone less per weight and launch.
            (Some(words), _) => (int::<B, R, 2>(words)?, Some(float::<B, R, 2>(w.aux.as_ref()?))),
            (None, Some(values)) => (float::<B, R, 2>(values), None),
            _ => return None,
        };
        if aux.as_ref().is_some_and(|a| a.dtype != dtype) || (w.values.is_some() && packed.dtype != dtype) {
            return None;
        }
        cube_parts.push(mma::MmaPart { n: w.n, packed, aux, bias: p.bias.as_ref().map(|b| float::<B, R, 1>(b)) });
    }
    let mut x = float::<B, R, 2>(x);
    // 16-byte x loads need an aligned start (a row slice of a contiguous buffer may not be).
    if !x.is_contiguous() || x.handle.offset_start.unwrap_or(0) % 16 != 0 {
        let (client, device) = (x.client.clone(), x.device.clone());
        let copy = cubecl::std::tensor::into_contiguous(&client, x.binding(), dtype.into());
        x = CubeTensor::new(client, copy.handle, *copy.metadata, device, dtype);
    }
    let spec = mma::MmaProduct { k, group: (group > 0).then_some(group), swiglu, emulate: mode == TensorCores::Emulate, half };
    let norm = norm.map(|n| mma::MmaNorm { weight: float::<B, R, 1>(&n.weight), eps: n.eps as f32 });
    // The norm's weight is read 8 values at a time, like x.
    if norm.as_ref().is_some_and(|n| !n.weight.is_contiguous() || n.weight.handle.offset_start.unwrap_or(0) % 16 != 0) {
        return None;
    }
    Some(mma::product::<R>(x, spec, cube_parts, residual.map(|r| float::<B, R, 2>(r)), norm, rope))
}

/// The fused RoPE's operands where they fit the q|k|v parts (heads of 2 `half` channels, q and k in
/// pair order, one sequence, tables and caches in x's dtype), else `None`.
fn mma_rope<B: Backend, R: CubeRuntime>(x: &Tensor<B, 2>, parts: &[Part<B>], half: usize, r: &QkvRope<B>, (k_cache, v_cache): (&Tensor<B, 4>, &Tensor<B, 4>)) -> Option<mma::MmaRope<R>> {
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
    if r.cos.dims()[1] != half || r.sin.dims() != r.cos.dims() || r.positions.dims()[0] != m || r.start + m > k_cache.dims()[2] {
        return None;
    }
    let positions = int::<B, R, 1>(&r.positions).filter(|p| p.dtype == DType::I32)?;
    Some(mma::MmaRope {
        positions,
        cos: float::<B, R, 2>(r.cos),
        sin: float::<B, R, 2>(r.sin),
        k_cache: float::<B, R, 4>(k_cache),
        v_cache: float::<B, R, 4>(v_cache),
        heads,
        start: r.start,
    })
}

pub(crate) fn fused_linear<B: Backend>(x: &Tensor<B, 2>, parts: &[Part<B>], input: Input, residual: Option<&Tensor<B, 2>>) -> Option<Tensor<B, 2>> {
    fn run<B: Backend, R: CubeRuntime>(x: &Tensor<B, 2>, parts: &[Part<B>], input: Input, residual: Option<&Tensor<B, 2>>) -> Option<Tensor<B, 2>> {
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
        let int4_kind = |w: &Int4Weight<B>| (w.group, w.is_symmetric());
        let kind = match &parts[0].weight {
            PartWeight::Dense(_) => None,
            PartWeight::Int4(w) => Some(int4_kind(w)),
        };
        let mut cube_parts = Vec::with_capacity(parts.len());
        for p in parts {
            let weight = match (&p.weight, kind) {
                (PartWeight::Dense(w), None) if w.dtype() == dtype => matmul::PartWeight::Dense(float(w)),
                (PartWeight::Int4(w), Some(k)) if int4_kind(w) == k && w.scales.val().dtype() == dtype => matmul::PartWeight::Int4 {
                    qweight: int::<B, R, 2>(&w.qweight.val())?,
                    scales: float(&w.scales.val()),
                    offsets: w.offsets.as_ref().map(|o| float::<B, R, 2>(&o.val())),
                    group: w.group,
                },
                _ => return None,
            };
            cube_parts.push(matmul::Part { n: p.n(), weight, bias: p.bias.as_ref().map(|b| float::<B, R, 1>(b)) });
        }
        let out = matmul::product::<R>(float(x), parts[0].k(), input == Input::SwiGlu, cube_parts, residual.map(|r| float::<B, R, 2>(r)));
        Some(back::<B, R, 2>(out))
    }
    for_each_runtime!(run, B, x, parts, input, residual)
}

pub(crate) fn rms_norm<B: Backend>(x: &Tensor<B, 2>, w: &Tensor<B, 1>, eps: f64) -> Option<Tensor<B, 2>> {
    fn run<B: Backend, R: CubeRuntime>(x: &Tensor<B, 2>, w: &Tensor<B, 1>, eps: f64) -> Option<Tensor<B, 2>> {
        if !supported(x.dtype()) || w.dtype() != x.dtype() {
            return None;
        }
        Some(back::<B, R, 2>(fused::rms_norm::<R>(float(x), float(w), eps)))
    }
    for_each_runtime!(run, B, x, w, eps)
}

#[allow(clippy::too_many_arguments)]
pub(crate) fn rope_qkv<B: Backend>(
    qkv: &Tensor<B, 3>,
    positions: &Tensor<B, 1, Int>,
    cos: &Tensor<B, 2>,
    sin: &Tensor<B, 2>,
    layout: QkvLayout,
    k_cache: &Tensor<B, 4>,
    v_cache: &Tensor<B, 4>,
    start: usize,
) -> Option<Tensor<B, 4>> {
    #[allow(clippy::too_many_arguments)]
    fn run<B: Backend, R: CubeRuntime>(
        qkv: &Tensor<B, 3>,
        positions: &Tensor<B, 1, Int>,
        cos: &Tensor<B, 2>,
        sin: &Tensor<B, 2>,
        layout: QkvLayout,
        k_cache: &Tensor<B, 4>,
        v_cache: &Tensor<B, 4>,
        start: usize,
    ) -> Option<Tensor<B, 4>> {
        let [b, n, _] = qkv.dims();
        let dtype = qkv.dtype();
        let same = [cos.dtype(), sin.dtype(), k_cache.dtype(), v_cache.dtype()].iter().all(|d| *d == dtype);
        if b != 1 || !supported(dtype) || !same || layout.head_dim % 2 != 0 || layout.head_dim / 2 > 1024 {
            return None;
        }
        let positions = int::<B, R, 1>(positions).filter(|p| p.dtype == DType::I32)?;
        let QkvLayout { heads, kv_heads, head_dim } = layout;
        let width = (heads + 2 * kv_heads) * head_dim;
        let q = fused::rope_qkv::<R>(
            float(&qkv.clone().reshape([n, width])),
            positions,
            float(cos),
            float(sin),
            float(k_cache),
            float(v_cache),
            (heads, kv_heads, head_dim),
            start,
        );
        Some(back::<B, R, 4>(q))
    }
    for_each_runtime!(run, B, qkv, positions, cos, sin, layout, k_cache, v_cache, start)
}

/// In-place KV-cache compaction of one layer (see [`crate::fused::keep_rows`]); false where the
/// kernel does not apply (another backend, batch > 1, mixed dtypes, head_dim > 1024).
pub(crate) fn keep_rows<B: Backend>(k: &Tensor<B, 4>, v: &Tensor<B, 4>, rows: &Tensor<B, 1, Int>, start: usize) -> bool {
    fn run<B: Backend, R: CubeRuntime>(k: &Tensor<B, 4>, v: &Tensor<B, 4>, rows: &Tensor<B, 1, Int>, start: usize) -> Option<bool> {
        let [b, _, _, hd] = k.dims();
        if b != 1 || v.dims() != k.dims() || !supported(k.dtype()) || v.dtype() != k.dtype() || hd > 1024 {
            return None;
        }
        let rows = int::<B, R, 1>(rows).filter(|r| r.dtype == DType::I32)?;
        fused::keep_rows::<R>(float(k), float(v), rows, start);
        Some(true)
    }
    fn go<B: Backend>(k: &Tensor<B, 4>, v: &Tensor<B, 4>, rows: &Tensor<B, 1, Int>, start: usize) -> Option<bool> {
        for_each_runtime!(run, B, k, v, rows, start)
    }
    go(k, v, rows, start).unwrap_or(false)
}

/// Keys are rows [0, t) of k and v. Returns [1, n, heads, hd].
pub(crate) fn attention<B: Backend>(
    q: &Tensor<B, 4>,
    k: &Tensor<B, 4>,
    v: &Tensor<B, 4>,
    t: usize,
    mask: Option<&AttnMask<B>>,
) -> Option<Tensor<B, 4>> {
    fn run<B: Backend, R: CubeRuntime>(
        q: &Tensor<B, 4>,
        k: &Tensor<B, 4>,
        v: &Tensor<B, 4>,
        t: usize,
        mask: Option<&AttnMask<B>>,
    ) -> Option<Tensor<B, 4>> {
        let [b, _, n, hd] = q.dims();
        if b != 1 || !supported(q.dtype()) || k.dtype() != q.dtype() || v.dtype() != q.dtype() || hd > attention::MAX_HEAD_DIM {
            return None;
        }
        let visible = match mask {
            Some(m) => Some((int::<B, R, 2>(&m.visible)?, m.cols)),
            None if n == 1 => None,
            None => return None,
        };
        Some(back::<B, R, 4>(attention::tree_attention::<R>(float(q), float(k), float(v), t, visible)))
    }
    for_each_runtime!(run, B, q, k, v, t, mask)
}

/// [n] int: each row's argmax (lower index on ties).
pub(crate) fn argmax<B: Backend>(x: &Tensor<B, 2>) -> Option<Tensor<B, 1, Int>> {
    fn run<B: Backend, R: CubeRuntime>(x: &Tensor<B, 2>) -> Option<Tensor<B, 1, Int>> {
        // The kernel writes i32: the backend's ints must be i32 too.
        if !supported(x.dtype()) || <B::IntElem as burn::tensor::Element>::dtype() != DType::I32 {
            return None;
        }
        Some(Tensor::from_primitive(downcast(topk::argmax::<R>(float(x)))?))
    }
    for_each_runtime!(run, B, x)
}

/// [n, 2k] f32: each row's top-k log-probs, then their ids.
pub(crate) fn log_softmax_top_k<B: Backend>(logits: &Tensor<B, 2>, k: usize) -> Option<Tensor<B, 2>> {
    fn run<B: Backend, R: CubeRuntime>(logits: &Tensor<B, 2>, k: usize) -> Option<Tensor<B, 2>> {
        let [_, v] = logits.dims();
        if !supported(logits.dtype()) || v.div_ceil(topk::CHUNK) * k > topk::MERGE_CAP {
            return None;
        }
        Some(back::<B, R, 2>(topk::log_softmax_top_k::<R>(float(logits), k)))
    }
    for_each_runtime!(run, B, logits, k)
}

/// One launch of a launch-cost probe (`crate::probe`); false off cubecl runtimes or off f32.
pub(crate) fn probe<B: Backend>(probe: crate::probe::Probe, a: &Tensor<B, 1>, out: &Tensor<B, 1>) -> bool {
    fn run<B: Backend, R: CubeRuntime>(probe: crate::probe::Probe, a: &Tensor<B, 1>, out: &Tensor<B, 1>) -> Option<bool> {
        if a.dtype() != DType::F32 || out.dtype() != DType::F32 || a.dims()[0] < 4 || out.dims()[0] < 4 {
            return None;
        }
        self::probe::launch::<R>(probe, &float(a), &float(out));
        Some(true)
    }
    fn go<B: Backend>(probe: crate::probe::Probe, a: &Tensor<B, 1>, out: &Tensor<B, 1>) -> Option<bool> {
        for_each_runtime!(run, B, probe, a, out)
    }
    go(probe, a, out).unwrap_or(false)
}

#[cfg(test)]
mod tests {
    use super::downcast;

    #[test]
    fn downcast_moves_a_value_of_the_asked_type_and_refuses_others() {
        assert_eq!(downcast::<String, String>("w".to_string()), Some("w".to_string()));
        assert_eq!(downcast::<String, Vec<u8>>("w".to_string()), None);
        assert_eq!(downcast::<u32, i32>(7), None);
    }
}

//! The decoder layer's small fused steps: RMSNorm (one cube per row), RoPE on the q and k heads of
//! a fused q|k|v row with k and v written straight into the KV cache (one cube per row and head),
//! and the cache compaction after a tree verification (one launch per layer).

use burn::tensor::Shape;
use burn_cubecl::{kernel::into_contiguous, ops::numeric::empty_device_contiguous_dtype, tensor::CubeTensor};
use cubecl::prelude::*;

use super::arg;
use super::reduce::block_sum;

const NORM_THREADS: usize = 256;

/// y = x / sqrt(mean(x^2) + eps) * w, the statistic in f32. The normed value is rounded to x's dtype
/// before the weight multiplies it, as the reference (and HF) do.
#[cube(launch_unchecked)]
fn rms_norm_kernel<F: Float>(
    x: &[F],
    w: &[F],
    out: &mut [F],
    h: usize,
    eps: f32,
    #[comptime] threads: usize,
    #[define(F)] _dtype: ElemType,
) {
    let row = CUBE_POS_X as usize;
    let tid = UNIT_POS_X as usize;
    let mut red = Shared::<[f32]>::new_slice(threads);
    let mut ss = 0.0f32;
    let mut j = tid;
    while j < h {
        let v = f32::cast_from(x[row * h + j]);
        ss += v * v;
        j += threads;
    }
    red[tid] = ss;
    block_sum(&mut red);
    let rms = (red[0] / f32::cast_from(h) + eps).sqrt();
    let mut j = tid;
    while j < h {
        let normed = F::cast_from(f32::cast_from(x[row * h + j]) / rms);
        out[row * h + j] = F::cast_from(f32::cast_from(normed) * f32::cast_from(w[j]));
        j += threads;
    }
}

/// [`rms_norm_kernel`] reading and writing 8 values per access (h % 8 == 0). The scalar kernel's
/// element-at-a-time loops were a chain of dependent round trips: 10 us per decode-step norm on the
/// H200 at h = 4096 (`docs/perf/pass.md`), 5% of a Llama-3-8B W4A16 step.
#[cube(launch_unchecked)]
fn rms_norm_vec_kernel<F: Float>(
    x: &[Vector<F, Const<8>>],
    w: &[Vector<F, Const<8>>],
    out: &mut [Vector<F, Const<8>>],
    h8: usize,
    eps: f32,
    #[comptime] threads: usize,
    #[define(F)] _dtype: ElemType,
) {
    let row = CUBE_POS_X as usize;
    let tid = UNIT_POS_X as usize;
    let mut red = Shared::<[f32]>::new_slice(threads);
    let mut ss = 0.0f32;
    let mut j = tid;
    while j < h8 {
        let v = x[row * h8 + j];
        #[unroll]
        for e in 0usize..8usize {
            let f = f32::cast_from(v.extract(e));
            ss += f * f;
        }
        j += threads;
    }
    red[tid] = ss;
    block_sum(&mut red);
    let rms = (red[0] / f32::cast_from(h8 * 8) + eps).sqrt();
    let mut j = tid;
    while j < h8 {
        let v = x[row * h8 + j];
        let wv = w[j];
        let mut o = Vector::<F, Const<8>>::new(F::new(0.0));
        #[unroll]
        for e in 0usize..8usize {
            let normed = F::cast_from(f32::cast_from(v.extract(e)) / rms);
            o.insert(e, F::cast_from(f32::cast_from(normed) * f32::cast_from(wv.extract(e))));
        }
        out[row * h8 + j] = o;
        j += threads;
    }
}

/// x [m, h], w [h] -> [m, h].
pub(crate) fn rms_norm(x: CubeTensor, w: CubeTensor, eps: f64) -> CubeTensor {
    let [m, h] = x.meta.shape().dims::<2>();
    let dtype = x.dtype;
    let x = into_contiguous(x);
    let out = empty_device_contiguous_dtype(x.client.clone(), x.device.clone(), Shape::new([m, h]), dtype);
    let w = into_contiguous(w);
    if h % 8 == 0 {
        // SAFETY: one cube per row, vectors bounded by h / 8; x, w and out are contiguous.
        unsafe {
            rms_norm_vec_kernel::launch_unchecked(
                &x.client.clone(),
                CubeCount::Static(m as u32, 1, 1),
                CubeDim::new_1d(NORM_THREADS as u32),
                arg(&x),
                arg(&w),
                arg(&out),
                h / 8,
                eps as f32,
                NORM_THREADS,
                super::elem(dtype),
            )
        };
        return out;
    }
    // SAFETY: one cube per row, columns bounded by h.
    unsafe {
        rms_norm_kernel::launch_unchecked(
            &x.client.clone(),
            CubeCount::Static(m as u32, 1, 1),
            CubeDim::new_1d(NORM_THREADS as u32),
            arg(&x),
            arg(&w),
            arg(&out),
            h,
            eps as f32,
            NORM_THREADS,
            super::elem(dtype),
        )
    };
    out
}

/// Element strides of RoPE's table and cache views (buffers go in as flat arrays: a tensor argument
/// would upload its shape and strides with every launch).
#[derive(CubeLaunch, CubeType, Clone, Copy)]
struct RopeStrides {
    cos_row: usize,
    cos_col: usize,
    sin_row: usize,
    sin_col: usize,
    k_head: usize,
    k_row: usize,
    k_dim: usize,
    v_head: usize,
    v_row: usize,
    v_dim: usize,
}

/// Half-split RoPE of the pair (x1, x2) (dimension d < hd / 2 and d + hd / 2): the first half's
/// value `x1 cos - x2 sin` and the second's `x2 cos + x1 sin`, each as one explicit fused
/// multiply-add, so that this kernel and the q|k|v product's fused epilogue (`mma/output.rs`) round alike.
#[cube]
pub(crate) fn rotate_first(x1: f32, x2: f32, cs: f32, sn: f32) -> f32 {
    fma(x1, cs, 0.0f32 - x2 * sn)
}

/// See [`rotate_first`].
#[cube]
pub(crate) fn rotate_second(x1: f32, x2: f32, cs: f32, sn: f32) -> f32 {
    fma(x2, cs, x1 * sn)
}

/// Row i of qkv [n, (heads + 2 kv_heads) hd] holds q heads, then k heads, then v heads. Cube (i, s):
/// s < heads rotates q head s into q_out [heads, n, hd]; the next kv_heads rotate k heads into cache
/// row start + i; the last kv_heads copy v. Thread d handles the pair (d, d + hd/2) (half-split RoPE).
#[cube(launch_unchecked)]
fn rope_qkv_kernel<F: Float>(
    qkv: &[F],
    positions: &[i32],
    cos: &[F],
    sin: &[F],
    q_out: &mut [F],
    k_cache: &mut [F],
    v_cache: &mut [F],
    strides: RopeStrides,
    n: usize,
    heads: usize,
    kv_heads: usize,
    start_row: &[i32],
    #[comptime] half: usize,
    #[define(F)] _dtype: ElemType,
) {
    let i = CUBE_POS_X as usize;
    let s = CUBE_POS_Y as usize;
    let d = UNIT_POS_X as usize;
    let hd = comptime!(2 * half);
    let base = i * (heads + 2 * kv_heads) * hd + s * hd;
    let start = start_row[0] as usize;
    let x1 = f32::cast_from(qkv[base + d]);
    let x2 = f32::cast_from(qkv[base + d + half]);
    if s < heads + kv_heads {
        let p = positions[i] as usize;
        let c = f32::cast_from(cos[p * strides.cos_row + d * strides.cos_col]);
        let sn = f32::cast_from(sin[p * strides.sin_row + d * strides.sin_col]);
        let y1 = rotate_first(x1, x2, c, sn);
        let y2 = rotate_second(x1, x2, c, sn);
        if s < heads {
            let o = (s * n + i) * hd;
            q_out[o + d] = F::cast_from(y1);
            q_out[o + d + half] = F::cast_from(y2);
        } else {
            let r = (s - heads) * strides.k_head + (start + i) * strides.k_row;
            k_cache[r + d * strides.k_dim] = F::cast_from(y1);
            k_cache[r + (d + half) * strides.k_dim] = F::cast_from(y2);
        }
    } else {
        let r = (s - heads - kv_heads) * strides.v_head + (start + i) * strides.v_row;
        v_cache[r + d * strides.v_dim] = F::cast_from(x1);
        v_cache[r + (d + half) * strides.v_dim] = F::cast_from(x2);
    }
}

/// qkv [n, (heads + 2 kv_heads) hd]; positions [n] (i32); cos, sin [max_positions, hd / 2];
/// caches [1, kv_heads, capacity, hd], written in place at rows [start, start + n) (`start`: [1] i32
/// on the device). Returns q
/// [1, heads, n, hd].
#[allow(clippy::too_many_arguments)]
pub(crate) fn rope_qkv(
    qkv: CubeTensor,
    positions: CubeTensor,
    cos: CubeTensor,
    sin: CubeTensor,
    k_cache: CubeTensor,
    v_cache: CubeTensor,
    (heads, kv_heads, hd): (usize, usize, usize),
    start: CubeTensor,
) -> CubeTensor {
    let n = qkv.meta.shape().dims::<2>()[0];
    let dtype = qkv.dtype;
    let qkv = into_contiguous(qkv);
    let q = empty_device_contiguous_dtype(qkv.client.clone(), qkv.device.clone(), Shape::new([1, heads, n, hd]), dtype);
    let positions = into_contiguous(positions);
    let st = |t: &CubeTensor, d: usize| t.meta.strides()[d];
    let strides = RopeStridesLaunch::new(
        st(&cos, 0),
        st(&cos, 1),
        st(&sin, 0),
        st(&sin, 1),
        st(&k_cache, 1),
        st(&k_cache, 2),
        st(&k_cache, 3),
        st(&v_cache, 1),
        st(&v_cache, 2),
        st(&v_cache, 3),
    );
    // SAFETY: rows < n, head slots < heads + 2 kv_heads, dims < hd; positions < max_positions and
    // start + n <= capacity are checked by the caller.
    unsafe {
        rope_qkv_kernel::launch_unchecked(
            &qkv.client.clone(),
            CubeCount::Static(n as u32, (heads + 2 * kv_heads) as u32, 1),
            CubeDim::new_1d((hd / 2) as u32),
            arg(&qkv),
            arg(&positions),
            arg(&cos),
            arg(&sin),
            arg(&q),
            arg(&k_cache),
            arg(&v_cache),
            strides,
            n,
            heads,
            kv_heads,
            arg(&start),
            hd / 2,
            super::elem(dtype),
        )
    };
    q
}

/// The KV-cache compaction after a tree verification, one layer's k and v in one launch: row
/// `rows[i]` moves to row `start + i` in every head. Cube h, thread d: element d of head h, for the
/// rows in ascending order. That order makes the move safe in place: `rows[i] >= start + i`, and a
/// row is read before any later step writes it.
#[cube(launch_unchecked)]
#[allow(clippy::too_many_arguments)]
fn keep_rows_kernel<F: Float>(
    k: &mut [F],
    v: &mut [F],
    rows: &[i32],
    n: usize,
    start: usize,
    k_head: usize,
    k_row: usize,
    k_dim: usize,
    v_head: usize,
    v_row: usize,
    v_dim: usize,
    #[define(F)] _dtype: ElemType,
) {
    let h = CUBE_POS_X as usize;
    let d = UNIT_POS_X as usize;
    for i in 0..n {
        let src = rows[i] as usize;
        k[h * k_head + (start + i) * k_row + d * k_dim] = k[h * k_head + src * k_row + d * k_dim];
        v[h * v_head + (start + i) * v_row + d * v_dim] = v[h * v_head + src * v_row + d * v_dim];
    }
}

/// k, v [1, heads, capacity, hd] in place; rows [n] i32, ascending, each >= start + its index and
/// < capacity; hd <= 1024 (the caller checks).
pub(crate) fn keep_rows(k: CubeTensor, v: CubeTensor, rows: CubeTensor, start: usize) {
    let [_, heads, _, hd] = k.meta.shape().dims::<4>();
    let n = rows.meta.shape().dims::<1>()[0];
    let dtype = k.dtype;
    let rows = into_contiguous(rows);
    let (ks, vs) = (k.meta.strides().to_vec(), v.meta.strides().to_vec());
    let client = k.client.clone();
    // SAFETY: heads and hd bound the cube and thread indices; rows are < capacity (caller).
    unsafe {
        keep_rows_kernel::launch_unchecked(
            &client,
            CubeCount::Static(heads as u32, 1, 1),
            CubeDim::new_1d(hd as u32),
            arg(&k),
            arg(&v),
            arg(&rows),
            n,
            start,
            ks[1],
            ks[2],
            ks[3],
            vs[1],
            vs[2],
            vs[3],
            super::elem(dtype),
        )
    };
}

/// dst[i] = src[i] for i < len: one thread per element.
#[cube(launch_unchecked)]
fn copy_kernel<F: Float>(src: &[F], dst: &mut [F], len: usize, #[define(F)] _dtype: ElemType) {
    let i = ABSOLUTE_POS as usize;
    if i < len {
        dst[i] = src[i];
    }
}

/// The elements of `src` (made contiguous) into the first elements of `dst`'s buffer, in place;
/// both of one dtype, `dst` contiguous and at least as large (the caller checks).
pub(crate) fn copy_into(dst: &CubeTensor, src: CubeTensor) {
    let src = into_contiguous(src);
    let len = src.meta.shape().num_elements();
    const THREADS: usize = 256;
    // SAFETY: threads past `len` write nothing; `dst` holds at least `len` elements (caller).
    unsafe {
        copy_kernel::launch_unchecked(
            &src.client,
            CubeCount::Static(len.div_ceil(THREADS) as u32, 1, 1),
            CubeDim::new_1d(THREADS as u32),
            arg(&src),
            arg(dst),
            len,
            super::elem(src.dtype),
        )
    };
}

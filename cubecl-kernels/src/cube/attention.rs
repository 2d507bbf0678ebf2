//! Tree attention: one cube per (new row, query head). The cube walks the visible keys in chunks of
//! its thread count with an online softmax (running max and sum in f32), so any cache length and any
//! number of new rows work with fixed shared memory. Each thread scores one key per chunk; then each
//! thread owning a head dimension accumulates the chunk's probability-weighted V column. Key rows
//! before the last `cols` are always visible; among the last `cols`, the row's list of visible
//! columns decides (an unmasked single new row sees everything). The chunks run over that logical
//! key sequence, not over rows: a tree node at depth d then sums exactly what the single-row step at
//! the same position sums after its path was accepted, slot for slot, so verification is
//! batch-invariant down to the last bit. K/V are read through their strides: the cache views need no copy.

use burn::tensor::Shape;
use burn_cubecl::{ops::numeric::empty_device_contiguous_dtype, tensor::CubeTensor, CubeRuntime};
use cubecl::prelude::*;

use super::reduce::{block_max, block_sum};

pub(crate) const MAX_HEAD_DIM: usize = 256;
/// Elements per unrolled group in the dot and V loops.
const UNROLL: usize = 16;

#[cube(launch_unchecked)]
fn tree_attention_kernel<F: Float>(
    q: &Tensor<F>,
    k: &Tensor<F>,
    v: &Tensor<F>,
    visible: &Tensor<i32>,
    out: &mut Tensor<F>,
    t: usize,
    cols: usize,
    group: usize,
    scale: f32,
    #[comptime] head_dim: usize,
    #[comptime] threads: usize,
    #[comptime] masked: bool,
    #[define(F)] _dtype: StorageType,
) {
    let i = CUBE_POS_X as usize;
    let h = CUBE_POS_Y as usize;
    let tid = UNIT_POS_X as usize;
    let kv = h / group;
    let prefix = t - cols;

    let mut q_s = SharedMemory::<f32>::new(head_dim);
    let mut p_s = SharedMemory::<f32>::new(threads);
    let mut r_s = SharedMemory::<u32>::new(threads);
    let mut red = SharedMemory::<f32>::new(threads);
    if tid < head_dim {
        q_s[tid] = f32::cast_from(q[h * q.stride(1) + i * q.stride(2) + tid * q.stride(3)]) * scale;
    }
    sync_cube();

    // Keys this row sees: the prefix, then its listed masked columns.
    let mut keys = t;
    if comptime!(masked) {
        keys = prefix + visible[i * visible.stride(0)] as usize;
    }
    let k_base = kv * k.stride(1);
    let v_base = kv * v.stride(1);
    let mut m_run = f32::new(-1.0e30);
    let mut l_run = 0.0f32;
    let mut acc = 0.0f32;
    let mut c0 = 0usize;
    while c0 < keys {
        let j = c0 + tid;
        let seen = j < keys;
        let mut row = j;
        if comptime!(masked) {
            if seen && j >= prefix {
                row = prefix + visible[i * visible.stride(0) + (1 + j - prefix) * visible.stride(1)] as usize;
            }
        }
        r_s[tid] = row as u32;
        let mut s = f32::new(-1.0e30);
        if seen {
            // Unrolled by UNROLL so the loads of a group are in flight together (a rolled loop
            // waits one memory latency per element); the sum runs in the same order either way.
            let mut dot = 0.0f32;
            let base = k_base + row * k.stride(2);
            for d0 in 0..comptime!(head_dim / UNROLL) {
                #[unroll]
                for u in 0..UNROLL {
                    let d = d0 * UNROLL + u;
                    dot += q_s[d] * f32::cast_from(k[base + d * k.stride(3)]);
                }
            }
            for d in comptime!(head_dim / UNROLL * UNROLL)..head_dim {
                dot += q_s[d] * f32::cast_from(k[base + d * k.stride(3)]);
            }
            s = dot;
        }

        // Chunk maximum.
        red[tid] = s;
        block_max(&mut red);
        let chunk_max = red[0];
        sync_cube();

        let mut m_new = m_run;
        if chunk_max > m_new {
            m_new = chunk_max;
        }
        let mut p = 0.0f32;
        if seen {
            p = (s - m_new).exp();
        }
        p_s[tid] = p;
        red[tid] = p;
        block_sum(&mut red);
        let rescale = (m_run - m_new).exp();
        l_run = l_run * rescale + red[0];
        if tid < head_dim {
            let mut o = acc * rescale;
            let mut len = keys - c0;
            if len > threads {
                len = threads;
            }
            let col = v_base + tid * v.stride(3);
            let mut jj = 0usize;
            while jj + UNROLL <= len {
                #[unroll]
                for u in 0..UNROLL {
                    o += p_s[jj + u] * f32::cast_from(v[col + r_s[jj + u] as usize * v.stride(2)]);
                }
                jj += UNROLL;
            }
            while jj < len {
                o += p_s[jj] * f32::cast_from(v[col + r_s[jj] as usize * v.stride(2)]);
                jj += 1;
            }
            acc = o;
        }
        m_run = m_new;
        sync_cube();
        c0 += threads;
    }
    if tid < head_dim {
        // Rows layout [n, heads, hd]: o_proj reads it as [n, heads * hd] with no transpose.
        out[(i * CUBE_COUNT_Y as usize + h) * head_dim + tid] = F::cast_from(acc / l_run);
    }
}

/// q [1, heads, n, hd]; k, v [1, kv_heads, >= t, hd] (any strides; rows [0, t) are the keys, so
/// the cache buffers need no slicing); `visible` ([`crate::attention::AttnMask::visible`]) over the
/// last `cols` key rows, or `None` for a single new row. Returns [1, n, heads, hd].
pub(crate) fn tree_attention<R: CubeRuntime>(
    q: CubeTensor<R>,
    k: CubeTensor<R>,
    v: CubeTensor<R>,
    t: usize,
    visible: Option<(CubeTensor<R>, usize)>,
) -> CubeTensor<R> {
    let [_, heads, n, hd] = q.meta.shape().dims::<4>();
    let kv_heads = k.meta.shape().dims::<4>()[1];
    let dtype = q.dtype;
    let out = empty_device_contiguous_dtype::<R>(q.client.clone(), q.device.clone(), Shape::new([1, n, heads, hd]), dtype);
    let threads = hd.next_power_of_two().max(128);
    let masked = visible.is_some();
    let cols = visible.as_ref().map_or(0, |b| b.1);
    // Unmasked (one new row): the kernel never reads `visible`; q's buffer fills the slot.
    let visible = visible.map(|b| b.0).unwrap_or_else(|| q.clone());
    // SAFETY: q rows/heads come from the grid, K/V rows are < t, dims < head_dim, list entries < 1 + cols.
    unsafe { tree_attention_kernel::launch_unchecked::<R>(
        &q.client.clone(),
        CubeCount::Static(n as u32, heads as u32, 1),
        CubeDim::new_1d(threads as u32),
        q.into_tensor_arg(),
        k.into_tensor_arg(),
        v.into_tensor_arg(),
        visible.into_tensor_arg(),
        out.clone().into_tensor_arg(),
        t,
        cols,
        heads / kv_heads,
        1.0 / (hd as f32).sqrt(),
        hd,
        threads,
        masked,
        dtype.into(),
    ) };
    out
}

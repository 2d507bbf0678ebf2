//! Tree attention, flash-decoding style. Each row's visible keys form one logical sequence: the
//! prefix rows, then the row's listed masked columns (an unmasked single new row sees every row).
//! That sequence is cut into segments of [`SEGMENT`] keys; one cube per (new row, query head,
//! segment) walks its segment in chunks of [`THREADS`] keys, and a second kernel merges the
//! segments in order. With one segment the first kernel writes the output itself (bit-identical to
//! merging one segment with empty ones).
//!
//! In a chunk, warp w owns slots [32 w, 32 w + 32), one key per lane: the lane scores its key over
//! every head dim (16-byte K loads), then the warp keeps its own online softmax (running max, sum
//! and probability-weighted V, the lane holding head dims lane + 32 e), and the warps' states are
//! merged in warp order at the end. Four barriers per chunk; the previous layout (every lane one head
//! dim of 16 keys, partial sums transposed through shared memory, block-wide max and sum per chunk)
//! cost ~20 barriers and 35 us per decode step on the H200 for 32 cubes (`docs/perf/decode.md`).
//! Each lane loads its K row before the barrier that publishes q, and a warp's V walk unrolls all
//! 32 slots, so both sets of loads are in flight at once: 8.6 -> 7.2 us per Qwen2.5-1.5B decode
//! layer on the H100 (`docs/perf/int4-matmul.md`, same bits).
//!
//! Chunks, slots and segments are cut by position in the logical sequence, never by row index or
//! row count: a tree node at depth d sums exactly what the single-row step at its position sums
//! after its path was accepted, term for term and in the same order, so greedy verification is
//! batch-invariant down to the last bit. K/V are read through their strides: the cache views need
//! no copy.

use burn::tensor::{DType, Shape};
use burn_cubecl::{ops::numeric::empty_device_contiguous_dtype, tensor::CubeTensor};
use cubecl::prelude::*;

use super::arg;

pub(crate) const MAX_HEAD_DIM: usize = 256;
/// Threads per cube, keys per chunk: a decode step up to 256 keys is one chunk. Fixed on every
/// runtime (chunking must not depend on the rows verified).
const THREADS: usize = 256;
/// Keys per segment: a multiple of [`THREADS`].
const SEGMENT: usize = crate::attention::SEGMENT;
/// Slots per unrolled group of a warp's V loop (their loads in flight at once; divides 32).
const UNROLL: usize = 32;

/// Element strides of the kernel's views (buffers go in as flat arrays: a tensor argument would
/// upload its shape and strides with every launch, ~3.5 us of host time on the H200).
#[derive(CubeLaunch, CubeType, Clone, Copy)]
struct Strides {
    q_head: usize,
    q_row: usize,
    q_dim: usize,
    k_head: usize,
    k_row: usize,
    k_dim: usize,
    v_head: usize,
    v_row: usize,
    v_dim: usize,
    vis_row: usize,
    vis_col: usize,
}

/// K is read `N` values at a time (8 where rows are 16-byte aligned and dims contiguous, else 1).
#[cube(launch_unchecked)]
fn tree_attention_kernel<F: Float, N: Size>(
    q: &[F],
    k: &[Vector<F, N>],
    v: &[F],
    visible: &[i32],
    out: &mut [F],
    part_acc: &mut [f32],
    part_ml: &mut [f32],
    strides: Strides,
    start: &[i32],
    added: usize,
    cols: usize,
    group: usize,
    scale: f32,
    #[comptime] head_dim: usize,
    #[comptime] masked: bool,
    #[comptime] direct: bool,
    #[define(F)] _dtype: ElemType,
) {
    let i = CUBE_POS_X as usize;
    let h = CUBE_POS_Y as usize;
    let seg = CUBE_POS_Z as usize;
    let heads = CUBE_COUNT_Y as usize;
    let segments = CUBE_COUNT_Z as usize;
    let tid = UNIT_POS_X as usize;
    let lane = tid % 32;
    let warp = tid / 32;
    let kv = h / group;
    // Keys: the cache rows before the new ones (read on the device, so that a captured graph
    // replays at any cache length), then the new rows.
    let t = start[0] as usize + added;
    let prefix = t - cols;
    let width = k.vector_size();
    let vecs = comptime!(head_dim / width);
    let warps = comptime!(THREADS / 32);
    let per_lane = comptime!(head_dim.div_ceil(32));

    let mut q_s = Shared::<[f32]>::new_slice(head_dim);
    let mut sc = Shared::<[f32]>::new_slice(THREADS);
    let mut p_s = Shared::<[f32]>::new_slice(THREADS);
    let mut r_s = Shared::<[u32]>::new_slice(THREADS);
    let mut wm = Shared::<[f32]>::new_slice(warps);
    let mut wl = Shared::<[f32]>::new_slice(warps);
    let mut wo = Shared::<[f32]>::new_slice(comptime!(warps * head_dim));
    // q reaches shared memory while the first chunk's K loads are in flight: the barrier that makes
    // it visible is in the chunk loop, after those loads.
    if tid < head_dim {
        q_s[tid] = f32::cast_from(q[h * strides.q_head + i * strides.q_row + tid * strides.q_dim]) * scale;
    }

    // Keys this row sees: the prefix, then its listed masked columns; this cube takes one segment.
    let mut keys = t;
    if comptime!(masked) {
        keys = prefix + visible[i * strides.vis_row] as usize;
    }
    let seg_start = seg * SEGMENT;
    let mut seg_end = seg_start + SEGMENT;
    if seg_end > keys {
        seg_end = keys;
    }
    let k_base = kv * strides.k_head;
    let v_base = kv * strides.v_head;
    // The warp's online softmax: running max, sum, and the lane's head dims of sum p v.
    let mut m_w = f32::new(-1.0e30);
    let mut l_w = 0.0f32;
    let mut ov = Array::<f32>::new(per_lane);
    #[unroll]
    for e in 0..per_lane {
        ov[e] = 0.0f32;
    }
    let mut c0 = seg_start;
    while c0 < seg_end {
        let mut len = seg_end - c0;
        if len > THREADS {
            len = THREADS;
        }
        let seen = tid < len;
        let j = c0 + tid;
        let mut row = j;
        if comptime!(masked) {
            if seen && j >= prefix {
                row = prefix + visible[i * strides.vis_row + (1 + j - prefix) * strides.vis_col] as usize;
            }
        }
        // Slots past the chunk point at key row 0 (always a key) and score nothing.
        if !seen {
            row = 0;
        }
        r_s[tid] = row as u32;

        // The lane's key, loaded whole before the barrier (its latency overlaps q's and the other
        // lanes'), then scored over every head dim: one running sum per vector lane (independent
        // chains), added up in lane order.
        let mut kr = Array::<Vector<F, N>>::new(vecs);
        if seen {
            let kb = (k_base + row * strides.k_row) / width;
            #[unroll]
            for c in 0..vecs {
                kr[c] = k[kb + c * strides.k_dim];
            }
        }
        sync_cube();
        let mut s = f32::new(-1.0e30);
        if seen {
            let mut dots = Array::<f32>::new(width);
            #[unroll]
            for e in 0..width {
                dots[e] = 0.0f32;
            }
            #[unroll]
            for c in 0..vecs {
                let kc = kr[c];
                #[unroll]
                for e in 0..width {
                    dots[e] += q_s[c * width + e] * f32::cast_from(kc.extract(e));
                }
            }
            s = 0.0f32;
            #[unroll]
            for e in 0..width {
                s += dots[e];
            }
        }
        sc[tid] = s;
        sync_cube();

        // The warp's maximum over its 32 slots, then its probabilities under the new maximum.
        let mut chunk_max = f32::new(-1.0e30);
        #[unroll]
        for u in 0..32usize {
            let x = sc[warp * 32 + u];
            if x > chunk_max {
                chunk_max = x;
            }
        }
        let mut m_new = m_w;
        if chunk_max > m_new {
            m_new = chunk_max;
        }
        let rescale = (m_w - m_new).exp();
        let mut p = 0.0f32;
        if seen {
            p = (s - m_new).exp();
        }
        p_s[tid] = p;
        sync_cube();

        // Probability-weighted V over the warp's 32 slots in order (slots past `len` add 0 * key row
        // 0: no change); the sum of p in the same order. A warp with no slot in the chunk skips it:
        // its max is unchanged, so rescale is 1 and every term 0, the same bits as walking it (a short
        // cache leaves most warps of a decode step here).
        let mut psum = 0.0f32;
        #[unroll]
        for e in 0..per_lane {
            ov[e] = ov[e] * rescale;
        }
        let mut groups = 0usize;
        if warp * 32 < len {
            groups = 32 / UNROLL;
        }
        for r0 in 0..groups {
            #[unroll]
            for u in 0..UNROLL {
                let slot = warp * 32 + r0 * UNROLL + u;
                let pw = p_s[slot];
                psum += pw;
                let base = v_base + r_s[slot] as usize * strides.v_row;
                #[unroll]
                for e in 0..per_lane {
                    let d = lane + e * 32;
                    if comptime!(head_dim % 32 == 0) {
                        ov[e] += pw * f32::cast_from(v[base + d * strides.v_dim]);
                    } else if d < head_dim {
                        ov[e] += pw * f32::cast_from(v[base + d * strides.v_dim]);
                    }
                }
            }
        }
        l_w = l_w * rescale + psum;
        m_w = m_new;
        // The next chunk overwrites the slots.
        sync_cube();
        c0 += THREADS;
    }

    // Merge the warps' states in warp order.
    if lane == 0 {
        wm[warp] = m_w;
        wl[warp] = l_w;
    }
    #[unroll]
    for e in 0..per_lane {
        let d = lane + e * 32;
        if d < head_dim {
            wo[warp * head_dim + d] = ov[e];
        }
    }
    sync_cube();
    if tid < head_dim {
        let mut m = f32::new(-1.0e30);
        #[unroll]
        for w in 0..warps {
            if wm[w] > m {
                m = wm[w];
            }
        }
        let mut l = 0.0f32;
        let mut o = 0.0f32;
        #[unroll]
        for w in 0..warps {
            let f = (wm[w] - m).exp();
            l += wl[w] * f;
            o += wo[w * head_dim + tid] * f;
        }
        let unit = i * heads + h;
        if comptime!(direct) {
            // Rows layout [n, heads, hd]: o_proj reads it as [n, heads * hd] with no transpose.
            out[unit * head_dim + tid] = F::cast_from(o / l);
        } else {
            // An empty segment (past this row's keys) leaves max -1e30, sum 0, acc 0: merged as nothing.
            let slot = unit * segments + seg;
            part_acc[slot * head_dim + tid] = o;
            if tid == 0 {
                part_ml[slot * 2] = m;
                part_ml[slot * 2 + 1] = l;
            }
        }
    }
}

/// Merge each (row, head)'s segments in order: one thread per head dimension.
#[cube(launch_unchecked)]
fn merge_segments_kernel<F: Float>(
    part_acc: &[f32],
    part_ml: &[f32],
    out: &mut [F],
    segments: usize,
    #[comptime] head_dim: usize,
    #[define(F)] _dtype: ElemType,
) {
    let unit = CUBE_POS_X as usize;
    let d = UNIT_POS_X as usize;
    if d < head_dim {
        let base = unit * segments;
        let mut m = f32::new(-1.0e30);
        for s in 0..segments {
            let ms = part_ml[(base + s) * 2];
            if ms > m {
                m = ms;
            }
        }
        let mut l = 0.0f32;
        let mut o = 0.0f32;
        for s in 0..segments {
            let w = (part_ml[(base + s) * 2] - m).exp();
            l += part_ml[(base + s) * 2 + 1] * w;
            o += part_acc[(base + s) * head_dim + d] * w;
        }
        out[unit * head_dim + d] = F::cast_from(o / l);
    }
}

/// q [1, heads, n, hd]; k, v [1, kv_heads, >= t, hd] (any strides; rows [0, t) are the keys, so
/// the cache buffers need no slicing); `start` [1] i32 on the device holds t - n, which the kernel
/// reads (`t` itself only sizes the grid); `visible` ([`crate::attention::AttnMask::visible`]) over the
/// last `cols` key rows, or `None` for a single new row. Returns [1, n, heads, hd].
pub(crate) fn tree_attention(
    q: CubeTensor,
    k: CubeTensor,
    v: CubeTensor,
    t: usize,
    start: CubeTensor,
    visible: Option<(CubeTensor, usize)>,
) -> CubeTensor {
    let [_, heads, n, hd] = q.meta.shape().dims::<4>();
    let kv_heads = k.meta.shape().dims::<4>()[1];
    let dtype = q.dtype;
    let (client, device) = (q.client.clone(), q.device.clone());
    let out = empty_device_contiguous_dtype(client.clone(), device.clone(), Shape::new([1, n, heads, hd]), dtype);
    let masked = visible.is_some();
    let cols = visible.as_ref().map_or(0, |b| b.1);
    // A row sees at most t keys; rows seeing fewer leave their last segments empty.
    let segments = t.div_ceil(SEGMENT).max(1);
    let direct = segments == 1;
    let scratch = |len: usize| empty_device_contiguous_dtype(client.clone(), device.clone(), Shape::new([len]), DType::F32);
    // With one segment the partial buffers are never touched: one-element placeholders.
    let units = if direct { 1 } else { n * heads * segments };
    let (part_acc, part_ml) = (scratch(units * if direct { 1 } else { hd }), scratch(units * 2));
    // Unmasked (one new row): the kernel never reads `visible`; q's buffer fills the slot.
    let visible = visible.map(|b| b.0).unwrap_or_else(|| q.clone());
    let st = |t: &CubeTensor, d: usize| t.meta.strides()[d];
    // 16-byte K loads: head dims contiguous, every row start a multiple of 8 values from a 16-byte
    // aligned buffer start.
    let k_offset = k.handle.offset_start.unwrap_or(0) as usize;
    let wide = hd % 8 == 0 && st(&k, 3) == 1 && st(&k, 2) % 8 == 0 && st(&k, 1) % 8 == 0 && k_offset % (8 * dtype.size()) == 0;
    let strides = StridesLaunch::new(
        st(&q, 1),
        st(&q, 2),
        st(&q, 3),
        st(&k, 1),
        st(&k, 2),
        if wide { 1 } else { st(&k, 3) },
        st(&v, 1),
        st(&v, 2),
        st(&v, 3),
        if masked { st(&visible, 0) } else { 0 },
        if masked { st(&visible, 1) } else { 0 },
    );
    // SAFETY: q rows/heads come from the grid, K/V rows are < t, dims < head_dim, list entries < 1 +
    // cols, partial slots < n * heads * segments; wide K loads checked aligned above.
    unsafe {
        tree_attention_kernel::launch_unchecked(
            &client,
            CubeCount::Static(n as u32, heads as u32, segments as u32),
            CubeDim::new_1d(THREADS as u32),
            if wide { 8 } else { 1 },
            arg(&q),
            arg(&k),
            arg(&v),
            arg(&visible),
            arg(&out),
            arg(&part_acc),
            arg(&part_ml),
            strides,
            arg(&start),
            n,
            cols,
            heads / kv_heads,
            1.0 / (hd as f32).sqrt(),
            hd,
            masked,
            direct,
            super::elem(dtype),
        );
        if !direct {
            merge_segments_kernel::launch_unchecked(
                &client,
                CubeCount::Static((n * heads) as u32, 1, 1),
                CubeDim::new_1d(hd.next_power_of_two().max(32) as u32),
                arg(&part_acc),
                arg(&part_ml),
                arg(&out),
                segments,
                hd,
                super::elem(dtype),
            );
        }
    }
    out
}

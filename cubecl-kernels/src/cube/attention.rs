//! Tree attention, flash-decoding style. Each row's visible keys form one logical sequence: the
//! prefix rows, then the row's listed masked columns (an unmasked single new row sees every row).
//! That sequence is cut into segments of [`SEGMENT`] keys; one cube per (new row, query head,
//! segment) runs an online softmax (running max and sum in f32) over its segment in chunks of its
//! thread count, and a second kernel merges the segments in order. With one segment the first
//! kernel writes the output itself (bit-identical to merging one segment with empty ones).
//!
//! Chunks and segments are cut by position in the logical sequence, never by row index or row
//! count: a tree node at depth d sums exactly what the single-row step at its position sums after
//! its path was accepted, term for term and in the same order, so greedy verification is
//! batch-invariant down to the last bit.
//!
//! In a chunk, warp w owns slots [32 w, 32 w + 32): for each key its 32 lanes read 32 consecutive
//! head dims at a time (coalesced) into partial sums that the slot's thread adds up in lane order;
//! then the warp sums its slots' probability-weighted V rows per head dim, and the warps' sums are
//! added in warp order. (Each thread walking every key of the chunk for its head dim cost ~3,500
//! dependent instructions per warp at a decode step: 48 us on the H200 for 32 cubes.)
//! K/V are read through their strides: the cache views need no copy.

use burn::tensor::{DType, Shape};
use burn_cubecl::{ops::numeric::empty_device_contiguous_dtype, tensor::CubeTensor, CubeRuntime};
use cubecl::prelude::*;

use super::reduce::{block_max, block_sum};

pub(crate) const MAX_HEAD_DIM: usize = 256;
/// Threads per cube (and keys per chunk), the first that fits: 8 warps, so that a decode step's
/// cubes (one per query head) keep two warps on each scheduler of their multiprocessor; else 4
/// (lavapipe allows 32 KB of shared memory).
const THREADS: [usize; 2] = [256, 128];

/// Bytes of shared memory the kernel declares for `threads` threads and head dim `hd`.
fn shared_bytes(threads: usize, hd: usize) -> usize {
    4 * (threads * 33 + hd + 3 * threads + threads / 32 * hd)
}

/// The largest thread count whose shared memory fits the device (and CUDA's 48 KB without opt-in).
/// Fixed per (device, head dim): chunking never depends on the rows verified.
fn threads_for<R: CubeRuntime>(client: &ComputeClient<R>, hd: usize) -> usize {
    let limit = client.properties().hardware.max_shared_memory_size.min(48 << 10);
    THREADS.into_iter().find(|&t| t >= hd && shared_bytes(t, hd) <= limit).unwrap_or(THREADS[1].max(hd))
}
/// Keys per segment: a multiple of every thread count used (128, 256).
const SEGMENT: usize = 512;
/// Keys scored together per warp (their loads in flight at once).
const KEYS_IN_FLIGHT: usize = 16;
/// Keys per unrolled group of a warp's V loop (their loads in flight at once; divides 32).
const UNROLL: usize = 16;

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

#[cube(launch_unchecked)]
fn tree_attention_kernel<F: Float>(
    q: &Array<F>,
    k: &Array<F>,
    v: &Array<F>,
    visible: &Array<i32>,
    out: &mut Array<F>,
    part_acc: &mut Array<f32>,
    part_ml: &mut Array<f32>,
    strides: Strides,
    t: usize,
    cols: usize,
    group: usize,
    scale: f32,
    #[comptime] head_dim: usize,
    #[comptime] threads: usize,
    #[comptime] masked: bool,
    #[comptime] direct: bool,
    #[define(F)] _dtype: StorageType,
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
    let prefix = t - cols;

    let mut q_s = SharedMemory::<f32>::new(head_dim);
    let mut part_s = SharedMemory::<f32>::new(comptime!(threads * 33));
    let mut p_s = SharedMemory::<f32>::new(threads);
    let mut r_s = SharedMemory::<u32>::new(threads);
    let mut red = SharedMemory::<f32>::new(threads);
    let mut o_s = SharedMemory::<f32>::new(comptime!(threads / 32 * head_dim));
    let per_lane = comptime!(head_dim.div_ceil(32));
    if tid < head_dim {
        q_s[tid] = f32::cast_from(q[h * strides.q_head + i * strides.q_row + tid * strides.q_dim]) * scale;
    }
    sync_cube();
    // The lane's head dims of q (lane + 32 e), kept in registers for every key.
    let mut qv = Array::<f32>::new(per_lane);
    #[unroll]
    for e in 0..per_lane {
        let d = lane + e * 32;
        qv[e] = 0.0f32;
        if d < head_dim {
            qv[e] = q_s[d];
        }
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
    let mut m_run = f32::new(-1.0e30);
    let mut l_run = 0.0f32;
    let mut acc = 0.0f32;
    let mut c0 = seg_start;
    while c0 < seg_end {
        let mut len = seg_end - c0;
        if len > threads {
            len = threads;
        }
        let seen = tid < len;
        let j = c0 + tid;
        let mut row = j;
        if comptime!(masked) {
            if seen && j >= prefix {
                row = prefix + visible[i * strides.vis_row + (1 + j - prefix) * strides.vis_col] as usize;
            }
        }
        // Slots past the chunk read key row 0 (always a key): their loads stay unconditional, so a
        // warp's loads are all in flight together, and their score and probability are dropped.
        if !seen {
            row = 0;
        }
        r_s[tid] = row as u32;
        sync_cube();

        // Scores: warp w takes slots [32 w, 32 w + 32); for each key its lanes read consecutive head
        // dims (coalesced) into partial sums that the slot's thread adds up in lane order.
        for r0 in 0..comptime!(32 / KEYS_IN_FLIGHT) {
            #[unroll]
            for u in 0..KEYS_IN_FLIGHT {
                let slot = warp * 32 + r0 * KEYS_IN_FLIGHT + u;
                let mut part = 0.0f32;
                let base = k_base + r_s[slot] as usize * strides.k_row;
                #[unroll]
                for e in 0..per_lane {
                    let d = lane + e * 32;
                    if comptime!(head_dim % 32 == 0) {
                        part += qv[e] * f32::cast_from(k[base + d * strides.k_dim]);
                    } else if d < head_dim {
                        part += qv[e] * f32::cast_from(k[base + d * strides.k_dim]);
                    }
                }
                part_s[slot * 33 + lane] = part;
            }
        }
        sync_cube();
        let mut s = f32::new(-1.0e30);
        if seen {
            let mut dot = 0.0f32;
            #[unroll]
            for l in 0..32usize {
                dot += part_s[tid * 33 + l];
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

        // Probability-weighted V: warp w sums its own 32 slots in order for the lane's head dims
        // (slots past `len` add 0 * key row 0, no change), then the warps' sums are added in warp
        // order. Each warp walks 32 keys instead of each thread walking all of them.
        let mut ov = Array::<f32>::new(per_lane);
        #[unroll]
        for e in 0..per_lane {
            ov[e] = 0.0f32;
        }
        for r0 in 0..comptime!(32 / UNROLL) {
            #[unroll]
            for u in 0..UNROLL {
                let slot = warp * 32 + r0 * UNROLL + u;
                let pw = p_s[slot];
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
        #[unroll]
        for e in 0..per_lane {
            let d = lane + e * 32;
            if d < head_dim {
                o_s[warp * head_dim + d] = ov[e];
            }
        }
        sync_cube();
        if tid < head_dim {
            let mut o = acc * rescale;
            #[unroll]
            for w in 0..comptime!(threads / 32) {
                o += o_s[w * head_dim + tid];
            }
            acc = o;
        }
        m_run = m_new;
        sync_cube();
        c0 += threads;
    }
    let unit = i * heads + h;
    if comptime!(direct) {
        if tid < head_dim {
            // Rows layout [n, heads, hd]: o_proj reads it as [n, heads * hd] with no transpose.
            out[unit * head_dim + tid] = F::cast_from(acc / l_run);
        }
    } else {
        // An empty segment (past this row's keys) leaves max -1e30, sum 0, acc 0: merged as nothing.
        let slot = unit * segments + seg;
        if tid < head_dim {
            part_acc[slot * head_dim + tid] = acc;
        }
        if tid == 0 {
            part_ml[slot * 2] = m_run;
            part_ml[slot * 2 + 1] = l_run;
        }
    }
}

/// Merge each (row, head)'s segments in order: one thread per head dimension.
#[cube(launch_unchecked)]
fn merge_segments_kernel<F: Float>(
    part_acc: &Array<f32>,
    part_ml: &Array<f32>,
    out: &mut Array<F>,
    segments: usize,
    #[comptime] head_dim: usize,
    #[define(F)] _dtype: StorageType,
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
    let (client, device) = (q.client.clone(), q.device.clone());
    let out = empty_device_contiguous_dtype::<R>(client.clone(), device.clone(), Shape::new([1, n, heads, hd]), dtype);
    let threads = threads_for::<R>(&client, hd);
    let masked = visible.is_some();
    let cols = visible.as_ref().map_or(0, |b| b.1);
    // A row sees at most t keys; rows seeing fewer leave their last segments empty.
    let segments = t.div_ceil(SEGMENT).max(1);
    let direct = segments == 1;
    let scratch = |len: usize| empty_device_contiguous_dtype::<R>(client.clone(), device.clone(), Shape::new([len]), DType::F32);
    // With one segment the partial buffers are never touched: one-element placeholders.
    let units = if direct { 1 } else { n * heads * segments };
    let (part_acc, part_ml) = (scratch(units * if direct { 1 } else { hd }), scratch(units * 2));
    // Unmasked (one new row): the kernel never reads `visible`; q's buffer fills the slot.
    let visible = visible.map(|b| b.0).unwrap_or_else(|| q.clone());
    let st = |t: &CubeTensor<R>, d: usize| t.meta.strides()[d];
    let strides = StridesLaunch::new(
        st(&q, 1),
        st(&q, 2),
        st(&q, 3),
        st(&k, 1),
        st(&k, 2),
        st(&k, 3),
        st(&v, 1),
        st(&v, 2),
        st(&v, 3),
        if masked { st(&visible, 0) } else { 0 },
        if masked { st(&visible, 1) } else { 0 },
    );
    // SAFETY: q rows/heads come from the grid, K/V rows are < t, dims < head_dim, list entries < 1 +
    // cols, partial slots < n * heads * segments.
    unsafe {
        tree_attention_kernel::launch_unchecked::<R>(
            &client,
            CubeCount::Static(n as u32, heads as u32, segments as u32),
            CubeDim::new_1d(threads as u32),
            q.into_array_arg(),
            k.into_array_arg(),
            v.into_array_arg(),
            visible.into_array_arg(),
            out.clone().into_array_arg(),
            part_acc.clone().into_array_arg(),
            part_ml.clone().into_array_arg(),
            strides,
            t,
            cols,
            heads / kv_heads,
            1.0 / (hd as f32).sqrt(),
            hd,
            threads,
            masked,
            direct,
            dtype.into(),
        );
        if !direct {
            merge_segments_kernel::launch_unchecked::<R>(
                &client,
                CubeCount::Static((n * heads) as u32, 1, 1),
                CubeDim::new_1d(hd.next_power_of_two().max(32) as u32),
                part_acc.into_array_arg(),
                part_ml.into_array_arg(),
                out.clone().into_array_arg(),
                segments,
                hd,
                dtype.into(),
            );
        }
    }
    out
}

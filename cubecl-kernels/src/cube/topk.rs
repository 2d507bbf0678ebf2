//! Top-k of a row's log-softmax in two launches: cubes over chunks of the row find each chunk's max,
//! sum of exp and top-k; one cube per row merges them into the log-sum-exp and the row's top-k. Each
//! top-k is k rounds of a block argmax, each round skipping what earlier rounds took (order: value
//! descending, index ascending on ties, as repeated argmax). Writes [n, 2k] f32: the k log-probs,
//! then the k token ids (exact in f32 below 2^24). Also the greedy steps' argmax.

use burn::tensor::{DType, Shape};
use burn_cubecl::{kernel::into_contiguous, ops::numeric::empty_device_contiguous_dtype, tensor::CubeTensor};
use cubecl::prelude::*;

use super::arg;
use super::reduce::{block_max, block_sum};

const THREADS: usize = 256;

/// Whether (v, i) comes before (bv, bi): larger value first, smaller index on ties.
#[cube]
fn before(v: f32, i: u32, bv: f32, bi: u32) -> bool {
    let mut b = v > bv;
    if v == bv {
        b = i < bi;
    }
    b
}

/// The best (value, index) pair of `red_v/red_i[0..CUBE_DIM_X)` by [`before`] (a power of two,
/// one slot per thread, all written before the call), left in slot 0 for every thread.
#[cube]
fn block_argmax(red_v: &mut Shared<[f32]>, red_i: &mut Shared<[u32]>) {
    let tid = UNIT_POS_X as usize;
    sync_cube();
    let mut stride = CUBE_DIM_X as usize / 2;
    while stride > 0 {
        if tid < stride {
            if before(red_v[tid + stride], red_i[tid + stride], red_v[tid], red_i[tid]) {
                red_v[tid] = red_v[tid + stride];
                red_i[tid] = red_i[tid + stride];
            }
        }
        sync_cube();
        stride /= 2;
    }
}

/// Columns of a row per cube in the first pass, staged in shared memory (8 per thread).
pub(crate) const CHUNK: usize = 2048;
/// Most candidates (chunks x k) the merge stages: k <= 27 at a 152k vocabulary.
pub(crate) const MERGE_CAP: usize = 2048;

/// k rounds of a block argmax over the (value, id) pairs `vals/ids[0..len)`, each round skipping
/// what earlier rounds took; round r's pair goes to `out[v_at + r]` (value - `shift`) and
/// `out[i_at + r]` (id). Fewer than k pairs leave the sentinel (-3e38, v).
#[cube]
#[allow(clippy::too_many_arguments)]
fn rounds(
    vals: &Shared<[f32]>,
    ids: &Shared<[u32]>,
    len: usize,
    v: usize,
    k: usize,
    shift: f32,
    out: &mut [f32],
    v_at: usize,
    i_at: usize,
    #[comptime] threads: usize,
) {
    let tid = UNIT_POS_X as usize;
    let mut red_v = Shared::<[f32]>::new_slice(threads);
    let mut red_i = Shared::<[u32]>::new_slice(threads);
    let mut pv = f32::new(0.0);
    let mut pi = 0u32;
    for r in 0..k {
        let mut bv = f32::new(-3.0e38);
        let mut bi = u32::cast_from(v);
        let mut j = tid;
        while j < len {
            let (xv, ju) = (vals[j], ids[j]);
            let mut eligible = r == 0;
            if !eligible {
                eligible = before(pv, pi, xv, ju);
            }
            if eligible {
                if before(xv, ju, bv, bi) {
                    bv = xv;
                    bi = ju;
                }
            }
            j += threads;
        }
        red_v[tid] = bv;
        red_i[tid] = bi;
        block_argmax(&mut red_v, &mut red_i);
        pv = red_v[0];
        pi = red_i[0];
        if tid == 0 {
            out[v_at + r] = pv - shift;
            out[i_at + r] = f32::cast_from(pi);
        }
        sync_cube();
    }
}

/// The cube's max and sum of exp(x - max) over `pairs[0..len)` of (max, sum) (a chunk's values are
/// the pairs (x, 1)): the log-sum-exp's two parts, for every thread.
#[cube]
fn max_and_sum(maxes: &Shared<[f32]>, sums: &Shared<[f32]>, len: usize, #[comptime] threads: usize) -> (f32, f32) {
    let tid = UNIT_POS_X as usize;
    let mut red = Shared::<[f32]>::new_slice(threads);
    let mut m = f32::new(-3.0e38);
    let mut j = tid;
    while j < len {
        if maxes[j] > m {
            m = maxes[j];
        }
        j += threads;
    }
    red[tid] = m;
    block_max(&mut red);
    let top = red[0];
    sync_cube();
    let mut s = 0.0f32;
    let mut j = tid;
    while j < len {
        s += sums[j] * (maxes[j] - top).exp();
        j += threads;
    }
    red[tid] = s;
    block_sum(&mut red);
    let total = red[0];
    sync_cube();
    (top, total)
}

/// First pass, cube (chunk c, row): the chunk's (max, sum of exp(x - max)) into `stats`, and its own
/// top-k into `cand` (per slot: k values, then k ids). A pair in the row's top-k is in its chunk's
/// top-k (the order is total), so the second pass only merges candidates.
#[cube(launch_unchecked)]
fn topk_chunk_kernel<F: Float>(x: &[F], stats: &mut [f32], cand: &mut [f32], v: usize, k: usize, chunks: usize, #[comptime] threads: usize, #[define(F)] _dtype: ElemType) {
    let (c, row, tid) = (CUBE_POS_X as usize, CUBE_POS_Y as usize, UNIT_POS_X as usize);
    let start = c * CHUNK;
    let mut len = v - start;
    if len > CHUNK {
        len = CHUNK;
    }
    let mut vals = Shared::<[f32]>::new_slice(CHUNK);
    let mut ids = Shared::<[u32]>::new_slice(CHUNK);
    let mut ones = Shared::<[f32]>::new_slice(CHUNK);
    let mut j = tid;
    while j < len {
        vals[j] = f32::cast_from(x[row * v + start + j]);
        ids[j] = u32::cast_from(start + j);
        ones[j] = 1.0;
        j += threads;
    }
    sync_cube();
    let (m, s) = max_and_sum(&vals, &ones, len, threads);
    let slot = row * chunks + c;
    if tid == 0 {
        stats[slot * 2] = m;
        stats[slot * 2 + 1] = s;
    }
    rounds(&vals, &ids, len, v, k, 0.0, cand, slot * 2 * k, slot * 2 * k + k, threads);
}

/// Second pass, one cube per row: the row's log-sum-exp from its chunks' (max, sum) pairs, then the
/// top-k of their candidates. Writes [n, 2k]: log-probs, then ids.
#[cube(launch_unchecked)]
fn topk_merge_kernel(stats: &[f32], cand: &[f32], out: &mut [f32], v: usize, k: usize, chunks: usize, #[comptime] threads: usize) {
    let (row, tid) = (CUBE_POS_X as usize, UNIT_POS_X as usize);
    let first = row * chunks;
    let mut maxes = Shared::<[f32]>::new_slice(MERGE_CAP);
    let mut sums = Shared::<[f32]>::new_slice(MERGE_CAP);
    let mut j = tid;
    while j < chunks {
        maxes[j] = stats[(first + j) * 2];
        sums[j] = stats[(first + j) * 2 + 1];
        j += threads;
    }
    sync_cube();
    let (m, s) = max_and_sum(&maxes, &sums, chunks, threads);
    let lse = m + s.ln();
    // The candidates, chunk by chunk, into the same slots.
    let cands = chunks * k;
    let mut ids = Shared::<[u32]>::new_slice(MERGE_CAP);
    let mut j = tid;
    while j < cands {
        let (slot, r) = (first + j / k, j % k);
        maxes[j] = cand[slot * 2 * k + r];
        ids[j] = u32::cast_from(cand[slot * 2 * k + k + r]);
        j += threads;
    }
    sync_cube();
    rounds(&maxes, &ids, cands, v, k, lse, out, row * 2 * k, row * 2 * k + k, threads);
}

/// x [n, v] -> [n, 2k] f32 (log-probs, then ids). k <= v, v < 2^24 (ids exact in f32), and
/// ceil(v / CHUNK) k <= [`MERGE_CAP`] (the caller checks).
///
/// Two launches: chunks of [`CHUNK`] columns, one cube each, then one cube per row merging the
/// chunks. The single-cube version (one cube per row, scanning a 152k row 12 times) took ~510 us
/// per launch on the H200 under ncu (`docs/perf/real.md`, 2026-12-03): one multiprocessor per row,
/// latency-bound, once per tree level of every draft.
pub(crate) fn log_softmax_top_k(x: CubeTensor, k: usize) -> CubeTensor {
    let [n, v] = x.meta.shape().dims::<2>();
    let dtype = x.dtype;
    let x = into_contiguous(x);
    let chunks = v.div_ceil(CHUNK);
    let (client, device) = (x.client.clone(), x.device.clone());
    let stats = empty_device_contiguous_dtype(client.clone(), device.clone(), Shape::new([n * chunks * 2]), DType::F32);
    let cand = empty_device_contiguous_dtype(client.clone(), device.clone(), Shape::new([n * chunks * 2 * k]), DType::F32);
    let out = empty_device_contiguous_dtype(client.clone(), device, Shape::new([n, 2 * k]), DType::F32);
    // SAFETY: cube (c, row) reads columns [c CHUNK, min((c + 1) CHUNK, v)) of its row and writes its
    // slot's 2 stats and 2k candidates; a row's merge cube reads its chunks' slots (chunks k <=
    // MERGE_CAP staged) and writes its 2k outputs.
    unsafe {
        topk_chunk_kernel::launch_unchecked(
            &client,
            CubeCount::Static(chunks as u32, n as u32, 1),
            CubeDim::new_1d(THREADS as u32),
            arg(&x),
            arg(&stats),
            arg(&cand),
            v,
            k,
            chunks,
            THREADS,
            super::elem(dtype),
        );
        topk_merge_kernel::launch_unchecked(
            &client,
            CubeCount::Static(n as u32, 1, 1),
            CubeDim::new_1d(THREADS as u32),
            arg(&stats),
            arg(&cand),
            arg(&out),
            v,
            k,
            chunks,
            THREADS,
        )
    };
    out
}

/// Loads in flight per thread in [`argmax_chunk_kernel`]'s scan.
const ARGMAX_UNROLL: usize = 4;
const ARGMAX_THREADS: usize = 256;
/// Vectors per chunk: one pass of every thread's loads.
const ARGMAX_CHUNK: usize = ARGMAX_UNROLL * ARGMAX_THREADS;
/// Threads of the merge cube (a power of two, for `block_argmax`).
const MERGE_THREADS: usize = 64;

/// First pass, cube (chunk c, row) of x [n, v]: the best (value, index) of the chunk's
/// `ARGMAX_CHUNK` vectors of `width` values (larger value, then lower index; NaN never wins), or the
/// sentinel (-3e38, u32::MAX) for a chunk of only NaN / -inf. A 152k-entry row is 19 cubes of 8192
/// values, where one cube per row took 17 us on the H100 (one multiprocessor reading 300 KB).
#[cube(launch_unchecked)]
fn argmax_chunk_kernel<F: Float, N: Size>(
    x: &[Vector<F, N>],
    part_v: &mut [f32],
    part_i: &mut [u32],
    vectors: usize,
    chunks: usize,
    #[define(F)] _dtype: ElemType,
) {
    let (c, row, tid) = (CUBE_POS_X as usize, CUBE_POS_Y as usize, UNIT_POS_X as usize);
    let width = x.vector_size();
    let base = row * vectors;
    let mut end = (c + 1) * ARGMAX_CHUNK;
    if end > vectors {
        end = vectors;
    }
    let mut vals = Array::<Vector<F, N>>::new(ARGMAX_UNROLL);
    // Every load is issued before any is used (a past-the-chunk slot reads vector 0, then is skipped).
    #[unroll]
    for q in 0..ARGMAX_UNROLL {
        let jq = c * ARGMAX_CHUNK + q * ARGMAX_THREADS + tid;
        let mut at = 0usize;
        if jq < end {
            at = jq;
        }
        vals[q] = x[base + at];
    }
    let mut bv = f32::new(-3.0e38);
    let mut bi = 0xFFFF_FFFFu32;
    #[unroll]
    for q in 0..ARGMAX_UNROLL {
        let jq = c * ARGMAX_CHUNK + q * ARGMAX_THREADS + tid;
        if jq < end {
            let vq = vals[q];
            #[unroll]
            for e in 0..width {
                let xv = f32::cast_from(vq.extract(e));
                let ie = u32::cast_from(jq * width + e);
                if before(xv, ie, bv, bi) {
                    bv = xv;
                    bi = ie;
                }
            }
        }
    }
    let mut red_v = Shared::<[f32]>::new_slice(ARGMAX_THREADS);
    let mut red_i = Shared::<[u32]>::new_slice(ARGMAX_THREADS);
    red_v[tid] = bv;
    red_i[tid] = bi;
    block_argmax(&mut red_v, &mut red_i);
    if tid == 0 {
        part_v[row * chunks + c] = red_v[0];
        part_i[row * chunks + c] = red_i[0];
    }
}

/// Second pass, one cube per row: the best of the row's chunk pairs, as i32 (a row of only NaN or
/// -inf reports index 0). The order is total, so the result does not depend on the chunking.
#[cube(launch_unchecked)]
fn argmax_merge_kernel(part_v: &[f32], part_i: &[u32], out: &mut [i32], chunks: usize) {
    let (row, tid) = (CUBE_POS_X as usize, UNIT_POS_X as usize);
    let mut bv = f32::new(-3.0e38);
    let mut bi = 0xFFFF_FFFFu32;
    let mut j = tid;
    while j < chunks {
        let (v, i) = (part_v[row * chunks + j], part_i[row * chunks + j]);
        if before(v, i, bv, bi) {
            bv = v;
            bi = i;
        }
        j += MERGE_THREADS;
    }
    let mut red_v = Shared::<[f32]>::new_slice(MERGE_THREADS);
    let mut red_i = Shared::<[u32]>::new_slice(MERGE_THREADS);
    red_v[tid] = bv;
    red_i[tid] = bi;
    block_argmax(&mut red_v, &mut red_i);
    if tid == 0 {
        let mut best = red_i[0];
        if best == 0xFFFF_FFFFu32 {
            best = 0u32;
        }
        out[row] = i32::cast_from(best);
    }
}

/// x [n, v] -> [n] i32 (as the backend's int tensor): chunks of each row in parallel, then one cube
/// per row merging them.
pub(crate) fn argmax(x: CubeTensor) -> CubeTensor {
    let [n, v] = x.meta.shape().dims::<2>();
    let dtype = x.dtype;
    let x = into_contiguous(x);
    let (client, device) = (x.client.clone(), x.device.clone());
    let out = empty_device_contiguous_dtype(client.clone(), device.clone(), Shape::new([n]), DType::I32);
    let width = if v % 8 == 0 { 8 } else { 1 };
    let vectors = v / width;
    let chunks = vectors.div_ceil(ARGMAX_CHUNK);
    let part_v = empty_device_contiguous_dtype(client.clone(), device.clone(), Shape::new([n * chunks]), DType::F32);
    let part_i = empty_device_contiguous_dtype(client.clone(), device, Shape::new([n * chunks]), DType::U32);
    // SAFETY: cube (c, row) reads vectors < min((c + 1) ARGMAX_CHUNK, v / width) of its row (rows
    // are contiguous and, with width 8, v % 8 == 0 keeps every row start aligned) and writes its own
    // slot; a row's merge cube reads its chunks' slots and writes one output.
    unsafe {
        argmax_chunk_kernel::launch_unchecked(
            &client,
            CubeCount::Static(chunks as u32, n as u32, 1),
            CubeDim::new_1d(ARGMAX_THREADS as u32),
            width,
            arg(&x),
            arg(&part_v),
            arg(&part_i),
            vectors,
            chunks,
            super::elem(dtype),
        );
        argmax_merge_kernel::launch_unchecked(
            &client,
            CubeCount::Static(n as u32, 1, 1),
            CubeDim::new_1d(MERGE_THREADS as u32),
            arg(&part_v),
            arg(&part_i),
            arg(&out),
            chunks,
        );
    }
    out
}

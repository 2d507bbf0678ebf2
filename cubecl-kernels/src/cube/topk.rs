//! Top-k of a row's log-softmax in one launch: one cube per row finds the row's max and log-sum-exp,
//! then k rounds of a block argmax, each round skipping what earlier rounds took (order: value
//! descending, index ascending on ties, as repeated argmax). Writes [n, 2k] f32: the k log-probs,
//! then the k token ids (exact in f32 below 2^24).

use burn::tensor::{DType, Shape};
use burn_cubecl::{kernel::into_contiguous, ops::numeric::empty_device_contiguous_dtype, tensor::CubeTensor, CubeRuntime};
use cubecl::prelude::*;

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
fn block_argmax(red_v: &mut SharedMemory<f32>, red_i: &mut SharedMemory<u32>) {
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

#[cube(launch_unchecked)]
fn topk_kernel<F: Float>(x: &Array<F>, out: &mut Array<f32>, v: usize, k: usize, #[comptime] threads: usize, #[define(F)] _dtype: StorageType) {
    let row = CUBE_POS_X as usize;
    let tid = UNIT_POS_X as usize;
    let base = row * v;
    let mut red_v = SharedMemory::<f32>::new(threads);
    let mut red_i = SharedMemory::<u32>::new(threads);

    // Row max, then the sum of exp(x - max): the log-sum-exp in f32.
    let mut m = f32::new(-3.0e38);
    let mut j = tid;
    while j < v {
        let xv = f32::cast_from(x[base + j]);
        if xv > m {
            m = xv;
        }
        j += threads;
    }
    red_v[tid] = m;
    block_max(&mut red_v);
    let row_max = red_v[0];
    sync_cube();
    let mut s = 0.0f32;
    let mut j = tid;
    while j < v {
        s += (f32::cast_from(x[base + j]) - row_max).exp();
        j += threads;
    }
    red_v[tid] = s;
    block_sum(&mut red_v);
    let lse = row_max + red_v[0].ln();
    sync_cube();

    // k rounds of argmax over what the earlier rounds left.
    let mut pv = f32::new(0.0);
    let mut pi = 0u32;
    for r in 0..k {
        let mut bv = f32::new(-3.0e38);
        let mut bi = u32::cast_from(v);
        let mut j = tid;
        while j < v {
            let xv = f32::cast_from(x[base + j]);
            let ju = u32::cast_from(j);
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
            out[row * 2 * k + r] = pv - lse;
            out[row * 2 * k + k + r] = f32::cast_from(pi);
        }
        sync_cube();
    }
}

/// x [n, v] -> [n, 2k] f32 (log-probs, then ids). k <= v.
pub(crate) fn log_softmax_top_k<R: CubeRuntime>(x: CubeTensor<R>, k: usize) -> CubeTensor<R> {
    let [n, v] = x.meta.shape().dims::<2>();
    let dtype = x.dtype;
    let x = into_contiguous(x);
    let out = empty_device_contiguous_dtype::<R>(x.client.clone(), x.device.clone(), Shape::new([n, 2 * k]), DType::F32);
    // SAFETY: one cube per row; columns bounded by v, outputs by 2k per row.
    unsafe {
        topk_kernel::launch_unchecked::<R>(
            &x.client.clone(),
            CubeCount::Static(n as u32, 1, 1),
            CubeDim::new_1d(THREADS as u32),
            x.into_array_arg(),
            out.clone().into_array_arg(),
            v,
            k,
            THREADS,
            dtype.into(),
        )
    };
    out
}

/// Loads in flight per thread in [`argmax_kernel`]'s scan.
const ARGMAX_UNROLL: usize = 4;
const ARGMAX_THREADS: usize = 1024;

/// Per row of x [n, v]: the index of the largest value, the lower index on ties (what every greedy
/// step and verifier compares), as i32. One cube per row; each thread keeps its best of
/// `ARGMAX_UNROLL` vectors of `width` values per step, then the cube reduces the pairs.
#[cube(launch_unchecked)]
fn argmax_kernel<F: Float, N: Size>(x: &Array<Vector<F, N>>, out: &mut Array<i32>, vectors: usize, #[comptime] threads: usize, #[define(F)] _dtype: StorageType) {
    let row = CUBE_POS_X as usize;
    let tid = UNIT_POS_X as usize;
    let width = x.vector_size();
    let base = row * vectors;
    let mut bv = f32::new(-3.0e38);
    let mut bi = 0xFFFF_FFFFu32;
    let mut j = tid;
    while j < vectors {
        let mut vals = Array::<Vector<F, N>>::new(ARGMAX_UNROLL);
        // Every load is issued before any is used (a past-the-row slot reads vector 0, then is skipped).
        #[unroll]
        for q in 0..ARGMAX_UNROLL {
            let jq = j + q * threads;
            let mut at = 0usize;
            if jq < vectors {
                at = jq;
            }
            vals[q] = x[base + at];
        }
        #[unroll]
        for q in 0..ARGMAX_UNROLL {
            let jq = j + q * threads;
            if jq < vectors {
                let vq = vals[q];
                #[unroll]
                for e in 0..width {
                    let xv = f32::cast_from(vq[e]);
                    let ie = u32::cast_from(jq * width + e);
                    if before(xv, ie, bv, bi) {
                        bv = xv;
                        bi = ie;
                    }
                }
            }
        }
        j += comptime!(ARGMAX_UNROLL * threads);
    }
    let mut red_v = SharedMemory::<f32>::new(threads);
    let mut red_i = SharedMemory::<u32>::new(threads);
    red_v[tid] = bv;
    red_i[tid] = bi;
    block_argmax(&mut red_v, &mut red_i);
    if tid == 0 {
        // A row of only NaN or -inf keeps the sentinel: report index 0.
        let mut best = red_i[0];
        if best == 0xFFFF_FFFFu32 {
            best = 0u32;
        }
        out[row] = i32::cast_from(best);
    }
}

/// x [n, v] -> [n] i32 (as the backend's int tensor).
pub(crate) fn argmax<R: CubeRuntime>(x: CubeTensor<R>) -> CubeTensor<R> {
    let [n, v] = x.meta.shape().dims::<2>();
    let dtype = x.dtype;
    let x = into_contiguous(x);
    let out = empty_device_contiguous_dtype::<R>(x.client.clone(), x.device.clone(), Shape::new([n]), DType::I32);
    let client = x.client.clone();
    let count = CubeCount::Static(n as u32, 1, 1);
    let dim = CubeDim::new_1d(ARGMAX_THREADS as u32);
    // SAFETY: one cube per row; vectors read at < v / width per row (rows are contiguous and, with
    // width 8, v % 8 == 0 keeps every row start aligned); one output per row.
    unsafe {
        if v % 8 == 0 {
            argmax_kernel::launch_unchecked::<R>(&client, count, dim, 8, x.into_array_arg(), out.clone().into_array_arg(), v / 8, ARGMAX_THREADS, dtype.into())
        } else {
            argmax_kernel::launch_unchecked::<R>(&client, count, dim, 1, x.into_array_arg(), out.clone().into_array_arg(), v, ARGMAX_THREADS, dtype.into())
        }
    };
    out
}

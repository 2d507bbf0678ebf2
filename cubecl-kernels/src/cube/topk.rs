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

#[cube(launch_unchecked)]
fn topk_kernel<F: Float>(x: &Tensor<F>, out: &mut Tensor<f32>, v: usize, k: usize, #[comptime] threads: usize, #[define(F)] _dtype: StorageType) {
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
            x.into_tensor_arg(),
            out.clone().into_tensor_arg(),
            v,
            k,
            THREADS,
            dtype.into(),
        )
    };
    out
}

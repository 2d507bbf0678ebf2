//! Small-M matrix products `y[M, N] = x[M, K] W[K, N]` for decode steps and verification batches.
//!
//! One cube covers `N_TILE` output columns and `m_tile` rows of x; its threads are a
//! `N_TILE x k_split` grid: the x lane walks columns (consecutive lanes read consecutive weight words,
//! so every warp load is one contiguous run), the y lane strides over K. Each thread keeps `m_tile`
//! f32 accumulators, so a weight element is loaded once and used for every row of the tile; the
//! k-split partial sums meet in shared memory at the end. Larger M runs more tiles over the same
//! weights, which then come from L2.

use burn::tensor::Shape;
use burn_cubecl::{kernel::into_contiguous, ops::numeric::empty_device_dtype, tensor::CubeTensor, CubeRuntime};
use cubecl::prelude::*;

/// Output columns per cube (one warp wide).
const N_TILE: usize = 32;

/// Rows of x per cube, and threads along K: the shared reduction buffer stays at 16 KiB and small M
/// gets more threads in flight per column.
fn tiles(m: usize) -> (usize, usize) {
    match m {
        1 => (1, 32),
        2 => (2, 32),
        3..=4 => (4, 32),
        5..=8 => (8, 16),
        _ => (16, 8),
    }
}

/// Sum each accumulator over the k-split lanes and write row `m0 + i`, column `col`.
#[cube]
fn reduce_store<F: Float>(
    acc: &Array<f32>,
    out: &mut Tensor<F>,
    m0: usize,
    m: usize,
    n: usize,
    col: usize,
    #[comptime] m_tile: usize,
    #[comptime] k_split: usize,
) {
    let tx = UNIT_POS_X as usize;
    let ks = UNIT_POS_Y as usize;
    let mut red = SharedMemory::<f32>::new(m_tile * k_split * N_TILE);
    #[unroll]
    for i in 0..m_tile {
        red[(i * k_split + ks) * N_TILE + tx] = acc[i];
    }
    sync_cube();
    let mut i = ks;
    while i < m_tile {
        let row = m0 + i;
        if row < m && col < n {
            let mut sum = 0.0f32;
            #[unroll]
            for s in 0..k_split {
                sum += red[(i * k_split + s) * N_TILE + tx];
            }
            out[row * n + col] = F::cast_from(sum);
        }
        i += k_split;
    }
}

#[cube(launch)]
fn dense_kernel<F: Float>(
    x: &Tensor<F>,
    w: &Tensor<F>,
    out: &mut Tensor<F>,
    m: usize,
    k: usize,
    n: usize,
    #[comptime] m_tile: usize,
    #[comptime] k_split: usize,
    #[define(F)] _dtype: StorageType,
) {
    let col = CUBE_POS_X as usize * N_TILE + UNIT_POS_X as usize;
    let m0 = CUBE_POS_Y as usize * m_tile;
    let mut acc = Array::<f32>::new(m_tile);
    #[unroll]
    for i in 0..m_tile {
        acc[i] = 0.0f32;
    }
    if col < n {
        // Four rows per step: four independent loads in flight per thread.
        let mut kk = UNIT_POS_Y as usize * 4;
        while kk + 4 <= k {
            #[unroll]
            for r in 0..4usize {
                let wv = f32::cast_from(w[(kk + r) * n + col]);
                #[unroll]
                for i in 0..m_tile {
                    let row = if m0 + i < m { m0 + i } else { m - 1 };
                    acc[i] += f32::cast_from(x[row * k + kk + r]) * wv;
                }
            }
            kk += k_split * 4;
        }
        // The tail of K (< 4 rows) belongs to the lane whose next step would have covered it.
        if kk < k {
            while kk < k {
                let wv = f32::cast_from(w[kk * n + col]);
                #[unroll]
                for i in 0..m_tile {
                    let row = if m0 + i < m { m0 + i } else { m - 1 };
                    acc[i] += f32::cast_from(x[row * k + kk]) * wv;
                }
                kk += 1;
            }
        }
    }
    reduce_store::<F>(&acc, out, m0, m, n, col, m_tile, k_split);
}

#[cube(launch)]
fn int4_kernel<F: Float>(
    x: &Tensor<F>,
    qweight: &Tensor<u32>,
    scales: &Tensor<F>,
    offsets: &Tensor<F>,
    out: &mut Tensor<F>,
    m: usize,
    k: usize,
    n: usize,
    group: usize,
    #[comptime] m_tile: usize,
    #[comptime] k_split: usize,
    #[comptime] asymmetric: bool,
    #[define(F)] _dtype: StorageType,
) {
    let col = CUBE_POS_X as usize * N_TILE + UNIT_POS_X as usize;
    let m0 = CUBE_POS_Y as usize * m_tile;
    let mut acc = Array::<f32>::new(m_tile);
    #[unroll]
    for i in 0..m_tile {
        acc[i] = 0.0f32;
    }
    if col < n {
        let words = (k + 7) / 8;
        let mut wi = UNIT_POS_Y as usize;
        while wi < words {
            let word = qweight[wi * n + col];
            let k0 = wi * 8;
            // A word never straddles groups (group is a multiple of 8 or the whole row), so its
            // scale and offset are read once.
            let gi = (k0 / group) * n + col;
            let scale = f32::cast_from(scales[gi]);
            let mut offset = scale * -8.0f32;
            if comptime!(asymmetric) {
                offset = f32::cast_from(offsets[gi]);
            }
            #[unroll]
            for j in 0..8u32 {
                let kk = k0 + j as usize;
                if kk < k {
                    let wv = f32::cast_from((word >> (4 * j)) & 15u32) * scale + offset;
                    #[unroll]
                    for i in 0..m_tile {
                        let row = if m0 + i < m { m0 + i } else { m - 1 };
                        acc[i] += f32::cast_from(x[row * k + kk]) * wv;
                    }
                }
            }
            wi += k_split;
        }
    }
    reduce_store::<F>(&acc, out, m0, m, n, col, m_tile, k_split);
}

fn launch_dims(m: usize, n: usize) -> (usize, usize, CubeCount, CubeDim) {
    let (m_tile, k_split) = tiles(m);
    let count = CubeCount::Static(n.div_ceil(N_TILE) as u32, m.div_ceil(m_tile) as u32, 1);
    (m_tile, k_split, count, CubeDim::new_2d(N_TILE as u32, k_split as u32))
}

/// x [m, k] (any dtype the kernel is built for), w [k, n] of the same dtype.
pub(crate) fn dense<R: CubeRuntime>(x: CubeTensor<R>, w: CubeTensor<R>) -> CubeTensor<R> {
    let (x, w) = (into_contiguous(x), into_contiguous(w));
    let [m, k] = x.meta.shape().dims::<2>();
    let n = w.meta.shape().dims::<2>()[1];
    let dtype = x.dtype;
    let out = empty_device_dtype::<R>(x.client.clone(), x.device.clone(), Shape::new([m, n]), dtype);
    let (m_tile, k_split, count, dim) = launch_dims(m, n);
    dense_kernel::launch::<R>(
        &x.client.clone(),
        count,
        dim,
        x.into_tensor_arg(),
        w.into_tensor_arg(),
        out.clone().into_tensor_arg(),
        m,
        k,
        n,
        m_tile,
        k_split,
        dtype.into(),
    );
    out
}

/// x [m, k]; qweight [ceil(k / 8), n] 32-bit words; scales (and offsets) [k / group, n] in x's dtype.
pub(crate) fn int4<R: CubeRuntime>(
    x: CubeTensor<R>,
    qweight: CubeTensor<R>,
    scales: CubeTensor<R>,
    offsets: Option<CubeTensor<R>>,
    k: usize,
    group: usize,
) -> CubeTensor<R> {
    let x = into_contiguous(x);
    let m = x.meta.shape().dims::<2>()[0];
    let n = qweight.meta.shape().dims::<2>()[1];
    let dtype = x.dtype;
    let out = empty_device_dtype::<R>(x.client.clone(), x.device.clone(), Shape::new([m, n]), dtype);
    let (m_tile, k_split, count, dim) = launch_dims(m, n);
    let asymmetric = offsets.is_some();
    // The symmetric kernel never reads `offsets`; any float tensor fills the slot.
    let offsets = offsets.unwrap_or_else(|| scales.clone());
    int4_kernel::launch::<R>(
        &x.client.clone(),
        count,
        dim,
        x.into_tensor_arg(),
        into_contiguous(qweight).into_tensor_arg(),
        into_contiguous(scales).into_tensor_arg(),
        into_contiguous(offsets).into_tensor_arg(),
        out.clone().into_tensor_arg(),
        m,
        k,
        n,
        group,
        m_tile,
        k_split,
        asymmetric,
        dtype.into(),
    );
    out
}

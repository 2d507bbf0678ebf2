//! Small-M matrix products `y[M, N] = x[M, K] W[K, N]` for decode steps and verification batches.
//!
//! One cube covers `N_TILE` output columns and `m_tile` rows of x; its threads are a
//! `N_TILE x k_split` grid: the x lane walks columns (consecutive lanes read consecutive weight words,
//! so every warp load is one contiguous run), the y lane strides over K. Each thread keeps `m_tile`
//! f32 accumulators, so a weight element is loaded once and used for every row of the tile; the
//! k-split partial sums meet in shared memory at the end. Larger M runs more tiles over the same
//! weights, which then come from L2.
//!
//! Weights are read through their strides: cubecl may allocate 2-D tensors with padded rows (pitched
//! layouts), and copying a weight on every call would cost more than the product. The small x is made
//! contiguous (a no-op when it already is) so its index math stays simple. Outputs are contiguous.
//! Launches are unchecked: every index is bounded by the kernel's own guards.

use burn::tensor::Shape;
use burn_cubecl::{kernel::into_contiguous, ops::numeric::empty_device_contiguous_dtype, tensor::CubeTensor, CubeRuntime};
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

/// Stage rows [m0, m0 + m_tile) of x, columns [k0, k0 + chunk), into shared memory as f32 (zero
/// past K): every lane of a warp then reads the same x element from shared memory (a broadcast)
/// instead of issuing its own global load per weight element.
#[cube]
fn stage_x<F: Float>(
    x: &Tensor<F>,
    x_s: &mut SharedMemory<f32>,
    m0: usize,
    m: usize,
    k: usize,
    k0: usize,
    #[comptime] m_tile: usize,
    #[comptime] chunk: usize,
    #[comptime] threads: usize,
) {
    let mut e = UNIT_POS_Y as usize * N_TILE + UNIT_POS_X as usize;
    while e < m_tile * chunk {
        let i = e / chunk;
        let kk = k0 + e % chunk;
        let row = if m0 + i < m { m0 + i } else { m - 1 };
        let mut v = 0.0f32;
        if kk < k {
            v = f32::cast_from(x[row * k + kk]);
        }
        x_s[e] = v;
        e += threads;
    }
}

#[cube(launch_unchecked)]
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
    let ks = UNIT_POS_Y as usize;
    let mut acc = Array::<f32>::new(m_tile);
    #[unroll]
    for i in 0..m_tile {
        acc[i] = 0.0f32;
    }
    // Each chunk of K: every k-lane takes 4 consecutive rows (four loads in flight per thread).
    let chunk = comptime!(4 * k_split);
    let mut x_s = SharedMemory::<f32>::new(m_tile * chunk);
    let mut k0 = 0usize;
    while k0 < k {
        stage_x::<F>(x, &mut x_s, m0, m, k, k0, m_tile, chunk, N_TILE * k_split);
        sync_cube();
        if col < n {
            #[unroll]
            for r in 0..4usize {
                let lk = ks * 4 + r;
                let kk = k0 + lk;
                if kk < k {
                    let wv = f32::cast_from(w[kk * w.stride(0) + col * w.stride(1)]);
                    #[unroll]
                    for i in 0..m_tile {
                        acc[i] += x_s[i * chunk + lk] * wv;
                    }
                }
            }
        }
        sync_cube();
        k0 += chunk;
    }
    reduce_store::<F>(&acc, out, m0, m, n, col, m_tile, k_split);
}

#[cube(launch_unchecked)]
fn int4_kernel<F: Float>(
    x: &Tensor<F>,
    qweight: &Tensor<i32>,
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
    let ks = UNIT_POS_Y as usize;
    let mut acc = Array::<f32>::new(m_tile);
    #[unroll]
    for i in 0..m_tile {
        acc[i] = 0.0f32;
    }
    // Each chunk of K covers 4 words (32 rows) per k-lane: four independent word loads in flight.
    let chunk_words = comptime!(4 * k_split);
    let chunk = comptime!(32 * k_split);
    let mut x_s = SharedMemory::<f32>::new(m_tile * chunk);
    let words = (k + 7) / 8;
    let mut w0 = 0usize;
    while w0 < words {
        stage_x::<F>(x, &mut x_s, m0, m, k, w0 * 8, m_tile, chunk, N_TILE * k_split);
        sync_cube();
        if col < n {
            #[unroll]
            for u in 0..4usize {
                let lw = ks + u * k_split;
                let wi = w0 + lw;
                if wi < words {
                    let word = qweight[wi * qweight.stride(0) + col * qweight.stride(1)];
                    // A word never straddles groups (group is a multiple of 8 or the whole row),
                    // so its scale and offset are read once.
                    let g = (wi * 8) / group;
                    let scale = f32::cast_from(scales[g * scales.stride(0) + col * scales.stride(1)]);
                    let mut offset = scale * -8.0f32;
                    if comptime!(asymmetric) {
                        offset = f32::cast_from(offsets[g * offsets.stride(0) + col * offsets.stride(1)]);
                    }
                    // Rows past K (a partial last word) meet zeros in x_s.
                    #[unroll]
                    for j in 0..8u32 {
                        let wv = f32::cast_from((word >> (4 * j) as i32) & 15i32) * scale + offset;
                        let lk = lw * 8 + j as usize;
                        #[unroll]
                        for i in 0..m_tile {
                            acc[i] += x_s[i * chunk + lk] * wv;
                        }
                    }
                }
            }
        }
        sync_cube();
        w0 += chunk_words;
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
    let [m, k] = x.meta.shape().dims::<2>();
    let n = w.meta.shape().dims::<2>()[1];
    let dtype = x.dtype;
    let out = empty_device_contiguous_dtype::<R>(x.client.clone(), x.device.clone(), Shape::new([m, n]), dtype);
    let (m_tile, k_split, count, dim) = launch_dims(m, n);
    let x = into_contiguous(x);
    // SAFETY: every index is bounded in the kernel: columns by `col < n`, rows of x clamped to
    // m - 1, K by the loop bounds, groups by k0 < k.
    unsafe { dense_kernel::launch_unchecked::<R>(
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
    ) };
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
    let m = x.meta.shape().dims::<2>()[0];
    let n = qweight.meta.shape().dims::<2>()[1];
    let dtype = x.dtype;
    let out = empty_device_contiguous_dtype::<R>(x.client.clone(), x.device.clone(), Shape::new([m, n]), dtype);
    let (m_tile, k_split, count, dim) = launch_dims(m, n);
    let asymmetric = offsets.is_some();
    // The symmetric kernel never reads `offsets`; any float tensor fills the slot.
    let offsets = offsets.unwrap_or_else(|| scales.clone());
    let x = into_contiguous(x);
    // SAFETY: as for `dense`.
    unsafe { int4_kernel::launch_unchecked::<R>(
        &x.client.clone(),
        count,
        dim,
        x.into_tensor_arg(),
        qweight.into_tensor_arg(),
        scales.into_tensor_arg(),
        offsets.into_tensor_arg(),
        out.clone().into_tensor_arg(),
        m,
        k,
        n,
        group,
        m_tile,
        k_split,
        asymmetric,
        dtype.into(),
    ) };
    out
}

//! Small-M products `y[M, N0 + N1 + N2] = f(x)[M, K] [W0 | W1 | W2] (+ bias) (+ residual)` for decode
//! steps and verification batches, with dense or int4 weights: one launch for q|k|v or gate|up, the
//! bias and the residual add in the epilogue, and SwiGLU (`silu(gate) * up`) applied while x is
//! staged, so down_proj reads gate|up directly.
//!
//! One cube covers `N_TILE` output columns of one part and `m_tile` rows of x; its threads are an
//! `N_TILE x K_SPLIT` grid: the x lane walks columns (consecutive lanes read consecutive weight words,
//! so every warp load is one contiguous run), the y lane strides over K. x is staged in shared memory
//! as f32 (one broadcast read per weight element); each thread keeps `m_tile` f32 accumulators, so a
//! weight element is loaded once per tile; the K_SPLIT partial sums meet in shared memory at the end.
//!
//! Batch invariance: K_SPLIT is the same for every M, and a row's products and sums run in the same
//! order whatever tile it sits in, so each output row is bitwise the same for M = 1 and M = 64.
//! Verifying a draft then reproduces exactly the logits AR decoding computes, in bf16 too.
//!
//! Weights are read through their strides (cubecl may allocate 2-D tensors with pitched rows, and
//! copying a weight per call would cost more than the product). Launches are unchecked: every index
//! is bounded by the kernel's own guards.

use burn::tensor::Shape;
use burn_cubecl::{kernel::into_contiguous, ops::numeric::empty_device_contiguous_dtype, tensor::CubeTensor};
use cubecl::prelude::*;

/// Output columns per cube (one warp wide).
const N_TILE: usize = 32;
/// Threads along K, for every M (batch invariance).
const K_SPLIT: usize = 32;

/// Rows of x per cube. Each tile reads (and dequantizes) the whole weight once, so fewer, taller
/// tiles cost less at M = 16..128; the shared buffer stays within 32 KiB (see `buf_len`).
fn m_tile(m: usize) -> usize {
    match m {
        1 => 1,
        2 => 2,
        3..=4 => 4,
        5..=8 => 8,
        _ => 16,
    }
}

/// Rows summed per reduction pass (the reduction buffer holds `REDUCE_ROWS x K_SPLIT x N_TILE`).
const REDUCE_ROWS: usize = 8;

/// int4 words each k-lane takes per staged chunk of K: 4 (four loads in flight) up to 8 rows per tile,
/// 2 for 16-row tiles so the staged x still fits. A lane walks the same words in the same order either
/// way (words ks, ks + K_SPLIT, ks + 2 K_SPLIT, ...), so the sums do not depend on the tile.
fn words_per_lane(m_tile: usize) -> usize {
    if m_tile > 8 {
        2
    } else {
        4
    }
}

/// f32 elements of the shared buffer: x staging (m_tile x chunk) and the reduction share it.
fn buf_len(m_tile: usize, chunk: usize) -> usize {
    (m_tile * chunk).max(m_tile.min(REDUCE_ROWS) * K_SPLIT * N_TILE)
}

/// Stage rows [m0, m0 + m_tile) of x, columns [k0, k0 + chunk), into shared memory as f32 (zero past
/// K). With `swiglu`, x is [M, 2K] = gate | up and the staged value is silu(gate) * up.
#[cube]
fn stage_x<F: Float>(
    x: &Tensor<F>,
    x_s: &mut Shared<[f32]>,
    m0: usize,
    m: usize,
    k: usize,
    k0: usize,
    #[comptime] m_tile: usize,
    #[comptime] chunk: usize,
    #[comptime] swiglu: bool,
) {
    let mut e = UNIT_POS_Y as usize * N_TILE + UNIT_POS_X as usize;
    while e < m_tile * chunk {
        let i = e / chunk;
        let kk = k0 + e % chunk;
        let row = if m0 + i < m { m0 + i } else { m - 1 };
        let mut v = 0.0f32;
        if kk < k {
            if comptime!(swiglu) {
                let g = f32::cast_from(x[row * 2 * k + kk]);
                let u = f32::cast_from(x[row * 2 * k + k + kk]);
                v = g / (1.0f32 + (0.0f32 - g).exp()) * u;
            } else {
                v = f32::cast_from(x[row * k + kk]);
            }
        }
        x_s[e] = v;
        e += N_TILE * K_SPLIT;
    }
}

/// Accumulate `x W` for column `col` of a dense weight [K, n] into `acc` (one value per tile row).
#[cube]
fn dense_acc<F: Float>(
    x: &Tensor<F>,
    w: &Tensor<F>,
    x_s: &mut Shared<[f32]>,
    acc: &mut Array<f32>,
    col: usize,
    n: usize,
    m0: usize,
    m: usize,
    k: usize,
    #[comptime] m_tile: usize,
    #[comptime] swiglu: bool,
) {
    let ks = UNIT_POS_Y as usize;
    // Each chunk of K: every k-lane takes 4 consecutive rows (four loads in flight per thread).
    let chunk = comptime!(4 * K_SPLIT);
    let mut k0 = 0usize;
    while k0 < k {
        stage_x::<F>(x, x_s, m0, m, k, k0, m_tile, chunk, swiglu);
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
}

/// Accumulate `x dequant(W)` for column `col` of an int4 weight (words [ceil(K / 8), n]).
#[cube]
fn int4_acc<F: Float>(
    x: &Tensor<F>,
    qweight: &Tensor<i32>,
    scales: &Tensor<F>,
    offsets: &Tensor<F>,
    x_s: &mut Shared<[f32]>,
    acc: &mut Array<f32>,
    col: usize,
    n: usize,
    m0: usize,
    m: usize,
    k: usize,
    group: usize,
    #[comptime] m_tile: usize,
    #[comptime] wpl: usize,
    #[comptime] asymmetric: bool,
    #[comptime] swiglu: bool,
) {
    let ks = UNIT_POS_Y as usize;
    // Each chunk of K covers `wpl` words (8 wpl rows) per k-lane: independent word loads in flight.
    let chunk_words = comptime!(wpl * K_SPLIT);
    let chunk = comptime!(8 * wpl * K_SPLIT);
    let words = (k + 7) / 8;
    let mut w0 = 0usize;
    while w0 < words {
        stage_x::<F>(x, x_s, m0, m, k, w0 * 8, m_tile, chunk, swiglu);
        sync_cube();
        if col < n {
            #[unroll]
            for u in 0..wpl {
                let lw = ks + u * K_SPLIT;
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
}

/// Sum each accumulator over the k-lanes, add the bias and the residual, write row `m0 + i` at output
/// column `out_col` (of `n_out`). Rows go through the buffer `REDUCE_ROWS` at a time.
#[cube]
fn store<F: Float>(
    acc: &Array<f32>,
    red: &mut Shared<[f32]>,
    out: &mut Tensor<F>,
    residual: &Tensor<F>,
    m0: usize,
    m: usize,
    n_out: usize,
    out_col: usize,
    valid: bool,
    bias: f32,
    #[comptime] m_tile: usize,
    #[comptime] add_residual: bool,
) {
    let tx = UNIT_POS_X as usize;
    let ks = UNIT_POS_Y as usize;
    let pass_rows = comptime!(if m_tile > REDUCE_ROWS { REDUCE_ROWS } else { m_tile });
    let passes = comptime!(m_tile / pass_rows);
    #[unroll]
    for p in 0..passes {
        // The buffer's previous use (x staging, or the previous pass) is over.
        sync_cube();
        #[unroll]
        for i in 0..pass_rows {
            red[(i * K_SPLIT + ks) * N_TILE + tx] = acc[p * pass_rows + i];
        }
        sync_cube();
        let mut i = ks;
        while i < pass_rows {
            let row = m0 + p * pass_rows + i;
            if row < m && valid {
                let mut sum = 0.0f32;
                #[unroll]
                for s in 0..K_SPLIT {
                    sum += red[(i * K_SPLIT + s) * N_TILE + tx];
                }
                sum += bias;
                if comptime!(add_residual) {
                    sum += f32::cast_from(residual[row * n_out + out_col]);
                }
                out[row * n_out + out_col] = F::cast_from(sum);
            }
            i += K_SPLIT;
        }
    }
}

/// Where this cube's columns lie: (part, column within the part, first output column of the part).
/// Parts are laid out along the grid's x axis: cubes [0, c1) part 0, [c1, c2) part 1, the rest part 2.
#[cube]
fn locate(c1: usize, c2: usize, n0: usize, n1: usize) -> (u32, usize, usize) {
    let cx = CUBE_POS_X as usize;
    let tx = UNIT_POS_X as usize;
    let mut part = 0u32;
    let mut col = cx * N_TILE + tx;
    let mut first = 0usize;
    if cx >= c2 {
        part = 2u32;
        col = (cx - c2) * N_TILE + tx;
        first = n0 + n1;
    } else if cx >= c1 {
        part = 1u32;
        col = (cx - c1) * N_TILE + tx;
        first = n0;
    }
    (part, col, first)
}

#[cube(launch_unchecked)]
fn dense_kernel<F: Float>(
    x: &Tensor<F>,
    w0: &Tensor<F>,
    w1: &Tensor<F>,
    w2: &Tensor<F>,
    b0: &Tensor<F>,
    b1: &Tensor<F>,
    b2: &Tensor<F>,
    residual: &Tensor<F>,
    out: &mut Tensor<F>,
    m: usize,
    k: usize,
    n0: usize,
    n1: usize,
    n2: usize,
    c1: usize,
    c2: usize,
    #[comptime] m_tile: usize,
    #[comptime] buf_len: usize,
    #[comptime] bias: bool,
    #[comptime] add_residual: bool,
    #[comptime] swiglu: bool,
    #[define(F)] _dtype: ElemType,
) {
    let m0 = CUBE_POS_Y as usize * m_tile;
    let mut buf = Shared::<[f32]>::new_slice(buf_len);
    let mut acc = Array::<f32>::new(m_tile);
    #[unroll]
    for i in 0..m_tile {
        acc[i] = 0.0f32;
    }
    let (part, col, first) = locate(c1, c2, n0, n1);
    let mut n = n0;
    let mut b = 0.0f32;
    if part == 0u32 {
        dense_acc::<F>(x, w0, &mut buf, &mut acc, col, n0, m0, m, k, m_tile, swiglu);
        if comptime!(bias) {
            if col < n0 {
                b = f32::cast_from(b0[col]);
            }
        }
    } else if part == 1u32 {
        n = n1;
        dense_acc::<F>(x, w1, &mut buf, &mut acc, col, n1, m0, m, k, m_tile, swiglu);
        if comptime!(bias) {
            if col < n1 {
                b = f32::cast_from(b1[col]);
            }
        }
    } else {
        n = n2;
        dense_acc::<F>(x, w2, &mut buf, &mut acc, col, n2, m0, m, k, m_tile, swiglu);
        if comptime!(bias) {
            if col < n2 {
                b = f32::cast_from(b2[col]);
            }
        }
    }
    store::<F>(&acc, &mut buf, out, residual, m0, m, n0 + n1 + n2, first + col, col < n, b, m_tile, add_residual);
}

#[cube(launch_unchecked)]
fn int4_kernel<F: Float>(
    x: &Tensor<F>,
    q0: &Tensor<i32>,
    q1: &Tensor<i32>,
    q2: &Tensor<i32>,
    s0: &Tensor<F>,
    s1: &Tensor<F>,
    s2: &Tensor<F>,
    o0: &Tensor<F>,
    o1: &Tensor<F>,
    o2: &Tensor<F>,
    b0: &Tensor<F>,
    b1: &Tensor<F>,
    b2: &Tensor<F>,
    residual: &Tensor<F>,
    out: &mut Tensor<F>,
    m: usize,
    k: usize,
    n0: usize,
    n1: usize,
    n2: usize,
    c1: usize,
    c2: usize,
    group: usize,
    #[comptime] m_tile: usize,
    #[comptime] wpl: usize,
    #[comptime] buf_len: usize,
    #[comptime] asymmetric: bool,
    #[comptime] bias: bool,
    #[comptime] add_residual: bool,
    #[comptime] swiglu: bool,
    #[define(F)] _dtype: ElemType,
) {
    let m0 = CUBE_POS_Y as usize * m_tile;
    let mut buf = Shared::<[f32]>::new_slice(buf_len);
    let mut acc = Array::<f32>::new(m_tile);
    #[unroll]
    for i in 0..m_tile {
        acc[i] = 0.0f32;
    }
    let (part, col, first) = locate(c1, c2, n0, n1);
    let mut n = n0;
    let mut b = 0.0f32;
    if part == 0u32 {
        int4_acc::<F>(x, q0, s0, o0, &mut buf, &mut acc, col, n0, m0, m, k, group, m_tile, wpl, asymmetric, swiglu);
        if comptime!(bias) {
            if col < n0 {
                b = f32::cast_from(b0[col]);
            }
        }
    } else if part == 1u32 {
        n = n1;
        int4_acc::<F>(x, q1, s1, o1, &mut buf, &mut acc, col, n1, m0, m, k, group, m_tile, wpl, asymmetric, swiglu);
        if comptime!(bias) {
            if col < n1 {
                b = f32::cast_from(b1[col]);
            }
        }
    } else {
        n = n2;
        int4_acc::<F>(x, q2, s2, o2, &mut buf, &mut acc, col, n2, m0, m, k, group, m_tile, wpl, asymmetric, swiglu);
        if comptime!(bias) {
            if col < n2 {
                b = f32::cast_from(b2[col]);
            }
        }
    }
    store::<F>(&acc, &mut buf, out, residual, m0, m, n0 + n1 + n2, first + col, col < n, b, m_tile, add_residual);
}

/// One part's weight, as the kernels read it.
pub(crate) enum PartWeight {
    /// [k, n]
    Dense(CubeTensor),
    /// words [ceil(k / 8), n], scales (and offsets) [k / group, n].
    Int4 { qweight: CubeTensor, scales: CubeTensor, offsets: Option<CubeTensor>, group: usize },
}

pub(crate) struct Part {
    pub n: usize,
    pub weight: PartWeight,
    pub bias: Option<CubeTensor>,
}

/// `x [m, k]` (`[m, 2k]` with `swiglu`) times 1 to 3 parts of one kind (all dense, or all int4 with
/// one group size and symmetry), every part with a bias or none, plus `residual [m, sum n]`. The
/// caller checks the kinds match.
pub(crate) fn product(x: CubeTensor, k: usize, swiglu: bool, parts: Vec<Part>, residual: Option<CubeTensor>) -> CubeTensor {
    assert!((1..=3).contains(&parts.len()), "1 to 3 parts");
    let m = x.meta.shape().dims::<2>()[0];
    let dtype = x.dtype;
    let ns: Vec<usize> = (0..3).map(|i| parts.get(i).map_or(0, |p| p.n)).collect();
    let n_out: usize = ns.iter().sum();
    let out = empty_device_contiguous_dtype(x.client.clone(), x.device.clone(), Shape::new([m, n_out]), dtype);
    let cubes: Vec<usize> = ns.iter().map(|n| n.div_ceil(N_TILE)).collect();
    let (c1, c2) = (cubes[0], cubes[0] + cubes[1]);
    let mt = m_tile(m);
    let count = CubeCount::Static((c2 + cubes[2]) as u32, m.div_ceil(mt) as u32, 1);
    let dim = CubeDim::new_2d(N_TILE as u32, K_SPLIT as u32);
    let bias = parts.iter().all(|p| p.bias.is_some());
    let add_residual = residual.is_some();
    let x = into_contiguous(x);
    let client = x.client.clone();
    // Unused slots (missing parts, no bias, no residual) are filled with a tensor the kernel never
    // reads there: absent parts have no cubes, the flags are comptime.
    let fill = |i: usize| parts.get(i).unwrap_or(&parts[0]);
    let bias_of = |i: usize| fill(i).bias.clone().unwrap_or_else(|| x.clone());
    let residual = residual.map(into_contiguous).unwrap_or_else(|| x.clone());
    match &parts[0].weight {
        PartWeight::Dense(_) => {
            let w = |i: usize| match &fill(i).weight {
                PartWeight::Dense(w) => w.clone(),
                PartWeight::Int4 { .. } => unreachable!("parts of one kind"),
            };
            // SAFETY: columns are bounded by each part's n, rows of x clamped to m - 1, K by the loop
            // bounds; absent parts own no cubes.
            unsafe {
                dense_kernel::launch_unchecked(
                    &client,
                    count,
                    dim,
                    x.clone().into_tensor_arg(),
                    w(0).into_tensor_arg(),
                    w(1).into_tensor_arg(),
                    w(2).into_tensor_arg(),
                    bias_of(0).into_tensor_arg(),
                    bias_of(1).into_tensor_arg(),
                    bias_of(2).into_tensor_arg(),
                    residual.into_tensor_arg(),
                    out.clone().into_tensor_arg(),
                    m,
                    k,
                    ns[0],
                    ns[1],
                    ns[2],
                    c1,
                    c2,
                    mt,
                    buf_len(mt, 4 * K_SPLIT),
                    bias,
                    add_residual,
                    swiglu,
                    super::elem(dtype),
                )
            };
        }
        PartWeight::Int4 { group, offsets, .. } => {
            let asymmetric = offsets.is_some();
            let q = |i: usize| match &fill(i).weight {
                PartWeight::Int4 { qweight, scales, offsets, .. } => {
                    // The symmetric kernel never reads offsets; the scales fill the slot.
                    (qweight.clone(), scales.clone(), offsets.clone().unwrap_or_else(|| scales.clone()))
                }
                PartWeight::Dense(_) => unreachable!("parts of one kind"),
            };
            let (q0, s0, o0) = q(0);
            let (q1, s1, o1) = q(1);
            let (q2, s2, o2) = q(2);
            // SAFETY: as for the dense kernel; groups are bounded by k / group.
            unsafe {
                int4_kernel::launch_unchecked(
                    &client,
                    count,
                    dim,
                    x.clone().into_tensor_arg(),
                    q0.into_tensor_arg(),
                    q1.into_tensor_arg(),
                    q2.into_tensor_arg(),
                    s0.into_tensor_arg(),
                    s1.into_tensor_arg(),
                    s2.into_tensor_arg(),
                    o0.into_tensor_arg(),
                    o1.into_tensor_arg(),
                    o2.into_tensor_arg(),
                    bias_of(0).into_tensor_arg(),
                    bias_of(1).into_tensor_arg(),
                    bias_of(2).into_tensor_arg(),
                    residual.into_tensor_arg(),
                    out.clone().into_tensor_arg(),
                    m,
                    k,
                    ns[0],
                    ns[1],
                    ns[2],
                    c1,
                    c2,
                    *group,
                    mt,
                    words_per_lane(mt),
                    buf_len(mt, 8 * words_per_lane(mt) * K_SPLIT),
                    asymmetric,
                    bias,
                    add_residual,
                    swiglu,
                    super::elem(dtype),
                )
            };
        }
    }
    out
}

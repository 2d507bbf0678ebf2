//! The tensor-core small-M products and their packing kernels; the layout and the reasons are in
//! [`crate::mma`].
//!
//! Cube (x = token block, y = channel block): `warps` warps share `ct` channel tiles and `tt` token
//! tiles of 8 and split K by units (warp w: units w, w + warps, ...). Per unit a lane loads one
//! 16-byte weight vector per channel tile (int4) or four (dense), and two 16-byte x vectors per token
//! tile, then runs 4 k-slabs of mma. int4 units accumulate `P = (BIAS + q) . x` and, with an
//! all-ones A, `X = sum x`, then fold them into the f32 accumulator as `s P + (o - BIAS s) X` per
//! group of 32 or 64+ inputs. The warps' accumulators meet in shared memory in warp order; the
//! epilogue adds the bias and the residual, or writes silu(gate) * up for a gate|up pair.

use burn::tensor::{DType, Shape};
use burn_cubecl::{kernel::into_contiguous, ops::numeric::empty_device_contiguous_dtype, tensor::CubeTensor};
use cubecl::prelude::*;

use super::arg;

use crate::mma::{TILE_N, UNIT_K};

mod dense;
mod output;
mod int4;
mod pack;
mod policy;
pub(crate) use pack::{pack_dense, pack_int4};
use policy::{channel_tiles, fold_len, int4_ahead, int4_span, token_tiles, warps_for, x_share};
use dense::dense_mma_kernel;
use output::{epilogue, rope_arg, RopeOut};
use int4::int4_mma_kernel;

type V2<F> = Vector<F, Const<2>>;
type V8<F> = Vector<F, Const<8>>;
type W4 = Vector<i32, Const<4>>;

/// f32 slots of one warp's emulated slab: `ct` A tiles (16 x 16) and `tt` B tiles (16 x 8).
fn emu_slots(ct: usize, tt: usize) -> usize {
    ct * 256 + tt * 128
}

/// Shared f32 slots of a block: the epilogue's partial sums (128 per warp and channel tile), or the
/// emulated slab's operands if larger. With x shared (`share` warps) the totals have their own array
/// ([`total_len`]) and this holds the emulated slabs alone.
fn shared_len(warps: usize, ct: usize, tt: usize, emulate: bool, share: usize) -> usize {
    let epilogue = ct * 128;
    match (share, emulate) {
        (0, _) => warps * if emulate { epilogue.max(emu_slots(ct, tt)) } else { epilogue },
        (_, true) => share * emu_slots(ct, tt),
        (_, false) => 1,
    }
}

/// Shared f32 slots of the running totals with x shared: 128 per warp, token tile and channel tile.
fn total_len(ct: usize, tt: usize, share: usize) -> usize {
    (share * tt * ct * 128).max(1)
}

/// Shared f32 slots of the folded RMSNorm: each lane's sums of squares (per virtual warp and token
/// tile with x shared), then 1 / rms of 8 tokens.
fn norm_slots(warps: usize, tt: usize, norm: bool, share: usize) -> usize {
    let tiles = if share > 0 { tt } else { 1 };
    if norm { tiles * warps * 32 + 8 } else { 1 }
}

/// One k-slab's products for every (channel tile c, token tile i) of the block: `acc[c][i] += a[c]
/// b[i]` (m16n8k16 each, f32 accumulation) and, with `sums`, `xs[i] += ones b[i]` (every row of
/// that product is the column sum of b[i]). On the tensor cores; or (emulate) the same arithmetic
/// through shared memory in the PTX fragment layout, one exchange per slab, for runtimes without
/// them. All threads of the cube must call it equally often (the emulation synchronises the cube).
#[cube]
#[allow(clippy::too_many_arguments)]
fn slab_products<F: Float>(
    a: &Array<V2<F>>,
    b: &Array<V2<F>>,
    a_one: &Array<V2<F>>,
    acc: &mut Array<V2<f32>>,
    xs: &mut Array<V2<f32>>,
    emu: &mut Shared<[f32]>,
    #[comptime] ct: usize,
    #[comptime] tt: usize,
    #[comptime] sums: bool,
    #[comptime] emulate: bool,
) {
    if comptime!(emulate) {
        let lane = UNIT_POS_X as usize % 32usize;
        let base = (UNIT_POS_X as usize / 32usize) * comptime!(emu_slots(ct, tt));
        let g = lane / 4;
        let t = lane % 4;
        let b0 = comptime!(ct * 256);
        sync_cube();
        // A tiles [16 rows][16 k], then B tiles [16 k][8 columns].
        #[unroll]
        for c in 0usize..ct {
            #[unroll]
            for r in 0usize..4usize {
                let v = a[c * 4 + r];
                #[unroll]
                for e in 0usize..2usize {
                    emu[base + c * 256 + (g + 8 * (r % 2)) * 16 + 2 * t + 8 * (r / 2) + e] = f32::cast_from(v.extract(e));
                }
            }
        }
        #[unroll]
        for i in 0usize..tt {
            #[unroll]
            for r in 0usize..2usize {
                let v = b[i * 2 + r];
                #[unroll]
                for e in 0usize..2usize {
                    emu[base + b0 + i * 128 + (2 * t + 8 * r + e) * 8 + g] = f32::cast_from(v.extract(e));
                }
            }
        }
        sync_cube();
        #[unroll]
        for i in 0usize..tt {
            #[unroll]
            for e in 0usize..2usize {
                let col = base + b0 + i * 128 + 2 * t + e;
                if comptime!(sums) {
                    let mut s = 0.0f32;
                    for kk in 0usize..16usize {
                        s += emu[col + kk * 8];
                    }
                    #[unroll]
                    for r in 0usize..2usize {
                        let mut v = xs[i * 2 + r];
                        v.insert(e, v.extract(e) + s);
                        xs[i * 2 + r] = v;
                    }
                }
                #[unroll]
                for c in 0usize..ct {
                    #[unroll]
                    for r in 0usize..2usize {
                        let row = base + c * 256 + (g + 8 * r) * 16;
                        let mut s = 0.0f32;
                        for kk in 0usize..16usize {
                            s += emu[row + kk] * emu[col + kk * 8];
                        }
                        let j = (c * tt + i) * 2 + r;
                        let mut v = acc[j];
                        v.insert(e, v.extract(e) + s);
                        acc[j] = v;
                    }
                }
            }
        }
    } else {
        let def = cmma::MmaDefinition::<F, F, f32>::new(16usize, 8usize, 16usize);
        let mut a4 = Array::<V2<F>>::new(4usize);
        let mut b2 = Array::<V2<F>>::new(2usize);
        let mut c2 = Array::<V2<f32>>::new(2usize);
        #[unroll]
        for i in 0usize..tt {
            b2[0usize] = b[i * 2];
            b2[1usize] = b[i * 2 + 1];
            if comptime!(sums) {
                c2[0usize] = xs[i * 2];
                c2[1usize] = xs[i * 2 + 1];
                def.execute_inplace(a_one, &b2, &mut c2);
                xs[i * 2] = c2[0usize];
                xs[i * 2 + 1] = c2[1usize];
            }
            #[unroll]
            for c in 0usize..ct {
                #[unroll]
                for r in 0usize..4usize {
                    a4[r] = a[c * 4 + r];
                }
                let j = (c * tt + i) * 2;
                c2[0usize] = acc[j];
                c2[1usize] = acc[j + 1];
                def.execute_inplace(&a4, &b2, &mut c2);
                acc[j] = c2[0usize];
                acc[j + 1] = c2[1usize];
            }
        }
    }
}

/// One pair of F values from the bits of an i32 (the 16-bit dtypes), or two nibbles cast (f32, only
/// under emulation: `magic` 0).
#[cube]
fn pair<F: Float>(bits: i32, #[comptime] magic: i32) -> V2<F> {
    if comptime!(magic != 0) {
        V2::<F>::reinterpret(bits | magic)
    } else {
        let mut v = V2::<F>::new(F::new(0.0));
        v.insert(0usize, F::cast_from(bits & 15i32));
        v.insert(1usize, F::cast_from((bits >> 16i32) & 15i32));
        v
    }
}

/// B registers of slab `s` for every token tile, from the lane's two x vectors per tile at `xv[x0
/// ..]` (`h = s / 2` picks the vector, `s % 2` its half): `b[2 i + r]`.
#[cube]
fn b_regs<F: Float>(xv: &Array<V8<F>>, b: &mut Array<V2<F>>, #[comptime] tt: usize, #[comptime] s: usize, #[comptime] x0: usize) {
    let h = comptime!(s / 2);
    let o0 = comptime!(4 * (s % 2));
    let o1 = comptime!(4 * (s % 2) + 1);
    let o2 = comptime!(4 * (s % 2) + 2);
    let o3 = comptime!(4 * (s % 2) + 3);
    #[unroll]
    for i in 0usize..tt {
        let v = xv[x0 + 2 * i + h];
        let mut p = V2::<F>::new(F::new(0.0));
        p.insert(0usize, v.extract(o0));
        p.insert(1usize, v.extract(o1));
        b[2 * i] = p;
        let mut q = V2::<F>::new(F::new(0.0));
        q.insert(0usize, v.extract(o2));
        q.insert(1usize, v.extract(o3));
        b[2 * i + 1] = q;
    }
}

/// The lane's x vectors of unit `u` for `tt` token tiles into `xv[x0 ..]` (zero past M and K). With
/// `norm` (an RMSNorm folded into the product) each vector is scaled by the norm's weight `gamma` as
/// it is loaded and its sum of squares (f32) added to `ss[i]`; the epilogue scales the sums by the
/// token's 1 / rms, since `W (gamma x / rms) = (W (gamma x)) / rms`. Every unit of K is loaded once
/// per block, so the block sees the whole row.
#[cube]
#[allow(clippy::too_many_arguments)]
fn load_x<F: Float>(
    x: &[V8<F>],
    xv: &mut Array<V8<F>>,
    gamma: &[V8<F>],
    ss: &mut Array<f32>,
    tok0: usize,
    m: usize,
    k: usize,
    u: usize,
    #[comptime] tt: usize,
    #[comptime] x0: usize,
    #[comptime] norm: bool,
) {
    let lane = UNIT_POS_X as usize % 32usize;
    let g = lane / 4;
    let t = lane % 4;
    #[unroll]
    for i in 0usize..tt {
        #[unroll]
        for h in 0usize..2usize {
            let tok = tok0 + 8 * i + g;
            let kk = u * UNIT_K + 32 * h + 8 * t;
            let mut v = V8::<F>::new(F::new(0.0));
            if tok < m && kk < k {
                v = x[(tok * k + kk) / 8];
                if comptime!(norm) {
                    let mut sum = ss[i];
                    #[unroll]
                    for e in 0usize..8usize {
                        let f = f32::cast_from(v.extract(e));
                        sum += f * f;
                    }
                    ss[i] = sum;
                    // In the activation dtype (packed pairs for bf16 / f16): the product of two
                    // such values is exact in f32 (away from the ends of the exponent range), so
                    // this rounds as an f32 multiply and a conversion would, in fewer instructions.
                    v = v * gamma[kk / 8];
                }
            }
            xv[x0 + 2 * i + h] = v;
        }
    }
}

/// The block's channels: its part (0..3; parts own blocks [0, c1), [c1, c2), [c2, ..)), that
/// part's width `n` and first output column, the output row width, the part's tile count, the
/// block's first tile, and this thread's tiles in `tiles` (swiglu: gate tile `local` of part 0 and up
/// tile `local` of part 1). With x shared, the block's `share` warps own consecutive tiles (sets of
/// `ct`, or one gate|up pair), warp w the w-th.
#[cube]
#[allow(clippy::too_many_arguments)]
fn block_channels(c1: usize, c2: usize, n0: usize, n1: usize, n2: usize, tiles: &mut Array<usize>, #[comptime] ct: usize, #[comptime] swiglu: bool, #[comptime] share: usize) -> (u32, usize, usize, usize, usize, usize) {
    let cy = CUBE_POS_Y as usize;
    let mut part = 0u32;
    let mut local = cy;
    let mut n = n0;
    let mut first = 0usize;
    if cy >= c2 {
        part = 2u32;
        local = cy - c2;
        n = n2;
        first = n0 + n1;
    } else if cy >= c1 {
        part = 1u32;
        local = cy - c1;
        n = n1;
        first = n0;
    }
    let mut n_out = n0 + n1 + n2;
    if comptime!(swiglu) {
        n_out = n0;
    }
    let mut set = local;
    if comptime!(share > 0) {
        set = local * share + UNIT_POS_X as usize / 32usize;
    }
    #[unroll]
    for c in 0usize..ct {
        if comptime!(swiglu) {
            tiles[c] = set;
        } else {
            tiles[c] = set * ct + c;
        }
    }
    let mut tile0 = local * comptime!(if share > 0 { share } else { 1 });
    if comptime!(!swiglu) {
        tile0 *= ct;
    }
    (part, n, first, n_out, (n + TILE_N - 1) / TILE_N, tile0)
}

/// With x shared: add virtual warp `v`'s partial sums into this warp's running totals (`tot`, laid
/// out as [`epilogue`] reads them) the way the epilogue adds a warp's (`0 + p_0`, then `+ p_v`), and
/// put its sums of squares where the epilogue expects warp v's (the block's warps load the same x,
/// so warp 0 writes them); then start the next virtual warp from zero.
#[cube]
#[allow(clippy::too_many_arguments)]
fn add_virtual_warp(
    acc: &mut Array<V2<f32>>,
    ss: &mut Array<f32>,
    tot: &mut Shared<[f32]>,
    red_ss: &mut Shared<[f32]>,
    v: usize,
    #[comptime] warps: usize,
    #[comptime] ct: usize,
    #[comptime] tt: usize,
    #[comptime] norm: bool,
) {
    let lane = UNIT_POS_X as usize % 32usize;
    let warp = UNIT_POS_X as usize / 32usize;
    #[unroll]
    for i in 0usize..tt {
        #[unroll]
        for c in 0usize..ct {
            #[unroll]
            for r in 0usize..2usize {
                let j = (c * tt + i) * 2 + r;
                let part = acc[j];
                #[unroll]
                for e in 0usize..2usize {
                    let at = (((warp * tt + i) * ct + c) * 32 + lane) * 4 + 2 * r + e;
                    let mut before = 0.0f32;
                    if v > 0 {
                        before = tot[at];
                    }
                    tot[at] = before + part.extract(e);
                }
                acc[j] = V2::<f32>::new(0.0f32);
            }
        }
        if comptime!(norm) {
            if warp == 0 {
                red_ss[(i * warps + v) * 32 + lane] = ss[i];
            }
            ss[i] = 0.0f32;
        }
    }
}

/// One part of an mma product.
pub(crate) struct MmaPart {
    pub n: usize,
    /// int4 words or dense values, packed.
    pub packed: CubeTensor,
    pub aux: Option<CubeTensor>,
    pub bias: Option<CubeTensor>,
}

/// What the launch needs beyond the parts.
pub(crate) struct MmaProduct {
    pub k: usize,
    /// int4 group size, `None` for dense.
    pub group: Option<usize>,
    /// Parts 0 and 1 are gate and up: write silu(gate) * up, [m, n0].
    pub swiglu: bool,
    pub emulate: bool,
    /// Parts 0 and 1 are packed in RoPE pair order for heads of `2 half` channels (0: natural order).
    pub half: usize,
}

/// RoPE and the KV-cache write fused into a q|k|v product ([`epilogue()`]): the product returns q
/// [1, heads, m, hd] instead of q|k|v.
pub(crate) struct MmaRope {
    /// [m] i32
    pub positions: CubeTensor,
    /// [max_positions, hd / 2]
    pub cos: CubeTensor,
    pub sin: CubeTensor,
    /// [1, kv_heads, capacity, hd], written in place at rows [start, start + m).
    pub k_cache: CubeTensor,
    pub v_cache: CubeTensor,
    pub heads: usize,
    /// [1] i32: the first cache row written.
    pub start: CubeTensor,
}

/// An RMSNorm folded into the product: x is normed on its way in ([`load_x`], [`epilogue`]).
pub(crate) struct MmaNorm {
    /// [k], the activation dtype.
    pub weight: CubeTensor,
    pub eps: f32,
}

pub(crate) fn product(
    x: CubeTensor,
    spec: MmaProduct,
    parts: Vec<MmaPart>,
    residual: Option<CubeTensor>,
    norm: Option<MmaNorm>,
    rope: Option<MmaRope>,
) -> CubeTensor {
    assert!((1..=3).contains(&parts.len()), "1 to 3 parts");
    assert!(!spec.swiglu || parts.len() == 2, "swiglu takes gate and up");
    assert!(spec.half == 0 || (parts.len() == 3 && !spec.swiglu), "RoPE pair order is for q|k|v");
    assert!(rope.is_none() || (spec.half > 0 && residual.is_none()), "fused RoPE needs q and k in pair order, no residual");
    let m = x.meta.shape().dims::<2>()[0usize];
    let k = spec.k;
    let dtype = x.dtype;
    let ns: Vec<usize> = (0..3).map(|i| parts.get(i).map_or(0, |p| p.n)).collect();
    let n_out: usize = if spec.swiglu { ns[0] } else { ns.iter().sum() };
    let out_shape = match &rope {
        Some(r) => Shape::new([1, r.heads, m, 2 * spec.half]),
        None => Shape::new([m, n_out]),
    };
    let out = empty_device_contiguous_dtype(x.client.clone(), x.device.clone(), out_shape, dtype);
    let fused_rope = rope.is_some();
    let rope = rope.map(|r| MmaRope { positions: into_contiguous(r.positions), cos: into_contiguous(r.cos), sin: into_contiguous(r.sin), ..r });
    let units = k.div_ceil(UNIT_K);
    let tiles: Vec<usize> = ns.iter().map(|n| n.div_ceil(TILE_N)).collect();
    let tt = token_tiles(m, spec.emulate);
    let span = if spec.group.is_some() { int4_span() } else { 1 };
    let warps = warps_for(units.div_ceil(span), tiles.iter().sum(), spec.emulate);
    // x shared by a block's warps: two channel tiles per warp for int4 (as its widest blocks here) and
    // for gate|up, one for dense (four weight vectors per unit and tile already).
    let shared_ct = if spec.group.is_some() || spec.swiglu { 2 } else { 1 };
    let share = x_share(m, warps, tt, shared_ct, spec.emulate);
    let ct = if share > 0 { shared_ct } else { channel_tiles(m, &spec, warps, tiles.iter().sum()) };
    let sets = share.max(1);
    let blocks: Vec<usize> = if spec.swiglu { vec![tiles[0].div_ceil(sets), 0, 0] } else { tiles.iter().map(|t| t.div_ceil(ct * sets)).collect() };
    let (c1, c2) = (blocks[0], blocks[0] + blocks[1usize]);
    let count = CubeCount::Static(m.div_ceil(8 * tt) as u32, (c2 + blocks[2usize]) as u32, 1);
    let dim = CubeDim::new_1d((if share > 0 { share } else { warps } * 32) as u32);
    let has_bias = parts.iter().all(|p| p.bias.is_some());
    let add_residual = residual.is_some();
    let x = into_contiguous(x);
    let client = x.client.clone();
    let fill = |i: usize| parts.get(i).unwrap_or(&parts[0usize]);
    // Absent operands (biases, residual, norm weight) are bound to x; the kernel does not read them
    // (`has_bias`, `add_residual`, `has_norm` are false).
    let bias_of = |i: usize| fill(i).bias.as_ref().unwrap_or(&x);
    let residual = residual.map(into_contiguous);
    let residual = residual.as_ref().unwrap_or(&x);
    let has_norm = norm.is_some();
    let eps = norm.as_ref().map_or(0.0, |n| n.eps);
    let gamma = norm.map(|n| into_contiguous(n.weight));
    let gamma = gamma.as_ref().unwrap_or(&x);
    let (magic, ones, bias_q) = match (dtype, spec.emulate) {
        (DType::BF16, _) => (0x4300_4300i32, 0x3F80_3F80i32, 128.0f32),
        (DType::F16, _) => (0x6400_6400i32, 0x3C00_3C00i32, 1024.0f32),
        _ => (0, 0, 0.0),
    };
    match spec.group {
        Some(group) => {
            let aux = |i: usize| fill(i).aux.as_ref().expect("int4 parts carry aux");
            // SAFETY: weight vectors are read at tiles < the part's tile count and units < `units`;
            // x at rows < m and columns < k (K % 8 == 0, checked by the caller); aux at groups <
            // ceil(k / group) and channels < the padded width; outputs at rows < m, channels < n.
            // With RoPE: q at heads x m x hd (its width is heads * hd, checked by the caller), the
            // caches at rows start .. start + m (start + m <= capacity checked), the tables at
            // positions[token] (< max_positions, the caller's check, as for `rope_qkv`).
            unsafe {
                int4_mma_kernel::launch_unchecked(
                    &client,
                    count,
                    dim,
                    arg(&x),
                    arg(gamma),
                    arg(&fill(0).packed),
                    arg(&fill(1).packed),
                    arg(&fill(2).packed),
                    arg(aux(0)),
                    arg(aux(1)),
                    arg(aux(2)),
                    arg(bias_of(0)),
                    arg(bias_of(1)),
                    arg(bias_of(2)),
                    arg(residual),
                    arg(&out),
                    rope_arg(rope.as_ref()),
                    m,
                    k,
                    units,
                    ns[0],
                    ns[1],
                    ns[2],
                    c1,
                    c2,
                    bias_q,
                    ones,
                    eps,
                    warps,
                    ct,
                    tt,
                    span,
                    group,
                    fold_len(group, k, span),
                    magic,
                    has_bias,
                    add_residual,
                    spec.swiglu,
                    spec.emulate,
                    parts.len(),
                    share == 0 && int4_ahead(tt, spec.emulate),
                    has_norm,
                    spec.half,
                    fused_rope,
                    share,
                    super::elem(dtype),
                )
            };
        }
        None => {
            // SAFETY: as for int4, with dense weight vectors.
            unsafe {
                dense_mma_kernel::launch_unchecked(
                    &client,
                    count,
                    dim,
                    arg(&x),
                    arg(gamma),
                    arg(&fill(0).packed),
                    arg(&fill(1).packed),
                    arg(&fill(2).packed),
                    arg(bias_of(0)),
                    arg(bias_of(1)),
                    arg(bias_of(2)),
                    arg(residual),
                    arg(&out),
                    rope_arg(rope.as_ref()),
                    m,
                    k,
                    units,
                    ns[0],
                    ns[1],
                    ns[2],
                    c1,
                    c2,
                    eps,
                    warps,
                    ct,
                    tt,
                    has_bias,
                    add_residual,
                    spec.swiglu,
                    spec.emulate,
                    has_norm,
                    spec.half,
                    fused_rope,
                    share,
                    super::elem(dtype),
                )
            };
        }
    }
    out
}

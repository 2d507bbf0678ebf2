//! The mma products' epilogue: the warps' partial sums meet in shared memory in warp order, then
//! the bias, the residual, SwiGLU, the folded RMSNorm's 1 / rms, and for q|k|v the RoPE rotation
//! and the KV-cache write are applied on the way out.

use burn_cubecl::tensor::CubeTensor;
use cubecl::prelude::*;

use super::super::fused::{rotate_first, rotate_second};
use super::{arg, MmaRope, V2};
use crate::mma::TILE_N;

/// Where a q|k|v product with RoPE fused into its epilogue writes: q into the product's output
/// `[heads, m, hd]`, k and v into the caches at rows `start[0] + token`, the rotation read from `cos`
/// and `sin` `[max_positions, hd / 2]` (contiguous) at `positions[token]`.
#[derive(CubeLaunch, CubeType)]
pub(super) struct RopeOut<F: Float> {
    positions: Box<[i32]>,
    cos: Box<[F]>,
    sin: Box<[F]>,
    k_cache: Box<[F]>,
    v_cache: Box<[F]>,
    k_head: usize,
    k_row: usize,
    k_dim: usize,
    v_head: usize,
    v_row: usize,
    v_dim: usize,
    /// [1] i32: the first cache row, read on the device so that a captured graph replays at any
    /// cache length.
    start: Box<[i32]>,
}

/// The partial sums of fragment slot `slot` at `red[base ..]`, `count` of them `stride` apart, in
/// warp order: the K split's warps, or (x shared) one running total that already holds them.
#[cube]
fn warp_sum(red: &Shared<[f32]>, base: usize, slot: usize, #[comptime] count: usize, #[comptime] stride: usize) -> f32 {
    let mut sum = 0.0f32;
    #[unroll]
    for w in 0usize..count {
        sum += red[base + w * stride + slot];
    }
    sum
}

/// Channel `ch`'s bias in `part`.
#[cube]
#[allow(unused_assignments)]
fn part_bias<F: Float>(b0: &[F], b1: &[F], b2: &[F], part: u32, ch: usize) -> f32 {
    let mut b = 0.0f32;
    if part == 0u32 {
        b = f32::cast_from(b0[ch]);
    } else if part == 1u32 {
        b = f32::cast_from(b1[ch]);
    } else {
        b = f32::cast_from(b2[ch]);
    }
    b
}

/// One output before its residual: the warps' sum of fragment slot `slot`, times 1 / rms (the
/// folded norm) plus the bias, as one explicit fused multiply-add. Explicit because the fused RoPE
/// recomputes its partner's value and must get the bits the plain product stores: a contraction
/// left to the compiler may differ between the two kernels.
#[cube]
#[allow(clippy::too_many_arguments)]
fn slot_value(red: &Shared<[f32]>, base: usize, slot: usize, inv_rms: f32, bias: f32, #[comptime] count: usize, #[comptime] stride: usize, #[comptime] norm: bool) -> f32 {
    let mut v = warp_sum(red, base, slot, count, stride);
    if comptime!(norm) {
        v = fma(v, inv_rms, bias);
    } else {
        v += bias;
    }
    v
}

/// The channel that packed channel `ch` of a part in RoPE pair order stands for
/// ([`crate::mma::rope_pair_order`]): in each head of `2 half` channels, tile j's rows r and r + 8
/// are dimensions 8j + r and 8j + r + half.
#[cube]
fn natural_channel(ch: usize, #[comptime] half: usize) -> usize {
    let hd = comptime!(2 * half);
    let w = ch % hd;
    let r = w % TILE_N;
    ch - w + (w / TILE_N) * 8 + r % 8 + (r / 8) * half
}

/// Sum the warps' accumulators of token tile `i` (warp order) and write the outputs: `y[tok, first +
/// ch] = acc + bias of `part` (+ residual)` for each channel tile, or (`swiglu`) `silu(gate) * up`
/// of tiles 0 and 1 into column `ch`. With `half > 0`, parts 0 and 1 were packed in RoPE pair order
/// and their channels go back to their natural place. With `rope` (q|k|v, `half > 0`) the thread
/// also sums its partner row (g <-> g + 8: the other half of the RoPE pair, same token), rounds both
/// to F as the q|k|v output would be, rotates them as the RoPE kernel does ([`rotate_first`]), and
/// writes q to `out` [heads, m, hd], k and v to the caches.
///
/// With x shared (`share` > 0, [`super::int4`]) the block's `share` warps own channel tiles `tile0 +
/// w * (ct, or 1 for swiglu)` each, and `red` already holds each warp's running total over the K
/// split's `warps` virtual warps (`((0 + p_0) + p_1) + ...`, the sum below, so the same bits), laid
/// out [warp][token tile][ct][32 lanes][4]; `red_ss` holds the virtual warps' sums of squares
/// [token tile][warps][32 lanes].
#[cube]
#[allow(clippy::too_many_arguments, unused_assignments)]
pub(super) fn epilogue<F: Float>(
    acc: &Array<V2<f32>>,
    red: &mut Shared<[f32]>,
    b0: &[F],
    b1: &[F],
    b2: &[F],
    part: u32,
    residual: &[F],
    out: &mut [F],
    rope_out: &mut ComptimeOption<RopeOut<F>>,
    i: usize,
    tok0: usize,
    m: usize,
    n: usize,
    n_out: usize,
    first: usize,
    tile0: usize,
    ss: &Array<f32>,
    red_ss: &mut Shared<[f32]>,
    k: usize,
    eps: f32,
    #[comptime] warps: usize,
    #[comptime] ct: usize,
    #[comptime] tt: usize,
    #[comptime] has_bias: bool,
    #[comptime] add_residual: bool,
    #[comptime] swiglu: bool,
    #[comptime] norm: bool,
    #[comptime] half: usize,
    #[comptime] rope: bool,
    #[comptime] share: usize,
) {
    let lane = UNIT_POS_X as usize % 32usize;
    let warp = UNIT_POS_X as usize / 32usize;
    // Partial sums per slot: the K split's warps, or one running total.
    let count = comptime!(if share > 0 { 1 } else { warps });
    let stride = comptime!(ct * 128);
    // Where token tile i's sums of squares start in `red_ss`, and where its 1 / rms go.
    let mut ss0 = 0usize;
    if comptime!(share > 0) {
        ss0 = i * comptime!(warps * 32);
    }
    let rms0 = comptime!(if share > 0 { tt * warps * 32 } else { warps * 32 });
    sync_cube();
    if comptime!(share == 0) {
        #[unroll]
        for c in 0usize..ct {
            #[unroll]
            for r in 0usize..2usize {
                let v = acc[(c * tt + i) * 2 + r];
                red[((warp * ct + c) * 32 + lane) * 4 + 2 * r] = v.extract(0usize);
                red[((warp * ct + c) * 32 + lane) * 4 + 2 * r + 1] = v.extract(1usize);
            }
        }
        if comptime!(norm) {
            red_ss[warp * 32 + lane] = ss[i];
        }
        sync_cube();
    }
    if comptime!(norm) {
        // Token j's squares sit with lanes 4j .. 4j + 3 of every warp: summed in (warp, lane) order,
        // which depends on (K, N) alone.
        let j = UNIT_POS_X as usize;
        if j < 8 {
            let mut sum = 0.0f32;
            #[unroll]
            for w in 0usize..warps {
                #[unroll]
                for t in 0usize..4usize {
                    sum += red_ss[ss0 + w * 32 + 4 * j + t];
                }
            }
            red_ss[rms0 + j] = 1.0f32 / (sum / f32::cast_from(k) + eps).sqrt();
        }
        sync_cube();
    }
    let per_warp = comptime!(if swiglu { 128 } else { ct * 128 });
    let outputs = comptime!(per_warp * if share > 0 { share } else { 1 });
    let threads = comptime!(32 * if share > 0 { share } else { warps });
    let tile_step = comptime!(if swiglu { 1 } else { ct });
    let mut e = UNIT_POS_X as usize;
    while e < outputs {
        let w = e / per_warp;
        let c = (e % per_warp) / 128;
        let slot = e % 128;
        let l = slot / 4;
        let q = slot % 4;
        // Channel tile c of warp w in `red`, and the up tile beside it (swiglu).
        let mut base = c * 128;
        let mut up_base = 128usize;
        if comptime!(share > 0) {
            base = ((w * tt + i) * ct + c) * 128;
            up_base = ((w * tt + i) * ct + 1) * 128;
        }
        // C fragment: row g (+ 8 for the second register), column 2t (+ 1).
        let ch = (tile0 + w * tile_step) * TILE_N + c * TILE_N + l / 4 + 8 * (q / 2);
        let tok = tok0 + 8 * i + 2 * (l % 4) + q % 2;
        let mut inv_rms = 1.0f32;
        if comptime!(norm) {
            inv_rms = red_ss[rms0 + 2 * (l % 4) + q % 2];
        }
        if tok < m && ch < n {
            let mut oc = ch;
            if comptime!(half > 0) {
                if part < 2u32 {
                    oc = natural_channel(ch, half);
                }
            }
            let mut bias = 0.0f32;
            let mut up_bias = 0.0f32;
            if comptime!(has_bias) {
                // swiglu: gate's bias is part 0's, up's is part 1's.
                bias = part_bias::<F>(b0, b1, b2, part, oc);
                if comptime!(swiglu) {
                    up_bias = f32::cast_from(b1[ch]);
                }
            }
            let mut sum = slot_value(&*red, base, slot, inv_rms, bias, count, stride, norm);
            if comptime!(swiglu) {
                let up = slot_value(&*red, up_base, slot, inv_rms, up_bias, count, stride, norm);
                sum = sum / (1.0f32 + (0.0f32 - sum).exp()) * up;
            }
            if comptime!(rope) {
                let hd = comptime!(2 * half);
                let head = oc / hd;
                let d = oc % hd;
                #[comptime]
                if let ComptimeOption::Some(ro) = rope_out {
                    if part < 2u32 {
                        // The pair's other half: row g + 8 for row g and back, same column (token),
                        // computed as its own thread computes it in a plain product.
                        let mut pslot = slot + 2;
                        let mut pch = ch + 8;
                        if q >= 2 {
                            pslot = slot - 2;
                            pch = ch - 8;
                        }
                        let mut other_bias = 0.0f32;
                        if comptime!(has_bias) {
                            other_bias = part_bias::<F>(b0, b1, b2, part, natural_channel(pch, half));
                        }
                        let other = slot_value(&*red, base, pslot, inv_rms, other_bias, count, stride, norm);
                        let own = f32::cast_from(F::cast_from(sum));
                        let other = f32::cast_from(F::cast_from(other));
                        let p = ro.positions[tok] as usize;
                        let cs = f32::cast_from(ro.cos[p * half + d % half]);
                        let sn = f32::cast_from(ro.sin[p * half + d % half]);
                        let mut y = 0.0f32;
                        if d < half {
                            y = rotate_first(own, other, cs, sn);
                        } else {
                            y = rotate_second(other, own, cs, sn);
                        }
                        if part == 0u32 {
                            out[(head * m + tok) * hd + d] = F::cast_from(y);
                        } else {
                            ro.k_cache[head * ro.k_head + (ro.start[0] as usize + tok) * ro.k_row + d * ro.k_dim] = F::cast_from(y);
                        }
                    } else {
                        ro.v_cache[head * ro.v_head + (ro.start[0] as usize + tok) * ro.v_row + d * ro.v_dim] = F::cast_from(sum);
                    }
                }
            } else {
                let col = first + oc;
                if comptime!(add_residual) {
                    sum += f32::cast_from(residual[tok * n_out + col]);
                }
                out[tok * n_out + col] = F::cast_from(sum);
            }
        }
        e += threads;
    }
}

/// The fused RoPE's kernel argument (nothing is bound without one). Generic in the element type,
/// which each kernel's launch names its own way.
pub(super) fn rope_arg<E: Float>(rope: Option<&MmaRope>) -> ComptimeOptionArgs<RopeOut<E>> {
    let Some(r) = rope else { return ComptimeOptionArgs::None };
    let st = |t: &CubeTensor, d: usize| t.meta.strides()[d];
    ComptimeOptionArgs::Some(RopeOutLaunch::new(
        arg(&r.positions),
        arg(&r.cos),
        arg(&r.sin),
        arg(&r.k_cache),
        arg(&r.v_cache),
        st(&r.k_cache, 1),
        st(&r.k_cache, 2),
        st(&r.k_cache, 3),
        st(&r.v_cache, 1),
        st(&r.v_cache, 2),
        st(&r.v_cache, 3),
        arg(&r.start),
    ))
}

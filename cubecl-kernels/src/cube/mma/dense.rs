//! The dense (bf16 / f16) tensor-core product (layout and reasons in [`crate::mma`]): per unit a lane
//! loads four 16-byte weight vectors per channel tile and runs 4 k-slabs of mma.

use cubecl::prelude::*;

use super::{add_virtual_warp, b_regs, block_channels, epilogue, RopeOut, load_x, norm_slots, shared_len, slab_products, total_len, V2, V8};

/// One unit of K (`u`; zeros past `units` and past the part's tiles): the weight vectors of the
/// block's channel tiles, the x vectors of its token tiles, and the 4 k-slabs of mma into `acc`.
#[cube]
#[allow(clippy::too_many_arguments)]
fn dense_unit<F: Float>(
    x: &[V8<F>],
    gamma: &[V8<F>],
    w0: &[V8<F>],
    w1: &[V8<F>],
    w2: &[V8<F>],
    wv: &mut Array<V8<F>>,
    xv: &mut Array<V8<F>>,
    a: &mut Array<V2<F>>,
    b: &mut Array<V2<F>>,
    no_sums: &mut Array<V2<f32>>,
    acc: &mut Array<V2<f32>>,
    ss: &mut Array<f32>,
    emu: &mut Shared<[f32]>,
    tiles: &Array<usize>,
    tiles_n: usize,
    part: u32,
    tok0: usize,
    m: usize,
    k: usize,
    units: usize,
    u: usize,
    #[comptime] ct: usize,
    #[comptime] tt: usize,
    #[comptime] swiglu: bool,
    #[comptime] emulate: bool,
    #[comptime] norm: bool,
) {
    let lane = UNIT_POS_X as usize % 32usize;
    #[unroll]
    for c in 0usize..ct {
        #[unroll]
        for s in 0usize..4usize {
            let mut v = V8::<F>::new(F::new(0.0));
            if u < units && tiles[c] < tiles_n {
                let idx = ((tiles[c] * units + u) * 4 + s) * 32 + lane;
                if comptime!(swiglu && c == 1) {
                    v = w1[idx];
                } else if part == 0u32 {
                    v = w0[idx];
                } else if part == 1u32 {
                    v = w1[idx];
                } else {
                    v = w2[idx];
                }
            }
            wv[c * 4 + s] = v;
        }
    }
    load_x::<F>(x, xv, gamma, ss, tok0, m, k, u, tt, 0usize, norm);
    #[unroll]
    for s in 0usize..4usize {
        b_regs::<F>(&*xv, b, tt, s, 0usize);
        #[unroll]
        for c in 0usize..ct {
            let v = wv[c * 4 + s];
            #[unroll]
            for r in 0usize..4usize {
                let mut q = V2::<F>::new(F::new(0.0));
                q.insert(0usize, v.extract(comptime!(2 * r)));
                q.insert(1usize, v.extract(comptime!(2 * r + 1)));
                a[c * 4 + r] = q;
            }
        }
        slab_products::<F>(&*a, &*b, &*a, acc, no_sums, emu, ct, tt, false, emulate);
    }
}

#[cube(launch_unchecked)]
#[allow(clippy::too_many_arguments)]
pub(super) fn dense_mma_kernel<F: Float>(
    x: &[V8<F>],
    gamma: &[V8<F>],
    w0: &[V8<F>],
    w1: &[V8<F>],
    w2: &[V8<F>],
    b0: &[F],
    b1: &[F],
    b2: &[F],
    residual: &[F],
    out: &mut [F],
    rope_out: &mut ComptimeOption<RopeOut<F>>,
    m: usize,
    k: usize,
    units: usize,
    n0: usize,
    n1: usize,
    n2: usize,
    c1: usize,
    c2: usize,
    eps: f32,
    #[comptime] warps: usize,
    #[comptime] ct: usize,
    #[comptime] tt: usize,
    #[comptime] has_bias: bool,
    #[comptime] add_residual: bool,
    #[comptime] swiglu: bool,
    #[comptime] emulate: bool,
    #[comptime] norm: bool,
    #[comptime] half: usize,
    #[comptime] rope: bool,
    #[comptime] share: usize,
    #[define(F)] _dtype: ElemType,
) {
    let warp = UNIT_POS_X as usize / 32usize;
    let tok0 = CUBE_POS_X as usize * 8 * tt;
    let mut tiles = Array::<usize>::new(ct);
    let (part, n, first, n_out, tiles_n, tile0) = block_channels(c1, c2, n0, n1, n2, &mut tiles, ct, swiglu, share);

    let mut emu = Shared::<[f32]>::new_slice(comptime!(shared_len(warps, ct, tt, emulate, share)));
    let mut tot = Shared::<[f32]>::new_slice(comptime!(total_len(ct, tt, share)));
    let mut acc = Array::<V2<f32>>::new(comptime!(ct * tt * 2));
    #[unroll]
    for j in 0usize..ct * tt * 2 {
        acc[j] = V2::<f32>::new(0.0f32);
    }
    let mut wv = Array::<V8<F>>::new(comptime!(ct * 4));
    let mut xv = Array::<V8<F>>::new(comptime!(tt * 2));
    let mut a = Array::<V2<F>>::new(comptime!(ct * 4));
    let mut b = Array::<V2<F>>::new(comptime!(tt * 2));
    let mut no_sums = Array::<V2<f32>>::new(comptime!(tt * 2));
    let mut ss = Array::<f32>::new(tt);
    #[unroll]
    for i in 0usize..tt {
        ss[i] = 0.0f32;
    }
    let mut red_ss = Shared::<[f32]>::new_slice(comptime!(norm_slots(warps, tt, norm, share)));

    // The K split's warps (warp w: units w, w + warps, ...); with x shared (`share` > 0) every warp
    // walks all of them as virtual warps on its own channel tiles, adding each one's partials into
    // `tot` ([`add_virtual_warp`]).
    let iters = (units + warps - 1) / warps;
    if comptime!(share > 0) {
        for v in 0usize..warps {
            for it in 0usize..iters {
                dense_unit::<F>(x, gamma, w0, w1, w2, &mut wv, &mut xv, &mut a, &mut b, &mut no_sums, &mut acc, &mut ss, &mut emu, &tiles, tiles_n, part, tok0, m, k, units, v + it * warps, ct, tt, swiglu, emulate, norm);
            }
            add_virtual_warp(&mut acc, &mut ss, &mut tot, &mut red_ss, v, warps, ct, tt, norm);
        }
    } else {
        for it in 0usize..iters {
            dense_unit::<F>(x, gamma, w0, w1, w2, &mut wv, &mut xv, &mut a, &mut b, &mut no_sums, &mut acc, &mut ss, &mut emu, &tiles, tiles_n, part, tok0, m, k, units, warp + it * warps, ct, tt, swiglu, emulate, norm);
        }
    }

    // With x shared the totals are in `tot` already; else the warps' partials meet in `emu`.
    #[unroll]
    for i in 0usize..tt {
        if comptime!(share > 0) {
            epilogue::<F>(&acc, &mut tot, b0, b1, b2, part, residual, out, rope_out, i, tok0, m, n, n_out, first, tile0, &ss, &mut red_ss, k, eps, warps, ct, tt, has_bias, add_residual, swiglu, norm, half, rope, share);
        } else {
            epilogue::<F>(&acc, &mut emu, b0, b1, b2, part, residual, out, rope_out, i, tok0, m, n, n_out, first, tile0, &ss, &mut red_ss, k, eps, warps, ct, tt, has_bias, add_residual, swiglu, norm, half, rope, share);
        }
    }
}

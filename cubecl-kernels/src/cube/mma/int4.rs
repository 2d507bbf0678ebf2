//! The int4 tensor-core product (layout and reasons in [`crate::mma`]).
//!
//! Per unit of 64 inputs a lane needs one 16-byte weight vector per channel tile, its x vectors
//! and the (scale, offset) pairs of its two channel rows. All of these are loaded one unit ahead
//! (`ahead`): the loads of unit u + warps are in flight while unit u's products run, so a warp keeps
//! two units' bytes outstanding instead of stalling on every load. The part a block belongs to is
//! resolved once, outside the loop (the loop is instantiated per part), so no load waits behind a
//! per-load selection branch.

use cubecl::prelude::*;

use super::{b_regs, epilogue, load_x, locate, pair, shared_len, slab_products, V2, V8, W4};
use crate::mma::{TILE_N, UNIT_K};

/// Load unit `u`'s operands (zero past K, past the part's tiles, and for u >= units).
#[cube]
#[allow(clippy::too_many_arguments)]
fn load_unit<F: Float>(
    x: &Tensor<V8<F>>,
    w_a: &Tensor<W4>,
    aux_a: &Tensor<V2<F>>,
    w_b: &Tensor<W4>,
    aux_b: &Tensor<V2<F>>,
    wv: &mut Array<W4>,
    xv: &mut Array<V8<F>>,
    av: &mut Array<V2<F>>,
    tiles: &Array<usize>,
    tiles_n: usize,
    np_a: usize,
    np_b: usize,
    tok0: usize,
    m: usize,
    k: usize,
    u: usize,
    units: usize,
    group: usize,
    groups: usize,
    #[comptime] ct: usize,
    #[comptime] tt: usize,
    #[comptime] halves: usize,
    #[comptime] swiglu: bool,
) {
    let lane = UNIT_POS_X as usize % 32usize;
    let g = lane / 4;
    #[unroll]
    for c in 0usize..ct {
        let live = u < units && tiles[c] < tiles_n;
        let mut v = W4::new(0i32);
        if live {
            let idx = (tiles[c] * units + u) * 32 + lane;
            if comptime!(swiglu && c == 1) {
                v = w_b[idx];
            } else {
                v = w_a[idx];
            }
        }
        wv[c] = v;
        #[unroll]
        for h in 0usize..halves {
            let mut s0 = V2::<F>::new(F::new(0.0));
            let mut s1 = V2::<F>::new(F::new(0.0));
            if live {
                let mut grp = (u * UNIT_K + 32 * h) / group;
                if grp >= groups {
                    grp = groups - 1;
                }
                if comptime!(swiglu && c == 1) {
                    let row = grp * np_b + tiles[c] * TILE_N + g;
                    s0 = aux_b[row];
                    s1 = aux_b[row + 8];
                } else {
                    let row = grp * np_a + tiles[c] * TILE_N + g;
                    s0 = aux_a[row];
                    s1 = aux_a[row + 8];
                }
            }
            av[(c * halves + h) * 2] = s0;
            av[(c * halves + h) * 2 + 1] = s1;
        }
    }
    load_x::<F>(x, xv, tok0, m, k, u, tt);
}

/// `acc[c][i] += s P + (o - bias s) X` with half `h`'s (scale, offset), then zero P and X.
#[cube]
#[allow(clippy::too_many_arguments)]
fn fold<F: Float>(
    acc: &mut Array<V2<f32>>,
    p: &mut Array<V2<f32>>,
    xs: &mut Array<V2<f32>>,
    av: &Array<V2<F>>,
    bias_q: f32,
    #[comptime] h: usize,
    #[comptime] halves: usize,
    #[comptime] ct: usize,
    #[comptime] tt: usize,
) {
    #[unroll]
    for c in 0usize..ct {
        let sv0 = av[comptime!((c * halves + h) * 2)];
        let sv1 = av[comptime!((c * halves + h) * 2 + 1)];
        let s0 = f32::cast_from(sv0[0usize]);
        let o0 = f32::cast_from(sv0[1usize]) - bias_q * s0;
        let s1 = f32::cast_from(sv1[0usize]);
        let o1 = f32::cast_from(sv1[1usize]) - bias_q * s1;
        #[unroll]
        for i in 0usize..tt {
            let j = (c * tt + i) * 2;
            let xa = xs[2 * i];
            let xb = xs[2 * i + 1];
            let pa = p[j];
            let pb = p[j + 1];
            let mut va = acc[j];
            let mut vb = acc[j + 1];
            #[unroll]
            for e in 0usize..2usize {
                va[e] += s0 * pa[e] + o0 * xa[e];
                vb[e] += s1 * pb[e] + o1 * xb[e];
            }
            acc[j] = va;
            acc[j + 1] = vb;
            p[j] = V2::<f32>::new(0.0f32);
            p[j + 1] = V2::<f32>::new(0.0f32);
        }
    }
    #[unroll]
    for i in 0usize..2 * tt {
        xs[i] = V2::<f32>::new(0.0f32);
    }
}

/// The warp's units of K, in order: `acc` gets every unit's group-scaled products.
#[cube]
#[allow(clippy::too_many_arguments)]
fn int4_units<F: Float>(
    x: &Tensor<V8<F>>,
    w_a: &Tensor<W4>,
    aux_a: &Tensor<V2<F>>,
    w_b: &Tensor<W4>,
    aux_b: &Tensor<V2<F>>,
    acc: &mut Array<V2<f32>>,
    emu: &mut SharedMemory<f32>,
    tiles: &Array<usize>,
    tiles_n: usize,
    np_a: usize,
    np_b: usize,
    tok0: usize,
    m: usize,
    k: usize,
    units: usize,
    group: usize,
    bias_q: f32,
    ones: i32,
    #[comptime] warps: usize,
    #[comptime] ct: usize,
    #[comptime] tt: usize,
    #[comptime] per_half: bool,
    #[comptime] magic: i32,
    #[comptime] swiglu: bool,
    #[comptime] emulate: bool,
    #[comptime] ahead: bool,
) {
    let warp = UNIT_POS_X as usize / 32usize;
    let halves = comptime!(if per_half { 2usize } else { 1usize });
    let groups = (k + group - 1) / group;
    let mut p = Array::<V2<f32>>::new(comptime!(ct * tt * 2));
    let mut xs = Array::<V2<f32>>::new(comptime!(tt * 2));
    #[unroll]
    for j in 0usize..ct * tt * 2 {
        p[j] = V2::<f32>::new(0.0f32);
    }
    #[unroll]
    for j in 0usize..tt * 2 {
        xs[j] = V2::<f32>::new(0.0f32);
    }
    // `ones` arrives as a run-time scalar so that the bit cast has a variable to read (CUDA's
    // reinterpret_cast needs an lvalue).
    let mut a_one = Array::<V2<F>>::new(4usize);
    #[unroll]
    for r in 0usize..4usize {
        if comptime!(magic != 0) {
            a_one[r] = V2::<F>::reinterpret(ones);
        } else {
            a_one[r] = V2::<F>::new(F::new(1.0));
        }
    }
    let mut a = Array::<V2<F>>::new(comptime!(ct * 4));
    let mut b = Array::<V2<F>>::new(comptime!(tt * 2));
    // This unit's operands and (ahead) the next one's.
    let mut wv = Array::<W4>::new(ct);
    let mut xv = Array::<V8<F>>::new(comptime!(tt * 2));
    let mut av = Array::<V2<F>>::new(comptime!(ct * halves * 2));
    let mut wn = Array::<W4>::new(ct);
    let mut xn = Array::<V8<F>>::new(comptime!(tt * 2));
    let mut an = Array::<V2<F>>::new(comptime!(ct * halves * 2));
    load_unit::<F>(x, w_a, aux_a, w_b, aux_b, &mut wv, &mut xv, &mut av, tiles, tiles_n, np_a, np_b, tok0, m, k, warp, units, group, groups, ct, tt, halves, swiglu);

    let iters = (units + warps - 1) / warps;
    for it in 0usize..iters {
        let u_next = warp + (it + 1) * warps;
        if comptime!(ahead) {
            load_unit::<F>(x, w_a, aux_a, w_b, aux_b, &mut wn, &mut xn, &mut an, tiles, tiles_n, np_a, np_b, tok0, m, k, u_next, units, group, groups, ct, tt, halves, swiglu);
        }
        #[unroll]
        for s in 0usize..4usize {
            b_regs::<F>(&xv, &mut b, tt, s);
            #[unroll]
            for c in 0usize..ct {
                let word = wv[c][s];
                #[unroll]
                for r in 0usize..4usize {
                    a[c * 4 + r] = pair::<F>((word >> comptime!((4 * r) as i32)) & 0x000F000Fi32, magic);
                }
            }
            slab_products::<F>(&a, &b, &a_one, &mut p, &mut xs, emu, ct, tt, true, emulate);
            // Fold per group of 32 (after slabs 1 and 3), or once per unit for groups of 64+.
            if comptime!(s % 2 == 1 && (per_half || s == 3)) {
                fold::<F>(acc, &mut p, &mut xs, &av, bias_q, comptime!(if per_half { s / 2 } else { 0 }), halves, ct, tt);
            }
        }
        if comptime!(ahead) {
            #[unroll]
            for c in 0usize..ct {
                wv[c] = wn[c];
            }
            #[unroll]
            for j in 0usize..tt * 2 {
                xv[j] = xn[j];
            }
            #[unroll]
            for j in 0usize..ct * halves * 2 {
                av[j] = an[j];
            }
        } else {
            load_unit::<F>(x, w_a, aux_a, w_b, aux_b, &mut wv, &mut xv, &mut av, tiles, tiles_n, np_a, np_b, tok0, m, k, u_next, units, group, groups, ct, tt, halves, swiglu);
        }
    }
}

#[cube(launch_unchecked)]
#[allow(clippy::too_many_arguments)]
pub(super) fn int4_mma_kernel<F: Float>(
    x: &Tensor<V8<F>>,
    w0: &Tensor<W4>,
    w1: &Tensor<W4>,
    w2: &Tensor<W4>,
    aux0: &Tensor<V2<F>>,
    aux1: &Tensor<V2<F>>,
    aux2: &Tensor<V2<F>>,
    b0: &Tensor<F>,
    b1: &Tensor<F>,
    b2: &Tensor<F>,
    residual: &Tensor<F>,
    out: &mut Tensor<F>,
    m: usize,
    k: usize,
    units: usize,
    n0: usize,
    n1: usize,
    n2: usize,
    c1: usize,
    c2: usize,
    group: usize,
    bias_q: f32,
    ones: i32,
    #[comptime] warps: usize,
    #[comptime] ct: usize,
    #[comptime] tt: usize,
    #[comptime] per_half: bool,
    #[comptime] magic: i32,
    #[comptime] has_bias: bool,
    #[comptime] add_residual: bool,
    #[comptime] swiglu: bool,
    #[comptime] emulate: bool,
    #[comptime] ahead: bool,
    #[define(F)] _dtype: StorageType,
) {
    let tok0 = CUBE_POS_X as usize * 8 * tt;
    let (part, local) = locate(c1, c2);
    let mut n = n0;
    let mut first = 0usize;
    if part == 1u32 {
        n = n1;
        first = n0;
    } else if part == 2u32 {
        n = n2;
        first = n0 + n1;
    }
    let mut n_out = n0 + n1 + n2;
    if comptime!(swiglu) {
        n_out = n0;
    }
    let tiles_n = (n + TILE_N - 1) / TILE_N;
    let np = tiles_n * TILE_N;
    let np1 = ((n1 + TILE_N - 1) / TILE_N) * TILE_N;
    // This block's channel tiles (swiglu: gate tile `local` of part 0 and up tile `local` of part 1).
    let mut tiles = Array::<usize>::new(ct);
    #[unroll]
    for c in 0usize..ct {
        if comptime!(swiglu) {
            tiles[c] = local;
        } else {
            tiles[c] = local * ct + c;
        }
    }

    let mut emu = SharedMemory::<f32>::new(comptime!(shared_len(warps, ct, tt, emulate)));
    let mut acc = Array::<V2<f32>>::new(comptime!(ct * tt * 2));
    #[unroll]
    for j in 0usize..ct * tt * 2 {
        acc[j] = V2::<f32>::new(0.0f32);
    }
    // One instance of the loop per part: the weight and aux tensors are fixed inside it.
    if comptime!(swiglu) {
        int4_units::<F>(x, w0, aux0, w1, aux1, &mut acc, &mut emu, &tiles, tiles_n, np, np1, tok0, m, k, units, group, bias_q, ones, warps, ct, tt, per_half, magic, swiglu, emulate, ahead);
    } else if part == 0u32 {
        int4_units::<F>(x, w0, aux0, w0, aux0, &mut acc, &mut emu, &tiles, tiles_n, np, np, tok0, m, k, units, group, bias_q, ones, warps, ct, tt, per_half, magic, swiglu, emulate, ahead);
    } else if part == 1u32 {
        int4_units::<F>(x, w1, aux1, w1, aux1, &mut acc, &mut emu, &tiles, tiles_n, np, np, tok0, m, k, units, group, bias_q, ones, warps, ct, tt, per_half, magic, swiglu, emulate, ahead);
    } else {
        int4_units::<F>(x, w2, aux2, w2, aux2, &mut acc, &mut emu, &tiles, tiles_n, np, np, tok0, m, k, units, group, bias_q, ones, warps, ct, tt, per_half, magic, swiglu, emulate, ahead);
    }

    #[unroll]
    for i in 0usize..tt {
        epilogue::<F>(&acc, &mut emu, b0, b1, b2, part, residual, out, i, tok0, m, n, n_out, first, tiles[0], warps, ct, tt, has_bias, add_residual, swiglu);
    }
}

//! The int4 tensor-core product (layout and reasons in [`crate::mma`]).
//!
//! At M = 1 the product was issue-bound, not bandwidth-bound (ncu, `docs/perf/int4-matmul.md`): ~210
//! instructions per 16-channel x 64-input unit (512 weight bytes), of which the mma and the nibble
//! conversions are ~45; the rest was per-unit overhead (indices, predicates, a run-time division for
//! the group, one scale fold and two scale loads per unit). So a warp now takes `span` consecutive
//! units per step (their weight vectors loaded together), the group size is a compile-time constant,
//! and scales are folded once per `fold_len` inputs (a whole group where the span allows). The part a
//! block belongs to is resolved once, outside the loop (the loop is instantiated per part).

use cubecl::prelude::*;

use super::{add_virtual_warp, b_regs, block_channels, epilogue, RopeOut, load_x, norm_slots, pair, shared_len, slab_products, total_len, V2, V8, W4};
use crate::mma::{TILE_N, UNIT_K};

/// Load the weight vectors (`wv[c * span + j]`) of units u0 .. u0 + span and the (scale, offset)
/// pairs of rows g and g + 8 for each fold (`av[(c * folds + f) * 2 + {0, 1}]`); zero past the part's
/// tiles and for units >= units.
#[cube]
#[allow(clippy::too_many_arguments)]
fn load_span<F: Float>(
    w_a: &[W4],
    aux_a: &[V2<F>],
    w_b: &[W4],
    aux_b: &[V2<F>],
    wv: &mut Array<W4>,
    av: &mut Array<V2<F>>,
    tiles: &Array<usize>,
    tiles_n: usize,
    np_a: usize,
    np_b: usize,
    u0: usize,
    units: usize,
    groups: usize,
    #[comptime] ct: usize,
    #[comptime] span: usize,
    #[comptime] group: usize,
    #[comptime] fold_len: usize,
    #[comptime] swiglu: bool,
) {
    let lane = UNIT_POS_X as usize % 32usize;
    let g = lane / 4;
    let folds = comptime!(span * UNIT_K / fold_len);
    #[unroll]
    for c in 0usize..ct {
        let tile_live = tiles[c] < tiles_n;
        let base = tiles[c] * units;
        #[unroll]
        for j in 0usize..span {
            let mut v = W4::new(0i32);
            if tile_live && u0 + j < units {
                let idx = (base + u0 + j) * 32 + lane;
                if comptime!(swiglu && c == 1) {
                    v = w_b[idx];
                } else {
                    v = w_a[idx];
                }
            }
            wv[c * span + j] = v;
        }
        #[unroll]
        for f in 0usize..folds {
            let mut s0 = V2::<F>::new(F::new(0.0));
            let mut s1 = V2::<F>::new(F::new(0.0));
            let k0 = u0 * UNIT_K + f * fold_len;
            if tile_live && k0 < units * UNIT_K {
                let mut grp = k0 / group;
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
            av[(c * folds + f) * 2] = s0;
            av[(c * folds + f) * 2 + 1] = s1;
        }
    }
}

/// `acc[c][i] += s P + (o - bias s) X` with fold `f`'s (scale, offset), then zero P and X.
#[cube]
#[allow(clippy::too_many_arguments)]
fn fold<F: Float>(
    acc: &mut Array<V2<f32>>,
    p: &mut Array<V2<f32>>,
    xs: &mut Array<V2<f32>>,
    av: &Array<V2<F>>,
    bias_q: f32,
    #[comptime] f: usize,
    #[comptime] folds: usize,
    #[comptime] ct: usize,
    #[comptime] tt: usize,
) {
    #[unroll]
    for c in 0usize..ct {
        let sv0 = av[comptime!((c * folds + f) * 2)];
        let sv1 = av[comptime!((c * folds + f) * 2 + 1)];
        let s0 = f32::cast_from(sv0.extract(0usize));
        let o0 = f32::cast_from(sv0.extract(1usize)) - bias_q * s0;
        let s1 = f32::cast_from(sv1.extract(0usize));
        let o1 = f32::cast_from(sv1.extract(1usize)) - bias_q * s1;
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
                va.insert(e, va.extract(e) + s0 * pa.extract(e) + o0 * xa.extract(e));
                vb.insert(e, vb.extract(e) + s1 * pb.extract(e) + o1 * xb.extract(e));
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

/// The products of one span (units u0 .. u0 + span) from its loaded weights `wv` and aux `av`, into
/// `acc` (through `p`, `xs`). x comes from `xv` (loaded with the weights: `hoisted`) or is loaded here
/// unit by unit.
#[cube]
#[allow(clippy::too_many_arguments)]
fn span_products<F: Float>(
    x: &[V8<F>],
    gamma: &[V8<F>],
    ss: &mut Array<f32>,
    wv: &Array<W4>,
    av: &Array<V2<F>>,
    xv: &mut Array<V8<F>>,
    a: &mut Array<V2<F>>,
    b: &mut Array<V2<F>>,
    a_one: &Array<V2<F>>,
    p: &mut Array<V2<f32>>,
    xs: &mut Array<V2<f32>>,
    acc: &mut Array<V2<f32>>,
    emu: &mut Shared<[f32]>,
    tok0: usize,
    m: usize,
    k: usize,
    u0: usize,
    bias_q: f32,
    #[comptime] ct: usize,
    #[comptime] tt: usize,
    #[comptime] span: usize,
    #[comptime] fold_len: usize,
    #[comptime] magic: i32,
    #[comptime] emulate: bool,
    #[comptime] hoisted: bool,
    #[comptime] norm: bool,
) {
    let folds = comptime!(span * UNIT_K / fold_len);
    #[unroll]
    for j in 0usize..span {
        let x0 = comptime!(if hoisted { j * tt * 2 } else { 0usize });
        if comptime!(!hoisted) {
            load_x::<F>(x, xv, gamma, ss, tok0, m, k, u0 + j, tt, 0usize, norm);
        }
        #[unroll]
        for s in 0usize..4usize {
            b_regs::<F>(&*xv, b, tt, s, x0);
            #[unroll]
            for c in 0usize..ct {
                let word = wv[c * span + j].extract(s);
                #[unroll]
                for r in 0usize..4usize {
                    a[c * 4 + r] = pair::<F>((word >> comptime!((4 * r) as i32)) & 0x000F000Fi32, magic);
                }
            }
            slab_products::<F>(&*a, &*b, a_one, p, xs, emu, ct, tt, true, emulate);
            // Slabs 0-1 cover the unit's first 32 inputs, 2-3 the second: fold where a fold ends.
            let done = comptime!(j * UNIT_K + 32 * (s / 2 + 1));
            if comptime!(s % 2 == 1 && done % fold_len == 0) {
                fold::<F>(acc, p, xs, av, bias_q, comptime!(done / fold_len - 1), folds, ct, tt);
            }
        }
    }
}

/// The x vectors of a whole span (units u0 .. u0 + span), unit j at `xv[j * tt * 2 ..]`.
#[cube]
#[allow(clippy::too_many_arguments)]
fn load_x_span<F: Float>(
    x: &[V8<F>],
    xv: &mut Array<V8<F>>,
    gamma: &[V8<F>],
    ss: &mut Array<f32>,
    tok0: usize,
    m: usize,
    k: usize,
    u0: usize,
    #[comptime] tt: usize,
    #[comptime] span: usize,
    #[comptime] norm: bool,
) {
    #[unroll]
    for j in 0usize..span {
        load_x::<F>(x, xv, gamma, ss, tok0, m, k, u0 + j, tt, comptime!(j * tt * 2), norm);
    }
}

/// The warp's spans of K, in order (warp w: spans w, w + warps, ...): `acc` gets every unit's
/// group-scaled products. With `ahead`, two register sets alternate: the loads of the next span (its
/// weights, aux and x) are issued before this span's products, so a warp keeps two spans of loads in
/// flight instead of waiting out each span's memory latency. The arithmetic and its order are the
/// same either way.
#[cube]
#[allow(clippy::too_many_arguments)]
fn int4_units<F: Float>(
    x: &[V8<F>],
    gamma: &[V8<F>],
    ss: &mut Array<f32>,
    w_a: &[W4],
    aux_a: &[V2<F>],
    w_b: &[W4],
    aux_b: &[V2<F>],
    acc: &mut Array<V2<f32>>,
    emu: &mut Shared<[f32]>,
    tot: &mut Shared<[f32]>,
    red_ss: &mut Shared<[f32]>,
    tiles: &Array<usize>,
    tiles_n: usize,
    np_a: usize,
    np_b: usize,
    tok0: usize,
    m: usize,
    k: usize,
    units: usize,
    bias_q: f32,
    ones: i32,
    #[comptime] warps: usize,
    #[comptime] ct: usize,
    #[comptime] tt: usize,
    #[comptime] span: usize,
    #[comptime] group: usize,
    #[comptime] fold_len: usize,
    #[comptime] magic: i32,
    #[comptime] swiglu: bool,
    #[comptime] emulate: bool,
    #[comptime] ahead: bool,
    #[comptime] norm: bool,
    #[comptime] share: usize,
) {
    let warp = UNIT_POS_X as usize / 32usize;
    let folds = comptime!(span * UNIT_K / fold_len);
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
    let mut wv = Array::<W4>::new(comptime!(ct * span));
    let mut av = Array::<V2<F>>::new(comptime!(ct * folds * 2));

    let spans = (units + span - 1) / span;
    // Equal for every warp of the cube (units past the end load as zeros), so the emulation's
    // barriers stay matched.
    let iters = (spans + warps - 1) / warps;
    if comptime!(ahead) {
        let mut xv = Array::<V8<F>>::new(comptime!(span * tt * 2));
        let mut wv2 = Array::<W4>::new(comptime!(ct * span));
        let mut av2 = Array::<V2<F>>::new(comptime!(ct * folds * 2));
        let mut xv2 = Array::<V8<F>>::new(comptime!(span * tt * 2));
        let step = warps * span;
        let mut u0 = warp * span;
        load_span::<F>(w_a, aux_a, w_b, aux_b, &mut wv, &mut av, tiles, tiles_n, np_a, np_b, u0, units, groups, ct, span, group, fold_len, swiglu);
        load_x_span::<F>(x, &mut xv, gamma, ss, tok0, m, k, u0, tt, span, norm);
        let mut it = 0usize;
        while it < iters {
            load_span::<F>(w_a, aux_a, w_b, aux_b, &mut wv2, &mut av2, tiles, tiles_n, np_a, np_b, u0 + step, units, groups, ct, span, group, fold_len, swiglu);
            load_x_span::<F>(x, &mut xv2, gamma, ss, tok0, m, k, u0 + step, tt, span, norm);
            span_products::<F>(x, gamma, ss, &wv, &av, &mut xv, &mut a, &mut b, &a_one, &mut p, &mut xs, acc, emu, tok0, m, k, u0, bias_q, ct, tt, span, fold_len, magic, emulate, true, norm);
            if it + 1 < iters {
                load_span::<F>(w_a, aux_a, w_b, aux_b, &mut wv, &mut av, tiles, tiles_n, np_a, np_b, u0 + 2 * step, units, groups, ct, span, group, fold_len, swiglu);
                load_x_span::<F>(x, &mut xv, gamma, ss, tok0, m, k, u0 + 2 * step, tt, span, norm);
                span_products::<F>(x, gamma, ss, &wv2, &av2, &mut xv2, &mut a, &mut b, &a_one, &mut p, &mut xs, acc, emu, tok0, m, k, u0 + step, bias_q, ct, tt, span, fold_len, magic, emulate, true, norm);
            }
            u0 += 2 * step;
            it += 2;
        }
    } else if comptime!(share > 0) {
        // Every warp walks the K split's virtual warps in order, each over the units a real warp
        // would take, on its own channel tiles: the block's warps read the same x at the same time.
        let mut xv = Array::<V8<F>>::new(comptime!(tt * 2));
        for v in 0usize..warps {
            for it in 0usize..iters {
                let u0 = (v + it * warps) * span;
                load_span::<F>(w_a, aux_a, w_b, aux_b, &mut wv, &mut av, tiles, tiles_n, np_a, np_b, u0, units, groups, ct, span, group, fold_len, swiglu);
                span_products::<F>(x, gamma, ss, &wv, &av, &mut xv, &mut a, &mut b, &a_one, &mut p, &mut xs, acc, emu, tok0, m, k, u0, bias_q, ct, tt, span, fold_len, magic, emulate, false, norm);
            }
            add_virtual_warp(acc, ss, tot, red_ss, v, warps, ct, tt, norm);
        }
    } else {
        let mut xv = Array::<V8<F>>::new(comptime!(tt * 2));
        for it in 0usize..iters {
            let u0 = (warp + it * warps) * span;
            load_span::<F>(w_a, aux_a, w_b, aux_b, &mut wv, &mut av, tiles, tiles_n, np_a, np_b, u0, units, groups, ct, span, group, fold_len, swiglu);
            span_products::<F>(x, gamma, ss, &wv, &av, &mut xv, &mut a, &mut b, &a_one, &mut p, &mut xs, acc, emu, tok0, m, k, u0, bias_q, ct, tt, span, fold_len, magic, emulate, false, norm);
        }
    }
}

#[cube(launch_unchecked)]
#[allow(clippy::too_many_arguments)]
pub(super) fn int4_mma_kernel<F: Float>(
    x: &[V8<F>],
    gamma: &[V8<F>],
    w0: &[W4],
    w1: &[W4],
    w2: &[W4],
    aux0: &[V2<F>],
    aux1: &[V2<F>],
    aux2: &[V2<F>],
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
    bias_q: f32,
    ones: i32,
    eps: f32,
    #[comptime] warps: usize,
    #[comptime] ct: usize,
    #[comptime] tt: usize,
    #[comptime] span: usize,
    #[comptime] group: usize,
    #[comptime] fold_len: usize,
    #[comptime] magic: i32,
    #[comptime] has_bias: bool,
    #[comptime] add_residual: bool,
    #[comptime] swiglu: bool,
    #[comptime] emulate: bool,
    #[comptime] parts: usize,
    #[comptime] ahead: bool,
    #[comptime] norm: bool,
    #[comptime] half: usize,
    #[comptime] rope: bool,
    #[comptime] share: usize,
    #[define(F)] _dtype: ElemType,
) {
    let tok0 = CUBE_POS_X as usize * 8 * tt;
    let mut tiles = Array::<usize>::new(ct);
    let (part, n, first, n_out, tiles_n, tile0) = block_channels(c1, c2, n0, n1, n2, &mut tiles, ct, swiglu, share);
    let np = tiles_n * TILE_N;
    let np1 = ((n1 + TILE_N - 1) / TILE_N) * TILE_N;

    let mut emu = Shared::<[f32]>::new_slice(comptime!(shared_len(warps, ct, tt, emulate, share)));
    let mut tot = Shared::<[f32]>::new_slice(comptime!(total_len(ct, tt, share)));
    let mut acc = Array::<V2<f32>>::new(comptime!(ct * tt * 2));
    #[unroll]
    for j in 0usize..ct * tt * 2 {
        acc[j] = V2::<f32>::new(0.0f32);
    }
    let mut ss = Array::<f32>::new(tt);
    #[unroll]
    for i in 0usize..tt {
        ss[i] = 0.0f32;
    }
    let mut red_ss = Shared::<[f32]>::new_slice(comptime!(norm_slots(warps, tt, norm, share)));
    // One instance of the loop per part the product has (`parts`, compile-time): the weight and
    // aux tensors are fixed inside it, and absent parts compile to nothing.
    if comptime!(swiglu) {
        int4_units::<F>(x, gamma, &mut ss, w0, aux0, w1, aux1, &mut acc, &mut emu, &mut tot, &mut red_ss, &tiles, tiles_n, np, np1, tok0, m, k, units, bias_q, ones, warps, ct, tt, span, group, fold_len, magic, swiglu, emulate, ahead, norm, share);
    } else if comptime!(parts == 1) {
        int4_units::<F>(x, gamma, &mut ss, w0, aux0, w0, aux0, &mut acc, &mut emu, &mut tot, &mut red_ss, &tiles, tiles_n, np, np, tok0, m, k, units, bias_q, ones, warps, ct, tt, span, group, fold_len, magic, swiglu, emulate, ahead, norm, share);
    } else if part == 0u32 {
        int4_units::<F>(x, gamma, &mut ss, w0, aux0, w0, aux0, &mut acc, &mut emu, &mut tot, &mut red_ss, &tiles, tiles_n, np, np, tok0, m, k, units, bias_q, ones, warps, ct, tt, span, group, fold_len, magic, swiglu, emulate, ahead, norm, share);
    } else if part == 1u32 {
        int4_units::<F>(x, gamma, &mut ss, w1, aux1, w1, aux1, &mut acc, &mut emu, &mut tot, &mut red_ss, &tiles, tiles_n, np, np, tok0, m, k, units, bias_q, ones, warps, ct, tt, span, group, fold_len, magic, swiglu, emulate, ahead, norm, share);
    } else if comptime!(parts == 3) {
        int4_units::<F>(x, gamma, &mut ss, w2, aux2, w2, aux2, &mut acc, &mut emu, &mut tot, &mut red_ss, &tiles, tiles_n, np, np, tok0, m, k, units, bias_q, ones, warps, ct, tt, span, group, fold_len, magic, swiglu, emulate, ahead, norm, share);
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

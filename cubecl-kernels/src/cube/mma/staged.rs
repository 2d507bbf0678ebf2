//! The int4 product's weight stream through shared memory at M <= 8 (CUDA only).
//!
//! Why: at M = 1 the product is latency-bound. A lane loads a span's weight vectors into registers
//! and uses them at once, so a multiprocessor keeps ~16 KB in flight where HBM3e needs ~40 KB
//! (Little's law, `docs/perf/int4-matmul.md`); loading ahead into a second register set costs 128
//! registers per thread and holds occupancy at ~23%. Here `cp.async` copies each lane's weight
//! vectors (and its warp's scales and offsets) into a ring of `stages` slots in shared memory, so
//! `stages - 1` spans per warp are in flight without a register each. Each stage has a block-wide
//! barrier (every thread commits its copies to it and arrives once per use); the loop is unrolled
//! by `stages` so that every barrier is a compile-time choice.
//!
//! The arithmetic, its order and the units each warp takes are those of [`super::int4`]'s plain
//! loop, so the bits are the same (`int4_schedules_give_the_same_bits`).

use cubecl::prelude::barrier::{copy_async, Barrier};
use cubecl::prelude::*;

use super::int4::{load_x_span, span_products};
use super::{V2, V8, W4};
use crate::mma::{TILE_N, UNIT_K};

/// Most stages the ring takes (one barrier variable each).
pub(crate) const MOST_STAGES: usize = 4;

/// Shared slots of one stage: (weight vectors, aux pairs) per warp.
fn per_warp(ct: usize, span: usize, folds: usize) -> (usize, usize) {
    (ct * span * 32, ct * folds * 2 * 8)
}

/// Ring sizes for the whole block.
pub(super) fn ring_lens(warps: usize, ct: usize, span: usize, folds: usize, stages: usize) -> (usize, usize) {
    let (w, a) = per_warp(ct, span, folds);
    (stages.max(1) * warps * w, stages.max(1) * warps * a)
}

/// Commit this thread's copies to stage `st`'s barrier and arrive on it.
#[cube]
fn arrive_stage(b0: &Barrier, b1: &Barrier, b2: &Barrier, b3: &Barrier, #[comptime] st: usize) {
    if comptime!(st == 0) {
        b0.commit_copy_async();
        b0.arrive();
    } else if comptime!(st == 1) {
        b1.commit_copy_async();
        b1.arrive();
    } else if comptime!(st == 2) {
        b2.commit_copy_async();
        b2.arrive();
    } else {
        b3.commit_copy_async();
        b3.arrive();
    }
}

/// Wait until every thread's copies of stage `st`'s use with `parity` have landed.
#[cube]
fn wait_stage(b0: &Barrier, b1: &Barrier, b2: &Barrier, b3: &Barrier, parity: u32, #[comptime] st: usize) {
    if comptime!(st == 0) {
        b0.wait_parity(parity);
    } else if comptime!(st == 1) {
        b1.wait_parity(parity);
    } else if comptime!(st == 2) {
        b2.wait_parity(parity);
    } else {
        b3.wait_parity(parity);
    }
}

/// Issue the copies of the span at units u0 .. u0 + span into stage `st`: each lane its own weight
/// vectors, the first lane of each row group the (scale, offset) pairs of rows g and g + 8. Units past
/// the part's tiles or past K are not copied ([`read_stage`] zeroes them).
#[cube]
#[allow(clippy::too_many_arguments)]
fn issue_stage<F: Float>(
    w_a: &Array<W4>,
    aux_a: &Array<V2<F>>,
    w_b: &Array<W4>,
    aux_b: &Array<V2<F>>,
    ring_w: &mut SharedMemory<W4>,
    ring_a: &mut SharedMemory<V2<F>>,
    tiles: &Array<usize>,
    tiles_n: usize,
    np_a: usize,
    np_b: usize,
    u0: usize,
    units: usize,
    groups: usize,
    #[comptime] warps: usize,
    #[comptime] ct: usize,
    #[comptime] span: usize,
    #[comptime] group: usize,
    #[comptime] fold_len: usize,
    #[comptime] swiglu: bool,
    #[comptime] st: usize,
) {
    let lane = UNIT_POS_X as usize % 32usize;
    let warp = UNIT_POS_X as usize / 32usize;
    let g = lane / 4;
    let folds = comptime!(span * UNIT_K / fold_len);
    let (slots_w, slots_a) = comptime!(per_warp(ct, span, folds));
    let base_w = (comptime!(st * warps) + warp) * slots_w;
    let base_a = (comptime!(st * warps) + warp) * slots_a;
    #[unroll]
    for c in 0usize..ct {
        let tile_live = tiles[c] < tiles_n;
        let base = tiles[c] * units;
        #[unroll]
        for j in 0usize..span {
            if tile_live && u0 + j < units {
                let idx = (base + u0 + j) * 32 + lane;
                let slot = base_w + comptime!((c * span + j) * 32) + lane;
                if comptime!(swiglu && c == 1) {
                    copy_async(&w_b.slice(idx, idx + 1), &mut ring_w.slice_mut(slot, slot + 1), 4u32);
                } else {
                    copy_async(&w_a.slice(idx, idx + 1), &mut ring_w.slice_mut(slot, slot + 1), 4u32);
                }
            }
        }
        #[unroll]
        for f in 0usize..folds {
            let k0 = u0 * UNIT_K + f * fold_len;
            if tile_live && k0 < units * UNIT_K && lane % 4 == 0 {
                let mut grp = k0 / group;
                if grp >= groups {
                    grp = groups - 1;
                }
                #[unroll]
                for r in 0usize..2usize {
                    let slot = base_a + comptime!(((c * folds + f) * 2 + r) * 8) + g;
                    if comptime!(swiglu && c == 1) {
                        let row = grp * np_b + tiles[c] * TILE_N + g + comptime!(8 * r);
                        copy_async(&aux_b.slice(row, row + 1), &mut ring_a.slice_mut(slot, slot + 1), 2u32);
                    } else {
                        let row = grp * np_a + tiles[c] * TILE_N + g + comptime!(8 * r);
                        copy_async(&aux_a.slice(row, row + 1), &mut ring_a.slice_mut(slot, slot + 1), 2u32);
                    }
                }
            }
        }
    }
}

/// Stage `st`'s span (units u0 ..) into the registers [`span_products`] reads, zero where
/// [`issue_stage`] copied nothing.
#[cube]
#[allow(clippy::too_many_arguments)]
fn read_stage<F: Float>(
    ring_w: &SharedMemory<W4>,
    ring_a: &SharedMemory<V2<F>>,
    wv: &mut Array<W4>,
    av: &mut Array<V2<F>>,
    tiles: &Array<usize>,
    tiles_n: usize,
    u0: usize,
    units: usize,
    #[comptime] warps: usize,
    #[comptime] ct: usize,
    #[comptime] span: usize,
    #[comptime] fold_len: usize,
    #[comptime] st: usize,
) {
    let lane = UNIT_POS_X as usize % 32usize;
    let warp = UNIT_POS_X as usize / 32usize;
    let g = lane / 4;
    let folds = comptime!(span * UNIT_K / fold_len);
    let (slots_w, slots_a) = comptime!(per_warp(ct, span, folds));
    let base_w = (comptime!(st * warps) + warp) * slots_w;
    let base_a = (comptime!(st * warps) + warp) * slots_a;
    #[unroll]
    for c in 0usize..ct {
        let tile_live = tiles[c] < tiles_n;
        #[unroll]
        for j in 0usize..span {
            let mut v = W4::new(0i32);
            if tile_live && u0 + j < units {
                v = ring_w[base_w + comptime!((c * span + j) * 32) + lane];
            }
            wv[c * span + j] = v;
        }
        #[unroll]
        for f in 0usize..folds {
            let k0 = u0 * UNIT_K + f * fold_len;
            #[unroll]
            for r in 0usize..2usize {
                let mut s = V2::<F>::new(F::new(0.0));
                if tile_live && k0 < units * UNIT_K {
                    s = ring_a[base_a + comptime!(((c * folds + f) * 2 + r) * 8) + g];
                }
                av[(c * folds + f) * 2 + r] = s;
            }
        }
    }
}

/// The warp's spans of K through the ring (warp w: spans w, w + warps, ..., as the plain loop):
/// iteration i's copies are issued `stages - 1` iterations before its products. Every thread of the
/// block runs the same number of iterations (units past K copy nothing), so the barriers see every
/// arrival.
#[cube]
#[allow(clippy::too_many_arguments)]
pub(super) fn int4_units_staged<F: Float>(
    x: &Array<V8<F>>,
    w_a: &Array<W4>,
    aux_a: &Array<V2<F>>,
    w_b: &Array<W4>,
    aux_b: &Array<V2<F>>,
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
    bias_q: f32,
    a_one: &Array<V2<F>>,
    p: &mut Array<V2<f32>>,
    xs: &mut Array<V2<f32>>,
    #[comptime] warps: usize,
    #[comptime] ct: usize,
    #[comptime] span: usize,
    #[comptime] group: usize,
    #[comptime] fold_len: usize,
    #[comptime] magic: i32,
    #[comptime] swiglu: bool,
    #[comptime] stages: usize,
) {
    let warp = UNIT_POS_X as usize / 32usize;
    let folds = comptime!(span * UNIT_K / fold_len);
    let groups = (k + group - 1) / group;
    let (len_w, len_a) = comptime!(ring_lens(warps, ct, span, folds, stages));
    let mut ring_w = SharedMemory::<W4>::new(len_w);
    let mut ring_a = SharedMemory::<V2<F>>::new(len_a);
    let b0 = Barrier::shared(CUBE_DIM, UNIT_POS == 0u32);
    let b1 = Barrier::shared(CUBE_DIM, UNIT_POS == 0u32);
    let b2 = Barrier::shared(CUBE_DIM, UNIT_POS == 0u32);
    let b3 = Barrier::shared(CUBE_DIM, UNIT_POS == 0u32);
    sync_cube();

    let mut a = Array::<V2<F>>::new(comptime!(ct * 4));
    let mut b = Array::<V2<F>>::new(2usize);
    let mut wv = Array::<W4>::new(comptime!(ct * span));
    let mut av = Array::<V2<F>>::new(comptime!(ct * folds * 2));
    let mut xv = Array::<V8<F>>::new(comptime!(span * 2));

    let spans = (units + span - 1) / span;
    let iters = (spans + warps - 1) / warps;
    let step = warps * span;
    let first = warp * span;
    #[unroll]
    for st in 0usize..stages - 1 {
        issue_stage::<F>(w_a, aux_a, w_b, aux_b, &mut ring_w, &mut ring_a, tiles, tiles_n, np_a, np_b, first + st * step, units, groups, warps, ct, span, group, fold_len, swiglu, st);
        arrive_stage(&b0, &b1, &b2, &b3, st);
    }
    let mut it = 0usize;
    while it < iters {
        let parity = ((it / stages) % 2) as u32;
        #[unroll]
        for st in 0usize..stages {
            let cur = it + st;
            let refill = comptime!((st + stages - 1) % stages);
            // The slot refilled now was read last iteration; lanes of a warp share its aux pairs.
            sync_plane();
            issue_stage::<F>(w_a, aux_a, w_b, aux_b, &mut ring_w, &mut ring_a, tiles, tiles_n, np_a, np_b, first + (cur + stages - 1) * step, units, groups, warps, ct, span, group, fold_len, swiglu, refill);
            arrive_stage(&b0, &b1, &b2, &b3, refill);
            // x (from L2) is loaded before the wait, so its latency overlaps the wait's.
            let u0 = first + cur * step;
            load_x_span::<F>(x, &mut xv, tok0, m, k, u0, 1usize, span);
            wait_stage(&b0, &b1, &b2, &b3, parity, st);
            if cur < iters {
                read_stage::<F>(&ring_w, &ring_a, &mut wv, &mut av, tiles, tiles_n, u0, units, warps, ct, span, fold_len, st);
                span_products::<F>(x, &wv, &av, &mut xv, &mut a, &mut b, a_one, p, xs, acc, emu, tok0, m, k, u0, bias_q, ct, 1usize, span, fold_len, magic, false, true);
            }
        }
        it += stages;
    }
}

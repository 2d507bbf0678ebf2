//! The dense (bf16 / f16) tensor-core product (layout and reasons in [`crate::mma`]): per unit a lane
//! loads four 16-byte weight vectors per channel tile and runs 4 k-slabs of mma.

use cubecl::prelude::*;

use super::{b_regs, block_channels, epilogue, RopeOut, load_x, norm_slots, shared_len, slab_products, V2, V8};

#[cube(launch_unchecked)]
#[allow(clippy::too_many_arguments)]
pub(super) fn dense_mma_kernel<F: Float>(
    x: &Array<V8<F>>,
    gamma: &Array<V8<F>>,
    w0: &Array<V8<F>>,
    w1: &Array<V8<F>>,
    w2: &Array<V8<F>>,
    b0: &Array<F>,
    b1: &Array<F>,
    b2: &Array<F>,
    residual: &Array<F>,
    out: &mut Array<F>,
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
    #[define(F)] _dtype: StorageType,
) {
    let lane = UNIT_POS_X as usize % 32usize;
    let warp = UNIT_POS_X as usize / 32usize;
    let tok0 = CUBE_POS_X as usize * 8 * tt;
    let mut tiles = Array::<usize>::new(ct);
    let (part, n, first, n_out, tiles_n, tile0) = block_channels(c1, c2, n0, n1, n2, &mut tiles, ct, swiglu, 0usize);

    let mut emu = SharedMemory::<f32>::new(comptime!(shared_len(warps, ct, tt, emulate, 0usize)));
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
    let mut red_ss = SharedMemory::<f32>::new(comptime!(norm_slots(warps, tt, norm, 0usize)));

    let iters = (units + warps - 1) / warps;
    for it in 0usize..iters {
        let u = warp + it * warps;
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
        load_x::<F>(x, &mut xv, gamma, &mut ss, tok0, m, k, u, tt, 0usize, norm);
        #[unroll]
        for s in 0usize..4usize {
            b_regs::<F>(&xv, &mut b, tt, s, 0usize);
            #[unroll]
            for c in 0usize..ct {
                let v = wv[c * 4 + s];
                #[unroll]
                for r in 0usize..4usize {
                    let mut q = V2::<F>::new(F::new(0.0));
                    q[0usize] = v[comptime!(2 * r)];
                    q[1usize] = v[comptime!(2 * r + 1)];
                    a[c * 4 + r] = q;
                }
            }
            slab_products::<F>(&a, &b, &a, &mut acc, &mut no_sums, &mut emu, ct, tt, false, emulate);
        }
    }

    #[unroll]
    for i in 0usize..tt {
        epilogue::<F>(&acc, &mut emu, b0, b1, b2, part, residual, out, rope_out, i, tok0, m, n, n_out, first, tile0, &ss, &mut red_ss, k, eps, warps, ct, tt, has_bias, add_residual, swiglu, norm, half, rope, 0usize);
    }
}

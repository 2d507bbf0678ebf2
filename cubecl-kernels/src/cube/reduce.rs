//! Block reductions over one cube's shared slots, shared by the kernels that reduce a row (RMSNorm,
//! the drafters' top-k). Attention keeps per-warp state instead (`attention.rs`).

use cubecl::prelude::*;

/// Sum of `red[0..CUBE_DIM_X)` (a power of two, one slot per thread, all written before the call):
/// every thread reads the result from `red[0]` after the call.
#[cube]
pub(crate) fn block_sum(red: &mut Shared<[f32]>) {
    let tid = UNIT_POS_X as usize;
    sync_cube();
    let mut stride = CUBE_DIM_X as usize / 2;
    while stride > 0 {
        if tid < stride {
            red[tid] += red[tid + stride];
        }
        sync_cube();
        stride /= 2;
    }
}

/// Maximum of `red[0..CUBE_DIM_X)`, as [`block_sum`].
#[cube]
pub(crate) fn block_max(red: &mut Shared<[f32]>) {
    let tid = UNIT_POS_X as usize;
    sync_cube();
    let mut stride = CUBE_DIM_X as usize / 2;
    while stride > 0 {
        if tid < stride {
            let other = red[tid + stride];
            if other > red[tid] {
                red[tid] = other;
            }
        }
        sync_cube();
        stride /= 2;
    }
}

//! Launch shape of the tensor-core products: warps per block, token and channel tiles, the int4
//! span, fold length and load order. Everything that decides how a row is summed (warps, span, fold)
//! depends on (K, N) alone, so results stay batch-invariant; the rest only moves work between blocks
//! or changes load order.

use std::sync::OnceLock;

use super::MmaProduct;
use crate::mma::UNIT_K;

/// Warps splitting K: as many as it takes to put ~32 warps on each of ~132 multiprocessors, from
/// (K, N) alone so that a row's summation order never depends on M.
///
/// `HIERSPEC_MMA_WARPS_PER_SM` (default 32) and `HIERSPEC_MMA_WARPS_MAX` (1-32, default 16) move
/// those two numbers, to measure occupancy; both are fixed per process, so results stay
/// batch-invariant under either.
pub(super) fn warps_for(units: usize, tiles: usize, emulate: bool) -> usize {
    let per_sm = env_choice(&PER_SM, "HIERSPEC_MMA_WARPS_PER_SM").filter(|w| (1..=64).contains(w)).unwrap_or(32);
    // The emulation keeps each warp's operands in shared memory: at most 4 warps fit.
    let most = if emulate { 4 } else { env_choice(&MOST, "HIERSPEC_MMA_WARPS_MAX").filter(|w| (1..=32).contains(w)).unwrap_or(16) };
    (132 * per_sm).div_ceil(tiles.max(1)).clamp(1, most).min(units.max(1))
}

/// Token tiles of 8 per block: one block holds up to 32 tokens; more go to further blocks (which
/// re-read the weights, mostly from L2). The emulation takes one tile per block: lavapipe's compile
/// time grows steeply with the state live across its barriers. Tests may force the count
/// ([`crate::mma::set_token_tiles`]) to run the emulation over several tiles.
pub(super) fn token_tiles(m: usize, emulate: bool) -> usize {
    if let Some(forced) = crate::mma::token_tiles_forced() {
        return forced;
    }
    match m {
        _ if emulate => 1,
        0..=8 => 1,
        9..=16 => 2,
        _ => 4,
    }
}

/// Channel tiles per block: gate and up for a SwiGLU pair; two for an int4 product of at most 8
/// tokens, where each tile's own work (conversions, mma) is small beside the per-unit work a block's
/// tiles share (x loads, B registers, the group sums of x), as long as the pairs still give about a
/// block per multiprocessor (`PAIRED_BLOCKS_MIN`); fewer than that, one tile per block. A channel's
/// sum does not depend on its block's other tiles, so this may depend on M and N.
///
/// On the H100 (docs/perf/int4-matmul.md, 2026-12-07), one tile per block took the
/// Qwen2.5-Coder-1.5B down product (K = 8960, N = 1536: 48 paired blocks) from 17.5 to 12.5 us at
/// M = 1 and its AR step from 624 to 692 tok/s; the Llama-3 8B and 70B products pair into >= 128
/// blocks, where two tiles won on the H200 (be64041).
///
/// Above 16 tokens x is what a block mostly reads: each lane loads 8 x vectors per unit (32 tokens)
/// against one weight vector, from L2, once per channel tile; two tiles per block halve that. On the
/// H200 (`docs/perf/int4-matmul.md`, 0ad7d3f) that took M = 64 from 50 to 35 us (8b.qkv) and from 477
/// to 307 us (70b.down), where blocks have >= 4 warps; with 1-3 warps (many channel tiles: 8b and
/// 70b gate|up as one product) it was slower (172 -> 216 us), and at M = 16 it was mixed.
/// `HIERSPEC_MMA_WIDE=1|2` forces one or two tiles there (to measure).
pub(super) fn channel_tiles(m: usize, spec: &MmaProduct, warps: usize, tiles: usize) -> usize {
    if spec.swiglu {
        return 2;
    }
    if spec.group.is_some() && m <= 8 {
        // The epilogue's partial sums (512 bytes per warp and tile) stay within 48 KB of shared memory.
        let mut ct = int4_small_m_tiles(tiles);
        while ct > 1 && warps * ct * 512 > 48 * 1024 {
            ct /= 2;
        }
        return ct;
    }
    if spec.group.is_none() || m <= 16 {
        return 1;
    }
    match env_choice(&WIDE, "HIERSPEC_MMA_WIDE") {
        Some(w @ (1 | 2)) => w,
        _ if warps >= 4 => 2,
        _ => 1,
    }
}

/// Fewest blocks an int4 product at M <= 8 may pair its channel tiles into: ~3/4 of the H100's 132
/// multiprocessors.
const PAIRED_BLOCKS_MIN: usize = 99;

/// Warps per block that share x (0: none, the block's warps split K instead). With x shared, each
/// warp of a block owns its own channel tiles and walks the K split's `warps` virtual warps in
/// order, adding each one's partial sums into a running total: the same float operations in the same
/// order as `warps` real warps meeting in the epilogue, so the same bits, at any M. What changes is
/// the traffic: a block reads x once per `share` channel-tile sets instead of once per set. Above 16
/// tokens x is most of what the product reads from L2 (int4-matmul.md, 2026-12-04: for a dense
/// weight, 32 tokens of x are twice a channel tile's weight bytes), and where the K split is short
/// (`warps` <= 4: gate|up and lm_head, whose N is large) a warp doing all of it still leaves the grid
/// with as many warps as channel tiles.
///
/// Off by default until it is timed on the H200 (written on a day without a GPU;
/// `scripts/gpu/share.sh` is the measurement). `HIERSPEC_MMA_SHARE=8` turns it on with 8 warps per
/// block, `HIERSPEC_MMA_SHARE_W` (default 4) sets the longest K split it takes, `HIERSPEC_MMA_SHARE_M`
/// (default 17) the fewest tokens; tests force it with [`crate::mma::set_x_share`]. Never under
/// emulation unless forced (lavapipe's compile time). At most what keeps the totals (128 f32 per
/// warp, token tile and channel tile) in 32 KB of shared memory.
pub(super) fn x_share(m: usize, warps: usize, tt: usize, ct: usize, emulate: bool) -> usize {
    let share = match crate::mma::x_share_forced() {
        Some(forced) => forced,
        None if emulate => 0,
        None => {
            let most_w = env_choice(&SHARE_W, "HIERSPEC_MMA_SHARE_W").unwrap_or(4);
            let fewest_m = env_choice(&SHARE_M, "HIERSPEC_MMA_SHARE_M").unwrap_or(17);
            if warps <= most_w && m >= fewest_m { env_choice(&SHARE, "HIERSPEC_MMA_SHARE").unwrap_or(0) } else { 0 }
        }
    };
    let fits = (32 * 1024 / 4) / (tt * ct * 128);
    let most = if emulate { 4 } else { 32 };
    share.min(fits).min(most)
}

/// A numeric environment override of a kernel choice, read once per process into `cell` (lock-free
/// afterwards: this runs on every product launch).
fn env_choice(cell: &'static OnceLock<Option<usize>>, name: &str) -> Option<usize> {
    *cell.get_or_init(|| std::env::var(name).ok().and_then(|v| v.parse().ok()))
}

static WIDE: OnceLock<Option<usize>> = OnceLock::new();
static PAIR: OnceLock<Option<usize>> = OnceLock::new();
static PER_SM: OnceLock<Option<usize>> = OnceLock::new();
static MOST: OnceLock<Option<usize>> = OnceLock::new();
static SPAN: OnceLock<Option<usize>> = OnceLock::new();
static SHARE: OnceLock<Option<usize>> = OnceLock::new();
static SHARE_W: OnceLock<Option<usize>> = OnceLock::new();
static SHARE_M: OnceLock<Option<usize>> = OnceLock::new();

/// Channel tiles per int4 block at M <= 8, of a product with `tiles` tiles: two where the pairs make
/// at least `PAIRED_BLOCKS_MIN` blocks (or tests force pairing, [`crate::mma::set_paired_tiles`]),
/// else one; `HIERSPEC_MMA_PAIR=0|2|4` takes one, two or four whatever the shape (to measure).
fn int4_small_m_tiles(tiles: usize) -> usize {
    match env_choice(&PAIR, "HIERSPEC_MMA_PAIR") {
        Some(0) => 1,
        Some(4) => 4,
        Some(_) => 2,
        None if crate::mma::paired_tiles_forced().unwrap_or(tiles.div_ceil(2) >= PAIRED_BLOCKS_MIN) => 2,
        None => 1,
    }
}

/// Consecutive units a warp takes per step of the int4 product (`HIERSPEC_MMA_SPAN`: 1, 2 or 4;
/// default 2). Fixed per process and chosen without M, so results stay batch-invariant.
pub(super) fn int4_span() -> usize {
    match env_choice(&SPAN, "HIERSPEC_MMA_SPAN") {
        Some(s @ (1 | 2 | 4)) => s,
        _ => 2,
    }
}

/// Whether the int4 product at M <= 8 loads each warp's next span while it multiplies the current
/// one. Only the load order changes, so results are the same bits either way. On the H200 (0ad7d3f)
/// it helped where blocks have 1-3 warps and cost 5-17% where they have 8-16 (kernel time, before
/// CUDA graphs); on the H100 with graphs (2026-12-07, docs/perf/int4-matmul.md) it raised every AR
/// step measured: Llama-3 8B W4A16 272 -> 286 tok/s, Qwen2.5-Coder 0.5B W4A16 1180 -> 1222, 1.5B
/// even (747 -> 746). So it is on at M <= 8.
///
/// Never under emulation: with two register sets live across the emulated slab's barriers, lavapipe
/// spent over 20 minutes compiling one test's kernels (the emulation checks the arithmetic, which is
/// the same in both orders; `int4_load_ahead_gives_the_same_bits` checks the order on CUDA, forcing
/// it with [`crate::mma::set_int4_ahead`]).
pub(super) fn int4_ahead(tt: usize, emulate: bool) -> bool {
    if tt != 1 || emulate {
        return false;
    }
    crate::mma::int4_ahead_forced().unwrap_or(true)
}

/// Inputs per scale fold of the int4 product: a whole span where the group holds it (or the group is
/// the whole row), else one unit, else half a unit (groups of 32).
pub(super) fn fold_len(group: usize, k: usize, span: usize) -> usize {
    if group >= k || group % (span * UNIT_K) == 0 {
        span * UNIT_K
    } else if group % UNIT_K == 0 {
        UNIT_K
    } else {
        UNIT_K / 2
    }
}


//! Tensor-core products (`mma.sync.m16n8k16`, f32 accumulation) for the decode and verification
//! shapes, dense (bf16/f16) and W4A16, with the weights repacked once at load into the order the
//! matrix fragments want.
//!
//! Why: a scalar-FMA kernel spends ~5 instructions per int4 weight (shift, mask, convert, scale,
//! multiply-add), so it is instruction-bound far below the bandwidth at M = 1 and its time grows
//! linearly with M (a 64-token verification cost 10-16x a decode step, `docs/perf/int4-matmul.md`).
//! Here the weights are the mma's A operand (16 output channels x 16 inputs), the tokens its B operand
//! (16 inputs x 8 tokens), so M <= 8 costs one mma per weight tile and M = 64 eight, on the tensor
//! cores, while the weight bytes are read once per cube whatever M is.
//!
//! ## Packed layout (`MmaWeight`)
//! Output channels come in tiles of 16, inputs in units of 64 (4 mma k-slabs of 16). Inside a unit the
//! inputs are permuted so that each lane's fragment values are contiguous in memory on both sides:
//! lane (g, t) = (lane / 4, lane % 4) holds, for slab s (h = s / 2, s' = s % 2), the fragment's
//! logical k pairs (2t, 2t+1) and (2t+8, 2t+9) at unit offsets `32h + 8t + 4s' + {0,1}` and
//! `{2,3}` ([`unit_offset`]). The same permutation on the B side means a lane reads its 4 slabs of x
//! for one token as two 16-byte loads; the mma sums over k, so the permutation changes nothing.
//! - int4: one 32-bit word per (tile, unit, lane, slab), so each lane loads one 16-byte vector per
//!   tile and unit. Nibble j of the word is A register j % 4 (rows g and g + 8 alternate, then the
//!   second k pair), element j / 4, so `(word >> 4r) & 0x000F000F` puts register r's two values in
//!   the low bits of each 16-bit half. OR-ing in the exponent of 128 (bf16, `0x4300`) or 1024 (f16,
//!   `0x6400`) makes them exactly `BIAS + q` in one instruction; the kernel folds the bias into the
//!   offset (`o' = o - BIAS s`) and gets the group sums of x it needs from one extra mma with an
//!   all-ones A. Scales and offsets stay per (group, channel) as `aux [groups * padded n, 2]`.
//! - dense: 8 values per (tile, unit, slab, lane) in register order: one 16-byte load per slab (bf16).
//! Padding (inputs past K, channels past N) is zero.
//!
//! ## Batch invariance
//! A cube's warps split the units of K (warp w takes units w, w + W, ...) with W chosen from (K, N)
//! alone, and add their partial sums in warp order; an mma computes every output column from its own
//! token alone. So a token's result does not depend on M or on the other tokens: verification
//! reproduces the decode step's logits bit for bit. The shared-x blocks (opt-in,
//! `HIERSPEC_MMA_SHARE`) keep that: each warp owns its channel tiles and walks the W warps' units as
//! virtual warps one after another, adding each one's partials into a running total in the same
//! order, so a block can share x between warps without changing a bit.
//!
//! ## Where it runs
//! On CUDA (sm_80+) for bf16 and f16 activations. Everywhere else the scalar kernels of
//! [`crate::dense`] / [`crate::int4`] run. [`set_tensor_cores`]`(TensorCores::Emulate)` runs this
//! kernel on any cubecl runtime and dtype with each mma emulated through shared memory in the exact
//! fragment layout: that is how CI (wgpu on lavapipe, no tensor cores) tests the packing, the
//! fragment arithmetic and the epilogues of the same kernel source.

use std::cell::Cell;
use std::sync::atomic::{AtomicU8, Ordering};

use burn::module::{Module, Param};
use burn::module::ParamId;
use burn::tensor::{DType, Device, Int, Tensor};

use crate::int4::{Int4Weight, PACK};
#[cfg(feature = "cube")]
use crate::int4::SYM_ZERO;

/// Output channels per tile (the mma's M).
pub const TILE_N: usize = 16;
/// Inputs per unit: 4 k-slabs of 16, the span of one 16-byte int4 load per lane.
pub const UNIT_K: usize = 64;

/// Where a lane's fragment value sits inside its unit of 64 inputs: slab `s` (0..4), lane column `t`
/// (lane % 4), k pair `p` (0: logical k 2t, 2t+1; 1: 2t+8, 2t+9) and element `e` of the pair.
pub fn unit_offset(s: usize, t: usize, p: usize, e: usize) -> usize {
    32 * (s / 2) + 8 * t + 4 * (s % 2) + 2 * p + e
}

/// (channel within the tile, offset within the unit) of A register `r` (0..4), element `e`, of lane
/// `lane` in slab `s` (PTX m16n8k16 A layout: registers alternate rows g and g + 8, then k + 8).
pub fn fragment_position(lane: usize, s: usize, r: usize, e: usize) -> (usize, usize) {
    let (g, t) = (lane / 4, lane % 4);
    (g + 8 * (r % 2), unit_offset(s, t, r / 2, e))
}

/// Which product the fused linear layers use on cubecl runtimes. Process-wide.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TensorCores {
    /// The mma kernel where the runtime has tensor cores and the dtype is bf16 / f16.
    Auto,
    /// The mma kernel everywhere, each mma emulated in shared memory (tests on wgpu).
    Emulate,
    /// Never the mma kernel (the scalar kernels, for comparisons).
    Off,
}

static MODE: AtomicU8 = AtomicU8::new(0);

pub fn set_tensor_cores(mode: TensorCores) {
    MODE.store(mode as u8, Ordering::Relaxed);
}

pub fn tensor_cores() -> TensorCores {
    match MODE.load(Ordering::Relaxed) {
        0 => TensorCores::Auto,
        1 => TensorCores::Emulate,
        _ => TensorCores::Off,
    }
}

static AHEAD: AtomicU8 = AtomicU8::new(0);

/// Force the int4 product's load-ahead schedule at M <= 8 on (`Some(true)`) or off, or leave it to
/// the launch policy (`None`). Process-wide. Results are the same bits either way (only the load
/// order changes); tests use this to run both schedules whatever the shapes. The emulation
/// ([`TensorCores::Emulate`]) never loads ahead, forced or not.
pub fn set_int4_ahead(mode: Option<bool>) {
    AHEAD.store(match mode { None => 0, Some(false) => 1, Some(true) => 2 }, Ordering::Relaxed);
}

pub fn int4_ahead_forced() -> Option<bool> {
    match AHEAD.load(Ordering::Relaxed) {
        0 => None,
        v => Some(v == 2),
    }
}

thread_local! {
    static SHARE: Cell<Option<usize>> = const { Cell::new(None) };
    static TOKEN_TILES: Cell<Option<usize>> = const { Cell::new(None) };
    static PAIRED: Cell<Option<bool>> = const { Cell::new(None) };
}

/// Force the int4 products at M <= 8 to pair channel tiles per block (`Some(true)`), or not, or
/// leave it to the launch policy (`None`: pairs where they still fill the GPU, which no test shape
/// is large enough for), for the products this thread launches. Tests use this to cover both.
pub fn set_paired_tiles(mode: Option<bool>) {
    PAIRED.with(|s| s.set(mode));
}

pub fn paired_tiles_forced() -> Option<bool> {
    PAIRED.with(Cell::get)
}

/// Force the mma products' shared-x blocks (`Some(w)`: w warps per block share x, whatever M and
/// the K split; `Some(0)`: never) or leave them to the launch policy (`None`), for the products this
/// thread launches. Results are the same bits either way; tests use this to run both layouts on the
/// same shapes (per thread, so that tests running beside each other keep their own).
pub fn set_x_share(mode: Option<usize>) {
    SHARE.with(|s| s.set(mode));
}

pub fn x_share_forced() -> Option<usize> {
    SHARE.with(Cell::get)
}

/// Force the token tiles of 8 per block of the mma products this thread launches (`Some(1 | 2 |
/// 4)`), or leave them to the launch policy (`None`). A row's result does not depend on it; tests use
/// it to run the emulation, which otherwise takes one tile per block, over the layouts of larger M.
pub fn set_token_tiles(tiles: Option<usize>) {
    TOKEN_TILES.with(|t| t.set(tiles.filter(|t| [1, 2, 4].contains(t))));
}

pub fn token_tiles_forced() -> Option<usize> {
    TOKEN_TILES.with(Cell::get)
}

/// Whether the mma kernel accepts a product of this shape: K a multiple of 8 (x is read 8 values at a
/// time), int4 groups a multiple of 32 or the whole row (scales are applied per 32 inputs at most).
pub fn supports(k: usize, group: Option<usize>) -> bool {
    k % 8 == 0 && group.is_none_or(|g| g % 32 == 0 || g == k)
}

/// A weight in the fragment layout. `int4`: `words [tiles * units * 32, 4]` and `aux [groups *
/// tiles * 16, 2]` (scale, offset); dense: `values [tiles * units * 4 * 32, 8]`.
#[derive(Module, Debug)]
pub struct MmaWeight {
    pub words: Option<Param<Tensor<2, Int>>>,
    pub aux: Option<Param<Tensor<2>>>,
    pub values: Option<Param<Tensor<2>>>,
    pub k: usize,
    pub n: usize,
    /// int4 group size (0 for dense).
    pub group: usize,
    /// 0: channels in their natural order. h > 0: channels in RoPE pair order for heads of 2h
    /// channels ([`rope_pair_order`]), so the product's epilogue can rotate q and k itself.
    pub rope_half: usize,
}

impl MmaWeight {
    pub fn tiles(&self) -> usize {
        self.n.div_ceil(TILE_N)
    }

    pub fn units(&self) -> usize {
        self.k.div_ceil(UNIT_K)
    }

    pub fn is_int4(&self) -> bool {
        self.words.is_some()
    }

    /// The packed form of a dense [k, n] weight, where the kernels will use it (else `None`).
    pub fn dense(w: &Tensor<2>) -> Option<Self> {
        let [k, n] = w.dims();
        if !wanted(w, k, None) {
            return None;
        }
        #[cfg(feature = "cube")]
        return crate::cube::mma_pack_dense(w).map(|values| Self { words: None, aux: None, values: Some(Param::from_tensor(values)), k, n, group: 0, rope_half: 0 });
        #[cfg(not(feature = "cube"))]
        {
            let _ = n;
            None
        }
    }

    /// The packed form of an int4 weight, where the kernels will use it (else `None`).
    pub fn int4(q: &Int4Weight) -> Option<Self> {
        if !wanted(&q.scales.val(), q.k, Some(q.group)) {
            return None;
        }
        #[cfg(feature = "cube")]
        {
            let words = crate::cube::mma_pack_int4(q)?;
            return Some(Self { words: Some(Param::initialized(ParamId::new(), words)), aux: Some(Param::from_tensor(aux(q))), values: None, k: q.k, n: q.n, group: q.group, rope_half: 0 });
        }
        #[cfg(not(feature = "cube"))]
        None
    }

    /// [`Self::dense`] with the channels in RoPE pair order for heads of `head_dim` (q and k of an
    /// attention layer); `None` where the kernels will not use it or the heads do not tile.
    pub fn dense_rope(w: &Tensor<2>, head_dim: usize) -> Option<Self> {
        let [k, n] = w.dims();
        if !wanted(w, k, None) {
            return None;
        }
        let order = rope_order_tensor(n, head_dim, &w.device())?;
        let packed = Self::dense(&w.clone().select(1, order))?;
        Some(Self { rope_half: head_dim / 2, ..packed })
    }

    /// [`Self::int4`] with the channels in RoPE pair order (words, scales and offsets permuted
    /// alike).
    pub fn int4_rope(q: &Int4Weight, head_dim: usize) -> Option<Self> {
        if !wanted(&q.scales.val(), q.k, Some(q.group)) {
            return None;
        }
        let order = rope_order_tensor(q.n, head_dim, &q.scales.device())?;
        let pick = |p: &Param<Tensor<2>>| Param::from_tensor(p.val().select(1, order.clone()));
        let permuted = Int4Weight {
            qweight: Param::initialized(ParamId::new(), q.qweight.val().select(1, order.clone())),
            scales: pick(&q.scales),
            offsets: q.offsets.as_ref().map(pick),
            k: q.k,
            n: q.n,
            group: q.group,
        };
        let packed = Self::int4(&permuted)?;
        Some(Self { rope_half: head_dim / 2, ..packed })
    }
}

/// The RoPE pair order of `n` channels in heads of `head_dim` (half-split RoPE pairs dimension d
/// with d + head_dim / 2): `order[p]` is the natural channel at packed position p. In each head,
/// tile j (16 channels) holds dimensions 8j .. 8j + 8 in rows 0..8 and their partners in rows
/// 8..16, so the two halves of a pair land in rows g and g + 8 of one mma C fragment: one thread
/// holds both. `None` unless head_dim is a multiple of 16 and n of head_dim.
pub fn rope_pair_order(n: usize, head_dim: usize) -> Option<Vec<usize>> {
    if head_dim == 0 || head_dim % (2 * 8) != 0 || n % head_dim != 0 {
        return None;
    }
    let half = head_dim / 2;
    Some(
        (0..n)
            .map(|p| {
                let (w, r) = (p % head_dim, p % TILE_N);
                p - w + (w / TILE_N) * 8 + r % 8 + (r / 8) * half
            })
            .collect(),
    )
}

fn rope_order_tensor(n: usize, head_dim: usize, device: &Device) -> Option<Tensor<1, Int>> {
    let order: Vec<i64> = rope_pair_order(n, head_dim)?.into_iter().map(|c| c as i64).collect();
    Some(Tensor::from_data(burn::tensor::TensorData::new(order, [n]), device))
}

/// Pack at load when the mma kernel will run (CUDA bf16/f16, or emulation forced), so that CPU and
/// f32 models carry no second copy.
fn wanted(probe: &Tensor<2>, k: usize, group: Option<usize>) -> bool {
    if !supports(k, group) || !crate::has_kernels(&probe.device()) {
        return false;
    }
    match tensor_cores() {
        TensorCores::Off => false,
        TensorCores::Emulate => true,
        TensorCores::Auto => matches!(probe.dtype(), DType::BF16 | DType::F16) && crate::has_tensor_cores(probe),
    }
}

/// (scale, offset) per (group, padded channel), the symmetric offset made explicit (-8 scale).
#[cfg(feature = "cube")]
fn aux(q: &Int4Weight) -> Tensor<2> {
    let scales = q.scales.val();
    let offsets = match &q.offsets {
        Some(o) => o.val(),
        None => scales.clone() * (-SYM_ZERO),
    };
    let [groups, n] = scales.dims();
    let np = n.div_ceil(TILE_N) * TILE_N;
    let pad = |t: Tensor<2>| if np == n { t } else { t.pad((0, np - n, 0, 0), burn::tensor::ops::PadMode::Constant(0.0)) };
    let aux = Tensor::stack::<3>(vec![pad(scales), pad(offsets)], 2).reshape([groups * np, 2]);
    #[cfg(feature = "cube")]
    return crate::cube::contiguous(aux);
    #[cfg(not(feature = "cube"))]
    aux
}

/// Host reference of the int4 packing: engine words `[ceil(k / 8), n]` -> fragment words
/// `[tiles * units * 32 * 4]`.
pub fn pack_int4_host(words: &[u32], k: usize, n: usize) -> Vec<u32> {
    let (tiles, units) = (n.div_ceil(TILE_N), k.div_ceil(UNIT_K));
    let mut out = vec![0u32; tiles * units * 32 * 4];
    for tile in 0..tiles {
        for u in 0..units {
            for lane in 0..32 {
                for s in 0..4 {
                    let mut word = 0u32;
                    for j in 0..8 {
                        let (c, off) = fragment_position(lane, s, j % 4, j / 4);
                        let (ch, kk) = (tile * TILE_N + c, u * UNIT_K + off);
                        if ch < n && kk < k {
                            word |= ((words[(kk / PACK) * n + ch] >> (4 * (kk % PACK))) & 15) << (4 * j);
                        }
                    }
                    out[((tile * units + u) * 32 + lane) * 4 + s] = word;
                }
            }
        }
    }
    out
}

/// Host reference of the dense packing: row-major `[k, n]` -> `[tiles * units * 4 * 32 * 8]`.
pub fn pack_dense_host(w: &[f32], k: usize, n: usize) -> Vec<f32> {
    let (tiles, units) = (n.div_ceil(TILE_N), k.div_ceil(UNIT_K));
    let mut out = vec![0f32; tiles * units * 4 * 32 * 8];
    for tile in 0..tiles {
        for u in 0..units {
            for s in 0..4 {
                for lane in 0..32 {
                    for q in 0..8 {
                        let (c, off) = fragment_position(lane, s, q / 2, q % 2);
                        let (ch, kk) = (tile * TILE_N + c, u * UNIT_K + off);
                        if ch < n && kk < k {
                            out[(((tile * units + u) * 4 + s) * 32 + lane) * 8 + q] = w[kk * n + ch];
                        }
                    }
                }
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unit_offsets_are_a_permutation_of_the_unit() {
        let mut seen = [false; UNIT_K];
        for s in 0..4 {
            for t in 0..4 {
                for p in 0..2 {
                    for e in 0..2 {
                        let o = unit_offset(s, t, p, e);
                        assert!(!seen[o], "offset {o} twice");
                        seen[o] = true;
                    }
                }
            }
        }
        assert!(seen.iter().all(|&b| b));
    }

    #[test]
    fn every_packed_value_is_the_weight_its_fragment_slot_stands_for() {
        // k and n off the tiles: padding must be zero, every real value must appear exactly once.
        let (k, n) = (200, 37);
        let values: Vec<u8> = (0..k * n).map(|i| (1 + i % 15) as u8).collect();
        let words = crate::int4::pack(&values, k, n);
        let packed = pack_int4_host(&words, k, n);
        let dense: Vec<f32> = values.iter().map(|&v| v as f32).collect();
        let packed_dense = pack_dense_host(&dense, k, n);
        let (tiles, units) = (n.div_ceil(TILE_N), k.div_ceil(UNIT_K));
        let mut count = 0;
        for tile in 0..tiles {
            for u in 0..units {
                for lane in 0..32 {
                    for s in 0..4 {
                        let word = packed[((tile * units + u) * 32 + lane) * 4 + s];
                        for r in 0..4 {
                            for e in 0..2 {
                                let (c, off) = fragment_position(lane, s, r, e);
                                let (ch, kk) = (tile * TILE_N + c, u * UNIT_K + off);
                                let nibble = (word >> (4 * (r + 4 * e))) & 15;
                                let d = packed_dense[(((tile * units + u) * 4 + s) * 32 + lane) * 8 + 2 * r + e];
                                if ch < n && kk < k {
                                    assert_eq!(nibble as u8, values[kk * n + ch]);
                                    assert_eq!(d, values[kk * n + ch] as f32);
                                    count += 1;
                                } else {
                                    assert_eq!((nibble, d), (0, 0.0), "padding at tile {tile} unit {u} lane {lane}");
                                }
                            }
                        }
                    }
                }
            }
        }
        assert_eq!(count, k * n);
    }
}

//! Attention of N new rows over the KV cache: every cached row before them is visible, and among the
//! new rows an N x N mask decides (causal for prefill and sequence verification, the ancestor mask of
//! a draft tree for tree verification). GQA without repeating K/V: the query heads sharing a KV head
//! read the same rows.

use std::cell::OnceCell;

use burn::tensor::activation::softmax;
use burn::tensor::{DType, Device, Int, Tensor, TensorData};

use crate::dense::matmul;
use crate::start::CacheStart;

/// Keys per attention segment on cubecl devices: the kernel's grid has one cube per (row, head,
/// segment), so its launch shape changes where a forward's keys cross a multiple of this.
pub const SEGMENT: usize = 512;

/// A large negative bias instead of -inf: exp underflows to exactly 0 and no NaN can appear.
pub const MASKED: f32 = -1.0e30;

/// Which key rows each new row may see. The first `prefix` key rows are visible to every new row;
/// the last `cols` key rows (the new rows themselves, possibly after earlier draft rows still in the
/// cache) follow a bit mask. Packed 32 per word on the host; on the device, each row's visible masked
/// columns as a list, for the kernel (see `visible`); and the additive-bias form the reference path
/// uses (built on first use).
pub struct AttnMask {
    pub prefix: usize,
    /// New (query) rows.
    pub n: usize,
    /// Masked key rows, after the prefix; the keys are `prefix + cols` rows in all.
    pub cols: usize,
    /// Row-major [n, ceil(cols / 32)]: bit `j % 32` of word `j / 32` in row i = row i sees key prefix + j.
    pub words: Vec<u32>,
    /// [n, 1 + cols] on the device: row i holds its count c of visible masked columns, then those
    /// columns in increasing order. The kernel walks a row's keys as one logical sequence (the prefix,
    /// then these), so a tree node's attention sums its visible keys in the same chunks and slots as
    /// a single-row step over the accepted path would: greedy verification stays exact in bf16.
    pub visible: Tensor<2, Int>,
    bias: OnceCell<Tensor<2>>,
}

impl AttnMask {
    /// `allowed[i * n + j]`: new row i may see new row j; every cached row is visible.
    pub fn from_new_rows(cache_len: usize, n: usize, allowed: &[bool], device: &Device) -> Self {
        Self::new(cache_len, n, n, allowed, device)
    }

    /// `allowed[i * cols + j]`: new row i may see key row `prefix + j`.
    pub fn new(prefix: usize, n: usize, cols: usize, allowed: &[bool], device: &Device) -> Self {
        assert_eq!(allowed.len(), n * cols, "mask must be n x cols");
        let wpr = cols.div_ceil(32);
        let mut words = vec![0u32; n * wpr];
        for i in 0..n {
            for j in 0..cols {
                if allowed[i * cols + j] {
                    words[i * wpr + j / 32] |= 1 << (j % 32);
                }
            }
        }
        let list = visible_list(n, cols, |i, j| allowed[i * cols + j]);
        // Contiguous rows: a captured graph's mask is rewritten in place.
        let visible = crate::start::contiguous_ints(list, [n, cols + 1], device);
        Self { prefix, n, cols, words, visible, bias: OnceCell::new() }
    }

    pub fn causal(cache_len: usize, n: usize, device: &Device) -> Self {
        let allowed: Vec<bool> = (0..n * n).map(|k| k % n <= k / n).collect();
        Self::from_new_rows(cache_len, n, &allowed, device)
    }

    /// The causal mask a forward over `n > 1` new rows needs when its caller gave none (`None` for a
    /// single row, which sees every key). Use as `mask.or(causal.as_ref())`.
    pub fn causal_unless_given(given: Option<&AttnMask>, cache_len: usize, n: usize, device: &Device) -> Option<Self> {
        (given.is_none() && n > 1).then(|| Self::causal(cache_len, n, device))
    }

    /// Whether new row i sees masked key row j (key `prefix + j`).
    pub fn allows(&self, i: usize, j: usize) -> bool {
        self.words[i * self.cols.div_ceil(32) + j / 32] >> (j % 32) & 1 == 1
    }

    /// [n, prefix + cols] additive f32 bias: 0 where visible, [`MASKED`] where not.
    pub fn bias(&self) -> Tensor<2> {
        self.bias
            .get_or_init(|| {
                let (n, cols) = (self.n, self.cols);
                let masked: Vec<f32> =
                    (0..n * cols).map(|k| if self.allows(k / cols, k % cols) { 0.0 } else { MASKED }).collect();
                let device = self.visible.device();
                let masked = Tensor::<2>::from_data(TensorData::new(masked, [n, cols]), (&device, DType::F32));
                if self.prefix == 0 {
                    masked
                } else {
                    Tensor::cat(vec![Tensor::zeros([n, self.prefix], (&device, DType::F32)), masked], 1)
                }
            })
            .clone()
    }
}

/// The device form of a mask ([`AttnMask::visible`]), row-major [n, 1 + cols]: per new row i, the
/// count of masked columns j it sees (`sees(i, j)`), then those columns in increasing order.
pub fn visible_list(n: usize, cols: usize, sees: impl Fn(usize, usize) -> bool) -> Vec<i32> {
    let mut list = vec![0i32; n * (cols + 1)];
    for (i, row) in list.chunks_mut(cols + 1).enumerate() {
        let mut c = 0;
        for j in (0..cols).filter(|&j| sees(i, j)) {
            c += 1;
            row[c] = j as i32;
        }
        row[0] = c as i32;
    }
    list
}

/// q: [b, heads, n, hd]; k, v: [b, kv_heads, t, hd]: the cache rows so far and the new rows, already
/// written (t = mask.prefix + mask.cols). `mask: None` only for n = 1, which then sees all t rows.
/// Returns [b, heads, n, hd].
pub fn attention(
    q: Tensor<4>,
    k: Tensor<4>,
    v: Tensor<4>,
    mask: Option<&AttnMask>,
) -> Tensor<4> {
    #[cfg(feature = "cube")]
    {
        let start = CacheStart::new(k.dims()[2] - q.dims()[2], &q.device());
        if let Some(out) = crate::cube::attention(&q, &k, &v, &start, mask) {
            return out.swap_dims(1, 2);
        }
        crate::fallback::declined("attention", &q.device());
    }
    reference(q, k, v, mask)
}

/// As [`attention`] over the first `start.rows + n` rows of the cache buffers k_cache, v_cache
/// ([b, kv_heads, capacity, hd]: the rows before the new ones, then the n new rows already written),
/// in o_proj's input layout [b, n, heads * hd]. The kernel reads the buffers in place and writes
/// that layout directly: no slice or transpose copies.
pub fn attention_rows(
    q: Tensor<4>,
    k_cache: &Tensor<4>,
    v_cache: &Tensor<4>,
    start: &CacheStart,
    mask: Option<&AttnMask>,
) -> Tensor<3> {
    let [b, nh, n, hd] = q.dims();
    let keys = start.rows + n;
    #[cfg(feature = "cube")]
    if let Some(out) = crate::cube::attention(&q, k_cache, v_cache, start, mask) {
        return out.reshape([b, n, nh * hd]);
    }
    #[cfg(feature = "cube")]
    crate::fallback::declined("attention", &q.device());
    let [_, nkv, _, _] = k_cache.dims();
    let rows = |c: &Tensor<4>| c.clone().slice([0..b, 0..nkv, 0..keys, 0..hd]);
    reference(q, rows(k_cache), rows(v_cache), mask).swap_dims(1, 2).reshape([b, n, nh * hd])
}

/// Plain tensors: scores in f32, additive mask, softmax, weighted sum.
pub fn reference(
    q: Tensor<4>,
    k: Tensor<4>,
    v: Tensor<4>,
    mask: Option<&AttnMask>,
) -> Tensor<4> {
    let [b, nh, n, hd] = q.dims();
    let [_, nkv, t, _] = k.dims();
    assert!(mask.is_some() || n == 1, "attention over {n} new rows needs a mask");
    if let Some(m) = mask {
        assert_eq!((m.n, m.prefix + m.cols), (n, t), "mask shape vs rows and keys");
    }
    // The `group` query heads sharing a KV head become extra rows of one product.
    let group = nh / nkv;
    let q = q.reshape([b, nkv, group * n, hd]);
    let scores = matmul(q, k.swap_dims(2, 3)).cast(DType::F32) * (1.0 / (hd as f64).sqrt());
    let scores = match mask {
        Some(m) => (scores.reshape([b, nkv, group, n, t]) + m.bias().reshape([1, 1, 1, n, t])).reshape([b, nkv, group * n, t]),
        None => scores,
    };
    let probs = softmax(scores, 3).cast(v.dtype());
    matmul(probs, v).reshape([b, nh, n, hd])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mask_bits_round_trip_past_one_word() {
        let n = 45;
        let allowed: Vec<bool> = (0..n * n).map(|k| (k * 7 + k / n) % 3 == 0).collect();
        let m = AttnMask::from_new_rows(5, n, &allowed, &Device::flex());
        for i in 0..n {
            for j in 0..n {
                assert_eq!(m.allows(i, j), allowed[i * n + j]);
            }
        }
        let bias: Vec<f32> = m.bias().into_data().iter::<f32>().collect();
        assert_eq!(bias.len(), n * (n + 5));
        assert!(bias[..5].iter().all(|&x| x == 0.0));
        assert_eq!(bias[5] == 0.0, allowed[0]);
        let list: Vec<i32> = m.visible.into_data().iter::<i32>().collect();
        for i in 0..n {
            let row = &list[i * (n + 1)..(i + 1) * (n + 1)];
            let want: Vec<i32> = (0..n as i32).filter(|&j| allowed[i * n + j as usize]).collect();
            assert_eq!(row[1..=row[0] as usize], want[..], "row {i}'s visible columns");
        }
    }
}

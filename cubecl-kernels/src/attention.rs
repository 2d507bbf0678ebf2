//! Attention of N new rows over the KV cache: every cached row before them is visible, and among the
//! new rows an N x N mask decides (causal for prefill and sequence verification, the ancestor mask of
//! a draft tree for tree verification). GQA without repeating K/V: the query heads sharing a KV head
//! read the same rows.

use std::cell::OnceCell;

use burn::tensor::activation::softmax;
use burn::tensor::{backend::Backend, DType, Int, Tensor, TensorData};

use crate::dense::matmul;

/// A large negative bias instead of -inf: exp underflows to exactly 0 and no NaN can appear.
pub const MASKED: f32 = -1.0e30;

/// Which new rows each new row may see, packed 32 per word, plus the additive-bias form the reference
/// path uses (built on first use).
pub struct AttnMask<B: Backend> {
    pub cache_len: usize,
    pub n: usize,
    /// Row-major [n, ceil(n / 32)]: bit `j % 32` of word `j / 32` in row i = new row i sees new row j.
    pub words: Vec<u32>,
    /// The same on the device, for the kernel.
    pub bits: Tensor<B, 2, Int>,
    bias: OnceCell<Tensor<B, 2>>,
}

impl<B: Backend> AttnMask<B> {
    /// `allowed[i * n + j]`: new row i may see new row j.
    pub fn from_new_rows(cache_len: usize, n: usize, allowed: &[bool], device: &B::Device) -> Self {
        assert_eq!(allowed.len(), n * n, "mask must be n x n");
        let wpr = n.div_ceil(32);
        let mut words = vec![0u32; n * wpr];
        for i in 0..n {
            for j in 0..n {
                if allowed[i * n + j] {
                    words[i * wpr + j / 32] |= 1 << (j % 32);
                }
            }
        }
        let as_i32: Vec<i32> = words.iter().map(|&w| w as i32).collect();
        let bits = Tensor::from_data(TensorData::new(as_i32, [n, wpr]), device);
        Self { cache_len, n, words, bits, bias: OnceCell::new() }
    }

    pub fn causal(cache_len: usize, n: usize, device: &B::Device) -> Self {
        let allowed: Vec<bool> = (0..n * n).map(|k| k % n <= k / n).collect();
        Self::from_new_rows(cache_len, n, &allowed, device)
    }

    pub fn allows(&self, i: usize, j: usize) -> bool {
        self.words[i * self.n.div_ceil(32) + j / 32] >> (j % 32) & 1 == 1
    }

    /// [n, cache_len + n] additive f32 bias: 0 where visible, [`MASKED`] where not.
    pub fn bias(&self) -> Tensor<B, 2> {
        self.bias
            .get_or_init(|| {
                let n = self.n;
                let new: Vec<f32> =
                    (0..n * n).map(|k| if self.allows(k / n, k % n) { 0.0 } else { MASKED }).collect();
                let device = self.bits.device();
                let new = Tensor::<B, 2>::from_data(TensorData::new(new, [n, n]), (&device, DType::F32));
                if self.cache_len == 0 {
                    new
                } else {
                    Tensor::cat(vec![Tensor::zeros([n, self.cache_len], (&device, DType::F32)), new], 1)
                }
            })
            .clone()
    }
}

/// q: [b, heads, n, hd]; k, v: [b, kv_heads, t, hd] with t = cache_len + n (the cache rows so far and
/// the new rows, already written). `mask: None` only for n = 1. Returns [b, heads, n, hd].
pub fn attention<B: Backend>(
    q: Tensor<B, 4>,
    k: Tensor<B, 4>,
    v: Tensor<B, 4>,
    mask: Option<&AttnMask<B>>,
) -> Tensor<B, 4> {
    #[cfg(feature = "cube")]
    if let Some(out) = crate::cube::attention(&q, &k, &v, mask) {
        return out;
    }
    reference(q, k, v, mask)
}

/// Plain tensors: scores in f32, additive mask, softmax, weighted sum.
pub fn reference<B: Backend>(
    q: Tensor<B, 4>,
    k: Tensor<B, 4>,
    v: Tensor<B, 4>,
    mask: Option<&AttnMask<B>>,
) -> Tensor<B, 4> {
    let [b, nh, n, hd] = q.dims();
    let [_, nkv, t, _] = k.dims();
    assert!(mask.is_some() || n == 1, "attention over {n} new rows needs a mask");
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
    use burn::backend::Flex;

    #[test]
    fn mask_bits_round_trip_past_one_word() {
        let n = 45;
        let allowed: Vec<bool> = (0..n * n).map(|k| (k * 7 + k / n) % 3 == 0).collect();
        let m = AttnMask::<Flex>::from_new_rows(5, n, &allowed, &Default::default());
        for i in 0..n {
            for j in 0..n {
                assert_eq!(m.allows(i, j), allowed[i * n + j]);
            }
        }
        let bias: Vec<f32> = m.bias().into_data().iter::<f32>().collect();
        assert_eq!(bias.len(), n * (n + 5));
        assert!(bias[..5].iter().all(|&x| x == 0.0));
        assert_eq!(bias[5] == 0.0, allowed[0]);
    }
}

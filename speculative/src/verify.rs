//! The verifier side shared by every speculative method: a model with its own KV cache, and greedy
//! acceptance computed on the device (only the accepted length and the next token come back).

use burn::tensor::{backend::Backend, Int, Tensor, TensorData};

use hierspec_model::{AttnMask, Error, KvCache, Llama, LlamaConfig, LogitsFor, Result};

use crate::ar::tokens_tensor;

/// A model plus the cache of the sequence it has seen so far.
pub struct Runner<'a, B: Backend> {
    pub model: &'a Llama<B>,
    pub config: &'a LlamaConfig,
    pub cache: KvCache<B>,
}

impl<'a, B: Backend> Runner<'a, B> {
    pub fn new(model: &'a Llama<B>, config: &'a LlamaConfig, capacity: usize) -> Result<Self> {
        if capacity > model.max_positions() {
            return Err(Error::Setting(format!(
                "a KV cache of {capacity} rows exceeds the model's context of {} positions",
                model.max_positions()
            )));
        }
        let device = model.embed_tokens.device();
        Ok(Self { model, config, cache: KvCache::new(config, 1, capacity, &device) })
    }

    pub fn device(&self) -> B::Device {
        self.model.embed_tokens.device()
    }

    /// Append `ids` as a causal sequence after the cache; logits [n or 1, vocab].
    pub fn forward(&mut self, ids: &[u32], logits_for: LogitsFor) -> Tensor<B, 2> {
        let device = self.device();
        let start = self.cache.len();
        let out = self.model.forward(
            tokens_tensor(ids, &device),
            Llama::<B>::positions(start, ids.len(), &device),
            &mut self.cache,
            None,
            logits_for,
        );
        let [_, n, v] = out.logits.dims();
        out.logits.reshape([n, v])
    }

    /// Append tree nodes at rows [L, L + n) with positions L + depth and the ancestor mask.
    pub fn forward_tree(&mut self, tokens: &[u32], depths: &[usize], ancestor_mask: &[bool]) -> Tensor<B, 2> {
        let device = self.device();
        let l = self.cache.len();
        let n = tokens.len();
        let mask = AttnMask::from_new_rows(l, n, ancestor_mask, &device);
        let pos: Vec<i64> = depths.iter().map(|&d| (l + d) as i64).collect();
        let positions = Tensor::<B, 1, Int>::from_data(TensorData::new(pos, [n]), &device);
        let out = self.model.forward(tokens_tensor(tokens, &device), positions, &mut self.cache, Some(&mask), LogitsFor::All);
        let [_, n, v] = out.logits.dims();
        out.logits.reshape([n, v])
    }
}

/// Greedy sequence acceptance. `logits` [K + 1, vocab] are the verifier's outputs after the pending
/// token and after each of the K draft tokens. Returns (accepted drafts j, the verifier's token after
/// them). Computed on the device; one read of two integers.
pub fn accept_sequence_greedy<B: Backend>(logits: Tensor<B, 2>, draft: &[u32]) -> (usize, u32) {
    let k = draft.len();
    let argmax = logits.argmax(1).reshape([k + 1]);
    let device = argmax.device();
    let accepted = if k == 0 {
        Tensor::<B, 1, Int>::zeros([1], &device)
    } else {
        let d: Vec<i64> = draft.iter().map(|&t| t as i64).collect();
        let d = Tensor::<B, 1, Int>::from_data(TensorData::new(d, [k]), &device);
        // Count the leading matches: positions where no mismatch has happened yet.
        let mismatches = argmax.clone().slice([0..k]).not_equal(d).int().cumsum(0);
        mismatches.equal_elem(0).int().sum()
    };
    let next = argmax.select(0, accepted.clone());
    let both: Vec<i64> = Tensor::cat(vec![accepted, next], 0).into_data().iter::<i64>().collect();
    (both[0] as usize, both[1] as u32)
}

#[cfg(test)]
mod tests {
    use super::*;
    use burn::backend::Flex;

    fn logits_for(argmax: &[u32], vocab: usize) -> Tensor<Flex, 2> {
        let mut v = vec![0f32; argmax.len() * vocab];
        for (i, &a) in argmax.iter().enumerate() {
            v[i * vocab + a as usize] = 1.0;
        }
        Tensor::from_data(TensorData::new(v, [argmax.len(), vocab]), &Default::default())
    }

    #[test]
    fn longest_prefix_and_the_verifier_token() {
        // verifier says 3, 4, 5, 6 after pending, s1, s2, s3
        let l = || logits_for(&[3, 4, 5, 6], 8);
        assert_eq!(accept_sequence_greedy(l(), &[3, 4, 5]), (3, 6));
        assert_eq!(accept_sequence_greedy(l(), &[3, 4, 7]), (2, 5));
        assert_eq!(accept_sequence_greedy(l(), &[1, 4, 5]), (0, 3));
        // a later match after a mismatch does not count
        assert_eq!(accept_sequence_greedy(l(), &[3, 0, 5]), (1, 4));
        assert_eq!(accept_sequence_greedy(logits_for(&[2], 8), &[]), (0, 2));
    }
}

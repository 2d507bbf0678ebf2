//! The verifier side shared by every speculative method: a model with its own KV cache, and greedy
//! acceptance computed on the device (only the accepted length and the next token come back).

use burn::tensor::{backend::Backend, DType, Int, Tensor, TensorData};

use hierspec_model::nn::matmul::matmul;
use hierspec_model::{AttnMask, Error, ForwardOutput, KvCache, Llama, LlamaConfig, LogitsFor, Result};

use crate::ar::tokens_tensor;
use crate::tree::DraftTree;

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
        squeeze(self.run(ids, logits_for)).0
    }

    /// Append `ids` causally; logits [n, vocab] and final-norm features [n, hidden] at every row.
    pub fn forward_features(&mut self, ids: &[u32]) -> (Tensor<B, 2>, Tensor<B, 2>) {
        squeeze(self.run(ids, LogitsFor::All))
    }

    fn run(&mut self, ids: &[u32], logits_for: LogitsFor) -> ForwardOutput<B> {
        let device = self.device();
        let positions = Llama::<B>::positions(self.cache.len(), ids.len(), &device);
        self.model.forward(tokens_tensor(ids, &device), positions, &mut self.cache, None, logits_for)
    }

    /// Append tree nodes at rows [L, L + n) with positions L + depth and the ancestor mask; logits
    /// [n, vocab] and features [n, hidden].
    pub fn forward_tree(&mut self, tree: &DraftTree) -> (Tensor<B, 2>, Tensor<B, 2>) {
        let device = self.device();
        let l = self.cache.len();
        let n = tree.len();
        let mask = AttnMask::from_new_rows(l, n, &tree.ancestor_mask(), &device);
        let pos: Vec<i64> = tree.depths.iter().map(|&d| (l + d) as i64).collect();
        let positions = Tensor::<B, 1, Int>::from_data(TensorData::new(pos, [n]), &device);
        let out = self.model.forward(tokens_tensor(&tree.tokens, &device), positions, &mut self.cache, Some(&mask), LogitsFor::All);
        squeeze(out)
    }
}

/// [1, n, _] -> [n, _] for logits and features (logits may cover only the last row).
fn squeeze<B: Backend>(out: ForwardOutput<B>) -> (Tensor<B, 2>, Tensor<B, 2>) {
    let [_, n, v] = out.logits.dims();
    let [_, rows, h] = out.hidden.dims();
    (out.logits.reshape([n, v]), out.hidden.reshape([rows, h]))
}

/// The verifier's verdict on a tree: the accepted path (node indices from the root down to the
/// deepest valid node) and the verifier's own token after it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TreeAccept {
    pub path: Vec<usize>,
    pub bonus: u32,
}

/// Greedy tree acceptance (method.md): node i is valid when its token is the verifier's argmax at
/// its parent and all its ancestors are valid; the deepest valid node ends the accepted path. On the
/// device: one gather for the parents' argmax, one ancestor-matrix product to count invalid
/// ancestors, one argmax over depth-weighted validity; two integers come back.
pub fn accept_tree_greedy<B: Backend>(logits: Tensor<B, 2>, tree: &DraftTree) -> TreeAccept {
    let n = tree.len();
    let device = logits.device();
    let argmax = logits.argmax(1).reshape([n]);
    let host_int = |v: Vec<i64>| Tensor::<B, 1, Int>::from_data(TensorData::new(v, [n]), &device);
    let host_f32 = |v: Vec<f32>, shape: [usize; 2]| Tensor::<B, 2>::from_data(TensorData::new(v, shape), (&device, DType::F32));
    let parents = host_int(tree.parents.iter().map(|p| p.unwrap_or(0) as i64).collect());
    let tokens = host_int(tree.tokens.iter().map(|&t| t as i64).collect());
    // 1 where a non-root node's token differs from the verifier's choice at its parent.
    let not_root = host_f32((0..n).map(|i| if i == 0 { 0.0 } else { 1.0 }).collect(), [n, 1]);
    let mismatch = argmax.clone().select(0, parents).not_equal(tokens).float().cast(DType::F32).reshape([n, 1]) * not_root;
    let ancestors = host_f32(tree.ancestor_mask().iter().map(|&a| if a { 1.0 } else { 0.0 }).collect(), [n, n]);
    let bad = matmul(ancestors, mismatch); // [n, 1]: invalid nodes on the path root..i
    let depth = host_f32(tree.depths.iter().map(|&d| (d + 1) as f32).collect(), [n, 1]);
    let best = (bad.equal_elem(0.0).float().cast(DType::F32) * depth).reshape([n]).argmax(0);
    let bonus = argmax.select(0, best.clone());
    let both: Vec<i64> = Tensor::cat(vec![best, bonus], 0).into_data().iter::<i64>().collect();
    let mut path = vec![both[0] as usize];
    while let Some(p) = tree.parents[*path.last().unwrap()] {
        path.push(p);
    }
    path.reverse();
    TreeAccept { path, bonus: both[1] as u32 }
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

    #[test]
    fn deepest_valid_tree_path_and_bonus() {
        //        0 (root, token 9)
        //      /   \
        //    1:4   2:5          verifier argmax at root: 5
        //     |     |  \
        //    3:6   4:7  5:1     argmax at 2: 1 ; at 1: 6 (but 1 is invalid)
        //           |
        //          6:2          argmax at 5: 2 ; argmax at 6: 3 (bonus)
        let tree = DraftTree {
            tokens: vec![9, 4, 5, 6, 7, 1, 2],
            parents: vec![None, Some(0), Some(0), Some(1), Some(2), Some(2), Some(5)],
            depths: vec![0, 1, 1, 2, 2, 2, 3],
            scores: vec![0.0; 7],
        };
        let argmax = [5, 6, 1, 0, 0, 2, 3];
        let got = accept_tree_greedy(logits_for(&argmax, 10), &tree);
        assert_eq!(got, TreeAccept { path: vec![0, 2, 5, 6], bonus: 3 });
        // Node 3 matches its parent's argmax but its parent (1) is invalid: it must not count.
        let argmax = [7, 6, 0, 0, 0, 0, 0];
        let got = accept_tree_greedy(logits_for(&argmax, 10), &tree);
        assert_eq!(got, TreeAccept { path: vec![0], bonus: 7 });
    }
}

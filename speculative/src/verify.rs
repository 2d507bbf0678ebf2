//! The verifier interface shared by every speculative method: a model with its own KV cache that
//! runs a tree or a sequence after its cache, decides what to accept (greedy or sampled, see
//! `accept`), and leaves its cache holding exactly the accepted tokens.

use burn::tensor::{Device, Int, Tensor, TensorData};

use hierspec_model::{AttnMask, Error, ForwardOutput, KvCache, Llama, LlamaConfig, LogitsFor, Result};

use crate::accept::{accept_sequence_greedy, accept_sequence_sampled, accept_tree_greedy, accept_tree_sampled};
use crate::ar::tokens_tensor;
use crate::graphs::{Graphs, Request};
use crate::profile::phase;
use crate::sampling::Sampler;
use crate::tree::DraftTree;

/// A model plus the cache of the sequence it has seen so far, and the graphs its forwards replay
/// ([`Graphs`]).
pub struct Runner<'a> {
    pub model: &'a Llama,
    pub config: &'a LlamaConfig,
    pub cache: KvCache,
    pub graphs: Graphs<'a>,
}

impl<'a> Runner<'a> {
    pub fn new(model: &'a Llama, config: &'a LlamaConfig, capacity: usize) -> Result<Self> {
        if capacity > model.max_positions() {
            return Err(Error::Setting(format!(
                "a KV cache of {capacity} rows exceeds the model's context of {} positions",
                model.max_positions()
            )));
        }
        let device = model.embed_tokens.device();
        Ok(Self { model, config, cache: KvCache::new(config, 1, capacity, &device), graphs: Graphs::new(&device) })
    }

    pub fn device(&self) -> Device {
        self.model.embed_tokens.device()
    }

    /// Append `ids` as a causal sequence after the cache; logits [n or 1, vocab].
    ///
    /// Where the forward replays a graph, what it returns (here and in the other forwards) views the
    /// graph's output buffer, which the next replay of the same shape overwrites: enqueue its reads
    /// (or a copy, such as a `select`) before this runner's next forward.
    pub fn forward(&mut self, ids: &[u32], logits_for: LogitsFor) -> Tensor<2> {
        squeeze(self.run(ids, logits_for)).0
    }

    /// Append `ids` causally; logits [n, vocab] and final-norm features [n, hidden] at every row.
    pub fn forward_features(&mut self, ids: &[u32]) -> (Tensor<2>, Tensor<2>) {
        squeeze(self.run(ids, LogitsFor::All))
    }

    fn run(&mut self, ids: &[u32], logits_for: LogitsFor) -> ForwardOutput {
        let req = Request::causal(ids, self.cache.len(), logits_for);
        if let Some(out) = self.graphs.forward(self.model, &mut self.cache, req) {
            return out;
        }
        let device = self.device();
        let positions = Llama::positions(self.cache.len(), ids.len(), &device);
        self.model.forward(tokens_tensor(ids, &device), positions, &mut self.cache, None, logits_for)
    }

    /// Append tree nodes at rows [L, L + n) with positions L + depth and the ancestor mask; logits
    /// [n, vocab] and features [n, hidden].
    pub fn forward_tree(&mut self, tree: &DraftTree) -> (Tensor<2>, Tensor<2>) {
        let device = self.device();
        let l = self.cache.len();
        let n = tree.len();
        let ancestors = tree.ancestor_mask();
        let positions = tree.depths.iter().map(|&d| l + d).collect();
        let req = Request { ids: &tree.tokens, positions, prefix: l, sees: Some(&ancestors), features: None, logits_for: LogitsFor::All };
        if let Some(out) = self.graphs.forward(self.model, &mut self.cache, req) {
            return squeeze(out);
        }
        let mask = AttnMask::from_new_rows(l, n, &ancestors, &device);
        let pos: Vec<i64> = tree.depths.iter().map(|&d| (l + d) as i64).collect();
        let positions = Tensor::<1, Int>::from_data(TensorData::new(pos, [n]), &device);
        let out = self.model.forward(tokens_tensor(&tree.tokens, &device), positions, &mut self.cache, Some(&mask), LogitsFor::All);
        squeeze(out)
    }
}

/// What a verifier kept of a tree: the accepted path (node indices, root first), its own next token,
/// the tokens the round adds (the path below the root, then `next`: entry i follows path node i),
/// and its final-norm features [a, H] at the path's nodes; when sampling, also its warped
/// distributions [a, vocab] there (the q of the tokens after each path node, for a level above).
pub struct TreeVerdict {
    pub path: Vec<usize>,
    pub next: u32,
    pub tokens: Vec<u32>,
    pub features: Tensor<2>,
    pub probs: Option<Tensor<2>>,
}

impl Runner<'_> {
    /// Verify a tree rooted at the newest token (not yet in the cache) and compact the cache to the
    /// accepted path: afterwards it holds the root and the accepted drafts.
    pub fn verify_tree(&mut self, tree: &DraftTree, sampler: &mut Sampler) -> Result<TreeVerdict> {
        let (l, device) = (self.cache.len(), self.device());
        let (logits, features) = phase::<_>("tree.forward", &device, || self.forward_tree(tree));
        let (acc, probs) = phase::<_>("tree.accept", &device, || {
            if sampler.is_greedy() {
                (accept_tree_greedy(logits, tree), None)
            } else {
                let p = sampler.probs(logits);
                (accept_tree_sampled(p.clone(), tree, sampler), Some(p))
            }
        });
        let rows: Vec<usize> = acc.path.iter().map(|&i| l + i).collect();
        phase::<_>("tree.keep_rows", &device, || self.cache.keep_rows(l, &rows))?;
        let idx: Vec<i64> = acc.path.iter().map(|&i| i as i64).collect();
        let idx = Tensor::<1, Int>::from_data(TensorData::new(idx, [acc.path.len()]), &device);
        let tokens = acc.path[1..].iter().map(|&i| tree.tokens[i]).chain(std::iter::once(acc.bonus)).collect();
        let (features, probs) = phase::<_>("tree.select", &device, || (features.select(0, idx.clone()), probs.map(|p| p.select(0, idx))));
        Ok(TreeVerdict { features, probs, path: acc.path, next: acc.bonus, tokens })
    }

    /// Verify `[pending] ++ draft` causally (the actual draft length, no padding) and truncate the
    /// cache to pending plus the accepted drafts. `q` [K, vocab]: the drafter's warped distributions
    /// the drafts were sampled from (needed when sampling). Returns (accepted drafts, next token).
    pub fn verify_sequence(&mut self, pending: u32, draft: &[u32], q: Option<Tensor<2>>, sampler: &mut Sampler) -> Result<(usize, u32)> {
        let l = self.cache.len();
        let input: Vec<u32> = std::iter::once(pending).chain(draft.iter().copied()).collect();
        let device = self.device();
        let logits = phase::<_>("seq.forward", &device, || self.forward(&input, LogitsFor::All));
        let (j, next) = phase::<_>("seq.accept", &device, || {
            if sampler.is_greedy() {
                Ok(accept_sequence_greedy(logits, draft))
            } else {
                let q = q.ok_or_else(|| Error::Setting("sampled verification needs the draft distributions".into()))?;
                Ok::<_, Error>(accept_sequence_sampled(sampler.probs(logits), q, draft, sampler))
            }
        })?;
        self.cache.truncate(l + 1 + j);
        Ok((j, next))
    }
}

/// [1, n, _] -> [n, _] for logits and features (logits may cover only the last row).
fn squeeze(out: ForwardOutput) -> (Tensor<2>, Tensor<2>) {
    let [_, n, v] = out.logits.dims();
    let [_, rows, h] = out.hidden.dims();
    (out.logits.reshape([n, v]), out.hidden.reshape([rows, h]))
}


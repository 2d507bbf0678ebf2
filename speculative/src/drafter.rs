//! Tree drafters: what proposes an EAGLE-2 tree for a verifier. `EagleDrafter` runs an EAGLE head on
//! the verifier's features; `OracleDrafter` (tests) proposes a known greedy continuation, so the
//! verifier must accept every level of it. Both are driven through `TreeDrafter`:
//!   observe(features, next tokens)  pairs (f_t, token t+1) for positions the drafter has not seen
//!   catch_up()                      run the observed pairs now (the prompt's, during the prefill)
//!   draft(root)                     a tree rooted at the newest token (the verifier's pending one)
//!   truncate(len)                   forget positions >= len (re-sync after a rejection upstream)

use std::collections::HashMap;

use burn::tensor::{Device, Int, Tensor, TensorData};
use hierspec_kernels::dense::SMALL_M_MAX;
use hierspec_kernels::topk::{top_k_packed, unpack_top_k};
use hierspec_model::cache::LayerKv;
use hierspec_model::{AttnMask, EagleConfig, EagleHead, Error, KvCache, Llama, LogitsFor, Result};

use crate::ar::tokens_tensor;
use crate::graphs::{Graphs, Inputs, Key, Request};
use crate::profile::phase;
use crate::tree::{build_tree, DraftTree, FrontierNode, Proposal, TreeConfig};

pub trait TreeDrafter {
    /// Pairs for the next positions: the verifier's final-norm features [n, H] at positions
    /// t..t+n and the token at each position + 1.
    fn observe(&mut self, features: Tensor<2>, next_tokens: &[u32]) -> Result<()>;
    /// Run the observed pairs through the drafter now rather than at the next `draft` (which
    /// otherwise does it first). The prefill calls it so that a drafter's pass over the prompt is
    /// timed as prefill, not as the first decode round.
    fn catch_up(&mut self) -> Result<()> {
        Ok(())
    }
    /// Forget every position >= `len`.
    fn truncate(&mut self, len: usize);
    /// A tree rooted at `root`, the newest token (the last `next_tokens` entry observed).
    fn draft(&mut self, root: u32, cfg: &TreeConfig) -> Result<DraftTree>;
    /// Drafter forwards run so far.
    fn forwards(&self) -> usize;
}

/// After the prefill: the pairs (f_t, token t+1) of every prompt position (the prompt shifted by
/// one, then the first generated token), run through the drafter before returning (the device
/// work included), so that the prefill's time covers the drafter's prompt pass.
pub fn observe_prompt(drafter: &mut dyn TreeDrafter, features: Tensor<2>, prompt: &[u32], first: u32) -> Result<()> {
    let device = features.device();
    let next: Vec<u32> = prompt[1..].iter().copied().chain(std::iter::once(first)).collect();
    drafter.observe(features, &next)?;
    drafter.catch_up()?;
    device.sync().map_err(|e| Error::Setting(format!("device sync after the drafter's prompt pass: {e:?}")))
}

/// What a replayed head step returns: the predicted features [1, rows, H] and their top-k under the
/// base lm_head ([`top_k_packed`]).
type HeadOut = (Tensor<3>, Tensor<2>);

/// An EAGLE head drafting for `base` (whose embedding and lm_head it uses).
pub struct EagleDrafter<'a> {
    head: &'a EagleHead,
    base: &'a Llama,
    cache: KvCache,
    /// Observed pairs not yet run through the head.
    pending_features: Vec<Tensor<2>>,
    pending_tokens: Vec<u32>,
    /// The head's prediction f^ at the newest position (the root's feature).
    last: Option<Tensor<2>>,
    /// Its top-k, where the step that made it computed them (a replayed catch-up).
    first: Option<Vec<Proposal>>,
    /// The proposals per node the graphs compute (a graph freezes k).
    top_k: usize,
    /// Replayed steps: the catch-ups after a round, and the tree levels (apart, so that a level's
    /// graph never overwrites the catch-up output the next tree's root feature is read from).
    catch_ups: Graphs<'a, HeadOut>,
    levels: Graphs<'a, HeadOut>,
    forwards: usize,
}

impl<'a> EagleDrafter<'a> {
    /// `capacity`: cache rows for the sequence (prompt + new tokens); room for the draft rows of
    /// `tree` is added.
    pub fn new(head: &'a EagleHead, cfg: &EagleConfig, base: &'a Llama, capacity: usize, tree: &TreeConfig) -> Result<Self> {
        let [vocab, hidden] = base.embed_tokens.dims();
        cfg.check_dims(hidden, vocab)?;
        let capacity = capacity + tree.depth * tree.top_k + 1;
        let max = head.rope.max_positions();
        if capacity > max {
            return Err(Error::Setting(format!("EAGLE head cache of {capacity} rows exceeds its {max} positions")));
        }
        // Room for a replayed step's padding rows past the last one.
        let capacity = (capacity + BUCKET_SLACK).min(max);
        let device = base.embed_tokens.device();
        Ok(Self {
            head,
            base,
            cache: head.new_cache(cfg, capacity),
            pending_features: Vec::new(),
            pending_tokens: Vec::new(),
            last: None,
            first: None,
            top_k: tree.top_k,
            catch_ups: Graphs::new(&device),
            levels: Graphs::new(&device),
            forwards: 0,
        })
    }

    /// The head's prediction f^ at the newest position run so far [1, H] (the next tree's root
    /// feature), or `None` before the first catch-up.
    pub fn last_feature(&self) -> Option<Tensor<2>> {
        self.last.clone()
    }

    /// Every step eager (the reference the replayed steps are tested against).
    pub fn without_graphs(mut self) -> Self {
        (self.catch_ups, self.levels) = (Graphs::disabled(), Graphs::disabled());
        self
    }

    /// Graphs captured and replayed on the device (catch-ups and tree levels).
    pub fn graphs(&self) -> (usize, usize) {
        (self.catch_ups.captured + self.levels.captured, self.catch_ups.hardware + self.levels.hardware)
    }

    /// A replayed head step (see [`Graphs::run`]): its predicted features [n, H] and their top-k.
    fn replay(graphs: &mut Graphs<'a, HeadOut>, head: &'a EagleHead, base: &'a Llama, cache: &mut KvCache, req: Request, k: usize) -> Option<(Tensor<2>, Vec<Vec<Proposal>>)> {
        let n = req.ids.len();
        let build = move |_: Key, inputs: &Inputs, mask: Option<AttnMask>, mut layers: Vec<LayerKv>| -> Box<dyn FnMut() -> HeadOut + 'a> {
            let inputs = inputs.clone();
            let features = inputs.features.clone().expect("a head step's input features");
            Box::new(move || {
                let embeds = base.embed(inputs.tokens.clone());
                let out = head.forward_at(embeds, features.clone(), inputs.positions.clone(), &inputs.start, &mut layers, mask.as_ref());
                (out.clone(), lm_head_top_k(base, out, k))
            })
        };
        let (_, (out, top)) = graphs.run(cache, req, &build)?;
        let h = out.dims()[2];
        let rows = out.dims()[1];
        let feats = out.reshape([rows, h]).slice([0..n]);
        Some((feats, unpack_top_k(top, n, k).into_iter().map(proposals).collect()))
    }
}

/// Extra head-cache rows for the padding of a replayed step (up to the next row bucket).
const BUCKET_SLACK: usize = 64;

fn proposals(row: Vec<(u32, f32)>) -> Vec<Proposal> {
    row.into_iter().map(|(token, logprob)| Proposal { token, logprob }).collect()
}

impl TreeDrafter for EagleDrafter<'_> {
    fn observe(&mut self, features: Tensor<2>, next_tokens: &[u32]) -> Result<()> {
        if features.dims()[0] != next_tokens.len() {
            return Err(Error::Setting(format!("{} features for {} next tokens", features.dims()[0], next_tokens.len())));
        }
        self.pending_features.push(features);
        self.pending_tokens.extend_from_slice(next_tokens);
        Ok(())
    }

    fn truncate(&mut self, len: usize) {
        let run = self.cache.len();
        if len >= run + self.pending_tokens.len() {
            return;
        }
        self.last = None;
        self.first = None;
        if len <= run {
            self.cache.truncate(len);
            self.pending_features.clear();
            self.pending_tokens.clear();
            return;
        }
        // Observed but not yet run: keep the pairs of positions below `len`.
        let keep = len - run;
        let feats = Tensor::cat(std::mem::take(&mut self.pending_features), 0);
        self.pending_features.push(feats.slice([0..keep]));
        self.pending_tokens.truncate(keep);
    }

    /// The pending pairs, causal at their own positions, in chunks of at most [`SMALL_M_MAX`] rows
    /// (a prompt's pass then takes the small-M kernels, like the models' prefill, not burn's
    /// autotuned matmul at a new shape per prompt length); keeps the newest row's prediction.
    fn catch_up(&mut self) -> Result<()> {
        if self.pending_tokens.is_empty() {
            return Ok(());
        }
        let device = self.base.embed_tokens.device();
        let n = self.pending_tokens.len();
        let start = self.cache.len();
        if start + n > self.cache.capacity() {
            return Err(Error::Setting("EAGLE head cache is full".into()));
        }
        let feats = Tensor::cat(std::mem::take(&mut self.pending_features), 0);
        // After a round: one replayed step, which also gives the next root's proposals.
        let req = Request { features: Some(feats.clone()), ..Request::causal(&self.pending_tokens, start, LogitsFor::All) };
        let replayed = phase::<_>("draft.catch_up", &device, || Self::replay(&mut self.catch_ups, self.head, self.base, &mut self.cache, req, self.top_k));
        if let Some((out, mut top)) = replayed {
            self.forwards += 1;
            self.last = Some(out.slice([n - 1..n]));
            self.first = top.pop();
            self.pending_tokens.clear();
            return Ok(());
        }
        let out = phase::<_>("draft.catch_up", &device, || {
            let h = feats.dims()[1];
            let mut out = None;
            for s in (0..n).step_by(SMALL_M_MAX) {
                let e = (s + SMALL_M_MAX).min(n);
                let embeds = self.base.embed(tokens_tensor(&self.pending_tokens[s..e], &device));
                let f = feats.clone().slice([s..e]).reshape([1, e - s, h]);
                out = Some(self.head.forward(embeds, f, Llama::positions(start + s, e - s, &device), &mut self.cache, None));
            }
            out.expect("n > 0")
        });
        // One pass, however many chunks a prompt takes (the count is per decode round).
        self.forwards += 1;
        let [_, rows, h] = out.dims();
        self.last = Some(out.slice([0..1, rows - 1..rows, 0..h]).reshape([1, h]));
        self.pending_tokens.clear();
        Ok(())
    }

    fn draft(&mut self, root: u32, cfg: &TreeConfig) -> Result<DraftTree> {
        cfg.validate()?;
        let device = self.base.embed_tokens.device();
        if cfg.top_k != self.top_k {
            // The graphs computed another k: capture anew.
            (self.top_k, self.first) = (cfg.top_k, None);
            (self.catch_ups, self.levels) = (Graphs::new(&device), Graphs::new(&device));
        }
        self.catch_up()?;
        let last = self.last.clone().ok_or_else(|| Error::Setting("EAGLE drafter: nothing observed yet".into()))?;
        let committed = self.cache.len();
        let first = match self.first.take() {
            Some(first) => first,
            None => phase::<_>("draft.top_k", &device, || top_k_rows(self.base, last.clone(), cfg.top_k)).remove(0),
        };

        // Tree levels: each frontier node's input is (its parent's predicted feature, its token) at
        // position committed + depth - 1; it sees the committed rows and the rows of its ancestors.
        let mut row_of: HashMap<usize, usize> = HashMap::new(); // history index -> head cache row
        let mut parent_of: HashMap<usize, Option<usize>> = HashMap::new();
        // The previous level's predictions f^ [f, H], and each of its nodes' row there: a level's
        // parents are the previous level's nodes, so one gather builds its input features.
        let mut prev: Option<(Tensor<2>, HashMap<usize, usize>)> = None;
        let (head, base, k) = (self.head, self.base, cfg.top_k);
        let (cache, levels) = (&mut self.cache, &mut self.levels);
        let mut forwards = 0;
        let tree = build_tree(cfg, root, &first, |nodes: &[FrontierNode]| {
            let f = nodes.len();
            let start = cache.len();
            if start + f > cache.capacity() {
                return Err(Error::Setting("EAGLE head cache is full".into()));
            }
            let h = last.dims()[1];
            let (tokens, positions, feats, allowed) = phase::<_>("draft.level_inputs", &device, || {
                let feats = parent_features(&last, prev.as_ref(), nodes, &device)?;
                let tokens: Vec<u32> = nodes.iter().map(|nd| nd.token).collect();
                let positions: Vec<usize> = nodes.iter().map(|nd| committed + nd.depth - 1).collect();
                // Mask over the draft rows [committed, start + f).
                let cols = start + f - committed;
                let mut allowed = vec![false; f * cols];
                for (i, nd) in nodes.iter().enumerate() {
                    parent_of.insert(nd.history, nd.parent);
                    allowed[i * cols + (start - committed) + i] = true;
                    let mut a = nd.parent;
                    while let Some(p) = a {
                        allowed[i * cols + row_of[&p] - committed] = true;
                        a = parent_of[&p];
                    }
                }
                Ok::<_, Error>((tokens, positions, feats, allowed))
            })?;
            let req = Request { ids: &tokens, positions: positions.clone(), prefix: committed, sees: Some(&allowed), features: Some(feats.clone()), logits_for: LogitsFor::All };
            let replayed = phase::<_>("draft.level_forward", &device, || Self::replay(levels, head, base, cache, req, k));
            let (out, top) = match replayed {
                Some(step) => step,
                None => {
                    let out = phase::<_>("draft.level_forward", &device, || {
                        let embeds = base.embed(tokens_tensor(&tokens, &device));
                        let pos: Vec<i64> = positions.iter().map(|&p| p as i64).collect();
                        let positions = Tensor::<1, Int>::from_data(TensorData::new(pos, [f]), &device);
                        let mask = AttnMask::new(committed, f, start + f - committed, &allowed, &device);
                        head.forward(embeds, feats.reshape([1, f, h]), positions, cache, Some(&mask)).reshape([f, h])
                    });
                    let top = phase::<_>("draft.top_k", &device, || top_k_rows(base, out.clone(), k));
                    (out, top)
                }
            };
            forwards += 1;
            for (i, nd) in nodes.iter().enumerate() {
                row_of.insert(nd.history, start + i);
            }
            prev = Some((out, nodes.iter().enumerate().map(|(i, nd)| (nd.history, i)).collect()));
            Ok(top)
        });
        self.forwards += forwards;
        // Draft rows are scratch: the committed rows stay, the rest is overwritten next time.
        self.cache.truncate(committed);
        tree
    }

    fn forwards(&self) -> usize {
        self.forwards
    }
}

/// The input features of a level's nodes [f, H]: the root's predicted feature `last` [1, H] for
/// level-1 nodes, else their parents' rows of the previous level's predictions, in one gather (the
/// per-node slices and their concatenation were ~2 launches per node).
fn parent_features(last: &Tensor<2>, prev: Option<&(Tensor<2>, HashMap<usize, usize>)>, nodes: &[FrontierNode], device: &Device) -> Result<Tensor<2>> {
    if nodes.iter().all(|nd| nd.parent.is_none()) {
        return Ok(last.clone().repeat_dim(0, nodes.len()));
    }
    let (out, rows) = prev.ok_or_else(|| Error::Setting("EAGLE drafter: a frontier node's parent was never expanded".into()))?;
    let idx = nodes
        .iter()
        .map(|nd| nd.parent.and_then(|p| rows.get(&p)).map(|&r| r as i64))
        .collect::<Option<Vec<i64>>>()
        .ok_or_else(|| Error::Setting("EAGLE drafter: a frontier node's parent is not in the previous level".into()))?;
    let n = idx.len();
    Ok(out.clone().select(0, Tensor::<1, Int>::from_data(TensorData::new(idx, [n]), device)))
}

/// The base lm_head's log-softmax top-k over features [n, H]: per row, (token, log-probability).
fn top_k_rows(base: &Llama, features: Tensor<2>, k: usize) -> Vec<Vec<Proposal>> {
    let [n, h] = features.dims();
    unpack_top_k(lm_head_top_k(base, features.reshape([1, n, h]), k), n, k).into_iter().map(proposals).collect()
}

/// [`top_k_rows`] left on the device (a replayed step's last launches): features [1, n, H] ->
/// [`top_k_packed`] [n, 2k].
fn lm_head_top_k(base: &Llama, features: Tensor<3>, k: usize) -> Tensor<2> {
    let logits = base.lm_head.forward(features);
    let [_, n, v] = logits.dims();
    top_k_packed(logits.reshape([n, v]), k)
}

/// Proposes a known continuation (the verifier's own greedy output, computed beforehand) as the
/// best child at every level, with decoy siblings: the verifier must accept the whole depth.
pub struct OracleDrafter {
    /// Prompt followed by the reference continuation.
    sequence: Vec<u32>,
    /// Tokens of `sequence` the verifier has confirmed (positions observed + the root).
    known: usize,
    vocab: u32,
    forwards: usize,
}

impl OracleDrafter {
    pub fn new(prompt: &[u32], reference: &[u32], vocab: usize) -> Self {
        Self { sequence: prompt.iter().chain(reference).copied().collect(), known: 0, vocab: vocab as u32, forwards: 0 }
    }

    /// `k` proposals: the true next token first (log-prob 0) when known, then decoys.
    fn proposals(&self, truth: Option<u32>, k: usize) -> Vec<Proposal> {
        let mut v: Vec<Proposal> = truth.map(|t| Proposal { token: t, logprob: 0.0 }).into_iter().collect();
        let mut c = truth.unwrap_or(0);
        while v.len() < k {
            c = (c + 7919) % self.vocab;
            if Some(c) != truth && v.iter().all(|p| p.token != c) {
                v.push(Proposal { token: c, logprob: -1.0 - v.len() as f32 });
            }
        }
        v
    }
}

impl TreeDrafter for OracleDrafter {
    fn observe(&mut self, _features: Tensor<2>, next_tokens: &[u32]) -> Result<()> {
        // The first observation covers the prompt: positions 0..n and the tokens 1..=n.
        self.known = if self.known == 0 { next_tokens.len() + 1 } else { self.known + next_tokens.len() };
        Ok(())
    }

    fn truncate(&mut self, len: usize) {
        self.known = self.known.min(len + 1);
    }

    fn draft(&mut self, _root: u32, cfg: &TreeConfig) -> Result<DraftTree> {
        let truth = |depth: usize| self.sequence.get(self.known - 1 + depth).copied();
        let first = self.proposals(truth(1), cfg.top_k);
        let mut on_path: HashMap<usize, bool> = HashMap::new();
        let mut forwards = 1;
        let tree = build_tree(cfg, self.sequence[self.known - 1], &first, |nodes: &[FrontierNode]| {
            forwards += 1;
            Ok(nodes
                .iter()
                .map(|nd| {
                    let ok = truth(nd.depth) == Some(nd.token) && nd.parent.is_none_or(|p| on_path[&p]);
                    on_path.insert(nd.history, ok);
                    self.proposals(if ok { truth(nd.depth + 1) } else { None }, cfg.top_k)
                })
                .collect())
        });
        self.forwards += forwards;
        tree
    }

    fn forwards(&self) -> usize {
        self.forwards
    }
}

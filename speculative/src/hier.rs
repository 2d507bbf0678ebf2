//! Hierarchical speculative decoding (method.md, "One hierarchical round"): an EAGLE head E drafts
//! trees for an intermediate model D; D verifies each tree in one forward, and the accepted tokens
//! plus D's own next token grow a *sequence* draft s; once s holds at least K_min tokens, the
//! target T verifies [b] ++ s causally in one forward. It composes the other methods' parts: the
//! tree drafter and tree verification of EAGLE, the sequence verification of SD.
//!
//! One round, as a state machine (T's cache holds L tokens, b is T's newest token, not yet in it;
//! D's cache holds the same L tokens; E has observed pairs up to (f_{L-1}, b)):
//!   Inner:   until |s| >= K_min: E drafts a tree rooted at the newest token of b ++ s; D verifies
//!            it and compacts its cache; E observes D's features on the path; s grows by the path
//!            and D's next token. D's feature (and, sampling, its distribution q) at every position
//!            of s is kept.
//!   Verify:  T runs [b] ++ s and accepts j drafts plus its own next token t.
//!   Resync:  j < |s|: D's rows past b ++ s[..j] and E's pairs from position L + j on are stale;
//!            E re-observes (f_{L+j}, t) from the saved features. j = |s|: D runs s's last token
//!            (it never saw it), and E observes (that feature, t).

use std::time::Instant;

use burn::tensor::{Tensor};

use hierspec_model::{Error, LogitsFor, Result};

use crate::ar::{check_prompt, read_id, Emitter, GenerationStats, OnToken};
use crate::drafter::{observe_prompt, TreeDrafter};
use crate::profile::phase;
use crate::sampling::Sampler;
use crate::sd::{check_same_vocab, Model};
use crate::tree::TreeConfig;
use crate::verify::Runner;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HierConfig {
    /// K_min: the inner loop runs until the sequence draft holds at least this many tokens.
    pub min_draft_len: usize,
    /// The head's trees inside the hierarchy (method.md default: top-k 10, depth 3, 30 nodes).
    pub tree: TreeConfig,
}

impl Default for HierConfig {
    fn default() -> Self {
        Self { min_draft_len: 6, tree: TreeConfig { top_k: 10, depth: 3, total_nodes: 30 } }
    }
}

impl HierConfig {
    pub fn validate(&self) -> Result<()> {
        if self.min_draft_len == 0 {
            return Err(Error::Setting("--min-draft-len must be at least 1".into()));
        }
        self.tree.validate()
    }

    /// The longest sequence draft: K_min - 1 tokens, then one inner round's depth + 1.
    pub fn max_sequence(&self) -> usize {
        self.min_draft_len + self.tree.depth
    }
}

/// Generate up to `max_new` tokens of `target`, with `drafter` (a head built on `inter`, sized for
/// `prompt.len() + max_new + cfg.max_sequence()` positions) and `inter` in between.
#[allow(clippy::too_many_arguments)]
pub fn generate_hier(
    target: Model,
    inter: Model,
    drafter: &mut dyn TreeDrafter,
    cfg: &HierConfig,
    prompt: &[u32],
    max_new: usize,
    sampler: &mut Sampler,
    stop: &[u32],
    on_token: impl OnToken,
) -> Result<(Vec<u32>, GenerationStats)> {
    cfg.validate()?;
    check_same_vocab(target, inter)?;
    let vocab = target.config.vocab_size;
    let max_seq = cfg.max_sequence();
    // T writes up to 1 + max_seq rows past its cache; D a whole tree past a sequence prefix.
    let context = target.model.max_positions().min(inter.model.max_positions());
    check_prompt(prompt, max_new + max_seq + cfg.tree.total_nodes, context, vocab)?;
    let mut tgt = Runner::new(target.model, target.config, prompt.len() + max_new + max_seq + 1)?;
    let mut mid = Runner::new(inter.model, inter.config, prompt.len() + max_new + max_seq + cfg.tree.total_nodes)?;
    let mut stats = GenerationStats { prompt_tokens: prompt.len(), ..Default::default() };
    let mut em = Emitter::new(max_new, stop, on_token);
    if max_new == 0 {
        return Ok((em.out, stats));
    }

    let t0 = Instant::now();
    let pending_first = read_id(sampler.sample(tgt.forward(prompt, LogitsFor::Last).reshape([vocab])));
    let (_, features) = mid.forward_features(prompt);
    observe_prompt(drafter, features, prompt, pending_first)?;
    stats.prefill_ms = t0.elapsed().as_secs_f64() * 1e3;

    let t1 = Instant::now();
    let mut done = em.emit(pending_first);
    let mut pending = pending_first;
    while !done {
        // Inner: grow the sequence draft from trees verified by D.
        let l = tgt.cache.len();
        let want = cfg.min_draft_len.min(em.remaining()).max(1);
        let (mut s, mut features, mut q) = (Vec::with_capacity(max_seq), Vec::new(), Vec::new());
        while s.len() < want {
            let td = Instant::now();
            let tree = drafter.draft(*s.last().unwrap_or(&pending), &cfg.tree)?;
            stats.draft_ms += td.elapsed().as_secs_f64() * 1e3;

            let tm = Instant::now();
            let v = mid.verify_tree(&tree, sampler)?;
            drafter.observe(v.features.clone(), &v.tokens)?;
            stats.intermediate_forwards += 1;
            stats.intermediate_ms += tm.elapsed().as_secs_f64() * 1e3;
            stats.inner_rounds += 1;
            stats.inner_tokens += v.tokens.len();
            features.push(v.features);
            q.extend(v.probs);
            s.extend(v.tokens);
        }

        // Verify: T runs [b] ++ s.
        let tv = Instant::now();
        let q = (!q.is_empty()).then(|| Tensor::cat(q, 0));
        let (j, next) = tgt.verify_sequence(pending, &s, q, sampler)?;
        stats.target_forwards += 1;
        stats.verify_ms += tv.elapsed().as_secs_f64() * 1e3;

        // Resync D and E to b ++ s[..j], with t = next as the newest token.
        let tm = Instant::now();
        let device = mid.device();
        if j < s.len() {
            mid.cache.truncate(l + 1 + j);
            drafter.truncate(l + j);
            drafter.observe(Tensor::cat(features, 0).slice([j..j + 1]), &[next])?;
        } else {
            let (_, f) = phase::<_>("hier.catch_up", &device, || mid.forward_features(&s[j - 1..j]));
            stats.intermediate_forwards += 1;
            drafter.observe(f, &[next])?;
        }
        stats.intermediate_ms += tm.elapsed().as_secs_f64() * 1e3;

        done = em.emit_all(s[..j].iter().copied().chain(std::iter::once(next)));
        pending = next;
    }
    stats.decode_ms = t1.elapsed().as_secs_f64() * 1e3;
    stats.new_tokens = em.out.len();
    stats.draft_forwards = drafter.forwards();
    Ok((em.out, stats))
}

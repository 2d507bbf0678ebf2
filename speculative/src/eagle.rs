//! EAGLE-2 speculative decoding: a tree drafter proposes a dynamic tree rooted at the newest token,
//! the target verifies it in one forward under the ancestor mask, keeps the accepted path plus its
//! own next token (greedy: the deepest valid path; sampled: the multi-candidate rule), and compacts
//! its cache to that path. Greedy output equals the target's AR output; sampled output follows the
//! target's distribution exactly.
//!
//! One round, as a state machine over the emitted sequence:
//!   Draft:   the drafter catches up on the observed (feature, next token) pairs and builds a tree.
//!   Verify:  the target runs the tree at rows [L, L + N), positions L + depth.
//!   Accept:  on the device (greedy: two integers come back; sampled: the candidates' probabilities).
//!   Compact: the path's K/V rows move to [L, L + a); the drafter observes the path's features.

use std::time::Instant;


use hierspec_model::{Llama, LlamaConfig, Result};

use crate::ar::{check_prompt, read_id, Emitter, GenerationStats, OnToken};
use crate::drafter::{observe_prompt, TreeDrafter};
use crate::sampling::Sampler;
use crate::tree::TreeConfig;
use crate::verify::Runner;

/// Generate up to `max_new` tokens with trees from `drafter`.
#[allow(clippy::too_many_arguments)]
pub fn generate_eagle(
    model: &Llama,
    config: &LlamaConfig,
    drafter: &mut dyn TreeDrafter,
    tree: &TreeConfig,
    prompt: &[u32],
    max_new: usize,
    sampler: &mut Sampler,
    stop: &[u32],
    on_token: impl OnToken,
) -> Result<(Vec<u32>, GenerationStats)> {
    tree.validate()?;
    // Verification writes up to total_nodes rows past the accepted sequence.
    check_prompt(prompt, max_new + tree.total_nodes, model.max_positions(), config.vocab_size)?;
    let mut tgt = Runner::new(model, config, prompt.len() + max_new + tree.total_nodes)?;
    let mut stats = GenerationStats { prompt_tokens: prompt.len(), ..Default::default() };
    let mut em = Emitter::new(max_new, stop, on_token);
    if max_new == 0 {
        return Ok((em.out, stats));
    }

    let t0 = Instant::now();
    let (logits, features) = tgt.forward_features(prompt);
    let n = prompt.len();
    let vocab = config.vocab_size;
    let first = read_id(sampler.sample(logits.slice([n - 1..n]).reshape([vocab])));
    observe_prompt(drafter, features, prompt, first)?;
    stats.prefill_ms = t0.elapsed().as_secs_f64() * 1e3;

    let t1 = Instant::now();
    let mut done = em.emit(first);
    let mut pending = first;
    while !done {
        let td = Instant::now();
        let draft = drafter.draft(pending, tree)?;
        stats.draft_ms += td.elapsed().as_secs_f64() * 1e3;

        let tv = Instant::now();
        let v = tgt.verify_tree(&draft, sampler)?;
        stats.target_forwards += 1;
        stats.verify_ms += tv.elapsed().as_secs_f64() * 1e3;

        // Each new token is the "next token" of a path node.
        drafter.observe(v.features, &v.tokens)?;
        done = em.emit_all(v.tokens);
        pending = v.next;
    }
    stats.decode_ms = t1.elapsed().as_secs_f64() * 1e3;
    stats.new_tokens = em.out.len();
    stats.draft_forwards = drafter.forwards();
    Ok((em.out, stats))
}

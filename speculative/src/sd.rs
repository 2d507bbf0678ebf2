//! Draft-model speculative decoding: a smaller model of the same tokenizer drafts K tokens
//! autoregressively (argmax, or sampled from its warped distribution q), the target verifies
//! [pending] ++ drafts in one causal forward and keeps the accepted prefix plus its own next token
//! (greedy: the longest agreeing prefix; sampled: speculative sampling against q). Greedy output
//! equals the target's AR output; sampled output follows the target's distribution exactly.
//!
//! One round, as a state machine over the sequence (prompt + emitted tokens):
//!   Draft:   the drafter reads the tokens of the sequence it has not seen, then proposes K tokens.
//!   Verify:  the target runs [pending] ++ drafts; acceptance gives (j, next).
//!   Resync:  the target cache keeps pending + j drafts; the drafter's keeps what it fed that was
//!            accepted; both overwrite the rest next round.

use std::time::Instant;

use burn::tensor::{Tensor};

use hierspec_model::{Error, Llama, LlamaConfig, LogitsFor, Result};

use crate::ar::{check_prompt, read_id, Emitter, GenerationStats, OnToken};
use crate::profile::phase;
use crate::sampling::Sampler;
use crate::verify::Runner;

pub struct Model<'a> {
    pub model: &'a Llama,
    pub config: &'a LlamaConfig,
}

// By hand: a derive would ask `B: Copy`.
impl Clone for Model<'_> {
    fn clone(&self) -> Self {
        *self
    }
}
impl Copy for Model<'_> {}

/// Both models must share the vocabulary: a draft's token ids are the target's.
pub fn check_same_vocab(target: Model, draft: Model) -> Result<()> {
    if draft.config.vocab_size != target.config.vocab_size {
        return Err(Error::Setting(format!(
            "the draft model's vocabulary ({}) differs from the target's ({}): they must share a tokenizer",
            draft.config.vocab_size, target.config.vocab_size
        )));
    }
    Ok(())
}

/// Generate up to `max_new` tokens with `draft_len` drafts per round.
pub fn generate_sd(
    target: Model,
    draft: Model,
    prompt: &[u32],
    max_new: usize,
    draft_len: usize,
    sampler: &mut Sampler,
    stop: &[u32],
    on_token: impl OnToken,
) -> Result<(Vec<u32>, GenerationStats)> {
    if draft_len == 0 {
        return Err(Error::Setting("--draft-len must be at least 1".into()));
    }
    check_same_vocab(target, draft)?;
    // Verification writes up to draft_len + 1 rows past the accepted sequence.
    let capacity = prompt.len() + max_new + draft_len + 1;
    let context = target.model.max_positions().min(draft.model.max_positions());
    check_prompt(prompt, max_new + draft_len + 1, context, target.config.vocab_size)?;
    let mut tgt = Runner::new(target.model, target.config, capacity)?;
    let mut drf = Runner::new(draft.model, draft.config, capacity)?;
    let mut stats = GenerationStats { prompt_tokens: prompt.len(), ..Default::default() };
    let mut em = Emitter::new(max_new, stop, on_token);
    if max_new == 0 {
        return Ok((em.out, stats));
    }

    let t0 = Instant::now();
    let vocab = target.config.vocab_size;
    let first = read_id(sampler.sample(tgt.forward(prompt, LogitsFor::Last).reshape([vocab])));
    drf.forward(prompt, LogitsFor::Last);
    stats.prefill_ms = t0.elapsed().as_secs_f64() * 1e3;

    let t1 = Instant::now();
    let mut done = em.emit(first);
    while !done {
        let td = Instant::now();
        // Draft: catch up on unseen tokens (the pending one at least), then propose.
        let k = draft_len.min(em.remaining());
        let unseen: Vec<u32> = prompt.iter().chain(&em.out).skip(drf.cache.len()).copied().collect();
        let device = drf.device();
        let mut logits = phase::<_>("sd.draft_forward", &device, || drf.forward(&unseen, LogitsFor::Last));
        let mut drafts = Vec::with_capacity(k);
        let mut q = Vec::new();
        loop {
            let t = phase::<_>("sd.draft_pick", &device, || {
                if sampler.is_greedy() {
                    read_id(hierspec_kernels::topk::argmax(logits))
                } else {
                    let probs = sampler.probs(logits);
                    q.push(probs.clone());
                    read_id(sampler.draw(probs.reshape([vocab])))
                }
            });
            drafts.push(t);
            if drafts.len() == k {
                break;
            }
            logits = phase::<_>("sd.draft_forward", &device, || drf.forward(&[t], LogitsFor::Last));
        }
        stats.draft_forwards += k;
        stats.draft_ms += td.elapsed().as_secs_f64() * 1e3;
        let tv = Instant::now();

        // Verify [pending] ++ drafts in one forward.
        let l = tgt.cache.len();
        let q = (!q.is_empty()).then(|| Tensor::cat(q, 0));
        let pending = *em.out.last().expect("the first token was emitted");
        let (j, next) = tgt.verify_sequence(pending, &drafts, q, sampler)?;
        stats.target_forwards += 1;
        stats.verify_ms += tv.elapsed().as_secs_f64() * 1e3;

        // Resync: the target kept pending + j drafts; the drafter's rows past them are stale (it
        // never ran its last draft).
        drf.cache.truncate(l + 1 + j.min(k - 1));
        done = em.emit_all(drafts[..j].iter().copied().chain(std::iter::once(next)));
    }
    stats.decode_ms = t1.elapsed().as_secs_f64() * 1e3;
    stats.new_tokens = em.out.len();
    Ok((em.out, stats))
}

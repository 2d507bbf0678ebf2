//! Draft-model speculative decoding (greedy): a smaller model of the same tokenizer drafts K tokens
//! autoregressively, the target verifies [pending] ++ drafts in one causal forward and keeps the
//! longest agreeing prefix plus its own next token. Output equals the target's AR greedy output.
//!
//! One round, as a state machine over the shared sequence `seq` (prompt + emitted tokens):
//!   Draft:   the drafter reads the tokens of `seq` it has not seen, then proposes K tokens.
//!   Verify:  the target runs [pending] ++ drafts; acceptance on the device gives (j, next).
//!   Resync:  the target cache keeps pending + j drafts; the drafter's keeps what it fed that was
//!            accepted; both overwrite the rest next round.

use std::time::Instant;

use burn::tensor::backend::Backend;

use hierspec_model::{Error, Llama, LlamaConfig, LogitsFor, Result};

use crate::ar::{check_prompt, read_id, GenerationStats};
use crate::verify::{accept_sequence_greedy, Runner};

pub struct Model<'a, B: Backend> {
    pub model: &'a Llama<B>,
    pub config: &'a LlamaConfig,
}

/// Generate up to `max_new` tokens with `draft_len` drafts per round; greedy only.
pub fn generate_sd<B: Backend>(
    target: Model<B>,
    draft: Model<B>,
    prompt: &[u32],
    max_new: usize,
    draft_len: usize,
    stop: &[u32],
    mut on_token: impl FnMut(u32),
) -> Result<(Vec<u32>, GenerationStats)> {
    if draft_len == 0 {
        return Err(Error::Setting("--draft-len must be at least 1".into()));
    }
    if draft.config.vocab_size != target.config.vocab_size {
        return Err(Error::Setting(format!(
            "the draft model's vocabulary ({}) differs from the target's ({}): they must share a tokenizer",
            draft.config.vocab_size, target.config.vocab_size
        )));
    }
    // Verification writes up to draft_len + 1 rows past the accepted sequence.
    let capacity = prompt.len() + max_new + draft_len + 1;
    let context = target.model.max_positions().min(draft.model.max_positions());
    check_prompt(prompt, max_new + draft_len + 1, context, target.config.vocab_size)?;
    let mut tgt = Runner::new(target.model, target.config, capacity)?;
    let mut drf = Runner::new(draft.model, draft.config, capacity)?;
    let mut stats = GenerationStats { prompt_tokens: prompt.len(), ..Default::default() };
    let mut out = Vec::with_capacity(max_new + draft_len + 1);
    if max_new == 0 {
        return Ok((out, stats));
    }

    let t0 = Instant::now();
    let first = read_id(tgt.forward(prompt, LogitsFor::Last).argmax(1).reshape([1]));
    drf.forward(prompt, LogitsFor::Last);
    stats.prefill_ms = t0.elapsed().as_secs_f64() * 1e3;

    let t1 = Instant::now();
    let mut seq: Vec<u32> = prompt.to_vec();
    let mut emit = |t: u32, seq: &mut Vec<u32>, out: &mut Vec<u32>| -> bool {
        seq.push(t);
        out.push(t);
        on_token(t);
        out.len() >= max_new || stop.contains(&t)
    };
    let mut done = emit(first, &mut seq, &mut out);
    while !done {
        let td = Instant::now();
        // Draft: catch up on unseen tokens (the pending one at least), then propose.
        let k = draft_len.min(max_new - out.len());
        let unseen = seq[drf.cache.len()..].to_vec();
        let mut drafts = vec![read_id(drf.forward(&unseen, LogitsFor::Last).argmax(1).reshape([1]))];
        while drafts.len() < k {
            let last = *drafts.last().unwrap();
            drafts.push(read_id(drf.forward(&[last], LogitsFor::Last).argmax(1).reshape([1])));
        }
        stats.draft_forwards += k;
        stats.draft_ms += td.elapsed().as_secs_f64() * 1e3;
        let tv = Instant::now();

        // Verify [pending] ++ drafts in one forward.
        let l = tgt.cache.len();
        let pending = *seq.last().unwrap();
        let mut input = Vec::with_capacity(k + 1);
        input.push(pending);
        input.extend_from_slice(&drafts);
        let (j, next) = accept_sequence_greedy(tgt.forward(&input, LogitsFor::All), &drafts);
        stats.target_forwards += 1;
        stats.verify_ms += tv.elapsed().as_secs_f64() * 1e3;

        // Resync: rows past the accepted prefix are stale in both caches.
        tgt.cache.truncate(l + 1 + j);
        drf.cache.truncate(l + 1 + j.min(k - 1));
        for &t in drafts[..j].iter().chain(std::iter::once(&next)) {
            if emit(t, &mut seq, &mut out) {
                done = true;
                break;
            }
        }
    }
    stats.decode_ms = t1.elapsed().as_secs_f64() * 1e3;
    stats.new_tokens = out.len();
    Ok((out, stats))
}

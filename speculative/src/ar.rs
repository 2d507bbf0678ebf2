//! Autoregressive decoding: the baseline every speculative method must reproduce token for token.

use std::time::Instant;

use burn::tensor::{Device, Int, Tensor, TensorData};

use hierspec_model::{Error, Llama, LlamaConfig, LogitsFor, Result};

use crate::sampling::Sampler;
use crate::verify::Runner;

#[derive(Debug, Clone, Default, PartialEq)]
pub struct GenerationStats {
    pub prompt_tokens: usize,
    pub new_tokens: usize,
    /// Prefill until the first new token is on the host.
    pub prefill_ms: f64,
    /// Everything after the first token.
    pub decode_ms: f64,
    /// Target forwards in the decode phase.
    pub target_forwards: usize,
    /// Drafter forwards (token steps) in the decode phase.
    pub draft_forwards: usize,
    /// Decode time spent drafting and verifying (speculative methods; host clock, each phase ends
    /// with a read to the host).
    pub draft_ms: f64,
    pub verify_ms: f64,
    /// Hierarchy: forwards of the intermediate model (tree verifications and catch-ups), and the
    /// time they took.
    pub intermediate_forwards: usize,
    pub intermediate_ms: f64,
    /// Hierarchy: inner rounds (a head tree verified by the intermediate) and the tokens they added
    /// to the sequence draft, the intermediate's bonus token counted.
    pub inner_rounds: usize,
    pub inner_tokens: usize,
}

impl GenerationStats {
    /// Mean accepted length: tokens emitted after the prefill token per target forward, counting
    /// the target's own (bonus) token.
    pub fn tau(&self) -> f64 {
        if self.target_forwards == 0 { 0.0 } else { self.new_tokens.saturating_sub(1) as f64 / self.target_forwards as f64 }
    }

    /// Mean tokens an inner round (head -> intermediate) adds, the intermediate's bonus counted.
    pub fn inner_tau(&self) -> f64 {
        if self.inner_rounds == 0 { 0.0 } else { self.inner_tokens as f64 / self.inner_rounds as f64 }
    }

    /// Decode tokens/s: tokens produced after the first one over the decode time.
    pub fn decode_tok_s(&self) -> f64 {
        let n = self.new_tokens.saturating_sub(1);
        if self.decode_ms > 0.0 { n as f64 / (self.decode_ms / 1e3) } else { 0.0 }
    }
}

/// Check a prompt before any work: not empty, ids inside the vocabulary, and the prompt plus `new`
/// more cache rows within the context.
pub fn check_prompt(prompt: &[u32], new: usize, context: usize, vocab: usize) -> Result<()> {
    if prompt.is_empty() {
        return Err(Error::Setting("the prompt is empty".into()));
    }
    if let Some(&bad) = prompt.iter().find(|&&t| t as usize >= vocab) {
        return Err(Error::Setting(format!("token id {bad} is outside the vocabulary ({vocab})")));
    }
    if prompt.len() + new > context {
        return Err(Error::ContextOverflow { prompt: prompt.len(), new, context });
    }
    Ok(())
}

/// What a method hands each new token to, as soon as it is on the host. A plain `FnMut(u32)` closure
/// streams; an [`Until`] closure also decides whether generation goes on (a server stops once its
/// client has gone).
pub trait OnToken {
    /// Take `t`; false stops generation after it.
    fn take(&mut self, t: u32) -> bool;
}

impl<F: FnMut(u32)> OnToken for F {
    fn take(&mut self, t: u32) -> bool {
        self(t);
        true
    }
}

/// A token callback that returns whether to go on.
pub struct Until<F>(pub F);

impl<F: FnMut(u32) -> bool> OnToken for Until<F> {
    fn take(&mut self, t: u32) -> bool {
        (self.0)(t)
    }
}

/// The tokens a method has emitted, and the stop rule every method shares: stop after `max_new`
/// tokens, after any stop token (which is emitted), or when `on_token` says so.
pub struct Emitter<'a, F: OnToken> {
    pub out: Vec<u32>,
    max_new: usize,
    stop: &'a [u32],
    on_token: F,
}

impl<'a, F: OnToken> Emitter<'a, F> {
    pub fn new(max_new: usize, stop: &'a [u32], on_token: F) -> Self {
        Self { out: Vec::with_capacity(max_new), max_new, stop, on_token }
    }

    /// Emit `t`; true when generation is over.
    pub fn emit(&mut self, t: u32) -> bool {
        self.out.push(t);
        let go_on = self.on_token.take(t);
        !go_on || self.out.len() >= self.max_new || self.stop.contains(&t)
    }

    /// Emit tokens in order until generation is over; true when it is.
    pub fn emit_all(&mut self, tokens: impl IntoIterator<Item = u32>) -> bool {
        tokens.into_iter().any(|t| self.emit(t))
    }

    pub fn remaining(&self) -> usize {
        self.max_new - self.out.len()
    }
}

pub fn tokens_tensor(ids: &[u32], device: &Device) -> Tensor<2, Int> {
    let v: Vec<i64> = ids.iter().map(|&t| t as i64).collect();
    Tensor::from_data(TensorData::new(v, [1, ids.len()]), device)
}

pub fn read_id(t: Tensor<1, Int>) -> u32 {
    t.into_data().iter::<i64>().next().expect("one id") as u32
}

/// Generate up to `max_new` tokens after `prompt`, stopping after any of `stop`. `on_token` sees each
/// new id as soon as it is on the host (for streaming), and may stop generation ([`OnToken`]).
pub fn generate(
    model: &Llama,
    config: &LlamaConfig,
    prompt: &[u32],
    max_new: usize,
    sampler: &mut Sampler,
    stop: &[u32],
    on_token: impl OnToken,
) -> Result<(Vec<u32>, GenerationStats)> {
    check_prompt(prompt, max_new, model.max_positions(), config.vocab_size)?;
    let mut target = Runner::new(model, config, prompt.len() + max_new)?;
    let mut stats = GenerationStats { prompt_tokens: prompt.len(), ..Default::default() };
    let mut em = Emitter::new(max_new, stop, on_token);
    if max_new == 0 {
        return Ok((em.out, stats));
    }

    let t0 = Instant::now();
    let logits = target.forward(prompt, LogitsFor::Last);
    let mut id = read_id(sampler.sample(logits.reshape([config.vocab_size])));
    stats.prefill_ms = t0.elapsed().as_secs_f64() * 1e3;

    let t1 = Instant::now();
    let device = target.device();
    while !em.emit(id) {
        id = crate::profile::phase::<_>("ar.step", &device, || read_id(sampler.sample(target.forward(&[id], LogitsFor::Last).reshape([config.vocab_size]))));
        stats.target_forwards += 1;
    }
    stats.decode_ms = t1.elapsed().as_secs_f64() * 1e3;
    stats.new_tokens = em.out.len();
    Ok((em.out, stats))
}

#[cfg(test)]
mod tests {
    use super::{Emitter, Until};

    #[test]
    fn emitter_stops_at_max_new_a_stop_token_or_the_callback() {
        let mut seen = Vec::new();
        let mut em = Emitter::new(5, &[9], |t| seen.push(t));
        assert!(!em.emit_all([1, 2]));
        assert!(em.emit_all([3, 9, 4]), "a stop token ends generation");
        assert_eq!(em.out, vec![1, 2, 3, 9]);
        drop(em);
        assert_eq!(seen, vec![1, 2, 3, 9]);

        let mut em = Emitter::new(3, &[], |_| {});
        assert!(em.emit_all(0..10));
        assert_eq!(em.out.len(), 3);

        // A callback that says stop ends generation after that token.
        let mut em = Emitter::new(100, &[], Until(|t| t < 4));
        assert!(em.emit_all(0..10));
        assert_eq!(em.out, vec![0, 1, 2, 3, 4]);
    }
}

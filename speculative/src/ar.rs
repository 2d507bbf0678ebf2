//! Autoregressive decoding: the baseline every speculative method must reproduce token for token.

use std::time::Instant;

use burn::tensor::{backend::Backend, Int, Tensor, TensorData};

use hierspec_model::{Error, KvCache, Llama, LlamaConfig, LogitsFor, Result};

use crate::sampling::Sampler;

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
}

impl GenerationStats {
    /// Mean accepted length: tokens emitted after the prefill token per target forward, counting
    /// the target's own (bonus) token.
    pub fn tau(&self) -> f64 {
        if self.target_forwards == 0 { 0.0 } else { self.new_tokens.saturating_sub(1) as f64 / self.target_forwards as f64 }
    }

    /// Decode tokens/s: tokens produced after the first one over the decode time.
    pub fn decode_tok_s(&self) -> f64 {
        let n = self.new_tokens.saturating_sub(1);
        if self.decode_ms > 0.0 { n as f64 / (self.decode_ms / 1e3) } else { 0.0 }
    }
}

/// Check that a prompt plus its new tokens fit the model's context.
pub fn check_context(prompt: usize, max_new: usize, context: usize) -> Result<()> {
    if prompt == 0 {
        return Err(Error::Setting("the prompt is empty".into()));
    }
    if prompt + max_new > context {
        return Err(Error::ContextOverflow { prompt, new: max_new, context });
    }
    Ok(())
}

pub fn tokens_tensor<B: Backend>(ids: &[u32], device: &B::Device) -> Tensor<B, 2, Int> {
    let v: Vec<i64> = ids.iter().map(|&t| t as i64).collect();
    Tensor::from_data(TensorData::new(v, [1, ids.len()]), device)
}

pub fn read_id<B: Backend>(t: Tensor<B, 1, Int>) -> u32 {
    t.into_data().iter::<i64>().next().expect("one id") as u32
}

/// Generate up to `max_new` tokens after `prompt`, stopping after any of `stop`. `on_token` sees each
/// new id as soon as it is on the host (for streaming).
pub fn generate<B: Backend>(
    model: &Llama<B>,
    config: &LlamaConfig,
    prompt: &[u32],
    max_new: usize,
    sampler: &mut Sampler,
    stop: &[u32],
    mut on_token: impl FnMut(u32),
) -> Result<(Vec<u32>, GenerationStats)> {
    check_context(prompt.len(), max_new, model.max_positions())?;
    if let Some(&bad) = prompt.iter().find(|&&t| t as usize >= config.vocab_size) {
        return Err(Error::Setting(format!("token id {bad} is outside the vocabulary ({})", config.vocab_size)));
    }
    let device = model.embed_tokens.device();
    let mut cache = KvCache::new(config, 1, prompt.len() + max_new, &device);
    let mut stats = GenerationStats { prompt_tokens: prompt.len(), ..Default::default() };
    let mut out = Vec::with_capacity(max_new);
    if max_new == 0 {
        return Ok((out, stats));
    }

    let t0 = Instant::now();
    let positions = Llama::<B>::positions(0, prompt.len(), &device);
    let logits = model.forward(tokens_tensor(prompt, &device), positions, &mut cache, None, LogitsFor::Last).logits;
    let mut next = sampler.sample(logits.reshape([config.vocab_size]));
    let mut id = read_id(next.clone());
    stats.prefill_ms = t0.elapsed().as_secs_f64() * 1e3;

    let t1 = Instant::now();
    loop {
        out.push(id);
        on_token(id);
        if out.len() >= max_new || stop.contains(&id) {
            break;
        }
        let pos = cache.len();
        let logits = model
            .forward(next.reshape([1, 1]), Llama::<B>::positions(pos, 1, &device), &mut cache, None, LogitsFor::Last)
            .logits;
        stats.target_forwards += 1;
        next = sampler.sample(logits.reshape([config.vocab_size]));
        id = read_id(next.clone());
    }
    stats.decode_ms = t1.elapsed().as_secs_f64() * 1e3;
    stats.new_tokens = out.len();
    Ok((out, stats))
}

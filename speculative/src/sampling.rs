//! Token selection on the device: greedy argmax, or temperature + top-k + top-p sampling. Only the
//! chosen id leaves the device; the uniform draw comes from a seeded host RNG so runs repeat.

use burn::tensor::activation::softmax;
use burn::tensor::{backend::Backend, DType, Int, Tensor};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

use hierspec_model::{Error, Result};

#[derive(Debug, Clone, Copy, PartialEq)]
pub struct SamplingParams {
    /// 0 means greedy.
    pub temperature: f32,
    /// Nucleus mass in (0, 1]; 1 disables.
    pub top_p: f32,
    /// 0 disables.
    pub top_k: usize,
    pub seed: u64,
}

impl Default for SamplingParams {
    fn default() -> Self {
        Self { temperature: 0.0, top_p: 1.0, top_k: 0, seed: 0 }
    }
}

impl SamplingParams {
    pub fn validate(&self) -> Result<()> {
        if !(self.temperature >= 0.0) || !self.temperature.is_finite() {
            return Err(Error::Setting(format!("temperature must be >= 0, got {}", self.temperature)));
        }
        if !(self.top_p > 0.0 && self.top_p <= 1.0) {
            return Err(Error::Setting(format!("top-p must be in (0, 1], got {}", self.top_p)));
        }
        Ok(())
    }
    pub fn is_greedy(&self) -> bool {
        self.temperature == 0.0
    }
}

pub struct Sampler {
    pub params: SamplingParams,
    rng: StdRng,
}

impl Sampler {
    pub fn new(params: SamplingParams) -> Result<Self> {
        params.validate()?;
        Ok(Self { params, rng: StdRng::seed_from_u64(params.seed) })
    }

    /// The warped distribution over the kept candidates: (probabilities, token ids), both [k'],
    /// sorted by decreasing probability. Every model in a speculative scheme uses this same warp.
    pub fn warp<B: Backend>(&self, logits: Tensor<B, 1>) -> (Tensor<B, 1>, Tensor<B, 1, Int>) {
        let p = &self.params;
        let vocab = logits.dims()[0];
        let scaled = logits.cast(DType::F32) / p.temperature as f64;
        let (vals, ids) = scaled.sort_descending_with_indices(0);
        let k = if p.top_k == 0 { vocab } else { p.top_k.min(vocab) };
        let (vals, ids) = if k < vocab {
            let keep = Tensor::arange(0..k as i64, &vals.device());
            (vals.select(0, keep.clone()), ids.select(0, keep))
        } else {
            (vals, ids)
        };
        let mut probs = softmax(vals, 0);
        if p.top_p < 1.0 {
            // Keep a candidate if the mass before it is below top_p (the first is always kept).
            let before = probs.clone().cumsum(0) - probs.clone();
            probs = probs.clone() * before.lower_elem(p.top_p as f64).float();
            let total = probs.clone().sum();
            probs = probs / total;
        }
        (probs, ids)
    }

    /// Choose the next token from `logits` ([vocab]); the result stays on the device.
    pub fn sample<B: Backend>(&mut self, logits: Tensor<B, 1>) -> Tensor<B, 1, Int> {
        if self.params.is_greedy() {
            return logits.argmax(0);
        }
        let (probs, ids) = self.warp(logits);
        let n = probs.dims()[0];
        let u: f64 = self.rng.random::<f64>();
        // index = number of candidates whose cumulative mass is <= u
        let idx = probs.cumsum(0).lower_equal_elem(u).int().sum().clamp_max((n - 1) as i64);
        ids.select(0, idx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use burn::backend::Flex;
    use burn::tensor::TensorData;

    type B = Flex;

    fn logits(v: &[f32]) -> Tensor<B, 1> {
        Tensor::from_data(TensorData::new(v.to_vec(), [v.len()]), &Default::default())
    }

    #[test]
    fn greedy_is_argmax() {
        let mut s = Sampler::new(SamplingParams::default()).unwrap();
        let id = s.sample(logits(&[0.1, 2.0, -1.0, 1.9])).into_data().iter::<i64>().collect::<Vec<_>>();
        assert_eq!(id, vec![1]);
    }

    #[test]
    fn top_k_one_is_argmax_and_frequencies_follow_softmax() {
        let params = SamplingParams { temperature: 1.0, top_k: 1, ..Default::default() };
        let mut s = Sampler::new(params).unwrap();
        for _ in 0..5 {
            let id = s.sample(logits(&[0.1, 2.0, -1.0, 1.9])).into_data().iter::<i64>().collect::<Vec<_>>();
            assert_eq!(id, vec![1]);
        }
        // ln(1), ln(3): p = [0.25, 0.75]
        let params = SamplingParams { temperature: 1.0, seed: 7, ..Default::default() };
        let mut s = Sampler::new(params).unwrap();
        let l = [0.0f32, 3f32.ln()];
        let ones: usize = (0..2000).map(|_| s.sample(logits(&l)).into_data().iter::<i64>().collect::<Vec<_>>()[0] as usize).sum();
        let f = ones as f64 / 2000.0;
        assert!((f - 0.75).abs() < 0.04, "frequency of token 1: {f}");
    }

    #[test]
    fn top_p_cuts_the_tail() {
        // p = [0.5, 0.3, 0.2]: top_p 0.6 keeps the first two, renormalised to [0.625, 0.375].
        let params = SamplingParams { temperature: 1.0, top_p: 0.6, ..Default::default() };
        let s = Sampler::new(params).unwrap();
        let (p, ids) = s.warp(logits(&[0.5f32.ln(), 0.3f32.ln(), 0.2f32.ln()]));
        let p = p.into_data().iter::<f32>().collect::<Vec<_>>();
        assert_eq!(ids.into_data().iter::<i64>().collect::<Vec<_>>(), vec![0, 1, 2]);
        assert!((p[0] - 0.625).abs() < 1e-5 && (p[1] - 0.375).abs() < 1e-5 && p[2] == 0.0, "{p:?}");
    }

    #[test]
    fn bad_settings_are_rejected() {
        assert!(Sampler::new(SamplingParams { temperature: -1.0, ..Default::default() }).is_err());
        assert!(Sampler::new(SamplingParams { top_p: 0.0, ..Default::default() }).is_err());
    }
}

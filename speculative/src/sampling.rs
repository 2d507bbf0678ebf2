//! Token selection on the device: greedy argmax, or temperature + top-k + top-p sampling. Every
//! model in a speculative scheme goes through the same warp ([`Sampler::probs`]), so the draft's q
//! and the verifier's p are comparable. Only chosen ids (and, for acceptance, a few probabilities)
//! leave the device; the uniform draws come from one seeded host RNG so runs repeat.

use burn::tensor::activation::softmax;
use burn::tensor::IndexingUpdateOp;
use burn::tensor::{DType, Int, Tensor, TensorData};
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

/// A deliberately wrong acceptance rule, for the tests that prove the distribution tests can fail.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fault {
    /// After rejecting drafts, sample from the verifier's full distribution instead of the
    /// residual (the rejected children zeroed; norm(max(0, p - q)) for sequences).
    NoResidual,
}

pub struct Sampler {
    pub params: SamplingParams,
    pub fault: Option<Fault>,
    rng: StdRng,
}

impl Sampler {
    pub fn new(params: SamplingParams) -> Result<Self> {
        params.validate()?;
        Ok(Self { params, fault: None, rng: StdRng::seed_from_u64(params.seed) })
    }

    /// Only for tests of the tests: acceptance uses a wrong rule.
    pub fn with_fault(mut self, fault: Fault) -> Self {
        self.fault = Some(fault);
        self
    }

    pub fn is_greedy(&self) -> bool {
        self.params.is_greedy()
    }

    /// A uniform draw in [0, 1).
    pub fn uniform(&mut self) -> f64 {
        self.rng.random::<f64>()
    }

    /// The warped next-token distribution of every row of `logits` [n, vocab] -> [n, vocab] f32:
    /// temperature, then top-k, then top-p over the top-k renormalised, zeros outside the kept set.
    pub fn probs(&self, logits: Tensor<2>) -> Tensor<2> {
        let p = &self.params;
        let [n, vocab] = logits.dims();
        let scaled = logits.cast(DType::F32) / p.temperature.max(f32::MIN_POSITIVE) as f64;
        let k = if p.top_k == 0 { vocab } else { p.top_k.min(vocab) };
        if k == vocab && p.top_p >= 1.0 {
            return softmax(scaled, 1);
        }
        // The kept candidates in decreasing order; a row keeps every logit >= its threshold.
        let sorted = if k < vocab { scaled.clone().topk(k, 1) } else { scaled.clone().sort_descending(1) };
        let keep = if p.top_p < 1.0 {
            // Keep a candidate while the mass before it is below top_p (the first always stays).
            let sp = softmax(sorted.clone(), 1);
            let before = sp.clone().cumsum(1) - sp;
            before.lower_elem(p.top_p as f64).int().sum_dim(1) // [n, 1], >= 1
        } else {
            Tensor::<2, Int>::full([n, 1], k as i64, &scaled.device())
        };
        let threshold = sorted.gather(1, keep.sub_scalar(1)).expand([n, vocab]);
        softmax(scaled.clone().mask_fill(scaled.lower(threshold), -1e30f32), 1)
    }

    /// Draw a token from `weights` [vocab] (non-negative, not necessarily normalised); stays on
    /// the device.
    pub fn draw(&mut self, weights: Tensor<1>) -> Tensor<1, Int> {
        let vocab = weights.dims()[0];
        let u = self.uniform();
        let cdf = weights.cumsum(0);
        let target = cdf.clone().slice([vocab - 1..vocab]).mul_scalar(u).expand([vocab]);
        // index = number of entries whose cumulative mass is <= u * total
        cdf.lower_equal(target).int().sum().clamp_max((vocab - 1) as i64)
    }

    /// Draw from `weights` [vocab] with the listed tokens removed (the residual after the tree
    /// rule rejected them), unless the test fault says to forget them.
    pub fn draw_without(&mut self, weights: Tensor<1>, removed: &[u32]) -> Tensor<1, Int> {
        if removed.is_empty() || self.fault == Some(Fault::NoResidual) {
            return self.draw(weights);
        }
        let device = weights.device();
        let ids: Vec<i64> = removed.iter().map(|&t| t as i64).collect();
        let ids = Tensor::<1, Int>::from_data(TensorData::new(ids, [removed.len()]), &device);
        let minus = weights.clone().select(0, ids.clone()).neg();
        self.draw(weights.select_assign(0, ids, minus, IndexingUpdateOp::Add).clamp_min(0.0))
    }

    /// Choose the next token from `logits` ([vocab]); the result stays on the device.
    pub fn sample(&mut self, logits: Tensor<1>) -> Tensor<1, Int> {
        let vocab = logits.dims()[0];
        if self.is_greedy() {
            return hierspec_kernels::topk::argmax(logits.reshape([1, vocab]));
        }
        let probs = self.probs(logits.reshape([1, vocab]));
        self.draw(probs.reshape([vocab]))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use burn::tensor::Device;


    fn logits(v: &[f32]) -> Tensor<1> {
        Tensor::from_data(TensorData::new(v.to_vec(), [v.len()]), &Device::flex())
    }

    fn id(t: Tensor<1, Int>) -> i64 {
        t.into_data().iter::<i64>().next().unwrap()
    }

    fn probs(params: SamplingParams, l: &[f32]) -> Vec<f32> {
        let s = Sampler::new(params).unwrap();
        s.probs(logits(l).reshape([1, l.len()])).into_data().iter::<f32>().collect()
    }

    #[test]
    fn greedy_is_argmax() {
        let mut s = Sampler::new(SamplingParams::default()).unwrap();
        assert_eq!(id(s.sample(logits(&[0.1, 2.0, -1.0, 1.9]))), 1);
    }

    #[test]
    fn top_k_one_is_argmax_and_frequencies_follow_softmax() {
        let params = SamplingParams { temperature: 1.0, top_k: 1, ..Default::default() };
        let mut s = Sampler::new(params).unwrap();
        for _ in 0..5 {
            assert_eq!(id(s.sample(logits(&[0.1, 2.0, -1.0, 1.9]))), 1);
        }
        // ln(1), ln(3): p = [0.25, 0.75]
        let params = SamplingParams { temperature: 1.0, seed: 7, ..Default::default() };
        let mut s = Sampler::new(params).unwrap();
        let l = [0.0f32, 3f32.ln()];
        let ones: i64 = (0..2000).map(|_| id(s.sample(logits(&l)))).sum();
        let f = ones as f64 / 2000.0;
        assert!((f - 0.75).abs() < 0.04, "frequency of token 1: {f}");
    }

    #[test]
    fn top_p_and_top_k_cut_the_tail_in_vocabulary_order() {
        // p = [0.2, 0.5, 0.3]: top_p 0.6 keeps tokens 1 and 2, renormalised to [0, 0.625, 0.375].
        let l = [0.2f32.ln(), 0.5f32.ln(), 0.3f32.ln()];
        let p = probs(SamplingParams { temperature: 1.0, top_p: 0.6, ..Default::default() }, &l);
        assert!(p[0] == 0.0 && (p[1] - 0.625).abs() < 1e-5 && (p[2] - 0.375).abs() < 1e-5, "{p:?}");
        // top_k 2 keeps the same two; top_p 0.5 on top of it keeps only token 1 (mass 0.625 >= 0.5).
        let p = probs(SamplingParams { temperature: 1.0, top_k: 2, ..Default::default() }, &l);
        assert!(p[0] == 0.0 && (p[1] - 0.625).abs() < 1e-5, "{p:?}");
        let p = probs(SamplingParams { temperature: 1.0, top_k: 2, top_p: 0.5, ..Default::default() }, &l);
        assert_eq!(p, vec![0.0, 1.0, 0.0]);
        // temperature 2 flattens: softmax(l / 2)
        let p = probs(SamplingParams { temperature: 2.0, ..Default::default() }, &l);
        let e: Vec<f32> = l.iter().map(|x| (x / 2.0).exp()).collect();
        let z: f32 = e.iter().sum();
        assert!(p.iter().zip(&e).all(|(a, b)| (a - b / z).abs() < 1e-6), "{p:?}");
    }

    #[test]
    fn draw_without_never_returns_a_removed_token() {
        let mut s = Sampler::new(SamplingParams { temperature: 1.0, seed: 3, ..Default::default() }).unwrap();
        for _ in 0..200 {
            let t = id(s.draw_without(logits(&[0.4, 0.3, 0.2, 0.1]), &[0, 2]));
            assert!(t == 1 || t == 3, "drew removed token {t}");
        }
    }

    #[test]
    fn bad_settings_are_rejected() {
        assert!(Sampler::new(SamplingParams { temperature: -1.0, ..Default::default() }).is_err());
        assert!(Sampler::new(SamplingParams { top_p: 0.0, ..Default::default() }).is_err());
    }
}

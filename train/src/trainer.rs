//! The EAGLE-1/2 training loop on Burn autodiff. Row t of a sequence is the pair (feature f_t,
//! embedding of token t+1) at position t, exactly as the drafter feeds the head at inference; the
//! head predicts f_{t+1}. Loss (EAGLE): smooth-L1 between predicted and true feature, plus
//! `ce_weight` x the cross-entropy of the base model's lm_head on the prediction against the base
//! model's own distribution softmax(lm_head(f_{t+1})). Embedding and lm_head are the base's, frozen.
//! Inputs get uniform noise as EAGLE does. AdamW with linear warm-up and cosine decay, checkpoints
//! every few steps, resume from the last one with the same data order and noise.

use std::path::{Path, PathBuf};
use std::time::Instant;

use burn::module::Module;
use burn::nn::loss::HuberLossConfig;
use burn::optim::grad_clipping::GradientClippingConfig;
use burn::optim::{AdamWConfig, GradientsParams, ModuleOptimizer};
use burn::tensor::activation::{log_softmax, softmax};
use burn::tensor::{DType, Distribution, Int, Tensor, TensorData};
use hierspec_model::nn::linear::LinearWeight;
use hierspec_model::{EagleConfig, EagleHead, Error, KvCache, Llama, Result};
use rand::seq::SliceRandom;
use rand::SeedableRng;
use serde::{Deserialize, Serialize};

use crate::data::Dataset;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TrainConfig {
    pub epochs: f64,
    /// Length of the schedule in steps, instead of `epochs` (reproduces a run whose schedule was
    /// fitted to a time budget).
    #[serde(default)]
    pub steps: Option<usize>,
    /// Sequences per step.
    pub batch: usize,
    /// Tokens per sequence (longer ones are cut).
    pub max_len: usize,
    pub lr: f64,
    /// Fraction of the steps spent warming up linearly from 0.
    pub warmup: f64,
    pub weight_decay: f32,
    /// Per-parameter gradient-norm clip (EAGLE: 0.5).
    pub clip: f32,
    /// Width of the uniform noise on input features, at 512 tokens per sequence (EAGLE: 0.2).
    pub noise: f64,
    /// Weight of the cross-entropy term (EAGLE: 0.1); the feature term weighs 1.
    pub ce_weight: f64,
    pub seed: u64,
    /// Train only on the assistant's tokens (EAGLE's loss mask); else on every position.
    pub assistant_only: bool,
}

impl Default for TrainConfig {
    fn default() -> Self {
        Self {
            epochs: 1.0,
            steps: None,
            batch: 4,
            max_len: 1024,
            lr: 3e-4,
            warmup: 0.05,
            weight_decay: 0.0,
            clip: 0.5,
            noise: 0.2,
            ce_weight: 0.1,
            seed: 0,
            assistant_only: true,
        }
    }
}

impl TrainConfig {
    pub fn validate(&self) -> Result<()> {
        let bad = |m: &str| Err(Error::Setting(m.into()));
        if self.batch == 0 || self.max_len < 2 || self.steps == Some(0) {
            return bad("--batch and --steps must be >= 1 and --max-len >= 2");
        }
        if !(self.epochs > 0.0) || !(self.lr > 0.0) || !(0.0..1.0).contains(&self.warmup) {
            return bad("--epochs and --lr must be positive, --warmup in [0, 1)");
        }
        if self.noise < 0.0 || self.ce_weight < 0.0 || self.clip <= 0.0 {
            return bad("--noise and --ce-weight must be >= 0, --clip > 0");
        }
        Ok(())
    }

    /// Linear warm-up to `lr`, then cosine decay to 0 (three lines: burn's composed schedulers
    /// need their step count at construction, which a resumed run would have to replay).
    pub fn lr_at(&self, step: usize, total: usize) -> f64 {
        let warm = (self.warmup * total as f64).ceil().max(1.0);
        let s = step as f64 + 1.0;
        if s <= warm {
            return self.lr * s / warm;
        }
        let progress = (s - warm) / (total as f64 - warm).max(1.0);
        self.lr * 0.5 * (1.0 + (std::f64::consts::PI * progress.min(1.0)).cos())
    }
}

/// The base model's frozen pieces the loss needs: embedding [V, H] and lm_head weight [H, V].
#[derive(Clone)]
pub struct Frozen {
    pub embed: Tensor<2>,
    pub lm_head: Tensor<2>,
}

impl Frozen {
    /// From the base model, in f32 (an int4 lm_head is dequantized).
    pub fn from_base(base: &Llama) -> Self {
        let lm_head = match &base.lm_head.weight {
            LinearWeight::Dense(w) => w.val(),
            LinearWeight::Int4(w) => w.q.dequantize(),
        };
        Self { embed: base.embed_tokens.val().cast(DType::F32), lm_head: lm_head.cast(DType::F32) }
    }

    /// The same tensors as constants on the autodiff form of their device.
    pub fn lift(self) -> Frozen {
        Frozen { embed: Tensor::from_inner(self.embed), lm_head: Tensor::from_inner(self.lm_head) }
    }
}

/// A batch on the host: `rows` = max_len - 1 rows per sequence, padded; [b, rows] and [b, rows, H].
pub struct Batch {
    pub b: usize,
    pub rows: usize,
    /// Token t+1 of each row.
    pub next_ids: Vec<i64>,
    /// f_t
    pub feats: Vec<f32>,
    /// f_{t+1}
    pub target: Vec<f32>,
    /// 1 where the row is trained on.
    pub mask: Vec<f32>,
}

impl Batch {
    pub fn build(data: &Dataset, seqs: &[usize], max_len: usize, assistant_only: bool) -> Self {
        let h = data.hidden;
        let longest = seqs.iter().map(|&i| data.seq_len(i).min(max_len)).max().unwrap_or(2);
        // Every batch has max_len - 1 rows: one shape for the whole run, so GPU backends compile and
        // autotune once (burn's matmul autotune took 20-40 s per new shape on the H200, minutes per
        // run with per-batch lengths). Padding rows come last, are masked out and, under the causal
        // mask, change nothing before them.
        let rows = (max_len - 1).max(longest.max(2) - 1);
        let b = seqs.len();
        let mut out = Batch { b, rows, next_ids: vec![0; b * rows], feats: vec![0.0; b * rows * h], target: vec![0.0; b * rows * h], mask: vec![0.0; b * rows] };
        for (k, &i) in seqs.iter().enumerate() {
            let s = data.get(i, max_len);
            let n = s.ids.len();
            for t in 0..n.saturating_sub(1) {
                let r = k * rows + t;
                out.next_ids[r] = s.ids[t + 1] as i64;
                out.feats[r * h..(r + 1) * h].copy_from_slice(&s.features[t * h..(t + 1) * h]);
                out.target[r * h..(r + 1) * h].copy_from_slice(&s.features[(t + 1) * h..(t + 2) * h]);
                out.mask[r] = if !assistant_only || s.assistant[t + 1] { 1.0 } else { 0.0 };
            }
        }
        out
    }
}

/// Loss terms and accuracy counts of one batch.
pub struct LossParts {
    pub loss: Tensor<1>,
    pub feature: Tensor<1>,
    pub ce: Tensor<1>,
    /// Rows where the head's top-1 / top-3 tokens contain the base model's greedy next token.
    pub top1: Tensor<1, Int>,
    pub top3: Tensor<1, Int>,
    pub rows: Tensor<1>,
}

/// The loss of `head` on `batch` (any backend: autodiff for training, plain for evaluation).
/// `noise`: (width, seed) of the input noise, None for none.
pub fn loss(head: &EagleHead, cfg: &EagleConfig, frozen: &Frozen, batch: &Batch, ce_weight: f64, noise: Option<(f64, u64)>) -> LossParts {
    let device = frozen.embed.device();
    let (b, rows, h) = (batch.b, batch.rows, cfg.layer.hidden_size);
    let n = b * rows;
    let ids = Tensor::<1, Int>::from_data(TensorData::new(batch.next_ids.clone(), [n]), &device);
    let embeds = frozen.embed.clone().select(0, ids).reshape([b, rows, h]);
    let mut feats = Tensor::<3>::from_data(TensorData::new(batch.feats.clone(), [b, rows, h]), &device);
    if let Some((width, seed)) = noise {
        // EAGLE scales the noise by 512 / sequence length.
        let a = width * 0.5 * 512.0 / (rows + 1) as f64;
        device.seed(seed);
        feats = feats + Tensor::random([b, rows, h], Distribution::Uniform(-a, a), &device);
    }
    let target = Tensor::<2>::from_data(TensorData::new(batch.target.clone(), [n, h]), &device);
    let mask = Tensor::<1>::from_data(TensorData::new(batch.mask.clone(), [n]), &device);
    let count = mask.clone().sum().clamp_min(1.0);

    let mut cache = KvCache::new(&cfg.layer, b, rows, &device);
    let positions = Tensor::arange(0..rows as i64, &device);
    let pred = head.forward(embeds, feats, positions, &mut cache, None).reshape([n, h]);

    let huber = HuberLossConfig::new(1.0).init().forward_no_reduction(pred.clone(), target.clone());
    let feature = (huber.mean_dim(1).reshape([n]) * mask.clone()).sum() / count.clone();
    let p = softmax(target.matmul(frozen.lm_head.clone()), 1);
    let logq = log_softmax(pred.matmul(frozen.lm_head.clone()), 1);
    let ce = ((p.clone() * logq.clone()).sum_dim(1).reshape([n]).neg() * mask.clone()).sum() / count.clone();
    let loss = feature.clone() + ce.clone() * ce_weight;

    // Rank of the base's greedy token among the head's logits: 0 is a top-1 hit, < 3 a top-3 hit.
    let logq = logq.detach();
    let greedy = p.argmax(1);
    let at = logq.clone().gather(1, greedy);
    let rank = logq.greater(at).int().sum_dim(1).reshape([n]);
    let valid = mask.clone().greater_elem(0.5).int();
    let top1 = (rank.clone().lower_elem(1).int() * valid.clone()).sum();
    let top3 = (rank.lower_elem(3).int() * valid).sum();
    LossParts { loss, feature, ce, top1, top3, rows: count }
}

/// Mean loss terms and accuracies over a set of rows.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
pub struct Metrics {
    pub loss: f64,
    pub feature: f64,
    pub ce: f64,
    pub top1: f64,
    pub top3: f64,
    pub rows: f64,
}

impl Metrics {
    fn of(p: &LossParts) -> Self {
        let f = |t: &Tensor<1>| t.clone().into_scalar::<f64>();
        let i = |t: &Tensor<1, Int>| t.clone().into_scalar::<i64>() as f64;
        let rows = f(&p.rows);
        Self { loss: f(&p.loss), feature: f(&p.feature), ce: f(&p.ce), top1: i(&p.top1) / rows, top3: i(&p.top3) / rows, rows }
    }

    /// Row-weighted running mean.
    fn add(&mut self, o: &Metrics) {
        let n = self.rows + o.rows;
        if n == 0.0 {
            return;
        }
        let mix = |a: f64, b: f64| (a * self.rows + b * o.rows) / n;
        *self = Metrics { loss: mix(self.loss, o.loss), feature: mix(self.feature, o.feature), ce: mix(self.ce, o.ce), top1: mix(self.top1, o.top1), top3: mix(self.top3, o.top3), rows: n };
    }
}

/// Held-out metrics of `head` over the first `max_seqs` sequences of `data` (no noise, no grad).
pub fn evaluate(head: &EagleHead, cfg: &EagleConfig, frozen: &Frozen, data: &Dataset, tc: &TrainConfig, max_seqs: usize) -> Metrics {
    let mut m = Metrics::default();
    let idx: Vec<usize> = (0..data.len().min(max_seqs)).collect();
    for chunk in idx.chunks(tc.batch) {
        let batch = Batch::build(data, chunk, tc.max_len, tc.assistant_only);
        m.add(&Metrics::of(&loss(head, cfg, frozen, &batch, tc.ce_weight, None)));
    }
    m
}

/// When to stop this run and how often to save.
#[derive(Debug, Clone)]
pub struct RunLimits {
    pub checkpoint_every: usize,
    /// Stop after this many steps in this run (a resumed run continues from there).
    pub max_steps: Option<usize>,
    pub time_limit: Option<std::time::Duration>,
    /// Shorten the schedule (fewer total steps, so warm-up and cosine decay complete) to what fits
    /// in this time, from the measured speed ([`ScheduleFit`]). The fitted total is saved with the
    /// checkpoint, so a resumed run keeps it.
    pub fit_to: Option<std::time::Duration>,
    pub log_every: usize,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
struct State {
    step: usize,
    total: usize,
    config: TrainConfig,
    train_sequences: usize,
    /// (step, loss) every log interval.
    losses: Vec<(usize, f64)>,
}

pub struct TrainResult {
    pub head: EagleHead,
    pub step: usize,
    pub total: usize,
    pub losses: Vec<(usize, f64)>,
    /// Sequence-rows trained on in this run.
    pub rows_seen: f64,
}

impl TrainResult {
    pub fn finished(&self) -> bool {
        self.step >= self.total
    }
}

/// Train `head` on `data`; checkpoints go to `ckpt`, and a checkpoint there with the same settings
/// is resumed. `on_step(step, metrics)` runs after each step. Returns the head at the last step run.
pub fn train(
    mut head: EagleHead,
    cfg: &EagleConfig,
    frozen: &Frozen,
    data: &Dataset,
    tc: &TrainConfig,
    ckpt: &Path,
    limits: &RunLimits,
    on_step: &mut dyn FnMut(usize, &Metrics),
) -> Result<TrainResult> {
    tc.validate()?;
    if data.is_empty() {
        return Err(Error::Setting("no training sequences".into()));
    }
    let per_epoch = (data.len() / tc.batch).max(1);
    let mut total = tc.steps.unwrap_or((tc.epochs * per_epoch as f64).ceil() as usize);
    let mut optim = AdamWConfig::new()
        .with_beta_2(0.95)
        .with_weight_decay(tc.weight_decay)
        .with_grad_clipping(Some(GradientClippingConfig::Norm(tc.clip)))
        .init();
    let mut state = State { step: 0, total, config: tc.clone(), train_sequences: data.len(), losses: Vec::new() };
    let state_path = ckpt.join(STATE);
    if state_path.exists() {
        let text = std::fs::read_to_string(&state_path).map_err(|e| Error::io(&state_path, e))?;
        let saved: State = serde_json::from_str(&text).map_err(|e| Error::Setting(format!("{}: {e}", state_path.display())))?;
        if saved.config != *tc || saved.train_sequences != data.len() {
            return Err(Error::Setting(format!(
                "{} holds a checkpoint of another run (settings or data differ): use another --out or delete it",
                ckpt.display()
            )));
        }
        let err = |e: burn::store::RecordError| Error::Setting(format!("{}: {e:?}", ckpt.display()));
        head = head.try_load_file(ckpt.join(HEAD)).map_err(err)?;
        optim = optim.load(ckpt.join(OPTIM)).map_err(err)?;
        eprintln!("train: resuming at step {} of {}", saved.step, saved.total);
        total = saved.total;
        state = saved;
    }

    let start = Instant::now();
    let first = state.step;
    let bar = indicatif::ProgressBar::new(total as u64);
    bar.set_style(indicatif::ProgressStyle::with_template("train {bar:40} {pos}/{len} {msg} [{elapsed} < {eta}]").expect("template"));
    bar.set_position(state.step as u64);
    let mut window = Metrics::default();
    let mut rows_seen = 0.0;
    let mut order: (usize, Vec<usize>) = (usize::MAX, Vec::new());
    // A resumed run keeps the total its checkpoint saved.
    let mut fit = limits.fit_to.filter(|_| first == 0).map(|budget| ScheduleFit::new(budget, total));
    while state.step < total {
        if let Some(new_total) = fit.as_mut().and_then(|f| f.update(state.step, total, start.elapsed().as_secs_f64())) {
            bar.suspend(|| eprintln!("train: step {}, {} steps refitted to {new_total} to fit the time budget", state.step, total));
            total = new_total;
            state.total = total;
            bar.set_length(total as u64);
        }
        if state.step >= total {
            break;
        }
        if limits.max_steps.is_some_and(|m| state.step - first >= m) || limits.time_limit.is_some_and(|t| start.elapsed() >= t) {
            break;
        }
        let (epoch, k) = (state.step / per_epoch, state.step % per_epoch);
        if order.0 != epoch {
            // The data order of an epoch depends only on (seed, epoch): a resumed run sees the same.
            let mut idx: Vec<usize> = (0..data.len()).collect();
            idx.shuffle(&mut rand::rngs::StdRng::seed_from_u64(tc.seed.wrapping_add(epoch as u64)));
            order = (epoch, idx);
        }
        let seqs: Vec<usize> = order.1.iter().cycle().skip(k * tc.batch).take(tc.batch).copied().collect();
        let batch = Batch::build(data, &seqs, tc.max_len, tc.assistant_only);
        let noise = (tc.noise > 0.0).then(|| (tc.noise, tc.seed.wrapping_mul(1_000_003).wrapping_add(state.step as u64)));
        let parts = loss(&head, cfg, frozen, &batch, tc.ce_weight, noise);
        let m = Metrics::of(&parts);
        let grads = GradientsParams::from_grads(parts.loss.backward(), &head);
        head = optim.step(tc.lr_at(state.step, total), head, grads);
        state.step += 1;
        rows_seen += m.rows;
        window.add(&m);
        bar.set_position(state.step as u64);
        bar.set_message(format!("loss {:.3} top1 {:.2}", m.loss, m.top1));
        if state.step % limits.log_every.max(1) == 0 || state.step == total {
            state.losses.push((state.step, window.loss));
            bar.suspend(|| {
                eprintln!(
                    "step {}/{}: loss {:.4} (feature {:.4}, ce {:.3}), top1 {:.3}, top3 {:.3}, lr {:.2e}, {:.0} rows/s",
                    state.step, total, window.loss, window.feature, window.ce, window.top1, window.top3,
                    tc.lr_at(state.step - 1, total), rows_seen / start.elapsed().as_secs_f64()
                )
            });
            window = Metrics::default();
        }
        if state.step % limits.checkpoint_every.max(1) == 0 {
            save_checkpoint(&head, &optim, &state, ckpt)?;
        }
        on_step(state.step, &m);
    }
    bar.finish_and_clear();
    save_checkpoint(&head, &optim, &state, ckpt)?;
    Ok(TrainResult { head, step: state.step, total, losses: state.losses, rows_seen })
}

/// Fits a schedule to a time budget from the measured speed: first over steps 3..13 (the first
/// steps compile and tune kernels), then again every [`ScheduleFit::EVERY`] steps while less than
/// half of the (fitted) schedule has run, from the speed since the previous fit. One early measure
/// was not enough on the H200: with another head training on the same GPU and kernels still being
/// tuned, steps 3..13 ran several times slower than the rest and cut schedules to 59 and 63 steps
/// (`docs/perf/real.md`, 2026-12-02 and 13). So a fitted schedule may grow again (the learning rate
/// then rises back along the longer cosine), never past its full length.
pub struct ScheduleFit {
    budget: f64,
    full: usize,
    mark: Option<(usize, Instant)>,
}

impl ScheduleFit {
    pub const EVERY: usize = 10;

    pub fn new(budget: std::time::Duration, full: usize) -> Self {
        Self { budget: budget.as_secs_f64(), full, mark: None }
    }

    /// Called before step `step` runs, `elapsed` seconds into the run: the new total, when it changes.
    pub fn update(&mut self, step: usize, total: usize, elapsed: f64) -> Option<usize> {
        self.update_at(step, total, elapsed, Instant::now())
    }

    fn update_at(&mut self, step: usize, total: usize, elapsed: f64, now: Instant) -> Option<usize> {
        if step == 3 {
            self.mark = Some((3, now));
            return None;
        }
        let (from, t0) = self.mark?;
        let due = step == 13 || (step > 13 && step % Self::EVERY == 0 && 2 * step <= total);
        if !due || step <= from {
            return None;
        }
        let per_step = now.duration_since(t0).as_secs_f64() / (step - from) as f64;
        self.mark = Some((step, now));
        let left = (self.budget - elapsed).max(0.0);
        let fits = (step + (0.95 * left / per_step.max(1e-9)) as usize).clamp(step, self.full);
        (fits != total).then_some(fits)
    }
}

/// The checkpoint's files: head and optimizer state as burnpack files, and the run's state.
const HEAD: &str = "head.bpk";
const OPTIM: &str = "optim.bpk";
const STATE: &str = "state.json";

/// Head, optimizer and state, each written to a temporary name and renamed: a run killed while
/// saving leaves the previous checkpoint whole.
fn save_checkpoint(head: &EagleHead, optim: &ModuleOptimizer, state: &State, dir: &Path) -> Result<()> {
    std::fs::create_dir_all(dir).map_err(|e| Error::io(dir, e))?;
    let err = |e: burn::store::RecordError| Error::Setting(format!("saving a checkpoint in {}: {e:?}", dir.display()));
    let tmp = |n: &str| dir.join(format!("{n}.tmp"));
    head.clone().save_file(tmp(HEAD)).map_err(err)?;
    optim.save(tmp(OPTIM)).map_err(err)?;
    let text = serde_json::to_string(state).expect("json");
    std::fs::write(tmp(STATE), text).map_err(|e| Error::io(dir, e))?;
    for name in [HEAD, OPTIM, STATE] {
        std::fs::rename(tmp(name), dir.join(name)).map_err(|e| Error::io(dir.join(name), e))?;
    }
    Ok(())
}

/// The directory a run's checkpoints go to.
pub fn checkpoint_dir(out: &Path) -> PathBuf {
    out.join("checkpoint")
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    /// Steps at `slow` s each until `until`, then at `fast` s: the totals the fit sets, step by step.
    fn run(budget: f64, full: usize, slow: f64, fast: f64, until: usize) -> Vec<(usize, usize)> {
        let mut fit = ScheduleFit::new(Duration::from_secs_f64(budget), full);
        let t0 = Instant::now();
        let (mut total, mut elapsed, mut changes) = (full, 0.0, Vec::new());
        let mut step = 0;
        while step < total {
            if let Some(t) = fit.update_at(step, total, elapsed, t0 + Duration::from_secs_f64(elapsed)) {
                assert!(t >= step && t <= full, "total {t} at step {step}");
                total = t;
                changes.push((step, t));
            }
            elapsed += if step < until { slow } else { fast };
            step += 1;
        }
        changes
    }

    #[test]
    fn a_steady_speed_fits_the_budget() {
        // 1 s per step, 100 s: ~95 steps fit of 1000 (later fits only move the 5% margin).
        let changes = run(100.0, 1000, 1.0, 1.0, 0);
        assert_eq!(changes[0].0, 13);
        assert!(changes.iter().all(|&(_, t)| (90..=100).contains(&t)), "{changes:?}");
    }

    #[test]
    fn a_slow_start_shrinks_the_schedule_and_the_later_speed_grows_it_back() {
        // 5 s per step until step 13 (a shared GPU, kernels being tuned), then 0.5 s: the first fit
        // cuts the schedule hard; the next ones give back what the faster steps make room for.
        let changes = run(300.0, 10_000, 5.0, 0.5, 13);
        let first = changes[0];
        assert_eq!(first.0, 13);
        assert!(first.1 < 70, "{changes:?}");
        let last = *changes.last().unwrap();
        assert!(last.1 > 300, "the schedule never grew back: {changes:?}");
        // 65 s went to the first 13 steps; the rest runs at 0.5 s: ~13 + 0.95 * 235 / 0.5 at most.
        assert!(last.1 <= 13 + 470, "{changes:?}");
    }

    #[test]
    fn a_fit_never_outgrows_the_full_schedule() {
        let changes = run(1000.0, 200, 0.1, 0.1, 0);
        assert!(changes.is_empty(), "{changes:?}");
    }
}

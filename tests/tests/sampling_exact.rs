//! Exact sampling through every speculative method (method.md: the tree rule, speculative sampling
//! for sequences, both inside the hierarchy). On tiny random models (vocabulary 16) the target's
//! warped joint distribution of the first three generated tokens is computable exactly; each method
//! draws 20,000 samples with different seeds, and a chi-square test must not reject (p > 0.01). The
//! same test with a deliberately broken acceptance rule (no residual after rejections) must reject,
//! which shows the test has the power to catch a wrong rule.

use std::collections::HashMap;

use hierspec_model::eagle::{EagleConfig, EagleHead};
use hierspec_model::{Llama, LlamaConfig, LogitsFor};
use hierspec_speculative::drafter::EagleDrafter;
use hierspec_speculative::sd::Model;
use hierspec_speculative::tree::TreeConfig;
use hierspec_speculative::verify::Runner;
use hierspec_speculative::{generate, generate_eagle, generate_hier, generate_sd, Fault, HierConfig, Sampler, SamplingParams};
use hierspec_tests::*;
use statrs::distribution::{ChiSquared, ContinuousCDF};

const VOCAB: usize = 16;
const TOKENS: usize = 3;
const SAMPLES: u64 = 20_000;
const PROMPT: [u32; 3] = [1, 5, 9];
/// Random weights give logits of std ~0.1; a low temperature makes the distributions peaked, so
/// drafts are often accepted and often rejected. top-k and top-p warp every model the same way.
const PARAMS: SamplingParams = SamplingParams { temperature: 0.04, top_p: 0.95, top_k: 8, seed: 0 };

fn tiny(layers: usize) -> LlamaConfig {
    tiny_llama(VOCAB, layers)
}

struct Models {
    target_cfg: LlamaConfig,
    target: Llama,
    inter_cfg: LlamaConfig,
    inter: Llama,
    head_cfg: EagleConfig,
    /// Trained (here: random) on the target, for `eagle`.
    target_head: EagleHead,
    /// On the intermediate, for `hier`.
    inter_head: EagleHead,
}

fn models() -> Models {
    // Built one at a time: with another test drawing in between, the target is another random
    // model, and one can be degenerate (all the mass in one cell: nothing to test).
    let _rng = rng_lock();
    let device = device();
    let (target_cfg, inter_cfg) = (tiny(2), tiny(1));
    let head_cfg = EagleConfig::for_base(&target_cfg);
    Models {
        target: Llama::random(&target_cfg, 64, 11, &device).unwrap(),
        inter: Llama::random(&inter_cfg, 64, 12, &device).unwrap(),
        target_head: EagleHead::random(&head_cfg, 64, 13, &device).unwrap(),
        inter_head: EagleHead::random(&head_cfg, 64, 14, &device).unwrap(),
        target_cfg,
        inter_cfg,
        head_cfg,
    }
}

#[derive(Clone, Copy, Debug)]
enum Method {
    Ar,
    Sd,
    Eagle,
    Hier,
}

/// The first TOKENS tokens of one generation with `seed`.
fn sample(m: &Models, method: Method, seed: u64, fault: Option<Fault>) -> Vec<u32> {
    let mut s = Sampler::new(SamplingParams { seed, ..PARAMS }).unwrap();
    if let Some(f) = fault {
        s = s.with_fault(f);
    }
    let target = Model { model: &m.target, config: &m.target_cfg };
    let inter = Model { model: &m.inter, config: &m.inter_cfg };
    let out = match method {
        Method::Ar => generate(&m.target, &m.target_cfg, &PROMPT, TOKENS, &mut s, &[], |_| {}),
        Method::Sd => generate_sd(target, inter, &PROMPT, TOKENS, 2, &mut s, &[], |_| {}),
        Method::Eagle => {
            let tree = TreeConfig { top_k: 3, depth: 2, total_nodes: 7 };
            let mut d = EagleDrafter::new(&m.target_head, &m.head_cfg, &m.target, PROMPT.len() + TOKENS + 1, &tree).unwrap();
            generate_eagle(&m.target, &m.target_cfg, &mut d, &tree, &PROMPT, TOKENS, &mut s, &[], |_| {})
        }
        Method::Hier => {
            let cfg = HierConfig { min_draft_len: 2, tree: TreeConfig { top_k: 3, depth: 2, total_nodes: 6 } };
            let cap = PROMPT.len() + TOKENS + cfg.max_sequence();
            let mut d = EagleDrafter::new(&m.inter_head, &m.head_cfg, &m.inter, cap, &cfg.tree).unwrap();
            generate_hier(target, inter, &mut d, &cfg, &PROMPT, TOKENS, &mut s, &[], |_| {})
        }
    };
    let (tokens, _) = out.unwrap();
    assert_eq!(tokens.len(), TOKENS);
    tokens
}

/// The target's exact warped joint distribution of the first TOKENS tokens (cells with p > 0).
fn exact(m: &Models) -> HashMap<Vec<u32>, f64> {
    let sampler = Sampler::new(PARAMS).unwrap();
    let next = |prefix: &[u32]| -> Vec<f64> {
        let ids: Vec<u32> = PROMPT.iter().chain(prefix).copied().collect();
        let mut r = Runner::new(&m.target, &m.target_cfg, ids.len()).unwrap();
        let logits = r.forward(&ids, LogitsFor::Last);
        to_vec_f32(sampler.probs(logits)).into_iter().map(|p| p as f64).collect()
    };
    let mut dist: HashMap<Vec<u32>, f64> = HashMap::from([(vec![], 1.0)]);
    for _ in 0..TOKENS {
        let mut longer = HashMap::new();
        for (prefix, p) in dist {
            for (t, q) in next(&prefix).into_iter().enumerate() {
                if q > 0.0 {
                    let mut k = prefix.clone();
                    k.push(t as u32);
                    longer.insert(k, p * q);
                }
            }
        }
        dist = longer;
    }
    dist
}

/// Chi-square goodness of fit: cells with expected count < 5 are pooled; a sample in a cell of
/// probability zero fails at once. Returns the p-value.
fn chi_square_p(exact: &HashMap<Vec<u32>, f64>, counts: &HashMap<Vec<u32>, u64>, n: u64) -> f64 {
    if let Some(bad) = counts.keys().find(|k| !exact.contains_key(*k)) {
        eprintln!("sampled {bad:?}, which the target never emits");
        return 0.0;
    }
    let (mut stat, mut bins) = (0.0, 0usize);
    let (mut pooled_e, mut pooled_o) = (0.0, 0.0);
    for (cell, p) in exact {
        let e = p * n as f64;
        let o = *counts.get(cell).unwrap_or(&0) as f64;
        if e < 5.0 {
            pooled_e += e;
            pooled_o += o;
        } else {
            stat += (o - e) * (o - e) / e;
            bins += 1;
        }
    }
    if pooled_e > 0.0 {
        stat += (pooled_o - pooled_e) * (pooled_o - pooled_e) / pooled_e;
        bins += 1;
    }
    assert!(bins >= 2, "the exact distribution has {bins} cell(s) after pooling: nothing to test");
    let df = (bins - 1) as f64;
    let p = 1.0 - ChiSquared::new(df).unwrap().cdf(stat);
    eprintln!("chi-square {stat:.1} on {df} degrees of freedom ({} cells with p > 0): p = {p:.4}", exact.len());
    p
}

fn p_value(method: Method, fault: Option<Fault>) -> f64 {
    let m = models();
    let exact = exact(&m);
    let mut counts: HashMap<Vec<u32>, u64> = HashMap::new();
    for seed in 0..SAMPLES {
        *counts.entry(sample(&m, method, 1000 + seed, fault)).or_default() += 1;
    }
    eprint!("{method:?}{}: ", if fault.is_some() { " (broken rule)" } else { "" });
    chi_square_p(&exact, &counts, SAMPLES)
}

fn exact_for(method: Method) {
    let p = p_value(method, None);
    assert!(p > 0.01, "{method:?}: the sampled tokens do not follow the target's distribution (p = {p})");
}

fn broken_fails(method: Method) {
    let p = p_value(method, Some(Fault::NoResidual));
    assert!(p < 0.01, "{method:?}: the chi-square test did not catch the broken acceptance rule (p = {p})");
}

#[test]
fn sampling_exact_ar() {
    exact_for(Method::Ar);
}

#[test]
fn sampling_exact_sd() {
    exact_for(Method::Sd);
}

#[test]
fn sampling_exact_eagle() {
    exact_for(Method::Eagle);
}

#[test]
fn sampling_exact_hier() {
    exact_for(Method::Hier);
}

#[test]
fn sampling_exact_sd_catches_a_broken_rule() {
    broken_fails(Method::Sd);
}

#[test]
fn sampling_exact_eagle_catches_a_broken_rule() {
    broken_fails(Method::Eagle);
}

#[test]
fn sampling_exact_hier_catches_a_broken_rule() {
    broken_fails(Method::Hier);
}


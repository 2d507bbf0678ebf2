//! Lossless: the hierarchy (EAGLE head -> intermediate model -> target) emits exactly the target's
//! AR greedy tokens, with a randomly initialised head on the intermediate (every code path, inner
//! acceptance ~1) and an oracle drafter proposing the target's own continuation (the intermediate
//! decides how much of it survives), over several K_min and tree shapes, 64 new tokens per prompt.
//!
//! Pairs: in CI, each model as target with its own W4A16 (RTN, group 64) copy as intermediate (a
//! realistic, slightly disagreeing intermediate); ignored by default, the real pair of the method,
//! Qwen2.5-Coder-1.5B verifying sequences of the 0.5B.

use hierspec_model::eagle::{EagleConfig, EagleHead};
use hierspec_model::loader::{self, LoadOptions};
use hierspec_model::nn::QuantSpec;
use hierspec_model::LoadedModel;
use hierspec_speculative::drafter::{EagleDrafter, OracleDrafter, TreeDrafter};
use hierspec_speculative::sd::Model;
use hierspec_speculative::tree::TreeConfig;
use hierspec_speculative::{generate, generate_hier, GenerationStats, HierConfig, Sampler, SamplingParams};
use hierspec_tests::*;

const NEW: usize = 64;

fn greedy() -> Sampler {
    Sampler::new(SamplingParams::default()).unwrap()
}

fn load(alias: &str, quant: Option<QuantSpec>) -> LoadedModel {
    loader::load_with(alias, &LoadOptions { max_context: 4096, quant }, &device()).expect("load")
}

fn hier(t: &LoadedModel, d: &LoadedModel, drafter: &mut dyn TreeDrafter, cfg: &HierConfig, ids: &[u32]) -> (Vec<u32>, GenerationStats) {
    let target = Model { model: &t.model, config: &t.config };
    let inter = Model { model: &d.model, config: &d.config };
    generate_hier(target, inter, drafter, cfg, ids, NEW, &mut greedy(), &[], |_| {}).unwrap()
}

fn shape(min_draft_len: usize, top_k: usize, depth: usize, total_nodes: usize) -> HierConfig {
    HierConfig { min_draft_len, tree: TreeConfig { top_k, depth, total_nodes } }
}

/// The oracle with the default schedule on `n_prompts` prompts; the random head on the first
/// `random_prompts`; other K_min and tree shapes (both drafters) on the first `shape_prompts`.
fn check(t: &LoadedModel, d: &LoadedModel, name: &str, n_prompts: usize, random_prompts: usize, shape_prompts: usize) {
    check_from(t, d, name, 0, n_prompts, random_prompts, shape_prompts)
}

/// As `check`, starting at prompt `first` (a long run split over several invocations).
fn check_from(t: &LoadedModel, d: &LoadedModel, name: &str, first: usize, n_prompts: usize, random_prompts: usize, shape_prompts: usize) {
    let head_cfg = EagleConfig::for_base(&d.config);
    let head = EagleHead::random(&head_cfg, 4096, 5, &device()).unwrap();
    let (mut inner, mut outer) = (Vec::new(), Vec::new());
    for (pi, ids) in chat_prompts(t).iter().enumerate().skip(first).take(n_prompts) {
        let want = generate(&t.model, &t.config, ids, NEW, &mut greedy(), &[], |_| {}).unwrap().0;
        let mut shapes = vec![("default", HierConfig::default())];
        if pi < shape_prompts {
            shapes.extend([
                ("K_min=1", shape(1, 10, 3, 30)),
                ("K_min=10 small tree", shape(10, 4, 2, 8)),
                ("top-k=1", shape(6, 1, 3, 30)),
                ("N=1", shape(6, 10, 3, 1)),
            ]);
        }
        for (sname, cfg) in &shapes {
            if pi < random_prompts.max(shape_prompts) {
                let cap = ids.len() + NEW + cfg.max_sequence();
                let mut random = EagleDrafter::new(&head, &head_cfg, &d.model, cap, &cfg.tree).unwrap();
                let (got, _) = hier(t, d, &mut random, cfg, ids);
                assert_eq!(got, want, "{name} prompt {pi}: random head, {sname}, differs from AR");
            }
            let mut oracle = OracleDrafter::new(ids, &want, t.config.vocab_size);
            let (got, st) = hier(t, d, &mut oracle, cfg, ids);
            assert_eq!(got, want, "{name} prompt {pi}: oracle, {sname}, differs from AR");
            if *sname == "default" {
                inner.push(st.inner_tau());
                outer.push(st.tau());
            }
        }
        eprintln!("{name} prompt {pi}: every head and shape identical to AR");
    }
    let mean = |v: &[f64]| v.iter().sum::<f64>() / v.len() as f64;
    eprintln!("{name}: oracle inner tau {:.2}, target tau {:.2} (bonus counted)", mean(&inner), mean(&outer));
    // The oracle's tokens are the target's: wherever the intermediate agrees, whole tree levels pass.
    assert!(mean(&inner) > 2.0, "oracle inner tau {} is too low", mean(&inner));
}

#[test]
fn lossless_hier_smollm2_135m() {
    let t = load("smollm2-135m", None);
    let d = load("smollm2-135m", Some(QuantSpec { group: 64, ..Default::default() }));
    check(&t, &d, "smollm2-135m / W4A16 copy", env_count("HIERSPEC_LOSSLESS_PROMPTS", 20), 2, 1);
}

#[test]
fn lossless_hier_qwen_05b() {
    let t = load("qwen2.5-coder-0.5b", None);
    let d = load("qwen2.5-coder-0.5b", Some(QuantSpec { group: 64, ..Default::default() }));
    check(&t, &d, "qwen2.5-coder-0.5b / W4A16 copy", 3, 1, 0);
}

/// The method's pair on all 20 prompts (slow on 2 cores; HIERSPEC_LOSSLESS_PROMPTS=n for fewer,
/// HIERSPEC_LOSSLESS_FROM=i to start at prompt i): `cargo test --release lossless_hier_qwen_15b -- --ignored`.
#[test]
#[ignore]
fn lossless_hier_qwen_15b_with_05b() {
    let t = load("qwen2.5-coder-1.5b", None);
    let d = load("qwen2.5-coder-0.5b", None);
    let (first, n) = (env_count("HIERSPEC_LOSSLESS_FROM", 0), env_count("HIERSPEC_LOSSLESS_PROMPTS", 20));
    // Every prompt with both heads; the other K_min and tree shapes on the first two.
    check_from(&t, &d, "qwen2.5-coder-1.5b / 0.5b", first, n, first + n, 2);
}

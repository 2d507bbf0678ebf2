//! Lossless: EAGLE-2 tree speculation emits exactly the target's AR greedy tokens, with a randomly
//! initialised head (every code path, low acceptance), an oracle drafter that proposes the target's
//! own continuation (maximal acceptance), and tree shapes N = 1, N = 100, top-k = 1 and top-k = 16,
//! on 20 prompts of different kinds, 64 new tokens each.

use hierspec_model::eagle::{EagleConfig, EagleHead};
use hierspec_model::{loader, LoadedModel};
use hierspec_speculative::drafter::{EagleDrafter, OracleDrafter, TreeDrafter};
use hierspec_speculative::tree::TreeConfig;
use hierspec_speculative::{generate, generate_eagle, GenerationStats, Sampler, SamplingParams};
use hierspec_tests::*;

const NEW: usize = 64;

fn ar(m: &LoadedModel, ids: &[u32]) -> Vec<u32> {
    let mut s = Sampler::new(SamplingParams::default()).unwrap();
    generate(&m.model, &m.config, ids, NEW, &mut s, &[], |_| {}).unwrap().0
}

fn eagle(m: &LoadedModel, drafter: &mut dyn TreeDrafter, tree: &TreeConfig, ids: &[u32]) -> (Vec<u32>, GenerationStats) {
    generate_eagle(&m.model, &m.config, drafter, tree, ids, NEW, &mut Sampler::new(SamplingParams::default()).unwrap(), &[], |_| {}).unwrap()
}

fn tree(top_k: usize, depth: usize, total_nodes: usize) -> TreeConfig {
    TreeConfig { top_k, depth, total_nodes }
}

/// The oracle with the default tree on `n_prompts` prompts; the random head on the first
/// `random_prompts`; the other tree shapes (both drafters) on the first `shape_prompts`.
fn check(alias: &str, n_prompts: usize, random_prompts: usize, shape_prompts: usize) {
    let device = device();
    let m = loader::load(alias, 4096, &device).expect("load");
    let head_cfg = EagleConfig::for_base(&m.config);
    let head = EagleHead::random(&head_cfg, 4096, 3, &device).unwrap();
    let mut oracle_tau = Vec::new();
    for (pi, ids) in chat_prompts(&m).iter().take(n_prompts).enumerate() {
        let want = ar(&m, ids);
        let mut shapes = vec![("default", TreeConfig::default())];
        if pi < shape_prompts {
            shapes.extend([("N=1", tree(10, 6, 1)), ("N=100", tree(10, 6, 100)), ("top-k=1", tree(1, 6, 60)), ("top-k=16", tree(16, 4, 60))]);
        }
        for (name, shape) in &shapes {
            if pi < random_prompts.max(shape_prompts) {
                let mut random = EagleDrafter::new(&head, &head_cfg, &m.model, ids.len() + NEW + 1, shape).unwrap();
                let (got, _) = eagle(&m, &mut random, shape, ids);
                assert_eq!(got, want, "{alias} prompt {pi}: random head, tree {name}, differs from AR");
            }

            let mut oracle = OracleDrafter::new(ids, &want, m.config.vocab_size);
            let (got, st) = eagle(&m, &mut oracle, shape, ids);
            assert_eq!(got, want, "{alias} prompt {pi}: oracle, tree {name}, differs from AR");
            if *name == "default" {
                oracle_tau.push(st.tau());
            }
            if *name == "N=1" {
                assert!((st.tau() - 1.0).abs() < 1e-9, "a root-only tree accepts exactly the bonus token");
            }
        }
        eprintln!("{alias} prompt {pi}: {} tree shapes equal AR", shapes.len());
    }
    // The oracle's path is always in the tree: every round accepts depth tokens plus the bonus, bar
    // the last round (cut at NEW tokens).
    let depth = TreeConfig::default().depth as f64;
    let mean = oracle_tau.iter().sum::<f64>() / oracle_tau.len() as f64;
    eprintln!("{alias}: oracle tau {mean:.2} with the default tree (bonus counted)");
    assert!(mean > depth, "oracle tau {mean} must be near depth + 1 = {}", depth + 1.0);
}

// A random head accepts ~nothing, so it runs 64 rounds of a 60-node tree per prompt: on 2 CPU
// cores that is minutes per prompt. CI runs it on a few prompts; the ignored tests run everything.

/// `HIERSPEC_LOSSLESS_PROMPTS=n` runs the oracle on the first n prompts only (a GPU run's time limit).
#[test]
fn lossless_eagle_smollm2_135m() {
    check("smollm2-135m", env_count("HIERSPEC_LOSSLESS_PROMPTS", 20), 2, 1);
}

#[test]
fn lossless_eagle_qwen_05b() {
    check("qwen2.5-coder-0.5b", 3, 1, 0);
}

/// Every drafter and tree shape on all 20 prompts: `cargo test --release lossless -- --ignored`.
#[test]
#[ignore]
fn lossless_eagle_smollm2_135m_all() {
    check("smollm2-135m", 20, 20, 20);
}

#[test]
#[ignore]
fn lossless_eagle_qwen_05b_all() {
    check("qwen2.5-coder-0.5b", 20, 20, 20);
}

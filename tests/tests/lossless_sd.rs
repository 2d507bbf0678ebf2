//! Lossless: draft-model speculative decoding emits exactly the target's AR greedy tokens, with a
//! high-acceptance drafter (the target itself), a low-acceptance one (random weights, same
//! vocabulary) and several draft lengths, on 20 prompts of different kinds, 64 new tokens each.

use burn::tensor::Device;
use hierspec_model::{loader, Llama, LlamaConfig};
use hierspec_speculative::sd::{generate_sd, Model};
use hierspec_speculative::{generate, Sampler, SamplingParams};
use hierspec_tests::*;

fn random_drafter(cfg: &LlamaConfig, device: &Device) -> (Llama, LlamaConfig) {
    let small = LlamaConfig { num_hidden_layers: 2, ..cfg.clone() };
    (Llama::random(&small, cfg.max_position_embeddings.min(4096), 7, device).unwrap(), small)
}

fn check(alias: &str, n_prompts: usize, new_tokens: usize) {
    let device = device();
    let m = loader::load(alias, 4096, &device).expect("load");
    let (rand_model, rand_cfg) = random_drafter(&m.config, &device);
    let mut accepted = (0usize, 0usize);
    for (pi, ids) in chat_prompts(&m).iter().take(n_prompts).enumerate() {
        let mut s = Sampler::new(SamplingParams::default()).unwrap();
        // No stop tokens: every method must produce the same 64 tokens.
        let (ar, _) = generate(&m.model, &m.config, ids, new_tokens, &mut s, &[], |_| {}).unwrap();
        let drafters: [(&str, &Llama, &LlamaConfig, usize); 3] = [
            ("self k=4", &m.model, &m.config, 4),
            ("random k=3", &rand_model, &rand_cfg, 3),
            ("self k=1", &m.model, &m.config, 1),
        ];
        for (name, dm, dc, k) in drafters {
            if name == "self k=1" && pi % 5 != 0 {
                continue;
            }
            let target = Model { model: &m.model, config: &m.config };
            let draft = Model { model: dm, config: dc };
            let (sd, st) = generate_sd(target, draft, ids, new_tokens, k, &mut greedy(), &[], |_| {}).unwrap();
            assert_eq!(sd, ar, "{alias} prompt {pi}, drafter {name}: SD differs from AR");
            if name == "self k=4" {
                accepted.0 += st.new_tokens - 1;
                accepted.1 += st.target_forwards;
            }
        }
    }
    let tau = accepted.0 as f64 / accepted.1 as f64;
    eprintln!("{alias}: self-drafting tau {tau:.2} (bonus counted)");
    assert!(tau > 4.0, "drafting with the target itself must accept nearly everything (tau {tau})");
}

#[test]
fn lossless_sd_smollm2_135m() {
    check("smollm2-135m", env_count("HIERSPEC_LOSSLESS_PROMPTS", 20), 64);
}

#[test]
fn lossless_sd_qwen_05b() {
    check("qwen2.5-coder-0.5b", 6, 64);
}

/// All 20 prompts on the 0.5B (slow on 2 cores): `cargo test --release lossless -- --ignored`.
#[test]
#[ignore]
fn lossless_sd_qwen_05b_all_prompts() {
    check("qwen2.5-coder-0.5b", 20, 64);
}

/// The hierarchy's pair: Qwen2.5-Coder-1.5B verifying drafts of the 0.5B (slow on 2 cores):
/// `cargo test --release lossless_sd_qwen_15b -- --ignored`.
#[test]
#[ignore]
fn lossless_sd_qwen_15b_with_05b_draft() {
    let device = device();
    let t = loader::load("qwen2.5-coder-1.5b", 4096, &device).expect("load target");
    let d = loader::load("qwen2.5-coder-0.5b", 4096, &device).expect("load draft");
    let n = env_count("HIERSPEC_LOSSLESS_PROMPTS", 20);
    for (pi, ids) in chat_prompts(&t).iter().take(n).enumerate() {
        let mut s = Sampler::new(SamplingParams::default()).unwrap();
        let (ar, _) = generate(&t.model, &t.config, ids, 64, &mut s, &[], |_| {}).unwrap();
        for k in [3, 6] {
            let target = Model { model: &t.model, config: &t.config };
            let draft = Model { model: &d.model, config: &d.config };
            let (sd, st) = generate_sd(target, draft, ids, 64, k, &mut greedy(), &[], |_| {}).unwrap();
            assert_eq!(sd, ar, "prompt {pi}, k {k}: SD (1.5B + 0.5B) differs from AR");
            eprintln!("prompt {pi} k {k}: tau {:.2}", st.tau());
        }
    }
}

fn greedy() -> Sampler {
    Sampler::new(SamplingParams::default()).unwrap()
}

//! Hugging Face directories against transformers itself: small random LlamaForCausalLM (GQA,
//! Llama-3.1 RoPE scaling, bf16 weights in index-sharded safetensors, config.json as transformers 5
//! writes it) and Qwen2ForCausalLM (biases, tied embeddings, f32), logits computed by transformers in
//! float64 (scripts/hf_reference.py, run on the GPU machine where torch is installed).

use hierspec_model::{loader, KvCache, Llama, LogitsFor};
use hierspec_speculative::ar::tokens_tensor;
use hierspec_tests::*;
use serde::Deserialize;

#[derive(Deserialize)]
struct Reference {
    ids: Vec<u32>,
    logits: Vec<Vec<f64>>,
}

fn check(name: &str, expect_rope_scaling: bool) {
    let dir = fixture_dir().join(name);
    let r: Reference = serde_json::from_str(&std::fs::read_to_string(dir.join("reference.json")).unwrap()).unwrap();
    let device = device();
    let m = loader::load(dir.to_str().unwrap(), 4096, &device).expect("load HF directory");
    assert_eq!(m.config.rope_scaling.is_some(), expect_rope_scaling, "{name}: rope scaling read from config.json");
    let vocab = m.config.vocab_size;
    let n = r.ids.len();
    let mut cache = KvCache::new(&m.config, 1, n, &device);
    let out = m.model.forward(tokens_tensor(&r.ids, &device), Llama::positions(0, n, &device), &mut cache, None, LogitsFor::All);
    let ours = to_vec_f32(out.logits);
    let tol = logit_tolerance();
    let mut max = 0f64;
    for (pos, want) in r.logits.iter().enumerate() {
        assert_eq!(want.len(), vocab);
        let row = &ours[pos * vocab..(pos + 1) * vocab];
        for (a, b) in row.iter().zip(want) {
            max = max.max((*a as f64 - b).abs());
        }
        let am = |v: &mut dyn Iterator<Item = f64>| v.enumerate().fold((0, f64::MIN), |a, (i, x)| if x > a.1 { (i, x) } else { a }).0;
        assert_eq!(am(&mut row.iter().map(|&x| x as f64)), am(&mut want.iter().copied()), "{name}: argmax at {pos}");
    }
    eprintln!("{name}: {n} positions, max |diff| vs transformers {max:.2e}");
    assert!(max <= tol as f64, "{name}: logits differ from transformers by {max}");
}

#[test]
fn fidelity_hf_llama_gqa_rope_scaling_sharded_bf16() {
    check("hf-llama-tiny", true);
}

#[test]
fn fidelity_hf_qwen2_bias_tied() {
    check("hf-qwen2-tiny", false);
}

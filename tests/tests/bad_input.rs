//! Bad input is a clear error, never a panic: truncated and malformed files, inconsistent configs,
//! unknown quantization types, prompts beyond the context.

use std::path::{Path, PathBuf};

use hierspec_model::gguf::GgufFile;
use hierspec_model::{fetch, loader, Error};
use hierspec_speculative::{generate, Sampler, SamplingParams};
use hierspec_tests::*;

fn tmp_dir(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("hierspec-bad-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

fn smollm_path() -> PathBuf {
    fetch::fetch(fetch::alias("smollm2-135m").unwrap()).expect("fetch smollm2-135m")
}

fn write_prefix(src: &Path, dst: &Path, n: usize) {
    let bytes = std::fs::read(src).unwrap();
    std::fs::write(dst, &bytes[..n.min(bytes.len())]).unwrap();
}

fn err_of<T>(r: Result<T, Error>) -> String {
    match r {
        Ok(_) => panic!("expected an error"),
        Err(e) => e.to_string(),
    }
}

#[test]
fn truncated_gguf_header_and_data() {
    let src = smollm_path();
    let d = tmp_dir("gguf");
    let len = std::fs::metadata(&src).unwrap().len() as usize;
    for (n, want) in [(3, "shorter than the header"), (2000, "truncated"), (len - 4096, "truncated: tensor")] {
        let p = d.join(format!("cut{n}.gguf"));
        write_prefix(&src, &p, n);
        let msg = err_of(GgufFile::open(&p));
        assert!(msg.contains(want), "cut at {n}: {msg}");
        // and through the user-facing loader
        let msg = err_of(loader::load(p.to_str().unwrap(), 4096, &device()));
        assert!(msg.contains("GGUF"), "{msg}");
    }
    let p = d.join("notgguf.gguf");
    std::fs::write(&p, b"PK\x03\x04 definitely not a gguf file").unwrap();
    assert!(err_of(GgufFile::open(&p)).contains("bad magic"));
}

/// A minimal GGUF v3 with one tensor of the given ggml type id.
fn tiny_gguf(ty: u32, n: u64, data: &[u8]) -> Vec<u8> {
    let mut b = Vec::new();
    let s = |b: &mut Vec<u8>, x: &str| {
        b.extend((x.len() as u64).to_le_bytes());
        b.extend(x.as_bytes());
    };
    b.extend(b"GGUF");
    b.extend(3u32.to_le_bytes());
    b.extend(1u64.to_le_bytes()); // tensors
    b.extend(1u64.to_le_bytes()); // kv
    s(&mut b, "general.architecture");
    b.extend(8u32.to_le_bytes());
    s(&mut b, "llama");
    s(&mut b, "w");
    b.extend(1u32.to_le_bytes());
    b.extend(n.to_le_bytes());
    b.extend(ty.to_le_bytes());
    b.extend(0u64.to_le_bytes());
    while b.len() % 32 != 0 {
        b.push(0);
    }
    b.extend(data);
    b
}

#[test]
fn unknown_quant_type_is_named() {
    let d = tmp_dir("quant");
    let p = d.join("q2k.gguf");
    std::fs::write(&p, tiny_gguf(10, 256, &[0u8; 84])).unwrap(); // Q2_K
    let msg = err_of(GgufFile::open(&p));
    assert!(msg.contains("quantization type 10"), "{msg}");
    // a known type whose row does not split into blocks
    std::fs::write(&p, tiny_gguf(8, 20, &[0u8; 34])).unwrap(); // Q8_0 needs rows of 32
    let msg = err_of(GgufFile::open(&p));
    assert!(msg.contains("does not fit"), "{msg}");
    // a well-formed single tensor still parses
    std::fs::write(&p, tiny_gguf(8, 32, &[0u8; 34])).unwrap();
    let f = GgufFile::open(&p).unwrap();
    assert_eq!(f.dequantize("w").unwrap().1, vec![32]);
}

fn tiny_config(kv_heads: usize) -> String {
    format!(
        r#"{{"model_type":"llama","vocab_size":32,"hidden_size":16,"intermediate_size":24,"num_hidden_layers":1,
        "num_attention_heads":4,"num_key_value_heads":{kv_heads},"rms_norm_eps":1e-5,"rope_theta":10000.0,
        "max_position_embeddings":64,"tie_word_embeddings":true}}"#
    )
}

/// A safetensors file by hand: 8-byte header length, JSON header, data.
fn safetensors_bytes(tensors: &[(&str, Vec<usize>)]) -> Vec<u8> {
    let mut header = serde_json::Map::new();
    let mut off = 0usize;
    for (name, shape) in tensors {
        let n: usize = shape.iter().product::<usize>() * 4;
        header.insert(name.to_string(), serde_json::json!({"dtype": "F32", "shape": shape, "data_offsets": [off, off + n]}));
        off += n;
    }
    let mut h = serde_json::Value::Object(header).to_string().into_bytes();
    while h.len() % 8 != 0 {
        h.push(b' ');
    }
    let mut b = (h.len() as u64).to_le_bytes().to_vec();
    b.extend(h);
    b.extend((0..off / 4).flat_map(|i| ((i % 7) as f32 * 0.01).to_le_bytes()));
    b
}

#[test]
fn inconsistent_config_and_truncated_safetensors() {
    let d = tmp_dir("hf");
    // A valid tokenizer, so that the errors below come from the config and the weights.
    std::fs::copy(fixture_dir().join("hf-llama-tiny/tokenizer.json"), d.join("tokenizer.json")).unwrap();
    std::fs::write(d.join("config.json"), tiny_config(3)).unwrap();
    std::fs::write(d.join("model.safetensors"), safetensors_bytes(&[("x", vec![2])])).unwrap();
    let msg = err_of(loader::load(d.to_str().unwrap(), 4096, &device()));
    assert!(msg.contains("num_key_value_heads"), "{msg}");

    std::fs::write(d.join("config.json"), tiny_config(2)).unwrap();
    let full = safetensors_bytes(&[("model.embed_tokens.weight", vec![32, 16])]);
    std::fs::write(d.join("model.safetensors"), &full[..full.len() - 10]).unwrap();
    let msg = err_of(loader::load(d.to_str().unwrap(), 4096, &device()));
    assert!(msg.contains("safetensors"), "{msg}");

    // complete file, but a tensor of the wrong shape
    let wrong = safetensors_bytes(&[("model.embed_tokens.weight", vec![31, 16])]);
    std::fs::write(d.join("model.safetensors"), wrong).unwrap();
    let msg = err_of(loader::load(d.to_str().unwrap(), 4096, &device()));
    assert!(msg.contains("expected shape [32, 16]"), "{msg}");
}

#[test]
fn prompt_beyond_context() {
    let device = device();
    let m = loader::load("smollm2-135m", 64, &device).expect("load");
    let ids = m.tokenizer.encode(&"word ".repeat(80)).unwrap();
    assert!(ids.len() > 64);
    let mut s = Sampler::new(SamplingParams::default()).unwrap();
    let msg = err_of(generate(&m.model, &m.config, &ids, 8, &mut s, &[], |_| {}));
    assert!(msg.contains("exceeds the context of 64 tokens"), "{msg}");
    // fits alone, but not with the requested new tokens
    let msg = err_of(generate(&m.model, &m.config, &ids[..60], 8, &mut s, &[], |_| {}));
    assert!(msg.contains("60 tokens plus 8 new tokens"), "{msg}");
    let msg = err_of(generate(&m.model, &m.config, &[], 8, &mut s, &[], |_| {}));
    assert!(msg.contains("empty"), "{msg}");
    let msg = err_of(generate(&m.model, &m.config, &[1_000_000], 8, &mut s, &[], |_| {}));
    assert!(msg.contains("outside the vocabulary"), "{msg}");
}

#[test]
fn unknown_model_spec() {
    let msg = err_of(loader::load("no-such-model", 4096, &device()));
    assert!(msg.contains("smollm2-135m"), "the message lists the aliases: {msg}");
}

#[test]
fn impossible_sd_settings() {
    use hierspec_model::{Llama, LlamaConfig};
    use hierspec_speculative::sd::{generate_sd, Model};
    let device = device();
    let m = loader::load("smollm2-135m", 256, &device).expect("load");
    let ids = m.tokenizer.encode("hello").unwrap();
    let target = || Model { model: &m.model, config: &m.config };
    let msg = err_of(generate_sd(target(), target(), &ids, 8, 0, &mut greedy(), &[], |_| {}));
    assert!(msg.contains("--draft-len must be at least 1"), "{msg}");
    let other = LlamaConfig { vocab_size: 1000, num_hidden_layers: 1, ..m.config.clone() };
    let small = Llama::random(&other, 256, 0, &device).unwrap();
    let msg = err_of(generate_sd(target(), Model { model: &small, config: &other }, &ids, 8, 3, &mut greedy(), &[], |_| {}));
    assert!(msg.contains("must share a tokenizer"), "{msg}");
    let msg = err_of(generate_sd(target(), target(), &ids, 250, 8, &mut greedy(), &[], |_| {}));
    assert!(msg.contains("exceeds the context of 256"), "{msg}");
}

#[test]
fn impossible_eagle_settings() {
    use hierspec_model::eagle::{load_head, EagleConfig, EagleHead};
    use hierspec_model::LlamaConfig;
    use hierspec_speculative::drafter::EagleDrafter;
    use hierspec_speculative::generate_eagle;
    use hierspec_speculative::tree::TreeConfig;
    let device = device();
    let m = loader::load("smollm2-135m", 256, &device).expect("load");
    let ids = m.tokenizer.encode("hello").unwrap();
    let cfg = EagleConfig::for_base(&m.config);
    let head = EagleHead::random(&cfg, 256, 0, &device).unwrap();
    let good = TreeConfig::default();
    // Tree shapes with a zero.
    for (bad, what) in [((0, 6, 60), "top-k 0"), ((10, 0, 60), "depth 0"), ((10, 6, 0), "nodes 0")] {
        let tree = TreeConfig { top_k: bad.0, depth: bad.1, total_nodes: bad.2 };
        let mut d = EagleDrafter::new(&head, &cfg, &m.model, 64, &good).unwrap();
        let msg = err_of(generate_eagle(&m.model, &m.config, &mut d, &tree, &ids, 8, &mut greedy(), &[], |_| {}));
        assert!(msg.contains("tree settings must be positive"), "{what}: {msg}");
    }
    // A head trained for another model (hidden size), or another vocabulary.
    let wide = EagleConfig::for_base(&LlamaConfig { hidden_size: 640, num_attention_heads: 10, num_key_value_heads: 5, head_dim: 64, ..m.config.clone() });
    let wide_head = EagleHead::random(&wide, 256, 0, &device).unwrap();
    let msg = err_of(EagleDrafter::new(&wide_head, &wide, &m.model, 64, &good).map(|_| ()));
    assert!(msg.contains("hidden size (640) does not match the model's (576)"), "{msg}");
    let other_vocab = EagleConfig::for_base(&LlamaConfig { vocab_size: 1000, ..m.config.clone() });
    let msg = err_of(other_vocab.check_base(&m.config));
    assert!(msg.contains("vocabulary (1000)"), "{msg}");
    // A head directory without weights, and one with a broken pickle.
    let d = tmp_dir("eagle-head");
    std::fs::write(d.join("config.json"), r#"{"model_type": "llama", "vocab_size": 49152, "hidden_size": 576, "intermediate_size": 1536, "num_hidden_layers": 1, "num_attention_heads": 9, "num_key_value_heads": 3, "max_position_embeddings": 2048}"#).unwrap();
    let msg = err_of(load_head(&d, &m.config, 256, &device).map(|_| ()));
    assert!(msg.contains("no weights for the EAGLE head"), "{msg}");
    // A pickle that is not one.
    std::fs::write(d.join("pytorch_model.bin"), b"not a zip, not a pickle").unwrap();
    let msg = err_of(load_head(&d, &m.config, 256, &device).map(|_| ()));
    assert!(msg.contains("not a readable PyTorch checkpoint"), "{msg}");
}

fn greedy() -> hierspec_speculative::Sampler {
    hierspec_speculative::Sampler::new(Default::default()).unwrap()
}

#[test]
fn impossible_hier_settings() {
    use hierspec_model::eagle::{EagleConfig, EagleHead};
    use hierspec_model::{Llama, LlamaConfig};
    use hierspec_speculative::drafter::EagleDrafter;
    use hierspec_speculative::sd::Model;
    use hierspec_speculative::tree::TreeConfig;
    use hierspec_speculative::{generate_hier, HierConfig};
    let device = device();
    let m = loader::load("smollm2-135m", 256, &device).expect("load");
    let ids = m.tokenizer.encode("hello").unwrap();
    let cfg = EagleConfig::for_base(&m.config);
    let head = EagleHead::random(&cfg, 256, 0, &device).unwrap();
    let model = || Model { model: &m.model, config: &m.config };
    let run = |hier: HierConfig, inter: Model, new: usize| {
        let mut d = EagleDrafter::new(&head, &cfg, &m.model, 64, &TreeConfig::default()).unwrap();
        err_of(generate_hier(model(), inter, &mut d, &hier, &ids, new, &mut greedy(), &[], |_| {}))
    };
    let msg = run(HierConfig { min_draft_len: 0, ..Default::default() }, model(), 8);
    assert!(msg.contains("--min-draft-len must be at least 1"), "{msg}");
    let no_depth = HierConfig { tree: TreeConfig { depth: 0, ..HierConfig::default().tree }, ..Default::default() };
    assert!(run(no_depth, model(), 8).contains("tree settings must be positive"));
    let other = LlamaConfig { vocab_size: 1000, num_hidden_layers: 1, ..m.config.clone() };
    let small = Llama::random(&other, 256, 0, &device).unwrap();
    let msg = run(HierConfig::default(), Model { model: &small, config: &other }, 8);
    assert!(msg.contains("must share a tokenizer"), "{msg}");
    let msg = run(HierConfig::default(), model(), 230);
    assert!(msg.contains("exceeds the context of 256"), "{msg}");
}

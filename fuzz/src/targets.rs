//! What is fuzzed: each target is a directory of seed files as a user would point hierspec at, the
//! files in it that mutations reach (binary or JSON), and the calls that read it: the same public
//! entry points `generate`, `bench` and the trainer use, run to the end (weights loaded on the CPU).

use std::path::{Path, PathBuf};

use burn::tensor::Device;
use hierspec_model::eagle::{head_source, EagleConfig, EagleHead};
use hierspec_model::gguf::GgufFile;
use hierspec_model::loader::{config_from_gguf, load_with, LoadOptions};
use hierspec_model::nn::QuantSpec;
use hierspec_model::tokenizer::TextTokenizer;

use crate::seeds;

#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Kind {
    Bytes,
    Json,
}

/// A file of the seed directory that mutations reach.
pub struct Mutable {
    pub file: String,
    pub kind: Kind,
    pub seed: Vec<u8>,
    /// Structural offsets (field and section starts) for truncation.
    pub bounds: Vec<usize>,
}

pub struct Target {
    pub name: &'static str,
    /// The seed directory (every file the check reads).
    pub dir: PathBuf,
    pub files: Vec<Mutable>,
    pub check: fn(&Path) -> Result<(), String>,
}

fn s<E: std::fmt::Display>(e: E) -> String {
    e.to_string()
}

fn device() -> Device {
    Device::flex()
}

/// A W4A16 load: GGUF Q4 blocks go in as they are, the rest are quantized (RTN).
fn int4_opts() -> LoadOptions {
    LoadOptions { max_context: 256, quant: Some(QuantSpec { group: 32, asymmetric: true, lm_head: false }) }
}

/// GGUF: the file's tables, every tensor dequantized, config and tokenizer from the metadata, then
/// the model loaded dense and as W4A16.
fn check_gguf(dir: &Path) -> Result<(), String> {
    let path = dir.join("model.gguf");
    let file = GgufFile::open(&path).map_err(s)?;
    let mut first = None;
    let mut names: Vec<&String> = file.tensors.keys().collect();
    names.sort();
    for name in names {
        if let Err(e) = file.dequantize(name) {
            first.get_or_insert(e.to_string());
        }
    }
    config_from_gguf(&file).map_err(s)?;
    let tok = TextTokenizer::from_gguf(&file).map_err(s)?;
    let ids = tok.encode("Hello, fuzz 123!").map_err(s)?;
    tok.decode(&ids).map_err(s)?;
    drop(file);
    let spec = path.display().to_string();
    load_with(&spec, &LoadOptions::new(256), &device()).map_err(s)?;
    load_with(&spec, &int4_opts(), &device()).map_err(s)?;
    first.map_or(Ok(()), Err)
}

/// A real model's GGUF header and metadata: config and tokenizer (no tensors).
fn check_gguf_header(dir: &Path) -> Result<(), String> {
    let file = GgufFile::open(dir.join("model.gguf")).map_err(s)?;
    config_from_gguf(&file).map_err(s)?;
    let tok = TextTokenizer::from_gguf(&file).map_err(s)?;
    let ids = tok.encode("def fuzz(x):\n    return x ** 2  # 123").map_err(s)?;
    tok.decode(&ids).map(drop).map_err(s)
}

/// A transformers directory (config, tokenizer, safetensors single or sharded, maybe GPTQ / AWQ):
/// loaded as it is and as W4A16.
fn check_hf_dir(dir: &Path) -> Result<(), String> {
    let spec = dir.display().to_string();
    load_with(&spec, &LoadOptions::new(256), &device()).map_err(s)?;
    load_with(&spec, &int4_opts(), &device()).map(drop).map_err(s)
}

/// tokenizer.json, tokenizer_config.json (chat template) and generation_config.json (eos).
fn check_tokenizer(dir: &Path) -> Result<(), String> {
    let tok = TextTokenizer::from_hf_dir(dir, &[]).map_err(s)?;
    let ids = tok.encode("Hello, fuzz 123! <|im_start|>").map_err(s)?;
    tok.decode(&ids).map_err(s)?;
    if let Some(t) = &tok.chat_template {
        t.render(Some("sys"), &[("user", "hi")]);
    }
    Ok(())
}

/// An EAGLE head directory (config.json and safetensors or pytorch_model.bin): loaded on the CPU.
fn check_eagle(dir: &Path) -> Result<(), String> {
    let text = std::fs::read_to_string(dir.join("config.json")).map_err(s)?;
    let cfg = EagleConfig::from_json(&text).map_err(s)?;
    let src = head_source(dir).map_err(s)?;
    EagleHead::load(&cfg, src.as_ref(), 64, &device()).map(drop).map_err(s)
}

fn copy_dir(from: &Path, to: &Path, skip: &[&str]) -> std::io::Result<()> {
    std::fs::create_dir_all(to)?;
    for e in std::fs::read_dir(from)? {
        let p = e?.path();
        let name = p.file_name().expect("a file name").to_string_lossy().to_string();
        if p.is_file() && !skip.contains(&name.as_str()) {
            std::fs::copy(&p, to.join(&name))?;
        }
    }
    Ok(())
}

fn mutable(dir: &Path, file: &str, kind: Kind) -> Mutable {
    let seed = std::fs::read(dir.join(file)).unwrap_or_else(|e| panic!("seed {}: {e}", dir.join(file).display()));
    let bounds = match (kind, file) {
        (Kind::Json, _) => Vec::new(),
        (_, f) if f.ends_with(".safetensors") => seeds::safetensors_bounds(&seed),
        (_, f) if f.ends_with(".bin") => seeds::zip_bounds(&seed),
        _ => Vec::new(),
    };
    Mutable { file: file.into(), kind, seed, bounds }
}

/// Every target, with its seed directory laid out under `root`. The SmolLM2 header target is there
/// only where that GGUF is cached (`HIERSPEC_CACHE`, as `fetch` leaves it).
pub fn all(root: &Path) -> Result<Vec<Target>, String> {
    let fx = seeds::fixtures();
    let mut out = Vec::new();
    let io = |e: std::io::Error| e.to_string();

    let d = root.join("gguf");
    std::fs::create_dir_all(&d).map_err(io)?;
    let (bytes, bounds) = seeds::tiny_gguf();
    std::fs::write(d.join("model.gguf"), &bytes).map_err(io)?;
    out.push(Target { name: "gguf", dir: d, files: vec![Mutable { file: "model.gguf".into(), kind: Kind::Bytes, seed: bytes, bounds }], check: check_gguf });

    let cache = std::env::var_os("HIERSPEC_CACHE").map(PathBuf::from).or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache/hierspec")));
    if let Some((bytes, bounds)) = cache.and_then(|c| seeds::gguf_header(&c.join("models/smollm2-135m.gguf"))) {
        let d = root.join("gguf-header");
        std::fs::create_dir_all(&d).map_err(io)?;
        std::fs::write(d.join("model.gguf"), &bytes).map_err(io)?;
        out.push(Target { name: "gguf-header", dir: d, files: vec![Mutable { file: "model.gguf".into(), kind: Kind::Bytes, seed: bytes, bounds }], check: check_gguf_header });
    }

    let d = root.join("safetensors");
    copy_dir(&fx.join("hf-qwen2-tiny"), &d, &["reference.json"]).map_err(io)?;
    let files = vec![mutable(&d, "model.safetensors", Kind::Bytes), mutable(&d, "config.json", Kind::Json), mutable(&d, "generation_config.json", Kind::Json)];
    out.push(Target { name: "safetensors", dir: d, files, check: check_hf_dir });

    let d = root.join("sharded");
    copy_dir(&fx.join("hf-llama-tiny"), &d, &["reference.json"]).map_err(io)?;
    let files = vec![mutable(&d, "model.safetensors.index.json", Kind::Json), mutable(&d, "model-00002-of-00003.safetensors", Kind::Bytes), mutable(&d, "config.json", Kind::Json)];
    out.push(Target { name: "sharded", dir: d, files, check: check_hf_dir });

    let d = root.join("tokenizer");
    copy_dir(&fx.join("hf-llama-tiny"), &d, &["reference.json"]).map_err(io)?;
    let template = serde_json::json!({"chat_template": "{% for message in messages %}{{'<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>' + '\\n'}}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}", "eos_token": "<|im_end|>"});
    std::fs::write(d.join("tokenizer_config.json"), template.to_string()).map_err(io)?;
    let files = vec![mutable(&d, "tokenizer.json", Kind::Json), mutable(&d, "tokenizer_config.json", Kind::Json), mutable(&d, "generation_config.json", Kind::Json)];
    out.push(Target { name: "tokenizer", dir: d, files, check: check_tokenizer });

    let d = root.join("eagle-safetensors");
    copy_dir(&fx.join("eagle-head-st"), &d, &[]).map_err(io)?;
    let files = vec![mutable(&d, "model.safetensors", Kind::Bytes), mutable(&d, "config.json", Kind::Json)];
    out.push(Target { name: "eagle-safetensors", dir: d, files, check: check_eagle });

    let d = root.join("eagle-pytorch");
    copy_dir(&fx.join("eagle-head-bin"), &d, &[]).map_err(io)?;
    let files = vec![mutable(&d, "pytorch_model.bin", Kind::Bytes), mutable(&d, "config.json", Kind::Json)];
    out.push(Target { name: "eagle-pytorch", dir: d, files, check: check_eagle });

    let d = root.join("gptq");
    seeds::gptq_dir(&d)?;
    let files = vec![mutable(&d, "model.safetensors", Kind::Bytes), mutable(&d, "config.json", Kind::Json)];
    out.push(Target { name: "gptq", dir: d, files, check: check_hf_dir });
    Ok(out)
}

//! From a user's `--model` (an alias, a Hugging Face directory, or a .gguf file) to a model on a
//! device plus its tokenizer.

use burn::tensor::Device;
use std::path::{Path, PathBuf};


use crate::config::LlamaConfig;
use crate::error::{Error, Result};
use crate::fetch;
use crate::gguf::{GgufFile, MetaValue};
use crate::llama::Llama;
use crate::nn::QuantSpec;
use crate::quantized::CheckpointQuant;
use crate::tokenizer::TextTokenizer;
use crate::weights::{GgufSource, SafetensorsSource, WeightSource};

/// RoPE tables beyond this many positions cost memory for contexts nobody runs at batch 1 here.
pub const DEFAULT_MAX_CONTEXT: usize = 32_768;

pub struct LoadedModel {
    pub model: Llama,
    pub config: LlamaConfig,
    pub tokenizer: TextTokenizer,
    pub source: PathBuf,
}

impl LoadedModel {
    /// Usable context: the model's own limit, capped by the RoPE table we built.
    pub fn context_len(&self) -> usize {
        self.model.max_positions()
    }
}

/// Resolve an alias (fetching it on first use), a directory, or a file.
pub fn resolve(spec: &str) -> Result<PathBuf> {
    if let Some(a) = fetch::alias(spec) {
        return fetch::fetch(a);
    }
    let p = PathBuf::from(spec);
    if p.exists() {
        return Ok(p);
    }
    let names: Vec<&str> = fetch::ALIASES.iter().map(|a| a.name).collect();
    Err(Error::Setting(format!("--model {spec:?} is neither a known alias ({}) nor an existing path", names.join(", "))))
}

/// How to load: the context cap and an optional load-time W4A16 quantization.
#[derive(Debug, Clone, Copy)]
pub struct LoadOptions {
    pub max_context: usize,
    pub quant: Option<QuantSpec>,
}

impl LoadOptions {
    pub fn new(max_context: usize) -> Self {
        Self { max_context, quant: None }
    }
}

pub fn load(spec: &str, max_context: usize, device: &Device) -> Result<LoadedModel> {
    load_with(spec, &LoadOptions::new(max_context), device)
}

pub fn load_with(spec: &str, opts: &LoadOptions, device: &Device) -> Result<LoadedModel> {
    let ckpt = Checkpoint::open(spec)?;
    let config = ckpt.config.clone();
    // W4A16 loads take GGUF Q4_0 / Q4_1 / Q4_K weights as they are; other types requantize.
    let src = ckpt.source(opts.quant.is_some());
    let model = Llama::load_with(&config, src.as_ref(), config.max_position_embeddings.min(opts.max_context), opts.quant.as_ref(), device)?;
    drop(src);
    Ok(LoadedModel { model, config, tokenizer: ckpt.tokenizer, source: ckpt.path })
}

pub fn load_hf_dir(dir: &Path, opts: &LoadOptions, device: &Device) -> Result<LoadedModel> {
    load_with(&dir.display().to_string(), opts, device)
}

pub fn load_gguf(path: &Path, opts: &LoadOptions, device: &Device) -> Result<LoadedModel> {
    load_with(&path.display().to_string(), opts, device)
}

/// A model file or directory opened for reading: its config, tokenizer and weights (not on any device).
pub struct Checkpoint {
    pub path: PathBuf,
    pub config: LlamaConfig,
    pub tokenizer: TextTokenizer,
    weights: Weights,
}

enum Weights {
    Gguf(GgufFile),
    Hf(SafetensorsSource),
}

impl Checkpoint {
    /// An alias, HF model directory (safetensors, plain or GPTQ/AWQ int4) or GGUF file.
    pub fn open(spec: &str) -> Result<Self> {
        let path = resolve(spec)?;
        if path.is_dir() {
            let cfg_path = path.join("config.json");
            let text = std::fs::read_to_string(&cfg_path).map_err(|e| Error::io(&cfg_path, e))?;
            let config = LlamaConfig::from_hf_json(&text)?;
            let mut src = SafetensorsSource::open_dir(&path)?;
            let v: serde_json::Value = serde_json::from_str(&text).map_err(|e| Error::Config(format!("{}: {e}", cfg_path.display())))?;
            src.quant = CheckpointQuant::from_config(&v)?;
            let tokenizer = TextTokenizer::from_hf_dir(&path, &config.eos_token_ids)?;
            Ok(Self { path, config, tokenizer, weights: Weights::Hf(src) })
        } else {
            let file = GgufFile::open(&path)?;
            let config = config_from_gguf(&file)?;
            let tokenizer = TextTokenizer::from_gguf(&file)?;
            Ok(Self { path, config, tokenizer, weights: Weights::Gguf(file) })
        }
    }

    /// The weights by Hugging Face name. `native_int4`: GGUF Q4 blocks come back as int4 layers.
    pub fn source(&self, native_int4: bool) -> Box<dyn WeightSource + '_> {
        match &self.weights {
            Weights::Hf(src) => Box::new(HfRef(src)),
            Weights::Gguf(file) => {
                let unpermute = (self.config.arch == "llama").then_some((self.config.num_attention_heads, self.config.num_key_value_heads));
                Box::new(GgufSource { file, unpermute, native_int4 })
            }
        }
    }
}

/// A borrowed safetensors source (the checkpoint keeps the mappings).
struct HfRef<'a>(&'a SafetensorsSource);

impl WeightSource for HfRef<'_> {
    fn tensor(&self, name: &str) -> Result<crate::weights::HostTensor> {
        self.0.tensor(name)
    }
    fn contains(&self, name: &str) -> bool {
        self.0.contains(name)
    }
    fn int4(&self, name: &str) -> Result<Option<crate::quantized::QuantTensor>> {
        self.0.int4(name)
    }
    fn int4_group(&self, name: &str) -> Option<usize> {
        self.0.int4_group(name)
    }
}

/// The model config from GGUF metadata (`{arch}.*` keys); tensor presence decides biases and tying.
pub fn config_from_gguf(file: &GgufFile) -> Result<LlamaConfig> {
    let arch = file.architecture()?.to_string();
    if !matches!(arch.as_str(), "llama" | "qwen2") {
        return Err(Error::Unsupported(format!("GGUF architecture {arch:?} (supported: llama, qwen2)")));
    }
    let key = |k: &str| format!("{arch}.{k}");
    let uint = |k: &str| -> Result<usize> {
        file.meta(&key(k))
            .and_then(MetaValue::as_u64)
            .map(|v| v as usize)
            .ok_or_else(|| Error::Gguf(format!("missing or non-integer metadata {}", key(k))))
    };
    let float = |k: &str| file.meta(&key(k)).and_then(MetaValue::as_f64);
    let heads = uint("attention.head_count")?;
    let hidden = uint("embedding_length")?;
    if heads == 0 || (file.meta(&key("attention.key_length")).is_none() && hidden % heads != 0) {
        return Err(Error::Config(format!("hidden size {hidden} is not divisible by {heads} heads")));
    }
    let vocab_size = match file.meta(&key("vocab_size")).and_then(MetaValue::as_u64) {
        Some(v) => v as usize,
        None => file.meta("tokenizer.ggml.tokens").and_then(MetaValue::as_array).map(|a| a.len()).unwrap_or(0),
    };
    if file.tensors.contains_key("rope_freqs.weight") {
        return Err(Error::Unsupported("GGUF rope_freqs (Llama-3.1 scaled RoPE in GGUF); load the HF directory instead".into()));
    }
    let config = LlamaConfig {
        vocab_size,
        hidden_size: hidden,
        intermediate_size: uint("feed_forward_length")?,
        num_hidden_layers: uint("block_count")?,
        num_attention_heads: heads,
        num_key_value_heads: file.meta(&key("attention.head_count_kv")).and_then(MetaValue::as_u64).map(|v| v as usize).unwrap_or(heads),
        head_dim: file.meta(&key("attention.key_length")).and_then(MetaValue::as_u64).map(|v| v as usize).unwrap_or(hidden / heads),
        rms_norm_eps: float("attention.layer_norm_rms_epsilon").unwrap_or(1e-6),
        rope_theta: float("rope.freq_base").unwrap_or(10_000.0),
        rope_scaling: None,
        max_position_embeddings: uint("context_length").unwrap_or(4096),
        attention_bias: file.tensors.contains_key("blk.0.attn_q.bias"),
        tie_word_embeddings: !file.tensors.contains_key("output.weight"),
        bos_token_id: file.meta("tokenizer.ggml.bos_token_id").and_then(MetaValue::as_u64).map(|v| v as u32),
        eos_token_ids: file.meta("tokenizer.ggml.eos_token_id").and_then(MetaValue::as_u64).map(|v| v as u32).into_iter().collect(),
        arch,
    };
    config.validate()?;
    Ok(config)
}

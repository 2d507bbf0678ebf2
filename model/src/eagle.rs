//! The EAGLE-1/2 draft head (method.md, "EAGLE-1/2 head"): `x = fc([e_{t+1} ; f_t])`, one Llama
//! decoder layer without its input norm, output f^_{t+1} = x (no final norm). The embedding and
//! lm_head are the base model's, passed in at call sites, never copied. The head has its own KV cache
//! indexed by position: row t holds the pair (f_t, e_{t+1}); re-syncing overwrites stale rows.

use std::path::{Path, PathBuf};

use burn::module::Module;
use burn::tensor::{Device, Int, Tensor};
use hierspec_kernels::start::CacheStart;
use serde_json::Value;

use crate::cache::{KvCache, LayerKv};
use crate::checkpoint::{hf_config, write_json, write_sharded, Out, StoreDtype};
use crate::config::LlamaConfig;
use crate::error::{Error, Result};
use crate::llama::{Attention, AttnMask, Mlp, Step};
use crate::nn::linear::{transpose, LinearWeight};
use crate::nn::{Linear, RmsNorm, Rope};
use crate::pytorch::PytorchSource;
use crate::weights::{SafetensorsSource, WeightSource};

/// A head's configuration: the decoder-layer shapes (a Llama config with one layer) and whether
/// `fc` has a bias (EAGLE's `bias` key; the official code defaults it to true).
#[derive(Debug, Clone, PartialEq)]
pub struct EagleConfig {
    pub layer: LlamaConfig,
    pub fc_bias: bool,
}

impl EagleConfig {
    pub fn from_json(text: &str) -> Result<Self> {
        let mut layer = LlamaConfig::from_hf_json(text)?;
        let v: Value = serde_json::from_str(text).map_err(|e| Error::Config(format!("head config.json: {e}")))?;
        let fc_bias = v.get("bias").and_then(Value::as_bool).unwrap_or(true);
        layer.num_hidden_layers = 1;
        Ok(Self { layer, fc_bias })
    }

    /// A head shaped for `base` (its hidden size, heads, vocabulary and RoPE), as EAGLE builds them.
    pub fn for_base(base: &LlamaConfig) -> Self {
        Self { layer: LlamaConfig { num_hidden_layers: 1, ..base.clone() }, fc_bias: base.attention_bias }
    }

    /// The head drafts for `base`: features and embeddings must have the base's width, and its
    /// logits come from the base's lm_head.
    pub fn check_base(&self, base: &LlamaConfig) -> Result<()> {
        self.check_dims(base.hidden_size, base.vocab_size)
    }

    /// As [`EagleConfig::check_base`], from the base model's hidden size and vocabulary.
    pub fn check_dims(&self, hidden_size: usize, vocab_size: usize) -> Result<()> {
        if self.layer.hidden_size != hidden_size {
            return Err(Error::Setting(format!(
                "the EAGLE head's hidden size ({}) does not match the model's ({hidden_size}): it was trained for another model",
                self.layer.hidden_size
            )));
        }
        if self.layer.vocab_size != vocab_size {
            return Err(Error::Setting(format!(
                "the EAGLE head's vocabulary ({}) does not match the model's ({vocab_size})",
                self.layer.vocab_size
            )));
        }
        Ok(())
    }
}

#[derive(Module, Debug)]
pub struct EagleHead {
    /// [2H -> H], input [embedding ; feature].
    pub fc: Linear,
    pub self_attn: Attention,
    pub post_attention_layernorm: RmsNorm,
    pub mlp: Mlp,
    pub rope: Rope,
}

impl EagleHead {
    /// Random weights (tests: every code path runs, acceptance is low).
    pub fn random(cfg: &EagleConfig, max_positions: usize, seed: u64, device: &Device) -> Result<Self> {
        cfg.layer.validate()?;
        hierspec_kernels::memory::persistent::<_>(device, || Self::random_weights(cfg, max_positions, seed, device))
    }

    fn random_weights(cfg: &EagleConfig, max_positions: usize, seed: u64, device: &Device) -> Result<Self> {
        let c = &cfg.layer;
        device.seed(seed);
        let lin = |_: &str, i: usize, o: usize, b: bool| Ok(Linear::random(i, o, b, 0.02, device));
        Ok(Self {
            fc: Linear::random(2 * c.hidden_size, c.hidden_size, cfg.fc_bias, 0.02, device),
            self_attn: Attention::build(c, lin)?,
            post_attention_layernorm: RmsNorm::ones(c.hidden_size, c.rms_norm_eps, device),
            mlp: Mlp::build(c, lin)?,
            rope: Rope::new(c, max_positions, device),
        })
    }

    /// Load from EAGLE's names (`fc.*`, `layers.0.*`); any `embed_tokens` in the file is ignored.
    pub fn load(cfg: &EagleConfig, src: &dyn WeightSource, max_positions: usize, device: &Device) -> Result<Self> {
        cfg.layer.validate()?;
        hierspec_kernels::memory::persistent::<_>(device, || Self::load_weights(cfg, src, max_positions, device))
    }

    fn load_weights(cfg: &EagleConfig, src: &dyn WeightSource, max_positions: usize, device: &Device) -> Result<Self> {
        let c = &cfg.layer;
        let h = c.hidden_size;
        let linear = |name: &str, d_in: usize, d_out: usize, bias: bool| -> Result<Linear> {
            let b = if bias { Some(src.tensor(&format!("{name}.bias"))?) } else { None };
            Linear::from_torch(name, src.tensor(&format!("{name}.weight"))?, b, d_in, d_out, device)
        };
        let norm_name = "layers.0.post_attention_layernorm";
        Ok(Self {
            fc: linear("fc", 2 * h, h, cfg.fc_bias)?,
            self_attn: Attention::build(c, |n, i, o, b| linear(&format!("layers.0.self_attn.{n}"), i, o, b))?,
            post_attention_layernorm: RmsNorm::from_weights(norm_name, src.tensor(&format!("{norm_name}.weight"))?, h, c.rms_norm_eps, device)?,
            mlp: Mlp::build(c, |n, i, o, b| linear(&format!("layers.0.mlp.{n}"), i, o, b))?,
            rope: Rope::new(c, max_positions, device),
        })
    }

    /// A KV cache for this head (one layer) with `capacity` rows.
    pub fn new_cache(&self, cfg: &EagleConfig, capacity: usize) -> KvCache {
        KvCache::new(&cfg.layer, 1, capacity, &self.fc_device())
    }

    fn fc_device(&self) -> Device {
        self.post_attention_layernorm.weight.device()
    }

    /// embeds: e_{t+1} [1, n, H]; features: f_t [1, n, H]; rows go to cache rows [len, len + n) at
    /// `positions`. Returns the predicted features f^_{t+1} [1, n, H].
    pub fn forward(
        &self,
        embeds: Tensor<3>,
        features: Tensor<3>,
        positions: Tensor<1, Int>,
        cache: &mut KvCache,
        mask: Option<&AttnMask>,
    ) -> Tensor<3> {
        let n = embeds.dims()[1];
        let cache_len = cache.len();
        let causal = AttnMask::causal_unless_given(mask, cache_len, n, &embeds.device());
        let start = cache.start();
        let out = self.forward_at(embeds, features, positions, &start, &mut cache.layers, mask.or(causal.as_ref()));
        cache.advance(n);
        out
    }

    /// [`EagleHead::forward`] after the cache rows [0, `start`) of `layers`, without the cache
    /// bookkeeping (`mask` given whole, `None` only for one row): the form a captured graph records
    /// (see [`Llama::forward_at`](crate::Llama::forward_at)).
    pub fn forward_at(
        &self,
        embeds: Tensor<3>,
        features: Tensor<3>,
        positions: Tensor<1, Int>,
        start: &CacheStart,
        layers: &mut [LayerKv],
        mask: Option<&AttnMask>,
    ) -> Tensor<3> {
        let x = self.fc.forward(Tensor::cat(vec![embeds, features.cast(self.fc_dtype())], 2));
        let step = Step { rope: &self.rope, positions, start: start.clone(), mask };
        // Layer 0 of EAGLE has no input norm: attention reads fc's output directly.
        let a = self.self_attn.attend(x.clone(), None, &step, &mut layers[0]);
        let h = self.self_attn.o_proj.forward_add(a, x);
        self.mlp.forward_add(h.clone(), h, Some(&self.post_attention_layernorm))
    }

    fn fc_dtype(&self) -> burn::tensor::DType {
        self.post_attention_layernorm.weight.val().dtype()
    }
}

/// The weight files of a head directory: safetensors (single, sharded with an index, or any
/// `*.safetensors`), else the official EAGLE heads' `pytorch_model.bin`.
pub fn head_source(dir: &Path) -> Result<Box<dyn WeightSource>> {
    if dir.join("model.safetensors").exists() || dir.join("model.safetensors.index.json").exists() {
        return Ok(Box::new(SafetensorsSource::open_dir(dir)?));
    }
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
        .map_err(|e| Error::io(dir, e))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "safetensors"))
        .collect();
    files.sort();
    if !files.is_empty() {
        return Ok(Box::new(SafetensorsSource::open_files(&files)?));
    }
    let bin = dir.join("pytorch_model.bin");
    if bin.exists() {
        return Ok(Box::new(PytorchSource::open(&bin)?));
    }
    Err(Error::Safetensors(format!("{}: no weights for the EAGLE head (model.safetensors, *.safetensors or pytorch_model.bin)", dir.display())))
}

/// Load a head directory (config.json + weights) for the base model `base`.
pub fn load_head(dir: &Path, base: &LlamaConfig, max_positions: usize, device: &Device) -> Result<(EagleHead, EagleConfig)> {
    let cfg_path = dir.join("config.json");
    let text = std::fs::read_to_string(&cfg_path).map_err(|e| Error::io(&cfg_path, e))?;
    let cfg = EagleConfig::from_json(&text)?;
    cfg.check_base(base)?;
    let src = head_source(dir)?;
    let head = EagleHead::load(&cfg, src.as_ref(), max_positions, device)?;
    Ok((head, cfg))
}

/// A linear layer's weight in PyTorch layout [out, in] (and bias) on the host, f32.
fn torch_weights(name: &str, l: &Linear) -> Result<Vec<(String, (Vec<f32>, Vec<usize>))>> {
    let host = |t: Tensor<2>| t.cast(burn::tensor::DType::F32).into_data().convert::<f32>().try_into_vec::<f32>().expect("f32");
    let w = match &l.weight {
        LinearWeight::Dense(w) => w.val(),
        LinearWeight::Int4(_) => return Err(Error::Unsupported(format!("{name}: an EAGLE head with int4 weights cannot be saved"))),
    };
    let (d_in, d_out) = (l.d_in(), l.d_out());
    let mut out = vec![(format!("{name}.weight"), (transpose(&host(w), d_in, d_out), vec![d_out, d_in]))];
    if let Some(b) = &l.bias {
        out.push((format!("{name}.bias"), (host(b.val().unsqueeze::<2>()), vec![d_out])));
    }
    Ok(out)
}

/// Write `head` as a head directory `load_head` reads (EAGLE's names, PyTorch layouts): config.json
/// (the layer's Llama/Qwen2 config plus EAGLE's `bias`) and safetensors files of at most
/// `max_file_bytes` each.
pub fn save_head(head: &EagleHead, cfg: &EagleConfig, dir: &Path, dtype: StoreDtype, max_file_bytes: usize) -> Result<()> {
    let mut named = torch_weights("fc", &head.fc)?;
    let a = &head.self_attn;
    for (n, l) in [("q_proj", &a.q_proj), ("k_proj", &a.k_proj), ("v_proj", &a.v_proj), ("o_proj", &a.o_proj)] {
        named.extend(torch_weights(&format!("layers.0.self_attn.{n}"), l)?);
    }
    let norm = head.post_attention_layernorm.weight.val().cast(burn::tensor::DType::F32).into_data().convert::<f32>().try_into_vec::<f32>().expect("f32");
    named.push(("layers.0.post_attention_layernorm.weight".into(), (norm, vec![cfg.layer.hidden_size])));
    let m = &head.mlp;
    for (n, l) in [("gate_proj", &m.gate_proj), ("up_proj", &m.up_proj), ("down_proj", &m.down_proj)] {
        named.extend(torch_weights(&format!("layers.0.mlp.{n}"), l)?);
    }
    let tensors = named.into_iter().map(|(n, t)| Out::float(&n, t, dtype)).collect();
    write_sharded(dir, tensors, max_file_bytes)?;
    let mut config = hf_config(&cfg.layer);
    config["bias"] = serde_json::json!(cfg.fc_bias);
    config["torch_dtype"] = serde_json::json!(match dtype {
        StoreDtype::F32 => "float32",
        StoreDtype::Bf16 => "bfloat16",
    });
    write_json(&dir.join("config.json"), &config)
}

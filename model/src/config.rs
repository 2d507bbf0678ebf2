//! Model configuration: one struct for every Llama-family decoder (Llama 2/3/3.1, Qwen2, SmolLM2),
//! read from a Hugging Face `config.json` (old and new RoPE field names) or from GGUF metadata.

use serde::Deserialize;
use serde_json::Value;

use crate::error::{Error, Result};

/// Llama-3.1 style frequency-dependent RoPE scaling (`rope_type: "llama3"`).
#[derive(Debug, Clone, PartialEq)]
pub struct Llama3RopeScaling {
    pub factor: f64,
    pub low_freq_factor: f64,
    pub high_freq_factor: f64,
    pub original_max_position_embeddings: usize,
}

#[derive(Debug, Clone, PartialEq)]
pub struct LlamaConfig {
    /// `llama` or `qwen2` (informational; behaviour is driven by the fields below).
    pub arch: String,
    pub vocab_size: usize,
    pub hidden_size: usize,
    pub intermediate_size: usize,
    pub num_hidden_layers: usize,
    pub num_attention_heads: usize,
    pub num_key_value_heads: usize,
    pub head_dim: usize,
    pub rms_norm_eps: f64,
    pub rope_theta: f64,
    pub rope_scaling: Option<Llama3RopeScaling>,
    pub max_position_embeddings: usize,
    /// q/k/v projections carry a bias (Qwen2).
    pub attention_bias: bool,
    pub tie_word_embeddings: bool,
    pub bos_token_id: Option<u32>,
    pub eos_token_ids: Vec<u32>,
}

impl LlamaConfig {
    /// Check the invariants the forward pass relies on; every loader calls this before reading weights.
    pub fn validate(&self) -> Result<()> {
        let bad = |msg: String| Err(Error::Config(msg));
        // Positive, and at most a bound far beyond any published model yet well within what a size
        // computed from them can hold: a corrupt config is refused here rather than sizing an allocation.
        for (name, v, most) in [
            ("vocab_size", self.vocab_size, 1 << 24),
            ("hidden_size", self.hidden_size, 1 << 20),
            ("intermediate_size", self.intermediate_size, 1 << 22),
            ("num_hidden_layers", self.num_hidden_layers, 1 << 12),
            ("num_attention_heads", self.num_attention_heads, 1 << 12),
            ("num_key_value_heads", self.num_key_value_heads, 1 << 12),
            ("head_dim", self.head_dim, 1 << 12),
            ("max_position_embeddings", self.max_position_embeddings, 1 << 31),
        ] {
            if v == 0 {
                return bad(format!("{name} must be positive"));
            }
            if v > most {
                return bad(format!("{name} ({v}) is larger than any model's (at most {most})"));
            }
        }
        if self.num_attention_heads % self.num_key_value_heads != 0 {
            return bad(format!(
                "num_attention_heads ({}) is not a multiple of num_key_value_heads ({})",
                self.num_attention_heads, self.num_key_value_heads
            ));
        }
        if self.head_dim % 2 != 0 {
            return bad(format!("head_dim ({}) must be even for RoPE", self.head_dim));
        }
        let ok = |x: f64| x > 0.0 && x.is_finite();
        if !(ok(self.rope_theta) && self.rms_norm_eps > 0.0 && self.rms_norm_eps < 1.0) {
            return bad(format!("rope_theta ({}) must be positive and finite, rms_norm_eps ({}) in (0, 1)", self.rope_theta, self.rms_norm_eps));
        }
        if let Some(r) = &self.rope_scaling {
            if !ok(r.factor) || !ok(r.low_freq_factor) || !ok(r.high_freq_factor) || r.original_max_position_embeddings == 0 {
                return bad(format!("rope_scaling {r:?}: factors must be positive and finite"));
            }
        }
        Ok(())
    }

    /// Published shapes for synthetic (random-weight) speed runs: `qwen2.5-coder-1.5b`,
    /// `qwen2.5-coder-0.5b`, `llama3-8b`, `llama3-70b`.
    pub fn preset(name: &str) -> Result<Self> {
        let (arch, vocab, h, ffn, layers, nh, nkv, theta, bias, tie) = match name {
            "qwen2.5-coder-1.5b" => ("qwen2", 151_936, 1536, 8960, 28, 12, 2, 1e6, true, false),
            "qwen2.5-coder-0.5b" => ("qwen2", 151_936, 896, 4864, 24, 14, 2, 1e6, true, true),
            "llama3-8b" => ("llama", 128_256, 4096, 14_336, 32, 32, 8, 5e5, false, false),
            "llama3-70b" => ("llama", 128_256, 8192, 28_672, 80, 64, 8, 5e5, false, false),
            other => {
                return Err(Error::Setting(format!(
                    "unknown shape {other:?} (known: qwen2.5-coder-1.5b, qwen2.5-coder-0.5b, llama3-8b, llama3-70b)"
                )))
            }
        };
        Ok(LlamaConfig {
            arch: arch.into(),
            vocab_size: vocab,
            hidden_size: h,
            intermediate_size: ffn,
            num_hidden_layers: layers,
            num_attention_heads: nh,
            num_key_value_heads: nkv,
            head_dim: h / nh,
            rms_norm_eps: 1e-6,
            rope_theta: theta,
            rope_scaling: None,
            max_position_embeddings: 32_768,
            attention_bias: bias,
            tie_word_embeddings: tie,
            bos_token_id: None,
            eos_token_ids: vec![],
        })
    }

    /// Parse a Hugging Face `config.json`. Accepts both the transformers 4.x layout (`rope_theta`,
    /// `rope_scaling`) and the 5.x layout (`rope_parameters` holding `rope_theta` and the scaling).
    pub fn from_hf_json(text: &str) -> Result<Self> {
        let v: Value = serde_json::from_str(text).map_err(|e| Error::Config(format!("config.json: {e}")))?;
        let raw: HfConfig =
            serde_json::from_value(v.clone()).map_err(|e| Error::Config(format!("config.json: {e}")))?;
        let arch = raw.model_type.clone().unwrap_or_else(|| "llama".into());
        if !matches!(arch.as_str(), "llama" | "qwen2" | "mistral") {
            return Err(Error::Unsupported(format!("model_type {arch:?} (supported: llama, qwen2, mistral)")));
        }
        let num_key_value_heads = raw.num_key_value_heads.unwrap_or(raw.num_attention_heads);
        if raw.num_attention_heads == 0 {
            return Err(Error::Config("num_attention_heads must be positive".into()));
        }
        let head_dim = raw.head_dim.unwrap_or(raw.hidden_size / raw.num_attention_heads);
        if raw.head_dim.is_none() && raw.hidden_size % raw.num_attention_heads != 0 {
            return Err(Error::Config(format!(
                "hidden_size ({}) is not divisible by num_attention_heads ({})",
                raw.hidden_size, raw.num_attention_heads
            )));
        }
        // RoPE: 5.x nests everything under rope_parameters; 4.x has rope_theta + rope_scaling.
        let rope_params = v.get("rope_parameters").filter(|p| p.is_object());
        let rope_theta = rope_params
            .and_then(|p| p.get("rope_theta"))
            .and_then(Value::as_f64)
            .or(raw.rope_theta)
            .unwrap_or(10_000.0);
        let scaling = rope_params.or(v.get("rope_scaling").filter(|s| s.is_object()));
        let rope_scaling = match scaling {
            Some(s) => parse_rope_scaling(s)?,
            None => None,
        };
        let eos_token_ids = match &raw.eos_token_id {
            Some(Value::Number(n)) => vec![n.as_u64().unwrap_or(0) as u32],
            Some(Value::Array(a)) => a.iter().filter_map(Value::as_u64).map(|x| x as u32).collect(),
            _ => vec![],
        };
        let cfg = LlamaConfig {
            attention_bias: raw.attention_bias.unwrap_or(arch == "qwen2"),
            arch,
            vocab_size: raw.vocab_size,
            hidden_size: raw.hidden_size,
            intermediate_size: raw.intermediate_size,
            num_hidden_layers: raw.num_hidden_layers,
            num_attention_heads: raw.num_attention_heads,
            num_key_value_heads,
            head_dim,
            rms_norm_eps: raw.rms_norm_eps.unwrap_or(1e-6),
            rope_theta,
            rope_scaling,
            max_position_embeddings: raw.max_position_embeddings.unwrap_or(4096).min(sliding_window(&v).unwrap_or(usize::MAX)),
            tie_word_embeddings: raw.tie_word_embeddings.unwrap_or(false),
            bos_token_id: raw.bos_token_id,
            eos_token_ids,
        };
        cfg.validate()?;
        Ok(cfg)
    }
}

/// The attention window of a sliding-window model (Mistral 7B v0.1: 4096), where it is in force
/// (Qwen2 configs name a window but turn it off with `use_sliding_window: false`). Attention over a
/// window equals full attention while the context fits in it, so the usable context is capped at
/// the window: a longer prompt is refused as beyond the context, never attended to wrongly.
fn sliding_window(v: &Value) -> Option<usize> {
    if v.get("use_sliding_window").and_then(Value::as_bool) == Some(false) {
        return None;
    }
    v.get("sliding_window").and_then(Value::as_u64).filter(|&w| w > 0).map(|w| w as usize)
}

fn parse_rope_scaling(s: &Value) -> Result<Option<Llama3RopeScaling>> {
    let kind = s.get("rope_type").or(s.get("type")).and_then(Value::as_str).unwrap_or("default");
    match kind {
        "default" => Ok(None),
        "llama3" => {
            let num = |k: &str| {
                s.get(k).and_then(Value::as_f64).ok_or_else(|| Error::Config(format!("rope scaling: missing {k}")))
            };
            Ok(Some(Llama3RopeScaling {
                factor: num("factor")?,
                low_freq_factor: num("low_freq_factor")?,
                high_freq_factor: num("high_freq_factor")?,
                original_max_position_embeddings: num("original_max_position_embeddings")? as usize,
            }))
        }
        other => Err(Error::Unsupported(format!("rope scaling type {other:?} (supported: default, llama3)"))),
    }
}

#[derive(Deserialize)]
struct HfConfig {
    model_type: Option<String>,
    vocab_size: usize,
    hidden_size: usize,
    intermediate_size: usize,
    num_hidden_layers: usize,
    num_attention_heads: usize,
    num_key_value_heads: Option<usize>,
    head_dim: Option<usize>,
    rms_norm_eps: Option<f64>,
    rope_theta: Option<f64>,
    max_position_embeddings: Option<usize>,
    attention_bias: Option<bool>,
    tie_word_embeddings: Option<bool>,
    bos_token_id: Option<u32>,
    eos_token_id: Option<Value>,
}

#[cfg(test)]
mod tests {
    use super::*;

    const OLD: &str = r#"{"model_type":"llama","vocab_size":128,"hidden_size":64,"intermediate_size":96,
        "num_hidden_layers":2,"num_attention_heads":4,"num_key_value_heads":2,"rms_norm_eps":1e-5,
        "rope_theta":500000.0,"rope_scaling":{"rope_type":"llama3","factor":8.0,"low_freq_factor":1.0,
        "high_freq_factor":4.0,"original_max_position_embeddings":64},"max_position_embeddings":256,
        "tie_word_embeddings":false,"eos_token_id":[5,6]}"#;
    const NEW: &str = r#"{"model_type":"llama","vocab_size":128,"hidden_size":64,"intermediate_size":96,
        "num_hidden_layers":2,"num_attention_heads":4,"num_key_value_heads":2,"rms_norm_eps":1e-5,
        "rope_parameters":{"rope_type":"llama3","rope_theta":500000.0,"factor":8.0,"low_freq_factor":1.0,
        "high_freq_factor":4.0,"original_max_position_embeddings":64},"max_position_embeddings":256,
        "tie_word_embeddings":false,"eos_token_id":[5,6]}"#;

    #[test]
    fn old_and_new_rope_fields_agree() {
        let a = LlamaConfig::from_hf_json(OLD).unwrap();
        let b = LlamaConfig::from_hf_json(NEW).unwrap();
        assert_eq!(a, b);
        assert_eq!(a.rope_theta, 500000.0);
        assert_eq!(a.rope_scaling.as_ref().unwrap().factor, 8.0);
        assert_eq!(a.head_dim, 16);
        assert_eq!(a.eos_token_ids, vec![5, 6]);
    }

    #[test]
    fn inconsistent_heads_are_rejected() {
        let bad = OLD.replace(r#""num_key_value_heads":2"#, r#""num_key_value_heads":3"#);
        let err = LlamaConfig::from_hf_json(&bad).unwrap_err().to_string();
        assert!(err.contains("not a multiple of num_key_value_heads"), "{err}");
        let bad = OLD.replace(r#""hidden_size":64"#, r#""hidden_size":66"#);
        let err = LlamaConfig::from_hf_json(&bad).unwrap_err().to_string();
        assert!(err.contains("not divisible"), "{err}");
    }

    /// A sliding-window model's context stops at its window (exact there); a window turned off or
    /// null changes nothing.
    #[test]
    fn a_sliding_window_caps_the_context() {
        let with = |fields: &str| LlamaConfig::from_hf_json(&OLD.replace(r#""model_type":"llama""#, fields)).unwrap().max_position_embeddings;
        let full = with(r#""model_type":"mistral""#);
        assert_eq!(with(r#""model_type":"mistral","sliding_window":32"#), 32.min(full));
        assert_eq!(with(r#""model_type":"mistral","sliding_window":null"#), full);
        assert_eq!(with(r#""model_type":"mistral","sliding_window":32,"use_sliding_window":false"#), full);
    }

    /// Sizes no model has, and settings the forward cannot use, are refused before anything is
    /// allocated from them (a fuzzed config with 2^64 - 1 layers once overflowed a capacity).
    #[test]
    fn absurd_sizes_and_settings_are_rejected() {
        let mut c = LlamaConfig::from_hf_json(OLD).unwrap();
        c.num_hidden_layers = usize::MAX;
        assert!(c.validate().unwrap_err().to_string().contains("num_hidden_layers"));
        let mut c = LlamaConfig::from_hf_json(OLD).unwrap();
        c.vocab_size = 1 << 40;
        assert!(c.validate().unwrap_err().to_string().contains("vocab_size"));
        let mut c = LlamaConfig::from_hf_json(OLD).unwrap();
        c.rope_theta = f64::INFINITY;
        assert!(c.validate().unwrap_err().to_string().contains("rope_theta"));
        let mut c = LlamaConfig::from_hf_json(OLD).unwrap();
        c.rms_norm_eps = f64::NAN;
        assert!(c.validate().is_err());
        let mut c = LlamaConfig::from_hf_json(OLD).unwrap();
        c.rope_scaling.as_mut().unwrap().factor = -1.0;
        assert!(c.validate().unwrap_err().to_string().contains("rope_scaling"));
    }
}

//! Writing a quantized model as a Hugging Face style directory: `model.safetensors` with the int4
//! layers in the GPTQ v1 layout (`qweight`, `qzeros`, `scales`, `g_idx`), everything else in bf16,
//! `config.json` with a `quantization_config`, and the tokenizer files. AutoGPTQ-compatible tools
//! read it, and so does our loader (`loader::load_hf_dir`).

use std::path::Path;

use half::{bf16, f16};
use hierspec_kernels::int4::HostInt4;
use safetensors::tensor::{Dtype, TensorView};
use serde_json::{json, Value};

use crate::config::LlamaConfig;
use crate::error::{Error, Result};
use crate::nn::linear::transpose;
use crate::quantized::to_gptq;
use crate::tokenizer::{ChatTemplate, TextTokenizer};
use crate::weights::WeightSource;

/// What the writer records about the quantization.
#[derive(Debug, Clone)]
pub struct WriteSpec {
    pub group: usize,
    pub sym: bool,
    pub lm_head: bool,
    /// `rtn` or `gptq`, recorded in the config.
    pub method: String,
}

/// The names of a model's linear layers (without `.weight`), in file order.
pub fn linear_names(cfg: &LlamaConfig) -> Vec<String> {
    let mut v = Vec::new();
    for i in 0..cfg.num_hidden_layers {
        for p in ["self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "self_attn.o_proj", "mlp.gate_proj", "mlp.up_proj", "mlp.down_proj"] {
            v.push(format!("model.layers.{i}.{p}"));
        }
    }
    v
}

/// A tensor ready to be written.
pub struct Out {
    pub name: String,
    pub dtype: Dtype,
    pub shape: Vec<usize>,
    pub bytes: Vec<u8>,
}

/// Float storage type of written weights.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StoreDtype {
    F32,
    Bf16,
}

impl Out {
    pub fn float(name: &str, (v, shape): (Vec<f32>, Vec<usize>), dtype: StoreDtype) -> Self {
        match dtype {
            StoreDtype::Bf16 => bf16_tensor(name, (v, shape)),
            StoreDtype::F32 => Out { name: name.into(), dtype: Dtype::F32, shape, bytes: v.iter().flat_map(|x| x.to_le_bytes()).collect() },
        }
    }
}

fn bf16_tensor(name: &str, (v, shape): (Vec<f32>, Vec<usize>)) -> Out {
    Out { name: name.into(), dtype: Dtype::BF16, shape, bytes: v.iter().flat_map(|x| bf16::from_f32(*x).to_le_bytes()).collect() }
}

/// Room left in each shard for its JSON header.
const HEADER_ROOM: usize = 64 << 10;

/// Write `tensors` to `dir` in files of at most `max_bytes`: `model.safetensors` when one file
/// suffices, else `model-0000i-of-0000n.safetensors` plus the Hugging Face index. A tensor bigger
/// than a file is split along its first dimension into `NAME.part0`, `NAME.part1`, ... which
/// `SafetensorsSource` joins back (other readers see the parts).
pub fn write_sharded(dir: &Path, tensors: Vec<Out>, max_bytes: usize) -> Result<()> {
    if max_bytes <= 2 * HEADER_ROOM {
        return Err(Error::Setting(format!("shard size {max_bytes} bytes is too small")));
    }
    let budget = max_bytes - HEADER_ROOM;
    let mut pieces: Vec<Out> = Vec::new();
    for t in tensors {
        if t.bytes.len() <= budget || t.shape.is_empty() {
            pieces.push(t);
            continue;
        }
        let row = t.bytes.len() / t.shape[0].max(1);
        let rows_per = (budget / row.max(1)).max(1);
        for (i, start) in (0..t.shape[0]).step_by(rows_per).enumerate() {
            let end = (start + rows_per).min(t.shape[0]);
            let mut shape = t.shape.clone();
            shape[0] = end - start;
            pieces.push(Out { name: format!("{}.part{i}", t.name), dtype: t.dtype, shape, bytes: t.bytes[start * row..end * row].to_vec() });
        }
    }
    let mut files: Vec<Vec<Out>> = vec![Vec::new()];
    let mut used = 0;
    for p in pieces {
        if used + p.bytes.len() > budget && !files.last().expect("one").is_empty() {
            files.push(Vec::new());
            used = 0;
        }
        used += p.bytes.len();
        files.last_mut().expect("one").push(p);
    }
    std::fs::create_dir_all(dir).map_err(|e| Error::io(dir, e))?;
    let n = files.len();
    let mut weight_map = serde_json::Map::new();
    let mut total = 0usize;
    for (i, group) in files.iter().enumerate() {
        let name = if n == 1 { "model.safetensors".to_string() } else { format!("model-{:05}-of-{n:05}.safetensors", i + 1) };
        let views: Vec<(String, TensorView)> = group
            .iter()
            .map(|t| {
                weight_map.insert(t.name.clone(), json!(name));
                total += t.bytes.len();
                let view = TensorView::new(t.dtype, t.shape.clone(), &t.bytes).map_err(|e| Error::Safetensors(format!("{}: {e}", t.name)))?;
                Ok((t.name.clone(), view))
            })
            .collect::<Result<_>>()?;
        let path = dir.join(&name);
        let meta = std::collections::HashMap::from([("format".to_string(), "pt".to_string())]);
        safetensors::serialize_to_file(views, Some(meta), &path).map_err(|e| Error::Safetensors(format!("{}: {e}", path.display())))?;
    }
    let index = dir.join("model.safetensors.index.json");
    if n > 1 {
        write_json(&index, &json!({ "metadata": { "total_size": total }, "weight_map": weight_map }))?;
    } else if index.exists() {
        std::fs::remove_file(&index).map_err(|e| Error::io(&index, e))?;
    }
    Ok(())
}

fn i32_tensor(name: String, v: &[i32], shape: Vec<usize>) -> Out {
    Out { name, dtype: Dtype::I32, shape, bytes: v.iter().flat_map(|x| x.to_le_bytes()).collect() }
}

/// Write `src` (config `cfg`) to `out`, quantizing every decoder linear layer (and lm_head when
/// `spec.lm_head`) with `quantize(name, w [in, out] row-major, in, out)`. `progress(done, total)`.
pub fn write_quantized(
    src: &dyn WeightSource,
    cfg: &LlamaConfig,
    tokenizer: &TextTokenizer,
    out: &Path,
    spec: &WriteSpec,
    mut quantize: impl FnMut(&str, &[f32], usize, usize) -> Result<HostInt4>,
    mut progress: impl FnMut(usize, usize),
) -> Result<()> {
    std::fs::create_dir_all(out).map_err(|e| Error::io(out, e))?;
    let mut tensors: Vec<Out> = Vec::new();
    let mut linears = linear_names(cfg);
    let separate_head = !cfg.tie_word_embeddings && src.contains("lm_head.weight");
    if spec.lm_head && separate_head {
        linears.push("lm_head".into());
    }
    let total = linears.len();
    for (i, name) in linears.iter().enumerate() {
        let (w, shape) = src.tensor(&format!("{name}.weight"))?;
        let [d_out, d_in] = shape[..] else { return Err(Error::Shape { name: format!("{name}.weight"), expected: vec![0, 0], found: shape }) };
        let h = quantize(name, &transpose(&w, d_out, d_in), d_in, d_out)?;
        let g = to_gptq(name, &h)?;
        let (groups, wpr) = (d_in / h.group, d_out.div_ceil(8));
        tensors.push(i32_tensor(format!("{name}.qweight"), &g.qweight, vec![d_in.div_ceil(8), d_out]));
        tensors.push(i32_tensor(format!("{name}.qzeros"), &g.qzeros, vec![groups, wpr]));
        tensors.push(i32_tensor(format!("{name}.g_idx"), &g.g_idx, vec![d_in]));
        tensors.push(Out {
            name: format!("{name}.scales"),
            dtype: Dtype::F16,
            shape: vec![groups, d_out],
            bytes: g.scales.iter().flat_map(|x| f16::from_f32(*x).to_le_bytes()).collect(),
        });
        let bias = format!("{name}.bias");
        if src.contains(&bias) {
            tensors.push(bf16_tensor(&bias, src.tensor(&bias)?));
        }
        progress(i + 1, total);
    }
    let mut dense = vec!["model.embed_tokens.weight".to_string(), "model.norm.weight".to_string()];
    for i in 0..cfg.num_hidden_layers {
        dense.push(format!("model.layers.{i}.input_layernorm.weight"));
        dense.push(format!("model.layers.{i}.post_attention_layernorm.weight"));
    }
    if separate_head && !spec.lm_head {
        dense.push("lm_head.weight".into());
    }
    for name in &dense {
        tensors.push(bf16_tensor(name, src.tensor(name)?));
    }

    let views: Vec<(String, TensorView)> = tensors
        .iter()
        .map(|t| {
            let view = TensorView::new(t.dtype, t.shape.clone(), &t.bytes).map_err(|e| Error::Safetensors(format!("{}: {e}", t.name)))?;
            Ok((t.name.clone(), view))
        })
        .collect::<Result<_>>()?;
    let path = out.join("model.safetensors");
    let meta = std::collections::HashMap::from([("format".to_string(), "pt".to_string())]);
    safetensors::serialize_to_file(views, Some(meta), &path).map_err(|e| Error::Safetensors(format!("{}: {e}", path.display())))?;

    let mut config = hf_config(cfg);
    config["torch_dtype"] = json!("bfloat16");
    config["quantization_config"] = json!({
        "quant_method": "gptq",
        "bits": 4,
        "group_size": spec.group,
        "sym": spec.sym,
        "desc_act": false,
        "checkpoint_format": "gptq",
        "lm_head": spec.lm_head && separate_head,
        "quantizer": format!("hierspec-{}", spec.method),
    });
    write_json(&out.join("config.json"), &config)?;
    write_tokenizer(tokenizer, cfg, out)
}

/// config.json in the transformers 4.x layout for `cfg`.
pub fn hf_config(cfg: &LlamaConfig) -> Value {
    let (arch, class) = match cfg.arch.as_str() {
        "qwen2" => ("qwen2", "Qwen2ForCausalLM"),
        "mistral" => ("mistral", "MistralForCausalLM"),
        _ => ("llama", "LlamaForCausalLM"),
    };
    let mut v = json!({
        "architectures": [class],
        "model_type": arch,
        "vocab_size": cfg.vocab_size,
        "hidden_size": cfg.hidden_size,
        "intermediate_size": cfg.intermediate_size,
        "num_hidden_layers": cfg.num_hidden_layers,
        "num_attention_heads": cfg.num_attention_heads,
        "num_key_value_heads": cfg.num_key_value_heads,
        "head_dim": cfg.head_dim,
        "rms_norm_eps": cfg.rms_norm_eps,
        "rope_theta": cfg.rope_theta,
        "max_position_embeddings": cfg.max_position_embeddings,
        "attention_bias": cfg.attention_bias,
        "tie_word_embeddings": cfg.tie_word_embeddings,
        "hidden_act": "silu",
    });
    if let Some(b) = cfg.bos_token_id {
        v["bos_token_id"] = json!(b);
    }
    if !cfg.eos_token_ids.is_empty() {
        v["eos_token_id"] = json!(cfg.eos_token_ids);
    }
    if let Some(s) = &cfg.rope_scaling {
        v["rope_scaling"] = json!({
            "rope_type": "llama3",
            "factor": s.factor,
            "low_freq_factor": s.low_freq_factor,
            "high_freq_factor": s.high_freq_factor,
            "original_max_position_embeddings": s.original_max_position_embeddings,
        });
    }
    v
}

/// tokenizer.json, tokenizer_config.json (a chat template our detector and transformers read) and
/// generation_config.json (the stop ids).
pub fn write_tokenizer(tok: &TextTokenizer, cfg: &LlamaConfig, out: &Path) -> Result<()> {
    let path = out.join("tokenizer.json");
    tok.inner.save(&path, false).map_err(|e| Error::Tokenizer(format!("{}: {e}", path.display())))?;
    let template = match &tok.chat_template {
        Some(ChatTemplate::ChatMl { default_system }) => Some(format!(
            "{{% if messages[0]['role'] != 'system' %}}{}{{% endif %}}{{% for message in messages %}}<|im_start|>{{{{ message['role'] }}}}\n{{{{ message['content'] }}}}<|im_end|>\n{{% endfor %}}{{% if add_generation_prompt %}}<|im_start|>assistant\n{{% endif %}}",
            default_system.as_ref().map(|s| format!("<|im_start|>system\n{s}<|im_end|>\n")).unwrap_or_default()
        )),
        Some(ChatTemplate::Llama3) => Some(
            "<|begin_of_text|>{% for message in messages %}<|start_header_id|>{{ message['role'] }}<|end_header_id|>\n\n{{ message['content'] }}<|eot_id|>{% endfor %}{% if add_generation_prompt %}<|start_header_id|>assistant<|end_header_id|>\n\n{% endif %}".to_string(),
        ),
        None => None,
    };
    let eos_name = tok.eos_ids.first().and_then(|&id| tok.inner.id_to_token(id));
    write_json(&out.join("tokenizer_config.json"), &json!({ "chat_template": template, "eos_token": eos_name }))?;
    let mut gen = json!({ "eos_token_id": tok.eos_ids });
    if let Some(b) = cfg.bos_token_id {
        gen["bos_token_id"] = json!(b);
    }
    write_json(&out.join("generation_config.json"), &gen)
}

pub fn write_json(path: &Path, v: &Value) -> Result<()> {
    std::fs::write(path, serde_json::to_string_pretty(v).expect("json")).map_err(|e| Error::io(path, e))
}

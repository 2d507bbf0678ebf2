//! The Llama-family decoder (Llama 2/3/3.1, Qwen2 with q/k/v biases, SmolLM2): one definition,
//! driven by `LlamaConfig`. The forward pass takes explicit position ids and an optional mask over
//! (cache rows + new rows), so the same code serves prefill, decode, and tree / sequence verification.

use burn::module::{Module, Param};
use burn::tensor::activation::{silu, softmax};
use burn::tensor::{backend::Backend, DType, Distribution, Int, Tensor, TensorData};

use crate::cache::{KvCache, LayerKv};
use crate::config::LlamaConfig;
use crate::error::{Error, Result};
use crate::nn::linear::check_shape;
use crate::nn::matmul::matmul;
use crate::nn::{Linear, RmsNorm, Rope};
use crate::weights::WeightSource;

#[derive(Module, Debug)]
pub struct Attention<B: Backend> {
    pub q_proj: Linear<B>,
    pub k_proj: Linear<B>,
    pub v_proj: Linear<B>,
    pub o_proj: Linear<B>,
    pub n_heads: usize,
    pub n_kv_heads: usize,
    pub head_dim: usize,
}

#[derive(Module, Debug)]
pub struct Mlp<B: Backend> {
    pub gate_proj: Linear<B>,
    pub up_proj: Linear<B>,
    pub down_proj: Linear<B>,
}

#[derive(Module, Debug)]
pub struct DecoderLayer<B: Backend> {
    pub input_layernorm: RmsNorm<B>,
    pub self_attn: Attention<B>,
    pub post_attention_layernorm: RmsNorm<B>,
    pub mlp: Mlp<B>,
}

#[derive(Module, Debug)]
pub struct Llama<B: Backend> {
    pub embed_tokens: Param<Tensor<B, 2>>,
    pub layers: Vec<DecoderLayer<B>>,
    pub norm: RmsNorm<B>,
    /// [hidden, vocab]; for tied embeddings a transposed copy of `embed_tokens`.
    pub lm_head: Linear<B>,
    pub rope: Rope<B>,
}

/// Which positions get logits: prefill only needs the last one, verification needs all.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogitsFor {
    All,
    Last,
}

pub struct ForwardOutput<B: Backend> {
    /// [batch, n or 1, vocab]
    pub logits: Tensor<B, 3>,
    /// Last hidden state after the final norm: [batch, n, hidden] (EAGLE's feature).
    pub hidden: Tensor<B, 3>,
}

/// Additive attention bias over (cache rows + new rows): 0 where a new row may attend, -inf-like where
/// it may not. `None` in `forward` means plain causal attention of the new rows after the whole cache.
pub struct AttnMask<B: Backend> {
    /// [n_new, cache_len + n_new], f32
    pub bias: Tensor<B, 2>,
}

const MASKED: f32 = -1.0e30;

impl<B: Backend> AttnMask<B> {
    /// `allowed[i * n + j]`: new row i may see new row j. Every cache row before the new ones is visible.
    pub fn from_new_rows(cache_len: usize, n: usize, allowed: &[bool], device: &B::Device) -> Self {
        assert_eq!(allowed.len(), n * n, "mask must be n x n");
        let t = cache_len + n;
        let mut bias = vec![0f32; n * t];
        for i in 0..n {
            for j in 0..n {
                if !allowed[i * n + j] {
                    bias[i * t + cache_len + j] = MASKED;
                }
            }
        }
        Self { bias: Tensor::from_data(TensorData::new(bias, [n, t]), (device, DType::F32)) }
    }

    pub fn causal(cache_len: usize, n: usize, device: &B::Device) -> Self {
        let allowed: Vec<bool> = (0..n * n).map(|k| k % n <= k / n).collect();
        Self::from_new_rows(cache_len, n, &allowed, device)
    }
}

/// Where the new rows of one forward go, shared by every layer: their RoPE positions, the cache
/// length L they are written after, and the mask over (cache + new rows). `mask: None` is only valid
/// for a single new row (it sees every cached row and itself).
pub struct Step<'a, B: Backend> {
    pub rope: &'a Rope<B>,
    pub positions: Tensor<B, 1, Int>,
    pub cache_len: usize,
    pub mask: Option<&'a AttnMask<B>>,
}

impl<B: Backend> Attention<B> {
    /// x: [b, n, hidden]. Writes the new K/V at cache rows [L, L + n) and attends over rows [0, L + n).
    pub fn forward(&self, x: Tensor<B, 3>, step: &Step<B>, kv: &mut LayerKv<B>) -> Tensor<B, 3> {
        let [b, n, _] = x.dims();
        let (nh, nkv, hd) = (self.n_heads, self.n_kv_heads, self.head_dim);
        let heads = |t: Tensor<B, 3>, h: usize| t.reshape([b, n, h, hd]).swap_dims(1, 2);
        let q = heads(self.q_proj.forward(x.clone()), nh);
        let k = heads(self.k_proj.forward(x.clone()), nkv);
        let v = heads(self.v_proj.forward(x), nkv);

        let q = step.rope.forward(q, step.positions.clone());
        let k = step.rope.forward(k, step.positions.clone());
        let (k, v) = kv.write(step.cache_len, k, v);
        let t = step.cache_len + n;

        // GQA without repeating K/V: the `group` query heads sharing a KV head become extra rows.
        let group = nh / nkv;
        let q = q.reshape([b, nkv, group * n, hd]);
        let scores = matmul(q, k.swap_dims(2, 3)).cast(DType::F32) * (1.0 / (hd as f64).sqrt());
        let scores = match step.mask {
            Some(m) => (scores.reshape([b, nkv, group, n, t]) + m.bias.clone().reshape([1, 1, 1, n, t]))
                .reshape([b, nkv, group * n, t]),
            None => scores,
        };
        let probs = softmax(scores, 3).cast(v.dtype());
        let out = matmul(probs, v).reshape([b, nh, n, hd]).swap_dims(1, 2).reshape([b, n, nh * hd]);
        self.o_proj.forward(out)
    }
}

impl<B: Backend> Mlp<B> {
    pub fn forward(&self, x: Tensor<B, 3>) -> Tensor<B, 3> {
        self.down_proj.forward(silu(self.gate_proj.forward(x.clone())) * self.up_proj.forward(x))
    }
}

impl<B: Backend> DecoderLayer<B> {
    pub fn forward(&self, x: Tensor<B, 3>, step: &Step<B>, kv: &mut LayerKv<B>) -> Tensor<B, 3> {
        let h = x.clone() + self.self_attn.forward(self.input_layernorm.forward(x), step, kv);
        h.clone() + self.mlp.forward(self.post_attention_layernorm.forward(h))
    }
}

impl<B: Backend> Llama<B> {
    /// Run `tokens` ([batch, n]) at `positions` ([n]) after the `cache.len()` cached rows.
    pub fn forward(
        &self,
        tokens: Tensor<B, 2, Int>,
        positions: Tensor<B, 1, Int>,
        cache: &mut KvCache<B>,
        mask: Option<&AttnMask<B>>,
        logits_for: LogitsFor,
    ) -> ForwardOutput<B> {
        let [b, n] = tokens.dims();
        let cache_len = cache.len();
        assert!(cache_len + n <= cache.capacity(), "KV cache overflow: {cache_len} + {n} > {}", cache.capacity());
        let hidden_size = self.embed_tokens.dims()[1];
        let causal;
        let mask = match mask {
            None if n > 1 => {
                causal = AttnMask::causal(cache_len, n, &tokens.device());
                Some(&causal)
            }
            m => m,
        };
        let mut x = self.embed_tokens.val().select(0, tokens.reshape([b * n])).reshape([b, n, hidden_size]);
        let step = Step { rope: &self.rope, positions, cache_len, mask };
        for (layer, kv) in self.layers.iter().zip(cache.layers.iter_mut()) {
            x = layer.forward(x, &step, kv);
        }
        cache.advance(n);
        let hidden = self.norm.forward(x);
        let last = match logits_for {
            LogitsFor::All => hidden.clone(),
            LogitsFor::Last => hidden.clone().slice([0..b, n - 1..n, 0..hidden_size]),
        };
        ForwardOutput { logits: self.lm_head.forward(last), hidden }
    }

    /// Convenience: positions [start, start + n) as a device tensor.
    pub fn positions(start: usize, n: usize, device: &B::Device) -> Tensor<B, 1, Int> {
        Tensor::arange(start as i64..(start + n) as i64, device)
    }

    pub fn max_positions(&self) -> usize {
        self.rope.max_positions()
    }

    /// A model with random weights at the config's shapes, made on the device from `seed`.
    pub fn random(cfg: &LlamaConfig, max_positions: usize, seed: u64, device: &B::Device) -> Result<Self> {
        cfg.validate()?;
        B::seed(device, seed);
        let (h, hd, std) = (cfg.hidden_size, cfg.head_dim, 0.02);
        let (nh, nkv, ffn) = (cfg.num_attention_heads, cfg.num_key_value_heads, cfg.intermediate_size);
        let norm = || RmsNorm { weight: Param::from_tensor(Tensor::ones([h], device)), eps: cfg.rms_norm_eps };
        let layers = (0..cfg.num_hidden_layers)
            .map(|_| DecoderLayer {
                input_layernorm: norm(),
                self_attn: Attention {
                    q_proj: Linear::random(h, nh * hd, cfg.attention_bias, std, device),
                    k_proj: Linear::random(h, nkv * hd, cfg.attention_bias, std, device),
                    v_proj: Linear::random(h, nkv * hd, cfg.attention_bias, std, device),
                    o_proj: Linear::random(nh * hd, h, false, std, device),
                    n_heads: nh,
                    n_kv_heads: nkv,
                    head_dim: hd,
                },
                post_attention_layernorm: norm(),
                mlp: Mlp {
                    gate_proj: Linear::random(h, ffn, false, std, device),
                    up_proj: Linear::random(h, ffn, false, std, device),
                    down_proj: Linear::random(ffn, h, false, std, device),
                },
            })
            .collect();
        Ok(Self {
            embed_tokens: Param::from_tensor(Tensor::random([cfg.vocab_size, h], Distribution::Normal(0.0, std), device)),
            layers,
            norm: norm(),
            lm_head: Linear::random(h, cfg.vocab_size, false, std, device),
            rope: Rope::new(cfg, max_positions, device),
        })
    }

    /// Build from any weight source (HF names), checking every shape against the config.
    /// `max_positions` bounds the RoPE table (and so the usable context).
    pub fn load(cfg: &LlamaConfig, src: &dyn WeightSource, max_positions: usize, device: &B::Device) -> Result<Self> {
        cfg.validate()?;
        let (h, hd) = (cfg.hidden_size, cfg.head_dim);
        let (nh, nkv) = (cfg.num_attention_heads, cfg.num_key_value_heads);
        let linear = |name: &str, d_in: usize, d_out: usize, bias: bool| -> Result<Linear<B>> {
            let b = if bias { Some(src.tensor(&format!("{name}.bias"))?) } else { None };
            Linear::from_torch(name, src.tensor(&format!("{name}.weight"))?, b, d_in, d_out, device)
        };
        let norm = |name: &str| RmsNorm::from_weights(name, src.tensor(&format!("{name}.weight"))?, h, cfg.rms_norm_eps, device);

        let (emb, emb_shape) = src.tensor("model.embed_tokens.weight")?;
        check_shape("model.embed_tokens.weight", &emb_shape, &[cfg.vocab_size, h])?;
        let mut layers = Vec::with_capacity(cfg.num_hidden_layers);
        for i in 0..cfg.num_hidden_layers {
            let p = format!("model.layers.{i}");
            let bias = cfg.attention_bias;
            layers.push(DecoderLayer {
                input_layernorm: norm(&format!("{p}.input_layernorm"))?,
                self_attn: Attention {
                    q_proj: linear(&format!("{p}.self_attn.q_proj"), h, nh * hd, bias)?,
                    k_proj: linear(&format!("{p}.self_attn.k_proj"), h, nkv * hd, bias)?,
                    v_proj: linear(&format!("{p}.self_attn.v_proj"), h, nkv * hd, bias)?,
                    o_proj: linear(&format!("{p}.self_attn.o_proj"), nh * hd, h, false)?,
                    n_heads: nh,
                    n_kv_heads: nkv,
                    head_dim: hd,
                },
                post_attention_layernorm: norm(&format!("{p}.post_attention_layernorm"))?,
                mlp: Mlp {
                    gate_proj: linear(&format!("{p}.mlp.gate_proj"), h, cfg.intermediate_size, false)?,
                    up_proj: linear(&format!("{p}.mlp.up_proj"), h, cfg.intermediate_size, false)?,
                    down_proj: linear(&format!("{p}.mlp.down_proj"), cfg.intermediate_size, h, false)?,
                },
            });
        }
        let lm_head = if cfg.tie_word_embeddings {
            Linear::from_torch("lm_head", (emb.clone(), emb_shape), None, h, cfg.vocab_size, device)?
        } else if src.contains("lm_head.weight") {
            linear("lm_head", h, cfg.vocab_size, false)?
        } else {
            return Err(Error::MissingTensor("lm_head.weight (and tie_word_embeddings is false)".into()));
        };
        let embed_tokens = Tensor::from_data(TensorData::new(emb, [cfg.vocab_size, h]), device);
        Ok(Self {
            embed_tokens: Param::from_tensor(embed_tokens),
            layers,
            norm: norm("model.norm")?,
            lm_head,
            rope: Rope::new(cfg, max_positions, device),
        })
    }
}

//! The Llama-family decoder (Llama 2/3/3.1, Qwen2 with q/k/v biases, SmolLM2): one definition,
//! driven by `LlamaConfig`. The forward pass takes explicit position ids and an optional mask over
//! (cache rows + new rows), so the same code serves prefill, decode, and tree / sequence verification.

use burn::module::{Module, Param};
use burn::tensor::{Device, Distribution, Int, Tensor, TensorData};

use crate::cache::{KvCache, LayerKv};
use crate::config::LlamaConfig;
use crate::error::{Error, Result};
use crate::nn::linear::check_shape;
pub use hierspec_kernels::attention::AttnMask;
use hierspec_kernels::attention::attention_rows;
use hierspec_kernels::dense::SMALL_M_MAX;
use hierspec_kernels::fused::{swiglu, QkvLayout};
use hierspec_kernels::start::CacheStart;
use crate::nn::{Linear, QuantSpec, RmsNorm, Rope};
use crate::weights::WeightSource;

#[derive(Module, Debug)]
pub struct Attention {
    pub q_proj: Linear,
    pub k_proj: Linear,
    pub v_proj: Linear,
    pub o_proj: Linear,
    pub n_heads: usize,
    pub n_kv_heads: usize,
    pub head_dim: usize,
}

#[derive(Module, Debug)]
pub struct Mlp {
    pub gate_proj: Linear,
    pub up_proj: Linear,
    pub down_proj: Linear,
}

#[derive(Module, Debug)]
pub struct DecoderLayer {
    pub input_layernorm: RmsNorm,
    pub self_attn: Attention,
    pub post_attention_layernorm: RmsNorm,
    pub mlp: Mlp,
}

#[derive(Module, Debug)]
pub struct Llama {
    pub embed_tokens: Param<Tensor<2>>,
    pub layers: Vec<DecoderLayer>,
    pub norm: RmsNorm,
    /// [hidden, vocab]; for tied embeddings a transposed copy of `embed_tokens`.
    pub lm_head: Linear,
    pub rope: Rope,
}

/// Which positions get logits: prefill only needs the last one, verification needs all.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum LogitsFor {
    All,
    Last,
}

#[derive(Clone)]
pub struct ForwardOutput {
    /// [batch, n or 1, vocab]
    pub logits: Tensor<3>,
    /// Last hidden state after the final norm: [batch, n, hidden] (EAGLE's feature).
    pub hidden: Tensor<3>,
}

/// Where the new rows of one forward go, shared by every layer: their RoPE positions, the cache
/// length L they are written after (on the host and on the device), and the mask over (cache + new
/// rows). `mask: None` is only valid for a single new row (it sees every cached row and itself).
pub struct Step<'a> {
    pub rope: &'a Rope,
    pub positions: Tensor<1, Int>,
    pub start: CacheStart,
    pub mask: Option<&'a AttnMask>,
}

impl Attention {
    /// Build from `lin(name, d_in, d_out, bias)`, called for q_proj, k_proj, v_proj, o_proj in order.
    pub fn build(cfg: &LlamaConfig, mut lin: impl FnMut(&str, usize, usize, bool) -> Result<Linear>) -> Result<Self> {
        let (h, hd, nh, nkv) = (cfg.hidden_size, cfg.head_dim, cfg.num_attention_heads, cfg.num_key_value_heads);
        // q and k packed in RoPE pair order, so that the q|k|v product can rotate them itself.
        Ok(Self {
            q_proj: lin("q_proj", h, nh * hd, cfg.attention_bias)?.paired_for_rope(hd),
            k_proj: lin("k_proj", h, nkv * hd, cfg.attention_bias)?.paired_for_rope(hd),
            v_proj: lin("v_proj", h, nkv * hd, cfg.attention_bias)?,
            o_proj: lin("o_proj", nh * hd, h, false)?,
            n_heads: nh,
            n_kv_heads: nkv,
            head_dim: hd,
        })
    }

    /// The attention output before `o_proj`: [b, n, heads * head_dim] (o_proj's input), of x or of
    /// `norm(x)` (the norm folded into the q|k|v product where the kernel takes it).
    pub fn attend(&self, x: Tensor<3>, norm: Option<&RmsNorm>, step: &Step, kv: &mut LayerKv) -> Tensor<3> {
        let layout = QkvLayout { heads: self.n_heads, kv_heads: self.n_kv_heads, head_dim: self.head_dim };
        // q|k|v in one product; RoPE on q and k with k and v going straight into the cache (in the
        // product's epilogue on tensor cores).
        let parts = [self.q_proj.part(), self.k_proj.part(), self.v_proj.part()];
        let norm = norm.map(RmsNorm::pre_norm);
        let q = step.rope.qkv_product(x, norm.as_ref(), &parts, step.positions.clone(), layout, kv, &step.start);
        attention_rows(q, &kv.k, &kv.v, &step.start, step.mask)
    }
}

impl Mlp {
    /// Build from `lin(name, d_in, d_out, bias)`, called for gate_proj, up_proj, down_proj in order.
    pub fn build(cfg: &LlamaConfig, mut lin: impl FnMut(&str, usize, usize, bool) -> Result<Linear>) -> Result<Self> {
        let (h, ffn) = (cfg.hidden_size, cfg.intermediate_size);
        Ok(Self {
            gate_proj: lin("gate_proj", h, ffn, false)?,
            up_proj: lin("up_proj", h, ffn, false)?,
            down_proj: lin("down_proj", ffn, h, false)?,
        })
    }

    /// `residual + down(silu(gate(h)) * up(h))` with h = x or `norm(x)`: two launches on cubecl
    /// runtimes (the norm folded into gate|up where the kernel takes it).
    pub fn forward_add(&self, x: Tensor<3>, residual: Tensor<3>, norm: Option<&RmsNorm>) -> Tensor<3> {
        Linear::swiglu_mlp(&self.gate_proj, &self.up_proj, &self.down_proj, x, residual, norm)
    }

    /// gate(x) | up(x) side by side, [b, n, 2 ffn], in one product.
    pub fn gate_up(&self, x: Tensor<3>) -> Tensor<3> {
        Linear::forward_many(&[&self.gate_proj, &self.up_proj], x)
    }
}

/// The four inputs a decoder layer's linear layers read (GPTQ calibrates on each).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum LinearInput {
    /// The normed input of q_proj, k_proj, v_proj.
    Qkv,
    /// The attention output, o_proj's input.
    O,
    /// The normed input of gate_proj and up_proj.
    GateUp,
    /// silu(gate) * up, down_proj's input.
    Down,
}

impl DecoderLayer {
    pub fn forward(&self, x: Tensor<3>, step: &Step, kv: &mut LayerKv) -> Tensor<3> {
        self.forward_observed(x, step, kv, None)
    }

    /// The forward, showing `observe` (GPTQ calibration) the input of each group of linear layers.
    /// Without an observer down_proj stages silu(gate) * up itself; with one that input is
    /// materialized so it can be shown.
    pub fn forward_observed(
        &self,
        x: Tensor<3>,
        step: &Step,
        kv: &mut LayerKv,
        mut observe: Option<&mut dyn FnMut(LinearInput, &Tensor<3>)>,
    ) -> Tensor<3> {
        let observing = observe.is_some();
        let mut see = |what: LinearInput, t: &Tensor<3>| {
            if let Some(o) = observe.as_mut() {
                o(what, t)
            }
        };
        if !observing {
            // Both norms go into the products that read them (6 launches per layer on tensor cores).
            let a = self.self_attn.attend(x.clone(), Some(&self.input_layernorm), step, kv);
            let x = self.self_attn.o_proj.forward_add(a, x);
            return self.mlp.forward_add(x.clone(), x, Some(&self.post_attention_layernorm));
        }
        let h = self.input_layernorm.forward(x.clone());
        see(LinearInput::Qkv, &h);
        let a = self.self_attn.attend(h, None, step, kv);
        see(LinearInput::O, &a);
        let x = self.self_attn.o_proj.forward_add(a, x);
        let h = self.post_attention_layernorm.forward(x.clone());
        see(LinearInput::GateUp, &h);
        let gu = self.mlp.gate_up(h);
        let [b, n, ffn2] = gu.dims();
        let m = swiglu(gu.reshape([b * n, ffn2])).reshape([b, n, ffn2 / 2]);
        see(LinearInput::Down, &m);
        self.mlp.down_proj.forward_add(m, x)
    }
}

impl Llama {
    /// Run `tokens` ([batch, n]) at `positions` ([n]) after the `cache.len()` cached rows.
    ///
    /// A long causal forward (a prompt, `mask: None`) runs in chunks of at most [`SMALL_M_MAX`] rows:
    /// on cubecl runtimes every product then takes the small-M kernels (one shape, no autotune, no
    /// dequantized copy of int4 weights) instead of burn's tiled matmul; everywhere it bounds the
    /// attention scores' memory.
    pub fn forward(
        &self,
        tokens: Tensor<2, Int>,
        positions: Tensor<1, Int>,
        cache: &mut KvCache,
        mask: Option<&AttnMask>,
        logits_for: LogitsFor,
    ) -> ForwardOutput {
        let [b, n] = tokens.dims();
        if mask.is_some() || n <= SMALL_M_MAX {
            return self.forward_rows(tokens, positions, cache, mask, logits_for);
        }
        // Each chunk computes the logits it is asked for (with `Last`, the earlier chunks' one row is
        // discarded: one lm_head row per 128 prompt rows).
        let mut outs: Vec<ForwardOutput> = Vec::new();
        for start in (0..n).step_by(SMALL_M_MAX) {
            let end = (start + SMALL_M_MAX).min(n);
            outs.push(self.forward_rows(tokens.clone().slice([0..b, start..end]), positions.clone().slice([start..end]), cache, None, logits_for));
        }
        let hidden = Tensor::cat(outs.iter().map(|o| o.hidden.clone()).collect(), 1);
        let logits = match logits_for {
            LogitsFor::Last => outs.pop().expect("one chunk").logits,
            LogitsFor::All => Tensor::cat(outs.into_iter().map(|o| o.logits).collect(), 1),
        };
        ForwardOutput { logits, hidden }
    }

    /// One forward over all `n` rows.
    fn forward_rows(
        &self,
        tokens: Tensor<2, Int>,
        positions: Tensor<1, Int>,
        cache: &mut KvCache,
        mask: Option<&AttnMask>,
        logits_for: LogitsFor,
    ) -> ForwardOutput {
        let n = tokens.dims()[1];
        let cache_len = cache.len();
        assert!(cache_len + n <= cache.capacity(), "KV cache overflow: {cache_len} + {n} > {}", cache.capacity());
        let causal = AttnMask::causal_unless_given(mask, cache_len, n, &tokens.device());
        let start = cache.start();
        let out = self.forward_at(tokens, positions, &start, &mut cache.layers, mask.or(causal.as_ref()), logits_for);
        cache.advance(n);
        out
    }

    /// The forward of `tokens` after the cache rows [0, `start`), writing each layer's new k and v at
    /// rows [start, start + n) of `layers`: [`Llama::forward`] without the cache bookkeeping, and
    /// without a host upload (`mask` is given whole, `None` only for one row). On cubecl devices every
    /// kernel reads the start row from `start`'s device buffer, so a captured graph of this call
    /// replays at any cache length of its attention segment count.
    pub fn forward_at(
        &self,
        tokens: Tensor<2, Int>,
        positions: Tensor<1, Int>,
        start: &CacheStart,
        layers: &mut [LayerKv],
        mask: Option<&AttnMask>,
        logits_for: LogitsFor,
    ) -> ForwardOutput {
        let [b, n] = tokens.dims();
        let hidden_size = self.embed_tokens.dims()[1];
        let mut x = self.embed(tokens);
        let step = Step { rope: &self.rope, positions, start: start.clone(), mask };
        for (layer, kv) in self.layers.iter().zip(layers.iter_mut()) {
            x = layer.forward(x, &step, kv);
        }
        let hidden = self.norm.forward(x);
        let last = match logits_for {
            LogitsFor::All => hidden.clone(),
            LogitsFor::Last => hidden.clone().slice([0..b, n - 1..n, 0..hidden_size]),
        };
        ForwardOutput { logits: self.lm_head.forward(last), hidden }
    }

    /// Token embeddings: [b, n] -> [b, n, hidden].
    pub fn embed(&self, tokens: Tensor<2, Int>) -> Tensor<3> {
        let [b, n] = tokens.dims();
        let h = self.embed_tokens.dims()[1];
        self.embed_tokens.val().select(0, tokens.reshape([b * n])).reshape([b, n, h])
    }

    /// Convenience: positions [start, start + n) as a device tensor.
    pub fn positions(start: usize, n: usize, device: &Device) -> Tensor<1, Int> {
        Tensor::arange(start as i64..(start + n) as i64, device)
    }

    /// Bytes of weights one decode step reads: every linear layer, the norms, one embedding row.
    pub fn weight_bytes_per_token(&self) -> usize {
        let elem = self.embed_tokens.val().dtype().size();
        let h = self.embed_tokens.dims()[1];
        let per_layer = |l: &DecoderLayer| {
            let a = &l.self_attn;
            let m = &l.mlp;
            [&a.q_proj, &a.k_proj, &a.v_proj, &a.o_proj, &m.gate_proj, &m.up_proj, &m.down_proj]
                .iter()
                .map(|x| x.weight_bytes())
                .sum::<usize>()
                + 2 * h * elem
        };
        self.layers.iter().map(per_layer).sum::<usize>() + self.lm_head.weight_bytes() + 2 * h * elem
    }

    pub fn max_positions(&self) -> usize {
        self.rope.max_positions()
    }

    /// A model with random weights at the config's shapes, made on the device from `seed`.
    pub fn random(cfg: &LlamaConfig, max_positions: usize, seed: u64, device: &Device) -> Result<Self> {
        Self::random_with(cfg, max_positions, seed, None, device)
    }

    /// As [`Llama::random`], with random int4 weights (W4A16) where `quant` says so.
    pub fn random_with(
        cfg: &LlamaConfig,
        max_positions: usize,
        seed: u64,
        quant: Option<&QuantSpec>,
        device: &Device,
    ) -> Result<Self> {
        cfg.validate()?;
        hierspec_kernels::memory::persistent::<_>(device, || Self::random_weights(cfg, max_positions, seed, quant, device))
    }

    fn random_weights(cfg: &LlamaConfig, max_positions: usize, seed: u64, quant: Option<&QuantSpec>, device: &Device) -> Result<Self> {
        device.seed(seed);
        let lin = |d_in: usize, d_out: usize, bias: bool, q: Option<&QuantSpec>| -> Result<Linear> {
            match q {
                Some(q) => Linear::random_int4(d_in, d_out, bias, q, device),
                None => Ok(Linear::random(d_in, d_out, bias, 0.02, device)),
            }
        };
        let head_quant = quant.filter(|q| q.lm_head);
        let (h, std) = (cfg.hidden_size, 0.02);
        let norm = || RmsNorm::ones(h, cfg.rms_norm_eps, device);
        let layers = (0..cfg.num_hidden_layers)
            .map(|_| {
                Ok(DecoderLayer {
                    input_layernorm: norm(),
                    self_attn: Attention::build(cfg, |_, i, o, b| lin(i, o, b, quant))?,
                    post_attention_layernorm: norm(),
                    mlp: Mlp::build(cfg, |_, i, o, b| lin(i, o, b, quant))?,
                })
            })
            .collect::<Result<Vec<_>>>()?;
        Ok(Self {
            embed_tokens: Param::from_tensor(Tensor::random([cfg.vocab_size, h], Distribution::Normal(0.0, std), device)),
            layers,
            norm: norm(),
            lm_head: lin(h, cfg.vocab_size, false, head_quant)?,
            rope: Rope::new(cfg, max_positions, device),
        })
    }

    /// Build from any weight source (HF names), checking every shape against the config.
    /// `max_positions` bounds the RoPE table (and so the usable context).
    pub fn load(cfg: &LlamaConfig, src: &dyn WeightSource, max_positions: usize, device: &Device) -> Result<Self> {
        Self::load_with(cfg, src, max_positions, None, device)
    }

    /// As [`Llama::load`], quantizing the decoder's linear layers (and lm_head if asked) to W4A16 with
    /// round-to-nearest when `quant` is given.
    pub fn load_with(
        cfg: &LlamaConfig,
        src: &dyn WeightSource,
        max_positions: usize,
        quant: Option<&QuantSpec>,
        device: &Device,
    ) -> Result<Self> {
        cfg.validate()?;
        // The weights in cubecl's persistent pool, away from the activations' pages (memory.rs).
        hierspec_kernels::memory::persistent::<_>(device, || Self::load_weights(cfg, src, max_positions, quant, device))
    }

    fn load_weights(cfg: &LlamaConfig, src: &dyn WeightSource, max_positions: usize, quant: Option<&QuantSpec>, device: &Device) -> Result<Self> {
        let h = cfg.hidden_size;
        let linear_q = |name: &str, d_in: usize, d_out: usize, bias: bool, quant: Option<&QuantSpec>| -> Result<Linear> {
            let b = if bias { Some(src.tensor(&format!("{name}.bias"))?) } else { None };
            // A dense lm_head stays dense unless asked (or stored int4 by the checkpoint).
            let int4_ok = quant.is_some() || name != "lm_head" || src.contains("lm_head.qweight");
            if let Some(t) = if int4_ok { src.int4(name)? } else { None } {
                return Linear::from_quant_tensor(name, t, b, (d_in, d_out), device);
            }
            let w = src.tensor(&format!("{name}.weight"))?;
            match quant {
                Some(q) => Linear::from_torch_rtn(name, w, b, (d_in, d_out), &sibling_spec(src, name, d_in, q), device),
                None => Linear::from_torch(name, w, b, d_in, d_out, device),
            }
        };
        let linear = |name: &str, d_in: usize, d_out: usize, bias: bool| linear_q(name, d_in, d_out, bias, quant);
        let head_quant = quant.filter(|q| q.lm_head);
        let norm = |name: &str| RmsNorm::from_weights(name, src.tensor(&format!("{name}.weight"))?, h, cfg.rms_norm_eps, device);

        let (emb, emb_shape) = src.tensor("model.embed_tokens.weight")?;
        check_shape("model.embed_tokens.weight", &emb_shape, &[cfg.vocab_size, h])?;
        let mut layers = Vec::with_capacity(cfg.num_hidden_layers);
        for i in 0..cfg.num_hidden_layers {
            let p = format!("model.layers.{i}");
            layers.push(DecoderLayer {
                input_layernorm: norm(&format!("{p}.input_layernorm"))?,
                self_attn: Attention::build(cfg, |n, i, o, b| linear(&format!("{p}.self_attn.{n}"), i, o, b))?,
                post_attention_layernorm: norm(&format!("{p}.post_attention_layernorm"))?,
                mlp: Mlp::build(cfg, |n, i, o, b| linear(&format!("{p}.mlp.{n}"), i, o, b))?,
            });
        }
        let lm_head = if cfg.tie_word_embeddings {
            let w = (emb.clone(), emb_shape);
            match head_quant {
                Some(q) => Linear::from_torch_rtn("lm_head", w, None, (h, cfg.vocab_size), q, device)?,
                None => Linear::from_torch("lm_head", w, None, h, cfg.vocab_size, device)?,
            }
        } else if src.contains("lm_head.weight") {
            linear_q("lm_head", h, cfg.vocab_size, false, head_quant)?
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

/// The RTN settings for `name` when the source stores some of the layers it is fused with (q|k|v,
/// gate|up) as int4 already: their group, so that the fused product keeps one group and runs as one
/// launch. (A Q4_K_M GGUF stores v_proj as Q6_K in some layers and q, k as Q4_K: with v at group 128
/// and q, k at 32, q|k|v fell back to three products, a concatenation and the bias adds.)
/// `HIERSPEC_GGUF_SIBLING_GROUP=0` turns this off (to measure what it buys).
fn sibling_spec(src: &dyn WeightSource, name: &str, d_in: usize, q: &QuantSpec) -> QuantSpec {
    if std::env::var("HIERSPEC_GGUF_SIBLING_GROUP").is_ok_and(|v| v == "0") {
        return *q;
    }
    let Some((prefix, proj)) = name.rsplit_once('.') else { return *q };
    let siblings: &[&str] = match proj {
        "q_proj" | "k_proj" | "v_proj" => &["q_proj", "k_proj", "v_proj"],
        "gate_proj" | "up_proj" => &["gate_proj", "up_proj"],
        _ => &[],
    };
    siblings
        .iter()
        .filter(|s| **s != proj)
        .find_map(|s| src.int4_group(&format!("{prefix}.{s}")))
        .filter(|g| d_in % g == 0)
        .map_or(*q, |group| QuantSpec { group, ..*q })
}

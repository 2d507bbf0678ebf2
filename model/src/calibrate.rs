//! GPTQ calibration: what each decoder linear layer sees on calibration text. Layers are visited
//! in order, as GPTQ does: the calibration chunks' hidden states wait at the input of the current
//! layer; the Gram matrices (sums of x x^T) of its four inputs are accumulated on the device in one
//! pass. The next layer's input comes from running the layer with its *quantized* weights where the
//! caller recorded them (GPTQ's sequential mode: later layers calibrate on what they will see).

use std::collections::HashMap;

use burn::tensor::{DType, Tensor};

use crate::cache::KvCache;
use crate::config::LlamaConfig;
use crate::error::{Error, Result};
use crate::gptq::Hessian;
use crate::llama::{AttnMask, DecoderLayer, Llama, LinearInput, Step};
use crate::nn::linear::{Linear, LinearWeight};
use burn::module::Param;

pub struct Calibrator<'a> {
    model: &'a Llama,
    /// One layer's shapes, for the per-chunk KV cache.
    layer_cfg: LlamaConfig,
    /// Hidden states entering layer `layer`, one [1, n, hidden] per chunk.
    hidden: Vec<Tensor<3>>,
    layer: usize,
    /// The Hessians of `layer`'s inputs, once computed.
    done: Option<HashMap<LinearInput, Hessian>>,
    /// Quantized weights of `layer` recorded by the caller: (name as in `Linear` paths, [k, n]).
    quantized: Vec<(String, Vec<f32>)>,
}

impl<'a> Calibrator<'a> {
    pub fn new(model: &'a Llama, config: &LlamaConfig, chunks: &[Vec<u32>]) -> Result<Self> {
        if chunks.is_empty() || chunks.iter().any(|c| c.is_empty() || c.len() > model.max_positions()) {
            return Err(Error::Setting(format!("GPTQ calibration needs non-empty chunks of at most {} tokens", model.max_positions())));
        }
        if let Some(t) = chunks.iter().flatten().find(|&&t| t as usize >= config.vocab_size) {
            return Err(Error::Setting(format!("calibration token {t} is outside the vocabulary of {}", config.vocab_size)));
        }
        let device = model.embed_tokens.device();
        let hidden = chunks
            .iter()
            .map(|c| {
                let ids: Vec<i64> = c.iter().map(|&t| t as i64).collect();
                model.embed(Tensor::from_data(burn::tensor::TensorData::new(ids, [1, c.len()]), &device))
            })
            .collect();
        Ok(Self { model, layer_cfg: LlamaConfig { num_hidden_layers: 1, ..config.clone() }, hidden, layer: 0, done: None, quantized: Vec::new() })
    }

    /// The Hessian of `input` at decoder layer `layer`. Layers must be asked in order (a layer
    /// once left is gone).
    pub fn hessian(&mut self, layer: usize, input: LinearInput) -> Result<&Hessian> {
        if layer < self.layer || layer >= self.model.layers.len() {
            return Err(Error::Setting(format!("GPTQ calibration: layer {layer} asked after layer {} (of {})", self.layer, self.model.layers.len())));
        }
        while self.layer < layer {
            let quantized = self.quantized_layer()?;
            self.hidden = self.run_layer(&quantized, false).1;
            self.layer += 1;
            self.done = None;
            self.quantized.clear();
        }
        if self.done.is_none() {
            let layer = self.model.layers[self.layer].clone();
            self.done = self.run_layer(&layer, true).0;
        }
        let h = self.done.as_ref().expect("computed above");
        h.get(&input).ok_or_else(|| Error::Setting(format!("GPTQ calibration: no {input:?} input")))
    }

    /// Record the quantized (dequantized back to f32) weight [k, n] of `proj` (`self_attn.q_proj`,
    /// ..., `mlp.down_proj`) of the current layer: the next layer's inputs are computed with it.
    pub fn record(&mut self, layer: usize, proj: &str, w: Vec<f32>) -> Result<()> {
        if layer != self.layer {
            return Err(Error::Setting(format!("GPTQ calibration: weights of layer {layer} recorded at layer {}", self.layer)));
        }
        self.quantized.push((proj.to_string(), w));
        Ok(())
    }

    /// The current layer with the recorded quantized weights in place of its own.
    fn quantized_layer(&self) -> Result<DecoderLayer> {
        let mut layer = self.model.layers[self.layer].clone();
        let device = self.model.embed_tokens.device();
        // The replacement weights take the model's float dtype (its embedding's).
        let dtype = self.model.embed_tokens.val().dtype();
        for (proj, w) in &self.quantized {
            let target = match proj.as_str() {
                "self_attn.q_proj" => &mut layer.self_attn.q_proj,
                "self_attn.k_proj" => &mut layer.self_attn.k_proj,
                "self_attn.v_proj" => &mut layer.self_attn.v_proj,
                "self_attn.o_proj" => &mut layer.self_attn.o_proj,
                "mlp.gate_proj" => &mut layer.mlp.gate_proj,
                "mlp.up_proj" => &mut layer.mlp.up_proj,
                "mlp.down_proj" => &mut layer.mlp.down_proj,
                other => return Err(Error::Setting(format!("GPTQ calibration: unknown layer {other}"))),
            };
            let (k, n) = (target.d_in(), target.d_out());
            if w.len() != k * n {
                return Err(Error::Shape { name: proj.clone(), expected: vec![k, n], found: vec![w.len()] });
            }
            let t = Tensor::<2>::from_data(burn::tensor::TensorData::new(w.clone(), [k, n]), &device).cast(dtype);
            *target = Linear::new(LinearWeight::Dense(Param::from_tensor(t)), target.bias.take());
        }
        Ok(layer)
    }

    /// Run `layer` over every chunk, optionally accumulating the Gram matrix of each input.
    fn run_layer(&self, layer: &DecoderLayer, observe: bool) -> (Option<HashMap<LinearInput, Hessian>>, Vec<Tensor<3>>) {
        let device = self.model.embed_tokens.device();
        let mut grams: HashMap<LinearInput, Tensor<2>> = HashMap::new();
        let mut rows = 0;
        let mut next = Vec::with_capacity(self.hidden.len());
        for x in &self.hidden {
            let n = x.dims()[1];
            let mut cache = KvCache::new(&self.layer_cfg, 1, n, &device);
            let mask = AttnMask::causal_unless_given(None, 0, n, &device);
            let step = Step { rope: &self.model.rope, positions: Llama::positions(0, n, &device), start: cache.start(), mask: mask.as_ref() };
            let mut sink = |site: LinearInput, t: &Tensor<3>| {
                if observe {
                    let k = t.dims()[2];
                    let x2 = t.clone().reshape([n, k]).cast(DType::F32);
                    let g = x2.clone().transpose().matmul(x2);
                    let acc = match grams.remove(&site) {
                        Some(a) => a + g,
                        None => g,
                    };
                    grams.insert(site, acc);
                }
            };
            next.push(layer.forward_observed(x.clone(), &step, &mut cache.layers[0], Some(&mut sink)));
            rows += n;
        }
        let hessians = observe.then(|| {
            grams
                .into_iter()
                .map(|(site, g)| {
                    let k = g.dims()[0];
                    let v: Vec<f64> = g.into_data().convert::<f32>().iter::<f32>().map(f64::from).collect();
                    (site, Hessian::from_gram(k, v, rows).expect("k x k"))
                })
                .collect()
        });
        (hessians, next)
    }
}

//! Linear layer `y = x W (+ b)` with W stored as [in, out], dense or W4A16 (`QuantLinear` is this
//! layer with an int4 weight: callers only see `forward`). Both weight kinds go through the small-M
//! kernels of `hierspec-kernels` on cubecl runtimes.

use burn::module::{Module, Param, ParamId};
use burn::tensor::{Device, Distribution, Int, Tensor, TensorData};
use hierspec_kernels::fused::{self, Input, Part, PartWeight};
use hierspec_kernels::mma::MmaWeight;
use hierspec_kernels::{int4, int4::Int4Weight};

use crate::error::{Error, Result};
use crate::quantized::QuantTensor;
use super::norm::RmsNorm;

#[derive(Module, Debug)]
pub enum LinearWeight {
    /// [d_in, d_out]
    Dense(Param<Tensor<2>>),
    Int4(QuantWeight),
}

/// An int4 weight, plus its dequantized copy on backends without the fused kernel (CPU): they run
/// the reference product, and dequantizing once at load instead of every step keeps them usable.
#[derive(Module, Debug)]
pub struct QuantWeight {
    pub q: Int4Weight,
    pub dequantized: Option<Param<Tensor<2>>>,
    /// Act-order GPTQ: the input columns in the order of `q`'s rows (x[:, perm] @ W).
    pub perm: Option<Param<Tensor<1, Int>>>,
}

#[derive(Module, Debug)]
pub struct Linear {
    pub weight: LinearWeight,
    pub bias: Option<Param<Tensor<1>>>,
    /// The weight in tensor-core fragment order, packed at construction where the mma kernel will
    /// run (CUDA bf16 / f16); `None` elsewhere. Rebuilt by [`Linear::new`] whenever the weight changes
    /// (in natural channel order: q_proj and k_proj then need [`Linear::paired_for_rope`] again for
    /// the fused RoPE, and run the two-launch path until they get it).
    pub mma: Option<MmaWeight>,
}

/// How to quantize dense weights at load time.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct QuantSpec {
    /// Input rows per scale (32, 64, 128, ...; the full row when it does not divide d_in).
    pub group: usize,
    pub asymmetric: bool,
    /// Quantize lm_head too (kept dense by default: it is the most sensitive layer).
    pub lm_head: bool,
}

impl Default for QuantSpec {
    fn default() -> Self {
        Self { group: 128, asymmetric: true, lm_head: false }
    }
}

impl Linear {
    /// A layer from its weight and bias, with the tensor-core copy packed where it will be used.
    pub fn new(weight: LinearWeight, bias: Option<Param<Tensor<1>>>) -> Self {
        let mma = match &weight {
            LinearWeight::Dense(w) => MmaWeight::dense(&w.val()),
            LinearWeight::Int4(w) if w.perm.is_none() && w.dequantized.is_none() => MmaWeight::int4(&w.q),
            LinearWeight::Int4(_) => None,
        };
        Self { weight, bias, mma }
    }

    /// This layer with its tensor-core copy repacked in RoPE pair order for heads of `head_dim`
    /// (q_proj, k_proj), so that the q|k|v product can rotate q and k in its epilogue
    /// ([`fused::qkv_rope`]). Unchanged where there is no packed copy or the heads do not tile.
    pub fn paired_for_rope(mut self, head_dim: usize) -> Self {
        if self.mma.is_some() {
            let paired = match &self.weight {
                LinearWeight::Dense(w) => MmaWeight::dense_rope(&w.val(), head_dim),
                LinearWeight::Int4(w) => MmaWeight::int4_rope(&w.q, head_dim),
            };
            if paired.is_some() {
                self.mma = paired;
            }
        }
        self
    }

    /// Build from a PyTorch-layout weight `[out, in]` (as stored by HF and GGUF) and optional bias.
    pub fn from_torch(
        name: &str,
        weight: (Vec<f32>, Vec<usize>),
        bias: Option<(Vec<f32>, Vec<usize>)>,
        d_in: usize,
        d_out: usize,
        device: &Device,
    ) -> Result<Self> {
        let (w, shape) = weight;
        check_shape(&format!("{name}.weight"), &shape, &[d_out, d_in])?;
        let weight = Tensor::<2>::from_data(TensorData::new(transpose(&w, d_out, d_in), [d_in, d_out]), device);
        let bias = match bias {
            Some((b, shape)) => {
                check_shape(&format!("{name}.bias"), &shape, &[d_out])?;
                Some(Param::from_tensor(Tensor::from_data(TensorData::new(b, [d_out]), device)))
            }
            None => None,
        };
        Ok(Self::new(LinearWeight::Dense(Param::from_tensor(weight)), bias))
    }

    /// A layer with an int4 weight and optional bias.
    pub fn quantized(q: Int4Weight, bias: Option<Param<Tensor<1>>>) -> Self {
        let dequantized = (!hierspec_kernels::has_kernels(&q.scales.val().device())).then(|| {
            let dtype = q.scales.val().dtype();
            Param::from_tensor(q.dequantize().cast(dtype))
        });
        Self::new(LinearWeight::Int4(QuantWeight { q, dequantized, perm: None }), bias)
    }

    /// An int4 weight read from a checkpoint (GPTQ, AWQ, GGUF Q4 blocks), checked against the
    /// layer's shape; `bias` in PyTorch layout.
    pub fn from_quant_tensor(name: &str, t: QuantTensor, bias: Option<(Vec<f32>, Vec<usize>)>, (d_in, d_out): (usize, usize), device: &Device) -> Result<Self> {
        check_shape(&format!("{name} (int4 [in, out])"), &[t.host.k, t.host.n], &[d_in, d_out])?;
        let weight = t.host.upload(device).map_err(|e| Error::Safetensors(format!("{name}: {e}")))?;
        let bias = match bias {
            Some((b, shape)) => {
                check_shape(&format!("{name}.bias"), &shape, &[d_out])?;
                Some(Param::from_tensor(Tensor::from_data(TensorData::new(b, [d_out]), device)))
            }
            None => None,
        };
        let layer = Self::quantized(weight, bias);
        match (t.perm, layer.weight) {
            (Some(perm), LinearWeight::Int4(mut w)) => {
                // Act-order: the input columns are permuted before the product, which the scalar
                // path does (the tensor-core copy is not used).
                let perm: Vec<i64> = perm.into_iter().map(i64::from).collect();
                w.perm = Some(Param::initialized(ParamId::new(), Tensor::from_data(TensorData::new(perm, [d_in]), device)));
                Ok(Self::new(LinearWeight::Int4(w), layer.bias))
            }
            (_, weight) => Ok(Self { weight, bias: layer.bias, mma: layer.mma }),
        }
    }

    /// Round-to-nearest W4A16 from a PyTorch-layout weight `[out, in]`.
    pub fn from_torch_rtn(
        name: &str,
        weight: (Vec<f32>, Vec<usize>),
        bias: Option<(Vec<f32>, Vec<usize>)>,
        (d_in, d_out): (usize, usize),
        spec: &QuantSpec,
        device: &Device,
    ) -> Result<Self> {
        let (w, shape) = weight;
        check_shape(&format!("{name}.weight"), &shape, &[d_out, d_in])?;
        let group = if d_in % spec.group == 0 { spec.group } else { d_in };
        let host = int4::quantize_rtn(&transpose(&w, d_out, d_in), d_in, d_out, group, spec.asymmetric)
            .map_err(|e| Error::Setting(format!("{name}: {e}")))?;
        let weight = host.upload(device).map_err(|e| Error::Setting(format!("{name}: {e}")))?;
        let bias = match bias {
            Some((b, shape)) => {
                check_shape(&format!("{name}.bias"), &shape, &[d_out])?;
                Some(Param::from_tensor(Tensor::from_data(TensorData::new(b, [d_out]), device)))
            }
            None => None,
        };
        Ok(Self::quantized(weight, bias))
    }

    /// Random N(0, std) weights made on the device (speed runs at real shapes need no files).
    pub fn random(d_in: usize, d_out: usize, bias: bool, std: f64, device: &Device) -> Self {
        let dist = Distribution::Normal(0.0, std);
        Self::new(
            LinearWeight::Dense(Param::from_tensor(Tensor::random([d_in, d_out], dist, device))),
            bias.then(|| Param::from_tensor(Tensor::random([d_out], dist, device))),
        )
    }

    /// Random int4 weights made on the device, for speed runs at real shapes.
    pub fn random_int4(d_in: usize, d_out: usize, bias: bool, spec: &QuantSpec, device: &Device) -> Result<Self> {
        let group = if d_in % spec.group == 0 { spec.group } else { d_in };
        let q = Int4Weight::random(d_in, d_out, group, spec.asymmetric, device).map_err(|e| Error::Setting(e.0))?;
        let bias = bias.then(|| Param::from_tensor(Tensor::random([d_out], Distribution::Normal(0.0, 0.02), device)));
        Ok(Self::quantized(q, bias))
    }

    pub fn d_out(&self) -> usize {
        match &self.weight {
            LinearWeight::Dense(w) => w.dims()[1],
            LinearWeight::Int4(w) => w.q.n,
        }
    }

    pub fn d_in(&self) -> usize {
        match &self.weight {
            LinearWeight::Dense(w) => w.dims()[0],
            LinearWeight::Int4(w) => w.q.k,
        }
    }

    /// Bytes a forward reads for the weight (for bandwidth bounds).
    pub fn weight_bytes(&self) -> usize {
        match &self.weight {
            LinearWeight::Dense(w) => w.dims()[0] * w.dims()[1] * w.val().dtype().size(),
            LinearWeight::Int4(w) => w.q.bytes(),
        }
    }

    /// This layer as one part of a fused product: the dequantized copy where the backend has no
    /// int4 kernel, the act-order permutation, the bias.
    pub fn part(&self) -> Part<'_> {
        let (weight, perm) = match &self.weight {
            LinearWeight::Dense(w) => (PartWeight::Dense(w.val()), None),
            LinearWeight::Int4(w) => {
                let weight = match &w.dequantized {
                    Some(d) => PartWeight::Dense(d.val()),
                    None => PartWeight::Int4(&w.q),
                };
                (weight, w.perm.as_ref().map(|p| p.val()))
            }
        };
        Part { weight, perm, bias: self.bias.as_ref().map(|b| b.val()), mma: self.mma.as_ref() }
    }

    /// 2-D product, no bias.
    pub fn matmul(&self, x: Tensor<2>) -> Tensor<2> {
        Part { bias: None, ..self.part() }.product(x)
    }

    /// x: [batch, seq, d_in] -> [batch, seq, d_out]
    pub fn forward(&self, x: Tensor<3>) -> Tensor<3> {
        Self::fused(&[self], x, Input::Plain, None)
    }

    /// `residual + x W + b` in one launch (o_proj, down_proj and their residual add).
    pub fn forward_add(&self, x: Tensor<3>, residual: Tensor<3>) -> Tensor<3> {
        Self::fused(&[self], x, Input::Plain, Some(residual))
    }

    /// `residual + down(silu(gate h) * up h)` (a SwiGLU MLP) with h = x, or h = `norm(x)` folded into
    /// gate|up where the tensor-core product takes it: two launches on cubecl runtimes.
    pub fn swiglu_mlp(gate: &Self, up: &Self, down: &Self, x: Tensor<3>, residual: Tensor<3>, norm: Option<&RmsNorm>) -> Tensor<3> {
        let [b, n, d] = x.dims();
        let h = down.d_out();
        let (x, residual) = (x.reshape([b * n, d]), residual.reshape([b * n, h]));
        let y = match norm {
            Some(norm) => fused::normed_swiglu_mlp(x, &norm.pre_norm(), gate.part(), up.part(), down.part(), residual),
            None => fused::swiglu_mlp(x, gate.part(), up.part(), down.part(), residual),
        };
        y.reshape([b, n, h])
    }

    /// Several layers reading the same input (q|k|v, gate|up) in one product: their outputs side by
    /// side, [batch, seq, sum of d_out].
    pub fn forward_many(layers: &[&Self], x: Tensor<3>) -> Tensor<3> {
        Self::fused(layers, x, Input::Plain, None)
    }

    fn fused(layers: &[&Self], x: Tensor<3>, input: Input, residual: Option<Tensor<3>>) -> Tensor<3> {
        let [b, n, d] = x.dims();
        let parts: Vec<Part> = layers.iter().map(|l| l.part()).collect();
        let d_out: usize = parts.iter().map(Part::n).sum();
        let residual = residual.map(|r| r.reshape([b * n, d_out]));
        fused::linear(x.reshape([b * n, d]), &parts, input, residual).reshape([b, n, d_out])
    }
}

pub fn check_shape(name: &str, found: &[usize], expected: &[usize]) -> Result<()> {
    if found != expected {
        return Err(Error::Shape { name: name.into(), expected: expected.to_vec(), found: found.to_vec() });
    }
    Ok(())
}

/// Row-major [rows, cols] -> [cols, rows].
pub fn transpose(w: &[f32], rows: usize, cols: usize) -> Vec<f32> {
    let mut out = vec![0f32; w.len()];
    // Blocked so that both sides stay in cache for the 150k x 1.5k embeddings.
    const T: usize = 64;
    for r0 in (0..rows).step_by(T) {
        for c0 in (0..cols).step_by(T) {
            for r in r0..(r0 + T).min(rows) {
                for c in c0..(c0 + T).min(cols) {
                    out[c * rows + r] = w[r * cols + c];
                }
            }
        }
    }
    out
}

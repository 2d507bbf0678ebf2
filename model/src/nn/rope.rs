//! Rotary position embedding, half-split (NeoX / Hugging Face) layout: the pair of dimension i is
//! i + head_dim/2. Tables are precomputed once for every position up to the context length and
//! gathered by explicit position ids, so tree nodes can sit at `root + depth` whatever their row.

use burn::module::Module;
use burn::tensor::{Device, Int, Tensor, TensorData};
use hierspec_kernels::start::CacheStart;
use hierspec_kernels::fused::{self, Part, PreNorm, QkvLayout, QkvRope};

use crate::cache::LayerKv;

use crate::config::{Llama3RopeScaling, LlamaConfig};

#[derive(Module, Debug)]
pub struct Rope {
    /// [max_positions, head_dim / 2]
    cos: Tensor<2>,
    sin: Tensor<2>,
}

/// Inverse frequencies, with Llama-3.1's frequency-dependent scaling when configured.
pub fn inv_freqs(head_dim: usize, theta: f64, scaling: Option<&Llama3RopeScaling>) -> Vec<f64> {
    let half = head_dim / 2;
    (0..half)
        .map(|i| {
            let f = 1.0 / theta.powf(2.0 * i as f64 / head_dim as f64);
            match scaling {
                None => f,
                Some(s) => {
                    let old = s.original_max_position_embeddings as f64;
                    let low_wavelen = old / s.low_freq_factor;
                    let high_wavelen = old / s.high_freq_factor;
                    let wavelen = 2.0 * std::f64::consts::PI / f;
                    if wavelen < high_wavelen {
                        f
                    } else if wavelen > low_wavelen {
                        f / s.factor
                    } else {
                        let smooth = (old / wavelen - s.low_freq_factor) / (s.high_freq_factor - s.low_freq_factor);
                        (1.0 - smooth) * f / s.factor + smooth * f
                    }
                }
            }
        })
        .collect()
}

impl Rope {
    pub fn new(cfg: &LlamaConfig, max_positions: usize, device: &Device) -> Self {
        let freqs = inv_freqs(cfg.head_dim, cfg.rope_theta, cfg.rope_scaling.as_ref());
        let half = freqs.len();
        let mut cos = Vec::with_capacity(max_positions * half);
        let mut sin = Vec::with_capacity(max_positions * half);
        for p in 0..max_positions {
            for &f in &freqs {
                let a = p as f64 * f;
                cos.push(a.cos() as f32);
                sin.push(a.sin() as f32);
            }
        }
        Self {
            cos: Tensor::from_data(TensorData::new(cos, [max_positions, half]), device),
            sin: Tensor::from_data(TensorData::new(sin, [max_positions, half]), device),
        }
    }

    pub fn max_positions(&self) -> usize {
        self.cos.dims()[0]
    }

    /// The q|k|v product of x [b, n, d] (of `norm(x)` where given) with RoPE on q and k and the
    /// cache write ([`fused::qkv_rope`]: one launch on tensor cores); returns q [b, heads, n, hd].
    #[allow(clippy::too_many_arguments)]
    pub fn qkv_product(&self, x: Tensor<3>, norm: Option<&PreNorm>, parts: &[Part], positions: Tensor<1, Int>, layout: QkvLayout, kv: &mut LayerKv, start: &CacheStart) -> Tensor<4> {
        let rope = QkvRope { positions, cos: &self.cos, sin: &self.sin, layout, start };
        fused::qkv_rope(x, norm, parts, rope, &mut kv.k, &mut kv.v)
    }
}

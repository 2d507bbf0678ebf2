//! Dense linear layer `y = x W (+ b)` with W stored as [in, out]. The W4A16 work adds a quantized
//! variant beside it; callers only see `forward`.

use burn::module::{Module, Param};
use burn::tensor::{backend::Backend, Distribution, Tensor, TensorData};

use crate::error::{Error, Result};

#[derive(Module, Debug)]
pub struct Linear<B: Backend> {
    /// [d_in, d_out]
    pub weight: Param<Tensor<B, 2>>,
    pub bias: Option<Param<Tensor<B, 1>>>,
}

impl<B: Backend> Linear<B> {
    /// Build from a PyTorch-layout weight `[out, in]` (as stored by HF and GGUF) and optional bias.
    pub fn from_torch(
        name: &str,
        weight: (Vec<f32>, Vec<usize>),
        bias: Option<(Vec<f32>, Vec<usize>)>,
        d_in: usize,
        d_out: usize,
        device: &B::Device,
    ) -> Result<Self> {
        let (w, shape) = weight;
        check_shape(&format!("{name}.weight"), &shape, &[d_out, d_in])?;
        let weight = Tensor::<B, 2>::from_data(TensorData::new(transpose(&w, d_out, d_in), [d_in, d_out]), device);
        let bias = match bias {
            Some((b, shape)) => {
                check_shape(&format!("{name}.bias"), &shape, &[d_out])?;
                Some(Param::from_tensor(Tensor::from_data(TensorData::new(b, [d_out]), device)))
            }
            None => None,
        };
        Ok(Self { weight: Param::from_tensor(weight), bias })
    }

    /// Random N(0, std) weights made on the device (speed runs at real shapes need no files).
    pub fn random(d_in: usize, d_out: usize, bias: bool, std: f64, device: &B::Device) -> Self {
        let dist = Distribution::Normal(0.0, std);
        Self {
            weight: Param::from_tensor(Tensor::random([d_in, d_out], dist, device)),
            bias: bias.then(|| Param::from_tensor(Tensor::random([d_out], dist, device))),
        }
    }

    pub fn d_out(&self) -> usize {
        self.weight.dims()[1]
    }

    /// x: [batch, seq, d_in] -> [batch, seq, d_out]
    pub fn forward(&self, x: Tensor<B, 3>) -> Tensor<B, 3> {
        let [b, n, d_in] = x.dims();
        let y = super::matmul::matmul(x.reshape([b * n, d_in]), self.weight.val());
        let y = match &self.bias {
            Some(bias) => y + bias.val().unsqueeze::<2>(),
            None => y,
        };
        y.reshape([b, n, self.d_out()])
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

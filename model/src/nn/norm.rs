//! RMSNorm, computed in f32 whatever the activation dtype (bf16 sums of squares lose too much).

use burn::module::{Module, Param};
use burn::tensor::{Device, Tensor, TensorData};
use hierspec_kernels::fused;

use super::linear::check_shape;
use crate::error::Result;

#[derive(Module, Debug)]
pub struct RmsNorm {
    pub weight: Param<Tensor<1>>,
    pub eps: f64,
}

impl RmsNorm {
    pub fn from_weights(name: &str, w: (Vec<f32>, Vec<usize>), dim: usize, eps: f64, device: &Device) -> Result<Self> {
        check_shape(&format!("{name}.weight"), &w.1, &[dim])?;
        let weight = Tensor::from_data(TensorData::new(w.0, [dim]), device);
        Ok(Self { weight: Param::from_tensor(weight), eps })
    }

    /// Unit weights (random models and fresh heads).
    pub fn ones(dim: usize, eps: f64, device: &Device) -> Self {
        Self { weight: Param::from_tensor(Tensor::ones([dim], device)), eps }
    }

    /// The norm as a product's input step ([`fused::normed_linear`]).
    pub fn pre_norm(&self) -> fused::PreNorm {
        fused::PreNorm { weight: self.weight.val(), eps: self.eps }
    }

    /// Normalizes the last dimension (one fused launch on cubecl runtimes).
    pub fn forward<const D: usize>(&self, x: Tensor<D>) -> Tensor<D> {
        let dims = x.dims();
        let h = dims[D - 1];
        let rows = x.shape().num_elements() / h;
        fused::rms_norm(x.reshape([rows, h]), self.weight.val(), self.eps).reshape(dims)
    }
}

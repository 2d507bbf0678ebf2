//! RMSNorm, computed in f32 whatever the activation dtype (bf16 sums of squares lose too much).

use burn::module::{Module, Param};
use burn::tensor::{backend::Backend, DType, Tensor, TensorData};

use super::linear::check_shape;
use crate::error::Result;

#[derive(Module, Debug)]
pub struct RmsNorm<B: Backend> {
    pub weight: Param<Tensor<B, 1>>,
    pub eps: f64,
}

impl<B: Backend> RmsNorm<B> {
    pub fn from_weights(name: &str, w: (Vec<f32>, Vec<usize>), dim: usize, eps: f64, device: &B::Device) -> Result<Self> {
        check_shape(&format!("{name}.weight"), &w.1, &[dim])?;
        let weight = Tensor::from_data(TensorData::new(w.0, [dim]), device);
        Ok(Self { weight: Param::from_tensor(weight), eps })
    }

    /// Unit weights (random models and fresh heads).
    pub fn ones(dim: usize, eps: f64, device: &B::Device) -> Self {
        Self { weight: Param::from_tensor(Tensor::ones([dim], device)), eps }
    }

    pub fn forward<const D: usize>(&self, x: Tensor<B, D>) -> Tensor<B, D> {
        let dtype = x.dtype();
        let x32 = x.cast(DType::F32);
        let rms = (x32.clone().powi_scalar(2).mean_dim(D - 1) + self.eps).sqrt();
        let y = (x32 / rms).cast(dtype);
        y * self.weight.val().unsqueeze::<D>()
    }
}

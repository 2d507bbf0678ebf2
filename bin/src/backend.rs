//! Which Burn backend runs the model, chosen at run time among those compiled in.
//! `cpu` is burn-flex: on this 2-core x86 machine it ran our f32 forward faster than burn-ndarray
//! (see README), and it needs no BLAS system library.

use burn::tensor::Device;
use clap::ValueEnum;
use hierspec_model::{Error, Result};

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum DeviceKind {
    Cpu,
    /// burn-ndarray, the other CPU backend (build with `--features ndarray`), for comparison.
    Ndarray,
    Wgpu,
    Cuda,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Precision {
    F32,
    F16,
    Bf16,
}

impl Precision {
    pub fn dtype(self) -> burn::tensor::DType {
        match self {
            Precision::F32 => burn::tensor::DType::F32,
            Precision::F16 => burn::tensor::DType::F16,
            Precision::Bf16 => burn::tensor::DType::BF16,
        }
    }
}

/// A job run on the chosen device; `dispatch` makes the device and runs it.
pub trait BackendJob {
    type Output;
    fn run(self, device: Device) -> Result<Self::Output>;
}

/// `device` with `precision` as its default float dtype (ints stay i32, as the kernels read them).
fn init(mut device: Device, precision: Precision) -> Result<Device> {
    let float: burn::tensor::FloatDType = precision.dtype().into();
    device
        .configure(float)
        .map_err(|e| Error::Setting(format!("--dtype {precision:?} on this device: {e:?}")))?;
    Ok(device)
}

pub fn dispatch<J: BackendJob>(kind: DeviceKind, precision: Precision, job: J) -> Result<J::Output> {
    let device = match kind {
        #[cfg(feature = "cpu")]
        DeviceKind::Cpu => Device::flex(),
        #[cfg(feature = "ndarray")]
        DeviceKind::Ndarray => Device::ndarray(),
        #[cfg(feature = "wgpu")]
        DeviceKind::Wgpu => Device::wgpu(burn::tensor::DeviceKind::default()),
        #[cfg(feature = "cuda")]
        DeviceKind::Cuda => {
            // burn-cuda runs f32 matmuls on TF32 tensor cores: keep --dtype f32 a true f32 mode.
            hierspec_model::nn::matmul::set_split_f32(precision == Precision::F32);
            Device::cuda(0)
        }
        #[allow(unreachable_patterns)]
        other => {
            return Err(Error::Setting(format!(
                "--device {other:?} is not compiled into this binary (build with --features {})",
                format!("{other:?}").to_lowercase()
            )))
        }
    };
    job.run(init(device, precision)?)
}

//! Which Burn backend runs the model, chosen at run time among those compiled in.
//! `cpu` is burn-flex: on this 2-core x86 machine it ran our f32 forward faster than burn-ndarray
//! (see README), and it needs no BLAS system library.

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

/// A job generic over the backend; `dispatch` instantiates it for the chosen one.
pub trait BackendJob {
    type Output;
    fn run<B: burn::tensor::backend::Backend>(self, device: B::Device) -> Result<Self::Output>;
}

fn init<B: burn::tensor::backend::Backend>(device: &B::Device, precision: Precision) -> Result<()> {
    use burn::tensor::Element;
    let int = <B::IntElem as Element>::dtype();
    burn::tensor::set_default_dtypes::<B>(device, precision.dtype(), int)
        .map_err(|e| Error::Setting(format!("--dtype {precision:?} on this device: {e:?}")))
}

/// How cubecl hands device work to the GPU driver in this process, from `CUBECL_DEVICE_HANDLE`
/// (our cubecl-common patch, `third_party/cubecl-common/src/device/handle/switch.rs`):
/// `channel` (unset: upstream's batching device thread), `queue` (a device thread given each task
/// at once) or `direct` (on the calling thread).
pub fn device_handle() -> Result<&'static str> {
    use cubecl_common::device_handle::{handle_mode, HandleMode};
    // Checked here first: the patched crate panics on a value it does not know.
    HandleMode::parse(std::env::var("CUBECL_DEVICE_HANDLE").ok().as_deref()).map_err(Error::Setting)?;
    Ok(handle_mode().name())
}

pub fn dispatch<J: BackendJob>(kind: DeviceKind, precision: Precision, job: J) -> Result<J::Output> {
    device_handle()?;
    match kind {
        #[cfg(feature = "cpu")]
        DeviceKind::Cpu => {
            type B = burn::backend::Flex;
            let device = Default::default();
            init::<B>(&device, precision)?;
            job.run::<B>(device)
        }
        #[cfg(feature = "ndarray")]
        DeviceKind::Ndarray => {
            type B = burn::backend::NdArray;
            let device = Default::default();
            init::<B>(&device, precision)?;
            job.run::<B>(device)
        }
        #[cfg(feature = "wgpu")]
        DeviceKind::Wgpu => {
            type B = burn::backend::Wgpu;
            let device = burn::backend::wgpu::WgpuDevice::default();
            init::<B>(&device, precision)?;
            job.run::<B>(device)
        }
        #[cfg(feature = "cuda")]
        DeviceKind::Cuda => {
            type B = burn::backend::Cuda;
            let device = burn::backend::cuda::CudaDevice::default();
            init::<B>(&device, precision)?;
            // burn-cuda runs f32 matmuls on TF32 tensor cores: keep --dtype f32 a true f32 mode.
            hierspec_model::nn::matmul::set_split_f32(precision == Precision::F32);
            job.run::<B>(device)
        }
        #[allow(unreachable_patterns)]
        other => Err(Error::Setting(format!(
            "--device {other:?} is not compiled into this binary (build with --features {})",
            format!("{other:?}").to_lowercase()
        ))),
    }
}

#[cfg(test)]
mod tests {
    use cubecl_common::device_handle::HandleMode;

    #[test]
    fn device_handle_names_are_checked() {
        for (value, mode) in [
            (None, HandleMode::Channel),
            (Some(""), HandleMode::Channel),
            (Some("channel"), HandleMode::Channel),
            (Some("queue"), HandleMode::Queue),
            (Some("direct"), HandleMode::Direct),
        ] {
            assert_eq!(HandleMode::parse(value), Ok(mode), "{value:?}");
        }
        for mode in [HandleMode::Channel, HandleMode::Queue, HandleMode::Direct] {
            assert_eq!(HandleMode::parse(Some(mode.name())), Ok(mode));
        }
        let err = HandleMode::parse(Some("Direct")).unwrap_err();
        assert!(err.contains("CUBECL_DEVICE_HANDLE=\"Direct\"") && err.contains("`queue`"), "{err}");
    }
}

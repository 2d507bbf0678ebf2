//! PyTorch pickles (`pytorch_model.bin`, the official EAGLE heads' format) as a weight source,
//! through burn-store's reader: it parses the zip + pickle container without executing any of it
//! (only tensor rebuilds are recognised) and hands back each tensor's data.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use burn_store::pytorch_reader::{DType, PytorchReader, Tensor};
use half::{bf16, f16};

use crate::error::{Error, Result};
use crate::weights::{HostTensor, WeightSource};

pub struct PytorchSource {
    path: PathBuf,
    tensors: HashMap<String, Tensor>,
}

impl PytorchSource {
    pub fn open(path: &Path) -> Result<Self> {
        let reader = PytorchReader::new(path).map_err(|e| Error::Unsupported(format!("{}: not a readable PyTorch checkpoint ({e})", path.display())))?;
        Ok(Self { path: path.to_path_buf(), tensors: reader.into_tensors() })
    }
}

impl WeightSource for PytorchSource {
    fn tensor(&self, name: &str) -> Result<HostTensor> {
        let t = self.tensors.get(name).ok_or_else(|| Error::MissingTensor(name.into()))?;
        let fail = |e: String| Error::Unsupported(format!("{}: tensor {name}: {e}", self.path.display()));
        let bytes = t.read().map_err(|e| fail(e.to_string()))?;
        // `read` gives native-endian, row-major bytes of exactly `byte_len`.
        let values: Vec<f32> = match t.dtype() {
            DType::F32 => bytes.chunks_exact(4).map(|b| f32::from_ne_bytes([b[0], b[1], b[2], b[3]])).collect(),
            DType::F64 => bytes.chunks_exact(8).map(|b| f64::from_ne_bytes(b.try_into().expect("8 bytes")) as f32).collect(),
            DType::F16 => bytes.chunks_exact(2).map(|b| f16::from_ne_bytes([b[0], b[1]]).to_f32()).collect(),
            DType::BF16 => bytes.chunks_exact(2).map(|b| bf16::from_ne_bytes([b[0], b[1]]).to_f32()).collect(),
            other => return Err(fail(format!("dtype {other:?}, not a float"))),
        };
        Ok((values, t.shape().to_vec()))
    }

    fn contains(&self, name: &str) -> bool {
        self.tensors.contains_key(name)
    }
}

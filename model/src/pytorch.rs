//! PyTorch pickles (`pytorch_model.bin`, the official EAGLE heads' format) as a weight source,
//! through burn-store's reader: it parses the zip + pickle container without executing any of it
//! (only tensor rebuilds are recognised) and hands back each tensor's data.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use burn::tensor::DType;
use burn_store::pytorch::PytorchReader;
use burn_store::TensorSnapshot;

use crate::error::{Error, Result};
use crate::weights::{HostTensor, WeightSource};

pub struct PytorchSource {
    path: PathBuf,
    tensors: HashMap<String, TensorSnapshot>,
}

impl PytorchSource {
    pub fn open(path: &Path) -> Result<Self> {
        let reader = PytorchReader::new(path).map_err(|e| Error::Unsupported(format!("{}: not a readable PyTorch checkpoint ({e})", path.display())))?;
        Ok(Self { path: path.to_path_buf(), tensors: reader.into_tensors() })
    }
}

impl WeightSource for PytorchSource {
    fn tensor(&self, name: &str) -> Result<HostTensor> {
        let snap = self.tensors.get(name).ok_or_else(|| Error::MissingTensor(name.into()))?;
        if !matches!(snap.dtype, DType::F32 | DType::F16 | DType::BF16 | DType::F64) {
            return Err(Error::Unsupported(format!("{}: tensor {name} has dtype {:?}", self.path.display(), snap.dtype)));
        }
        let data = snap.to_data().map_err(|e| Error::Unsupported(format!("{}: tensor {name}: {e:?}", self.path.display())))?;
        let shape = data.shape.clone();
        let values = data.convert::<f32>().to_vec::<f32>().map_err(|e| Error::Unsupported(format!("{}: tensor {name}: {e:?}", self.path.display())))?;
        Ok((values, shape.to_vec()))
    }

    fn contains(&self, name: &str) -> bool {
        self.tensors.contains_key(name)
    }
}

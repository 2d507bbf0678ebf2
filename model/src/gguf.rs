//! GGUF reader: header, metadata, tensor table, and dequantization of the block formats that the
//! reachable checkpoints use (see quants.rs). Written by hand: the format is ~150 lines to parse, and the
//! Rust crates that read it either pull a whole other tensor framework (candle) or are unmaintained.
//! Every size and offset is checked against the file before anything is read.

use std::collections::HashMap;
use std::path::Path;

use memmap2::Mmap;

use crate::error::{Error, Result};
use crate::quants::GgmlType;

const MAGIC: &[u8; 4] = b"GGUF";

#[derive(Debug, Clone, PartialEq)]
pub enum MetaValue {
    Int(i64),
    UInt(u64),
    Float(f64),
    Bool(bool),
    Str(String),
    Array(Vec<MetaValue>),
}

impl MetaValue {
    pub fn as_u64(&self) -> Option<u64> {
        match *self {
            MetaValue::UInt(v) => Some(v),
            MetaValue::Int(v) if v >= 0 => Some(v as u64),
            _ => None,
        }
    }
    pub fn as_f64(&self) -> Option<f64> {
        match *self {
            MetaValue::Float(v) => Some(v),
            MetaValue::UInt(v) => Some(v as f64),
            MetaValue::Int(v) => Some(v as f64),
            _ => None,
        }
    }
    pub fn as_str(&self) -> Option<&str> {
        match self {
            MetaValue::Str(s) => Some(s),
            _ => None,
        }
    }
    pub fn as_array(&self) -> Option<&[MetaValue]> {
        match self {
            MetaValue::Array(a) => Some(a),
            _ => None,
        }
    }
}

#[derive(Debug, Clone)]
pub struct TensorInfo {
    pub name: String,
    /// PyTorch order (outermost first): GGUF lists dims innermost first, we reverse them on read.
    pub shape: Vec<usize>,
    pub dtype: GgmlType,
    /// Absolute byte offset in the file.
    pub offset: usize,
    pub n_bytes: usize,
}

pub struct GgufFile {
    mmap: Mmap,
    pub metadata: HashMap<String, MetaValue>,
    pub tensors: HashMap<String, TensorInfo>,
}

struct Cursor<'a> {
    buf: &'a [u8],
    pos: usize,
}

impl<'a> Cursor<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8]> {
        let end = self.pos.checked_add(n).filter(|&e| e <= self.buf.len()).ok_or_else(|| {
            Error::Gguf(format!("truncated: need {n} bytes at offset {}, file has {}", self.pos, self.buf.len()))
        })?;
        let s = &self.buf[self.pos..end];
        self.pos = end;
        Ok(s)
    }
    fn u32(&mut self) -> Result<u32> {
        Ok(u32::from_le_bytes(self.take(4)?.try_into().unwrap()))
    }
    fn u64(&mut self) -> Result<u64> {
        Ok(u64::from_le_bytes(self.take(8)?.try_into().unwrap()))
    }
    /// A count that must fit in what is left of the file (each item takes at least `min_item` bytes).
    fn count(&mut self, min_item: usize) -> Result<usize> {
        let n = self.u64()?;
        let left = (self.buf.len() - self.pos) as u64;
        if n.saturating_mul(min_item as u64) > left {
            return Err(Error::Gguf(format!("truncated or corrupt: count {n} at offset {} exceeds the file size", self.pos - 8)));
        }
        Ok(n as usize)
    }
    fn string(&mut self) -> Result<String> {
        let n = self.count(1)?;
        let bytes = self.take(n)?;
        String::from_utf8(bytes.to_vec()).map_err(|_| Error::Gguf(format!("invalid UTF-8 string at {}", self.pos)))
    }
    fn value(&mut self, ty: u32, depth: usize) -> Result<MetaValue> {
        Ok(match ty {
            0 => MetaValue::UInt(self.take(1)?[0] as u64),
            1 => MetaValue::Int(self.take(1)?[0] as i8 as i64),
            2 => MetaValue::UInt(u16::from_le_bytes(self.take(2)?.try_into().unwrap()) as u64),
            3 => MetaValue::Int(i16::from_le_bytes(self.take(2)?.try_into().unwrap()) as i64),
            4 => MetaValue::UInt(self.u32()? as u64),
            5 => MetaValue::Int(self.u32()? as i32 as i64),
            6 => MetaValue::Float(f32::from_le_bytes(self.take(4)?.try_into().unwrap()) as f64),
            7 => MetaValue::Bool(self.take(1)?[0] != 0),
            8 => MetaValue::Str(self.string()?),
            9 => {
                if depth > 2 {
                    return Err(Error::Gguf("metadata arrays nested too deeply".into()));
                }
                let ety = self.u32()?;
                let n = self.count(1)?;
                let mut items = Vec::with_capacity(n);
                for _ in 0..n {
                    items.push(self.value(ety, depth + 1)?);
                }
                MetaValue::Array(items)
            }
            10 => MetaValue::UInt(self.u64()?),
            11 => MetaValue::Int(self.u64()? as i64),
            12 => MetaValue::Float(f64::from_le_bytes(self.take(8)?.try_into().unwrap())),
            t => return Err(Error::Gguf(format!("unknown metadata value type {t}"))),
        })
    }
}

impl GgufFile {
    pub fn open(path: impl AsRef<Path>) -> Result<Self> {
        let path = path.as_ref();
        let file = std::fs::File::open(path).map_err(|e| Error::io(path, e))?;
        // SAFETY: the file is opened read-only; we never hand out references beyond `self`.
        let mmap = unsafe { Mmap::map(&file) }.map_err(|e| Error::io(path, e))?;
        Self::parse(mmap)
    }

    fn parse(mmap: Mmap) -> Result<Self> {
        let mut c = Cursor { buf: &mmap[..], pos: 0 };
        if c.take(4).map_err(|_| Error::Gguf("file shorter than the header".into()))? != MAGIC {
            return Err(Error::Gguf("bad magic (not a GGUF file)".into()));
        }
        let version = c.u32()?;
        if !(2..=3).contains(&version) {
            return Err(Error::Unsupported(format!("GGUF version {version} (supported: 2, 3)")));
        }
        let n_tensors = c.count(24)?;
        let n_kv = c.count(12)?;
        let mut metadata = HashMap::with_capacity(n_kv);
        for _ in 0..n_kv {
            let key = c.string()?;
            let ty = c.u32()?;
            let v = c.value(ty, 0)?;
            metadata.insert(key, v);
        }
        let mut infos = Vec::with_capacity(n_tensors);
        for _ in 0..n_tensors {
            let name = c.string()?;
            let n_dims = c.u32()? as usize;
            if n_dims == 0 || n_dims > 4 {
                return Err(Error::Gguf(format!("tensor {name}: {n_dims} dimensions")));
            }
            let mut dims = Vec::with_capacity(n_dims);
            for _ in 0..n_dims {
                dims.push(c.u64()? as usize);
            }
            let ty = c.u32()?;
            let offset = c.u64()? as usize;
            dims.reverse();
            infos.push((name, dims, ty, offset));
        }
        let alignment = metadata.get("general.alignment").and_then(MetaValue::as_u64).unwrap_or(32) as usize;
        if alignment == 0 || !alignment.is_power_of_two() {
            return Err(Error::Gguf(format!("alignment {alignment} is not a power of two")));
        }
        let data_start = c.pos.div_ceil(alignment) * alignment;
        let mut tensors = HashMap::with_capacity(n_tensors);
        for (name, shape, ty, rel) in infos {
            let dtype = GgmlType::from_u32(ty).ok_or_else(|| {
                Error::Unsupported(format!("tensor {name}: quantization type {ty} is not supported"))
            })?;
            let numel = shape.iter().try_fold(1usize, |a, &d| a.checked_mul(d));
            let n_bytes = numel.and_then(|n| dtype.bytes_for(n, *shape.last().unwrap())).ok_or_else(|| {
                Error::Gguf(format!("tensor {name}: shape {shape:?} does not fit {dtype:?} blocks"))
            })?;
            let offset = data_start.checked_add(rel).ok_or_else(|| Error::Gguf(format!("tensor {name}: bad offset")))?;
            if offset.checked_add(n_bytes).is_none_or(|end| end > mmap.len()) {
                return Err(Error::Gguf(format!(
                    "truncated: tensor {name} needs bytes {offset}..{} but the file has {}",
                    offset.saturating_add(n_bytes),
                    mmap.len()
                )));
            }
            if tensors.contains_key(&name) {
                return Err(Error::Gguf(format!("tensor {name} listed twice")));
            }
            tensors.insert(name.clone(), TensorInfo { name, shape, dtype, offset, n_bytes });
        }
        Ok(GgufFile { mmap, metadata, tensors })
    }

    pub fn meta(&self, key: &str) -> Option<&MetaValue> {
        self.metadata.get(key)
    }

    pub fn architecture(&self) -> Result<&str> {
        self.meta("general.architecture")
            .and_then(MetaValue::as_str)
            .ok_or_else(|| Error::Gguf("missing general.architecture".into()))
    }

    /// The raw bytes of a tensor (bounds were checked at open).
    pub fn raw(&self, info: &TensorInfo) -> &[u8] {
        &self.mmap[info.offset..info.offset + info.n_bytes]
    }

    /// Dequantize a tensor to f32, row-major in PyTorch order.
    pub fn dequantize(&self, name: &str) -> Result<(Vec<f32>, Vec<usize>)> {
        let info = self.tensors.get(name).ok_or_else(|| Error::MissingTensor(name.to_string()))?;
        let data = info.dtype.dequantize(self.raw(info), info.shape.iter().product())?;
        Ok((data, info.shape.clone()))
    }
}

//! Where weights come from. The model asks for tensors by their Hugging Face names and gets f32 data
//! in PyTorch layout; each source maps names, dequantizes and undoes format quirks.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use half::{bf16, f16};
use memmap2::Mmap;
use safetensors::tensor::{Dtype, TensorInfo};
use safetensors::SafeTensors;

use crate::error::{Error, Result};
use crate::gguf::GgufFile;
use crate::quantized::{self, CheckpointQuant, QuantMethod, QuantTensor};

pub type HostTensor = (Vec<f32>, Vec<usize>);

pub trait WeightSource: Sync {
    /// The tensor under its Hugging Face name, as f32 in PyTorch (outermost-first) layout.
    fn tensor(&self, name: &str) -> Result<HostTensor>;
    fn contains(&self, name: &str) -> bool;
    /// The linear layer `name` (e.g. `model.layers.0.mlp.up_proj`) as int4, when the source stores
    /// it so (GPTQ / AWQ checkpoints; GGUF Q4 blocks when asked for W4A16). None: read `tensor`.
    fn int4(&self, _name: &str) -> Result<Option<QuantTensor>> {
        Ok(None)
    }
    /// The group size [`WeightSource::int4`] would give `name`, without converting it; None where the
    /// layer is not stored as int4 (or the source cannot tell cheaply).
    fn int4_group(&self, _name: &str) -> Option<usize> {
        None
    }
}

// ---------------------------------------------------------------------------------------------
// GGUF

/// GGUF tensors under HF names. llama-arch GGUFs store W_q / W_k permuted for interleaved RoPE; we
/// undo it so that one half-split RoPE serves every source.
pub struct GgufSource<'a> {
    pub file: &'a GgufFile,
    /// (n_heads, n_kv_heads) when the llama permutation must be undone.
    pub unpermute: Option<(usize, usize)>,
    /// Map Q4_0 / Q4_1 / Q4_K weights onto int4 as they are (W4A16 loads) instead of dequantizing.
    pub native_int4: bool,
}

fn gguf_name(hf: &str) -> Option<String> {
    let fixed = match hf {
        "model.embed_tokens.weight" => Some("token_embd.weight"),
        "model.norm.weight" => Some("output_norm.weight"),
        "lm_head.weight" => Some("output.weight"),
        _ => None,
    };
    if let Some(f) = fixed {
        return Some(f.to_string());
    }
    let rest = hf.strip_prefix("model.layers.")?;
    let (layer, rest) = rest.split_once('.')?;
    let (module, suffix) = rest.rsplit_once('.')?;
    let g = match module {
        "input_layernorm" => "attn_norm",
        "post_attention_layernorm" => "ffn_norm",
        "self_attn.q_proj" => "attn_q",
        "self_attn.k_proj" => "attn_k",
        "self_attn.v_proj" => "attn_v",
        "self_attn.o_proj" => "attn_output",
        "mlp.gate_proj" => "ffn_gate",
        "mlp.up_proj" => "ffn_up",
        "mlp.down_proj" => "ffn_down",
        _ => return None,
    };
    Some(format!("blk.{layer}.{g}.{suffix}"))
}

/// Inverse of convert_hf_to_gguf's permute: rows grouped per head as (2, half) -> (half, 2).
fn unpermute_rows(w: &[f32], n_head: usize, rows: usize, cols: usize) -> Result<Vec<f32>> {
    if n_head == 0 || rows % (2 * n_head) != 0 {
        return Err(Error::Gguf(format!("cannot undo the Q/K permutation: {rows} rows, {n_head} heads")));
    }
    let half = rows / n_head / 2;
    let mut out = vec![0f32; w.len()];
    for h in 0..n_head {
        for i in 0..half {
            for j in 0..2 {
                // stored row (h, i, j) goes to (h, j, i)
                let src = (h * half * 2 + i * 2 + j) * cols;
                let dst = (h * 2 * half + j * half + i) * cols;
                out[dst..dst + cols].copy_from_slice(&w[src..src + cols]);
            }
        }
    }
    Ok(out)
}

impl WeightSource for GgufSource<'_> {
    fn tensor(&self, name: &str) -> Result<HostTensor> {
        let g = gguf_name(name).ok_or_else(|| Error::MissingTensor(name.into()))?;
        let (data, shape) = self.file.dequantize(&g)?;
        let heads = match (self.unpermute, name.rsplit('.').nth(1)) {
            (Some((nh, _)), Some("q_proj")) => Some(nh),
            (Some((_, nkv)), Some("k_proj")) => Some(nkv),
            _ => None,
        };
        match heads {
            Some(n) => {
                let cols = if shape.len() == 2 { shape[1] } else { 1 };
                Ok((unpermute_rows(&data, n, shape[0], cols)?, shape))
            }
            None => Ok((data, shape)),
        }
    }
    fn contains(&self, name: &str) -> bool {
        gguf_name(name).is_some_and(|g| self.file.tensors.contains_key(&g))
    }
    fn int4(&self, name: &str) -> Result<Option<QuantTensor>> {
        if !self.native_int4 {
            return Ok(None);
        }
        let Some(info) = self.weight_info(name) else {
            return Ok(None);
        };
        let [n, k] = info.shape[..] else { return Ok(None) };
        let Some(mut host) = quantized::from_gguf(name, info.dtype, self.file.raw(info), k, n)? else {
            return Ok(None);
        };
        let heads = match (self.unpermute, name.rsplit('.').next()) {
            (Some((nh, _)), Some("q_proj")) => Some(nh),
            (Some((_, nkv)), Some("k_proj")) => Some(nkv),
            _ => None,
        };
        if let Some(h) = heads {
            // Output rows are int4 columns: move columns (and their scales) as unpermute_rows moves rows.
            let order = unpermute_order(h, n)?;
            host = quantized::permute_columns(&host, &order);
        }
        Ok(Some(QuantTensor { host, perm: None }))
    }
    fn int4_group(&self, name: &str) -> Option<usize> {
        quantized::gguf_int4_group(self.weight_info(name)?.dtype).filter(|_| self.native_int4)
    }
}

impl GgufSource<'_> {
    /// The GGUF tensor holding linear layer `name`'s weight (`name` without `.weight`).
    fn weight_info(&self, name: &str) -> Option<&crate::gguf::TensorInfo> {
        gguf_name(&format!("{name}.weight")).and_then(|g| self.file.tensors.get(&g))
    }
}

/// Where unpermute_rows takes each output row from: out[dst] = stored[order[dst]].
fn unpermute_order(n_head: usize, rows: usize) -> Result<Vec<usize>> {
    let idx: Vec<f32> = (0..rows).map(|r| r as f32).collect();
    Ok(unpermute_rows(&idx, n_head, rows, 1)?.into_iter().map(|v| v as usize).collect())
}

// ---------------------------------------------------------------------------------------------
// safetensors (one file or an index of shards)

pub struct SafetensorsSource {
    shards: Vec<(PathBuf, Mmap, usize)>,
    /// name -> (shard index, info)
    index: HashMap<String, (usize, TensorInfo)>,
    /// How int4 layers are stored, for quantized checkpoints.
    pub quant: Option<CheckpointQuant>,
}

impl SafetensorsSource {
    pub fn open_dir(dir: &Path) -> Result<Self> {
        let single = dir.join("model.safetensors");
        let index_path = dir.join("model.safetensors.index.json");
        let files: Vec<PathBuf> = if index_path.exists() {
            let text = std::fs::read_to_string(&index_path).map_err(|e| Error::io(&index_path, e))?;
            let v: serde_json::Value = serde_json::from_str(&text)
                .map_err(|e| Error::Safetensors(format!("{}: {e}", index_path.display())))?;
            let map = v.get("weight_map").and_then(|m| m.as_object()).ok_or_else(|| {
                Error::Safetensors(format!("{}: no weight_map", index_path.display()))
            })?;
            let mut files: Vec<String> = map.values().filter_map(|f| f.as_str().map(String::from)).collect();
            files.sort();
            files.dedup();
            files.into_iter().map(|f| dir.join(f)).collect()
        } else if single.exists() {
            vec![single]
        } else {
            return Err(Error::Safetensors(format!(
                "{}: neither model.safetensors nor model.safetensors.index.json",
                dir.display()
            )));
        };
        Self::open_files(&files)
    }

    pub fn open_files(files: &[PathBuf]) -> Result<Self> {
        let mut shards = Vec::new();
        let mut index = HashMap::new();
        for (i, path) in files.iter().enumerate() {
            let f = std::fs::File::open(path).map_err(|e| Error::io(path, e))?;
            // SAFETY: read-only mapping of a file we do not modify.
            let mmap = unsafe { Mmap::map(&f) }.map_err(|e| Error::io(path, e))?;
            let (n, meta) = SafeTensors::read_metadata(&mmap)
                .map_err(|e| Error::Safetensors(format!("{}: {e}", path.display())))?;
            for (name, info) in meta.tensors() {
                index.insert(name, (i, info.clone()));
            }
            shards.push((path.clone(), mmap, 8 + n));
        }
        Ok(Self { shards, index, quant: None })
    }

    fn bytes(&self, name: &str) -> Result<(&Path, &[u8], &TensorInfo)> {
        let (shard, info) = self.index.get(name).ok_or_else(|| Error::MissingTensor(name.into()))?;
        let (path, mmap, data_start) = &self.shards[*shard];
        let (s, e) = info.data_offsets;
        Ok((path, &mmap[data_start + s..data_start + e], info))
    }

    /// An int32 tensor (packed int4 words, g_idx).
    pub fn tensor_i32(&self, name: &str) -> Result<(Vec<i32>, Vec<usize>)> {
        let (path, bytes, info) = self.bytes(name)?;
        if info.dtype != Dtype::I32 {
            return Err(Error::Safetensors(format!("{}: {name} is {:?}, expected I32 (packed int4)", path.display(), info.dtype)));
        }
        Ok((bytes.chunks_exact(4).map(|b| i32::from_le_bytes(b.try_into().unwrap())).collect(), info.shape.clone()))
    }
}

impl SafetensorsSource {
    /// A tensor written in parts along its first dimension (`NAME.part0`, ...; see
    /// `checkpoint::write_sharded`), joined.
    fn joined_parts(&self, name: &str) -> Result<HostTensor> {
        let mut data = Vec::new();
        let mut shape: Option<Vec<usize>> = None;
        for i in 0.. {
            let part = format!("{name}.part{i}");
            if !self.index.contains_key(&part) {
                break;
            }
            let (v, s) = self.tensor(&part)?;
            match &mut shape {
                None => shape = Some(s),
                Some(sh) if sh.len() == s.len() && !s.is_empty() && sh[1..] == s[1..] => sh[0] += s[0],
                Some(sh) => return Err(Error::Shape { name: part, expected: sh.clone(), found: s }),
            }
            data.extend(v);
        }
        shape.map(|s| (data, s)).ok_or_else(|| Error::MissingTensor(name.into()))
    }
}

impl WeightSource for SafetensorsSource {
    fn tensor(&self, name: &str) -> Result<HostTensor> {
        if !self.index.contains_key(name) {
            return self.joined_parts(name);
        }
        let (shard, info) = self.index.get(name).ok_or_else(|| Error::MissingTensor(name.into()))?;
        let (path, mmap, data_start) = &self.shards[*shard];
        let (s, e) = info.data_offsets;
        let bytes = &mmap[data_start + s..data_start + e];
        let data: Vec<f32> = match info.dtype {
            Dtype::F32 => bytes.chunks_exact(4).map(|b| f32::from_le_bytes(b.try_into().unwrap())).collect(),
            Dtype::F16 => bytes.chunks_exact(2).map(|b| f16::from_le_bytes([b[0], b[1]]).to_f32()).collect(),
            Dtype::BF16 => bytes.chunks_exact(2).map(|b| bf16::from_le_bytes([b[0], b[1]]).to_f32()).collect(),
            other => {
                return Err(Error::Unsupported(format!("{}: tensor {name} has dtype {other:?}", path.display())))
            }
        };
        Ok((data, info.shape.clone()))
    }
    fn contains(&self, name: &str) -> bool {
        self.index.contains_key(name) || self.index.contains_key(&format!("{name}.part0"))
    }
    fn int4(&self, name: &str) -> Result<Option<QuantTensor>> {
        let qweight = format!("{name}.qweight");
        if !self.index.contains_key(&qweight) {
            return Ok(None);
        }
        let q = self.quant.as_ref().ok_or_else(|| Error::Config(format!("{qweight} found but config.json has no quantization_config")))?;
        let (words, wshape) = self.tensor_i32(&qweight)?;
        let (zeros, _) = self.tensor_i32(&format!("{name}.qzeros"))?;
        let (scales, sshape) = self.tensor(&format!("{name}.scales"))?;
        let [rows, cols] = wshape[..] else { return Err(Error::Safetensors(format!("{qweight}: shape {wshape:?} is not 2-D"))) };
        let (k, n) = match q.method {
            QuantMethod::Gptq { .. } => (rows * 8, cols),
            QuantMethod::Awq => (rows, cols * 8),
        };
        // The scales say the output width and the number of groups.
        if sshape.len() != 2 || sshape[1] != n || sshape[0] == 0 || k % sshape[0] != 0 {
            return Err(Error::Safetensors(format!("{name}.scales: shape {sshape:?} does not fit a [{k}, {n}] int4 weight")));
        }
        // The config's group size, or one group over the whole row where it does not divide the
        // layer's input (as our writer does); the scales must agree.
        let group = match q.group {
            Some(g) if k % g == 0 => g,
            _ => k,
        };
        if sshape[0] != k / group {
            let said = q.group.map_or("-1 (whole row)".to_string(), |g| g.to_string());
            return Err(Error::Safetensors(format!(
                "{name}.scales: {} groups, but group size {said} over {k} inputs gives {}",
                sshape[0],
                k / group
            )));
        }
        match q.method {
            QuantMethod::Gptq { v1 } => {
                let g_idx = match self.index.contains_key(&format!("{name}.g_idx")) {
                    true => Some(self.tensor_i32(&format!("{name}.g_idx"))?.0),
                    false => None,
                };
                quantized::from_gptq(name, &words, &zeros, &scales, g_idx.as_deref(), (k, n, group), v1, q.sym).map(Some)
            }
            QuantMethod::Awq => quantized::from_awq(name, &words, &zeros, &scales, (k, n, group)).map(Some),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_map_to_gguf() {
        assert_eq!(gguf_name("model.layers.3.self_attn.q_proj.bias").unwrap(), "blk.3.attn_q.bias");
        assert_eq!(gguf_name("model.layers.12.mlp.down_proj.weight").unwrap(), "blk.12.ffn_down.weight");
        assert_eq!(gguf_name("lm_head.weight").unwrap(), "output.weight");
        assert!(gguf_name("model.layers.0.foo.weight").is_none());
    }

    #[test]
    fn unpermute_inverts_the_llama_permutation() {
        // permute as convert_hf_to_gguf does: reshape(n_head, 2, half, cols).swapaxes(1, 2)
        let (n_head, rows, cols) = (2, 8, 3);
        let half = rows / n_head / 2;
        let orig: Vec<f32> = (0..rows * cols).map(|x| x as f32).collect();
        let mut permuted = vec![0f32; orig.len()];
        for h in 0..n_head {
            for j in 0..2 {
                for i in 0..half {
                    let src = (h * 2 * half + j * half + i) * cols;
                    let dst = (h * half * 2 + i * 2 + j) * cols;
                    permuted[dst..dst + cols].copy_from_slice(&orig[src..src + cols]);
                }
            }
        }
        assert_eq!(unpermute_rows(&permuted, n_head, rows, cols).unwrap(), orig);
    }
}

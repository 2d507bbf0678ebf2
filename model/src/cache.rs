//! Preallocated per-layer KV cache. Rows are cache slots, independent of RoPE positions: a tree's
//! nodes occupy consecutive rows while their positions are `root + depth`. Writing new rows is a
//! write into the owned buffer (a slice-assign, or the fused RoPE kernel writing in place), never a
//! concatenation.

use burn::tensor::{Device, Int, Tensor, TensorData};

use hierspec_kernels::start::CacheStart;

use crate::config::LlamaConfig;
use crate::error::{Error, Result};

pub struct LayerKv {
    /// [batch, kv_heads, capacity, head_dim]
    pub k: Tensor<4>,
    pub v: Tensor<4>,
}

impl LayerKv {
    /// A second handle on the same buffers (a captured graph writes the cache through it).
    pub fn share(&self) -> Self {
        Self { k: self.k.clone(), v: self.v.clone() }
    }
}

pub struct KvCache {
    pub layers: Vec<LayerKv>,
    /// Rows [0, len) hold valid entries.
    len: usize,
    capacity: usize,
    /// `len` as the kernels read it (on the device), brought up to date by [`KvCache::start`].
    start: CacheStart,
}

impl KvCache {
    pub fn new(cfg: &LlamaConfig, batch: usize, capacity: usize, device: &Device) -> Self {
        let shape = [batch, cfg.num_key_value_heads, capacity, cfg.head_dim];
        let layers = (0..cfg.num_hidden_layers)
            .map(|_| LayerKv { k: Tensor::zeros(shape, device), v: Tensor::zeros(shape, device) })
            .collect();
        Self { layers, len: 0, capacity, start: CacheStart::new(0, device) }
    }

    /// Where the next forward's rows begin, its device copy brought up to date (a 4-byte write when
    /// the length changed since the last forward).
    pub fn start(&mut self) -> CacheStart {
        if self.start.rows != self.len {
            self.start.set(self.len);
        }
        self.start.clone()
    }

    pub fn len(&self) -> usize {
        self.len
    }
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }
    pub fn capacity(&self) -> usize {
        self.capacity
    }

    /// Drop every row at or after `len` (they become stale and are overwritten by later writes).
    pub fn truncate(&mut self, len: usize) {
        self.len = self.len.min(len);
    }

    /// Keep the cache rows `rows` (ascending, each in [start, len)) by moving them to
    /// [start, start + rows.len()) in every layer, then drop everything after: the compaction after a
    /// tree verification, where `rows` are the accepted path's rows. Runs on the device.
    pub fn keep_rows(&mut self, start: usize, rows: &[usize]) -> Result<()> {
        if start > self.len || rows.windows(2).any(|w| w[0] >= w[1]) || rows.iter().any(|&r| r < start || r >= self.len) {
            return Err(Error::Setting(format!(
                "keep_rows: rows {rows:?} must be ascending and within [{start}, {})",
                self.len
            )));
        }
        let already_in_place = rows.iter().enumerate().all(|(i, &r)| r == start + i);
        if !already_in_place && !self.layers.is_empty() {
            let idx: Vec<i64> = rows.iter().map(|&r| r as i64).collect();
            let idx = Tensor::<1, Int>::from_data(TensorData::new(idx, [rows.len()]), &self.layers[0].k.device());
            for layer in &mut self.layers {
                hierspec_kernels::fused::keep_rows(&mut layer.k, &mut layer.v, start, &idx);
            }
        }
        self.len = start + rows.len();
        Ok(())
    }

    /// Mark `n` rows written by the layers of the last forward as valid.
    pub fn advance(&mut self, n: usize) {
        self.len += n;
        debug_assert!(self.len <= self.capacity);
    }
}

impl LayerKv {
    /// Write `k`, `v` ([batch, kv_heads, n, head_dim]) at rows [start, start + n). (The decoder writes
    /// its rows through `Rope::qkv`, fused with RoPE.)
    pub fn write(&mut self, start: usize, k: Tensor<4>, v: Tensor<4>) {
        let [b, h, n, d] = k.dims();
        self.k.inplace(|c| c.slice_assign([0..b, 0..h, start..start + n, 0..d], k));
        self.v.inplace(|c| c.slice_assign([0..b, 0..h, start..start + n, 0..d], v));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use burn::tensor::Device;

    fn rows_of(c: &KvCache, layer: usize) -> Vec<f32> {
        let [_, _, _, d] = c.layers[layer].k.dims();
        c.layers[layer].k.clone().slice([0..1, 0..1, 0..c.len(), 0..d]).into_data().iter::<f32>().collect()
    }

    #[test]
    fn keep_rows_gathers_the_path_and_truncates() {
        let cfg = LlamaConfig::preset("qwen2.5-coder-0.5b").unwrap();
        let cfg = LlamaConfig { num_hidden_layers: 2, num_key_value_heads: 1, head_dim: 2, ..cfg };
        let device = Device::flex();
        let mut c = KvCache::new(&cfg, 1, 16, &device);
        // row r holds (r, -r) in layer 0 and (10 r, -10 r) in layer 1
        for (l, scale) in [(0usize, 1.0f32), (1, 10.0)] {
            let vals: Vec<f32> = (0..9).flat_map(|r| [r as f32 * scale, -(r as f32) * scale]).collect();
            let t = Tensor::<4>::from_data(TensorData::new(vals, [1, 1, 9, 2]), &device);
            c.layers[l].write(0, t.clone(), t);
        }
        c.advance(9);
        c.keep_rows(4, &[4, 6, 7]).unwrap();
        assert_eq!(c.len(), 7);
        assert_eq!(rows_of(&c, 0), vec![0., -0., 1., -1., 2., -2., 3., -3., 4., -4., 6., -6., 7., -7.]);
        assert_eq!(rows_of(&c, 1)[8..], [40., -40., 60., -60., 70., -70.]);
        c.truncate(5);
        assert_eq!(c.len(), 5);
        assert!(c.keep_rows(2, &[3, 3]).is_err());
        assert!(c.keep_rows(2, &[1]).is_err());
        assert!(c.keep_rows(2, &[5]).is_err());
    }
}

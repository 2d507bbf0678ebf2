//! Preallocated per-layer KV cache. Rows are cache slots, independent of RoPE positions: a tree's
//! nodes occupy consecutive rows while their positions are `root + depth`. Writing new rows is a
//! slice-assign into the owned buffer (in place when the buffer is not shared), never a concatenation.

use burn::tensor::{backend::Backend, Tensor};

use crate::config::LlamaConfig;

pub struct LayerKv<B: Backend> {
    /// [batch, kv_heads, capacity, head_dim]
    pub k: Tensor<B, 4>,
    pub v: Tensor<B, 4>,
}

pub struct KvCache<B: Backend> {
    pub layers: Vec<LayerKv<B>>,
    /// Rows [0, len) hold valid entries.
    len: usize,
    capacity: usize,
}

impl<B: Backend> KvCache<B> {
    pub fn new(cfg: &LlamaConfig, batch: usize, capacity: usize, device: &B::Device) -> Self {
        let shape = [batch, cfg.num_key_value_heads, capacity, cfg.head_dim];
        let layers = (0..cfg.num_hidden_layers)
            .map(|_| LayerKv { k: Tensor::zeros(shape, device), v: Tensor::zeros(shape, device) })
            .collect();
        Self { layers, len: 0, capacity }
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

    /// Mark `n` rows written by the layers of the last forward as valid.
    pub(crate) fn advance(&mut self, n: usize) {
        self.len += n;
        debug_assert!(self.len <= self.capacity);
    }
}

impl<B: Backend> LayerKv<B> {
    /// Write `k`, `v` ([batch, kv_heads, n, head_dim]) at rows [start, start + n) and return views of
    /// rows [0, start + n).
    pub fn write(&mut self, start: usize, k: Tensor<B, 4>, v: Tensor<B, 4>) -> (Tensor<B, 4>, Tensor<B, 4>) {
        let [b, h, n, d] = k.dims();
        let end = start + n;
        self.k.inplace(|c| c.slice_assign([0..b, 0..h, start..end, 0..d], k));
        self.v.inplace(|c| c.slice_assign([0..b, 0..h, start..end, 0..d], v));
        (self.k.clone().slice([0..b, 0..h, 0..end, 0..d]), self.v.clone().slice([0..b, 0..h, 0..end, 0..d]))
    }
}

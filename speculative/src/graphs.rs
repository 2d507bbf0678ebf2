//! Replayed forwards: the causal forwards a decode loop repeats (the AR step, a draft model's step,
//! sequence verification), each captured once per shape as a CUDA graph and replayed after that, so
//! that a forward costs one dispatch on the host instead of ~150 kernel launches.
//!
//! A graph replays the launches it recorded against the buffers it recorded, with the scalars it
//! recorded. So everything that changes between replays lives in device buffers written in place
//! before each replay: the token ids and positions (one pair of buffers per shape), and the cache
//! length ([`CacheStart`], which the RoPE cache write and attention read on the device). What is left
//! in the launches is the shape: the rows (padded up to a bucket), and the attention kernel's segment
//! count, which grows with the cache ([`SEGMENT`] keys each). Those are the key.
//!
//! Padding is exact: a padded row's k and v land past the rows the cache keeps, and under the causal
//! mask no real row sees a padded one; every product is batch-invariant, so the real rows get the
//! bits of the unpadded forward.
//!
//! On devices without kernels (Flex, autodiff) nothing is captured and the caller runs its forward
//! eagerly. On wgpu burn has no graphs: capture runs the closure, and a replay runs it again, which
//! is how CI tests this path.

use std::collections::HashMap;

use burn::tensor::{capture, Device, Graph, Int, Tensor, TensorData};
use hierspec_kernels::attention::SEGMENT;
use hierspec_kernels::start::CacheStart;
use hierspec_model::cache::LayerKv;
use hierspec_model::{AttnMask, ForwardOutput, KvCache, Llama, LogitsFor};

/// Row buckets: a forward of n rows replays the graph of the smallest bucket >= n.
pub const BUCKETS: [usize; 7] = [1, 2, 4, 8, 16, 32, 64];

/// What a graph's launches depend on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Key {
    /// Rows, padded up to a bucket.
    pub rows: usize,
    pub logits_for: LogitsFor,
    /// Attention segments of the forward's keys (cache rows + `rows`).
    pub segments: usize,
}

impl Key {
    /// The graph a forward of `n` rows after `cache_len` rows replays, or `None` for a forward no
    /// graph serves: more rows than the largest bucket, a prompt (it runs once), or padding that
    /// would run past the cache's `capacity`. Padded forwards compute every row's logits (the last
    /// real row is not the last row), so the last row's logits of n > 1 rows come from those.
    pub fn of(n: usize, cache_len: usize, logits_for: LogitsFor, capacity: usize) -> Option<Self> {
        let rows = *BUCKETS.iter().find(|&&b| b >= n)?;
        if n == 0 || cache_len == 0 || cache_len + rows > capacity {
            return None;
        }
        let logits_for = if rows > 1 { LogitsFor::All } else { logits_for };
        Some(Self { rows, logits_for, segments: (cache_len + rows).div_ceil(SEGMENT) })
    }
}

type Forward<'a> = Box<dyn FnMut() -> ForwardOutput + 'a>;

/// One captured forward and the input buffers it reads.
struct Entry<'a> {
    tokens: Tensor<2, Int>,
    positions: Tensor<1, Int>,
    graph: Graph<ForwardOutput, Forward<'a>>,
}

/// The graphs of one model over one cache.
pub struct Graphs<'a> {
    enabled: bool,
    entries: HashMap<Key, Entry<'a>>,
    /// Graphs captured, and how many replay as one dispatch (the rest re-run their closure).
    pub captured: usize,
    pub hardware: usize,
}

impl<'a> Graphs<'a> {
    /// Graphs on `device` where its tensors take the cubecl kernels (whose launches read the cache
    /// length on the device).
    pub fn new(device: &Device) -> Self {
        Self { enabled: hierspec_kernels::has_kernels(device), entries: HashMap::new(), captured: 0, hardware: 0 }
    }

    /// No graphs: every forward eager.
    pub fn disabled() -> Self {
        Self { enabled: false, entries: HashMap::new(), captured: 0, hardware: 0 }
    }

    pub fn is_enabled(&self) -> bool {
        self.enabled
    }

    /// `ids` causally after the cache, by replaying (or capturing) the graph of its [`Key`]; `None`
    /// where no graph serves it (the caller runs it eagerly). The output is the graph's own buffer:
    /// valid until the next forward of this model (enqueue its reads before that).
    pub fn forward(&mut self, model: &'a Llama, cache: &mut KvCache, ids: &[u32], logits_for: LogitsFor) -> Option<ForwardOutput> {
        if !self.enabled {
            return None;
        }
        let (n, cache_len) = (ids.len(), cache.len());
        let key = Key::of(n, cache_len, logits_for, cache.capacity())?;
        let device = model.embed_tokens.device();
        // Pad with the last id at the next positions: rows the cache drops and no real row sees.
        let padded: Vec<i32> = (0..key.rows).map(|i| ids[i.min(n - 1)] as i32).collect();
        let positions: Vec<i32> = (0..key.rows).map(|i| (cache_len + i) as i32).collect();
        // The cache length on the device, written for this forward (the graph reads it there).
        let start = cache.start();
        let entry = match self.entries.get_mut(&key) {
            Some(entry) => {
                write(&entry.tokens, &padded);
                write(&entry.positions, &positions);
                entry
            }
            None => {
                let entry = capture_entry(model, cache, key, &start, &padded, &positions, &device);
                self.captured += 1;
                self.hardware += entry.graph.is_hardware() as usize;
                if !entry.graph.is_hardware() && self.captured - self.hardware == 1 {
                    eprintln!("graphs: a capture on {device:?} gave no device graph; its replays re-run the forward's launches");
                }
                self.entries.entry(key).or_insert(entry)
            }
        };
        // SAFETY: the graph recorded buffers that its closure owns (inputs, mask, the cache layers'
        // handles, the start buffer) or that the model owns for 'a; the replay is enqueued on this
        // thread's stream after the input writes above, and its output is read on the same stream.
        let out = unsafe { entry.graph.replay() }.clone();
        cache.advance(n);
        Some(trim(out, n, key.rows, logits_for))
    }
}

/// Capture the forward of `key` over `cache`'s buffers, its inputs written first.
fn capture_entry<'a>(model: &'a Llama, cache: &KvCache, key: Key, start: &CacheStart, ids: &[i32], positions: &[i32], device: &Device) -> Entry<'a> {
    let tokens = Tensor::<2, Int>::from_data(TensorData::new(ids.to_vec(), [1, key.rows]), device);
    let pos = Tensor::<1, Int>::from_data(TensorData::new(positions.to_vec(), [key.rows]), device);
    let mask = (key.rows > 1).then(|| AttnMask::causal(start.rows, key.rows, device));
    let mut layers: Vec<LayerKv> = cache.layers.iter().map(LayerKv::share).collect();
    let (t, p, start) = (tokens.clone(), pos.clone(), start.clone());
    let logits_for = key.logits_for;
    let forward: Forward<'a> = Box::new(move || model.forward_at(t.clone(), p.clone(), &start, &mut layers, mask.as_ref(), logits_for));
    Entry { tokens, positions: pos, graph: capture(device, forward) }
}

/// Write `values` into an input buffer in place.
fn write<const D: usize>(t: &Tensor<D, Int>, values: &[i32]) {
    assert!(hierspec_kernels::start::write_ints(t, values), "graph inputs live on a cubecl device");
}

/// The real rows of a forward padded to `rows` rows: the first `n`, and their logits as asked.
fn trim(out: ForwardOutput, n: usize, rows: usize, logits_for: LogitsFor) -> ForwardOutput {
    if rows == 1 {
        return out;
    }
    let [b, _, v] = out.logits.dims();
    let [_, _, h] = out.hidden.dims();
    let logits = match logits_for {
        LogitsFor::All => out.logits.slice([0..b, 0..n, 0..v]),
        LogitsFor::Last => out.logits.slice([0..b, n - 1..n, 0..v]),
    };
    ForwardOutput { logits, hidden: out.hidden.slice([0..b, 0..n, 0..h]) }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_pad_to_buckets_and_count_segments() {
        let k = Key::of(1, 10, LogitsFor::Last, 100).unwrap();
        assert_eq!((k.rows, k.segments), (1, 1));
        let k = Key::of(5, 600, LogitsFor::All, 1000).unwrap();
        assert_eq!((k.rows, k.segments), (8, 2));
        // Keys exactly at a segment boundary stay in the lower count.
        assert_eq!(Key::of(1, SEGMENT - 1, LogitsFor::Last, 2 * SEGMENT).unwrap().segments, 1);
        assert_eq!(Key::of(1, SEGMENT, LogitsFor::Last, 2 * SEGMENT).unwrap().segments, 2);
        assert_eq!(Key::of(64, 1, LogitsFor::All, 65).unwrap().rows, 64);
        // A catch-up of two rows keeps every row's logits (its last row is not the bucket's last).
        assert_eq!(Key::of(2, 9, LogitsFor::Last, 100).unwrap().logits_for, LogitsFor::All);
        assert_eq!(Key::of(1, 9, LogitsFor::Last, 100).unwrap().logits_for, LogitsFor::Last);
    }

    #[test]
    fn forwards_no_graph_serves_are_refused() {
        assert_eq!(Key::of(65, 3, LogitsFor::All, 1000), None, "past the largest bucket");
        assert_eq!(Key::of(3, 0, LogitsFor::Last, 1000), None, "a prompt");
        assert_eq!(Key::of(3, 95, LogitsFor::All, 98), None, "padding past the capacity");
        assert!(Key::of(3, 94, LogitsFor::All, 98).is_some());
        assert_eq!(Key::of(0, 5, LogitsFor::All, 10), None);
    }
}

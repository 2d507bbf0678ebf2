//! Replayed forwards: the forwards a decode loop repeats (the AR step, a draft model's step, sequence
//! and tree verification, the EAGLE head's steps), each captured once per shape as a CUDA graph and
//! replayed after that, so that a forward costs one dispatch on the host instead of ~150 launches.
//!
//! A graph replays the launches it recorded against the buffers it recorded, with the scalars it
//! recorded. So everything that changes between replays lives in device buffers written in place
//! before each replay ([`Inputs`]): the token ids and positions, which new rows each new row sees
//! (the mask's device list: causal, or a tree's ancestors), the input features of a head, and the
//! cache length ([`CacheStart`], which the RoPE cache write and attention read on the device). What
//! is left in the launches is the shape: the rows (padded up to a bucket), the masked key columns,
//! and the attention kernel's segment count, which grows with the cache ([`SEGMENT`] keys each).
//! Those are the [`Key`].
//!
//! Padding is exact: a padded row's k and v land past the rows the cache keeps, and no real row sees
//! a padded one (each padded row sees only itself); every product is batch-invariant, so the real
//! rows get the bits of the unpadded forward.
//!
//! On devices without kernels (Flex, autodiff) nothing is captured and the caller runs its forward
//! eagerly. On wgpu burn has no graphs: capture runs the closure, and a replay runs it again, which
//! is how CI tests this path.

use std::collections::HashMap;

use burn::tensor::{capture, Device, Graph, Int, Tensor};
use hierspec_kernels::attention::{visible_list, SEGMENT};
use hierspec_kernels::start::{contiguous_ints, contiguous_zeros, copy_rows, write_ints, CacheStart};
use hierspec_model::cache::LayerKv;
use hierspec_model::{AttnMask, ForwardOutput, KvCache, Llama, LogitsFor};

/// Row buckets: a forward of n rows replays the graph of the smallest bucket >= n.
pub const BUCKETS: [usize; 7] = [1, 2, 4, 8, 16, 32, 64];

/// What a graph's launches depend on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Key {
    /// Rows, padded up to a bucket.
    pub rows: usize,
    /// Masked key columns (the new rows, after any earlier draft rows the mask covers); 0 for one
    /// causal row, which sees every key.
    pub cols: usize,
    pub logits_for: LogitsFor,
    /// Attention segments of the forward's keys (cache rows + `rows`).
    pub segments: usize,
}

impl Key {
    /// The graph a forward of `n` rows after `cache_len` cached rows replays, where the mask covers
    /// the keys from row `prefix` on (`prefix == cache_len`: the new rows only). `None` for a forward
    /// no graph serves: more rows than the largest bucket, a prompt (it runs once), or padding that
    /// would run past the cache's `capacity`. Padded forwards compute every row's logits (the last
    /// real row is not the last row), so the last row's logits of n > 1 rows come from those.
    pub fn of(n: usize, cache_len: usize, prefix: usize, logits_for: LogitsFor, capacity: usize) -> Option<Self> {
        let rows = *BUCKETS.iter().find(|&&b| b >= n)?;
        if n == 0 || cache_len == 0 || prefix > cache_len || cache_len + rows > capacity {
            return None;
        }
        let cols = if rows == 1 && prefix == cache_len { 0 } else { cache_len - prefix + rows };
        let logits_for = if rows > 1 { LogitsFor::All } else { logits_for };
        Some(Self { rows, cols, logits_for, segments: (cache_len + rows).div_ceil(SEGMENT) })
    }
}

/// The buffers a graph reads, written in place before each replay.
#[derive(Clone)]
pub struct Inputs {
    /// [1, rows]
    pub tokens: Tensor<2, Int>,
    /// [rows]
    pub positions: Tensor<1, Int>,
    /// [1, rows, hidden] for a head's forward (its input features), else `None`.
    pub features: Option<Tensor<3>>,
    /// The cache length.
    pub start: CacheStart,
}

/// One forward to run: `n` new rows after the cache.
pub struct Request<'r> {
    pub ids: &'r [u32],
    /// Each row's position.
    pub positions: Vec<usize>,
    /// Where the mask's columns begin (the cache length for a forward masked over its own rows).
    pub prefix: usize,
    /// Row-major [n, cols], cols = cache length - prefix + n: new row i sees key `prefix + j`.
    /// `None`: causal (then `prefix` is the cache length).
    pub sees: Option<&'r [bool]>,
    /// [n, hidden]: a head's input features.
    pub features: Option<Tensor<2>>,
    pub logits_for: LogitsFor,
}

impl<'r> Request<'r> {
    /// `ids` causally after `cache_len` rows, at the next positions.
    pub fn causal(ids: &'r [u32], cache_len: usize, logits_for: LogitsFor) -> Self {
        let positions = (cache_len..cache_len + ids.len()).collect();
        Self { ids, positions, prefix: cache_len, sees: None, features: None, logits_for }
    }
}

/// Builds the forward a graph records: from its input buffers, the mask over its rows (when it
/// has more than one column), and handles on the cache layers it writes.
pub type Build<'a, O> = dyn Fn(Key, &Inputs, Option<AttnMask>, Vec<LayerKv>) -> Box<dyn FnMut() -> O + 'a> + 'a;

/// One captured forward, its input buffers, and the mask list it last wrote.
struct Entry<'a, O> {
    inputs: Inputs,
    visible: Option<(Tensor<2, Int>, Vec<i32>)>,
    graph: Graph<O, Box<dyn FnMut() -> O + 'a>>,
}

/// The graphs of one model over one cache. `O`: what a forward returns (the base model's
/// [`ForwardOutput`], or a head's features and top-k).
pub struct Graphs<'a, O = ForwardOutput> {
    enabled: bool,
    entries: HashMap<Key, Entry<'a, O>>,
    /// Graphs captured, and how many replay as one dispatch (the rest re-run their closure).
    pub captured: usize,
    pub hardware: usize,
}

impl<'a, O: Clone> Graphs<'a, O> {
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

    /// Run `req` by replaying (or capturing) the graph of its [`Key`], `build` making the forward
    /// at a capture; `None` where no graph serves it (the caller runs it eagerly). Returns the key
    /// (its padded rows) and the graph's output, the graph's own buffers: valid until its next
    /// replay (enqueue their reads before that). The cache advances by the real rows.
    pub fn run(&mut self, cache: &mut KvCache, req: Request, build: &Build<'a, O>) -> Option<(Key, O)> {
        if !self.enabled {
            return None;
        }
        let (n, cache_len) = (req.ids.len(), cache.len());
        let key = Key::of(n, cache_len, req.prefix, req.logits_for, cache.capacity())?;
        let (rows, cols) = (key.rows, key.cols);
        // Padding rows: the last id at the next rows' positions, each seeing only itself.
        let tokens: Vec<i32> = (0..rows).map(|i| req.ids[i.min(n - 1)] as i32).collect();
        let positions: Vec<i32> = (0..rows).map(|i| req.positions.get(i).copied().unwrap_or(cache_len + i) as i32).collect();
        let own = cache_len - req.prefix; // the column of new row 0
        let real_cols = own + n;
        let sees: Vec<bool> = (0..rows * cols)
            .map(|k| {
                let (i, j) = (k / cols, k % cols);
                match (i < n, req.sees) {
                    (true, Some(sees)) => j < real_cols && sees[i * real_cols + j],
                    (true, None) => j >= own && j <= own + i,
                    (false, _) => j == own + i,
                }
            })
            .collect();
        let visible = (cols > 0).then(|| visible_list(rows, cols, |i, j| sees[i * cols + j]));
        let start = cache.start();
        let device = start.device.device();
        if !self.entries.contains_key(&key) {
            let mask = (cols > 0).then(|| AttnMask::new(req.prefix, rows, cols, &sees, &device));
            let entry = capture_entry(cache, key, &start, &tokens, &positions, mask, req.features.as_ref(), &device, build);
            self.captured += 1;
            self.hardware += entry.graph.is_hardware() as usize;
            if !entry.graph.is_hardware() && self.captured - self.hardware == 1 {
                eprintln!("graphs: a capture on {device:?} gave no device graph; its replays re-run the forward's launches");
            }
            self.entries.insert(key, entry);
        }
        let entry = self.entries.get_mut(&key).expect("captured above");
        write(&entry.inputs.tokens, &tokens);
        write(&entry.inputs.positions, &positions);
        if let (Some((buffer, written)), Some(list)) = (entry.visible.as_mut(), visible) {
            // A causal mask is the same every replay: written once.
            if *written != list {
                write(buffer, &list);
                *written = list;
            }
        }
        if let (Some(buffer), Some(f)) = (&entry.inputs.features, &req.features) {
            assert!(copy_rows(buffer, f), "graph inputs live on a cubecl device");
        }
        // SAFETY: the graph recorded buffers that its closure owns (inputs, mask, the cache layers'
        // handles, the start buffer) or that outlive 'a (the model's weights); the replay is
        // enqueued on this thread's stream after the input writes above, and its output is read on
        // the same stream.
        let out = unsafe { entry.graph.replay() }.clone();
        cache.advance(n);
        Some((key, out))
    }
}

impl<'a> Graphs<'a> {
    /// A base model's forward of `req` ([`Graphs::run`] with [`Llama::forward_at`]), the output cut
    /// to the real rows and the logits asked for.
    pub fn forward(&mut self, model: &'a Llama, cache: &mut KvCache, req: Request) -> Option<ForwardOutput> {
        let (n, logits_for) = (req.ids.len(), req.logits_for);
        let build = move |key: Key, inputs: &Inputs, mask: Option<AttnMask>, mut layers: Vec<LayerKv>| -> Box<dyn FnMut() -> ForwardOutput + 'a> {
            let (t, p, start) = (inputs.tokens.clone(), inputs.positions.clone(), inputs.start.clone());
            Box::new(move || model.forward_at(t.clone(), p.clone(), &start, &mut layers, mask.as_ref(), key.logits_for))
        };
        let (key, out) = self.run(cache, req, &build)?;
        Some(trim(out, n, key.rows, logits_for))
    }
}

/// Capture the forward of `key` over `cache`'s buffers, its inputs written first.
#[allow(clippy::too_many_arguments)]
fn capture_entry<'a, O>(
    cache: &KvCache,
    key: Key,
    start: &CacheStart,
    tokens: &[i32],
    positions: &[i32],
    mask: Option<AttnMask>,
    features: Option<&Tensor<2>>,
    device: &Device,
    build: &Build<'a, O>,
) -> Entry<'a, O> {
    let rows = key.rows;
    let features = features.map(|f| {
        let buffer = contiguous_zeros([1, rows, f.dims()[1]], f.dtype(), device);
        assert!(copy_rows(&buffer, f), "graph inputs live on a cubecl device");
        buffer
    });
    let inputs = Inputs {
        tokens: contiguous_ints(tokens.to_vec(), [1, rows], device),
        positions: contiguous_ints(positions.to_vec(), [rows], device),
        features,
        start: start.clone(),
    };
    // The mask's host bits stay those of the capture: the kernels read only its device list, which
    // a replay rewrites where it changed (the first one does).
    let visible = mask.as_ref().map(|m| (m.visible.clone(), Vec::new()));
    let layers: Vec<LayerKv> = cache.layers.iter().map(LayerKv::share).collect();
    let forward = build(key, &inputs, mask, layers);
    Entry { inputs, visible, graph: capture(device, forward) }
}

/// Write `values` into an input buffer in place.
fn write<const D: usize>(t: &Tensor<D, Int>, values: &[i32]) {
    assert!(write_ints(t, values), "graph inputs live on a cubecl device");
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
        let k = Key::of(1, 10, 10, LogitsFor::Last, 100).unwrap();
        assert_eq!((k.rows, k.cols, k.segments), (1, 0, 1));
        let k = Key::of(5, 600, 600, LogitsFor::All, 1000).unwrap();
        assert_eq!((k.rows, k.cols, k.segments), (8, 8, 2));
        // Keys exactly at a segment boundary stay in the lower count.
        assert_eq!(Key::of(1, SEGMENT - 1, SEGMENT - 1, LogitsFor::Last, 2 * SEGMENT).unwrap().segments, 1);
        assert_eq!(Key::of(1, SEGMENT, SEGMENT, LogitsFor::Last, 2 * SEGMENT).unwrap().segments, 2);
        assert_eq!(Key::of(64, 1, 1, LogitsFor::All, 65).unwrap().rows, 64);
        // A catch-up of two rows keeps every row's logits (its last row is not the bucket's last).
        assert_eq!(Key::of(2, 9, 9, LogitsFor::Last, 100).unwrap().logits_for, LogitsFor::All);
        assert_eq!(Key::of(1, 9, 9, LogitsFor::Last, 100).unwrap().logits_for, LogitsFor::Last);
    }

    #[test]
    fn masks_over_earlier_draft_rows_count_their_columns() {
        // A head's third tree level: 10 nodes after 20 draft rows of earlier levels.
        let k = Key::of(10, 120, 100, LogitsFor::All, 200).unwrap();
        assert_eq!((k.rows, k.cols), (16, 36));
        // One node after earlier draft rows still needs its mask.
        assert_eq!(Key::of(1, 120, 110, LogitsFor::All, 200).unwrap().cols, 11);
    }

    #[test]
    fn forwards_no_graph_serves_are_refused() {
        assert_eq!(Key::of(65, 3, 3, LogitsFor::All, 1000), None, "past the largest bucket");
        assert_eq!(Key::of(3, 0, 0, LogitsFor::Last, 1000), None, "a prompt");
        assert_eq!(Key::of(3, 95, 95, LogitsFor::All, 98), None, "padding past the capacity");
        assert!(Key::of(3, 94, 94, LogitsFor::All, 98).is_some());
        assert_eq!(Key::of(0, 5, 5, LogitsFor::All, 10), None);
        assert_eq!(Key::of(2, 5, 6, LogitsFor::All, 10), None, "a mask starting past the cache");
    }
}

//! Replayed forwards (`hierspec_speculative::graphs`) against eager ones, bit for bit: causal steps
//! and tree verifications of every row bucket, across an attention segment boundary, over many
//! replays, and an EAGLE head's catch-ups and tree levels (the trees it drafts). On CUDA (the GPU build,
//! `HIERSPEC_TEST_DTYPE` as the other tests) they are device graphs. In CI it runs on wgpu
//! (lavapipe), where burn captures no device graph: a capture runs the recorded closure and a
//! replay runs it again. That still covers all but the graph itself: the fixed input buffers
//! written in place, the cache length read on the device, padding, and one graph per shape.
#![cfg(any(feature = "wgpu", feature = "cuda"))]

use burn::tensor::{DType, Device, Tensor, TensorData};
use hierspec_kernels::attention::SEGMENT;
use hierspec_model::{EagleConfig, EagleHead, Llama, LlamaConfig, LogitsFor};
use hierspec_speculative::drafter::{observe_prompt, EagleDrafter, TreeDrafter};
use hierspec_speculative::graphs::Graphs;
use hierspec_speculative::tree::{DraftTree, TreeConfig};
use hierspec_speculative::verify::Runner;
use hierspec_tests::tiny_llama;

fn values(t: Tensor<2>) -> Vec<f32> {
    t.cast(DType::F32).into_data().iter::<f32>().collect()
}

/// Every forward's logits, and the graphs captured (all, and those replayed as device graphs), with
/// graphs on or off.
fn run(model: &Llama, cfg: &LlamaConfig, graphs: bool) -> (Vec<Vec<f32>>, usize, usize) {
    let capacity = cfg.max_position_embeddings;
    let mut r = Runner::new(model, cfg, capacity).unwrap();
    if !graphs {
        r.graphs = Graphs::disabled();
    }
    assert_eq!(r.graphs.is_enabled(), graphs, "graphs on a cubecl device");
    let vocab = cfg.vocab_size as u32;
    let id = |i: usize| (i as u32 * 37 + 11) % vocab;
    let mut out = Vec::new();
    // An eager prompt up to a few rows before the first segment boundary.
    let prompt: Vec<u32> = (0..SEGMENT - 3).map(id).collect();
    out.push(values(r.forward(&prompt, LogitsFor::Last)));
    // AR steps across the boundary: two graphs (one and two segments).
    for i in 0..6 {
        out.push(values(r.forward(&[id(1000 + i)], LogitsFor::Last)));
    }
    // Sequence verifications of every bucket (2, 3 -> 4, 5 -> 8, ..., 64), each followed by what
    // verification does to the cache: keep the first rows, drop the rest. The dropped rows and the
    // padding rows must not leak into later forwards.
    for (n, kept) in [(3, 2), (5, 1), (2, 2), (9, 4), (17, 1), (33, 7), (64, 3), (3, 3)] {
        let len = r.cache.len();
        let ids: Vec<u32> = (0..n).map(|j| id(2000 + len + j)).collect();
        out.push(values(r.forward(&ids, LogitsFor::All)));
        r.cache.truncate(len + kept);
    }
    // A draft model's catch-up: two rows, the last one's logits (the bucket-2 graph, sliced).
    out.push(values(r.forward(&[id(2500), id(2501)], LogitsFor::Last)));
    for i in 0..20 {
        out.push(values(r.forward(&[id(3000 + i)], LogitsFor::Last)));
    }
    (out, r.graphs.captured, r.graphs.hardware)
}

/// On CUDA every capture must give a device graph (elsewhere burn has none).
fn assert_device_graphs(captured: usize, on_device: usize) {
    if cfg!(all(feature = "cuda", not(feature = "cpu"))) {
        assert_eq!(on_device, captured, "every capture gives a CUDA graph");
    }
}

/// The replayed run's outputs equal the eager run's, bit for bit, one by one.
fn assert_same<T: PartialEq + std::fmt::Debug>(eager: &[T], replayed: &[T], what: &str) {
    assert_eq!(eager.len(), replayed.len(), "{what}: output count");
    for (i, (e, r)) in eager.iter().zip(replayed).enumerate() {
        assert_eq!(e, r, "{what} {i}: replayed differs from eager");
    }
}

/// wgpu in the CI build (Flex is its test device), the test device in the GPU build.
fn device() -> Device {
    #[cfg(feature = "cpu")]
    return Device::wgpu(burn::tensor::DeviceKind::default());
    #[cfg(not(feature = "cpu"))]
    hierspec_tests::device()
}

#[test]
fn replayed_forwards_equal_eager_ones() {
    let device = device();
    let cfg = LlamaConfig { max_position_embeddings: SEGMENT + 128, ..tiny_llama(97, 2) };
    let model = Llama::random(&cfg, cfg.max_position_embeddings, 7, &device).unwrap();
    let (eager, none, _) = run(&model, &cfg, false);
    let (replayed, captured, on_device) = run(&model, &cfg, true);
    assert_eq!(none, 0);
    assert_device_graphs(captured, on_device);
    // One row at 1 and 2 segments, then the buckets 2 to 64 at 2 segments.
    assert_eq!(captured, 8, "one graph per row bucket and segment count");
    assert_same(&eager, &replayed, "forward (logits)");
}

/// A tree of `n` nodes whose parents are spread over the earlier nodes (deep and wide branches).
fn tree(n: usize, seed: usize, vocab: u32) -> DraftTree {
    let parents: Vec<Option<usize>> = (0..n).map(|i| (i > 0).then(|| (i * 7 + seed) % i)).collect();
    let mut depths = vec![0; n];
    for i in 1..n {
        depths[i] = depths[parents[i].unwrap()] + 1;
    }
    let tokens = (0..n).map(|i| ((i * 31 + seed * 5 + 2) as u32) % vocab).collect();
    DraftTree { tokens, parents, depths, scores: vec![0.0; n] }
}

/// Tree verifications of every bucket, across the segment boundary, each followed by the cache
/// compaction to an accepted path: logits and features of every forward, and the graphs captured.
fn run_trees(model: &Llama, cfg: &LlamaConfig, graphs: bool) -> (Vec<Vec<f32>>, usize, usize) {
    let mut r = Runner::new(model, cfg, cfg.max_position_embeddings).unwrap();
    if !graphs {
        r.graphs = Graphs::disabled();
    }
    let vocab = cfg.vocab_size as u32;
    let prompt: Vec<u32> = (0..SEGMENT - 70).map(|i| (i as u32 * 37 + 11) % vocab).collect();
    let mut out = vec![values(r.forward(&prompt, LogitsFor::Last))];
    for (round, n) in [1, 5, 60, 17, 64, 3, 33, 60, 9].into_iter().enumerate() {
        let t = tree(n, round, vocab);
        let l = r.cache.len();
        let (logits, features) = r.forward_tree(&t);
        out.push(values(logits));
        out.push(values(features));
        // Keep the path to the last node, as verification does.
        let mut path = vec![n - 1];
        while let Some(p) = t.parents[*path.last().unwrap()] {
            path.push(p);
        }
        let rows: Vec<usize> = path.iter().rev().map(|&i| l + i).collect();
        r.cache.keep_rows(l, &rows).unwrap();
        // A causal step after it sees the compacted rows.
        out.push(values(r.forward(&[(round as u32 * 13) % vocab], LogitsFor::Last)));
    }
    (out, r.graphs.captured, r.graphs.hardware)
}

#[test]
fn replayed_tree_verifications_equal_eager_ones() {
    let device = device();
    let cfg = LlamaConfig { max_position_embeddings: SEGMENT + 128, ..tiny_llama(97, 2) };
    let model = Llama::random(&cfg, cfg.max_position_embeddings, 9, &device).unwrap();
    let (eager, none, _) = run_trees(&model, &cfg, false);
    let (replayed, captured, on_device) = run_trees(&model, &cfg, true);
    assert_eq!(none, 0);
    assert_device_graphs(captured, on_device);
    assert!(captured >= 6, "tree buckets 1 to 64 and the steps after them: {captured} graphs");
    assert_same(&eager, &replayed, "tree verification output (logits, features, next step)");
}

/// Draft rounds of an EAGLE drafter: every tree (tokens, parents, scores) and the root feature after
/// each catch-up; and the graphs it captured.
fn run_drafter(base: &Llama, cfg: &LlamaConfig, head: &EagleHead, head_cfg: &EagleConfig, graphs: bool) -> (Vec<String>, Vec<Vec<f32>>, (usize, usize)) {
    let device = base.embed_tokens.device();
    let tree_cfg = TreeConfig { top_k: 6, depth: 5, total_nodes: 25 };
    let n = SEGMENT - 12;
    let mut drafter = EagleDrafter::new(head, head_cfg, base, n + 200, &tree_cfg).unwrap();
    if !graphs {
        drafter = drafter.without_graphs();
    }
    let vocab = cfg.vocab_size;
    let h = cfg.hidden_size;
    let prompt: Vec<u32> = (0..n).map(|i| ((i * 7 + 3) % vocab) as u32).collect();
    // Large features: the random head's attention is then sharp (see tests/tests/drafter.rs).
    let features = |rows: usize, seed: usize| {
        let v: Vec<f32> = (0..rows * h).map(|i| (((i * 2654435761 + seed * 97) % 1000) as f32 - 500.0) * 0.6).collect();
        Tensor::<2>::from_data(TensorData::new(v, [rows, h]), &device)
    };
    observe_prompt(&mut drafter, features(n, 1), &prompt, 11).unwrap();
    let (mut trees, mut roots) = (Vec::new(), Vec::new());
    let mut root = 11;
    let mut len = n;
    for round in 0..8 {
        let t = drafter.draft(root, &tree_cfg).unwrap();
        trees.push(format!("{:?} {:?} {:?}", t.tokens, t.parents, t.scores.iter().map(|s| s.to_bits()).collect::<Vec<_>>()));
        // Accept 1 + (round % 4) tokens, or reject back one position every third round.
        let accepted = 1 + round % 4;
        let next: Vec<u32> = (0..accepted).map(|j| ((round * 11 + j * 3) % vocab) as u32).collect();
        if round % 3 == 2 {
            len -= 1;
            drafter.truncate(len);
        }
        drafter.observe(features(accepted, round + 2), &next).unwrap();
        len += accepted;
        root = *next.last().unwrap();
        drafter.catch_up().unwrap();
        roots.push(values(drafter.last_feature().unwrap()));
    }
    (trees, roots, drafter.graphs())
}

#[test]
fn replayed_head_steps_draft_the_eager_trees() {
    let device = device();
    let cfg = LlamaConfig { max_position_embeddings: SEGMENT + 256, ..tiny_llama(97, 2) };
    let base = Llama::random(&cfg, cfg.max_position_embeddings, 5, &device).unwrap();
    let head_cfg = EagleConfig::for_base(&cfg);
    let head = EagleHead::random(&head_cfg, cfg.max_position_embeddings, 6, &device).unwrap();
    let (eager_trees, eager_roots, (none, _)) = run_drafter(&base, &cfg, &head, &head_cfg, false);
    let (trees, roots, (captured, on_device)) = run_drafter(&base, &cfg, &head, &head_cfg, true);
    assert_eq!(none, 0);
    assert_device_graphs(captured, on_device);
    // Four levels per tree (depth 5), at one and two segments, and catch-ups of 1 to 4 rows.
    assert!(captured >= 8, "level and catch-up graphs: {captured}");
    assert_same(&eager_trees, &trees, "drafted tree");
    assert_same(&eager_roots, &roots, "root feature after a catch-up");
}

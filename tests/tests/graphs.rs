//! Replayed causal forwards (`hierspec_speculative::graphs`) against eager ones, bit for bit: every
//! row bucket, across an attention segment boundary, over many replays. On CUDA (the GPU build,
//! `HIERSPEC_TEST_DTYPE` as the other tests) they are device graphs. In CI it runs on wgpu
//! (lavapipe), where burn captures no device graph: a capture runs the recorded closure and a
//! replay runs it again. That still covers all but the graph itself: the fixed input buffers
//! written in place, the cache length read on the device, padding, and one graph per shape.
#![cfg(any(feature = "wgpu", feature = "cuda"))]

use burn::tensor::{DType, Device, Tensor};
use hierspec_kernels::attention::SEGMENT;
use hierspec_model::{Llama, LlamaConfig, LogitsFor};
use hierspec_speculative::graphs::Graphs;
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
    if cfg!(all(feature = "cuda", not(feature = "cpu"))) {
        assert_eq!(on_device, captured, "every capture gives a CUDA graph");
    }
    // One row at 1 and 2 segments, then the buckets 2 to 64 at 2 segments.
    assert_eq!(captured, 8, "one graph per row bucket and segment count");
    assert_eq!(eager.len(), replayed.len());
    for (i, (e, r)) in eager.iter().zip(&replayed).enumerate() {
        assert_eq!(e, r, "forward {i}: replayed logits differ from eager ones");
    }
}

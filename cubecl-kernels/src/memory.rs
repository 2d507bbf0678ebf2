//! Where a model's weights live in cubecl's device memory.
//!
//! cubecl's default pools cut pages into slices, and every reservation walks and coalesces each page
//! of its size class. A model's small weights (norms, biases, scales) sit in the same pages as a
//! decode step's activations, so each of the step's ~170 output allocations walked a few hundred
//! weight slices: ~14% of the host time of a 1.5B W4A16 step on the H200
//! (`docs/perf/host.md`). Loading under [`persistent`] puts the weights in cubecl's persistent pool
//! instead (one buffer each, found by size), which leaves the sliced pages to the activations.

use burn::tensor::Device;

/// Run `f` (a model's load) with every allocation on `device` going to the persistent pool, then
/// release what `f` allocated and freed (staging copies, pre-packing forms). Backends without such
/// a pool just run `f`. `HIERSPEC_PERSISTENT_WEIGHTS=0` loads into the sliced pools (to measure).
pub fn persistent<T: Send>(device: &Device, f: impl FnOnce() -> T + Send) -> T {
    if std::env::var("HIERSPEC_PERSISTENT_WEIGHTS").is_ok_and(|v| v == "0") {
        return f();
    }
    let out = device.memory_persistent_allocations(f, |f| f());
    device.memory_cleanup();
    out
}

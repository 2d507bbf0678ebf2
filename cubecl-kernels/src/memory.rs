//! Where a model's weights live in cubecl's device memory.
//!
//! cubecl's default pools cut pages into slices, and every reservation walks and coalesces each page
//! of its size class. A model's small weights (norms, biases, scales) sit in the same pages as a
//! decode step's activations, so each of the step's ~170 output allocations walked a few hundred
//! weight slices: ~14% of the host time of a 1.5B W4A16 step on the H200
//! (`docs/perf/host.md`). Loading under [`persistent`] puts the weights in cubecl's persistent pool
//! instead (one buffer each, found by size), which leaves the sliced pages to the activations.

use burn::tensor::backend::Backend;

/// Run `f` (a model's load) with every allocation on `device` going to cubecl's persistent pool,
/// then release what `f` allocated and freed (staging copies, pre-packing forms). Other backends
/// just run `f`.
///
/// cubecl sets the mode per stream, and a stream is per thread: only this thread's allocations go
/// there, so `f` must make the weights on the calling thread (a load does). `HIERSPEC_PERSISTENT_WEIGHTS=0`
/// loads into the sliced pools as before (to measure).
pub fn persistent<B: Backend, T>(device: &B::Device, f: impl FnOnce() -> T) -> T {
    #[cfg(feature = "cube")]
    {
        let _mode = enabled().then(|| crate::cube::PersistentMode::<B>::enter(device));
        f()
    }
    #[cfg(not(feature = "cube"))]
    {
        let _ = device;
        f()
    }
}

#[cfg(feature = "cube")]
fn enabled() -> bool {
    std::env::var("HIERSPEC_PERSISTENT_WEIGHTS").map_or(true, |v| v != "0")
}

//! `memory::persistent` on a cubecl runtime: weights made under it compute exactly as weights made
//! in the sliced pools, what the load frees is released when it ends, and a load that panics leaves
//! the client usable. Its own test binary, so that no other test allocates while it reads the
//! client's memory usage.
#![cfg(any(feature = "wgpu", feature = "cuda"))]

mod common;

use burn::tensor::{DType, Distribution, Tensor};
use common::{device, Device};
use hierspec_kernels::{dense, memory};

/// The values as f32 (exact from bf16 / f16), so outputs compare bit for bit in any test dtype.
fn values(t: Tensor<2>) -> Vec<f32> {
    t.cast(DType::F32).into_data().iter::<f32>().collect()
}

fn reserved(device: &Device) -> u64 {
    device.memory_pool_usage().expect("a cubecl device reports its pools").bytes_reserved
}

#[test]
fn persistent_weights_compute_alike_and_the_load_leaves_nothing_behind() {
    let device = device();
    let (k, n, m) = (512, 300, 3);
    let x = Tensor::<2>::random([m, k], Distribution::Normal(0.0, 1.0), &device);
    let w = Tensor::<2>::random([k, n], Distribution::Normal(0.0, 1.0), &device);
    let plain = values(dense::linear(x.clone(), w.clone()));

    // What the pools hold for the work above (freed pages of the product included) is released
    // first, so that `before` counts only live buffers.
    device.memory_cleanup();
    let before = reserved(&device);
    let temp_bytes = 4 << 20;
    let kept = memory::persistent::<_>(&device, || {
        // A copy of the weight kept, and a staging buffer freed inside the load.
        let staging = Tensor::<1>::ones([temp_bytes / w.dtype().size()], &device);
        let _ = staging.sum().into_scalar::<f32>();
        w.clone() + 0.0
    });
    let after = reserved(&device);
    let kept_bytes = (k * n * w.dtype().size()) as u64;
    assert!(after >= before + kept_bytes, "the kept weight is on the device: {before} -> {after} bytes reserved");
    assert!(
        after < before + kept_bytes + temp_bytes as u64,
        "the staging buffer freed inside the load is released when it ends: {before} -> {after} bytes reserved"
    );
    let persistent = values(dense::linear(x.clone(), kept.clone()));
    assert_eq!(plain, persistent, "the same product, bit for bit");

    // A load that panics: the client keeps working.
    let caught = std::panic::catch_unwind(|| memory::persistent::<_>(&device, || panic!("a malformed file")));
    assert!(caught.is_err());
    let again = values(dense::linear(x, kept));
    assert_eq!(plain, again);
}

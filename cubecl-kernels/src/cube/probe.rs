//! Launch-cost probes: kernels that do (almost) nothing, so that timing many launches of them shows
//! what the host side of one launch costs and what it grows with (buffer arguments as tensors, which
//! carry shape and strides, or as arrays, which do not; a fresh output buffer per launch). Used by
//! `bench-kernels --launch-overhead` only.

use burn::tensor::{DType, Shape};
use burn_cubecl::{ops::numeric::empty_device_contiguous_dtype, tensor::CubeTensor, CubeRuntime};
use cubecl::prelude::*;

use crate::probe::Probe;

#[cube(launch_unchecked)]
fn probe_array_1(a: &Array<f32>, out: &mut Array<f32>) {
    if ABSOLUTE_POS == 0 {
        out[0] = a[0];
    }
}

#[cube(launch_unchecked)]
#[allow(clippy::too_many_arguments)]
fn probe_array_12(
    a0: &Array<f32>,
    a1: &Array<f32>,
    a2: &Array<f32>,
    a3: &Array<f32>,
    a4: &Array<f32>,
    a5: &Array<f32>,
    a6: &Array<f32>,
    a7: &Array<f32>,
    a8: &Array<f32>,
    a9: &Array<f32>,
    a10: &Array<f32>,
    out: &mut Array<f32>,
) {
    if ABSOLUTE_POS == 0 {
        out[0] = a0[0] + a1[0] + a2[0] + a3[0] + a4[0] + a5[0] + a6[0] + a7[0] + a8[0] + a9[0] + a10[0];
    }
}

#[cube(launch_unchecked)]
fn probe_tensor_1(a: &Tensor<f32>, out: &mut Tensor<f32>) {
    if ABSOLUTE_POS == 0 {
        out[0] = a[0];
    }
}

#[cube(launch_unchecked)]
#[allow(clippy::too_many_arguments)]
fn probe_tensor_12(
    a0: &Tensor<f32>,
    a1: &Tensor<f32>,
    a2: &Tensor<f32>,
    a3: &Tensor<f32>,
    a4: &Tensor<f32>,
    a5: &Tensor<f32>,
    a6: &Tensor<f32>,
    a7: &Tensor<f32>,
    a8: &Tensor<f32>,
    a9: &Tensor<f32>,
    a10: &Tensor<f32>,
    out: &mut Tensor<f32>,
) {
    if ABSOLUTE_POS == 0 {
        out[0] = a0[0] + a1[0] + a2[0] + a3[0] + a4[0] + a5[0] + a6[0] + a7[0] + a8[0] + a9[0] + a10[0];
    }
}

/// One launch of `probe`, reading `a` (f32) and writing `out` (f32), or a fresh buffer where the
/// probe says so.
pub(crate) fn launch<R: CubeRuntime>(probe: Probe, a: &CubeTensor<R>, out: &CubeTensor<R>) {
    let client = a.client.clone();
    let (count, dim) = (CubeCount::Static(1, 1, 1), CubeDim::new_1d(32));
    let fresh = || empty_device_contiguous_dtype::<R>(client.clone(), a.device.clone(), Shape::new([4]), DType::F32);
    let arr = |t: &CubeTensor<R>| t.clone().into_array_arg();
    let ten = |t: &CubeTensor<R>| t.clone().into_tensor_arg();
    // SAFETY: every kernel reads element 0 of its inputs and writes element 0 of its output, and
    // every buffer here holds at least 4 f32.
    unsafe {
        match probe {
            Probe::Array1 => probe_array_1::launch_unchecked::<R>(&client, count, dim, arr(a), arr(out)),
            Probe::Array1Fresh => probe_array_1::launch_unchecked::<R>(&client, count, dim, arr(a), arr(&fresh())),
            Probe::Array12 => probe_array_12::launch_unchecked::<R>(
                &client, count, dim, arr(a), arr(a), arr(a), arr(a), arr(a), arr(a), arr(a), arr(a), arr(a), arr(a), arr(a), arr(out),
            ),
            Probe::Tensor1 => probe_tensor_1::launch_unchecked::<R>(&client, count, dim, ten(a), ten(out)),
            Probe::Tensor12 => probe_tensor_12::launch_unchecked::<R>(
                &client, count, dim, ten(a), ten(a), ten(a), ten(a), ten(a), ten(a), ten(a), ten(a), ten(a), ten(a), ten(a), ten(out),
            ),
            Probe::Tensor12Fresh => probe_tensor_12::launch_unchecked::<R>(
                &client, count, dim, ten(a), ten(a), ten(a), ten(a), ten(a), ten(a), ten(a), ten(a), ten(a), ten(a), ten(a), ten(&fresh()),
            ),
        }
    }
}

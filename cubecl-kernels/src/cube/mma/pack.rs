//! Packing kernels: engine int4 words and dense weights into the mma fragment order ([`crate::mma`]),
//! one thread per output word or value, run once at load.

use burn::tensor::Shape;
use burn_cubecl::{ops::numeric::empty_device_contiguous_dtype, tensor::CubeTensor};
use cubecl::prelude::*;

use crate::mma::{TILE_N, UNIT_K};

/// Engine words [ceil(k / 8), n] -> fragment words [tiles * units * 32, 4], one thread per word.
#[cube(launch_unchecked)]
fn pack_int4_kernel(qweight: &Tensor<i32>, out: &mut Tensor<i32>, k: usize, n: usize, units: usize, total: usize) {
    let idx = ABSOLUTE_POS as usize;
    if idx < total {
        let s = idx % 4;
        let lane = (idx / 4) % 32;
        let tu = idx / 128;
        let u = tu % units;
        let tile = tu / units;
        let g = lane / 4;
        let t = lane % 4;
        let mut word = 0i32;
        #[unroll]
        for j in 0usize..8usize {
            let r = j % 4;
            let e = j / 4;
            let ch = tile * TILE_N + g + 8 * (r % 2);
            let kk = u * UNIT_K + 32 * (s / 2) + 8 * t + 4 * (s % 2) + 2 * (r / 2) + e;
            if ch < n && kk < k {
                let src = qweight[(kk / 8) * qweight.stride(0) + ch * qweight.stride(1)];
                let nib = (src >> (4 * (kk % 8)) as i32) & 15i32;
                word |= nib << comptime!((4 * j) as i32);
            }
        }
        out[idx] = word;
    }
}

/// Dense [k, n] -> fragment values [tiles * units * 4 * 32, 8], one thread per value.
#[cube(launch_unchecked)]
fn pack_dense_kernel<F: Float>(w: &Tensor<F>, out: &mut Tensor<F>, k: usize, n: usize, units: usize, total: usize, #[define(F)] _dtype: ElemType) {
    let idx = ABSOLUTE_POS as usize;
    if idx < total {
        let q = idx % 8;
        let lane = (idx / 8) % 32;
        let s = (idx / 256) % 4;
        let tu = idx / 1024;
        let u = tu % units;
        let tile = tu / units;
        let g = lane / 4;
        let t = lane % 4;
        let r = q / 2;
        let e = q % 2;
        let ch = tile * TILE_N + g + 8 * (r % 2);
        let kk = u * UNIT_K + 32 * (s / 2) + 8 * t + 4 * (s % 2) + 2 * (r / 2) + e;
        let mut v = F::new(0.0);
        if ch < n && kk < k {
            v = w[kk * w.stride(0) + ch * w.stride(1)];
        }
        out[idx] = v;
    }
}

const PACK_THREADS: u32 = 256;

fn elementwise_count(total: usize) -> CubeCount {
    let cubes = total.div_ceil(PACK_THREADS as usize) as u32;
    // Stay within the 65535 limit of the y dimension by spreading over x first.
    let x = cubes.min(65535);
    CubeCount::Static(x, cubes.div_ceil(x), 1)
}

pub(crate) fn pack_int4(qweight: CubeTensor, k: usize, n: usize) -> CubeTensor {
    let (tiles, units) = (n.div_ceil(TILE_N), k.div_ceil(UNIT_K));
    let total = tiles * units * 128;
    let out = empty_device_contiguous_dtype(qweight.client.clone(), qweight.device.clone(), Shape::new([tiles * units * 32, 4]), qweight.dtype);
    let count = elementwise_count(total);
    // SAFETY: one thread per output word, guarded by `total`; source reads are bounded by k and n.
    unsafe {
        pack_int4_kernel::launch_unchecked(
            &qweight.client.clone(),
            count,
            CubeDim::new_1d(PACK_THREADS),
            qweight.into_tensor_arg(),
            out.clone().into_tensor_arg(),
            k,
            n,
            units,
            total,
        )
    };
    out
}

pub(crate) fn pack_dense(w: CubeTensor) -> CubeTensor {
    let [k, n] = w.meta.shape().dims::<2>();
    let (tiles, units) = (n.div_ceil(TILE_N), k.div_ceil(UNIT_K));
    let total = tiles * units * 1024;
    let dtype = w.dtype;
    let out = empty_device_contiguous_dtype(w.client.clone(), w.device.clone(), Shape::new([tiles * units * 4 * 32, 8]), dtype);
    // SAFETY: one thread per output value, guarded by `total`; source reads are bounded by k and n.
    unsafe {
        pack_dense_kernel::launch_unchecked(
            &w.client.clone(),
            elementwise_count(total),
            CubeDim::new_1d(PACK_THREADS),
            w.into_tensor_arg(),
            out.clone().into_tensor_arg(),
            k,
            n,
            units,
            total,
            super::super::elem(dtype),
        )
    };
    out
}


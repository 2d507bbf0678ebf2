//! Where a forward's new rows begin in the KV cache, on the host and on the device.
//!
//! The kernels that place new rows (the RoPE cache write) and count keys (attention) read the start
//! row from a one-element device buffer rather than taking it as a launch scalar: a captured CUDA
//! graph freezes its launch scalars, but replays read the buffer anew. The host copy sizes launch
//! grids and drives the plain-tensor references.
//!
//! The same holds for every input of a captured graph: [`write_ints`] and [`copy_rows`] refresh its
//! buffers in place.

use burn::tensor::{Device, Int, Tensor, TensorData};

#[derive(Clone, Debug)]
pub struct CacheStart {
    /// Cache rows before the new ones.
    pub rows: usize,
    /// [1] int: `rows`, for the kernels.
    pub device: Tensor<1, Int>,
}

impl CacheStart {
    pub fn new(rows: usize, device: &Device) -> Self {
        Self { rows, device: upload(rows, device) }
    }

    /// Move to `rows`. On cubecl devices the device buffer is written in place (stream-ordered after
    /// the work queued before), so a graph captured over it reads the new value when replayed.
    pub fn set(&mut self, rows: usize) {
        self.rows = rows;
        if !write_ints(&self.device, &[rows as i32]) {
            self.device = upload(rows, &self.device.device());
        }
    }
}

fn upload(rows: usize, device: &Device) -> Tensor<1, Int> {
    Tensor::from_data(TensorData::new(vec![rows as i32], [1]), device)
}

/// Write `values` into `t`'s device buffer in place, enqueued after the work queued before it; false
/// where `t` is no contiguous i32 tensor of that many values on a cubecl device (then nothing is
/// written). CUDA may pitch the rows of a tensor of rank >= 2 made from data: make such buffers with
/// [`contiguous_ints`].
pub fn write_ints<const D: usize>(t: &Tensor<D, Int>, values: &[i32]) -> bool {
    #[cfg(feature = "cube")]
    return crate::cube::write_i32(t, values);
    #[cfg(not(feature = "cube"))]
    {
        let _ = (t, values);
        false
    }
}

/// Copy `src` into the first elements of `dst`'s buffer in place (row-major: `src` [n, h] fills the
/// first n rows of `dst` [.., rows, h]), enqueued after the work queued before it; false where `dst`
/// is no contiguous tensor of `src`'s dtype and at least its size on a cubecl device (make it with
/// [`contiguous_zeros`]).
pub fn copy_rows<const D: usize, const E: usize>(dst: &Tensor<D>, src: &Tensor<E>) -> bool {
    #[cfg(feature = "cube")]
    return crate::cube::copy_rows(dst, src);
    #[cfg(not(feature = "cube"))]
    {
        let _ = (dst, src);
        false
    }
}

/// `values` as an int tensor of `shape` with contiguous rows (made flat, then reshaped), which
/// [`write_ints`] can refresh.
pub fn contiguous_ints<const D: usize>(values: Vec<i32>, shape: [usize; D], device: &Device) -> Tensor<D, Int> {
    let n = values.len();
    Tensor::<1, Int>::from_data(TensorData::new(values, [n]), device).reshape(shape)
}

/// Zeros of `shape` and `dtype` with contiguous rows, which [`copy_rows`] can write.
pub fn contiguous_zeros<const D: usize>(shape: [usize; D], dtype: burn::tensor::DType, device: &Device) -> Tensor<D> {
    Tensor::<1>::zeros([shape.iter().product::<usize>()], (device, dtype)).reshape(shape)
}

//! Run-time dispatch to the cubecl kernels. A Burn tensor primitive is a `CubeTensor<R>` exactly when
//! the backend is `CubeBackend<R, ..>` (CUDA or wgpu without fusion); the kernels take those, and
//! every other backend (Flex, ndarray, autodiff wrappers) falls back to the plain-tensor reference.

mod attention;
mod matmul;

use std::any::Any;

use burn::tensor::{backend::Backend, DType, Int, Tensor, TensorPrimitive};
use burn_cubecl::{tensor::CubeTensor, CubeRuntime};

use crate::attention::AttnMask;
use crate::int4::Int4Weight;

fn downcast<T: 'static, U: 'static>(value: T) -> Option<U> {
    let boxed: Box<dyn Any> = Box::new(value);
    boxed.downcast::<U>().ok().map(|b| *b)
}

fn is_cube<B: Backend, R: CubeRuntime>() -> bool {
    std::any::TypeId::of::<B::FloatTensorPrimitive>() == std::any::TypeId::of::<CubeTensor<R>>()
}

fn float<B: Backend, R: CubeRuntime, const D: usize>(t: &Tensor<B, D>) -> CubeTensor<R> {
    downcast(t.clone().into_primitive().tensor()).expect("checked by is_cube")
}

fn int<B: Backend, R: CubeRuntime, const D: usize>(t: &Tensor<B, D, Int>) -> Option<CubeTensor<R>> {
    downcast::<_, CubeTensor<R>>(t.clone().into_primitive()).filter(|c| matches!(c.dtype, DType::I32 | DType::U32))
}

fn back<B: Backend, R: CubeRuntime, const D: usize>(t: CubeTensor<R>) -> Tensor<B, D> {
    Tensor::from_primitive(TensorPrimitive::Float(downcast(t).expect("checked by is_cube")))
}

/// Float dtypes the kernels are compiled for.
fn supported(dtype: DType) -> bool {
    matches!(dtype, DType::F32 | DType::F16 | DType::BF16)
}

macro_rules! for_each_runtime {
    ($f:ident, $B:ty, $($arg:expr),*) => {{
        #[cfg(feature = "wgpu")]
        if is_cube::<$B, cubecl::wgpu::WgpuRuntime>() {
            return $f::<$B, cubecl::wgpu::WgpuRuntime>($($arg),*);
        }
        #[cfg(feature = "cuda")]
        if is_cube::<$B, cubecl::cuda::CudaRuntime>() {
            return $f::<$B, cubecl::cuda::CudaRuntime>($($arg),*);
        }
        None
    }};
}

pub(crate) fn has_kernels<B: Backend>() -> bool {
    #[cfg(feature = "wgpu")]
    if is_cube::<B, cubecl::wgpu::WgpuRuntime>() {
        return true;
    }
    #[cfg(feature = "cuda")]
    if is_cube::<B, cubecl::cuda::CudaRuntime>() {
        return true;
    }
    false
}

pub(crate) fn dense_matmul<B: Backend>(x: &Tensor<B, 2>, w: &Tensor<B, 2>) -> Option<Tensor<B, 2>> {
    fn run<B: Backend, R: CubeRuntime>(x: &Tensor<B, 2>, w: &Tensor<B, 2>) -> Option<Tensor<B, 2>> {
        if !supported(x.dtype()) || x.dtype() != w.dtype() {
            return None;
        }
        Some(back::<B, R, 2>(matmul::dense::<R>(float(x), float(w))))
    }
    for_each_runtime!(run, B, x, w)
}

pub(crate) fn int4_matmul<B: Backend>(x: &Tensor<B, 2>, w: &Int4Weight<B>) -> Option<Tensor<B, 2>> {
    fn run<B: Backend, R: CubeRuntime>(x: &Tensor<B, 2>, w: &Int4Weight<B>) -> Option<Tensor<B, 2>> {
        let scales = w.scales.val();
        if !supported(x.dtype()) || scales.dtype() != x.dtype() {
            return None;
        }
        let qweight = int::<B, R, 2>(&w.qweight.val())?;
        let offsets = w.offsets.as_ref().map(|o| float::<B, R, 2>(&o.val()));
        let out = matmul::int4::<R>(float(x), qweight, float(&scales), offsets, w.k, w.group);
        Some(back::<B, R, 2>(out))
    }
    for_each_runtime!(run, B, x, w)
}

pub(crate) fn attention<B: Backend>(
    q: &Tensor<B, 4>,
    k: &Tensor<B, 4>,
    v: &Tensor<B, 4>,
    mask: Option<&AttnMask<B>>,
) -> Option<Tensor<B, 4>> {
    fn run<B: Backend, R: CubeRuntime>(
        q: &Tensor<B, 4>,
        k: &Tensor<B, 4>,
        v: &Tensor<B, 4>,
        mask: Option<&AttnMask<B>>,
    ) -> Option<Tensor<B, 4>> {
        let [b, _, n, hd] = q.dims();
        if b != 1 || !supported(q.dtype()) || k.dtype() != q.dtype() || v.dtype() != q.dtype() || hd > attention::MAX_HEAD_DIM {
            return None;
        }
        let bits = match mask {
            Some(m) => Some((int::<B, R, 2>(&m.bits)?, m.cols)),
            None if n == 1 => None,
            None => return None,
        };
        Some(back::<B, R, 4>(attention::tree_attention::<R>(float(q), float(k), float(v), bits)))
    }
    for_each_runtime!(run, B, q, k, v, mask)
}

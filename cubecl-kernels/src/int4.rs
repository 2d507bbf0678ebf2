//! W4A16: the engine's one int4 weight format, its host-side packing and round-to-nearest quantizer,
//! the plain-tensor reference product, and dispatch to the cubecl kernel.
//!
//! Layout (GPTQ's `qweight` orientation, so GPTQ checkpoints map onto it without repacking):
//! - `qweight [ceil(K / 8), N]` 32-bit words; the value of row k, column n sits in word `(k / 8, n)`
//!   at bits `4 * (k % 8)`.
//! - `scales [K / G, N]` and, when asymmetric, `offsets [K / G, N]` in the compute dtype, one per
//!   group of G consecutive input rows (G = 32, 64, 128, ... or the full K).
//! - Dequantized weight: `q * scale + offset` (asymmetric: offset = -zero * scale for GPTQ, the block
//!   minimum for GGUF Q4_1/Q4_K), or `(q - 8) * scale` (symmetric).

use burn::module::{Module, Param, ParamId};
use burn::tensor::{DType, Device, Distribution, Int, Tensor, TensorData};

use crate::dense;
use crate::Invalid;

/// int4 values per 32-bit word.
pub const PACK: usize = 8;
/// The implicit zero point of the symmetric format.
pub const SYM_ZERO: f32 = 8.0;

#[derive(Module, Debug)]
pub struct Int4Weight {
    /// [ceil(k / 8), n] words (bit patterns held in the backend's int type).
    pub qweight: Param<Tensor<2, Int>>,
    /// [k / group, n]
    pub scales: Param<Tensor<2>>,
    /// [k / group, n]; `None` for the symmetric format.
    pub offsets: Option<Param<Tensor<2>>>,
    pub k: usize,
    pub n: usize,
    pub group: usize,
}

/// Check the (k, n, group) triple the format can represent.
pub fn check_dims(k: usize, n: usize, group: usize) -> Result<(), Invalid> {
    if k == 0 || n == 0 || group == 0 {
        return Err(Invalid(format!("int4 weight: empty dimension (k {k}, n {n}, group {group})")));
    }
    if k % group != 0 {
        return Err(Invalid(format!("int4 weight: group size {group} does not divide the input size {k}")));
    }
    if group != k && group % PACK != 0 {
        return Err(Invalid(format!("int4 weight: group size {group} must be a multiple of {PACK} or the full row ({k})")));
    }
    Ok(())
}

impl Int4Weight {
    /// Upload host data in the engine layout, checking every length against (k, n, group).
    pub fn from_host(
        words: &[u32],
        scales: &[f32],
        offsets: Option<&[f32]>,
        (k, n, group): (usize, usize, usize),
        device: &Device,
    ) -> Result<Self, Invalid> {
        check_dims(k, n, group)?;
        let (kw, groups) = (k.div_ceil(PACK), k / group);
        let expect = |what: &str, len: usize, want: usize| {
            if len == want {
                Ok(())
            } else {
                Err(Invalid(format!("int4 weight: {what} has {len} values, expected {want} for k {k}, n {n}, group {group}")))
            }
        };
        expect("qweight", words.len(), kw * n)?;
        expect("scales", scales.len(), groups * n)?;
        if let Some(o) = offsets {
            expect("offsets", o.len(), groups * n)?;
        }
        let words: Vec<i32> = words.iter().map(|&w| w as i32).collect();
        let float = |v: &[f32]| Param::from_tensor(Tensor::from_data(TensorData::new(v.to_vec(), [groups, n]), device));
        Ok(Self {
            qweight: Param::initialized(ParamId::new(), Tensor::<2, Int>::from_data(TensorData::new(words, [kw, n]), device)),
            scales: float(scales),
            offsets: offsets.map(float),
            k,
            n,
            group,
        })
    }

    /// Random words and scales made on the device (speed runs at real shapes need no files).
    pub fn random(k: usize, n: usize, group: usize, asymmetric: bool, device: &Device) -> Result<Self, Invalid> {
        check_dims(k, n, group)?;
        let kw = k.div_ceil(PACK);
        let half = || Tensor::<2, Int>::random([kw, n], Distribution::Uniform(0.0, 65536.0), device);
        let words = half().bitwise_left_shift_scalar(16).bitwise_or(half());
        let float = || Param::from_tensor(Tensor::random([k / group, n], Distribution::Uniform(0.001, 0.01), device));
        Ok(Self {
            qweight: Param::initialized(ParamId::new(), words),
            scales: float(),
            offsets: asymmetric.then(float),
            k,
            n,
            group,
        })
    }

    pub fn is_symmetric(&self) -> bool {
        self.offsets.is_none()
    }

    /// Bytes one product reads for the weight: packed values, scales and offsets.
    pub fn bytes(&self) -> usize {
        let scale_bytes = self.scales.val().dtype().size();
        let per_group = if self.is_symmetric() { 1 } else { 2 };
        self.k.div_ceil(PACK) * self.n * 4 + (self.k / self.group) * self.n * scale_bytes * per_group
    }

    /// The dense f32 weight [k, n] this stands for (the reference path).
    pub fn dequantize(&self) -> Tensor<2> {
        let (k, n, g) = (self.k, self.n, self.group);
        let words = self.qweight.val();
        let kw = words.dims()[0];
        let nibbles: Vec<Tensor<2, Int>> = (0..PACK)
            .map(|j| words.clone().bitwise_right_shift_scalar((4 * j) as i32).bitwise_and_scalar(15))
            .collect();
        let q = Tensor::stack::<3>(nibbles, 1).reshape([kw * PACK, n]).slice([0..k, 0..n]).float().cast(DType::F32);
        let per_row = |t: Tensor<2>| t.cast(DType::F32).unsqueeze_dim::<3>(1).expand([k / g, g, n]).reshape([k, n]);
        let scale = per_row(self.scales.val());
        match &self.offsets {
            Some(off) => q * scale + per_row(off.val()),
            None => (q - SYM_ZERO) * scale,
        }
    }
}

/// `x[M, K] dequant(W)[K, N]` with f32 accumulation, in x's dtype; the kernel on cubecl runtimes for
/// M <= [`dense::SMALL_M_MAX`], the reference otherwise.
pub fn matmul(x: Tensor<2>, w: &Int4Weight) -> Tensor<2> {
    assert_eq!(x.dims()[1], w.k, "int4 matmul: x has {} columns, weight has k = {}", x.dims()[1], w.k);
    #[cfg(feature = "cube")]
    if x.dims()[0] <= dense::SMALL_M_MAX {
        if let Some(y) = crate::cube::int4_matmul(&x, w) {
            return y;
        }
        crate::fallback::declined("int4 product", &x.device());
    }
    reference_matmul(x, w)
}

/// Dequantize, then burn's matmul in f32.
pub fn reference_matmul(x: Tensor<2>, w: &Int4Weight) -> Tensor<2> {
    let dtype = x.dtype();
    dense::matmul(x.cast(DType::F32), w.dequantize()).cast(dtype)
}

/// Pack values in 0..16 given row-major as [k, n] into the engine's words [ceil(k / 8), n].
pub fn pack(values: &[u8], k: usize, n: usize) -> Vec<u32> {
    assert_eq!(values.len(), k * n);
    let mut words = vec![0u32; k.div_ceil(PACK) * n];
    for r in 0..k {
        for c in 0..n {
            words[(r / PACK) * n + c] |= (values[r * n + c] as u32 & 15) << (4 * (r % PACK));
        }
    }
    words
}

/// Inverse of [`pack`].
pub fn unpack(words: &[u32], k: usize, n: usize) -> Vec<u8> {
    let mut values = vec![0u8; k * n];
    for r in 0..k {
        for c in 0..n {
            values[r * n + c] = ((words[(r / PACK) * n + c] >> (4 * (r % PACK))) & 15) as u8;
        }
    }
    values
}

/// A weight quantized on the host, in the engine layout.
#[derive(Debug, Clone)]
pub struct HostInt4 {
    pub words: Vec<u32>,
    pub scales: Vec<f32>,
    pub offsets: Option<Vec<f32>>,
    pub k: usize,
    pub n: usize,
    pub group: usize,
}

impl HostInt4 {
    pub fn upload(&self, device: &Device) -> Result<Int4Weight, Invalid> {
        Int4Weight::from_host(&self.words, &self.scales, self.offsets.as_deref(), (self.k, self.n, self.group), device)
    }

    /// The dense [k, n] weight on the host (for tests and error reports).
    pub fn dequantize(&self) -> Vec<f32> {
        let q = unpack(&self.words, self.k, self.n);
        (0..self.k * self.n)
            .map(|i| {
                let (r, c) = (i / self.n, i % self.n);
                let gi = (r / self.group) * self.n + c;
                match &self.offsets {
                    Some(o) => q[i] as f32 * self.scales[gi] + o[gi],
                    None => (q[i] as f32 - SYM_ZERO) * self.scales[gi],
                }
            })
            .collect()
    }
}

/// The (scale, offset) of one group of values: asymmetric is GPTQ's grid (the min..max range widened
/// to include 0, an integer zero point, so the weight can be written as a GPTQ checkpoint exactly);
/// symmetric is +-max|w| around zero point 8 (scale = 2 max|w| / 15).
pub fn group_params(values: impl Iterator<Item = f32>, asymmetric: bool) -> (f32, f32) {
    let (lo, hi) = values.fold((f32::MAX, f32::MIN), |(lo, hi), v| (lo.min(v), hi.max(v)));
    if asymmetric {
        let (lo, hi) = (lo.min(0.0), hi.max(0.0));
        let s = (hi - lo) / 15.0;
        let s = if s > 0.0 { s } else { 1.0 };
        (s, -(-lo / s).round() * s)
    } else {
        let s = 2.0 * lo.abs().max(hi.abs()) / 15.0;
        let s = if s > 0.0 { s } else { 1.0 };
        (s, -SYM_ZERO * s)
    }
}

/// The 4-bit value of `w` on the grid (scale, offset).
pub fn quantize_value(w: f32, scale: f32, offset: f32) -> u8 {
    ((w - offset) / scale).round().clamp(0.0, 15.0) as u8
}

/// Round-to-nearest quantization of a row-major [k, n] weight ([in, out]) per group of `group` input
/// rows: asymmetric uses the group's min..max range widened to include 0, with an integer zero point
/// (offset = -zero * scale, as GPTQ), symmetric +-max|w| around zero
/// point 8 (GPTQ's symmetric convention, scale = 2 max|w| / 15).
pub fn quantize_rtn(w: &[f32], k: usize, n: usize, group: usize, asymmetric: bool) -> Result<HostInt4, Invalid> {
    check_dims(k, n, group)?;
    if w.len() != k * n {
        return Err(Invalid(format!("quantize: weight has {} values, expected {k} x {n}", w.len())));
    }
    let groups = k / group;
    let mut q = vec![0u8; k * n];
    let mut scales = vec![0f32; groups * n];
    let mut offsets = vec![0f32; groups * n];
    for gi in 0..groups {
        for c in 0..n {
            let rows = gi * group..(gi + 1) * group;
            let (scale, offset) = group_params(rows.clone().map(|r| w[r * n + c]), asymmetric);
            for r in rows {
                q[r * n + c] = quantize_value(w[r * n + c], scale, offset);
            }
            scales[gi * n + c] = scale;
            offsets[gi * n + c] = offset;
        }
    }
    Ok(HostInt4 { words: pack(&q, k, n), scales, offsets: asymmetric.then_some(offsets), k, n, group })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pack_roundtrip_with_a_partial_last_word() {
        let (k, n) = (13, 3);
        let v: Vec<u8> = (0..k * n).map(|i| (i * 7 % 16) as u8).collect();
        assert_eq!(unpack(&pack(&v, k, n), k, n), v);
    }

    #[test]
    fn rtn_error_is_within_half_a_step() {
        let (k, n, g) = (64, 5, 32);
        let w: Vec<f32> = (0..k * n).map(|i| ((i * 37 % 101) as f32 - 50.0) / 17.0).collect();
        for asym in [false, true] {
            let h = quantize_rtn(&w, k, n, g, asym).unwrap();
            let d = h.dequantize();
            for i in 0..k * n {
                let s = h.scales[(i / n / g) * n + i % n];
                assert!((d[i] - w[i]).abs() <= 0.5 * s + 1e-5, "asym {asym} i {i}: {} vs {}", d[i], w[i]);
            }
        }
    }

    #[test]
    fn device_dequantize_matches_host() {
        let device = Device::flex();
        let (k, n) = (96, 7);
        let w: Vec<f32> = (0..k * n).map(|i| ((i * 13 % 29) as f32 - 14.0) / 5.0).collect();
        for (g, asym) in [(32, false), (32, true), (96, true)] {
            let h = quantize_rtn(&w, k, n, g, asym).unwrap();
            let dev: Vec<f32> = h.upload(&device).unwrap().dequantize().into_data().iter::<f32>().collect();
            let host = h.dequantize();
            for (a, b) in dev.iter().zip(&host) {
                assert!((a - b).abs() < 1e-5, "g {g} asym {asym}: {a} vs {b}");
            }
        }
    }

    #[test]
    fn bad_layouts_are_rejected() {
        assert!(check_dims(96, 4, 64).unwrap_err().0.contains("does not divide"));
        assert!(check_dims(60, 4, 12).unwrap_err().0.contains("multiple of 8"));
        assert!(check_dims(60, 4, 60).is_ok());
        let err = Int4Weight::from_host(&[0; 3], &[1.0; 4], None, (32, 4, 32), &Device::flex()).unwrap_err();
        assert!(err.0.contains("qweight has 3 values"), "{err}");
        let err = Int4Weight::from_host(&[0; 16], &[1.0; 3], None, (32, 4, 32), &Device::flex()).unwrap_err();
        assert!(err.0.contains("scales"), "{err}");
    }
}

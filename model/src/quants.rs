//! Dequantization of GGML block formats to f32 (the layouts of ggml-quants.c, reimplemented).
//! Blocks run along a row (the innermost dimension); the reference model is the dequantized weights.

use half::{bf16, f16};

use crate::error::{Error, Result};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GgmlType {
    F32,
    F16,
    BF16,
    Q4_0,
    Q4_1,
    Q5_0,
    Q8_0,
    Q4K,
    Q6K,
}

const QK_K: usize = 256;

impl GgmlType {
    pub fn from_u32(t: u32) -> Option<Self> {
        Some(match t {
            0 => Self::F32,
            1 => Self::F16,
            2 => Self::Q4_0,
            3 => Self::Q4_1,
            6 => Self::Q5_0,
            8 => Self::Q8_0,
            12 => Self::Q4K,
            14 => Self::Q6K,
            30 => Self::BF16,
            _ => return None,
        })
    }

    /// (elements per block, bytes per block)
    pub fn block(self) -> (usize, usize) {
        match self {
            Self::F32 => (1, 4),
            Self::F16 | Self::BF16 => (1, 2),
            Self::Q4_0 => (32, 18),
            Self::Q4_1 => (32, 20),
            Self::Q5_0 => (32, 22),
            Self::Q8_0 => (32, 34),
            Self::Q4K => (QK_K, 144),
            Self::Q6K => (QK_K, 210),
        }
    }

    /// Bytes for `numel` elements whose rows are `row_len` long; None if rows don't split into blocks.
    pub fn bytes_for(self, numel: usize, row_len: usize) -> Option<usize> {
        let (be, bb) = self.block();
        if row_len % be != 0 {
            return None;
        }
        (numel / be).checked_mul(bb)
    }

    pub fn dequantize(self, raw: &[u8], numel: usize) -> Result<Vec<f32>> {
        let (be, bb) = self.block();
        if raw.len() != numel / be * bb || numel % be != 0 {
            return Err(Error::Gguf(format!("{self:?}: {} bytes for {numel} elements", raw.len())));
        }
        let mut out = vec![0f32; numel];
        let blocks = raw.chunks_exact(bb).zip(out.chunks_exact_mut(be));
        let h = |b: &[u8], i: usize| f16::from_le_bytes([b[i], b[i + 1]]).to_f32();
        match self {
            Self::F32 => blocks.for_each(|(b, y)| y[0] = f32::from_le_bytes(b.try_into().unwrap())),
            Self::F16 => blocks.for_each(|(b, y)| y[0] = h(b, 0)),
            Self::BF16 => blocks.for_each(|(b, y)| y[0] = bf16::from_le_bytes([b[0], b[1]]).to_f32()),
            Self::Q4_0 => blocks.for_each(|(b, y)| {
                let d = h(b, 0);
                for j in 0..16 {
                    y[j] = ((b[2 + j] & 0xF) as i32 - 8) as f32 * d;
                    y[j + 16] = ((b[2 + j] >> 4) as i32 - 8) as f32 * d;
                }
            }),
            Self::Q4_1 => blocks.for_each(|(b, y)| {
                let (d, m) = (h(b, 0), h(b, 2));
                for j in 0..16 {
                    y[j] = (b[4 + j] & 0xF) as f32 * d + m;
                    y[j + 16] = (b[4 + j] >> 4) as f32 * d + m;
                }
            }),
            Self::Q5_0 => blocks.for_each(|(b, y)| {
                let d = h(b, 0);
                let qh = u32::from_le_bytes([b[2], b[3], b[4], b[5]]);
                for j in 0..16 {
                    let hi0 = ((qh >> j) & 1) << 4;
                    let hi1 = ((qh >> (j + 16)) & 1) << 4;
                    y[j] = (((b[6 + j] & 0xF) as u32 | hi0) as i32 - 16) as f32 * d;
                    y[j + 16] = (((b[6 + j] >> 4) as u32 | hi1) as i32 - 16) as f32 * d;
                }
            }),
            Self::Q8_0 => blocks.for_each(|(b, y)| {
                let d = h(b, 0);
                for j in 0..32 {
                    y[j] = b[2 + j] as i8 as f32 * d;
                }
            }),
            Self::Q4K => blocks.for_each(|(b, y)| dequant_q4k(b, y)),
            Self::Q6K => blocks.for_each(|(b, y)| dequant_q6k(b, y)),
        }
        Ok(out)
    }
}

/// The 6-bit scale and min of sub-block `j` (of 8) packed in Q4_K's 12 scale bytes.
pub(crate) fn scale_min_k4(j: usize, q: &[u8]) -> (f32, f32) {
    if j < 4 {
        ((q[j] & 63) as f32, (q[j + 4] & 63) as f32)
    } else {
        let d = (q[j + 4] & 0xF) | ((q[j - 4] >> 6) << 4);
        let m = (q[j + 4] >> 4) | ((q[j] >> 6) << 4);
        (d as f32, m as f32)
    }
}

/// Q4_K super-block: d, dmin (f16), 12 bytes of 6-bit scales/mins, 128 bytes of nibbles.
/// Each 64-element chunk uses the low nibbles for its first 32 values and the high ones for the rest.
fn dequant_q4k(b: &[u8], y: &mut [f32]) {
    let d = f16::from_le_bytes([b[0], b[1]]).to_f32();
    let dmin = f16::from_le_bytes([b[2], b[3]]).to_f32();
    let scales = &b[4..16];
    let qs = &b[16..144];
    for chunk in 0..4 {
        let (sc1, m1) = scale_min_k4(2 * chunk, scales);
        let (sc2, m2) = scale_min_k4(2 * chunk + 1, scales);
        let q = &qs[32 * chunk..32 * chunk + 32];
        let out = &mut y[64 * chunk..64 * chunk + 64];
        for l in 0..32 {
            out[l] = d * sc1 * (q[l] & 0xF) as f32 - dmin * m1;
            out[l + 32] = d * sc2 * (q[l] >> 4) as f32 - dmin * m2;
        }
    }
}

/// Q6_K super-block: 128 bytes low nibbles, 64 bytes high 2-bit pairs, 16 i8 scales, d (f16).
fn dequant_q6k(b: &[u8], y: &mut [f32]) {
    let d = f16::from_le_bytes([b[208], b[209]]).to_f32();
    for half in 0..2 {
        let ql = &b[64 * half..64 * half + 64];
        let qh = &b[128 + 32 * half..128 + 32 * half + 32];
        let sc = &b[192 + 8 * half..192 + 8 * half + 8];
        let out = &mut y[128 * half..128 * half + 128];
        for l in 0..32 {
            let is = l / 16;
            let q1 = ((ql[l] & 0xF) | ((qh[l] & 3) << 4)) as i32 - 32;
            let q2 = ((ql[l + 32] & 0xF) | (((qh[l] >> 2) & 3) << 4)) as i32 - 32;
            let q3 = ((ql[l] >> 4) | (((qh[l] >> 4) & 3) << 4)) as i32 - 32;
            let q4 = ((ql[l + 32] >> 4) | (((qh[l] >> 6) & 3) << 4)) as i32 - 32;
            out[l] = d * (sc[is] as i8) as f32 * q1 as f32;
            out[l + 32] = d * (sc[is + 2] as i8) as f32 * q2 as f32;
            out[l + 64] = d * (sc[is + 4] as i8) as f32 * q3 as f32;
            out[l + 96] = d * (sc[is + 6] as i8) as f32 * q4 as f32;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn q4_0_block_layout() {
        // d = 1.0, nibbles j -> low = j % 16, high = 15 - j % 16
        let mut b = vec![0u8; 18];
        b[..2].copy_from_slice(&f16::from_f32(0.5).to_le_bytes());
        for j in 0..16 {
            b[2 + j] = (j as u8) | ((15 - j as u8) << 4);
        }
        let y = GgmlType::Q4_0.dequantize(&b, 32).unwrap();
        assert_eq!(y[0], -4.0);
        assert_eq!(y[15], 3.5);
        assert_eq!(y[16], 3.5);
        assert_eq!(y[31], -4.0);
    }

    /// Every supported type against the `gguf` package's dequantizers (scripts/reference_quants.py).
    #[test]
    fn dequantize_matches_the_gguf_package() {
        let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../assets/fixtures/quant_blocks.json");
        let fixture: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
        let types = [
            ("F32", GgmlType::F32),
            ("F16", GgmlType::F16),
            ("BF16", GgmlType::BF16),
            ("Q4_0", GgmlType::Q4_0),
            ("Q4_1", GgmlType::Q4_1),
            ("Q5_0", GgmlType::Q5_0),
            ("Q8_0", GgmlType::Q8_0),
            ("Q4_K", GgmlType::Q4K),
            ("Q6_K", GgmlType::Q6K),
        ];
        for (name, ty) in types {
            let entry = &fixture[name];
            let hex = entry["raw"].as_str().unwrap();
            let raw: Vec<u8> = (0..hex.len()).step_by(2).map(|i| u8::from_str_radix(&hex[i..i + 2], 16).unwrap()).collect();
            let want: Vec<f32> = entry["values"].as_array().unwrap().iter().map(|v| v.as_f64().unwrap() as f32).collect();
            let got = ty.dequantize(&raw, want.len()).unwrap();
            for (i, (g, w)) in got.iter().zip(&want).enumerate() {
                assert!((g - w).abs() <= 1e-6 * (1.0 + w.abs()), "{name}[{i}]: {g} vs {w}");
            }
        }
    }

    #[test]
    fn wrong_byte_count_is_an_error() {
        assert!(GgmlType::Q8_0.dequantize(&[0u8; 33], 32).is_err());
        assert!(GgmlType::Q4K.bytes_for(512, 100).is_none());
    }
}

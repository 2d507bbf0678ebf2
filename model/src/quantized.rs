//! Int4 checkpoints of other tools, mapped onto the engine's int4 format (`HostInt4`: 4-bit values
//! packed along the input dimension K into u32 words [ceil(K/8), N], one scale per group of input
//! rows and column, w = q * scale + offset, or (q - 8) * scale when symmetric):
//! - GPTQ (AutoGPTQ / GPTQModel safetensors): `qweight` [K/8, N] packed along K exactly like ours,
//!   `qzeros` [K/G, N/8] packed along N, `scales` [K/G, N], `g_idx` [K]. Zeros are stored minus one
//!   in the `gptq` (v1) checkpoint format. Act-order checkpoints (`desc_act`) give row k to group
//!   g_idx[k] in any order; sorting the rows by group makes the groups contiguous, and the layer
//!   then gathers its input columns in the same order (`perm`).
//! - AWQ (GEMM kernel layout): `qweight` [K, N/8] and `qzeros` [K/G, N/8] packed along N with the
//!   column interleave [0, 2, 4, 6, 1, 3, 5, 7] inside each word; w = (q - z) * s.
//! - GGUF Q4_0 / Q4_1 / Q4_K: blocks of 32 input values per output row with a scale (and a minimum
//!   for Q4_1, a per-32 scale and minimum for Q4_K): group 32, exactly.
//!
//! And back: [`to_gptq`] writes the engine's format as a GPTQ v1 checkpoint when its offsets are
//! integer zero points (what our quantizers produce).

use half::f16;
use hierspec_kernels::int4::{pack, unpack, HostInt4, SYM_ZERO};

use crate::error::{Error, Result};
use crate::quants::GgmlType;

/// An int4 weight from a checkpoint: the engine layout plus, for act-order GPTQ, the input order
/// (`x[:, perm]` meets the rows of `host`).
#[derive(Debug, Clone)]
pub struct QuantTensor {
    pub host: HostInt4,
    pub perm: Option<Vec<u32>>,
}

fn bad(name: &str, msg: String) -> Error {
    Error::Safetensors(format!("{name}: {msg}"))
}

fn check_len(name: &str, what: &str, got: usize, want: usize) -> Result<()> {
    if got != want {
        return Err(bad(name, format!("{what} holds {got} values, expected {want}")));
    }
    Ok(())
}

/// Nibble `i` of word `w`.
fn nib(w: i32, i: usize) -> u8 {
    ((w as u32 >> (4 * i)) & 15) as u8
}

/// Per-group zero points [groups, n] unpacked from words packed along N (`order` maps a nibble to
/// its column inside the word).
fn unpack_cols(name: &str, words: &[i32], rows: usize, n: usize, order: &[usize; 8]) -> Result<Vec<u8>> {
    check_len(name, "packed columns", words.len(), rows * n.div_ceil(8))?;
    let wpr = n.div_ceil(8);
    let mut out = vec![0u8; rows * n];
    for r in 0..rows {
        for w in 0..wpr {
            for (i, &c) in order.iter().enumerate() {
                let col = w * 8 + c;
                if col < n {
                    out[r * n + col] = nib(words[r * wpr + w], i);
                }
            }
        }
    }
    Ok(out)
}

const PLAIN: [usize; 8] = [0, 1, 2, 3, 4, 5, 6, 7];
const AWQ_ORDER: [usize; 8] = [0, 2, 4, 6, 1, 3, 5, 7];

/// Scales and float offsets from integer zeros: w = (q - z) s = q s + (-z s).
fn offsets_from_zeros(scales: &[f32], zeros: &[u8]) -> Vec<f32> {
    scales.iter().zip(zeros).map(|(s, &z)| -(z as f32) * s).collect()
}

/// A GPTQ checkpoint tensor. `v1`: the `gptq` checkpoint format (zeros stored minus one);
/// `sym`: the config's symmetric flag (zero point 8 everywhere, kept implicit).
#[allow(clippy::too_many_arguments)]
pub fn from_gptq(
    name: &str,
    qweight: &[i32],
    qzeros: &[i32],
    scales: &[f32],
    g_idx: Option<&[i32]>,
    (k, n, group): (usize, usize, usize),
    v1: bool,
    sym: bool,
) -> Result<QuantTensor> {
    if k == 0 || n == 0 || group == 0 || k % group != 0 {
        return Err(bad(name, format!("group size {group} does not divide the input size {k}")));
    }
    let groups = k / group;
    check_len(name, "qweight", qweight.len(), k.div_ceil(8) * n)?;
    check_len(name, "scales", scales.len(), groups * n)?;
    let mut zeros = unpack_cols(name, qzeros, groups, n, &PLAIN)?;
    if v1 {
        zeros.iter_mut().for_each(|z| *z = (*z + 1) & 15);
    }
    let words: Vec<u32> = qweight.iter().map(|&w| w as u32).collect();
    // Rows by group: the identity unless act-order shuffled them.
    let perm = match g_idx {
        None => None,
        Some(g) => {
            check_len(name, "g_idx", g.len(), k)?;
            if let Some(&bad_g) = g.iter().find(|&&x| x < 0 || x as usize >= groups) {
                return Err(bad(name, format!("g_idx holds group {bad_g} of {groups}")));
            }
            let trivial = g.iter().enumerate().all(|(r, &x)| x as usize == r / group);
            if trivial {
                None
            } else {
                let mut order: Vec<u32> = (0..k as u32).collect();
                order.sort_by_key(|&r| g[r as usize]);
                // Sorted, every group must hold exactly `group` rows to be contiguous groups.
                if order.iter().enumerate().any(|(i, &r)| g[r as usize] as usize != i / group) {
                    return Err(bad(name, format!("g_idx does not give every group {group} rows")));
                }
                Some(order)
            }
        }
    };
    let words = match &perm {
        None => words,
        Some(order) => {
            let q = unpack(&words, k, n);
            let mut sorted = vec![0u8; k * n];
            for (i, &r) in order.iter().enumerate() {
                sorted[i * n..(i + 1) * n].copy_from_slice(&q[r as usize * n..(r as usize + 1) * n]);
            }
            pack(&sorted, k, n)
        }
    };
    let all_eight = zeros.iter().all(|&z| z == SYM_ZERO as u8);
    let offsets = (!(sym && all_eight)).then(|| offsets_from_zeros(scales, &zeros));
    Ok(QuantTensor { host: HostInt4 { words, scales: scales.to_vec(), offsets, k, n, group }, perm })
}

/// An AWQ (GEMM layout) checkpoint tensor.
pub fn from_awq(name: &str, qweight: &[i32], qzeros: &[i32], scales: &[f32], (k, n, group): (usize, usize, usize)) -> Result<QuantTensor> {
    if k == 0 || n == 0 || group == 0 || k % group != 0 || n % 8 != 0 {
        return Err(bad(name, format!("AWQ shape: input {k}, output {n} (a multiple of 8), group {group} must divide the input")));
    }
    let groups = k / group;
    check_len(name, "scales", scales.len(), groups * n)?;
    let q = unpack_cols(name, qweight, k, n, &AWQ_ORDER)?;
    let zeros = unpack_cols(name, qzeros, groups, n, &AWQ_ORDER)?;
    let offsets = Some(offsets_from_zeros(scales, &zeros));
    Ok(QuantTensor { host: HostInt4 { words: pack(&q, k, n), scales: scales.to_vec(), offsets, k, n, group }, perm: None })
}

/// Reorder the output columns: column c of the result is column `order[c]` of `h`.
pub fn permute_columns(h: &HostInt4, order: &[usize]) -> HostInt4 {
    let (k, n) = (h.k, h.n);
    let q = unpack(&h.words, k, n);
    let cols = |v: &[f32], rows: usize| -> Vec<f32> { (0..rows * n).map(|i| v[(i / n) * n + order[i % n]]).collect() };
    let moved: Vec<u8> = (0..k * n).map(|i| q[(i / n) * n + order[i % n]]).collect();
    let groups = k / h.group;
    HostInt4 { words: pack(&moved, k, n), scales: cols(&h.scales, groups), offsets: h.offsets.as_ref().map(|o| cols(o, groups)), ..*h }
}

/// How a checkpoint directory stores int4 layers (`quantization_config` of its config.json).
#[derive(Debug, Clone, PartialEq)]
pub struct CheckpointQuant {
    pub method: QuantMethod,
    /// None: one group over the whole input row (`group_size: -1`).
    pub group: Option<usize>,
    pub sym: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum QuantMethod {
    /// AutoGPTQ / GPTQModel; `v1`: the `gptq` checkpoint format (zeros stored minus one).
    Gptq { v1: bool },
    Awq,
}

impl CheckpointQuant {
    /// From config.json; None when it has no `quantization_config`. Unsupported settings are errors.
    pub fn from_config(v: &serde_json::Value) -> Result<Option<Self>> {
        let Some(q) = v.get("quantization_config") else { return Ok(None) };
        let get_str = |k: &str| q.get(k).and_then(serde_json::Value::as_str).unwrap_or("");
        let cfg_err = |m: String| Error::Config(format!("quantization_config: {m}"));
        let bits = q.get("bits").or_else(|| q.get("w_bit")).and_then(serde_json::Value::as_u64).unwrap_or(0);
        if bits != 4 {
            return Err(cfg_err(format!("{bits}-bit weights (only 4-bit is supported)")));
        }
        let group = match q.get("group_size").or_else(|| q.get("q_group_size")).and_then(serde_json::Value::as_i64) {
            Some(-1) => None,
            Some(g) if g > 0 => Some(g as usize),
            other => return Err(cfg_err(format!("group_size {other:?}"))),
        };
        let method = match get_str("quant_method") {
            "gptq" => QuantMethod::Gptq { v1: get_str("checkpoint_format") != "gptq_v2" },
            "awq" => {
                let version = get_str("version").to_lowercase();
                if !version.is_empty() && version != "gemm" {
                    return Err(cfg_err(format!("AWQ version {version:?} (only the GEMM layout is supported)")));
                }
                QuantMethod::Awq
            }
            other => return Err(cfg_err(format!("quant_method {other:?} (supported: gptq, awq)"))),
        };
        let sym = q.get("sym").and_then(serde_json::Value::as_bool).unwrap_or(matches!(method, QuantMethod::Gptq { .. }));
        Ok(Some(Self { method, group, sym }))
    }
}

/// GPTQ v1 tensors of a weight: (qweight [K/8, N], qzeros [K/G, N/8], scales [K/G, N], g_idx [K]).
pub struct GptqTensors {
    pub qweight: Vec<i32>,
    pub qzeros: Vec<i32>,
    pub scales: Vec<f32>,
    pub g_idx: Vec<i32>,
}

/// Write the engine format as GPTQ v1. Offsets must be integer zero points (-z * scale, z in 0..16).
pub fn to_gptq(name: &str, h: &HostInt4) -> Result<GptqTensors> {
    let (k, n, group) = (h.k, h.n, h.group);
    let groups = k / group;
    let zeros: Vec<u8> = match &h.offsets {
        None => vec![SYM_ZERO as u8; groups * n],
        Some(off) => off
            .iter()
            .zip(&h.scales)
            .map(|(o, s)| {
                let z = (-o / s).round();
                if !(0.0..=15.0).contains(&z) || (z * s + o).abs() > 1e-3 * s.abs().max(1e-12) {
                    return Err(bad(name, format!("offset {o} with scale {s} is not an integer zero point")));
                }
                Ok(z as u8)
            })
            .collect::<Result<_>>()?,
    };
    let wpr = n.div_ceil(8);
    let mut qzeros = vec![0i32; groups * wpr];
    for g in 0..groups {
        for c in 0..n {
            // v1 stores z - 1 (wrapping, as AutoGPTQ does)
            let stored = (zeros[g * n + c].wrapping_sub(1) & 15) as u32;
            qzeros[g * wpr + c / 8] = (qzeros[g * wpr + c / 8] as u32 | (stored << (4 * (c % 8)))) as i32;
        }
    }
    Ok(GptqTensors {
        qweight: h.words.iter().map(|&w| w as i32).collect(),
        qzeros,
        scales: h.scales.clone(),
        g_idx: (0..k).map(|r| (r / group) as i32).collect(),
    })
}

/// Input rows per scale of the GGUF blocks [`from_gguf`] maps onto int4 (Q4_K's sub-blocks too).
pub const GGUF_INT4_GROUP: usize = 32;

/// `Some(GGUF_INT4_GROUP)` for the GGUF types [`from_gguf`] keeps as int4.
pub fn gguf_int4_group(ty: GgmlType) -> Option<usize> {
    matches!(ty, GgmlType::Q4_0 | GgmlType::Q4_1 | GgmlType::Q4K).then_some(GGUF_INT4_GROUP)
}

/// GGUF Q4_0 / Q4_1 / Q4_K data of a weight with `n` rows (outputs) of `k` values (inputs) as group-32
/// int4; None for other types (they dequantize and requantize).
pub fn from_gguf(name: &str, ty: GgmlType, raw: &[u8], k: usize, n: usize) -> Result<Option<HostInt4>> {
    if gguf_int4_group(ty).is_none() {
        return Ok(None);
    }
    let (be, bb) = ty.block();
    if k % be != 0 || raw.len() != k / be * bb * n {
        return Err(Error::Gguf(format!("{name}: {ty:?} data of {} bytes for {n} rows of {k}", raw.len())));
    }
    let groups = k / GGUF_INT4_GROUP;
    let mut q = vec![0u8; k * n];
    let mut scales = vec![0f32; groups * n];
    let mut offsets = vec![0f32; groups * n];
    let h = |b: &[u8], i: usize| f16::from_le_bytes([b[i], b[i + 1]]).to_f32();
    for (c, row) in raw.chunks_exact(k / be * bb).enumerate() {
        for (bi, b) in row.chunks_exact(bb).enumerate() {
            // (first input row of the 32-group, scale, offset, nibble source for value j in 0..32)
            let mut put = |g: usize, s: f32, o: f32, v: &dyn Fn(usize) -> u8| {
                scales[g * n + c] = s;
                offsets[g * n + c] = o;
                for j in 0..32 {
                    q[(g * 32 + j) * n + c] = v(j);
                }
            };
            match ty {
                GgmlType::Q4_0 => {
                    let d = h(b, 0);
                    put(bi, d, -SYM_ZERO * d, &|j| if j < 16 { b[2 + j] & 15 } else { b[2 + j - 16] >> 4 });
                }
                GgmlType::Q4_1 => {
                    let (d, m) = (h(b, 0), h(b, 2));
                    put(bi, d, m, &|j| if j < 16 { b[4 + j] & 15 } else { b[4 + j - 16] >> 4 });
                }
                _ => {
                    let (d, dmin) = (h(b, 0), h(b, 2));
                    let sc = &b[4..16];
                    for chunk in 0..4 {
                        let qs = &b[16 + 32 * chunk..16 + 32 * chunk + 32];
                        for half in 0..2 {
                            let (s, m) = crate::quants::scale_min_k4(2 * chunk + half, sc);
                            let g = bi * 8 + 2 * chunk + half;
                            put(g, d * s, -dmin * m, &|j| if half == 0 { qs[j] & 15 } else { qs[j] >> 4 });
                        }
                    }
                }
            }
        }
    }
    let offsets = (ty != GgmlType::Q4_0).then_some(offsets);
    Ok(Some(HostInt4 { words: pack(&q, k, n), scales, offsets, k, n, group: 32 }))
}

#[cfg(test)]
mod tests {
    use super::*;
    use hierspec_kernels::int4::quantize_rtn;

    fn weight(k: usize, n: usize) -> Vec<f32> {
        (0..k * n).map(|i| ((i * 7919 % 211) as f32 / 211.0 - 0.5) * 0.3).collect()
    }

    #[test]
    fn gptq_roundtrip_asymmetric_and_symmetric() {
        let (k, n, g) = (64, 12, 32);
        for asym in [true, false] {
            let h = quantize_rtn(&weight(k, n), k, n, g, asym).unwrap();
            let t = to_gptq("w", &h).unwrap();
            let back = from_gptq("w", &t.qweight, &t.qzeros, &t.scales, Some(&t.g_idx), (k, n, g), true, !asym).unwrap();
            assert!(back.perm.is_none());
            assert_eq!(back.host.dequantize(), h.dequantize(), "asymmetric {asym}");
        }
    }

    #[test]
    fn gptq_act_order_sorts_rows_into_groups() {
        let (k, n, g) = (32, 8, 8);
        let h = quantize_rtn(&weight(k, n), k, n, g, true).unwrap();
        // Shuffle rows: stored row r holds sorted row sigma(r); g_idx[r] = sigma(r) / g.
        let sigma: Vec<usize> = (0..k).map(|r| (r * 13 + 5) % k).collect();
        let q = unpack(&h.words, k, n);
        let mut shuffled = vec![0u8; k * n];
        for r in 0..k {
            shuffled[r * n..(r + 1) * n].copy_from_slice(&q[sigma[r] * n..(sigma[r] + 1) * n]);
        }
        let t = to_gptq("w", &h).unwrap();
        let g_idx: Vec<i32> = sigma.iter().map(|&s| (s / g) as i32).collect();
        let words: Vec<i32> = pack(&shuffled, k, n).iter().map(|&w| w as i32).collect();
        let back = from_gptq("w", &words, &t.qzeros, &t.scales, Some(&g_idx), (k, n, g), true, false).unwrap();
        let perm = back.perm.expect("act-order needs a permutation");
        // x[:, perm] @ back == x @ shuffled-dequantized: check column by column on a one-hot x.
        let dense_back = back.host.dequantize();
        let dense_orig = h.dequantize();
        for (i, &r) in perm.iter().enumerate() {
            // sorted row i is stored row r, which holds original row sigma[r]
            assert_eq!(&dense_back[i * n..(i + 1) * n], &dense_orig[sigma[r as usize] * n..(sigma[r as usize] + 1) * n]);
        }
    }

    #[test]
    fn awq_interleave() {
        let (k, n, g) = (16, 16, 8);
        let q: Vec<u8> = (0..k * n).map(|i| (i % 16) as u8).collect();
        // Pack as AutoAWQ's GEMM packer: nibble i of a word holds column 8w + order[i].
        let pack_awq = |vals: &[u8], rows: usize| -> Vec<i32> {
            let mut out = vec![0i32; rows * n / 8];
            for r in 0..rows {
                for w in 0..n / 8 {
                    let mut word = 0u32;
                    for (i, &c) in AWQ_ORDER.iter().enumerate() {
                        word |= (vals[r * n + w * 8 + c] as u32) << (4 * i);
                    }
                    out[r * n / 8 + w] = word as i32;
                }
            }
            out
        };
        let zeros: Vec<u8> = (0..(k / g) * n).map(|i| (i % 5 + 3) as u8).collect();
        let scales: Vec<f32> = (0..(k / g) * n).map(|i| 0.01 * (i + 1) as f32).collect();
        let t = from_awq("w", &pack_awq(&q, k), &pack_awq(&zeros, k / g), &scales, (k, n, g)).unwrap();
        let got = t.host.dequantize();
        for r in 0..k {
            for c in 0..n {
                let gi = (r / g) * n + c;
                let want = (q[r * n + c] as f32 - zeros[gi] as f32) * scales[gi];
                assert!((got[r * n + c] - want).abs() < 1e-6, "({r}, {c}): {} vs {want}", got[r * n + c]);
            }
        }
    }

    #[test]
    fn gguf_q4_blocks_map_exactly() {
        let (k, n) = (256, 3);
        // Deterministic bytes with valid f16 scales.
        for ty in [GgmlType::Q4_0, GgmlType::Q4_1, GgmlType::Q4K] {
            let (be, bb) = ty.block();
            let mut raw: Vec<u8> = (0..k / be * bb * n).map(|i| (i * 131 % 251) as u8).collect();
            for blk in raw.chunks_exact_mut(bb) {
                blk[0..2].copy_from_slice(&f16::from_f32(0.013).to_le_bytes());
                blk[2..4].copy_from_slice(&f16::from_f32(-0.021).to_le_bytes());
            }
            let dense = ty.dequantize(&raw, k * n).unwrap(); // [n rows of k]
            let h = from_gguf("w", ty, &raw, k, n).unwrap().unwrap();
            let ours = h.dequantize(); // [k, n]
            for c in 0..n {
                for r in 0..k {
                    let (a, b) = (ours[r * n + c], dense[c * k + r]);
                    assert!((a - b).abs() <= 1e-6 * b.abs().max(1.0), "{ty:?} ({r}, {c}): {a} vs {b}");
                }
            }
        }
        assert!(from_gguf("w", GgmlType::Q8_0, &[], 32, 1).unwrap().is_none());
    }

    #[test]
    fn malformed_checkpoints_are_errors() {
        let (k, n, g) = (64, 8, 32);
        let h = quantize_rtn(&weight(k, n), k, n, g, true).unwrap();
        let t = to_gptq("w", &h).unwrap();
        let err = |r: Result<QuantTensor>| r.unwrap_err().to_string();
        assert!(err(from_gptq("w", &t.qweight[1..], &t.qzeros, &t.scales, None, (k, n, g), true, false)).contains("qweight holds"));
        assert!(err(from_gptq("w", &t.qweight, &t.qzeros, &t.scales[..8], None, (k, n, g), true, false)).contains("scales holds"));
        assert!(err(from_gptq("w", &t.qweight, &t.qzeros, &t.scales, None, (k, n, 48), true, false)).contains("does not divide"));
        let uneven: Vec<i32> = (0..k as i32).map(|r| if r < 40 { 0 } else { 1 }).collect();
        assert!(err(from_gptq("w", &t.qweight, &t.qzeros, &t.scales, Some(&uneven), (k, n, g), true, false)).contains("every group"));
    }
}

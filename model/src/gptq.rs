//! GPTQ (Frantar et al., 2022): quantize a weight one input row at a time and push each row's
//! rounding error onto the rows not yet quantized, weighted by the inverse Hessian of the layer's
//! inputs, so that the layer's *outputs* on calibration data move as little as possible. Works on the
//! host in f64 on the engine's layout (W [K, N], K = inputs); the grid is RTN's (`int4::group_params`),
//! with each group's parameters taken from the already-updated rows when the group starts, as GPTQ does.

use hierspec_kernels::int4::{group_params, pack, quantize_value, HostInt4};

use crate::error::{Error, Result};

/// Accumulates H = 2/n * sum x x^T over the input rows x [K] a layer sees.
#[derive(Debug, Clone)]
pub struct Hessian {
    pub k: usize,
    h: Vec<f64>,
    samples: usize,
}

impl Hessian {
    pub fn new(k: usize) -> Self {
        Self { k, h: vec![0.0; k * k], samples: 0 }
    }

    /// Add the rows of `x` ([rows, K] row-major).
    pub fn add(&mut self, x: &[f32]) -> Result<()> {
        let k = self.k;
        if x.len() % k != 0 {
            return Err(Error::Setting(format!("GPTQ: {} activations are not rows of {k}", x.len())));
        }
        for row in x.chunks_exact(k) {
            for i in 0..k {
                let xi = row[i] as f64;
                if xi == 0.0 {
                    continue;
                }
                let hi = &mut self.h[i * k..(i + 1) * k];
                for (j, xj) in row.iter().enumerate() {
                    hi[j] += xi * *xj as f64;
                }
            }
            self.samples += 1;
        }
        Ok(())
    }

    pub fn samples(&self) -> usize {
        self.samples
    }

    /// The accumulated sum of x x^T, [k, k] row-major.
    pub fn gram(&self) -> &[f64] {
        &self.h
    }

    /// tr(D^T H D) / samples for D = w - w2 ([k, n] each): the layers' summed squared output error
    /// per calibration row.
    pub fn output_error(&self, w: &[f32], w2: &[f32], n: usize) -> f64 {
        let k = self.k;
        let d: Vec<f64> = w.iter().zip(w2).map(|(a, b)| (a - b) as f64).collect();
        let mut total = 0.0;
        let mut hd = vec![0.0; n];
        for i in 0..k {
            hd.iter_mut().for_each(|v| *v = 0.0);
            for j in 0..k {
                let h = self.h[i * k + j];
                if h != 0.0 {
                    for (v, x) in hd.iter_mut().zip(&d[j * n..(j + 1) * n]) {
                        *v += h * x;
                    }
                }
            }
            total += hd.iter().zip(&d[i * n..(i + 1) * n]).map(|(a, b)| a * b).sum::<f64>();
        }
        total / self.samples.max(1) as f64
    }

    /// From the sum of x x^T over `samples` input rows, accumulated elsewhere (on a device).
    pub fn from_gram(k: usize, gram: Vec<f64>, samples: usize) -> Result<Self> {
        if gram.len() != k * k {
            return Err(Error::Setting(format!("GPTQ: a Gram matrix of {} values for {k} inputs", gram.len())));
        }
        Ok(Self { k, h: gram, samples })
    }
}

/// The upper factor U of H^{-1} = U^T U (row i of U spreads row i's rounding error), without forming
/// H^{-1}: with J the reversal, J H J = M M^T gives H = U' U'^T for the upper U' = J M J, so
/// H^{-1} = U'^{-T} U'^{-1} and U = U'^{-1} = J M^{-1} J. One Cholesky and one triangular inverse,
/// through faer: blocked and multithreaded, which a 8960-wide down_proj needs (a row-by-row loop
/// took minutes per layer on two cores).
fn upper_cholesky_of_inverse(h: &[f64], k: usize) -> Result<Vec<f64>> {
    use faer::{linalg::triangular_inverse::invert_lower_triangular, Mat, Par, Side};
    let rev = Mat::<f64>::from_fn(k, k, |i, j| h[(k - 1 - i) * k + (k - 1 - j)]);
    let llt = rev
        .llt(Side::Lower)
        .map_err(|_| Error::Setting("GPTQ: the damped Hessian is not positive definite (raise the damping)".into()))?;
    let mut minv = Mat::<f64>::zeros(k, k);
    invert_lower_triangular(minv.as_mut(), llt.L(), Par::rayon(0));
    Ok((0..k * k).map(|idx| if idx / k > idx % k { 0.0 } else { minv[(k - 1 - idx / k, k - 1 - idx % k)] }).collect())
}

/// Rows GPTQ quantizes between two updates of the rows after them (its "lazy batch"): inside a block
/// each row's error goes to the block's later rows at once, and to the rows past the block in one
/// matrix product at its end. A group's scale is taken from its rows when the group starts, so every
/// group must start at a block start or lie inside one block: then each group still sees all the
/// updates from the rows before it, as in the row-by-row algorithm.
fn block_rows(group: usize, k: usize) -> usize {
    const BLOCK: usize = 128;
    let group = group.min(k);
    if BLOCK % group == 0 || group % BLOCK == 0 {
        BLOCK
    } else {
        group
    }
}

/// GPTQ-quantize `w` ([k, n] row-major, k = inputs) with the inputs' Hessian. `damp`: fraction of the
/// mean diagonal added to it (GPTQ uses 0.01).
pub fn gptq(w: &[f32], k: usize, n: usize, group: usize, asymmetric: bool, hessian: &Hessian, damp: f64) -> Result<HostInt4> {
    hierspec_kernels::int4::check_dims(k, n, group).map_err(|e| Error::Setting(e.0))?;
    if hessian.k != k || w.len() != k * n {
        return Err(Error::Setting(format!("GPTQ: weight [{k}, {n}] ({} values) with a Hessian over {} inputs", w.len(), hessian.k)));
    }
    if hessian.samples == 0 {
        return Err(Error::Setting("GPTQ: no calibration activations".into()));
    }
    let mut h: Vec<f64> = hessian.h.iter().map(|v| 2.0 * v / hessian.samples as f64).collect();
    let mut w: Vec<f64> = w.iter().map(|&v| v as f64).collect();
    // Inputs that never fire carry no information: their rows quantize to zero error anyway.
    for i in 0..k {
        if h[i * k + i] == 0.0 {
            h[i * k + i] = 1.0;
            w[i * n..(i + 1) * n].iter_mut().for_each(|v| *v = 0.0);
        }
    }
    let mean_diag = (0..k).map(|i| h[i * k + i]).sum::<f64>() / k as f64;
    for i in 0..k {
        h[i * k + i] += damp * mean_diag;
    }
    let u = upper_cholesky_of_inverse(&h, k)?;
    let groups = k / group;
    let mut q = vec![0u8; k * n];
    let mut scales = vec![0f32; groups * n];
    let mut offsets = vec![0f32; groups * n];
    let block = block_rows(group, k);
    // err[r] = row (i1 + r)'s rounding error divided by its pivot, for the block's rows.
    let mut err = vec![0f64; block * n];
    for i1 in (0..k).step_by(block) {
        let i2 = (i1 + block).min(k);
        for i in i1..i2 {
            let g = i / group;
            if i % group == 0 {
                for c in 0..n {
                    let (s, o) = group_params((i..i + group).map(|r| w[r * n + c] as f32), asymmetric);
                    scales[g * n + c] = s;
                    offsets[g * n + c] = o;
                }
            }
            let d = u[i * k + i];
            let e = &mut err[(i - i1) * n..(i - i1 + 1) * n];
            for c in 0..n {
                let (s, o) = (scales[g * n + c], offsets[g * n + c]);
                let v = quantize_value(w[i * n + c] as f32, s, o);
                q[i * n + c] = v;
                e[c] = (w[i * n + c] - (v as f64 * s as f64 + o as f64)) / d;
            }
            for j in i + 1..i2 {
                let f = u[i * k + j];
                if f != 0.0 {
                    for (wc, e) in w[j * n..(j + 1) * n].iter_mut().zip(&*e) {
                        *wc -= f * e;
                    }
                }
            }
        }
        if i2 < k {
            // W[i2.., :] -= U[i1..i2, i2..]^T err
            use faer::{linalg::matmul::matmul, Accum, MatMut, MatRef, Par};
            let rows = i2 - i1;
            let ut = MatRef::from_row_major_slice(&u[i1 * k..i2 * k], rows, k).subcols(i2, k - i2).transpose();
            let e = MatRef::from_row_major_slice(&err[..rows * n], rows, n);
            let rest = MatMut::from_row_major_slice_mut(&mut w[i2 * n..], k - i2, n);
            matmul(rest, Accum::Add, ut, e, -1.0, Par::rayon(0));
        }
    }
    Ok(HostInt4 { words: pack(&q, k, n), scales, offsets: asymmetric.then_some(offsets), k, n, group })
}

#[cfg(test)]
mod tests {
    use super::*;
    use hierspec_kernels::int4::quantize_rtn;
    use rand::rngs::StdRng;
    use rand::{Rng, SeedableRng};

    /// ||X W - X W'||^2 over rows of x [s, k].
    fn output_error(x: &[f32], w: &[f32], w2: &[f32], k: usize, n: usize) -> f64 {
        x.chunks_exact(k)
            .map(|row| {
                (0..n)
                    .map(|c| {
                        let d: f64 = (0..k).map(|r| row[r] as f64 * (w[r * n + c] - w2[r * n + c]) as f64).sum();
                        d * d
                    })
                    .sum::<f64>()
            })
            .sum()
    }

    #[test]
    fn gptq_beats_rtn_on_correlated_inputs() {
        let mut rng = StdRng::seed_from_u64(5);
        let (s, k, n, g) = (512, 64, 24, 32);
        // Inputs concentrated on a few directions, as activations are: x = z B + noise, rank 12.
        let r = 12;
        let b: Vec<f32> = (0..r * k).map(|_| rng.random_range(-1.0f32..1.0)).collect();
        let z: Vec<f32> = (0..s * r).map(|_| rng.random_range(-1.0f32..1.0)).collect();
        let x: Vec<f32> = (0..s * k).map(|i| (0..r).map(|p| z[(i / k) * r + p] * b[p * k + i % k]).sum::<f32>() + rng.random_range(-0.05f32..0.05)).collect();
        let w: Vec<f32> = (0..k * n).map(|_| rng.random_range(-0.1f32..0.1)).collect();
        let mut h = Hessian::new(k);
        h.add(&x).unwrap();
        for asym in [true, false] {
            let ours = gptq(&w, k, n, g, asym, &h, 0.01).unwrap().dequantize();
            let rtn = quantize_rtn(&w, k, n, g, asym).unwrap().dequantize();
            let (e_gptq, e_rtn) = (output_error(&x, &w, &ours, k, n), output_error(&x, &w, &rtn, k, n));
            eprintln!("asymmetric {asym}: output error GPTQ {e_gptq:.3} vs RTN {e_rtn:.3}");
            assert!(e_gptq < 0.5 * e_rtn, "asymmetric {asym}: GPTQ output error {e_gptq} vs RTN {e_rtn}");
        }
    }

    /// GPTQ one row at a time: every row's error goes to all later rows before the next row is
    /// quantized (the algorithm as the paper states it, without lazy batches).
    fn gptq_row_by_row(w: &[f32], k: usize, n: usize, group: usize, asym: bool, h: &Hessian, damp: f64) -> Vec<u8> {
        let mut hh: Vec<f64> = h.h.iter().map(|v| 2.0 * v / h.samples as f64).collect();
        let mean = (0..k).map(|i| hh[i * k + i]).sum::<f64>() / k as f64;
        (0..k).for_each(|i| hh[i * k + i] += damp * mean);
        let u = upper_cholesky_of_inverse(&hh, k).unwrap();
        let mut w: Vec<f64> = w.iter().map(|&v| v as f64).collect();
        let (mut q, mut sc) = (vec![0u8; k * n], vec![(0f32, 0f32); n]);
        for i in 0..k {
            if i % group == 0 {
                (0..n).for_each(|c| sc[c] = group_params((i..i + group).map(|r| w[r * n + c] as f32), asym));
            }
            let err: Vec<f64> = (0..n)
                .map(|c| {
                    let v = quantize_value(w[i * n + c] as f32, sc[c].0, sc[c].1);
                    q[i * n + c] = v;
                    (w[i * n + c] - (v as f64 * sc[c].0 as f64 + sc[c].1 as f64)) / u[i * k + i]
                })
                .collect();
            for j in i + 1..k {
                (0..n).for_each(|c| w[j * n + c] -= u[i * k + j] * err[c]);
            }
        }
        q
    }

    #[test]
    fn lazy_batches_quantize_as_row_by_row_does() {
        let mut rng = StdRng::seed_from_u64(9);
        // K past one block and not a multiple of it; groups inside a block (32, 64), a group that is
        // not a divisor of the block (96: blocks of one group), a group spanning blocks (the row).
        for (k, n, g) in [(320, 24, 32), (320, 24, 64), (384, 10, 96), (384, 10, 384)] {
            let s = 2 * k;
            let x: Vec<f32> = (0..s * k).map(|i| rng.random_range(-1.0f32..1.0) + if i % k < 8 { 2.0 } else { 0.0 }).collect();
            let w: Vec<f32> = (0..k * n).map(|_| rng.random_range(-0.1f32..0.1)).collect();
            let mut h = Hessian::new(k);
            h.add(&x).unwrap();
            let want = gptq_row_by_row(&w, k, n, g, true, &h, 0.01);
            let got = gptq(&w, k, n, g, true, &h, 0.01).unwrap();
            let got = hierspec_kernels::int4::unpack(&got.words, k, n);
            let same = want.iter().zip(&got).filter(|(a, b)| a == b).count();
            // Only the summation order differs, so a code can flip only at a rounding tie.
            assert!(same as f64 >= 0.999 * (k * n) as f64, "k {k} group {g}: {same} of {} codes agree", k * n);
        }
    }

    #[test]
    fn upper_factor_of_the_inverse() {
        let k = 7;
        let a: Vec<f64> = (0..k * k).map(|i| if i % (k + 1) == 0 { 4.0 } else { 0.5 / (1 + i % 3) as f64 }).collect();
        let sym: Vec<f64> = (0..k * k).map(|i| (a[i] + a[(i % k) * k + i / k]) / 2.0).collect();
        let u = upper_cholesky_of_inverse(&sym, k).unwrap();
        for i in 0..k {
            assert!(u[i * k + i] > 0.0);
            for j in 0..i {
                assert_eq!(u[i * k + j], 0.0, "U is upper triangular");
            }
        }
        // (U^T U) H = I
        for i in 0..k {
            for j in 0..k {
                let p: f64 = (0..k).map(|m| (0..k).map(|r| u[r * k + i] * u[r * k + m]).sum::<f64>() * sym[m * k + j]).sum();
                assert!((p - if i == j { 1.0 } else { 0.0 }).abs() < 1e-12, "({i}, {j}): {p}");
            }
        }
    }

    #[test]
    fn bad_calibration_is_an_error() {
        let h = Hessian::new(8);
        assert!(gptq(&[0.0; 16], 8, 2, 8, true, &h, 0.01).unwrap_err().to_string().contains("no calibration"));
        let mut h = Hessian::new(8);
        assert!(h.add(&[1.0; 7]).is_err());
        h.add(&[1.0; 8]).unwrap();
        assert!(gptq(&[0.0; 16], 4, 4, 4, true, &h, 0.01).is_err(), "Hessian over 8 inputs for a 4-input weight");
    }
}

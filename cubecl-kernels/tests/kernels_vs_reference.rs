//! Every kernel against its plain-tensor reference on random inputs of awkward sizes (K and N not
//! multiples of the tiles, M in {1, 3, 17, 64, 128}). Runs on the cubecl runtime the features select:
//! `--features wgpu` (lavapipe in CI) or `--features cuda` (the GPU). Without either there is no
//! kernel to compare, so the file is empty.
#![cfg(any(feature = "wgpu", feature = "cuda"))]

mod common;

use burn::tensor::{DType, Distribution, Tensor};
use common::{bound, device, int4_weight, rel_err};
use hierspec_kernels::attention::{self, AttnMask};
use hierspec_kernels::start::CacheStart;
use hierspec_kernels::{dense, fused, int4};
use rand::{rngs::StdRng, Rng, SeedableRng};

const MS: [usize; 5] = [1, 3, 17, 64, 128];

#[test]
fn dense_small_m_kernel_matches_reference() {
    let device = device();
    for (k, n) in [(301, 97), (64, 33), (1000, 161)] {
        let w = Tensor::<2>::random([k, n], Distribution::Normal(0.0, 1.0), &device);
        for m in MS {
            let x = Tensor::<2>::random([m, k], Distribution::Normal(0.0, 1.0), &device);
            let err = rel_err(dense::linear(x.clone(), w.clone()), dense::reference_linear(x, w.clone()));
            assert!(err <= bound(&device), "dense m {m} k {k} n {n}: relative error {err}");
        }
    }
}

#[test]
fn int4_kernel_matches_reference() {
    let device = device();
    let mut rng = StdRng::seed_from_u64(7);
    // (k, n, group, asymmetric): groups of 32 and 128, a full-row group, and a K that is not a
    // multiple of 8 (the last word is partial).
    for (k, n, g, asym) in [(352, 97, 32, false), (352, 97, 32, true), (640, 161, 128, false), (296, 45, 296, true), (300, 33, 300, false)] {
        let w: Vec<f32> = (0..k * n).map(|_| rng.random_range(-1.0f32..1.0)).collect();
        let q = int4::quantize_rtn(&w, k, n, g, asym).unwrap().upload(&device).unwrap();
        for m in MS {
            let x = Tensor::<2>::random([m, k], Distribution::Normal(0.0, 1.0), &device);
            let err = rel_err(int4::matmul(x.clone(), &q), int4::reference_matmul(x, &q));
            assert!(err <= bound(&device), "int4 m {m} k {k} n {n} g {g} asym {asym}: relative error {err}");
        }
    }
}

#[test]
fn tree_attention_kernel_matches_reference() {
    let device = device();
    let mut rng = StdRng::seed_from_u64(11);
    // (heads, kv_heads, head_dim, cache_len, new rows): GQA groups 1, 2 and 4, head dims that are not
    // powers of two, new rows past one mask word, a cache longer than one chunk.
    for (nh, nkv, hd, cache_len, n) in [(4, 2, 64, 0, 7), (4, 1, 80, 5, 45), (2, 2, 128, 300, 1), (8, 2, 64, 260, 19), (4, 4, 32, 1000, 70), (2, 1, 40, 33, 5)] {
        let t = cache_len + n;
        let cap = t + 9; // the cache buffer is larger than the rows in use: K/V arrive as views
        let k = Tensor::<4>::random([1, nkv, cap, hd], Distribution::Normal(0.0, 1.0), &device).slice([0..1, 0..nkv, 0..t, 0..hd]);
        let v = Tensor::<4>::random([1, nkv, cap, hd], Distribution::Normal(0.0, 1.0), &device).slice([0..1, 0..nkv, 0..t, 0..hd]);
        let q = Tensor::<4>::random([1, nh, n, hd], Distribution::Normal(0.0, 2.0), &device);
        // A random tree: every row sees itself and a random set of earlier rows (its "ancestors").
        let mut allowed = vec![false; n * n];
        for i in 0..n {
            allowed[i * n + i] = true;
            for j in 0..i {
                allowed[i * n + j] = rng.random_bool(0.3);
            }
        }
        let mask = (n > 1).then(|| AttnMask::from_new_rows(cache_len, n, &allowed, &device));
        // The reference in f32 on the same (possibly bf16-rounded) inputs: in half precision the
        // reference would round scores and probabilities itself, the kernel keeps them in f32.
        let f = |t: &Tensor<4>| t.clone().cast(DType::F32);
        let got = attention::attention(q.clone(), k.clone(), v.clone(), mask.as_ref());
        let want = attention::reference(f(&q), f(&k), f(&v), mask.as_ref());
        let err = rel_err(got, want);
        assert!(err <= bound(&device), "attention heads {nh}/{nkv} hd {hd} cache {cache_len} n {n}: relative error {err}");

        // The drafter's case: earlier draft rows are still in the cache and masked too (the last
        // `cols` keys follow the mask, the rest are visible).
        let cols = (cache_len / 2).max(1).min(t - 1) + 1;
        let cols = cols.max(n).min(t);
        let allowed: Vec<bool> = (0..n * cols).map(|x| x % cols == cols - n + x / cols || rng.random_bool(0.4)).collect();
        let mask = AttnMask::new(t - cols, n, cols, &allowed, &device);
        let err = rel_err(attention::attention(q.clone(), k.clone(), v.clone(), Some(&mask)), attention::reference(f(&q), f(&k), f(&v), Some(&mask)));
        assert!(err <= bound(&device), "attention with {cols} masked keys, heads {nh}/{nkv} hd {hd} n {n}: relative error {err}");
    }
}

/// Greedy verification is exact only if a tree node's attention equals, bit for bit, the single-row
/// step at its position once its path is in the cache: the kernel sums the same keys in the same
/// chunks, segments and slots whatever rows the tree put them in. Here the tree's 600 keys make two
/// segments of 512; a shallow node's path step has one (the kernel writes it directly), a deep
/// node's has two (merged): both must match the tree's merged result.
#[test]
fn tree_attention_equals_the_path_step_bit_for_bit() {
    let device = device();
    let mut rng = StdRng::seed_from_u64(23);
    let (nh, nkv, hd, prefix, n) = (4, 2, 64, 500, 100);
    let t = prefix + n;
    let k = Tensor::<4>::random([1, nkv, t, hd], Distribution::Normal(0.0, 1.0), &device);
    let v = Tensor::<4>::random([1, nkv, t, hd], Distribution::Normal(0.0, 1.0), &device);
    let q = Tensor::<4>::random([1, nh, n, hd], Distribution::Normal(0.0, 2.0), &device);
    // A random tree in parents-before-children order; node i sees its ancestors and itself.
    let parent: Vec<usize> = (0..n).map(|i: usize| if i == 0 { 0 } else { rng.random_range(i.saturating_sub(6)..i) }).collect();
    let path = |mut i: usize| {
        let mut p = vec![i];
        while i != 0 {
            i = parent[i];
            p.push(i);
        }
        p.reverse();
        p
    };
    let mut allowed = vec![false; n * n];
    for i in 0..n {
        for a in path(i) {
            allowed[i * n + a] = true;
        }
    }
    let mask = AttnMask::from_new_rows(prefix, n, &allowed, &device);
    let rows = |t: Tensor<4>| -> Vec<f32> { t.cast(DType::F32).into_data().iter::<f32>().collect() };
    let tree = rows(attention::attention(q.clone(), k.clone(), v.clone(), Some(&mask)));
    let deepest = (0..n).max_by_key(|&i| path(i).len()).unwrap();
    assert!(path(deepest).len() > 13, "the deepest node's path step must cross into a second segment");
    for i in [0, 1, deepest, n - 1, rng.random_range(0..n)] {
        let keys: Vec<i64> = (0..prefix as i64).chain(path(i).iter().map(|&a| (prefix + a) as i64)).collect();
        let idx = burn::tensor::Tensor::<1, burn::tensor::Int>::from_data(burn::tensor::TensorData::new(keys.clone(), [keys.len()]), &device);
        let (kp, vp) = (k.clone().select(2, idx.clone()), v.clone().select(2, idx));
        let one = rows(attention::attention(q.clone().slice([0..1, 0..nh, i..i + 1, 0..hd]), kp, vp, None));
        for h in 0..nh {
            let at = |r: usize| (h * n + r) * hd;
            assert_eq!(one[h * hd..(h + 1) * hd], tree[at(i)..at(i) + hd], "node {i} (depth {}) head {h}", path(i).len() - 1);
        }
    }
}

#[test]
fn fused_linear_kernel_matches_reference() {
    let device = device();
    let mut rng = StdRng::seed_from_u64(13);
    // (k, output widths, group, asymmetric, bias, residual, swiglu): q|k|v with biases (widths not
    // multiples of 32), gate|up, o_proj and down_proj with the residual, down_proj reading gate|up.
    let cases = [
        (320, vec![96, 33, 33], 32, true, true, false, false),
        (296, vec![161, 161], 296, false, false, false, false),
        (352, vec![97], 32, true, false, true, false),
        (160, vec![45], 32, false, true, true, true),
    ];
    for (k, ns, g, asym, bias, residual, swiglu) in cases {
        let width = if swiglu { 2 * k } else { k };
        let input = if swiglu { fused::Input::SwiGlu } else { fused::Input::Plain };
        let n_out: usize = ns.iter().sum();
        let q: Vec<int4::Int4Weight> = ns.iter().map(|&n| int4_weight(&mut rng, k, n, g, asym, &device)).collect();
        let dense_w: Vec<Tensor<2>> = ns.iter().map(|&n| Tensor::random([k, n], Distribution::Normal(0.0, 0.1), &device)).collect();
        let biases: Vec<Option<Tensor<1>>> = ns.iter().map(|&n| bias.then(|| Tensor::random([n], Distribution::Normal(0.0, 1.0), &device))).collect();
        for int4_parts in [true, false] {
            let parts: Vec<fused::Part> = (0..ns.len())
                .map(|i| fused::Part {
                    weight: if int4_parts { fused::PartWeight::Int4(&q[i]) } else { fused::PartWeight::Dense(dense_w[i].clone()) },
                    perm: None,
                    bias: biases[i].clone(),
                    mma: None,
                })
                .collect();
            for m in MS {
                let x = Tensor::<2>::random([m, width], Distribution::Normal(0.0, 1.0), &device);
                let r = residual.then(|| Tensor::<2>::random([m, n_out], Distribution::Normal(0.0, 1.0), &device));
                let got = fused::linear(x.clone(), &parts, input, r.clone());
                assert_eq!(got.dims(), [m, n_out]);
                let err = rel_err(got, fused::reference_linear(x, &parts, input, r));
                assert!(err <= bound(&device), "fused int4 {int4_parts} k {k} ns {ns:?} m {m} swiglu {swiglu}: relative error {err}");
            }
        }
    }
}

/// A fused product that declines its parts (one with a bias, one without) still gives the
/// reference's answer through the per-part products, and the decline is counted for the binaries'
/// `--stats-json`.
#[test]
fn a_declined_fused_product_is_counted() {
    let device = device();
    let mut rng = StdRng::seed_from_u64(17);
    let (k, n) = (96, 40);
    let q = [int4_weight(&mut rng, k, n, 32, true, &device), int4_weight(&mut rng, k, n, 32, true, &device)];
    let parts: Vec<fused::Part> = q
        .iter()
        .enumerate()
        .map(|(i, w)| fused::Part {
            weight: fused::PartWeight::Int4(w),
            perm: None,
            bias: (i == 0).then(|| Tensor::random([n], Distribution::Normal(0.0, 1.0), &device)),
            mma: None,
        })
        .collect();
    let before = hierspec_kernels::fallback::counts().get("fused product").copied().unwrap_or(0);
    let x = Tensor::<2>::random([3, k], Distribution::Normal(0.0, 1.0), &device);
    let got = fused::linear(x.clone(), &parts, fused::Input::Plain, None);
    let err = rel_err(got, fused::reference_linear(x, &parts, fused::Input::Plain, None));
    assert!(err <= bound(&device), "relative error {err}");
    let after = hierspec_kernels::fallback::counts().get("fused product").copied().unwrap_or(0);
    assert!(after > before, "the decline was not counted ({before} -> {after})");
}

/// Row i of a product is bitwise the same whatever M: verification reproduces AR decoding exactly.
#[test]
fn small_m_products_are_batch_invariant() {
    let device = device();
    let mut rng = StdRng::seed_from_u64(17);
    let (k, n) = (1000, 161);
    let q = int4_weight(&mut rng, k, n, 8 * 25, true, &device);
    let w = Tensor::<2>::random([k, n], Distribution::Normal(0.0, 0.1), &device);
    let x = Tensor::<2>::random([128, k], Distribution::Normal(0.0, 1.0), &device);
    let rows = |t: Tensor<2>| -> Vec<f32> { t.cast(DType::F32).into_data().iter::<f32>().collect() };
    for m in [1usize, 2, 3, 8, 17, 64, 100, 128] {
        let xm = x.clone().slice([0..m, 0..k]);
        let (dense_m, int4_m) = (rows(dense::linear(xm.clone(), w.clone())), rows(int4::matmul(xm, &q)));
        for i in [0, m / 2, m - 1] {
            let xi = x.clone().slice([i..i + 1, 0..k]);
            assert_eq!(rows(dense::linear(xi.clone(), w.clone()))[..], dense_m[i * n..(i + 1) * n], "dense row {i} of m {m}");
            assert_eq!(rows(int4::matmul(xi, &q))[..], int4_m[i * n..(i + 1) * n], "int4 row {i} of m {m}");
        }
    }
}

#[test]
fn rms_norm_kernel_matches_reference() {
    let device = device();
    for (m, h) in [(1, 1536), (17, 896), (3, 100), (2, 8200)] {
        let x = Tensor::<2>::random([m, h], Distribution::Normal(0.0, 3.0), &device);
        let w = Tensor::<1>::random([h], Distribution::Normal(1.0, 0.2), &device);
        let err = rel_err(fused::rms_norm(x.clone(), w.clone(), 1e-6), fused::reference_rms_norm(x, w, 1e-6));
        assert!(err <= bound(&device), "rms_norm m {m} h {h}: relative error {err}");
    }
}

#[test]
fn rope_qkv_kernel_matches_reference() {
    let device = device();
    for (nh, nkv, hd, start, n, cap) in [(4, 2, 64, 0, 7, 16), (6, 1, 128, 37, 19, 70), (2, 2, 32, 5, 1, 9)] {
        let layout = fused::QkvLayout { heads: nh, kv_heads: nkv, head_dim: hd };
        let max_pos = 128;
        let cos = Tensor::<2>::random([max_pos, hd / 2], Distribution::Uniform(-1.0, 1.0), &device);
        let sin = Tensor::<2>::random([max_pos, hd / 2], Distribution::Uniform(-1.0, 1.0), &device);
        let qkv = Tensor::<3>::random([1, n, (nh + 2 * nkv) * hd], Distribution::Normal(0.0, 1.0), &device);
        // Tree positions: not consecutive, repeated.
        let pos: Vec<i64> = (0..n).map(|i| (start + (i * 3) % 11) as i64).collect();
        let positions = Tensor::<1, burn::tensor::Int>::from_data(burn::tensor::TensorData::new(pos, [n]), &device);
        let fresh = || Tensor::<4>::random([1, nkv, cap, hd], Distribution::Normal(0.0, 1.0), &device);
        let (mut k1, mut v1) = (fresh(), fresh());
        let (mut k2, mut v2) = (k1.clone() * 1.0, v1.clone() * 1.0);
        let q1 = fused::rope_qkv(qkv.clone(), positions.clone(), &cos, &sin, layout, &mut k1, &mut v1, &CacheStart::new(start, &device));
        let q2 = fused::reference_rope_qkv(qkv, positions, &cos, &sin, layout, &mut k2, &mut v2, start);
        for (what, a, b) in [("q", q1, q2), ("k cache", k1, k2), ("v cache", v1, v2)] {
            let err = rel_err(a, b);
            assert!(err <= bound(&device), "rope_qkv {what} heads {nh}/{nkv} hd {hd} n {n}: relative error {err}");
        }
    }
}

#[test]
fn attention_rows_is_attention_transposed() {
    let device = device();
    let (nh, nkv, hd, t, n) = (4, 2, 64, 40, 5);
    let q = Tensor::<4>::random([1, nh, n, hd], Distribution::Normal(0.0, 1.0), &device);
    // Cache buffers longer than the keys in use: the kernel reads rows [0, t) in place.
    let k = Tensor::<4>::random([1, nkv, t + 13, hd], Distribution::Normal(0.0, 1.0), &device);
    let v = Tensor::<4>::random([1, nkv, t + 13, hd], Distribution::Normal(0.0, 1.0), &device);
    let mask = AttnMask::causal(t - n, n, &device);
    let rows = attention::attention_rows(q.clone(), &k, &v, &CacheStart::new(t - n, &device), Some(&mask));
    let used = |c: Tensor<4>| c.slice([0..1, 0..nkv, 0..t, 0..hd]);
    let want = attention::reference(q, used(k), used(v), Some(&mask)).swap_dims(1, 2).reshape([1, n, nh * hd]);
    let err = rel_err(rows, want);
    assert!(err <= bound(&device), "attention_rows: relative error {err}");
}

#[test]
fn log_softmax_top_k_kernel_matches_reference() {
    let device = device();
    let exact_f32 = Tensor::<1>::zeros([1], &device).dtype() == DType::F32;
    // Rows of one chunk (2048 columns) or many, a last chunk of 2 columns with k = 12 (chunks with
    // fewer than k columns), a 152k vocabulary; row 0 of each holds its maximum three times, in
    // different chunks (ties go to the lower id, across chunks too).
    for (n, v, k) in [(1, 5003, 10), (3, 70001, 16), (10, 151936, 10), (2, 40, 1), (2, 2050, 12), (1, 4101, 5)] {
        let mut x = Tensor::<2>::random([n, v], Distribution::Normal(0.0, 4.0), &device);
        let top = x.clone().max().into_scalar::<f32>() + 1.0;
        let dtype = x.dtype();
        for c in [v - 1, v / 2, 3] {
            x = x.slice_assign([0..1, c..c + 1], Tensor::full([1, 1], top, (&device, dtype)));
        }
        let got = hierspec_kernels::topk::log_softmax_top_k(x.clone(), k);
        // The arbiter is the host in f64 (burn's own log_softmax on lavapipe was off by 0.06 at
        // 70,001 columns): log-softmax, then a sort by (value desc, id asc).
        let xs: Vec<f32> = x.cast(DType::F32).into_data().iter::<f32>().collect();
        for r in 0..n {
            let row = &xs[r * v..(r + 1) * v];
            let m = row.iter().fold(f32::MIN, |a, &b| a.max(b)) as f64;
            let lse = m + row.iter().map(|&z| (z as f64 - m).exp()).sum::<f64>().ln();
            let mut order: Vec<usize> = (0..v).collect();
            order.sort_by(|&a, &b| row[b].partial_cmp(&row[a]).unwrap().then(a.cmp(&b)));
            assert_eq!(got[r].len(), k);
            for c in 0..k {
                let (gi, gv) = got[r][c];
                let want = (row[order[c]] as f64 - lse) as f32;
                assert!((gv - want).abs() <= 1e-3, "row {r} rank {c}: {gv} vs {want} (n {n} v {v} k {k})");
                assert!(((row[gi as usize] as f64 - lse) as f32 - gv).abs() <= 1e-3, "row {r} rank {c}: id {gi} does not hold {gv}");
                if exact_f32 {
                    assert_eq!(gi as usize, order[c], "row {r} rank {c}");
                }
            }
        }
    }
}

#[test]
fn argmax_kernel_matches_reference_and_takes_the_first_of_ties() {
    let device = device();
    // Widths with and without the 8-wide loads, rows shorter than one chunk, rows of several chunks
    // (ties planted across chunks; 5003 is 1-wide loads over 5 chunks), a 152k vocabulary.
    for (n, v) in [(1, 151936), (3, 1001), (5, 4104), (2, 7), (2, 5003), (64, 32000)] {
        let mut x = Tensor::<2>::random([n, v], Distribution::Normal(0.0, 4.0), &device);
        // Row 0 gets its maximum three times, at a tail column, a middle column and a late one.
        let cols = [v - 1, v / 2, v / 3];
        let top = x.clone().max().into_scalar::<f32>() + 1.0;
        let dtype = x.dtype();
        for &c in &cols {
            x = x.slice_assign([0..1, c..c + 1], Tensor::full([1, 1], top, (&device, dtype)));
        }
        let got: Vec<i64> = hierspec_kernels::topk::argmax(x.clone()).into_data().iter::<i64>().collect();
        let want: Vec<i64> = hierspec_kernels::topk::reference_argmax(x.clone()).into_data().iter::<i64>().collect();
        // The host arbiter: first column holding the row's maximum.
        let xs: Vec<f32> = x.cast(DType::F32).into_data().iter::<f32>().collect();
        let host: Vec<i64> = (0..n)
            .map(|r| {
                let row = &xs[r * v..(r + 1) * v];
                let m = row.iter().fold(f32::MIN, |a, &b| a.max(b));
                row.iter().position(|&z| z == m).unwrap() as i64
            })
            .collect();
        assert_eq!(host[0], *cols.iter().min().unwrap() as i64, "the tie was planted");
        assert_eq!(got, host, "kernel, n {n} v {v}");
        assert_eq!(want, host, "reference, n {n} v {v}");
    }
}

#[test]
fn keep_rows_kernel_matches_reference() {
    let device = device();
    // (heads, capacity, head_dim, start, rows): a path after a prefix, the path of a deep tree, and
    // rows that are each other's sources and destinations (row 1 -> 0, 2 -> 1, 3 -> 2: in place, the
    // order decides), an odd head_dim.
    let cases: [(usize, usize, usize, usize, &[usize]); 4] =
        [(3, 40, 24, 10, &[10, 13, 17, 30]), (2, 64, 64, 0, &[1, 2, 3]), (1, 9, 7, 4, &[4, 5, 8]), (4, 130, 128, 100, &[100, 101, 115, 127, 129])];
    for (h, cap, d, start, rows) in cases {
        let k0 = Tensor::<4>::random([1, h, cap, d], Distribution::Normal(0.0, 1.0), &device);
        let v0 = Tensor::<4>::random([1, h, cap, d], Distribution::Normal(0.0, 1.0), &device);
        let idx: Vec<i64> = rows.iter().map(|&r| r as i64).collect();
        let idx = Tensor::<1, burn::tensor::Int>::from_data(burn::tensor::TensorData::new(idx, [rows.len()]), &device);
        // Fresh buffers each (the kernel writes in place).
        let copy = |t: &Tensor<4>| Tensor::<4>::from_data(t.to_data(), &device);
        let (mut k, mut v) = (copy(&k0), copy(&v0));
        fused::keep_rows(&mut k, &mut v, start, &idx);
        let (mut rk, mut rv) = (copy(&k0), copy(&v0));
        fused::reference_keep_rows(&mut rk, &mut rv, start, &idx);
        let kept = |t: Tensor<4>| t.slice([0..1, 0..h, 0..start + rows.len(), 0..d]).into_data().iter::<f32>().collect::<Vec<_>>();
        assert_eq!(kept(k), kept(rk), "k: heads {h} capacity {cap} head_dim {d} start {start} rows {rows:?}");
        assert_eq!(kept(v), kept(rv), "v: heads {h} capacity {cap} head_dim {d} start {start} rows {rows:?}");
    }
}

#[test]
fn copy_rows_writes_in_place_and_leaves_the_rest() {
    let device = device();
    // (rows in the destination, rows copied, row width): a full copy, a prefix of an odd width, one
    // row, and a copy past one 256-thread cube.
    for (rows, n, h) in [(4, 4, 8), (16, 10, 37), (8, 1, 5), (64, 33, 96)] {
        // Flat, then reshaped: CUDA may pitch the rows of a tensor made at rank 3.
        let dst = Tensor::<1>::random([rows * h], Distribution::Normal(0.0, 1.0), &device).reshape([1, rows, h]);
        let before: Vec<f32> = dst.clone().cast(DType::F32).into_data().iter::<f32>().collect();
        // A gathered source (contiguous) and a transposed one (made contiguous by the copy).
        let src = Tensor::<2>::random([n, h], Distribution::Normal(0.0, 1.0), &device);
        let src_t = Tensor::<2>::random([h, n], Distribution::Normal(0.0, 1.0), &device).transpose();
        for src in [src, src_t] {
            assert!(hierspec_kernels::start::copy_rows(&dst, &src), "copy on a cubecl device");
            let want: Vec<f32> = src.cast(DType::F32).into_data().iter::<f32>().collect();
            let got: Vec<f32> = dst.clone().cast(DType::F32).into_data().iter::<f32>().collect();
            assert_eq!(&got[..n * h], &want[..], "rows {rows} n {n} h {h}: copied rows");
            assert_eq!(&got[n * h..], &before[n * h..], "rows {rows} n {n} h {h}: rows past the copy");
        }
    }
}

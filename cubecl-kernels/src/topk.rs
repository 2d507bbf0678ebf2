//! The EAGLE drafters' step: the top-k tokens of each row's log-softmax. On cubecl runtimes one
//! launch (row max, log-sum-exp and k argmax rounds in one cube per row) and one host read; the
//! reference is k rounds of burn's argmax (a full sort of a 151,936-entry row costs far more).

use burn::tensor::{activation::log_softmax, DType, IndexingUpdateOp, Int, Tensor};

/// Per row of logits [n, v]: the k (token, log-probability) pairs of highest log-probability, in
/// decreasing order (ties: lower id first). Row-major [n][k]. One host read.
pub fn log_softmax_top_k(logits: Tensor<2>, k: usize) -> Vec<Vec<(u32, f32)>> {
    let [n, v] = logits.dims();
    let k = k.min(v);
    unpack_top_k(top_k_packed(logits, k), n, k)
}

/// [`log_softmax_top_k`] left on the device, with no host read (a captured graph's last step):
/// [n, 2 min(k, v)] f32, each row's log-probs then their ids. [`unpack_top_k`] reads it.
pub fn top_k_packed(logits: Tensor<2>, k: usize) -> Tensor<2> {
    let v = logits.dims()[1];
    let k = k.min(v);
    #[cfg(feature = "cube")]
    if v < (1 << 24) {
        if let Some(t) = crate::cube::log_softmax_top_k(&logits, k) {
            return t;
        }
        crate::fallback::declined("top-k", &logits.device());
    }
    reference_packed(logits, k)
}

/// The index of each row's largest value, the lower index on ties: x [n, v] -> [n]. Every greedy
/// choice (the AR step, draft-model drafting, sequence and tree verification) goes through this one
/// function, so they break ties alike. On cubecl runtimes two launches: cubes over chunks of each
/// row, then one cube per row merging them (burn's argmax ran one 32-thread cube: 180 us for a 128k
/// vocabulary on the H200; one 1024-thread cube per row, 17 us for 152k on the H100); elsewhere
/// [`reference_argmax`].
pub fn argmax(x: Tensor<2>) -> Tensor<1, Int> {
    #[cfg(feature = "cube")]
    if x.dims()[1] < (1 << 31) {
        if let Some(ids) = crate::cube::argmax(&x) {
            return ids;
        }
        crate::fallback::declined("argmax", &x.device());
    }
    reference_argmax(x)
}

/// The plain-tensor argmax: the row maximum, then the first column holding it.
pub fn reference_argmax(x: Tensor<2>) -> Tensor<1, Int> {
    let [n, v] = x.dims();
    let x = x.cast(DType::F32);
    let max = x.clone().max_dim(1).expand([n, v]);
    // v - column where the row holds its max, else 0: the largest such value is the first column.
    let rev = Tensor::<1, Int>::arange(0..v as i64, &x.device()).neg().add_scalar(v as i64).reshape([1, v]).expand([n, v]);
    let hit = x.equal(max).int();
    let best = (hit * rev).max_dim(1).reshape([n]);
    best.neg().add_scalar(v as i64)
}

/// The plain-tensor reference: log-softmax in f32, then k rounds of argmax.
pub fn reference_log_softmax_top_k(logits: Tensor<2>, k: usize) -> Vec<Vec<(u32, f32)>> {
    let [n, v] = logits.dims();
    let k = k.min(v);
    unpack_top_k(reference_packed(logits, k), n, k)
}

/// [n, 2k] f32: log-probs then ids.
fn reference_packed(logits: Tensor<2>, k: usize) -> Tensor<2> {
    let logp = log_softmax(logits.cast(DType::F32), 1);
    let (vals, idx) = top_k_by_argmax(logp, k);
    Tensor::cat(vec![vals, idx.float().cast(DType::F32)], 1)
}

/// The first `n` rows of a [`top_k_packed`] result as (token, log-probability) pairs: one host read.
pub fn unpack_top_k(packed: Tensor<2>, n: usize, k: usize) -> Vec<Vec<(u32, f32)>> {
    let [rows, cols] = packed.dims();
    let (half, k) = (cols / 2, k.min(cols / 2));
    let packed = if rows > n { packed.slice([0..n, 0..cols]) } else { packed };
    let flat: Vec<f32> = packed.cast(DType::F32).into_data().iter::<f32>().collect();
    (0..n).map(|r| (0..k).map(|c| (flat[r * cols + half + c] as u32, flat[r * cols + c])).collect()).collect()
}

/// Top-k along dim 1 by k rounds of argmax (each found entry pushed to -1e30), in decreasing order.
pub fn top_k_by_argmax(mut x: Tensor<2>, k: usize) -> (Tensor<2>, Tensor<2, Int>) {
    let n = x.dims()[0];
    let (device, dtype) = (x.device(), x.dtype());
    let (mut vals, mut idx) = (Vec::with_capacity(k), Vec::with_capacity(k));
    for _ in 0..k {
        let i = x.clone().argmax(1); // [n, 1]
        vals.push(x.clone().gather(1, i.clone()));
        x = x.scatter(1, i.clone(), Tensor::full([n, 1], -1e30f32, (&device, dtype)), IndexingUpdateOp::Add);
        idx.push(i);
    }
    (Tensor::cat(vals, 1), Tensor::cat(idx, 1))
}

#[cfg(test)]
mod tests {
    use super::*;
    use burn::tensor::Device;

    #[test]
    fn top_k_by_argmax_matches_a_sort() {
        let device = Device::flex();
        let x = Tensor::<2>::random([3, 1000], burn::tensor::Distribution::Normal(0.0, 1.0), &device);
        let (v, i) = top_k_by_argmax(x.clone(), 7);
        let (sv, si) = x.clone().topk_with_indices(7, 1);
        assert_eq!(i.into_data().iter::<i64>().collect::<Vec<_>>(), si.into_data().iter::<i64>().collect::<Vec<_>>());
        assert_eq!(v.into_data().iter::<f32>().collect::<Vec<_>>(), sv.into_data().iter::<f32>().collect::<Vec<_>>());
        // A dtype other than the default (bf16 runs cast log-probabilities to f32): no mismatch.
        let (_, i16) = top_k_by_argmax(x.clone().cast(DType::F16), 7);
        assert_eq!(i16.dims(), [3, 7]);
        // The packed form: log-probabilities of the same ids.
        let rows = reference_log_softmax_top_k(x, 7);
        assert_eq!(rows.len(), 3);
        assert!(rows.iter().all(|r| r.len() == 7 && r.windows(2).all(|w| w[0].1 >= w[1].1) && r.iter().all(|p| p.1 <= 0.0)));
    }

    #[test]
    fn reference_argmax_takes_the_first_of_ties() {
        let device = Device::flex();
        let x = Tensor::<2>::from_data([[1.0f32, 3.0, 2.0, 3.0], [0.5, 0.5, 0.5, 0.5], [-2.0, -1.0, -3.0, -1.5]], &device);
        assert_eq!(reference_argmax(x.clone()).into_data().iter::<i64>().collect::<Vec<_>>(), vec![1, 0, 1]);
        assert_eq!(argmax(x).into_data().iter::<i64>().collect::<Vec<_>>(), vec![1, 0, 1]);
    }
}

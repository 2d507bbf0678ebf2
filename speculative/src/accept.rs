//! Acceptance rules (method.md, "Verifying a tree" and "Verifying a sequence"), greedy and sampled.
//! Each takes the verifier's logits or warped probabilities and returns what was accepted and the
//! verifier's own next token. The logits stay on the device; a handful of numbers comes back: each
//! row's argmax for greedy (the walk over them is on the host), the candidates' probabilities for
//! sampling.

use burn::tensor::{Int, Tensor, TensorData};

use crate::ar::read_id;
use crate::sampling::{Fault, Sampler};
use crate::tree::DraftTree;

/// The verifier's verdict on a tree: the accepted path (node indices from the root down to the
/// deepest valid node) and the verifier's own token after it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TreeAccept {
    pub path: Vec<usize>,
    pub bonus: u32,
}

/// Greedy tree acceptance (method.md): node i is valid when its token is the verifier's argmax at
/// its parent and all its ancestors are valid; the deepest valid node (the first of the deepest)
/// ends the accepted path. One argmax launch and one read of the n row choices; the walk is on the
/// host (parents precede their children).
///
/// The walk was on the device before (a gather of the parents' choices, an ancestor-matrix product,
/// a depth-weighted argmax: five uploads and ~12 launches for two integers). It read fewer bytes
/// but cost ~0.6 ms per tree on the H200 in host launch time (`docs/perf/real.md`, 2026-12-03),
/// where reading n integers instead of two costs nothing measurable.
pub fn accept_tree_greedy(logits: Tensor<2>, tree: &DraftTree) -> TreeAccept {
    let choice = read_ids(hierspec_kernels::topk::argmax(logits));
    let mut valid = vec![false; tree.len()];
    let mut best = 0;
    for i in 0..tree.len() {
        valid[i] = match tree.parents[i] {
            None => i == 0,
            Some(p) => valid[p] && choice[p] == tree.tokens[i],
        };
        if valid[i] && tree.depths[i] > tree.depths[best] {
            best = i;
        }
    }
    let mut path = vec![best];
    while let Some(p) = tree.parents[*path.last().unwrap()] {
        path.push(p);
    }
    path.reverse();
    TreeAccept { path, bonus: choice[best] }
}

/// Greedy sequence acceptance. `logits` [K + 1, vocab] are the verifier's outputs after the pending
/// token and after each of the K draft tokens. Returns (accepted drafts j, the verifier's token after
/// them). One argmax launch and one read of the K + 1 choices (as [`accept_tree_greedy`]).
pub fn accept_sequence_greedy(logits: Tensor<2>, draft: &[u32]) -> (usize, u32) {
    let choice = read_ids(hierspec_kernels::topk::argmax(logits));
    let j = draft.iter().zip(&choice).take_while(|(d, c)| d == c).count();
    (j, choice[j])
}

/// The ids of an int tensor, on the host.
fn read_ids(ids: Tensor<1, Int>) -> Vec<u32> {
    ids.into_data().iter::<i64>().map(|v| v as u32).collect()
}

/// Sampled tree acceptance (the multi-candidate rule): walk from the root; at node u with the
/// verifier's warped distribution p_u, try u's children in draft order, accepting child x with
/// probability p_u(x) / (mass not yet rejected); if none is accepted, draw the next token from p_u
/// with the rejected children removed. The drafts are deterministic top-k picks (draft probability
/// 1), so the emitted tokens are exact samples of the verifier. `probs` [n, vocab] from
/// [`Sampler::probs`]. Reads n probabilities and one token.
pub fn accept_tree_sampled(probs: Tensor<2>, tree: &DraftTree, sampler: &mut Sampler) -> TreeAccept {
    let n = tree.len();
    let vocab = probs.dims()[1];
    let device = probs.device();
    // p_parent(token) of every node (the root reads a dummy entry).
    let flat: Vec<i64> = (0..n).map(|i| tree.parents[i].map_or(0, |p| (p * vocab + tree.tokens[i] as usize) as i64)).collect();
    let flat = Tensor::<1, Int>::from_data(TensorData::new(flat, [n]), &device);
    let p_child: Vec<f32> = probs.clone().reshape([n * vocab]).select(0, flat).into_data().iter::<f32>().collect();
    let mut children = vec![Vec::new(); n];
    for i in 1..n {
        if let Some(p) = tree.parents[i] {
            children[p].push(i);
        }
    }
    let mut path = vec![0];
    let mut rejected = Vec::new();
    'walk: loop {
        let u = *path.last().unwrap();
        let mut mass = 1.0f64;
        rejected.clear();
        for &c in &children[u] {
            let pc = p_child[c] as f64;
            // A child holding all the remaining mass is accepted (guards f32 rounding of 1 - sum).
            if sampler.uniform() * mass < pc || mass - pc <= 1e-6 {
                path.push(c);
                continue 'walk;
            }
            mass -= pc;
            rejected.push(tree.tokens[c]);
        }
        break;
    }
    let u = *path.last().unwrap();
    let row = probs.select(0, Tensor::<1, Int>::from_data(TensorData::new(vec![u as i64], [1]), &device)).reshape([vocab]);
    let bonus = read_id(sampler.draw_without(row, &rejected));
    TreeAccept { path, bonus }
}

/// Sampled sequence acceptance (standard speculative sampling): `p` [K + 1, vocab] is the
/// verifier's warped distribution after the pending token and after each draft, `q` [K, vocab] the
/// drafter's warped distribution each draft was sampled from. Accept s_j with probability
/// min(1, p(s_j) / q(s_j)); on the first rejection draw from norm(max(0, p - q)); when all pass,
/// draw one more token from p. Returns (accepted drafts, next token). Reads 2K numbers and one token.
pub fn accept_sequence_sampled(p: Tensor<2>, q: Tensor<2>, draft: &[u32], sampler: &mut Sampler) -> (usize, u32) {
    let k = draft.len();
    let vocab = p.dims()[1];
    let device = p.device();
    let row = |t: Tensor<2>, i: usize| t.slice([i..i + 1]).reshape([vocab]);
    let mut j = 0;
    if k > 0 {
        let flat: Vec<i64> = draft.iter().enumerate().map(|(i, &t)| (i * vocab + t as usize) as i64).collect();
        let flat = Tensor::<1, Int>::from_data(TensorData::new(flat, [k]), &device);
        let pick = |t: Tensor<2>| t.slice([0..k]).reshape([k * vocab]).select(0, flat.clone());
        let both: Vec<f32> = Tensor::cat(vec![pick(p.clone()), pick(q.clone())], 0).into_data().iter::<f32>().collect();
        while j < k {
            let (pj, qj) = (both[j] as f64, both[k + j] as f64);
            if !(sampler.uniform() * qj < pj) {
                break;
            }
            j += 1;
        }
    }
    let next = if j == k {
        sampler.draw(row(p, k))
    } else if sampler.fault == Some(Fault::NoResidual) {
        sampler.draw(row(p, j))
    } else {
        sampler.draw((row(p, j) - row(q, j)).clamp_min(0.0))
    };
    (j, read_id(next))
}

#[cfg(test)]
mod tests {
    use super::*;
    use burn::tensor::Device;

    fn logits_for(argmax: &[u32], vocab: usize) -> Tensor<2> {
        let mut v = vec![0f32; argmax.len() * vocab];
        for (i, &a) in argmax.iter().enumerate() {
            v[i * vocab + a as usize] = 1.0;
        }
        Tensor::from_data(TensorData::new(v, [argmax.len(), vocab]), &Device::flex())
    }

    #[test]
    fn longest_prefix_and_the_verifier_token() {
        // verifier says 3, 4, 5, 6 after pending, s1, s2, s3
        let l = || logits_for(&[3, 4, 5, 6], 8);
        assert_eq!(accept_sequence_greedy(l(), &[3, 4, 5]), (3, 6));
        assert_eq!(accept_sequence_greedy(l(), &[3, 4, 7]), (2, 5));
        assert_eq!(accept_sequence_greedy(l(), &[1, 4, 5]), (0, 3));
        // a later match after a mismatch does not count
        assert_eq!(accept_sequence_greedy(l(), &[3, 0, 5]), (1, 4));
        assert_eq!(accept_sequence_greedy(logits_for(&[2], 8), &[]), (0, 2));
    }

    #[test]
    fn deepest_valid_tree_path_and_bonus() {
        //        0 (root, token 9)
        //      /   \
        //    1:4   2:5          verifier argmax at root: 5
        //     |     |  \
        //    3:6   4:7  5:1     argmax at 2: 1 ; at 1: 6 (but 1 is invalid)
        //           |
        //          6:2          argmax at 5: 2 ; argmax at 6: 3 (bonus)
        let tree = DraftTree {
            tokens: vec![9, 4, 5, 6, 7, 1, 2],
            parents: vec![None, Some(0), Some(0), Some(1), Some(2), Some(2), Some(5)],
            depths: vec![0, 1, 1, 2, 2, 2, 3],
            scores: vec![0.0; 7],
        };
        let argmax = [5, 6, 1, 0, 0, 2, 3];
        let got = accept_tree_greedy(logits_for(&argmax, 10), &tree);
        assert_eq!(got, TreeAccept { path: vec![0, 2, 5, 6], bonus: 3 });
        // Node 3 matches its parent's argmax but its parent (1) is invalid: it must not count.
        let argmax = [7, 6, 0, 0, 0, 0, 0];
        let got = accept_tree_greedy(logits_for(&argmax, 10), &tree);
        assert_eq!(got, TreeAccept { path: vec![0], bonus: 7 });
    }
}

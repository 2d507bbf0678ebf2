//! One forward over a draft tree (ancestor mask, positions root + depth) must give every node the
//! logits of running its root..node path as a plain sequence, and compacting the cache to one path
//! must leave it equal to the cache of that sequence.

use burn::tensor::Device;
use hierspec_model::{loader, AttnMask, KvCache, Llama, LogitsFor};
use hierspec_speculative::ar::tokens_tensor;
use hierspec_speculative::tree::DraftTree;
use hierspec_tests::*;

fn positions_of(list: &[usize], device: &Device) -> burn::tensor::Tensor<1, burn::tensor::Int> {
    let v: Vec<i64> = list.iter().map(|&p| p as i64).collect();
    burn::tensor::Tensor::from_data(burn::tensor::TensorData::new(v, [list.len()]), device)
}

#[test]
fn tree_forward_equals_sequential_paths_and_compaction_keeps_the_path() {
    let device = device();
    let m = loader::load("smollm2-135m", 4096, &device).expect("load");
    let vocab = m.config.vocab_size;
    let prompt = m.tokenizer.encode("The capital of France is").unwrap();
    let l = prompt.len();
    // root, two children, two grandchildren under the first child, one great-grandchild
    let tree = DraftTree {
        tokens: vec![7042, 30, 314, 260, 1780, 253],
        parents: vec![None, Some(0), Some(0), Some(1), Some(1), Some(3)],
        depths: vec![0, 1, 1, 2, 2, 3],
        scores: vec![0.0; 6],
    };
    let n = tree.len();
    let path = |i: usize| {
        let mut p = vec![i];
        while let Some(a) = tree.parents[*p.last().unwrap()] {
            p.push(a);
        }
        p.reverse();
        p
    };
    let prefill = |cache: &mut KvCache| {
        m.model.forward(tokens_tensor(&prompt, &device), Llama::positions(0, l, &device), cache, None, LogitsFor::Last);
    };
    // The reference: prompt then `seq` as a plain causal sequence in a fresh cache; last logits.
    let sequential = |seq: &[u32]| {
        let mut c = KvCache::new(&m.config, 1, l + seq.len(), &device);
        prefill(&mut c);
        let out = m.model.forward(tokens_tensor(seq, &device), Llama::positions(l, seq.len(), &device), &mut c, None, LogitsFor::Last);
        to_vec_f32(out.logits)
    };

    let mut cache = KvCache::new(&m.config, 1, l + n + 1, &device);
    prefill(&mut cache);
    let mask = AttnMask::from_new_rows(l, n, &tree.ancestor_mask(), &device);
    let pos: Vec<usize> = tree.depths.iter().map(|d| l + d).collect();
    let out = m.model.forward(tokens_tensor(&tree.tokens, &device), positions_of(&pos, &device), &mut cache, Some(&mask), LogitsFor::All);
    let tree_logits = to_vec_f32(out.logits);

    let tol = logit_tolerance();
    for i in 0..n {
        let seq: Vec<u32> = path(i).iter().map(|&j| tree.tokens[j]).collect();
        let want = sequential(&seq);
        let got = &tree_logits[i * vocab..(i + 1) * vocab];
        let max = max_abs_diff(got, &want);
        assert!(max <= tol, "node {i}: tree logits differ from the sequential path by {max}");
    }

    // Accept the path to node 5 (rows l + [0, 1, 3, 5]) and continue with one more token.
    let accepted = path(5);
    let rows: Vec<usize> = accepted.iter().map(|&j| l + j).collect();
    cache.keep_rows(l, &rows).unwrap();
    assert_eq!(cache.len(), l + accepted.len());
    let next = 1406u32;
    let got = to_vec_f32(
        m.model
            .forward(tokens_tensor(&[next], &device), Llama::positions(cache.len(), 1, &device), &mut cache, None, LogitsFor::Last)
            .logits,
    );
    let mut seq: Vec<u32> = accepted.iter().map(|&j| tree.tokens[j]).collect();
    seq.push(next);
    let max = max_abs_diff(&got, &sequential(&seq));
    assert!(max <= tol, "after compaction the next step differs from the sequence by {max}");
}

/// A prompt longer than one chunk runs as chunks of at most `SMALL_M_MAX` rows; every position's
/// logits and features must equal one causal pass over the whole prompt (an explicit mask disables
/// the chunking), and so must the cache it leaves behind.
#[test]
fn chunked_prefill_equals_one_causal_pass() {
    let device = device();
    let m = loader::load("smollm2-135m", 4096, &device).expect("load");
    let text = "Chunked prefill keeps every product on the small-M kernels. ".repeat(40);
    let prompt = m.tokenizer.encode(&text).unwrap();
    let n = prompt.len();
    assert!(n > 2 * hierspec_kernels::dense::SMALL_M_MAX, "prompt of {n} tokens spans at least three chunks");
    let run = |mask: Option<&AttnMask>| {
        let mut cache = KvCache::new(&m.config, 1, n + 1, &device);
        let out = m.model.forward(tokens_tensor(&prompt, &device), Llama::positions(0, n, &device), &mut cache, mask, LogitsFor::All);
        let next = m.model.forward(tokens_tensor(&[42], &device), Llama::positions(n, 1, &device), &mut cache, None, LogitsFor::Last);
        (to_vec_f32(out.logits), to_vec_f32(out.hidden), to_vec_f32(next.logits))
    };
    let chunked = run(None);
    let whole = run(Some(&AttnMask::causal(0, n, &device)));
    let tol = logit_tolerance();
    for (what, a, b) in [("logits", &chunked.0, &whole.0), ("features", &chunked.1, &whole.1), ("next step", &chunked.2, &whole.2)] {
        let max = max_abs_diff(a, b);
        assert!(max <= tol, "chunked prefill {what} differ from one pass by {max}");
    }
}

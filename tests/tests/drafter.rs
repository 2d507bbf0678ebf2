//! The EAGLE drafter's pass over a prompt runs in chunks of at most SMALL_M_MAX rows (the small-M
//! kernels, no autotune per prompt length): it must predict what one causal pass over all rows does.

use burn::tensor::{Distribution, Tensor};
use hierspec_kernels::dense::SMALL_M_MAX;
use hierspec_model::{EagleConfig, EagleHead, Llama};
use hierspec_speculative::ar::tokens_tensor;
use hierspec_speculative::drafter::{observe_prompt, EagleDrafter, TreeDrafter};
use hierspec_speculative::tree::TreeConfig;
use hierspec_tests::*;

#[test]
fn a_long_prompt_catches_up_in_chunks_like_one_pass() {
    let device = device();
    let cfg = hierspec_model::LlamaConfig { max_position_embeddings: 1024, ..tiny_llama(48, 2) };
    let base = Llama::random(&cfg, 1024, 5, &device).unwrap();
    let head_cfg = EagleConfig::for_base(&cfg);
    let head = EagleHead::random(&head_cfg, 1024, 6, &device).unwrap();
    // Two and a half chunks of prompt, so that a chunk boundary falls mid-way through the pass.
    let n = 2 * SMALL_M_MAX + SMALL_M_MAX / 2 + 3;
    let prompt: Vec<u32> = (0..n).map(|i| ((i * 7 + 3) % 48) as u32).collect();
    // Large features: EAGLE's layer has no norm before attention, so q and k grow with them and the
    // random head's attention is sharp (positions and the causal mask then change the result).
    let features = Tensor::<2>::random([n, cfg.hidden_size], Distribution::Normal(0.0, 300.0), &device);
    let tree = TreeConfig::default();

    let mut drafter = EagleDrafter::new(&head, &head_cfg, &base, n + 16, &tree).unwrap();
    observe_prompt(&mut drafter, features.clone(), &prompt, 11).unwrap();
    let chunked = drafter.last_feature().expect("the prompt pass ran during observe_prompt");

    // One causal pass over the same pairs (f_t, token t + 1).
    let next: Vec<u32> = prompt[1..].iter().copied().chain([11]).collect();
    let mut cache = head.new_cache(&head_cfg, n + 16);
    let embeds = base.embed(tokens_tensor(&next, &device));
    let out = head.forward(embeds, features.reshape([1, n, cfg.hidden_size]), Llama::positions(0, n, &device), &mut cache, None);
    let whole = out.slice([0..1, n - 1..n, 0..cfg.hidden_size]).reshape([1, cfg.hidden_size]);

    let diff: f32 = (chunked.clone() - whole.clone()).abs().max().into_scalar::<f32>();
    let scale: f32 = whole.abs().max().into_scalar::<f32>();
    assert!(scale > 1e-3, "the prediction is not all zeros");
    assert!(diff <= 1e-3 * scale.max(1.0), "chunked prompt pass differs from one pass by {diff} (scale {scale})");
    // And drafting goes on from it.
    let t = drafter.draft(11, &tree).unwrap();
    assert_eq!(t.tokens[0], 11);
}

//! EAGLE head training (issue #6) on a tiny random base model, CPU: the loss falls on a fixed batch,
//! a head learns a known function, a saved head reloads bit for bit, and a killed run resumes from
//! its checkpoint onto the same trajectory as an uninterrupted one.

use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::{Path, PathBuf};

use burn::module::Module;
use burn::tensor::{Distribution, Tensor};
use hierspec_model::checkpoint::StoreDtype;
use hierspec_model::eagle::{load_head, save_head};
use hierspec_model::weights::{SafetensorsSource, WeightSource};
use hierspec_model::{EagleConfig, EagleHead, KvCache, Llama, LlamaConfig};
use hierspec_tests::{device, rng_lock, tiny_llama, Device};
use hierspec_train::data::{features, ShardWriter};
use hierspec_train::trainer::{evaluate, train, Frozen, Metrics, RunLimits, TrainConfig};
use hierspec_train::Dataset;
use rand::{Rng, SeedableRng};

/// The autodiff form of the test device, where heads train.
fn ad(device: &Device) -> Device {
    device.clone().autodiff()
}

fn tmp(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("hierspec-train-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

/// `n` random sequences of `len` tokens with the tiny base model's features, as a dataset in `dir`.
fn base_data(base: &Llama, cfg: &LlamaConfig, dir: &Path, prefix: &str, n: usize, len: usize, seed: u64) -> Dataset {
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let mut w = ShardWriter::new(dir, prefix, cfg.hidden_size, 100);
    let mut cache = KvCache::new(cfg, 1, len, &device());
    for _ in 0..n {
        let ids: Vec<u32> = (0..len).map(|_| rng.random_range(0..cfg.vocab_size as u32)).collect();
        let f = features(base, &mut cache, &ids);
        w.push(&ids, &vec![true; len], &f).unwrap();
    }
    let (files, _) = w.finish().unwrap();
    Dataset::open(dir, &files, cfg.hidden_size, cfg.vocab_size).unwrap()
}

fn limits(checkpoint_every: usize) -> RunLimits {
    RunLimits { checkpoint_every, max_steps: None, time_limit: None, fit_to: None, log_every: 1000 }
}

fn no_noise(tc: TrainConfig) -> TrainConfig {
    TrainConfig { noise: 0.0, ..tc }
}

fn tiny_base(seed: u64) -> (LlamaConfig, Llama) {
    let cfg = tiny_llama(48, 2);
    let base = Llama::random(&cfg, 64, seed, &device()).unwrap();
    (cfg, base)
}

#[test]
fn training_lowers_the_loss_on_a_fixed_batch() {
    let _rng = rng_lock();
    let dir = tmp("fixed");
    let (cfg, base) = tiny_base(1);
    let data = base_data(&base, &cfg, &dir, "train", 4, 12, 7);
    let head_cfg = EagleConfig::for_base(&cfg);
    let head = EagleHead::random(&head_cfg, 64, 3, &ad(&device())).unwrap();
    let frozen = Frozen::from_base(&base).lift();
    // Four sequences, batch four: every step sees the same batch.
    let tc = no_noise(TrainConfig { epochs: 200.0, batch: 4, max_len: 12, lr: 3e-3, warmup: 0.05, ..Default::default() });
    let mut losses = Vec::new();
    let r = train(head, &head_cfg, &frozen, &data, &tc, &dir.join("ckpt"), &limits(1000), &mut |_, m: &Metrics| losses.push(*m)).unwrap();
    assert!(r.finished());
    assert_eq!(losses.len(), 200);
    let (first, last) = (losses[0], *losses.last().unwrap());
    eprintln!("loss {:.4} -> {:.4}, feature term {:.4} -> {:.4}", first.loss, last.loss, first.feature, last.feature);
    // The cross-entropy against the base's soft distribution has a floor (its entropy, near ln 48
    // for a random base); the feature term has none.
    assert!(last.loss < first.loss - 0.1, "loss {} -> {}", first.loss, last.loss);
    assert!(last.feature < 0.5 * first.feature, "feature loss {} -> {}", first.feature, last.feature);
}

#[test]
fn head_learns_a_known_function() {
    let _rng = rng_lock();
    // Features are a fixed table of the token, f_t = G[x_t], and the lm_head maps G[x] back to x: the
    // head must learn x_{t+1} -> G[x_{t+1}] from the embedding of x_{t+1}.
    let (v, h) = (32, 64);
    let cfg = LlamaConfig { hidden_size: h, head_dim: 16, num_attention_heads: 4, num_key_value_heads: 2, intermediate_size: 128, ..tiny_llama(v, 1) };
    let dev = device();
    dev.seed(5);
    let g = Tensor::<2>::random([v, h], Distribution::Normal(0.0, 1.0), &dev);
    let embed = Tensor::<2>::random([v, h], Distribution::Normal(0.0, 1.0), &dev);
    let frozen = Frozen { embed, lm_head: g.clone().transpose() * 0.5 };
    let table: Vec<f32> = g.into_data().iter::<f32>().collect();
    let dir = tmp("known");
    let write = |prefix: &str, n: usize, seed: u64| {
        let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
        let mut w = ShardWriter::new(&dir, prefix, h, 1 << 20);
        for _ in 0..n {
            let ids: Vec<u32> = (0..16).map(|_| rng.random_range(0..v as u32)).collect();
            let f: Vec<f32> = ids.iter().flat_map(|&x| table[x as usize * h..(x as usize + 1) * h].to_vec()).collect();
            w.push(&ids, &[true; 16], &f).unwrap();
        }
        Dataset::open(&dir, &w.finish().unwrap().0, h, v).unwrap()
    };
    let (train_set, held_out) = (write("train", 64, 1), write("eval", 16, 2));
    let head_cfg = EagleConfig::for_base(&cfg);
    let head = EagleHead::random(&head_cfg, 64, 9, &ad(&dev)).unwrap();
    let tc = no_noise(TrainConfig { epochs: 25.0, batch: 8, max_len: 16, lr: 3e-3, warmup: 0.05, ..Default::default() });
    let before = evaluate(&head.valid(), &head_cfg, &frozen, &held_out, &tc, 16);
    let r = train(head, &head_cfg, &frozen.clone().lift(), &train_set, &tc, &dir.join("ckpt"), &limits(1000), &mut |_, _| {}).unwrap();
    let after = evaluate(&r.head.valid(), &head_cfg, &frozen, &held_out, &tc, 16);
    eprintln!("held-out top1 {:.3} -> {:.3}, top3 {:.3}", before.top1, after.top1, after.top3);
    assert!(before.top1 < 0.2);
    assert!(after.top1 >= 0.9 && after.top3 >= 0.97, "{after:?}");
}

/// Every tensor of a saved head directory, by name.
fn head_tensors(dir: &Path, names: &[&str]) -> Vec<(Vec<f32>, Vec<usize>)> {
    let src = SafetensorsSource::open_dir(dir).unwrap();
    names.iter().map(|n| src.tensor(n).unwrap()).collect()
}

const NAMES: [&str; 11] = [
    "fc.weight",
    "layers.0.self_attn.q_proj.weight",
    "layers.0.self_attn.k_proj.weight",
    "layers.0.self_attn.v_proj.weight",
    "layers.0.self_attn.o_proj.weight",
    "layers.0.post_attention_layernorm.weight",
    "layers.0.mlp.gate_proj.weight",
    "layers.0.mlp.up_proj.weight",
    "layers.0.mlp.down_proj.weight",
    "fc.bias",
    "layers.0.self_attn.q_proj.bias",
];

#[test]
fn saved_head_reloads_bit_identically() {
    let _rng = rng_lock();
    // Wide enough that the MLP weights (128 x 640 f32 = 320 KiB) exceed a 200 KiB file: they are
    // written in parts, across several files.
    let cfg = LlamaConfig { hidden_size: 128, intermediate_size: 640, head_dim: 32, attention_bias: true, ..tiny_llama(48, 1) };
    let head_cfg = EagleConfig { layer: LlamaConfig { num_hidden_layers: 1, ..cfg.clone() }, fc_bias: true };
    let dev = device();
    let head = EagleHead::random(&head_cfg, 64, 11, &dev).unwrap();
    let (d32, d32b, d16) = (tmp("save-f32"), tmp("save-f32-again"), tmp("save-bf16"));
    save_head(&head, &head_cfg, &d32, StoreDtype::F32, 200 << 10).unwrap();
    let files: Vec<_> = std::fs::read_dir(&d32).unwrap().filter_map(|e| e.ok()).filter(|e| e.path().extension().is_some_and(|x| x == "safetensors")).collect();
    assert!(files.len() > 2, "expected several files");
    assert!(files.iter().all(|f| f.metadata().unwrap().len() <= 200 << 10));
    let (loaded, loaded_cfg) = load_head(&d32, &cfg, 64, &dev).unwrap();
    assert_eq!(loaded_cfg, head_cfg);
    save_head(&loaded, &loaded_cfg, &d32b, StoreDtype::F32, 200 << 10).unwrap();
    let (a, b) = (head_tensors(&d32, &NAMES), head_tensors(&d32b, &NAMES));
    for ((n, x), y) in NAMES.iter().zip(&a).zip(&b) {
        assert_eq!(x.1, y.1, "{n}: shape");
        assert!(x.0.iter().zip(&y.0).all(|(p, q)| p.to_bits() == q.to_bits()), "{n}: not bit-identical");
    }
    // The same forward, exactly.
    let run = |h: &EagleHead| {
        let e = Tensor::<3>::random([1, 5, 128], Distribution::Normal(0.0, 1.0), &dev);
        let f = Tensor::<3>::random([1, 5, 128], Distribution::Normal(0.0, 1.0), &dev);
        let mut cache = h.new_cache(&head_cfg, 8);
        h.forward(e, f, Tensor::arange(0..5, &dev), &mut cache, None).into_data().iter::<f32>().collect::<Vec<_>>()
    };
    dev.seed(1);
    let x = run(&head);
    dev.seed(1);
    assert_eq!(x, run(&loaded));
    // bf16 files hold the f32 weights rounded to bf16.
    save_head(&head, &head_cfg, &d16, StoreDtype::Bf16, 200 << 10).unwrap();
    for ((n, x), y) in NAMES.iter().zip(&a).zip(head_tensors(&d16, &NAMES)) {
        assert!(x.0.iter().zip(&y.0).all(|(p, q)| half::bf16::from_f32(*p).to_f32() == *q), "{n}: not the bf16 rounding");
    }
}

#[test]
fn a_saved_head_continues_training_where_it_stopped() {
    let _rng = rng_lock();
    // `train-eagle --init`: a head saved after 40 steps and loaded for training again starts at its
    // saved loss (not a random head's), takes gradients, and goes on lowering the loss.
    let dir = tmp("init");
    let (cfg, base) = tiny_base(3);
    let data = base_data(&base, &cfg, &dir, "train", 4, 12, 5);
    let head_cfg = EagleConfig::for_base(&cfg);
    let frozen_inner = Frozen::from_base(&base);
    let frozen = frozen_inner.clone().lift();
    let tc = no_noise(TrainConfig { epochs: 40.0, batch: 4, max_len: 12, lr: 3e-3, warmup: 0.05, ..Default::default() });
    let random = EagleHead::random(&head_cfg, 64, 6, &ad(&device())).unwrap();
    let at_random = evaluate(&random.valid(), &head_cfg, &frozen_inner, &data, &tc, 4);
    let first = train(random, &head_cfg, &frozen, &data, &tc, &dir.join("a"), &limits(1000), &mut |_, _| {}).unwrap();
    let trained = evaluate(&first.head.valid(), &head_cfg, &frozen_inner, &data, &tc, 4);
    let saved = tmp("init-head");
    save_head(&first.head.valid(), &head_cfg, &saved, StoreDtype::F32, 1 << 30).unwrap();

    let (loaded, _) = load_head(&saved, &cfg, 64, &ad(&device())).unwrap();
    let reloaded = evaluate(&loaded.valid(), &head_cfg, &frozen_inner, &data, &tc, 4);
    assert!((reloaded.loss - trained.loss).abs() <= 1e-5 * trained.loss.abs(), "reloaded loss {} vs saved {}", reloaded.loss, trained.loss);
    assert!(trained.loss < at_random.loss - 0.1, "the first run did not train: {} -> {}", at_random.loss, trained.loss);
    let mut losses = Vec::new();
    let second = train(loaded, &head_cfg, &frozen, &data, &tc, &dir.join("b"), &limits(1000), &mut |_, m: &Metrics| losses.push(m.loss)).unwrap();
    let continued = evaluate(&second.head.valid(), &head_cfg, &frozen_inner, &data, &tc, 4);
    eprintln!("loss: random {:.4}, after 40 steps {:.4}, reloaded {:.4}, after 40 more {:.4}", at_random.loss, trained.loss, reloaded.loss, continued.loss);
    // The continued run's first step starts from the saved head's loss, well below a random head's.
    assert!((losses[0] - trained.loss).abs() < 0.5 * (at_random.loss - trained.loss), "first continued step at {} (saved {}, random {})", losses[0], trained.loss, at_random.loss);
    assert!(continued.loss < trained.loss, "continued training did not lower the loss: {} -> {}", trained.loss, continued.loss);
}

#[test]
fn killed_run_resumes_from_its_checkpoint() {
    let _rng = rng_lock();
    let dir = tmp("resume");
    let (cfg, base) = tiny_base(2);
    let data = base_data(&base, &cfg, &dir, "train", 8, 10, 3);
    let head_cfg = EagleConfig::for_base(&cfg);
    let frozen = Frozen::from_base(&base).lift();
    // 8 sequences, batch 2: 4 steps per epoch, 3 epochs; noise on (its draws must replay too).
    let tc = TrainConfig { epochs: 3.0, batch: 2, max_len: 10, lr: 2e-3, ..Default::default() };
    let fresh = || EagleHead::random(&head_cfg, 64, 4, &ad(&device())).unwrap();

    let mut whole = Vec::new();
    let a = train(fresh(), &head_cfg, &frozen, &data, &tc, &dir.join("a"), &limits(4), &mut |s, m: &Metrics| whole.push((s, m.loss))).unwrap();
    assert_eq!(a.step, 12);

    // Killed during step 7: the last checkpoint is the one of step 4.
    let killed = catch_unwind(AssertUnwindSafe(|| {
        train(fresh(), &head_cfg, &frozen, &data, &tc, &dir.join("b"), &limits(4), &mut |s, _| assert!(s < 7, "killed")).unwrap();
    }));
    assert!(killed.is_err());
    let mut resumed = Vec::new();
    let b = train(fresh(), &head_cfg, &frozen, &data, &tc, &dir.join("b"), &limits(4), &mut |s, m: &Metrics| resumed.push((s, m.loss))).unwrap();
    assert_eq!(b.step, 12);
    assert_eq!(resumed.first().map(|r| r.0), Some(5), "resumed after the step-4 checkpoint");
    for ((s, x), (t, y)) in whole[4..].iter().zip(&resumed) {
        assert_eq!(s, t);
        assert!((x - y).abs() <= 1e-6 * x.abs().max(1.0), "step {s}: loss {x} uninterrupted vs {y} resumed");
    }
    let (da, db) = (tmp("resume-a"), tmp("resume-b"));
    save_head(&a.head.valid(), &head_cfg, &da, StoreDtype::F32, 1 << 30).unwrap();
    save_head(&b.head.valid(), &head_cfg, &db, StoreDtype::F32, 1 << 30).unwrap();
    for ((n, x), y) in NAMES[..9].iter().zip(head_tensors(&da, &NAMES[..9])).zip(head_tensors(&db, &NAMES[..9])) {
        let d = x.0.iter().zip(&y.0).map(|(p, q)| (p - q).abs()).fold(0f32, f32::max);
        assert!(d <= 1e-6, "{n}: resumed weights differ by {d}");
    }
}

#[test]
fn impossible_training_settings_are_errors() {
    let _rng = rng_lock();
    let dir = tmp("settings");
    let (cfg, base) = tiny_base(3);
    let data = base_data(&base, &cfg, &dir, "train", 4, 8, 5);
    let head_cfg = EagleConfig::for_base(&cfg);
    let frozen = Frozen::from_base(&base).lift();
    let fresh = || EagleHead::random(&head_cfg, 64, 4, &ad(&device())).unwrap();
    let run = |tc: &TrainConfig, ckpt: &str| train(fresh(), &head_cfg, &frozen, &data, tc, &dir.join(ckpt), &limits(1), &mut |_, _| {}).map(|r| r.step);
    let ok = TrainConfig { epochs: 1.0, batch: 2, max_len: 8, ..Default::default() };
    for bad in [
        TrainConfig { batch: 0, ..ok.clone() },
        TrainConfig { max_len: 1, ..ok.clone() },
        TrainConfig { lr: 0.0, ..ok.clone() },
        TrainConfig { warmup: 1.0, ..ok.clone() },
        TrainConfig { steps: Some(0), ..ok.clone() },
    ] {
        assert!(run(&bad, "bad").is_err(), "{bad:?}");
    }
    assert_eq!(run(&ok, "ckpt").unwrap(), 2);
    // The checkpoint belongs to a run with other settings: refused, not silently mixed.
    let err = run(&TrainConfig { lr: 1e-3, ..ok }, "ckpt").unwrap_err().to_string();
    assert!(err.contains("another run"), "{err}");
}

#[test]
fn conversations_render_with_the_assistant_tokens_marked() {
    let m = hierspec_model::load("smollm2-135m", 64, &device()).unwrap();
    let tok = &m.tokenizer;
    let conv = hierspec_train::Conversation {
        turns: [("user", "Name a colour."), ("assistant", "Blue, like the sea."), ("user", "Another?"), ("assistant", "Green.")]
            .iter()
            .map(|(r, t)| (r.to_string(), t.to_string()))
            .collect(),
    };
    let t = hierspec_train::tokenize(tok, &conv, 1024).unwrap();
    // The whole conversation, as the chat template writes it.
    let full = tok.chat_template.as_ref().unwrap().render(None, &[("user", "Name a colour."), ("assistant", "Blue, like the sea."), ("user", "Another?"), ("assistant", "Green.")]);
    let full = full.strip_suffix("<|im_start|>assistant\n").unwrap();
    assert_eq!(t.ids, tok.encode(full).unwrap());
    let marked: Vec<u32> = t.ids.iter().zip(&t.assistant).filter(|(_, a)| **a).map(|(i, _)| *i).collect();
    let text = tok.inner.decode(&marked, false).unwrap();
    assert_eq!(text, "Blue, like the sea.<|im_end|>\nGreen.<|im_end|>\n");
    // Cut at max_len.
    let short = hierspec_train::tokenize(tok, &conv, 10).unwrap();
    assert_eq!((short.ids.len(), short.assistant.len()), (10, 10));
    assert_eq!(short.ids[..], t.ids[..10]);
}

#[test]
fn self_distillation_data_are_the_models_own_answers() {
    use hierspec_train::{make_data, Answers, DataSpec};
    let m = hierspec_model::load("smollm2-135m", 256, &device()).unwrap();
    let convs: Vec<hierspec_train::Conversation> = ["Name a colour.", "What is 2 + 2?", "Say hello.", "Count to three."]
        .iter()
        .map(|p| hierspec_train::Conversation { turns: vec![("user".into(), p.to_string()), ("assistant".into(), "ignored".into())] })
        .collect();
    let spec = DataSpec {
        base: "smollm2-135m".into(),
        quant: "none".into(),
        corpus: "test".into(),
        skip_conversations: 0,
        max_conversations: None,
        answers: Answers::Self_,
        answer_tokens: 12,
        temperature: 0.0,
        max_len: 256,
        eval_every: 2,
        seed: 0,
    };
    let dir = tmp("self-data");
    let manifest = make_data(&m, &convs, &spec, &dir, 1 << 20, None).unwrap();
    assert_eq!((manifest.conversations, manifest.train.len(), manifest.eval.len()), (4, 1, 1));
    let train_set = Dataset::open(&dir, &manifest.train, manifest.hidden, manifest.vocab).unwrap();
    assert_eq!(train_set.len(), 2);
    // Sequence 0 is conversation 0 (conversations 1 and 3 are held out): its assistant tokens are the
    // model's greedy answer, and its features are the model's final-norm hidden states.
    let s = train_set.get(0, 256);
    let prompt = hierspec_train::tokenize(&m.tokenizer, &hierspec_train::Conversation { turns: vec![("user".into(), "Name a colour.".into())] }, 256).unwrap();
    let mut sampler = hierspec_speculative::Sampler::new(hierspec_speculative::SamplingParams { temperature: 0.0, top_p: 1.0, top_k: 0, seed: 0 }).unwrap();
    let (answer, _) = hierspec_speculative::generate(&m.model, &m.config, &prompt.ids, 12, &mut sampler, &m.tokenizer.eos_ids, |_| {}).unwrap();
    assert_eq!(s.ids[..prompt.ids.len()], prompt.ids[..]);
    assert_eq!(s.ids[prompt.ids.len()..], answer[..]);
    assert!(s.assistant[..prompt.ids.len()].iter().all(|a| !a) && s.assistant[prompt.ids.len()..].iter().all(|a| *a));
    let mut cache = KvCache::new(&m.config, 1, 256, &device());
    let f = features(&m.model, &mut cache, &s.ids);
    let d = f.iter().zip(&s.features).map(|(a, b)| (a - b).abs() / a.abs().max(1.0)).fold(0f32, f32::max);
    assert!(d <= 1.0 / 128.0, "stored features differ from the model's by {d} (relative; bf16 storage)");
    // Same settings: the directory is reused as is.
    let again = make_data(&m, &[], &spec, &dir, 1 << 20, None).unwrap();
    assert_eq!(again, manifest);
}

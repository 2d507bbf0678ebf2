//! W4A16 checkpoints end to end: `checkpoint::write_quantized` writes the GPTQ v1 layout, the loader
//! reads it back exactly (bit for bit on the int4 values, f16 scales), the quantized model runs, and
//! malformed quantized checkpoints (wrong packing, missing scales, a group size that does not divide
//! the input, a non-4-bit config) are clear errors. Also: an EAGLE head from `pytorch_model.bin`
//! (the official heads' format) equals the same head from safetensors.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use half::f16;
use hierspec_kernels::int4::quantize_rtn;
use hierspec_model::checkpoint::{linear_names, write_quantized, WriteSpec};
use hierspec_model::eagle::load_head;
use hierspec_model::loader::{self, Checkpoint, LoadOptions};
use hierspec_model::nn::QuantSpec;
use hierspec_model::{Llama, LogitsFor};
use hierspec_speculative::verify::Runner;
use hierspec_tests::*;
use safetensors::tensor::TensorView;

fn tmp_dir(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("hierspec-quant-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    d
}

const GROUP: usize = 32;

fn rtn(w: &[f32], k: usize, n: usize) -> hierspec_kernels::int4::HostInt4 {
    quantize_rtn(w, k, n, if k % GROUP == 0 { GROUP } else { k }, true).unwrap()
}

/// Quantize `model` into a fresh directory.
fn write(model: &str, name: &str) -> PathBuf {
    let ckpt = Checkpoint::open(model).unwrap();
    let out = tmp_dir(name);
    let spec = WriteSpec { group: GROUP, sym: false, lm_head: false, method: "rtn".into() };
    write_quantized(ckpt.source(false).as_ref(), &ckpt.config, &ckpt.tokenizer, &out, &spec, |_, w, k, n| Ok(rtn(w, k, n)), |_, _| {}).unwrap();
    out
}

#[test]
fn quantized_directory_roundtrips_exactly() {
    let tiny = fixture_dir().join("hf-llama-tiny");
    let out = write(tiny.to_str().unwrap(), "roundtrip");
    let (orig, back) = (Checkpoint::open(tiny.to_str().unwrap()).unwrap(), Checkpoint::open(out.to_str().unwrap()).unwrap());
    let (src, dst) = (orig.source(false), back.source(false));
    for name in linear_names(&orig.config) {
        let (w, shape) = src.tensor(&format!("{name}.weight")).unwrap();
        let (n, k) = (shape[0], shape[1]);
        let mut want = rtn(&hierspec_model::nn::linear::transpose(&w, n, k), k, n);
        // The file keeps scales in f16; zero points and values are exact.
        for (s, o) in want.scales.iter_mut().zip(want.offsets.as_mut().unwrap().iter_mut()) {
            let z = (-*o / *s).round();
            *s = f16::from_f32(*s).to_f32();
            *o = -z * *s;
        }
        let got = dst.int4(&name).unwrap().expect("int4 layer");
        assert!(got.perm.is_none());
        assert_eq!(got.host.words, want.words, "{name}: int4 values");
        assert_eq!(got.host.dequantize(), want.dequantize(), "{name}: dequantized");
    }
    // The directory runs like the same quantization made at load time (the fixture is bf16, so only
    // the f16 rounding of the scales differs).
    let device = device();
    let run = |spec: &str, quant: Option<QuantSpec>| {
        let m = loader::load_with(spec, &LoadOptions { max_context: 256, quant }, &device).unwrap();
        let ids: Vec<u32> = (1..40).collect();
        let mut r = Runner::new(&m.model, &m.config, ids.len()).unwrap();
        to_vec_f32(r.forward(&ids, LogitsFor::All))
    };
    let at_load = run(tiny.to_str().unwrap(), Some(QuantSpec { group: GROUP, asymmetric: true, lm_head: false }));
    let from_dir = run(out.to_str().unwrap(), None);
    let rel = max_abs_diff(&at_load, &from_dir) / at_load.iter().fold(0f32, |a, x| a.max(x.abs()));
    eprintln!("tiny llama: quantized directory vs quantized at load: max |logit diff| / max |logit| = {rel:.2e}");
    assert!(rel < 5e-3, "the written checkpoint does not run like the quantization it holds ({rel})");
}

/// Rewrite `dir/model.safetensors` through `edit` (name -> (dtype, shape, bytes)).
fn edit_tensors(dir: &Path, edit: impl FnOnce(&mut HashMap<String, (safetensors::Dtype, Vec<usize>, Vec<u8>)>)) {
    let path = dir.join("model.safetensors");
    let bytes = std::fs::read(&path).unwrap();
    let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    let mut map: HashMap<String, (safetensors::Dtype, Vec<usize>, Vec<u8>)> =
        st.tensors().into_iter().map(|(n, v)| (n, (v.dtype(), v.shape().to_vec(), v.data().to_vec()))).collect();
    edit(&mut map);
    let views: Vec<(String, TensorView)> = map.iter().map(|(n, (d, s, b))| (n.clone(), TensorView::new(*d, s.clone(), b).unwrap())).collect();
    safetensors::serialize_to_file(views, None, &path).unwrap();
}

fn load_err(dir: &Path) -> String {
    match loader::load_with(dir.to_str().unwrap(), &LoadOptions::new(256), &device()) {
        Ok(_) => panic!("{} loaded, expected an error", dir.display()),
        Err(e) => e.to_string(),
    }
}

#[test]
fn malformed_quantized_checkpoints_are_clear_errors() {
    let tiny = fixture_dir().join("hf-llama-tiny");
    let layer = "model.layers.0.mlp.up_proj";
    // Missing scales.
    let d = write(tiny.to_str().unwrap(), "noscales");
    edit_tensors(&d, |m| {
        m.remove(&format!("{layer}.scales"));
    });
    let msg = load_err(&d);
    assert!(msg.contains(&format!("{layer}.scales")), "{msg}");
    // Wrong packing: qweight with a row too few.
    let d = write(tiny.to_str().unwrap(), "packing");
    edit_tensors(&d, |m| {
        let (_, shape, bytes) = m.get_mut(&format!("{layer}.qweight")).unwrap();
        shape[0] -= 1;
        bytes.truncate(shape[0] * shape[1] * 4);
    });
    let msg = load_err(&d);
    assert!(msg.contains(layer), "{msg}");
    // A group size that does not divide the input (64): the config says 48.
    let d = write(tiny.to_str().unwrap(), "group");
    let cfg_path = d.join("config.json");
    let cfg = std::fs::read_to_string(&cfg_path).unwrap().replace("\"group_size\": 32", "\"group_size\": 48");
    std::fs::write(&cfg_path, &cfg).unwrap();
    let msg = load_err(&d);
    assert!(msg.contains("group size 48"), "{msg}");
    // 8-bit checkpoints are not ours to read.
    std::fs::write(&cfg_path, cfg.replace("\"bits\": 4", "\"bits\": 8")).unwrap();
    let msg = load_err(&d);
    assert!(msg.contains("8-bit"), "{msg}");
}

#[test]
fn gguf_q4_blocks_load_as_int4_and_generate_like_the_dequantized_model() {
    // SmolLM2's GGUF is Q4_1 (+ Q8_0 embedding): a W4A16 load maps the Q4_1 blocks exactly (group
    // 32 with their minimum), so its logits match the dequantized model's up to float rounding.
    let device = device();
    let full = loader::load_with("smollm2-135m", &LoadOptions::new(256), &device).unwrap();
    let quant = loader::load_with("smollm2-135m", &LoadOptions { max_context: 256, quant: Some(QuantSpec::default()) }, &device).unwrap();
    let ids: Vec<u32> = full.tokenizer.encode("The quick brown fox jumps over the lazy dog.").unwrap();
    let logits = |m: &hierspec_model::LoadedModel| {
        let mut r = Runner::new(&m.model, &m.config, ids.len()).unwrap();
        to_vec_f32(r.forward(&ids, LogitsFor::All))
    };
    let (a, b) = (logits(&full), logits(&quant));
    let d = max_abs_diff(&a, &b);
    eprintln!("smollm2 Q4_1 as int4 vs dequantized: max |logit diff| {d}");
    assert!(d < 1e-2, "native Q4_1 int4 differs from the dequantized GGUF by {d}");
}

#[test]
fn gguf_mixed_blocks_requantize_to_their_fused_siblings_group() {
    // Qwen2.5-Coder-1.5B's Q4_K_M GGUF stores v_proj as Q6_K in some layers, beside q and k in Q4_K
    // (kept as int4, group 32). q|k|v runs as one product only if every part has one group, so the
    // requantized part takes its native siblings' 32 instead of the default 128. (The 0.5B's GGUF
    // mixes types across layers but never inside a fused set.)
    use hierspec_model::gguf::GgufFile;
    use hierspec_model::nn::LinearWeight;
    let alias = "qwen2.5-coder-1.5b";
    let path = loader::resolve(alias).unwrap();
    let file = GgufFile::open(&path).unwrap();
    let device = device();
    let m = loader::load_with(alias, &LoadOptions { max_context: 64, quant: Some(QuantSpec::default()) }, &device).unwrap();
    let group = |l: &hierspec_model::nn::Linear| match &l.weight {
        LinearWeight::Int4(w) => w.q.group,
        LinearWeight::Dense(_) => panic!("a decoder linear layer stayed dense under --quant"),
    };
    let native = |i: usize, g: &str| hierspec_model::quantized::gguf_int4_group(file.tensors[&format!("blk.{i}.{g}.weight")].dtype).is_some();
    let mut mixed = 0;
    for (i, l) in m.model.layers.iter().enumerate() {
        let (a, p) = (&l.self_attn, &l.mlp);
        let sets = [
            (vec![group(&a.q_proj), group(&a.k_proj), group(&a.v_proj)], ["attn_q", "attn_k", "attn_v"].map(|g| native(i, g)).to_vec()),
            (vec![group(&p.gate_proj), group(&p.up_proj)], ["ffn_gate", "ffn_up"].map(|g| native(i, g)).to_vec()),
        ];
        for (groups, natives) in sets {
            assert!(groups.iter().all(|g| *g == groups[0]), "layer {i}: fused parts in groups {groups:?}");
            let expect = if natives.iter().any(|n| *n) { 32 } else { 128 };
            assert_eq!(groups[0], expect, "layer {i}: natives {natives:?}");
            mixed += usize::from(natives.iter().any(|n| *n) && !natives.iter().all(|n| *n));
        }
    }
    eprintln!("{alias}: {mixed} fused sets mix int4 and requantized blocks");
    assert!(mixed > 0, "the fixture no longer mixes block types: this test checks nothing");
}

#[test]
fn eagle_head_from_pytorch_bin_equals_safetensors() {
    let device = device();
    // The base the fixture head was written for (scripts/make_eagle_bin_fixture.py).
    let base = tiny_llama(16, 2);
    let (bin, cfg) = load_head(&fixture_dir().join("eagle-head-bin"), &base, 64, &device).expect("pytorch_model.bin head");
    let (st, _) = load_head(&fixture_dir().join("eagle-head-st"), &base, 64, &device).expect("safetensors head");
    assert!(!cfg.fc_bias, "the fixture's config says bias: false");
    let model = Llama::random(&base, 64, 1, &device).unwrap();
    let embeds = model.embed(hierspec_speculative::ar::tokens_tensor(&[3, 1, 4, 1, 5], &device));
    let feats = burn::tensor::Tensor::<3>::random([1, 5, 32], burn::tensor::Distribution::Normal(0.0, 1.0), &device);
    let out = |head: &hierspec_model::eagle::EagleHead| {
        let mut cache = head.new_cache(&cfg, 8);
        let pos = Llama::positions(0, 5, &device);
        to_vec_f32(head.forward(embeds.clone(), feats.clone(), pos, &mut cache, None))
    };
    let (a, b) = (out(&bin), out(&st));
    assert_eq!(a, b, "the .bin head and the safetensors head differ");
    assert!(a.iter().any(|x| *x != 0.0));
}

/// x^T x of a [n, k] tensor, on the host in f64.
fn gram_of(x: burn::tensor::Tensor<2>) -> Vec<f64> {
    let [n, k] = x.dims();
    let v: Vec<f64> = to_vec_f32(x).into_iter().map(f64::from).collect();
    let mut g = vec![0.0; k * k];
    for r in 0..n {
        for i in 0..k {
            for j in 0..k {
                g[i * k + j] += v[r * k + i] * v[r * k + j];
            }
        }
    }
    g
}

#[test]
fn gptq_calibration_sees_each_layers_inputs() {
    use hierspec_model::calibrate::Calibrator;
    use hierspec_model::llama::LinearInput;
    use hierspec_model::nn::LinearWeight;
    let cfg = tiny_llama(40, 2);
    let dev = device();
    let model = Llama::random(&cfg, 32, 3, &dev).unwrap();
    let chunks = vec![vec![1, 5, 7, 9, 2, 3], vec![4, 4, 8, 30, 39]];
    let mut c = Calibrator::new(&model, &cfg, &chunks).unwrap();
    let close = |a: &[f64], b: &[f64], what: &str| {
        let scale = b.iter().fold(0f64, |m, x| m.max(x.abs()));
        let d = a.iter().zip(b).fold(0f64, |m, (x, y)| m.max((x - y).abs()));
        assert!(d <= 1e-4 * scale.max(1.0), "{what}: Gram differs by {d} (scale {scale})");
    };
    // Layer 0, q/k/v input: the normed embeddings of both chunks.
    let mut want = vec![0.0; 32 * 32];
    let mut layer1_inputs = Vec::new();
    for ch in &chunks {
        let ids: Vec<i64> = ch.iter().map(|&t| t as i64).collect();
        let x = model.embed(burn::tensor::Tensor::from_data(burn::tensor::TensorData::new(ids, [1, ch.len()]), &dev));
        let h = model.layers[0].input_layernorm.forward(x.clone()).reshape([ch.len(), 32]);
        want.iter_mut().zip(gram_of(h)).for_each(|(w, g)| *w += g);
        // What layer 1 receives: layer 0 run in full (its weights "quantized" to themselves below).
        let mut cache = hierspec_model::KvCache::new(&hierspec_model::LlamaConfig { num_hidden_layers: 1, ..cfg.clone() }, 1, ch.len(), &dev);
        let mask = hierspec_model::AttnMask::causal_unless_given(None, 0, ch.len(), &dev);
        let step = hierspec_model::llama::Step { rope: &model.rope, positions: Llama::positions(0, ch.len(), &dev), start: cache.start(), mask: mask.as_ref() };
        layer1_inputs.push(model.layers[0].forward(x, &step, &mut cache.layers[0]));
    }
    let h = c.hessian(0, LinearInput::Qkv).unwrap();
    assert_eq!(h.samples(), 11);
    close(h.gram(), &want, "layer 0 q/k/v");
    // Record layer 0's own weights as its "quantized" ones: layer 1 must see layer 0's true outputs.
    let l0 = &model.layers[0];
    for (name, lin) in [("self_attn.q_proj", &l0.self_attn.q_proj), ("self_attn.k_proj", &l0.self_attn.k_proj), ("self_attn.v_proj", &l0.self_attn.v_proj), ("self_attn.o_proj", &l0.self_attn.o_proj), ("mlp.gate_proj", &l0.mlp.gate_proj), ("mlp.up_proj", &l0.mlp.up_proj), ("mlp.down_proj", &l0.mlp.down_proj)] {
        let LinearWeight::Dense(w) = &lin.weight else { panic!("dense") };
        c.record(0, name, to_vec_f32(w.val())).unwrap();
    }
    let mut want = vec![0.0; 32 * 32];
    for x in layer1_inputs {
        let n = x.dims()[1];
        let h = model.layers[1].input_layernorm.forward(x).reshape([n, 32]);
        want.iter_mut().zip(gram_of(h)).for_each(|(w, g)| *w += g);
    }
    close(c.hessian(1, LinearInput::Qkv).unwrap().gram(), &want, "layer 1 q/k/v");
    // Going back is an error, and so is a layer the model does not have.
    assert!(c.hessian(0, LinearInput::O).is_err());
    assert!(c.hessian(5, LinearInput::Qkv).is_err());
}

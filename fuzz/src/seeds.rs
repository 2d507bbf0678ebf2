//! The seed files, and where their structure lies (the offsets truncation aims at): a GGUF written
//! here with every tensor type the loader reads, the real SmolLM2 GGUF's header and metadata (where
//! it is cached), the transformers fixtures (safetensors single and sharded, configs, tokenizers),
//! the EAGLE head fixtures in both formats, and a GPTQ directory written by our own quantizer.

use std::path::{Path, PathBuf};

use hierspec_model::checkpoint::{write_quantized, WriteSpec};
use hierspec_model::loader::Checkpoint;

use crate::mutate::Rng;

pub fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../assets/fixtures")
}

/// A GGUF being written, with the offset of every field boundary.
struct Gguf {
    b: Vec<u8>,
    bounds: Vec<usize>,
}

impl Gguf {
    fn mark(&mut self) {
        self.bounds.push(self.b.len());
    }
    fn raw(&mut self, v: &[u8]) {
        self.b.extend_from_slice(v);
        self.mark();
    }
    fn string(&mut self, s: &str) {
        self.raw(&(s.len() as u64).to_le_bytes());
        self.raw(s.as_bytes());
    }
    fn key(&mut self, k: &str, ty: u32) {
        self.string(k);
        self.raw(&ty.to_le_bytes());
    }
    fn u32(&mut self, k: &str, v: u32) {
        self.key(k, 4);
        self.raw(&v.to_le_bytes());
    }
    fn f32(&mut self, k: &str, v: f32) {
        self.key(k, 6);
        self.raw(&v.to_le_bytes());
    }
    fn str(&mut self, k: &str, v: &str) {
        self.key(k, 8);
        self.string(v);
    }
    fn strings(&mut self, k: &str, v: &[String]) {
        self.key(k, 9);
        self.raw(&8u32.to_le_bytes());
        self.raw(&(v.len() as u64).to_le_bytes());
        v.iter().for_each(|s| self.string(s));
    }
    fn i32s(&mut self, k: &str, v: &[i32]) {
        self.key(k, 9);
        self.raw(&5u32.to_le_bytes());
        self.raw(&(v.len() as u64).to_le_bytes());
        v.iter().for_each(|x| self.raw(&x.to_le_bytes()));
    }
}

/// A ggml type: id, elements and bytes per block.
type Ty = (u32, usize, usize);

/// The types the loader reads.
const F32: Ty = (0, 1, 4);
const F16: Ty = (1, 1, 2);
const Q4_0: Ty = (2, 32, 18);
const Q4_1: Ty = (3, 32, 20);
const Q5_0: Ty = (6, 32, 22);
const Q8_0: Ty = (8, 32, 34);
const Q4K: Ty = (12, 256, 144);
const Q6K: Ty = (14, 256, 210);
const BF16: Ty = (30, 1, 2);

/// Plausible bytes for `numel` values of `ty`: small floats, and block scales of 0.01 (f16) where
/// the block keeps them, random quants elsewhere.
fn tensor_bytes(ty: Ty, numel: usize, rng: &mut Rng) -> Vec<u8> {
    let (id, be, bb) = ty;
    let small = |rng: &mut Rng| (rng.below(2000) as f32 - 1000.0) * 1e-4;
    let scale = half::f16::from_f32(0.01).to_le_bytes();
    let mut out = Vec::with_capacity(numel / be * bb);
    for _ in 0..numel / be {
        match id {
            0 => out.extend(small(rng).to_le_bytes()),
            1 => out.extend(half::f16::from_f32(small(rng)).to_le_bytes()),
            30 => out.extend(half::bf16::from_f32(small(rng)).to_le_bytes()),
            _ => {
                let mut block: Vec<u8> = (0..bb).map(|_| rng.next_u64() as u8).collect();
                // d (and dmin / m) at the block's start; Q6_K keeps d at its end.
                let at: &[usize] = match id {
                    3 | 12 => &[0, 2],
                    14 => &[bb - 2],
                    _ => &[0],
                };
                at.iter().for_each(|&i| block[i..i + 2].copy_from_slice(&scale));
                out.extend(block);
            }
        }
    }
    out
}

/// A GGUF v3 of the tiny Llama fixture's shapes (hidden 64, 3 layers, 8 heads / 2 KV heads,
/// intermediate 112, vocabulary 320) with a byte-level BPE vocabulary in its metadata, its tensors
/// spread over F32, F16, BF16, Q4_0, Q4_1, Q5_0 and Q8_0, plus two tensors outside the model in
/// Q4_K and Q6_K (rows of 256). Returns (bytes, boundaries).
pub fn tiny_gguf() -> (Vec<u8>, Vec<usize>) {
    let tok: serde_json::Value = serde_json::from_slice(&std::fs::read(fixtures().join("hf-llama-tiny/tokenizer.json")).expect("tokenizer fixture")).expect("json");
    let vocab = tok["model"]["vocab"].as_object().expect("BPE vocab");
    let mut tokens = vec![String::new(); vocab.len()];
    for (t, id) in vocab {
        tokens[id.as_u64().expect("id") as usize] = t.clone();
    }
    let base = tokens.len();
    tokens.extend((base..320).map(|i| format!("<extra_{i}>")));
    let types: Vec<i32> = (0..320).map(|i| if i < base { 1 } else { 3 }).collect();

    let (hidden, layers, ffn, vocab_n) = (64usize, 3usize, 112usize, 320usize);
    let mut t: Vec<(String, Vec<usize>, Ty)> = vec![("token_embd.weight".into(), vec![hidden, vocab_n], Q8_0)];
    for i in 0..layers {
        let pick = |a: [Ty; 3]| a[i];
        t.push((format!("blk.{i}.attn_norm.weight"), vec![hidden], F32));
        t.push((format!("blk.{i}.attn_q.weight"), vec![hidden, hidden], pick([Q4_0, Q8_0, F16])));
        t.push((format!("blk.{i}.attn_k.weight"), vec![hidden, 16], pick([Q4_1, Q5_0, BF16])));
        t.push((format!("blk.{i}.attn_v.weight"), vec![hidden, 16], pick([Q5_0, Q4_0, F32])));
        t.push((format!("blk.{i}.attn_output.weight"), vec![hidden, hidden], pick([Q8_0, Q4_1, Q4_0])));
        t.push((format!("blk.{i}.ffn_norm.weight"), vec![hidden], F32));
        t.push((format!("blk.{i}.ffn_gate.weight"), vec![hidden, ffn], pick([Q4_0, F16, Q4_1])));
        t.push((format!("blk.{i}.ffn_up.weight"), vec![hidden, ffn], pick([Q4_1, Q8_0, Q4_0])));
        t.push((format!("blk.{i}.ffn_down.weight"), vec![ffn, hidden], pick([F16, BF16, F32])));
    }
    t.push(("output_norm.weight".into(), vec![hidden], F32));
    t.push(("output.weight".into(), vec![hidden, vocab_n], F16));
    t.push(("fuzz.q4k".into(), vec![256], Q4K));
    t.push(("fuzz.q6k".into(), vec![256, 2], Q6K));

    let mut g = Gguf { b: Vec::new(), bounds: Vec::new() };
    g.raw(b"GGUF");
    g.raw(&3u32.to_le_bytes());
    g.raw(&(t.len() as u64).to_le_bytes());
    g.raw(&20u64.to_le_bytes());
    g.str("general.architecture", "llama");
    g.u32("general.alignment", 32);
    g.u32("llama.context_length", 256);
    g.u32("llama.embedding_length", hidden as u32);
    g.u32("llama.block_count", layers as u32);
    g.u32("llama.feed_forward_length", ffn as u32);
    g.u32("llama.attention.head_count", 8);
    g.u32("llama.attention.head_count_kv", 2);
    g.f32("llama.rope.freq_base", 10_000.0);
    g.f32("llama.attention.layer_norm_rms_epsilon", 1e-5);
    g.u32("llama.vocab_size", vocab_n as u32);
    g.str("tokenizer.ggml.model", "gpt2");
    g.str("tokenizer.ggml.pre", "default");
    g.strings("tokenizer.ggml.tokens", &tokens);
    g.i32s("tokenizer.ggml.token_type", &types);
    g.strings("tokenizer.ggml.merges", &[]);
    g.u32("tokenizer.ggml.bos_token_id", 1);
    g.u32("tokenizer.ggml.eos_token_id", 319);
    g.str("tokenizer.chat_template", "{% for message in messages %}{{'<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n'}}{% endfor %}");
    // An array of arrays (the reader's nesting limit).
    g.key("fuzz.nested", 9);
    g.raw(&9u32.to_le_bytes());
    g.raw(&2u64.to_le_bytes());
    for _ in 0..2 {
        g.raw(&0u32.to_le_bytes());
        g.raw(&3u64.to_le_bytes());
        g.raw(&[1, 2, 3]);
    }
    let mut rel = 0usize;
    let mut rng = Rng::new(7);
    let mut data = Vec::new();
    for (name, dims, ty) in &t {
        g.string(name);
        g.raw(&(dims.len() as u32).to_le_bytes());
        dims.iter().for_each(|d| g.raw(&(*d as u64).to_le_bytes()));
        g.raw(&ty.0.to_le_bytes());
        g.raw(&(rel as u64).to_le_bytes());
        let bytes = tensor_bytes(*ty, dims.iter().product(), &mut rng);
        rel += bytes.len();
        data.push(bytes);
        while rel % 32 != 0 {
            rel += 1;
            data.last_mut().expect("a tensor").push(0);
        }
    }
    while g.b.len() % 32 != 0 {
        g.b.push(0);
    }
    g.mark();
    for d in data {
        g.raw(&d);
    }
    (g.b, g.bounds)
}

/// The header and metadata of a real GGUF (its tensor table dropped: the count becomes 0), so that
/// the real vocabulary and configuration go through the parser and the tokenizer build.
pub fn gguf_header(path: &Path) -> Option<(Vec<u8>, Vec<usize>)> {
    use std::io::Read;
    let mut head = vec![0u8; 16 << 20];
    let n = std::fs::File::open(path).ok()?.read(&mut head).ok()?;
    head.truncate(n);
    let mut bounds = vec![4, 8, 16, 24];
    let mut pos = 24usize;
    let rd = |pos: &mut usize, w: usize| -> Option<u64> {
        let b = head.get(*pos..*pos + w)?;
        *pos += w;
        let mut v = [0u8; 8];
        v[..w].copy_from_slice(b);
        Some(u64::from_le_bytes(v))
    };
    fn skip(rd: &dyn Fn(&mut usize, usize) -> Option<u64>, pos: &mut usize, ty: u64) -> Option<()> {
        match ty {
            0 | 1 | 7 => *pos += 1,
            2 | 3 => *pos += 2,
            4..=6 => *pos += 4,
            10..=12 => *pos += 8,
            8 => {
                let n = rd(pos, 8)?;
                *pos += n as usize;
            }
            9 => {
                let ety = rd(pos, 4)?;
                let n = rd(pos, 8)?;
                for _ in 0..n {
                    skip(rd, pos, ety)?;
                }
            }
            _ => return None,
        }
        Some(())
    }
    let kv = u64::from_le_bytes(head.get(16..24)?.try_into().ok()?);
    for _ in 0..kv {
        let klen = rd(&mut pos, 8)?;
        pos += klen as usize;
        let ty = rd(&mut pos, 4)?;
        bounds.push(pos);
        skip(&rd, &mut pos, ty)?;
        bounds.push(pos);
    }
    let mut bytes = head.get(..pos)?.to_vec();
    bytes[8..16].copy_from_slice(&0u64.to_le_bytes());
    Some((bytes, bounds))
}

/// Offsets of a safetensors file's structure: the length prefix, the header, each tensor's data.
pub fn safetensors_bounds(b: &[u8]) -> Vec<usize> {
    let mut out = vec![0, 8];
    let Some(n) = b.get(..8).map(|h| u64::from_le_bytes(h.try_into().expect("8 bytes")) as usize) else { return out };
    out.push(8 + n);
    if let Some(Ok(serde_json::Value::Object(h))) = b.get(8..8 + n).map(serde_json::from_slice::<serde_json::Value>) {
        for v in h.values() {
            if let Some(o) = v.get("data_offsets").and_then(|o| o.as_array()) {
                out.extend(o.iter().filter_map(|x| x.as_u64()).map(|x| 8 + n + x as usize));
            }
        }
    }
    // Inside the header: every field's start, where a cut leaves a JSON prefix.
    out.extend(b.get(8..8 + n).unwrap_or(&[]).iter().enumerate().filter(|(_, &c)| c == b'"').map(|(i, _)| 8 + i));
    out.sort();
    out.dedup();
    out
}

/// Offsets of a zip's records (pytorch_model.bin): local headers, the central directory, its end.
pub fn zip_bounds(b: &[u8]) -> Vec<usize> {
    let sigs: [&[u8]; 3] = [b"PK\x03\x04", b"PK\x01\x02", b"PK\x05\x06"];
    let mut out: Vec<usize> = (0..b.len().saturating_sub(4)).filter(|&i| sigs.iter().any(|s| &b[i..i + 4] == *s)).flat_map(|i| [i, i + 4, i + 26, i + 30]).collect();
    out.push(b.len());
    out
}

/// A GPTQ v1 directory of the tiny Llama fixture, written by our own quantizer (RTN, group 16).
pub fn gptq_dir(out: &Path) -> Result<(), String> {
    let ckpt = Checkpoint::open(&fixtures().join("hf-llama-tiny").display().to_string()).map_err(|e| e.to_string())?;
    let spec = WriteSpec { group: 16, sym: false, lm_head: false, method: "rtn".into() };
    let quantize = |_: &str, w: &[f32], k: usize, n: usize| hierspec_kernels::int4::quantize_rtn(w, k, n, 16, true).map_err(|e| hierspec_model::Error::Config(e.to_string()));
    let src = ckpt.source(false);
    let written = write_quantized(src.as_ref(), &ckpt.config, &ckpt.tokenizer, out, &spec, quantize, |_, _| {});
    drop(src);
    written.map_err(|e| e.to_string())
}

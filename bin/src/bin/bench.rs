//! `bench`: speed measurements, printed as a table and written as JSON.
//! - `--prompts <question.jsonl>`: real models on Spec-Bench style prompts, every method in
//!   `--methods` on the same prompts (see `hierspec::specbench`).
//! - `--synthetic <shape>`: AR decode of a random-weight model at a published shape (weights made on
//!   the device from a seed: speed does not depend on their values), against the bandwidth bound.

use std::collections::BTreeMap;
use burn::tensor::Device;
use std::path::PathBuf;

use clap::Parser;
use hierspec::backend::{dispatch, BackendJob, DeviceKind, Precision};
use hierspec::engine::{Engine, EngineArgs, Method, SamplingArgs};
use hierspec::host_profile::HostProfile;
use hierspec::report::median;
use hierspec::steps::{tree_steps, StepTime};
use hierspec::specbench::{self, Record, RunSpec, Summary};
use hierspec_model::nn::QuantSpec;
use hierspec_model::{Error, Llama, LlamaConfig, LogitsFor, Result};
use hierspec_speculative::verify::Runner;
use hierspec_speculative::{generate, Sampler, SamplingParams};

#[derive(Parser, Debug, Clone)]
#[command(about = "hierspec speed benchmarks: Spec-Bench prompts on real models, or synthetic shapes")]
struct Args {
    /// Spec-Bench question file (JSONL with question_id, category, turns).
    #[arg(long, conflicts_with = "synthetic", required_unless_present = "synthetic")]
    prompts: Option<PathBuf>,
    /// Methods to compare on --prompts (comma separated).
    #[arg(long, value_enum, value_delimiter = ',', default_value = "ar,sd,eagle,hier")]
    methods: Vec<Method>,
    /// First N questions of each category (all when absent).
    #[arg(long)]
    per_category: Option<usize>,
    /// Only these categories (comma separated).
    #[arg(long, value_delimiter = ',')]
    categories: Vec<String>,
    /// Turns per question (Spec-Bench's multi-turn prompts feed turn 2 after the answer to turn 1).
    #[arg(long, default_value_t = 2)]
    turns: usize,
    #[arg(long, default_value_t = 256)]
    max_new_tokens: usize,
    #[command(flatten)]
    sampling: SamplingArgs,
    /// Write Spec-Bench answer files (<dir>/<method>.jsonl).
    #[arg(long)]
    answers: Option<PathBuf>,
    /// Write the markdown table here too.
    #[arg(long)]
    markdown: Option<PathBuf>,
    /// Write an SVG bar chart of the speedup over ar per category and method.
    #[arg(long)]
    svg: Option<PathBuf>,
    /// Git revision recorded in the JSON.
    #[arg(long, default_value = "unknown")]
    revision: String,
    #[command(flatten)]
    engine: EngineArgs,
    /// Shape preset: qwen2.5-coder-1.5b, qwen2.5-coder-0.5b, llama3-8b, llama3-70b.
    #[arg(long)]
    synthetic: Option<String>,
    #[arg(long, value_enum, default_value_t = DeviceKind::Cpu)]
    device: DeviceKind,
    #[arg(long, value_enum, default_value_t = Precision::Bf16)]
    dtype: Precision,
    #[arg(long, default_value_t = 128)]
    prompt_len: usize,
    #[arg(long, default_value_t = 256)]
    new_tokens: usize,
    /// Timed repetitions after one warm-up; the median is reported.
    #[arg(long, default_value_t = 3)]
    repeats: usize,
    /// Device copy bandwidth in GB/s, for the bandwidth bound (H200: ~4300 measured).
    #[arg(long, default_value_t = 4300.0)]
    copy_gbps: f64,
    #[arg(long)]
    json: Option<PathBuf>,
    /// W4A16: random int4 weights (group 128, asymmetric) for every decoder linear layer.
    #[arg(long)]
    int4: bool,
    /// Also time one verification forward of N new tokens after a cache of each of these lengths
    /// (the verification-cost curve; N from --curve-n). Empty: skip.
    #[arg(long, value_delimiter = ',')]
    curve_cache: Vec<usize>,
    #[arg(long, value_delimiter = ',', default_value = "1,2,4,8,16,24,32,48,64")]
    curve_n: Vec<usize>,
    /// Time single forwards of N new tokens after the prompt (the shapes decoding repeats, replayed
    /// as graphs on CUDA): wall time per forward, and per forward of many issued back to back.
    #[arg(long, value_delimiter = ',', default_value = "1,8,64")]
    forward_n: Vec<usize>,
    /// Also time an EAGLE round's steps of a random head, eager and replayed: a draft round (a
    /// catch-up and one forward per level) and the verification of its tree (shape: the eagle
    /// --tree-* settings).
    #[arg(long)]
    tree_steps: bool,
    /// Sample the host threads over the timed runs (after warm-up) and write <path>.folded and
    /// <path>.svg (needs the `host-profile` feature).
    #[arg(long)]
    host_profile: Option<PathBuf>,
    #[arg(long, default_value_t = 997)]
    host_profile_hz: i32,
}

#[derive(serde::Serialize)]
#[serde(untagged)]
enum Report {
    Synthetic(Synthetic),
    SpecBench(SpecBenchReport),
}

#[derive(serde::Serialize)]
struct SpecBenchReport {
    revision: String,
    date: String,
    device: DeviceKind,
    dtype: Precision,
    model: String,
    draft: Option<String>,
    quant: String,
    settings: String,
    prompts: String,
    methods: Vec<Method>,
    summaries: Vec<Summary>,
    records: Vec<Record>,
    /// Fused kernels that declined their operands, by kernel ([`hierspec_kernels::fallback`]).
    fallbacks: BTreeMap<String, u64>,
}

#[derive(serde::Serialize)]
struct Synthetic {
    shape: String,
    int4: bool,
    device: DeviceKind,
    dtype: Precision,
    prompt_len: usize,
    new_tokens: usize,
    repeats: usize,
    prefill_ms: f64,
    decode_tok_s: f64,
    decode_tok_s_runs: Vec<f64>,
    ms_per_token: f64,
    weight_bytes_per_token: u64,
    bound_tok_s: f64,
    bound_fraction: f64,
    /// One forward of N new tokens (causal) after `cache_len` cached rows: median ms, and its ratio
    /// to N = 1 at the same cache length.
    verify_curve: Vec<CurvePoint>,
    /// Forwards after the prompt ([`ForwardTime`]), and how many graphs they captured (0: eager).
    forwards: Vec<ForwardTime>,
    graphs_captured: usize,
    graphs_on_device: usize,
    /// An EAGLE round's steps (a random head's draft round, the tree's verification), eager and
    /// replayed (`--tree-steps`).
    tree_steps: Vec<StepTime>,
    /// Fused kernels that declined their operands, by kernel ([`hierspec_kernels::fallback`]).
    fallbacks: BTreeMap<String, u64>,
}

/// One forward of `n` new tokens after the prompt.
#[derive(serde::Serialize)]
struct ForwardTime {
    n: usize,
    /// Median wall time of one forward through a device sync (the latency a decode step sees).
    wall_us: f64,
    /// Wall time per forward of 50 issued back to back, one sync at the end: the device's time per
    /// forward wherever the host issues faster than the device runs (a replayed graph); the host's
    /// where it does not (eager launches).
    pipelined_us: f64,
}

#[derive(serde::Serialize)]
struct CurvePoint {
    cache_len: usize,
    n: usize,
    ms: f64,
    vs_n1: f64,
    /// Host time until the forward returned, before the sync: when it is close to `ms`, the step is
    /// bound by launching (host dispatch), not by the GPU.
    enqueue_ms: f64,
}

impl BackendJob for Args {
    type Output = Report;
    fn run(self, device: Device) -> Result<Report> {
        match &self.prompts {
            Some(p) => self.spec_bench(p.clone(), device).map(Report::SpecBench),
            None => self.synthetic(device).map(Report::Synthetic),
        }
    }
}

impl Args {
    fn spec_bench(&self, path: PathBuf, device: Device) -> Result<SpecBenchReport> {
        if self.methods.is_empty() || self.turns == 0 || self.max_new_tokens == 0 {
            return Err(Error::Setting("--methods, --turns >= 1 and --max-new-tokens >= 1 are required".into()));
        }
        let questions = specbench::read_questions(&path, self.per_category, &self.categories)?;
        let t0 = std::time::Instant::now();
        let engine = Engine::load(self.engine.clone(), &self.methods, &device)?;
        eprintln!("loaded {} (and what {:?} need) in {:.1} s", self.engine.model, self.methods, t0.elapsed().as_secs_f64());
        let params = self.sampling.params(self.engine.seed);
        let spec = RunSpec {
            methods: &self.methods,
            max_new: self.max_new_tokens,
            turns: self.turns,
            params,
            warmup_tokens: 32.min(self.max_new_tokens),
            answers_dir: self.answers.as_deref(),
            model_id: &self.engine.model,
        };
        let profile = HostProfile::start(self.host_profile.as_deref(), self.host_profile_hz)?;
        let records = specbench::run(&engine, &questions, &spec)?;
        profile.map(HostProfile::finish).transpose()?;
        eprint!("{}", hierspec_speculative::profile::report());
        let e = &self.engine;
        Ok(SpecBenchReport {
            revision: self.revision.clone(),
            date: date_utc(),
            device: self.device,
            dtype: self.dtype,
            model: e.model.clone(),
            draft: e.draft.clone(),
            quant: format!("target {:?}, draft {:?}, group {}, {}", e.quant, e.draft_quant, e.quant_group, if e.quant_sym { "symmetric" } else { "asymmetric" }),
            settings: format!(
                "max_new {}, turns {}, temperature {}, top_p {}, top_k {}; sd draft_len {}; eagle {:?}; hier {:?}; heads eagle {:?} hier {:?}",
                self.max_new_tokens, self.turns, self.sampling.temperature, self.sampling.top_p, self.sampling.top_k, e.draft_len, e.eagle_tree(), e.hier(), e.eagle, e.hier_eagle.as_ref().or(e.eagle.as_ref())
            ),
            prompts: format!("{} ({} questions)", path.display(), questions.len()),
            methods: self.methods.clone(),
            summaries: specbench::summaries(&records, &self.methods),
            records,
            fallbacks: hierspec_kernels::fallback::counts(),
        })
    }

    fn synthetic(&self, device: Device) -> Result<Synthetic> {
        let shape = self.synthetic.clone().unwrap_or_default();
        if self.repeats == 0 || self.new_tokens < 2 || self.prompt_len == 0 {
            return Err(Error::Setting("--repeats >= 1, --new-tokens >= 2 and --prompt-len >= 1 are required".into()));
        }
        let cfg = LlamaConfig::preset(&shape)?;
        let curve_max = self.curve_cache.iter().max().copied().unwrap_or(0) + self.curve_n.iter().max().copied().unwrap_or(0);
        let steps_max = if self.tree_steps { self.prompt_len + hierspec::steps::ROWS_AFTER_PROMPT } else { 0 };
        let ctx = (self.prompt_len + self.new_tokens).max(curve_max).max(steps_max);
        let quant = self.int4.then(QuantSpec::default);
        let model = Llama::random_with(&cfg, ctx, self.engine.seed, quant.as_ref(), &device)?;
        let prompt: Vec<u32> = (0..self.prompt_len as u32).map(|i| (i * 7919 + 13) % cfg.vocab_size as u32).collect();
        let mut prefill = Vec::new();
        let mut rates = Vec::new();
        let mut profile = None;
        // Run 0 warms up (autotune, allocations); greedy, no stop tokens, every token read back.
        for run in 0..=self.repeats {
            if run == 1 {
                profile = HostProfile::start(self.host_profile.as_deref(), self.host_profile_hz)?;
            }
            let mut sampler = Sampler::new(SamplingParams::default())?;
            let (_, stats) = generate(&model, &cfg, &prompt, self.new_tokens, &mut sampler, &[], |_| {})?;
            if run > 0 {
                prefill.push(stats.prefill_ms);
                rates.push(stats.decode_tok_s());
            }
        }
        profile.map(HostProfile::finish).transpose()?;
        let verify_curve = self.verify_curve(&model, &cfg, &device)?;
        let (forwards, graphs_captured, graphs_on_device) = self.forward_times(&model, &cfg, &prompt, &device)?;
        let tree_steps = if self.tree_steps { tree_steps(&model, &cfg, &prompt, &self.engine.eagle_tree(), self.engine.seed)? } else { Vec::new() };
        let bytes = model.weight_bytes_per_token() as u64;
        let bound = self.copy_gbps * 1e9 / bytes as f64;
        let decode = median(&mut rates.clone());
        Ok(Synthetic {
            shape,
            int4: self.int4,
            device: self.device,
            dtype: self.dtype,
            prompt_len: self.prompt_len,
            new_tokens: self.new_tokens,
            repeats: self.repeats,
            prefill_ms: median(&mut prefill),
            decode_tok_s: decode,
            decode_tok_s_runs: rates,
            ms_per_token: 1e3 / decode,
            weight_bytes_per_token: bytes,
            bound_tok_s: bound,
            bound_fraction: decode / bound,
            verify_curve,
            forwards,
            graphs_captured,
            graphs_on_device,
            tree_steps,
            fallbacks: hierspec_kernels::fallback::counts(),
        })
    }

    /// [`ForwardTime`] for each of --forward-n after the prompt; the cache is cut back after each
    /// forward. Also the graphs the runner captured, and how many of them replay on the device.
    fn forward_times(&self, model: &Llama, cfg: &LlamaConfig, prompt: &[u32], device: &Device) -> Result<(Vec<ForwardTime>, usize, usize)> {
        const BACK_TO_BACK: usize = 50;
        let max_n = self.forward_n.iter().max().copied().unwrap_or(0);
        let mut r = Runner::new(model, cfg, prompt.len() + max_n)?;
        r.forward(prompt, LogitsFor::Last);
        let sync = || device.sync().map_err(|e| Error::Setting(format!("device sync: {e:?}")));
        let mut out = Vec::new();
        for &n in &self.forward_n {
            let ids: Vec<u32> = (0..n as u32).map(|i| (i * 7919 + 13) % cfg.vocab_size as u32).collect();
            let logits_for = if n == 1 { LogitsFor::Last } else { LogitsFor::All };
            let forward = |r: &mut Runner| {
                let logits = r.forward(&ids, logits_for);
                r.cache.truncate(prompt.len());
                logits
            };
            // Warm-up (autotune, and the graph's capture).
            for _ in 0..3 {
                forward(&mut r);
            }
            sync()?;
            let mut walls = Vec::new();
            for _ in 0..BACK_TO_BACK {
                let t = std::time::Instant::now();
                forward(&mut r);
                sync()?;
                walls.push(t.elapsed().as_secs_f64() * 1e6);
            }
            let t = std::time::Instant::now();
            for _ in 0..BACK_TO_BACK {
                forward(&mut r);
            }
            sync()?;
            let pipelined_us = t.elapsed().as_secs_f64() * 1e6 / BACK_TO_BACK as f64;
            let wall_us = median(&mut walls);
            eprintln!("forward n {n}: {wall_us:.0} us wall, {pipelined_us:.0} us back to back");
            out.push(ForwardTime { n, wall_us, pipelined_us });
        }
        Ok((out, r.graphs.captured, r.graphs.hardware))
    }

    /// The verification-cost curve: after a cache of each length, one forward of N tokens (the
    /// logits read back), median of --repeats after a warm-up; the cache is cut back after each.
    fn verify_curve(&self, model: &Llama, cfg: &LlamaConfig, device: &Device) -> Result<Vec<CurvePoint>> {
        let mut out = Vec::new();
        let max_n = self.curve_n.iter().max().copied().unwrap_or(0);
        for &cache_len in &self.curve_cache {
            let ids: Vec<u32> = (0..(cache_len + max_n) as u32).map(|i| (i * 7919 + 13) % cfg.vocab_size as u32).collect();
            let mut r = Runner::new(model, cfg, cache_len + max_n)?;
            if cache_len > 0 {
                r.forward(&ids[..cache_len], LogitsFor::Last);
            }
            let mut n1 = None;
            for &n in &self.curve_n {
                let (mut times, mut enqueue) = (Vec::new(), Vec::new());
                for run in 0..=self.repeats {
                    device.sync().map_err(|e| Error::Setting(format!("device sync: {e:?}")))?;
                    let t = std::time::Instant::now();
                    let logits = r.forward(&ids[cache_len..cache_len + n], LogitsFor::All);
                    let queued = t.elapsed().as_secs_f64() * 1e3;
                    let _ = hierspec_kernels::topk::argmax(logits).into_data();
                    if run > 0 {
                        times.push(t.elapsed().as_secs_f64() * 1e3);
                        enqueue.push(queued);
                    }
                    r.cache.truncate(cache_len);
                }
                let ms = median(&mut times);
                let enqueue_ms = median(&mut enqueue);
                let base = *n1.get_or_insert(ms);
                eprintln!("verify curve: cache {cache_len}, n {n}: {ms:.3} ms ({:.2}x n = 1), enqueued in {enqueue_ms:.3} ms", ms / base);
                out.push(CurvePoint { cache_len, n, ms, vs_n1: ms / base, enqueue_ms });
            }
        }
        Ok(out)
    }
}

fn main() {
    let args = Args::parse();
    let json = args.json.clone();
    let (markdown, svg) = (args.markdown.clone(), args.svg.clone());
    hierspec::report::finish(dispatch(args.device, args.dtype, args), json.as_deref(), |r: &Report| {
        let r = match r {
            Report::SpecBench(s) => {
                let t = specbench::table(&s.summaries);
                println!("{t}");
                if let Some(p) = &markdown {
                    let _ = std::fs::write(p, &t).map_err(|e| eprintln!("error: {}: {e}", p.display()));
                }
                if let Some(p) = &svg {
                    let _ = std::fs::write(p, specbench::svg(&s.summaries)).map_err(|e| eprintln!("error: {}: {e}", p.display()));
                }
                return;
            }
            Report::Synthetic(r) => r,
        };
        println!("| shape | weights | device | dtype | prompt | new | prefill ms | decode tok/s | ms/token | bound tok/s | of bound |");
        println!("|---|---|---|---|---|---|---|---|---|---|---|");
        println!(
            "| {} | {} | {:?} | {:?} | {} | {} | {:.1} | {:.1} | {:.2} | {:.0} | {:.1}% |",
            r.shape, if r.int4 { "W4A16 g128" } else { "dense" }, r.device, r.dtype, r.prompt_len, r.new_tokens, r.prefill_ms, r.decode_tok_s, r.ms_per_token,
            r.bound_tok_s, 100.0 * r.bound_fraction
        );
        if !r.forwards.is_empty() {
            println!();
            println!("graphs captured: {} ({} replayed on the device)", r.graphs_captured, r.graphs_on_device);
            println!("| N new tokens | wall us per forward | us per forward back to back |");
            println!("|---|---|---|");
            for f in &r.forwards {
                println!("| {} | {:.0} | {:.0} |", f.n, f.wall_us, f.pipelined_us);
            }
        }
        if !r.tree_steps.is_empty() {
            println!();
            println!("| step | nodes | forwards | graphs | wall us |");
            println!("|---|---|---|---|---|");
            for s in &r.tree_steps {
                println!("| {} | {} | {} | {} | {:.0} |", s.step, s.nodes, s.forwards, if s.graphs { "replayed" } else { "eager" }, s.wall_us);
            }
        }
        if !r.verify_curve.is_empty() {
            println!();
            println!("| cache len | N new tokens | forward ms | x N = 1 | host enqueue ms |");
            println!("|---|---|---|---|---|");
            for c in &r.verify_curve {
                println!("| {} | {} | {:.3} | {:.2} | {:.3} |", c.cache_len, c.n, c.ms, c.vs_n1, c.enqueue_ms);
            }
        }
    });
}

/// Today's date (UTC) as YYYY-MM-DD.
fn date_utc() -> String {
    time::OffsetDateTime::now_utc().date().to_string()
}

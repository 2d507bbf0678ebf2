//! `bench`: speed measurements. Today: `--synthetic <shape>`, AR decode of a random-weight model at a
//! published shape (weights made on the device from a seed: speed does not depend on their values),
//! against the bandwidth bound. Prints a table and writes JSON.

use std::path::PathBuf;

use burn::tensor::backend::Backend;
use clap::Parser;
use hierspec::backend::{dispatch, BackendJob, DeviceKind, Precision};
use hierspec_model::nn::QuantSpec;
use hierspec_model::{Error, Llama, LlamaConfig, Result};
use hierspec_speculative::{generate, Sampler, SamplingParams};

#[derive(Parser, Debug, Clone)]
#[command(about = "hierspec speed benchmarks (synthetic shapes)")]
struct Args {
    /// Shape preset: qwen2.5-coder-1.5b, qwen2.5-coder-0.5b, llama3-8b, llama3-70b.
    #[arg(long)]
    synthetic: String,
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
    #[arg(long, default_value_t = 0)]
    seed: u64,
    #[arg(long)]
    json: Option<PathBuf>,
    /// W4A16: random int4 weights (group 128, asymmetric) for every decoder linear layer.
    #[arg(long)]
    int4: bool,
}

#[derive(serde::Serialize)]
struct Report {
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
}

fn median(v: &mut [f64]) -> f64 {
    v.sort_by(|a, b| a.partial_cmp(b).unwrap());
    v[v.len() / 2]
}

impl BackendJob for Args {
    type Output = Report;
    fn run<B: Backend>(self, device: B::Device) -> Result<Report> {
        if self.repeats == 0 || self.new_tokens < 2 || self.prompt_len == 0 {
            return Err(Error::Setting("--repeats >= 1, --new-tokens >= 2 and --prompt-len >= 1 are required".into()));
        }
        let cfg = LlamaConfig::preset(&self.synthetic)?;
        let ctx = self.prompt_len + self.new_tokens;
        let quant = self.int4.then(QuantSpec::default);
        let model = Llama::<B>::random_with(&cfg, ctx, self.seed, quant.as_ref(), &device)?;
        let prompt: Vec<u32> = (0..self.prompt_len as u32).map(|i| (i * 7919 + 13) % cfg.vocab_size as u32).collect();
        let mut prefill = Vec::new();
        let mut rates = Vec::new();
        // Run 0 warms up (autotune, allocations); greedy, no stop tokens, every token read back.
        for run in 0..=self.repeats {
            let mut sampler = Sampler::new(SamplingParams::default())?;
            let (_, stats) = generate(&model, &cfg, &prompt, self.new_tokens, &mut sampler, &[], |_| {})?;
            if run > 0 {
                prefill.push(stats.prefill_ms);
                rates.push(stats.decode_tok_s());
            }
        }
        let bytes = model.weight_bytes_per_token() as u64;
        let bound = self.copy_gbps * 1e9 / bytes as f64;
        let decode = median(&mut rates.clone());
        Ok(Report {
            shape: self.synthetic.clone(),
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
        })
    }
}

fn main() {
    let args = Args::parse();
    let json = args.json.clone();
    hierspec::report::finish(dispatch(args.device, args.dtype, args), json.as_deref(), |r: &Report| {
        println!("| shape | weights | device | dtype | prompt | new | prefill ms | decode tok/s | ms/token | bound tok/s | of bound |");
        println!("|---|---|---|---|---|---|---|---|---|---|---|");
        println!(
            "| {} | {} | {:?} | {:?} | {} | {} | {:.1} | {:.1} | {:.2} | {:.0} | {:.1}% |",
            r.shape, if r.int4 { "W4A16 g128" } else { "dense" }, r.device, r.dtype, r.prompt_len, r.new_tokens, r.prefill_ms, r.decode_tok_s, r.ms_per_token,
            r.bound_tok_s, 100.0 * r.bound_fraction
        );
    });
}

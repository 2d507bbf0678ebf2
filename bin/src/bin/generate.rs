//! `generate`: run a model on a prompt, streaming tokens to stdout and a stats line to stderr.

use burn::tensor::Device;
use std::io::Write;
use std::path::PathBuf;

use clap::Parser;
use hierspec::backend::{dispatch, BackendJob, DeviceKind, Precision};
use hierspec::engine::{Engine, EngineArgs, Method, SamplingArgs};
use hierspec_model::{Error, Result};
use hierspec_speculative::Sampler;

#[derive(Parser, Debug, Clone)]
#[command(about = "Generate text with a Llama-family model (greedy at temperature 0)")]
struct Args {
    /// The prompt (positional form of --prompt).
    #[arg(conflicts_with = "prompt_flag")]
    prompt: Option<String>,
    #[arg(long = "prompt", id = "prompt_flag")]
    prompt_flag: Option<String>,
    #[command(flatten)]
    engine: EngineArgs,
    #[arg(long)]
    system: Option<String>,
    #[arg(long, default_value_t = 128)]
    max_new_tokens: usize,
    #[arg(long, value_enum, default_value_t = Method::Ar)]
    method: Method,
    #[command(flatten)]
    sampling: SamplingArgs,
    #[arg(long, value_enum, default_value_t = DeviceKind::Cpu)]
    device: DeviceKind,
    #[arg(long, value_enum, default_value_t = Precision::F32)]
    dtype: Precision,
    /// Feed the prompt as raw text, without the model's chat template.
    #[arg(long)]
    no_chat: bool,
    #[arg(long)]
    stats_json: Option<PathBuf>,
}

#[derive(serde::Serialize)]
struct Stats {
    model: String,
    method: Method,
    draft: Option<String>,
    /// Tokens per target forward in the decode phase, the target's bonus token counted.
    tau: f64,
    device: DeviceKind,
    dtype: Precision,
    prompt_tokens: usize,
    new_tokens: usize,
    prefill_ms: f64,
    decode_ms: f64,
    decode_tok_s: f64,
    draft_ms: f64,
    verify_ms: f64,
    /// `hier` only: tokens per inner round (head -> intermediate), the intermediate's bonus counted.
    inner_tau: f64,
    target_forwards: usize,
    intermediate_forwards: usize,
    head_forwards: usize,
    intermediate_ms: f64,
    /// Fused kernels that declined their operands, by kernel ([`hierspec_kernels::fallback`]).
    fallbacks: std::collections::BTreeMap<String, u64>,
    text: String,
}

impl BackendJob for Args {
    type Output = ();
    fn run(self, device: Device) -> Result<()> {
        let params = self.sampling.params(self.engine.seed);
        let mut sampler = Sampler::new(params)?;
        let prompt = self.prompt.clone().or(self.prompt_flag.clone()).unwrap_or_else(|| "Write a haiku about the sea.".into());
        let engine = Engine::load(self.engine.clone(), &[self.method], &device)?;
        let m = &engine.target;
        let text = match (&m.tokenizer.chat_template, self.no_chat) {
            (Some(t), false) => t.render(self.system.as_deref(), &[("user", &prompt)]),
            _ => prompt,
        };
        let ids = m.tokenizer.encode(&text)?;

        // Stream: decode everything generated so far and print what is new, once it is whole UTF-8.
        let mut out_ids: Vec<u32> = Vec::new();
        let mut printed = 0usize;
        let stdout = std::io::stdout();
        let mut emit = |id: u32| {
            if m.tokenizer.eos_ids.contains(&id) {
                return;
            }
            out_ids.push(id);
            if let Ok(s) = m.tokenizer.decode(&out_ids) {
                if s.len() > printed && !s.ends_with('\u{FFFD}') {
                    let mut lock = stdout.lock();
                    let _ = lock.write_all(&s.as_bytes()[printed..]);
                    let _ = lock.flush();
                    printed = s.len();
                }
            }
        };
        let stop = m.tokenizer.eos_ids.clone();
        let (tokens, stats) = engine.run(self.method, &ids, self.max_new_tokens, &mut sampler, &stop, &mut emit)?;
        println!();
        eprintln!(
            "[{} {:?}] prefill {:.1} ms ({} tokens) | decode {:.2} tok/s ({} tokens in {:.1} ms; draft {:.1} ms, verify {:.1} ms) | tau {:.2} (tokens per target forward, bonus counted)",
            self.engine.model,
            self.method,
            stats.prefill_ms,
            stats.prompt_tokens,
            stats.decode_tok_s(),
            stats.new_tokens,
            stats.decode_ms,
            stats.draft_ms,
            stats.verify_ms,
            stats.tau()
        );
        if self.method == Method::Hier {
            let per = |n: usize| n as f64 / stats.new_tokens.max(1) as f64;
            eprintln!(
                "[hier] inner tau {:.2} (head -> intermediate, its bonus counted) | forwards per token: target {:.3}, intermediate {:.3}, head {:.3} | time: head {:.1} ms, intermediate {:.1} ms, target {:.1} ms",
                stats.inner_tau(),
                per(stats.target_forwards),
                per(stats.intermediate_forwards),
                per(stats.draft_forwards),
                stats.draft_ms,
                stats.intermediate_ms,
                stats.verify_ms
            );
        }
        if let Some(path) = &self.stats_json {
            let s = Stats {
                model: self.engine.model.clone(),
                method: self.method,
                draft: self.engine.draft.clone(),
                tau: stats.tau(),
                device: self.device,
                dtype: self.dtype,
                prompt_tokens: stats.prompt_tokens,
                new_tokens: stats.new_tokens,
                prefill_ms: stats.prefill_ms,
                decode_ms: stats.decode_ms,
                decode_tok_s: stats.decode_tok_s(),
                draft_ms: stats.draft_ms,
                verify_ms: stats.verify_ms,
                inner_tau: stats.inner_tau(),
                target_forwards: stats.target_forwards,
                intermediate_forwards: stats.intermediate_forwards,
                head_forwards: stats.draft_forwards,
                intermediate_ms: stats.intermediate_ms,
                fallbacks: hierspec_kernels::fallback::counts(),
                text: m.tokenizer.decode(&tokens)?,
            };
            let json = serde_json::to_string_pretty(&s).expect("stats serialise");
            std::fs::write(path, json).map_err(|e| Error::io(path, e))?;
        }
        Ok(())
    }
}

fn main() {
    let args = Args::parse();
    if let Err(e) = dispatch(args.device, args.dtype, args.clone()) {
        eprintln!("error: {e}");
        std::process::exit(1);
    }
}

//! `generate`: run a model on a prompt, streaming tokens to stdout and a stats line to stderr.

use std::io::Write;
use std::path::PathBuf;

use clap::Parser;
use hierspec::backend::{dispatch, BackendJob, DeviceKind, Precision};
use hierspec_model::{loader, Error, Result};
use hierspec_speculative::{generate, Sampler, SamplingParams};

#[derive(Parser, Debug, Clone)]
#[command(about = "Generate text with a Llama-family model (greedy at temperature 0)")]
struct Args {
    /// The prompt (positional form of --prompt).
    #[arg(conflicts_with = "prompt_flag")]
    prompt: Option<String>,
    #[arg(long = "prompt", id = "prompt_flag")]
    prompt_flag: Option<String>,
    /// Alias (smollm2-135m, qwen2.5-coder-0.5b, qwen2.5-coder-1.5b), HF model directory, or .gguf file.
    #[arg(long, default_value = "smollm2-135m")]
    model: String,
    #[arg(long)]
    system: Option<String>,
    #[arg(long, default_value_t = 128)]
    max_new_tokens: usize,
    #[arg(long, default_value_t = 0.0)]
    temperature: f32,
    #[arg(long, default_value_t = 1.0)]
    top_p: f32,
    #[arg(long, default_value_t = 0)]
    top_k: usize,
    #[arg(long, default_value_t = 0)]
    seed: u64,
    #[arg(long, value_enum, default_value_t = DeviceKind::Cpu)]
    device: DeviceKind,
    #[arg(long, value_enum, default_value_t = Precision::F32)]
    dtype: Precision,
    /// Feed the prompt as raw text, without the model's chat template.
    #[arg(long)]
    no_chat: bool,
    /// Cap on the context (RoPE table and KV cache sizing).
    #[arg(long, default_value_t = loader::DEFAULT_MAX_CONTEXT)]
    max_context: usize,
    #[arg(long)]
    stats_json: Option<PathBuf>,
}

#[derive(serde::Serialize)]
struct Stats {
    model: String,
    device: DeviceKind,
    dtype: Precision,
    prompt_tokens: usize,
    new_tokens: usize,
    prefill_ms: f64,
    decode_ms: f64,
    decode_tok_s: f64,
    text: String,
}

impl BackendJob for Args {
    type Output = ();
    fn run<B: burn::tensor::backend::Backend>(self, device: B::Device) -> Result<()> {
        let params = SamplingParams { temperature: self.temperature, top_p: self.top_p, top_k: self.top_k, seed: self.seed };
        let mut sampler = Sampler::new(params)?;
        let prompt = self.prompt.clone().or(self.prompt_flag.clone()).unwrap_or_else(|| "Write a haiku about the sea.".into());
        let m = loader::load::<B>(&self.model, self.max_context, &device)?;
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
        let (tokens, stats) =
            generate(&m.model, &m.config, &ids, self.max_new_tokens, &mut sampler, &m.tokenizer.eos_ids, &mut emit)?;
        println!();
        eprintln!(
            "[{}] prefill {:.1} ms ({} tokens) | decode {:.2} tok/s ({} tokens in {:.1} ms)",
            self.model,
            stats.prefill_ms,
            stats.prompt_tokens,
            stats.decode_tok_s(),
            stats.new_tokens,
            stats.decode_ms
        );
        if let Some(path) = &self.stats_json {
            let s = Stats {
                model: self.model.clone(),
                device: self.device,
                dtype: self.dtype,
                prompt_tokens: stats.prompt_tokens,
                new_tokens: stats.new_tokens,
                prefill_ms: stats.prefill_ms,
                decode_ms: stats.decode_ms,
                decode_tok_s: stats.decode_tok_s(),
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

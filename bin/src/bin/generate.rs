//! `generate`: run a model on a prompt, streaming tokens to stdout and a stats line to stderr.

use std::io::Write;
use std::path::PathBuf;

use clap::Parser;
use hierspec::backend::{dispatch, BackendJob, DeviceKind, Precision};
use hierspec_model::loader::{self, LoadOptions};
use hierspec_model::nn::QuantSpec;
use hierspec_model::{Error, Result};
use hierspec_model::eagle::{load_head, EagleConfig, EagleHead};
use hierspec_speculative::drafter::EagleDrafter;
use hierspec_speculative::sd::{generate_sd, Model};
use hierspec_speculative::tree::TreeConfig;
use hierspec_speculative::generate_eagle;
use hierspec_speculative::{generate, Sampler, SamplingParams};

#[derive(clap::ValueEnum, Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
enum Method {
    /// The target alone.
    Ar,
    /// A smaller model of the same tokenizer drafts --draft-len tokens, the target verifies them.
    Sd,
    /// An EAGLE head (--eagle) drafts a dynamic tree, the target verifies it in one forward.
    Eagle,
}

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
    #[arg(long, value_enum, default_value_t = Method::Ar)]
    method: Method,
    /// Draft model for `--method sd` (alias, HF directory or .gguf).
    #[arg(long)]
    draft: Option<String>,
    #[arg(long, default_value_t = 5)]
    draft_len: usize,
    /// EAGLE head directory for `--method eagle` (config.json + safetensors), trained for --model.
    /// `random` makes an untrained head (exercises the machinery; acceptance is low).
    #[arg(long)]
    eagle: Option<String>,
    /// Children per tree node and frontier width.
    #[arg(long, default_value_t = 10)]
    tree_topk: usize,
    /// Drafter forwards per tree (levels below the root).
    #[arg(long, default_value_t = 6)]
    tree_depth: usize,
    /// Nodes per tree, root included.
    #[arg(long, default_value_t = 60)]
    tree_nodes: usize,
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
    /// Quantize the target's linear layers to W4A16 at load (`rtn`: round-to-nearest per group).
    #[arg(long, value_enum, default_value_t = Quant::None)]
    quant: Quant,
    /// Input rows per scale for --quant (the full row where it does not divide the layer's input).
    #[arg(long, default_value_t = 128)]
    quant_group: usize,
    /// Symmetric int4 (zero point 8) instead of min-max per group.
    #[arg(long)]
    quant_sym: bool,
    /// Quantize lm_head too (dense by default).
    #[arg(long)]
    quant_lm_head: bool,
}

#[derive(clap::ValueEnum, Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
enum Quant {
    None,
    Rtn,
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
    text: String,
}

impl BackendJob for Args {
    type Output = ();
    fn run<B: burn::tensor::backend::Backend>(self, device: B::Device) -> Result<()> {
        let params = SamplingParams { temperature: self.temperature, top_p: self.top_p, top_k: self.top_k, seed: self.seed };
        let mut sampler = Sampler::new(params)?;
        let prompt = self.prompt.clone().or(self.prompt_flag.clone()).unwrap_or_else(|| "Write a haiku about the sea.".into());
        if self.quant != Quant::None && !matches!(self.quant_group, 32 | 64 | 128 | 256) {
            return Err(Error::Setting(format!("--quant-group {} (use 32, 64, 128 or 256)", self.quant_group)));
        }
        let quant = (self.quant == Quant::Rtn).then_some(QuantSpec {
            group: self.quant_group,
            asymmetric: !self.quant_sym,
            lm_head: self.quant_lm_head,
        });
        let m = loader::load_with::<B>(&self.model, &LoadOptions { max_context: self.max_context, quant }, &device)?;
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
        let (tokens, stats) = match self.method {
            Method::Ar => generate(&m.model, &m.config, &ids, self.max_new_tokens, &mut sampler, &stop, &mut emit)?,
            Method::Sd => {
                let spec = self.draft.as_deref().ok_or_else(|| Error::Setting("--method sd needs --draft <model>".into()))?;
                if !params.is_greedy() {
                    return Err(Error::Setting("--method sd is greedy only so far (use --temperature 0)".into()));
                }
                let d = loader::load::<B>(spec, self.max_context, &device)?;
                if d.tokenizer.vocab_size() != m.tokenizer.vocab_size() || d.config.vocab_size != m.config.vocab_size {
                    return Err(Error::Setting(format!(
                        "--draft {spec} has a different tokenizer or vocabulary ({} vs {})",
                        d.config.vocab_size, m.config.vocab_size
                    )));
                }
                let target = Model { model: &m.model, config: &m.config };
                let draft = Model { model: &d.model, config: &d.config };
                generate_sd(target, draft, &ids, self.max_new_tokens, self.draft_len, &stop, &mut emit)?
            }
            Method::Eagle => {
                let spec = self.eagle.as_deref().ok_or_else(|| Error::Setting("--method eagle needs --eagle <head dir>".into()))?;
                if !params.is_greedy() {
                    return Err(Error::Setting("--method eagle is greedy only so far (use --temperature 0)".into()));
                }
                let tree = TreeConfig { top_k: self.tree_topk, depth: self.tree_depth, total_nodes: self.tree_nodes };
                tree.validate()?;
                let positions = m.context_len();
                let (head, head_cfg) = if spec == "random" {
                    let cfg = EagleConfig::for_base(&m.config);
                    (EagleHead::<B>::random(&cfg, positions, self.seed, &device)?, cfg)
                } else {
                    load_head::<B>(std::path::Path::new(spec), &m.config, positions, &device)?
                };
                let mut drafter = EagleDrafter::new(&head, &head_cfg, &m.model, ids.len() + self.max_new_tokens + 1, &tree)?;
                generate_eagle(&m.model, &m.config, &mut drafter, &tree, &ids, self.max_new_tokens, &stop, &mut emit)?
            }
        };
        println!();
        eprintln!(
            "[{} {:?}] prefill {:.1} ms ({} tokens) | decode {:.2} tok/s ({} tokens in {:.1} ms; draft {:.1} ms, verify {:.1} ms) | tau {:.2} (tokens per target forward, bonus counted)",
            self.model,
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
        if let Some(path) = &self.stats_json {
            let s = Stats {
                model: self.model.clone(),
                method: self.method,
                draft: self.draft.clone(),
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

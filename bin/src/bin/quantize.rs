//! `quantize`: read a model (alias, HF directory or GGUF), quantize its decoder linear layers (and
//! lm_head if asked) to int4, and write a Hugging Face style directory in the GPTQ v1 layout that
//! `generate --model <dir>` (and AutoGPTQ-compatible tools) load.

use std::path::PathBuf;

use clap::Parser;
use hierspec_kernels::int4::quantize_rtn;
use hierspec_model::checkpoint::{write_quantized, WriteSpec};
use hierspec_model::loader::Checkpoint;
use hierspec_model::{Error, Result};

#[derive(clap::ValueEnum, Debug, Clone, Copy, PartialEq, Eq)]
enum Method {
    /// Round to nearest per group (min-max range with an integer zero point, or symmetric).
    Rtn,
}

#[derive(Parser, Debug)]
#[command(about = "Quantize a model's linear layers to int4 (W4A16) and write a GPTQ-layout directory")]
struct Args {
    /// Alias (smollm2-135m, qwen2.5-coder-0.5b, qwen2.5-coder-1.5b), HF model directory or .gguf file.
    #[arg(long)]
    model: String,
    /// Output directory (created).
    #[arg(long)]
    out: PathBuf,
    #[arg(long, value_enum, default_value_t = Method::Rtn)]
    method: Method,
    /// Input rows per scale: 32, 64, 128 or 256 (the full row where it does not divide the layer).
    #[arg(long, default_value_t = 128)]
    group: usize,
    /// Symmetric int4 (zero point 8) instead of min-max per group.
    #[arg(long)]
    sym: bool,
    /// Quantize lm_head too (kept dense by default).
    #[arg(long)]
    lm_head: bool,
}

fn run(args: &Args) -> Result<()> {
    if !matches!(args.group, 32 | 64 | 128 | 256) {
        return Err(Error::Setting(format!("--group {} (use 32, 64, 128 or 256)", args.group)));
    }
    if args.out.join("config.json").exists() {
        return Err(Error::Setting(format!("{} already holds a model; choose a new --out", args.out.display())));
    }
    let ckpt = Checkpoint::open(&args.model)?;
    // Quantized sources dequantize first: every layer is requantized on one grid.
    let src = ckpt.source(false);
    let spec = WriteSpec { group: args.group, sym: args.sym, lm_head: args.lm_head, method: "rtn".into() };
    let bar = indicatif::ProgressBar::new(0);
    bar.set_style(indicatif::ProgressStyle::with_template("quantizing {bar:40} {pos}/{len} layers [{elapsed} < {eta}]").expect("template"));
    let quantize = |name: &str, w: &[f32], k: usize, n: usize| {
        let group = if k % args.group == 0 { args.group } else { k };
        match args.method {
            Method::Rtn => quantize_rtn(w, k, n, group, !args.sym).map_err(|e| Error::Setting(format!("{name}: {e}"))),
        }
    };
    let progress = |done: usize, total: usize| {
        bar.set_length(total as u64);
        bar.set_position(done as u64);
    };
    write_quantized(src.as_ref(), &ckpt.config, &ckpt.tokenizer, &args.out, &spec, quantize, progress)?;
    bar.finish_and_clear();
    eprintln!("wrote {} (GPTQ v1 layout, group {}, {})", args.out.display(), args.group, if args.sym { "symmetric" } else { "asymmetric" });
    Ok(())
}

fn main() {
    let args = Args::parse();
    if let Err(e) = run(&args) {
        eprintln!("error: {e}");
        std::process::exit(1);
    }
}

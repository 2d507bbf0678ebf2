//! `quantize`: read a model (alias, HF directory or GGUF), quantize its decoder linear layers (and
//! lm_head if asked) to int4, and write a Hugging Face style directory in the GPTQ v1 layout that
//! `generate --model <dir>` (and AutoGPTQ-compatible tools) load. `--method gptq` calibrates on
//! text (`--calib`): each layer's inputs are captured in order and every weight is quantized with
//! GPTQ's error feedback (lm_head, when asked for, stays RTN).

use burn::tensor::Device;
use std::path::PathBuf;

use clap::Parser;
use hierspec::backend::{dispatch, BackendJob, DeviceKind, Precision};
use hierspec_kernels::int4::quantize_rtn;
use hierspec_model::calibrate::Calibrator;
use hierspec_model::checkpoint::{write_quantized, WriteSpec};
use hierspec_model::gptq::gptq;
use hierspec_model::llama::LinearInput;
use hierspec_model::loader::{self, Checkpoint, LoadOptions};
use hierspec_model::{Error, Result};

#[derive(clap::ValueEnum, Debug, Clone, Copy, PartialEq, Eq)]
enum Method {
    /// Round to nearest per group (min-max range with an integer zero point, or symmetric).
    Rtn,
    /// GPTQ on calibration text (--calib), on RTN's grid.
    Gptq,
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
    /// GPTQ calibration text: a corpus alias (`sharegpt`) or file, as `train-eagle --corpus` reads.
    #[arg(long, default_value = "sharegpt")]
    calib: PathBuf,
    /// GPTQ: calibration chunks of --calib-len tokens (the conversations' tokens, concatenated).
    #[arg(long, default_value_t = 32)]
    calib_chunks: usize,
    #[arg(long, default_value_t = 256)]
    calib_len: usize,
    /// GPTQ: fraction of the mean Hessian diagonal added to it.
    #[arg(long, default_value_t = 0.01)]
    damp: f64,
    /// Where the GPTQ calibration forwards run.
    #[arg(long, value_enum, default_value_t = DeviceKind::Cpu)]
    device: DeviceKind,
}

/// `model.layers.{i}.{self_attn|mlp}.{proj}` -> (i, the input it reads).
fn layer_input(name: &str) -> Option<(usize, LinearInput)> {
    let rest = name.strip_prefix("model.layers.")?;
    let (i, proj) = rest.split_once('.')?;
    let input = match proj {
        "self_attn.q_proj" | "self_attn.k_proj" | "self_attn.v_proj" => LinearInput::Qkv,
        "self_attn.o_proj" => LinearInput::O,
        "mlp.gate_proj" | "mlp.up_proj" => LinearInput::GateUp,
        "mlp.down_proj" => LinearInput::Down,
        _ => return None,
    };
    Some((i.parse().ok()?, input))
}

/// The calibration tokens: the corpus conversations, chat-templated, concatenated and cut into chunks.
fn calibration_chunks(args: &Args, tok: &hierspec_model::TextTokenizer) -> Result<Vec<Vec<u32>>> {
    let path = match args.calib.to_str().and_then(hierspec_model::fetch::corpus_alias) {
        Some(a) if !args.calib.exists() => hierspec_model::fetch::fetch(a)?,
        _ => args.calib.clone(),
    };
    let want = args.calib_chunks * args.calib_len;
    let mut ids = Vec::new();
    for conv in hierspec_train::read_corpus(&path, None)? {
        ids.extend(hierspec_train::tokenize(tok, &conv, args.calib_len * 4)?.ids);
        if ids.len() >= want {
            break;
        }
    }
    if ids.len() < want {
        return Err(Error::Setting(format!("{}: {} tokens, fewer than --calib-chunks x --calib-len = {want}", path.display(), ids.len())));
    }
    Ok(ids[..want].chunks(args.calib_len).map(<[u32]>::to_vec).collect())
}

impl BackendJob for &Args {
    type Output = ();
    fn run(self, device: Device) -> Result<()> {
        run(self, &device)
    }
}

fn run(args: &Args, device: &Device) -> Result<()> {
    if !matches!(args.group, 32 | 64 | 128 | 256) {
        return Err(Error::Setting(format!("--group {} (use 32, 64, 128 or 256)", args.group)));
    }
    if args.method == Method::Gptq && (args.calib_chunks == 0 || args.calib_len < 2 || !(0.0..1.0).contains(&args.damp)) {
        return Err(Error::Setting("GPTQ needs --calib-chunks >= 1, --calib-len >= 2 and --damp in [0, 1)".into()));
    }
    if args.out.join("config.json").exists() {
        return Err(Error::Setting(format!("{} already holds a model; choose a new --out", args.out.display())));
    }
    let ckpt = Checkpoint::open(&args.model)?;
    // Quantized sources dequantize first: every layer is requantized on one grid.
    let src = ckpt.source(false);
    let method = match args.method {
        Method::Rtn => "rtn",
        Method::Gptq => "gptq",
    };
    let spec = WriteSpec { group: args.group, sym: args.sym, lm_head: args.lm_head, method: method.into() };
    // GPTQ runs the model (f32) over the calibration chunks, one layer ahead of the writer.
    let model = match args.method {
        Method::Gptq => Some(loader::load_with(&args.model, &LoadOptions::new(args.calib_len), device)?),
        Method::Rtn => None,
    };
    let chunks = match &model {
        Some(m) => calibration_chunks(args, &m.tokenizer)?,
        None => Vec::new(),
    };
    let mut calib = match &model {
        Some(m) => Some(Calibrator::new(&m.model, &m.config, &chunks)?),
        None => None,
    };
    let bar = indicatif::ProgressBar::new(0);
    bar.set_style(indicatif::ProgressStyle::with_template("quantizing {bar:40} {pos}/{len} layers [{elapsed} < {eta}]").expect("template"));
    let quantize = |name: &str, w: &[f32], k: usize, n: usize| {
        let group = if k % args.group == 0 { args.group } else { k };
        let err = |e: String| Error::Setting(format!("{name}: {e}"));
        match (calib.as_mut(), layer_input(name)) {
            (Some(c), Some((layer, input))) => {
                let h = c.hessian(layer, input)?;
                let q = gptq(w, k, n, group, !args.sym, h, args.damp).map_err(|e| err(e.to_string()))?;
                if std::env::var_os("HIERSPEC_GPTQ_REPORT").is_some() {
                    let rtn = quantize_rtn(w, k, n, group, !args.sym).map_err(|e| err(e.to_string()))?;
                    let (eg, er) = (h.output_error(w, &q.dequantize(), n), h.output_error(w, &rtn.dequantize(), n));
                    bar.suspend(|| eprintln!("{name}: output error on the calibration rows, GPTQ {eg:.4e} vs RTN {er:.4e} ({:.2}x)", er / eg));
                }
                // The next layers calibrate on this layer's quantized outputs.
                c.record(layer, name.splitn(4, '.').nth(3).unwrap_or(name), q.dequantize())?;
                Ok(q)
            }
            _ => quantize_rtn(w, k, n, group, !args.sym).map_err(|e| err(e.to_string())),
        }
    };
    let progress = |done: usize, total: usize| {
        bar.set_length(total as u64);
        bar.set_position(done as u64);
    };
    write_quantized(src.as_ref(), &ckpt.config, &ckpt.tokenizer, &args.out, &spec, quantize, progress)?;
    bar.finish_and_clear();
    eprintln!("wrote {} ({method}, GPTQ v1 layout, group {}, {})", args.out.display(), args.group, if args.sym { "symmetric" } else { "asymmetric" });
    Ok(())
}

fn main() {
    let args = Args::parse();
    if let Err(e) = dispatch(args.device, Precision::F32, &args) {
        eprintln!("error: {e}");
        std::process::exit(1);
    }
}

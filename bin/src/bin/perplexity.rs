//! `perplexity`: how much a quantization changes a model, on held-out text. Runs the reference model
//! (as loaded, dequantized) and each variant over the same chunks of text and reports perplexity,
//! top-1 agreement with the reference, and the mean KL divergence KL(reference || variant).
//! Variants: `rtn:<group>` / `rtn-sym:<group>` (quantized at load), `native` (GGUF Q4 blocks kept as
//! int4, other types RTN g128), or a quantized model directory / file.

use std::path::PathBuf;

use burn::tensor::activation::log_softmax;
use burn::tensor::{DType, Device, Tensor};
use clap::Parser;
use hierspec::backend::{dispatch, BackendJob, DeviceKind, Precision};
use hierspec_model::loader::{self, LoadOptions};
use hierspec_model::nn::QuantSpec;
use hierspec_model::{Error, LogitsFor, Result};
use hierspec_speculative::verify::Runner;

#[derive(Parser, Debug, Clone)]
#[command(about = "Perplexity, top-1 agreement and KL of quantized variants against the reference model")]
struct Args {
    /// The reference model (alias, HF directory or GGUF).
    #[arg(long)]
    model: String,
    /// Variants (comma separated): rtn:<group>, rtn-sym:<group>, native, or a model path.
    #[arg(long, value_delimiter = ',')]
    variants: Vec<String>,
    /// Held-out text: a plain text file, or a Spec-Bench JSONL (every turn of every question).
    #[arg(long)]
    text: PathBuf,
    #[arg(long, default_value_t = 256)]
    chunk: usize,
    #[arg(long, default_value_t = 8)]
    chunks: usize,
    #[arg(long, value_enum, default_value_t = DeviceKind::Cpu)]
    device: DeviceKind,
    #[arg(long, value_enum, default_value_t = Precision::F32)]
    dtype: Precision,
    #[arg(long)]
    json: Option<PathBuf>,
}

#[derive(serde::Serialize)]
struct Row {
    variant: String,
    tokens: usize,
    perplexity: f64,
    top1_agreement: f64,
    mean_kl: f64,
    weight_bytes_per_token: usize,
}

#[derive(serde::Serialize)]
struct Report {
    model: String,
    text: String,
    chunk: usize,
    chunks: usize,
    rows: Vec<Row>,
}

/// Per position: log-probabilities [n, vocab] (f32) of a model on `ids`.
fn log_probs(m: &loader::LoadedModel, ids: &[u32]) -> Tensor<2> {
    let mut r = Runner::new(&m.model, &m.config, ids.len()).expect("cache");
    log_softmax(r.forward(ids, LogitsFor::All).cast(DType::F32), 1)
}

fn read_text(path: &PathBuf) -> Result<String> {
    let raw = std::fs::read_to_string(path).map_err(|e| Error::io(path, e))?;
    if path.extension().is_some_and(|e| e == "jsonl") {
        let mut out = String::new();
        for (i, line) in raw.lines().enumerate().filter(|(_, l)| !l.trim().is_empty()) {
            let v: serde_json::Value = serde_json::from_str(line).map_err(|e| Error::Setting(format!("{}:{}: {e}", path.display(), i + 1)))?;
            for t in v.get("turns").and_then(|t| t.as_array()).into_iter().flatten() {
                out += t.as_str().unwrap_or("");
                out += "\n\n";
            }
        }
        Ok(out)
    } else {
        Ok(raw)
    }
}

impl BackendJob for Args {
    type Output = Report;
    fn run(self, device: Device) -> Result<Report> {
        if self.chunk < 2 || self.chunks == 0 {
            return Err(Error::Setting("--chunk >= 2 and --chunks >= 1 are required".into()));
        }
        let ctx = self.chunk + 1;
        let reference = loader::load_with(&self.model, &LoadOptions::new(ctx), &device)?;
        let ids = reference.tokenizer.encode(&read_text(&self.text)?)?;
        let chunks: Vec<&[u32]> = ids.chunks_exact(self.chunk).take(self.chunks).collect();
        if chunks.is_empty() {
            return Err(Error::Setting(format!("{}: fewer than {} tokens of text", self.text.display(), self.chunk)));
        }
        let reference_lp: Vec<Tensor<2>> = chunks.iter().map(|c| log_probs(&reference, c)).collect();
        let mut variants = vec![("reference".to_string(), None)];
        variants.extend(self.variants.iter().map(|v| (v.clone(), Some(v.clone()))));
        let mut rows = Vec::new();
        for (name, spec) in variants {
            let m = match spec.as_deref() {
                None => None,
                Some(v) => Some(self.load_variant(v, ctx, &device)?),
            };
            let model = m.as_ref().unwrap_or(&reference);
            let (mut nll, mut agree, mut kl, mut n) = (0f64, 0usize, 0f64, 0usize);
            for (c, ref_lp) in chunks.iter().zip(&reference_lp) {
                let lp = if m.is_some() { log_probs(model, c) } else { ref_lp.clone() };
                let rows = c.len() - 1;
                let lp = lp.slice([0..rows]);
                let rlp = ref_lp.clone().slice([0..rows]);
                let next: Vec<i64> = c[1..].iter().map(|&t| t as i64).collect();
                let next = Tensor::<1, burn::tensor::Int>::from_data(burn::tensor::TensorData::new(next, [rows]), &device);
                nll -= lp.clone().gather(1, next.reshape([rows, 1])).sum().into_scalar_f64();
                agree += lp.clone().argmax(1).equal(rlp.clone().argmax(1)).int().sum().into_scalar_f64() as usize;
                kl += (rlp.clone().exp() * (rlp - lp)).sum().into_scalar_f64();
                n += rows;
            }
            eprintln!("{name}: ppl {:.3}", (nll / n as f64).exp());
            rows.push(Row {
                variant: name,
                tokens: n,
                perplexity: (nll / n as f64).exp(),
                top1_agreement: agree as f64 / n as f64,
                mean_kl: kl / n as f64,
                weight_bytes_per_token: model.model.weight_bytes_per_token(),
            });
        }
        Ok(Report { model: self.model.clone(), text: self.text.display().to_string(), chunk: self.chunk, chunks: chunks.len(), rows })
    }
}

impl Args {
    fn load_variant(&self, v: &str, ctx: usize, device: &Device) -> Result<loader::LoadedModel> {
        let quant = |sym: bool, g: &str| -> Result<QuantSpec> {
            let group: usize = g.parse().map_err(|_| Error::Setting(format!("variant {v}: group {g:?} is not a number")))?;
            Ok(QuantSpec { group, asymmetric: !sym, lm_head: false })
        };
        let opts = match v.split_once(':') {
            Some(("rtn", g)) => Some(quant(false, g)?),
            Some(("rtn-sym", g)) => Some(quant(true, g)?),
            _ if v == "native" => Some(QuantSpec::default()),
            _ => None,
        };
        match opts {
            Some(q) if v == "native" || !std::path::Path::new(v).exists() => {
                // At-load quantization of the reference. `native` keeps GGUF Q4 blocks; `rtn:*`
                // requantizes everything from the dequantized weights.
                let src = loader::Checkpoint::open(&self.model)?;
                let config = src.config.clone();
                let weights = src.source(v == "native");
                let model = hierspec_model::Llama::load_with(&config, weights.as_ref(), config.max_position_embeddings.min(ctx), Some(&q), device)?;
                drop(weights);
                Ok(loader::LoadedModel { model, config, tokenizer: src.tokenizer, source: src.path })
            }
            _ => loader::load_with(v, &LoadOptions::new(ctx), device),
        }
    }
}

trait Scalar {
    fn into_scalar_f64(self) -> f64;
}
impl Scalar for Tensor<1> {
    fn into_scalar_f64(self) -> f64 {
        self.into_data().iter::<f64>().next().unwrap_or(0.0)
    }
}
impl Scalar for Tensor<1, burn::tensor::Int> {
    fn into_scalar_f64(self) -> f64 {
        self.into_data().iter::<i64>().next().unwrap_or(0) as f64
    }
}

fn main() {
    let args = Args::parse();
    let json = args.json.clone();
    hierspec::report::finish(dispatch(args.device, args.dtype, args), json.as_deref(), |r: &Report| {
        println!("{} on {} ({} chunks of {} tokens)", r.model, r.text, r.chunks, r.chunk);
        println!("| variant | perplexity | top-1 agreement with reference | mean KL(ref || variant) | weight bytes / token |");
        println!("|---|---|---|---|---|");
        for x in &r.rows {
            println!("| {} | {:.3} | {:.2}% | {:.4} | {:.1} MB |", x.variant, x.perplexity, 100.0 * x.top1_agreement, x.mean_kl, x.weight_bytes_per_token as f64 / 1e6);
        }
    });
}

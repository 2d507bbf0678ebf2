//! `bench-kernels`: the int4 and dense small-M kernels at Llama-3-8B / 70B layer shapes, against
//! burn's dense matmul, for M in {1, 2, 4, ..., 128}. Time per call is the median over many timed
//! batches after warm-up (each batch ends with a device sync). Bytes = weights + scales/offsets +
//! activations in and out; bandwidth fraction = achieved bytes/s over the measured copy bandwidth.
//! Prints one table and writes JSON (`docs/perf/int4-matmul.json` layout).

use std::path::PathBuf;
use std::time::Instant;

use burn::tensor::{backend::Backend, Distribution, Tensor};
use clap::Parser;
use hierspec::backend::{dispatch, BackendJob, DeviceKind, Precision};
use hierspec_kernels::attention::{self, AttnMask};
use hierspec_kernels::{dense, int4, int4::Int4Weight};
use hierspec_model::{Error, Result};

#[derive(Parser, Debug, Clone)]
#[command(about = "Time the int4 / dense small-M kernels at Llama-3 layer shapes")]
struct Args {
    #[arg(long, value_enum, default_value_t = DeviceKind::Cuda)]
    device: DeviceKind,
    #[arg(long, value_enum, default_value_t = Precision::Bf16)]
    dtype: Precision,
    /// Comma-separated M values.
    #[arg(long, default_value = "1,2,4,8,16,32,64,128")]
    m: String,
    /// Shapes: 8b, 70b or both.
    #[arg(long, default_value = "8b,70b")]
    models: String,
    #[arg(long, default_value_t = 128)]
    group: usize,
    /// Timed batches per measurement (the median is reported).
    #[arg(long, default_value_t = 15)]
    samples: usize,
    /// Calls per timed batch.
    #[arg(long, default_value_t = 10)]
    calls: usize,
    /// Skip burn's dense matmul (slow at large shapes on CPU).
    #[arg(long)]
    no_burn: bool,
    #[arg(long)]
    json: Option<PathBuf>,
    /// Written into the JSON.
    #[arg(long, default_value = "unknown")]
    revision: String,
    /// Time tree attention instead (Llama-3-8B attention: 32 query heads, 8 KV heads, head dim 128)
    /// against the plain-tensor reference, for cache lengths 512..8192 and N = 1..64 new rows.
    #[arg(long)]
    attention: bool,
}

#[derive(serde::Serialize, Clone)]
struct AttnRecord {
    cache_len: usize,
    n: usize,
    kernel_us: f64,
    reference_us: f64,
}

#[derive(serde::Serialize, Clone)]
struct Record {
    shape: String,
    m: usize,
    n: usize,
    k: usize,
    /// int4 kernel, microseconds per call
    us: f64,
    gbps: f64,
    bw_fraction: f64,
    tflops: f64,
    /// our dense small-M kernel on the same shape in the compute dtype
    dense_us: f64,
    dense_bw_fraction: f64,
    /// burn 0.21's dense matmul
    bf16_us: Option<f64>,
}

#[derive(serde::Serialize)]
struct Report {
    device: String,
    dtype: Precision,
    revision: String,
    date: String,
    group: usize,
    copy_gbps: f64,
    records: Vec<Record>,
    attention: Vec<AttnRecord>,
}

/// (name, k, n) of one decoder layer's products: fused qkv, o, fused gate_up, down.
fn shapes(model: &str) -> Result<Vec<(String, usize, usize)>> {
    let (h, heads, kv, ffn) = match model {
        "8b" => (4096, 32, 8, 14336),
        "70b" => (8192, 64, 8, 28672),
        other => return Err(Error::Setting(format!("--models: unknown {other:?} (8b, 70b)"))),
    };
    let hd = h / heads;
    Ok(vec![
        (format!("{model}.qkv"), h, (heads + 2 * kv) * hd),
        (format!("{model}.o"), h, h),
        (format!("{model}.gate_up"), h, 2 * ffn),
        (format!("{model}.down"), ffn, h),
    ])
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.partial_cmp(b).unwrap());
    v[v.len() / 2]
}

impl Args {
    /// Microseconds per call of `f`: median over `samples` batches of `calls` calls, after warm-up.
    fn time<B: Backend, T>(&self, device: &B::Device, mut f: impl FnMut() -> T) -> f64 {
        for _ in 0..3 {
            drop(f());
        }
        B::sync(device).expect("sync");
        let mut per_call = Vec::with_capacity(self.samples);
        for _ in 0..self.samples {
            let t = Instant::now();
            let outs: Vec<T> = (0..self.calls).map(|_| f()).collect();
            B::sync(device).expect("sync");
            per_call.push(t.elapsed().as_secs_f64() * 1e6 / self.calls as f64);
            drop(outs);
        }
        median(per_call)
    }
}

/// Device copy bandwidth (bytes read + written) of a 1 GiB elementwise pass.
fn copy_gbps<B: Backend>(args: &Args, device: &B::Device) -> f64 {
    let n: usize = 256 << 20; // f32 elements
    let x = Tensor::<B, 1>::random([n], Distribution::Uniform(0.0, 1.0), device).cast(burn::tensor::DType::F32);
    let us = args.time::<B, _>(device, || x.clone().mul_scalar(1.0001));
    (2 * 4 * n) as f64 / (us * 1e-6) / 1e9
}

/// Tree attention at the Llama-3-8B attention shape, kernel vs reference, random tree masks.
fn attention_records<B: Backend>(args: &Args, device: &B::Device) -> Vec<AttnRecord> {
    let (heads, kv_heads, hd) = (32, 8, 128);
    let mut out = Vec::new();
    for cache_len in [512, 2048, 8192] {
        for n in [1, 4, 16, 32, 64] {
            let t = cache_len + n;
            let k = Tensor::<B, 4>::random([1, kv_heads, t + 64, hd], Distribution::Normal(0.0, 1.0), device).slice([0..1, 0..kv_heads, 0..t, 0..hd]);
            let v = Tensor::<B, 4>::random([1, kv_heads, t + 64, hd], Distribution::Normal(0.0, 1.0), device).slice([0..1, 0..kv_heads, 0..t, 0..hd]);
            let q = Tensor::<B, 4>::random([1, heads, n, hd], Distribution::Normal(0.0, 1.0), device);
            // A chain-of-siblings tree: node i's parent is (i - 1) / 2.
            let allowed: Vec<bool> = (0..n * n)
                .map(|x| {
                    let (i, j) = (x / n, x % n);
                    let mut a = Some(i);
                    while let Some(c) = a {
                        if c == j {
                            return true;
                        }
                        a = (c > 0).then(|| (c - 1) / 2);
                    }
                    false
                })
                .collect();
            let mask = (n > 1).then(|| AttnMask::<B>::from_new_rows(cache_len, n, &allowed, device));
            let kernel_us = args.time::<B, _>(device, || attention::attention(q.clone(), k.clone(), v.clone(), mask.as_ref()));
            let reference_us = args.time::<B, _>(device, || attention::reference(q.clone(), k.clone(), v.clone(), mask.as_ref()));
            eprintln!("attention cache {cache_len} n {n}: kernel {kernel_us:.1} us, reference {reference_us:.1} us");
            out.push(AttnRecord { cache_len, n, kernel_us, reference_us });
        }
    }
    out
}

impl BackendJob for Args {
    type Output = Report;
    fn run<B: Backend>(self, device: B::Device) -> Result<Report> {
        let ms: Vec<usize> = self
            .m
            .split(',')
            .map(|s| s.trim().parse().map_err(|_| Error::Setting(format!("--m: {s:?} is not a number"))))
            .collect::<Result<_>>()?;
        if self.samples == 0 || self.calls == 0 || ms.iter().any(|&m| m == 0) {
            return Err(Error::Setting("--samples, --calls and every M must be >= 1".into()));
        }
        if self.attention {
            return Ok(Report {
                device: format!("{:?}", self.device),
                dtype: self.dtype,
                revision: self.revision.clone(),
                date: String::new(),
                group: self.group,
                copy_gbps: 0.0,
                records: Vec::new(),
                attention: attention_records::<B>(&self, &device),
            });
        }
        let copy = copy_gbps::<B>(&self, &device);
        eprintln!("copy bandwidth: {copy:.0} GB/s");
        let mut records = Vec::new();
        for model in self.models.split(',') {
            for (name, k, n) in shapes(model.trim())? {
                let q = Int4Weight::<B>::random(k, n, self.group, true, &device).map_err(|e| Error::Setting(e.0))?;
                let w = Tensor::<B, 2>::random([k, n], Distribution::Normal(0.0, 0.02), &device);
                let act = w.dtype().size();
                for &m in &ms {
                    let x = Tensor::<B, 2>::random([m, k], Distribution::Normal(0.0, 1.0), &device);
                    let io = (m * k + m * n) * act;
                    let us = self.time::<B, _>(&device, || int4::matmul(x.clone(), &q));
                    let dense_us = self.time::<B, _>(&device, || dense::linear(x.clone(), w.clone()));
                    let bf16_us = (!self.no_burn).then(|| self.time::<B, _>(&device, || x.clone().matmul(w.clone())));
                    let gbps = (q.bytes() + io) as f64 / (us * 1e-6) / 1e9;
                    let dense_gbps = (k * n * act + io) as f64 / (dense_us * 1e-6) / 1e9;
                    let r = Record {
                        shape: name.clone(),
                        m,
                        n,
                        k,
                        us,
                        gbps,
                        bw_fraction: gbps / copy,
                        tflops: 2.0 * (m * n * k) as f64 / (us * 1e-6) / 1e12,
                        dense_us,
                        dense_bw_fraction: dense_gbps / copy,
                        bf16_us,
                    };
                    eprintln!("{} m {m}: int4 {us:.1} us ({:.0}% bw), dense {dense_us:.1} us", r.shape, 100.0 * r.bw_fraction);
                    records.push(r);
                }
            }
        }
        Ok(Report {
            device: format!("{:?}", self.device),
            dtype: self.dtype,
            revision: self.revision.clone(),
            date: String::new(),
            group: self.group,
            copy_gbps: copy,
            records,
            attention: Vec::new(),
        })
    }
}

fn main() {
    let args = Args::parse();
    let json = args.json.clone();
    let result = dispatch(args.device, args.dtype, args).map(|mut r| {
        r.date = std::process::Command::new("date")
            .arg("+%Y-%m-%d")
            .output()
            .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
            .unwrap_or_default();
        r
    });
    hierspec::report::finish(result, json.as_deref(), |r: &Report| {
        if !r.attention.is_empty() {
            println!("tree attention, Llama-3-8B shape (32/8 heads, head dim 128), dtype {:?}", r.dtype);
            println!("| cache len | N | kernel us | reference us | speedup |");
            println!("|---|---|---|---|---|");
            for a in &r.attention {
                println!("| {} | {} | {:.1} | {:.1} | {:.2}x |", a.cache_len, a.n, a.kernel_us, a.reference_us, a.reference_us / a.kernel_us);
            }
        }
        println!("copy bandwidth {:.0} GB/s, int4 group {}, dtype {:?}", r.copy_gbps, r.group, r.dtype);
        println!("| shape | M | K | N | int4 us | int4 GB/s | of copy bw | TFLOP/s | dense kernel us | dense of bw | burn matmul us |");
        println!("|---|---|---|---|---|---|---|---|---|---|---|");
        for x in &r.records {
            println!(
                "| {} | {} | {} | {} | {:.1} | {:.0} | {:.0}% | {:.1} | {:.1} | {:.0}% | {} |",
                x.shape, x.m, x.k, x.n, x.us, x.gbps, 100.0 * x.bw_fraction, x.tflops, x.dense_us,
                100.0 * x.dense_bw_fraction, x.bf16_us.map(|u| format!("{u:.1}")).unwrap_or("-".into())
            );
        }
    });
}

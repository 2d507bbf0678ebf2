//! `bench-kernels`: the int4 and dense small-M kernels (tensor-core and scalar) at Llama-3-8B / 70B
//! layer shapes, against burn's dense matmul, for M in {1, 2, 4, ..., 128}. Time per call is the
//! median over many timed batches after warm-up (each batch ends with a device sync): that includes
//! the host's launch cost, which bounds every small kernel from below. `--launches N` launches each
//! kernel N times untimed instead, so that `ncu --cache-control all` gives the device time of each
//! from cold caches (`scripts/ncu_times.py` reads it back). Bytes = weights +
//! scales/offsets + activations in and out; bandwidth fraction = achieved bytes/s over the measured
//! copy bandwidth. Prints one table and writes JSON (`docs/perf/int4-matmul.json` layout).

use std::path::PathBuf;
use std::time::Instant;

use burn::tensor::{Device, Distribution, Tensor};
use clap::Parser;
use hierspec::backend::{dispatch, BackendJob, DeviceKind, Precision};
use hierspec_kernels::attention::{self, AttnMask};
use hierspec_kernels::fused::{self, Input, Part, PartWeight, PreNorm};
use hierspec_kernels::mma::MmaWeight;
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
    /// Launch every measured kernel this many times without timing it (for ncu); 0: time as usual.
    #[arg(long, default_value_t = 0)]
    launches: usize,
    /// Time the int4 and dense tensor-core products with an RMSNorm of x folded in
    /// (`fused::normed_linear`, the decoder's q|k|v and gate|up), instead of plain.
    #[arg(long)]
    norm: bool,
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
    /// int4 kernel (tensor cores where they run), microseconds per call
    us: f64,
    gbps: f64,
    bw_fraction: f64,
    tflops: f64,
    /// the scalar-FMA int4 kernel
    scalar_us: f64,
    /// our dense small-M kernel (tensor cores where they run) in the compute dtype
    dense_us: f64,
    dense_bw_fraction: f64,
    dense_scalar_us: f64,
    /// burn 0.21's dense matmul
    bf16_us: Option<f64>,
    /// whether the tensor-core kernels ran
    mma: bool,
}

#[derive(serde::Serialize)]
struct Report {
    device: String,
    dtype: Precision,
    revision: String,
    date: String,
    group: usize,
    /// the products ran with an RMSNorm folded in (`--norm`)
    norm: bool,
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
    /// With `--launches N`: N untimed calls (ncu measures them).
    fn time<T>(&self, device: &Device, mut f: impl FnMut() -> T) -> f64 {
        if self.launches > 0 {
            for _ in 0..self.launches {
                drop(f());
            }
            device.sync().expect("sync");
            return f64::NAN;
        }
        for _ in 0..3 {
            drop(f());
        }
        device.sync().expect("sync");
        let mut per_call = Vec::with_capacity(self.samples);
        for _ in 0..self.samples {
            let t = Instant::now();
            let outs: Vec<T> = (0..self.calls).map(|_| f()).collect();
            device.sync().expect("sync");
            per_call.push(t.elapsed().as_secs_f64() * 1e6 / self.calls as f64);
            drop(outs);
        }
        median(per_call)
    }
}

/// Device copy bandwidth (bytes read + written) of a 1 GiB elementwise pass.
fn copy_gbps(args: &Args, device: &Device) -> f64 {
    let n: usize = 256 << 20; // f32 elements
    let x = Tensor::<1>::random([n], Distribution::Uniform(0.0, 1.0), device).cast(burn::tensor::DType::F32);
    let us = args.time::<_>(device, || x.clone().mul_scalar(1.0001));
    (2 * 4 * n) as f64 / (us * 1e-6) / 1e9
}

/// Tree attention at the Llama-3-8B attention shape, kernel vs reference, random tree masks. Every
/// kernel point is timed before any reference point: the reference's matmuls autotune (and compile)
/// on every new shape, and a run cut short by a time limit should still hold the kernel's numbers.
fn attention_records(args: &Args, device: &Device) -> Vec<AttnRecord> {
    let (heads, kv_heads, hd) = (32, 8, 128);
    let mut out = Vec::new();
    let mut inputs = Vec::new();
    for cache_len in [512, 2048, 8192] {
        for n in [1, 4, 16, 32, 64] {
            let t = cache_len + n;
            let k = Tensor::<4>::random([1, kv_heads, t + 64, hd], Distribution::Normal(0.0, 1.0), device).slice([0..1, 0..kv_heads, 0..t, 0..hd]);
            let v = Tensor::<4>::random([1, kv_heads, t + 64, hd], Distribution::Normal(0.0, 1.0), device).slice([0..1, 0..kv_heads, 0..t, 0..hd]);
            let q = Tensor::<4>::random([1, heads, n, hd], Distribution::Normal(0.0, 1.0), device);
            // A binary tree in breadth-first order: node i's parent is (i - 1) / 2.
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
            let mask = (n > 1).then(|| AttnMask::from_new_rows(cache_len, n, &allowed, device));
            let kernel_us = args.time::<_>(device, || attention::attention(q.clone(), k.clone(), v.clone(), mask.as_ref()));
            eprintln!("attention cache {cache_len} n {n}: kernel {kernel_us:.1} us");
            out.push(AttnRecord { cache_len, n, kernel_us, reference_us: f64::NAN });
            inputs.push((q, k, v, mask));
        }
    }
    for (rec, (q, k, v, mask)) in out.iter_mut().zip(inputs) {
        rec.reference_us = args.time::<_>(device, || attention::reference(q.clone(), k.clone(), v.clone(), mask.as_ref()));
        eprintln!("attention cache {} n {}: kernel {:.1} us, reference {:.1} us", rec.cache_len, rec.n, rec.kernel_us, rec.reference_us);
    }
    out
}

impl BackendJob for Args {
    type Output = Report;
    fn run(self, device: Device) -> Result<Report> {
        let ms: Vec<usize> = self
            .m
            .split(',')
            .map(|s| s.trim().parse().map_err(|_| Error::Setting(format!("--m: {s:?} is not a number"))))
            .collect::<Result<_>>()?;
        if self.samples == 0 || self.calls == 0 || ms.iter().any(|&m| m == 0) {
            return Err(Error::Setting("--samples, --calls and every M must be >= 1".into()));
        }
        let empty = |attention| Report {
            device: format!("{:?}", self.device),
            dtype: self.dtype,
            revision: self.revision.clone(),
            date: String::new(),
            group: self.group,
            norm: self.norm,
            copy_gbps: 0.0,
            records: Vec::new(),
            attention,
        };
        if self.attention {
            return Ok(empty(attention_records(&self, &device)));
        }
        let copy = if self.launches > 0 { f64::NAN } else { copy_gbps(&self, &device) };
        eprintln!("copy bandwidth: {copy:.0} GB/s");
        let mut records = Vec::new();
        for model in self.models.split(',') {
            for (name, k, n) in shapes(model.trim())? {
                let q = Int4Weight::random(k, n, self.group, true, &device).map_err(|e| Error::Setting(e.0))?;
                let w = Tensor::<2>::random([k, n], Distribution::Normal(0.0, 0.02), &device);
                let (q_mma, w_mma) = (MmaWeight::int4(&q), MmaWeight::dense(&w));
                let int4_mma = [Part { weight: PartWeight::Int4(&q), perm: None, bias: None, mma: q_mma.as_ref() }];
                let dense_mma = [Part { weight: PartWeight::Dense(w.clone()), perm: None, bias: None, mma: w_mma.as_ref() }];
                let act = w.dtype().size();
                let pre = self.norm.then(|| PreNorm { weight: Tensor::<1>::random([k], Distribution::Uniform(0.5, 1.5), &device), eps: 1e-6 });
                for &m in &ms {
                    let x = Tensor::<2>::random([m, k], Distribution::Normal(0.0, 1.0), &device);
                    let io = (m * k + m * n) * act;
                    let product = |parts: &[Part]| match &pre {
                        Some(pre) => fused::normed_linear(x.clone(), pre, parts),
                        None => fused::linear(x.clone(), parts, Input::Plain, None),
                    };
                    let us = self.time::<_>(&device, || product(&int4_mma));
                    let scalar_us = self.time::<_>(&device, || int4::matmul(x.clone(), &q));
                    let dense_us = self.time::<_>(&device, || product(&dense_mma));
                    let dense_scalar_us = self.time::<_>(&device, || dense::linear(x.clone(), w.clone()));
                    let bf16_us = (!self.no_burn && self.launches == 0).then(|| self.time::<_>(&device, || x.clone().matmul(w.clone())));
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
                        scalar_us,
                        dense_us,
                        dense_bw_fraction: dense_gbps / copy,
                        dense_scalar_us,
                        bf16_us,
                        mma: q_mma.is_some(),
                    };
                    eprintln!("{} m {m}: int4 {us:.1} us ({:.0}% bw; scalar {scalar_us:.1}), dense {dense_us:.1} us (scalar {dense_scalar_us:.1})", r.shape, 100.0 * r.bw_fraction);
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
            norm: self.norm,
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
        if r.records.is_empty() {
            return;
        }
        println!("copy bandwidth {:.0} GB/s, int4 group {}, dtype {:?}, wall clock per call (host launch included)", r.copy_gbps, r.group, r.dtype);
        println!("| shape | M | K | N | int4 us | of copy bw | scalar int4 us | dense us | dense of bw | scalar dense us | burn matmul us | tensor cores |");
        println!("|---|---|---|---|---|---|---|---|---|---|---|---|");
        for x in &r.records {
            println!(
                "| {} | {} | {} | {} | {:.1} | {:.0}% | {:.1} | {:.1} | {:.0}% | {:.1} | {} | {} |",
                x.shape, x.m, x.k, x.n, x.us, 100.0 * x.bw_fraction, x.scalar_us, x.dense_us,
                100.0 * x.dense_bw_fraction, x.dense_scalar_us, x.bf16_us.map(|u| format!("{u:.1}")).unwrap_or("-".into()), x.mma
            );
        }
    });
}

//! `fuzz`: mutated inputs through every file parser, a table of what happened, and optionally the
//! JSON that docs/reliability.json records.
//!
//!     cargo run --release -p hierspec-fuzz --bin fuzz -- --execs 100000 --json docs/reliability.json

use std::path::PathBuf;

use anyhow::{bail, Result};
use clap::Parser;
use hierspec_fuzz::{alloc, run, targets, Counting};

#[global_allocator]
static ALLOC: Counting = Counting;

#[derive(Parser)]
#[command(about = "Fuzz the loaders: GGUF, safetensors (single, sharded), configs, tokenizers, EAGLE heads, GPTQ")]
struct Args {
    /// Inputs per target.
    #[arg(long, default_value_t = 2000)]
    execs: usize,
    /// Seed of the mutations (a run replays from it).
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// Only these targets (comma-separated names).
    #[arg(long)]
    targets: Option<String>,
    /// Where crashing inputs are saved.
    #[arg(long, default_value = "target/fuzz-crashes")]
    crashes: PathBuf,
    /// Write the results as JSON (`{"targets": [...], "revision", "date", "command"}`).
    #[arg(long)]
    json: Option<PathBuf>,
    #[arg(long, default_value = "")]
    revision: String,
}

fn main() -> Result<()> {
    let args = Args::parse();
    let work = std::env::temp_dir().join(format!("hierspec-fuzz-{}", std::process::id()));
    let all = targets::all(&work).map_err(anyhow::Error::msg)?;
    let wanted: Option<Vec<&str>> = args.targets.as_deref().map(|t| t.split(',').collect());
    if let Some(w) = &wanted {
        if let Some(bad) = w.iter().find(|n| !all.iter().any(|t| t.name == **n)) {
            bail!("no target {bad:?} (targets: {})", all.iter().map(|t| t.name).collect::<Vec<_>>().join(", "));
        }
    }
    if !alloc::counting() {
        bail!("the counting allocator is not installed");
    }
    run::quiet_panics();
    println!("| target | executions | accepted | unique errors | crashes | hangs (> 1 s) | over-allocations | slowest ms | slowest input | peak MiB |");
    println!("|---|---|---|---|---|---|---|---|---|---|");
    let mut reports = Vec::new();
    for t in all.iter().filter(|t| wanted.as_ref().is_none_or(|w| w.contains(&t.name))) {
        let r = run::fuzz(t, args.execs, args.seed, &args.crashes);
        println!(
            "| {} | {} | {} | {} | {} | {} | {} | {:.1} | {} | {:.1} |",
            r.name, r.executions, r.accepted, r.unique_errors, r.crashes, r.hangs, r.over_allocations, r.max_ms, r.slowest, r.peak_alloc_mb
        );
        for n in &r.crash_notes {
            eprintln!("  {n}");
        }
        reports.push(r);
    }
    let total: usize = reports.iter().map(|r| r.executions).sum();
    let bad: usize = reports.iter().map(|r| r.crashes + r.hangs + r.over_allocations).sum();
    println!("\n{total} executions, {bad} crashes, hangs and over-allocations in all");
    if let Some(path) = &args.json {
        let targets: Vec<_> = reports
            .iter()
            .map(|r| {
                serde_json::json!({"name": r.name, "executions": r.executions, "crashes": r.crashes, "hangs": r.hangs,
                    "over_allocations": r.over_allocations, "unique_errors": r.unique_errors, "accepted": r.accepted,
                    "max_ms": (r.max_ms * 10.0).round() / 10.0, "peak_alloc_mb": (r.peak_alloc_mb * 10.0).round() / 10.0})
            })
            .collect();
        let command = format!("cargo run --release -p hierspec-fuzz --bin fuzz -- {}", std::env::args().skip(1).collect::<Vec<_>>().join(" "));
        let date = time::OffsetDateTime::now_utc().date().to_string();
        let doc = serde_json::json!({"targets": targets, "executions": total, "revision": args.revision, "date": date, "command": command, "seed": args.seed});
        std::fs::write(path, serde_json::to_string_pretty(&doc)? + "\n")?;
    }
    let _ = std::fs::remove_dir_all(&work);
    if bad > 0 {
        bail!("{bad} inputs crashed, hung or over-allocated (saved under {})", args.crashes.display());
    }
    Ok(())
}
